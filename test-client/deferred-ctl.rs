//! `deferred-ctl`: send the lab's ioctls to `/dev/deferred` (or any node), saying what it does.
//!
//! Failure: one line, e.g.
//! `deferred-ctl: ioctl Monitor pid on /dev/deferred: No such process (ESRCH)`, exit 1.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nix::errno::Errno;

use deferred::modules::abi::{Command, ioctl_command_to_string, parse_cmd};

/// Send the lab's ioctls to a deferred device.
#[derive(Parser, Debug)]
#[command(name = "deferred-ctl", version)]
struct Args {
    /// The device node.
    #[arg(long, default_value = "/dev/deferred", global = true)]
    device: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Arm the timer in SECONDS (MY_IOCTL_TIMER_SET).
    Set {
        /// Seconds.
        seconds: u64,
    },
    /// Cancel the timer (MY_IOCTL_TIMER_CANCEL).
    Cancel,
    /// Sleep in a work item after SECONDS (MY_IOCTL_TIMER_ALLOC).
    Alloc {
        /// Seconds.
        seconds: u64,
    },
    /// Report when PID terminates (MY_IOCTL_TIMER_MON).
    Monitor {
        /// The process to watch.
        pid: u64,
    },
    /// Any ioctl: CMD is 0x.. hex, decimal, or a name (set, cancel, alloc, mon,
    /// MY_IOCTL_TIMER_SET, ...); ARG is the raw argument (default 0).
    Ioctl {
        /// The command number or name.
        #[arg(value_parser = parse_cmd_arg)]
        cmd: u32,
        /// The argument, decimal or 0x.. hex.
        #[arg(value_parser = parse_u64, default_value = "0")]
        arg: u64,
    },
}

fn parse_cmd_arg(s: &str) -> Result<u32, String> {
    parse_cmd(s).ok_or_else(|| {
        format!("`{s}` is not an ioctl number (0x.., decimal) or name (set, cancel, alloc, mon)")
    })
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("`{s}` is not a number"))
}

/// The C library's text for `errno`, as `perror` prints it ("No such process").
fn strerror(errno: Errno) -> String {
    let s = std::io::Error::from_raw_os_error(errno as i32).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (cmd, arg) = match args.action {
        Action::Set { seconds } => (Command::Set.cmd(), seconds),
        Action::Cancel => (Command::Cancel.cmd(), 0),
        Action::Alloc { seconds } => (Command::Alloc.cmd(), seconds),
        Action::Monitor { pid } => (Command::Mon.cmd(), pid),
        Action::Ioctl { cmd, arg } => (cmd, arg),
    };
    let name = match Command::from_cmd(cmd) {
        Some(_) => ioctl_command_to_string(cmd).to_string(),
        None => format!("{cmd:#010x}"),
    };
    let dev = args.device.display();
    println!("ioctl {name} (cmd {cmd:#010x}, arg {arg}) on {dev}");
    let file = match std::fs::File::open(&args.device) {
        Ok(f) => f,
        Err(e) => {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
            let hint = match errno {
                Errno::ENOENT => ": is the device loaded? (start `deferred`, or scripts/load)",
                Errno::EACCES => {
                    ": the node is root's (0600) unless the daemon shares it (--mode/--group)"
                }
                _ => "",
            };
            eprintln!(
                "deferred-ctl: open {dev}: {} ({errno:?}){hint}",
                strerror(errno)
            );
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: `file` is open for the call; the lab's commands take a plain value, never a pointer,
    // so the kernel does not dereference `arg` (an unknown command is refused by the driver).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), cmd as libc::c_ulong, arg as libc::c_ulong) };
    if rc < 0 {
        let errno = Errno::last();
        eprintln!(
            "deferred-ctl: ioctl {name} on {dev}: {} ({errno:?})",
            strerror(errno)
        );
        return ExitCode::FAILURE;
    }
    println!("ok: ioctl returned {rc}");
    ExitCode::SUCCESS
}
