//! The eval harness: scenarios replayed through the real pipeline, scored, and compared with
//! a baseline.
//!
//! A suite is a folder of YAML files under `eval/`; a file holds one scenario, or several
//! under `scenarios:`. A scenario names an assistant file and its variables, the caller's side
//! (a caller script inline or in a file), and what must happen: the disposition, extracted
//! fields, phrases the agent must or must not say, who ended the call, latency and duration
//! budgets. `ringline eval run` plays each through the pipeline on the loopback line (the
//! running lives in `cli/eval_cmd.rs`); this module loads scenarios with located errors,
//! scores a finished call, sums a run up, and finds regressions against a baseline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::call::Speaker;
use crate::pipeline::metrics::percentile;
use crate::pipeline::CallReport;
use crate::simulation::CallerScript;

/// What a scenario expects; every part is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub disposition: Option<String>,
    /// Fields the call must extract, with their values (a flow's slots).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extracted: Map<String, Value>,
    /// Regular expressions the agent must say (case-insensitive), each at least once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub says: Vec<String>,
    /// Regular expressions the agent must never say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub never_says: Vec<String>,
    /// `agent` or `caller`: who hung up.
    pub ended_by: Option<String>,
    /// Numbers the call was transferred to.
    pub transferred_to: Option<String>,
    pub max_duration_s: Option<f64>,
    /// The 95th percentile of voice-to-voice latency over the call's turns.
    pub voice_to_voice_p95_ms: Option<f64>,
    /// The most time caller and agent may both be talking.
    pub max_talk_over_ms: Option<f64>,
    /// Tools the call must call (the LLM's, or a flow's HTTP tools), each with at least these
    /// arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolExpect>,
    /// Intents the caller's lines must show, in this order (other lines may come between).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intents: Vec<String>,
    /// Whether the live analysis must (or must not) flag the caller as escalating.
    pub escalated: Option<bool>,
    /// Free-form criteria an LLM judge scores against the transcript, when one is configured
    /// (`eval run --judge-url`); skipped, not failed, without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub judge: Vec<String>,
}

/// A tool a scenario expects to be called.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolExpect {
    pub name: String,
    /// Arguments the call must have had, with these values (others may be there too).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub arguments: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioSpec {
    name: String,
    /// An assistant file, relative to the scenario's folder or the working directory.
    assistant: PathBuf,
    #[serde(default)]
    variables: BTreeMap<String, Value>,
    /// The caller, inline.
    caller: Option<CallerScript>,
    /// The caller, as a script file.
    caller_file: Option<PathBuf>,
    /// The caller, as a recorded two-channel call: its caller channel cut into turns by the
    /// VAD, each played after the agent has answered the one before (reactive replay).
    recording: Option<PathBuf>,
    /// The recording's caller channel: `left` (a Ringline recording's) or `right`.
    caller_channel: Option<String>,
    #[serde(default)]
    expect: Expect,
    /// Free-form labels, for filtering and reports.
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SuiteFile {
    Many { scenarios: Vec<serde_yaml::Value> },
    One(serde_yaml::Value),
}

/// A recorded call a scenario replays: the file and whether the caller is on the left.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCaller {
    pub path: PathBuf,
    pub caller_left: bool,
}

/// A loaded scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub file: PathBuf,
    pub assistant: PathBuf,
    pub variables: BTreeMap<String, String>,
    /// The scripted caller (empty when the caller is a recording).
    pub caller: CallerScript,
    pub recording: Option<RecordedCaller>,
    pub expect: Expect,
    pub tags: Vec<String>,
}

/// Every scenario in `paths` (files, or folders searched for `*.yaml`), in path order; or
/// every problem, each as `file[:line]: field: message`.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Scenario>, Vec<String>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = walk(path);
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(vec![format!("{}: no such file or folder", path.display())]);
        }
    }
    let mut scenarios = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match load_file(&file) {
            Ok(found) => scenarios.extend(found),
            Err(found) => problems.extend(found),
        }
    }
    let mut names = BTreeMap::new();
    for scenario in &scenarios {
        if let Some(other) = names.insert(scenario.name.clone(), scenario.file.clone()) {
            problems.push(format!("{}: field `name`: `{}` is also the name of a scenario in {}; names must be unique", scenario.file.display(), scenario.name, other.display()));
        }
    }
    if problems.is_empty() {
        Ok(scenarios)
    } else {
        Err(problems)
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out
}

