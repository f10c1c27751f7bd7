//! `local_clock()`: the clock of printk's timestamps and of the trace events, as the kernel's
//! (`kernel/sched/clock.c`): nanoseconds since the runtime started, cheap from any context.
//!
//! Where `clock_gettime(CLOCK_MONOTONIC)` is read through the vDSO (clocksource `tsc`,
//! `kvm-clock`, ...) the clock is that: tens of nanoseconds. Where the clocksource has no vDSO
//! read (`hpet`, `acpi_pm`, as in a QEMU TCG guest, whose kernel finds the TSC unstable), every
//! read is a system call, ~1 us in such a guest, paid by every request whose handler prints a
//! line. There, as the kernel's `sched_clock` does with an unstable TSC, the clock is the CPU's
//! time-stamp counter (`rdtscp`, which also says on which CPU it was read) converted to
//! nanoseconds against an anchor of that CPU: a pair (TSC, `CLOCK_MONOTONIC`) read together, and
//! the TSC's rate measured between the CPU's last two anchors. A reading more than a jiffy past
//! its CPU's anchor takes a new anchor (one `clock_gettime` per busy CPU and jiffy), so the
//! error is what the rate's error makes of one jiffy, a microsecond or so; and readings never
//! go backwards (one high-water mark for all CPUs, where the kernel keeps one per CPU).
//!
//! Async-signal-safe and wait-free: an anchor is a [`SeqRecord`], refreshed by whichever reader
//! finds it stale first; a reader that finds it being written (perhaps by the very thread its
//! signal interrupted) reads `clock_gettime` instead. No allocation, no lock.
//!
//! The choice is made at start ([`init`]) from what a `clock_gettime` costs: more than
//! [`SLOW_READ_NS`] (no vDSO read), on an x86-64 CPU with `rdtscp` and the TSC readable, takes
//! the TSC. `DEFERRED_CLOCK=tsc` or `DEFERRED_CLOCK=monotonic` in the environment forces it,
//! e.g. to measure one against the other.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::kernel::jiffies::{self, NSEC_PER_JIFFY};
use crate::kernel::sync::seq::SeqRecord;

/// A `clock_gettime` slower than this (ns, the median of a few back to back) is a system call:
/// the TSC is read instead.
pub const SLOW_READ_NS: u64 = 200;
/// CPUs with an anchor of their own; on a higher-numbered one, every reading is a
/// `clock_gettime`.
const CPUS: usize = 64;
/// An anchor is trusted for one jiffy, as the kernel's per-CPU clock is between ticks.
const ANCHOR_NS: u64 = NSEC_PER_JIFFY;
/// The rate is measured over at least this long (ns) between a CPU's anchors.
const RATE_MIN_NS: u64 = ANCHOR_NS / 2;
/// A pair whose two TSC reads are further apart than this (ns) was interrupted (preempted, or
/// a signal ran): not an anchor.
const PAIR_MAX_NS: u64 = 10_000;
/// ... in cycles, while the rate is not known yet (10 us at 5 GHz).
const PAIR_MAX_CYCLES: u64 = 50_000;
/// Rates accepted, in ns per cycle as 32.32 fixed point: 20 GHz to 100 MHz.
const MULT_MIN: u64 = (1 << 32) / 20;
const MULT_MAX: u64 = 10 << 32;

const MONOTONIC: u8 = 0;
const TSC: u8 = 1;
/// Which clock [`local_clock`] reads.
static SOURCE: AtomicU8 = AtomicU8::new(MONOTONIC);
/// The highest reading handed out (TSC clock only): readings never go backwards.
static LAST: AtomicU64 = AtomicU64::new(0);
/// Readings that read `clock_gettime` (TSC clock only): anchors taken, and reads that found an
/// anchor stale, being written, or missing.
static SLOW_READS: AtomicU64 = AtomicU64::new(0);
/// Per CPU: its anchor's words ([`Anchor::words`]).
static ANCHORS: [SeqRecord<4>; CPUS] = [const { SeqRecord::new() }; CPUS];

/// Nanoseconds since the runtime started (`jiffies::start_ns`): the kernel's `local_clock()`,
/// printk's timestamp. Async-signal-safe.
pub fn local_clock() -> u64 {
    local_clock_mono().saturating_sub(jiffies::start_ns())
}

/// The same reading on `CLOCK_MONOTONIC`'s origin (ns): to compare with other readings of
/// `CLOCK_MONOTONIC` (deadlines, a client's timestamps). Async-signal-safe.
pub fn local_clock_mono() -> u64 {
    if SOURCE.load(Ordering::Relaxed) == TSC {
        tsc_clock()
    } else {
        jiffies::monotonic_ns()
    }
}

