//! `ringline eval`: a real scenario through the pipeline, its results, and its HTML report
//! rendered by headless Chromium (Debian's `chromium`, installed by `.ci/setup`).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{ringline, run, run_ok};

const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/eval/suites/smoke");

#[test]
fn a_run_writes_results_and_a_report_that_chromium_renders_and_a_baseline_is_compared() {
    let dir = tempfile::tempdir().unwrap();
    let (json, page) = (dir.path().join("run.json"), dir.path().join("run.html"));
    // `--llm-model` names the smoke suite's own model: the run is the same, and says so.
    let out = run_ok(ringline().args(["eval", "run", SMOKE, "--filter", "*books a table*", "--llm-model", "smollm2-135m", "--json"]).arg(&json).arg("--report").arg(&page));
    // Whether the booking succeeded is the smoke suite's business (`--strict` in .ci/test); here
    // the one scenario ran, and the page must say what happened.
    let passed = if out.contains("eval: 1 passed, 0 failed") {
        1
    } else {
        assert!(out.contains("eval: 0 passed, 1 failed"), "{out}");
        0
    };
    let results: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(results["llm_model"], "smollm2-135m", "the results name the model the agents ran on");
    let outcome = &results["outcomes"][0];
    assert!(!outcome["agent_speech"].as_array().unwrap().is_empty(), "the timeline has the agent's speech: {outcome}");
    let audio = outcome["audio"].as_str().expect("the recording is linked");
    assert!(dir.path().join(audio).is_file(), "{audio} is beside the report");

    // Rendered again from the results, against itself as the baseline.
    let again = dir.path().join("again.html");
    run_ok(ringline().args(["eval", "report"]).arg(&json).arg("--baseline").arg(&json).arg("--out").arg(&again));
    let text = std::fs::read_to_string(&again).unwrap();
    assert!(text.contains("No regression."), "a run against itself does not regress");

    let (dom, console) = chromium_dom(&page);
    let headline = format!("Ringline eval: {passed} of 1 scenarios passed");
    for part in [headline.as_str(), "Every agent on the local LLM smollm2-135m.", "id=\"histogram\"", "id=\"confusion\"", "class=\"timeline\"", "<audio"] {
        assert!(dom.contains(part), "the rendered page lacks {part}:\n{}", &dom[..dom.len().min(2000)]);
    }
    assert!(!console.contains("Uncaught") && !console.contains(":ERROR:CONSOLE"), "the page logged errors:\n{console}");
}

#[test]
fn a_baseline_that_passed_more_fails_the_run_naming_the_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    run_ok(ringline().args(["eval", "run", SMOKE, "--filter", "*keypad*", "--json"]).arg(&json));
    // The same scenario, failing in the new run: a baseline where a second scenario passed
    // and the figures were better.
    let mut baseline: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut extra = baseline["outcomes"][0].clone();
    extra["name"] = "a scenario that no longer runs".into();
    baseline["outcomes"].as_array_mut().unwrap().push(extra);
    baseline["overall"]["task_success"] = 1.0.into();
    let mut current: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    current["outcomes"][0]["passed"] = false.into();
    current["outcomes"][0]["failures"] = serde_json::json!(["disposition `completed`, expected `confirmed`"]);
    current["overall"]["task_success"] = 0.0.into();
    let (current_path, baseline_path) = (dir.path().join("current.json"), dir.path().join("baseline.json"));
    std::fs::write(&current_path, current.to_string()).unwrap();
    std::fs::write(&baseline_path, baseline.to_string()).unwrap();
    let page = dir.path().join("diff.html");
    run_ok(ringline().args(["eval", "report"]).arg(&current_path).arg("--baseline").arg(&baseline_path).arg("--out").arg(&page));
    let text = std::fs::read_to_string(&page).unwrap();
    assert!(text.contains("passed in the baseline and fails now"), "the diff names the scenario");
    assert!(text.contains("task success 0% against 100%"), "and the metric");

    // A results file that is not one is a clear error.
    std::fs::write(dir.path().join("bad.json"), "{}").unwrap();
    let (ok, stdout, stderr) = run(ringline().args(["eval", "report"]).arg(dir.path().join("bad.json")));
    assert!(!ok);
    assert!(format!("{stdout}{stderr}").contains("is not a results file of `eval run --json`"), "{stderr}");
}

