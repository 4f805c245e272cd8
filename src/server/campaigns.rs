//! Campaigns: an assistant calling a list of contacts, a few at a time, within a schedule —
//! Ringg's `/v1/campaigns` paths.
//!
//! `POST /v1/campaigns` creates a draft (the assistant, caller id, calls at once, retries);
//! `POST /v1/campaigns/launch` gives it contacts and a schedule (or creates and launches in one
//! request when it names the assistant), as JSON or a spreadsheet's CSV (`contacts_csv`).
//! Every contact is checked before anything is stored: a bad number, a missing variable or a
//! bad time gets a 4xx naming `contacts[i].…` and the campaign stays as it was.
//!
//! [`drive`] runs on every worker: each second it takes the lease of each due campaign no
//! other worker holds, settles the contacts whose calls ended (a retry after no answer, busy
//! or a failure while attempts remain), closes what the schedule's end leaves, and places
//! calls up to the campaign's concurrency through [`calls::place`] — the workspace's limits
//! apply; a call refused for a limit is tried again after the wait it was given. A
//! campaign's calls carry its `webhook_url` and `{campaign_id, contact}` in their metadata.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::assistants::{from_stored, rfc3339, Page};
use super::auth::Auth;
use super::calls::{self, OutboundRequest, Placement};
use super::error::{from_value_at, ApiError, ApiJson, ApiQuery};
use super::numbers::{valid_number, with_telephony};
use super::webhooks::emit_campaign;
use super::AppState;
use crate::store::{self, CampaignRecord, CampaignSchedule, ContactRow, ContactWithCall};

/// The paths this module adds, for the OpenAPI document (tag `campaigns`).
pub const PATHS: &[(&str, &str, &str)] = &[
    ("GET", "/v1/campaigns", "The workspace's campaigns, newest first, with their contacts' counts"),
    ("POST", "/v1/campaigns", "A draft campaign: `assistant_id`, `from_number`/`from_number_id`, `concurrency`, `retry`, `webhook_url`"),
    ("POST", "/v1/campaigns/launch", "Launch `campaign_id` with `contacts` (`phone`, `name`, `email`, `custom_fields`) or `contacts_csv`, and a `schedule`; with `assistant_id`, create it too"),
    ("GET", "/v1/campaigns/{id}/status", "A campaign's state, counts and a page of its contacts (`limit`, `offset`)"),
    ("GET", "/v1/campaigns/{id}", "The same as its status"),
    ("POST", "/v1/campaigns/{id}/pause", "No new calls until resumed; calls in progress go on"),
    ("POST", "/v1/campaigns/{id}/resume", "Calls again where it paused"),
    ("POST", "/v1/campaigns/{id}/cancel", "No more calls: pending contacts are canceled; calls in progress go on"),
];

/// Contacts in one campaign.
pub const MAX_CONTACTS: usize = 1000;
/// Contacts one workspace may launch in a day: what it stores stays bounded however often it
/// launches and cancels.
const MAX_CONTACTS_A_DAY: i64 = 10_000;
/// A contact's fields (the variables among them and the rest, kept with its call).
const MAX_CUSTOM_FIELDS: usize = 50;
/// Calls to one contact, at most.
const MAX_ATTEMPTS: u32 = 5;
/// The longest wait between two attempts at a contact (a day), and the default (5 minutes).
const MAX_RETRY_INTERVAL_S: u64 = 86_400;
const DEFAULT_RETRY_INTERVAL_S: u64 = 300;
/// How far ahead a schedule may start.
const MAX_START_AHEAD_MS: i64 = 366 * 86_400_000;
/// How often each worker looks for campaigns to drive, and how long its lease lasts.
const TICK: Duration = Duration::from_secs(1);
const LEASE_MS: i64 = 15_000;
/// Campaigns one worker steps in a pass, those stepped longest ago first.
const CAMPAIGNS_A_PASS: i64 = 50;
/// A contact claimed this long ago without a call was claimed by a worker that died first.
const STALE_CLAIM_MS: i64 = 60_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Calls to one contact, at most (1..5, default 1): no answer, busy and failed calls are
    /// tried again.
    pub max_attempts: Option<u32>,
    /// Seconds between attempts (1..86400, default 300).
    #[serde(alias = "retry_interval")]
    pub interval_s: Option<u64>,
}

/// What a campaign is, before it has contacts.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    /// The workspace's id for it (letters, digits, `_`, `-`; default: a new one).
    #[serde(alias = "id")]
    pub campaign_id: Option<String>,
    pub name: Option<String>,
    #[serde(alias = "agent_id")]
    pub assistant_id: Option<String>,
    /// The caller id: a workspace number (default: the assistant's number).
    pub from_number: Option<String>,
    pub from_number_id: Option<String>,
    /// Calls live at once (default 1, at most the workspace's concurrent calls).
    #[serde(alias = "concurrent_calls")]
    pub concurrency: Option<u32>,
    pub retry: Option<Retry>,
    /// Receives the campaign's events and every one of its calls'.
    pub webhook_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    #[serde(alias = "phone_number", alias = "mobile_number", alias = "to_number")]
    pub phone: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// The assistant's variables among them go to the call; all are kept in its metadata.
    #[serde(default, alias = "custom_args_values", alias = "dynamic_variables")]
    pub custom_fields: BTreeMap<String, Value>,
    /// Its IANA zone, whose local time the calling hours are (default: its number's zone when
    /// the number has one, else the campaign's).
    pub timezone: Option<String>,
    /// The CSV line it was read from, for errors.
    #[serde(skip)]
    pub line: Option<usize>,
    /// Among contacts due, the higher is called first (a Ringez queue's).
    #[serde(skip)]
    pub priority: i64,
    /// Skipped if still not called by then (a Ringez queue's `max_wait_time`).
    #[serde(skip)]
    pub expires_at: Option<i64>,
    /// Kept as the call's metadata instead of the contact's fields (a Ringez call's).
    #[serde(skip)]
    pub metadata: Option<Map<String, Value>>,
}

