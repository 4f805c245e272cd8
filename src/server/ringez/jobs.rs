//! Ringez's batches, scheduled calls and queues: campaigns of their own kind, placed for the
//! caller's session.
//!
//! ```text
//! POST /batch/calls     ─► kind `batch`: every call at once (up to the workspace's calls in
//!                          progress); the first are placed before the answer, which names them
//! POST /scheduled-calls ─► kind `scheduled`: one call at `scheduled_time`, again by its
//!                          `retry_policy` after no answer, busy or a failure
//! POST /queue/add       ─► kind `queue`: `concurrent_limit` at a time, the higher `priority`
//!                          first; a call still waiting after its `max_wait_time` is skipped
//! ```
//!
//! The campaign driver places them like any campaign's, and each call is the session's: its
//! consent and budget are checked before every one (as `calls/initiate` checks them), it names
//! the agent (`X-Agent-ID`) and its events speak Ringez's shape. Ending the session cancels what
//! is still waiting and clears them with its calls.

use super::*;
use crate::server::campaigns::{self, CallSettings as PlacedSettings, ContactInput, CreateCampaign, Retry, Schedule};
use crate::store::{CampaignRecord, ContactWithCall};

/// One call of a batch or a queue.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCall {
    pub to_number: String,
    #[serde(default)]
    pub metadata: Value,
    /// Ringline: the assistant's variables for this call.
    #[serde(default)]
    pub dynamic_variables: BTreeMap<String, Value>,
    /// A queue's: the higher is called first (default 0).
    pub priority: Option<i64>,
    /// A queue's: seconds it may wait for its turn before it is skipped.
    pub max_wait_time: Option<u64>,
}

/// A batch's or a queue's request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsRequest {
    pub session_id: Option<String>,
    pub calls: Vec<JobCall>,
    /// A queue's.
    pub queue_settings: Option<QueueSettings>,
    #[serde(default)]
    pub call_settings: CallSettings,
    pub from_number: Option<String>,
    pub privacy_mode: Option<bool>,
    /// Receives every call's events.
    pub webhook_url: Option<String>,
    /// Ringline: the assistant that talks (default `call_for_user`).
    pub assistant_id: Option<String>,
}

