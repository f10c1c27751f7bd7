//! The lab's modules, written on the runtime.
//!
//! The daemon sees a module only through [`Module`] and [`load`]: loading is `insmod` (the module's
//! init runs and prints its lines), [`Module::exit`] is `rmmod`. A module with a character device
//! hands out its [`FileOperations`]; the daemon serves them through CUSE *after* init and removes
//! the device *before* exit.

use std::sync::Arc;

use crate::kernel::fs::FileOperations;

pub mod abi;
pub mod deferred;
pub mod kthread;
pub mod timer;

/// A loaded module.
pub trait Module: Send {
    /// The module's name (`deferred`, `timer`, `kthread`).
    fn name(&self) -> &'static str;
    /// The file operations of its device, if it has one.
    fn file_operations(&self) -> Option<Arc<dyn FileOperations>>;
    /// Unloads it (`module_exit`): called once the device, if any, is gone.
    fn exit(self: Box<Self>);
}

/// What the registry knows of a module before loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Its name.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Whether it registers a character device (served through CUSE).
    pub has_device: bool,
}

/// Every module, the default first.
pub const MODULES: &[ModuleInfo] = &[
    ModuleInfo {
        name: "deferred",
        about: "exercises 3-4-5-7: /dev/deferred, timer set/cancel, alloc work, pid monitor",
        has_device: true,
    },
    ModuleInfo {
        name: "timer",
        about: "exercises 1-2: a timer that prints every second",
        has_device: false,
    },
    ModuleInfo {
        name: "kthread",
        about: "exercise 6: a kernel thread `mykthread0`",
        has_device: false,
    },
];

/// The registry entry of `name`.
pub fn info(name: &str) -> Option<&'static ModuleInfo> {
    MODULES.iter().find(|m| m.name == name)
}

/// Loading failed.
#[derive(Debug)]
pub enum LoadError {
    /// No module of that name.
    Unknown(String),
    /// The module's init failed.
    Init(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unknown(name) => {
                let names: Vec<_> = MODULES.iter().map(|m| m.name).collect();
                write!(f, "no module `{name}` (modules: {})", names.join(", "))
            }
            LoadError::Init(why) => write!(f, "module init failed: {why}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Module parameters (`insmod mod.ko param=...`), from the daemon's command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Params {
    /// `timer`: exercise 1 (one message) instead of exercise 2 (one a second).
    pub once: bool,
    /// `deferred`: exercise 4 (`alloc_io()` right in the timer) instead of exercise 5.
    pub alloc_io_direct: bool,
}

/// Loads module `name` (its init runs now: the runtime must be started, [`crate::kernel::start`]).
pub fn load(name: &str, params: Params) -> Result<Box<dyn Module>, LoadError> {
    let info = info(name).ok_or_else(|| LoadError::Unknown(name.into()))?;
    Ok(match info.name {
        "deferred" => Box::new(
            deferred::DeferredModule::load(deferred::Options {
                alloc_io_direct: params.alloc_io_direct,
            })
            .map_err(|e| LoadError::Init(e.to_string()))?,
        ),
        "timer" => Box::new(timer::TimerModule::load(params.once)),
        "kthread" => {
            Box::new(kthread::KthreadModule::load().map_err(|e| LoadError::Init(e.to_string()))?)
        }
        other => unreachable!("module `{other}` is in the registry but not loadable"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry() {
        crate::kernel::start().unwrap();
        assert_eq!(MODULES[0].name, "deferred");
        for m in MODULES {
            let loaded = load(m.name, Params::default()).unwrap();
            assert_eq!(loaded.name(), m.name);
            assert_eq!(loaded.file_operations().is_some(), m.has_device);
            loaded.exit();
        }
        let e = load("nope", Params::default()).err().unwrap().to_string();
        assert_eq!(e, "no module `nope` (modules: deferred, timer, kthread)");
    }
}
