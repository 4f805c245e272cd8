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
use crate::call::Speaker;
use crate::assistant::prompt;
use crate::eval::replay::{caller_turns, turn_clips, two_channels};
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
    /// The assistant to replay against: its file, or its id in the server's database (its
    /// current version); for a stored call, default: the assistant it ran (its file in
    /// --assistants, or the stored version of an API assistant).
    #[arg(long)]
    pub assistant: Option<String>,
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
    /// Write the old and new conversations side by side as one self-contained HTML page.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// A call this server stored: its record, transcript, turns and the assistant it ran.
struct StoredCall {
    call: crate::store::CallRecord,
    transcript: Vec<crate::store::TranscriptLine>,
    turns: Vec<crate::store::TurnRecord>,
    assistant: std::sync::Arc<crate::assistant::Assistant>,
}

/// An assistant by id from the server's database: a file assistant's file in `assistants`,
/// else the stored current version.
fn assistant_by_id(id: &str, database_url: &str, assistants: &Path, version: Option<i64>) -> anyhow::Result<std::sync::Arc<crate::assistant::Assistant>> {
    let file = assistants.join(format!("{id}.yaml"));
    if file.is_file() && version.is_none() {
        return load_assistant(&file);
    }
    runtime()?.block_on(async {
        let store = crate::store::Store::connect(database_url).await.with_context(|| format!("opening {database_url}"))?;
        let version = match version {
            Some(version) => version,
            None => sqlx::query_scalar::<_, i64>("SELECT current_version FROM assistants WHERE id = $1").bind(id).fetch_optional(&store.pool).await?.with_context(|| format!("--assistant: no file {} and no assistant `{id}` in {database_url}", file.display()))?,
        };
        let spec = store.assistant_version(id, version).await?.with_context(|| format!("assistant {id} v{version} is not stored"))?;
        let value: serde_json::Value = serde_json::from_str(&spec)?;
        let label = format!("assistant {id} v{version}");
        Ok(std::sync::Arc::new(crate::assistant::Assistant::from_stored_json(&value, &label).map_err(|problems| anyhow::anyhow!("{label}: {}", problems.first().map(|p| p.to_string()).unwrap_or_default()))?))
    })
}

/// Reads a stored call (any workspace: this is the operator's command) and the assistant it
/// ran; `assistants` holds the deployment's files.
fn stored_call(id: &str, database_url: &str, assistants: &Path) -> anyhow::Result<StoredCall> {
    let (call, transcript, turns) = runtime()?.block_on(async {
        let store = crate::store::Store::connect(database_url).await.with_context(|| format!("opening {database_url}"))?;
        let call = store.call_any_workspace(id).await?.with_context(|| format!("no call `{id}` in {database_url} (give --database-url, or a recording's path)"))?;
        let transcript = store.transcript(id).await?;
        let turns = store.turns(id).await?;
        anyhow::Ok((call, transcript, turns))
    })?;
    // The file as it is now when the call ran a file assistant at its current version; else
    // the version the call ran, as stored.
    let file = assistants.join(format!("{}.yaml", call.assistant_id));
    let assistant = if file.is_file() { load_assistant(&file)? } else { assistant_by_id(&call.assistant_id, database_url, assistants, Some(call.assistant_version))? };
    Ok(StoredCall { call, transcript, turns, assistant })
}

/// Voice-to-voice p50 and p95 in ms.
fn v2v(values: &[f64]) -> (Option<f64>, Option<f64>) {
    let durations: Vec<std::time::Duration> = values.iter().filter(|v| **v > 0.0).map(|v| std::time::Duration::from_secs_f64(v / 1000.0)).collect();
    let p = |q| crate::pipeline::metrics::percentile(&durations, q).map(|d| (d.as_secs_f64() * 1000.0).round());
    (p(0.5), p(0.95))
}

fn show_ms(p: (Option<f64>, Option<f64>)) -> String {
    match p {
        (Some(a), Some(b)) => format!("{a:.0}/{b:.0} ms"),
        _ => "-".into(),
    }
}

