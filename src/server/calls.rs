//! Calls over the API: place one, follow it live, read what it left, control it.
//!
//! Every check runs before anything is stored — an unknown assistant, a bad number, a missing
//! variable each get a 4xx naming the field, and no half-created call. An idempotency key
//! makes a retried request return the first call for five minutes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::assistants::{from_stored, rfc3339};
use super::auth::Auth;
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::numbers::valid_number;
use crate::call::{CallStatus as Status, Speaker};
use super::runner::{default_sandbox_caller, AssistantOwner, Connect, Control};
use sha2::Digest;
use super::AppState;
use crate::assistant::prompt;
use crate::pipeline::metrics::percentile;
use crate::store::{self, CallRecord, HistoryFilter};
use crate::simulation::CallerScript;

/// A retried request with the same key within this window returns the first call.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 5 * 60 * 1000;

/// The caller id the sandbox uses when the request gives none.
const SANDBOX_FROM: &str = "+15005550000";
/// The longest value of one dynamic variable.
const MAX_VARIABLE_BYTES: usize = 4 * 1024;
/// The most JSON a call's metadata may hold.
const MAX_METADATA_BYTES: usize = 32 * 1024;
/// The most keys one DTMF action presses.

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboundRequest {
    pub assistant_id: String,
    /// E.164; sandbox numbers (+1 500 555 XXXX) reach the simulated line.
    pub to_number: String,
    /// The caller id; defaults to the workspace's number assigned to the assistant.
    pub from_number: Option<String>,
    /// Values for the assistant's declared variables.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub dynamic_variables: BTreeMap<String, Value>,
    pub webhook_url: Option<String>,
    /// Kept with the call; `sandbox_caller` (a caller script) drives the sandbox line.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub idempotency_key: Option<String>,
    /// Record this call (a stereo WAV: caller left, agent right); default: the assistant's
    /// `recording`.
    pub record: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct CallStatus {
    pub call_id: String,
    /// initiated, ringing, in-progress, ending, completed, failed, no-answer, busy, canceled
    pub status: String,
    pub reason: Option<String>,
    pub assistant_id: String,
    pub assistant_version: i64,
    pub to_number: String,
    pub from_number: String,
    pub disposition: Option<String>,
    /// Why the disposition was chosen, when the agent or the flow said.
    pub disposition_notes: Option<String>,
    /// What the call extracted: a flow's slots (party size, time, name…), typed.
    #[schema(value_type = Object)]
    pub extracted: Value,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// The same, in whole seconds (rounded), as Ringg's clients read it.
    pub duration_seconds: Option<i64>,
    /// The after-call summary, once the call has ended.
    pub summary: Option<String>,
    /// Whether the call reached its assistant's goal (null when unknown), and why.
    pub success: Option<bool>,
    pub success_reason: Option<String>,
    /// The campaign it was placed for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
}

impl From<&CallRecord> for CallStatus {
    fn from(call: &CallRecord) -> Self {
        CallStatus {
            call_id: call.id.clone(),
            status: call.status.clone(),
            reason: call.status_reason.clone(),
            assistant_id: call.assistant_id.clone(),
            assistant_version: call.assistant_version,
            to_number: call.to_number.clone(),
            from_number: call.from_number.clone(),
            disposition: call.disposition.clone(),
            disposition_notes: call.disposition_notes.clone(),
            extracted: call.extracted.as_deref().and_then(|e| serde_json::from_str(e).ok()).unwrap_or_else(|| json!({})),
            created_at: rfc3339(call.created_at),
            started_at: call.started_at.map(rfc3339),
            ended_at: call.ended_at.map(rfc3339),
            duration_ms: call.duration_ms,
            duration_seconds: call.duration_ms.map(|ms| (ms + 500) / 1000),
            summary: call.summary.clone(),
            success: call.success.map(|s| s != 0),
            success_reason: call.success_reason.clone(),
            campaign_id: call.campaign_id.clone(),
        }
    }
}

/// A call's dynamic variables as text, checked against the assistant's declarations; errors
/// name `dynamic_variables.<name>`.
pub fn call_variables(assistant: &crate::assistant::Assistant, given: &BTreeMap<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut variables = BTreeMap::new();
    for (name, value) in given {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            _ => return Err(ApiError::invalid(format!("dynamic_variables.{name}"), format!("`{name}` must be a string, number or boolean"))),
        };
        if text.len() > MAX_VARIABLE_BYTES {
            return Err(ApiError::invalid(format!("dynamic_variables.{name}"), format!("is {} bytes long; a variable's value is at most {MAX_VARIABLE_BYTES}", text.len())));
        }
        variables.insert(name.clone(), text);
    }
    prompt::resolve_variables(assistant, &variables).map_err(|error| {
        let field = format!("dynamic_variables.{}", error.name());
        let (code, message) = match &error {
            prompt::VariableError::Missing { name, assistant } => ("missing_variable", format!("variable `{name}` is required by {assistant}: pass it in dynamic_variables, e.g. {{\"{name}\": \"…\"}}")),
            other => ("invalid_variable", other.to_string()),
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_field(field)
    })?;
    Ok(variables)
}

/// A call's recording: a stereo WAV, the caller on the left and the agent on the right.
#[utoipa::path(get, path = "/v1/calls/{id}/recording", tag = "calls",
    responses((status = 200, description = "audio/wav"), (status = 404, body = ErrorBody)))]
