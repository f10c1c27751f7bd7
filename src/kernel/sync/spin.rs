//! A raw spin flag: the lock of the timer base (`timer.rs`), taken from process context (with
//! the timer signal blocked on that thread) and from the timer signal's handler on any thread.
//!
//! `lock` is an Acquire CAS and `unlock` a Release store: everything a holder wrote under the
//! lock is seen by the next holder. No allocation, no system call but `sched_yield` while
//! spinning: async-signal-safe.

use super::atomic::{AtomicBool, Ordering};
use super::{const_fn, spin_wait};

/// A spin flag (no data, no guard: the owner of the data pairs `lock` and `unlock`).
#[derive(Debug)]
pub struct SpinFlag {
    locked: AtomicBool,
}

impl SpinFlag {
    const_fn! {
        /// An unlocked flag.
        pub fn new() -> SpinFlag {
            SpinFlag { locked: AtomicBool::new(false) }
        }
    }

    /// Spins until the flag is ours.
    pub fn lock(&self) {
        let mut turn = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spin_wait(turn);
            turn = turn.wrapping_add(1);
        }
    }

    /// Releases the flag taken by [`lock`](Self::lock).
    pub fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

impl Default for SpinFlag {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::SpinFlag;
    use crate::kernel::sync::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    /// Two holders (process context and the handler on another thread) each update data that
    /// only the lock protects: loom checks every access is ordered after the previous holder's
    /// (a data race, or a lost update, fails the model).
    #[test]
    fn the_lock_orders_its_holders() {
        loom::model(|| {
            let shared = Arc::new((SpinFlag::new(), UnsafeCell::new(0u32)));
            let other = {
                let shared = shared.clone();
                thread::spawn(move || {
                    shared.0.lock();
                    // SAFETY: the flag is held.
                    shared.1.with_mut(|p| unsafe { *p += 1 });
                    shared.0.unlock();
                })
            };
            shared.0.lock();
            // SAFETY: the flag is held.
            shared.1.with_mut(|p| unsafe { *p += 1 });
            shared.0.unlock();
            other.join().unwrap();
            shared.0.lock();
            // SAFETY: the flag is held.
            assert_eq!(shared.1.with(|p| unsafe { *p }), 2);
            shared.0.unlock();
        });
    }
}
