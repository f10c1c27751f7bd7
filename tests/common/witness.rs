//! "It did not fire" without sleeping: a witness timer due a jiffy after the one in question.
//! Timers run in expiry order, so once the witness has run, every timer due at that jiffy or
//! before has run too (the runtime and module tests include this file beside `wait.rs`).

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use deferred::kernel::timer::{Timer, TimerList};

use super::wait::wait_for;

fn witnessed(t: &Timer<AtomicBool>) {
    t.data().store(true, SeqCst);
}

/// Returns once a witness timer armed for `expires + 1` has fired: the timer softirq has then
/// run every timer due at `expires` or earlier.
pub fn wait_past(expires: u64) {
    let w = TimerList::new(witnessed, AtomicBool::new(false));
    w.mod_timer(expires.wrapping_add(1));
    assert!(
        wait_for(Duration::from_secs(10), || w.data().load(SeqCst)),
        "the witness timer did not fire"
    );
}