/// How a campaign's calls are placed beyond its assistant (stored as JSON).
#[derive(Serialize, Deserialize, Default)]
pub struct CallSettings {
    /// A hang-up after this long.
    pub max_duration_s: Option<u32>,
    pub record: Option<bool>,
    /// Merged into every call's metadata.
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// RFC 3339; without an offset, a time in `timezone`. Default: now.
    pub start_time: Option<String>,
    /// Contacts not yet called by then are skipped.
    pub end_time: Option<String>,
    /// An IANA zone (`Asia/Kolkata`) for times without an offset, and for calling hours.
    pub timezone: Option<String>,
    /// Hours each day in `timezone` within which calls are placed (`{"start": "09:00", "end":
    /// "18:00"}`); outside them contacts wait.
    pub calling_hours: Option<CallingHours>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallingHours {
    pub start: String,
    pub end: String,
}

/// `HH:MM` as minutes after midnight.
fn minutes_of(field: &str, raw: &str) -> Result<i64, ApiError> {
    chrono::NaiveTime::parse_from_str(raw.trim(), "%H:%M")
        .map(|t| i64::from(chrono::Timelike::hour(&t)) * 60 + i64::from(chrono::Timelike::minute(&t)))
        .map_err(|_| ApiError::invalid(field, format!("`{raw}` is not a time of day: use HH:MM, e.g. 09:00")))
}

/// When a contact may be called next under the campaign's calling hours, local to the
/// contact's zone (`contact_zone`, else the campaign's): `now` within them (or without hours),
/// else when they next open.
fn next_calling_time(campaign: &CampaignRecord, contact_zone: Option<&str>, now: i64) -> i64 {
    let (Some(start), Some(end)) = (campaign.hours_start, campaign.hours_end) else { return now };
    let zone: chrono_tz::Tz = contact_zone.or(campaign.timezone.as_deref()).and_then(|z| z.parse().ok()).unwrap_or(chrono_tz::UTC);
    let Some(local) = chrono::DateTime::from_timestamp_millis(now).map(|t| t.with_timezone(&zone)) else { return now };
    let minute = i64::from(chrono::Timelike::hour(&local)) * 60 + i64::from(chrono::Timelike::minute(&local));
    if (start..end).contains(&minute) {
        return now;
    }
    let day = if minute < start { local.date_naive() } else { local.date_naive() + chrono::Duration::days(1) };
    let opening = day.and_hms_opt((start / 60) as u32, (start % 60) as u32, 0).unwrap_or_default();
    use chrono::TimeZone;
    // A clock change that skips the opening minute: an hour later is within the hours.
    zone.from_local_datetime(&opening)
        .earliest()
        .or_else(|| zone.from_local_datetime(&(opening + chrono::Duration::hours(1))).earliest())
        .map(|t| t.timestamp_millis())
        .unwrap_or(now + 3_600_000)
}

fn hh_mm(minutes: i64) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

// ── checks ────────────────────────────────────────────────────────────────────────────────

fn printable(field: &str, value: &str, most: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.chars().count() > most || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, format!("give 1 to {most} printable characters")));
    }
    Ok(())
}

/// The campaign a create request describes, checked; nothing is stored.
async fn check_campaign(state: &AppState, auth: &Auth, request: CreateCampaign) -> Result<CampaignRecord, ApiError> {
    let id = match request.campaign_id {
        Some(id) => {
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(ApiError::invalid("campaign_id", format!("`{id}` is not a campaign id: use 1 to 64 letters, digits, `_` or `-`")));
            }
            id
        }
        None => store::new_id("camp"),
    };
    let name = request.name.unwrap_or_else(|| id.clone());
    printable("name", &name, 200)?;
    let Some(assistant_id) = request.assistant_id else {
        return Err(ApiError::invalid("assistant_id", "a campaign needs the assistant that calls its contacts (GET /v1/assistants lists them)"));
    };
    let assistant = state.store.assistant(&auth.workspace_id, &assistant_id).await?;
    if assistant.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "assistant_not_found", format!("no assistant `{assistant_id}` in this workspace (GET /v1/assistants lists them)")).with_field("assistant_id"));
    }
    let from_number = match (request.from_number, request.from_number_id) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("from_number_id", "give from_number or from_number_id, not both")),
        (None, Some(id)) => Some(state.store.number(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("number", &id).with_field("from_number_id"))?.e164),
        (Some(raw), None) => {
            let e164 = valid_number("from_number", &raw, None)?.0;
            let (numbers, _) = state.store.numbers(&auth.workspace_id, i64::MAX, 0).await?;
            if !numbers.iter().any(|n| n.e164 == e164) {
                return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "from_number_not_owned", format!("{e164} is not one of this workspace's numbers; add it with POST /v1/numbers, or leave from_number out")).with_field("from_number"));
            }
            Some(e164)
        }
        (None, None) => None,
    };
    let most = state.limits.calls_per_workspace;
    let concurrency = request.concurrency.unwrap_or(1);
    if !(1..=most).contains(&concurrency) {
        return Err(ApiError::invalid("concurrency", format!("{concurrency} calls at once: give 1 to {most}, this workspace's limit of calls in progress")));
    }
    let retry = request.retry.unwrap_or_default();
    let max_attempts = retry.max_attempts.unwrap_or(1);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(ApiError::invalid("retry.max_attempts", format!("{max_attempts} attempts: give 1 to {MAX_ATTEMPTS}")));
    }
    let interval_s = retry.interval_s.unwrap_or(DEFAULT_RETRY_INTERVAL_S);
    if !(1..=MAX_RETRY_INTERVAL_S).contains(&interval_s) {
        return Err(ApiError::invalid("retry.interval_s", format!("{interval_s} s between attempts: give 1 to {MAX_RETRY_INTERVAL_S}")));
    }
    if let Some(url) = &request.webhook_url {
        state.runner.egress().check_url_resolved(url).await.map_err(|e| ApiError::invalid("webhook_url", e.to_string()))?;
    }
    Ok(CampaignRecord {
        workspace_id: auth.workspace_id.clone(),
        id,
        name,
        assistant_id,
        from_number,
        concurrency: concurrency as i64,
        max_attempts: max_attempts as i64,
        retry_interval_ms: (interval_s * 1000) as i64,
        webhook_url: request.webhook_url,
        state: "draft".into(),
        kind: "campaign".into(),
        created_at: store::now_ms(),
        ..CampaignRecord::default()
    })
}

/// A time of the schedule in ms since the epoch: RFC 3339, or a local time in `zone`.
pub fn schedule_time(field: &str, raw: &str, zone: Option<chrono_tz::Tz>) -> Result<i64, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_millis());
    }
    let local = chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S"))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M"))
        .map_err(|_| ApiError::invalid(field, format!("`{raw}` is not a time: use RFC 3339, e.g. 2026-02-07T09:00:00+05:30, or a local time with `schedule.timezone`")))?;
    let Some(zone) = zone else {
        return Err(ApiError::invalid(field, format!("`{raw}` has no UTC offset: add one (e.g. +05:30) or give schedule.timezone")));
    };
    use chrono::TimeZone;
    zone.from_local_datetime(&local)
        .earliest()
        .map(|t| t.timestamp_millis())
        .ok_or_else(|| ApiError::invalid(field, format!("`{raw}` does not exist in {zone} (a clock change skips it)")))
}

