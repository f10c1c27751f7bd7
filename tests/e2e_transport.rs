//! End-to-end tests of the CUSE transport and the daemon's lifecycle, through the real kernel.
//!
//! They need `/dev/cuse` and root: `scripts/test` runs them in a VM (scripts/vm). Each is
//! `#[ignore]`d so that a plain `cargo test` on a host without CUSE does not run them; when run,
//! a missing `/dev/cuse` is a failure. Run them one at a time (`--test-threads=1`): most use the
//! default device `deferred` 42:0.
//!
//! Two kinds: the `deferred` daemon (the real `deferred` module behind it; only
//! what the lab module also does is checked: its log lines and its answers), and the transport
//! served in-process by this test binary with file operations that record or block (exact
//! `cmd`/`arg` delivery, INTERRUPT, a client killed while its request is being served).

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;

#[cfg(target_arch = "x86_64")]
use common::ioctl32;
use common::{Daemon, TIMEOUT, ctl, devnum, ioctl, open, require_cuse, wait_for};
use deferred::cuse::{Config, Cuse, Device};
use deferred::kernel;
use deferred::kernel::fs::{File as DevFile, FileOperations};
use deferred::kernel::jiffies::HZ;
use deferred::kernel::wait::{WaitQueueHead, wait_event_timeout, wake_up_all};
use deferred::modules::abi::*;

