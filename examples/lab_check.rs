//! `lab_check`: checks a learner's modules exercise by exercise against the answer key.
//!
//! For each exercise asked for, it plays the exercise's scenario (load the module, drive it with
//! the lab's C `test` program, watch a live, an exiting and a zombie process, unload it, at times
//! while work is pending or running) once with the answer key's daemon and once with the
//! learner's, through real CUSE, then compares the two logs. Pids, thread names and timestamps are
//! replaced by what they stand for (`<daemon pid>`, `<pid of the zombie sleep>`, the interrupted
//! thread's `pid = <pid>, comm = <comm>` when that pair names a thread of the daemon), so that the
//! logs of two runs can be compared line by line; the once-a-second MON ticks are counted as one
//! per run of them (how many fall into a window is a matter of timing).
//!
//! One line per exercise: `exercise 3: passed`, or `exercise 3: failed: ...` followed by what a
//! learner needs: the rule that was broken (a `BUG:`, `WARNING:`, `ODEBUG:` or `Oops` report the
//! answer key did not print, with the lines that follow it), else the first line that differs
//! from the answer key's log (expected vs. got), else a line that came much earlier or later than
//! the answer key's. Exit status 0 only when every exercise asked for passed; 2: bad usage.
//!
//! Run by `scripts/lab check` (in the VM where the kernel has no CUSE). Needs /dev/cuse and root.
//! `--expected DIR` keeps the answer key's logs (`exercise-N.log`) and reuses them when present:
//! several learners' daemons checked in one boot run the answer key once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use clap::Parser;

/// Every exercise with a scenario (0, the intro, has no code).
const EXERCISES: [u32; 7] = [1, 2, 3, 4, 5, 6, 7];

/// How long to wait for a line the scenario expects next (a TCG VM on a busy host is slow).
const WAIT: Duration = Duration::from_secs(8);
/// How long a daemon may take to unload once told to (an ALLOC work sleeps 5 s).
const UNLOAD: Duration = Duration::from_secs(15);

