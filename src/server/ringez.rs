//! Ringez's agent API (`/api/v1/…`) over Ringline's engine: thin adapters, one implementation.
//!
//! ```text
//! Ringez request ─► RingezCaller (API key, or a live session's X-Session-ID) ─► adapter
//!                      ─► calls::place / calls::apply_control / store / analysis ─► Ringez's shape
//! ```
//!
//! A Ringez client names a *session*, not a workspace: `POST /sessions/create` (with an API key)
//! opens one for the key's workspace, and its id then authenticates the Ringez paths alone
//! (`X-Session-ID`, as Ringez's calling skill sends it) until it expires (6 h) or is deleted.
//! Calls carry their session and the agent that placed them (`X-Agent-ID`). What a self-hosted
//! server has no use for — payments, OTP log-in, IP allow-lists — answers 501 naming what to
//! use instead; batches, schedules and queues come with campaigns.
//!
//! Cost is an estimate from the rate table here (per started minute, by the number's country
//! and type); a session's `user_consent.max_spend_limit` is its budget, and a call that would
//! start past it gets 402 like Ringez's empty wallet.

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::assistants::rfc3339;
use super::auth::Auth;
use super::calls::{self, OutboundRequest, Placed, Placement};
use super::error::{ApiError, ApiJson, ApiQuery};
use super::numbers::{describe, with_telephony, NumberInfo};
use super::runner::Control;
use super::AppState;
use crate::call::CallStatus;
use crate::store::{self, CallRecord, HistoryFilter};

/// How long a session authenticates.
const SESSION_TTL_MS: i64 = 6 * 3600 * 1000;
/// Sessions one workspace may have open at once.
const MAX_OPEN_SESSIONS: i64 = 100;
/// The assistant a direct-mode call talks with when the request names none.
pub const DEFAULT_ASSISTANT: &str = "call_for_user";
const MAX_AGENT_ID_CHARS: usize = 100;
const MAX_CONTACTS: i64 = 10_000;
const MAX_LABELS: usize = 20;
/// Dollars to rupees for the rate table's INR column.
const INR_PER_USD: f64 = 84.0;

/// The paths of Ringez's API here, for the OpenAPI document (tag `ringez`).
pub const PATHS: &[(&str, &str, &str)] = &[
    ("POST", "/api/v1/sessions/create", "Open a session (API key); its id then authenticates alone as X-Session-ID"),
    ("GET", "/api/v1/sessions/{id}", "A session: balance (its budget), calls made, total duration"),
    ("DELETE", "/api/v1/sessions/{id}", "End a session and clear its ended calls"),
    ("GET", "/api/v1/auth/me", "The session's balance"),
    ("GET", "/api/v1/wallet/balance", "The session's balance"),
    ("POST", "/api/v1/calls/initiate", "Place a call: direct (an assistant talks) or bridge (handed on to the user's phone)"),
    ("GET", "/api/v1/calls", "The session's calls"),
    ("GET", "/api/v1/calls/history", "Calls, filtered by session, dates and status"),
    ("GET", "/api/v1/calls/{id}", "A call: status, duration, estimated cost, quality"),
    ("DELETE", "/api/v1/calls/{id}", "Hang up a call; its duration and cost"),
    ("POST", "/api/v1/calls/{id}/actions", "dtmf (w pauses), hold, unhold, transfer, hangup"),
    ("POST", "/api/v1/calls/{id}/transcribe", "A receiver for the call's transcription.updated events"),
    ("GET", "/api/v1/transcripts/{id}", "A call's transcript (caller/recipient)"),
    ("GET", "/api/v1/contacts", "Contacts: search by name or number, filter by label"),
    ("POST", "/api/v1/contacts", "Add a contact"),
    ("GET", "/api/v1/contacts/{id}", "A contact, with its call count and last call"),
    ("PUT", "/api/v1/contacts/{id}", "Change a contact's fields"),
    ("DELETE", "/api/v1/contacts/{id}", "Remove a contact"),
    ("POST", "/api/v1/numbers/validate", "Validate `phone_number`: country, type, formats, callable, rate"),
    ("GET", "/api/v1/numbers/rates", "Per-minute rates by country"),
    ("POST", "/api/v1/webhooks/subscribe", "Ringez-shaped events signed X-Ringez-Signature"),
    ("POST", "/api/v1/agents/intent-detection", "Intent, sub-intent, entities and a suggested action"),
    ("POST", "/api/v1/agents/sentiment-analysis", "Sentiment, emotion, urgency, escalation, key phrases"),
    ("POST", "/api/v1/agents/call-routing", "The workspace number labelled for a department, with fallbacks"),
    ("GET", "/api/v1/analytics/call-metrics", "Totals, cost, success rate, by country, type, status and period"),
    ("GET", "/api/v1/analytics/spending", "This month's spending against the session's budget"),
    ("POST", "/api/v1/agents/voice-synthesis", "Speak a text with an installed voice: a WAV kept for an hour"),
    ("GET", "/api/v1/audio/{id}", "A synthesized clip (the workspace's own, within its hour)"),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sessions/create", post(create_session))
        .route("/sessions/{id}", get(read_session).delete(end_session))
        .route("/auth/me", get(me))
        .route("/wallet/balance", get(wallet_balance))
        .route("/calls/initiate", post(initiate))
        .route("/calls", get(history))
        .route("/calls/history", get(history))
        .route("/calls/{id}", get(call_details).delete(hang_up))
        .route("/calls/{id}/actions", post(actions))
        .route("/calls/{id}/transcribe", post(transcribe))
        .route("/transcripts/{id}", get(transcript))
        .route("/contacts", get(list_contacts).post(add_contact))
        .route("/contacts/{id}", get(read_contact).put(update_contact).delete(remove_contact))
        .route("/numbers/validate", post(validate))
        .route("/numbers/rates", get(rates))
        .route("/webhooks/subscribe", post(subscribe))
        .route("/agents/intent-detection", post(intent_detection))
        .route("/agents/sentiment-analysis", post(sentiment_analysis))
        .route("/agents/call-routing", post(call_routing))
        .route("/analytics/call-metrics", get(call_metrics))
        .route("/analytics/spending", get(spending))
        .route("/agents/voice-synthesis", post(voice_synthesis))
        .route("/audio/{id}", get(audio))
        .route("/wallet/add-credits", post(not_here))
        .route("/batch/calls", post(not_here))
        .route("/scheduled-calls", post(not_here))
        .route("/queue/add", post(not_here))
        .route("/security/whitelist", post(not_here))
        .route("/security/rotate-key", post(not_here))
        .route("/auth/check-email", post(not_here))
        .route("/auth/send-otp", post(not_here))
        .route("/auth/verify-otp", post(not_here))
        .route("/auth/login", post(not_here))
}

// ── who is calling ──────────────────────────────────────────────────────────────────────

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRecord {
    pub id: String,
    pub workspace_id: String,
    pub session_type: String,
    pub agent_id: Option<String>,
    /// JSON: `agent_context` and `user_consent` as given.
    pub agent_context: String,
    pub privacy_mode: i64,
    pub currency: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
}

impl SessionRecord {
    fn is_open(&self, now: i64) -> bool {
        self.ended_at.is_none() && self.expires_at > now
    }

    fn consent(&self) -> Value {
        serde_json::from_str::<Value>(&self.agent_context).ok().and_then(|v| v.get("user_consent").cloned()).unwrap_or(Value::Null)
    }

    /// The session's budget (`user_consent.max_spend_limit`), in its currency.
    fn spend_limit(&self) -> Option<f64> {
        self.consent().get("max_spend_limit").and_then(Value::as_f64)
    }

    fn calling_authorized(&self) -> bool {
        self.consent().get("calling_authorized").and_then(Value::as_bool).unwrap_or(true)
    }

    /// The user's own phone, which bridge mode rings on to.
    fn user_phone(&self) -> Option<String> {
        self.consent().get("user_phone").and_then(Value::as_str).map(str::to_string)
    }
}

/// A Ringez client: an API key (with an optional session), or a live session alone.
pub struct RingezCaller {
    pub auth: Auth,
    pub session: Option<SessionRecord>,
    /// `X-Agent-ID`, kept with the calls it places.
    pub agent_id: Option<String>,
    /// Authenticated by the session alone: it sees only its own calls.
    pub session_only: bool,
}

impl FromRequestParts<AppState> for RingezCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let agent_id = header("x-agent-id");
        if let Some(agent) = &agent_id {
            if agent.chars().count() > MAX_AGENT_ID_CHARS || agent.chars().any(char::is_control) {
                return Err(ApiError::invalid("X-Agent-ID", format!("give 1 to {MAX_AGENT_ID_CHARS} printable characters")));
            }
        }
        let session_id = header("x-session-id");
        let has_key = parts.headers.contains_key("authorization") || parts.headers.contains_key("x-api-key");
        let now = store::now_ms();
        if has_key {
            let auth = Auth::from_request_parts(parts, state).await?;
            let session = match session_id {
                Some(id) => Some(open_session(state, &id, now).await?.filter(|s| s.workspace_id == auth.workspace_id).ok_or_else(|| no_session(&id))?),
                None => None,
            };
            return Ok(RingezCaller { auth, session, agent_id, session_only: false });
        }
        let Some(id) = session_id else {
            return Err(ApiError::unauthorized(
                "no credentials: send `Authorization: Bearer KEY`, or `X-Session-ID` of a session opened with POST /api/v1/sessions/create",
            ));
        };
        let session = open_session(state, &id, now).await?.ok_or_else(|| ApiError::unauthorized(format!("session `{}` is not open (unknown, ended or expired); open one with POST /api/v1/sessions/create", crate::assistant::check::clip(&id))))?;
        let limit = state.config.rate_limit_per_min;
        if let Err(wait_s) = state.limiter.take(&session.id, limit) {
            let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("more than {limit} requests a minute in this session; retry after {wait_s} s"));
            error.retry_after_s = Some(wait_s);
            return Err(error);
        }
        let auth = Auth { workspace_id: session.workspace_id.clone(), key_id: format!("session:{}", session.id) };
        Ok(RingezCaller { auth, agent_id: agent_id.or(session.agent_id.clone()), session: Some(session), session_only: true })
    }
}

