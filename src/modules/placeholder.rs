//! TEMPORARY placeholders for the lab's modules, so the transport and the daemon can be tested
//! before the real modules exist. The modules helper replaces this file.
//!
//! `deferred`: logs the lab's lines for open/release/ioctl (without the runtime behind them) plus
//! one `placeholder:` line with the raw `cmd`/`arg`, and answers as the lab module does:
//! SET/CANCEL/ALLOC 0, MON 0 or ESRCH, other ENOTTY, read/write EINVAL.
//! `timer`, `kthread`: print their init and exit lines only.

use std::sync::Arc;

use nix::errno::Errno;

use super::Module;
use super::abi::{Command, ioctl_command_to_string};
use crate::kernel::fs::{File, FileOperations};

/// The placeholder of a module.
pub struct Placeholder {
    name: &'static str,
    fops: Option<Arc<dyn FileOperations>>,
}

impl Placeholder {
    /// "Loads" module `name`: prints its init line.
    pub fn load(name: &'static str) -> Placeholder {
        log::info!(target: "printk", "[{name}_init] Init module");
        let fops: Option<Arc<dyn FileOperations>> =
            (name == "deferred").then(|| Arc::new(DeferredFops) as Arc<dyn FileOperations>);
        Placeholder { name, fops }
    }
}

impl Module for Placeholder {
    fn name(&self) -> &'static str {
        self.name
    }
    fn file_operations(&self) -> Option<Arc<dyn FileOperations>> {
        self.fops.clone()
    }
    fn exit(self: Box<Self>) {
        log::info!(target: "printk", "[{}_exit] Exit module", self.name);
    }
}

/// The placeholder's file operations.
pub struct DeferredFops;

impl FileOperations for DeferredFops {
    fn open(&self, file: &File) -> Result<(), Errno> {
        log::info!(target: "printk", "[deferred_open] Device opened");
        log::info!(target: "placeholder", "open fh={}", file.fh);
        Ok(())
    }

    fn release(&self, file: &File) {
        log::info!(target: "printk", "[deferred_release] Device released");
        log::info!(target: "placeholder", "release fh={}", file.fh);
    }

    fn unlocked_ioctl(&self, file: &File, cmd: u32, arg: u64) -> Result<i32, Errno> {
        log::info!(target: "printk", "[deferred_ioctl] Command: {}", ioctl_command_to_string(cmd));
        log::info!(target: "placeholder", "ioctl fh={} cmd={cmd:#010x} arg={arg}", file.fh);
        match Command::from_cmd(cmd) {
            Some(Command::Set | Command::Cancel | Command::Alloc) => Ok(0),
            Some(Command::Mon) => {
                let pid = i32::try_from(arg)
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or(Errno::ESRCH)?;
                match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
                    Ok(()) | Err(Errno::EPERM) => Ok(0),
                    Err(_) => Err(Errno::ESRCH),
                }
            }
            None => Err(Errno::ENOTTY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::abi::*;

    #[test]
    fn answers_like_the_lab_module() {
        let f = DeferredFops;
        let file = File {
            fh: 1,
            flags: 0,
            caller_tid: 0,
        };
        assert_eq!(f.unlocked_ioctl(&file, MY_IOCTL_TIMER_SET, 3), Ok(0));
        assert_eq!(f.unlocked_ioctl(&file, MY_IOCTL_TIMER_CANCEL, 0), Ok(0));
        assert_eq!(f.unlocked_ioctl(&file, MY_IOCTL_TIMER_ALLOC, 1), Ok(0));
        assert_eq!(f.compat_ioctl(&file, MY_IOCTL_TIMER_SET_32, 3), Ok(0));
        let me = u64::from(std::process::id());
        assert_eq!(f.unlocked_ioctl(&file, MY_IOCTL_TIMER_MON, me), Ok(0));
        assert_eq!(
            f.unlocked_ioctl(&file, MY_IOCTL_TIMER_MON, 0),
            Err(Errno::ESRCH)
        );
        assert_eq!(
            f.unlocked_ioctl(&file, MY_IOCTL_TIMER_MON, 4_194_304 + 1),
            Err(Errno::ESRCH)
        );
        assert_eq!(f.unlocked_ioctl(&file, 0x6b05, 0), Err(Errno::ENOTTY));
        assert_eq!(f.read(&file, 10, 0), Err(Errno::EINVAL));
        assert_eq!(f.write(&file, b"x", 0), Err(Errno::EINVAL));
    }
}
