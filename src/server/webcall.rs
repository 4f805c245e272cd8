//! The browser web call: a short-lived token for one assistant, the call's WebSocket, and the
//! embeddable widget.
//!
//! A workspace's backend asks for a token with its API key (`POST /v1/webcall/token`) and
//! hands it to the page; the browser opens `GET /v1/webcall/ws?token=…` with it (a browser
//! cannot set headers on a WebSocket). The token is signed by the server (HMAC under a key
//! derived from the secrets key, so every worker checks it alike), names the workspace, the
//! assistant, its variables, the call's id and an expiry, and is good for one call: the call's
//! id is taken when the socket opens. The wire format is in `transport/webcall.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::assistants::from_stored;
use super::auth::Auth;
use super::calls::call_variables;
use super::error::{ApiError, ApiJson, ErrorBody};
use super::runner::{AssistantOwner, Connect};
use super::AppState;
use crate::store::{self, CallRecord};
use crate::transport::stream::StreamLine;
use crate::transport::webcall::{self, FromBrowser, ToBrowser};

/// The widget: one script, no build step.
const WIDGET: &str = include_str!("webcall.js");
/// A page around the widget, for trying a token out.
const PAGE: &str = include_str!("webcall.html");

const DEFAULT_TTL_S: u64 = 300;
const MAX_TTL_S: u64 = 3_600;
const TOKEN_PURPOSE: &str = "webcall-token-v1";

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub assistant_id: String,
    /// The call's dynamic variables, as for an outbound call.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub dynamic_variables: BTreeMap<String, Value>,
    /// How long the token may be used to start the call (seconds, ≤ 3600; default 300).
    pub ttl_s: Option<u64>,
    /// Record the call; default: the assistant's `recording`.
    pub record: Option<bool>,
    /// Who is on the page (Ringg's `visitor_info`: `name`, `page_url`, …), kept with the call
    /// as its metadata.
    #[schema(value_type = Option<Object>)]
    pub visitor_info: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    /// The id the call will have once the browser connects.
    pub call_id: String,
    pub expires_at: String,
    /// The WebSocket path (on this server) the browser opens with the token.
    pub websocket_path: String,
}

/// What a token carries (signed, not secret: the page holds it).
#[derive(Serialize, Deserialize)]
struct Claims {
    call_id: String,
    workspace_id: String,
    assistant_id: String,
    variables: BTreeMap<String, String>,
    expires_ms: i64,
    record: bool,
    /// `{"visitor_info": …}` when the page said who is there.
    #[serde(default)]
    metadata: Value,
}

/// The most JSON `visitor_info` may hold (it travels inside the token).
const MAX_VISITOR_INFO_BYTES: usize = 2 * 1024;

/// A token for one browser call to an assistant.
#[utoipa::path(post, path = "/v1/webcall/token", tag = "calls", request_body = TokenRequest,
    responses((status = 201, body = TokenResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn token(State(state): State<AppState>, auth: Auth, ApiJson(request): ApiJson<TokenRequest>) -> Result<impl IntoResponse, ApiError> {
    let record = state.store.assistant(&auth.workspace_id, &request.assistant_id).await?.ok_or_else(|| ApiError::not_found("assistant", &request.assistant_id).with_field("assistant_id"))?;
    let assistant = from_stored(&record.id, record.current_version, &record.spec)?;
    let variables = call_variables(&assistant, &request.dynamic_variables)?;
    let ttl = request.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if ttl == 0 || ttl > MAX_TTL_S {
        return Err(ApiError::invalid("ttl_s", format!("is {ttl}; give 1..{MAX_TTL_S} seconds")));
    }
    let metadata = match request.visitor_info {
        None | Some(Value::Null) => json!({}),
        Some(info @ Value::Object(_)) if info.to_string().len() <= MAX_VISITOR_INFO_BYTES => json!({ "visitor_info": info }),
        Some(Value::Object(_)) => return Err(ApiError::invalid("visitor_info", format!("is more than {MAX_VISITOR_INFO_BYTES} bytes of JSON; keep it to a name, a page and a few fields"))),
        Some(_) => return Err(ApiError::invalid("visitor_info", "must be a JSON object such as {\"name\": \"Website Visitor\", \"page_url\": \"https://example.com/pricing\"}")),
    };
    let claims = Claims {
        metadata,
        call_id: store::new_id("call"),
        workspace_id: auth.workspace_id.clone(),
        assistant_id: record.id.clone(),
        variables,
        expires_ms: store::now_ms() + (ttl as i64) * 1000,
        record: request.record.unwrap_or(assistant.spec.recording),
    };
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let mac = state.vault.mac(TOKEN_PURPOSE, payload.as_bytes()).map_err(|e| ApiError::internal(e.to_string()))?;
    let token = format!("{payload}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac));
    let response = TokenResponse {
        websocket_path: format!("/v1/webcall/ws?token={token}"),
        token,
        call_id: claims.call_id,
        expires_at: super::assistants::rfc3339(claims.expires_ms),
    };
    Ok((StatusCode::CREATED, Json(response)))
}

/// The claims of a token this server signed that has not expired.
fn verify(state: &AppState, token: &str) -> Result<Claims, ApiError> {
    let refuse = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message.to_string()).with_field("token");
    let (payload, mac) = token.split_once('.').ok_or_else(|| refuse("not a web call token; get one from POST /v1/webcall/token"))?;
    let given = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(mac).map_err(|_| refuse("the token's signature is not base64"))?;
    let expected = state.vault.mac(TOKEN_PURPOSE, payload.as_bytes()).map_err(|e| ApiError::internal(e.to_string()))?;
    if expected.is_empty() || given.len() != expected.len() || !openssl::memcmp::eq(&given, &expected) {
        return Err(refuse("the token's signature does not match: it was not issued by this server, or it was changed"));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).map_err(|_| refuse("the token is not base64"))?;
    let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| refuse("the token's claims do not parse"))?;
    if claims.expires_ms < store::now_ms() {
        return Err(refuse("the token has expired; get a new one from POST /v1/webcall/token"));
    }
    Ok(claims)
}

#[derive(Deserialize)]
pub struct SocketQuery {
    token: Option<String>,
}

/// `GET /v1/webcall/ws?token=…`: the call itself.
pub async fn socket(State(state): State<AppState>, Query(query): Query<SocketQuery>, ws: WebSocketUpgrade) -> Result<Response, ApiError> {
    let token = query.token.ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "give the token as ?token=").with_field("token"))?;
    let claims = verify(&state, &token)?;
    if state.store.call_any_workspace(&claims.call_id).await?.is_some() {
        return Err(ApiError::conflict("token_used", "this token has already started its call; get a new one for a new call").with_field("token"));
    }
    let record = state.store.assistant(&claims.workspace_id, &claims.assistant_id).await?.ok_or_else(|| ApiError::not_found("assistant", &claims.assistant_id))?;
    let assistant = Arc::new(from_stored(&record.id, record.current_version, &record.spec)?);
    let owner = if record.source == "file" { AssistantOwner::Deployment } else { AssistantOwner::Workspace };
    state.limits.check_call(&state.store, &claims.workspace_id, state.runner.load_for(&assistant)).await?;
    let now = store::now_ms();
    let call = CallRecord {
        id: claims.call_id.clone(),
        workspace_id: claims.workspace_id.clone(),
        assistant_id: record.id.clone(),
        assistant_version: record.current_version,
        direction: "web".into(),
        to_number: "web".into(),
        from_number: "browser".into(),
        status: crate::call::CallStatus::Initiated.as_str().into(),
        dynamic_variables: serde_json::to_string(&claims.variables).unwrap_or_default(),
        metadata: if claims.metadata.is_object() { claims.metadata.to_string() } else { "{}".into() },
        worker_id: Some(state.worker_id.to_string()),
        day: store::day_of(now),
        created_at: now,
        ..CallRecord::default()
    };
    match state.store.insert_call(&call, super::calls::IDEMPOTENCY_WINDOW_MS, &call.id).await {
        Ok(Ok(())) => {}
        // Two sockets raced for one token: the other one has the call.
        _ => return Err(ApiError::conflict("token_used", "this token has already started its call; get a new one for a new call").with_field("token")),
    }
    state.metrics.call_started();
    Ok(ws
        .max_message_size(webcall::MAX_MESSAGE_BYTES)
        .max_frame_size(webcall::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| run_socket(socket, state, call, assistant, owner, claims.record))
        .into_response())
}

