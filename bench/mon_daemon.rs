//! Monitoring at scale through the real module: the `deferred` module's MON, in process.
//!
//!     cargo run --release --example mon_daemon -- N [TICKS] [EXITS_PER_TICK] [BURST]
//!
//! Forks N children that sleep, loads the lab's `deferred` module on the runtime (as the daemon
//! does, without CUSE: the file operations are called directly), issues MON for every child
//! (timing each ioctl), then for TICKS (default 10) of the module's 1-second ticks SIGKILLs
//! about EXITS_PER_TICK (default 10) random children per tick, and at the end BURST (default 200)
//! at once.
//!
//! Measured:
//! - time per tick in signal context: the timer interrupt runs on the runtime's `swapper/0`
//!   thread, which does nothing else; a "spinner" thread reads CLOCK_MONOTONIC and swapper/0's
//!   CPU-time clock in a loop, and the CPU time swapper/0 used in the first episode of readings
//!   in which it grew that ends after the tick's `[timer_handler]` printk timestamp is the
//!   tick's cost (the kernel updates it when swapper/0 goes back to sleep; signal delivery +
//!   handler; time swapper/0 spent preempted is not CPU time, so a busy machine does not
//!   inflate it);
//! - detection delay: the `task <comm> (<pid>) is dead` printk timestamp minus the exit (seen
//!   through a pidfd of our own), and how many exits were reported by the first tick after them;
//!   `detect_*` for the exits spread over the run, `burst_detect_*` for the burst;
//! - VmRSS of this process before and after the N MON ioctls (the module's per-task cost);
//! - the MON ioctl itself (process context: pidfd_open, /proc reads, epoll_ctl).
//!
//! Prints one JSON line.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Rng, fork_sleepers, kill_all, now_ns, stats_json, status_kb};
use deferred::kernel::fs::{File, FileOperations};
use deferred::kernel::{jiffies, printk, softirq};
use deferred::modules::deferred::{DeferredModule, Options};

#[global_allocator]
static ALLOC: deferred::kernel::alloc::CountingAllocator =
    deferred::kernel::alloc::CountingAllocator;

const MON: u32 = 0x0000_6b04;

fn usage() -> ! {
    eprintln!(
        "usage: mon_daemon N [TICKS] [EXITS_PER_TICK] [BURST]  (e.g. mon_daemon 10000 10 10 200)"
    );
    std::process::exit(2);
}

/// CPU time thread `tid` of this process has used (its CPU-time clock: the kernel's
/// `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`): it counts the signal handler that runs on it,
/// not the time the thread was preempted.
fn thread_cpu_ns(tid: i32) -> u64 {
    let clock = (!(tid as u32) << 3 | 6) as libc::clockid_t;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into; the clock id names a thread of this process.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// SIGKILLs `pid` and returns CLOCK_MONOTONIC when it has exited (polled on a pidfd of ours).
fn kill_and_wait(pid: i32) -> u64 {
    // SAFETY: pidfd_open/kill/poll/close on our own unreaped child and our own descriptor.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        libc::kill(pid, libc::SIGKILL);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        while fd >= 0 && libc::poll(&mut pfd, 1, 1000) < 0 {}
        let t = now_ns();
        libc::close(fd);
        t
    }
}

