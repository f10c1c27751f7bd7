//! Whether spinning for the next request pays, learnt from the pace of the requests.
//!
//! A reader that has just answered a lone client can poll for its next request instead of
//! sleeping in `read(2)` ([`super::pool`]): a hit saves the reader's sleep and wake-up, and
//! keeps its CPU from halting (on a busy host a halted virtual CPU may wait a whole time slice
//! of the host's scheduler to run again: the window spans such a slice, so a client held up
//! that long is still caught). But a spin costs a CPU, and helps nothing when the client's
//! turnaround is long anyway: then the reader should sleep.
//!
//! So the policy measures instead of guessing, as the kernel's hybrid polling (`blk_mq_poll`)
//! learns from the completions it sees: answers are counted in batches of [`BATCH`], one clock
//! read per batch; each batch runs in one mode, spinning or sleeping, and its mean interval
//! between answers (the client's pace) is remembered per mode (smoothed over the chosen mode's
//! batches; the latest try of the other). The next batches spin while spinning's pace beats
//! sleeping's by [`GAIN`] at least; now and then a batch tries the other mode, less often each
//! time it confirms the choice ([`EXPLORE_MIN`] to [`EXPLORE_MAX`] batches apart) and soon again
//! when the choice changes, so a change in the machine or the client is seen. A batch slower
//! than [`IDLE_NS`] per answer (a client that mostly thinks), or one in which a spin ran out
//! ([`SpinPolicy::missed`]: the client paused), teaches nothing and is dropped.
//!
//! Only a lone client's answers are counted, on a machine with a CPU to spare (the pool
//! decides): with several clients, the paces of batches vary more from batch to batch than
//! between the modes (measured with two clients: 24-120 us an answer in either mode), so the
//! pool spins for them as long as they are no more than the CPUs, with a window of their own
//! ([`Pace`]): a few times the mean interval between answers. Their requests come close
//! together, and a long window would only keep a CPU from them in a lull (two clients on two
//! CPUs served 0.75x as many calls with the 20 ms window as with 200 us).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Answers per batch: per measurement of the pace.
pub(super) const BATCH: u64 = 64;
/// Spinning must serve this much faster than sleeping to be chosen (its mean interval at most
/// 9/10 of sleeping's): a CPU spent for less is not worth it.
pub(super) const GAIN: (u64, u64) = (9, 10);
/// Batches between tries of the mode not chosen: at first, and after the choice changed.
pub(super) const EXPLORE_MIN: u32 = 2;
/// ... and at most (the interval doubles each time a try confirms the choice). With 64 answers
/// a batch: one in 65 answers is served the other way, while the choice holds.
pub(super) const EXPLORE_MAX: u32 = 64;
/// A batch with a longer mean interval than this (ns) is a client that mostly thinks: dropped.
pub(super) const IDLE_NS: u64 = 20_000_000;

/// The two modes a batch runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Sleep = 0,
    Spin = 1,
}

impl Mode {
    fn other(self) -> Mode {
        match self {
            Mode::Sleep => Mode::Spin,
            Mode::Spin => Mode::Sleep,
        }
    }
}

/// The learning itself, fed one batch at a time (a pure state machine: tests drive it with
/// made-up clocks).
#[derive(Debug)]
pub(super) struct Learner {
    /// When the current batch began (ns; `None`: no batch yet).
    start_ns: Option<u64>,
    /// The mode of the current batch.
    mode: Mode,
    /// Mean interval between answers (ns) seen per mode, smoothed over batches.
    pace: [Option<u64>; 2],
    /// Batches between tries of the other mode, and batches since the last try.
    explore_every: u32,
    since_explore: u32,
}

impl Learner {
    pub(super) const fn new() -> Learner {
        Learner {
            start_ns: None,
            mode: Mode::Spin,
            pace: [None, None],
            explore_every: EXPLORE_MIN,
            since_explore: 0,
        }
    }

    /// The mode the current batch runs in.
    #[cfg(test)]
    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    /// The mean interval (ns) learnt for `mode`, if any.
    pub(super) fn pace(&self, mode: Mode) -> Option<u64> {
        self.pace[mode as usize]
    }

    /// The mode that serves best on what was learnt (spinning until sleeping has been seen).
    pub(super) fn best(&self) -> Mode {
        match (self.pace(Mode::Spin), self.pace(Mode::Sleep)) {
            (Some(spin), Some(sleep)) if spin * GAIN.1 > sleep * GAIN.0 => Mode::Sleep,
            _ => Mode::Spin,
        }
    }

