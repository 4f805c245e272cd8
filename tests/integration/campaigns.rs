//! Campaigns end to end: `ringline serve` calls a list of sandbox contacts through the real
//! pipeline, a few at a time, retries the ones that did not answer, and reports — by status
//! and by signed webhooks to a receiver on loopback; bad launches are refused naming the
//! field and store nothing; a schedule holds calls back; two workers on one PostgreSQL call
//! each contact once.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{assistant_spec, create_key, get, post, repo_assistants, Database, Serve};
use crate::standin::{self, Reply};
use crate::webhooks::Receiver;

fn wait_campaign(serve: &Serve, key: &str, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, body) = get(serve, key, &format!("/v1/campaigns/{id}/status?limit=100"));
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(start.elapsed() < limit, "campaign {id} did not get there within {limit:?}: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn contact(phone: &str, name: &str) -> Value {
    json!({ "phone": phone, "name": name, "custom_fields": { "customer_name": name, "policy_number": format!("POL-{name}") } })
}

fn calls_of(serve: &Serve, key: &str) -> Vec<Value> {
    let (_, history) = get(serve, key, "/v1/calls/history?limit=100");
    history["calls"].as_array().cloned().unwrap_or_default()
}

/// The most calls whose [created, ended] spans overlap at one moment.
fn most_at_once(calls: &[Value], serve: &Serve, key: &str) -> usize {
    let spans: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            let (_, detail) = get(serve, key, &format!("/v1/calls/{}", c["call_id"].as_str().unwrap()));
            (detail["created_at"].as_str().unwrap().to_string(), detail["ended_at"].as_str().unwrap_or("9999").to_string())
        })
        .collect();
    spans.iter().map(|(start, _)| spans.iter().filter(|(s, e)| s <= start && start < e).count()).max().unwrap_or(0)
}

