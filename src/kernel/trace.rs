//! Trace events: the kernel's tracepoints (`timer:*`, `irq:*`, `workqueue:*`, `sched:*`, ...)
//! with their names, fields and text, recorded from any context, the timer signal's handler
//! included, and read back as `/sys/kernel/tracing/trace` prints them:
//!
//! ```text
//!         deferred-4242    [000] ..s..     9.905810: timer_expire_entry: timer=000055d0c1a2b3c0 function=timer_handler now=4294670592 baseclk=4294670592
//! ```
//!
//! Each trace point is one call at its site (`trace::timer_start(...)`), an `#[inline]` function
//! whose only cost while its event is off is one relaxed atomic load of [`ENABLED`]. When on,
//! the event's fields, the time, the thread (`current`: in the timer interrupt the idle task
//! `swapper/0`) and its context (the preemption count) go into a preallocated lock-free ring; a reader in
//! process context drains it ([`drain`]) and formats each record ([`Record::write_line`]).
//! `deferred --trace FILE` runs such a reader (see `crate::tracefile`).
//!
//! Handlers are named by their path (`std::any::type_name` of the handler, as the runtime's
//! reports name them), printed as the kernel's `%ps` prints a symbol: its last component.
//!
//! # Ground rules (shared with signal context)
//! - The records go into a [`Ring`] (lock-free MPSC, printk's, model-checked under loom; see
//!   its rules); its one consumer is whoever holds `CONSUMER` (a std mutex: process context
//!   only).
//! - A producer never waits: a full ring drops the record and counts it in `LOST` (ftrace's
//!   "entries-written" minus "entries-in-buffer").
//! - Recording allocates nothing, takes no lock and makes no system call beyond those `current`
//!   and the clock make (`prctl`, `gettid`, `clock_gettime`: async-signal-safe).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::kernel::sync::ring::{Entry, Ring};
use crate::kernel::{jiffies, sched};

/// The events, in the kernel's systems and names. Their bit in [`ENABLED`] is their index.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `timer:timer_init`
    TimerInit,
    /// `timer:timer_start`
    TimerStart,
    /// `timer:timer_cancel`
    TimerCancel,
    /// `timer:timer_expire_entry`
    TimerExpireEntry,
    /// `timer:timer_expire_exit`
    TimerExpireExit,
    /// `irq:irq_handler_entry` (the timer interrupt: the signal handler)
    IrqHandlerEntry,
    /// `irq:irq_handler_exit`
    IrqHandlerExit,
    /// `irq:softirq_raise`
    SoftirqRaise,
    /// `irq:softirq_entry`
    SoftirqEntry,
    /// `irq:softirq_exit`
    SoftirqExit,
    /// `irq:tasklet_entry`
    TaskletEntry,
    /// `irq:tasklet_exit`
    TaskletExit,
    /// `workqueue:workqueue_queue_work`
    WorkqueueQueueWork,
    /// `workqueue:workqueue_activate_work`
    WorkqueueActivateWork,
    /// `workqueue:workqueue_execute_start`
    WorkqueueExecuteStart,
    /// `workqueue:workqueue_execute_end`
    WorkqueueExecuteEnd,
    /// `task:task_newtask` (a kthread created)
    TaskNewtask,
    /// `sched:sched_kthread_stop`
    SchedKthreadStop,
    /// `sched:sched_kthread_stop_ret`
    SchedKthreadStopRet,
    /// `sched:sched_process_exit` (a kthread's thread function returned)
    SchedProcessExit,
    /// `cuse:cuse_request` (the transport read a request)
    CuseRequest,
    /// `cuse:cuse_reply` (the transport answered it)
    CuseReply,
    /// `printk:console` (a printk line)
    Console,
}

/// Every event: (its system, its name), in [`Event`] order.
pub const EVENTS: [(&str, &str); 23] = [
    ("timer", "timer_init"),
    ("timer", "timer_start"),
    ("timer", "timer_cancel"),
    ("timer", "timer_expire_entry"),
    ("timer", "timer_expire_exit"),
    ("irq", "irq_handler_entry"),
    ("irq", "irq_handler_exit"),
    ("irq", "softirq_raise"),
    ("irq", "softirq_entry"),
    ("irq", "softirq_exit"),
    ("irq", "tasklet_entry"),
    ("irq", "tasklet_exit"),
    ("workqueue", "workqueue_queue_work"),
    ("workqueue", "workqueue_activate_work"),
    ("workqueue", "workqueue_execute_start"),
    ("workqueue", "workqueue_execute_end"),
    ("task", "task_newtask"),
    ("sched", "sched_kthread_stop"),
    ("sched", "sched_kthread_stop_ret"),
    ("sched", "sched_process_exit"),
    ("cuse", "cuse_request"),
    ("cuse", "cuse_reply"),
    ("printk", "console"),
];

