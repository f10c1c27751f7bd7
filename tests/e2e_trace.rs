//! The lab's session traced end to end through real CUSE (`deferred --trace FILE`): the file is
//! ftrace's text, and it holds every event of the session in the right order and context — the
//! requests and their replies, the timer armed in process context and expiring in softirq
//! context on the thread the interrupt hit, the work queued from there and run 5 seconds long
//! on `events/N`, the MON timer re-armed in softirq context, the kthread's start and stop.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{Daemon, bin, wait_for};

/// One event line: `comm-pid [cpu] flags ts: name: fields`.
#[derive(Debug, Clone)]
struct Ev {
    comm: String,
    pid: i32,
    flags: String,
    ts: f64,
    name: String,
    fields: String,
}

impl Ev {
    fn ctx(&self) -> char {
        self.flags.as_bytes()[2] as char
    }
    fn field(&self, key: &str) -> Option<&str> {
        let at = self.fields.find(&format!("{key}="))?;
        self.fields[at + key.len() + 1..].split([' ', ')']).next()
    }
}

fn parse_line(l: &str) -> Option<Ev> {
    // The task is right-aligned in 16 columns and may hold spaces or dashes: split at " [".
    let (task, rest) = l.split_once(" [")?;
    let (comm, pid) = task.trim().rsplit_once('-')?;
    let (_cpu, rest) = rest.split_once("] ")?;
    let (flags, rest) = rest.split_once(' ')?;
    let (ts, rest) = rest.trim_start().split_once(": ")?;
    let (name, fields) = rest
        .split_once(": ")
        .unwrap_or((rest.trim_end_matches(':'), ""));
    Some(Ev {
        comm: comm.into(),
        pid: pid.parse().ok()?,
        flags: flags.into(),
        ts: ts.parse().ok()?,
        name: name.into(),
        fields: fields.into(),
    })
}

/// The events of a trace file, after checking its header.
fn parse(text: &str) -> Vec<Ev> {
    let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
    assert_eq!(header.first(), Some(&"# tracer: nop"), "{text}");
    let evs: Vec<Ev> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("not an ftrace line: {l:?}")))
        .collect();
    let counts = format!(
        "# entries-in-buffer/entries-written: {0}/{0}   #P:1",
        evs.len()
    );
    assert_eq!(
        header[2].trim_end(),
        counts,
        "every event in the file, none lost"
    );
    evs
}

