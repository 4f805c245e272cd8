//! Webhooks: a call's events leave the process, signed, at least once.
//!
//! ```text
//! call status changes ─► emit ─► one row per receiver (subscriptions, the call's and its
//!                                 assistant's webhook_url) ─► deliver loop (any worker):
//!                                 claim ─► POST, signed ─► delivered | retry later | give up
//! ```
//!
//! Every delivery is a database row before anything is sent, so an event survives a crash and
//! is delivered by the next worker to look. A receiver gets its events in the order they
//! happened, one at a time; one that failed and is retried comes after later ones. A receiver that is slow or down never touches a
//! call or the API: deliveries run on their own tasks, bounded in number, each with a timeout.
//! Receivers must be public addresses unless the server allows more (`--allow-egress`,
//! `--allow-private-egress`), so a key holder cannot make the server probe its network.
//!
//! Signature: `X-Ringline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! with the subscription's secret (or, for a `webhook_url`, the workspace's signing secret).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::assistants::rfc3339;
use super::auth::Auth;
use super::error::{ApiError, ApiJson, ErrorBody};
use super::secrets::Vault;
use super::AppState;
use crate::egress::EgressPolicy;
use crate::store::{new_id, now_ms, CallRecord, DeliveryRecord, SecretRecord, Store, WebhookRecord};

/// The events a subscription may ask for (`*` is every one).
pub const EVENTS: &[&str] = &[
    "call.initiated",
    "call.ringing",
    "call.answered",
    "call.completed",
    "call.failed",
    "call.transcript_ready",
    "call.analysis_ready",
    // The call's recording is whole and can be downloaded (recorded calls only).
    "call.recording_ready",
    // Live, from the analysis of each caller line: a recognized intent; every line's sentiment
    // (with `escalation` when the caller turned sharply negative).
    "call.intent",
    "call.sentiment",
    // Every final transcript line, as it is said: for subscriptions that name it (a call's own
    // webhook_url does not get it).
    "transcription.updated",
    // A campaign's first call placed, and its last contact done.
    "campaign.started",
    "campaign.completed",
];

/// Subscriptions one workspace may hold.
const MAX_WEBHOOKS: i64 = 20;
/// How long a delivery is retried before it is given up.
const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;
/// One attempt's time limit; a claim outlasts it so no other worker sends it meanwhile.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CLAIM_MS: i64 = 20_000;
/// Deliveries in flight at once on this worker.
const IN_FLIGHT: usize = 8;
const SIGNATURE_HEADER: &str = "X-Ringline-Signature";
/// Ringez's header: the hex HMAC-SHA256 of the raw body with the subscription's secret.
const RINGEZ_SIGNATURE_HEADER: &str = "X-Ringez-Signature";
pub const FORMAT_RINGLINE: &str = "ringline";
pub const FORMAT_RINGEZ: &str = "ringez";

/// Wakes the deliver loop when an event was stored (it also looks every second).
pub fn wake() -> &'static tokio::sync::Notify {
    static NOTIFY: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    NOTIFY.get_or_init(tokio::sync::Notify::new)
}

/// The signature header's value for `body`, sent at `t` (unix seconds).
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mac = super::secrets::hmac(openssl::hash::MessageDigest::sha256(), secret.as_bytes(), format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac))
}

/// Ringez's signature of `body`: the hex HMAC-SHA256 of the raw body.
pub fn sign_ringez(secret: &str, body: &str) -> String {
    hex::encode(super::secrets::hmac(openssl::hash::MessageDigest::sha256(), secret.as_bytes(), body.as_bytes()))
}

/// A new signing secret: `whsec_` and 32 random bytes in hex.
fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", hex::encode(bytes))
}

/// The sealed name a subscription's secret is bound to (its id); `webhook_url` deliveries use
/// the workspace's signing secret, bound to this name.
const SIGNING_NAME: &str = "webhook-signing";

fn open(vault: &Vault, workspace_id: &str, name: &str, ciphertext: &str, key_id: &str) -> Result<String, String> {
    let record = SecretRecord { name: name.to_string(), ciphertext: ciphertext.to_string(), key_id: key_id.to_string(), created_at: 0, updated_at: 0 };
    vault.open(workspace_id, &record).map_err(|e| e.to_string())
}

