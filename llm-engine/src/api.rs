//! The OpenAI-compatible HTTP surface: `POST /v1/chat/completions` (streaming or not),
//! `GET /v1/models`, `GET /health`.
//!
//! Output text is scanned for `<tool_call>…</tool_call>` as it streams: text before a call
//! streams as content, the call itself is sent as an OpenAI `tool_calls` delta once complete,
//! and a partial marker is held back rather than leaked to the listener (who would speak it).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::{Constraint, Engine, Event, Finish, Job};
use crate::grammar::{self, CallForm};
use crate::template::{parse_call, partial_marker_len, ParsedCall, TOOL_CLOSE, TOOL_OPEN};

#[derive(Clone)]
pub struct AppState {
    engine: Engine,
    model_name: Arc<String>,
    next_id: Arc<AtomicU64>,
}

impl AppState {
    pub fn new(engine: Engine, model_name: String) -> Self {
        AppState { engine, model_name: Arc::new(model_name), next_id: Arc::new(AtomicU64::new(1)) }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Value>,
    #[serde(default)]
    tools: Vec<Value>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    /// llama.cpp's repeat penalty (an extension; OpenAI clients can send it as an extra field).
    repeat_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    #[serde(default)]
    stop: Option<StopField>,
    /// OpenAI's `{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": …}}`.
    response_format: Option<Value>,
    /// OpenAI's `"auto" | "none" | "required" | {"type": "function", "function": {"name": …}}`.
    tool_choice: Option<Value>,
    /// A raw GBNF grammar (llama.cpp's server extension).
    grammar: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

const DEFAULT_MAX_TOKENS: usize = 256;
/// Default repeat penalty: mild, but enough to stop a 135M model from looping.
const DEFAULT_REPEAT_PENALTY: f32 = 1.15;

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({ "error": { "message": message, "type": code, "code": code } }))).into_response()
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [{ "id": *state.model_name, "object": "model", "owned_by": "ringline" }] }))
}

async fn chat_completions(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", format!("invalid request body: {e}")),
    };
    if request.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "`messages` must not be empty".into());
    }
    let tools = if request.tool_choice.as_ref().and_then(Value::as_str) == Some("none") { Vec::new() } else { request.tools.clone() };
    let constraint = match constraint(&request, &tools) {
        Ok(c) => c,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", message),
    };
    let prompt = match state.engine.template.render(&request.messages, &tools) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", e.to_string()),
    };
    let mut stop: Vec<String> = match request.stop {
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
        None => Vec::new(),
    };
    stop.retain(|s| !s.is_empty());
    let (events_tx, events_rx) = mpsc::channel(256);
    let job = Job {
        prompt,
        max_tokens: request.max_completion_tokens.or(request.max_tokens).unwrap_or(DEFAULT_MAX_TOKENS),
        temperature: request.temperature.unwrap_or(0.0),
        repeat_penalty: request.repeat_penalty.unwrap_or(DEFAULT_REPEAT_PENALTY),
        frequency_penalty: request.frequency_penalty.unwrap_or(0.0),
        presence_penalty: request.presence_penalty.unwrap_or(0.0),
        stop,
        constraint,
        events: events_tx,
    };
    if let Err(reason) = state.engine.submit(job) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", reason.to_string());
    }
    let id = format!("chatcmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let model = state.model_name.to_string();
    if request.stream {
        let (sse_tx, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(256);
        tokio::spawn(stream_events(events_rx, sse_tx, id, model));
        Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response()
    } else {
        complete(events_rx, id, model).await
    }
}

/// The grammar a request's output must follow: its `grammar`, its `response_format`, a forced
/// tool call, or — whenever tools are offered — any call the model opens.
fn constraint(request: &ChatRequest, tools: &[Value]) -> Result<Option<Constraint>, String> {
    if let Some(gbnf) = &request.grammar {
        if gbnf.len() > 64 * 1024 {
            return Err("`grammar` is longer than 64 KB".into());
        }
        return Ok(Some(Constraint::Always(gbnf.clone())));
    }
    let forced = match &request.tool_choice {
        None => None,
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" | "none" => None,
            "required" => Some(None),
            other => return Err(format!("`tool_choice` {other:?} is not one of auto, none, required, or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}")),
        },
        Some(choice) => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(Some(name.to_string())),
            None => return Err(format!("`tool_choice` {choice} names no function; send {{\"type\": \"function\", \"function\": {{\"name\": …}}}}")),
        },
    };
    if let Some(only) = forced {
        let gbnf = grammar::tool_call(tools, only.as_deref(), CallForm::Bare).map_err(|e| e.under(""))?;
        return Ok(Some(Constraint::Always(gbnf)));
    }
    if let Some(format) = &request.response_format {
        let implied = if format.get("json_schema").is_some() { "json_schema" } else { "text" };
        let gbnf = match format.get("type").and_then(Value::as_str).unwrap_or(implied) {
            "text" => None,
            "json_object" => Some(grammar::json_object()),
            "json_schema" => {
                let schema = format
                    .pointer("/json_schema/schema")
                    .ok_or("`response_format.json_schema.schema` is missing: send {\"type\": \"json_schema\", \"json_schema\": {\"name\": …, \"schema\": {…}}}")?;
                Some(grammar::from_schema(schema).map_err(|e| e.under("response_format.json_schema.schema"))?)
            }
            other => return Err(format!("`response_format.type` {other:?} is not one of text, json_object, json_schema")),
        };
        if let Some(gbnf) = gbnf {
            return Ok(Some(Constraint::Always(gbnf)));
        }
    }
    if tools.is_empty() {
        return Ok(None);
    }
    let tagged = grammar::tool_call(tools, None, CallForm::Tagged).map_err(|e| e.under(""))?;
    let bare = grammar::tool_call(tools, None, CallForm::Bare).map_err(|e| e.under(""))?;
    Ok(Some(Constraint::ToolCalls { tagged, bare }))
}

