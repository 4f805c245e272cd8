//! The turn manager: conversation state, turn-taking, barge-in, idle handling and limits.
//!
//! It reacts to the listener's frames and runs one [`turn`](super::turn) at a time under a
//! child cancellation token. Barge-in: caller speech that lasts `min_interrupt_ms` while the
//! agent is speaking cancels the turn and clears the line; the history then keeps only what
//! the caller heard (whole segments played, plus the played fraction of the cut one, by
//! words). A shorter sound (a cough) interrupts nothing. If an interruption turns out to hold
//! no words, the unheard rest of the reply is said again. While a segment marked
//! `<no-interrupt>` plays, caller speech neither pauses nor cuts it; once it has played, the
//! usual rules apply to whatever follows. A caller who goes on after a pause that ended their
//! turn, before its answer is heard, continues that turn: the answer is taken back and the
//! whole is answered ([`super::listen::Continuation`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::analyze::Routed;
use super::frames::{Frame, UserTurn};
use super::metrics::TurnTimings;
use super::tools::Action;
use super::turn::{self, Progress, TurnContext, TurnInput, TurnProgress};
use super::{BargeIn, CallEvent, CallReport};
use crate::call::Speaker;
use crate::flow::{Flow, Reply as FlowReply};
use crate::llm::{ChatRequest, Message};

/// Said after `idle_reprompt_s` of silence.
pub const REPROMPT: &str = "Are you still there?";
/// Said before hanging up on a silent line.
pub const IDLE_GOODBYE: &str = "I haven't heard from you, so I'll end the call now. Goodbye.";
/// Said when the call reaches its maximum duration.
pub const TIME_LIMIT: &str = "I'm sorry, we've reached the time limit for this call. Goodbye.";
/// Said when the caller's words could not be made out.
pub const PARDON: &str = "Sorry, I didn't catch that. Could you say it again?";
/// How long after the caller stops talking over a closing line they cut the hang-up waits for
/// their words (the transcript of a turn comes well within it).
const WORDS_OVER_CLOSING_WAIT: Duration = Duration::from_secs(6);
/// Consecutive LLM failures before the agent gives up politely.
const MAX_LLM_FAILURES: usize = 3;
const GIVE_UP: &str = "I'm sorry, I can't continue the call right now. Please call back later. Goodbye.";

struct ActiveTurn {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    progress: Progress,
    interruptible: bool,
    user: Option<UserTurn>,
    started_at: Duration,
}

pub struct Agent {
    pub ctx: Arc<TurnContext>,
    pub system_prompt: String,
    pub first_message: Option<String>,
    pub events: mpsc::UnboundedSender<CallEvent>,
    /// The assistant's flow, when it has one: it answers the caller instead of the LLM.
    pub flow: Option<Flow>,
    /// What the recognizer is primed with: `vocabulary`, and what the flow's question expects.
    pub recognizer_prompt: crate::stt::Prompt,
    pub vocabulary: String,
    /// The flow question's test of an answer, for the listener's end of turn.
    pub answers: super::listen::Answers,
    /// Where final caller utterances go for intent, sentiment and entities.
    pub analysis: super::analyze::AnalysisInbox,
    /// Routes the analysis matched (an intent, escalation), for the agent to act on.
    pub routes: Option<mpsc::UnboundedReceiver<Routed>>,
    /// The call's variables (and call facts), which a route's `{{ name }}` destination names.
    pub variables: serde_json::Map<String, serde_json::Value>,
    /// The system prompt rendered again with the live analysis, when it shows it.
    pub prompts: Option<mpsc::UnboundedReceiver<String>>,
    /// Tells the listener whether words that follow the caller's last turn closely continue
    /// it: open while [`State::answered`] is kept.
    pub continuation: super::listen::Continuation,
}

/// The call as it stood before the caller turn answered last, kept while that answer is
/// still unheard: a continuation of the turn (`UserTurn::continues`) goes back to it and
/// answers the whole.
struct Answered {
    history_len: usize,
    flow: Option<Flow>,
    flow_nodes: usize,
    /// The turn's words.
    text: String,
    /// Continuations already joined onto the turn.
    continued: u32,
}

/// How much of its answer the caller may hear before words they add no longer continue the
/// turn it answered but answer it in turn: about two words.
const CONTINUE_HEARD: Duration = Duration::from_millis(700);
/// Continuations joined onto one turn at most: a line that echoes the agent's voice back
/// cannot restart its answer over and over.
const MAX_CONTINUED: u32 = 2;

/// The unheard rest of a cut reply: the unplayed part of its segments, then whatever its
/// stages still held (they record it as they stop, after the cut).
struct Interrupted {
    rest: String,
    progress: Progress,
    /// The reply was the line that ends the call (a barge-in cut it).
    closing: bool,
}

impl Interrupted {
    fn text(&self) -> String {
        let held = self.progress.lock().unwrap_or_else(|e| e.into_inner()).unspoken();
        [self.rest.as_str(), held.as_str()].iter().filter(|t| !t.is_empty()).copied().collect::<Vec<_>>().join(" ")
    }
}

/// What a flow waited for, arriving in the run loop.
enum FlowResult {
    /// A tool call: whether it succeeded, and its result.
    Tool(bool, serde_json::Value),
    /// What the LLM read from the caller's words for reading `id` (`None`: nothing, or it failed).
    Extracted(u64, Option<serde_json::Value>),
}

/// How long the LLM may take to read a caller's words before the flow asks again.
const EXTRACTION_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Default)]
struct State {
    /// The call's token: helpers the agent spawns (a prefill, a flow's extraction) stop with it.
    call: CancellationToken,
    history: Vec<Message>,
    active: Option<ActiveTurn>,
    /// When the caller's current speech began (None while they are silent).
    caller_onset: Option<Duration>,
    caller_speaking: bool,
    /// A reply cut by an interruption, kept until the caller's words show whether the
    /// interruption was real.
    interrupted: Option<Interrupted>,
    last_activity: Duration,
    reprompted: bool,
    hang_up_when_done: Option<String>,
    llm_failures: usize,
    turn_count: usize,
    /// Agent audio paused because the caller started talking over it: (when the overlap
    /// began, when the audio stopped). Confirmed into a barge-in after `min_interrupt_ms`,
    /// or resumed if the sound ends sooner.
    paused: Option<(Duration, Duration)>,
    /// A caller turn that finished while a `<no-interrupt>` segment played.
    deferred: Option<UserTurn>,
    flow: Option<Flow>,
    /// Where a flow's tool calls and LLM readings send their results (the run loop receives them).
    flow_results: Option<mpsc::UnboundedSender<FlowResult>>,
    /// A flow reply waiting for the agent's current line to finish.
    queued: Option<FlowReply>,
    /// Where the call is handed over once the agent's last line has played.
    transfer_to: Option<String>,
    /// Caller lines in the transcript so far (keypad lines included).
    caller_lines: usize,
    /// The caller lines that ended over the line that ends the call: kept, never answered, and
    /// no analysis route matched on one of them replaces that line.
    over_closing: Vec<usize>,
    /// The caller turn answered last, while its answer can be taken back.
    answered: Option<Answered>,
    /// The caller began to speak and the words of that turn are not in yet.
    awaiting_words: bool,
}

