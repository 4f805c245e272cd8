//! Conformance with the Ringg and Ringez API references: every request example in them, sent
//! as written to `ringline serve` (SQLite, `--sandbox-line` so the examples' real-looking
//! numbers reach the simulated line), answers with the documented status and every documented
//! response field, of the documented type.
//!
//! What is substituted, and only that: ids the examples invent (`asst_abc123`, `call_xyz789`)
//! become the ids this server gave; the examples' receiver URLs (`*.example.com`) become a
//! receiver on loopback, since nothing else can be reached here; dates the examples put in
//! the past where a request needs a future (a history's end, a campaign's schedule) move ahead.
//!
//! [`OPERATIONS`] is the table of every documented operation with its support; the README's
//! table is rendered from it (`the_readme_table_is_rendered_from_the_suite`), and each dialect's
//! test checks that it exercised every operation the table calls supported or partial.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{create_key, repo_assistants, Database, Serve};
use crate::webhooks::Receiver;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Support {
    Full,
    /// Works; what differs is in the note.
    Partial,
    /// Answers 501 naming what to use instead.
    NotYet,
}

struct Operation {
    document: &'static str,
    method: &'static str,
    path: &'static str,
    support: Support,
    note: &'static str,
}

const RINGG: &str = "Ringg API reference";
const RINGG_OVERVIEW: &str = "Ringg overview";
const RINGEZ: &str = "Ringez agent API";
const RINGEZ_SKILL: &str = "Ringez calling skill";

const fn op(document: &'static str, method: &'static str, path: &'static str, support: Support, note: &'static str) -> Operation {
    Operation { document, method, path, support, note }
}

/// Every operation the references document, as this server answers it.
const OPERATIONS: &[Operation] = &[
    op(RINGG, "GET", "/v1/workspace", Support::Full, "plan is `self-hosted`: the server's limits; usage counts this month's calls and minutes"),
    op(RINGG, "GET", "/v1/assistants", Support::Full, ""),
    op(RINGG, "GET", "/v1/assistants/{id}", Support::Full, ""),
    op(RINGG, "POST", "/v1/assistants", Support::Full, "`female-*` voices are espeak-ng's until a female Piper voice is in the model store"),
    op(RINGG, "PATCH", "/v1/assistants/{id}", Support::Full, ""),
    op(RINGG, "GET", "/v1/numbers", Support::Full, ""),
    op(RINGG, "POST", "/v1/numbers/{id}/assign", Support::Full, ""),
    op(RINGG, "POST", "/v1/calls/outbound", Support::Full, "numbers outside the sandbox need Twilio, or `serve --sandbox-line`"),
    op(RINGG, "GET", "/v1/calls/{id}/status", Support::Full, ""),
    op(RINGG, "GET", "/v1/calls/{id}/transcript", Support::Full, ""),
    op(RINGG, "POST", "/v1/calls/{id}/end", Support::Full, ""),
    op(RINGG, "GET", "/v1/campaigns", Support::Full, ""),
    op(RINGG, "POST", "/v1/campaigns/launch", Support::Partial, "`campaign_id` names a campaign made with `POST /v1/campaigns` (its assistant, caller id, calls at once, retries), or the body gives `assistant_id` to make it"),
    op(RINGG, "GET", "/v1/campaigns/{id}/status", Support::Full, ""),
    op(RINGG, "GET", "/v1/calls/history", Support::Full, ""),
    op(RINGG, "GET", "/v1/analytics", Support::Full, ""),
    op(RINGG, "POST", "/v1/webhooks", Support::Full, ""),
    op(RINGG, "GET", "/v1/webhooks", Support::Full, ""),
    op(RINGG, "DELETE", "/v1/webhooks/{id}", Support::Full, ""),
    op(RINGG, "POST", "/v1/webcall/token", Support::Full, ""),
    op(RINGG_OVERVIEW, "GET", "/v1/agent/all", Support::Full, "agents are assistants"),
    op(RINGG_OVERVIEW, "GET", "/v1/workspace/numbers", Support::Full, "`from_number_id` is a number's id"),
    op(RINGG_OVERVIEW, "POST", "/v1/calling/outbound/individual", Support::Full, "`agent_id`, `from_number_id`, `mobile_number`, `custom_args_values`"),
    op(RINGEZ, "POST", "/api/v1/sessions/create", Support::Partial, "no wallet: a session's balance is its `max_spend_limit` less what it spent"),
    op(RINGEZ, "GET", "/api/v1/sessions/{id}", Support::Full, ""),
    op(RINGEZ, "DELETE", "/api/v1/sessions/{id}", Support::Full, "clears the session's ended calls"),
    op(RINGEZ, "POST", "/api/v1/wallet/add-credits", Support::NotYet, "no payments on a self-hosted server (501)"),
    op(RINGEZ, "GET", "/api/v1/wallet/balance", Support::Partial, "the session's budget"),
    op(RINGEZ, "POST", "/api/v1/calls/initiate", Support::Full, "direct mode talks with `call_for_user` unless `assistant_id` is given; bridge mode needs the user's phone"),
    op(RINGEZ, "GET", "/api/v1/calls/{id}", Support::Partial, "`quality_metrics` are null: the lines here measure no MOS or loss"),
    op(RINGEZ, "POST", "/api/v1/calls/{id}/actions", Support::Full, "dtmf (with `w` pauses), hold, unhold, transfer, hangup"),
    op(RINGEZ, "DELETE", "/api/v1/calls/{id}", Support::Full, ""),
    op(RINGEZ, "GET", "/api/v1/calls/history", Support::Full, ""),
    op(RINGEZ, "POST", "/api/v1/contacts", Support::Full, ""),
    op(RINGEZ, "GET", "/api/v1/contacts", Support::Full, ""),
    op(RINGEZ, "GET", "/api/v1/contacts/{id}", Support::Full, ""),
    op(RINGEZ, "PUT", "/api/v1/contacts/{id}", Support::Full, ""),
    op(RINGEZ, "DELETE", "/api/v1/contacts/{id}", Support::Full, ""),
    op(RINGEZ, "POST", "/api/v1/numbers/validate", Support::Partial, "`carrier` is null: no carrier database"),
    op(RINGEZ, "GET", "/api/v1/numbers/rates", Support::Full, "Ringline's built-in rate table"),
    op(RINGEZ, "POST", "/api/v1/calls/{id}/transcribe", Support::Partial, "live lines as server-sent events (`events_url`), not a WebSocket"),
    op(RINGEZ, "GET", "/api/v1/transcripts/{id}", Support::Partial, "`confidence` is null on the agent's lines (its words are known, not heard)"),
    op(RINGEZ, "POST", "/api/v1/webhooks/subscribe", Support::Partial, "`balance.low` is accepted, never sent (no wallet)"),
    op(RINGEZ, "POST", "/api/v1/agents/intent-detection", Support::Full, "the call's assistant's intents, else a customer-service set"),
    op(RINGEZ, "POST", "/api/v1/agents/call-routing", Support::Full, "routes to the workspace's numbers labelled by department"),
    op(RINGEZ, "POST", "/api/v1/agents/sentiment-analysis", Support::Full, ""),
    op(RINGEZ, "POST", "/api/v1/agents/voice-synthesis", Support::Partial, "wav only, with the installed voices (another provider's voice name speaks with the default, and the answer says so)"),
    op(RINGEZ, "GET", "/api/v1/audio/{id}", Support::Full, "where `audio_url` points: the workspace's own clips, for an hour"),
    op(RINGEZ, "GET", "/api/v1/analytics/call-metrics", Support::Full, ""),
    op(RINGEZ, "GET", "/api/v1/analytics/spending", Support::Full, ""),
    op(RINGEZ, "POST", "/api/v1/batch/calls", Support::Full, "calls past the workspace's calls in progress are `queued` and placed as others end; `GET /api/v1/batch/{id}` follows them"),
    op(RINGEZ, "POST", "/api/v1/scheduled-calls", Support::Full, "`GET`/`DELETE /api/v1/scheduled-calls/{id}` read and cancel it"),
    op(RINGEZ, "POST", "/api/v1/queue/add", Support::Full, "the session's calls from every request are one queue: the higher `priority` first, `concurrent_limit` counting all in progress; each request's id reads its own calls"),
    op(RINGEZ, "POST", "/api/v1/security/whitelist", Support::Full, "on the request's key; behind a reverse proxy, start the server with `--trusted-proxy`"),
    op(RINGEZ, "POST", "/api/v1/security/rotate-key", Support::Full, "the old key works an hour more (`revoke_immediately`: stops at once); the successor shares its requests a minute"),
    op(RINGEZ_SKILL, "POST", "/api/v1/auth/check-email", Support::NotYet, "API keys and sessions instead of accounts (501)"),
    op(RINGEZ_SKILL, "POST", "/api/v1/auth/send-otp", Support::NotYet, "API keys and sessions instead of accounts (501)"),
    op(RINGEZ_SKILL, "POST", "/api/v1/auth/verify-otp", Support::NotYet, "API keys and sessions instead of accounts (501)"),
    op(RINGEZ_SKILL, "POST", "/api/v1/auth/login", Support::NotYet, "API keys and sessions instead of accounts (501)"),
    op(RINGEZ_SKILL, "GET", "/api/v1/auth/me", Support::Partial, "the session's balance; no email"),
    op(RINGEZ_SKILL, "GET", "/api/v1/calls", Support::Full, "with `X-Session-ID` alone"),
];

