//! When a slot's parser finds nothing, the LLM may: it reads the caller's words and answers
//! in JSON that a schema constrains (the local engine enforces it with a grammar; cloud
//! endpoints get it as `response_format`), so the value is always one the slot can take.
//!
//! Only kinds where words vary more than a parser can follow go to the LLM — a choice named
//! in other words ("the veggie one"), a yes or no said sideways ("I suppose that works"), a
//! name in a sentence the name parser does not know. Numbers, dates, times, phone numbers and
//! ids stay with the parsers: a small model asked for them invents them. And what the LLM
//! returns is checked again here: a name must be words the caller said.

use serde_json::{json, Value};

use super::{SlotKind, SlotSpec};
use crate::llm::Message;

/// What the flow asks the LLM to read from a caller's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractRequest {
    /// Which reading this is (the answer goes back with it).
    pub id: u64,
    /// The instructions and the caller's words.
    pub system: String,
    pub user: String,
    /// JSON Schema of the answer: `{"value": …}`, where `null` means "not given".
    pub schema: Value,
}

impl ExtractRequest {
    pub fn messages(&self) -> Vec<Message> {
        vec![Message::System { content: self.system.clone() }, Message::User { content: self.user.clone() }]
    }

    /// The value, from the LLM's JSON reply (`None` when it gave none or wrote no JSON).
    pub fn read(reply: &str) -> Option<Value> {
        let parsed: Value = serde_json::from_str(reply.trim()).ok()?;
        parsed.get("value").filter(|v| !v.is_null()).cloned()
    }
}

fn answer_schema(value: Value) -> Value {
    json!({ "type": "object", "properties": { "value": value }, "required": ["value"], "additionalProperties": false })
}

/// The request for `slot`, or `None` when its kind stays with the parsers.
pub(super) fn for_slot(slot: &SlotSpec, text: &str) -> Option<ExtractRequest> {
    let question = slot.question.trim();
    let (task, value) = match slot.kind {
        SlotKind::Enum => {
            let choices: Vec<String> = slot
                .values
                .iter()
                .map(|v| if v.says.is_empty() { format!("\"{}\"", v.value) } else { format!("\"{}\" ({})", v.value, v.says.join(", ")) })
                .collect();
            let mut values: Vec<Value> = slot.values.iter().map(|v| json!(v.value)).collect();
            values.push(Value::Null);
            (format!("Which one did the caller choose: {}? Answer null if none of them.", choices.join(", ")), json!({ "enum": values }))
        }
        SlotKind::Boolean => ("Did the caller say yes (true) or no (false)? Answer null if neither.".to_string(), json!({ "type": ["boolean", "null"] })),
        SlotKind::Name => (
            "What name did the caller give? Copy it as they said it; answer null if they gave none.".to_string(),
            json!({ "anyOf": [{ "type": "string", "minLength": 1, "maxLength": 60 }, { "type": "null" }] }),
        ),
        _ => return None,
    };
    Some(request(question, &task, text, value))
}

/// The request for a yes or no to a read-back or a yes/no question.
pub(super) fn for_yes_no(question: &str, text: &str) -> ExtractRequest {
    request(question.trim(), "Did the caller say yes (true) or no (false)? Answer null if neither.", text, json!({ "type": ["boolean", "null"] }))
}

fn request(question: &str, task: &str, text: &str, value: Value) -> ExtractRequest {
    ExtractRequest {
        id: 0,
        system: format!(
            "You read one reply from a phone call. The agent asked: \"{question}\". {task} Answer only with JSON: {{\"value\": ...}}."
        ),
        user: text.to_string(),
        schema: answer_schema(value),
    }
}