impl State {
    /// The caller's speech cut the line that ends the call, and the call waits for their
    /// words to decide what follows (see `Agent::on_cut_closing`).
    fn cut_closing(&self) -> bool {
        self.hang_up_when_done.is_some() && self.interrupted.as_ref().is_some_and(|i| i.closing)
    }
}

/// The most messages after the system prompt that a turn sends to the LLM: a long call keeps
/// its latest turns (a small model's context, and its speed, are short).
const MAX_HISTORY: usize = 24;

/// The system prompt and the last [`MAX_HISTORY`] messages, never starting on a tool result
/// whose call was cut off.
fn bounded(history: &[Message]) -> Vec<Message> {
    if history.len() <= MAX_HISTORY + 1 {
        return history.to_vec();
    }
    let mut out: Vec<Message> = history.iter().take(1).cloned().collect();
    let mut rest = &history[history.len() - MAX_HISTORY..];
    while let Some((Message::Tool { .. }, tail)) = rest.split_first() {
        rest = tail;
    }
    out.extend(rest.iter().cloned());
    out
}

/// What the LLM's last `end_call` or `transfer_call` returned becomes "not done" once the
/// caller's words over its closing line keep the call open: a history that still said the call
/// will end left a small model thinking it had already ended it.
fn withdraw_closing_tools(history: &mut [Message]) {
    let Some(at) = history.iter().rposition(|m| matches!(m, Message::Assistant { tool_calls, .. } if !tool_calls.is_empty())) else { return };
    let (calls, results) = history.split_at_mut(at + 1);
    let Message::Assistant { tool_calls, .. } = &calls[at] else { return };
    for result in results {
        let Message::Tool { tool_call_id, content } = result else { continue };
        let closing = tool_calls.iter().find(|c| c.id == *tool_call_id && (c.name == "end_call" || c.name == "transfer_call"));
        if let Some(call) = closing {
            *content = format!("not done: the caller spoke over your closing words, so the call goes on; answer them, and call {} again when it should end", call.name);
        }
    }
}

/// The next live prompt from the analysis, or never when the prompt reads none of it.
async fn next_prompt(prompts: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match prompts {
        Some(prompts) => prompts.recv().await,
        None => std::future::pending().await,
    }
}

/// The next route from the analysis (with the caller line it matched), or never when the call
/// has no analysis routes.
async fn next_route(routes: &mut Option<mpsc::UnboundedReceiver<Routed>>) -> Option<Routed> {
    match routes {
        Some(routes) => routes.recv().await,
        None => std::future::pending().await,
    }
}

/// What a turn's or a flow's actions do to the call: the disposition and keys are recorded;
/// an end or a transfer waits for the agent's last line to play (see `on_tick`).
fn record_actions(state: &mut State, report: &mut CallReport, actions: &[Action]) {
    for action in actions {
        match action {
            Action::EndCall { reason } => state.hang_up_when_done = Some(if reason.is_empty() { "end_call".into() } else { reason.clone() }),
            Action::Transfer { destination } => match crate::call::transfer_destination(destination) {
                Ok(destination) => {
                    report.transfers.push(destination.clone());
                    state.hang_up_when_done = Some(format!("transferred to {destination}"));
                    state.transfer_to = Some(destination);
                }
                // Not dialled: the call goes on, and the report says why.
                Err(problem) => report.errors.push(format!("a transfer was not made: {problem}")),
            },
            Action::Disposition { name, notes } => report.disposition = Some((name.clone(), notes.clone())),
            Action::Dtmf { digits } => report.dtmf_sent.push_str(digits),
        }
    }
}

/// Spawns a helper of the call that has no use once the call is over (a prefill, a flow's
/// extraction): it is dropped, and its LLM request with it, when the call's token is cancelled.
fn spawn_helper(call: &CancellationToken, work: impl std::future::Future<Output = ()> + Send + 'static) {
    let call = call.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = call.cancelled() => {}
            _ = work => {}
        }
    });
}

