//! Our transport alone: the daemon's CUSE session and reader pool serving a device whose every
//! ioctl is answered 0 at once (no module, no log line), as the floors and libfuse's reference
//! answer. Beside the daemon in the same boot, it splits a request's cost into the transport's
//! and the lab module's (`scripts/bench --only ioctl`; in `bench/vm-lone.sh`, the server
//! `bare:cuse_null bare`: not `null`, whose node `/dev/null` exists).
//!
//!     cuse_null [NAME]        # serves /dev/NAME (default cuse_null), dynamic major, until killed
//!
//! Built by `cargo build --release --example cuse_null`; the daemon's defaults otherwise
//! (`--threads`, `--spin-us`, `--reader-nice`).

use std::sync::Arc;

use deferred::cuse::{Config, Cuse};
use deferred::kernel::fs::{File, FileOperations};

/// Every ioctl answered 0; the rest as a driver that leaves them NULL.
struct Null;

impl FileOperations for Null {
    fn unlocked_ioctl(
        &self,
        _file: &File,
        _cmd: u32,
        _arg: u64,
    ) -> deferred::kernel::error::Result<i32> {
        Ok(0)
    }
}

fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "cuse_null".into());
    deferred::logging::init(0);
    deferred::kernel::start().expect("runtime start");
    let config = Config {
        name,
        major: 0,
        ..Config::default()
    };
    let _dev = match Cuse::open(config).and_then(|c| c.start(Arc::new(Null))) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("cuse_null: {e}");
            std::process::exit(1);
        }
    };
    // Until killed: the node goes with the process.
    loop {
        std::thread::park();
    }
}