impl CallsRequest {
    fn job(self, kind: &'static str, concurrency: u32, retry: Option<Retry>) -> Job {
        Job {
            kind,
            session_id: self.session_id,
            assistant_id: self.assistant_id,
            from_number: self.from_number,
            privacy_mode: self.privacy_mode,
            call_settings: self.call_settings,
            webhook_url: self.webhook_url,
            concurrency,
            retry,
            schedule: Schedule::default(),
            calls: self.calls,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Calls at most (1 to 5, default 1).
    pub max_attempts: Option<u32>,
    /// Seconds between them (default 300).
    pub retry_interval: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledRequest {
    pub session_id: Option<String>,
    pub to_number: String,
    /// RFC 3339, or a local time in `timezone`.
    pub scheduled_time: String,
    pub timezone: Option<String>,
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default)]
    pub call_settings: CallSettings,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub dynamic_variables: BTreeMap<String, Value>,
    pub from_number: Option<String>,
    pub privacy_mode: Option<bool>,
    pub webhook_url: Option<String>,
    pub assistant_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Calls of the queue in progress at once (default 5, at most the workspace's limit).
    pub concurrent_limit: Option<u32>,
    /// Calls that were not answered, busy or failed are tried twice more, a minute apart.
    pub retry_failed: Option<bool>,
}

/// What every kind is made of, once its request is read.
struct Job {
    kind: &'static str,
    session_id: Option<String>,
    assistant_id: Option<String>,
    from_number: Option<String>,
    privacy_mode: Option<bool>,
    call_settings: CallSettings,
    webhook_url: Option<String>,
    concurrency: u32,
    retry: Option<Retry>,
    schedule: Schedule,
    calls: Vec<JobCall>,
}

/// How the campaign's own field names read in this kind's request.
fn renames(kind: &str) -> &'static [(&'static str, &'static str)] {
    match kind {
        "scheduled" => &[
            ("contacts[0].phone", "to_number"),
            ("contacts[0].metadata", "metadata"),
            ("contacts[0].custom_fields", "dynamic_variables"),
            ("schedule.start_time", "scheduled_time"),
            ("schedule.timezone", "timezone"),
            ("retry.max_attempts", "retry_policy.max_attempts"),
            ("retry.interval_s", "retry_policy.retry_interval"),
        ],
        "queue" => &[("contacts", "calls"), (".phone", ".to_number"), (".custom_fields", ".dynamic_variables"), ("concurrency", "queue_settings.concurrent_limit")],
        _ => &[("contacts", "calls"), (".phone", ".to_number"), (".custom_fields", ".dynamic_variables")],
    }
}

fn renamed(mut error: ApiError, kind: &str) -> ApiError {
    if let Some(field) = &mut error.field {
        for (from, to) in renames(kind) {
            *field = field.replace(from, to);
        }
    }
    error
}

/// Checks and launches a job; errors name the request's own fields.
async fn launch(state: &AppState, caller: &RingezCaller, job: Job) -> Result<CampaignRecord, ApiError> {
    let kind = job.kind;
    launch_checked(state, caller, job).await.map_err(|e| renamed(e, kind))
}

async fn launch_checked(state: &AppState, caller: &RingezCaller, job: Job) -> Result<CampaignRecord, ApiError> {
    let session = caller.session_named(state, job.session_id.as_deref()).await?;
    job.call_settings.check()?;
    let assistant_id = job.assistant_id.clone().unwrap_or_else(|| DEFAULT_ASSISTANT.to_string());
    let now = store::now_ms();
    let mut contacts = Vec::with_capacity(job.calls.len());
    for (i, call) in job.calls.into_iter().enumerate() {
        // Checked here, not only as a contact, so the session's check below meets a valid number
        // and an error names this call. Premium-rate numbers are where toll fraud sends calls:
        // never dialled for a key.
        let (_, info) = crate::server::numbers::valid_number(&format!("contacts[{i}].phone"), &call.to_number, None)?;
        if info.kind.as_deref() == Some("premium_rate") {
            return Err(ApiError::invalid(format!("contacts[{i}].phone"), format!("{} is a premium-rate number; Ringline does not dial those", call.to_number)));
        }
        if job.kind == "batch" && (call.priority.is_some() || call.max_wait_time.is_some()) {
            return Err(ApiError::invalid(format!("contacts[{i}].priority"), "priority and max_wait_time are a queue's: add these calls with POST /api/v1/queue/add"));
        }
        let expires_at = match call.max_wait_time {
            Some(wait) if !(1..=86_400).contains(&wait) => return Err(ApiError::invalid(format!("contacts[{i}].max_wait_time"), format!("{wait} s: give 1 to 86400 seconds"))),
            Some(wait) => Some(now + wait as i64 * 1000),
            None => None,
        };
        let metadata = metadata_object(&format!("contacts[{i}].metadata"), &call.metadata)?;
        contacts.push(ContactInput {
            phone: call.to_number,
            custom_fields: call.dynamic_variables,
            metadata: Some(metadata),
            priority: call.priority.unwrap_or(0),
            expires_at,
            ..ContactInput::default()
        });
    }
    if let (Some(session), Some(first)) = (&session, contacts.first()) {
        check_session_call(state, session, &first.phone).await?;
    }
    let privacy = job.privacy_mode.unwrap_or(session.as_ref().is_some_and(|s| s.privacy_mode != 0));
    let mut ringez = Map::new();
    ringez.insert("ringez".into(), json!({ "mode": "direct", "privacy_mode": privacy, "caller_id_name": Value::Null, "call_settings": job.call_settings, "user_phone": Value::Null }));
    let settings = PlacedSettings { max_duration_s: job.call_settings.max_duration, record: job.call_settings.record_call, metadata: Some(ringez) };
    let prefix = match job.kind {
        "scheduled" => "sched",
        kind => kind,
    };
    let request = CreateCampaign {
        campaign_id: Some(store::new_id(prefix)),
        assistant_id: Some(assistant_id),
        from_number: job.from_number,
        concurrency: Some(job.concurrency),
        retry: job.retry,
        webhook_url: job.webhook_url,
        ..CreateCampaign::default()
    };
    let (session_id, agent_id) = (session.map(|s| s.id), caller.agent_id.clone());
    let set = |campaign: &mut CampaignRecord| {
        campaign.kind = job.kind.into();
        campaign.session_id = session_id;
        campaign.agent_id = agent_id;
        campaign.dialect = Some("ringez".into());
        campaign.call_settings = serde_json::to_string(&settings).ok();
    };
    campaigns::launch_new(state, &caller.auth, request, set, job.schedule, contacts).await
}

/// Places calls at once, as many as the workspace's calls in progress allow; the rest follow as
/// those end.
pub async fn batch_calls(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<CallsRequest>) -> Result<impl IntoResponse, ApiError> {
    if request.queue_settings.is_some() {
        return Err(ApiError::invalid("queue_settings", "is a queue's: add these calls with POST /api/v1/queue/add"));
    }
    let concurrency = (request.calls.len() as u32).clamp(1, state.limits.calls_per_workspace);
    let campaign = launch(&state, &caller, request.job("batch", concurrency, None)).await?;
    // The first calls are placed now, so the answer names them.
    if let Err(error) = campaigns::step_now(&state, &campaign).await {
        tracing::warn!(%error, batch = %campaign.id, "ringez: a batch's first calls wait for the driver");
    }
    let campaign = reread(&state, &campaign).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &campaign).await?)))
}

