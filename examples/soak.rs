//! The soak: `deferred` under 8 clients issuing random commands for N minutes, then a checker
//! that proves from the device's log that nothing was lost. Run through `scripts/soak`.
//!
//! ```text
//! soak --minutes N [--daemon PATH] [--log PATH]
//! ```
//!
//! It starts the daemon with the module's debug lines on (`RUST_LOG=info,printk=debug`: every
//! arming prints its argument, expiry and jiffy, every expiry what it expired), runs the clients
//! in phases, and between phases lets everything settle and samples the daemon's RSS and
//! descriptor count. Each client keeps the node open and loops: SET or ALLOC with n in 0..=2,
//! CANCEL, or MON of a child it forks (it lives 0-1.5 s), with a random pause of 0-300 ms.
//!
//! The checker (also usable alone: `soak --check LOG` checks only the log's own consistency):
//! - every ioctl answered: the clients' count of answers equals the log's `Command:` lines;
//! - the device-wide timer, simulated from the ordered arming / cancel / expiry lines: every
//!   expiry matches an arming and happens once; an arming neither cancelled nor replaced fires
//!   (within 2 s of its expiry);
//! - every watched child is reported dead exactly once (by pid, counting pid reuse);
//! - RSS and descriptor count flat across phases; the daemon exits 0, logs no BUG, no dropped
//!   printk lines and no allocation in softirq context.
//!
//! Exit status 0 when every check holds; the figures are printed either way.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deferred::modules::abi::{
    MY_IOCTL_TIMER_ALLOC, MY_IOCTL_TIMER_CANCEL, MY_IOCTL_TIMER_MON, MY_IOCTL_TIMER_SET,
};

const HZ: u64 = 250;
const CLIENTS: usize = 8;
/// How late past its expiry an uncancelled, unreplaced timer may fire before it counts as lost.
const LOST_AFTER: f64 = 2.0;

fn die(msg: &str) -> ! {
    eprintln!("soak: {msg}");
    std::process::exit(2)
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ioctl(f: &File, cmd: u32, arg: u64) -> Result<i32, i32> {
    // SAFETY: `f` is open; the lab's commands take a plain value, never a pointer.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), cmd as libc::c_ulong, arg as libc::c_ulong) };
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(rc)
    }
}

/// Forks a child that sleeps `ms` and exits.
fn spawn_child(ms: u64) -> i32 {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: the child only calls nanosleep and _exit (async-signal-safe, as required after
    // fork in a multi-threaded process).
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: see above; `ts` is a valid timespec.
            unsafe {
                libc::nanosleep(&ts, std::ptr::null_mut());
                libc::_exit(0)
            }
        }
        -1 => die(&format!("fork: {}", std::io::Error::last_os_error())),
        pid => pid,
    }
}

fn reap(pid: i32) {
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
}

/// What the clients did, for the checker.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    interrupted: AtomicU64,
    watched: std::sync::Mutex<Vec<i32>>,
    esrch: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

