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

use super::numbers::{sandbox, Sandbox};
use crate::assistant::prompt::CallContext;
use crate::assistant::Assistant;
use crate::models::ModelStore;
use crate::pipeline::metrics::ms_of;
use crate::pipeline::{self, CallEvent, CallSetup, Engines};
use crate::store::{CallOutcome, CallRecord, Store, TranscriptLine, TurnRecord};
use crate::transport::loopback::{CallerScript, LoopbackLine, ScriptedCaller};
use crate::transport::AudioOut;

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
    Dtmf { digits: String },
    Transfer { to: String },
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

    /// Writes an event; a database hiccup is logged, never allowed to drop the call.
    pub async fn event(&self, kind: &str, data: Value) {
        let mut next = self.next.lock().await;
        match self.store.insert_event(&self.call_id, next.event, kind, &data).await {
            Ok(()) => next.event += 1,
            Err(error) => tracing::warn!(%error, call = %self.call_id, kind, "cannot record a call event"),
        }
    }

    async fn transcript(&self, speaker: &str, text: &str, at: Duration, interrupted: bool) {
        let seq = {
            let mut next = self.next.lock().await;
            next.transcript_line += 1;
            next.transcript_line - 1
        };
        let line = TranscriptLine { seq, speaker: speaker.into(), text: text.into(), at_ms: ms_of(at).round() as i64, interrupted };
        if let Err(error) = self.store.insert_transcript_line(&self.call_id, &line).await {
            tracing::warn!(%error, call = %self.call_id, "cannot record a transcript line");
        }
        self.event("transcript", json!({ "speaker": speaker, "text": text, "at_ms": line.at_ms, "interrupted": interrupted, "final": true })).await;
    }

    async fn status(&self, status: &str, reason: Option<&str>) {
        self.event("status", json!({ "status": status, "reason": reason })).await;
    }
}

/// A call running on this worker.
#[derive(Clone)]
struct LiveCall {
    line: LoopbackLine,
    ended_by: Arc<Mutex<Option<String>>>,
    log: Arc<EventLog>,
}

/// The calls this worker owns, and the engines they share.
pub struct Runner {
    store: Store,
    models: ModelStore,
    worker_id: Arc<str>,
    live: Mutex<HashMap<String, LiveCall>>,
    /// Engines by (stt, voice, llm): assistants that agree share one set of models.
    engines: tokio::sync::Mutex<HashMap<String, Arc<Engines>>>,
}

impl Runner {
    pub fn new(store: Store, models: ModelStore, worker_id: Arc<str>) -> Self {
        Runner { store, models, worker_id, live: Mutex::new(HashMap::new()), engines: tokio::sync::Mutex::new(HashMap::new()) }
    }

    pub fn live_calls(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Starts a stored (queued) call in the background.
    pub fn start(self: &Arc<Self>, call: CallRecord, assistant: Arc<Assistant>, script: CallerScript) {
        let runner = self.clone();
        tokio::spawn(async move {
            let id = call.id.clone();
            let log = Arc::new(EventLog::new(runner.store.clone(), &id));
            let outcome = runner.run(&call, assistant, script, &log).await;
            runner.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            match runner.store.finish_call(&id, &outcome).await {
                Ok(true) => log.status(&outcome.status, outcome.reason.as_deref()).await,
                Ok(false) => tracing::info!(call = %id, "the call was closed elsewhere before it finished"),
                Err(error) => tracing::error!(%error, call = %id, "cannot record the call's outcome"),
            }
        });
    }

    /// True while the stored call is still live (an API hang-up while ringing closes it).
    async fn still_live(&self, id: &str) -> bool {
        matches!(self.store.call_any_workspace(id).await, Ok(Some(call)) if call.is_live())
    }

    async fn run(self: &Arc<Self>, call: &CallRecord, assistant: Arc<Assistant>, script: CallerScript, log: &Arc<EventLog>) -> CallOutcome {
        let failed = |reason: String| CallOutcome { status: "failed".into(), reason: Some(reason), ..CallOutcome::default() };
        if let Err(error) = self.store.set_call_status(&call.id, "ringing", None).await {
            return failed(format!("storage: {error}"));
        }
        log.status("ringing", None).await;
        tokio::time::sleep(RING).await;
        match sandbox(&call.to_number) {
            Some(Sandbox::NoAnswer) => return CallOutcome { status: "no-answer".into(), reason: Some("the number did not answer".into()), ..CallOutcome::default() },
            Some(Sandbox::Busy) => return CallOutcome { status: "busy".into(), reason: Some("the number was busy".into()), ..CallOutcome::default() },
            Some(Sandbox::Fail) => return failed("the sandbox's failing number (+1 500 555 0003)".into()),
            Some(Sandbox::Answer) => {}
            None => return failed("no telephony provider is configured for this number".into()),
        }

        let engines = match self.engines_for(&assistant).await {
            Ok(engines) => engines,
            Err(error) => return failed(format!("cannot load the assistant's models: {error:#}")),
        };
        let models = self.models.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let voice = crate::tts::load_voice(&models, &script.voice, 1)?;
            ScriptedCaller::prepare(script, voice.as_ref(), SANDBOX_RATE)
        })
        .await;
        let caller = match prepared {
            Ok(Ok(caller)) => caller,
            Ok(Err(error)) => return failed(format!("cannot prepare the sandbox caller: {error:#}")),
            Err(error) => return failed(format!("cannot prepare the sandbox caller: {error}")),
        };

