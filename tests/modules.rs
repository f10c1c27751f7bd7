//! The lab's modules in-process, driven through their file operations (no CUSE): every message,
//! every command's effect, the errnos, the teardown, and no allocation in softirq context.

use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deferred::kernel::alloc::{CountingAllocator, softirq_allocations};
use deferred::kernel::error::Error;
use deferred::kernel::fs::{File, FileOperations};
use deferred::kernel::jiffies::{HZ, jiffies, time_before};
use deferred::kernel::printk::{self, Capture};
use deferred::modules::abi::{
    MY_IOCTL_TIMER_ALLOC, MY_IOCTL_TIMER_CANCEL, MY_IOCTL_TIMER_MON, MY_IOCTL_TIMER_SET,
    MY_IOCTL_TIMER_SET_32,
};
use deferred::modules::deferred::{
    DeferredModule, Options, TIMER_TYPE_ALLOC, TIMER_TYPE_MON, TIMER_TYPE_NONE, TIMER_TYPE_SET,
};
use deferred::modules::{Module, kthread, timer};

#[path = "common/wait.rs"]
mod wait;
#[path = "common/witness.rs"]
mod witness;
use wait::wait_for;
use witness::wait_past;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// The modules share the printk log: one test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    deferred::kernel::start().unwrap();
    // Lines of earlier tests still in the ring go to their captures, not to this test's.
    printk::flush();
    g
}

const FILE: File = File {
    fh: 1,
    flags: 0,
    caller_tid: 0,
};

/// Waits (bounded) until the capture holds `n` lines containing `needle`; returns those lines.
fn wait_lines(cap: &Capture, needle: &str, n: usize, within: Duration) -> Vec<printk::Line> {
    let matching = || -> Vec<printk::Line> {
        cap.lines()
            .into_iter()
            .filter(|l| l.text.contains(needle))
            .collect()
    };
    assert!(
        wait_for(within, || matching().len() >= n),
        "waited {within:?} for {n} x {needle:?}, got {}: {:#?}",
        matching().len(),
        cap.texts()
    );
    matching()
}

fn count(cap: &Capture, needle: &str) -> usize {
    cap.texts().iter().filter(|t| t.contains(needle)).count()
}

fn load_deferred(opts: Options) -> DeferredModule {
    DeferredModule::load(opts).unwrap()
}

/// rmmod: exit, then the module's memory goes.
fn unload(mut m: impl Module) {
    m.exit();
}

fn sleeper() -> Child {
    Command::new("sleep").arg("60").spawn().unwrap()
}

#[test]
fn load_open_ioctl_release_unload_print_the_labs_lines_in_order() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    assert_eq!(dev.flag(), TIMER_TYPE_NONE);
    dev.open(&FILE).unwrap();
    assert_eq!(dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    dev.release(&FILE);
    unload(m);
    assert_eq!(
        cap.texts(),
        [
            "[deferred_init] Init module",
            "[deferred_open] Device opened",
            "[deferred_ioctl] Command: Cancel timer",
            "[deferred_release] Device released",
            "[deferred_exit] Exit module",
        ]
    );
    assert_eq!(softirq_allocations(), 0);
}

#[test]
fn set_fires_once_after_n_seconds_printing_the_idle_task() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    let t0 = Instant::now();
    assert_eq!(dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_SET, 1), Ok(0));
    assert_eq!(dev.flag(), TIMER_TYPE_SET);
    assert!(dev.timer_pending());
    let lines = wait_lines(&cap, "[timer_handler]", 1, Duration::from_secs(10));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(990),
        "fired early: {waited:?}"
    );
    // The interrupt lands on the idle CPU, as in the lab's transcript.
    assert_eq!(lines[0].text, "[timer_handler] pid = 0, comm = swapper/0");
    // One-shot: no second expiry (not re-armed, and a second later nothing came).
    assert!(!dev.timer_pending());
    wait_past(dev.expires().wrapping_add(HZ));
    assert_eq!(count(&cap, "[timer_handler]"), 1);
    unload(m);
    assert_eq!(softirq_allocations(), 0);
}

