//! Why the device could not be served: [`Error`], whose `Display` is one line for the command
//! line saying what is wrong and what to do. A failed system call carries the runtime's errno
//! ([`crate::kernel::error::Error`]), converted in [`sys`].

use super::config::CUSE_DEV;
use crate::kernel::error::Error as KernelError;

/// Why the device could not be served. `Display` is one line saying what to do.
#[derive(Debug)]
pub enum Error {
    /// `/dev/cuse` is missing.
    NoCuse,
    /// `/dev/cuse` refused us (not root).
    Permission,
    /// The name is registered already.
    NameTaken(String),
    /// The device number is registered already.
    DevnumTaken {
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
        /// Who holds the major, from `/proc/devices`.
        holder: Option<String>,
    },
    /// The kernel refused INIT for a reason we could not tell.
    Refused(String),
    /// The node did not appear, or is not ours.
    Node(String),
    /// Bad configuration.
    Config(String),
    /// The kernel said something unexpected.
    Protocol(String),
    /// A system call failed.
    Sys(&'static str, KernelError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoCuse => write!(
                f,
                "{CUSE_DEV} not found: the CUSE module is not loaded (try `modprobe cuse`); \
                 on a kernel without CUSE run it in the VM: scripts/vm -- deferred"
            ),
            Error::Permission => write!(
                f,
                "{CUSE_DEV}: permission denied: serving a device needs root (try sudo)"
            ),
            Error::NameTaken(name) => write!(
                f,
                "the device name `{name}` is taken (another deferred running? \
                 see /sys/class/cuse/{name})"
            ),
            Error::DevnumTaken {
                major,
                minor,
                holder,
            } => {
                write!(f, "the device number {major}:{minor} is taken")?;
                if let Some(h) = holder {
                    write!(f, " (major {major} is `{h}` in /proc/devices)")?;
                }
                write!(
                    f,
                    ": choose another with --major/--minor (--major 0: dynamic)"
                )
            }
            Error::Refused(why) => write!(f, "the kernel refused the device: {why}"),
            Error::Node(why) | Error::Config(why) | Error::Protocol(why) => f.write_str(why),
            Error::Sys(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// `Error::Sys(what, errno)` from any error the runtime's errno type converts from.
pub(super) fn sys<E: Into<KernelError>>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Sys(what, e.into())
}
