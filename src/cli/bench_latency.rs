//! `bench llm` and `bench latency`: the local LLM engine as a call uses it, and scripted calls
//! through the real local models — one at a time, then several at once — timed from the
//! caller's true end of speech.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::call_cmds::{load_assistant, load_engines, machine_line, ms_at, print_percentiles, runtime, simulate_call, text_call_prompt, SimulatedCall, DEFAULT_LINE_RATE};
use crate::assistant::{prompt, Assistant};
use crate::llm::{LanguageModel, Message};
use crate::models::ModelStore;
use crate::pipeline::metrics::{ms_of, percentile, TurnTimings};
use crate::pipeline::{self, Engines};
use crate::simulation::CallerScript;

/// `ringline bench latency`'s options.
#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    #[arg(long, default_value = "assistants/luigis_booking.yaml")]
    assistant: PathBuf,
    #[arg(long, default_value = "eval/callers/bench.yaml")]
    caller: PathBuf,
    /// How many calls to run (each plays the whole script).
    #[arg(long, default_value_t = 2)]
    calls: usize,
    /// Then run 1, 2, … up to this many calls at once, and report voice-to-voice for each
    /// count beside one call alone.
    #[arg(long, default_value_t = 1)]
    concurrent: usize,
    /// With `--concurrent`: run each count this many times and pool the turns (a p95 over a
    /// few dozen turns moves with one slow turn).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// With `--concurrent`: rounds of the one-call count, the baseline every other count is
    /// compared with (default: `rounds` × `concurrent`, at most 20, so its p95 stands on as
    /// many turns as the largest count's: over one call's few turns it is one slow turn).
    #[arg(long)]
    baseline_rounds: Option<usize>,
    /// Run the whole bench once per CPU budget — `--cores 1,2`, or `2,4` on a larger box — each
    /// run pinned to that many of the cores this process may use, and compare what each holds.
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Keep synthesized sentences for reuse in up to this many MiB, as `serve` does (0: none,
    /// every sentence synthesized — the cost of lines never said before).
    #[arg(long, default_value_t = crate::pipeline::speech_cache::DEFAULT_CAPACITY_BYTES >> 20)]
    speech_cache_mib: usize,
    /// With `--concurrent`: start each call this long after the one before (0: all at once —
    /// with one script, their callers then speak and stop in unison, every turn of every
    /// call at the same moment: the worst case).
    #[arg(long, default_value_t = 0)]
    stagger_ms: u64,
    /// With `--concurrent`: empty the speech cache before each round, so its calls say lines
    /// never said before (as right after `serve` starts, or when a new assistant goes live);
    /// calls at once still share a sentence one of them is synthesizing.
    #[arg(long)]
    cold_cache: bool,
    /// Write the figures for calls at once here as JSON (how `--cores` collects its runs).
    #[arg(long, hide = true)]
    summary: Option<PathBuf>,
}

pub fn run(args: LatencyArgs) -> anyhow::Result<()> {
    let (calls, concurrent, rounds) = (args.calls.max(1), args.concurrent.clamp(1, 16), args.rounds.clamp(1, 20));
    crate::pipeline::speech_cache::configure(args.speech_cache_mib);
    if !args.cores.is_empty() {
        return bench_budgets(&args, calls, concurrent, rounds);
    }
    let baseline_rounds = args.baseline_rounds.unwrap_or(rounds * concurrent).clamp(1, 20);
    let counts = Counts { most: concurrent, rounds, baseline_rounds, stagger: Duration::from_millis(args.stagger_ms.min(60_000)), cold_cache: args.cold_cache };
    bench_latency(&args.assistant, &args.caller, calls, counts, args.summary.as_deref())
}

/// How the calls-at-once part runs: counts 1 to `most`, `rounds` of each.
#[derive(Debug, Clone, Copy)]
struct Counts {
    most: usize,
    rounds: usize,
    /// Rounds of the one-call count when there are others.
    baseline_rounds: usize,
    stagger: Duration,
    cold_cache: bool,
}

