//! API keys and the per-key rate limit.
//!
//! A key is `rl_` + 32 random bytes (base64url); only its SHA-256 is stored, with a short
//! prefix for listing. A request names its key in `Authorization: Bearer KEY` or
//! `X-API-KEY: KEY`; the key decides the workspace, so no key reaches another workspace's
//! data. Each key has a token bucket (default 60 requests a minute) kept by the worker that
//! serves the request: with several workers, a client spread over them gets that much per worker.
//! A rotated key's successor shares its bucket. A key its holder limited to some addresses
//! (Ringez's IP whitelist) is refused from any other, before its bucket is touched; the address
//! is the connection's, or behind `--trusted-proxy` hops, X-Forwarded-For's first untrusted one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::egress::Cidr;
use crate::store::{self, ApiKey, Store, StoreError};

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates a key for the workspace `workspace` (created if new). Returns the record and the
/// key itself, which is shown once and never stored.
pub async fn create_key(store: &Store, workspace: &str, rate_limit_per_min: Option<i64>) -> Result<(ApiKey, String), StoreError> {
    new_key(store, workspace, rate_limit_per_min, None).await
}

/// How long a rotated key keeps working unless revoked at once: time to deploy its successor.
pub const ROTATION_GRACE_S: i64 = 3600;

