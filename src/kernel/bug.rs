//! BUG and WARNING reports and the taint they leave (the kernel's `lib/bug.c`, `add_taint`).
//!
//! The debug checks of the runtime report in the kernel's words and taint the kernel; the daemon
//! exits 1 when it is tainted ([`crate::daemon`]). What taints:
//! - an allocation in softirq context (the kernel's `might_sleep()` in `kmalloc(GFP_KERNEL)`),
//!   reported when it happens, naming the handler that runs (`softirq_allocation`);
//! - a WARNING ([`crate::kernel::panic::warn_at`]): `mod_timer` on a timer never set up,
//!   `del_timer_sync` from the timer's own handler, ...; a workqueue flushed from its own work
//!   (lockdep's recursive locking, [`crate::kernel::workqueue`]);
//! - task references still held after a module's exit (a kmemleak-style report,
//!   [`crate::kernel::task::check_leaks`]);
//! - a module's kernel thread still running the module's code when its exit returns (the
//!   kernel's page fault Oops in that thread, [`crate::kernel::kthread`]'s `unload`);
//! - a module's exit or kernel thread running its code for 10 s while another waits for its
//!   turn during the unload (the watchdog's soft lockup).
//!
//! Exercise 4's "sleeping function called from invalid context" in a timer (a blocking call in
//! softirq context, [`crate::kernel::sched::might_sleep`]) is the lab's expected outcome and
//! does not taint.
//!
//! # Ground rules
//! Everything here runs in any context, softirq included: atomics, the guard's `const`
//! thread-local record and the lock-free printk ring; no allocation, no lock.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::kernel::panic::{self, Kind};
use crate::kernel::{jiffies, sched};

/// `TAINT_WARN` ('W'): a WARNING or a BUG was reported.
pub const TAINT_WARN: u32 = 1 << 9;

static TAINTED: AtomicU32 = AtomicU32::new(0);
static REPORTS: AtomicU64 = AtomicU64::new(0);

/// `add_taint(flag)`. Any context.
pub fn add_taint(flag: u32) {
    TAINTED.fetch_or(flag, Ordering::Relaxed);
    REPORTS.fetch_add(1, Ordering::Relaxed);
}

/// The taint flags set so far (0: not tainted).
pub fn tainted() -> u32 {
    TAINTED.load(Ordering::Relaxed)
}

/// How many tainting reports were made.
pub fn reports() -> u64 {
    REPORTS.load(Ordering::Relaxed)
}

/// `print_tainted()`'s letters: `G` when clean, else the flags (`W`).
pub fn taint_string() -> &'static str {
    if tainted() & TAINT_WARN != 0 {
        "W"
    } else {
        "G"
    }
}

/// Prints which handler runs (the runtime's guard records it, [`crate::kernel::panic`]).
fn print_handler() {
    match panic::record() {
        (Kind::None, _, _) => {
            crate::pr_err!("in softirq context (no timer or tasklet handler running)")
        }
        (kind, _, name) => crate::pr_err!("in {} {}", kind.what(), name.unwrap_or("?")),
    }
}

/// The jiffy and the handler (its setup location's address, 0 for none) of the last allocation
/// report: the same handler is reported at most once a second (`__might_resched` ratelimits),
/// another at once.
static LAST_ALLOC_REPORT: AtomicU64 = AtomicU64::new(0);
static LAST_ALLOC_SITE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// An allocation (of `size` bytes) in softirq context, from the counting allocator: the
/// kernel's `might_sleep()` report of `kmalloc(GFP_KERNEL)`, naming the running handler; always
/// taints. Any context: no allocation.
pub(crate) fn softirq_allocation(size: usize) {
    add_taint(TAINT_WARN);
    let now = jiffies::jiffies().max(1);
    // The handler by its name (a `&'static str`: its address identifies it).
    let site = panic::record().2.map_or(0, |n| n.as_ptr() as usize);
    let last = LAST_ALLOC_REPORT.load(Ordering::Relaxed);
    if LAST_ALLOC_SITE.load(Ordering::Relaxed) == site && now.wrapping_sub(last) < jiffies::HZ {
        return;
    }
    if LAST_ALLOC_REPORT
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    LAST_ALLOC_SITE.store(site, Ordering::Relaxed);
    let t = sched::current();
    let count = sched::preempt_count();
    crate::pr_err!("BUG: sleeping function called from invalid context at mm/slab.h:742");
    crate::pr_err!(
        "in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: {}, name: {}",
        t.pid(),
        t.comm()
    );
    crate::pr_err!("preempt_count: {:x}, expected: {:x}", count, 0);
    crate::pr_err!(
        "kmalloc({size}, GFP_KERNEL): memory allocated in softirq context (format!, String, Vec, Box, println! allocate)"
    );
    print_handler();
}
