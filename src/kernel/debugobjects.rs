//! `lib/debugobjects.c`, the part the runtime needs: freeing an object that is still active.
//!
//! A `timer_list` still pending, a work item still queued or running, a tasklet still scheduled:
//! freeing one would leave the runtime with a pointer into freed memory. The kernel's
//! debugobjects reports it (`ODEBUG: free active (active state 0) object type: timer_list hint:
//! <handler>`) inside a WARN block and then fixes it up (deactivates the timer, cancels the
//! work). Here every such drop is reported in those words and made safe: in process context by
//! cancelling and waiting; in softirq context, where nothing may wait or free, a `timer_list`'s
//! free is deferred to process context (the kernel's debugobjects frees its own objects from
//! a work item too), and what cannot be deferred is fatal (see the callers).
//!
//! # Ground rules (shared with signal context)
//! The report is printk only. The deferred frees are a lock-free stack (a CAS push from the
//! handler, a swap by the work item in process context); pushing and `schedule_work` are
//! async-signal-safe.

use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::impl_has_work;
use crate::kernel::sched;
use crate::kernel::workqueue::{Work, schedule_work};

/// `debug_print_object(obj, "free")` for an active object: the kernel's WARN block.
pub(crate) fn report_free_active(object_type: &str, hint: &str) {
    let t = sched::current();
    crate::pr_warn!("------------[ cut here ]------------");
    crate::pr_err!(
        "ODEBUG: free active (active state 0) object type: {} hint: {}",
        object_type,
        hint
    );
    crate::pr_warn!(
        "WARNING: CPU: 0 PID: {} Comm: {} at debug_print_object",
        t.pid(),
        t.comm()
    );
    crate::pr_warn!("---[ end trace 0000000000000000 ]---");
}

/// An object whose free was deferred from softirq context: a link, and how to free it.
pub(crate) struct Deferred {
    /// Next on the stack of deferred frees.
    pub(crate) next: AtomicPtr<Deferred>,
    /// Frees the object this header belongs to (process context).
    pub(crate) free: unsafe fn(*mut Deferred),
}

impl Deferred {
    pub(crate) const fn new(free: unsafe fn(*mut Deferred)) -> Deferred {
        Deferred {
            next: AtomicPtr::new(std::ptr::null_mut()),
            free,
        }
    }
}

static DEFERRED: AtomicPtr<Deferred> = AtomicPtr::new(std::ptr::null_mut());

/// The work item that frees the deferred objects (`debug_obj_work`'s role).
struct FreeWork {
    work: Work<FreeWork>,
}
impl_has_work!(FreeWork, work);

static FREE_WORK: FreeWork = FreeWork {
    work: Work::new(free_deferred),
};

/// Frees every object deferred so far. Process context (on `events/N`).
fn free_deferred(_: &FreeWork) {
    let mut d = DEFERRED.swap(std::ptr::null_mut(), Ordering::AcqRel);
    while !d.is_null() {
        // SAFETY: only `defer_free` pushes, with a live header whose object nothing else frees.
        let next = unsafe { (*d).next.load(Ordering::Relaxed) };
        // SAFETY: as above: freed once, here.
        unsafe { ((*d).free)(d) };
        d = next;
    }
}

/// Defers the free of the object `d` heads to process context. Async-signal-safe.
///
/// # Safety
/// `d` is live, pushed once, and nothing else frees its object.
pub(crate) unsafe fn defer_free(d: *mut Deferred) {
    let mut head = DEFERRED.load(Ordering::Relaxed);
    loop {
        // SAFETY: `d` is live and ours alone (the contract).
        unsafe { (*d).next.store(head, Ordering::Relaxed) };
        match DEFERRED.compare_exchange_weak(head, d, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    schedule_work(Pin::static_ref(&FREE_WORK));
}