/// Voice-to-voice with a number of calls at once.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Load {
    calls: usize,
    turns: usize,
    p50_ms: f64,
    p95_ms: f64,
    /// p95 over the turns the listener did not hold for more words (`TurnTimings::held` short
    /// of `incomplete_wait_ms`): what load does, without the waits the end-of-turn policy chose.
    #[serde(default)]
    p95_unheld_ms: f64,
    /// In cores (1.0 = one core busy).
    cpu_per_call: f64,
}

/// What one run of calls at once found.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LoadSummary {
    machine: String,
    loads: Vec<Load>,
    /// The most calls at once with p95 ≤ 1.5 s.
    within: usize,
}

/// One request's figures in `bench llm`.
struct LlmSample {
    new_tokens: usize,
    prompt_secs: f64,
    completion_tokens: usize,
    decode_secs: f64,
    first_text: Option<Duration>,
}

/// Sends `messages` and waits for the whole answer: its text and figures.
async fn timed_request(llm: &dyn LanguageModel, request: crate::llm::ChatRequest) -> anyhow::Result<(String, LlmSample)> {
    use futures::StreamExt;
    let started = std::time::Instant::now();
    let mut stream = llm.stream(request).await?;
    let (mut text, mut first_text, mut usage) = (String::new(), None, None);
    while let Some(event) = stream.next().await {
        match event? {
            crate::llm::LlmEvent::Text(piece) => {
                first_text.get_or_insert_with(|| started.elapsed());
                text.push_str(&piece);
            }
            crate::llm::LlmEvent::ToolCall(_) => {}
            crate::llm::LlmEvent::Done(u) => usage = Some(u),
        }
    }
    let usage = usage.ok_or_else(|| anyhow::anyhow!("the engine's stream ended without usage figures"))?;
    let (Some(prompt_secs), Some(decode_secs)) = (usage.prompt_secs, usage.decode_secs) else {
        anyhow::bail!("the engine did not report its timings (usage.timings): is this the local engine?");
    };
    let sample = LlmSample {
        new_tokens: usage.prompt_tokens.saturating_sub(usage.cached_tokens),
        prompt_secs,
        completion_tokens: usage.completion_tokens,
        decode_secs,
        first_text,
    };
    Ok((text, sample))
}