/// Chooses the clock (process context; the runtime's start calls it). Returns its name.
pub fn init() -> &'static str {
    let forced = std::env::var("DEFERRED_CLOCK").ok();
    if choose_tsc(forced.as_deref(), clock_gettime_cost_ns) && !use_tsc(true) {
        log::debug!("local_clock: the TSC cannot be read here (no rdtscp, or PR_SET_TSC)");
    }
    source()
}

/// Whether to read the TSC, given `DEFERRED_CLOCK`'s value and what a `clock_gettime` costs.
fn choose_tsc(forced: Option<&str>, cost_ns: impl FnOnce() -> u64) -> bool {
    match forced {
        Some("tsc") => true,
        Some("monotonic") => false,
        other => {
            if let Some(v) = other.filter(|v| !v.is_empty() && *v != "auto") {
                log::warn!(
                    "DEFERRED_CLOCK={v} is not one of tsc, monotonic, auto: choosing as auto does"
                );
            }
            let cost = cost_ns();
            log::debug!("local_clock: a clock_gettime takes {cost} ns");
            cost > SLOW_READ_NS
        }
    }
}

/// The clock [`local_clock`] reads: `"tsc"` or `"monotonic"`.
pub fn source() -> &'static str {
    if SOURCE.load(Ordering::Relaxed) == TSC {
        "tsc"
    } else {
        "monotonic"
    }
}

/// Readings so far that read `clock_gettime` while the TSC clock was in force (for tests and
/// benchmarks: a busy CPU takes one a jiffy).
pub fn slow_reads() -> u64 {
    SLOW_READS.load(Ordering::Relaxed)
}

/// Reads the TSC clock from now on (`false`: `CLOCK_MONOTONIC`). Returns whether the TSC clock
/// is in force: false where the TSC cannot be read.
pub fn use_tsc(on: bool) -> bool {
    let on = on && tsc_readable();
    SOURCE.store(if on { TSC } else { MONOTONIC }, Ordering::Relaxed);
    on
}

/// The median time (ns) between back-to-back `clock_gettime(CLOCK_MONOTONIC)`s: one read's cost.
fn clock_gettime_cost_ns() -> u64 {
    let mut gaps = [0u64; 15];
    let mut prev = jiffies::monotonic_ns();
    for g in &mut gaps {
        let now = jiffies::monotonic_ns();
        *g = now - prev;
        prev = now;
    }
    gaps.sort_unstable();
    gaps[gaps.len() / 2]
}

/// A CPU's anchor: the TSC and `CLOCK_MONOTONIC` read together, the TSC's rate (ns per cycle,
/// 32.32 fixed point; 0: not measured yet) and how many cycles past `tsc` it is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Anchor {
    tsc: u64,
    ns: u64,
    mult: u64,
    limit: u64,
}

impl Anchor {
    /// The anchor of a pair read together, at `mult` (0: no rate yet, trusted for nothing),
    /// trusted for [`ANCHOR_NS`] of its cycles.
    fn new(tsc: u64, ns: u64, mult: u64) -> Anchor {
        let limit = match mult {
            0 => 0,
            m => ((u128::from(ANCHOR_NS) << 32) / u128::from(m)) as u64,
        };
        Anchor {
            tsc,
            ns,
            mult,
            limit,
        }
    }

    fn words(self) -> [u64; 4] {
        [self.tsc, self.ns, self.mult, self.limit]
    }

    /// The anchor in `w`, or `None` for a record never written.
    fn from_words(w: [u64; 4]) -> Option<Anchor> {
        (w != [0; 4]).then_some(Anchor {
            tsc: w[0],
            ns: w[1],
            mult: w[2],
            limit: w[3],
        })
    }

    /// The reading at `tsc`, if the anchor has a rate and `tsc` is within its trust.
    fn at(self, tsc: u64) -> Option<u64> {
        let d = tsc.checked_sub(self.tsc)?;
        (self.mult != 0 && d < self.limit).then(|| self.ns + mul_shift(d, self.mult))
    }

    /// The anchor after `prev` given a pair read now (`None`: keep `prev`, too recent to
    /// measure the rate against). The rate is measured from `prev` to the pair, and smoothed
    /// with `prev`'s while they agree within 1 %; a rate out of bounds, or a counter or clock
    /// gone backwards, starts over from the pair, without a rate.
    fn next(prev: Option<Anchor>, tsc: u64, ns: u64) -> Option<Anchor> {
        let fresh = Anchor::new(tsc, ns, 0);
        let Some(p) = prev else {
            return Some(fresh);
        };
        let (Some(dt), Some(dn)) = (tsc.checked_sub(p.tsc), ns.checked_sub(p.ns)) else {
            return Some(fresh);
        };
        if dn < RATE_MIN_NS {
            return None;
        }
        if dt == 0 {
            return Some(fresh);
        }
        let measured = ((u128::from(dn) << 32) / u128::from(dt)).min(u128::from(u64::MAX)) as u64;
        if !(MULT_MIN..=MULT_MAX).contains(&measured) {
            return Some(fresh);
        }
        let mult = if p.mult != 0 && measured.abs_diff(p.mult) <= p.mult / 100 {
            (3 * u128::from(p.mult) + u128::from(measured)).div_ceil(4) as u64
        } else {
            measured
        };
        Some(Anchor::new(tsc, ns, mult))
    }
}

