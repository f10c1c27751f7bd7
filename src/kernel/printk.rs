//! printk: the kernel log, writable from any context, the timer signal's handler included.
//!
//! `pr_info!` and friends format with `core::fmt` into a fixed buffer on the caller's stack
//! (truncating at [`LINE_MAX`] bytes, never allocating), stamp the line with the nanoseconds since
//! the runtime started and its level, and push it into a preallocated lock-free ring. A console
//! thread (`printk`) drains the ring as dmesg lines:
//!
//! ```text
//! [    3.825922] [timer_handler] pid = 0, comm = swapper/1
//! ```
//!
//! Where they go: to a registered console ([`register_console`], as the daemon does: its stderr,
//! with the kernel's `console_loglevel`), one `write` per drained batch, the lines formatted
//! straight into a reused buffer; without one, each line to the `log` crate (target `"printk"`).
//!
//! When the ring is full the line is dropped and counted; the console reports the count in the
//! kernel's words, `** N printk messages dropped **`, before the next line it prints.
//!
//! # Ground rules (the ring, shared with signal context)
//! - The ring is a bounded MPSC queue (Vyukov's) and the console's wake-up a doorbell, both in
//!   [`crate::kernel::sync::ring`], whose ground rules they follow (and whose loom models check
//!   them). A producer never waits: a full ring drops the line and counts it in `DROPPED`.
//! - The consumer side is serialised by `CONSUMER` (a std mutex: process context only, the
//!   console thread or [`flush`]).
//! - The doorbell's sleep and wake are `futex(2)` calls (a plain syscall, async-signal-safe).
//!   The console never polls on a timer.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::kernel::jiffies;
use crate::kernel::sync::ring::{self, Doorbell, Ring};
use crate::sys::futex;

/// Longest line kept (bytes); longer lines are truncated on a character boundary.
pub const LINE_MAX: usize = ring::LINE_MAX;
/// Slots in the ring.
pub const SLOTS: usize = 2048;

/// Log levels, the kernel's `KERN_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// `KERN_EMERG`
    Emerg = 0,
    /// `KERN_ALERT`
    Alert = 1,
    /// `KERN_CRIT`
    Crit = 2,
    /// `KERN_ERR`
    Err = 3,
    /// `KERN_WARNING`
    Warning = 4,
    /// `KERN_NOTICE`
    Notice = 5,
    /// `KERN_INFO`
    Info = 6,
    /// `KERN_DEBUG`
    Debug = 7,
}

impl Level {
    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Emerg,
            1 => Level::Alert,
            2 => Level::Crit,
            3 => Level::Err,
            4 => Level::Warning,
            5 => Level::Notice,
            6 => Level::Info,
            _ => Level::Debug,
        }
    }

    /// The `log` crate's level for it (printk lines handed to `log` use this, target `"printk"`).
    pub fn log_level(self) -> log::Level {
        match self {
            Level::Emerg | Level::Alert | Level::Crit | Level::Err => log::Level::Error,
            Level::Warning => log::Level::Warn,
            Level::Notice | Level::Info => log::Level::Info,
            Level::Debug => log::Level::Debug,
        }
    }
}

/// The ring and its algorithm: [`crate::kernel::sync::ring`] (model-checked under loom).
static RING: Ring<ring::Record, SLOTS> = Ring::new();
/// Rung after each publish; the console sleeps on it when idle.
static BELL: Doorbell = Doorbell::new();

/// Lines lost because the ring was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Futex word bumped when the ring reaches half full: wakes a console letting lines gather.
static URGENT: AtomicU32 = AtomicU32::new(0);
static CONSOLE_STARTED: AtomicBool = AtomicBool::new(false);
/// The registered console's lowest priority plus one (0: none registered; 255: prints nothing),
/// for [`flush_on_panic`], which cannot take `CONSUMER`.
static CONSOLE_LEVEL: AtomicU8 = AtomicU8::new(0);
/// Ring position up to which drained lines have been written out (the console's batch
/// included): [`flush_on_panic`] starts there, not at `head`, so a line drained but not yet
/// written when the process ends is written by the panic path.
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Consumer-side state: serialises draining (process context only).
struct Consumer {
    dropped_reported: u64,
    /// The registered console, if any, and the lowest priority it prints.
    console: Option<(Box<dyn std::io::Write + Send>, Option<Level>)>,
    /// Lines formatted for the console, written at the end of each drain.
    batch: Vec<u8>,
}
static CONSUMER: Mutex<Consumer> = Mutex::new(Consumer {
    dropped_reported: 0,
    console: None,
    batch: Vec::new(),
});

