//! A panic in a handler: in softirq context (timer, tasklet) the kernel's Oops report written
//! with write(2), the lines printk already held before it, no heap allocation, and the process
//! ends with PANIC_EXIT_CODE; in a work handler an Oops in the log, the item finished, flushes
//! and cancels that return, and a worker that goes on.
//!
//! The softirq cases end the process: each runs in a child, this binary run again on one test
//! with `DEFERRED_OOPS_CHILD` naming the case.

mod runtime_common;

use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use deferred::impl_has_work;
use deferred::kernel::jiffies::jiffies;
use deferred::kernel::panic::PANIC_EXIT_CODE;
use deferred::kernel::printk;
use deferred::kernel::tasklet::Tasklet;
use deferred::kernel::timer::{Timer, TimerFn, TimerList};
use deferred::kernel::workqueue::{
    Work, cancel_work_sync, flush_scheduled_work, flush_work, schedule_work,
};
use runtime_common::{setup, wait_for};

const CHILD: &str = "DEFERRED_OOPS_CHILD";

/// Runs `test` of this binary in a child with `CHILD=case`; returns its exit code and stderr.
fn run_child(test: &str, case: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, case)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `test` as a child with `CHILD=case`: it must end with PANIC_EXIT_CODE, its stderr
/// holding the `want` lines (stamps aside) in this order. Returns the stderr.
fn panics_with(test: &str, case: &str, want: &[&str]) -> String {
    let (code, stderr) = run_child(test, case);
    assert_eq!(code, Some(PANIC_EXIT_CODE), "{stderr}");
    assert_in_order(&unstamped(&stderr), want, &stderr);
    stderr
}

/// The case this process runs as a child, if it is one.
fn child_case() -> Option<String> {
    std::env::var(CHILD).ok()
}

/// In the child: wait for the handler to end the process (never returns normally).
fn wait_for_the_end() -> ! {
    std::thread::sleep(Duration::from_secs(20));
    eprintln!("child: still alive 20 s after the panic");
    std::process::exit(0)
}

/// The report's lines without their dmesg stamps, `[    1.234567] `.
fn unstamped(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(|l| match l.find("] ") {
            Some(i) if l.starts_with('[') => l[i + 2..].to_string(),
            _ => l.to_string(),
        })
        .collect()
}

/// Asserts `want` appear in this order in `lines` (each a prefix of some line).
fn assert_in_order(lines: &[String], want: &[&str], stderr: &str) {
    let mut at = 0;
    for w in want {
        match lines[at..].iter().position(|l| l.starts_with(w)) {
            Some(i) => at += i + 1,
            None => panic!("{w:?} missing (or out of order) in:\n{stderr}"),
        }
    }
}

struct Answer {
    value: AtomicU64,
}

fn timer_panics_with_a_static_message(_: &Timer<Answer>) {
    // Made by the panic path from its encoded arguments (plain `{}`s: the console's to make).
    deferred::pr_info!(
        "[boom] the last line before the {}: {} {}",
        "panic",
        41u32,
        -1i64
    );
    panic!("the timer handler gives up");
}

fn timer_panics_with_a_formatted_message(t: &Timer<Answer>) {
    let v = t.data().value.load(SeqCst);
    panic!("the answer was {v}, not {}", v + 1);
}

fn timer_allocates_then_panics(_: &Timer<Answer>) {
    let v = std::hint::black_box(vec![7u8; 32]);
    std::mem::forget(v);
    panic!("allocated first");
}

/// The child's runtime: started, with a console on stderr as the daemon has.
fn boot() -> std::sync::MutexGuard<'static, ()> {
    let g = setup();
    printk::register_console(Box::new(std::io::stderr()), Some(printk::Level::Info));
    g
}

/// Arms a timer running `f` at the next jiffy and waits for the end. With `hold_console`, the
/// console is held from then on: every line printed since is written by the panic path.
fn arm(f: impl TimerFn<Answer>, hold_console: bool) -> ! {
    let _g = boot();
    if hold_console {
        std::mem::forget(printk::console_lock());
    }
    let t = TimerList::new(f, answer());
    t.mod_timer(jiffies() + 1);
    std::mem::forget(t);
    wait_for_the_end()
}

fn answer() -> Answer {
    Answer {
        value: AtomicU64::new(41),
    }
}

