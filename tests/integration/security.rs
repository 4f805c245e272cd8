//! The API as an attacker holding one workspace's key would try it: the server's secrets,
//! its internal network, its CPU and memory, other workspaces, and inputs built to break the
//! storage or the error shape. `ringline serve` runs as a child process, as in `api.rs`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{create_key, ended, get, http, lingering_caller, post, repo_assistants, short_caller, wait_for, Database, IntoPair, Serve};
use crate::standin::{self, Reply, Response, Server};

const CANARY_VARIABLE: &str = "RINGLINE_TEST_OPERATOR_SECRET";
const CANARY: &str = "operator-canary-7f3b91";

/// A listener that records whatever reaches it (nothing should).
fn bait() -> Server {
    Server::start(|_, _| Response { status: 200, content_type: "application/json", body: b"{}".to_vec(), delay: Duration::ZERO })
}

fn tenant_assistant(llm: Value) -> Value {
    json!({ "version": 1, "name": "tenant", "system_prompt": "You are brief.", "first_message": "Hello.", "llm": llm,
            "turn": { "idle_reprompt_s": 30, "idle_hangup_s": 60, "max_duration_s": 60 } })
}

fn expect_error(status: u16, body: &Value, want_status: u16, want_code: &str, want_field: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"].as_str(), Some(want_code), "{body}");
    if let Some(field) = want_field {
        assert_eq!(body["error"]["field"].as_str(), Some(field), "{body}");
    }
}

#[test]
fn a_tenant_cannot_reach_the_servers_environment_or_internal_addresses() {
    let db = Database::sqlite();
    let key = create_key(&db, "mallory", &[]);
    // No egress allowance: the server's default.
    let serve = Serve::start_with(&db, &repo_assistants(), &[], &[(CANARY_VARIABLE, CANARY)]);
    let listener = bait();
    let port = listener.addr.port();

    // The server's environment is not a tenant's to name, set or not.
    for variable in [CANARY_VARIABLE, "NOT_SET_ANYWHERE"] {
        let spec = tenant_assistant(json!({ "provider": "openai", "base_url": "https://api.example.com/v1", "model": "m", "api_key_env": variable }));
        let (status, body) = post(&serve, &key, "/v1/assistants", spec);
        expect_error(status, &body, 422, "env_not_allowed", Some("llm.api_key_env"));
    }
    // Loopback, named or literal, in any spelling; private and metadata addresses.
    for base in [format!("http://127.0.0.1:{port}/v1"), format!("http://localhost:{port}/v1"), format!("http://[::1]:{port}/v1"), format!("http://2130706433:{port}/v1"), "http://169.254.169.254/latest".into(), "http://10.0.0.1/v1".into()] {
        let (status, body) = post(&serve, &key, "/v1/assistants", tenant_assistant(json!({ "provider": "openai", "base_url": base, "model": "m" })));
        expect_error(status, &body, 422, "egress_refused", Some("llm.base_url"));
    }
    let mut with_tool = tenant_assistant(json!({ "provider": "openai", "base_url": "https://api.example.com/v1", "model": "m" }));
    with_tool["tools"] = json!([{ "name": "lookup", "url": format!("http://127.0.0.1:{port}/orders") }]);
    let (status, body) = post(&serve, &key, "/v1/assistants", with_tool);
    expect_error(status, &body, 422, "egress_refused", Some("tools.0.url"));
    let stt = json!({ "version": 1, "name": "x", "system_prompt": "Hi.", "stt": { "provider": "openai", "model": "whisper-1", "base_url": format!("http://127.0.0.1:{port}/v1") } });
    let (status, body) = post(&serve, &key, "/v1/assistants", stt);
    expect_error(status, &body, 422, "egress_refused", Some("stt.base_url"));
    let (status, body) = post(&serve, &key, "/v1/calls/outbound", json!({
        "assistant_id": "luigis_booking", "to_number": "+15005550006", "webhook_url": format!("http://127.0.0.1:{port}/hook")
    }));
    expect_error(status, &body, 422, "invalid_field", Some("webhook_url"));
    // An unknown secret is refused when the assistant is saved, not when it calls.
    let spec = tenant_assistant(json!({ "provider": "openai", "base_url": "https://api.example.com/v1", "model": "m", "api_key_secret": "nope" }));
    let (status, body) = post(&serve, &key, "/v1/assistants", spec);
    expect_error(status, &body, 422, "unknown_secret", Some("llm.api_key_secret"));

    assert_eq!(get(&serve, &key, "/v1/assistants?limit=100").1["assistants"].as_array().unwrap().iter().filter(|a| a["source"] == "api").count(), 0, "nothing was stored");
    assert!(listener.heads().is_empty(), "the server connected to the tenant's listener: {:?}", listener.heads());
}

