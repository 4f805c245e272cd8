//! The command line: one enum of subcommands, each handled in its own file.
//!
//! Handlers return `anyhow::Result` so that errors from every layer print as one chain
//! (`error: transcribing x.wav: …`); the library modules below keep typed errors.

mod audio_cmds;
mod bench;
mod bench_analysis;
mod bench_api;
mod bench_calls;
mod bench_latency;
mod bench_stt;
mod replay_cmd;
pub mod call_cmds;
mod eval_cmd;
mod models_cmd;
mod serve_cmds;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ringline", version, about = "Conversational voice agents on local models")]
pub struct Cli {
    /// More logging (RUST_LOG overrides).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch, verify and list the local models.
    #[command(subcommand)]
    Models(models_cmd::ModelsCommand),
    /// Transcribe audio files (WAV of any rate and encoding, FLAC, raw PCM).
    Transcribe(audio_cmds::TranscribeArgs),
    /// Synthesize speech to a WAV file.
    Speak(audio_cmds::SpeakArgs),
    /// Pull the models, then run a voice call between a sample assistant and a scripted caller.
    Demo(call_cmds::DemoArgs),
    /// A voice call between an assistant and a caller script, through the real pipeline.
    Simulate(call_cmds::SimulateArgs),
    /// A text conversation with an assistant (same turn manager and tools).
    Chat(call_cmds::ChatArgs),
    /// Serve the HTTP API (assistants, numbers, calls, analytics) over SQLite or PostgreSQL.
    Serve(serve_cmds::ServeArgs),
    /// Create, list, revoke and rotate API keys.
    Keys(serve_cmds::KeysArgs),
    /// Validate assistant files.
    #[command(subcommand)]
    Assistants(serve_cmds::AssistantsCommand),
    /// Print speed figures (benchmarks, not tests).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Replay scenario suites against assistants and score them.
    #[command(subcommand)]
    Eval(eval_cmd::EvalCommand),
    /// Renders one template job from stdin within resource limits (`serve` runs it).
    #[command(hide = true)]
    TemplateSandbox,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Models(command) => models_cmd::run(command),
        Command::Transcribe(args) => audio_cmds::transcribe(args),
        Command::Speak(args) => audio_cmds::speak(args),
        Command::Demo(args) => call_cmds::demo(args),
        Command::Simulate(args) => call_cmds::simulate(args),
        Command::Chat(args) => call_cmds::chat(args),
        Command::Serve(args) => serve_cmds::serve(args),
        Command::Keys(args) => serve_cmds::keys(args),
        Command::Assistants(command) => serve_cmds::assistants(command),
        Command::Bench(command) => bench::run(command),
        Command::Eval(command) => eval_cmd::run(command),
        Command::TemplateSandbox => Ok(crate::assistant::prompt::sandbox_child()?),
    }
}
