//! `scripts/lab new`: the skeletons are made from the answer key (src/modules) and nothing else;
//! a marker change changes them; the crate builds offline with this project's lock; its daemon
//! loads the learner's modules as `deferred` loads the answer key's, and reports a broken one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const MODULES: [&str; 3] = ["deferred", "timer", "kthread"];

fn tmpdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn lab_new(dest: &Path, from: Option<&Path>) -> Output {
    let mut cmd = Command::new(Path::new(ROOT).join("scripts/lab"));
    cmd.arg("new").arg(dest);
    if let Some(f) = from {
        cmd.arg("--from").arg(f);
    }
    cmd.output().unwrap()
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

fn is_todo(line: &str) -> bool {
    line.trim_start().starts_with("// TODO")
}

/// The marker grammar of `scripts/lab --help`, written again: a run of TODO comments (with the
/// comment lines continuing them, up to a `// SAFETY:`) stays; the largest K of the run (`TODO
/// N/K`, else 1) lines after it go.
fn strip<'a>(key: &[&'a str]) -> Vec<&'a str> {
    let is_comment =
        |l: &str| l.trim_start().starts_with("//") && !l.trim_start().starts_with("// SAFETY:");
    let count = |l: &str| -> usize {
        let head = l.trim_start().trim_start_matches("// TODO");
        let head = head.split(':').next().unwrap_or("");
        head.split('/').nth(1).map_or(1, |k| k.parse().unwrap())
    };
    let (mut out, mut i) = (Vec::new(), 0);
    while i < key.len() {
        if !is_todo(key[i]) {
            out.push(key[i]);
            i += 1;
            continue;
        }
        let mut k = 0;
        while i < key.len() && is_comment(key[i]) {
            if is_todo(key[i]) {
                k = k.max(count(key[i]));
            }
            out.push(key[i]);
            i += 1;
        }
        i += k;
    }
    out
}

#[test]
fn each_skeleton_is_its_answer_key_less_the_lines_after_each_todo() {
    let dest = tmpdir("skel");
    let out = lab_new(&dest, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in MODULES {
        let key = read(format!("{ROOT}/src/modules/{m}.rs"));
        let skel = read(dest.join(format!("src/modules/{m}.rs")));
        let (key, skel): (Vec<&str>, Vec<&str>) = (key.lines().collect(), skel.lines().collect());
        assert!(skel.len() < key.len(), "{m}: nothing removed");
        assert!(
            skel.iter().filter(|l| is_todo(l)).count() >= 2,
            "{m}: no TODOs kept"
        );
        assert_eq!(
            skel,
            strip(&key),
            "{m}: not the answer key less its marked lines"
        );
    }
    let timer = read(dest.join("src/modules/timer.rs"));
    assert!(!timer.contains("timer.timer_setup(timer_handler);"));
    assert!(!timer.contains("del_timer_sync();"));
    assert!(timer.contains("// TODO 2/3: unless `once=1`, re-arm the timer"));
    let deferred = read(dest.join("src/modules/deferred.rs"));
    for gone in [
        "schedule_work(pinned);",
        "flush_scheduled_work();",
        "let task = match TaskRef::get(pid)",
        ".lock().reap();",
    ] {
        assert!(!deferred.contains(gone), "deferred.rs still has {gone}");
    }
    assert!(!read(dest.join("src/modules/kthread.rs")).contains("crate::kthread_run!("));
    // The list of modules is the answer key's.
    assert!(
        read(dest.join("src/modules/mod.rs"))
            .contains("&[deferred::MODULE, timer::MODULE, kthread::MODULE]")
    );
    assert_eq!(
        read(dest.join("Cargo.lock")),
        read(format!("{ROOT}/Cargo.lock"))
    );
}

fn copy_key(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["mod.rs", "deferred.rs", "timer.rs", "kthread.rs"] {
        std::fs::copy(format!("{ROOT}/src/modules/{f}"), to.join(f)).unwrap();
    }
}

#[test]
fn a_marker_change_changes_the_skeleton() {
    let key = tmpdir("key");
    copy_key(&key);
    let timer = read(key.join("timer.rs"));
    let marker = "        // TODO 1: stop the timer and wait for a handler still running: `del_timer_sync`.\n";
    assert!(timer.contains(marker));

    // A new text shows; a marker taken away leaves its line in.
    let edited = timer
        .replace(
            "re-arm the timer TIMER_TIMEOUT seconds from now",
            "arm it again",
        )
        .replace(marker, "");
    std::fs::write(key.join("timer.rs"), edited).unwrap();
    let dest = tmpdir("changed");
    assert!(lab_new(&dest, Some(&key)).status.success());
    let skel = read(dest.join("src/modules/timer.rs"));
    assert!(skel.contains("// TODO 2/3: unless `once=1`, arm it again:"));
    assert!(skel.contains("self.timer.del_timer_sync();"));

    // A count that cuts a statement in two is refused, naming the line; nothing is written.
    let cut = timer.replace("// TODO 2/3: unless", "// TODO 2/2: unless");
    std::fs::write(key.join("timer.rs"), cut.clone()).unwrap();
    let dest = tmpdir("refused");
    let out = lab_new(&dest, Some(&key));
    assert_eq!(out.status.code(), Some(2));
    let line = cut.lines().position(|l| l.contains("TODO 2/2")).unwrap() + 1;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "timer.rs:{line}: the 2 lines the TODO removes do not balance"
        )),
        "{err}"
    );
    assert!(!dest.exists());
}

