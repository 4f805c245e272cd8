//! Assistants over the API, and the file-defined ones beside them.
//!
//! Two sources, one list. **File assistants** (`assistants/*.yaml` with `prompts/*`) belong to
//! the deployment: every workspace sees them, read-only over the API, under the file's stem as
//! id (`luigis_booking`); they change by editing the file, which reloads within two seconds —
//! a bad edit keeps the last good version and logs why. **API assistants** (`asst_…`) belong
//! to the workspace that created them and change by PATCH. Both keep every version in the
//! store (a version is the spec with its template inlined), and each call records the version
//! it ran.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::auth::Auth;
use super::error::{parse_json, ApiError, ApiQuery, ErrorBody};
use super::AppState;
use crate::assistant::{Assistant, AssistantError, LlmProvider, SttProvider, VoiceProvider};
use crate::store::{self, AssistantRecord, Store};

/// The file assistants, with what was last loaded from each file.
pub struct Catalog {
    dir: PathBuf,
    seen: tokio::sync::Mutex<HashMap<PathBuf, String>>,
}

impl Catalog {
    pub fn new(dir: PathBuf) -> Self {
        Catalog { dir, seen: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// Loads files that are new or changed (the YAML or its prompt); records a new version
    /// for each good one; logs and skips bad ones, so the last good version stays current.
    pub async fn reload(&self, store: &Store) {
        let Ok(files) = crate::assistant::files_in(&self.dir) else { return };
        let mut seen = self.seen.lock().await;
        for file in files {
            let Some(fingerprint) = fingerprint(&file) else { continue };
            if seen.get(&file) == Some(&fingerprint) {
                continue;
            }
            seen.insert(file.clone(), fingerprint);
            let id = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            match Assistant::load(&file) {
                Ok(assistant) => {
                    let (spec, digest) = stored_form(&assistant);
                    match store.sync_file_assistant(&id, &assistant.spec.name, &spec, &digest).await {
                        Ok(version) => tracing::info!(assistant = %id, version, file = %file.display(), "assistant file loaded"),
                        Err(error) => tracing::warn!(%error, file = %file.display(), "cannot record the assistant file's version"),
                    }
                }
                Err(error) => tracing::warn!(%error, "assistant file not loaded; the last good version stays in use"),
            }
        }
    }

    /// The assistants the files define now (bad files are left out: `reload` reports them).
    pub fn assistants(&self) -> Vec<Assistant> {
        let Ok(files) = crate::assistant::files_in(&self.dir) else { return Vec::new() };
        files.iter().filter_map(|file| Assistant::load(file).ok()).collect()
    }
}

/// What decides whether a file changed: its text and its prompt file's text.
fn fingerprint(file: &std::path::Path) -> Option<String> {
    let text = std::fs::read(file).ok()?;
    let mut hash = Sha256::new();
    hash.update(&text);
    if let Ok(value) = serde_yaml::from_slice::<serde_yaml::Value>(&text) {
        if let Some(prompt) = value.get("prompt").and_then(|p| p.as_str()) {
            let dir = file.parent().unwrap_or(std::path::Path::new("."));
            for candidate in [dir.join(prompt), dir.parent().unwrap_or(dir).join(prompt)] {
                if let Ok(prompt_text) = std::fs::read(&candidate) {
                    hash.update(&prompt_text);
                    break;
                }
            }
        }
    }
    Some(hex::encode(hash.finalize()))
}

/// The spec as stored (template inlined, JSON) and its digest.
pub fn stored_form(assistant: &Assistant) -> (String, String) {
    let spec = serde_json::to_string(&assistant.self_contained_spec()).unwrap_or_default();
    let digest = hex::encode(Sha256::digest(spec.as_bytes()));
    (spec, digest)
}

/// Rebuilds an assistant from a stored version (its templates were checked when it was saved).
pub fn from_stored(id: &str, version: i64, spec: &str) -> Result<Assistant, ApiError> {
    let value: Value = serde_json::from_str(spec).map_err(|e| ApiError::internal(format!("assistant {id} v{version} is unreadable: {e}")))?;
    Assistant::from_stored_json(&value, &format!("assistant {id} v{version}")).map_err(|problems| first_problem(problems, ""))
}

/// Checks an assistant a workspace sends: the spec's own rules (its templates rendered in the
/// sandbox, off the async threads), then what a workspace may not do — read the server's
/// environment, name secrets it does not have, or point the server at internal addresses.
async fn tenant_assistant(state: &AppState, auth: &Auth, value: Value, label: &'static str) -> Result<Assistant, ApiError> {
    let assistant = tokio::task::spawn_blocking(move || Assistant::from_json(&value, label))
        .await
        .map_err(|e| ApiError::internal(format!("checking the assistant stopped: {e}")))?
        .map_err(|p| first_problem(p, ""))?;
    if let Some((field, message)) = crate::assistant::check::tenant_problems(&assistant.spec).into_iter().next() {
        return Err(ApiError::invalid(field.clone(), format!("{field}: {message}")).with_code("env_not_allowed"));
    }
    for (section, secret) in [("llm", &assistant.spec.llm.api_key_secret), ("stt", &assistant.spec.stt.api_key_secret), ("voice", &assistant.spec.voice.api_key_secret)] {
        if let Some(name) = secret {
            if state.store.secret(&auth.workspace_id, name).await?.is_none() {
                return Err(ApiError::invalid(format!("{section}.api_key_secret"), format!("no secret `{name}` in this workspace; create it with POST /v1/secrets first"))
                    .with_code("unknown_secret"));
            }
        }
    }
    let spec = &assistant.spec;
    let mut urls: Vec<(String, &str)> = Vec::new();
    let remote = [
        ("llm", spec.llm.provider == LlmProvider::Openai, &spec.llm.base_url),
        ("stt", spec.stt.provider == SttProvider::Openai, &spec.stt.base_url),
        ("voice", spec.voice.provider == VoiceProvider::Openai, &spec.voice.base_url),
    ];
    for (section, is_remote, base) in remote {
        if let Some(base) = base {
            urls.push((format!("{section}.base_url"), base));
        } else if is_remote {
            // No base_url means the default on the server's own loopback: not a tenant's.
            urls.push((format!("{section}.base_url"), crate::pipeline::engines::DEFAULT_REMOTE_BASE));
        }
    }
    for (i, tool) in spec.tools.iter().enumerate() {
        if let crate::assistant::ToolEntry::Http(http) = tool {
            urls.push((format!("tools.{i}.url"), &http.url));
        }
    }
    if let Some(webhook) = &spec.webhook_url {
        urls.push(("webhook_url".into(), webhook));
    }
    for (field, url) in urls {
        if let Err(error) = state.runner.egress().check_url_resolved(url).await {
            return Err(ApiError::invalid(field.clone(), format!("{field}: {error}")).with_code("egress_refused"));
        }
    }
    Ok(assistant)
}

/// An assistant's problems as one API error (the first, naming its field).
fn first_problem(mut problems: Vec<AssistantError>, prefix: &str) -> ApiError {
    let first = problems.remove(0);
    let field = first.field().map(|f| format!("{prefix}{f}"));
    let message = match &first {
        AssistantError::Invalid { message, field, .. } => match field {
            Some(f) => format!("{f}: {message}"),
            None => message.clone(),
        },
        other => other.to_string(),
    };
    let more = if problems.is_empty() { String::new() } else { format!(" ({} more problem(s) after this one)", problems.len()) };
    let mut error = ApiError::invalid(field.clone().unwrap_or_default(), format!("{message}{more}"));
    error.field = field;
    error
}

/// Ringg's simple assistant body as a spec: `prompt` is the system prompt's text (an API
/// assistant has no files to name), `voice` a voice name (Ringg's `female-1`, or a Piper or
/// espeak voice), and `version` defaults to 1. A full spec passes through unchanged.
pub fn from_simple_body(mut value: Value) -> Value {
    let Some(object) = value.as_object_mut() else { return value };
    let mut simple = false;
    if !object.contains_key("system_prompt") {
        if let Some(Value::String(text)) = object.get("prompt").cloned() {
            object.remove("prompt");
            object.insert("system_prompt".into(), Value::String(text));
            simple = true;
        }
    }
    if let Some(Value::String(name)) = object.get("voice").cloned() {
        let voice = match crate::tts::resolve_named_voice(&name) {
            Some((provider, voice)) => serde_json::json!({ "provider": provider, "name": voice }),
            None => serde_json::json!({ "name": name }),
        };
        object.insert("voice".into(), voice);
        simple = true;
    }
    if simple && !object.contains_key("variables") && !object.contains_key("flow") {
        // Ringg's assistants take whatever variables a call brings.
        object.entry("accept_any_variables").or_insert(Value::Bool(true));
    }
    value
}

/// An assistant as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct AssistantView {
    pub id: String,
    pub name: String,
    /// The language it speaks (BCP 47).
    pub language: String,
    /// `active` (every stored assistant can take calls).
    pub status: String,
    /// `file` (read-only, from assistants/*.yaml) or `api`.
    pub source: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// The spec of the current version (the YAML fields, template inlined as `system_prompt`).
    #[schema(value_type = Object)]
    pub spec: Value,
}

impl From<AssistantRecord> for AssistantView {
    fn from(record: AssistantRecord) -> Self {
        let spec: Value = serde_json::from_str(&record.spec).unwrap_or(Value::Null);
        AssistantView {
            id: record.id,
            name: record.name,
            language: spec.get("language").and_then(Value::as_str).unwrap_or("en-US").to_string(),
            status: "active".into(),
            source: record.source,
            version: record.current_version,
            created_at: rfc3339(record.created_at),
            updated_at: rfc3339(record.updated_at),
            spec,
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_default()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// 1..100, default 20.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl Page {
    pub fn resolve(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::bad_request("invalid_query", format!("limit {limit} is outside 1..100")).with_field("limit"));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::bad_request("invalid_query", format!("offset {offset} is negative")).with_field("offset"));
        }
        Ok((limit, offset))
    }
}

