//! Workspace secrets: provider keys a workspace stores once and its assistants name
//! (`llm.api_key_secret: openai`), instead of naming the server's environment variables.
//!
//! Values are encrypted at rest with AES-256-GCM under the server's secrets key (a 32-byte
//! key file, created on first use with mode 0600, or `RINGLINE_SECRETS_KEY`; every worker
//! of a deployment needs the same one). The workspace id and the secret's name are the
//! cipher's associated data, so a ciphertext copied to another row or workspace does not
//! open. The API lists names and dates only: a value never leaves the server except as the
//! `Authorization` header of a request to the endpoint an assistant of that same workspace
//! names, which the egress policy still checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::assistants::rfc3339;
use super::auth::Auth;
use super::error::{ApiError, ApiJson, ErrorBody};
use super::AppState;
use crate::assistant::check::{clip, is_secret_name, MAX_SECRET_NAME};
use crate::assistant::AssistantSpec;
use crate::store::SecretRecord;

/// The longest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 4096;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the secrets key {0} cannot be read or created: {1}")]
    KeyFile(String, String),
    #[error("the secrets key is not 32 bytes of base64 (RINGLINE_SECRETS_KEY or the key file)")]
    BadKey,
    #[error("a stored secret was sealed with another secrets key ({0}); restore that key")]
    OtherKey(String),
    #[error("a stored secret does not open: {0}")]
    Corrupt(String),
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// HMAC through the OpenSSL the server already links: webhook and web call signatures,
/// Twilio's. OpenSSL's HMAC fails only without memory; the MAC is then empty, which no check
/// accepts.
pub fn hmac(digest: openssl::hash::MessageDigest, key: &[u8], data: &[u8]) -> Vec<u8> {
    let mac = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let key = openssl::pkey::PKey::hmac(key)?;
        let mut signer = openssl::sign::Signer::new(digest, &key)?;
        signer.update(data)?;
        signer.sign_to_vec()
    };
    mac().unwrap_or_default()
}

/// The server's secrets key and the cipher around it.
pub struct Vault {
    file: PathBuf,
    from_env: Option<String>,
    key: Mutex<Option<Key>>,
}

#[derive(Clone)]
struct Key {
    bytes: [u8; 32],
    id: String,
}

impl Vault {
    /// `from_env`: a base64 key given directly (takes precedence over `file`).
    pub fn new(file: PathBuf, from_env: Option<String>) -> Self {
        Vault { file, from_env, key: Mutex::new(None) }
    }

    fn key(&self, create: bool) -> Result<Key, VaultError> {
        let mut cached = self.key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = cached.as_ref() {
            return Ok(key.clone());
        }
        let text = match &self.from_env {
            Some(text) => text.clone(),
            None => match std::fs::read_to_string(&self.file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => self.create_file()?,
                Err(e) => return Err(VaultError::KeyFile(self.file.display().to_string(), e.to_string())),
            },
        };
        let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD.decode(text.trim()).ok().and_then(|b| b.try_into().ok()).ok_or(VaultError::BadKey)?;
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        let key = Key { bytes, id };
        *cached = Some(key.clone());
        Ok(key)
    }

    /// A MAC of `data` under a key derived from the secrets key for `purpose` (so every worker
    /// of a deployment signs and checks alike, and no two purposes share a key).
    pub fn mac(&self, purpose: &str, data: &[u8]) -> Result<Vec<u8>, VaultError> {
        let key = self.key(true)?;
        let sha256 = openssl::hash::MessageDigest::sha256();
        let derived = hmac(sha256, &key.bytes, purpose.as_bytes());
        Ok(hmac(sha256, &derived, data))
    }

