//! Kernel threads: `kthread_create`, `wake_up_process`, `kthread_run`, `kthread_should_stop`,
//! `kthread_stop`.
//!
//! A kernel thread runs kernel code in process context: it may block, allocate and take locks.
//! Here it is an OS thread whose name (the kernel's `comm`, visible in `ps -eL -o tid,comm` and
//! `/proc/self/task/<tid>/comm`) is set the kernel's way: from a format, at most 15 bytes
//! (`TASK_COMM_LEN` is 16 with the NUL).
//!
//! ```text
//!  kthread_create ──> Created (the thread exists, named; threadfn not running)
//!                        │ wake_up_process                │ kthread_stop
//!                        v                                v
//!                     Running threadfn(data)          Exited, result -EINTR (threadfn never ran)
//!                        │ returns r (by itself, or after kthread_should_stop() turned true)
//!                        v
//!                     Exited, result r  ──> kthread_stop returns r
//! ```
//!
//! | C                                                    | Rust                                       |
//! |------------------------------------------------------|--------------------------------------------|
//! | `kthread_create(f, data, "%skthread%d", "my", 0)`    | `kthread_create!(f, data, "{}kthread{}", "my", 0)` |
//! | `kthread_run(f, data, ...)`                          | `kthread_run!(f, data, ...)`               |
//! | `wake_up_process(p)`                                 | `wake_up_process(&p)`                      |
//! | `kthread_should_stop()`                              | same name                                  |
//! | `kthread_stop(p)`                                    | `kthread_stop(&p)`                         |
//! | `p->pid`, `p->comm`                                  | `p.pid()`, `p.comm()`                      |
//!
//! `threadfn` is any `FnOnce(D) -> i32` (a plain `fn(D) -> i32` as in C, or a closure);
//! `do_exit(code)` is `return code`.
//!
//! # Example: the lab's exercise 6 thread
//! ```
//! use deferred::kernel::kthread::{kthread_should_stop, kthread_stop};
//! use deferred::kernel::wait::{WaitQueueHead, wait_event_interruptible};
//! use deferred::kthread_run;
//!
//! static WQ: WaitQueueHead = WaitQueueHead::new();
//!
//! fn my_thread_f(_data: ()) -> i32 {
//!     let me = deferred::kernel::sched::current();
//!     deferred::pr_info!("[my_thread_f] Current process id is {} ({})", me.pid(), me.comm());
//!     // Sleeps until kthread_stop (which interrupts the wait and sets kthread_should_stop).
//!     let _ = wait_event_interruptible(&WQ, kthread_should_stop);
//!     0
//! }
//!
//! let task = kthread_run!(my_thread_f, (), "{}kthread{}", "my", 0).unwrap();
//! assert_eq!(task.comm(), "mykthread0");
//! assert_eq!(kthread_stop(&task), 0);
//! ```
//!
//! # Waking and stopping
//! `wake_up_process` starts a created thread, and wakes a running one out of any `wait_event*`
//! so it re-checks its condition (the kernel's semantics). `kthread_stop` sets the stop flag,
//! wakes the thread the same way, makes its `wait_event_interruptible` return
//! `Err(ERESTARTSYS)` (see [`crate::kernel::wait`]), waits for it to exit and returns
//! `threadfn`'s result. A thread that returned by itself earlier is handled as the kernel does:
//! `kthread_stop` returns the stored result at once.
//!
//! # A module's threads
//! A kthread created while a module is loaded ([`crate::module::ModuleInfo::load`]) is the
//! module's. Once it has returned the runtime reaps it (joins it), as kthreadd does: the module
//! need not `kthread_stop` it. One still running the module's code when the module's exit
//! returns is the kernel's Oops (the module's code freed under it); while the exit runs, the
//! exit and the module's threads take turns, so that verdict never depends on scheduling: see
//! `unload` below for the design.
//!
//! # Contexts
//! `kthread_create`, `kthread_run` and `kthread_stop` sleep: process context only
//! (`might_sleep()` first). `wake_up_process` and `kthread_should_stop` are callable from any
//! context, signal handlers included (atomics, a futex wake).
//!
//! # Ground rules (shared with signal context)
//! `Kthread::state` and `tid` are atomics; `wake_up_process` only sets a state bit and wakes two
//! futex words ([`WaitSlot::kick`], [`wake_up`]): no lock, no allocation. The `Mutex` around the
//! join handle and the name are touched in process context only.

