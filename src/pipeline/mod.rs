//! A call's pipeline: the stages, the shared engines, and the one function that wires them.
//!
//! ```text
//! transport in ─► listen (resample · Silero VAD · partials · end of turn · whisper) ─► frames ─► agent
//! agent ─► turn (think: LLM + tools ─► chunk ─► speak: TTS ─► play) ─► transport out
//! ```
//!
//! [`run_call`] wires the call's stages, `turn::run` a turn's; `frames.rs` maps which frames
//! cross which edge. Edges and their policies: caller audio is live — `transport::live` drops
//! the oldest chunk when the listener falls behind and counts the drop (`audio_dropped` in the
//! report); frames from the listener to the agent are few and block (bounded at 64); a turn's
//! edges block (text 64, sentences 32, synthesized audio 4); events for display are unbounded
//! because they are a handful per turn.
//!
//! Models load once per process, by identity (`engines.rs`: [`EngineRegistry`]), and are
//! shared by every call; inference runs
//! in bounded, fair pools on blocking threads (whisper, Smart Turn, Piper: `pool.rs`) or in
//! the engine process (LLM). Silero runs inline:
//! ~0.1 ms per 32 ms frame, under the async runtime's budget.

pub mod after_call;
pub mod agent;
pub mod analyze;
pub mod engines;
pub mod frames;
pub mod guard;
pub mod listen;
pub mod metrics;
pub mod pool;
pub mod speech_cache;
pub mod tools;
pub mod turn;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::assistant::prompt::{self, CallContext};
use crate::assistant::Assistant;
use crate::call::Speaker;
use crate::llm::{LanguageModel, Message};
use crate::transport::{AudioOut, CallInput};
use frames::Frame;
use metrics::TurnTimings;

pub use engines::{llm_batch_threads, Credentials, EngineError, EngineLimits, EngineRegistry, Engines, LLM_BATCH_THREADS, LLM_THREADS, STT_THREADS, TTS_THREADS};

/// How much new speech comes between partial transcripts, per the assistant (0: none).
fn partial_every(assistant: &Assistant) -> Option<Duration> {
    let ms = assistant.spec.stt.partial_interval_ms;
    (ms > 0).then(|| Duration::from_millis(ms as u64))
}

/// What a call reports as it goes, for live display.
#[derive(Debug, Clone)]
pub enum CallEvent {
    Agent { text: String, at: Duration, interrupted: bool },
    /// A caller line, with how sure speech recognition was of it (0..=1) when it says.
    /// `replaces_last`: the caller went on after a pause that ended their last line, and this
    /// is that line heard again whole — it takes the caller's last line's place rather than
    /// adding one.
    Caller { text: String, at: Duration, confidence: Option<f32>, replaces_last: bool },
    Partial { text: String },
    Turn(TurnTimings),
    BargeIn { onset: Duration, stopped: Duration },
    /// Intent, sentiment and entities of a caller line, a moment after it.
    Analysis(analyze::TurnAnalysis),
    /// Where the assistant's flow is, and its slots so far, after each reply.
    Flow { node: String, slots: serde_json::Map<String, serde_json::Value> },
    Note(String),
    Error(String),
}

/// One barge-in, on the line's audio timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BargeIn {
    /// Where the VAD placed the start of the caller's speech.
    pub caller_onset: Duration,
    /// When caller and agent were both audible: the caller's onset, or the agent's first
    /// sound when it began over a caller already talking.
    pub overlap_from: Duration,
    /// When the agent's audio stopped.
    pub stopped: Duration,
}

/// Everything a call leaves behind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallReport {
    pub call_id: String,
    /// (speaker, text, when) in order.
    pub transcript: Vec<(Speaker, String, Duration)>,
    /// Partial transcripts of the caller's unfinished turns, with when each arrived.
    pub partials: Vec<(String, Duration)>,
    pub turns: Vec<TurnTimings>,
    pub barge_ins: Vec<BargeIn>,
    /// The analysis of each caller utterance, in order.
    pub analyses: Vec<analyze::TurnAnalysis>,
    pub disposition: Option<(String, String)>,
    /// The flow's slots when the call ended (its extracted fields).
    pub slots: serde_json::Map<String, serde_json::Value>,
    /// Whether the call reached the assistant's goal, and why (its disposition's `success`, or
    /// the LLM's judgement against `goal`); `None` when the assistant says neither.
    pub success: Option<(bool, String)>,
    /// The flow's nodes, one per reply, in order.
    pub flow_nodes: Vec<String>,
    /// How often each guard fired on the LLM's replies (`refusal`, `repeat`, `fallback`).
    pub guards: BTreeMap<String, usize>,
    pub transfers: Vec<String>,
    /// Tools called, by the LLM or a flow: (name, arguments).
    pub tool_calls: Vec<(String, serde_json::Value)>,
    pub dtmf_sent: String,
    pub ended_by: Option<String>,
    pub errors: Vec<String>,
    pub summary: String,
    /// Caller audio chunks dropped because the listener fell behind real time.
    pub audio_dropped: u64,
    #[serde(skip)]
    pub history: Vec<Message>,
    pub duration: Duration,
}

