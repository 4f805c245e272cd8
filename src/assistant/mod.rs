//! Assistants: what a business writes in `assistants/*.yaml`, loaded into a typed [`Assistant`].
//!
//! The wire form ([`AssistantSpec`], `deny_unknown_fields`) is parsed, then resolved: the prompt
//! file is read, templates are compiled in strict mode and rendered once against a sample
//! context, so a typo fails at load time with the file and the field, not mid-call.

pub mod check;
pub mod prompt;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::vad::VadParams;

#[derive(Debug, thiserror::Error)]
pub enum AssistantError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{}", describe(file, *line, field.as_deref(), message))]
    Invalid { file: PathBuf, line: Option<usize>, field: Option<String>, message: String },
}

impl AssistantError {
    /// The field at fault, as a dotted path (`tools.1.url`), when one is known.
    pub fn field(&self) -> Option<&str> {
        match self {
            AssistantError::Invalid { field, .. } => field.as_deref(),
            AssistantError::Read { .. } => None,
        }
    }
}

fn describe(file: &Path, line: Option<usize>, field: Option<&str>, message: &str) -> String {
    let mut out = file.display().to_string();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
    }
    if let Some(field) = field {
        out.push_str(&format!(": field `{field}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

pub const SPEC_VERSION: u32 = 1;

/// The system prompt of an assistant that has a flow and no prompt of its own.
const FLOW_ONLY_PROMPT: &str = "You are {{ assistant_name }}, a phone assistant. Answer in one short, polite sentence.";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssistantSpec {
    pub version: u32,
    pub name: String,
    #[serde(default = "default_language")]
    pub language: String,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    #[serde(default)]
    pub voice: VoiceSpec,
    #[serde(default)]
    pub llm: LlmSpec,
    #[serde(default)]
    pub stt: SttSpec,
    /// A prompt template file (relative to the assistant file or its parent folder).
    pub prompt: Option<String>,
    /// An inline system prompt template, instead of `prompt`.
    pub system_prompt: Option<String>,
    pub first_message: Option<String>,
    /// Said instead of an LLM reply refused twice (it refused to help, or repeated itself).
    pub fallback: Option<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, VariableSpec>,
    /// A call may also pass variables not declared above (as text), as Ringg's clients do;
    /// otherwise an undeclared variable is refused, naming it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_any_variables: bool,
    #[serde(default)]
    pub intents: Vec<IntentSpec>,
    /// Below this similarity to its nearest example an utterance's intent is `unknown`.
    #[serde(default = "default_intent_threshold")]
    pub intent_threshold: f32,
    /// What the call does on an intent or on escalation, decided by the analysis without
    /// asking the LLM (the first that matches, once per call).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub dispositions: Vec<DispositionSpec>,
    #[serde(default)]
    pub extract: Vec<ExtractSpec>,
    /// What the call is for, in words ("a table is booked"): a free-form call is judged against
    /// it after it ends when its disposition does not say (`success` on dispositions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    #[serde(default)]
    pub tools: Vec<ToolEntry>,
    #[serde(default)]
    pub turn: TurnSpec,
    pub webhook_url: Option<String>,
    /// Record this assistant's calls: a stereo WAV per call (caller left, agent right), served
    /// at `/v1/calls/{id}/recording`. A call may say otherwise (`record`).
    #[serde(default)]
    pub recording: bool,
    /// A conversation flow: nodes, slots, transitions (see `crate::flow`). Without one, the
    /// LLM answers freely from the prompt.
    pub flow: Option<crate::flow::FlowSpec>,
}

impl AssistantSpec {
    /// Whether the agent speaks first: its first message, or else its flow's start node (the
    /// order `pipeline::agent` opens a call in). Without either the caller speaks first.
    pub fn opens_the_call(&self) -> bool {
        self.first_message.is_some() || self.flow.is_some()
    }
}

fn default_intent_threshold() -> f32 {
    crate::analysis::intent::DEFAULT_THRESHOLD
}

fn default_language() -> String {
    "en-US".into()
}

fn default_timezone() -> String {
    "UTC".into()
}

/// Who speaks the agent's words: a Piper voice from the model store, espeak-ng's formant
/// voices, or an OpenAI-compatible speech endpoint. Written in specs as `piper`, `espeak`,
/// `openai`; any other word is the spec's error, naming these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VoiceProvider {
    #[default]
    Piper,
    Espeak,
    Openai,
}

/// What writes the agent's replies: the local engine (`local`) or an OpenAI-compatible
/// chat endpoint (`openai`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmProvider {
    #[default]
    Local,
    Openai,
}

/// What hears the caller: Whisper on this machine (`whisper`) or an OpenAI-compatible
/// transcription endpoint (`openai`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SttProvider {
    #[default]
    Whisper,
    Openai,
}

