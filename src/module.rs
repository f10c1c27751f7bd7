//! Modules: what a module is to the daemon (`module_init` / `module_exit`, `module_param`,
//! `struct file_operations` with `private_data`).
//!
//! A module is a [`ModuleInfo`]: its name, one line for `--help`, its parameters and its init.
//! Init runs at load (`insmod`: the runtime is started) and returns the loaded [`Module`];
//! [`Module::exit`] is `rmmod`. A module with a character device hands out its
//! [`FileOperations`]: the daemon serves them through CUSE *after* init and removes the device
//! *before* exit, and frees the module after the checks of what exit left held. A device that keeps state per open file implements [`Device`] (its `open`
//! returns the file's `private_data`, which every later call gets back) and hands out
//! [`Device::file_operations`].
//!
//! [`crate::daemon`] builds the whole daemon (command line, runtime, CUSE, signals, exit status)
//! from a list of modules:
//!
//! ```ignore
//! use deferred::module::{Module, ModuleInfo, Param, Params};
//!
//! const COUNT: Param<u32> = Param::new("count", 3, "how many lines to print");
//!
//! pub const MODULE: ModuleInfo = ModuleInfo {
//!     name: "hello",
//!     description: "prints COUNT lines at load",
//!     params: &[&COUNT],
//!     has_device: false,
//!     init: |params| {
//!         for i in 0..params.get(&COUNT) {
//!             deferred::pr_info!("[hello_init] line {i}");
//!         }
//!         Ok(Box::new(Hello))
//!     },
//! };
//!
//! deferred::daemon_main!(&[MODULE]);
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::kernel::error::{Error, Result};
use crate::kernel::fs::{File, FileOperations};

/// A loaded module.
pub trait Module: Send {
    /// The file operations of its device (a module whose [`ModuleInfo::has_device`] is true
    /// returns them; others keep this default).
    fn file_operations(&self) -> Option<Arc<dyn FileOperations>> {
        None
    }
    /// Unloads it (`module_exit`): called once the device, if any, is gone. It releases what the
    /// module holds (stops its timers, flushes its work, puts its task references, tells its
    /// kernel threads to end and waits until they have): [`ModuleInfo::unload`] then reports
    /// what is still held or running, as the kernel's kmemleak and page-fault Oops would, and
    /// only then frees the module.
    fn exit(&mut self);
}

/// A module as the daemon knows it before loading it (`THIS_MODULE` and its metadata).
#[derive(Clone, Copy)]
pub struct ModuleInfo {
    /// Its name: the daemon's first argument selects it (`deferred timer`).
    pub name: &'static str,
    /// One line for `--help` (`MODULE_DESCRIPTION`).
    pub description: &'static str,
    /// Its parameters (`module_param`), listed in `--help`.
    pub params: &'static [&'static dyn ParamSpec],
    /// Whether it registers a character device (served through CUSE).
    pub has_device: bool,
    /// `module_init`: prints its init lines and sets up its state; an error fails the load
    /// (the daemon exits 1, nothing left behind). Process context, the runtime started.
    pub init: fn(&Params) -> Result<Box<dyn Module>>,
}

impl std::fmt::Debug for ModuleInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleInfo")
            .field("name", &self.name)
            .field("has_device", &self.has_device)
            .finish_non_exhaustive()
    }
}

impl ModuleInfo {
    /// Its parameter `name` (dashes and underscores match each other, as the kernel's
    /// `parameq`).
    pub fn param(&self, name: &str) -> Option<&'static dyn ParamSpec> {
        self.params
            .iter()
            .copied()
            .find(|p| parameq(p.name(), name))
    }

    /// Every parameter at its default.
    pub fn defaults(&self) -> Params {
        Params {
            module: self.name,
            values: Vec::new(),
        }
    }

    /// Parameters as `insmod` takes them: `name=value` or a bare `name` (a bool: true).
    /// Errors say which argument is wrong and what this module takes.
    pub fn parse_params<S: AsRef<str>>(&self, args: &[S]) -> core::result::Result<Params, String> {
        let mut params = self.defaults();
        for arg in args {
            let arg = arg.as_ref();
            let (name, value) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (arg, None),
            };
            params.set(self, name, value)?;
        }
        Ok(params)
    }

    /// Loads the module: its init runs now (the runtime must be started, [`crate::kernel::start`]).
    /// Kernel threads it creates from now on are its own (see [`ModuleInfo::unload`]). An init
    /// that fails with a thread of its own still running is reported as an unload would.
    pub fn load(&self, params: &Params) -> Result<Box<dyn Module>> {
        crate::kernel::kthread::module_loaded(self.name);
        let loaded = (self.init)(params);
        if loaded.is_err() {
            crate::kernel::kthread::unload(self.name, || {});
        }
        loaded
    }

    /// Unloads the module (`rmmod`): its [`Module::exit`], then what the kernel would find when
    /// it frees the module's memory: a kernel thread of the module still running its code is
    /// an Oops ([`crate::kernel::kthread`]'s unload: the exit must wait for its threads; those
    /// that returned are reaped), a task reference still held a leak
    /// ([`crate::kernel::task::check_leaks`]); then the module is freed. Reports taint the
    /// kernel. Process context.
    pub fn unload(&self, mut module: Box<dyn Module>) {
        crate::kernel::kthread::unload(self.name, || module.exit());
        crate::kernel::task::check_leaks(self.name);
        drop(module);
    }

    /// `--help`'s list of its parameters, one a line: `name=TYPE  description (default: X)`.
    pub fn params_help(&self) -> Vec<String> {
        self.params
            .iter()
            .map(|p| {
                format!(
                    "{}={}  {} (default: {})",
                    p.name(),
                    p.type_name().to_uppercase(),
                    p.description(),
                    p.default_value()
                )
            })
            .collect()
    }
}

