//! The workspace, analytics, and the service's own endpoints: OpenAPI, health, metrics.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::assistants::rfc3339;
use super::auth::Auth;
use super::calls::time_bound;
use super::error::{ApiError, ApiQuery, ErrorBody};
use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Ringline API", description = "Voice AI agents: assistants, numbers, calls, analytics. Auth: `Authorization: Bearer KEY` or `X-API-KEY: KEY`."),
    paths(
        workspace, analytics, healthz,
        super::assistants::list, super::assistants::create, super::assistants::read, super::assistants::read_version,
        super::assistants::update, super::assistants::remove,
        super::numbers::list, super::numbers::add, super::numbers::validate, super::numbers::assign,
        super::calls::outbound, super::calls::status, super::calls::transcript, super::calls::detail,
        super::calls::history, super::calls::events, super::calls::end, super::calls::actions,
        super::calls::recording, super::calls::remove, super::calls::analysis, super::webcall::token,
        super::secrets::create, super::secrets::replace, super::secrets::list, super::secrets::remove,
        super::webhooks::create, super::webhooks::list, super::webhooks::read, super::webhooks::remove,
        super::webhooks::deliveries, super::webhooks::all_deliveries, super::webhooks::resend, super::webhooks::signing,
        super::analysis::intent, super::analysis::sentiment,
    ),
    components(schemas(ErrorBody, super::error::ErrorDetail, WorkspaceView, Plan, Usage, Analytics, DayCounts, SentimentCounts)),
    modifiers(&Security, &Dialects)
)]
pub struct ApiDoc;

/// Ringg's overview paths and Ringez's API, under tags of their own (their handlers are thin
/// adapters over the operations documented above).
struct Dialects;

impl utoipa::Modify for Dialects {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder};
        use utoipa::openapi::ResponseBuilder;
        for (tag, paths) in [("ringg", super::ringg::PATHS), ("campaigns", super::campaigns::PATHS), ("ringez", super::ringez::PATHS)] {
            for (method, path, summary) in paths {
                let method = match *method {
                    "GET" => HttpMethod::Get,
                    "POST" => HttpMethod::Post,
                    "PUT" => HttpMethod::Put,
                    "PATCH" => HttpMethod::Patch,
                    _ => HttpMethod::Delete,
                };
                let operation = OperationBuilder::new()
                    .tag(tag)
                    .summary(Some(*summary))
                    .response("200", ResponseBuilder::new().description("JSON in the dialect's shape").build())
                    .build();
                openapi.paths.add_path_operation(*path, vec![method], operation);
            }
        }
    }
}

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-KEY"))));
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new()), SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

/// The OpenAPI 3.1 document of this API, generated from the handlers.
pub async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub assistants: i64,
    pub numbers: i64,
    pub calls: i64,
    /// `self-hosted`: what this server allows the workspace (its operator sets the limits).
    pub plan: Plan,
    pub usage: Usage,
}

#[derive(Serialize, ToSchema)]
pub struct Plan {
    pub name: String,
    pub concurrent_calls: u32,
    pub calls_per_minute: u32,
    pub assistants: u32,
    pub numbers: u32,
    pub requests_per_minute: u32,
}

/// What the workspace used this calendar month (UTC) and in all.
#[derive(Serialize, ToSchema)]
pub struct Usage {
    /// The month counted, `2026-11`.
    pub period: String,
    pub calls_this_month: i64,
    /// Billable minutes this month: each answered call rounded up to a whole minute.
    pub minutes_this_month: i64,
    pub live_calls: i64,
    pub total_calls: i64,
}

