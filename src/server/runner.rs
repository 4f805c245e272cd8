//! Running the calls this worker owns: the sandbox line, the shared engines, live control,
//! and writing everything down as it happens.
//!
//! A call runs in its own task: ring → (answer) → the real pipeline on a loopback line with
//! a scripted caller → summary and disposition → closed. Every transcript line, turn and
//! event is written when it happens, through one [`EventLog`] per call that numbers events
//! in order (the live event stream reads them back by number). Control from the API (end,
//! DTMF, transfer) reaches a live call here, directly when this worker owns it, or through
//! PostgreSQL NOTIFY from another worker ([`listen_for_control`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::call::Speaker;
use crate::assistant::prompt::CallContext;
use crate::assistant::Assistant;
use crate::models::ModelStore;
use crate::pipeline::metrics::ms_of;
use super::secrets::Vault;
use crate::pipeline::{self, CallEvent, CallSetup, Credentials, EngineRegistry, Engines};
use crate::call::CallStatus;
use crate::store::{CallOutcome, CallRecord, Store, TranscriptLine, TurnRecord};
use crate::simulation::{sandbox, CallerScript, Sandbox, ScriptedCaller};
use crate::transport::hold::Holder;
use crate::transport::loopback::LoopbackLine;
use crate::transport::recorder::Recorder;
use crate::transport::stream::StreamLine;
use crate::transport::{AudioOut, CallInput};

/// The sandbox's default caller, used when a call brings no `metadata.sandbox_caller`.
const DEFAULT_SANDBOX_CALLER: &str = include_str!("../../eval/callers/sandbox.yaml");

/// The sandbox line's sample rate: wideband, like a browser call.
const SANDBOX_RATE: u32 = 16_000;

/// How long a sandbox number rings before it is answered (or not).
const RING: Duration = Duration::from_millis(800);

/// What the API can do to a live call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    Hangup { reason: String },
    /// Keys to press; `w` waits half a second.
    Dtmf { digits: String },
    Transfer { to: String },
    /// On hold (`true`) the agent neither hears nor speaks; off hold it goes on.
    Hold { on: bool },
}

/// A control message between workers.
#[derive(Debug, Serialize, Deserialize)]
struct ControlMessage {
    call_id: String,
    control: Control,
}

pub fn default_sandbox_caller() -> CallerScript {
    serde_yaml::from_str(DEFAULT_SANDBOX_CALLER).expect("the embedded sandbox caller parses (checked by a unit test)")
}

/// A call's events, numbered in the order they were written.
pub struct EventLog {
    store: Store,
    call_id: String,
    next: tokio::sync::Mutex<Numbers>,
}

/// The next number for each of a call's sequences.
struct Numbers {
    event: i64,
    transcript_line: i64,
}

impl EventLog {
    pub fn new(store: Store, call_id: &str) -> Self {
        EventLog { store, call_id: call_id.to_string(), next: tokio::sync::Mutex::new(Numbers { event: 1, transcript_line: 1 }) }
    }

    /// Replaces the words of caller line `seq`, which the caller went on from after a pause: the
    /// line now holds the whole, heard again as one (`CallEvent::Caller::replaces_last`).
    pub async fn revise_caller_line(&self, seq: i64, text: &str, confidence: Option<f32>) {
        if let Err(error) = self.store.revise_transcript_line(&self.call_id, seq, text, confidence.map(rounded)).await {
            tracing::warn!(%error, call = %self.call_id, "cannot revise a transcript line");
        }
        let mut event = json!({ "speaker": Speaker::Caller, "text": text, "revises": seq, "final": true });
        if let Some(confidence) = confidence {
            event["confidence"] = json!(rounded(confidence));
        }
        self.event("transcript", event).await;
    }

    /// Writes an event; a database hiccup is logged, never allowed to drop the call.
    pub async fn event(&self, kind: &str, data: Value) {
        let mut next = self.next.lock().await;
        match self.store.insert_event(&self.call_id, next.event, kind, &data).await {
            Ok(()) => next.event += 1,
            Err(error) => tracing::warn!(%error, call = %self.call_id, kind, "cannot record a call event"),
        }
    }

    async fn transcript(&self, speaker: Speaker, text: &str, at: Duration, interrupted: bool, confidence: Option<f32>) -> i64 {
        let seq = {
            let mut next = self.next.lock().await;
            next.transcript_line += 1;
            next.transcript_line - 1
        };
        let line = TranscriptLine { seq, speaker, text: text.into(), at_ms: ms_of(at).round() as i64, interrupted, analysis: None, confidence: confidence.map(rounded) };
        if let Err(error) = self.store.insert_transcript_line(&self.call_id, &line).await {
            tracing::warn!(%error, call = %self.call_id, "cannot record a transcript line");
        }
        let mut event = json!({ "speaker": speaker, "text": text, "at_ms": line.at_ms, "interrupted": interrupted, "final": true });
        if let Some(confidence) = line.confidence {
            event["confidence"] = json!(confidence);
        }
        self.event("transcript", event).await;
        seq
    }

    async fn status(&self, status: CallStatus, reason: Option<&str>) {
        self.event("status", json!({ "status": status, "reason": reason })).await;
    }
}

