//! The one poll-until helper of the test suites (the e2e tests, the runtime tests and the
//! transport's unit tests include this file): a test waits for a condition, never for a time.

use std::time::{Duration, Instant};

/// Polls `cond` until it holds (true) or `limit` passes (false, after one last check). The
/// polling starts at 1 ms and backs off to 10 ms, so a slow condition (a log read, a `/proc`
/// walk) costs little. `limit` only bounds a failure: a passing test waits for the condition.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// True while thread `tid` of this process is blocked in `futex(2)` (where the runtime's waits
/// sleep), from `/proc/self/task/TID/syscall`.
#[allow(dead_code)] // not every includer asks
pub fn in_futex(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .is_ok_and(|s| s.starts_with(&format!("{} ", libc::SYS_futex)))
}