/// One call at a time to come, tried again by its retry policy.
pub async fn schedule_call(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<ScheduledRequest>) -> Result<impl IntoResponse, ApiError> {
    let zone = match &request.timezone {
        Some(name) => Some(name.parse::<chrono_tz::Tz>().map_err(|_| ApiError::invalid("timezone", format!("`{}` is not an IANA time zone, e.g. America/Los_Angeles", crate::assistant::check::clip(name))))?),
        None => None,
    };
    let at = campaigns::schedule_time("scheduled_time", &request.scheduled_time, zone)?;
    if at < store::now_ms() - 60_000 {
        return Err(ApiError::invalid("scheduled_time", format!("{} has passed: give a time to come (or place the call now with POST /api/v1/calls/initiate)", rfc3339(at))));
    }
    let retry = request.retry_policy.map(|p| Retry { max_attempts: p.max_attempts, interval_s: p.retry_interval });
    let job = Job {
        kind: "scheduled",
        session_id: request.session_id,
        assistant_id: request.assistant_id,
        from_number: request.from_number,
        privacy_mode: request.privacy_mode,
        call_settings: request.call_settings,
        webhook_url: request.webhook_url,
        concurrency: 1,
        retry,
        schedule: Schedule { start_time: Some(request.scheduled_time), timezone: request.timezone, ..Schedule::default() },
        calls: vec![JobCall { to_number: request.to_number, metadata: request.metadata, dynamic_variables: request.dynamic_variables, priority: None, max_wait_time: None }],
    };
    let campaign = launch(&state, &caller, job).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &campaign).await?)))
}

/// Calls in order of priority, `concurrent_limit` at a time.
pub async fn queue_add(State(state): State<AppState>, caller: RingezCaller, ApiJson(mut request): ApiJson<CallsRequest>) -> Result<impl IntoResponse, ApiError> {
    let settings = request.queue_settings.take().unwrap_or_default();
    let concurrency = settings.concurrent_limit.unwrap_or_else(|| 5.min(state.limits.calls_per_workspace));
    let retry = settings.retry_failed.unwrap_or(false).then_some(Retry { max_attempts: Some(3), interval_s: Some(60) });
    let campaign = launch(&state, &caller, request.job("queue", concurrency, retry)).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &campaign).await?)))
}

/// The job `id` of `kind` this caller may see (a session alone sees only its own).
async fn job(state: &AppState, caller: &RingezCaller, id: &str, kind: &str) -> Result<CampaignRecord, ApiError> {
    let what = match kind {
        "batch" => "batch",
        "queue" => "queue",
        _ => "scheduled call",
    };
    state
        .store
        .campaign(&caller.auth.workspace_id, id)
        .await?
        .filter(|c| c.kind == kind)
        .filter(|c| !caller.session_only || c.session_id.as_deref() == caller.session.as_ref().map(|s| s.id.as_str()))
        .ok_or_else(|| ApiError::not_found(what, id))
}

