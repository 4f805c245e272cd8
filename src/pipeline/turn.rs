//! One agent turn: from a caller's words (or a line to say) to audio on the line.
//!
//! A turn is a chain of four stages, each a task with an inbox, an outbox and the turn's
//! cancellation token, each recording what it measures in the turn's [`TurnProgress`]:
//!
//! ```text
//! think ─ LlmText · LlmTextEnd (64) ─► chunk ─ Sentence (32) ─► speak ─ TtsAudio (4) ─► play ─► line
//! ```
//!
//! - **think** asks the LLM (streaming, with tools) and passes its text on as it arrives;
//!   tool calls run between LLM rounds (at most [`MAX_TOOL_ROUNDS`]), and a slow HTTP tool
//!   gets a spoken filler instead of dead air. Records the first token and the token counts.
//! - **chunk** cuts the text into speakable chunks (`text::MarkedChunker`: whole sentences,
//!   an early first clause, `<no-interrupt>` spans flagged).
//! - **speak** synthesizes each chunk in the shared TTS pool (espeak-ng if the voice fails).
//!   Records the first audio and TTS errors.
//! - **play** queues each chunk's audio on the line as its own segment, so the first words
//!   play while the LLM is still writing. Records the segments.
//!
//! Every edge blocks when full: text and synthesized speech are never dropped, and a full
//! edge holds the stage behind it back instead of letting it run ahead. Everything stops on
//! the cancellation token (a barge-in), which each stage checks before its inbox: the LLM
//! stream is dropped (which stops the engine's generation), and each stage keeps what it held
//! as *unspoken*, in pipeline order, so a false interruption can still say it. The agent
//! clears the line's buffer and asks the line which segments were heard.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frames::Frame;
use super::guard;
use super::speech_cache::Lookup;
use super::tools::{self, Action};
use crate::assistant::Assistant;
use crate::llm::{ChatRequest, LanguageModel, LlmEvent, Message, ToolCall, ToolSpec};
use crate::text::{strip_marks, Chunk, MarkedChunker};
use crate::transport::AudioOut;
use crate::tts::TextToSpeech;

/// LLM rounds per turn when tools are called.
pub const MAX_TOOL_ROUNDS: usize = 3;
/// Said when the LLM fails.
pub const LLM_APOLOGY: &str = "I'm sorry, I'm having trouble answering right now. Could you say that again?";
/// Said when a tool failed and the LLM said nothing about it.
pub const TOOL_APOLOGY: &str = "I'm sorry, I couldn't complete that right now.";
/// Said when the LLM only called tools, round after round.
pub const ROUNDS_EXHAUSTED: &str = "Sorry, could you tell me that once more?";
/// Said after end_call when the LLM gave no goodbye of its own.
pub const GOODBYE: &str = "Thank you for calling. Goodbye.";
/// Said when the LLM's reply was refused twice (it refused to help or repeated itself) and
/// the assistant has no `fallback` line of its own.
pub const GUARD_FALLBACK: &str = "Sorry, I can't help with that on this call. Is there anything else I can do for you?";

/// What the turn starts from.
#[derive(Debug, Clone)]
pub enum TurnInput {
    /// Ask the LLM to answer the conversation so far.
    Respond,
    /// Say these words as they are (first message, reprompts, re-saying after a false barge-in).
    Say(String),
    /// Render this template with this context (within the template limits, off the async
    /// threads), then say it: a flow's line.
    Render { template: String, context: Value },
}

/// A chunk queued on the line as one segment.
#[derive(Debug, Clone)]
pub struct SpokenSegment {
    pub id: u64,
    pub text: String,
    pub interruptible: bool,
}

/// The stages that can hold text when a turn is cancelled, in pipeline order (the nearer the
/// line, the earlier the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Play,
    Speak,
    Chunk,
}

