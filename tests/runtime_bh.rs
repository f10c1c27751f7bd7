//! Bottom halves and atomic context: local_bh_disable nesting as the lab text shows it, a timer
//! expiring inside a bh-disabled section, the might_sleep BUG report from a timer handler,
//! the lockdep report for spin_lock without _bh on a lock a timer takes.

mod runtime_common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};
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
    pid: AtomicI32,
    during_section: AtomicBool,
}

/// A bottom-half-disabled section is open on some thread (set by the test around it).
static SECTION_OPEN: AtomicBool = AtomicBool::new(false);

fn expiry_handler(t: &Timer<Expiry>) {
    if SECTION_OPEN.load(SeqCst) {
        t.data().during_section.store(true, SeqCst);
    }
    t.data().tid.store(sched::gettid(), SeqCst);
    t.data().pid.store(sched::current().pid(), SeqCst);
    t.data().runs.fetch_add(1, SeqCst);
}

fn expiry() -> TimerList<Expiry> {
    TimerList::new(
        expiry_handler,
        Expiry {
            runs: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            pid: AtomicI32::new(-1),
            during_section: AtomicBool::new(false),
        },
    )
}

#[test]
fn a_timer_expiring_in_a_bh_disabled_section_runs_at_its_last_enable_on_that_thread() {
    let _g = setup();
    let me = sched::gettid();
    let t = expiry();
    let irqs = softirq::timer_interrupts();
    local_bh_disable();
    SECTION_OPEN.store(true, SeqCst);
    t.mod_timer(jiffies() + 2);
    // Busy (sleeping is not allowed here) until the interrupt has come and gone.
    assert!(wait_for(Duration::from_secs(3), || {
        sched::mdelay(1);
        softirq::timer_interrupts() > irqs
    }));
    sched::mdelay(20);
    assert_eq!(
        t.data().runs.load(SeqCst),
        0,
        "the timer ran while a thread had bottom halves disabled"
    );
    SECTION_OPEN.store(false, SeqCst);
    local_bh_enable();
    // The interrupt left TIMER_SOFTIRQ pending; the last enable ran it, here.
    assert_eq!(t.data().runs.load(SeqCst), 1);
    assert!(!t.data().during_section.load(SeqCst));
    assert_eq!(
        t.data().tid.load(SeqCst),
        me,
        "run by the last local_bh_enable"
    );
    assert_eq!(t.data().pid.load(SeqCst), sched::current().pid());
    assert_no_softirq_allocations();
}

#[test]
fn a_spin_lock_bh_holder_excludes_the_timer_on_every_thread() {
    let _g = setup();
    static SHARED: SpinLock<u64> = SpinLock::new("bh_shared", 0);
    fn handler(t: &Timer<AtomicU64>) {
        // Softirq context: plain spin_lock. Never contended: the holder excludes us.
        let g = SHARED.try_lock();
        if g.is_none() {
            t.data().fetch_add(1_000_000, SeqCst);
        }
        drop(g);
        t.data().fetch_add(1, SeqCst);
        t.mod_timer(jiffies() + 1);
    }
    let t = TimerList::new(handler, AtomicU64::new(0));
    t.mod_timer(jiffies() + 1);
    // Two process-context threads take the lock with bottom halves off, over and over, while
    // the timer fires every jiffy on swapper/0.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(SeqCst) {
                    let mut g = SHARED.lock_bh();
                    *g += 1;
                    sched::udelay(200);
                    drop(g);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let runs0 = t.data().load(SeqCst);
    assert!(wait_for(Duration::from_secs(5), || t.data().load(SeqCst)
        >= runs0 + 50));
    stop.store(true, SeqCst);
    let held: u64 = holders.into_iter().map(|h| h.join().unwrap()).sum();
    t.del_timer_sync();
    let v = t.data().load(SeqCst);
    assert!(held > 0);
    assert!(
        v < 1_000_000,
        "a timer handler found the lock held by a bh-disabled thread ({} times)",
        v / 1_000_000
    );
    assert_eq!(softirq::bh_disabled_threads(), 0);
    assert_no_softirq_allocations();
}

