//! The ring of printk (`printk.rs`) and of the trace events (`trace.rs`): a bounded
//! multi-producer, single-consumer queue of fixed-size records (Vyukov's), writable from any
//! context, the timer signal's handler included; and the console's doorbell.
//!
//! # Ground rules
//! - Each slot has a sequence number. A producer claims position `pos` by a CAS on `tail` when
//!   the slot's sequence equals `pos`, writes the slot, then publishes it by storing `pos + 1`
//!   (Release). Only the claiming producer writes a claimed slot.
//! - One consumer at a time (the caller serialises [`Ring::pop`]; printk holds a mutex, in
//!   process context). It reads a slot only after seeing `pos + 1` (Acquire) and hands it back by
//!   storing `pos + N`, the position a producer claims it at on the next lap.
//! - A producer never waits: a slot still unconsumed from the previous lap means "full". A
//!   producer interrupted between claim and publish only delays the consumer (which stops at the
//!   unpublished slot); the handler's own pushes go to later slots.
//! - [`Doorbell`]: the consumer announces itself (`waiting`) and re-checks the count before it
//!   sleeps; a producer bumps the count after publishing and wakes only an announced consumer.
//!   Each side stores then loads, with a `SeqCst` fence between: either the producer sees the
//!   announcement or the consumer sees the new count, so a line never waits for the next one.

use super::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use super::{UnsafeCell, futex};

/// Longest line kept (bytes).
pub const LINE_MAX: usize = 240;

/// What a ring holds: plain bytes (`Copy`, no pointers to own) with an empty value for the
/// slots of a new ring.
pub trait Entry: Copy {
    /// The value of a slot nobody has written yet.
    const EMPTY: Self;
}

/// A piece of a log record's template (a printk format string with only plain `{}`s, cut at
/// compile time by `printk::args::pieces`): a run of its text, braces unescaped, then a hole for
/// the next argument or not.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The text.
    pub text: &'static str,
    /// Whether an argument follows.
    pub hole: bool,
}

/// One log record (printk's), as a producer writes it into its slot.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// The printk level (`KERN_*` number).
    pub level: u8,
    /// Nanoseconds since the runtime started.
    pub ts_ns: u64,
    /// `None`: `text` is the message. `Some(template)`: the message is the template (a format
    /// string cut at its holes) filled with the arguments encoded in `text`, made by whoever
    /// reads the record (printk's binary records; the template is static: nothing is owned).
    pub template: Option<&'static [Piece]>,
    /// Bytes of `text` in use.
    pub len: u16,
    /// The message, or its encoded arguments.
    pub text: [u8; LINE_MAX],
}

impl Entry for Record {
    const EMPTY: Record = Record {
        level: 0,
        ts_ns: 0,
        template: None,
        len: 0,
        text: [0; LINE_MAX],
    };
}

impl Record {
    /// The message's bytes (or its encoded arguments).
    pub fn text(&self) -> &[u8] {
        &self.text[..(self.len as usize).min(LINE_MAX)]
    }
}

struct Slot<T> {
    /// Sequence number minus the slot's index (so that the all-zero static is the initial state).
    seq: AtomicU64,
    rec: UnsafeCell<T>,
}

impl<T: Entry> Slot<T> {
    super::const_fn! {
        fn new() -> Slot<T> {
            Slot { seq: AtomicU64::new(0), rec: UnsafeCell::new(T::EMPTY) }
        }
    }
}

/// The ring of `N` slots of `T`.
pub struct Ring<T, const N: usize> {
    slots: [Slot<T>; N],
    /// Next position a producer claims.
    tail: AtomicU64,
    /// Next position the consumer reads (written by the consumer only).
    head: AtomicU64,
}

// SAFETY: slot contents are written only by the producer that claimed the slot (CAS on `tail`)
// and read only by the consumer after the Release/Acquire publish on `seq` (Ground rules).
unsafe impl<T: Send, const N: usize> Sync for Ring<T, N> {}

