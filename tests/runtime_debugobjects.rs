//! Freeing active objects (the kernel's debugobjects): a timer or work item dropped while
//! pending is reported (`ODEBUG: free active ...`) and made safe; a timer dropped in softirq
//! context, its own handler's included, is freed later in process context, never in the
//! signal handler.

mod runtime_common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use deferred::impl_has_work;
use deferred::kernel::alloc::softirq_frees;
use deferred::kernel::jiffies::{HZ, jiffies};
use deferred::kernel::printk;
use deferred::kernel::sched;
use deferred::kernel::spinlock::SpinLock;
use deferred::kernel::timer::{Timer, TimerList};
use deferred::kernel::workqueue::{
    Work, create_singlethread_workqueue, flush_workqueue, queue_work,
};
use runtime_common::{assert_no_softirq_allocations, setup, wait_for};

const ODEBUG: &str = "ODEBUG: free active (active state 0) object type: ";

/// Data that records where it is dropped.
struct Tracked {
    drops: &'static AtomicU64,
    dropped_in_interrupt: &'static AtomicBool,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !sched::in_task() {
            self.dropped_in_interrupt.store(true, SeqCst);
        }
        self.drops.fetch_add(1, SeqCst);
    }
}

static VICTIM_DROPS: AtomicU64 = AtomicU64::new(0);
static VICTIM_IN_IRQ: AtomicBool = AtomicBool::new(false);
static VICTIM_RAN: AtomicU64 = AtomicU64::new(0);
static HELD: SpinLock<Option<TimerList<Tracked>>> = SpinLock::new("held_timer", None);

fn victim_handler(_: &Timer<Tracked>) {
    VICTIM_RAN.fetch_add(1, SeqCst);
}

fn dropping_handler(t: &Timer<AtomicU64>) {
    let victim = HELD.lock().take();
    drop(victim); // softirq context: a pending timer_list freed
    t.data().fetch_add(1, SeqCst);
}

#[test]
fn a_pending_timer_dropped_in_a_handler_is_reported_and_freed_in_process_context() {
    let _g = setup();
    let cap = printk::capture();
    let frees = softirq_frees();
    let victim = TimerList::new(
        victim_handler,
        Tracked {
            drops: &VICTIM_DROPS,
            dropped_in_interrupt: &VICTIM_IN_IRQ,
        },
    );
    victim.mod_timer(jiffies().wrapping_add(100 * HZ));
    *HELD.lock_bh() = Some(victim);
    let dropper = TimerList::new(dropping_handler, AtomicU64::new(0));
    dropper.mod_timer(jiffies() + 1);
    assert!(
        wait_for(Duration::from_secs(5), || {
            dropper.data().load(SeqCst) == 1
        }),
        "the dropping handler"
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            VICTIM_DROPS.load(SeqCst) == 1
        }),
        "the deferred free"
    );
    assert!(!VICTIM_IN_IRQ.load(SeqCst), "freed in softirq context");
    assert_eq!(softirq_frees(), frees, "a free in softirq context");
    assert_no_softirq_allocations();
    assert_eq!(VICTIM_RAN.load(SeqCst), 0, "a freed timer fired");
    let texts = cap.texts();
    let at = texts
        .iter()
        .position(|l| l.starts_with(ODEBUG))
        .unwrap_or_else(|| panic!("no ODEBUG report: {texts:#?}"));
    assert_eq!(
        texts[at],
        format!("{ODEBUG}timer_list hint: runtime_debugobjects::victim_handler")
    );
    assert_eq!(texts[at - 1], "------------[ cut here ]------------");
}

static SELF_DROPS: AtomicU64 = AtomicU64::new(0);
static SELF_IN_IRQ: AtomicBool = AtomicBool::new(false);
static SELF_HELD: SpinLock<Option<TimerList<Tracked>>> = SpinLock::new("self_held", None);
static SELF_AFTER: AtomicU64 = AtomicU64::new(0);

fn drops_itself(t: &Timer<Tracked>) {
    let me = SELF_HELD.lock().take();
    drop(me);
    // Still valid: the free waits for this handler to return, in process context.
    SELF_AFTER.store(t.data().drops.load(SeqCst) + 1, SeqCst);
}

