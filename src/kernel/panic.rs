//! `kernel/panic.c` and the Oops: what happens when a handler panics.
//!
//! Every callback the runtime runs for someone else runs under a guard that records, in
//! per-thread atomics, what runs (a softirq action, a timer handler, a tasklet, a work handler)
//! and its name (the handler function's path, `core::any::type_name` of the function given at
//! setup). A panic hook installed at start (`kernel::start`) reads that record.
//!
//! # A panic in softirq context: an Oops, then `panic()`
//! Timer and tasklet handlers run in the timer signal's handler (or on `ksoftirqd/0`, or in
//! `local_bh_enable`, with the signal blocked). std's panic machinery must not run there: its
//! hook formats, locks stderr and allocates, and unwinding allocates its exception. So:
//! - the hook sees softirq context (the preemption count) and never returns: it writes the
//!   lines printk already holds (the kernel's `console_flush_on_panic`), then an Oops report in
//!   the kernel's words, each line with `write(2)` on stderr from a stack buffer, then ends the
//!   process with `_exit(PANIC_EXIT_CODE)`: the kernel's "Kernel panic - not syncing: Fatal
//!   exception in interrupt". Nothing is unwound, nothing freed, no lock taken.
//! - the message: std formats a `panic!("... {x}")` message into a `String` before it calls the
//!   hook. In softirq context, while that thread panics, the counting allocator
//!   ([`crate::kernel::alloc`]) serves such allocations from a static emergency buffer instead
//!   of the heap (the kernel's panic path also prints from static buffers), so the report has the
//!   message, and no heap allocation is made (the allocator's softirq counters stay 0). Without
//!   the counting allocator installed the message is formatted on the heap.
//! - if the hook was replaced by someone else's, the guard's `catch_unwind` still stops the
//!   unwinding at the handler and writes the same report, without the message.
//!
//! # A panic in a work handler: an Oops, and the worker carries on
//! Work handlers run in process context on `events/N`. As the kernel's Oops in a task, the
//! report is printed (through printk, in order with the rest of the log), with the kernel's
//! `Workqueue: events <handler>` line; the worker catches the unwinding, finishes the item (it
//! is never left RUNNING: flushes, `cancel_work_sync` and `Drop` do not hang) and goes on with
//! the next one.
//!
//! # Ground rules (shared with signal context)
//! - The record is three `const` thread-local atomics; a guard saves the previous record and
//!   restores it on exit, so a timer handler interrupting a work handler on the same thread
//!   is reported as what it is, and the work handler's record is back afterwards.
//! - The softirq report uses only `write(2)`, `_exit(2)`, atomics and stack buffers.

use std::any::Any;
use std::panic::{AssertUnwindSafe, Location, PanicHookInfo};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use crate::kernel::printk;
use crate::kernel::sched::{self, HARDIRQ_MASK, SOFTIRQ_OFFSET};
use crate::kernel::softirq::{SOFTIRQ_NAMES, Softirq};

/// The exit status of the process after a panic in softirq context (`EX_SOFTWARE`).
pub const PANIC_EXIT_CODE: i32 = 70;

/// The name of a handler: a function returning its path (`core::any::type_name::<F>`), one
/// word, so it can be stored in an atomic and read in signal context.
pub(crate) type Name = fn() -> &'static str;

/// The name of the handler type `F`.
pub(crate) fn name_of<F>() -> &'static str {
    std::any::type_name::<F>()
}

/// A handler given as a function (or a closure that captures nothing) is a zero-sized value:
/// the runtime keeps only its type, and makes the value again to call it.
pub(crate) fn conjure<F: Copy + Send + Sync>() -> F {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a handler is a function, or a closure that captures nothing"
        )
    };
    // SAFETY: `F` is zero-sized (checked above): a value of it holds no bytes, so the zeroed
    // one is the only one there is; and `F: Copy`, so making another is what copying the value
    // the caller passed at setup does.
    unsafe { std::mem::zeroed() }
}

