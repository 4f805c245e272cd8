//! Ringez calls: placed (direct or bridge), shown with cost, hung up, acted on, listed, transcribed.

use super::*;
use crate::call::Speaker;

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
    request.call_settings.check()?;
    if let Some(name) = &request.caller_id_name {
        if name.chars().count() > 50 || name.chars().any(char::is_control) {
            return Err(ApiError::invalid("caller_id_name", "give at most 50 printable characters"));
        }
    }
    let user_phone = match request.user_phone.clone().or_else(|| session.as_ref().and_then(SessionRecord::user_phone)) {
        Some(raw) => Some(crate::server::numbers::valid_number("user_phone", &raw, None)?.0),
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
        check_session_call(&state, session, &request.to_number).await?;
    }
    let mut metadata = Value::Object(metadata_object("metadata", &request.metadata)?);
    let assistant_id = request.assistant_id.clone().unwrap_or_else(|| DEFAULT_ASSISTANT.to_string());
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
        dynamic_variables: request.dynamic_variables.clone(),
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
        campaign_id: None,
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

impl CallSettings {
    /// Refuses what Ringline would not do as asked.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.transcribe == Some(false) {
            return Err(ApiError::invalid("call_settings.transcribe", "Ringline always transcribes a call (the agent listens through it); leave it out or true"));
        }
        if let Some(max) = self.max_duration {
            if !(10..=4 * 3600).contains(&max) {
                return Err(ApiError::invalid("call_settings.max_duration", format!("{max} s: give 10 to 14400 seconds")));
            }
        }
        Ok(())
    }
}

/// A request's `metadata` (`field`): an object, or nothing.
pub fn metadata_object(field: &str, metadata: &Value) -> Result<Map<String, Value>, ApiError> {
    match metadata {
        Value::Null => Ok(Map::new()),
        Value::Object(object) => Ok(object.clone()),
        _ => Err(ApiError::invalid(field, "must be a JSON object")),
    }
}

/// A Ringez call's variables for an assistant that takes a `task`, as `call_for_user` does (a
/// copy of it on a cloud LLM, an assistant of the workspace's own): `task` defaults to the
/// metadata's `task` or `issue`, what an agent says the call is for. [`calls::place`] asks.
pub fn with_task(mut variables: BTreeMap<String, Value>, metadata: &Value) -> BTreeMap<String, Value> {
    if !variables.contains_key("task") {
        let task = ["task", "issue"].iter().find_map(|k| metadata.get(*k).and_then(Value::as_str)).map(str::to_string);
        if let Some(task) = task {
            variables.insert("task".into(), Value::String(task));
        }
    }
    variables
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
    let v2v: Vec<f64> = turns.iter().map(|t| t.voice_to_voice_ms).filter(|v| *v > 0.0).collect();
    // The agent's own answer time (voice to voice, p50 as `/v1/calls/{id}` reports it).
    view["response_latency_ms"] = json!(crate::pipeline::metrics::percentile(&v2v, 0.5).map(|v| v.round()));
    Ok(Json(view))
}

/// Hangs up a live call (waiting a moment for it to close) and reports its cost; a call that
/// already ended is reported as it is.
pub async fn hang_up(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let call = caller.call(&state, &id).await?;
    if call.is_live() && call.status != CallStatus::Ending.as_str() {
        // A call that ended meanwhile is refused here and reported below as it ended.
        if let Err(error) = calls::apply_control(&state, &caller.auth, call.clone(), Control::Hangup { reason: "hung up through the API".into() }).await {
            tracing::warn!(call_id = %call.id, code = error.code, "hang-up not applied: {}", error.message);
        }
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
            Control::Transfer { to: crate::server::numbers::valid_number("parameters.transfer_to", &to, None)?.0 }
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
fn ringez_speaker(call: &CallRecord, speaker: Speaker) -> &'static str {
    let agent_placed = call.direction != "inbound";
    match (speaker == Speaker::Agent, agent_placed) {
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
            "speaker": ringez_speaker(&call, l.speaker),
            "role": l.speaker,
            "text": l.text,
            "timestamp": l.at_ms as f64 / 1000.0,
            // Whisper's, for the lines it heard; the agent's own words are known, not heard.
            "confidence": l.confidence,
        })).collect::<Vec<_>>(),
        "language": language,
        "duration": duration_ms(&call) / 1000,
        "download_url": format!("/api/v1/transcripts/{}", call.id),
    })))
}