fn no_session(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "session_not_found", format!("no open session `{}` in this workspace", crate::assistant::check::clip(id))).with_field("session_id")
}

async fn open_session(state: &AppState, id: &str, now: i64) -> Result<Option<SessionRecord>, ApiError> {
    if id.len() > 100 {
        return Ok(None);
    }
    Ok(session_by_id(state, id).await?.filter(|s| s.is_open(now)))
}

async fn session_by_id(state: &AppState, id: &str) -> Result<Option<SessionRecord>, ApiError> {
    Ok(sqlx::query_as::<_, SessionRecord>(
        "SELECT id, workspace_id, session_type, agent_id, agent_context, privacy_mode, currency, created_at, expires_at, ended_at FROM sessions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&state.store.pool)
    .await
    .map_err(store::StoreError::from)?)
}

impl RingezCaller {
    /// The session a request names in its body or query (it must be this caller's), else the
    /// one it authenticated with.
    async fn session_named(&self, state: &AppState, named: Option<&str>) -> Result<Option<SessionRecord>, ApiError> {
        match named {
            None => Ok(self.session.clone()),
            Some(id) if self.session.as_ref().is_some_and(|s| s.id == id) => Ok(self.session.clone()),
            Some(_) if self.session_only => Err(ApiError::new(StatusCode::FORBIDDEN, "other_session", "a session sees only itself; use its own session_id").with_field("session_id")),
            Some(id) => {
                let session = session_by_id(state, id).await?.filter(|s| s.workspace_id == self.auth.workspace_id).ok_or_else(|| no_session(id))?;
                Ok(Some(session))
            }
        }
    }

    /// Keys only: what a session must not do (open sessions, see the whole workspace).
    fn require_key(&self, what: &str) -> Result<(), ApiError> {
        if self.session_only {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "key_required", format!("{what} needs the API key (Authorization: Bearer KEY), not a session")));
        }
        Ok(())
    }

    /// A call this caller may see: the workspace's, and for a session alone only its own.
    async fn call(&self, state: &AppState, id: &str) -> Result<CallRecord, ApiError> {
        let call = state.store.call(&self.auth.workspace_id, id).await?.ok_or_else(|| ApiError::not_found("call", id))?;
        if self.session_only && call.session_id.as_deref() != self.session.as_ref().map(|s| s.id.as_str()) {
            return Err(ApiError::not_found("call", id));
        }
        Ok(call)
    }
}

// ── rates and cost ──────────────────────────────────────────────────────────────────────

/// Per-minute rates in US dollars: (ISO country, name, dial prefix, mobile, landline). Other
/// countries pay [`OTHER_RATE`].
pub const RATES: &[(&str, &str, &str, f64, f64)] = &[
    ("US", "United States", "+1", 0.125, 0.10),
    ("CA", "Canada", "+1", 0.125, 0.10),
    ("GB", "United Kingdom", "+44", 0.15, 0.06),
    ("IN", "India", "+91", 0.08, 0.08),
    ("AU", "Australia", "+61", 0.20, 0.10),
    ("DE", "Germany", "+49", 0.20, 0.08),
    ("FR", "France", "+33", 0.20, 0.08),
    ("SG", "Singapore", "+65", 0.10, 0.10),
    ("AE", "United Arab Emirates", "+971", 0.30, 0.25),
];
pub const OTHER_RATE: f64 = 0.50;

/// The per-minute rate in dollars for a described number (mobile unless it is a fixed line).
pub fn rate_for(info: &NumberInfo) -> f64 {
    let landline = matches!(info.kind.as_deref(), Some("fixed_line" | "toll_free"));
    match RATES.iter().find(|(code, ..)| Some(*code) == info.country.as_deref()) {
        Some((_, _, _, mobile, fixed)) => {
            if landline {
                *fixed
            } else {
                *mobile
            }
        }
        None => OTHER_RATE,
    }
}

/// Minutes billed for a duration: every started minute (2 min 30 s is 3).
pub fn billed_minutes(duration_ms: i64) -> i64 {
    if duration_ms <= 0 {
        0
    } else {
        (duration_ms + 59_999) / 60_000
    }
}

fn money(amount: f64) -> f64 {
    (amount * 1000.0).round() / 1000.0
}

fn in_currency(usd: f64, currency: &str) -> f64 {
    money(if currency == "INR" { usd * INR_PER_USD } else { usd })
}

/// A call's duration so far (a live call's runs on), in ms.
fn duration_ms(call: &CallRecord) -> i64 {
    match (call.duration_ms, call.started_at) {
        (Some(ms), _) => ms,
        (None, Some(started)) if call.is_live() => store::now_ms() - started,
        _ => 0,
    }
}

/// (minutes, amount) of a call in `currency`.
fn cost(call: &CallRecord, currency: &str) -> (i64, f64) {
    let minutes = billed_minutes(duration_ms(call));
    let rate = rate_for(&describe(&call.to_number, None));
    (minutes, in_currency(minutes as f64 * rate, currency))
}

/// What a session has spent, in its currency.
async fn spent(state: &AppState, session: &SessionRecord) -> Result<f64, ApiError> {
    let calls = calls_in(state, &session.workspace_id, Some(&session.id), 0, i64::MAX).await?;
    Ok(money(calls.iter().map(|c| cost(c, &session.currency).1).sum()))
}

/// A session's balance: its budget less what it spent (null without a budget).
async fn balance(state: &AppState, session: &SessionRecord) -> Result<Value, ApiError> {
    let currency = session.currency.clone();
    let Some(limit) = session.spend_limit() else {
        return Ok(json!({ "minutes": Value::Null, "currency": currency, "value": Value::Null, "unlimited": true }));
    };
    let left = money((limit - spent(state, session).await?).max(0.0));
    let per_minute = in_currency(RATES[0].3, &currency);
    Ok(json!({ "minutes": (left / per_minute).floor() as i64, "currency": currency, "value": left, "unlimited": false }))
}

/// The most calls one summary reads (the newest): bounds the memory a request can take.
const MAX_SUMMARIZED_CALLS: i64 = 10_000;

/// Calls of a workspace (and session) created in a window, newest first, at most
/// [`MAX_SUMMARIZED_CALLS`].
async fn calls_in(state: &AppState, workspace_id: &str, session_id: Option<&str>, from: i64, to: i64) -> Result<Vec<CallRecord>, ApiError> {
    let filter = HistoryFilter { from, to, session_id: session_id.map(str::to_string), limit: MAX_SUMMARIZED_CALLS, offset: 0, ..HistoryFilter::default() };
    Ok(state.store.history(workspace_id, &filter).await?.0)
}

/// A webhook event's `data` in Ringez's shape: Ringline's fields, and the session, the
/// duration in seconds, the answer time and the cost (USD).
pub fn event_data(call: &CallRecord, data: &Value) -> Value {
    let mut out = if data.is_object() { data.clone() } else { json!({ "value": data }) };
    out["call_id"] = json!(call.id);
    out["session_id"] = json!(call.session_id);
    out["to_number"] = json!(call.to_number);
    out["from_number"] = json!(call.from_number);
    if out.get("status").is_some() {
        out["duration"] = json!(duration_ms(call) / 1000);
        out["cost"] = json!(cost(call, "USD").1);
        out["answered_at"] = json!(call.started_at.map(rfc3339));
    }
    out
}

// ── sessions ────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// `guest` or `authenticated`.
    pub session_type: Option<String>,
    #[serde(default)]
    pub agent_context: Value,
    #[serde(default)]
    pub user_consent: Value,
}

/// Opens a calling session for the key's workspace.
pub async fn create_session(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<CreateSession>) -> Result<impl IntoResponse, ApiError> {
    caller.require_key("opening a session")?;
    let session_type = request.session_type.unwrap_or_else(|| "authenticated".into());
    if !matches!(session_type.as_str(), "guest" | "authenticated") {
        return Err(ApiError::invalid("session_type", format!("`{}` is not `guest` or `authenticated`", crate::assistant::check::clip(&session_type))));
    }
    for (field, value) in [("agent_context", &request.agent_context), ("user_consent", &request.user_consent)] {
        if !(value.is_null() || value.is_object()) || value.to_string().len() > 4096 {
            return Err(ApiError::invalid(field, "must be a JSON object of at most 4 KB"));
        }
    }
    let consent = &request.user_consent;
    let currency = consent.get("currency").and_then(Value::as_str).unwrap_or("USD").to_string();
    if !matches!(currency.as_str(), "USD" | "INR") {
        return Err(ApiError::invalid("user_consent.currency", format!("`{}` is not USD or INR", crate::assistant::check::clip(&currency))));
    }
    if let Some(limit) = consent.get("max_spend_limit") {
        if !limit.as_f64().is_some_and(|l| l.is_finite() && l >= 0.0) {
            return Err(ApiError::invalid("user_consent.max_spend_limit", "must be a number of at least 0"));
        }
    }
    if let Some(phone) = consent.get("user_phone") {
        let raw = phone.as_str().ok_or_else(|| ApiError::invalid("user_consent.user_phone", "must be a phone number in E.164 form"))?;
        super::numbers::valid_number("user_consent.user_phone", raw, None)?;
    }
    let privacy = consent.get("privacy_mode").and_then(Value::as_bool).unwrap_or(false);
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE workspace_id = $1 AND ended_at IS NULL AND expires_at > $2")
        .bind(&caller.auth.workspace_id)
        .bind(store::now_ms())
        .fetch_one(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    if open >= MAX_OPEN_SESSIONS {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "session_limit", format!("this workspace has {MAX_OPEN_SESSIONS} open sessions, its limit; end one with DELETE /api/v1/sessions/{{id}}")));
    }
    let now = store::now_ms();
    let session = SessionRecord {
        id: store::new_id("sess"),
        workspace_id: caller.auth.workspace_id.clone(),
        session_type,
        agent_id: caller.agent_id.clone(),
        agent_context: json!({ "agent_context": request.agent_context, "user_consent": request.user_consent }).to_string(),
        privacy_mode: privacy as i64,
        currency,
        created_at: now,
        expires_at: now + SESSION_TTL_MS,
        ended_at: None,
    };
    sqlx::query("INSERT INTO sessions (id, workspace_id, session_type, agent_id, agent_context, privacy_mode, currency, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&session.id)
        .bind(&session.workspace_id)
        .bind(&session.session_type)
        .bind(&session.agent_id)
        .bind(&session.agent_context)
        .bind(session.privacy_mode)
        .bind(&session.currency)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    let limit = state.limits.calls_per_minute;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "session_id": session.id,
            // The id is the credential (`X-Session-ID`); the token is the same value.
            "session_token": session.id,
            "expires_at": rfc3339(session.expires_at),
            "wallet_balance": balance(&state, &session).await?,
            "privacy_mode": privacy,
            "rate_limits": { "calls_per_hour": limit * 60, "max_call_duration": 3600 },
        })),
    ))
}

