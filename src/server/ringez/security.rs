//! Ringez's key rotation: a key replaced by whoever holds it, as `ringline keys rotate` does on
//! the server.

use super::*;
use crate::server::auth::{self, RotateError, ROTATION_GRACE_S};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// The key being rotated: the one the request is sent with (a key rotates only itself).
    pub current_key: Option<String>,
    /// Stop the old key now, not after the grace period.
    #[serde(default)]
    pub revoke_immediately: bool,
}

/// A successor to the request's key (shown once), with its workspace, limit and request budget;
/// the old key works for [`ROTATION_GRACE_S`] more, or stops at once.
pub async fn rotate_key(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<RotateKey>) -> Result<impl IntoResponse, ApiError> {
    caller.require_key("rotating a key")?;
    let current = request.current_key.ok_or_else(|| ApiError::invalid("current_key", "give the key being rotated: the one this request is sent with"))?;
    let old = state.store.key(&caller.auth.key_id).await?.ok_or_else(|| ApiError::unauthorized("this API key is not known"))?;
    if auth::hash_key(current.trim()) != old.hash {
        return Err(ApiError::invalid("current_key", "is not the key this request is sent with: a key rotates only itself"));
    }
    let grace_s = if request.revoke_immediately { 0 } else { ROTATION_GRACE_S };
    let (key, secret) = auth::rotate_key(&state.store, &old, grace_s).await.map_err(|error| match error {
        RotateError::Store(error) => error.into(),
        RotateError::NotUsable => ApiError::unauthorized(error.to_string()),
        RotateError::Rotated => ApiError::conflict("key_rotated", error.to_string()),
    })?;
    let now = store::now_ms();
    if request.revoke_immediately {
        state.store.revoke_key(&old.id, now).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "api_key": secret,
            "key_id": key.id,
            "prefix": key.prefix,
            "created_at": rfc3339(key.created_at),
            "previous_key": {
                "key_id": old.id,
                "revoked": request.revoke_immediately,
                "valid_until": rfc3339(now + grace_s * 1000),
            },
        })),
    ))
}
