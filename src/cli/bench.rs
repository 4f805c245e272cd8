//! `ringline bench …`: figures, not tests. Prints timings; asserts nothing about them.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Voice-to-voice and per-stage latency over scripted calls on the local models.
    Latency(super::bench_latency::LatencyArgs),
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
    Analysis(super::bench_analysis::BenchAnalysisArgs),
    /// Every installed speech model side by side: word errors on the dev set as recorded and
    /// through a phone line (dev and held-out) and on recordings made for the phone, digit
    /// strings, and time for 2, 5 and 10 s.
    Stt {
        /// Runs per utterance length (after one warm-up run).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Store models to compare (default: every installed one).
        #[arg(long = "model")]
        models: Vec<String>,
        #[arg(long, default_value = "eval/stt/devset.yaml")]
        devset: std::path::PathBuf,
        /// Recordings made for the phone (8 kHz), heard through the line only.
        #[arg(long, default_value = "eval/stt/phone.yaml")]
        phone_set: std::path::PathBuf,
    },
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Stt { runs, models, devset, phone_set } => super::bench_stt::run(runs.max(1), models, &devset, &phone_set),
        BenchCommand::Analysis(args) => super::bench_analysis::run(args),
        BenchCommand::Api(args) => super::bench_api::run(args),
        BenchCommand::Calls(args) => super::bench_calls::run(args),
        BenchCommand::Llm { assistant, caller, model, conversations, threads } => {
            super::bench_latency::bench_llm(&assistant, &caller, model, conversations.max(1), threads)
        }
        BenchCommand::Latency(args) => super::bench_latency::run(args),
    }
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

