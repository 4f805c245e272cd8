//! Prompt templates: minijinja in strict mode, with dynamic variables and built-ins.
//!
//! Built-ins every template sees: `now` (ISO 8601), `date`, `time`, `weekday` (in the
//! assistant's timezone), `caller`, `callee`, `call_id`, `assistant_name`. An undefined name is
//! an error, never an empty string spoken to a customer.

use std::collections::BTreeMap;

use chrono::Utc;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{json, Map, Value};

use super::Assistant;

/// Who is on the call, for the built-ins.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
}

/// Checks provided `key=value` variables against the assistant's declarations and fills
/// defaults. Errors name the variable and the fix.
pub fn resolve_variables(assistant: &Assistant, provided: &BTreeMap<String, String>) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (name, spec) in &assistant.spec.variables {
        let value = match (provided.get(name), &spec.default) {
            (Some(raw), _) => typed(name, &spec.kind, raw)?,
            (None, Some(default)) => default.clone(),
            (None, None) if spec.required => {
                return Err(format!("variable `{name}` is required by {}: pass it, e.g. --var {name}=…", assistant.spec.name))
            }
            (None, None) => Value::Null,
        };
        out.insert(name.clone(), value);
    }
    for name in provided.keys() {
        if !assistant.spec.variables.contains_key(name) {
            return Err(format!(
                "variable `{name}` is not declared by {} (declared: {})",
                assistant.spec.name,
                assistant.spec.variables.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(out)
}

fn typed(name: &str, kind: &str, raw: &str) -> Result<Value, String> {
    match kind {
        "string" | "date" | "datetime" | "phone" => Ok(json!(raw)),
        "number" => raw.parse::<f64>().map(|n| json!(n)).map_err(|_| format!("variable `{name}`: `{raw}` is not a number")),
        "integer" => raw.parse::<i64>().map(|n| json!(n)).map_err(|_| format!("variable `{name}`: `{raw}` is not an integer")),
        "boolean" => match raw {
            "true" | "yes" | "1" => Ok(json!(true)),
            "false" | "no" | "0" => Ok(json!(false)),
            _ => Err(format!("variable `{name}`: `{raw}` is not true or false")),
        },
        other => Err(format!("variable `{name}`: unknown type `{other}` (string, number, integer, boolean, date, datetime, phone)")),
    }
}

/// The full template context: variables plus built-ins.
pub fn context(assistant: &Assistant, variables: &Map<String, Value>, call: &CallContext) -> Value {
    let now = Utc::now().with_timezone(&assistant.timezone);
    let mut map = variables.clone();
    map.insert("now".into(), json!(now.to_rfc3339()));
    map.insert("date".into(), json!(now.format("%A %-d %B %Y").to_string()));
    map.insert("time".into(), json!(now.format("%H:%M").to_string()));
    map.insert("weekday".into(), json!(now.format("%A").to_string()));
    map.insert("caller".into(), json!(call.caller));
    map.insert("callee".into(), json!(call.callee));
    map.insert("call_id".into(), json!(call.call_id));
    map.insert("assistant_name".into(), json!(assistant.spec.name));
    Value::Object(map)
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(false);
    env
}

pub fn render(template: &str, context: &Value) -> Result<String, String> {
    let env = environment();
    env.render_str(template, context).map(|s| s.trim().to_string()).map_err(|e| describe(&e))
}

fn describe(error: &minijinja::Error) -> String {
    let mut message = error.to_string();
    if let Some(line) = error.line() {
        message = format!("line {line}: {message}");
    }
    message
}

/// Renders the system prompt and first message against a sample context (load-time check).
pub fn check(assistant: &Assistant) -> Result<(), (String, String)> {
    let mut sample = Map::new();
    for (name, spec) in &assistant.spec.variables {
        let value = spec.default.clone().unwrap_or_else(|| match spec.kind.as_str() {
            "number" | "integer" => json!(1),
            "boolean" => json!(true),
            _ => json!(format!("<{name}>")),
        });
        sample.insert(name.clone(), value);
    }
    let ctx = context(assistant, &sample, &CallContext { call_id: "call_sample".into(), caller: "+15550100".into(), callee: "+15550199".into() });
    let template_field = if assistant.spec.prompt.is_some() { "prompt" } else { "system_prompt" };
    render(&assistant.system_template, &ctx)
        .map_err(|e| (template_field.to_string(), format!("the template does not render: {e} (declare the variable under `variables:` or fix the name)")))?;
    if let Some(first) = &assistant.spec.first_message {
        render(first, &ctx).map_err(|e| ("first_message".to_string(), format!("{e} (declare the variable under `variables:` or fix the name)")))?;
    }
    Ok(())
}
