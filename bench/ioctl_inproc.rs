//! The module's side of one ioctl, without CUSE: the `deferred` module's `unlocked_ioctl`
//! called in process, to count what it costs (run it under `strace -f -c` to count syscalls).
//!
//!     cargo run --release --example ioctl_inproc -- [CALLS] [CMD]
//!
//! CALLS (default 100000) calls of CMD (default 0x6b02 = CANCEL, the ioctl bench's command) from
//! one thread, each call timed. Prints one JSON line like the other benches.

#[path = "common/mod.rs"]
mod common;

use common::{now_ns, stats_json};
use deferred::kernel::fs::{File, FileOperations};
use deferred::modules::deferred::{DeferredModule, Options};

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().map_or(100_000, |a| {
        a.parse().unwrap_or_else(|_| {
            eprintln!("usage: ioctl_inproc [CALLS] [CMD]  (e.g. 100000 0x6b02)");
            std::process::exit(2)
        })
    });
    let cmd = args.next().map_or(0x6b02, |a| {
        u32::from_str_radix(a.trim_start_matches("0x"), 16).unwrap_or_else(|_| {
            eprintln!("ioctl_inproc: CMD is a hex number, e.g. 0x6b02");
            std::process::exit(2)
        })
    });
    deferred::kernel::start().expect("runtime start");
    let module = DeferredModule::load(Options::default()).expect("load the deferred module");
    let dev = module.device().clone();
    let file = File {
        fh: 1,
        flags: libc::O_RDWR as u32,
        caller_tid: 0,
    };
    let mut v = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t0 = now_ns();
        let _ = dev.unlocked_ioctl(&file, cmd, 0);
        v.push(now_ns() - t0);
        // Spaced out as the VM client's calls are (one round trip apart), so the console thread
        // goes back to sleep between calls as it does there.
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
    println!(
        "{{\"bench\":\"ioctl_inproc\",\"cmd\":\"{cmd:#x}\",{}}}",
        stats_json("", &mut v)
    );
    dev.shutdown();
}
