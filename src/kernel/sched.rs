//! The scheduler side: `current`, the preemption count, `might_sleep`, sleeping.
//!
//! # The preemption count
//! As in the kernel (`include/linux/preempt.h`), each thread has a `preempt_count` whose bit
//! fields say which context it is in:
//!
//! ```text
//!   PREEMPT_MASK  0x000000ff   preempt_disable() depth (spin_lock holds one)
//!   SOFTIRQ_MASK  0x0000ff00   bit 8 (SOFTIRQ_OFFSET): serving a softirq;
//!                              +0x200 (SOFTIRQ_DISABLE_OFFSET) per local_bh_disable()
//!   HARDIRQ_MASK  0x000f0000   inside the timer signal's handler, before softirqs run
//! ```
//!
//! `in_atomic()` is "any bit set". The count is a `const`-initialised thread-local atomic: no
//! allocation on first touch, readable and writable from the signal handler (which always
//! leaves it as it found it).
//!
//! # current
//! [`current()`] is the running thread. The timer interrupt always lands on the CPU's idle
//! task, the thread `swapper/0` (see [`crate::kernel::softirq`]), which `current` shows as the
//! kernel does: pid 0, comm `swapper/0`; softirqs run by `ksoftirqd/0` or at a thread's last
//! `local_bh_enable()` show that thread. The `comm` is kept in a per-thread buffer set by
//! [`set_comm`], so it is readable in the handler without allocating.
//!
//! # Ground rules (per-thread state, shared with the signal handler on the same thread)
//! - `PREEMPT_COUNT` is a `const` thread-local atomic; the handler adds and removes exactly what
//!   it adds before returning, so an interrupted read-modify-write in process context sees the
//!   value it expects. A compiler fence orders it against the code it guards.
//! - `COMM` is a `const` thread-local of two atomic words (the 16 bytes of the name) written by
//!   `set_comm` (or lazily by `current()`), read by `current()` in process context and in the
//!   handler. Only lock-free atomics are shared with the handler (as `PREEMPT_COUNT`): a handler
//!   reading it mid-write sees at worst the words of two names, never a torn value, never
//!   invalid memory, and never allocates.
//! - No other thread reads another thread's state: `current()` is always "this thread".
//!
//! # Sleeping
//! Every blocking call starts with [`might_sleep()`]: in atomic context it prints the kernel's
//! two BUG reports and returns false, and the caller returns at once instead of sleeping. Sleeps
//! use `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)` and go back to sleep on EINTR (the
//! timer signal interrupts sleeps all the time).

use std::cell::Cell;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::kernel::jiffies;

/// Preemption-disable depth field.
pub const PREEMPT_MASK: u32 = 0x0000_00ff;
/// Softirq field.
pub const SOFTIRQ_MASK: u32 = 0x0000_ff00;
/// Hardirq field.
pub const HARDIRQ_MASK: u32 = 0x000f_0000;
/// NMI field (never set here; kept for the kernel's masks).
pub const NMI_MASK: u32 = 0x00f0_0000;
/// One preempt_disable().
pub const PREEMPT_OFFSET: u32 = 1;
/// Serving a softirq.
pub const SOFTIRQ_OFFSET: u32 = 0x100;
/// One local_bh_disable().
pub const SOFTIRQ_DISABLE_OFFSET: u32 = 2 * SOFTIRQ_OFFSET;
/// Inside the interrupt (signal handler) proper.
pub const HARDIRQ_OFFSET: u32 = 0x1_0000;

/// `MAX_SCHEDULE_TIMEOUT`: sleep without a timeout.
pub const MAX_SCHEDULE_TIMEOUT: u64 = i64::MAX as u64;

/// `TASK_COMM_LEN`: a comm holds at most 15 bytes and a NUL.
pub const TASK_COMM_LEN: usize = 16;

thread_local! {
    static PREEMPT_COUNT: AtomicU32 = const { AtomicU32::new(0) };
    static COMM: [AtomicU64; 2] = const { [AtomicU64::new(0), AtomicU64::new(0)] };
    static SLEEP_HOOK: Cell<Option<SleepHook>> = const { Cell::new(None) };
}