use core::fmt;
use core::ops::ControlFlow;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering::SeqCst};
use std::cell::Cell;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use super::error::{Error, Result};
use super::sched;
use super::trace;
use super::wait::{self, WaitQueueHead, WaitSlot, wait_event, wake_up};

pub use super::sched::TASK_COMM_LEN;

/// State bits of a kthread.
const WOKEN: u32 = 1;
const SHOULD_STOP: u32 = 2;
const EXITED: u32 = 4;

/// The shared part of a kthread (the kernel's `struct kthread` + the bits of `task_struct` we use).
#[derive(Debug)]
struct Kthread {
    comm: String,
    /// The module that created it (while loaded, [`crate::module`]); None: the runtime's own.
    module: Option<&'static str>,
    /// `threadfn`'s path (`type_name`), for the reports.
    threadfn: &'static str,
    /// Where it is, for the unload report: one of the `AT_*` values.
    at: AtomicU32,
    /// The thread's tid, published by the thread before `kthread_create` returns.
    tid: AtomicI32,
    /// `WOKEN | SHOULD_STOP | EXITED`.
    state: AtomicU32,
    /// `threadfn`'s result, valid once `EXITED` is set.
    result: AtomicI32,
    /// Wakes the thread out of any `wait_event*` (see `wait`).
    slot: WaitSlot,
    /// Signalled on every state change and when `tid` is published.
    events: WaitQueueHead,
    join: Mutex<Option<JoinHandle<()>>>,
}

/// `struct task_struct *` of a kthread: a counted reference (`get_task_struct` is `clone`).
/// Dropping every handle of a running thread leaves it running, detached.
#[derive(Debug, Clone)]
pub struct TaskStruct {
    inner: Arc<Kthread>,
}

impl TaskStruct {
    /// `p->pid`: the thread's id (its tid, as `gettid()` returns it).
    pub fn pid(&self) -> i32 {
        self.inner.tid.load(SeqCst)
    }

    /// `p->comm`: the thread's name, at most 15 bytes.
    pub fn comm(&self) -> &str {
        &self.inner.comm
    }

    /// True once `threadfn` has returned (or the thread was stopped before it ran).
    pub fn has_exited(&self) -> bool {
        self.inner.state.load(SeqCst) & EXITED != 0
    }
}

thread_local! {
    /// The calling thread's kthread (null: not a kthread). Const-initialised plain pointer.
    static CURRENT: Cell<*const Kthread> = const { Cell::new(ptr::null()) };
}

