//! Replies: the channel they are written to, the table of requests in flight, and [`Reply`], the
//! object that answers one request exactly once.
//!
//! # Ground rules
//! - Every request read from the channel (except INTERRUPT, which takes no answer) is entered in
//!   the in-flight table ([`Channel::begin`]) and gets a [`Reply`].
//! - Whoever *removes* a request from the table writes its answer: the [`Reply`] when the
//!   operation finishes, or the INTERRUPT handler (`-EINTR`) if it gets there first. So a request is
//!   answered at most once even when both race; the loser's answer is dropped (logged at debug).
//! - A [`Reply`] is consumed by the method that answers; if it is dropped unanswered (a bug, or a
//!   panic in a file operation) its `Drop` answers `EIO` and logs the bug. So a client never
//!   sleeps forever in the kernel waiting for us.
//! - An INTERRUPT can be read by one thread before another thread has entered its target in the
//!   table (both were queued by the kernel). Such an early interrupt is remembered (a short list)
//!   and applied when the target begins. Uniques never repeat, so a stale entry is harmless.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::abi::{self, OUT_HEADER_LEN, OutHeader};
use crate::kernel::error::Error;

/// How many early interrupts are remembered.
const EARLY_INTERRUPTS: usize = 64;

/// The requests in flight.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Few at a time (at most one per reader thread): a vector beats a hash set here.
    pending: Vec<u64>,
    early: VecDeque<u64>,
}

/// What [`InFlight::begin`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// The request is pending: run it.
    Run,
    /// An interrupt for it arrived first: answer `EINTR` without running it.
    Interrupted,
}

impl InFlight {
    /// Enters a request just read.
    pub fn begin(&mut self, unique: u64) -> Begin {
        if !self.pending.contains(&unique) {
            self.pending.push(unique);
        }
        if let Some(i) = self.early.iter().position(|&u| u == unique) {
            self.early.remove(i);
            Begin::Interrupted
        } else {
            Begin::Run
        }
    }

    /// Takes a request out to answer it; `false` if it was already answered (interrupted).
    pub fn finish(&mut self, unique: u64) -> bool {
        self.take(unique)
    }

