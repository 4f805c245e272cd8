//! What one workspace, and one server, may hold at once.
//!
//! Per workspace: live calls, calls placed a minute, assistants, numbers, secrets. Per
//! server (this worker): live calls. A request past a rate or a concurrency limit gets 429
//! with `Retry-After`; one past a quota (how many things a workspace may keep) gets 403.
//! Every answer names the limit and how to get more. Counts come from the database, so
//! workers sharing PostgreSQL agree on a workspace's usage.

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
    /// Live calls this worker runs, for all workspaces together.
    pub calls_per_server: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            calls_per_workspace: 10,
            calls_per_minute: 60,
            assistants_per_workspace: 200,
            numbers_per_workspace: 100,
            secrets_per_workspace: 50,
            calls_per_server: 20,
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
    /// Before a call is placed: `live_here` is how many calls this worker runs now.
    pub async fn check_call(&self, store: &Store, workspace_id: &str, live_here: usize) -> Result<(), ApiError> {
        if live_here >= self.calls_per_server as usize {
            return Err(too_many("server_at_capacity", 5, format!("this server is running its limit of {} calls; retry shortly", self.calls_per_server)));
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
