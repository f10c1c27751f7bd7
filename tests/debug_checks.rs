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

/// Exercise 6's module, right or broken: its thread waits to be told to stop, then says it is
/// done; its exit tells it (`TELL`) and waits for it (`WAIT`).
mod lab6 {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::{Duration, Instant};

    use deferred::kernel::atomic::Atomic;
    use deferred::kernel::error::Result;
    use deferred::kernel::kthread::kthread_should_stop;
    use deferred::kernel::sched::current;
    use deferred::kernel::wait::{WaitQueueHead, wait_event_interruptible, wake_up_interruptible};
    use deferred::module::{Module, ModuleInfo, Param, Params};
    use deferred::{kthread_run, pr_info};

    pub const TELL: Param<bool> = Param::new("tell", true, "exit tells the thread to stop");
    pub const WAIT: Param<bool> = Param::new("wait", true, "exit waits for the thread");
    pub const LATE: Param<bool> = Param::new(
        "late",
        false,
        "the thread's first check in its wait loop lasts until the exit tells it to stop; the \
         exit, without waiting for the thread to end, waits until the thread is held asleep",
    );

    /// The thread (late=1) is in its long check.
    pub static IN_CHECK: AtomicBool = AtomicBool::new(false);

    pub const MODULE: ModuleInfo = ModuleInfo {
        name: "lab6",
        description: "exercise 6, right or broken",
        params: &[&TELL, &WAIT, &LATE],
        has_device: false,
        init: load,
    };

    struct Sync {
        wq_stop: WaitQueueHead,
        wq_done: WaitQueueHead,
        stop: Atomic,
        done: Atomic,
        late: bool,
        checks: Atomic,
        tid: Atomic,
    }

    fn my_thread_f(s: Arc<Sync>) -> i32 {
        let me = current();
        s.tid.set(me.pid());
        pr_info!(
            "[my_thread_f] Current process id is {} ({})",
            me.pid(),
            me.comm()
        );
        // (kthread_should_stop: the runtime's clean-up after the report ends it.)
        let _ = wait_event_interruptible(&s.wq_stop, || {
            // The first check is the one before sleeping, the second the wait loop's first.
            if s.late && s.checks.inc_return() == 2 {
                IN_CHECK.store(true, SeqCst);
                let t0 = Instant::now();
                while s.stop.read() == 0 && t0.elapsed() < Duration::from_secs(10) {
                    std::hint::spin_loop();
                }
            }
            s.stop.read() != 0 || kthread_should_stop()
        });
        s.done.set(1);
        wake_up_interruptible(&s.wq_done);
        pr_info!("[my_thread_f] Exiting");
        0
    }

    struct Lab6 {
        s: Arc<Sync>,
        tell: bool,
        wait: bool,
    }

    fn load(p: &Params) -> Result<Box<dyn Module>> {
        pr_info!("[kthread_init] Init module");
        let s = Arc::new(Sync {
            wq_stop: WaitQueueHead::new(),
            wq_done: WaitQueueHead::new(),
            stop: Atomic::new(0),
            done: Atomic::new(0),
            late: p.get(&LATE),
            checks: Atomic::new(0),
            tid: Atomic::new(0),
        });
        kthread_run!(my_thread_f, s.clone(), "{}kthread{}", "my", 0)?;
        Ok(Box::new(Lab6 {
            s,
            tell: p.get(&TELL),
            wait: p.get(&WAIT),
        }))
    }

    impl Module for Lab6 {
        fn exit(&mut self) {
            if self.tell {
                self.s.stop.set(1);
                wake_up_interruptible(&self.s.wq_stop);
            }
            if self.s.late {
                // Not the lab's wait: until the thread, told to stop, sleeps again (held until
                // its turn) or has done (it ran on in the exit's turn).
                let tid = self.s.tid.read();
                let t0 = Instant::now();
                while self.s.done.read() == 0
                    && !super::runtime_common::in_futex(tid)
                    && t0.elapsed() < Duration::from_secs(5)
                {
                    std::hint::spin_loop();
                }
            }
            if self.wait {
                let _ = wait_event_interruptible(&self.s.wq_done, || self.s.done.read() != 0);
            }
            pr_info!("[kthread_exit] Exit module");
        }
    }
}

