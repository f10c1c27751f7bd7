//! End-to-end: faults and least privilege, through real CUSE.
//!
//! Covered elsewhere, not repeated: clients SIGKILLed in the middle of ioctls and a client
//! killed while its request is served (e2e_transport), SIGTERM with clients holding the node
//! (e2e_transport), the daemon's descriptors all close-on-exec (e2e_transport).
//!
//! They need `/dev/cuse` and root: `scripts/test` runs them in a VM.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;

use common::{Daemon, TIMEOUT, devnum, fd_count, ioctl, wait_for};
use deferred::modules::abi::*;

/// Forks a child that waits for a signal (`pause`) and returns its pid.
fn pausing_child() -> nix::unistd::Pid {
    // SAFETY: the child only calls pause and _exit (async-signal-safe).
    match unsafe { libc::fork() } {
        // SAFETY: as above: pause and _exit only.
        0 => unsafe {
            libc::pause();
            libc::_exit(0)
        },
        -1 => panic!("fork: {}", Errno::last()),
        pid => nix::unistd::Pid::from_raw(pid),
    }
}

fn kill_and_reap(pids: &[nix::unistd::Pid]) {
    for &p in pids {
        let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
    }
    for &p in pids {
        let _ = nix::sys::wait::waitpid(p, None);
    }
}

/// A client's whole round: open, CANCEL (answered 0), release.
fn cancel_round(d: &Daemon) {
    let g = d.open();
    assert_eq!(ioctl(&g, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(g);
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn a_client_sigkilled_between_ioctls_is_released_and_leaks_nothing() {
    // -v: the transport's debug lines (each request, INTERRUPTs) are in the log shown on failure.
    let d = Daemon::start(&["-v"]);
    let baseline = fd_count(d.pid());
    // A process that opened the node, made an ioctl, and now sleeps holding it (forked after
    // the open: the parent then closes its copy).
    let f = d.open();
    let fd = f.as_raw_fd();
    // SAFETY: the child only makes raw system calls (ioctl, pause, _exit): async-signal-safe,
    // as required after fork in a multi-threaded process.
    let holder = match unsafe { libc::fork() } {
        // SAFETY: as above; `fd` is open in the child (inherited); CANCEL takes no pointer.
        0 => unsafe {
            if libc::ioctl(fd, MY_IOCTL_TIMER_CANCEL as libc::c_ulong, 0) != 0 {
                libc::_exit(3);
            }
            libc::pause();
            libc::_exit(0)
        },
        -1 => panic!("fork: {}", Errno::last()),
        pid => nix::unistd::Pid::from_raw(pid),
    };
    drop(f);
    d.wait_log("the holder's ioctl", |_| {
        d.count("Command: Cancel timer") == 1
    });
    // Not released while the killed-to-be holder has it: a RELEASE would have been queued when
    // the parent closed its copy, before another client's open, request and release, which
    // the daemon has logged once its release line is there.
    cancel_round(&d);
    d.wait_log("the other client's release", |_| {
        d.count("Device released") >= 1
    });
    assert_eq!(d.count("Device released"), 1, "{}", d.log());
    kill_and_reap(&[holder]);
    d.wait_log("the holder's release", |_| d.count("Device released") == 2);
    assert_eq!(fd_count(d.pid()), baseline);
    let f = d.open();
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(f);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn unload_with_timer_work_1000_watched_and_clients_is_prompt_and_quiet() {
    let mut d = Daemon::start_env(&[], &[("RUST_LOG", "warn,printk=info")]);
    let f = d.open();
    let held: Vec<File> = (0..3).map(|_| d.open()).collect();
    // 1,000 watched processes (alive: the timer re-arms every second to check them).
    let kids: Vec<_> = (0..1000).map(|_| pausing_child()).collect();
    for k in &kids {
        assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, k.as_raw() as u64), Ok(0));
    }
    // An ALLOC work: the timer fired and queued it; alloc_io() sleeps 5 s on events/N (running
    // or about to: the unload's flush_scheduled_work waits for it either way).
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_ALLOC, 0), Ok(0));
    d.wait_log("the ALLOC expiry", |l| {
        l.lines()
            .rev()
            .take_while(|l| !l.contains("Allocate memory"))
            .any(|l| l.contains("[timer_handler]"))
    });
    // And a pending timer, due while the unload waits for the work: it must not fire.
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_SET, 1), Ok(0));
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(6));
    let took = t0.elapsed();
    let log = d.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "not exited 0 within 6 s ({took:?}): {status:?}\n{log}"
    );
    assert!(
        wait_for(Duration::from_secs(2), || !d.node().exists()),
        "node still there"
    );
    println!("e2e: unload took {took:?}");
    // After the exit line: only what flush_scheduled_work waits for (the running work's line).
    let after: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("[deferred_exit] Exit module"))
        .skip(1)
        .collect();
    assert_eq!(
        after.len(),
        1,
        "lines after the exit line: {after:?}\n{log}"
    );
    assert!(after[0].contains("Yawn!"), "{after:?}");
    // Watched processes that are still alive are not reported at unload.
    assert!(!log.contains(") is dead"), "{log}");
    for h in &held {
        assert!(matches!(
            ioctl(h, MY_IOCTL_TIMER_CANCEL, 0),
            Err(Errno::ENODEV | Errno::ENOTCONN)
        ));
    }
    drop(held);
    drop(f);
    kill_and_reap(&kids);
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn daemon_sigkilled_node_goes_even_held_by_a_clients_child_and_restart_works() {
    let mut d = Daemon::start(&[]);
    let f = d.open();
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_SET, 100), Ok(0));
    // A client forks a long-lived child that holds the node open (its stdin).
    let mut grandchild = Command::new("sleep")
        .arg("60")
        .stdin(File::open(d.node()).unwrap())
        .spawn()
        .unwrap();
    d.wait_log("the child's open", |_| d.count("Device opened") == 2);
    d.signal(Signal::SIGKILL);
    assert!(d.wait_exit(TIMEOUT).is_some(), "daemon not dead");
    // The node goes with the daemon's /dev/cuse descriptor, whoever holds /dev/deferred.
    assert!(
        wait_for(Duration::from_secs(5), || !Path::new("/dev/deferred")
            .exists()),
        "node kept alive after SIGKILL"
    );
    assert!(!Path::new("/sys/class/cuse/deferred").exists());
    assert!(matches!(
        ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0),
        Err(Errno::ENODEV | Errno::ENOTCONN)
    ));
    // An immediate restart gets the same name and number, while the old files are still open.
    let d2 = Daemon::start(&[]);
    assert_eq!(devnum(&d2.node()), (42, 0));
    // The old descriptor does not reach the new daemon: had it, its line would come before
    // the new client's (which asks after the old call returned).
    assert!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0).is_err());
    cancel_round(&d2);
    d2.wait_log("the new client's CANCEL", |_| {
        d2.count("Command: Cancel timer") >= 1
    });
    assert_eq!(d2.count("Command: Cancel timer"), 1, "{}", d2.log());
    drop(f);
    d2.stop();
    let _ = grandchild.kill();
    let _ = grandchild.wait();
}

