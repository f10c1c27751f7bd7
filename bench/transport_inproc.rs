//! The daemon's whole side of an ioctl round trip, transport included, without CUSE: our
//! session (`Cuse::from_fd`) serves the lab's `deferred` module over one end of a
//! `SOCK_SEQPACKET` pair; this program plays the kernel on the other end (CUSE_INIT, then CALLS
//! FUSE_IOCTL requests one at a time, each answered before the next). Logs as the daemon does
//! (send stderr to a file). For counting what a request costs in user space, e.g. instructions:
//!
//!     valgrind --tool=callgrind ./target/release/examples/transport_inproc 5000 0 2>/dev/null
//!
//!     cargo run --release --example transport_inproc -- [CALLS] [SPIN_US]
//!
//! CALLS default 20000; SPIN_US (the daemon's --spin-us) default 0. Prints one JSON line: the
//! round trips' latency.

#[path = "common/mod.rs"]
mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use common::{now_ns, numeric_args, stats_json};
use deferred::cuse::abi::{self, IoctlIn, encode_ioctl_in, encode_request};
use deferred::cuse::{Config, Cuse};
use deferred::modules::deferred::{DeferredModule, Options};

fn main() {
    let args = numeric_args("usage: transport_inproc [CALLS] [SPIN_US]  (e.g. 5000 0)");
    let calls = *args.first().unwrap_or(&20_000);
    let spin = *args.get(1).unwrap_or(&0);
    deferred::logging::init(0);
    deferred::kernel::start().expect("runtime start");
    let module = DeferredModule::load(Options::default()).expect("load the deferred module");

    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    let (ours, kernel) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let send = |opcode: u32, unique: u64, body: &[u8]| {
        let buf = encode_request(opcode, unique, std::process::id(), body);
        nix::unistd::write(&kernel, &buf).expect("write a request");
    };
    let mut reply = vec![0u8; 4096];
    let mut recv = || {
        let n = nix::unistd::read(&kernel, &mut reply).expect("read a reply");
        assert!(n >= abi::OUT_HEADER_LEN, "short reply: {n} bytes");
        u64::from_le_bytes(reply[8..16].try_into().unwrap())
    };

    let mut init = Vec::new();
    for v in [7u32, 38, 0, abi::CUSE_UNRESTRICTED_IOCTL] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    send(abi::CUSE_INIT, 1, &init);
    let config = Config {
        spin: Duration::from_micros(spin),
        ..Config::default()
    };
    let dev = Cuse::from_fd(ours, config)
        .expect("serve the socket")
        .start(module.device().clone())
        .expect("start the session");
    assert_eq!(recv(), 1, "the CUSE_INIT answer");

    let cancel = encode_ioctl_in(&IoctlIn {
        fh: 1,
        cmd: 0x6b02,
        ..Default::default()
    });
    let mut v = Vec::with_capacity(calls as usize);
    for unique in 2..2 + calls {
        let t0 = now_ns();
        send(abi::FUSE_IOCTL, unique, &cancel);
        assert_eq!(recv(), unique, "each request answered in turn");
        v.push(now_ns() - t0);
    }
    dev.stop();
    deferred::kernel::printk::flush();
    println!(
        "{{\"bench\":\"transport_inproc\",{}}}",
        stats_json("", &mut v)
    );
}
