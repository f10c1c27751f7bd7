//! The work items' state word and the workers' lists (`workqueue.rs`): the `queue_work`
//! handshake (a work queued twice runs once; one queued while it runs runs again), the worker's
//! wake-up, and the sleep of whoever waits for a bit to clear (flush, cancel, drop).
//!
//! # Ground rules
//! - The state word: every transition is one CAS ([`update`]). The signal path (queueing, the
//!   delay timer) only sets `PENDING|LINKED` (or `DELAYED` -> `LINKED`), clears `PENDING`, or
//!   fails; it never waits.
//! - `WAITERS`: a sleeper sets it (CAS) and then sleeps on the word while it still holds the
//!   value it saw; any transition that clears a bit also clears `WAITERS` and wakes the word.
//! - [`WorkList`]: an intrusive Treiber stack. Pushes are CAS loops; the worker takes the whole
//!   stack with one swap (no ABA: nobody pops single items) and reverses it into queueing order.
//!   A node's `next` is written only by whoever set `LINKED`, before the CAS that publishes it,
//!   and read only by the worker that swapped the list out.

use core::ptr;

use super::atomic::{AtomicPtr, AtomicU32, Ordering::SeqCst};
use super::futex;

/// Will run (queued, or its delay timer armed), not started yet.
pub const PENDING: u32 = 1;
/// Physically on a worker's list.
pub const LINKED: u32 = 2;
/// Its handler runs.
pub const RUNNING: u32 = 4;
/// A `cancel_*_sync` is in progress: queueing fails.
pub const CANCELING: u32 = 8;
/// Somebody sleeps on the word until a bit clears.
pub const WAITERS: u32 = 16;
/// Pending on its delay timer, not runnable yet.
pub const DELAYED: u32 = 32;

/// Applies `f` to the state with a CAS loop; `f` returns the new state or `None` to give up.
/// Clearing any bit also clears `WAITERS` and wakes the sleepers. Returns the old state on
/// success, the state `f` refused on failure. Async-signal-safe.
pub fn update(state: &AtomicU32, mut f: impl FnMut(u32) -> Option<u32>) -> Result<u32, u32> {
    let mut s = state.load(SeqCst);
    loop {
        let Some(mut new) = f(s) else { return Err(s) };
        let cleared = s & !new & !WAITERS != 0;
        if cleared {
            new &= !WAITERS;
        }
        match state.compare_exchange(s, new, SeqCst, SeqCst) {
            Ok(_) => {
                if cleared && s & WAITERS != 0 {
                    futex::wake(state, i32::MAX);
                }
                return Ok(s);
            }
            Err(actual) => s = actual,
        }
    }
}

/// Sleeps until `done(state)` holds. Process context.
pub fn wait_until(state: &AtomicU32, done: impl Fn(u32) -> bool) {
    loop {
        let s = state.load(SeqCst);
        if done(s) {
            return;
        }
        if s & WAITERS == 0
            && state
                .compare_exchange(s, s | WAITERS, SeqCst, SeqCst)
                .is_err()
        {
            continue;
        }
        futex::wait(state, s | WAITERS, None);
    }
}

/// `queue_work`'s transition: `PENDING|LINKED` unless pending or being cancelled.
/// `Some(true)`: queued, the caller links the item; `Some(false)`: queued, it is still linked
/// (the worker has not passed it yet); `None`: not queued. Async-signal-safe.
pub fn queue(state: &AtomicU32) -> Option<bool> {
    update(state, |s| {
        (s & (PENDING | CANCELING) == 0).then_some(s | PENDING | LINKED)
    })
    .ok()
    .map(|old| old & LINKED == 0)
}

/// `cancel_work`'s transition: clears `PENDING` (and `DELAYED`); true if it was pending (it
/// will not run; it may stay linked until its worker passes it). Async-signal-safe.
pub fn unpend(state: &AtomicU32) -> bool {
    update(state, |s| {
        (s & PENDING != 0).then_some(s & !(PENDING | DELAYED))
    })
    .is_ok()
}

/// The worker takes an item off its list: true if it must run the handler now (state is
/// `RUNNING`), false if it was cancelled while queued or waits for its delay timer (it is
/// unlinked). Waits while the item still runs on another worker. Process context.
pub fn start(state: &AtomicU32) -> bool {
    let old = loop {
        match update(state, |s| {
            if s & PENDING != 0 && s & DELAYED != 0 {
                // Re-queued with a delay while still linked: unlink; its timer links it again.
                Some(s & !LINKED)
            } else if s & PENDING != 0 && s & RUNNING != 0 {
                None
            } else if s & PENDING != 0 {
                Some((s & !(LINKED | PENDING)) | RUNNING)
            } else {
                Some(s & !LINKED)
            }
        }) {
            Ok(old) => break old,
            Err(_) => wait_until(state, |s| s & RUNNING == 0 || s & PENDING == 0),
        }
    };
    old & PENDING != 0 && old & DELAYED == 0
}

/// The handler returned: clear `RUNNING` (waking flushers).
pub fn finish(state: &AtomicU32) {
    let _ = update(state, |s| Some(s & !RUNNING));
}

/// A node of a [`WorkList`]: an item with a `next` link.
pub trait Linked: Sized {
    /// The link, owned as the Ground rules say.
    fn next(&self) -> &AtomicPtr<Self>;
}

/// A worker's list of linked items (an intrusive Treiber stack, newest first).
#[derive(Debug)]
pub struct WorkList<N> {
    head: AtomicPtr<N>,
}

impl<N: Linked> WorkList<N> {
    /// An empty list.
    pub fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// True while nothing is linked (the worker's sleep condition).
    pub fn is_empty(&self) -> bool {
        self.head.load(SeqCst).is_null()
    }

