//! Intent by nearest examples: each intent is its examples' embeddings (and its name's and
//! description's), an utterance takes the intent of the most similar one, or `unknown` below
//! the threshold.
//!
//! Nearest-example rather than a mean per intent: an intent such as "cancel" is said in ways
//! that do not average well ("forget it", "I don't need it any more"), and with hundreds of
//! intents the best single match is what separates them. The cosine of that match is the
//! confidence, so a threshold means the same thing in every assistant.

use std::sync::Arc;

use serde::Serialize;

/// What an utterance is classified as when nothing is close enough.
pub const UNKNOWN: &str = "unknown";

/// Below this cosine an utterance is `unknown` (MiniLM puts paraphrases above ~0.55 and
/// unrelated sentences below ~0.3).
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// One intent as the classifier takes it.
#[derive(Debug, Clone)]
pub struct IntentDef {
    pub name: String,
    pub description: Option<String>,
    pub examples: Vec<String>,
}

impl IntentDef {
    /// The texts that stand for this intent: its examples, its description, and its name read
    /// as words ("book_table" → "book table").
    pub fn texts(&self) -> Vec<String> {
        let mut texts: Vec<String> = self.examples.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        if let Some(description) = self.description.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
            texts.push(description.to_string());
        }
        texts.push(self.name.replace(['_', '-'], " "));
        texts
    }
}

/// A set of intents with their examples embedded.
pub struct IntentSet {
    names: Vec<String>,
    /// (intent index, unit embedding).
    examples: Vec<(usize, Arc<[f32]>)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntentMatch {
    pub intent: String,
    /// The cosine similarity of the nearest example, 0..1; for `unknown`, one minus that of
    /// the nearest intent.
    pub confidence: f32,
    /// The next-best intent and its similarity (for `unknown`, the nearest one), to show how
    /// close the decision was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_up: Option<(String, f32)>,
}

impl IntentSet {
    /// `embedded[i]` holds the embeddings of `intents[i].texts()`, in order.
    pub fn new(intents: &[IntentDef], embedded: Vec<Vec<Arc<[f32]>>>) -> Self {
        let mut examples = Vec::new();
        for (i, vectors) in embedded.into_iter().enumerate() {
            examples.extend(vectors.into_iter().map(|v| (i, v)));
        }
        IntentSet { names: intents.iter().map(|i| i.name.clone()).collect(), examples }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The intent of an utterance's unit embedding.
    pub fn classify(&self, utterance: &[f32], threshold: f32) -> IntentMatch {
        let mut best = vec![f32::NEG_INFINITY; self.names.len()];
        for (intent, example) in &self.examples {
            let cosine: f32 = example.iter().zip(utterance).map(|(a, b)| a * b).sum();
            best[*intent] = best[*intent].max(cosine);
        }
        let mut ranked: Vec<(usize, f32)> = best.into_iter().enumerate().filter(|(_, s)| s.is_finite()).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let round = |s: f32| (s.clamp(0.0, 1.0) * 1000.0).round() / 1000.0;
        match ranked.first() {
            Some(&(i, score)) if score >= threshold => IntentMatch {
                intent: self.names[i].clone(),
                confidence: round(score),
                runner_up: ranked.get(1).map(|&(j, s)| (self.names[j].clone(), round(s))),
            },
            top => IntentMatch {
                intent: UNKNOWN.to_string(),
                confidence: round(1.0 - top.map_or(0.0, |t| t.1.max(0.0))),
                runner_up: top.map(|&(j, s)| (self.names[j].clone(), round(s))),
            },
        }
    }
}
