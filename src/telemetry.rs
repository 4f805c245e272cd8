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
    let cpu = std::fs::read_to_string("/proc/cpuinfo").map(|info| cpu_of(&info)).unwrap_or_else(|_| "unknown CPU".into());
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

/// The first CPU of `/proc/cpuinfo` in words: its model name and, on x86, its family, model
/// and widest vector extension. A cloud's bare "AMD EPYC" names generations whose speeds
/// differ twofold (`docs/decisions.md`, 2026-12-04), so figures and a saved capacity say which.
/// No ", " inside: the machine line's first part is the CPU
/// ([`crate::server::limits::Capacity::load`]).
fn cpu_of(info: &str) -> String {
    let first = info.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| {
        first.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let Some(name) = field("model name") else { return "unknown CPU".into() };
    let (Some(family), Some(model)) = (field("cpu family"), field("model")) else { return name };
    let flags = field("flags").unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let vector = ["avx512f", "avx2", "avx"].into_iter().find(|v| has(v)).map(|v| format!("; {}", v.trim_end_matches('f').to_uppercase())).unwrap_or_default();
    format!("{name} (family {family} model {model}{vector})")
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

#[cfg(test)]
mod tests {
    use super::cpu_of;

    #[test]
    fn a_cpu_is_named_with_its_family_model_and_widest_vector_extension_and_no_comma() {
        let epyc = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512f avx512dq\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_of(epyc), "AMD EPYC (family 26 model 2; AVX512)");
        let xeon = "cpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: fpu avx avx2\n";
        assert_eq!(cpu_of(xeon), "Intel(R) Xeon(R) CPU @ 2.20GHz (family 6 model 85; AVX2)");
        // Elsewhere (an ARM board) the name alone, or nothing known.
        assert_eq!(cpu_of("model name\t: ARMv8 Processor rev 1 (v8l)\n"), "ARMv8 Processor rev 1 (v8l)");
        assert_eq!(cpu_of("processor\t: 0\n"), "unknown CPU");
        assert!(!cpu_of(epyc).contains(", "), "the machine line's first part must stay the CPU");
    }
}