/// What runs under a guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Nothing (outside every guard).
    None = 0,
    /// A softirq action (`open_softirq`).
    Softirq = 1,
    /// A `timer_list` handler.
    Timer = 2,
    /// A tasklet.
    Tasklet = 3,
    /// A work handler (process context).
    Work = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::Softirq,
            2 => Kind::Timer,
            3 => Kind::Tasklet,
            4 => Kind::Work,
            _ => Kind::None,
        }
    }

    pub(crate) fn what(self) -> &'static str {
        match self {
            Kind::None => "interrupt context",
            Kind::Softirq => "softirq action",
            Kind::Timer => "timer handler",
            Kind::Tasklet => "tasklet",
            Kind::Work => "work handler",
        }
    }
}

thread_local! {
    /// `kind | vector << 8` of the innermost guard on this thread.
    static CTX: AtomicU32 = const { AtomicU32::new(0) };
    /// Its handler's [`Name`] (0: none).
    static CTX_NAME: AtomicUsize = const { AtomicUsize::new(0) };
    /// For a work handler: its workqueue's name (`&'static str` as address and length).
    static CTX_WQ: [AtomicUsize; 2] = const { [AtomicUsize::new(0), AtomicUsize::new(0)] };
}

/// Oopses so far (the kernel's `die_counter`, the `[#N]` of the report).
static DIE_COUNTER: AtomicU32 = AtomicU32::new(0);
/// The next Oops's number (`[#N]`).
pub(crate) fn die() -> u32 {
    DIE_COUNTER.fetch_add(1, Ordering::SeqCst) + 1
}

/// A panic in softirq context is being reported: a second one waits for the exit.
static PANICKING: AtomicBool = AtomicBool::new(false);

/// A guard's record, restored when it ends.
struct Scope {
    ctx: u32,
    name: usize,
}

fn enter(kind: Kind, vec: usize, name: Option<Name>) -> Scope {
    let scope = Scope {
        ctx: CTX.with(|c| c.load(Ordering::Relaxed)),
        name: CTX_NAME.with(|c| c.load(Ordering::Relaxed)),
    };
    CTX_NAME.with(|c| c.store(name.map_or(0, |f| f as usize), Ordering::Relaxed));
    CTX.with(|c| c.store(kind as u32 | (vec as u32 & 0xff) << 8, Ordering::Relaxed));
    scope
}

impl Drop for Scope {
    fn drop(&mut self) {
        CTX.with(|c| c.store(self.ctx, Ordering::Relaxed));
        CTX_NAME.with(|c| c.store(self.name, Ordering::Relaxed));
    }
}

/// The innermost guard's kind, softirq vector and handler name on this thread.
pub(crate) fn record() -> (Kind, usize, Option<&'static str>) {
    let ctx = CTX.with(|c| c.load(Ordering::Relaxed));
    let name = CTX_NAME.with(|c| c.load(Ordering::Relaxed));
    let name = (name != 0).then(|| {
        // SAFETY: CTX_NAME only ever holds 0 or a `Name` stored by `enter`.
        let f: Name = unsafe { std::mem::transmute::<usize, Name>(name) };
        f()
    });
    (
        Kind::from_u8(ctx as u8),
        ((ctx >> 8) as usize).min(SOFTIRQ_NAMES.len() - 1),
        name,
    )
}

/// Runs a callback in softirq context under the guard: a panic in it ends in the Oops report and
/// `panic()` (see the module docs), never in std's hook or an unwinding out of the handler.
pub(crate) fn softirq_call(kind: Kind, vec: usize, name: Option<Name>, f: impl FnOnce()) {
    let scope = enter(kind, vec, name);
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
        // Only reached when the hook is not ours. Freeing the payload would be a free in softirq
        // context: leave it, the process ends now.
        std::mem::forget(payload);
        oops_in_interrupt(None, None);
    }
    drop(scope);
}

/// Runs a work handler (process context) under the guard: a panic in it is reported as an Oops
/// (by the hook) and stops here. Returns whether it panicked.
pub(crate) fn work_call(name: Name, wq: &'static str, f: impl FnOnce()) -> bool {
    let scope = enter(Kind::Work, 0, Some(name));
    let prev_wq = CTX_WQ.with(|w| {
        let prev = (w[0].load(Ordering::Relaxed), w[1].load(Ordering::Relaxed));
        w[0].store(wq.as_ptr() as usize, Ordering::Relaxed);
        w[1].store(wq.len(), Ordering::Relaxed);
        prev
    });
    let panicked = std::panic::catch_unwind(AssertUnwindSafe(f)).is_err();
    CTX_WQ.with(|w| {
        w[0].store(prev_wq.0, Ordering::Relaxed);
        w[1].store(prev_wq.1, Ordering::Relaxed);
    });
    drop(scope);
    panicked
}