/// The test program (`test ARGS`): its pid and output.
fn client(args: &[&str]) -> (u32, Output) {
    let child = Command::new(bin("test"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "test {args:?}: {out:?}");
    (pid, out)
}

struct Trace {
    evs: Vec<Ev>,
    text: String,
}

impl Trace {
    /// The first event at or after `from` that `pred` accepts; panics with the trace if none.
    fn find(&self, from: usize, what: &str, pred: impl Fn(&Ev) -> bool) -> usize {
        self.evs[from..]
            .iter()
            .position(pred)
            .map(|i| from + i)
            .unwrap_or_else(|| panic!("no {what} after event #{from}; trace:\n{}", self.text))
    }
}

fn temp_trace(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("e2e-{name}-{}.trace", std::process::id()))
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn the_labs_session_traced_holds_every_event_in_order_and_context() {
    let path = temp_trace("session");
    let d = Daemon::start(&["--trace", path.to_str().unwrap()]);
    let ticks = |n: usize| move |l: &str| l.matches("[timer_handler]").count() >= n;
    let (set1, _) = client(&["s", "1"]);
    d.wait_log("the first expiry", ticks(1));
    let (set3, _) = client(&["s", "3"]);
    let (cancel, _) = client(&["c"]);
    let (alloc, _) = client(&["a", "1"]);
    d.wait_log("the work's end", |l| l.contains("Yawn!"));
    let mut sleeper = Command::new("sleep").arg("1").spawn().unwrap();
    let watched = sleeper.id();
    let (mon, _) = client(&["p", &watched.to_string()]);
    sleeper.wait().unwrap();
    d.wait_log("the dead task", |l| l.contains("is dead"));
    client(&["c"]);
    let log = d.stop();
    assert!(
        !log.contains("allocations were made in softirq context"),
        "tracing allocated in softirq context:\n{log}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let t = Trace {
        evs: parse(&text),
        text: text.clone(),
    };
    let evs = &t.evs;
    for name in [
        "task_newtask",
        "timer_init",
        "timer_start",
        "timer_cancel",
        "timer_expire_entry",
        "timer_expire_exit",
        "irq_handler_entry",
        "irq_handler_exit",
        "softirq_raise",
        "softirq_entry",
        "softirq_exit",
        "workqueue_queue_work",
        "workqueue_activate_work",
        "workqueue_execute_start",
        "workqueue_execute_end",
        "cuse_request",
        "cuse_reply",
        "console",
    ] {
        assert!(evs.iter().any(|e| e.name == name), "no {name}:\n{text}");
    }
    // Every printk line of the log is a console event, in the same order (debug lines too are
    // traced, though the console does not print them).
    let printed: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, m)| m))
        .collect();
    let consoled: Vec<&str> = evs
        .iter()
        .filter(|e| e.name == "console")
        .map(|e| e.fields.as_str())
        .collect();
    let mut rest = consoled.iter();
    for line in &printed {
        assert!(
            rest.any(|c| c == line),
            "the log's `{line}` is not among the console events, in order:\n{text}"
        );
    }
    // Every request (but an INTERRUPT, which has no answer) is answered once, later; requests
    // are read on the transport's threads.
    let requests = evs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.name == "cuse_request" && !e.fields.contains("(INTERRUPT)"));
    for (i, e) in requests {
        assert!(e.comm.starts_with("cuse/") && e.ctx() == '.', "{e:?}");
        let u = e.field("unique").unwrap();
        let replies: Vec<usize> = (0..evs.len())
            .filter(|&j| evs[j].name == "cuse_reply" && evs[j].field("unique") == Some(u))
            .collect();
        assert!(
            replies.len() == 1 && replies[0] > i,
            "request {e:?}: replies {replies:?}"
        );
    }
    // The ioctl of a client: its request (pid = the client), the module's line and `then`
    // on the serving thread, the reply; returns the index of `then`.
    let ioctl = |from: usize, pid: u32, line: &str, then: &str| -> usize {
        let req = t.find(from, &format!("the IOCTL request of {pid}"), |e| {
            e.name == "cuse_request"
                && e.fields.contains("(IOCTL)")
                && e.field("pid") == Some(&pid.to_string())
        });
        let server = evs[req].pid;
        let said = t.find(req, line, |e| e.pid == server && e.fields.ends_with(line));
        let did = t.find(said, then, |e| {
            e.pid == server && e.name == then && e.ctx() == '.'
        });
        let u = evs[req].field("unique").unwrap().to_owned();
        t.find(did, "the reply", |e| {
            e.name == "cuse_reply" && e.field("unique") == Some(&u)
        });
        did
    };
    // The timer's expiry: interrupt (hardirq) -> softirq -> handler, all on the thread the
    // interrupt hit, which the handler's own line names as current. Returns (entry, exit).
    let expiry = |from: usize| -> (usize, usize) {
        let irq = t.find(from, "the timer interrupt", |e| {
            e.name == "irq_handler_entry"
        });
        let x = evs[irq].pid;
        let on_x = |name: &'static str| move |e: &Ev| e.pid == x && e.name == name;
        assert_eq!(evs[irq].ctx(), 'h', "{:?}", evs[irq]);
        let raise = t.find(irq, "softirq_raise", on_x("softirq_raise"));
        assert!(
            evs[raise].ctx() == 'h' && evs[raise].fields == "vec=1 [action=TIMER]",
            "{:?}",
            evs[raise]
        );
        let sirq = t.find(raise, "softirq_entry", on_x("softirq_entry"));
        let entry = t.find(sirq, "timer_expire_entry", on_x("timer_expire_entry"));
        assert_eq!(evs[entry].field("function"), Some("timer_handler"));
        let line = t.find(entry, "the handler's line", |e| {
            e.pid == x && e.fields.starts_with("[timer_handler]")
        });
        assert_eq!(
            evs[line].fields,
            format!("[timer_handler] pid = {x}, comm = {}", evs[line].comm),
            "current in the handler is the interrupted thread"
        );
        let exit = t.find(line, "timer_expire_exit", on_x("timer_expire_exit"));
        let sexit = t.find(exit, "softirq_exit", on_x("softirq_exit"));
        for e in &evs[sirq..=sexit] {
            if e.pid == x {
                assert_eq!(e.ctx(), 's', "softirq context: {e:?}");
            }
        }
        (entry, exit)
    };

    // test s 1: armed in process context, expires ~1 s later in softirq context.
    let armed = ioctl(0, set1, "Command: Set timer", "timer_start");
    assert_eq!(evs[armed].field("function"), Some("timer_handler"));
    let (entry, _) = expiry(armed);
    let late = evs[entry].ts - evs[armed].ts;
    assert!(
        (0.95..3.0).contains(&late),
        "1 s timer expired after {late} s"
    );
    // test s 3; test c: armed, then cancelled from process context before expiring.
    let armed3 = ioctl(entry, set3, "Command: Set timer", "timer_start");
    let cancelled = ioctl(armed3, cancel, "Command: Cancel timer", "timer_cancel");
    assert!(
        !evs[armed3..cancelled]
            .iter()
            .any(|e| e.name == "timer_expire_entry"),
        "the cancelled timer did not expire:\n{text}"
    );
    // test a 1: the handler queues the work (softirq), events/N runs it 5 s (process).
    let armed_a = ioctl(cancelled, alloc, "Command: Allocate memory", "timer_start");
    let (entry_a, exit_a) = expiry(armed_a);
    let queued = t.find(entry_a, "workqueue_queue_work", |e| {
        e.name == "workqueue_queue_work"
    });
    assert!(queued < exit_a, "queued from inside the handler");
    assert_eq!(evs[queued].ctx(), 's');
    assert_eq!(evs[queued].field("function"), Some("work_handler"));
    assert_eq!(evs[queued].field("workqueue"), Some("events"));
    let work = evs[queued].field("struct").unwrap().to_owned();
    let active = t.find(queued, "activate", |e| e.name == "workqueue_activate_work");
    assert_eq!(evs[active].ctx(), 's');
    let start = t.find(active, "execute_start", |e| {
        e.name == "workqueue_execute_start" && e.fields.contains(&work)
    });
    let worker = &evs[start];
    assert!(
        worker.comm.starts_with("events/") && worker.flags == ".....",
        "the work runs on a worker in process context: {worker:?}"
    );
    let yawn = t.find(start, "Yawn", |e| {
        e.pid == worker.pid && e.fields.starts_with("Yawn!")
    });
    let end = t.find(yawn, "execute_end", |e| {
        e.pid == worker.pid && e.name == "workqueue_execute_end"
    });
    let took = evs[end].ts - worker.ts;
    // schedule_timeout(5 * HZ) sleeps 5 s of jiffies: from within a jiffy, up to 4 ms less.
    assert!((4.99..6.5).contains(&took), "the work ran {took} s");
    // test p: the MON timer expires and re-arms itself in softirq context; the dead task.
    let armed_p = ioctl(end, mon, "Command: Monitor pid", "timer_start");
    let (entry_p, exit_p) = expiry(armed_p);
    let rearm = t.find(entry_p, "the re-arming", |e| e.name == "timer_start");
    assert!(
        rearm < exit_p && evs[rearm].ctx() == 's',
        "{:?}",
        evs[rearm]
    );
    let dead = format!("task sleep ({watched}) is dead");
    let died = t.find(entry_p, &dead, |e| e.fields == dead);
    assert_eq!(evs[died].ctx(), 's', "reported from the timer handler");
}

