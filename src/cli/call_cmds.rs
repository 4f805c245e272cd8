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
use crate::llm::{LanguageModel, Message};
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
    let caller = ScriptedCaller::prepare(script, caller_voice.as_ref(), line_rate)?;
    let (line, input) = LoopbackLine::start(line_rate);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(print_events(events_rx, print, Some(line.clone())));
    tokio::spawn(caller.run(line.clone()));
    let setup = CallSetup {
        assistant: assistant.clone(),
        variables,
        call: CallContext { call_id: format!("sim_{}", std::process::id()), caller: "+15550100".into(), callee: "+15550199".into() },
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
            CallEvent::Caller { text, at, confidence } => match confidence {
                Some(c) => println!("[{:6.1}s] caller: {text}  (heard with {:.0}% confidence)", at.as_secs_f32(), c * 100.0),
                None => println!("[{:6.1}s] caller: {text}", at.as_secs_f32()),
            },
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
fn ms_at(values: &[Duration], q: f64) -> String {
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
        let values: Vec<Duration> = turns.iter().map(get).collect();
        println!("{:<18} {:>8} {:>8}", name, ms_at(&values, 0.5), ms_at(&values, 0.95));
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
fn text_call_prompt(assistant: &Assistant, variables: &BTreeMap<String, String>) -> anyhow::Result<(String, serde_json::Value)> {
    let resolved = prompt::resolve_variables(assistant, variables).map_err(anyhow::Error::msg)?;
    let call = CallContext { call_id: format!("chat_{}", std::process::id()), caller: "+15550100".into(), callee: "+15550199".into() };
    let context = prompt::context(assistant, &resolved, &call);
    let system = prompt::render(&assistant.system_template, &context).map_err(anyhow::Error::msg)?;
    Ok((system, context))
}

/// One request's figures in `bench llm`.
struct LlmSample {
    new_tokens: usize,
    prompt_secs: f64,
    completion_tokens: usize,
    decode_secs: f64,
    first_text: Option<Duration>,
}

/// Sends `messages` and waits for the whole answer: its text and figures.
async fn timed_request(llm: &dyn LanguageModel, request: crate::llm::ChatRequest) -> anyhow::Result<(String, LlmSample)> {
    use futures::StreamExt;
    let started = std::time::Instant::now();
    let mut stream = llm.stream(request).await?;
    let (mut text, mut first_text, mut usage) = (String::new(), None, None);
    while let Some(event) = stream.next().await {
        match event? {
            crate::llm::LlmEvent::Text(piece) => {
                first_text.get_or_insert_with(|| started.elapsed());
                text.push_str(&piece);
            }
            crate::llm::LlmEvent::ToolCall(_) => {}
            crate::llm::LlmEvent::Done(u) => usage = Some(u),
        }
    }
    let usage = usage.ok_or_else(|| anyhow::anyhow!("the engine's stream ended without usage figures"))?;
    let (Some(prompt_secs), Some(decode_secs)) = (usage.prompt_secs, usage.decode_secs) else {
        anyhow::bail!("the engine did not report its timings (usage.timings): is this the local engine?");
    };
    let sample = LlmSample {
        new_tokens: usage.prompt_tokens.saturating_sub(usage.cached_tokens),
        prompt_secs,
        completion_tokens: usage.completion_tokens,
        decode_secs,
        first_text,
    };
    Ok((text, sample))
}

/// `ringline bench llm`: the local engine's speed as a call uses it — a whole new prompt
/// (system prompt and tools), then one turn after another on the cached prefix, with the
/// pipeline's thread budget (or the one given).
pub fn bench_llm(assistant_path: &Path, caller_path: &Path, model: Option<String>, conversations: usize, threads: Option<usize>) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let assistant = load_assistant(assistant_path)?;
    let script = CallerScript::load(caller_path)?;
    let lines: Vec<String> = script.lines.iter().filter_map(|l| l.say.as_ref()).map(|s| s.replace("...", "")).collect();
    let model = model.unwrap_or_else(|| assistant.spec.llm.model.clone());
    let (system, context) = text_call_prompt(&assistant, &BTreeMap::new())?;
    let first_message = assistant.spec.first_message.as_ref().map(|m| prompt::render(m, &context).map(|m| crate::text::strip_marks(&m))).transpose().map_err(anyhow::Error::msg)?;
    let (decode_threads, batch_threads) = match threads {
        Some(n) => (n, n),
        None => (pipeline::LLM_THREADS, pipeline::LLM_BATCH_THREADS),
    };
    runtime()?.block_on(async {
        let llm = crate::llm::local::LocalEngine::new(&store, &model, decode_threads, batch_threads)?;
        eprintln!("starting the engine ({model})…");
        llm.warm_up().await.context("starting the LLM engine")?;
        let tools = pipeline::tools::specs(&assistant);
        let (mut whole, mut turns) = (Vec::new(), Vec::new());
        for index in 0..conversations {
            eprintln!("conversation {}/{conversations}: {} turns…", index + 1, lines.len());
            // A different first line each time, so nothing of the last conversation is cached.
            let mut history = vec![Message::System { content: format!("Conversation {}.\n{system}", index + 1) }];
            if let Some(first) = &first_message {
                history.push(Message::Assistant { content: first.clone(), tool_calls: Vec::new() });
            }
            for (turn, line) in lines.iter().enumerate() {
                history.push(Message::User { content: line.clone() });
                let request = crate::llm::ChatRequest { messages: history.clone(), tools: tools.clone(), max_tokens: assistant.spec.llm.max_tokens, temperature: 0.0, schema: None };
                let (text, sample) = timed_request(&llm, request).await?;
                history.push(Message::Assistant { content: if text.trim().is_empty() { "Okay.".into() } else { text }, tool_calls: Vec::new() });
                if turn == 0 { whole.push(sample) } else { turns.push(sample) }
            }
        }
        let rate = |tokens: usize, secs: f64| if secs > 0.0 { tokens as f64 / secs } else { 0.0 };
        let median = |mut values: Vec<f64>| -> f64 {
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or(0.0)
        };
        println!("\n{model}: prompt processing on {batch_threads} thread(s), decoding on {decode_threads}; {conversations} conversation(s) of {} turns", lines.len());
        println!("{:<40} {:>10} {:>10} {:>10}", "", "tokens p50", "ms p50", "tok/s p50");
        // One row: (tokens, seconds) a request, at p50.
        let row = |name: &str, work: Vec<(usize, f64)>| {
            println!(
                "{:<40} {:>10.0} {:>10.0} {:>10.0}",
                name,
                median(work.iter().map(|(tokens, _)| *tokens as f64).collect()),
                median(work.iter().map(|(_, secs)| secs * 1000.0).collect()),
                median(work.iter().map(|(tokens, secs)| rate(*tokens, *secs)).collect())
            );
        };
        row("prompt: system prompt, tools, first line", whole.iter().map(|s| (s.new_tokens, s.prompt_secs)).collect());
        row("prompt: a turn on the cached prefix", turns.iter().map(|s| (s.new_tokens, s.prompt_secs)).collect());
        row("decode: the answer", whole.iter().chain(&turns).filter(|s| s.completion_tokens > 1).map(|s| (s.completion_tokens, s.decode_secs)).collect());
        let first: Vec<Duration> = turns.iter().filter_map(|s| s.first_text).collect();
        println!("{:<40} {:>10} {:>10}   (request sent → first text, p95 {} ms)", "first text of a turn (client side)", "", ms_at(&first, 0.5), ms_at(&first, 0.95));
        println!("\ntargets (2 cores, SmolLM2-135M): prompt processing ≥ 300 tok/s, decode ≥ 40 tok/s");
        Ok(())
    })
}

/// How far the VAD's estimate of a speech onset may stray from the truth.
const VAD_ONSET_SLACK: Duration = Duration::from_millis(250);

/// `ringline bench latency`: several scripted calls, then percentiles of every stage.
/// A simulated call's turns counted from the caller's true end of speech (the script knows
/// it), not from where the VAD placed it; with each turn's VAD error.
fn turns_from_truth(call: &SimulatedCall) -> Vec<(TurnTimings, Duration, bool)> {
    call.report
        .turns
        .iter()
        .map(|turn| {
            let truth = call.log.caller_speech.iter().map(|(_, end)| *end).min_by_key(|end| end.abs_diff(turn.speech_end_at)).unwrap_or(turn.speech_end_at);
            (turn.counted_from(truth), truth.abs_diff(turn.speech_end_at), turn.speech_end_at > truth)
        })
        .collect()
}

/// Resident and peak resident memory of this process, in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0;
    (field("VmRSS:"), field("VmHWM:"))
}

