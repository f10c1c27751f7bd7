//! End-to-end: bad input through real CUSE, one row of the README's "Bad input" table per test.
//! Each row checks the answer (as the lab's module gives it), what the device logged, and that
//! the device still serves afterwards. Read/write (EINVAL), poll, INTERRUPT of a blocked request
//! and a few unknown numbers are in `e2e_transport.rs`; not repeated here.
//!
//! They need `/dev/cuse` and root: `scripts/test` runs them in a VM.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;

#[cfg(target_arch = "x86_64")]
use common::ioctl32;
use common::{Daemon, TIMEOUT, fd_count, ioctl, wait_for};
use deferred::modules::abi::*;

/// The module's debug lines (armings with their expiry) on, the lab's lines as usual.
const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "info,printk=debug")];

/// The device still answers, and logged that answer.
fn still_serving(d: &Daemon) {
    let before = d.count("Command: Cancel timer");
    let f = d.open();
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(f);
    d.wait_log("the CANCEL line", |_| {
        d.count("Command: Cancel timer") > before
    });
}

/// Waits for `task <comm> (<pid>) is dead` and returns how many such lines there are.
fn wait_dead(d: &Daemon, pid: i32) -> usize {
    let suffix = format!("({pid}) is dead");
    d.wait_log(&format!("pid {pid} reported dead"), |l| {
        l.lines().any(|l| l.ends_with(&suffix))
    });
    d.log().lines().filter(|l| l.ends_with(&suffix)).count()
}

