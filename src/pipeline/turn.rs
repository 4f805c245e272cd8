//! One agent turn: from a caller's words (or a line to say) to audio on the line.
//!
//! The LLM's stream is cut into chunks as it arrives; a speaker task synthesizes each chunk on
//! a blocking thread and queues it on the line as its own segment, so the first words play
//! while the LLM is still writing. Tool calls run between LLM rounds (at most
//! [`MAX_TOOL_ROUNDS`]); a slow HTTP tool gets a spoken filler instead of dead air.
//!
//! Everything stops on the turn's cancellation token (a barge-in): the LLM stream is dropped
//! (which stops the engine's generation), queued chunks are discarded and TTS in flight is
//! abandoned. The agent clears the line's buffer. Which segments were heard is for the agent
//! to ask the line afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::tools::{self, Action};
use crate::assistant::Assistant;
use crate::llm::{ChatRequest, LanguageModel, LlmEvent, Message, ToolCall, ToolSpec};
use crate::tts::TextToSpeech;
use crate::text::SentenceChunker;
use crate::transport::AudioOut;

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

/// What the turn starts from.
#[derive(Debug, Clone)]
pub enum TurnInput {
    /// Ask the LLM to answer the conversation so far.
    Respond,
    /// Say these words as they are (first message, reprompts, re-saying after a false barge-in).
    Say(String),
}

/// What a turn did, shared with the agent while it runs.
#[derive(Debug, Default)]
pub struct TurnProgress {
    /// (segment id, text) in the order queued on the line.
    pub segments: Vec<(u64, String)>,
    /// Chunks the LLM produced that were not yet spoken when the turn was cancelled.
    pub unspoken: Vec<String>,
    pub first_token_at: Option<Duration>,
    pub first_audio_at: Option<Duration>,
    /// Assistant tool-call messages and tool results, for the history.
    pub tool_messages: Vec<Message>,
    pub actions: Vec<Action>,
    pub errors: Vec<String>,
    pub llm_failed: bool,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
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
}

/// Runs one turn to completion or cancellation; progress is visible through `progress`.
pub async fn run(ctx: Arc<TurnContext>, messages: Vec<Message>, input: TurnInput, progress: Arc<Mutex<TurnProgress>>, cancel: CancellationToken) {
    // Chunks flow to the speaker through a bounded channel: text blocks, it is never dropped.
    let (chunks_tx, chunks_rx) = mpsc::channel::<String>(32);
    let speaker = tokio::spawn(speak(ctx.clone(), chunks_rx, progress.clone(), cancel.clone()));
    match input {
        TurnInput::Say(text) => {
            let _ = chunks_tx.send(text).await;
        }
        TurnInput::Respond => respond(&ctx, messages, &chunks_tx, &progress, &cancel).await,
    }
    drop(chunks_tx);
    let _ = speaker.await;
}

/// Sends the conversation so far with `max_tokens: 1`, so that an engine with a KV cache
/// (the local one) has processed it before the caller's first words arrive.
pub async fn prefill(ctx: Arc<TurnContext>, messages: Vec<Message>) {
    let request = ChatRequest { messages, tools: ctx.tools.clone(), max_tokens: 1, temperature: 0.0 };
    if let Ok(mut stream) = ctx.llm.stream(request).await {
        while stream.next().await.is_some() {}
    }
}

/// [`respond`] with owned arguments, for spawning (text chat).
pub async fn respond_owned(ctx: Arc<TurnContext>, messages: Vec<Message>, chunks: mpsc::Sender<String>, progress: Arc<Mutex<TurnProgress>>, cancel: CancellationToken) {
    respond(&ctx, messages, &chunks, &progress, &cancel).await
}

