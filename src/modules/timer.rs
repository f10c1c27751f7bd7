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

use std::sync::atomic::{AtomicU64, Ordering};

use super::Module;
use crate::kernel::jiffies::{HZ, jiffies};
use crate::kernel::timer::{Timer, TimerList};
use crate::pr_info;

/// `TIMER_TIMEOUT`: seconds between the load and the (first) message.
pub const TIMER_TIMEOUT: u64 = 1;

/// What the handler reaches through its timer.
pub struct TimerData {
    /// `static int nseconds`.
    nseconds: AtomicU64,
    /// Exercise 2: re-arm from the handler.
    periodic: bool,
}

fn timer_handler(timer: &Timer<TimerData>) {
    let data = timer.data();
    let n = data.nseconds.fetch_add(TIMER_TIMEOUT, Ordering::Relaxed) + TIMER_TIMEOUT;
    pr_info!("[timer_handler] nseconds = {}", n);
    if data.periodic {
        timer.mod_timer(jiffies().wrapping_add(TIMER_TIMEOUT * HZ));
    }
}

/// The loaded module.
pub struct TimerModule {
    timer: TimerList<TimerData>,
}

impl TimerModule {
    /// `insmod timer.ko`; `once` gives exercise 1 (no re-arm).
    pub fn load(once: bool) -> TimerModule {
        pr_info!("[timer_init] Init module");
        let timer = TimerList::new(
            timer_handler,
            TimerData {
                nseconds: AtomicU64::new(0),
                periodic: !once,
            },
        );
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
    fn name(&self) -> &'static str {
        "timer"
    }

    fn file_operations(&self) -> Option<std::sync::Arc<dyn crate::kernel::fs::FileOperations>> {
        None
    }

    fn exit(self: Box<Self>) {
        pr_info!("[timer_exit] Exit module");
        self.timer.del_timer_sync();
    }
}
