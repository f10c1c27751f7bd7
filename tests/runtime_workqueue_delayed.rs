//! Delayed work and work queued from timer handlers (softirq context, a real signal handler).

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use deferred::kernel::alloc;
use deferred::kernel::jiffies::{jiffies, msecs_to_jiffies};
use deferred::kernel::sched::{self, msleep};
use deferred::kernel::softirq;
use deferred::kernel::timer::{Timer, TimerList};
use deferred::kernel::workqueue::{
    DelayedWork, Work, cancel_delayed_work, cancel_delayed_work_sync, cancel_work_sync,
    create_singlethread_workqueue, destroy_workqueue, flush_scheduled_work, flush_workqueue,
    queue_delayed_work, schedule_delayed_work, schedule_delayed_work_on, schedule_work,
};
use deferred::{impl_has_delayed_work, impl_has_work, kernel};

mod runtime_common;
use runtime_common::{wait_for, watchdog};

fn start() {
    watchdog();
    kernel::start().unwrap();
    kernel::workqueue::init().unwrap();
}

struct Dev {
    dwork: DelayedWork<Dev>,
    runs: AtomicU32,
    ran_at_ns: AtomicU64,
    ran_jiffies: AtomicU64,
    comm: Mutex<String>,
}
impl_has_delayed_work!(Dev, dwork);

fn dev_handler(d: &Dev) {
    d.ran_at_ns.store(now_ns(), SeqCst);
    d.ran_jiffies.store(jiffies(), SeqCst);
    *d.comm.lock().unwrap() = sched::current().comm().to_string();
    d.runs.fetch_add(1, SeqCst);
}

fn now_ns() -> u64 {
    deferred::kernel::jiffies::monotonic_ns()
}

fn new_dev() -> Pin<Box<Dev>> {
    Box::pin(Dev {
        dwork: DelayedWork::new(dev_handler),
        runs: AtomicU32::new(0),
        ran_at_ns: AtomicU64::new(0),
        ran_jiffies: AtomicU64::new(0),
        comm: Mutex::new(String::new()),
    })
}

#[test]
fn delayed_work_runs_after_at_least_its_delay() {
    start();
    let dev = new_dev();
    let t0 = now_ns();
    let j0 = jiffies();
    let delay = msecs_to_jiffies(300);
    assert!(schedule_delayed_work(dev.as_ref(), delay));
    assert!(dev.dwork.pending());
    assert!(dev.dwork.timer_pending());
    assert!(
        !schedule_delayed_work(dev.as_ref(), delay),
        "queued while pending: false"
    );
    assert!(
        wait_for(Duration::from_secs(10), || { dev.runs.load(SeqCst) == 1 }),
        "delayed work ran"
    );
    let ran_ns = dev.ran_at_ns.load(SeqCst);
    // Jiffies are 4 ms: the expiry is at least `delay` jiffies after j0, whose start may be up
    // to one jiffy before t0.
    assert!(
        ran_ns - t0 >= 296_000_000,
        "ran after {} ms",
        (ran_ns - t0) / 1_000_000
    );
    assert!(dev.ran_jiffies.load(SeqCst).wrapping_sub(j0) >= delay);
    assert!(dev.comm.lock().unwrap().starts_with("events/"));
    msleep(50);
    assert_eq!(dev.runs.load(SeqCst), 1, "ran once");
    assert!(!dev.dwork.pending());
}

#[test]
fn cancel_delayed_work_sync_prevents_it() {
    start();
    let dev = new_dev();
    assert!(schedule_delayed_work(dev.as_ref(), msecs_to_jiffies(150)));
    assert!(cancel_delayed_work_sync(&dev.dwork), "was pending");
    assert!(!dev.dwork.timer_pending());
    msleep(400);
    assert_eq!(
        dev.runs.load(SeqCst),
        0,
        "ran after cancel_delayed_work_sync"
    );
    assert!(!cancel_delayed_work_sync(&dev.dwork));
    // And it can be scheduled again afterwards.
    assert!(schedule_delayed_work(dev.as_ref(), 1));
    assert!(
        wait_for(Duration::from_secs(10), || { dev.runs.load(SeqCst) == 1 }),
        "re-scheduled work ran"
    );
}

#[test]
fn cancel_delayed_work_async_prevents_a_pending_timer() {
    start();
    let dev = new_dev();
    assert!(schedule_delayed_work(dev.as_ref(), msecs_to_jiffies(100)));
    assert!(cancel_delayed_work(&dev.dwork));
    msleep(300);
    assert_eq!(dev.runs.load(SeqCst), 0);
}

#[test]
fn flush_does_not_wait_for_a_delayed_work_whose_timer_is_pending() {
    // The lab text: "For delayed work items, cancel_delayed_work must be called before
    // flush_scheduled_work()": flush only waits for work already queued.
    start();
    let wq = create_singlethread_workqueue("flush_delayed").unwrap();
    let dev = new_dev();
    assert!(queue_delayed_work(
        &wq,
        dev.as_ref(),
        msecs_to_jiffies(2000)
    ));
    let t0 = Instant::now();
    flush_workqueue(&wq);
    flush_scheduled_work();
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "flush waited for the timer"
    );
    assert_eq!(dev.runs.load(SeqCst), 0);
    assert!(
        dev.dwork.timer_pending(),
        "the timer is still armed after the flush"
    );
    assert!(cancel_delayed_work_sync(&dev.dwork));
    destroy_workqueue(wq);
}

