//! The FUSE/CUSE wire format: constants, the `#[repr(C)]` structs of `include/uapi/linux/fuse.h`
//! that CUSE uses, and a decoder that never panics.
//!
//! # Decoding
//! A request is decoded from the bytes of one `read(2)` with `from_le_bytes` on sub-slices, never
//! by casting a pointer: a short buffer, a `len` that disagrees with the bytes read, a body too
//! short for its opcode, all become a [`DecodeError`] that carries the request's `unique` when the
//! header was complete (so the request can still be answered `EIO`). An unknown opcode is not an
//! error: it decodes as [`Operation::Unknown`] and is answered `ENOSYS`.
//!
//! The structs mirror the kernel's layout (host byte order = little-endian on every platform this
//! runs on); they are built field by field, so their `repr(C)` only documents the layout and lets
//! tests check the sizes against the kernel's.

use std::fmt;

/// The protocol major version (`FUSE_KERNEL_VERSION`); the kernel refuses any other.
pub const FUSE_KERNEL_VERSION: u32 = 7;
/// The protocol minor version we speak. The kernel needs >= 11 for CUSE; 7.16 brought the ioctl
/// layout used here (`FUSE_IOCTL_32BIT`). We answer `min(kernel's minor, this)`.
pub const FUSE_KERNEL_MINOR_VERSION: u32 = 31;
/// The oldest minor version we accept from the kernel.
pub const FUSE_MIN_MINOR_VERSION: u32 = 16;

/// The smallest read buffer the kernel accepts (`FUSE_MIN_READ_BUFFER`).
pub const FUSE_MIN_READ_BUFFER: usize = 8192;

// Opcodes the kernel sends to a CUSE server.
/// `FUSE_OPEN`
pub const FUSE_OPEN: u32 = 14;
/// `FUSE_READ`
pub const FUSE_READ: u32 = 15;
/// `FUSE_WRITE`
pub const FUSE_WRITE: u32 = 16;
/// `FUSE_RELEASE`
pub const FUSE_RELEASE: u32 = 18;
/// `FUSE_INTERRUPT`
pub const FUSE_INTERRUPT: u32 = 36;
/// `FUSE_IOCTL`
pub const FUSE_IOCTL: u32 = 39;
/// `FUSE_POLL`
pub const FUSE_POLL: u32 = 40;
/// `CUSE_INIT`
pub const CUSE_INIT: u32 = 4096;

/// The name of a request's opcode, as the kernel's `fuse_opcode` names it without its prefix
/// (`IOCTL`); `?` for one this transport does not know.
pub fn opcode_name(opcode: u32) -> &'static str {
    match opcode {
        FUSE_OPEN => "OPEN",
        FUSE_READ => "READ",
        FUSE_WRITE => "WRITE",
        FUSE_RELEASE => "RELEASE",
        FUSE_INTERRUPT => "INTERRUPT",
        FUSE_IOCTL => "IOCTL",
        FUSE_POLL => "POLL",
        CUSE_INIT => "CUSE_INIT",
        _ => "?",
    }
}

/// `cuse_init_in/out.flags`: ioctls are passed raw (`arg` is the caller's value).
pub const CUSE_UNRESTRICTED_IOCTL: u32 = 1 << 0;

/// `fuse_ioctl_in.flags`: a 32-bit caller on a 64-bit kernel.
pub const FUSE_IOCTL_COMPAT: u32 = 1 << 0;
/// `fuse_ioctl_in.flags`: not restricted to well-formed ioctls.
pub const FUSE_IOCTL_UNRESTRICTED: u32 = 1 << 1;
/// `fuse_ioctl_out.flags`: retry with new iovecs (never used here).
pub const FUSE_IOCTL_RETRY: u32 = 1 << 2;
/// `fuse_ioctl_in.flags`: 32-bit ioctl.
pub const FUSE_IOCTL_32BIT: u32 = 1 << 3;

/// The unique of an INTERRUPT request is the target's unique with this bit set.
pub const FUSE_INT_REQ_BIT: u64 = 1 << 0;

