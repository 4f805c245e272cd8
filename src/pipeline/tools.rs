//! Tools the LLM can call: the built-ins that act on the call, and HTTP tools.
//!
//! Built-ins (`end_call`, `transfer_call`, `send_dtmf`, `set_disposition`) become
//! [`Action`]s the turn manager carries out after the words that go with them are spoken.
//! HTTP tools call the URL the assistant declares, with a timeout; a failure becomes a tool
//! result the LLM can apologise for, never a dead call.

use std::time::Duration;

use serde_json::{json, Value};

use crate::assistant::{Assistant, Builtin, HttpToolSpec, ToolEntry};
use crate::llm::ToolSpec;

/// What a built-in tool asks the call to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    EndCall { reason: String },
    Transfer { destination: String },
    Dtmf { digits: String },
    Disposition { name: String, notes: String },
}

/// The tool specs offered to the LLM, and the HTTP tools by name.
pub fn specs(assistant: &Assistant) -> Vec<ToolSpec> {
    let dispositions: Vec<&str> = assistant.spec.dispositions.iter().map(|d| d.name.as_str()).collect();
    assistant
        .spec
        .tools
        .iter()
        .filter_map(|tool| match tool {
            // A name no built-in has is refused by `assistants check` before any call.
            ToolEntry::Builtin(name) => Builtin::parse(name).map(|builtin| builtin_spec(builtin, &dispositions)),
            ToolEntry::Http(http) => Some(ToolSpec { name: http.name.clone(), description: http.description.clone(), parameters: http.parameters.clone() }),
        })
        .collect()
}

fn builtin_spec(builtin: Builtin, dispositions: &[&str]) -> ToolSpec {
    let (description, parameters) = match builtin {
        Builtin::EndCall => (
            "End the call after saying goodbye. Use when the conversation is finished.",
            json!({ "type": "object", "properties": { "reason": { "type": "string" } } }),
        ),
        Builtin::TransferCall => (
            "Transfer the caller to a human or another number.",
            json!({ "type": "object", "properties": { "destination": { "type": "string" } }, "required": ["destination"] }),
        ),
        Builtin::SendDtmf => (
            "Press keypad digits on the call (for phone menus).",
            json!({ "type": "object", "properties": { "digits": { "type": "string", "pattern": "^[0-9*#A-Dw]+$" } }, "required": ["digits"] }),
        ),
        Builtin::SetDisposition => (
            "Record the outcome of the call.",
            json!({ "type": "object", "properties": {
                "disposition": { "type": "string", "enum": dispositions },
                "notes": { "type": "string" } }, "required": ["disposition"] }),
        ),
    };
    ToolSpec { name: builtin.name().to_string(), description: description.to_string(), parameters }
}

/// The result of running a tool: text for the LLM, and an action for the call.
#[derive(Debug, Clone)]
pub struct ToolResult {
    pub content: String,
    pub action: Option<Action>,
    pub failed: bool,
}

impl ToolResult {
    fn ok(content: impl Into<String>, action: Option<Action>) -> Self {
        ToolResult { content: content.into(), action, failed: false }
    }
    fn error(message: impl Into<String>) -> Self {
        ToolResult { content: format!("error: {}", message.into()), action: None, failed: true }
    }
}

/// Runs a built-in; `None` when `name` is not a built-in the assistant offers.
pub fn run_builtin(assistant: &Assistant, name: &str, arguments: &Value) -> Option<ToolResult> {
    let builtin = Builtin::parse(name).filter(|_| assistant.has_tool(name))?;
    let text = |key: &str| arguments.get(key).and_then(Value::as_str).unwrap_or("").trim().to_string();
    Some(match builtin {
        Builtin::EndCall => ToolResult::ok("the call will end after your goodbye", Some(Action::EndCall { reason: text("reason") })),
        Builtin::TransferCall => match text("destination") {
            d if d.is_empty() => ToolResult::error("transfer_call needs a `destination`"),
            given => match crate::call::transfer_destination(&given) {
                Ok(destination) => ToolResult::ok(format!("transferring to {destination}"), Some(Action::Transfer { destination })),
                Err(problem) => ToolResult::error(format!("transfer_call: {problem}")),
            },
        },
        Builtin::SendDtmf => {
            let digits = text("digits");
            match crate::audio::check_keys(&digits) {
                Err(fix) => ToolResult::error(format!("send_dtmf: `{digits}` is not keypad keys; {fix}")),
                Ok(()) => ToolResult::ok(format!("pressed {digits}"), Some(Action::Dtmf { digits })),
            }
        }
        Builtin::SetDisposition => {
            let disposition = text("disposition");
            let known: Vec<&str> = assistant.spec.dispositions.iter().map(|d| d.name.as_str()).collect();
            if !known.contains(&disposition.as_str()) {
                ToolResult::error(format!("unknown disposition `{disposition}`; use one of: {}", known.join(", ")))
            } else {
                ToolResult::ok("recorded", Some(Action::Disposition { name: disposition, notes: text("notes") }))
            }
        }
    })
}

