//! The lab's scripted session (the top of `kernel-module-transcript.txt`), played through real
//! CUSE with the project's C `test` program, against the module lines the real modules printed.
//!
//! What may differ, and only that: the pids of processes, timestamps (within generous slack of
//! the expected delays), how many once-a-second MON ticks fall into a window whose length is
//! itself a timing matter (a tick due as the CANCEL is served may be printed after its command
//! line, as in the kernel), and which CPU's idle task a tick shows (the lab's VM has two CPUs,
//! so `swapper/0` or `swapper/1`; the runtime is one CPU, `swapper/0`). Everything else must
//! match line for line, `[timer_handler] pid = 0, comm = swapper/0` included.

mod common;

use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::Duration;

use common::{Daemon, bin};

/// One module line of the daemon's log: seconds since load and the message.
#[derive(Debug, Clone)]
struct Line {
    t: f64,
    text: String,
}

/// The module lines of a dmesg-style log: `[    2.785067] message`.
fn module_lines(log: &str) -> Vec<Line> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            let (ts, msg) = rest.split_once("] ")?;
            let t: f64 = ts.trim().parse().ok()?;
            Some(Line {
                t,
                text: msg.to_string(),
            })
        })
        .collect()
}

fn is_tick(l: &Line) -> bool {
    l.text.starts_with("[timer_handler] pid = ")
}