/// Asks the LLM (with tools) and sends the speakable chunks of its answer to `chunks`.
pub async fn respond(
    ctx: &Arc<TurnContext>,
    mut messages: Vec<Message>,
    chunks: &mpsc::Sender<String>,
    progress: &Arc<Mutex<TurnProgress>>,
    cancel: &CancellationToken,
) {
    let lock = || progress.lock().unwrap_or_else(|e| e.into_inner());
    let mut tool_failed = false;
    let mut spoke = false;
    for round in 0..MAX_TOOL_ROUNDS {
        let request = ChatRequest {
            messages: messages.clone(),
            tools: ctx.tools.clone(),
            max_tokens: ctx.assistant.spec.llm.max_tokens,
            temperature: ctx.assistant.spec.llm.temperature,
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            stream = ctx.llm.stream(request) => stream,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "llm request failed");
                record_llm_failure(progress, &e);
                let _ = chunks.send(LLM_APOLOGY.to_string()).await;
                return;
            }
        };
        let mut chunker = SentenceChunker::default();
        let mut text = String::new();
        let mut calls: Vec<ToolCall> = Vec::new();
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return, // dropping the stream stops generation
                event = stream.next() => event,
            };
            match event {
                None => break,
                Some(Ok(LlmEvent::Text(piece))) => {
                    {
                        let mut p = lock();
                        if p.first_token_at.is_none() {
                            p.first_token_at = Some(ctx.out.now());
                        }
                    }
                    text.push_str(&piece);
                    for chunk in chunker.push(&piece) {
                        spoke = true;
                        if chunks.send(chunk).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(LlmEvent::ToolCall(call))) => calls.push(call),
                Some(Ok(LlmEvent::Done(usage))) => {
                    let mut p = lock();
                    p.prompt_tokens = usage.prompt_tokens;
                    p.cached_tokens = usage.cached_tokens;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "llm stream failed");
                    record_llm_failure(progress, &e);
                    if !spoke {
                        let _ = chunks.send(LLM_APOLOGY.to_string()).await;
                    }
                    return;
                }
            }
        }
        if let Some(rest) = chunker.finish() {
            spoke = true;
            let _ = chunks.send(rest).await;
        }
        if calls.is_empty() {
            break;
        }
        // Run the tools, then let the LLM speak about their results.
        let assistant_message = Message::Assistant { content: text.clone(), tool_calls: calls.clone() };
        messages.push(assistant_message.clone());
        lock().tool_messages.push(assistant_message);
        let mut ends_call = false;
        for call in &calls {
            let result = run_tool(ctx, call, chunks, cancel).await;
            tool_failed |= result.failed;
            if let Some(action) = &result.action {
                if let Action::Dtmf { digits } = action {
                    ctx.out.send_dtmf(digits);
                }
                ends_call |= matches!(action, Action::EndCall { .. } | Action::Transfer { .. });
                lock().actions.push(action.clone());
            }
            if result.failed {
                lock().errors.push(format!("tool {}: {}", call.name, result.content));
            }
            let tool_message = Message::Tool { tool_call_id: call.id.clone(), content: result.content };
            messages.push(tool_message.clone());
            lock().tool_messages.push(tool_message);
        }
        if ends_call {
            if !spoke {
                let _ = chunks.send(GOODBYE.to_string()).await;
            }
            return;
        }
        if round + 1 == MAX_TOOL_ROUNDS {
            tracing::warn!("tool rounds exhausted");
            if !spoke {
                // The model kept calling tools without a word: never leave the caller in silence.
                let _ = chunks.send(ROUNDS_EXHAUSTED.to_string()).await;
                return;
            }
        }
    }
    if tool_failed && !spoke {
        let _ = chunks.send(TOOL_APOLOGY.to_string()).await;
    }
}

fn record_llm_failure(progress: &Mutex<TurnProgress>, error: &crate::llm::LlmError) {
    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
    p.errors.push(format!("llm: {error}"));
    p.llm_failed = true;
}

async fn run_tool(ctx: &Arc<TurnContext>, call: &ToolCall, chunks: &mpsc::Sender<String>, cancel: &CancellationToken) -> tools::ToolResult {
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
                let _ = chunks.send(tool.filler.clone()).await;
            }
        }
    }
}

/// Synthesizes chunks in order and queues them on the line.
async fn speak(ctx: Arc<TurnContext>, mut chunks: mpsc::Receiver<String>, progress: Arc<Mutex<TurnProgress>>, cancel: CancellationToken) {
    let lock = || progress.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let chunk = tokio::select! {
            _ = cancel.cancelled() => None,
            chunk = chunks.recv() => chunk,
        };
        let Some(chunk) = chunk else { break };
        let rate = ctx.out.rate();
        let (tts, fallback) = (ctx.tts.clone(), ctx.fallback_tts.clone());
        let text = chunk.clone();
        let synthesis = super::pool::tts().run(move || {
            let primary = tts.speak_all(&text);
            let audio = match primary {
                Ok(audio) => Ok((audio, None)),
                Err(e) => fallback.speak_all(&text).map(|a| (a, Some(e.to_string()))).map_err(|f| format!("{e}; fallback: {f}")),
            };
            audio.and_then(|(a, note)| a.to_rate(rate).map(|a| (a, note)).map_err(|e| e.to_string()))
        });
        let result = tokio::select! {
            _ = cancel.cancelled() => {
                lock().unspoken.push(chunk);
                break;
            }
            result = synthesis => result,
        };
        match result {
            Ok(Ok((audio, fallback_note))) => {
                if cancel.is_cancelled() {
                    lock().unspoken.push(chunk);
                    break;
                }
                let segment = ctx.segment_ids.fetch_add(1, Ordering::Relaxed);
                let mut p = lock();
                if let Some(note) = fallback_note {
                    p.errors.push(format!("tts (fell back to espeak): {note}"));
                }
                if p.first_audio_at.is_none() {
                    p.first_audio_at = Some(ctx.out.now());
                }
                p.segments.push((segment, chunk));
                drop(p);
                ctx.out.play(segment, audio.samples);
            }
            Ok(Err(e)) => lock().errors.push(format!("tts: {e}")),
            Err(e) => lock().errors.push(format!("tts task: {e}")),
        }
    }
    // Whatever is still queued after a cancel was never spoken.
    while let Ok(chunk) = chunks.try_recv() {
        lock().unspoken.push(chunk);
    }
}
