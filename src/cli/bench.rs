//! `ringline bench …`: figures, not tests. Prints timings; asserts nothing about them.

use std::time::Duration;

use clap::Subcommand;

use crate::models::ModelStore;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Voice-to-voice and per-stage latency over scripted calls on the local models.
    Latency {
        #[arg(long, default_value = "assistants/luigis_booking.yaml")]
        assistant: std::path::PathBuf,
        #[arg(long, default_value = "eval/callers/bench.yaml")]
        caller: std::path::PathBuf,
        /// How many calls to run (each plays the whole script).
        #[arg(long, default_value_t = 2)]
        calls: usize,
        /// Then run 1, 2, … up to this many calls at once, and report voice-to-voice for each
        /// count beside one call alone.
        #[arg(long, default_value_t = 1)]
        concurrent: usize,
    },
    /// The local LLM engine: prompt processing and decoding speed over scripted conversations.
    Llm {
        #[arg(long, default_value = "assistants/luigis_booking.yaml")]
        assistant: std::path::PathBuf,
        /// Its lines are the conversation's user turns.
        #[arg(long, default_value = "eval/callers/bench.yaml")]
        caller: std::path::PathBuf,
        /// A store model (e.g. qwen2.5-coder-0.5b); defaults to the assistant's.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value_t = 3)]
        conversations: usize,
        /// Threads for both prompt processing and decoding (default: the pipeline's budget).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// API requests per second and p99 latency on SQLite and PostgreSQL (loopback).
    Api(super::bench_api::BenchApiArgs),
    /// Concurrent calls over Twilio Media Streams on loopback (a scripted agent): frames on
    /// time, CPU and memory per call.
    Calls(super::bench_calls::BenchCallsArgs),
    /// Call analysis on this machine: embedding an assistant's intent examples, then intent,
    /// sentiment and entities per caller utterance (what the live branch does for each line).
    Analysis {
        #[arg(long, default_value = "assistants/order_status.yaml")]
        assistant: std::path::PathBuf,
    },
    /// Every installed speech model side by side: word errors on the dev set as recorded and
    /// through a phone line (dev and held-out), digit strings, and time for 2, 5 and 10 s.
    Stt {
        /// Runs per utterance length (after one warm-up run).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Store models to compare (default: every installed one).
        #[arg(long = "model")]
        models: Vec<String>,
        #[arg(long, default_value = "eval/stt/devset.yaml")]
        devset: std::path::PathBuf,
    },
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Stt { runs, models, devset } => super::bench_stt::run(runs.max(1), models, &devset),
        BenchCommand::Analysis { assistant } => bench_analysis(&assistant),
        BenchCommand::Api(args) => super::bench_api::run(args),
        BenchCommand::Calls(args) => super::bench_calls::run(args),
        BenchCommand::Llm { assistant, caller, model, conversations, threads } => {
            super::call_cmds::bench_llm(&assistant, &caller, model, conversations.max(1), threads)
        }
        BenchCommand::Latency { assistant, caller, calls, concurrent } => super::call_cmds::bench_latency(&assistant, &caller, calls.max(1), concurrent.clamp(1, 16)),
    }
}

/// Caller lines of the kind the analysis sees, each said once (so none is cached).
const CALLER_LINES: &[&str] = &[
    "Hi, I'm calling about my order, it still hasn't arrived.",
    "It's four five six seven eight.",
    "Can I talk to a real person please?",
    "This is ridiculous, I've been waiting for two weeks!",
    "Yes, that's right.",
    "No, the number is AB12345.",
    "When are you open tomorrow?",
    "I was charged $49.99 twice last Friday.",
    "Thanks, that's all, goodbye.",
    "My email is john dot smith at example dot com.",
    "Could you check whether the parcel has shipped?",
    "I want to make a complaint about the delivery driver.",
    "Sorry, what did you say?",
    "It was supposed to come on Monday at 10 am.",
    "Great, thank you so much, that's really helpful.",
    "Put me through to a manager, now.",
    "The order number is 2 9 3 4 0.",
    "Hmm, I'm not sure, let me check.",
    "Where is my package?",
    "I don't need it any more, cancel it.",
];

/// `ringline bench analysis`.
fn bench_analysis(assistant: &std::path::Path) -> anyhow::Result<()> {
    use crate::analysis::{Analyzer, IntentDef};
    let assistant = crate::assistant::Assistant::load(assistant)?;
    let store = ModelStore::from_env()?;
    let started = std::time::Instant::now();
    let analyzer = Analyzer::shared(&store)?;
    let load = started.elapsed();
    let defs: Vec<IntentDef> = assistant.spec.intents.iter().map(crate::assistant::IntentSpec::def).collect();
    let texts: usize = defs.iter().map(|d| d.texts().len()).sum();
    let started = std::time::Instant::now();
    let set = analyzer.intent_set(&defs);
    let build = started.elapsed();
    let today = chrono::Utc::now().date_naive();
    let mut whole = Vec::new();
    let mut lexical = Vec::new();
    for line in CALLER_LINES {
        let started = std::time::Instant::now();
        let found = analyzer.analyze(line, Some(&set), assistant.spec.intent_threshold, today);
        whole.push(started.elapsed());
        let started = std::time::Instant::now();
        let _ = (crate::analysis::sentiment::score(line), crate::analysis::entities::find(line, today));
        lexical.push(started.elapsed());
        let intent = found.intent.map(|m| format!("{} {:.2}", m.intent, m.confidence)).unwrap_or_default();
        println!("  {:<58} {intent:<24} {} {:+.2}", line, found.sentiment.label.as_str(), found.sentiment.score);
    }
    whole.sort();
    lexical.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |v: &[Duration], q: f64| ms(v[((v.len() - 1) as f64 * q).round() as usize]);
    println!("\n{}", super::call_cmds::machine_line());
    println!("model loaded in {:.0} ms; {} intents, {texts} texts embedded in {:.0} ms ({:.1} ms each)", ms(load), defs.len(), ms(build), ms(build) / texts.max(1) as f64);
    println!("per caller line, intent + sentiment + entities: p50 {:.1} ms, p95 {:.1} ms (target ≤ 5 ms)", at(&whole, 0.5), at(&whole, 0.95));
    println!("  of which sentiment + entities alone: p50 {:.2} ms, p95 {:.2} ms", at(&lexical, 0.5), at(&lexical, 0.95));
    Ok(())
}

/// Texts Piper speaks in roughly 2, 5 and 10 seconds.
pub(super) const UTTERANCES: &[(f32, &str)] = &[
    (2.0, "I would like to book a table."),
    (5.0, "Hi, I am calling about my order. It was supposed to arrive on Monday."),
    (
        10.0,
        "Hello, my name is Sarah and I am calling about the insurance renewal. I got your letter last week, \
         and I would like to know whether the premium has changed since last year.",
    ),
];