fn load_file(file: &Path) -> Result<Vec<Scenario>, Vec<String>> {
    let text = std::fs::read_to_string(file).map_err(|e| vec![format!("{}: cannot read: {e}", file.display())])?;
    let parsed: SuiteFile = serde_yaml::from_str(&text).map_err(|e| vec![located(file, &e)])?;
    let values = match parsed {
        SuiteFile::Many { scenarios } => scenarios,
        SuiteFile::One(value) => vec![value],
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let spec: ScenarioSpec = match serde_path_to_error::deserialize(value) {
            Ok(spec) => spec,
            Err(e) => {
                let field = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = crate::assistant::join_field(&field, crate::assistant::named_field(&message));
                let line = crate::assistant::check::line_of(&text, field.trim_start_matches('.')).map(|l| format!(":{l}")).unwrap_or_default();
                let which = if text.contains("scenarios:") { format!(" (scenario {})", i + 1) } else { String::new() };
                problems.push(format!("{}{line}{which}: field `{field}`: {message}", file.display()));
                continue;
            }
        };
        match resolve(spec, file, &text) {
            Ok(scenario) => out.push(scenario),
            Err(found) => problems.extend(found),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn located(file: &Path, error: &serde_yaml::Error) -> String {
    let line = error.location().map(|l| format!(":{}", l.line())).unwrap_or_default();
    format!("{}{line}: {error}", file.display())
}

fn resolve(spec: ScenarioSpec, file: &Path, text: &str) -> Result<Scenario, Vec<String>> {
    let mut problems = Vec::new();
    let dir = file.parent().unwrap_or(Path::new("."));
    let at = |field: &str| crate::assistant::check::line_of(text, field).map(|l| format!(":{l}")).unwrap_or_default();
    let problem = |field: &str, message: String| format!("{}{}: field `{field}`: {message}", file.display(), at(field));
    let find = |relative: &Path| -> Option<PathBuf> { [dir.join(relative), relative.to_path_buf()].into_iter().find(|p| p.is_file()) };
    let assistant = match find(&spec.assistant) {
        Some(path) => path,
        None => {
            problems.push(problem("assistant", format!("`{}` is not a file (relative to the scenario's folder or the working directory)", spec.assistant.display())));
            PathBuf::new()
        }
    };
    let recording = match &spec.recording {
        Some(path) => match find(path) {
            Some(found) => match crate::eval::replay::two_channels(&found) {
                Ok(_) => Some(RecordedCaller { path: found, caller_left: spec.caller_channel.as_deref() != Some("right") }),
                Err(e) => {
                    problems.push(problem("recording", format!("{e:#}")));
                    None
                }
            },
            None => {
                problems.push(problem("recording", format!("`{}` is not a file (relative to the scenario's folder)", path.display())));
                None
            }
        },
        None => None,
    };
    if spec.caller_channel.as_deref().is_some_and(|c| c != "left" && c != "right") {
        problems.push(problem("caller_channel", "use left or right".into()));
    }
    let caller = match (spec.caller, &spec.caller_file) {
        (None, None) if spec.recording.is_some() => {
            // The lines are cut from the recording when the scenario runs (the VAD needs its model).
            serde_json::from_value::<CallerScript>(serde_json::json!({ "lines": [] })).ok()
        }
        (Some(_), _) | (_, Some(_)) if spec.recording.is_some() => {
            problems.push(problem("recording", "give `recording`, `caller` or `caller_file`: one of them".into()));
            None
        }
        (Some(mut script), None) => {
            script.resolve_recordings(dir);
            Some(script)
        }
        (None, Some(path)) => match find(path).map(|p| CallerScript::load(&p)) {
            Some(Ok(script)) => Some(script),
            Some(Err(e)) => {
                problems.push(problem("caller_file", e.to_string()));
                None
            }
            None => {
                problems.push(problem("caller_file", format!("`{}` is not a file", path.display())));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(problem("caller", "give `caller` or `caller_file`, not both".into()));
            None
        }
        (None, None) => {
            problems.push(problem("caller", "missing: the caller's lines (`caller: { lines: [...] }`), a script file (`caller_file`) or a recorded call (`recording`)".into()));
            None
        }
    };
    if let Some(script) = caller.as_ref().filter(|_| spec.recording.is_none()) {
        for (field, message) in script.problems() {
            problems.push(problem(&format!("caller.{field}"), message));
        }
        for (i, line) in script.lines.iter().enumerate() {
            if let Some(audio) = line.audio.as_ref().filter(|a| !a.is_file()) {
                problems.push(problem(&format!("caller.lines.{i}.audio"), format!("`{}` is not a file (relative to the scenario's folder)", audio.display())));
            }
        }
    }
    for (list, field) in [(&spec.expect.says, "expect.says"), (&spec.expect.never_says, "expect.never_says")] {
        for (i, pattern) in list.iter().enumerate() {
            if let Err(e) = regex::RegexBuilder::new(pattern).case_insensitive(true).size_limit(1 << 20).build() {
                problems.push(problem(&format!("{field}.{i}"), format!("not a regular expression: {e}")));
            }
        }
    }
    if spec.expect.ended_by.as_deref().is_some_and(|w| w != "agent" && w != "caller") {
        problems.push(problem("expect.ended_by", "use agent or caller".into()));
    }
    let mut variables = BTreeMap::new();
    for (name, value) in spec.variables {
        match value {
            Value::String(text) => {
                variables.insert(name, text);
            }
            Value::Number(_) | Value::Bool(_) => {
                variables.insert(name, value.to_string());
            }
            _ => problems.push(problem(&format!("variables.{name}"), "must be a string, number or boolean".into())),
        }
    }
    match (caller, problems.is_empty()) {
        (Some(caller), true) => Ok(Scenario { name: spec.name, file: file.to_path_buf(), assistant, variables, caller, recording, expect: spec.expect, tags: spec.tags }),
        _ => Err(problems),
    }
}

/// How one scenario went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub name: String,
    pub file: String,
    pub assistant: String,
    pub passed: bool,
    /// Each expectation that did not hold, in words.
    pub failures: Vec<String>,
    pub disposition: String,
    pub expected_disposition: Option<String>,
    pub extracted: Map<String, Value>,
    /// Expected fields matched, of those expected.
    pub fields_right: usize,
    pub fields_expected: usize,
    pub voice_to_voice_ms: Vec<f64>,
    pub barge_in_ms: Vec<f64>,
    pub talk_over_ms: f64,
    pub duration_s: f64,
    pub ended_by: String,
    /// (speaker, text)
    pub transcript: Vec<(Speaker, String)>,
    /// How often each guard fired on the LLM's replies.
    #[serde(default)]
    pub guards: BTreeMap<String, usize>,
    /// Set when the call could not run at all.
    pub error: Option<String>,
    /// When each transcript line was said (seconds into the call), in the transcript's order.
    #[serde(default)]
    pub said_at_s: Vec<f64>,
    /// Each answered turn's stage latencies.
    #[serde(default)]
    pub turns: Vec<TurnFigures>,
    /// The LLM judge's verdict on each of `expect.judge`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub judged: Vec<judge::Judgement>,
    /// For a recorded caller: what the recorded agent said after each caller turn (its
    /// channel, transcribed), the reference the new answers are compared with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference: Vec<String>,
    /// When each side made sound: (from, to) in seconds, measured on the recording.
    #[serde(default)]
    pub caller_speech: Vec<(f64, f64)>,
    #[serde(default)]
    pub agent_speech: Vec<(f64, f64)>,
    /// When each barge-in stopped the agent (seconds into the call).
    #[serde(default)]
    pub barge_ins_at_s: Vec<f64>,
    /// The call's recording (caller left, agent right), relative to the report, when one was
    /// written.
    #[serde(default)]
    pub audio: Option<String>,
    /// Speech recognition of the caller: word errors against what the script says, and the
    /// words it says.
    #[serde(default)]
    pub stt_errors: usize,
    #[serde(default)]
    pub stt_words: usize,
    /// The agent's intelligibility: its audio transcribed back, word errors against what it
    /// meant to say, and those words.
    #[serde(default)]
    pub agent_errors: usize,
    #[serde(default)]
    pub agent_words: usize,
}

/// Word errors (substitutions, insertions, deletions) turning `reference` into `heard`, over
/// normalized words; and the reference's length.
///
/// Numbers count as a listener (and a flow's digit parser) reads them: a run of number words
/// or digits becomes its digits, one word each, so "two nine three four zero", "29340" and
/// "2 9 3, 4 0" are the same five words, and "ten" is "10".
///
/// Ways of writing the same words are not errors, as the usual scoring of speech recognition
/// has it (Whisper's English normalizer, the alternates of NIST's scoring): contractions are
/// spelled out ("can't" is "can not", "I'm" is "I am", "it's" is "it is"; a possessive "'s"
/// stays, where Whisper's normalizer reads every "'s" as "is"), a compound is one word or two
/// ("mailbox", "mail box" and "mail-box"), and a few informal spellings are the word ("thru",
/// "ok").
pub fn word_errors(reference: &str, heard: &str) -> (usize, usize) {
    let (r, h) = (canonical_words(reference), canonical_words(heard));
    // The reference's length as written: joining its compounds does not shorten it.
    let length = r.len();
    let (r, h) = (join_compounds(&r, &h), join_compounds(&h, &r));
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if rw == hw { previous } else { 1 + previous.min(row[j]).min(row[j + 1]) };
            previous = current;
        }
    }
    (row[h.len()], length)
}

/// `words` with each pair of neighbours that `other` writes as one word joined into it
/// ("mail box" where the other side has "mailbox").
fn join_compounds(words: &[String], other: &[String]) -> Vec<String> {
    let joined: std::collections::HashSet<&str> = other.iter().map(String::as_str).collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if let Some(next) = words.get(i + 1) {
            let pair = format!("{}{next}", words[i]);
            if joined.contains(pair.as_str()) && !words.contains(&pair) {
                out.push(pair);
                i += 2;
                continue;
            }
        }
        out.push(words[i].clone());
        i += 1;
    }
    out
}

