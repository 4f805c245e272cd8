//! `ringline demo`, `simulate` and `chat`: conversations with an assistant.
//!
//! `demo` and `simulate` run a full voice call through the real pipeline on the loopback
//! line, against a scripted caller spoken in a different voice; `chat` is the same turn
//! manager and tools over text, for iterating on prompts.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::sync::mpsc;

use super::models_cmd;
use crate::assistant::prompt::{self, CallContext};
use crate::assistant::Assistant;
use crate::audio::write_wav_channels;
use crate::llm::Message;
use crate::models::ModelStore;
use crate::pipeline::metrics::{ms_of, percentile, TurnTimings};
use crate::pipeline::turn::{self, TurnContext, TurnProgress};
use crate::egress::EgressPolicy;
use crate::pipeline::{self, CallEvent, CallReport, CallSetup, Credentials, EngineLimits, EngineRegistry, Engines};
use crate::simulation::{CallerScript, ScriptedCaller};
use crate::transport::loopback::{LineLog, LoopbackLine};
use crate::transport::AudioOut;

/// The simulated line's default rate: wideband, as a browser or HD-voice call. The
/// telephone band (`--line-rate 8000`) works too but costs the synthetic caller's
/// robotic voice many words.
pub const DEFAULT_LINE_RATE: u32 = 16_000;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The assistant to call.
    #[arg(long, default_value = "assistants/luigis_booking.yaml")]
    pub assistant: PathBuf,
    /// The synthetic caller's script.
    #[arg(long, default_value = "eval/callers/booking.yaml")]
    pub caller: PathBuf,
    /// Where to write the call's stereo recording (caller left, agent right).
    #[arg(long, default_value = "out/demo-call.wav")]
    pub output: PathBuf,
    /// The line's sample rate (8000 for the telephone band).
    #[arg(long, default_value_t = DEFAULT_LINE_RATE)]
    pub line_rate: u32,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[arg(long)]
    pub assistant: PathBuf,
    /// A caller script (YAML): lines, pauses, barge-ins, noises.
    #[arg(long)]
    pub caller: PathBuf,
    /// Dynamic variables, `--var name=value`.
    #[arg(long = "var", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Folder for the recording (call.wav) and the report (report.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The line's sample rate (8000 for the telephone band).
    #[arg(long, default_value_t = DEFAULT_LINE_RATE)]
    pub line_rate: u32,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[arg(long)]
    pub assistant: PathBuf,
    #[arg(long = "var", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
}