    /// A batch of `answers` ended at `now_ns`: learn its pace (unless `paused`: the client
    /// stopped for a while within it) and choose the next batch's mode.
    pub(super) fn batch_done(&mut self, now_ns: u64, answers: u64, paused: bool) -> Mode {
        let Some(start) = self.start_ns.replace(now_ns) else {
            return self.mode; // the first batch starts now
        };
        let tried = self.mode;
        let before = self.best();
        let interval = now_ns.saturating_sub(start) / answers.max(1);
        if interval <= IDLE_NS && !paused {
            let p = &mut self.pace[tried as usize];
            // The chosen mode's pace is smoothed over its batches; a try of the other replaces
            // what is known of it (from long ago). A try that flips the choice by bad luck is
            // corrected by the next batch, which runs in that mode.
            *p = Some(match *p {
                Some(old) if tried == before => (old + interval) / 2,
                _ => interval,
            });
        }
        let best = self.best();
        if best != before {
            // The choice changed: try the other mode again soon, whichever batch changed it.
            self.explore_every = EXPLORE_MIN;
            self.since_explore = 0;
        } else if tried != before {
            // That batch tried the other mode and the choice stands: try again later than last
            // time.
            self.explore_every = (self.explore_every * 2).min(EXPLORE_MAX);
        }
        self.since_explore += 1;
        self.mode = if self.pace(best.other()).is_none() || self.since_explore >= self.explore_every
        {
            self.since_explore = 0;
            best.other()
        } else {
            best
        };
        self.mode
    }
}

/// Counts an answer in `answers`; for the one that ends a batch of [`BATCH`] (exactly one
/// caller sees each end), the clock now.
fn batch_ended(answers: &AtomicU64) -> Option<u64> {
    let n = answers.fetch_add(1, Ordering::Relaxed) + 1;
    n.is_multiple_of(BATCH)
        .then(crate::kernel::jiffies::monotonic_ns)
}

/// The policy shared by the readers: a counter per answer, the learner once per batch.
pub(super) struct SpinPolicy {
    answers: AtomicU64,
    /// A spin ran out in the current batch: the client paused (for a whole window at least),
    /// and the batch's pace says nothing of either mode.
    paused: AtomicBool,
    spin: AtomicBool,
    learner: Mutex<Learner>,
}

impl SpinPolicy {
    pub(super) const fn new() -> SpinPolicy {
        SpinPolicy {
            answers: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            spin: AtomicBool::new(true),
            learner: Mutex::new(Learner::new()),
        }
    }

    /// Makes the current batch spin or sleep, as the learner would.
    #[cfg(test)]
    pub(super) fn set_spin(&self, spin: bool) {
        self.spin.store(spin, Ordering::Relaxed);
    }

    /// A spin ran out without a request: the current batch is not learnt from.
    pub(super) fn missed(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }

    /// Whether the current batch spins.
    pub(super) fn spin(&self) -> bool {
        self.spin.load(Ordering::Relaxed)
    }

    /// Counts an answer to a lone client; the answer that ends a batch reads the clock and lets
    /// the learner choose the next batch's mode.
    pub(super) fn answered(&self) {
        let Some(now) = batch_ended(&self.answers) else {
            return;
        };
        let mut learner = self.learner.lock().unwrap_or_else(|e| e.into_inner());
        let before = learner.best();
        let paused = self.paused.swap(false, Ordering::Relaxed);
        let mode = learner.batch_done(now, BATCH, paused);
        self.spin.store(mode == Mode::Spin, Ordering::Relaxed);
        let best = learner.best();
        if best != before {
            log::debug!(
                "spin policy: {best:?} from now on (ns per answer: spinning {:?}, sleeping {:?})",
                learner.pace(Mode::Spin),
                learner.pace(Mode::Sleep)
            );
        }
    }

