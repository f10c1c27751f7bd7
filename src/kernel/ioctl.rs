//! ioctl numbers, built as the kernel's `_IO`/`_IOR`/`_IOW`/`_IOWR` macros build them
//! (`include/uapi/asm-generic/ioctl.h`): `dir << 30 | size << 16 | type << 8 | nr`, with a
//! 14-bit size. For a module's own command numbers (`_IOW('k', 1, unsigned long)`).
//!
//! ```
//! use deferred::kernel::ioctl::{_IO, _IOW};
//! assert_eq!(_IO(b'k', 2), 0x6b02);
//! assert_eq!(_IOW(b'k', 1, 8), 0x4008_6b01);
//! ```

#![allow(non_snake_case)]

/// `_IOC_NONE`: no data transferred.
pub const _IOC_NONE: u32 = 0;
/// `_IOC_WRITE`: userspace writes, the driver reads.
pub const _IOC_WRITE: u32 = 1;
/// `_IOC_READ`: the driver writes, userspace reads.
pub const _IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub const fn _IOC(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32 & 0x3fff) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `_IO(type, nr)`: a command without an argument structure.
pub const fn _IO(ty: u8, nr: u8) -> u32 {
    _IOC(_IOC_NONE, ty, nr, 0)
}

/// `_IOR(type, nr, T)` with `size == size_of::<T>()`.
pub const fn _IOR(ty: u8, nr: u8, size: usize) -> u32 {
    _IOC(_IOC_READ, ty, nr, size)
}

/// `_IOW(type, nr, T)` with `size == size_of::<T>()`.
pub const fn _IOW(ty: u8, nr: u8, size: usize) -> u32 {
    _IOC(_IOC_WRITE, ty, nr, size)
}

/// `_IOWR(type, nr, T)` with `size == size_of::<T>()`.
pub const fn _IOWR(ty: u8, nr: u8, size: usize) -> u32 {
    _IOC(_IOC_READ | _IOC_WRITE, ty, nr, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_where_the_kernel_puts_them() {
        assert_eq!(_IOR(b'k', 7, 4), 0x8004_6b07);
        assert_eq!(_IOWR(b'k', 7, 4), 0xc004_6b07);
        assert_eq!(_IOW(0xff, 0xff, 0x3fff), 0x7fff_ffff);
        assert_eq!(_IOW(b'k', 1, 0x4000), 0x4000_6b01, "the size is 14 bits");
    }
}
