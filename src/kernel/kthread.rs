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
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering::SeqCst};
use std::cell::Cell;
use std::sync::{Arc, Mutex};
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
    if !sched::might_sleep() {
        return Err(Error::EWOULDBLOCK);
    }
    let comm = sched::comm_truncate(&std::fmt::format(name)).to_owned();
    let inner = Arc::new(Kthread {
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
    Ok(TaskStruct { inner })
}

/// The body of every kthread: publish, wait to be woken, run `threadfn`, publish the result.
fn kthread_main<F, D>(me: Arc<Kthread>, threadfn: F, data: D)
where
    F: FnOnce(D) -> i32,
{
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
