//! The deferred-work runtime: the kernel facilities of the lab, in userspace, with the kernel's
//! names and rules. One file per facility, named as the kernel names it.
//!
//! Contexts: *process context* is every ordinary thread (transport readers, workers, kthreads,
//! main); *softirq context* is the timer signal's handler (timers, tasklets), which never blocks,
//! allocates, takes a std lock, calls `log`, or panics.

pub mod fs;
pub mod task;