struct Busy {
    started: AtomicBool,
    done: AtomicBool,
}

fn busy_handler(t: &Timer<Busy>) {
    t.data().started.store(true, SeqCst);
    sched::mdelay(100);
    t.data().done.store(true, SeqCst);
}

#[test]
fn local_bh_disable_waits_for_a_softirq_running_on_another_thread() {
    let _g = setup();
    let t = TimerList::new(
        busy_handler,
        Busy {
            started: AtomicBool::new(false),
            done: AtomicBool::new(false),
        },
    );
    t.mod_timer(jiffies() + 1);
    assert!(wait_for(Duration::from_secs(3), || t
        .data()
        .started
        .load(SeqCst)));
    local_bh_disable();
    let done = t.data().done.load(SeqCst);
    local_bh_enable();
    assert!(
        done,
        "local_bh_disable returned while a timer handler was still running"
    );
}

#[test]
fn the_timer_interrupt_lands_on_the_idle_task_swapper_0() {
    let _g = setup();
    let t = expiry();
    t.mod_timer(jiffies() + 1);
    assert!(wait_for(Duration::from_secs(3), || t
        .data()
        .runs
        .load(SeqCst)
        == 1));
    let cpu = softirq::cpu_thread().expect("started");
    assert_eq!(
        t.data().tid.load(SeqCst),
        cpu,
        "run on the interrupt thread"
    );
    assert_eq!(t.data().pid.load(SeqCst), 0, "current is the idle task");
    let comm = std::fs::read_to_string(format!("/proc/self/task/{cpu}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "swapper/0");
    // Every other thread is itself.
    assert_eq!(sched::current().pid(), sched::gettid());
    assert_ne!(sched::current().comm().as_str(), "swapper/0");
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
    // The interrupt came to the idle CPU, as in the lab's transcript.
    assert_eq!(pid, 0);
    assert_eq!(
        texts[i + 1],
        "in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 0, name: swapper/0"
    );
    let sched_bug = texts
        .iter()
        .find(|l| l.starts_with("BUG: scheduling while atomic: "))
        .expect("scheduling while atomic");
    assert!(sched_bug.ends_with("swapper/0/0/0x00000100"), "{sched_bug}");
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
    let sig = softirq::timer_signal().expect("runtime started");
    // SAFETY: a zeroed sigset_t is a valid out-parameter; a null new set only queries.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        libc::sigismember(&cur, sig) == 1
    }
}

#[test]
fn local_bh_enable_inside_local_irq_save_keeps_interrupts_off_and_warns_once() {
    use softirq::{irqs_disabled, local_irq_restore, local_irq_save};
    let _g = setup();
    let cap = printk::capture();
    assert!(!timer_signal_blocked() && !irqs_disabled());
    const WARN: &str = "WARN_ON_ONCE(in_hardirq() || irqs_disabled())";

    // Bottom halves disabled and enabled inside an interrupts-off section. The interrupt never
    // comes to this thread (it is not swapper/0): interrupts off is its state alone, and the
    // signal mask is left as it was (no system call).
    let flags = local_irq_save();
    assert!(irqs_disabled() && !timer_signal_blocked());
    local_bh_disable();
    local_bh_enable();
    assert!(
        irqs_disabled(),
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
    assert!(irqs_disabled());
    local_irq_restore(flags);
    assert!(!timer_signal_blocked() && preempt_count() == 0);

    // Two interrupts-off levels around the early local_bh_enable: only the outer restore
    // turns interrupts back on.
    local_bh_disable();
    let outer = local_irq_save();
    let inner = local_irq_save();
    local_bh_enable();
    local_irq_restore(inner);
    assert!(irqs_disabled());
    local_irq_restore(outer);
    assert!(!timer_signal_blocked() && !irqs_disabled());

    // Interleaved the other way: irqs off, bh off, irqs on (bh still off), bh on.
    let bh_off = || in_softirq() && softirq::bh_disabled_threads() >= 1;
    let flags = local_irq_save();
    local_bh_disable();
    local_irq_restore(flags);
    assert!(!timer_signal_blocked() && !irqs_disabled());
    assert!(bh_off(), "bottom halves are still disabled");
    local_bh_enable();
    assert!(!timer_signal_blocked() && !bh_off() && preempt_count() == 0);

    // Properly nested: irqs off and on inside a bh-off section leave bottom halves off until
    // the last local_bh_enable.
    local_bh_disable();
    let flags = local_irq_save();
    local_irq_restore(flags);
    assert!(
        !irqs_disabled() && bh_off(),
        "bottom halves are still disabled"
    );
    local_bh_enable();
    assert!(!timer_signal_blocked() && !bh_off());
    assert_eq!(cap.texts().iter().filter(|l| l.contains(WARN)).count(), 1);
}

/// What a timer handler saw of `local_irq_save` on swapper/0, as bits (set in the handler,
/// checked by the test: nothing is asserted in signal context).
mod seen {
    pub const ON_SWAPPER: u32 = 1;
    pub const BLOCKED_ON_ENTRY: u32 = 2;
    pub const OFF_AND_BLOCKED_INSIDE: u32 = 4;
    pub const STILL_OFF_AFTER_INNER: u32 = 8;
    pub const BLOCKED_AFTER: u32 = 16;
    pub const ON_AFTER: u32 = 32;
    pub const DONE: u32 = 64;
}

fn irq_save_in_handler(t: &Timer<AtomicU32>) {
    use softirq::{irqs_disabled, local_irq_restore, local_irq_save};
    let mark = |bit: u32, yes: bool| {
        if yes {
            t.data().fetch_or(bit, SeqCst);
        }
    };
    mark(seen::ON_SWAPPER, sched::is_idle_task());
    mark(seen::BLOCKED_ON_ENTRY, timer_signal_blocked());
    let outer = local_irq_save();
    let inner = local_irq_save();
    mark(
        seen::OFF_AND_BLOCKED_INSIDE,
        irqs_disabled() && timer_signal_blocked(),
    );
    local_irq_restore(inner);
    mark(seen::STILL_OFF_AFTER_INNER, irqs_disabled());
    local_irq_restore(outer);
    // The signal's delivery blocked it for the handler: a restore must not unblock it (another
    // interrupt would then nest in this one).
    mark(seen::BLOCKED_AFTER, timer_signal_blocked());
    mark(seen::ON_AFTER, !irqs_disabled());
    mark(seen::DONE, true);
}

#[test]
fn on_swapper_local_irq_save_nests_and_its_restore_keeps_the_interrupt_blocked() {
    let _g = setup();
    let t = TimerList::new(irq_save_in_handler, AtomicU32::new(0));
    t.mod_timer(jiffies() + 1);
    assert!(wait_for(Duration::from_secs(3), || t.data().load(SeqCst)
        & seen::DONE
        != 0));
    let all = seen::ON_SWAPPER
        | seen::BLOCKED_ON_ENTRY
        | seen::OFF_AND_BLOCKED_INSIDE
        | seen::STILL_OFF_AFTER_INNER
        | seen::BLOCKED_AFTER
        | seen::ON_AFTER
        | seen::DONE;
    let got = t.data().load(SeqCst);
    assert_eq!(
        got,
        all,
        "missing (see mod seen): {:#b}; BLOCKED_AFTER missing: the restore unblocked the \
         signal inside its handler",
        all & !got
    );
    assert!(
        !timer_signal_blocked(),
        "the test thread's mask is untouched"
    );
    assert_no_softirq_allocations();
}

static IRQ_OFF_LOCK: SpinLock<u64> = SpinLock::new("irq_off_lock", 0);

fn irq_off_lock_handler(t: &Timer<AtomicU64>) {
    *IRQ_OFF_LOCK.lock() += 1;
    t.data().fetch_add(1, SeqCst);
}

#[test]
fn a_lock_taken_with_interrupts_disabled_is_not_softirq_on_for_lockdep() {
    use softirq::{local_irq_restore, local_irq_save};
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
