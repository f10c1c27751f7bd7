//! Tasklets, as the lab text states them: run once however often scheduled, HI before TASKLET,
//! re-scheduling from the handler, disable/enable, kill, never on two threads at once.

mod runtime_common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use deferred::kernel::softirq::{self, local_bh_disable, local_bh_enable};
use deferred::kernel::spinlock::SpinLock;
use deferred::kernel::tasklet::{
    Tasklet, tasklet_disable, tasklet_enable, tasklet_hi_schedule, tasklet_kill, tasklet_schedule,
};
use runtime_common::{assert_no_softirq_allocations, setup, wait_for};

fn count(t: Pin<&Tasklet<AtomicU64>>) {
    assert!(softirq::in_serving_softirq());
    t.data().fetch_add(1, SeqCst);
}

#[test]
fn scheduled_many_times_before_running_runs_once() {
    let _g = setup();
    let t = Box::pin(Tasklet::new(count, AtomicU64::new(0)));
    // Bottom halves off: nothing runs on this thread, and the schedules below all land
    // before the tasklet can run anywhere (it is still scheduled until it runs).
    local_bh_disable();
    for _ in 0..10 {
        tasklet_schedule(t.as_ref());
    }
    assert!(t.is_scheduled());
    local_bh_enable();
    assert!(wait_for(Duration::from_secs(3), || t.data().load(SeqCst) >= 1));
    // Neither scheduled nor running: nothing can run it again.
    assert!(wait_for(Duration::from_secs(3), || !t.is_scheduled()
        && !t.is_running()));
    assert_eq!(
        t.data().load(SeqCst),
        1,
        "scheduled 10 times before it ran: runs once"
    );
    // Once run, it can be scheduled again.
    tasklet_schedule(t.as_ref());
    assert!(wait_for(Duration::from_secs(3), || t.data().load(SeqCst) == 2));
    assert_no_softirq_allocations();
}

static ORDER: SpinLock<[u8; 8]> = SpinLock::new("order_lock", [0; 8]);
static ORDER_LEN: AtomicU32 = AtomicU32::new(0);

fn note(t: Pin<&Tasklet<u8>>) {
    let mut o = ORDER.lock();
    let i = ORDER_LEN.fetch_add(1, SeqCst) as usize;
    if i < o.len() {
        o[i] = *t.data();
    }
}

#[test]
fn hi_tasklets_run_before_tasklets() {
    let _g = setup();
    ORDER_LEN.store(0, SeqCst);
    let low = Box::pin(Tasklet::new(note, b'T'));
    let hi = Box::pin(Tasklet::new(note, b'H'));
    local_bh_disable();
    tasklet_schedule(low.as_ref());
    tasklet_hi_schedule(hi.as_ref());
    // Both pending; they run at the enable below (or on another thread), HI first.
    local_bh_enable();
    assert!(wait_for(Duration::from_secs(3), || ORDER_LEN.load(SeqCst) == 2));
    let o = *ORDER.lock_bh();
    assert_eq!(&o[..2], b"HT", "HI_SOFTIRQ runs before TASKLET_SOFTIRQ");
}

struct Again {
    runs: AtomicU64,
    upto: u64,
}

fn again(t: Pin<&Tasklet<Again>>) {
    let n = t.data().runs.fetch_add(1, SeqCst) + 1;
    if n < t.data().upto {
        t.schedule();
    }
}

#[test]
fn a_tasklet_can_reschedule_itself() {
    let _g = setup();
    let t = Box::pin(Tasklet::new(
        again,
        Again {
            runs: AtomicU64::new(0),
            upto: 50,
        },
    ));
    tasklet_schedule(t.as_ref());
    assert!(wait_for(Duration::from_secs(5), || t
        .data()
        .runs
        .load(SeqCst)
        == 50));
    // Neither scheduled nor running: nothing can run it again.
    assert!(wait_for(Duration::from_secs(3), || !t.is_scheduled()
        && !t.is_running()));
    assert_eq!(t.data().runs.load(SeqCst), 50);
    assert_no_softirq_allocations();
}

#[test]
fn disable_holds_a_scheduled_tasklet_and_enable_releases_it() {
    let _g = setup();
    let t = Box::pin(Tasklet::new(count, AtomicU64::new(0)));
    tasklet_disable(&t);
    tasklet_schedule(t.as_ref());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(t.data().load(SeqCst), 0, "a disabled tasklet does not run");
    assert!(t.is_scheduled(), "it stays scheduled");
    // Nested disable: one enable is not enough.
    tasklet_disable(&t);
    tasklet_enable(&t);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(t.data().load(SeqCst), 0);
    tasklet_enable(&t);
    assert!(wait_for(Duration::from_secs(3), || t.data().load(SeqCst) == 1));
}