/// `d * mult >> 32`, without overflow.
fn mul_shift(d: u64, mult: u64) -> u64 {
    ((u128::from(d) * u128::from(mult)) >> 32) as u64
}

/// Whether a pair's two TSC reads, `width` cycles apart, were close enough together to anchor
/// on (`prev`'s rate, if it has one, says how long that was).
fn pair_ok(prev: Option<Anchor>, width: u64) -> bool {
    match prev {
        Some(p) if p.mult != 0 => mul_shift(width, p.mult) <= PAIR_MAX_NS,
        _ => width <= PAIR_MAX_CYCLES,
    }
}

/// `ns`, or the highest reading handed out if that is later.
fn forward(ns: u64) -> u64 {
    LAST.fetch_max(ns, Ordering::Relaxed).max(ns)
}

/// The TSC clock: the reading from the CPU's anchor, or `clock_gettime` (refreshing the anchor
/// when it was stale).
fn tsc_clock() -> u64 {
    let (tsc, cpu) = rdtscp();
    let slot = ANCHORS.get(cpu);
    // `None`: a writer is at work on the anchor.
    let prev = slot.and_then(SeqRecord::read).map(Anchor::from_words);
    if let Some(ns) = prev.flatten().and_then(|a| a.at(tsc)) {
        return forward(ns);
    }
    SLOW_READS.fetch_add(1, Ordering::Relaxed);
    // No anchor of its own (a CPU beyond the table), or a writer at work on it: nothing to
    // refresh, so no pair to read.
    let (Some(slot), Some(prev)) = (slot, prev) else {
        return forward(jiffies::monotonic_ns());
    };
    let (t1, c1) = rdtscp();
    let ns = jiffies::monotonic_ns();
    let (t2, c2) = rdtscp();
    if c1 == cpu
        && c2 == cpu
        && t2 >= t1
        && pair_ok(prev, t2 - t1)
        && let Some(next) = Anchor::next(prev, t1 + (t2 - t1) / 2, ns)
    {
        slot.try_write(next.words());
    }
    forward(ns)
}

/// The TSC and the CPU it was read on (`rdtscp`; Linux keeps the CPU's number in the low 12
/// bits of `TSC_AUX`).
#[cfg(target_arch = "x86_64")]
fn rdtscp() -> (u64, usize) {
    let mut aux = 0u32;
    // SAFETY: `rdtscp` is only read once `tsc_readable` said the CPU has it and the TSC is not
    // made to fault (`PR_SET_TSC`); `aux` is a valid, writable u32.
    let tsc = unsafe { core::arch::x86_64::__rdtscp(&mut aux) };
    (tsc, (aux & 0xfff) as usize)
}

#[cfg(not(target_arch = "x86_64"))]
fn rdtscp() -> (u64, usize) {
    unreachable!("the TSC clock is x86-64 only (tsc_readable)")
}

