//! The rules an assistant spec must meet beyond its shape, each with the field and the fix.
//!
//! [`problems`] lists everything wrong at once (so `assistants check` shows a whole file's
//! mistakes in one run); [`line_of`] finds a field's line in the YAML text for the message.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{AssistantSpec, Builtin, LlmProvider, SttProvider, ToolEntry, VoiceProvider, SPEC_VERSION};
use crate::models::Manifest;

pub const VARIABLE_TYPES: &[&str] = &["string", "number", "integer", "boolean", "date", "datetime", "phone"];
const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Every rule the spec breaks, as (field path, message with the fix).
pub fn problems(spec: &AssistantSpec) -> Vec<(String, String)> {
    let mut out = Problems::default();
    identity(spec, &mut out);
    engines(spec, &mut out);
    variables(spec, &mut out);
    intents(spec, &mut out);
    outcomes(spec, &mut out);
    tools(spec, &mut out);
    turn_taking(spec, &mut out);
    keys(spec, &mut out);
    if let Some(flow) = &spec.flow {
        flow_problems(spec, flow, &mut out);
    }
    bounds(spec, &mut out);
    out.0
}

/// The problems found so far, in the order `assistants check` prints them.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, field: String, message: String) {
        self.0.push((field, message));
    }
}

/// The spec's version, name, timezone and language.
fn identity(spec: &AssistantSpec, out: &mut Problems) {
    if spec.version != SPEC_VERSION {
        out.add("version".into(), format!("{} is not supported; set `version: {SPEC_VERSION}`", spec.version));
    }
    if spec.name.trim().is_empty() {
        out.add("name".into(), "is empty; give the assistant a name".into());
    }
    if spec.timezone.parse::<chrono_tz::Tz>().is_err() {
        out.add("timezone".into(), format!("`{}` is not an IANA zone; use one such as Europe/London or America/New_York", spec.timezone));
    }
    if spec.language.len() < 2 || !spec.language.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        out.add("language".into(), format!("`{}` is not a language tag; use one such as en-US", spec.language));
    }
}