    fn take(&mut self, unique: u64) -> bool {
        match self.pending.iter().position(|&u| u == unique) {
            Some(i) => {
                self.pending.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// An INTERRUPT for `target`: `true` if it was pending and is now taken out (the caller answers
    /// it `EINTR`); `false` if it is not (yet) known, and then it is remembered for [`Self::begin`].
    pub fn interrupt(&mut self, target: u64) -> bool {
        if self.take(target) {
            return true;
        }
        if !self.early.contains(&target) {
            if self.early.len() == EARLY_INTERRUPTS {
                self.early.pop_front();
            }
            self.early.push_back(target);
        }
        false
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No request in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Whether an answer reached the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written.
    Sent,
    /// Not delivered: the request had been interrupted (answered `EINTR`), or the kernel no
    /// longer waited for it (`ENOENT`). For OPEN this means the open must be undone.
    Dropped,
    /// The write failed otherwise (logged).
    Failed,
}

/// The `/dev/cuse` connection (or, in tests, any message-preserving fd) and its in-flight table.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    inflight: Mutex<InFlight>,
    /// The table's length, kept under its lock, read without it ([`Channel::in_flight`]).
    count: AtomicUsize,
}

impl Channel {
    /// Wraps an fd.
    pub fn new(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            inflight: Mutex::new(InFlight::default()),
            count: AtomicUsize::new(0),
        }
    }

    /// The fd.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    fn table(&self) -> MutexGuard<'_, InFlight> {
        // A panic while holding this lock cannot leave the table inconsistent (single calls).
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the table under its lock, and its count with it.
    fn update<R>(&self, f: impl FnOnce(&mut InFlight) -> R) -> R {
        let mut t = self.table();
        let r = f(&mut t);
        self.count.store(t.len(), Ordering::Relaxed);
        r
    }

    /// Enters request `unique` and returns its reply, with what [`InFlight::begin`] found.
    pub fn begin(&self, unique: u64) -> (Reply<'_>, Begin) {
        let begin = self.update(|t| t.begin(unique));
        (
            Reply {
                chan: self,
                unique,
                done: false,
            },
            begin,
        )
    }

    /// Handles an INTERRUPT for `target`: answers it `EINTR` if it is still pending.
    pub fn interrupt(&self, target: u64) {
        if self.update(|t| t.interrupt(target)) {
            log::debug!("request {target} interrupted: answered EINTR");
            self.write(target, Error::EINTR.to_errno(), &[]);
        } else {
            log::debug!("interrupt for request {target}, not pending (answered, or not read yet)");
        }
    }

    /// Requests in flight (a snapshot, without taking the table's lock).
    pub fn in_flight(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Answers `unique` if it is still ours to answer.
    fn answer(&self, unique: u64, error: i32, body: &[&[u8]]) -> Delivery {
        if !self.update(|t| t.finish(unique)) {
            log::debug!("request {unique} was interrupted: its answer is dropped");
            return Delivery::Dropped;
        }
        self.write(unique, error, body)
    }

    /// Writes one reply with one `writev(2)`.
    fn write(&self, unique: u64, error: i32, body: &[&[u8]]) -> Delivery {
        crate::kernel::trace::cuse_reply(unique, error);
        let len = OUT_HEADER_LEN + body.iter().map(|b| b.len()).sum::<usize>();
        let header = OutHeader {
            len: u32::try_from(len).unwrap_or(u32::MAX),
            error,
            unique,
        }
        .encode();
        // Every reply has a header and at most two parts: the vector lives on the stack.
        let mut iov = [IoSlice::new(&[]); 3];
        assert!(
            body.len() < iov.len(),
            "a reply in more than {} parts",
            iov.len() - 1
        );
        iov[0] = IoSlice::new(&header);
        for (v, b) in iov[1..].iter_mut().zip(body) {
            *v = IoSlice::new(b);
        }
        let iov = &iov[..1 + body.len()];
        loop {
            match crate::sys::io::writev(self.fd.as_fd(), iov) {
                Ok(n) if n == len => return Delivery::Sent,
                Ok(n) => {
                    log::error!("reply to request {unique}: {n} of {len} bytes written");
                    return Delivery::Failed;
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    // /dev/cuse never pushes back; a socket (tests) may: wait until writable.
                    let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(100u8));
                }
                Err(Errno::ENOENT) => {
                    log::debug!("reply to request {unique}: the kernel no longer waits (ENOENT)");
                    return Delivery::Dropped;
                }
                Err(e) => {
                    log::warn!(
                        "reply to request {unique} (fd {}): {e}",
                        self.fd.as_raw_fd()
                    );
                    return Delivery::Failed;
                }
            }
        }
    }
}

/// The answer to one request. Consumed by the method that answers; dropped unanswered, it
/// answers `EIO` and logs a bug.
#[derive(Debug)]
#[must_use = "a request must be answered"]
pub struct Reply<'a> {
    /// Borrowed: a request is answered before its reader reads the next (no reference count
    /// to take and drop on every request).
    chan: &'a Channel,
    unique: u64,
    done: bool,
}

/// `-errno` as the wire wants it: in `(-512, 0)`; anything else (the kernel-internal
/// `ERESTARTSYS` and above) becomes `-EIO`.
fn wire_error(e: Error) -> i32 {
    if e.raw() < 512 {
        e.to_errno()
    } else {
        Error::EIO.to_errno()
    }
}

impl Reply<'_> {
    /// The request answered.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    fn send(mut self, error: i32, body: &[&[u8]]) -> Delivery {
        self.done = true;
        self.chan.answer(self.unique, error, body)
    }

    /// An error (header only).
    pub fn error(self, e: Error) -> Delivery {
        self.send(wire_error(e), &[])
    }

    /// Success without a body (RELEASE).
    pub fn ok(self) -> Delivery {
        self.send(0, &[])
    }

    /// Success with raw data (READ).
    pub fn data(self, data: &[u8]) -> Delivery {
        self.send(0, &[data])
    }

    /// OPEN succeeded with handle `fh`.
    pub fn open(self, fh: u64) -> Delivery {
        let out = abi::OpenOut {
            fh,
            ..Default::default()
        }
        .encode();
        self.send(0, &[&out])
    }

    /// WRITE took `size` bytes.
    pub fn write(self, size: u32) -> Delivery {
        let out = abi::WriteOut { size, padding: 0 }.encode();
        self.send(0, &[&out])
    }

    /// IOCTL succeeded: the caller's `ioctl()` returns `result`.
    pub fn ioctl(self, result: i32) -> Delivery {
        let out = abi::IoctlOut {
            result,
            ..Default::default()
        }
        .encode();
        self.send(0, &[&out])
    }

    /// POLL: the ready events.
    pub fn poll(self, revents: u32) -> Delivery {
        let out = abi::PollOut {
            revents,
            padding: 0,
        }
        .encode();
        self.send(0, &[&out])
    }

    /// CUSE_INIT: `cuse_init_out` then the device info (`KEY=value\0` entries).
    pub fn init(self, out: &abi::CuseInitOut, info: &[u8]) -> Delivery {
        let out = out.encode();
        self.send(0, &[&out, info])
    }
}