/// `parameq`: parameter names compare with `-` and `_` alike.
pub fn parameq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (x == b'-' || x == b'_') && (y == b'-' || y == b'_'))
}

/// The parameters a module was loaded with (`insmod mod.ko name=value ...`).
#[derive(Debug, Clone, Default)]
pub struct Params {
    module: &'static str,
    /// Checked values, by the parameter's declared name.
    values: Vec<(&'static str, String)>,
}

impl Params {
    /// The value of `param`: the one given at load, else its default.
    pub fn get<T: ParamValue>(&self, param: &Param<T>) -> T {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == param.name)
            .and_then(|(_, v)| T::parse(v).ok())
            .unwrap_or(param.default)
    }

    /// Sets parameter `name` of `module` (`value` None: a bare `name`, true for a bool).
    pub fn set(
        &mut self,
        module: &ModuleInfo,
        name: &str,
        value: Option<&str>,
    ) -> core::result::Result<(), String> {
        self.module = module.name;
        let Some(p) = module.param(name) else {
            let known: Vec<_> = module.params.iter().map(|p| p.name()).collect();
            let known = if known.is_empty() {
                "it takes none".to_string()
            } else {
                format!("it takes: {}", known.join(", "))
            };
            return Err(format!(
                "module `{}` has no parameter `{name}` ({known})",
                module.name
            ));
        };
        let value = match value {
            Some(v) => v,
            None if p.type_name() == "bool" => "1",
            None => {
                return Err(format!(
                    "parameter `{}` of `{}` needs a value: {}={}",
                    p.name(),
                    module.name,
                    p.name(),
                    p.type_name().to_uppercase()
                ));
            }
        };
        p.check(value)
            .map_err(|why| format!("`{}={value}`: {why}", p.name()))?;
        self.values.push((p.name(), value.to_string()));
        Ok(())
    }

    /// The module these parameters were parsed for (empty for [`Params::default`]).
    pub fn module(&self) -> &'static str {
        self.module
    }
}

/// A value type a parameter can have (`module_param(name, type, perm)`'s type).
pub trait ParamValue: Copy + Send + Sync + 'static {
    /// The kernel's name of the type (`bool`, `int`, `uint`, `long`, `ulong`, `charp`).
    const TYPE: &'static str;
    /// Parses a value as the kernel's `param_set_*` would.
    fn parse(s: &str) -> core::result::Result<Self, String>;
    /// Shows a value as `/sys/module/*/parameters/*` would.
    fn show(&self) -> String;
}

impl ParamValue for bool {
    const TYPE: &'static str = "bool";
    fn parse(s: &str) -> core::result::Result<bool, String> {
        // kstrtobool
        match s {
            "1" | "y" | "Y" | "on" => Ok(true),
            "0" | "n" | "N" | "off" => Ok(false),
            _ => Err("not a bool (1/y/on or 0/n/off)".into()),
        }
    }
    fn show(&self) -> String {
        if *self { "Y" } else { "N" }.into()
    }
}

/// Integers as `kstrtoint(s, 0, ...)`: decimal, `0x` hex or `0` octal, optional sign.
fn parse_int(s: &str) -> Option<i128> {
    let (neg, t) = match s.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i128::from_str_radix(h, 16).ok()?
    } else if t.len() > 1 && t.starts_with('0') {
        i128::from_str_radix(&t[1..], 8).ok()?
    } else {
        t.parse::<i128>().ok()?
    };
    Some(if neg { -v } else { v })
}

