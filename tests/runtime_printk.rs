//! printk: lines from the signal handler arrive in order, as dmesg lines; a full ring drops
//! lines and says how many.

mod runtime_common;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use deferred::kernel::jiffies::jiffies;
use deferred::kernel::printk::{self, SLOTS};
use deferred::kernel::timer::{Timer, TimerList};
use runtime_common::{assert_no_softirq_allocations, setup, wait_for};

fn chatty(t: &Timer<AtomicU64>) {
    let c = deferred::kernel::sched::current();
    for i in 1..=5 {
        deferred::pr_info!("[chatty] line {} from pid {} ({})", i, c.pid(), c.comm());
    }
    t.data().fetch_add(1, SeqCst);
}

fn is_dmesg(line: &str) -> bool {
    // "[SSSSS.UUUUUU] " with the seconds right-aligned in 5 columns.
    let b = line.as_bytes();
    b.len() > 15
        && b[0] == b'['
        && b[1..6].iter().all(|c| c.is_ascii_digit() || *c == b' ')
        && b[5].is_ascii_digit()
        && b[6] == b'.'
        && b[7..13].iter().all(u8::is_ascii_digit)
        && &b[13..15] == b"] "
}

#[test]
fn lines_printed_in_the_signal_handler_arrive_in_order_as_dmesg_lines() {
    let _g = setup();
    let cap = printk::capture();
    deferred::pr_info!("[printk_test] before");
    let t = TimerList::new(chatty, AtomicU64::new(0));
    t.mod_timer(jiffies() + 1);
    assert!(wait_for(Duration::from_secs(3), || t.data().load(SeqCst) == 1));
    deferred::pr_info!("[printk_test] after");
    let lines: Vec<_> = cap
        .lines()
        .into_iter()
        .filter(|l| l.text.starts_with("[chatty]") || l.text.starts_with("[printk_test]"))
        .collect();
    let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts.len(), 7, "{texts:?}");
    assert_eq!(texts[0], "[printk_test] before");
    for (i, t) in texts[1..6].iter().enumerate() {
        assert!(
            t.starts_with(&format!("[chatty] line {} from pid ", i + 1)),
            "{t}"
        );
    }
    assert_eq!(texts[6], "[printk_test] after");
    for w in lines.windows(2) {
        assert!(w[0].ts_ns <= w[1].ts_ns, "timestamps go forward");
    }
    for l in &lines {
        let d = l.dmesg();
        assert!(is_dmesg(&d), "{d:?}");
        assert!(d.ends_with(&l.text));
    }
    assert_eq!(
        printk::Line {
            level: printk::Level::Info,
            ts_ns: 3_825_922_123,
            text: "x".into()
        }
        .dmesg(),
        "[    3.825922] x"
    );
    assert_no_softirq_allocations();
}

#[test]
fn long_lines_are_truncated_not_allocated() {
    let _g = setup();
    let cap = printk::capture();
    let long = "é".repeat(500);
    deferred::pr_info!("[trunc] {}", long);
    let line = cap
        .texts()
        .into_iter()
        .find(|l| l.starts_with("[trunc] "))
        .unwrap();
    assert!(line.len() <= printk::LINE_MAX && line.len() > printk::LINE_MAX - 4);
}

#[test]
fn a_full_ring_drops_lines_and_reports_how_many() {
    let _g = setup();
    printk::flush();
    let cap = printk::capture();
    let before = printk::dropped();
    {
        let _console = printk::console_lock();
        for i in 0..SLOTS + 100 {
            deferred::pr_info!("[flood] {}", i);
        }
        assert!(
            printk::dropped() - before >= 100,
            "lines beyond the ring are counted"
        );
    }
    let lost = printk::dropped() - before;
    let texts = cap.texts();
    let want = format!("** {lost} printk messages dropped **");
    assert!(texts.contains(&want), "no {want:?}");
    assert!(
        texts.iter().any(|l| l == "[flood] 0"),
        "the first lines are kept"
    );
    let kept = texts.iter().filter(|l| l.starts_with("[flood] ")).count() as u64;
    assert_eq!(
        kept + lost,
        SLOTS as u64 + 100,
        "every line is printed or counted"
    );
}