pub fn http_tool<'a>(assistant: &'a Assistant, name: &str) -> Option<&'a HttpToolSpec> {
    assistant.spec.tools.iter().find_map(|t| match t {
        ToolEntry::Http(http) if http.name == name => Some(http),
        _ => None,
    })
}

/// The longest tool response passed back to the LLM.
const MAX_TOOL_RESULT_CHARS: usize = 2_000;

/// Calls an HTTP tool: GET sends the arguments as a query, other methods as a JSON body.
pub async fn run_http(client: &reqwest::Client, tool: &HttpToolSpec, arguments: &Value) -> ToolResult {
    let method = match reqwest::Method::from_bytes(tool.method.to_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => return ToolResult::error(format!("tool {}: bad method {}", tool.name, tool.method)),
    };
    let mut request = client.request(method.clone(), &tool.url).timeout(Duration::from_millis(tool.timeout_ms));
    if method == reqwest::Method::GET {
        let pairs: Vec<(String, String)> = arguments
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect();
        request = request.query(&pairs);
    } else {
        request = request.json(arguments);
    }
    match request.send().await {
        Err(e) if e.is_timeout() => ToolResult::error(format!("tool {} timed out after {} ms", tool.name, tool.timeout_ms)),
        Err(e) => ToolResult::error(format!("tool {} could not be reached: {e}", tool.name)),
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(MAX_TOOL_RESULT_CHARS).collect();
            if status.is_success() {
                ToolResult::ok(body, None)
            } else {
                ToolResult::error(format!("tool {} answered HTTP {status}: {body}", tool.name))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn assistant(tools: &str) -> Assistant {
        let text = format!("version: 1\nname: A\nsystem_prompt: Hi.\ntools: [{tools}]\ndispositions:\n  - {{ name: booked, description: A table was booked. }}\n");
        Assistant::parse(&text, Path::new("a.yaml")).unwrap()
    }

    #[test]
    fn built_ins_are_offered_by_name_and_run_only_where_offered() {
        for builtin in Builtin::ALL {
            assert_eq!(Builtin::parse(builtin.name()), Some(builtin));
        }
        let all = assistant("end_call, transfer_call, send_dtmf, set_disposition");
        let offered: Vec<String> = specs(&all).into_iter().map(|s| s.name).collect();
        assert_eq!(offered, ["end_call", "transfer_call", "send_dtmf", "set_disposition"]);
        let disposition = specs(&all).into_iter().find(|s| s.name == "set_disposition").unwrap();
        assert_eq!(disposition.parameters["properties"]["disposition"]["enum"], json!(["booked"]));

        let ran = run_builtin(&all, "set_disposition", &json!({ "disposition": "booked", "notes": "for two" })).unwrap();
        assert!(matches!(ran.action, Some(Action::Disposition { ref name, .. }) if name == "booked"));
        assert!(run_builtin(&all, "set_disposition", &json!({ "disposition": "sold" })).unwrap().failed);
        assert!(run_builtin(&all, "send_dtmf", &json!({ "digits": "12x" })).unwrap().failed);
        assert!(run_builtin(&all, "lookup_order", &json!({})).is_none(), "not a built-in");

        let some = assistant("end_call");
        assert!(run_builtin(&some, "transfer_call", &json!({ "destination": "+14155552671" })).is_none(), "a built-in not offered");
        assert!(matches!(run_builtin(&some, "end_call", &json!({})).unwrap().action, Some(Action::EndCall { .. })));
    }
}