/// Check a learner's lab modules against the answer key, exercise by exercise.
#[derive(Parser, Debug)]
#[command(name = "lab_check")]
struct Args {
    /// The learner's daemon (built from the crate `scripts/lab new` made).
    #[arg(long)]
    daemon: PathBuf,
    /// The answer key's daemon (the shipped `deferred`).
    #[arg(long)]
    answer_key: PathBuf,
    /// The lab's C `test` program.
    #[arg(long, default_value = "/usr/local/bin/test")]
    client: PathBuf,
    /// Keep the answer key's logs here, and reuse those already there.
    #[arg(long)]
    expected: Option<PathBuf>,
    /// Also print both logs (normalized) of every exercise.
    #[arg(short, long)]
    verbose: bool,
    /// The exercises to check (1-7; default: all).
    #[arg(value_parser = clap::value_parser!(u32).range(1..=7))]
    exercises: Vec<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    for (what, path) in [
        ("--daemon", &args.daemon),
        ("--answer-key", &args.answer_key),
        ("--client", &args.client),
    ] {
        if !path.is_file() {
            eprintln!(
                "lab_check: {what} {}: no such program (build it first)",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    if !Path::new("/dev/cuse").exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("lab_check: needs /dev/cuse and root (scripts/lab check runs it in the VM)");
        return ExitCode::from(2);
    }
    let exercises = if args.exercises.is_empty() {
        EXERCISES.to_vec()
    } else {
        args.exercises.clone()
    };
    let mut all_passed = true;
    for ex in exercises {
        let expected = match expected_log(&args, ex) {
            Ok(t) => t,
            Err(e) => {
                println!("exercise {ex}: not checked: the answer key's run failed: {e}");
                all_passed = false;
                continue;
            }
        };
        let got = play(ex, &args.daemon, &args.client);
        if args.verbose {
            println!("--- exercise {ex}: the answer key's log\n{expected}");
            println!("--- exercise {ex}: your log\n{got}");
        }
        match compare(&expected, &got) {
            None => println!("exercise {ex}: passed"),
            Some(why) => {
                all_passed = false;
                println!("exercise {ex}: failed: {why}");
            }
        }
    }
    if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The answer key's log of exercise `ex`: kept in `--expected DIR` when given.
fn expected_log(args: &Args, ex: u32) -> Result<Transcript, String> {
    let kept = args
        .expected
        .as_ref()
        .map(|d| d.join(format!("exercise-{ex}.log")));
    if let Some(path) = &kept
        && let Ok(text) = std::fs::read_to_string(path)
    {
        return Transcript::parse(&text).ok_or(format!("{}: not a log", path.display()));
    }
    let t = play(ex, &args.answer_key, &args.client);
    // The answer key must itself get through its scenario (its exit status may be 1: exercise
    // 4's reports taint).
    let stuck = |l: &&Line| {
        l.text.starts_with("insmod failed") || l.text.starts_with("rmmod: still running")
    };
    if let Some(l) = t.lines.iter().find(stuck) {
        return Err(format!("{}\n{t}", l.text));
    }
    if let Some(path) = &kept {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .and_then(|()| std::fs::write(path, t.to_string()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// Playing a scenario

/// One line of a run's normalized log: seconds since the module's load (kernel lines), the text.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    t: Option<f64>,
    text: String,
    /// The line as the daemon printed it, when normalizing changed it (not kept in files).
    printed: Option<String>,
}

impl Line {
    /// The line as printed (a report's file and line, pids and names, as they were).
    fn shown(&self) -> &str {
        self.printed.as_deref().unwrap_or(&self.text)
    }
}

/// What a scenario produced: the daemon's lines (with `insmod`/`rmmod` markers between runs),
/// and what the `test` program printed.
#[derive(Debug, Default, Clone, PartialEq)]
struct Transcript {
    lines: Vec<Line>,
    client: Vec<String>,
}

impl std::fmt::Display for Transcript {
    /// `D <seconds or -> <text>` per daemon line, `C <text>` per client line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.lines {
            match l.t {
                Some(t) => writeln!(f, "D {t:.6} {}", l.text)?,
                None => writeln!(f, "D - {}", l.text)?,
            }
        }
        for c in &self.client {
            writeln!(f, "C {c}")?;
        }
        Ok(())
    }
}

impl Transcript {
    fn parse(text: &str) -> Option<Transcript> {
        let mut t = Transcript::default();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("D ") {
                let (ts, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let ts = if ts == "-" {
                    None
                } else {
                    Some(ts.parse().ok()?)
                };
                t.lines.push(Line {
                    t: ts,
                    text: text.to_string(),
                    printed: None,
                });
            } else if let Some(rest) = l.strip_prefix("C ") {
                t.client.push(rest.to_string());
            } else if !l.is_empty() {
                return None;
            }
        }
        Some(t)
    }
}

/// A module loaded by running a daemon, its output captured.
struct Loaded {
    child: Child,
    pid: i32,
    comm: String,
    raw: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Every thread of the daemon seen so far: tid -> comm.
    threads: HashMap<i32, String>,
}

impl Loaded {
    fn count(&self, needle: &str) -> usize {
        let raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        raw.iter().filter(|l| l.contains(needle)).count()
    }

    /// Records the daemon's threads (tid and comm), to tell later which pid printed in the log
    /// is one of them.
    fn snapshot_threads(&mut self) {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return;
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
                self.threads.insert(tid, comm.trim_end().to_string());
            }
        }
    }
}

/// A scenario being played against one daemon binary.
struct Session<'a> {
    daemon: &'a Path,
    client: &'a Path,
    loaded: Option<Loaded>,
    /// Pids that stand for something in this scenario: pid -> what.
    roles: HashMap<i32, String>,
    out: Transcript,
    children: Vec<Child>,
}

fn capture(
    stream: impl Read + Send + 'static,
    raw: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            raw.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    })
}

/// Waits up to `timeout` for `cond`.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!(
            "killed by {}",
            nix::sys::signal::Signal::try_from(sig)
                .map_or_else(|_| sig.to_string(), |s| s.to_string())
        ),
        _ => "ended".into(),
    }
}