pub async fn recording(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<axum::response::Response, ApiError> {
    let call = find(&state, &auth, &id).await?;
    let path = state.runner.recording_path(&call.id);
    let file = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError::new(StatusCode::NOT_FOUND, "recording_not_found", format!("call {id} has no recording here (record a call with `record: true`, or `recording: true` on its assistant)"))
    })?;
    let length = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(axum::http::header::CONTENT_TYPE, "audio/wav".to_string()), (axum::http::header::CONTENT_LENGTH, length.to_string())], body).into_response())
}

/// Delete an ended call: its record, transcript, events, turns and recording.
#[utoipa::path(delete, path = "/v1/calls/{id}", tag = "calls",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let call = find(&state, &auth, &id).await?;
    if call.is_live() {
        return Err(ApiError::conflict("call_in_progress", format!("call {id} is `{}`; end it first (POST /v1/calls/{id}/end)", call.status)));
    }
    let path = state.runner.recording_path(&call.id);
    if let Err(error) = tokio::fs::remove_file(&path).await {
        if error.kind() != std::io::ErrorKind::NotFound {
            return Err(ApiError::internal(format!("cannot delete the call's recording: {error}")));
        }
    }
    state.store.delete_call(&auth.workspace_id, &call.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Place an outbound call.
#[utoipa::path(post, path = "/v1/calls/outbound", tag = "calls", request_body = OutboundRequest,
    responses((status = 201, body = CallStatus), (status = 200, description = "an idempotent retry: the first call", body = CallStatus),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn outbound(State(state): State<AppState>, auth: Auth, ApiJson(request): ApiJson<OutboundRequest>) -> Result<impl IntoResponse, ApiError> {
    Ok(match place(&state, &auth, request, Placement::default()).await? {
        Placed::New(call) => (StatusCode::CREATED, Json(CallStatus::from(&call))),
        Placed::Retry(call) => (StatusCode::OK, Json(CallStatus::from(&call))),
    })
}

/// What a dialect adds to an outbound call beyond Ringline's own request.
#[derive(Debug, Default, Clone)]
pub struct Placement {
    /// The Ringez session and agent (`X-Agent-ID`) it is placed for.
    pub session_id: Option<String>,
    pub agent_id: Option<String>,
    /// `ringez` for Ringez's paths.
    pub dialect: Option<String>,
    /// Bridge mode: once answered, hand the call to this number.
    pub transfer_on_answer: Option<String>,
    /// A hang-up after this long (Ringez's `call_settings.max_duration`).
    pub max_duration_s: Option<u32>,
    /// The campaign it is placed for.
    pub campaign_id: Option<String>,
}

/// An outbound call placed, or the first one again for a retried request.
pub enum Placed {
    New(CallRecord),
    Retry(CallRecord),
}

impl Placed {
    pub fn call(&self) -> &CallRecord {
        match self {
            Placed::New(call) | Placed::Retry(call) => call,
        }
    }
}

/// Places an outbound call: the one implementation behind Ringline's, Ringg's and Ringez's
/// paths. Every check runs before anything is stored.
pub async fn place(state: &AppState, auth: &Auth, request: OutboundRequest, placement: Placement) -> Result<Placed, ApiError> {
    let record = state.store.assistant(&auth.workspace_id, &request.assistant_id).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "assistant_not_found", format!("no assistant `{}` in this workspace (GET /v1/assistants lists them)", request.assistant_id))
            .with_field("assistant_id")
    })?;
    let mut assistant = from_stored(&record.id, record.current_version, &record.spec)?;
    if let Some(limit) = placement.max_duration_s {
        assistant.spec.turn.max_duration_s = assistant.spec.turn.max_duration_s.min(limit as f32);
    }
    let assistant = std::sync::Arc::new(assistant);
    let owner = if record.source == "file" { AssistantOwner::Deployment } else { AssistantOwner::Workspace };

    let (to_number, to) = valid_number("to_number", &request.to_number, None)?;
    let to = super::numbers::with_telephony(to, state.can_dial_out());
    if !to.callable {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "number_not_callable", format!("{to_number}: {}", to.reason.unwrap_or_default())).with_field("to_number"));
    }
    let (numbers, _) = state.store.numbers(&auth.workspace_id, i64::MAX, 0).await?;
    let from_number = match &request.from_number {
        Some(raw) => {
            let e164 = valid_number("from_number", raw, None)?.0;
            if !numbers.iter().any(|n| n.e164 == e164) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "from_number_not_owned",
                    format!("{e164} is not one of this workspace's numbers; add it with POST /v1/numbers, or leave from_number out"),
                )
                .with_field("from_number"));
            }
            e164
        }
        None => numbers.into_iter().find(|n| n.assistant_id.as_deref() == Some(record.id.as_str())).map(|n| n.e164).unwrap_or_else(|| SANDBOX_FROM.to_string()),
    };

    let variables = if placement.dialect.as_deref() == Some("ringez") && assistant.spec.variables.contains_key("task") {
        call_variables(&assistant, &super::ringez::calling::with_task(request.dynamic_variables.clone(), &request.metadata))?
    } else {
        call_variables(&assistant, &request.dynamic_variables)?
    };

    if let Some(url) = &request.webhook_url {
        state.runner.egress().check_url_resolved(url).await.map_err(|e| ApiError::invalid("webhook_url", e.to_string()))?;
    }
    let metadata = match &request.metadata {
        Value::Null => json!({}),
        Value::Object(_) => request.metadata.clone(),
        _ => return Err(ApiError::invalid("metadata", "must be a JSON object")),
    };
    if metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(ApiError::invalid("metadata", format!("is more than {} KB of JSON", MAX_METADATA_BYTES / 1024)));
    }
    let script: CallerScript = match metadata.get("sandbox_caller") {
        Some(value) => serde_path_to_error::deserialize(value.clone()).map_err(|e| ApiError::invalid(format!("metadata.sandbox_caller.{}", e.path()), format!("not a caller script: {}", e.inner())))?,
        None => default_sandbox_caller(),
    };
    if let Some((field, message)) = script.problems_over_api().into_iter().next() {
        return Err(ApiError::invalid(format!("metadata.sandbox_caller.{field}"), message));
    }
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > 200 {
            return Err(ApiError::invalid("idempotency_key", "must be 1..200 characters"));
        }
    }
    state.limits.check_call(&state.store, &auth.workspace_id, state.runner.load_for(&assistant)).await?;
    let digest = hex::encode(sha2::Sha256::digest(serde_json::to_vec(&request).unwrap_or_default()));

    let now = store::now_ms();
    let call = CallRecord {
        id: store::new_id("call"),
        workspace_id: auth.workspace_id.clone(),
        assistant_id: record.id.clone(),
        assistant_version: record.current_version,
        direction: "outbound".into(),
        to_number,
        from_number,
        status: Status::Initiated.as_str().into(),
        dynamic_variables: serde_json::to_string(&variables).unwrap_or_default(),
        metadata: metadata.to_string(),
        webhook_url: request.webhook_url.clone(),
        idempotency_key: request.idempotency_key.clone(),
        worker_id: Some(state.worker_id.to_string()),
        day: store::day_of(now),
        created_at: now,
        session_id: placement.session_id.clone(),
        agent_id: placement.agent_id.clone(),
        dialect: placement.dialect.clone(),
        campaign_id: placement.campaign_id.clone(),
        ..CallRecord::default()
    };
    match state.store.insert_call(&call, IDEMPOTENCY_WINDOW_MS, &digest).await? {
        Ok(()) => {
            state.metrics.call_started();
            let record = request.record.unwrap_or(assistant.spec.recording);
            let connect = Connect::Dial { script, transfer_on_answer: placement.transfer_on_answer };
            state.runner.start(call.clone(), assistant, owner, connect, record);
            Ok(Placed::New(call))
        }
        Err(hit) if !hit.same_request => Err(ApiError::conflict(
            "idempotency_key_reused",
            format!("idempotency_key was used for a different request (call {}) in the last 5 minutes; use a new key for a new call", hit.call_id),
        )
        .with_field("idempotency_key")),
        Err(hit) => {
            let first = state.store.call(&auth.workspace_id, &hit.call_id).await?.ok_or_else(|| ApiError::internal("the idempotent call vanished"))?;
            Ok(Placed::Retry(first))
        }
    }
}