/// `struct fuse_in_header` (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InHeader {
    /// Total length of the request, header included.
    pub len: u32,
    /// The operation.
    pub opcode: u32,
    /// The request id, echoed in the reply.
    pub unique: u64,
    /// Unused by CUSE.
    pub nodeid: u64,
    /// Caller's uid (0 on RELEASE).
    pub uid: u32,
    /// Caller's gid (0 on RELEASE).
    pub gid: u32,
    /// Caller's thread id, in our pid namespace (0 on RELEASE).
    pub pid: u32,
    /// Length of extensions after the body, in units of 8 bytes.
    pub total_extlen: u16,
    /// Padding.
    pub padding: u16,
}

/// `struct fuse_out_header` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutHeader {
    /// Total length of the reply, header included.
    pub len: u32,
    /// 0 or `-errno`.
    pub error: i32,
    /// The request being answered.
    pub unique: u64,
}

/// `struct cuse_init_in` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CuseInitIn {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// Unused.
    pub unused: u32,
    /// Offered flags (`CUSE_UNRESTRICTED_IOCTL`).
    pub flags: u32,
}

/// `struct cuse_init_out` (72 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CuseInitOut {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// Unused.
    pub unused: u32,
    /// Accepted flags.
    pub flags: u32,
    /// Largest read the kernel sends.
    pub max_read: u32,
    /// Largest write the kernel sends.
    pub max_write: u32,
    /// Device major (0: allocate one).
    pub dev_major: u32,
    /// Device minor.
    pub dev_minor: u32,
    /// Spare.
    pub spare: [u32; 10],
}

/// `struct fuse_open_in` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenIn {
    /// `open(2)` flags.
    pub flags: u32,
    /// `FUSE_OPEN_*` flags.
    pub open_flags: u32,
}

/// `struct fuse_open_out` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOut {
    /// Our handle for the open file.
    pub fh: u64,
    /// `FOPEN_*` flags.
    pub open_flags: u32,
    /// Passthrough backing id (unused: 0).
    pub backing_id: i32,
}

