//! Bottom halves and atomic context: local_bh_disable nesting as the lab text shows it, a timer
//! expiring inside a bh-disabled section, the might_sleep BUG report from a timer handler,
//! the lockdep report for spin_lock without _bh on a lock a timer takes.

mod runtime_common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use deferred::kernel::jiffies::jiffies;
use deferred::kernel::printk;
use deferred::kernel::sched::{self, in_atomic, preempt_count};
use deferred::kernel::softirq::{
    self, in_interrupt, in_softirq, local_bh_disable, local_bh_enable,
};
use deferred::kernel::spinlock::SpinLock;
use deferred::kernel::tasklet::{Tasklet, tasklet_schedule};
use deferred::kernel::timer::{Timer, TimerList};
use runtime_common::{assert_no_softirq_allocations, setup, wait_for};

struct Where {
    runs: AtomicU64,
    tid: AtomicI32,
}

fn where_tasklet(t: Pin<&Tasklet<Where>>) {
    t.data().tid.store(sched::current().pid(), SeqCst);
    t.data().runs.fetch_add(1, SeqCst);
}

#[test]
fn bh_disable_nests_and_the_last_enable_runs_pending_softirqs() {
    let _g = setup();
    let me = sched::gettid();
    let t = Box::pin(Tasklet::new(
        where_tasklet,
        Where {
            runs: AtomicU64::new(0),
            tid: AtomicI32::new(0),
        },
    ));
    assert!(!in_softirq() && !in_atomic());
    local_bh_disable(); // Softirqs are now disabled
    local_bh_disable(); // Softirqs remain disabled
    assert!(in_softirq() && in_interrupt() && in_atomic());
    let wakeups = softirq::ksoftirqd_wakeups();
    tasklet_schedule(t.as_ref());
    // Nothing may run it now: raised with bottom halves off (in_interrupt), it wakes no
    // ksoftirqd (the kernel's raise_softirq), and this thread does not take the timer signal.
    assert_eq!(
        softirq::ksoftirqd_wakeups(),
        wakeups,
        "raising with bottom halves off woke ksoftirqd"
    );
    assert_eq!(t.data().runs.load(SeqCst), 0);
    local_bh_enable(); // Softirqs remain disabled
    assert!(in_softirq());
    assert_eq!(
        t.data().runs.load(SeqCst),
        0,
        "ran before every disable was matched"
    );
    local_bh_enable(); // Softirqs are now enabled
    assert!(!in_softirq() && preempt_count() == 0);
    assert_eq!(
        t.data().runs.load(SeqCst),
        1,
        "the last enable runs pending softirqs"
    );
    assert_eq!(t.data().tid.load(SeqCst), me, "on this thread");
    assert_no_softirq_allocations();
}

struct Expiry {
    runs: AtomicU64,
    tid: AtomicI32,
    during_section_on_owner: AtomicBool,
}

static SECTION_OWNER: AtomicI32 = AtomicI32::new(0);

fn expiry_handler(t: &Timer<Expiry>) {
    let me = sched::current().pid();
    if SECTION_OWNER.load(SeqCst) == me {
        t.data().during_section_on_owner.store(true, SeqCst);
    }
    t.data().tid.store(me, SeqCst);
    t.data().runs.fetch_add(1, SeqCst);
}

#[test]
fn a_timer_expiring_in_a_bh_disabled_section_never_runs_inside_it() {
    let _g = setup();
    let me = sched::gettid();
    let t = TimerList::new(
        expiry_handler,
        Expiry {
            runs: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            during_section_on_owner: AtomicBool::new(false),
        },
    );
    local_bh_disable();
    SECTION_OWNER.store(me, SeqCst);
    t.mod_timer(jiffies() + 2);
    sched::mdelay(60); // busy: sleeping is not allowed here
    SECTION_OWNER.store(0, SeqCst);
    local_bh_enable();
    assert!(wait_for(Duration::from_secs(3), || t
        .data()
        .runs
        .load(SeqCst)
        == 1));
    assert!(
        !t.data().during_section_on_owner.load(SeqCst),
        "the timer ran on the thread whose bottom halves were disabled"
    );
    // It ran either at our final enable (on this thread) or on another thread meanwhile.
    assert_ne!(t.data().tid.load(SeqCst), 0);
}

struct Sleeper {
    slept_ms: AtomicU64,
    pid: AtomicI32,
    done: AtomicBool,
}

fn alloc_io_handler(t: &Timer<Sleeper>) {
    let s = t.data();
    let c = sched::current();
    s.pid.store(c.pid(), SeqCst);
    let start = Instant::now();
    sched::msleep(5000); // the lab's alloc_io(): a blocking call in a timer
    s.slept_ms.store(start.elapsed().as_millis() as u64, SeqCst);
    s.done.store(true, SeqCst);
}

