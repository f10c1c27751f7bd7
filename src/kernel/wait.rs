//! Wait queues: `wait_queue_head_t`, `wait_event*()` and `wake_up*()`.
//!
//! A process-context thread sleeps until a condition becomes true; whoever makes it true calls
//! `wake_up()` on the same queue, from process context or from softirq context (a timer, a
//! tasklet: the timer signal's handler).
//!
//! | C                                                | Rust                                   |
//! |--------------------------------------------------|----------------------------------------|
//! | `DECLARE_WAIT_QUEUE_HEAD(wq);`                   | `static WQ: WaitQueueHead = WaitQueueHead::new();` |
//! | `init_waitqueue_head(&wq)`                       | `WaitQueueHead::new()`                 |
//! | `wait_event(wq, cond)`                           | `wait_event(&wq, \|\| cond)`           |
//! | `wait_event_interruptible(wq, cond)` (0/-ERESTARTSYS) | `wait_event_interruptible(&wq, \|\| cond)` (`Ok`/`Err(ERESTARTSYS)`) |
//! | `wait_event_timeout(wq, cond, timeout)`          | `wait_event_timeout(&wq, \|\| cond, timeout)` |
//! | `wake_up(&wq)`, `wake_up_interruptible(&wq)`, `wake_up_all(&wq)` | same names        |
//!
//! # The model
//! The kernel keeps a list of sleeping tasks under a spin lock. Here a queue is a 32-bit
//! *sequence word* that every wake-up bumps, plus a count of sleepers, and sleeping is
//! `futex(FUTEX_WAIT)` on the sequence word while it still holds the value read before the last
//! check of the condition: the algorithm, and why no wake-up is lost, is
//! [`crate::kernel::sync::waitq`] (model-checked under loom). The waker skips the system call
//! when nobody sleeps. A signal interrupting `futex_wait` (EINTR) just goes round the loop.
//!
//! Every waiter re-checks its own condition, so `wake_up` wakes all sleepers of the queue (the
//! kernel's non-exclusive waiters): `wake_up`, `wake_up_interruptible` and `wake_up_all` do the
//! same thing here. Waking an uninterruptible sleeper from `wake_up_interruptible` is a spurious
//! wake-up it absorbs by re-checking its condition.
//!
//! # `wake_up_process` and interruptions
//! A kthread ([`crate::kernel::kthread`]) owns a [`WaitSlot`]: while it sleeps in any `wait_event*`
//! the slot names the sequence word it sleeps on, so `wake_up_process()`/`kthread_stop()` can wake
//! it out of any queue and make it re-evaluate its condition, as the kernel's
//! `wake_up_process()` does. What interrupts `wait_event_interruptible` (the kernel: a pending
//! signal) is, for a userspace kthread, a pending `kthread_stop()`: it returns
//! `Err(ERESTARTSYS)` then, so `wait_event_interruptible(&wq, || cond)` in a kthread loop ends
//! when the kthread is stopped even if `cond` never forgets `kthread_should_stop()`. Threads that
//! are not kthreads are never interrupted (the runtime's signals are its own, not the process's).
//!
//! # Contexts
//! - `wait_event*`: process context only. They call `might_sleep()` first; in atomic context
//!   that prints the kernel's BUG report and the call returns at once without sleeping
//!   (`wait_event` returns, `wait_event_interruptible` returns `Err(ERESTARTSYS)`,
//!   `wait_event_timeout` returns what it would return on a timeout after one check).
//! - `wake_up*`, `WaitSlot::kick`: any context, softirq (signal handler) included.
//!
//! # Ground rules (shared with signal context)
//! - [`WaitQueueHead`]: `seq` and `sleepers` are atomics; a waker only increments `seq`, reads
//!   `sleepers` and calls `futex(FUTEX_WAKE)`: no lock, no allocation, errno saved and restored.
//! - [`WaitSlot`]: a one-slot hazard pointer to the queue its owner sleeps on, so that a kicker
//!   never touches a queue that has gone ([`crate::kernel::sync::waitq::WaitSlot`]).

use core::ops::ControlFlow;
use core::ptr;
use std::cell::Cell;