/// Operations exercised, as (method, path pattern).
static EXERCISED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The pattern of a concrete path: ids become `{id}`.
fn pattern(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    path.split('/')
        .map(|part| if ["asst_", "call_", "num_", "whk_", "sess_", "cnt_", "camp_", "audio_"].iter().any(|p| part.starts_with(p)) { "{id}" } else { part })
        .collect::<Vec<_>>()
        .join("/")
}

/// A client: a base URL and the headers it sends with every request.
struct Client<'a> {
    serve: &'a Serve,
    headers: Vec<(String, String)>,
}

impl Client<'_> {
    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let known = OPERATIONS.iter().any(|o| o.method == method && o.path == pattern(path));
        assert!(known, "{method} {} is not in OPERATIONS", pattern(path));
        EXERCISED.lock().unwrap().push((method.to_string(), pattern(path)));
        self.send_ours(method, path, body)
    }

    /// Sends a request to one of Ringline's own paths beside the dialect's (not in the table).
    fn send_ours(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut request = reqwest::Client::new().request(method.parse().unwrap(), self.serve.url(path)).timeout(Duration::from_secs(60));
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            if let Some(body) = body {
                request = request.header("content-type", "application/json").body(body.to_string());
            }
            let response = request.send().await.expect("the server answers");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }

    /// Sends and checks the documented status and fields.
    fn expect(&self, method: &str, path: &str, body: Option<Value>, status: u16, fields: &[(&str, &str)]) -> Value {
        let (got, answer) = self.send(method, path, body.as_ref());
        assert_eq!(got, status, "{method} {path} with {}: {answer:#}", body.unwrap_or(Value::Null));
        has_fields(&answer, fields, &format!("{method} {path}"));
        answer
    }
}

/// Checks `fields` (dotted paths, `[]` for each element of an array) against their types:
/// string, number, integer, boolean, object, array; a trailing `?` allows null.
fn has_fields(value: &Value, fields: &[(&str, &str)], what: &str) {
    for (path, kind) in fields {
        let nullable = kind.ends_with('?');
        let kind = kind.trim_end_matches('?');
        let mut found = vec![value.clone()];
        for part in path.split('.') {
            found = found
                .into_iter()
                .flat_map(|v| match part.strip_suffix("[]") {
                    Some(name) => {
                        let items = v.get(name).and_then(Value::as_array).cloned();
                        assert!(items.as_ref().is_some_and(|a| !a.is_empty()), "{what}: `{name}` is a non-empty array in {v:#}");
                        items.unwrap_or_default()
                    }
                    None => {
                        assert!(v.get(part).is_some(), "{what}: `{path}` is missing from {value:#}");
                        vec![v[part].clone()]
                    }
                })
                .collect();
        }
        for v in found {
            let ok = match (kind, &v) {
                (_, Value::Null) => nullable,
                ("string", Value::String(_)) | ("boolean", Value::Bool(_)) | ("object", Value::Object(_)) | ("array", Value::Array(_)) | ("number", Value::Number(_)) => true,
                ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
                _ => false,
            };
            assert!(ok, "{what}: `{path}` should be {kind}{}, is {v}", if nullable { " or null" } else { "" });
        }
    }
}

fn start(db: &Database) -> Serve {
    Serve::start_with(db, &repo_assistants(), &["--sandbox-line", "--allow-egress", "127.0.0.0/8"], &[])
}

fn exercised_every_supported(document_prefix: &str) {
    let done: HashSet<(String, String)> = EXERCISED.lock().unwrap().iter().cloned().collect();
    for op in OPERATIONS.iter().filter(|o| o.document.starts_with(document_prefix)) {
        assert!(done.contains(&(op.method.to_string(), op.path.to_string())), "{} {} ({}) is in the table but the suite never sent it", op.method, op.path, op.document);
    }
}

