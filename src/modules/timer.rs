//! Exercises 1 and 2: a timer that prints `TIMER_TIMEOUT` seconds after load, once (exercise 1)
//! or every `TIMER_TIMEOUT` seconds (exercise 2).
//!
//! The lab's `1-2-timer` module on the runtime:
//!
//! ```text
//! timer_init:    pr_info("[timer_init] Init module");  timer_setup; mod_timer(jiffies + TIMER_TIMEOUT * HZ)
//! timer_handler: nseconds += TIMER_TIMEOUT; pr_info("[timer_handler] nseconds = %d", nseconds);
//!                mod_timer(jiffies + TIMER_TIMEOUT * HZ)           (exercise 2 only)
//! timer_exit:    pr_info("[timer_exit] Exit module"); del_timer_sync
//! ```
//! The handler runs in softirq context (the timer signal's handler): it only touches an atomic,
//! prints through the lock-free printk ring and re-arms its own timer.
//!
//! The `TODO N` comments are the lab's steps (`scripts/lab new` strips the lines after each).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::kernel::jiffies::{HZ, jiffies};
use crate::kernel::timer::{Timer, TimerList};
use crate::module::{Module, ModuleInfo, Param};
use crate::pr_info;

/// `TIMER_TIMEOUT`: seconds between the load and the (first) message.
pub const TIMER_TIMEOUT: u64 = 1;

/// `once=1`: exercise 1, one message.
pub const ONCE: Param<bool> = Param::new(
    "once",
    false,
    "exercise 1: one message (default: exercise 2, one a second)",
);

/// The module: `deferred timer [once=1]`.
pub const MODULE: ModuleInfo = ModuleInfo {
    name: "timer",
    description: "exercises 1-2: a timer that prints every second",
    params: &[&ONCE],
    has_device: false,
    init: |params| Ok(Box::new(TimerModule::load(params.get(&ONCE)))),
};

/// What the handler reaches through its timer.
pub struct TimerData {
    /// `static int nseconds`.
    nseconds: AtomicU64,
    /// Exercise 2: re-arm from the handler (not with `once=1`).
    periodic: bool,
}

/// The timer's handler: softirq context (no blocking, no allocation: `pr_info!` and atomics are
/// fine).
fn timer_handler(timer: &Timer<TimerData>) {
    let data = timer.data();
    // TODO 1/2: add TIMER_TIMEOUT to `data.nseconds` (an atomic: `fetch_add`) and print
    // "[timer_handler] nseconds = N" with `pr_info!` (the runtime's printk).
    let n = data.nseconds.fetch_add(TIMER_TIMEOUT, Ordering::Relaxed) + TIMER_TIMEOUT;
    pr_info!("[timer_handler] nseconds = {}", n);
    // TODO 2/3: unless `once=1`, re-arm the timer TIMER_TIMEOUT seconds from now:
    // `timer.mod_timer(jiffies() + TIMER_TIMEOUT * HZ)` (wrapping_add, as unsigned long).
    if data.periodic {
        timer.mod_timer(jiffies().wrapping_add(TIMER_TIMEOUT * HZ));
    }
}

/// The loaded module.
pub struct TimerModule {
    /// `struct timer_list` (the runtime's `kernel::timer`: run by the timer softirq).
    timer: TimerList<TimerData>,
}

impl TimerModule {
    /// `insmod timer.ko`; `once` gives exercise 1 (no re-arm).
    pub fn load(once: bool) -> TimerModule {
        pr_info!("[timer_init] Init module");
        let timer = TimerList::declare(TimerData {
            nseconds: AtomicU64::new(0),
            periodic: !once,
        });
        // TODO 1/2: set the timer up with its handler (`timer.timer_setup(timer_handler)`) and
        // arm it TIMER_TIMEOUT seconds from now (`mod_timer(jiffies() + TIMER_TIMEOUT * HZ)`).
        timer.timer_setup(timer_handler);
        timer.mod_timer(jiffies().wrapping_add(TIMER_TIMEOUT * HZ));
        TimerModule { timer }
    }

    /// Seconds counted so far (`nseconds`).
    pub fn nseconds(&self) -> u64 {
        self.timer.data().nseconds.load(Ordering::Relaxed)
    }

    /// Is the timer armed?
    pub fn timer_pending(&self) -> bool {
        self.timer.timer_pending()
    }
}

impl Module for TimerModule {
    fn exit(&mut self) {
        pr_info!("[timer_exit] Exit module");
        // TODO 1: stop the timer and wait for a handler still running: `del_timer_sync`.
        self.timer.del_timer_sync();
    }
}
