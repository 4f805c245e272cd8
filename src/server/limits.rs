//! What one workspace, and one server, may hold at once.
//!
//! Per workspace: live calls, calls placed a minute, assistants, numbers, secrets. Per
//! server (this worker): live calls. A request past a rate or a concurrency limit gets 429
//! with `Retry-After`; one past a quota (how many things a workspace may keep) gets 403.
//! Every answer names the limit and how to get more. Counts come from the database, so
//! workers sharing PostgreSQL agree on a workspace's usage.
//!
//! Admission: calls on the local models share this machine's cores, and past a certain number
//! every live call answers late. That number is the server's local call capacity — measured
//! by `ringline bench latency --concurrent N` (the most calls that kept voice-to-voice p95
//! within 1.5 s, saved beside the models), or set with `--max-local-calls`; without either, one
//! call per core. A call past it is refused with `local_capacity` (429, `Retry-After`) rather
//! than admitted to slow down the others; calls on cloud providers only count against
//! `--max-calls`.

use axum::http::StatusCode;

use super::error::ApiError;
use crate::store::{now_ms, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live calls of one workspace, on all workers together.
    pub calls_per_workspace: u32,
    /// Calls one workspace may place in a minute.
    pub calls_per_minute: u32,
    pub assistants_per_workspace: u32,
    pub numbers_per_workspace: u32,
    pub secrets_per_workspace: u32,
    /// Campaigns of one workspace not yet finished (drafts included).
    pub campaigns_per_workspace: u32,
    /// Live calls this worker runs, for all workspaces together.
    pub calls_per_server: u32,
    /// Live calls on the local models (Whisper, Piper, the local LLM) this worker admits.
    pub local_calls: u32,
}

/// The local call capacity `bench latency --concurrent` measured on this machine.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Capacity {
    pub local_calls: u32,
    pub machine: String,
    /// The assistant the bench ran.
    pub measured_with: String,
}

const CAPACITY_FILE: &str = "capacity.json";

impl Capacity {
    pub fn save(&self, models: &crate::models::ModelStore) -> std::io::Result<std::path::PathBuf> {
        let path = models.model_dir(CAPACITY_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self).unwrap_or_default())?;
        Ok(path)
    }

    /// The saved measurement, if one was made on a machine like this one (same cores and CPU).
    pub fn load(models: &crate::models::ModelStore) -> Option<Capacity> {
        let text = std::fs::read_to_string(models.model_dir(CAPACITY_FILE)).ok()?;
        let saved: Capacity = serde_json::from_str(&text).ok()?;
        let here = crate::telemetry::machine_line();
        // The build profile differs between a bench and a server often; the CPU must not.
        let cpu = |line: &str| line.split(", ").next().map(str::to_string);
        (cpu(&saved.machine) == cpu(&here)).then_some(saved)
    }

    /// `configured` (non-zero), else the saved measurement, else one call per core; with where
    /// the number came from.
    pub fn resolve(configured: u32, models: &crate::models::ModelStore) -> (u32, String) {
        if configured > 0 {
            return (configured, "--max-local-calls".into());
        }
        if let Some(saved) = Capacity::load(models) {
            return (saved.local_calls.max(1), format!("measured by `ringline bench latency` ({})", saved.machine));
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u32;
        (cores, format!("one per core ({cores}); measure with `ringline bench latency --concurrent 4`"))
    }
}

/// What this worker runs now, for admitting one more call.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Calls started and not finished.
    pub running: usize,
    /// Those on the local models.
    pub local: usize,
    /// The new call would run on the local models.
    pub wants_local: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            calls_per_workspace: 10,
            calls_per_minute: 60,
            assistants_per_workspace: 200,
            numbers_per_workspace: 100,
            secrets_per_workspace: 50,
            campaigns_per_workspace: 5,
            calls_per_server: 20,
            local_calls: 2,
        }
    }
}

fn too_many(code: &'static str, retry_after_s: u64, message: String) -> ApiError {
    let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message);
    error.retry_after_s = Some(retry_after_s);
    error
}

/// One more of `what` fits when the workspace holds fewer than `limit`; else a 403.
fn within_quota(count: i64, limit: u32, code: &'static str, what: &str) -> Result<(), ApiError> {
    if count < limit as i64 {
        return Ok(());
    }
    Err(ApiError::new(StatusCode::FORBIDDEN, code, format!("this workspace has {count} {what}, its limit; delete one first (the operator sets the limit)")))
}

impl Limits {
    /// Before a call is placed, with what this worker runs now.
    pub async fn check_call(&self, store: &Store, workspace_id: &str, load: Load) -> Result<(), ApiError> {
        if load.running >= self.calls_per_server as usize {
            return Err(too_many("server_at_capacity", 5, format!("this server is running its limit of {} calls; retry shortly", self.calls_per_server)));
        }
        if load.wants_local && load.local >= self.local_calls as usize {
            return Err(too_many(
                "local_capacity",
                10,
                format!(
                    "this server runs {} call(s) on its local models, the most it answers within its latency target; retry shortly, or use a cloud provider for this assistant (the operator sets the capacity with --max-local-calls)",
                    load.local
                ),
            ));
        }
        let live = store.count_live_calls(workspace_id).await?;
        if live >= self.calls_per_workspace as i64 {
            return Err(too_many(
                "concurrent_call_limit",
                5,
                format!("this workspace has {live} calls in progress, its limit; retry when one ends (the operator sets the limit with --max-calls-per-workspace)"),
            ));
        }
        let recent = store.count_calls_since(workspace_id, now_ms() - 60_000).await?;
        if recent >= self.calls_per_minute as i64 {
            return Err(too_many(
                "call_rate_limit",
                60,
                format!("this workspace placed {recent} calls in the last minute, its limit of {} a minute; retry later", self.calls_per_minute),
            ));
        }
        Ok(())
    }

    pub async fn check_assistants(&self, store: &Store, workspace_id: &str) -> Result<(), ApiError> {
        within_quota(store.count_assistants(workspace_id).await?, self.assistants_per_workspace, "assistant_limit", "assistants")
    }

    pub async fn check_numbers(&self, store: &Store, workspace_id: &str) -> Result<(), ApiError> {
        within_quota(store.count_numbers(workspace_id).await?, self.numbers_per_workspace, "number_limit", "numbers")
    }

    pub async fn check_secrets(&self, store: &Store, workspace_id: &str) -> Result<(), ApiError> {
        within_quota(store.count_secrets(workspace_id).await?, self.secrets_per_workspace, "secret_limit", "secrets")
    }
}