/// A GET with the credential `header` from the local address `local` (another of loopback's).
fn from_address(local: &str, url: &str, header: &(&str, String)) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().unwrap()).build().unwrap();
        let response = client.get(url).header(header.0, &header.1).timeout(Duration::from_secs(30)).send().await.expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn ringg_clients_work_as_written() {
    let db = Database::sqlite();
    let serve = start(&db);
    // The suite polls while calls run: more than the default 60 requests a minute.
    let key = create_key(&db, "ringg", &["--rate-limit", "1000"]);
    // The overview's header; the reference's Bearer works the same (the API tests use it).
    let ringg = Client { serve: &serve, headers: vec![("X-API-KEY".into(), key.clone())] };
    let receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").unwrap(), vec![]);

    // The overview's integration order.
    ringg.expect("GET", "/v1/workspace", None, 200, &[("id", "string"), ("name", "string"), ("plan", "object"), ("plan.name", "string"), ("usage", "object"), ("usage.calls_this_month", "integer")]);
    let agents = ringg.expect("GET", "/v1/agent/all", None, 200, &[("agents[].agent_id", "string"), ("agents[].name", "string")]);
    assert!(agents["agents"].as_array().unwrap().iter().any(|a| a["agent_id"] == "call_for_user"), "the deployment's assistants are agents");

    // Assistants: the reference's create body as written.
    let created = ringg.expect(
        "POST",
        "/v1/assistants",
        Some(json!({ "name": "My Voice Agent", "language": "en", "prompt": "You are a helpful customer service agent for...", "voice": "female-1", "first_message": "Hello! Thank you for your time today." })),
        201,
        &[("id", "string"), ("name", "string"), ("language", "string"), ("status", "string"), ("created_at", "string")],
    );
    let assistant = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["language"], "en");
    assert_eq!(created["status"], "active");
    let listed = ringg.expect("GET", "/v1/assistants", None, 200, &[("assistants[].id", "string"), ("assistants[].name", "string"), ("assistants[].language", "string"), ("assistants[].status", "string"), ("assistants[].created_at", "string")]);
    assert!(listed["assistants"].as_array().unwrap().iter().any(|a| a["id"] == assistant.as_str()));
    ringg.expect("GET", &format!("/v1/assistants/{assistant}"), None, 200, &[("id", "string"), ("name", "string")]);
    let patched = ringg.expect("PATCH", &format!("/v1/assistants/{assistant}"), Some(json!({ "first_message": "Hi! Thanks for taking my call." })), 200, &[("id", "string")]);
    assert_eq!(patched["spec"]["first_message"], "Hi! Thanks for taking my call.");

    // Numbers: one added the Ringline way, then listed both ways and assigned as the reference does.
    let (status, number) = crate::api::post(&serve, &key, "/v1/numbers", json!({ "number": "+918001234567", "label": "sales" }));
    assert_eq!(status, 201, "{number}");
    let number_id = number["id"].as_str().unwrap().to_string();
    ringg.expect("GET", "/v1/numbers", None, 200, &[("numbers[].id", "string"), ("numbers[].number", "string")]);
    ringg.expect("GET", "/v1/workspace/numbers", None, 200, &[("numbers[].from_number_id", "string"), ("numbers[].number", "string")]);
    ringg.expect("POST", &format!("/v1/numbers/{number_id}/assign"), Some(json!({ "assistant_id": assistant })), 200, &[("id", "string"), ("assistant_id", "string")]);

    // The reference's outbound call, as written.
    let call = ringg.expect(
        "POST",
        "/v1/calls/outbound",
        Some(json!({
            "assistant_id": assistant,
            "to_number": "+919876543210",
            "from_number": "+918001234567",
            "dynamic_variables": { "customer_name": "Rahul", "order_id": "ORD-12345", "product": "Health Insurance Premium" },
            "webhook_url": receiver.url("/callback"),
        })),
        201,
        &[("call_id", "string"), ("status", "string"), ("to_number", "string"), ("from_number", "string"), ("assistant_id", "string"), ("created_at", "string")],
    );
    assert_eq!(call["status"], "initiated", "Ringg's first status");
    let call_id = call["call_id"].as_str().unwrap().to_string();
    let statuses = ["initiated", "ringing", "in-progress", "completed", "failed", "no-answer", "busy", "ending", "canceled"];
    // Once the caller has spoken, the reference's end call.
    wait_until(Duration::from_secs(180), "the caller speaks", || {
        let (_, lines) = ringg.send("GET", &format!("/v1/calls/{call_id}/transcript"), None);
        lines["transcript"].as_array().is_some_and(|l| l.iter().any(|l| l["role"] == "customer"))
    });
    ringg.expect("POST", &format!("/v1/calls/{call_id}/end"), None, 202, &[("call_id", "string"), ("status", "string")]);
    let mut last = Value::Null;
    wait_until(Duration::from_secs(120), "the call ends", || {
        last = ringg.expect("GET", &format!("/v1/calls/{call_id}/status"), None, 200, &[("call_id", "string"), ("status", "string"), ("duration_seconds", "integer?"), ("disposition", "string?"), ("summary", "string?"), ("ended_at", "string?")]);
        assert!(statuses.contains(&last["status"].as_str().unwrap()), "{last}");
        last["status"] == "completed" || last["status"] == "failed"
    });
    assert_eq!(last["status"], "completed", "{last}");
    has_fields(&last, &[("duration_seconds", "integer"), ("summary", "string"), ("ended_at", "string")], "a completed call's status");
    let transcript = ringg.expect("GET", &format!("/v1/calls/{call_id}/transcript"), None, 200, &[("call_id", "string"), ("transcript[].role", "string"), ("transcript[].text", "string"), ("language", "string")]);
    assert!(transcript["transcript"].as_array().unwrap().iter().all(|l| ["agent", "customer"].contains(&l["role"].as_str().unwrap())));
    assert_eq!(transcript["language"], "en");

    // The overview's individual call.
    let individual = ringg.expect(
        "POST",
        "/v1/calling/outbound/individual",
        Some(json!({ "name": "Rahul", "mobile_number": "+15005550001", "agent_id": assistant, "from_number_id": number_id, "custom_args_values": { "customer_name": "Rahul" } })),
        201,
        &[("call_id", "string"), ("status", "string"), ("agent_id", "string")],
    );
    assert_eq!(individual["from_number"], "+918001234567", "from_number_id chose the caller id");
    let (status, wrong) = ringg.send("POST", "/v1/calling/outbound/individual", Some(&json!({ "mobile_number": "+15005550001", "agent_id": "asst_nope" })));
    assert_eq!((status, wrong["error"]["field"].as_str()), (404, Some("agent_id")), "errors name Ringg's field: {wrong}");

    // History and analytics, with the reference's query.
    ringg.expect("GET", "/v1/calls/history?limit=20&offset=0&from=2026-02-01&to=2099-02-06", None, 200, &[("calls[].call_id", "string"), ("calls[].status", "string")]);
    ringg.expect("GET", "/v1/analytics?from=2026-02-01&to=2099-02-06", None, 200, &[("total_calls", "integer"), ("completed", "integer"), ("failed", "integer"), ("no_answer", "integer"), ("avg_duration_seconds", "integer?"), ("dispositions", "object")]);

    // Webhooks: the reference's registration (its URL swapped for the receiver).
    let hook = ringg.expect(
        "POST",
        "/v1/webhooks",
        Some(json!({ "url": receiver.url("/webhook/ringg"), "events": ["call.completed", "call.failed", "call.transcript_ready", "campaign.completed"], "secret": "optional-signing-secret" })),
        201,
        &[("id", "string"), ("url", "string"), ("events", "array")],
    );
    ringg.expect("GET", "/v1/webhooks", None, 200, &[("webhooks[].id", "string")]);
    let (status, _) = ringg.send("DELETE", &format!("/v1/webhooks/{}", hook["id"].as_str().unwrap()), None);
    assert_eq!(status, 204);
    // The per-call webhook_url got the call's events, completed among them.
    receiver.wait_for(Duration::from_secs(30), "call.completed at the call's webhook_url", |got| got.iter().any(|r| r.path == "/callback" && r.json()["type"] == "call.completed"));

    // Web call token with the reference's visitor_info.
    ringg.expect(
        "POST",
        "/v1/webcall/token",
        Some(json!({ "assistant_id": assistant, "visitor_info": { "name": "Website Visitor", "page_url": "https://example.com/pricing" } })),
        201,
        &[("token", "string")],
    );

    // Campaigns: the reference's launch, its campaign made first with Ringline's own
    // `POST /v1/campaigns` (the reference's body names no assistant) and its dates, long past,
    // moved a year ahead; then listed, its status read, and canceled before it starts.
    let (status, draft) = crate::api::post(&serve, &key, "/v1/campaigns", json!({ "campaign_id": "camp_abc123", "assistant_id": assistant, "from_number_id": number_id }));
    assert_eq!(status, 201, "{draft}");
    let launched = ringg.expect(
        "POST",
        "/v1/campaigns/launch",
        Some(json!({
            "campaign_id": "camp_abc123",
            "contacts": [{ "phone": "+919876543210", "name": "Rahul", "email": "rahul@example.com", "custom_fields": { "policy_number": "POL-456" } }],
            "schedule": { "start_time": "2027-02-07T09:00:00+05:30", "end_time": "2027-02-07T18:00:00+05:30", "timezone": "Asia/Kolkata" }
        })),
        201,
        &[("campaign_id", "string"), ("status", "string"), ("total_contacts", "integer"), ("schedule.start_time", "string")],
    );
    assert_eq!((launched["status"].as_str(), launched["from_number"].as_str()), (Some("scheduled"), Some("+918001234567")), "{launched}");
    ringg.expect("GET", "/v1/campaigns", None, 200, &[("campaigns[].campaign_id", "string"), ("campaigns[].status", "string"), ("total", "integer")]);
    let status_now = ringg.expect("GET", "/v1/campaigns/camp_abc123/status", None, 200, &[("campaign_id", "string"), ("status", "string"), ("counts", "object"), ("contacts[].phone", "string"), ("contacts[].status", "string")]);
    assert_eq!(status_now["contacts"][0]["status"], "pending", "{status_now}");
    let (status, canceled) = crate::api::post(&serve, &key, "/v1/campaigns/camp_abc123/cancel", json!({}));
    assert_eq!((status, canceled["status"].as_str()), (200, Some("canceled")), "{canceled}");
    exercised_every_supported("Ringg");
}

#[test]
fn ringez_clients_work_as_written() {
    ringez_flow(Database::sqlite());
}

