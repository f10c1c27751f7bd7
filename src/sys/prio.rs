//! The calling thread's nice value: Linux keeps one per thread, and `getpriority`/`setpriority`
//! with `PRIO_PROCESS` and `who` 0 act on the calling thread only (setpriority(2), NOTES).

use nix::errno::Errno;

/// The calling thread's nice value (-20..=19).
pub fn thread_nice() -> Result<i32, Errno> {
    // getpriority may return -1 as a nice value: only errno tells an error apart.
    Errno::clear();
    // SAFETY: getpriority reads the calling thread's nice value; no pointers are passed.
    let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if n == -1 && Errno::last_raw() != 0 {
        return Err(Errno::last());
    }
    Ok(n)
}

/// Sets the calling thread's nice value (lowering it needs `CAP_SYS_NICE` or `RLIMIT_NICE`:
/// `EACCES` otherwise). Threads it creates afterwards start with the same value.
pub fn set_thread_nice(nice: i32) -> Result<(), Errno> {
    // SAFETY: setpriority changes the calling thread's nice value; no pointers are passed.
    Errno::result(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_nice_value_is_its_own() {
        let before = thread_nice().unwrap();
        let target = (before + 3).min(19);
        let (inside, child) = std::thread::spawn(move || {
            set_thread_nice(target).unwrap();
            let inside = thread_nice().unwrap();
            let child = std::thread::spawn(|| thread_nice().unwrap())
                .join()
                .unwrap();
            (inside, child)
        })
        .join()
        .unwrap();
        assert_eq!(inside, target);
        assert_eq!(
            child, target,
            "a thread starts with its creator's nice value"
        );
        assert_eq!(thread_nice().unwrap(), before, "other threads keep theirs");
    }
}