/// `struct fuse_read_in` (40 bytes; the first 24 are all that is used).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadIn {
    /// The open file.
    pub fh: u64,
    /// File offset.
    pub offset: u64,
    /// Bytes wanted.
    pub size: u32,
    /// `FUSE_READ_*` flags.
    pub read_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
    /// `open(2)` flags.
    pub flags: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_write_in` (40 bytes), followed by `size` bytes of data.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteIn {
    /// The open file.
    pub fh: u64,
    /// File offset.
    pub offset: u64,
    /// Bytes of data that follow.
    pub size: u32,
    /// `FUSE_WRITE_*` flags.
    pub write_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
    /// `open(2)` flags.
    pub flags: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_write_out` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOut {
    /// Bytes taken.
    pub size: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_release_in` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReleaseIn {
    /// The open file.
    pub fh: u64,
    /// `open(2)` flags.
    pub flags: u32,
    /// `FUSE_RELEASE_*` flags.
    pub release_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
}

/// `struct fuse_ioctl_in` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoctlIn {
    /// The open file.
    pub fh: u64,
    /// `FUSE_IOCTL_*` flags.
    pub flags: u32,
    /// The command, a 32-bit number: never sign-extend it.
    pub cmd: u32,
    /// The raw argument.
    pub arg: u64,
    /// Bytes of input data that follow (0 for unrestricted first rounds).
    pub in_size: u32,
    /// Room for output data (0 for unrestricted first rounds).
    pub out_size: u32,
}

/// `struct fuse_ioctl_out` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoctlOut {
    /// What the caller's `ioctl()` returns.
    pub result: i32,
    /// `FUSE_IOCTL_*` flags (0: no retry).
    pub flags: u32,
    /// Input iovecs for a retry (0).
    pub in_iovs: u32,
    /// Output iovecs for a retry (0).
    pub out_iovs: u32,
}

/// `struct fuse_poll_in` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollIn {
    /// The open file.
    pub fh: u64,
    /// Kernel handle for poll notifications.
    pub kh: u64,
    /// `FUSE_POLL_*` flags.
    pub flags: u32,
    /// Requested events (mangled `poll(2)` bits).
    pub events: u32,
}

/// `struct fuse_poll_out` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollOut {
    /// Ready events.
    pub revents: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_interrupt_in` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterruptIn {
    /// The request to interrupt.
    pub unique: u64,
}

/// Size of `fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Size of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// Size of `cuse_init_out`.
pub const CUSE_INIT_OUT_LEN: usize = 72;

/// A decoded request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    /// `CUSE_INIT`
    CuseInit(CuseInitIn),
    /// `FUSE_OPEN`
    Open(OpenIn),
    /// `FUSE_READ`
    Read(ReadIn),
    /// `FUSE_WRITE` with its data.
    Write(WriteIn, &'a [u8]),
    /// `FUSE_RELEASE`
    Release(ReleaseIn),
    /// `FUSE_IOCTL` with its input data (empty for unrestricted first rounds).
    Ioctl(IoctlIn, &'a [u8]),
    /// `FUSE_POLL`
    Poll(PollIn),
    /// `FUSE_INTERRUPT`
    Interrupt(InterruptIn),
    /// Any other opcode: answered `ENOSYS`.
    Unknown(u32),
}

/// A decoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The header.
    pub header: InHeader,
    /// The body.
    pub op: Operation<'a>,
}

/// Why a buffer is not a well-formed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Fewer bytes than a header.
    ShortHeader,
    /// The header's `len` differs from the bytes read.
    LengthMismatch {
        /// `len` in the header.
        header: u32,
        /// Bytes read.
        read: usize,
    },
    /// The extensions (`total_extlen`) do not fit in the request.
    BadExtensions,
    /// The body is too short for the opcode.
    ShortBody {
        /// The opcode.
        opcode: u32,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
}

/// A malformed request. `unique` is known when the header was complete: such a request can still
/// be answered (`EIO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    /// The request id, if the header was readable.
    pub unique: Option<u64>,
    /// The opcode, if the header was readable.
    pub opcode: Option<u32>,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DecodeErrorKind::ShortHeader => write!(f, "request shorter than its header"),
            DecodeErrorKind::LengthMismatch { header, read } => {
                write!(f, "request says {header} bytes, {read} were read")
            }
            DecodeErrorKind::BadExtensions => write!(f, "request extensions overrun the request"),
            DecodeErrorKind::ShortBody { opcode, need, have } => {
                write!(f, "opcode {opcode}: body of {have} bytes, {need} needed")
            }
        }?;
        if let Some(unique) = self.unique {
            write!(f, " (unique {unique})")?;
        }
        Ok(())
    }
}

impl std::error::Error for DecodeError {}

/// A little-endian reader over a byte slice that has already been checked to be long enough.
/// Every accessor is bounds-checked anyway and yields 0 past the end, so it cannot panic.
struct Le<'a>(&'a [u8]);

impl Le<'_> {
    fn u16(&self, at: usize) -> u16 {
        self.array::<2>(at).map_or(0, u16::from_le_bytes)
    }
    fn u32(&self, at: usize) -> u32 {
        self.array::<4>(at).map_or(0, u32::from_le_bytes)
    }
    fn u64(&self, at: usize) -> u64 {
        self.array::<8>(at).map_or(0, u64::from_le_bytes)
    }
    fn array<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.0.get(at..at.checked_add(N)?)?.try_into().ok()
    }
}

impl InHeader {
    /// Decodes a header from the first 40 bytes of `buf`.
    pub fn decode(buf: &[u8]) -> Option<InHeader> {
        if buf.len() < IN_HEADER_LEN {
            return None;
        }
        let b = Le(buf);
        Some(InHeader {
            len: b.u32(0),
            opcode: b.u32(4),
            unique: b.u64(8),
            nodeid: b.u64(16),
            uid: b.u32(24),
            gid: b.u32(28),
            pid: b.u32(32),
            total_extlen: b.u16(36),
            padding: b.u16(38),
        })
    }

