//! Shared by the Rust bench programs: latency statistics printed as the C programs print them
//! (one JSON line, `min_us`/`p50_us`/`p99_us`/`max_us` and `cdf_us`, the 0th..100th percentiles).

#![allow(dead_code)]

use std::fmt::Write;

/// CLOCK_MONOTONIC in nanoseconds. Async-signal-safe (a vDSO call, no allocation).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nearest-rank percentile (p in 0..=100) of a sorted slice, in microseconds.
pub fn pct_us(sorted: &[u64], p: f64) -> f64 {
    let n = sorted.len();
    let k = ((p / 100.0 * n as f64) + 0.999_999) as usize;
    sorted[k.clamp(1, n) - 1] as f64 / 1000.0
}

/// Sorts `ns` and returns the statistics fields, `prefix` before each key (no braces):
/// `"<prefix>samples":N,"<prefix>min_us":..,"<prefix>p50_us":..,...,"<prefix>cdf_us":[..]`.
/// An empty sample set gives `"<prefix>samples":0` only.
pub fn stats_json(prefix: &str, ns: &mut [u64]) -> String {
    let mut s = format!("\"{prefix}samples\":{}", ns.len());
    if ns.is_empty() {
        return s;
    }
    ns.sort_unstable();
    let _ = write!(
        s,
        ",\"{prefix}min_us\":{:.3},\"{prefix}p50_us\":{:.3},\"{prefix}p99_us\":{:.3},\"{prefix}max_us\":{:.3},\"{prefix}cdf_us\":[",
        ns[0] as f64 / 1000.0,
        pct_us(ns, 50.0),
        pct_us(ns, 99.0),
        ns[ns.len() - 1] as f64 / 1000.0
    );
    for p in 0..=100 {
        let _ = write!(
            s,
            "{}{:.3}",
            if p > 0 { "," } else { "" },
            pct_us(ns, p as f64)
        );
    }
    s.push(']');
    s
}

/// A field of `/proc/<pid>/status` in kB (VmRSS, VmHWM, ...); 0 if missing.
pub fn status_kb(pid: i32, key: &str) -> u64 {
    let path = if pid == 0 {
        "/proc/self/status".to_string()
    } else {
        format!("/proc/{pid}/status")
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The program's arguments, all numbers; anything else prints `usage` and exits 2.
pub fn numeric_args(usage: &str) -> Vec<u64> {
    std::env::args()
        .skip(1)
        .map(|a| {
            a.parse().unwrap_or_else(|_| {
                eprintln!("{usage}");
                std::process::exit(2)
            })
        })
        .collect()
}

/// A small xorshift generator: the benches need spread, not quality, and no crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..hi` (hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Forks `n` children that sleep until killed and die with us (PDEATHSIG) if we die first.
/// Call it while single-threaded. On a fork failure it kills those made, says why, and exits 1.
pub fn fork_sleepers(n: usize, who: &str) -> Vec<i32> {
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: the process is single-threaded here; the child only makes async-signal-safe calls.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: prctl/pause are async-signal-safe and take plain arguments.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    loop {
                        libc::pause();
                    }
                }
            }
            -1 => {
                eprintln!(
                    "{who}: fork failed after {} children: {} (raise ulimit -u / pid_max)",
                    pids.len(),
                    std::io::Error::last_os_error()
                );
                kill_all(&pids);
                std::process::exit(1);
            }
            pid => pids.push(pid),
        }
    }
    pids
}

/// Kills and reaps our children `pids`.
pub fn kill_all(pids: &[i32]) {
    for &pid in pids {
        // SAFETY: kill our own children.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in pids {
        // SAFETY: reaping our own child; a null status pointer is allowed.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
}

/// `BENCH_TRACE=FILE`: record every trace event into FILE while the bench runs (what tracing
/// costs when on; see bench/trace-overhead.sh). Call before the runtime starts.
pub fn trace_from_env() -> Option<deferred::tracefile::Tracer> {
    let path = std::env::var_os("BENCH_TRACE")?;
    match deferred::tracefile::Tracer::start(path.as_ref(), deferred::kernel::trace::ALL) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("BENCH_TRACE={}: {e}", path.to_string_lossy());
            std::process::exit(2);
        }
    }
}

/// Stops the tracer of [`trace_from_env`]; the JSON fields saying how many events it wrote and
/// lost (`"trace_events":0` when tracing was off).
pub fn trace_finish(t: Option<deferred::tracefile::Tracer>) -> String {
    match t {
        None => "\"trace_events\":0,\"trace_lost\":0".into(),
        Some(t) => match t.finish() {
            Ok(written) => format!(
                "\"trace_events\":{written},\"trace_lost\":{}",
                deferred::kernel::trace::lost()
            ),
            Err(e) => {
                eprintln!("BENCH_TRACE: writing the trace: {e}");
                std::process::exit(1);
            }
        },
    }
}
