//! The local LLM engine, `ringline-llm`, on the default model: constrained output.
//!
//! A 135M model left to itself rarely writes exact JSON; under a schema or a forced tool call
//! the engine's grammar leaves it no other choice. These tests ask it for things it would get
//! wrong unconstrained and check the shape of every answer.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::support::models_dir;

struct Engine {
    child: Child,
    url: String,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The default LLM's GGUF in the test store.
fn default_gguf() -> PathBuf {
    let mut stack = vec![models_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "gguf") && path.to_string_lossy().to_lowercase().contains("135m") {
                return path;
            }
        }
    }
    panic!("no 135M GGUF under {}: run `ringline models pull`", models_dir().display());
}

fn start() -> Engine {
    start_with_slots(1)
}

fn start_with_slots(slots: u32) -> Engine {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ringline")).with_file_name("ringline-llm");
    let mut child = Command::new(&binary)
        .args(["--model"])
        .arg(default_gguf())
        .args(["--slots", &slots.to_string(), "--slot-ctx", "1024", "--exit-with-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{} runs (built with the workspace): {e}", binary.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the engine says where it listens");
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    Engine { child, url }
}

fn ask(engine: &Engine, body: Value) -> (u16, Value) {
    let (status, _, answer) = crate::api::http("POST", &format!("{}/v1/chat/completions", engine.url), None, Some(&body.to_string()));
    (status, answer)
}

fn content(answer: &Value) -> String {
    answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_default_model_answers_inside_a_schema_a_forced_call_and_any_call_it_opens() {
    let engine = start();
    let choices = ["vegetarian", "regular", "gluten_free"];
    let schema = json!({
        "type": "object",
        "properties": { "value": { "enum": ["vegetarian", "regular", "gluten_free", null] }, "people": { "type": "integer" } },
        "required": ["value", "people"]
    });
    for (i, said) in ["the veggie one for the two of us", "uh what was the question", "normal food, four people", "no wheat please, me alone"].iter().enumerate() {
        let (status, answer) = ask(&engine, json!({
            "messages": [
                { "role": "system", "content": "Which meal did the caller choose, and for how many people? Answer in JSON." },
                { "role": "user", "content": said }
            ],
            "response_format": { "type": "json_schema", "json_schema": { "name": "meal", "schema": schema } },
            "max_tokens": 40, "temperature": if i % 2 == 0 { 0.0 } else { 0.9 }
        }));
        assert_eq!(status, 200, "{answer}");
        let text = content(&answer);
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        assert!(value["value"].is_null() || choices.contains(&value["value"].as_str().unwrap_or("?")), "{value}");
        assert!(value["people"].is_i64(), "{value}");
    }

    // A forced call names a real tool with arguments of the right shape.
    let tools = json!([
        { "type": "function", "function": { "name": "set_disposition", "description": "Record how the call ended",
          "parameters": { "type": "object", "properties": { "disposition": { "enum": ["booked", "declined"] }, "notes": { "type": "string", "maxLength": 80 } }, "required": ["disposition"] } } },
        { "type": "function", "function": { "name": "end_call", "description": "Hang up", "parameters": { "type": "object", "properties": {} } } }
    ]);
    let (status, answer) = ask(&engine, json!({
        "messages": [{ "role": "user", "content": "Thanks, that's all, the table is booked." }],
        "tools": tools, "tool_choice": "required", "max_tokens": 60
    }));
    assert_eq!(status, 200, "{answer}");
    let calls = answer["choices"][0]["message"]["tool_calls"].as_array().cloned().unwrap_or_else(|| panic!("a call was forced: {answer}"));
    for call in &calls {
        let name = call["function"]["name"].as_str().unwrap_or_default();
        let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or("")).expect("arguments are JSON");
        match name {
            "set_disposition" => assert!(["booked", "declined"].contains(&arguments["disposition"].as_str().unwrap_or("?")), "{arguments}"),
            "end_call" => assert!(arguments.is_object()),
            other => panic!("a tool that does not exist: {other}"),
        }
    }
    let (_, answer) = ask(&engine, json!({
        "messages": [{ "role": "user", "content": "bye" }],
        "tools": tools, "tool_choice": { "type": "function", "function": { "name": "end_call" } }, "max_tokens": 40
    }));
    assert_eq!(answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "end_call", "{answer}");

    // Schemas the grammar cannot hold, and unknown choices, are refused with where and why.
    let (status, answer) = ask(&engine, json!({
        "messages": [{ "role": "user", "content": "hi" }],
        "response_format": { "type": "json_schema", "json_schema": { "name": "x", "schema": { "type": "object", "properties": { "a": { "$ref": "#/defs/a" } } } } }
    }));
    assert_eq!(status, 400);
    assert!(answer["error"]["message"].as_str().unwrap_or_default().contains("response_format.json_schema.schema.properties.a.$ref"), "{answer}");
    let (status, answer) = ask(&engine, json!({ "messages": [{ "role": "user", "content": "hi" }], "tools": tools, "tool_choice": { "type": "function", "function": { "name": "launch" } } }));
    assert_eq!(status, 400);
    assert!(answer["error"]["message"].as_str().unwrap_or_default().contains("no tool is named `launch`"), "{answer}");
    let (status, answer) = ask(&engine, json!({ "messages": [{ "role": "user", "content": "hi" }], "grammar": "root ::= \"unclosed" }));
    assert_eq!(status, 400, "{answer}");
}

/// Several conversations at once advance together, one llama.cpp batch per step: each request
/// is answered in full (JSON under its schema, free text to its length), and the engine
/// reports that steps carried more than one of them.
#[test]
fn requests_made_together_are_decoded_in_one_batch_and_each_is_answered_whole() {
    let engine = start_with_slots(4);
    let url = format!("{}/v1/chat/completions", engine.url);
    let schema = json!({ "type": "object", "properties": { "people": { "type": "integer" } }, "required": ["people"] });
    let bodies: Vec<Value> = (0..4)
        .map(|i| {
            if i % 2 == 0 {
                json!({ "messages": [{ "role": "user", "content": format!("Tell me a short story about a cat number {i}.") }], "max_tokens": 48, "temperature": 0.0 })
            } else {
                json!({ "messages": [{ "role": "system", "content": "How many people? Answer in JSON." }, { "role": "user", "content": format!("a table for {i} please") }],
                        "response_format": { "type": "json_schema", "json_schema": { "name": "n", "schema": schema } }, "max_tokens": 24 })
            }
        })
        .collect();
    // Each alone first: greedy decoding in a shared batch must give what it gives alone.
    let alone: Vec<String> = bodies.iter().map(|body| content(&ask(&engine, body.clone()).1)).collect();
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = bodies.iter().map(|body| scope.spawn(|| {
            let (status, _, answer) = crate::api::http("POST", &url, None, Some(&body.to_string()));
            (status, answer)
        })).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut most = 0;
    for (i, (status, answer)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{answer}");
        let text = content(answer);
        if i % 2 == 0 {
            assert!(!text.trim().is_empty(), "{answer}");
            assert_eq!(text, alone[i], "greedy output changed when decoded beside others");
            assert!(answer["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0, "{answer}");
        } else {
            let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
            assert!(value["people"].is_i64(), "{value}");
            assert_eq!(text, alone[i], "constrained greedy output changed when decoded beside others");
        }
        most = most.max(answer["usage"]["timings"]["most_sequences_per_step"].as_u64().unwrap_or(0));
    }
    assert!(most >= 2, "no step carried two requests: {answers:?}");
    // The engine is still whole afterwards: one request alone.
    let (status, answer) = ask(&engine, json!({ "messages": [{ "role": "user", "content": "Say hello." }], "max_tokens": 8 }));
    assert_eq!((status, answer["usage"]["timings"]["most_sequences_per_step"].as_u64()), (200, Some(1)), "{answer}");
}