    /// Encodes the header (for tests and tools).
    pub fn encode(&self) -> [u8; IN_HEADER_LEN] {
        let mut out = [0u8; IN_HEADER_LEN];
        out[0..4].copy_from_slice(&self.len.to_le_bytes());
        out[4..8].copy_from_slice(&self.opcode.to_le_bytes());
        out[8..16].copy_from_slice(&self.unique.to_le_bytes());
        out[16..24].copy_from_slice(&self.nodeid.to_le_bytes());
        out[24..28].copy_from_slice(&self.uid.to_le_bytes());
        out[28..32].copy_from_slice(&self.gid.to_le_bytes());
        out[32..36].copy_from_slice(&self.pid.to_le_bytes());
        out[36..38].copy_from_slice(&self.total_extlen.to_le_bytes());
        out[38..40].copy_from_slice(&self.padding.to_le_bytes());
        out
    }
}

impl OutHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; OUT_HEADER_LEN] {
        let mut out = [0u8; OUT_HEADER_LEN];
        out[0..4].copy_from_slice(&self.len.to_le_bytes());
        out[4..8].copy_from_slice(&self.error.to_le_bytes());
        out[8..16].copy_from_slice(&self.unique.to_le_bytes());
        out
    }

    /// Decodes a header (for tests).
    pub fn decode(buf: &[u8]) -> Option<OutHeader> {
        if buf.len() < OUT_HEADER_LEN {
            return None;
        }
        let b = Le(buf);
        Some(OutHeader {
            len: b.u32(0),
            error: b.u32(4) as i32,
            unique: b.u64(8),
        })
    }
}

/// Appends `u32`s in little-endian order.
fn put_u32s(out: &mut Vec<u8>, values: &[u32]) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

impl CuseInitOut {
    /// Encodes the 72 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CUSE_INIT_OUT_LEN);
        put_u32s(
            &mut out,
            &[
                self.major,
                self.minor,
                self.unused,
                self.flags,
                self.max_read,
                self.max_write,
                self.dev_major,
                self.dev_minor,
            ],
        );
        put_u32s(&mut out, &self.spare);
        out
    }
}

impl OpenOut {
    /// Encodes the 16 bytes.
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..8].copy_from_slice(&self.fh.to_le_bytes());
        out[8..12].copy_from_slice(&self.open_flags.to_le_bytes());
        out[12..16].copy_from_slice(&self.backing_id.to_le_bytes());
        out
    }
}

impl WriteOut {
    /// Encodes the 8 bytes.
    pub fn encode(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0..4].copy_from_slice(&self.size.to_le_bytes());
        out[4..8].copy_from_slice(&self.padding.to_le_bytes());
        out
    }
}

impl IoctlOut {
    /// Encodes the 16 bytes.
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&self.result.to_le_bytes());
        out[4..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..12].copy_from_slice(&self.in_iovs.to_le_bytes());
        out[12..16].copy_from_slice(&self.out_iovs.to_le_bytes());
        out
    }
}

impl PollOut {
    /// Encodes the 8 bytes.
    pub fn encode(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0..4].copy_from_slice(&self.revents.to_le_bytes());
        out[4..8].copy_from_slice(&self.padding.to_le_bytes());
        out
    }
}

/// The minimum body size of each known opcode.
fn body_len(opcode: u32) -> Option<usize> {
    Some(match opcode {
        CUSE_INIT => 16,
        FUSE_OPEN => 8,
        // Kernels before 7.9 sent 24 bytes; only those are used.
        FUSE_READ => 24,
        FUSE_WRITE => 40,
        FUSE_RELEASE => 16,
        FUSE_IOCTL => 32,
        FUSE_POLL => 24,
        FUSE_INTERRUPT => 8,
        _ => return None,
    })
}

