//! Jiffies: the kernel's tick counter, computed from `CLOCK_MONOTONIC`.
//!
//! The kernel counts timer interrupts; signals coalesce (several expiries of a POSIX timer can
//! arrive as one signal), so here jiffies are *computed*, never counted:
//!
//! ```text
//! jiffies() = INITIAL_JIFFIES + (now_monotonic - runtime_start) * HZ / 1 s
//! ```
//!
//! `HZ` is 250 as on the lab's VM (one jiffy = 4 ms). As in the kernel
//! (`include/linux/jiffies.h`), the counter starts at [`INITIAL_JIFFIES`], five minutes before
//! the low 32 bits wrap, so code that compares jiffies with `<` instead of [`time_after`] breaks
//! early. Always compare with `time_after`/`time_before`: they look at the signed difference and
//! stay right across a wrap.
//!
//! Everything here is async-signal-safe (`clock_gettime` and integer arithmetic): callable from
//! the timer signal's handler.

use std::sync::atomic::{AtomicU64, Ordering};

/// Ticks per second, as `CONFIG_HZ=250` on the lab's VM.
pub const HZ: u64 = 250;

/// The value of jiffies when the runtime starts: the kernel's
/// `((unsigned long)(unsigned int) (-300*HZ))`, so that the 32-bit jiffies wrap 300 s after start.
pub const INITIAL_JIFFIES: u64 = (-300i32 * HZ as i32) as u32 as u64;

/// `MAX_JIFFY_OFFSET`: the largest timeout a conversion returns (the kernel's `(LONG_MAX >> 1) - 1`).
pub const MAX_JIFFY_OFFSET: u64 = ((i64::MAX as u64) >> 1) - 1;

/// Nanoseconds per jiffy (4 000 000 at HZ = 250).
pub const NSEC_PER_JIFFY: u64 = 1_000_000_000 / HZ;

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// `CLOCK_MONOTONIC` nanoseconds at runtime start, plus one (0 = not taken yet).
static START_NS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds of `CLOCK_MONOTONIC` now. Async-signal-safe.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * NSEC_PER_SEC + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` nanoseconds at which the runtime started (the origin of jiffies and of
/// printk timestamps). Taken on first use; lock-free and async-signal-safe.
pub fn start_ns() -> u64 {
    let v = START_NS.load(Ordering::Acquire);
    if v != 0 {
        return v - 1;
    }
    let now = monotonic_ns();
    match START_NS.compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => now,
        Err(other) => other - 1,
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC` since the runtime started (jiffies' count; printk's
/// timestamp is [`local_clock`](crate::kernel::clock::local_clock), the same but for its cost).
pub fn uptime_ns() -> u64 {
    let start = start_ns();
    monotonic_ns().saturating_sub(start)
}

/// The current value of jiffies. Async-signal-safe.
pub fn jiffies() -> u64 {
    INITIAL_JIFFIES.wrapping_add(uptime_ns() / NSEC_PER_JIFFY)
}

/// `CLOCK_MONOTONIC` instant (ns) at which `jiffies()` first reads `j` (the instant to arm the
/// POSIX timer for a timer expiring at `j`). A `j` at or before the runtime start gives the start.
pub fn jiffies_to_monotonic_ns(j: u64) -> u64 {
    let since_start = j.wrapping_sub(INITIAL_JIFFIES) as i64;
    let offset = if since_start <= 0 {
        0
    } else {
        (since_start as u64).saturating_mul(NSEC_PER_JIFFY)
    };
    start_ns().saturating_add(offset)
}

/// `time_after(a, b)`: true if `a` is after `b`, across a wrap (signed difference).
#[inline]
pub const fn time_after(a: u64, b: u64) -> bool {
    (b.wrapping_sub(a) as i64) < 0
}

/// `time_before(a, b)`: true if `a` is before `b`.
#[inline]
pub const fn time_before(a: u64, b: u64) -> bool {
    time_after(b, a)
}

/// `time_after_eq(a, b)`: true if `a` is after or equal to `b`.
#[inline]
pub const fn time_after_eq(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) >= 0
}

/// `time_before_eq(a, b)`: true if `a` is before or equal to `b`.
#[inline]
pub const fn time_before_eq(a: u64, b: u64) -> bool {
    time_after_eq(b, a)
}

/// `time_is_before_jiffies(a)`: `a` is in the past.
pub fn time_is_before_jiffies(a: u64) -> bool {
    time_after(jiffies(), a)
}

/// `time_is_after_jiffies(a)`: `a` is in the future.
pub fn time_is_after_jiffies(a: u64) -> bool {
    time_before(jiffies(), a)
}

/// `msecs_to_jiffies`: rounds up, as the kernel does (a timeout never ends early).
/// A negative value (as the kernel's `(int)m < 0`) gives `MAX_JIFFY_OFFSET`.
pub const fn msecs_to_jiffies(ms: u64) -> u64 {
    if (ms as i64) < 0 {
        return MAX_JIFFY_OFFSET;
    }
    let j = ms.saturating_mul(HZ).saturating_add(999) / 1000;
    if j > MAX_JIFFY_OFFSET {
        MAX_JIFFY_OFFSET
    } else {
        j
    }
}

/// `usecs_to_jiffies`: rounds up.
pub const fn usecs_to_jiffies(us: u64) -> u64 {
    if (us as i64) < 0 {
        return MAX_JIFFY_OFFSET;
    }
    let j = us.saturating_mul(HZ).saturating_add(999_999) / 1_000_000;
    if j > MAX_JIFFY_OFFSET {
        MAX_JIFFY_OFFSET
    } else {
        j
    }
}

/// `jiffies_to_msecs`.
pub const fn jiffies_to_msecs(j: u64) -> u64 {
    j.saturating_mul(1000 / HZ)
}

/// `jiffies_to_usecs`.
pub const fn jiffies_to_usecs(j: u64) -> u64 {
    j.saturating_mul(1_000_000 / HZ)
}

/// `nsecs_to_jiffies`: rounds down, as the kernel's `nsecs_to_jiffies64`.
pub const fn nsecs_to_jiffies(ns: u64) -> u64 {
    ns / NSEC_PER_JIFFY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_jiffies_is_the_kernels() {
        assert_eq!(INITIAL_JIFFIES, 0x1_0000_0000 - 300 * 250);
        assert_eq!(INITIAL_JIFFIES, 4_294_892_296);
    }

    #[test]
    fn compare_across_wrap() {
        assert!(time_after(1, u64::MAX));
        assert!(time_before(u64::MAX, 1));
        assert!(time_after_eq(5, 5) && time_before_eq(5, 5));
        assert!(!time_after(5, 5));
    }
}
