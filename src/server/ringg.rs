//! Ringg's other path style (its overview's integration order: `GET /workspace`, `GET
//! /agent/all`, `GET /workspace/numbers`, `POST /calling/outbound/individual`) as thin
//! adapters under `/v1`, beside the reference's `/v1/assistants` and `/v1/calls/outbound`
//! which are Ringline's own paths. An agent is an assistant; `from_number_id` is a workspace
//! number's id. Ringg's campaign paths are Ringline's own too (`campaigns.rs`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::assistants::{AssistantView, Page};
use super::auth::Auth;
use super::calls::{self, CallStatus, OutboundRequest, Placed, Placement};
use super::error::{ApiError, ApiJson, ApiQuery};
use super::numbers::NumberView;
use super::AppState;

/// The paths this module adds, for the OpenAPI document (tag `ringg`).
pub const PATHS: &[(&str, &str, &str)] = &[
    ("GET", "/v1/agent/all", "The workspace's assistants as Ringg's agents (`agent_id`)"),
    ("GET", "/v1/workspace/numbers", "The workspace's numbers (`from_number_id`)"),
    ("POST", "/v1/calling/outbound/individual", "One outbound call: `agent_id`, `mobile_number`, `from_number_id`, `custom_args_values`"),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agent/all", get(agents))
        .route("/workspace/numbers", get(numbers))
        .route("/calling/outbound/individual", post(call_individual))
}

/// The workspace's assistants as Ringg's agents (`agent_id` is the assistant's id).
pub async fn agents(State(state): State<AppState>, auth: Auth, ApiQuery(page): ApiQuery<Page>) -> Result<Json<Value>, ApiError> {
    let (limit, offset) = page.resolve()?;
    let (rows, total) = state.store.assistants(&auth.workspace_id, limit, offset).await?;
    let agents: Vec<Value> = rows
        .into_iter()
        .map(|record| {
            let view = AssistantView::from(record);
            json!({
                "agent_id": view.id,
                "id": view.id,
                "name": view.name,
                "language": view.language,
                "status": view.status,
                "source": view.source,
                "version": view.version,
                "created_at": view.created_at,
            })
        })
        .collect();
    Ok(Json(json!({ "agents": agents, "total": total, "limit": limit, "offset": offset, "has_more": offset + (agents.len() as i64) < total })))
}

/// The workspace's numbers (`from_number_id` is a number's id).
pub async fn numbers(State(state): State<AppState>, auth: Auth, ApiQuery(page): ApiQuery<Page>) -> Result<Json<Value>, ApiError> {
    let (limit, offset) = page.resolve()?;
    let (rows, total) = state.store.numbers(&auth.workspace_id, limit, offset).await?;
    let numbers: Vec<Value> = rows
        .into_iter()
        .map(|record| {
            let view = NumberView::from(record);
            json!({
                "from_number_id": view.id,
                "id": view.id,
                "number": view.number,
                "label": view.label,
                "agent_id": view.assistant_id,
                "sandbox": view.sandbox,
                "created_at": view.created_at,
            })
        })
        .collect();
    Ok(Json(json!({ "numbers": numbers, "total": total, "limit": limit, "offset": offset, "has_more": offset + (numbers.len() as i64) < total })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndividualCall {
    pub agent_id: String,
    /// The number to call (`to_number` is taken too).
    #[serde(alias = "to_number")]
    pub mobile_number: String,
    /// A workspace number's id; the caller id (default: the agent's number, else the sandbox's).
    pub from_number_id: Option<String>,
    /// The callee's name, given to the agent as the `name` variable when it declares one.
    pub name: Option<String>,
    /// The agent's variables (`dynamic_variables` is taken too).
    #[serde(default, alias = "dynamic_variables")]
    pub custom_args_values: BTreeMap<String, Value>,
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub metadata: Value,
    pub idempotency_key: Option<String>,
}

/// One outbound call, Ringg's overview style: the same placement as `POST /v1/calls/outbound`.
pub async fn call_individual(State(state): State<AppState>, auth: Auth, ApiJson(request): ApiJson<IndividualCall>) -> Result<impl IntoResponse, ApiError> {
    let from_number = match &request.from_number_id {
        Some(id) => Some(state.store.number(&auth.workspace_id, id).await?.ok_or_else(|| ApiError::not_found("number", id).with_field("from_number_id"))?.e164),
        None => None,
    };
    let mut variables = request.custom_args_values;
    if let Some(name) = request.name {
        let declares_name = state
            .store
            .assistant(&auth.workspace_id, &request.agent_id)
            .await?
            .and_then(|record| serde_json::from_str::<Value>(&record.spec).ok())
            .is_some_and(|spec| spec["variables"].get("name").is_some());
        if declares_name {
            variables.entry("name".into()).or_insert(Value::String(name));
        }
    }
    let outbound = OutboundRequest {
        assistant_id: request.agent_id,
        to_number: request.mobile_number,
        from_number,
        dynamic_variables: variables,
        webhook_url: request.webhook_url,
        metadata: request.metadata,
        idempotency_key: request.idempotency_key,
        record: None,
    };
    let placed = calls::place(&state, &auth, outbound, Placement::default()).await.map_err(|mut e| {
        e.field = e.field.map(|f| match f.as_str() {
            "assistant_id" => "agent_id".into(),
            "to_number" => "mobile_number".into(),
            "from_number" => "from_number_id".into(),
            other => other.replace("dynamic_variables", "custom_args_values"),
        });
        e
    })?;
    let (status, call) = match &placed {
        Placed::New(call) => (StatusCode::CREATED, call),
        Placed::Retry(call) => (StatusCode::OK, call),
    };
    let mut body = serde_json::to_value(CallStatus::from(call)).unwrap_or(Value::Null);
    body["agent_id"] = json!(call.assistant_id);
    Ok((status, Json(body)))
}
