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

/// A call's dynamic variables that the assistant cannot take. Each names the variable, so a
/// caller of the API gets the field, and the CLI its `--var`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VariableError {
    #[error("variable `{name}` is required by {assistant}: pass it, e.g. --var {name}=…")]
    Missing { name: String, assistant: String },
    #[error("variable `{name}`: `{value}` is not {expected}")]
    Invalid { name: String, value: String, expected: &'static str },
    #[error("variable `{name}`: unknown type `{kind}` (string, number, integer, boolean, date, datetime, phone)")]
    UnknownType { name: String, kind: String },
    #[error("variable `{name}` is not declared by {assistant} (declared: {declared})")]
    Undeclared { name: String, assistant: String, declared: String },
}

impl VariableError {
    /// The variable the error is about.
    pub fn name(&self) -> &str {
        match self {
            VariableError::Missing { name, .. } | VariableError::Invalid { name, .. } | VariableError::UnknownType { name, .. } | VariableError::Undeclared { name, .. } => name,
        }
    }
}

/// Checks provided `key=value` variables against the assistant's declarations and fills
/// defaults. Errors name the variable and the fix.
pub fn resolve_variables(assistant: &Assistant, provided: &BTreeMap<String, String>) -> Result<Map<String, Value>, VariableError> {
    let mut out = Map::new();
    for (name, spec) in &assistant.spec.variables {
        let value = match (provided.get(name), &spec.default) {
            (Some(raw), _) => typed(name, &spec.kind, raw)?,
            (None, Some(default)) => default.clone(),
            (None, None) if spec.required => {
                return Err(VariableError::Missing { name: name.clone(), assistant: assistant.spec.name.clone() })
            }
            (None, None) => Value::Null,
        };
        out.insert(name.clone(), value);
    }
    for (name, raw) in provided {
        if assistant.spec.accept_any_variables {
            out.entry(name.clone()).or_insert_with(|| json!(raw));
            continue;
        }
        if !assistant.spec.variables.contains_key(name) {
            return Err(VariableError::Undeclared {
                name: name.clone(),
                assistant: assistant.spec.name.clone(),
                declared: assistant.spec.variables.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
    }
    Ok(out)
}

fn typed(name: &str, kind: &str, raw: &str) -> Result<Value, VariableError> {
    let invalid = |expected| VariableError::Invalid { name: name.into(), value: raw.into(), expected };
    match kind {
        "string" | "date" | "datetime" | "phone" => Ok(json!(raw)),
        "number" => raw.parse::<f64>().map(|n| json!(n)).map_err(|_| invalid("a number")),
        "integer" => raw.parse::<i64>().map(|n| json!(n)).map_err(|_| invalid("an integer")),
        "boolean" => match raw {
            "true" | "yes" | "1" => Ok(json!(true)),
            "false" | "no" | "0" => Ok(json!(false)),
            _ => Err(invalid("true or false")),
        },
        other => Err(VariableError::UnknownType { name: name.into(), kind: other.into() }),
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
    // The live analysis's latest: re-rendered into the prompt as caller lines are analysed
    // (see `pipeline::analyze`); a variable of the same name wins.
    map.entry("last_intent").or_insert(json!(""));
    map.entry("sentiment").or_insert(json!("neutral"));
    map.entry("sentiment_score").or_insert(json!(0.0));
    Value::Object(map)
}

/// Whether a template uses the live analysis (`last_intent`, `sentiment`), so that it must be
/// rendered again as the call goes.
pub fn uses_live_analysis(template: &str) -> bool {
    ["last_intent", "sentiment"].iter().any(|name| template.contains(name))
}

/// Instructions one render may execute (minijinja's fuel): a prompt with loops over its
/// variables needs a few thousand; nested `range()` loops that would stall a thread run out.
pub const TEMPLATE_FUEL: u64 = 100_000;
/// The longest text a template may render to.
pub const MAX_RENDERED_BYTES: usize = 64 * 1024;
/// The address space a sandboxed render may use: enough for any prompt, far short of what
/// a template doubling a string in a loop would take.
const SANDBOX_MEMORY_BYTES: u64 = 1 << 30;
/// CPU seconds a sandboxed render may use, and the wall-clock limit around it.
const SANDBOX_CPU_SECS: u64 = 2;
const SANDBOX_WALL: std::time::Duration = std::time::Duration::from_secs(4);

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(false);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env
}

/// The binary that renders templates in a sandbox, when the process asked for one.
static SANDBOX: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Makes every later [`render`] in this process run in a child process of `binary` (this
/// program's `template-sandbox` command) with bounded memory and CPU: what `serve` does,
/// since workspaces write templates. Without it, renders run here, bounded by fuel and
/// output size only (the operator's own files and commands).
pub fn sandbox_renders(binary: std::path::PathBuf) {
    let _ = SANDBOX.set(binary);
}

/// Renders `template` with `context`, within the limits: [`TEMPLATE_FUEL`] instructions,
/// [`MAX_RENDERED_BYTES`] of output and, in a sandboxed process, bounded memory and CPU.
/// Blocks: call it off the async runtime's threads.
pub fn render(template: &str, context: &Value) -> Result<String, String> {
    render_many(&[template.to_string()], context)?.pop().unwrap_or_else(|| Err(limits_exceeded()))
}

/// Renders several templates with one context, each within the limits, in one sandboxed
/// child when the process sandboxes renders (so checking a flow's many lines costs one
/// process, and its CPU limit bounds them all). `Err`: the batch exceeded the sandbox's limits.
pub fn render_many(templates: &[String], context: &Value) -> Result<Vec<Result<String, String>>, String> {
    match SANDBOX.get() {
        Some(binary) => render_in_child(binary, templates, context),
        None => Ok(templates.iter().map(|t| render_here(t, context)).collect()),
    }
}

/// Renders in this process (fuel and output limits only).
pub fn render_here(template: &str, context: &Value) -> Result<String, String> {
    let env = environment();
    let compiled = env.template_from_str(template).map_err(|e| describe(&e))?;
    let mut out = LimitedWriter { buffer: Vec::new(), overflowed: false };
    let rendered = compiled.render_captured_to(context, &mut out).map(|_| ());
    match rendered {
        Ok(()) => String::from_utf8(out.buffer).map(|s| s.trim().to_string()).map_err(|e| e.to_string()),
        Err(_) if out.overflowed => Err(format!("the template renders more than {} KB; shorten it", MAX_RENDERED_BYTES / 1024)),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
            Err(format!("the template does too much work (more than {TEMPLATE_FUEL} steps); simplify its loops"))
        }
        Err(e) => Err(describe(&e)),
    }
}

/// What the sandbox child reads on stdin and answers on stdout.
#[derive(serde::Serialize, serde::Deserialize)]
struct SandboxJob {
    templates: Vec<String>,
    context: Value,
}

/// The most a sandbox job and its answer may be (templates, context, rendered texts).
const MAX_SANDBOX_IO: u64 = 8 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
enum SandboxAnswer {
    Rendered(String),
    Failed(String),
}

/// The child's side: reads one job on stdin, answers on stdout (`ringline template-sandbox`).
pub fn sandbox_child() -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut input = Vec::new();
    std::io::stdin().take(MAX_SANDBOX_IO).read_to_end(&mut input)?;
    let answer: Vec<SandboxAnswer> = match serde_json::from_slice::<SandboxJob>(&input) {
        Ok(job) => job
            .templates
            .iter()
            .map(|template| match render_here(template, &job.context) {
                Ok(text) => SandboxAnswer::Rendered(text),
                Err(message) => SandboxAnswer::Failed(message),
            })
            .collect(),
        Err(e) => vec![SandboxAnswer::Failed(format!("bad sandbox job: {e}"))],
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &answer)?;
    stdout.flush()
}

fn render_in_child(binary: &std::path::Path, templates: &[String], context: &Value) -> Result<Vec<Result<String, String>>, String> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let job = serde_json::to_vec(&SandboxJob { templates: templates.to_vec(), context: context.clone() }).map_err(|e| e.to_string())?;
    let mut command = Command::new(binary);
    command.arg("template-sandbox").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).env("RUST_LOG", "off");
    limit_child(&mut command);
    let mut child = command.spawn().map_err(|e| format!("cannot start the template sandbox: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || stdin.write_all(&job));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = (&mut stdout).take(MAX_SANDBOX_IO).read_to_end(&mut text);
        text
    });
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > SANDBOX_WALL => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(limits_exceeded());
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(2)),
            Err(e) => return Err(format!("the template sandbox failed: {e}")),
        }
    };
    let _ = writer.join();
    let output = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(limits_exceeded());
    }
    match serde_json::from_slice::<Vec<SandboxAnswer>>(&output) {
        Ok(answers) if answers.len() == templates.len() => Ok(answers
            .into_iter()
            .map(|answer| match answer {
                SandboxAnswer::Rendered(text) => Ok(text),
                SandboxAnswer::Failed(message) => Err(message),
            })
            .collect()),
        Ok(answers) => Err(answers
            .into_iter()
            .find_map(|a| match a {
                SandboxAnswer::Failed(message) => Some(message),
                SandboxAnswer::Rendered(_) => None,
            })
            .unwrap_or_else(limits_exceeded)),
        Err(_) => Err(limits_exceeded()),
    }
}

