//! File operations: what a module exposes for its character device (`struct file_operations`).
//!
//! The transport ([`crate::cuse`]) knows nothing of the lab: it decodes requests and calls these
//! methods; a module implements them. In-process tests call them directly, without CUSE.
//!
//! All methods run in process context, on a transport thread, and must answer promptly: the
//! calling program sleeps in the kernel until the reply is written. Anything slow belongs on a
//! workqueue. A method that must wait does it through the runtime (`wait_event*`, `msleep`,
//! `flush_work`, ...): the transport then puts another thread to work for the other callers and
//! for a signal to the waiting one (which returns `EINTR` at once). Blocking outside the runtime
//! (a std lock, I/O) is waiting uninterruptibly: while one program uses the device, its other
//! requests and its signals wait for the answer.

use super::error::{Error, Result};

/// What the kernel reports for a file whose driver has no `.poll` (`DEFAULT_POLLMASK`, fs/select.c):
/// `EPOLLIN | EPOLLOUT | EPOLLRDNORM | EPOLLWRNORM`, always readable and writable.
pub const DEFAULT_POLLMASK: u32 = 0x0001 | 0x0004 | 0x0040 | 0x0100;

/// One open file of the device (`struct file`), as the transport knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct File {
    /// The handle the transport gave this open file; stable from open to release.
    pub fh: u64,
    /// The `open(2)` flags (`O_RDONLY`, ...).
    pub flags: u32,
    /// The thread id that issued the request (0 on release: the kernel does not say).
    pub caller_tid: u32,
}

/// The operations of a character device.
///
/// Defaults follow a kernel driver that leaves a slot NULL in a way the lab's module would see:
/// `read`/`write` answer `EINVAL`, an ioctl `ENOTTY`, `poll` [`DEFAULT_POLLMASK`].
pub trait FileOperations: Send + Sync {
    /// `open(2)` on the node. An error refuses the open.
    fn open(&self, _file: &File) -> Result<()> {
        Ok(())
    }

    /// The last close of an open file. Cannot fail.
    fn release(&self, _file: &File) {}

    /// `ioctl(2)` from a 64-bit caller. `cmd` is the caller's 32-bit number, never sign-extended;
    /// `arg` is the raw argument (unrestricted ioctls: a plain value, not a pointer).
    /// The `Ok` value is what the caller's `ioctl()` returns.
    fn unlocked_ioctl(&self, _file: &File, _cmd: u32, _arg: u64) -> Result<i32> {
        Err(Error::ENOTTY)
    }

    /// `ioctl(2)` from a 32-bit caller (`FUSE_IOCTL_COMPAT`): `arg` zero-extended, and the numbers
    /// of `_IOW(..., unsigned long)` commands carry size 4. The default passes the call on to
    /// [`FileOperations::unlocked_ioctl`] (the kernel's `compat_ptr_ioctl`), so a module that wants
    /// 32-bit callers matches both sizes of its numbers.
    fn compat_ioctl(&self, file: &File, cmd: u32, arg: u64) -> Result<i32> {
        self.unlocked_ioctl(file, cmd, arg)
    }

    /// `read(2)` of up to `size` bytes at `offset`.
    fn read(&self, _file: &File, _size: u32, _offset: u64) -> Result<Vec<u8>> {
        Err(Error::EINVAL)
    }

    /// `write(2)` of `data` at `offset`; returns the bytes taken.
    fn write(&self, _file: &File, _data: &[u8], _offset: u64) -> Result<u32> {
        Err(Error::EINVAL)
    }

    /// `poll(2)`/`select(2)`/`epoll`: the events ready now (`POLLIN`, ... bits), of the `events`
    /// asked for or others (the caller filters). Cannot fail; never blocks.
    fn poll(&self, _file: &File, _events: u32) -> u32 {
        DEFAULT_POLLMASK
    }
}
