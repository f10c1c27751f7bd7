//! Softirqs: the timer interrupt, bottom-half processing, `local_bh_disable`, `ksoftirqd/0`.
//!
//! # The model
//! The "CPU" is the whole process. Its only interrupt is one POSIX timer
//! (`timer_create(CLOCK_MONOTONIC)`) that delivers a real-time signal chosen at start from
//! `SIGRTMIN..=SIGRTMAX` to one thread, the CPU's idle task `swapper/0` (`SIGEV_THREAD_ID`).
//! That thread does nothing but wait for the signal, so the interrupt always lands on an idle
//! CPU, as on the lab's idle machine: `current` in a timer handler is `swapper/0`, pid 0. The
//! timer is armed one-shot, absolute, for the earliest pending `timer_list` expiry (see
//! [`crate::kernel::timer`]); with nothing pending it is disarmed, so an idle runtime gets no
//! signal at all (tickless).
//!
//! The signal handler is the hard interrupt: it raises `TIMER_SOFTIRQ` and, as the kernel's
//! `irq_exit()`, runs pending softirqs in priority order (`HI` first, `RCU` last) unless bottom
//! halves are disabled. Processing stops after `MAX_SOFTIRQ_TIME` (2 ms) or
//! `MAX_SOFTIRQ_RESTART` (10) rounds and the rest goes to the `ksoftirqd/0` thread, exactly the
//! kernel's budget (`kernel/softirq.c`).
//!
//! Why a thread of its own: the tail of the timer's lateness is the time the woken thread
//! waits for a host CPU (see docs/performance.md). A process-directed signal goes to whichever
//! thread the kernel picks, possibly one that is runnable but not running (a busy transport
//! reader preempted by another process), and is taken only when that thread next runs. A
//! thread that only ever sleeps is woken by each signal, the shape `cyclictest -x` measures.
//!
//! # Bottom halves
//! Softirq processing is serialised like one CPU, and `local_bh_disable()` disables it for the
//! whole CPU, as on a uniprocessor kernel: both live in one atomic word, `BH`, holding the
//! number of process-context threads inside a bottom-half-disabled section and a `RUNNING` bit.
//! Softirqs start (on `swapper/0`, `ksoftirqd/0`, or a thread in `local_bh_enable`) only when
//! the word is 0; the first level of `local_bh_disable()` on a thread counts itself in and, if
//! softirqs are running on another thread right then, waits for them to finish (the kernel's
//! PREEMPT_RT `local_bh_disable` waits the same way for the CPU's softirq lock). So a thread
//! holding a `spin_lock_bh` lock is never overlapped by a timer or tasklet. The interrupt that
//! comes meanwhile leaves its softirq pending and marks it deferred; the last
//! `local_bh_enable()` of the CPU runs it, on its own thread, as the kernel's does. Unlike a
//! uniprocessor, several threads can be inside such sections at once: while a softirq is
//! deferred, new sections wait for it (as a writer-preferring lock), so overlapping sections
//! delay a timer by at most the longest of them instead of starving it.
//!
//! `local_irq_save` disables interrupts for the calling thread, and the two nest as in the
//! kernel: a per-thread depth says whether interrupts are disabled (`irqs_disabled()`). On
//! `swapper/0`, the one thread the timer signal is directed at, it blocks the signal too (and
//! the signal is unblocked only when no level holds it); on any other thread the interrupt
//! never comes anyway, so blocking would change nothing but cost two system calls, and the depth
//! alone is the state. `local_bh_enable` with interrupts disabled prints the kernel's
//! `WARN_ON_ONCE(in_hardirq() || irqs_disabled())` and leaves interrupts to `local_irq_restore`.
//!
//! # Ground rules (shared with signal context)
//! - `PENDING`: bit mask of raised softirqs, atomic; set by `raise_softirq*`, taken (swap to 0)
//!   only by the `RUNNING` holder.
//! - `BH`: `RUNNING` (one thread runs softirq actions), `DEFERRED` (an attempt found bottom
//!   halves disabled: no new section starts until softirqs ran), `WAITERS` (a
//!   `local_bh_disable` sleeps on the word until `RUNNING` or `DEFERRED` clears) and the count
//!   of bh-disabled threads. `RUNNING` is only taken with the count at 0, and clears
//!   `DEFERRED`; `DEFERRED` is only set while the count is above 0, so the thread that brings
//!   it to 0 sees it. Whoever drops `RUNNING` or the count to 0 re-checks `PENDING` after it
//!   (SeqCst), so no raise is lost; dropping `RUNNING` wakes the waiters. The word's algorithm
//!   lives in [`crate::kernel::sync::bh`], whose loom models check it with this use of it.
//! - The signal is thread-directed at `swapper/0`, which only waits for it: the handler never
//!   interrupts a thread in the middle of the runtime's own code. A stray process-directed copy
//!   (someone's `kill`) taken by another thread is forwarded to `swapper/0`.
//! - `ACTIONS`: written by `open_softirq` (process context, before raising), read in the handler.
//! - Nothing here allocates, takes a std lock, or logs; the handler saves and restores errno.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::kernel::error::{Error, Result};
use crate::kernel::jiffies;
use crate::kernel::sched::{
    self, HARDIRQ_MASK, HARDIRQ_OFFSET, NMI_MASK, SOFTIRQ_DISABLE_OFFSET, SOFTIRQ_MASK,
    SOFTIRQ_OFFSET,
};
use crate::kernel::sync::bh::BhWord;
use crate::kernel::trace;
use crate::sys::futex;

