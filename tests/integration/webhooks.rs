//! Webhooks end to end: `ringline serve` delivers a call's events to a real HTTP receiver on
//! loopback (a stand-in for a customer's endpoint), signed, retried after failures, and still
//! delivered after the server is killed mid-way and started again.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{create_key, get, post, repo_assistants, Database, Serve};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// An HTTP/1.1 receiver on loopback: answers a request to a path with the next status queued
/// for that path (200 once there is none) and keeps what it got.
pub struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(listener: TcpListener, statuses: Vec<(&'static str, u16)>) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let queue = Arc::new(Mutex::new(VecDeque::from(statuses)));
        let kept = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (kept, queue) = (kept.clone(), queue.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut headers = Vec::new();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = header.trim_end().split_once(':') {
                            headers.push((k.trim().to_string(), v.trim().to_string()));
                        }
                    }
                    let length = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse::<usize>().ok()).unwrap_or(0);
                    let mut body = vec![0u8; length];
                    let _ = reader.read_exact(&mut body);
                    let status = {
                        let mut queue = queue.lock().unwrap();
                        match queue.iter().position(|(p, _)| *p == path) {
                            Some(at) => queue.remove(at).map(|(_, status)| status).unwrap_or(200),
                            None => 200,
                        }
                    };
                    kept.lock().unwrap().push(Received { path, headers, body: String::from_utf8_lossy(&body).into_owned() });
                    let _ = write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                });
            }
        });
        Receiver { port, got }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what arrived (bounded).
    pub fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(started.elapsed() < limit, "{what} did not arrive within {limit:?}; got {:#?}", got.iter().map(|r| (r.path.clone(), r.json()["type"].clone())).collect::<Vec<_>>());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Checks `X-Ringline-Signature` as a receiver would: HMAC-SHA256 of "<t>.<body>".
fn verify(received: &Received, secret: &str) {
    let header = received.header("X-Ringline-Signature").expect("every delivery is signed");
    let t = header.split(',').find_map(|p| p.strip_prefix("t=")).expect("t=").to_string();
    let v1 = header.split(',').find_map(|p| p.strip_prefix("v1=")).expect("v1=").to_string();
    let key = openssl::pkey::PKey::hmac(secret.as_bytes()).unwrap();
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    signer.update(format!("{t}.{}", received.body).as_bytes()).unwrap();
    assert_eq!(v1, hex::encode(signer.sign_to_vec().unwrap()), "the signature of {} verifies", received.path);
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..120).contains(&age), "the timestamp is fresh: {age} s");
    assert_eq!(received.header("X-Ringline-Event-Id"), received.json()["id"].as_str(), "the event id is in a header and the body");
}

fn events_at(got: &[Received], path: &str) -> Vec<String> {
    got.iter().filter(|r| r.path == path).map(|r| r.json()["type"].as_str().unwrap_or("").to_string()).collect()
}

/// A sandbox call to the number that does not answer: queued, ringing, no-answer.
fn place_unanswered_call(serve: &Serve, key: &str, webhook_url: Option<&str>) -> String {
    let mut request = json!({ "assistant_id": "luigis_booking", "to_number": "+15005550001" });
    if let Some(url) = webhook_url {
        request["webhook_url"] = url.into();
    }
    let (status, call) = post(serve, key, "/v1/calls/outbound", request);
    assert_eq!(status, 201, "{call}");
    call["call_id"].as_str().or(call["id"].as_str()).expect("a call id").to_string()
}