/// `ringline bench llm`: the local engine's speed as a call uses it — a whole new prompt
/// (system prompt and tools), then one turn after another on the cached prefix, with the
/// pipeline's thread budget (or the one given).
pub fn bench_llm(assistant_path: &Path, caller_path: &Path, model: Option<String>, conversations: usize, threads: Option<usize>) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let assistant = load_assistant(assistant_path)?;
    let script = CallerScript::load(caller_path)?;
    let lines: Vec<String> = script.lines.iter().filter_map(|l| l.say.as_ref()).map(|s| s.replace("...", "")).collect();
    let model = model.unwrap_or_else(|| assistant.spec.llm.model.clone());
    let (system, context) = text_call_prompt(&assistant, &BTreeMap::new())?;
    let first_message = assistant.spec.first_message.as_ref().map(|m| prompt::render(m, &context).map(|m| crate::text::strip_marks(&m))).transpose().map_err(anyhow::Error::msg)?;
    let (decode_threads, batch_threads) = match threads {
        Some(n) => (n, n),
        None => (pipeline::LLM_THREADS, pipeline::llm_batch_threads()),
    };
    runtime()?.block_on(async {
        let llm = crate::llm::local::LocalEngine::new(&store, &model, decode_threads, batch_threads)?;
        eprintln!("starting the engine ({model})…");
        llm.warm_up().await.context("starting the LLM engine")?;
        let tools = pipeline::tools::specs(&assistant);
        let (mut whole, mut turns) = (Vec::new(), Vec::new());
        for index in 0..conversations {
            eprintln!("conversation {}/{conversations}: {} turns…", index + 1, lines.len());
            // A different first line each time, so nothing of the last conversation is cached.
            let mut history = vec![Message::System { content: format!("Conversation {}.\n{system}", index + 1) }];
            if let Some(first) = &first_message {
                history.push(Message::Assistant { content: first.clone(), tool_calls: Vec::new() });
            }
            for (turn, line) in lines.iter().enumerate() {
                history.push(Message::User { content: line.clone() });
                let request = crate::llm::ChatRequest { messages: history.clone(), tools: tools.clone(), max_tokens: assistant.spec.llm.max_tokens, temperature: 0.0, schema: None };
                let (text, sample) = timed_request(&llm, request).await?;
                history.push(Message::Assistant { content: if text.trim().is_empty() { "Okay.".into() } else { text }, tool_calls: Vec::new() });
                if turn == 0 { whole.push(sample) } else { turns.push(sample) }
            }
        }
        let rate = |tokens: usize, secs: f64| if secs > 0.0 { tokens as f64 / secs } else { 0.0 };
        let median = |mut values: Vec<f64>| -> f64 {
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or(0.0)
        };
        println!("\n{model}: prompt processing on {batch_threads} thread(s), decoding on {decode_threads}; {conversations} conversation(s) of {} turns", lines.len());
        println!("{:<40} {:>10} {:>10} {:>10}", "", "tokens p50", "ms p50", "tok/s p50");
        // One row: (tokens, seconds) a request, at p50.
        let row = |name: &str, work: Vec<(usize, f64)>| {
            println!(
                "{:<40} {:>10.0} {:>10.0} {:>10.0}",
                name,
                median(work.iter().map(|(tokens, _)| *tokens as f64).collect()),
                median(work.iter().map(|(_, secs)| secs * 1000.0).collect()),
                median(work.iter().map(|(tokens, secs)| rate(*tokens, *secs)).collect())
            );
        };
        row("prompt: system prompt, tools, first line", whole.iter().map(|s| (s.new_tokens, s.prompt_secs)).collect());
        row("prompt: a turn on the cached prefix", turns.iter().map(|s| (s.new_tokens, s.prompt_secs)).collect());
        row("decode: the answer", whole.iter().chain(&turns).filter(|s| s.completion_tokens > 1).map(|s| (s.completion_tokens, s.decode_secs)).collect());
        let first: Vec<Duration> = turns.iter().filter_map(|s| s.first_text).collect();
        println!("{:<40} {:>10} {:>10}   (request sent → first text, p95 {} ms)", "first text of a turn (client side)", "", ms_at(&first, 0.5), ms_at(&first, 0.95));
        println!("\ntargets (2 cores, SmolLM2-135M): prompt processing ≥ 300 tok/s, decode ≥ 40 tok/s");
        Ok(())
    })
}

/// How far the VAD's estimate of a speech onset may stray from the truth.
const VAD_ONSET_SLACK: Duration = Duration::from_millis(250);

/// `ringline bench latency`: several scripted calls, then percentiles of every stage.
/// A simulated call's turns counted from the caller's true end of speech (the script knows
/// it), not from where the VAD placed it; with each turn's VAD error.
fn turns_from_truth(call: &SimulatedCall) -> Vec<(TurnTimings, Duration, bool)> {
    call.report
        .turns
        .iter()
        .map(|turn| {
            let truth = call.log.caller_speech.iter().map(|(_, end)| *end).min_by_key(|end| end.abs_diff(turn.speech_end_at)).unwrap_or(turn.speech_end_at);
            (turn.counted_from(truth), truth.abs_diff(turn.speech_end_at), turn.speech_end_at > truth)
        })
        .collect()
}

