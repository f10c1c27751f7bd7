//! End-to-end: the environment every other `e2e_*` test relies on (a real `/dev/cuse`, the
//! project's binaries, the lab's C `test` client). Run by `scripts/test`, inside the test VM when
//! this machine has no CUSE; plain `cargo test` lists these tests as ignored.
//!
//! The binaries are found in `$DEFERRED_BIN_DIR` (`deferred`, `deferred-ctl`, `test`).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::process::{Command, Output};

use nix::sys::stat::{major, minor};

/// The usage text of the lab's `test` program, byte for byte (shared/spec/lab-abi.md).
const TEST_USAGE: &str = "Usage: test <options>\n options:\n\
\ts <seconds> - set timer to run after <seconds> seconds\n\
\tc           - cancel timer\n\
\ta <seconds> - allocate memory after <seconds> seconds\n\
\tp <pid>     - monitor pid\n\
\n";

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("DEFERRED_BIN_DIR")
        .expect("DEFERRED_BIN_DIR is not set: run the end-to-end tests with scripts/test");
    let path = PathBuf::from(dir).join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

fn run(program: &PathBuf, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn dev_cuse_is_the_cuse_char_device() {
    let meta = std::fs::metadata("/dev/cuse")
        .expect("/dev/cuse is missing: the cuse module is not loaded (modprobe cuse)");
    assert!(
        meta.file_type().is_char_device(),
        "/dev/cuse is not a character device"
    );
    assert_eq!(
        (major(meta.rdev()), minor(meta.rdev())),
        (10, 203),
        "/dev/cuse is not the misc device 10:203"
    );
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn dev_cuse_opens_read_write() {
    // What the daemon does first; fails without root or without the cuse module.
    let file = OpenOptions::new().read(true).write(true).open("/dev/cuse");
    assert!(
        file.is_ok(),
        "cannot open /dev/cuse read-write: {:?}",
        file.err()
    );
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn project_binaries_start() {
    // Each must load (its shared libraries are there) and run to an exit status of its own.
    for name in ["deferred", "deferred-ctl", "test"] {
        let out = run(&bin(name), &["--help"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("error while loading shared libraries"),
            "{name} cannot load: {stderr}"
        );
        let code = out.status.code();
        assert!(
            matches!(code, Some(c) if c != 126 && c != 127),
            "{name} did not run to an exit status of its own: {:?}, stderr: {stderr}",
            out.status
        );
    }
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn c_test_usage_is_the_labs_text() {
    let out = run(&bin("test"), &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), TEST_USAGE);
    assert!(out.stderr.is_empty(), "unexpected stderr: {:?}", out.stderr);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn c_test_usage_when_the_argument_is_missing() {
    // `s` without seconds: the usage again, exit 1, whether /dev/deferred exists (usage after the
    // open) or not (the open's error).
    let out = run(&bin("test"), &["s"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout == TEST_USAGE || stderr == "/dev/deferred: No such file or directory\n",
        "stdout: {stdout:?}, stderr: {stderr:?}"
    );
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn tools_the_tests_use_are_on_path() {
    // Tests spawn these (processes to monitor, process lists); the VM has them from busybox.
    for (tool, args) in [
        ("sleep", &["0"][..]),
        ("kill", &["-0", "1"][..]),
        ("ps", &[][..]),
        ("cat", &["/proc/self/stat"][..]),
        ("grep", &["-q", "cuse", "/proc/misc"][..]),
    ] {
        let status = Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
            .status;
        assert!(status.success(), "{tool} {args:?} failed: {status:?}");
    }
}