/// A console's batch is written out once it holds this much, even mid-drain.
const BATCH_MAX: usize = 64 * 1024;

impl Consumer {
    /// Hands one line on: to the captures (if any), and to the console or to `log`.
    fn print(&mut self, level: Level, ts_ns: u64, text: &[u8]) {
        if CAPTURES.load(Ordering::Relaxed) > 0 {
            let line = Line {
                level,
                ts_ns,
                text: String::from_utf8_lossy(text).into_owned(),
            };
            let subs = SUBSCRIBERS.lock().unwrap_or_else(|e| e.into_inner());
            for s in subs.iter() {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.clone());
            }
        }
        match &self.console {
            Some((_, max)) => {
                if max.is_some_and(|max| level <= max) {
                    let (stamp, n) = Stamp(ts_ns).bytes();
                    self.batch.extend_from_slice(&stamp[..n]);
                    self.batch.push(b' ');
                    self.batch.extend_from_slice(text);
                    self.batch.push(b'\n');
                    if self.batch.len() >= BATCH_MAX {
                        self.write_batch();
                    }
                }
            }
            None => {
                if log::log_enabled!(target: "printk", level.log_level()) {
                    let text = String::from_utf8_lossy(text);
                    log::log!(target: "printk", level.log_level(), "{} {text}", Stamp(ts_ns));
                }
            }
        }
    }

    /// Writes the console's batch out (one `write`, unless the writer splits it).
    fn write_batch(&mut self) {
        if let Some((out, _)) = &mut self.console
            && !self.batch.is_empty()
        {
            // A console that cannot be written (closed stderr) loses its lines, as a kernel
            // console does; nothing else depends on them.
            let _ = out.write_all(&self.batch);
            let _ = out.flush();
        }
        self.batch.clear();
    }
}

/// The kernel's `register_console()` with its `console_loglevel`: from now on the console thread
/// writes every line of priority `max` or higher (`Some(Level::Info)`: all but debug; `None`:
/// none) to `out`, a drained batch at a time, instead of handing each line to the `log` crate.
/// Captures ([`capture`]) still see every line. Process context.
pub fn register_console(out: Box<dyn std::io::Write + Send>, max: Option<Level>) {
    let mut c = CONSUMER.lock().unwrap_or_else(|e| e.into_inner());
    c.write_batch();
    c.console = Some((out, max));
    CONSOLE_LEVEL.store(max.map_or(255, |l| l as u8 + 1), Ordering::Relaxed);
}

type Sink = Arc<Mutex<Vec<Line>>>;
static SUBSCRIBERS: Mutex<Vec<Sink>> = Mutex::new(Vec::new());
/// How many captures live (the console skips building [`Line`]s when none does).
static CAPTURES: AtomicUsize = AtomicUsize::new(0);

/// One printed line, as the console hands it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Its level.
    pub level: Level,
    /// Nanoseconds since the runtime started, when it was printed.
    pub ts_ns: u64,
    /// The message, without the timestamp.
    pub text: String,
}

impl Line {
    /// The line as dmesg shows it: `[    3.825922] message`.
    pub fn dmesg(&self) -> String {
        format!("{} {}", Stamp(self.ts_ns), self.text)
    }
}

/// dmesg's timestamp, `[    3.825922]`: seconds and microseconds since the runtime started.
struct Stamp(u64);

impl Stamp {
    /// The stamp's bytes, as `format!("[{s:5}.{us:06}]")` writes them, without `core::fmt`
    /// (the console writes one per line: this is most of its work per line). Written left to
    /// right into place, two digits at a time where the width is known.
    fn bytes(&self) -> ([u8; 32], usize) {
        /// "00" to "99".
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        fn pair(b: &mut [u8], at: usize, v: u32) {
            let v = v as usize * 2;
            b[at..at + 2].copy_from_slice(&PAIRS[v..v + 2]);
        }
        let s = self.0 / 1_000_000_000;
        let us = ((self.0 % 1_000_000_000) / 1000) as u32;
        // The seconds' width: at least 5 (space-padded on the left), wider if need be.
        let mut width = 5;
        let mut rest = s / 100_000;
        while rest > 0 {
            width += 1;
            rest /= 10;
        }
        let mut b = [b' '; 32];
        b[0] = b'[';
        // The seconds, right-aligned in b[1..=width].
        let (mut i, mut s) = (width + 1, s);
        loop {
            i -= 1;
            b[i] = b'0' + (s % 10) as u8;
            s /= 10;
            if s == 0 {
                break;
            }
        }
        b[width + 1] = b'.';
        pair(&mut b, width + 2, us / 10_000);
        pair(&mut b, width + 4, us / 100 % 100);
        pair(&mut b, width + 6, us % 100);
        b[width + 8] = b']';
        (b, width + 9)
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, n) = self.bytes();
        // ASCII by construction.
        f.write_str(std::str::from_utf8(&b[..n]).unwrap_or("[?]"))
    }
}

