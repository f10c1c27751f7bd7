//! Real-time signals: finding one nobody handles yet.

/// A real-time signal whose action is still the default (nobody in the process handles it):
/// the lowest such, or with `from_top` the highest, so two users that each take one from a
/// different end do not meet. `None` if every one is taken. Process context.
pub fn free_rt_signal(from_top: bool) -> Option<i32> {
    let free = |&sig: &i32| {
        // SAFETY: a zeroed sigaction is a valid out-parameter.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: querying (null new action) a valid signal number.
        let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
        rc == 0 && old.sa_sigaction == libc::SIG_DFL
    };
    let mut all = libc::SIGRTMIN()..=libc::SIGRTMAX();
    if from_top {
        all.rev().find(free)
    } else {
        all.find(free)
    }
}

#[cfg(test)]
mod tests {
    use super::free_rt_signal;

    #[test]
    fn a_handled_signal_is_not_free() {
        let low = free_rt_signal(false).unwrap();
        let high = free_rt_signal(true).unwrap();
        assert!(low <= high);
        assert!((libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&low));
        extern "C" fn ignore(_: libc::c_int) {}
        // SAFETY: a zeroed sigaction is valid; handler filled in, empty mask.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
        // SAFETY: installing a do-nothing handler on a signal nothing else uses.
        let rc = unsafe { libc::sigaction(high, &sa, std::ptr::null_mut()) };
        assert_eq!(rc, 0);
        assert_ne!(free_rt_signal(true), Some(high));
    }
}
