//! The core of a wait queue (`wait.rs`'s `wait_queue_head_t`): a 32-bit sequence word that
//! every wake-up bumps, a count of sleepers, and the sleep loop.
//!
//! ```text
//! waiter                                  waker
//! sleepers += 1                           (make cond true)
//! loop {                                  seq += 1
//!     s = seq                             if sleepers > 0 { futex::wake(&seq, all) }
//!     if cond() { break }
//!     futex::wait(&seq, s)   // returns at once if seq != s
//! }
//! sleepers -= 1
//! ```
//!
//! No wake-up is lost: a waiter that checked `cond` before the waker made it true read `seq`
//! before the waker bumped it, so its `futex_wait` either returns at once (the word changed) or
//! is already asleep and gets woken. The waker's skip (`sleepers == 0`: no system call) is a
//! store-then-load on each side (the waker bumps `seq` then reads `sleepers`; the waiter bumps
//! `sleepers` then reads `seq`), so each side has a `SeqCst` fence between the two: either the
//! waker sees the sleeper, or the waiter sees the bump and, through it, the condition. The waker
//! side is async-signal-safe.

use core::ops::ControlFlow;

use core::ptr;

use super::atomic::{AtomicPtr, AtomicU32, Ordering::SeqCst, fence};
use super::{const_fn, futex};

/// A wait queue's sequence word and sleeper count.
#[derive(Debug, Default)]
pub struct WaitQueueHead {
    /// Bumped by every wake-up; sleepers `futex_wait` on it.
    seq: AtomicU32,
    /// Threads inside a wait on this queue (lets wakers skip the system call).
    sleepers: AtomicU32,
}

impl WaitQueueHead {
    const_fn! {
        /// `init_waitqueue_head` / `DECLARE_WAIT_QUEUE_HEAD`: an empty queue.
        pub fn new() -> WaitQueueHead {
            WaitQueueHead { seq: AtomicU32::new(0), sleepers: AtomicU32::new(0) }
        }
    }

    /// Wakes every sleeper so it re-checks its condition. Async-signal-safe.
    pub fn wake(&self) {
        self.seq.fetch_add(1, SeqCst);
        fence(SeqCst); // between our bump and the load of `sleepers` (module docs)
        if self.sleepers.load(SeqCst) != 0 {
            futex::wake(&self.seq, i32::MAX);
        }
    }

    /// `waitqueue_active`: true if some thread sleeps (or is about to) on this queue.
    pub fn active(&self) -> bool {
        self.sleepers.load(SeqCst) != 0
    }

    /// The sleep loop: registers as a sleeper, then calls `check` after each read of the
    /// sequence word; `Break(r)` ends the wait with `r`, `Continue(deadline)` sleeps until a
    /// wake-up (or the absolute `CLOCK_MONOTONIC` deadline, in ns). Unregisters on every exit,
    /// unwinding included. Process context.
    pub fn wait_loop<R>(&self, mut check: impl FnMut() -> ControlFlow<R, Option<u64>>) -> R {
        struct Sleeper<'a>(&'a AtomicU32);
        impl Drop for Sleeper<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        self.sleepers.fetch_add(1, SeqCst);
        fence(SeqCst); // between our registration and the loads of `seq` (module docs)
        let _sleeper = Sleeper(&self.sleepers);
        loop {
            let s = self.seq.load(SeqCst);
            match check() {
                ControlFlow::Break(r) => return r,
                ControlFlow::Continue(deadline) => futex::wait(&self.seq, s, deadline),
            }
        }
    }
}

/// A thread's wake-up slot: lets another thread (or a signal handler) wake it out of whatever
/// wait it sleeps in (`wake_up_process()`), and interrupt an interruptible wait.
///
/// Ground rules: `waiting_on` names the sequence word of the queue the owner sleeps on, published
/// by the owner only between [`enter`](Self::enter) and [`leave`](Self::leave), i.e. while the
/// queue is borrowed and alive. A kicker announces itself in `kickers` *before* reading
/// `waiting_on`; the owner clears `waiting_on` and then waits for `kickers == 0` before it
/// leaves, so a kicker never touches a queue that has gone (a one-slot hazard pointer). A kicker
/// sets the state the owner checks first, then (fence) reads `waiting_on`; the owner publishes
/// `waiting_on`, then (the fence of [`WaitQueueHead::wait_loop`]) checks that state: either the
/// kicker finds the queue and bumps it, or the owner sees the state.
#[derive(Debug, Default)]
pub struct WaitSlot {
    /// The sequence word of the queue the owner sleeps on, or null.
    waiting_on: AtomicPtr<AtomicU32>,
    /// Kickers between reading `waiting_on` and their last touch of it.
    kickers: AtomicU32,
    /// Non-zero: an interruptible wait returns interrupted (a pending stop).
    interrupt: AtomicU32,
}

impl WaitSlot {
    const_fn! {
        /// An idle slot.
        pub fn new() -> WaitSlot {
            WaitSlot {
                waiting_on: AtomicPtr::new(ptr::null_mut()),
                kickers: AtomicU32::new(0),
                interrupt: AtomicU32::new(0),
            }
        }
    }

