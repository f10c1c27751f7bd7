//! The CPU's bottom-half word (`softirq.rs`): whether a thread runs softirqs, and how many
//! threads hold them off (`local_bh_disable`), in one atomic word, used from process context
//! and from the timer signal's handler.
//!
//! The word holds `RUNNING` (one thread runs softirq actions), `DEFERRED` (an attempt to run
//! them found bottom halves disabled: no new section starts until they ran), `WAITERS` (a
//! `local_bh_disable` sleeps on the word until `RUNNING` or `DEFERRED` clears) and the count of
//! bottom-half-disabled threads. The rules:
//! - `RUNNING` is only taken with the count at 0, and taking it clears `DEFERRED`.
//! - `DEFERRED` is only set while the count is above 0, so the thread that brings the count to
//!   0 sees it ([`BhWord::enable`] says it was the last: it runs the softirqs).
//! - A section is only counted in while neither `RUNNING` nor `DEFERRED` is set (a section never
//!   overlaps softirqs; deferred softirqs are not starved by overlapping sections); a section
//!   that has to wait sets `WAITERS` and sleeps on the word (`futex(2)`), and dropping `RUNNING`
//!   wakes every sleeper.
//!
//! The softirq code re-checks its pending mask after dropping `RUNNING` or the count (SeqCst,
//! as every operation here), so no raise is lost. Lock-free but for the waiters' sleep; no
//! allocation; the handler's side makes no system call but the wake-up: async-signal-safe.
//! The models at the bottom (loom) check the exclusion, the waiters' wake-ups and that no
//! deferred softirq is lost.

use super::atomic::{AtomicU32, Ordering::SeqCst};
use super::{const_fn, futex};

/// A thread runs softirq actions.
const RUNNING: u32 = 1 << 31;
/// A `local_bh_disable` sleeps on the word.
const WAITERS: u32 = 1 << 30;
/// Softirqs were deferred by a bottom-half-disabled section: no new section starts until they
/// ran.
const DEFERRED: u32 = 1 << 29;
/// The count of bottom-half-disabled threads.
const COUNT: u32 = DEFERRED - 1;

/// The word (see the module's documentation).
#[derive(Debug)]
pub struct BhWord {
    word: AtomicU32,
}

impl BhWord {
    const_fn! {
        /// No softirq running, none deferred, bottom halves enabled.
        pub fn new() -> BhWord {
            BhWord { word: AtomicU32::new(0) }
        }
    }

    /// Takes `RUNNING` if nobody runs softirqs and bottom halves are enabled everywhere (clearing
    /// `DEFERRED`): `true`, the caller runs them and then calls [`end_run`](Self::end_run).
    /// When bottom halves are disabled, marks the softirqs `DEFERRED` (only while a section is
    /// still open: its last [`enable`](Self::enable) then sees the mark) and fails.
    pub fn try_run(&self) -> bool {
        let mut cur = self.word.load(SeqCst);
        loop {
            let next = if cur & RUNNING != 0 {
                return false;
            } else if cur & COUNT != 0 {
                if cur & DEFERRED != 0 {
                    return false;
                }
                cur | DEFERRED
            } else {
                // A waiter's flag alone does not stop us: it waits for us to finish.
                (cur | RUNNING) & !DEFERRED
            };
            match self.word.compare_exchange(cur, next, SeqCst, SeqCst) {
                Ok(_) => return next & RUNNING != 0,
                Err(now) => cur = now,
            }
        }
    }

    /// Drops `RUNNING` (taken by [`try_run`](Self::try_run)); wakes the sections that wait for
    /// it.
    pub fn end_run(&self) {
        let prev = self.word.fetch_and(!(RUNNING | WAITERS), SeqCst);
        if prev & WAITERS != 0 {
            futex::wake(&self.word, i32::MAX);
        }
    }