#[test]
fn schedule_delayed_work_on_runs_on_that_cpus_worker() {
    start();
    let dev = new_dev();
    let cpu = deferred::kernel::workqueue::num_online_cpus() - 1;
    assert!(schedule_delayed_work_on(
        cpu,
        dev.as_ref(),
        msecs_to_jiffies(20)
    ));
    assert!(
        wait_for(Duration::from_secs(10), || { dev.runs.load(SeqCst) == 1 }),
        "ran"
    );
    assert_eq!(*dev.comm.lock().unwrap(), format!("events/{cpu}"));
}

#[test]
fn dropping_a_container_with_an_armed_delayed_work_stops_its_timer() {
    start();
    static RUNS: AtomicU32 = AtomicU32::new(0);
    struct Short {
        dwork: DelayedWork<Short>,
    }
    impl_has_delayed_work!(Short, dwork);
    let s = Box::pin(Short {
        dwork: DelayedWork::new(|_: &Short| {
            RUNS.fetch_add(1, SeqCst);
        }),
    });
    assert!(schedule_delayed_work(s.as_ref(), msecs_to_jiffies(50)));
    drop(s);
    msleep(300);
    assert_eq!(RUNS.load(SeqCst), 0);
}

/// The lab's exercise 5 shape: a timer handler (softirq context) schedules a work item that
/// sleeps in process context.
struct Lab {
    work: Work<Lab>,
    runs: AtomicU32,
    in_process_context: AtomicBool,
    queued_from_softirq: AtomicU32,
    not_in_softirq: AtomicU32,
}
impl_has_work!(Lab, work);

static LAB: Lab = Lab {
    work: Work::new(|lab: &Lab| {
        lab.in_process_context
            .store(sched::in_task() && !softirq::in_interrupt(), SeqCst);
        msleep(1); // blocking is fine here
        lab.runs.fetch_add(1, SeqCst);
    }),
    runs: AtomicU32::new(0),
    in_process_context: AtomicBool::new(false),
    queued_from_softirq: AtomicU32::new(0),
    not_in_softirq: AtomicU32::new(0),
};

fn lab_timer(t: &Timer<&'static Lab>) {
    let lab = *t.data();
    if !softirq::in_softirq() {
        lab.not_in_softirq.fetch_add(1, SeqCst);
    }
    if schedule_work(Pin::static_ref(lab)) {
        lab.queued_from_softirq.fetch_add(1, SeqCst);
    }
    if lab.queued_from_softirq.load(SeqCst) < 50 {
        t.mod_timer(jiffies() + 2);
    }
}

#[test]
fn work_queued_from_a_timer_handler_runs_and_nothing_allocates_in_softirq_context() {
    start();
    let before = alloc::softirq_allocations();
    let before_frees = alloc::softirq_frees();
    let timer = TimerList::new(lab_timer, &LAB);
    timer.mod_timer(jiffies() + 1);
    assert!(
        wait_for(Duration::from_secs(30), || LAB
            .queued_from_softirq
            .load(SeqCst)
            >= 50),
        "50 works queued from the timer"
    );
    flush_scheduled_work();
    drop(timer);
    assert_eq!(
        LAB.not_in_softirq.load(SeqCst),
        0,
        "the timer handler was not in softirq context"
    );
    assert_eq!(LAB.runs.load(SeqCst), 50, "every queued work ran once");
    assert!(LAB.in_process_context.load(SeqCst));
    assert_eq!(
        alloc::softirq_allocations() - before,
        0,
        "allocation in softirq context"
    );
    assert_eq!(
        alloc::softirq_frees() - before_frees,
        0,
        "free in softirq context"
    );
}

#[test]
fn a_delayed_work_whose_queue_was_destroyed_does_not_run_and_can_be_dropped() {
    // The kernel calls this a bug (it WARNs); here the late timer finds the queue dead, the
    // work is dropped from the queue, and nothing dangles or hangs.
    start();
    let wq = create_singlethread_workqueue("gone_wq").unwrap();
    let dev = new_dev();
    assert!(queue_delayed_work(&wq, dev.as_ref(), msecs_to_jiffies(100)));
    destroy_workqueue(wq);
    assert!(
        dev.dwork.timer_pending(),
        "destroy does not wait for a delay timer"
    );
    assert!(
        wait_for(Duration::from_secs(10), || { !dev.dwork.timer_pending() }),
        "the timer fired"
    );
    msleep(100);
    assert_eq!(dev.runs.load(SeqCst), 0);
    assert!(!dev.dwork.pending());
    drop(dev);
}

#[test]
fn blocking_workqueue_calls_in_a_timer_handler_report_the_bug_and_return() {
    start();
    static DONE: AtomicBool = AtomicBool::new(false);
    static IDLE: Lab = Lab {
        work: Work::new(|_: &Lab| {}),
        runs: AtomicU32::new(0),
        in_process_context: AtomicBool::new(false),
        queued_from_softirq: AtomicU32::new(0),
        not_in_softirq: AtomicU32::new(0),
    };
    fn blocking_timer(_: &Timer<()>) {
        flush_scheduled_work(); // would sleep
        cancel_work_sync(&IDLE.work); // would sleep
        DONE.store(true, SeqCst);
    }
    let cap = deferred::kernel::printk::capture();
    let allocs = alloc::softirq_allocations();
    let timer = TimerList::new(blocking_timer, ());
    timer.mod_timer(jiffies() + 1);
    assert!(
        wait_for(Duration::from_secs(10), || { DONE.load(SeqCst) }),
        "the handler returned"
    );
    drop(timer);
    assert!(cap.contains("BUG: sleeping function called from invalid context"));
    assert!(cap.contains("BUG: scheduling while atomic"));
    assert_eq!(alloc::softirq_allocations() - allocs, 0);
}