#[test]
fn workspace_secrets_are_sealed_scoped_and_sent_only_to_their_assistants_endpoint() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    let other = create_key(&db, "globex", &[]);
    let serve = Serve::start(&db, &repo_assistants(), &[(CANARY_VARIABLE, CANARY)]);
    let llm = standin::llm(vec![Reply::Text("We open at nine."), Reply::Text("A short call.")]);
    let value = "sk-tenant-5b2e0c77";

    let (status, created) = post(&serve, &key, "/v1/secrets", json!({ "name": "provider_key", "value": value }));
    assert_eq!((status, created["name"].as_str()), (201, Some("provider_key")), "{created}");
    assert!(!created.to_string().contains(value), "a value is never returned: {created}");
    let (status, body) = post(&serve, &key, "/v1/secrets", json!({ "name": "provider_key", "value": "again" }));
    expect_error(status, &body, 409, "secret_exists", Some("name"));
    let (status, body) = post(&serve, &key, "/v1/secrets", json!({ "name": "bad name!", "value": "x" }));
    expect_error(status, &body, 422, "invalid_field", Some("name"));
    let (status, list) = get(&serve, &key, "/v1/secrets");
    assert_eq!((status, list["total"].as_i64()), (200, Some(1)), "{list}");
    assert!(!list.to_string().contains(value), "{list}");
    let stored = std::fs::read(db.url.trim_start_matches("sqlite://")).unwrap();
    assert!(!stored.windows(value.len()).any(|w| w == value.as_bytes()), "the database holds the value in the clear");

    // Another workspace neither sees nor names it.
    assert_eq!(get(&serve, &other, "/v1/secrets").1["total"], 0);
    let spec = tenant_assistant(json!({ "provider": "openai", "base_url": llm.url("/v1"), "model": "standin", "api_key_secret": "provider_key" }));
    let (status, body) = post(&serve, &other, "/v1/assistants", spec.clone());
    expect_error(status, &body, 422, "unknown_secret", Some("llm.api_key_secret"));

    let (status, assistant) = post(&serve, &key, "/v1/assistants", spec);
    assert_eq!(status, 201, "{assistant}");
    let (status, body) = http("DELETE", &serve.url("/v1/secrets/provider_key"), Some(&key), None).into_pair();
    expect_error(status, &body, 409, "secret_in_use", None);

    let (status, call) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": assistant["id"], "to_number": "+15005550006", "metadata": { "sandbox_caller": short_caller() } }));
    assert_eq!(status, 201, "{call}");
    let done = wait_for(&serve, &key, call["call_id"].as_str().unwrap(), Duration::from_secs(120), ended);
    assert_eq!(done["status"], "completed", "{done}");
    let heads = llm.heads();
    assert!(!heads.is_empty());
    for head in &heads {
        let authorization = head.lines().find(|l| l.to_ascii_lowercase().starts_with("authorization:")).unwrap_or_default();
        assert_eq!(authorization.split_once(':').map(|(_, v)| v.trim()), Some(format!("Bearer {value}").as_str()), "{head}");
        assert!(!head.contains(CANARY), "the operator's secret left the server: {head}");
    }
    for body in llm.requests() {
        assert!(!body.to_string().contains(CANARY));
    }

    // Replace, then delete once nothing names it.
    let (status, _) = http("PUT", &serve.url("/v1/secrets/provider_key"), Some(&key), Some(r#"{"value":"sk-new"}"#)).into_pair();
    assert_eq!(status, 200);
    let (status, _) = http("PATCH", &serve.url(&format!("/v1/assistants/{}", assistant["id"].as_str().unwrap())), Some(&key), Some(r#"{"llm":{"api_key_secret":null}}"#)).into_pair();
    assert_eq!(status, 200);
    let (status, _, _) = http("DELETE", &serve.url("/v1/secrets/provider_key"), Some(&key), None);
    assert_eq!(status, 204);
    assert_eq!(get(&serve, &key, "/v1/secrets").1["total"], 0);
}

#[test]
fn limits_per_workspace_answer_429_and_403_with_their_code() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    let other = create_key(&db, "globex", &[]);
    let third = create_key(&db, "initech", &[]);
    let flags = ["--allow-egress", "127.0.0.0/8", "--max-calls-per-workspace", "1", "--max-assistants", "1", "--max-secrets", "1", "--max-numbers", "1", "--max-calls-per-minute", "3"];
    let serve = Serve::start_with(&db, &repo_assistants(), &flags, &[]);
    let llm = standin::llm(vec![Reply::Text("Hello there.")]);

    let spec = tenant_assistant(json!({ "provider": "openai", "base_url": llm.url("/v1"), "model": "standin" }));
    let (status, assistant) = post(&serve, &key, "/v1/assistants", spec.clone());
    assert_eq!(status, 201, "{assistant}");
    let (status, body) = post(&serve, &key, "/v1/assistants", spec);
    expect_error(status, &body, 403, "assistant_limit", None);
    let (status, _) = post(&serve, &key, "/v1/secrets", json!({ "name": "one", "value": "1" }));
    assert_eq!(status, 201);
    let (status, body) = post(&serve, &key, "/v1/secrets", json!({ "name": "two", "value": "2" }));
    expect_error(status, &body, 403, "secret_limit", None);
    let (status, _) = post(&serve, &key, "/v1/numbers", json!({ "number": "+15005550100" }));
    assert_eq!(status, 201);
    let (status, body) = post(&serve, &key, "/v1/numbers", json!({ "number": "+15005550101" }));
    expect_error(status, &body, 403, "number_limit", None);

    // One live call at a time for this workspace; others are not held back by it.
    let request = json!({ "assistant_id": assistant["id"], "to_number": "+15005550006", "metadata": { "sandbox_caller": lingering_caller() } });
    let (status, first) = post(&serve, &key, "/v1/calls/outbound", request.clone());
    assert_eq!(status, 201, "{first}");
    let (status, headers, body) = http("POST", &serve.url("/v1/calls/outbound"), Some(&key), Some(&request.to_string()));
    expect_error(status, &body, 429, "concurrent_call_limit", None);
    assert!(headers.get("retry-after").is_some(), "429 says when to retry");
    let (status, elsewhere) = post(&serve, &other, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550001" }));
    assert_eq!(status, 201, "another workspace has its own limit: {elsewhere}");
    let (status, _) = post(&serve, &key, &format!("/v1/calls/{}/end", first["call_id"].as_str().unwrap()), json!({}));
    assert_eq!(status, 202);
    wait_for(&serve, &key, first["call_id"].as_str().unwrap(), Duration::from_secs(60), ended);

    // Calls a minute: three unanswered calls, one after the other, then a 429.
    for _ in 0..3 {
        let (status, call) = post(&serve, &third, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550001" }));
        assert_eq!(status, 201, "{call}");
        wait_for(&serve, &third, call["call_id"].as_str().unwrap(), Duration::from_secs(30), ended);
    }
    let (status, body) = post(&serve, &third, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550001" }));
    expect_error(status, &body, 429, "call_rate_limit", None);
}

#[test]
fn templates_that_would_stall_or_flood_the_server_are_refused_at_creation() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let heavy = [
        // Nested loops: fuel runs out.
        ("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}", "too much work"),
        // A 50 MB string: the output limit.
        (r#"{{ "x" * 50000000 }}"#, "renders more than"),
        // A string doubled forty times in a few steps: the sandbox's memory limit.
        (r#"{% set ns = namespace(s="x" * 1000000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}"#, "rendering limits"),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    let base = serve.url("");
    let key_for_thread = key.clone();
    let templates: Vec<(String, String)> = heavy.iter().map(|(t, m)| (t.to_string(), m.to_string())).collect();
    let checker = std::thread::spawn(move || {
        for (template, _) in &templates {
            let body = json!({ "version": 1, "name": "heavy", "system_prompt": template }).to_string();
            let (status, _, answer) = http("POST", &format!("{base}/v1/assistants"), Some(&key_for_thread), Some(&body));
            tx.send((status, answer)).unwrap();
        }
    });
    // The API stays responsive while they are checked.
    for _ in 0..5 {
        let (status, _, health) = http("GET", &serve.url("/healthz"), None, None);
        assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    }
    checker.join().unwrap();
    for (_, expected) in heavy {
        let (status, body) = rx.recv().unwrap();
        expect_error(status, &body, 422, "invalid_field", Some("system_prompt"));
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains(expected), "{expected}: {body}");
    }
    assert_eq!(get(&serve, &key, "/v1/assistants?limit=100").1["assistants"].as_array().unwrap().iter().filter(|a| a["source"] == "api").count(), 0);

    // A flow's lines are checked in the sandbox too, all in one child.
    let flow = |line: &str| json!({ "version": 1, "name": "flow", "flow": { "start": "a", "nodes": { "a": { "say": line, "actions": ["end_call"] } } } });
    let (status, body) = post(&serve, &key, "/v1/assistants", flow(heavy[2].0));
    expect_error(status, &body, 422, "invalid_field", Some("flow.nodes.a.say"));
    let (status, body) = post(&serve, &key, "/v1/assistants", flow("Hello {{ assistant_name }}, goodbye."));
    assert_eq!(status, 201, "{body}");
}

fn control_characters_get_422(db: Database) {
    let key = create_key(&db, "acme", &[]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let (_, created) = post(&serve, &key, "/v1/assistants", json!({ "version": 1, "name": "ok", "system_prompt": "Hi." }));
    let id = created["id"].as_str().unwrap().to_string();
    let cases: [(&str, String, Value, &str); 6] = [
        ("POST", "/v1/assistants".into(), json!({ "version": 1, "name": "a\u{0}b", "system_prompt": "Hi." }), "name"),
        ("POST", "/v1/numbers".into(), json!({ "number": "+15005550100", "label": "x\u{0}" }), "label"),
        ("POST", "/v1/calls/outbound".into(), json!({ "assistant_id": &id, "to_number": "+15005550006", "idempotency_key": "k\u{0}" }), "idempotency_key"),
        ("POST", "/v1/calls/outbound".into(), json!({ "assistant_id": &id, "to_number": "+15005550006\u{0}" }), "to_number"),
        ("POST", "/v1/calls/outbound".into(), json!({ "assistant_id": &id, "to_number": "+15005550006", "metadata": { "note": "bell\u{7}" } }), "metadata.note"),
        ("POST", "/v1/calls/call_x/end".into(), json!({ "reason": "bye\u{0}" }), "reason"),
    ];
    for (method, path, body, field) in cases {
        let (status, answer) = http(method, &serve.url(&path), Some(&key), Some(&body.to_string())).into_pair();
        expect_error(status, &answer, 422, "invalid_characters", Some(field));
    }
    let (status, answer) = get(&serve, &key, "/v1/calls/call%00x/status");
    expect_error(status, &answer, 422, "invalid_characters", Some("path"));
    let (status, answer) = get(&serve, &key, "/v1/calls/history?disposition=a%00");
    expect_error(status, &answer, 422, "invalid_characters", Some("disposition"));
    // Nothing was stored, and the database still answers.
    assert_eq!(get(&serve, &key, "/v1/numbers").1["total"], 0);
    assert_eq!(get(&serve, &key, "/v1/calls/history").1["total"], 0);
    assert_eq!(get(&serve, &key, "/v1/assistants?limit=100").1["assistants"].as_array().unwrap().iter().filter(|a| a["source"] == "api").count(), 1);
    // Ordinary text with newlines and non-ASCII letters passes.
    let (status, body) = post(&serve, &key, "/v1/assistants", json!({ "version": 1, "name": "Ünïcode ☎", "system_prompt": "Line one.\nLine two.\tTabbed." }));
    assert_eq!(status, 201, "{body}");
}

#[test]
fn control_characters_get_422_on_sqlite() {
    control_characters_get_422(Database::sqlite());
}

#[test]
fn control_characters_get_422_on_postgres() {
    control_characters_get_422(Database::postgres());
}

#[test]
fn every_answer_has_the_error_shape_and_controls_follow_the_status() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let shape = |status: u16, body: &Value, want: u16, code: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"]["code"].as_str(), Some(code), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty() && m.len() < 1_000), "{body}");
    };
    let (status, body) = http("DELETE", &serve.url("/v1/calls/outbound"), Some(&key), None).into_pair();
    shape(status, &body, 405, "method_not_allowed");
    let (status, body) = get(&serve, &key, "/v1/assistants/luigis_booking/versions/first");
    shape(status, &body, 400, "invalid_request");
    let (status, body) = many_headers(&serve.url("/v1/workspace"), &key, 80);
    shape(status, &body, 431, "headers_too_large");
    let huge = json!({ "assistant_id": "luigis_booking", "to_number": "+15005550006", "metadata": { "blob": "x".repeat(300_000) } }).to_string();
    let (status, body) = http("POST", &serve.url("/v1/calls/outbound"), Some(&key), Some(&huge)).into_pair();
    shape(status, &body, 413, "payload_too_large");
    let (status, body) = http("POST", &serve.url("/v1/assistants"), Some(&key), Some(&huge)).into_pair();
    shape(status, &body, 413, "payload_too_large");
    // A long input is cut in the message, never echoed whole.
    let (status, body) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "9".repeat(100_000) }));
    shape(status, &body, 422, "invalid_field");
    // Numbers are whole numbers or refused.
    for number in ["+1 500 555 0006 ext. 7", "tel:+15005550006", "+15005550006;ext=2"] {
        let (status, body) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": number }));
        shape(status, &body, 422, "invalid_field");
        assert_eq!(body["error"]["field"], "to_number");
    }
    let (status, body) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550006", "from_number": "+15005550999" }));
    shape(status, &body, 422, "from_number_not_owned");
    let script = json!({ "voice": "espeak:en-us", "lines": [{ "say": "Hi.", "pause_ms": 999_999_999u64 }] });
    let (status, body) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550006", "metadata": { "sandbox_caller": script } }));
    shape(status, &body, 422, "invalid_field");
    assert_eq!(body["error"]["field"], "metadata.sandbox_caller.lines.0.pause_ms");
    // Phrases a sandbox caller says a line again on are bounded in count and length.
    let script = json!({ "voice": "espeak:en-us", "repeat_on": vec!["again"; 9], "lines": [{ "say": "Hi." }] });
    let (status, body) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550006", "metadata": { "sandbox_caller": script } }));
    shape(status, &body, 422, "invalid_field");
    assert_eq!(body["error"]["field"], "metadata.sandbox_caller.repeat_on");
    let script = json!({ "voice": "espeak:en-us", "repeat_on": ["x".repeat(201)], "lines": [{ "say": "Hi." }] });
    let (status, body) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550006", "metadata": { "sandbox_caller": script } }));
    shape(status, &body, 422, "invalid_field");
    assert_eq!(body["error"]["field"], "metadata.sandbox_caller.repeat_on.0");
    // A phrase far longer is caught sooner, by the bound on the metadata as a whole.
    let script = json!({ "voice": "espeak:en-us", "repeat_on": ["x".repeat(100_000)], "lines": [{ "say": "Hi." }] });
    let (status, body) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550006", "metadata": { "sandbox_caller": script } }));
    shape(status, &body, 422, "invalid_field");
    assert_eq!(body["error"]["field"], "metadata");
    // A sandbox caller may not play a file of the server's to the line (and so into the
    // recording and the transcript).
    let script = json!({ "lines": [{ "audio": "/etc/passwd" }] });
    let (status, body) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550006", "metadata": { "sandbox_caller": script } }));
    shape(status, &body, 422, "invalid_field");
    assert_eq!(body["error"]["field"], "metadata.sandbox_caller.lines.0.audio");

    // An idempotency key names one request: a different body with it is a conflict.
    let llm = standin::llm(vec![Reply::Text("Hello, I am listening.")]);
    let (_, assistant) = post(&serve, &key, "/v1/assistants", tenant_assistant(json!({ "provider": "openai", "base_url": llm.url("/v1"), "model": "standin" })));
    let request = json!({ "assistant_id": assistant["id"], "to_number": "+15005550006", "idempotency_key": "order-9", "metadata": { "sandbox_caller": lingering_caller() } });
    let (status, call) = post(&serve, &key, "/v1/calls/outbound", request.clone());
    assert_eq!(status, 201, "{call}");
    let call_id = call["call_id"].as_str().unwrap().to_string();
    let (status, again) = post(&serve, &key, "/v1/calls/outbound", request.clone());
    assert_eq!((status, again["call_id"].as_str()), (200, Some(call_id.as_str())), "the same request is a retry");
    let mut changed = request;
    changed["to_number"] = json!("+15005550007");
    let (status, body) = post(&serve, &key, "/v1/calls/outbound", changed);
    shape(status, &body, 409, "idempotency_key_reused");

    wait_for(&serve, &key, &call_id, Duration::from_secs(60), |c| c["status"] == "in-progress");
    let (status, body) = post(&serve, &key, &format!("/v1/calls/{call_id}/actions"), json!({ "action": "dtmf", "digits": "1".repeat(100) }));
    shape(status, &body, 422, "invalid_field");
    let (status, ending) = post(&serve, &key, &format!("/v1/calls/{call_id}/end"), json!({}));
    assert_eq!((status, ending["status"].as_str()), (202, Some("ending")), "{ending}");
    let (status, body) = post(&serve, &key, &format!("/v1/calls/{call_id}/actions"), json!({ "action": "dtmf", "digits": "1" }));
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(&serve, &key, &format!("/v1/calls/{call_id}/end"), json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(["call_ending", "call_not_active"].contains(&body["error"]["code"].as_str().unwrap_or("")), "{body}");
    let done = wait_for(&serve, &key, &call_id, Duration::from_secs(30), ended);
    assert_eq!(done["status"], "completed", "{done}");
}

/// A GET with `count` extra headers.
fn many_headers(url: &str, key: &str, count: usize) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new().get(url).header("Authorization", format!("Bearer {key}"));
        for i in 0..count {
            request = request.header(format!("x-extra-{i}"), "1");
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

/// This process's children named `ringline-llm` that are still running.
fn engine_children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid …
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if head.ends_with("(ringline-llm") && fields.first() != Some(&"Z") && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            found.push(pid);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.split_whitespace().next() != Some("Z")))
}

fn resident_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap();
    kb / 1024.0
}