pub async fn find(state: &AppState, auth: &Auth, id: &str) -> Result<CallRecord, ApiError> {
    state.store.call(&auth.workspace_id, id).await?.ok_or_else(|| ApiError::not_found("call", id))
}

/// A call's status.
#[utoipa::path(get, path = "/v1/calls/{id}/status", tag = "calls", responses((status = 200, body = CallStatus), (status = 404, body = ErrorBody)))]
pub async fn status(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Json<CallStatus>, ApiError> {
    Ok(Json(CallStatus::from(&find(&state, &auth, &id).await?)))
}

#[derive(Serialize, ToSchema)]
pub struct TranscriptEntry {
    /// `agent` or `caller`.
    pub speaker: String,
    /// The same as Ringg names it: `agent` or `customer`.
    pub role: String,
    pub text: String,
    /// Milliseconds from the start of the call.
    pub at_ms: i64,
    /// The agent was cut off here (the text is what the caller heard).
    pub interrupted: bool,
    /// A caller line's intent, sentiment and entities (present once analysed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub analysis: Option<Value>,
    /// How sure speech recognition was of a caller line's words (0..1; geometric mean of the
    /// words' probabilities). Absent for agent lines and providers that report none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct Transcript {
    pub call_id: String,
    pub status: String,
    pub transcript: Vec<TranscriptEntry>,
    /// The assistant's language (a BCP 47 tag such as en-US).
    pub language: String,
}

/// Ringg's name for a transcript speaker: the caller is the `customer`.
pub fn role_of(speaker: Speaker) -> &'static str {
    match speaker {
        Speaker::Agent => "agent",
        Speaker::Caller => "customer",
    }
}

