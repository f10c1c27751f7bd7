//! The transport against a fake kernel: one end of a `SOCK_SEQPACKET` pair plays `/dev/cuse`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::init::{char_major_holder, parse_devnum};
use super::pool::{FEW_CLIENTS_STREAK, RECENT_CALLERS, STANDBY_NONE, STANDBY_PERIOD_NS};
use super::{Config, Cuse, Device, Error, abi};
use crate::cuse::abi::{
    CUSE_INIT, FUSE_INTERRUPT, FUSE_IOCTL, FUSE_OPEN, FUSE_POLL, FUSE_READ, FUSE_RELEASE,
    FUSE_WRITE, IoctlIn, OutHeader, encode_ioctl_in, encode_request,
};
use crate::kernel::error::Error as KernelError;
use crate::kernel::fs::{File, FileOperations};
use crate::kernel::wait::{WaitQueueHead, wait_event, wake_up_all};
use std::sync::Mutex;
use std::sync::mpsc;

#[path = "../../tests/common/wait.rs"]
mod wait;
use wait::wait_for;

/// Records every call; while `hold` is set, ioctl 0x6b64 sleeps in the runtime (`wait_event`,
/// as a module's file operation sleeps) and 0x6b65 blocks outside it (a std condition variable).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    hold: (Mutex<bool>, std::sync::Condvar),
    wq: WaitQueueHead,
}

/// Lets held requests go when dropped (a failing test then ends instead of waiting for them in
/// the device's stop).
struct Unhold(Arc<Recorder>);

impl Drop for Unhold {
    fn drop(&mut self) {
        self.0.set_hold(false);
    }
}

impl Recorder {
    /// Sets `hold` until the returned guard drops (or `set_hold(false)`).
    fn hold(rec: &Arc<Recorder>) -> Unhold {
        rec.set_hold(true);
        Unhold(rec.clone())
    }
    fn set_hold(&self, on: bool) {
        *self.hold.0.lock().unwrap() = on;
        self.hold.1.notify_all();
        wake_up_all(&self.wq);
    }
    fn wait_calls(&self, n: usize) {
        eventually(&format!("{n} calls"), || {
            self.calls.lock().unwrap().len() >= n
        });
    }
}

/// Waits for `cond`, failing the test (`what` not reached) after 5 s.
fn eventually(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_for(Duration::from_secs(5), cond),
        "{what}: not reached in 5 s"
    );
}

impl FileOperations for Recorder {
    fn open(&self, f: &File) -> Result<(), KernelError> {
        self.calls.lock().unwrap().push(format!("open {}", f.fh));
        Ok(())
    }
    fn release(&self, f: &File) {
        self.calls.lock().unwrap().push(format!("release {}", f.fh));
    }
    fn unlocked_ioctl(&self, f: &File, cmd: u32, arg: u64) -> Result<i32, KernelError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("ioctl {} {cmd:#x} {arg}", f.fh));
        if cmd == 0x6b64 {
            wait_event(&self.wq, || !*self.hold.0.lock().unwrap());
        }
        if cmd == 0x6b67 {
            // Might sleep, and does not: the condition holds already.
            wait_event(&self.wq, || true);
        }
        if cmd == 0x6b65 {
            let mut held = self.hold.0.lock().unwrap();
            while *held {
                held = self.hold.1.wait(held).unwrap();
            }
        }
        match cmd {
            0x6b02 => Ok(0),
            // The nice value of the reader running the call, plus 100.
            0x6b66 => Ok(crate::sys::prio::thread_nice().unwrap() + 100),
            0x6b05 => Ok(arg as i32),
            0x6b64 | 0x6b65 | 0x6b67 => Ok(1),
            _ => Err(KernelError::ENOTTY),
        }
    }
    fn compat_ioctl(&self, _f: &File, cmd: u32, _arg: u64) -> Result<i32, KernelError> {
        self.calls.lock().unwrap().push(format!("compat {cmd:#x}"));
        Ok(32)
    }
}

/// The "kernel" side of a test connection.
struct Kernel {
    fd: OwnedFd,
}

