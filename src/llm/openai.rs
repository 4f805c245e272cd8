//! Any OpenAI-compatible chat-completions endpoint, through async-openai.
//!
//! Requests and chunks travel as JSON (async-openai's "bring your own types"), so providers
//! that add fields — usage timings, cached-token counts — pass them through. Tool calls arrive
//! as fragments keyed by index and are assembled here; a malformed chunk is an error event,
//! not a panic, and the turn manager decides what to say.

use std::collections::{BTreeMap, VecDeque};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::Client;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::Value;

use super::{ChatRequest, LanguageModel, LlmError, LlmEvent, LlmStream, ToolCall, Usage};

pub struct OpenAiLlm {
    client: Client<OpenAIConfig>,
    base_url: String,
    model: String,
}

impl OpenAiLlm {
    /// `api_key` may be empty for endpoints that take none (the local engine).
    /// Connections obey `egress` (checked again at each connection, see `crate::egress`).
    pub fn new(base_url: &str, model: &str, api_key: &str, timeout: std::time::Duration, egress: &crate::egress::EgressPolicy) -> Self {
        let config = OpenAIConfig::new().with_api_base(base_url.trim_end_matches('/')).with_api_key(api_key);
        let http = egress.client(reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5)).read_timeout(timeout));
        OpenAiLlm { client: Client::with_config(config).with_http_client(http), base_url: base_url.to_string(), model: model.to_string() }
    }
}

struct StreamState {
    chunks: futures::stream::BoxStream<'static, Result<Value, OpenAIError>>,
    endpoint: String,
    calls: BTreeMap<u64, PartialCall>,
    usage: Usage,
    pending: VecDeque<Result<LlmEvent, LlmError>>,
    ended: bool,
}

impl StreamState {
    fn absorb(&mut self, chunk: &Value) {
        if let Some(error) = chunk.get("error") {
            self.pending.push_back(Err(LlmError::Request { endpoint: self.endpoint.clone(), reason: error.to_string() }));
            self.ended = true;
            return;
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
            self.usage.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            self.usage.cached_tokens = u.pointer("/prompt_tokens_details/cached_tokens").and_then(Value::as_u64).unwrap_or(0) as usize;
            self.usage.prompt_secs = u.pointer("/timings/prompt_secs").and_then(Value::as_f64);
            self.usage.decode_secs = u.pointer("/timings/decode_secs").and_then(Value::as_f64);
        }
        let choice = chunk.pointer("/choices/0");
        if let Some(text) = choice.and_then(|c| c.pointer("/delta/content")).and_then(Value::as_str) {
            if !text.is_empty() {
                self.pending.push_back(Ok(LlmEvent::Text(text.to_string())));
            }
        }
        for fragment in choice.and_then(|c| c.pointer("/delta/tool_calls")).and_then(Value::as_array).into_iter().flatten() {
            let index = fragment["index"].as_u64().unwrap_or(0);
            let call = self.calls.entry(index).or_default();
            if let Some(id) = fragment["id"].as_str() {
                call.id = id.to_string();
            }
            if let Some(name) = fragment.pointer("/function/name").and_then(Value::as_str) {
                call.name.push_str(name);
            }
            if let Some(args) = fragment.pointer("/function/arguments").and_then(Value::as_str) {
                call.arguments.push_str(args);
            }
        }
    }

    /// The stream ended: complete tool calls, then `Done`.
    fn finish(&mut self) {
        self.ended = true;
        for (index, call) in std::mem::take(&mut self.calls) {
            let id = if call.id.is_empty() { format!("call_{index}") } else { call.id };
            self.pending.push_back(Ok(LlmEvent::ToolCall(ToolCall { id, name: call.name, arguments: call.arguments })));
        }
        self.pending.push_back(Ok(LlmEvent::Done(self.usage.clone())));
    }
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

impl LanguageModel for OpenAiLlm {
    fn name(&self) -> String {
        format!("{} at {}", self.model, self.base_url)
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<LlmStream, LlmError>> {
        Box::pin(async move {
            let endpoint = self.base_url.clone();
            let body = request.to_openai(&self.model);
            let chunks = self
                .client
                .chat()
                .create_stream_byot::<Value, Value>(body)
                .await
                .map_err(|e| LlmError::Request { endpoint: endpoint.clone(), reason: e.to_string() })?;
            let state = StreamState { chunks: chunks.boxed(), endpoint, calls: BTreeMap::new(), usage: Usage::default(), pending: VecDeque::new(), ended: false };
            let events = futures::stream::unfold(state, |mut state| async move {
                loop {
                    if let Some(event) = state.pending.pop_front() {
                        return Some((event, state));
                    }
                    if state.ended {
                        return None;
                    }
                    match state.chunks.next().await {
                        Some(Ok(chunk)) => state.absorb(&chunk),
                        Some(Err(e)) => {
                            state.ended = true;
                            let reason = e.to_string();
                            let error = match e {
                                OpenAIError::JSONDeserialize(..) => LlmError::Garbage { endpoint: state.endpoint.clone(), reason },
                                _ => LlmError::Request { endpoint: state.endpoint.clone(), reason },
                            };
                            state.pending.push_back(Err(error));
                        }
                        None => state.finish(),
                    }
                }
            });
            Ok(events.boxed())
        })
    }
}
