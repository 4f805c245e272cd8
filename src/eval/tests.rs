use std::time::Duration;

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An assistant file outside the suite's folder (a suite folder holds only scenarios).
fn assistant_file(dir: &Path) -> String {
    let assistants = dir.join("assistants");
    std::fs::create_dir_all(&assistants).unwrap();
    write(&assistants, "a.yaml", "version: 1\nname: A\nsystem_prompt: Hi.\n").display().to_string()
}

#[test]
fn scenarios_load_one_or_many_per_file_and_errors_name_file_line_and_field() {
    let root = tempfile::tempdir().unwrap();
    let a = assistant_file(root.path());
    let suite = root.path().join("suite");
    std::fs::create_dir_all(&suite).unwrap();
    write(&suite, "one.yaml", &format!("name: one\nassistant: {a}\ncaller: {{ lines: [{{ say: hi }}] }}\nexpect: {{ disposition: booked }}\n"));
    write(&suite, "many.yaml", &format!("scenarios:\n  - {{ name: two, assistant: {a}, caller: {{ lines: [{{ say: hi }}] }} }}\n  - {{ name: three, assistant: {a}, caller: {{ lines: [] }} }}\n"));
    let scenarios = load(&[suite.clone()]).unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["two", "three", "one"]);

    let bad = root.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    write(&bad, "bad.yaml", &format!("name: bad\nassistant: {a}\ncaller: {{ lines: [{{ say: hi }}] }}\nexpect:\n  disposition: x\n  surprise: 1\n"));
    write(&bad, "missing.yaml", "name: gone\nassistant: nowhere.yaml\ncaller: { lines: [], final_wait_ms: 999999999 }\nexpect: { says: [\"(unclosed\"] }\n");
    let problems = load(&[bad.clone()]).unwrap_err();
    let all = problems.join("\n");
    assert!(all.contains("bad.yaml:6") && all.contains("`expect.surprise`"), "{all}");
    assert!(all.contains("missing.yaml:2: field `assistant`"), "{all}");
    assert!(all.contains("field `caller.final_wait_ms`"), "{all}");
    assert!(all.contains("field `expect.says.0`: not a regular expression"), "{all}");
}

fn report() -> CallReport {
    let mut report = CallReport::default();
    report.transcript = vec![
        (Speaker::Agent, "Hello, how can I help?".into(), Duration::ZERO),
        (Speaker::Caller, "A table for two.".into(), Duration::from_secs(3)),
        (Speaker::Agent, "So that's a table for 2. Is that right?".into(), Duration::from_secs(5)),
    ];
    report.disposition = Some(("booked".into(), String::new()));
    report.slots = [("party_size".to_string(), serde_json::json!(2)), ("name".to_string(), serde_json::json!("Sarah"))].into_iter().collect();
    report.ended_by = Some("agent: the flow ended the call".into());
    report.duration = Duration::from_secs(30);
    report.tool_calls = vec![("lookup_order".into(), serde_json::json!({ "order_number": "29340", "channel": "phone" }))];
    report
}

fn scenario(expect: Expect) -> Scenario {
    Scenario {
        name: "s".into(),
        file: "s.yaml".into(),
        assistant: "assistants/luigis_booking.yaml".into(),
        variables: BTreeMap::new(),
        caller: serde_yaml::from_str("lines: []").unwrap(),
        recording: None,
        expect,
        tags: Vec::new(),
    }
}

#[test]
fn a_call_is_scored_against_every_expectation() {
    let good = Expect {
        disposition: Some("booked".into()),
        extracted: [("party_size".to_string(), serde_json::json!("2")), ("name".to_string(), serde_json::json!("sarah"))].into_iter().collect(),
        says: vec!["is that right\\?".into()],
        never_says: vec!["as an ai".into()],
        ended_by: Some("agent".into()),
        max_duration_s: Some(60.0),
        tools: vec![ToolExpect { name: "lookup_order".into(), arguments: [("order_number".to_string(), serde_json::json!(29340))].into_iter().collect() }],
        ..Expect::default()
    };
    let outcome = score(&scenario(good), &report(), &[], 0.0);
    assert!(outcome.passed, "{:?}", outcome.failures);
    assert_eq!((outcome.fields_right, outcome.fields_expected), (2, 2));

    let bad = Expect {
        disposition: Some("not_booked".into()),
        extracted: [("time".to_string(), serde_json::json!("19:00"))].into_iter().collect(),
        says: vec!["goodbye".into()],
        never_says: vec!["table for \\d".into()],
        ended_by: Some("caller".into()),
        max_duration_s: Some(10.0),
        max_talk_over_ms: Some(100.0),
        tools: vec![ToolExpect { name: "lookup_order".into(), arguments: [("order_number".to_string(), serde_json::json!("1234"))].into_iter().collect() }],
        ..Expect::default()
    };
    let outcome = score(&scenario(bad), &report(), &[], 400.0);
    assert!(!outcome.passed);
    assert_eq!(outcome.failures.len(), 8, "{:#?}", outcome.failures);
    assert!(outcome.failures.iter().any(|f| f.contains("tool `lookup_order` was not called with {\"order_number\":\"1234\"}")), "{:#?}", outcome.failures);
    assert!(outcome.failures.iter().any(|f| f.contains("\"table for 2\"")), "{:#?}", outcome.failures);
}