#[test]
fn assistants_that_differ_in_settings_share_one_engine_set_and_kill_9_leaves_no_engine() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    let flags = ["--max-calls-per-workspace", "20", "--max-calls", "20", "--max-calls-per-minute", "100", "--rate-limit", "100000"];
    let serve = Serve::start_with(&db, &repo_assistants(), &flags, &[]);
    let server_pid = serve.child.id();
    let quiet_caller = json!({ "voice": "espeak:en-us", "final_wait_ms": 300, "lines": [] });
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut spec = tenant_assistant(json!({ "provider": "local", "model": "smollm2-135m", "temperature": 0.05 * i as f64, "max_tokens": 40 + i }));
        spec["turn"]["endpointing_ms"] = json!(200 + 10 * i);
        let (status, created) = post(&serve, &key, "/v1/assistants", spec);
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let mut after_first = None;
    for batch in ids.chunks(5) {
        let calls: Vec<String> = batch
            .iter()
            .map(|id| {
                let (status, call) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": &id, "to_number": "+15005550006", "metadata": { "sandbox_caller": quiet_caller } }));
                assert_eq!(status, 201, "{call}");
                call["call_id"].as_str().unwrap().to_string()
            })
            .collect();
        for call in &calls {
            let done = wait_for(&serve, &key, call, Duration::from_secs(120), ended);
            assert_eq!(done["status"], "completed", "{done}");
        }
        after_first.get_or_insert_with(|| resident_mb(server_pid));
    }
    let growth = resident_mb(server_pid) - after_first.unwrap();
    println!("resident memory of serve: {:.0} MB after the first 5 calls, +{growth:.0} MB after 20", after_first.unwrap());
    assert!(growth < 300.0, "twenty settings variants grew the server by {growth:.0} MB: engines are not shared");
    let (_, _, metrics) = http("GET", &serve.url("/metrics"), None, None);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for kind in ["whisper", "voice", "llm", "vad", "smart_turn"] {
        assert!(metrics.contains(&format!("ringline_engines_loaded{{kind=\"{kind}\"}} 1")), "one {kind} for twenty assistants:\n{metrics}");
    }
    let engines = engine_children(server_pid);
    assert_eq!(engines.len(), 1, "one ringline-llm for twenty assistants: {engines:?}");

    // A crash of the server takes its engine with it; a restart finds none left over.
    serve.crash();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while engines.iter().any(|pid| alive(*pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!engines.iter().any(|pid| alive(*pid)), "ringline-llm {engines:?} outlived kill -9 of its server");
    let restarted = Serve::start(&db, &repo_assistants(), &[]);
    assert!(engine_children(restarted.child.id()).is_empty());
    assert!(!engines.iter().any(|pid| alive(*pid)));
}