        if !self.still_live(&call.id).await {
            return CallOutcome { status: "canceled".into(), reason: Some("ended before it was answered".into()), ..CallOutcome::default() };
        }
        let (line, input) = LoopbackLine::start(SANDBOX_RATE);
        let ended_by = Arc::new(Mutex::new(None));
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(call.id.clone(), LiveCall { line: line.clone(), ended_by: ended_by.clone(), log: log.clone() });
        let _ = self.store.set_call_status(&call.id, "in-progress", None).await;
        log.status("in-progress", None).await;
        tokio::spawn(caller.run(line.clone()));

        let variables: BTreeMap<String, String> = serde_json::from_str(&call.dynamic_variables).unwrap_or_default();
        let setup = CallSetup {
            assistant: assistant.clone(),
            variables,
            call: CallContext { call_id: call.id.clone(), caller: call.from_number.clone(), callee: call.to_number.clone() },
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_events(log.clone(), self.store.clone(), call.id.clone(), events_rx));
        let limit = Duration::from_secs_f32(assistant.spec.turn.max_duration_s + 30.0);
        let out: Arc<dyn AudioOut> = Arc::new(line.clone());
        let result = tokio::time::timeout(limit, pipeline::run_call(engines.clone(), setup, out, input, line.hung_up(), events_tx)).await;
        line.caller_hangs_up();
        let _ = writer.await;
        let mut report = match result {
            Ok(Ok(report)) => report,
            Ok(Err(error)) => return failed(format!("{error:#}")),
            Err(_) => return failed(format!("the call did not end within {limit:?}")),
        };
        if let Some(reason) = ended_by.lock().unwrap_or_else(|e| e.into_inner()).take() {
            report.ended_by = Some(reason);
        }
        report.summary = pipeline::summarize(engines.llm.as_ref(), &report.transcript).await;
        CallOutcome {
            status: "completed".into(),
            reason: None,
            disposition: Some(pipeline::disposition(&report)),
            summary: Some(report.summary.clone()),
            ended_by: report.ended_by.clone(),
            duration_ms: Some(ms_of(report.duration).round() as i64),
        }
    }

    /// The engines an assistant needs, loaded once per distinct (STT, voice, LLM).
    async fn engines_for(&self, assistant: &Arc<Assistant>) -> anyhow::Result<Arc<Engines>> {
        let key = serde_json::to_string(&(&assistant.spec.stt, &assistant.spec.voice, &assistant.spec.llm))?;
        let mut engines = self.engines.lock().await;
        if let Some(found) = engines.get(&key) {
            return Ok(found.clone());
        }
        let (models, spec) = (self.models.clone(), assistant.clone());
        let handle = tokio::runtime::Handle::current();
        // Loading reads and prepares model files: keep it off the runtime's threads.
        let loaded = tokio::task::spawn_blocking(move || handle.block_on(Engines::load(&models, &spec))).await??;
        loaded.llm.warm_up().await?;
        let loaded = Arc::new(loaded);
        engines.insert(key, loaded.clone());
        Ok(loaded)
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
            Control::Transfer { to } => {
                *call.ended_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("transferred to {to} through the API"));
                call.log.event("action", json!({ "type": "transfer", "to": to })).await;
                call.line.transfer(to);
                call.line.hang_up();
            }
        }
        true
    }

    /// Hangs up every live call (shutdown). Returns how many there were.
    pub fn hang_up_all(&self, reason: &str) -> usize {
        let calls: Vec<LiveCall> = self.live.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for call in &calls {
            *call.ended_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
            call.line.hang_up();
        }
        calls.len()
    }

    /// Sends a control to whichever worker owns the call. `Ok(false)`: this worker owns it but
    /// it is not answered yet, so only a hang-up can apply (it cancels the call).
    pub async fn send(&self, call: &CallRecord, control: Control) -> Result<bool, crate::store::StoreError> {
        if call.worker_id.as_deref() == Some(&*self.worker_id) {
            if self.control(&call.id, &control).await {
                return Ok(true);
            }
            if let Control::Hangup { reason } = &control {
                let outcome = CallOutcome { status: "canceled".into(), reason: Some(reason.clone()), ended_by: Some(reason.clone()), ..CallOutcome::default() };
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

/// Writes a call's pipeline events to the store as they arrive.
async fn write_events(log: Arc<EventLog>, store: Store, call_id: String, mut events: mpsc::UnboundedReceiver<CallEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            CallEvent::Agent { text, at, interrupted } => log.transcript("agent", &text, at, interrupted).await,
            CallEvent::Caller { text, at } => log.transcript("caller", &text, at, false).await,
            CallEvent::Partial { text } => log.event("partial", json!({ "text": text })).await,
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
    fn the_default_sandbox_caller_parses() {
        let script = super::default_sandbox_caller();
        assert!(!script.lines.is_empty());
    }
}