/// A call running on this worker.
#[derive(Clone)]
struct LiveCall {
    line: Arc<crate::transport::hold::HoldableLine>,
    /// Cancelled when the caller's side is gone (hung up, stream stopped).
    caller_gone: CancellationToken,
    ended_by: Arc<Mutex<Option<String>>>,
    log: Arc<EventLog>,
}

/// How a call reaches its line.
pub enum Connect {
    /// Dial `to_number`: the sandbox line answers a sandbox number with this caller; any other
    /// number is placed through Twilio. With `transfer_on_answer` the agent only bridges: once
    /// answered, the call goes on to that number (Ringez's bridge mode).
    Dial { script: CallerScript, transfer_on_answer: Option<String> },
    /// Twilio already has the call (inbound): wait for its media stream.
    Twilio(Waiting),
    /// The line is already connected (a browser's web call).
    Line(StreamLine, CallInput),
}

/// A call waiting for its media stream; `token` goes into the TwiML and must come back in
/// the stream's `start`.
pub struct Waiting {
    pub token: String,
    answered: tokio::sync::oneshot::Receiver<Answer>,
}

/// What ends a call's wait for its stream.
enum Answer {
    Stream(StreamLine, CallInput),
    /// The provider reports the call over before it streamed (busy, no-answer, …).
    Ended { status: CallStatus },
}

/// Handed to the socket that brought a waiting call's stream.
pub struct StreamAnswer {
    tx: tokio::sync::oneshot::Sender<Answer>,
}

impl StreamAnswer {
    /// Gives the call its line; false when the call stopped waiting.
    pub fn answer(self, line: StreamLine, input: CallInput) -> bool {
        self.tx.send(Answer::Stream(line, input)).is_ok()
    }
}

struct Pending {
    token: String,
    tx: tokio::sync::oneshot::Sender<Answer>,
    /// Twilio's id of a call we placed, once its REST answer came: what to cancel if the
    /// server stops while it rings.
    call_sid: Option<String>,
}

/// How long an outbound call may ring and an answered one take to stream.
const ANSWER_WITHIN: Duration = Duration::from_secs(75);
/// How long an inbound call's stream may take after the webhook answered it.
const STREAM_WITHIN: Duration = Duration::from_secs(20);

/// A line answered and ready for the pipeline.
struct Answered {
    out: Arc<dyn AudioOut>,
    input: CallInput,
    caller_gone: CancellationToken,
    /// The loopback line, whose scripted caller hears the agent's words.
    loopback: Option<LoopbackLine>,
    /// The streamed line (Twilio, a web call), whose socket may end the call with a reason
    /// and which shows the far end the live transcript.
    stream: Option<StreamLine>,
}

impl Answered {
    /// A streamed line (Twilio, a web call, SIP): the socket ends the call and sees the live
    /// transcript.
    fn streamed(line: StreamLine, input: CallInput) -> Answered {
        Answered { out: Arc::new(line.clone()), input, caller_gone: line.ended(), loopback: None, stream: Some(line) }
    }
}

/// The calls this worker owns, and the engines they share.
pub struct Runner {
    store: Store,
    models: ModelStore,
    worker_id: Arc<str>,
    live: Mutex<HashMap<String, LiveCall>>,
    /// Calls started here and not yet finished (ringing ones too): what the server's call
    /// limit counts.
    running: std::sync::atomic::AtomicUsize,
    /// Those of them on the local models: what the local call capacity counts.
    running_local: std::sync::atomic::AtomicUsize,
    /// Every loaded model, shared by identity across assistants.
    engines: EngineRegistry,
    vault: Arc<Vault>,
    /// Calls waiting for a Twilio media stream, by call id.
    pending: Mutex<HashMap<String, Pending>>,
    twilio: Option<Arc<super::twilio::Twilio>>,
    /// Where calls' recordings are written (`<call id>.wav`).
    recordings: std::path::PathBuf,
    /// Every number is answered by the sandbox line (`serve --sandbox-line`).
    sandbox_line: bool,
    /// Where loading the file assistants' models at start stands (see [`Preload`]).
    preload: std::sync::atomic::AtomicU8,
    /// Outbound calls through a SIP trunk (`serve --sip-trunk`), once its endpoint is up.
    sip: std::sync::OnceLock<super::sip::Dialer>,
}

/// Where loading the file assistants' models at start stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Preload {
    /// Not asked for (`serve --no-preload`): each model loads with the first call needing it.
    Off,
    Loading,
    Done,
}

impl Preload {
    pub fn as_str(self) -> &'static str {
        match self {
            Preload::Off => "off",
            Preload::Loading => "loading",
            Preload::Done => "done",
        }
    }
}

/// Whose assistant a call runs: the deployment's (a file) or the workspace's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssistantOwner {
    Deployment,
    Workspace,
}

impl Runner {
    pub fn new(store: Store, models: ModelStore, engines: EngineRegistry, vault: Arc<Vault>, worker_id: Arc<str>, twilio: Option<Arc<super::twilio::Twilio>>, recordings: std::path::PathBuf) -> Self {
        Runner { store, models, worker_id, live: Mutex::new(HashMap::new()), running: Default::default(), running_local: Default::default(), engines, vault, pending: Mutex::new(HashMap::new()), twilio, recordings, sandbox_line: false, preload: Default::default(), sip: std::sync::OnceLock::new() }
    }