/// `kthread_create(threadfn, data, namefmt, ...)`: creates a kernel thread, named, *stopped*:
/// `threadfn(data)` runs only after [`wake_up_process`]. Returns once the thread exists (its
/// tid and name are set). Process context.
///
/// Errors: the errno of the failed thread creation (`EAGAIN`, `ENOMEM`).
/// Use the [`kthread_create!`](crate::kthread_create) macro for a `printf`-like name.
#[track_caller]
pub fn kthread_create<F, D>(threadfn: F, data: D, name: fmt::Arguments<'_>) -> Result<TaskStruct>
where
    F: FnOnce(D) -> i32 + Send + 'static,
    D: Send + 'static,
{
    let module = *LOADED.lock().unwrap_or_else(|e| e.into_inner());
    create(threadfn, data, name, module)
}

/// [`kthread_create`] + [`wake_up_process`] of a thread of the runtime's own (a workqueue's
/// worker): never a module's, whatever module is loaded.
pub(crate) fn kthread_run_kernel<F, D>(
    threadfn: F,
    data: D,
    name: fmt::Arguments<'_>,
) -> Result<TaskStruct>
where
    F: FnOnce(D) -> i32 + Send + 'static,
    D: Send + 'static,
{
    let task = create(threadfn, data, name, None)?;
    wake_up_process(&task);
    Ok(task)
}

#[track_caller]
fn create<F, D>(
    threadfn: F,
    data: D,
    name: fmt::Arguments<'_>,
    module: Option<&'static str>,
) -> Result<TaskStruct>
where
    F: FnOnce(D) -> i32 + Send + 'static,
    D: Send + 'static,
{
    if !sched::might_sleep() {
        return Err(Error::EWOULDBLOCK);
    }
    let comm = sched::comm_truncate(&std::fmt::format(name)).to_owned();
    let inner = Arc::new(Kthread {
        module,
        threadfn: std::any::type_name::<F>(),
        at: AtomicU32::new(AT_RUNNING),
        comm: comm.clone(),
        tid: AtomicI32::new(0),
        state: AtomicU32::new(0),
        result: AtomicI32::new(0),
        slot: WaitSlot::new(),
        events: WaitQueueHead::new(),
        join: Mutex::new(None),
    });
    let me = Arc::clone(&inner);
    let handle = std::thread::Builder::new()
        .name(comm)
        .spawn(move || kthread_main(me, threadfn, data))
        .map_err(Error::from)?;
    *inner.join.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    wait_event(&inner.events, || inner.tid.load(SeqCst) != 0);
    trace::task_newtask(inner.tid.load(SeqCst), &inner.comm);
    let task = TaskStruct { inner };
    if module.is_some() {
        let mut threads = MODULE_THREADS.lock().unwrap_or_else(|e| e.into_inner());
        // kthreadd's part: the module's threads that have returned are reaped.
        threads.retain(|t| !t.has_exited() || !reap(t));
        threads.push(task.clone());
    }
    Ok(task)
}

/// The nice value kthreads start with, as the kernel's start with kthreadd's: the runtime's
/// when it started ([`note_kthreadd_nice`]), whichever thread creates them (a CUSE reader may
/// run at another, [`crate::cuse::Config::reader_nice`]).
static KTHREADD_NICE: OnceLock<i32> = OnceLock::new();

/// Records the calling thread's nice value as the one kthreads start with. Called once, by
/// [`super::start`].
pub(super) fn note_kthreadd_nice() {
    if let Ok(n) = crate::sys::prio::thread_nice() {
        let _ = KTHREADD_NICE.set(n);
    }
}

/// The body of every kthread: publish, wait to be woken, run `threadfn`, publish the result.
fn kthread_main<F, D>(me: Arc<Kthread>, threadfn: F, data: D)
where
    F: FnOnce(D) -> i32,
{
    if let Some(&nice) = KTHREADD_NICE.get()
        && crate::sys::prio::thread_nice() != Ok(nice)
    {
        // Raising a nice value needs no privilege; lowering it back may be refused, and the
        // thread then keeps its creator's.
        let _ = crate::sys::prio::set_thread_nice(nice);
    }
    super::sched::set_comm(&me.comm);
    CURRENT.with(|c| c.set(Arc::as_ptr(&me)));
    // SAFETY: `me` keeps the slot alive until after `set_current_slot(null)` below.
    unsafe { wait::set_current_slot(&me.slot) };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    me.tid.store(tid, SeqCst);
    wake_up(&me.events);

    wait_event(&me.events, || {
        me.state.load(SeqCst) & (WOKEN | SHOULD_STOP) != 0
    });
    // As the kernel documents it: -EINTR only if wake_up_process() was never called. A thread
    // woken and stopped before it got going still runs threadfn (kthread_should_stop() is
    // already true there).
    let result = if me.state.load(SeqCst) & WOKEN == 0 {
        Error::EINTR.to_errno()
    } else {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| threadfn(data))) {
            Ok(r) => r,
            Err(_) => {
                crate::pr_err!("kthread {} ({}): threadfn panicked\n", me.comm, tid);
                Error::EFAULT.to_errno()
            }
        }
    };

    me.result.store(result, SeqCst);
    trace::sched_process_exit(tid, &me.comm);
    // SAFETY: clearing the slot has no precondition.
    unsafe { wait::set_current_slot(ptr::null()) };
    CURRENT.with(|c| c.set(ptr::null()));
    me.state.fetch_or(EXITED, SeqCst);
    wake_up(&me.events);
    // Out of the module's code: during its exit, the exit may run again (see `unload`).
    cpu_release();
}