// --- least privilege ---------------------------------------------------------------------------

/// `Uid:`, `Gid:`, `Groups:` and `CapEff:` of a process.
fn creds(pid: u32) -> (String, String, String, String) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (get("Uid:"), get("Gid:"), get("Groups:"), get("CapEff:"))
}

/// A user name to drop to and its uid: `nobody` where /etc/passwd has it; else (the VM's
/// initramfs has root only) a user `deferred-e2e`, uid/gid 4242, added to /etc/passwd and
/// /etc/group.
fn a_named_user() -> (String, u32) {
    if let Ok(Some(u)) = nix::unistd::User::from_name("nobody") {
        return ("nobody".into(), u.uid.as_raw());
    }
    for (file, line) in [
        (
            "/etc/passwd",
            "deferred-e2e:x:4242:4242::/nonexistent:/bin/false\n",
        ),
        ("/etc/group", "deferred-e2e:x:4242:\n"),
    ] {
        let mut text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.contains("deferred-e2e:") {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(line);
            std::fs::write(file, text).unwrap();
        }
    }
    ("deferred-e2e".into(), 4242)
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn user_drops_root_once_the_device_is_up_and_everything_still_works() {
    let (name, uid) = a_named_user();
    let gid = nix::unistd::User::from_name(&name)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    for (user, uid, gid) in [(name, uid, gid), ("65534".to_string(), 65534, 65534)] {
        let d = Daemon::start(&["--user", &user]);
        let (id, gd) = (uid.to_string(), gid.to_string());
        let (uids, gids, groups, caps) = creds(d.pid());
        assert_eq!(uids, format!("{id} {id} {id} {id}"), "--user {user}");
        assert_eq!(gids, format!("{gd} {gd} {gd} {gd}"), "--user {user}");
        assert_eq!(groups, "", "no supplementary groups");
        assert_eq!(caps, "0000000000000000", "no capability left");
        // Every thread (the transport's readers, the workers) dropped it too.
        for t in std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap() {
            let s = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            assert!(s.contains(&format!("Uid:\t{id}\t{id}\t{id}\t{id}")), "{s}");
        }
        // The node is still root's, 0600.
        let m = std::fs::metadata(d.node()).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!((m.uid(), m.permissions().mode() & 0o777), (0, 0o600));
        let f = d.open();
        assert_eq!(ioctl(&f, MY_IOCTL_TIMER_SET, 0), Ok(0));
        d.wait_log("the SET expiry", |l| l.contains("[timer_handler] pid = "));
        // MON of a root process and of another user's process: pidfd_open and /proc/<pid>/stat
        // need no privilege.
        let root_kid = pausing_child();
        let mut other = Command::new("sleep")
            .arg("60")
            .uid(1234)
            .gid(1234)
            .spawn()
            .unwrap();
        assert_eq!(
            ioctl(&f, MY_IOCTL_TIMER_MON, root_kid.as_raw() as u64),
            Ok(0)
        );
        assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, u64::from(other.id())), Ok(0));
        assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, 4_194_303), Err(Errno::ESRCH));
        kill_and_reap(&[root_kid]);
        other.kill().unwrap();
        other.wait().unwrap();
        for pid in [root_kid.as_raw() as u32, other.id()] {
            d.wait_log("the watched process reported", |l| {
                l.contains(&format!("({pid}) is dead"))
            });
        }
        assert_eq!(ioctl(&f, MY_IOCTL_TIMER_ALLOC, 0), Ok(0));
        d.wait_log("the work", |l| l.contains("Yawn!"));
        drop(f);
        // Unload still works without root: exit 0, node gone.
        d.stop();
    }
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn an_unknown_user_is_a_one_line_error_before_anything_is_set_up() {
    common::refuses_to_start(
        |c| c.args(["--user", "no-such-user-here"]),
        "deferred: no user `no-such-user-here` (give a name from /etc/passwd or a uid)\n",
    );
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn a_sleeping_alloc_work_never_delays_other_clients() {
    let d = Daemon::start_env(&[], &[("RUST_LOG", "warn,printk=info")]);
    let f = d.open();
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_ALLOC, 0), Ok(0));
    // The work is queued and sleeping for 5 s in alloc_io().
    d.wait_log("the ALLOC expiry", |l| l.contains("[timer_handler]"));
    let t0 = Instant::now();
    let worst = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (node, worst) = (d.node(), worst.clone());
            std::thread::spawn(move || {
                let f = File::open(node).unwrap();
                for i in 0..50 {
                    let t = Instant::now();
                    let cmd = if i % 2 == 0 {
                        MY_IOCTL_TIMER_CANCEL
                    } else {
                        MY_IOCTL_TIMER_SET
                    };
                    assert_eq!(ioctl(&f, cmd, 3600), Ok(0));
                    worst.fetch_max(t.elapsed().as_millis() as usize, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = t0.elapsed();
    // All 400 answered while the work still sleeps: none waited for it.
    let log = d.log();
    assert!(
        !log.contains("Yawn!"),
        "the work ended first: {all:?}\n{log}"
    );
    let worst = worst.load(Ordering::Relaxed);
    println!("e2e: 400 ioctls during the ALLOC work in {all:?}, slowest {worst} ms");
    // A liveness bound (the work sleeps 5000 ms), not a speed test.
    assert!(worst < 2500, "an ioctl took {worst} ms");
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(f);
    d.wait_log("the work's end", |l| l.contains("Yawn!"));
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn out_of_descriptors_mon_is_enomem_and_everything_else_works() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // The daemon inherits a hard limit of 64 descriptors (it raises its soft limit to that).
    let saved = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 64, 64).unwrap();
    let d = Daemon::start_env(&[], &[("RUST_LOG", "warn,printk=info")]);
    setrlimit(Resource::RLIMIT_NOFILE, saved.0, saved.1).unwrap();
    let f = d.open();
    let kids: Vec<_> = (0..100).map(|_| pausing_child()).collect();
    let mut answers = std::collections::BTreeMap::new();
    for k in &kids {
        let r = ioctl(&f, MY_IOCTL_TIMER_MON, k.as_raw() as u64);
        *answers.entry(format!("{r:?}")).or_insert(0) += 1;
    }
    println!("e2e: MON of 100 live processes with 64 descriptors: {answers:?}");
    // Live processes: watched while descriptors last, then ENOMEM -- never "no such process".
    let watched = answers.get("Ok(0)").copied().unwrap_or(0);
    assert!(watched > 20, "{answers:?}");
    assert_eq!(
        answers.get("Err(ENOMEM)").copied().unwrap_or(0),
        100 - watched,
        "{answers:?}"
    );
    // Every other command still works, and opens need no descriptor.
    let more: Vec<File> = (0..20).map(|_| d.open()).collect();
    assert_eq!(ioctl(&more[19], MY_IOCTL_TIMER_SET, 3600), Ok(0));
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(more);
    // The watched die: reported, their descriptors freed, MON works again.
    kill_and_reap(&kids);
    assert_eq!(
        ioctl(&f, MY_IOCTL_TIMER_MON, std::process::id() as u64),
        Ok(0)
    );
    d.wait_log("every watched process reported", |l| {
        l.matches(") is dead").count() >= watched
    });
    let k = pausing_child();
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, k.as_raw() as u64), Ok(0));
    kill_and_reap(&[k]);
    d.wait_log("the last one reported", |l| {
        l.contains(&format!("({k}) is dead"))
    });
    drop(f);
    d.stop();
}
