//! `read(2)` and `writev(2)` as bare system calls, for the transport's request path.
//!
//! glibc's wrappers are cancellation points: in a multi-threaded process each call switches
//! asynchronous cancellation on and off around the system call (~60 instructions a request,
//! read and answer, under callgrind). Nothing here is ever cancelled (no `pthread_cancel`), so
//! the request path enters the kernel directly. Both are async-signal-safe.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

// `syscall(2)` is variadic: each argument is passed as a whole `long` (an `int` would leave the
// upper half of its register undefined, and the kernel reads `writev`'s count as a long).

/// A system call's return value: the count, or the error `errno` holds.
fn result(rc: libc::c_long) -> Result<usize, Errno> {
    usize::try_from(rc).map_err(|_| Errno::last())
}

/// `read(2)` into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    let fd = libc::c_long::from(fd.as_raw_fd());
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call's duration; `fd` is
    // open (borrowed).
    result(unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) })
}

/// `writev(2)` of `iov`.
pub fn writev(fd: BorrowedFd<'_>, iov: &[IoSlice<'_>]) -> Result<usize, Errno> {
    let cnt = libc::c_long::try_from(iov.len()).map_err(|_| Errno::EINVAL)?;
    let fd = libc::c_long::from(fd.as_raw_fd());
    // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` (std guarantees it on Unix), `iov`
    // points to `cnt` of them, each valid for reads for the call's duration; `fd` is open.
    result(unsafe {
        libc::syscall(
            libc::SYS_writev,
            fd,
            iov.as_ptr().cast::<libc::iovec>(),
            cnt,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pipe_carries_what_writev_wrote_and_errors_are_errnos() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let n = writev(w.as_fd(), &[IoSlice::new(b"head"), IoSlice::new(b"-body")]).unwrap();
        assert_eq!(n, 9);
        let mut buf = [0u8; 16];
        assert_eq!(read(r.as_fd(), &mut buf).unwrap(), 9);
        assert_eq!(&buf[..9], b"head-body");
        // Reading the write end fails as read(2) does: EBADF.
        assert_eq!(read(w.as_fd(), &mut buf), Err(Errno::EBADF));
        // An empty pipe whose writer is gone reads 0 (end of file).
        drop(w);
        assert_eq!(read(r.as_fd(), &mut buf), Ok(0));
    }
}