#[test]
fn a_tenant_cannot_fetch_delete_or_call_with_another_workspaces_recordings_and_tokens() {
    let llm = standin::llm(vec![Reply::Text("We open at nine."), Reply::Text("A short call.")]);
    let db = Database::sqlite();
    let (owner, attacker) = (create_key(&db, "owner", &[]), create_key(&db, "attacker", &[]));
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let (status, created) = post(&serve, &owner, "/v1/assistants", crate::api::assistant_spec(&llm));
    assert_eq!(status, 201, "{created}");
    let request = json!({ "assistant_id": created["id"], "to_number": "+15005550006", "record": true,
        "dynamic_variables": { "customer_name": "Ann" }, "metadata": { "sandbox_caller": short_caller() } });
    let (status, call) = post(&serve, &owner, "/v1/calls/outbound", request);
    assert_eq!(status, 201, "{call}");
    let id = call["call_id"].as_str().unwrap().to_string();
    wait_for(&serve, &owner, &id, Duration::from_secs(60), ended);
    let (_, detail) = get(&serve, &owner, &format!("/v1/calls/{id}"));
    assert!(detail["recording_url"].is_string(), "the owner's call was recorded: {detail}");

    // Another workspace sees none of it, and cannot delete it.
    let (status, body) = get(&serve, &attacker, &format!("/v1/calls/{id}/recording"));
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = http("DELETE", &serve.url(&format!("/v1/calls/{id}")), Some(&attacker), None);
    assert_eq!(status, 404);
    // Nor mint a web call token for the owner's assistant.
    let (status, body) = post(&serve, &attacker, "/v1/webcall/token", json!({ "assistant_id": created["id"], "dynamic_variables": { "customer_name": "x" } }));
    assert_eq!(status, 404, "{body}");
    let (status, _) = get(&serve, &owner, &format!("/v1/calls/{id}"));
    assert_eq!(status, 200, "the call and its recording are still there");
}

