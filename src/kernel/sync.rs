//! The lock-free cores of the runtime, and the shim that lets [loom] model-check them.
//!
//! Each structure shared with signal context keeps its algorithm here, in a small type the
//! runtime uses as is: the ring of printk and of the trace events and the console's doorbell
//! ([`ring`]), the CPU's bottom-half word ([`bh`]), the timer base's lock ([`spin`]), the
//! anchors of `local_clock` ([`seq`]), the wait queues and the threads' wake-up slots
//! ([`waitq`]), and the work items' state word and the workers' lists ([`work`]). They take
//! their atomics, cells, spin hint and blocking primitive from this module, which names the
//! standard ones (and the `futex(2)` system calls) in a normal build and loom's under
//! `RUSTFLAGS="--cfg loom"`. That build compiles only this module (see `lib.rs`), and its unit
//! tests are loom models that explore every interleaving of a few threads running the real code
//! (README, "Tests", says how to run them).
//!
//! [loom]: https://docs.rs/loom

pub mod bh;
pub mod ring;
pub mod seq;
pub mod spin;
pub mod waitq;
pub mod work;

/// Atomics: `core`'s, or loom's under `cfg(loom)`.
pub mod atomic {
    pub use core::sync::atomic::Ordering;
    #[cfg(not(loom))]
    pub use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, fence};
    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, fence};
}

/// Defines a `const fn` in a normal build and a plain `fn` under loom (whose atomics cannot be
/// built in a constant): the same body either way.
macro_rules! const_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        #[cfg(not(loom))]
        $(#[$m])* $vis const fn $name($($arg: $ty),*) -> $ret $body
        #[cfg(loom)]
        $(#[$m])* $vis fn $name($($arg: $ty),*) -> $ret $body
    };
}
pub(crate) use const_fn;

/// `UnsafeCell` with loom's access API (`with`, `with_mut`), so that loom can check every access
/// to a cell's contents against the happens-before order of the model.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// A cell holding `v`.
    pub const fn new(v: T) -> Self {
        Self(core::cell::UnsafeCell::new(v))
    }

    /// Calls `f` with a pointer for reading the contents.
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a pointer for writing the contents.
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// One turn of a spin-wait loop: a CPU hint, and every 64 turns `sched_yield` (async-signal-safe).
/// Under loom, a yield: loom then runs the other threads instead of spinning forever.
#[inline]
pub fn spin_wait(turn: u32) {
    #[cfg(not(loom))]
    {
        if turn % 64 == 63 {
            // SAFETY: sched_yield has no preconditions (a plain syscall, signal-safe).
            unsafe { libc::sched_yield() };
        } else {
            core::hint::spin_loop();
        }
    }
    #[cfg(loom)]
    {
        let _ = turn;
        loom::thread::yield_now();
    }
}

/// A thread's yield while it waits for another (the standard one, or loom's).
#[inline]
pub fn yield_now() {
    #[cfg(not(loom))]
    std::thread::yield_now();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// The blocking primitive: the futex ([`crate::sys::futex`]), or its model under loom.
#[cfg(not(loom))]
pub(crate) use crate::sys::futex;

/// The blocking primitive under loom: `futex(2)`'s contract built from loom's mutex and condition
/// variable (one wait channel for every word, as the kernel's futex hash bucket lock: a waiter
/// checks the word under the lock, a waker takes the lock after changing the word, so no
/// wake-up is lost; waking everyone is a spurious wake-up for the others, which every caller
/// tolerates by re-checking its condition).
#[cfg(loom)]
pub(crate) mod futex {
    use super::atomic::{AtomicU32, Ordering::SeqCst};
    use loom::sync::{Condvar, Mutex};

    loom::lazy_static! {
        static ref BUCKET: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
    }

    /// Sleeps while `*word == val`, until a wake-up. A deadline means the sleep may end at any
    /// time (a timeout): the model returns at once, which covers every timing of the timeout.
    pub(crate) fn wait(word: &AtomicU32, val: u32, deadline_ns: Option<u64>) {
        if deadline_ns.is_some() {
            loom::thread::yield_now();
            return;
        }
        let (lock, cv) = &*BUCKET;
        let g = lock.lock().unwrap();
        if word.load(SeqCst) == val {
            drop(cv.wait(g).unwrap());
        }
    }

    /// Wakes every sleeper (`n` is not modelled: callers here always wake all).
    pub(crate) fn wake(_word: &AtomicU32, _n: i32) {
        let (lock, cv) = &*BUCKET;
        let _g = lock.lock().unwrap();
        cv.notify_all();
    }
}
