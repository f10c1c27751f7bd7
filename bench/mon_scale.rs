//! Monitoring at scale, at the level of the mechanism MON uses: `TaskRef` (a pidfd per watched
//! process) in one `TaskWatch` (epoll set), checked from a real timer signal handler.
//!
//!     cargo run --release --example mon_scale -- N [TICKS] [PERIOD_MS] [EXITS_PER_TICK] [--naive]
//!
//! Forks N children that sleep (pause), takes a reference on each, and arms a periodic POSIX
//! timer (CLOCK_MONOTONIC, a real-time signal) every PERIOD_MS (default 250) for TICKS ticks
//! (default 20). The handler (signal context) drains `TaskWatch::ready`, drops the references of
//! the processes that exited (closing the pidfd: async-signal-safe, no free) and times itself.
//! Meanwhile the main thread SIGKILLs about EXITS_PER_TICK (default 10) random children per tick at
//! random moments, noting when. `--naive`: the handler calls `TaskRef::is_dead` on every reference
//! instead (one poll(2) per watched process per tick), for comparison.
//!
//! Prints one JSON line: the tick cost in signal context (`tick_*_us`), the cost of ticks that
//! found no exit (`idle_tick_*`), detection delay = tick that saw the exit - the exit (seen through a pidfd of
//! the main thread's own; `kill_to_exit_*` is how long SIGKILL took)
//! (`detect_*_us`), how many exits were seen by the first tick after the exit
//! (`within_one_tick`, of `killed`), missed exits, and the process's VmRSS holding N references.

#[path = "common/mod.rs"]
mod common;

use std::cell::UnsafeCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Rng, fork_sleepers, kill_all, now_ns, stats_json, status_kb};
use deferred::kernel::task::{TaskRef, TaskWatch};

struct Shared {
    watch: TaskWatch,
    /// One reference per child, indexed by token. Only the handler touches it while the timer
    /// runs; the main thread only before the timer exists and after it is deleted.
    refs: UnsafeCell<Vec<Option<TaskRef>>>,
    naive: bool,
    detected_at: Box<[AtomicU64]>,
    tick_cost: Box<[AtomicU64]>,
    tick_found: Box<[AtomicU64]>,
    tick_start: Box<[AtomicU64]>,
    ticks: AtomicUsize,
}

// SAFETY: `refs` is accessed by one context at a time (see its field comment); the rest are atomics
// or immutable after setup.
unsafe impl Sync for Shared {}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The timer's handler: signal ("softirq") context. No allocation, no lock, no panic paths taken.
extern "C" fn on_tick(_sig: libc::c_int) {
    let t0 = now_ns();
    let Some(sh) = SHARED.get() else { return };
    // SAFETY: only this handler touches `refs` while the timer is armed, and the signal is not
    // re-entered (the kernel blocks it during its own handler).
    let refs = unsafe { &mut *sh.refs.get() };
    let mut found = 0u64;
    let mut mark = |tok: usize, refs: &mut Vec<Option<TaskRef>>| {
        if let Some(slot) = refs.get_mut(tok) {
            // Dropping a TaskRef closes its pidfd (which leaves the epoll set); it frees nothing.
            if slot.take().is_some() {
                sh.detected_at[tok].store(t0, Ordering::Relaxed);
                found += 1;
            }
        }
    };
    if sh.naive {
        for tok in 0..refs.len() {
            if refs[tok].as_ref().is_some_and(TaskRef::is_dead) {
                mark(tok, refs);
            }
        }
    } else {
        let mut out = [0u64; 64];
        loop {
            let n = sh.watch.ready(&mut out);
            for &tok in &out[..n] {
                mark(tok as usize, refs);
            }
            if n < out.len() {
                break;
            }
        }
    }
    let cost = now_ns() - t0;
    let i = sh.ticks.fetch_add(1, Ordering::Relaxed);
    if i < sh.tick_cost.len() {
        sh.tick_cost[i].store(cost, Ordering::Relaxed);
        sh.tick_found[i].store(found, Ordering::Relaxed);
        sh.tick_start[i].store(t0, Ordering::Relaxed);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: mon_scale N [TICKS] [PERIOD_MS] [EXITS_PER_TICK] [--naive]  (e.g. mon_scale 10000 20 250 10)"
    );
    std::process::exit(2);
}

