//! Campaigns and their contacts.
//!
//! A campaign is driven by one worker at a time: [`Store::lease_campaign`] is a conditional
//! update only one worker wins, renewed while it dials and taken over by another once it
//! lapses. A contact is claimed the same way before its call is placed, so no contact is called
//! twice for one attempt, whichever workers share the database.

use super::{Store, StoreError};

/// A campaign still calling, or waiting for its start time.
pub const ACTIVE_CAMPAIGN_STATES: &str = "('scheduled', 'running')";

#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct CampaignRecord {
    pub workspace_id: String,
    pub id: String,
    pub name: String,
    pub assistant_id: String,
    pub from_number: Option<String>,
    /// Calls of this campaign live at once, at most.
    pub concurrency: i64,
    /// Calls to one contact, at most (a retry after no answer, busy or a failure).
    pub max_attempts: i64,
    pub retry_interval_ms: i64,
    pub webhook_url: Option<String>,
    /// draft, scheduled, running, paused, completed, canceled
    pub state: String,
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
    pub timezone: Option<String>,
    /// Calling hours each day in `timezone`, minutes after midnight: [start, end).
    pub hours_start: Option<i64>,
    pub hours_end: Option<i64>,
    pub driver_id: Option<String>,
    pub driver_until: i64,
    pub created_at: i64,
    pub launched_at: Option<i64>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// `campaign`, or Ringez's `batch`, `scheduled` (one call at a time), `queue`.
    pub kind: String,
    /// The Ringez session its calls are placed for (its budget applies), and the agent.
    pub session_id: Option<String>,
    pub agent_id: Option<String>,
    /// The dialect its calls' events speak (`ringez`), none for Ringline's own.
    pub dialect: Option<String>,
    /// JSON: `max_duration_s`, `record`, `metadata` (merged into every call's).
    pub call_settings: Option<String>,
}

/// When a launched campaign calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
    pub timezone: Option<String>,
    /// Calling hours each day in `timezone`, minutes after midnight: [start, end).
    pub hours: Option<(i64, i64)>,
}

#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct ContactRow {
    pub workspace_id: String,
    pub campaign_id: String,
    pub seq: i64,
    pub phone: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// JSON object: the call's dynamic variables.
    pub variables: String,
    /// JSON object: the contact's fields as given.
    pub custom_fields: String,
    /// pending, dialing, done
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub claimed_at: Option<i64>,
    pub call_id: Option<String>,
    /// The last call's status, `skipped` (the schedule ended first) or `canceled`.
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// Among contacts due, the higher is called first.
    pub priority: i64,
    /// Still not called by then: skipped (a queue's `max_wait_time`).
    pub expires_at: Option<i64>,
    /// Its own IANA zone, for calling hours (else the campaign's).
    pub timezone: Option<String>,
}

/// Contacts counted by (state, outcome, their call's status, 1 when attempts are left), and how
/// many.
pub type Tally = (String, Option<String>, Option<String>, i64, i64);

/// A contact with its call's status (none before a call, or once the call is deleted).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ContactWithCall {
    #[sqlx(flatten)]
    pub contact: ContactRow,
    pub call_status: Option<String>,
}

/// A contact being dialed, with its call's status (none before the call is stored).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Dialing {
    pub seq: i64,
    pub attempts: i64,
    pub claimed_at: Option<i64>,
    pub call_id: Option<String>,
    pub call_status: Option<String>,
    pub call_reason: Option<String>,
}

const CAMPAIGN_COLUMNS: &str = "SELECT workspace_id, id, name, assistant_id, from_number, concurrency, max_attempts, retry_interval_ms, webhook_url, state, start_at, end_at, timezone, hours_start, hours_end, driver_id, driver_until, created_at, launched_at, started_at, ended_at, kind, session_id, agent_id, dialect, call_settings FROM campaigns";
const CONTACT_COLUMNS: &str = "SELECT workspace_id, campaign_id, seq, phone, name, email, variables, custom_fields, state, attempts, next_attempt_at, claimed_at, call_id, outcome, reason, priority, expires_at, timezone FROM campaign_contacts";
/// The same, of `campaign_contacts c` joined with its call `k`.
const CONTACT_WITH_CALL_COLUMNS: &str = "SELECT c.workspace_id, c.campaign_id, c.seq, c.phone, c.name, c.email, c.variables, c.custom_fields, c.state, c.attempts, c.next_attempt_at, c.claimed_at, c.call_id, c.outcome, c.reason, c.priority, c.expires_at, c.timezone, k.status AS call_status \
     FROM campaign_contacts c LEFT JOIN calls k ON k.id = c.call_id";

