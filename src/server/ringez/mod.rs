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
//! server has no use for — payments, OTP log-in — answers 501 naming what to
//! use instead. Batches, scheduled calls and queues are campaigns of their own kind, placed for
//! the session ([`jobs`]).
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
use serde_json::{json, Map, Value};

use super::assistants::rfc3339;
use super::auth::Auth;
use super::calls::{self, OutboundRequest, Placed, Placement};
use super::error::{ApiError, ApiJson, ApiQuery};
use super::numbers::{describe, with_telephony, NumberInfo};
use super::runner::Control;
use super::AppState;
use crate::call::CallStatus;
use crate::store::{self, CallRecord, HistoryFilter};

pub mod agents;
pub mod calling;
pub mod contacts;
pub mod jobs;
pub mod numbers;
pub mod security;
pub mod sessions;
pub mod voice;

pub use agents::EVENTS;
use agents::*;
use calling::*;
use contacts::*;
use jobs::*;
use numbers::*;
use security::*;
use sessions::*;
use voice::*;

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
    ("POST", "/api/v1/batch/calls", "Place calls at once (up to the workspace's calls in progress; the rest as those end), for the session"),
    ("GET", "/api/v1/batch/{id}", "A batch: its state and each call's id and status"),
    ("DELETE", "/api/v1/batch/{id}", "Cancel a batch's calls not yet placed"),
    ("POST", "/api/v1/scheduled-calls", "A call at `scheduled_time` (in `timezone`), again by `retry_policy`"),
    ("GET", "/api/v1/scheduled-calls/{id}", "A scheduled call: scheduled, its call's status, or how it ended"),
    ("DELETE", "/api/v1/scheduled-calls/{id}", "Cancel a scheduled call not yet placed"),
    ("POST", "/api/v1/queue/add", "Calls `concurrent_limit` at a time, higher `priority` first, skipped after `max_wait_time`"),
    ("GET", "/api/v1/queue/{id}", "A queue: its state and each call's priority and status"),
    ("DELETE", "/api/v1/queue/{id}", "Cancel a queue's calls not yet placed"),
    ("POST", "/api/v1/security/whitelist", "Limit the request's key to addresses and CIDR ranges (empty: any again)"),
    ("POST", "/api/v1/security/rotate-key", "Replace the request's key: a successor shown once; the old key works an hour more, or stops at once"),
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
        .route("/batch/calls", post(batch_calls))
        .route("/batch/{id}", get(read_batch).delete(cancel_batch))
        .route("/scheduled-calls", post(schedule_call))
        .route("/scheduled-calls/{id}", get(read_scheduled).delete(cancel_scheduled))
        .route("/queue/add", post(queue_add))
        .route("/queue/{id}", get(read_queue).delete(cancel_queue))
        .route("/security/whitelist", post(whitelist))
        .route("/security/rotate-key", post(rotate_key))
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
    /// The key that opened it, whose address limit it keeps.
    pub key_id: Option<String>,
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
        // A session keeps the address limit of the key that opened it, and ends with its
        // revocation (not with its rotation's grace: the session's own time runs on).
        if let Some(key) = match &session.key_id {
            Some(key_id) => state.store.key(key_id).await?,
            None => None,
        } {
            if key.revoked_at.is_some() {
                return Err(ApiError::unauthorized("the key that opened this session was revoked; open a new session with a current key"));
            }
            super::auth::admit_address(&key, parts, state)?;
        }
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
        "SELECT id, workspace_id, session_type, agent_id, agent_context, privacy_mode, currency, created_at, expires_at, ended_at, key_id FROM sessions WHERE id = $1",
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

/// Whether a session may place a call to `to_number`: its user allowed calling, and what is
/// left of its budget covers a minute there.
async fn check_session_call(state: &AppState, session: &SessionRecord, to_number: &str) -> Result<(), ApiError> {
    if !session.calling_authorized() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "calling_not_authorized", "this session's user_consent.calling_authorized is false; open a session with it true"));
    }
    if let Some(limit) = session.spend_limit() {
        let (_, info) = crate::server::numbers::valid_number("to_number", to_number, None)?;
        let minute = in_currency(rate_for(&info), &session.currency);
        if limit - spent(state, session).await? < minute {
            return Err(ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_balance", format!("the session's budget (max_spend_limit {limit} {}) does not cover a minute to this number ({minute}); open a session with a larger limit", session.currency)));
        }
    }
    Ok(())
}

/// [`check_session_call`] for a campaign's call placed later for the session `session_id`: a
/// session ended or expired meanwhile answers `session_ended`.
pub async fn session_may_call(state: &AppState, workspace_id: &str, session_id: &str, to_number: &str) -> Result<(), ApiError> {
    let session = session_by_id(state, session_id).await?.filter(|s| s.workspace_id == workspace_id && s.is_open(store::now_ms()));
    let Some(session) = session else {
        return Err(ApiError::new(StatusCode::GONE, "session_ended", format!("session `{session_id}` ended before this call was placed")));
    };
    check_session_call(state, &session, to_number).await
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

/// What a self-hosted server does not do, and what to use instead.
pub async fn not_here(uri: axum::http::Uri, _headers: HeaderMap) -> ApiError {
    let path = uri.path();
    let instead = if path.contains("/wallet/") {
        "Ringline takes no payments: a session's budget is its user_consent.max_spend_limit"
    } else {
        "Ringline authenticates with API keys: open a session with POST /api/v1/sessions/create and send its id as X-Session-ID"
    };
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", format!("{path} is not part of Ringline: {instead}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::calling::with_task;

    #[test]
    fn an_errand_in_the_metadata_is_the_task_of_an_assistant_that_takes_one() {
        let metadata = json!({ "issue": "Is my prescription ready?" });
        let given = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<BTreeMap<String, Value>>();
        assert_eq!(with_task(given(&[]), &metadata), given(&[("task", "Is my prescription ready?")]));
        assert_eq!(with_task(given(&[("task", "Book a table.")]), &metadata), given(&[("task", "Book a table.")]), "the request's own task wins");
        assert_eq!(with_task(given(&[]), &json!({ "task": 7 })), given(&[]), "only text is an errand");
    }

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
