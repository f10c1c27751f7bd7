//! Counted process references: dead detection (zombies included), PID reuse, threads, scale.

use std::process::{Child, Command};
use std::time::Duration;

use deferred::kernel::error::Error;
use deferred::kernel::task::{TaskRef, TaskWatch};
#[path = "common/wait.rs"]
mod wait;
use wait::wait_for;

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep")
}

#[test]
fn a_live_process_is_alive_and_named() {
    let mut child = sleeper();
    let task = TaskRef::get(child.id() as i32).unwrap();
    assert_eq!(task.pid(), child.id() as i32);
    assert_eq!(task.comm(), "sleep");
    assert!(!task.is_dead());
    assert!(!task.needs_polling());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_zombie_counts_as_dead_and_so_does_a_reaped_process() {
    let mut child = sleeper();
    let task = TaskRef::get(child.id() as i32).unwrap();
    child.kill().unwrap();
    // Not reaped yet: a zombie. TASK_DEAD covers it.
    assert!(
        wait_for(Duration::from_secs(10), || task.is_dead()),
        "zombie seen as dead"
    );
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    assert!(
        stat.contains(") Z "),
        "child should still be a zombie: {stat}"
    );
    child.wait().unwrap();
    assert!(task.is_dead());
}

#[test]
fn a_pid_that_never_existed_is_esrch() {
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(TaskRef::get(pid_max + 1).unwrap_err(), Error::ESRCH);
    assert_eq!(TaskRef::get(i32::MAX).unwrap_err(), Error::ESRCH);
}

#[test]
fn a_reaped_pid_is_esrch() {
    let mut child = sleeper();
    let pid = child.id() as i32;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(TaskRef::get(pid).unwrap_err(), Error::ESRCH);
}

#[test]
fn a_thread_id_is_watched_as_that_thread() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("watched-thread".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            stop_rx.recv().unwrap();
        })
        .unwrap();
    let tid = rx.recv().unwrap();
    assert_ne!(tid, std::process::id() as i32);
    let task = TaskRef::get(tid).unwrap();
    assert!(task.needs_polling());
    assert_eq!(task.comm(), "watched-thread");
    assert!(!task.is_dead());
    stop_tx.send(()).unwrap();
    handle.join().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || task.is_dead()),
        "exited thread seen as dead"
    );
}

#[test]
fn watch_reports_exactly_the_exited_processes() {
    let (mut children, watch, _refs) = watched(100);
    let mut out = [0u64; 256];
    assert_eq!(watch.ready(&mut out), 0, "nothing exited yet");

    let killed: Vec<u64> = (0..100).step_by(10).collect();
    for &i in &killed {
        children[i as usize].kill().unwrap();
    }
    let mut got = Vec::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            let n = watch.ready(&mut out);
            got.extend_from_slice(&out[..n]);
            got.len() >= killed.len()
        }),
        "all killed children reported"
    );
    got.sort_unstable();
    assert_eq!(got, killed, "each exited process once, and only those");
    assert_eq!(watch.ready(&mut out), 0, "an exit reported twice");
    for c in &mut children {
        let _ = c.kill();
        c.wait().unwrap();
    }
}

/// `n` sleeping children, watched under tokens 0..n.
fn watched(n: usize) -> (Vec<Child>, TaskWatch, Vec<TaskRef>) {
    let children: Vec<Child> = (0..n).map(|_| sleeper()).collect();
    let watch = TaskWatch::new().unwrap();
    let refs: Vec<TaskRef> = children
        .iter()
        .map(|c| TaskRef::get(c.id() as i32).unwrap())
        .collect();
    for (i, r) in refs.iter().enumerate() {
        watch.add(r, i as u64).unwrap();
    }
    (children, watch, refs)
}

/// [`watched`], then all killed: zombies once this returns.
fn watched_and_killed(n: usize) -> (Vec<Child>, TaskWatch, Vec<TaskRef>) {
    let (mut children, watch, refs) = watched(n);
    for c in &mut children {
        c.kill().unwrap();
    }
    assert!(
        wait_for(Duration::from_secs(10), || {
            refs.iter().all(TaskRef::is_dead)
        }),
        "all watched children dead"
    );
    (children, watch, refs)
}

#[test]
fn a_burst_of_exits_is_reported_whole_and_once_in_one_call() {
    let (mut children, watch, _refs) = watched_and_killed(300);
    // More than one epoll batch (64), fewer than the buffer: one call returns all of them.
    let mut out = [0u64; 512];
    let n = watch.ready(&mut out);
    let mut got = out[..n].to_vec();
    got.sort_unstable();
    assert_eq!(got, (0..300).collect::<Vec<u64>>());
    for c in &mut children {
        c.wait().unwrap();
    }
}

#[test]
fn exits_that_do_not_fit_come_with_the_next_call() {
    let (mut children, watch, _refs) = watched_and_killed(100);
    let mut out = [0u64; 30];
    let mut got = Vec::new();
    loop {
        let n = watch.ready(&mut out);
        got.extend_from_slice(&out[..n]);
        if n < out.len() {
            break;
        }
    }
    got.sort_unstable();
    assert_eq!(got, (0..100).collect::<Vec<u64>>());
    for c in &mut children {
        c.wait().unwrap();
    }
}