    /// The learner, to look at.
    #[cfg(test)]
    pub(super) fn learner(&self) -> std::sync::MutexGuard<'_, Learner> {
        self.learner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The spin window for several clients is this many times the mean interval between answers:
/// it covers the next request's coming with room for its spread, and grows with the interval on
/// a slower machine.
pub(super) const WINDOW_PER_INTERVAL: u64 = 4;
/// The shortest such window: a spin shorter than a sleeper's wake-up saves nothing.
pub(super) const WINDOW_MIN_NS: u64 = 50_000;
/// The window before the pace is measured.
pub(super) const WINDOW_FIRST_NS: u64 = 200_000;

/// The spin window (ns) for a mean interval between answers (`None`: not measured yet), at most
/// `max_ns`.
pub(super) fn window_ns(interval_ns: Option<u64>, max_ns: u64) -> u64 {
    interval_ns
        .map_or(WINDOW_FIRST_NS, |i| {
            i.saturating_mul(WINDOW_PER_INTERVAL).max(WINDOW_MIN_NS)
        })
        .min(max_ns)
}

/// The pace of several clients' answers, and the spin window it gives: measured a batch of
/// [`BATCH`] answers at a time (one clock read per batch).
pub(super) struct Pace {
    answers: AtomicU64,
    start_ns: AtomicU64,
    window_ns: AtomicU64,
    max_ns: u64,
}

impl Pace {
    /// A window of at most `max_ns`.
    pub(super) fn new(max_ns: u64) -> Pace {
        Pace {
            answers: AtomicU64::new(0),
            start_ns: AtomicU64::new(0),
            window_ns: AtomicU64::new(window_ns(None, max_ns)),
            max_ns,
        }
    }

    /// The window in force (ns).
    pub(super) fn window_ns(&self) -> u64 {
        self.window_ns.load(Ordering::Relaxed)
    }

    /// Counts an answer; the one that ends a batch sets the window from the batch's pace.
    pub(super) fn answered(&self) {
        if let Some(now) = batch_ended(&self.answers) {
            self.batch_done(now);
        }
    }

