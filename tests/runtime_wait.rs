//! Wait queues: `wait_event*` and `wake_up*` (src/kernel/wait.rs) and `atomic_t`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use deferred::kernel::atomic::Atomic;
use deferred::kernel::jiffies::{HZ, msecs_to_jiffies};
use deferred::kernel::sched;
use deferred::kernel::softirq::{local_bh_disable, local_bh_enable};
use deferred::kernel::wait::{
    WaitQueueHead, wait_event, wait_event_interruptible, wait_event_timeout, wake_up, wake_up_all,
    wake_up_interruptible,
};
use deferred::kernel::{alloc, printk};

#[path = "common/wait.rs"]
mod wait;
use wait::{in_futex, wait_for};

#[global_allocator]
static ALLOC: alloc::CountingAllocator = alloc::CountingAllocator;

/// Runs `f` on a thread and fails the test if it does not finish within `limit` (a lost
/// wake-up shows as a hang: turn it into a failure).
fn within(limit: Duration, what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: not finished after {limit:?} (lost wake-up?)"));
}

#[test]
fn wait_event_sleeps_until_the_condition_is_woken_true() {
    static WQ: WaitQueueHead = WaitQueueHead::new();
    static FLAG: Atomic = Atomic::new(0);
    let t0 = Instant::now();
    let waker = thread::spawn(|| {
        thread::sleep(Duration::from_millis(100));
        FLAG.set(1);
        wake_up(&WQ);
    });
    wait_event(&WQ, || FLAG.read() == 1);
    assert_eq!(FLAG.read(), 1);
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "returned before the condition held"
    );
    waker.join().unwrap();
}

#[test]
fn wait_event_rechecks_after_a_wake_up_with_the_condition_still_false() {
    static WQ: WaitQueueHead = WaitQueueHead::new();
    static STEP: Atomic = Atomic::new(0);
    let waker = thread::spawn(|| {
        for step in 1..=3 {
            thread::sleep(Duration::from_millis(30));
            STEP.set(step);
            wake_up_interruptible(&WQ);
        }
    });
    wait_event(&WQ, || STEP.read() == 3);
    assert_eq!(
        STEP.read(),
        3,
        "woke on an intermediate wake-up with the condition false"
    );
    waker.join().unwrap();
}

#[test]
fn no_lost_wake_up_in_a_10k_ping_pong() {
    within(Duration::from_secs(120), "ping-pong", || {
        static PING: WaitQueueHead = WaitQueueHead::new();
        static PONG: WaitQueueHead = WaitQueueHead::new();
        static A: AtomicU64 = AtomicU64::new(0);
        static B: AtomicU64 = AtomicU64::new(0);
        const N: u64 = 10_000;
        let peer = thread::spawn(|| {
            for i in 1..=N {
                wait_event(&PING, || A.load(SeqCst) == i);
                B.store(i, SeqCst);
                wake_up(&PONG);
            }
        });
        for i in 1..=N {
            A.store(i, SeqCst);
            wake_up(&PING);
            wait_event(&PONG, || B.load(SeqCst) == i);
        }
        peer.join().unwrap();
        assert_eq!(B.load(SeqCst), N);
    });
}

#[test]
fn wake_up_all_wakes_every_sleeper() {
    within(Duration::from_secs(30), "wake_up_all", || {
        static WQ: WaitQueueHead = WaitQueueHead::new();
        static GO: AtomicBool = AtomicBool::new(false);
        static AWAKE: Atomic = Atomic::new(0);
        let (tx, rx) = mpsc::channel();
        let sleepers: Vec<_> = (0..4)
            .map(|_| {
                let tx = tx.clone();
                thread::spawn(move || {
                    tx.send(sched::gettid()).unwrap();
                    wait_event(&WQ, || GO.load(SeqCst));
                    AWAKE.inc();
                })
            })
            .collect();
        let tids: Vec<i32> = rx.iter().take(4).collect();
        // Every sleeper asleep: blocked in futex(2) (what wait_event sleeps in).
        assert!(
            wait_for(Duration::from_secs(5), || WQ.active()
                && tids.iter().all(|&t| in_futex(t))),
            "not every sleeper asleep"
        );
        GO.store(true, SeqCst);
        wake_up_all(&WQ);
        for s in sleepers {
            s.join().unwrap();
        }
        assert_eq!(AWAKE.read(), 4);
    });
}