/// Resident and peak resident memory of this process, in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0;
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time so far on the cores this process may use, from `/proc/stat`: (busy, all) in clock
/// ticks, those cores together; steal (time the hypervisor gave elsewhere) counts as neither.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let allowed = crate::telemetry::allowed_cpus();
    let (mut busy, mut all) = (0, 0);
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|name| name.strip_prefix("cpu")).and_then(|id| id.parse::<usize>().ok()) else { continue };
        if !allowed.contains(&cpu) {
            continue;
        }
        let values: Vec<u64> = fields.filter_map(|v| v.parse().ok()).collect();
        let at = |i: usize| values.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        let working = at(0) + at(1) + at(2) + at(5) + at(6);
        busy += working;
        all += working + at(3) + at(4);
    }
    (busy, all)
}

/// Cores kept busy between two [`cpu_ticks`] readings (everything on those cores: the LLM's
/// process too).
fn cores_busy(before: (u64, u64), after: (u64, u64)) -> f64 {
    let cores = crate::telemetry::allowed_cpus().len().max(1) as f64;
    let (busy, all) = (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1));
    if all == 0 {
        0.0
    } else {
        busy as f64 / all as f64 * cores
    }
}

/// Runs 1, 2, … `most` calls at once and prints voice-to-voice for each count beside one call
/// alone, and the most calls that kept p95 within 1.5 s.
async fn bench_concurrent(store: &ModelStore, engines: Arc<Engines>, assistant: Arc<Assistant>, script: &CallerScript, counts: Counts) -> anyhow::Result<LoadSummary> {
    let Counts { most, rounds, baseline_rounds, stagger, cold_cache } = counts;
    println!(
        "\ncalls at once on {} (voice-to-voice from the true end of speech; {rounds} round(s) per count, {baseline_rounds} of one call; {}{}):",
        machine_line(),
        if stagger.is_zero() { "all started together".to_string() } else { format!("each started {} ms after the one before", stagger.as_millis()) },
        if cold_cache { "; the speech cache emptied before each round" } else { "" }
    );
    println!(
        "{:>6} {:>6} {:>8} {:>8} {:>12} {:>16} {:>8} {:>14} {:>13}   {:>16} {:>16} {:>16} {:>16}   {:>8} {:>14} {:>14} {:>8} {:>10}",
        "calls", "turns", "p50 ms", "p95 ms", "p95 vs one", "unheld p95 (n)", "vs one", "MiB per call", "CPU per call", "end of turn", "transcript", "LLM 1st token", "1st audio", "STT wait", "STT wait·run", "TTS wait·run", "yielded", "replayed"
    );
    let (resident_before, _) = memory_mib();
    let mut alone_p95 = None;
    let mut alone_unheld = None;
    // A turn held this long waited for more words by design (a number read halfway).
    let hold = Duration::from_millis(assistant.spec.turn.incomplete_wait_ms as u64);
    let mut within = 0;
    let mut loads = Vec::new();
    let mut slowest: Vec<TurnTimings> = Vec::new();
    for n in 1..=most {
        let stt_before = (crate::pipeline::pool::stt().stats(), crate::pipeline::pool::stt().yielded());
        let cache_before = crate::pipeline::speech_cache::speech_cache().stats();
        let finished_before = (crate::pipeline::pool::stt().finished(), crate::pipeline::pool::tts().finished());
        let mut turns = Vec::new();
        let cpu_before = cpu_ticks();
        let rounds = if n == 1 && most > 1 { baseline_rounds } else { rounds };
        for round in 1..=rounds {
            eprintln!("{n} call(s) at once, in real time (round {round}/{rounds})…");
            if cold_cache {
                crate::pipeline::speech_cache::speech_cache().clear();
            }
            let calls = futures::future::join_all((0..n).map(|i| {
                let (engines, assistant, script) = (engines.clone(), assistant.clone(), script.clone());
                async move {
                    tokio::time::sleep(stagger * i as u32).await;
                    simulate_call(store, engines, assistant, script, BTreeMap::new(), DEFAULT_LINE_RATE, false).await
                }
            }))
            .await;
            for call in calls {
                turns.extend(turns_from_truth(&call?).into_iter().map(|(t, _, _)| t));
            }
        }
        let cpu_per_call = cores_busy(cpu_before, cpu_ticks()) / n as f64;
        let v2v: Vec<Duration> = turns.iter().map(|t| t.voice_to_voice).collect();
        // Where the time goes under load: each stage from the true end of speech, p50/p95.
        // A stage a turn did not go through (no LLM for a flow's line) is not counted.
        let stage = |get: fn(&TurnTimings) -> Duration| {
            let values: Vec<Duration> = turns.iter().map(get).filter(|d| !d.is_zero()).collect();
            if values.is_empty() { "-".to_string() } else { format!("{}/{}", ms_at(&values, 0.5), ms_at(&values, 0.95)) }
        };
        let stages = [stage(|t| t.end_of_turn), stage(|t| t.stt_final), stage(|t| t.llm_first_token), stage(|t| t.tts_first_audio)];
        let ((jobs, waited, _), yielded) = (crate::pipeline::pool::stt().stats(), crate::pipeline::pool::stt().yielded());
        let stt_waits = format!("{}/{}", waited - stt_before.0 .1, jobs - stt_before.0 .0);
        let yielded = yielded - stt_before.1;
        let cache = crate::pipeline::speech_cache::speech_cache().stats();
        let (hits, sentences) = (cache.hits - cache_before.hits, cache.hits + cache.misses - cache_before.hits - cache_before.misses);
        let replayed = format!("{hits}/{sentences}");
        // Jobs someone waited on (final transcripts, first sentences): p95 of the wait for a
        // slot and of the run on it.
        let wait_run = |jobs: Vec<crate::pipeline::pool::JobTiming>| {
            let urgent: Vec<_> = jobs.into_iter().filter(|j| j.urgency == crate::pipeline::pool::Urgency::Now).collect();
            let waits: Vec<Duration> = urgent.iter().map(|j| j.waited).collect();
            let runs: Vec<Duration> = urgent.iter().map(|j| j.ran).collect();
            if urgent.is_empty() { "-".to_string() } else { format!("{}·{}", ms_at(&waits, 0.95), ms_at(&runs, 0.95)) }
        };
        let stt_wait_run = wait_run(crate::pipeline::pool::stt().finished_since(finished_before.0));
        let tts_wait_run = wait_run(crate::pipeline::pool::tts().finished_since(finished_before.1));
        let (p50, p95) = (percentile(&v2v, 0.5).map(ms_of).unwrap_or(0.0), percentile(&v2v, 0.95).map(ms_of).unwrap_or(0.0));
        let alone = *alone_p95.get_or_insert(p95);
        let unheld: Vec<Duration> = turns.iter().filter(|t| t.held < hold).map(|t| t.voice_to_voice).collect();
        let p95_unheld = percentile(&unheld, 0.95).map(ms_of).unwrap_or(0.0);
        let unheld_alone = *alone_unheld.get_or_insert(p95_unheld);
        let (_, peak) = memory_mib();
        if p95 <= 1500.0 {
            within = n;
        }
        loads.push(Load { calls: n, turns: v2v.len(), p50_ms: p50, p95_ms: p95, p95_unheld_ms: p95_unheld, cpu_per_call });
        if n == most {
            slowest = turns.clone();
            slowest.sort_by_key(|t| std::cmp::Reverse(t.voice_to_voice));
            slowest.truncate(5);
        }
        println!(
            "{n:>6} {:>6} {p50:>8.0} {p95:>8.0} {:>11.2}× {:>16} {:>7.2}× {:>14.0} {:>12.0}%   {:>16} {:>16} {:>16} {:>16}   {stt_waits:>8} {stt_wait_run:>14} {tts_wait_run:>14} {yielded:>8} {replayed:>10}",
            v2v.len(),
            if alone > 0.0 { p95 / alone } else { 0.0 },
            format!("{p95_unheld:.0} ({})", unheld.len()),
            if unheld_alone > 0.0 { p95_unheld / unheld_alone } else { 0.0 },
            (peak - resident_before).max(0.0) / n as f64,
            cpu_per_call * 100.0,
            stages[0],
            stages[1],
            stages[2],
            stages[3]
        );
    }
    println!("unheld p95 (n): voice-to-voice p95 over the n turns the listener did not hold for more words (a number read halfway waits incomplete_wait_ms, {} ms, at any load by design), and its ratio to one call's", hold.as_millis());
    println!("CPU per call: the machine's busy time during the count's rounds (the LLM's process too), in % of one core, over the calls; stages: p50/p95 ms from the true end of speech; STT wait: speech-to-text jobs that waited for a slot / all; STT and TTS wait·run: p95 ms of the wait for a slot and of the run, of the jobs a caller waited on (final transcripts, first sentences); yielded: partial transcripts stopped for a final one; replayed: sentences played from the speech cache / all (--speech-cache-mib 0 synthesizes every one)");
    println!("\nslowest turns with {most} call(s) at once (voice-to-voice · end of turn (held for more words) · transcript · first audio):");
    for t in &slowest {
        println!("  {:>5.0} · {:>5.0} ({:>3.0}) · {:>5.0} · {:>5.0} ms  \"{}\" → \"{}\"", ms_of(t.voice_to_voice), ms_of(t.end_of_turn), ms_of(t.held), ms_of(t.stt_final), ms_of(t.tts_first_audio), t.user_text, t.agent_text);
    }
    println!("most calls at once with voice-to-voice p95 ≤ 1.5 s: {within}");
    // What `serve` admits on its local models unless told otherwise (`--max-local-calls`) —
    // when measured with every core of the machine.
    let (cores, online) = (crate::telemetry::allowed_cpus().len(), crate::telemetry::online_cpus());
    if cores < online {
        println!("measured on {cores} of the machine's {online} cores: not saved as its capacity for `ringline serve`");
    } else {
        let capacity = crate::server::limits::Capacity { local_calls: within as u32, machine: machine_line(), measured_with: assistant.spec.name.clone() };
        match capacity.save(store) {
            Ok(path) => println!("saved as this machine's capacity for `ringline serve`: {}", path.display()),
            Err(error) => eprintln!("could not save the capacity: {error}"),
        }
    }
    Ok(LoadSummary { machine: machine_line(), loads, within })
}