impl<'a> Session<'a> {
    fn new(daemon: &'a Path, client: &'a Path) -> Session<'a> {
        Session {
            daemon,
            client,
            loaded: None,
            roles: HashMap::new(),
            out: Transcript::default(),
            children: Vec::new(),
        }
    }

    /// insmod: starts the daemon with `args` and waits until it is ready (its pid file written,
    /// which it does once its device, if any, is up).
    fn load(&mut self, args: &[&str]) -> bool {
        let pidfile = std::env::temp_dir().join(format!("lab-check-{}.pid", std::process::id()));
        let _ = std::fs::remove_file(&pidfile);
        self.note(format!("insmod: {}", args.join(" ")));
        let spawned = Command::new(self.daemon)
            .args(args)
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                self.note(format!(
                    "insmod failed: cannot run {}: {e}",
                    self.daemon.display()
                ));
                return false;
            }
        };
        let raw = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            capture(child.stdout.take().expect("piped"), raw.clone()),
            capture(child.stderr.take().expect("piped"), raw.clone()),
        ];
        let mut exited = None;
        let ready = wait_for(WAIT, || {
            if pidfile.exists() {
                return true;
            }
            exited = child.try_wait().ok().flatten();
            exited.is_some()
        });
        let pid = child.id() as i32;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        let mut loaded = Loaded {
            child,
            pid,
            comm,
            raw,
            readers,
            threads: HashMap::new(),
        };
        if !ready || exited.is_some() {
            let why = match exited {
                Some(s) => describe_status(s),
                None => format!("not ready after {} s", WAIT.as_secs()),
            };
            let _ = loaded.child.kill();
            let _ = loaded.child.wait();
            self.finish(loaded, format!("insmod failed: {why}"));
            return false;
        }
        let _ = std::fs::remove_file(&pidfile);
        loaded.snapshot_threads();
        self.loaded = Some(loaded);
        true
    }

    /// rmmod: SIGTERM, then waits for the daemon to exit.
    fn unload(&mut self) {
        let Some(mut loaded) = self.loaded.take() else {
            return;
        };
        loaded.snapshot_threads();
        let pid = nix::unistd::Pid::from_raw(loaded.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let mut status = None;
        wait_for(UNLOAD, || {
            status = loaded.child.try_wait().ok().flatten();
            status.is_some()
        });
        let how = match status {
            Some(s) => describe_status(s),
            None => {
                let _ = loaded.child.kill();
                let _ = loaded.child.wait();
                format!(
                    "still running {} s after SIGTERM (killed)",
                    UNLOAD.as_secs()
                )
            }
        };
        self.finish(loaded, format!("rmmod: {how}"));
    }

    /// Collects a finished daemon's log into the transcript, then `marker`.
    fn finish(&mut self, loaded: Loaded, marker: String) {
        let Loaded {
            pid,
            comm,
            raw,
            readers,
            threads,
            ..
        } = loaded;
        for r in readers {
            let _ = r.join();
        }
        let raw = std::mem::take(&mut *raw.lock().unwrap_or_else(|e| e.into_inner()));
        let names = Names {
            daemon: pid,
            comm,
            threads,
            roles: self.roles.clone(),
        };
        for l in raw {
            self.out.lines.push(names.line(&l));
        }
        self.note(marker);
    }

    fn note(&mut self, text: String) {
        self.out.lines.push(Line {
            t: None,
            text,
            printed: None,
        });
    }

    /// Runs the lab's `test` program; its output goes to the transcript.
    fn test(&mut self, args: &[&str]) {
        let names = Names {
            roles: self.roles.clone(),
            ..Names::default()
        };
        let shown: Vec<String> = args.iter().map(|a| names.pids_in(a)).collect();
        let mut line = format!("$ test {}:", shown.join(" "));
        match Command::new(self.client)
            .args(args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => {
                for l in String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .chain(String::from_utf8_lossy(&o.stderr).lines())
                {
                    line += &format!(" {} |", names.pids_in(l));
                }
                line += &format!(" {}", describe_status(o.status));
            }
            Err(e) => line += &format!(" cannot run {}: {e}", self.client.display()),
        }
        self.out.client.push(line);
    }

    /// Waits until the daemon's log holds `n` lines containing `needle`.
    fn wait_lines(&mut self, needle: &str, n: usize, timeout: Duration) -> bool {
        let Some(loaded) = self.loaded.as_mut() else {
            return false;
        };
        let ok = wait_for(timeout, || loaded.count(needle) >= n);
        loaded.snapshot_threads();
        ok
    }

    /// How many lines containing `needle` the daemon printed so far.
    fn count(&self, needle: &str) -> usize {
        self.loaded.as_ref().map_or(0, |l| l.count(needle))
    }

    /// Waits for the next line containing `needle`.
    fn wait_next(&mut self, needle: &str, timeout: Duration) -> bool {
        let n = self.count(needle) + 1;
        self.wait_lines(needle, n, timeout)
    }

    /// `sleep SECONDS &`, known in the log as `what`.
    fn spawn_sleep(&mut self, seconds: &str, what: &str) -> Option<i32> {
        let child = Command::new("sleep")
            .arg(seconds)
            .stdin(Stdio::null())
            .spawn()
            .ok()?;
        let pid = child.id() as i32;
        self.roles.insert(pid, format!("<pid of the {what}>"));
        self.children.push(child);
        Some(pid)
    }

    /// A child that has exited but is not reaped (a zombie), known in the log as `what`.
    fn spawn_zombie(&mut self, what: &str) -> Option<i32> {
        let pid = self.spawn_sleep("0", what)?;
        let zombie = wait_for(WAIT, || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        });
        zombie.then_some(pid)
    }

    /// Kills and reaps child `pid`.
    fn kill_child(&mut self, pid: i32) {
        if let Some(c) = self.children.iter_mut().find(|c| c.id() as i32 == pid) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A pid no process has (for the lab's `test p 99999`).
    fn free_pid(&mut self) -> i32 {
        let pid = (2..=99999)
            .rev()
            .find(|p| !Path::new(&format!("/proc/{p}")).exists())
            .unwrap_or(99999);
        self.roles.insert(pid, "<a pid no process has>".into());
        pid
    }

    fn done(mut self) -> Transcript {
        self.unload();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::mem::take(&mut self.out)
    }
}

/// The module and parameters each exercise loads (the daemon's command line).
fn module_args(ex: u32) -> &'static [&'static str] {
    match ex {
        1 => &["timer", "once=1"],
        2 => &["timer"],
        4 => &["deferred", "alloc_io_direct=1"],
        6 => &["kthread"],
        _ => &["deferred"],
    }
}