    /// Counts the calling thread in as bottom-half-disabled (the first level of its
    /// `local_bh_disable`), first sleeping while softirqs run or are deferred.
    pub fn disable(&self) {
        let mut cur = self.word.load(SeqCst);
        loop {
            if cur & (RUNNING | DEFERRED) == 0 {
                match self.word.compare_exchange(cur, cur + 1, SeqCst, SeqCst) {
                    Ok(_) => return,
                    Err(now) => cur = now,
                }
                continue;
            }
            // Sleep until end_run clears RUNNING (the caller runs no softirq itself).
            match self
                .word
                .compare_exchange(cur, cur | WAITERS, SeqCst, SeqCst)
            {
                Ok(_) => {
                    futex::wait(&self.word, cur | WAITERS, None);
                    cur = self.word.load(SeqCst);
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Counts the calling thread out (the last level of its `local_bh_enable`): `true` if it
    /// was the last bottom-half-disabled thread, which then runs the softirqs pending or
    /// deferred meanwhile.
    pub fn enable(&self) -> bool {
        (self.word.fetch_sub(1, SeqCst) - 1) & COUNT == 0
    }

    /// Whether softirqs were deferred by a section and have not run yet.
    pub fn deferred(&self) -> bool {
        self.word.load(SeqCst) & DEFERRED != 0
    }

    /// Threads bottom-half-disabled now.
    pub fn count(&self) -> u32 {
        self.word.load(SeqCst) & COUNT
    }
}

impl Default for BhWord {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::BhWord;
    use crate::kernel::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use loom::sync::Arc;
    use loom::thread;

    /// The softirq side and a section, as `softirq.rs` uses the word: a pending mask, the runs
    /// of the action, and who is inside (for the exclusion checks).
    struct Cpu {
        bh: BhWord,
        pending: AtomicU32,
        runs: AtomicU32,
        /// Threads inside a bottom-half-disabled section / running softirqs.
        in_section: AtomicU32,
        running: AtomicU32,
        /// `wakeup_softirqd` was called (ksoftirqd would run what is left).
        softirqd: AtomicU32,
    }

    impl Cpu {
        fn new() -> Cpu {
            Cpu {
                bh: BhWord::new(),
                pending: AtomicU32::new(0),
                runs: AtomicU32::new(0),
                in_section: AtomicU32::new(0),
                running: AtomicU32::new(0),
                softirqd: AtomicU32::new(0),
            }
        }

        /// `raise_softirq` + the interrupt's `do_softirq` (`irq_exit`).
        fn interrupt(&self) {
            self.pending.fetch_or(1, SeqCst);
            self.do_softirq();
        }

        /// `do_softirq_core`: run pending softirqs unless another thread runs them or bottom
        /// halves are disabled (then they are deferred to the last section's end).
        fn do_softirq(&self) {
            if self.pending.load(SeqCst) == 0 && !self.bh.deferred() {
                return;
            }
            if !self.bh.try_run() {
                return;
            }
            self.running.fetch_add(1, SeqCst);
            assert_eq!(self.in_section.load(SeqCst), 0, "softirqs inside a section");
            assert_eq!(self.running.load(SeqCst), 1, "softirqs on two threads");
            if self.pending.swap(0, SeqCst) != 0 {
                self.runs.fetch_add(1, SeqCst);
            }
            self.running.fetch_sub(1, SeqCst);
            self.bh.end_run();
            if self.pending.load(SeqCst) != 0 {
                self.softirqd.store(1, SeqCst);
            }
        }

        /// `local_bh_disable` ... `local_bh_enable` in process context.
        fn section(&self) {
            self.bh.disable();
            self.in_section.fetch_add(1, SeqCst);
            assert_eq!(self.running.load(SeqCst), 0, "a section inside softirqs");
            thread::yield_now();
            self.in_section.fetch_sub(1, SeqCst);
            if self.bh.enable() {
                self.do_softirq();
            }
        }

        /// Every raise was run, or left to ksoftirqd.
        fn nothing_lost(&self) {
            assert!(
                self.pending.load(SeqCst) == 0 || self.softirqd.load(SeqCst) == 1,
                "a raised softirq was neither run nor left to ksoftirqd"
            );
            assert!(!self.bh.deferred(), "softirqs deferred for good");
            assert_eq!(self.bh.count(), 0);
        }
    }

    /// Runs `f` on `cpu` in a thread of its own.
    fn on_thread(cpu: &Arc<Cpu>, f: fn(&Cpu)) -> thread::JoinHandle<()> {
        let cpu = cpu.clone();
        thread::spawn(move || f(&cpu))
    }

    /// An interrupt on one thread, a section on another: they never overlap, and the softirq
    /// the interrupt raised runs (in the interrupt, or at the section's end).
    #[test]
    fn a_section_defers_the_interrupts_softirq_and_runs_it() {
        loom::model(|| {
            let cpu = Arc::new(Cpu::new());
            let irq = on_thread(&cpu, Cpu::interrupt);
            cpu.section();
            irq.join().unwrap();
            cpu.nothing_lost();
            assert!(cpu.runs.load(SeqCst) == 1 || cpu.softirqd.load(SeqCst) == 1);
        });
    }

    /// Two sections and an interrupt: sections overlap each other but never softirqs; a section
    /// that finds softirqs running or deferred sleeps until they ran (its wake-up is never
    /// lost: loom reports a thread asleep for good as a deadlock), and the last section to end
    /// runs what was deferred.
    #[test]
    fn overlapping_sections_and_an_interrupt() {
        loom::model(|| {
            let cpu = Arc::new(Cpu::new());
            let irq = on_thread(&cpu, Cpu::interrupt);
            let other = on_thread(&cpu, Cpu::section);
            cpu.section();
            irq.join().unwrap();
            other.join().unwrap();
            cpu.nothing_lost();
        });
    }

    /// Softirqs running on one thread while a section starts on another: the section waits
    /// for them (sleeping on the word) and is woken when they end.
    #[test]
    fn a_section_waits_for_running_softirqs() {
        loom::model(|| {
            let cpu = Arc::new(Cpu::new());
            cpu.pending.store(1, SeqCst);
            let runner = on_thread(&cpu, Cpu::do_softirq);
            cpu.section();
            runner.join().unwrap();
            cpu.nothing_lost();
            assert_eq!(cpu.runs.load(SeqCst), 1);
        });
    }
}
