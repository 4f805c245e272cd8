//! JSON Schema to GBNF, llama.cpp's grammar format: constrained output.
//!
//! With a grammar the sampler can only pick tokens that keep the output inside it, so a 135M
//! model cannot write a tool call that does not parse, a slot value outside its enum, or a
//! string where a number belongs. The subset of JSON Schema covered is what tool parameters
//! and slot schemas use: `type` (one or several), `properties`/`required`, `items` with
//! `minItems`/`maxItems`, `enum`, `const`, `anyOf`/`oneOf`, string `minLength`/`maxLength` and
//! the `date`, `time` and `date-time` formats. Numeric ranges and `pattern` are not enforced by
//! the grammar (the caller validates the value); `$ref` is refused with a message.
//!
//! Schemas can come from a workspace's tool definitions, so the converter bounds what it
//! builds: nesting depth, rule count and grammar size.

use serde_json::Value;

const MAX_DEPTH: usize = 10;
const MAX_RULES: usize = 400;
const MAX_GRAMMAR_BYTES: usize = 64 * 1024;
const MAX_ALTERNATIVES: usize = 256;
/// Longest string a grammar lets the model write where a schema sets no `maxLength`.
const STRING_CAP: usize = 512;
const ARRAY_CAP: usize = 64;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.under("schema"))]
pub struct SchemaError {
    /// Where in the schema, e.g. `properties.party.type` (empty: the schema itself).
    pub path: String,
    pub message: String,
}

impl SchemaError {
    /// The message, located under `prefix` (the request field that held the schema).
    pub fn under(&self, prefix: &str) -> String {
        match (prefix.is_empty(), self.path.is_empty()) {
            (_, true) => format!("{prefix}: {}", self.message),
            (true, false) => format!("{}: {}", self.path, self.message),
            (false, false) => format!("{prefix}.{}: {}", self.path, self.message),
        }
    }
}

fn fail(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError { path: path.into(), message: message.into() }
}

/// Rules every grammar shares: whitespace, and JSON's scalars and generic values.
const PRIMITIVES: &str = r#"ws ::= [ \t\n]{0,8}
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char{0,512} "\""
integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
number ::= integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value ){0,32} )? ws "}"
array ::= "[" ws ( value ( ws "," ws value ){0,64} )? ws "]"
"#;

struct Builder {
    rules: Vec<String>,
}

impl Builder {
    fn new() -> Self {
        Builder { rules: Vec::new() }
    }

    /// Adds `name ::= body` and returns the name.
    fn rule(&mut self, path: &str, body: String) -> Result<String, SchemaError> {
        if self.rules.len() >= MAX_RULES {
            return Err(fail(path, format!("the schema needs more than {MAX_RULES} grammar rules; simplify it")));
        }
        let name = format!("r{}", self.rules.len());
        self.rules.push(format!("{name} ::= {body}"));
        Ok(name)
    }

    fn finish(self, root: String) -> Result<String, SchemaError> {
        let mut grammar = format!("root ::= {root}\n");
        for rule in &self.rules {
            grammar.push_str(rule);
            grammar.push('\n');
        }
        grammar.push_str(PRIMITIVES);
        if grammar.len() > MAX_GRAMMAR_BYTES {
            return Err(fail("", format!("the grammar for this schema would be {} bytes (limit {MAX_GRAMMAR_BYTES}); simplify it", grammar.len())));
        }
        Ok(grammar)
    }