/// Decodes one request: `buf` is exactly the bytes one `read(2)` returned. Never panics.
pub fn decode(buf: &[u8]) -> Result<Request<'_>, DecodeError> {
    let header = InHeader::decode(buf).ok_or(DecodeError {
        unique: None,
        opcode: None,
        kind: DecodeErrorKind::ShortHeader,
    })?;
    let err = |kind| DecodeError {
        unique: Some(header.unique),
        opcode: Some(header.opcode),
        kind,
    };
    if header.len as usize != buf.len() {
        return Err(err(DecodeErrorKind::LengthMismatch {
            header: header.len,
            read: buf.len(),
        }));
    }
    // Extensions come after the body; they are not used by any CUSE request.
    let ext = usize::from(header.total_extlen) * 8;
    let body_end = buf
        .len()
        .checked_sub(ext)
        .filter(|&end| end >= IN_HEADER_LEN)
        .ok_or(err(DecodeErrorKind::BadExtensions))?;
    let body = buf.get(IN_HEADER_LEN..body_end).unwrap_or_default();
    let Some(need) = body_len(header.opcode) else {
        return Ok(Request {
            header,
            op: Operation::Unknown(header.opcode),
        });
    };
    if body.len() < need {
        return Err(err(DecodeErrorKind::ShortBody {
            opcode: header.opcode,
            need,
            have: body.len(),
        }));
    }
    let b = Le(body);
    let op = match header.opcode {
        CUSE_INIT => Operation::CuseInit(CuseInitIn {
            major: b.u32(0),
            minor: b.u32(4),
            unused: b.u32(8),
            flags: b.u32(12),
        }),
        FUSE_OPEN => Operation::Open(OpenIn {
            flags: b.u32(0),
            open_flags: b.u32(4),
        }),
        FUSE_READ => Operation::Read(ReadIn {
            fh: b.u64(0),
            offset: b.u64(8),
            size: b.u32(16),
            read_flags: b.u32(20),
            lock_owner: b.u64(24),
            flags: b.u32(32),
            padding: b.u32(36),
        }),
        FUSE_WRITE => {
            let arg = WriteIn {
                fh: b.u64(0),
                offset: b.u64(8),
                size: b.u32(16),
                write_flags: b.u32(20),
                lock_owner: b.u64(24),
                flags: b.u32(32),
                padding: b.u32(36),
            };
            let data = body.get(40..).unwrap_or_default();
            if data.len() != arg.size as usize {
                return Err(err(DecodeErrorKind::ShortBody {
                    opcode: header.opcode,
                    need: 40usize.saturating_add(arg.size as usize),
                    have: body.len(),
                }));
            }
            Operation::Write(arg, data)
        }
        FUSE_RELEASE => Operation::Release(ReleaseIn {
            fh: b.u64(0),
            flags: b.u32(8),
            release_flags: b.u32(12),
            lock_owner: b.u64(16),
        }),
        FUSE_IOCTL => {
            let arg = IoctlIn {
                fh: b.u64(0),
                flags: b.u32(8),
                cmd: b.u32(12),
                arg: b.u64(16),
                in_size: b.u32(24),
                out_size: b.u32(28),
            };
            // Input data of a restricted/retried ioctl; unused with unrestricted first rounds.
            let data = body.get(32..).unwrap_or_default();
            let data = data.get(..arg.in_size as usize).unwrap_or(data);
            Operation::Ioctl(arg, data)
        }
        FUSE_POLL => Operation::Poll(PollIn {
            fh: b.u64(0),
            kh: b.u64(8),
            flags: b.u32(16),
            events: b.u32(20),
        }),
        FUSE_INTERRUPT => Operation::Interrupt(InterruptIn { unique: b.u64(0) }),
        other => Operation::Unknown(other),
    };
    Ok(Request { header, op })
}