/// The language of the assistant version a call ran.
pub async fn call_language(state: &AppState, call: &CallRecord) -> String {
    let spec = state.store.assistant_version(&call.assistant_id, call.assistant_version).await.ok().flatten();
    spec.and_then(|spec| serde_json::from_str::<Value>(&spec).ok())
        .and_then(|spec| spec.get("language").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "en-US".into())
}

/// A call's transcript so far (it grows while the call runs).
#[utoipa::path(get, path = "/v1/calls/{id}/transcript", tag = "calls", responses((status = 200, body = Transcript), (status = 404, body = ErrorBody)))]
pub async fn transcript(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Json<Transcript>, ApiError> {
    let call = find(&state, &auth, &id).await?;
    let lines = state.store.transcript(&id).await?;
    let language = call_language(&state, &call).await;
    Ok(Json(Transcript {
        call_id: id,
        status: call.status,
        transcript: lines.into_iter().map(|l| TranscriptEntry { role: role_of(l.speaker).into(), speaker: l.speaker.to_string(), text: l.text, at_ms: l.at_ms, interrupted: l.interrupted, analysis: l.analysis, confidence: l.confidence }).collect(),
        language,
    }))
}

/// Everything about a call: record, transcript, turns and per-stage latency percentiles.
#[utoipa::path(get, path = "/v1/calls/{id}", tag = "calls", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn detail(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let call = find(&state, &auth, &id).await?;
    let lines = state.store.transcript(&id).await?;
    let turns = state.store.turns(&id).await?;
    let stages: [(&str, fn(&store::TurnRecord) -> f64); 5] = [
        ("end_of_turn", |t| t.end_of_turn_ms),
        ("stt_final", |t| t.stt_final_ms),
        ("llm_first_token", |t| t.llm_first_token_ms),
        ("tts_first_audio", |t| t.tts_first_audio_ms),
        ("voice_to_voice", |t| t.voice_to_voice_ms),
    ];
    let mut latency = serde_json::Map::new();
    for (name, get) in stages {
        let values: Vec<Duration> = turns.iter().map(|t| Duration::from_secs_f64(get(t).max(0.0) / 1000.0)).collect();
        let p = |q| percentile(&values, q).map(|d| (d.as_secs_f64() * 1000.0).round());
        latency.insert(name.into(), json!({ "p50_ms": p(0.5), "p95_ms": p(0.95) }));
    }
    Ok(Json(json!({
        "call_id": call.id,
        "status": call.status,
        "reason": call.status_reason,
        "direction": call.direction,
        "assistant_id": call.assistant_id,
        "assistant_version": call.assistant_version,
        "to_number": call.to_number,
        "from_number": call.from_number,
        "disposition": call.disposition,
        "disposition_notes": call.disposition_notes,
        "extracted": call.extracted.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok()).unwrap_or_else(|| json!({})),
        "summary": call.summary,
        "success": call.success.map(|s| s != 0),
        "success_reason": call.success_reason,
        "recording_url": state.runner.recording_path(&call.id).is_file().then(|| format!("/v1/calls/{}/recording", call.id)),
        "ended_by": call.ended_by,
        "dynamic_variables": serde_json::from_str::<Value>(&call.dynamic_variables).unwrap_or(Value::Null),
        "metadata": serde_json::from_str::<Value>(&call.metadata).unwrap_or(Value::Null),
        "webhook_url": call.webhook_url,
        "idempotency_key": call.idempotency_key,
        "campaign_id": call.campaign_id,
        "created_at": rfc3339(call.created_at),
        "started_at": call.started_at.map(rfc3339),
        "ended_at": call.ended_at.map(rfc3339),
        "duration_ms": call.duration_ms,
        "duration_seconds": call.duration_ms.map(|ms| (ms + 500) / 1000),
        "transcript": lines.iter().map(|l| {
            let mut entry = json!({ "speaker": l.speaker, "role": role_of(l.speaker), "text": l.text, "at_ms": l.at_ms, "interrupted": l.interrupted });
            if let Some(confidence) = l.confidence {
                entry["confidence"] = json!(confidence);
            }
            if let Some(analysis) = &l.analysis {
                entry["analysis"] = analysis.clone();
            }
            entry
        }).collect::<Vec<_>>(),
        "analysis": call_analysis(&lines),
        "turns": turns.iter().map(|t| json!({
            "turn": t.turn, "end_of_turn_ms": t.end_of_turn_ms, "stt_final_ms": t.stt_final_ms, "llm_first_token_ms": t.llm_first_token_ms,
            "tts_first_audio_ms": t.tts_first_audio_ms, "voice_to_voice_ms": t.voice_to_voice_ms,
        })).collect::<Vec<_>>(),
        "latency": latency,
    })))
}