/// The workspace of the key in use.
#[utoipa::path(get, path = "/v1/workspace", tag = "workspace", responses((status = 200, body = WorkspaceView), (status = 401, body = ErrorBody)))]
pub async fn workspace(State(state): State<AppState>, auth: Auth) -> Result<Json<WorkspaceView>, ApiError> {
    let workspace = state.store.workspace(&auth.workspace_id).await?.ok_or_else(|| ApiError::not_found("workspace", &auth.workspace_id))?;
    let (assistants, numbers, calls) = state.store.count_workspace(&workspace.id).await?;
    let now = chrono::Utc::now();
    let month_start = chrono::NaiveDate::from_ymd_opt(chrono::Datelike::year(&now), chrono::Datelike::month(&now), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(0);
    let month = state.store.usage_since(&workspace.id, month_start).await?;
    let live = state.store.count_live_calls(&workspace.id).await?;
    let limits = &state.limits;
    Ok(Json(WorkspaceView {
        id: workspace.id,
        name: workspace.name,
        created_at: rfc3339(workspace.created_at),
        assistants,
        numbers,
        calls,
        plan: Plan {
            name: "self-hosted".into(),
            concurrent_calls: limits.calls_per_workspace,
            calls_per_minute: limits.calls_per_minute,
            assistants: limits.assistants_per_workspace,
            numbers: limits.numbers_per_workspace,
            requests_per_minute: state.config.rate_limit_per_min,
        },
        usage: Usage { period: now.format("%Y-%m").to_string(), calls_this_month: month.calls, minutes_this_month: month.minutes, live_calls: live, total_calls: calls },
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    /// RFC 3339 or YYYY-MM-DD; default: everything.
    pub from: Option<String>,
    pub to: Option<String>,
    /// Only `day` for now.
    pub group_by: Option<String>,
}

#[derive(Serialize, ToSchema, Default)]
pub struct DayCounts {
    pub day: String,
    pub calls: i64,
    pub completed: i64,
    pub failed: i64,
    pub no_answer: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Analytics {
    pub total_calls: i64,
    pub completed: i64,
    pub failed: i64,
    pub no_answer: i64,
    pub busy: i64,
    pub canceled: i64,
    pub in_progress: i64,
    /// Mean duration of calls that were answered, in seconds.
    pub average_duration_s: Option<f64>,
    /// The same, rounded to whole seconds (Ringg's name).
    pub avg_duration_seconds: Option<i64>,
    /// Calls per disposition.
    pub dispositions: BTreeMap<String, i64>,
    /// Caller lines per intent the live analysis recognized (`unknown` included).
    pub intents: BTreeMap<String, i64>,
    /// Caller lines per sentiment label, and how many turned sharply negative.
    pub sentiment: SentimentCounts,
    pub by_day: Vec<DayCounts>,
}

#[derive(Serialize, ToSchema, Default)]
pub struct SentimentCounts {
    pub positive: i64,
    pub neutral: i64,
    pub negative: i64,
    pub escalations: i64,
}

/// Totals, outcomes, average duration, dispositions and calls by day.
#[utoipa::path(get, path = "/v1/analytics", tag = "analytics", params(AnalyticsQuery), responses((status = 200, body = Analytics), (status = 400, body = ErrorBody)))]
pub async fn analytics(State(state): State<AppState>, auth: Auth, ApiQuery(query): ApiQuery<AnalyticsQuery>) -> Result<Json<Analytics>, ApiError> {
    if let Some(group) = &query.group_by {
        if group != "day" {
            return Err(ApiError::bad_request("invalid_query", format!("group_by `{group}`: only `day` is supported")).with_field("group_by"));
        }
    }
    let from = time_bound("from", query.from.as_deref(), false, 0)?;
    let to = time_bound("to", query.to.as_deref(), true, i64::MAX)?;
    let rows = state.store.call_counts(&auth.workspace_id, from, to).await?;
    let mut result = Analytics {
        total_calls: 0,
        completed: 0,
        failed: 0,
        no_answer: 0,
        busy: 0,
        canceled: 0,
        in_progress: 0,
        average_duration_s: None,
        avg_duration_seconds: None,
        dispositions: BTreeMap::new(),
        intents: BTreeMap::new(),
        sentiment: SentimentCounts::default(),
        by_day: Vec::new(),
    };
    let found = state.store.analysis_counts(&auth.workspace_id, from, to).await?;
    result.intents = found.intents.into_iter().collect();
    result.sentiment = SentimentCounts { positive: found.positive, neutral: found.neutral, negative: found.negative, escalations: found.escalations };
    let (mut duration_ms, mut timed) = (0i64, 0i64);
    let mut days: BTreeMap<String, DayCounts> = BTreeMap::new();
    for row in rows {
        result.total_calls += row.calls;
        let day = days.entry(row.day.clone()).or_insert_with(|| DayCounts { day: row.day.clone(), ..DayCounts::default() });
        day.calls += row.calls;
        use crate::call::CallStatus;
        match CallStatus::parse(&row.status).unwrap_or(CallStatus::InProgress) {
            CallStatus::Completed => {
                result.completed += row.calls;
                day.completed += row.calls;
            }
            CallStatus::Failed => {
                result.failed += row.calls;
                day.failed += row.calls;
            }
            CallStatus::NoAnswer => {
                result.no_answer += row.calls;
                day.no_answer += row.calls;
            }
            CallStatus::Busy => result.busy += row.calls,
            CallStatus::Canceled => result.canceled += row.calls,
            _ => result.in_progress += row.calls,
        }
        if !row.disposition.is_empty() {
            *result.dispositions.entry(row.disposition.clone()).or_default() += row.calls;
        }
        duration_ms += row.duration_ms;
        timed += row.timed;
    }
    if timed > 0 {
        result.average_duration_s = Some((duration_ms as f64 / timed as f64 / 1000.0 * 10.0).round() / 10.0);
        result.avg_duration_seconds = Some((duration_ms as f64 / timed as f64 / 1000.0).round() as i64);
    }
    result.by_day = days.into_values().collect();
    Ok(Json(result))
}

/// Liveness and the database's health.
#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, description = "ok"), (status = 503, body = ErrorBody)))]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    sqlx::query("SELECT 1").execute(&state.store.pool).await.map_err(crate::store::StoreError::from)?;
    let loaded = state.runner.loaded_engines();
    Ok(Json(serde_json::json!({
        "status": "ok",
        "worker": &*state.worker_id,
        "database": format!("{:?}", state.store.backend).to_lowercase(),
        "live_calls": state.runner.live_calls(),
        "call_limit": state.limits.calls_per_server,
        "local_calls": state.runner.running_local_calls(),
        "local_call_limit": state.limits.local_calls,
        "engines": { "whisper": loaded.whisper, "voices": loaded.voices, "llm": loaded.llms },
        "preload": state.runner.preload_state().as_str(),
    })))
}

/// Prometheus text exposition.
pub async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render(state.runner.live_calls());
    let loaded = state.runner.loaded_engines();
    text.push_str("# HELP ringline_calls_limit Calls this worker runs at most (--max-calls).\n# TYPE ringline_calls_limit gauge\n");
    text.push_str(&format!("ringline_calls_limit {}\n", state.limits.calls_per_server));
    text.push_str("# HELP ringline_local_calls_limit Calls on the local models this worker admits (measured capacity or --max-local-calls).\n# TYPE ringline_local_calls_limit gauge\n");
    text.push_str(&format!("ringline_local_calls_limit {}\n", state.limits.local_calls));
    text.push_str("# HELP ringline_local_calls_running Calls on the local models started here and not finished.\n# TYPE ringline_local_calls_running gauge\n");
    text.push_str(&format!("ringline_local_calls_running {}\n", state.runner.running_local_calls()));
    text.push_str("# HELP ringline_engines_loaded Local models loaded in this worker, by kind (shared by every call).\n# TYPE ringline_engines_loaded gauge\n");
    for (kind, count) in [("vad", loaded.vad), ("smart_turn", loaded.smart_turn), ("whisper", loaded.whisper), ("voice", loaded.voices), ("llm", loaded.llms)] {
        text.push_str(&format!("ringline_engines_loaded{{kind=\"{kind}\"}} {count}\n"));
    }
    let cache = crate::pipeline::speech_cache::speech_cache().stats();
    text.push_str("# HELP ringline_speech_cache_hits_total Sentences played from the speech cache instead of synthesized.\n# TYPE ringline_speech_cache_hits_total counter\n");
    text.push_str(&format!("ringline_speech_cache_hits_total {}\n", cache.hits));
    text.push_str("# HELP ringline_speech_cache_misses_total Sentences looked up in the speech cache and synthesized.\n# TYPE ringline_speech_cache_misses_total counter\n");
    text.push_str(&format!("ringline_speech_cache_misses_total {}\n", cache.misses));
    text.push_str("# HELP ringline_speech_cache_bytes Audio held by the speech cache (of ringline_speech_cache_capacity_bytes).\n# TYPE ringline_speech_cache_bytes gauge\n");
    text.push_str(&format!("ringline_speech_cache_bytes {}\n", cache.bytes));
    text.push_str("# HELP ringline_speech_cache_capacity_bytes The most audio the speech cache holds (--speech-cache-mib).\n# TYPE ringline_speech_cache_capacity_bytes gauge\n");
    text.push_str(&format!("ringline_speech_cache_capacity_bytes {}\n", cache.capacity));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint; GET /v1/openapi.json lists them")
}