impl Kernel {
    fn send(&self, opcode: u32, unique: u64, body: &[u8]) {
        self.send_from(1234, opcode, unique, body);
    }
    /// A request from the client thread `pid`.
    fn send_from(&self, pid: u32, opcode: u32, unique: u64, body: &[u8]) {
        let buf = encode_request(opcode, unique, pid, body);
        nix::unistd::write(&self.fd, &buf).unwrap();
    }
    fn send_raw(&self, buf: &[u8]) {
        nix::unistd::write(&self.fd, buf).unwrap();
    }
    /// The next reply (waits up to 5 s).
    fn recv(&self) -> (OutHeader, Vec<u8>) {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        assert_eq!(
            poll(&mut fds, PollTimeout::from(5000u16)).unwrap(),
            1,
            "no reply"
        );
        let mut buf = [0u8; 8192];
        let n = nix::unistd::read(&self.fd, &mut buf).unwrap();
        let h = OutHeader::decode(&buf[..n]).unwrap();
        assert_eq!(h.len as usize, n);
        (h, buf[16..n].to_vec())
    }
    fn ioctl(&self, unique: u64, fh: u64, flags: u32, cmd: u32, arg: u64) {
        self.ioctl_from(1234, unique, fh, flags, cmd, arg);
    }
    fn ioctl_from(&self, pid: u32, unique: u64, fh: u64, flags: u32, cmd: u32, arg: u64) {
        let body = encode_ioctl_in(&IoctlIn {
            fh,
            flags,
            cmd,
            arg,
            ..Default::default()
        });
        self.send_from(pid, FUSE_IOCTL, unique, &body);
    }
    /// The default client calls CANCEL as request `unique`, and it is answered.
    fn cancel(&self, unique: u64) {
        self.cancel_from(1234, unique);
    }
    /// Client `pid` calls CANCEL as request `unique`, and it is answered.
    fn cancel_from(&self, pid: u32, unique: u64) {
        self.ioctl_from(pid, unique, 1, 0, 0x6b02, 0);
        assert_eq!(self.recv().0.unique, unique, "client {pid}");
    }
}

fn start(threads: usize) -> (Device, Kernel, Arc<Recorder>) {
    start_with(Config {
        threads,
        ..Config::default()
    })
}