#[test]
fn cancel_stops_a_pending_timer_and_the_last_set_wins() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_SET, 1).unwrap();
    let cancelled = dev.expires();
    assert_eq!(dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    assert!(!dev.timer_pending());
    // Cancel of an idle timer: still 0, flag unchanged.
    assert_eq!(dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
    assert_eq!(dev.flag(), TIMER_TYPE_SET);
    wait_past(cancelled);
    assert_eq!(count(&cap, "[timer_handler]"), 0, "a cancelled timer fired");

    // Re-arming moves the timer: 3 s, then 1 s -> one expiry, the second SET's (the handler's
    // debug line says which expiry fired, and when).
    let level = log::max_level();
    log::set_max_level(log::LevelFilter::Debug);
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_SET, 3).unwrap();
    let first = dev.expires();
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_SET_32, 1).unwrap();
    let second = dev.expires();
    assert!(time_before(second, first), "{second} not before {first}");
    let fired = wait_lines(
        &cap,
        "[timer_handler] expires = ",
        1,
        Duration::from_secs(10),
    );
    log::set_max_level(level);
    let (expires, now) = fired[0]
        .text
        .strip_prefix("[timer_handler] expires = ")
        .and_then(|r| r.split_once(", jiffies = "))
        .unwrap_or_else(|| panic!("{}", fired[0].text));
    assert_eq!(expires.parse::<u64>(), Ok(second), "the first SET won");
    let now: u64 = now.parse().unwrap();
    assert!(!time_before(now, second), "fired at {now}, before {second}");
    wait_past(first);
    assert_eq!(count(&cap, "[timer_handler] pid = "), 1);
    unload(m);
}

#[test]
fn alloc_runs_alloc_io_on_a_worker_five_seconds_after_the_timer() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_ALLOC, 1).unwrap();
    assert_eq!(dev.flag(), TIMER_TYPE_ALLOC);
    let fired = wait_lines(&cap, "[timer_handler]", 1, Duration::from_secs(10));
    let yawn = wait_lines(
        &cap,
        "Yawn! I've been sleeping for 5 seconds.",
        1,
        Duration::from_secs(15),
    );
    let slept = yawn[0].ts_ns - fired[0].ts_ns;
    assert!(slept >= 4_990_000_000, "alloc_io slept only {slept} ns");
    assert!(!cap.contains("BUG:"), "{:#?}", cap.texts());
    unload(m);
    assert_eq!(softirq_allocations(), 0);
}

#[test]
fn unload_waits_for_a_running_alloc_work() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_ALLOC, 0).unwrap();
    wait_lines(&cap, "[timer_handler]", 1, Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(5), || dev.work_running()),
        "the work never started"
    );
    let t0 = Instant::now();
    unload(m); // flush_scheduled_work
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "exit did not wait for the work"
    );
    assert!(cap.contains("Yawn! I've been sleeping for 5 seconds."));
    let texts = cap.texts();
    let exit_at = texts
        .iter()
        .position(|t| t == "[deferred_exit] Exit module");
    assert!(exit_at.is_some());
}

#[test]
fn alloc_io_direct_reports_the_kernels_bugs_and_the_device_keeps_serving() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options {
        alloc_io_direct: true,
    });
    let dev = m.device().clone();
    let t0 = Instant::now();
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_ALLOC, 0).unwrap();
    wait_lines(
        &cap,
        "BUG: sleeping function called from invalid context",
        1,
        Duration::from_secs(5),
    );
    wait_lines(
        &cap,
        "BUG: scheduling while atomic",
        1,
        Duration::from_secs(5),
    );
    wait_lines(&cap, "Yawn!", 1, Duration::from_secs(5));
    // It did not sleep 5 s in the signal handler.
    assert!(t0.elapsed() < Duration::from_secs(4));
    // Still serving.
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_SET, 0).unwrap();
    wait_lines(&cap, "[timer_handler]", 2, Duration::from_secs(5));
    unload(m);
    assert_eq!(softirq_allocations(), 0);
}

