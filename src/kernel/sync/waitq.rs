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

use super::atomic::{AtomicU32, Ordering::SeqCst, fence};
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

    /// The sequence word (a thread's wake-up slot names it while its owner sleeps here).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn seq(&self) -> &AtomicU32 {
        &self.seq
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

#[cfg(all(test, loom))]
mod loom_tests {
    use super::WaitQueueHead;
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