/// A stack buffer that `core::fmt` writes into, truncating on a character boundary.
struct LineBuf {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE_MAX - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        // Never an error: truncation is silent (an error would make `write` stop early anyway).
        Ok(())
    }
}

/// Push one line into the ring. Async-signal-safe, lock-free, never allocates.
/// Returns false if the ring was full (the line is counted as dropped).
pub fn push(level: Level, ts_ns: u64, text: &[u8]) -> bool {
    let pushed = RING.push(|r| {
        let n = text.len().min(LINE_MAX);
        r.level = level as u8;
        r.ts_ns = ts_ns;
        r.len = n as u16;
        r.text[..n].copy_from_slice(&text[..n]);
    });
    let Some(pos) = pushed else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    BELL.ring();
    // The line that fills the ring to half wakes the console even while it lets lines gather
    // (one producer claims that position: one wake-up).
    if (pos + 1).wrapping_sub(RING.head()) == HALF_FULL {
        URGENT.fetch_add(1, Ordering::SeqCst);
        futex::wake(&URGENT, i32::MAX);
    }
    true
}

/// Format and push one line: the body of every `pr_*!` macro. Usable from any context.
pub fn printk(level: Level, args: fmt::Arguments<'_>) {
    let ts = jiffies::uptime_ns();
    let mut line = LineBuf {
        buf: [0; LINE_MAX],
        len: 0,
    };
    match args.as_str() {
        Some(s) => {
            let _ = line.write_str(s);
        }
        None => {
            let _ = fmt::write(&mut line, args);
        }
    }
    let mut n = line.len;
    if n > 0 && line.buf[n - 1] == b'\n' {
        n -= 1;
    }
    crate::kernel::trace::console(&line.buf[..n]);
    push(level, ts, &line.buf[..n]);
}

/// Lines dropped so far because the ring was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Drain published lines up to position `until` (or while lines are ready when `until` is None).
/// Process context; the caller holds `CONSUMER`.
fn drain(c: &mut Consumer, until: Option<u64>) {
    drain_ring(c, until);
    c.write_batch();
    WRITTEN.store(RING.head(), Ordering::Release);
}

fn drain_ring(c: &mut Consumer, until: Option<u64>) {
    let deadline = jiffies::monotonic_ns() + 1_000_000_000;
    loop {
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped != c.dropped_reported {
            let n = dropped - c.dropped_reported;
            c.dropped_reported = dropped;
            let text = format!("** {n} printk messages dropped **");
            c.print(Level::Warning, jiffies::uptime_ns(), text.as_bytes());
        }
        if until.is_some_and(|u| RING.head() >= u) {
            return;
        }
        // SAFETY: we are the only consumer (the caller holds CONSUMER).
        let printed = unsafe { RING.pop(|r| c.print(Level::from_u8(r.level), r.ts_ns, r.text())) };
        if printed.is_none() {
            // Not published yet.
            if until.is_none() || jiffies::monotonic_ns() > deadline {
                return;
            }
            std::thread::yield_now();
        }
    }
}

/// dmesg's stamp of `ns` since start, `[    3.825922]`, as bytes (async-signal-safe).
pub(crate) fn stamp(ns: u64) -> ([u8; 32], usize) {
    Stamp(ns).bytes()
}

