//! Logging set-up: key/value logs to stderr, filtered by `RUST_LOG` (default: warnings).
//!
//! Native libraries (whisper.cpp, ggml) log through whisper-rs's hooks into `tracing`, so
//! their chatter is filtered like ours instead of flooding the terminal. whisper.cpp's own
//! log is off unless `RUST_LOG` names `whisper_rs`: every failure of it comes back to us as an
//! error anyway, and it logs a partial transcript stopped on purpose as "failed to encode".
//! Also here: the one-line description of the machine that benchmarks and reports print.

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

/// The machine in a line: CPU model, cores (those this process may use, "k of n" when pinned
/// to fewer than the machine has), memory.
pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| info.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown memory".into());
    let (cores, online) = (allowed_cpus().len(), online_cpus());
    let cores = if cores < online { format!("{cores} of {online} cores") } else { format!("{cores} cores") };
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    format!("{cores} of {cpu}, {memory}, {profile} build")
}

/// The CPUs this process may run on (its affinity mask: `taskset`, a container's cpuset), by id.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set the kernel fills; its size is passed with it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return (0..online_cpus()).collect();
    }
    // SAFETY: every index is below CPU_SETSIZE, the set's size.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// The machine's online CPUs, whatever this process may use.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if online > 0 {
        online as usize
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}