/// The softirq vectors, highest priority first (the kernel's enum, `include/linux/interrupt.h`).
#[repr(usize)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Softirq {
    /// `HI_SOFTIRQ`: high-priority tasklets.
    Hi = 0,
    /// `TIMER_SOFTIRQ`: `timer_list` timers.
    Timer,
    /// `NET_TX_SOFTIRQ` (unused here).
    NetTx,
    /// `NET_RX_SOFTIRQ` (unused here).
    NetRx,
    /// `BLOCK_SOFTIRQ` (unused here).
    Block,
    /// `IRQ_POLL_SOFTIRQ` (unused here).
    IrqPoll,
    /// `TASKLET_SOFTIRQ`: tasklets.
    Tasklet,
    /// `SCHED_SOFTIRQ` (unused here).
    Sched,
    /// `HRTIMER_SOFTIRQ` (unused here).
    Hrtimer,
    /// `RCU_SOFTIRQ` (unused here).
    Rcu,
}

/// `NR_SOFTIRQS`.
pub const NR_SOFTIRQS: usize = 10;

/// The kernel's names (`softirq_to_name`).
pub const SOFTIRQ_NAMES: [&str; NR_SOFTIRQS] = [
    "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU",
];

/// `MAX_SOFTIRQ_TIME`: 2 ms of softirq processing per interrupt, then ksoftirqd.
pub const MAX_SOFTIRQ_TIME_NS: u64 = 2_000_000;
/// `MAX_SOFTIRQ_RESTART`: at most 10 rounds per interrupt, then ksoftirqd.
pub const MAX_SOFTIRQ_RESTART: u32 = 10;

static PENDING: AtomicU32 = AtomicU32::new(0);
/// The CPU's softirq state: `RUNNING`, `WAITERS`, `DEFERRED`, the bh-disabled thread count
/// ([`BhWord`], model-checked there).
static BH: BhWord = BhWord::new();
/// The thread id of `swapper/0`, the thread the timer signal is directed at (0 before start).
static CPU_TID: AtomicI32 = AtomicI32::new(0);
static ACTIONS: [AtomicUsize; NR_SOFTIRQS] = [const { AtomicUsize::new(0) }; NR_SOFTIRQS];
static RUN_COUNTS: [AtomicU64; NR_SOFTIRQS] = [const { AtomicU64::new(0) }; NR_SOFTIRQS];

