//! The command line: one enum of subcommands, each handled in its own file.
//!
//! Handlers return `anyhow::Result` so that errors from every layer print as one chain
//! (`error: transcribing x.wav: …`); the library modules below keep typed errors.

mod audio_cmds;
mod bench;
mod demo;
mod models_cmd;

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
    /// Pull the models, then run a voice round trip on them.
    Demo(demo::DemoArgs),
    /// Print speed figures (benchmarks, not tests).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Models(command) => models_cmd::run(command),
        Command::Transcribe(args) => audio_cmds::transcribe(args),
        Command::Speak(args) => audio_cmds::speak(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(command) => bench::run(command),
    }
}