fn main() {
    let nums: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or_else(|_| usage()))
        .collect();
    if nums.is_empty() || nums.len() > 4 || nums[0] == 0 {
        usage();
    }
    let n = nums[0] as usize;
    let ticks = *nums.get(1).unwrap_or(&10);
    let per_tick = *nums.get(2).unwrap_or(&10);
    let burst = (*nums.get(3).unwrap_or(&200) as usize).min(n / 2);

    // Children first, while we are single-threaded.
    let pids = fork_sleepers(n, "mon_daemon");

    deferred::kernel::start().expect("runtime start");
    let cap = printk::capture();
    let module = DeferredModule::load(Options::default()).expect("load the deferred module");
    let dev = module.device().clone();
    let cpu = softirq::cpu_thread().expect("the interrupt thread");

    // The spinner: watches swapper/0's CPU time. An episode is a run of readings in which it
    // grew (swapper/0 ran a tick): (wall time before it, wall time at its end, CPU time used).
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("spinner".into())
            .spawn(move || {
                let mut episodes: Vec<(u64, u64, u64)> = Vec::with_capacity(1 << 16);
                let mut last = now_ns();
                let mut last_cpu = thread_cpu_ns(cpu);
                let mut open: Option<(u64, u64)> = None;
                while !stop.load(Ordering::Relaxed) {
                    let c = thread_cpu_ns(cpu);
                    let t = now_ns();
                    if c != last_cpu {
                        open.get_or_insert((last, last_cpu));
                    } else if let Some((t0, c0)) = open.take()
                        && episodes.len() < episodes.capacity()
                    {
                        episodes.push((t0, t, c - c0));
                    }
                    last = t;
                    last_cpu = c;
                }
                episodes
            })
            .expect("spawn the spinner")
    };

    let file = File {
        fh: 1,
        flags: libc::O_RDWR as u32,
        caller_tid: 0,
    };
    let rss_before = status_kb(0, "VmRSS");
    let mut mon_ns = Vec::with_capacity(n);
    for &pid in &pids {
        let t0 = now_ns();
        let r = dev.unlocked_ioctl(&file, MON, pid as u64);
        mon_ns.push(now_ns() - t0);
        if let Err(e) = r {
            eprintln!("mon_daemon: MON {pid}: {e} (ulimit -n must exceed N)");
            kill_all(&pids);
            std::process::exit(1);
        }
    }
    let rss_after = status_kb(0, "VmRSS");
    let monitored = dev.monitored();

    // Exits over TICKS seconds, then a burst.
    let mut rng = Rng::new(now_ns());
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    let mut exited: HashMap<i32, u64> = HashMap::new();
    let spread = (ticks * per_tick) as usize;
    let mut next = 0;
    let run_ns = ticks * 1_000_000_000;
    let gap = run_ns / (spread as u64 + 1);
    let start = now_ns();
    while next < spread.min(n - burst) && now_ns() - start < run_ns {
        std::thread::sleep(Duration::from_nanos(rng.range(0, 2 * gap.max(1))));
        let pid = pids[order[next]];
        exited.insert(pid, kill_and_wait(pid));
        next += 1;
    }
    // Burst: all at once (signals first, then the exits).
    let burst_pids: Vec<i32> = order[next..next + burst].iter().map(|&i| pids[i]).collect();
    let fds: Vec<i32> = burst_pids
        .iter()
        // SAFETY: pidfd_open on our own children.
        .map(|&p| unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) as i32 })
        .collect();
    for &p in &burst_pids {
        // SAFETY: kill our own child.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    for (&p, &fd) in burst_pids.iter().zip(&fds) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll and close our own descriptor.
        unsafe {
            while fd >= 0 && libc::poll(&mut pfd, 1, 1000) < 0 {}
            exited.insert(p, now_ns());
            libc::close(fd);
        }
    }
    std::thread::sleep(Duration::from_millis(3_100));
    stop.store(true, Ordering::Relaxed);
    let episodes = spinner.join().expect("spinner");

    // What the module printed.
    let start_ns = jiffies::start_ns();
    let lines = cap.lines();
    let mut tick_ts: Vec<u64> = Vec::new();
    let mut other_ticks = 0;
    let mut dead_ts: HashMap<i32, u64> = HashMap::new();
    for l in &lines {
        if l.text.starts_with("[timer_handler]") {
            if l.text.ends_with("comm = swapper/0") {
                tick_ts.push(l.ts_ns + start_ns);
            } else {
                // Run elsewhere (ksoftirqd/0, a local_bh_enable): its cost cannot be read;
                // counted as unmatched.
                other_ticks += 1;
                eprintln!("mon_daemon: a tick ran on another thread: {}", l.text);
            }
        } else if let Some(rest) = l.text.strip_prefix("task ")
            && l.text.ends_with(" is dead")
            && let Some(open) = rest.rfind('(')
            && let Some(pid) = rest[open + 1..]
                .split(')')
                .next()
                .and_then(|p| p.parse::<i32>().ok())
        {
            dead_ts.insert(pid, l.ts_ns + start_ns);
        }
    }
    tick_ts.sort_unstable();
    // Each tick's cost: swapper/0's episode around its [timer_handler] line; exits per tick: the
    // "is dead" lines before the next tick.
    let mut deads: Vec<u64> = dead_ts.values().copied().collect();
    deads.sort_unstable();
    let mut cost = Vec::new();
    let mut idle_cost = Vec::new();
    let mut busy_cost = Vec::new();
    let mut burst_tick_us = 0.0f64;
    let mut max_exits_in_tick = 0;
    let mut unmatched = other_ticks;
    for (i, &ts) in tick_ts.iter().enumerate() {
        let end = tick_ts.get(i + 1).copied().unwrap_or(u64::MAX);
        let exits = deads.iter().filter(|&&d| d >= ts && d < end).count();
        // A running thread's CPU time is brought up to date when it stops running: the tick's
        // episode is the first that ends after its printk line (within the tick period).
        let g = episodes
            .iter()
            .find(|&&(_, b, _)| ts <= b && b < ts.saturating_add(500_000_000));
        match g {
            Some(&(_, _, c)) => {
                cost.push(c);
                if exits == 0 {
                    idle_cost.push(c);
                } else {
                    busy_cost.push(c);
                }
                if exits > max_exits_in_tick {
                    max_exits_in_tick = exits;
                    burst_tick_us = c as f64 / 1000.0;
                }
            }
            None => unmatched += 1,
        }
    }
    let mut detect = Vec::new();
    let mut burst_detect = Vec::new();
    let (mut within, mut missed, mut max_ticks) = (0, 0, 0);
    let mut burst_late = 0;
    for (&pid, &ex) in &exited {
        match dead_ts.get(&pid) {
            Some(&d) => {
                if burst_pids.contains(&pid) {
                    burst_detect.push(d.saturating_sub(ex));
                } else {
                    detect.push(d.saturating_sub(ex));
                }
                let t = tick_ts.iter().filter(|&&s| s > ex && s <= d).count();
                within += usize::from(t <= 1);
                if t > 1 && burst_pids.contains(&pid) {
                    burst_late += 1;
                }
                max_ticks = max_ticks.max(t);
            }
            None => missed += 1,
        }
    }
    println!(
        "{{\"bench\":\"mon\",\"mode\":\"daemon\",\"watched\":{n},\"monitored\":{monitored},\"ticks\":{},\"period_ms\":1000,\"killed\":{},\"detected\":{},\"missed\":{missed},\"within_one_tick\":{within},\"max_ticks_to_detect\":{max_ticks},\"burst\":{burst},\"burst_seen_late\":{burst_late},\"max_exits_in_tick\":{max_exits_in_tick},\"burst_tick_us\":{burst_tick_us:.1},\"ticks_unmatched\":{unmatched},\"rss_kb_before_refs\":{rss_before},\"rss_kb\":{rss_after},\"softirq_allocations\":{},{},{},{},{},{},{}}}",
        tick_ts.len(),
        exited.len(),
        dead_ts.len(),
        deferred::kernel::alloc::softirq_allocations(),
        stats_json("tick_", &mut cost),
        stats_json("idle_tick_", &mut idle_cost),
        stats_json("busy_tick_", &mut busy_cost),
        stats_json("detect_", &mut detect),
        stats_json("burst_detect_", &mut burst_detect),
        stats_json("mon_ioctl_", &mut mon_ns),
    );
    dev.shutdown();
    drop(module);
    kill_all(&pids);
}
