//! The spin window: how long a reader that has just answered polls `/dev/cuse` for the next
//! request before it sleeps in `read(2)`, learned from the round trips the readers see.
//!
//! A client in a loop asks again one *gap* after its answer was written: the time for its
//! wake-up, its own work and its next call to reach the kernel's queue. A reader that polls
//! through the gap takes the request the moment it is queued, without a sleep and a wake-up on
//! either side (on an idle CPU most of a round trip). A fixed window only works on machines where
//! the gap fits in it; this one follows the gaps: each request read by the reader that answered
//! the one before gives a sample (the time from that answer to this request: the gap itself when
//! the reader was polling, the gap plus a wake-up when it slept). The window is their running
//! mean plus [`DEV_FACTOR`] times their running mean deviation, as TCP sets its retransmission
//! timeout from the round trips (RFC 6298): wide enough for the usual spread, not for the rare
//! outlier; at least [`MIN_WINDOW`], at most the configured bound. A mean gap beyond the bound
//! means the client thinks between calls: no spinning then
//! (the samples of the sleeps keep the mean current, so a client that speeds up is spun for
//! again). Spins that run out make the readers pass up the next chances (1, 2, 4, ... up to 64
//! in a row), so a client that asks at random costs about what a sleeping reader costs, and a
//! quiet device costs nothing: nobody spins unless a request was just answered.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The window is the mean gap plus this many mean deviations (RFC 6298's K).
pub const DEV_FACTOR: u64 = 4;
/// The shortest window.
pub const MIN_WINDOW: Duration = Duration::from_micros(50);
/// Weight of a new sample in the running mean: 1/8 (RFC 6298's alpha).
const MEAN_SHIFT: u32 = 3;
/// Weight of a new sample in the running deviation: 1/4 (RFC 6298's beta).
const DEV_SHIFT: u32 = 2;

/// The shared spin state of one server's readers.
pub struct SpinWindow {
    /// The longest window (zero: never spin).
    max_ns: u64,
    /// Running mean of the gaps (ns).
    gap_ns: AtomicU64,
    /// Running mean deviation of the gaps from that mean (ns).
    dev_ns: AtomicU64,
    /// One reader at a time spins.
    spinning: AtomicBool,
    /// Spins in a row that ran out without a request.
    misses: AtomicU32,
    /// Chances to spin still to pass up after misses (the back-off).
    skip: AtomicU32,
}

impl SpinWindow {
    /// A window of at most `max` (zero: never spin), its mean gap starting at a quarter of it
    /// and the deviation at an eighth (a first window of three quarters of the bound).
    pub fn new(max: Duration) -> SpinWindow {
        let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        SpinWindow {
            max_ns,
            gap_ns: AtomicU64::new(max_ns / 4),
            dev_ns: AtomicU64::new(max_ns / 8),
            spinning: AtomicBool::new(false),
            misses: AtomicU32::new(0),
            skip: AtomicU32::new(0),
        }
    }

    /// The longest window.
    #[cfg(test)]
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// The running mean of the gaps.
    #[cfg(test)]
    pub fn mean_gap(&self) -> Duration {
        Duration::from_nanos(self.gap_ns.load(Ordering::Relaxed))
    }

    /// How long to poll now.
    pub fn window(&self) -> Duration {
        let w = self.gap_ns.load(Ordering::Relaxed).saturating_add(
            self.dev_ns
                .load(Ordering::Relaxed)
                .saturating_mul(DEV_FACTOR),
        );
        let min = MIN_WINDOW.as_nanos() as u64;
        Duration::from_nanos(w.clamp(min.min(self.max_ns), self.max_ns))
    }

    /// One gap seen: from an answer to the next request read by the same reader. Samples are
    /// capped at twice the bound, so one long pause moves the mean only so far.
    pub fn observe(&self, gap: Duration) {
        let s = u64::try_from(gap.as_nanos())
            .unwrap_or(u64::MAX)
            .min(self.max_ns.saturating_mul(2));
        let m = self.gap_ns.load(Ordering::Relaxed);
        let d = self.dev_ns.load(Ordering::Relaxed);
        // Racing updates may lose a sample: harmless for running means.
        self.dev_ns
            .store(ewma(d, s.abs_diff(m), DEV_SHIFT), Ordering::Relaxed);
        self.gap_ns.store(ewma(m, s, MEAN_SHIFT), Ordering::Relaxed);
    }