/// A launch's schedule, checked against `now`.
fn check_schedule(schedule: Option<Schedule>, now: i64) -> Result<CampaignSchedule, ApiError> {
    let schedule = schedule.unwrap_or_default();
    let zone = match &schedule.timezone {
        Some(name) => Some(name.parse::<chrono_tz::Tz>().map_err(|_| ApiError::invalid("schedule.timezone", format!("`{name}` is not an IANA time zone, e.g. Asia/Kolkata or America/New_York")))?),
        None => None,
    };
    let start = schedule.start_time.as_deref().map(|raw| schedule_time("schedule.start_time", raw, zone)).transpose()?;
    let end = schedule.end_time.as_deref().map(|raw| schedule_time("schedule.end_time", raw, zone)).transpose()?;
    if let Some(start) = start {
        if start > now + MAX_START_AHEAD_MS {
            return Err(ApiError::invalid("schedule.start_time", "is more than a year ahead"));
        }
    }
    if let Some(end) = end {
        if end <= now {
            return Err(ApiError::invalid("schedule.end_time", format!("{} has passed: give a later end, or none", rfc3339(end))));
        }
        if start.is_some_and(|start| end <= start) {
            return Err(ApiError::invalid("schedule.end_time", "is not after schedule.start_time"));
        }
    }
    let hours = match &schedule.calling_hours {
        None => None,
        Some(_) if zone.is_none() => return Err(ApiError::invalid("schedule.timezone", "calling_hours are local times: give schedule.timezone, e.g. Asia/Kolkata")),
        Some(hours) => {
            let (from, to) = (minutes_of("schedule.calling_hours.start", &hours.start)?, minutes_of("schedule.calling_hours.end", &hours.end)?);
            if to <= from {
                return Err(ApiError::invalid("schedule.calling_hours.end", format!("{} is not after the start, {}: hours run within one day", hh_mm(to), hh_mm(from))));
            }
            Some((from, to))
        }
    };
    Ok(CampaignSchedule { start_at: start, end_at: end, timezone: schedule.timezone, hours })
}

/// The contacts as rows to store, each checked against the assistant and the lines.
async fn check_contacts(state: &AppState, auth: &Auth, campaign: &CampaignRecord, contacts: Vec<ContactInput>) -> Result<Vec<ContactRow>, ApiError> {
    if contacts.is_empty() {
        return Err(ApiError::invalid("contacts", "give at least one contact: {\"phone\": \"+14155551234\", \"name\": \"…\"}"));
    }
    if contacts.len() > MAX_CONTACTS {
        return Err(ApiError::invalid("contacts", format!("has {} contacts; a campaign calls at most {MAX_CONTACTS}: split the list into several campaigns", contacts.len())));
    }
    let record = state.store.assistant(&auth.workspace_id, &campaign.assistant_id).await?.ok_or_else(|| ApiError::not_found("assistant", &campaign.assistant_id).with_field("assistant_id"))?;
    let assistant = from_stored(&record.id, record.current_version, &record.spec)?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows = Vec::with_capacity(contacts.len());
    for (i, contact) in contacts.into_iter().enumerate() {
        let line = contact.line;
        let row = check_contact(state, &assistant, i, contact, &mut seen).map_err(|e| match line {
            Some(line) => csv_error(e, line),
            None => e,
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// One contact (the `i`th) as a row to store; `seen` holds the numbers before it.
fn check_contact(state: &AppState, assistant: &crate::assistant::Assistant, i: usize, contact: ContactInput, seen: &mut BTreeMap<String, usize>) -> Result<ContactRow, ApiError> {
    let declared = |name: &str| assistant.spec.accept_any_variables || assistant.spec.variables.contains_key(name);
    let at = |field: &str| format!("contacts[{i}].{field}");
    let (phone, info) = valid_number(&at("phone"), &contact.phone, None)?;
    let timezone = match contact.timezone {
        Some(zone) => {
            zone.parse::<chrono_tz::Tz>().map_err(|_| ApiError::invalid(at("timezone"), format!("`{}` is not an IANA time zone, e.g. America/Chicago", crate::assistant::check::clip(&zone))))?;
            Some(zone)
        }
        None => info.timezone.clone(),
    };
    let info = with_telephony(info, state.can_dial_out());
    if !info.callable {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "number_not_callable", format!("{phone}: {}", info.reason.unwrap_or_default())).with_field(at("phone")));
    }
    if let Some(first) = seen.insert(phone.clone(), i) {
        return Err(ApiError::invalid(at("phone"), format!("{phone} is contacts[{first}]'s number too: list each number once")));
    }
    if let Some(name) = &contact.name {
        printable(&at("name"), name, 200)?;
    }
    if let Some(email) = &contact.email {
        printable(&at("email"), email, 254)?;
        if !email.contains('@') {
            return Err(ApiError::invalid(at("email"), format!("`{email}` is not an email address")));
        }
    }
    if contact.custom_fields.len() > MAX_CUSTOM_FIELDS {
        return Err(ApiError::invalid(at("custom_fields"), format!("has {} fields; the most is {MAX_CUSTOM_FIELDS}", contact.custom_fields.len())));
    }
    // The assistant's variables among the contact's fields go to the call.
    let mut variables: BTreeMap<String, Value> = contact.custom_fields.iter().filter(|(name, _)| declared(name)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for (name, value) in [("name", &contact.name), ("email", &contact.email)] {
        if let Some(value) = value {
            if declared(name) {
                variables.entry(name.into()).or_insert_with(|| Value::String(value.clone()));
            }
        }
    }
    calls::call_variables(assistant, &variables).map_err(|mut e| {
        e.field = e.field.map(|f| f.replacen("dynamic_variables", &at("custom_fields"), 1));
        e
    })?;
    let (kept, field) = match contact.metadata {
        Some(metadata) => (metadata, at("metadata")),
        None => (contact.custom_fields.into_iter().collect::<Map<_, _>>(), at("custom_fields")),
    };
    let custom_fields = Value::Object(kept).to_string();
    if custom_fields.len() > 8 * 1024 {
        return Err(ApiError::invalid(field, "is more than 8 KB of JSON"));
    }
    Ok(ContactRow {
        seq: i as i64,
        phone,
        name: contact.name,
        email: contact.email,
        variables: Value::Object(variables.into_iter().collect()).to_string(),
        custom_fields,
        priority: contact.priority,
        expires_at: contact.expires_at,
        timezone,
        ..ContactRow::default()
    })
}

/// The most bytes of CSV one launch takes (the body's own limit is larger).
const MAX_CSV_BYTES: usize = 200 * 1024;

/// Contacts from CSV text (RFC 4180: quoted fields, `""` for a quote, CRLF or LF): a header
/// row naming `phone` (or `phone_number`, `mobile_number`), optionally `name` and `email`;
/// every other column is a custom field. Empty cells are left out.
fn contacts_from_csv(text: &str) -> Result<Vec<ContactInput>, ApiError> {
    if text.len() > MAX_CSV_BYTES {
        return Err(ApiError::invalid("contacts_csv", format!("is {} KB; at most {} KB: split the list into several campaigns", text.len() / 1024, MAX_CSV_BYTES / 1024)));
    }
    let rows = csv_rows(text.trim_start_matches('\u{feff}'))?;
    let mut rows = rows.into_iter().filter(|(_, cells)| cells.iter().any(|c| !c.trim().is_empty()));
    let Some((_, header)) = rows.next() else {
        return Err(ApiError::invalid("contacts_csv", "is empty: give a header row (phone, name, email, …) and a row per contact"));
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
    let phone = header.iter().position(|h| ["phone", "phone_number", "mobile_number", "to_number"].contains(&h.as_str())).ok_or_else(|| {
        ApiError::invalid("contacts_csv", format!("its header row ({}) names no `phone` column", header.join(", ")))
    })?;
    let column = |name: &str| header.iter().position(|h| h == name);
    let (name, email, zone) = (column("name"), column("email"), column("timezone"));
    if let Some(empty) = header.iter().position(|h| h.is_empty()) {
        return Err(ApiError::invalid("contacts_csv", format!("column {} of the header row has no name", empty + 1)));
    }
    let mut contacts = Vec::new();
    for (line, cells) in rows {
        if cells.len() != header.len() {
            return Err(ApiError::invalid("contacts_csv", format!("line {line} has {} cells; the header row has {}", cells.len(), header.len())));
        }
        let cell = |at: Option<usize>| at.map(|i| cells[i].trim().to_string()).filter(|c| !c.is_empty());
        let custom_fields = header
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != phone && ![name, email, zone].contains(&Some(*i)))
            .filter_map(|(i, h)| cell(Some(i)).map(|value| (h.clone(), Value::String(value))))
            .collect();
        contacts.push(ContactInput { phone: cells[phone].trim().to_string(), name: cell(name), email: cell(email), custom_fields, timezone: cell(zone), line: Some(line), ..ContactInput::default() });
    }
    if contacts.is_empty() || contacts.len() > MAX_CONTACTS {
        return Err(ApiError::invalid("contacts_csv", format!("has {} contacts; give 1 to {MAX_CONTACTS} rows after the header row", contacts.len())));
    }
    Ok(contacts)
}

/// CSV records with the line each starts on (1-based).
fn csv_rows(text: &str) -> Result<Vec<(usize, Vec<String>)>, ApiError> {
    let mut rows = Vec::new();
    let (mut cells, mut cell) = (Vec::new(), String::new());
    let (mut line, mut start, mut quoted, mut was_quoted) = (1, 1, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if cell.trim().is_empty() && !was_quoted => {
                cell.clear();
                quoted = true;
                was_quoted = true;
            }
            '"' => return Err(ApiError::invalid("contacts_csv", format!("line {line}: a quote inside an unquoted cell: quote the whole cell and double the quote"))),
            ',' if !quoted => {
                cells.push(std::mem::take(&mut cell));
                was_quoted = false;
            }
            '\r' if !quoted && chars.peek() == Some(&'\n') => {}
            '\n' if !quoted => {
                cells.push(std::mem::take(&mut cell));
                rows.push((start, std::mem::take(&mut cells)));
                was_quoted = false;
                line += 1;
                start = line;
            }
            '\n' => {
                cell.push(c);
                line += 1;
            }
            _ if was_quoted && !quoted && !c.is_whitespace() => {
                return Err(ApiError::invalid("contacts_csv", format!("line {line}: text after a quoted cell's closing quote")));
            }
            _ if was_quoted && !quoted => {}
            _ => cell.push(c),
        }
    }
    if quoted {
        return Err(ApiError::invalid("contacts_csv", format!("line {start}: a quoted cell is never closed")));
    }
    if !cell.is_empty() || !cells.is_empty() {
        cells.push(cell);
        rows.push((start, cells));
    }
    Ok(rows)
}

/// An error about `contacts[i].x` of a contact read from CSV, said of its line and column.
fn csv_error(mut error: ApiError, line: usize) -> ApiError {
    let column = error.field.as_deref().and_then(|f| f.split_once("].")).map(|(_, rest)| rest.replacen("custom_fields.", "", 1)).unwrap_or_default();
    error.message = format!("line {line}, column `{column}`: {}", error.message);
    error.field = Some("contacts_csv".into());
    error
}

/// Ringez's batches, scheduled calls and queues one workspace may have unfinished at once
/// (apart from its campaigns: an agent schedules many one-call reminders).
const MAX_OPEN_SESSION_JOBS: i64 = 100;

async fn check_quota(state: &AppState, auth: &Auth, kind: &str) -> Result<(), ApiError> {
    let campaign = kind == "campaign";
    let open = state.store.count_open_campaigns(&auth.workspace_id, "campaign", campaign).await?;
    let limit = if campaign { state.limits.campaigns_per_workspace as i64 } else { MAX_OPEN_SESSION_JOBS };
    if open >= limit {
        let what = if campaign { "campaigns" } else { "batches, scheduled calls and queues" };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "campaign_limit",
            format!("this workspace has {open} {what} not yet finished, its limit; cancel one (POST /v1/campaigns/{{id}}/cancel) or wait for one to end"),
        ));
    }
    Ok(())
}

