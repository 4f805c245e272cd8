//! `ringline eval replay RECORDING.wav --assistant FILE` or `ringline eval replay CALL_ID`: a
//! recorded two-channel call played against an assistant as it is now. The caller's channel is
//! cut into turns by the VAD; each turn is played after the new agent has answered the one
//! before; what the recorded agent said after each turn is printed beside the new answer — from
//! the stored transcript for a call of this server (with its disposition, summary and extracted
//! fields beside the new ones), else its channel transcribed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::call_cmds::{load_assistant, load_engines, parse_var, runtime, simulate_call};
use crate::assistant::prompt;
use crate::eval::replay::caller_turns;
use crate::models::ModelStore;
use crate::simulation::CallerScript;
use crate::vad::silero::SileroStream;

const RATE: u32 = 16_000;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Channel {
    Left,
    Right,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A two-channel WAV of a call (a Ringline recording has the caller on the left), or the
    /// id of a recorded call this server stored (`call_…`).
    pub recording: String,
    /// The assistant to replay against (its file); for a stored call, default: the assistant it
    /// ran (its file in --assistants, or the stored version of an API assistant).
    #[arg(long)]
    pub assistant: Option<PathBuf>,
    /// Where a stored call is (the server's database).
    #[arg(long, env = "DATABASE_URL", default_value = crate::store::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Where the server keeps recordings.
    #[arg(long, env = "RINGLINE_RECORDINGS_DIR", default_value = "recordings")]
    pub recordings_dir: PathBuf,
    /// The deployment's assistant files (for a stored call's file assistant).
    #[arg(long, default_value = "assistants")]
    pub assistants: PathBuf,
    /// The caller's channel; the other is the recorded agent.
    #[arg(long, value_enum, default_value = "left")]
    pub caller_channel: Channel,
    /// Dynamic variables, `--var name=value` (a stored call's own are used unless given).
    #[arg(long = "var", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Write the turns, the recorded and the new answers, and the new call's outcome as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The two channels of a WAV as mono tracks, and its rate.
fn two_channels(path: &Path) -> anyhow::Result<(Vec<f32>, Vec<f32>, u32)> {
    let mut reader = hound::WavReader::open(path).with_context(|| format!("{}: not a WAV file (give the call's two-channel recording)", path.display()))?;
    let spec = reader.spec();
    anyhow::ensure!(spec.channels == 2, "{}: {} channel(s); a replay needs the caller and the agent on two channels", path.display(), spec.channels);
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|s| s as f32 / scale)).collect::<Result<_, _>>()?
        }
    };
    let left = samples.iter().step_by(2).copied().collect();
    let right = samples.iter().skip(1).step_by(2).copied().collect();
    Ok((left, right, spec.sample_rate))
}

/// A call this server stored: its record, transcript and the assistant it ran.
struct StoredCall {
    call: crate::store::CallRecord,
    transcript: Vec<crate::store::TranscriptLine>,
    assistant: std::sync::Arc<crate::assistant::Assistant>,
}