impl Drop for Reply<'_> {
    fn drop(&mut self) {
        if !self.done {
            log::error!(
                "bug: request {} was never answered; answering EIO",
                self.unique
            );
            self.done = true;
            self.chan.answer(self.unique, Error::EIO.to_errno(), &[]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cuse::abi::{IoctlOut, OUT_HEADER_LEN};
    use std::sync::Arc;

    /// A channel over a SOCK_SEQPACKET pair (message boundaries kept, like /dev/cuse), and the
    /// "kernel" end.
    fn channel() -> (Arc<Channel>, OwnedFd) {
        let (a, b) = seqpacket_pair(libc::SOCK_NONBLOCK);
        (Arc::new(Channel::new(a)), b)
    }

    /// A connected `SOCK_SEQPACKET` pair: one message per read, like `/dev/cuse`.
    pub(crate) fn seqpacket_pair(flags: libc::c_int) -> (OwnedFd, OwnedFd) {
        use std::os::fd::FromRawFd;
        let mut fds = [-1; 2];
        let ty = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | flags;
        // SAFETY: `fds` has room for the two fds socketpair writes.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0, "socketpair: {}", Errno::last());
        // SAFETY: socketpair succeeded: both fds are new and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Every reply written so far, as (header, body).
    fn replies(kernel: &OwnedFd) -> Vec<(OutHeader, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = nix::unistd::read(kernel, &mut buf) {
            if n == 0 {
                break;
            }
            let h = OutHeader::decode(&buf[..n]).unwrap();
            assert_eq!(h.len as usize, n, "len must equal the bytes written");
            out.push((h, buf[OUT_HEADER_LEN..n].to_vec()));
        }
        out
    }

    #[test]
    fn in_flight_bookkeeping() {
        let mut t = InFlight::default();
        assert_eq!(t.begin(2), Begin::Run);
        assert_eq!(t.begin(4), Begin::Run);
        assert_eq!(t.len(), 2);
        // Interrupt a pending request: taken out, the answer belongs to the interrupter.
        assert!(t.interrupt(2));
        assert!(!t.finish(2), "the late answer must be dropped");
        // Finish normally; a later interrupt finds nothing.
        assert!(t.finish(4));
        assert!(!t.interrupt(4));
        assert!(t.is_empty());
        // An interrupt read before its target: the target begins interrupted, once.
        assert!(!t.interrupt(6));
        assert_eq!(t.begin(6), Begin::Interrupted);
        assert!(t.finish(6), "the EINTR answer is still owed");
        assert_eq!(t.begin(8), Begin::Run);
        assert!(t.finish(8));
        // Early interrupts are bounded.
        for u in 0..1000 {
            t.interrupt(1_000_000 + u);
        }
        assert!(t.early.len() <= EARLY_INTERRUPTS);
        assert_eq!(t.begin(1_000_999), Begin::Interrupted);
        assert_eq!(t.begin(1_000_000), Begin::Run, "the oldest was evicted");
    }

    #[test]
    fn replies_are_framed_with_their_unique() {
        let (chan, kernel) = channel();
        let (r, _) = chan.begin(10);
        assert_eq!(r.ioctl(7), Delivery::Sent);
        let (r, _) = chan.begin(12);
        assert_eq!(r.error(Error::ENOTTY), Delivery::Sent);
        let (r, _) = chan.begin(14);
        assert_eq!(r.open(99), Delivery::Sent);
        let got = replies(&kernel);
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].0.unique, got[0].0.error), (10, 0));
        let out = IoctlOut {
            result: 7,
            ..Default::default()
        };
        assert_eq!(got[0].1, out.encode());
        assert_eq!(got[1].0.error, -(Errno::ENOTTY as i32));
        assert!(got[1].1.is_empty(), "error replies are header-only");
        assert_eq!(&got[2].1[..8], &99u64.to_le_bytes());
        assert_eq!(chan.in_flight(), 0);
    }

    #[test]
    fn an_unanswered_reply_answers_eio_on_drop() {
        let (chan, kernel) = channel();
        let (r, _) = chan.begin(20);
        drop(r);
        let got = replies(&kernel);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.unique, 20);
        assert_eq!(got[0].0.error, -(Errno::EIO as i32));
    }

    #[test]
    fn a_panicking_operation_still_answers() {
        let (chan, kernel) = channel();
        let c = chan.clone();
        let r = std::panic::catch_unwind(move || {
            let (_reply, _) = c.begin(30);
            panic!("a buggy file operation");
        });
        assert!(r.is_err());
        let got = replies(&kernel);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.unique, got[0].0.error),
            (30, -(Errno::EIO as i32))
        );
    }

    #[test]
    fn interrupt_answers_eintr_once_and_drops_the_late_answer() {
        let (chan, kernel) = channel();
        let (r, b) = chan.begin(40);
        assert_eq!(b, Begin::Run);
        chan.interrupt(40);
        assert_eq!(r.ioctl(0), Delivery::Dropped);
        // Interrupting an answered request does nothing.
        let (r, _) = chan.begin(42);
        assert_eq!(r.ok(), Delivery::Sent);
        chan.interrupt(42);
        let got = replies(&kernel);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (got[0].0.unique, got[0].0.error),
            (40, -(Errno::EINTR as i32))
        );
        assert_eq!((got[1].0.unique, got[1].0.error), (42, 0));
    }

    #[test]
    fn errno_outside_the_wire_range_becomes_eio() {
        assert_eq!(wire_error(Error::ERESTARTSYS), -(Errno::EIO as i32));
        assert_eq!(wire_error(Error::from_errno(-4000)), -(Errno::EIO as i32));
        assert_eq!(wire_error(Error::ESRCH), -3);
    }
}