/// The slot value and how to say it, if what the LLM found is one `slot` can take.
/// `slot: None` reads a yes or no.
pub(super) fn accept(slot: Option<&SlotSpec>, text: &str, value: &Value) -> Option<(Value, String)> {
    let kind = slot.map_or(SlotKind::Boolean, |s| s.kind);
    match kind {
        SlotKind::Boolean => value.as_bool().map(|b| (json!(b), if b { "yes".into() } else { "no".into() })),
        SlotKind::Enum => {
            let chosen = value.as_str()?;
            let slot = slot?;
            slot.values.iter().find(|v| v.value == chosen).map(|v| (json!(v.value), v.value.replace('_', " ")))
        }
        SlotKind::Name => {
            let name = value.as_str()?.trim();
            let said = super::parse::words(text);
            let words: Vec<String> = super::parse::words(name);
            // Every word of the name was said, and it is a name's length: not invented.
            let heard = !words.is_empty() && words.len() <= 4 && words.iter().all(|w| said.contains(w) && w.chars().all(|c| c.is_alphabetic() || c == '\'' || c == '-'));
            // Nor ordinary words read as one ("I made it." is no name "Made").
            let heard = heard && super::parse::can_be_name(text, &words);
            heard.then(|| {
                let name = words.iter().map(|w| capitalize(w)).collect::<Vec<_>>().join(" ");
                (json!(name), name)
            })
        }
        _ => None,
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::ChoiceSpec;

    fn slot(kind: SlotKind) -> SlotSpec {
        serde_yaml::from_value(serde_yaml::to_value(json!({ "name": "x", "type": kind, "question": "Which one?" })).unwrap()).unwrap()
    }

    #[test]
    fn an_enum_slot_offers_its_values_and_null_and_accepts_only_them() {
        let mut diet = slot(SlotKind::Enum);
        diet.values = vec![
            ChoiceSpec { value: "vegetarian".into(), says: vec!["veggie".into()] },
            ChoiceSpec { value: "regular".into(), says: vec![] },
        ];
        let request = for_slot(&diet, "the green one I guess").unwrap();
        assert_eq!(request.schema["properties"]["value"], json!({ "enum": ["vegetarian", "regular", null] }));
        assert!(request.system.contains("\"vegetarian\" (veggie)"), "{}", request.system);
        assert_eq!(accept(Some(&diet), "", &json!("vegetarian")), Some((json!("vegetarian"), "vegetarian".into())));
        assert_eq!(accept(Some(&diet), "", &json!("vegan")), None);
    }

    #[test]
    fn a_name_must_be_words_the_caller_said() {
        let name = slot(SlotKind::Name);
        assert_eq!(accept(Some(&name), "put it down for the hendersons please", &json!("Hendersons")), Some((json!("Hendersons"), "Hendersons".into())));
        assert_eq!(accept(Some(&name), "put it down for the hendersons please", &json!("John Smith")), None);
        assert_eq!(accept(Some(&name), "a b c d e", &json!("a b c d e")), None, "too long for a name");
        assert_eq!(accept(Some(&name), "I made it.", &json!("Made")), None, "a word the recognizer left lowercase");
        assert_eq!(accept(Some(&name), "I made it.", &json!("I")), None);
        assert_eq!(accept(Some(&name), "Oh, it's for the Hendersons.", &json!("Hendersons")), Some((json!("Hendersons"), "Hendersons".into())));
    }

    #[test]
    fn numbers_and_times_stay_with_the_parsers() {
        for kind in [SlotKind::Integer, SlotKind::Time, SlotKind::Date, SlotKind::Phone, SlotKind::Digits, SlotKind::Number, SlotKind::Email] {
            assert!(for_slot(&slot(kind), "whatever").is_none(), "{kind:?}");
        }
    }

    #[test]
    fn replies_read_as_values_or_nothing() {
        assert_eq!(ExtractRequest::read(r#" {"value": true} "#), Some(json!(true)));
        assert_eq!(ExtractRequest::read(r#"{"value": null}"#), None);
        assert_eq!(ExtractRequest::read("yes"), None);
        let yes_no = for_yes_no("Shall I book it?", "go for it");
        assert_eq!(accept(None, "go for it", &json!(false)), Some((json!(false), "no".into())));
        assert!(yes_no.system.contains("Shall I book it?"));
    }
}
