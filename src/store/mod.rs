//! Storage: workspaces, keys, assistant versions, numbers, calls, turns, transcripts, events.
//!
//! One [`Store`] over SQLite (the default: one file, no set-up) or PostgreSQL (several `serve`
//! workers sharing state). Both run the same portable SQL through sqlx's Any driver; the
//! schema lives in `migrations/` and is applied at connect. Times are milliseconds since the
//! epoch; JSON documents are text.
//!
//! Everything about a call is written as it happens (status changes, each transcript line,
//! each turn's timings, each event), so a crash loses at most the turn in flight.

use crate::call::CallStatus;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

static MIGRATOR: Migrator = sqlx::migrate!("src/store/migrations");

/// Calls in these states are still running somewhere. `ending`: a hang-up was asked for and
/// the call is closing; no other control applies any more.
pub const LIVE_STATUSES: [&str; 4] = ["initiated", "ringing", "in-progress", "ending"];

/// [`LIVE_STATUSES`] as an SQL list, for `status IN` clauses (a macro so `concat!` can use it).
macro_rules! live_statuses_sql {
    () => {
        "('initiated', 'ringing', 'in-progress', 'ending')"
    };
}

/// The live statuses a call can still move between (all but `ending`, which only closes).
macro_rules! open_statuses_sql {
    () => {
        "('initiated', 'ringing', 'in-progress')"
    };
}

// After the macros: the submodule uses them.
mod secrets;
mod webhooks;
mod campaigns;

pub use secrets::SecretRecord;
pub use campaigns::{CampaignRecord, ContactRow, ContactWithCall, Dialing, Schedule as CampaignSchedule};
pub use webhooks::{DeliveryRecord, WebhookRecord};

/// A retried outbound request found the key already claimed within the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentHit {
    pub call_id: String,
    /// Whether the first request asked for the same thing (else the key was reused).
    pub same_request: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DATABASE_URL `{0}`: use sqlite://FILE or postgres://USER@HOST:PORT/DB")]
    BadUrl(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
    pub url: String,
}

/// The UTC day (`2026-11-30`) of a time in ms since the epoch: what a call's `day` holds.
pub fn day_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A short random id with a readable prefix: `call_3f9a…`.
pub fn new_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://ringline.db";

