//! Helpers shared by the end-to-end tests (`tests/e2e_*.rs`), which run through real CUSE:
//! find the binaries, run the daemon with its log captured, wait for its node, stop it and check
//! it went, run a client.
//!
//! Binaries come from `$DEFERRED_BIN_DIR` (a directory with `deferred`, `deferred-ctl`, `test`),
//! else from the directory of the `deferred` binary Cargo built for these tests.
//! A test that needs CUSE FAILS when `/dev/cuse` is missing ([`require_cuse`]): it never skips.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod wait;
pub use wait::wait_for;

static PIDFILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Generous: timings in a TCG VM on a shared 2-core host are slow and noisy.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// The directory holding `deferred`, `deferred-ctl` and `test`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEFERRED_BIN_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_BIN_EXE_deferred"))
        .parent()
        .expect("the deferred binary has a directory")
        .to_path_buf()
}

/// A binary by name, which must exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found (set DEFERRED_BIN_DIR to the directory of the built binaries)",
        path.display()
    );
    path
}

/// Fails the test unless `/dev/cuse` is usable here.
pub fn require_cuse() {
    let m = std::fs::metadata("/dev/cuse").unwrap_or_else(|_| {
        panic!("/dev/cuse is missing: end-to-end tests need CUSE; run them with scripts/test (VM)")
    });
    assert!(
        m.file_type().is_char_device(),
        "/dev/cuse is not a character device"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests must run as root (they serve /dev/cuse)"
    );
}

/// A running `deferred` with its stdout and stderr captured (merged, in arrival order per stream).
pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    name: String,
    status: Option<ExitStatus>,
}

fn capture(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    })
}

/// The device name a `deferred` command line asks for.
fn name_of(args: &[&str]) -> String {
    let mut name = "deferred".to_string();
    for (i, a) in args.iter().enumerate() {
        if *a == "--name" {
            if let Some(n) = args.get(i + 1) {
                name = n.to_string();
            }
        } else if let Some(n) = a.strip_prefix("--name=") {
            name = n.to_string();
        }
    }
    name
}

impl Daemon {
    /// Starts `deferred ARGS` and returns at once.
    pub fn spawn(args: &[&str]) -> Daemon {
        Daemon::spawn_env(args, &[])
    }

    /// Starts `deferred ARGS` with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(bin("deferred"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn deferred");
        let log = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            capture(child.stdout.take().unwrap(), log.clone()),
            capture(child.stderr.take().unwrap(), log.clone()),
        ];
        Daemon {
            child: Some(child),
            log,
            readers,
            name: name_of(args),
            status: None,
        }
    }

    /// Starts `deferred ARGS` and waits until it is ready: its node exists and its pid file
    /// (written once the node has its mode and group) too. Panics with the log otherwise.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_env(args, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        require_cuse();
        let pidfile = std::env::temp_dir().join(format!(
            "e2e-deferred-{}-{}.pid",
            std::process::id(),
            PIDFILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&pidfile);
        let pidfile_arg = pidfile.to_str().unwrap().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--pidfile", pidfile_arg.as_str()]);
        let mut d = Daemon::spawn_env(&all, env);
        let node = d.node();
        let ok = wait_for(TIMEOUT, || {
            (pidfile.exists()
                && std::fs::metadata(&node).is_ok_and(|m| m.file_type().is_char_device()))
                || d.try_status().is_some()
        });
        assert!(
            ok && d.status.is_none(),
            "{} did not appear (daemon status {:?}); log:\n{}",
            node.display(),
            d.status,
            d.log()
        );
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, d.pid(), "the pid file names the daemon");
        d
    }

    /// Opens the daemon's node.
    pub fn open(&self) -> std::fs::File {
        open(&self.node())
    }

    /// `/dev/<name>`.
    pub fn node(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `pred(log)` holds; panics with the log otherwise.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) {
        assert!(
            wait_for(TIMEOUT, || pred(&self.log())),
            "timed out waiting for {what}; log:\n{}",
            self.log()
        );
    }

    /// The exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.status = child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `timeout` for the daemon to exit; then collects the rest of its log.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.try_status().is_some());
        if self.status.is_some() {
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        }
        self.status
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signal the daemon");
    }

    /// SIGTERM; asserts exit 0 within the timeout and the node gone. Returns the whole log.
    pub fn stop(mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.wait_exit(TIMEOUT);
        let log = self.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "daemon did not exit 0 after SIGTERM: {status:?}; log:\n{log}"
        );
        let node = self.node();
        assert!(
            wait_for(Duration::from_secs(5), || !node.exists()),
            "{} still exists after the daemon exited",
            node.display()
        );
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && self.status.is_none()
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the daemon as `setup` prepares it and checks it refuses to start: exit status 1, stderr
/// exactly `line` (one line saying what to do), and no `/dev/deferred` left behind.
pub fn refuses_to_start(setup: impl FnOnce(&mut Command) -> &mut Command, line: &str) {
    require_cuse();
    let mut cmd = Command::new(bin("deferred"));
    let out = setup(&mut cmd)
        .stdin(Stdio::null())
        .output()
        .expect("run deferred");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), line);
    assert!(!Path::new("/dev/deferred").exists());
}

/// Runs `deferred-ctl ARGS` to completion.
pub fn ctl(args: &[&str]) -> Output {
    Command::new(bin("deferred-ctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run deferred-ctl")
}

/// `(major, minor)` of a character device node.
pub fn devnum(path: &Path) -> (u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        m.file_type().is_char_device(),
        "{} is not a char device",
        path.display()
    );
    (libc::major(m.rdev()), libc::minor(m.rdev()))
}

/// `ioctl(fd, cmd, arg)` with a plain value, as the lab's clients do.
pub fn ioctl(f: &std::fs::File, cmd: u32, arg: u64) -> Result<i32, nix::errno::Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is open; the commands used here take a plain value, which the driver (CUSE,
    // unrestricted) never dereferences; unknown numbers are not dereferenced either.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), cmd as libc::c_ulong, arg as libc::c_ulong) };
    if rc < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(rc)
    }
}

/// `ioctl(fd, cmd, arg)` made as a 32-bit program makes it: the i386 system call (`int 0x80`,
/// `__NR_ioctl` = 54), so the kernel takes its compat path (`FUSE_IOCTL_COMPAT`).
#[cfg(target_arch = "x86_64")]
pub fn ioctl32(f: &std::fs::File, cmd: u32, arg: u32) -> Result<i32, nix::errno::Errno> {
    use std::os::fd::AsRawFd;
    let fd = u64::try_from(f.as_raw_fd()).unwrap();
    let ret: u64;
    // SAFETY: the i386 ioctl system call with an open fd and plain values (no pointers). rbx
    // (LLVM's) is swapped in and out around the call; int 0x80 preserves every register but eax
    // (r8-r11 declared clobbered for kernels that cleared them).
    unsafe {
        std::arch::asm!(
            "xchg {fd}, rbx",
            "int 0x80",
            "xchg {fd}, rbx",
            fd = inout(reg) fd => _,
            inlateout("rax") 54u64 => ret,
            in("rcx") u64::from(cmd),
            in("rdx") u64::from(arg),
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    let ret = ret as u32 as i32;
    if ret < 0 {
        Err(nix::errno::Errno::from_raw(-ret))
    } else {
        Ok(ret)
    }
}

/// Opens `path` (a device node), failing the test with the reason.
pub fn open(path: &Path) -> std::fs::File {
    std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// How many descriptors process `pid` holds.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}