#[test]
fn might_sleep_in_a_timer_prints_both_bug_reports_and_does_not_sleep() {
    let _g = setup();
    let cap = printk::capture();
    let t = TimerList::new(
        alloc_io_handler,
        Sleeper {
            slept_ms: AtomicU64::new(u64::MAX),
            pid: AtomicI32::new(0),
            done: AtomicBool::new(false),
        },
    );
    t.mod_timer(jiffies() + 1);
    assert!(wait_for(Duration::from_secs(3), || t
        .data()
        .done
        .load(SeqCst)));
    assert!(
        t.data().slept_ms.load(SeqCst) < 1000,
        "slept in atomic context"
    );
    let pid = t.data().pid.load(SeqCst);
    let texts = cap.texts();
    let i = texts
        .iter()
        .position(|l| l.starts_with("BUG: sleeping function called from invalid context at "))
        .unwrap_or_else(|| panic!("no BUG line in {texts:?}"));
    assert!(texts[i].contains("tests/runtime_bh.rs:"), "{}", texts[i]);
    assert!(
        texts[i + 1].starts_with("in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: ")
            && texts[i + 1].contains(&format!("pid: {pid}, name: ")),
        "{}",
        texts[i + 1]
    );
    let sched_bug = texts
        .iter()
        .find(|l| l.starts_with("BUG: scheduling while atomic: "))
        .expect("scheduling while atomic");
    assert!(
        sched_bug.ends_with(&format!("/{pid}/0x00000100")),
        "{sched_bug}"
    );
    // The program goes on: timers still work.
    let again = TimerList::new(
        alloc_io_handler,
        Sleeper {
            slept_ms: AtomicU64::new(u64::MAX),
            pid: AtomicI32::new(0),
            done: AtomicBool::new(false),
        },
    );
    again.mod_timer(jiffies() + 1);
    assert!(wait_for(Duration::from_secs(3), || again
        .data()
        .done
        .load(SeqCst)));
}

#[test]
fn might_sleep_under_a_spin_lock_reports_the_preempt_count() {
    let _g = setup();
    let cap = printk::capture();
    static L: SpinLock<u32> = SpinLock::new("sleepy_lock", 0);
    let start = Instant::now();
    {
        let _held = L.lock_bh();
        sched::msleep(2000);
    }
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "slept under a spin lock"
    );
    let me = sched::current();
    let want = format!(
        "BUG: scheduling while atomic: {}/{}/0x00000201",
        me.comm(),
        me.pid()
    );
    assert!(
        cap.texts().contains(&want),
        "{want} not in {:?}",
        cap.texts()
    );
    // Outside atomic context it sleeps.
    let start = Instant::now();
    sched::msleep(30);
    assert!(start.elapsed() >= Duration::from_millis(30));
}

static MON_LOCK: SpinLock<u64> = SpinLock::new("mon_lock", 0);
static GOOD_LOCK: SpinLock<u64> = SpinLock::new("good_lock", 0);

fn locking_handler(t: &Timer<AtomicU64>) {
    *MON_LOCK.lock() += 1;
    *GOOD_LOCK.lock() += 1;
    t.data().fetch_add(1, SeqCst);
}

#[test]
fn lockdep_reports_spin_lock_without_bh_on_a_lock_a_timer_takes_once() {
    let _g = setup();
    let cap = printk::capture();
    let t = TimerList::new(locking_handler, AtomicU64::new(0));
    t.mod_timer(jiffies() + 1);
    assert!(wait_for(Duration::from_secs(3), || t.data().load(SeqCst) == 1));
    assert!(MON_LOCK.class().used_in_softirq());
    // Right: process context with bottom halves off.
    *GOOD_LOCK.lock_bh() += 1;
    // Wrong: bottom halves on. Nothing is pending, so it cannot actually deadlock here.
    *MON_LOCK.lock() += 1;
    *MON_LOCK.lock() += 1;
    let texts = cap.texts();
    let n = texts
        .iter()
        .filter(|l| *l == "WARNING: inconsistent lock state")
        .count();
    assert_eq!(n, 1, "reported once: {texts:?}");
    let i = texts
        .iter()
        .position(|l| l == "WARNING: inconsistent lock state")
        .unwrap();
    assert_eq!(texts[i - 1], "================================");
    assert_eq!(texts[i + 2], "--------------------------------");
    assert_eq!(
        texts[i + 3],
        "inconsistent {IN-SOFTIRQ-W} -> {SOFTIRQ-ON-W} usage."
    );
    let me = sched::current();
    assert_eq!(
        texts[i + 4],
        format!("{}/{} [HC0[0]:SC0[0]:HE1:SE1] takes:", me.comm(), me.pid())
    );
    assert!(texts[i + 5].contains("(mon_lock){+.?.}-{2:2}, at: tests/runtime_bh.rs:"));
    assert_eq!(texts[i + 6], "{IN-SOFTIRQ-W} state was registered at:");
    assert!(texts[i + 7].starts_with("  tests/runtime_bh.rs:"));
    let rest = &texts[i..];
    for want in [
        " Possible unsafe locking scenario:",
        "  lock(mon_lock);",
        "  <Interrupt>",
        "    lock(mon_lock);",
        " *** DEADLOCK ***",
    ] {
        assert!(rest.iter().any(|l| l == want), "missing {want:?}");
    }
    assert!(MON_LOCK.class().reported());
    assert!(
        !GOOD_LOCK.class().reported(),
        "lock_bh in process context is right"
    );
    assert!(!texts.iter().any(|l| l.contains("(good_lock)")));
    assert_no_softirq_allocations();
}