/// The timer signal's number (0 until the runtime starts).
static TIMER_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The POSIX timer (a `timer_t`, stored as an address; valid once `TIMER_SIGNAL` is set).
static POSIX_TIMER: AtomicUsize = AtomicUsize::new(0);
/// Handler entries (timer interrupts taken).
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// CLOCK_MONOTONIC at the last handler entry (for latency breakdowns).
static LAST_INTERRUPT_NS: AtomicU64 = AtomicU64::new(0);
/// POSIX timer arm/disarm calls.
static ARMS: AtomicU64 = AtomicU64::new(0);

static KSOFTIRQD_WAKE: AtomicU32 = AtomicU32::new(0);
static KSOFTIRQD_WAKEUPS: AtomicU64 = AtomicU64::new(0);
static STARTED: Mutex<bool> = Mutex::new(false);

thread_local! {
    /// `local_irq_save` levels in effect on this thread (the kernel's "irqs disabled").
    static IRQ_DISABLE_DEPTH: AtomicU32 = const { AtomicU32::new(0) };
}

/// `WARN_ON_ONCE` of `__local_bh_enable_ip` already fired.
static BH_ENABLE_IRQS_OFF_WARNED: AtomicBool = AtomicBool::new(false);

/// `in_irq()` / `in_hardirq()`: inside the interrupt proper (the handler, before softirqs run).
pub fn in_irq() -> bool {
    sched::preempt_count() & HARDIRQ_MASK != 0
}

/// `in_hardirq()`.
pub fn in_hardirq() -> bool {
    in_irq()
}

/// `in_interrupt()`: in hard or soft interrupt context, or with bottom halves disabled.
pub fn in_interrupt() -> bool {
    sched::preempt_count() & (HARDIRQ_MASK | SOFTIRQ_MASK | NMI_MASK) != 0
}

/// `in_softirq()`: serving a softirq or bottom halves disabled.
pub fn in_softirq() -> bool {
    sched::softirq_count() != 0
}

/// `in_serving_softirq()`: running a softirq action (timer, tasklet) right now.
pub fn in_serving_softirq() -> bool {
    sched::softirq_count() & SOFTIRQ_OFFSET != 0
}

/// `open_softirq(nr, action)`: install the action of a softirq vector.
pub fn open_softirq(nr: Softirq, action: fn()) {
    ACTIONS[nr as usize].store(action as usize, Ordering::Release);
}

/// The pending mask (`local_softirq_pending()`).
pub fn local_softirq_pending() -> u32 {
    PENDING.load(Ordering::SeqCst)
}

/// `raise_softirq_irqoff`: mark `nr` pending without waking anyone (interrupt context).
pub fn raise_softirq_irqoff(nr: Softirq) {
    trace::softirq_raise(nr as usize);
    PENDING.fetch_or(1 << nr as usize, Ordering::SeqCst);
}

/// `raise_softirq(nr)`: mark `nr` pending. From process context with bottom halves enabled it
/// wakes `ksoftirqd/0` so the softirq runs soon without waiting for a timer signal; with
/// bottom halves disabled it runs at the last `local_bh_enable()`; in softirq context the
/// running loop picks it up. Any context.
pub fn raise_softirq(nr: Softirq) {
    raise_softirq_irqoff(nr);
    if !in_interrupt() {
        wakeup_softirqd();
    }
}

/// Times each softirq vector has run.
pub fn softirq_runs(nr: Softirq) -> u64 {
    RUN_COUNTS[nr as usize].load(Ordering::Relaxed)
}

/// Timer interrupts taken so far (signal handler entries).
pub fn timer_interrupts() -> u64 {
    INTERRUPTS.load(Ordering::Relaxed)
}

