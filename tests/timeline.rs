//! `scripts/timeline`: the lab's session, traced through real CUSE in the VM
//! (tests/data/lab-session.trace, written by `scripts/demo`), drawn as SVG: the lanes, the spans
//! in their contexts, the arrows and the printk labels are where the trace puts them.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const TRACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lab-session.trace");

/// The attributes of every `<TAG ...>` element whose `class` starts with `class`.
fn elements(svg: &str, tag: &str, class: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag} ");
    svg.split(&open)
        .skip(1)
        .filter_map(|rest| {
            let head = &rest[..rest.find('>')?];
            let mut attrs = HashMap::new();
            let mut s = head;
            while let Some(eq) = s.find("=\"") {
                let key = s[..eq].trim().to_owned();
                let rest = &s[eq + 2..];
                let end = rest.find('"')?;
                attrs.insert(key, rest[..end].to_owned());
                s = &rest[end + 1..];
            }
            attrs
                .get("class")
                .is_some_and(|c| c.starts_with(class))
                .then_some(attrs)
        })
        .collect()
}

fn draw(trace: &str, out: &Path, extra: &[&str]) -> String {
    let st = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/timeline"))
        .args(extra)
        .arg(trace)
        .arg(out)
        .status()
        .expect("python3 runs scripts/timeline");
    assert!(st.success(), "scripts/timeline failed: {st}");
    let svg = std::fs::read_to_string(out).unwrap();
    let _ = std::fs::remove_file(out);
    svg
}

fn count(trace: &str, event: &str) -> usize {
    trace
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&format!(": {event}: ")))
        .count()
}

fn f(a: &HashMap<String, String>, k: &str) -> f64 {
    a[k].parse().unwrap()
}

