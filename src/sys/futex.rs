//! The futex: sleep on a 32-bit word until another thread (or a signal handler) changes it and
//! wakes the sleepers. The one place the runtime ([`crate::kernel`]) and the transport
//! ([`crate::cuse`]) make the system call.

use core::ptr;
use core::sync::atomic::AtomicU32;

/// `futex(FUTEX_WAIT_BITSET)` on `word` while it holds `val`, until woken, a signal, or the
/// absolute `CLOCK_MONOTONIC` instant `deadline_ns`. Errors (EAGAIN, EINTR, ETIMEDOUT) are not
/// reported: every caller re-checks its condition. Process context.
pub fn wait(word: &AtomicU32, val: u32, deadline_ns: Option<u64>) {
    let ts;
    let ts_ptr = match deadline_ns {
        Some(ns) => {
            ts = libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            };
            ptr::from_ref(&ts)
        }
        None => ptr::null(),
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; `ts_ptr` is null or
    // points to a timespec that outlives the call. FUTEX_WAIT_BITSET takes an absolute
    // CLOCK_MONOTONIC timeout (no FUTEX_CLOCK_REALTIME), ignores uaddr2 and uses val3 as mask.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG,
            val,
            ts_ptr,
            ptr::null::<u32>(),
            libc::FUTEX_BITSET_MATCH_ANY,
        );
    }
}

/// `futex(FUTEX_WAKE)`: wakes up to `n` threads waiting on `word`. Async-signal-safe (errno is
/// saved and restored, so a signal handler calling it leaves the interrupted code's errno alone).
pub fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: reading errno's location is always valid for the calling thread.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is valid for the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
    // SAFETY: as above; restores the interrupted code's errno.
    unsafe { *libc::__errno_location() = errno };
}