/// The workspace's signing secret for `webhook_url` deliveries, created on first use.
pub async fn signing_secret(store: &Store, vault: &Vault, workspace_id: &str) -> Result<String, String> {
    if store.signing_secret(workspace_id).await.map_err(|e| e.to_string())?.is_none() {
        let (ciphertext, key_id) = vault.seal(workspace_id, SIGNING_NAME, &new_secret()).map_err(|e| e.to_string())?;
        store.put_signing_secret(workspace_id, &ciphertext, &key_id).await.map_err(|e| e.to_string())?;
    }
    let (ciphertext, key_id) = store.signing_secret(workspace_id).await.map_err(|e| e.to_string())?.ok_or("the signing secret vanished")?;
    open(vault, workspace_id, SIGNING_NAME, &ciphertext, &key_id)
}

// ── events ────────────────────────────────────────────────────────────────────────────────

/// The event a call's new status is, if any.
pub fn status_event(status: crate::call::CallStatus) -> Option<&'static str> {
    use crate::call::CallStatus;
    Some(match status {
        CallStatus::Initiated => "call.initiated",
        CallStatus::Ringing => "call.ringing",
        CallStatus::InProgress => "call.answered",
        CallStatus::Completed => "call.completed",
        CallStatus::Failed | CallStatus::NoAnswer | CallStatus::Busy | CallStatus::Canceled => "call.failed",
        CallStatus::Ending => return None,
    })
}

/// The call as an event's `data` shows it.
pub fn call_data(call: &CallRecord) -> Value {
    json!({
        "call_id": call.id,
        "assistant_id": call.assistant_id,
        "direction": call.direction,
        "to_number": call.to_number,
        "from_number": call.from_number,
        "status": call.status,
        "reason": call.status_reason,
        "disposition": call.disposition,
        "summary": call.summary,
        "ended_by": call.ended_by,
        "duration_seconds": call.duration_ms.map(|ms| ms as f64 / 1000.0),
        "metadata": serde_json::from_str::<Value>(&call.metadata).unwrap_or(Value::Null),
    })
}

/// Stores one delivery of `event` for every receiver that wants it: the workspace's
/// subscriptions to it, the call's `webhook_url` and its assistant's. Never fails a call: a
/// storage error is logged.
pub async fn emit(store: &Store, call: &CallRecord, assistant_webhook: Option<&str>, event: &str, data: Value) {
    if let Err(error) = try_emit(store, call, assistant_webhook, event, data).await {
        tracing::error!(%error, call = %call.id, event, "cannot store a webhook delivery");
    }
}

/// Milliseconds that never repeat in this process: events stored in the same millisecond
/// still order by `created_at`.
fn event_time() -> i64 {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = now_ms();
    let previous = LAST.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
    if previous >= now {
        LAST.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    } else {
        now
    }
}

/// Events only subscriptions that name them receive (not a call's or assistant's webhook_url).
const SUBSCRIPTION_ONLY: &[&str] = &["transcription.updated"];

/// (subscription, url, format) for each of the workspace's subscriptions to `event`.
async fn subscribers(store: &Store, workspace_id: &str, event: &str) -> Result<Vec<(Option<String>, String, &'static str)>, crate::store::StoreError> {
    let mut receivers = Vec::new();
    for hook in store.webhooks(workspace_id).await? {
        let wanted: Vec<String> = serde_json::from_str(&hook.events).unwrap_or_default();
        let wildcard = wanted.iter().any(|e| e == "*") && !SUBSCRIPTION_ONLY.contains(&event);
        if wildcard || wanted.iter().any(|e| e == event) {
            let format = if hook.format == FORMAT_RINGEZ { FORMAT_RINGEZ } else { FORMAT_RINGLINE };
            receivers.push((Some(hook.id.clone()), hook.url.clone(), format));
        }
    }
    Ok(receivers)
}

/// One event, as each receiver's format shapes it.
struct Event<'a> {
    workspace_id: &'a str,
    call_id: Option<&'a str>,
    name: &'a str,
    id: String,
    at: i64,
    ringline_body: String,
    ringez_body: String,
}

async fn store_deliveries(store: &Store, event: Event<'_>, receivers: Vec<(Option<String>, String, &str)>) -> Result<(), crate::store::StoreError> {
    for (webhook_id, url, format) in receivers {
        let delivery = DeliveryRecord {
            id: new_id("dlv"),
            workspace_id: event.workspace_id.to_string(),
            webhook_id,
            event_id: event.id.clone(),
            event: event.name.to_string(),
            call_id: event.call_id.map(str::to_string),
            url,
            body: if format == FORMAT_RINGEZ { event.ringez_body.clone() } else { event.ringline_body.clone() },
            state: "pending".into(),
            attempts: 0,
            next_attempt_at: event.at,
            claimed_until: 0,
            last_status: None,
            last_error: None,
            created_at: event.at,
            delivered_at: None,
            format: format.to_string(),
        };
        store.insert_delivery(&delivery).await?;
    }
    wake().notify_one();
    Ok(())
}

