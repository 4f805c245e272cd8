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
//! Models load once per process ([`Engines`]) and are shared by every call; inference runs
//! in bounded, fair pools on blocking threads (whisper, Smart Turn, Piper: `pool.rs`) or in
//! the engine process (LLM). Silero runs inline:
//! ~0.1 ms per 32 ms frame, under the async runtime's budget.

pub mod agent;
pub mod frames;
pub mod listen;
pub mod metrics;
pub mod pool;
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
use crate::llm::local::LocalEngine;
use crate::llm::openai::OpenAiLlm;
use crate::llm::{LanguageModel, LlmError, Message};
use crate::models::ModelStore;
use crate::stt::openai::OpenAiStt;
use crate::stt::whisper::WhisperStt;
use crate::stt::SpeechToText;
use crate::transport::{AudioOut, CallInput};
use crate::tts::openai::OpenAiTts;
use crate::tts::TextToSpeech;
use crate::vad::silero::SileroVad;
use crate::vad::smart_turn::SmartTurn;
use frames::Frame;
use metrics::TurnTimings;

/// Threads per engine on a 2-core machine. Whisper runs alone (the caller just stopped), so
/// it takes both cores; the LLM keeps decoding while Piper speaks its first sentence, so they
/// get one core each — measured: with two LLM threads, Piper's first audio came ~400 ms after
/// the first token; with one each, the two overlap instead of fighting.
pub const STT_THREADS: usize = 2;
pub const TTS_THREADS: usize = 1;
pub const LLM_THREADS: usize = 1;
/// Prompt processing happens before anything is spoken: it gets both cores.
pub const LLM_BATCH_THREADS: usize = 2;

/// The models every call shares.
pub struct Engines {
    pub vad: Arc<SileroVad>,
    pub smart_turn: Arc<SmartTurn>,
    pub stt: Arc<dyn SpeechToText>,
    pub tts: Arc<dyn TextToSpeech>,
    /// espeak-ng: used when the main voice fails.
    pub fallback_tts: Arc<dyn TextToSpeech>,
    pub llm: Arc<dyn LanguageModel>,
}

impl Engines {
    /// Loads what `assistant` needs (VAD, STT, voice, LLM) and starts the LLM engine.
    pub async fn load(store: &ModelStore, assistant: &Assistant) -> anyhow::Result<Engines> {
        let vad = Arc::new(SileroVad::load(store)?);
        let smart_turn = Arc::new(SmartTurn::load(store)?);
        let stt_model = match assistant.spec.stt.model.as_str() {
            m if m.starts_with("whisper-") => m.to_string(),
            m => format!("whisper-{m}"),
        };
        let stt_spec = &assistant.spec.stt;
        let stt: Arc<dyn SpeechToText> = match stt_spec.provider.as_str() {
            "openai" => Arc::new(OpenAiStt::new(
                stt_spec.base_url.as_deref().unwrap_or("http://127.0.0.1:8000/v1"),
                &stt_spec.model,
                &api_key(stt_spec.api_key_env.as_deref())?,
                Some(&assistant.spec.language),
            )),
            _ => Arc::new(WhisperStt::load(store, &stt_model, STT_THREADS, Some(&assistant.spec.language))?.without_timestamps()),
        };
        let voice = &assistant.spec.voice;
        let tts: Arc<dyn TextToSpeech> = match voice.provider.as_str() {
            "openai" => Arc::new(OpenAiTts::new(
                voice.base_url.as_deref().unwrap_or("http://127.0.0.1:8000/v1"),
                voice.model.as_deref().unwrap_or("tts-1"),
                &voice.name,
                &api_key(voice.api_key_env.as_deref())?,
            )),
            "espeak" => Arc::from(crate::tts::load_voice(store, &format!("espeak:{}", voice.name), TTS_THREADS)?),
            _ => Arc::from(crate::tts::load_voice(store, &voice.name, TTS_THREADS)?),
        };
        let fallback_tts: Arc<dyn TextToSpeech> = Arc::new(crate::tts::espeak::EspeakVoice::new("en-us"));
        let llm = load_llm(store, assistant)?;
        Ok(Engines { vad, smart_turn, stt, tts, fallback_tts, llm })
    }
}