/// Splits streamed text into content and tool calls.
///
/// Calls come as `<tool_call>{…}</tool_call>`, or — some models (Qwen2.5-Coder) skip the tags —
/// as a reply that is nothing but `{"name": …, "arguments": …}` objects. A reply that opens
/// with `{` is therefore held back until it ends, then parsed; spoken JSON is worse than a
/// moment's delay.
#[derive(Default)]
struct CallScanner {
    buffer: String,
    in_call: bool,
    /// Nothing emitted yet and the reply opens with `{`: hold everything.
    bare_json: bool,
    emitted: bool,
    calls: Vec<ParsedCall>,
}

impl CallScanner {
    /// Feeds text; returns the content that is safe to emit now.
    fn feed(&mut self, text: &str) -> String {
        self.buffer.push_str(text);
        if !self.emitted && !self.in_call {
            let start = self.buffer.trim_start();
            if start.is_empty() {
                return String::new();
            }
            if start.starts_with('{') {
                self.bare_json = true;
            }
        }
        if self.bare_json {
            return String::new();
        }
        let content = self.scan();
        if !content.is_empty() {
            self.emitted = true;
        }
        content
    }

    fn scan(&mut self) -> String {
        let mut content = String::new();
        loop {
            if self.in_call {
                let Some(end) = self.buffer.find(TOOL_CLOSE) else { return content };
                let body: String = self.buffer[..end].to_string();
                self.buffer.drain(..end + TOOL_CLOSE.len());
                self.in_call = false;
                match parse_call(&body) {
                    Some(call) => self.calls.push(call),
                    None => content.push_str(&body),
                }
            } else if let Some(start) = self.buffer.find(TOOL_OPEN) {
                content.push_str(&self.buffer[..start]);
                self.buffer.drain(..start + TOOL_OPEN.len());
                self.in_call = true;
            } else {
                let hold = partial_marker_len(&self.buffer, TOOL_OPEN);
                let emit = self.buffer.len() - hold;
                content.push_str(&self.buffer[..emit]);
                self.buffer.drain(..emit);
                return content;
            }
        }
    }

    /// At the end: an unclosed call still counts if its JSON parses; anything else is content.
    fn finish(&mut self) -> String {
        if self.bare_json {
            let body = std::mem::take(&mut self.buffer);
            let calls: Option<Vec<ParsedCall>> = split_json_objects(&body).iter().map(|o| parse_call(o)).collect();
            match calls {
                Some(calls) if !calls.is_empty() => {
                    self.calls.extend(calls);
                    return String::new();
                }
                _ => {
                    self.bare_json = false;
                    self.buffer = body;
                    let mut content = self.scan();
                    content.push_str(&std::mem::take(&mut self.buffer));
                    return content;
                }
            }
        }
        let rest = std::mem::take(&mut self.buffer);
        if self.in_call {
            // A call cut short is dropped, never spoken.
            if let Some(call) = parse_call(&rest) {
                self.calls.push(call);
            }
            return String::new();
        }
        rest
    }
}

/// Top-level `{…}` objects in `text`, in order (braces inside strings respected).
fn split_json_objects(text: &str) -> Vec<String> {
    let mut objects = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut start) = (0usize, false, false, None);
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => {
                if depth == 0 {
                    start = Some(i);
                }
                depth += 1;
            }
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    if let Some(s) = start.take() {
                        objects.push(text[s..=i].to_string());
                    }
                }
            }
            c if depth == 0 && !c.is_whitespace() => return Vec::new(), // prose between objects: not calls
            _ => {}
        }
    }
    if depth != 0 {
        return Vec::new();
    }
    objects
}

fn chunk(id: &str, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
    })
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn tool_calls_json(calls: &[ParsedCall], id: &str) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| json!({ "index": i, "id": format!("call_{id}_{i}"), "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
            .collect(),
    )
}

fn usage(prompt_new: usize, cached: usize, completion: usize, prompt_secs: f64, decode_secs: f64, most_sequences: usize) -> Value {
    json!({
        "prompt_tokens": prompt_new + cached, "completion_tokens": completion, "total_tokens": prompt_new + cached + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
        "timings": { "prompt_secs": prompt_secs, "decode_secs": decode_secs, "most_sequences_per_step": most_sequences }
    })
}

