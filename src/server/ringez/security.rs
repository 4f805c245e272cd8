//! Ringez's security paths, each on the key the request is sent with: its rotation (as
//! `ringline keys rotate` does on the server) and the addresses it may be used from.

use super::*;
use crate::egress::Cidr;
use crate::server::auth::{self, AllowedAddresses, ClientAddress, RotateError, ROTATION_GRACE_S};

/// Ranges one key's whitelist holds, at most.
const MAX_RANGES: usize = 100;
const MAX_DESCRIPTION_CHARS: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Whitelist {
    /// Addresses and CIDR ranges; empty: any address again.
    pub ip_addresses: Vec<String>,
    pub description: Option<String>,
}

/// Limits the request's key to `ip_addresses`. A list that would refuse the request's own
/// address is refused itself: a key is never locked out by its holder's slip.
pub async fn whitelist(State(state): State<AppState>, caller: RingezCaller, ClientAddress(from): ClientAddress, ApiJson(request): ApiJson<Whitelist>) -> Result<Json<Value>, ApiError> {
    caller.require_key("limiting a key's addresses")?;
    if request.ip_addresses.len() > MAX_RANGES {
        return Err(ApiError::invalid("ip_addresses", format!("{} ranges; a key takes at most {MAX_RANGES} (use wider CIDR ranges)", request.ip_addresses.len())));
    }
    if let Some(description) = &request.description {
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(ApiError::invalid("description", format!("is longer than {MAX_DESCRIPTION_CHARS} characters")));
        }
    }
    let mut ranges = Vec::with_capacity(request.ip_addresses.len());
    for (i, range) in request.ip_addresses.iter().enumerate() {
        range.trim().parse::<Cidr>().map_err(|e| ApiError::invalid(format!("ip_addresses[{i}]"), e))?;
        ranges.push(range.trim().to_string());
    }
    let allowed = AllowedAddresses { ranges, description: request.description.clone() };
    if !allowed.ranges.is_empty() && !from.is_some_and(|address| allowed.admits(address)) {
        let from = from.map(|a| a.to_string()).unwrap_or_else(|| "an address this server cannot see".into());
        return Err(ApiError::invalid("ip_addresses", format!("would lock this key out: this request came from {from}, which none of them holds; add it (behind a proxy, start the server with --trusted-proxy)")));
    }
    let stored = (!allowed.ranges.is_empty()).then(|| serde_json::to_string(&allowed).unwrap_or_default());
    state.store.set_key_addresses(&caller.auth.key_id, stored.as_deref()).await?;
    Ok(Json(json!({
        "key_id": caller.auth.key_id,
        "status": if allowed.ranges.is_empty() { "cleared" } else { "active" },
        "ip_addresses": allowed.ranges,
        "description": allowed.description,
        "updated_at": rfc3339(store::now_ms()),
    })))
}

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
