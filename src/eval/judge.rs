//! The optional LLM judge: free-form criteria (`expect.judge`) scored against a call's
//! transcript by any OpenAI-compatible endpoint, when one is configured. Without one the
//! criteria are listed as not judged and nothing fails — every other expectation works alone.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::llm::{ChatRequest, LanguageModel, Message};

/// One criterion's verdict: `met` is `None` when no judge was configured or it did not answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Judgement {
    pub criterion: String,
    pub met: Option<bool>,
    pub reason: String,
}

/// A judge on an OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct Judge {
    llm: Arc<dyn LanguageModel>,
}

impl Judge {
    /// The judge at `url` (a `/v1` base) with `model`; the key from `RINGLINE_JUDGE_API_KEY`.
    pub fn new(url: &str, model: &str) -> Judge {
        let key = std::env::var("RINGLINE_JUDGE_API_KEY").unwrap_or_default();
        let llm = crate::llm::openai::OpenAiLlm::new(url, model, &key, std::time::Duration::from_secs(60), &crate::egress::EgressPolicy::allow_all());
        Judge { llm: Arc::new(llm) }
    }

    #[cfg(test)]
    pub fn with(llm: Arc<dyn LanguageModel>) -> Judge {
        Judge { llm }
    }

    /// Each criterion judged against the transcript, in order.
    pub async fn judge(&self, criteria: &[String], transcript: &[(crate::call::Speaker, String)]) -> Vec<Judgement> {
        let lines: String = transcript.iter().map(|(who, text)| format!("{who}: {text}\n")).collect();
        let list: String = criteria.iter().enumerate().map(|(i, c)| format!("{}. {c}\n", i + 1)).collect();
        let n = criteria.len();
        let schema = json!({
            "type": "object",
            "properties": { "verdicts": { "type": "array", "minItems": n, "maxItems": n, "items": {
                "type": "object", "properties": { "met": { "type": "boolean" }, "reason": { "type": "string", "maxLength": 300 } }, "required": ["met", "reason"], "additionalProperties": false
            } } },
            "required": ["verdicts"],
            "additionalProperties": false,
        });
        let request = ChatRequest {
            messages: vec![
                Message::System { content: "You judge phone calls between an AI agent and a caller. For each criterion, say whether the call meets it, with a one-sentence reason. Answer in JSON.".into() },
                Message::User { content: format!("Transcript:\n{lines}\nCriteria:\n{list}") },
            ],
            tools: Vec::new(),
            max_tokens: 80 * n + 40,
            temperature: 0.0,
            schema: Some(schema),
        };
        let answer = crate::llm::complete_text(self.llm.as_ref(), request).await;
        let verdicts: Vec<Value> = match &answer {
            Ok(text) => serde_json::from_str::<Value>(text.trim()).ok().and_then(|v| v["verdicts"].as_array().cloned()).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        criteria
            .iter()
            .enumerate()
            .map(|(i, criterion)| match verdicts.get(i) {
                Some(v) => Judgement { criterion: criterion.clone(), met: v["met"].as_bool(), reason: v["reason"].as_str().unwrap_or("").to_string() },
                None => Judgement {
                    criterion: criterion.clone(),
                    met: None,
                    reason: match &answer {
                        Err(error) => format!("the judge failed: {error}"),
                        Ok(text) => format!("the judge's answer was not the verdicts asked for: {}", text.chars().take(120).collect::<String>()),
                    },
                },
            })
            .collect()
    }
}

/// The criteria as not judged (no judge configured).
pub fn not_judged(criteria: &[String]) -> Vec<Judgement> {
    criteria.iter().map(|c| Judgement { criterion: c.clone(), met: None, reason: "not judged: no judge is configured (--judge-url or RINGLINE_JUDGE_URL)".into() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_judge_criteria_are_listed_not_failed() {
        let verdicts = not_judged(&["the agent is polite".to_string()]);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].met, None);
        assert!(verdicts[0].reason.contains("--judge-url"));
    }
}