async fn stream_events(mut events: mpsc::Receiver<Event>, out: mpsc::Sender<Result<SseEvent, Infallible>>, id: String, model: String) {
    let send = |value: Value| {
        let out = out.clone();
        async move { out.send(Ok(SseEvent::default().data(value.to_string()))).await.is_ok() }
    };
    if !send(chunk(&id, &model, json!({ "role": "assistant", "content": "" }), None)).await {
        return;
    }
    let mut scanner = CallScanner::default();
    let (mut prompt_new, mut cached, mut prompt_secs) = (0, 0, 0.0);
    while let Some(event) = events.recv().await {
        match event {
            Event::Prompt { new_tokens, cached_tokens, secs } => (prompt_new, cached, prompt_secs) = (new_tokens, cached_tokens, secs),
            Event::Text(text) => {
                let content = scanner.feed(&text);
                if !content.is_empty() && !send(chunk(&id, &model, json!({ "content": content }), None)).await {
                    return; // client gone: dropping `events` stops the worker
                }
            }
            Event::Done { finish, completion_tokens, decode_secs, most_sequences } => {
                let rest = scanner.finish();
                if !rest.is_empty() {
                    send(chunk(&id, &model, json!({ "content": rest }), None)).await;
                }
                let reason = if !scanner.calls.is_empty() {
                    send(chunk(&id, &model, json!({ "tool_calls": tool_calls_json(&scanner.calls, &id) }), None)).await;
                    "tool_calls"
                } else if finish == Finish::Length {
                    "length"
                } else {
                    "stop"
                };
                let mut last = chunk(&id, &model, json!({}), Some(reason));
                last["usage"] = usage(prompt_new, cached, completion_tokens, prompt_secs, decode_secs, most_sequences);
                send(last).await;
                let _ = out.send(Ok(SseEvent::default().data("[DONE]"))).await;
                return;
            }
            Event::Error(failure) => {
                send(json!({ "error": { "message": failure.to_string(), "type": "server_error" } })).await;
                return;
            }
        }
    }
}

async fn complete(mut events: mpsc::Receiver<Event>, id: String, model: String) -> Response {
    let mut scanner = CallScanner::default();
    let mut content = String::new();
    let (mut prompt_new, mut cached, mut prompt_secs) = (0, 0, 0.0);
    while let Some(event) = events.recv().await {
        match event {
            Event::Prompt { new_tokens, cached_tokens, secs } => (prompt_new, cached, prompt_secs) = (new_tokens, cached_tokens, secs),
            Event::Text(text) => content.push_str(&scanner.feed(&text)),
            Event::Error(failure) => {
                let status = if failure.is_bad_request() { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
                return error(status, "server_error", failure.to_string());
            }
            Event::Done { finish, completion_tokens, decode_secs, most_sequences } => {
                content.push_str(&scanner.finish());
                let mut message = json!({ "role": "assistant", "content": content });
                let reason = if !scanner.calls.is_empty() {
                    message["tool_calls"] = tool_calls_json(&scanner.calls, &id);
                    "tool_calls"
                } else if finish == Finish::Length {
                    "length"
                } else {
                    "stop"
                };
                return Json(json!({
                    "id": id, "object": "chat.completion", "created": now(), "model": model,
                    "choices": [{ "index": 0, "message": message, "finish_reason": reason }],
                    "usage": usage(prompt_new, cached, completion_tokens, prompt_secs, decode_secs, most_sequences),
                }))
                .into_response();
            }
        }
    }
    error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the engine stopped without an answer".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_streams_content_and_extracts_calls_split_across_tokens() {
        let mut scanner = CallScanner::default();
        let mut content = String::new();
        for piece in ["Okay, good", "bye! <to", "ol_call>\n{\"name\": \"end_", "call\", \"arguments\": {}}\n</tool", "_call>"] {
            content.push_str(&scanner.feed(piece));
        }
        content.push_str(&scanner.finish());
        assert_eq!(content, "Okay, goodbye! ");
        assert_eq!(scanner.calls, vec![ParsedCall { name: "end_call".into(), arguments: "{}".into() }]);
    }

    #[test]
    fn bare_json_calls_are_calls_and_bare_json_prose_is_content() {
        let mut scanner = CallScanner::default();
        let mut content = scanner.feed("{\"name\":");
        content.push_str(&scanner.feed(" \"set_disposition\", \"arguments\": {\"disposition\": \"booked\"}}"));
        content.push_str(&scanner.finish());
        assert_eq!(content, "");
        assert_eq!(scanner.calls, vec![ParsedCall { name: "set_disposition".into(), arguments: "{\"disposition\":\"booked\"}".into() }]);

        let mut scanner = CallScanner::default();
        let mut content = scanner.feed("{curly} braces are fun.");
        content.push_str(&scanner.finish());
        assert_eq!(content, "{curly} braces are fun.");
        assert!(scanner.calls.is_empty());
    }
}