pub use crate::telemetry::machine_line;

/// Runs 1, 2, … `most` calls at once and prints voice-to-voice for each count beside one call
/// alone, and the most calls that kept p95 within 1.5 s.
async fn bench_concurrent(store: &ModelStore, engines: Arc<Engines>, assistant: Arc<Assistant>, script: &CallerScript, most: usize, rounds: usize) -> anyhow::Result<()> {
    println!("\ncalls at once on {} (voice-to-voice from the true end of speech; {rounds} round(s) per count):", machine_line());
    println!(
        "{:>6} {:>6} {:>8} {:>8} {:>12} {:>14}   {:>16} {:>16} {:>16} {:>16}   {:>8} {:>8}",
        "calls", "turns", "p50 ms", "p95 ms", "p95 vs one", "MiB per call", "end of turn", "transcript", "LLM 1st token", "1st audio", "STT wait", "yielded"
    );
    let (resident_before, _) = memory_mib();
    let mut alone_p95 = None;
    let mut within = 0;
    for n in 1..=most {
        let stt_before = (crate::pipeline::pool::stt().stats(), crate::pipeline::pool::stt().yielded());
        let mut turns = Vec::new();
        for round in 1..=rounds {
            eprintln!("{n} call(s) at once, in real time (round {round}/{rounds})…");
            let calls = futures::future::join_all((0..n).map(|_| simulate_call(store, engines.clone(), assistant.clone(), script.clone(), BTreeMap::new(), DEFAULT_LINE_RATE, false))).await;
            for call in calls {
                turns.extend(turns_from_truth(&call?).into_iter().map(|(t, _, _)| t));
            }
        }
        let v2v: Vec<Duration> = turns.iter().map(|t| t.voice_to_voice).collect();
        // Where the time goes under load: each stage from the true end of speech, p50/p95.
        let stage = |get: fn(&crate::pipeline::metrics::TurnTimings) -> Duration| {
            let values: Vec<Duration> = turns.iter().map(get).collect();
            format!("{:.0}/{:.0}", percentile(&values, 0.5).map(ms_of).unwrap_or(0.0), percentile(&values, 0.95).map(ms_of).unwrap_or(0.0))
        };
        let stages = [stage(|t| t.end_of_turn), stage(|t| t.stt_final), stage(|t| t.llm_first_token), stage(|t| t.tts_first_audio)];
        let ((jobs, waited, _), yielded) = (crate::pipeline::pool::stt().stats(), crate::pipeline::pool::stt().yielded());
        let stt_waits = format!("{}/{}", waited - stt_before.0 .1, jobs - stt_before.0 .0);
        let yielded = yielded - stt_before.1;
        let (p50, p95) = (percentile(&v2v, 0.5).map(ms_of).unwrap_or(0.0), percentile(&v2v, 0.95).map(ms_of).unwrap_or(0.0));
        let alone = *alone_p95.get_or_insert(p95);
        let (_, peak) = memory_mib();
        if p95 <= 1500.0 {
            within = n;
        }
        println!(
            "{n:>6} {:>6} {p50:>8.0} {p95:>8.0} {:>11.2}× {:>14.0}   {:>16} {:>16} {:>16} {:>16}   {stt_waits:>8} {yielded:>8}",
            v2v.len(),
            if alone > 0.0 { p95 / alone } else { 0.0 },
            (peak - resident_before).max(0.0) / n as f64,
            stages[0],
            stages[1],
            stages[2],
            stages[3]
        );
    }
    println!("stages: p50/p95 ms from the true end of speech; STT wait: speech-to-text jobs that waited for a slot / all; yielded: partial transcripts stopped for a final one");
    println!("most calls at once with voice-to-voice p95 ≤ 1.5 s: {within}");
    // What `serve` admits on its local models unless told otherwise (`--max-local-calls`).
    let capacity = crate::server::limits::Capacity { local_calls: within as u32, machine: machine_line(), measured_with: assistant.spec.name.clone() };
    match capacity.save(store) {
        Ok(path) => println!("saved as this machine's capacity for `ringline serve`: {}", path.display()),
        Err(error) => eprintln!("could not save the capacity: {error}"),
    }
    Ok(())
}

