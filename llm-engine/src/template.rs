//! Prompt rendering with the model's own chat template, and tool-call parsing of its output.
//!
//! GGUF files carry their Jinja chat template; minijinja renders it unchanged. Tools follow
//! the Qwen/Hermes convention (`<tool_call>{"name": …, "arguments": …}</tool_call>`). A model
//! whose template knows nothing of tools gets them described in its system message, and tool
//! traffic rewritten as plain turns in the same convention, so the runtime need not care which
//! model it talks to.

use serde_json::{json, Value};

pub struct ChatTemplate {
    source: String,
    supports_tools: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the chat template failed to render: {0}")]
    Render(String),
}

impl ChatTemplate {
    pub fn new(source: String) -> Self {
        let supports_tools = source.contains("tools");
        ChatTemplate { source, supports_tools }
    }

    /// Renders `messages` (OpenAI shape) and `tools` into the prompt text, ending with the
    /// assistant's generation prompt.
    pub fn render(&self, messages: &[Value], tools: &[Value]) -> Result<String, TemplateError> {
        let (messages, tools) = if self.supports_tools || tools.is_empty() {
            (messages.iter().map(normalize_arguments).collect::<Vec<_>>(), tools.to_vec())
        } else {
            (inline_tools(messages, tools), Vec::new())
        };
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template("chat", &self.source).map_err(|e| TemplateError::Render(e.to_string()))?;
        let template = env.get_template("chat").map_err(|e| TemplateError::Render(e.to_string()))?;
        let tools = if tools.is_empty() { Value::Null } else { Value::Array(tools) };
        template
            .render(minijinja::context! { messages => messages, tools => tools, add_generation_prompt => true, bos_token => "", eos_token => "" })
            .map_err(|e| TemplateError::Render(e.to_string()))
    }
}

/// OpenAI sends tool-call arguments as a JSON string; templates want the object.
fn normalize_arguments(message: &Value) -> Value {
    let mut message = message.clone();
    if message.get("content").is_none_or(Value::is_null) {
        message["content"] = json!("");
    }
    if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for call in calls {
            if let Some(args) = call.pointer_mut("/function/arguments") {
                if let Some(text) = args.as_str() {
                    *args = serde_json::from_str(text).unwrap_or(json!({}));
                }
            }
        }
    }
    message
}

/// For templates without tool support: describe tools in the system message and turn tool
/// calls and results into ordinary assistant and user turns.
fn inline_tools(messages: &[Value], tools: &[Value]) -> Vec<Value> {
    let mut description = String::from(
        "\n\n# Tools\n\nYou may call a function by replying with only:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>\nAvailable functions:\n",
    );
    for tool in tools {
        description.push_str(&tool.to_string());
        description.push('\n');
    }
    let mut out = Vec::new();
    let has_system = messages.first().and_then(|m| m["role"].as_str()) == Some("system");
    if !has_system {
        out.push(json!({ "role": "system", "content": description.trim_start() }));
    }
    for (index, message) in messages.iter().enumerate() {
        let message = normalize_arguments(message);
        let role = message["role"].as_str().unwrap_or("user");
        let content = message["content"].as_str().unwrap_or("").to_string();
        match role {
            "system" if index == 0 => out.push(json!({ "role": "system", "content": content + &description })),
            "tool" => out.push(json!({ "role": "user", "content": format!("<tool_response>\n{content}\n</tool_response>") })),
            "assistant" if message.get("tool_calls").is_some() => {
                let mut text = content;
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    let function = call.get("function").unwrap_or(call);
                    text.push_str(&format!(
                        "\n<tool_call>\n{}\n</tool_call>",
                        json!({ "name": function["name"], "arguments": function["arguments"] })
                    ));
                }
                out.push(json!({ "role": "assistant", "content": text.trim_start() }));
            }
            _ => out.push(json!({ "role": role, "content": content })),
        }
    }
    out
}

pub const TOOL_OPEN: &str = "<tool_call>";
pub const TOOL_CLOSE: &str = "</tool_call>";

/// A tool call parsed from model output.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// Parses the body between `<tool_call>` and `</tool_call>`; `None` when it is not a call.
pub fn parse_call(body: &str) -> Option<ParsedCall> {
    let value: Value = serde_json::from_str(body.trim()).ok()?;
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = match value.get("arguments") {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => "{}".to_string(),
    };
    Some(ParsedCall { name, arguments })
}

/// The length of the longest suffix of `text` that is a prefix of `marker` (a marker that
/// may be arriving token by token must not be streamed out as content).
pub fn partial_marker_len(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len()) + 1)
        .rev()
        .find(|n| text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn tools_are_inlined_for_templates_without_them() {
        let template = ChatTemplate::new(CHATML.to_string());
        let messages = vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Bye"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "end_call", "arguments": "{\"reason\":\"done\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "ok"}),
        ];
        let tools = vec![json!({"type": "function", "function": {"name": "end_call", "parameters": {}}})];
        let prompt = template.render(&messages, &tools).unwrap();
        assert!(prompt.contains("Be brief.\n\n# Tools"), "{prompt}");
        assert!(prompt.contains("<tool_call>\n{\"arguments\":{\"reason\":\"done\"},\"name\":\"end_call\"}\n</tool_call>"), "{prompt}");
        assert!(prompt.contains("<|im_start|>user\n<tool_response>\nok\n</tool_response>"), "{prompt}");
        assert!(prompt.ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn calls_parse_and_partial_markers_are_held_back() {
        assert_eq!(
            parse_call("{\"name\": \"end_call\", \"arguments\": {\"reason\": \"bye\"}}"),
            Some(ParsedCall { name: "end_call".into(), arguments: "{\"reason\":\"bye\"}".into() })
        );
        assert_eq!(parse_call("not json"), None);
        assert_eq!(partial_marker_len("Sure <tool_", TOOL_OPEN), 6);
        assert_eq!(partial_marker_len("Sure.", TOOL_OPEN), 0);
        assert_eq!(partial_marker_len("a <", TOOL_OPEN), 1);
    }
}