/// The same on PostgreSQL: sessions, contacts and their label and text searches are portable SQL.
#[test]
fn ringez_clients_work_as_written_on_postgres() {
    ringez_flow(Database::postgres());
}

fn ringez_flow(db: Database) {
    let serve = start(&db);
    // The suite polls while calls run: more than the default 60 requests a minute.
    let key = create_key(&db, "ringez", &["--rate-limit", "1000"]);
    let agent = Client { serve: &serve, headers: vec![("Authorization".into(), format!("Bearer {key}")), ("X-Agent-ID".into(), "voice-assistant-v1".into())] };
    let receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").unwrap(), vec![]);

    let session = agent.expect(
        "POST",
        "/api/v1/sessions/create",
        Some(json!({
            "session_type": "authenticated",
            "agent_context": { "agent_name": "AssistantBot", "agent_version": "1.0", "capabilities": ["voice_calling", "sms"] },
            "user_consent": { "calling_authorized": true, "privacy_mode": true, "currency": "USD", "max_spend_limit": 5.00 },
        })),
        201,
        &[("session_id", "string"), ("session_token", "string"), ("expires_at", "string"), ("wallet_balance.minutes", "integer"), ("wallet_balance.currency", "string"), ("wallet_balance.value", "number"), ("privacy_mode", "boolean"), ("rate_limits.calls_per_hour", "integer"), ("rate_limits.max_call_duration", "integer")],
    );
    let session_id = session["session_id"].as_str().unwrap().to_string();
    agent.expect("GET", &format!("/api/v1/sessions/{session_id}"), None, 200, &[("session_id", "string"), ("active", "boolean"), ("created_at", "string"), ("wallet_balance", "object"), ("calls_made", "integer"), ("total_duration", "integer")]);
    agent.expect("GET", &format!("/api/v1/wallet/balance?session_id={session_id}"), None, 200, &[("balance.minutes", "integer"), ("balance.currency", "string"), ("balance.value", "number")]);

    // The webhook subscription first, so the call's events reach it (URL swapped for the receiver).
    let hook = agent.expect(
        "POST",
        "/api/v1/webhooks/subscribe",
        Some(json!({
            "session_id": session_id,
            "webhook_url": receiver.url("/webhooks/ringez"),
            "events": ["call.initiated", "call.ringing", "call.answered", "call.completed", "call.failed", "transcription.updated", "balance.low"],
            "secret": "webhook_secret_key",
        })),
        201,
        &[("webhook_id", "string"), ("status", "string"), ("events", "array"), ("created_at", "string")],
    );
    assert_eq!(hook["status"], "active");

    // The agent API's call, as written.
    let example = json!({
        "session_id": session_id,
        "to_number": "+14155551234",
        "from_number": "+12025551000",
        "privacy_mode": true,
        "caller_id_name": "Anonymous",
        "call_settings": { "max_duration": 1800, "record_call": false, "transcribe": true, "language": "en-US" },
        "webhook_url": receiver.url("/webhooks/call-status"),
        "metadata": { "purpose": "customer_support", "ticket_id": "TKT-12345" },
    });
    let call = agent.expect(
        "POST",
        "/api/v1/calls/initiate",
        Some(example.clone()),
        // The from_number is not this workspace's: the answer names the field and the fix.
        422,
        &[("error.field", "string")],
    );
    assert_eq!(call["error"]["field"], "from_number", "{call}");
    let (status, number) = crate::api::post(&serve, &key, "/v1/numbers", json!({ "number": "+12025551000" }));
    assert_eq!(status, 201, "{number}");
    let call = agent.expect(
        "POST",
        "/api/v1/calls/initiate",
        Some(example),
        201,
        &[("call_id", "string"), ("status", "string"), ("to_number", "string"), ("from_number", "string"), ("estimated_rate", "number"), ("currency", "string"), ("webrtc_token", "string?"), ("connection_url", "string?"), ("created_at", "string")],
    );
    assert_eq!(call["status"], "initiated");
    assert_eq!(call["estimated_rate"], 0.125, "a US mobile number's rate");
    assert!(call["from_number"].as_str().unwrap().contains('*'), "privacy mode masks the caller id: {call}");
    let call_id = call["call_id"].as_str().unwrap().to_string();
    let details_fields: &[(&str, &str)] = &[("call_id", "string"), ("status", "string"), ("to_number", "string"), ("from_number", "string"), ("started_at", "string?"), ("duration", "integer"), ("estimated_cost.minutes", "integer"), ("estimated_cost.amount", "number"), ("estimated_cost.currency", "string"), ("quality_metrics.mos_score", "number?"), ("quality_metrics.latency_ms", "number?"), ("quality_metrics.packet_loss", "number?")];
    let mut details = Value::Null;
    wait_until(Duration::from_secs(90), "the call is answered", || {
        details = agent.expect("GET", &format!("/api/v1/calls/{call_id}"), None, 200, details_fields);
        details["status"] != "initiated" && details["status"] != "ringing"
    });
    assert_eq!(details["status"], "in-progress", "{details}");
    assert_eq!(details["agent_id"], "voice-assistant-v1", "X-Agent-ID is kept with the call");
    wait_until(Duration::from_secs(90), "the agent's first words are in the transcript", || {
        agent.send("GET", &format!("/api/v1/transcripts/{call_id}"), None).1["transcript"].as_array().is_some_and(|l| !l.is_empty())
    });
    // Actions on the live call: keys with a pause, hold and unhold.
    for body in [json!({ "action": "dtmf", "parameters": { "digits": "1234#" } }), json!({ "action": "dtmf", "parameters": { "digits": "1w2" } }), json!({ "action": "hold" }), json!({ "action": "unhold" })] {
        agent.expect("POST", &format!("/api/v1/calls/{call_id}/actions"), Some(body), 200, &[("call_id", "string"), ("action", "string"), ("status", "string"), ("timestamp", "string")]);
    }
    let (status, bad) = agent.send("POST", &format!("/api/v1/calls/{call_id}/actions"), Some(&json!({ "action": "dtmf", "parameters": { "digits": "12x" } })));
    assert_eq!((status, bad["error"]["field"].as_str()), (422, Some("parameters.digits")), "{bad}");
    agent.expect(
        "POST",
        &format!("/api/v1/calls/{call_id}/transcribe"),
        Some(json!({ "language": "en-US", "webhook_url": receiver.url("/webhooks/transcription"), "interim_results": true, "speaker_labels": true })),
        200,
        &[("call_id", "string"), ("transcription_enabled", "boolean"), ("transcription_id", "string"), ("websocket_url", "string?")],
    );
    // The recipient (the sandbox's caller) answers before the hang-up: a line Whisper heard.
    wait_until(Duration::from_secs(60), "the recipient's first words are in the transcript", || {
        agent.send("GET", &format!("/api/v1/transcripts/{call_id}"), None).1["transcript"].as_array().is_some_and(|l| l.iter().any(|l| l["speaker"] == "recipient"))
    });
    let ended = agent.expect(
        "DELETE",
        &format!("/api/v1/calls/{call_id}"),
        None,
        200,
        &[("call_id", "string"), ("status", "string"), ("duration", "integer"), ("cost.minutes", "integer"), ("cost.amount", "number"), ("cost.currency", "string"), ("remaining_balance.minutes", "integer"), ("remaining_balance.value", "number"), ("ended_at", "string?")],
    );
    assert_eq!(ended["status"], "completed", "{ended}");
    let events = receiver.wait_for(Duration::from_secs(30), "call.completed at the subscription", |got| got.iter().any(|r| r.path == "/webhooks/ringez" && r.json()["event"] == "call.completed"));
    for delivery in events.iter().filter(|r| r.path == "/webhooks/ringez") {
        // Verified as the integration guide's receiver does: hex HMAC-SHA256 of the raw body.
        let key = openssl::pkey::PKey::hmac(b"webhook_secret_key").unwrap();
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
        signer.update(delivery.body.as_bytes()).unwrap();
        assert_eq!(delivery.header("X-Ringez-Signature"), Some(hex::encode(signer.sign_to_vec().unwrap()).as_str()), "signed as Ringez signs");
        has_fields(&delivery.json(), &[("event", "string"), ("timestamp", "string"), ("data.call_id", "string"), ("data.session_id", "string"), ("data.to_number", "string")], "a Ringez webhook");
    }
    let kinds: Vec<String> = events.iter().filter(|r| r.path == "/webhooks/ringez").map(|r| r.json()["event"].as_str().unwrap_or("").to_string()).collect();
    for wanted in ["call.initiated", "call.answered", "call.completed"] {
        assert!(kinds.iter().any(|k| k == wanted), "{wanted} in {kinds:?}");
    }

    // The transcript, and the history both ways (the skill's with the session alone).
    let transcript = agent.expect("GET", &format!("/api/v1/transcripts/{call_id}"), None, 200, &[("call_id", "string"), ("transcript[].speaker", "string"), ("transcript[].text", "string"), ("transcript[].timestamp", "number"), ("transcript[].confidence", "number?"), ("language", "string"), ("duration", "integer")]);
    // The agent placed the call: the `recipient` is the side Whisper heard, each line with its confidence.
    let heard: Vec<&Value> = transcript["transcript"].as_array().unwrap().iter().filter(|l| l["speaker"] == "recipient").collect();
    assert!(!heard.is_empty() && heard.iter().all(|l| l["confidence"].as_f64().is_some_and(|c| c > 0.0 && c <= 1.0)), "{transcript:#}");
    let history_fields: &[(&str, &str)] = &[("calls[].call_id", "string"), ("calls[].to_number", "string"), ("calls[].status", "string"), ("calls[].duration", "integer"), ("calls[].cost", "number"), ("calls[].started_at", "string?"), ("calls[].ended_at", "string?"), ("calls[].recording_url", "string?"), ("calls[].transcript_url", "string?"), ("pagination.total", "integer"), ("pagination.has_more", "boolean")];
    agent.expect("GET", &format!("/api/v1/calls/history?session_id={session_id}&limit=50&offset=0&status=all"), None, 200, history_fields);
    let skill = Client { serve: &serve, headers: vec![("X-Session-ID".into(), session_id.clone())] };
    let mine = skill.expect("GET", "/api/v1/calls?limit=10&offset=0", None, 200, history_fields);
    assert_eq!(mine["pagination"]["total"], 1, "a session sees its own calls: {mine}");
    skill.expect("GET", "/api/v1/auth/me", None, 200, &[("balance_minutes", "integer"), ("balance_usd", "number")]);

    // The skill's call with only X-Session-ID, its idempotency key, and Ringez's duplicate answer.
    let body = json!({ "to_number": "+919876543210", "idempotency_key": format!("{session_id}_1700000000000_xyz789") });
    let first = skill.expect("POST", "/api/v1/calls/initiate", Some(body.clone()), 201, &[("call_id", "string"), ("status", "string"), ("mode", "string"), ("to_number", "string"), ("from_number", "string")]);
    assert_eq!(first["mode"], "direct", "no user phone is known: an AI call");
    let again = skill.expect("POST", "/api/v1/calls/initiate", Some(body), 200, &[("alreadyInitiated", "boolean"), ("callSid", "string")]);
    assert_eq!(again["callSid"], first["call_id"]);
    let second = first["call_id"].as_str().unwrap().to_string();
    skill.expect("DELETE", &format!("/api/v1/calls/{second}"), None, 200, &[("call_id", "string"), ("status", "string")]);
    let (status, premium) = agent.send("POST", "/api/v1/calls/initiate", Some(&json!({ "to_number": "+19002221234" })));
    assert_eq!((status, premium["error"]["field"].as_str()), (422, Some("to_number")), "premium-rate numbers are never dialled: {premium}");
    // Bridge mode: the answered call goes on to the user's phone, the agent says nothing.
    let bridged = agent.expect(
        "POST",
        "/api/v1/calls/initiate",
        Some(json!({ "to_number": "+14155551234", "mode": "bridge", "user_phone": "+14155552671", "call_settings": { "record_call": true }, "webhook_url": receiver.url("/bridge") })),
        201,
        &[("call_id", "string"), ("mode", "string")],
    );
    assert_eq!(bridged["mode"], "bridge");
    let bridged_id = bridged["call_id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(60), "the bridged call ends", || agent.send("GET", &format!("/api/v1/calls/{bridged_id}"), None).1["status"] == "completed");
    let (_, detail) = crate::api::get(&serve, &key, &format!("/v1/calls/{bridged_id}"));
    assert_eq!(detail["disposition"], "transferred", "{detail}");
    // A recorded call says when its recording is whole (in Ringez's shape: the call came that way).
    let got = receiver.wait_for(Duration::from_secs(30), "call.recording_ready", |got| got.iter().any(|r| r.path == "/bridge" && r.json()["event"] == "call.recording_ready"));
    let ready = got.iter().find(|r| r.path == "/bridge" && r.json()["event"] == "call.recording_ready").unwrap().json();
    assert_eq!(ready["data"]["recording_url"], format!("/v1/calls/{bridged_id}/recording"), "{ready}");

    // Contacts.
    let contact = agent.expect(
        "POST",
        "/api/v1/contacts",
        Some(json!({ "session_id": session_id, "name": "John Doe", "phone_number": "+14155551234", "labels": ["customer", "priority"], "notes": "Main contact for ABC Corp", "metadata": { "company": "ABC Corp", "department": "Sales" } })),
        201,
        &[("contact_id", "string"), ("name", "string"), ("phone_number", "string"), ("created_at", "string")],
    );
    let contact_id = contact["contact_id"].as_str().unwrap().to_string();
    let found = agent.expect("GET", &format!("/api/v1/contacts?session_id={session_id}&search=john&label=priority"), None, 200, &[("contacts[].contact_id", "string"), ("contacts[].name", "string"), ("contacts[].phone_number", "string"), ("contacts[].labels", "array"), ("contacts[].last_called", "string?"), ("contacts[].call_count", "integer"), ("total", "integer")]);
    assert_eq!(found["contacts"][0]["call_count"], 2, "two calls went to John's number: {found}");
    let none = agent.expect("GET", "/api/v1/contacts?search=100%25_", None, 200, &[("total", "integer")]);
    assert_eq!(none["total"], 0, "search text is literal, not a pattern");
    agent.expect("GET", &format!("/api/v1/contacts/{contact_id}"), None, 200, &[("contact_id", "string"), ("labels", "array")]);
    let updated = agent.expect("PUT", &format!("/api/v1/contacts/{contact_id}"), Some(json!({ "labels": ["customer"], "notes": "Moved to support" })), 200, &[("contact_id", "string")]);
    assert_eq!(updated["labels"], json!(["customer"]));
    assert_eq!(updated["name"], "John Doe", "fields not given stay");
    agent.expect("DELETE", &format!("/api/v1/contacts/{contact_id}"), None, 200, &[("success", "boolean")]);

    // Numbers.
    let valid = agent.expect(
        "POST",
        "/api/v1/numbers/validate",
        Some(json!({ "phone_number": "+14155551234" })),
        200,
        &[("valid", "boolean"), ("phone_number", "string"), ("country", "string"), ("country_code", "string"), ("national_format", "string"), ("type", "string"), ("carrier", "string?"), ("is_callable", "boolean"), ("is_emergency", "boolean"), ("is_premium", "boolean"), ("estimated_rate.per_minute", "number"), ("estimated_rate.currency", "string"), ("timezone", "string")],
    );
    assert_eq!((valid["country_code"].as_str(), valid["timezone"].as_str()), (Some("+1"), Some("America/Los_Angeles")));
    let (status, ours) = crate::api::post(&serve, &key, "/v1/numbers/validate", json!({ "phone_number": "+14155551234" }));
    assert_eq!(status, 200, "Ringline's own validate takes Ringez's field name too: {ours}");
    agent.expect("GET", "/api/v1/numbers/rates?country_code=US&currency=USD", None, 200, &[("country", "string"), ("country_code", "string"), ("dial_prefix", "string"), ("rates.mobile.per_minute", "number"), ("rates.mobile.currency", "string"), ("rates.landline.per_minute", "number")]);

    // Agent features.
    let intent = agent.expect(
        "POST",
        "/api/v1/agents/intent-detection",
        Some(json!({ "call_id": call_id, "transcript_segment": "I need to speak with someone about my order #12345", "context": { "previous_intents": ["greeting"], "customer_id": "cust_abc" } })),
        200,
        &[("intent", "string"), ("sub_intent", "string?"), ("entities", "object"), ("confidence", "number"), ("suggested_action", "string"), ("suggested_parameters", "object")],
    );
    assert_eq!(intent["intent"], "customer_support", "{intent}");
    assert_eq!(intent["entities"]["order_number"], "12345", "{intent}");
    let feeling = agent.expect(
        "POST",
        "/api/v1/agents/sentiment-analysis",
        Some(json!({ "call_id": call_id, "transcript_segment": "This is extremely frustrating! I've been waiting for 3 weeks!", "include_recommendations": true })),
        200,
        &[("sentiment", "string"), ("sentiment_score", "number"), ("emotion", "string"), ("urgency", "string"), ("escalation_recommended", "boolean"), ("key_phrases", "array"), ("recommended_response_tone", "string"), ("suggested_actions", "array")],
    );
    assert_eq!((feeling["sentiment"].as_str(), feeling["emotion"].as_str(), feeling["escalation_recommended"].as_bool()), (Some("negative"), Some("frustrated"), Some(true)), "{feeling}");
    assert!(feeling["key_phrases"].as_array().unwrap().iter().any(|p| p == "extremely frustrating"), "{feeling}");
    let (status, _) = crate::api::post(&serve, &key, "/v1/numbers", json!({ "number": "+14155552672", "label": "sales spanish" }));
    assert_eq!(status, 201);
    let (status, _) = crate::api::post(&serve, &key, "/v1/numbers", json!({ "number": "+14155552673", "label": "voicemail" }));
    assert_eq!(status, 201);
    let route = agent.expect(
        "POST",
        "/api/v1/agents/call-routing",
        Some(json!({ "caller_info": { "phone_number": "+14155551234", "language": "en-US", "timezone": "America/Los_Angeles" }, "routing_criteria": { "department": "sales", "skill_required": "spanish", "priority": "high" }, "business_hours": true })),
        200,
        &[("route_to", "string"), ("route_type", "string"), ("estimated_wait_time", "integer"), ("agent_available", "boolean"), ("fallback_options", "array")],
    );
    assert_eq!((route["route_to"].as_str(), route["fallback_options"][0]["number"].as_str()), (Some("+14155552672"), Some("+14155552673")), "{route}");

    // A clip for an IVR, as the reference asks for it (in wav: mp3 and webm are not encoded here).
    let clip = agent.expect(
        "POST",
        "/api/v1/agents/voice-synthesis",
        Some(json!({ "text": "Thank you for calling. Please hold while we connect you.", "voice": "en-US-Neural2-A", "speed": 1.0, "pitch": 0, "output_format": "wav" })),
        201,
        &[("audio_id", "string"), ("audio_url", "string"), ("duration", "number"), ("format", "string"), ("expires_at", "string")],
    );
    assert!(clip["note"].as_str().is_some_and(|n| n.contains("en-US-Neural2-A")), "another provider's voice is replaced, and it says so: {clip}");
    assert!((2.0..10.0).contains(&clip["duration"].as_f64().unwrap()), "{clip}");
    let (status, wav) = agent.send("GET", clip["audio_url"].as_str().unwrap(), None);
    assert_eq!(status, 200);
    assert!(wav.as_str().is_some_and(|w| w.starts_with("RIFF")), "a WAV file");
    let (status, refused) = agent.send("POST", "/api/v1/agents/voice-synthesis", Some(&json!({ "text": "Hello", "output_format": "mp3" })));
    assert_eq!((status, refused["error"]["field"].as_str()), (422, Some("output_format")), "{refused}");
    let other_key = create_key(&db, "someone-else", &[]);
    let outsider = Client { serve: &serve, headers: vec![("Authorization".into(), format!("Bearer {other_key}"))] };
    let (status, _) = outsider.send("GET", clip["audio_url"].as_str().unwrap(), None);
    assert_eq!(status, 404, "another workspace cannot fetch the clip");

    // Analytics.
    agent.expect(
        "GET",
        &format!("/api/v1/analytics/call-metrics?session_id={session_id}&start_date=2026-02-01T00:00:00Z&end_date=2099-02-05T23:59:59Z&group_by=day"),
        None,
        200,
        &[("period.start", "string"), ("period.end", "string"), ("metrics.total_calls", "integer"), ("metrics.total_duration", "integer"), ("metrics.total_cost", "number"), ("metrics.average_duration", "number"), ("metrics.success_rate", "number"), ("metrics.call_quality_avg", "number?"), ("breakdown.by_country", "object"), ("breakdown.by_type", "object"), ("breakdown.by_status", "object")],
    );
    agent.expect("GET", &format!("/api/v1/analytics/spending?session_id={session_id}"), None, 200, &[("current_period.total_spent", "number"), ("current_period.budget_limit", "number"), ("current_period.budget_remaining", "number"), ("current_period.utilization_percentage", "number"), ("predictions.estimated_month_end_spend", "number"), ("predictions.over_budget_risk", "string")]);

    let batch_path = ringez_jobs(&serve, &agent, &skill, &session_id, &create_key(&db, "another-workspace", &[]));

    // A key rotated by whoever holds it. Five requests a minute for the whole line of keys: a
    // successor shares its predecessor's budget, so rotating buys no fresh requests.
    let spare = create_key(&db, "ringez", &["--rate-limit", "5"]);
    let holder = |key: &str| Client { serve: &serve, headers: vec![("Authorization".into(), format!("Bearer {key}"))] };
    let rotate = "/api/v1/security/rotate-key";
    let (status, refused) = holder(&spare).send("POST", rotate, Some(&json!({ "current_key": key })));
    assert_eq!((status, refused["error"]["field"].as_str()), (422, Some("current_key")), "a key rotates only itself: {refused}");
    let rotated_fields: &[(&str, &str)] = &[("api_key", "string"), ("key_id", "string"), ("created_at", "string"), ("previous_key.key_id", "string"), ("previous_key.revoked", "boolean"), ("previous_key.valid_until", "string")];
    let second = holder(&spare).expect("POST", rotate, Some(json!({ "current_key": spare, "revoke_immediately": false })), 201, rotated_fields);
    assert_eq!(second["previous_key"]["revoked"], false, "{second}");
    let second = second["api_key"].as_str().unwrap().to_string();
    let (status, again) = holder(&spare).send("POST", rotate, Some(&json!({ "current_key": spare })));
    assert_eq!((status, again["error"]["code"].as_str()), (409, Some("key_rotated")), "a key has one successor: {again}");
    holder(&second).expect("GET", &format!("/api/v1/calls/{call_id}"), None, 200, &[("call_id", "string")]);
    let third = holder(&second).expect("POST", rotate, Some(json!({ "current_key": second, "revoke_immediately": true })), 201, rotated_fields);
    assert_eq!(third["previous_key"]["revoked"], true, "{third}");
    let third = third["api_key"].as_str().unwrap().to_string();
    assert_eq!(holder(&second).send("GET", "/api/v1/calls", None).0, 401, "revoked at once");
    assert_eq!(holder(&spare).send("GET", "/api/v1/calls", None).0, 429, "the first key still authenticates in its grace hour, and its line's five requests are spent");
    assert_eq!(holder(&third).send("GET", "/api/v1/calls", None).0, 429, "the newest key too: it shares the line's budget");
    assert_eq!(skill.send("POST", rotate, Some(&json!({ "current_key": "x" }))).0, 403, "a session alone rotates nothing");

    // A key limited to the addresses its holder names: refused from any other (the request
    // comes from 127.0.0.2, loopback too), and a list that would lock out the request's own
    // address, or holds no range, is refused itself.
    let fenced = create_key(&db, "ringez", &[]);
    let whitelist = "/api/v1/security/whitelist";
    let (status, lockout) = holder(&fenced).send("POST", whitelist, Some(&json!({ "ip_addresses": ["203.0.113.0/24"], "description": "Agent server IPs" })));
    assert_eq!((status, lockout["error"]["field"].as_str()), (422, Some("ip_addresses")), "{lockout}");
    let (status, bad) = holder(&fenced).send("POST", whitelist, Some(&json!({ "ip_addresses": ["127.0.0.1", "10.0.0.0/33"] })));
    assert_eq!((status, bad["error"]["field"].as_str()), (422, Some("ip_addresses[1]")), "{bad}");
    let set = holder(&fenced).expect("POST", whitelist, Some(json!({ "ip_addresses": ["127.0.0.1/32"], "description": "this test" })), 200, &[("key_id", "string"), ("status", "string"), ("ip_addresses", "array")]);
    assert_eq!(set["status"], "active", "{set}");
    let details = format!("/api/v1/calls/{call_id}");
    holder(&fenced).expect("GET", &details, None, 200, &[("call_id", "string")]);
    let bearer = ("Authorization", format!("Bearer {fenced}"));
    let (status, refused) = from_address("127.0.0.2", &serve.url(&details), &bearer);
    assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("address_not_allowed")), "{refused}");
    // A session it opens keeps its limit.
    let fenced_session = holder(&fenced).expect("POST", "/api/v1/sessions/create", Some(json!({ "session_type": "guest" })), 201, &[("session_id", "string")]);
    let session_header = ("X-Session-ID", fenced_session["session_id"].as_str().unwrap().to_string());
    assert_eq!(from_address("127.0.0.1", &serve.url("/api/v1/calls"), &session_header).0, 200);
    assert_eq!(from_address("127.0.0.2", &serve.url("/api/v1/calls"), &session_header).0, 403, "a session is held to its key's addresses");
    holder(&fenced).expect("POST", whitelist, Some(json!({ "ip_addresses": [] })), 200, &[("status", "string")]);
    assert_eq!(from_address("127.0.0.2", &serve.url(&details), &bearer).0, 200, "an empty list lets any address in again");
    holder(&fenced).expect("POST", rotate, Some(json!({ "current_key": fenced, "revoke_immediately": true })), 201, &[("api_key", "string")]);
    assert_eq!(from_address("127.0.0.1", &serve.url("/api/v1/calls"), &session_header).0, 401, "a revoked key's sessions end with it");

    // What a self-hosted server does not do says so, and what to use instead.
    for (method, path) in [("POST", "/api/v1/wallet/add-credits"), ("POST", "/api/v1/auth/check-email"), ("POST", "/api/v1/auth/send-otp"), ("POST", "/api/v1/auth/verify-otp"), ("POST", "/api/v1/auth/login")] {
        let (status, answer) = agent.send(method, path, Some(&json!({})));
        assert_eq!(status, 501, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "not_implemented", "{path}: {answer}");
    }

    // A session alone cannot open sessions, see another session, or outlive its end.
    let (status, _) = skill.send("POST", "/api/v1/sessions/create", Some(&json!({})));
    assert_eq!(status, 403);
    let other = agent.expect("POST", "/api/v1/sessions/create", Some(json!({ "session_type": "guest" })), 201, &[("session_id", "string")]);
    let (status, _) = skill.send("GET", &format!("/api/v1/sessions/{}", other["session_id"].as_str().unwrap()), None);
    assert_eq!(status, 403);
    let stranger = Client { serve: &serve, headers: vec![("X-Session-ID".into(), "sess_guessed".into())] };
    let (status, _) = stranger.send("GET", "/api/v1/calls", None);
    assert_eq!(status, 401);
    let gone = agent.expect("DELETE", &format!("/api/v1/sessions/{session_id}"), None, 200, &[("success", "boolean"), ("message", "string"), ("final_balance.minutes", "integer"), ("final_balance.refund_available", "boolean")]);
    assert!(gone["message"].as_str().unwrap().contains("cleared"));
    let (status, _) = skill.send("GET", "/api/v1/calls", None);
    assert_eq!(status, 401, "an ended session authenticates nothing");
    let (_, cleared) = crate::api::get(&serve, &key, &format!("/v1/calls/{call_id}"));
    assert_eq!(cleared["error"]["code"], "not_found", "ending the session cleared its calls");
    assert_eq!(agent.send_ours("GET", &batch_path, None).0, 404, "and its batches");
    exercised_every_supported("Ringez");
    let (_, doc) = crate::api::get(&serve, &key, "/v1/openapi.json");
    assert_eq!(doc["paths"]["/api/v1/calls/initiate"]["post"]["tags"], json!(["ringez"]), "Ringez's paths are in the OpenAPI document under their tag");
    assert_eq!(doc["paths"]["/v1/calling/outbound/individual"]["post"]["tags"], json!(["ringg"]));
}