/// CLOCK_MONOTONIC (ns) at the entry of the last timer interrupt's handler: what the kernel's
/// delivery took ends here, what the runtime does starts (0 before the first).
pub fn last_interrupt_ns() -> u64 {
    LAST_INTERRUPT_NS.load(Ordering::Relaxed)
}

/// Times ksoftirqd/0 was woken.
pub fn ksoftirqd_wakeups() -> u64 {
    KSOFTIRQD_WAKEUPS.load(Ordering::Relaxed)
}

/// The real-time signal the runtime uses (None before `start`).
pub fn timer_signal() -> Option<i32> {
    match TIMER_SIGNAL.load(Ordering::Acquire) {
        0 => None,
        s => Some(s),
    }
}

/// `wakeup_softirqd()`: async-signal-safe (atomic + futex wake).
pub fn wakeup_softirqd() {
    KSOFTIRQD_WAKEUPS.fetch_add(1, Ordering::Relaxed);
    KSOFTIRQD_WAKE.fetch_add(1, Ordering::SeqCst);
    futex::wake(&KSOFTIRQD_WAKE, 1);
}

fn sigset_of(sig: i32) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to pass to sigemptyset, which initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; `sig` is a valid signal number (from SIGRTMIN..).
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    set
}

fn sigmask(how: i32) -> bool {
    let sig = TIMER_SIGNAL.load(Ordering::Acquire);
    if sig == 0 {
        return false;
    }
    let set = sigset_of(sig);
    // SAFETY: a zeroed sigset_t is a valid out-parameter.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid set pointers; pthread_sigmask is async-signal-safe.
    unsafe { libc::pthread_sigmask(how, &set, &mut old) };
    // SAFETY: `old` was filled in by pthread_sigmask.
    unsafe { libc::sigismember(&old, sig) == 1 }
}

/// Block the timer signal on this thread (raw; prefer [`local_irq_save`]). Returns whether it
/// was already blocked.
pub fn block_timer_signal() -> bool {
    sigmask(libc::SIG_BLOCK)
}

/// Unblock the timer signal on this thread (raw; prefer [`local_irq_restore`]).
pub fn unblock_timer_signal() {
    sigmask(libc::SIG_UNBLOCK);
}

/// The saved interrupt state of [`local_irq_save`]: must the restore unblock the timer signal
/// (this save blocked it: on `swapper/0`, where it was not blocked before)?
#[derive(Clone, Copy, Debug)]
#[must_use = "give it back to local_irq_restore"]
pub struct IrqFlags {
    unblock: bool,
}

/// `local_irq_save()`: keep the timer interrupt off this thread, returning the previous state.
/// Nests. Async-signal-safe. The interrupt only ever comes to `swapper/0` (the signal is
/// thread-directed; a stray process-directed copy taken elsewhere is only forwarded there), so
/// the signal is blocked there and nowhere else: on other threads this changes what
/// [`irqs_disabled`] says and nothing else, without a system call.
pub fn local_irq_save() -> IrqFlags {
    let unblock = sched::is_idle_task() && !block_timer_signal();
    IRQ_DISABLE_DEPTH.with(|d| d.fetch_add(1, Ordering::Relaxed));
    IrqFlags { unblock }
}

/// `local_irq_restore(flags)`: put back the state `local_irq_save` returned.
pub fn local_irq_restore(flags: IrqFlags) {
    let outer = IRQ_DISABLE_DEPTH.with(|d| d.fetch_sub(1, Ordering::Relaxed)) > 1;
    if flags.unblock && !outer {
        unblock_timer_signal();
    }
    // Otherwise interrupts stay as they were: disabled by an outer local_irq_save or by the
    // signal's own delivery (in the handler), or never blocked (not swapper/0).
}

/// `irqs_disabled()`: are interrupts disabled on this thread, in the kernel's sense: inside
/// `local_irq_save` (or the timer signal's handler proper)? Bottom halves disabled is not
/// "interrupts disabled". Async-signal-safe.
pub fn irqs_disabled() -> bool {
    in_hardirq() || IRQ_DISABLE_DEPTH.with(|d| d.load(Ordering::Relaxed)) != 0
}

