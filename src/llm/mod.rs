//! Language models: one trait, one file per provider.
//!
//! Every provider speaks the OpenAI chat-completions wire format — the local engine
//! (`ringline-llm`, a supervised child process on loopback) as much as any cloud endpoint —
//! so the turn manager sees one stream of [`LlmEvent`]s whatever answers it.

pub mod local;
pub mod openai;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error("the LLM engine could not start: {0}")]
    Engine(String),
    #[error("the LLM endpoint {endpoint} failed: {reason}")]
    Request { endpoint: String, reason: String },
    #[error("the LLM endpoint {endpoint} sent something unreadable: {reason}")]
    Garbage { endpoint: String, reason: String },
    #[error("the environment variable {0} (named by the assistant's api_key_env) is not set: export it with the provider's key")]
    MissingKey(String),
}

/// One message of the conversation, in the OpenAI roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    System { content: String },
    User { content: String },
    Assistant {
        content: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    Tool { tool_call_id: String, content: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
}

impl Message {
    fn to_openai(&self) -> Value {
        match self {
            Message::System { content } => json!({ "role": "system", "content": content }),
            Message::User { content } => json!({ "role": "user", "content": content }),
            Message::Assistant { content, tool_calls } if tool_calls.is_empty() => json!({ "role": "assistant", "content": content }),
            Message::Assistant { content, tool_calls } => json!({
                "role": "assistant",
                "content": if content.is_empty() { Value::Null } else { json!(content) },
                "tool_calls": tool_calls.iter().map(|c| json!({
                    "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments }
                })).collect::<Vec<_>>(),
            }),
            Message::Tool { tool_call_id, content } => json!({ "role": "tool", "tool_call_id": tool_call_id, "content": content }),
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: usize,
    pub temperature: f32,
    /// A JSON Schema the reply must follow (OpenAI's `response_format: json_schema`; the local
    /// engine enforces it with a grammar).
    pub schema: Option<Value>,
}

impl ChatRequest {
    /// The request body, OpenAI format, streaming.
    pub fn to_openai(&self, model: &str) -> Value {
        let mut body = json!({
            "model": model,
            "messages": self.messages.iter().map(Message::to_openai).collect::<Vec<_>>(),
            "stream": true,
            "stream_options": { "include_usage": true },
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        });
        if let Some(schema) = &self.schema {
            body["response_format"] = json!({ "type": "json_schema", "json_schema": { "name": "answer", "schema": schema, "strict": true } });
        }
        if !self.tools.is_empty() {
            body["tools"] = self
                .tools
                .iter()
                .map(|t| json!({ "type": "function", "function": { "name": t.name, "description": t.description, "parameters": t.parameters } }))
                .collect();
        }
        body
    }
}

/// The whole reply's text (tool calls ignored): for short structured answers.
pub async fn complete_text(llm: &dyn LanguageModel, request: ChatRequest) -> Result<String, LlmError> {
    use futures::StreamExt;
    let mut stream = llm.stream(request).await?;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        if let LlmEvent::Text(piece) = event? {
            text.push_str(&piece);
        }
    }
    Ok(text)
}

/// What a streaming completion yields.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    Text(String),
    ToolCall(ToolCall),
    Done(Usage),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// Seconds the engine spent on the prompt's new tokens, and on generating, where it says
    /// (the local engine does; cloud endpoints don't).
    pub prompt_secs: Option<f64>,
    pub decode_secs: Option<f64>,
}

pub type LlmStream = BoxStream<'static, Result<LlmEvent, LlmError>>;

/// Anything that streams chat completions. Dropping the stream cancels the generation.
pub trait LanguageModel: Send + Sync {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<LlmStream, LlmError>>;
    /// A short name for logs and metrics.
    fn name(&self) -> String;
    /// Gets ready to answer (starts a local engine); cheap for remote endpoints.
    fn warm_up(&self) -> BoxFuture<'_, Result<(), LlmError>> {
        Box::pin(async { Ok(()) })
    }
}