#[test]
fn the_sessions_timeline_has_its_lanes_spans_arrows_and_labels() {
    let trace = std::fs::read_to_string(TRACE).unwrap();
    let out = std::env::temp_dir().join(format!("timeline-{}.svg", std::process::id()));
    let svg = draw(TRACE, &out, &[]);
    let lanes: Vec<String> = elements(&svg, "text", "lane")
        .into_iter()
        .map(|a| a["data-lane"].clone())
        .collect();
    // The main thread first (it created the workers), the transport readers, the worker, and
    // the clients whose requests the trace holds.
    let main = &lanes[0];
    assert!(main.starts_with("deferred-"), "{lanes:?}");
    assert!(lanes.iter().any(|l| l.starts_with("cuse/")), "{lanes:?}");
    assert!(lanes.iter().any(|l| l.starts_with("events/")), "{lanes:?}");
    assert!(
        lanes.iter().any(|l| l.starts_with("client pid ")),
        "{lanes:?}"
    );
    let spans = elements(&svg, "rect", "span");
    let on = |lane: &str, kind: &str| -> Vec<&HashMap<String, String>> {
        spans
            .iter()
            .filter(|a| a["data-lane"] == lane && a["data-kind"] == kind)
            .collect()
    };
    // The timer handler in softirq context on the interrupted thread, after a hardirq there,
    // once per expiry in the trace.
    let handlers = on(main, "handler");
    assert_eq!(handlers.len(), count(&trace, "timer_expire_entry"));
    for h in &handlers {
        assert_eq!(h["class"], "span softirq");
        assert_eq!(h["data-name"], "timer_handler");
    }
    assert_eq!(
        on(main, "hardirq").len(),
        count(&trace, "irq_handler_entry")
    );
    assert!(
        on(main, "hardirq")
            .iter()
            .all(|a| a["class"] == "span hardirq")
    );
    // The work item: process context on events/N, 5 seconds wide.
    let work: Vec<_> = spans.iter().filter(|a| a["data-kind"] == "work").collect();
    assert_eq!(work.len(), 1, "one work item in the session");
    let w = work[0];
    assert!(w["data-lane"].starts_with("events/") && w["class"] == "span process");
    assert_eq!(w["data-name"], "work_handler");
    let secs = f(w, "data-end") - f(w, "data-start");
    assert!((5.0..5.5).contains(&secs), "the work ran {secs} s");
    // Drawn to the axis' scale: its width is 5 s of the time grid.
    let ticks = elements(&svg, "text", "tick");
    let (a, b) = (&ticks[0], &ticks[ticks.len() - 1]);
    let px_per_s = (f(b, "x") - f(a, "x")) / (f(b, "data-t") - f(a, "data-t"));
    let drawn = f(w, "width") / px_per_s;
    assert!(
        (drawn - secs).abs() < 0.01,
        "drawn {drawn} s wide for {secs} s"
    );
    // Requests served on the transport's threads, each with its client waiting meanwhile.
    let requests: Vec<_> = spans
        .iter()
        .filter(|a| a["data-kind"] == "request")
        .collect();
    assert_eq!(requests.len(), count(&trace, "cuse_request"));
    assert!(requests.iter().all(|a| a["data-lane"].starts_with("cuse/")));
    assert!(spans.iter().any(|a| a["data-kind"] == "client"));
    // Arrows: expiry -> the work it queued, timers armed -> their expiry, request -> reply.
    let arrows = elements(&svg, "path", "arrow");
    let kinds = |k: &str| {
        arrows
            .iter()
            .filter(|a| a["class"] == format!("arrow {k}"))
            .count()
    };
    assert_eq!(kinds("work"), 1);
    assert!(
        kinds("timer") >= 3,
        "s 1, a 1 and p each arm a timer from a request"
    );
    assert!(kinds("request") >= 1 && kinds("reply") >= 1);
    // The close-up of the first expiry: the interrupt, then the softirq holding the handler.
    let zoom = elements(&svg, "rect", "zoom");
    let z = |kind: &str| zoom.iter().find(|a| a["data-kind"] == kind).unwrap();
    assert_eq!(z("hardirq")["class"], "zoom hardirq");
    assert_eq!(z("handler")["class"], "zoom softirq");
    assert!(f(z("hardirq"), "x") < f(z("softirq"), "x"));
    assert!(f(z("softirq"), "x") <= f(z("handler"), "x"));
    // printk lines as labels, coloured by the context that printed them.
    let labels = elements(&svg, "text", "printk");
    assert_eq!(labels.len(), count(&trace, "console"));
    assert!(
        labels
            .iter()
            .filter(|a| a["class"] == "printk softirq")
            .count()
            >= handlers.len()
    );
    assert!(svg.contains("Yawn! I&#x27;ve been sleeping for 5 seconds."));
}

#[test]
fn a_window_keeps_only_what_it_covers() {
    let trace = std::fs::read_to_string(TRACE).unwrap();
    // The work item's window (exercise 5): from the ALLOC request to the work's end.
    let ts = |needle: &str| -> f64 {
        let l = trace.lines().find(|l| l.contains(needle)).unwrap();
        let (_, rest) = l.split_once("] ").unwrap();
        rest[5..]
            .trim_start()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (from, to) = (
        ts("Command: Allocate memory") - 0.2,
        ts("workqueue_execute_end") + 0.2,
    );
    let out = std::env::temp_dir().join(format!("timeline-w-{}.svg", std::process::id()));
    let svg = draw(
        TRACE,
        &out,
        &["--from", &from.to_string(), "--to", &to.to_string()],
    );
    let spans = elements(&svg, "rect", "span");
    assert!(spans.iter().any(|a| a["data-kind"] == "work"));
    for a in &spans {
        assert!(
            f(a, "data-end") >= from && f(a, "data-start") <= to,
            "{a:?}"
        );
    }
    let handlers = spans.iter().filter(|a| a["data-kind"] == "handler").count();
    assert_eq!(
        handlers, 1,
        "only the ALLOC timer's expiry is in the window"
    );
}

#[test]
fn not_a_trace_is_one_clear_line() {
    let bad = std::env::temp_dir().join(format!("timeline-bad-{}.trace", std::process::id()));
    std::fs::write(&bad, "hello\n").unwrap();
    let o = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/timeline"))
        .arg(&bad)
        .arg("/dev/null.svg")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no trace events"), "{err}");
}
