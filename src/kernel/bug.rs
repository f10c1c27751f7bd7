//! BUG and WARNING reports and the taint they leave (the kernel's `lib/bug.c`, `add_taint`).
//!
//! The debug checks of the runtime report in the kernel's words and taint the kernel; the daemon
//! exits 1 when it is tainted ([`crate::daemon`]). What taints:
//! - an allocation in softirq context (the kernel's `might_sleep()` in `kmalloc(GFP_KERNEL)`),
//!   reported when it happens, naming the handler that runs ([`softirq_allocation`]);
//! - a WARNING of the timer or workqueue code ([`warn_at`]): `mod_timer` on a timer never set
//!   up, `del_timer_sync` from the timer's own handler, ...;
//! - task references still held after a module's exit (a kmemleak-style report,
//!   [`crate::kernel::task::check_leaks`]).
//!
//! Exercise 4's "sleeping function called from invalid context" in a timer (a blocking call in
//! softirq context, [`crate::kernel::sched::might_sleep`]) is the lab's expected outcome and
//! does not taint.
//!
//! # Ground rules
//! Everything here runs in any context, softirq included: atomics, a `const` thread-local and the
//! lock-free printk ring; no allocation, no lock.

use std::cell::Cell;
use std::panic::Location;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

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

/// The deferred function running on this thread in softirq context, for the reports.
#[derive(Clone, Copy)]
pub struct Handler {
    /// `timer` or `tasklet`.
    pub kind: &'static str,
    /// The type of the data it was set up with.
    pub data: &'static str,
    /// Where it was set up (`timer_setup`, `tasklet_setup`).
    pub setup: &'static Location<'static>,
}

thread_local! {
    static HANDLER: Cell<Option<Handler>> = const { Cell::new(None) };
}

/// Runs `f` as `handler` (the softirq runner wraps each timer and tasklet call in it).
pub(crate) fn running<R>(handler: Handler, f: impl FnOnce() -> R) -> R {
    let prev = HANDLER.with(|h| h.replace(Some(handler)));
    let r = f();
    HANDLER.with(|h| h.set(prev));
    r
}

/// The handler running on this thread, if any.
pub fn current_handler() -> Option<Handler> {
    HANDLER.with(Cell::get)
}

/// Prints `in <kind> handler (data <type>, set up at <file:line>)`, or the context when no
/// handler is known.
fn print_handler(level: crate::kernel::printk::Level) {
    match current_handler() {
        Some(h) => crate::kernel::printk::printk(
            level,
            format_args!(
                "in the {} handler of the {} {} set up at {}:{}",
                h.kind,
                h.kind,
                h.data,
                h.setup.file(),
                h.setup.line()
            ),
        ),
        None => crate::kernel::printk::printk(
            level,
            format_args!("in softirq context (no timer or tasklet handler running)"),
        ),
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
    let site = current_handler().map_or(0, |h| h.setup as *const Location<'static> as usize);
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
    print_handler(crate::kernel::printk::Level::Err);
}

/// The kernel's `WARN()`: a cut-here block, the WARNING line with the kernel's source
/// location and function, what went wrong, the caller and the running handler; taints.
/// Any context.
pub fn warn_at(kernel_at: &str, what: &str, caller: &Location<'_>) {
    add_taint(TAINT_WARN);
    let t = sched::current();
    crate::pr_warn!("------------[ cut here ]------------");
    crate::pr_warn!("WARNING: CPU: 0 PID: {} at {}", t.pid(), kernel_at);
    crate::pr_warn!("{what}");
    crate::pr_warn!("called at {}:{}", caller.file(), caller.line());
    if current_handler().is_some() {
        print_handler(crate::kernel::printk::Level::Warning);
    }
    crate::pr_warn!("---[ end trace 0000000000000000 ]---");
}