#[test]
fn mon_ticks_every_second_and_reports_each_dead_process_once() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    let mut child = sleeper();
    let pid = child.id();
    assert_eq!(
        dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_MON, pid.into()),
        Ok(0)
    );
    assert_eq!(dev.flag(), TIMER_TYPE_MON);
    assert_eq!(dev.monitored(), 1);
    wait_lines(&cap, "[timer_handler]", 2, Duration::from_secs(10));
    assert!(!cap.contains("is dead"));
    child.kill().unwrap(); // a zombie until reaped below: it counts as dead
    let dead = format!("task sleep ({pid}) is dead");
    wait_lines(&cap, &dead, 1, Duration::from_secs(5));
    child.wait().unwrap();
    assert_eq!(dev.monitored(), 0);
    // Keeps ticking (the lab re-arms unconditionally) and reports it only once.
    let ticks = count(&cap, "[timer_handler]");
    wait_lines(&cap, "[timer_handler]", ticks + 2, Duration::from_secs(10));
    assert_eq!(count(&cap, &dead), 1);
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_CANCEL, 0).unwrap();
    unload(m);
    assert_eq!(softirq_allocations(), 0);
}

#[test]
fn mon_reports_newest_first_and_twice_added_pids_twice() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    let mut kids: Vec<Child> = (0..3).map(|_| sleeper()).collect();
    // Zombies already: all are found dead by the same tick.
    for k in &mut kids {
        k.kill().unwrap();
    }
    let pids: Vec<u32> = kids.iter().map(|k| k.id()).collect();
    for &p in &pids {
        dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_MON, p.into())
            .unwrap();
    }
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_MON, pids[0].into())
        .unwrap();
    let dead = wait_lines(&cap, "is dead", 4, Duration::from_secs(10));
    let order: Vec<String> = dead.iter().map(|l| l.text.clone()).collect();
    let line = |p: u32| format!("task sleep ({p}) is dead");
    assert_eq!(
        order,
        [line(pids[0]), line(pids[2]), line(pids[1]), line(pids[0])]
    );
    for k in &mut kids {
        k.wait().unwrap();
    }
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_CANCEL, 0).unwrap();
    unload(m);
    assert_eq!(softirq_allocations(), 0);
}

#[test]
fn mon_of_a_missing_pid_is_esrch_and_changes_nothing() {
    let _g = serial();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_SET, 100).unwrap();
    for arg in [0u64, u64::MAX, 99_999_999, u32::MAX as u64, 1 << 40] {
        assert_eq!(
            dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_MON, arg),
            Err(Error::ESRCH),
            "arg {arg}"
        );
    }
    assert_eq!(dev.flag(), TIMER_TYPE_SET);
    assert_eq!(dev.monitored(), 0);
    unload(m);
}

#[test]
fn unknown_commands_are_enotty_and_read_write_einval() {
    let _g = serial();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    // 0x80086b04 is the lab's old `'k', 4` read as ACCT (_IOR); 0x6b05 does not exist.
    for cmd in [0u32, 0x6b05, 0x8008_6b04, 0x4008_6c01, 0xffff_ffff] {
        assert_eq!(
            dev.unlocked_ioctl(&FILE, cmd, 3),
            Err(Error::ENOTTY),
            "{cmd:#x}"
        );
    }
    assert_eq!(dev.read(&FILE, 10, 0), Err(Error::EINVAL));
    assert_eq!(dev.write(&FILE, b"x", 0), Err(Error::EINVAL));
    assert_eq!(dev.flag(), TIMER_TYPE_NONE);
    assert!(!dev.timer_pending());
    unload(m);
}