    /// The owner is about to wait on `wq` ([`WaitQueueHead::wait_loop`] next). Process context.
    pub fn enter(&self, wq: &WaitQueueHead) {
        self.waiting_on
            .store(ptr::from_ref(&wq.seq).cast_mut(), SeqCst);
    }

    /// The owner's wait is over: after this returns no kicker touches the queue any more.
    pub fn leave(&self) {
        self.waiting_on.store(ptr::null_mut(), SeqCst);
        // A kicker that read `waiting_on` before the store above may still touch the queue's
        // word: wait until it is done (a few instructions and one futex call).
        while self.kickers.load(SeqCst) != 0 {
            super::yield_now();
        }
    }

    /// Wakes the owner out of its current wait, if any, so it re-checks its condition. Set the
    /// state the owner should see (a flag) *before* calling this. Async-signal-safe.
    pub fn kick(&self) {
        self.kickers.fetch_add(1, SeqCst);
        fence(SeqCst); // between the caller's state and the load of `waiting_on` (Ground rules)
        let seq = self.waiting_on.load(SeqCst);
        if !seq.is_null() {
            // SAFETY: `seq` was published by the owner, which is inside its wait on that queue
            // and cannot leave it (nor can the queue be dropped, it is borrowed) until `kickers`
            // drops to 0 after our decrement below.
            let seq = unsafe { &*seq };
            seq.fetch_add(1, SeqCst);
            futex::wake(seq, i32::MAX);
        }
        self.kickers.fetch_sub(1, SeqCst);
    }

    /// Marks the owner interrupted and kicks it.
    pub fn interrupt(&self) {
        self.interrupt.store(1, SeqCst);
        self.kick();
    }

    /// True once [`interrupt`](Self::interrupt) was called.
    pub fn interrupted(&self) -> bool {
        self.interrupt.load(SeqCst) != 0
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::{WaitQueueHead, WaitSlot};
    use crate::kernel::sync::atomic::{AtomicBool, Ordering};
    use core::ops::ControlFlow;
    use loom::sync::Arc;
    use loom::thread;

    fn wait_event(wq: &WaitQueueHead, cond: impl Fn() -> bool) {
        wq.wait_loop(|| {
            if cond() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(None)
            }
        });
    }

    /// A waiter and a waker (the handler making the condition true): the waiter always wakes
    /// (loom reports a deadlock if a wake-up can be lost) and sees the condition.
    #[test]
    fn no_wake_up_is_lost() {
        loom::model(|| {
            let s = Arc::new((WaitQueueHead::new(), AtomicBool::new(false)));
            let waker = {
                let s = s.clone();
                thread::spawn(move || {
                    s.1.store(true, Ordering::Relaxed);
                    s.0.wake();
                })
            };
            wait_event(&s.0, || s.1.load(Ordering::Relaxed));
            waker.join().unwrap();
            assert!(!s.0.active());
        });
    }

    /// `wake_up_process` / `kthread_stop`: a kicker (a flag, then `kick`, or `interrupt`) against
    /// the slot's owner entering, waiting on and leaving a queue that nobody else wakes: the
    /// owner always wakes and sees what the kicker set, and `leave` returns only once the kicker
    /// is done with the queue.
    #[test]
    fn a_kick_always_reaches_the_slots_owner() {
        loom::model(|| {
            let s = Arc::new((
                WaitQueueHead::new(),
                WaitSlot::new(),
                AtomicBool::new(false),
            ));
            let kicker = {
                let s = s.clone();
                thread::spawn(move || {
                    s.2.store(true, Ordering::Relaxed); // kthread_should_stop's flag
                    s.1.kick();
                    s.1.interrupt();
                })
            };
            s.1.enter(&s.0);
            let interrupted = s.0.wait_loop(|| {
                if s.1.interrupted() {
                    ControlFlow::Break(true)
                } else if s.2.load(Ordering::Relaxed) {
                    ControlFlow::Break(false)
                } else {
                    ControlFlow::Continue(None)
                }
            });
            s.1.leave();
            assert!(interrupted || s.2.load(Ordering::Relaxed));
            kicker.join().unwrap();
        });
    }

    /// Two waiters on one queue, two conditions, two wakers: each waiter ends.
    #[test]
    fn every_sleeper_is_woken() {
        loom::model(|| {
            let s = Arc::new((
                WaitQueueHead::new(),
                AtomicBool::new(false),
                AtomicBool::new(false),
            ));
            let w2 = {
                let s = s.clone();
                thread::spawn(move || wait_event(&s.0, || s.2.load(Ordering::Relaxed)))
            };
            let waker = {
                let s = s.clone();
                thread::spawn(move || {
                    s.1.store(true, Ordering::Relaxed);
                    s.0.wake();
                    s.2.store(true, Ordering::Relaxed);
                    s.0.wake();
                })
            };
            wait_event(&s.0, || s.1.load(Ordering::Relaxed));
            w2.join().unwrap();
            waker.join().unwrap();
        });
    }
}
