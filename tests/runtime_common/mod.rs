//! Shared by the runtime test binaries: the counting allocator, the runtime start, and a lock
//! that serialises tests sharing the one timer signal.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

#[global_allocator]
static ALLOC: deferred::kernel::alloc::CountingAllocator =
    deferred::kernel::alloc::CountingAllocator;

static SERIAL: Mutex<()> = Mutex::new(());

static WATCHDOG: std::sync::Once = std::sync::Once::new();

/// Start the runtime (idempotent) and take the binary-wide test lock. The first call also
/// starts a watchdog: a deadlock aborts the binary after 3 minutes instead of hanging CI.
pub fn setup() -> MutexGuard<'static, ()> {
    watchdog();
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    deferred::kernel::start().expect("runtime start");
    g
}

/// A hung test (a lost wake-up, a deadlock on a failure path) must fail, not hang: the first
/// call arms a watchdog that aborts the whole binary after 3 minutes.
pub fn watchdog() {
    WATCHDOG.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(180));
            eprintln!("runtime tests: watchdog expired after 180 s (deadlock?)");
            std::process::abort();
        });
    });
}

#[path = "../common/wait.rs"]
mod wait;
#[path = "../common/witness.rs"]
mod witness;
#[allow(unused_imports)] // not every test binary polls
pub use wait::{in_futex, wait_for};
#[allow(unused_imports)]
pub use witness::wait_past;

/// No allocator call was made in softirq or hardirq context by this process so far.
pub fn assert_no_softirq_allocations() {
    assert_eq!(
        deferred::kernel::alloc::softirq_allocations(),
        0,
        "allocations in softirq context"
    );
    assert_eq!(
        deferred::kernel::alloc::softirq_frees(),
        0,
        "frees in softirq context"
    );
}
