//! Thin wrappers over Linux system calls that both the runtime ([`crate::kernel`]) and the
//! transport ([`crate::cuse`]) use; neither calls the other's private helpers.

pub mod futex;
pub mod io;
pub mod prio;
pub mod signal;