pub fn bench_latency(assistant_path: &Path, caller_path: &Path, calls: usize, concurrent: usize, rounds: usize) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let assistant = load_assistant(assistant_path)?;
    let script = CallerScript::load(caller_path)?;
    runtime()?.block_on(async {
        let engines = load_engines(&store, &assistant).await?;
        let mut turns = Vec::new();
        let mut barge_ins = Vec::new();
        // Each barge-in's reaction in two parts: Silero's onset after the true one, and the
        // VAD's onset to the agent's audio stopping (start hysteresis, delivery, the pause).
        let mut barge_in_parts: Vec<(Duration, Duration)> = Vec::new();
        let (mut vad_errors, mut vad_late) = (Vec::new(), 0);
        for index in 0..calls {
            eprintln!("call {}/{calls}: {} caller lines, in real time…", index + 1, script.lines.len());
            let call = simulate_call(&store, engines.clone(), assistant.clone(), script.clone(), BTreeMap::new(), DEFAULT_LINE_RATE, false).await?;
            // Count every turn from the caller's true end of speech (the script knows it), not
            // from where the VAD placed it.
            for (turn, error, late) in turns_from_truth(&call) {
                vad_errors.push(error);
                vad_late += usize::from(late);
                turns.push(turn);
            }
            // Barge-in reaction on the audio timeline: from when caller and agent were both
            // audible to when the agent's audio stopped. That is the caller's scripted onset
            // when they broke in, or the agent's first sound when it began over a caller
            // already talking (then Silero's lag is no part of it).
            for b in &call.report.barge_ins {
                let truth = if b.overlap_from > b.caller_onset {
                    b.overlap_from
                } else {
                    let onset = b.caller_onset;
                    let scripted = call.log.caller_speech.iter().map(|(start, _)| *start).filter(|s| *s <= onset + VAD_ONSET_SLACK).max().unwrap_or(onset);
                    if onset > scripted + VAD_ONSET_SLACK { onset } else { scripted }
                };
                barge_ins.push(b.stopped.saturating_sub(truth));
                barge_in_parts.push((b.overlap_from.saturating_sub(truth), b.stopped.saturating_sub(b.overlap_from)));
            }
        }
        println!("\n{} turns over {calls} call(s); assistant {} on {}; {}", turns.len(), assistant.spec.name, assistant.spec.llm.model, machine_line());
        print_percentiles(&turns);
        let spread = |name: &str, values: &[Duration], note: String| println!("{:<18} {:>8} {:>8}   ({note})", name, ms_at(values, 0.5), ms_at(values, 0.95));
        spread("vad end error", &vad_errors, format!("|VAD end of speech − true end|; late in {vad_late} of {} turns", turns.len()));
        spread("barge-in reaction", &barge_ins, format!("caller speech onset → agent audio stopped, {} barge-ins", barge_ins.len()));
        let gaps: [(&str, fn(&TurnTimings) -> Duration, fn(&TurnTimings) -> Duration); 4] = [
            ("end of turn", |_| Duration::ZERO, |t| t.end_of_turn),
            ("stt (after eot)", |t| t.end_of_turn.min(t.stt_final), |t| t.stt_final.max(t.end_of_turn)),
            ("llm first token", |t| t.stt_final.max(t.end_of_turn), |t| t.llm_first_token),
            ("tts first audio", |t| t.llm_first_token, |t| t.voice_to_voice),
        ];
        println!("\nwhere voice-to-voice goes (p50 of each stage's own share):");
        for (name, from, to) in gaps {
            let shares: Vec<Duration> = turns.iter().map(|t| to(t).saturating_sub(from(t))).collect();
            println!("  {:<18} {:>6.0} ms", name, percentile(&shares, 0.5).map(ms_of).unwrap_or(0.0));
        }
        // The tail, turn by turn: what the p95 is made of.
        let mut slowest: Vec<&TurnTimings> = turns.iter().collect();
        slowest.sort_by_key(|t| std::cmp::Reverse(t.voice_to_voice));
        let mut fresh: Vec<usize> = turns.iter().map(|t| t.prompt_tokens.saturating_sub(t.cached_tokens)).collect();
        fresh.sort_unstable();
        println!("  (the LLM processed {} new prompt tokens a turn at p50)", fresh.get(fresh.len() / 2).copied().unwrap_or(0));
        println!("\nslowest turns (voice-to-voice · end of turn · stt · llm first token · new prompt tokens):");
        for t in slowest.iter().take(3) {
            println!(
                "  {:>5.0} · {:>4.0} · {:>4.0} · {:>4.0} ms · {:>3}  \"{}\" → \"{}\"",
                ms_of(t.voice_to_voice),
                ms_of(t.end_of_turn),
                ms_of(t.stt_final),
                ms_of(t.llm_first_token),
                t.prompt_tokens.saturating_sub(t.cached_tokens),
                t.user_text,
                t.agent_text
            );
        }
        if !barge_in_parts.is_empty() {
            println!("\nbarge-ins (reaction = Silero's onset late by + its onset → agent audio stopped):");
            let mut parts = barge_in_parts;
            parts.sort_by_key(|(late, confirm)| std::cmp::Reverse(*late + *confirm));
            for (late, confirm) in parts {
                println!("  {:>4.0} = {:>4.0} + {:>4.0} ms", ms_of(late + confirm), ms_of(late), ms_of(confirm));
            }
        }
        if concurrent > 1 {
            bench_concurrent(&store, engines.clone(), assistant.clone(), &script, concurrent, rounds).await?;
        }
        Ok(())
    })
}