fn limits_exceeded() -> String {
    format!(
        "the template exceeds the rendering limits ({} MB of memory, {SANDBOX_CPU_SECS} s of CPU); simplify it",
        SANDBOX_MEMORY_BYTES >> 20
    )
}

#[cfg(unix)]
fn limit_child(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only setrlimit, which is
    // async-signal-safe; it touches no memory of the parent's.
    unsafe {
        command.pre_exec(|| {
            let memory = libc::rlimit { rlim_cur: SANDBOX_MEMORY_BYTES, rlim_max: SANDBOX_MEMORY_BYTES };
            let cpu = libc::rlimit { rlim_cur: SANDBOX_CPU_SECS, rlim_max: SANDBOX_CPU_SECS + 1 };
            if libc::setrlimit(libc::RLIMIT_AS, &memory) != 0 || libc::setrlimit(libc::RLIMIT_CPU, &cpu) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(unix))]
fn limit_child(_command: &mut std::process::Command) {}

/// Collects output up to [`MAX_RENDERED_BYTES`], then refuses more.
struct LimitedWriter {
    buffer: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buffer.len() + data.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn describe(error: &minijinja::Error) -> String {
    let mut message = error.to_string();
    if let Some(line) = error.line() {
        message = format!("line {line}: {message}");
    }
    message
}

/// Renders `(field, template)`s with one context in one batch; the first that fails, with its
/// field and `hint`. A batch past the sandbox's limits fails on its first field.
fn check_batch(batch: &[(String, String)], context: &Value, hint: &str) -> Result<(), (String, String)> {
    let Some((first_field, _)) = batch.first() else { return Ok(()) };
    let templates: Vec<String> = batch.iter().map(|(_, template)| template.clone()).collect();
    let rendered = render_many(&templates, context).map_err(|e| (first_field.clone(), e))?;
    for ((field, _), result) in batch.iter().zip(rendered) {
        result.map_err(|e| (field.clone(), format!("{e} ({hint})")))?;
    }
    Ok(())
}

/// Renders the system prompt, the first message and a flow's lines against a sample context
/// (the load-time check), each group in one batch.
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
    let mut own = vec![(template_field.to_string(), assistant.system_template.clone())];
    own.extend(assistant.spec.first_message.iter().map(|first| ("first_message".to_string(), first.clone())));
    check_batch(&own, &ctx, "declare the variable under `variables:` or fix the name").map_err(|(field, e)| {
        let message = if field == template_field { format!("the template does not render: {e}") } else { e };
        (field, message)
    })?;
    if let Some(flow) = &assistant.spec.flow {
        let base = ctx.as_object().cloned().unwrap_or_default();
        let sample = crate::flow::sample_context(flow, &base);
        check_batch(&crate::flow::templates(flow), &sample, "use a declared variable, a slot of the flow, or spoken.SLOT")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_errors_name_the_variable_and_the_fix() {
        let text = "version: 1\nname: Reminder\nsystem_prompt: Hi.\nvariables:\n  name: { type: string, required: true }\n  seats: { type: integer, default: 2 }\n";
        let assistant = Assistant::parse(text, std::path::Path::new("a.yaml")).unwrap();
        let given = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let missing = resolve_variables(&assistant, &given(&[])).unwrap_err();
        assert_eq!(missing, VariableError::Missing { name: "name".into(), assistant: "Reminder".into() });
        assert_eq!(missing.to_string(), "variable `name` is required by Reminder: pass it, e.g. --var name=…");
        let invalid = resolve_variables(&assistant, &given(&[("name", "Ann"), ("seats", "two")])).unwrap_err();
        assert_eq!((invalid.name(), invalid.to_string().as_str()), ("seats", "variable `seats`: `two` is not an integer"));
        let undeclared = resolve_variables(&assistant, &given(&[("name", "Ann"), ("color", "red")])).unwrap_err();
        assert_eq!(undeclared.name(), "color");
        assert!(undeclared.to_string().ends_with("(declared: name, seats)"), "{undeclared}");
        let resolved = resolve_variables(&assistant, &given(&[("name", "Ann")])).unwrap();
        assert_eq!((resolved["name"].clone(), resolved["seats"].clone()), (json!("Ann"), json!(2)));
    }

    #[test]
    fn heavy_templates_stop_at_their_limits() {
        let ctx = json!({ "name": "Ann" });
        assert_eq!(render_here("Hello {{ name }}", &ctx).unwrap(), "Hello Ann");
        let loops = render_here("{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}", &ctx).unwrap_err();
        assert!(loops.contains("too much work"), "{loops}");
        let long = render_here("{{ 'x' * 50000000 }}", &ctx).unwrap_err();
        assert!(long.contains("renders more than"), "{long}");
        let many = render_here("{% for a in range(100) %}{{ 'y' * 1000 }}{% endfor %}", &ctx).unwrap_err();
        assert!(many.contains("renders more than"), "{many}");
    }
}