/// Whether this CPU has `rdtscp` and the process may read the TSC.
#[cfg(target_arch = "x86_64")]
fn tsc_readable() -> bool {
    use core::arch::x86_64::__cpuid;
    // CPUID leaf 0x8000_0001, EDX bit 27: RDTSCP; the leaf exists if 0x8000_0000 says so.
    let has_rdtscp =
        __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 27) != 0;
    let mut mode: libc::c_int = 0;
    // SAFETY: PR_GET_TSC writes the mode into the int it is given, a valid, writable one.
    let rc = unsafe { libc::prctl(libc::PR_GET_TSC, &mut mode as *mut libc::c_int) };
    has_rdtscp && rc == 0 && mode == libc::PR_TSC_ENABLE
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc_readable() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const GHZ: u64 = 1 << 32; // 1 ns per cycle

    #[test]
    fn an_anchor_converts_cycles_at_its_rate_for_one_jiffy_only() {
        // 2 cycles a nanosecond (mult 1/2).
        let a = Anchor::new(1_000, 5_000_000, GHZ / 2);
        assert_eq!(a.limit, 2 * ANCHOR_NS);
        assert_eq!(a.at(1_000), Some(5_000_000));
        assert_eq!(a.at(3_000), Some(5_001_000));
        assert_eq!(
            a.at(1_000 + 2 * ANCHOR_NS - 2),
            Some(5_000_000 + ANCHOR_NS - 1)
        );
        assert_eq!(a.at(1_000 + 2 * ANCHOR_NS), None, "past the anchor's jiffy");
        assert_eq!(a.at(999), None, "before the anchor: another CPU's counter");
        let uncalibrated = Anchor { mult: 0, ..a };
        assert_eq!(uncalibrated.at(1_001), None);
    }

    #[test]
    fn the_rate_is_measured_between_anchors_and_smoothed_while_it_holds() {
        let first = Anchor::next(None, 1_000, 10).unwrap();
        assert_eq!((first.mult, first.limit), (0, 0));
        // Too soon to measure: keep the anchor.
        assert_eq!(
            Anchor::next(Some(first), 1_000 + 100, 10 + RATE_MIN_NS - 1),
            None
        );
        // 3 GHz over 4 ms.
        let second = Anchor::next(Some(first), 1_000 + 12_000_000, 10 + 4_000_000).unwrap();
        assert_eq!((second.tsc, second.ns), (1_000 + 12_000_000, 4_000_010));
        assert_eq!(second.mult, GHZ / 3);
        assert_eq!(
            second.at(second.tsc + 3_000),
            Some(4_000_010 + 999),
            "rounded down"
        );
        // A measurement 0.5 % off is smoothed (a quarter of it taken).
        let t = second.tsc + 12_000_000;
        let third = Anchor::next(Some(second), t, second.ns + 4_020_000).unwrap();
        let measured = (4_020_000u64 << 32) / 12_000_000;
        assert!(third.mult > second.mult && third.mult < measured);
        assert!(third.mult.abs_diff((3 * second.mult + measured) / 4) <= 1);
        // One 5 % off is a new rate (the counter's frequency changed): taken whole.
        let fourth = Anchor::next(Some(third), t + 12_000_000, third.ns + 4_200_000).unwrap();
        assert_eq!(fourth.mult, (4_200_000u64 << 32) / 12_000_000);
    }

    #[test]
    fn a_counter_gone_backwards_or_an_absurd_rate_starts_over() {
        let a = Anchor::new(1_000_000, 5_000_000, GHZ);
        let fresh = |tsc, ns| Anchor::new(tsc, ns, 0);
        // The counter went back (another CPU's, or reset).
        assert_eq!(
            Anchor::next(Some(a), 10, 9_000_000),
            Some(fresh(10, 9_000_000))
        );
        // No cycles in 4 ms, or 1,000 GHz: not a TSC to trust.
        assert_eq!(
            Anchor::next(Some(a), 1_000_000, 9_000_000),
            Some(fresh(1_000_000, 9_000_000))
        );
        assert_eq!(
            Anchor::next(Some(a), 1_000_000 + 4_000_000_000_000, 9_000_000),
            Some(fresh(1_000_000 + 4_000_000_000_000, 9_000_000))
        );
        // 10 MHz: too slow.
        assert_eq!(
            Anchor::next(Some(a), 1_000_000 + 40_000, 9_000_000),
            Some(fresh(1_000_000 + 40_000, 9_000_000))
        );
    }

    #[test]
    fn an_interrupted_pair_is_no_anchor() {
        let a = Anchor::new(0, 0, GHZ / 3); // 3 GHz
        assert!(pair_ok(Some(a), 3 * PAIR_MAX_NS));
        assert!(!pair_ok(Some(a), 3 * PAIR_MAX_NS + 6));
        assert!(pair_ok(None, PAIR_MAX_CYCLES));
        assert!(!pair_ok(None, PAIR_MAX_CYCLES + 1));
        let uncalibrated = Anchor { mult: 0, ..a };
        assert!(!pair_ok(Some(uncalibrated), PAIR_MAX_CYCLES + 1));
    }

    #[test]
    fn the_tsc_is_chosen_where_clock_gettime_is_a_system_call_unless_forced() {
        assert!(choose_tsc(None, || SLOW_READ_NS + 1));
        assert!(!choose_tsc(None, || SLOW_READ_NS));
        assert!(choose_tsc(Some("auto"), || 900));
        assert!(!choose_tsc(Some(""), || 30));
        assert!(choose_tsc(Some("tsc"), || panic!(
            "not measured when forced"
        )));
        assert!(!choose_tsc(Some("monotonic"), || panic!(
            "not measured when forced"
        )));
        assert!(
            !choose_tsc(Some("hpet"), || 30),
            "an unknown value chooses as auto"
        );
        assert!(choose_tsc(Some("hpet"), || 900));
    }

    #[test]
    fn words_round_trip_and_an_unwritten_record_is_no_anchor() {
        let a = Anchor::new(7, 8, GHZ);
        assert_eq!(Anchor::from_words(a.words()), Some(a));
        assert_eq!(Anchor::from_words([0; 4]), None);
    }
}
