//! The lab's ioctl interface (`deferred.h`), defined once for the modules and the clients.
//!
//! The numbers are built with the runtime's `_IO`/`_IOW` ([`crate::kernel::ioctl`]). The argument
//! is a plain value, never a pointer.

use std::mem::size_of;

use crate::kernel::ioctl::{_IO, _IOW};

/// The lab's ioctl type character.
pub const MY_IOCTL_TYPE: u8 = b'k';

/// `_IOW('k', 1, unsigned long)`: arm the timer in `arg` seconds.
pub const MY_IOCTL_TIMER_SET: u32 = _IOW(MY_IOCTL_TYPE, 1, size_of::<libc::c_ulong>());
/// `_IO('k', 2)`: cancel the timer.
pub const MY_IOCTL_TIMER_CANCEL: u32 = _IO(MY_IOCTL_TYPE, 2);
/// `_IOW('k', 3, unsigned long)`: allocate memory (sleep in a work item) after `arg` seconds.
pub const MY_IOCTL_TIMER_ALLOC: u32 = _IOW(MY_IOCTL_TYPE, 3, size_of::<libc::c_ulong>());
/// `_IO('k', 4)`: monitor the pid in `arg`.
pub const MY_IOCTL_TIMER_MON: u32 = _IO(MY_IOCTL_TYPE, 4);

/// `MY_IOCTL_TIMER_SET` as a 32-bit (`-m32`) program computes it: `unsigned long` is 4 bytes.
pub const MY_IOCTL_TIMER_SET_32: u32 = _IOW(MY_IOCTL_TYPE, 1, 4);
/// `MY_IOCTL_TIMER_ALLOC` as a 32-bit program computes it.
pub const MY_IOCTL_TIMER_ALLOC_32: u32 = _IOW(MY_IOCTL_TYPE, 3, 4);

/// One of the lab's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `MY_IOCTL_TIMER_SET`
    Set,
    /// `MY_IOCTL_TIMER_CANCEL`
    Cancel,
    /// `MY_IOCTL_TIMER_ALLOC`
    Alloc,
    /// `MY_IOCTL_TIMER_MON`
    Mon,
}

impl Command {
    /// The command of an ioctl number, from a 64-bit or a 32-bit caller.
    pub fn from_cmd(cmd: u32) -> Option<Command> {
        match cmd {
            MY_IOCTL_TIMER_SET | MY_IOCTL_TIMER_SET_32 => Some(Command::Set),
            MY_IOCTL_TIMER_CANCEL => Some(Command::Cancel),
            MY_IOCTL_TIMER_ALLOC | MY_IOCTL_TIMER_ALLOC_32 => Some(Command::Alloc),
            MY_IOCTL_TIMER_MON => Some(Command::Mon),
            _ => None,
        }
    }

    /// The 64-bit number.
    pub fn cmd(self) -> u32 {
        match self {
            Command::Set => MY_IOCTL_TIMER_SET,
            Command::Cancel => MY_IOCTL_TIMER_CANCEL,
            Command::Alloc => MY_IOCTL_TIMER_ALLOC,
            Command::Mon => MY_IOCTL_TIMER_MON,
        }
    }

    /// The C name (`MY_IOCTL_TIMER_SET`).
    pub fn c_name(self) -> &'static str {
        match self {
            Command::Set => "MY_IOCTL_TIMER_SET",
            Command::Cancel => "MY_IOCTL_TIMER_CANCEL",
            Command::Alloc => "MY_IOCTL_TIMER_ALLOC",
            Command::Mon => "MY_IOCTL_TIMER_MON",
        }
    }

    /// A command by name: its C name, with or without `MY_IOCTL_TIMER_`, or the client's
    /// subcommand name (`set`, `cancel`, `alloc`, `mon`/`monitor`), any case.
    pub fn from_name(name: &str) -> Option<Command> {
        let n = name.to_ascii_uppercase();
        let n = n.strip_prefix("MY_IOCTL_TIMER_").unwrap_or(&n);
        match n {
            "SET" => Some(Command::Set),
            "CANCEL" => Some(Command::Cancel),
            "ALLOC" => Some(Command::Alloc),
            "MON" | "MONITOR" => Some(Command::Mon),
            _ => None,
        }
    }
}

/// `ioctl_command_to_string()`: the name the module logs for a command number.
pub fn ioctl_command_to_string(cmd: u32) -> &'static str {
    match Command::from_cmd(cmd) {
        Some(Command::Set) => "Set timer",
        Some(Command::Cancel) => "Cancel timer",
        Some(Command::Alloc) => "Allocate memory",
        Some(Command::Mon) => "Monitor pid",
        None => "Unknown command",
    }
}

/// Parses an ioctl number: `0x...` hex, decimal, or a command name ([`Command::from_name`]).
pub fn parse_cmd(s: &str) -> Option<u32> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).ok();
    }
    if t.starts_with(|c: char| c.is_ascii_digit()) {
        return t.parse().ok();
    }
    Command::from_name(t).map(Command::cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_lab_header() {
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(MY_IOCTL_TIMER_SET, 0x4008_6b01);
            assert_eq!(MY_IOCTL_TIMER_ALLOC, 0x4008_6b03);
        }
        assert_eq!(MY_IOCTL_TIMER_CANCEL, 0x0000_6b02);
        assert_eq!(MY_IOCTL_TIMER_MON, 0x0000_6b04);
        assert_eq!(MY_IOCTL_TIMER_SET_32, 0x4004_6b01);
        assert_eq!(MY_IOCTL_TIMER_ALLOC_32, 0x4004_6b03);
    }

    #[test]
    fn names_and_parsing() {
        assert_eq!(ioctl_command_to_string(0x4008_6b01), "Set timer");
        assert_eq!(ioctl_command_to_string(0x4004_6b01), "Set timer");
        assert_eq!(ioctl_command_to_string(0x6b02), "Cancel timer");
        assert_eq!(ioctl_command_to_string(0x4004_6b03), "Allocate memory");
        assert_eq!(ioctl_command_to_string(0x6b04), "Monitor pid");
        assert_eq!(ioctl_command_to_string(0x6b05), "Unknown command");
        assert_eq!(parse_cmd("0x6b02"), Some(0x6b02));
        assert_eq!(parse_cmd("27394"), Some(0x6b02));
        assert_eq!(parse_cmd("set"), Some(MY_IOCTL_TIMER_SET));
        assert_eq!(parse_cmd("MY_IOCTL_TIMER_MON"), Some(MY_IOCTL_TIMER_MON));
        assert_eq!(parse_cmd("monitor"), Some(MY_IOCTL_TIMER_MON));
        assert_eq!(parse_cmd("0xffffffff"), Some(u32::MAX));
        assert_eq!(parse_cmd("0x1ffffffff"), None);
        assert_eq!(parse_cmd("bogus"), None);
        for c in [Command::Set, Command::Cancel, Command::Alloc, Command::Mon] {
            assert_eq!(Command::from_cmd(c.cmd()), Some(c));
            assert_eq!(Command::from_name(c.c_name()), Some(c));
        }
    }
}
