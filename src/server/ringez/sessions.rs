//! Ringez sessions: opened with an API key, then a credential of their own; their budget.

use super::*;

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
        crate::server::numbers::valid_number("user_consent.user_phone", raw, None)?;
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
        key_id: Some(caller.auth.key_id.clone()),
    };
    sqlx::query("INSERT INTO sessions (id, workspace_id, session_type, agent_id, agent_context, privacy_mode, currency, created_at, expires_at, key_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .bind(&session.id)
        .bind(&session.workspace_id)
        .bind(&session.session_type)
        .bind(&session.agent_id)
        .bind(&session.agent_context)
        .bind(session.privacy_mode)
        .bind(&session.currency)
        .bind(session.created_at)
        .bind(session.expires_at)
        .bind(&session.key_id)
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
    clear_session_jobs(&state, &session).await?;
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