/// The workqueue name recorded by the innermost `work_call` on this thread.
fn record_wq() -> &'static str {
    let (ptr, len) = CTX_WQ.with(|w| (w[0].load(Ordering::Relaxed), w[1].load(Ordering::Relaxed)));
    if ptr == 0 {
        return "?";
    }
    // SAFETY: `work_call` stores the address and length of a `&'static str` (and restores the
    // previous pair, or zero, when it returns).
    unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr as *const u8, len)) }
}

/// Hard or soft interrupt context on this thread (the preemption count). Async-signal-safe,
/// allocation-free (the counting allocator calls it).
#[inline]
pub(crate) fn in_irq_context() -> bool {
    sched::preempt_count() & (HARDIRQ_MASK | SOFTIRQ_OFFSET) != 0
}

/// Installs the panic hook (the runtime's start; once). Panics elsewhere go to the hook that
/// was there before.
pub(crate) fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if in_irq_context() {
                oops_in_interrupt(Some(info.location()).flatten(), message(info.payload()));
            }
            if record().0 == Kind::Work {
                oops_in_work(info);
                return;
            }
            prev(info);
        }));
    });
}

/// The panic's message, if it is a string.
fn message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// A line of the report, built in a stack buffer and written with one `write(2)` on stderr,
/// stamped as the console stamps printk lines. Async-signal-safe.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn new() -> Line {
        let mut l = Line {
            buf: [0; 512],
            len: 0,
        };
        let (stamp, n) = printk::stamp(crate::kernel::clock::local_clock());
        l.bytes(&stamp[..n]);
        l.bytes(b" ");
        l
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Line {
        let n = b.len().min(self.buf.len() - 1 - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        self
    }

    fn str(&mut self, s: &str) -> &mut Line {
        self.bytes(s.as_bytes())
    }

    fn num(&mut self, v: u64) -> &mut Line {
        let (digits, from) = crate::kernel::printk::decimal(v);
        self.bytes(&digits[from..])
    }

    fn write(&mut self) {
        self.buf[self.len] = b'\n';
        write_all(&self.buf[..self.len + 1]);
    }
}

/// `write(2)` all of `b` on stderr (async-signal-safe; gives up on an error other than EINTR).
pub(crate) fn write_all(mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writing from a valid buffer of the given length to fd 2.
        let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            // SAFETY: __errno_location returns this thread's errno slot.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return;
        }
        b = &b[n as usize..];
    }
}

fn line(s: &str) {
    Line::new().str(s).write();
}