fn start_with(config: Config) -> (Device, Kernel, Arc<Recorder>) {
    let (a, b) = crate::cuse::reply::tests::seqpacket_pair(0);
    nix::fcntl::fcntl(&a, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let kernel = Kernel { fd: b };
    let mut init = Vec::new();
    for v in [7u32, 38, 0, abi::CUSE_UNRESTRICTED_IOCTL] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    kernel.send(CUSE_INIT, 2, &init);
    let rec = Arc::new(Recorder::default());
    let dev = Cuse::from_fd(a, config)
        .unwrap()
        .start(rec.clone())
        .unwrap();
    let (h, body) = kernel.recv();
    assert_eq!((h.unique, h.error), (2, 0));
    assert_eq!(body.len(), 72 + "DEVNAME=deferred\0".len());
    let word = |i: usize| u32::from_le_bytes(body[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(word(0), 7);
    assert_eq!(word(1), 31, "min(kernel 38, ours 31)");
    assert_eq!(word(3), abi::CUSE_UNRESTRICTED_IOCTL);
    assert_eq!((word(4), word(5)), (4096, 4096));
    assert_eq!((word(6), word(7)), (42, 0));
    assert_eq!(&body[72..], b"DEVNAME=deferred\0");
    (dev, kernel, rec)
}

#[test]
fn open_ioctl_release_round_trip() {
    let (dev, k, rec) = start(2);
    k.send(FUSE_OPEN, 4, &[0u8; 8]);
    let (h, body) = k.recv();
    assert_eq!((h.unique, h.error), (4, 0));
    let fh = u64::from_le_bytes(body[..8].try_into().unwrap());
    assert_eq!(fh, 1);
    k.ioctl(6, fh, abi::FUSE_IOCTL_UNRESTRICTED, 0x6b05, 17);
    let (h, body) = k.recv();
    assert_eq!((h.unique, h.error), (6, 0));
    assert_eq!(i32::from_le_bytes(body[..4].try_into().unwrap()), 17);
    assert_eq!(body.len(), 16);
    k.ioctl(8, fh, abi::FUSE_IOCTL_UNRESTRICTED, 0x4008_6b99, 0);
    let (h, body) = k.recv();
    assert_eq!((h.unique, h.error), (8, -(Errno::ENOTTY as i32)));
    assert!(body.is_empty());
    k.ioctl(
        10,
        fh,
        abi::FUSE_IOCTL_COMPAT | abi::FUSE_IOCTL_32BIT,
        0x4004_6b01,
        3,
    );
    let (h, body) = k.recv();
    assert_eq!((h.unique, h.error), (10, 0));
    assert_eq!(i32::from_le_bytes(body[..4].try_into().unwrap()), 32);
    let mut rel = vec![0u8; 24];
    rel[..8].copy_from_slice(&fh.to_le_bytes());
    k.send(FUSE_RELEASE, 12, &rel);
    assert_eq!(k.recv().0.unique, 12);
    dev.stop();
    assert_eq!(
        *rec.calls.lock().unwrap(),
        [
            "open 1",
            "ioctl 1 0x6b05 17",
            "ioctl 1 0x40086b99 0",
            "compat 0x40046b01",
            "release 1"
        ]
    );
}

#[test]
fn read_write_poll_unknown_and_malformed() {
    let (dev, k, _) = start(1);
    k.send(FUSE_READ, 4, &[0u8; 40]);
    assert_eq!(k.recv().0.error, -(Errno::EINVAL as i32));
    let mut w = vec![0u8; 40];
    w[16..20].copy_from_slice(&2u32.to_le_bytes());
    w.extend_from_slice(b"hi");
    k.send(FUSE_WRITE, 6, &w);
    assert_eq!(k.recv().0.error, -(Errno::EINVAL as i32));
    k.send(FUSE_POLL, 8, &[0u8; 24]);
    let (h, body) = k.recv();
    assert_eq!(h.error, 0);
    assert_eq!(
        body,
        abi::PollOut {
            revents: crate::kernel::fs::DEFAULT_POLLMASK,
            padding: 0
        }
        .encode()
    );
    k.send(25, 10, &[]); // FUSE_FLUSH: never sent by CUSE
    assert_eq!(
        k.recv().0,
        OutHeader {
            len: 16,
            error: -(Errno::ENOSYS as i32),
            unique: 10
        }
    );
    // A length mismatch with a readable header: answered EIO.
    let mut bad = encode_request(FUSE_OPEN, 12, 0, &[0u8; 8]);
    bad[0] = 99;
    k.send_raw(&bad);
    assert_eq!(
        k.recv().0,
        OutHeader {
            len: 16,
            error: -(Errno::EIO as i32),
            unique: 12
        }
    );
    // A runt: nothing to answer, and the server survives it.
    k.send_raw(&[1, 2, 3]);
    k.ioctl(14, 1, 0, 0x6b02, 0);
    assert_eq!(
        k.recv().0,
        OutHeader {
            len: 32,
            error: 0,
            unique: 14
        }
    );
    dev.stop();
}

#[test]
fn interrupt_answers_a_blocked_request_eintr() {
    let (dev, k, rec) = start(2);
    let _held = Recorder::hold(&rec);
    k.ioctl(20, 1, 0, 0x6b64, 0); // blocks in the file operation
    rec.wait_calls(1);
    assert_eq!(dev.in_flight(), 1);
    k.send(FUSE_INTERRUPT, 21, &20u64.to_le_bytes());
    assert_eq!(
        k.recv().0,
        OutHeader {
            len: 16,
            error: -(Errno::EINTR as i32),
            unique: 20
        }
    );
    rec.set_hold(false); // the operation finishes: its late answer is dropped
    k.ioctl(22, 1, 0, 0x6b02, 0);
    assert_eq!(
        k.recv().0,
        OutHeader {
            len: 32,
            error: 0,
            unique: 22
        },
        "no second answer to 20"
    );
    assert_eq!(dev.in_flight(), 0);
    dev.stop();
}

#[test]
fn a_release_interrupted_before_it_ran_still_releases() {
    // As when the closing task dies of SIGKILL: the INTERRUPT can be read before its RELEASE.
    let (dev, k, rec) = start(1);
    k.send(FUSE_INTERRUPT, 41, &40u64.to_le_bytes());
    let mut rel = vec![0u8; 24];
    rel[..8].copy_from_slice(&7u64.to_le_bytes());
    k.send(FUSE_RELEASE, 40, &rel);
    assert_eq!(
        k.recv().0,
        OutHeader {
            len: 16,
            error: 0,
            unique: 40
        }
    );
    assert!(
        rec.calls.lock().unwrap().contains(&"release 7".to_string()),
        "{:?}",
        rec.calls.lock().unwrap()
    );
    dev.stop();
}

#[test]
fn an_interrupt_read_before_its_target_still_applies() {
    let (dev, k, rec) = start(1);
    k.send(FUSE_INTERRUPT, 31, &30u64.to_le_bytes());
    k.ioctl(30, 1, 0, 0x6b02, 0);
    assert_eq!(
        k.recv().0,
        OutHeader {
            len: 16,
            error: -(Errno::EINTR as i32),
            unique: 30
        }
    );
    assert!(
        rec.calls.lock().unwrap().is_empty(),
        "an interrupted request does not run"
    );
    dev.stop();
}

#[test]
fn many_requests_on_many_threads_are_each_answered_once() {
    let (dev, k, _) = start(4);
    let n = 2000u64;
    let kfd = k.fd.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let k = Kernel { fd: kfd };
        for i in 0..n {
            k.ioctl(100 + 2 * i, 1, 0, 0x6b05, i);
        }
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let (h, body) = k.recv();
        assert_eq!(h.error, 0);
        let v = i32::from_le_bytes(body[..4].try_into().unwrap()) as u64;
        assert_eq!(
            h.unique,
            100 + 2 * v,
            "each reply carries its request's answer"
        );
        assert!(seen.insert(h.unique), "answered twice: {}", h.unique);
    }
    sender.join().unwrap();
    assert_eq!(seen.len() as u64, n);
    dev.stop();
}

#[test]
fn a_closed_connection_is_reported_on_gone_fd() {
    let (dev, k, _) = start(3);
    drop(k);
    let mut fds = [PollFd::new(dev.gone_fd(), PollFlags::POLLIN)];
    assert_eq!(poll(&mut fds, PollTimeout::from(5000u16)).unwrap(), 1);
    dev.stop();
}

#[test]
fn the_pool_grows_with_concurrent_requests_up_to_its_maximum() {
    let (dev, k, rec) = start(3);
    assert_eq!(dev.readers(), 1, "one reader to begin with");
    let _held = Recorder::hold(&rec);
    // Each held request keeps its reader busy: the next request finds no reader waiting.
    for (i, unique) in [50u64, 51, 52].into_iter().enumerate() {
        k.ioctl(unique, 1, 0, 0x6b64, 0);
        rec.wait_calls(i + 1);
        // A reader that takes a request with no other waiting adds one (up to 3).
        let want = (i + 2).min(3);
        eventually("the pool grown", || dev.readers() >= want);
        assert_eq!(dev.readers(), want, "after {} held requests", i + 1);
    }
    // All three busy: a fourth request waits for one of them.
    k.ioctl(53, 1, 0, 0x6b02, 0);
    let mut fds = [PollFd::new(k.fd.as_fd(), PollFlags::POLLIN)];
    assert_eq!(poll(&mut fds, PollTimeout::from(200u16)).unwrap(), 0);
    rec.set_hold(false);
    let mut answered: Vec<u64> = (0..4).map(|_| k.recv().0.unique).collect();
    answered.sort();
    assert_eq!(answered, [50, 51, 52, 53]);
    assert_eq!(dev.readers(), 3, "never more than the maximum");
    dev.stop();
}

/// The nice value of the reader running the call of `pid` (it changes after an answer).
fn reader_nice_in_call(k: &Kernel, pid: u32, unique: u64) -> i32 {
    k.ioctl_from(pid, unique, 1, 0, 0x6b66, 0);
    let (h, body) = k.recv();
    assert_eq!((h.unique, h.error), (unique, 0));
    i32::from_le_bytes(body[..4].try_into().unwrap()) - 100
}

#[test]
fn a_lone_clients_reader_runs_at_the_configured_nice_value() {
    // Raised (no privilege needed); the daemon's default lowers it (-5) when it may.
    let base = crate::sys::prio::thread_nice().unwrap();
    let lone = (base + 3).clamp(-20, 19);
    // One reader, so that every call below meets the same one.
    let (dev, k, _) = start_with(Config {
        reader_nice: 3,
        threads: 1,
        ..Config::default()
    });
    let nice = |pid, unique| reader_nice_in_call(&k, pid, unique);
    assert_eq!(nice(1234, 70), base, "a new reader: the daemon's");
    assert_eq!(nice(1234, 71), lone, "serving a lone client");
    assert_eq!(nice(1234, 72), lone);
    // A second client: back to the daemon's value, and there while both ask.
    assert_eq!(nice(1235, 73), lone, "changed after the answer");
    for unique in 74..80 {
        assert_eq!(
            nice(1234 + (unique as u32 % 2), unique),
            base,
            "two clients"
        );
    }
    // One client again, once the other has left the recent callers.
    for unique in 80..80 + RECENT_CALLERS as u64 {
        nice(1234, unique);
    }
    assert_eq!(nice(1234, 90), lone, "a lone client again");
    assert_eq!(
        crate::sys::prio::thread_nice().unwrap(),
        base,
        "other threads keep theirs"
    );
    dev.stop();
}

#[test]
fn a_reader_spawned_by_a_lone_clients_reader_starts_at_the_daemons_nice_value() {
    let base = crate::sys::prio::thread_nice().unwrap();
    let (dev, k, rec) = start_with(Config {
        reader_nice: 3,
        ..Config::default()
    });
    reader_nice_in_call(&k, 1234, 70);
    assert_eq!(reader_nice_in_call(&k, 1234, 71), (base + 3).clamp(-20, 19));
    while_a_request_sleeps(&dev, &k, &rec, 72, || {
        assert_eq!(reader_nice_in_call(&k, 1234, 73), base);
    });
    dev.stop();
}

/// Runs `f` while request `unique` (ioctl 0x6b64) sleeps in the runtime, after it has called a
/// second reader (the pool had one); then lets it go and checks its answer.
fn while_a_request_sleeps(
    dev: &Device,
    k: &Kernel,
    rec: &Arc<Recorder>,
    unique: u64,
    f: impl FnOnce(),
) {
    let held = Recorder::hold(rec);
    k.ioctl(unique, 1, 0, 0x6b64, 0);
    eventually("a second reader", || dev.readers() == 2);
    f();
    drop(held);
    assert_eq!(k.recv().0.unique, unique);
}

#[test]
fn a_lone_clients_requests_keep_the_pool_at_one_until_one_sleeps() {
    let (dev, k, rec) = start(8);
    for unique in 60..160u64 {
        // Every other call might sleep and does not (a wait_event whose condition holds).
        let cmd = if unique % 2 == 0 { 0x6b02 } else { 0x6b67 };
        k.ioctl(unique, 1, 0, cmd, 0);
        assert_eq!(k.recv().0.unique, unique);
    }
    // One client, requests one at a time, none sleeping: the one reader takes each, and no
    // second reader waits meanwhile (the kernel would wake it for every request).
    assert_eq!(dev.readers(), 1);
    // One that sleeps calls another.
    while_a_request_sleeps(&dev, &k, &rec, 160, || {});
    dev.stop();
}

/// Two clients' requests, alternating, one at a time (1000 and on, enough to count as a few
/// clients), on a pool that may spin for them (`cpus` CPUs) or not.
fn two_clients(cpus: usize) -> (Device, Kernel, Arc<Recorder>) {
    let (dev, k, rec) = start(8);
    dev.server
        .clone()
        .unwrap()
        .cpus
        .store(cpus, Ordering::Relaxed);
    for unique in 1000..1008 + u64::from(FEW_CLIENTS_STREAK) {
        k.cancel_from(1 + unique as u32 % 2, unique);
    }
    (dev, k, rec)
}

#[test]
fn with_two_clients_one_blocked_outside_the_runtime_does_not_hold_up_the_other() {
    // Two CPUs: one spinning reader serves both clients, another stands by. One CPU: no
    // spinning, a reader more is called when one takes a request.
    for cpus in [2, 1] {
        let (dev, k, rec) = two_clients(cpus);
        let server = dev.server.clone().unwrap();
        if cpus == 2 {
            serve_until(&k, "one active reader, one standing by", || {
                one_active_one_standing_by(&server)
            });
        }
        // Client 2's request blocks outside the runtime: no sleep hook runs, yet client 1 is
        // served, by the reader standing by (or the one called when the request was taken),
        // and goes on being served while client 2's stays blocked.
        let _held = Recorder::hold(&rec);
        k.ioctl_from(2, 174, 1, 0, 0x6b65, 0);
        rec.wait_calls(5);
        let t0 = Instant::now();
        for unique in 175..185u64 {
            k.cancel_from(1, unique);
        }
        // Ten calls: the standby took over once (a period at most), not once a call.
        assert!(
            t0.elapsed() < Duration::from_nanos(5 * STANDBY_PERIOD_NS),
            "{cpus} CPUs: {:?} for ten calls",
            t0.elapsed()
        );
        rec.set_hold(false);
        assert_eq!(k.recv().0.unique, 174, "{cpus} CPUs");
        dev.stop();
    }
}

/// Whether the pool has one active reader and one standing by.
fn one_active_one_standing_by(server: &super::pool::Server) -> bool {
    server.active.load(Ordering::Acquire) == 1
        && server.standby.load(Ordering::Acquire) != STANDBY_NONE
}

/// Two clients' requests, alternating, one at a time (2000 and on), until `cond` holds (at
/// most 1,000 of them).
fn serve_until(k: &Kernel, what: &str, mut cond: impl FnMut() -> bool) {
    for unique in 2000..3000u64 {
        if cond() {
            return;
        }
        k.cancel_from(1 + unique as u32 % 2, unique);
    }
    assert!(cond(), "{what}: not reached in 1,000 requests");
}

#[test]
fn a_few_clients_that_a_spinning_reader_serves_keep_one_reader_active_and_one_standing_by() {
    let (dev, k, _) = two_clients(2);
    let server = dev.server.clone().unwrap();
    // No reader waits in poll(2) beside the spinning one (each request would wake it): a
    // reader found there when the clients stop stands by at the next request that finds it
    // taken, or parks.
    serve_until(&k, "one active reader, one standing by", || {
        one_active_one_standing_by(&server)
    });
    // Quiet: the standby reader goes to sleep until the next request (no wake-ups when idle).
    eventually("the standby reader asleep", || {
        server.standby.load(Ordering::Acquire) != STANDBY_NONE && server.taken.sleeping()
    });
    // A request wakes it to watch again, and is served.
    k.cancel_from(1, 300);
    // Three clients on two CPUs: no spinning, readers as many as they need; the standby
    // reader goes back to reading.
    for unique in 301..340u64 {
        k.cancel_from(1 + unique as u32 % 3, unique);
    }
    eventually("no reader standing by", || {
        server.standby.load(Ordering::Acquire) == STANDBY_NONE
    });
    dev.stop();
}

#[test]
fn a_lone_client_blocked_outside_the_runtime_keeps_the_device() {
    let (dev, k, rec) = start(8);
    let _held = Recorder::hold(&rec);
    k.ioctl(176, 1, 0, 0x6b65, 0);
    rec.wait_calls(1);
    // No sleep in the runtime: nothing calls a second reader (as a driver blocked
    // uninterruptibly); the next request waits for the answer.
    k.ioctl(177, 1, 0, 0x6b02, 0);
    let mut fds = [PollFd::new(k.fd.as_fd(), PollFlags::POLLIN)];
    assert_eq!(poll(&mut fds, PollTimeout::from(200u16)).unwrap(), 0);
    assert_eq!(dev.readers(), 1);
    rec.set_hold(false);
    assert_eq!(k.recv().0.unique, 176);
    assert_eq!(k.recv().0.unique, 177);
    dev.stop();
}

#[test]
fn spins_that_find_no_request_back_off() {
    let (dev, k, _) = start(2);
    let server = dev.server.clone().unwrap();
    server.cpus.store(2, Ordering::Relaxed); // a CPU to spin on, whatever this machine has
    assert_eq!(
        server.pace.max(),
        Duration::from_millis(20),
        "the default window"
    );
    let misses = || {
        (
            server.spin_misses.load(Ordering::Relaxed),
            server.spin_skip.load(Ordering::Relaxed),
        )
    };
    // Each request sent once the previous one's spin has run out (or its chance was passed
    // up): every spin runs out. Passed-up chances double: 1, 2, 4, ...
    let want = [
        (1, 1),
        (1, 0),
        (2, 2),
        (2, 1),
        (2, 0),
        (3, 4),
        (3, 3),
        (3, 2),
    ];
    for (unique, want) in (70..78u64).zip(want) {
        k.cancel(unique);
        eventually(&format!("{want:?} after request {unique}"), || {
            misses() == want
        });
    }
    server.spun(true);
    assert_eq!(
        misses().0,
        0,
        "a spin that finds a request resets the back-off"
    );
    drop(server);
    dev.stop();
}

/// The fd's `O_NONBLOCK` as the readers see it.
fn nonblocking(server: &super::pool::Server) -> bool {
    let flags = nix::fcntl::fcntl(server.chan.fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK)
}

#[test]
fn the_fd_is_non_blocking_only_while_a_reader_spins() {
    let (dev, k, rec) = start_with(Config {
        threads: 4,
        spin: Duration::from_millis(300),
        ..Config::default()
    });
    let server = dev.server.clone().unwrap();
    server.cpus.store(2, Ordering::Relaxed); // a CPU to spin on, whatever this machine has
    assert!(!nonblocking(&server), "no reader spins before a request");
    k.ioctl(80, 1, 0, 0x6b02, 0);
    assert_eq!(k.recv().0.unique, 80);
    // The answering reader spins for the next request, reading the fd non-blocking ...
    eventually("the reader spins", || nonblocking(&server));
    // ... and takes it, one request after another, spinning on.
    for unique in 81..90u64 {
        k.cancel(unique);
    }
    assert!(nonblocking(&server));
    // A request that sleeps in the runtime calls a second reader, which finds the fd
    // non-blocking and nothing to read: it waits in poll(2), and takes the next request.
    let held = Recorder::hold(&rec);
    k.ioctl(90, 1, 0, 0x6b64, 0);
    rec.wait_calls(11);
    k.ioctl(91, 1, 0, 0x6b02, 0);
    assert_eq!(k.recv().0.unique, 91);
    assert_eq!(dev.readers(), 2);
    drop(held);
    assert_eq!(k.recv().0.unique, 90);
    // The spinning reader stops (here it parks: two readers are free, one is enough for a
    // lone client; else its window would run out): the fd is blocking again.
    eventually("the spin ended: blocking again", || !nonblocking(&server));
    // The readers sleep in read(2) or poll(2), and each request is still answered once.
    for unique in 92..96u64 {
        k.cancel(unique);
    }
    drop(server);
    dev.stop();
}

#[test]
fn no_spinning_while_more_clients_than_cpus_are_active() {
    let (dev, _k, _) = start(2);
    let server = dev.server.clone().unwrap();
    server.cpus.store(2, Ordering::Relaxed);
    for tid in 1..=3 {
        server.note_caller(tid);
    }
    assert_eq!(server.active_clients(), 3);
    assert!(
        server.spin_window().is_none(),
        "more clients than CPUs: no spin"
    );
    for _ in 0..RECENT_CALLERS {
        server.note_caller(7);
    }
    assert_eq!(server.active_clients(), 1);
    assert!(
        server.spin_window().is_some(),
        "one client, nothing in flight: spin"
    );
    server.policy.set_spin(false);
    assert!(
        server.spin_window().is_none(),
        "the spin policy found sleeping serves a lone client as fast"
    );
    // Two clients: spun for, whatever was learnt of a lone client.
    server.note_caller(8);
    assert_eq!(server.active_clients(), 2);
    assert!(
        server.spin_window().is_some(),
        "what was learnt of a lone client does not decide for two"
    );
    server.policy.set_spin(true);
    for _ in 0..RECENT_CALLERS {
        server.note_caller(7);
    }
    server.cpus.store(1, Ordering::Relaxed);
    assert!(
        server.spin_window().is_none(),
        "one CPU: a spinning reader would only keep it from the client"
    );
    drop(server);
    dev.stop();
}

#[test]
fn eight_clients_at_a_time_never_stall_the_pool() {
    // Eight requests outstanding at all times, a new one for each answer, as eight clients
    // do: readers grow, park and come back concurrently; every request must be answered.
    let (dev, k, _) = start(8);
    let kfd = k.fd.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<u64>();
    let sender = std::thread::spawn(move || {
        let k = Kernel { fd: kfd };
        let mut next = 1000u64;
        for _ in 0..8 {
            k.ioctl(next, 1, 0, 0x6b02, 0);
            next += 1;
        }
        while rx.recv().is_ok() {
            if next < 1000 + 4000 {
                k.ioctl(next, 1, 0, 0x6b02, 0);
                next += 1;
            }
        }
    });
    for _ in 0..4000 {
        let (h, _) = k.recv(); // fails after 5 s without an answer: a stall
        assert_eq!(h.error, 0);
        tx.send(h.unique).unwrap();
    }
    drop(tx);
    sender.join().unwrap();
    assert!(dev.server.as_ref().unwrap().active.load(Ordering::Acquire) >= 1);
    dev.stop();
}

#[test]
fn readers_beyond_need_park_and_come_back_first_when_needed() {
    let (dev, k, rec) = start(4);
    let server = dev.server.clone().unwrap();
    // Three held requests: the pool grows to 4 (3 busy, 1 waiting).
    let _held = Recorder::hold(&rec);
    for (i, unique) in [80u64, 81, 82].into_iter().enumerate() {
        k.ioctl(unique, 1, 0, 0x6b64, 0);
        rec.wait_calls(i + 1);
    }
    eventually("4 readers", || dev.readers() == 4);
    rec.set_hold(false);
    for _ in 0..3 {
        k.recv();
    }
    // One client's requests one at a time: each answer lets its reader check; one stays active.
    for unique in 83..103u64 {
        k.cancel(unique);
    }
    eventually("3 parked", || server.parked().len() == 3);
    assert_eq!(server.active.load(Ordering::Acquire), 1);
    assert_eq!(dev.readers(), 4, "parked, not gone");
    // Two requests that sleep in the runtime: each sleep finds every active reader busy and
    // calls a parked one back (the scheduler's sleep hook), which takes the next request.
    rec.set_hold(true);
    k.ioctl(103, 1, 0, 0x6b64, 0);
    rec.wait_calls(23 + 1);
    k.ioctl(104, 1, 0, 0x6b64, 0);
    rec.wait_calls(23 + 2);
    eventually("1 parked", || server.parked().len() == 1);
    assert_eq!(dev.readers(), 4, "called back, none spawned");
    rec.set_hold(false);
    let mut answered = [k.recv().0.unique, k.recv().0.unique];
    answered.sort();
    assert_eq!(answered, [103, 104]);
    drop(server);
    // Stopping wakes the parked readers too.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        dev.stop();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("stop did not return: a parked reader stayed parked");
}

#[test]
fn stop_interrupts_readers_asleep_in_read() {
    // Started from a thread that blocks every signal (the readers inherit its mask), so the
    // readers must unblock the stop signal themselves.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: a zeroed sigset_t is valid storage for sigfillset.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid set; blocks every signal for this thread only.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        let (dev, k, rec) = start(8);
        k.ioctl(40, 1, 0, 0x6b02, 0);
        assert_eq!(k.recv().0.unique, 40);
        // The answering reader's spin has run out: every reader is in read(2), or on its way.
        let server = dev.server.clone().unwrap();
        eventually("the spin ran out", || {
            server.spin_misses.load(Ordering::Relaxed) == 1
        });
        drop(server);
        let t0 = Instant::now();
        let gone = dev.gone.clone();
        dev.stop();
        tx.send((t0.elapsed(), k, gone, rec)).unwrap();
    });
    let (took, k, gone, rec) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("stop did not return: a reader stayed asleep in read(2)");
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    let mut buf = [0u8; 64];
    assert_eq!(
        nix::unistd::read(&k.fd, &mut buf),
        Ok(0),
        "the connection is closed once stopped"
    );
    assert_eq!(
        gone.read().err(),
        Some(Errno::EAGAIN),
        "stopped is not gone"
    );
    assert_eq!(rec.calls.lock().unwrap().len(), 1);
}