/// Past its local call capacity the server refuses a new call on the local models with a
/// clear code instead of slowing every live call down; the capacity shows in /healthz and
/// /metrics, and a call that ends frees its place.
#[test]
fn calls_past_the_local_capacity_are_refused_not_admitted_to_slow_the_others() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    let serve = Serve::start_with(&db, &repo_assistants(), &["--max-local-calls", "1"], &[]);
    let place = || {
        post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": "luigis_booking", "to_number": "+15005550006", "metadata": { "sandbox_caller": lingering_caller() } }))
    };
    let (status, first) = place();
    assert_eq!(status, 201, "{first}");
    let (status, _, refused) = http("POST", &serve.url("/v1/calls/outbound"), Some(&key), Some(&json!({ "assistant_id": "luigis_booking", "to_number": "+15005550006" }).to_string()));
    assert_eq!((status, refused["error"]["code"].as_str()), (429, Some("local_capacity")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap_or_default().contains("--max-local-calls"), "{refused}");
    let (_, health) = get(&serve, &key, "/healthz");
    assert_eq!((health["local_call_limit"].as_u64(), health["local_calls"].as_u64()), (Some(1), Some(1)), "{health}");
    let (_, _, metrics) = http("GET", &serve.url("/metrics"), None, None);
    assert!(metrics.as_str().unwrap_or_default().contains("ringline_local_calls_limit 1"), "{metrics}");
    // Ending the first call frees its place.
    let id = first["call_id"].as_str().unwrap().to_string();
    let (status, _) = post(&serve, &key, &format!("/v1/calls/{id}/end"), json!({}));
    assert!(status < 300, "end: {status}");
    wait_for(&serve, &key, &id, Duration::from_secs(60), ended);
    // Its place is free once the worker has let go of the call (a moment after its status).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (status, second) = loop {
        let (status, body) = place();
        if status != 429 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(status, 201, "{second}");
}