impl Agent {
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Frame>, call: CancellationToken, report: Arc<Mutex<CallReport>>) {
        let turn_spec = self.ctx.assistant.spec.turn;
        let (flow_tx, mut flow_rx) = mpsc::unbounded_channel();
        let mut state = State {
            call: call.clone(),
            history: vec![Message::System { content: self.system_prompt.clone() }],
            flow: self.flow.take(),
            flow_results: Some(flow_tx),
            ..State::default()
        };
        if let Some(flow) = &state.flow {
            // Before the flow's first reply the caller may already say what works anywhere, or
            // answer the question the first message asked.
            self.prime(flow);
        }
        let flow_speaks_first = self.first_message.is_none() && state.flow.is_some();
        if flow_speaks_first {
            // No first message: the flow's start node greets.
            let reply = state.flow.as_mut().map(Flow::begin).expect("checked above");
            self.follow_flow(&mut state, reply, None, &report);
        } else if let Some(first) = self.first_message.clone() {
            let interruptible = turn_spec.interruptible && turn_spec.first_message_interruptible;
            self.start(&mut state, TurnInput::Say(first.clone()), None, interruptible);
            // While the greeting plays, have the LLM process the system prompt and greeting
            // so the first real turn only pays for the caller's words (KV-cache reuse).
            let mut messages = state.history.clone();
            messages.push(Message::Assistant { content: crate::text::strip_marks(&first), tool_calls: Vec::new() });
            spawn_helper(&call, turn::prefill(self.ctx.clone(), messages));
        } else {
            spawn_helper(&call, turn::prefill(self.ctx.clone(), state.history.clone()));
        }
        // One line frame: a barge-in is noticed within 20 ms.
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut routes = self.routes.take();
        let mut prompts = self.prompts.take();
        loop {
            tokio::select! {
                _ = call.cancelled() => break,
                Some((line, route)) = next_route(&mut routes) => self.on_route(&mut state, line, route, &report),
                Some(prompt) = next_prompt(&mut prompts) => {
                    // The next LLM turn reads the caller's latest intent and sentiment.
                    if let Some(Message::System { content }) = state.history.first_mut() {
                        *content = prompt;
                    }
                }
                frame = inbox.recv() => {
                    let Some(frame) = frame else { break };
                    self.on_frame(&mut state, frame, &report);
                }
                Some(result) = flow_rx.recv() => {
                    let reply = state.flow.as_mut().map(|flow| match result {
                        FlowResult::Tool(succeeded, result) => flow.on_tool_result(succeeded, result),
                        FlowResult::Extracted(id, value) => {
                            let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
                            *report.guards.entry(if value.is_some() { "slot_read_by_llm" } else { "slot_not_read_by_llm" }.to_string()).or_default() += 1;
                            flow.on_extracted(id, value)
                        }
                    });
                    if let Some(reply) = reply {
                        if state.active.is_some() || !self.ctx.out.is_idle() {
                            // The line covering the wait is still playing: follow it.
                            state.queued = Some(reply);
                        } else {
                            self.follow_flow(&mut state, reply, None, &report);
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.on_tick(&mut state, &report) {
                        break;
                    }
                }
            }
        }
        // The call is over: settle the last turn.
        if let Some(mut active) = state.active.take() {
            active.cancel.cancel();
            let _ = (&mut active.handle).await;
            self.finish_turn(&mut state, active, &report, true);
        }
        if let Some(user) = state.deferred.take() {
            // Said over a `<no-interrupt>` segment and never answered: the history still holds it.
            state.history.push(Message::User { content: user.text });
        }
        let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
        report.history = state.history;
    }

    /// Primes the recognizer with the call's vocabulary and what the flow expects next, and
    /// tells the listener which words answer it (an early end of turn, a second hearing).
    fn prime(&self, flow: &Flow) {
        self.recognizer_prompt.set_parts(&self.vocabulary, &flow.expects());
        self.answers.follow(flow);
    }

    fn emit(&self, event: CallEvent) {
        let _ = self.events.send(event);
    }

    fn start(&self, state: &mut State, input: TurnInput, user: Option<UserTurn>, interruptible: bool) {
        let progress = Arc::new(Mutex::new(TurnProgress::default()));
        let cancel = CancellationToken::new();
        let messages = bounded(&state.history);
        let handle = turn::spawn_stage("turn", &progress, turn::run(self.ctx.clone(), messages, input, progress.clone(), cancel.clone()));
        state.active = Some(ActiveTurn { cancel, handle, progress, interruptible, user, started_at: self.ctx.out.now() });
        state.reprompted = false;
    }

    /// Whether the agent is saying the line that ends the call (the time limit, a goodbye, a
    /// transfer's announcement, an LLM reply that called `end_call` or `transfer_call`). Words
    /// or keys that come in over it are kept in the history but do not replace it: answered,
    /// the line was dropped and the call ended without it. Words that cut it (a barge-in over
    /// an interruptible goodbye) are another matter: see [`Agent::on_cut_closing`].
    fn closing(&self, state: &State) -> bool {
        let Some(active) = &state.active else { return false };
        state.hang_up_when_done.is_some() || active.progress.lock().unwrap_or_else(|e| e.into_inner()).actions.iter().any(|a| matches!(a, Action::EndCall { .. } | Action::Transfer { .. }))
    }

    fn agent_speaking(&self, state: &State) -> bool {
        state.active.is_some() || !self.ctx.out.is_idle()
    }

    fn on_frame(&self, state: &mut State, frame: Frame, report: &Arc<Mutex<CallReport>>) {
        let now = self.ctx.out.now();
        match frame {
            Frame::SpeechSuspected { onset } => {
                // Maybe the caller breaking in: hold the agent's audio while the VAD makes sure.
                if !state.caller_speaking && self.may_interrupt(state) {
                    self.pause(state, onset);
                }
            }
            Frame::SpeechDismissed => {
                if !state.caller_speaking && state.paused.take().is_some() {
                    self.ctx.out.resume();
                    tracing::debug!("not speech after all: playing on");
                }
            }
            Frame::SpeechStarted { onset } => {
                state.caller_speaking = true;
                state.awaiting_words = true;
                state.caller_onset = Some(onset);
                state.last_activity = now;
                self.check_barge_in(state, report);
            }
            Frame::SpeechStopped { at } => {
                // Shorter than min_interrupt_ms over the agent: a cough, not a barge-in.
                state.caller_speaking = false;
                state.caller_onset = None;
                state.last_activity = at;
                if state.paused.take().is_some() {
                    self.ctx.out.resume();
                    self.emit(CallEvent::Note("a short sound over the agent; playing on".into()));
                }
            }
            Frame::TranscriptPartial(text) => {
                report.lock().unwrap_or_else(|e| e.into_inner()).partials.push((text.clone(), now));
                self.emit(CallEvent::Partial { text });
            }
            Frame::TranscriptFinal(user) => self.on_user_turn(state, user, report),
            Frame::Dtmf(digit) => {
                self.forget_answered(state);
                state.history.push(Message::User { content: format!("(the caller pressed {digit} on the keypad)") });
                self.emit(CallEvent::Caller { text: format!("[DTMF {digit}]"), at: now, confidence: None, replaces_last: false });
                state.caller_lines += 1;
                if self.closing(state) || state.cut_closing() {
                    // Over a goodbye, or after words that cut it and are not yet heard: those
                    // words decide whether the call goes on; the key alone answers nothing.
                    self.hold_over_closing(state, "pressed a key");
                    return;
                }
                self.replace_turn(state, report);
                match state.flow.as_mut().map(|flow| flow.on_digit(digit)) {
                    Some(reply) => self.follow_flow(state, reply, None, report),
                    None => self.start(state, TurnInput::Respond, None, true),
                }
            }
            Frame::Error { stage, message } => {
                report.lock().unwrap_or_else(|e| e.into_inner()).errors.push(format!("{stage}: {message}"));
                self.emit(CallEvent::Error(format!("{stage}: {message}")));
            }
            Frame::End { reason } => self.emit(CallEvent::Note(format!("the line closed: {reason}"))),
            // The turn's own frames never reach the agent.
            Frame::LlmText(_) | Frame::LlmTextEnd | Frame::Sentence(_) | Frame::TtsAudio { .. } => {}
        }
    }

    fn on_user_turn(&self, state: &mut State, user: UserTurn, report: &Arc<Mutex<CallReport>>) {
        let now = self.ctx.out.now();
        state.last_activity = now;
        state.caller_speaking = false;
        state.caller_onset = None;
        state.awaiting_words = false;
        let mut continued = 0;
        let answered = state.answered.take().filter(|answered| !self.answer_acted(state, answered));
        match (user.continues, answered) {
            (true, Some(answered)) if crate::text::says_only(&user.text, &answered.text) => {
                // The caller's sound after their turn held no words of its own (a cough, a
                // breath; heard with the turn, the decoder may write its words twice): the
                // answer stands, or the rest of it is said.
                state.answered = Some(answered);
                self.continuation.open();
                if !self.resume_interrupted(state, report, "no new words after the caller's turn", None) {
                    self.emit(CallEvent::Note("no new words after the caller's turn; the answer goes on".into()));
                }
                return;
            }
            (true, Some(answered)) => {
                continued = answered.continued + 1;
                self.take_back(state, answered, report);
            }
            (true, None) => self.emit(CallEvent::Note("the caller went on after their turn, but its answer was already heard: the words are answered as they are".into())),
            (false, _) => self.continuation.close(),
        }
        if user.text.trim().is_empty() {
            // Speech without words: a false interruption, or noise. Over the last words of a
            // goodbye it asks nothing again: the call ends.
            let cut_closing = state.cut_closing();
            if !self.resume_interrupted(state, report, "false interruption", None) && !self.agent_speaking(state) && !cut_closing {
                // A turn with speech never vanishes: ask again rather than stay silent.
                self.emit(CallEvent::Note("speech with no words".into()));
                self.start(state, TurnInput::Say(PARDON.into()), None, true);
            }
            return;
        }
        // The transcript shows the words when they were said, even if the answer must wait. A
        // turn taken back is the caller's last line heard again whole: it takes that line's place.
        let replaces_last = continued > 0 && state.caller_lines > 0;
        self.emit(CallEvent::Caller { text: user.text.clone(), at: user.speech_end, confidence: user.confidence, replaces_last });
        if replaces_last {
            self.analysis.analyze(state.caller_lines - 1, &user.text);
            let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(line) = report.transcript.iter_mut().rev().find(|(who, _, _)| *who == Speaker::Caller) {
                line.1 = user.text.clone();
            }
        } else {
            self.analysis.analyze(state.caller_lines, &user.text);
            state.caller_lines += 1;
            report.lock().unwrap_or_else(|e| e.into_inner()).transcript.push((Speaker::Caller, user.text.clone(), user.speech_end));
        }
        if self.closing(state) {
            state.history.push(Message::User { content: user.text });
            self.hold_over_closing(state, "spoke");
            return;
        }
        if state.cut_closing() {
            self.on_cut_closing(state, user, report);
            return;
        }
        if crate::flow::parse::only_courtesy(&user.text) {
            // "Please." after "At seven o'clock," (the turn ended at the comma): the answer to
            // the words before it is on its way, or was just cut by the courtesy; answering the
            // courtesy instead made a flow count a failed try. The answer goes on.
            if state.active.is_some() {
                state.history.push(Message::User { content: user.text });
                self.emit(CallEvent::Note("a courtesy after the caller's words; the answer goes on".into()));
                return;
            }
            if self.resume_interrupted(state, report, "a courtesy over the agent", Some(&user.text)) {
                return;
            }
        }
        if self.protected_playing(state) {
            // The caller spoke through a `<no-interrupt>` segment: answer once it has played.
            state.deferred = Some(user);
            return;
        }
        let before = (continued <= MAX_CONTINUED).then(|| Answered {
            history_len: state.history.len(),
            flow: state.flow.clone(),
            flow_nodes: report.lock().unwrap_or_else(|e| e.into_inner()).flow_nodes.len(),
            text: user.text.clone(),
            continued,
        });
        state.answered = before;
        self.respond(state, user, report);
        if state.answered.is_some() && state.active.is_some() {
            self.continuation.open();
        } else {
            // Nothing was started that could be taken back (or the flow did what cannot be).
            self.forget_answered(state);
        }
    }

    /// A caller turn continues the one answered last: the answer is stopped (the caller heard
    /// little or none of it) and the call goes back to where it stood before that turn, so the
    /// flow reads the whole sentence once, not its first half as an answer.
    fn take_back(&self, state: &mut State, answered: Answered, report: &Arc<Mutex<CallReport>>) {
        self.replace_turn(state, report);
        state.interrupted = None;
        state.queued = None;
        state.history.truncate(answered.history_len);
        state.flow = answered.flow;
        report.lock().unwrap_or_else(|e| e.into_inner()).flow_nodes.truncate(answered.flow_nodes);
        self.emit(CallEvent::Note(format!("the caller went on after \"{}\": heard again as one turn, answered as one", answered.text)));
    }

    /// Whether the answer to the turn `answered` did what cannot be taken back: an LLM's tool
    /// call (run, or cut and recorded), or an end or transfer of the call it decided on.
    fn answer_acted(&self, state: &State, answered: &Answered) -> bool {
        let since = state.history.get(answered.history_len..).unwrap_or_default();
        let called = since.iter().any(|m| matches!(m, Message::Tool { .. }) || matches!(m, Message::Assistant { tool_calls, .. } if !tool_calls.is_empty()));
        let acting = state.active.as_ref().is_some_and(|active| {
            let progress = active.progress.lock().unwrap_or_else(|e| e.into_inner());
            !progress.actions.is_empty() || !progress.tool_messages.is_empty()
        });
        called || acting || state.hang_up_when_done.is_some() || state.transfer_to.is_some()
    }

    /// The answer to the caller's last turn can no longer be taken back.
    fn forget_answered(&self, state: &mut State) {
        state.answered = None;
        self.continuation.close();
    }

    /// Lets go of the caller's last turn once its answer has been heard (about two words of it,
    /// or all of it), or has done what cannot be undone (a tool call, the end of the call).
    /// Not while the caller speaks, or their words are still on their way: those words may
    /// continue the turn, and the listener has already heard them so.
    fn settle_answered(&self, state: &mut State) {
        let Some(answered) = &state.answered else { return };
        if state.caller_speaking || state.awaiting_words || state.paused.is_some() {
            return;
        }
        let now = self.ctx.out.now();
        let heard = state.active.as_ref().is_none_or(|active| {
            let progress = active.progress.lock().unwrap_or_else(|e| e.into_inner());
            let audible_from = progress.segments.first().and_then(|s| self.ctx.out.started_at(s.id));
            audible_from.is_some_and(|at| now.saturating_sub(at) >= CONTINUE_HEARD)
        });
        if heard || self.answer_acted(state, answered) || self.protected_playing(state) {
            self.forget_answered(state);
        }
    }

    /// Words that cut the line ending the call. A farewell ("Thanks, bye!") hears the rest of
    /// it, and the call ends. A flow that ended stays ended: a question its knowledge answers
    /// is answered and the closing line said again; other words hear the rest of it. The LLM's
    /// goodbye or transfer is withdrawn: the caller had more to say, the LLM answers and
    /// decides again (answering, then hanging up, cut off whatever the answer asked).
    fn on_cut_closing(&self, state: &mut State, user: UserTurn, report: &Arc<Mutex<CallReport>>) {
        if self.past_time_limit() {
            // Nothing said over a goodbye keeps a call past its maximum duration.
            state.interrupted = None;
            self.resume_closing(state, report, "words over the closing line after the call's time limit", user.text);
            return;
        }
        let farewell = crate::flow::parse::only_farewell(&user.text) || crate::flow::parse::only_courtesy(&user.text);
        if farewell {
            self.resume_closing(state, report, "a farewell over the goodbye", user.text);
            return;
        }
        if let Some(flow) = state.flow.as_mut() {
            match flow.after_end(&user.text) {
                Some(reply) => {
                    state.interrupted = None;
                    state.history.push(Message::User { content: user.text.clone() });
                    self.emit(CallEvent::Note("a question over the flow's closing line: answered, then the line again".into()));
                    self.follow_flow(state, reply, Some(user), report);
                }
                None => self.resume_closing(state, report, "words over the flow's closing line, which ended it", user.text),
            }
            return;
        }
        state.hang_up_when_done = None;
        withdraw_closing_tools(&mut state.history);
        if let Some(destination) = state.transfer_to.take() {
            let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = report.transfers.iter().rposition(|t| *t == destination) {
                report.transfers.remove(at);
            }
        }
        self.emit(CallEvent::Note("the caller cut the closing line with words; the call goes on".into()));
        self.respond(state, user, report);
    }

    /// The rest of a cut closing line, after words that do not keep the call open (kept in the
    /// history); with no rest left, the call simply ends.
    fn resume_closing(&self, state: &mut State, report: &Arc<Mutex<CallReport>>, why: &str, heard: String) {
        if !self.resume_interrupted(state, report, why, Some(&heard)) {
            state.history.push(Message::User { content: heard });
            self.emit(CallEvent::Note(format!("{why}; the call ends as decided")));
        }
    }

    /// The caller line just added ended over the line that ends the call: it stays in the
    /// history and the transcript, but nothing answers it and no route matched on it is taken.
    fn hold_over_closing(&self, state: &mut State, what: &str) {
        state.over_closing.push(state.caller_lines - 1);
        self.emit(CallEvent::Note(format!("the caller {what} over the closing line; the call ends as decided")));
    }

    /// Says the unheard rest of the reply the caller cut, when the caller's turn turned out
    /// to be no answer to it (no words, or a courtesy alone, kept in the history as `heard`).
    /// False, and nothing done, when no rest is left to say.
    fn resume_interrupted(&self, state: &mut State, report: &Arc<Mutex<CallReport>>, why: &str, heard: Option<&str>) -> bool {
        let Some(rest) = state.interrupted.take().map(|i| i.text()).filter(|t| !t.is_empty()) else { return false };
        if let Some(heard) = heard {
            state.history.push(Message::User { content: heard.to_string() });
        }
        self.emit(CallEvent::Note(format!("{why}; resuming: {rest}")));
        self.replace_turn(state, report);
        self.start(state, TurnInput::Say(rest), None, true);
        true
    }

    /// Answers a caller turn already in the transcript.
    fn respond(&self, state: &mut State, user: UserTurn, report: &Arc<Mutex<CallReport>>) {
        state.interrupted = None;
        if state.active.is_some() {
            // The caller finished a turn over the agent (too briefly to count as a barge-in
            // while speaking): stop the agent and answer the new words.
            self.replace_turn(state, report);
        }
        state.history.push(Message::User { content: user.text.clone() });
        let confirm_below = self.ctx.assistant.spec.stt.confirm_below;
        let unsure: Option<&[String]> = match user.confidence {
            Some(confidence) if confidence < confirm_below => Some(&[]),
            _ if !user.unsure.is_empty() && confirm_below > 0.0 => Some(&user.unsure),
            _ => None,
        };
        if let Some(words) = unsure {
            self.emit(CallEvent::Note(format!("heard unsure ({}): {}", user.confidence.map_or("?".into(), |c| format!("{c:.2}")), if words.is_empty() { "the whole turn".to_string() } else { words.join(", ") })));
        }
        match state.flow.as_mut().map(|flow| match unsure {
            Some(words) => flow.on_caller_unsure(&user.text, words),
            None => flow.on_caller(&user.text),
        }) {
            Some(reply) => self.follow_flow(state, reply, Some(user), report),
            None => self.start(state, TurnInput::Respond, Some(user), true),
        }
    }

    /// Says a flow's reply and carries out its actions (the call ends or transfers once the
    /// line has been said).
    fn follow_flow(&self, state: &mut State, reply: FlowReply, user: Option<UserTurn>, report: &Arc<Mutex<CallReport>>) {
        {
            let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
            report.slots = reply.slots.clone();
            report.flow_nodes.push(reply.node.clone());
            for action in &reply.actions {
                // An LLM turn presses its keys as it goes; a flow's are pressed here.
                if let Action::Dtmf { digits } = action {
                    self.ctx.out.send_dtmf(digits);
                }
            }
            record_actions(state, &mut report, &reply.actions);
        }
        if reply.tool.is_some() || reply.extract.is_some() || !reply.actions.is_empty() {
            // A tool called, the LLM asked, the call ending: this answer is not taken back.
            self.forget_answered(state);
        }
        self.emit(CallEvent::Flow { node: reply.node.clone(), slots: reply.slots.clone() });
        if let Some(flow) = &state.flow {
            self.prime(flow);
        }
        if let Some(request) = reply.tool.clone() {
            report.lock().unwrap_or_else(|e| e.into_inner()).tool_calls.push((request.tool.clone(), serde_json::Value::Object(request.arguments.clone())));
            self.call_tool(state, request);
        }
        if let Some(request) = reply.extract.clone() {
            self.read_with_llm(state, request);
        }
        if reply.template.trim().is_empty() {
            return;
        }
        self.start(state, TurnInput::Render { template: reply.template, context: reply.context }, user, true);
    }

    /// Asks the LLM, under the request's schema, what the caller's words hold; the answer
    /// comes back to the run loop.
    fn read_with_llm(&self, state: &State, request: crate::flow::ExtractRequest) {
        let Some(results) = state.flow_results.clone() else { return };
        let llm = self.ctx.llm.clone();
        let events = self.events.clone();
        spawn_helper(&state.call, async move {
            let chat = ChatRequest { messages: request.messages(), tools: Vec::new(), max_tokens: 48, temperature: 0.0, schema: Some(request.schema.clone()) };
            let value = match tokio::time::timeout(EXTRACTION_TIMEOUT, crate::llm::complete_text(llm.as_ref(), chat)).await {
                Ok(Ok(reply)) => crate::flow::ExtractRequest::read(&reply),
                Ok(Err(e)) => {
                    let _ = events.send(CallEvent::Note(format!("the LLM could not read the caller's answer: {e}")));
                    None
                }
                Err(_) => None,
            };
            let _ = results.send(FlowResult::Extracted(request.id, value));
        });
    }

    /// Calls a flow's HTTP tool in the background; its result comes back to the run loop. The
    /// request outlives a hang-up (within the tool's own timeout): the business's side of it,
    /// a booking made, should not depend on when the caller put the phone down.
    fn call_tool(&self, state: &State, request: crate::flow::ToolRequest) {
        let Some(results) = state.flow_results.clone() else { return };
        let Some(tool) = super::tools::http_tool(&self.ctx.assistant, &request.tool).cloned() else {
            let _ = results.send(FlowResult::Tool(false, serde_json::json!({ "error": format!("no tool `{}`", request.tool) })));
            return;
        };
        let client = self.ctx.http.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = super::tools::run_http(&client, &tool, &serde_json::Value::Object(request.arguments)).await;
            if result.failed {
                let _ = events.send(CallEvent::Note(format!("tool {} failed: {}", tool.name, result.content)));
            }
            let value = serde_json::from_str(&result.content).unwrap_or(serde_json::Value::String(result.content));
            let _ = results.send(FlowResult::Tool(!result.failed, value));
        });
    }

    /// Cancels whatever the agent is doing without treating it as a barge-in.
    fn replace_turn(&self, state: &mut State, report: &Arc<Mutex<CallReport>>) {
        state.paused = None;
        if let Some(active) = state.active.take() {
            active.cancel.cancel();
            self.ctx.out.clear();
            self.finish_turn(state, active, report, true);
        }
    }

    /// The caller talking over the agent: pause the agent's audio at once; once both have
    /// overlapped for `min_interrupt_ms` the caller wins — whether they broke in, or were
    /// already talking when the agent began.
    fn check_barge_in(&self, state: &mut State, report: &Arc<Mutex<CallReport>>) {
        let (Some(onset), true) = (state.caller_onset, state.caller_speaking) else { return };
        if !self.may_interrupt(state) {
            return;
        }
        let spec = self.ctx.assistant.spec.turn;
        let now = self.ctx.out.now();
        self.pause(state, onset);
        let overlap_start = match state.paused {
            Some((overlap, _)) => overlap,
            None => state.active.as_ref().map(|a| a.started_at.max(onset)).unwrap_or(onset),
        };
        if now >= overlap_start + Duration::from_millis(spec.min_interrupt_ms as u64) {
            self.interrupt(state, onset, overlap_start, report);
        }
    }

    /// Whether caller speech now could cut the agent: it is speaking, and not through a
    /// `<no-interrupt>` segment.
    fn may_interrupt(&self, state: &State) -> bool {
        let interruptible = state.active.as_ref().map(|a| a.interruptible).unwrap_or(self.ctx.assistant.spec.turn.interruptible);
        interruptible && self.agent_speaking(state) && !self.protected_playing(state)
    }

    /// Pauses the agent's audio, if playing, for caller speech that began at `onset`.
    fn pause(&self, state: &mut State, onset: Duration) {
        if state.paused.is_some() || self.ctx.out.is_idle() {
            return;
        }
        // Overlap starts when both are audible: the later of the caller's onset and the
        // first sound of the agent's turn.
        let audible_from = state
            .active
            .as_ref()
            .and_then(|a| a.progress.lock().unwrap_or_else(|e| e.into_inner()).segments.first().map(|s| s.id))
            .and_then(|id| self.ctx.out.started_at(id))
            .unwrap_or_else(|| self.ctx.out.now());
        let stopped = self.ctx.out.pause();
        state.paused = Some((onset.max(audible_from), stopped));
        tracing::debug!(?onset, ?stopped, "caller talking over the agent: paused");
    }

    /// True while a segment marked `<no-interrupt>` is on the air, or between two chunks of
    /// one marked span (a long disclosure is synthesized in several chunks, and the next may
    /// still be in synthesis when the last has played).
    fn protected_playing(&self, state: &State) -> bool {
        let Some(active) = &state.active else { return false };
        let progress = active.progress.lock().unwrap_or_else(|e| e.into_inner());
        let segments = &progress.segments;
        let started = |s: &turn::SpokenSegment| self.ctx.out.started_at(s.id).is_some();
        if segments.iter().any(|s| !s.interruptible && started(s) && self.ctx.out.heard(s.id) < 0.999) {
            return true;
        }
        let Some(last) = segments.iter().rposition(started) else { return false };
        if segments[last].interruptible {
            return false;
        }
        match segments.get(last + 1) {
            Some(next) => !next.interruptible,
            None => !active.handle.is_finished(),
        }
    }

    /// Stops the agent for caller speech that began at `caller_onset` (the VAD's) and has
    /// overlapped the agent's audio since `overlap_from`.
    fn interrupt(&self, state: &mut State, caller_onset: Duration, overlap_from: Duration, report: &Arc<Mutex<CallReport>>) {
        // The agent was heard if its audio was paused (or still playing): that is a barge-in.
        // A turn still thinking (nothing audible yet) is withdrawn quietly: the caller is
        // still talking, and their finished turn will start a new one.
        let closing = self.closing(state);
        let paused = state.paused.take();
        let audible = paused.is_some() || !self.ctx.out.is_idle();
        let cleared = self.ctx.out.clear();
        if audible {
            self.record_barge_in(BargeIn { caller_onset, overlap_from, stopped: paused.map(|(_, at)| at).unwrap_or(cleared) }, report);
        }
        if let Some(active) = state.active.take() {
            active.cancel.cancel();
            self.finish_turn(state, active, report, true);
            if let Some(interrupted) = state.interrupted.as_mut() {
                interrupted.closing = closing;
            }
        }
    }

    fn record_barge_in(&self, barge_in: BargeIn, report: &Arc<Mutex<CallReport>>) {
        report.lock().unwrap_or_else(|e| e.into_inner()).barge_ins.push(barge_in);
        self.emit(CallEvent::BargeIn { onset: barge_in.overlap_from, stopped: barge_in.stopped });
    }

    /// Records a finished (or cancelled) turn: heard text into history, metrics, actions.
    fn finish_turn(&self, state: &mut State, active: ActiveTurn, report: &Arc<Mutex<CallReport>>, cancelled: bool) {
        let progress = std::mem::take(&mut *active.progress.lock().unwrap_or_else(|e| e.into_inner()));
        let (heard, unheard) = self.heard_text(&progress);
        let cut = cancelled && !unheard.is_empty();
        if cancelled {
            state.interrupted = Some(Interrupted { rest: unheard, progress: active.progress.clone(), closing: false });
        }
        state.history.extend(progress.tool_messages.iter().cloned());
        let called: Vec<(String, serde_json::Value)> = progress
            .tool_messages
            .iter()
            .filter_map(|m| match m {
                Message::Assistant { tool_calls, .. } => Some(tool_calls),
                _ => None,
            })
            .flatten()
            .map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap_or(serde_json::Value::Null)))
            .collect();
        // The history holds the words as heard, with no mark of the cut: a small model copies
        // whatever ends its last reply ("I'm sorry—" again and again); the transcript shows it.
        let shown = if cut && !heard.is_empty() { format!("{heard}—") } else { heard.clone() };
        if !heard.is_empty() {
            state.history.push(Message::Assistant { content: heard.clone(), tool_calls: Vec::new() });
            self.emit(CallEvent::Agent { text: shown.clone(), at: active.started_at, interrupted: cut });
        }
        let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
        if !heard.is_empty() {
            report.transcript.push((Speaker::Agent, shown, active.started_at));
        }
        report.errors.extend(progress.errors.iter().cloned());
        report.tool_calls.extend(called);
        for guard in &progress.guards {
            *report.guards.entry(guard.to_string()).or_default() += 1;
        }
        if !progress.guards.is_empty() {
            self.emit(CallEvent::Note(format!("guards fired: {}", progress.guards.join(", "))));
        }
        if progress.llm_failed {
            state.llm_failures += 1;
        } else if active.user.is_some() {
            state.llm_failures = 0;
        }
        record_actions(state, &mut report, &progress.actions);
        if let Some(user) = active.user {
            state.turn_count += 1;
            let first_audio_out = progress.segments.first().and_then(|s| self.ctx.out.started_at(s.id));
            let since_end = |t: Option<Duration>| t.map(|t| t.saturating_sub(user.speech_end)).unwrap_or_default();
            let timings = TurnTimings {
                turn: state.turn_count,
                speech_end_at: user.speech_end,
                user_text: user.text.clone(),
                agent_text: progress.segments.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join(" "),
                end_of_turn: user.decided_at.saturating_sub(user.speech_end),
                held: user.held,
                stt_final: user.transcribed_at.saturating_sub(user.speech_end),
                llm_first_token: since_end(progress.first_token_at),
                tts_first_audio: since_end(progress.first_audio_at),
                voice_to_voice: since_end(first_audio_out),
                prompt_tokens: progress.prompt_tokens,
                cached_tokens: progress.cached_tokens,
            };
            if first_audio_out.is_some() {
                report.turns.push(timings.clone());
                drop(report);
                self.emit(CallEvent::Turn(timings));
            }
        }
    }

    /// The words the caller heard, and the rest that was not heard (the unplayed part of the
    /// segments, then what the turn's stages held when it ended).
    fn heard_text(&self, progress: &TurnProgress) -> (String, String) {
        let mut heard = Vec::new();
        let mut rest = Vec::new();
        for segment in &progress.segments {
            let fraction = self.ctx.out.heard(segment.id);
            if fraction >= 0.999 {
                heard.push(segment.text.clone());
            } else {
                let words: Vec<&str> = segment.text.split_whitespace().collect();
                let cut = (fraction * words.len() as f32).floor() as usize;
                if cut > 0 {
                    heard.push(words[..cut].join(" "));
                }
                rest.push(words[cut..].join(" "));
            }
        }
        rest.push(progress.unspoken());
        rest.retain(|t| !t.is_empty());
        (heard.join(" "), rest.join(" "))
    }

    /// A route the analysis matched: its line replaces whatever the agent was about to say,
    /// then the call is transferred or ended once it has played.
    fn on_route(&self, state: &mut State, line: usize, route: crate::assistant::RouteSpec, report: &Arc<Mutex<CallReport>>) {
        let trigger = route.intent.as_deref().map_or("escalation".to_string(), |i| format!("intent {i}"));
        if state.over_closing.contains(&line) {
            // Words said over the goodbye are no answer to it (see `on_user_turn`): the call
            // ends, with the outcome it had, as decided.
            self.emit(CallEvent::Note(format!("route on {trigger} from words over the closing line; the call ends as decided")));
            return;
        }
        self.emit(CallEvent::Note(format!("route on {trigger}")));
        let mut actions = Vec::new();
        if let Some(name) = &route.disposition {
            actions.push(Action::Disposition { name: name.clone(), notes: format!("route on {trigger}") });
        }
        if let Some(destination) = &route.transfer {
            // `{{ name }}` is the call's variable of that name (a lookup, like a flow's).
            let destination = match destination.trim().strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map(str::trim) {
                Some(name) => match self.variables.get(name) {
                    Some(serde_json::Value::String(value)) => value.clone(),
                    Some(value) => value.to_string(),
                    None => destination.clone(),
                },
                None => destination.clone(),
            };
            actions.push(Action::Transfer { destination });
        } else if route.end_call {
            actions.push(Action::EndCall { reason: format!("route on {trigger}") });
        }
        let takes_over = route.say.is_some() || route.transfer.is_some() || route.end_call;
        if takes_over {
            // The flow's or the LLM's answer to the same words is not said.
            state.queued = None;
            self.forget_answered(state);
            self.replace_turn(state, report);
            if let Some(line) = &route.say {
                self.start(state, TurnInput::Say(line.clone()), None, false);
            }
        }
        record_actions(state, &mut report.lock().unwrap_or_else(|e| e.into_inner()), &actions);
    }

    /// Whether the call has reached its maximum duration.
    fn past_time_limit(&self) -> bool {
        self.ctx.out.now() >= Duration::from_secs_f32(self.ctx.assistant.spec.turn.max_duration_s)
    }

    /// Periodic checks; returns true when the call should end.
    fn on_tick(&self, state: &mut State, report: &Arc<Mutex<CallReport>>) -> bool {
        let now = self.ctx.out.now();
        let spec = self.ctx.assistant.spec.turn;
        self.check_barge_in(state, report);
        self.settle_answered(state);
        if state.deferred.is_some() && !self.protected_playing(state) {
            let user = state.deferred.take().expect("checked above");
            self.respond(state, user, report);
        }
        // A turn is done when its task finished and its audio has played out.
        if let Some(active) = &state.active {
            if active.handle.is_finished() && self.ctx.out.is_idle() {
                let active = state.active.take().expect("checked above");
                self.finish_turn(state, active, report, false);
                state.last_activity = now;
                if let Some(reply) = state.queued.take() {
                    self.follow_flow(state, reply, None, report);
                    return false;
                }
                if state.llm_failures >= MAX_LLM_FAILURES && state.hang_up_when_done.is_none() {
                    state.hang_up_when_done = Some("the LLM kept failing".into());
                    self.start(state, TurnInput::Say(GIVE_UP.into()), None, false);
                }
            }
        }
        if state.active.is_some() || !self.ctx.out.is_idle() {
            return false;
        }
        let hearing_out = state.caller_speaking || now.saturating_sub(state.last_activity) < WORDS_OVER_CLOSING_WAIT;
        if state.cut_closing() && hearing_out && !self.past_time_limit() {
            // The caller cut the closing line: their words decide what follows (see
            // `on_cut_closing`); hanging up now would cut them off mid-sentence.
            return false;
        }
        if let Some(reason) = state.hang_up_when_done.take() {
            report.lock().unwrap_or_else(|e| e.into_inner()).ended_by = Some(format!("agent: {reason}"));
            // A transfer reaches the line after the words that announce it have played.
            if let Some(destination) = state.transfer_to.take() {
                self.ctx.out.transfer(&destination);
            }
            self.ctx.out.hang_up();
            return true;
        }
        if self.past_time_limit() {
            state.hang_up_when_done = Some("maximum duration".into());
            self.start(state, TurnInput::Say(TIME_LIMIT.into()), None, false);
            return false;
        }
        if self.ctx.out.held() {
            // On hold nobody is expected to speak: the wait is not the caller's silence.
            state.last_activity = now;
            return false;
        }
        if state.caller_speaking {
            return false;
        }
        let idle = now.saturating_sub(state.last_activity);
        if idle >= Duration::from_secs_f32(spec.idle_hangup_s) {
            state.hang_up_when_done = Some("idle".into());
            self.start(state, TurnInput::Say(IDLE_GOODBYE.into()), None, false);
        } else if idle >= Duration::from_secs_f32(spec.idle_reprompt_s) && !state.reprompted {
            self.start(state, TurnInput::Say(REPROMPT.into()), None, true);
            state.reprompted = true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    fn call(id: &str, name: &str) -> ToolCall {
        ToolCall { id: id.into(), name: name.into(), arguments: "{}".into() }
    }

    #[tokio::test]
    async fn a_helper_is_dropped_when_the_call_ends() {
        let call = CancellationToken::new();
        let (held, dropped) = tokio::sync::oneshot::channel::<()>();
        spawn_helper(&call, async move {
            let _held = held;
            std::future::pending::<()>().await
        });
        call.cancel();
        assert!(dropped.await.is_err(), "the helper was dropped, and the sender it held with it");
    }

    #[test]
    fn a_withdrawn_goodbye_reads_as_not_done_and_other_results_stand() {
        let tool = |id: &str, content: &str| Message::Tool { tool_call_id: id.into(), content: content.into() };
        let mut history = vec![
            Message::System { content: "prompt".into() },
            Message::Assistant { content: String::new(), tool_calls: vec![call("a", "end_call")] },
            tool("a", "the call will end after your goodbye"),
            Message::User { content: "no wait".into() },
            Message::Assistant { content: String::new(), tool_calls: vec![call("b", "lookup"), call("c", "end_call")] },
            tool("b", "{\"open\": true}"),
            tool("c", "the call will end after your goodbye"),
            Message::Assistant { content: "Goodbye!".into(), tool_calls: vec![] },
        ];
        withdraw_closing_tools(&mut history);
        let content = |i: usize| match &history[i] {
            Message::Tool { content, .. } => content.clone(),
            other => panic!("{other:?}"),
        };
        assert!(content(6).starts_with("not done") && content(6).contains("call end_call again"), "{}", content(6));
        assert_eq!(content(5), "{\"open\": true}");
        // Only the goodbye the caller cut: an earlier one was already withdrawn or answered.
        assert_eq!(content(2), "the call will end after your goodbye");
    }
}
