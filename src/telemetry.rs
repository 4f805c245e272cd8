//! Logging set-up: key/value logs to stderr, filtered by `RUST_LOG` (default: warnings).
//!
//! Native libraries (whisper.cpp, ggml) log through whisper-rs's hooks into `tracing`, so
//! their chatter is filtered like ours instead of flooding the terminal. whisper.cpp's own
//! log is off unless `RUST_LOG` names `whisper_rs`: every failure of it comes back to us as an
//! error anyway, and it logs a partial transcript stopped on purpose as "failed to encode".

use tracing_subscriber::EnvFilter;

pub fn init(verbose: bool) {
    let default = if verbose { "info,whisper_rs=warn" } else { "warn,whisper_rs=error" };
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Unless RUST_LOG asks for whisper-rs by name, whisper.cpp's own log stays off.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("whisper_rs")) {
        filter = filter.add_directive("whisper_rs::whisper_logging_hook=off".parse().expect("a valid directive"));
    }
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
    whisper_rs::install_logging_hooks();
}
