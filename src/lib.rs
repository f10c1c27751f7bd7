//! Linux deferred work in userspace, behind a real `/dev/deferred` served through CUSE.
//!
//! - [`kernel`]: the deferred-work runtime, one file per kernel facility, with the kernel's names
//!   and rules (softirqs run in a real signal handler, work items on named worker threads, ...).
//! - [`cuse`]: the transport, our own loop over `/dev/cuse`; it calls a [`kernel::fs::FileOperations`].
//! - [`tracefile`]: `--trace FILE`, the trace events written as ftrace's text.
//! - [`modules`]: the lab's modules written on the runtime: `timer` (1-2), `deferred` (3-4-5-7),
//!   `kthread` (6).
//! - `sys` (crate-private): the system-call wrappers both the runtime and the transport use (the
//!   futex).

pub mod cuse;
pub mod kernel;
pub mod logging;
pub mod modules;
pub(crate) mod sys;
pub mod tracefile;
