//! The connection's life: [`Cuse`] opens `/dev/cuse` (or takes a test fd), [`Cuse::start`]
//! runs the handshake, waits for the node and starts the reader pool, giving a [`Device`];
//! [`Device::stop`] (or dropping it) stops the readers and closes the fd, removing the node.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::eventfd::EventFd;
use nix::sys::stat::Mode;

use super::config::{CUSE_DEV, Config};
use super::error::Error;
use super::pool::Server;
use super::reply::Channel;
use super::{init, node};
use crate::kernel::fs::FileOperations;

/// An open `/dev/cuse` (or test fd), not yet initialised.
#[derive(Debug)]
pub struct Cuse {
    fd: OwnedFd,
    config: Config,
    /// A real `/dev/cuse`: INIT is confirmed through sysfs and the node.
    real: bool,
}

impl Cuse {
    /// Opens `/dev/cuse` (`O_RDWR | O_CLOEXEC`, non-blocking), after checking the configuration
    /// and that no device of that name exists.
    pub fn open(config: Config) -> Result<Cuse, Error> {
        config.check()?;
        if config.sysfs().exists() {
            return Err(Error::NameTaken(config.name.clone()));
        }
        let fd = open(
            CUSE_DEV,
            OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ENOENT | Errno::ENODEV | Errno::ENXIO => Error::NoCuse,
            Errno::EACCES | Errno::EPERM => Error::Permission,
            e => Error::Sys("open /dev/cuse", e.into()),
        })?;
        Ok(Cuse {
            fd,
            config,
            real: true,
        })
    }

    /// Serves any message-preserving fd (e.g. one end of a `SOCK_SEQPACKET` pair) as if it were
    /// `/dev/cuse`: for tests that play the kernel. Nothing is checked in sysfs or `/dev`.
    pub fn from_fd(fd: OwnedFd, config: Config) -> Result<Cuse, Error> {
        config.check()?;
        Ok(Cuse {
            fd,
            config,
            real: false,
        })
    }

    /// Answers CUSE_INIT, waits for the node, starts the reader threads serving `fops`.
    pub fn start(self, fops: Arc<dyn FileOperations>) -> Result<Device, Error> {
        let Cuse { fd, config, real } = self;
        let chan = Arc::new(Channel::new(fd));
        let mut buf = vec![0u8; config.read_buffer_len()];
        init::init(&chan, &config, &mut buf)?;
        let devnum = if real {
            let devnum = init::confirm(&chan, &config)?;
            let node = node::wait_node(&config, devnum)?;
            node::apply_owner_mode(&node, &config)?;
            devnum
        } else {
            (config.major, config.minor)
        };
        log::debug!(
            "device {} {}:{} up, up to {} reader threads",
            config.name,
            devnum.0,
            devnum.1,
            config.threads
        );
        let server = Server::start(chan, fops, &config)?;
        let gone = server.gone.clone();
        Ok(Device {
            server: Some(server),
            gone,
            config,
            devnum,
            real,
        })
    }
}

/// A served device. Dropping it (or [`Device::stop`]) removes the node.
pub struct Device {
    pub(super) server: Option<Arc<Server>>,
    pub(super) gone: Arc<EventFd>,
    config: Config,
    devnum: (u32, u32),
    real: bool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.config.name)
            .field("devnum", &self.devnum)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// The node (`/dev/<name>`).
    pub fn node(&self) -> PathBuf {
        self.config.node()
    }

    /// The device number the kernel registered.
    pub fn devnum(&self) -> (u32, u32) {
        self.devnum
    }

    /// Readable once the connection is gone (all readers saw it end): for a main loop's poll.
    pub fn gone_fd(&self) -> BorrowedFd<'_> {
        self.gone.as_fd()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.server.as_ref().map_or(0, |s| s.chan.in_flight())
    }

    /// Reader threads now (the pool grows with concurrent requests up to [`Config::threads`]).
    pub fn readers(&self) -> usize {
        self.server.as_ref().map_or(0, |s| s.readers())
    }

    /// Stops the readers (each finishes the request it is handling), then closes the fd: the
    /// kernel removes the node, and clients that still hold it open get ENODEV/ENOTCONN.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(server) = &self.server {
            server.stop_readers();
        }
        if let Some(server) = self.server.take() {
            match Arc::try_unwrap(server) {
                Ok(server) => drop(server), // closes /dev/cuse
                Err(_) => log::error!("bug: the connection is still referenced after stop"),
            }
        }
        if self.real {
            // sysfs goes synchronously with the close; devtmpfs removes the node shortly after.
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.config.node().exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.shutdown();
        }
    }
}