async fn create_record(state: &AppState, campaign: &CampaignRecord) -> Result<(), ApiError> {
    if !state.store.insert_campaign(campaign).await? {
        return Err(ApiError::conflict("campaign_exists", format!("this workspace has a campaign `{}` already; choose another campaign_id", campaign.id)).with_field("campaign_id"));
    }
    Ok(())
}

// ── handlers ──────────────────────────────────────────────────────────────────────────────

pub async fn create(State(state): State<AppState>, auth: Auth, ApiJson(request): ApiJson<CreateCampaign>) -> Result<impl IntoResponse, ApiError> {
    let campaign = check_campaign(&state, &auth, request).await?;
    check_quota(&state, &auth, &campaign.kind).await?;
    create_record(&state, &campaign).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &campaign, None).await?)))
}

/// A launch: `contacts` and a `schedule` for the campaign `campaign_id` names, or for one the
/// body's other fields make (those of `POST /v1/campaigns`).
pub async fn launch(State(state): State<AppState>, auth: Auth, ApiJson(mut body): ApiJson<Map<String, Value>>) -> Result<impl IntoResponse, ApiError> {
    let now = store::now_ms();
    let csv = body.remove("contacts_csv");
    let listed = body.remove("contacts");
    let contacts: Vec<ContactInput> = match (listed, csv) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("contacts_csv", "give contacts or contacts_csv, not both")),
        (None, Some(Value::String(text))) => contacts_from_csv(&text)?,
        (None, Some(_)) => return Err(ApiError::invalid("contacts_csv", "must be CSV text: a header row (phone, name, email, then any fields), a row per contact")),
        (listed, None) => from_value_at("contacts", listed.unwrap_or_else(|| json!([])))?,
    };
    let schedule: Option<Schedule> = from_value_at("schedule", body.remove("schedule").unwrap_or(Value::Null))?;
    let settings: CreateCampaign = from_value_at("", Value::Object(body))?;
    let existing = match &settings.campaign_id {
        Some(id) => state.store.campaign(&auth.workspace_id, id).await?,
        None => None,
    };
    let (campaign, new) = match existing {
        Some(campaign) => {
            let given = [
                ("assistant_id", settings.assistant_id.is_some()),
                ("name", settings.name.is_some()),
                ("from_number", settings.from_number.is_some()),
                ("from_number_id", settings.from_number_id.is_some()),
                ("concurrency", settings.concurrency.is_some()),
                ("retry", settings.retry.is_some()),
                ("webhook_url", settings.webhook_url.is_some()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, given)| *given) {
                return Err(ApiError::invalid(*field, format!("campaign `{}` exists and was set when it was created: launch it with campaign_id, contacts and schedule only", campaign.id)));
            }
            if campaign.state != "draft" {
                return Err(ApiError::conflict("campaign_launched", format!("campaign `{}` is {}, launched {}: create another campaign for more contacts", campaign.id, campaign.state, campaign.launched_at.map(rfc3339).unwrap_or_default())).with_field("campaign_id"));
            }
            (campaign, false)
        }
        None if settings.assistant_id.is_none() => {
            let message = match settings.campaign_id.as_deref() {
                None => "give campaign_id (a campaign made with POST /v1/campaigns) or assistant_id to create one and launch it".to_string(),
                Some(id) => format!("no campaign `{id}` in this workspace: create it with POST /v1/campaigns, or give assistant_id to create and launch it in one request"),
            };
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", message).with_field("campaign_id"));
        }
        None => (check_campaign(&state, &auth, settings).await?, true),
    };
    let launched = launch_checked(&state, &auth, campaign, new, schedule, contacts, now).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &launched, None).await?)))
}