#[derive(Serialize, ToSchema)]
pub struct AssistantList {
    pub assistants: Vec<AssistantView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub has_more: bool,
}

/// List the assistants this workspace can use: its own and the file-defined ones.
#[utoipa::path(get, path = "/v1/assistants", tag = "assistants", params(Page), responses((status = 200, body = AssistantList), (status = 401, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, auth: Auth, ApiQuery(page): ApiQuery<Page>) -> Result<Json<AssistantList>, ApiError> {
    let (limit, offset) = page.resolve()?;
    let (rows, total) = state.store.assistants(&auth.workspace_id, limit, offset).await?;
    Ok(Json(AssistantList { has_more: offset + (rows.len() as i64) < total, assistants: rows.into_iter().map(AssistantView::from).collect(), total, limit, offset }))
}

/// Create an assistant from a spec (the YAML fields as JSON; the template inline in
/// `system_prompt`), or from Ringg's simple body (`name`, `language`, `prompt`, `voice`,
/// `first_message`).
#[utoipa::path(post, path = "/v1/assistants", tag = "assistants", request_body(content = Object, description = "an assistant spec"),
    responses((status = 201, body = AssistantView), (status = 422, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, auth: Auth, body: axum::body::Bytes) -> Result<impl IntoResponse, ApiError> {
    let mut value: Value = parse_json(&body)?;
    if let Some(object) = value.as_object_mut() {
        object.entry("version").or_insert(Value::from(1));
    }
    let assistant = tenant_assistant(&state, &auth, from_simple_body(value), "request body").await?;
    state.limits.check_assistants(&state.store, &auth.workspace_id).await?;
    let id = store::new_id("asst");
    let (spec, digest) = stored_form(&assistant);
    state.store.create_assistant(&auth.workspace_id, &id, &assistant.spec.name, &spec, &digest).await?;
    let record = state.store.assistant(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::internal("the new assistant vanished"))?;
    Ok((StatusCode::CREATED, Json(AssistantView::from(record))))
}

/// Read an assistant's current version.
#[utoipa::path(get, path = "/v1/assistants/{id}", tag = "assistants", responses((status = 200, body = AssistantView), (status = 404, body = ErrorBody)))]
pub async fn read(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Json<AssistantView>, ApiError> {
    let record = state.store.assistant(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("assistant", &id))?;
    Ok(Json(record.into()))
}

/// Read one version of an assistant (the version a call ran).
#[utoipa::path(get, path = "/v1/assistants/{id}/versions/{version}", tag = "assistants", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn read_version(State(state): State<AppState>, auth: Auth, Path((id, version)): Path<(String, i64)>) -> Result<Json<Value>, ApiError> {
    state.store.assistant(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("assistant", &id))?;
    let spec = state.store.assistant_version(&id, version).await?.ok_or_else(|| ApiError::not_found("assistant version", &format!("{id} v{version}")))?;
    Ok(Json(serde_json::json!({ "id": id, "version": version, "spec": serde_json::from_str::<Value>(&spec).unwrap_or(Value::Null) })))
}

/// Change an assistant: a JSON merge patch (RFC 7386) on its spec; makes a new version.
#[utoipa::path(patch, path = "/v1/assistants/{id}", tag = "assistants", request_body(content = Object, description = "fields to change; null removes"),
    responses((status = 200, body = AssistantView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(State(state): State<AppState>, auth: Auth, Path(id): Path<String>, body: axum::body::Bytes) -> Result<Json<AssistantView>, ApiError> {
    let patch: Value = from_simple_body(parse_json(&body)?);
    if !patch.is_object() {
        return Err(ApiError::bad_request("invalid_json", "a PATCH body is a JSON object of the fields to change"));
    }
    for _attempt in 0..3 {
        let record = state.store.assistant(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("assistant", &id))?;
        if record.source == "file" {
            return Err(ApiError::conflict("read_only", format!("assistant `{id}` is defined in assistants/{id}.yaml; edit the file (it reloads by itself)")));
        }
        let mut spec: Value = serde_json::from_str(&record.spec).map_err(|e| ApiError::internal(e.to_string()))?;
        merge_patch(&mut spec, &patch);
        let assistant = tenant_assistant(&state, &auth, spec, "patched assistant").await?;
        let (stored, digest) = stored_form(&assistant);
        if state.store.update_assistant(&id, record.current_version, &assistant.spec.name, &stored, &digest).await? {
            let record = state.store.assistant(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("assistant", &id))?;
            return Ok(Json(record.into()));
        }
        // Another change landed first: apply the patch to that version instead.
    }
    Err(ApiError::conflict("concurrent_update", "the assistant changed three times while this update was applied; retry"))
}

/// Delete an API assistant (its versions stay, for the calls that used them).
#[utoipa::path(delete, path = "/v1/assistants/{id}", tag = "assistants", responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let record = state.store.assistant(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("assistant", &id))?;
    if record.source == "file" {
        return Err(ApiError::conflict("read_only", format!("assistant `{id}` is defined in assistants/{id}.yaml; remove the file instead")));
    }
    state.store.delete_assistant(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// RFC 7386: objects merge, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringgs_simple_body_becomes_a_spec_and_a_full_spec_passes_through() {
        let simple = serde_json::json!({ "name": "My Voice Agent", "language": "en", "prompt": "You are helpful.", "voice": "female-1", "first_message": "Hello!" });
        let spec = from_simple_body(simple);
        assert_eq!(spec["system_prompt"], "You are helpful.");
        assert!(spec.get("prompt").is_none());
        assert_eq!(spec["voice"], serde_json::json!({ "provider": "espeak", "name": "en-us+f3" }));
        assert_eq!(spec["accept_any_variables"], true, "a simple assistant takes the variables a call brings");
        assert_eq!(from_simple_body(serde_json::json!({ "voice": "male-1" }))["voice"]["name"], crate::tts::DEFAULT_VOICE);
        assert_eq!(from_simple_body(serde_json::json!({ "voice": "en_US-joe-medium" }))["voice"], serde_json::json!({ "name": "en_US-joe-medium" }));
        let full = serde_json::json!({ "name": "a", "system_prompt": "x", "prompt": "kept", "voice": { "name": "en_US-joe-medium" } });
        assert_eq!(from_simple_body(full.clone()), full, "a full spec passes through unchanged");
        let declared = serde_json::json!({ "name": "a", "prompt": "x", "variables": { "who": { "type": "string" } } });
        assert!(from_simple_body(declared).get("accept_any_variables").is_none(), "declared variables stay the only ones");
    }

    #[test]
    fn merge_patch_merges_removes_and_replaces() {
        let mut spec = serde_json::json!({ "name": "a", "turn": { "endpointing_ms": 200, "interruptible": true }, "webhook_url": "http://x" });
        merge_patch(&mut spec, &serde_json::json!({ "turn": { "endpointing_ms": 300 }, "webhook_url": null, "first_message": "hi" }));
        assert_eq!(spec, serde_json::json!({ "name": "a", "turn": { "endpointing_ms": 300, "interruptible": true }, "first_message": "hi" }));
    }
}
