//! The runtime's debug checks, each triggered by a deliberately broken piece of module code:
//! the report in the kernel's words (when it happens, naming the handler or the caller) and the
//! taint that makes the daemon exit 1. One test binary: the taint is process-wide.

use std::pin::Pin;
use std::sync::MutexGuard;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deferred::impl_has_work;
use deferred::kernel::alloc::softirq_allocations;
use deferred::kernel::bug;
use deferred::kernel::jiffies::jiffies;
use deferred::kernel::printk::{self, Capture};
use deferred::kernel::task::{self, TaskRef};
use deferred::kernel::timer::{Timer, TimerList};
use deferred::kernel::workqueue::{Work, flush_scheduled_work, schedule_work};

mod runtime_common;

/// The runtime started, the tests one at a time (the taint and the timer signal are shared).
fn serial() -> MutexGuard<'static, ()> {
    let g = runtime_common::setup();
    printk::flush();
    g
}

/// Waits (bounded) until a captured line contains `needle`; returns every line captured.
fn wait_line(cap: &Capture, needle: &str) -> Vec<String> {
    assert!(
        runtime_common::wait_for(Duration::from_secs(10), || cap.contains(needle)),
        "no {needle:?} in {:#?}",
        cap.texts()
    );
    cap.texts()
}

struct Fired(AtomicBool);

fn allocating_handler(t: &Timer<Fired>) {
    // The broken part: a String in softirq context.
    let s = format!("{}", jiffies());
    std::hint::black_box(s);
    t.data().0.store(true, Ordering::SeqCst);
}

#[test]
fn an_allocation_in_a_timer_handler_is_reported_when_it_happens_naming_the_handler() {
    let _g = serial();
    let cap = printk::capture();
    let before = softirq_allocations();
    let timer = TimerList::new(allocating_handler, Fired(AtomicBool::new(false)));
    timer.mod_timer(jiffies());
    // Reported while the timer is still alive (not at unload), naming the handler.
    let texts = wait_line(&cap, "in timer handler debug_checks::allocating_handler");
    let bug = texts
        .iter()
        .position(|t| t == "BUG: sleeping function called from invalid context at mm/slab.h:742")
        .unwrap_or_else(|| panic!("{texts:#?}"));
    assert!(texts[bug + 1].starts_with("in_atomic(): 1"), "{texts:#?}");
    assert!(
        texts.iter().any(|t| t.starts_with("kmalloc(")),
        "{texts:#?}"
    );
    assert!(softirq_allocations() > before);
    assert_ne!(bug::tainted(), 0);
    assert_eq!(bug::taint_string(), "W");
}

fn nothing(_: &Timer<()>) {}

#[test]
fn mod_timer_on_a_timer_never_set_up_warns_and_does_not_arm() {
    let _g = serial();
    let cap = printk::capture();
    let timer: TimerList<()> = TimerList::declare(());
    let reports = bug::reports();
    assert!(!timer.mod_timer(jiffies() + 1));
    let line = line!() - 1;
    let texts = wait_line(&cap, "ODEBUG: assert_init not available");
    assert!(
        texts
            .iter()
            .any(|t| t == "------------[ cut here ]------------")
    );
    let warning = format!("at tests/debug_checks.rs:{line} mod_timer() on a timer never set up");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("WARNING: CPU: 0 PID: ") && t.contains(&warning)),
        "{warning}: {texts:#?}"
    );
    assert!(!timer.timer_pending());
    assert!(bug::reports() > reports);
    // Set up, it arms.
    timer.timer_setup(nothing);
    timer.mod_timer(jiffies() + 1000);
    assert!(timer.timer_pending());
}

/// The line of the `del_timer_sync` call below.
const SELF_DELETE_LINE: u32 = line!() + 3;

fn self_deleting(t: &Timer<Fired>) {
    t.del_timer_sync();
    t.data().0.store(true, Ordering::SeqCst);
}

#[test]
fn del_timer_sync_from_the_timers_own_handler_warns_and_returns() {
    let _g = serial();
    let cap = printk::capture();
    let timer = TimerList::new(self_deleting, Fired(AtomicBool::new(false)));
    timer.mod_timer(jiffies());
    let texts = wait_line(&cap, "del_timer_sync() called from the timer's own handler");
    let at = format!("at tests/debug_checks.rs:{SELF_DELETE_LINE} del_timer_sync()");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("WARNING: CPU: 0 PID: ") && t.contains(&at)),
        "{at}: {texts:#?}"
    );
    assert!(
        runtime_common::wait_for(Duration::from_secs(5), || timer
            .data()
            .0
            .load(Ordering::SeqCst)),
        "the handler did not return"
    );
}

struct SelfFlush {
    work: Work<SelfFlush>,
    done: AtomicBool,
}
impl_has_work!(SelfFlush, work);

fn flushing_work(w: &SelfFlush) {
    flush_scheduled_work();
    w.done.store(true, Ordering::SeqCst);
}

#[test]
fn flushing_the_workqueue_from_its_own_work_is_lockdeps_recursive_locking() {
    let _g = serial();
    let cap = printk::capture();
    let w = Box::pin(SelfFlush {
        work: Work::new(flushing_work),
        done: AtomicBool::new(false),
    });
    schedule_work(w.as_ref());
    let texts = wait_line(&cap, "WARNING: possible recursive locking detected");
    assert!(
        texts
            .iter()
            .any(|t| t == " ((wq_completion)events), at: __flush_workqueue")
    );
    assert!(texts.iter().any(|t| t.contains(" *** DEADLOCK ***")));
    assert!(
        texts.iter().any(|t| t.contains("tests/debug_checks.rs")),
        "{texts:#?}"
    );
    // It returned instead of waiting for itself; an outside flush waits for it.
    flush_scheduled_work();
    assert!(w.done.load(Ordering::SeqCst));
    let _: Pin<&SelfFlush> = w.as_ref();
}

#[test]
fn task_references_still_held_at_unload_are_reported_by_name() {
    let _g = serial();
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let kept = TaskRef::get(pid).unwrap();
    let put = TaskRef::get(pid).unwrap();
    drop(put);
    let cap = printk::capture();
    let n = task::check_leaks("broken");
    let texts = cap.texts();
    assert!(n >= 1);
    assert!(texts[0].starts_with("kmemleak: ") && texts[0].contains("new suspected memory leaks"));
    let named: Vec<_> = texts
        .iter()
        .filter(|t| t.contains(&format!("pid {pid} (sleep)")))
        .collect();
    assert_eq!(named.len(), 1, "one reference held, named: {texts:#?}");
    assert!(named[0].contains("module broken never put"));
    drop(kept);
    assert!(task::held().0.iter().all(|(p, _)| *p != pid));
    child.kill().unwrap();
    child.wait().unwrap();
}

fn allocating_tasklet(t: Pin<&deferred::kernel::tasklet::Tasklet<Fired>>) {
    let v = vec![1u8; 64];
    std::hint::black_box(v);
    t.data().0.store(true, Ordering::SeqCst);
}

#[test]
fn an_allocation_in_a_tasklet_names_the_tasklet() {
    let _g = serial();
    let cap = printk::capture();
    let t = Box::pin(deferred::kernel::tasklet::Tasklet::new(
        allocating_tasklet,
        Fired(AtomicBool::new(false)),
    ));
    t.as_ref().schedule();
    let texts = wait_line(&cap, "in tasklet debug_checks::allocating_tasklet");
    assert!(
        texts
            .iter()
            .any(|l| l.starts_with("BUG: sleeping function called"))
    );
}