/// Loads lab6 with `params`, waits for its thread's first line (and, if `asleep`, until it
/// sleeps), unloads it; returns the log and the thread's id.
fn load_and_unload(params: &[&str], asleep: bool) -> (Vec<String>, i32) {
    let cap = printk::capture();
    let m = lab6::MODULE
        .load(&lab6::MODULE.parse_params(params).unwrap())
        .unwrap();
    let texts = wait_line(&cap, "[my_thread_f] Current process id is");
    let tid: i32 = texts
        .iter()
        .find_map(|t| t.strip_prefix("[my_thread_f] Current process id is "))
        .and_then(|r| r.strip_suffix(" (mykthread0)"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{texts:#?}"));
    if asleep {
        assert!(runtime_common::wait_for(Duration::from_secs(5), || {
            runtime_common::in_futex(tid)
        }));
    }
    lab6::MODULE.unload(m);
    // Reaped or stopped and joined: the thread is gone (its /proc entry may linger a moment).
    assert!(
        runtime_common::wait_for(Duration::from_secs(5), || {
            !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
        }),
        "mykthread0 outlived its module: {:#?}",
        cap.texts()
    );
    (cap.texts(), tid)
}

fn position(texts: &[String], f: impl Fn(&str) -> bool) -> usize {
    texts
        .iter()
        .position(|t| f(t))
        .unwrap_or_else(|| panic!("{texts:#?}"))
}

/// How many times each case runs: the verdict must never depend on which thread ran first.
const RUNS: usize = 40;

#[test]
fn a_kthread_not_waited_for_at_exit_is_an_oops_every_time() {
    let _g = serial();
    for run in 0..RUNS {
        let reports = bug::reports();
        // TODO/7 without its wait: the thread is told to stop, exit returns at once.
        let (texts, tid) = load_and_unload(&["wait=0"], false);
        let exit = position(&texts, |t| t == "[kthread_exit] Exit module");
        let bug = position(&texts, |t| {
            t.starts_with("BUG: unable to handle page fault for address: ")
        });
        let oops = position(&texts, |t| t.starts_with("Oops: 0010 [#"));
        assert!(texts[oops].ends_with(" in mykthread0"), "{texts:#?}");
        assert!(
            texts.contains(&format!("CPU: 0 PID: {tid} Comm: mykthread0")),
            "{texts:#?}"
        );
        assert!(texts.contains(&"Modules linked in: [last unloaded: lab6]".to_string()));
        let why = position(&texts, |t| {
            t.starts_with(
                "module lab6 was unloaded while its kernel thread mykthread0 still ran its code (",
            ) && t.ends_with("): its exit did not wait for the thread to end")
        });
        // The thread never ran on past its wait before the report (it had no turn), then was
        // let go and ended.
        let exiting = position(&texts, |t| t == "[my_thread_f] Exiting");
        assert!(
            exit < bug && bug < oops && oops < why && why < exiting,
            "run {run}: {texts:#?}"
        );
        assert!(bug::reports() > reports, "run {run}: not tainted");
        assert_eq!(bug::taint_string(), "W");
    }
}

/// A thread whose wait loop's check began before the exit started and found the condition true
/// once the exit had made it so: it leaves its wait only in its turn, so it is still held when
/// the exit returns without waiting.
#[test]
fn a_kthread_whose_check_straddles_the_exits_start_waits_for_its_turn() {
    let _g = serial();
    let reports = bug::reports();
    let cap = printk::capture();
    lab6::IN_CHECK.store(false, Ordering::SeqCst);
    let m = lab6::MODULE
        .load(&lab6::MODULE.parse_params(&["wait=0", "late=1"]).unwrap())
        .unwrap();
    assert!(runtime_common::wait_for(Duration::from_secs(5), || {
        lab6::IN_CHECK.load(Ordering::SeqCst)
    }));
    lab6::MODULE.unload(m);
    let texts = cap.texts();
    let why = position(&texts, |t| {
        t == "module lab6 was unloaded while its kernel thread mykthread0 still ran its code \
              (woken from a wait of the module, about to run its code): its exit did not wait \
              for the thread to end"
    });
    let exiting = wait_line(&cap, "[my_thread_f] Exiting")
        .iter()
        .position(|t| t == "[my_thread_f] Exiting")
        .unwrap();
    assert!(why < exiting, "{texts:#?}");
    assert!(bug::reports() > reports);
}

#[test]
fn a_kthread_never_told_to_stop_is_an_oops_and_is_stopped() {
    let _g = serial();
    let reports = bug::reports();
    let (texts, _) = load_and_unload(&["tell=0", "wait=0"], true);
    let why = position(&texts, |t| {
        t.starts_with("module lab6 was unloaded while its kernel thread mykthread0 still ran its code (in a wait of the module")
    });
    let exiting = position(&texts, |t| t == "[my_thread_f] Exiting");
    assert!(why < exiting, "{texts:#?}");
    assert!(bug::reports() > reports);
}

#[test]
fn a_kthread_waited_for_at_exit_is_reaped_without_a_report_every_time() {
    let _g = serial();
    for run in 0..RUNS {
        let reports = bug::reports();
        let (texts, _) = load_and_unload(&[], false);
        assert_eq!(bug::reports(), reports, "run {run}: {texts:#?}");
        assert!(
            !texts
                .iter()
                .any(|t| t.starts_with("BUG:") || t.starts_with("Oops")),
            "run {run}: {texts:#?}"
        );
        // The exit and its thread take turns: the thread's last line always comes first.
        let exiting = position(&texts, |t| t == "[my_thread_f] Exiting");
        let exit = position(&texts, |t| t == "[kthread_exit] Exit module");
        assert!(exiting < exit, "run {run}: {texts:#?}");
    }
}