// --- the daemon --------------------------------------------------------------------------------

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn node_is_char_42_0_mode_0600_and_goes_on_sigterm() {
    let d = Daemon::start(&[]);
    let node = d.node();
    assert_eq!(devnum(&node), (42, 0));
    let m = std::fs::metadata(&node).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o600, "devtmpfs default");
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert_eq!(
        std::fs::read_to_string("/sys/class/cuse/deferred/dev")
            .unwrap()
            .trim(),
        "42:0"
    );
    let log = d.stop();
    assert!(!Path::new("/sys/class/cuse/deferred").exists());
    assert!(log.contains("[deferred_init] Init module"), "{log}");
    assert!(log.contains("[deferred_exit] Exit module"), "{log}");
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn mode_and_group_options_are_applied() {
    let d = Daemon::start(&["--mode", "0666", "--group", "5"]);
    let m = std::fs::metadata(d.node()).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o666);
    assert_eq!(m.gid(), 5);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn every_lab_command_reaches_the_module() {
    let d = Daemon::start(&[]);
    let me = std::process::id().to_string();
    for (args, line) in [
        (vec!["set", "3"], "Command: Set timer"),
        (vec!["cancel"], "Command: Cancel timer"),
        (vec!["alloc", "2"], "Command: Allocate memory"),
        (vec!["monitor", me.as_str()], "Command: Monitor pid"),
        (vec!["ioctl", "0x40086b01", "1"], "Command: Set timer"),
    ] {
        let before = d.count(line);
        let out = ctl(&args);
        assert!(
            out.status.success(),
            "deferred-ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        d.wait_log(line, |_| d.count(line) > before);
    }
    // The timer command last armed is cancelled so nothing fires after this test.
    assert!(ctl(&["cancel"]).status.success());
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn monitor_of_a_missing_pid_is_esrch_in_one_line() {
    let d = Daemon::start(&[]);
    let out = ctl(&["monitor", "4194303"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "deferred-ctl: ioctl Monitor pid on /dev/deferred: No such process (ESRCH)\n"
    );
    let f = open(&d.node());
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, 4_194_303), Err(Errno::ESRCH));
    drop(f);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn the_labs_test_program_drives_the_device() {
    let d = Daemon::start(&[]);
    let test = common::bin("test");
    let run = |args: &[&str]| {
        Command::new(&test)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["s", "3"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "Set timer to 3 seconds"
    );
    d.wait_log("Set timer", |l| l.contains("Command: Set timer"));
    let out = run(&["c"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "Cancel timer"
    );
    let out = run(&["p", "4194303"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "Monitor PID 4194303."
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ioctl monitor pid error: No such process\n"
    );
    let log = d.stop();
    // Each run opened and released the device once.
    assert_eq!(log.matches("Device opened").count(), 3, "{log}");
    assert_eq!(log.matches("Device released").count(), 3, "{log}");
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn read_and_write_are_einval() {
    let d = Daemon::start(&[]);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.node())
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        f.read(&mut buf).unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        f.write(b"x").unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    drop(f);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn poll_reports_what_a_driver_without_poll_reports() {
    let d = Daemon::start(&[]);
    let f = open(&d.node());
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN | libc::POLLOUT | libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1);
    // DEFAULT_POLLMASK, filtered by the events asked for: readable and writable, no POLLPRI.
    assert_eq!(pfd.revents, libc::POLLIN | libc::POLLOUT);
    drop(f);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn every_open_is_released_once() {
    let d = Daemon::start(&[]);
    let n = 20;
    // Some at once, some one after the other, some through child processes.
    let held: Vec<File> = (0..5).map(|_| open(&d.node())).collect();
    for _ in 0..10 {
        drop(open(&d.node()));
    }
    for _ in 0..5 {
        assert!(ctl(&["cancel"]).status.success());
    }
    drop(held);
    d.wait_log("20 releases", |l| l.matches("Device released").count() >= n);
    let log = d.stop();
    assert_eq!(
        log.matches("[deferred_open] Device opened").count(),
        n,
        "{log}"
    );
    assert_eq!(
        log.matches("[deferred_release] Device released").count(),
        n,
        "{log}"
    );
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn eight_concurrent_clients_are_all_answered() {
    // Info logging off: 2 lines per ioctl would dominate.
    let d = Daemon::start_env(&["--threads", "4"], &[("RUST_LOG", "warn")]);
    let per = 500;
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (node, ok) = (d.node(), ok.clone());
            std::thread::spawn(move || {
                let f = open(&node);
                for j in 0..per {
                    // Alternate commands. Not MON: with the real module each one adds a watched
                    // task (and its pidfd) to the list.
                    let r = match (i + j) % 3 {
                        0 => ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0),
                        1 => ioctl(&f, 0x6b05, 0)
                            .or_else(|e| if e == Errno::ENOTTY { Ok(0) } else { Err(e) }),
                        _ => ioctl(&f, MY_IOCTL_TIMER_SET, 3600),
                    };
                    r.unwrap_or_else(|e| panic!("client {i} ioctl {j}: {e}"));
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 8 * per);
    let f = open(&d.node());
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(f);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn clients_sigkilled_in_the_middle_of_ioctls() {
    let d = Daemon::start_env(&[], &[("RUST_LOG", "warn,printk=info")]);
    let f = open(&d.node());
    let fd = f.as_raw_fd();
    let mut children = Vec::new();
    for _ in 0..4 {
        // SAFETY: the child only makes raw system calls (ioctl, _exit): async-signal-safe, as
        // required after fork in a multi-threaded process.
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: `fd` is open in the child (inherited); CANCEL takes no pointer.
                if unsafe { libc::ioctl(fd, MY_IOCTL_TIMER_CANCEL as libc::c_ulong, 0) } < 0 {
                    // SAFETY: leaving the child without running the parent's destructors.
                    unsafe { libc::_exit(3) };
                }
            },
            -1 => panic!("fork: {}", Errno::last()),
            pid => children.push(nix::unistd::Pid::from_raw(pid)),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    for &pid in &children {
        nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
    }
    for &pid in &children {
        let reaped = wait_for(Duration::from_secs(5), || {
            !matches!(
                nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
                Ok(nix::sys::wait::WaitStatus::StillAlive)
            )
        });
        assert!(reaped, "child {pid} still not reaped 5 s after SIGKILL");
    }
    // Still served, on the shared open file and on a new one.
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(f);
    let g = open(&d.node());
    assert_eq!(ioctl(&g, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(g);
    d.wait_log("2 releases", |l| l.matches("Device released").count() >= 2);
    let log = d.stop();
    assert_eq!(log.matches("Device opened").count(), 2, "{log}");
    assert_eq!(log.matches("Device released").count(), 2, "{log}");
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn sigterm_with_clients_holding_the_node_open() {
    let mut d = Daemon::start(&[]);
    let held: Vec<File> = (0..3).map(|_| open(&d.node())).collect();
    assert_eq!(ioctl(&held[0], MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    // A child process holding it too.
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(File::open(d.node()).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        d.log()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        wait_for(Duration::from_secs(5), || !d.node().exists()),
        "node still there"
    );
    for f in &held {
        let e = ioctl(f, MY_IOCTL_TIMER_CANCEL, 0).unwrap_err();
        assert!(matches!(e, Errno::ENODEV | Errno::ENOTCONN), "{e}");
    }
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
    // The name is free again at once.
    Daemon::start(&[]).stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn a_second_instance_fails_with_one_line() {
    let d = Daemon::start(&[]);
    let mut second = Daemon::spawn(&[]);
    let status = second.wait_exit(TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", second.log());
    assert_eq!(
        second.log(),
        "deferred: the device name `deferred` is taken (another deferred running? \
         see /sys/class/cuse/deferred)\n"
    );
    // Another name on the same device number: refused by the kernel, diagnosed.
    let mut third = Daemon::spawn(&["--name", "deferred2"]);
    let status = third.wait_exit(TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", third.log());
    let log = third.log();
    let err: Vec<_> = log
        .lines()
        .filter(|l| l.starts_with("deferred: "))
        .collect();
    assert_eq!(err.len(), 1, "{log}");
    assert!(err[0].contains("the device number 42:0 is taken"), "{log}");
    assert!(!Path::new("/dev/deferred2").exists());
    // The first instance is unharmed.
    let f = open(&d.node());
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(f);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn dynamic_major() {
    let d = Daemon::start(&["--major", "0", "--name", "deferred-dyn"]);
    let (major, minor) = devnum(&d.node());
    assert!(major != 0 && major != 42, "major {major}");
    assert_eq!(minor, 0);
    let sys = std::fs::read_to_string("/sys/class/cuse/deferred-dyn/dev").unwrap();
    assert_eq!(sys.trim(), format!("{major}:{minor}"));
    let out = ctl(&["--device", "/dev/deferred-dyn", "cancel"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn the_daemon_does_not_leak_the_cuse_fd_to_clients_it_runs() {
    // A client forked from the daemon would keep the device alive: check the daemon's fds are
    // all close-on-exec, from /proc/<pid>/fdinfo.
    let d = Daemon::start(&[]);
    let dir = format!("/proc/{}/fdinfo", d.pid());
    let mut cuse_fds = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let fd: i32 = e.file_name().to_string_lossy().parse().unwrap();
        if fd <= 2 {
            continue;
        }
        let target = std::fs::read_link(format!("/proc/{}/fd/{fd}", d.pid())).unwrap_or_default();
        let info = std::fs::read_to_string(e.path()).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        assert_ne!(
            flags & libc::O_CLOEXEC as u32,
            0,
            "fd {fd} ({}) is not CLOEXEC",
            target.display()
        );
        if target == Path::new("/dev/cuse") {
            cuse_fds += 1;
        }
    }
    assert_eq!(cuse_fds, 1);
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn not_root_is_a_one_line_error() {
    use std::os::unix::process::CommandExt;
    common::refuses_to_start(
        |c| c.uid(65534).gid(65534),
        "deferred: /dev/cuse: permission denied: serving a device needs root (try sudo)\n",
    );
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn reader_threads_are_named_and_grow_with_concurrent_clients_up_to_threads() {
    let d = Daemon::start_env(&["--threads", "3"], &[("RUST_LOG", "warn")]);
    // A new thread names itself when it first runs: give them a moment.
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .filter(|n| n.starts_with("cuse/"))
            .collect();
        names.sort();
        names
    };
    wait_for(TIMEOUT, || names().len() == 1);
    assert_eq!(names(), ["cuse/0"], "one reader before any request");
    // Six clients at once: the pool grows while every reader is busy, never past --threads.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (node, stop) = (d.node(), stop.clone());
            std::thread::spawn(move || {
                let f = open(&node);
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(60), || {
        let n = names();
        assert!(n.len() <= 3, "more readers than --threads: {n:?}");
        n.len() == 3
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    // A thread is named by itself once it runs: until then it has its creator's name.
    let want = ["cuse/0", "cuse/1", "cuse/2"];
    assert!(wait_for(TIMEOUT, || names() == want), "{:?}", names());
    d.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn timer_and_kthread_modules_load_and_unload_without_a_device() {
    require_cuse();
    for m in ["timer", "kthread"] {
        let mut d = Daemon::spawn(&[m]);
        d.wait_log("init line", |l| {
            l.contains(&format!("[{m}_init] Init module"))
        });
        assert!(d.try_status().is_none(), "{}", d.log());
        d.signal(Signal::SIGINT);
        let status = d.wait_exit(TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "{m}: {status:?}\n{}",
            d.log()
        );
        assert!(
            d.log().contains(&format!("[{m}_exit] Exit module")),
            "{}",
            d.log()
        );
        assert!(!Path::new("/sys/class/cuse/deferred").exists());
    }
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn load_and_unload_scripts() {
    require_cuse();
    // The scripts are built into this binary: in the VM the source tree is not there.
    let dir = std::env::temp_dir().join(format!("e2e-scripts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (load, unload) = (dir.join("load"), dir.join("unload"));
    for (path, text) in [
        (&load, include_str!("../scripts/load")),
        (&unload, include_str!("../scripts/unload")),
    ] {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    run_scripts(&load, &unload);
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_scripts(load: &Path, unload: &Path) {
    let env = [("DEFERRED", common::bin("deferred"))];
    let out = Command::new(load)
        .args([
            "--log",
            "/tmp/e2e-load.log",
            "--pidfile",
            "/tmp/e2e-load.pid",
        ])
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(devnum(Path::new("/dev/deferred")), (42, 0));
    // A second load fails with the daemon's one-line error.
    let out = Command::new(load)
        .args([
            "--log",
            "/tmp/e2e-load2.log",
            "--pidfile",
            "/tmp/e2e-load2.pid",
        ])
        .envs(env)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the device name `deferred` is taken"), "{err}");
    let out = Command::new(unload)
        .args(["--pidfile", "/tmp/e2e-load.pid"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new("/dev/deferred").exists());
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn round_trip_of_20000_cancel_ioctls() {
    let d = Daemon::start_env(&[], &[("RUST_LOG", "warn")]);
    let f = open(&d.node());
    let n = 20_000u32;
    let t0 = Instant::now();
    for _ in 0..n {
        assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    }
    let dt = t0.elapsed();
    println!(
        "e2e: {n} CANCEL ioctls in {:.3} s: {:.1} us per round trip",
        dt.as_secs_f64(),
        dt.as_secs_f64() * 1e6 / f64::from(n)
    );
    drop(f);
    d.stop();
}

// --- the transport in-process ------------------------------------------------------------------

/// File operations that record each call; ioctl `BLOCK` sleeps until the gate opens, in the
/// runtime's `wait_event_timeout` as a module's file operation sleeps (the transport then calls
/// another reader, which takes the kernel's INTERRUPT for it).
#[derive(Default)]
struct Probe {
    calls: Mutex<Vec<String>>,
    blocked: AtomicUsize,
    gate: AtomicBool,
    wq: WaitQueueHead,
    finished: AtomicBool,
}

const BLOCK: u32 = 0x6b63;

impl Probe {
    fn open_gate(&self) {
        self.gate.store(true, Ordering::SeqCst);
        wake_up_all(&self.wq);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl FileOperations for Probe {
    fn open(&self, f: &DevFile) -> kernel::error::Result {
        self.calls
            .lock()
            .unwrap()
            .push(format!("open {} tid {}", f.fh, f.caller_tid));
        Ok(())
    }
    fn release(&self, f: &DevFile) {
        self.calls.lock().unwrap().push(format!("release {}", f.fh));
    }
    fn unlocked_ioctl(&self, f: &DevFile, cmd: u32, arg: u64) -> kernel::error::Result<i32> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("ioctl {} {cmd:#010x} {arg:#x}", f.fh));
        if cmd == BLOCK {
            self.blocked.fetch_add(1, Ordering::SeqCst);
            let timeout = TIMEOUT.as_millis() as u64 * HZ / 1000;
            wait_event_timeout(&self.wq, || self.gate.load(Ordering::SeqCst), timeout);
            self.finished.store(true, Ordering::SeqCst);
            return Ok(7);
        }
        Ok(i32::try_from(arg & 0x7fff_ffff).unwrap())
    }
    fn compat_ioctl(&self, _f: &DevFile, cmd: u32, arg: u64) -> kernel::error::Result<i32> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("compat {cmd:#010x} {arg:#x}"));
        Ok(0)
    }
}

fn serve(name: &str, probe: &Arc<Probe>) -> Device {
    require_cuse();
    let config = Config {
        name: name.into(),
        major: 0,
        ..Config::default()
    };
    Cuse::open(config)
        .unwrap_or_else(|e| panic!("{e}"))
        .start(probe.clone())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn cmd_and_arg_arrive_exactly() {
    let probe = Arc::new(Probe::default());
    let dev = serve("dfr-probe", &probe);
    let f = open(&dev.node());
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_SET, 3), Ok(3));
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    assert_eq!(
        ioctl(&f, MY_IOCTL_TIMER_ALLOC, 0x1234_5678_9abc),
        Ok(0x5678_9abc)
    );
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, 4242), Ok(4242));
    assert_eq!(ioctl(&f, 0xdead_6b01, u64::MAX), Ok(0x7fff_ffff));
    drop(f);
    let calls = probe.calls();
    let tid = nix::unistd::gettid().as_raw();
    assert_eq!(
        calls[0],
        format!("open 1 tid {tid}"),
        "the caller's thread id"
    );
    assert_eq!(
        calls[1..],
        [
            "ioctl 1 0x40086b01 0x3",
            "ioctl 1 0x00006b02 0x0",
            "ioctl 1 0x40086b03 0x123456789abc",
            "ioctl 1 0x00006b04 0x1092",
            "ioctl 1 0xdead6b01 0xffffffffffffffff",
            "release 1",
        ]
    );
    dev.stop();
    assert!(!Path::new("/dev/dfr-probe").exists());
}

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn a_32_bit_caller_reaches_compat_ioctl() {
    let probe = Arc::new(Probe::default());
    let dev = serve("dfr-compat", &probe);
    let f = open(&dev.node());
    assert_eq!(ioctl32(&f, MY_IOCTL_TIMER_SET_32, 3), Ok(0));
    assert_eq!(ioctl32(&f, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    drop(f);
    let calls = probe.calls();
    assert_eq!(
        calls[1..3],
        ["compat 0x40046b01 0x3", "compat 0x00006b02 0x0"],
        "{calls:?}"
    );
    dev.stop();
}

extern "C" fn on_usr1(_: libc::c_int) {}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn a_signal_interrupts_a_request_being_served() {
    let probe = Arc::new(Probe::default());
    let dev = serve("dfr-intr", &probe);
    // SIGUSR1 with a handler and without SA_RESTART: the blocked ioctl must return EINTR.
    let act = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_usr1),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler does nothing (async-signal-safe).
    unsafe { nix::sys::signal::sigaction(Signal::SIGUSR1, &act) }.unwrap();
    let node = dev.node();
    let (tx, rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        tx.send(nix::sys::pthread::pthread_self()).unwrap();
        let f = open(&node);
        let r = ioctl(&f, BLOCK, 0);
        (r, f)
    });
    let tid = rx.recv().unwrap();
    assert!(wait_for(TIMEOUT, || probe.blocked.load(Ordering::SeqCst) == 1));
    nix::sys::pthread::pthread_kill(tid, Signal::SIGUSR1).unwrap();
    let (r, f) = client.join().unwrap();
    assert_eq!(r, Err(Errno::EINTR));
    assert!(
        !probe.finished.load(Ordering::SeqCst),
        "answered before the operation finished"
    );
    // The operation finishes later; its answer is dropped and the device keeps serving.
    probe.open_gate();
    assert!(wait_for(TIMEOUT, || probe.finished.load(Ordering::SeqCst)));
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, 5), Ok(5));
    drop(f);
    assert!(wait_for(TIMEOUT, || dev.in_flight() == 0));
    dev.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn a_client_killed_while_its_request_is_served_dies_at_once() {
    let probe = Arc::new(Probe::default());
    let dev = serve("dfr-kill", &probe);
    let mut child = Command::new(common::bin("deferred-ctl"))
        .args(["--device", "/dev/dfr-kill", "ioctl", &format!("{BLOCK:#x}")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(TIMEOUT, || probe.blocked.load(Ordering::SeqCst) == 1));
    let t0 = Instant::now();
    child.kill().unwrap(); // SIGKILL
    // Without INTERRUPT handling it would sleep (D state) until the operation finished.
    let reaped = wait_for(Duration::from_secs(5), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(reaped, "the killed client is stuck in the kernel");
    assert!(!probe.finished.load(Ordering::SeqCst));
    println!("e2e: killed client reaped after {:?}", t0.elapsed());
    probe.open_gate();
    // Its open file was released, and others are still served.
    assert!(wait_for(TIMEOUT, || probe
        .calls()
        .iter()
        .any(|c| c == "release 1")));
    let f = open(&dev.node());
    assert_eq!(ioctl(&f, MY_IOCTL_TIMER_MON, 9), Ok(9));
    drop(f);
    dev.stop();
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn stop_with_a_request_in_flight_still_answers_it() {
    let probe = Arc::new(Probe::default());
    let dev = serve("dfr-stop", &probe);
    let node = dev.node();
    let client = std::thread::spawn(move || {
        let f = open(&node);
        ioctl(&f, BLOCK, 0)
    });
    assert!(wait_for(TIMEOUT, || probe.blocked.load(Ordering::SeqCst) == 1));
    let p = probe.clone();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        p.open_gate();
    });
    dev.stop(); // waits for the reader in the operation, which answers, then closes
    assert_eq!(client.join().unwrap(), Ok(7));
    opener.join().unwrap();
    assert!(!Path::new("/dev/dfr-stop").exists());
}