    fn batch_done(&self, now_ns: u64) {
        let start = self.start_ns.swap(now_ns, Ordering::Relaxed);
        if start != 0 && now_ns > start {
            let interval = (now_ns - start) / BATCH;
            self.window_ns
                .store(window_ns(Some(interval), self.max_ns), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `learner` batches whose mean interval is `spin_us` while spinning and `sleep_us`
    /// while sleeping, from `t`; returns the modes the batches ran in, and the time at the end.
    fn run(
        learner: &mut Learner,
        t: &mut u64,
        batches: usize,
        spin_us: u64,
        sleep_us: u64,
    ) -> Vec<Mode> {
        let mut modes = Vec::new();
        for _ in 0..batches {
            modes.push(learner.mode());
            let per = match learner.mode() {
                Mode::Spin => spin_us,
                Mode::Sleep => sleep_us,
            };
            *t += per * 1000 * BATCH;
            learner.batch_done(*t, BATCH, false);
        }
        modes
    }

    fn share(modes: &[Mode], mode: Mode) -> f64 {
        modes.iter().filter(|m| **m == mode).count() as f64 / modes.len() as f64
    }

    fn started() -> (Learner, u64) {
        let mut l = Learner::new();
        l.batch_done(1_000, BATCH, false); // the first batch starts
        (l, 1_000)
    }

    #[test]
    fn spins_while_spinning_serves_faster() {
        let (mut l, mut t) = started();
        // A quiet machine: a spin catches the request (46 us a round trip), a sleep does not
        // (85 us).
        let modes = run(&mut l, &mut t, 400, 46, 85);
        assert_eq!(l.best(), Mode::Spin);
        assert_eq!(modes[0], Mode::Spin, "spinning is tried first");
        assert_eq!(modes[1], Mode::Sleep, "then sleeping, to compare");
        let late = &modes[200..];
        assert!(
            share(late, Mode::Sleep) <= 2.0 / EXPLORE_MAX as f64,
            "once confirmed, the other mode is tried rarely: {late:?}"
        );
        assert!(share(late, Mode::Sleep) > 0.0, "but still tried");
    }

    #[test]
    fn sleeps_when_spinning_gains_too_little() {
        let (mut l, mut t) = started();
        // A client that thinks 10 ms between calls: a spin would save a wake-up in 10 ms.
        let modes = run(&mut l, &mut t, 200, 10_040, 10_080);
        assert_eq!(l.best(), Mode::Sleep);
        assert!(share(&modes[100..], Mode::Spin) <= 2.0 / EXPLORE_MAX as f64);
        // Just under the gain: still not worth a CPU.
        let (mut l, mut t) = started();
        run(&mut l, &mut t, 50, 92, 100);
        assert_eq!(l.best(), Mode::Sleep);
        let (mut l, mut t) = started();
        run(&mut l, &mut t, 50, 89, 100);
        assert_eq!(l.best(), Mode::Spin);
    }

    #[test]
    fn follows_a_change_of_machine() {
        let (mut l, mut t) = started();
        run(&mut l, &mut t, 300, 46, 85);
        assert_eq!(l.best(), Mode::Spin);
        // The machine changes: spinning now costs the client its CPU (one CPU, or a host that
        // takes it away): spinning serves slower than sleeping.
        let modes = run(&mut l, &mut t, 300, 400, 90);
        assert_eq!(l.best(), Mode::Sleep, "{modes:?}");
        let switched = modes.iter().rposition(|m| *m == Mode::Spin).unwrap();
        assert!(
            share(&modes[150..], Mode::Sleep) > 0.9,
            "the change was followed (last spin at batch {switched})"
        );
        // And back.
        let modes = run(&mut l, &mut t, 300, 46, 85);
        assert_eq!(l.best(), Mode::Spin);
        assert!(share(&modes[150..], Mode::Spin) > 0.9);
    }

    #[test]
    fn batches_of_a_client_that_mostly_thinks_teach_nothing() {
        let (mut l, mut t) = started();
        run(&mut l, &mut t, 20, 46, 85);
        let before = (l.pace(Mode::Spin), l.pace(Mode::Sleep));
        // A minute without a request lands in one batch: its pace is not learnt.
        t += 60_000_000_000;
        let mode = l.mode();
        l.batch_done(t, BATCH, false);
        assert_eq!(
            (l.pace(Mode::Spin), l.pace(Mode::Sleep)),
            before,
            "the idle batch ({mode:?}) was learnt"
        );
        assert_eq!(l.best(), Mode::Spin);
    }

    #[test]
    fn several_clients_window_follows_their_pace() {
        let max = 20_000_000;
        assert_eq!(window_ns(None, max), WINDOW_FIRST_NS);
        assert_eq!(window_ns(Some(50_000), max), 200_000, "4x a 50 us interval");
        assert_eq!(
            window_ns(Some(150_000), max),
            600_000,
            "a slower machine, a longer window"
        );
        assert_eq!(window_ns(Some(2_000), max), WINDOW_MIN_NS);
        assert_eq!(window_ns(Some(u64::MAX / 2), max), max);
        assert_eq!(
            window_ns(None, 30_000),
            30_000,
            "never over the configured window"
        );
        let pace = Pace::new(max);
        assert_eq!(pace.window_ns(), WINDOW_FIRST_NS);
        pace.batch_done(1_000_000);
        assert_eq!(
            pace.window_ns(),
            WINDOW_FIRST_NS,
            "one batch end: nothing measured"
        );
        pace.batch_done(1_000_000 + BATCH * 100_000);
        assert_eq!(pace.window_ns(), 400_000);
    }

    #[test]
    fn a_pause_within_a_batch_teaches_nothing() {
        let (mut l, mut t) = started();
        run(&mut l, &mut t, 300, 46, 85);
        assert_eq!(l.best(), Mode::Spin);
        let before = (l.pace(Mode::Spin), l.pace(Mode::Sleep));
        // The client stops for 0.3 s (a mean of 4.7 ms an answer: under IDLE_NS) and a spin
        // ran out meanwhile.
        while l.mode() != Mode::Spin {
            run(&mut l, &mut t, 1, 46, 85);
        }
        t += 300_000_000;
        l.batch_done(t, BATCH, true);
        assert_eq!((l.pace(Mode::Spin), l.pace(Mode::Sleep)), before);
        assert_eq!(l.best(), Mode::Spin);
    }

    #[test]
    fn a_changed_choice_is_tried_again_soon() {
        let (mut l, mut t) = started();
        run(&mut l, &mut t, 400, 46, 85);
        assert_eq!(l.explore_every, EXPLORE_MAX, "long confirmed");
        while l.mode() != Mode::Spin {
            run(&mut l, &mut t, 1, 46, 85);
        }
        // One unlucky spinning batch (not a try) flips the choice to sleeping ...
        t += 4_000 * 1000 * BATCH;
        l.batch_done(t, BATCH, false);
        assert_eq!(l.best(), Mode::Sleep);
        // ... and spinning is tried again within EXPLORE_MIN batches, and chosen back.
        let modes = run(&mut l, &mut t, EXPLORE_MIN as usize + 1, 46, 85);
        assert!(modes.contains(&Mode::Spin), "{modes:?}");
        assert_eq!(l.best(), Mode::Spin);
    }

    #[test]
    fn one_batch_per_clock_read() {
        let p = SpinPolicy::new();
        for _ in 0..BATCH - 1 {
            p.answered();
        }
        assert!(p.learner().start_ns.is_none(), "no batch ended yet");
        p.answered();
        assert!(p.learner().start_ns.is_some(), "the 64th answer ends one");
        assert!(p.spin(), "the first batch spins");
    }
}