async fn run_socket(socket: WebSocket, state: AppState, call: CallRecord, assistant: Arc<crate::assistant::Assistant>, owner: AssistantOwner, record: bool) {
    let (mut sink, mut messages) = socket.split();
    let (line, input, mut outgoing) = StreamLine::start(&call.id, webcall::RATE, None);
    let hello = json!({ "type": "call", "call_id": call.id }).to_string();
    if sink.send(Message::Text(hello.into())).await.is_err() {
        line.close();
    }
    state.runner.start(call.clone(), assistant, owner, Connect::Line(line.clone(), input), record);
    let ended = line.ended();
    let mut reason = "the call ended".to_string();
    loop {
        tokio::select! {
            _ = ended.cancelled() => break,
            Some(message) = outgoing.recv() => {
                let Some(frame) = frame(&message) else { continue };
                if sink.send(frame).await.is_err() {
                    line.fail("the browser's socket closed while sending");
                    break;
                }
            }
            incoming = messages.next() => {
                let parsed = match incoming {
                    Some(Ok(Message::Binary(bytes))) => webcall::parse_audio(&bytes),
                    Some(Ok(Message::Text(text))) => webcall::parse_text(&text),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => {
                        reason = "the caller hung up".into();
                        line.close();
                        break;
                    }
                    Some(Err(error)) => Err(format!("the browser's socket failed: {error}")),
                };
                match parsed {
                    Ok(FromBrowser::Audio(samples)) => line.caller_audio(samples),
                    Ok(FromBrowser::Dtmf(digit)) => line.caller_key(digit),
                    Ok(FromBrowser::Hangup) => {
                        reason = "the caller hung up".into();
                        line.close();
                        break;
                    }
                    Err(problem) => {
                        line.fail(&format!("a malformed web call message: {problem}"));
                        reason = problem;
                        break;
                    }
                }
            }
        }
    }
    while let Ok(message) = outgoing.try_recv() {
        let Some(frame) = frame(&message) else { continue };
        if sink.send(frame).await.is_err() {
            break;
        }
    }
    line.close();
    let _ = sink.send(Message::Text(json!({ "type": "ended", "reason": reason }).to_string().into())).await;
    let _ = sink.close().await;
}

/// The socket frame for what the line sends, if the browser gets one.
fn frame(message: &crate::transport::stream::Outgoing) -> Option<Message> {
    Some(match webcall::encode(message)? {
        ToBrowser::Binary(bytes) => Message::Binary(bytes.into()),
        ToBrowser::Text(text) => Message::Text(text.into()),
    })
}

/// `GET /webcall.js`: the embeddable widget.
pub async fn widget() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=300")], WIDGET).into_response()
}

/// `GET /webcall`: a page with the widget, started by a token in the address (`?token=`).
pub async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}