async fn try_emit(store: &Store, call: &CallRecord, assistant_webhook: Option<&str>, event: &str, data: Value) -> Result<(), crate::store::StoreError> {
    let now = event_time();
    let event_id = new_id("evt");
    let ringline_body = json!({ "id": event_id, "type": event, "created_at": rfc3339(now), "data": data }).to_string();
    let ringez_body = json!({ "event": event, "event_id": event_id, "timestamp": rfc3339(now), "data": super::ringez::event_data(call, &data) }).to_string();
    let mut receivers = subscribers(store, &call.workspace_id, event).await?;
    let call_format = if call.dialect.as_deref() == Some(FORMAT_RINGEZ) { FORMAT_RINGEZ } else { FORMAT_RINGLINE };
    let own: Vec<String> = if SUBSCRIPTION_ONLY.contains(&event) {
        // A Ringez client asks for a call's transcription at its own URL.
        let metadata: Value = serde_json::from_str(&call.metadata).unwrap_or(Value::Null);
        metadata.get("transcription_webhook_url").and_then(Value::as_str).map(str::to_string).into_iter().collect()
    } else {
        [call.webhook_url.as_deref(), assistant_webhook].into_iter().flatten().map(str::to_string).collect()
    };
    for url in own {
        if !receivers.iter().any(|(hook, u, _)| hook.is_none() && *u == url) {
            receivers.push((None, url, call_format));
        }
    }
    let event = Event { workspace_id: &call.workspace_id, call_id: Some(&call.id), name: event, id: event_id, at: now, ringline_body, ringez_body };
    store_deliveries(store, event, receivers).await
}

/// Stores one delivery of a campaign's `event` (`campaign.started`, `campaign.completed`) for
/// the workspace's subscriptions to it and the campaign's own `webhook_url`. Never fails the
/// campaign: a storage error is logged.
pub async fn emit_campaign(store: &Store, workspace_id: &str, webhook_url: Option<&str>, event: &str, data: Value) {
    let stored = async {
        let now = event_time();
        let event_id = new_id("evt");
        let ringline_body = json!({ "id": event_id, "type": event, "created_at": rfc3339(now), "data": data }).to_string();
        let ringez_body = json!({ "event": event, "event_id": event_id, "timestamp": rfc3339(now), "data": data }).to_string();
        let mut receivers = subscribers(store, workspace_id, event).await?;
        if let Some(url) = webhook_url {
            receivers.push((None, url.to_string(), FORMAT_RINGLINE));
        }
        let event = Event { workspace_id, call_id: None, name: event, id: event_id, at: now, ringline_body, ringez_body };
        store_deliveries(store, event, receivers).await
    };
    if let Err(error) = stored.await {
        tracing::error!(%error, workspace = workspace_id, event, "cannot store a webhook delivery");
    }
}

// ── delivery ──────────────────────────────────────────────────────────────────────────────

/// The wait before attempt `attempts + 1`: 5 s doubling to at most an hour, ±20% jitter so
/// a receiver coming back is not hit by every retry at once.
pub fn backoff_ms(attempts: i64) -> i64 {
    use rand::Rng;
    let base = (5_000i64 << attempts.clamp(0, 20).saturating_sub(1).min(10)).min(3_600_000);
    let jitter = rand::rng().random_range(0.8..1.2);
    (base as f64 * jitter) as i64
}