pub fn parse_var(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{raw}` is not name=value (e.g. --var customer_name=Sarah)"))
}

/// The runtime every command runs its async work on: two workers, as the box the project
/// targets has two cores (the models' own threads are sized apart from it).
pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// A finished simulated call.
pub struct SimulatedCall {
    pub report: CallReport,
    pub log: LineLog,
    pub caller_track: Vec<f32>,
    pub agent_track: Vec<f32>,
    pub rate: u32,
}

/// Runs one call between `assistant` and a scripted caller on the loopback line.
pub async fn simulate_call(
    store: &ModelStore,
    engines: Arc<Engines>,
    assistant: Arc<Assistant>,
    script: CallerScript,
    variables: BTreeMap<String, String>,
    line_rate: u32,
    print: bool,
) -> anyhow::Result<SimulatedCall> {
    if !(8_000..=48_000).contains(&line_rate) {
        anyhow::bail!("--line-rate {line_rate}: use a rate between 8000 and 48000 Hz");
    }
    let caller_voice = crate::tts::load_voice(store, &script.voice, 1).with_context(|| format!("loading the caller's voice {}", script.voice))?;
    let caller = ScriptedCaller::prepare(script, caller_voice.as_ref(), line_rate)?.greeted_by(&assistant.spec);
    let (line, input) = LoopbackLine::start(line_rate);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(print_events(events_rx, print, Some(line.clone())));
    tokio::spawn(caller.run(line.clone()));
    let setup = CallSetup {
        assistant: assistant.clone(),
        variables,
        call: CallContext { call_id: format!("sim_{}", std::process::id()), caller: "+15550100".into(), callee: "+15550199".into() },
        tenant: String::new(),
    };
    let out: Arc<dyn AudioOut> = Arc::new(line.clone());
    let report = pipeline::converse(engines, setup, out, input, line.hung_up(), events_tx).await?;
    let _ = printer.await;
    let (caller_track, agent_track) = line.recording();
    Ok(SimulatedCall { report, log: line.log(), caller_track, agent_track, rate: line_rate })
}

/// Prints a call's events as they come (when `print`), and passes the agent's words to the
/// scripted caller's `line`.
async fn print_events(mut events: mpsc::UnboundedReceiver<CallEvent>, print: bool, line: Option<LoopbackLine>) {
    while let Some(event) = events.recv().await {
        if let (Some(line), CallEvent::Agent { text, .. }) = (&line, &event) {
            line.agent_said(text);
        }
        if !print {
            continue;
        }
        match event {
            CallEvent::Agent { text, at, interrupted } => {
                println!("[{:6.1}s] agent : {text}{}", at.as_secs_f32(), if interrupted { "  (interrupted)" } else { "" })
            }
            CallEvent::Caller { text, at, confidence, replaces_last } => {
                let who = if replaces_last { "caller (whole line)" } else { "caller" };
                match confidence {
                    Some(c) => println!("[{:6.1}s] {who}: {text}  (heard with {:.0}% confidence)", at.as_secs_f32(), c * 100.0),
                    None => println!("[{:6.1}s] {who}: {text}", at.as_secs_f32()),
                }
            }
            CallEvent::Turn(t) => println!(
                "          turn {}: end of turn {:.0} ms · stt {:.0} · llm first token {:.0} · tts first audio {:.0} · voice-to-voice {:.0} ms",
                t.turn,
                ms_of(t.end_of_turn),
                ms_of(t.stt_final),
                ms_of(t.llm_first_token),
                ms_of(t.tts_first_audio),
                ms_of(t.voice_to_voice)
            ),
            CallEvent::BargeIn { onset, stopped } => println!(
                "[{:6.1}s] barge-in: agent audio stopped {:.0} ms after the caller began",
                onset.as_secs_f32(),
                ms_of(stopped.saturating_sub(onset))
            ),
            CallEvent::Flow { node, slots } => println!("          [flow: {node}] {}", serde_json::Value::Object(slots)),
            CallEvent::Note(note) => println!("          ({note})"),
            CallEvent::Error(error) => println!("          error: {error}"),
            CallEvent::Analysis(turn) => {
                let a = &turn.analysis;
                let intent = a.intent.as_ref().map(|m| format!("intent {} ({:.2}) · ", m.intent, m.confidence)).unwrap_or_default();
                let entities: Vec<String> = a.entities.iter().map(|e| format!("{}={}", e.kind, e.value)).collect();
                println!(
                    "          [{intent}sentiment {} {:+.2}{}{}]",
                    a.sentiment.label.as_str(),
                    a.sentiment.score,
                    if entities.is_empty() { String::new() } else { format!(" · {}", entities.join(" ")) },
                    if turn.escalation { " · ESCALATION" } else { "" }
                )
            }
            CallEvent::Partial { text } => println!("          caller…  {text}"),
        }
    }
}

/// The `q`-quantile of `values` in whole milliseconds, or "-" when there are none.
pub(super) fn ms_at(values: &[Duration], q: f64) -> String {
    percentile(values, q).map(|d| format!("{:.0}", ms_of(d))).unwrap_or_else(|| "-".into())
}

pub fn print_percentiles(turns: &[TurnTimings]) {
    let stages: [(&str, fn(&TurnTimings) -> Duration); 5] = [
        ("end of turn", |t| t.end_of_turn),
        ("stt final", |t| t.stt_final),
        ("llm first token", |t| t.llm_first_token),
        ("tts first audio", |t| t.tts_first_audio),
        ("voice-to-voice", |t| t.voice_to_voice),
    ];
    println!("{:<18} {:>8} {:>8}   (ms after the caller's end of speech, {} turns)", "stage", "p50", "p95", turns.len());
    for (name, get) in stages {
        // Over the turns that went through the stage (a flow's line asks no LLM).
        let values: Vec<Duration> = turns.iter().map(get).filter(|d| !d.is_zero()).collect();
        let note = if values.len() < turns.len() { format!("   ({} turns)", values.len()) } else { String::new() };
        println!("{:<18} {:>8} {:>8}{note}", name, ms_at(&values, 0.5), ms_at(&values, 0.95));
    }
}

pub(super) fn load_assistant(path: &Path) -> anyhow::Result<Arc<Assistant>> {
    Ok(Arc::new(Assistant::load(path)?))
}

/// The operator's own commands: models from the store, keys from the environment, and no
/// egress restriction (the operator runs these on their own machine).
pub fn operator_engines(store: &ModelStore) -> EngineRegistry {
    EngineRegistry::new(store.clone(), EgressPolicy::allow_all(), EngineLimits::default())
}

pub(super) async fn load_engines(store: &ModelStore, assistant: &Assistant) -> anyhow::Result<Arc<Engines>> {
    Ok(operator_engines(store).engines_for(assistant, &Credentials::from_env()).await.context("loading the assistant's models")?)
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    models_cmd::pull(&store, &[])?;
    let assistant = load_assistant(&args.assistant)?;
    let script = CallerScript::load(&args.caller)?;
    runtime()?.block_on(async {
        println!("\ncalling {} (local models: whisper tiny.en, {}, piper {})\n", assistant.spec.name, assistant.spec.llm.model, assistant.spec.voice.name);
        let engines = load_engines(&store, &assistant).await?;
        let call = simulate_call(&store, engines, assistant, script, BTreeMap::new(), args.line_rate, true).await?;
        println!("\nsummary    : {}", call.report.summary);
        println!("disposition: {}", pipeline::disposition(&call.report));
        if !call.report.slots.is_empty() {
            println!("slots      : {}", serde_json::Value::Object(call.report.slots.clone()));
        }
        if let Some((reached, why)) = &call.report.success {
            println!("success    : {} ({why})", if *reached { "yes" } else { "no" });
        }
        println!("ended by   : {}", call.report.ended_by.clone().unwrap_or_default());
        println!();
        print_percentiles(&call.report.turns);
        write_recording(&args.output, &call)?;
        println!("\nrecording (caller left, agent right): {}", args.output.display());
        Ok(())
    })
}

fn write_recording(path: &Path, call: &SimulatedCall) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    write_wav_channels(path, call.rate, &[&call.caller_track, &call.agent_track]).with_context(|| format!("writing {}", path.display()))
}

pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let assistant = load_assistant(&args.assistant)?;
    let script = CallerScript::load(&args.caller)?;
    let variables: BTreeMap<String, String> = args.vars.into_iter().collect();
    prompt::resolve_variables(&assistant, &variables).map_err(anyhow::Error::msg)?;
    runtime()?.block_on(async {
        let engines = load_engines(&store, &assistant).await?;
        let call = simulate_call(&store, engines, assistant, script, variables, args.line_rate, !args.json).await?;
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir)?;
            write_recording(&dir.join("call.wav"), &call)?;
            std::fs::write(dir.join("report.json"), report_json(&call)?)?;
        }
        if args.json {
            println!("{}", report_json(&call)?);
        } else {
            println!("\nsummary    : {}", call.report.summary);
            println!("disposition: {}", pipeline::disposition(&call.report));
            if !call.report.slots.is_empty() {
                println!("slots      : {}", serde_json::Value::Object(call.report.slots.clone()));
            }
            if let Some((reached, why)) = &call.report.success {
                println!("success    : {} ({why})", if *reached { "yes" } else { "no" });
            }
            print_percentiles(&call.report.turns);
        }
        Ok(())
    })
}

fn report_json(call: &SimulatedCall) -> anyhow::Result<String> {
    let report = &call.report;
    let value = serde_json::json!({
        "call_id": report.call_id,
        "transcript": report.transcript.iter().map(|(who, text, at)| serde_json::json!({ "speaker": who, "text": text, "at_ms": ms_of(*at).round() })).collect::<Vec<_>>(),
        "partials": report.partials.iter().map(|(text, at)| serde_json::json!({ "text": text, "at_ms": ms_of(*at).round() })).collect::<Vec<_>>(),
        "turns": report.turns,
        "barge_ins": report.barge_ins.iter().map(|b| serde_json::json!({
            "caller_onset_ms": ms_of(b.caller_onset).round(),
            "onset_ms": ms_of(b.overlap_from).round(),
            "stopped_ms": ms_of(b.stopped).round(),
            "reaction_ms": ms_of(b.stopped.saturating_sub(b.overlap_from)).round(),
        })).collect::<Vec<_>>(),
        "summary": report.summary,
        "disposition": pipeline::disposition(report),
        "disposition_notes": report.disposition.as_ref().map(|(_, notes)| notes.clone()),
        "slots": report.slots,
        "success": report.success,
        "guards": report.guards,
        "flow_nodes": report.flow_nodes,
        "ended_by": report.ended_by,
        "transfers": report.transfers,
        "line_transfers": call.log.transfers,
        "dtmf_sent": call.log.dtmf_sent,
        "errors": report.errors,
        "audio_dropped": report.audio_dropped,
        "duration_ms": ms_of(report.duration).round(),
        "history": report.history,
        "analyses": report.analyses,
    });
    Ok(serde_json::to_string_pretty(&value)?)
}

/// A line with no audio, for `chat`: it records what the tools did.
struct TextLine {
    log: Mutex<Vec<String>>,
    started: std::time::Instant,
}

impl AudioOut for TextLine {
    fn rate(&self) -> u32 {
        16_000
    }
    fn now(&self) -> Duration {
        self.started.elapsed()
    }
    fn play(&self, _segment: u64, _samples: Vec<f32>) {}
    fn clear(&self) -> Duration {
        self.now()
    }
    fn pause(&self) -> Duration {
        self.now()
    }
    fn resume(&self) {}
    fn heard(&self, _segment: u64) -> f32 {
        1.0
    }
    fn is_idle(&self) -> bool {
        true
    }
    fn started_at(&self, _segment: u64) -> Option<Duration> {
        None
    }
    fn hang_up(&self) {}
    fn send_dtmf(&self, digits: &str) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(format!("pressed {digits}"));
    }
    fn transfer(&self, destination: &str) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(format!("transferred to {destination}"));
    }

    fn record(&self, _recorder: crate::transport::recorder::Recorder) {
        // A text chat has no audio to record.
    }
}

pub fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let assistant = load_assistant(&args.assistant)?;
    let variables: BTreeMap<String, String> = args.vars.into_iter().collect();
    let (system, context) = text_call_prompt(&assistant, &variables)?;
    runtime()?.block_on(async {
        let llm = operator_engines(&store).llm_for(&assistant, &Credentials::from_env()).await?;
        llm.warm_up().await.context("starting the LLM")?;
        let espeak: Arc<dyn crate::tts::TextToSpeech> = Arc::new(crate::tts::espeak::EspeakVoice::new("en-us"));
        let line = Arc::new(TextLine { log: Mutex::new(Vec::new()), started: std::time::Instant::now() });
        let ctx = Arc::new(TurnContext {
            llm,
            tts: espeak.clone(),
            fallback_tts: espeak,
            assistant: assistant.clone(),
            out: line.clone(),
            tools: pipeline::tools::specs(&assistant),
            http: EgressPolicy::allow_all().client(reqwest::Client::builder()),
            segment_ids: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            speech_scope: None,
        });
        let mut history = vec![Message::System { content: system }];
        if let Some(first) = &assistant.spec.first_message {
            let first = prompt::render(first, &context).map_err(anyhow::Error::msg)?;
            let first = crate::text::strip_marks(&first);
            println!("agent: {first}");
            history.push(Message::Assistant { content: first, tool_calls: Vec::new() });
        }
        let mut flow = assistant.spec.flow.clone().map(|spec| {
            let today = chrono::Utc::now().with_timezone(&assistant.timezone).date_naive();
            let mut flow = crate::flow::Flow::new(spec, context.as_object().cloned().unwrap_or_default(), today);
            flow.read_with_llm(true);
            flow
        });
        if flow.is_some() {
            println!("  (this assistant follows a flow; type /key N to press a keypad key)");
        }
        if let (Some(flow), None) = (flow.as_mut(), &assistant.spec.first_message) {
            let reply = flow.begin();
            if say_flow_reply(reply)? {
                return Ok(());
            }
        }
        let stdin = std::io::stdin();
        loop {
            print!("you: ");
            std::io::stdout().flush()?;
            let mut line_text = String::new();
            if stdin.lock().read_line(&mut line_text)? == 0 {
                break;
            }
            let text = line_text.trim();
            if text.is_empty() {
                continue;
            }
            if let Some(flow) = flow.as_mut() {
                let mut reply = match text.strip_prefix("/key ").and_then(|k| k.trim().chars().next()) {
                    Some(key) => flow.on_digit(key),
                    None => flow.on_caller(text),
                };
                if let Some(request) = reply.extract.take() {
                    let chat = crate::llm::ChatRequest { messages: request.messages(), tools: Vec::new(), max_tokens: 48, temperature: 0.0, schema: Some(request.schema.clone()) };
                    let value = match crate::llm::complete_text(ctx.llm.as_ref(), chat).await {
                        Ok(answer) => crate::flow::ExtractRequest::read(&answer),
                        Err(e) => {
                            println!("  (the LLM could not read it: {e})");
                            None
                        }
                    };
                    println!("  (no parser understood that; the LLM read: {})", value.as_ref().map_or("nothing".to_string(), |v| v.to_string()));
                    reply = flow.on_extracted(request.id, value);
                }
                if say_flow_reply(reply)? {
                    break;
                }
                continue;
            }
            history.push(Message::User { content: text.to_string() });
            let progress = Arc::new(Mutex::new(TurnProgress::default()));
            let cancel = tokio_util::sync::CancellationToken::new();
            let mut sentences = turn::write(ctx.clone(), history.clone(), turn::TurnInput::Respond, progress.clone(), cancel);
            let mut said = Vec::new();
            while let Some(frame) = sentences.recv().await {
                if let pipeline::frames::Frame::Sentence(chunk) = frame {
                    println!("agent: {}", chunk.text);
                    said.push(chunk.text);
                }
            }
            let progress = std::mem::take(&mut *progress.lock().unwrap_or_else(|e| e.into_inner()));
            history.extend(progress.tool_messages);
            if !said.is_empty() {
                history.push(Message::Assistant { content: said.join(" "), tool_calls: Vec::new() });
            }
            for error in &progress.errors {
                println!("  (error: {error})");
            }
            for note in line.log.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                println!("  ({note})");
            }
            if print_actions(&progress.actions) {
                break;
            }
        }
        Ok(())
    })
}

/// Prints the actions a turn took; true when one ends the conversation.
fn print_actions(actions: &[pipeline::tools::Action]) -> bool {
    let mut ended = false;
    for action in actions {
        match action {
            pipeline::tools::Action::EndCall { reason } => {
                println!("  (call ended{})", if reason.is_empty() { String::new() } else { format!(": {reason}") });
                ended = true;
            }
            pipeline::tools::Action::Disposition { name, notes } => println!("  (disposition: {name} {notes})"),
            pipeline::tools::Action::Transfer { destination } => {
                println!("  (transferred to {destination})");
                ended = true;
            }
            pipeline::tools::Action::Dtmf { digits } => println!("  (pressed {digits})"),
        }
    }
    ended
}

/// Prints a flow's reply in `chat`: the line, where the flow is, its slots and actions. True
/// when the conversation has ended.
fn say_flow_reply(reply: crate::flow::Reply) -> anyhow::Result<bool> {
    let line = prompt::render(&reply.template, &reply.context).map_err(anyhow::Error::msg)?;
    if !line.is_empty() {
        println!("agent: {}", crate::text::strip_marks(&line));
    }
    println!("  [flow: {}] {}", reply.node, serde_json::Value::Object(reply.slots));
    // Disposition notes are templates over the variables and slots.
    let mut actions = Vec::new();
    for action in reply.actions {
        actions.push(match action {
            pipeline::tools::Action::Disposition { name, notes } => {
                pipeline::tools::Action::Disposition { name, notes: prompt::render(&notes, &reply.context).map_err(anyhow::Error::msg)? }
            }
            other => other,
        });
    }
    Ok(print_actions(&actions))
}

/// The system prompt of a text-only conversation with `assistant` (and the template context,
/// for its first message).
pub(super) fn text_call_prompt(assistant: &Assistant, variables: &BTreeMap<String, String>) -> anyhow::Result<(String, serde_json::Value)> {
    let resolved = prompt::resolve_variables(assistant, variables).map_err(anyhow::Error::msg)?;
    let call = CallContext { call_id: format!("chat_{}", std::process::id()), caller: "+15550100".into(), callee: "+15550199".into() };
    let context = prompt::context(assistant, &resolved, &call);
    let system = prompt::render(&assistant.system_template, &context).map_err(anyhow::Error::msg)?;
    Ok((system, context))
}

pub use crate::telemetry::machine_line;
