//! Spin locks: `spin_lock` for softirq context, `spin_lock_bh` for process context.
//!
//! The lab's rule (the lab text, "Locking"): data shared between process context (A) and softirq
//! context (B) is protected in A with `spin_lock_bh` (the lock *and* bottom halves off on this
//! thread, so the timer handler cannot interrupt the holder and spin on its lock for ever) and
//! in B with plain `spin_lock`.
//!
//! ```
//! use deferred::kernel::spinlock::SpinLock;
//! use deferred::kernel::timer::{Timer, TimerList};
//!
//! static EVENTS: SpinLock<Vec<u32>> = SpinLock::new("events_lock", Vec::new());
//!
//! fn timer_handler(_t: &Timer<()>) {
//!     let ev = EVENTS.lock();                 // timer handler: softirq context
//!     let _ = ev.len();
//! }
//!
//! deferred::kernel::start()?;
//! let timer = TimerList::new(timer_handler, ());
//! timer.mod_timer(deferred::kernel::jiffies::jiffies() + 1);
//! { let mut ev = EVENTS.lock_bh(); ev.push(1); }   // process context: bottom halves off
//! timer.del_timer_sync();
//! assert_eq!(*EVENTS.lock_bh(), [1]);
//! # Ok::<(), deferred::kernel::error::Error>(())
//! ```
//!
//! Guards are `#[must_use]` and not `Send`: the unlock (and the `local_bh_enable`) cannot be
//! forgotten and happens on the thread that locked. Taking a lock disables preemption, so
//! `might_sleep()` under a lock reports "scheduling while atomic" as the kernel does.
//!
//! Each lock has a lockdep class named by its static name ([`crate::kernel::lockdep`]): a lock
//! taken in a timer handler and with `spin_lock` (bottom halves enabled) in process context is
//! reported once, before it can deadlock.
//!
//! # Ground rules (shared with signal context)
//! `locked` and `owner` are atomics (acquire/release on `locked`); the data is reached only
//! through a guard. Waiting spins, yielding the CPU now and then (a holder on another thread
//! may be descheduled). Lock, unlock and the lockdep check are async-signal-safe.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::kernel::lockdep::LockClass;
use crate::kernel::{sched, softirq};

/// `spinlock_t` protecting a `T`.
pub struct SpinLock<T: ?Sized> {
    locked: AtomicBool,
    owner: AtomicI32,
    class: LockClass,
    recursion_reported: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, which exists on one thread at a time
// (the `locked` flag, acquire/release); T: Send suffices as for std's Mutex.
unsafe impl<T: ?Sized + Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the data; T: Send.
unsafe impl<T: ?Sized + Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// `DEFINE_SPINLOCK` / `spin_lock_init`: a new unlocked lock whose lockdep class is `name`.
    pub const fn new(name: &'static str, value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            owner: AtomicI32::new(0),
            class: LockClass::new(name),
            recursion_reported: AtomicBool::new(false),
            data: UnsafeCell::new(value),
        }
    }

    /// Consume the lock, returning the data.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> SpinLock<T> {
    /// The lock's lockdep class.
    pub fn class(&self) -> &LockClass {
        &self.class
    }

    /// Mutable access without locking (we have the only reference).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    fn raw_lock(&self, site: &'static Location<'static>) {
        self.class
            .acquire(self as *const Self as *const () as usize, site);
        let me = sched::gettid();
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            if self.owner.load(Ordering::Relaxed) == me
                && !self.recursion_reported.swap(true, Ordering::Relaxed)
            {
                let t = sched::current();
                crate::pr_emerg!("BUG: spinlock recursion on CPU#0, {}/{}", t.comm(), t.pid());
                crate::pr_emerg!(
                    " lock: {}, .magic: dead4ead, .owner: {}/{}, .owner_cpu: 0",
                    self.class.name(),
                    t.comm(),
                    t.pid()
                );
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                // SAFETY: plain syscall, async-signal-safe in practice.
                unsafe { libc::sched_yield() };
            } else {
                std::hint::spin_loop();
            }
        }
        self.owner.store(me, Ordering::Relaxed);
    }

    /// `spin_lock`: take the lock (preemption disabled while held). Use it in softirq context,
    /// or in process context for data no softirq touches.
    #[track_caller]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        sched::preempt_disable();
        self.raw_lock(Location::caller());
        SpinLockGuard {
            lock: self,
            bh: false,
            _not_send: PhantomData,
        }
    }

    /// `spin_lock_bh`: disable bottom halves on this thread, then take the lock. Use it in
    /// process context for data shared with a timer or tasklet.
    #[track_caller]
    pub fn lock_bh(&self) -> SpinLockGuard<'_, T> {
        softirq::local_bh_disable();
        sched::preempt_disable();
        self.raw_lock(Location::caller());
        SpinLockGuard {
            lock: self,
            bh: true,
            _not_send: PhantomData,
        }
    }

    /// `spin_trylock`: take the lock if it is free.
    #[track_caller]
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        sched::preempt_disable();
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            sched::preempt_enable();
            return None;
        }
        self.class.acquire(
            self as *const Self as *const () as usize,
            Location::caller(),
        );
        self.owner.store(sched::gettid(), Ordering::Relaxed);
        Some(SpinLockGuard {
            lock: self,
            bh: false,
            _not_send: PhantomData,
        })
    }

    /// Held right now (by anyone).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// A held spin lock; unlocks (`spin_unlock` / `spin_unlock_bh`) when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SpinLockGuard<'a, T: ?Sized> {
    lock: &'a SpinLock<T>,
    bh: bool,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing a guard only shares `&T` (T: Sync), as std's MutexGuard.
unsafe impl<T: ?Sized + Sync> Sync for SpinLockGuard<'_, T> {}

impl<T: ?Sized> std::ops::Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> std::ops::DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, and `&mut self` makes this the only access.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for SpinLockGuard<'_, T> {
    #[track_caller]
    fn drop(&mut self) {
        self.lock.owner.store(0, Ordering::Relaxed);
        self.lock.locked.store(false, Ordering::Release);
        sched::preempt_enable();
        if self.bh {
            softirq::local_bh_enable();
        }
    }
}

/// `spin_lock(&lock)`.
#[track_caller]
pub fn spin_lock<T: ?Sized>(lock: &SpinLock<T>) -> SpinLockGuard<'_, T> {
    lock.lock()
}

/// `spin_lock_bh(&lock)`.
#[track_caller]
pub fn spin_lock_bh<T: ?Sized>(lock: &SpinLock<T>) -> SpinLockGuard<'_, T> {
    lock.lock_bh()
}