impl<T: Entry, const N: usize> Ring<T, N> {
    /// An empty ring.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Ring {
            slots: [const { Slot::new() }; N],
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
        }
    }

    /// An empty ring.
    #[cfg(loom)]
    pub fn new() -> Self {
        Ring {
            slots: core::array::from_fn(|_| Slot::new()),
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
        }
    }

    /// Claims a slot, lets `fill` write the record, publishes it. Returns the position the
    /// record took, or `None` when the ring is full. Async-signal-safe, lock-free.
    pub fn push(&self, fill: impl FnOnce(&mut T)) -> Option<u64> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let idx = (pos % N as u64) as usize;
            let slot = &self.slots[idx];
            let seq = slot.seq.load(Ordering::Acquire).wrapping_add(idx as u64);
            let diff = seq.wrapping_sub(pos) as i64;
            if diff == 0 {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: we claimed position `pos` by the CAS: until we publish, no
                        // other producer and not the consumer touch this slot (Ground rules).
                        slot.rec.with_mut(|r| fill(unsafe { &mut *r }));
                        slot.seq
                            .store((pos + 1).wrapping_sub(idx as u64), Ordering::Release);
                        return Some(pos);
                    }
                    Err(cur) => pos = cur,
                }
            } else if diff < 0 {
                return None;
            } else {
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// The next position the consumer reads.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    /// The next position a producer claims.
    pub fn tail(&self) -> u64 {
        self.tail.load(Ordering::SeqCst)
    }

    /// Hands the record at the head to `read` and gives its slot back; `None` if the head's
    /// record is not published yet (or the ring is empty).
    ///
    /// # Safety
    /// One consumer at a time: no other `pop` on this ring runs concurrently.
    pub unsafe fn pop<R>(&self, read: impl FnOnce(&T) -> R) -> Option<R> {
        let pos = self.head.load(Ordering::Relaxed);
        let idx = (pos % N as u64) as usize;
        let slot = &self.slots[idx];
        let seq = slot.seq.load(Ordering::Acquire).wrapping_add(idx as u64);
        if seq != pos + 1 {
            return None;
        }
        // SAFETY: the slot is published for `pos` (Acquire above) and we are the only consumer
        // (the caller's contract); producers do not touch it until we hand it back below.
        let r = slot.rec.with(|r| read(unsafe { &*r }));
        slot.seq
            .store((pos + N as u64).wrapping_sub(idx as u64), Ordering::Release);
        self.head.store(pos + 1, Ordering::Relaxed);
        Some(r)
    }

    /// The record at position `pos` if its slot still holds it (published, or drained and
    /// handed back but not claimed again), handed to `read`. For the panic path only (the
    /// kernel's `console_flush_on_panic`), which reads without being the consumer.
    ///
    /// # Safety
    /// Racy by design: a producer may claim and rewrite the slot while `read` runs (once the
    /// ring has gone round). The caller accepts a garbled record (plain bytes, no pointers) and
    /// does nothing else with the ring afterwards.
    pub unsafe fn peek<R>(&self, pos: u64, read: impl FnOnce(&T) -> R) -> Option<R> {
        let idx = (pos % N as u64) as usize;
        let slot = &self.slots[idx];
        let seq = slot.seq.load(Ordering::Acquire).wrapping_add(idx as u64);
        if seq != pos + 1 && seq != pos + N as u64 {
            return None;
        }
        // SAFETY: the caller accepts the race described above; the record is plain bytes.
        Some(slot.rec.with(|r| read(unsafe { &*r })))
    }
}

impl<T: Entry, const N: usize> Default for Ring<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The console's doorbell: a count bumped after every publish and a flag saying the console
/// sleeps on it (see the Ground rules).
#[derive(Debug)]
pub struct Doorbell {
    count: AtomicU32,
    waiting: AtomicU32,
}

