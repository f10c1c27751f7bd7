//! Linux deferred work in userspace, behind a real `/dev/deferred` served through CUSE.
//!
//! - [`kernel`]: the deferred-work runtime, one file per kernel facility, with the kernel's names
//!   and rules (softirqs run in a real signal handler, work items on named worker threads, ...).
//! - [`cuse`]: the transport, our own loop over `/dev/cuse`; it calls a [`kernel::fs::FileOperations`].
//! - [`module`]: what a module is (init, exit, parameters, file operations); [`daemon`]: the
//!   daemon built from a list of modules (the `deferred` binary is one).
//! - [`tracefile`]: `--trace FILE`, the trace events written as ftrace's text.
//! - [`modules`]: the lab's modules written on the runtime: `timer` (1-2), `deferred` (3-4-5-7),
//!   `kthread` (6).
//! - `sys` (crate-private): the system-call wrappers both the runtime and the transport use (the
//!   futex).

#[cfg(not(loom))]
pub mod cuse;
#[cfg(not(loom))]
pub mod daemon;
#[cfg(not(loom))]
pub mod kernel;
#[cfg(not(loom))]
pub mod logging;
#[cfg(not(loom))]
pub mod module;
#[cfg(not(loom))]
pub mod modules;
#[cfg(not(loom))]
pub(crate) mod sys;
#[cfg(not(loom))]
pub mod tracefile;

/// Under `RUSTFLAGS="--cfg loom"` the crate is only the lock-free cores (`kernel::sync`), built
/// on loom's atomics: their unit tests are the loom models (`cargo test --lib`, see README).
#[cfg(loom)]
pub mod kernel {
    pub mod sync;
}