#[test]
fn bad_configs_are_refused() {
    for name in ["", "a/b", "..", "x\0y"] {
        let c = Config {
            name: name.into(),
            ..Config::default()
        };
        assert!(matches!(c.check(), Err(Error::Config(_))), "{name:?}");
    }
    assert!(
        Config {
            threads: 0,
            ..Config::default()
        }
        .check()
        .is_err()
    );
    for reader_nice in [-40, 40] {
        let c = Config {
            reader_nice,
            ..Config::default()
        };
        assert!(matches!(c.check(), Err(Error::Config(m)) if m.contains("--reader-nice")));
    }
    assert!(Config::default().check().is_ok());
    assert!(Config::default().read_buffer_len() >= 8192);
    let big = Config {
        max_write: 1 << 20,
        ..Config::default()
    };
    assert!(big.read_buffer_len() >= 80 + (1 << 20));
}

#[test]
fn devnum_and_proc_devices_parsing() {
    assert_eq!(parse_devnum("42:0\n"), Some((42, 0)));
    assert_eq!(parse_devnum("x"), None);
    // Character major 1 is `mem` on every Linux.
    if Path::new("/proc/devices").exists() {
        assert_eq!(char_major_holder(1).as_deref(), Some("mem"));
    }
}

#[test]
fn errors_are_one_line() {
    let errs = [
        Error::NoCuse,
        Error::Permission,
        Error::NameTaken("deferred".into()),
        Error::DevnumTaken {
            major: 42,
            minor: 0,
            holder: Some("foo".into()),
        },
    ];
    for e in errs {
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
    }
    assert_eq!(
        Error::NameTaken("deferred".into()).to_string(),
        "the device name `deferred` is taken (another deferred running? see /sys/class/cuse/deferred)"
    );
}