const TICK: &str = "[timer_handler] pid = ";
const DEAD: &str = ") is dead";
const YAWN: &str = "Yawn!";

/// Plays exercise `ex`'s scenario against `daemon`.
fn play(ex: u32, daemon: &Path, client: &Path) -> Transcript {
    let mut s = Session::new(daemon, client);
    let args = module_args(ex);
    let secs = Duration::from_secs_f64;
    match ex {
        // A timer TIMER_TIMEOUT (1 s) after load: one line (exercise 1), one a second
        // (exercise 2), then unload (with the timer pending, in exercise 2).
        1 | 2 => {
            if s.load(args) {
                let last = if ex == 1 { 1 } else { 3 };
                s.wait_lines(&format!("nseconds = {last}"), 1, WAIT);
                if ex == 1 {
                    // A one-shot timer: nothing more.
                    sleep(secs(1.6));
                }
            }
        }
        // SET fires once after its delay; CANCEL before the delay: nothing fires; a bad
        // command; unload with the timer pending (10 s ahead).
        3 => {
            if s.load(args) {
                s.test(&["s", "1"]);
                s.wait_next(TICK, WAIT);
                // Margins of seconds: a loaded TCG VM can stall that long.
                s.test(&["s", "3"]);
                s.test(&["c"]);
                sleep(secs(3.6));
                s.test(&["x"]);
                s.test(&["s", "10"]);
            }
        }
        // ALLOC with alloc_io() in the timer: the kernel's reports; the device keeps serving.
        4 => {
            if s.load(args) {
                s.test(&["a", "1"]);
                s.wait_next(YAWN, WAIT);
                s.test(&["s", "1"]);
                s.wait_next(TICK, WAIT);
            }
        }
        // ALLOC: the timer queues the work, which sleeps 5 s in process context; unload while it
        // runs waits for it.
        5 => {
            if s.load(args) {
                s.test(&["a", "1"]);
                s.wait_next(TICK, WAIT);
                // The work item is running (or about to): unload now.
                sleep(secs(0.3));
            }
        }
        // A kernel thread that runs until unload, which waits for it.
        6 => {
            if s.load(args) {
                // The thread may have printed it before the module was ready.
                s.wait_lines("Current process id is", 1, WAIT);
            }
        }
        // MON of a live, an exiting and a zombie process, and of a pid no process has; CANCEL
        // stops the ticks; unload with a live process still watched.
        7 => {
            if s.load(args) {
                let live = s.spawn_sleep("1000", "live sleep");
                let exiting = s.spawn_sleep("1000", "exiting sleep");
                let none = s.free_pid();
                if let (Some(live), Some(exiting)) = (live, exiting) {
                    s.test(&["p", &live.to_string()]);
                    s.test(&["p", &exiting.to_string()]);
                    s.wait_next(TICK, WAIT);
                    s.kill_child(exiting);
                    s.wait_next(DEAD, WAIT);
                    if let Some(zombie) = s.spawn_zombie("zombie sleep") {
                        s.test(&["p", &zombie.to_string()]);
                        s.wait_next(DEAD, WAIT);
                    }
                    // Still ticking after the reports: the timer is re-armed.
                    s.wait_next(TICK, WAIT);
                    s.test(&["p", &none.to_string()]);
                    s.test(&["c"]);
                    sleep(secs(1.6));
                }
            }
        }
        _ => s.note(format!("no scenario for exercise {ex}")),
    }
    s.done()
}

// ---------------------------------------------------------------------------------------------
// Normalizing a log

/// What the pids and thread names of one run stand for.
#[derive(Default)]
struct Names {
    /// The daemon's pid and the comm of its main thread.
    daemon: i32,
    comm: String,
    /// The daemon's threads: tid -> comm.
    threads: HashMap<i32, String>,
    /// The scenario's processes: pid -> what.
    roles: HashMap<i32, String>,
}