/// A word's contraction spelled out, or an informal spelling as the word.
fn spelled_out(word: &str) -> Option<&'static [&'static str]> {
    Some(match word {
        "won't" => &["will", "not"],
        "can't" | "cannot" => &["can", "not"],
        "shan't" => &["shall", "not"],
        "ain't" => &["is", "not"],
        "let's" => &["let", "us"],
        "y'all" => &["you", "all"],
        "gonna" => &["going", "to"],
        "wanna" => &["want", "to"],
        "gotta" => &["got", "to"],
        "thru" => &["through"],
        "ok" => &["okay"],
        _ => return None,
    })
}

/// Words as [`word_errors`] compares them: normalized, contractions spelled out, numbers as
/// digits.
fn canonical_words(text: &str) -> Vec<String> {
    const NUMBER_WORDS: [&str; 30] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
        "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "double", "triple",
    ];
    const SUFFIXES: [(&str, &str); 6] = [("n't", "not"), ("'re", "are"), ("'d", "would"), ("'ll", "will"), ("'ve", "have"), ("'m", "am")];
    // Words whose "'s" is "is" (or "has"); elsewhere it is a possessive and stays.
    const IS: [&str; 12] = ["it", "that", "there", "here", "what", "where", "who", "he", "she", "how", "when", "why"];
    let is_number = |word: &str| word.chars().all(|c| c.is_ascii_digit()) || NUMBER_WORDS.contains(&word);
    let mut words = Vec::new();
    for word in crate::text::normalized_words(text) {
        let word = word.trim_matches('\'');
        if let Some(spelled) = spelled_out(word) {
            words.extend(spelled.iter().map(|w| w.to_string()));
        } else if let Some((suffix, full)) = SUFFIXES.iter().find(|(suffix, _)| word.len() > suffix.len() && word.ends_with(suffix)) {
            words.push(word[..word.len() - suffix.len()].to_string());
            words.push(full.to_string());
        } else if let Some(stem) = word.strip_suffix("'s").filter(|stem| IS.contains(stem)) {
            words.push(stem.to_string());
            words.push("is".to_string());
        } else if let Some(digits) = Some(word.chars().take_while(char::is_ascii_digit).count()).filter(|&d| d > 0 && d < word.len() && word[d..].chars().all(char::is_alphabetic)) {
            // "8pm" and "8 p.m." alike.
            words.push(word[..digits].to_string());
            words.push(word[digits..].to_string());
        } else if !word.is_empty() {
            words.push(word.to_string());
        }
    }
    let mut out = Vec::new();
    let mut run: Vec<String> = Vec::new();
    let flush = |run: &mut Vec<String>, out: &mut Vec<String>| {
        if !run.is_empty() {
            let digits = crate::flow::parse::digits(&run.join(" "));
            if digits.is_empty() {
                out.append(run);
            } else {
                out.extend(digits.chars().filter(char::is_ascii_digit).map(String::from));
                run.clear();
            }
        }
    };
    for word in words {
        if is_number(&word) {
            run.push(word);
        } else {
            flush(&mut run, &mut out);
            out.push(word);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// One turn's latencies, counted from the caller's end of speech.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TurnFigures {
    /// When the caller's speech ended (seconds into the call).
    pub at_s: f64,
    pub end_of_turn_ms: f64,
    pub stt_ms: f64,
    pub llm_ms: f64,
    pub tts_ms: f64,
    pub voice_to_voice_ms: f64,
}

/// Scores a finished call against its scenario. `talk_over_ms` is measured on the recording.
pub fn score(scenario: &Scenario, report: &CallReport, said: &[usize], talk_over_ms: f64) -> Outcome {
    let expect = &scenario.expect;
    let disposition = crate::pipeline::disposition(report);
    let ended_by = report.ended_by.clone().unwrap_or_default();
    let (mut failures, fields_right) = outcome_failures(expect, report, &disposition, &ended_by);
    let duration_s = report.duration.as_secs_f64();
    if let Some(max) = expect.max_duration_s {
        if duration_s > max {
            failures.push(format!("the call took {duration_s:.1} s, more than {max} s"));
        }
    }
    let voice_to_voice_ms: Vec<f64> = report.turns.iter().map(|t| t.voice_to_voice.as_secs_f64() * 1000.0).collect();
    if let (Some(budget), Some(p95)) = (expect.voice_to_voice_p95_ms, percentile(&voice_to_voice_ms, 0.95)) {
        if p95 > budget {
            failures.push(format!("voice-to-voice p95 {p95:.0} ms, over the budget of {budget:.0} ms"));
        }
    }
    if let Some(max) = expect.max_talk_over_ms {
        if talk_over_ms > max {
            failures.push(format!("caller and agent talked over each other for {talk_over_ms:.0} ms, more than {max:.0} ms"));
        }
    }
    let barge_in_ms = report.barge_ins.iter().map(|b| b.stopped.saturating_sub(b.overlap_from).as_secs_f64() * 1000.0).collect();
    let heard = report.said_by(Speaker::Caller).collect::<Vec<_>>().join(" ");
    // The lines as said (one asked for again is said again); all of them when none is known.
    let reference = if said.is_empty() { scenario.caller.reference_text() } else { scenario.caller.reference_of(said.iter().copied()) };
    let (stt_errors, stt_words) = word_errors(&reference, &heard);
    Outcome {
        name: scenario.name.clone(),
        file: scenario.file.display().to_string(),
        assistant: scenario.assistant.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        passed: failures.is_empty(),
        failures,
        disposition,
        expected_disposition: expect.disposition.clone(),
        extracted: report.slots.clone(),
        fields_right,
        fields_expected: expect.extracted.len(),
        voice_to_voice_ms,
        barge_in_ms,
        talk_over_ms,
        duration_s,
        ended_by,
        transcript: report.transcript.iter().map(|(who, text, _)| (*who, text.clone())).collect(),
        guards: report.guards.clone(),
        error: None,
        judged: Vec::new(),
        reference: Vec::new(),
        said_at_s: report.transcript.iter().map(|(_, _, at)| at.as_secs_f64()).collect(),
        turns: report
            .turns
            .iter()
            .map(|t| {
                let ms = |d: std::time::Duration| (d.as_secs_f64() * 1000.0).round();
                TurnFigures {
                    at_s: t.speech_end_at.as_secs_f64(),
                    end_of_turn_ms: ms(t.end_of_turn),
                    stt_ms: ms(t.stt_final),
                    llm_ms: ms(t.llm_first_token),
                    tts_ms: ms(t.tts_first_audio),
                    voice_to_voice_ms: ms(t.voice_to_voice),
                }
            })
            .collect(),
        caller_speech: Vec::new(),
        agent_speech: Vec::new(),
        barge_ins_at_s: report.barge_ins.iter().map(|b| b.stopped.as_secs_f64()).collect(),
        audio: None,
        stt_errors,
        stt_words,
        agent_errors: 0,
        agent_words: 0,
    }
}

/// What the call did against what the scenario expects of its outcome, its words, its actions
/// and the analysis of its lines, each as a failure to print; and how many expected fields came
/// out right.
fn outcome_failures(expect: &Expect, report: &CallReport, disposition: &str, ended_by: &str) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    if let Some(want) = &expect.disposition {
        if disposition != want {
            failures.push(format!("disposition `{disposition}`, expected `{want}`"));
        }
    }
    let mut fields_right = 0;
    for (name, want) in &expect.extracted {
        match report.slots.get(name) {
            Some(got) if same_value(got, want) => fields_right += 1,
            Some(got) => failures.push(format!("extracted {name} = {got}, expected {want}")),
            None => failures.push(format!("{name} was not extracted (expected {want})")),
        }
    }
    let agent_text = report.said_by(Speaker::Agent).collect::<Vec<_>>().join("\n");
    for pattern in &expect.says {
        let found = regex::RegexBuilder::new(pattern).case_insensitive(true).build().map(|r| r.is_match(&agent_text)).unwrap_or(false);
        if !found {
            failures.push(format!("the agent never said /{pattern}/"));
        }
    }
    for pattern in &expect.never_says {
        if let Some(found) = regex::RegexBuilder::new(pattern).case_insensitive(true).build().ok().and_then(|r| r.find(&agent_text).map(|m| m.as_str().to_string())) {
            failures.push(format!("the agent said \"{found}\" (/{pattern}/ is forbidden)"));
        }
    }
    let who_ended = if ended_by.starts_with("agent") { "agent" } else { "caller" };
    if let Some(want) = &expect.ended_by {
        if who_ended != want {
            failures.push(format!("the {who_ended} ended the call ({ended_by}), expected the {want}"));
        }
    }
    if let Some(want) = &expect.transferred_to {
        if !report.transfers.iter().any(|t| t == want) {
            failures.push(format!("not transferred to {want} (transfers: {:?})", report.transfers));
        }
    }
    for want in &expect.tools {
        let matches = |(name, arguments): &(String, Value)| name == &want.name && want.arguments.iter().all(|(k, v)| arguments.get(k).is_some_and(|got| same_value(got, v)));
        if !report.tool_calls.iter().any(matches) {
            let made: Vec<String> = report.tool_calls.iter().map(|(name, args)| format!("{name}({args})")).collect();
            failures.push(format!("tool `{}` was not called with {} (calls: {})", want.name, Value::Object(want.arguments.clone()), if made.is_empty() { "none".into() } else { made.join(", ") }));
        }
    }
    if !expect.intents.is_empty() {
        let mut analyses = report.analyses.clone();
        analyses.sort_by_key(|a| a.line);
        let found: Vec<&str> = analyses.iter().filter_map(|a| a.analysis.intent.as_ref()).map(|m| m.intent.as_str()).collect();
        let mut wanted = expect.intents.iter().peekable();
        for intent in &found {
            if wanted.peek().is_some_and(|w| w.as_str() == *intent) {
                wanted.next();
            }
        }
        if let Some(missing) = wanted.next() {
            failures.push(format!("intents {:?} do not show {:?} in order (missing from `{missing}` on)", found, expect.intents));
        }
    }
    if let Some(want) = expect.escalated {
        let escalated = report.analyses.iter().any(|a| a.escalation);
        if escalated != want {
            failures.push(format!("the caller was {}flagged as escalating", if escalated { "" } else { "not " }));
        }
    }
    (failures, fields_right)
}

