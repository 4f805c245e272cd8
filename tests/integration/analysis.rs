//! Call intelligence through the API: `/v1/analysis/intent` and `/sentiment` on the real
//! MiniLM model, their bounds against a hostile key, and the live analysis of a sandbox call
//! (each caller line's intent, sentiment and entities stored, an angry caller routed to a
//! person without the LLM, calls found by intent).

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{create_key, ended, get, http_within, post, repo_assistants, wait_for, Database, Serve};

fn intents() -> Value {
    json!([
        { "name": "book_table", "examples": ["I'd like to book a table", "can I reserve a table for tonight", "do you have a table for four"] },
        { "name": "opening_hours", "examples": ["when are you open", "what time do you close", "are you open on sundays"] },
        { "name": "speak_to_human", "examples": ["can I talk to a real person", "put me through to a manager"] },
        { "name": "cancel", "description": "the caller wants to cancel a booking", "examples": ["cancel my booking", "I need to cancel my reservation"] }
    ])
}

#[test]
fn intents_sentiment_and_entities_come_from_the_analysis_endpoints() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);

    for (text, want) in [
        ("Hi, could I get a table for two tomorrow at 7 pm?", "book_table"),
        ("Are you open late on Saturday?", "opening_hours"),
        ("I'd like to cancel the reservation I made", "cancel"),
        ("My cat knocked the plant off the windowsill", "unknown"),
    ] {
        let (status, body) = post(&serve, &key, "/v1/analysis/intent", json!({ "text": text, "intents": intents(), "timezone": "Europe/London" }));
        assert_eq!((status, body["intent"].as_str()), (200, Some(want)), "{text}: {body}");
        let confidence = body["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&confidence), "{body}");
    }
    let (_, body) = post(&serve, &key, "/v1/analysis/intent", json!({ "text": "a table for two tomorrow at 7 pm", "intents": intents() }));
    let kinds: Vec<&str> = body["entities"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["date", "time"], "{body}");
    assert_eq!(body["entities"][1]["value"], "19:00", "{body}");

    // An assistant's own intents, by id (a file assistant every workspace sees).
    let (status, body) = post(&serve, &key, "/v1/analysis/intent", json!({ "text": "Can I talk to a person please?", "assistant_id": "order_status" }));
    assert_eq!((status, body["intent"].as_str()), (200, Some("speak_to_human")), "{body}");

    // Hundreds of intents with ten examples each.
    let many: Vec<Value> = (0..300)
        .map(|i| json!({ "name": format!("topic_{i}"), "examples": (0..10).map(|j| format!("question number {j} about subject {i}")).collect::<Vec<_>>() }))
        .chain([json!({ "name": "refund", "examples": ["I want my money back", "can I get a refund", "please refund my order"] })])
        .collect();
    // The first request embeds every example (tens of seconds on two cores in a debug build);
    // the next ones find them cached.
    let body = json!({ "text": "I would like a refund for my order", "intents": many }).to_string();
    let (status, _, answer) = http_within("POST", &serve.url("/v1/analysis/intent"), Some(&key), Some(&body), Duration::from_secs(300));
    assert_eq!((status, answer["intent"].as_str()), (200, Some("refund")), "{answer}");
    let body = body.replace("I would like a refund for my order", "question number 3 about subject 42");
    let (status, _, answer) = http_within("POST", &serve.url("/v1/analysis/intent"), Some(&key), Some(&body), Duration::from_secs(30));
    assert_eq!((status, answer["intent"].as_str()), (200, Some("topic_42")), "{answer}");

    for (text, label) in [("That's wonderful, thank you so much!", "positive"), ("This is ridiculous, nobody ever calls me back.", "negative"), ("My order number is 4 5 6 7.", "neutral")] {
        let (status, body) = post(&serve, &key, "/v1/analysis/sentiment", json!({ "text": text }));
        assert_eq!((status, body["label"].as_str()), (200, Some(label)), "{text}: {body}");
    }
}