    /// Loads the local models a call of the deployment's `assistant` uses, ahead of its first
    /// call (a no-op for those already loaded).
    pub async fn preload(&self, assistant: &Assistant) -> Result<(), crate::pipeline::engines::EngineError> {
        self.engines.engines_for(assistant, &Credentials::for_workspace(Default::default(), true)).await.map(|_| ())
    }

    pub fn set_preload(&self, state: Preload) {
        self.preload.store(state as u8, std::sync::atomic::Ordering::Release);
    }

    pub fn preload_state(&self) -> Preload {
        match self.preload.load(std::sync::atomic::Ordering::Acquire) {
            s if s == Preload::Loading as u8 => Preload::Loading,
            s if s == Preload::Done as u8 => Preload::Done,
            _ => Preload::Off,
        }
    }

    /// Sends every number to the sandbox line (see `serve --sandbox-line`).
    /// Places calls Twilio does not through this SIP trunk's dialer.
    pub fn set_sip_dialer(&self, dialer: super::sip::Dialer) {
        let _ = self.sip.set(dialer);
    }

    /// Whether calls can be placed through a SIP trunk.
    pub fn dials_sip(&self) -> bool {
        self.sip.get().is_some()
    }

    pub fn with_sandbox_line(mut self, on: bool) -> Self {
        self.sandbox_line = on;
        self
    }

    /// Where a call's recording is (or would be). Call ids are generated (`call_` and hex),
    /// never a caller's text, so the name cannot leave the folder.
    pub fn recording_path(&self, call_id: &str) -> std::path::PathBuf {
        let safe: String = call_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        self.recordings.join(format!("{safe}.wav"))
    }

    /// Registers a call as waiting for its media stream.
    pub fn expect_stream(&self, call_id: &str) -> Waiting {
        use rand::RngCore;
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let (tx, answered) = tokio::sync::oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(call_id.to_string(), Pending { token: token.clone(), tx, call_sid: None });
        Waiting { token, answered }
    }