/// A call's analysis: per caller line (intent, sentiment, entities, escalation) and for the
/// whole call (intents, sentiment, escalation, summary, disposition, extracted fields).
#[utoipa::path(get, path = "/v1/calls/{id}/analysis", tag = "calls", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn analysis(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let call = find(&state, &auth, &id).await?;
    let lines = state.store.transcript(&id).await?;
    let turns: Vec<Value> = lines
        .iter()
        .filter(|l| l.speaker == Speaker::Caller)
        .map(|l| {
            let mut turn = json!({ "text": l.text, "at_ms": l.at_ms });
            if let Some(Value::Object(found)) = &l.analysis {
                for key in ["intent", "sentiment", "entities", "escalation"] {
                    turn[key] = found.get(key).cloned().unwrap_or(Value::Null);
                }
            }
            turn
        })
        .collect();
    let mut whole = call_analysis(&lines);
    whole["summary"] = json!(call.summary);
    whole["disposition"] = json!(call.disposition);
    whole["disposition_notes"] = json!(call.disposition_notes);
    whole["extracted"] = call.extracted.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok()).unwrap_or_else(|| json!({}));
    whole["success"] = json!(call.success.map(|s| s != 0));
    whole["success_reason"] = json!(call.success_reason);
    Ok(Json(json!({ "call_id": call.id, "status": call.status, "call": whole, "turns": turns })))
}