#[test]
fn a_panicking_timer_handler_is_an_oops_then_a_clean_exit() {
    if let Some(case) = child_case() {
        match case.as_str() {
            "static" => arm(timer_panics_with_a_static_message, true),
            "formatted" => arm(timer_panics_with_a_formatted_message, false),
            _ => arm(timer_allocates_then_panics, false),
        }
    }
    let test = "a_panicking_timer_handler_is_an_oops_then_a_clean_exit";

    let stderr = panics_with(
        test,
        "static",
        &[
            "[boom] the last line before the panic: 41 -1",
            "------------[ cut here ]------------",
            "kernel BUG at tests/runtime_oops.rs:",
            "BUG: kernel panic in softirq context: the timer handler gives up",
            "Oops: Rust panic [#1] in timer handler runtime_oops::timer_panics_with_a_static_message",
            "CPU: 0 PID: ",
            "Call Trace:",
            " runtime_oops::timer_panics_with_a_static_message",
            " call_timer_fn",
            " run_timer_softirq",
            "---[ end trace 0000000000000000 ]---",
            "Kernel panic - not syncing: Fatal exception in interrupt",
            "---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---",
        ],
    );
    // Not std's hook, and nothing allocated on the heap in softirq context.
    assert!(!stderr.contains("panicked at"), "{stderr}");
    assert!(!stderr.contains("allocations were made"), "{stderr}");
    // The line with the location is a full dmesg line.
    let bug = stderr
        .lines()
        .find(|l| l.contains("kernel BUG at"))
        .unwrap();
    assert!(bug.starts_with('[') && bug.ends_with('!'), "{bug}");

    // A formatted message needs a String: it is made in the emergency buffer, not the heap.
    let stderr = panics_with(
        test,
        "formatted",
        &[
            "BUG: kernel panic in softirq context: the answer was 41, not 42",
            "Oops: Rust panic [#1] in timer handler runtime_oops::timer_panics_with_a_formatted_message",
            "Kernel panic - not syncing: Fatal exception in interrupt",
        ],
    );
    assert!(!stderr.contains("allocations were made"), "{stderr}");

    // The report says so when the handler did allocate (the check is not blind).
    let (code, stderr) = run_child(test, "allocating");
    assert_eq!(code, Some(PANIC_EXIT_CODE), "{stderr}");
    assert!(
        unstamped(&stderr)
            .iter()
            .any(|l| l == "BUG: 1 allocations were made in softirq context"),
        "{stderr}"
    );
}

fn tasklet_panics(_: Pin<&Tasklet<()>>) {
    let none: Option<u32> = std::hint::black_box(None);
    none.unwrap();
}

#[test]
fn a_panicking_tasklet_is_an_oops_then_a_clean_exit() {
    if child_case().is_some() {
        let _g = boot();
        let t = Box::pin(Tasklet::new(tasklet_panics, ()));
        t.as_ref().schedule();
        std::mem::forget(t);
        wait_for_the_end();
    }
    let stderr = panics_with(
        "a_panicking_tasklet_is_an_oops_then_a_clean_exit",
        "tasklet",
        &[
            "kernel BUG at tests/runtime_oops.rs:",
            "BUG: kernel panic in softirq context: called `Option::unwrap()` on a `None` value",
            "Oops: Rust panic [#1] in tasklet runtime_oops::tasklet_panics",
            " runtime_oops::tasklet_panics",
            " tasklet_action_common",
            " tasklet_action",
            "Kernel panic - not syncing: Fatal exception in interrupt",
        ],
    );
    assert!(!stderr.contains("allocations were made"), "{stderr}");
}

struct Flaky {
    work: Work<Flaky>,
    runs: AtomicU64,
}
impl_has_work!(Flaky, work);

fn flaky_work(f: &Flaky) {
    if f.runs.fetch_add(1, SeqCst) == 0 {
        panic!("first run fails");
    }
}