    /// The token of a call waiting for its stream (the voice webhook of a call we placed).
    pub fn stream_token(&self, call_id: &str) -> Option<String> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).get(call_id).map(|p| p.token.clone())
    }

    /// The waiting call a stream's `start` names, if its token is that call's; the token is
    /// used up.
    pub fn take_stream(&self, call_id: &str, token: &str) -> Option<StreamAnswer> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let expected = pending.get(call_id)?;
        if expected.token.len() != token.len() || !openssl::memcmp::eq(expected.token.as_bytes(), token.as_bytes()) {
            return None;
        }
        pending.remove(call_id).map(|p| StreamAnswer { tx: p.tx })
    }

    /// Records a live call's new status. The call goes on if the store cannot take it (its
    /// outcome is written again at the end); the failure is logged with the call.
    async fn record_status(&self, call_id: &str, status: CallStatus) {
        if let Err(error) = self.store.set_call_status(call_id, status, None).await {
            tracing::warn!(%error, call = %call_id, %status, "cannot record the call's status");
        }
    }

    /// Twilio reports a call's progress.
    pub async fn provider_status(&self, call_id: &str, status: CallStatus) {
        match status {
            CallStatus::Ringing => {
                if let Ok(Some(call)) = self.store.call_any_workspace(call_id).await {
                    if call.status == CallStatus::Initiated.as_str() {
                        self.record_status(call_id, CallStatus::Ringing).await;
                    }
                }
            }
            CallStatus::Busy | CallStatus::NoAnswer | CallStatus::Failed | CallStatus::Canceled | CallStatus::Completed => {
                let waiting = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(call_id);
                if let Some(waiting) = waiting {
                    let _ = waiting.tx.send(Answer::Ended { status });
                }
                let live = self.live.lock().unwrap_or_else(|e| e.into_inner()).get(call_id).cloned();
                if let Some(live) = live {
                    live.caller_gone.cancel();
                }
            }
            _ => {}
        }
    }

    /// Calls answered and in progress on this worker.
    pub fn live_calls(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Calls started on this worker and not finished, ringing ones included.
    pub fn running_calls(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Those of them on the local models.
    pub fn running_local_calls(&self) -> usize {
        self.running_local.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// This worker's load, for admitting a call to `assistant`.
    pub fn load_for(&self, assistant: &Assistant) -> super::limits::Load {
        super::limits::Load { running: self.running_calls(), local: self.running_local_calls(), wants_local: assistant.uses_local_models() }
    }

    pub fn loaded_engines(&self) -> crate::pipeline::engines::LoadedEngines {
        self.engines.loaded()
    }

    /// The embedding model for `/v1/analysis/intent` (loaded once).
    pub async fn analyzer(&self) -> Result<Arc<crate::analysis::Analyzer>, crate::pipeline::engines::EngineError> {
        self.engines.analyzer().await
    }

    /// The model store (for work outside calls, such as synthesizing a clip).
    pub fn models(&self) -> &ModelStore {
        &self.models
    }

    pub fn egress(&self) -> &crate::egress::EgressPolicy {
        self.engines.egress()
    }

    /// Starts a stored (queued) call in the background.
    pub fn start(self: &Arc<Self>, call: CallRecord, assistant: Arc<Assistant>, owner: AssistantOwner, connect: Connect, record: bool) {
        let runner = self.clone();
        runner.running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let local = assistant.uses_local_models();
        if local {
            runner.running_local.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        tokio::spawn(async move {
            let id = call.id.clone();
            let log = Arc::new(EventLog::new(runner.store.clone(), &id));
            let hook = assistant.spec.webhook_url.clone();
            runner.webhook(&call, hook.as_deref(), CallStatus::Initiated).await;
            let mut outcome = runner.run(&call, assistant, owner, connect, record, &log).await;
            runner.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            outcome.reason = outcome.reason.map(|r| public_reason(&r));
            runner.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            runner.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            if local {
                runner.running_local.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
            match runner.store.finish_call(&id, &outcome).await {
                Ok(true) => {
                    log.status(outcome.status, outcome.reason.as_deref()).await;
                    runner.webhook(&call, hook.as_deref(), outcome.status).await;
                }
                Ok(false) => tracing::info!(call = %id, "the call was closed elsewhere before it finished"),
                Err(error) => tracing::error!(%error, call = %id, "cannot record the call's outcome"),
            }
        });
    }

    /// Stores the webhook deliveries for the call's move to `status` (with the call as it now
    /// is); once it has ended, its transcript and analysis follow.
    async fn webhook(&self, call: &CallRecord, assistant_hook: Option<&str>, status: CallStatus) {
        let Some(event) = super::webhooks::status_event(status) else { return };
        let now = match self.store.call_any_workspace(&call.id).await {
            Ok(Some(now)) => now,
            _ => call.clone(),
        };
        let data = super::webhooks::call_data(&now);
        super::webhooks::emit(&self.store, &now, assistant_hook, event, data.clone()).await;
        if event == "call.completed" {
            let transcript: Vec<Value> = match self.store.transcript(&call.id).await {
                Ok(lines) => lines.iter().map(|l| json!({ "speaker": l.speaker, "text": l.text, "at_ms": l.at_ms })).collect(),
                Err(_) => Vec::new(),
            };
            super::webhooks::emit(&self.store, &now, assistant_hook, "call.transcript_ready", json!({ "call_id": now.id, "transcript": transcript })).await;
            let extracted = now.extracted.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok()).unwrap_or(Value::Null);
            super::webhooks::emit(
                &self.store,
                &now,
                assistant_hook,
                "call.analysis_ready",
                json!({ "call_id": now.id, "summary": now.summary, "disposition": now.disposition, "disposition_notes": now.disposition_notes, "extracted": extracted, "success": now.success.map(|s| s != 0), "success_reason": now.success_reason }),
            )
            .await;
            if self.recording_path(&now.id).is_file() {
                let data = json!({ "call_id": now.id, "recording_url": format!("/v1/calls/{}/recording", now.id), "duration_seconds": now.duration_ms.map(|ms| (ms + 500) / 1000) });
                super::webhooks::emit(&self.store, &now, assistant_hook, "call.recording_ready", data).await;
            }
        }
    }

    /// True while the stored call may still be answered: not ended, and no hang-up asked
    /// for while it rang.
    pub async fn still_open(&self, id: &str) -> bool {
        matches!(self.store.call_any_workspace(id).await, Ok(Some(call)) if call.is_live() && call.status != CallStatus::Ending.as_str())
    }

    /// The credentials a call may use: the secrets its assistant names, and the server's
    /// environment only for the deployment's own assistants.
    async fn credentials(&self, call: &CallRecord, assistant: &Assistant, owner: AssistantOwner) -> Result<Credentials, String> {
        let names = super::secrets::referenced(&assistant.spec);
        let secrets = super::secrets::values(&self.store, &self.vault, &call.workspace_id, &names).await?;
        Ok(Credentials::for_workspace(secrets, owner == AssistantOwner::Deployment))
    }

    async fn run(self: &Arc<Self>, call: &CallRecord, assistant: Arc<Assistant>, owner: AssistantOwner, connect: Connect, record: bool, log: &Arc<EventLog>) -> CallOutcome {
        let failed = |reason: String| CallOutcome::ended(CallStatus::Failed, reason);
        if let Err(error) = self.store.set_call_status(&call.id, CallStatus::Ringing, None).await {
            return failed(format!("storage: {error}"));
        }
        log.status(CallStatus::Ringing, None).await;
        self.webhook(call, assistant.spec.webhook_url.as_deref(), CallStatus::Ringing).await;

        // The models are ready before the line is answered: a caller's first words are heard.
        let bridge_to = match &connect {
            Connect::Dial { transfer_on_answer, .. } => transfer_on_answer.clone(),
            _ => None,
        };
        let answered = match connect {
            Connect::Dial { script, .. } => match sandbox(&call.to_number).or(self.sandbox_line.then_some(Sandbox::Answer)) {
                Some(behaviour) => self.answer_sandbox(call, &assistant, owner, behaviour, script).await,
                None => match &self.twilio {
                    Some(twilio) => {
                        let engines = match self.prepare(call, &assistant, owner).await {
                            Ok(engines) => engines,
                            Err(outcome) => return outcome,
                        };
                        let waiting = self.expect_stream(&call.id);
                        match twilio.place_call(call).await {
                            Ok(sid) => {
                                tracing::info!(call = %call.id, call_sid = %sid, "placed through Twilio");
                                if let Some(pending) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&call.id) {
                                    pending.call_sid = Some(sid);
                                }
                                self.await_stream(waiting, ANSWER_WITHIN).await.map(|answered| (answered, engines))
                            }
                            Err(reason) => Err(failed(reason)),
                        }
                    }
                    None => match self.sip.get() {
                        Some(dialer) => {
                            let engines = match self.prepare(call, &assistant, owner).await {
                                Ok(engines) => engines,
                                Err(outcome) => return outcome,
                            };
                            match dialer.place(call, ANSWER_WITHIN).await {
                                Ok((line, input)) => Ok((Answered::streamed(line, input), engines)),
                                Err(not) => Err(CallOutcome::ended(not.status, not.reason)),
                            }
                        }
                        None => Err(failed("no telephony provider is configured for this number".into())),
                    },
                },
            },
            Connect::Line(line, input) => match self.prepare(call, &assistant, owner).await {
                Ok(engines) => Ok((Answered::streamed(line, input), engines)),
                Err(outcome) => Err(outcome),
            },
            Connect::Twilio(waiting) => match self.prepare(call, &assistant, owner).await {
                Ok(engines) => self.await_stream(waiting, STREAM_WITHIN).await.map(|answered| (answered, engines)),
                Err(outcome) => Err(outcome),
            },
        };
        let (answered, engines) = match answered {
            Ok(answered) => answered,
            Err(outcome) => return outcome,
        };
        let recorder = if record {
            match Recorder::create(&self.recording_path(&call.id), answered.out.rate()) {
                Ok(recorder) => {
                    answered.out.record(recorder.clone());
                    Some(recorder)
                }
                Err(error) => {
                    tracing::warn!(%error, call = %call.id, "the call goes on unrecorded");
                    None
                }
            }
        } else {
            None
        };
        if let Some(line) = &answered.stream {
            line.answer();
        }
        let (caller_gone, stream) = (answered.caller_gone.clone(), answered.stream.clone());
        let outcome = match bridge_to {
            Some(to) => self.bridge(call, &assistant, answered, &to, log).await,
            None => self.converse(call, assistant, engines, answered, log).await,
        };
        caller_gone.cancel();
        // The call is over: its recording is whole now (call.recording_ready says so).
        if let Some(recorder) = recorder {
            recorder.finish();
        }
        match stream.as_ref().and_then(StreamLine::failure) {
            Some(reason) => failed(reason),
            None => outcome,
        }
    }

    /// The sandbox line: rings, then answers (or not) as the number's last digits say, with a
    /// scripted caller on the far end.
    async fn answer_sandbox(&self, call: &CallRecord, assistant: &Assistant, owner: AssistantOwner, behaviour: Sandbox, script: CallerScript) -> Result<(Answered, Arc<Engines>), CallOutcome> {
        let failed = |reason: String| CallOutcome::ended(CallStatus::Failed, reason);
        tokio::time::sleep(RING).await;
        match behaviour {
            Sandbox::NoAnswer => return Err(CallOutcome::ended(CallStatus::NoAnswer, "the number did not answer")),
            Sandbox::Busy => return Err(CallOutcome::ended(CallStatus::Busy, "the number was busy")),
            Sandbox::Fail => return Err(failed("the sandbox's failing number (+1 500 555 0003)".into())),
            Sandbox::Answer => {}
        }
        let engines = self.prepare(call, assistant, owner).await?;
        let models = self.models.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let voice = crate::tts::load_voice(&models, &script.voice, 1)?;
            ScriptedCaller::prepare(script, voice.as_ref(), SANDBOX_RATE)
        })
        .await;
        let caller = match prepared {
            Ok(Ok(caller)) => caller.greeted_by(&assistant.spec),
            Ok(Err(error)) => return Err(failed(format!("cannot prepare the sandbox caller: {error:#}"))),
            Err(error) => return Err(failed(format!("cannot prepare the sandbox caller: {error}"))),
        };
        if !self.still_open(&call.id).await {
            return Err(CallOutcome::ended(CallStatus::Canceled, "ended before it was answered"));
        }
        let (line, input) = LoopbackLine::start(SANDBOX_RATE);
        tokio::spawn(caller.run(line.clone()));
        Ok((Answered { out: Arc::new(line.clone()), input, caller_gone: line.hung_up(), loopback: Some(line), stream: None }, engines))
    }

    /// Waits for a Twilio call's media stream (or the provider's word that it ended).
    async fn await_stream(&self, waiting: Waiting, within: Duration) -> Result<Answered, CallOutcome> {
        let ended = |status: CallStatus, reason: &str| CallOutcome::ended(status, reason);
        match tokio::time::timeout(within, waiting.answered).await {
            Ok(Ok(Answer::Stream(line, input))) => Ok(Answered::streamed(line, input)),
            Ok(Ok(Answer::Ended { status })) => Err(match status {
                CallStatus::Busy => ended(status, "the number was busy"),
                CallStatus::NoAnswer => ended(status, "the number did not answer"),
                CallStatus::Canceled => ended(status, "the call was canceled before it was answered"),
                CallStatus::Completed => ended(CallStatus::Failed, "the call ended before its media stream started"),
                _ => ended(CallStatus::Failed, "Twilio could not connect the call"),
            }),
            Ok(Err(_)) => Err(ended(CallStatus::Failed, "the call stopped waiting for its media stream")),
            Err(_) => Err(ended(CallStatus::NoAnswer, &format!("no media stream arrived within {within:?}"))),
        }
    }

    /// The call's credentials and models, loaded before it is answered.
    async fn prepare(&self, call: &CallRecord, assistant: &Assistant, owner: AssistantOwner) -> Result<Arc<Engines>, CallOutcome> {
        let failed = |reason: String| CallOutcome::ended(CallStatus::Failed, reason);
        let credentials = self.credentials(call, assistant, owner).await.map_err(failed)?;
        self.engines.engines_for(assistant, &credentials).await.map_err(|error| failed(format!("cannot start the assistant's models: {error}")))
    }

    /// Bridge mode: the answered line goes straight on to `to`; the agent says nothing.
    async fn bridge(&self, call: &CallRecord, assistant: &Assistant, answered: Answered, to: &str, log: &Arc<EventLog>) -> CallOutcome {
        self.record_status(&call.id, CallStatus::InProgress).await;
        log.status(CallStatus::InProgress, None).await;
        self.webhook(call, assistant.spec.webhook_url.as_deref(), CallStatus::InProgress).await;
        let started = answered.out.now();
        log.event("action", json!({ "type": "transfer", "to": to, "bridge": true })).await;
        answered.out.transfer(to);
        answered.out.hang_up();
        CallOutcome {
            status: CallStatus::Completed,
            reason: None,
            disposition: Some("transferred".into()),
            disposition_notes: Some(format!("bridged to {to} on answer")),
            extracted: None,
            summary: Some(format!("Bridged the answered call to {to}.")),
            ended_by: Some(format!("bridged to {to}")),
            duration_ms: Some(ms_of(answered.out.now().saturating_sub(started)).round() as i64),
            success: None,
        }
    }

    /// The conversation on an answered line, to its summary and disposition.
    async fn converse(self: &Arc<Self>, call: &CallRecord, assistant: Arc<Assistant>, engines: Arc<Engines>, answered: Answered, log: &Arc<EventLog>) -> CallOutcome {
        let Answered { out, input, caller_gone, loopback, stream } = answered;
        let failed = |reason: String| CallOutcome::ended(CallStatus::Failed, reason);
        let ended_by = Arc::new(Mutex::new(None));
        let holdable = Arc::new(crate::transport::hold::HoldableLine::new(out, input.audio.silencer()));
        let out: Arc<dyn AudioOut> = holdable.clone();
        let live = LiveCall { line: holdable, caller_gone: caller_gone.clone(), ended_by: ended_by.clone(), log: log.clone() };
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(call.id.clone(), live);
        self.record_status(&call.id, CallStatus::InProgress).await;
        log.status(CallStatus::InProgress, None).await;
        self.webhook(call, assistant.spec.webhook_url.as_deref(), CallStatus::InProgress).await;

        let variables: BTreeMap<String, String> = serde_json::from_str(&call.dynamic_variables).unwrap_or_default();
        let setup = CallSetup {
            assistant: assistant.clone(),
            variables,
            call: CallContext { call_id: call.id.clone(), caller: call.from_number.clone(), callee: call.to_number.clone() },
            tenant: call.workspace_id.clone(),
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let hooks = Hooks { call: call.clone(), assistant: assistant.spec.webhook_url.clone() };
        let writer = tokio::spawn(write_events(log.clone(), self.store.clone(), hooks, events_rx, loopback, stream));
        let result = pipeline::converse(engines, setup, out, input, caller_gone, events_tx).await;
        if let Err(error) = writer.await {
            tracing::error!(%error, call = %call.id, "the call's event writer stopped; later events went unrecorded");
        }
        let mut report = match result {
            Ok(report) => report,
            Err(error) => return failed(format!("{error:#}")),
        };
        if let Some(reason) = ended_by.lock().unwrap_or_else(|e| e.into_inner()).take() {
            report.ended_by = Some(reason);
        }
        CallOutcome {
            status: CallStatus::Completed,
            reason: None,
            disposition: Some(pipeline::disposition(&report)),
            disposition_notes: report.disposition.as_ref().map(|(_, notes)| notes.clone()).filter(|n| !n.is_empty()),
            extracted: (!report.slots.is_empty()).then(|| serde_json::Value::Object(report.slots.clone()).to_string()),
            summary: Some(report.summary.clone()),
            ended_by: report.ended_by.clone(),
            duration_ms: Some(ms_of(report.duration).round() as i64),
            success: report.success.clone(),
        }
    }

    /// Applies a control to a call, if this worker runs it. Returns whether it did.
    pub async fn control(&self, call_id: &str, control: &Control) -> bool {
        let Some(call) = self.live.lock().unwrap_or_else(|e| e.into_inner()).get(call_id).cloned() else { return false };
        match control {
            Control::Hangup { reason } => {
                *call.ended_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
                call.log.event("action", json!({ "type": "hangup", "reason": reason })).await;
                call.line.hang_up();
            }
            Control::Dtmf { digits } => {
                call.log.event("action", json!({ "type": "dtmf", "digits": digits })).await;
                call.line.send_dtmf(digits);
            }
            Control::Hold { on } => {
                if call.line.set_hold(Holder::Api, *on) {
                    call.log.event("action", json!({ "type": if *on { "hold" } else { "unhold" } })).await;
                    call.line.hold_far_end(*on);
                }
            }
            Control::Transfer { to } => {
                *call.ended_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("transferred to {to} through the API"));
                call.log.event("action", json!({ "type": "transfer", "to": to })).await;
                call.line.transfer(to);
                // The sandbox line records the transfer and hangs up; Twilio's hands the call on.
                call.line.hang_up();
            }
        }
        true
    }

    /// The far end held the call or took it off hold (a SIP peer's re-INVITE): the agent waits
    /// as on the API's hold, and the far end is not asked back for what it did itself. Its
    /// coming back leaves an API hold in place.
    pub async fn held_by_far_end(&self, call_id: &str, on: bool) {
        let Some(call) = self.live.lock().unwrap_or_else(|e| e.into_inner()).get(call_id).cloned() else { return };
        if call.line.set_hold(Holder::FarEnd, on) {
            call.log.event("action", json!({ "type": if on { "hold" } else { "unhold" }, "by": "caller" })).await;
        }
    }

    /// Hangs up every live call (shutdown). Returns how many there were.
    /// Calls still waiting for their stream are canceled (and a call we placed that is still
    /// ringing is canceled at Twilio), so nothing is left ringing behind a stopped server.
    pub fn hang_up_all(&self, reason: &str) -> usize {
        let calls: Vec<LiveCall> = self.live.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for call in &calls {
            *call.ended_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
            call.line.hang_up();
        }
        let waiting: Vec<Pending> = self.pending.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, pending)| pending).collect();
        for pending in &waiting {
            if let (Some(twilio), Some(sid)) = (self.twilio.clone(), pending.call_sid.clone()) {
                tokio::spawn(async move {
                    if let Err(error) = twilio.update_call(&sid, &[("Status", "canceled")]).await {
                        tracing::warn!(%error, call_sid = %sid, "cannot cancel a ringing Twilio call at shutdown");
                    }
                });
            }
        }
        let count = calls.len() + waiting.len();
        for pending in waiting {
            let _ = pending.tx.send(Answer::Ended { status: CallStatus::Canceled });
        }
        count
    }

    /// Sends a control to whichever worker owns the call. `Ok(false)`: this worker owns it but
    /// it is not answered yet, so only a hang-up can apply (it cancels the call).
    pub async fn send(&self, call: &CallRecord, control: Control) -> Result<bool, crate::store::StoreError> {
        if call.worker_id.as_deref() == Some(&*self.worker_id) {
            if self.control(&call.id, &control).await {
                return Ok(true);
            }
            if let Control::Hangup { reason } = &control {
                let outcome = CallOutcome { ended_by: Some(reason.clone()), ..CallOutcome::ended(CallStatus::Canceled, reason.clone()) };
                self.store.finish_call(&call.id, &outcome).await?;
                return Ok(true);
            }
            return Ok(false);
        }
        let message = serde_json::to_string(&ControlMessage { call_id: call.id.clone(), control }).unwrap_or_default();
        self.store.notify(super::CONTROL_CHANNEL, &message).await?;
        Ok(true)
    }
}

