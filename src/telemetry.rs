//! Logging set-up: key/value logs to stderr, filtered by `RUST_LOG` (default: warnings).
//!
//! Native libraries (whisper.cpp, ggml) log through whisper-rs's hooks into `tracing`, so
//! their chatter is filtered like ours instead of flooding the terminal. whisper.cpp's own
//! log is off by default: every failure of it comes back to us as an error anyway, and it
//! logs a partial transcript stopped on purpose as "failed to encode".

use tracing_subscriber::EnvFilter;

pub fn init(verbose: bool) {
    let default = if verbose { "info,whisper_rs=warn" } else { "warn,whisper_rs::whisper_logging_hook=off,whisper_rs=error" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
    whisper_rs::install_logging_hooks();
}