impl Store {
    /// Connects and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            // Create the file when it does not exist yet.
            let url = if rest.contains("mode=") { url.to_string() } else if rest.contains('?') { format!("{url}&mode=rwc") } else { format!("{url}?mode=rwc") };
            (Backend::Sqlite, url)
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never wait for the writer; busy_timeout: writers queue.
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool, backend, url })
    }

    // ── workspaces and keys ──────────────────────────────────────────────────────────────

    /// The workspace named `name`, created if it does not exist.
    pub async fn ensure_workspace(&self, name: &str) -> Result<Workspace, StoreError> {
        sqlx::query("INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(new_id("ws"))
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_as::<_, Workspace>("SELECT id, name, created_at FROM workspaces WHERE name = $1").bind(name).fetch_one(&self.pool).await?)
    }

    pub async fn workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        Ok(sqlx::query_as::<_, Workspace>("SELECT id, name, created_at FROM workspaces WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn insert_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO api_keys (id, workspace_id, hash, prefix, rate_limit_per_min, created_at, expires_at, revoked_at, rate_bucket, allowed_addresses) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(&key.id)
            .bind(&key.workspace_id)
            .bind(&key.hash)
            .bind(&key.prefix)
            .bind(key.rate_limit_per_min)
            .bind(key.created_at)
            .bind(key.expires_at)
            .bind(key.revoked_at)
            .bind(&key.rate_bucket)
            .bind(&key.allowed_addresses)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(sqlx::query_as::<_, ApiKey>(&format!("{KEY_COLUMNS} WHERE k.hash = $1")).bind(hash).fetch_optional(&self.pool).await?)
    }

    pub async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(sqlx::query_as::<_, ApiKey>(&format!("{KEY_COLUMNS} WHERE k.id = $1")).bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        Ok(sqlx::query_as::<_, ApiKey>(&format!("{KEY_COLUMNS} ORDER BY k.created_at")).fetch_all(&self.pool).await?)
    }

    pub async fn revoke_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL").bind(at).bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// A usable key, not rotated yet, set to stop working at `at` (its successor made); false
    /// when it was rotated, revoked or expired already (another rotation came first).
    pub async fn retire_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2 AND revoked_at IS NULL AND expires_at IS NULL")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Where key `id` may be used from (see [`ApiKey::allowed_addresses`]); `None`: anywhere.
    pub async fn set_key_addresses(&self, id: &str, allowed: Option<&str>) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET allowed_addresses = $1 WHERE id = $2").bind(allowed).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Undoes [`Store::retire_key`] (its successor could not be stored).
    pub async fn unretire_key(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET expires_at = NULL WHERE id = $1 AND revoked_at IS NULL").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    // ── assistants ───────────────────────────────────────────────────────────────────────

    /// Records a file assistant's content; a new version only when the content changed.
    /// Returns the current version.
    pub async fn sync_file_assistant(&self, id: &str, name: &str, spec: &str, digest: &str) -> Result<i64, StoreError> {
        let now = now_ms();
        sqlx::query("INSERT INTO assistants (id, workspace_id, source, name, current_version, created_at, updated_at) VALUES ($1, NULL, 'file', $2, 0, $3, $3) ON CONFLICT (id) DO NOTHING")
            .bind(id)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let latest: Option<(i64, String)> =
            sqlx::query_as("SELECT version, digest FROM assistant_versions WHERE assistant_id = $1 ORDER BY version DESC LIMIT 1").bind(id).fetch_optional(&self.pool).await?;
        if let Some((version, known)) = &latest {
            if known == digest {
                return Ok(*version);
            }
        }
        let version = latest.map(|(v, _)| v).unwrap_or(0) + 1;
        // Two workers may sync the same edit: the primary key lets one of them win.
        sqlx::query("INSERT INTO assistant_versions (assistant_id, version, spec, digest, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (assistant_id, version) DO NOTHING")
            .bind(id)
            .bind(version)
            .bind(spec)
            .bind(digest)
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE assistants SET current_version = $1, name = $2, updated_at = $3, deleted_at = NULL WHERE id = $4 AND current_version < $1")
            .bind(version)
            .bind(name)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(version)
    }

    /// Creates an API assistant with its first version.
    pub async fn create_assistant(&self, workspace_id: &str, id: &str, name: &str, spec: &str, digest: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO assistants (id, workspace_id, source, name, current_version, created_at, updated_at) VALUES ($1, $2, 'api', $3, 1, $4, $4)")
            .bind(id)
            .bind(workspace_id)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO assistant_versions (assistant_id, version, spec, digest, created_at) VALUES ($1, 1, $2, $3, $4)")
            .bind(id)
            .bind(spec)
            .bind(digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds a version to an API assistant, if `expected_version` is still current (an
    /// optimistic lock: two concurrent PATCHes cannot both build on the same version).
    pub async fn update_assistant(&self, id: &str, expected_version: i64, name: &str, spec: &str, digest: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let bumped = sqlx::query("UPDATE assistants SET current_version = $1, name = $2, updated_at = $3 WHERE id = $4 AND current_version = $5 AND deleted_at IS NULL")
            .bind(expected_version + 1)
            .bind(name)
            .bind(now)
            .bind(id)
            .bind(expected_version)
            .execute(&mut *tx)
            .await?;
        if bumped.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO assistant_versions (assistant_id, version, spec, digest, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(expected_version + 1)
            .bind(spec)
            .bind(digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Marks an API assistant deleted; its versions stay, because calls refer to them.
    pub async fn delete_assistant(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE assistants SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL AND source = 'api'").bind(now_ms()).bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// An assistant visible to `workspace_id`: its own, or a file assistant.
    pub async fn assistant(&self, workspace_id: &str, id: &str) -> Result<Option<AssistantRecord>, StoreError> {
        Ok(sqlx::query_as::<_, AssistantRecord>(&format!(
            "{ASSISTANT_COLUMNS} WHERE a.id = $1 AND a.deleted_at IS NULL AND (a.workspace_id = $2 OR a.workspace_id IS NULL)"
        ))
        .bind(id)
        .bind(workspace_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn assistants(&self, workspace_id: &str, limit: i64, offset: i64) -> Result<(Vec<AssistantRecord>, i64), StoreError> {
        let filter = "a.deleted_at IS NULL AND (a.workspace_id = $1 OR a.workspace_id IS NULL)";
        let rows = sqlx::query_as::<_, AssistantRecord>(&format!("{ASSISTANT_COLUMNS} WHERE {filter} ORDER BY a.created_at, a.id LIMIT $2 OFFSET $3"))
            .bind(workspace_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM assistants a WHERE {filter}")).bind(workspace_id).fetch_one(&self.pool).await?;
        Ok((rows, total))
    }

    pub async fn assistant_version(&self, id: &str, version: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT spec FROM assistant_versions WHERE assistant_id = $1 AND version = $2").bind(id).bind(version).fetch_optional(&self.pool).await?)
    }

    // ── numbers ──────────────────────────────────────────────────────────────────────────

    pub async fn insert_number(&self, number: &NumberRecord) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT INTO numbers (id, workspace_id, e164, label, assistant_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace_id, e164) DO NOTHING")
            .bind(&number.id)
            .bind(&number.workspace_id)
            .bind(&number.e164)
            .bind(&number.label)
            .bind(&number.assistant_id)
            .bind(number.created_at)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn numbers(&self, workspace_id: &str, limit: i64, offset: i64) -> Result<(Vec<NumberRecord>, i64), StoreError> {
        let rows = sqlx::query_as::<_, NumberRecord>(&format!("{NUMBER_COLUMNS} WHERE workspace_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"))
            .bind(workspace_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM numbers WHERE workspace_id = $1").bind(workspace_id).fetch_one(&self.pool).await?;
        Ok((rows, total))
    }

    pub async fn number(&self, workspace_id: &str, id: &str) -> Result<Option<NumberRecord>, StoreError> {
        Ok(sqlx::query_as::<_, NumberRecord>(&format!("{NUMBER_COLUMNS} WHERE workspace_id = $1 AND id = $2")).bind(workspace_id).bind(id).fetch_optional(&self.pool).await?)
    }

    /// The workspace's record of a number that reaches this server, for an inbound call: the
    /// first workspace to add it holds it (a later one is refused when it tries).
    pub async fn number_holder(&self, e164: &str) -> Result<Option<NumberRecord>, StoreError> {
        Ok(sqlx::query_as::<_, NumberRecord>(&format!("{NUMBER_COLUMNS} WHERE e164 = $1 ORDER BY created_at, id LIMIT 1")).bind(e164).fetch_optional(&self.pool).await?)
    }

    pub async fn assign_number(&self, workspace_id: &str, id: &str, assistant_id: Option<&str>) -> Result<(), StoreError> {
        sqlx::query("UPDATE numbers SET assistant_id = $1 WHERE workspace_id = $2 AND id = $3").bind(assistant_id).bind(workspace_id).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    // ── workers ──────────────────────────────────────────────────────────────────────────

    pub async fn register_worker(&self, id: &str, address: &str) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query("INSERT INTO workers (id, address, started_at, heartbeat_at) VALUES ($1, $2, $3, $3)").bind(id).bind(address).bind(now).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn heartbeat(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE workers SET heartbeat_at = $1 WHERE id = $2").bind(now_ms()).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn remove_worker(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Closes as failed every live call whose worker is gone: not `alive_worker`, and with no
    /// heartbeat since `stale_before`. Returns how many were closed.
    pub async fn close_orphaned_calls(&self, alive_worker: &str, stale_before: i64, reason: &str) -> Result<u64, StoreError> {
        let orphans: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT id FROM calls WHERE status IN ",
            live_statuses_sql!(),
            " AND (worker_id IS NULL OR worker_id <> $1) \
             AND (worker_id IS NULL OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = calls.worker_id AND w.heartbeat_at >= $2))"
        ))
        .bind(alive_worker)
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await?;
        let closed = self.fail_calls(&orphans, reason).await?;
        sqlx::query("DELETE FROM workers WHERE heartbeat_at < $1 AND id <> $2").bind(stale_before).bind(alive_worker).execute(&self.pool).await?;
        Ok(closed)
    }

    /// Ends each closed call's event stream with its final status (`failed`), so a client
    /// following the events sees the call end even when its worker could not say so.
    async fn final_status_events(&self, calls: &[String], reason: &str) {
        let data = serde_json::json!({ "status": CallStatus::Failed, "reason": reason }).to_string();
        for call in calls {
            let written = sqlx::query(
                "INSERT INTO call_events (call_id, seq, kind, data, created_at) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, 'status', $2, $3 FROM call_events WHERE call_id = $1 \
                 ON CONFLICT (call_id, seq) DO NOTHING",
            )
            .bind(call)
            .bind(&data)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
            if let Err(error) = written {
                tracing::warn!(%error, call, "cannot record the final status event of a closed call");
            }
        }
    }

    /// Closes this worker's own live calls (on shutdown).
    pub async fn close_worker_calls(&self, worker: &str, reason: &str) -> Result<u64, StoreError> {
        let open: Vec<String> = sqlx::query_scalar(concat!("SELECT id FROM calls WHERE worker_id = $1 AND status IN ", live_statuses_sql!()))
            .bind(worker)
            .fetch_all(&self.pool)
            .await?;
        self.fail_calls(&open, reason).await
    }

    /// Closes each of `calls` that is still live as failed, and ends its event stream with
    /// that status. Returns how many it closed.
    async fn fail_calls(&self, calls: &[String], reason: &str) -> Result<u64, StoreError> {
        let mut closed = Vec::new();
        for call in calls {
            // Still live: its worker may have finished it since it was listed.
            let done = sqlx::query(concat!("UPDATE calls SET status = 'failed', status_reason = $1, ended_at = $2 WHERE id = $3 AND status IN ", live_statuses_sql!()))
                .bind(reason)
                .bind(now_ms())
                .bind(call)
                .execute(&self.pool)
                .await?;
            if done.rows_affected() == 1 {
                closed.push(call.clone());
            }
        }
        self.final_status_events(&closed, reason).await;
        Ok(closed.len() as u64)
    }

    // ── calls ────────────────────────────────────────────────────────────────────────────

    /// Inserts an initiated call. With an idempotency key, the key is claimed in the same
    /// transaction: if another call holds it (younger than `window_ms`), nothing is inserted
    /// and that call's id comes back as `Err(existing)`.
    /// `request_digest` fingerprints what was asked, to tell a retry from a reused key.
    pub async fn insert_call(&self, call: &CallRecord, window_ms: i64, request_digest: &str) -> Result<Result<(), IdempotentHit>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = &call.idempotency_key {
            sqlx::query("INSERT INTO idempotency_keys (workspace_id, key, call_id, created_at, request_digest) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace_id, key) DO NOTHING")
                .bind(&call.workspace_id)
                .bind(key)
                .bind(&call.id)
                .bind(call.created_at)
                .bind(request_digest)
                .execute(&mut *tx)
                .await?;
            let (holder, since, digest): (String, i64, Option<String>) =
                sqlx::query_as("SELECT call_id, created_at, request_digest FROM idempotency_keys WHERE workspace_id = $1 AND key = $2")
                    .bind(&call.workspace_id)
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
            if holder != call.id {
                if since >= call.created_at - window_ms {
                    let same_request = digest.as_deref().is_none_or(|d| d == request_digest);
                    return Ok(Err(IdempotentHit { call_id: holder, same_request }));
                }
                // The old claim expired: take it over, unless another request just did.
                let taken = sqlx::query("UPDATE idempotency_keys SET call_id = $1, created_at = $2, request_digest = $6 WHERE workspace_id = $3 AND key = $4 AND call_id = $5")
                    .bind(&call.id)
                    .bind(call.created_at)
                    .bind(&call.workspace_id)
                    .bind(key)
                    .bind(&holder)
                    .bind(request_digest)
                    .execute(&mut *tx)
                    .await?;
                if taken.rows_affected() != 1 {
                    let (winner, digest): (String, Option<String>) = sqlx::query_as("SELECT call_id, request_digest FROM idempotency_keys WHERE workspace_id = $1 AND key = $2")
                        .bind(&call.workspace_id)
                        .bind(key)
                        .fetch_one(&mut *tx)
                        .await?;
                    return Ok(Err(IdempotentHit { call_id: winner, same_request: digest.as_deref().is_none_or(|d| d == request_digest) }));
                }
            }
        }
        sqlx::query(
            "INSERT INTO calls (id, workspace_id, assistant_id, assistant_version, direction, to_number, from_number, status, dynamic_variables, metadata, webhook_url, idempotency_key, worker_id, day, created_at, session_id, agent_id, dialect, campaign_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(&call.id)
        .bind(&call.workspace_id)
        .bind(&call.assistant_id)
        .bind(call.assistant_version)
        .bind(&call.direction)
        .bind(&call.to_number)
        .bind(&call.from_number)
        .bind(&call.status)
        .bind(&call.dynamic_variables)
        .bind(&call.metadata)
        .bind(&call.webhook_url)
        .bind(&call.idempotency_key)
        .bind(&call.worker_id)
        .bind(&call.day)
        .bind(call.created_at)
        .bind(&call.session_id)
        .bind(&call.agent_id)
        .bind(&call.dialect)
        .bind(&call.campaign_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    pub async fn call(&self, workspace_id: &str, id: &str) -> Result<Option<CallRecord>, StoreError> {
        Ok(sqlx::query_as::<_, CallRecord>(&format!("{CALL_COLUMNS} WHERE workspace_id = $1 AND id = $2")).bind(workspace_id).bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn call_any_workspace(&self, id: &str) -> Result<Option<CallRecord>, StoreError> {
        Ok(sqlx::query_as::<_, CallRecord>(&format!("{CALL_COLUMNS} WHERE id = $1")).bind(id).fetch_optional(&self.pool).await?)
    }

    /// Moves a live call to `status`; a call already ended, or ending, stays so.
    /// Deletes a call of the workspace and everything kept about it (its webhook deliveries
    /// stay: they are the record of what was sent).
    pub async fn delete_call(&self, workspace_id: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let owned: Option<String> = sqlx::query_scalar("SELECT id FROM calls WHERE workspace_id = $1 AND id = $2").bind(workspace_id).bind(id).fetch_optional(&mut *tx).await?;
        if owned.is_none() {
            return Ok(false);
        }
        for table in ["turns", "transcript_lines", "call_events", "idempotency_keys"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE call_id = $1")).bind(id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM calls WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn set_call_status(&self, id: &str, status: CallStatus, reason: Option<&str>) -> Result<bool, StoreError> {
        let started = if status == CallStatus::InProgress { Some(now_ms()) } else { None };
        let done = sqlx::query(concat!(
            "UPDATE calls SET status = $1, status_reason = COALESCE($2, status_reason), started_at = COALESCE(started_at, $3) WHERE id = $4 AND status IN ",
            open_statuses_sql!()
        ))
            .bind(status.as_str())
            .bind(reason)
            .bind(started)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Closes a call with its outcome (only if it is still live).
    pub async fn finish_call(&self, id: &str, outcome: &CallOutcome) -> Result<bool, StoreError> {
        let done = sqlx::query(
            concat!(
                "UPDATE calls SET status = $1, status_reason = $2, disposition = $3, summary = $4, ended_by = $5, ended_at = $6, duration_ms = $7, \
                 extracted = $9, disposition_notes = $10, success = $11, success_reason = $12 WHERE id = $8 AND status IN ",
                live_statuses_sql!()
            ),
        )
        .bind(outcome.status.as_str())
        .bind(&outcome.reason)
        .bind(&outcome.disposition)
        .bind(&outcome.summary)
        .bind(&outcome.ended_by)
        .bind(now_ms())
        .bind(outcome.duration_ms)
        .bind(id)
        .bind(&outcome.extracted)
        .bind(&outcome.disposition_notes)
        .bind(outcome.success.as_ref().map(|(reached, _)| *reached as i64))
        .bind(outcome.success.as_ref().map(|(_, why)| why.clone()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn insert_transcript_line(&self, call_id: &str, line: &TranscriptLine) -> Result<(), StoreError> {
        // A line without a confidence leaves the column out rather than binding a NULL: on
        // PostgreSQL a statement first prepared with a NULL there keeps that parameter's type,
        // and a later line's number then fails ("incorrect binary data format").
        let query = match line.confidence {
            Some(confidence) => sqlx::query("INSERT INTO transcript_lines (call_id, seq, speaker, text, at_ms, interrupted, confidence) VALUES ($1, $2, $3, $4, $5, $6, $7)").bind(call_id).bind(line.seq).bind(line.speaker.as_str()).bind(&line.text).bind(line.at_ms).bind(line.interrupted as i64).bind(confidence),
            None => sqlx::query("INSERT INTO transcript_lines (call_id, seq, speaker, text, at_ms, interrupted) VALUES ($1, $2, $3, $4, $5, $6)").bind(call_id).bind(line.seq).bind(line.speaker.as_str()).bind(&line.text).bind(line.at_ms).bind(line.interrupted as i64),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// Replaces the words (and confidence, when given) of transcript line `seq`.
    pub async fn revise_transcript_line(&self, call_id: &str, seq: i64, text: &str, confidence: Option<f64>) -> Result<(), StoreError> {
        // As in `insert_transcript_line`: no NULL bound where a number goes.
        let query = match confidence {
            Some(confidence) => sqlx::query("UPDATE transcript_lines SET text = $1, confidence = $2 WHERE call_id = $3 AND seq = $4").bind(text).bind(confidence).bind(call_id).bind(seq),
            None => sqlx::query("UPDATE transcript_lines SET text = $1 WHERE call_id = $2 AND seq = $3").bind(text).bind(call_id).bind(seq),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// Records the analysis of transcript line `seq` (a caller line).
    pub async fn set_line_analysis(&self, call_id: &str, seq: i64, intent: Option<&str>, analysis: &serde_json::Value) -> Result<(), StoreError> {
        sqlx::query("UPDATE transcript_lines SET intent = $1, analysis = $2 WHERE call_id = $3 AND seq = $4")
            .bind(intent)
            .bind(analysis.to_string())
            .bind(call_id)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn transcript(&self, call_id: &str) -> Result<Vec<TranscriptLine>, StoreError> {
        let rows = sqlx::query("SELECT seq, speaker, text, at_ms, interrupted, analysis, confidence FROM transcript_lines WHERE call_id = $1 ORDER BY seq").bind(call_id).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row: &AnyRow| {
                Ok(TranscriptLine {
                    seq: row.try_get(0)?,
                    speaker: {
                        let name: String = row.try_get(1)?;
                        crate::call::Speaker::parse(&name).ok_or_else(|| sqlx::Error::ColumnDecode { index: "speaker".into(), source: format!("`{name}` is not caller or agent").into() })?
                    },
                    text: row.try_get(2)?,
                    at_ms: row.try_get(3)?,
                    interrupted: row.try_get::<i64, _>(4)? != 0,
                    analysis: row.try_get::<Option<String>, _>(5)?.and_then(|a| serde_json::from_str(&a).ok()),
                    confidence: row.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn insert_turn(&self, call_id: &str, turn: &TurnRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO turns (call_id, turn, end_of_turn_ms, stt_final_ms, llm_first_token_ms, tts_first_audio_ms, voice_to_voice_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (call_id, turn) DO NOTHING",
        )
        .bind(call_id)
        .bind(turn.turn)
        .bind(turn.end_of_turn_ms)
        .bind(turn.stt_final_ms)
        .bind(turn.llm_first_token_ms)
        .bind(turn.tts_first_audio_ms)
        .bind(turn.voice_to_voice_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn turns(&self, call_id: &str) -> Result<Vec<TurnRecord>, StoreError> {
        Ok(sqlx::query_as::<_, TurnRecord>(
            "SELECT turn, end_of_turn_ms, stt_final_ms, llm_first_token_ms, tts_first_audio_ms, voice_to_voice_ms FROM turns WHERE call_id = $1 ORDER BY turn",
        )
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn insert_event(&self, call_id: &str, seq: i64, kind: &str, data: &serde_json::Value) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO call_events (call_id, seq, kind, data, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(call_id)
            .bind(seq)
            .bind(kind)
            .bind(data.to_string())
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn events_after(&self, call_id: &str, after: i64) -> Result<Vec<EventRecord>, StoreError> {
        Ok(sqlx::query_as::<_, EventRecord>("SELECT seq, kind, data, created_at FROM call_events WHERE call_id = $1 AND seq > $2 ORDER BY seq LIMIT 500")
            .bind(call_id)
            .bind(after)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn history(&self, workspace_id: &str, filter: &HistoryFilter) -> Result<(Vec<CallRecord>, i64), StoreError> {
        let mut clauses = vec!["workspace_id = $1".to_string()];
        let mut texts: Vec<String> = Vec::new();
        let mut next = 2;
        let mut text_clause = |column: &str, value: &Option<String>, clauses: &mut Vec<String>| {
            if let Some(value) = value {
                clauses.push(format!("{column} = ${next}"));
                next += 1;
                texts.push(value.clone());
            }
        };
        text_clause("assistant_id", &filter.assistant_id, &mut clauses);
        text_clause("status", &filter.status, &mut clauses);
        text_clause("disposition", &filter.disposition, &mut clauses);
        text_clause("session_id", &filter.session_id, &mut clauses);
        text_clause("campaign_id", &filter.campaign_id, &mut clauses);
        text_clause("to_number", &filter.to_number, &mut clauses);
        if let Some(intent) = &filter.intent {
            clauses.push(format!("EXISTS (SELECT 1 FROM transcript_lines t WHERE t.call_id = calls.id AND t.intent = ${next})"));
            next += 1;
            texts.push(intent.clone());
        }
        clauses.push(format!("created_at >= ${next}"));
        clauses.push(format!("created_at < ${}", next + 1));
        let where_clause = clauses.join(" AND ");
        let page = format!("{CALL_COLUMNS} WHERE {where_clause} ORDER BY created_at DESC, id LIMIT ${} OFFSET ${}", next + 2, next + 3);
        let mut query = sqlx::query_as::<_, CallRecord>(&page).bind(workspace_id);
        for text in &texts {
            query = query.bind(text.clone());
        }
        let rows = query.bind(filter.from).bind(filter.to).bind(filter.limit).bind(filter.offset).fetch_all(&self.pool).await?;
        let count = format!("SELECT COUNT(*) FROM calls WHERE {where_clause}");
        let mut query = sqlx::query_scalar::<_, i64>(&count).bind(workspace_id);
        for text in &texts {
            query = query.bind(text.clone());
        }
        let total = query.bind(filter.from).bind(filter.to).fetch_one(&self.pool).await?;
        Ok((rows, total))
    }

    /// Calls per (day, status, disposition) in a window, with summed durations.
    pub async fn call_counts(&self, workspace_id: &str, from: i64, to: i64) -> Result<Vec<CallCount>, StoreError> {
        Ok(sqlx::query_as::<_, CallCount>(
            "SELECT day, status, COALESCE(disposition, '') AS disposition, COUNT(*) AS calls, \
             CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) AS duration_ms, COUNT(duration_ms) AS timed \
             FROM calls WHERE workspace_id = $1 AND created_at >= $2 AND created_at < $3 \
             GROUP BY day, status, COALESCE(disposition, '') ORDER BY day",
        )
        .bind(workspace_id)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    /// What the live analysis found on caller lines of calls created in a window: lines per
    /// intent, and lines per sentiment label with the escalations.
    pub async fn analysis_counts(&self, workspace_id: &str, from: i64, to: i64) -> Result<AnalysisCounts, StoreError> {
        let intents: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.intent, COUNT(*) FROM transcript_lines t JOIN calls c ON c.id = t.call_id \
             WHERE c.workspace_id = $1 AND c.created_at >= $2 AND c.created_at < $3 AND t.intent IS NOT NULL GROUP BY t.intent ORDER BY t.intent",
        )
        .bind(workspace_id)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        // The analysis is our own compact JSON; a caller's words inside it are escaped, so
        // these patterns match only the sentiment's label and the escalation flag.
        let (positive, neutral, negative, escalations): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT \
               CAST(COALESCE(SUM(CASE WHEN t.analysis LIKE '%\"label\":\"positive\"%' THEN 1 ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN t.analysis LIKE '%\"label\":\"neutral\"%' THEN 1 ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN t.analysis LIKE '%\"label\":\"negative\"%' THEN 1 ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN t.analysis LIKE '%\"escalation\":true%' THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM transcript_lines t JOIN calls c ON c.id = t.call_id \
             WHERE c.workspace_id = $1 AND c.created_at >= $2 AND c.created_at < $3 AND t.analysis IS NOT NULL",
        )
        .bind(workspace_id)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?;
        Ok(AnalysisCounts { intents, positive, neutral, negative, escalations })
    }

    pub async fn count_workspace(&self, workspace_id: &str) -> Result<(i64, i64, i64), StoreError> {
        let assistants: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM assistants WHERE workspace_id = $1 AND deleted_at IS NULL").bind(workspace_id).fetch_one(&self.pool).await?;
        let numbers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM numbers WHERE workspace_id = $1").bind(workspace_id).fetch_one(&self.pool).await?;
        let calls: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE workspace_id = $1").bind(workspace_id).fetch_one(&self.pool).await?;
        Ok((assistants, numbers, calls))
    }

    /// Calls created since `since` and their billable minutes (each answered call's duration
    /// rounded up to a whole minute).
    pub async fn usage_since(&self, workspace_id: &str, since: i64) -> Result<Usage, StoreError> {
        let (calls, minutes): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN duration_ms > 0 THEN (duration_ms + 59999) / 60000 ELSE 0 END), 0) AS BIGINT) \
             FROM calls WHERE workspace_id = $1 AND created_at >= $2",
        )
        .bind(workspace_id)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(Usage { calls, minutes })
    }

    /// A control message for the worker that owns a call (PostgreSQL only).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&self.pool).await?;
        Ok(())
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

const KEY_COLUMNS: &str = "SELECT k.id, k.workspace_id, w.name AS workspace_name, k.hash, k.prefix, k.rate_limit_per_min, k.created_at, k.expires_at, k.revoked_at, k.rate_bucket, k.allowed_addresses FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    pub id: String,
    pub workspace_id: String,
    pub workspace_name: String,
    pub hash: String,
    pub prefix: String,
    pub rate_limit_per_min: Option<i64>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// The first key of a rotation's line, whose request budget this one shares.
    pub rate_bucket: Option<String>,
    /// Where it may be used from: JSON `{"ranges": [CIDR…], "description"}`; none: anywhere.
    pub allowed_addresses: Option<String>,
}

impl ApiKey {
    pub fn usable_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }

    /// Whose requests a minute this key's count against: its line's first key's.
    pub fn bucket(&self) -> &str {
        self.rate_bucket.as_deref().unwrap_or(&self.id)
    }
}

const ASSISTANT_COLUMNS: &str = "SELECT a.id, a.workspace_id, a.source, a.name, a.current_version, a.created_at, a.updated_at, v.spec FROM assistants a \
     JOIN assistant_versions v ON v.assistant_id = a.id AND v.version = a.current_version";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssistantRecord {
    pub id: String,
    pub workspace_id: Option<String>,
    pub source: String,
    pub name: String,
    pub current_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The current version's spec (JSON).
    pub spec: String,
}

const NUMBER_COLUMNS: &str = "SELECT id, workspace_id, e164, label, assistant_id, created_at FROM numbers";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NumberRecord {
    pub id: String,
    pub workspace_id: String,
    pub e164: String,
    pub label: Option<String>,
    pub assistant_id: Option<String>,
    pub created_at: i64,
}

const CALL_COLUMNS: &str = "SELECT id, workspace_id, assistant_id, assistant_version, direction, to_number, from_number, status, status_reason, disposition, summary, ended_by, \
     dynamic_variables, metadata, webhook_url, idempotency_key, worker_id, day, created_at, started_at, ended_at, duration_ms, extracted, disposition_notes, session_id, agent_id, dialect, success, success_reason, campaign_id FROM calls";

#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct CallRecord {
    pub id: String,
    pub workspace_id: String,
    pub assistant_id: String,
    pub assistant_version: i64,
    pub direction: String,
    pub to_number: String,
    pub from_number: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub disposition: Option<String>,
    pub summary: Option<String>,
    pub ended_by: Option<String>,
    pub dynamic_variables: String,
    pub metadata: String,
    pub webhook_url: Option<String>,
    pub idempotency_key: Option<String>,
    pub worker_id: Option<String>,
    pub day: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub duration_ms: Option<i64>,
    /// The fields the call extracted (a flow's slots), a JSON object.
    pub extracted: Option<String>,
    pub disposition_notes: Option<String>,
    /// The Ringez session it was placed in, and the agent that placed it (`X-Agent-ID`).
    pub session_id: Option<String>,
    pub agent_id: Option<String>,
    /// `ringez` when placed through Ringez's paths (its own webhook_url gets that format).
    pub dialect: Option<String>,
    /// 1 when the call reached its assistant's goal, 0 when not; null when unknown.
    pub success: Option<i64>,
    pub success_reason: Option<String>,
    /// The campaign it was placed for.
    pub campaign_id: Option<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sql_list_of_live_statuses_matches_the_constant() {
        let listed = super::LIVE_STATUSES.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
        assert_eq!(live_statuses_sql!(), format!("({listed})"));
        let live: Vec<&str> = crate::call::CallStatus::ALL.iter().filter(|s| s.is_live()).map(|s| s.as_str()).collect();
        assert_eq!(live, super::LIVE_STATUSES, "the stored list of live statuses is the enum's");
        let open = super::LIVE_STATUSES.iter().filter(|s| **s != "ending").map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
        assert_eq!(open_statuses_sql!(), format!("({open})"));
    }
}

impl CallRecord {
    pub fn is_live(&self) -> bool {
        LIVE_STATUSES.contains(&self.status.as_str())
    }
}

/// How a call ended.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    pub status: CallStatus,
    pub reason: Option<String>,
    pub disposition: Option<String>,
    pub disposition_notes: Option<String>,
    /// A JSON object of the fields the call extracted.
    pub extracted: Option<String>,
    pub summary: Option<String>,
    pub ended_by: Option<String>,
    pub duration_ms: Option<i64>,
    /// Whether it reached the assistant's goal, and why.
    pub success: Option<(bool, String)>,
}

impl CallOutcome {
    /// A call that ended with `status` for `reason`, and nothing else to keep.
    pub fn ended(status: CallStatus, reason: impl Into<String>) -> CallOutcome {
        CallOutcome { status, reason: Some(reason.into()), disposition: None, disposition_notes: None, extracted: None, summary: None, ended_by: None, duration_ms: None, success: None }
    }
}

#[derive(Debug, Clone)]
pub struct TranscriptLine {
    pub seq: i64,
    pub speaker: crate::call::Speaker,
    pub text: String,
    pub at_ms: i64,
    pub interrupted: bool,
    /// A caller line's intent, sentiment and entities, once analysed.
    pub analysis: Option<serde_json::Value>,
    /// How sure speech recognition was of a caller line's words (0..=1).
    pub confidence: Option<f64>,
}

#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct TurnRecord {
    pub turn: i64,
    pub end_of_turn_ms: f64,
    pub stt_final_ms: f64,
    pub llm_first_token_ms: f64,
    pub tts_first_audio_ms: f64,
    pub voice_to_voice_ms: f64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRecord {
    pub seq: i64,
    pub kind: String,
    pub data: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub from: i64,
    pub to: i64,
    pub assistant_id: Option<String>,
    pub status: Option<String>,
    pub disposition: Option<String>,
    /// Calls with a caller line of this intent.
    pub intent: Option<String>,
    /// Calls placed in this Ringez session.
    pub session_id: Option<String>,
    /// Calls placed for this campaign.
    pub campaign_id: Option<String>,
    pub to_number: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Clone, Default)]
pub struct AnalysisCounts {
    pub intents: Vec<(String, i64)>,
    pub positive: i64,
    pub neutral: i64,
    pub negative: i64,
    pub escalations: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub calls: i64,
    pub minutes: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallCount {
    pub day: String,
    pub status: String,
    pub disposition: String,
    pub calls: i64,
    pub duration_ms: i64,
    pub timed: i64,
}
