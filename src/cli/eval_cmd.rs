//! `ringline eval run`: plays scenario suites through the real pipeline and scores them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::call_cmds::{self, DEFAULT_LINE_RATE};
use crate::call::Speaker;
use crate::assistant::{prompt, Assistant};
use crate::eval::{self, Outcome, Results, Scenario, Thresholds};
use crate::models::ModelStore;
use crate::pipeline::{Credentials, EngineRegistry};

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Run scenario suites (folders or files of YAML scenarios) and score them.
    Run(RunArgs),
    /// Replay a recorded two-channel call against an assistant: the caller's turns (cut by the
    /// VAD) are played as the new agent answers, beside what the recorded agent said.
    Replay(super::replay_cmd::ReplayArgs),
    /// Render a run's results (`eval run --json`) as an HTML report.
    Report {
        /// The results file.
        results: PathBuf,
        /// An earlier run's results, to compare with.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Where to write the page.
        #[arg(long, default_value = "eval-report.html")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Suites: folders (searched for *.yaml) or scenario files.
    #[arg(required = true)]
    pub suites: Vec<PathBuf>,
    /// Scenarios run at once (calls run in real time: more than the cores can hold slows all).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Only scenarios whose name matches this pattern (`*` matches anything).
    #[arg(long)]
    pub filter: Option<String>,
    /// Write the results (figures and every scenario's outcome) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A previous run's JSON: exit non-zero, naming them, when scenarios or metrics regress.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Task success may drop this many points below the baseline's (0–100).
    #[arg(long, default_value_t = 0.0)]
    pub allowed_drop: f64,
    /// Exit non-zero when any scenario fails (for CI's smoke suite).
    #[arg(long)]
    pub strict: bool,
    /// The line's sample rate (8000 for the telephone band).
    #[arg(long, default_value_t = DEFAULT_LINE_RATE)]
    pub line_rate: u32,
    /// Write an HTML report (self-contained; each call's recording goes beside it in
    /// FILE-audio/).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// An OpenAI-compatible endpoint (`…/v1`) that judges scenarios' `expect.judge` criteria
    /// (key in RINGLINE_JUDGE_API_KEY); without one they are skipped.
    #[arg(long, env = "RINGLINE_JUDGE_URL")]
    pub judge_url: Option<String>,
    #[arg(long, env = "RINGLINE_JUDGE_MODEL", default_value = "gpt-4o-mini")]
    pub judge_model: String,
    /// Every agent on this local LLM instead of its assistant's (e.g. `qwen2.5-coder-0.5b`): a
    /// model change measured before it ships.
    #[arg(long, value_name = "MODEL")]
    pub llm_model: Option<String>,
}