/// Values equal for a person: numbers by value, text without case or surrounding spaces.
fn same_value(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => a.trim().eq_ignore_ascii_case(b.trim()),
        (Value::String(a), Value::Number(b)) | (Value::Number(b), Value::String(a)) => a.trim().parse::<f64>().ok() == b.as_f64(),
        _ => got == want,
    }
}

/// A run's figures, overall or for one assistant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    pub scenarios: usize,
    pub passed: usize,
    /// Scenarios whose every expectation held, of all.
    pub task_success: f64,
    pub disposition_accuracy: Option<f64>,
    pub extraction_accuracy: Option<f64>,
    pub voice_to_voice_p50_ms: Option<f64>,
    pub voice_to_voice_p95_ms: Option<f64>,
    pub barge_in_p95_ms: Option<f64>,
    pub talk_over_ms: f64,
    /// Word error rate of the caller's speech as recognized, against the scripts.
    #[serde(default)]
    pub stt_wer: Option<f64>,
    /// Word error rate of the agent's audio transcribed back, against what it meant to say.
    #[serde(default)]
    pub agent_wer: Option<f64>,
    /// How often each guard fired, over all scenarios.
    #[serde(default)]
    pub guards: BTreeMap<String, usize>,
}

pub fn figures<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Figures {
    let outcomes: Vec<&Outcome> = outcomes.into_iter().collect();
    let scenarios = outcomes.len();
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let judged: Vec<&&Outcome> = outcomes.iter().filter(|o| o.expected_disposition.is_some()).collect();
    let disposition_accuracy = (!judged.is_empty()).then(|| judged.iter().filter(|o| o.expected_disposition.as_deref() == Some(o.disposition.as_str())).count() as f64 / judged.len() as f64);
    let (right, expected) = outcomes.iter().fold((0, 0), |(r, e), o| (r + o.fields_right, e + o.fields_expected));
    let v2v: Vec<f64> = outcomes.iter().flat_map(|o| o.voice_to_voice_ms.iter().copied()).collect();
    let barge: Vec<f64> = outcomes.iter().flat_map(|o| o.barge_in_ms.iter().copied()).collect();
    Figures {
        scenarios,
        passed,
        task_success: if scenarios == 0 { 0.0 } else { passed as f64 / scenarios as f64 },
        disposition_accuracy,
        extraction_accuracy: (expected > 0).then(|| right as f64 / expected as f64),
        voice_to_voice_p50_ms: percentile(&v2v, 0.5),
        voice_to_voice_p95_ms: percentile(&v2v, 0.95),
        barge_in_p95_ms: percentile(&barge, 0.95),
        talk_over_ms: outcomes.iter().map(|o| o.talk_over_ms).sum(),
        stt_wer: rate(outcomes.iter().map(|o| (o.stt_errors, o.stt_words))),
        agent_wer: rate(outcomes.iter().map(|o| (o.agent_errors, o.agent_words))),
        guards: outcomes.iter().flat_map(|o| o.guards.iter()).fold(BTreeMap::new(), |mut all, (kind, n)| {
            *all.entry(kind.clone()).or_default() += n;
            all
        }),
    }
}