fn main() {
    let mut naive = false;
    let mut nums = Vec::new();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--naive" => naive = true,
            _ => nums.push(a.parse::<u64>().unwrap_or_else(|_| usage())),
        }
    }
    if nums.is_empty() || nums.len() > 4 || nums[0] == 0 {
        usage();
    }
    let n = nums[0] as usize;
    let ticks = *nums.get(1).unwrap_or(&20) as usize;
    let period_ms = *nums.get(2).unwrap_or(&250);
    let exits_per_tick = *nums.get(3).unwrap_or(&10);
    let exits = (ticks as u64 * exits_per_tick).min(n as u64) as usize;

    // Children that sleep until killed; they die with us (PDEATHSIG) if we die first.
    let t_fork = now_ns();
    let pids = fork_sleepers(n, "mon_scale");
    let fork_ms = (now_ns() - t_fork) / 1_000_000;

    let rss_before = status_kb(0, "VmRSS");
    let watch = TaskWatch::new().expect("epoll_create1");
    let t_get = now_ns();
    let mut refs = Vec::with_capacity(n);
    for (tok, &pid) in pids.iter().enumerate() {
        let r = TaskRef::get(pid).unwrap_or_else(|e| {
            eprintln!("mon_scale: get_task({pid}): {e} (ulimit -n must exceed N)");
            kill_all(&pids);
            std::process::exit(1);
        });
        watch.add(&r, tok as u64).expect("epoll_ctl");
        refs.push(Some(r));
    }
    let get_us_per_ref = (now_ns() - t_get) / 1000 / n as u64;
    let rss_after = status_kb(0, "VmRSS");

    let zero = |len: usize| (0..len).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
    let max_ticks = ticks + 8;
    let _ = SHARED.set(Shared {
        watch,
        refs: UnsafeCell::new(refs),
        naive,
        detected_at: zero(n),
        tick_cost: zero(max_ticks),
        tick_found: zero(max_ticks),
        tick_start: zero(max_ticks),
        ticks: AtomicUsize::new(0),
    });
    let sh = SHARED.get().unwrap();

    // SAFETY: plain libc calls to install a handler and create/arm a timer; all structs are zeroed
    // and filled as the man pages say.
    let (timer, sig) = unsafe {
        let sig = libc::SIGRTMIN() + 2;
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_tick as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
        let mut sev: libc::sigevent = std::mem::zeroed();
        sev.sigev_notify = libc::SIGEV_SIGNAL;
        sev.sigev_signo = sig;
        let mut timer: libc::timer_t = std::mem::zeroed();
        assert_eq!(
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer),
            0
        );
        let period = libc::timespec {
            tv_sec: (period_ms / 1000) as i64,
            tv_nsec: ((period_ms % 1000) * 1_000_000) as i64,
        };
        let its = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        libc::timer_settime(timer, 0, &its, std::ptr::null_mut());
        (timer, sig)
    };
    let _ = sig;

    // Kill `exits` random children at random moments over the run (mean: exits_per_tick a tick).
    let mut rng = Rng::new(now_ns());
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    let mut exited_at = vec![0u64; n];
    let mut kill_to_exit = Vec::new();
    let run_ns = ticks as u64 * period_ms * 1_000_000;
    let gap_ns = run_ns.checked_div(exits as u64 + 1).unwrap_or(run_ns);
    let start = now_ns();
    for &tok in &order[..exits] {
        std::thread::sleep(Duration::from_nanos(rng.range(0, 2 * gap_ns.max(1))));
        if now_ns() - start > run_ns.saturating_sub(2 * period_ms * 1_000_000) {
            break;
        }
        // When did it really exit? A pidfd of our own, polled until readable, tells (the
        // handler's pidfd is not touched). The delay counts from the exit, not from the kill.
        // SAFETY: pidfd_open/kill/poll/close on our own unreaped child and our own descriptor.
        unsafe {
            let fd = libc::syscall(libc::SYS_pidfd_open, pids[tok], 0) as i32;
            let t_kill = now_ns();
            libc::kill(pids[tok], libc::SIGKILL);
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            while fd >= 0 && libc::poll(&mut pfd, 1, 1000) < 0 {}
            exited_at[tok] = now_ns();
            kill_to_exit.push(exited_at[tok] - t_kill);
            libc::close(fd);
        }
    }
    while sh.ticks.load(Ordering::Relaxed) < ticks {
        std::thread::sleep(Duration::from_millis(period_ms.min(50)));
    }
    // SAFETY: the timer was created above and is deleted once; after this no new tick starts.
    unsafe { libc::timer_delete(timer) };
    std::thread::sleep(Duration::from_millis(10));

    let nticks = sh.ticks.load(Ordering::Relaxed).min(max_ticks);
    let mut cost = Vec::new();
    let mut idle_cost = Vec::new();
    let mut found = 0;
    for i in 0..nticks {
        let c = sh.tick_cost[i].load(Ordering::Relaxed);
        let f = sh.tick_found[i].load(Ordering::Relaxed);
        found += f;
        cost.push(c);
        if f == 0 {
            idle_cost.push(c);
        }
    }
    // Ticks that started after the exit up to the one that saw it: 1 = seen at the first tick.
    let starts: Vec<u64> = (0..nticks)
        .map(|i| sh.tick_start[i].load(Ordering::Relaxed))
        .collect();
    let mut detect = Vec::new();
    let mut missed = 0;
    let mut within_one_tick = 0;
    let mut max_ticks_to_detect = 0;
    for (tok, &exited) in exited_at.iter().enumerate() {
        if exited == 0 {
            continue;
        }
        match sh.detected_at[tok].load(Ordering::Relaxed) {
            0 => missed += 1,
            d => {
                detect.push(d.saturating_sub(exited));
                let t = starts.iter().filter(|&&s| s > exited && s <= d).count();
                within_one_tick += usize::from(t <= 1);
                max_ticks_to_detect = max_ticks_to_detect.max(t);
            }
        }
    }
    let killed = detect.len() + missed;
    println!(
        "{{\"bench\":\"mon\",\"mode\":\"{}\",\"watched\":{n},\"ticks\":{nticks},\"period_ms\":{period_ms},\"killed\":{killed},\"detected\":{found},\"missed\":{missed},\"within_one_tick\":{within_one_tick},\"max_ticks_to_detect\":{max_ticks_to_detect},\"fork_ms\":{fork_ms},\"get_us_per_ref\":{get_us_per_ref},\"rss_kb_before_refs\":{rss_before},\"rss_kb\":{rss_after},{},{},{},{}}}",
        if naive { "poll-each" } else { "epoll" },
        stats_json("tick_", &mut cost),
        stats_json("idle_tick_", &mut idle_cost),
        stats_json("detect_", &mut detect),
        stats_json("kill_to_exit_", &mut kill_to_exit),
    );
    kill_all(&pids);
}
