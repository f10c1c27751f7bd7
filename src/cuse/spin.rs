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
//! learns from the completions it sees: answers are timed and counted in batches of [`BATCH`];
//! each batch runs in one mode, spinning or sleeping, and its pace is the median interval
//! between its answers (the client's typical round trip). A mode's pace is the median of its
//! last [`SAMPLES`] batches. Medians, not means: on a busy host a virtual CPU waits a time slice
//! of the host's scheduler now and then (milliseconds), whatever the mode, often enough that
//! most batches hold one; a mean follows those waits, and flipped the choice back and forth
//! (58-92 times in 80,000 calls under a host CPU hog, each flip served sleeping for a while).
//! The next batches spin while spinning's pace beats sleeping's by [`GAIN`] at least; now and
//! then a batch tries the other mode, less often each time it confirms the choice
//! ([`EXPLORE_MIN`] to [`EXPLORE_MAX`] batches apart) and soon again when the choice changes,
//! so a change in the machine or the client is seen. A try is a quarter of a batch
//! ([`TRY_BATCH`] answers): the mode not chosen is the slower one, 2-3x for a sleep against a
//! spin that catches the request, so tries of whole batches took 3-4 % of a lone client's time
//! at the longest spacing; these take ~1 %, and still learn a median of 16 intervals. A batch
//! slower than [`IDLE_NS`] per answer (a client that mostly thinks), or one in which a spin ran
//! out ([`SpinPolicy::missed`]: the client paused), teaches nothing and is dropped. The choices
//! are logged at debug level, and what the policy did when the pool stops. Timing answers costs
//! a clock read each ([`local_clock_mono`](crate::kernel::clock::local_clock_mono): tens of
//! nanoseconds, the TSC where `clock_gettime` would be a system call).
//!
//! Only a lone client's answers are counted, on a machine with a CPU to spare (the pool
//! decides): with several clients, the paces of batches vary more from batch to batch than
//! between the modes (measured with two clients: 24-120 us an answer in either mode), so the
//! pool spins for them as long as they are no more than the CPUs, with a window of their own
//! ([`Pace`]): a few times the mean interval between answers. Their requests come close
//! together, and a long window would only keep a CPU from them in a lull (two clients on two
//! CPUs served 0.75x as many calls with the 20 ms window as with 200 us).

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Answers per batch: per measurement of the pace.
pub(super) const BATCH: u64 = 64;
/// Answers in a batch that tries the mode not chosen.
pub(super) const TRY_BATCH: u64 = BATCH / 4;
/// Spinning must serve this much faster than sleeping to be chosen (its pace at most 9/10 of
/// sleeping's): a CPU spent for less is not worth it.
pub(super) const GAIN: (u64, u64) = (9, 10);
/// Batches between tries of the mode not chosen: at first, and after the choice changed.
pub(super) const EXPLORE_MIN: u32 = 2;
/// ... and at most (the interval doubles each time a try confirms the choice). With 64 answers
/// a batch and 16 a try: one in 257 answers is served the other way, while the choice holds.
pub(super) const EXPLORE_MAX: u32 = 64;
/// A batch with a longer pace than this (ns) is a client that mostly thinks: dropped.
pub(super) const IDLE_NS: u64 = 20_000_000;
/// Batches remembered per mode: the pace of a mode is the median of its last three (the lower
/// of two, while only two were seen).
pub(super) const SAMPLES: usize = 3;

/// The paces (ns per answer) of a mode's last [`SAMPLES`] batches.
#[derive(Clone, Copy, Debug)]
struct Samples {
    pace: [u64; SAMPLES],
    /// How many were seen (at most SAMPLES), and where the next goes.
    seen: usize,
    next: usize,
}

impl Samples {
    fn push(&mut self, pace: u64) {
        self.pace[self.next] = pace;
        self.next = (self.next + 1) % SAMPLES;
        self.seen = (self.seen + 1).min(SAMPLES);
    }

    /// The median of the batches seen (the lower of two), if any.
    fn estimate(&self) -> Option<u64> {
        let mut seen = self.pace;
        let seen = &mut seen[..self.seen];
        seen.sort_unstable();
        match seen.len() {
            0 => None,
            n => Some(seen[(n - 1) / 2]),
        }
    }
}

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