/// `(expires - jiffies)` of the last arming with argument `arg` (debug line), as i64.
fn last_arming(d: &Daemon, arg: &str) -> i64 {
    let needle = format!("[deferred_ioctl] arg = {arg},");
    d.wait_log(&needle, |l| l.contains(&needle));
    let log = d.log();
    let line = log
        .lines()
        .rfind(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no arming with arg {arg}; log:\n{log}"));
    let num = |name: &str| -> u64 {
        let at = line.find(&format!("{name} = ")).unwrap() + name.len() + 3;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    num("expires").wrapping_sub(num("jiffies")) as i64
}

/// Forks a child that sleeps `ms` milliseconds and exits (not reaped: the caller waits for it).
fn child(ms: u64) -> i32 {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: the child only calls nanosleep and _exit: async-signal-safe, as required after
    // fork in a multi-threaded process.
    match unsafe { libc::fork() } {
        // SAFETY: as above: nanosleep and _exit only; `ts` is a valid timespec.
        0 => unsafe {
            libc::nanosleep(&ts, std::ptr::null_mut());
            libc::_exit(0)
        },
        -1 => panic!("fork: {}", Errno::last()),
        pid => pid,
    }
}

fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

// --- unknown commands --------------------------------------------------------------------------

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn unknown_commands_are_enotty_logged_and_harmless() {
    let d = Daemon::start_env(&[], DEBUG);
    let f = d.open();
    let unknown = [
        0x8008_6b04u32, // the lab's old MY_IOCTL_TIMER_MON, _IOR('k', 4, unsigned long)
        0xc008_6b01,    // SET's number with the top bits set: not sign-extended into SET
        0,
        0x4008_6b04, // _IOW('k', 4, unsigned long)
        0x4004_6b02, // CANCEL with a size
        0x6b00,
        0x6b05,
        0x6c01, // SET's number with another type
        0x5401, // TCGETS: what isatty() asks
        0xffff_ffff,
    ];
    for &cmd in &unknown {
        assert_eq!(ioctl(&f, cmd, 7), Err(Errno::ENOTTY), "cmd {cmd:#x}");
    }
    drop(f);
    d.wait_log("every unknown command logged", |_| {
        d.count("[deferred_ioctl] Command: Unknown command") == unknown.len()
    });
    // Nothing armed, nothing watched: no arming line at all.
    assert_eq!(d.count("[deferred_ioctl] arg = "), 0, "{}", d.log());
    still_serving(&d);
    d.stop();
}

// --- MON ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn mon_of_pids_that_are_no_task_is_esrch() {
    let d = Daemon::start_env(&[], DEBUG);
    let f = d.open();
    // 0, -1 as the 64-bit and the 32-bit caller pass it, INT_MIN, beyond pid_max, a huge value
    // whose low 32 bits are 0, and a pid that never existed (pid_max is at most 4194304).
    let args = [
        0u64,
        u64::MAX,
        0xffff_ffff,
        0x8000_0000,
        0x7fff_ffff,
        1 << 32,
        4_194_303,
    ];
    for &a in &args {
        assert_eq!(
            ioctl(&f, MY_IOCTL_TIMER_MON, a),
            Err(Errno::ESRCH),
            "{a:#x}"
        );
    }
    drop(f);
    d.wait_log("every MON logged", |_| {
        d.count("Command: Monitor pid") == args.len()
    });
    // ESRCH arms nothing (MON arms its timer only after taking the reference).
    assert_eq!(d.count("[deferred_ioctl] arg = "), 0, "{}", d.log());
    still_serving(&d);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn mon_of_a_huge_value_watches_its_low_32_bits_as_the_kernels_pid_t() {
    let d = Daemon::start(&[]);
    let f = d.open();
    let pid = child(300);
    // find_vpid(arg) takes a pid_t (int): the upper bits are dropped by the call.
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, (7 << 32) | pid as u64), Ok(0));
    drop(f);
    reap(pid);
    assert_eq!(wait_dead(&d, pid), 1);
    still_serving(&d);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn mon_of_a_zombie_reports_it_dead_at_the_next_tick() {
    let d = Daemon::start_env(&[], DEBUG);
    let pid = child(0);
    // A zombie: exited, not reaped (we have not waited for it).
    assert!(wait_for(TIMEOUT, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
    }));
    let f = d.open();
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, pid as u64), Ok(0));
    assert_eq!(wait_dead(&d, pid), 1);
    // Reported by the first tick after MON, however late that tick ran: in the log, after the
    // first expiry's debug line and before its re-arming.
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    let find = |from: usize, what: &str| {
        from + lines[from..]
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} after line {from}:\n{log}"))
    };
    let armed = find(0, "[deferred_ioctl] arg = 1,");
    let tick = find(armed, "[timer_handler] expires = ");
    let dead = find(tick, &format!("({pid}) is dead"));
    assert!(
        !lines[tick..dead].iter().any(|l| l.contains("re-armed")),
        "not reported by the first tick:\n{log}"
    );
    // Reported once, not at every tick: the next tick (its re-arming) passes without a second.
    let rearmed = lines[..dead]
        .iter()
        .filter(|l| l.contains("re-armed"))
        .count();
    d.wait_log("the tick after the report", |_| {
        d.count("[timer_handler] re-armed") >= rearmed + 2
    });
    assert_eq!(d.count(&format!("({pid}) is dead")), 1, "{}", d.log());
    reap(pid);
    drop(f);
    still_serving(&d);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn mon_of_a_thread_id_watches_that_thread() {
    let d = Daemon::start(&[]);
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::Builder::new()
        .name("watched-thr".into())
        .spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = go_rx.recv();
        })
        .unwrap();
    let tid = rx.recv().unwrap();
    assert_ne!(tid, std::process::id() as i32);
    let f = d.open();
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, tid as u64), Ok(0));
    // Alive: not reported over two ticks.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.count(&format!("({tid}) is dead")), 0, "{}", d.log());
    go_tx.send(()).unwrap();
    t.join().unwrap();
    // The thread (not the process, which lives on) is reported, with its own comm.
    assert_eq!(wait_dead(&d, tid), 1);
    assert!(
        d.log()
            .contains(&format!("task watched-thr ({tid}) is dead")),
        "{}",
        d.log()
    );
    drop(f);
    still_serving(&d);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn mon_of_processes_exiting_during_the_call_is_0_then_dead_or_esrch() {
    let d = Daemon::start_env(&[], &[("RUST_LOG", "warn,printk=info")]);
    let baseline = fd_count(d.pid());
    // A helper process that ignores SIGCHLD forks children that exit at once: the kernel reaps
    // them as they exit, so each pid vanishes at some point during or around our MON.
    let mut fds = [0; 2];
    // SAFETY: a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let n = 300;
    // SAFETY: the helper only calls async-signal-safe functions (signal, fork, write, nanosleep,
    // _exit), as required after fork in a multi-threaded process.
    let helper = match unsafe { libc::fork() } {
        // SAFETY: as above; `fds[1]` is the open write end of the pipe.
        0 => unsafe {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            for i in 0..n {
                let pid = libc::fork();
                if pid == 0 {
                    let ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: (i % 4) * 100_000,
                    };
                    libc::nanosleep(&ts, std::ptr::null_mut());
                    libc::_exit(0);
                }
                let b = pid.to_ne_bytes();
                libc::write(fds[1], b.as_ptr().cast(), 4);
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 2_000_000,
                };
                libc::nanosleep(&ts, std::ptr::null_mut());
            }
            libc::_exit(0)
        },
        -1 => panic!("fork: {}", Errno::last()),
        pid => pid,
    };
    // SAFETY: closing our copy of the write end, which we own.
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end is ours alone.
    let mut r = unsafe { File::from_raw_fd(fds[0]) };
    let f = d.open();
    let (mut watched, mut esrch) = (Vec::new(), 0);
    let mut b = [0u8; 4];
    while r.read_exact(&mut b).is_ok() {
        let pid = i32::from_ne_bytes(b);
        match ioctl(&f, MY_IOCTL_TIMER_MON, pid as u64) {
            Ok(0) => watched.push(pid),
            Err(Errno::ESRCH) => esrch += 1,
            other => panic!("MON {pid}: {other:?}"),
        }
    }
    reap(helper);
    assert_eq!(watched.len() + esrch, n as usize);
    println!(
        "e2e: {} processes watched (then reported dead), {esrch} gone before (ESRCH)",
        watched.len()
    );
    // Every process watched is reported dead exactly once; no other is reported.
    d.wait_log("every watched process reported", |l| {
        l.matches(") is dead").count() >= watched.len()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let log = d.log();
    assert_eq!(log.matches(") is dead").count(), watched.len(), "{log}");
    for pid in &watched {
        assert_eq!(log.matches(&format!("({pid}) is dead")).count(), 1, "{pid}");
    }
    // No reference leaked: the daemon's descriptors are back where they were.
    drop(f);
    assert!(
        wait_for(TIMEOUT, || fd_count(d.pid()) == baseline),
        "daemon fds: {} (was {baseline})",
        fd_count(d.pid())
    );
    still_serving(&d);
    d.stop();
}

// --- SET / ALLOC -------------------------------------------------------------------------------

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn set_with_0_and_minus_1_fires_at_the_next_tick_and_huge_waits() {
    let d = Daemon::start_env(&[], DEBUG);
    let f = d.open();
    for (arg, text) in [(0u64, "0"), (u64::MAX, &u64::MAX.to_string()[..])] {
        let fired = d.count("[timer_handler] pid = ");
        assert_eq!(ioctl(&f, MY_IOCTL_TIMER_SET, arg), Ok(0));
        // jiffies + n*HZ in unsigned long: 0 is now, -1 wraps to 250 jiffies ago; both are
        // "not after now" and fire at the next tick.
        let delta = last_arming(&d, text);
        assert!(delta <= 0, "arg {text}: expires - jiffies = {delta}");
        d.wait_log("the timer fires", |_| {
            d.count("[timer_handler] pid = ") > fired
        });
    }
    // 10^9 s: no wrap, armed for 2.5e11 jiffies from now. Nothing fires while we wait.
    let fired = d.count("[timer_handler] pid = ");
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_SET, 1_000_000_000), Ok(0));
    assert_eq!(last_arming(&d, "1000000000"), 250_000_000_000);
    // u64::MAX / HZ + 1: the product wraps to a small positive delay, as the kernel's would.
    let wrap = u64::MAX / 250 + 1;
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_ALLOC, wrap), Ok(0));
    let delta = last_arming(&d, &wrap.to_string());
    assert_eq!(delta as u64, wrap.wrapping_mul(250));
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_SET, 1_000_000_000), Ok(0));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.count("[timer_handler] pid = "), fired, "{}", d.log());
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(f);
    still_serving(&d);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn alloc_with_minus_1_runs_the_work_at_once() {
    let d = Daemon::start_env(&[], DEBUG);
    let f = d.open();
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_ALLOC, u64::MAX), Ok(0));
    assert!(last_arming(&d, &u64::MAX.to_string()) <= 0);
    d.wait_log("the work item's line", |l| l.contains("Yawn!"));
    drop(f);
    still_serving(&d);
    d.stop();
}