/// Splits `[ 12.345678] text` into the seconds and the text.
fn dmesg(line: &str) -> Option<(f64, &str)> {
    let rest = line.strip_prefix('[')?;
    let (ts, text) = rest.split_once("] ")?;
    Some((ts.trim().parse().ok()?, text))
}

impl Names {
    /// A pid as what it stands for, else as is.
    fn pid(&self, pid: &str) -> String {
        let Ok(n) = pid.parse::<i32>() else {
            return pid.to_string();
        };
        if n == self.daemon && n != 0 {
            return "<daemon pid>".into();
        }
        if let Some(r) = self.roles.get(&n) {
            return r.clone();
        }
        pid.to_string()
    }

    /// Every number in `s` that stands for a process of the scenario, replaced.
    fn pids_in(&self, s: &str) -> String {
        let mut out = String::new();
        let mut num = String::new();
        for c in s.chars().chain(std::iter::once('\0')) {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            if !num.is_empty() {
                out += &self.pid(&num);
                num.clear();
            }
            if c != '\0' {
                out.push(c);
            }
        }
        out
    }

    /// Is `pid`/`comm` a thread of the daemon, named as it is?
    fn is_thread(&self, pid: &str, comm: &str) -> bool {
        let Ok(n) = pid.parse::<i32>() else {
            return false;
        };
        (n == self.daemon && comm == self.comm) || self.threads.get(&n).is_some_and(|c| c == comm)
    }

    /// One raw line of the daemon's output, normalized.
    fn line(&self, raw: &str) -> Line {
        let Some((t, text)) = dmesg(raw) else {
            return Line {
                t: None,
                text: raw.to_string(),
                printed: None,
            };
        };
        let normalized = self.text(text);
        Line {
            t: Some(t),
            printed: (normalized != text).then(|| text.to_string()),
            text: normalized,
        }
    }

    fn text(&self, text: &str) -> String {
        // `[timer_handler] pid = P, comm = C`: the interrupted thread, any of the daemon's.
        if let Some(rest) = text.strip_prefix(TICK)
            && let Some((pid, comm)) = rest.split_once(", comm = ")
        {
            if self.is_thread(pid, comm) {
                return format!("{TICK}<pid>, comm = <comm>");
            }
            return format!("{TICK}{}, comm = {comm}", self.pid(pid));
        }
        // `[my_thread_f] Current process id is P (C)`: the thread's own id and name.
        const CUR: &str = "[my_thread_f] Current process id is ";
        if let Some(rest) = text.strip_prefix(CUR)
            && let Some((pid, comm)) = rest.split_once(" (")
            && let Some(comm) = comm.strip_suffix(')')
        {
            let pid = match self.threads.get(&pid.parse().unwrap_or(-1)) {
                Some(c) if c == comm && pid != self.daemon.to_string() => "<its thread id>".into(),
                _ => self.pid(pid),
            };
            return format!("{CUR}{pid} ({comm})");
        }
        // `task C (P) is dead`.
        if let Some(rest) = text.strip_prefix("task ")
            && let Some(head) = rest.strip_suffix(DEAD)
            && let Some((comm, pid)) = head.rsplit_once(" (")
        {
            return format!("task {comm} ({}{DEAD}", self.pid(pid));
        }
        // The kernel's might_sleep reports: where, and which thread.
        const AT: &str = "BUG: sleeping function called from invalid context at ";
        if text.starts_with(AT) {
            return format!("{AT}<file>:<line>");
        }
        if let Some((head, rest)) = text.split_once(", pid: ")
            && let Some((pid, comm)) = rest.split_once(", name: ")
            && self.is_thread(pid, comm)
        {
            return format!("{head}, pid: <pid>, name: <comm>");
        }
        const SWA: &str = "BUG: scheduling while atomic: ";
        if let Some(rest) = text.strip_prefix(SWA) {
            let mut parts = rest.rsplitn(3, '/');
            if let (Some(count), Some(pid), Some(comm)) = (parts.next(), parts.next(), parts.next())
                && self.is_thread(pid, comm)
            {
                return format!("{SWA}<comm>/<pid>/{count}");
            }
        }
        text.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing two logs

/// How many lines of a report are shown after its first.
const REPORT_LINES: usize = 24;

/// Does this line start one of the runtime's reports of a broken rule?
fn is_report(text: &str) -> bool {
    [
        "BUG:",
        "WARNING:",
        "ODEBUG:",
        "Oops",
        "kmemleak:",
        "unreferenced object",
    ]
    .iter()
    .any(|p| text.starts_with(p) || text.contains(&format!(": {p}")))
}

/// Lines that only mark time (the MON ticks): how many fall into a window is a matter of timing,
/// so a run of them counts as one.
fn is_tick(text: &str) -> bool {
    text.starts_with(TICK)
}

/// A line to compare: a line, or a run of identical ticks kept once, with the time of its last.
struct Entry<'a> {
    line: &'a Line,
    last: Option<f64>,
}

/// The lines to compare: each run of identical ticks kept once.
fn collapsed(lines: &[Line]) -> Vec<Entry<'_>> {
    let mut out: Vec<Entry<'_>> = Vec::new();
    for l in lines {
        if is_tick(&l.text)
            && let Some(p) = out.last_mut()
            && p.line.text == l.text
        {
            p.last = l.t;
            continue;
        }
        out.push(Entry { line: l, last: l.t });
    }
    out
}

