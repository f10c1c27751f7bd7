//! The lab's modules, written on the runtime: each is a [`ModuleInfo`] (`MODULE` in its file),
//! and [`MODULES`] is the list the `deferred` binary serves ([`crate::daemon`]).
//!
//! They are the answer key of the lab: the `TODO N` comments mark the lab's steps, and
//! `scripts/lab new DIR` makes the skeletons a learner starts from by removing the lines each
//! marks (see `scripts/lab --help`).

pub mod abi;
pub mod deferred;
pub mod kthread;
pub mod timer;

pub use crate::module::{Module, ModuleInfo, Params};

/// Every module of the lab, the default first.
pub const MODULES: &[ModuleInfo] = &[deferred::MODULE, timer::MODULE, kthread::MODULE];

/// The module named `name`.
pub fn find(name: &str) -> Option<&'static ModuleInfo> {
    MODULES.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module in the list loads with its defaults, has a device exactly when it says so,
    /// and unloads.
    #[test]
    fn every_module_loads_and_unloads() {
        crate::kernel::start().unwrap();
        for m in MODULES {
            assert_eq!(find(m.name).map(|f| f.name), Some(m.name));
            let mut loaded = m.load(&m.defaults()).unwrap();
            assert_eq!(
                loaded.file_operations().is_some(),
                m.has_device,
                "{}",
                m.name
            );
            loaded.exit();
        }
        assert!(find("nope").is_none());
    }
}