    /// Links `n` (its owner has just set `LINKED`). Async-signal-safe.
    pub fn push(&self, n: &N) {
        let me = ptr::from_ref(n).cast_mut();
        let mut head = self.head.load(SeqCst);
        loop {
            n.next().store(head, SeqCst);
            match self.head.compare_exchange(head, me, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
    }

    /// Takes every linked item, oldest first: call `f` on each in turn. `f` gets the node
    /// after its `next` was read, so it may let the node go (clear `LINKED`). Process context,
    /// the list's worker only.
    ///
    /// # Safety
    /// Every linked node stays alive until `f` has returned for it (the owner's drop waits for
    /// `LINKED` to clear, which only `f` does).
    pub unsafe fn take_all(&self, mut f: impl FnMut(&N)) {
        let mut cur = self.head.swap(ptr::null_mut(), SeqCst);
        // Reverse the stack (newest first) into queueing order.
        let mut fifo: *mut N = ptr::null_mut();
        while !cur.is_null() {
            // SAFETY: linked nodes are alive (the caller's contract) and their `next` belongs to
            // us, the worker that swapped the list out.
            let item = unsafe { &*cur };
            let next = item.next().load(SeqCst);
            item.next().store(fifo, SeqCst);
            fifo = cur;
            cur = next;
        }
        while !fifo.is_null() {
            // SAFETY: as above.
            let item = unsafe { &*fifo };
            fifo = item.next().load(SeqCst);
            f(item);
        }
    }
}

impl<N: Linked> Default for WorkList<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::kernel::sync::waitq::WaitQueueHead;
    use core::ops::ControlFlow;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicBool, AtomicUsize};
    use loom::thread;

    struct Item {
        state: AtomicU32,
        next: AtomicPtr<Item>,
        runs: AtomicUsize,
    }

    impl Linked for Item {
        fn next(&self) -> &AtomicPtr<Self> {
            &self.next
        }
    }

    struct Pool {
        list: WorkList<Item>,
        more: WaitQueueHead,
        stop: AtomicBool,
        item: Item,
    }

    /// `queue_work` as `workqueue.rs` does it: the transition, the push, the wake-up.
    fn queue_work(p: &Pool) -> bool {
        match queue(&p.item.state) {
            Some(link) => {
                if link {
                    p.list.push(&p.item);
                    p.more.wake();
                }
                true
            }
            None => false,
        }
    }

    /// The worker thread's loop (`worker_thread` / `process_one`).
    fn worker(p: &Pool) {
        loop {
            p.more.wait_loop(|| {
                if !p.list.is_empty() || p.stop.load(SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(None)
                }
            });
            if p.list.is_empty() && p.stop.load(SeqCst) {
                return;
            }
            // SAFETY: the item lives in the pool, which outlives the worker.
            unsafe {
                p.list.take_all(|item| {
                    if start(&item.state) {
                        item.runs.fetch_add(1, SeqCst);
                        finish(&item.state);
                    }
                })
            };
        }
    }

    /// A pool with one idle item, and its worker thread.
    fn pool_and_worker() -> (Arc<Pool>, thread::JoinHandle<()>) {
        let p = Arc::new(Pool {
            list: WorkList::new(),
            more: WaitQueueHead::new(),
            stop: AtomicBool::new(false),
            item: Item {
                state: AtomicU32::new(0),
                next: AtomicPtr::new(ptr::null_mut()),
                runs: AtomicUsize::new(0),
            },
        });
        let w = {
            let p = p.clone();
            thread::spawn(move || worker(&p))
        };
        (p, w)
    }

    /// `flush_work`: waits until the item is neither pending nor running.
    fn flush_work(p: &Pool) {
        wait_until(&p.item.state, |s| s & (PENDING | RUNNING) == 0);
    }

    fn kthread_stop(p: &Pool, worker: thread::JoinHandle<()>) {
        p.stop.store(true, SeqCst);
        p.more.wake();
        worker.join().unwrap();
        assert_eq!(
            p.item.state.load(SeqCst) & !WAITERS,
            0,
            "idle and off every list"
        );
    }

    /// Two `queue_work`s of one item (process context, and a timer handler on another thread)
    /// against its worker: each call that returned true is followed by a run that starts after
    /// it (a call on a pending item returns false and adds no run), the worker is always woken,
    /// and `flush_work` (waiting for `PENDING|RUNNING` to clear) returns only after the runs.
    #[test]
    fn each_queueing_that_succeeds_runs_once() {
        loom::model(|| {
            let (p, w) = pool_and_worker();
            let h = {
                let p = p.clone();
                thread::spawn(move || queue_work(&p))
            };
            let mine = queue_work(&p);
            let theirs = h.join().unwrap();
            assert!(
                mine || theirs,
                "the first queueing of an idle item succeeds"
            );
            flush_work(&p);
            assert_eq!(
                p.item.runs.load(SeqCst),
                usize::from(mine) + usize::from(theirs)
            );
            kthread_stop(&p, w);
        });
    }

    /// `queue_work`, `cancel_work`, `queue_work` again while the cancelled item may still be
    /// linked (the worker has not passed it): the item is never linked twice, a cancel that
    /// succeeded removes exactly one run, and everything queued runs.
    #[test]
    fn a_cancelled_item_is_queued_again_without_a_second_link() {
        loom::model(|| {
            let (p, w) = pool_and_worker();
            assert!(queue_work(&p));
            let cancelled = unpend(&p.item.state);
            assert!(queue_work(&p));
            flush_work(&p);
            assert_eq!(p.item.runs.load(SeqCst), 2 - usize::from(cancelled));
            kthread_stop(&p, w);
        });
    }
}
