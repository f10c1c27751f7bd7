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
