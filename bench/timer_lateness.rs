//! Timer lateness: many `timer_list` timers at random expiries; how late does each handler start?
//!
//!     cargo run --release --example timer_lateness -- [SECONDS] [TIMERS] [MAX_JIFFIES]
//!
//! TIMERS (default 16) timers, each re-armed from its own handler for a random 1..=MAX_JIFFIES
//! (default 8, i.e. 4..32 ms at HZ = 250) jiffies ahead, for SECONDS (default 10). Lateness = the
//! handler's first instruction (CLOCK_MONOTONIC) minus the moment its expiry jiffy began
//! (`jiffies_to_monotonic_ns(expires)`): what the tickless POSIX timer, the signal delivery and
//! the softirq expiry add. Timers that expire in the same jiffy run one after another, so the
//! later ones include the earlier handlers' time, as in the kernel; `first_*` are the first
//! handler of each timer interrupt only (the mechanism alone, as cyclictest sees one per signal).
//!
//! The reference is `cyclictest -x` (POSIX timer + signal), run by scripts/bench in the same run.
//! Prints one JSON line: {"bench":"timer_lateness",...,"min_us":..,"p50_us":..,"p99_us":..,...}.

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::{now_ns, numeric_args, stats_json};
use deferred::kernel::jiffies::{HZ, jiffies, jiffies_to_monotonic_ns};
use deferred::kernel::timer::{Timer, TimerList};

#[global_allocator]
static ALLOC: deferred::kernel::alloc::CountingAllocator =
    deferred::kernel::alloc::CountingAllocator;

/// Samples, preallocated: the handler only stores into them.
struct Samples {
    lateness_ns: Box<[AtomicU64]>,
    next: AtomicUsize,
    /// The lateness of the first handler of each timer interrupt (no other handler before it).
    first_ns: Box<[AtomicU64]>,
    first_next: AtomicUsize,
    last_irq: AtomicU64,
    stop: AtomicU64,
    max_jiffies: u64,
}

struct PerTimer {
    samples: &'static Samples,
    rng: AtomicU64,
}

fn handler(t: &Timer<PerTimer>) {
    let start = now_ns();
    let me = t.data();
    let s = me.samples;
    let due = jiffies_to_monotonic_ns(t.expires());
    let i = s.next.fetch_add(1, Ordering::Relaxed);
    if i < s.lateness_ns.len() {
        s.lateness_ns[i].store(start.saturating_sub(due), Ordering::Relaxed);
    }
    let irq = deferred::kernel::softirq::timer_interrupts();
    if s.last_irq.swap(irq, Ordering::Relaxed) != irq {
        let k = s.first_next.fetch_add(1, Ordering::Relaxed);
        if k < s.first_ns.len() {
            s.first_ns[k].store(start.saturating_sub(due), Ordering::Relaxed);
        }
    }
    if s.stop.load(Ordering::Relaxed) != 0 {
        return;
    }
    // xorshift, lock-free and allocation-free.
    let mut x = me.rng.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    me.rng.store(x, Ordering::Relaxed);
    t.mod_timer(jiffies() + 1 + x % s.max_jiffies);
}

fn main() {
    let args =
        numeric_args("usage: timer_lateness [SECONDS] [TIMERS] [MAX_JIFFIES]  (e.g. 10 16 8)");
    let seconds = *args.first().unwrap_or(&10);
    let ntimers = *args.get(1).unwrap_or(&16) as usize;
    let max_jiffies = (*args.get(2).unwrap_or(&8)).max(1);
    if seconds == 0 || ntimers == 0 {
        eprintln!("timer_lateness: SECONDS and TIMERS must be at least 1");
        std::process::exit(2);
    }
    let tracer = common::trace_from_env();
    deferred::kernel::start().expect("runtime start");

    // Room for every expiry the run can make (each timer at most once a jiffy), plus slack.
    let cap = (seconds * HZ + 2 * HZ) as usize * ntimers;
    let samples: &'static Samples = Box::leak(Box::new(Samples {
        lateness_ns: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        next: AtomicUsize::new(0),
        first_ns: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        first_next: AtomicUsize::new(0),
        last_irq: AtomicU64::new(u64::MAX),
        stop: AtomicU64::new(0),
        max_jiffies,
    }));
    let timers: Vec<TimerList<PerTimer>> = (0..ntimers)
        .map(|i| {
            TimerList::new(
                handler,
                PerTimer {
                    samples,
                    rng: AtomicU64::new(now_ns() ^ (0x9e37_79b9_7f4a_7c15 * (i as u64 + 1)) | 1),
                },
            )
        })
        .collect();
    let j = jiffies();
    for (i, t) in timers.iter().enumerate() {
        t.mod_timer(j + 1 + (i as u64 % max_jiffies));
    }
    let t0 = now_ns();
    std::thread::sleep(Duration::from_secs(seconds));
    samples.stop.store(1, Ordering::Relaxed);
    for t in &timers {
        t.del_timer_sync();
    }
    let elapsed = (now_ns() - t0) as f64 / 1e9;
    let n = samples.next.load(Ordering::Relaxed).min(cap);
    let mut v: Vec<u64> = samples.lateness_ns[..n]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let nf = samples.first_next.load(Ordering::Relaxed).min(cap);
    let mut first: Vec<u64> = samples.first_ns[..nf]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    println!(
        "{{\"bench\":\"timer_lateness\",{},\"timers\":{ntimers},\"max_jiffies\":{max_jiffies},\"hz\":{HZ},\"seconds\":{elapsed:.2},\"signals\":{},\"softirq_allocations\":{},{},{}}}",
        common::trace_finish(tracer),
        deferred::kernel::softirq::timer_interrupts(),
        deferred::kernel::alloc::softirq_allocations(),
        stats_json("", &mut v),
        stats_json("first_", &mut first)
    );
}