/// A campaign of another kind made and launched in one request (Ringez's batches, scheduled
/// calls and queues): `request` as `POST /v1/campaigns` takes it, then `with` sets what that
/// kind adds (its session, agent, dialect, call settings).
pub async fn launch_new(
    state: &AppState,
    auth: &Auth,
    request: CreateCampaign,
    with: impl FnOnce(&mut CampaignRecord),
    schedule: Schedule,
    contacts: Vec<ContactInput>,
) -> Result<CampaignRecord, ApiError> {
    let mut campaign = check_campaign(state, auth, request).await?;
    with(&mut campaign);
    launch_checked(state, auth, campaign, true, Some(schedule), contacts, store::now_ms()).await
}

/// Checks a launch's schedule and contacts, stores the campaign when `new`, and launches it.
async fn launch_checked(
    state: &AppState,
    auth: &Auth,
    campaign: CampaignRecord,
    new: bool,
    schedule: Option<Schedule>,
    contacts: Vec<ContactInput>,
    now: i64,
) -> Result<CampaignRecord, ApiError> {
    let schedule = check_schedule(schedule, now)?;
    let contacts = check_contacts(state, auth, &campaign, contacts).await?;
    let launched = state.store.count_contacts_launched_since(&auth.workspace_id, now - 86_400_000).await?;
    if launched + contacts.len() as i64 > MAX_CONTACTS_A_DAY {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "campaign_contact_limit",
            format!("this workspace launched {launched} contacts in the last 24 hours; with these {} it would pass its limit of {MAX_CONTACTS_A_DAY} a day: launch them later", contacts.len()),
        );
        error.retry_after_s = Some(3600);
        return Err(error);
    }
    if new {
        check_quota(state, auth, &campaign.kind).await?;
        create_record(state, &campaign).await?;
    }
    if !state.store.launch_campaign(&auth.workspace_id, &campaign.id, &schedule, &contacts, now).await? {
        return Err(ApiError::conflict("campaign_launched", format!("campaign `{}` was launched or canceled meanwhile", campaign.id)).with_field("campaign_id"));
    }
    wake().notify_one();
    state.store.campaign(&auth.workspace_id, &campaign.id).await?.ok_or_else(|| ApiError::internal("the campaign vanished"))
}

pub async fn list(State(state): State<AppState>, auth: Auth, ApiQuery(page): ApiQuery<Page>) -> Result<Json<Value>, ApiError> {
    let (limit, offset) = page.resolve()?;
    let (rows, total) = state.store.campaigns(&auth.workspace_id, limit, offset).await?;
    let mut campaigns = Vec::with_capacity(rows.len());
    for campaign in &rows {
        campaigns.push(view(&state, campaign, None).await?);
    }
    Ok(Json(json!({ "campaigns": campaigns, "total": total, "limit": limit, "offset": offset, "has_more": offset + (rows.len() as i64) < total })))
}

pub async fn status(State(state): State<AppState>, auth: Auth, Path(id): Path<String>, ApiQuery(page): ApiQuery<Page>) -> Result<Json<Value>, ApiError> {
    let page = page.resolve()?;
    let campaign = state.store.campaign(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("campaign", &id))?;
    Ok(Json(view(&state, &campaign, Some(page)).await?))
}

pub async fn cancel(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let campaign = state.store.campaign(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("campaign", &id))?;
    let canceled = cancel_campaign(&state, campaign, "the campaign was canceled before this contact was called").await?;
    Ok(Json(view(&state, &canceled, None).await?))
}

/// Cancels a campaign not yet ended: its pending contacts are done with `reason` (calls in
/// progress go on); a launched one says `campaign.completed`.
pub async fn cancel_campaign(state: &AppState, campaign: CampaignRecord, reason: &str) -> Result<CampaignRecord, ApiError> {
    let (ws, id) = (campaign.workspace_id.clone(), campaign.id.clone());
    if !state.store.move_campaign(&ws, &id, &["draft", "scheduled", "running", "paused"], "canceled", store::now_ms()).await? {
        return Err(ApiError::conflict("campaign_ended", format!("campaign `{id}` is {} already", campaign.state)));
    }
    state.store.close_pending_contacts(&ws, &id, None, "canceled", reason).await?;
    let canceled = state.store.campaign(&ws, &id).await?.unwrap_or(campaign);
    if canceled.launched_at.is_some() {
        let body = view(state, &canceled, None).await?;
        emit_campaign(&state.store, &ws, canceled.webhook_url.as_deref(), "campaign.completed", body).await;
    }
    Ok(canceled)
}

/// Stops placing calls (those in progress go on) until resumed.
pub async fn pause(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let campaign = state.store.campaign(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("campaign", &id))?;
    if !state.store.move_campaign(&auth.workspace_id, &id, &["scheduled", "running"], "paused", store::now_ms()).await? {
        return Err(ApiError::conflict("campaign_not_calling", format!("campaign `{id}` is {}: only a scheduled or running campaign pauses", campaign.state)));
    }
    let paused = state.store.campaign(&auth.workspace_id, &id).await?.unwrap_or(campaign);
    Ok(Json(view(&state, &paused, None).await?))
}

/// Places calls again: running if it had started, else scheduled.
pub async fn resume(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let campaign = state.store.campaign(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("campaign", &id))?;
    let to = if campaign.started_at.is_some() { "running" } else { "scheduled" };
    if !state.store.move_campaign(&auth.workspace_id, &id, &["paused"], to, store::now_ms()).await? {
        return Err(ApiError::conflict("campaign_not_paused", format!("campaign `{id}` is {}, not paused", campaign.state)));
    }
    wake().notify_one();
    let resumed = state.store.campaign(&auth.workspace_id, &id).await?.unwrap_or(campaign);
    Ok(Json(view(&state, &resumed, None).await?))
}