    fn create_file(&self) -> Result<String, VaultError> {
        use rand::RngCore;
        use std::io::Write;
        let fail = |e: std::io::Error| VaultError::KeyFile(self.file.display().to_string(), e.to_string());
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&self.file) {
            Ok(mut file) => {
                file.write_all(text.as_bytes()).map_err(fail)?;
                tracing::info!(file = %self.file.display(), "created the secrets key; keep it with the database");
                Ok(text)
            }
            // Another worker created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&self.file).map_err(fail),
            Err(e) => Err(fail(e)),
        }
    }

    /// Encrypts a value for (workspace, name): returns the stored text and the key's id.
    pub fn seal(&self, workspace_id: &str, name: &str, value: &str) -> Result<(String, String), VaultError> {
        use rand::RngCore;
        let key = self.key(true)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let mut tag = [0u8; TAG_BYTES];
        let cipher = openssl::symm::Cipher::aes_256_gcm();
        let sealed = openssl::symm::encrypt_aead(cipher, &key.bytes, Some(&nonce), associated(workspace_id, name).as_bytes(), value.as_bytes(), &mut tag)
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        blob.extend_from_slice(&tag);
        Ok((format!("v1:{}", base64::engine::general_purpose::STANDARD.encode(blob)), key.id))
    }

    /// Decrypts a stored secret of `workspace_id`.
    pub fn open(&self, workspace_id: &str, record: &SecretRecord) -> Result<String, VaultError> {
        let key = self.key(false)?;
        if key.id != record.key_id {
            return Err(VaultError::OtherKey(record.key_id.clone()));
        }
        let blob = record
            .ciphertext
            .strip_prefix("v1:")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|b| b.len() >= NONCE_BYTES + TAG_BYTES)
            .ok_or_else(|| VaultError::Corrupt(format!("`{}` is not a sealed value", record.name)))?;
        let (nonce, rest) = blob.split_at(NONCE_BYTES);
        let (sealed, tag) = rest.split_at(rest.len() - TAG_BYTES);
        let cipher = openssl::symm::Cipher::aes_256_gcm();
        let plain = openssl::symm::decrypt_aead(cipher, &key.bytes, Some(nonce), associated(workspace_id, &record.name).as_bytes(), sealed, tag)
            .map_err(|_| VaultError::Corrupt(format!("`{}` fails its integrity check", record.name)))?;
        String::from_utf8(plain).map_err(|_| VaultError::Corrupt(format!("`{}` is not text", record.name)))
    }
}

fn associated(workspace_id: &str, name: &str) -> String {
    format!("ringline-secret:v1:{workspace_id}:{name}")
}

/// The secret names an assistant refers to.
pub fn referenced(spec: &AssistantSpec) -> BTreeSet<String> {
    [&spec.llm.api_key_secret, &spec.stt.api_key_secret, &spec.voice.api_key_secret].into_iter().flatten().cloned().collect()
}