/// Every event's bit.
pub const ALL: u64 = (1 << EVENTS.len()) - 1;

/// The enabled events, one bit each ([`Event`] as the index). 0: tracing off.
pub static ENABLED: AtomicU64 = AtomicU64::new(0);

/// Turn on exactly the events in `mask` (0: off). Any context.
pub fn set_enabled(mask: u64) {
    ENABLED.store(mask & ALL, Ordering::SeqCst);
}

/// The events `list` names, as a mask: comma-separated event names (`timer_start`), systems
/// (`timer:*`), `system:name`, or `all` / `*`. Errors name the first unknown item.
pub fn parse_events(list: &str) -> Result<u64, String> {
    let mut mask = 0;
    for item in list.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty event name in `{list}`"));
        }
        let (sys, name) = match item.split_once(':') {
            Some((s, n)) => (Some(s), n),
            None => (None, item),
        };
        let bits = EVENTS
            .iter()
            .enumerate()
            .filter(|(_, (s, n))| {
                sys.is_none_or(|sys| sys == "*" || sys == *s) && (name == "*" || name == *n)
            })
            .fold(0, |m, (i, _)| m | 1 << i);
        if bits == 0 && item != "all" {
            let systems: Vec<&str> = EVENTS.iter().map(|(s, _)| *s).fold(Vec::new(), |mut v, s| {
                if !v.contains(&s) {
                    v.push(s);
                }
                v
            });
            return Err(format!(
                "no trace event `{item}` (give names like timer_start, systems like {}, or all)",
                systems
                    .iter()
                    .map(|s| format!("{s}:*"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        mask |= if item == "all" { ALL } else { bits };
    }
    Ok(mask)
}

#[inline(always)]
fn on(e: Event) -> bool {
    ENABLED.load(Ordering::Relaxed) & (1 << e as u32) != 0
}

/// Whether `printk:console` is on (printk then makes its line at once, for the event's text).
#[inline(always)]
pub(crate) fn console_on() -> bool {
    on(Event::Console)
}

/// Longest text kept in a record (a printk line, a workqueue or thread name); longer is cut.
pub const TEXT_MAX: usize = 128;
/// Records in the ring.
pub const SLOTS: usize = 8192;

/// One recorded event.
#[derive(Clone, Copy)]
pub struct Record {
    /// Which event.
    pub event: Event,
    /// The preemption count when it was recorded (its context).
    pub preempt_count: u32,
    /// The thread (`current`'s pid: in a timer interrupt, the idle task's, 0).
    pub pid: i32,
    comm: sched::Comm,
    /// Nanoseconds since the runtime started (as printk's timestamps).
    pub ts_ns: u64,
    /// The event's numeric fields (see [`Record::write_line`] for each event's).
    pub args: [u64; 4],
    text_len: u8,
    text: [u8; TEXT_MAX],
}

impl Entry for Record {
    // All zeros, so that the ring's static lies in .bss (no bytes in the executable).
    const EMPTY: Record = Record {
        event: Event::TimerInit,
        preempt_count: 0,
        pid: 0,
        comm: sched::Comm::EMPTY,
        ts_ns: 0,
        args: [0; 4],
        text_len: 0,
        text: [0; TEXT_MAX],
    };
}

impl Record {
    /// The thread's name.
    pub fn comm(&self) -> &str {
        self.comm.as_str()
    }

    /// The event's text field (a printk line, a workqueue or thread name, an opcode).
    pub fn text(&self) -> &str {
        let b = &self.text[..self.text_len as usize];
        match std::str::from_utf8(b) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// ftrace's context flags (`irqs-off`, `need-resched`, `hardirq/softirq`, `preempt-depth`,
    /// `migrate-disable`): `d.h..` in the interrupt proper, `..s..` serving a softirq, `b....`
    /// with bottom halves disabled, `.....` in plain process context.
    pub fn flags(&self) -> [u8; 5] {
        let pc = self.preempt_count;
        let hard = pc & sched::HARDIRQ_MASK != 0;
        let serving = pc & sched::SOFTIRQ_OFFSET != 0;
        let bh_off = pc & sched::SOFTIRQ_MASK & !sched::SOFTIRQ_OFFSET != 0;
        let depth = pc & sched::PREEMPT_MASK;
        [
            match (hard, bh_off) {
                (true, true) => b'D',
                (true, false) => b'd',
                (false, true) => b'b',
                (false, false) => b'.',
            },
            b'.',
            match (hard, serving) {
                (true, true) => b'H',
                (true, false) => b'h',
                (false, true) => b's',
                (false, false) => b'.',
            },
            match depth {
                0 => b'.',
                1..=15 => b"0123456789abcdef"[depth as usize],
                _ => b'f',
            },
            b'.',
        ]
    }

    /// The record as one line of `/sys/kernel/tracing/trace` (no newline).
    pub fn write_line(&self, out: &mut String) {
        let (_, name) = EVENTS[self.event as usize];
        let flags = self.flags();
        let secs = self.ts_ns / 1_000_000_000;
        let us = self.ts_ns % 1_000_000_000 / 1000;
        let _ = write!(
            out,
            "{:>16}-{:<7} [000] {} {:5}.{:06}: {}: ",
            self.comm(),
            self.pid,
            std::str::from_utf8(&flags).unwrap_or("....."),
            secs,
            us,
            name
        );
        let [a, b, c, d] = self.args;
        let text = self.text();
        // The handler's path, then (workqueue_queue_work) the workqueue's name, NUL-separated.
        let (function, second) = text.split_once('\0').unwrap_or((text, ""));
        let _ = match self.event {
            Event::TimerInit | Event::TimerCancel | Event::TimerExpireExit => {
                write!(out, "timer={a:016x}")
            }
            Event::TimerStart => write!(
                out,
                "timer={a:016x} function={} expires={c} [timeout={}] cpu=0 idx=0 flags=",
                short_name(function),
                c.wrapping_sub(d) as i64
            ),
            Event::TimerExpireEntry => write!(
                out,
                "timer={a:016x} function={} now={c} baseclk={c}",
                short_name(function)
            ),
            Event::IrqHandlerEntry => write!(out, "irq={a} name=timer"),
            Event::IrqHandlerExit => write!(out, "irq={a} ret=handled"),
            Event::SoftirqRaise | Event::SoftirqEntry | Event::SoftirqExit => write!(
                out,
                "vec={a} [action={}]",
                crate::kernel::softirq::SOFTIRQ_NAMES
                    .get(a as usize)
                    .unwrap_or(&"?")
            ),
            Event::TaskletEntry | Event::TaskletExit => {
                write!(out, "tasklet=0x{a:x} function={}", short_name(function))
            }
            Event::WorkqueueQueueWork => write!(
                out,
                "work struct={a:016x} function={} workqueue={second} req_cpu={c} cpu={d}",
                short_name(function)
            ),
            Event::WorkqueueActivateWork => write!(out, "work struct {a:016x}"),
            Event::WorkqueueExecuteStart | Event::WorkqueueExecuteEnd => {
                write!(
                    out,
                    "work struct {a:016x}: function {}",
                    short_name(function)
                )
            }
            Event::TaskNewtask => write!(
                out,
                "pid={} comm={text} clone_flags=3d0f00 oom_score_adj=0",
                a as i32
            ),
            Event::SchedKthreadStop => write!(out, "comm={text} pid={}", a as i32),
            Event::SchedKthreadStopRet => write!(out, "ret={}", a as i64),
            Event::SchedProcessExit => write!(out, "comm={text} pid={} prio=120", a as i32),
            Event::CuseRequest => write!(out, "unique={a} opcode={b} ({text}) pid={}", c as i32),
            Event::CuseReply => write!(out, "unique={a} error={}", b as i64),
            Event::Console => write!(out, "{text}"),
        };
    }
}

static RING: Ring<Record, SLOTS> = Ring::new();

/// Records dropped because the ring was full.
static LOST: AtomicU64 = AtomicU64::new(0);
/// Serialises readers (process context).
static CONSUMER: Mutex<()> = Mutex::new(());

/// Record one event (the slow path of every trace point). Any context: lock-free, no allocation.
#[cold]
#[inline(never)]
fn record(event: Event, args: [u64; 4], text: &[&[u8]]) {
    let ts_ns = crate::kernel::clock::local_clock();
    let task = sched::current();
    let preempt_count = sched::preempt_count();
    let pushed = RING.push(|r| {
        r.event = event;
        r.preempt_count = preempt_count;
        r.pid = task.pid();
        r.comm = task.comm();
        r.ts_ns = ts_ns;
        r.args = args;
        // The pieces, NUL-separated, cut at TEXT_MAX.
        let mut n = 0;
        for (i, piece) in text.iter().enumerate() {
            if i > 0 && n < TEXT_MAX {
                r.text[n] = 0;
                n += 1;
            }
            let k = piece.len().min(TEXT_MAX - n);
            r.text[n..n + k].copy_from_slice(&piece[..k]);
            n += k;
        }
        r.text_len = n as u8;
    });
    if pushed.is_none() {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hand every published record, oldest first, to `f`; returns how many. Process context.
pub fn drain(mut f: impl FnMut(&Record)) -> u64 {
    let _g = CONSUMER.lock().unwrap_or_else(|e| e.into_inner());
    let mut n = 0;
    // SAFETY: CONSUMER is held: ours is the only pop.
    while unsafe { RING.pop(&mut f) }.is_some() {
        n += 1;
    }
    n
}

/// Records dropped so far because the ring was full.
pub fn lost() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// A handler's name: a function returning its path (the runtime's `panic::Name`), called
/// only when the event is on.
pub type Name = fn() -> &'static str;

/// What a trace point records as an address (`%p`): a pointer or a reference.
pub trait Addr {
    /// The address.
    fn address(self) -> u64;
}

impl<T: ?Sized> Addr for *const T {
    fn address(self) -> u64 {
        self.cast::<()>() as usize as u64
    }
}

impl<T: ?Sized> Addr for *mut T {
    fn address(self) -> u64 {
        self.cast::<()>() as usize as u64
    }
}

impl<T: ?Sized> Addr for &T {
    fn address(self) -> u64 {
        (self as *const T).address()
    }
}

// ---------------------------------------------------------------------------------------------
// The trace points. Each costs one relaxed load while its event is off.

/// Defines trace points: `name(params) => Event [four u64 fields], text;`, each a function
/// that records its event when it is on.
macro_rules! tracepoints {
    ($($(#[$doc:meta])* $name:ident($($p:ident: $t:ty),*) => $ev:ident [$($a:expr),*], $text:expr;)*) => {
        $(
            $(#[$doc])*
            #[inline]
            pub fn $name($($p: $t),*) {
                if on(Event::$ev) {
                    record(Event::$ev, [$($a),*], &$text);
                }
            }
        )*
    };
}

tracepoints! {
    /// `timer_init`: a timer was set up.
    timer_init(timer: impl Addr) => TimerInit [timer.address(), 0, 0, 0], [];
    /// `timer_start`: a timer was armed for `expires` (jiffies).
    timer_start(timer: impl Addr, function: Name, expires: u64)
        => TimerStart [timer.address(), 0, expires, jiffies::jiffies()], [function().as_bytes()];
    /// `timer_cancel`: a pending timer was taken off the list (deleted, moved, or expiring).
    timer_cancel(timer: impl Addr) => TimerCancel [timer.address(), 0, 0, 0], [];
    /// `timer_expire_entry`: a timer's handler starts (softirq context).
    timer_expire_entry(timer: impl Addr, function: Name)
        => TimerExpireEntry [timer.address(), 0, jiffies::jiffies(), 0], [function().as_bytes()];
    /// `timer_expire_exit`: a timer's handler returned.
    timer_expire_exit(timer: impl Addr) => TimerExpireExit [timer.address(), 0, 0, 0], [];
    /// `irq_handler_entry`: the timer interrupt (signal handler) starts.
    irq_handler_entry() => IrqHandlerEntry [0, 0, 0, 0], [];
    /// `irq_handler_exit`: the interrupt proper is done (softirqs may follow).
    irq_handler_exit() => IrqHandlerExit [0, 0, 0, 0], [];
    /// `softirq_raise`: softirq `vec` marked pending.
    softirq_raise(vec: usize) => SoftirqRaise [vec as u64, 0, 0, 0], [];
    /// `softirq_entry`: softirq `vec`'s action starts.
    softirq_entry(vec: usize) => SoftirqEntry [vec as u64, 0, 0, 0], [];
    /// `softirq_exit`: softirq `vec`'s action returned.
    softirq_exit(vec: usize) => SoftirqExit [vec as u64, 0, 0, 0], [];
    /// `tasklet_entry`: a tasklet's function starts.
    tasklet_entry(tasklet: impl Addr, function: Name)
        => TaskletEntry [tasklet.address(), 0, 0, 0], [function().as_bytes()];
    /// `tasklet_exit`: a tasklet's function returned.
    tasklet_exit(tasklet: impl Addr, function: Name)
        => TaskletExit [tasklet.address(), 0, 0, 0], [function().as_bytes()];
    /// `workqueue_queue_work`: a work item put on `workqueue`'s worker for `cpu` (requested
    /// from the calling CPU).
    workqueue_queue_work(work: impl Addr, function: Name, workqueue: &str, cpu: usize)
        => WorkqueueQueueWork [
            work.address(), 0, crate::kernel::workqueue::smp_processor_id() as u64, cpu as u64
        ], [function().as_bytes(), workqueue.as_bytes()];
    /// `workqueue_activate_work`: the item is on its worker's list.
    workqueue_activate_work(work: impl Addr) => WorkqueueActivateWork [work.address(), 0, 0, 0], [];
    /// `workqueue_execute_start`: a worker calls the item's function.
    workqueue_execute_start(work: impl Addr, function: Name)
        => WorkqueueExecuteStart [work.address(), 0, 0, 0], [function().as_bytes()];
    /// `workqueue_execute_end`: the item's function returned.
    workqueue_execute_end(work: impl Addr, function: Name)
        => WorkqueueExecuteEnd [work.address(), 0, 0, 0], [function().as_bytes()];
    /// `task_newtask`: a kthread `comm` (thread `pid`) was created (recorded by its creator).
    task_newtask(pid: i32, comm: &str) => TaskNewtask [pid as u64, 0, 0, 0], [comm.as_bytes()];
    /// `sched_kthread_stop`: `kthread_stop` on kthread `comm` (thread `pid`).
    sched_kthread_stop(pid: i32, comm: &str)
        => SchedKthreadStop [pid as u64, 0, 0, 0], [comm.as_bytes()];
    /// `sched_kthread_stop_ret`: `kthread_stop` returns `ret`.
    sched_kthread_stop_ret(ret: i32) => SchedKthreadStopRet [ret as i64 as u64, 0, 0, 0], [];
    /// `sched_process_exit`: the calling kthread `comm` ends.
    sched_process_exit(pid: i32, comm: &str)
        => SchedProcessExit [pid as u64, 0, 0, 0], [comm.as_bytes()];
    /// `cuse_request`: the transport read request `unique` (`opcode`, named `op`) from process
    /// `pid`.
    cuse_request(unique: u64, opcode: u32, op: &str, pid: u32)
        => CuseRequest [unique, opcode as u64, pid as u64, 0], [op.as_bytes()];
    /// `cuse_reply`: the transport answered request `unique` (`error`: 0 or a negative errno).
    cuse_reply(unique: u64, error: i32) => CuseReply [unique, error as i64 as u64, 0, 0], [];
    /// `console`: a printk line.
    console(text: &[u8]) => Console [0, 0, 0, 0], [text];
}

/// A handler's short name from its path, as the kernel's `%ps` prints a symbol:
/// `deferred::modules::deferred::timer_handler` -> `timer_handler`; a closure keeps its parent
/// (`f::{{closure}}`).
pub fn short_name(path: &str) -> &str {
    // The path of a generic function names its parameters: cut at the first `<`.
    let base = &path[..path.find('<').unwrap_or(path.len())];
    let mut parts = base.rsplit("::");
    let last = parts.next().unwrap_or(path);
    if last.starts_with("{{")
        && let Some(parent) = parts.next()
    {
        return &base[base.len() - parent.len() - 2 - last.len()..];
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lists() {
        assert_eq!(parse_events("timer:*"), Ok(0b11111));
        assert_eq!(
            parse_events("timer_start, irq:softirq_entry"),
            Ok(1 << Event::TimerStart as u32 | 1 << Event::SoftirqEntry as u32)
        );
        assert_eq!(parse_events("all"), Ok(ALL));
        assert_eq!(parse_events("*:*"), Ok(ALL));
        let e = parse_events("timer:*,nope").unwrap_err();
        assert!(e.starts_with("no trace event `nope`"), "{e}");
        assert!(parse_events("timer,").is_err());
        assert!(parse_events("sched:timer_start").is_err());
    }

    #[test]
    fn short_names() {
        assert_eq!(
            short_name("deferred::modules::deferred::timer_handler"),
            "timer_handler"
        );
        assert_eq!(short_name("a::b::f::{{closure}}"), "f::{{closure}}");
        assert_eq!(short_name("timer_handler"), "timer_handler");
        assert_eq!(short_name("a::call<b::T>"), "call");
    }

    #[test]
    fn flags_follow_the_context() {
        let mut r = Record::EMPTY;
        assert_eq!(&r.flags(), b".....");
        r.preempt_count = sched::SOFTIRQ_OFFSET;
        assert_eq!(&r.flags(), b"..s..");
        r.preempt_count = sched::HARDIRQ_OFFSET;
        assert_eq!(&r.flags(), b"d.h..");
        r.preempt_count = sched::SOFTIRQ_DISABLE_OFFSET + 1;
        assert_eq!(&r.flags(), b"b..1.");
    }
}