macro_rules! int_param {
    ($t:ty, $name:literal) => {
        impl ParamValue for $t {
            const TYPE: &'static str = $name;
            fn parse(s: &str) -> core::result::Result<$t, String> {
                parse_int(s)
                    .and_then(|v| <$t>::try_from(v).ok())
                    .ok_or_else(|| {
                        format!(
                            "not an {} ({} to {}; 0x for hex)",
                            $name,
                            <$t>::MIN,
                            <$t>::MAX
                        )
                    })
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    };
}
int_param!(i32, "int");
int_param!(u32, "uint");
int_param!(i64, "long");
int_param!(u64, "ulong");

impl ParamValue for &'static str {
    const TYPE: &'static str = "charp";
    fn parse(s: &str) -> core::result::Result<&'static str, String> {
        // Parameters live as long as the module: leaked once per load, as the kernel keeps them.
        Ok(Box::leak(s.to_string().into_boxed_str()))
    }
    fn show(&self) -> String {
        (*self).to_string()
    }
}

/// `module_param(name, type, 0)` + `MODULE_PARM_DESC(name, description)`: a typed parameter
/// with a default. Declare it as a `const` and list `&NAME` in [`ModuleInfo::params`]; the
/// module's init reads it with [`Params::get`].
#[derive(Debug, Clone, Copy)]
pub struct Param<T: ParamValue> {
    /// Its name (`name=value` on the command line, or `--name`).
    pub name: &'static str,
    /// Its value when not given.
    pub default: T,
    /// One line for `--help`.
    pub description: &'static str,
}

impl<T: ParamValue> Param<T> {
    /// A parameter `name` of type `T`.
    pub const fn new(name: &'static str, default: T, description: &'static str) -> Self {
        Param {
            name,
            default,
            description,
        }
    }
}

/// A parameter, whatever its type (what the daemon's command line needs to know of it).
pub trait ParamSpec: Sync {
    /// Its name.
    fn name(&self) -> &'static str;
    /// The kernel's name of its type (`bool`, `int`, ...).
    fn type_name(&self) -> &'static str;
    /// One line for `--help`.
    fn description(&self) -> &'static str;
    /// Its default, shown as the kernel shows the value.
    fn default_value(&self) -> String;
    /// Whether `value` parses; the error says why not.
    fn check(&self, value: &str) -> core::result::Result<(), String>;
}

impl<T: ParamValue> ParamSpec for Param<T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn type_name(&self) -> &'static str {
        T::TYPE
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn default_value(&self) -> String {
        self.default.show()
    }
    fn check(&self, value: &str) -> core::result::Result<(), String> {
        T::parse(value).map(drop)
    }
}

/// A character device that keeps state per open file (`file->private_data`).
///
/// `open` returns the file's private data; the daemon keeps it with the open file and passes it
/// to every later call on that file, and back to `release` at the last close. Defaults are a
/// NULL slot of `struct file_operations` as the lab's module would see it: `read`/`write`
/// answer `EINVAL`, an ioctl `ENOTTY`. All run in process context (see [`FileOperations`]).
pub trait Device: Send + Sync + 'static {
    /// Per-open state (`()` for none).
    type Private: Send + Sync + 'static;

    /// `open(2)`: the new file's private data, or the errno refusing the open.
    fn open(&self, file: &File) -> Result<Self::Private>;

    /// The last close: gets the private data back.
    fn release(&self, _file: &File, _private: Self::Private) {}

    /// `ioctl(2)` (64- and 32-bit callers alike; see [`FileOperations::unlocked_ioctl`]).
    fn ioctl(&self, _file: &File, _private: &Self::Private, _cmd: u32, _arg: u64) -> Result<i32> {
        Err(Error::ENOTTY)
    }

    /// `read(2)` of up to `size` bytes at `offset`.
    fn read(
        &self,
        _file: &File,
        _private: &Self::Private,
        _size: u32,
        _offset: u64,
    ) -> Result<Vec<u8>> {
        Err(Error::EINVAL)
    }

    /// `write(2)` of `data` at `offset`; returns the bytes taken.
    fn write(
        &self,
        _file: &File,
        _private: &Self::Private,
        _data: &[u8],
        _offset: u64,
    ) -> Result<u32> {
        Err(Error::EINVAL)
    }

    /// The file operations serving this device, private data kept per open file.
    fn file_operations(self: Arc<Self>) -> Arc<dyn FileOperations>
    where
        Self: Sized,
    {
        Arc::new(PerOpen {
            dev: self,
            files: RwLock::new(HashMap::new()),
        })
    }
}

