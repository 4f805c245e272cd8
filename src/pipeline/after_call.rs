//! After the call: the assistant's `extract:` fields read from the transcript.
//!
//! A flow fills its slots as it goes (a field it did not fill was not said: null); every field
//! of a free-form assistant is asked of the assistant's LLM once the call is over, under a JSON schema of the
//! fields — typed, nullable — which a cloud endpoint follows as `response_format` and the local
//! engine enforces with a grammar, so even a small model answers in the fields' shape. What
//! comes back is checked again: the type, a real date, and — against a small model's habit of
//! inventing — a text value must be made of words the call contains. Anything that fails is
//! null, never a guess.

use serde_json::{json, Map, Value};

use crate::assistant::{Assistant, ExtractSpec};
use crate::llm::{ChatRequest, LanguageModel, Message};

/// The longest text value a field takes.
const MAX_TEXT_CHARS: usize = 200;

/// The JSON schema of the fields' answer: every field present, each of its type or null.
pub fn schema(fields: &[&ExtractSpec]) -> Value {
    let mut properties = Map::new();
    for field in fields {
        let property = match field.kind.as_str() {
            "number" => json!({ "type": ["number", "null"] }),
            "integer" => json!({ "type": ["integer", "null"] }),
            "boolean" => json!({ "type": ["boolean", "null"] }),
            "date" => json!({ "type": ["string", "null"], "format": "date" }),
            "datetime" => json!({ "type": ["string", "null"], "format": "date-time" }),
            _ => json!({ "type": ["string", "null"], "maxLength": MAX_TEXT_CHARS }),
        };
        properties.insert(field.name.clone(), property);
    }
    let required: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    json!({ "type": "object", "properties": properties, "required": required, "additionalProperties": false })
}

/// A value the model gave for `field`, if it holds: of the field's type, a real date, and for
/// text, words the call contains.
pub fn checked(field: &ExtractSpec, value: &Value, transcript: &str) -> Option<Value> {
    match (field.kind.as_str(), value) {
        (_, Value::Null) => None,
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => Some(value.clone()),
        ("integer", Value::Number(n)) if n.is_i64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => Some(json!(n.as_f64().unwrap_or(0.0) as i64)),
        ("date", Value::String(s)) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|_| value.clone()),
        ("datetime", Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s).ok().map(|_| value.clone()),
        ("number" | "integer" | "boolean" | "date" | "datetime", _) => None,
        (_, Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() || s.chars().count() > MAX_TEXT_CHARS {
                return None;
            }
            let said = words(transcript);
            let given = words(s);
            let found = given.iter().filter(|w| said.contains(w)).count();
            // Most of its words were said in the call (a small model invents the rest).
            (found * 2 >= given.len().max(1) && found > 0).then(|| json!(s))
        }
        _ => None,
    }
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

/// The two fields a judgement against the assistant's `goal` adds to the reading.
const GOAL_REACHED: &str = "goal_reached";
const GOAL_REASON: &str = "goal_reason";
/// The field of a disposition the agent did not set: one of the assistant's, or null.
const DISPOSITION: &str = "disposition";

/// What the after-call reading found besides the fields.
#[derive(Debug, Default, PartialEq)]
pub struct Reading {
    /// (reached the goal, why), when the assistant states a `goal`.
    pub judged: Option<(bool, String)>,
    /// One of the assistant's dispositions, when the agent set none.
    pub disposition: Option<String>,
}

/// Fills `slots` with the assistant's `extract:` fields the call left empty: read by `llm`
/// from the transcript, checked, null when not said. A field a flow filled is kept. The same
/// reading judges the call against the assistant's `goal`, and chooses one of its dispositions
/// when the agent set none (`disposition_set`) — the choice constrained to their names.
pub async fn extract(llm: &dyn LanguageModel, assistant: &Assistant, transcript: &[(crate::call::Speaker, String, std::time::Duration)], slots: &mut Map<String, Value>, disposition_set: bool) -> Reading {
    let missing: Vec<&ExtractSpec> = assistant.spec.extract.iter().filter(|f| slots.get(&f.name).is_none_or(Value::is_null)).collect();
    let free_form = assistant.spec.flow.is_none();
    let goal = assistant.spec.goal.as_deref().filter(|_| free_form);
    let dispositions: Vec<&crate::assistant::DispositionSpec> = if free_form && !disposition_set { assistant.spec.dispositions.iter().collect() } else { Vec::new() };
    if missing.is_empty() && goal.is_none() && dispositions.is_empty() {
        return Reading::default();
    }
    // A flow is the call's reader: what its slots did not take was not said. A free-form
    // call is read by the LLM once the caller said anything.
    let caller_spoke = transcript.iter().any(|(who, _, _)| *who == crate::call::Speaker::Caller) && assistant.spec.flow.is_none();
    let text: String = transcript.iter().map(|(who, line, _)| format!("{who}: {line}\n")).collect();
    let mut found = Map::new();
    if caller_spoke {
        let mut list: Vec<String> = missing.iter().map(|f| format!("- {} ({}): {}", f.name, f.kind, f.description)).collect();
        let mut schema = schema(&missing);
        if let Some(goal) = goal {
            list.push(format!("- {GOAL_REACHED} (boolean): did the call achieve this: {goal}"));
            list.push(format!("- {GOAL_REASON} (string): why, in one short sentence"));
            schema["properties"][GOAL_REACHED] = json!({ "type": ["boolean", "null"] });
            schema["properties"][GOAL_REASON] = json!({ "type": ["string", "null"], "maxLength": MAX_TEXT_CHARS });
            if let Some(required) = schema["required"].as_array_mut() {
                required.push(json!(GOAL_REACHED));
                required.push(json!(GOAL_REASON));
            }
        }
        if !dispositions.is_empty() {
            let described: Vec<String> = dispositions.iter().map(|d| if d.description.is_empty() { d.name.clone() } else { format!("{} ({})", d.name, d.description) }).collect();
            list.push(format!("- {DISPOSITION}: how the call ended, one of: {}", described.join("; ")));
            let mut names: Vec<Value> = dispositions.iter().map(|d| json!(d.name)).collect();
            names.push(Value::Null);
            schema["properties"][DISPOSITION] = json!({ "enum": names });
            if let Some(required) = schema["required"].as_array_mut() {
                required.push(json!(DISPOSITION));
            }
        }
        let request = ChatRequest {
            messages: vec![
                Message::System { content: "You read phone call transcripts and fill in fields as JSON. Use null for anything the call did not say.".into() },
                Message::User { content: format!("Fields:\n{}\n\nTranscript:\n{text}\nThe fields as JSON:", list.join("\n")) },
            ],
            tools: Vec::new(),
            max_tokens: 40 + 40 * list.len(),
            temperature: 0.0,
            schema: Some(schema),
        };
        if let Ok(reply) = crate::llm::complete_text(llm, request).await {
            let start = reply.find('{').unwrap_or(0);
            if let Ok(Value::Object(given)) = serde_json::from_str::<Value>(reply[start..].trim()) {
                found = given;
            }
        }
    }
    for field in missing {
        let value = found.get(&field.name).and_then(|v| checked(field, v, &text)).unwrap_or(Value::Null);
        slots.insert(field.name.clone(), value);
    }
    let judged = found.get(GOAL_REACHED).and_then(Value::as_bool).map(|reached| {
        let reason = found.get(GOAL_REASON).and_then(Value::as_str).map(str::trim).filter(|r| !r.is_empty()).unwrap_or("the model gave no reason");
        (reached, reason.chars().take(MAX_TEXT_CHARS).collect())
    });
    // Only a name the assistant declares counts (a cloud model may not follow the schema).
    let disposition = found.get(DISPOSITION).and_then(Value::as_str).filter(|name| dispositions.iter().any(|d| d.name == *name)).map(str::to_string);
    Reading { judged, disposition }
}