/// `kthread_create!(threadfn, data, "fmt", args...)`: [`kthread_create`] with a `format!`-style
/// name, as the kernel's `namefmt, ...` (`"{}kthread{}", "my", 0` gives `mykthread0`).
#[macro_export]
macro_rules! kthread_create {
    ($threadfn:expr, $data:expr, $($fmt:tt)+) => {
        $crate::kernel::kthread::kthread_create($threadfn, $data, ::core::format_args!($($fmt)+))
    };
}

/// `kthread_run!(threadfn, data, "fmt", args...)`: [`kthread_create!`](crate::kthread_create!) then
/// [`wake_up_process`].
#[macro_export]
macro_rules! kthread_run {
    ($threadfn:expr, $data:expr, $($fmt:tt)+) => {
        $crate::kernel::kthread::kthread_run($threadfn, $data, ::core::format_args!($($fmt)+))
    };
}

/// `kthread_run`: [`kthread_create`] + [`wake_up_process`].
#[track_caller]
pub fn kthread_run<F, D>(threadfn: F, data: D, name: fmt::Arguments<'_>) -> Result<TaskStruct>
where
    F: FnOnce(D) -> i32 + Send + 'static,
    D: Send + 'static,
{
    let task = kthread_create(threadfn, data, name)?;
    wake_up_process(&task);
    Ok(task)
}

/// `wake_up_process(p)`: starts a created kthread, or wakes a sleeping one out of its
/// `wait_event*` so it re-checks its condition. Returns true if the thread was not running
/// (created and not yet woken), as the kernel returns 1. Any context, signal handlers included.
pub fn wake_up_process(task: &TaskStruct) -> bool {
    let k = &task.inner;
    let old = k.state.fetch_or(WOKEN, SeqCst);
    wake_up(&k.events);
    k.slot.kick();
    old & (WOKEN | EXITED) == 0
}

/// `kthread_should_stop()`: true if `kthread_stop()` was called on the calling kthread.
/// False in a thread that is not a kthread. Any context.
pub fn kthread_should_stop() -> bool {
    let p = CURRENT.with(Cell::get);
    // SAFETY: a non-null CURRENT points to the Kthread that this very thread's `kthread_main`
    // keeps alive (`me`) until after it resets CURRENT to null.
    unsafe { p.as_ref() }.is_some_and(|k| k.state.load(SeqCst) & SHOULD_STOP != 0)
}

/// `kthread_stop(p)`: sets `kthread_should_stop()` for `p`, wakes it (its
/// `wait_event_interruptible` returns `Err(ERESTARTSYS)`), waits until it has exited and returns
/// `threadfn`'s result (`-EINTR` if it was never woken). Calling it again returns the same
/// result. Process context; from atomic context (or from the thread itself, which would
/// deadlock) it returns at once: `-EWOULDBLOCK` / `-EDEADLK`.
#[track_caller]
pub fn kthread_stop(task: &TaskStruct) -> i32 {
    if !sched::might_sleep() {
        return Error::EWOULDBLOCK.to_errno();
    }
    let k = &task.inner;
    if ptr::eq(CURRENT.with(Cell::get), Arc::as_ptr(k)) {
        crate::pr_warn!("kthread_stop: {} tried to stop itself\n", k.comm);
        return Error::EDEADLK.to_errno();
    }
    trace::sched_kthread_stop(k.tid.load(SeqCst), &k.comm);
    k.state.fetch_or(SHOULD_STOP, SeqCst);
    wake_up(&k.events);
    k.slot.interrupt();
    wait_event(&k.events, || k.state.load(SeqCst) & EXITED != 0);
    let handle = k.join.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(handle) = handle {
        // The thread has published EXITED; join so that it is really gone on return.
        let _ = handle.join();
    }
    let ret = k.result.load(SeqCst);
    trace::sched_kthread_stop_ret(ret);
    ret
}

// ---------------------------------------------------------------------------------------------
// A module's kthreads at its unload

/// Where a module's kthread is, as the unload report says it ([`Kthread::at`]).
const AT_RUNNING: u32 = 0;
const AT_ASLEEP: u32 = 1;
const AT_WAITING_CPU: u32 = 2;

/// The module loaded now (its new kthreads are its own), set by [`crate::module`].
static LOADED: Mutex<Option<&'static str>> = Mutex::new(None);
/// The loaded module's kthreads not yet reaped.
static MODULE_THREADS: Mutex<Vec<TaskStruct>> = Mutex::new(Vec::new());

/// A module's exit runs: its code runs on one "CPU" (see [`unload`]).
static UNLOADING: AtomicBool = AtomicBool::new(false);
/// After a soft lockup: the module's threads and exit run at once again (no more turns).
static PREEMPTIVE: AtomicBool = AtomicBool::new(false);
/// The thread (tid) running the module's code during its exit; 0: none.
static CPU_OWNER: AtomicI32 = AtomicI32::new(0);
/// Where the threads waiting for their turn sleep.
static CPU_WQ: WaitQueueHead = WaitQueueHead::new();
/// How long a thread waits for its turn before the soft-lockup report (the kernel's
/// `watchdog_thresh`).
const SOFT_LOCKUP_NS: u64 = 10_000_000_000;

thread_local! {
    /// This thread runs a module's exit.
    static EXITING: Cell<bool> = const { Cell::new(false) };
}

/// Does the calling thread take turns on the module's "CPU": the thread running the module's
/// exit, or one of the module's kthreads, while the exit runs.
fn takes_turns() -> bool {
    if !UNLOADING.load(SeqCst) || PREEMPTIVE.load(SeqCst) {
        return false;
    }
    if EXITING.with(Cell::get) {
        return true;
    }
    // SAFETY: as in `kthread_should_stop`: a non-null CURRENT is this thread's live Kthread.
    unsafe { CURRENT.with(Cell::get).as_ref() }.is_some_and(|k| k.module.is_some())
}

fn set_at(at: u32) {
    // SAFETY: as in `kthread_should_stop`.
    if let Some(k) = unsafe { CURRENT.with(Cell::get).as_ref() } {
        k.at.store(at, SeqCst);
    }
}

/// The calling thread is about to sleep (`wait_event*`, `msleep`, ...): its sleep hook runs
/// ([`sched::going_to_sleep`]), and during a module's exit the module's code is free to run on
/// another of its threads.
pub(crate) fn sched_out() {
    sched::going_to_sleep();
    set_at(AT_ASLEEP);
    if takes_turns() {
        cpu_release();
    }
}

/// The calling thread leaves a sleep (its condition holds, it timed out, or it was
/// interrupted): during a module's exit, it runs the module's code only in its turn: once the
/// thread that has it sleeps, returns (a kthread) or the exit has returned.
pub(crate) fn sched_in() {
    if !takes_turns() {
        set_at(AT_RUNNING);
        return;
    }
    let me = sched::gettid();
    if CPU_OWNER.load(SeqCst) == me {
        set_at(AT_RUNNING);
        return;
    }
    set_at(AT_WAITING_CPU);
    let deadline = super::jiffies::monotonic_ns().saturating_add(SOFT_LOCKUP_NS);
    let got = CPU_WQ.wait_loop(|| {
        if !UNLOADING.load(SeqCst) || PREEMPTIVE.load(SeqCst) {
            return ControlFlow::Break(true);
        }
        if CPU_OWNER.compare_exchange(0, me, SeqCst, SeqCst).is_ok() {
            return ControlFlow::Break(true);
        }
        if super::jiffies::monotonic_ns() >= deadline {
            return ControlFlow::Break(false);
        }
        ControlFlow::Continue(Some(deadline))
    });
    if !got {
        soft_lockup(me);
    }
    set_at(AT_RUNNING);
}

/// Gives the module's "CPU" up, if the calling thread has it.
fn cpu_release() {
    let me = sched::gettid();
    if CPU_OWNER.compare_exchange(me, 0, SeqCst, SeqCst).is_ok() {
        CPU_WQ.wake();
    }
}

/// The turn never came: the thread that has it ran the module's code for `SOFT_LOCKUP_NS`
/// without sleeping (a busy wait for another of the module's threads). The kernel's watchdog
/// report; from now on this unload's threads run at once.
fn soft_lockup(me: i32) {
    if PREEMPTIVE.swap(true, SeqCst) {
        return;
    }
    CPU_WQ.wake();
    super::bug::add_taint(super::bug::TAINT_WARN);
    let owner = CPU_OWNER.load(SeqCst);
    let comm = std::fs::read_to_string(format!("/proc/self/task/{owner}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| "?".into());
    crate::pr_emerg!(
        "watchdog: BUG: soft lockup - CPU#0 stuck for {}s! [{comm}:{owner}]",
        SOFT_LOCKUP_NS / 1_000_000_000
    );
    crate::pr_emerg!(
        "{comm} ran the module's code that long without sleeping while {} (pid {me}) waited to \
         run it: during a module's exit, the exit and the module's kernel threads take turns as \
         on one CPU; a busy wait for another of them never ends (wait_event* sleeps)",
        sched::current().comm()
    );
}

/// `insmod`: kthreads created from now on (outside the runtime's own) are `module`'s.
pub(crate) fn module_loaded(module: &'static str) {
    *LOADED.lock().unwrap_or_else(|e| e.into_inner()) = Some(module);
}

/// Joins a thread that has returned (`EXITED`): it is gone once this returns. True if it was
/// joined now.
fn reap(task: &TaskStruct) -> bool {
    let handle = task
        .inner
        .join
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    handle.map(JoinHandle::join).is_some()
}

/// `rmmod`: runs `exit`, the module's `module_exit`, then deals with the module's kthreads as
/// the kernel would find them when it frees the module's memory. Returns how many were still
/// running its code (each an Oops report). Process context.
///
/// # A kthread still running the module's code at unload
/// In the kernel a module's exit that returns while one of its threads still runs the module's
/// code (asleep in a `wait_event` of the module, or woken and about to run) frees the code under
/// the thread: the thread faults on its next instruction, an Oops in that thread. The lab's
/// exercise 6 asks for the exit to prevent that: tell the thread to stop, then *wait* until it
/// says it is done. Here the thread's code stays, so the runtime reports it: at the return of
/// `exit`, every kthread of the module whose function has not returned is reported as the
/// kernel's page fault in it, with a line saying the module was unloaded while the thread ran
/// its code (its exit did not wait for it); the kernel is tainted (the daemon exits 1). Then the
/// thread is stopped (`kthread_should_stop()` turns true, it is woken to re-check its condition)
/// and joined, waiting at most a second: the daemon ends anyway. Threads that returned are reaped (joined), as kthreadd
/// reaps them: the exit need not `kthread_stop` them.
///
/// # Why the verdict does not depend on scheduling: the exit and the threads take turns
/// With threads running at once, whether the thread has returned when `exit` returns would be
/// a race for an exit that wakes the thread and does not wait: on a fast thread it would pass,
/// on a slow one fail. So while `exit` runs, the exit and the module's kthreads take turns as
/// on one CPU without preemption: one of them, the owner, runs the module's code; the others
/// wait for their turn when they leave a sleep. The exit owns the "CPU" first; a thread gives
/// it up when it sleeps (`wait_event*`, `msleep`, `schedule_timeout`: [`sched_out`]) or when
/// its kthread returns; a thread that leaves a sleep (its condition true, including the check
/// before sleeping; timed out; interrupted: [`sched_in`]) waits until the owner gives it up or
/// the exit returns. So a kthread woken by the exit runs only while the exit sleeps:
/// - an exit that waits for the thread (`wait_event` on a condition only the thread makes
///   true) sleeps, the thread runs, signals, returns; the exit runs again only then: at its
///   return the thread has returned, every time (and "Exiting" comes before "Exit module");
/// - an exit that wakes the thread and returns without sleeping never lets it run: at its
///   return the thread is still in its `wait_event` (woken, waiting for its turn), every time.
///
/// The verdict is the program's, not the scheduler's. What turns do not cover: a kthread
/// already running the module's code (not asleep) when the exit starts runs at once until it
/// next sleeps or leaves a sleep; one still running at the exit's return is reported too.
/// A busy wait (an exit spinning until the thread sets a flag) would wait for ever for a turn
/// that never comes: after `SOFT_LOCKUP_NS` the kernel's soft-lockup report, and turns end.
pub(crate) fn unload(module: &str, exit: impl FnOnce()) -> usize {
    let me = sched::gettid();
    PREEMPTIVE.store(false, SeqCst);
    CPU_OWNER.store(me, SeqCst);
    EXITING.with(|e| e.set(true));
    UNLOADING.store(true, SeqCst);
    exit();
    // The verdict, while the exit still has the "CPU": a thread of the module that has not
    // returned cannot have left a sleep since the exit last slept, so what it is doing now is
    // the program's doing, not the scheduler's.
    let threads = std::mem::take(&mut *MODULE_THREADS.lock().unwrap_or_else(|e| e.into_inner()));
    let mut running = Vec::new();
    for t in threads {
        if t.has_exited() {
            reap(&t);
        } else {
            running.push(t);
        }
    }
    for t in &running {
        oops_unloaded(module, t);
    }
    // The turns end: the threads held run again, and are stopped.
    UNLOADING.store(false, SeqCst);
    EXITING.with(|e| e.set(false));
    CPU_OWNER.store(0, SeqCst);
    CPU_WQ.wake();
    *LOADED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    for t in &running {
        let k = &t.inner;
        // kthread_should_stop() turns true and it re-checks its condition (not interrupted:
        // a loop retrying an interrupted wait would spin for ever).
        k.state.fetch_or(SHOULD_STOP | WOKEN, SeqCst);
        wake_up(&k.events);
        k.slot.kick();
        let deadline = super::jiffies::monotonic_ns().saturating_add(1_000_000_000);
        let exited = k.events.wait_loop(|| {
            if k.state.load(SeqCst) & EXITED != 0 {
                ControlFlow::Break(true)
            } else if super::jiffies::monotonic_ns() >= deadline {
                ControlFlow::Break(false)
            } else {
                ControlFlow::Continue(Some(deadline))
            }
        });
        if exited {
            reap(t);
        } else {
            crate::pr_err!(
                "kthread: {} (pid {}) did not stop within a second of kthread_stop: it runs \
                 until the process ends",
                k.comm,
                t.pid()
            );
        }
    }
    running.len()
}

/// The Oops of a kthread whose module's code went while it still ran it.
fn oops_unloaded(module: &str, t: &TaskStruct) {
    let k = &t.inner;
    super::bug::add_taint(super::bug::TAINT_WARN);
    let die = super::panic::die();
    let addr = Arc::as_ptr(k) as usize;
    let state = k.state.load(SeqCst);
    let how = if state & WOKEN == 0 {
        "created (kthread_create) and never woken"
    } else {
        match k.at.load(SeqCst) {
            AT_ASLEEP => "in a wait of the module (wait_event*, msleep, ...), woken or not",
            AT_WAITING_CPU => "woken from a wait of the module, about to run its code",
            _ => "running",
        }
    };
    crate::pr_alert!("BUG: unable to handle page fault for address: {addr:016x}");
    crate::pr_alert!("#PF: supervisor instruction fetch in kernel mode");
    crate::pr_alert!("#PF: error_code(0x0010) - not-present page");
    crate::pr_alert!("Oops: 0010 [#{die}] in {}", k.comm);
    crate::pr_alert!("CPU: 0 PID: {} Comm: {}", t.pid(), k.comm);
    crate::pr_alert!("RIP: 0010:{} [{module}, unloaded]", k.threadfn);
    crate::pr_alert!("Modules linked in: [last unloaded: {module}]");
    crate::pr_alert!(
        "module {module} was unloaded while its kernel thread {} still ran its code ({how}): \
         its exit did not wait for the thread to end",
        k.comm
    );
    crate::pr_alert!("---[ end trace 0000000000000000 ]---");
}
