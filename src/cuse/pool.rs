//! The reader pool: threads `cuse/N` that each read one request, dispatch it and go back to
//! read. The pool starts with one reader and grows while every reader is busy (up to
//! [`Config::threads`]); spare readers park on a futex, and one reader may spin for the next
//! request of a client that asks again at once, while spinning is seen to pay (see [`reader`]
//! and [`super::spin`]).
//!
//! How many readers wait for requests follows the clients, as the kernel's workqueue pools follow
//! their work items' concurrency. With several clients active (more than the CPUs, or where no
//! reader spins), a reader taking a request while no other is free calls one more, so that
//! someone always waits for the next. With one client (one caller among the last requests),
//! whose requests come one at a time, the single free reader takes the request and no other
//! waits meanwhile: a second reader asleep in `read(2)` would be woken by the kernel for every
//! request, only to find it taken. So with a few clients, no more than the CPUs, that one
//! spinning reader serves: the others would wait in `poll(2)` (the fd is non-blocking while a
//! reader spins), woken by every request; a request that comes while the spinner is busy is
//! read as soon as it answers (two clients on two vCPUs: 2.5x the calls of a pool that kept a
//! reader free for them). Another reader is called when a file operation sleeps in the runtime
//! (the scheduler's sleep hook, [`crate::kernel::sched`]): for the other callers, and for the
//! kernel's INTERRUPT of this call. A file operation that blocks outside the runtime (a std
//! lock, I/O) keeps a lone client's device for itself meanwhile, as a driver blocked
//! uninterruptibly does; with a few clients, a standby reader takes over within 20 ms
//! ([`Server::stand_by`]), so one client blocked so does not hold up the others.
//!
//! Once the connection is up the fd is blocking and every reader sleeps in `read(2)`, as libfuse's
//! workers do: the kernel queues the readers exclusively (`fuse_dev_do_read`), so a request wakes
//! one reader, not all of them, and costs one system call to receive. Stopping does not wait for a
//! request: the device raises `stop` and interrupts each reader's `read` with a signal of its own
//! (a real-time signal with an empty handler, installed without `SA_RESTART`, [`wake_signal`]),
//! again until the reader has left. `read` errors EAGAIN/EINTR/ENOENT: read again (interrupted,
//! or the kernel dropped the request); ENODEV/ECONNABORTED: the connection is gone.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::config::Config;
use super::error::{Error, sys};
use super::reply::Channel;
use super::spin::{Pace, SpinPolicy};
use crate::kernel::fs::FileOperations;
use crate::kernel::sched::{self, SleepHook};
use crate::kernel::sync::ring::Doorbell;
use crate::kernel::{clock, jiffies};
use crate::sys::{futex, io, prio};

/// The two nice values of a reader ([`Server::reader_nice`]).
#[derive(Debug, Clone, Copy)]
struct ReaderNice {
    /// The daemon's.
    base: i32,
    /// A lone client's reader's.
    lone: i32,
}

/// How many of the last requests' callers are remembered (to count the active clients).
pub(super) const RECENT_CALLERS: usize = 8;

/// Requests that must count several clients, no more than the CPUs, with none counting more
/// in between, before one spinning reader serves them ([`Server::several_spin`]): with more
/// clients than CPUs the last [`RECENT_CALLERS`] requests come from two of them now and then
/// (one in eight requests with four clients on two vCPUs), and each time the pool would
/// shrink to one reader.
pub(super) const FEW_CLIENTS_STREAK: u32 = 64;

/// No reader stands by ([`Server::stand_by`]).
pub(super) const STANDBY_NONE: u32 = 0;
/// A reader stands by: looking every [`STANDBY_PERIOD_NS`] whether the readers are held up,
/// or asleep on [`Server::taken`] while the device is quiet.
pub(super) const STANDBY_ON: u32 = 1;
/// How often the standby reader looks: 5 jiffies (20 ms), the longest a request of one client
/// waits behind another client's request blocked outside the runtime while a spinning reader
/// serves them; 50 wake-ups a second while clients are active, none once they are gone.
pub(super) const STANDBY_PERIOD_NS: u64 = 5 * jiffies::NSEC_PER_JIFFY;