/// The words the three provider enums are written as, for messages and identities.
macro_rules! provider_words {
    ($($kind:ident { $($variant:ident => $word:literal),+ })+) => {$(
        impl $kind {
            pub fn as_str(self) -> &'static str {
                match self { $($kind::$variant => $word),+ }
            }
        }
        impl std::fmt::Display for $kind {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

provider_words! {
    VoiceProvider { Piper => "piper", Espeak => "espeak", Openai => "openai" }
    LlmProvider { Local => "local", Openai => "openai" }
    SttProvider { Whisper => "whisper", Openai => "openai" }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceSpec {
    #[serde(default)]
    pub provider: VoiceProvider,
    #[serde(default = "default_voice_name")]
    pub name: String,
    pub base_url: Option<String>,
    /// The server environment variable holding the provider's key. Only the deployment's
    /// own assistants (files) may name one; see `api_key_secret`.
    pub api_key_env: Option<String>,
    /// The name of a workspace secret (`/v1/secrets`) holding the provider's key.
    pub api_key_secret: Option<String>,
    pub model: Option<String>,
}

fn default_voice_name() -> String {
    crate::tts::DEFAULT_VOICE.into()
}

impl Default for VoiceSpec {
    fn default() -> Self {
        VoiceSpec { provider: VoiceProvider::default(), name: default_voice_name(), base_url: None, api_key_env: None, api_key_secret: None, model: None }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    #[serde(default)]
    pub provider: LlmProvider,
    #[serde(default = "default_llm_model")]
    pub model: String,
    pub base_url: Option<String>,
    /// The server environment variable holding the provider's key. Only the deployment's
    /// own assistants (files) may name one; see `api_key_secret`.
    pub api_key_env: Option<String>,
    /// The name of a workspace secret (`/v1/secrets`) holding the provider's key.
    pub api_key_secret: Option<String>,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
}

fn default_llm_model() -> String {
    "smollm2-135m".into()
}
fn default_temperature() -> f32 {
    0.2
}
fn default_max_tokens() -> usize {
    120
}

impl Default for LlmSpec {
    fn default() -> Self {
        LlmSpec {
            provider: LlmProvider::default(),
            model: default_llm_model(),
            base_url: None,
            api_key_env: None,
            api_key_secret: None,
            temperature: default_temperature(),
            max_tokens: default_max_tokens(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SttSpec {
    #[serde(default)]
    pub provider: SttProvider,
    #[serde(default = "default_stt_model")]
    pub model: String,
    pub base_url: Option<String>,
    /// The server environment variable holding the provider's key. Only the deployment's
    /// own assistants (files) may name one; see `api_key_secret`.
    pub api_key_env: Option<String>,
    /// The name of a workspace secret (`/v1/secrets`) holding the provider's key.
    pub api_key_secret: Option<String>,
    /// How often (ms of new speech) to transcribe the caller's unfinished turn for live
    /// partial transcripts; 0 turns them off.
    #[serde(default = "default_partial_interval_ms")]
    pub partial_interval_ms: u32,
    /// Words callers say that the recognizer should expect (the business's name, products):
    /// given to it as a prompt with the call's short variable values and, in a flow, what the
    /// current question expects.
    #[serde(default)]
    pub vocabulary: Vec<String>,
    /// A caller turn heard with less confidence than this (0..1), or holding a word heard
    /// with little (below 0.4), is unsure: a flow slot filled from it, in a node without a
    /// read-back, is checked with the caller ("I heard 4 5 1, 2 9. Is that right?"). 0, the
    /// default, never checks; 0.5 suits tiny.en on phone lines (docs/decisions.md).
    #[serde(default)]
    pub confirm_below: f32,
}

fn default_partial_interval_ms() -> u32 {
    1000
}

fn default_stt_model() -> String {
    "tiny.en".into()
}

impl Default for SttSpec {
    fn default() -> Self {
        SttSpec { provider: SttProvider::default(), model: default_stt_model(), base_url: None, api_key_env: None, api_key_secret: None, vocabulary: Vec::new(), partial_interval_ms: default_partial_interval_ms(), confirm_below: 0.0 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VariableSpec {
    #[serde(rename = "type", default = "default_var_type")]
    pub kind: String,
    #[serde(default)]
    pub required: bool,
    pub default: Option<Value>,
    pub description: Option<String>,
}

fn default_var_type() -> String {
    "string".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntentSpec {
    pub name: String,
    /// What the intent means, in a sentence; matched like an example.
    pub description: Option<String>,
    #[serde(default)]
    pub examples: Vec<String>,
}

impl IntentSpec {
    /// The intent as the analysis takes it.
    pub fn def(&self) -> crate::analysis::IntentDef {
        crate::analysis::IntentDef { name: self.name.clone(), description: self.description.clone(), examples: self.examples.clone() }
    }
}

/// A rule the live analysis applies: on `intent` (or on escalation), say `say` and then
/// transfer, end the call, or only set the disposition.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub intent: Option<String>,
    #[serde(default)]
    pub escalation: bool,
    pub say: Option<String>,
    pub transfer: Option<String>,
    #[serde(default)]
    pub end_call: bool,
    pub disposition: Option<String>,
}

impl RouteSpec {
    /// Whether an utterance with `intent` (and `escalation`) triggers this route.
    pub fn matches(&self, intent: Option<&str>, escalation: bool) -> bool {
        (self.escalation && escalation) || self.intent.as_deref().is_some_and(|wanted| Some(wanted) == intent)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DispositionSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Whether a call that ends with this disposition reached the assistant's goal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    pub name: String,
    #[serde(rename = "type", default = "default_var_type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
}

/// A tool: a built-in by name, or an HTTP tool declared in full.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ToolEntry {
    Builtin(String),
    Http(HttpToolSpec),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// JSON Schema of the arguments.
    #[serde(default = "empty_schema")]
    pub parameters: Value,
    #[serde(default = "default_tool_timeout_ms")]
    pub timeout_ms: u64,
    /// Said when the tool takes longer than `filler_after_ms`.
    #[serde(default = "default_filler")]
    pub filler: String,
    #[serde(default = "default_filler_after_ms")]
    pub filler_after_ms: u64,
}

fn default_method() -> String {
    "POST".into()
}
fn empty_schema() -> Value {
    serde_json::json!({ "type": "object", "properties": {} })
}
fn default_tool_timeout_ms() -> u64 {
    5_000
}
fn default_filler() -> String {
    "One moment while I check that.".into()
}
fn default_filler_after_ms() -> u64 {
    800
}

/// The tools an assistant offers by name alone (`tools: [end_call, …]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    EndCall,
    TransferCall,
    SendDtmf,
    SetDisposition,
}

impl Builtin {
    pub const ALL: [Builtin; 4] = [Builtin::EndCall, Builtin::TransferCall, Builtin::SendDtmf, Builtin::SetDisposition];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::EndCall => "end_call",
            Builtin::TransferCall => "transfer_call",
            Builtin::SendDtmf => "send_dtmf",
            Builtin::SetDisposition => "set_disposition",
        }
    }

    /// The built-in of that name; `None` for any other (an HTTP tool's, or a mistake).
    pub fn parse(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Every built-in's name, for messages that list them.
    pub fn names() -> String {
        Builtin::ALL.map(Builtin::name).join(", ")
    }
}

/// Turn-taking and call limits.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnSpec {
    /// Caller silence (ms) before the VAD calls speech stopped.
    pub endpointing_ms: u32,
    pub vad_threshold: f32,
    /// Speech (ms) before the VAD calls speech started.
    pub vad_start_ms: u32,
    /// Speech (ms) over the agent that pauses its audio while the VAD makes sure; the agent
    /// plays on if it was not speech. At `vad_start_ms` or more, the pause waits for speech
    /// started.
    pub barge_in_pause_ms: u32,
    /// The longest extra silence (ms) to wait when the turn does not read as finished: all of
    /// it when the words dangle, less the nearer Smart Turn and the transcript came to finished.
    pub incomplete_wait_ms: u32,
    /// Smart Turn probability above which the turn is complete.
    pub smart_turn_threshold: f32,
    pub interruptible: bool,
    /// Whether the first message (often a legal disclosure) may be interrupted.
    pub first_message_interruptible: bool,
    /// Caller speech (ms) that interrupts the agent.
    pub min_interrupt_ms: u32,
    pub idle_reprompt_s: f32,
    pub idle_hangup_s: f32,
    pub max_duration_s: f32,
    /// Take the agent's own voice, come back on the caller's side (a handset's earpiece, a
    /// speakerphone), out of what the call hears, so it neither interrupts the agent nor is
    /// answered as the caller's words. On by default; ~1–2% of a core per call.
    pub cancel_echo: bool,
}

impl Default for TurnSpec {
    fn default() -> Self {
        TurnSpec {
            endpointing_ms: 200,
            vad_threshold: 0.5,
            vad_start_ms: 96,
            barge_in_pause_ms: 32,
            incomplete_wait_ms: 700,
            smart_turn_threshold: 0.5,
            interruptible: true,
            first_message_interruptible: true,
            min_interrupt_ms: 160,
            idle_reprompt_s: 8.0,
            idle_hangup_s: 20.0,
            max_duration_s: 600.0,
            cancel_echo: true,
        }
    }
}

impl TurnSpec {
    pub fn vad_params(&self) -> VadParams {
        VadParams { threshold: self.vad_threshold, start_ms: self.vad_start_ms, suspect_ms: self.barge_in_pause_ms, stop_ms: self.endpointing_ms }
    }
}

/// A loaded, checked assistant.
#[derive(Debug, Clone)]
pub struct Assistant {
    pub spec: AssistantSpec,
    pub source: PathBuf,
    pub system_template: String,
    pub timezone: chrono_tz::Tz,
}

impl Assistant {
    /// Whether a call to this assistant runs on this machine's models (Whisper, a Piper or
    /// espeak voice, the local LLM), and so counts against the local call capacity.
    pub fn uses_local_models(&self) -> bool {
        self.spec.stt.provider != SttProvider::Openai || self.spec.voice.provider != VoiceProvider::Openai || self.spec.llm.provider == LlmProvider::Local
    }

    pub fn load(path: &Path) -> Result<Assistant, AssistantError> {
        let text = std::fs::read_to_string(path).map_err(|source| AssistantError::Read { file: path.to_path_buf(), source })?;
        Assistant::parse(&text, path)
    }

    /// Parses and checks an assistant file's text; `path` locates its prompt file.
    pub fn parse(text: &str, path: &Path) -> Result<Assistant, AssistantError> {
        Assistant::parse_all(text, path).map_err(|mut problems| problems.remove(0))
    }

    /// Like [`Assistant::parse`], but reports every problem found, in file order.
    pub fn parse_all(text: &str, path: &Path) -> Result<Assistant, Vec<AssistantError>> {
        let spec: AssistantSpec = serde_yaml::from_str(text).map_err(|e| vec![syntax_error(path, &e)])?;
        let base = path.parent().map(Path::to_path_buf);
        Assistant::from_spec(spec, path, base.as_deref(), Some(text))
    }

    /// An assistant sent as JSON (over the API): the template must be inline (`system_prompt`).
    pub fn from_json(value: &Value, label: &str) -> Result<Assistant, Vec<AssistantError>> {
        Assistant::json_spec(value, label).and_then(|(spec, path)| Assistant::from_spec(spec, &path, None, None))
    }

    /// An assistant version read back from the store: checked like [`Assistant::from_json`]
    /// except that its templates are not rendered again (they were when it was saved, and
    /// every call renders them within the limits anyway).
    pub fn from_stored_json(value: &Value, label: &str) -> Result<Assistant, Vec<AssistantError>> {
        Assistant::json_spec(value, label).and_then(|(spec, path)| Assistant::resolve(spec, &path, None, None, false))
    }

    fn json_spec(value: &Value, label: &str) -> Result<(AssistantSpec, PathBuf), Vec<AssistantError>> {
        let path = PathBuf::from(label);
        let spec: AssistantSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner().to_string();
            let field = join_field(&field, named_field(&inner));
            vec![AssistantError::Invalid { file: path.clone(), line: None, field: Some(field), message: format!("{inner}; see the assistant spec in the README") }]
        })?;
        if spec.prompt.is_some() {
            return Err(vec![AssistantError::Invalid {
                file: path,
                line: None,
                field: Some("prompt".into()),
                message: "an assistant created over the API carries its template inline: send `system_prompt` instead of a file name".into(),
            }]);
        }
        Ok((spec, path))
    }

    /// Resolves and checks a parsed spec. `base` is where prompt files are looked up; `text`
    /// (the file's own text) lets errors carry line numbers.
    pub fn from_spec(spec: AssistantSpec, path: &Path, base: Option<&Path>, text: Option<&str>) -> Result<Assistant, Vec<AssistantError>> {
        Assistant::resolve(spec, path, base, text, true)
    }

    fn resolve(spec: AssistantSpec, path: &Path, base: Option<&Path>, text: Option<&str>, render_templates: bool) -> Result<Assistant, Vec<AssistantError>> {
        let invalid = |field: &str, message: String| AssistantError::Invalid {
            file: path.to_path_buf(),
            line: text.and_then(|t| check::line_of(t, field)),
            field: Some(field.to_string()),
            message,
        };
        let mut problems: Vec<AssistantError> = check::problems(&spec).into_iter().map(|(field, message)| invalid(&field, message)).collect();
        let system_template = match (&spec.prompt, &spec.system_prompt) {
            (Some(file), None) => match base.and_then(|dir| resolve_relative(dir, file)) {
                Some(resolved) => match std::fs::read_to_string(&resolved) {
                    Ok(text) => Some(text),
                    Err(e) => {
                        problems.push(invalid("prompt", format!("cannot read {}: {e}", resolved.display())));
                        None
                    }
                },
                None => {
                    problems.push(invalid("prompt", format!("file `{file}` not found next to the assistant or in its parent folder; fix the path (e.g. prompts/NAME.j2)")));
                    None
                }
            },
            (None, Some(inline)) => Some(inline.clone()),
            (Some(_), Some(_)) => {
                problems.push(invalid("system_prompt", "give `prompt` (a template file) or `system_prompt` (inline), not both".into()));
                None
            }
            // A flow carries the conversation; the LLM (for turns it leaves free) gets a plain role.
            (None, None) if spec.flow.is_some() => Some(FLOW_ONLY_PROMPT.to_string()),
            (None, None) => {
                problems.push(invalid("prompt", "missing: name a template file, e.g. `prompt: prompts/NAME.j2` (or give `system_prompt` inline)".into()));
                None
            }
        };
        let timezone: Option<chrono_tz::Tz> = spec.timezone.parse().ok();
        let (Some(system_template), Some(timezone), true) = (system_template, timezone, problems.is_empty()) else {
            problems.sort_by_key(|p| match p {
                AssistantError::Invalid { line, .. } => line.unwrap_or(usize::MAX),
                AssistantError::Read { .. } => 0,
            });
            return Err(problems);
        };
        let assistant = Assistant { spec, source: path.to_path_buf(), system_template, timezone };
        if assistant.system_template.len() > check::MAX_TEMPLATE_BYTES {
            let field = if assistant.spec.prompt.is_some() { "prompt" } else { "system_prompt" };
            return Err(vec![invalid(field, format!("the template is {} bytes; the most is {}", assistant.system_template.len(), check::MAX_TEMPLATE_BYTES))]);
        }
        if !render_templates {
            return Ok(assistant);
        }
        if let Err((field, message)) = prompt::check(&assistant) {
            return Err(vec![invalid(&field, message)]);
        }
        Ok(assistant)
    }

    /// The spec with its template inlined: everything needed to rebuild this assistant,
    /// anywhere, without its files (what the store records as a version).
    pub fn self_contained_spec(&self) -> AssistantSpec {
        let mut spec = self.spec.clone();
        spec.prompt = None;
        spec.system_prompt = Some(self.system_template.clone());
        spec
    }

    pub fn has_tool(&self, name: &str) -> bool {
        self.spec.tools.iter().any(|t| match t {
            ToolEntry::Builtin(n) => n == name,
            ToolEntry::Http(h) => h.name == name,
        })
    }
}

/// The assistant files (`*.yaml`, `*.yml`) in `dir`, sorted.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")).collect();
    files.sort();
    Ok(files)
}

fn resolve_relative(dir: &Path, relative: &str) -> Option<PathBuf> {
    [dir.join(relative), dir.parent().unwrap_or(Path::new(".")).join(relative)].into_iter().find(|p| p.is_file())
}

/// A YAML error as a located problem: serde names the field in its message.
fn syntax_error(path: &Path, error: &serde_yaml::Error) -> AssistantError {
    let message = error.to_string();
    let line = error.location().map(|l| l.line());
    // serde_yaml prefixes nested errors with their path: `turn: unknown field ...`.
    let (prefix, rest) = match message.split_once(": ") {
        Some((p, r)) if !p.contains(' ') => (Some(p.to_string()), r.to_string()),
        _ => (None, message.clone()),
    };
    let field = match (prefix, named_field(&rest)) {
        (Some(p), Some(f)) => Some(format!("{p}.{f}")),
        (Some(p), None) => Some(p),
        (None, f) => f,
    };
    let rest = rest.split(" at line ").next().unwrap_or(&rest).to_string();
    let fix = if rest.starts_with("unknown field") {
        "; remove it or fix its spelling"
    } else if rest.starts_with("missing field") {
        "; add it"
    } else {
        ""
    };
    AssistantError::Invalid { file: path.to_path_buf(), line, field, message: format!("{rest}{fix}") }
}

/// A serde path joined with the field its message names, without saying the field twice
/// (serde_path_to_error's path already ends in an unknown field's name).
pub(crate) fn join_field(path: &str, named: Option<String>) -> String {
    match named {
        Some(f) if path == "." => f,
        Some(f) if path == f || path.ends_with(&format!(".{f}")) => path.to_string(),
        Some(f) => format!("{path}.{f}"),
        None => path.to_string(),
    }
}

/// The field a serde message names: "unknown field `x`" or "missing field `x`".
pub(crate) fn named_field(message: &str) -> Option<String> {
    let start = message.find("field `")? + "field `".len();
    let end = message[start..].find('`')?;
    Some(message[start..start + end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn example(name: &str) -> (PathBuf, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants").join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    /// `text` with one edit: a character changed, inserted, or a span removed.
    fn edited(text: &str, at: usize, kind: u8, with: char, span: usize) -> String {
        let chars: Vec<char> = text.chars().collect();
        let at = at % (chars.len() + 1);
        let mut out: Vec<char> = chars[..at].to_vec();
        match kind % 3 {
            0 => out.push(with),
            1 => out.extend(chars.get(at..(at + 1).min(chars.len())).into_iter().flatten().map(|_| with)),
            _ => {}
        }
        let skip = match kind % 3 {
            0 => 0,
            1 => 1,
            _ => span % 40,
        };
        out.extend(chars.iter().skip(at + skip));
        out.into_iter().collect()
    }

    #[test]
    fn an_unknown_provider_is_named_with_the_known_ones() {
        let yaml = "version: 1\nname: x\nsystem_prompt: Hi.\nvoice:\n  provider: elevenlabs\n";
        let problems = Assistant::parse_all(yaml, Path::new("x.yaml")).unwrap_err();
        assert_eq!(problems[0].field(), Some("voice.provider"));
        let text = problems[0].to_string();
        assert!(text.contains("elevenlabs") && text.contains("piper") && text.contains("espeak") && text.contains("openai") && text.starts_with("x.yaml:5:"), "{text}");
        let json = serde_json::json!({ "version": 1, "name": "x", "system_prompt": "Hi.", "llm": { "provider": "anthropic" } });
        let problems = Assistant::from_json(&json, "api").unwrap_err();
        assert_eq!(problems[0].field(), Some("llm.provider"));
        assert!(problems[0].to_string().contains("`local` or `openai`"), "{}", problems[0]);
        // The words round-trip: a stored spec reads back as written.
        let spec = Assistant::parse_all("version: 1\nname: x\nsystem_prompt: Hi.\nvoice: { provider: espeak, name: en-us }\nstt: { provider: openai, model: whisper-1 }\n", Path::new("x.yaml")).unwrap().spec;
        let value = serde_json::to_value(&spec).unwrap();
        assert_eq!((value["voice"]["provider"].as_str(), value["stt"]["provider"].as_str(), value["llm"]["provider"].as_str()), (Some("espeak"), Some("openai"), Some("local")));
        assert_eq!(VoiceProvider::Espeak.to_string(), "espeak");
    }

    // Fuzzing: an assistant file with one edit, or any JSON sent as an assistant, loads or
    // is refused with located problems; nothing panics.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn an_edited_assistant_file_loads_or_names_its_problems(file in 0..3usize, at in any::<usize>(), kind in any::<u8>(), with in prop::sample::select(vec![':', ' ', '\n', '-', '{', '}', '"', '[', 'x', '9', '\t', '#', '\u{0}']), span in any::<usize>()) {
            let (path, text) = example(["luigis_booking.yaml", "order_status.yaml", "appointment_reminder.yaml"][file]);
            let text = edited(&text, at, kind, with, span);
            if let Err(problems) = Assistant::parse_all(&text, &path) {
                prop_assert!(!problems.is_empty());
                for problem in problems {
                    prop_assert!(!problem.to_string().is_empty());
                }
            }
        }

        #[test]
        fn any_json_assistant_is_checked_without_panicking(
            name in ".{0,20}", prompt in prop::sample::select(vec!["Hi.", "Hi {{ x }}", "{% for a in range(3) %}{{ a }}{% endfor %}", "{{", "{{ 'x' * 99999999 }}"]),
            temperature in -1.0f64..3.0, tokens in 0u64..10_000, endpointing in 0u64..20_000, provider in prop::sample::select(vec!["local", "openai", "nope"]),
            tool in prop::sample::select(vec![serde_json::json!("end_call"), serde_json::json!("fly"), serde_json::json!({ "name": "t", "url": "ftp://x" }), serde_json::json!({ "name": "end_call", "url": "http://a.b" })]),
            secret in prop::sample::select(vec![None, Some("ok_name"), Some("bad name"), Some("")]),
        ) {
            let mut value = serde_json::json!({
                "version": 1, "name": name, "system_prompt": prompt,
                "llm": { "provider": provider, "temperature": temperature, "max_tokens": tokens, "api_key_secret": secret },
                "turn": { "endpointing_ms": endpointing }, "tools": [tool],
            });
            if secret.is_none() {
                value["llm"].as_object_mut().unwrap().remove("api_key_secret");
            }
            if let Err(problems) = Assistant::from_json(&value, "fuzz") {
                prop_assert!(problems.iter().all(|p| p.field().is_some() || !p.to_string().is_empty()));
            }
        }

        #[test]
        fn an_edited_caller_script_parses_or_is_refused(at in any::<usize>(), kind in any::<u8>(), with in prop::sample::select(vec![':', ' ', '\n', '-', '9', 'x']), span in any::<usize>()) {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/callers/booking.yaml");
            let text = edited(&std::fs::read_to_string(path).unwrap(), at, kind, with, span);
            if let Ok(script) = serde_yaml::from_str::<crate::simulation::CallerScript>(&text) {
                let _ = script.problems();
            }
        }
    }
}
