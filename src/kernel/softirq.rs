//! Softirqs: the timer interrupt, bottom-half processing, `local_bh_disable`, `ksoftirqd/0`.
//!
//! # The model
//! The "CPU" is the whole process. Its only interrupt is one POSIX timer
//! (`timer_create(CLOCK_MONOTONIC)`) that delivers a real-time signal chosen at start from
//! `SIGRTMIN..=SIGRTMAX`. The timer is armed one-shot, absolute, for the earliest pending
//! `timer_list` expiry (see [`crate::kernel::timer`]); with nothing pending it is disarmed, so
//! an idle runtime gets no signal at all (tickless).
//!
//! The signal handler is the hard interrupt: it raises `TIMER_SOFTIRQ` and, as the kernel's
//! `irq_exit()`, runs pending softirqs in priority order (`HI` first, `RCU` last) unless the
//! interrupted thread was already in interrupt context. Processing stops after
//! `MAX_SOFTIRQ_TIME` (2 ms) or `MAX_SOFTIRQ_RESTART` (10) rounds and the rest goes to the
//! `ksoftirqd/0` thread, exactly the kernel's budget (`kernel/softirq.c`).
//!
//! Softirq processing is serialised like one CPU: a global `RUNNING` flag taken with a swap.
//! A thread that loses leaves its pending bits; the winner re-checks the pending mask after
//! dropping the flag and wakes `ksoftirqd/0` if anything is left, so no raise is lost.
//!
//! # Bottom halves
//! `local_bh_disable()` is a per-thread nesting count (in the preemption count); its first
//! level blocks the timer signal on this thread (`pthread_sigmask`), so the handler cannot
//! interrupt a thread that holds a `spin_lock_bh` lock. The last `local_bh_enable()` runs the
//! softirqs that became pending (on this thread, signal still blocked) and unblocks the signal.
//! Other threads keep taking the signal meanwhile: "bottom halves off" is per thread, as it is
//! per CPU in the kernel.
//!
//! `local_irq_save` blocks the signal too, and the two nest as in the kernel: a per-thread
//! depth says whether interrupts are disabled (`irqs_disabled()`), and the signal is unblocked
//! only when neither holds it. `local_bh_enable` with interrupts disabled prints the kernel's
//! `WARN_ON_ONCE(in_hardirq() || irqs_disabled())` and leaves the signal to `local_irq_restore`.
//!
//! # Ground rules (shared with signal context)
//! - `PENDING`: bit mask of raised softirqs, atomic; set by `raise_softirq*`, taken (swap to 0)
//!   only by the `RUNNING` holder.
//! - `RUNNING`: held by the one thread running softirq actions. The holder always has the timer
//!   signal blocked (inside the handler it is blocked by the kernel during delivery; on
//!   `ksoftirqd/0` and in `local_bh_enable` we block it), so it can never re-enter.
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
static RUNNING: AtomicBool = AtomicBool::new(false);
static ACTIONS: [AtomicUsize; NR_SOFTIRQS] = [const { AtomicUsize::new(0) }; NR_SOFTIRQS];
static RUN_COUNTS: [AtomicU64; NR_SOFTIRQS] = [const { AtomicU64::new(0) }; NR_SOFTIRQS];

/// The timer signal's number (0 until the runtime starts).
static TIMER_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The POSIX timer (a `timer_t`, stored as an address; valid once `TIMER_SIGNAL` is set).
static POSIX_TIMER: AtomicUsize = AtomicUsize::new(0);
/// Handler entries (timer interrupts taken).
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// POSIX timer arm/disarm calls.
static ARMS: AtomicU64 = AtomicU64::new(0);

static KSOFTIRQD_WAKE: AtomicU32 = AtomicU32::new(0);
static KSOFTIRQD_WAKEUPS: AtomicU64 = AtomicU64::new(0);
static STARTED: Mutex<bool> = Mutex::new(false);