/// Is the timer signal blocked on this thread right now (the raw signal mask)?
fn timer_signal_blocked() -> bool {
    let sig = deferred::kernel::softirq::timer_signal().expect("runtime started");
    // SAFETY: a zeroed sigset_t is a valid out-parameter; a null new set only queries.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        libc::sigismember(&cur, sig) == 1
    }
}

#[test]
fn local_bh_enable_inside_local_irq_save_keeps_interrupts_off_and_warns_once() {
    use deferred::kernel::softirq::{irqs_disabled, local_irq_restore, local_irq_save};
    let _g = setup();
    let cap = printk::capture();
    assert!(!timer_signal_blocked() && !irqs_disabled());
    const WARN: &str = "WARN_ON_ONCE(in_hardirq() || irqs_disabled())";

    // Bottom halves disabled and enabled inside an interrupts-off section.
    let flags = local_irq_save();
    local_bh_disable();
    local_bh_enable();
    assert!(
        timer_signal_blocked() && irqs_disabled(),
        "local_bh_enable turned interrupts back on inside local_irq_save"
    );
    local_irq_restore(flags);
    assert!(!timer_signal_blocked() && !irqs_disabled());
    let warnings = cap.texts();
    let at = warnings
        .iter()
        .position(|l| l.contains(WARN))
        .unwrap_or_else(|| panic!("no WARNING: {warnings:#?}"));
    assert!(warnings[at].starts_with("WARNING: CPU: 0 PID: "));
    assert!(warnings[at].contains(" at tests/runtime_bh.rs:"));
    assert_eq!(warnings[at - 1], "------------[ cut here ]------------");

    // Interleaved: bh off, irqs off, bh on (the WARN, once only), irqs on.
    local_bh_disable();
    let flags = local_irq_save();
    local_bh_enable();
    assert!(timer_signal_blocked());
    local_irq_restore(flags);
    assert!(!timer_signal_blocked() && preempt_count() == 0);

    // Two interrupts-off levels around the early local_bh_enable: only the outer restore
    // turns interrupts back on.
    local_bh_disable();
    let outer = local_irq_save();
    let inner = local_irq_save();
    local_bh_enable();
    local_irq_restore(inner);
    assert!(timer_signal_blocked() && irqs_disabled());
    local_irq_restore(outer);
    assert!(!timer_signal_blocked() && !irqs_disabled());

    // Interleaved the other way: irqs off, bh off, irqs on (bh still off), bh on.
    let flags = local_irq_save();
    local_bh_disable();
    local_irq_restore(flags);
    assert!(timer_signal_blocked(), "bottom halves are still disabled");
    local_bh_enable();
    assert!(!timer_signal_blocked() && preempt_count() == 0);

    // Properly nested: irqs off and on inside a bh-off section keep the signal off until the
    // last local_bh_enable.
    local_bh_disable();
    let flags = local_irq_save();
    local_irq_restore(flags);
    assert!(timer_signal_blocked(), "bottom halves are still disabled");
    local_bh_enable();
    assert!(!timer_signal_blocked());
    assert_eq!(cap.texts().iter().filter(|l| l.contains(WARN)).count(), 1);
}

static IRQ_OFF_LOCK: SpinLock<u64> = SpinLock::new("irq_off_lock", 0);

fn irq_off_lock_handler(t: &Timer<AtomicU64>) {
    *IRQ_OFF_LOCK.lock() += 1;
    t.data().fetch_add(1, SeqCst);
}

#[test]
fn a_lock_taken_with_interrupts_disabled_is_not_softirq_on_for_lockdep() {
    use deferred::kernel::softirq::{local_irq_restore, local_irq_save};
    let _g = setup();
    let cap = printk::capture();
    let t = TimerList::new(irq_off_lock_handler, AtomicU64::new(0));
    t.mod_timer(jiffies() + 1);
    assert!(wait_for(Duration::from_secs(3), || t.data().load(SeqCst) == 1));
    assert!(IRQ_OFF_LOCK.class().used_in_softirq());
    // Process context, interrupts off: no softirq can interrupt the holder. Safe, as
    // spin_lock_irqsave is in the kernel: no SOFTIRQ-ON usage, no report.
    let flags = local_irq_save();
    *IRQ_OFF_LOCK.lock() += 1;
    local_irq_restore(flags);
    assert!(!IRQ_OFF_LOCK.class().softirq_on());
    assert!(!IRQ_OFF_LOCK.class().reported());
    assert!(!cap.contains("(irq_off_lock)"), "{:#?}", cap.texts());
}
