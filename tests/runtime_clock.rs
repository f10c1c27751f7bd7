//! `local_clock()` read from the TSC (forced here: this host's `clock_gettime` is a vDSO read,
//! so the runtime would not choose it): it follows `CLOCK_MONOTONIC` on every thread and in the
//! timer signal's handler, never goes backwards, takes its anchors in either context without
//! allocating, and stamps printk's lines.

mod runtime_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use deferred::kernel::clock::{self, local_clock, local_clock_mono};
use deferred::kernel::jiffies::{jiffies, monotonic_ns};
use deferred::kernel::printk;
use deferred::kernel::timer::{Timer, TimerList};
use runtime_common::{assert_no_softirq_allocations, setup, wait_for};

/// How far (ns) a reading may stray from `CLOCK_MONOTONIC` read around it. The clock's own
/// error is a microsecond or so; a wrong rate or anchor shows as up to a jiffy (4 ms).
const TOLERANCE_NS: u64 = 50_000;

/// Worst distances (ns) of readings outside the `CLOCK_MONOTONIC` readings around them, and
/// how many readings were made.
#[derive(Default)]
struct Stray {
    behind: AtomicU64,
    ahead: AtomicU64,
    reads: AtomicU64,
    backwards: AtomicU64,
}

impl Stray {
    /// One reading between two of `CLOCK_MONOTONIC`; `last` is the thread's last reading.
    /// Async-signal-safe (atomics only).
    fn read(&self, last: &mut u64) {
        let before = monotonic_ns();
        let t = local_clock_mono();
        let after = monotonic_ns();
        self.behind.fetch_max(before.saturating_sub(t), SeqCst);
        self.ahead.fetch_max(t.saturating_sub(after), SeqCst);
        self.reads.fetch_add(1, SeqCst);
        if t < *last {
            self.backwards.fetch_add(1, SeqCst);
        }
        *last = t;
    }

    fn check(&self, what: &str) {
        let (behind, ahead) = (self.behind.load(SeqCst), self.ahead.load(SeqCst));
        // Shown with --nocapture: the figures, e.g. in a VM.
        eprintln!(
            "{what}: {} readings, at most {behind} ns behind and {ahead} ns ahead of \
             CLOCK_MONOTONIC",
            self.reads.load(SeqCst)
        );
        assert!(
            behind <= TOLERANCE_NS && ahead <= TOLERANCE_NS,
            "{what}: local_clock strayed from CLOCK_MONOTONIC: {behind} ns behind, {ahead} ns ahead"
        );
        assert_eq!(
            self.backwards.load(SeqCst),
            0,
            "{what}: a reading went backwards"
        );
    }
}

fn force_tsc() {
    let on = clock::use_tsc(true);
    assert_eq!(
        on,
        cfg!(target_arch = "x86_64"),
        "the TSC clock on x86-64 only"
    );
    if on {
        assert_eq!(clock::source(), "tsc");
    }
}

/// Three threads read the clock for `ms` milliseconds, each reading checked by `stray`.
fn read_on_three_threads(stray: &Stray, ms: u64) {
    let end = monotonic_ns() + ms * 1_000_000;
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let mut last = 0;
                while monotonic_ns() < end {
                    stray.read(&mut last);
                }
            });
        }
    });
}

#[test]
fn the_tsc_clock_follows_clock_monotonic_on_every_thread_and_rarely_reads_it() {
    let _g = setup();
    force_tsc();
    // Warming up: until a CPU's anchors are half a jiffy apart its rate is unknown and every
    // reading on it reads clock_gettime, for as long as that takes whatever the load.
    let warm = Stray::default();
    read_on_three_threads(&warm, 50);
    warm.check("three threads warming up for 50 ms");
    let stray = Stray::default();
    let slow_before = clock::slow_reads();
    read_on_three_threads(&stray, 300);
    stray.check("three threads for 300 ms");
    if cfg!(target_arch = "x86_64") {
        let (slow, reads) = (clock::slow_reads() - slow_before, stray.reads.load(SeqCst));
        // One anchor a jiffy per CPU, and the reads racing its writing: a few hundred at most,
        // against millions of readings.
        assert!(slow > 0, "no anchor was taken");
        assert!(
            slow * 100 < reads,
            "{slow} of {reads} readings read clock_gettime"
        );
    }
}

struct Probe {
    stray: Stray,
    runs: AtomicU64,
    stop: AtomicBool,
}

/// A timer handler reading the clock (anchors go stale between runs, a jiffy apart: the first
/// reading of a run takes one, in the signal handler) and printing a line stamped by it.
fn probe(t: &Timer<Probe>) {
    let p = t.data();
    let mut last = 0;
    for _ in 0..200 {
        p.stray.read(&mut last);
    }
    let n = p.runs.fetch_add(1, SeqCst) + 1;
    deferred::pr_info!("[clock_probe] run {}", n);
    if !p.stop.load(SeqCst) {
        t.mod_timer(jiffies() + 1);
    }
}

#[test]
fn the_tsc_clock_is_read_in_the_signal_handler_without_allocating_and_stamps_printk() {
    let _g = setup();
    force_tsc();
    let cap = printk::capture();
    let start = local_clock();
    let t = TimerList::new(
        probe,
        Probe {
            stray: Stray::default(),
            runs: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        },
    );
    t.mod_timer(jiffies() + 1);
    // Meanwhile this thread reads too, so that the handler sometimes interrupts it taking an
    // anchor (and then reads clock_gettime instead of waiting for it).
    let here = Stray::default();
    let mut last = 0;
    assert!(
        wait_for(Duration::from_secs(30), || {
            for _ in 0..1000 {
                here.read(&mut last);
            }
            t.data().runs.load(SeqCst) >= 50
        }),
        "the timer ran {} times in 30 s",
        t.data().runs.load(SeqCst)
    );
    t.data().stop.store(true, SeqCst);
    t.del_timer_sync();
    let end = local_clock();
    t.data().stray.check("in the signal handler");
    here.check("beside the signal handler");
    assert_no_softirq_allocations();
    let lines: Vec<_> = cap
        .lines()
        .into_iter()
        .filter(|l| l.text.starts_with("[clock_probe]"))
        .collect();
    assert!(lines.len() >= 50, "{} lines", lines.len());
    for l in &lines {
        assert!(
            (start..=end).contains(&l.ts_ns),
            "{:?} stamped {} ns, outside the test's {start}..={end}",
            l.text,
            l.ts_ns
        );
    }
    for w in lines.windows(2) {
        assert!(w[0].ts_ns < w[1].ts_ns, "timestamps go forward");
    }
}
