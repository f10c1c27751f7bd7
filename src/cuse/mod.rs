//! The CUSE transport: our own loop over `/dev/cuse` (no libfuse).
//!
//! The transport knows nothing of the lab: it serves an `Arc<dyn FileOperations>`
//! ([`crate::kernel::fs`]).
//!
//! ```text
//!  Cuse::open ──> Cuse::start(fops) ──> Device (node present, readers running) ──> Device::stop
//!  (checks,        (CUSE_INIT reply,      reader "cuse/N": read (blocking)            (stop readers,
//!   /dev/cuse)      wait for the node)    -> decode -> fops -> Reply                 close fd: node gone)
//! ```
//!
//! The protocol facts it relies on (from the kernel's `fs/fuse/cuse.c`, `dev.c`, `ioctl.c` and
//! `include/uapi/linux/fuse.h`):
//!
//! - One `read(2)` of the fd is one whole request (`fuse_in_header` + body), into a buffer of at
//!   least `max(8192, 80 + max_write)` bytes; one `write(2)` is one whole reply
//!   (`fuse_out_header`, `error = -errno` in `(-512, 0]`, + body). Several threads may read the
//!   one fd: each request goes to exactly one of them.
//! - The first request is `CUSE_INIT`; its reply carries the device number and `DEVNAME=<name>`.
//!   A refused INIT is not answered: the connection is aborted (the name or the number is
//!   taken). Success shows as `/sys/class/cuse/<name>`, then devtmpfs creates the node.
//! - Then OPEN, RELEASE (from a task whose ids read 0), READ, WRITE, IOCTL (unrestricted: the
//!   caller's raw `arg`; a 32-bit caller is flagged `FUSE_IOCTL_COMPAT`), POLL and INTERRUPT.
//! - The calling thread sleeps uninterruptibly until its request is answered: every request is
//!   answered promptly and exactly once; INTERRUPT answers its target EINTR if still pending.
//! - Closing the fd removes the node; clients still holding it get ENODEV/ENOTCONN.
//!
//! The files, by concern:
//!
//! - [`abi`]: the wire structs and a decoder that never panics.
//! - [`reply`]: the one-shot [`reply::Reply`], the in-flight table (INTERRUPT).
//! - `config`: [`Config`]; `error`: [`Error`], one line for the command line.
//! - `init`: the CUSE_INIT handshake and its confirmation; `node`: waiting for `/dev/<name>`, its
//!   group and mode.
//! - `pool`: the reader threads (growth, parking, spinning); `spin`: whether spinning pays,
//!   learnt from the requests' pace; `dispatch`: a request to the
//!   [`FileOperations`](crate::kernel::fs::FileOperations) and its answer.
//! - `device`: [`Cuse`] and [`Device`], the connection's life from open to stop.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # struct Fops;
//! # impl deferred::kernel::fs::FileOperations for Fops {}
//! use deferred::cuse::{Config, Cuse};
//! let dev = Cuse::open(Config::default())?.start(Arc::new(Fops))?; // /dev/deferred appears
//! // ... serve until told to stop ...
//! dev.stop(); // /dev/deferred disappears
//! # Ok::<(), deferred::cuse::Error>(())
//! ```

pub mod abi;
mod config;
mod device;
mod dispatch;
mod error;
mod init;
mod node;
mod pool;
pub mod reply;
mod spin;
#[cfg(test)]
mod tests;

pub use config::{CUSE_DEV, Config};
pub use device::{Cuse, Device};
pub use error::Error;