/// Voice, LLM and speech-to-text: providers known, local models in the model store, settings in range.
fn engines(spec: &AssistantSpec, out: &mut Problems) {
    // Providers and models resolve against what the model store can hold.
    let manifest = Manifest::load().ok();
    let known = |name: &str| manifest.as_ref().is_none_or(|m| m.get(name).is_ok());
    let names_of = |role: &str, strip: &str| {
        manifest
            .as_ref()
            .map(|m| m.models.iter().filter(|s| s.role == role).map(|s| s.name.trim_start_matches(strip).to_string()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    match spec.voice.provider {
        VoiceProvider::Piper => {
            if !known(&format!("piper-{}", spec.voice.name)) {
                out.add("voice.name".into(), format!("no Piper voice `{}` in the model store; use one of: {}", spec.voice.name, names_of("tts", "piper-")));
            }
        }
        VoiceProvider::Espeak | VoiceProvider::Openai => {}
    }
    match spec.llm.provider {
        LlmProvider::Local => {
            if !known(&spec.llm.model) {
                out.add("llm.model".into(), format!("no local model `{}`; use one of: {}", spec.llm.model, names_of("llm", "")));
            }
        }
        LlmProvider::Openai => {
            if spec.llm.base_url.as_deref().is_some_and(|u| reqwest::Url::parse(u).is_err()) {
                out.add("llm.base_url".into(), "is not a URL; use e.g. https://api.openai.com/v1".into());
            }
        }
    }
    if !(0.0..=2.0).contains(&spec.llm.temperature) {
        out.add("llm.temperature".into(), format!("{} is outside 0..2", spec.llm.temperature));
    }
    if spec.llm.max_tokens == 0 || spec.llm.max_tokens > 4096 {
        out.add("llm.max_tokens".into(), format!("{} is outside 1..4096", spec.llm.max_tokens));
    }
    match spec.stt.provider {
        SttProvider::Whisper => {
            let model = if spec.stt.model.starts_with("whisper-") { spec.stt.model.clone() } else { format!("whisper-{}", spec.stt.model) };
            if !known(&model) {
                out.add("stt.model".into(), format!("no Whisper model `{}`; use one of: {}", spec.stt.model, names_of("stt", "whisper-")));
            }
        }
        SttProvider::Openai => {}
    }
    let partial = spec.stt.partial_interval_ms;
    if partial != 0 && !(300..=10_000).contains(&partial) {
        out.add("stt.partial_interval_ms".into(), format!("{partial} is outside 300..10000; use 0 to turn partial transcripts off"));
    }
    let confirm_below = spec.stt.confirm_below;
    if !(0.0..=1.0).contains(&confirm_below) {
        out.add("stt.confirm_below".into(), format!("{confirm_below} is outside 0..1; use 0 to never check what was heard"));
    }
}

/// Variables: template names, known types, defaults of their type.
fn variables(spec: &AssistantSpec, out: &mut Problems) {
    for (name, variable) in &spec.variables {
        let field = format!("variables.{name}");
        if !is_identifier(name) {
            out.add(field.clone(), "is not a template name; use letters, digits and underscores, starting with a letter".into());
        }
        if !VARIABLE_TYPES.contains(&variable.kind.as_str()) {
            out.add(format!("{field}.type"), format!("`{}` is not a type; use one of: {}", variable.kind, VARIABLE_TYPES.join(", ")));
        } else if let Some(default) = &variable.default {
            if !matches_type(&variable.kind, default) {
                out.add(format!("{field}.default"), format!("{default} is not a {}; give a default of that type or change `type`", variable.kind));
            }
        }
        if variable.required && variable.default.is_some() {
            out.add(format!("{field}.required"), "a required variable cannot have a default; drop one of them".into());
        }
    }
}

/// Intents (unique, with examples), the intent threshold, and the routes they lead to.
fn intents(spec: &AssistantSpec, out: &mut Problems) {
    let mut seen = BTreeSet::new();
    for (i, intent) in spec.intents.iter().enumerate() {
        let field = format!("intents.{i}");
        if !is_identifier(&intent.name) {
            out.add(format!("{field}.name"), format!("`{}` is not an identifier; use e.g. cancel_order", intent.name));
        } else if !seen.insert(intent.name.clone()) {
            out.add(format!("{field}.name"), format!("`{}` is declared twice; names must be unique", intent.name));
        }
        if intent.examples.iter().all(|e| e.trim().is_empty()) {
            out.add(format!("{field}.examples"), format!("intent `{}` has no examples; give at least one phrase a caller would say", intent.name));
        }
    }
    if !(0.0..=1.0).contains(&spec.intent_threshold) {
        out.add("intent_threshold".into(), format!("{} is not a similarity; give a value from 0 to 1 (default 0.5)", spec.intent_threshold));
    }
    for (i, route) in spec.routes.iter().enumerate() {
        let field = format!("routes.{i}");
        match &route.intent {
            Some(intent) if !spec.intents.iter().any(|d| &d.name == intent) => {
                out.add(format!("{field}.intent"), format!("no intent `{intent}` in `intents`; declare it there or name one of those"))
            }
            None if !route.escalation => out.add(field.clone(), "a route needs an `intent` or `escalation: true`".into()),
            _ => {}
        }
        if route.say.is_none() && route.transfer.is_none() && !route.end_call && route.disposition.is_none() {
            out.add(field.clone(), "a route does nothing; give it `say`, `transfer`, `end_call` or `disposition`".into());
        }
        if let Some(disposition) = &route.disposition {
            if !spec.dispositions.is_empty() && !spec.dispositions.iter().any(|d| &d.name == disposition) {
                out.add(format!("{field}.disposition"), format!("no disposition `{disposition}` in `dispositions`"));
            }
        }
        if let Some(destination) = &route.transfer {
            if let Some(message) = destination_problem(destination, spec, &[]) {
                out.add(format!("{field}.transfer"), message);
            }
        }
    }
}

/// Dispositions and fields to extract: unique identifiers, known types.
fn outcomes(spec: &AssistantSpec, out: &mut Problems) {
    let mut seen = BTreeSet::new();
    for (i, disposition) in spec.dispositions.iter().enumerate() {
        if !is_identifier(&disposition.name) {
            out.add(format!("dispositions.{i}.name"), format!("`{}` is not an identifier; use e.g. callback_requested", disposition.name));
        } else if !seen.insert(disposition.name.clone()) {
            out.add(format!("dispositions.{i}.name"), format!("`{}` is declared twice; names must be unique", disposition.name));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, field_spec) in spec.extract.iter().enumerate() {
        if !is_identifier(&field_spec.name) {
            out.add(format!("extract.{i}.name"), format!("`{}` is not an identifier; use e.g. callback_time", field_spec.name));
        } else if !seen.insert(field_spec.name.clone()) {
            out.add(format!("extract.{i}.name"), format!("`{}` is declared twice; names must be unique", field_spec.name));
        }
        if !VARIABLE_TYPES.contains(&field_spec.kind.as_str()) {
            out.add(format!("extract.{i}.type"), format!("`{}` is not a type; use one of: {}", field_spec.kind, VARIABLE_TYPES.join(", ")));
        }
    }
}

/// Built-in tools by known name; HTTP tools with a unique name, an http(s) URL, a method, a schema and a timeout.
fn tools(spec: &AssistantSpec, out: &mut Problems) {
    let mut seen = BTreeSet::new();
    for (i, tool) in spec.tools.iter().enumerate() {
        match tool {
            ToolEntry::Builtin(name) => {
                if Builtin::parse(name).is_none() {
                    out.add(format!("tools.{i}"), format!("unknown built-in `{name}` (built-ins: {}); or declare an HTTP tool with name and url", Builtin::names()));
                }
                seen.insert(name.clone());
            }
            ToolEntry::Http(http) => {
                let field = format!("tools.{i}");
                if !is_identifier(&http.name) || Builtin::parse(&http.name).is_some() {
                    out.add(format!("{field}.name"), format!("`{}` must be an identifier that is not a built-in's name", http.name));
                } else if !seen.insert(http.name.clone()) {
                    out.add(format!("{field}.name"), format!("`{}` is declared twice; names must be unique", http.name));
                }
                match reqwest::Url::parse(&http.url) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                    _ => out.add(format!("{field}.url"), format!("`{}` is not an http(s) URL", http.url)),
                }
                if !HTTP_METHODS.contains(&http.method.to_ascii_uppercase().as_str()) {
                    out.add(format!("{field}.method"), format!("`{}` is not one of {}", http.method, HTTP_METHODS.join(", ")));
                }
                if http.parameters.get("type").and_then(Value::as_str) != Some("object") {
                    out.add(format!("{field}.parameters"), "must be a JSON schema of `type: object` with `properties`".into());
                }
                if !(100..=60_000).contains(&http.timeout_ms) {
                    out.add(format!("{field}.timeout_ms"), format!("{} is outside 100..60000", http.timeout_ms));
                }
            }
        }
    }
}

/// Turn-taking settings in range, and the webhook URL.
fn turn_taking(spec: &AssistantSpec, out: &mut Problems) {
    let turn = &spec.turn;
    let ranges: [(&str, f64, f64, f64); 10] = [
        ("endpointing_ms", turn.endpointing_ms as f64, 64.0, 5_000.0),
        ("vad_threshold", turn.vad_threshold as f64, 0.05, 0.95),
        ("vad_start_ms", turn.vad_start_ms as f64, 32.0, 2_000.0),
        ("barge_in_pause_ms", turn.barge_in_pause_ms as f64, 32.0, 2_000.0),
        ("incomplete_wait_ms", turn.incomplete_wait_ms as f64, 0.0, 10_000.0),
        ("smart_turn_threshold", turn.smart_turn_threshold as f64, 0.0, 1.0),
        ("min_interrupt_ms", turn.min_interrupt_ms as f64, 0.0, 5_000.0),
        ("idle_reprompt_s", turn.idle_reprompt_s as f64, 1.0, 600.0),
        ("idle_hangup_s", turn.idle_hangup_s as f64, 1.0, 3_600.0),
        ("max_duration_s", turn.max_duration_s as f64, 5.0, 14_400.0),
    ];
    for (name, value, low, high) in ranges {
        if !(low..=high).contains(&value) {
            out.add(format!("turn.{name}"), format!("{value} is outside {low}..{high}"));
        }
    }
    if turn.idle_hangup_s < turn.idle_reprompt_s {
        out.add("turn.idle_hangup_s".into(), "is shorter than idle_reprompt_s; the reprompt would never be said".into());
    }
    if let Some(url) = &spec.webhook_url {
        if reqwest::Url::parse(url).map(|u| !matches!(u.scheme(), "http" | "https")).unwrap_or(true) {
            out.add("webhook_url".into(), format!("`{url}` is not an http(s) URL"));
        }
    }
}

/// Where each provider's API key comes from: an environment variable or a named secret, not both.
fn keys(spec: &AssistantSpec, out: &mut Problems) {
    let keys = [
        ("llm", &spec.llm.api_key_env, &spec.llm.api_key_secret),
        ("stt", &spec.stt.api_key_env, &spec.stt.api_key_secret),
        ("voice", &spec.voice.api_key_env, &spec.voice.api_key_secret),
    ];
    for (section, env, secret) in keys {
        if env.is_some() && secret.is_some() {
            out.add(format!("{section}.api_key_secret"), "give `api_key_env` or `api_key_secret`, not both".into());
        }
        if let Some(name) = secret {
            if !is_secret_name(name) {
                out.add(format!("{section}.api_key_secret"), format!("`{}` is not a secret name; use letters, digits and underscores (at most {MAX_SECRET_NAME} characters)", clip(name)));
            }
        }
    }
}

/// The flow's own rules, its transfers' destinations, and its size.
fn flow_problems(spec: &AssistantSpec, flow: &crate::flow::FlowSpec, out: &mut Problems) {
    let dispositions: Vec<String> = spec.dispositions.iter().map(|d| d.name.clone()).collect();
    let tools: Vec<String> = spec.tools.iter().filter_map(|t| match t {
        ToolEntry::Http(http) => Some(http.name.clone()),
        ToolEntry::Builtin(_) => None,
    }).collect();
    for (field, message) in crate::flow::problems(flow, &dispositions, &tools) {
        out.add(field, message);
    }
    // A flow's transfers: a literal destination must be dialable; `{{ name }}` must name
    // something the call will have (a variable, a slot, a tool's result).
    let mut names: Vec<String> = flow.nodes.values().flat_map(|n| n.collect.iter().map(|slot| slot.name.clone())).collect();
    names.extend(tools.iter().cloned());
    let transfers = flow
        .nodes
        .iter()
        .flat_map(|(node, n)| n.actions.iter().enumerate().map(move |(i, a)| (format!("flow.nodes.{node}.actions.{i}.transfer_call"), a)))
        .chain(flow.global.iter().enumerate().flat_map(|(h, handler)| handler.actions.iter().enumerate().map(move |(i, a)| (format!("flow.global.{h}.actions.{i}.transfer_call"), a))));
    for (field, action) in transfers {
        if let crate::flow::ActionSpec::Transfer { transfer_call } = action {
            if let Some(message) = destination_problem(transfer_call, spec, &names) {
                out.add(field, message);
            }
        }
    }
    let nodes = flow.nodes.len();
    if nodes > 100 {
        out.add("flow.nodes".into(), format!("has {nodes} nodes; the most is 100"));
    }
    let text = serde_json::to_string(flow).map(|t| t.len()).unwrap_or(0);
    if text > MAX_TEMPLATE_BYTES * 2 {
        out.add("flow".into(), format!("is {text} bytes of JSON; the most is {}", MAX_TEMPLATE_BYTES * 2));
    }
}

/// Templates and lists within their bounds.
fn bounds(spec: &AssistantSpec, out: &mut Problems) {
    for (field, len, max) in sizes(spec) {
        if len > max {
            out.add(field, format!("is {len} long; the most is {max}"));
        }
    }
}

/// The longest template (system prompt or prompt file) an assistant may have, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 32 * 1024;
pub const MAX_SECRET_NAME: usize = 64;
/// The most intent examples an assistant (or one `/v1/analysis/intent` request) may carry.
pub const MAX_INTENT_EXAMPLES: usize = 5_000;

/// The sizes an assistant may not exceed, as (field, actual, most), so that no spec can make
/// a call or a request do unbounded work.
fn sizes(spec: &AssistantSpec) -> Vec<(String, usize, usize)> {
    let mut out = vec![
        ("name".to_string(), spec.name.chars().count(), 200),
        ("system_prompt".to_string(), spec.system_prompt.as_deref().map_or(0, str::len), MAX_TEMPLATE_BYTES),
        ("first_message".to_string(), spec.first_message.as_deref().map_or(0, str::len), 2_000),
        ("variables".to_string(), spec.variables.len(), 100),
        ("intents".to_string(), spec.intents.len(), 1_000),
        ("dispositions".to_string(), spec.dispositions.len(), 100),
        ("extract".to_string(), spec.extract.len(), 100),
        ("tools".to_string(), spec.tools.len(), 32),
        ("routes".to_string(), spec.routes.len(), 50),
        // Every example is embedded once per assistant version: bounded work.
        ("intents (examples in all)".to_string(), spec.intents.iter().map(|i| i.examples.len()).sum(), MAX_INTENT_EXAMPLES),
    ];
    for (i, route) in spec.routes.iter().enumerate() {
        out.push((format!("routes.{i}.say"), route.say.as_deref().map_or(0, str::len), 1_000));
        out.push((format!("routes.{i}.transfer"), route.transfer.as_deref().map_or(0, str::len), 200));
    }
    for (name, variable) in &spec.variables {
        out.push((format!("variables.{name}"), name.len(), 64));
        out.push((format!("variables.{name}.description"), variable.description.as_deref().map_or(0, str::len), 1_000));
        out.push((format!("variables.{name}.default"), variable.default.as_ref().map_or(0, |v| v.to_string().len()), 2_000));
    }
    for (i, intent) in spec.intents.iter().enumerate() {
        out.push((format!("intents.{i}.examples"), intent.examples.len(), 50));
        for (j, example) in intent.examples.iter().enumerate() {
            out.push((format!("intents.{i}.examples.{j}"), example.len(), 500));
        }
        out.push((format!("intents.{i}.description"), intent.description.as_deref().map_or(0, str::len), 500));
    }
    for (i, d) in spec.dispositions.iter().enumerate() {
        out.push((format!("dispositions.{i}.description"), d.description.len(), 1_000));
    }
    for (i, tool) in spec.tools.iter().enumerate() {
        if let ToolEntry::Http(http) = tool {
            out.push((format!("tools.{i}.description"), http.description.len(), 1_000));
            out.push((format!("tools.{i}.url"), http.url.len(), 2_000));
            out.push((format!("tools.{i}.parameters"), http.parameters.to_string().len(), 8_000));
            out.push((format!("tools.{i}.filler"), http.filler.len(), 300));
        }
    }
    out
}

/// A workspace secret's name: an identifier of at most [`MAX_SECRET_NAME`] characters.
pub fn is_secret_name(name: &str) -> bool {
    name.len() <= MAX_SECRET_NAME && (is_identifier(name) || name.starts_with('_') && name.len() > 1 && is_identifier(&name[1..]))
}

/// A value quoted in a message, cut to a readable length.
pub fn clip(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Rules for assistants a workspace sends over the API, on top of [`problems`]: they may not
/// read the server's environment. (Their URLs are checked against the egress policy by the
/// server, which knows it.)
pub fn tenant_problems(spec: &AssistantSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (section, env) in [("llm", &spec.llm.api_key_env), ("stt", &spec.stt.api_key_env), ("voice", &spec.voice.api_key_env)] {
        if env.is_some() {
            out.push((
                format!("{section}.api_key_env"),
                format!("assistants created over the API cannot read the server's environment; store the key with POST /v1/secrets and name it in `{section}.api_key_secret`"),
            ));
        }
    }
    out
}

pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn matches_type(kind: &str, value: &Value) -> bool {
    match kind {
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        _ => value.is_string(),
    }
}

/// The line (1-based) of a dotted field path in YAML text: each segment is looked for below
/// the previous one's line; numeric segments count list items (`- `) at the next level.
pub fn line_of(text: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0usize;
    let mut found = None;
    for segment in field.split('.') {
        if let Ok(index) = segment.parse::<usize>() {
            // The index-th list item after `from`.
            let mut count = 0;
            let mut hit = None;
            for (i, line) in lines.iter().enumerate().skip(from) {
                if line.trim_start().starts_with("- ") || line.trim() == "-" {
                    if count == index {
                        hit = Some(i);
                        break;
                    }
                    count += 1;
                }
            }
            let i = hit?;
            found = Some(i);
            from = i;
            continue;
        }
        let pattern_block = format!("{segment}:");
        let pattern_inline = format!("{segment}: ");
        let hit = lines.iter().enumerate().skip(from).find(|(_, line)| {
            let trimmed = line.trim_start().trim_start_matches("- ");
            trimmed.starts_with(&pattern_block) || line.contains(&format!("{{ {pattern_inline}")) || line.contains(&format!(", {pattern_inline}"))
        });
        match hit {
            Some((i, _)) => {
                found = Some(i);
                from = i;
            }
            None => break,
        }
    }
    found.map(|i| i + 1)
}

/// Why a transfer destination cannot be dialled, if it cannot: a literal must be a phone
/// number or a SIP address; `{{ name }}` must name a declared variable, a call fact (`caller`,
/// `callee`) or one of `more` (a flow's slots and tools).
fn destination_problem(destination: &str, spec: &AssistantSpec, more: &[String]) -> Option<String> {
    let text = destination.trim();
    match text.strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map(str::trim) {
        Some(name) => {
            let known = spec.variables.contains_key(name) || ["caller", "callee"].contains(&name) || more.iter().any(|m| m == name);
            (!known).then(|| format!("`{name}` is not a variable, slot or tool of this assistant; declare it under `variables:` (type: phone) or give a number"))
        }
        None => crate::call::transfer_destination(text).err().map(|e| format!("{e}; a transfer goes to a phone number or a sip: address, or to `{{{{ variable }}}}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "version: 1\nname: x\nvariables:\n  name: { type: strin }\ntools:\n  - end_call\n  - name: lookup\n    url: nope\nturn: { endpointing_ms: 10 }\n";

    #[test]
    fn finds_nested_and_listed_fields() {
        assert_eq!(line_of(TEXT, "variables.name.type"), Some(4));
        assert_eq!(line_of(TEXT, "tools.1.url"), Some(8));
        assert_eq!(line_of(TEXT, "turn.endpointing_ms"), Some(9));
        assert_eq!(line_of(TEXT, "version"), Some(1));
    }

    #[test]
    fn transfers_must_go_somewhere_dialable() {
        let spec = |extra: &str| -> AssistantSpec {
            serde_yaml::from_str(&format!("version: 1\nname: x\nsystem_prompt: Hi.\nvariables:\n  desk: {{ type: phone, default: \"+15005550100\" }}\nintents:\n  - {{ name: human, examples: [a person] }}\n{extra}")).unwrap()
        };
        let fields = |spec: &AssistantSpec| problems(spec).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert!(fields(&spec("routes:\n  - { intent: human, transfer: \"{{ desk }}\" }\n")).is_empty());
        assert!(fields(&spec("routes:\n  - { intent: human, transfer: \"sip:desk@pbx.example.com\" }\n")).is_empty());
        assert_eq!(fields(&spec("routes:\n  - { intent: human, transfer: \"the front desk\" }\n")), ["routes.0.transfer"]);
        assert_eq!(fields(&spec("routes:\n  - { intent: human, transfer: \"{{ manager }}\" }\n")), ["routes.0.transfer"], "an undeclared variable");
        let flow = "flow:\n  start: a\n  nodes:\n    a: { say: Hi., actions: [{ transfer_call: \"555 0100\" }] }\n";
        assert_eq!(fields(&spec(flow)), ["flow.nodes.a.actions.0.transfer_call"]);
        let flow = "flow:\n  start: a\n  nodes:\n    a: { say: Hi., actions: [{ transfer_call: \"{{ desk }}\" }] }\n";
        assert!(fields(&spec(flow)).is_empty(), "{:?}", problems(&spec(flow)));
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("callback_requested"));
        assert!(!is_identifier("1st"));
        assert!(!is_identifier("not-ok"));
    }
}