/// What a turn did, shared with the agent while it runs.
#[derive(Debug, Default)]
pub struct TurnProgress {
    /// Segments in the order queued on the line.
    pub segments: Vec<SpokenSegment>,
    /// Text produced but never queued on the line, with the stage that held it.
    unspoken: Vec<(Stage, String)>,
    pub first_token_at: Option<Duration>,
    pub first_audio_at: Option<Duration>,
    /// Assistant tool-call messages and tool results, for the history.
    pub tool_messages: Vec<Message>,
    pub actions: Vec<Action>,
    pub errors: Vec<String>,
    pub llm_failed: bool,
    /// Guards that fired on the LLM's replies: `refusal`, `repeat`, `fallback`.
    pub guards: Vec<&'static str>,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
}

impl TurnProgress {
    /// The text that never reached the line, in the order it would have been spoken.
    pub fn unspoken(&self) -> String {
        let mut held = self.unspoken.clone();
        held.sort_by_key(|(stage, _)| *stage);
        let texts: Vec<String> = held.into_iter().map(|(_, text)| text).filter(|t| !t.trim().is_empty()).collect();
        texts.join(" ")
    }

    fn keep(&mut self, stage: Stage, texts: Vec<String>) {
        let texts: Vec<&str> = texts.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).collect();
        let text = texts.join(" ");
        if !text.trim().is_empty() {
            self.unspoken.push((stage, text));
        }
    }
}

pub struct TurnContext {
    pub llm: Arc<dyn LanguageModel>,
    pub tts: Arc<dyn TextToSpeech>,
    /// Used when `tts` fails (espeak-ng).
    pub fallback_tts: Arc<dyn TextToSpeech>,
    pub assistant: Arc<Assistant>,
    pub out: Arc<dyn AudioOut>,
    pub tools: Vec<ToolSpec>,
    pub http: reqwest::Client,
    pub segment_ids: Arc<AtomicU64>,
    /// Where this call's synthesized sentences are kept for reuse; none keeps nothing.
    pub speech_scope: Option<super::speech_cache::SpeechScope>,
}

/// A turn's progress, shared between its stages and the agent.
pub type Progress = Arc<Mutex<TurnProgress>>;

fn lock(progress: &Progress) -> std::sync::MutexGuard<'_, TurnProgress> {
    progress.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns one of a turn's stages. A stage that panics ends (its channels close, so the turn
/// ends as if cut) and says so in the turn's errors, which reach the call's report and log,
/// rather than only on the process's stderr.
pub fn spawn_stage(stage: &'static str, progress: &Progress, work: impl std::future::Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
    let progress = progress.clone();
    tokio::spawn(async move {
        if let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await {
            let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
            tracing::error!(stage, "a turn's stage panicked: {what}");
            lock(&progress).errors.push(format!("the turn's {stage} stage stopped: {what}"));
        }
    })
}

/// Runs one turn to completion or cancellation: the four stages, wired.
pub async fn run(ctx: Arc<TurnContext>, messages: Vec<Message>, input: TurnInput, progress: Progress, cancel: CancellationToken) {
    let sentences = write(ctx.clone(), messages, input, progress.clone(), cancel.clone());
    let (audio_tx, audio_rx) = mpsc::channel(4);
    let speaker = spawn_stage("speak", &progress, speak(ctx.clone(), sentences, audio_tx, progress.clone(), cancel.clone()));
    play(ctx, audio_rx, progress, cancel).await;
    // The stage records its own panic; a finished or panicked speaker is all there is to wait for.
    let _ = speaker.await;
}

/// The text half of a turn (think → chunk), spawned; its chunks come out of the receiver as
/// [`Frame::Sentence`]s. Text chat uses it alone. The receiver closes when both stages end.
pub fn write(ctx: Arc<TurnContext>, messages: Vec<Message>, input: TurnInput, progress: Progress, cancel: CancellationToken) -> mpsc::Receiver<Frame> {
    let (text_tx, text_rx) = mpsc::channel(64);
    let (sentence_tx, sentence_rx) = mpsc::channel(32);
    spawn_stage("chunk", &progress, chunk(text_rx, sentence_tx, progress.clone(), cancel.clone()));
    let stage_progress = progress.clone();
    spawn_stage("write", &stage_progress, async move {
        match input {
            TurnInput::Say(text) => say(&text_tx, &text).await,
            TurnInput::Render { template, context } => {
                let rendered = tokio::task::spawn_blocking(move || crate::assistant::prompt::render(&template, &context)).await;
                match rendered {
                    Ok(Ok(text)) => say(&text_tx, &text).await,
                    Ok(Err(error)) => {
                        lock(&progress).errors.push(format!("a flow line did not render: {error}"));
                        say(&text_tx, LLM_APOLOGY).await;
                    }
                    Err(error) => {
                        lock(&progress).errors.push(format!("rendering a flow line stopped: {error}"));
                        say(&text_tx, LLM_APOLOGY).await;
                    }
                }
            }
            TurnInput::Respond => think(&ctx, messages, &text_tx, &progress, &cancel).await,
        }
    });
    sentence_rx
}

