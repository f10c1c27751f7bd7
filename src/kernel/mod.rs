//! The deferred-work runtime: the kernel facilities of the lab, in userspace, with the kernel's
//! names and rules. One file per facility, named as the kernel names it.
//!
//! Contexts: *process context* is every ordinary thread (transport readers, workers, kthreads,
//! main); *softirq context* is the timer signal's handler (timers, tasklets), which never blocks,
//! allocates, takes a std lock, calls `log`, or panics.

// The interrupt side: the clock, softirqs and what runs in them, and the rules of that context.
pub mod alloc;
pub mod bug;
pub mod clock;
pub mod debugobjects;
pub mod jiffies;
pub mod lockdep;
pub mod panic;
pub mod printk;
pub mod sched;
pub mod softirq;
pub mod spinlock;
pub mod sync;
pub mod tasklet;
pub mod timer;
pub mod trace;

// The process side: threads that sleep.
pub mod atomic;
pub mod kthread;
pub mod wait;
pub mod workqueue;

// What a module works with: errors, its device's file operations, ioctl numbers, tasks.
pub mod error;
pub mod fs;
pub mod ioctl;
pub mod task;

/// Start the runtime (the "boot"), in the kernel's order: the panic hook (a handler's panic is
/// an Oops, see [`panic`](mod@panic)), printk's clock ([`clock::local_clock`]), the printk
/// console thread, the clock (`jiffies`), the softirq actions (the timer's and the tasklets',
/// as `init_timers` and `softirq_init` open them), the interrupt (the timer signal's handler,
/// the POSIX timer behind it, `ksoftirqd/0`), then whatever was raised or armed before it, and
/// the system workqueue (`events/N`, so timer handlers can `schedule_work`). Idempotent: every
/// caller may call it; the first does the work. Process context.
pub fn start() -> error::Result {
    static BOOTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut booted = BOOTED.lock().unwrap_or_else(|e| e.into_inner());
    if !*booted {
        panic::install_hook();
        let clock = clock::init();
        log::debug!("local_clock: {clock}");
        kthread::note_kthreadd_nice();
        printk::start_console();
        jiffies::start_ns();
        timer::init();
        tasklet::init();
        softirq::start()?;
        // Anything raised or armed before the interrupt existed runs now.
        timer::rearm();
        softirq::wakeup_softirqd();
        *booted = true;
    }
    workqueue::init()
}

/// Prepare for exit: hand every printk line to `log`. The interrupt machinery stays installed
/// for the life of the process (as the kernel's does); timers still pending keep running, so
/// owners `del_timer_sync` theirs first. Process context.
pub fn stop() {
    printk::flush();
}