    /// A grammar expression for values of `schema`.
    fn visit(&mut self, schema: &Value, path: &str, depth: usize) -> Result<String, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(fail(path, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let object = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Bool(false) => return Err(fail(path, "`false` accepts no value")),
            Value::Object(object) => object,
            other => return Err(fail(path, format!("a schema must be an object, not {other}"))),
        };
        let at = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
        if object.contains_key("$ref") {
            return Err(fail(&at("$ref"), "`$ref` is not supported; write the definition inline"));
        }
        if let Some(value) = object.get("const") {
            return Ok(literal(&value.to_string()));
        }
        if let Some(values) = object.get("enum") {
            let values = values.as_array().ok_or_else(|| fail(&at("enum"), "`enum` must be a list"))?;
            if values.is_empty() || values.len() > MAX_ALTERNATIVES {
                return Err(fail(&at("enum"), format!("`enum` must hold 1 to {MAX_ALTERNATIVES} values, not {}", values.len())));
            }
            return Ok(group(values.iter().map(|v| literal(&v.to_string())).collect()));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = object.get(key) {
                let options = options.as_array().ok_or_else(|| fail(&at(key), format!("`{key}` must be a list")))?;
                if options.is_empty() || options.len() > MAX_ALTERNATIVES {
                    return Err(fail(&at(key), format!("`{key}` must hold 1 to {MAX_ALTERNATIVES} schemas")));
                }
                let mut alternatives = Vec::new();
                for (i, option) in options.iter().enumerate() {
                    alternatives.push(self.visit(option, &format!("{}[{i}]", at(key)), depth + 1)?);
                }
                return Ok(group(alternatives));
            }
        }
        if let Some(all) = object.get("allOf").and_then(Value::as_array) {
            return match all.as_slice() {
                [one] => self.visit(one, &format!("{}[0]", at("allOf")), depth + 1),
                _ => Err(fail(&at("allOf"), "`allOf` with more than one schema is not supported; merge them")),
            };
        }
        match object.get("type") {
            Some(Value::String(kind)) => self.typed(kind, object, path, depth),
            Some(Value::Array(kinds)) => {
                if kinds.is_empty() {
                    return Err(fail(&at("type"), "`type` must name at least one type"));
                }
                let mut alternatives = Vec::new();
                for kind in kinds {
                    let kind = kind.as_str().ok_or_else(|| fail(&at("type"), "`type` must hold type names"))?;
                    alternatives.push(self.typed(kind, object, path, depth)?);
                }
                Ok(group(alternatives))
            }
            Some(other) => Err(fail(&at("type"), format!("`type` must be a name or a list of names, not {other}"))),
            None if object.contains_key("properties") => self.typed("object", object, path, depth),
            None => Ok("value".into()),
        }
    }