/// Sends the conversation so far with `max_tokens: 1`, so that an engine with a KV cache
/// (the local one) has processed it before the caller's first words arrive.
pub async fn prefill(ctx: Arc<TurnContext>, messages: Vec<Message>) {
    let request = ChatRequest { messages, tools: ctx.tools.clone(), max_tokens: 1, temperature: 0.0, schema: None };
    if let Ok(mut stream) = ctx.llm.stream(request).await {
        while stream.next().await.is_some() {}
    }
}

/// A fixed line: the whole text, then the end of the run.
async fn say(outbox: &mpsc::Sender<Frame>, text: &str) {
    if outbox.send(Frame::LlmText(text.to_string())).await.is_ok() {
        let _ = outbox.send(Frame::LlmTextEnd).await;
    }
}

/// The think stage: asks the LLM (with tools) and passes its text on as it streams.
async fn think(ctx: &Arc<TurnContext>, mut messages: Vec<Message>, outbox: &mpsc::Sender<Frame>, progress: &Progress, cancel: &CancellationToken) {
    let mut tool_failed = false;
    let mut spoke = false;
    let mut temperature = ctx.assistant.spec.llm.temperature;
    // Whether this turn already asked again after a refused reply (once per turn).
    let mut regenerated = false;
    // One more round than tools need: a refused reply takes one.
    for round in 0..MAX_TOOL_ROUNDS + 1 {
        let (text, calls) = match reply_once(ctx, &messages, temperature, outbox, progress, cancel, &mut spoke).await {
            Round::Over => return,
            Round::Refused(kind) if regenerated => {
                // Twice in a row: the assistant's fallback line instead.
                lock(progress).guards.push("fallback");
                tracing::info!(guard = kind, "the LLM's reply was refused twice; saying the fallback line");
                say(outbox, ctx.assistant.spec.fallback.as_deref().unwrap_or(GUARD_FALLBACK)).await;
                return;
            }
            Round::Refused(kind) => {
                tracing::info!(guard = kind, "the LLM's reply was refused; asking again with other sampling");
                regenerated = true;
                temperature = (temperature + 0.6).min(1.2);
                continue;
            }
            Round::Replied { text, calls } => (text, calls),
        };
        if calls.is_empty() {
            break;
        }
        // Run the tools, then let the LLM speak about their results.
        let ran = run_tools(ctx, &text, &calls, &mut messages, outbox, progress, cancel).await;
        tool_failed |= ran.failed;
        if ran.ends_call {
            if !spoke {
                say(outbox, GOODBYE).await;
            }
            return;
        }
        if round + 1 >= MAX_TOOL_ROUNDS {
            tracing::warn!("tool rounds exhausted");
            if !spoke {
                // The model kept calling tools without a word: never leave the caller in silence.
                say(outbox, ROUNDS_EXHAUSTED).await;
                return;
            }
        }
    }
    if tool_failed && !spoke {
        say(outbox, TOOL_APOLOGY).await;
    }
}