fn client(node: &Path, seed: u64, until: Instant, tally: &Tally) {
    let f = File::open(node).unwrap_or_else(|e| die(&format!("open {}: {e}", node.display())));
    let mut rng = Rng(seed | 1);
    let mut children: Vec<(i32, Instant)> = Vec::new();
    while Instant::now() < until {
        let r = match rng.below(10) {
            0..=2 => ioctl(&f, MY_IOCTL_TIMER_SET, rng.below(3)),
            3 => ioctl(&f, MY_IOCTL_TIMER_ALLOC, rng.below(3)),
            4 | 5 => ioctl(&f, MY_IOCTL_TIMER_CANCEL, 0),
            _ => {
                let life = rng.below(1500);
                let pid = spawn_child(life);
                let r = ioctl(&f, MY_IOCTL_TIMER_MON, pid as u64);
                match r {
                    Ok(_) => tally.watched.lock().unwrap().push(pid),
                    Err(libc::ESRCH) => {
                        tally.esrch.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
                children.push((pid, Instant::now() + Duration::from_millis(life)));
                r
            }
        };
        match r {
            Ok(_) | Err(libc::ESRCH) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(libc::EINTR) => {
                tally.interrupted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
                tally
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("unexpected errno {e}"));
            }
        }
        // Reap the children whose time is up (after their MON was answered).
        let now = Instant::now();
        children.retain(|&(pid, end)| {
            if end + Duration::from_millis(50) < now {
                reap(pid);
                false
            } else {
                true
            }
        });
        std::thread::sleep(Duration::from_millis(rng.below(300)));
    }
    for (pid, _) in children {
        reap(pid);
    }
}

fn status_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One log line of the module: timestamp (s) and text.
fn parse_line(l: &str) -> Option<(f64, &str)> {
    let rest = l.strip_prefix('[')?;
    let (ts, text) = rest.split_once("] ")?;
    Some((ts.trim().parse().ok()?, text))
}

fn field(text: &str, name: &str) -> Option<u64> {
    let at = text.find(&format!("{name} = "))? + name.len() + 3;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `time_after(a, b)` of the kernel: a is later than b (wrapping).
fn after(a: u64, b: u64) -> bool {
    (b.wrapping_sub(a) as i64) < 0
}

#[derive(Debug, Default)]
struct Report {
    ioctl_lines: u64,
    arms: u64,
    rearms: u64,
    cancels: u64,
    fires: u64,
    fires_required: u64,
    fires_raced: u64,
    dead: HashMap<i32, u64>,
    problems: Vec<String>,
}

/// Checks the log's timer lines: the device-wide timer simulated from the ordered armings.
fn check_log(log: &str) -> Report {
    let mut r = Report::default();
    // The pending arming: (expires, its expiry time in log seconds, required to fire). An
    // arming printed just after a re-arm by the handler may have lost to it (the handler's
    // mod_timer came between the ioctl's and its print): not required.
    let mut pending: Option<(u64, f64, bool)> = None;
    // Armings replaced or cancelled while pending, and whether they were due then: they may
    // still fire once, if they had already expired when replaced (the handler was running).
    let mut superseded: Vec<(u64, f64, bool)> = Vec::new();
    // Expiries seen before their arming line (fired between mod_timer and the print), with
    // the time of their line.
    let mut early: Vec<(u64, f64)> = Vec::new();
    // Armings seen fired lately, with the time of the expiry line.
    let mut fired: Vec<(u64, f64)> = Vec::new();
    // The time of the last re-arm by the handler (it races with ioctls).
    let mut last_rearm = f64::NEG_INFINITY;
    // An arming due by `t` (its expiry time known to a jiffy).
    let due = |x: f64, t: f64| x <= t + 1.0 / HZ as f64;
    for l in log.lines() {
        let Some((t, text)) = parse_line(l) else {
            continue;
        };
        if let Some((p, x, required)) = pending
            && t > x + LOST_AFTER
        {
            if required {
                r.problems.push(format!(
                    "timer lost: armed for {p} (t = {x:.3}), not fired by t = {t:.3}"
                ));
            }
            pending = None;
        }
        superseded.retain(|&(_, x, _)| t <= x + LOST_AFTER);
        fired.retain(|&(_, ft)| t <= ft + LOST_AFTER);
        if text.starts_with("[deferred_ioctl] Command: ") {
            r.ioctl_lines += 1;
        } else if text.starts_with("[deferred_ioctl] arg = ")
            || text.starts_with("[timer_handler] re-armed")
        {
            let Some(e) = field(text, "expires") else {
                r.problems.push(format!("bad line: {l}"));
                continue;
            };
            let (x, required) = if text.starts_with("[timer_handler]") {
                r.rearms += 1;
                last_rearm = t;
                (t + 1.0, true)
            } else {
                r.arms += 1;
                let j = field(text, "jiffies").unwrap_or(e);
                let d = e.wrapping_sub(j);
                let x = if (d as i64) <= 0 {
                    t
                } else {
                    t + d as f64 / HZ as f64
                };
                (x, t - last_rearm > 0.05)
            };
            let replaced = pending.take();
            if let Some(i) = early.iter().position(|&(v, _)| v == e) {
                let (_, ft) = early.swap_remove(i);
                match replaced {
                    // The line may as well be the replaced arming's expiry, its handler late
                    // and reading `expires` after this arming (due at once) had changed it:
                    // then this one fires too. Either way one of them fired: this one may
                    // fire once more, and need not.
                    Some((_, px, _)) if due(px, ft) => {
                        r.fires_raced += 1;
                        pending = Some((e, x, false));
                    }
                    _ => {
                        if let Some((p, px, _)) = replaced {
                            superseded.push((p, px, due(px, t)));
                        }
                        r.fires_required += 1;
                        fired.push((e, ft));
                    }
                }
            } else {
                if let Some((p, px, _)) = replaced {
                    superseded.push((p, px, due(px, t)));
                }
                pending = Some((e, x, required));
            }
        } else if text.starts_with("[deferred_ioctl] cancelled")
            || text.starts_with("[deferred_exit] Exit module")
        {
            r.cancels += 1;
            if let Some((p, px, _)) = pending.take() {
                superseded.push((p, px, due(px, t)));
            }
        } else if text.starts_with("[timer_handler] expires = ") {
            r.fires += 1;
            let (Some(e), Some(j)) = (field(text, "expires"), field(text, "jiffies")) else {
                r.problems.push(format!("bad line: {l}"));
                continue;
            };
            if after(e, j) {
                // Read while an ioctl re-armed the timer: the expiry of an older arming.
                r.fires_raced += 1;
                if !superseded.is_empty() {
                    superseded.remove(0);
                }
                continue;
            }
            if pending.is_some_and(|(p, _, _)| p == e) {
                pending = None;
                r.fires_required += 1;
                fired.push((e, t));
            } else if let Some(i) = superseded.iter().position(|&(s, _, _)| s == e) {
                superseded.remove(i);
                r.fires_raced += 1;
            } else if fired.iter().any(|&(v, _)| v == e)
                && let Some(i) = superseded.iter().position(|&(_, _, d)| d)
            {
                // A second line for an arming that fired: the first was the expiry of an
                // arming it replaced when that was due, read after the replacement (the
                // arming line came first).
                superseded.remove(i);
                r.fires_raced += 1;
            } else {
                early.push((e, t));
            }
        } else if let Some(rest) = text.strip_prefix("task ")
            && let Some(rest) = rest.strip_suffix(") is dead")
            && let Some((_, pid)) = rest.rsplit_once(" (")
            && let Ok(pid) = pid.parse::<i32>()
        {
            *r.dead.entry(pid).or_default() += 1;
        }
        if text.contains("BUG") || text.contains("printk messages dropped") {
            r.problems.push(format!("log: {l}"));
        }
    }
    for (e, _) in early {
        r.problems.push(format!(
            "an expiry for {e} that no arming asked for (or a second one)"
        ));
    }
    if let Some((p, x, true)) = pending {
        r.problems.push(format!(
            "timer armed for {p} (t = {x:.3}) still pending at the end of the log"
        ));
    }
    r
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut minutes = 1.0f64;
    let mut daemon: Option<PathBuf> = None;
    let mut log_path = PathBuf::from("/tmp/soak-deferred.log");
    let mut i = 0;
    while i < args.len() {
        let val = || {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| die(&format!("{} needs a value", args[i])))
        };
        match args[i].as_str() {
            "--minutes" => {
                minutes = val()
                    .parse()
                    .ok()
                    .filter(|m: &f64| *m > 0.0)
                    .unwrap_or_else(|| die("--minutes: give a positive number, e.g. --minutes 1"))
            }
            "--daemon" => daemon = Some(val().into()),
            "--log" => log_path = val().into(),
            "--check" => {
                let text = std::fs::read_to_string(val()).unwrap_or_else(|e| die(&e.to_string()));
                let r = check_log(&text);
                println!("{r:?}");
                std::process::exit(i32::from(!r.problems.is_empty()));
            }
            "-h" | "--help" => {
                println!("usage: soak --minutes N [--daemon PATH] [--log PATH] | soak --check LOG");
                return;
            }
            other => die(&format!("unknown argument `{other}` (see soak --help)")),
        }
        i += 2;
    }
    let daemon = daemon.unwrap_or_else(|| {
        let dir = std::env::var_os("DEFERRED_BIN_DIR").map_or_else(
            || {
                std::env::current_exe()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .to_path_buf()
            },
            PathBuf::from,
        );
        dir.join("deferred")
    });
    std::process::exit(run(minutes, &daemon, &log_path));
}

fn run(minutes: f64, daemon: &Path, log_path: &Path) -> i32 {
    let total = Duration::from_secs_f64(minutes * 60.0);
    let phases = (minutes.round() as u32).max(4);
    let phase_len = total / phases;
    let pidfile = "/tmp/soak-deferred.pid";
    let _ = std::fs::remove_file(pidfile);
    let log =
        File::create(log_path).unwrap_or_else(|e| die(&format!("{}: {e}", log_path.display())));
    let mut d = Command::new(daemon)
        .args(["--pidfile", pidfile])
        .env("RUST_LOG", "info,printk=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| die(&format!("{}: {e}", daemon.display())));
    let t0 = Instant::now();
    while !Path::new(pidfile).exists() {
        if d.try_wait().unwrap().is_some() || t0.elapsed() > Duration::from_secs(15) {
            die(&format!(
                "the daemon did not start; see {}",
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = d.id();
    let node = PathBuf::from("/dev/deferred");
    let tally = Arc::new(Tally::default());
    let mut samples: Vec<(u64, usize)> = vec![(status_kb(pid), fd_count(pid))];
    println!(
        "soak: {minutes} min, {phases} phases of {:.0} s, {CLIENTS} clients; daemon {pid}, log {}",
        phase_len.as_secs_f64(),
        log_path.display()
    );
    let mut barrier_mons = 0u64;
    for phase in 0..phases {
        let until = Instant::now() + phase_len;
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (node, tally) = (node.clone(), tally.clone());
                let seed = 0x9e37_79b9_7f4a_7c15u64
                    .wrapping_mul(u64::from(phase) * 64 + c as u64 + 1)
                    ^ u64::from(std::process::id());
                std::thread::Builder::new()
                    .name(format!("client{c}"))
                    .spawn(move || client(&node, seed, until, &tally))
                    .unwrap()
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Settle: SET/ALLOC timers (n <= 2) fire, an ALLOC work (5 s) ends; then one MON makes
        // the timer check the list until every watched child is reported.
        std::thread::sleep(Duration::from_secs(3));
        let f = File::open(&node).unwrap();
        let child = spawn_child(0);
        if ioctl(&f, MY_IOCTL_TIMER_MON, child as u64).is_ok() {
            tally.watched.lock().unwrap().push(child);
        }
        barrier_mons += 1;
        drop(f);
        reap(child);
        let expect = tally.watched.lock().unwrap().len();
        let settled = Instant::now();
        loop {
            let text = std::fs::read_to_string(log_path).unwrap_or_default();
            let dead = text.lines().filter(|l| l.ends_with(") is dead")).count();
            if dead >= expect || settled.elapsed() > Duration::from_secs(20) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let s = (status_kb(pid), fd_count(pid));
        println!(
            "soak: phase {}/{phases}: {} ioctls answered, {} children watched; daemon RSS {} kB, {} fds",
            phase + 1,
            tally.answered.load(Ordering::Relaxed) + barrier_mons,
            expect,
            s.0,
            s.1
        );
        samples.push(s);
    }
    // Unload, then check the whole log.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = d.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(15) {
            let _ = d.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let mut r = check_log(&text);
    let answered = tally.answered.load(Ordering::Relaxed) + barrier_mons;
    if r.ioctl_lines != answered {
        r.problems.push(format!(
            "ioctls: {answered} answered to the clients, {} in the log",
            r.ioctl_lines
        ));
    }
    let mut expected: HashMap<i32, u64> = HashMap::new();
    for &p in tally.watched.lock().unwrap().iter() {
        *expected.entry(p).or_default() += 1;
    }
    let mut dead_wrong = 0;
    for (p, n) in &expected {
        if r.dead.get(p) != Some(n) {
            dead_wrong += 1;
            if dead_wrong <= 5 {
                r.problems.push(format!(
                    "pid {p}: watched {n} times, reported dead {} times",
                    r.dead.get(p).copied().unwrap_or(0)
                ));
            }
        }
    }
    for (p, n) in &r.dead {
        if !expected.contains_key(p) {
            r.problems
                .push(format!("pid {p} reported dead {n} times, never watched"));
        }
    }
    r.problems
        .extend(tally.errors.lock().unwrap().iter().take(5).cloned());
    if !status.is_some_and(|s| s.success()) {
        r.problems.push(format!("daemon exit: {status:?}"));
    }
    if !text.contains("[deferred_exit] Exit module") {
        r.problems.push("no exit line".into());
    }
    if text.contains("allocations were made in softirq context") {
        r.problems.push("allocations in softirq context".into());
    }
    // Flat: the descriptor count is the same at every settled point; RSS after the first phase
    // grows by at most 10% (or 2 MB).
    let fds: Vec<usize> = samples[1..].iter().map(|s| s.1).collect();
    if fds.iter().any(|&n| n != fds[0]) {
        r.problems
            .push(format!("descriptor count not flat: {fds:?}"));
    }
    let rss: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let base = rss[1];
    let max_after = rss[1..].iter().copied().max().unwrap_or(base);
    if max_after > base + (base / 10).max(2048) {
        r.problems.push(format!("RSS grew: {rss:?} kB"));
    }
    println!(
        "soak: {answered} ioctls answered ({} in the log, {} interrupted), {} children watched \
         ({} reported dead, {} ESRCH), timer: {} armings + {} re-arms, {} cancels, {} expiries \
         ({} required and on time, {} of superseded armings)",
        r.ioctl_lines,
        tally.interrupted.load(Ordering::Relaxed),
        expected.values().sum::<u64>(),
        r.dead.values().sum::<u64>(),
        tally.esrch.load(Ordering::Relaxed),
        r.arms,
        r.rearms,
        r.cancels,
        r.fires,
        r.fires_required,
        r.fires_raced,
    );
    println!("soak: daemon RSS kB per phase {rss:?}; fds {fds:?}");
    if r.problems.is_empty() {
        println!("soak: OK");
        0
    } else {
        for p in &r.problems {
            println!("soak: FAIL: {p}");
        }
        1
    }
}

#[cfg(test)]
mod tests {
    use super::check_log;

    fn arm(t: f64, n: u64, j: u64) -> String {
        format!(
            "[{t:12.6}] [deferred_ioctl] arg = {n}, expires = {}, jiffies = {j}\n",
            j + n * 250
        )
    }
    fn fire(t: f64, e: u64, j: u64) -> String {
        format!("[{t:12.6}] [timer_handler] expires = {e}, jiffies = {j}\n")
    }
    fn other(t: f64) -> String {
        format!("[{t:12.6}] [deferred_ioctl] Command: Cancel timer\n")
    }

    #[test]
    fn a_fired_timer_and_a_cancelled_one_are_fine() {
        let log = arm(1.0, 1, 1000)
            + &fire(2.0, 1250, 1250)
            + &arm(3.0, 1, 1500)
            + "[    3.100000] [deferred_ioctl] cancelled\n"
            + &other(9.0);
        let r = check_log(&log);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!((r.arms, r.cancels, r.fires, r.fires_required), (2, 1, 1, 1));
    }

    #[test]
    fn a_timer_that_never_fires_is_lost() {
        let log = arm(1.0, 1, 1000) + &other(2.5) + &other(4.5);
        let r = check_log(&log);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("timer lost"));
    }

    #[test]
    fn a_second_expiry_or_one_nobody_armed_is_caught() {
        let log = arm(1.0, 1, 1000) + &fire(2.0, 1250, 1250) + &fire(2.1, 1250, 1275);
        assert_eq!(check_log(&log).problems.len(), 1);
        let log = fire(2.0, 777, 800);
        assert_eq!(check_log(&log).problems.len(), 1);
    }

    #[test]
    fn a_replaced_arming_may_fire_once_in_a_race() {
        let log = arm(1.0, 0, 1000)
            + &arm(1.001, 1, 1000)
            + &fire(1.002, 1000, 1001)
            + &fire(2.0, 1250, 1250)
            + &other(5.0);
        let r = check_log(&log);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!((r.fires_required, r.fires_raced), (1, 1));
    }

    /// The handler of arming E1, run a jiffy or more late, reads `expires` after an ioctl
    /// re-armed the timer with n = 0 (E2, already due): its line says E2, and E2 then fires
    /// too. Whichever of the line and the arming is printed first.
    #[test]
    fn a_late_handler_reading_an_immediate_rearming_is_one_fire_each() {
        let misreport_first = arm(1.0, 1, 1000)
            + &fire(2.02, 1255, 1255)
            + &arm(2.021, 0, 1255)
            + &fire(2.024, 1255, 1256)
            + &other(5.0);
        let arming_first = arm(1.0, 1, 1000)
            + &arm(2.02, 0, 1255)
            + &fire(2.021, 1255, 1255)
            + &fire(2.024, 1255, 1256)
            + &other(5.0);
        for log in [misreport_first, arming_first] {
            let r = check_log(&log);
            assert!(r.problems.is_empty(), "{:?}\n{log}", r.problems);
            assert_eq!((r.fires, r.fires_required + r.fires_raced), (2, 2), "{log}");
        }
    }

    /// The same lines, but the first arming not yet due when replaced: its line is the second
    /// arming's own early fire, and a second fire of that arming is one too many.
    #[test]
    fn an_immediate_rearming_fires_once() {
        let early_fire = arm(1.0, 2, 1000) + &fire(2.004, 1250, 1251) + &arm(2.005, 0, 1250);
        let r = check_log(&(early_fire.clone() + &other(6.0)));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let r = check_log(&(early_fire + &fire(2.008, 1250, 1252) + &other(6.0)));
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    }

    #[test]
    fn watched_tasks_and_bugs_are_read() {
        let log =
            "[    1.000000] task sleep (42) is dead\n[    1.000001] BUG: scheduling while atomic\n";
        let r = check_log(log);
        assert_eq!(r.dead.get(&42), Some(&1));
        assert_eq!(r.problems.len(), 1);
    }
}
