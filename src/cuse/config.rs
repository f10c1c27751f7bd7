//! What the device looks like and how it is served: [`Config`], checked before `/dev/cuse` is
//! opened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::abi;
use super::error::Error;

/// Where the CUSE control device lives.
pub const CUSE_DEV: &str = "/dev/cuse";

/// What the device looks like and how it is served.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DEVNAME`: the node is `/dev/<name>`, the sysfs entry `/sys/class/cuse/<name>`.
    pub name: String,
    /// Device major; 0 = allocate one dynamically.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
    /// Most reader threads on the one fd (the pool starts with one; see `Server::spawn_reader`).
    pub threads: usize,
    /// Largest READ the kernel may send.
    pub max_read: u32,
    /// Largest WRITE the kernel may send.
    pub max_write: u32,
    /// Mode bits to give the node once it appears (devtmpfs makes it 0600).
    pub mode: Option<u32>,
    /// Group to give the node once it appears.
    pub gid: Option<u32>,
    /// How long to wait for the kernel's answer and the node.
    pub timeout: Duration,
    /// After answering a lone client, how long one reader polls for its next request before it
    /// sleeps in `read(2)` (zero: never), while spinning is seen to pay: long enough to span a
    /// time slice of a busy host's scheduler. For several clients, the most it polls (their
    /// window follows their pace). See the reader pool (`pool.rs`, `spin.rs`).
    pub spin: Duration,
    /// The nice value of a reader serving a lone client, relative to the daemon's (negative:
    /// more weight; 0: the daemon's). Woken by a request, such a reader then preempts its
    /// caller before the caller sleeps in its wait for the answer, where the scheduler does
    /// wake-up preemption by weight (CFS, before Linux 6.6), so the answer finds the caller
    /// awake instead of waking it, as a driver's ioctl runs in its caller's context, without a
    /// wake-up. With several clients the readers keep the daemon's value (their requests
    /// gather while a reader works). Lowering a nice value needs `CAP_SYS_NICE` (or
    /// `RLIMIT_NICE`); without it the readers keep the daemon's.
    pub reader_nice: i32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            name: "deferred".into(),
            major: 42,
            minor: 0,
            threads: 8,
            max_read: 4096,
            max_write: 4096,
            mode: None,
            gid: None,
            timeout: Duration::from_secs(5),
            spin: Duration::from_millis(20),
            reader_nice: -5,
        }
    }
}

impl Config {
    /// The read buffer the kernel requires: at least `max(8192, 80 + max_write)`.
    pub fn read_buffer_len(&self) -> usize {
        abi::FUSE_MIN_READ_BUFFER
            .max(abi::IN_HEADER_LEN + std::mem::size_of::<abi::WriteIn>() + self.max_write as usize)
    }

    /// The `/dev` node.
    pub fn node(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// The sysfs entry the kernel creates on a successful INIT.
    pub fn sysfs(&self) -> PathBuf {
        Path::new("/sys/class/cuse").join(&self.name)
    }

    pub(super) fn check(&self) -> Result<(), Error> {
        let bad = |why: &str| Error::Config(format!("device name `{}` {why}", self.name));
        if self.name.is_empty() {
            return Err(bad("is empty"));
        }
        if self.name.contains(['/', '\0']) || self.name == "." || self.name == ".." {
            return Err(bad("must be a plain file name (no `/`)"));
        }
        if self.name.len() > 200 {
            return Err(bad("is too long"));
        }
        if self.threads == 0 || self.threads > 64 {
            return Err(Error::Config(format!(
                "--threads {} is out of range (1..=64)",
                self.threads
            )));
        }
        if !(-39..=39).contains(&self.reader_nice) {
            return Err(Error::Config(format!(
                "--reader-nice {} is out of range (-39..=39; nice values run from -20 to 19)",
                self.reader_nice
            )));
        }
        if self.minor >= 1 << 20 || self.major >= 1 << 12 {
            return Err(Error::Config(format!(
                "device number {}:{} is out of range (major < 4096, minor < 1048576)",
                self.major, self.minor
            )));
        }
        Ok(())
    }
}
