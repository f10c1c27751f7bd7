//! Errors: one errno-based type for the runtime, the module API and the transport, as
//! Rust-for-Linux's `kernel::error`.
//!
//! An [`Error`] is an errno (`EINVAL`, ...); [`Result`] defaults to `Result<(), Error>`. The
//! kernel's C convention (a negative errno in an `int`) is [`Error::to_errno`] /
//! [`Error::from_errno`]; the conversions to and from `nix::errno::Errno` and `std::io::Error`
//! live here and nowhere else.
//!
//! ```
//! use deferred::kernel::error::{Error, Result};
//! fn check(arg: u64) -> Result<u64> {
//!     if arg == 0 { Err(Error::EINVAL) } else { Ok(arg) }
//! }
//! assert_eq!(check(0).unwrap_err().to_errno(), -22);
//! assert_eq!(format!("{:?}: {}", Error::EINVAL, Error::EINVAL), "EINVAL: Invalid argument");
//! ```

use core::fmt;

use nix::errno::Errno;

/// `ERESTARTSYS` (kernel-internal errno 512): an interruptible sleep was interrupted and the
/// system call may be restarted. Userspace never sees it (libc has no name for it).
pub const ERESTARTSYS: i32 = 512;

/// The largest errno the kernel returns as `-errno` (`MAX_ERRNO`).
const MAX_ERRNO: i32 = 4095;

/// An errno. Always in `1..=4095`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Error(i32);

/// The result of a runtime or module function: `Ok(T)` or an errno.
pub type Result<T = (), E = Error> = core::result::Result<T, E>;

macro_rules! errnos {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl Error {
            $($(#[$doc])* pub const $name: Error = Error($value);)*
        }

        /// The name of a known errno (`"EINVAL"`); the first declared wins for aliases.
        fn name(errno: i32) -> Option<&'static str> {
            $(if errno == $value {
                return Some(stringify!($name));
            })*
            None
        }
    };
}

errnos! {
    /// Operation not permitted.
    EPERM = libc::EPERM;
    /// No such file or directory.
    ENOENT = libc::ENOENT;
    /// No such process.
    ESRCH = libc::ESRCH;
    /// Interrupted system call.
    EINTR = libc::EINTR;
    /// Input/output error.
    EIO = libc::EIO;
    /// No such device or address.
    ENXIO = libc::ENXIO;
    /// Bad file descriptor.
    EBADF = libc::EBADF;
    /// Try again (also [`Error::EWOULDBLOCK`]).
    EAGAIN = libc::EAGAIN;
    /// Out of memory.
    ENOMEM = libc::ENOMEM;
    /// Permission denied.
    EACCES = libc::EACCES;
    /// Bad address.
    EFAULT = libc::EFAULT;
    /// Device or resource busy.
    EBUSY = libc::EBUSY;
    /// File exists.
    EEXIST = libc::EEXIST;
    /// No such device.
    ENODEV = libc::ENODEV;
    /// Invalid argument.
    EINVAL = libc::EINVAL;
    /// Too many open files in the system.
    ENFILE = libc::ENFILE;
    /// Too many open files.
    EMFILE = libc::EMFILE;
    /// Inappropriate ioctl for device.
    ENOTTY = libc::ENOTTY;
    /// No space left on device.
    ENOSPC = libc::ENOSPC;
    /// Broken pipe.
    EPIPE = libc::EPIPE;
    /// Resource deadlock would occur.
    EDEADLK = libc::EDEADLK;
    /// Function not implemented.
    ENOSYS = libc::ENOSYS;
    /// Protocol error.
    EPROTO = libc::EPROTO;
    /// Software caused connection abort.
    ECONNABORTED = libc::ECONNABORTED;
    /// Transport endpoint is not connected.
    ENOTCONN = libc::ENOTCONN;
    /// Connection timed out.
    ETIMEDOUT = libc::ETIMEDOUT;
    /// The kernel-internal [`ERESTARTSYS`]: an interruptible wait was interrupted.
    ERESTARTSYS = ERESTARTSYS;
}

impl Error {
    /// Operation would block: the same errno as [`Error::EAGAIN`].
    pub const EWOULDBLOCK: Error = Error::EAGAIN;