async fn read_job(state: AppState, caller: RingezCaller, id: String, kind: &str) -> Result<Json<Value>, ApiError> {
    let campaign = job(&state, &caller, &id, kind).await?;
    Ok(Json(view(&state, &campaign).await?))
}

/// Cancels what has not been placed; calls in progress go on.
async fn cancel_job(state: AppState, caller: RingezCaller, id: String, kind: &str) -> Result<Json<Value>, ApiError> {
    let campaign = job(&state, &caller, &id, kind).await?;
    let canceled = campaigns::cancel_campaign(&state, campaign, "canceled before this call was placed").await?;
    Ok(Json(view(&state, &canceled).await?))
}

/// A job as it is now, after the driver's pass moved it.
async fn reread(state: &AppState, campaign: &CampaignRecord) -> Result<CampaignRecord, ApiError> {
    state.store.campaign(&campaign.workspace_id, &campaign.id).await?.ok_or_else(|| ApiError::internal("the job vanished"))
}

pub async fn read_batch(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    read_job(state, caller, id, "batch").await
}

pub async fn cancel_batch(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    cancel_job(state, caller, id, "batch").await
}

pub async fn read_scheduled(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    read_job(state, caller, id, "scheduled").await
}

pub async fn cancel_scheduled(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    cancel_job(state, caller, id, "scheduled").await
}

pub async fn read_queue(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    read_job(state, caller, id, "queue").await
}

pub async fn cancel_queue(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    cancel_job(state, caller, id, "queue").await
}

/// Cancels a session's jobs still waiting and clears them (their calls are cleared with the
/// session's).
pub async fn clear_session_jobs(state: &AppState, session: &SessionRecord) -> Result<(), ApiError> {
    for id in state.store.session_campaigns(&session.workspace_id, &session.id).await? {
        let Some(campaign) = state.store.campaign(&session.workspace_id, &id).await? else { continue };
        if !matches!(campaign.state.as_str(), "completed" | "canceled") {
            // Ended meanwhile by the driver: nothing left to cancel.
            let _ = campaigns::cancel_campaign(state, campaign, "the session ended before this call was placed").await;
        }
        state.store.delete_campaign(&session.workspace_id, &id).await?;
    }
    Ok(())
}

/// What one of a job's calls is now: `queued` (`scheduled`) until placed, then its call's
/// status, `retry-scheduled` between attempts, and once done the last call's (or `skipped`,
/// `canceled`).
fn call_status(campaign: &CampaignRecord, row: &ContactWithCall) -> String {
    let contact = &row.contact;
    match (contact.state.as_str(), row.call_status.as_deref()) {
        ("pending", _) if contact.attempts > 0 => "retry-scheduled".into(),
        ("pending", _) if campaign.kind == "scheduled" => "scheduled".into(),
        ("pending", _) => "queued".into(),
        ("dialing", None) => "initiated".into(),
        // Ended, and not yet settled by the driver: what settling will make of it.
        ("dialing", Some(status)) if campaigns::will_retry(campaign, status, contact.attempts) => "retry-scheduled".into(),
        ("dialing", Some(status)) => status.into(),
        _ => contact.outcome.clone().unwrap_or_else(|| "failed".into()),
    }
}