/// A failure reason as a workspace may read it: absolute paths of the server's files are
/// cut to their file names.
pub fn public_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for (i, piece) in reason.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let trimmed = piece.trim_start_matches(['`', '\'', '"', '(', '[']);
        let lead = &piece[..piece.len() - trimmed.len()];
        if trimmed.starts_with('/') && trimmed[1..].contains('/') {
            let end = trimmed.find(['`', '\'', '"', ')', ']', ',', ';']).unwrap_or(trimmed.len());
            let (path, tail) = trimmed.split_at(end);
            let path = path.trim_end_matches(':');
            let name = path.rsplit('/').find(|p| !p.is_empty()).unwrap_or("");
            out.push_str(lead);
            out.push_str(name);
            out.push_str(&trimmed[path.len()..end]);
            out.push_str(tail);
        } else {
            out.push_str(piece);
        }
    }
    out
}

/// Writes a call's pipeline events to the store as they arrive.
/// Stores a call's events as they come; the agent's words also reach the scripted caller's
/// `line` (for its `after:` waits).
/// Where a call's live events go beyond its own log: the webhooks of its workspace, the call's
/// and its assistant's.
struct Hooks {
    call: CallRecord,
    assistant: Option<String>,
}

/// `transcription.updated` for a final line, to the subscriptions that ask for it and the URL a
/// client gave for this call's transcription (read now: it may have been set mid-call).
/// A confidence as stored and shown: two decimals are all it means.
fn rounded(confidence: f32) -> f64 {
    (confidence as f64 * 100.0).round() / 100.0
}