/// Rotates `old`: a successor for its workspace with its limit and its request budget, and
/// `old` stops working after `grace_s` (0: at once). Refused when `old` was rotated already
/// (it is on its way out: rotate its successor), so a key never has two successors.
pub async fn rotate_key(store: &Store, old: &ApiKey, grace_s: i64) -> Result<(ApiKey, String), RotateError> {
    let now = store::now_ms();
    if !old.usable_at(now) {
        return Err(RotateError::NotUsable);
    }
    if !store.retire_key(&old.id, now + grace_s.max(0) * 1000).await? {
        return Err(RotateError::Rotated);
    }
    match new_key(store, &old.workspace_name, old.rate_limit_per_min, Some(old)).await {
        Ok(made) => Ok(made),
        Err(error) => {
            store.unretire_key(&old.id).await?;
            Err(error.into())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the key is revoked or has expired: create a new one instead")]
    NotUsable,
    #[error("the key was rotated already and is on its way out: rotate its successor")]
    Rotated,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new key; a successor (`from`) keeps its predecessor's request budget and addresses.
async fn new_key(store: &Store, workspace: &str, rate_limit_per_min: Option<i64>, from: Option<&ApiKey>) -> Result<(ApiKey, String), StoreError> {
    use rand::RngCore;
    let workspace = store.ensure_workspace(workspace).await?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("rl_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let key = ApiKey {
        id: store::new_id("key"),
        workspace_id: workspace.id.clone(),
        workspace_name: workspace.name.clone(),
        hash: hash_key(&secret),
        prefix: secret[..10].to_string(),
        rate_limit_per_min,
        created_at: store::now_ms(),
        expires_at: None,
        revoked_at: None,
        rate_bucket: from.map(|old| old.bucket().to_string()),
        allowed_addresses: from.and_then(|old| old.allowed_addresses.clone()),
    };
    store.insert_key(&key).await?;
    Ok((key, secret))
}

/// Who is calling: the workspace their key belongs to.
#[derive(Debug, Clone)]
pub struct Auth {
    pub workspace_id: String,
    pub key_id: String,
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let secret = match (header("authorization"), header("x-api-key")) {
            (Some(value), _) => value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer KEY`"))?,
            (None, Some(key)) => key,
            (None, None) => {
                return Err(ApiError::unauthorized("no API key: send `Authorization: Bearer KEY` or `X-API-KEY: KEY` (create one with `ringline keys create`)"))
            }
        };
        let key = state.store.key_by_hash(&hash_key(secret)).await?.ok_or_else(|| ApiError::unauthorized("this API key is not known"))?;
        if !key.usable_at(store::now_ms()) {
            return Err(ApiError::unauthorized("this API key was revoked or has expired; create a new one with `ringline keys create`"));
        }
        admit_address(&key, parts, state)?;
        let limit = key.rate_limit_per_min.map(|l| l.max(1) as u32).unwrap_or(state.config.rate_limit_per_min);
        if let Err(wait_s) = state.limiter.take(key.bucket(), limit) {
            let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("more than {limit} requests a minute with this key; retry after {wait_s} s"));
            error.retry_after_s = Some(wait_s);
            return Err(error);
        }
        Ok(Auth { workspace_id: key.workspace_id, key_id: key.id })
    }
}

/// Refuses a request from outside the key's whitelisted addresses, if it has any.
pub fn admit_address(key: &ApiKey, parts: &Parts, state: &AppState) -> Result<(), ApiError> {
    let Some(allowed) = &key.allowed_addresses else { return Ok(()) };
    // Unreadable (never written so) admits no one: a limit is never lifted by accident.
    let allowed: AllowedAddresses = serde_json::from_str(allowed).unwrap_or_default();
    let from = client_address(parts, &state.config.trusted_proxies);
    if from.is_some_and(|address| allowed.admits(address)) {
        return Ok(());
    }
    let from = from.map(|a| a.to_string()).unwrap_or_else(|| "an unknown address".into());
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "address_not_allowed",
        format!("this key (or the session it opened) is limited to the key's whitelisted addresses and this request came from {from}; change the list with POST /api/v1/security/whitelist from an allowed address"),
    ))
}

/// Where a key may be used from, as its holder set it (stored as JSON on the key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AllowedAddresses {
    /// Addresses and CIDR ranges, as given.
    pub ranges: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl AllowedAddresses {
    pub fn admits(&self, address: IpAddr) -> bool {
        self.ranges.iter().filter_map(|range| range.parse::<Cidr>().ok()).any(|range| range.contains(address))
    }
}

/// The address a request came from: the connection's, or behind trusted proxies the first
/// untrusted hop of X-Forwarded-For, read from the right (what a client writes on the left is
/// not believed). `None` where the server was not given connection addresses.
pub fn client_address(parts: &Parts, trusted_proxies: &[Cidr]) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(behind_proxies(peer, &parts.headers, trusted_proxies))
}

fn behind_proxies(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |address: IpAddr| trusted.iter().any(|range| range.contains(address));
    let mut client = peer;
    if !is_trusted(client) {
        return client;
    }
    let forwarded: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    for hop in forwarded.iter().rev() {
        let Ok(hop) = hop.trim().parse::<IpAddr>() else { break };
        client = hop;
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// The address a request came from (see [`client_address`]).
pub struct ClientAddress(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(client_address(parts, &state.config.trusted_proxies)))
    }
}

/// Token buckets, one per key: `limit` tokens a minute, bursts up to `limit`.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token, or says how many whole seconds until one is there.
    pub fn take(&self, key: &str, limit_per_min: u32) -> Result<(), u64> {
        let capacity = limit_per_min as f64;
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_second).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_behind_trusted_proxies_is_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append("x-forwarded-for", v.parse().unwrap());
            }
            map
        };
        let forged = headers(&["127.0.0.1, 198.51.100.7, 10.0.0.2"]);
        assert_eq!(behind_proxies(ip("10.0.0.1"), &forged, &trusted), ip("198.51.100.7"), "what the client wrote on the left is not believed");
        assert_eq!(behind_proxies(ip("203.0.113.9"), &forged, &trusted), ip("203.0.113.9"), "an untrusted peer's header is ignored");
        assert_eq!(behind_proxies(ip("10.0.0.1"), &headers(&["198.51.100.7", "10.0.0.3"]), &trusted), ip("198.51.100.7"), "several headers are one list");
        assert_eq!(behind_proxies(ip("10.0.0.1"), &headers(&[]), &trusted), ip("10.0.0.1"), "no header: the proxy itself");
        assert_eq!(behind_proxies(ip("10.0.0.1"), &headers(&["junk, 10.0.0.3"]), &trusted), ip("10.0.0.3"), "an unreadable hop stops the walk at the last trusted one");
        let allowed = AllowedAddresses { ranges: vec!["203.0.113.0/24".into(), "::1".into()], description: None };
        assert!(allowed.admits(ip("203.0.113.200")) && allowed.admits(ip("::1")) && !allowed.admits(ip("203.0.114.1")));
        assert!(!AllowedAddresses::default().admits(ip("127.0.0.1")), "an empty or unreadable list admits no one");
    }

    #[test]
    fn a_bucket_allows_its_limit_then_says_when() {
        let limiter = RateLimiter::default();
        for _ in 0..3 {
            assert!(limiter.take("k", 3).is_ok());
        }
        let wait = limiter.take("k", 3).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(limiter.take("other", 3).is_ok(), "keys have their own buckets");
    }
}
