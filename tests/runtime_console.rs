//! The printk console (src/kernel/printk.rs, `register_console`): what it prints at which
//! console level, in dmesg's form, in order, a drained batch per write; captures still see all.

mod runtime_common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use deferred::kernel::printk::{self, Level};
use runtime_common::wait_for;

/// How long a condition is waited for before the test fails (far past any scheduling delay, far
/// short of the hour-long gathering).
const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
use deferred::{pr_debug, pr_err, pr_info, pr_notice, pr_warn};

/// A console that records each `write` call separately.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Recorder {
    fn writes(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().concat()).unwrap()
    }
    /// The messages printed, without their timestamps; each line checked to be dmesg's form.
    fn messages(&self) -> Vec<String> {
        self.text()
            .lines()
            .map(|l| {
                let (stamp, msg) = l.split_at(15);
                let b = stamp.as_bytes();
                assert!(
                    b[0] == b'[' && b[6] == b'.' && b[13] == b']' && b[14] == b' ',
                    "not a dmesg line: {l:?}"
                );
                assert!(
                    stamp[1..6].trim_start().bytes().all(|c| c.is_ascii_digit())
                        && stamp[7..13].bytes().all(|c| c.is_ascii_digit()),
                    "not a dmesg timestamp: {l:?}"
                );
                msg.to_string()
            })
            .collect()
    }
}

fn register(max: Option<Level>) -> Recorder {
    printk::flush();
    let r = Recorder::default();
    printk::register_console(Box::new(r.clone()), max);
    r
}

#[test]
fn the_console_prints_its_level_and_above_in_order_as_dmesg_lines() {
    let _g = runtime_common::setup();
    let con = register(Some(Level::Info));
    let cap = printk::capture();
    pr_err!("console: err");
    pr_debug!("console: debug");
    pr_warn!("console: warn");
    pr_notice!("console: notice");
    pr_info!("console: info {}", 42);
    printk::flush();
    assert_eq!(
        con.messages(),
        [
            "console: err",
            "console: warn",
            "console: notice",
            "console: info 42"
        ]
    );
    assert!(
        cap.texts().contains(&"console: debug".to_string()),
        "a capture sees the lines the console does not print"
    );

    let con = register(Some(Level::Warning));
    pr_info!("console: info, not printed");
    pr_warn!("console: warn, printed");
    printk::flush();
    assert_eq!(con.messages(), ["console: warn, printed"]);

    let con = register(None);
    pr_err!("console: err, console off");
    printk::flush();
    assert_eq!(con.writes(), 0);

    let con = register(Some(Level::Debug));
    pr_debug!("console: debug, printed");
    printk::flush();
    assert_eq!(con.messages(), ["console: debug, printed"]);
}

#[test]
fn lines_drained_together_go_out_in_one_write() {
    let _g = runtime_common::setup();
    let con = register(Some(Level::Info));
    {
        // Hold the console while 300 lines gather, as they do between two drains under load.
        let _held = printk::console_lock();
        for i in 0..300 {
            pr_info!("console: batch line {i}");
        }
    }
    printk::flush();
    let want: Vec<String> = (0..300)
        .map(|i| format!("console: batch line {i}"))
        .collect();
    assert_eq!(con.messages(), want);
    assert_eq!(con.writes(), 1, "300 lines drained at once: one write");
}

#[test]
fn a_ring_half_full_cuts_the_consoles_gathering_short() {
    let _g = runtime_common::setup();
    let con = register(Some(Level::Info));
    // The console gathers for an hour after each drain: only the wake-up at half full (1,024 of
    // the ring's 2,048 slots) can bring it back within the test.
    printk::set_console_batch(Some(3_600_000_000_000));
    pr_info!("console: before the stream");
    let before = wait_for(LIMIT, || {
        con.messages()
            .iter()
            .any(|m| m == "console: before the stream")
    });
    // Now it has drained that line and gathers. The 1,024th line pushed fills the ring to half.
    let dropped = printk::dropped();
    for i in 0..1024u32 {
        pr_info!("console: stream {i}");
    }
    let streamed = || {
        con.messages()
            .iter()
            .filter(|m| m.starts_with("console: stream "))
            .count()
    };
    let woke = wait_for(LIMIT, || streamed() == 1024);
    let got = streamed();
    printk::set_console_batch(None);
    printk::flush();
    assert!(before, "the console never printed the first line");
    assert!(
        woke,
        "the console slept on past half full: {got} of 1024 written"
    );
    assert_eq!(printk::dropped(), dropped, "lines dropped");
}

#[test]
fn a_flood_of_lines_goes_out_in_fewer_longer_batches() {
    let _g = runtime_common::setup();
    let con = register(Some(Level::Info));
    let dropped = printk::dropped();
    // A busy device's log: 20 lines every 5 ms (4,000 a second at most; a lone client of the
    // daemon makes thousands), for 100 bursts.
    let start = std::time::Instant::now();
    for burst in 0..100u32 {
        for i in 0..20u32 {
            pr_info!("console: flood {burst} {i}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    printk::flush();
    let want: Vec<String> = (0..100u32)
        .flat_map(|b| (0..20u32).map(move |i| format!("console: flood {b} {i}")))
        .collect();
    assert_eq!(con.messages(), want, "every line, in order");
    assert_eq!(printk::dropped(), dropped, "lines dropped");
    // Gathering 20 ms each time, the console would write about once per 20 ms of the flood;
    // a flood's gatherings grow to 200 ms (20, 40, 80, 160, then 200 ms each).
    let at_base = (elapsed.as_millis() / 20) as usize;
    let writes = con.writes();
    assert!(
        writes * 2 <= at_base,
        "{writes} writes in {elapsed:?} of flood: the gathering did not grow (20 ms: ~{at_base})"
    );
}