pub fn run(command: EvalCommand) -> anyhow::Result<()> {
    let args = match command {
        EvalCommand::Run(args) => args,
        EvalCommand::Replay(args) => return super::replay_cmd::run(args),
        EvalCommand::Report { results, baseline, out } => {
            let results = read_results(&results)?;
            let baseline = baseline.as_deref().map(read_results).transpose()?;
            write_report(&out, &results, baseline.as_ref())?;
            return Ok(());
        }
    };
    let scenarios = match eval::load(&args.suites) {
        Ok(scenarios) => scenarios,
        Err(problems) => {
            for problem in &problems {
                println!("error   {problem}");
            }
            anyhow::bail!("{} problem(s) in the scenario files; nothing was run", problems.len());
        }
    };
    let scenarios: Vec<Scenario> = scenarios.into_iter().filter(|s| args.filter.as_deref().is_none_or(|f| matches_glob(f, &s.name))).collect();
    if scenarios.is_empty() {
        anyhow::bail!("no scenario matches; check the suite paths and --filter");
    }
    let baseline: Option<Results> = args.baseline.as_deref().map(read_results).transpose()?;
    // Recordings go beside the report, in FILE-audio/, named by the scenario's place in the run.
    let audio_dir: Option<(PathBuf, String)> = match &args.report {
        Some(report) => {
            let folder = format!("{}-audio", report.file_stem().unwrap_or_default().to_string_lossy());
            let dir = report.parent().unwrap_or(std::path::Path::new(".")).join(&folder);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Some((dir, folder))
        }
        None => None,
    };
    let store = ModelStore::from_env()?;
    if let Some(name) = &args.llm_model {
        local_llm(&store, name)?;
        println!("every agent on the local LLM {name}, not its assistant's");
    }
    let registry = Arc::new(call_cmds::operator_engines(&store));
    let judge = args.judge_url.as_deref().map(|url| eval::judge::Judge::new(url, &args.judge_model));
    let runtime = call_cmds::runtime()?;
    let progress = ProgressBar::new(scenarios.len() as u64);
    progress.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} scenarios  {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let outcomes: Vec<Outcome> = runtime.block_on(async {
        futures::stream::iter(scenarios.iter().cloned().enumerate())
            .map(|(index, scenario)| {
                let (store, registry, progress, judge) = (store.clone(), registry.clone(), progress.clone(), judge.clone());
                let llm_model = args.llm_model.clone();
                let audio = audio_dir.as_ref().map(|(dir, folder)| (dir.join(format!("{index:03}.wav")), format!("{folder}/{index:03}.wav")));
                async move {
                    progress.set_message(scenario.name.clone());
                    let mut outcome = play(&store, &registry, &scenario, llm_model.as_deref(), args.line_rate, audio).await;
                    if !scenario.expect.judge.is_empty() && outcome.error.is_none() {
                        outcome.judged = match &judge {
                            Some(judge) => judge.judge(&scenario.expect.judge, &outcome.transcript).await,
                            None => eval::judge::not_judged(&scenario.expect.judge),
                        };
                        for verdict in outcome.judged.iter().filter(|v| v.met == Some(false)) {
                            outcome.failures.push(format!("judge: {}: {}", verdict.criterion, verdict.reason));
                            outcome.passed = false;
                        }
                    }
                    print_line(&progress, format!("{} {}", if outcome.passed { "PASS" } else { "FAIL" }, outcome.name));
                    for failure in outcome.failures.iter().chain(outcome.error.iter()) {
                        print_line(&progress, format!("       {failure}"));
                    }
                    progress.inc(1);
                    outcome
                }
            })
            .buffered(args.jobs.max(1))
            .collect()
            .await
    });
    progress.finish_and_clear();
    let mut results = eval::results(outcomes);
    results.llm_model = args.llm_model.clone();
    print_figures(&results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?).with_context(|| format!("writing {}", path.display()))?;
        println!("results: {}", path.display());
    }
    if let Some(report) = &args.report {
        write_report(report, &results, baseline.as_ref())?;
    }
    if let Some(baseline) = &baseline {
        let thresholds = Thresholds { task_success_drop: args.allowed_drop / 100.0, ..Thresholds::default() };
        let found = eval::regressions(&results, baseline, thresholds);
        if !found.is_empty() {
            for regression in &found {
                println!("regression: {regression}");
            }
            anyhow::bail!("{} regression(s) against the baseline", found.len());
        }
        println!("no regression against the baseline");
    }
    let failed = results.overall.scenarios - results.overall.passed;
    println!("eval: {} passed, {failed} failed", results.overall.passed);
    if args.strict && failed > 0 {
        anyhow::bail!("{failed} of {} scenario(s) failed", results.overall.scenarios);
    }
    Ok(())
}

/// Checks that `name` is a local LLM of the manifest, installed: before any scenario runs.
fn local_llm(store: &ModelStore, name: &str) -> anyhow::Result<()> {
    let spec = store.manifest.get(name).map_err(|e| anyhow::anyhow!("--llm-model: {e}"))?;
    if spec.role != "llm" {
        let llms: Vec<&str> = store.manifest.models.iter().filter(|m| m.role == "llm").map(|m| m.name.as_str()).collect();
        anyhow::bail!("--llm-model: `{name}` is a {} model, not an LLM; use one of: {}", spec.role, llms.join(", "));
    }
    store.require(name).map_err(|e| anyhow::anyhow!("--llm-model: {e}"))?;
    Ok(())
}

fn read_results(path: &std::path::Path) -> anyhow::Result<Results> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a results file of `eval run --json`", path.display()))
}

fn write_report(path: &std::path::Path, results: &Results, baseline: Option<&Results>) -> anyhow::Result<()> {
    let page = eval::report::html(results, baseline, &machine(results));
    std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}

/// This machine in a line (the figures in a report are this machine's), and the LLM the run
/// put every agent on in place of its assistant's.
fn machine(results: &Results) -> String {
    let llm = results.llm_model.as_deref().map(|model| format!(" Every agent on the local LLM {model}.")).unwrap_or_default();
    format!("Run on {}; ringline {}.{llm}", call_cmds::machine_line(), env!("CARGO_PKG_VERSION"))
}