#[test]
fn a_campaign_calls_its_contacts_retries_and_reports() {
    let llm = standin::llm(vec![Reply::Text("Thank you, your renewal is noted."), Reply::Text("The caller confirmed.")]);
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &["--rate-limit", "1000"]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").unwrap(), vec![]);
    let (status, created) = post(&serve, &key, "/v1/assistants", assistant_spec(&llm));
    assert_eq!(status, 201, "{created}");
    let assistant = created["id"].as_str().unwrap().to_string();

    // Bad launches name the field and store nothing.
    let good = || vec![contact("+15005550006", "Dana"), contact("+15005550001", "Eve")];
    let launch = |extra: Value, contacts: Vec<Value>| {
        let mut body = json!({ "campaign_id": "spring", "assistant_id": assistant, "contacts": contacts });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        post(&serve, &key, "/v1/campaigns/launch", body)
    };
    let many: Vec<Value> = (0..1001).map(|i| json!({ "phone": format!("+1415555{:04}", i), "custom_fields": { "customer_name": "X" } })).collect();
    for (extra, contacts, field) in [
        (json!({}), vec![contact("+15005550006", "Dana"), json!({ "phone": "12", "custom_fields": { "customer_name": "Bo" } })], "contacts[1].phone"),
        (json!({}), vec![contact("+15005550006", "Dana"), json!({ "phone": "+15005550007", "name": "Bo" })], "contacts[1].custom_fields.customer_name"),
        (json!({}), vec![contact("+15005550006", "Dana"), contact("+1 500 555 0006", "Dana")], "contacts[1].phone"),
        (json!({}), vec![], "contacts"),
        (json!({}), many, "contacts"),
        (json!({ "concurrency": 500 }), good(), "concurrency"),
        (json!({ "concurrency": "many" }), good(), "concurrency"),
        (json!({ "surprise": 1 }), good(), "surprise"),
        (json!({ "retry": { "max_attempts": 50 } }), good(), "retry.max_attempts"),
        (json!({ "schedule": { "end_time": "2020-01-01T00:00:00Z" } }), good(), "schedule.end_time"),
        (json!({ "schedule": { "start_time": "2030-01-01T09:00:00" } }), good(), "schedule.start_time"),
        (json!({ "schedule": { "timezone": "Mars/Olympus" } }), good(), "schedule.timezone"),
        (json!({ "webhook_url": "http://169.254.169.254/latest/meta-data" }), good(), "webhook_url"),
    ] {
        let (status, error) = launch(extra, contacts);
        assert!((400..500).contains(&status), "{error}");
        assert_eq!(error["error"]["field"].as_str(), Some(field), "{error}");
    }
    let (status, error) = post(&serve, &key, "/v1/campaigns/launch", json!({ "campaign_id": "nope", "contacts": good() }));
    assert_eq!((status, error["error"]["field"].as_str()), (404, Some("campaign_id")), "{error}");
    let (_, listed) = get(&serve, &key, "/v1/campaigns");
    assert_eq!(listed["total"], 0, "nothing was stored: {listed}");
    assert!(calls_of(&serve, &key).is_empty());

    // A draft, then its launch: an answering contact, and three that never answer, are busy
    // and fail — each tried twice.
    let (status, draft) = post(
        &serve,
        &key,
        "/v1/campaigns",
        json!({ "campaign_id": "spring", "name": "Spring renewals", "assistant_id": assistant, "concurrency": 2, "retry": { "max_attempts": 2, "interval_s": 1 }, "webhook_url": receiver.url("/campaign") }),
    );
    assert_eq!((status, draft["status"].as_str()), (201, Some("draft")), "{draft}");
    let (status, again) = post(&serve, &key, "/v1/campaigns", json!({ "campaign_id": "spring", "assistant_id": assistant }));
    assert_eq!((status, again["error"]["code"].as_str()), (409, Some("campaign_exists")), "{again}");
    let contacts = vec![contact("+15005550006", "Dana"), contact("+15005550001", "Eve"), contact("+15005550002", "Bo"), contact("+15005550003", "Cy")];
    let (status, launched) = post(&serve, &key, "/v1/campaigns/launch", json!({ "campaign_id": "spring", "contacts": contacts }));
    assert_eq!(status, 201, "{launched}");
    assert_eq!((launched["total_contacts"].as_i64(), launched["concurrency"].as_i64()), (Some(4), Some(2)), "{launched}");
    let (status, twice) = post(&serve, &key, "/v1/campaigns/launch", json!({ "campaign_id": "spring", "contacts": good() }));
    assert_eq!((status, twice["error"]["code"].as_str()), (409, Some("campaign_launched")), "{twice}");

    let done = wait_campaign(&serve, &key, "spring", Duration::from_secs(180), |c| c["status"] == "completed");
    let counts = &done["counts"];
    assert_eq!((counts["completed"].as_i64(), counts["no-answer"].as_i64(), counts["busy"].as_i64(), counts["failed"].as_i64()), (Some(1), Some(1), Some(1), Some(1)), "{done}");
    assert_eq!((done["progress"]["percent"].as_i64(), done["contacts"].as_array().map(Vec::len)), (Some(100), Some(4)), "{done}");
    let by_phone = |phone: &str| done["contacts"].as_array().unwrap().iter().find(|c| c["phone"] == phone).cloned().unwrap();
    assert_eq!(by_phone("+15005550006")["attempts"], 1, "{done}");
    for phone in ["+15005550001", "+15005550002", "+15005550003"] {
        assert_eq!(by_phone(phone)["attempts"], 2, "retried once: {done}");
    }
    // The answered call ran the assistant with the contact's fields, and carries them.
    let answered = by_phone("+15005550006");
    let (_, call) = get(&serve, &key, &format!("/v1/calls/{}", answered["call_id"].as_str().unwrap()));
    assert_eq!((call["status"].as_str(), call["campaign_id"].as_str()), (Some("completed"), Some("spring")), "{call}");
    assert_eq!((call["metadata"]["campaign_id"].as_str(), call["metadata"]["contact"]["custom_fields"]["policy_number"].as_str()), (Some("spring"), Some("POL-Dana")), "{call}");
    let (_, transcript) = get(&serve, &key, &format!("/v1/calls/{}/transcript", answered["call_id"].as_str().unwrap()));
    assert!(transcript.to_string().to_lowercase().contains("hello dana"), "the first message used the contact's variable: {transcript}");
    let calls = calls_of(&serve, &key);
    assert_eq!(calls.len(), 7, "one call to the answering contact, two to each other");
    let (_, history) = get(&serve, &key, "/v1/calls/history?campaign_id=spring&status=no-answer");
    assert_eq!(history["total"], 2, "the history filters by campaign: {history}");
    assert!(history["calls"].as_array().unwrap().iter().all(|c| c["campaign_id"] == "spring"), "{history}");
    let (_, none) = get(&serve, &key, "/v1/calls/history?campaign_id=autumn");
    assert_eq!(none["total"], 0, "{none}");
    assert!(most_at_once(&calls, &serve, &key) <= 2, "never more than the campaign's concurrency at once");

    // The campaign's webhook_url got its events, signed, started first and completed last.
    let got = receiver.wait_for(Duration::from_secs(30), "campaign.completed", |got| got.iter().any(|r| r.json()["type"] == "campaign.completed"));
    let kinds: Vec<String> = got.iter().map(|r| r.json()["type"].as_str().unwrap_or_default().to_string()).collect();
    let campaign_events: Vec<&String> = kinds.iter().filter(|k| k.starts_with("campaign.")).collect();
    assert_eq!(campaign_events, vec!["campaign.started", "campaign.completed"], "{kinds:?}");
    assert!(kinds.iter().filter(|k| *k == "call.completed").count() == 1 && kinds.iter().any(|k| k == "call.failed"), "its calls' events too: {kinds:?}");
    assert!(got.iter().all(|r| r.header("X-Ringline-Signature").is_some()), "signed");
    let completed = got.iter().find(|r| r.json()["type"] == "campaign.completed").unwrap().json();
    assert_eq!((completed["data"]["campaign_id"].as_str(), completed["data"]["counts"]["completed"].as_i64()), (Some("spring"), Some(1)), "{completed}");

    // Listed; another workspace sees nothing; an ended campaign cannot be canceled.
    let (_, listed) = get(&serve, &key, "/v1/campaigns");
    assert_eq!((listed["total"].as_i64(), listed["campaigns"][0]["name"].as_str()), (Some(1), Some("Spring renewals")), "{listed}");
    let other = create_key(&db, "globex", &[]);
    assert_eq!(get(&serve, &other, "/v1/campaigns/spring/status").0, 404);
    assert_eq!(post(&serve, &other, "/v1/campaigns/spring/cancel", json!({})).0, 404);
    let (status, ended) = post(&serve, &key, "/v1/campaigns/spring/cancel", json!({}));
    assert_eq!((status, ended["error"]["code"].as_str()), (409, Some("campaign_ended")), "{ended}");
}

