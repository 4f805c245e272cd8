//! `ringline-llm`: the local LLM engine, a separate process on purpose.
//!
//! llama.cpp has the fastest CPU kernels for small GGUF models (hundreds of tokens/s of prompt
//! processing on 2 cores, where candle's quantized path manages ~36), but llama.cpp and
//! whisper.cpp each vendor a static ggml and cannot link into one binary. So the engine runs
//! beside Ringline and speaks the OpenAI chat-completions protocol on loopback: Ringline talks
//! to it exactly as it talks to a cloud LLM, and supervises it as a child process.

mod api;
mod engine;
mod grammar;
mod template;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "ringline-llm", about = "OpenAI-compatible chat completions on a local GGUF model")]
struct Args {
    /// The GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// Address to serve on (loopback only unless you mean it).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// CPU threads for generation (token by token).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// CPU threads for prompt processing (batches); defaults to `--threads`.
    #[arg(long)]
    batch_threads: Option<i32>,
    /// KV-cache slots: conversations whose prefix stays cached between turns.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Context tokens per slot.
    #[arg(long, default_value_t = 2048)]
    slot_ctx: u32,
    /// Flash attention (llama.cpp's fused attention kernel).
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    flash_attn: String,
    /// Name reported in responses (defaults to the file's stem).
    #[arg(long)]
    name: Option<String>,
    /// Exit when standard input closes: the supervisor holds the other end of a pipe, and
    /// the kernel closes it when the supervisor dies, even by `kill -9` — no orphan engine.
    #[arg(long)]
    exit_with_stdin: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.exit_with_stdin {
        watch_supervisor();
    }
    let name = args.name.clone().unwrap_or_else(|| args.model.file_stem().unwrap_or_default().to_string_lossy().into_owned());
    let config = engine::EngineConfig { model: args.model, threads: args.threads, batch_threads: args.batch_threads.unwrap_or(args.threads), slots: args.slots, slot_ctx: args.slot_ctx, flash_attention: args.flash_attn == "on" };
    let engine = engine::Engine::start(config)?;
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    // The supervisor reads this line to learn the port.
    println!("listening on http://{}", listener.local_addr()?);
    let app = api::router(api::AppState::new(engine, name));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Exits the process once standard input reaches its end (the supervisor is gone).
fn watch_supervisor() {
    std::thread::spawn(|| {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 64];
        // Anything the supervisor writes is ignored; only the end of the pipe matters.
        while matches!(stdin.read(&mut buffer), Ok(n) if n > 0) {}
        tracing::warn!("the supervising process is gone; exiting");
        std::process::exit(0);
    });
}