use super::error::{Error, Result};
use super::{jiffies, kthread, sched};

pub use super::error::ERESTARTSYS;

/// `wait_queue_head_t`: where threads sleep until a condition holds.
///
/// Const-constructible (`DECLARE_WAIT_QUEUE_HEAD`): `static WQ: WaitQueueHead = WaitQueueHead::new();`.
/// Its sequence word and sleep loop live in [`crate::kernel::sync::waitq`] (model-checked).
pub use super::sync::waitq::WaitQueueHead;

/// `wake_up(&wq)`: wakes the queue's sleepers; each re-checks its condition.
/// Any context, signal handler included.
pub fn wake_up(wq: &WaitQueueHead) {
    wq.wake();
}

/// `wake_up_interruptible(&wq)`: as [`wake_up`] (see the module docs).
pub fn wake_up_interruptible(wq: &WaitQueueHead) {
    wq.wake();
}

/// `wake_up_all(&wq)`: as [`wake_up`] (there are no exclusive waiters here).
pub fn wake_up_all(wq: &WaitQueueHead) {
    wq.wake();
}

/// `wait_event(wq, condition)`: sleeps until `cond()` is true. Process context.
///
/// `cond` is evaluated in the caller's thread, before sleeping and after every wake-up.
/// In atomic context: the BUG report, then returns at once.
#[track_caller]
pub fn wait_event(wq: &WaitQueueHead, cond: impl FnMut() -> bool) {
    if !sched::might_sleep() {
        return;
    }
    let _ = wait_common(wq, cond, false, None);
}

/// `wait_event_interruptible(wq, condition)`: as [`wait_event`], but a pending `kthread_stop()`
/// of the calling kthread interrupts it: `Err(Error::ERESTARTSYS)`, as the kernel returns `-ERESTARTSYS`.
/// A true condition wins over a pending stop.
#[track_caller]
pub fn wait_event_interruptible(wq: &WaitQueueHead, cond: impl FnMut() -> bool) -> Result {
    if !sched::might_sleep() {
        return Err(Error::ERESTARTSYS);
    }
    match wait_common(wq, cond, true, None) {
        WaitResult::Condition(_) => Ok(()),
        WaitResult::Interrupted => Err(Error::ERESTARTSYS),
        WaitResult::TimedOut => unreachable!("no timeout given"),
    }
}

/// `wait_event_timeout(wq, condition, timeout)`: sleeps until `cond()` is true or `timeout`
/// jiffies have passed. Returns 0 if the timeout elapsed with `cond` false, otherwise the
/// remaining jiffies, at least 1 (the kernel's contract).
///
/// In atomic context: the BUG report, then one check of `cond` without sleeping.
#[track_caller]
pub fn wait_event_timeout(wq: &WaitQueueHead, mut cond: impl FnMut() -> bool, timeout: u64) -> u64 {
    if !sched::might_sleep() {
        return u64::from(cond());
    }
    let deadline = jiffies::jiffies().wrapping_add(timeout);
    match wait_common(wq, cond, false, Some(deadline)) {
        WaitResult::Condition(remaining) => remaining,
        WaitResult::TimedOut | WaitResult::Interrupted => 0,
    }
}

/// `wait_event_interruptible_timeout`: both of the above. `Ok(remaining)` as
/// [`wait_event_timeout`]; `Err(Error::ERESTARTSYS)` on a pending `kthread_stop()`.
#[track_caller]
pub fn wait_event_interruptible_timeout(
    wq: &WaitQueueHead,
    mut cond: impl FnMut() -> bool,
    timeout: u64,
) -> Result<u64> {
    if !sched::might_sleep() {
        return if cond() {
            Ok(1)
        } else {
            Err(Error::ERESTARTSYS)
        };
    }
    let deadline = jiffies::jiffies().wrapping_add(timeout);
    match wait_common(wq, cond, true, Some(deadline)) {
        WaitResult::Condition(remaining) => Ok(remaining),
        WaitResult::TimedOut => Ok(0),
        WaitResult::Interrupted => Err(Error::ERESTARTSYS),
    }
}

