//! printk: the kernel log, writable from any context, the timer signal's handler included.
//!
//! `pr_info!` and friends stamp the line with the nanoseconds since the runtime started and its
//! level, and push it into a preallocated lock-free ring, never allocating. A line whose format
//! string has only plain `{}`s (the common case: `pr_info!("pid = {}, comm = {}", pid, comm)`)
//! is not formatted by its caller: the record keeps the static format string and the arguments
//! by value (integers, `bool`, `char`, strings' bytes; any other `Display` argument is
//! formatted on its own into the record), and the console makes the line, as the kernel's
//! binary printk (`vbin_printf` / `bstr_printf`) does for `trace_printk`. Other lines
//! (`{name}`, `{:x}`, `{:?}`, ...) are formatted with `core::fmt` into a fixed buffer on the
//! caller's stack. Either way a line is cut at [`LINE_MAX`] bytes on a character boundary, and
//! a trailing newline is dropped. A console thread (`printk`) drains the ring as dmesg lines:
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

#[doc(hidden)]
pub mod args;

use crate::kernel::sync::ring::{self, Doorbell, Ring};
use crate::kernel::{clock, jiffies};
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
    /// Whether a line of `level` goes anywhere (a capture, the console, `log`).
    fn wants(&self, level: Level) -> bool {
        CAPTURES.load(Ordering::Relaxed) > 0
            || match &self.console {
                Some((_, max)) => max.is_some_and(|max| level <= max),
                None => log::log_enabled!(target: "printk", level.log_level()),
            }
    }

    /// Hands one record's line on, made from its template if it has one, where it goes: straight
    /// into the console's batch when that is its only way.
    fn print_record(&mut self, r: &ring::Record) {
        let level = Level::from_u8(r.level);
        if !self.wants(level) {
            return;
        }
        if CAPTURES.load(Ordering::Relaxed) == 0 && self.console.is_some() {
            self.console_line(r.ts_ns, |out| r.write_line(out));
            return;
        }
        let mut line = LineBuf::new();
        r.write_line(&mut line);
        self.print(level, r.ts_ns, line.line());
    }

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
                    self.console_line(ts_ns, |out| out.write_bytes(text));
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

    /// Appends a dmesg line to the console's batch, its message made by `make` in place (cut at
    /// [`LINE_MAX`], without a trailing newline); writes the batch out once it is large.
    fn console_line(&mut self, ts_ns: u64, make: impl FnOnce(&mut BatchLine<'_>)) {
        let (stamp, n) = Stamp(ts_ns).bytes();
        // Room for the whole line at once: the message's pieces then append without growing.
        self.batch.reserve(n + 1 + LINE_MAX + 1);
        self.batch.extend_from_slice(&stamp[..n]);
        self.batch.push(b' ');
        let start = self.batch.len();
        make(&mut BatchLine {
            batch: &mut self.batch,
            start,
        });
        if self.batch.len() > start && self.batch.last() == Some(&b'\n') {
            self.batch.pop();
        }
        self.batch.push(b'\n');
        if self.batch.len() >= BATCH_MAX {
            self.write_batch();
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

/// Where a line's message is made: bytes appended and cut at [`LINE_MAX`] on a character
/// boundary.
trait LineOut {
    /// The message's length so far.
    fn len(&self) -> usize;
    /// Appends `bytes` (all of them: the caller cut them to fit).
    fn append(&mut self, bytes: &[u8]);

    /// Appends UTF-8 `bytes`, cut on a character boundary where the message is full.
    fn write_bytes(&mut self, bytes: &[u8]) {
        let room = LINE_MAX - self.len();
        let mut n = bytes.len().min(room);
        // A cut before a continuation byte (0b10xx_xxxx) would split a character.
        while n < bytes.len() && n > 0 && bytes[n] & 0xc0 == 0x80 {
            n -= 1;
        }
        self.append(&bytes[..n]);
    }
}

/// A stack buffer that a line is made in (by `core::fmt`, or by [`args`]' formatting).
struct LineBuf {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl LineBuf {
    const fn new() -> LineBuf {
        LineBuf {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    /// The line made, without a trailing newline.
    fn line(&self) -> &[u8] {
        let n = self.len;
        if n > 0 && self.buf[n - 1] == b'\n' {
            &self.buf[..n - 1]
        } else {
            &self.buf[..n]
        }
    }
}

impl LineOut for LineBuf {
    fn len(&self) -> usize {
        self.len
    }

    fn append(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        // Never an error: truncation is silent (an error would make `write` stop early anyway).
        Ok(())
    }
}

/// A message made at the end of the console's batch, from `start`.
struct BatchLine<'a> {
    batch: &'a mut Vec<u8>,
    start: usize,
}

impl LineOut for BatchLine<'_> {
    fn len(&self) -> usize {
        self.batch.len() - self.start
    }

    fn append(&mut self, bytes: &[u8]) {
        self.batch.extend_from_slice(bytes);
    }
}

/// Push one line into the ring. Async-signal-safe, lock-free, never allocates.
/// Returns false if the ring was full (the line is counted as dropped).
pub fn push(level: Level, ts_ns: u64, text: &[u8]) -> bool {
    push_record(|r| {
        r.level = level as u8;
        r.ts_ns = ts_ns;
        r.set_text(text);
    })
}

/// Push one record written by `fill`, ring the console's bell; count it if the ring is full.
/// Async-signal-safe, lock-free, never allocates.
fn push_record(fill: impl FnOnce(&mut ring::Record)) -> bool {
    let Some(pos) = RING.push(fill) else {
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
    let ts = clock::local_clock();
    let mut line = LineBuf::new();
    match args.as_str() {
        Some(s) => {
            let _ = line.write_str(s);
        }
        None => {
            let _ = fmt::write(&mut line, args);
        }
    }
    crate::kernel::trace::console(line.line());
    push(level, ts, line.line());
}

/// Push one line whose making is left to the console: `template` (a format string with only
/// plain `{}`s, one per argument, cut at compile time; see [`args::pieces`]) and its
/// arguments, captured by value.
/// The body of the `pr_*!` macros for such lines. Usable from any context: lock-free, no
/// allocation, and no `core::fmt` unless an argument is neither an integer, `bool`, `char` nor
/// a string, or the line is traced (`printk:console` on: the event carries the line).
#[doc(hidden)]
pub fn printk_args(level: Level, template: &'static [args::Piece], vals: &[args::Val<'_>]) {
    let ts = clock::local_clock();
    if crate::kernel::trace::console_on() {
        let mut line = LineBuf::new();
        args::format_vals(template, vals, &mut line);
        crate::kernel::trace::console(line.line());
        push(level, ts, line.line());
        return;
    }
    push_record(|r| {
        r.level = level as u8;
        r.ts_ns = ts;
        match args::encode(vals, &mut r.text) {
            Some(n) => {
                r.template = Some(template);
                r.len = n as u16;
            }
            None => {
                // The arguments do not fit encoded: the line is made here (and cut, as any).
                let mut line = LineBuf::new();
                args::format_vals(template, vals, &mut line);
                r.set_text(line.line());
            }
        }
    });
}

impl ring::Record {
    /// Makes `text` (cut at [`LINE_MAX`]) the record's message.
    fn set_text(&mut self, text: &[u8]) {
        let n = text.len().min(LINE_MAX);
        self.template = None;
        self.len = n as u16;
        self.text[..n].copy_from_slice(&text[..n]);
    }

    /// Writes the record's message: its text, or its template filled with its arguments.
    /// Async-signal-safe into a [`LineBuf`] (no `core::fmt`, no allocation): the panic path
    /// uses it.
    fn write_line(&self, out: &mut impl LineOut) {
        match self.template {
            None => out.write_bytes(self.text()),
            Some(template) => args::format_encoded(template, self.text(), out),
        }
    }
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
            c.print(Level::Warning, clock::local_clock(), text.as_bytes());
        }
        if until.is_some_and(|u| RING.head() >= u) {
            return;
        }
        // SAFETY: we are the only consumer (the caller holds CONSUMER).
        let printed = unsafe { RING.pop(|r| c.print_record(r)) };
        if printed.is_none() {
            // Not published yet.
            if until.is_none() || jiffies::monotonic_ns() > deadline {
                return;
            }
            std::thread::yield_now();
        }
    }
}

/// `v`'s decimal digits: they are `digits[from..]` of the `(digits, from)` returned. No
/// `core::fmt`: async-signal-safe.
pub(crate) fn decimal(mut v: u64) -> ([u8; 20], usize) {
    let mut digits = [0u8; 20];
    let mut from = digits.len();
    loop {
        from -= 1;
        digits[from] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return (digits, from);
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
                let mut buf = LineBuf::new();
                r.write_line(&mut buf);
                let text = buf.line();
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
/// written, so the batching never shows in the log; a line reaches stderr at most 20 ms late,
/// or in a flood ([`next_gathering`]) at most [`CONSOLE_BATCH_MAX_NS`].
const CONSOLE_BATCH_NS: u64 = 5 * jiffies::NSEC_PER_JIFFY;
/// The longest gathering, in a flood of lines: 50 jiffies (200 ms), 5 console wake-ups a second.
/// A flood of more than 5,120 lines a second fills the ring to half (1,024 lines) sooner: then
/// that wake-up ends each gathering, and the other half of the ring is the console's time to
/// wake and drain before a line is dropped (57 ms at the 18,000 lines a second of eight clients
/// in the TCG VM), as it was before gatherings grew.
const CONSOLE_BATCH_MAX_NS: u64 = 50 * jiffies::NSEC_PER_JIFFY;
/// Lines a second that make a flood: a device logging every request of a busy client (thousands
/// a second), not a lab module's timers and threads (a few lines a second).
const FLOOD_LINES_PER_S: u64 = 500;
/// The gathering time in force ([`CONSOLE_BATCH_NS`] unless a test changed it).
static CONSOLE_BATCH: AtomicU64 = AtomicU64::new(CONSOLE_BATCH_NS);

/// Sets how long the console lets lines gather (`None`: the default, 5 jiffies), from the next
/// gathering on. For tests: a gathering longer than any test makes the half-full wake-up the
/// only way the console can come back early.
#[doc(hidden)]
pub fn set_console_batch(ns: Option<u64>) {
    CONSOLE_BATCH.store(ns.unwrap_or(CONSOLE_BATCH_NS), Ordering::SeqCst);
}

/// The console's next gathering (ns), after `lines` were drained that came in `elapsed_ns`
/// (since the last drain ended) while it gathered for `last_ns`: in a flood (at least
/// [`FLOOD_LINES_PER_S`]) twice the last, up to [`CONSOLE_BATCH_MAX_NS`]; otherwise `base_ns`.
/// A flood's lines are not read as they come, and each wake-up of the console takes a CPU
/// from the device's clients (under a busy host, a virtual CPU woken for it competes with them
/// for the host's CPUs: 0.76-0.79x the calls of a lone client of `deferred` against its
/// transport alone, three boots of `bench/vm-lone.sh` under a host CPU hog); a few lines
/// still go out within `base_ns`.
fn next_gathering(last_ns: u64, lines: u64, elapsed_ns: u64, base_ns: u64) -> u64 {
    let flood = u128::from(lines) * 1_000_000_000
        >= u128::from(FLOOD_LINES_PER_S) * u128::from(elapsed_ns.max(1));
    if flood {
        last_ns
            .saturating_mul(2)
            .clamp(base_ns, CONSOLE_BATCH_MAX_NS.max(base_ns))
    } else {
        base_ns
    }
}
/// Lines in the ring that cut the console's gathering short.
const HALF_FULL: u64 = SLOTS as u64 / 2;

fn console_thread() {
    crate::kernel::sched::set_comm("printk");
    let mut gathering = CONSOLE_BATCH.load(Ordering::SeqCst);
    // When the last drain ended: the lines drained next came since.
    let mut drained_at = jiffies::monotonic_ns();
    loop {
        let seen = BELL.seen();
        // Read before draining: the ring reaching half full while the drain runs must cut the
        // gathering below short too.
        let urgent = URGENT.load(Ordering::SeqCst);
        let from = RING.head();
        let start = jiffies::monotonic_ns();
        {
            let mut c = CONSUMER.lock().unwrap_or_else(|e| e.into_inner());
            drain(&mut c, None);
        }
        let lines = RING.head().wrapping_sub(from);
        gathering = next_gathering(
            gathering,
            lines,
            start.saturating_sub(drained_at),
            CONSOLE_BATCH.load(Ordering::SeqCst),
        );
        drained_at = jiffies::monotonic_ns();
        // Lines came: let the next ones gather, unannounced (no wake-ups needed), unless the
        // ring fills to half first.
        let deadline = drained_at + gathering;
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

/// The body of the `pr_*!` macros. A literal format string with only plain `{}`s (decided at
/// compile time) goes to [`printk_args`], its arguments captured by value
/// ([`args`]); anything else to [`printk`] through `format_args!`. The arguments are bound one
/// by one (`match &arg`), each evaluated once, whichever way the line goes; named arguments
/// (`name = value`) send the line to `format_args!`, the positional ones as bound.
#[doc(hidden)]
#[macro_export]
macro_rules! __printk {
    (@bind $level:expr, $fmt:literal, [$($v:ident)*], $name:ident = $($rest:tt)*) => {
        $crate::kernel::printk::printk(
            $level,
            ::core::format_args!($fmt $(, *$v)*, $name = $($rest)*),
        )
    };
    (@bind $level:expr, $fmt:literal, [$($v:ident)*], $(,)?) => {{
        #[allow(unused_imports)]
        use $crate::kernel::printk::args::{ByDisplay as _, ByNothing as _, ByValue as _};
        if const { $crate::kernel::printk::args::simple($fmt, <[&str]>::len(&[$(stringify!($v)),*])) } {
            const PIECES: &[$crate::kernel::printk::args::Piece] =
                &$crate::kernel::printk::args::pieces::<{ $crate::kernel::printk::args::pieces_len($fmt) }>($fmt);
            $crate::kernel::printk::printk_args(
                $level,
                PIECES,
                &[$((&&$crate::kernel::printk::args::Probe($v)).printk_val()),*],
            )
        } else {
            $crate::kernel::printk::printk($level, ::core::format_args!($fmt $(, *$v)*))
        }
    }};
    (@bind $level:expr, $fmt:literal, [$($v:ident)*], $head:expr $(, $($rest:tt)*)?) => {
        match &$head {
            v => $crate::__printk!(@bind $level, $fmt, [$($v)* v], $($($rest)*)?),
        }
    };
    ($level:expr, $fmt:literal $(, $($args:tt)*)?) => {
        $crate::__printk!(@bind $level, $fmt, [], $($($args)*)?)
    };
    ($level:expr, $($arg:tt)*) => {
        $crate::kernel::printk::printk($level, ::core::format_args!($($arg)*))
    };
}

/// `pr_emerg!`: print at `KERN_EMERG`. Any context.
#[macro_export]
macro_rules! pr_emerg {
    ($($arg:tt)*) => {
        $crate::__printk!($crate::kernel::printk::Level::Emerg, $($arg)*)
    };
}

/// `pr_alert!`: print at `KERN_ALERT`. Any context.
#[macro_export]
macro_rules! pr_alert {
    ($($arg:tt)*) => {
        $crate::__printk!($crate::kernel::printk::Level::Alert, $($arg)*)
    };
}

/// `pr_crit!`: print at `KERN_CRIT`. Any context.
#[macro_export]
macro_rules! pr_crit {
    ($($arg:tt)*) => {
        $crate::__printk!($crate::kernel::printk::Level::Crit, $($arg)*)
    };
}

/// `pr_err!`: print at `KERN_ERR`. Any context.
#[macro_export]
macro_rules! pr_err {
    ($($arg:tt)*) => {
        $crate::__printk!($crate::kernel::printk::Level::Err, $($arg)*)
    };
}

/// `pr_warn!`: print at `KERN_WARNING`. Any context.
#[macro_export]
macro_rules! pr_warn {
    ($($arg:tt)*) => {
        $crate::__printk!($crate::kernel::printk::Level::Warning, $($arg)*)
    };
}

/// `pr_notice!`: print at `KERN_NOTICE`. Any context.
#[macro_export]
macro_rules! pr_notice {
    ($($arg:tt)*) => {
        $crate::__printk!($crate::kernel::printk::Level::Notice, $($arg)*)
    };
}

/// `pr_info!`: print at `KERN_INFO`. Any context.
#[macro_export]
macro_rules! pr_info {
    ($($arg:tt)*) => {
        $crate::__printk!($crate::kernel::printk::Level::Info, $($arg)*)
    };
}

/// `pr_debug!`: print at `KERN_DEBUG` (the console hands it to `log` at debug level). Any context.
#[macro_export]
macro_rules! pr_debug {
    ($($arg:tt)*) => {
        $crate::__printk!($crate::kernel::printk::Level::Debug, $($arg)*)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Display` that is neither an integer nor a string (formatted into the record).
    struct Point(i32, i32);
    impl fmt::Display for Point {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "({}, {})", self.0, self.1)
        }
    }

    /// `format!`'s line, as printk keeps it: cut at LINE_MAX on a character boundary, without
    /// a trailing newline.
    fn kept(mut s: String) -> String {
        if s.len() > LINE_MAX {
            let mut n = LINE_MAX;
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            s.truncate(n);
        }
        s.strip_suffix('\n').map(str::to_string).unwrap_or(s)
    }

    /// Prints each case with `pr_info!` and makes it with `format!`: the captured lines must be
    /// those, in order (each case starts with its own tag, `pk<N>`: lines of other tests are
    /// left out).
    macro_rules! cases {
        ($([$($case:tt)*])*) => {{
            let capture = capture();
            let mut want = Vec::new();
            $(
                $crate::pr_info!($($case)*);
                want.push(kept(format!($($case)*)));
            )*
            let got: Vec<String> = capture
                .texts()
                .into_iter()
                .filter(|t| t.starts_with("pk"))
                .collect();
            assert_eq!(got, want);
        }};
    }

    #[test]
    fn a_flood_of_lines_lengthens_the_consoles_gathering_a_trickle_does_not() {
        let base = CONSOLE_BATCH_NS;
        let ms = 1_000_000;
        // A busy device: 60 lines in 20 ms (3,000 a second) doubles the gathering, up to the
        // longest.
        assert_eq!(next_gathering(base, 60, 20 * ms, base), 2 * base);
        assert_eq!(next_gathering(2 * base, 120, 40 * ms, base), 4 * base);
        assert_eq!(
            next_gathering(CONSOLE_BATCH_MAX_NS, 600, 200 * ms, base),
            CONSOLE_BATCH_MAX_NS
        );
        // Exactly the flood's rate is a flood; just under it is not.
        let at_rate = FLOOD_LINES_PER_S / 50; // lines in 20 ms
        assert_eq!(next_gathering(base, at_rate, 20 * ms, base), 2 * base);
        assert_eq!(next_gathering(base, at_rate - 1, 20 * ms, base), base);
        // The flood ends: back to the base at once, from any length.
        assert_eq!(
            next_gathering(CONSOLE_BATCH_MAX_NS, 3, 200 * ms, base),
            base
        );
        // A lab module's lines, one a second, and the first line after a quiet spell.
        assert_eq!(next_gathering(base, 1, 1_000 * ms, base), base);
        assert_eq!(next_gathering(base, 1, 3_600_000 * ms, base), base);
        // Lines drained with no time elapsed (a drain right after another): a flood, not a
        // division by zero.
        assert_eq!(next_gathering(base, 1, 0, base), 2 * base);
        assert_eq!(next_gathering(base, 0, 0, base), base);
        // A test's base longer than the longest flood gathering stays in force.
        let hour = 3_600_000 * ms;
        assert_eq!(next_gathering(hour, 1_000, 1, hour), hour);
        assert_eq!(next_gathering(base, 1_000, 1, hour), hour);
    }

    #[test]
    fn a_line_is_what_format_makes_whoever_makes_it() {
        let s = String::from("owned");
        let long = "é".repeat(200);
        let (name, n) = ("inline", 7u8);
        cases! {
            // Plain `{}`s: made by the console from the captured values.
            ["pk1 unsigned {} {} {} {} {}", 0u8, u16::MAX, u32::MAX, u64::MAX, usize::MAX]
            ["pk2 signed {} {} {} {} {}", i8::MIN, -1i16, i32::MAX, i64::MIN, isize::MIN]
            ["pk3 {} {} {} {}", true, false, 'x', '😀']
            ["pk4 &str {}, String {}, &String {}", "static", s.clone(), &s]
            ["pk5 display {} and float {}", Point(-3, 4), 2.5f64]
            ["pk6 braces {{}} {{{}}} }}{{ {}", 1, 2]
            ["pk7 no arguments, braces {{ }}"]
            ["pk8 ünïcödé {} ✓", "ß"]
            ["pk9 newline {}\n", 9]
            ["pk10 {}{}{}", "", "", ""]
            // Too long for the line: cut on a character boundary, as `format!` then cut.
            ["pk11 {}", long]
            ["pk12 {} {}", 'é', long]
            // Arguments too many to fit encoded: made at once (same line).
            ["pk13 {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
                1u64, 2u64, 3u64, 4u64, 5u64, 6u64, 7u64, 8u64, 9u64, 10u64, 11u64, 12u64, 13u64,
                14u64, 15u64, 16u64, 17u64, 18u64, 19u64, 20u64, 21u64, 22u64, 23u64, 24u64,
                25u64, 26u64, 27u64, 28u64, 29u64, 30u64]
            // Anything but plain `{}`: `core::fmt` at once.
            ["pk14 {:x} {:#06x} {:>5}|{:<3}|", 255, 10, "r", 1]
            ["pk15 {:?} {:?}", "quoted", Some(3)]
            ["pk16 {name} {n}"]
            ["pk17 {0} {0} {1}", "twice", 1]
            ["pk18 {a} {b}", a = 1, b = "named"]
        }
    }

    #[test]
    fn each_argument_is_evaluated_once_whichever_way_the_line_goes() {
        let calls = std::cell::Cell::new(0);
        let next = || {
            calls.set(calls.get() + 1);
            calls.get()
        };
        let capture = capture();
        crate::pr_info!("once plain {} {}", next(), next());
        crate::pr_info!("once hex {:x} {}", next(), next());
        crate::pr_info!("once named {} {a}", next(), a = next());
        assert_eq!(calls.get(), 6);
        let got: Vec<String> = capture
            .texts()
            .into_iter()
            .filter(|t| t.starts_with("once "))
            .collect();
        assert_eq!(got, ["once plain 1 2", "once hex 3 4", "once named 5 6"]);
    }

    #[test]
    fn a_simple_format_string_is_cut_at_its_holes_and_escapes() {
        use args::{Piece, pieces, pieces_len};
        fn p(text: &'static str, hole: bool) -> Piece {
            Piece { text, hole }
        }
        const A: &str = "pid = {}, comm = {}";
        assert_eq!(
            pieces::<{ pieces_len(A) }>(A),
            [p("pid = ", true), p(", comm = ", true), p("", false)]
        );
        const B: &str = "{{{}}} }}x{{";
        assert_eq!(
            pieces::<{ pieces_len(B) }>(B),
            [
                p("{", false),
                p("", true),
                p("}", false),
                p(" }", false),
                p("x{", false),
                p("", false)
            ]
        );
        const C: &str = "ünï {}✓";
        assert_eq!(
            pieces::<{ pieces_len(C) }>(C),
            [p("ünï ", true), p("✓", false)]
        );
        assert_eq!(pieces::<{ pieces_len("") }>(""), [p("", false)]);
        // Not simple (never used so), but cut without a panic: a lone brace is text.
        const D: &str = "{:x} {";
        assert_eq!(pieces::<{ pieces_len(D) }>(D), [p("{:x} {", false)]);
    }

    #[test]
    fn only_plain_holes_one_per_argument_are_simple() {
        use args::simple;
        assert!(simple("", 0));
        assert!(simple("no holes", 0));
        assert!(simple("{}", 1));
        assert!(simple("a {} b {} c", 2));
        assert!(simple("{{}} {{{}}} }}", 1));
        assert!(!simple("{}", 0));
        assert!(!simple("{} {}", 1));
        assert!(!simple("{:x}", 1));
        assert!(!simple("{0}", 1));
        assert!(!simple("{name}", 0));
        assert!(!simple("{:?}", 1));
        assert!(!simple("{", 0));
        assert!(!simple("}", 0));
        assert!(!simple("{}}", 1));
    }

    /// The records in the ring now (the console held: none is drained meanwhile).
    fn records(_held: &ConsoleLockGuard) -> Vec<ring::Record> {
        (RING.head()..RING.tail())
            // SAFETY: the console is held, so no slot between head and tail is reused while
            // it is read.
            .filter_map(|pos| unsafe { RING.peek(pos, |r| *r) })
            .collect()
    }

    #[test]
    fn a_line_with_plain_holes_is_made_by_the_console_not_by_its_caller() {
        let capture = capture();
        let held = console_lock();
        crate::pr_info!("made-by deferred {} {} {}", 42u32, "comm", Point(1, 2));
        crate::pr_info!("made-by at once {:x}", 42u32);
        let pushed = records(&held);
        let deferred = pushed
            .iter()
            .find(|r| {
                r.template
                    .is_some_and(|t| t.first().is_some_and(|p| p.text == "made-by deferred "))
            })
            .expect("the line's record keeps its template");
        // The integer by value, the string's bytes, the Point formatted on its own.
        let enc = deferred.text();
        assert!(!enc.windows(4).any(|w| w == b"made"), "{enc:?}");
        assert!(enc.windows(8).any(|w| w == 42u64.to_le_bytes()), "{enc:?}");
        assert!(enc.windows(4).any(|w| w == b"comm"), "{enc:?}");
        assert!(enc.windows(6).any(|w| w == b"(1, 2)"), "{enc:?}");
        let at_once = pushed
            .iter()
            .find(|r| r.text().starts_with(b"made-by at once"))
            .expect("the other line");
        assert_eq!(
            (at_once.template, at_once.text()),
            (None, &b"made-by at once 2a"[..])
        );
        drop(held);
        let got: Vec<String> = capture
            .texts()
            .into_iter()
            .filter(|t| t.starts_with("made-by "))
            .collect();
        assert_eq!(
            got,
            ["made-by deferred 42 comm (1, 2)", "made-by at once 2a"]
        );
    }

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