/// The kernel's `console_flush_on_panic()`: write every line still in the ring to stderr as
/// dmesg lines, one `write(2)` each, without the console lock (its holder may be the very
/// thread that panicked, interrupted), from the last line known written (lines the console
/// drained but had not written yet are written here; one it was writing may come twice). Filtered by the registered console's level (without one: all but debug).
/// Async-signal-safe: for the panic path only, which exits right after.
pub(crate) fn flush_on_panic() {
    let max = match CONSOLE_LEVEL.load(Ordering::Relaxed) {
        0 => Level::Info as u8,
        255 => return,
        l => l - 1,
    };
    let tail = RING.tail();
    let mut pos = WRITTEN.load(Ordering::Acquire);
    while pos < tail {
        let mut line = [0u8; 32 + 1 + LINE_MAX + 1];
        // SAFETY: the panic path accepts that one last race (see `Ring::peek`): the process
        // ends right after, and a slot is plain bytes, so at worst a garbled line.
        let len = unsafe {
            RING.peek(pos, |r| {
                if r.level > max {
                    return 0;
                }
                let (stamp, n) = Stamp(r.ts_ns).bytes();
                let text = r.text();
                line[..n].copy_from_slice(&stamp[..n]);
                line[n] = b' ';
                line[n + 1..n + 1 + text.len()].copy_from_slice(text);
                line[n + 1 + text.len()] = b'\n';
                n + text.len() + 2
            })
        };
        if let Some(len) = len.filter(|&l| l > 0) {
            crate::kernel::panic::write_all(&line[..len]);
        }
        pos += 1;
    }
}

/// Wait until every line pushed before this call has been handed to `log` (and to captures).
/// Process context only.
pub fn flush() {
    let target = RING.tail();
    let mut c = CONSUMER.lock().unwrap_or_else(|e| e.into_inner());
    drain(&mut c, Some(target));
}