impl CallReport {
    /// What one side said, line by line, in order.
    pub fn said_by(&self, speaker: Speaker) -> impl Iterator<Item = &str> {
        self.transcript.iter().filter(move |(who, _, _)| *who == speaker).map(|(_, text, _)| text.as_str())
    }
}

/// The inputs of one call.
pub struct CallSetup {
    pub assistant: Arc<Assistant>,
    pub variables: BTreeMap<String, String>,
    pub call: CallContext,
    /// Whose call this is (a workspace's id; empty for the operator's own commands): what a
    /// tenant's agents said is replayed from the speech cache only in that tenant's calls.
    pub tenant: String,
}

/// Runs one call to its end: wires the stages, waits for the line to close, returns the report.
pub async fn run_call(
    engines: Arc<Engines>,
    setup: CallSetup,
    out: Arc<dyn AudioOut>,
    input: CallInput,
    hung_up: CancellationToken,
    events: mpsc::UnboundedSender<CallEvent>,
) -> anyhow::Result<CallReport> {
    let assistant = setup.assistant.clone();
    let variables = prompt::resolve_variables(&assistant, &setup.variables).map_err(anyhow::Error::msg)?;
    let context = prompt::context(&assistant, &variables, &setup.call);
    let flow_base = context.as_object().cloned().unwrap_or_default();
    let flow = assistant.spec.flow.clone().map(|spec| {
        let today = chrono::Utc::now().with_timezone(&assistant.timezone).date_naive();
        let mut flow = crate::flow::Flow::new(spec, flow_base.clone(), today);
        flow.read_with_llm(true);
        flow
    });
    // Rendering may run a sandboxed child process: off the runtime's threads.
    let templates = (assistant.system_template.clone(), assistant.spec.first_message.clone());
    let (system_prompt, first_message) = tokio::task::spawn_blocking(move || -> Result<(String, Option<String>), String> {
        let system_prompt = prompt::render(&templates.0, &context)?;
        let first_message = templates.1.as_deref().map(|t| prompt::render(t, &context)).transpose()?;
        Ok((system_prompt, first_message))
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let report = Arc::new(Mutex::new(CallReport { call_id: setup.call.call_id.clone(), ..CallReport::default() }));
    let call_token = CancellationToken::new();

    // Sink first: the agent speaks through the turn context onto the transport.
    let ctx = Arc::new(turn::TurnContext {
        llm: engines.llm.clone(),
        tts: engines.tts.clone(),
        fallback_tts: engines.fallback_tts.clone(),
        assistant: assistant.clone(),
        out: out.clone(),
        tools: tools::specs(&assistant),
        http: engines.http.clone(),
        segment_ids: Arc::new(AtomicU64::new(1)),
        speech_scope: Some(speech_cache::SpeechScope::new(&setup.tenant, &engines.voice)),
    });
    // Frames from the listener to the agent: few, never dropped.
    let (frames_tx, frames_rx) = mpsc::channel(64);
    let recognizer_prompt = crate::stt::Prompt::default();
    let answers = listen::Answers::default();
    let continuation = listen::Continuation::default();
    let vocabulary = vocabulary(&assistant, &variables);
    recognizer_prompt.set(&vocabulary);
    // Beside the voice path: intent, sentiment and entities of each caller utterance.
    let (routes_tx, routes_rx) = mpsc::unbounded_channel();
    // A time said without am or pm is read in the hours the flow books, as its slots read it.
    let day = crate::analysis::Day {
        date: chrono::Utc::now().with_timezone(&assistant.timezone).date_naive(),
        hours: assistant.spec.flow.as_ref().map(crate::flow::FlowSpec::hours).unwrap_or_default(),
    };
    let (prompts_tx, prompts_rx) = mpsc::unbounded_channel();
    let live_prompt = prompt::uses_live_analysis(&assistant.system_template).then(|| analyze::LivePrompt {
        template: assistant.system_template.clone(),
        context: Mutex::new(flow_base.clone()),
        prompts: prompts_tx,
    });
    let prompts = live_prompt.is_some().then_some(prompts_rx);
    let (analysis, analysis_branch) = analyze::AnalysisBranch::start(&assistant, engines.analyzer.clone(), day, events.clone(), report.clone(), routes_tx, live_prompt);
    let agent = agent::Agent {
        ctx,
        system_prompt,
        first_message,
        events: events.clone(),
        flow,
        recognizer_prompt: recognizer_prompt.clone(),
        vocabulary,
        answers: answers.clone(),
        continuation: continuation.clone(),
        analysis,
        routes: (!assistant.spec.routes.is_empty()).then_some(routes_rx),
        variables: flow_base.clone(),
        prompts,
    };
    let agent_task = tokio::spawn(agent.run(frames_rx, call_token.clone(), report.clone()));
    // Source last: the listener turns caller audio into frames.
    let listener = listen::Listener { vad: engines.vad.clone(), smart_turn: engines.smart_turn.clone(), stt: engines.stt.clone(), turn: assistant.spec.turn, input_rate: out.rate(), partial_every: partial_every(&assistant), prompt: recognizer_prompt, answers, played: if assistant.spec.turn.cancel_echo { out.played() } else { None }, talkers: pool::talkers(), continuation };
    let CallInput { audio, mut dtmf } = input;
    let drops = audio.drop_counter();
    // Keypad digits go straight to the agent.
    let dtmf_frames = frames_tx.clone();
    tokio::spawn(async move {
        while let Some(digit) = dtmf.recv().await {
            if dtmf_frames.send(Frame::Dtmf(digit)).await.is_err() {
                break;
            }
        }
    });
    let listen_task = tokio::spawn(listener.run(audio, frames_tx, call_token.clone()));

    hung_up.cancelled().await;
    call_token.cancel();
    // A stage that panicked ended the call early: say so in its report, not only in the log.
    let (listened, agent) = (listen_task.await, agent_task.await);
    analysis_branch.finish().await;
    let mut report = std::mem::take(&mut *report.lock().unwrap_or_else(|e| e.into_inner()));
    for (stage, stopped) in [("listener", listened.as_ref().err()), ("agent", agent.as_ref().err())] {
        if let Some(error) = stopped {
            tracing::error!(call_id = %report.call_id, %error, "the call's {stage} stopped");
            report.errors.push(format!("the call's {stage} stopped: {error}"));
        }
    }
    // What the caller's audio path lived with (a refused chunk, a frame the VAD could not score).
    for fault in listened.unwrap_or_default() {
        tracing::warn!(call_id = %report.call_id, "{fault}");
        report.errors.push(fault);
    }
    report.duration = out.now();
    // Read after the listener has finished: every drop is counted by now.
    report.audio_dropped = drops.get();
    if report.ended_by.is_none() {
        report.ended_by = Some("caller hung up".into());
    }
    render_disposition_notes(&mut report, flow_base).await;
    Ok(report)
}

/// A flow's disposition notes are a template over the variables and the slots: rendered once
/// the call has ended, off the runtime's threads. A template that fails leaves empty notes and
/// says why in the report's errors.
async fn render_disposition_notes(report: &mut CallReport, mut values: serde_json::Map<String, serde_json::Value>) {
    let Some((name, notes)) = report.disposition.clone().filter(|(_, notes)| notes.contains("{{") || notes.contains("{%")) else {
        return;
    };
    values.extend(report.slots.clone());
    let rendered = tokio::task::spawn_blocking(move || prompt::render(&notes, &serde_json::Value::Object(values))).await;
    let notes = match rendered {
        Ok(Ok(text)) => text,
        Ok(Err(error)) => {
            report.errors.push(format!("the disposition's notes did not render: {error}"));
            String::new()
        }
        Err(error) => {
            report.errors.push(format!("rendering the disposition's notes stopped: {error}"));
            String::new()
        }
    };
    report.disposition = Some((name, notes));
}

/// A summary of a call that followed a flow, from where it ended, without an LLM: the
/// disposition and its notes, else the slots it filled. `None` for a free-form call.
pub fn flow_summary(report: &CallReport) -> Option<String> {
    if report.flow_nodes.is_empty() {
        return None;
    }
    let spoke = report.said_by(Speaker::Caller).next().is_some();
    Some(match (&report.disposition, spoke) {
        (_, false) => "The caller did not speak.".into(),
        (Some((name, notes)), _) if !notes.is_empty() => format!("{}: {notes}.", sentence_case(&name.replace('_', " "))),
        (Some((name, _)), _) => format!("{}.", sentence_case(&name.replace('_', " "))),
        (None, _) if report.slots.is_empty() => "The caller spoke, but the flow filled no slots.".into(),
        (None, _) => {
            let slots: Vec<String> = report.slots.iter().map(|(k, v)| format!("{} {}", k.replace('_', " "), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect();
            format!("The call ended in `{}` with {}.", report.flow_nodes.last().cloned().unwrap_or_default(), slots.join(", "))
        }
    })
}

fn sentence_case(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// One answered call to its end, on any line: the pipeline under the assistant's duration
/// limit (and a grace for the goodbye), then its summary. A call past the limit is hung up and
/// is an error. The server's runner, `simulate`, `demo` and the eval all go through here.
pub async fn converse(
    engines: Arc<Engines>,
    setup: CallSetup,
    out: Arc<dyn AudioOut>,
    input: CallInput,
    hung_up: CancellationToken,
    events: mpsc::UnboundedSender<CallEvent>,
) -> anyhow::Result<CallReport> {
    let limit = Duration::from_secs_f32(setup.assistant.spec.turn.max_duration_s + 30.0);
    let llm = engines.llm.clone();
    let assistant = setup.assistant.clone();
    let result = tokio::time::timeout(limit, run_call(engines, setup, out, input, hung_up.clone(), events)).await;
    hung_up.cancel();
    let mut report = match result {
        Ok(report) => report?,
        Err(_) => anyhow::bail!("the call did not end within {limit:?}"),
    };
    report.summary = summarize(llm.as_ref(), &report).await;
    let mut slots = std::mem::take(&mut report.slots);
    let reading = after_call::extract(llm.as_ref(), &assistant, &report.transcript, &mut slots, report.disposition.is_some()).await;
    report.slots = slots;
    if let (None, Some(name)) = (&report.disposition, reading.disposition) {
        report.disposition = Some((name, "chosen after the call from the transcript".into()));
    }
    report.success = after_call::success(&assistant, &report, reading.judged);
    Ok(report)
}

/// A one-sentence summary of a call: from its flow when it followed one, else by the
/// assistant's own LLM (a simple version; the analysis stage refines it), falling back to the
/// caller's first words if the LLM fails.
pub async fn summarize(llm: &dyn LanguageModel, report: &CallReport) -> String {
    if let Some(summary) = flow_summary(report) {
        return summary;
    }
    summarize_transcript(llm, &report.transcript).await
}

/// Words the recognizer should expect on this call: the assistant's `stt.vocabulary` and the
/// call's short text variables without digits (a customer's name, opening hours in words).
/// Variables holding times or numbers are left out: primed with "Monday at 10 am", Whisper
/// heard "at 9 a.m." as "at 10 am" (eval, 2026-11-30).
fn vocabulary(assistant: &Assistant, variables: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut words: Vec<String> = assistant.spec.stt.vocabulary.clone();
    for value in variables.values() {
        if let Some(text) = value.as_str() {
            let text = text.trim();
            let wordy = text.len() <= 40 && text.chars().any(char::is_alphabetic) && !text.chars().any(|c| c.is_ascii_digit() || c == '/' || c == '@');
            if !text.is_empty() && wordy {
                words.push(text.to_string());
            }
        }
    }
    if words.is_empty() {
        return String::new();
    }
    let mut text = words.iter().map(|w| w.trim().trim_end_matches('.')).collect::<Vec<_>>().join(". ");
    text.push('.');
    text
}

async fn summarize_transcript(llm: &dyn LanguageModel, transcript: &[(Speaker, String, Duration)]) -> String {
    use futures::StreamExt;
    let fallback = transcript.iter().find(|(who, _, _)| *who == Speaker::Caller).map(|(_, t, _)| format!("The caller said: {t}")).unwrap_or_else(|| "The caller did not speak.".into());
    if transcript.is_empty() {
        return fallback;
    }
    let lines: Vec<String> = transcript.iter().map(|(who, text, _)| format!("{who}: {text}")).collect();
    let request = crate::llm::ChatRequest {
        messages: vec![
            Message::System { content: "You summarize phone calls in one short sentence.".into() },
            Message::User { content: format!("Summarize this call in one sentence:\n{}", lines.join("\n")) },
        ],
        tools: Vec::new(),
        max_tokens: 60,
        temperature: 0.0,
        schema: None,
    };
    let Ok(mut stream) = llm.stream(request).await else { return fallback };
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(crate::llm::LlmEvent::Text(piece)) => text.push_str(&piece),
            Ok(_) => {}
            Err(_) => return fallback,
        }
    }
    let text = text.trim().to_string();
    if text.is_empty() { fallback } else { text }
}

/// The call's disposition: the one the agent set, else what the transcript shows.
pub fn disposition(report: &CallReport) -> String {
    if let Some((name, _)) = &report.disposition {
        return name.clone();
    }
    let caller_spoke = report.said_by(Speaker::Caller).next().is_some();
    if !caller_spoke {
        "no_response".into()
    } else if report.transfers.is_empty() {
        "completed".into()
    } else {
        "transferred".into()
    }
}
