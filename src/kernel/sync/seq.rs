//! A record of a few words under a sequence count, written by whoever gets there first and read
//! without waiting: the per-CPU anchors of `local_clock` (`kernel::clock`), which any thread
//! may refresh, a timer signal's handler included.
//!
//! The count is even while the words are stable and odd while a writer changes them. A writer
//! takes the count from even to odd with a compare-and-swap, so there is one at a time; one that
//! finds it odd (another writer, perhaps the very thread it interrupted) gives up instead of
//! waiting. A reader loads the count, the words and the count again: the same even count both
//! times means no writer touched the words in between; anything else, and the read gives up
//! too (the caller then reads the clock the slow way). So neither side ever waits on the other:
//! wait-free, no system call, no allocation, async-signal-safe.
//!
//! Every access is `SeqCst`: on x86-64 a `SeqCst` load is a plain load, so the read costs no
//! more than with the weaker orderings, and the reasoning is the one above, step by step. The
//! models at the bottom (loom) check that a read sees the words of one write, never a mix.

use super::atomic::{AtomicU64, Ordering::SeqCst};

/// `N` words under a sequence count.
pub struct SeqRecord<const N: usize> {
    seq: AtomicU64,
    words: [AtomicU64; N],
}

impl<const N: usize> SeqRecord<N> {
    /// A record of `N` zero words.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            words: [const { AtomicU64::new(0) }; N],
        }
    }

    /// A record of `N` zero words (loom's atomics are not built in constants).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The words of the last write (zeros before any), or `None` if a writer was at work
    /// during the read. Never waits.
    pub fn read(&self) -> Option<[u64; N]> {
        let before = self.seq.load(SeqCst);
        if before & 1 == 1 {
            return None;
        }
        let mut out = [0; N];
        for (o, w) in out.iter_mut().zip(&self.words) {
            *o = w.load(SeqCst);
        }
        (self.seq.load(SeqCst) == before).then_some(out)
    }

    /// Writes `words`, unless another writer is at work: then nothing is written (false).
    /// Never waits.
    pub fn try_write(&self, words: [u64; N]) -> bool {
        let seq = self.seq.load(SeqCst);
        if seq & 1 == 1
            || self
                .seq
                .compare_exchange(seq, seq + 1, SeqCst, SeqCst)
                .is_err()
        {
            return false;
        }
        for (w, v) in self.words.iter().zip(words) {
            w.store(v, SeqCst);
        }
        self.seq.store(seq + 2, SeqCst);
        true
    }
}

#[cfg(not(loom))]
impl<const N: usize> Default for SeqRecord<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_read_sees_the_last_write_and_a_writer_at_work_stops_the_others() {
        let r = SeqRecord::<3>::new();
        assert_eq!(r.read(), Some([0, 0, 0]));
        assert!(r.try_write([1, 2, 3]));
        assert_eq!(r.read(), Some([1, 2, 3]));
        // A writer at work (the count odd, as an interrupted writer leaves it): reads and
        // other writes give up, and nothing changes.
        r.seq.fetch_add(1, SeqCst);
        assert_eq!(r.read(), None);
        assert!(!r.try_write([4, 5, 6]));
        r.seq.fetch_add(1, SeqCst);
        assert_eq!(r.read(), Some([1, 2, 3]));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Two writers and a reader: every read that succeeds sees one write's words whole (or
    /// the first zeros), and once the writers are done a read succeeds and sees one of them.
    #[test]
    fn reads_never_see_a_mix_of_writes() {
        loom::model(|| {
            let r = Arc::new(SeqRecord::<2>::new());
            let writers: Vec<_> = [1u64, 2]
                .into_iter()
                .map(|v| {
                    let r = r.clone();
                    thread::spawn(move || r.try_write([v, v]))
                })
                .collect();
            if let Some([a, b]) = r.read() {
                assert_eq!(a, b, "a read saw a mix of writes");
            }
            let wrote: Vec<bool> = writers.into_iter().map(|w| w.join().unwrap()).collect();
            assert!(wrote.iter().any(|&w| w), "neither writer wrote");
            let [a, b] = r.read().expect("a read with no writer at work");
            assert_eq!(a, b);
            assert!(
                (a == 1 && wrote[0]) || (a == 2 && wrote[1]),
                "read {a}, wrote {wrote:?}"
            );
        });
    }

    /// A read racing one writer that writes twice: never a mix.
    #[test]
    fn a_read_racing_rewrites_sees_one_of_them() {
        loom::model(|| {
            let r = Arc::new(SeqRecord::<2>::new());
            let w = {
                let r = r.clone();
                thread::spawn(move || {
                    assert!(r.try_write([1, 1]));
                    assert!(r.try_write([2, 2]));
                })
            };
            if let Some([a, b]) = r.read() {
                assert_eq!(a, b, "a read saw a mix of writes");
            }
            w.join().unwrap();
            assert_eq!(r.read(), Some([2, 2]));
        });
    }
}