/// How one request to the LLM ended.
enum Round {
    /// Its text went on (ended by `LlmTextEnd`); these tools are to run.
    Replied { text: String, calls: Vec<ToolCall> },
    /// Its opening was refused by this guard before any of it was passed on.
    Refused(&'static str),
    /// The turn is over: cancelled, the stage downstream gone, or the LLM failed (apologised for).
    Over,
}

/// One request to the LLM: its text passed on as it streams, once the reply's opening has been
/// judged (see `guard`); `spoke` is set when words went out.
async fn reply_once(ctx: &Arc<TurnContext>, messages: &[Message], temperature: f32, outbox: &mpsc::Sender<Frame>, progress: &Progress, cancel: &CancellationToken, spoke: &mut bool) -> Round {
    let request = ChatRequest { messages: messages.to_vec(), tools: ctx.tools.clone(), max_tokens: ctx.assistant.spec.llm.max_tokens, temperature, schema: None };
    let stream = tokio::select! {
        _ = cancel.cancelled() => return Round::Over,
        stream = ctx.llm.stream(request) => stream,
    };
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "llm request failed");
            record_llm_failure(progress, &e);
            say(outbox, LLM_APOLOGY).await;
            return Round::Over;
        }
    };
    let mut text = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    // The reply's opening is held until it can be judged; then it and the rest stream on as
    // they come. Returning drops the stream, which stops the generation.
    let mut opening: Option<String> = Some(String::new());
    loop {
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Round::Over,
            event = stream.next() => event,
        };
        match event {
            None => break,
            Some(Ok(LlmEvent::Text(piece))) => {
                lock(progress).first_token_at.get_or_insert_with(|| ctx.out.now());
                text.push_str(&piece);
                let Some(held) = opening.as_mut() else {
                    *spoke |= !piece.trim().is_empty();
                    if outbox.send(Frame::LlmText(piece)).await.is_err() {
                        return Round::Over;
                    }
                    continue;
                };
                held.push_str(&piece);
                if !guard::ready(held, messages) {
                    continue;
                }
                if let Some(kind) = guard::judge(held, messages) {
                    lock(progress).guards.push(kind);
                    return Round::Refused(kind);
                }
                let held = opening.take().unwrap_or_default();
                *spoke |= !held.trim().is_empty();
                if outbox.send(Frame::LlmText(held)).await.is_err() {
                    return Round::Over;
                }
            }
            Some(Ok(LlmEvent::ToolCall(call))) => calls.push(call),
            Some(Ok(LlmEvent::Done(usage))) => {
                let mut p = lock(progress);
                p.prompt_tokens = usage.prompt_tokens;
                p.cached_tokens = usage.cached_tokens;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "llm stream failed");
                record_llm_failure(progress, &e);
                let _ = outbox.send(Frame::LlmTextEnd).await;
                if !*spoke {
                    say(outbox, LLM_APOLOGY).await;
                }
                return Round::Over;
            }
        }
    }
    // A short reply that ended before its opening could be judged: judge it whole.
    if let Some(held) = opening.take() {
        if let Some(kind) = guard::judge(&held, messages).filter(|_| calls.is_empty()) {
            lock(progress).guards.push(kind);
            return Round::Refused(kind);
        }
        *spoke |= !held.trim().is_empty();
        if !held.is_empty() && outbox.send(Frame::LlmText(held)).await.is_err() {
            return Round::Over;
        }
    }
    if outbox.send(Frame::LlmTextEnd).await.is_err() {
        return Round::Over;
    }
    Round::Replied { text, calls }
}

/// What running a reply's tool calls came to.
struct ToolsRan {
    failed: bool,
    ends_call: bool,
}

/// Runs the reply's tool calls in order, adding the call and each result to `messages` (and
/// to the turn's record), and carries out the actions they return.
async fn run_tools(ctx: &Arc<TurnContext>, text: &str, calls: &[ToolCall], messages: &mut Vec<Message>, outbox: &mpsc::Sender<Frame>, progress: &Progress, cancel: &CancellationToken) -> ToolsRan {
    let assistant_message = Message::Assistant { content: strip_marks(text), tool_calls: calls.to_vec() };
    messages.push(assistant_message.clone());
    lock(progress).tool_messages.push(assistant_message);
    let mut ran = ToolsRan { failed: false, ends_call: false };
    for call in calls {
        let result = run_tool(ctx, call, outbox, cancel).await;
        ran.failed |= result.failed;
        if let Some(action) = &result.action {
            if let Action::Dtmf { digits } = action {
                ctx.out.send_dtmf(digits);
            }
            ran.ends_call |= matches!(action, Action::EndCall { .. } | Action::Transfer { .. });
            lock(progress).actions.push(action.clone());
        }
        if result.failed {
            lock(progress).errors.push(format!("tool {}: {}", call.name, result.content));
        }
        let tool_message = Message::Tool { tool_call_id: call.id.clone(), content: result.content };
        messages.push(tool_message.clone());
        lock(progress).tool_messages.push(tool_message);
    }
    ran
}

