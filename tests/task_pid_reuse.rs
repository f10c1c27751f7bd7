//! PID reuse: a reference taken on a process never follows its number to a new process.
//!
//! A test binary of its own: forcing the next pid (ns_last_pid) races every fork and thread
//! creation of the machine, and the other tests of a binary run in parallel threads that fork.

use std::process::{Child, Command};

use deferred::kernel::task::TaskRef;

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep")
}

/// Forces the next fork to get `pid` by writing `pid - 1` to ns_last_pid (root only), retrying
/// when another process of the machine takes it first.
fn spawn_with_pid(pid: i32) -> Child {
    for _ in 0..1000 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("PID reuse test needs root: cannot write /proc/sys/kernel/ns_last_pid");
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        if child.id() as i32 == pid {
            return child;
        }
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    panic!("could not get pid {pid} reused");
}

#[test]
fn pid_reuse_never_confuses_the_watched_process() {
    let mut old = sleeper();
    let pid = old.id() as i32;
    let old_ref = TaskRef::get(pid).unwrap();
    old.kill().unwrap();
    old.wait().unwrap();

    // A new process with the same number.
    let mut new = spawn_with_pid(pid);
    assert_eq!(new.id() as i32, pid);
    // The old reference still names the old, dead process.
    assert!(
        old_ref.is_dead(),
        "reference followed the pid number to a new process"
    );
    // A new lookup names the new, live one.
    let new_ref = TaskRef::get(pid).unwrap();
    assert!(!new_ref.is_dead());
    new.kill().unwrap();
    new.wait().unwrap();
    assert!(new_ref.is_dead());
}