/// What the calling thread's sleeps in the runtime tell its pool: the kernel's
/// `wq_worker_sleeping()`, called from `schedule()`, by which a worker pool learns that a worker
/// is about to block and wakes another to keep the CPU's work going. The transport's reader
/// threads install one while they run a file operation ([`crate::cuse`]): a file operation that
/// sleeps (a `wait_event*` whose condition does not hold yet, `msleep`, a `flush_work` or
/// `cancel_work_sync` of a running work, a `del_timer_sync` of a running handler past its first
/// yields, `kthread_stop`) gets another reader to serve the other callers, and the kernel's
/// INTERRUPT for this very call. A call that might sleep and does not ([`might_sleep`] alone)
/// calls nobody.
#[derive(Clone, Copy)]
pub(crate) struct SleepHook {
    /// Called with `data`, in process context, on the sleeping thread.
    pub(crate) call: fn(*const ()),
    pub(crate) data: *const (),
}

/// Installs `hook` for the calling thread's sleeps (`None`: removes it); returns the one it
/// replaces. The installer keeps whatever `data` points to alive until it removes the hook.
pub(crate) fn set_sleep_hook(hook: Option<SleepHook>) -> Option<SleepHook> {
    SLEEP_HOOK.with(|h| h.replace(hook))
}

/// The calling thread is about to sleep (block until woken or a deadline): runs its sleep
/// hook, if any. Called at each of the runtime's sleeps (by `kthread::sched_out`, and where a
/// work item is waited for), as the kernel's `schedule()` calls `wq_worker_sleeping()`.
/// Process context.
pub(crate) fn going_to_sleep() {
    if let Some(hook) = SLEEP_HOOK.with(Cell::get) {
        (hook.call)(hook.data);
    }
}

/// This thread's comm buffer (16 bytes, NUL-padded). Async-signal-safe.
fn comm_load() -> [u8; TASK_COMM_LEN] {
    COMM.with(|c| {
        let mut b = [0u8; TASK_COMM_LEN];
        b[..8].copy_from_slice(&c[0].load(Ordering::Relaxed).to_ne_bytes());
        b[8..].copy_from_slice(&c[1].load(Ordering::Relaxed).to_ne_bytes());
        b
    })
}