/// What a contact's row says now: `pending` (again, once a call it will be retried after
/// ended), `in-progress` while its call is live, else its call's status (`completed`,
/// `no-answer`…), `skipped` or `canceled`.
fn contact_status(row_state: &str, outcome: Option<&str>, call_status: Option<&str>, retry_left: bool) -> String {
    match row_state {
        "pending" => "pending".into(),
        "dialing" => match call_status {
            Some(status) if RETRIED.contains(&status) && retry_left => "pending".into(),
            Some(status) if !store::LIVE_STATUSES.contains(&status) => status.into(),
            _ => "in-progress".into(),
        },
        _ => outcome.unwrap_or("failed").into(),
    }
}

/// A campaign as the API shows it; with a page of its contacts when `page` is given.
async fn view(state: &AppState, campaign: &CampaignRecord, page: Option<(i64, i64)>) -> Result<Value, ApiError> {
    let tally = state.store.campaign_tally(&campaign.workspace_id, &campaign.id, campaign.max_attempts).await?;
    let mut counts: BTreeMap<String, i64> = ["pending", "in-progress", "completed", "no-answer", "busy", "failed", "canceled", "skipped"].iter().map(|s| (s.to_string(), 0)).collect();
    for (row_state, outcome, call_status, retry_left, count) in &tally {
        *counts.entry(contact_status(row_state, outcome.as_deref(), call_status.as_deref(), *retry_left == 1)).or_default() += count;
    }
    let total: i64 = tally.iter().map(|(.., count)| count).sum();
    let done = total - counts["pending"] - counts["in-progress"];
    let mut body = json!({
        "campaign_id": campaign.id,
        "id": campaign.id,
        "kind": campaign.kind,
        "name": campaign.name,
        "status": campaign.state,
        "session_id": campaign.session_id,
        "assistant_id": campaign.assistant_id,
        "agent_id": campaign.assistant_id,
        "from_number": campaign.from_number,
        "concurrency": campaign.concurrency,
        "retry": { "max_attempts": campaign.max_attempts, "interval_s": campaign.retry_interval_ms / 1000 },
        "webhook_url": campaign.webhook_url,
        "schedule": {
            "start_time": campaign.start_at.map(rfc3339),
            "end_time": campaign.end_at.map(rfc3339),
            "timezone": campaign.timezone,
            "calling_hours": campaign.hours_start.zip(campaign.hours_end).map(|(start, end)| json!({ "start": hh_mm(start), "end": hh_mm(end) })),
        },
        "total_contacts": total,
        "counts": counts,
        "progress": { "done": done, "total": total, "percent": if total > 0 { (done * 100) / total } else { 0 } },
        "created_at": rfc3339(campaign.created_at),
        "launched_at": campaign.launched_at.map(rfc3339),
        "started_at": campaign.started_at.map(rfc3339),
        "ended_at": campaign.ended_at.map(rfc3339),
    });
    if let Some((limit, offset)) = page {
        let rows = state.store.campaign_contacts(&campaign.workspace_id, &campaign.id, limit, offset).await?;
        let contacts: Vec<Value> = rows
            .iter()
            .map(|ContactWithCall { contact: c, call_status }| {
                json!({
                    "index": c.seq,
                    "phone": c.phone,
                    "name": c.name,
                    "email": c.email,
                    "custom_fields": serde_json::from_str::<Value>(&c.custom_fields).unwrap_or(Value::Null),
                    "status": contact_status(&c.state, c.outcome.as_deref(), call_status.as_deref(), c.attempts < campaign.max_attempts),
                    "attempts": c.attempts,
                    "call_id": c.call_id,
                    "reason": c.reason,
                    "next_attempt_at": (c.state == "pending").then(|| rfc3339(c.next_attempt_at)),
                    "timezone": c.timezone,
                })
            })
            .collect();
        body["contacts"] = json!(contacts);
        body["limit"] = json!(limit);
        body["offset"] = json!(offset);
        body["has_more"] = json!(offset + (rows.len() as i64) < total);
    }
    Ok(body)
}

// ── the driver ────────────────────────────────────────────────────────────────────────────

/// Wakes this worker's driver (a campaign was launched).
fn wake() -> &'static tokio::sync::Notify {
    static WAKE: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    WAKE.get_or_init(tokio::sync::Notify::new)
}

/// Drives every due campaign this worker can lease, each second (sooner after a launch), until
/// shutdown.
pub async fn drive(state: AppState, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
            _ = wake().notified() => {}
        }
        if let Err(error) = drive_once(&state).await {
            tracing::warn!(%error, "campaigns: a pass failed; trying again shortly");
        }
    }
}

async fn drive_once(state: &AppState) -> Result<(), store::StoreError> {
    let now = store::now_ms();
    for campaign in state.store.due_campaigns(&state.worker_id, now, CAMPAIGNS_A_PASS).await? {
        if !state.store.lease_campaign(&campaign, &state.worker_id, now, now + LEASE_MS).await? {
            continue;
        }
        // One campaign's trouble (a row it cannot write) does not hold up the others.
        let _stepping = stepping().lock().await;
        if let Err(error) = step(state, &campaign, now).await {
            tracing::warn!(%error, campaign = %campaign.id, workspace = %campaign.workspace_id, "campaigns: a step failed; trying again next pass");
        }
    }
    Ok(())
}

/// Steps a campaign this worker just launched at once, when its lease is free: its first calls
/// are placed before the launch answers (a Ringez batch's answer names them).
pub async fn step_now(state: &AppState, campaign: &CampaignRecord) -> Result<(), store::StoreError> {
    let now = store::now_ms();
    let _stepping = stepping().lock().await;
    if campaign.start_at.is_some_and(|start| start > now) || !state.store.lease_campaign(campaign, &state.worker_id, now, now + LEASE_MS).await? {
        return Ok(());
    }
    step(state, campaign, now).await
}

/// Held while this worker steps a campaign: the lease keeps other workers out, this keeps the
/// driver and [`step_now`] from stepping one campaign at once here (both would count the same
/// calls in progress and claim past the concurrency).
fn stepping() -> &'static tokio::sync::Mutex<()> {
    static STEPPING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    &STEPPING
}

/// Statuses after which a contact is called again while it has attempts left.
const RETRIED: [&str; 3] = ["no-answer", "busy", "failed"];

/// Whether a contact whose call ended with `status` after `attempts` calls is called again.
pub fn will_retry(campaign: &CampaignRecord, status: &str, attempts: i64) -> bool {
    RETRIED.contains(&status) && attempts < campaign.max_attempts
}