/// The key in the environment variable an assistant names (`api_key_env`), or none.
fn api_key(variable: Option<&str>) -> Result<String, LlmError> {
    match variable {
        Some(var) => std::env::var(var).map_err(|_| LlmError::MissingKey(var.to_string())),
        None => Ok(String::new()),
    }
}

/// The assistant's LLM: the local engine, or an OpenAI-compatible endpoint.
pub fn load_llm(store: &ModelStore, assistant: &Assistant) -> Result<Arc<dyn LanguageModel>, LlmError> {
    let spec = &assistant.spec.llm;
    match spec.provider.as_str() {
        "openai" => {
            let key = api_key(spec.api_key_env.as_deref())?;
            let base = spec.base_url.clone().unwrap_or_else(|| "http://127.0.0.1:8000/v1".into());
            Ok(Arc::new(OpenAiLlm::new(&base, &spec.model, &key, Duration::from_secs(30))))
        }
        _ => Ok(Arc::new(LocalEngine::new(store, &spec.model, LLM_THREADS, LLM_BATCH_THREADS)?)),
    }
}

/// How much new speech comes between partial transcripts, per the assistant (0: none).
fn partial_every(assistant: &Assistant) -> Option<Duration> {
    let ms = assistant.spec.stt.partial_interval_ms;
    (ms > 0).then(|| Duration::from_millis(ms as u64))
}

/// What a call reports as it goes, for live display.
#[derive(Debug, Clone)]
pub enum CallEvent {
    Agent { text: String, at: Duration, interrupted: bool },
    Caller { text: String, at: Duration },
    Partial { text: String },
    Turn(TurnTimings),
    BargeIn { onset: Duration, stopped: Duration },
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
    pub transcript: Vec<(String, String, Duration)>,
    /// Partial transcripts of the caller's unfinished turns, with when each arrived.
    pub partials: Vec<(String, Duration)>,
    pub turns: Vec<TurnTimings>,
    pub barge_ins: Vec<BargeIn>,
    pub disposition: Option<(String, String)>,
    pub transfers: Vec<String>,
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

/// The inputs of one call.
pub struct CallSetup {
    pub assistant: Arc<Assistant>,
    pub variables: BTreeMap<String, String>,
    pub call: CallContext,
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
    let system_prompt = prompt::render(&assistant.system_template, &context).map_err(anyhow::Error::msg)?;
    let first_message = match &assistant.spec.first_message {
        Some(template) => Some(prompt::render(template, &context).map_err(anyhow::Error::msg)?),
        None => None,
    };
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
        http: reqwest::Client::new(),
        segment_ids: Arc::new(AtomicU64::new(1)),
    });
    // Frames from the listener to the agent: few, never dropped.
    let (frames_tx, frames_rx) = mpsc::channel(64);
    let agent = agent::Agent { ctx, system_prompt, first_message, events: events.clone() };
    let agent_task = tokio::spawn(agent.run(frames_rx, call_token.clone(), report.clone()));
    // Source last: the listener turns caller audio into frames.
    let listener = listen::Listener { vad: engines.vad.clone(), smart_turn: engines.smart_turn.clone(), stt: engines.stt.clone(), turn: assistant.spec.turn, input_rate: out.rate(), partial_every: partial_every(&assistant) };
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
    let _ = listen_task.await;
    let _ = agent_task.await;
    let mut report = std::mem::take(&mut *report.lock().unwrap_or_else(|e| e.into_inner()));
    report.duration = out.now();
    // Read after the listener has finished: every drop is counted by now.
    report.audio_dropped = drops.get();
    if report.ended_by.is_none() {
        report.ended_by = Some("caller hung up".into());
    }
    Ok(report)
}

/// A one-sentence summary of a call by the assistant's own LLM (a simple version; the
/// analysis stage refines it). Falls back to the caller's first words if the LLM fails.
pub async fn summarize(llm: &dyn LanguageModel, transcript: &[(String, String, Duration)]) -> String {
    use futures::StreamExt;
    let fallback = transcript.iter().find(|(who, _, _)| who == "caller").map(|(_, t, _)| format!("The caller said: {t}")).unwrap_or_else(|| "The caller did not speak.".into());
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
    let caller_spoke = report.transcript.iter().any(|(who, _, _)| who == "caller");
    if !caller_spoke {
        "no_response".into()
    } else if report.transfers.is_empty() {
        "completed".into()
    } else {
        "transferred".into()
    }
}
