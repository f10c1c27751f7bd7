//! jiffies: the kernel's start value, wrap-safe comparisons, conversions, and the clock.

mod runtime_common;

use std::time::Duration;

use deferred::kernel::jiffies::*;
use runtime_common::setup;

#[test]
fn jiffies_start_near_a_wrap_as_the_kernels() {
    let _g = setup();
    assert_eq!(HZ, 250);
    assert_eq!(INITIAL_JIFFIES, (-300i64 * 250) as u32 as u64);
    let j = jiffies();
    assert!(time_after_eq(j, INITIAL_JIFFIES));
    assert!(
        j - INITIAL_JIFFIES < 120 * HZ,
        "counted from the runtime start"
    );
    // The low 32 bits wrap 300 s after start: a 32-bit comparison with `<` would break there,
    // the signed difference does not.
    let after_wrap = INITIAL_JIFFIES + 300 * HZ + 10;
    assert_eq!(after_wrap as u32, 10);
    assert!(time_after(after_wrap, INITIAL_JIFFIES));
}

#[test]
fn comparisons_hold_across_the_u64_wrap() {
    let a = u64::MAX - 5;
    let b = a.wrapping_add(10);
    assert!(b < a, "b wrapped");
    assert!(time_after(b, a) && time_before(a, b));
    assert!(time_after_eq(b, a) && time_before_eq(a, b));
    assert!(!time_after(a, b) && !time_before(b, a));
    assert!(time_after_eq(a, a) && time_before_eq(a, a) && !time_after(a, a));
}

#[test]
fn conversions_round_up_as_the_kernels() {
    assert_eq!(msecs_to_jiffies(1000), HZ);
    assert_eq!(msecs_to_jiffies(0), 0);
    assert_eq!(msecs_to_jiffies(1), 1);
    assert_eq!(msecs_to_jiffies(4), 1);
    assert_eq!(msecs_to_jiffies(5), 2);
    assert_eq!(usecs_to_jiffies(4000), 1);
    assert_eq!(usecs_to_jiffies(4001), 2);
    assert_eq!(jiffies_to_msecs(HZ), 1000);
    assert_eq!(jiffies_to_msecs(1), 4);
    assert_eq!(jiffies_to_usecs(1), 4000);
    assert_eq!(msecs_to_jiffies(u64::MAX), MAX_JIFFY_OFFSET);
}

#[test]
fn jiffies_follow_the_monotonic_clock() {
    let _g = setup();
    let j0 = jiffies();
    std::thread::sleep(Duration::from_millis(200));
    let d = jiffies() - j0;
    assert!((45..=200).contains(&d), "200 ms = 50 jiffies, got {d}");
    // The instant a jiffy starts is when jiffies() first reads it.
    let next = jiffies() + 1;
    let at = jiffies_to_monotonic_ns(next);
    assert!(at > monotonic_ns());
    while monotonic_ns() < at {}
    assert!(time_after_eq(jiffies(), next));
}
