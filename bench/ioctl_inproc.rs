//! The module's side of one ioctl, without CUSE: the `deferred` module's `unlocked_ioctl`
//! called in process, to count what it costs (run it under `strace -f -c` to count syscalls).
//!
//!     cargo run --release --example ioctl_inproc -- [CALLS] [CMD] [PACE_US]
//!
//! CALLS (default 100000) calls of CMD (default 0x6b02 = CANCEL, the ioctl bench's command) from
//! one thread, each call timed with the runtime's own clock (`kernel::clock::local_clock_mono`:
//! the TSC where a `clock_gettime` is a system call, as in the two-vCPU VM, so the timing adds
//! no system call to what it measures). Logs as the daemon does (`deferred::logging`, to
//! stderr: send it to a file; `RUST_LOG=warn` turns the module's lines off). Prints one JSON
//! line like the other benches, with the CPU time the console thread spent per call (formatting
//! and writing the module's line; the caller's part is in the call's own latency).

#[path = "common/mod.rs"]
mod common;

use common::stats_json;
use deferred::kernel::clock::local_clock_mono as now_ns;
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
    deferred::logging::init(0);
    deferred::kernel::start().expect("runtime start");
    let module = DeferredModule::load(Options::default()).expect("load the deferred module");
    let dev = module.device().clone();
    let file = File {
        fh: 1,
        flags: libc::O_RDWR as u32,
        caller_tid: 0,
    };
    // Between calls: sleep 50 us (the console goes back to sleep between calls, as with one VM
    // client), or with PACE_US busy-wait that long (a steady stream of calls, as under load).
    let spin_us: Option<u64> = args.next().map(|a| {
        a.parse().unwrap_or_else(|_| {
            eprintln!("ioctl_inproc: PACE_US is a number of microseconds, e.g. 20");
            std::process::exit(2)
        })
    });
    let pace = || match spin_us {
        None => std::thread::sleep(std::time::Duration::from_micros(50)),
        Some(us) => {
            let until = now_ns() + us * 1000;
            while now_ns() < until {
                std::hint::spin_loop();
            }
        }
    };
    deferred::kernel::printk::flush();
    let c0 = console_cpu_ns();
    let mut v = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t0 = now_ns();
        let _ = dev.unlocked_ioctl(&file, cmd, 0);
        v.push(now_ns() - t0);
        pace();
    }
    deferred::kernel::printk::flush();
    let console = (console_cpu_ns() - c0) as f64 / calls as f64;
    println!(
        "{{\"bench\":\"ioctl_inproc\",\"cmd\":\"{cmd:#x}\",\"console_cpu_us_per_call\":{:.3},{}}}",
        console / 1000.0,
        stats_json("", &mut v)
    );
    dev.shutdown();
}

/// CPU time the console thread (`printk`) has had so far (`/proc/self/task/*/schedstat`).
fn console_cpu_ns() -> u64 {
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == "printk" {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            return s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}