#[test]
fn huge_timeouts_never_overflow() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    // n * HZ wraps to a time before now: due at once, as the kernel's signed comparison says.
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_SET, u64::MAX)
        .unwrap();
    wait_lines(&cap, "[timer_handler]", 1, Duration::from_secs(5));
    // Far in the future: pending, no panic, cancellable.
    for n in [1u64 << 40, (1 << 61) - 1, u32::MAX as u64] {
        dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_ALLOC, n).unwrap();
        assert!(dev.timer_pending(), "n = {n}");
    }
    wait_past(jiffies());
    assert_eq!(count(&cap, "[timer_handler]"), 1);
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_CANCEL, 0).unwrap();
    unload(m);
}

#[test]
fn unload_with_a_pending_timer_and_watched_processes_is_clean() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    let mut kids: Vec<Child> = (0..50).map(|_| sleeper()).collect();
    for k in &kids {
        dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_MON, k.id().into())
            .unwrap();
    }
    assert_eq!(dev.monitored(), 50);
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_SET, 1).unwrap();
    let armed = dev.expires();
    unload(m);
    assert_eq!(dev.monitored(), 0);
    assert!(!dev.timer_pending());
    wait_past(armed);
    assert_eq!(
        count(&cap, "[timer_handler]"),
        0,
        "a timer fired after unload"
    );
    for k in &mut kids {
        k.kill().unwrap();
        k.wait().unwrap();
    }
}

#[test]
fn timer_module_counts_seconds_periodically_or_once() {
    let _g = serial();
    let cap = printk::capture();
    let mut m = timer::MODULE.load(&timer::MODULE.defaults()).unwrap();
    let lines = wait_lines(
        &cap,
        "[timer_handler] nseconds =",
        3,
        Duration::from_secs(10),
    );
    m.exit();
    let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(
        texts[..3],
        [
            "[timer_handler] nseconds = 1",
            "[timer_handler] nseconds = 2",
            "[timer_handler] nseconds = 3"
        ]
    );
    let gap = lines[2].ts_ns - lines[1].ts_ns;
    assert!(
        (900_000_000..1_600_000_000).contains(&gap),
        "period {gap} ns"
    );
    let all = cap.texts();
    assert_eq!(all.first().unwrap(), "[timer_init] Init module");
    assert_eq!(all.last().unwrap(), "[timer_exit] Exit module");

    let cap = printk::capture();
    let once = timer::MODULE.parse_params(&["once=1"]).unwrap();
    let mut m = timer::MODULE.load(&once).unwrap();
    wait_lines(&cap, "nseconds = 1", 1, Duration::from_secs(10));
    // A periodic timer would have fired again a second later.
    wait_past(jiffies().wrapping_add(HZ));
    assert_eq!(count(&cap, "nseconds ="), 1);
    m.exit();
    assert_eq!(softirq_allocations(), 0);
}