#[test]
fn a_directory_in_use_is_refused() {
    let dest = tmpdir("used");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("mine.rs"), "keep me").unwrap();
    let out = lab_new(&dest, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists and is not an empty directory"));
    assert_eq!(read(dest.join("mine.rs")), "keep me");
    assert!(!dest.join("Cargo.toml").exists());
}

/// Builds the crate at `dir` offline (one target directory for every build of this test).
fn build(dir: &Path) {
    let out = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["build", "--offline", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", Path::new(ROOT).join("target/lab-test"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo build in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the learner's daemon with `args` until a line contains `until`, then SIGINT; returns
/// the exit code and the log.
fn run_until(args: &[&str], until: &str) -> (Option<i32>, Vec<String>) {
    let exe = Path::new(ROOT).join("target/lab-test/debug/deferred");
    let mut child = Command::new(exe)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => {
                let hit = l.contains(until);
                log.push(l);
                if hit {
                    break;
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no {until:?} ({e}): {log:#?}");
            }
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    log.extend(rx.iter());
    (status.code(), log)
}

#[test]
fn the_skeleton_builds_offline_loads_and_reports_a_broken_module() {
    let dir = tmpdir("crate");
    assert!(lab_new(&dir, None).status.success());
    build(&dir);
    // As handed out: each module loads and unloads with its lines, exit 0.
    for (m, init, exit) in [
        (
            "timer",
            "[timer_init] Init module",
            "[timer_exit] Exit module",
        ),
        (
            "kthread",
            "[kthread_init] Init module",
            "[kthread_exit] Exit module",
        ),
    ] {
        let (code, log) = run_until(&[m], init);
        assert_eq!(code, Some(0), "{log:#?}");
        assert!(log.iter().any(|l| l.ends_with(exit)), "{log:#?}");
    }
    let out = Command::new(Path::new(ROOT).join("target/lab-test/debug/deferred"))
        .args(["timer", "bogus=1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: module `timer` has no parameter `bogus` (it takes: once)"),
        "{err}"
    );

    // The answer key's timer with a String built in its handler: the BUG as it happens, naming
    // the handler, and exit status 1.
    let key = read(format!("{ROOT}/src/modules/timer.rs"));
    let broken = key.replace(
        "    pr_info!(\"[timer_handler] nseconds = {}\", n);",
        "    let s = format!(\"{n}\");\n    pr_info!(\"[timer_handler] nseconds = {}\", s);",
    );
    assert_ne!(broken, key);
    std::fs::write(dir.join("src/modules/timer.rs"), broken).unwrap();
    build(&dir);
    let (code, log) = run_until(&["timer"], "[timer_handler] nseconds = 1");
    assert_eq!(code, Some(1), "{log:#?}");
    let bug = log
        .iter()
        .position(|l| l.contains("BUG: sleeping function called from invalid context at mm/slab.h"))
        .unwrap_or_else(|| panic!("{log:#?}"));
    let tick = log.iter().position(|l| l.contains("nseconds = 1")).unwrap();
    assert!(
        bug < tick,
        "reported when it happened, before the line: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.ends_with("in timer handler deferred::modules::timer::timer_handler")),
        "{log:#?}"
    );
    assert!(
        log.last()
            .unwrap()
            .contains("exit status 1: the kernel is tainted (W)"),
        "{log:#?}"
    );
}