/// Delivers due events until `shutdown`: every second, or at once when one is stored.
pub async fn deliver_loop(store: Store, vault: Arc<Vault>, egress: EgressPolicy, shutdown: CancellationToken) {
    let client = egress.client(reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).connect_timeout(Duration::from_secs(5)));
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    // Receivers with a task sending to them now: the next of their events waits for it, so
    // that an event stored while an earlier one is on the wire does not overtake it.
    let busy: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Default::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake().notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let due = match store.due_deliveries(now_ms(), IN_FLIGHT as i64 * 2).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read due webhook deliveries");
                continue;
            }
        };
        // One task per receiver, delivering its events in the order they happened.
        let mut by_receiver: Vec<(String, Vec<DeliveryRecord>)> = Vec::new();
        for delivery in due {
            match by_receiver.iter_mut().find(|(url, _)| *url == delivery.url) {
                Some((_, list)) => list.push(delivery),
                None => by_receiver.push((delivery.url.clone(), vec![delivery])),
            }
        }
        for (url, deliveries) in by_receiver {
            if !busy.lock().unwrap_or_else(|e| e.into_inner()).insert(url.clone()) {
                continue;
            }
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let (store, vault, egress, client, busy) = (store.clone(), vault.clone(), egress.clone(), client.clone(), busy.clone());
            tokio::spawn(async move {
                let _slot = permit;
                let _receiver = Busy(busy, url);
                for delivery in deliveries {
                    let now = now_ms();
                    match store.claim_delivery(&delivery.id, now, now + CLAIM_MS).await {
                        Ok(true) => attempt(&store, &vault, &egress, &client, delivery).await,
                        Ok(false) => {} // another worker has it
                        Err(error) => tracing::warn!(%error, "cannot claim a webhook delivery"),
                    }
                }
            });
        }
    }
}

/// A receiver marked busy while its task runs; released however the task ends, and then what
/// was stored for it meanwhile goes at once, not at the next tick.
struct Busy(Arc<std::sync::Mutex<std::collections::HashSet<String>>>, String);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
        wake().notify_one();
    }
}

/// One attempt at one (claimed) delivery, and its record.
async fn attempt(store: &Store, vault: &Vault, egress: &EgressPolicy, client: &reqwest::Client, delivery: DeliveryRecord) {
    let attempts = delivery.attempts + 1;
    let outcome = post(store, vault, egress, client, &delivery).await;
    let (delivered, status, error) = match &outcome {
        Ok(status) if (200..300).contains(status) => (true, Some(*status as i64), None),
        Ok(status) => (false, Some(*status as i64), Some(format!("the receiver answered HTTP {status}"))),
        Err(error) => (false, None, Some(error.clone())),
    };
    // 4xx other than 408 and 429 will not change by retrying... except that a receiver being
    // deployed often answers 404 for a moment: every failure is retried, within the 24 hours.
    let retry_at = (!delivered).then(|| now_ms() + backoff_ms(attempts)).filter(|at| *at < delivery.created_at + GIVE_UP_AFTER_MS);
    if let Err(e) = store.record_attempt(&delivery.id, delivered, status, error.as_deref(), retry_at).await {
        tracing::warn!(error = %e, delivery = %delivery.id, "cannot record a webhook attempt; it will be tried again");
    }
    if !delivered {
        tracing::info!(delivery = %delivery.id, url = %delivery.url, attempts, error = ?error, "webhook delivery failed");
    }
}

async fn post(store: &Store, vault: &Vault, egress: &EgressPolicy, client: &reqwest::Client, delivery: &DeliveryRecord) -> Result<u16, String> {
    // IP literals skip the resolver's check: check the URL itself on every attempt.
    egress.check_url(&delivery.url).map_err(|e| e.to_string())?;
    let secret = match &delivery.webhook_id {
        Some(id) => {
            let hook = store.webhook(&delivery.workspace_id, id).await.map_err(|e| e.to_string())?.ok_or("the subscription was deleted")?;
            open(vault, &delivery.workspace_id, &hook.id, &hook.secret_ciphertext, &hook.key_id)?
        }
        None => signing_secret(store, vault, &delivery.workspace_id).await?,
    };
    let (header, signature) = if delivery.format == FORMAT_RINGEZ {
        (RINGEZ_SIGNATURE_HEADER, sign_ringez(&secret, &delivery.body))
    } else {
        (SIGNATURE_HEADER, sign(&secret, now_ms() / 1000, &delivery.body))
    };
    let response = client
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("Ringline-Webhooks/", env!("CARGO_PKG_VERSION")))
        .header(header, signature)
        .header("X-Ringline-Event", &delivery.event)
        .header("X-Ringline-Event-Id", &delivery.event_id)
        .header("X-Ringline-Delivery", &delivery.id)
        .body(delivery.body.clone())
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    Ok(response.status().as_u16())
}

// ── the API ───────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed (https, or http).
    pub url: String,
    /// Event names, or `["*"]` for every one.
    pub events: Vec<String>,
    /// The signing secret (16 to 200 characters); generated when absent.
    pub secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// Only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
}