/// The replay as one self-contained page: the turns side by side, then the outcomes.
fn page(recording: &Path, rows: &[serde_json::Value], before: Option<&serde_json::Value>, now: &serde_json::Value) -> String {
    use crate::eval::report::esc;
    let text = |v: &serde_json::Value| esc(v.as_str().unwrap_or(""));
    let mut html = format!(
        "<!doctype html><meta charset=utf-8><title>Replay of {0}</title><style>body{{font:14px system-ui;margin:2em}}table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}}th{{background:#f4f4f4}}.changed{{background:#fff4d6}}</style><h1>Replay of {0}</h1><table><tr><th>#</th><th>caller (heard now)</th><th>agent before</th><th>agent now</th></tr>",
        esc(&recording.display().to_string())
    );
    for (i, row) in rows.iter().enumerate() {
        let changed = row["word_errors"].as_u64().unwrap_or(0) > 0;
        html.push_str(&format!("<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", if changed { " class=changed" } else { "" }, i + 1, text(&row["caller"]), text(&row["recorded_agent"]), text(&row["agent"])));
    }
    html.push_str("</table><h2>Outcome</h2><table><tr><th></th><th>before</th><th>now</th></tr>");
    for key in ["disposition", "summary", "extracted", "success", "voice_to_voice"] {
        let show = |v: Option<&serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => "-".to_string(),
            Some(serde_json::Value::String(s)) => esc(s),
            Some(other) => esc(&other.to_string()),
        };
        html.push_str(&format!("<tr><th>{key}</th><td>{}</td><td>{}</td></tr>", show(before.and_then(|b| b.get(key))), show(now.get(key))));
    }
    html.push_str("</table>");
    html
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
        (Some(given), _) if Path::new(given).is_file() => load_assistant(Path::new(given))?,
        (Some(id), _) => assistant_by_id(id, &args.database_url, &args.assistants, None)?,
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
                    found.transcript.iter().filter(|l| l.speaker == Speaker::Agent && l.at_ms >= from && l.at_ms < to).map(|l| l.text.as_str()).collect::<Vec<_>>().join(" ")
                }
                None => {
                    let mut stream = SileroStream::default();
                    crate::eval::replay::said_in(crate::eval::replay::answer_after(&agent, &turns, i), engines.stt.as_ref(), |frame| engines.vad.probability(&mut stream, frame).unwrap_or(0.0))
                }
            };
            recorded.push(text.trim().to_string());
        }

        let dir = tempfile::tempdir()?;
        let lines: Vec<serde_json::Value> = turn_clips(&caller, &turns, dir.path())?.into_iter().map(|path| json!({ "audio": path })).collect();
        let script: CallerScript = serde_json::from_value(json!({ "lines": lines }))?;
        let call = simulate_call(&store, engines.clone(), assistant, script, variables, RATE, true).await?;

        // The new agent's words after each of the caller's turns, as the new call heard them.
        let mut answers: Vec<String> = Vec::new();
        let mut heard: Vec<String> = Vec::new();
        for (who, text, _) in &call.report.transcript {
            if *who == Speaker::Caller {
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
        let latency_now = v2v(&call.report.turns.iter().map(|t| t.voice_to_voice.as_secs_f64() * 1000.0).collect::<Vec<_>>());
        match &stored {
            Some(found) => {
                let before = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
                let extracted_before: serde_json::Value = found.call.extracted.as_deref().and_then(|e| serde_json::from_str(e).ok()).unwrap_or_else(|| json!({}));
                println!("             before │ now");
                println!("disposition: {} │ {disposition}", before(&found.call.disposition));
                println!("extracted:   {extracted_before} │ {extracted_now}");
                println!("summary:     {} │ {}", before(&found.call.summary), call.report.summary);
                let then = v2v(&found.turns.iter().map(|t| t.voice_to_voice_ms).collect::<Vec<_>>());
                println!("voice to voice p50/p95: {} │ {}", show_ms(then), show_ms(latency_now));
            }
            None => println!("disposition now: {disposition}"),
        }
        let ms_pair = |p: (Option<f64>, Option<f64>)| json!({ "p50_ms": p.0, "p95_ms": p.1 });
        let before = stored.as_ref().map(|f| {
            json!({
                "disposition": f.call.disposition,
                "summary": f.call.summary,
                "extracted": f.call.extracted.as_deref().and_then(|e| serde_json::from_str::<serde_json::Value>(e).ok()),
                "success": f.call.success.map(|s| s != 0),
                "voice_to_voice": ms_pair(v2v(&f.turns.iter().map(|t| t.voice_to_voice_ms).collect::<Vec<_>>())),
            })
        });
        let now = json!({
            "disposition": disposition,
            "summary": call.report.summary,
            "extracted": extracted_now,
            "success": call.report.success.as_ref().map(|(reached, _)| *reached),
            "voice_to_voice": ms_pair(latency_now),
        });
        if let Some(path) = &args.json {
            let value = json!({
                "recording": recording,
                "call_id": stored.as_ref().map(|f| f.call.id.clone()),
                "before": before,
                "turns": rows,
                "changed_words": changed,
                "disposition": disposition,
                "slots": call.report.slots,
                "summary": call.report.summary,
                "now": now,
            });
            std::fs::write(path, serde_json::to_vec_pretty(&value)?).with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &args.report {
            std::fs::write(path, page(&recording, &rows, before.as_ref(), &now)).with_context(|| format!("writing {}", path.display()))?;
            println!("report: {}", path.display());
        }
        Ok(())
    })
}