/// What the reader threads share: the connection, the file operations, and the pool of readers.
pub(super) struct Server {
    pub(super) chan: Arc<Channel>,
    pub(super) fops: Arc<dyn FileOperations>,
    pub(super) next_fh: AtomicU64,
    pub(super) max_read: u32,
    /// Whether spinning pays a lone client, learnt from the pace of its requests.
    pub(super) policy: SpinPolicy,
    /// The pace of several clients' requests, which gives their spin window; its longest
    /// window is a lone client's ([`Config::spin`]; zero: never spin).
    pub(super) pace: Pace,
    /// One reader at a time spins (see [`reader`]); while it does, the fd is non-blocking.
    spinning: AtomicBool,
    /// The fd's file status flags while every reader sleeps in `read(2)` (blocking); the
    /// spinning reader adds `O_NONBLOCK` for as long as it spins.
    blocking_flags: OFlag,
    /// Whether the fd is non-blocking now (a reader spins on it).
    nonblocking: AtomicBool,
    /// Spins in a row that ran out without a request.
    pub(super) spin_misses: AtomicU32,
    /// Chances to spin still to pass up after misses (a back-off).
    pub(super) spin_skip: AtomicU32,
    /// The callers (thread ids) of the last requests, a ring: how many clients are active.
    recent_callers: [AtomicU32; RECENT_CALLERS],
    recent_next: AtomicUsize,
    /// Distinct callers among them, counted when a caller is noted: read several times a
    /// request, counted once.
    clients: AtomicUsize,
    /// Requests in a row noted with several clients, no more than the CPUs (see
    /// [`FEW_CLIENTS_STREAK`]).
    few_streak: AtomicU32,
    /// CPUs this process may run on (a test may change it).
    pub(super) cpus: AtomicUsize,
    /// Set by [`Device::stop`](super::Device::stop): readers leave when they see it.
    stop: AtomicBool,
    /// Written when the connection ends (not when stopped).
    pub(super) gone: Arc<EventFd>,
    /// The signal that interrupts a reader's read when stopping ([`wake_signal`]).
    wake: i32,
    buffer_len: usize,
    /// [`Config::threads`]: the pool grows up to this many readers.
    max_readers: usize,
    /// Readers not parked (spawned, less those in `parked`).
    pub(super) active: AtomicUsize,
    /// Readers running a request (from the read that took it to its answer). The others of
    /// `active` are free: in `read(2)`, spinning, or on their way back to read.
    pub(super) busy: AtomicUsize,
    /// Parked readers, the most recently parked last; each waits on its own futex word.
    parked: Mutex<Vec<Arc<AtomicU32>>>,
    /// Whether a reader stands by, a futex word (`STANDBY_*`; see [`Server::stand_by`]).
    pub(super) standby: AtomicU32,
    /// Rung at every request taken: the standby reader sees from its count whether the
    /// readers move, and sleeps on it while the device is quiet (the console's doorbell, whose
    /// handshake the loom models check).
    pub(super) taken: Doorbell,
    /// The readers' nice values, if they differ: the daemon's, and a lone client's reader's
    /// ([`Config::reader_nice`] from the daemon's).
    reader_nice: Option<ReaderNice>,
    /// A reader was refused the lone client's nice value: no reader tries again.
    nice_refused: AtomicBool,
    /// Every reader spawned, in order (`cuse/0`, `cuse/1`, ...).
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl Server {
    /// Serves `fops` on the initialised connection `chan`: makes the fd blocking (from here on
    /// the readers sleep in `read(2)`), installs the stop signal and starts the first reader.
    pub(super) fn start(
        chan: Arc<Channel>,
        fops: Arc<dyn FileOperations>,
        config: &Config,
    ) -> Result<Arc<Server>, Error> {
        let wake = wake_signal()?;
        let flags = nix::fcntl::fcntl(chan.fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(sys("fcntl F_GETFL /dev/cuse"))?;
        let blocking_flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(chan.fd(), nix::fcntl::FcntlArg::F_SETFL(blocking_flags))
            .map_err(sys("fcntl F_SETFL /dev/cuse"))?;
        let gone = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(sys("eventfd"))?,
        );
        // Relative to the daemon's nice value, read once: readers spawned by readers inherit
        // theirs.
        let reader_nice = match (config.reader_nice, prio::thread_nice()) {
            (0, _) => None,
            (delta, Ok(base)) => Some(ReaderNice {
                base,
                lone: (base + delta).clamp(-20, 19),
            }),
            (_, Err(e)) => {
                log::warn!(
                    "readers keep the daemon's nice value (getpriority: {})",
                    e.desc()
                );
                None
            }
        };
        let server = Arc::new(Server {
            chan,
            fops,
            next_fh: AtomicU64::new(1),
            max_read: config.max_read,
            policy: SpinPolicy::new(),
            pace: Pace::new(u64::try_from(config.spin.as_nanos()).unwrap_or(u64::MAX)),
            spinning: AtomicBool::new(false),
            blocking_flags,
            nonblocking: AtomicBool::new(false),
            spin_misses: AtomicU32::new(0),
            spin_skip: AtomicU32::new(0),
            recent_callers: [const { AtomicU32::new(0) }; RECENT_CALLERS],
            recent_next: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            few_streak: AtomicU32::new(0),
            cpus: AtomicUsize::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
            stop: AtomicBool::new(false),
            gone,
            wake,
            buffer_len: config.read_buffer_len(),
            max_readers: config.threads,
            active: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            parked: Mutex::new(Vec::new()),
            standby: AtomicU32::new(STANDBY_NONE),
            taken: Doorbell::new(),
            reader_nice,
            nice_refused: AtomicBool::new(false),
            readers: Mutex::new(Vec::with_capacity(config.threads)),
        });
        server.spawn_reader()?;
        Ok(server)
    }

    /// Adds a reader to the pool, unless it is full or stopping. The pool starts with one reader
    /// and grows by one each time a reader is needed while no other is free (see the module's
    /// documentation), up to [`Config::threads`]; readers never retire (they park instead). So
    /// the pool follows the clients' concurrency: more readers than requests in flight would
    /// only take turns being woken.
    fn spawn_reader(self: &Arc<Server>) -> Result<(), Error> {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if self.stop.load(Ordering::Acquire) || readers.len() >= self.max_readers {
            return Ok(());
        }
        let server = self.clone();
        match std::thread::Builder::new()
            .name(format!("cuse/{}", readers.len()))
            .spawn(move || reader(&server))
        {
            Ok(t) => {
                readers.push(t);
                self.active.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => Err(sys("spawn a reader thread")(e)),
        }
    }

    /// Gives the calling reader the nice value of a reader serving a lone client (`lone`) or
    /// the daemon's; returns whether it has the lone client's now. A new reader starts with
    /// its creator's nice value: it calls this with `lone` false, `was` true. Refused the
    /// privilege to lower it, says so once, and no reader tries again.
    fn take_nice(&self, lone: bool, was: bool) -> bool {
        let Some(n) = self.reader_nice else {
            return false;
        };
        if lone == was || (lone && self.nice_refused.load(Ordering::Relaxed)) {
            return was;
        }
        match prio::set_thread_nice(if lone { n.lone } else { n.base }) {
            Ok(()) => lone,
            Err(e) => {
                if lone && !self.nice_refused.swap(true, Ordering::Relaxed) {
                    log::info!(
                        "readers keep the daemon's nice value (nice {}: {}; it needs CAP_SYS_NICE)",
                        n.lone,
                        e.desc()
                    );
                }
                was
            }
        }
    }

    /// Readers in the pool now.
    pub(super) fn readers(&self) -> usize {
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(super) fn parked(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AtomicU32>>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more reader to wait for requests: the most recently parked one (its stack is the
    /// warmest), or a new one.
    fn add_reader(self: &Arc<Server>) -> Result<(), Error> {
        let mut parked = self.parked();
        if let Some(word) = parked.pop() {
            self.active.fetch_add(1, Ordering::AcqRel);
            drop(parked);
            word.store(1, Ordering::Release);
            futex::wake(&word, 1);
            return Ok(());
        }
        drop(parked);
        self.spawn_reader()
    }

    /// Parks the calling reader (out of `read(2)`) if it would otherwise sleep there (no request
    /// waiting) while enough other active readers are free (not busy with a request), until
    /// [`Server::add_reader`] or stop needs it; `false` if it did not park. Enough: one when one
    /// reader serves the clients ([`Server::one_reader_serves`]: a lone client, whose requests
    /// come one at a time, and a second reader asleep in `read(2)` would only be woken by the
    /// kernel for each request the spinning one takes; or a few that a spinning reader serves),
    /// two otherwise. The decision and the count change are one compare-and-swap, so readers
    /// finishing together cannot all park. Under load requests are queued, nobody parks, and the
    /// pool keeps the readers the clients need.
    fn park_if_spare(&self, fd: BorrowedFd<'_>, word: &Arc<AtomicU32>) -> bool {
        let keep = self.readers_to_keep();
        let spare = |active: usize| active >= self.busy.load(Ordering::Acquire) + keep;
        word.store(0, Ordering::Release);
        if !self.leave_active(fd, spare, |parked| parked.push(word.clone())) {
            return false;
        }
        // Stop wakes every parked word after raising `stop`; a reader parked after that sees it.
        while word.load(Ordering::Acquire) == 0 && !self.stop.load(Ordering::Acquire) {
            futex::wait(word, 0, None);
        }
        true
    }

    /// The calling reader leaves the active ones if `may_leave(active)` holds and no request is
    /// waiting to be read: the check and the count change are one compare-and-swap, made
    /// under the parked readers' lock, where `then` runs once it has left.
    fn leave_active(
        &self,
        fd: BorrowedFd<'_>,
        may_leave: impl Fn(usize) -> bool,
        then: impl FnOnce(&mut Vec<Arc<AtomicU32>>),
    ) -> bool {
        if !may_leave(self.active.load(Ordering::Acquire)) || readable_now(fd) {
            return false;
        }
        let mut parked = self.parked();
        let mut active = self.active.load(Ordering::Acquire);
        loop {
            if !may_leave(active) {
                return false;
            }
            match self.active.compare_exchange(
                active,
                active - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => active = now,
            }
        }
        then(&mut parked);
        true
    }

    /// With a few clients that one spinning reader serves ([`Server::one_reader_serves`]),
    /// the calling free reader stands by, if none does yet and another active reader is free
    /// (the spinner): out of `read(2)` and `poll(2)`, where every request would wake
    /// it for nothing, it looks every [`STANDBY_PERIOD_NS`] whether the readers are held up:
    /// no request taken in a whole period, every active reader busy, and one waiting. Then a
    /// request is blocked outside the runtime (a std lock, I/O: no sleep hook runs) and holds
    /// up the other clients: the standby reader takes over, active again, and reads (a few
    /// clients' requests wait at most a period behind one that blocks so, as with a reader
    /// free for them). A period with nothing taken and no reader busy: the clients are quiet,
    /// it sleeps until the next request is taken ([`Server::serve`] rings [`Server::taken`]). It leaves the
    /// standby once the clients are one, or more than the CPUs, and goes back to reading (or
    /// parks). `false` if it did not stand by.
    fn stand_by(&self, fd: BorrowedFd<'_>) -> bool {
        if !self.several_spin()
            || self
                .standby
                .compare_exchange(
                    STANDBY_NONE,
                    STANDBY_ON,
                    Ordering::SeqCst,
                    Ordering::Acquire,
                )
                .is_err()
        {
            return false;
        }
        let another_free = |active: usize| active >= self.busy.load(Ordering::Acquire) + 2;
        if !self.leave_active(fd, another_free, |_| {}) {
            self.standby.store(STANDBY_NONE, Ordering::Release);
            return false;
        }
        let mut seen = self.taken.seen();
        while self.watching() {
            // A period (stopping clears the word and wakes it).
            let deadline = jiffies::monotonic_ns() + STANDBY_PERIOD_NS;
            while self.watching() && jiffies::monotonic_ns() < deadline {
                futex::wait(&self.standby, STANDBY_ON, Some(deadline));
            }
            let now = self.taken.seen();
            if now != seen {
                seen = now;
                continue;
            }
            // SeqCst, against the one in `serve` (see there).
            let busy = self.busy.load(Ordering::SeqCst);
            if busy > 0 && busy >= self.active.load(Ordering::Acquire) && readable_now(fd) {
                log::debug!(
                    "a request waits while every reader is held up: the standby reader takes it"
                );
                break;
            }
            if busy == 0 && self.watching() {
                // Quiet: asleep until a request is taken (at once if one was since `seen`: a
                // reader counts itself busy before it rings).
                self.taken.sleep(seen);
                seen = self.taken.seen();
            }
        }
        self.standby.store(STANDBY_NONE, Ordering::Release);
        self.active.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Whether the standby reader goes on standing by: not stopping, and still a few clients.
    fn watching(&self) -> bool {
        !self.stop.load(Ordering::Acquire)
            && self.standby.load(Ordering::Acquire) == STANDBY_ON
            && self.several_spin()
    }

    /// Active readers to keep besides the busy ones, plus one (2 or 3): see
    /// [`Server::park_if_spare`].
    fn readers_to_keep(&self) -> usize {
        if self.one_reader_serves() { 2 } else { 3 }
    }

    /// Whether one free reader serves the clients: a lone client (its requests come one at a
    /// time), or several, no more than the CPUs, while readers may spin (the spinning reader
    /// takes each request as it comes, and one that comes while it is busy is read as soon as
    /// it answers; another free reader would only wait in `poll(2)`, woken by every request
    /// to find it taken).
    fn one_reader_serves(&self) -> bool {
        self.active_clients() <= 1 || self.several_spin()
    }

    /// Whether several clients are active, no more than the CPUs (counted so by
    /// [`FEW_CLIENTS_STREAK`] requests, none counting more since), and readers may spin: one
    /// spinning reader serves them, and another stands by ([`Server::stand_by`]).
    fn several_spin(&self) -> bool {
        self.few_streak.load(Ordering::Relaxed) >= FEW_CLIENTS_STREAK && self.can_spin()
    }

    /// Whether a free reader is spare now, so that [`Server::park_if_spare`] may park it (it
    /// checks again, atomically). Called after every answer (a lone client's single reader is
    /// never spare).
    fn spare_now(&self) -> bool {
        self.active.load(Ordering::Acquire)
            >= self.busy.load(Ordering::Acquire) + self.readers_to_keep()
    }

    /// The calling reader becomes the one that spins, if none does: the fd is made
    /// non-blocking, so that it reads the next request the moment it is queued. `false` if
    /// another reader spins (or the fd's flags cannot be changed: then nobody spins).
    fn begin_spin(&self, fd: BorrowedFd<'_>) -> bool {
        if self.spinning.swap(true, Ordering::Acquire) {
            return false;
        }
        let flags = self.blocking_flags | OFlag::O_NONBLOCK;
        if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)) {
            log::warn!(
                "fcntl F_SETFL O_NONBLOCK /dev/cuse: {}: not spinning",
                e.desc()
            );
            self.spinning.store(false, Ordering::Release);
            return false;
        }
        self.nonblocking.store(true, Ordering::Release);
        true
    }

    /// The spinning reader stops spinning: the fd is blocking again (the readers sleep in
    /// `read(2)`), and another reader may spin.
    fn end_spin(&self, fd: BorrowedFd<'_>) {
        self.nonblocking.store(false, Ordering::Release);
        if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(self.blocking_flags)) {
            // The readers still serve: one whose read finds nothing waits in poll(2).
            log::warn!("fcntl F_SETFL /dev/cuse (blocking again): {}", e.desc());
            self.nonblocking.store(true, Ordering::Release);
        }
        self.spinning.store(false, Ordering::Release);
    }

    /// Stops the pool: raises `stop`, wakes the parked readers and interrupts each reader's
    /// `read(2)` with the stop signal until it has left (one busy with a request finishes it
    /// first), then joins them all.
    pub(super) fn stop_readers(&self) {
        log::debug!("spin policy: {}", self.policy.summary());
        self.stop.store(true, Ordering::Release);
        self.unpark_all();
        // Once `stop` is seen under the pool's lock no reader is added: take them until
        // none is left (one may have been added just before).
        loop {
            let readers =
                std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
            if readers.is_empty() {
                break;
            }
            for t in readers {
                // A reader sees the flag when its read returns: the signal makes it return
                // EINTR. It may land just before the reader enters read(2), so it is sent
                // again until the reader has left (a reader busy with a request finishes
                // it first).
                while !t.is_finished() {
                    // SAFETY: the thread is not joined yet, so its pthread_t is valid; the
                    // signal has an empty handler.
                    unsafe { libc::pthread_kill(t.as_pthread_t(), self.wake) };
                    std::thread::sleep(Duration::from_millis(1));
                }
                if t.join().is_err() {
                    log::error!("bug: a reader thread panicked");
                }
            }
        }
    }

    /// Wakes every parked reader, and the standby one (when stopping).
    fn unpark_all(&self) {
        for word in self.parked().drain(..) {
            word.store(1, Ordering::Release);
            futex::wake(&word, 1);
        }
        // The standby reader: out of its period's wait, and of its sleep.
        self.standby.store(STANDBY_NONE, Ordering::Release);
        futex::wake(&self.standby, i32::MAX);
        self.taken.ring();
    }

    /// Whether spinning may be tried at all: a window, and a CPU besides the client's (on one
    /// CPU a spinning reader only keeps the CPU from the client that would send the next
    /// request, until the scheduler preempts it or the window ends).
    fn can_spin(&self) -> bool {
        !self.pace.max().is_zero() && self.cpus.load(Ordering::Relaxed) >= 2
    }

    /// A request was answered: timed by the spin policy when its caller is a lone client,
    /// counted by the pace of several clients (no more than the CPUs) otherwise
    /// ([`super::spin`]). Returns the time of the answer if the clock was read.
    fn answered(&self) -> Option<u64> {
        if !self.can_spin() {
            return None;
        }
        let clients = self.active_clients();
        if clients <= 1 {
            return Some(self.policy.answered());
        } else if clients <= self.cpus.load(Ordering::Relaxed) {
            self.pace.answered();
        }
        None
    }

    /// Whether a reader that has just answered should spin for the next request (see
    /// [`reader`]), and for how long: [`Config::spin`] for a lone client (a window that
    /// outlasts a busy host's time slice), a few times their mean interval for several.
    pub(super) fn spin_window(&self) -> Option<Duration> {
        if !self.can_spin() || self.busy.load(Ordering::Acquire) != 0 {
            return None;
        }
        let clients = self.active_clients();
        if clients > self.cpus.load(Ordering::Relaxed) || (clients <= 1 && !self.policy.spin()) {
            return None;
        }
        // Back-off after misses: pass up this chance if some are still to be passed up.
        let skip = self.spin_skip.load(Ordering::Relaxed);
        if skip > 0 {
            self.spin_skip.store(skip - 1, Ordering::Relaxed);
            return None;
        }
        Some(if clients <= 1 {
            self.pace.max()
        } else {
            Duration::from_nanos(self.pace.window_ns())
        })
    }

    /// Remembers the caller of a request, and counts the active clients again.
    pub(super) fn note_caller(&self, tid: u32) {
        let i = self.recent_next.fetch_add(1, Ordering::Relaxed) % RECENT_CALLERS;
        self.recent_callers[i].store(tid, Ordering::Relaxed);
        let clients = self.count_clients();
        self.clients.store(clients, Ordering::Relaxed);
        // More clients than CPUs end a streak; one (the others quiet for a few requests)
        // neither ends nor extends it.
        if clients > self.cpus.load(Ordering::Relaxed) {
            self.few_streak.store(0, Ordering::Relaxed);
        } else if clients > 1 {
            let streak = self.few_streak.load(Ordering::Relaxed);
            if streak < FEW_CLIENTS_STREAK {
                self.few_streak.store(streak + 1, Ordering::Relaxed);
            }
        }
    }

    /// Distinct callers among the last requests (as counted at the last request).
    pub(super) fn active_clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Distinct callers among the last requests, counted now.
    fn count_clients(&self) -> usize {
        // The common case first, in one pass: every recent request from the same caller.
        let first = self.recent_callers[0].load(Ordering::Relaxed);
        if self.recent_callers[1..]
            .iter()
            .all(|c| c.load(Ordering::Relaxed) == first)
        {
            return usize::from(first != 0);
        }
        let mut seen = [0u32; RECENT_CALLERS];
        let mut n = 0;
        for c in &self.recent_callers {
            let tid = c.load(Ordering::Relaxed);
            if tid != 0 && !seen[..n].contains(&tid) {
                seen[n] = tid;
                n += 1;
            }
        }
        n
    }

    /// Records how a spin went.
    pub(super) fn spun(&self, hit: bool) {
        if hit {
            self.spin_misses.store(0, Ordering::Relaxed);
        } else {
            self.policy.missed();
            let misses = self.spin_misses.fetch_add(1, Ordering::Relaxed) + 1;
            self.spin_skip
                .store(1 << (misses - 1).min(6), Ordering::Relaxed);
        }
    }
}

/// The signal that interrupts a reader's `read(2)` when the device stops: the highest real-time
/// signal nobody handles (the runtime's timer takes the lowest), with an empty handler and no
/// `SA_RESTART`. Installed once per process.
fn wake_signal() -> Result<i32, Error> {
    static WAKE: OnceLock<Result<i32, Errno>> = OnceLock::new();
    /// Empty: its only effect is that the interrupted `read` returns EINTR. Async-signal-safe.
    extern "C" fn interrupted(_: libc::c_int) {}
    let sig = *WAKE.get_or_init(|| {
        let sig = crate::sys::signal::free_rt_signal(true).ok_or(Errno::EAGAIN)?;
        // SAFETY: a zeroed sigaction is valid; handler, flags (none: no SA_RESTART, so the
        // read returns EINTR) and an empty mask are filled in below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = interrupted as extern "C" fn(libc::c_int) as usize;
        // SAFETY: sa.sa_mask is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: installing a handler that does nothing for a signal that had none.
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(Errno::last());
        }
        Ok(sig)
    });
    sig.map_err(sys(
        "a real-time signal to stop the readers with (sigaction)",
    ))
}

/// Unblocks the real-time signal `sig` for the calling thread (nix's `SigSet` holds only the
/// standard signals).
fn unblock(sig: i32) -> Result<(), Errno> {
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid; `sig` is a real-time signal number.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    // SAFETY: a valid set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(rc))
    }
}

/// One reader thread: one read = one request, until stopped or the connection is gone.
///
/// Spin, then sleep: a reader that has just answered the only request in flight reads the fd
/// non-blocking in a loop (without sleeping) for up to [`Config::spin`] before it goes to sleep
/// in `read(2)`, one reader at a time; for a lone client, while spinning is seen to serve it
/// faster than sleeping ([`super::spin`]: the spin policy tries both and keeps the faster). For
/// several clients the window is a few times the mean interval between their requests. A client
/// that asks again right away is served without a sleep and a wake-up on either side of the
/// round trip (on an idle CPU, waking a sleeper is most of it), and its request is taken by the
/// read that finds it: one system call, as the floor of a spinning server.
///
/// The fd is non-blocking while a reader spins ([`Server::begin_spin`]), blocking again when it
/// stops ([`Server::end_spin`]): one `fcntl` each way, not one per request while the client
/// keeps asking. Another reader that finds nothing meanwhile stands by or parks if it is not
/// needed ([`Server::one_reader_serves`]), else waits in `poll(2)` and reads again.
///
/// Spinning is not tried while other readers are busy with requests (the next request is likely
/// queued already), nor while more clients are active (distinct callers among the last 8
/// requests) than there are CPUs, nor on one CPU: then a spinning reader would only take the
/// CPU from a client. Spins that run out make the readers pass up the next chances (1, 2, 4,
/// ... up to 64 in a row), so a client that asks rarely costs no more than a sleeping reader;
/// a quiet device costs nothing.
/// The same trade as the kernel's `net.core.busy_read`.
///
/// A reader serving a lone client runs at [`Config::reader_nice`] (5 steps more weight than
/// the daemon's other threads by default), so that where the scheduler preempts by weight on
/// a wake-up (CFS), the reader a request wakes runs before its caller sleeps in its wait for
/// the answer, which then finds the caller awake: one wake-up of a sleeping task less per call
/// on one CPU. With several clients the readers keep the daemon's nice value: their callers'
/// requests then gather while a reader works, and it takes them without sleeping between
/// (preempting each caller would serve one request per wake-up).
fn reader(server: &Arc<Server>) {
    // Whoever spawned us may block signals; the stop signal must get through.
    let _ = unblock(server.wake);
    // At the daemon's nice value until it serves a lone client.
    let mut lone_nice = server.take_nice(false, true);
    let mut buf = vec![0u8; server.buffer_len];
    let fd = server.chan.fd();
    let mut answered = false;
    // When this reader's last answer was given, if the clock was read then.
    let mut answered_ns = None;
    // This reader spins (holds `spinning`; the fd is non-blocking).
    let mut spinner = false;
    let park = Arc::new(AtomicU32::new(0));
    while !server.stop.load(Ordering::Acquire) {
        // A few clients that the spinning reader serves: this one stands by, if none does.
        if answered && !spinner && server.stand_by(fd.as_fd()) {
            answered = false;
            continue;
        }
        // Nothing to read and two other readers free already: this one parks. With the kernel
        // waking waiting readers in turn (FIFO), fewer of them means warmer ones.
        if answered && server.spare_now() {
            if spinner {
                server.end_spin(fd.as_fd());
                spinner = false;
            }
            if server.park_if_spare(fd.as_fd(), &park) {
                answered = false;
                continue;
            }
        }
        let mut spun = None;
        if answered
            && let Some(window) = server.spin_window()
            && (spinner || server.begin_spin(fd.as_fd()))
        {
            spinner = true;
            spun = spin_read(fd.as_fd(), &mut buf, answered_ns, window, &server.stop);
            server.spun(spun.is_some());
        }
        if spun.is_none() && spinner {
            server.end_spin(fd.as_fd());
            spinner = false;
        }
        answered = false;
        if server.stop.load(Ordering::Acquire) {
            break;
        }
        match spun.unwrap_or_else(|| io::read(fd.as_fd(), &mut buf)) {
            Ok(0) => {
                log::debug!("connection closed");
                break;
            }
            Ok(n) => {
                answered_ns = server.serve(&buf[..n]);
                answered = true;
                lone_nice = server.take_nice(server.active_clients() <= 1, lone_nice);
            }
            // The fd is non-blocking because another reader spins: with a few clients, stand
            // by or park if spare (the spinner takes their requests), else wait for a request.
            Err(Errno::EAGAIN) if server.nonblocking.load(Ordering::Acquire) => {
                if !(server.several_spin()
                    && (server.stand_by(fd.as_fd())
                        || (server.spare_now() && server.park_if_spare(fd.as_fd(), &park))))
                {
                    wait_readable(fd.as_fd());
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOENT) => continue,
            Err(Errno::ENODEV | Errno::ECONNABORTED) => {
                log::debug!("connection gone");
                break;
            }
            Err(e) => {
                log::error!("read /dev/cuse: {}", e.desc());
                break;
            }
        }
    }
    if spinner {
        server.end_spin(fd.as_fd());
    }
    if !server.stop.load(Ordering::Acquire) {
        let _ = server.gone.write(1); // stopped is not "gone"
    }
}

impl Server {
    /// Runs one request read by a reader, to its answer; returns the time of the answer if
    /// the clock was read ([`Server::answered`]).
    fn serve(self: &Arc<Server>, req: &[u8]) -> Option<u64> {
        // The doorbell rings for the standby reader only while one stands by. The two SeqCst
        // pairs (here: the busy count, then the standby word; in `stand_by`: the standby word,
        // then later the busy count) order them: either this load sees the reader standing by
        // and rings, or that reader sees this request busy and does not go to sleep.
        let busy = self.busy.fetch_add(1, Ordering::SeqCst) + 1;
        if self.standby.load(Ordering::SeqCst) != STANDBY_NONE {
            self.taken.ring();
        }
        // Every other active reader busy too? With several clients (more than the CPUs, or
        // no spinning), another reader goes to wait for their next requests now. With one, its
        // next request cannot come before this answer; with a few that a spinning reader
        // serves, theirs wait for it (see `one_reader_serves`), and another reader is called
        // only to stand by if none does. Then another reader is called only if the file
        // operation sleeps (the hook below), for other callers and the INTERRUPT of this call.
        if busy >= self.active.load(Ordering::Acquire)
            && (!self.one_reader_serves()
                || (self.several_spin() && self.standby.load(Ordering::Acquire) == STANDBY_NONE))
            && let Err(e) = self.add_reader()
        {
            // The readers there are go on serving.
            log::warn!("{e}");
        }
        {
            let _hook = SleepHookGuard::install(self);
            let s = std::panic::AssertUnwindSafe(self);
            let req = std::panic::AssertUnwindSafe(req);
            if std::panic::catch_unwind(|| s.handle(&req)).is_err() {
                log::error!("bug: a request handler panicked; the request was answered EIO");
            }
        }
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.answered()
    }
}

/// The reader's [`SleepHook`] while it runs a file operation: if the operation sleeps in the
/// runtime while every active reader is busy, one more reader is put to work (the kernel's
/// workqueue wakes another worker when one blocks). Removed when dropped.
struct SleepHookGuard<'a> {
    _server: std::marker::PhantomData<&'a Arc<Server>>,
}

impl<'a> SleepHookGuard<'a> {
    fn install(server: &'a Arc<Server>) -> Self {
        /// The hook: `data` is the reader's `&Arc<Server>`.
        fn reader_sleeps(data: *const ()) {
            // SAFETY: `data` was made from a `&'a Arc<Server>` by `install`, and the guard
            // (which lives no longer than 'a) removes the hook before it goes: the hook only
            // runs on this thread, while the guard is alive.
            let server = unsafe { &*data.cast::<Arc<Server>>() };
            if server.busy.load(Ordering::Acquire) >= server.active.load(Ordering::Acquire)
                && let Err(e) = server.add_reader()
            {
                log::warn!("{e}");
            }
        }
        sched::set_sleep_hook(Some(SleepHook {
            call: reader_sleeps,
            data: (server as *const Arc<Server>).cast(),
        }));
        SleepHookGuard {
            _server: std::marker::PhantomData,
        }
    }
}

impl Drop for SleepHookGuard<'_> {
    fn drop(&mut self) {
        sched::set_sleep_hook(None);
    }
}

/// Whether a request is waiting to be read.
fn readable_now(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Reads a request from the non-blocking `fd` in a loop, without sleeping, until one comes
/// (or the read fails otherwise: the caller handles the result as a blocking read's), `window`
/// has passed since `start_ns` ([`clock::local_clock_mono`]; `None`: now) or the pool stops
/// (`None`).
fn spin_read(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    start_ns: Option<u64>,
    window: Duration,
    stop: &AtomicBool,
) -> Option<nix::Result<usize>> {
    let start = start_ns.unwrap_or_else(clock::local_clock_mono);
    let deadline = start.saturating_add(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX));
    loop {
        // The clock is read every few reads: in a VM it can cost as much as a read. No `pause`
        // between reads: the system call paces the loop already (and under emulation a pause
        // sends the virtual CPU back to its monitor, slowing the other one).
        for _ in 0..8 {
            match io::read(fd, buf) {
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOENT) => {}
                r => return Some(r),
            }
        }
        if stop.load(Ordering::Acquire) || clock::local_clock_mono() >= deadline {
            return None;
        }
    }
}

/// Waits until `fd` is readable (or hung up, or a signal came).
fn wait_readable(fd: BorrowedFd<'_>) {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::NONE);
}