/// `__do_softirq()`: run pending softirqs, within the budget, unless another thread runs them
/// or bottom halves are disabled (then whoever holds them runs these later). Never re-entered
/// on a thread: the signal only interrupts `swapper/0`, which runs nothing else.
fn do_softirq_core() {
    if PENDING.load(Ordering::SeqCst) == 0 && !BH.deferred() {
        return;
    }
    if !BH.try_run() {
        // Another thread is serving softirqs (it re-checks PENDING before it stops), or a
        // thread has bottom halves disabled (its last local_bh_enable runs them).
        return;
    }
    sched::preempt_count_add(SOFTIRQ_OFFSET);
    let start = jiffies::monotonic_ns();
    let mut restart = MAX_SOFTIRQ_RESTART;
    loop {
        let mut pending = PENDING.swap(0, Ordering::SeqCst);
        while pending != 0 {
            let nr = pending.trailing_zeros() as usize;
            pending &= !(1 << nr);
            RUN_COUNTS[nr].fetch_add(1, Ordering::Relaxed);
            let action = ACTIONS[nr].load(Ordering::Acquire);
            if action != 0 {
                // SAFETY: ACTIONS only ever holds 0 or a `fn()` stored by open_softirq.
                let f: fn() = unsafe { std::mem::transmute::<usize, fn()>(action) };
                trace::softirq_entry(nr);
                crate::kernel::panic::softirq_call(
                    crate::kernel::panic::Kind::Softirq,
                    nr,
                    None,
                    f,
                );
                trace::softirq_exit(nr);
            }
        }
        if PENDING.load(Ordering::SeqCst) != 0 {
            restart -= 1;
            if restart > 0 && jiffies::monotonic_ns() - start < MAX_SOFTIRQ_TIME_NS {
                continue;
            }
            wakeup_softirqd();
        }
        break;
    }
    sched::preempt_count_sub(SOFTIRQ_OFFSET);
    BH.end_run();
    // A raise that lost the race for RUNNING after our last look leaves its bit to us.
    if PENDING.load(Ordering::SeqCst) != 0 {
        wakeup_softirqd();
    }
}

/// `do_softirq()` from process context: run pending softirqs now on this thread. Does nothing
/// in interrupt context or while bottom halves are disabled somewhere.
pub fn do_softirq() {
    if in_interrupt() || PENDING.load(Ordering::SeqCst) == 0 {
        return;
    }
    do_softirq_core();
}

/// Threads inside a bottom-half-disabled section right now (the CPU's bh-disable count).
pub fn bh_disabled_threads() -> u32 {
    BH.count()
}

/// `local_bh_disable()`: disable softirqs (nests). The first level on a thread disables them
/// for the whole CPU; it first waits while they run on another thread, or while softirqs that
/// an open section deferred have not run yet (so that sections overlapping on several threads
/// cannot hold them off for ever). From then on no timer or tasklet runs until the matching
/// `local_bh_enable()`. Any context (nesting inside a softirq is allowed).
pub fn local_bh_disable() {
    if sched::softirq_count() == 0 {
        BH.disable();
    }
    sched::preempt_count_add(SOFTIRQ_DISABLE_OFFSET);
}