/// Store this thread's comm buffer. Async-signal-safe.
fn comm_store(b: &[u8; TASK_COMM_LEN]) {
    let (lo, hi) = b.split_at(8);
    COMM.with(|c| {
        c[0].store(
            u64::from_ne_bytes(lo.try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
        c[1].store(
            u64::from_ne_bytes(hi.try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
    });
}

/// This thread's preemption count.
#[inline]
pub fn preempt_count() -> u32 {
    PREEMPT_COUNT.with(|c| c.load(Ordering::Relaxed))
}

/// Add to this thread's preemption count (the kernel's `preempt_count_add`).
#[inline]
pub fn preempt_count_add(v: u32) {
    PREEMPT_COUNT.with(|c| c.fetch_add(v, Ordering::Relaxed));
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Subtract from this thread's preemption count (`preempt_count_sub`).
#[inline]
pub fn preempt_count_sub(v: u32) {
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    PREEMPT_COUNT.with(|c| c.fetch_sub(v, Ordering::Relaxed));
}

/// `preempt_disable()`: enter atomic context (no sleeping).
pub fn preempt_disable() {
    preempt_count_add(PREEMPT_OFFSET);
}

/// `preempt_enable()`.
pub fn preempt_enable() {
    preempt_count_sub(PREEMPT_OFFSET);
}

/// `in_atomic()`: preemption disabled, bottom halves disabled, or in interrupt context.
pub fn in_atomic() -> bool {
    preempt_count() != 0
}

/// `softirq_count()`: the softirq field of the preemption count.
pub fn softirq_count() -> u32 {
    preempt_count() & SOFTIRQ_MASK
}

/// `hardirq_count()`.
pub fn hardirq_count() -> u32 {
    preempt_count() & HARDIRQ_MASK
}

/// `in_task()`: process context (not in an interrupt, not serving a softirq).
pub fn in_task() -> bool {
    preempt_count() & (NMI_MASK | HARDIRQ_MASK | SOFTIRQ_OFFSET) == 0
}

/// A thread's name as the kernel keeps it: at most 15 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; TASK_COMM_LEN],
    len: u8,
}

impl Comm {
    /// No name (all zeros).
    pub(crate) const EMPTY: Comm = Comm {
        bytes: [0; TASK_COMM_LEN],
        len: 0,
    };

    fn from_bytes(b: &[u8]) -> Comm {
        let mut bytes = [0; TASK_COMM_LEN];
        let n = b
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(b.len())
            .min(TASK_COMM_LEN - 1);
        bytes[..n].copy_from_slice(&b[..n]);
        Comm {
            bytes,
            len: n as u8,
        }
    }

    /// The name (the valid UTF-8 prefix, if a truncation split a character).
    pub fn as_str(&self) -> &str {
        let b = &self.bytes[..self.len as usize];
        match std::str::from_utf8(b) {
            Ok(s) => s,
            // SAFETY: `valid_up_to` bytes were just checked to be valid UTF-8.
            Err(e) => unsafe { std::str::from_utf8_unchecked(&b[..e.valid_up_to()]) },
        }
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A snapshot of a thread: the kernel's `task_struct` as far as the lab looks at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pid: i32,
    comm: Comm,
}

impl Task {
    /// The thread id (`gettid()`), the kernel's `task->pid`.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The thread's name (`task->comm`).
    pub fn comm(&self) -> Comm {
        self.comm
    }
}

/// `gettid()`. Async-signal-safe.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// The idle task's name and pid, as the kernel shows them (`init_task`).
pub const IDLE_COMM: &str = "swapper/0";

/// The thread id of the idle task (0: none yet).
static IDLE_TID: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// The calling thread is the idle task (set once, by [`set_idle_task`]). Const-initialised,
    /// no destructor: readable in a signal handler.
    static IS_IDLE_TASK: AtomicBool = const { AtomicBool::new(false) };
}

/// Make the calling thread the CPU's idle task: named `swapper/0`, shown by [`current()`] with
/// pid 0. Called once, by the runtime's interrupt thread.
pub(crate) fn set_idle_task() {
    set_comm(IDLE_COMM);
    IDLE_TID.store(gettid(), Ordering::Release);
    IS_IDLE_TASK.with(|f| f.store(true, Ordering::Relaxed));
}

/// `is_idle_task(current)`: is the calling thread the CPU's idle task (the one that takes the
/// timer interrupt)? A thread-local flag: no system call. Async-signal-safe.
pub fn is_idle_task() -> bool {
    IS_IDLE_TASK.with(|f| f.load(Ordering::Relaxed))
}

/// `current`: the running thread; in a timer handler, the idle task `swapper/0` (pid 0).
/// Async-signal-safe, allocation-free.
pub fn current() -> Task {
    let tid = gettid();
    if tid == IDLE_TID.load(Ordering::Acquire) {
        return Task {
            pid: 0,
            comm: Comm::from_bytes(IDLE_COMM.as_bytes()),
        };
    }
    let mut comm = comm_load();
    if comm[0] == 0 {
        // Not named through set_comm: ask the kernel (into a stack buffer) and remember it.
        let mut buf = [0u8; TASK_COMM_LEN];
        // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer we pass.
        unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
        comm = buf;
        comm_store(&buf);
    }
    Task {
        pid: tid,
        comm: Comm::from_bytes(&comm),
    }
}

/// Truncate `name` to the kernel's comm length (15 bytes, on a character boundary).
pub fn comm_truncate(name: &str) -> &str {
    let mut n = name.len().min(TASK_COMM_LEN - 1);
    while !name.is_char_boundary(n) {
        n -= 1;
    }
    &name[..n]
}

/// Name the calling thread (`set_task_comm` on current): `prctl(PR_SET_NAME)` plus the
/// per-thread copy that `current()` reads. Truncated to 15 bytes as the kernel does.
pub fn set_comm(name: &str) {
    let name = comm_truncate(name);
    let mut buf = [0u8; TASK_COMM_LEN];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `buf` is NUL-terminated (at most 15 name bytes in 16).
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
    comm_store(&buf);
}

/// `might_sleep()`: the check at the top of every blocking call. In atomic context it prints
/// the kernel's BUG reports (from `__might_resched` and `__schedule_bug`) and returns false:
/// the caller must not sleep and returns at once. Otherwise true.
#[track_caller]
#[must_use]
pub fn might_sleep() -> bool {
    might_sleep_at(Location::caller())
}

/// [`might_sleep`] reporting the given source location (for blocking calls that take
/// `#[track_caller]` themselves).
#[must_use]
pub fn might_sleep_at(loc: &Location<'_>) -> bool {
    // Only the preemption count decides: a blocked timer signal (our "irqs disabled") is
    // also how some threads simply keep the interrupt away, and must not count as atomic.
    if !in_atomic() {
        return true;
    }
    let t = current();
    let count = preempt_count();
    crate::pr_err!(
        "BUG: sleeping function called from invalid context at {}:{}",
        loc.file(),
        loc.line()
    );
    crate::pr_err!(
        "in_atomic(): {}, irqs_disabled(): {}, non_block: {}, pid: {}, name: {}",
        1,
        0,
        0,
        t.pid(),
        t.comm()
    );
    crate::pr_err!("preempt_count: {:x}, expected: {:x}", count, 0);
    crate::pr_err!(
        "BUG: scheduling while atomic: {}/{}/0x{:08x}",
        t.comm(),
        t.pid(),
        count
    );
    false
}

/// Sleep until the `CLOCK_MONOTONIC` instant `deadline_ns`, going back to sleep on EINTR.
/// No might_sleep check: callers do it.
pub fn sleep_until_ns(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // A sleep: during a module's exit, its other threads may run the module's code meanwhile.
    super::kthread::sched_out();
    loop {
        // SAFETY: `ts` is a valid timespec; the remaining-time pointer may be null with
        // TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            super::kthread::sched_in();
            return;
        }
    }
}

/// `schedule_timeout(timeout)`: sleep `timeout` jiffies; returns the jiffies left (0 when the
/// whole timeout elapsed). In atomic context: the BUG report, no sleep, returns `timeout`.
/// `MAX_SCHEDULE_TIMEOUT` sleeps for ever.
#[track_caller]
pub fn schedule_timeout(timeout: u64) -> u64 {
    if !might_sleep() {
        return timeout;
    }
    if timeout >= MAX_SCHEDULE_TIMEOUT {
        loop {
            sleep_until_ns(u64::MAX / 2);
        }
    }
    let expire = jiffies::jiffies().wrapping_add(timeout);
    sleep_until_ns(jiffies::jiffies_to_monotonic_ns(expire));
    let now = jiffies::jiffies();
    if jiffies::time_before(now, expire) {
        expire.wrapping_sub(now)
    } else {
        0
    }
}

/// `schedule_timeout_interruptible`: as [`schedule_timeout`]. No signal is ever "pending" for
/// a runtime thread in the kernel's sense (the timer signal is the interrupt), so it sleeps the
/// whole timeout too.
#[track_caller]
pub fn schedule_timeout_interruptible(timeout: u64) -> u64 {
    schedule_timeout(timeout)
}

/// `schedule_timeout_uninterruptible`.
#[track_caller]
pub fn schedule_timeout_uninterruptible(timeout: u64) -> u64 {
    schedule_timeout(timeout)
}

/// `msleep(ms)`: sleep at least `ms` milliseconds (not in atomic context).
#[track_caller]
pub fn msleep(ms: u64) {
    if !might_sleep() {
        return;
    }
    sleep_until_ns(jiffies::monotonic_ns().saturating_add(ms.saturating_mul(1_000_000)));
}

/// `ssleep(s)`: sleep `s` seconds (not in atomic context).
#[track_caller]
pub fn ssleep(s: u64) {
    if !might_sleep() {
        return;
    }
    sleep_until_ns(jiffies::monotonic_ns().saturating_add(s.saturating_mul(1_000_000_000)));
}

/// `udelay(us)`: busy-wait (allowed in atomic context, as the kernel's).
pub fn udelay(us: u64) {
    let end = jiffies::monotonic_ns().saturating_add(us.saturating_mul(1000));
    while jiffies::monotonic_ns() < end {
        std::hint::spin_loop();
    }
}

/// `mdelay(ms)`: busy-wait (allowed in atomic context).
pub fn mdelay(ms: u64) {
    udelay(ms.saturating_mul(1000));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_spans_both_atomic_words_and_is_truncated_to_fifteen_bytes() {
        std::thread::spawn(|| {
            set_comm("abcdefghijklmnopqrst");
            assert_eq!(current().comm().as_str(), "abcdefghijklmno");
            set_comm("short");
            assert_eq!(current().comm().as_str(), "short");
            // The kernel's own name agrees (prctl).
            let mut buf = [0u8; TASK_COMM_LEN];
            // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer.
            unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
            assert_eq!(&buf[..6], b"short\0");
        })
        .join()
        .unwrap();
    }
}