enum WaitResult {
    /// The condition held; remaining jiffies (>= 1) when a deadline was given.
    Condition(u64),
    TimedOut,
    Interrupted,
}

/// The sleep loop shared by every `wait_event*`.
fn wait_common(
    wq: &WaitQueueHead,
    mut cond: impl FnMut() -> bool,
    interruptible: bool,
    deadline: Option<u64>,
) -> WaitResult {
    // Fast path: no registration when the condition already holds. During a module's exit, a
    // thread of the module leaving a wait waits for its turn first (`kthread::unload`).
    if cond() {
        kthread::sched_in();
        return WaitResult::Condition(deadline.map_or(0, remaining));
    }
    let slot = current_slot();
    let _registration = Registration::new(wq, slot);
    // During a module's exit a check runs in the thread's turn, and the turn is taken again
    // after the check that ends the wait: a check begun before the exit started may find the
    // condition true only once the exit has made it so (the exit has the turn then).
    wq.wait_loop(|| {
        kthread::sched_in();
        let r = check(&mut cond, slot, interruptible, deadline);
        if r.is_continue() {
            kthread::sched_out();
        } else {
            kthread::sched_in();
        }
        r
    })
}

/// One check of a sleeper's condition, interruption and deadline.
fn check(
    mut cond: impl FnMut() -> bool,
    slot: Option<&WaitSlot>,
    interruptible: bool,
    deadline: Option<u64>,
) -> ControlFlow<WaitResult, Option<u64>> {
    if cond() {
        return ControlFlow::Break(WaitResult::Condition(deadline.map_or(0, remaining)));
    }
    if interruptible && slot.is_some_and(WaitSlot::interrupted) {
        return ControlFlow::Break(WaitResult::Interrupted);
    }
    match deadline {
        None => ControlFlow::Continue(None),
        Some(d) if jiffies::time_after_eq(jiffies::jiffies(), d) => {
            ControlFlow::Break(WaitResult::TimedOut)
        }
        Some(d) => ControlFlow::Continue(Some(jiffies::jiffies_to_monotonic_ns(d))),
    }
}

/// Remaining jiffies before `deadline`, at least 1 (the condition held in time).
fn remaining(deadline: u64) -> u64 {
    let left = deadline.wrapping_sub(jiffies::jiffies()) as i64;
    left.max(1) as u64
}

/// A sleeper's registration in its [`WaitSlot`] (the queue counts its sleepers itself); undone
/// on every exit path.
struct Registration<'a> {
    slot: Option<&'a WaitSlot>,
}

impl<'a> Registration<'a> {
    fn new(wq: &'a WaitQueueHead, slot: Option<&'a WaitSlot>) -> Self {
        if let Some(slot) = slot {
            slot.enter(wq);
        }
        Self { slot }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.leave();
        }
    }
}

/// A thread's wake-up slot: lets another thread (or a signal handler) wake it out of whatever
/// `wait_event*` it sleeps in, as the kernel's `wake_up_process()` does, and interrupt its
/// `wait_event_interruptible`. Owned by a kthread; its algorithm (a one-slot hazard pointer) is
/// in [`crate::kernel::sync::waitq`], model-checked.
pub use super::sync::waitq::WaitSlot;

thread_local! {
    /// The calling thread's wake-up slot (kthreads only), set by [`set_current_slot`].
    /// Const-initialised: touching it never allocates.
    static CURRENT_SLOT: Cell<*const WaitSlot> = const { Cell::new(ptr::null()) };
}

/// Installs `slot` as the calling thread's wake-up slot (null: none).
///
/// # Safety
/// `slot` must stay valid until this thread calls `set_current_slot(null)` or exits, whichever
/// comes first (the kthread keeps its own `Arc` alive for its whole run).
pub(crate) unsafe fn set_current_slot(slot: *const WaitSlot) {
    CURRENT_SLOT.with(|c| c.set(slot));
}

fn current_slot<'a>() -> Option<&'a WaitSlot> {
    let p = CURRENT_SLOT.with(Cell::get);
    // SAFETY: per `set_current_slot`'s contract the slot outlives every use on this thread, and
    // the returned reference is only used during the current wait, on this thread.
    unsafe { p.as_ref() }
}