/// Errors over words, summed; `None` without words.
fn rate<'a>(counts: impl Iterator<Item = (usize, usize)>) -> Option<f64> {
    let (errors, words) = counts.fold((0, 0), |(e, w), (de, dw)| (e + de, w + dw));
    (words > 0).then(|| errors as f64 / words as f64)
}

/// A whole run, as `--json` writes it and `--baseline` reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub overall: Figures,
    pub by_assistant: BTreeMap<String, Figures>,
    pub outcomes: Vec<Outcome>,
    /// The local LLM every agent ran on in place of its assistant's (`eval run --llm-model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_model: Option<String>,
}

pub fn results(outcomes: Vec<Outcome>) -> Results {
    let mut by_assistant: BTreeMap<String, Vec<&Outcome>> = BTreeMap::new();
    for outcome in &outcomes {
        by_assistant.entry(outcome.assistant.clone()).or_default().push(outcome);
    }
    let by_assistant = by_assistant.into_iter().map(|(name, list)| (name, figures(list))).collect();
    Results { overall: figures(&outcomes), by_assistant, outcomes, llm_model: None }
}

/// How much worse a run may be than its baseline before it fails.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Task success may drop by this much (0.05 = five points).
    pub task_success_drop: f64,
    /// Voice-to-voice p95 may grow by this fraction (0.2 = 20%).
    pub latency_growth: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { task_success_drop: 0.0, latency_growth: 0.25 }
    }
}