/// The decrypted values of the secrets `names` in a workspace, for one call.
pub async fn values(state_store: &crate::store::Store, vault: &Vault, workspace_id: &str, names: &BTreeSet<String>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for name in names {
        let record = match state_store.secret(workspace_id, name).await {
            Ok(Some(record)) => record,
            // A missing one fails the call through the credentials, naming the field.
            Ok(None) => continue,
            Err(error) => return Err(format!("cannot read the workspace's secrets: {error}")),
        };
        match vault.open(workspace_id, &record) {
            Ok(value) => {
                out.insert(name.clone(), value);
            }
            Err(error) => {
                tracing::error!(%error, workspace = workspace_id, secret = %name, "cannot open a secret");
                return Err(format!("the secret `{name}` cannot be opened on this server (ask its operator)"));
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecret {
    /// Letters, digits and underscores; what assistants name in `api_key_secret`.
    pub name: String,
    /// The secret itself (at most 4096 bytes); never returned.
    pub value: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceSecret {
    pub value: String,
}

/// A secret as the API shows it: never its value.
#[derive(Serialize, ToSchema)]
pub struct SecretView {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&SecretRecord> for SecretView {
    fn from(record: &SecretRecord) -> Self {
        SecretView { name: record.name.clone(), created_at: rfc3339(record.created_at), updated_at: rfc3339(record.updated_at) }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretView>,
    pub total: i64,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if is_secret_name(name) {
        return Ok(());
    }
    Err(ApiError::invalid("name", format!("`{}` is not a secret name: use letters, digits and underscores, starting with a letter (at most {MAX_SECRET_NAME})", clip(name))))
}

fn check_value(value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > MAX_SECRET_BYTES {
        return Err(ApiError::invalid("value", format!("is {} bytes; a secret is 1..{MAX_SECRET_BYTES} bytes", value.len())));
    }
    Ok(())
}

async fn store_secret(state: &AppState, auth: &Auth, name: &str, value: &str) -> Result<bool, ApiError> {
    let (ciphertext, key_id) = state.vault.seal(&auth.workspace_id, name, value).map_err(|error| {
        tracing::error!(%error, "cannot seal a secret");
        ApiError::internal("the server cannot encrypt secrets; its operator must fix the secrets key")
    })?;
    Ok(state.store.put_secret(&auth.workspace_id, name, &ciphertext, &key_id).await?)
}

async fn view(state: &AppState, auth: &Auth, name: &str) -> Result<SecretView, ApiError> {
    let record = state.store.secret(&auth.workspace_id, name).await?.ok_or_else(|| ApiError::not_found("secret", name))?;
    Ok(SecretView::from(&record))
}

/// Store a secret (a provider's API key) for this workspace's assistants to name.
#[utoipa::path(post, path = "/v1/secrets", tag = "secrets", request_body = CreateSecret,
    responses((status = 201, body = SecretView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, auth: Auth, ApiJson(request): ApiJson<CreateSecret>) -> Result<impl IntoResponse, ApiError> {
    check_name(&request.name)?;
    check_value(&request.value)?;
    if state.store.secret(&auth.workspace_id, &request.name).await?.is_some() {
        return Err(ApiError::conflict("secret_exists", format!("secret `{}` exists; PUT /v1/secrets/{} replaces its value", request.name, request.name)).with_field("name"));
    }
    state.limits.check_secrets(&state.store, &auth.workspace_id).await?;
    store_secret(&state, &auth, &request.name, &request.value).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &auth, &request.name).await?)))
}

/// Create or replace a secret's value.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", request_body = ReplaceSecret,
    responses((status = 200, body = SecretView), (status = 201, body = SecretView), (status = 422, body = ErrorBody)))]
pub async fn replace(State(state): State<AppState>, auth: Auth, Path(name): Path<String>, ApiJson(request): ApiJson<ReplaceSecret>) -> Result<impl IntoResponse, ApiError> {
    check_name(&name)?;
    check_value(&request.value)?;
    if state.store.secret(&auth.workspace_id, &name).await?.is_none() {
        state.limits.check_secrets(&state.store, &auth.workspace_id).await?;
    }
    let created = store_secret(&state, &auth, &name, &request.value).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view(&state, &auth, &name).await?)))
}

/// The workspace's secrets: names and dates, never values.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", responses((status = 200, body = SecretList)))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<Json<SecretList>, ApiError> {
    let rows = state.store.secrets(&auth.workspace_id).await?;
    Ok(Json(SecretList { total: rows.len() as i64, secrets: rows.iter().map(SecretView::from).collect() }))
}

/// Delete a secret no assistant of the workspace names any more.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(State(state): State<AppState>, auth: Auth, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.store.secret(&auth.workspace_id, &name).await?.ok_or_else(|| ApiError::not_found("secret", &name))?;
    let (assistants, _) = state.store.assistants(&auth.workspace_id, i64::MAX, 0).await?;
    for record in assistants.iter().filter(|a| a.source == "api") {
        let names = serde_json::from_str::<AssistantSpec>(&record.spec).map(|spec| referenced(&spec)).unwrap_or_default();
        if names.contains(&name) {
            return Err(ApiError::conflict("secret_in_use", format!("assistant `{}` names secret `{name}`; change the assistant first", record.id)));
        }
    }
    state.store.delete_secret(&auth.workspace_id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, sealed: (String, String)) -> SecretRecord {
        SecretRecord { name: name.into(), ciphertext: sealed.0, key_id: sealed.1, created_at: 0, updated_at: 0 }
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_workspace_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::new(dir.path().join("key"), None);
        let sealed = vault.seal("ws_a", "openai", "sk-live-123").unwrap();
        assert!(!sealed.0.contains("sk-live"), "stored encrypted");
        assert_eq!(vault.open("ws_a", &record("openai", sealed.clone())).unwrap(), "sk-live-123");
        assert!(vault.open("ws_b", &record("openai", sealed.clone())).is_err(), "another workspace cannot open it");
        assert!(vault.open("ws_a", &record("other", sealed.clone())).is_err(), "nor under another name");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key file is private: {mode:o}");
        }
        let other = Vault::new(dir.path().join("other-key"), Some(base64::engine::general_purpose::STANDARD.encode([7u8; 32])));
        assert!(matches!(other.open("ws_a", &record("openai", sealed)), Err(VaultError::OtherKey(_))));
    }
}