#[test]
fn events_are_signed_retried_after_a_500_listed_and_resent() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    // The subscription's first delivery is refused with a 500.
    let receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").unwrap(), vec![("/sub", 500)]);

    for (body, field) in [
        (json!({ "url": "ftp://example.com/x", "events": ["call.completed"] }), "url"),
        (json!({ "url": receiver.url("/sub"), "events": ["call.exploded"] }), "events"),
        (json!({ "url": receiver.url("/sub"), "events": [] }), "events"),
        (json!({ "url": receiver.url("/sub"), "events": ["*"], "secret": "short" }), "secret"),
    ] {
        let (status, error) = post(&serve, &key, "/v1/webhooks", body);
        assert_eq!((status, error["error"]["field"].as_str()), (422, Some(field)), "{error}");
    }
    let (status, hook) = post(&serve, &key, "/v1/webhooks", json!({ "url": receiver.url("/sub"), "events": ["call.initiated", "call.failed"] }));
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().expect("the secret, once").to_string();
    let id = hook["id"].as_str().unwrap().to_string();
    let (_, listed) = get(&serve, &key, "/v1/webhooks");
    assert!(listed["webhooks"][0]["secret"].is_null(), "the secret is not shown again: {listed}");
    let (_, signing) = get(&serve, &key, "/v1/webhooks/signing-secret");
    let signing = signing["secret"].as_str().unwrap().to_string();

    let call = place_unanswered_call(&serve, &key, Some(&receiver.url("/call")));
    // The subscription's first delivery got the 500 and comes again after its back-off (~5 s).
    let got = receiver.wait_for(Duration::from_secs(40), "the retried call.failed", |got| {
        events_at(got, "/sub").iter().filter(|e| *e == "call.failed").count() >= 1 && events_at(got, "/call").contains(&"call.failed".to_string()) && events_at(got, "/sub").len() >= 3
    });
    for received in &got {
        verify(received, if received.path == "/sub" { &secret } else { &signing });
        assert_eq!(received.json()["data"]["call_id"], call.as_str());
    }
    assert_eq!(events_at(&got, "/call"), vec!["call.initiated", "call.ringing", "call.failed"], "the call's own webhook_url gets every event, in order");
    let sub = events_at(&got, "/sub");
    assert!(sub.iter().all(|e| e == "call.initiated" || e == "call.failed"), "only what was subscribed: {sub:?}");
    let first = got.iter().find(|r| r.path == "/sub").unwrap();
    let again: Vec<&Received> = got.iter().filter(|r| r.path == "/sub" && r.json()["id"] == first.json()["id"]).collect();
    assert_eq!(again.len(), 2, "the refused delivery came again");
    assert_eq!(again[0].body, again[1].body, "with the same body and event id");
    let failed = got.iter().find(|r| r.path == "/call" && r.json()["type"] == "call.failed").unwrap().json();
    assert_eq!(failed["data"]["status"], "no-answer", "{failed}");

    let (status, list) = get(&serve, &key, &format!("/v1/webhooks/{id}/deliveries"));
    assert_eq!(status, 200);
    let deliveries = list["deliveries"].as_array().unwrap();
    assert!(deliveries.iter().all(|d| d["state"] == "delivered"), "{list}");
    assert!(deliveries.iter().any(|d| d["attempts"] == 2), "one took two attempts: {list}");

    // Sent again on request: the same event once more.
    let delivery = deliveries[0]["id"].as_str().unwrap();
    let event_id = deliveries[0]["event_id"].as_str().unwrap().to_string();
    let count = |got: &[Received]| got.iter().filter(|r| r.json()["id"] == event_id.as_str()).count();
    // Counted before asking: the loop is woken at once and may deliver before this returns.
    let before = count(&receiver.received());
    let (status, resent) = post(&serve, &key, &format!("/v1/webhook-deliveries/{delivery}/resend"), json!({}));
    assert_eq!(status, 202, "{resent}");
    receiver.wait_for(Duration::from_secs(10), "the resent delivery", |got| count(got) > before);

    // Another workspace sees none of it.
    let other = create_key(&db, "other", &[]);
    let (status, _) = get(&serve, &other, &format!("/v1/webhooks/{id}"));
    assert_eq!(status, 404);
    let (_, theirs) = get(&serve, &other, "/v1/webhook-deliveries");
    assert_eq!(theirs["deliveries"].as_array().map(Vec::len), Some(0));
    let (status, _, _) = crate::api::http("DELETE", &serve.url(&format!("/v1/webhooks/{id}")), Some(&key), None);
    assert_eq!(status, 204);
}

#[test]
fn a_delivery_pending_when_the_server_is_killed_arrives_after_a_restart() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    // A port with nobody listening yet: every attempt fails to connect.
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    drop(reserved);
    let url = format!("http://127.0.0.1:{port}/hook");
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let (status, hook) = post(&serve, &key, "/v1/webhooks", json!({ "url": url, "events": ["*"] }));
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_string();
    let call = place_unanswered_call(&serve, &key, None);
    // Wait until the final event exists and has failed at least once.
    let started = Instant::now();
    loop {
        let (_, list) = get(&serve, &key, "/v1/webhook-deliveries");
        let failed_once = list["deliveries"].as_array().unwrap().iter().any(|d| d["event"] == "call.failed" && d["attempts"].as_i64() >= Some(1) && d["state"] == "pending");
        if failed_once {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no failed attempt recorded: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
    serve.crash();

    let receiver = Receiver::start(TcpListener::bind(("127.0.0.1", port)).unwrap(), vec![]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let got = receiver.wait_for(Duration::from_secs(60), "every event after the restart", |got| {
        let events = events_at(got, "/hook");
        ["call.initiated", "call.ringing", "call.failed"].iter().all(|e| events.contains(&e.to_string()))
    });
    for received in &got {
        verify(received, &secret);
        assert_eq!(received.json()["data"]["call_id"], call.as_str());
    }
    // At least once, never altered: any event that came twice came with the same body.
    for a in &got {
        for b in &got {
            if a.json()["id"] == b.json()["id"] {
                assert_eq!(a.body, b.body);
            }
        }
    }
    drop(serve);
}

#[test]
fn a_key_cannot_point_webhooks_at_internal_addresses() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    // No egress allowance: only public receivers.
    let serve = Serve::start_with(&db, &repo_assistants(), &[], &[]);
    for url in ["http://127.0.0.1:9/x", "http://169.254.169.254/latest", "http://[::1]/x", "http://10.0.0.1/x"] {
        let (status, body) = post(&serve, &key, "/v1/webhooks", json!({ "url": url, "events": ["*"] }));
        assert_eq!((status, body["error"]["field"].as_str()), (422, Some("url")), "{url}: {body}");
    }
    let (_, list) = get(&serve, &key, "/v1/webhooks");
    assert_eq!(list["webhooks"].as_array().map(Vec::len), Some(0));
}