/// Builds a request (header + body) as the kernel would send it: for tests and tools.
pub fn encode_request(opcode: u32, unique: u64, pid: u32, body: &[u8]) -> Vec<u8> {
    let len = IN_HEADER_LEN + body.len();
    let header = InHeader {
        len: u32::try_from(len).unwrap_or(u32::MAX),
        opcode,
        unique,
        pid,
        ..InHeader::default()
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(body);
    out
}

/// Encodes an `fuse_ioctl_in` body (for tests and tools).
pub fn encode_ioctl_in(arg: &IoctlIn) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[0..8].copy_from_slice(&arg.fh.to_le_bytes());
    out[8..12].copy_from_slice(&arg.flags.to_le_bytes());
    out[12..16].copy_from_slice(&arg.cmd.to_le_bytes());
    out[16..24].copy_from_slice(&arg.arg.to_le_bytes());
    out[24..28].copy_from_slice(&arg.in_size.to_le_bytes());
    out[28..32].copy_from_slice(&arg.out_size.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(size_of::<InHeader>(), IN_HEADER_LEN);
        assert_eq!(size_of::<OutHeader>(), OUT_HEADER_LEN);
        assert_eq!(size_of::<CuseInitIn>(), 16);
        assert_eq!(size_of::<CuseInitOut>(), CUSE_INIT_OUT_LEN);
        assert_eq!(CuseInitOut::default().encode().len(), CUSE_INIT_OUT_LEN);
        assert_eq!(size_of::<OpenIn>(), 8);
        assert_eq!(size_of::<OpenOut>(), 16);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<WriteOut>(), 8);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<IoctlIn>(), 32);
        assert_eq!(size_of::<IoctlOut>(), 16);
        assert_eq!(size_of::<PollIn>(), 24);
        assert_eq!(size_of::<PollOut>(), 8);
        assert_eq!(size_of::<InterruptIn>(), 8);
    }

    #[test]
    fn header_round_trips() {
        let h = InHeader {
            len: 72,
            opcode: FUSE_IOCTL,
            unique: 0x1122_3344_5566_7788,
            nodeid: 9,
            uid: 1,
            gid: 2,
            pid: 3,
            total_extlen: 0,
            padding: 0,
        };
        assert_eq!(InHeader::decode(&h.encode()), Some(h));
        let o = OutHeader {
            len: 32,
            error: -25,
            unique: 7,
        };
        assert_eq!(OutHeader::decode(&o.encode()), Some(o));
    }

    #[test]
    fn ioctl_cmd_with_high_bit_is_not_sign_extended() {
        let arg = IoctlIn {
            fh: 5,
            flags: FUSE_IOCTL_UNRESTRICTED,
            cmd: 0x8008_6b01,
            arg: u64::MAX,
            in_size: 0,
            out_size: 0,
        };
        let buf = encode_request(FUSE_IOCTL, 10, 42, &encode_ioctl_in(&arg));
        let req = decode(&buf).unwrap();
        assert_eq!(req.header.pid, 42);
        assert_eq!(req.op, Operation::Ioctl(arg, &[]));
        let Operation::Ioctl(got, _) = req.op else {
            unreachable!()
        };
        assert_eq!(u64::from(got.cmd), 0x8008_6b01);
    }

    #[test]
    fn the_seen_set_timer_request_decodes() {
        // `test s 3`: cmd=0x40086b01 arg=3 flags=UNRESTRICTED.
        let arg = IoctlIn {
            fh: 1,
            flags: FUSE_IOCTL_UNRESTRICTED,
            cmd: 0x4008_6b01,
            arg: 3,
            ..IoctlIn::default()
        };
        let buf = encode_request(FUSE_IOCTL, 2, 100, &encode_ioctl_in(&arg));
        assert_eq!(decode(&buf).unwrap().op, Operation::Ioctl(arg, &[]));
    }

    #[test]
    fn every_known_opcode_decodes_with_its_minimum_body() {
        for opcode in [
            CUSE_INIT,
            FUSE_OPEN,
            FUSE_READ,
            FUSE_RELEASE,
            FUSE_IOCTL,
            FUSE_POLL,
            FUSE_INTERRUPT,
        ] {
            let need = body_len(opcode).unwrap();
            let buf = encode_request(opcode, 8, 0, &vec![0u8; need]);
            let req = decode(&buf).unwrap_or_else(|e| panic!("opcode {opcode}: {e}"));
            assert!(!matches!(req.op, Operation::Unknown(_)), "opcode {opcode}");
            let short = encode_request(opcode, 8, 0, &vec![0u8; need - 1]);
            let e = decode(&short).unwrap_err();
            assert_eq!(e.unique, Some(8), "opcode {opcode}");
            assert!(matches!(e.kind, DecodeErrorKind::ShortBody { .. }));
        }
    }

    #[test]
    fn write_carries_its_data_and_checks_its_size() {
        let mut body = vec![0u8; 40];
        body[16..20].copy_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(b"abc");
        let buf = encode_request(FUSE_WRITE, 4, 0, &body);
        match decode(&buf).unwrap().op {
            Operation::Write(w, data) => {
                assert_eq!(w.size, 3);
                assert_eq!(data, b"abc");
            }
            other => panic!("{other:?}"),
        }
        body.pop();
        let buf = encode_request(FUSE_WRITE, 4, 0, &body);
        assert!(matches!(
            decode(&buf).unwrap_err().kind,
            DecodeErrorKind::ShortBody { .. }
        ));
    }

    #[test]
    fn malformed_requests_are_clean_errors() {
        // Empty and short.
        for n in 0..IN_HEADER_LEN {
            let e = decode(&vec![0xffu8; n]).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::ShortHeader);
            assert_eq!(e.unique, None);
        }
        // len says more than was read / less than was read.
        let mut buf = encode_request(FUSE_OPEN, 77, 0, &[0; 8]);
        buf[0..4].copy_from_slice(&100u32.to_le_bytes());
        let e = decode(&buf).unwrap_err();
        assert_eq!(e.unique, Some(77));
        assert!(matches!(e.kind, DecodeErrorKind::LengthMismatch { .. }));
        buf[0..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode(&buf).is_err());
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&buf).is_err());
        // Extensions longer than the request.
        let mut buf = encode_request(FUSE_OPEN, 78, 0, &[0; 8]);
        buf[36..38].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            decode(&buf).unwrap_err().kind,
            DecodeErrorKind::BadExtensions
        );
        // Extensions that eat the body.
        buf[36..38].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            decode(&buf).unwrap_err().kind,
            DecodeErrorKind::ShortBody { .. }
        ));
        // Unknown opcodes decode, to be answered ENOSYS.
        for opcode in [0, 1, 25, 38, 41, 4095, 4097, u32::MAX] {
            let buf = encode_request(opcode, 9, 0, &[]);
            assert_eq!(decode(&buf).unwrap().op, Operation::Unknown(opcode));
        }
        // An ioctl whose in_size exceeds the data present.
        let arg = IoctlIn {
            in_size: 1000,
            ..IoctlIn::default()
        };
        let mut body = encode_ioctl_in(&arg).to_vec();
        body.extend_from_slice(&[1, 2, 3]);
        let buf = encode_request(FUSE_IOCTL, 3, 0, &body);
        assert_eq!(
            decode(&buf).unwrap().op,
            Operation::Ioctl(arg, &[1, 2, 3][..])
        );
    }

    /// xorshift64*: a tiny deterministic PRNG, so the fuzz cases are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn decoder_never_panics_on_random_bytes() {
        const OPCODES: [u32; 10] = [
            CUSE_INIT,
            FUSE_OPEN,
            FUSE_READ,
            FUSE_WRITE,
            FUSE_RELEASE,
            FUSE_IOCTL,
            FUSE_POLL,
            FUSE_INTERRUPT,
            0,
            u32::MAX,
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut ok, mut errors) = (0u32, 0u32);
        for case in 0..100_000 {
            let n = rng.below(160) as usize;
            let mut buf: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            // Most cases get a plausible header so that the body decoders are reached too.
            if n >= IN_HEADER_LEN && case % 8 != 0 {
                let len = if case % 16 == 1 {
                    rng.next() as u32
                } else {
                    n as u32
                };
                buf[0..4].copy_from_slice(&len.to_le_bytes());
                let opcode = OPCODES[rng.below(OPCODES.len() as u64) as usize];
                buf[4..8].copy_from_slice(&opcode.to_le_bytes());
                let extlen = if case % 4 == 0 {
                    rng.below(24) as u16
                } else {
                    0
                };
                buf[36..38].copy_from_slice(&extlen.to_le_bytes());
                if opcode == FUSE_WRITE && n >= 80 && case % 3 == 0 {
                    buf[56..60].copy_from_slice(&((n - 80) as u32).to_le_bytes());
                }
            }
            match decode(&buf) {
                Ok(req) => {
                    ok += 1;
                    assert_eq!(req.header.len as usize, buf.len());
                    if let Operation::Write(w, data) = req.op {
                        assert_eq!(w.size as usize, data.len());
                    }
                }
                Err(e) => {
                    errors += 1;
                    assert_eq!(e.unique.is_some(), buf.len() >= IN_HEADER_LEN);
                    let _ = e.to_string();
                }
            }
        }
        // Both paths were exercised substantially.
        assert!(ok > 10_000, "ok={ok}");
        assert!(errors > 10_000, "errors={errors}");
    }
}