/// The call's analysis over its caller lines: intents in order, mean and lowest sentiment,
/// and whether the caller escalated.
fn call_analysis(lines: &[store::TranscriptLine]) -> Value {
    let analysed: Vec<&Value> = lines.iter().filter_map(|l| l.analysis.as_ref()).collect();
    let scores: Vec<f64> = analysed.iter().filter_map(|a| a["sentiment"]["score"].as_f64()).collect();
    let intents: Vec<&str> = analysed.iter().filter_map(|a| a["intent"]["intent"].as_str()).filter(|i| *i != crate::analysis::intent::UNKNOWN).collect();
    let mean = (!scores.is_empty()).then(|| (scores.iter().sum::<f64>() / scores.len() as f64 * 1000.0).round() / 1000.0);
    let label = mean.map(|m| crate::analysis::Label::of(m as f32).as_str());
    json!({
        "intents": intents,
        "sentiment": { "mean": mean, "lowest": scores.iter().copied().reduce(f64::min), "label": label },
        "escalated": analysed.iter().any(|a| a["escalation"] == json!(true)),
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// RFC 3339 time or YYYY-MM-DD (inclusive).
    pub from: Option<String>,
    /// RFC 3339 time or YYYY-MM-DD (exclusive; a date means the end of that day).
    pub to: Option<String>,
    pub assistant_id: Option<String>,
    pub status: Option<String>,
    pub disposition: Option<String>,
    /// Calls in which a caller line had this intent.
    pub intent: Option<String>,
    /// Calls placed for this campaign.
    pub campaign_id: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// A time bound from the query: RFC 3339, or a date (its start, or its end for `to`).
pub fn time_bound(field: &str, raw: Option<&str>, end_of_day: bool, default: i64) -> Result<i64, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        let date = if end_of_day { date.succ_opt().unwrap_or(date) } else { date };
        return Ok(date.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or(default));
    }
    Err(ApiError::bad_request("invalid_query", format!("{field} `{raw}` is not a time: use RFC 3339 (2026-11-21T09:00:00Z) or a date (2026-11-21)")).with_field(field))
}


#[derive(Serialize, ToSchema)]
pub struct History {
    pub calls: Vec<CallStatus>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub has_more: bool,
}

/// Past and current calls, newest first, filtered.
#[utoipa::path(get, path = "/v1/calls/history", tag = "calls", params(HistoryQuery), responses((status = 200, body = History), (status = 400, body = ErrorBody)))]
pub async fn history(State(state): State<AppState>, auth: Auth, ApiQuery(query): ApiQuery<HistoryQuery>) -> Result<Json<History>, ApiError> {
    let (limit, offset) = super::assistants::Page { limit: query.limit, offset: query.offset }.resolve()?;
    if let Some(status) = &query.status {
        if Status::parse_lenient(status).is_none() {
            let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::bad_request("invalid_query", format!("status `{status}` is not one of {}", names.join(", "))).with_field("status"));
        }
    }
    let filter = HistoryFilter {
        from: time_bound("from", query.from.as_deref(), false, 0)?,
        to: time_bound("to", query.to.as_deref(), true, i64::MAX)?,
        assistant_id: query.assistant_id,
        status: query.status.as_deref().and_then(Status::parse_lenient).map(|s| s.as_str().to_string()),
        disposition: query.disposition,
        intent: query.intent,
        campaign_id: query.campaign_id,
        limit,
        offset,
        ..HistoryFilter::default()
    };
    let (calls, total) = state.store.history(&auth.workspace_id, &filter).await?;
    Ok(Json(History { has_more: offset + (calls.len() as i64) < total, calls: calls.iter().map(CallStatus::from).collect(), total, limit, offset }))
}