/// How far a line's delay after the line before it may stray from the answer key's.
fn slack(expected_delay: f64) -> f64 {
    0.7f64.max(expected_delay * 0.3)
}

/// Why `got` fails against `expected`, or None when it passes.
fn compare(expected: &Transcript, got: &Transcript) -> Option<String> {
    // 1. A broken rule: a report the answer key did not print.
    let known_texts: std::collections::HashSet<&str> =
        expected.lines.iter().map(|l| l.text.as_str()).collect();
    let mut known: HashMap<&str, usize> = HashMap::new();
    for l in &expected.lines {
        *known.entry(l.text.as_str()).or_default() += 1;
    }
    for (i, l) in got.lines.iter().enumerate() {
        let seen = known.entry(l.text.as_str()).or_default();
        if *seen > 0 {
            *seen -= 1;
            continue;
        }
        if is_report(&l.text) {
            let mut why = format!("the runtime reported a broken rule:\n  {}", l.shown());
            for next in got.lines.iter().skip(i + 1).take(REPORT_LINES) {
                let normal = !next.text.is_empty() && known_texts.contains(next.text.as_str());
                if next.t.is_none()
                    || (!is_report(&next.text) && (normal || starts_module_line(&next.text)))
                {
                    break;
                }
                why += &format!("\n  {}", next.shown());
            }
            return Some(why);
        }
    }
    // 2. The first line that differs.
    let (e, g) = (collapsed(&expected.lines), collapsed(&got.lines));
    let n = e.len().max(g.len());
    for i in 0..n {
        let (el, gl) = (e.get(i).map(|x| x.line), g.get(i).map(|x| x.line));
        if el.map(|l| &l.text) == gl.map(|l| &l.text) {
            continue;
        }
        let show = |l: Option<&Line>| l.map_or("(nothing more)".to_string(), |l| l.text.clone());
        let mut why = String::from("your log differs from the answer key's");
        if i > 0 {
            why += &format!(" after `{}`", e[i - 1].line.text);
        }
        why += &format!(":\n  expected: {}\n  got:      {}", show(el), show(gl));
        if let Some(hint) = hint(el.map(|l| l.text.as_str()), gl.map(|l| l.text.as_str())) {
            why += &format!("\n  ({hint})");
        }
        return Some(why);
    }
    // 3. Timing: each line's delay after the one before (the last tick of a run), within slack
    // of the answer key's.
    for i in 1..n {
        let (Some(te), Some(tg)) = (e[i].line.t, g[i].line.t) else {
            continue;
        };
        let (Some(pe), Some(pg)) = (e[i - 1].last, g[i - 1].last) else {
            continue;
        };
        let (de, dg) = (te - pe, tg - pg);
        if (de - dg).abs() > slack(de) {
            return Some(format!(
                "`{}` came {dg:.3} s after `{}`; in the answer key's log, {de:.3} s after it",
                g[i].line.text,
                g[i - 1].line.text
            ));
        }
    }
    // 4. What the lab's `test` program printed.
    for i in 0..expected.client.len().max(got.client.len()) {
        let (ec, gc) = (expected.client.get(i), got.client.get(i));
        if ec != gc {
            let show = |c: Option<&String>| c.map_or("(nothing)".to_string(), String::clone);
            return Some(format!(
                "the test program's output differs:\n  expected: {}\n  got:      {}",
                show(ec),
                show(gc)
            ));
        }
    }
    None
}

/// A line of the modules' own (not a report's continuation).
fn starts_module_line(text: &str) -> bool {
    text.starts_with("[deferred_")
        || text.starts_with("[timer_")
        || text.starts_with("[kthread_")
        || text.starts_with("[my_thread_f]")
        || text.starts_with("task ")
        || text.starts_with(YAWN)
}

