//! The CUSE_INIT handshake: read the kernel's `CUSE_INIT`, answer it with our limits, the device
//! number and `DEVNAME=<name>`, then confirm out of band. The kernel never answers an INIT
//! reply: success shows as `/sys/class/cuse/<name>`, failure as an aborted connection (a name or
//! device number already taken), diagnosed here for the one-line error.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::abi::{self, Operation};
use super::config::Config;
use super::error::{Error, sys};
use super::reply::{Channel, Delivery};
use crate::kernel::error::Error as KernelError;

/// Waits up to `timeout` for `fd` to be readable; returns its revents.
pub(super) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<PollFlags, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as u32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(PollFlags::empty()),
            Ok(_) => return Ok(fds[0].revents().unwrap_or(PollFlags::empty())),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(sys("poll /dev/cuse")(e)),
        }
    }
}

/// Reads CUSE_INIT and answers it.
pub(super) fn init(chan: &Arc<Channel>, config: &Config, buf: &mut [u8]) -> Result<(), Error> {
    let deadline = Instant::now() + config.timeout;
    let n = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Protocol(format!(
                "no CUSE_INIT from the kernel within {:?}",
                config.timeout
            )));
        }
        wait_readable(chan.fd().as_fd(), left)?;
        match nix::unistd::read(chan.fd(), buf) {
            Ok(0) => return Err(Error::Protocol("connection closed before CUSE_INIT".into())),
            Ok(n) => break n,
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOENT) => continue,
            Err(e) => return Err(sys("read CUSE_INIT from /dev/cuse")(e)),
        }
    };
    let req = abi::decode(&buf[..n]).map_err(|e| Error::Protocol(format!("CUSE_INIT: {e}")))?;
    let (reply, _) = chan.begin(req.header.unique);
    let Operation::CuseInit(arg) = req.op else {
        let _ = reply.error(KernelError::EIO);
        return Err(Error::Protocol(format!(
            "first request is opcode {}, not CUSE_INIT",
            req.header.opcode
        )));
    };
    log::debug!(
        "CUSE_INIT: protocol {}.{}, flags {:#x}",
        arg.major,
        arg.minor,
        arg.flags
    );
    if arg.major != abi::FUSE_KERNEL_VERSION || arg.minor < abi::FUSE_MIN_MINOR_VERSION {
        let _ = reply.error(KernelError::EPROTO);
        return Err(Error::Protocol(format!(
            "kernel speaks FUSE {}.{}, we need 7.{} or later",
            arg.major,
            arg.minor,
            abi::FUSE_MIN_MINOR_VERSION
        )));
    }
    if arg.flags & abi::CUSE_UNRESTRICTED_IOCTL == 0 {
        log::warn!("the kernel does not offer unrestricted ioctls: arguments will not be raw");
    }
    let out = abi::CuseInitOut {
        major: abi::FUSE_KERNEL_VERSION,
        minor: arg.minor.min(abi::FUSE_KERNEL_MINOR_VERSION),
        flags: arg.flags & abi::CUSE_UNRESTRICTED_IOCTL,
        max_read: config.max_read,
        max_write: config.max_write,
        dev_major: config.major,
        dev_minor: config.minor,
        ..Default::default()
    };
    let info = format!("DEVNAME={}\0", config.name);
    match reply.init(&out, info.as_bytes()) {
        Delivery::Sent => Ok(()),
        // The kernel processes the INIT reply inside our write: a failure to register the
        // device aborts the connection, which `confirm` diagnoses.
        Delivery::Dropped | Delivery::Failed => Ok(()),
    }
}

/// The kernel does not answer an INIT reply: success shows as `/sys/class/cuse/<name>`, failure
/// as an aborted connection. Returns the device number.
pub(super) fn confirm(chan: &Channel, config: &Config) -> Result<(u32, u32), Error> {
    let sysfs = config.sysfs();
    let deadline = Instant::now() + config.timeout;
    let mut wait = Duration::ZERO;
    loop {
        // The connection first: if our INIT was refused because another instance took the name
        // in the meantime, sysfs shows *its* device.
        let revents = wait_readable(chan.fd().as_fd(), wait)?;
        if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
            return Err(refused(config));
        }
        if let Ok(dev) = fs::read_to_string(sysfs.join("dev")) {
            return parse_devnum(&dev).ok_or_else(|| {
                Error::Protocol(format!("{}/dev: `{}`", sysfs.display(), dev.trim()))
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::Refused(format!(
                "{} did not appear within {:?}",
                sysfs.display(),
                config.timeout
            )));
        }
        // A pending request (POLLIN) must not make this spin.
        wait = Duration::from_millis(20);
        if !revents.is_empty() {
            std::thread::sleep(wait);
        }
    }
}

/// Why INIT was refused, as far as we can tell.
fn refused(config: &Config) -> Error {
    if config.sysfs().exists() {
        return Error::NameTaken(config.name.clone());
    }
    if config.major != 0 {
        let holder = char_major_holder(config.major);
        if holder.is_some() || Path::new("/proc/devices").exists() {
            return Error::DevnumTaken {
                major: config.major,
                minor: config.minor,
                holder,
            };
        }
    }
    Error::Refused(format!(
        "INIT of `{}` aborted (name taken or device number in use?)",
        config.name
    ))
}

/// The driver holding character major `major`, from `/proc/devices`.
pub(super) fn char_major_holder(major: u32) -> Option<String> {
    let text = fs::read_to_string("/proc/devices").ok()?;
    text.lines()
        .skip_while(|l| !l.starts_with("Character devices:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let mut it = l.split_whitespace();
            let m: u32 = it.next()?.parse().ok()?;
            (m == major).then(|| it.collect::<Vec<_>>().join(" "))
        })
}

/// Parses sysfs's `MAJOR:MINOR\n`.
pub(super) fn parse_devnum(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}