static DECLARED_RUNS: AtomicU64 = AtomicU64::new(0);
fn declared(_t: Pin<&Tasklet<()>>) {
    DECLARED_RUNS.fetch_add(1, SeqCst);
}
static DECLARED_OFF: Tasklet<()> = Tasklet::new_disabled(declared, ());

#[test]
fn declare_tasklet_disabled_runs_only_after_enable() {
    let _g = setup();
    let t = Pin::static_ref(&DECLARED_OFF);
    tasklet_schedule(t);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(DECLARED_RUNS.load(SeqCst), 0);
    tasklet_enable(&DECLARED_OFF);
    assert!(wait_for(Duration::from_secs(3), || DECLARED_RUNS
        .load(SeqCst)
        == 1));
}

struct Slow {
    running: AtomicBool,
    overlap: AtomicBool,
    done: AtomicU64,
}

fn slow(t: Pin<&Tasklet<Slow>>) {
    let s = t.data();
    if s.running.swap(true, SeqCst) {
        s.overlap.store(true, SeqCst);
    }
    deferred::kernel::sched::mdelay(30);
    s.running.store(false, SeqCst);
    s.done.fetch_add(1, SeqCst);
}

#[test]
fn kill_waits_for_the_scheduled_run_and_never_two_at_once() {
    let _g = setup();
    let t = Box::pin(Tasklet::new(
        slow,
        Slow {
            running: AtomicBool::new(false),
            overlap: AtomicBool::new(false),
            done: AtomicU64::new(0),
        },
    ));
    // Several threads schedule it again and again while it runs.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    tasklet_schedule(t.as_ref());
                    std::thread::sleep(Duration::from_millis(3));
                }
            });
        }
    });
    tasklet_kill(&t);
    assert!(
        !t.is_scheduled() && !t.is_running(),
        "after kill: neither scheduled nor running"
    );
    let done = t.data().done.load(SeqCst);
    assert!(done >= 1);
    assert!(!t.data().overlap.load(SeqCst), "ran on two threads at once");
    // A disabled, scheduled tasklet is unscheduled by kill (no hang).
    tasklet_disable(&t);
    tasklet_schedule(t.as_ref());
    std::thread::sleep(Duration::from_millis(30));
    tasklet_kill(&t);
    assert!(!t.is_scheduled());
    tasklet_enable(&t);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(t.data().done.load(SeqCst), done);
}

struct Budget {
    runs: AtomicU64,
    here: AtomicU64,
    on_ksoftirqd: AtomicU64,
    owner: std::sync::atomic::AtomicI32,
    upto: u64,
}

fn budget(t: Pin<&Tasklet<Budget>>) {
    let b = t.data();
    let c = deferred::kernel::sched::current();
    if c.pid() == b.owner.load(SeqCst) {
        b.here.fetch_add(1, SeqCst);
    } else if c.comm().as_str() == "ksoftirqd/0" {
        b.on_ksoftirqd.fetch_add(1, SeqCst);
    }
    if b.runs.fetch_add(1, SeqCst) + 1 < b.upto {
        t.schedule();
    }
}

#[test]
fn softirq_overflow_goes_to_ksoftirqd_after_the_kernels_budget() {
    let _g = setup();
    let t = Box::pin(Tasklet::new(
        budget,
        Budget {
            runs: AtomicU64::new(0),
            here: AtomicU64::new(0),
            on_ksoftirqd: AtomicU64::new(0),
            owner: std::sync::atomic::AtomicI32::new(deferred::kernel::sched::gettid()),
            upto: 200,
        },
    ));
    local_bh_disable();
    tasklet_schedule(t.as_ref());
    local_bh_enable(); // runs here, at most MAX_SOFTIRQ_RESTART rounds, then ksoftirqd/0
    let here = t.data().here.load(SeqCst);
    assert!(
        (1..=softirq::MAX_SOFTIRQ_RESTART as u64).contains(&here),
        "{here} rounds on this thread"
    );
    assert!(wait_for(Duration::from_secs(5), || t
        .data()
        .runs
        .load(SeqCst)
        == 200));
    assert!(
        t.data().on_ksoftirqd.load(SeqCst) > 0,
        "the rest ran on ksoftirqd/0"
    );
    assert_no_softirq_allocations();
}