/// The learning itself, fed one answer at a time (a pure state machine: tests drive it with
/// made-up clocks).
#[derive(Debug)]
pub(super) struct Learner {
    /// When the last answer was given (ns; `None`: none yet).
    last_ns: Option<u64>,
    /// The intervals between the current batch's answers (ns), and how many there are.
    intervals: [u64; BATCH as usize],
    counted: usize,
    /// The mode of the current batch.
    mode: Mode,
    /// The current batch tries the mode not chosen ([`TRY_BATCH`] answers long).
    trying: bool,
    /// The paces (median interval between answers, ns) of the last batches, per mode.
    paces: [Samples; 2],
    /// Batches between tries of the other mode, and batches since the last try.
    explore_every: u32,
    since_explore: u32,
    /// Answers counted, by the mode of their batch, and of those the ones in tries.
    served: [u64; 2],
    in_tries: u64,
}

impl Learner {
    pub(super) const fn new() -> Learner {
        Learner {
            last_ns: None,
            intervals: [0; BATCH as usize],
            counted: 0,
            mode: Mode::Spin,
            trying: false,
            paces: [Samples {
                pace: [0; SAMPLES],
                seen: 0,
                next: 0,
            }; 2],
            explore_every: EXPLORE_MIN,
            since_explore: 0,
            served: [0; 2],
            in_tries: 0,
        }
    }

    /// The mode the current batch runs in.
    #[cfg(test)]
    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    /// Answers in the current batch.
    fn batch_len(&self) -> usize {
        (if self.trying { TRY_BATCH } else { BATCH }) as usize
    }

    /// The pace (ns per answer: the median of its last batches' median intervals) learnt for
    /// `mode`, if any.
    pub(super) fn pace(&self, mode: Mode) -> Option<u64> {
        self.paces[mode as usize].estimate()
    }

    /// The mode that serves best on what was learnt (spinning until sleeping has been seen).
    pub(super) fn best(&self) -> Mode {
        match (self.pace(Mode::Spin), self.pace(Mode::Sleep)) {
            (Some(spin), Some(sleep)) if spin * GAIN.1 > sleep * GAIN.0 => Mode::Sleep,
            _ => Mode::Spin,
        }
    }

    /// An answer given at `now_ns`: its interval since the last one is counted in the current
    /// batch; the answer that ends the batch learns its pace (unless `paused()`: the client
    /// stopped for a while within it) and chooses the next batch's mode.
    pub(super) fn answered(&mut self, now_ns: u64, paused: impl FnOnce() -> bool) -> Mode {
        self.served[self.mode as usize] += 1;
        self.in_tries += u64::from(self.trying);
        let Some(last) = self.last_ns.replace(now_ns) else {
            return self.mode; // the first batch starts now
        };
        self.intervals[self.counted] = now_ns.saturating_sub(last);
        self.counted += 1;
        let len = self.batch_len();
        if self.counted < len {
            return self.mode;
        }
        self.counted = 0;
        let pace = *self.intervals[..len].select_nth_unstable(len / 2).1;
        self.batch_done(pace, paused())
    }

    /// A batch whose pace (median interval between answers, ns) was `pace` ended: learn it
    /// (unless `paused`) and choose the next batch's mode.
    fn batch_done(&mut self, pace: u64, paused: bool) -> Mode {
        let tried = self.mode;
        let before = self.best();
        if pace <= IDLE_NS && !paused {
            self.paces[tried as usize].push(pace);
        }
        let best = self.best();
        if best != before {
            log::debug!(
                "spin policy: {best:?} from now on (ns per answer: spinning {:?}, sleeping {:?})",
                self.pace(Mode::Spin),
                self.pace(Mode::Sleep)
            );
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
        self.trying = self.mode != best;
        self.mode
    }
}

impl fmt::Display for Learner {
    /// What the policy did: answers per mode, tries, and the paces learnt.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} answers to a lone client spinning, {} sleeping ({} in tries of the mode not \
             chosen); per answer: spinning {}, sleeping {}",
            self.served[Mode::Spin as usize],
            self.served[Mode::Sleep as usize],
            self.in_tries,
            Us(self.pace(Mode::Spin)),
            Us(self.pace(Mode::Sleep))
        )
    }
}

