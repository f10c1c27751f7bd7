//! A bounded lock-free MPSC ring of `Copy` records, writable from any context (the timer
//! signal's handler included): printk's lines and the trace events go through one each.
//!
//! # Ground rules (shared with signal context)
//! - Vyukov's bounded queue: each slot has a sequence number. A producer claims position `pos`
//!   by a CAS on `tail` when the slot's sequence equals `pos`, writes the slot, then publishes it
//!   by storing `pos + 1` (Release). Only the claiming producer writes a claimed slot.
//! - One consumer at a time (the caller of [`Ring::pop`] serialises, in process context). It
//!   reads a slot only after seeing `pos + 1` (Acquire) and hands it back by storing `pos + N`.
//! - A producer never waits: a slot still unconsumed from the previous lap means "full" and
//!   [`Ring::push`] returns false. A producer interrupted between claim and publish (by the
//!   signal handler on its own thread) only delays the consumer; the handler's own pushes go to
//!   later slots.
//! - No allocation, no lock, no system call.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

struct Slot<T> {
    /// Sequence number minus the slot's index (so that the all-zero state is the initial one).
    seq: AtomicU64,
    val: UnsafeCell<MaybeUninit<T>>,
}

/// A ring of `N` slots of `T`.
pub struct Ring<T, const N: usize> {
    slots: [Slot<T>; N],
    /// Next position a producer claims.
    tail: AtomicU64,
    /// Next position the consumer reads.
    head: AtomicU64,
}

// SAFETY: a slot's value is written only by the producer that claimed it (CAS on `tail`) and
// read only by the one consumer after the Release/Acquire publish on `seq` (Ground rules); `T`
// is `Send` since values cross threads.
unsafe impl<T: Send, const N: usize> Sync for Ring<T, N> {}

impl<T: Copy, const N: usize> Ring<T, N> {
    /// An empty ring (usable in a `static`).
    pub const fn new() -> Self {
        Ring {
            slots: [const {
                Slot {
                    seq: AtomicU64::new(0),
                    val: UnsafeCell::new(MaybeUninit::uninit()),
                }
            }; N],
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
        }
    }

    /// Push the value `make` builds once a slot is claimed (a full ring costs no building).
    /// Returns the position it took (`None`: the ring was full). Any context: lock-free,
    /// allocation-free.
    pub fn push_with(&self, make: impl FnOnce() -> T) -> Option<u64> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let idx = (pos % N as u64) as usize;
            let slot = &self.slots[idx];
            let seq = slot.seq.load(Ordering::Acquire).wrapping_add(idx as u64);
            let diff = seq.wrapping_sub(pos) as i64;
            if diff == 0 {
                if self
                    .tail
                    .compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    pos = self.tail.load(Ordering::Relaxed);
                    continue;
                }
                // SAFETY: we claimed position `pos` by the CAS: until we publish, no other
                // producer and not the consumer touch this slot (Ground rules).
                unsafe { (*slot.val.get()).write(make()) };
                slot.seq
                    .store((pos + 1).wrapping_sub(idx as u64), Ordering::Release);
                return Some(pos);
            } else if diff < 0 {
                return None;
            } else {
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Take the oldest published value, if any.
    ///
    /// # Safety
    /// No other `pop` on this ring runs at the same time (callers serialise, e.g. with a mutex).
    pub unsafe fn pop(&self) -> Option<T> {
        let pos = self.head.load(Ordering::Relaxed);
        let idx = (pos % N as u64) as usize;
        let slot = &self.slots[idx];
        let seq = slot.seq.load(Ordering::Acquire).wrapping_add(idx as u64);
        if seq != pos + 1 {
            return None;
        }
        // SAFETY: published for `pos` (Acquire above): the producer wrote a whole value; we are
        // the only consumer (the caller's contract) and producers leave the slot until we hand
        // it back below.
        let v = unsafe { (*slot.val.get()).assume_init() };
        slot.seq
            .store((pos + N as u64).wrapping_sub(idx as u64), Ordering::Release);
        self.head.store(pos + 1, Ordering::Relaxed);
        Some(v)
    }
}

impl<T: Copy, const N: usize> Ring<T, N> {
    /// The value at position `pos` if its slot still holds it: published and not popped yet,
    /// or popped and not claimed again by a producer. Leaves the ring as it is.
    ///
    /// # Safety
    /// For a last reader that cannot wait (the panic path, which ends the process right
    /// after): it takes no part in the protocol, so a producer may be claiming the slot again
    /// while it reads. `T` must be plain bytes for which a torn value is harmless.
    pub unsafe fn peek(&self, pos: u64) -> Option<T> {
        let idx = (pos % N as u64) as usize;
        let slot = &self.slots[idx];
        let seq = slot.seq.load(Ordering::Acquire).wrapping_add(idx as u64);
        if seq != pos + 1 && seq != pos + N as u64 {
            return None;
        }
        // SAFETY: the slot held `pos`'s value when its sequence was read (a whole value was
        // written before it was published); the race with a re-claiming producer is the
        // caller's to accept (the contract).
        Some(unsafe { std::ptr::read_volatile(slot.val.get()).assume_init() })
    }
}

impl<T, const N: usize> Ring<T, N> {
    /// The next position a producer will claim (every position before it is claimed).
    pub fn tail(&self) -> u64 {
        self.tail.load(Ordering::SeqCst)
    }

    /// The next position the consumer will read.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }
}

impl<T: Copy, const N: usize> Default for Ring<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_full_and_laps() {
        let r: Ring<u32, 4> = Ring::new();
        for i in 0..4 {
            assert_eq!(r.push_with(|| i), Some(i as u64));
        }
        assert_eq!(r.push_with(|| 99), None, "full");
        // SAFETY: one consumer (this test).
        unsafe {
            assert_eq!(r.pop(), Some(0));
            assert!(r.push_with(|| 4).is_some(), "a slot came back");
            assert_eq!(
                (r.pop(), r.pop(), r.pop(), r.pop()),
                (Some(1), Some(2), Some(3), Some(4))
            );
            assert_eq!(r.pop(), None);
        }
        for lap in 0..10 {
            assert!(r.push_with(|| lap).is_some());
            // SAFETY: as above.
            assert_eq!(unsafe { r.pop() }, Some(lap));
        }
    }

    #[test]
    fn many_producers_lose_nothing_that_was_accepted() {
        static R: Ring<u64, 1024> = Ring::new();
        let accepted: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u64)
                .map(|t| {
                    s.spawn(move || {
                        (0..200)
                            .filter(|i| R.push_with(|| t * 1000 + i).is_some())
                            .count() as u64
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let mut got = Vec::new();
        // SAFETY: one consumer (this test, after the producers).
        while let Some(v) = unsafe { R.pop() } {
            got.push(v);
        }
        assert_eq!(got.len() as u64, accepted);
        for t in 0..4 {
            let mine: Vec<u64> = got.iter().copied().filter(|v| v / 1000 == t).collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "each producer's order kept"
            );
        }
    }
}