/// One pass over a leased campaign: settle, close, dial, finish.
async fn step(state: &AppState, campaign: &CampaignRecord, now: i64) -> Result<(), store::StoreError> {
    let (ws, id) = (campaign.workspace_id.as_str(), campaign.id.as_str());
    let mut live = 0i64;
    for dialing in state.store.dialing_contacts(ws, id).await? {
        let Some(_) = dialing.call_id else {
            if dialing.claimed_at.is_some_and(|at| at < now - STALE_CLAIM_MS) {
                state.store.contact_again(ws, id, dialing.seq, now, None, None).await?;
            } else {
                live += 1;
            }
            continue;
        };
        match dialing.call_status.as_deref() {
            None => state.store.contact_done(ws, id, dialing.seq, "failed", Some("the call was deleted")).await?,
            Some(status) if store::LIVE_STATUSES.contains(&status) => live += 1,
            Some(status) if will_retry(campaign, status, dialing.attempts) => {
                state.store.contact_again(ws, id, dialing.seq, now + campaign.retry_interval_ms, Some(status), dialing.call_reason.as_deref()).await?
            }
            Some(status) => state.store.contact_done(ws, id, dialing.seq, status, dialing.call_reason.as_deref()).await?,
        }
    }
    if campaign.end_at.is_some_and(|end| end <= now) {
        state.store.close_pending_contacts(ws, id, None, "skipped", "the schedule ended before this contact was called").await?;
    }
    if campaign.kind == "queue" {
        state.store.close_pending_contacts(ws, id, Some(now), "skipped", "waited past its max_wait_time without being called").await?;
    }
    let auth = Auth { workspace_id: ws.to_string(), key_id: format!("campaign:{id}") };
    let settings: CallSettings = campaign.call_settings.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
    let mut started = campaign.state == "running";
    // A session's queues are one queue: its calls in progress from every `queue/add` count
    // against the limit, and a higher priority due in another goes first.
    let session_queue = campaign.session_id.as_deref().filter(|_| campaign.kind == "queue");
    if let Some(session_id) = session_queue {
        live += state.store.session_queue_calls(ws, session_id, id).await?;
    }
    while live < campaign.concurrency {
        let Some(contact) = state.store.next_due_contact(ws, id, now).await? else { break };
        if let Some(session_id) = session_queue {
            if state.store.session_queue_outranks(ws, session_id, id, contact.priority, now).await? {
                break;
            }
        }
        // Outside its calling hours (its own local time), a contact waits for them to open.
        let opens = next_calling_time(campaign, contact.timezone.as_deref(), now);
        if opens > now {
            state.store.defer_contact(ws, id, contact.seq, opens).await?;
            continue;
        }
        if !state.store.claim_contact(ws, id, contact.seq, now).await? {
            break;
        }
        if let Some(session_id) = &campaign.session_id {
            // The session's budget and consent hold for every call, as for one it places itself.
            if let Err(refused) = super::ringez::session_may_call(state, ws, session_id, &contact.phone).await {
                if refused.code == "session_ended" {
                    state.store.contact_done(ws, id, contact.seq, "canceled", Some(&refused.message)).await?;
                    state.store.close_pending_contacts(ws, id, None, "canceled", &refused.message).await?;
                    break;
                }
                state.store.contact_done(ws, id, contact.seq, "skipped", Some(&refused.message)).await?;
                continue;
            }
        }
        let fields = serde_json::from_str::<Value>(&contact.custom_fields).unwrap_or(Value::Null);
        let mut metadata = match (&campaign.dialect, fields) {
            // A Ringez call's metadata is what its request gave.
            (Some(_), Value::Object(given)) => Value::Object(given),
            (_, fields) => json!({ "contact": { "index": contact.seq, "name": contact.name, "email": contact.email, "custom_fields": fields } }),
        };
        metadata["campaign_id"] = json!(id);
        for (key, value) in settings.metadata.iter().flatten() {
            metadata[key] = value.clone();
        }
        let request = OutboundRequest {
            assistant_id: campaign.assistant_id.clone(),
            to_number: contact.phone.clone(),
            from_number: campaign.from_number.clone(),
            dynamic_variables: serde_json::from_str(&contact.variables).unwrap_or_default(),
            webhook_url: campaign.webhook_url.clone(),
            metadata,
            idempotency_key: None,
            record: settings.record,
        };
        let placement = Placement {
            session_id: campaign.session_id.clone(),
            agent_id: campaign.agent_id.clone(),
            dialect: campaign.dialect.clone(),
            max_duration_s: settings.max_duration_s,
            campaign_id: Some(id.to_string()),
            ..Placement::default()
        };
        match calls::place(state, &auth, request, placement).await {
            Ok(placed) => {
                state.store.contact_called(ws, id, contact.seq, &placed.call().id).await?;
                live += 1;
                if !started && state.store.move_campaign(ws, id, &["scheduled"], "running", now).await? {
                    let running = state.store.campaign(ws, id).await?.unwrap_or_else(|| campaign.clone());
                    let body = view(state, &running, None).await.unwrap_or(Value::Null);
                    emit_campaign(&state.store, ws, campaign.webhook_url.as_deref(), "campaign.started", body).await;
                }
                started = true;
            }
            Err(refused) if refused.status == StatusCode::TOO_MANY_REQUESTS => {
                // A limit (the workspace's calls, the server's capacity): the contact waits.
                let wait = refused.retry_after_s.unwrap_or(5).max(1) as i64 * 1000;
                state.store.contact_again(ws, id, contact.seq, now + wait, None, None).await?;
                break;
            }
            Err(refused) => {
                let reason = format!("the call could not be placed: {}", refused.message);
                state.store.contact_done(ws, id, contact.seq, "failed", Some(&reason)).await?;
            }
        }
    }
    let tally = state.store.campaign_tally(ws, id, campaign.max_attempts).await?;
    if tally.iter().all(|(row_state, ..)| row_state == "done") && state.store.move_campaign(ws, id, &["scheduled", "running"], "completed", store::now_ms()).await? {
        let finished = state.store.campaign(ws, id).await?.unwrap_or_else(|| campaign.clone());
        let body = view(state, &finished, None).await.unwrap_or(Value::Null);
        emit_campaign(&state.store, ws, campaign.webhook_url.as_deref(), "campaign.completed", body).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_times_take_an_offset_or_the_zone() {
        let kolkata: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
        let with_offset = schedule_time("f", "2026-02-07T09:00:00+05:30", None).unwrap();
        assert_eq!(schedule_time("f", "2026-02-07T09:00:00", Some(kolkata)).unwrap(), with_offset);
        assert_eq!(with_offset, chrono::DateTime::parse_from_rfc3339("2026-02-07T03:30:00Z").unwrap().timestamp_millis());
        let error = schedule_time("schedule.start_time", "2026-02-07T09:00:00", None).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("schedule.start_time"));
        assert!(error.message.contains("timezone"), "{}", error.message);
        // 02:30 on the day New York's clocks skip from 02:00 to 03:00 does not exist there.
        let new_york: chrono_tz::Tz = "America/New_York".parse().unwrap();
        assert!(schedule_time("f", "2026-03-08T02:30:00", Some(new_york)).is_err());
        assert!(schedule_time("f", "tomorrow", Some(new_york)).is_err());
    }

    #[test]
    fn a_schedule_must_end_after_it_starts_and_after_now() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-02-07T00:00:00Z").unwrap().timestamp_millis();
        let schedule = |start: Option<&str>, end: Option<&str>, zone: Option<&str>| Schedule { start_time: start.map(Into::into), end_time: end.map(Into::into), timezone: zone.map(Into::into), calling_hours: None };
        let checked = check_schedule(Some(schedule(Some("2026-02-07T09:00:00"), Some("2026-02-07T18:00:00"), Some("Asia/Kolkata"))), now).unwrap();
        assert_eq!(checked.end_at.unwrap() - checked.start_at.unwrap(), 9 * 3_600_000);
        assert_eq!(checked.timezone.as_deref(), Some("Asia/Kolkata"));
        let field = |s| check_schedule(Some(s), now).unwrap_err().field.unwrap();
        assert_eq!(field(schedule(None, Some("2026-02-06T18:00:00Z"), None)), "schedule.end_time");
        assert_eq!(field(schedule(Some("2026-02-08T10:00:00Z"), Some("2026-02-08T09:00:00Z"), None)), "schedule.end_time");
        assert_eq!(field(schedule(None, None, Some("Mars/Olympus"))), "schedule.timezone");
        assert_eq!(field(schedule(Some("2028-02-08T10:00:00Z"), None, None)), "schedule.start_time");
        assert_eq!(check_schedule(None, now).unwrap(), CampaignSchedule::default());

        let hours = |zone: Option<&str>, start: &str, end: &str| Schedule { calling_hours: Some(CallingHours { start: start.into(), end: end.into() }), ..schedule(None, None, zone) };
        assert_eq!(check_schedule(Some(hours(Some("Asia/Kolkata"), "09:00", "18:30")), now).unwrap().hours, Some((540, 1110)));
        assert_eq!(field(hours(None, "09:00", "18:00")), "schedule.timezone");
        assert_eq!(field(hours(Some("UTC"), "9am", "18:00")), "schedule.calling_hours.start");
        assert_eq!(field(hours(Some("UTC"), "18:00", "09:00")), "schedule.calling_hours.end");
    }

    #[test]
    fn calling_hours_are_the_contacts_local_time_else_the_campaigns() {
        let campaign = CampaignRecord { timezone: Some("Asia/Kolkata".into()), hours_start: Some(9 * 60), hours_end: Some(18 * 60), ..CampaignRecord::default() };
        let at = |utc: &str| chrono::DateTime::parse_from_rfc3339(utc).unwrap().timestamp_millis();
        let next = |zone: Option<&str>, now: &str| next_calling_time(&campaign, zone, at(now));
        assert_eq!(next(None, "2026-02-07T03:29:00Z"), at("2026-02-07T03:30:00Z"), "08:59 in Kolkata: at 09:00");
        assert_eq!(next(None, "2026-02-07T03:30:00Z"), at("2026-02-07T03:30:00Z"), "09:00 in Kolkata: now");
        assert_eq!(next(None, "2026-02-07T12:29:00Z"), at("2026-02-07T12:29:00Z"), "17:59 in Kolkata: now");
        assert_eq!(next(None, "2026-02-07T12:30:00Z"), at("2026-02-08T03:30:00Z"), "18:00 in Kolkata: tomorrow at 09:00");
        // The same moment is 09:30 in Kolkata and 23:00 in New York, whose contact waits.
        assert_eq!(next(Some("America/New_York"), "2026-02-07T04:00:00Z"), at("2026-02-07T14:00:00Z"), "09:00 in New York");
        assert_eq!(next(Some("America/New_York"), "2026-02-07T15:00:00Z"), at("2026-02-07T15:00:00Z"), "10:00 in New York: now");
        // New York's clocks skip 02:00 to 03:00 on 8 March 2026: hours opening at 02:30 open at 03:30.
        let early = CampaignRecord { timezone: Some("America/New_York".into()), hours_start: Some(150), hours_end: Some(300), ..CampaignRecord::default() };
        assert_eq!(next_calling_time(&early, None, at("2026-03-08T05:00:00Z")), at("2026-03-08T07:30:00Z"));
        assert_eq!(next_calling_time(&CampaignRecord::default(), None, 42), 42, "no hours: always");
    }

    #[test]
    fn contacts_read_from_csv_with_quotes_and_their_lines() {
        let text = "\u{feff}Phone,Name,email,policy_number,note\r\n+15005550006,\"Dana, Jr.\",dana@example.com,P-1,\"said \"\"call later\"\"\"\r\n\r\n+15005550007,Eve,,P-2,\"two\nlines\"\n+15005550008,Bo,,,\n";
        let contacts = contacts_from_csv(text).unwrap();
        assert_eq!(contacts.len(), 3);
        assert_eq!((contacts[0].phone.as_str(), contacts[0].name.as_deref(), contacts[0].email.as_deref()), ("+15005550006", Some("Dana, Jr."), Some("dana@example.com")));
        assert_eq!(contacts[0].custom_fields["note"], "said \"call later\"");
        assert_eq!((contacts[1].email.as_deref(), contacts[1].custom_fields["note"].as_str()), (None, Some("two\nlines")));
        assert_eq!(contacts.iter().map(|c| c.line).collect::<Vec<_>>(), vec![Some(2), Some(4), Some(6)], "lines as a spreadsheet numbers them");
        assert!(contacts[2].custom_fields.is_empty(), "empty cells are left out");
        let zoned = contacts_from_csv("phone,TimeZone,plan\n+15005550006,America/Chicago,gold\n").unwrap();
        assert_eq!((zoned[0].timezone.as_deref(), zoned[0].custom_fields.len()), (Some("America/Chicago"), 1), "a timezone column is the contact's zone, not a field");

        let error = |text: &str| contacts_from_csv(text).err().map(|e| (e.field.unwrap_or_default(), e.message)).unwrap();
        assert!(error("name,email\nDana,d@x.io\n").1.contains("no `phone` column"));
        assert!(error("phone,name\n+15005550006\n").1.contains("line 2 has 1 cells"));
        assert!(error("phone,name\n+15005550006,\"Dana\n").1.contains("never closed"));
        assert!(error("phone,name\n+15005550006,Da\"na\n").1.contains("line 2"));
        assert!(error("phone,name\n").1.contains("has 0 contacts"));
        assert_eq!(error("").0, "contacts_csv");
        // A contact's own error, said of its line and column.
        let named = csv_error(ApiError::invalid("contacts[1].custom_fields.customer_name", "is required"), 3);
        assert_eq!((named.field.as_deref(), named.message.as_str()), (Some("contacts_csv"), "line 3, column `customer_name`: is required"));
    }

    #[test]
    fn a_contact_reads_as_its_calls_status_once_the_call_ends() {
        assert_eq!(contact_status("pending", None, None, true), "pending");
        assert_eq!(contact_status("dialing", None, None, true), "in-progress");
        assert_eq!(contact_status("dialing", None, Some("ringing"), true), "in-progress");
        assert_eq!(contact_status("dialing", None, Some("busy"), false), "busy");
        assert_eq!(contact_status("dialing", None, Some("busy"), true), "pending", "it will be called again");
        assert_eq!(contact_status("dialing", None, Some("completed"), true), "completed");
        assert_eq!(contact_status("done", Some("no-answer"), None, false), "no-answer");
        assert_eq!(contact_status("done", Some("skipped"), None, true), "skipped");
    }
}