/// A pace in microseconds, or `-` when none was learnt.
struct Us(Option<u64>);

impl fmt::Display for Us {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ns) => write!(f, "{} us", ns / 1000),
            None => f.write_str("-"),
        }
    }
}

/// The policy shared by the readers: the learner, fed each answer to a lone client.
pub(super) struct SpinPolicy {
    /// A spin ran out in the current batch: the client paused (for a whole window at least),
    /// and the batch's pace says nothing of either mode.
    paused: AtomicBool,
    spin: AtomicBool,
    learner: Mutex<Learner>,
}

impl SpinPolicy {
    pub(super) const fn new() -> SpinPolicy {
        SpinPolicy {
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

    /// Times an answer to a lone client; the answer that ends a batch lets the learner choose
    /// the next batch's mode. Returns the time of the answer
    /// ([`local_clock_mono`](crate::kernel::clock::local_clock_mono), ns).
    pub(super) fn answered(&self) -> u64 {
        let now = crate::kernel::clock::local_clock_mono();
        let mut learner = self.learner.lock().unwrap_or_else(|e| e.into_inner());
        let mode = learner.answered(now, || self.paused.swap(false, Ordering::Relaxed));
        self.spin.store(mode == Mode::Spin, Ordering::Relaxed);
        now
    }

    /// What the policy did so far (for the log).
    pub(super) fn summary(&self) -> String {
        self.learner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .to_string()
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

    /// The longest window ([`Config::spin`](super::Config::spin): also a lone client's).
    pub(super) fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// The window in force (ns).
    pub(super) fn window_ns(&self) -> u64 {
        self.window_ns.load(Ordering::Relaxed)
    }

    /// Counts an answer; the one that ends a batch (exactly one caller sees each end) reads
    /// the clock (as the lone client's learner does) and sets the window from the batch's pace.
    pub(super) fn answered(&self) {
        let n = self.answers.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(BATCH) {
            self.batch_done(crate::kernel::clock::local_clock_mono());
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

    /// Feeds `learner` one batch of answers `per_us` apart, from `t`, the last `late` of them
    /// `late_us` late (held up); `paused`: a spin ran out within it. Returns the next mode.
    fn batch(
        learner: &mut Learner,
        t: &mut u64,
        per_us: u64,
        late: u64,
        late_us: u64,
        paused: bool,
    ) -> Mode {
        let mut mode = learner.mode();
        let len = learner.batch_len() as u64;
        let late = late.min(len);
        for i in 0..len {
            *t += per_us * 1000 + if i >= len - late { late_us * 1000 } else { 0 };
            mode = learner.answered(*t, || paused);
        }
        mode
    }

    /// Feeds `learner` batches of answers `spin_us` apart while spinning and `sleep_us` while
    /// sleeping, from `t`; returns the modes the batches ran in.
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
            batch(learner, t, per, 0, 0, false);
        }
        modes
    }

    fn share(modes: &[Mode], mode: Mode) -> f64 {
        modes.iter().filter(|m| **m == mode).count() as f64 / modes.len() as f64
    }

    fn started() -> (Learner, u64) {
        let mut l = Learner::new();
        l.answered(1_000, || false); // the first batch starts
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
    fn trying_the_slower_mode_takes_about_one_percent_of_the_time() {
        let (mut l, mut t) = started();
        // A slow day's spinning and sleeping floors: 65 and 213 us a round trip.
        run(&mut l, &mut t, 200, 65, 213);
        let (mut spinning, mut sleeping) = (0, 0);
        for _ in 0..400 {
            let (mode, from) = (l.mode(), t);
            run(&mut l, &mut t, 1, 65, 213);
            match mode {
                Mode::Spin => spinning += t - from,
                Mode::Sleep => sleeping += t - from,
            }
        }
        assert_eq!(l.best(), Mode::Spin);
        let share = sleeping as f64 / (spinning + sleeping) as f64;
        // Tries of whole batches took 4.8 % here.
        assert!(
            share > 0.0 && share < 0.015,
            "tries took {share:.4} of the time"
        );
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
        // A client that calls every 30 ms: its batches are not learnt, whatever the mode.
        let modes = run(&mut l, &mut t, 10, 30_000, 30_000);
        assert_eq!(
            (l.pace(Mode::Spin), l.pace(Mode::Sleep)),
            before,
            "an idle batch was learnt ({modes:?})"
        );
        assert_eq!(l.best(), Mode::Spin);
        // Nor does a minute without a request change anything: it is one interval of 64.
        t += 60_000_000_000;
        run(&mut l, &mut t, 10, 46, 85);
        assert_eq!((l.pace(Mode::Spin), l.pace(Mode::Sleep)), before);
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
        // The client stops for a while, several times in one batch (most of its intervals: 5 ms,
        // under IDLE_NS), and a spin ran out meanwhile.
        until_spinning(&mut l, &mut t);
        batch(&mut l, &mut t, 46, BATCH / 2 + 1, 5_000, true);
        assert_eq!((l.pace(Mode::Spin), l.pace(Mode::Sleep)), before);
        assert_eq!(l.best(), Mode::Spin);
    }

    /// Runs batches until the next one spins.
    fn until_spinning(l: &mut Learner, t: &mut u64) {
        while l.mode() != Mode::Spin {
            run(l, t, 1, 46, 85);
        }
    }

    /// One spinning batch with `late` answers held up 4 ms each.
    fn held_up(l: &mut Learner, t: &mut u64, late: u64) {
        until_spinning(l, t);
        batch(l, t, 46, late, 4_000, false);
    }

    #[test]
    fn one_batch_held_up_changes_nothing() {
        let (mut l, mut t) = started();
        run(&mut l, &mut t, 400, 46, 85);
        assert_eq!(l.best(), Mode::Spin);
        // A busy host holds the client up now and then: a few answers of most batches wait a
        // host time slice (4 ms: their batch's mean is 7-8x the pace). The choice stands.
        for late in [1, 3, 5, 3, 1, 8, 2] {
            held_up(&mut l, &mut t, late);
            assert_eq!(
                l.best(),
                Mode::Spin,
                "{late} held-up answers flipped the choice"
            );
        }
        assert_eq!(l.pace(Mode::Spin), Some(46_000));
        // Nor does one batch held up throughout (most of its answers).
        held_up(&mut l, &mut t, BATCH);
        assert_eq!(l.best(), Mode::Spin, "one held-up batch flipped the choice");
    }

    #[test]
    fn a_changed_choice_is_tried_again_soon() {
        let (mut l, mut t) = started();
        run(&mut l, &mut t, 400, 46, 85);
        assert_eq!(l.explore_every, EXPLORE_MAX, "long confirmed");
        // Two spinning batches in a row held up throughout: the choice flips to sleeping ...
        held_up(&mut l, &mut t, BATCH);
        held_up(&mut l, &mut t, BATCH);
        assert_eq!(l.best(), Mode::Sleep);
        // ... spinning is tried again within EXPLORE_MIN batches, and chosen back once its
        // median is good again (two tries).
        let modes = run(&mut l, &mut t, EXPLORE_MIN as usize + 1, 46, 85);
        assert!(modes.contains(&Mode::Spin), "{modes:?}");
        let modes = run(&mut l, &mut t, 3 * EXPLORE_MIN as usize + 1, 46, 85);
        assert_eq!(l.best(), Mode::Spin, "{modes:?}");
    }

    #[test]
    fn the_policy_times_each_answer() {
        let p = SpinPolicy::new();
        assert!(p.spin(), "the first batch spins");
        for _ in 0..=BATCH {
            p.answered();
        }
        let l = p.learner();
        assert_eq!(l.counted, 0, "a batch ended on the 65th answer");
        assert!(l.pace(Mode::Spin).is_some(), "and was learnt");
        assert!(!p.spin(), "then sleeping is tried, to compare");
    }
}