pub async fn read_session(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let session = caller.session_named(&state, Some(&id)).await?.ok_or_else(|| no_session(&id))?;
    let calls = calls_in(&state, &session.workspace_id, Some(&session.id), 0, i64::MAX).await?;
    Ok(Json(json!({
        "session_id": session.id,
        "active": session.is_open(store::now_ms()),
        "created_at": rfc3339(session.created_at),
        "expires_at": rfc3339(session.expires_at),
        "wallet_balance": balance(&state, &session).await?,
        "calls_made": calls.len(),
        "total_duration": calls.iter().map(|c| duration_ms(c) / 1000).sum::<i64>(),
    })))
}

/// Ends a session and clears its call history (calls still live keep running and are kept).
pub async fn end_session(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let session = caller.session_named(&state, Some(&id)).await?.ok_or_else(|| no_session(&id))?;
    let final_balance = balance(&state, &session).await?;
    sqlx::query("UPDATE sessions SET ended_at = $1 WHERE id = $2 AND ended_at IS NULL")
        .bind(store::now_ms())
        .bind(&session.id)
        .execute(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    let mut cleared = 0;
    for call in calls_in(&state, &session.workspace_id, Some(&session.id), 0, i64::MAX).await? {
        if call.is_live() {
            continue;
        }
        let _ = tokio::fs::remove_file(state.runner.recording_path(&call.id)).await;
        if state.store.delete_call(&session.workspace_id, &call.id).await? {
            cleared += 1;
        }
    }
    Ok(Json(json!({
        "success": true,
        "message": format!("Session terminated. All data cleared ({cleared} calls)."),
        "final_balance": { "minutes": final_balance["minutes"], "refund_available": false },
    })))
}

/// The session's balance (Ringez's calling skill reads it before a call).
pub async fn me(State(state): State<AppState>, caller: RingezCaller) -> Result<Json<Value>, ApiError> {
    let session = caller.session.as_ref().ok_or_else(|| ApiError::bad_request("session_required", "send X-Session-ID of an open session"))?;
    let balance = balance(&state, session).await?;
    Ok(Json(json!({
        "balance_minutes": balance["minutes"],
        "balance_usd": if session.currency == "USD" { balance["value"].clone() } else { Value::Null },
        "email": Value::Null,
        "session_id": session.id,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    pub session_id: Option<String>,
}

pub async fn wallet_balance(State(state): State<AppState>, caller: RingezCaller, ApiQuery(query): ApiQuery<SessionQuery>) -> Result<Json<Value>, ApiError> {
    let session = caller.session_named(&state, query.session_id.as_deref()).await?.ok_or_else(|| ApiError::invalid("session_id", "name the session (or send X-Session-ID)"))?;
    Ok(Json(json!({ "balance": balance(&state, &session).await?, "last_transaction": Value::Null })))
}

// ── calls ───────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CallSettings {
    /// Seconds; the call hangs up after it.
    pub max_duration: Option<u32>,
    pub record_call: Option<bool>,
    /// Ringline always transcribes; `false` is refused rather than ignored.
    pub transcribe: Option<bool>,
    pub language: Option<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InitiateRequest {
    pub session_id: Option<String>,
    pub to_number: String,
    pub from_number: Option<String>,
    /// `bridge` (ring the user's phone on to the destination) or `direct` (an AI call).
    pub mode: Option<String>,
    pub privacy_mode: Option<bool>,
    pub caller_id_name: Option<String>,
    #[serde(default)]
    pub call_settings: CallSettings,
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub metadata: Value,
    pub idempotency_key: Option<String>,
    /// Ringline: the assistant that talks in direct mode (default `call_for_user`).
    pub assistant_id: Option<String>,
    /// Ringline: its variables; `task` defaults to the metadata's `task` or `issue`.
    #[serde(default)]
    pub dynamic_variables: BTreeMap<String, Value>,
    /// Ringline: the user's phone for bridge mode (else the session's `user_consent.user_phone`).
    pub user_phone: Option<String>,
}

/// Starts a call: direct (an assistant talks) or bridge (the answered call goes on to the
/// user's phone).
pub async fn initiate(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<InitiateRequest>) -> Result<impl IntoResponse, ApiError> {
    let session = caller.session_named(&state, request.session_id.as_deref()).await?;
    if let Some(session) = &session {
        if !session.calling_authorized() {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "calling_not_authorized", "this session's user_consent.calling_authorized is false; open a session with it true"));
        }
    }
    if request.call_settings.transcribe == Some(false) {
        return Err(ApiError::invalid("call_settings.transcribe", "Ringline always transcribes a call (the agent listens through it); leave it out or true"));
    }
    if let Some(max) = request.call_settings.max_duration {
        if !(10..=4 * 3600).contains(&max) {
            return Err(ApiError::invalid("call_settings.max_duration", format!("{max} s: give 10 to 14400 seconds")));
        }
    }
    if let Some(name) = &request.caller_id_name {
        if name.chars().count() > 50 || name.chars().any(char::is_control) {
            return Err(ApiError::invalid("caller_id_name", "give at most 50 printable characters"));
        }
    }
    let user_phone = match request.user_phone.clone().or_else(|| session.as_ref().and_then(SessionRecord::user_phone)) {
        Some(raw) => Some(super::numbers::valid_number("user_phone", &raw, None)?.0),
        None => None,
    };
    // Premium-rate numbers are where toll fraud sends calls: never dialled for a key.
    for (field, number) in [("to_number", Some(request.to_number.clone())), ("user_phone", user_phone.clone())] {
        if let Some(number) = number {
            if describe(&number, None).kind.as_deref() == Some("premium_rate") {
                return Err(ApiError::invalid(field, format!("{number} is a premium-rate number; Ringline does not dial those")));
            }
        }
    }
    let mode = match request.mode.as_deref() {
        None => if user_phone.is_some() { "bridge" } else { "direct" },
        Some("direct") => "direct",
        Some("bridge") if user_phone.is_some() => "bridge",
        Some("bridge") => return Err(ApiError::invalid("user_phone", "bridge mode rings the call on to the user's phone: give `user_phone` (or the session's user_consent.user_phone), or use \"mode\": \"direct\"")),
        Some(other) => return Err(ApiError::invalid("mode", format!("`{}` is not `bridge` or `direct`", crate::assistant::check::clip(other)))),
    };
    let privacy = request.privacy_mode.unwrap_or(session.as_ref().is_some_and(|s| s.privacy_mode != 0));
    if let Some(session) = &session {
        if let Some(limit) = session.spend_limit() {
            let (_, info) = super::numbers::valid_number("to_number", &request.to_number, None)?;
            let minute = in_currency(rate_for(&info), &session.currency);
            if limit - spent(&state, session).await? < minute {
                return Err(ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_balance", format!("the session's budget (max_spend_limit {limit} {}) does not cover a minute to this number ({minute}); open a session with a larger limit", session.currency)));
            }
        }
    }
    let mut metadata = match &request.metadata {
        Value::Null => json!({}),
        Value::Object(_) => request.metadata.clone(),
        _ => return Err(ApiError::invalid("metadata", "must be a JSON object")),
    };
    let mut variables = request.dynamic_variables.clone();
    let assistant_id = request.assistant_id.clone().unwrap_or_else(|| DEFAULT_ASSISTANT.to_string());
    if assistant_id == DEFAULT_ASSISTANT && !variables.contains_key("task") {
        let task = ["task", "issue"].iter().find_map(|k| metadata.get(*k).and_then(Value::as_str)).map(str::to_string);
        if let Some(task) = task {
            variables.insert("task".into(), Value::String(task));
        }
    }
    metadata["ringez"] = json!({
        "mode": mode,
        "privacy_mode": privacy,
        "caller_id_name": request.caller_id_name,
        "call_settings": request.call_settings,
        "user_phone": user_phone,
    });
    let outbound = OutboundRequest {
        assistant_id,
        to_number: request.to_number.clone(),
        from_number: request.from_number.clone(),
        dynamic_variables: variables,
        webhook_url: request.webhook_url.clone(),
        metadata,
        idempotency_key: request.idempotency_key.clone(),
        record: request.call_settings.record_call,
    };
    let placement = Placement {
        session_id: session.as_ref().map(|s| s.id.clone()),
        agent_id: caller.agent_id.clone(),
        dialect: Some("ringez".into()),
        transfer_on_answer: (mode == "bridge").then(|| user_phone.clone()).flatten(),
        max_duration_s: request.call_settings.max_duration,
    };
    match calls::place(&state, &caller.auth, outbound, placement).await? {
        // Ringez's answer to a repeated key within five minutes.
        Placed::Retry(first) => Ok((StatusCode::OK, Json(json!({ "alreadyInitiated": true, "callSid": first.id, "call_id": first.id })))),
        Placed::New(call) => {
            let currency = session.as_ref().map(|s| s.currency.clone()).unwrap_or_else(|| "USD".into());
            let rate = in_currency(rate_for(&describe(&call.to_number, None)), &currency);
            Ok((
                StatusCode::CREATED,
                Json(json!({
                    "call_id": call.id,
                    "status": call.status,
                    "mode": mode,
                    "to_number": call.to_number,
                    "from_number": if privacy { masked(&call.from_number) } else { call.from_number.clone() },
                    "estimated_rate": rate,
                    "currency": currency,
                    // Ringline has no per-call media socket for the client: follow the call's events.
                    "webrtc_token": Value::Null,
                    "connection_url": Value::Null,
                    "events_url": format!("/v1/calls/{}/events", call.id),
                    "twilio_call_sid": Value::Null,
                    "created_at": rfc3339(call.created_at),
                })),
            ))
        }
    }
}

/// A number with all but its country code and last two digits hidden.
pub fn masked(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < 6 {
        return "hidden".into();
    }
    let code = describe(number, None).country_code.map(|c| c.to_string()).unwrap_or_default();
    let keep_from = digits.len() - 2;
    let hidden: String = digits.iter().enumerate().skip(code.len()).map(|(i, c)| if i < keep_from { '*' } else { *c }).collect();
    format!("+{code}{hidden}")
}

fn ringez_view(call: &CallRecord, currency: &str) -> Value {
    let meta: Value = serde_json::from_str(&call.metadata).unwrap_or(Value::Null);
    let privacy = meta["ringez"]["privacy_mode"].as_bool().unwrap_or(false);
    let (minutes, amount) = cost(call, currency);
    json!({
        "call_id": call.id,
        "status": call.status,
        "to_number": call.to_number,
        "from_number": if privacy { masked(&call.from_number) } else { call.from_number.clone() },
        "mode": meta["ringez"]["mode"].as_str().unwrap_or("direct"),
        "session_id": call.session_id,
        "agent_id": call.agent_id,
        "created_at": rfc3339(call.created_at),
        "started_at": call.started_at.map(rfc3339),
        "ended_at": call.ended_at.map(rfc3339),
        "duration": duration_ms(call) / 1000,
        "estimated_cost": { "minutes": minutes, "amount": amount, "currency": currency },
        "disposition": call.disposition,
        "summary": call.summary,
        // The sandbox and media-stream lines measure none of these; a SIP/RTP line would.
        "quality_metrics": { "mos_score": Value::Null, "latency_ms": Value::Null, "packet_loss": Value::Null },
    })
}

async fn currency_of(state: &AppState, call: &CallRecord) -> String {
    match &call.session_id {
        Some(id) => session_by_id(state, id).await.ok().flatten().map(|s| s.currency).unwrap_or_else(|| "USD".into()),
        None => "USD".into(),
    }
}

pub async fn call_details(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let call = caller.call(&state, &id).await?;
    let currency = currency_of(&state, &call).await;
    let mut view = ringez_view(&call, &currency);
    let turns = state.store.turns(&call.id).await?;
    let mut v2v: Vec<f64> = turns.iter().map(|t| t.voice_to_voice_ms).filter(|v| *v > 0.0).collect();
    v2v.sort_by(f64::total_cmp);
    // The agent's own answer time (voice to voice, median), which Ringline does measure.
    view["response_latency_ms"] = json!(v2v.get(v2v.len() / 2).map(|v| v.round()));
    Ok(Json(view))
}

/// Hangs up a live call (waiting a moment for it to close) and reports its cost; a call that
/// already ended is reported as it is.
pub async fn hang_up(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let call = caller.call(&state, &id).await?;
    if call.is_live() && call.status != CallStatus::Ending.as_str() {
        let _ = calls::apply_control(&state, &caller.auth, call.clone(), Control::Hangup { reason: "hung up through the API".into() }).await;
    }
    let mut now = call;
    // Closing takes the summary's time; a client gets the final figures when it is quick.
    for _ in 0..200 {
        now = caller.call(&state, &id).await?;
        if !now.is_live() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let currency = currency_of(&state, &now).await;
    let (minutes, amount) = cost(&now, &currency);
    let remaining = match &now.session_id {
        Some(sid) => match session_by_id(&state, sid).await? {
            Some(session) => balance(&state, &session).await?,
            None => Value::Null,
        },
        None => Value::Null,
    };
    Ok(Json(json!({
        "call_id": now.id,
        "status": now.status,
        "duration": duration_ms(&now) / 1000,
        "cost": { "minutes": minutes, "amount": amount, "currency": currency },
        "remaining_balance": { "minutes": remaining.get("minutes").cloned().unwrap_or(Value::Null), "value": remaining.get("value").cloned().unwrap_or(Value::Null) },
        "ended_at": now.ended_at.map(rfc3339),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionParameters {
    pub digits: Option<String>,
    pub transfer_to: Option<String>,
    pub transfer_note: Option<String>,
    pub reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: String,
    #[serde(default)]
    pub parameters: Option<ActionParameters>,
}

/// `dtmf` (with `w` pauses), `hold`, `unhold`, `transfer`, `hangup`.
pub async fn actions(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>, ApiJson(request): ApiJson<ActionRequest>) -> Result<impl IntoResponse, ApiError> {
    let parameters = request.parameters.unwrap_or(ActionParameters { digits: None, transfer_to: None, transfer_note: None, reason: None });
    let control = match request.action.as_str() {
        "dtmf" => {
            let digits = parameters.digits.ok_or_else(|| ApiError::invalid("parameters.digits", "a dtmf action needs `digits`, e.g. \"1234#\""))?;
            Control::Dtmf { digits: calls::check_digits(&digits).map_err(|e| e.with_field("parameters.digits"))? }
        }
        "hold" => Control::Hold { on: true },
        "unhold" => Control::Hold { on: false },
        "transfer" => {
            let to = parameters.transfer_to.ok_or_else(|| ApiError::invalid("parameters.transfer_to", "a transfer needs `transfer_to`, a phone number"))?;
            Control::Transfer { to: super::numbers::valid_number("parameters.transfer_to", &to, None)?.0 }
        }
        "hangup" => Control::Hangup { reason: parameters.reason.unwrap_or_else(|| "hung up through the API".into()) },
        other => return Err(ApiError::invalid("action", format!("`{}` is not one of dtmf, hold, unhold, transfer, hangup", crate::assistant::check::clip(other)))),
    };
    let call = caller.call(&state, &id).await?;
    let call = calls::apply_control(&state, &caller.auth, call, control).await?;
    Ok((StatusCode::OK, Json(json!({ "call_id": call.id, "action": request.action, "status": "executed", "timestamp": rfc3339(store::now_ms()) }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub session_id: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    /// all, completed, failed, in-progress (or any Ringline status).
    pub status: Option<String>,
}

pub async fn history(State(state): State<AppState>, caller: RingezCaller, ApiQuery(query): ApiQuery<HistoryQuery>) -> Result<Json<Value>, ApiError> {
    let session = caller.session_named(&state, query.session_id.as_deref()).await?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit {limit} is outside 1..200")).with_field("limit"));
    }
    let offset = query.offset.unwrap_or(0).max(0);
    let status = match query.status.as_deref() {
        None | Some("all") => None,
        Some(name) => Some(CallStatus::parse_lenient(name).map(|s| s.as_str().to_string()).ok_or_else(|| ApiError::bad_request("invalid_query", format!("status `{}` is not all, completed, failed, in-progress or another call status", crate::assistant::check::clip(name))).with_field("status"))?),
    };
    let filter = HistoryFilter {
        from: calls::time_bound("start_date", query.start_date.as_deref(), false, 0)?,
        to: calls::time_bound("end_date", query.end_date.as_deref(), true, i64::MAX)?,
        status,
        session_id: session.as_ref().map(|s| s.id.clone()),
        limit,
        offset,
        ..HistoryFilter::default()
    };
    let (rows, total) = state.store.history(&caller.auth.workspace_id, &filter).await?;
    let currency = session.as_ref().map(|s| s.currency.clone()).unwrap_or_else(|| "USD".into());
    let calls: Vec<Value> = rows
        .iter()
        .map(|c| {
            json!({
                "call_id": c.id,
                "to_number": c.to_number,
                "status": c.status,
                "duration": duration_ms(c) / 1000,
                "cost": cost(c, &currency).1,
                "started_at": c.started_at.map(rfc3339),
                "ended_at": c.ended_at.map(rfc3339),
                "recording_url": state.runner.recording_path(&c.id).is_file().then(|| format!("/v1/calls/{}/recording", c.id)),
                "transcript_url": format!("/api/v1/transcripts/{}", c.id),
            })
        })
        .collect();
    let has_more = offset + (rows.len() as i64) < total;
    Ok(Json(json!({ "calls": calls, "pagination": { "total": total, "limit": limit, "offset": offset, "has_more": has_more } })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscribeRequest {
    pub language: Option<String>,
    pub webhook_url: Option<String>,
    pub interim_results: Option<bool>,
    pub speaker_labels: Option<bool>,
}

/// Every call is transcribed as it runs; this adds a receiver for its `transcription.updated`
/// events (each final line, Ringez-signed) and says where the live stream is.
pub async fn transcribe(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>, ApiJson(request): ApiJson<TranscribeRequest>) -> Result<Json<Value>, ApiError> {
    let call = caller.call(&state, &id).await?;
    if let Some(url) = &request.webhook_url {
        state.runner.egress().check_url_resolved(url).await.map_err(|e| ApiError::invalid("webhook_url", e.to_string()))?;
        let mut metadata: Value = serde_json::from_str(&call.metadata).unwrap_or_else(|_| json!({}));
        metadata["transcription_webhook_url"] = json!(url);
        sqlx::query("UPDATE calls SET metadata = $1 WHERE id = $2")
            .bind(metadata.to_string())
            .bind(&call.id)
            .execute(&state.store.pool)
            .await
            .map_err(store::StoreError::from)?;
    }
    Ok(Json(json!({
        "call_id": call.id,
        "transcription_enabled": true,
        "transcription_id": format!("trans_{}", call.id.trim_start_matches("call_")),
        "language": request.language.unwrap_or_else(|| "en-US".into()),
        "interim_results": request.interim_results.unwrap_or(false),
        // Live lines as server-sent events (partial and final, speaker-labelled).
        "websocket_url": Value::Null,
        "events_url": format!("/v1/calls/{}/events", call.id),
    })))
}

/// Who spoke, in Ringez's words: the side that placed the call is the `caller`.
fn ringez_speaker(call: &CallRecord, speaker: &str) -> &'static str {
    let agent_placed = call.direction != "inbound";
    match (speaker == "agent", agent_placed) {
        (true, true) | (false, false) => "caller",
        _ => "recipient",
    }
}

pub async fn transcript(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let call = caller.call(&state, &id).await?;
    let lines = state.store.transcript(&call.id).await?;
    let language = calls::call_language(&state, &call).await;
    Ok(Json(json!({
        "call_id": call.id,
        "transcript": lines.iter().map(|l| json!({
            "speaker": ringez_speaker(&call, &l.speaker),
            "role": l.speaker,
            "text": l.text,
            "timestamp": l.at_ms as f64 / 1000.0,
            // Whisper's per-line confidence is not kept yet.
            "confidence": Value::Null,
        })).collect::<Vec<_>>(),
        "language": language,
        "duration": duration_ms(&call) / 1000,
        "download_url": format!("/api/v1/transcripts/{}", call.id),
    })))
}

// ── contacts ────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactRequest {
    pub session_id: Option<String>,
    pub name: Option<String>,
    pub phone_number: Option<String>,
    pub labels: Option<Vec<String>>,
    pub notes: Option<String>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct ContactRecord {
    id: String,
    name: String,
    phone_number: String,
    notes: Option<String>,
    metadata: String,
    created_at: i64,
    updated_at: i64,
}

/// A contact's fields, checked: (name, E.164 number, labels, notes, metadata).
fn check_contact(request: &ContactRequest, existing: Option<&ContactRecord>) -> Result<(String, String, Option<Vec<String>>, Option<String>, String), ApiError> {
    let name = match (&request.name, existing) {
        (Some(name), _) => name.trim().to_string(),
        (None, Some(c)) => c.name.clone(),
        (None, None) => return Err(ApiError::invalid("name", "a contact needs a name")),
    };
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", "give 1 to 200 printable characters"));
    }
    let phone = match (&request.phone_number, existing) {
        (Some(raw), _) => super::numbers::valid_number("phone_number", raw, None)?.0,
        (None, Some(c)) => c.phone_number.clone(),
        (None, None) => return Err(ApiError::invalid("phone_number", "a contact needs a phone number in E.164 form, e.g. +14155551234")),
    };
    if let Some(labels) = &request.labels {
        if labels.len() > MAX_LABELS {
            return Err(ApiError::invalid("labels", format!("has {} labels; the most is {MAX_LABELS}", labels.len())));
        }
        for (i, label) in labels.iter().enumerate() {
            if label.trim().is_empty() || label.chars().count() > 50 || label.chars().any(char::is_control) {
                return Err(ApiError::invalid(format!("labels.{i}"), "a label is 1 to 50 printable characters"));
            }
        }
    }
    let notes = match (&request.notes, existing) {
        (Some(notes), _) if notes.chars().count() > 2000 => return Err(ApiError::invalid("notes", "is longer than 2,000 characters")),
        (Some(notes), _) => Some(notes.clone()),
        (None, Some(c)) => c.notes.clone(),
        (None, None) => None,
    };
    let metadata = match (&request.metadata, existing) {
        (Some(value @ Value::Object(_)), _) if value.to_string().len() <= 8192 => value.to_string(),
        (Some(Value::Null), _) | (None, None) => "{}".into(),
        (Some(_), _) => return Err(ApiError::invalid("metadata", "must be a JSON object of at most 8 KB")),
        (None, Some(c)) => c.metadata.clone(),
    };
    let labels = request.labels.as_ref().map(|l| {
        let mut unique: Vec<String> = Vec::new();
        for label in l {
            let label = label.trim().to_string();
            if !unique.contains(&label) {
                unique.push(label);
            }
        }
        unique
    });
    Ok((name, phone, labels, notes, metadata))
}

async fn contact(state: &AppState, workspace_id: &str, id: &str) -> Result<ContactRecord, ApiError> {
    sqlx::query_as::<_, ContactRecord>("SELECT id, name, phone_number, notes, metadata, created_at, updated_at FROM contacts WHERE workspace_id = $1 AND id = $2")
        .bind(workspace_id)
        .bind(id)
        .fetch_optional(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?
        .ok_or_else(|| ApiError::not_found("contact", id))
}

async fn set_labels(state: &AppState, id: &str, labels: &[String]) -> Result<(), ApiError> {
    let mut tx = state.store.pool.begin().await.map_err(store::StoreError::from)?;
    sqlx::query("DELETE FROM contact_labels WHERE contact_id = $1").bind(id).execute(&mut *tx).await.map_err(store::StoreError::from)?;
    for label in labels {
        sqlx::query("INSERT INTO contact_labels (contact_id, label) VALUES ($1, $2)").bind(id).bind(label).execute(&mut *tx).await.map_err(store::StoreError::from)?;
    }
    tx.commit().await.map_err(store::StoreError::from)?;
    Ok(())
}

async fn contact_view(state: &AppState, workspace_id: &str, c: &ContactRecord) -> Result<Value, ApiError> {
    let labels: Vec<String> = sqlx::query_scalar("SELECT label FROM contact_labels WHERE contact_id = $1 ORDER BY label")
        .bind(&c.id)
        .fetch_all(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    let (count, last): (i64, Option<i64>) = sqlx::query_as("SELECT COUNT(*), MAX(created_at) FROM calls WHERE workspace_id = $1 AND to_number = $2")
        .bind(workspace_id)
        .bind(&c.phone_number)
        .fetch_one(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    Ok(json!({
        "contact_id": c.id,
        "name": c.name,
        "phone_number": c.phone_number,
        "labels": labels,
        "notes": c.notes,
        "metadata": serde_json::from_str::<Value>(&c.metadata).unwrap_or(Value::Null),
        "last_called": last.map(rfc3339),
        "call_count": count,
        "created_at": rfc3339(c.created_at),
        "updated_at": rfc3339(c.updated_at),
    }))
}

pub async fn add_contact(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<ContactRequest>) -> Result<impl IntoResponse, ApiError> {
    caller.session_named(&state, request.session_id.as_deref()).await?;
    let (name, phone, labels, notes, metadata) = check_contact(&request, None)?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE workspace_id = $1").bind(&caller.auth.workspace_id).fetch_one(&state.store.pool).await.map_err(store::StoreError::from)?;
    if count >= MAX_CONTACTS {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "contact_limit", format!("this workspace has {MAX_CONTACTS} contacts, its limit; delete some first")));
    }
    let now = store::now_ms();
    let id = store::new_id("cnt");
    sqlx::query("INSERT INTO contacts (id, workspace_id, name, phone_number, notes, metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
        .bind(&id)
        .bind(&caller.auth.workspace_id)
        .bind(&name)
        .bind(&phone)
        .bind(&notes)
        .bind(&metadata)
        .bind(now)
        .execute(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    set_labels(&state, &id, &labels.unwrap_or_default()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "contact_id": id, "name": name, "phone_number": phone, "created_at": rfc3339(now) }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactQuery {
    pub session_id: Option<String>,
    /// Part of a name or a number.
    pub search: Option<String>,
    pub label: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// `%` and `_` taken literally in a LIKE pattern.
fn like_escaped(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

pub async fn list_contacts(State(state): State<AppState>, caller: RingezCaller, ApiQuery(query): ApiQuery<ContactQuery>) -> Result<Json<Value>, ApiError> {
    caller.session_named(&state, query.session_id.as_deref()).await?;
    let (limit, offset) = super::assistants::Page { limit: query.limit, offset: query.offset }.resolve()?;
    let search = query.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > 100) {
        return Err(ApiError::bad_request("invalid_query", "search is longer than 100 characters").with_field("search"));
    }
    let pattern = format!("%{}%", like_escaped(&search.unwrap_or("").to_lowercase()));
    let digits: String = search.unwrap_or("").chars().filter(|c| c.is_ascii_digit()).collect();
    let number_pattern = if digits.is_empty() { String::new() } else { format!("%{digits}%") };
    let where_clause = "workspace_id = $1 AND (LOWER(name) LIKE $2 ESCAPE '\\' OR ($3 <> '' AND phone_number LIKE $3)) \
                        AND ($4 = '' OR EXISTS (SELECT 1 FROM contact_labels l WHERE l.contact_id = contacts.id AND l.label = $4))";
    let label = query.label.unwrap_or_default();
    let rows = sqlx::query_as::<_, ContactRecord>(&format!("SELECT id, name, phone_number, notes, metadata, created_at, updated_at FROM contacts WHERE {where_clause} ORDER BY name, id LIMIT $5 OFFSET $6"))
        .bind(&caller.auth.workspace_id)
        .bind(&pattern)
        .bind(&number_pattern)
        .bind(&label)
        .bind(limit)
        .bind(offset)
        .fetch_all(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM contacts WHERE {where_clause}"))
        .bind(&caller.auth.workspace_id)
        .bind(&pattern)
        .bind(&number_pattern)
        .bind(&label)
        .fetch_one(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    let mut contacts = Vec::with_capacity(rows.len());
    for row in &rows {
        contacts.push(contact_view(&state, &caller.auth.workspace_id, row).await?);
    }
    Ok(Json(json!({ "contacts": contacts, "total": total })))
}

pub async fn read_contact(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let c = contact(&state, &caller.auth.workspace_id, &id).await?;
    Ok(Json(contact_view(&state, &caller.auth.workspace_id, &c).await?))
}

/// Changes the fields given (the others stay); `labels` replaces the list.
pub async fn update_contact(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>, ApiJson(request): ApiJson<ContactRequest>) -> Result<Json<Value>, ApiError> {
    let existing = contact(&state, &caller.auth.workspace_id, &id).await?;
    let (name, phone, labels, notes, metadata) = check_contact(&request, Some(&existing))?;
    sqlx::query("UPDATE contacts SET name = $1, phone_number = $2, notes = $3, metadata = $4, updated_at = $5 WHERE workspace_id = $6 AND id = $7")
        .bind(&name)
        .bind(&phone)
        .bind(&notes)
        .bind(&metadata)
        .bind(store::now_ms())
        .bind(&caller.auth.workspace_id)
        .bind(&id)
        .execute(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    if let Some(labels) = labels {
        set_labels(&state, &id, &labels).await?;
    }
    let c = contact(&state, &caller.auth.workspace_id, &id).await?;
    Ok(Json(contact_view(&state, &caller.auth.workspace_id, &c).await?))
}

pub async fn remove_contact(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    contact(&state, &caller.auth.workspace_id, &id).await?;
    set_labels(&state, &id, &[]).await?;
    sqlx::query("DELETE FROM contacts WHERE workspace_id = $1 AND id = $2").bind(&caller.auth.workspace_id).bind(&id).execute(&state.store.pool).await.map_err(store::StoreError::from)?;
    Ok(Json(json!({ "success": true, "contact_id": id })))
}

// ── numbers ─────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    pub phone_number: String,
    /// Default country for a national number (ISO 3166).
    pub country: Option<String>,
}

/// Emergency numbers: never callable through an agent.
const EMERGENCY: &[&str] = &["911", "112", "999", "000", "100", "101", "102", "108", "110", "119"];

pub async fn validate(State(state): State<AppState>, _caller: RingezCaller, ApiJson(request): ApiJson<ValidateRequest>) -> Result<Json<Value>, ApiError> {
    let country = super::numbers::parse_country(request.country.as_deref())?;
    let digits: String = request.phone_number.chars().filter(|c| c.is_ascii_digit()).collect();
    let is_emergency = EMERGENCY.contains(&digits.as_str());
    let info = with_telephony(describe(&request.phone_number, country), state.can_dial_out());
    let rate = rate_for(&info);
    Ok(Json(json!({
        "valid": info.valid,
        "phone_number": info.e164.clone().unwrap_or(request.phone_number.clone()),
        "country": info.country,
        "country_code": info.country_code.map(|c| format!("+{c}")),
        "national_format": info.national_format,
        "type": info.kind,
        // No carrier database ships with Ringline.
        "carrier": Value::Null,
        "is_callable": info.callable && !is_emergency,
        "is_emergency": is_emergency,
        "is_premium": info.kind.as_deref() == Some("premium_rate"),
        "estimated_rate": { "per_minute": rate, "currency": "USD" },
        "timezone": info.timezone,
        "reason": info.reason,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatesQuery {
    pub country_code: Option<String>,
    pub currency: Option<String>,
}

fn rate_view(code: &str, name: &str, prefix: Option<&str>, mobile: f64, landline: f64, currency: &str) -> Value {
    json!({
        "country": name,
        "country_code": code,
        "dial_prefix": prefix,
        "rates": {
            "mobile": { "per_minute": in_currency(mobile, currency), "currency": currency },
            "landline": { "per_minute": in_currency(landline, currency), "currency": currency },
        },
    })
}

/// The rate table: one country's rates, or every listed country's (and the rate for others).
pub async fn rates(_caller: RingezCaller, ApiQuery(query): ApiQuery<RatesQuery>) -> Result<Json<Value>, ApiError> {
    let currency = query.currency.unwrap_or_else(|| "USD".into()).to_ascii_uppercase();
    if !matches!(currency.as_str(), "USD" | "INR") {
        return Err(ApiError::bad_request("invalid_query", format!("currency `{}` is not USD or INR", crate::assistant::check::clip(&currency))).with_field("currency"));
    }
    match query.country_code {
        Some(code) => {
            let code = code.to_ascii_uppercase();
            let Some((code, name, prefix, mobile, landline)) = RATES.iter().find(|(c, ..)| *c == code) else {
                if code.len() == 2 && code.parse::<phonenumber::country::Id>().is_ok() {
                    return Ok(Json(rate_view(&code, &code, None, OTHER_RATE, OTHER_RATE, &currency)));
                }
                return Err(ApiError::bad_request("invalid_query", format!("country_code `{}` is not an ISO 3166 code such as US, IN or GB", crate::assistant::check::clip(&code))).with_field("country_code"));
            };
            Ok(Json(rate_view(code, name, Some(prefix), *mobile, *landline, &currency)))
        }
        None => Ok(Json(json!({
            "countries": RATES.iter().map(|(code, name, prefix, m, l)| rate_view(code, name, Some(prefix), *m, *l, &currency)).collect::<Vec<_>>(),
            "other_countries": { "per_minute": in_currency(OTHER_RATE, &currency), "currency": currency },
        }))),
    }
}

// ── webhooks ────────────────────────────────────────────────────────────────────────────

/// What a Ringez subscription may ask for.
pub const EVENTS: &[&str] = &["call.initiated", "call.ringing", "call.answered", "call.completed", "call.failed", "transcription.updated", "balance.low"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub session_id: Option<String>,
    pub webhook_url: String,
    pub events: Vec<String>,
    pub secret: Option<String>,
}

/// Subscribes a URL to call events in Ringez's shape (`{event, timestamp, data}`), signed with
/// `X-Ringez-Signature: <hex HMAC-SHA256 of the body>`.
pub async fn subscribe(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<SubscribeRequest>) -> Result<impl IntoResponse, ApiError> {
    caller.session_named(&state, request.session_id.as_deref()).await?;
    for event in &request.events {
        if !EVENTS.contains(&event.as_str()) {
            return Err(ApiError::invalid("events", format!("`{}` is not an event; use {}", crate::assistant::check::clip(event), EVENTS.join(", "))));
        }
    }
    let hook = super::webhooks::subscribe(&state, &caller.auth, &request.webhook_url, "webhook_url", request.events.clone(), request.secret, "ringez").await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "webhook_id": hook.id,
            "status": "active",
            "events": request.events,
            "secret": hook.secret,
            "created_at": hook.created_at,
        })),
    ))
}

// ── agent features ──────────────────────────────────────────────────────────────────────

/// The intents Ringez's intent detection chooses from when the call's assistant declares none:
/// (intent, sub-intent, department, examples).
const DEFAULT_INTENTS: &[(&str, &str, &str, &[&str])] = &[
    ("customer_support", "order_inquiry", "orders", &["I need to speak with someone about my order", "where is my order", "my parcel has not arrived", "I want to check the status of my order"]),
    ("customer_support", "billing", "billing", &["I was charged twice", "there is a problem with my bill", "I want a refund", "why was I charged"]),
    ("customer_support", "technical_support", "support", &["it doesn't work", "the app keeps crashing", "I can't log in to my account", "my device is broken"]),
    ("sales", "purchase", "sales", &["I want to buy", "how much does it cost", "I'd like to upgrade my plan", "can I get a quote"]),
    ("account", "account_change", "accounts", &["I want to change my address", "update my phone number", "close my account", "reset my password"]),
    ("appointment", "booking", "bookings", &["I'd like to book an appointment", "can I reschedule", "cancel my booking", "is there a table for two tonight"]),
    ("transfer_request", "human_agent", "customer_service", &["let me speak to a person", "can I talk to a human", "transfer me to an agent", "I want to speak to a manager"]),
    ("greeting", "greeting", "customer_service", &["hello", "hi there", "good morning", "is this customer service"]),
    ("goodbye", "goodbye", "customer_service", &["thank you, bye", "that's all", "goodbye", "have a nice day"]),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentDetection {
    pub call_id: Option<String>,
    pub transcript_segment: String,
    #[serde(default)]
    pub context: Value,
    /// Ringline: intents to choose from instead of the call's assistant's or the defaults.
    pub intents: Option<Vec<super::analysis::IntentInput>>,
}

/// The utterance's intent (the call's assistant's intents, else a general customer-service
/// set) with entities and what to do next.
pub async fn intent_detection(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<IntentDetection>) -> Result<Json<Value>, ApiError> {
    super::analysis::check_text(&request.transcript_segment).map_err(|e| e.with_field("transcript_segment"))?;
    if !(request.context.is_null() || request.context.is_object()) || request.context.to_string().len() > 4096 {
        return Err(ApiError::invalid("context", "must be a JSON object of at most 4 KB"));
    }
    let mut timezone = None;
    let mut assistant_intents = None;
    if let Some(id) = &request.call_id {
        let call = caller.call(&state, id).await?;
        if let Some(spec) = state.store.assistant_version(&call.assistant_id, call.assistant_version).await? {
            if let Ok(spec) = serde_json::from_str::<crate::assistant::AssistantSpec>(&spec) {
                timezone = Some(spec.timezone.clone());
                if !spec.intents.is_empty() {
                    assistant_intents = Some((spec.intents.iter().map(crate::assistant::IntentSpec::def).collect::<Vec<_>>(), spec.intent_threshold));
                }
            }
        }
    }
    let (defs, threshold, defaults) = match (request.intents, assistant_intents) {
        (Some(given), _) => (super::analysis::check_intents(given)?, crate::analysis::intent::DEFAULT_THRESHOLD, false),
        (None, Some((defs, threshold))) => (defs, threshold, false),
        (None, None) => {
            let defs = DEFAULT_INTENTS
                .iter()
                .map(|(intent, sub, _, examples)| crate::analysis::IntentDef { name: format!("{intent}/{sub}"), description: None, examples: examples.iter().map(|e| e.to_string()).collect() })
                .collect();
            (defs, 0.45, true)
        }
    };
    let today = super::analysis::today_in(timezone.as_deref())?;
    let text = request.transcript_segment.clone();
    let found = super::analysis::analyze(&state, text, Some(defs), threshold, today).await?;
    let matched = found.intent.clone().ok_or_else(|| ApiError::internal("no intent came back"))?;
    let (intent, sub_intent) = match matched.intent.split_once('/') {
        Some((i, s)) if defaults => (i.to_string(), Some(s.to_string())),
        _ => (matched.intent.clone(), None),
    };
    let department = DEFAULT_INTENTS.iter().find(|(i, s, ..)| *i == intent && Some(*s) == sub_intent.as_deref()).map(|(.., d, _)| *d);
    let mut entities = serde_json::Map::new();
    for entity in &found.entities {
        let key = match entity.kind {
            "id" | "number" if request.transcript_segment.to_lowercase().contains("order") => "order_number",
            "id" => "reference",
            other => other,
        };
        // Ids are text (a leading zero is part of one).
        let value = match (&entity.value, key) {
            (Value::Number(n), "order_number" | "reference") => Value::String(n.to_string()),
            (value, _) => value.clone(),
        };
        entities.entry(key.to_string()).or_insert(value);
    }
    if let Some(department) = department {
        entities.insert("department".into(), json!(department));
    }
    let negative = found.sentiment.score < -0.5;
    let suggested_action = match intent.as_str() {
        "transfer_request" => "transfer_to_department",
        _ if negative => "escalate_to_supervisor",
        "customer_support" | "sales" | "account" => "transfer_to_department",
        "unknown" => "ask_clarifying_question",
        "goodbye" => "end_call",
        _ => "continue_conversation",
    };
    Ok(Json(json!({
        "intent": intent,
        "sub_intent": sub_intent,
        "entities": entities,
        "confidence": matched.confidence,
        "suggested_action": suggested_action,
        "suggested_parameters": { "department": department, "priority": if negative { "high" } else { "medium" } },
        "sentiment": found.sentiment,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentimentAnalysis {
    pub call_id: Option<String>,
    pub transcript_segment: String,
    pub include_recommendations: Option<bool>,
}

const URGENT: &[&str] = &["urgent", "immediately", "right now", "asap", "emergency", "weeks", "still", "again"];

pub async fn sentiment_analysis(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<SentimentAnalysis>) -> Result<Json<Value>, ApiError> {
    let text = &request.transcript_segment;
    super::analysis::check_text(text).map_err(|e| e.with_field("transcript_segment"))?;
    if let Some(id) = &request.call_id {
        caller.call(&state, id).await?;
    }
    let sentiment = crate::analysis::sentiment::score(text);
    let lower = text.to_lowercase();
    let emotion = if sentiment.score <= -0.2 {
        if ["angry", "furious", "ridiculous", "outrageous", "unacceptable"].iter().any(|w| lower.contains(w)) {
            "angry"
        } else if ["frustrat", "annoy", "fed up", "waiting"].iter().any(|w| lower.contains(w)) {
            "frustrated"
        } else if ["worried", "afraid", "scared", "anxious"].iter().any(|w| lower.contains(w)) {
            "anxious"
        } else {
            "dissatisfied"
        }
    } else if sentiment.score >= 0.2 {
        "satisfied"
    } else {
        "neutral"
    };
    let urgent_words = URGENT.iter().filter(|w| lower.contains(*w)).count();
    let urgency = if sentiment.score < -0.6 || (sentiment.score < -0.2 && urgent_words > 0) || urgent_words >= 2 {
        "high"
    } else if sentiment.score < -0.2 || urgent_words == 1 {
        "medium"
    } else {
        "low"
    };
    let escalate = sentiment.score < -0.6 || (urgency == "high" && sentiment.score < -0.2);
    let mut body = json!({
        "sentiment": sentiment.label.as_str(),
        "sentiment_score": sentiment.score,
        "emotion": emotion,
        "urgency": urgency,
        "escalation_recommended": escalate,
        "key_phrases": crate::analysis::sentiment::key_phrases(text),
    });
    if request.include_recommendations.unwrap_or(true) {
        let (tone, actions): (&str, &[&str]) = match (sentiment.label.as_str(), escalate) {
            ("negative", true) => ("empathetic_and_solution_focused", &["acknowledge_frustration", "offer_immediate_solution", "escalate_to_supervisor"]),
            ("negative", false) => ("empathetic", &["acknowledge_concern", "offer_solution"]),
            ("positive", _) => ("warm", &["thank_customer", "offer_further_help"]),
            _ => ("neutral_and_helpful", &["answer_question"]),
        };
        body["recommended_response_tone"] = json!(tone);
        body["suggested_actions"] = json!(actions);
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingRequest {
    #[serde(default)]
    pub caller_info: Value,
    #[serde(default)]
    pub routing_criteria: Value,
    pub business_hours: Option<bool>,
}

/// Where to send a caller: the workspace's number labelled with the department (numbers are
/// labelled when added: `POST /v1/numbers {"label": "sales"}`); `voicemail` and `callback`
/// labelled numbers are the fallbacks.
pub async fn call_routing(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<RoutingRequest>) -> Result<Json<Value>, ApiError> {
    let department = request.routing_criteria.get("department").and_then(Value::as_str).map(str::to_lowercase);
    let skill = request.routing_criteria.get("skill_required").and_then(Value::as_str).map(str::to_lowercase);
    let (numbers, _) = state.store.numbers(&caller.auth.workspace_id, 1000, 0).await?;
    let label_of = |n: &crate::store::NumberRecord| n.label.clone().unwrap_or_default().to_lowercase();
    let wanted: Vec<String> = [department.clone(), skill.clone()].into_iter().flatten().collect();
    let matching = numbers.iter().filter(|n| !wanted.is_empty() && wanted.iter().all(|w| label_of(n).contains(w.as_str()))).chain(
        numbers.iter().filter(|n| department.as_deref().is_some_and(|d| label_of(n).contains(d))),
    );
    let fallback: Vec<Value> = numbers
        .iter()
        .filter(|n| label_of(n).contains("voicemail"))
        .map(|n| json!({ "type": "voicemail", "number": n.e164 }))
        .chain(numbers.iter().filter(|n| label_of(n).contains("callback")).map(|n| json!({ "type": "callback", "number": n.e164 })))
        .collect();
    let open = request.business_hours.unwrap_or(true);
    let Some(target) = matching.into_iter().next().filter(|_| open) else {
        if let Some(first) = fallback.first() {
            return Ok(Json(json!({ "route_to": first["number"], "route_type": first["type"], "estimated_wait_time": 0, "agent_available": false, "fallback_options": fallback[1..].to_vec() })));
        }
        let asked = department.unwrap_or_else(|| "(none given)".into());
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_route", format!("no number in this workspace is labelled for department `{asked}`, and none for voicemail; label numbers when adding them (POST /v1/numbers with \"label\": \"{asked}\")")).with_field("routing_criteria.department"));
    };
    let busy = state.store.history(&caller.auth.workspace_id, &HistoryFilter { to_number: Some(target.e164.clone()), status: Some("in-progress".into()), to: i64::MAX, limit: 1, ..HistoryFilter::default() }).await?.1;
    Ok(Json(json!({
        "route_to": target.e164,
        "route_type": "direct",
        // Ringline does not queue transfers: a free line is answered at once.
        "estimated_wait_time": 0,
        "agent_available": busy == 0,
        "fallback_options": fallback,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    pub session_id: Option<String>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    /// day, week or month.
    pub group_by: Option<String>,
}

fn bucket(ms: i64, group: &str) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else { return String::new() };
    match group {
        "week" => {
            let week = t.iso_week();
            format!("{}-W{:02}", week.year(), week.week())
        }
        "month" => t.format("%Y-%m").to_string(),
        "hour" => t.format("%Y-%m-%dT%H:00").to_string(),
        _ => t.format("%Y-%m-%d").to_string(),
    }
}

use chrono::Datelike;

pub async fn call_metrics(State(state): State<AppState>, caller: RingezCaller, ApiQuery(query): ApiQuery<MetricsQuery>) -> Result<Json<Value>, ApiError> {
    let session = caller.session_named(&state, query.session_id.as_deref()).await?;
    let group = query.group_by.unwrap_or_else(|| "day".into());
    if !matches!(group.as_str(), "day" | "week" | "month" | "hour") {
        return Err(ApiError::bad_request("invalid_query", format!("group_by `{}` is not day, week, month or hour", crate::assistant::check::clip(&group))).with_field("group_by"));
    }
    let from = calls::time_bound("start_date", query.start_date.as_deref(), false, 0)?;
    let to = calls::time_bound("end_date", query.end_date.as_deref(), true, i64::MAX)?;
    let rows = calls_in(&state, &caller.auth.workspace_id, session.as_ref().map(|s| s.id.as_str()), from, to).await?;
    let currency = session.as_ref().map(|s| s.currency.clone()).unwrap_or_else(|| "USD".into());
    let mut by_country: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_type: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_period: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let (mut duration_s, mut total_cost, mut completed, mut ended) = (0i64, 0.0f64, 0i64, 0i64);
    for call in &rows {
        let info = describe(&call.to_number, None);
        *by_country.entry(info.country.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1;
        let kind = match info.kind.as_deref() {
            Some("fixed_line" | "toll_free") => "landline",
            _ => "mobile",
        };
        *by_type.entry(kind.into()).or_default() += 1;
        *by_status.entry(call.status.replace('-', "_")).or_default() += 1;
        let period = by_period.entry(bucket(call.created_at, &group)).or_default();
        period.0 += 1;
        period.1 += duration_ms(call) / 1000;
        duration_s += duration_ms(call) / 1000;
        total_cost += cost(call, &currency).1;
        if !call.is_live() {
            ended += 1;
            if call.status == "completed" {
                completed += 1;
            }
        }
    }
    let total = rows.len() as i64;
    let first = rows.iter().map(|c| c.created_at).min();
    let last = rows.iter().map(|c| c.created_at).max();
    let mut breakdown = json!({ "by_country": by_country, "by_type": by_type, "by_status": by_status });
    breakdown[format!("by_{group}")] = json!(by_period.into_iter().map(|(period, (calls, seconds))| json!({ group.clone(): period, "total_calls": calls, "total_duration": seconds })).collect::<Vec<_>>());
    Ok(Json(json!({
        "period": {
            "start": if from > 0 { Some(rfc3339(from)) } else { first.map(rfc3339) },
            "end": if to < i64::MAX { Some(rfc3339(to - 1)) } else { last.map(rfc3339) },
        },
        "metrics": {
            "total_calls": total,
            "total_duration": duration_s,
            "total_cost": money(total_cost),
            "currency": currency,
            "average_duration": if total > 0 { ((duration_s as f64 / total as f64) * 100.0).round() / 100.0 } else { 0.0 },
            "success_rate": if ended > 0 { ((completed as f64 / ended as f64) * 100.0).round() / 100.0 } else { 0.0 },
            // No line measures MOS here.
            "call_quality_avg": Value::Null,
        },
        "breakdown": breakdown,
    })))
}

/// This month's spending against the session's budget, and a straight-line forecast.
pub async fn spending(State(state): State<AppState>, caller: RingezCaller, ApiQuery(query): ApiQuery<SessionQuery>) -> Result<Json<Value>, ApiError> {
    let session = caller.session_named(&state, query.session_id.as_deref()).await?;
    let now = chrono::Utc::now();
    let start = chrono::NaiveDate::from_ymd_opt(now.year(), now.month(), 1).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()).unwrap_or(now);
    let next = if now.month() == 12 { chrono::NaiveDate::from_ymd_opt(now.year() + 1, 1, 1) } else { chrono::NaiveDate::from_ymd_opt(now.year(), now.month() + 1, 1) };
    let end = next.and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()).unwrap_or(now);
    let rows = calls_in(&state, &caller.auth.workspace_id, session.as_ref().map(|s| s.id.as_str()), start.timestamp_millis(), end.timestamp_millis()).await?;
    let currency = session.as_ref().map(|s| s.currency.clone()).unwrap_or_else(|| "USD".into());
    let spent = money(rows.iter().map(|c| cost(c, &currency).1).sum());
    let limit = session.as_ref().and_then(SessionRecord::spend_limit);
    let elapsed = (now - start).num_seconds().max(1) as f64;
    let month = (end - start).num_seconds().max(1) as f64;
    let forecast = money(spent * month / elapsed);
    let risk = match limit {
        Some(l) if forecast > l => "high",
        Some(l) if forecast > 0.8 * l => "medium",
        Some(_) => "low",
        None => "none",
    };
    Ok(Json(json!({
        "current_period": {
            "start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "end": (end - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "total_spent": spent,
            "currency": currency,
            "budget_limit": limit,
            "budget_remaining": limit.map(|l| money((l - spent).max(0.0))),
            "utilization_percentage": limit.filter(|l| *l > 0.0).map(|l| money(spent / l * 100.0)),
        },
        "predictions": {
            "estimated_month_end_spend": forecast,
            "over_budget_risk": risk,
            "recommended_top_up": limit.map(|l| money((forecast - l).max(0.0))),
        },
    })))
}

/// The longest text one clip speaks.
const MAX_SYNTHESIS_CHARS: usize = 1_000;
/// How long a clip stays.
const CLIP_TTL_MS: i64 = 3600 * 1000;
/// Clips one workspace may keep at once.
const MAX_CLIPS: usize = 200;
/// One synthesis at a time per server: live calls keep the other core.
static SYNTHESIS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthesisRequest {
    pub text: String,
    /// A Ringg name (`female-1`), a voice in the store, or `espeak:VOICE`; another provider's
    /// name (`en-US-Neural2-A`) speaks with the default voice, and the answer says so.
    pub voice: Option<String>,
    /// 0.5 to 2.0.
    pub speed: Option<f32>,
    /// Only 0 (the voice's own pitch).
    pub pitch: Option<f32>,
    /// `wav` (mp3 and webm are not encoded here).
    pub output_format: Option<String>,
}

/// Where a workspace's clips are kept.
fn clips_dir(state: &AppState, workspace_id: &str) -> std::path::PathBuf {
    let safe: String = workspace_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    state.config.recordings_dir.join("synthesized").join(safe)
}

/// Deletes a workspace's clips older than their hour; returns how many are left.
fn sweep_clips(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut left = 0;
    for entry in entries.flatten() {
        let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).map(|d| d.as_millis() as i64).unwrap_or(i64::MAX);
        if age > CLIP_TTL_MS {
            let _ = std::fs::remove_file(entry.path());
        } else {
            left += 1;
        }
    }
    left
}

/// The voice a request names, as `load_voice` takes it, and a note when it was replaced.
fn synthesis_voice(state: &AppState, requested: Option<&str>) -> (String, Option<String>) {
    let Some(name) = requested else { return (crate::tts::DEFAULT_VOICE.to_string(), None) };
    if let Some((provider, voice)) = crate::tts::resolve_named_voice(name) {
        return (if provider == "espeak" { format!("espeak:{voice}") } else { voice.to_string() }, None);
    }
    if crate::tts::espeak_voice(name).is_some() || state.runner.models().manifest.get(&format!("piper-{name}")).is_ok() {
        return (name.to_string(), None);
    }
    let note = format!("no voice `{}` here; spoken with {}", crate::assistant::check::clip(name), crate::tts::DEFAULT_VOICE);
    (crate::tts::DEFAULT_VOICE.to_string(), Some(note))
}

fn speak_clip(models: &crate::models::ModelStore, voice: &str, text: &str, speed: f32) -> Result<crate::audio::Audio, String> {
    use crate::tts::TextToSpeech;
    match crate::tts::espeak_voice(voice) {
        Some(espeak) => {
            let (samples, rate) = crate::tts::espeak::synthesize(text, espeak, Some((175.0 * speed).round() as u32)).map_err(|e| e.to_string())?;
            Ok(crate::audio::Audio::new(samples.iter().map(|s| *s as f32 / 32768.0).collect(), rate))
        }
        None => {
            let mut piper = crate::tts::piper::PiperVoice::load(models, voice, 1).map_err(|e| e.to_string())?;
            piper.scales_mut().length_scale = 1.0 / speed;
            piper.speak_all(text).map_err(|e| e.to_string())
        }
    }
}

/// Speaks a text into a WAV the workspace can fetch for an hour.
pub async fn voice_synthesis(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<SynthesisRequest>) -> Result<impl IntoResponse, ApiError> {
    let chars = request.text.chars().count();
    if request.text.trim().is_empty() || chars > MAX_SYNTHESIS_CHARS {
        return Err(ApiError::invalid("text", format!("give 1 to {MAX_SYNTHESIS_CHARS} characters to speak (this is {chars})")));
    }
    let speed = request.speed.unwrap_or(1.0);
    if !(0.5..=2.0).contains(&speed) {
        return Err(ApiError::invalid("speed", format!("{speed}: give 0.5 to 2.0 (1.0 is the voice's own pace)")));
    }
    if request.pitch.is_some_and(|p| p != 0.0) {
        return Err(ApiError::invalid("pitch", "only 0 (the voice's own pitch); choose another voice for a different one"));
    }
    let format = request.output_format.unwrap_or_else(|| "wav".into());
    if format != "wav" {
        return Err(ApiError::invalid("output_format", format!("`{}`: Ringline writes wav (16-bit PCM); convert it if you need mp3 or webm", crate::assistant::check::clip(&format))));
    }
    let (voice, note) = synthesis_voice(&state, request.voice.as_deref());
    let dir = clips_dir(&state, &caller.auth.workspace_id);
    let _permit = SYNTHESIS.acquire().await.map_err(|_| ApiError::internal("the synthesis queue closed"))?;
    let (models, text, spoken_with, folder) = (state.runner.models().clone(), request.text.clone(), voice.clone(), dir.clone());
    let id = store::new_id("audio");
    let path = dir.join(format!("{id}.wav"));
    let target = path.clone();
    let duration = tokio::task::spawn_blocking(move || -> Result<f64, ApiError> {
        std::fs::create_dir_all(&folder).map_err(|e| ApiError::internal(format!("cannot keep the clip: {e}")))?;
        if sweep_clips(&folder) >= MAX_CLIPS {
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "clip_limit", format!("this workspace keeps {MAX_CLIPS} clips, its limit; each goes an hour after it was made")));
        }
        let audio = speak_clip(&models, &spoken_with, &text, speed).map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "voice_unavailable", e))?;
        audio.write_wav(&target).map_err(|e| ApiError::internal(format!("cannot write the clip: {e}")))?;
        Ok(audio.samples.len() as f64 / audio.rate as f64)
    })
    .await
    .map_err(|e| ApiError::internal(format!("synthesis stopped: {e}")))??;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "audio_id": id,
            "audio_url": format!("/api/v1/audio/{id}"),
            "duration": (duration * 100.0).round() / 100.0,
            "format": "wav",
            "voice": voice,
            "note": note,
            "expires_at": rfc3339(store::now_ms() + CLIP_TTL_MS),
        })),
    ))
}

/// A clip this workspace synthesized, within its hour.
pub async fn audio(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<axum::response::Response, ApiError> {
    let missing = || ApiError::not_found("audio clip", &id);
    if !id.starts_with("audio_") || !id[6..].chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(missing());
    }
    let path = clips_dir(&state, &caller.auth.workspace_id).join(format!("{id}.wav"));
    let fresh = std::fs::metadata(&path).ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|age| (age.as_millis() as i64) <= CLIP_TTL_MS);
    if !fresh {
        return Err(missing());
    }
    let bytes = tokio::fs::read(&path).await.map_err(|_| missing())?;
    Ok(([(axum::http::header::CONTENT_TYPE, "audio/wav")], bytes).into_response())
}

/// What a self-hosted server does not do, and what to use instead.
pub async fn not_here(uri: axum::http::Uri, _headers: HeaderMap) -> ApiError {
    let path = uri.path();
    let instead = if path.contains("/wallet/") {
        "Ringline takes no payments: a session's budget is its user_consent.max_spend_limit"
    } else if path.contains("/auth/") {
        "Ringline authenticates with API keys: open a session with POST /api/v1/sessions/create and send its id as X-Session-ID"
    } else if path.contains("/security/rotate-key") {
        "rotate keys with `ringline keys rotate KEY_ID` on the server"
    } else if path.contains("/security/") {
        "restrict who reaches the server at its reverse proxy or firewall"
    } else {
        "batches, scheduled and queued calls come with campaigns; place calls one at a time with POST /api/v1/calls/initiate"
    };
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", format!("{path} is not part of Ringline: {instead}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_counts_every_started_minute_at_the_numbers_rate() {
        assert_eq!(billed_minutes(0), 0);
        assert_eq!(billed_minutes(1), 1);
        assert_eq!(billed_minutes(150_000), 3, "2 min 30 s is billed as 3");
        assert_eq!(billed_minutes(120_000), 2);
        assert_eq!(rate_for(&describe("+14155552671", None)), 0.125, "a US mobile-or-fixed number pays the mobile rate");
        assert_eq!(rate_for(&describe("+442079460958", None)), 0.06, "a London landline");
        assert_eq!(rate_for(&describe("+5511987654321", None)), OTHER_RATE, "a country outside the table");
        assert_eq!(in_currency(0.125, "INR"), 10.5);
    }

    #[test]
    fn privacy_masks_all_but_the_country_code_and_last_two_digits() {
        assert_eq!(masked("+12025551000"), "+1********00");
        assert_eq!(masked("+919876543210"), "+91********10");
        assert_eq!(masked("+1"), "hidden");
    }

    #[test]
    fn key_phrases_keep_their_boosters_and_how_long_someone_waited() {
        let phrases = crate::analysis::sentiment::key_phrases("This is extremely frustrating! I've been waiting for 3 weeks!");
        assert_eq!(phrases, vec!["extremely frustrating".to_string(), "waiting for 3 weeks".to_string()]);
        assert!(crate::analysis::sentiment::key_phrases("The order number is 42.").is_empty());
    }
}