// --- 32-bit callers ----------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn thirty_two_bit_callers_reach_the_same_commands() {
    let d = Daemon::start_env(&[], DEBUG);
    let f = d.open();
    let pid = child(200);
    let lines = |n: &str| d.count(n);
    // The compat system call, as any -m32 program makes it.
    assert_eq!(ioctl32(&f, MY_IOCTL_TIMER_SET_32, 3600), Ok(0));
    assert_eq!(last_arming(&d, "3600"), 3600 * 250);
    assert_eq!(ioctl32(&f, MY_IOCTL_TIMER_ALLOC_32, 3601), Ok(0));
    assert_eq!(last_arming(&d, "3601"), 3601 * 250);
    assert_eq!(ioctl32(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    // -1 from a 32-bit caller is 0xffffffff: no such pid.
    assert_eq!(ioctl32(&f, MY_IOCTL_TIMER_MON, u32::MAX), Err(Errno::ESRCH));
    assert_eq!(ioctl32(&f, MY_IOCTL_TIMER_MON, pid as u32), Ok(0));
    assert_eq!(ioctl32(&f, 0x8004_6b04, 0), Err(Errno::ENOTTY));
    reap(pid);
    assert_eq!(wait_dead(&d, pid), 1);
    assert_eq!(lines("Command: Set timer"), 1);
    assert_eq!(lines("Command: Allocate memory"), 1);
    assert_eq!(lines("Command: Monitor pid"), 2);
    assert_eq!(lines("Command: Unknown command"), 1);

    // The lab's own client built with -m32 (test-client/test32, where gcc-multilib is installed).
    let test32 = common::bin_dir().join("test32");
    if test32.exists() {
        let pid = child(200);
        let p = pid.to_string();
        for (args, out, line) in [
            (vec!["s", "1"], "Set timer to 1 seconds", "arg = 1,"),
            (
                vec!["a", "0"],
                "Allocate memory after 0 seconds",
                "arg = 0,",
            ),
            (vec!["c"], "Cancel timer", "[deferred_ioctl] cancelled"),
            (vec!["p", p.as_str()], "", "Command: Monitor pid"),
        ] {
            let before = lines(line);
            let o = Command::new(&test32)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(o.status.success(), "test32 {args:?}: {o:?}");
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(stdout.contains(out), "test32 {args:?}: {stdout}");
            d.wait_log(line, |_| lines(line) > before);
        }
        reap(pid);
        assert_eq!(wait_dead(&d, pid), 1);
        d.wait_log("the ALLOC work", |l| l.contains("Yawn!"));
    } else {
        println!(
            "e2e: {} missing (no gcc-multilib): the -m32 client was not run",
            test32.display()
        );
    }
    drop(f);
    still_serving(&d);
    d.stop();
}

// --- opens and signals -------------------------------------------------------------------------

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn a_thousand_opens_held_at_once_then_closed() {
    let d = Daemon::start_env(&[], &[("RUST_LOG", "warn,printk=info")]);
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < 1100 {
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.max(1100).min(hard),
            hard,
        )
        .unwrap();
    }
    let before = fd_count(d.pid());
    let files: Vec<File> = (0..1000).map(|_| d.open()).collect();
    // Every one usable.
    for f in files.iter().step_by(97) {
        assert_eq!(ioctl(f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    }
    assert_eq!(d.count("Device released"), 0);
    // The daemon holds no descriptor per open file.
    assert_eq!(fd_count(d.pid()), before);
    drop(files);
    d.wait_log("1000 releases", |l| {
        l.matches("[deferred_release] Device released").count() >= 1000
    });
    assert_eq!(d.count("[deferred_open] Device opened"), 1000);
    assert_eq!(fd_count(d.pid()), before);
    still_serving(&d);
    let log = d.stop();
    assert_eq!(log.matches("Device opened").count(), 1001);
    assert_eq!(log.matches("Device released").count(), 1001);
}

extern "C" fn on_usr1(_: libc::c_int) {}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn ioctls_hit_by_signals_get_their_answer_or_eintr_and_never_hang() {
    let d = Daemon::start_env(&[], &[("RUST_LOG", "warn,printk=info")]);
    // A handler without SA_RESTART: an interrupted ioctl returns EINTR instead of restarting.
    let act = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_usr1),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler does nothing (async-signal-safe).
    unsafe { nix::sys::signal::sigaction(Signal::SIGUSR1, &act) }.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (ok, eintr) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (tx, rx) = std::sync::mpsc::channel();
    let node = d.node();
    let client = {
        let (done, ok, eintr) = (done.clone(), ok.clone(), eintr.clone());
        std::thread::spawn(move || {
            tx.send(nix::sys::pthread::pthread_self()).unwrap();
            let f = File::open(node).unwrap();
            while !done.load(Ordering::Relaxed) {
                match ioctl(&f, MY_IOCTL_TIMER_SET, 3600) {
                    Ok(0) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(Errno::EINTR) => eintr.fetch_add(1, Ordering::Relaxed),
                    other => panic!("{other:?}"),
                };
            }
        })
    };
    let tid = rx.recv().unwrap();
    let t0 = Instant::now();
    let mut sent = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        nix::sys::pthread::pthread_kill(tid, Signal::SIGUSR1).unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_micros(500));
    }
    done.store(true, Ordering::Relaxed);
    // Never hangs: the client finishes its last call promptly.
    let joined = wait_for(Duration::from_secs(10), || client.is_finished());
    assert!(joined, "a client ioctl hung after a signal");
    client.join().unwrap();
    let (ok, eintr) = (ok.load(Ordering::Relaxed), eintr.load(Ordering::Relaxed));
    println!("e2e: {sent} signals; {ok} answered, {eintr} EINTR");
    assert!(ok > 0);
    // Every answered ioctl reached the module (an interrupted one may have too).
    d.wait_log("the answered SETs", |_| d.count("Command: Set timer") >= ok);
    assert!(d.count("Command: Set timer") <= ok + eintr);
    still_serving(&d);
    d.stop();
}