fn view(hook: &WebhookRecord, secret: Option<String>) -> WebhookView {
    WebhookView { id: hook.id.clone(), url: hook.url.clone(), events: serde_json::from_str(&hook.events).unwrap_or_default(), secret, created_at: rfc3339(hook.created_at) }
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: Option<String>,
    pub event_id: String,
    pub event: String,
    pub call_id: Option<String>,
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    /// The event as it was (and will be) sent.
    pub body: Value,
}

impl From<&DeliveryRecord> for DeliveryView {
    fn from(d: &DeliveryRecord) -> Self {
        DeliveryView {
            id: d.id.clone(),
            webhook_id: d.webhook_id.clone(),
            event_id: d.event_id.clone(),
            event: d.event.clone(),
            call_id: d.call_id.clone(),
            url: d.url.clone(),
            state: d.state.clone(),
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            next_attempt_at: (d.state == "pending").then(|| rfc3339(d.next_attempt_at)),
            created_at: rfc3339(d.created_at),
            delivered_at: d.delivered_at.map(rfc3339),
            body: serde_json::from_str(&d.body).unwrap_or(Value::Null),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Deserialize)]
pub struct DeliveryQuery {
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct SigningSecret {
    /// Signs deliveries to a call's or an assistant's own `webhook_url`.
    pub secret: String,
}

/// Subscribe a URL to call events. The answer holds the signing secret; it is not shown again.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = WebhookView), (status = 422, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, auth: Auth, ApiJson(request): ApiJson<CreateWebhook>) -> Result<impl IntoResponse, ApiError> {
    if request.events.is_empty() || request.events.len() > EVENTS.len() {
        return Err(ApiError::invalid("events", format!("name 1 to {} events, or [\"*\"] for all of them: {}", EVENTS.len(), EVENTS.join(", "))));
    }
    for event in &request.events {
        if event != "*" && !EVENTS.contains(&event.as_str()) {
            return Err(ApiError::invalid("events", format!("`{}` is not an event; use one of {} or \"*\"", crate::assistant::check::clip(event), EVENTS.join(", "))));
        }
    }
    let view = subscribe(&state, &auth, &request.url, "url", request.events, request.secret, FORMAT_RINGLINE).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Stores a subscription whose events are already checked (the one path for every dialect):
/// the URL (named `field` in errors) must be one the server may reach; the secret is given
/// (16 to 200 characters) or generated, and sealed.
pub async fn subscribe(state: &AppState, auth: &Auth, url: &str, field: &str, events: Vec<String>, secret: Option<String>, format: &str) -> Result<WebhookView, ApiError> {
    let url = url.trim();
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
        return Err(ApiError::invalid(field, format!("`{}` is not an http(s) URL of at most 2048 characters", crate::assistant::check::clip(url))));
    }
    state.runner.egress().check_url_resolved(url).await.map_err(|e| ApiError::invalid(field, e.to_string()))?;
    if events.is_empty() {
        return Err(ApiError::invalid("events", "name at least one event"));
    }
    let secret = match secret {
        Some(secret) if (16..=200).contains(&secret.len()) && secret.chars().all(|c| c.is_ascii_graphic()) => secret,
        Some(_) => return Err(ApiError::invalid("secret", "must be 16 to 200 printable characters without spaces; leave it out to have one generated")),
        None => new_secret(),
    };
    if state.store.count_webhooks(&auth.workspace_id).await? >= MAX_WEBHOOKS {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "webhook_limit", format!("this workspace has {MAX_WEBHOOKS} webhooks, its limit; delete one first")));
    }
    let id = new_id("whk");
    let (secret_ciphertext, key_id) = state.vault.seal(&auth.workspace_id, &id, &secret).map_err(|error| {
        tracing::error!(%error, "cannot seal a webhook secret");
        ApiError::internal("the server cannot encrypt secrets; its operator must fix the secrets key")
    })?;
    let hook = WebhookRecord {
        id,
        workspace_id: auth.workspace_id.clone(),
        url: url.to_string(),
        events: serde_json::to_string(&events).unwrap_or_else(|_| "[]".into()),
        secret_ciphertext,
        key_id,
        created_at: now_ms(),
        format: format.to_string(),
    };
    state.store.insert_webhook(&hook).await?;
    Ok(view(&hook, Some(secret)))
}

/// The workspace's subscriptions (without their secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", responses((status = 200, body = WebhookList)))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<Json<WebhookList>, ApiError> {
    let hooks = state.store.webhooks(&auth.workspace_id).await?;
    Ok(Json(WebhookList { webhooks: hooks.iter().map(|h| view(h, None)).collect() }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody)))]