fn bench_latency(assistant_path: &Path, caller_path: &Path, calls: usize, counts: Counts, summary: Option<&Path>) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let assistant = load_assistant(assistant_path)?;
    let script = CallerScript::load(caller_path)?;
    runtime()?.block_on(async {
        let engines = load_engines(&store, &assistant).await?;
        let mut turns = Vec::new();
        let mut barge_ins = Vec::new();
        // Each barge-in's reaction in two parts: Silero's onset after the true one, and the
        // VAD's onset to the agent's audio stopping (start hysteresis, delivery, the pause).
        let mut barge_in_parts: Vec<(Duration, Duration)> = Vec::new();
        let (mut vad_errors, mut vad_late) = (Vec::new(), 0);
        for index in 0..calls {
            eprintln!("call {}/{calls}: {} caller lines, in real time…", index + 1, script.lines.len());
            let call = simulate_call(&store, engines.clone(), assistant.clone(), script.clone(), BTreeMap::new(), DEFAULT_LINE_RATE, false).await?;
            // Count every turn from the caller's true end of speech (the script knows it), not
            // from where the VAD placed it.
            for (turn, error, late) in turns_from_truth(&call) {
                vad_errors.push(error);
                vad_late += usize::from(late);
                turns.push(turn);
            }
            // Barge-in reaction on the audio timeline: from when caller and agent were both
            // audible to when the agent's audio stopped. That is the caller's scripted onset
            // when they broke in, or the agent's first sound when it began over a caller
            // already talking (then Silero's lag is no part of it).
            for b in &call.report.barge_ins {
                let truth = if b.overlap_from > b.caller_onset {
                    b.overlap_from
                } else {
                    let onset = b.caller_onset;
                    let scripted = call.log.caller_speech.iter().map(|(start, _)| *start).filter(|s| *s <= onset + VAD_ONSET_SLACK).max().unwrap_or(onset);
                    if onset > scripted + VAD_ONSET_SLACK { onset } else { scripted }
                };
                barge_ins.push(b.stopped.saturating_sub(truth));
                barge_in_parts.push((b.overlap_from.saturating_sub(truth), b.stopped.saturating_sub(b.overlap_from)));
            }
        }
        println!("\n{} turns over {calls} call(s); assistant {} on {}; {}", turns.len(), assistant.spec.name, assistant.spec.llm.model, machine_line());
        print_percentiles(&turns);
        let spread = |name: &str, values: &[Duration], note: String| println!("{:<18} {:>8} {:>8}   ({note})", name, ms_at(values, 0.5), ms_at(values, 0.95));
        spread("vad end error", &vad_errors, format!("|VAD end of speech − true end|; late in {vad_late} of {} turns", turns.len()));
        spread("barge-in reaction", &barge_ins, format!("caller speech onset → agent audio stopped, {} barge-ins", barge_ins.len()));
        let gaps: [(&str, fn(&TurnTimings) -> Duration, fn(&TurnTimings) -> Duration); 4] = [
            ("end of turn", |_| Duration::ZERO, |t| t.end_of_turn),
            ("stt (after eot)", |t| t.end_of_turn.min(t.stt_final), |t| t.stt_final.max(t.end_of_turn)),
            ("llm first token", |t| t.stt_final.max(t.end_of_turn), |t| t.llm_first_token),
            ("tts first audio", |t| t.stt_final.max(t.end_of_turn).max(t.llm_first_token), |t| t.voice_to_voice),
        ];
        println!("\nwhere voice-to-voice goes (p50 of each stage's own share):");
        for (name, from, to) in gaps {
            let shares: Vec<Duration> = turns.iter().map(|t| to(t).saturating_sub(from(t))).collect();
            println!("  {:<18} {:>6.0} ms", name, percentile(&shares, 0.5).map(ms_of).unwrap_or(0.0));
        }
        // The tail, turn by turn: what the p95 is made of.
        let mut slowest: Vec<&TurnTimings> = turns.iter().collect();
        slowest.sort_by_key(|t| std::cmp::Reverse(t.voice_to_voice));
        let mut fresh: Vec<usize> = turns.iter().map(|t| t.prompt_tokens.saturating_sub(t.cached_tokens)).collect();
        fresh.sort_unstable();
        println!("  (the LLM processed {} new prompt tokens a turn at p50)", fresh.get(fresh.len() / 2).copied().unwrap_or(0));
        println!("\nslowest turns (voice-to-voice · end of turn · stt · llm first token · new prompt tokens):");
        for t in slowest.iter().take(3) {
            println!(
                "  {:>5.0} · {:>4.0} · {:>4.0} · {:>4.0} ms · {:>3}  \"{}\" → \"{}\"",
                ms_of(t.voice_to_voice),
                ms_of(t.end_of_turn),
                ms_of(t.stt_final),
                ms_of(t.llm_first_token),
                t.prompt_tokens.saturating_sub(t.cached_tokens),
                t.user_text,
                t.agent_text
            );
        }
        if !barge_in_parts.is_empty() {
            println!("\nbarge-ins (reaction = Silero's onset late by + its onset → agent audio stopped):");
            let mut parts = barge_in_parts;
            parts.sort_by_key(|(late, confirm)| std::cmp::Reverse(*late + *confirm));
            for (late, confirm) in parts {
                println!("  {:>4.0} = {:>4.0} + {:>4.0} ms", ms_of(late + confirm), ms_of(late), ms_of(confirm));
            }
        }
        if counts.most > 1 || summary.is_some() {
            let figures = bench_concurrent(&store, engines.clone(), assistant.clone(), &script, counts).await?;
            if let Some(path) = summary {
                std::fs::write(path, serde_json::to_string(&figures)?).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Ok(())
    })
}

/// `--cores`: the bench again for each CPU budget, in a process of its own pinned to the first
/// that many cores this one may use (the LLM engine it starts inherits the pinning; the pools
/// size themselves by it), then each budget's voice-to-voice side by side.
fn bench_budgets(args: &LatencyArgs, calls: usize, concurrent: usize, rounds: usize) -> anyhow::Result<()> {
    let allowed = crate::telemetry::allowed_cpus();
    let mut budgets = args.cores.clone();
    budgets.sort_unstable();
    budgets.dedup();
    if let Some(bad) = budgets.iter().find(|&&k| k == 0 || k > allowed.len()) {
        anyhow::bail!("--cores {bad}: this process may use {} core(s) (CPUs {allowed:?}); give budgets from 1 to {}", allowed.len(), allowed.len());
    }
    let exe = std::env::current_exe().context("finding this binary to run each budget with")?;
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for &budget in &budgets {
        let cpus = allowed[..budget].to_vec();
        eprintln!("\n== a budget of {budget} core(s): CPUs {cpus:?} ==");
        let summary = dir.path().join(format!("cores-{budget}.json"));
        let mut command = std::process::Command::new(&exe);
        command.args(["bench", "latency", "--assistant"]).arg(&args.assistant).arg("--caller").arg(&args.caller);
        command.args(["--calls", &calls.to_string(), "--concurrent", &concurrent.to_string(), "--rounds", &rounds.to_string()]);
        command.args(["--speech-cache-mib", &args.speech_cache_mib.to_string(), "--stagger-ms", &args.stagger_ms.to_string(), "--summary"]).arg(&summary);
        if args.cold_cache {
            command.arg("--cold-cache");
        }
        if let Some(baseline) = args.baseline_rounds {
            command.args(["--baseline-rounds", &baseline.to_string()]);
        }
        pin(&mut command, cpus);
        let status = command.status().context("starting the bench for a budget")?;
        if !status.success() {
            anyhow::bail!("the bench on {budget} core(s) failed ({status})");
        }
        let figures: LoadSummary = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
        runs.push((budget, figures));
    }
    println!("\nCPU budgets on {} (each a run of its own, pinned; voice-to-voice p50/p95 ms from the true end of speech):", machine_line());
    print!("{:>6}", "cores");
    for n in 1..=concurrent {
        print!(" {:>14}", format!("{n} call{}", if n == 1 { "" } else { "s" }));
    }
    println!(" {:>14} {:>16}", "CPU per call", "most ≤ 1.5 s p95");
    for (budget, figures) in &runs {
        print!("{budget:>6}");
        for load in &figures.loads {
            print!(" {:>14}", format!("{:.0}/{:.0}", load.p50_ms, load.p95_ms));
        }
        let cpu = figures.loads.iter().map(|l| l.cpu_per_call).sum::<f64>() / figures.loads.len().max(1) as f64;
        println!(" {:>13.0}% {:>16}", cpu * 100.0, figures.within);
    }
    Ok(())
}

/// Starts `command` on `cpus` only (its affinity mask, as `taskset` sets it).
fn pin(command: &mut std::process::Command, cpus: Vec<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure fills a bit set on its own stack and makes one
    // system call: no allocation, no lock.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_pins_the_process_it_starts_to_its_cores() {
        let allowed = crate::telemetry::allowed_cpus();
        assert!(!allowed.is_empty() && allowed.len() <= crate::telemetry::online_cpus());
        let first = allowed[0];
        let mut command = std::process::Command::new("grep");
        command.args(["Cpus_allowed_list", "/proc/self/status"]);
        pin(&mut command, vec![first]);
        let output = command.output().expect("grep runs");
        let line = String::from_utf8_lossy(&output.stdout);
        assert_eq!(line.split(':').nth(1).map(str::trim), Some(first.to_string().as_str()), "{line}");
    }
}