#[test]
#[ignore = "needs /dev/cuse: run scripts/test"]
fn the_kthread_module_traced_shows_its_thread_start_and_stop() {
    let path = temp_trace("kthread");
    let mut d = Daemon::spawn(&["kthread", "--trace", path.to_str().unwrap()]);
    d.wait_log("the thread's line", |l| l.contains("[my_thread_f] Current"));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        d.log()
    );
    assert!(wait_for(Duration::from_secs(1), || path.exists()));
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let t = Trace {
        evs: parse(&text),
        text: text.clone(),
    };
    let new = t.find(0, "task_newtask mykthread0", |e| {
        e.name == "task_newtask" && e.field("comm") == Some("mykthread0")
    });
    let kpid: i32 = t.evs[new].field("pid").unwrap().parse().unwrap();
    let hello = t.find(new, "the thread's line", |e| {
        e.pid == kpid && e.comm == "mykthread0" && e.fields.starts_with("[my_thread_f] Current")
    });
    let exit = t.find(hello, "its exit", |e| {
        e.name == "sched_process_exit" && e.pid == kpid
    });
    // The module's exit wakes the thread and waits for it to end (no kthread_stop: the lab's
    // thread returns by itself), so its exit comes before the module's last line.
    t.find(exit, "the exit line", |e| {
        e.fields == "[kthread_exit] Exit module"
    });
}