/// The value of a counter or gauge in `/metrics`.
fn metric(serve: &Serve, name: &str) -> u64 {
    let (_, _, body) = http("GET", &serve.url("/metrics"), None, None);
    let text = body.as_str().unwrap_or_default().to_string();
    text.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// A sentence played from the speech cache skips its synthesis, so it comes sooner: were the
/// cache shared, one workspace could time a line to learn whether another's agent said it. The
/// same assistant, voice and greeting in two workspaces: the second workspace's call
/// synthesizes its greeting anew; the first workspace's next call replays its own.
#[test]
fn one_workspace_never_replays_speech_another_workspace_synthesized() {
    let llm = standin::llm(vec![Reply::Text("A short call.")]);
    let db = Database::sqlite();
    let (owner, other) = (create_key(&db, "owner", &[]), create_key(&db, "other", &[]));
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let call = |key: &str| {
        let (status, created) = post(&serve, key, "/v1/assistants", tenant_assistant(json!({ "provider": "openai", "base_url": llm.url("/v1"), "model": "standin" })));
        assert_eq!(status, 201, "{created}");
        let (status, call) = post(&serve, key, "/v1/calls/outbound", json!({ "assistant_id": created["id"], "to_number": "+15005550006", "metadata": { "sandbox_caller": short_caller() } }));
        assert_eq!(status, 201, "{call}");
        let done = wait_for(&serve, key, call["call_id"].as_str().unwrap(), Duration::from_secs(60), ended);
        assert_eq!(done["status"], "completed", "{done}");
    };
    call(&owner);
    let (hits, misses) = (metric(&serve, "ringline_speech_cache_hits_total"), metric(&serve, "ringline_speech_cache_misses_total"));
    assert_eq!(hits, 0, "nothing was said before the first call");
    assert!(misses >= 1, "the greeting was synthesized and looked up: {misses}");
    assert!(metric(&serve, "ringline_speech_cache_bytes") > 0, "and kept");
    call(&other);
    assert_eq!(metric(&serve, "ringline_speech_cache_hits_total"), 0, "another workspace replayed the owner's greeting");
    call(&owner);
    assert!(metric(&serve, "ringline_speech_cache_hits_total") >= 1, "the owner's second call replays its own greeting");
}
