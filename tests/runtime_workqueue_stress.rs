//! Stress: work queued from many re-arming timers (softirq context) and from process threads
//! that also cancel it, on a per-CPU workqueue, for a bounded time. Every successful queueing
//! is consumed exactly once (a run or a cancel that returned true), no work item ever runs on
//! two workers at once, nothing deadlocks, and softirq context never allocates.

use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use deferred::kernel::alloc;
use deferred::kernel::jiffies::jiffies;
use deferred::kernel::timer::{Timer, TimerList};
use deferred::kernel::workqueue::{
    Work, Workqueue, cancel_work_sync, create_workqueue, flush_workqueue, num_online_cpus,
    queue_work_on,
};
use deferred::{impl_has_work, kernel};

#[global_allocator]
static ALLOC: alloc::CountingAllocator = alloc::CountingAllocator;

const ITEMS: usize = 8;
const TIMERS: usize = 16;
const RUN_FOR: Duration = Duration::from_secs(3);

struct Item {
    work: Work<Item>,
    in_handler: AtomicBool,
    overlaps: AtomicU64,
    runs: AtomicU64,
    queued: AtomicU64,
    cancelled: AtomicU64,
}
impl_has_work!(Item, work);

impl Item {
    const fn new() -> Self {
        Item {
            work: Work::new(handler),
            in_handler: AtomicBool::new(false),
            overlaps: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }
}

fn handler(item: &Item) {
    if item.in_handler.swap(true, SeqCst) {
        item.overlaps.fetch_add(1, SeqCst);
    }
    // A little work, so that runs overlap with queueing from everywhere.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_micros(50) {
        std::hint::spin_loop();
    }
    item.in_handler.store(false, SeqCst);
    item.runs.fetch_add(1, SeqCst);
}

static ALL: [Item; ITEMS] = [const { Item::new() }; ITEMS];
static WQ: OnceLock<Workqueue> = OnceLock::new();
static STOP: AtomicBool = AtomicBool::new(false);
static TIMER_QUEUED: AtomicU64 = AtomicU64::new(0);

fn timer_fn(t: &Timer<usize>) {
    let n = *t.data();
    let tick = jiffies() as usize;
    let item = &ALL[(n + tick) % ITEMS];
    if let Some(wq) = WQ.get()
        && queue_work_on(n, wq, Pin::static_ref(item))
    {
        item.queued.fetch_add(1, SeqCst);
        TIMER_QUEUED.fetch_add(1, SeqCst);
    }
    if !STOP.load(SeqCst) {
        t.mod_timer(jiffies() + 1);
    }
}

#[test]
fn timers_and_threads_queue_and_cancel_concurrently() {
    // A deadlock must fail the test, not hang it: the binary normally ends in seconds.
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(120));
        eprintln!("watchdog: stress still running after 120 s: deadlock");
        std::process::exit(101);
    });
    kernel::start().unwrap();
    let wq = WQ.get_or_init(|| create_workqueue("stress").unwrap());
    let allocs = alloc::softirq_allocations();
    let frees = alloc::softirq_frees();

    let timers: Vec<TimerList<usize>> = (0..TIMERS).map(|n| TimerList::new(timer_fn, n)).collect();
    for t in &timers {
        t.mod_timer(jiffies() + 1);
    }
    let threads: Vec<_> = (0..2)
        .map(|me| {
            thread::spawn(move || {
                let mut i = me;
                while !STOP.load(SeqCst) {
                    let item = &ALL[i % ITEMS];
                    if queue_work_on(i / ITEMS, wq, Pin::static_ref(item)) {
                        item.queued.fetch_add(1, SeqCst);
                    }
                    if i % 3 == 0 && cancel_work_sync(&ALL[(i / 3) % ITEMS].work) {
                        ALL[(i / 3) % ITEMS].cancelled.fetch_add(1, SeqCst);
                    }
                    if i % 7 == 0 {
                        // Churn the allocator from process context meanwhile.
                        drop(vec![0u8; 4096 + i % 1024]);
                    }
                    i += 2;
                    if i % 64 == 0 {
                        thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        })
        .collect();

    thread::sleep(RUN_FOR);
    STOP.store(true, SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    for t in &timers {
        t.del_timer_sync();
    }
    drop(timers);
    flush_workqueue(wq);

    let mut total_runs = 0;
    for (n, item) in ALL.iter().enumerate() {
        let (q, r, c) = (
            item.queued.load(SeqCst),
            item.runs.load(SeqCst),
            item.cancelled.load(SeqCst),
        );
        assert_eq!(
            item.overlaps.load(SeqCst),
            0,
            "item {n} ran on two workers at once"
        );
        assert_eq!(q, r + c, "item {n}: queued {q} != runs {r} + cancelled {c}");
        assert!(!item.work.pending());
        total_runs += r;
    }
    assert!(
        TIMER_QUEUED.load(SeqCst) > 100,
        "timers queued too little to mean anything"
    );
    assert!(total_runs > 100);
    assert_eq!(
        alloc::softirq_allocations() - allocs,
        0,
        "allocation in softirq context"
    );
    assert_eq!(alloc::softirq_frees() - frees, 0, "free in softirq context");
    eprintln!(
        "stress: {} queued from timers, {total_runs} runs on {} workers",
        TIMER_QUEUED.load(SeqCst),
        num_online_cpus()
    );
}