/// Reads a stored call (any workspace: this is the operator's command) and the assistant it
/// ran; `assistants` holds the deployment's files.
fn stored_call(id: &str, database_url: &str, assistants: &Path) -> anyhow::Result<StoredCall> {
    runtime()?.block_on(async {
        let store = crate::store::Store::connect(database_url).await.with_context(|| format!("opening {database_url}"))?;
        let call = store.call_any_workspace(id).await?.with_context(|| format!("no call `{id}` in {database_url} (give --database-url, or a recording's path)"))?;
        let transcript = store.transcript(id).await?;
        let file = assistants.join(format!("{}.yaml", call.assistant_id));
        let assistant = if file.is_file() {
            load_assistant(&file)?
        } else {
            let spec = store.assistant_version(&call.assistant_id, call.assistant_version).await?.with_context(|| format!("the call's assistant {} v{} is not stored", call.assistant_id, call.assistant_version))?;
            let value: serde_json::Value = serde_json::from_str(&spec)?;
            let label = format!("assistant {} v{}", call.assistant_id, call.assistant_version);
            std::sync::Arc::new(crate::assistant::Assistant::from_stored_json(&value, &label).map_err(|problems| anyhow::anyhow!("{label}: {}", problems.first().map(|p| p.to_string()).unwrap_or_default()))?)
        };
        Ok(StoredCall { call, transcript, assistant })
    })
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let as_file = PathBuf::from(&args.recording);
    let stored = if !as_file.exists() && args.recording.starts_with("call_") { Some(stored_call(&args.recording, &args.database_url, &args.assistants)?) } else { None };
    let recording = match &stored {
        Some(found) => {
            let safe: String = found.call.id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let path = args.recordings_dir.join(format!("{safe}.wav"));
            anyhow::ensure!(path.is_file(), "call {} has no recording in {} (record calls with `record: true` or the assistant's `recording: true`; give --recordings-dir)", found.call.id, args.recordings_dir.display());
            path
        }
        None => as_file,
    };
    let (left, right, rate) = two_channels(&recording)?;
    let (caller, agent) = match args.caller_channel {
        Channel::Left => (left, right),
        Channel::Right => (right, left),
    };
    let caller = crate::audio::resample::resample(&caller, rate, RATE)?;
    let agent = crate::audio::resample::resample(&agent, rate, RATE)?;
    let store = ModelStore::from_env()?;
    let assistant = match (&args.assistant, &stored) {
        (Some(path), _) => load_assistant(path)?,
        (None, Some(found)) => found.assistant.clone(),
        (None, None) => anyhow::bail!("--assistant: give the assistant file to replay {} against", recording.display()),
    };
    let mut variables: BTreeMap<String, String> = stored.as_ref().and_then(|f| serde_json::from_str(&f.call.dynamic_variables).ok()).unwrap_or_default();
    variables.extend(args.vars);
    prompt::resolve_variables(&assistant, &variables).map_err(anyhow::Error::msg)?;
    runtime()?.block_on(async {
        let engines = load_engines(&store, &assistant).await?;
        let mut stream = SileroStream::default();
        let turns = caller_turns(&caller, |frame| engines.vad.probability(&mut stream, frame).unwrap_or(0.0));
        anyhow::ensure!(!turns.is_empty(), "{}: no speech in the caller's channel ({:?}); is --caller-channel right?", recording.display(), args.caller_channel);
        println!("{} caller turns in {}", turns.len(), recording.display());

        // What the recorded agent said after each turn, up to the next: its lines in the stored
        // transcript (the recording starts when the call was answered, as the transcript's
        // times do), else its channel transcribed.
        let mut recorded = Vec::new();
        for (i, (_, end)) in turns.iter().enumerate() {
            let next = turns.get(i + 1).map(|t| t.0).unwrap_or(agent.len());
            let text = match &stored {
                Some(found) => {
                    let ms = |samples: usize| (samples as i64) * 1000 / RATE as i64;
                    let (from, to) = (ms(*end) - 500, if i + 1 < turns.len() { ms(next) } else { i64::MAX });
                    found.transcript.iter().filter(|l| l.speaker == "agent" && l.at_ms >= from && l.at_ms < to).map(|l| l.text.as_str()).collect::<Vec<_>>().join(" ")
                }
                None => {
                    let span = &agent[(*end).min(agent.len())..next.min(agent.len())];
                    if span.iter().any(|s| s.abs() > 0.02) { engines.stt.transcribe(span).map(|t| t.text).unwrap_or_default() } else { String::new() }
                }
            };
            recorded.push(text.trim().to_string());
        }

        let dir = tempfile::tempdir()?;
        let mut lines = Vec::new();
        for (i, (start, end)) in turns.iter().enumerate() {
            let path = dir.path().join(format!("turn-{i}.wav"));
            // A little of the silence around the turn: the VAD's edges clip soft onsets and
            // word endings.
            let (start, end) = (start.saturating_sub(RATE as usize / 5), (end + RATE as usize * 3 / 10).min(caller.len()));
            crate::audio::Audio::new(caller[start..end].to_vec(), RATE).write_wav(&path)?;
            lines.push(json!({ "audio": path }));
        }
        let script: CallerScript = serde_json::from_value(json!({ "lines": lines }))?;
        let call = simulate_call(&store, engines.clone(), assistant, script, variables, RATE, true).await?;

        // The new agent's words after each of the caller's turns, as the new call heard them.
        let mut answers: Vec<String> = Vec::new();
        let mut heard: Vec<String> = Vec::new();
        for (who, text, _) in &call.report.transcript {
            if who == "caller" {
                heard.push(text.clone());
                answers.push(String::new());
            } else if let Some(last) = answers.last_mut() {
                last.push(' ');
                last.push_str(text);
            }
        }
        println!("\nturn by turn (recorded agent │ agent now):");
        let (mut errors, mut words) = (0, 0);
        let mut rows = Vec::new();
        for i in 0..turns.len() {
            let now = answers.get(i).map(|a| a.trim().to_string()).unwrap_or_default();
            let (e, w) = crate::eval::word_errors(&recorded[i], &now);
            errors += e;
            words += w;
            println!("  {}. caller : {}", i + 1, heard.get(i).map(String::as_str).unwrap_or("(not heard as a turn)"));
            println!("     before : {}", if recorded[i].is_empty() { "(silence)" } else { &recorded[i] });
            println!("     now    : {}", if now.is_empty() { "(silence)" } else { &now });
            rows.push(json!({ "caller": heard.get(i), "recorded_agent": recorded[i], "agent": now, "word_errors": e, "words": w }));
        }
        let changed = if words > 0 { errors as f64 / words as f64 } else { 0.0 };
        println!("\nthe new answers differ from the recorded ones in {:.0}% of their words", changed * 100.0);
        let disposition = crate::pipeline::disposition(&call.report);
        let extracted_now = serde_json::Value::Object(call.report.slots.clone());
        match &stored {
            Some(found) => {
                let before = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
                let extracted_before: serde_json::Value = found.call.extracted.as_deref().and_then(|e| serde_json::from_str(e).ok()).unwrap_or_else(|| json!({}));
                println!("             before │ now");
                println!("disposition: {} │ {disposition}", before(&found.call.disposition));
                println!("extracted:   {extracted_before} │ {extracted_now}");
                println!("summary:     {} │ {}", before(&found.call.summary), call.report.summary);
            }
            None => println!("disposition now: {disposition}"),
        }
        if let Some(path) = &args.json {
            let value = json!({
                "recording": recording,
                "call_id": stored.as_ref().map(|f| f.call.id.clone()),
                "before": stored.as_ref().map(|f| json!({
                    "disposition": f.call.disposition,
                    "summary": f.call.summary,
                    "extracted": f.call.extracted.as_deref().and_then(|e| serde_json::from_str::<serde_json::Value>(e).ok()),
                })),
                "turns": rows,
                "changed_words": changed,
                "disposition": crate::pipeline::disposition(&call.report),
                "slots": call.report.slots,
                "summary": call.report.summary,
            });
            std::fs::write(path, serde_json::to_vec_pretty(&value)?).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })
}