/// A [`Device`]'s file operations: the private data of each open file, by its handle.
struct PerOpen<D: Device> {
    dev: Arc<D>,
    files: RwLock<HashMap<u64, Arc<D::Private>>>,
}

impl<D: Device> PerOpen<D> {
    fn private(&self, file: &File) -> Result<Arc<D::Private>> {
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        // A call on a handle that was never opened: the transport's bug; refuse it.
        files.get(&file.fh).cloned().ok_or(Error::EBADF)
    }
}

impl<D: Device> FileOperations for PerOpen<D> {
    fn open(&self, file: &File) -> Result<()> {
        let private = self.dev.open(file)?;
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        files.insert(file.fh, Arc::new(private));
        Ok(())
    }

    fn release(&self, file: &File) {
        let private = {
            let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
            files.remove(&file.fh)
        };
        // Calls still running on this file hold their own reference: the last one hands it back.
        if let Some(p) = private.and_then(|p| Arc::try_unwrap(p).ok()) {
            self.dev.release(file, p);
        }
    }

    fn unlocked_ioctl(&self, file: &File, cmd: u32, arg: u64) -> Result<i32> {
        self.dev.ioctl(file, &*self.private(file)?, cmd, arg)
    }

    fn read(&self, file: &File, size: u32, offset: u64) -> Result<Vec<u8>> {
        self.dev.read(file, &*self.private(file)?, size, offset)
    }

    fn write(&self, file: &File, data: &[u8], offset: u64) -> Result<u32> {
        self.dev.write(file, &*self.private(file)?, data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONCE: Param<bool> = Param::new("once", false, "one message");
    const COUNT: Param<u32> = Param::new("count_max", 3, "how many");

    struct Nothing;
    impl Module for Nothing {
        fn exit(&mut self) {}
    }

    const M: ModuleInfo = ModuleInfo {
        name: "m",
        description: "a test module",
        params: &[&ONCE, &COUNT],
        has_device: false,
        init: |_| Ok(Box::new(Nothing)),
    };

    #[test]
    fn params_as_insmod_takes_them() {
        let p = M.parse_params(&["once", "count-max=0x10"]).unwrap();
        assert!(p.get(&ONCE));
        assert_eq!(p.get(&COUNT), 16);
        let p = M.parse_params(&["once=n"]).unwrap();
        assert!(!p.get(&ONCE));
        assert_eq!(p.get(&COUNT), 3);
        assert_eq!(
            M.parse_params(&["nope=1"]).unwrap_err(),
            "module `m` has no parameter `nope` (it takes: once, count_max)"
        );
        assert_eq!(
            M.parse_params(&["count_max=-1"]).unwrap_err(),
            "`count_max=-1`: not an uint (0 to 4294967295; 0x for hex)"
        );
        assert!(
            M.parse_params(&["count_max"])
                .unwrap_err()
                .contains("needs a value")
        );
        assert_eq!(
            M.params_help(),
            [
                "once=BOOL  one message (default: N)",
                "count_max=UINT  how many (default: 3)"
            ]
        );
    }

    struct Counter;
    impl Device for Counter {
        type Private = std::sync::atomic::AtomicU32;
        fn open(&self, file: &File) -> Result<Self::Private> {
            if file.flags == 1 {
                return Err(Error::EACCES);
            }
            Ok(Default::default())
        }
        fn ioctl(&self, _: &File, n: &Self::Private, _: u32, _: u64) -> Result<i32> {
            Ok(n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as i32 + 1)
        }
    }

    #[test]
    fn private_data_is_per_open_file() {
        let ops = Arc::new(Counter).file_operations();
        let f = |fh| File {
            fh,
            flags: 0,
            caller_tid: 0,
        };
        ops.open(&f(1)).unwrap();
        ops.open(&f(2)).unwrap();
        assert_eq!(ops.unlocked_ioctl(&f(1), 0, 0), Ok(1));
        assert_eq!(ops.unlocked_ioctl(&f(1), 0, 0), Ok(2));
        assert_eq!(ops.unlocked_ioctl(&f(2), 0, 0), Ok(1));
        ops.release(&f(1));
        assert_eq!(ops.unlocked_ioctl(&f(1), 0, 0), Err(Error::EBADF));
        assert_eq!(ops.unlocked_ioctl(&f(2), 0, 0), Ok(2));
        let refused = File { flags: 1, ..f(3) };
        assert_eq!(ops.open(&refused), Err(Error::EACCES));
        assert_eq!(ops.read(&f(2), 1, 0), Err(Error::EINVAL));
    }
}