/// The page's DOM after Chromium loaded it, and what Chromium logged.
fn chromium_dom(page: &Path) -> (String, String) {
    let binary = ["chromium", "chromium-browser"].into_iter().find(|b| Command::new(b).arg("--version").output().is_ok()).expect("chromium is installed (.ci/setup installs Debian's chromium)");
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(binary)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_recorded_call_is_replayed_turn_by_turn_against_the_assistant() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let assistant = root.join("assistants/luigis_booking.yaml");
    run_ok(ringline().args(["simulate", "--json", "--assistant"]).arg(&assistant).arg("--caller").arg(root.join("eval/callers/booking.yaml")).arg("--out").arg(dir.path()));
    let recording = dir.path().join("call.wav");
    let json = dir.path().join("replay.json");
    let out = run_ok(ringline().args(["eval", "replay"]).arg(&recording).arg("--assistant").arg(&assistant).arg("--json").arg(&json));
    assert!(out.contains("turn by turn"), "{out}");
    let replay: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let turns = replay["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 4, "the booking caller's four turns, cut by the VAD: {replay}");
    assert!(turns.iter().all(|t| !t["recorded_agent"].as_str().unwrap_or_default().is_empty() && !t["agent"].as_str().unwrap_or_default().is_empty()), "each turn has both answers: {replay}");
    assert_eq!(replay["disposition"], "booked", "{replay}");
    let (ok, _, stderr) = run(ringline().args(["eval", "replay"]).arg(root.join("eval/recordings/tidigits-dhd-2934z.wav")).arg("--assistant").arg(&assistant));
    assert!(!ok && stderr.contains("two channels"), "a mono file is refused with the reason: {stderr}");

    // The same recording as a scenario of a suite: its caller channel is the caller.
    let scenario = dir.path().join("recorded.yaml");
    std::fs::write(&scenario, format!("name: a recorded booking\nassistant: {}\nrecording: call.wav\nexpect: {{ disposition: booked, extracted: {{ party_size: 2 }} }}\n", assistant.display())).unwrap();
    let results = dir.path().join("recorded.json");
    let out = run_ok(ringline().args(["eval", "run", "--strict"]).arg(&scenario).arg("--json").arg(&results));
    assert!(out.contains("PASS a recorded booking"), "{out}");
    let results: Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    let reference = results["outcomes"][0]["reference"].as_array().cloned().unwrap_or_default();
    assert!(reference.len() >= 3 && reference.iter().filter(|r| !r.as_str().unwrap_or_default().is_empty()).count() >= 3, "the recorded agent's answers are kept as the reference: {results}");
    std::fs::write(&scenario, format!("name: mono\nassistant: {}\nrecording: {}\n", assistant.display(), root.join("eval/recordings/tidigits-dhd-2934z.wav").display())).unwrap();
    let (ok, stdout, stderr) = run(ringline().args(["eval", "run"]).arg(&scenario));
    assert!(!ok && format!("{stdout}{stderr}").contains("field `recording`"), "a scenario's mono recording is refused at load, naming the field: {stdout}{stderr}");
}

#[test]
fn a_stored_call_is_replayed_by_its_id_beside_what_it_did() {
    use crate::api::{create_key, post, repo_assistants, wait_for, Database, Serve};
    let db = Database::sqlite();
    let serve = Serve::start(&db, &repo_assistants(), &[]);
    let key = create_key(&db, "replay", &["--rate-limit", "1000"]);
    let caller: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/callers/booking.yaml")).unwrap()).unwrap();
    let (status, call) = post(&serve, &key, "/v1/calls/outbound", serde_json::json!({
        "assistant_id": "luigis_booking", "to_number": "+15005550006", "record": true, "metadata": { "sandbox_caller": caller }
    }));
    assert_eq!(status, 201, "{call}");
    let id = call["call_id"].as_str().unwrap().to_string();
    let done = wait_for(&serve, &key, &id, std::time::Duration::from_secs(180), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");
    drop(serve);

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("replay.json");
    let page = dir.path().join("replay.html");
    let recordings = Path::new(&db.url.trim_start_matches("sqlite://")).parent().unwrap().join("recordings");
    let out = run_ok(
        ringline()
            .args(["eval", "replay", &id, "--database-url", &db.url])
            .arg("--recordings-dir")
            .arg(&recordings)
            .arg("--assistants")
            .arg(repo_assistants())
            .arg("--json")
            .arg(&json)
            .arg("--report")
            .arg(&page),
    );
    assert!(out.contains("before │ now"), "the stored outcome beside the new one: {out}");
    let replay: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(replay["call_id"], id.as_str());
    assert_eq!(replay["before"]["disposition"], done["disposition"], "{replay}");
    let turns = replay["turns"].as_array().unwrap();
    assert!(turns.len() >= 3, "the caller's turns, cut by the VAD: {replay}");
    assert!(turns.iter().filter(|t| !t["recorded_agent"].as_str().unwrap_or_default().is_empty()).count() >= 3, "the stored agent lines are the reference: {replay}");
    assert_eq!(replay["disposition"], "booked", "{replay}");
    assert!(replay["before"]["voice_to_voice"]["p50_ms"].is_number() && replay["now"]["voice_to_voice"]["p95_ms"].is_number(), "latency before and now: {replay}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("agent before") && html.contains("voice_to_voice") && !html.contains("<script"), "a self-contained side-by-side page");
    let (ok, _, stderr) = run(ringline().args(["eval", "replay", "call_0000", "--database-url", &db.url]));
    assert!(!ok && stderr.contains("no call `call_0000`"), "{stderr}");
}

#[test]
fn an_llm_judge_scores_free_form_criteria_when_one_is_configured() {
    use crate::standin::{self, Reply};
    let judge = standin::llm_with(vec![Reply::Text("unused")], Some(r#"{"verdicts": [{"met": false, "reason": "it spoke English"}, {"met": true, "reason": "it greeted the caller"}]}"#));
    let dir = tempfile::tempdir().unwrap();
    let assistant = Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants/luigis_booking.yaml");
    let scenario = dir.path().join("judged.yaml");
    std::fs::write(
        &scenario,
        format!(
            "name: judged call\nassistant: {}\ncaller:\n  voice: espeak:en-us\n  lines:\n    - say: \"What time do you open tomorrow?\"\n  final_wait_ms: 3000\nexpect:\n  judge: [\"the agent speaks French\", \"the agent greets the caller\"]\n",
            assistant.display()
        ),
    )
    .unwrap();
    let json = dir.path().join("out.json");
    let (ok, stdout, stderr) = run(ringline().args(["eval", "run"]).arg(&scenario).arg("--judge-url").arg(judge.url("/v1")).arg("--json").arg(&json).env_remove("RINGLINE_JUDGE_URL"));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("judge: the agent speaks French: it spoke English"), "an unmet criterion fails the scenario, with the judge's reason: {stdout}");
    let results: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let outcome = &results["outcomes"][0];
    assert_eq!(outcome["passed"], false, "{outcome}");
    assert_eq!(outcome["judged"][1]["met"], true, "{outcome}");
    let asked = judge.requests().into_iter().find(|r| r.get("response_format").is_some()).expect("the judge was asked");
    let prompt = asked["messages"][1]["content"].as_str().unwrap_or_default().to_string();
    assert!(prompt.contains("2. the agent greets the caller") && prompt.contains("agent: "), "the criteria and the transcript: {prompt}");
    assert_eq!(asked["response_format"]["json_schema"]["schema"]["properties"]["verdicts"]["minItems"], 2);
}