#[test]
fn the_analysis_endpoints_refuse_unbounded_or_foreign_input() {
    let db = Database::sqlite();
    let key = create_key(&db, "mallory", &[]);
    let other = create_key(&db, "victim", &[]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let refused = |body: Value, field: &str| {
        let (status, answer) = post(&serve, &key, "/v1/analysis/intent", body);
        assert_eq!((status, answer["error"]["field"].as_str()), (422, Some(field)), "{answer}");
        answer["error"]["message"].as_str().unwrap().to_string()
    };
    let too_many: Vec<Value> = (0..101).map(|i| json!({ "name": format!("i{i}"), "examples": vec!["some words"; 50] })).collect();
    assert!(refused(json!({ "text": "hi", "intents": too_many }), "intents").contains("the most is 5000"));
    refused(json!({ "text": "x".repeat(2_001), "intents": intents() }), "text");
    refused(json!({ "text": "  ", "intents": intents() }), "text");
    refused(json!({ "text": "hi" }), "intents");
    refused(json!({ "text": "hi", "intents": intents(), "assistant_id": "order_status" }), "assistant_id");
    refused(json!({ "text": "hi", "intents": [{ "name": "a", "examples": ["x".repeat(501)] }] }), "intents.0.examples.0");
    refused(json!({ "text": "hi", "intents": [{ "name": "a", "examples": ["x"] }, { "name": "a", "examples": ["y"] }] }), "intents.1.name");
    refused(json!({ "text": "hi", "intents": intents(), "threshold": 3 }), "threshold");
    refused(json!({ "text": "hi", "intents": intents(), "timezone": "Mars/Olympus" }), "timezone");
    let (status, body) = post(&serve, &key, "/v1/analysis/sentiment", json!({ "text": "y".repeat(2_001) }));
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("text")), "{body}");

    // Another workspace's assistant is not there for this key.
    let spec = json!({ "version": 1, "name": "private", "system_prompt": "Hi.", "intents": [{ "name": "secret_plan", "examples": ["the secret plan"] }] });
    let (status, created) = post(&serve, &other, "/v1/assistants", spec);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, body) = post(&serve, &key, "/v1/analysis/intent", json!({ "text": "the secret plan", "assistant_id": id }));
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = post(&serve, &other, "/v1/analysis/intent", json!({ "text": "the secret plan", "assistant_id": id }));
    assert_eq!((status, body["intent"].as_str()), (200, Some("secret_plan")), "{body}");
}

#[test]
fn a_calls_caller_lines_are_analysed_live_and_an_angry_caller_is_routed_to_a_person() {
    let db = Database::sqlite();
    let key = create_key(&db, "acme", &[]);
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let caller = json!({ "voice": "espeak:en-us", "final_wait_ms": 8000, "lines": [
        { "say": "This is absolutely ridiculous! I have been waiting for two weeks and nobody helps me!" }
    ] });
    let (status, call) = post(&serve, &key, "/v1/calls/outbound", json!({
        "assistant_id": "order_status", "to_number": "+15005550006", "metadata": { "sandbox_caller": caller }
    }));
    assert_eq!(status, 201, "{call}");
    let id = call["call_id"].as_str().unwrap().to_string();
    let done = wait_for(&serve, &key, &id, Duration::from_secs(120), ended);
    assert_eq!(done["status"], "completed", "{done}");

    let (_, detail) = get(&serve, &key, &format!("/v1/calls/{id}"));
    let caller_line = detail["transcript"].as_array().unwrap().iter().find(|l| l["speaker"] == "caller").cloned().unwrap_or(Value::Null);
    let analysis = &caller_line["analysis"];
    assert_eq!(analysis["sentiment"]["label"], "negative", "{detail}");
    assert_eq!(analysis["escalation"], true, "{detail}");
    assert!(analysis["intent"]["intent"].is_string(), "{detail}");
    assert_eq!(detail["analysis"]["escalated"], true, "{detail}");
    // The route, not the LLM or the flow, answered: its words, its transfer and disposition.
    let agent: Vec<&str> = detail["transcript"].as_array().unwrap().iter().filter(|l| l["speaker"] == "agent").filter_map(|l| l["text"].as_str()).collect();
    assert!(agent.iter().any(|t| t.contains("so frustrating")), "{agent:?}");
    assert_eq!(detail["disposition"], "transferred", "{detail}");
    assert!(detail["ended_by"].as_str().unwrap_or("").contains("transferred to +15005550100"), "{detail}");

    // The same, per turn and for the call, at the call's analysis.
    let (status, whole) = get(&serve, &key, &format!("/v1/calls/{id}/analysis"));
    assert_eq!(status, 200, "{whole}");
    assert_eq!((whole["call"]["escalated"].as_bool(), whole["call"]["disposition"].as_str()), (Some(true), Some("transferred")), "{whole}");
    assert_eq!(whole["turns"][0]["sentiment"]["label"], "negative", "{whole}");
    assert_eq!(whole["turns"][0]["escalation"], true, "{whole}");
    // Calls are found by the intents their callers showed.
    let intent = analysis["intent"]["intent"].as_str().unwrap();
    let (_, found) = get(&serve, &key, &format!("/v1/calls/history?intent={intent}"));
    assert_eq!(found["total"], 1, "{found}");
    let (_, none) = get(&serve, &key, "/v1/calls/history?intent=no_such_intent");
    assert_eq!(none["total"], 0, "{none}");
    // Analytics count the caller lines by intent and by sentiment.
    let (_, totals) = get(&serve, &key, "/v1/analytics");
    assert_eq!(totals["intents"][intent], 1, "{totals}");
    assert_eq!((totals["sentiment"]["negative"].as_i64(), totals["sentiment"]["escalations"].as_i64()), (Some(1), Some(1)), "{totals}");
    // The analysis is also a live event of the call.
    let (_, events) = get(&serve, &key, &format!("/v1/calls/{id}/events"));
    let text = events.as_str().unwrap_or_default();
    assert!(text.contains("event: analysis"), "{text}");
}