/// Plays one scenario; a scenario that cannot run is a failed outcome with the reason.
/// `audio`: where to write the call's recording, and its path as the report links it.
/// `llm_model`: a local LLM that replaces the assistant's.
async fn play(store: &ModelStore, registry: &EngineRegistry, scenario: &Scenario, llm_model: Option<&str>, line_rate: u32, audio: Option<(PathBuf, String)>) -> Outcome {
    let failed = |error: String| Outcome {
        name: scenario.name.clone(),
        file: scenario.file.display().to_string(),
        assistant: scenario.assistant.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        error: Some(error),
        ..Outcome::default()
    };
    let assistant = match Assistant::load(&scenario.assistant) {
        Ok(mut assistant) => {
            if let Some(model) = llm_model {
                assistant.spec.llm.provider = crate::assistant::LlmProvider::Local;
                assistant.spec.llm.model = model.to_string();
            }
            Arc::new(assistant)
        }
        Err(error) => return failed(error.to_string()),
    };
    if let Err(error) = prompt::resolve_variables(&assistant, &scenario.variables) {
        return failed(format!("{}: {error}", scenario.file.display()));
    }
    let engines = match registry.engines_for(&assistant, &Credentials::from_env()).await {
        Ok(engines) => engines,
        Err(error) => return failed(format!("cannot load the assistant's models: {error}")),
    };
    let variables: BTreeMap<String, String> = scenario.variables.clone();
    let stt = engines.stt.clone();
    // A recorded caller: its turns cut by the VAD into clips (kept until the call is over).
    let clips = tempfile::tempdir();
    let (caller, reference) = match (&scenario.recording, &clips) {
        (None, _) => (scenario.caller.clone(), Vec::new()),
        (Some(recorded), Ok(dir)) => match recorded_caller(recorded, &engines, dir.path()) {
            Ok(found) => found,
            Err(error) => return failed(format!("{}: {error:#}", recorded.path.display())),
        },
        (Some(_), Err(error)) => return failed(format!("cannot make a folder for the recording's turns: {error}")),
    };
    match call_cmds::simulate_call(store, engines, assistant, caller, variables, line_rate, false).await {
        Ok(call) => {
            let talk_over = eval::talk_over_ms(&call.caller_track, &call.agent_track, call.rate);
            let mut outcome = eval::score(scenario, &call.report, &call.log.caller_lines, talk_over);
            outcome.reference = reference;
            outcome.caller_speech = eval::activity(&call.caller_track, call.rate);
            outcome.agent_speech = eval::activity(&call.agent_track, call.rate);
            // Intelligibility: the agent's audio transcribed back, against what it meant to say.
            let meant = call.report.said_by(Speaker::Agent).collect::<Vec<_>>().join(" ");
            let heard = transcribe_spans(stt, &call.agent_track, call.rate, &outcome.agent_speech).await;
            (outcome.agent_errors, outcome.agent_words) = eval::word_errors(&meant, &heard);
            if let Some((path, link)) = audio {
                match crate::audio::write_wav_channels(&path, call.rate, &[&call.caller_track, &call.agent_track]) {
                    Ok(()) => outcome.audio = Some(link),
                    Err(error) => tracing::warn!(path = %path.display(), %error, "the recording could not be written; the report will lack it"),
                }
            }
            outcome
        }
        Err(error) => failed(format!("the call failed: {error:#}")),
    }
}

/// A recorded call's caller channel as a script — its turns, cut by the VAD, as audio lines —
/// and what the recorded agent said after each turn (its channel transcribed: the reference).
fn recorded_caller(recorded: &eval::RecordedCaller, engines: &crate::pipeline::Engines, dir: &std::path::Path) -> anyhow::Result<(crate::simulation::CallerScript, Vec<String>)> {
    use crate::eval::replay::{caller_turns, turn_clips, two_channels, RATE};
    let (left, right, rate) = two_channels(&recorded.path)?;
    let (caller, agent) = if recorded.caller_left { (left, right) } else { (right, left) };
    let caller = crate::audio::resample::resample(&caller, rate, RATE)?;
    let agent = crate::audio::resample::resample(&agent, rate, RATE)?;
    let mut stream = crate::vad::silero::SileroStream::default();
    let turns = caller_turns(&caller, |frame| engines.vad.probability(&mut stream, frame).unwrap_or(0.0));
    anyhow::ensure!(!turns.is_empty(), "no speech in the caller's channel; is `caller_channel` right?");
    let reference: Vec<String> = (0..turns.len())
        .map(|i| {
            let mut stream = crate::vad::silero::SileroStream::default();
            crate::eval::replay::said_in(crate::eval::replay::answer_after(&agent, &turns, i), engines.stt.as_ref(), |frame| engines.vad.probability(&mut stream, frame).unwrap_or(0.0))
        })
        .collect();
    let lines: Vec<serde_json::Value> = turn_clips(&caller, &turns, dir)?.into_iter().map(|path| serde_json::json!({ "audio": path })).collect();
    Ok((serde_json::from_value(serde_json::json!({ "lines": lines }))?, reference))
}