    fn typed(&mut self, kind: &str, object: &serde_json::Map<String, Value>, path: &str, depth: usize) -> Result<String, SchemaError> {
        let at = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
        let count = |key: &str| -> Result<Option<usize>, SchemaError> {
            match object.get(key) {
                None => Ok(None),
                Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| fail(&at(key), format!("`{key}` must be a whole number, not {v}"))),
            }
        };
        Ok(match kind {
            "string" => {
                match object.get("format").and_then(Value::as_str) {
                    Some("date") => return Ok(r#""\"" [0-9]{4} "-" [0-9]{2} "-" [0-9]{2} "\"""#.into()),
                    Some("time") => return Ok(r#""\"" [0-9]{2} ":" [0-9]{2} (":" [0-9]{2})? "\"""#.into()),
                    Some("date-time") => {
                        return Ok(r#""\"" [0-9]{4} "-" [0-9]{2} "-" [0-9]{2} "T" [0-9]{2} ":" [0-9]{2} (":" [0-9]{2})? ("Z" | [-+] [0-9]{2} ":" [0-9]{2})? "\"""#.into())
                    }
                    _ => {}
                }
                let min = count("minLength")?.unwrap_or(0);
                let max = count("maxLength")?;
                if min == 0 && max.is_none() {
                    "string".into()
                } else {
                    let max = max.unwrap_or(STRING_CAP).min(STRING_CAP);
                    if min > max {
                        return Err(fail(&at("minLength"), format!("minLength {min} is above maxLength {max}")));
                    }
                    format!(r#""\"" char{{{min},{max}}} "\"""#)
                }
            }
            "integer" => "integer".into(),
            "number" => "number".into(),
            "boolean" => "boolean".into(),
            "null" => "null".into(),
            "array" => {
                let item = match object.get("items") {
                    Some(items) => self.visit(items, &at("items"), depth + 1)?,
                    None => "value".into(),
                };
                let item = self.rule(path, item)?;
                let min = count("minItems")?.unwrap_or(0);
                let max = count("maxItems")?.unwrap_or(ARRAY_CAP).min(ARRAY_CAP);
                if min > max {
                    return Err(fail(&at("minItems"), format!("minItems {min} is above maxItems {max}")));
                }
                if max == 0 {
                    r#""[" ws "]""#.into()
                } else {
                    let more = format!(r#"( ws "," ws {item} ){{{},{}}}"#, min.saturating_sub(1), max - 1);
                    if min == 0 {
                        format!(r#""[" ws ( {item} {more} )? ws "]""#)
                    } else {
                        format!(r#""[" ws {item} {more} ws "]""#)
                    }
                }
            }
            "object" => self.object(object, path, depth)?,
            other => return Err(fail(&at("type"), format!("unknown type `{other}`; use string, integer, number, boolean, null, array or object"))),
        })
    }

    /// Required properties first, in order; then optional ones, each may be left out.
    fn object(&mut self, object: &serde_json::Map<String, Value>, path: &str, depth: usize) -> Result<String, SchemaError> {
        let at = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
        let Some(properties) = object.get("properties") else { return Ok("object".into()) };
        let properties = properties.as_object().ok_or_else(|| fail(&at("properties"), "`properties` must be a map of names to schemas"))?;
        if properties.len() > 64 {
            return Err(fail(&at("properties"), "more than 64 properties; split the object"));
        }
        let required: Vec<&str> = match object.get("required") {
            None => Vec::new(),
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            Some(other) => return Err(fail(&at("required"), format!("`required` must be a list of names, not {other}"))),
        };
        for name in &required {
            if !properties.contains_key(*name) {
                return Err(fail(&at("required"), format!("`{name}` is required but not among the properties")));
            }
        }
        let mut pairs = Vec::new();
        for (name, schema) in properties {
            let value = self.visit(schema, &format!("{}.{name}", at("properties")), depth + 1)?;
            let pair = self.rule(path, format!(r#"{} ws ":" ws {value}"#, literal(&Value::String(name.clone()).to_string())))?;
            pairs.push((name.as_str(), pair));
        }
        let mandatory: Vec<&String> = pairs.iter().filter(|(n, _)| required.contains(n)).map(|(_, r)| r).collect();
        let optional: Vec<&String> = pairs.iter().filter(|(n, _)| !required.contains(n)).map(|(_, r)| r).collect();
        // `tail_i`: some in-order subset of optional[i..], not empty.
        let mut tail: Option<String> = None;
        for (i, pair) in optional.iter().enumerate().rev() {
            let body = match &tail {
                None => pair.to_string(),
                Some(next) => format!(r#"{pair} ( ws "," ws {next} )? | {next}"#),
            };
            tail = Some(self.rule(&format!("{path}#optional{i}"), body)?);
        }
        let mut body = String::from(r#""{" ws "#);
        body.push_str(&mandatory.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(r#" ws "," ws "#));
        match (&tail, mandatory.is_empty()) {
            (Some(tail), true) => body.push_str(&format!("{tail}?")),
            (Some(tail), false) => body.push_str(&format!(r#" ( ws "," ws {tail} )?"#)),
            (None, _) => {}
        }
        body.push_str(r#" ws "}""#);
        Ok(body)
    }
}

/// `text` as a GBNF literal.
fn literal(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn group(alternatives: Vec<String>) -> String {
    if alternatives.len() == 1 {
        alternatives.into_iter().next().unwrap_or_default()
    } else {
        format!("( {} )", alternatives.join(" | "))
    }
}

/// A grammar for JSON values of `schema`.
pub fn from_schema(schema: &Value) -> Result<String, SchemaError> {
    let mut builder = Builder::new();
    let root = builder.visit(schema, "", 0)?;
    builder.finish(format!("ws {root} ws"))
}

/// A grammar for any JSON object (`response_format: json_object`).
pub fn json_object() -> String {
    format!("root ::= ws object ws\n{PRIMITIVES}")
}

/// Where a tool call's grammar starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallForm {
    /// The reply is the call's JSON object and nothing else (`tool_choice` forces a call, or
    /// the model opened its reply with `{`).
    Bare,
    /// The model wrote `<tool_call>`: the object, then `</tool_call>`.
    Tagged,
}

/// A grammar for one call of one of `tools` (OpenAI's `{"type": "function", "function": {…}}`
/// shape), as `{"name": …, "arguments": {…}}`. `only` keeps one function.
pub fn tool_call(tools: &[Value], only: Option<&str>, form: CallForm) -> Result<String, SchemaError> {
    let mut builder = Builder::new();
    let mut alternatives = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}].function");
        let function = tool.get("function").unwrap_or(tool);
        let name = function.get("name").and_then(Value::as_str).ok_or_else(|| fail(&format!("{path}.name"), "every tool needs a name"))?;
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let arguments = match function.get("parameters") {
            Some(parameters) => builder.visit(parameters, &format!("{path}.parameters"), 0)?,
            None => "object".into(),
        };
        let call = format!(r#"{} ws "," ws "\"arguments\"" ws ":" ws {arguments}"#, literal(&Value::String(name.into()).to_string()));
        alternatives.push(builder.rule(&path, call)?);
    }
    if alternatives.is_empty() {
        return Err(fail("tool_choice", match only {
            Some(name) => format!("no tool is named `{name}`"),
            None => "there are no tools to call".into(),
        }));
    }
    let object = format!(r#""{{" ws "\"name\"" ws ":" ws {} ws "}}""#, group(alternatives));
    let root = match form {
        CallForm::Bare => format!("ws {object} ws"),
        CallForm::Tagged => format!(r#"ws {object} ws "</tool_call>""#),
    };
    builder.finish(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_put_required_properties_first_and_may_leave_out_optional_ones() {
        let grammar = from_schema(&json!({
            "type": "object",
            "properties": { "party": { "type": "integer" }, "name": { "type": "string", "maxLength": 40 }, "notes": { "type": "string" } },
            "required": ["party"]
        }))
        .unwrap();
        assert!(grammar.starts_with("root ::= ws "), "{grammar}");
        assert!(grammar.contains(r#""\"party\"" ws ":" ws integer"#), "{grammar}");
        assert!(grammar.contains(r#"char{0,40}"#), "{grammar}");
        assert!(grammar.contains(r#"( ws "," ws r"#), "optional tail after the required: {grammar}");
    }

    #[test]
    fn enums_and_consts_are_literal_alternatives_with_quotes_escaped() {
        let grammar = from_schema(&json!({ "enum": ["booked", "say \"no\"", 3, null] })).unwrap();
        assert!(grammar.contains(r#"( "\"booked\"" | "\"say \\\"no\\\"\"" | "3" | "null" )"#), "{grammar}");
        let grammar = from_schema(&json!({ "const": "x" })).unwrap();
        assert!(grammar.starts_with(r#"root ::= ws "\"x\"" ws"#), "{grammar}");
    }

    #[test]
    fn unsupported_or_hostile_schemas_are_refused_with_where_and_why() {
        let error = from_schema(&json!({ "type": "object", "properties": { "a": { "$ref": "#/defs/a" } } })).unwrap_err();
        assert_eq!(error.path, "properties.a.$ref");
        assert!(error.message.contains("inline"), "{error}");
        let error = from_schema(&json!({ "type": "strnig" })).unwrap_err();
        assert!(error.to_string().contains("unknown type `strnig`"), "{error}");
        let mut deep = json!({ "type": "string" });
        for _ in 0..50 {
            deep = json!({ "type": "array", "items": deep });
        }
        assert!(from_schema(&deep).unwrap_err().message.contains("deeper"));
        let wide: serde_json::Map<String, Value> = (0..60).map(|i| (format!("p{i}"), json!({ "enum": (0..200).collect::<Vec<_>>() }))).collect();
        let error = from_schema(&json!({ "type": "object", "properties": wide })).unwrap_err();
        assert!(error.message.contains("bytes"), "{error}");
        assert!(from_schema(&json!({ "type": "string", "minLength": 5, "maxLength": 2 })).is_err());
    }

    #[test]
    fn tool_calls_offer_each_function_with_its_arguments() {
        let tools = vec![
            json!({ "type": "function", "function": { "name": "end_call", "parameters": { "type": "object", "properties": {} } } }),
            json!({ "type": "function", "function": { "name": "set_disposition", "parameters": {
                "type": "object", "properties": { "disposition": { "enum": ["booked", "declined"] } }, "required": ["disposition"] } } }),
        ];
        let grammar = tool_call(&tools, None, CallForm::Tagged).unwrap();
        assert!(grammar.contains(r#""\"end_call\"""#) && grammar.contains(r#""\"set_disposition\"""#), "{grammar}");
        assert!(grammar.contains(r#""</tool_call>""#), "{grammar}");
        let only = tool_call(&tools, Some("set_disposition"), CallForm::Bare).unwrap();
        assert!(!only.contains("end_call"), "{only}");
        assert_eq!(tool_call(&tools, Some("transfer"), CallForm::Bare).unwrap_err().message, "no tool is named `transfer`");
    }
}