/// `local_bh_enable()`: undo one `local_bh_disable()`. When the last one on this thread is
/// undone, this thread stops holding softirqs off; if it was the last such thread (and we are
/// not inside a softirq) the softirqs that became pending meanwhile run here. With interrupts
/// disabled (`local_irq_save`) the kernel's `WARN_ON_ONCE(in_hardirq() || irqs_disabled())` of
/// `__local_bh_enable_ip` is printed (once), as enabling bottom halves with interrupts off is a
/// bug there too.
#[track_caller]
pub fn local_bh_enable() {
    let loc = std::panic::Location::caller();
    let cnt = sched::softirq_count();
    if cnt < SOFTIRQ_DISABLE_OFFSET {
        crate::kernel::panic::warn_at(loc, "local_bh_enable() without local_bh_disable()");
        return;
    }
    if irqs_disabled() && !BH_ENABLE_IRQS_OFF_WARNED.swap(true, Ordering::Relaxed) {
        crate::kernel::panic::warn_at(
            loc,
            "__local_bh_enable_ip: WARN_ON_ONCE(in_hardirq() || irqs_disabled()): local_bh_enable() with interrupts disabled",
        );
    }
    sched::preempt_count_sub(SOFTIRQ_DISABLE_OFFSET);
    if cnt == SOFTIRQ_DISABLE_OFFSET {
        // This thread's last level (its first one counted it in: softirq field 0 then). The
        // last section of the CPU runs what the others deferred.
        if BH.enable() {
            if in_interrupt() {
                // Not here (a hard interrupt): ksoftirqd/0 runs what was deferred.
                wakeup_softirqd();
            } else {
                do_softirq_core();
            }
        }
    }
}

/// The thread id of `swapper/0`, the thread that takes the timer interrupt (None before
/// start).
pub fn cpu_thread() -> Option<i32> {
    match CPU_TID.load(Ordering::Acquire) {
        0 => None,
        t => Some(t),
    }
}

