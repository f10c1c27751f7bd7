//! A counting allocator: catches allocation in softirq context.
//!
//! Code in softirq context (the timer signal's handler, `ksoftirqd/0`, softirqs run at
//! `local_bh_enable`) must never allocate or free: `malloc` is not async-signal-safe. This
//! wrapper around [`System`] counts every allocator call made while the calling thread is in
//! hard or soft interrupt context (its preemption count says so: a `const` thread-local, so the
//! check itself never allocates). Test binaries and the daemon install it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: deferred::kernel::alloc::CountingAllocator = deferred::kernel::alloc::CountingAllocator;
//! ```
//!
//! and the tests assert [`softirq_allocations()`] reads 0 after stress. Each allocation in
//! interrupt context is also reported when it happens (see [`crate::kernel::bug`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::kernel::sched::{self, HARDIRQ_MASK, SOFTIRQ_OFFSET};

static SOFTIRQ_ALLOCS: AtomicU64 = AtomicU64::new(0);
static SOFTIRQ_FREES: AtomicU64 = AtomicU64::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// An allocation in interrupt context: counted, and reported as it happens (the kernel's
/// `might_sleep()` BUG in `kmalloc`, naming the running handler; it taints, see
/// [`crate::kernel::bug`]).
#[cold]
fn softirq_alloc(size: usize) {
    SOFTIRQ_ALLOCS.fetch_add(1, Ordering::Relaxed);
    crate::kernel::bug::softirq_allocation(size);
}

#[inline]
fn mark_installed() {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// Whether [`CountingAllocator`] is the global allocator (it has served an allocation).
pub fn installed() -> bool {
    // Whoever asks has allocated before (the daemon's command line): a global CountingAllocator
    // has seen it.
    INSTALLED.load(Ordering::Relaxed)
}

/// The system allocator, counting calls made in interrupt context.
pub struct CountingAllocator;

#[inline]
fn in_irq_context() -> bool {
    sched::preempt_count() & (HARDIRQ_MASK | SOFTIRQ_OFFSET) != 0
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the GlobalAlloc contract;
// the counting touches only atomics and a const thread-local (no allocation, no recursion).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        if in_irq_context() {
            softirq_alloc(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        if in_irq_context() {
            softirq_alloc(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_irq_context() {
            SOFTIRQ_FREES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if in_irq_context() {
            softirq_alloc(new_size);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations (alloc, alloc_zeroed, realloc) made in softirq or hardirq context so far.
/// Meaningful only where [`CountingAllocator`] is the global allocator.
pub fn softirq_allocations() -> u64 {
    SOFTIRQ_ALLOCS.load(Ordering::Relaxed)
}

/// Frees made in softirq or hardirq context so far.
pub fn softirq_frees() -> u64 {
    SOFTIRQ_FREES.load(Ordering::Relaxed)
}