/// Whether the call reached the assistant's goal: the disposition's `success` when it says,
/// else the judgement against `goal`, else unknown.
pub fn success(assistant: &Assistant, report: &super::CallReport, judged: Option<(bool, String)>) -> Option<(bool, String)> {
    let name = super::disposition(report);
    let declared = assistant.spec.dispositions.iter().find(|d| d.name == name);
    if let Some(spec) = declared {
        if let Some(success) = spec.success {
            let notes = report.disposition.as_ref().map(|(_, notes)| notes.as_str()).filter(|n| !n.is_empty());
            let why = match notes {
                Some(notes) => format!("disposition {name}: {notes}"),
                None if !spec.description.is_empty() => format!("disposition {name}: {}", spec.description),
                None => format!("disposition {name}"),
            };
            return Some((success, why));
        }
    }
    judged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, kind: &str) -> ExtractSpec {
        ExtractSpec { name: name.into(), kind: kind.into(), description: String::new() }
    }

    #[test]
    fn the_schema_makes_every_field_present_typed_and_nullable() {
        let (time, size, date) = (field("booked_time", "string"), field("party_size", "integer"), field("day", "date"));
        let schema = schema(&[&time, &size, &date]);
        assert_eq!(schema["required"], json!(["booked_time", "party_size", "day"]));
        assert_eq!(schema["properties"]["party_size"]["type"], json!(["integer", "null"]));
        assert_eq!(schema["properties"]["day"]["format"], "date");
        assert_eq!(schema["additionalProperties"], false);
    }

    #[test]
    fn a_disposition_that_says_decides_success_else_the_judgement() {
        let assistant = Assistant::from_stored_json(
            &json!({ "version": 1, "name": "x", "system_prompt": "Hi.", "goal": "a table is booked", "dispositions": [
                { "name": "booked", "description": "a table was booked", "success": true }, { "name": "enquiry" }] }),
            "test",
        )
        .unwrap();
        let mut report = super::super::CallReport { disposition: Some(("booked".into(), "two at seven".into())), ..Default::default() };
        assert_eq!(success(&assistant, &report, Some((false, "judged".into()))), Some((true, "disposition booked: two at seven".into())));
        report.disposition = Some(("enquiry".into(), String::new()));
        assert_eq!(success(&assistant, &report, Some((false, "only asked".into()))), Some((false, "only asked".into())), "no success on the disposition: the judgement");
        assert_eq!(success(&assistant, &report, None), None);
    }

    #[test]
    fn values_are_checked_and_invented_text_is_refused() {
        let said = "caller: A table for two at seven please, under Patel.\nagent: Booked, reference B 42.";
        assert_eq!(checked(&field("name", "string"), &json!("Patel"), said), Some(json!("Patel")));
        assert_eq!(checked(&field("name", "string"), &json!("Smith"), said), None, "not said in the call");
        assert_eq!(checked(&field("size", "integer"), &json!(2.0), said), Some(json!(2)));
        assert_eq!(checked(&field("size", "integer"), &json!("two"), said), None);
        assert_eq!(checked(&field("day", "date"), &json!("2026-02-30"), said), None, "not a real date");
        assert_eq!(checked(&field("day", "date"), &json!("2026-12-01"), said), Some(json!("2026-12-01")));
        assert_eq!(checked(&field("ok", "boolean"), &json!(true), said), Some(json!(true)));
        assert_eq!(checked(&field("name", "string"), &Value::Null, said), None);
    }
}