/// Of the contacts `c`, those waiting for a call and due at the parameter `now`, their wait not
/// yet over (a queue's `max_wait_time`).
fn due_now(now: &str) -> String {
    format!("c.state = 'pending' AND c.next_attempt_at <= {now} AND (c.expires_at IS NULL OR c.expires_at > {now})")
}

impl Store {
    /// Stores a new draft campaign; false when the workspace already has one by that id.
    pub async fn insert_campaign(&self, c: &CampaignRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO campaigns (workspace_id, id, name, assistant_id, from_number, concurrency, max_attempts, retry_interval_ms, webhook_url, state, start_at, end_at, timezone, driver_id, driver_until, created_at, kind, session_id, agent_id, dialect, call_settings) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, 0, $14, $15, $16, $17, $18, $19) ON CONFLICT (workspace_id, id) DO NOTHING",
        )
        .bind(&c.workspace_id)
        .bind(&c.id)
        .bind(&c.name)
        .bind(&c.assistant_id)
        .bind(&c.from_number)
        .bind(c.concurrency)
        .bind(c.max_attempts)
        .bind(c.retry_interval_ms)
        .bind(&c.webhook_url)
        .bind(&c.state)
        .bind(c.start_at)
        .bind(c.end_at)
        .bind(&c.timezone)
        .bind(c.created_at)
        .bind(&c.kind)
        .bind(&c.session_id)
        .bind(&c.agent_id)
        .bind(&c.dialect)
        .bind(&c.call_settings)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn campaign(&self, workspace_id: &str, id: &str) -> Result<Option<CampaignRecord>, StoreError> {
        Ok(sqlx::query_as::<_, CampaignRecord>(&format!("{CAMPAIGN_COLUMNS} WHERE workspace_id = $1 AND id = $2")).bind(workspace_id).bind(id).fetch_optional(&self.pool).await?)
    }

    /// A page of the workspace's campaigns, newest first, and how many there are.
    pub async fn campaigns(&self, workspace_id: &str, limit: i64, offset: i64) -> Result<(Vec<CampaignRecord>, i64), StoreError> {
        let rows = sqlx::query_as::<_, CampaignRecord>(&format!("{CAMPAIGN_COLUMNS} WHERE workspace_id = $1 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"))
            .bind(workspace_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM campaigns WHERE workspace_id = $1").bind(workspace_id).fetch_one(&self.pool).await?;
        Ok((rows, total))
    }

    /// Campaigns not yet launched or still calling: what the workspace's quota counts. Those
    /// of `kind` when `of_kind`, else those of every other kind.
    pub async fn count_open_campaigns(&self, workspace_id: &str, kind: &str, of_kind: bool) -> Result<i64, StoreError> {
        let compare = if of_kind { "=" } else { "<>" };
        Ok(sqlx::query_scalar(&format!("SELECT COUNT(*) FROM campaigns WHERE workspace_id = $1 AND kind {compare} $2 AND state IN ('draft', 'scheduled', 'running', 'paused')"))
            .bind(workspace_id)
            .bind(kind)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The ids of a session's campaigns (its batches, scheduled calls and queues).
    pub async fn session_campaigns(&self, workspace_id: &str, session_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM campaigns WHERE workspace_id = $1 AND session_id = $2").bind(workspace_id).bind(session_id).fetch_all(&self.pool).await?)
    }

    /// Deletes a campaign and its contacts (its calls stay).
    pub async fn delete_campaign(&self, workspace_id: &str, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM campaign_contacts WHERE workspace_id = $1 AND campaign_id = $2").bind(workspace_id).bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM campaigns WHERE workspace_id = $1 AND id = $2").bind(workspace_id).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Contacts of the workspace's campaigns launched since `since`.
    pub async fn count_contacts_launched_since(&self, workspace_id: &str, since: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM campaign_contacts c JOIN campaigns k ON k.workspace_id = c.workspace_id AND k.id = c.campaign_id WHERE k.workspace_id = $1 AND k.launched_at >= $2",
        )
        .bind(workspace_id)
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Launches a draft: its schedule and contacts in one transaction. False when it is no
    /// longer a draft (launched meanwhile, or canceled).
    pub async fn launch_campaign(&self, workspace_id: &str, id: &str, schedule: &Schedule, contacts: &[ContactRow], now: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE campaigns SET state = 'scheduled', start_at = $1, end_at = $2, timezone = $3, hours_start = $4, hours_end = $5, launched_at = $6 WHERE workspace_id = $7 AND id = $8 AND state = 'draft'",
        )
        .bind(schedule.start_at)
        .bind(schedule.end_at)
        .bind(&schedule.timezone)
        .bind(schedule.hours.map(|(start, _)| start))
        .bind(schedule.hours.map(|(_, end)| end))
        .bind(now)
        .bind(workspace_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        for c in contacts {
            sqlx::query(
                "INSERT INTO campaign_contacts (workspace_id, campaign_id, seq, phone, name, email, variables, custom_fields, state, attempts, next_attempt_at, priority, expires_at, timezone) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $10, $11, $12)",
            )
            .bind(workspace_id)
            .bind(id)
            .bind(c.seq)
            .bind(&c.phone)
            .bind(&c.name)
            .bind(&c.email)
            .bind(&c.variables)
            .bind(&c.custom_fields)
            .bind(schedule.start_at.unwrap_or(now))
            .bind(c.priority)
            .bind(c.expires_at)
            .bind(&c.timezone)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// How many contacts are in each (state, outcome, their call's status, whether attempts
    /// are left of `max_attempts`): what the counts are made of.
    pub async fn campaign_tally(&self, workspace_id: &str, id: &str, max_attempts: i64) -> Result<Vec<Tally>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT c.state, c.outcome, k.status, CAST(CASE WHEN c.attempts < $3 THEN 1 ELSE 0 END AS BIGINT) AS retry_left, COUNT(*) \
             FROM campaign_contacts c LEFT JOIN calls k ON k.id = c.call_id WHERE c.workspace_id = $1 AND c.campaign_id = $2 \
             GROUP BY c.state, c.outcome, k.status, CAST(CASE WHEN c.attempts < $3 THEN 1 ELSE 0 END AS BIGINT)",
        )
        .bind(workspace_id)
        .bind(id)
        .bind(max_attempts)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A page of a campaign's contacts, in their order, each with its call's status.
    pub async fn campaign_contacts(&self, workspace_id: &str, id: &str, limit: i64, offset: i64) -> Result<Vec<ContactWithCall>, StoreError> {
        Ok(sqlx::query_as::<_, ContactWithCall>(&format!("{CONTACT_WITH_CALL_COLUMNS} WHERE c.workspace_id = $1 AND c.campaign_id = $2 ORDER BY c.seq LIMIT $3 OFFSET $4"))
            .bind(workspace_id)
            .bind(id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Launched campaigns due to dial now whose lease is free or this worker's, those whose
    /// lease ends soonest (stepped longest ago, or never) first, so every one gets its turn.
    pub async fn due_campaigns(&self, worker_id: &str, now: i64, limit: i64) -> Result<Vec<CampaignRecord>, StoreError> {
        Ok(sqlx::query_as::<_, CampaignRecord>(&format!(
            "{CAMPAIGN_COLUMNS} WHERE state IN {ACTIVE_CAMPAIGN_STATES} AND (start_at IS NULL OR start_at <= $1) AND (driver_until < $1 OR driver_id = $2) ORDER BY driver_until, launched_at, id LIMIT $3"
        ))
        .bind(now)
        .bind(worker_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Takes or renews the campaign's lease until `until`; false when another worker holds it.
    ///
    /// A session's queues (`queue/add` requests) share one limit, so one worker steps them all:
    /// a worker that wins one of them while another worker holds one of the same session's
    /// gives it back. Each worker looks after it writes, so of two that lease two of a session's
    /// queues at once, the later to look sees the other's lease, whatever the order.
    pub async fn lease_campaign(&self, campaign: &CampaignRecord, worker_id: &str, now: i64, until: i64) -> Result<bool, StoreError> {
        let (workspace_id, id) = (campaign.workspace_id.as_str(), campaign.id.as_str());
        let done = sqlx::query(&format!(
            "UPDATE campaigns SET driver_id = $1, driver_until = $2 WHERE workspace_id = $3 AND id = $4 AND state IN {ACTIVE_CAMPAIGN_STATES} AND (driver_until < $5 OR driver_id = $1)"
        ))
        .bind(worker_id)
        .bind(until)
        .bind(workspace_id)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        // Only a session's queue shares its lease; every other campaign is leased alone (the
        // driver leases each campaign every pass: no query it does not need).
        if campaign.kind != "queue" || campaign.session_id.is_none() {
            return Ok(true);
        }
        let held_elsewhere = sqlx::query_scalar::<_, i64>(&format!(
            "SELECT COUNT(*) FROM campaigns o JOIN campaigns c ON c.workspace_id = o.workspace_id AND c.session_id = o.session_id \
             WHERE c.workspace_id = $1 AND c.id = $2 AND c.kind = 'queue' AND o.kind = 'queue' AND o.id <> c.id AND o.state IN {ACTIVE_CAMPAIGN_STATES} \
             AND o.driver_id <> $3 AND o.driver_until >= $4"
        ))
        .bind(workspace_id)
        .bind(id)
        .bind(worker_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        if held_elsewhere > 0 {
            sqlx::query("UPDATE campaigns SET driver_until = 0 WHERE workspace_id = $1 AND id = $2 AND driver_id = $3")
                .bind(workspace_id)
                .bind(id)
                .bind(worker_id)
                .execute(&self.pool)
                .await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// The contacts being dialed, with their calls' statuses.
    pub async fn dialing_contacts(&self, workspace_id: &str, id: &str) -> Result<Vec<Dialing>, StoreError> {
        Ok(sqlx::query_as::<_, Dialing>(
            "SELECT c.seq, c.attempts, c.claimed_at, c.call_id, k.status AS call_status, k.status_reason AS call_reason FROM campaign_contacts c LEFT JOIN calls k ON k.id = c.call_id \
             WHERE c.workspace_id = $1 AND c.campaign_id = $2 AND c.state = 'dialing' ORDER BY c.seq",
        )
        .bind(workspace_id)
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Calls in progress that the session's other queues (`queue/add` requests) placed: a
    /// queue's `concurrent_limit` counts them with its own.
    pub async fn session_queue_calls(&self, workspace_id: &str, session_id: &str, except: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>(concat!(
            "SELECT COUNT(*) FROM calls k JOIN campaigns p ON p.workspace_id = k.workspace_id AND p.id = k.campaign_id \
             WHERE k.workspace_id = $1 AND p.session_id = $2 AND p.kind = 'queue' AND p.id <> $3 AND k.status IN ",
            live_statuses_sql!()
        ))
        .bind(workspace_id)
        .bind(session_id)
        .bind(except)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether another of the session's queues has a call due now of a higher priority than
    /// `priority`: the session's calls are placed in priority order across its requests.
    pub async fn session_queue_outranks(&self, workspace_id: &str, session_id: &str, except: &str, priority: i64, now: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>(&format!(
            "SELECT COUNT(*) FROM campaign_contacts c JOIN campaigns p ON p.workspace_id = c.workspace_id AND p.id = c.campaign_id \
             WHERE c.workspace_id = $1 AND p.session_id = $2 AND p.kind = 'queue' AND p.id <> $3 AND p.state IN {ACTIVE_CAMPAIGN_STATES} \
             AND c.priority > $4 AND {}",
            due_now("$5")
        ))
        .bind(workspace_id)
        .bind(session_id)
        .bind(except)
        .bind(priority)
        .bind(now)
        .fetch_one(&self.pool)
        .await?
            > 0)
    }

    /// The next contact due for a call: the highest priority, then the longest due.
    pub async fn next_due_contact(&self, workspace_id: &str, id: &str, now: i64) -> Result<Option<ContactRow>, StoreError> {
        Ok(sqlx::query_as::<_, ContactRow>(&format!(
            "{CONTACT_COLUMNS} c WHERE c.workspace_id = $1 AND c.campaign_id = $2 AND {} ORDER BY c.priority DESC, c.next_attempt_at, c.seq LIMIT 1",
            due_now("$3")
        ))
        .bind(workspace_id)
        .bind(id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Claims a pending contact for a call; false when another worker took it, or the campaign
    /// no longer calls (paused, canceled).
    pub async fn claim_contact(&self, workspace_id: &str, id: &str, seq: i64, now: i64) -> Result<bool, StoreError> {
        // Only while the campaign calls: a pause or a cancel stops claims at once.
        let done = sqlx::query(&format!(
            "UPDATE campaign_contacts SET state = 'dialing', claimed_at = $1, call_id = NULL WHERE workspace_id = $2 AND campaign_id = $3 AND seq = $4 AND state = 'pending' \
             AND EXISTS (SELECT 1 FROM campaigns WHERE workspace_id = $2 AND id = $3 AND state IN {ACTIVE_CAMPAIGN_STATES})"
        ))
        .bind(now)
        .bind(workspace_id)
        .bind(id)
        .bind(seq)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A pending contact due later, at `at` (its calling hours open then).
    pub async fn defer_contact(&self, workspace_id: &str, id: &str, seq: i64, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE campaign_contacts SET next_attempt_at = $1 WHERE workspace_id = $2 AND campaign_id = $3 AND seq = $4 AND state = 'pending'")
            .bind(at)
            .bind(workspace_id)
            .bind(id)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The call placed for a claimed contact.
    pub async fn contact_called(&self, workspace_id: &str, id: &str, seq: i64, call_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE campaign_contacts SET call_id = $1, attempts = attempts + 1 WHERE workspace_id = $2 AND campaign_id = $3 AND seq = $4")
            .bind(call_id)
            .bind(workspace_id)
            .bind(id)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A dialing contact back to pending, due at `at` (a retry, or a call that could not be
    /// placed yet).
    pub async fn contact_again(&self, workspace_id: &str, id: &str, seq: i64, at: i64, outcome: Option<&str>, reason: Option<&str>) -> Result<(), StoreError> {
        sqlx::query("UPDATE campaign_contacts SET state = 'pending', next_attempt_at = $1, outcome = COALESCE($2, outcome), reason = COALESCE($3, reason) WHERE workspace_id = $4 AND campaign_id = $5 AND seq = $6 AND state = 'dialing'")
            .bind(at)
            .bind(outcome)
            .bind(reason)
            .bind(workspace_id)
            .bind(id)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A contact done: `outcome` is its last call's status, or why it was never called.
    pub async fn contact_done(&self, workspace_id: &str, id: &str, seq: i64, outcome: &str, reason: Option<&str>) -> Result<(), StoreError> {
        sqlx::query("UPDATE campaign_contacts SET state = 'done', outcome = $1, reason = $2 WHERE workspace_id = $3 AND campaign_id = $4 AND seq = $5")
            .bind(outcome)
            .bind(reason)
            .bind(workspace_id)
            .bind(id)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Pending contacts done with `outcome` (the schedule ended, the campaign was canceled);
    /// with `expired_by`, only those whose wait ended by then (a queue's `max_wait_time`).
    /// How many.
    pub async fn close_pending_contacts(&self, workspace_id: &str, id: &str, expired_by: Option<i64>, outcome: &str, reason: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE campaign_contacts SET state = 'done', outcome = $1, reason = $2 \
             WHERE workspace_id = $3 AND campaign_id = $4 AND state = 'pending' AND ($5 IS NULL OR expires_at <= $5)",
        )
        .bind(outcome)
        .bind(reason)
        .bind(workspace_id)
        .bind(id)
        .bind(expired_by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Moves a campaign from one of `from` to `to`; false when it was in none of them (another
    /// worker or request moved it first). Running stamps when it started (the first time),
    /// completed and canceled when it ended.
    pub async fn move_campaign(&self, workspace_id: &str, id: &str, from: &[&str], to: &str, now: i64) -> Result<bool, StoreError> {
        let from = from.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
        let stamp = match to {
            "running" => ", started_at = COALESCE(started_at, $4)",
            "completed" | "canceled" => ", ended_at = $4",
            _ => "",
        };
        let sql = format!("UPDATE campaigns SET state = $1{stamp} WHERE workspace_id = $2 AND id = $3 AND state IN ({from})");
        let query = sqlx::query(&sql).bind(to).bind(workspace_id).bind(id);
        let query = if stamp.is_empty() { query } else { query.bind(now) };
        Ok(query.execute(&self.pool).await?.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_queue_claims_the_higher_priority_first_and_skips_what_waited_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("q.db").display())).await.unwrap();
        let ws = store.ensure_workspace("acme").await.unwrap().id;
        let campaign = CampaignRecord { workspace_id: ws.clone(), id: "q".into(), name: "q".into(), assistant_id: "a".into(), concurrency: 1, max_attempts: 1, state: "draft".into(), kind: "queue".into(), ..CampaignRecord::default() };
        assert!(store.insert_campaign(&campaign).await.unwrap());
        let now = 1_000_000;
        let contact = |seq: i64, priority: i64, expires_at: Option<i64>| ContactRow { seq, phone: format!("+1500555000{seq}"), variables: "{}".into(), custom_fields: "{}".into(), priority, expires_at, ..ContactRow::default() };
        let contacts = [contact(0, 1, None), contact(1, 5, None), contact(2, 9, Some(now + 10)), contact(3, 3, Some(now + 10))];
        assert!(store.launch_campaign(&ws, "q", &Schedule::default(), &contacts, now).await.unwrap());
        let store = &store;
        let ws = ws.as_str();
        let claim = |now: i64| async move {
            let next = store.next_due_contact(ws, "q", now).await.unwrap()?;
            store.claim_contact(ws, "q", next.seq, now).await.unwrap().then_some(next.seq)
        };

        // While it may still wait, the urgent contact goes first.
        assert_eq!(claim(now).await, Some(2));
        store.contact_done(ws, "q", 2, "completed", None).await.unwrap();
        // Past its wait, contact 3 is not claimed (though above contact 0), and is skipped.
        assert_eq!(claim(now + 20).await, Some(1), "then priority 5");
        assert_eq!(store.close_pending_contacts(ws, "q", Some(now + 20), "skipped", "waited").await.unwrap(), 1);
        assert_eq!(claim(now + 20).await, Some(0));
        assert!(claim(now + 20).await.is_none());
        let rows = store.campaign_contacts(ws, "q", 10, 0).await.unwrap();
        let third = &rows[3].contact;
        assert_eq!((third.state.as_str(), third.outcome.as_deref(), third.attempts), ("done", Some("skipped"), 0));
    }

    #[tokio::test]
    async fn one_worker_at_a_time_steps_a_sessions_queues() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("q.db").display())).await.unwrap();
        let ws = store.ensure_workspace("acme").await.unwrap().id;
        let queue = |id: &str, session: &str| CampaignRecord {
            workspace_id: ws.clone(),
            id: id.into(),
            name: id.into(),
            assistant_id: "a".into(),
            concurrency: 1,
            max_attempts: 1,
            state: "draft".into(),
            kind: "queue".into(),
            session_id: Some(session.into()),
            ..CampaignRecord::default()
        };
        let now = 1_000_000;
        let contact = ContactRow { seq: 0, phone: "+15005550006".into(), variables: "{}".into(), custom_fields: "{}".into(), ..ContactRow::default() };
        for (id, session) in [("q1", "s"), ("q2", "s"), ("other", "t")] {
            assert!(store.insert_campaign(&queue(id, session)).await.unwrap());
            assert!(store.launch_campaign(&ws, id, &Schedule::default(), std::slice::from_ref(&contact), now).await.unwrap());
        }
        let lease = |id: &'static str, worker: &'static str, now: i64| {
            let (store, campaign) = (&store, queue(id, if id == "other" { "t" } else { "s" }));
            async move { store.lease_campaign(&campaign, worker, now, now + 15_000).await.unwrap() }
        };

        assert!(lease("q1", "a", now).await);
        // Worker b may not step the session's other queue while a holds the first, and does
        // not keep the lease it wrote: a takes the second as well.
        assert!(!lease("q2", "b", now).await);
        assert!(lease("q2", "a", now).await);
        assert!(lease("q1", "a", now + 1000).await, "a renews its own");
        // Another session's queue is any worker's.
        assert!(lease("other", "b", now).await);
        // Once a's leases lapse, b takes the session over.
        assert!(lease("q1", "b", now + 20_000).await);
        assert!(!lease("q2", "a", now + 20_000).await, "a's lapsed lease on q2 is no claim on the session");
        assert!(lease("q2", "b", now + 20_000).await);
    }
}