#[test]
fn a_run_is_summed_up_and_compared_with_its_baseline() {
    let pass = Outcome { name: "a".into(), assistant: "x".into(), passed: true, expected_disposition: Some("booked".into()), disposition: "booked".into(), voice_to_voice_ms: vec![500.0, 700.0], ..Outcome::default() };
    let fail = Outcome { name: "b".into(), assistant: "y".into(), passed: false, failures: vec!["disposition `x`".into()], expected_disposition: Some("booked".into()), disposition: "x".into(), voice_to_voice_ms: vec![2_000.0], ..Outcome::default() };
    let baseline = results(vec![pass.clone(), Outcome { passed: true, failures: vec![], ..fail.clone() }]);
    let current = results(vec![pass, fail]);
    assert_eq!(current.overall.task_success, 0.5);
    assert_eq!(current.overall.disposition_accuracy, Some(0.5));
    assert_eq!(current.by_assistant["x"].passed, 1);
    let found = regressions(&current, &baseline, Thresholds::default());
    assert!(found.iter().any(|r| r.contains("scenario `b` passed in the baseline")), "{found:?}");
    assert!(found.iter().any(|r| r.starts_with("task success 50%")), "{found:?}");
    assert!(regressions(&baseline, &baseline, Thresholds::default()).is_empty());
}

#[test]
fn talk_over_counts_frames_where_both_sides_are_loud() {
    let rate = 8_000;
    let loud = vec![0.3f32; rate as usize];
    let quiet = vec![0.0f32; rate as usize];
    let half: Vec<f32> = (0..rate as usize).map(|i| if i < rate as usize / 2 { 0.3 } else { 0.0 }).collect();
    assert_eq!(talk_over_ms(&loud, &quiet, rate), 0.0);
    assert_eq!(talk_over_ms(&loud, &half, rate), 500.0);
}

#[test]
fn word_errors_count_numbers_as_a_listener_would() {
    assert_eq!(word_errors("A table for two at 8 p.m.", "a table for 2 at 8pm"), (0, 7));
    assert_eq!(word_errors("It's under Patel.", "It's under hotel."), (1, 4));
    assert_eq!(word_errors("yes", ""), (1, 1));
    // Digit strings however they are written: words, one number, digits in groups.
    assert_eq!(word_errors("two nine three four zero", "29340"), (0, 5));
    assert_eq!(word_errors("It's 4 5 1 2 9.", "It's 4 5 1, 2 9."), (0, 7));
    assert_eq!(word_errors("ten of clubs", "10 of clubs."), (0, 4));
    assert_eq!(word_errors("twenty five", "25"), (0, 2));
    assert_eq!(word_errors("two nine three four zero", "29330"), (1, 5));
    assert_eq!(word_errors("", "uh"), (1, 0));
}

#[test]
fn word_errors_take_one_way_of_writing_words_for_another() {
    // Contractions spelled out, as Whisper's normalizer scores them.
    assert_eq!(word_errors("I am sorry, it is not here.", "I'm sorry, it isn't here."), (0, 7));
    assert_eq!(word_errors("The mailbox can't accept more.", "the mailbox cannot accept more"), (0, 6));
    assert_eq!(word_errors("won't", "will not"), (0, 2));
    assert_eq!(word_errors("your party's name", "your parties name"), (1, 3), "a possessive stays one word");
    // A compound as one word, two or hyphenated, either side.
    assert_eq!(word_errors("the user's mail box", "the user's mailbox"), (0, 4));
    assert_eq!(word_errors("removed from the blacklist", "removed from the black list"), (0, 4));
    assert_eq!(word_errors("a touch-tone phone", "a touchtone phone"), (0, 4));
    assert_eq!(word_errors("come straight thru", "come straight through"), (0, 3));
    // Other words stay errors: two words that are not the other side's one word, a word for
    // another.
    assert_eq!(word_errors("the mail box", "the male box"), (1, 3));
    assert_eq!(word_errors("the caller", "the color"), (1, 2));
    assert_eq!(word_errors("black list", "blacklists"), (2, 2));
}