/// The words in `track` (at `rate`) over its `spans` of sound (seconds), heard as
/// `ringline transcribe` hears a recording: spans closer than a pause that cuts a recording
/// ([`crate::vad::RECORDING_PAUSE_MS`]) are one stretch, each stretch cut out by
/// [`crate::stt::stretch_pieces`] and heard alone on the inference pool — a job per stretch,
/// so other calls' work runs between them.
async fn transcribe_spans(stt: Arc<dyn crate::stt::SpeechToText>, track: &[f32], rate: u32, spans: &[(f64, f64)]) -> String {
    let Ok(audio) = crate::audio::Audio::new(track.to_vec(), rate).to_rate(16_000) else { return String::new() };
    let samples = Arc::new(audio.samples);
    let at = |secs: f64| ((secs * 16_000.0) as usize).min(samples.len());
    let stretches = crate::vad::join_close(spans.iter().map(|&(from, to)| (at(from), at(to))), crate::vad::RECORDING_PAUSE_MS as usize * 16);
    let mut pieces = Vec::with_capacity(stretches.len());
    for range in crate::stt::stretch_pieces(samples.len(), &stretches) {
        let (stt, samples, from) = (stt.clone(), samples.clone(), range.start);
        let heard = crate::pipeline::pool::stt().run_on_cores(crate::pipeline::pool::Urgency::Ahead, crate::pipeline::pool::stt_cores(), move |cores| crate::stt::with_threads(cores, || stt.transcribe(&samples[range])));
        if let Ok(Ok(transcript)) = heard.await {
            pieces.push((from, transcript));
        }
    }
    crate::stt::join_pieces(samples.len() as f64 / 16_000.0, pieces).text
}

/// A line above the progress bar, or plainly when there is no terminal to draw a bar on.
fn print_line(progress: &ProgressBar, line: String) {
    if progress.is_hidden() {
        println!("{line}");
    } else {
        progress.println(line);
    }
}

fn print_figures(results: &Results) {
    let pct = |v: Option<f64>| v.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or_else(|| "-".into());
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
    println!();
    println!("{:<26} {:>9} {:>8} {:>12} {:>11} {:>8} {:>8}", "assistant", "scenarios", "success", "disposition", "extraction", "v2v p50", "v2v p95");
    let rows = results.by_assistant.iter().map(|(name, f)| (name.as_str(), f)).chain([("all", &results.overall)]);
    for (name, f) in rows {
        println!(
            "{:<26} {:>9} {:>8} {:>12} {:>11} {:>8} {:>8}",
            name,
            f.scenarios,
            pct(Some(f.task_success)),
            pct(f.disposition_accuracy),
            pct(f.extraction_accuracy),
            ms(f.voice_to_voice_p50_ms),
            ms(f.voice_to_voice_p95_ms)
        );
    }
    println!("barge-in reaction p95: {} ms; talk-over in all: {:.0} ms", ms(results.overall.barge_in_p95_ms), results.overall.talk_over_ms);
    println!(
        "caller speech recognized at {} word error rate; the agent's speech transcribed back at {} (intelligibility)",
        pct(results.overall.stt_wer),
        pct(results.overall.agent_wer)
    );
    let guards: Vec<String> = results.overall.guards.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    println!("guards fired on LLM replies: {}", if guards.is_empty() { "none".to_string() } else { guards.join(", ") });
}

/// `*` matches any run of characters; everything else matches itself.
fn matches_glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(after) = rest.strip_prefix(part) else { return false };
            rest = after;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else { return false };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        assert!(super::matches_glob("booking*", "booking happy path"));
        assert!(super::matches_glob("*barge*", "a barge-in"));
        assert!(!super::matches_glob("booking", "booking happy path"));
        assert!(super::matches_glob("*", "anything"));
    }

    #[test]
    fn another_llm_must_be_a_local_llm_that_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::models::ModelStore::new(dir.path().to_path_buf(), crate::models::Manifest::parse(crate::models::MANIFEST).unwrap());
        let refused = |name: &str| super::local_llm(&store, name).unwrap_err().to_string();
        assert!(refused("gpt-9").contains("unknown model `gpt-9`"), "{}", refused("gpt-9"));
        let not_llm = refused("whisper-tiny.en");
        assert!(not_llm.contains("not an LLM") && not_llm.contains("smollm2-135m") && not_llm.contains("qwen2.5-coder-0.5b"), "{not_llm}");
        assert!(refused("qwen2.5-coder-0.5b").contains("ringline models pull qwen2.5-coder-0.5b"), "an empty store names the command");
    }
}