fn record_llm_failure(progress: &Progress, error: &crate::llm::LlmError) {
    let mut p = lock(progress);
    p.errors.push(format!("llm: {error}"));
    p.llm_failed = true;
}

async fn run_tool(ctx: &Arc<TurnContext>, call: &ToolCall, outbox: &mpsc::Sender<Frame>, cancel: &CancellationToken) -> tools::ToolResult {
    let arguments: Value = match serde_json::from_str(if call.arguments.trim().is_empty() { "{}" } else { &call.arguments }) {
        Ok(v) => v,
        Err(e) => {
            return tools::ToolResult { content: format!("error: the arguments of {} are not valid JSON ({e}); call it again with a JSON object", call.name), action: None, failed: true }
        }
    };
    if let Some(result) = tools::run_builtin(&ctx.assistant, &call.name, &arguments) {
        return result;
    }
    let Some(tool) = tools::http_tool(&ctx.assistant, &call.name) else {
        let offered: Vec<&str> = ctx.tools.iter().map(|t| t.name.as_str()).collect();
        return tools::ToolResult { content: format!("error: there is no tool `{}`; available: {}", call.name, offered.join(", ")), action: None, failed: true };
    };
    let request = tools::run_http(&ctx.http, tool, &arguments);
    tokio::pin!(request);
    let filler_after = tokio::time::sleep(Duration::from_millis(tool.filler_after_ms));
    tokio::pin!(filler_after);
    let mut filler_said = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return tools::ToolResult { content: "error: cancelled".into(), action: None, failed: true },
            result = &mut request => return result,
            _ = &mut filler_after, if !filler_said => {
                filler_said = true;
                say(outbox, &tool.filler).await;
            }
        }
    }
}

/// The chunk stage: text in, speakable chunks out.
async fn chunk(mut inbox: mpsc::Receiver<Frame>, outbox: mpsc::Sender<Frame>, progress: Progress, cancel: CancellationToken) {
    let mut chunker = MarkedChunker::default();
    let mut held: Vec<String> = Vec::new();
    loop {
        let Ok(frame) = receive(&mut inbox, &cancel).await else { break };
        let (ready, done) = match frame {
            Some(Frame::LlmText(piece)) => (chunker.push(&piece), false),
            Some(Frame::LlmTextEnd) => (chunker.flush(), false),
            None => (chunker.flush(), true),
            Some(_) => continue,
        };
        for sentence in ready {
            if cancel.is_cancelled() {
                held.push(sentence.text);
            } else if let Err(mpsc::error::SendError(frame)) = outbox.send(Frame::Sentence(sentence)).await {
                held.extend(text_of(frame));
            }
        }
        if done {
            break;
        }
    }
    // Whatever was written but not passed on is unspoken.
    held.push(chunker.pending());
    held.extend(queued_text(&mut inbox));
    lock(&progress).keep(Stage::Chunk, held);
}

/// The turn was cancelled.
struct Cancelled;

/// A stage's next frame (`None`: the stage before has finished), unless the turn is
/// cancelled: the token is checked first, so a cancel overtakes whatever is queued.
async fn receive(inbox: &mut mpsc::Receiver<Frame>, cancel: &CancellationToken) -> Result<Option<Frame>, Cancelled> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Cancelled),
        frame = inbox.recv() => Ok(frame),
    }
}

/// The text of whatever is still queued in a cancelled stage's inbox.
fn queued_text(inbox: &mut mpsc::Receiver<Frame>) -> Vec<String> {
    let mut texts = Vec::new();
    while let Ok(frame) = inbox.try_recv() {
        texts.extend(text_of(frame).map(|t| strip_marks(&t)));
    }
    texts
}

/// The text a frame of the turn carries, if any.
fn text_of(frame: Frame) -> Option<String> {
    match frame {
        Frame::LlmText(text) => Some(text),
        Frame::Sentence(chunk) | Frame::TtsAudio { sentence: chunk, .. } => Some(chunk.text),
        _ => None,
    }
}