/// `replaces_last`: the caller's last line heard again whole (they went on after a pause).
async fn transcription_event(store: &Store, hooks: &Hooks, speaker: Speaker, text: &str, at: Duration, replaces_last: bool) {
    let call = match store.call_any_workspace(&hooks.call.id).await {
        Ok(Some(call)) => call,
        _ => hooks.call.clone(),
    };
    let mut data = json!({ "call_id": call.id, "speaker": speaker, "text": text, "at_ms": ms_of(at).round() as i64, "final": true });
    if replaces_last {
        data["replaces_last"] = json!(true);
    }
    super::webhooks::emit(store, &call, hooks.assistant.as_deref(), "transcription.updated", data).await;
}

async fn write_events(log: Arc<EventLog>, store: Store, hooks: Hooks, mut events: mpsc::UnboundedReceiver<CallEvent>, line: Option<LoopbackLine>, stream: Option<StreamLine>) {
    let call_id = hooks.call.id.clone();
    let show = |event: Value| {
        if let Some(stream) = &stream {
            stream.notify(event);
        }
    };
    // The transcript line of each caller line, in order (analyses name caller lines).
    let mut caller_lines: Vec<i64> = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            CallEvent::Agent { text, at, interrupted } => {
                if let Some(line) = &line {
                    line.agent_said(&text);
                }
                show(json!({ "type": "transcript", "speaker": Speaker::Agent, "text": text, "interrupted": interrupted }));
                log.transcript(Speaker::Agent, &text, at, interrupted, None).await;
                transcription_event(&store, &hooks, Speaker::Agent, &text, at, false).await;
            }
            CallEvent::Caller { text, at, confidence, replaces_last } => {
                show(json!({ "type": "transcript", "speaker": Speaker::Caller, "text": text, "confidence": confidence.map(rounded), "replaces_last": replaces_last }));
                match caller_lines.last() {
                    // The caller's last line, heard again whole: its stored line takes the words.
                    Some(&seq) if replaces_last => log.revise_caller_line(seq, &text, confidence).await,
                    _ => caller_lines.push(log.transcript(Speaker::Caller, &text, at, false, confidence).await),
                }
                transcription_event(&store, &hooks, Speaker::Caller, &text, at, replaces_last).await;
            }
            CallEvent::Analysis(turn) => {
                let data = serde_json::to_value(&turn).unwrap_or(Value::Null);
                if let Some(&seq) = caller_lines.get(turn.line) {
                    let intent = turn.analysis.intent.as_ref().map(|m| m.intent.as_str());
                    if let Err(error) = store.set_line_analysis(&call_id, seq, intent, &data).await {
                        tracing::warn!(%error, call = %call_id, "cannot record a line's analysis");
                    }
                }
                let mut shown = data.clone();
                shown["type"] = json!("analysis");
                show(shown);
                log.event("analysis", data.clone()).await;
                let known = turn.analysis.intent.as_ref().is_some_and(|m| m.intent != crate::analysis::intent::UNKNOWN);
                for (wanted, event) in [(known, "call.intent"), (true, "call.sentiment")] {
                    if wanted {
                        let mut body = data.clone();
                        body["call_id"] = json!(call_id);
                        super::webhooks::emit(&store, &hooks.call, hooks.assistant.as_deref(), event, body).await;
                    }
                }
            }
            CallEvent::Partial { text } => {
                show(json!({ "type": "partial", "text": text }));
                log.event("partial", json!({ "text": text })).await
            }
            CallEvent::Turn(t) => {
                let record = TurnRecord {
                    turn: t.turn as i64,
                    end_of_turn_ms: ms_of(t.end_of_turn).round(),
                    stt_final_ms: ms_of(t.stt_final).round(),
                    llm_first_token_ms: ms_of(t.llm_first_token).round(),
                    tts_first_audio_ms: ms_of(t.tts_first_audio).round(),
                    voice_to_voice_ms: ms_of(t.voice_to_voice).round(),
                };
                if let Err(error) = store.insert_turn(&call_id, &record).await {
                    tracing::warn!(%error, call = %call_id, "cannot record a turn");
                }
                log.event("turn", serde_json::to_value(&t).unwrap_or(Value::Null)).await;
            }
            CallEvent::BargeIn { onset, stopped } => {
                log.event("barge_in", json!({ "onset_ms": ms_of(onset).round(), "stopped_ms": ms_of(stopped).round() })).await
            }
            CallEvent::Flow { node, slots } => log.event("flow", json!({ "node": node, "slots": slots })).await,
            CallEvent::Note(note) => log.event("note", json!({ "text": note })).await,
            CallEvent::Error(error) => log.event("error", json!({ "text": error })).await,
        }
    }
}