/// Each way `current` is worse than `baseline` past the thresholds, in words naming the
/// scenario or the metric.
pub fn regressions(current: &Results, baseline: &Results, thresholds: Thresholds) -> Vec<String> {
    let mut out = Vec::new();
    let before: BTreeMap<&str, &Outcome> = baseline.outcomes.iter().map(|o| (o.name.as_str(), o)).collect();
    for outcome in &current.outcomes {
        if let Some(old) = before.get(outcome.name.as_str()) {
            if old.passed && !outcome.passed {
                out.push(format!("scenario `{}` passed in the baseline and fails now: {}", outcome.name, outcome.failures.join("; ")));
            }
        }
    }
    let (now, then) = (&current.overall, &baseline.overall);
    if now.task_success + thresholds.task_success_drop < then.task_success - 1e-9 {
        out.push(format!("task success {:.0}% against {:.0}% in the baseline", now.task_success * 100.0, then.task_success * 100.0));
    }
    if let (Some(now_p95), Some(then_p95)) = (now.voice_to_voice_p95_ms, then.voice_to_voice_p95_ms) {
        if now_p95 > then_p95 * (1.0 + thresholds.latency_growth) {
            out.push(format!("voice-to-voice p95 {now_p95:.0} ms against {then_p95:.0} ms in the baseline (more than {:.0}% worse)", thresholds.latency_growth * 100.0));
        }
    }
    if let (Some(now_acc), Some(then_acc)) = (now.disposition_accuracy, then.disposition_accuracy) {
        if now_acc + 1e-9 < then_acc {
            out.push(format!("disposition accuracy {:.0}% against {:.0}% in the baseline", now_acc * 100.0, then_acc * 100.0));
        }
    }
    out
}

