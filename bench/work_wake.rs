//! Softirq to worker: `schedule_work` from a timer handler -> the work handler's first instruction.
//!
//!     cargo run --release --example work_wake -- [SECONDS] [INTERVAL_US]
//!
//! A `timer_list` timer fires about every INTERVAL_US (default 4000 = one jiffy at HZ = 250;
//! re-armed from its handler for the next jiffy that far ahead). Its handler (softirq context)
//! stamps CLOCK_MONOTONIC and calls `schedule_work`; the work handler, on `events/N`, stamps
//! again as it starts. Sample = the difference. A tick whose work is still pending or running is
//! not counted (none should be: the work is empty).
//!
//! The reference is bench/pipe_wake (signal handler -> pipe write -> a thread blocked in read),
//! run by scripts/bench in the same run. Prints one JSON line like the other benches.

#[path = "common/mod.rs"]
mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::{now_ns, numeric_args, stats_json};
use deferred::impl_has_work;
use deferred::kernel::jiffies::{NSEC_PER_JIFFY, jiffies};
use deferred::kernel::timer::{Timer, TimerList};
use deferred::kernel::workqueue::{self, Work, schedule_work};

#[global_allocator]
static ALLOC: deferred::kernel::alloc::CountingAllocator =
    deferred::kernel::alloc::CountingAllocator;

struct Bench {
    work: Work<Bench>,
    queued_at: AtomicU64,
    samples: Box<[AtomicU64]>,
    next: AtomicUsize,
    busy: AtomicU64,
    every_jiffies: u64,
    stop: AtomicU64,
}
impl_has_work!(Bench, work);

fn work_handler(b: &Bench) {
    let start = now_ns();
    let i = b.next.fetch_add(1, Ordering::Relaxed);
    if i < b.samples.len() {
        b.samples[i].store(
            start.saturating_sub(b.queued_at.load(Ordering::Acquire)),
            Ordering::Relaxed,
        );
    }
}

fn timer_handler(t: &Timer<Pin<&'static Bench>>) {
    let b = t.data();
    if b.stop.load(Ordering::Relaxed) != 0 {
        return;
    }
    if b.work.pending() || b.work.running() {
        b.busy.fetch_add(1, Ordering::Relaxed);
    } else {
        b.queued_at.store(now_ns(), Ordering::Release);
        schedule_work(*b);
    }
    t.mod_timer(jiffies() + b.every_jiffies);
}

fn main() {
    let args = numeric_args("usage: work_wake [SECONDS] [INTERVAL_US]  (e.g. 10 4000)");
    let seconds = *args.first().unwrap_or(&10);
    let interval_us = *args.get(1).unwrap_or(&4000);
    if seconds == 0 || interval_us == 0 {
        eprintln!("work_wake: SECONDS and INTERVAL_US must be at least 1");
        std::process::exit(2);
    }
    let tracer = common::trace_from_env();
    deferred::kernel::start().expect("runtime start");
    workqueue::init().expect("the events workqueue");
    let every_jiffies = (interval_us * 1000).div_ceil(NSEC_PER_JIFFY).max(1);
    let cap = (seconds * 1_000_000 / (every_jiffies * NSEC_PER_JIFFY / 1000)) as usize + 64;
    let bench: Pin<&'static Bench> = Pin::static_ref(Box::leak(Box::new(Bench {
        work: Work::new(work_handler),
        queued_at: AtomicU64::new(0),
        samples: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        next: AtomicUsize::new(0),
        busy: AtomicU64::new(0),
        every_jiffies,
        stop: AtomicU64::new(0),
    })));
    let timer = TimerList::new(timer_handler, bench);
    timer.mod_timer(jiffies() + every_jiffies);
    std::thread::sleep(Duration::from_secs(seconds));
    bench.stop.store(1, Ordering::Relaxed);
    timer.del_timer_sync();
    workqueue::flush_scheduled_work();
    let n = bench.next.load(Ordering::Relaxed).min(cap);
    let mut v: Vec<u64> = bench.samples[..n]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    println!(
        "{{\"bench\":\"work_wake\",{},\"interval_us\":{},\"busy_ticks\":{},\"softirq_allocations\":{},{}}}",
        common::trace_finish(tracer),
        every_jiffies * NSEC_PER_JIFFY / 1000,
        bench.busy.load(Ordering::Relaxed),
        deferred::kernel::alloc::softirq_allocations(),
        stats_json("", &mut v)
    );
}