/// The speak stage: chunks in, synthesized audio at the line's rate out.
async fn speak(ctx: Arc<TurnContext>, mut inbox: mpsc::Receiver<Frame>, outbox: mpsc::Sender<Frame>, progress: Progress, cancel: CancellationToken) {
    let mut held: Vec<String> = Vec::new();
    // This reply's audio so far, and when its first sentence was ready to play.
    let mut produced = Duration::ZERO;
    let mut first_ready: Option<Duration> = None;
    'sentences: loop {
        let Ok(frame) = receive(&mut inbox, &cancel).await else { break };
        let sentence = match frame {
            Some(Frame::Sentence(sentence)) => sentence,
            Some(_) => continue,
            None => break,
        };
        // Paced to playback: a later sentence is synthesized when the audio ahead of it runs
        // short, not as soon as its text is ready, so meanwhile the cores serve what other
        // calls' callers are waiting for.
        if let Some(start) = first_ready {
            loop {
                let ahead = produced.saturating_sub(ctx.out.now().saturating_sub(start));
                if ahead <= SYNTHESIS_LOOKAHEAD {
                    break;
                }
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        held.push(sentence.text);
                        break 'sentences;
                    }
                    _ = tokio::time::sleep((ahead - SYNTHESIS_LOOKAHEAD).min(Duration::from_millis(100))) => {}
                }
            }
        }
        let rate = ctx.out.rate();
        let cache = super::speech_cache::speech_cache();
        // The reply's first sentence is what the caller waits for now.
        let now = lock(&progress).first_audio_at.is_none();
        let lookup = match &ctx.speech_scope {
            Some(scope) => cache.lookup(scope, rate, &sentence.text, now),
            None => Lookup::Missing(None),
        };
        let (replayed, claim) = match lookup {
            // Said before in this scope: no synthesis, no wait for a slot.
            Lookup::Held(samples) => (Some(samples), None),
            // Being synthesized for another call: its audio, or ours if it gives up.
            Lookup::Coming(coming) => tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    held.push(sentence.text);
                    break;
                }
                audio = coming.audio() => (audio, None),
            },
            Lookup::Missing(claim) => (None, claim),
        };
        let from_cache = replayed.is_some();
        let result = match replayed {
            Some(samples) => Ok(Ok((samples.to_vec(), None))),
            None => {
                let synthesis = synthesize(&ctx, &sentence.text, rate, now);
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        held.push(sentence.text);
                        break;
                    }
                    result = synthesis => result,
                }
            }
        };
        match result {
            Ok(Ok((samples, fallback_note))) => {
                // Only the voice's own audio is kept (the voice may recover), and outside the
                // progress lock: keeping may evict.
                match (from_cache, &fallback_note, claim, &ctx.speech_scope) {
                    (false, None, Some(claim), _) => claim.fulfil(&samples),
                    (false, None, None, Some(scope)) => cache.put(scope, rate, &sentence.text, &samples),
                    _ => {}
                }
                {
                    let mut p = lock(&progress);
                    if let Some(note) = fallback_note {
                        p.errors.push(format!("tts (fell back to espeak): {note}"));
                    }
                    p.first_audio_at.get_or_insert_with(|| ctx.out.now());
                }
                first_ready.get_or_insert_with(|| ctx.out.now());
                produced += Duration::from_secs_f64(samples.len() as f64 / rate.max(1) as f64);
                if let Err(mpsc::error::SendError(frame)) = outbox.send(Frame::TtsAudio { sentence, samples }).await {
                    held.extend(text_of(frame));
                }
            }
            Ok(Err(e)) => lock(&progress).errors.push(format!("tts: {e}")),
            Err(e) => lock(&progress).errors.push(format!("tts task: {e}")),
        }
    }
    held.extend(queued_text(&mut inbox));
    lock(&progress).keep(Stage::Speak, held);
}