#[test]
fn kthread_module_runs_mykthread0_and_waits_for_it_at_unload() {
    let _g = serial();
    let cap = printk::capture();
    let reports = deferred::kernel::bug::reports();
    let m = kthread::MODULE.load(&kthread::MODULE.defaults()).unwrap();
    let line = wait_lines(
        &cap,
        "[my_thread_f] Current process id is",
        1,
        Duration::from_secs(5),
    );
    let tid: i32 = line[0]
        .text
        .strip_prefix("[my_thread_f] Current process id is ")
        .and_then(|r| r.strip_suffix(" (mykthread0)"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{:?}", line[0].text));
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap();
    assert_eq!(comm.trim(), "mykthread0");
    // rmmod: the exit waits for the thread, which the runtime reaps (no kthread_stop).
    kthread::MODULE.unload(m);
    assert_eq!(
        deferred::kernel::bug::reports(),
        reports,
        "{:#?}",
        cap.texts()
    );
    let texts = cap.texts();
    let exiting = texts
        .iter()
        .position(|t| t == "[my_thread_f] Exiting")
        .unwrap();
    let exit = texts
        .iter()
        .position(|t| t == "[kthread_exit] Exit module")
        .unwrap();
    assert!(exiting < exit, "{texts:#?}");
    assert_eq!(texts[0], "[kthread_init] Init module");
    // The thread is gone: joined, so it has exited; its /proc entry may linger a moment after
    // the join returns (the exit wakes the joiner before the task is released), as a kernel
    // thread's does after kthread_stop.
    assert!(
        wait_for(Duration::from_secs(5), || {
            !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
        }),
        "mykthread0 outlived its module"
    );
}

#[test]
fn a_burst_of_exits_is_reported_in_one_tick() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    // 300 zombies (exited, not reaped): all dead by the first tick, which comes 1 s after the
    // last MON (each MON re-arms the timer).
    let mut kids: Vec<Child> = (0..300).map(|_| sleeper()).collect();
    for k in &mut kids {
        k.kill().unwrap();
    }
    for k in &kids {
        dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_MON, k.id().into())
            .unwrap();
    }
    wait_lines(&cap, "is dead", 300, Duration::from_secs(15));
    let texts = cap.texts();
    let last_dead = texts.iter().rposition(|t| t.contains("is dead")).unwrap();
    let ticks_before = texts[..last_dead]
        .iter()
        .filter(|t| t.starts_with("[timer_handler]"))
        .count();
    assert_eq!(ticks_before, 1, "the burst took {ticks_before} ticks");
    assert_eq!(count(&cap, "is dead"), 300);
    assert_eq!(dev.monitored(), 0);
    for k in &mut kids {
        k.wait().unwrap();
    }
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_CANCEL, 0).unwrap();
    unload(m);
    assert_eq!(softirq_allocations(), 0);
}

/// Takes every descriptor the process may still open (with the soft `RLIMIT_NOFILE` lowered to
/// a few above those open now); dropping it closes them and puts the limit back.
struct NoDescriptorsLeft {
    held: Vec<std::fs::File>,
    limits: (u64, u64),
}

impl NoDescriptorsLeft {
    fn take() -> NoDescriptorsLeft {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let limits = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        setrlimit(Resource::RLIMIT_NOFILE, open + 16, limits.1).unwrap();
        let mut held = Vec::with_capacity(64);
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => held.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("opening /dev/null: {e}"),
            }
        }
        NoDescriptorsLeft { held, limits }
    }
}

impl Drop for NoDescriptorsLeft {
    fn drop(&mut self) {
        self.held.clear();
        let (soft, hard) = self.limits;
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
            .unwrap();
    }
}

#[test]
fn mon_out_of_descriptors_is_not_death() {
    let _g = serial();
    let cap = printk::capture();
    let m = load_deferred(Options::default());
    let dev = m.device().clone();
    // A live thread (not a process): MON checks it by opening its `stat` each tick.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        tid_tx.send(deferred::kernel::sched::gettid()).unwrap();
        let _ = rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    assert_eq!(
        dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_MON, (tid as u32).into()),
        Ok(0)
    );
    let ticks = count(&cap, "[timer_handler]");
    {
        let _all = NoDescriptorsLeft::take();
        // A tick with no descriptor to open the thread's `stat` with: unknown, not dead.
        let seen = count(&cap, "[timer_handler]");
        wait_lines(&cap, "[timer_handler]", seen + 1, Duration::from_secs(10));
        assert!(!cap.contains("is dead"), "{:#?}", cap.texts());
    }
    assert!(count(&cap, "[timer_handler]") > ticks);
    assert_eq!(dev.monitored(), 1);
    // Descriptors back, the thread ends: reported dead, once.
    drop(tx);
    thread.join().unwrap();
    let dead = format!("({tid}) is dead");
    wait_lines(&cap, &dead, 1, Duration::from_secs(10));
    let seen = count(&cap, "[timer_handler]");
    wait_lines(&cap, "[timer_handler]", seen + 1, Duration::from_secs(10));
    assert_eq!(count(&cap, "is dead"), 1);
    assert_eq!(dev.monitored(), 0);
    dev.unlocked_ioctl(&FILE, MY_IOCTL_TIMER_CANCEL, 0).unwrap();
    unload(m);
    assert_eq!(softirq_allocations(), 0);
}
