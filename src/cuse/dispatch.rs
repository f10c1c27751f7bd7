//! Dispatch: one request decoded and handed to the module's
//! [`FileOperations`](crate::kernel::fs::FileOperations), its answer written. Every request but
//! INTERRUPT is answered exactly once; an INTERRUPT marks its target, which then answers EINTR
//! (or drops a late answer). The module never sees the wire.

use std::sync::atomic::Ordering;

use super::abi::{self, Operation};
use super::pool::Server;
use super::reply::{Begin, Delivery};
use crate::kernel::error::Error as KernelError;
use crate::kernel::fs::File;
use crate::kernel::trace;

impl Server {
    /// Handles one request; every request but INTERRUPT is answered exactly once.
    pub(super) fn handle(&self, buf: &[u8]) {
        let req = match abi::decode(buf) {
            Ok(req) => req,
            Err(e) => {
                log::warn!("malformed request: {e}");
                if let (Some(unique), Some(op)) = (e.unique, e.opcode)
                    && op != abi::FUSE_INTERRUPT
                {
                    let (reply, _) = self.chan.begin(unique);
                    let _ = reply.error(KernelError::EIO);
                }
                return;
            }
        };
        let h = req.header;
        trace::cuse_request(h.unique, h.opcode, abi::opcode_name(h.opcode), h.pid);
        self.note_caller(h.pid);
        if let Operation::Interrupt(arg) = req.op {
            log::debug!("request {}: INTERRUPT {}", h.unique, arg.unique);
            self.chan.interrupt(arg.unique);
            return;
        }
        let (reply, begin) = self.chan.begin(h.unique);
        // A RELEASE always runs: the file is gone whatever its closer does. The kernel sends it
        // from the closing task, which may be dying (SIGKILL): then it marks the request
        // interrupted and sends an INTERRUPT for it once a reader has read it, and that INTERRUPT
        // can reach another reader before this one enters the RELEASE in the table. Skipping it
        // then would leave the module's file open for good.
        if begin == Begin::Interrupted && !matches!(req.op, Operation::Release(_)) {
            log::debug!("request {}: interrupted before it ran", h.unique);
            let _ = reply.error(KernelError::EINTR);
            return;
        }
        match req.op {
            Operation::Open(arg) => {
                let file = File {
                    fh: self.next_fh.fetch_add(1, Ordering::Relaxed),
                    flags: arg.flags,
                    caller_tid: h.pid,
                };
                log::debug!(
                    "request {}: OPEN flags={:#o} -> fh {}",
                    h.unique,
                    arg.flags,
                    file.fh
                );
                match self.fops.open(&file) {
                    Ok(()) => {
                        if reply.open(file.fh) == Delivery::Dropped {
                            // The caller gave up (interrupted): no RELEASE will come.
                            log::debug!("open fh {} abandoned by its caller: released", file.fh);
                            self.fops.release(&File {
                                caller_tid: 0,
                                ..file
                            });
                        }
                    }
                    Err(e) => {
                        let _ = reply.error(e);
                    }
                }
            }
            Operation::Release(arg) => {
                log::debug!("request {}: RELEASE fh {}", h.unique, arg.fh);
                self.fops.release(&File {
                    fh: arg.fh,
                    flags: arg.flags,
                    caller_tid: h.pid,
                });
                let _ = reply.ok();
            }
            Operation::Ioctl(arg, _) => {
                let file = File {
                    fh: arg.fh,
                    flags: 0,
                    caller_tid: h.pid,
                };
                let compat = arg.flags & abi::FUSE_IOCTL_COMPAT != 0;
                log::debug!(
                    "request {}: IOCTL fh {} cmd={:#010x} arg={:#x} flags={:#x} tid {}",
                    h.unique,
                    arg.fh,
                    arg.cmd,
                    arg.arg,
                    arg.flags,
                    h.pid
                );
                let result = if compat {
                    self.fops.compat_ioctl(&file, arg.cmd, arg.arg)
                } else {
                    self.fops.unlocked_ioctl(&file, arg.cmd, arg.arg)
                };
                let _ = match result {
                    Ok(v) => reply.ioctl(v),
                    Err(e) => reply.error(e),
                };
            }
            Operation::Read(arg) => {
                let file = File {
                    fh: arg.fh,
                    flags: arg.flags,
                    caller_tid: h.pid,
                };
                let size = arg.size.min(self.max_read);
                log::debug!("request {}: READ fh {} size {}", h.unique, arg.fh, size);
                let _ = match self.fops.read(&file, size, arg.offset) {
                    Ok(data) => reply.data(&data[..data.len().min(size as usize)]),
                    Err(e) => reply.error(e),
                };
            }
            Operation::Write(arg, data) => {
                let file = File {
                    fh: arg.fh,
                    flags: arg.flags,
                    caller_tid: h.pid,
                };
                log::debug!(
                    "request {}: WRITE fh {} size {}",
                    h.unique,
                    arg.fh,
                    data.len()
                );
                let _ = match self.fops.write(&file, data, arg.offset) {
                    Ok(n) => reply.write(n.min(arg.size)),
                    Err(e) => reply.error(e),
                };
            }
            Operation::Poll(arg) => {
                let file = File {
                    fh: arg.fh,
                    flags: 0,
                    caller_tid: h.pid,
                };
                log::debug!(
                    "request {}: POLL fh {} events {:#x}",
                    h.unique,
                    arg.fh,
                    arg.events
                );
                let _ = reply.poll(self.fops.poll(&file, arg.events));
            }
            Operation::CuseInit(_) => {
                log::warn!("request {}: CUSE_INIT again: EIO", h.unique);
                let _ = reply.error(KernelError::EIO);
            }
            Operation::Unknown(opcode) => {
                log::debug!("request {}: opcode {opcode}: ENOSYS", h.unique);
                let _ = reply.error(KernelError::ENOSYS);
            }
            Operation::Interrupt(_) => unreachable!("handled above"),
        }
    }
}