/// The call's live events (server-sent events): status changes, transcript lines (partial and
/// final), per-turn latency, barge-ins, actions. Starts from the first event (or after
/// `Last-Event-ID`) and ends when the call has ended.
#[utoipa::path(get, path = "/v1/calls/{id}/events", tag = "calls", responses((status = 200, description = "text/event-stream"), (status = 404, body = ErrorBody)))]
pub async fn events(State(state): State<AppState>, auth: Auth, Path(id): Path<String>, headers: HeaderMap) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    find(&state, &auth, &id).await?;
    let after: i64 = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let workspace = auth.workspace_id.clone();
    // Events are read back from the store, so any worker can serve any call's stream.
    let stream = futures::stream::unfold((state, id, workspace, after, false), |(state, id, workspace, after, done)| async move {
        if done {
            return None;
        }
        loop {
            let batch = state.store.events_after(&id, after).await.unwrap_or_default();
            if !batch.is_empty() {
                let last = batch.last().map(|e| e.seq).unwrap_or(after);
                return Some((futures::stream::iter(sse(batch)), (state, id, workspace, last, false)));
            }
            let ended = match state.store.call(&workspace, &id).await {
                Ok(Some(call)) => !call.is_live(),
                _ => true,
            };
            if ended {
                // One last read: the final status event may have landed after the check.
                let tail = state.store.events_after(&id, after).await.unwrap_or_default();
                return Some((futures::stream::iter(sse(tail)), (state, id, workspace, after, true)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    use futures::StreamExt;
    Ok(Sse::new(stream.flatten()).keep_alive(KeepAlive::default()))
}

/// Stored events as server-sent events, numbered for `Last-Event-ID`.
fn sse(events: Vec<store::EventRecord>) -> Vec<Result<Event, Infallible>> {
    events.into_iter().map(|e| Ok(Event::default().id(e.seq.to_string()).event(e.kind).data(e.data))).collect()
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EndRequest {
    pub reason: Option<String>,
}

/// End a live call (the agent hangs up). Answered at once; the status follows.
#[utoipa::path(post, path = "/v1/calls/{id}/end", tag = "calls", request_body(content = Option<EndRequest>, description = "optional: a reason"), responses((status = 202, body = CallStatus), (status = 409, body = ErrorBody)))]
pub async fn end(State(state): State<AppState>, auth: Auth, Path(id): Path<String>, body: axum::body::Bytes) -> Result<impl IntoResponse, ApiError> {
    let request: EndRequest = if body.is_empty() { EndRequest::default() } else { super::error::parse_json(&body)? };
    let call = find(&state, &auth, &id).await?;
    let reason = request.reason.unwrap_or_else(|| "ended through the API".into());
    let call = begin_ending(&state, &auth, call).await?;
    state.runner.send(&call, Control::Hangup { reason }).await?;
    Ok((StatusCode::ACCEPTED, Json(CallStatus::from(&call))))
}

/// Moves a call to `ending` at once, so that its status says so and later controls get 409;
/// returns the call as it now is.
async fn begin_ending(state: &AppState, auth: &Auth, call: CallRecord) -> Result<CallRecord, ApiError> {
    if call.status == Status::Ending.as_str() {
        return Err(ending_conflict(&call));
    }
    if !call.is_live() || !state.store.mark_ending(&call.id).await? {
        let now = find(state, auth, &call.id).await?;
        if now.status == Status::Ending.as_str() {
            return Err(ending_conflict(&now));
        }
        return Err(ApiError::conflict("call_not_active", format!("call {} already ended ({})", now.id, now.status)));
    }
    Ok(CallRecord { status: Status::Ending.as_str().into(), ..call })
}

fn ending_conflict(call: &CallRecord) -> ApiError {
    ApiError::conflict("call_ending", format!("call {} is already ending; it takes no more actions", call.id))
}

/// DTMF digits as a line takes them, or a 422 naming `digits`.
pub fn check_digits(digits: &str) -> Result<String, ApiError> {
    crate::audio::check_keys(digits).map_err(|fix| ApiError::invalid("digits", format!("`{}`: {fix}", crate::assistant::check::clip(digits))))?;
    Ok(digits.to_string())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, tag = "action", rename_all = "snake_case")]
pub enum ActionRequest {
    /// Press keys on the line (0-9, *, #, A-D; `w` waits half a second).
    Dtmf { digits: String },
    /// Put the call on hold: the agent neither hears nor speaks until `unhold`.
    Hold,
    Unhold,
    /// Hand the call to another number.
    Transfer { to_number: String },
    Hangup { reason: Option<String> },
}

/// Act on a live call: send DTMF, transfer, or hang up.
#[utoipa::path(post, path = "/v1/calls/{id}/actions", tag = "calls", request_body = ActionRequest,
    responses((status = 202, body = CallStatus), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn actions(State(state): State<AppState>, auth: Auth, Path(id): Path<String>, ApiJson(request): ApiJson<ActionRequest>) -> Result<impl IntoResponse, ApiError> {
    let control = match request {
        ActionRequest::Dtmf { digits } => {
            Control::Dtmf { digits: check_digits(&digits)? }
        }
        ActionRequest::Transfer { to_number } => Control::Transfer { to: valid_number("to_number", &to_number, None)?.0 },
        ActionRequest::Hangup { reason } => Control::Hangup { reason: reason.unwrap_or_else(|| "hung up through the API".into()) },
        ActionRequest::Hold => Control::Hold { on: true },
        ActionRequest::Unhold => Control::Hold { on: false },
    };
    let call = find(&state, &auth, &id).await?;
    let call = apply_control(&state, &auth, call, control).await?;
    Ok((StatusCode::ACCEPTED, Json(CallStatus::from(&call))))
}

/// Applies a control to a live call (the one implementation behind every dialect's actions):
/// hang-ups and transfers end it once; keys and hold need it answered. Returns the call as it
/// now is.
pub async fn apply_control(state: &AppState, auth: &Auth, call: CallRecord, control: Control) -> Result<CallRecord, ApiError> {
    let id = call.id.clone();
    let call = match control {
        Control::Transfer { .. } if matches!(Status::parse(&call.status), Some(Status::Initiated | Status::Ringing)) => {
            return Err(ApiError::conflict("call_not_answered", format!("call {id} is {}: transfers wait until it is answered", call.status)));
        }
        // Both end the call: only the first such request wins.
        Control::Hangup { .. } | Control::Transfer { .. } => begin_ending(state, auth, call).await?,
        Control::Dtmf { .. } | Control::Hold { .. } if call.status == Status::Ending.as_str() => return Err(ending_conflict(&call)),
        Control::Dtmf { .. } | Control::Hold { .. } if !call.is_live() => return Err(ApiError::conflict("call_not_active", format!("call {id} already ended ({})", call.status))),
        Control::Dtmf { .. } | Control::Hold { .. } => call,
    };
    if !state.runner.send(&call, control).await? {
        return Err(ApiError::conflict("call_not_answered", format!("call {id} is {}: keys, hold and transfers wait until it is answered", call.status)));
    }
    Ok(call)
}
