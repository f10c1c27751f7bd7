//! `kernel/panic.c`: the WARNING block (`__warn`).

use std::panic::Location;

use crate::kernel::sched;

/// The kernel's `__warn`: a cut-here block naming the task and the caller's location. Any
/// context (printk only).
pub fn warn_at(loc: &Location<'_>, what: &str) {
    let t = sched::current();
    crate::pr_warn!("------------[ cut here ]------------");
    crate::pr_warn!(
        "WARNING: CPU: 0 PID: {} at {}:{} {}",
        t.pid(),
        loc.file(),
        loc.line(),
        what
    );
    crate::pr_warn!("---[ end trace 0000000000000000 ]---");
}