#[test]
fn a_scheduled_campaign_waits_and_a_canceled_one_calls_no_one() {
    let llm = standin::llm(vec![Reply::Text("Hello.")]);
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &["--rate-limit", "1000"]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let (_, created) = post(&serve, &key, "/v1/assistants", assistant_spec(&llm));
    let assistant = created["id"].as_str().unwrap().to_string();

    // Contacts from a spreadsheet's CSV: an error names its line and column.
    let (status, error) = post(&serve, &key, "/v1/campaigns/launch", json!({ "assistant_id": assistant, "contacts_csv": "phone,name,customer_name\n+15005550001,Eve,Eve\n+15005550002,Bo,\n" }));
    assert_eq!((status, error["error"]["field"].as_str()), (422, Some("contacts_csv")), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("line 3, column `customer_name`"), "{error}");

    // Tomorrow, 09:00 to 18:00 in Kolkata, from CSV: nothing is dialed now.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let (status, launched) = post(
        &serve,
        &key,
        "/v1/campaigns/launch",
        json!({
            "assistant_id": assistant, "contacts_csv": "phone,name,customer_name,policy_number\n+15005550001,Eve,Eve,P-1\n+15005550002,\"Bo, Jr.\",Bo,P-2\n",
            "schedule": { "start_time": format!("{tomorrow}T09:00:00"), "end_time": format!("{tomorrow}T18:00:00"), "timezone": "Asia/Kolkata" }
        }),
    );
    assert_eq!(status, 201, "{launched}");
    let id = launched["campaign_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("camp_"), "an id was made: {launched}");
    assert_eq!(launched["schedule"]["start_time"].as_str(), Some(format!("{tomorrow}T03:30:00.000Z").as_str()), "09:00 in Kolkata is 03:30 UTC: {launched}");
    std::thread::sleep(Duration::from_secs(3));
    let waiting = wait_campaign(&serve, &key, &id, Duration::from_secs(5), |_| true);
    assert_eq!((waiting["status"].as_str(), waiting["counts"]["pending"].as_i64()), (Some("scheduled"), Some(2)), "{waiting}");
    assert!(calls_of(&serve, &key).is_empty(), "nothing dialed before the start");
    assert_eq!((waiting["contacts"][1]["name"].as_str(), waiting["contacts"][1]["custom_fields"]["policy_number"].as_str()), (Some("Bo, Jr."), Some("P-2")), "{waiting}");

    // Canceled: its contacts are never called.
    let (status, canceled) = post(&serve, &key, &format!("/v1/campaigns/{id}/cancel"), json!({}));
    assert_eq!((status, canceled["status"].as_str(), canceled["counts"]["canceled"].as_i64()), (200, Some("canceled"), Some(2)), "{canceled}");

    // A campaign whose end comes while its first contact is still being tried: the rest are
    // skipped. One call at a time, the first number retried every 30 s.
    let end = (chrono::Utc::now() + chrono::Duration::seconds(4)).to_rfc3339();
    let (status, short) = post(
        &serve,
        &key,
        "/v1/campaigns/launch",
        json!({ "assistant_id": assistant, "retry": { "max_attempts": 3, "interval_s": 30 }, "contacts": [contact("+15005550001", "Eve"), contact("+15005550002", "Bo")], "schedule": { "end_time": end } }),
    );
    assert_eq!(status, 201, "{short}");
    let id = short["campaign_id"].as_str().unwrap().to_string();
    let done = wait_campaign(&serve, &key, &id, Duration::from_secs(30), |c| c["status"] == "completed");
    assert_eq!(done["contacts"][0]["status"], "skipped", "its retry fell after the end: {done}");
    assert_eq!(done["contacts"][0]["attempts"], 1, "{done}");
    assert!(done["contacts"][1]["status"] == "skipped" || done["contacts"][1]["status"] == "busy", "{done}");
    let calls = calls_of(&serve, &key);
    assert!(!calls.is_empty() && calls.len() <= 2, "{calls:?}");

    // Calling hours that are not now in the campaign's zone: its contact waits for them to
    // open; a contact whose own zone is within them now is called.
    let hour = (chrono::Timelike::hour(&chrono::Utc::now()) + 6) % 24;
    let (from, to, ahead) = if hour == 23 { (22, 23, 5) } else { (hour, hour + 1, 6) };
    let mut bo = contact("+15005550002", "Bo");
    bo["timezone"] = json!(format!("Etc/GMT-{ahead}"));
    let (status, later) = post(
        &serve,
        &key,
        "/v1/campaigns/launch",
        json!({ "assistant_id": assistant, "contacts": [contact("+15005550001", "Eve"), bo], "schedule": { "timezone": "UTC", "calling_hours": { "start": format!("{from:02}:00"), "end": format!("{to:02}:00") } } }),
    );
    assert_eq!(status, 201, "{later}");
    assert_eq!(later["schedule"]["calling_hours"]["start"].as_str(), Some(format!("{from:02}:00").as_str()), "{later}");
    let id = later["campaign_id"].as_str().unwrap().to_string();
    let waiting = wait_campaign(&serve, &key, &id, Duration::from_secs(20), |c| c["counts"]["busy"] == 1);
    assert_eq!((waiting["status"].as_str(), waiting["counts"]["pending"].as_i64()), (Some("running"), Some(1)), "{waiting}");
    let eve = &waiting["contacts"][0];
    assert_eq!((eve["attempts"].as_i64(), eve["timezone"].as_str()), (Some(0), None), "{waiting}");
    assert!(eve["next_attempt_at"].as_str().unwrap().contains(&format!("T{from:02}:00:00")), "waits for the hours to open: {waiting}");
    let placed: Vec<Value> = calls_of(&serve, &key).into_iter().filter(|c| c["campaign_id"] == id.as_str()).collect();
    assert_eq!(placed.len(), 1, "only the contact within its own hours: {placed:?}");
    let (status, error) = post(&serve, &key, "/v1/campaigns/launch", json!({ "assistant_id": assistant, "contacts": [{ "phone": "+15005550001", "timezone": "Moon/Base", "custom_fields": { "customer_name": "X" } }] }));
    assert_eq!((status, error["error"]["field"].as_str()), (422, Some("contacts[0].timezone")), "{error}");
    assert_eq!(post(&serve, &key, &format!("/v1/campaigns/{id}/cancel"), json!({})).0, 200);

    // Paused: no new call until resumed; then it goes on to the end.
    let before = calls_of(&serve, &key).len();
    let (status, launched) = post(
        &serve,
        &key,
        "/v1/campaigns/launch",
        json!({ "assistant_id": assistant, "contacts": [contact("+15005550001", "Eve"), contact("+15005550002", "Bo"), contact("+15005550003", "Cy")] }),
    );
    assert_eq!(status, 201, "{launched}");
    let id = launched["campaign_id"].as_str().unwrap().to_string();
    let (status, paused) = post(&serve, &key, &format!("/v1/campaigns/{id}/pause"), json!({}));
    assert_eq!((status, paused["status"].as_str()), (200, Some("paused")), "{paused}");
    std::thread::sleep(Duration::from_secs(2));
    let during = calls_of(&serve, &key).len();
    assert!(during - before <= 1, "at most the call placed before the pause");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(calls_of(&serve, &key).len(), during, "no call while paused");
    let (status, resumed) = post(&serve, &key, &format!("/v1/campaigns/{id}/resume"), json!({}));
    assert_eq!(status, 200, "{resumed}");
    let done = wait_campaign(&serve, &key, &id, Duration::from_secs(30), |c| c["status"] == "completed");
    assert_eq!(done["progress"]["done"], 3, "{done}");
    assert_eq!(calls_of(&serve, &key).len(), before + 3);
    let (status, refused) = post(&serve, &key, &format!("/v1/campaigns/{id}/pause"), json!({}));
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("campaign_not_calling")), "{refused}");

    // The contacts a workspace launches in a day are bounded, canceled campaigns' too: what a
    // key makes the server store does not grow with how often it launches and cancels.
    let tomorrow_noon = format!("{tomorrow}T12:00:00Z");
    let mut refused = None;
    for round in 0..10 {
        let contacts: Vec<Value> = (0..1000).map(|i| json!({ "phone": format!("+1500555{:04}", (round * 1000 + i) % 10000), "custom_fields": { "customer_name": "X" } })).collect();
        let (status, body) = post(&serve, &key, "/v1/campaigns/launch", json!({ "assistant_id": assistant, "contacts": contacts, "schedule": { "start_time": tomorrow_noon } }));
        if status != 201 {
            refused = Some((round, status, body));
            break;
        }
        assert_eq!(post(&serve, &key, &format!("/v1/campaigns/{}/cancel", body["campaign_id"].as_str().unwrap()), json!({})).0, 200);
    }
    // The 9 contacts launched above and nine thousand make 9,009: the tenth thousand is refused.
    let (round, status, body) = refused.expect("the tenth thousand is refused");
    assert_eq!((round, status, body["error"]["code"].as_str()), (9, 429, Some("campaign_contact_limit")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("9009"), "{body}");

    // The workspace's open campaigns are bounded.
    for _ in 0..5 {
        let (status, body) = post(&serve, &key, "/v1/campaigns", json!({ "assistant_id": assistant }));
        assert_eq!(status, 201, "{body}");
    }
    let (status, refused) = post(&serve, &key, "/v1/campaigns", json!({ "assistant_id": assistant }));
    assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("campaign_limit")), "{refused}");
}