fn test_client(args: &[&str]) -> Output {
    Command::new(bin("test")).args(args).output().unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn the_labs_session_matches_the_real_modules_transcript() {
    let d = Daemon::start(&[]);
    let mut client = String::new();
    let mut run = |args: &[&str], rc: i32| {
        let o = test_client(args);
        assert_eq!(o.status.code(), Some(rc), "test {args:?}: {}", out(&o));
        client += &out(&o);
    };

    run(&["s", "1"], 0);
    sleep(Duration::from_secs(2));
    run(&["s", "3"], 0);
    sleep(Duration::from_secs(1));
    run(&["c"], 0);
    sleep(Duration::from_secs(3));
    run(&["a", "1"], 0);
    sleep(Duration::from_secs(7));
    let mut child = Command::new("sleep").arg("2").spawn().unwrap();
    let p = child.id();
    run(&["p", &p.to_string()], 0);
    child.wait().unwrap();
    sleep(Duration::from_secs(2));
    run(&["c"], 0);
    run(&["p", "99999"], 1);
    run(&["x"], 1);
    // 2000 CANCEL ioctls on one open file.
    {
        let f = std::fs::File::open(d.node()).unwrap();
        for _ in 0..2000 {
            // SAFETY: a plain-value ioctl on an open descriptor.
            let r = unsafe { libc::ioctl(f.as_raw_fd(), 0x6b02, 0) };
            assert_eq!(r, 0);
        }
    }
    let log = d.stop();

    // The test program's output, as in the transcript.
    assert_eq!(
        client,
        format!(
            "Set timer to 1 seconds\nSet timer to 3 seconds\nCancel timer\n\
             Allocate memory after 1 seconds\nMonitor PID {p}.\nCancel timer\n\
             Monitor PID 99999.\nioctl monitor pid error: No such process\n\
             Wrong parameter: Success\n"
        )
    );

    let lines = module_lines(&log);
    let dead = format!("task sleep ({p}) is dead");
    let open = "[deferred_open] Device opened";
    let rel = "[deferred_release] Device released";
    let cmd = |c: &str| format!("[deferred_ioctl] Command: {c}");
    // Everything but the ticks, strictly in order.
    let mut expected: Vec<String> = vec!["[deferred_init] Init module".into()];
    let session = |expected: &mut Vec<String>, ioctl: Option<&str>| {
        expected.push(open.into());
        if let Some(c) = ioctl {
            expected.push(cmd(c));
        }
        expected.push(rel.into());
    };
    session(&mut expected, Some("Set timer"));
    session(&mut expected, Some("Set timer"));
    session(&mut expected, Some("Cancel timer"));
    session(&mut expected, Some("Allocate memory"));
    expected.push("Yawn! I've been sleeping for 5 seconds.".into());
    session(&mut expected, Some("Monitor pid"));
    expected.push(dead.clone());
    session(&mut expected, Some("Cancel timer"));
    session(&mut expected, Some("Monitor pid"));
    session(&mut expected, None); // test x: opened, wrong letter, released
    expected.push(open.into());
    for _ in 0..2000 {
        expected.push(cmd("Cancel timer"));
    }
    expected.push(rel.into());
    expected.push("[deferred_exit] Exit module".into());

    let got: Vec<String> = lines
        .iter()
        .filter(|l| !is_tick(l))
        .map(|l| l.text.clone())
        .collect();
    if got != expected {
        let first = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "module lines differ at line {first}: got {:?}, expected {:?}\nlog:\n{log}",
            got.get(first),
            expected.get(first)
        );
    }

    // Every tick came to the idle CPU, as in the transcript.
    for l in lines.iter().filter(|l| is_tick(l)) {
        assert_eq!(
            l.text, "[timer_handler] pid = 0, comm = swapper/0",
            "current in the timer handler\n{log}"
        );
    }

    // Ticks: where they fall between the other lines, and when.
    let idx = |pred: &dyn Fn(&Line) -> bool, from: usize| -> usize {
        from + lines[from..]
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("line not found after {from}\n{log}"))
    };
    let ticks = |a: usize, b: usize| lines[a..b].iter().filter(|l| is_tick(l)).count();
    let text_is = |s: String| move |l: &Line| l.text == s;

    let set1 = idx(&text_is(cmd("Set timer")), 0);
    let set3 = idx(&text_is(cmd("Set timer")), set1 + 1);
    let cancel = idx(&text_is(cmd("Cancel timer")), set3);
    let alloc = idx(&text_is(cmd("Allocate memory")), cancel);
    let yawn = idx(&|l: &Line| l.text.starts_with("Yawn!"), alloc);
    let mon = idx(&text_is(cmd("Monitor pid")), yawn);
    let dead_at = idx(&text_is(dead.clone()), mon);
    let cancel2 = idx(&text_is(cmd("Cancel timer")), dead_at);

    assert_eq!(ticks(set1, set3), 1, "SET 1 fires once\n{log}");
    let fired = idx(&is_tick, set1);
    let delay = lines[fired].t - lines[set1].t;
    assert!((0.95..3.0).contains(&delay), "SET 1 fired after {delay} s");
    assert_eq!(
        ticks(set3, alloc),
        0,
        "SET 3 then CANCEL after 1 s: no expiry\n{log}"
    );
    assert_eq!(ticks(alloc, yawn), 1, "ALLOC 1 fires once\n{log}");
    let fired = idx(&is_tick, alloc);
    let delay = lines[fired].t - lines[alloc].t;
    assert!(
        (0.95..3.0).contains(&delay),
        "ALLOC 1 fired after {delay} s"
    );
    let slept = lines[yawn].t - lines[fired].t;
    assert!((4.99..8.0).contains(&slept), "alloc_io slept {slept} s");
    assert_eq!(ticks(yawn, mon), 0, "{log}");
    // MON ticks every second: the child lives 2 s, so 1 to 3 ticks before its death is seen,
    // and the report comes from a tick (the line right before it).
    assert!((1..=3).contains(&ticks(mon, dead_at)), "{log}");
    assert!(is_tick(&lines[dead_at - 1]), "{log}");
    let first_tick = idx(&is_tick, mon);
    let delay = lines[first_tick].t - lines[mon].t;
    assert!(
        (0.95..3.0).contains(&delay),
        "first MON tick after {delay} s"
    );
    // Two seconds between the death and the CANCEL: it keeps ticking.
    assert!(ticks(dead_at, cancel2) >= 1, "{log}");
    // The CANCEL comes about four seconds after the MON, when a tick is due. A tick whose
    // handler began just before the CANCEL may be printed after its command line (the line's
    // slot is taken after its stamp, as in the kernel's printk). The lab's CANCEL is
    // `del_timer`, which does not wait for a running handler: that handler re-arms the timer, as
    // it would in the kernel, and the CANCELs of the loop stop it long before it is due again.
    // So at most that one tick after the CANCEL, due at it: stamped within half a second of it.
    let late: Vec<&Line> = lines[cancel2 + 1..].iter().filter(|l| is_tick(l)).collect();
    assert!(late.len() <= 1, "ticks after CANCEL\n{log}");
    if let Some(t) = late.first() {
        assert!(
            (t.t - lines[cancel2].t).abs() < 0.5,
            "a tick after CANCEL that was not due at it\n{log}"
        );
    }
}