extern "C" fn timer_interrupt(sig: i32, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    let errno = unsafe { *libc::__errno_location() };
    let cpu = CPU_TID.load(Ordering::Acquire);
    if cpu != 0 && sched::gettid() != cpu {
        // A process-directed copy (not our timer's): the interrupt belongs to swapper/0.
        // SAFETY: tgkill is async-signal-safe; `cpu` is a live thread of this process.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), cpu, sig) };
    } else {
        LAST_INTERRUPT_NS.store(jiffies::monotonic_ns(), Ordering::Relaxed);
        INTERRUPTS.fetch_add(1, Ordering::Relaxed);
        sched::preempt_count_add(HARDIRQ_OFFSET);
        trace::irq_handler_entry();
        raise_softirq_irqoff(Softirq::Timer);
        trace::irq_handler_exit();
        sched::preempt_count_sub(HARDIRQ_OFFSET);
        // irq_exit(): run softirqs (do_softirq_core defers them if bottom halves are off).
        if !in_interrupt() {
            do_softirq_core();
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Arm the POSIX timer one-shot for the absolute `CLOCK_MONOTONIC` instant `at_ns`, or disarm it
/// (`None`). Async-signal-safe (`timer_settime`). Callers serialise (the timer base lock).
pub fn program_timer_interrupt(at_ns: Option<u64>) {
    if TIMER_SIGNAL.load(Ordering::Acquire) == 0 {
        return;
    }
    let t = POSIX_TIMER.load(Ordering::Acquire) as libc::timer_t;
    let value = match at_ns {
        // 0 disarms, so an instant at 0 becomes 1 ns.
        Some(ns) => libc::timespec {
            tv_sec: (ns.max(1) / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns.max(1) % 1_000_000_000) as libc::c_long,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
    };
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: value,
    };
    ARMS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `t` is the timer created in start() (never deleted); `spec` is valid.
    unsafe { libc::timer_settime(t, libc::TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
}

/// Times the POSIX timer was armed or disarmed.
pub fn timer_programmings() -> u64 {
    ARMS.load(Ordering::Relaxed)
}

fn ksoftirqd() {
    sched::set_comm("ksoftirqd/0");
    loop {
        let seen = KSOFTIRQD_WAKE.load(Ordering::SeqCst);
        if PENDING.load(Ordering::SeqCst) != 0 {
            do_softirq_core();
        }
        if PENDING.load(Ordering::SeqCst) == 0 || KSOFTIRQD_WAKE.load(Ordering::SeqCst) == seen {
            futex::wait(&KSOFTIRQD_WAKE, seen, None);
        }
    }
}

/// `swapper/0`: the CPU's idle task. It takes the timer signal (whatever mask the thread that
/// started the runtime had) and otherwise only sleeps, so every interrupt finds it idle.
fn idle_task(sig: i32, started: std::sync::mpsc::Sender<i32>) {
    sched::set_idle_task();
    let set = sigset_of(sig);
    // SAFETY: valid set pointer; unblocking one signal on this thread.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    let _ = started.send(sched::gettid());
    drop(started);
    interrupt_slice();
    loop {
        // SAFETY: pause has no preconditions; it returns after each handler (EINTR).
        unsafe { libc::pause() };
    }
}

/// The shortest time slice the scheduler grants a `SCHED_OTHER` thread (the kernel clamps a
/// custom slice to 0.1-100 ms).
const INTERRUPT_SLICE_NS: u64 = 100_000;

/// `struct sched_attr` (`include/uapi/linux/sched/types.h`, the first version: 48 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

/// Ask the scheduler to treat the calling thread (swapper/0) as latency-sensitive: same policy
/// and nice value, but the shortest slice, so that on EEVDF (Linux 6.12 and later) its wake-up
/// preempts a running task with a longer slice instead of waiting for that slice to end, as an
/// interrupt preempts the running task. No privilege needed; older kernels ignore the slice
/// of a `SCHED_OTHER` thread or refuse it, and then nothing changes.
fn interrupt_slice() {
    // SAFETY: sched_getscheduler / getpriority on the calling thread have no preconditions.
    let (policy, nice) = unsafe {
        (
            libc::sched_getscheduler(0),
            libc::getpriority(libc::PRIO_PROCESS, 0),
        )
    };
    if policy != libc::SCHED_OTHER {
        return;
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: INTERRUPT_SLICE_NS,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a valid sched_attr of the size it declares; pid 0 = this thread.
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
}

/// Start the interrupt: the signal handler, the POSIX timer behind it and `ksoftirqd/0`. The
/// softirq actions are opened before ([`crate::kernel::start`] orders the boot). Idempotent.
/// Process context.
pub fn start() -> Result {
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if *started {
        return Ok(());
    }
    let Some(sig) = crate::sys::signal::free_rt_signal(false) else {
        crate::pr_err!("softirq: no free real-time signal for the timer interrupt\n");
        return Err(Error::EBUSY);
    };
    // SAFETY: a zeroed sigaction is valid; we fill handler, flags and an empty mask.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction =
        timer_interrupt as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    // No SA_ONSTACK: timer handlers run on swapper/0's full thread stack (std's sigaltstack
    // is only a few KiB). No SA_NODEFER: the signal stays blocked while we run.
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sa.sa_mask is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: installing a handler for a real-time signal that had none.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        return Err(Error::last());
    }

    // The CPU's idle task: the one thread the timer signal is directed at.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("swapper/0".into())
        .spawn(move || idle_task(sig, tx))?;
    let cpu = rx
        .recv()
        .map_err(|_| std::io::Error::other("the swapper/0 thread did not start"))?;

    // SAFETY: a zeroed sigevent is valid; we set the notification fields we use.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_THREAD_ID;
    sev.sigev_signo = sig;
    sev.sigev_notify_thread_id = cpu;
    let mut t: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid sigevent (naming a live thread of this process) and out-pointer.
    if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut t) } != 0 {
        return Err(Error::last());
    }
    POSIX_TIMER.store(t as usize, Ordering::Release);
    CPU_TID.store(cpu, Ordering::Release);
    TIMER_SIGNAL.store(sig, Ordering::Release);

    std::thread::Builder::new()
        .name("ksoftirqd/0".into())
        .spawn(ksoftirqd)
        .map_err(Error::from)?;
    *started = true;
    Ok(())
}