/// Batches, scheduled calls and queues: placed for the session by the campaign driver, each call
/// the session's and the agent's; bad requests name the request's own fields.
/// Returns the batch's path (ending the session clears it).
fn ringez_jobs(serve: &Serve, agent: &Client, skill: &Client, session_id: &str, outsider_key: &str) -> String {
    let job = |path: &str| agent.send_ours("GET", path, None).1;
    let wait_job = |path: &str, what: &str, done: &dyn Fn(&Value) -> bool| {
        let mut body = Value::Null;
        wait_until(Duration::from_secs(60), what, || {
            body = job(path);
            done(&body)
        });
        body
    };

    // A batch as the reference writes it (sandbox numbers: one never answers, one is busy).
    let batch = agent.expect(
        "POST",
        "/api/v1/batch/calls",
        Some(json!({
            "session_id": session_id,
            "calls": [
                { "to_number": "+15005550001", "metadata": { "customer_id": "cust_001", "task": "I'd like to book a table for two at 7 pm." } },
                { "to_number": "+15005550002", "metadata": { "customer_id": "cust_002" } },
            ],
            "call_settings": { "max_duration": 300, "transcribe": true },
        })),
        201,
        &[("batch_id", "string"), ("status", "string"), ("total_calls", "integer"), ("calls[].call_id", "string"), ("calls[].to_number", "string"), ("calls[].status", "string")],
    );
    assert_eq!((batch["status"].as_str(), batch["total_calls"].as_i64()), (Some("processing"), Some(2)), "both placed at once: {batch}");
    let batch_path = format!("/api/v1/batch/{}", batch["batch_id"].as_str().unwrap());
    let done = wait_job(&batch_path, "the batch ends", &|b| b["status"] == "completed");
    let statuses: Vec<&str> = done["calls"].as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["no-answer", "busy"], "{done}");
    let first = done["calls"][0]["call_id"].as_str().unwrap();
    let call = agent.expect("GET", &format!("/api/v1/calls/{first}"), None, 200, &[("call_id", "string"), ("status", "string")]);
    assert_eq!((call["session_id"].as_str(), call["agent_id"].as_str()), (Some(session_id), Some("voice-assistant-v1")), "the session's and the agent's call: {call}");
    let (_, detail) = agent.send_ours("GET", &format!("/v1/calls/{first}"), None);
    assert_eq!(detail["metadata"]["customer_id"], "cust_001", "the call's metadata as given: {detail}");
    assert_eq!(detail["dynamic_variables"]["task"], "I'd like to book a table for two at 7 pm.", "the errand reaches call_for_user's `task`: {detail}");
    assert_eq!(skill.send_ours("GET", &batch_path, None).0, 200, "the session reads its own batch");
    for (body, field) in [
        (json!({ "calls": [{ "to_number": "12" }] }), "calls[0].to_number"),
        // With a session whose budget is checked against the first number.
        (json!({ "session_id": session_id, "calls": [{ "to_number": "12" }] }), "calls[0].to_number"),
        (json!({ "calls": [{ "to_number": "+15005550001" }, { "to_number": "+19002221234" }] }), "calls[1].to_number"),
        (json!({ "calls": [] }), "calls"),
        (json!({ "calls": [{ "to_number": "+15005550001", "priority": 2 }] }), "calls[0].priority"),
        (json!({ "calls": [{ "to_number": "+15005550001", "metadata": [1] }] }), "calls[0].metadata"),
        (json!({ "calls": [{ "to_number": "+15005550001" }], "call_settings": { "transcribe": false } }), "call_settings.transcribe"),
        (json!({ "calls": [{ "to_number": "+15005550001" }], "queue_settings": { "concurrent_limit": 1 } }), "queue_settings"),
    ] {
        let (status, error) = agent.send("POST", "/api/v1/batch/calls", Some(&body));
        assert_eq!((status / 100, error["error"]["field"].as_str()), (4, Some(field)), "{body}: {error}");
    }

    // A scheduled call as the reference writes it (its date a day ahead), read and canceled.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT09:00:00Z").to_string();
    let scheduled = agent.expect(
        "POST",
        "/api/v1/scheduled-calls",
        Some(json!({
            "session_id": session_id,
            "to_number": "+14155551234",
            "scheduled_time": tomorrow,
            "timezone": "America/Los_Angeles",
            "retry_policy": { "max_attempts": 3, "retry_interval": 300 },
            "call_settings": { "transcribe": true },
        })),
        201,
        &[("scheduled_call_id", "string"), ("to_number", "string"), ("scheduled_time", "string"), ("status", "string"), ("created_at", "string")],
    );
    assert_eq!(scheduled["status"], "scheduled", "{scheduled}");
    let scheduled_path = format!("/api/v1/scheduled-calls/{}", scheduled["scheduled_call_id"].as_str().unwrap());
    assert_eq!(job(&scheduled_path)["call_id"], Value::Null, "nothing is placed before its time");
    let (status, canceled) = agent.send_ours("DELETE", &scheduled_path, None);
    assert_eq!((status, canceled["status"].as_str()), (200, Some("canceled")), "{canceled}");
    for (body, field) in [
        (json!({ "to_number": "+14155551234", "scheduled_time": "2026-02-06T09:00:00Z" }), "scheduled_time"),
        (json!({ "to_number": "+14155551234", "scheduled_time": tomorrow, "retry_policy": { "max_attempts": 9 } }), "retry_policy.max_attempts"),
        (json!({ "to_number": "+14155551234", "scheduled_time": "2030-01-01T09:00:00", "timezone": "Mars/Olympus" }), "timezone"),
        (json!({ "to_number": "+14155551234", "scheduled_time": "next week" }), "scheduled_time"),
    ] {
        let (status, error) = agent.send("POST", "/api/v1/scheduled-calls", Some(&body));
        assert_eq!((status / 100, error["error"]["field"].as_str()), (4, Some(field)), "{body}: {error}");
    }
    // One due in a moment to a busy number: placed at its time, and again by its retry policy.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let busy = agent.expect(
        "POST",
        "/api/v1/scheduled-calls",
        Some(json!({ "to_number": "+15005550002", "scheduled_time": soon, "retry_policy": { "max_attempts": 2, "retry_interval": 1 } })),
        201,
        &[("scheduled_call_id", "string"), ("status", "string")],
    );
    let busy_path = format!("/api/v1/scheduled-calls/{}", busy["scheduled_call_id"].as_str().unwrap());
    let ended = wait_job(&busy_path, "the scheduled call is tried twice", &|b| b["status"] == "busy");
    assert_eq!(ended["attempts"], 2, "{ended}");

    // A queue as the reference writes it, the higher priority called first, one at a time.
    let queue = agent.expect(
        "POST",
        "/api/v1/queue/add",
        Some(json!({
            "session_id": session_id,
            "calls": [
                { "to_number": "+15005550001", "priority": 1, "max_wait_time": 300 },
                { "to_number": "+15005550002", "priority": 5, "max_wait_time": 300 },
            ],
            "queue_settings": { "concurrent_limit": 1, "retry_failed": false },
        })),
        201,
        &[("queue_id", "string"), ("status", "string"), ("calls[].priority", "integer"), ("calls[].status", "string")],
    );
    let queue_path = format!("/api/v1/queue/{}", queue["queue_id"].as_str().unwrap());
    // A second queue of the session's at once: the limit counts the calls of both, and its
    // higher priority goes before the first queue's lower.
    let second = agent.expect(
        "POST",
        "/api/v1/queue/add",
        Some(json!({ "session_id": session_id, "calls": [{ "to_number": "+15005550002", "priority": 9 }], "queue_settings": { "concurrent_limit": 1 } })),
        201,
        &[("queue_id", "string"), ("status", "string")],
    );
    let second_path = format!("/api/v1/queue/{}", second["queue_id"].as_str().unwrap());
    let done = wait_job(&queue_path, "the queue ends", &|q| q["status"] == "completed");
    let second = wait_job(&second_path, "the second queue ends", &|q| q["status"] == "completed");
    let times = |call: &Value| {
        let id = call["call_id"].as_str().unwrap();
        let detail = agent.send_ours("GET", &format!("/v1/calls/{id}"), None).1;
        (detail["created_at"].as_str().unwrap().to_string(), detail["ended_at"].as_str().unwrap_or_default().to_string())
    };
    let (first, then, other) = (times(&done["calls"][0]), times(&done["calls"][1]), times(&second["calls"][0]));
    assert!(then.0 < first.0, "priority 5 before priority 1: {done}");
    assert!(other.0 < first.0, "the other queue's priority 9 before priority 1: {done} {second}");
    let mut calls = vec![first, then, other];
    calls.sort();
    for pair in calls.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "one call at a time across the session's queues (placed, ended): {calls:?}");
    }
    let (status, error) = agent.send("POST", "/api/v1/queue/add", Some(&json!({ "calls": [{ "to_number": "+15005550001" }], "queue_settings": { "concurrent_limit": 500 } })));
    assert_eq!((status, error["error"]["field"].as_str()), (422, Some("queue_settings.concurrent_limit")), "{error}");

    // Another workspace sees none of them.
    assert_eq!(crate::api::get(serve, outsider_key, &batch_path).0, 404);
    batch_path
}

