//! timer_list semantics: one-shot, re-arm, del_timer, del_timer_sync, periodic, tickless.

mod runtime_common;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use deferred::kernel::jiffies::{jiffies, msecs_to_jiffies, time_after_eq, time_before};
use deferred::kernel::printk;
use deferred::kernel::sched;
use deferred::kernel::softirq;
use deferred::kernel::timer::{Timer, TimerList};
use runtime_common::{assert_no_softirq_allocations, setup, wait_until};

#[derive(Default)]
struct Rec {
    count: AtomicU64,
    at: AtomicU64,
    in_softirq: AtomicBool,
    tid: AtomicI32,
}

fn record(t: &Timer<Rec>) {
    let r = t.data();
    r.at.store(jiffies(), SeqCst);
    r.in_softirq
        .store(softirq::in_serving_softirq() && !softirq::in_irq(), SeqCst);
    r.tid.store(sched::current().pid(), SeqCst);
    r.count.fetch_add(1, SeqCst);
}

#[test]
fn one_shot_fires_once_not_before_its_jiffy() {
    let _g = setup();
    let t = TimerList::new(record, Rec::default());
    let expires = jiffies() + msecs_to_jiffies(100);
    assert!(!t.mod_timer(expires), "a new timer was not pending");
    assert!(t.timer_pending());
    assert!(wait_until(Duration::from_secs(3), || t
        .data()
        .count
        .load(SeqCst)
        == 1));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(
        t.data().count.load(SeqCst),
        1,
        "a one-shot timer fires once"
    );
    assert!(
        time_after_eq(t.data().at.load(SeqCst), expires),
        "fired before its jiffy"
    );
    assert!(
        t.data().in_softirq.load(SeqCst),
        "handler runs in softirq context"
    );
    assert!(!t.timer_pending());
    assert_no_softirq_allocations();
}

#[test]
fn mod_timer_moves_a_pending_timer_and_says_it_was_pending() {
    let _g = setup();
    let t = TimerList::new(record, Rec::default());
    let far = jiffies() + msecs_to_jiffies(5000);
    assert!(!t.mod_timer(far));
    let near = jiffies() + msecs_to_jiffies(40);
    assert!(t.mod_timer(near), "mod_timer on a pending timer returns 1");
    assert_eq!(t.expires(), near);
    assert!(wait_until(Duration::from_secs(3), || t
        .data()
        .count
        .load(SeqCst)
        == 1));
    let at = t.data().at.load(SeqCst);
    assert!(
        time_after_eq(at, near) && time_before(at, far),
        "fired at the new expiry"
    );
    assert!(!t.timer_pending(), "moved, not duplicated");
    assert!(!t.del_timer());
}

#[test]
fn del_timer_prevents_firing() {
    let _g = setup();
    let t = TimerList::new(record, Rec::default());
    t.mod_timer(jiffies() + msecs_to_jiffies(40));
    assert!(t.del_timer(), "was pending");
    assert!(!t.del_timer(), "no longer pending");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(t.data().count.load(SeqCst), 0);
}

struct Slow {
    started: AtomicBool,
    done: AtomicBool,
    tid: AtomicI32,
}

fn slow_handler(t: &Timer<Slow>) {
    let s = t.data();
    s.tid.store(sched::current().pid(), SeqCst);
    s.started.store(true, SeqCst);
    sched::mdelay(200);
    s.done.store(true, SeqCst);
}

#[test]
fn del_timer_sync_waits_for_a_handler_running_on_another_thread() {
    let _g = setup();
    // Keep the interrupt off this thread so the handler must run elsewhere.
    softirq::block_timer_signal();
    let t = TimerList::new(
        slow_handler,
        Slow {
            started: AtomicBool::new(false),
            done: AtomicBool::new(false),
            tid: AtomicI32::new(0),
        },
    );
    t.mod_timer(jiffies() + 1);
    assert!(wait_until(Duration::from_secs(3), || t
        .data()
        .started
        .load(SeqCst)));
    assert!(!t.data().done.load(SeqCst), "handler still running");
    t.del_timer_sync();
    assert!(
        t.data().done.load(SeqCst),
        "del_timer_sync returned while the handler ran"
    );
    assert_ne!(t.data().tid.load(SeqCst), sched::gettid());
    softirq::unblock_timer_signal();
}

struct SelfDel {
    ret: AtomicBool,
    ran: AtomicU64,
}

fn self_del_handler(t: &Timer<SelfDel>) {
    t.data().ran.fetch_add(1, SeqCst);
    let r = t.del_timer_sync();
    t.data().ret.store(r, SeqCst);
}

#[test]
fn del_timer_sync_from_its_own_handler_warns_instead_of_deadlocking() {
    let _g = setup();
    let cap = printk::capture();
    let t = TimerList::new(
        self_del_handler,
        SelfDel {
            ret: AtomicBool::new(true),
            ran: AtomicU64::new(0),
        },
    );
    t.mod_timer(jiffies() + 1);
    assert!(wait_until(Duration::from_secs(3), || t
        .data()
        .ran
        .load(SeqCst)
        == 1));
    assert!(wait_until(Duration::from_secs(3), || cap.contains("own handler")));
    let texts = cap.texts();
    let i = texts
        .iter()
        .position(|l| l == "------------[ cut here ]------------")
        .expect("cut here line");
    assert!(
        texts[i + 1].starts_with("WARNING: CPU: 0 PID: "),
        "{texts:?}"
    );
    assert!(
        texts[i + 1].contains("tests/runtime_timer.rs:"),
        "{texts:?}"
    );
    assert!(!t.data().ret.load(SeqCst), "it was not pending");
    assert_no_softirq_allocations();
}

struct Periodic {
    count: AtomicU64,
    n: u64,
}

fn periodic_handler(t: &Timer<Periodic>) {
    let p = t.data();
    let c = p.count.fetch_add(1, SeqCst) + 1;
    if c < p.n {
        t.mod_timer(jiffies() + 2);
    }
}

#[test]
fn periodic_timer_rearms_from_its_handler() {
    let _g = setup();
    let t = TimerList::new(
        periodic_handler,
        Periodic {
            count: AtomicU64::new(0),
            n: 8,
        },
    );
    t.mod_timer(jiffies() + 1);
    assert!(wait_until(Duration::from_secs(5), || t
        .data()
        .count
        .load(SeqCst)
        == 8));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(t.data().count.load(SeqCst), 8);
    assert!(!t.timer_pending());
    assert_no_softirq_allocations();
}

#[test]
fn tickless_no_interrupts_while_nothing_is_pending() {
    let _g = setup();
    // Let any disarm from a previous test settle.
    std::thread::sleep(Duration::from_millis(50));
    let before = softirq::timer_interrupts();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        softirq::timer_interrupts(),
        before,
        "signals with no timer pending"
    );
    // And a pending timer does interrupt.
    let t = TimerList::new(record, Rec::default());
    t.mod_timer(jiffies() + 2);
    assert!(wait_until(Duration::from_secs(3), || t
        .data()
        .count
        .load(SeqCst)
        == 1));
    assert!(softirq::timer_interrupts() > before);
}

#[test]
fn drop_stops_a_pending_timer() {
    let _g = setup();
    let fired = {
        let t = TimerList::new(record, Rec::default());
        t.mod_timer(jiffies() + msecs_to_jiffies(30));
        assert!(t.timer_pending());
        t.data().count.load(SeqCst)
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fired, 0);
}