    /// The error of a kernel-style negative errno (`-EINVAL`). Anything outside
    /// `-4095..=-1` is a caller's bug: it becomes `EINVAL`, as in Rust-for-Linux.
    pub fn from_errno(errno: i32) -> Error {
        if (-MAX_ERRNO..0).contains(&errno) {
            Error(-errno)
        } else {
            Error::EINVAL
        }
    }

    /// The kernel's C convention: the negative errno (`-22` for `EINVAL`).
    pub const fn to_errno(self) -> i32 {
        -self.0
    }

    /// The positive errno (`22` for `EINVAL`), as `errno(3)` holds it.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The calling thread's `errno(3)` after a failed call (`EIO` if it is not set).
    pub fn last() -> Error {
        Error::from(Errno::last())
    }

    /// The name (`"EINVAL"`), if the runtime knows it.
    pub fn name(self) -> Option<&'static str> {
        name(self.0)
    }

    /// Writes the `strerror(3)` text ("Invalid argument") to `f`.
    fn write_desc(self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == ERESTARTSYS {
            return f.write_str("Interrupted system call (restart)");
        }
        let mut buf = [0u8; 128];
        // SAFETY: `buf` is a writable buffer of the given length; the XSI `strerror_r` (the libc
        // crate binds it on glibc and musl) NUL-terminates what it writes, or returns an error.
        let rc = unsafe { libc::strerror_r(self.0, buf.as_mut_ptr().cast(), buf.len()) };
        let len = buf.iter().position(|&b| b == 0).unwrap_or(0);
        match core::str::from_utf8(&buf[..len]) {
            Ok(text) if rc == 0 && !text.is_empty() => f.write_str(text),
            _ => write!(f, "Unknown error {}", self.0),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Error({})", self.0),
        }
    }
}

/// The `strerror(3)` text ("Invalid argument").
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_desc(f)
    }
}

impl std::error::Error for Error {}

/// `Errno::UnknownErrno` (0, "no errno") becomes `EIO`.
impl From<Errno> for Error {
    fn from(e: Errno) -> Error {
        match e as i32 {
            n @ 1..=MAX_ERRNO => Error(n),
            _ => Error::EIO,
        }
    }
}

impl From<Error> for Errno {
    fn from(e: Error) -> Errno {
        Errno::from_raw(e.0)
    }
}

/// An `io::Error` without an OS errno (a custom one) becomes `EIO`.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(n @ 1..=MAX_ERRNO) => Error(n),
            _ => Error::EIO,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions_round_trip() {
        assert_eq!(Error::from_errno(-libc::ENOTTY), Error::ENOTTY);
        assert_eq!(Error::ENOTTY.to_errno(), -libc::ENOTTY);
        assert_eq!(Error::ENOTTY.raw(), libc::ENOTTY);
        for bad in [0, 1, -4096, i32::MIN] {
            assert_eq!(Error::from_errno(bad), Error::EINVAL, "{bad}");
        }
        assert_eq!(Error::from(Errno::ESRCH), Error::ESRCH);
        assert_eq!(Errno::from(Error::ESRCH), Errno::ESRCH);
        assert_eq!(Error::from(Errno::UnknownErrno), Error::EIO);
        let io = std::io::Error::from(Error::EACCES);
        assert_eq!(io.raw_os_error(), Some(libc::EACCES));
        assert_eq!(Error::from(io), Error::EACCES);
        assert_eq!(Error::from(std::io::Error::other("custom")), Error::EIO);
        assert_eq!(Error::EWOULDBLOCK, Error::EAGAIN);
    }

    #[test]
    fn debug_is_the_name_display_the_strerror_text() {
        assert_eq!(format!("{:?}", Error::ENOTTY), "ENOTTY");
        assert_eq!(Error::ENOTTY.to_string(), "Inappropriate ioctl for device");
        assert_eq!(format!("{:?}", Error::EWOULDBLOCK), "EAGAIN");
        assert_eq!(format!("{:?}", Error::ERESTARTSYS), "ERESTARTSYS");
        assert_eq!(Error::ERESTARTSYS.to_errno(), -512);
        assert_eq!(format!("{:?}", Error::from_errno(-4000)), "Error(4000)");
        assert_eq!(Error::from_errno(-4000).to_string(), "Unknown error 4000");
    }
}