thread_local! {
    /// This thread keeps the timer signal blocked for good (ksoftirqd/0).
    static SIGNAL_ALWAYS_BLOCKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// `local_irq_save` levels in effect on this thread (the kernel's "irqs disabled").
    static IRQ_DISABLE_DEPTH: AtomicU32 = const { AtomicU32::new(0) };
    /// The first `local_bh_disable` level blocked the timer signal (it was not blocked yet), so
    /// the last `local_bh_enable` unblocks it, unless interrupts are disabled by then.
    static BH_BLOCKED_SIGNAL: AtomicBool = const { AtomicBool::new(false) };
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

/// Unblock the timer signal on this thread (raw; prefer [`local_irq_restore`]). Never on
/// `ksoftirqd/0`, which keeps it blocked for good.
pub fn unblock_timer_signal() {
    if !SIGNAL_ALWAYS_BLOCKED.with(|b| b.get()) {
        sigmask(libc::SIG_UNBLOCK);
    }
}

/// The saved interrupt state of [`local_irq_save`]: were interrupts disabled before it?
#[derive(Clone, Copy, Debug)]
#[must_use = "give it back to local_irq_restore"]
pub struct IrqFlags {
    was_blocked: bool,
}

/// `local_irq_save()`: keep the timer interrupt off this thread (block its signal), returning
/// the previous state. Nests. Async-signal-safe.
///
/// The timer signal is blocked for two reasons here: interrupts disabled, and bottom halves
/// disabled (our `local_bh_disable` blocks it too). Only the first is "interrupts disabled" in
/// the kernel's sense, so a signal blocked by `local_bh_disable` alone is saved as "enabled".
pub fn local_irq_save() -> IrqFlags {
    let raw = block_timer_signal();
    IRQ_DISABLE_DEPTH.with(|d| d.fetch_add(1, Ordering::Relaxed));
    IrqFlags {
        was_blocked: raw && !BH_BLOCKED_SIGNAL.with(|b| b.load(Ordering::Relaxed)),
    }
}

/// `local_irq_restore(flags)`: put back the state `local_irq_save` returned. With bottom halves
/// still disabled the signal stays blocked (the last `local_bh_enable` unblocks it).
pub fn local_irq_restore(flags: IrqFlags) {
    let outer = IRQ_DISABLE_DEPTH.with(|d| d.fetch_sub(1, Ordering::Relaxed)) > 1;
    if flags.was_blocked || outer {
        // Interrupts stay disabled (by the caller's state, or an outer local_irq_save).
        return;
    }
    if sched::softirq_count() == 0 {
        BH_BLOCKED_SIGNAL.with(|b| b.store(false, Ordering::Relaxed));
        unblock_timer_signal();
    } else {
        // Bottom halves went off inside the interrupts-off section and are still off: their
        // last local_bh_enable unblocks the signal.
        BH_BLOCKED_SIGNAL.with(|b| b.store(true, Ordering::Relaxed));
    }
}

/// `irqs_disabled()`: are interrupts disabled on this thread, in the kernel's sense: inside
/// `local_irq_save` (or the timer signal's handler proper)? Bottom halves disabled is not
/// "interrupts disabled", although it blocks the timer signal too. Async-signal-safe.
pub fn irqs_disabled() -> bool {
    in_hardirq() || IRQ_DISABLE_DEPTH.with(|d| d.load(Ordering::Relaxed)) != 0
}

/// `__do_softirq()`: run pending softirqs, within the budget, if no other thread is.
/// Precondition: the timer signal is blocked on this thread and it is not in interrupt context.
fn do_softirq_core() {
    if PENDING.load(Ordering::SeqCst) == 0 {
        return;
    }
    if RUNNING.swap(true, Ordering::SeqCst) {
        // Another thread is serving softirqs; it re-checks PENDING before it stops.
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
    RUNNING.store(false, Ordering::SeqCst);
    // A thread that raised and lost the RUNNING race after our last look leaves its bit to us.
    if PENDING.load(Ordering::SeqCst) != 0 {
        wakeup_softirqd();
    }
}

/// `do_softirq()` from process context: run pending softirqs now on this thread (signal
/// blocked meanwhile). Does nothing in interrupt context.
pub fn do_softirq() {
    if in_interrupt() || PENDING.load(Ordering::SeqCst) == 0 {
        return;
    }
    let flags = local_irq_save();
    do_softirq_core();
    local_irq_restore(flags);
}

/// `local_bh_disable()`: disable softirqs on this thread (nests). The first level blocks the
/// timer signal on this thread. Any context (nesting inside a softirq is allowed).
pub fn local_bh_disable() {
    if sched::softirq_count() == 0 {
        let was = block_timer_signal();
        BH_BLOCKED_SIGNAL.with(|b| b.store(!was, Ordering::Relaxed));
    }
    sched::preempt_count_add(SOFTIRQ_DISABLE_OFFSET);
}

/// `local_bh_enable()`: undo one `local_bh_disable()`. When the last one is undone (and we are
/// not inside a softirq) the softirqs that became pending run here, then the timer signal is
/// unblocked, unless interrupts are disabled (`local_irq_save`): then it stays blocked until
/// the matching `local_irq_restore`, and the kernel's `WARN_ON_ONCE(in_hardirq() ||
/// irqs_disabled())` of `__local_bh_enable_ip` is printed (once), as enabling bottom halves
/// with interrupts off is a bug there too.
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
    if cnt == SOFTIRQ_DISABLE_OFFSET && !in_interrupt() {
        // Last level: the signal is still blocked, so running here cannot re-enter.
        do_softirq_core();
        if IRQ_DISABLE_DEPTH.with(|d| d.load(Ordering::Relaxed)) == 0
            && BH_BLOCKED_SIGNAL.with(|b| b.swap(false, Ordering::Relaxed))
        {
            unblock_timer_signal();
        }
    }
}

extern "C" fn timer_interrupt(_sig: i32, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    let errno = unsafe { *libc::__errno_location() };
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    sched::preempt_count_add(HARDIRQ_OFFSET);
    trace::irq_handler_entry();
    raise_softirq_irqoff(Softirq::Timer);
    trace::irq_handler_exit();
    sched::preempt_count_sub(HARDIRQ_OFFSET);
    // irq_exit(): run softirqs unless the interrupted code was in interrupt context itself.
    if !in_interrupt() {
        do_softirq_core();
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
    SIGNAL_ALWAYS_BLOCKED.with(|b| b.set(true));
    let _ = block_timer_signal();
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

/// Pick the first real-time signal nobody has a handler for.
fn choose_signal() -> Option<i32> {
    for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
        // SAFETY: a zeroed sigaction is a valid out-parameter.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: querying (null new action) a valid signal number.
        let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
        if rc == 0 && old.sa_sigaction == libc::SIG_DFL {
            return Some(sig);
        }
    }
    None
}

/// Start the interrupt: the signal handler, the POSIX timer behind it and `ksoftirqd/0`. The
/// softirq actions are opened before ([`crate::kernel::start`] orders the boot). Idempotent.
/// Process context.
pub fn start() -> Result {
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if *started {
        return Ok(());
    }
    let Some(sig) = choose_signal() else {
        crate::pr_err!("softirq: no free real-time signal for the timer interrupt\n");
        return Err(Error::EBUSY);
    };
    // SAFETY: a zeroed sigaction is valid; we fill handler, flags and an empty mask.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction =
        timer_interrupt as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    // No SA_ONSTACK: timer handlers run on the interrupted thread's full stack (std's
    // sigaltstack is only a few KiB). No SA_NODEFER: the signal stays blocked while we run.
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sa.sa_mask is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: installing a handler for a real-time signal that had none.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        return Err(Error::last());
    }

    // SAFETY: a zeroed sigevent is valid; we set the notification fields we use.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_SIGNAL;
    sev.sigev_signo = sig;
    let mut t: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid sigevent and out-pointer.
    if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut t) } != 0 {
        return Err(Error::last());
    }
    POSIX_TIMER.store(t as usize, Ordering::Release);
    TIMER_SIGNAL.store(sig, Ordering::Release);

    std::thread::Builder::new()
        .name("ksoftirqd/0".into())
        .spawn(ksoftirqd)
        .map_err(Error::from)?;
    *started = true;
    Ok(())
}