/// A word on what a difference usually means.
fn hint(expected: Option<&str>, got: Option<&str>) -> Option<String> {
    let (e, g) = (expected.unwrap_or(""), got.unwrap_or(""));
    if g.starts_with("insmod failed") {
        return Some("the daemon did not start: the lines above `insmod failed` say why".into());
    }
    if g.starts_with("rmmod: still running") {
        return Some("unload did not finish: is something waiting for what never comes?".into());
    }
    const HANDLER: &str = "[timer_handler] ";
    if g.starts_with(HANDLER) && !e.starts_with(HANDLER) {
        return Some("a timer fired where the answer key's did not".into());
    }
    if e.starts_with(HANDLER) && !g.starts_with(HANDLER) {
        return Some("the answer key's timer fired here and yours did not".into());
    }
    if e.contains(DEAD) && !g.contains(DEAD) {
        return Some(
            "the watched process's death was not reported (is the timer re-armed?)".into(),
        );
    }
    if (e.contains('<') || g.contains('<')) && e.split('<').next() == g.split('<').next() {
        return Some(
            "a pid or name differs: <daemon pid> is the daemon's, <pid> and <comm> a thread of it, \
             <pid of ...> a process the check started"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            daemon: 100,
            comm: "mylab".into(),
            threads: [
                (100, "mylab".to_string()),
                (103, "cuse/1".to_string()),
                (107, "mykthread0".to_string()),
            ]
            .into_iter()
            .collect(),
            roles: [(200, "<pid of the live sleep>".to_string())]
                .into_iter()
                .collect(),
        }
    }

    fn t(lines: &[(Option<f64>, &str)]) -> Transcript {
        Transcript {
            lines: lines
                .iter()
                .map(|&(t, s)| Line {
                    t,
                    text: s.into(),
                    printed: None,
                })
                .collect(),
            client: vec![],
        }
    }

    #[test]
    fn pids_and_names_become_what_they_stand_for() {
        let n = names();
        let norm = |s: &str| n.line(s).text;
        assert_eq!(
            norm("[    1.000100] [timer_handler] pid = 100, comm = mylab"),
            "[timer_handler] pid = <pid>, comm = <comm>"
        );
        assert_eq!(
            norm("[    1.000100] [timer_handler] pid = 103, comm = cuse/1"),
            "[timer_handler] pid = <pid>, comm = <comm>"
        );
        // A pair that is no thread of the daemon stays as printed.
        assert_eq!(
            norm("[    1.0] [timer_handler] pid = 0, comm = mylab"),
            "[timer_handler] pid = 0, comm = mylab"
        );
        assert_eq!(
            norm("[    1.0] task sleep (200) is dead"),
            "task sleep (<pid of the live sleep>) is dead"
        );
        assert_eq!(
            norm("[    1.0] task sleep (100) is dead"),
            "task sleep (<daemon pid>) is dead"
        );
        assert_eq!(
            norm("[    1.0] [my_thread_f] Current process id is 107 (mykthread0)"),
            "[my_thread_f] Current process id is <its thread id> (mykthread0)"
        );
        assert_eq!(
            norm("[    1.0] [my_thread_f] Current process id is 100 (mykthread0)"),
            "[my_thread_f] Current process id is <daemon pid> (mykthread0)"
        );
        assert_eq!(
            norm("[    1.0] BUG: scheduling while atomic: mylab/100/0x00000100"),
            "BUG: scheduling while atomic: <comm>/<pid>/0x00000100"
        );
        assert_eq!(
            norm(
                "[    1.0] in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 103, name: cuse/1"
            ),
            "in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: <pid>, name: <comm>"
        );
        assert_eq!(norm("deferred: starting"), "deferred: starting");
        assert_eq!(n.line("[   12.500000] x").t, Some(12.5));
        assert_eq!(
            n.pids_in("Monitor PID 200."),
            "Monitor PID <pid of the live sleep>."
        );
    }

    #[test]
    fn a_transcript_survives_its_file() {
        let mut tr = t(&[
            (Some(1.25), "[deferred_init] Init module"),
            (None, "rmmod: exit 0"),
        ]);
        tr.client.push("$ test c: Cancel timer | exit 0".into());
        assert_eq!(Transcript::parse(&tr.to_string()), Some(tr));
        assert_eq!(Transcript::parse("garbage"), None);
    }

    #[test]
    fn tick_runs_are_timed_from_their_last() {
        let tick = "[timer_handler] pid = <pid>, comm = <comm>";
        let dead = "task sleep (<pid of x>) is dead";
        let key = t(&[
            (Some(0.0), "a"),
            (Some(1.0), tick),
            (Some(2.0), tick),
            (Some(2.0), dead),
        ]);
        let got = t(&[
            (Some(0.0), "a"),
            (Some(1.0), tick),
            (Some(2.0), tick),
            (Some(3.0), tick),
            (Some(3.0), dead),
        ]);
        assert_eq!(compare(&key, &got), None);
    }

    #[test]
    fn identical_logs_pass_and_tick_runs_count_once() {
        let key = t(&[
            (Some(0.0), "a"),
            (Some(1.0), "[timer_handler] pid = <pid>, comm = <comm>"),
            (Some(1.1), "b"),
        ]);
        let got = t(&[
            (Some(0.0), "a"),
            (Some(1.0), "[timer_handler] pid = <pid>, comm = <comm>"),
            (Some(1.05), "[timer_handler] pid = <pid>, comm = <comm>"),
            (Some(1.1), "b"),
        ]);
        assert_eq!(compare(&key, &key), None);
        assert_eq!(compare(&key, &got), None);
    }

    #[test]
    fn the_first_difference_is_shown() {
        let key = t(&[
            (Some(0.0), "a"),
            (Some(1.0), "task sleep (<pid of x>) is dead"),
            (None, "rmmod: exit 0"),
        ]);
        let got = t(&[(Some(0.0), "a"), (None, "rmmod: exit 0")]);
        let why = compare(&key, &got).unwrap();
        assert!(why.contains("after `a`"), "{why}");
        assert!(
            why.contains("expected: task sleep (<pid of x>) is dead\n  got:      rmmod: exit 0"),
            "{why}"
        );
        assert!(why.contains("re-armed"), "{why}");
        // Missing lines at the end.
        let why = compare(&key, &t(&[(Some(0.0), "a")])).unwrap();
        assert!(why.contains("got:      (nothing more)"), "{why}");
    }

    #[test]
    fn a_report_wins_over_the_difference_it_causes() {
        let key = t(&[(Some(0.0), "a"), (Some(1.0), "b"), (None, "rmmod: exit 0")]);
        let got = t(&[
            (Some(0.0), "a"),
            (Some(0.5), ""),
            (Some(0.5), "WARNING: inconsistent lock state"),
            (
                Some(0.5),
                "inconsistent {IN-SOFTIRQ-W} -> {SOFTIRQ-ON-W} usage.",
            ),
            (Some(1.0), "b"),
            (None, "rmmod: exit 1"),
        ]);
        let why = compare(&key, &got).unwrap();
        assert_eq!(
            why,
            "the runtime reported a broken rule:\n  WARNING: inconsistent lock state\n  \
             inconsistent {IN-SOFTIRQ-W} -> {SOFTIRQ-ON-W} usage."
        );
        // Shown as printed: the learner needs the file and line.
        let mut bug = t(&[
            (Some(0.0), "a"),
            (
                Some(0.5),
                "BUG: sleeping function called from invalid context at <file>:<line>",
            ),
        ]);
        bug.lines[1].printed = Some(
            "BUG: sleeping function called from invalid context at src/modules/deferred.rs:9"
                .into(),
        );
        let why = compare(&key, &bug).unwrap();
        assert!(
            why.ends_with("context at src/modules/deferred.rs:9"),
            "{why}"
        );
        // A report the answer key prints too (exercise 4's) is part of the expected log.
        let key4 = t(&[(
            Some(0.0),
            "BUG: scheduling while atomic: <comm>/<pid>/0x00000100",
        )]);
        assert_eq!(compare(&key4, &key4), None);
    }

    #[test]
    fn a_line_much_earlier_or_later_fails() {
        let key = t(&[
            (Some(0.0), "[timer_init] Init module"),
            (Some(1.0), "[timer_handler] nseconds = 1"),
        ]);
        let early = t(&[
            (Some(0.0), "[timer_init] Init module"),
            (Some(0.004), "[timer_handler] nseconds = 1"),
        ]);
        let why = compare(&key, &early).unwrap();
        assert!(
            why.starts_with(
                "`[timer_handler] nseconds = 1` came 0.004 s after `[timer_init] Init module`"
            ),
            "{why}"
        );
        let close = t(&[
            (Some(0.0), "[timer_init] Init module"),
            (Some(1.4), "[timer_handler] nseconds = 1"),
        ]);
        assert_eq!(compare(&key, &close), None);
    }

    #[test]
    fn client_output_is_compared() {
        let mut key = t(&[]);
        key.client.push(
            "$ test p <a pid no process has>: Monitor PID <a pid no process has>. | exit 1".into(),
        );
        let mut got = key.clone();
        got.client[0] =
            "$ test p <a pid no process has>: Monitor PID <a pid no process has>. | exit 0".into();
        assert!(
            compare(&key, &got)
                .unwrap()
                .contains("test program's output differs")
        );
    }
}