#[test]
fn a_panicking_work_handler_is_an_oops_and_the_worker_goes_on() {
    if child_case().is_some() {
        return;
    }
    let _g = setup();
    let cap = printk::capture();
    let item = Box::pin(Flaky {
        work: Work::new(flaky_work),
        runs: AtomicU64::new(0),
    });
    assert!(schedule_work(item.as_ref()));
    // The flush returns: the item finished, although its handler panicked.
    flush_scheduled_work();
    assert_eq!(item.runs.load(SeqCst), 1);
    assert!(!item.work.running() && !item.work.pending());
    assert!(!flush_work(&item.work));
    assert!(!cancel_work_sync(&item.work));
    let texts = cap.texts();
    let name = "runtime_oops::flaky_work";
    let at = texts
        .iter()
        .position(|l| {
            l.starts_with("Oops: Rust panic [#") && l.ends_with(&format!("in work handler {name}"))
        })
        .unwrap_or_else(|| panic!("no Oops: {texts:#?}"));
    assert!(texts[at - 2].starts_with("kernel BUG at tests/runtime_oops.rs:"));
    assert_eq!(texts[at - 1], "BUG: work handler panicked: first run fails");
    assert!(texts[at + 1].contains(" Comm: events/"), "{texts:#?}");
    assert_eq!(texts[at + 2], format!("Workqueue: events {name}"));
    // The worker is alive: the same item runs again, on the same queue.
    assert!(schedule_work(item.as_ref()));
    assert!(
        wait_for(Duration::from_secs(10), || { item.runs.load(SeqCst) == 2 }),
        "the second run"
    );
    flush_scheduled_work();
    drop(item); // Work::drop: nothing left running, nothing to wait for
}

struct Queued {
    work: Work<Queued>,
}
impl_has_work!(Queued, work);

fn never_runs(_: &Queued) {}

struct Stuck {
    work: Work<Stuck>,
}
impl_has_work!(Stuck, work);

fn stuck(_: &Stuck) {
    loop {
        std::thread::park();
    }
}

static QUEUED: deferred::kernel::spinlock::SpinLock<Option<Pin<Box<Queued>>>> =
    deferred::kernel::spinlock::SpinLock::new("queued", None);

fn drops_a_queued_work(_: &Timer<()>) {
    let q = QUEUED.lock().take();
    drop(q);
}

#[test]
fn a_queued_work_dropped_in_softirq_context_is_reported_then_panic() {
    if child_case().is_some() {
        let _g = boot();
        let wq = deferred::kernel::workqueue::create_singlethread_workqueue("held_wq").unwrap();
        let busy: &'static Stuck = Box::leak(Box::new(Stuck {
            work: Work::new(stuck),
        }));
        deferred::kernel::workqueue::queue_work(&wq, Pin::static_ref(busy));
        let q = Box::pin(Queued {
            work: Work::new(never_runs),
        });
        deferred::kernel::workqueue::queue_work(&wq, q.as_ref());
        *QUEUED.lock_bh() = Some(q);
        let t = TimerList::new(drops_a_queued_work, ());
        t.mod_timer(jiffies() + 1);
        std::mem::forget((t, wq));
        wait_for_the_end();
    }
    let stderr = panics_with(
        "a_queued_work_dropped_in_softirq_context_is_reported_then_panic",
        "work",
        &[
            "ODEBUG: free active (active state 0) object type: work_struct hint: runtime_oops::never_runs",
            "BUG: sleeping function called from invalid context at ",
            "BUG: scheduling while atomic: ",
            "Kernel panic - not syncing: work_struct freed in softirq context while queued",
        ],
    );
    assert!(!stderr.contains("allocations were made"), "{stderr}");
}

fn never_scheduled_runs(_: Pin<&Tasklet<()>>) {}

static SCHEDULED: deferred::kernel::spinlock::SpinLock<Option<Pin<Box<Tasklet<()>>>>> =
    deferred::kernel::spinlock::SpinLock::new("scheduled", None);

fn drops_a_scheduled_tasklet(_: &Timer<()>) {
    let t = SCHEDULED.lock().take();
    drop(t);
}

#[test]
fn a_scheduled_tasklet_dropped_in_softirq_context_is_reported_then_panic() {
    if child_case().is_some() {
        let _g = boot();
        // Disabled and scheduled: parked, still active, until enabled.
        let t = Box::pin(Tasklet::new_disabled(never_scheduled_runs, ()));
        t.as_ref().schedule();
        *SCHEDULED.lock_bh() = Some(t);
        let timer = TimerList::new(drops_a_scheduled_tasklet, ());
        timer.mod_timer(jiffies() + 1);
        std::mem::forget(timer);
        wait_for_the_end();
    }
    let stderr = panics_with(
        "a_scheduled_tasklet_dropped_in_softirq_context_is_reported_then_panic",
        "tasklet",
        &[
            "ODEBUG: free active (active state 0) object type: tasklet_struct hint: runtime_oops::never_scheduled_runs",
            "Kernel panic - not syncing: tasklet_struct freed in softirq context while active",
        ],
    );
    assert!(!stderr.contains("allocations were made"), "{stderr}");
}