#[test]
fn two_workers_on_one_postgres_call_each_contact_once() {
    let llm = standin::llm(vec![Reply::Text("Hello.")]);
    let db = Database::postgres();
    let key = create_key(&db, "acme", &["--rate-limit", "1000"]);
    let a = Serve::start(&db, &repo_assistants(), &[]);
    let b = Serve::start(&db, &repo_assistants(), &[]);
    let (_, created) = post(&a, &key, "/v1/assistants", assistant_spec(&llm));
    let assistant = created["id"].as_str().unwrap().to_string();
    let contacts: Vec<Value> = ["+15005550001", "+15005550002", "+15005550003"].iter().enumerate().map(|(i, phone)| contact(phone, &format!("C{i}"))).collect();
    // One call at a time: only the worker holding the campaign's lease dials.
    let (status, launched) = post(&a, &key, "/v1/campaigns/launch", json!({ "campaign_id": "shared", "assistant_id": assistant, "concurrency": 1, "contacts": contacts }));
    assert_eq!(status, 201, "{launched}");
    let done = wait_campaign(&b, &key, "shared", Duration::from_secs(60), |c| c["status"] == "completed");
    assert_eq!((done["counts"]["no-answer"].as_i64(), done["counts"]["busy"].as_i64(), done["counts"]["failed"].as_i64()), (Some(1), Some(1), Some(1)), "{done}");
    assert!(done["contacts"].as_array().unwrap().iter().all(|c| c["attempts"] == 1), "{done}");
    let calls = calls_of(&b, &key);
    assert_eq!(calls.len(), 3, "each contact called once, whichever worker drove");
    assert_eq!(most_at_once(&calls, &b, &key), 1, "one call at a time across both workers");
}
