//! Webhook subscriptions, signing secrets and deliveries.
//!
//! A delivery is a row from the moment its event happens until it is delivered or given up:
//! a worker claims a due row (a conditional update only one worker can win), posts it, and
//! records the answer; a worker that dies mid-delivery leaves a claim that expires, and the
//! row is delivered by whichever worker comes next — after a restart too.

use super::{now_ms, Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRecord {
    pub id: String,
    pub workspace_id: String,
    pub url: String,
    /// JSON list of event names (`*` for every one).
    pub events: String,
    pub secret_ciphertext: String,
    pub key_id: String,
    pub created_at: i64,
    /// `ringline` or `ringez`: how its deliveries are shaped and signed.
    pub format: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: String,
    pub workspace_id: String,
    /// The subscription; `None` for a call's or an assistant's own `webhook_url`.
    pub webhook_id: Option<String>,
    pub event_id: String,
    pub event: String,
    pub call_id: Option<String>,
    pub url: String,
    pub body: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub claimed_until: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    /// `ringline` or `ringez`: which signature header it carries.
    pub format: String,
}

const DELIVERY_COLUMNS: &str = "id, workspace_id, webhook_id, event_id, event, call_id, url, body, state, attempts, next_attempt_at, claimed_until, last_status, last_error, created_at, delivered_at, format";

impl Store {
    pub async fn insert_webhook(&self, hook: &WebhookRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO webhooks (id, workspace_id, url, events, secret_ciphertext, key_id, created_at, format) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&hook.id)
            .bind(&hook.workspace_id)
            .bind(&hook.url)
            .bind(&hook.events)
            .bind(&hook.secret_ciphertext)
            .bind(&hook.key_id)
            .bind(hook.created_at)
            .bind(&hook.format)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn webhooks(&self, workspace_id: &str) -> Result<Vec<WebhookRecord>, StoreError> {
        Ok(sqlx::query_as::<_, WebhookRecord>("SELECT id, workspace_id, url, events, secret_ciphertext, key_id, created_at, format FROM webhooks WHERE workspace_id = $1 ORDER BY created_at, id")
            .bind(workspace_id)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn webhook(&self, workspace_id: &str, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        Ok(sqlx::query_as::<_, WebhookRecord>("SELECT id, workspace_id, url, events, secret_ciphertext, key_id, created_at, format FROM webhooks WHERE workspace_id = $1 AND id = $2")
            .bind(workspace_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Deletes a subscription; its deliveries not yet made are given up (kept for the record).
    pub async fn delete_webhook(&self, workspace_id: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM webhooks WHERE workspace_id = $1 AND id = $2").bind(workspace_id).bind(id).execute(&self.pool).await?;
        sqlx::query("UPDATE webhook_deliveries SET state = 'failed', last_error = 'the subscription was deleted' WHERE webhook_id = $1 AND state = 'pending'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn count_webhooks(&self, workspace_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE workspace_id = $1").bind(workspace_id).fetch_one(&self.pool).await?)
    }

    /// The workspace's signing secret for `webhook_url` deliveries: (ciphertext, key id).
    pub async fn signing_secret(&self, workspace_id: &str) -> Result<Option<(String, String)>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as("SELECT secret_ciphertext, key_id FROM webhook_signing WHERE workspace_id = $1").bind(workspace_id).fetch_optional(&self.pool).await?;
        Ok(row)
    }

    /// Stores the signing secret unless one exists (two workers racing keep the first).
    pub async fn put_signing_secret(&self, workspace_id: &str, ciphertext: &str, key_id: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO webhook_signing (workspace_id, secret_ciphertext, key_id, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (workspace_id) DO NOTHING")
            .bind(workspace_id)
            .bind(ciphertext)
            .bind(key_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn insert_delivery(&self, d: &DeliveryRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, workspace_id, webhook_id, event_id, event, call_id, url, body, state, attempts, next_attempt_at, claimed_until, created_at, format) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, 0, $10, $11)",
        )
        .bind(&d.id)
        .bind(&d.workspace_id)
        .bind(&d.webhook_id)
        .bind(&d.event_id)
        .bind(&d.event)
        .bind(&d.call_id)
        .bind(&d.url)
        .bind(&d.body)
        .bind(d.next_attempt_at)
        .bind(d.created_at)
        .bind(&d.format)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Pending deliveries whose time has come and that no live claim holds, oldest first.
    pub async fn due_deliveries(&self, now: i64, limit: i64) -> Result<Vec<DeliveryRecord>, StoreError> {
        Ok(sqlx::query_as::<_, DeliveryRecord>(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $1 AND claimed_until < $1 ORDER BY next_attempt_at, created_at LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Claims a due delivery until `until`; only one worker's claim succeeds.
    pub async fn claim_delivery(&self, id: &str, now: i64, until: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE webhook_deliveries SET claimed_until = $1, attempts = attempts + 1 WHERE id = $2 AND state = 'pending' AND claimed_until < $3 AND next_attempt_at <= $3")
            .bind(until)
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records an attempt's answer: delivered, another try at `retry_at`, or (`None` and not
    /// delivered) given up.
    pub async fn record_attempt(&self, id: &str, delivered: bool, status: Option<i64>, error: Option<&str>, retry_at: Option<i64>) -> Result<(), StoreError> {
        let now = now_ms();
        let (state, next) = match (delivered, retry_at) {
            (true, _) => ("delivered", now),
            (false, Some(at)) => ("pending", at),
            (false, None) => ("failed", now),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, next_attempt_at = $2, claimed_until = 0, last_status = $3, last_error = $4, delivered_at = CASE WHEN $1 = 'delivered' THEN $5 ELSE delivered_at END WHERE id = $6",
        )
        .bind(state)
        .bind(next)
        .bind(status)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A workspace's deliveries, newest first; of one subscription when `webhook_id` is given.
    pub async fn deliveries(&self, workspace_id: &str, webhook_id: Option<&str>, limit: i64) -> Result<Vec<DeliveryRecord>, StoreError> {
        let rows = match webhook_id {
            Some(hook) => {
                sqlx::query_as::<_, DeliveryRecord>(&format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE workspace_id = $1 AND webhook_id = $2 ORDER BY created_at DESC, id LIMIT $3"))
                    .bind(workspace_id)
                    .bind(hook)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_as::<_, DeliveryRecord>(&format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE workspace_id = $1 ORDER BY created_at DESC, id LIMIT $2"))
                    .bind(workspace_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows)
    }

    pub async fn delivery(&self, workspace_id: &str, id: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        Ok(sqlx::query_as::<_, DeliveryRecord>(&format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE workspace_id = $1 AND id = $2"))
            .bind(workspace_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Sends a delivery again now (same event id and body), whatever became of it.
    pub async fn resend_delivery(&self, workspace_id: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1, claimed_until = 0 WHERE workspace_id = $2 AND id = $3")
            .bind(now_ms())
            .bind(workspace_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Drops every claim (at the start of a SQLite server: no other process can hold one).
    pub async fn release_delivery_claims(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE webhook_deliveries SET claimed_until = 0 WHERE state = 'pending'").execute(&self.pool).await?;
        Ok(())
    }
}