#[test]
fn wait_event_timeout_times_out_with_0_after_the_timeout() {
    static WQ: WaitQueueHead = WaitQueueHead::new();
    let t0 = Instant::now();
    let left = wait_event_timeout(&WQ, || false, msecs_to_jiffies(200));
    assert_eq!(left, 0, "timed out: 0");
    // 200 ms is 50 jiffies; a jiffy is 4 ms, so allow one jiffy of rounding at the start.
    assert!(
        t0.elapsed() >= Duration::from_millis(196),
        "returned early: {:?}",
        t0.elapsed()
    );
}

#[test]
fn wait_event_timeout_returns_the_remaining_jiffies_when_the_condition_holds() {
    static WQ: WaitQueueHead = WaitQueueHead::new();
    static FLAG: Atomic = Atomic::new(0);
    let waker = thread::spawn(|| {
        thread::sleep(Duration::from_millis(50));
        FLAG.set(1);
        wake_up(&WQ);
    });
    let timeout = 30 * HZ;
    let left = wait_event_timeout(&WQ, || FLAG.read() == 1, timeout);
    assert!(left >= 1 && left < timeout, "remaining {left} of {timeout}");
    assert!(
        left > timeout - 10 * HZ,
        "woke long after the wake-up: {left}"
    );
    waker.join().unwrap();
    // A condition already true: at least 1, even with a zero timeout.
    assert!(wait_event_timeout(&WQ, || true, 0) >= 1);
}

#[test]
fn wait_event_interruptible_is_not_interrupted_in_a_plain_thread() {
    static WQ: WaitQueueHead = WaitQueueHead::new();
    static FLAG: Atomic = Atomic::new(0);
    let waker = thread::spawn(|| {
        thread::sleep(Duration::from_millis(30));
        FLAG.set(1);
        wake_up_interruptible(&WQ);
    });
    assert_eq!(wait_event_interruptible(&WQ, || FLAG.read() == 1), Ok(()));
    waker.join().unwrap();
}

#[test]
fn wake_up_from_a_signal_handler_wakes_the_sleeper_without_allocating() {
    // A signal handler is the runtime's softirq context: wake_up must be async-signal-safe.
    static WQ: WaitQueueHead = WaitQueueHead::new();
    static FLAG: Atomic = Atomic::new(0);
    extern "C" fn handler(_: libc::c_int) {
        FLAG.set(1);
        wake_up(&WQ);
    }
    // SAFETY: installing a handler that only touches atomics and a futex.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let allocs = alloc::softirq_allocations();
    let sleeper = thread::spawn(|| {
        wait_event(&WQ, || FLAG.read() == 1);
    });
    assert!(
        wait_for(Duration::from_secs(5), || WQ.active()),
        "no sleeper"
    );
    // SAFETY: signalling our own process; the handler is installed.
    unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
    within(Duration::from_secs(10), "signal wake-up", move || {
        sleeper.join().unwrap()
    });
    assert_eq!(alloc::softirq_allocations(), allocs);
}

#[test]
fn wait_event_in_atomic_context_reports_the_bug_and_does_not_sleep() {
    static WQ: WaitQueueHead = WaitQueueHead::new();
    let cap = printk::capture();
    let t0 = Instant::now();
    local_bh_disable();
    wait_event(&WQ, || false); // would sleep for ever
    let left = wait_event_timeout(&WQ, || false, 10 * HZ);
    local_bh_enable();
    assert_eq!(left, 0);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "slept in atomic context"
    );
    assert!(cap.contains("BUG: sleeping function called from invalid context"));
    assert!(cap.contains("BUG: scheduling while atomic"));
}

#[test]
fn atomic_t_operations() {
    static V: Atomic = deferred::kernel::atomic::ATOMIC_INIT;
    let threads: Vec<_> = (0..4)
        .map(|_| thread::spawn(|| (0..10_000).for_each(|_| V.inc())))
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(V.read(), 40_000, "increments are indivisible");
    assert_eq!(V.sub_return(39_999), 1);
    assert!(V.dec_and_test());
}