/// Holds the console: nothing is drained while the guard lives (the kernel's `console_lock()`).
/// Lines keep going into the ring and are dropped (and counted) once it is full.
#[must_use]
pub struct ConsoleLockGuard(#[allow(dead_code)] MutexGuard<'static, Consumer>);

/// The kernel's `console_lock()`: stop the console from printing until the guard drops.
/// Process context only.
pub fn console_lock() -> ConsoleLockGuard {
    ConsoleLockGuard(CONSUMER.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Start the console thread (`printk`). Idempotent.
pub fn start_console() {
    if CONSOLE_STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("printk".into())
        .spawn(console_thread);
    if spawned.is_err() {
        CONSOLE_STARTED.store(false, Ordering::SeqCst);
    }
}

/// How long the console lets lines gather once it has printed some: 5 jiffies (20 ms), or until
/// the ring is half full, whichever comes first. While it waits this way it does not announce
/// itself as sleeping, so producers skip the futex wake; a busy device costs 50 console
/// wake-ups a second instead of one a line (each wake-up of a timed sleep costs ~100 us of
/// system time in the TCG VM). Timestamps are taken when a line is printed, not when it is
/// written, so the batching never shows in the log; a line reaches stderr at most 20 ms late.
const CONSOLE_BATCH_NS: u64 = 5 * jiffies::NSEC_PER_JIFFY;
/// The gathering time in force ([`CONSOLE_BATCH_NS`] unless a test changed it).
static CONSOLE_BATCH: AtomicU64 = AtomicU64::new(CONSOLE_BATCH_NS);

/// Sets how long the console lets lines gather (`None`: the default, 5 jiffies), from the next
/// gathering on. For tests: a gathering longer than any test makes the half-full wake-up the
/// only way the console can come back early.
#[doc(hidden)]
pub fn set_console_batch(ns: Option<u64>) {
    CONSOLE_BATCH.store(ns.unwrap_or(CONSOLE_BATCH_NS), Ordering::SeqCst);
}
/// Lines in the ring that cut the console's gathering short.
const HALF_FULL: u64 = SLOTS as u64 / 2;

fn console_thread() {
    crate::kernel::sched::set_comm("printk");
    loop {
        let seen = BELL.seen();
        // Read before draining: the ring reaching half full while the drain runs must cut the
        // gathering below short too.
        let urgent = URGENT.load(Ordering::SeqCst);
        {
            let mut c = CONSUMER.lock().unwrap_or_else(|e| e.into_inner());
            drain(&mut c, None);
        }
        // Lines came: let the next ones gather, unannounced (no wake-ups needed), unless the
        // ring fills to half first.
        let deadline = jiffies::monotonic_ns() + CONSOLE_BATCH.load(Ordering::SeqCst);
        while URGENT.load(Ordering::SeqCst) == urgent && jiffies::monotonic_ns() < deadline {
            futex::wait(&URGENT, urgent, Some(deadline));
        }
        if BELL.seen() != seen {
            continue;
        }
        // Quiet for a while: sleep until woken (tickless when idle).
        BELL.sleep(seen);
    }
}

/// A capture of printed lines, for tests: every line the console hands on while it lives.
pub struct Capture {
    sink: Sink,
}

/// Start capturing printed lines (process context).
pub fn capture() -> Capture {
    let sink: Sink = Arc::new(Mutex::new(Vec::new()));
    SUBSCRIBERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(sink.clone());
    CAPTURES.fetch_add(1, Ordering::Relaxed);
    Capture { sink }
}

impl Capture {
    /// Flush, then return every captured line so far.
    pub fn lines(&self) -> Vec<Line> {
        flush();
        self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Flush, then return the captured messages (text only).
    pub fn texts(&self) -> Vec<String> {
        self.lines().into_iter().map(|l| l.text).collect()
    }

    /// Flush, then tell whether some captured message contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.text.contains(needle))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let mut subs = SUBSCRIBERS.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !Arc::ptr_eq(s, &self.sink));
        CAPTURES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `pr_emerg!`: print at `KERN_EMERG`. Any context.
#[macro_export]
macro_rules! pr_emerg {
    ($($arg:tt)*) => {
        $crate::kernel::printk::printk($crate::kernel::printk::Level::Emerg, ::core::format_args!($($arg)*))
    };
}

/// `pr_alert!`: print at `KERN_ALERT`. Any context.
#[macro_export]
macro_rules! pr_alert {
    ($($arg:tt)*) => {
        $crate::kernel::printk::printk($crate::kernel::printk::Level::Alert, ::core::format_args!($($arg)*))
    };
}

/// `pr_crit!`: print at `KERN_CRIT`. Any context.
#[macro_export]
macro_rules! pr_crit {
    ($($arg:tt)*) => {
        $crate::kernel::printk::printk($crate::kernel::printk::Level::Crit, ::core::format_args!($($arg)*))
    };
}

/// `pr_err!`: print at `KERN_ERR`. Any context.
#[macro_export]
macro_rules! pr_err {
    ($($arg:tt)*) => {
        $crate::kernel::printk::printk($crate::kernel::printk::Level::Err, ::core::format_args!($($arg)*))
    };
}

/// `pr_warn!`: print at `KERN_WARNING`. Any context.
#[macro_export]
macro_rules! pr_warn {
    ($($arg:tt)*) => {
        $crate::kernel::printk::printk($crate::kernel::printk::Level::Warning, ::core::format_args!($($arg)*))
    };
}

/// `pr_notice!`: print at `KERN_NOTICE`. Any context.
#[macro_export]
macro_rules! pr_notice {
    ($($arg:tt)*) => {
        $crate::kernel::printk::printk($crate::kernel::printk::Level::Notice, ::core::format_args!($($arg)*))
    };
}

/// `pr_info!`: print at `KERN_INFO`. Any context.
#[macro_export]
macro_rules! pr_info {
    ($($arg:tt)*) => {
        $crate::kernel::printk::printk($crate::kernel::printk::Level::Info, ::core::format_args!($($arg)*))
    };
}

/// `pr_debug!`: print at `KERN_DEBUG` (the console hands it to `log` at debug level). Any context.
#[macro_export]
macro_rules! pr_debug {
    ($($arg:tt)*) => {
        $crate::kernel::printk::printk($crate::kernel::printk::Level::Debug, ::core::format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_dmesgs() {
        for ns in [
            0u64,
            999,
            1_000,
            3_825_922_000,
            59_999_999_999,
            99_999_999_999_000,
            100_000_000_000_000,
            123_456_789_012_345_678,
            u64::MAX,
        ]
        .into_iter()
        // Every width of the seconds, and every digit position of the microseconds, at its
        // edges (10^k - 1 and 10^k ns) and in between.
        .chain((0..20).flat_map(|k| {
            let p = 10u64.pow(k);
            [p - 1, p, p.saturating_mul(7).saturating_add(p / 3)]
        })) {
            let (s, us) = (ns / 1_000_000_000, (ns % 1_000_000_000) / 1000);
            assert_eq!(Stamp(ns).to_string(), format!("[{s:5}.{us:06}]"), "{ns} ns");
        }
        assert_eq!(Stamp(3_825_922_000).to_string(), "[    3.825922]");
    }
}