pub async fn read(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Json<WebhookView>, ApiError> {
    let hook = state.store.webhook(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("webhook", &id))?;
    Ok(Json(view(&hook, None)))
}

/// Unsubscribe; deliveries not yet made are given up.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    if !state.store.delete_webhook(&auth.workspace_id, &id).await? {
        return Err(ApiError::not_found("webhook", &id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A subscription's deliveries, newest first: state, attempts, the last answer.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", responses((status = 200, body = DeliveryList), (status = 404, body = ErrorBody)))]
pub async fn deliveries(State(state): State<AppState>, auth: Auth, Path(id): Path<String>, Query(query): Query<DeliveryQuery>) -> Result<Json<DeliveryList>, ApiError> {
    state.store.webhook(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("webhook", &id))?;
    let rows = state.store.deliveries(&auth.workspace_id, Some(&id), query.limit.unwrap_or(50).clamp(1, 500)).await?;
    Ok(Json(DeliveryList { deliveries: rows.iter().map(DeliveryView::from).collect() }))
}

/// Every delivery of the workspace (subscriptions and `webhook_url`s), newest first.
#[utoipa::path(get, path = "/v1/webhook-deliveries", tag = "webhooks", responses((status = 200, body = DeliveryList)))]
pub async fn all_deliveries(State(state): State<AppState>, auth: Auth, Query(query): Query<DeliveryQuery>) -> Result<Json<DeliveryList>, ApiError> {
    let rows = state.store.deliveries(&auth.workspace_id, None, query.limit.unwrap_or(50).clamp(1, 500)).await?;
    Ok(Json(DeliveryList { deliveries: rows.iter().map(DeliveryView::from).collect() }))
}

/// Send a delivery again now: the same event id and body.
#[utoipa::path(post, path = "/v1/webhook-deliveries/{id}/resend", tag = "webhooks", responses((status = 202, body = DeliveryView), (status = 404, body = ErrorBody)))]
pub async fn resend(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    if !state.store.resend_delivery(&auth.workspace_id, &id).await? {
        return Err(ApiError::not_found("delivery", &id));
    }
    wake().notify_one();
    let delivery = state.store.delivery(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("delivery", &id))?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryView::from(&delivery))))
}

/// The secret that signs deliveries to a call's or an assistant's own `webhook_url`.
#[utoipa::path(get, path = "/v1/webhooks/signing-secret", tag = "webhooks", responses((status = 200, body = SigningSecret)))]
pub async fn signing(State(state): State<AppState>, auth: Auth) -> Result<Json<SigningSecret>, ApiError> {
    let secret = signing_secret(&state.store, &state.vault, &auth.workspace_id).await.map_err(|error| {
        tracing::error!(%error, "cannot open the webhook signing secret");
        ApiError::internal("the server cannot open its secrets; its operator must fix the secrets key")
    })?;
    Ok(Json(SigningSecret { secret }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let hmac_sha256 = |key: &[u8], data: &[u8]| super::super::secrets::hmac(openssl::hash::MessageDigest::sha256(), key, data);
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
        assert_eq!(sign("whsec_x", 1700000000, "{}"), format!("t=1700000000,v1={}", hex::encode(hmac_sha256(b"whsec_x", b"1700000000.{}"))));
    }

    #[test]
    fn retries_back_off_to_an_hour_with_jitter() {
        for (attempts, low, high) in [(1, 4_000, 6_000), (2, 8_000, 12_000), (4, 32_000, 48_000), (30, 2_880_000, 4_320_000)] {
            let wait = backoff_ms(attempts);
            assert!((low..=high).contains(&wait), "attempt {attempts}: {wait} ms");
        }
    }

    #[test]
    fn statuses_map_to_events() {
        use crate::call::CallStatus;
        assert_eq!(status_event(CallStatus::InProgress), Some("call.answered"));
        assert_eq!(status_event(CallStatus::NoAnswer), Some("call.failed"));
        assert_eq!(status_event(CallStatus::Ending), None);
        for event in EVENTS {
            assert!(["call.", "campaign.", "transcription."].iter().any(|p| event.starts_with(p)), "{event}");
        }
        for event in super::super::ringez::EVENTS {
            assert!(EVENTS.contains(event) || *event == "balance.low", "Ringez's {event} is one of ours (balance.low needs a wallet)");
        }
    }
}