/// The README's support table is rendered from [`OPERATIONS`]; `RINGLINE_BLESS=1` rewrites it.
#[test]
fn the_readme_table_is_rendered_from_the_suite() {
    let mut table = String::from("| Reference | Operation | Ringline |\n|---|---|---|\n");
    for op in OPERATIONS {
        let support = match op.support {
            Support::Full => "supported",
            Support::Partial => "partly",
            Support::NotYet => "not yet",
        };
        let note = if op.note.is_empty() { String::new() } else { format!(": {}", op.note) };
        table.push_str(&format!("| {} | `{} {}` | {support}{note} |\n", op.document, op.method, op.path));
    }
    let readme_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (start, end) = ("<!-- dialects:start -->\n", "<!-- dialects:end -->");
    let (Some(a), Some(b)) = (readme.find(start), readme.find(end)) else { panic!("README.md has no {start:?} … {end:?} section") };
    let current = &readme[a + start.len()..b];
    if std::env::var("RINGLINE_BLESS").is_ok() {
        let updated = format!("{}{table}{}", &readme[..a + start.len()], &readme[b..]);
        std::fs::write(&readme_path, updated).unwrap();
        return;
    }
    assert_eq!(current, table, "README.md's dialect table is out of date: run RINGLINE_BLESS=1 cargo test the_readme_table");
}