/// One sentence synthesized at the line's `rate` in the shared budget (espeak-ng when the voice
/// fails, with the voice's error as a note). `now`: a reply's first sentence, what the caller
/// waits for; later ones play after it.
fn synthesize(ctx: &TurnContext, text: &str, rate: u32, now: bool) -> impl std::future::Future<Output = Result<Result<(Vec<f32>, Option<String>), String>, super::pool::PoolError>> {
    let (tts, fallback, text) = (ctx.tts.clone(), ctx.fallback_tts.clone(), text.to_string());
    let urgency = if now { super::pool::Urgency::Now } else { super::pool::Urgency::Ahead };
    super::pool::tts().run_with(urgency, move || {
        let audio = match tts.speak_all(&text) {
            Ok(audio) => Ok((audio, None)),
            Err(e) => fallback.speak_all(&text).map(|a| (a, Some(e.to_string()))).map_err(|f| format!("{e}; fallback: {f}")),
        };
        audio.and_then(|(a, note)| a.to_rate(rate).map(|a| (a.samples, note)).map_err(|e| e.to_string()))
    })
}

/// How much of a reply's audio must still be ahead of playback before its next sentence is
/// synthesized: enough to cover one synthesis on a busy machine.
const SYNTHESIS_LOOKAHEAD: Duration = Duration::from_millis(1500);

/// The play stage: each chunk's audio onto the line as one segment.
async fn play(ctx: Arc<TurnContext>, mut inbox: mpsc::Receiver<Frame>, progress: Progress, cancel: CancellationToken) {
    loop {
        let Ok(frame) = receive(&mut inbox, &cancel).await else { break };
        match frame {
            Some(Frame::TtsAudio { sentence: Chunk { text, interruptible }, samples }) => {
                let id = ctx.segment_ids.fetch_add(1, Ordering::Relaxed);
                lock(&progress).segments.push(SpokenSegment { id, text, interruptible });
                ctx.out.play(id, samples);
            }
            Some(_) => {}
            None => return,
        }
    }
    let held = queued_text(&mut inbox);
    lock(&progress).keep(Stage::Play, held);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stage_that_panics_says_so_in_the_turns_errors() {
        let progress = Progress::default();
        let (tx, mut rx) = mpsc::channel::<Frame>(1);
        let stage = spawn_stage("speak", &progress, async move {
            let _holds_the_channel = tx;
            let sentences: Vec<&str> = Vec::new();
            let _ = sentences[3];
        });
        stage.await.expect("the panic is caught in the stage");
        assert!(rx.recv().await.is_none(), "the stage's channel closed, so the turn ends");
        let errors = lock(&progress).errors.clone();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("the turn's speak stage stopped: index out of bounds"), "{errors:?}");
    }

    #[tokio::test]
    async fn the_chunk_stage_passes_chunks_on_and_a_cancel_keeps_the_rest() {
        let progress = Progress::default();
        let cancel = CancellationToken::new();
        let (text_tx, text_rx) = mpsc::channel(64);
        let (sentence_tx, mut sentence_rx) = mpsc::channel(32);
        let stage = tokio::spawn(chunk(text_rx, sentence_tx, progress.clone(), cancel.clone()));
        for piece in ["Hello there. ", "<no-interrupt>This call ", "is recorded.</no-interrupt> ", "How can", " I help?"] {
            text_tx.send(Frame::LlmText(piece.into())).await.unwrap();
        }
        let mut chunks = Vec::new();
        while chunks.len() < 2 {
            if let Some(Frame::Sentence(chunk)) = sentence_rx.recv().await {
                chunks.push((chunk.text, chunk.interruptible));
            }
        }
        assert_eq!(chunks, vec![("Hello there.".to_string(), true), ("This call is recorded.".to_string(), false)]);
        cancel.cancel();
        stage.await.unwrap();
        assert_eq!(lock(&progress).unspoken(), "How can I help?");
    }

    #[test]
    fn unspoken_text_comes_back_in_the_order_it_would_have_been_said() {
        let mut progress = TurnProgress::default();
        progress.keep(Stage::Chunk, vec!["and the rest.".into()]);
        progress.keep(Stage::Play, vec!["First this.".into()]);
        progress.keep(Stage::Speak, vec!["Then that,".into(), String::new()]);
        assert_eq!(progress.unspoken(), "First this. Then that, and the rest.");
    }
}
