//! What one trace point costs: off (one relaxed load) and on (the event recorded into the ring).
//!
//!     cargo run --release --example trace_cost -- [ROUNDS]
//!
//! Each round times 4096 calls of a trace point (`timer_start`: three fields and the handler's
//! name; `console`: a 40-byte printk line) with its event off, then with it on; the ring is drained between rounds
//! (untimed), so no call finds it full. Prints one JSON line: nanoseconds per call, the median
//! over ROUNDS (default 200) rounds.

#[path = "common/mod.rs"]
mod common;

use common::{now_ns, numeric_args};
use deferred::kernel::trace;

const BATCH: usize = 4096;

fn per_call(rounds: u64, on: bool, f: impl Fn(usize)) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            trace::set_enabled(if on { trace::ALL } else { 0 });
            let t0 = now_ns();
            for i in 0..BATCH {
                f(std::hint::black_box(i));
            }
            let dt = now_ns() - t0;
            trace::set_enabled(0);
            trace::drain(|_| {});
            dt as f64 / BATCH as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = numeric_args("usage: trace_cost [ROUNDS]  (e.g. 200)");
    let rounds = (*args.first().unwrap_or(&200)).max(1);
    fn name() -> &'static str {
        "deferred::modules::deferred::timer_handler"
    }
    let timer_start = |i: usize| trace::timer_start(&i as *const usize, name, i as u64);
    let console = |_| trace::console(b"[timer_handler] pid = 107, comm = deferred");
    let r = [
        per_call(rounds, false, timer_start),
        per_call(rounds, true, timer_start),
        per_call(rounds, false, console),
        per_call(rounds, true, console),
    ];
    assert_eq!(trace::lost(), 0, "the ring never filled");
    println!(
        "{{\"bench\":\"trace_cost\",\"rounds\":{rounds},\"batch\":{BATCH},\"timer_start_off_ns\":{:.2},\"timer_start_on_ns\":{:.1},\"console_off_ns\":{:.2},\"console_on_ns\":{:.1}}}",
        r[0], r[1], r[2], r[3]
    );
}
