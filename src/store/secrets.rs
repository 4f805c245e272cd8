//! Workspace secrets (stored encrypted; the store never sees a key in the clear) and the
//! counts that the per-workspace limits are checked against.

use super::{now_ms, Store, StoreError};

/// A secret's row: its name and the value's ciphertext.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretRecord {
    pub name: String,
    pub ciphertext: String,
    pub key_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// Creates or replaces a secret. Returns whether it was new.
    pub async fn put_secret(&self, workspace_id: &str, name: &str, ciphertext: &str, key_id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let updated = sqlx::query("UPDATE secrets SET ciphertext = $1, key_id = $2, updated_at = $3 WHERE workspace_id = $4 AND name = $5")
            .bind(ciphertext)
            .bind(key_id)
            .bind(now)
            .bind(workspace_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if updated.rows_affected() == 1 {
            return Ok(false);
        }
        let inserted = sqlx::query(
            "INSERT INTO secrets (workspace_id, name, ciphertext, key_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (workspace_id, name) DO NOTHING",
        )
        .bind(workspace_id)
        .bind(name)
        .bind(ciphertext)
        .bind(key_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    pub async fn secrets(&self, workspace_id: &str) -> Result<Vec<SecretRecord>, StoreError> {
        Ok(sqlx::query_as::<_, SecretRecord>("SELECT name, ciphertext, key_id, created_at, updated_at FROM secrets WHERE workspace_id = $1 ORDER BY name")
            .bind(workspace_id)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn secret(&self, workspace_id: &str, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        Ok(sqlx::query_as::<_, SecretRecord>("SELECT name, ciphertext, key_id, created_at, updated_at FROM secrets WHERE workspace_id = $1 AND name = $2")
            .bind(workspace_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn delete_secret(&self, workspace_id: &str, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM secrets WHERE workspace_id = $1 AND name = $2").bind(workspace_id).bind(name).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves a live call to `ending` (a hang-up was asked for). Only one request wins: the
    /// others find it ending or ended and get `false`.
    pub async fn mark_ending(&self, call_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(concat!("UPDATE calls SET status = 'ending' WHERE id = $1 AND status IN ", open_statuses_sql!()))
            .bind(call_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    // ── what the limits count ────────────────────────────────────────────────────────────

    pub async fn count_live_calls(&self, workspace_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(concat!("SELECT COUNT(*) FROM calls WHERE workspace_id = $1 AND status IN ", live_statuses_sql!()))
            .bind(workspace_id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn count_calls_since(&self, workspace_id: &str, since_ms: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE workspace_id = $1 AND created_at >= $2").bind(workspace_id).bind(since_ms).fetch_one(&self.pool).await?)
    }

    pub async fn count_assistants(&self, workspace_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM assistants WHERE workspace_id = $1 AND deleted_at IS NULL").bind(workspace_id).fetch_one(&self.pool).await?)
    }

    pub async fn count_numbers(&self, workspace_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM numbers WHERE workspace_id = $1").bind(workspace_id).fetch_one(&self.pool).await?)
    }

    pub async fn count_secrets(&self, workspace_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM secrets WHERE workspace_id = $1").bind(workspace_id).fetch_one(&self.pool).await?)
    }
}