/// A job in Ringez's shape: its id under the kind's name, its state and its calls.
async fn view(state: &AppState, campaign: &CampaignRecord) -> Result<Value, ApiError> {
    let rows = state.store.campaign_contacts(&campaign.workspace_id, &campaign.id, campaigns::MAX_CONTACTS as i64, 0).await?;
    let kind = campaign.kind.as_str();
    let calls: Vec<Value> = rows
        .iter()
        .map(|row| {
            let c = &row.contact;
            let mut call = json!({
                "call_id": c.call_id,
                "to_number": c.phone,
                "status": call_status(campaign, row),
                "attempts": c.attempts,
                "metadata": serde_json::from_str::<Value>(&c.custom_fields).unwrap_or(Value::Null),
                "reason": c.reason,
            });
            if kind == "queue" {
                call["priority"] = json!(c.priority);
                call["expires_at"] = json!(c.expires_at.map(rfc3339));
            }
            call
        })
        .collect();
    let status = match (campaign.state.as_str(), kind) {
        ("scheduled", "scheduled") => "scheduled".to_string(),
        ("running" | "completed", "scheduled") => calls.first().and_then(|c| c["status"].as_str()).unwrap_or("failed").to_string(),
        ("scheduled" | "running", _) => "processing".into(),
        (other, _) => other.into(),
    };
    let mut body = json!({
        "status": status,
        "session_id": campaign.session_id,
        "total_calls": calls.len(),
        "created_at": rfc3339(campaign.created_at),
        "ended_at": campaign.ended_at.map(rfc3339),
        "campaign_url": format!("/v1/campaigns/{}/status", campaign.id),
    });
    match kind {
        "scheduled" => {
            let call = calls.first().cloned().unwrap_or(Value::Null);
            body["scheduled_call_id"] = json!(campaign.id);
            body["to_number"] = call["to_number"].clone();
            body["scheduled_time"] = json!(campaign.start_at.map(rfc3339));
            body["timezone"] = json!(campaign.timezone);
            body["retry_policy"] = json!({ "max_attempts": campaign.max_attempts, "retry_interval": campaign.retry_interval_ms / 1000 });
            body["call_id"] = call["call_id"].clone();
            body["attempts"] = call["attempts"].clone();
        }
        "queue" => {
            body["queue_id"] = json!(campaign.id);
            body["queue_settings"] = json!({ "concurrent_limit": campaign.concurrency, "retry_failed": campaign.max_attempts > 1 });
            body["calls"] = json!(calls);
        }
        _ => {
            body["batch_id"] = json!(campaign.id);
            body["calls"] = json!(calls);
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ContactRow;

    #[test]
    fn errors_name_the_requests_own_fields() {
        let field = |kind: &str, field: &str| renamed(ApiError::invalid(field, "bad"), kind).field.unwrap();
        assert_eq!(field("batch", "contacts[3].phone"), "calls[3].to_number");
        assert_eq!(field("batch", "contacts[0].custom_fields.task"), "calls[0].dynamic_variables.task");
        assert_eq!(field("batch", "contacts"), "calls");
        assert_eq!(field("queue", "concurrency"), "queue_settings.concurrent_limit");
        assert_eq!(field("scheduled", "contacts[0].phone"), "to_number");
        assert_eq!(field("scheduled", "schedule.start_time"), "scheduled_time");
        assert_eq!(field("scheduled", "retry.interval_s"), "retry_policy.retry_interval");
        assert_eq!(field("scheduled", "from_number"), "from_number");
    }

    #[test]
    fn a_call_between_attempts_reads_as_retry_scheduled() {
        let campaign = CampaignRecord { kind: "scheduled".into(), max_attempts: 2, ..CampaignRecord::default() };
        let row = |state: &str, attempts: i64, call: Option<&str>, outcome: Option<&str>| ContactWithCall {
            contact: ContactRow { state: state.into(), attempts, outcome: outcome.map(Into::into), ..ContactRow::default() },
            call_status: call.map(Into::into),
        };
        assert_eq!(call_status(&campaign, &row("pending", 0, None, None)), "scheduled");
        assert_eq!(call_status(&campaign, &row("dialing", 1, Some("ringing"), None)), "ringing");
        assert_eq!(call_status(&campaign, &row("dialing", 1, Some("busy"), None)), "retry-scheduled", "ended, a second attempt to come");
        assert_eq!(call_status(&campaign, &row("pending", 1, None, Some("busy"))), "retry-scheduled");
        assert_eq!(call_status(&campaign, &row("dialing", 2, Some("busy"), None)), "busy", "the last attempt");
        assert_eq!(call_status(&campaign, &row("done", 2, None, Some("busy"))), "busy");
        let queue = CampaignRecord { kind: "queue".into(), max_attempts: 1, ..CampaignRecord::default() };
        assert_eq!(call_status(&queue, &row("pending", 0, None, None)), "queued");
    }
}