/// Receives control messages from other workers (PostgreSQL LISTEN) and applies those for
/// calls this worker runs; reconnects when the connection drops.
pub async fn listen_for_control(url: String, runner: Arc<Runner>, shutdown: CancellationToken) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for control messages; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(2)) => continue }
            }
        };
        if let Err(error) = listener.listen(super::CONTROL_CHANNEL).await {
            tracing::warn!(%error, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        loop {
            let notification = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.recv() => n,
            };
            match notification {
                Ok(notification) => match serde_json::from_str::<ControlMessage>(notification.payload()) {
                    Ok(message) => {
                        if runner.control(&message.call_id, &message.control).await {
                            tracing::info!(call = %message.call_id, control = ?message.control, "applied a control from another worker");
                        }
                    }
                    Err(error) => tracing::warn!(%error, payload = notification.payload(), "ignoring a malformed control message"),
                },
                Err(error) => {
                    tracing::warn!(%error, "the control connection dropped; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn failure_reasons_show_no_server_paths() {
        let reason = super::public_reason("model whisper-tiny.en is missing: /root/work/models/cache/whisper/ggml-tiny.en.bin (run `ringline models pull`)");
        assert_eq!(reason, "model whisper-tiny.en is missing: ggml-tiny.en.bin (run `ringline models pull`)");
        assert_eq!(super::public_reason("cannot read `/etc/x/y.key`: denied"), "cannot read `y.key`: denied");
        assert_eq!(super::public_reason("a/b and /single"), "a/b and /single");
    }

    #[test]
    fn the_default_sandbox_caller_parses() {
        let script = super::default_sandbox_caller();
        assert!(!script.lines.is_empty());
    }
}
