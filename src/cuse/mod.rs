//! The CUSE transport: our own loop over `/dev/cuse` (no libfuse).
//!
//! The transport knows nothing of the lab: it serves an `Arc<dyn FileOperations>`
//! ([`crate::kernel::fs`]). Protocol facts it relies on: `/work/shared/notes/cuse-protocol.md`
//! (summarised in each file).
//!
//! - [`abi`]: the wire structs and a decoder that never panics.
//! - [`reply`]: the one-shot [`reply::Reply`], the in-flight table (INTERRUPT).
//! - [`session`]: open, INIT, reader threads, dispatch; [`Cuse`] and [`Device`].
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
pub mod reply;
pub mod session;

pub use session::{CUSE_DEV, Config, Cuse, Device, Error};