#[test]
fn a_timer_handler_may_drop_its_own_timer() {
    let _g = setup();
    let cap = printk::capture();
    let frees = softirq_frees();
    let t = TimerList::new(
        drops_itself,
        Tracked {
            drops: &SELF_DROPS,
            dropped_in_interrupt: &SELF_IN_IRQ,
        },
    );
    t.mod_timer(jiffies() + 1);
    *SELF_HELD.lock_bh() = Some(t);
    assert!(
        wait_for(Duration::from_secs(5), || { SELF_DROPS.load(SeqCst) == 1 }),
        "the deferred free"
    );
    assert_eq!(
        SELF_AFTER.load(SeqCst),
        1,
        "the handler went on after the drop"
    );
    assert!(!SELF_IN_IRQ.load(SeqCst));
    assert_eq!(softirq_frees(), frees);
    // Not pending any more while its handler runs: nothing to report.
    assert!(!cap.texts().iter().any(|l| l.starts_with(ODEBUG)));
}

static PLAIN_RAN: AtomicU64 = AtomicU64::new(0);

fn plain_handler(_: &Timer<()>) {
    PLAIN_RAN.fetch_add(1, SeqCst);
}

#[test]
fn a_pending_timer_dropped_in_process_context_is_reported_and_deactivated() {
    let _g = setup();
    let cap = printk::capture();
    let idle = TimerList::new(plain_handler, ());
    drop(idle);
    assert!(!cap.texts().iter().any(|l| l.starts_with(ODEBUG)));
    let t = TimerList::new(plain_handler, ());
    t.mod_timer(jiffies() + HZ / 10);
    drop(t);
    let want = format!("{ODEBUG}timer_list hint: runtime_debugobjects::plain_handler");
    assert_eq!(
        cap.texts().iter().filter(|l| **l == want).count(),
        1,
        "{:#?}",
        cap.texts()
    );
    let t0 = jiffies();
    assert!(
        wait_for(Duration::from_secs(2), || jiffies().wrapping_sub(t0)
            > HZ / 5),
        "a few jiffies past its expiry"
    );
    assert_eq!(PLAIN_RAN.load(SeqCst), 0);
}

struct Blocker {
    work: Work<Blocker>,
    release: AtomicBool,
    started: AtomicBool,
}
impl_has_work!(Blocker, work);

fn block(b: &Blocker) {
    b.started.store(true, SeqCst);
    while !b.release.load(SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Victim {
    work: Work<Victim>,
    ran: &'static AtomicU64,
}
impl_has_work!(Victim, work);

static QUEUED_VICTIM_RAN: AtomicU64 = AtomicU64::new(0);

fn victim_work(v: &Victim) {
    v.ran.fetch_add(1, SeqCst);
}

#[test]
fn a_queued_work_dropped_in_process_context_is_reported_and_cancelled() {
    let _g = setup();
    let cap = printk::capture();
    let wq = create_singlethread_workqueue("odebug_wq").unwrap();
    let blocker: &'static Blocker = Box::leak(Box::new(Blocker {
        work: Work::new(block),
        release: AtomicBool::new(false),
        started: AtomicBool::new(false),
    }));
    assert!(queue_work(&wq, Pin::static_ref(blocker)));
    assert!(
        wait_for(Duration::from_secs(5), || { blocker.started.load(SeqCst) }),
        "the blocker"
    );
    let victim = Box::pin(Victim {
        work: Work::new(victim_work),
        ran: &QUEUED_VICTIM_RAN,
    });
    assert!(queue_work(&wq, victim.as_ref()));
    // Queued behind the blocker: pending when dropped. The drop reports, then waits for the
    // worker to pass the cancelled item: release the blocker once the report is out.
    let seen = printk::capture();
    let releaser = std::thread::spawn(move || {
        assert!(
            wait_for(Duration::from_secs(10), || {
                seen.contains("object type: work_struct")
            }),
            "the report"
        );
        blocker.release.store(true, SeqCst);
    });
    drop(victim);
    releaser.join().unwrap();
    flush_workqueue(&wq);
    assert_eq!(QUEUED_VICTIM_RAN.load(SeqCst), 0, "a dropped work ran");
    let want = format!("{ODEBUG}work_struct hint: runtime_debugobjects::victim_work");
    assert!(cap.texts().contains(&want), "{:#?}", cap.texts());
}