/// When a track carries sound: (from, to) in seconds, from 20 ms frames above -40 dBFS, with
/// gaps under 300 ms bridged and blips under 60 ms dropped.
pub fn activity(track: &[f32], rate: u32) -> Vec<(f64, f64)> {
    let mut spans: Vec<(f64, f64)> = Vec::new();
    for (i, _) in loud_frames(track, rate).enumerate().filter(|(_, loud)| *loud) {
        let (from, to) = (i as f64 * 0.02, (i + 1) as f64 * 0.02);
        match spans.last_mut() {
            Some(last) if from - last.1 < 0.3 => last.1 = to,
            _ => spans.push((from, to)),
        }
    }
    spans.retain(|(from, to)| to - from >= 0.06);
    spans.iter().map(|(a, b)| ((a * 100.0).round() / 100.0, (b * 100.0).round() / 100.0)).collect()
}

/// Milliseconds in which both channels carry sound.
pub fn talk_over_ms(caller: &[f32], agent: &[f32], rate: u32) -> f64 {
    let both = loud_frames(caller, rate).zip(loud_frames(agent, rate)).filter(|(caller, agent)| *caller && *agent).count();
    both as f64 * 20.0
}

/// Whether each 20 ms frame of `track` carries sound: mean power above −40 dBFS.
fn loud_frames(track: &[f32], rate: u32) -> impl Iterator<Item = bool> + '_ {
    let frame = (rate as usize / 50).max(1);
    track.chunks_exact(frame).map(|chunk| chunk.iter().map(|s| s * s).sum::<f32>() / chunk.len() as f32 > 1e-4)
}

pub mod judge;
pub mod replay;
pub mod report;

#[cfg(test)]
mod tests;