impl Doorbell {
    super::const_fn! {
        /// A silent bell.
        pub fn new() -> Doorbell {
            Doorbell { count: AtomicU32::new(0), waiting: AtomicU32::new(0) }
        }
    }

    /// Producer side, after publishing: bump, and wake the consumer if it sleeps.
    /// Async-signal-safe.
    pub fn ring(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst); // between the bump and the load of `waiting` (Ground rules)
        if self.waiting.load(Ordering::SeqCst) != 0 {
            futex::wake(&self.count, i32::MAX);
        }
    }

    /// Consumer side: the count, read before draining.
    pub fn seen(&self) -> u32 {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether the consumer sleeps on the bell now (or is about to).
    pub fn sleeping(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) != 0
    }

    /// Consumer side: sleeps unless the bell rang since [`seen`](Self::seen) returned `seen`.
    /// Process context.
    pub fn sleep(&self, seen: u32) {
        self.waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst); // between the announcement and the load of `count`
        if self.count.load(Ordering::SeqCst) == seen {
            futex::wait(&self.count, seen, None);
        }
        self.waiting.store(0, Ordering::SeqCst);
    }
}

impl Default for Doorbell {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::{Doorbell, Record, Ring};
    use loom::sync::Arc;
    use loom::thread;

    fn line(r: &mut Record, text: &[u8]) {
        r.text[..text.len()].copy_from_slice(text);
        r.len = text.len() as u16;
    }

    /// The console's loop, as `printk.rs` runs it: read the bell, drain, sleep unless it rang.
    fn console(ring: &Ring<Record, 2>, bell: &Doorbell, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        loop {
            let seen = bell.seen();
            // SAFETY: the model's main thread is the only consumer.
            while let Some(t) = unsafe { ring.pop(|r| r.text().to_vec()) } {
                got.push(t);
            }
            if got.len() >= want {
                return got;
            }
            bell.sleep(seen);
        }
    }

    /// Two producers (process context and the timer handler on another thread) and the console:
    /// every line arrives once, whole, in claim order per producer, and the console never sleeps
    /// on a published line (loom reports the deadlock).
    #[test]
    fn every_line_reaches_the_console_once() {
        loom::model(|| {
            let s = Arc::new((Ring::<Record, 2>::new(), Doorbell::new()));
            let producers: Vec<_> = [b"timer", b"ioctl"]
                .into_iter()
                .map(|text| {
                    let s = s.clone();
                    thread::spawn(move || {
                        assert!(s.0.push(|r| line(r, text)).is_some());
                        s.1.ring();
                    })
                })
                .collect();
            let mut got = console(&s.0, &s.1, 2);
            for p in producers {
                p.join().unwrap();
            }
            got.sort();
            assert_eq!(got, [b"ioctl".to_vec(), b"timer".to_vec()]);
        });
    }

    /// A producer laps the ring (3 lines through 2 slots) while the console drains: slots are
    /// reused only once consumed, lines stay whole and in order, and a full ring refuses a line
    /// rather than overwriting one.
    #[test]
    fn a_slot_is_reused_only_once_consumed() {
        loom::model(|| {
            let s = Arc::new((Ring::<Record, 2>::new(), Doorbell::new()));
            let producer = {
                let s = s.clone();
                thread::spawn(move || {
                    let mut sent = Vec::new();
                    for text in [b"one", b"two", b"six"] {
                        if s.0.push(|r| line(r, text)).is_some() {
                            sent.push(text.to_vec());
                        }
                        s.1.ring();
                    }
                    sent
                })
            };
            // Wait for whatever the producer got in: at least the first two (the ring has room).
            let mut got = console(&s.0, &s.1, 2);
            let sent = producer.join().unwrap();
            // SAFETY: the only consumer.
            while let Some(t) = unsafe { s.0.pop(|r| r.text().to_vec()) } {
                got.push(t);
            }
            assert_eq!(got, sent);
            assert!(sent.len() >= 2);
        });
    }
}
