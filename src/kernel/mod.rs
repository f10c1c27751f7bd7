//! The deferred-work runtime: the kernel facilities of the lab, in userspace, with the kernel's
//! names and rules. One file per facility, named as the kernel names it.
//!
//! Contexts: *process context* is every ordinary thread (transport readers, workers, kthreads,
//! main); *softirq context* is the timer signal's handler (timers, tasklets), which never blocks,
//! allocates, takes a std lock, calls `log`, or panics.

// Core (interrupt side): owned by the runtime-core helper.
pub mod alloc;
pub mod jiffies;
pub mod lockdep;
pub mod printk;
pub mod ring;
pub mod sched;
pub mod softirq;
pub mod spinlock;
pub mod tasklet;
pub mod timer;
pub mod trace;

// Process side: owned by the runtime-process helper.
pub mod atomic;
pub mod kthread;
pub mod wait;
pub mod workqueue;

pub mod error;
pub mod fs;
pub mod task;

/// Start the runtime (the "boot"): the printk console thread, `ksoftirqd/0`, the timer
/// signal's handler and the POSIX timer behind it, and the system workqueue (`events/N`, so
/// timer handlers can `schedule_work`). Idempotent: every caller may call it; the first does
/// the work. Process context.
pub fn start() -> error::Result {
    printk::start_console();
    softirq::start()?;
    workqueue::init()
}

/// Prepare for exit: hand every printk line to `log`. The interrupt machinery stays installed
/// for the life of the process (as the kernel's does); timers still pending keep running, so
/// owners `del_timer_sync` theirs first. Process context.
pub fn stop() {
    printk::flush();
}
