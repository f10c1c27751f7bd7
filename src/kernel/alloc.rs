//! A counting allocator: catches allocation in softirq context.
//!
//! Code in softirq context (the timer signal's handler, `ksoftirqd/0`, softirqs run at
//! `local_bh_enable`) must never allocate or free: `malloc` is not async-signal-safe. This
//! wrapper around [`System`] counts every allocator call made while the calling thread is in
//! hard or soft interrupt context (its preemption count says so: a `const` thread-local, so the
//! check itself never allocates). Test binaries and the daemon install it:
//!
//! ```
//! #[global_allocator]
//! static ALLOC: deferred::kernel::alloc::CountingAllocator = deferred::kernel::alloc::CountingAllocator;
//!
//! fn main() {
//!     let v = vec![0u8; 64]; // process context: allowed, not counted
//!     drop(v);
//!     assert_eq!(deferred::kernel::alloc::softirq_allocations(), 0);
//! }
//! ```
//!
//! and the tests assert [`softirq_allocations()`] reads 0 after stress. Each allocation in
//! interrupt context is also reported when it happens (see [`crate::kernel::bug`]).
//!
//! # A panic in softirq context
//! std formats a panic's message into a `String` before it calls the panic hook. While a thread
//! in softirq context panics (the runtime's hook then reports the Oops and ends the process,
//! see [`crate::kernel::panic`]), its allocations come from a static emergency buffer instead
//! of `malloc`: a lock-free bump allocator whose frees do nothing. They are not heap
//! allocations and are not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::kernel::panic::in_irq_context;

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

/// Size of the emergency buffer (a panic message and its `String`'s growth fit many times).
const EMERGENCY_SIZE: usize = 64 * 1024;

#[repr(C, align(64))]
struct Emergency {
    buf: UnsafeCell<[u8; EMERGENCY_SIZE]>,
    used: AtomicUsize,
}

// SAFETY: disjoint ranges of `buf` are handed out by a CAS on `used`; each is written only by
// the allocation's owner.
unsafe impl Sync for Emergency {}

static EMERGENCY: Emergency = Emergency {
    buf: UnsafeCell::new([0; EMERGENCY_SIZE]),
    used: AtomicUsize::new(0),
};

/// This thread panics in softirq context: allocations go to the emergency buffer.
#[inline]
fn panicking_in_irq() -> bool {
    in_irq_context() && std::thread::panicking()
}

/// A fresh (zeroed: never handed out before) block of the emergency buffer, or null when it is
/// used up. Lock-free, async-signal-safe.
fn emergency_alloc(layout: Layout) -> *mut u8 {
    let base = EMERGENCY.buf.get() as usize;
    let mut used = EMERGENCY.used.load(Ordering::Relaxed);
    loop {
        let start = (base + used).next_multiple_of(layout.align()) - base;
        let end = start + layout.size();
        if end > EMERGENCY_SIZE {
            return std::ptr::null_mut();
        }
        match EMERGENCY
            .used
            .compare_exchange(used, end, Ordering::Relaxed, Ordering::Relaxed)
        {
            // SAFETY: `start..end` lies within the buffer and is ours alone (the CAS).
            Ok(_) => return unsafe { EMERGENCY.buf.get().cast::<u8>().add(start) },
            Err(u) => used = u,
        }
    }
}

fn in_emergency(ptr: *mut u8) -> bool {
    let base = EMERGENCY.buf.get() as usize;
    (base..base + EMERGENCY_SIZE).contains(&(ptr as usize))
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the GlobalAlloc contract;
// the counting touches only atomics and a const thread-local (no allocation, no recursion).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        if panicking_in_irq() {
            return emergency_alloc(layout);
        }
        if in_irq_context() {
            softirq_alloc(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        if panicking_in_irq() {
            return emergency_alloc(layout);
        }
        if in_irq_context() {
            softirq_alloc(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_emergency(ptr) {
            return;
        }
        if in_irq_context() {
            SOFTIRQ_FREES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if in_emergency(ptr) || panicking_in_irq() {
            // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
            let new = emergency_alloc(unsafe {
                Layout::from_size_align_unchecked(new_size, layout.align())
            });
            if !new.is_null() {
                // SAFETY: both blocks are valid for the smaller size and do not overlap (the
                // new one was never handed out before).
                unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            }
            return new;
        }
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