    /// Whether a reader that has just answered should spin (the caller checks the load; this
    /// checks the gaps and the back-off, and passes up one chance when backing off).
    pub fn should_spin(&self) -> bool {
        if self.max_ns == 0 || self.gap_ns.load(Ordering::Relaxed) > self.max_ns {
            return false;
        }
        let skip = self.skip.load(Ordering::Relaxed);
        if skip > 0 {
            self.skip.store(skip - 1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Polls with `ready` (true: a request is waiting, or the fd has something to report)
    /// for up to [`SpinWindow::window`], unless another reader is spinning already; records
    /// how it went. `None`: not spun (another reader is); else whether a request came.
    pub fn spin(&self, mut ready: impl FnMut() -> bool) -> Option<bool> {
        if self.spinning.swap(true, Ordering::Acquire) {
            return None;
        }
        let window = self.window();
        let start = Instant::now();
        let hit = 'spin: loop {
            // The clock is read every few polls: in a VM it can cost more than a poll.
            for _ in 0..4 {
                if ready() {
                    break 'spin true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= window {
                break false;
            }
        };
        self.spun(hit);
        self.spinning.store(false, Ordering::Release);
        Some(hit)
    }

    /// Records how a spin went: a hit resets the back-off, a miss doubles it.
    pub fn spun(&self, hit: bool) {
        if hit {
            self.misses.store(0, Ordering::Relaxed);
        } else {
            let misses = self.misses.fetch_add(1, Ordering::Relaxed) + 1;
            self.skip.store(1 << (misses - 1).min(6), Ordering::Relaxed);
        }
    }

    /// (misses in a row, chances still to pass up): for tests.
    #[cfg(test)]
    pub fn backoff(&self) -> (u32, u32) {
        (
            self.misses.load(Ordering::Relaxed),
            self.skip.load(Ordering::Relaxed),
        )
    }
}

/// `mean + (sample - mean) / 2^shift`, in unsigned arithmetic.
fn ewma(mean: u64, sample: u64, shift: u32) -> u64 {
    if sample >= mean {
        mean + ((sample - mean) >> shift)
    } else {
        mean - ((mean - sample) >> shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn the_window_follows_the_gaps_and_their_spread_between_its_bounds() {
        let w = SpinWindow::new(1000 * US);
        assert_eq!(w.mean_gap(), 250 * US, "starts at a quarter of the bound");
        assert_eq!(w.window(), 750 * US, "mean + 4 x an eighth of the bound");
        for _ in 0..200 {
            w.observe(100 * US);
        }
        let (m, win) = (w.mean_gap(), w.window());
        assert!(
            m >= 100 * US && m < 101 * US,
            "the mean converges on the gaps: {m:?}"
        );
        assert!(
            win >= m && win < 110 * US,
            "steady gaps: a window just above them: {win:?}"
        );
        // Gaps of 50 and 150 us in turn: the same mean, a spread of 50 us.
        for i in 0..200 {
            w.observe(if i % 2 == 0 { 50 * US } else { 150 * US });
        }
        let win = w.window();
        assert!(
            win > 250 * US && win < 350 * US,
            "mean + 4 x ~50 us: {win:?}"
        );
        for _ in 0..200 {
            w.observe(US);
        }
        assert_eq!(w.window(), MIN_WINDOW, "never below the minimum");
        for i in 0..200 {
            w.observe(if i % 2 == 0 { 500 * US } else { 900 * US });
        }
        assert_eq!(w.window(), 1000 * US, "never above the bound");
        assert!(w.should_spin(), "a mean gap under the bound is spun for");
    }

    #[test]
    fn a_client_that_thinks_between_calls_is_not_spun_for_until_it_speeds_up() {
        let w = SpinWindow::new(1000 * US);
        for _ in 0..50 {
            w.observe(Duration::from_secs(1));
        }
        let m = w.mean_gap();
        assert!(
            m > 1990 * US && m <= 2000 * US,
            "samples are capped at twice the bound: {m:?}"
        );
        assert!(!w.should_spin());
        let mut n = 0;
        while !w.should_spin() {
            w.observe(50 * US);
            n += 1;
            assert!(n < 100, "the mean never came down");
        }
        assert!(n > 1, "one quick call is not enough");
    }

    #[test]
    fn misses_back_off_and_a_hit_resets() {
        let w = SpinWindow::new(100 * US);
        let mut seen = Vec::new();
        for _ in 0..8 {
            if w.should_spin() {
                assert_eq!(w.spin(|| false), Some(false));
            }
            seen.push(w.backoff());
        }
        assert_eq!(
            seen,
            [
                (1, 1),
                (1, 0),
                (2, 2),
                (2, 1),
                (2, 0),
                (3, 4),
                (3, 3),
                (3, 2)
            ]
        );
        w.spun(true);
        assert_eq!(w.backoff(), (0, 2), "a hit resets the count");
    }

    #[test]
    fn a_spin_ends_on_a_request_and_one_reader_spins_at_a_time() {
        let w = SpinWindow::new(Duration::from_secs(10));
        let mut polls = 0;
        assert_eq!(
            w.spin(|| {
                polls += 1;
                polls == 3
            }),
            Some(true)
        );
        assert_eq!(polls, 3);
        w.spinning.store(true, Ordering::Relaxed);
        assert_eq!(w.spin(|| true), None, "another reader is spinning");
    }

    #[test]
    fn zero_never_spins() {
        let w = SpinWindow::new(Duration::ZERO);
        w.observe(US);
        assert!(!w.should_spin());
    }
}