/// The Oops report for a panic in softirq context, then the kernel's `panic()`: the process
/// exits with [`PANIC_EXIT_CODE`]. Async-signal-safe: stack buffers, `write(2)`, `_exit(2)`.
pub(crate) fn oops_in_interrupt(loc: Option<&Location<'_>>, msg: Option<&str>) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        halt();
    }
    let (kind, vec, name) = record();
    let task = sched::current();
    let die = DIE_COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    // What printk already holds comes first, as on the kernel's console.
    printk::flush_on_panic();
    line("------------[ cut here ]------------");
    if let Some(loc) = loc {
        Line::new()
            .str("kernel BUG at ")
            .str(loc.file())
            .str(":")
            .num(loc.line().into())
            .str("!")
            .write();
    }
    Line::new()
        .str("BUG: kernel panic in softirq context: ")
        .str(msg.unwrap_or("(no message: the panic hook was replaced)"))
        .write();
    let mut l = Line::new();
    l.str("Oops: Rust panic [#").num(die.into()).str("] in ");
    match (kind, name) {
        (Kind::None, _) => l.str("interrupt context"),
        (Kind::Softirq, _) => l.str(kind.what()).str(" ").str(SOFTIRQ_NAMES[vec]),
        (_, n) => l.str(kind.what()).str(" ").str(n.unwrap_or("?")),
    };
    l.write();
    Line::new()
        .str("CPU: 0 PID: ")
        .num(task.pid() as u64)
        .str(" Comm: ")
        .str(task.comm().as_str())
        .write();
    line("Call Trace:");
    line(" <IRQ>");
    match kind {
        Kind::Timer => {
            Line::new().str(" ").str(name.unwrap_or("?")).write();
            line(" call_timer_fn");
            line(" run_timer_softirq");
        }
        Kind::Tasklet => {
            Line::new().str(" ").str(name.unwrap_or("?")).write();
            line(" tasklet_action_common");
            line(if vec == Softirq::Hi as usize {
                " tasklet_hi_action"
            } else {
                " tasklet_action"
            });
        }
        Kind::Softirq => {
            Line::new()
                .str(" ")
                .str(SOFTIRQ_NAMES[vec])
                .str(" softirq action")
                .write();
        }
        Kind::None | Kind::Work => {}
    }
    if kind != Kind::None {
        line(" __do_softirq");
    }
    line(" </IRQ>");
    line("---[ end trace 0000000000000000 ]---");
    let heap = crate::kernel::alloc::softirq_allocations();
    if heap != 0 {
        Line::new()
            .str("BUG: ")
            .num(heap)
            .str(" allocations were made in softirq context")
            .write();
    }
    panic_lines("Fatal exception in interrupt")
}

/// The kernel's `panic(reason)` from softirq context, where going on is unsound: the lines
/// printk holds, `Kernel panic - not syncing: <reason>`, and the exit with
/// [`PANIC_EXIT_CODE`]. Async-signal-safe.
pub(crate) fn panic_in_interrupt(reason: &str) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        halt();
    }
    printk::flush_on_panic();
    panic_lines(reason)
}

fn panic_lines(reason: &str) -> ! {
    Line::new()
        .str("Kernel panic - not syncing: ")
        .str(reason)
        .write();
    Line::new()
        .str("---[ end Kernel panic - not syncing: ")
        .str(reason)
        .str(" ]---")
        .write();
    // SAFETY: _exit(2) is async-signal-safe and ends the process (no destructor, no atexit).
    unsafe { libc::_exit(PANIC_EXIT_CODE) }
}

/// Another thread is reporting a panic and ends the process: stop here, as a halted CPU.
fn halt() -> ! {
    loop {
        // SAFETY: pause(2) has no preconditions and is async-signal-safe.
        unsafe { libc::pause() };
    }
}

/// The Oops report for a panic in a work handler (process context: printk, formatting).
fn oops_in_work(info: &PanicHookInfo<'_>) {
    let (_, _, name) = record();
    let name = name.unwrap_or("?");
    let task = sched::current();
    let die = DIE_COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    crate::pr_alert!("------------[ cut here ]------------");
    if let Some(loc) = info.location() {
        crate::pr_alert!("kernel BUG at {}:{}!", loc.file(), loc.line());
    }
    crate::pr_alert!(
        "BUG: work handler panicked: {}",
        message(info.payload()).unwrap_or("(no message)")
    );
    crate::pr_alert!("Oops: Rust panic [#{die}] in work handler {name}");
    crate::pr_alert!("CPU: 0 PID: {} Comm: {}", task.pid(), task.comm());
    crate::pr_alert!("Workqueue: {} {name}", record_wq());
    crate::pr_alert!("---[ end trace 0000000000000000 ]---");
}

/// The kernel's `__warn`: a cut-here block naming the task and the caller's location; taints
/// the kernel (`TAINT_WARN`: the daemon exits 1, [`crate::kernel::bug`]). Any context (printk
/// only).
pub fn warn_at(loc: &Location<'_>, what: &str) {
    crate::kernel::bug::add_taint(crate::kernel::bug::TAINT_WARN);
    let t = sched::current();
    crate::pr_warn!("------------[ cut here ]------------");
    crate::pr_warn!(
        "WARNING: CPU: 0 PID: {} at {}:{} {}",
        t.pid(),
        loc.file(),
        loc.line(),
        what
    );
    crate::pr_warn!("---[ end trace 0000000000000000 ]---");
}
