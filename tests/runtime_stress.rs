//! Stress: 200 timers re-arming at a high rate (from their handlers and from process threads),
//! tasklets and work scheduled from timers, process threads churning the allocator and sharing locks
//! with the handlers through lock_bh. Bounded (~4 s). No deadlock (a watchdog aborts), no lost
//! or early expiry (fires + cancelled == arms, each fire at or after its jiffy), no allocation
//! in softirq context, no lockdep report.

mod runtime_common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use deferred::kernel::jiffies::{jiffies, time_before};
use deferred::kernel::softirq;
use deferred::kernel::spinlock::SpinLock;
use deferred::kernel::tasklet::Tasklet;
use deferred::kernel::timer::{Timer, TimerList};
use deferred::kernel::workqueue::{Work, flush_scheduled_work, schedule_work};
use runtime_common::{assert_no_softirq_allocations, setup, wait_for};

const TIMERS: usize = 200;
/// Timers below this index are re-armed by their handlers only.
const UNTOUCHED: u64 = 100;

static STOP: AtomicBool = AtomicBool::new(false);
static ARMS: AtomicU64 = AtomicU64::new(0);
static FIRES: AtomicU64 = AtomicU64::new(0);
static EARLY: AtomicU64 = AtomicU64::new(0);
static TASKLET_RUNS: AtomicU64 = AtomicU64::new(0);
static SHARED: [SpinLock<u64>; 4] = [
    SpinLock::new("stress_lock0", 0),
    SpinLock::new("stress_lock1", 0),
    SpinLock::new("stress_lock2", 0),
    SpinLock::new("stress_lock3", 0),
];

fn tasklet_fn(_t: Pin<&Tasklet<()>>) {
    TASKLET_RUNS.fetch_add(1, SeqCst);
    *SHARED[3].lock() += 1;
}
static TASKLET: Tasklet<()> = Tasklet::new(tasklet_fn, ());

/// A work item queued from timer handlers: its handler runs in process context and may
/// allocate and sleep.
struct Deferred {
    work: Work<Deferred>,
    runs: AtomicU64,
}
deferred::impl_has_work!(Deferred, work);

fn deferred_work(d: &Deferred) {
    assert!(deferred::kernel::sched::in_task());
    let v: Vec<u64> = (0..64).collect();
    d.runs.fetch_add(v.len() as u64 / 64, SeqCst);
}

static DEFERRED: Deferred = Deferred {
    work: Work::new(deferred_work),
    runs: AtomicU64::new(0),
};

struct Item {
    idx: u64,
    seed: AtomicU64,
}

fn next_rand(seed: &AtomicU64) -> u64 {
    // xorshift; races between handler and process threads only change the numbers.
    let mut x = seed.load(SeqCst) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    seed.store(x, SeqCst);
    x
}

fn handler(t: &Timer<Item>) {
    let now = jiffies();
    // Only timers no process thread touches can be checked without a race (a process thread
    // may move a timer while its handler runs, changing expires()).
    if t.data().idx < UNTOUCHED && time_before(now, t.expires()) {
        EARLY.fetch_add(1, SeqCst);
    }
    FIRES.fetch_add(1, SeqCst);
    let it = t.data();
    *SHARED[(it.idx % 3) as usize].lock() += 1;
    if it.idx.is_multiple_of(16) {
        Pin::static_ref(&TASKLET).schedule();
    }
    if it.idx.is_multiple_of(8) {
        schedule_work(Pin::static_ref(&DEFERRED));
    }
    deferred::pr_debug!("stress timer {} fired at {}", it.idx, now);
    if !STOP.load(SeqCst) {
        let delay = 1 + next_rand(&it.seed) % 3;
        if !t.mod_timer(now + delay) {
            ARMS.fetch_add(1, SeqCst);
        }
    }
}

#[test]
fn many_timers_rearming_with_process_threads_sharing_locks() {
    let _g = setup();
    // A deadlock must fail the test, not hang it.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("stress: watchdog expired (deadlock?)");
        std::process::abort();
    });
    let timers: Vec<TimerList<Item>> = (0..TIMERS as u64)
        .map(|i| {
            TimerList::new(
                handler,
                Item {
                    idx: i,
                    seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15 ^ (i + 1)),
                },
            )
        })
        .collect();
    let interrupts0 = softirq::timer_interrupts();
    for t in &timers {
        if !t.mod_timer(jiffies() + 1 + t.data().idx % 5) {
            ARMS.fetch_add(1, SeqCst);
        }
    }
    let end = Instant::now() + Duration::from_secs(4);
    let cancelled = AtomicU64::new(0);
    let bh_sections = AtomicU64::new(0);
    std::thread::scope(|s| {
        // Lock sharers and allocator churners.
        for w in 0..3u64 {
            let bh_sections = &bh_sections;
            s.spawn(move || {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    {
                        let mut g = SHARED[(i % 4) as usize].lock_bh();
                        *g += 1;
                    }
                    bh_sections.fetch_add(1, SeqCst);
                    keep.push(vec![w as u8; 64 + (i % 512) as usize]);
                    if keep.len() > 256 {
                        keep.clear();
                    }
                    i += 1;
                }
            });
        }
        // Re-armers and cancellers from process context.
        for w in 0..2u64 {
            let timers = &timers;
            let cancelled = &cancelled;
            s.spawn(move || {
                let seed = AtomicU64::new(w + 7);
                while Instant::now() < end {
                    let r = next_rand(&seed);
                    let t = &timers[(UNTOUCHED + r % (TIMERS as u64 - UNTOUCHED)) as usize];
                    if r.is_multiple_of(7) {
                        if t.del_timer() {
                            cancelled.fetch_add(1, SeqCst);
                        }
                        if !t.mod_timer(jiffies() + 1 + r % 4) {
                            ARMS.fetch_add(1, SeqCst);
                        }
                    } else if !t.mod_timer(jiffies() + 1 + r % 6) {
                        ARMS.fetch_add(1, SeqCst);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
    });
    STOP.store(true, SeqCst);
    // Let every pending arm fire (handlers no longer re-arm).
    assert!(
        wait_for(Duration::from_secs(10), || timers
            .iter()
            .all(|t| !t.timer_pending())),
        "timers still pending long after their expiry"
    );
    for t in &timers {
        t.del_timer_sync();
    }
    flush_scheduled_work();
    let arms = ARMS.load(SeqCst);
    let fires = FIRES.load(SeqCst);
    let cancelled = cancelled.load(SeqCst);
    eprintln!(
        "stress: arms {arms} fires {fires} cancelled {cancelled} interrupts {} tasklet runs {} \
         work runs {} bh sections {} ksoftirqd wakeups {}",
        softirq::timer_interrupts() - interrupts0,
        TASKLET_RUNS.load(SeqCst),
        DEFERRED.runs.load(SeqCst),
        bh_sections.load(SeqCst),
        softirq::ksoftirqd_wakeups()
    );
    assert!(fires > 10 * TIMERS as u64, "too few expiries: {fires}");
    assert_eq!(
        fires + cancelled,
        arms,
        "every arm fires exactly once or is cancelled"
    );
    assert_eq!(EARLY.load(SeqCst), 0, "a timer fired before its jiffy");
    assert!(TASKLET_RUNS.load(SeqCst) > 0);
    assert!(
        DEFERRED.runs.load(SeqCst) > 0,
        "work queued from timers ran"
    );
    for l in &SHARED {
        assert!(
            !l.class().reported(),
            "lockdep report for {}",
            l.class().name()
        );
    }
    assert_no_softirq_allocations();
}
