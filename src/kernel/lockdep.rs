//! lockdep, the part the lab needs: softirq-safe / softirq-unsafe lock usage.
//!
//! Each [`LockClass`] (one per `SpinLock`, named by its static name) records two usage bits, as
//! the kernel's `kernel/locking/lockdep.c` does:
//! - `IN-SOFTIRQ-W`: the lock was taken in softirq context (a timer or tasklet handler);
//! - `SOFTIRQ-ON-W`: the lock was taken in process context with bottom halves enabled
//!   (`spin_lock` instead of `spin_lock_bh`) and interrupts enabled (not under
//!   `local_irq_save`, which keeps softirqs off the thread as well).
//!
//! A class that gets both can deadlock: the timer signal interrupts the process-context holder
//! on its own thread, and the handler spins for ever on the lock its own thread holds. lockdep
//! reports it the first time both bits are seen, *before* anything deadlocks, once per class,
//! with the kernel's wording ("WARNING: inconsistent lock state", "inconsistent {IN-SOFTIRQ-W}
//! -> {SOFTIRQ-ON-W} usage.", the "Possible unsafe locking scenario" and "*** DEADLOCK ***").
//!
//! # Ground rules (shared with signal context)
//! Usage bits, the report-once flag and the first site of each usage are atomics (the sites are
//! `&'static Location`s stored as pointers): the check is lock-free, allocation-free and
//! async-signal-safe, and so is the report (printk).

use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use crate::kernel::sched::{self, HARDIRQ_MASK, SOFTIRQ_MASK, SOFTIRQ_OFFSET};
use crate::kernel::softirq;

const USED_IN_SOFTIRQ: u32 = 1;
const ENABLED_SOFTIRQ: u32 = 2;

/// The kernel's `usage_str` for the two bits we track.
const IN_SOFTIRQ_W: &str = "IN-SOFTIRQ-W";
const SOFTIRQ_ON_W: &str = "SOFTIRQ-ON-W";

/// A lock class: a static name and its usage state.
pub struct LockClass {
    name: &'static str,
    usage: AtomicU32,
    in_softirq_site: AtomicPtr<Location<'static>>,
    softirq_on_site: AtomicPtr<Location<'static>>,
    reported: AtomicBool,
}

impl LockClass {
    /// A new class with no usage yet.
    pub const fn new(name: &'static str) -> Self {
        LockClass {
            name,
            usage: AtomicU32::new(0),
            in_softirq_site: AtomicPtr::new(std::ptr::null_mut()),
            softirq_on_site: AtomicPtr::new(std::ptr::null_mut()),
            reported: AtomicBool::new(false),
        }
    }

    /// The class name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Taken in softirq context so far.
    pub fn used_in_softirq(&self) -> bool {
        self.usage.load(Ordering::SeqCst) & USED_IN_SOFTIRQ != 0
    }

    /// Taken with softirqs enabled in process context so far.
    pub fn softirq_on(&self) -> bool {
        self.usage.load(Ordering::SeqCst) & ENABLED_SOFTIRQ != 0
    }

    /// An inconsistency was reported for this class.
    pub fn reported(&self) -> bool {
        self.reported.load(Ordering::SeqCst)
    }

    /// Record an acquisition of a lock of this class at `site`, in the current context, and
    /// report an inconsistent usage once. `instance` is the lock's address (for the report).
    /// Any context.
    pub fn acquire(&self, instance: usize, site: &'static Location<'static>) {
        let pc = sched::preempt_count();
        let (new_bit, bad_bit) = if pc & SOFTIRQ_OFFSET != 0 {
            (USED_IN_SOFTIRQ, ENABLED_SOFTIRQ)
        } else if pc & (SOFTIRQ_MASK | HARDIRQ_MASK) == 0 && !softirq::irqs_disabled() {
            (ENABLED_SOFTIRQ, USED_IN_SOFTIRQ)
        } else {
            // Process context with bottom halves disabled (spin_lock_bh), or with interrupts
            // disabled (local_irq_save: no softirq can run on this thread either, and the
            // kernel's mark_irqflags marks no *-ON usage with hardirqs off): safe either way.
            return;
        };
        let site_slot = if new_bit == USED_IN_SOFTIRQ {
            &self.in_softirq_site
        } else {
            &self.softirq_on_site
        };
        let _ = site_slot.compare_exchange(
            std::ptr::null_mut(),
            site as *const Location<'static> as *mut Location<'static>,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        let prev = self.usage.fetch_or(new_bit, Ordering::SeqCst);
        if prev & bad_bit != 0 && !self.reported.swap(true, Ordering::SeqCst) {
            self.print_usage_bug(instance, site, bad_bit, new_bit);
        }
    }

    fn print_usage_bug(
        &self,
        instance: usize,
        site: &'static Location<'static>,
        prev_bit: u32,
        new_bit: u32,
    ) {
        let usage_str = |b: u32| {
            if b == USED_IN_SOFTIRQ {
                IN_SOFTIRQ_W
            } else {
                SOFTIRQ_ON_W
            }
        };
        let t = sched::current();
        let pc = sched::preempt_count();
        let prev_site = if prev_bit == USED_IN_SOFTIRQ {
            &self.in_softirq_site
        } else {
            &self.softirq_on_site
        };
        let prev_site = prev_site.load(Ordering::SeqCst);
        crate::pr_warn!("");
        crate::pr_warn!("================================");
        crate::pr_warn!("WARNING: inconsistent lock state");
        crate::pr_warn!("deferred-{} #1 Not tainted", env!("CARGO_PKG_VERSION"));
        crate::pr_warn!("--------------------------------");
        crate::pr_warn!(
            "inconsistent {{{}}} -> {{{}}} usage.",
            usage_str(prev_bit),
            usage_str(new_bit)
        );
        crate::pr_warn!(
            "{}/{} [HC{}[{}]:SC{}[{}]:HE{}:SE{}] takes:",
            t.comm(),
            t.pid(),
            u32::from(pc & HARDIRQ_MASK != 0),
            (pc & HARDIRQ_MASK) >> 16,
            u32::from(pc & SOFTIRQ_OFFSET != 0),
            (pc & SOFTIRQ_MASK) >> 8,
            1,
            u32::from(pc & SOFTIRQ_MASK == 0)
        );
        crate::pr_warn!(
            "{:016x} ({}){{+.?.}}-{{2:2}}, at: {}:{}",
            instance,
            self.name,
            site.file(),
            site.line()
        );
        crate::pr_warn!("{{{}}} state was registered at:", usage_str(prev_bit));
        if prev_site.is_null() {
            crate::pr_warn!("  (unknown)");
        } else {
            // SAFETY: only `&'static Location` pointers are stored in the site slots.
            let ps = unsafe { &*prev_site };
            crate::pr_warn!("  {}:{}", ps.file(), ps.line());
        }
        crate::pr_warn!("");
        crate::pr_warn!("other info that might help us debug this:");
        crate::pr_warn!(" Possible unsafe locking scenario:");
        crate::pr_warn!("");
        crate::pr_warn!("       CPU0");
        crate::pr_warn!("       ----");
        crate::pr_warn!("  lock({});", self.name);
        crate::pr_warn!("  <Interrupt>");
        crate::pr_warn!("    lock({});", self.name);
        crate::pr_warn!("");
        crate::pr_warn!(" *** DEADLOCK ***");
        crate::pr_warn!("");
    }
}
