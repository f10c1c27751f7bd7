//! `deferred`: load one of the lab's modules; its device appears as `/dev/<name>` through CUSE.
//! SIGINT/SIGTERM unloads it (the device disappears) and exits 0.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use deferred::cuse::{Config, Cuse};
use deferred::kernel;
use deferred::modules::{self, MODULES, Params};

/// Counts allocations made in softirq context: there must be none (reported at exit).
#[global_allocator]
static ALLOCATOR: kernel::alloc::CountingAllocator = kernel::alloc::CountingAllocator;

fn modules_help() -> String {
    let mut s = String::from("Modules:\n");
    for m in MODULES {
        s += &format!("  {:<10}{}\n", m.name, m.about);
    }
    s += "\nStart = insmod (the node appears, no mknod); SIGINT/SIGTERM = rmmod (the node goes).";
    s
}

/// Load a lab module in userspace; its device is served through CUSE.
#[derive(Parser, Debug)]
#[command(name = "deferred", version, after_help = modules_help())]
struct Args {
    /// The module to load.
    #[arg(default_value = "deferred", value_parser = MODULES.iter().map(|m| m.name).collect::<Vec<_>>())]
    module: String,
    /// Device name: the node is /dev/NAME.
    #[arg(long, default_value = "deferred")]
    name: String,
    /// Device major (0: allocate one dynamically).
    #[arg(long, default_value_t = 42)]
    major: u32,
    /// Device minor.
    #[arg(long, default_value_t = 0)]
    minor: u32,
    /// Mode of the node, octal (default: as devtmpfs makes it, 0600).
    #[arg(long, value_parser = parse_octal)]
    mode: Option<u32>,
    /// Group of the node (name or number).
    #[arg(long)]
    group: Option<String>,
    /// Once the device is up, drop root for this user (name or number): its uid, its primary
    /// group (a number without a passwd entry: the same number as gid), no supplementary groups.
    #[arg(long)]
    user: Option<String>,
    /// Most reader threads on /dev/cuse (the pool starts with one and grows while all are busy).
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// After answering the only request in flight, one reader polls for the next this many
    /// microseconds before it sleeps, backing off when none comes (0: never; saves a sleep and
    /// a wake-up per round trip for a client that asks again at once).
    #[arg(long, default_value_t = 200, value_name = "US",
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    spin_us: u64,
    /// Write the daemon's pid to this file once the device is ready (node present, with its
    /// mode and group); removed on exit.
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// timer: exercise 1, one message (default: exercise 2, one a second).
    #[arg(long)]
    once: bool,
    /// deferred: exercise 4, call alloc_io() right in the timer handler (the kernel's BUG
    /// reports) instead of through a work item (exercise 5).
    #[arg(long)]
    alloc_io_direct: bool,
    #[command(flatten)]
    trace: deferred::tracefile::TraceArgs,
    /// More logging (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    let t = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(t, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("`{s}` is not an octal mode (e.g. 0666)")),
    }
}

fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group `{group}`")),
        Err(e) => Err(format!("looking up group `{group}`: {}", e.desc())),
    }
}

/// The uid and gid `--user` names: a user name, or a number (its passwd entry's group if it has
/// one, else the same number).
fn resolve_user(user: &str) -> Result<(u32, u32), String> {
    use nix::unistd::{Uid, User};
    let found = match user.parse::<u32>() {
        Ok(uid) => match User::from_uid(Uid::from_raw(uid)) {
            Ok(u) => return Ok((uid, u.map_or(uid, |u| u.gid.as_raw()))),
            Err(e) => Err(e),
        },
        Err(_) => User::from_name(user),
    };
    match found {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => Err(format!(
            "no user `{user}` (give a name from /etc/passwd or a uid)"
        )),
        Err(e) => Err(format!("looking up user `{user}`: {}", e.desc())),
    }
}

/// Drops root for good: no supplementary groups, then gid, then uid (real, effective and saved:
/// glibc applies each call to every thread). Leaving uid 0 clears every capability. Checked:
/// regaining root must fail.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, getegid, geteuid, setgid, setgroups, setuid};
    let fail = |what: &str, e: nix::errno::Errno| format!("--user: {what}: {}", e.desc());
    setgroups(&[]).map_err(|e| fail("setgroups", e))?;
    setgid(Gid::from_raw(gid)).map_err(|e| fail("setgid", e))?;
    setuid(Uid::from_raw(uid)).map_err(|e| fail("setuid", e))?;
    if uid != 0 && (setuid(Uid::from_raw(0)).is_ok() || geteuid().as_raw() != uid) {
        return Err("--user: root could be regained after dropping it".into());
    }
    if getegid().as_raw() != gid {
        return Err("--user: the group did not change".into());
    }
    Ok(())
}

/// Writes the pid file atomically (a temporary file renamed): whoever sees it sees it whole.
fn write_pidfile(path: &std::path::Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

/// Each monitored process holds a pidfd: let thousands be watched (soft limit up to the hard one).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::debug!("cannot raise the descriptor limit to {hard}: {}", e.desc());
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    deferred::logging::init(args.verbose);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deferred: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    // Block the stop signals before any thread exists, so every thread inherits the mask and only
    // the signalfd sees them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop), None)
        .map_err(|e| format!("blocking SIGINT/SIGTERM: {}", e.desc()))?;
    let signals = SignalFd::with_flags(&stop, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {}", e.desc()))?;

    // Tracing starts first (a bad event list fails before anything is set up), so the
    // runtime's threads' creation is recorded; it stops when `_tracer` drops, after unload.
    let _tracer = args.trace.start()?;
    let info = modules::info(&args.module).ok_or("unknown module")?;
    let user = args.user.as_deref().map(resolve_user).transpose()?;
    // Open /dev/cuse before init: a missing CUSE or a second instance fails without side effects.
    let cuse = if info.has_device {
        let config = Config {
            name: args.name.clone(),
            major: args.major,
            minor: args.minor,
            threads: args.threads,
            spin: std::time::Duration::from_micros(args.spin_us),
            mode: args.mode,
            gid: args.group.as_deref().map(resolve_group).transpose()?,
            ..Config::default()
        };
        Some(Cuse::open(config).map_err(|e| e.to_string())?)
    } else {
        None
    };

    // Boot the runtime (printk console, ksoftirqd/0, the timer signal), then insmod.
    raise_fd_limit();
    kernel::start().map_err(|e| format!("starting the runtime: {e}"))?;
    let params = Params {
        once: args.once,
        alloc_io_direct: args.alloc_io_direct,
    };
    let module = match modules::load(&args.module, params) {
        Ok(m) => m,
        Err(e) => {
            kernel::stop();
            return Err(e.to_string());
        }
    };
    let device = match (cuse, module.file_operations()) {
        (Some(cuse), Some(fops)) => match cuse.start(fops) {
            Ok(dev) => Some(dev),
            Err(e) => {
                module.exit();
                kernel::stop();
                return Err(e.to_string());
            }
        },
        _ => None,
    };
    if let Some(dev) = &device {
        let (major, minor) = dev.devnum();
        log::debug!("serving {} ({major}:{minor})", dev.node().display());
    }
    // The device is up (the /dev/cuse descriptor stays open): root is no longer needed.
    if let Some((uid, gid)) = user {
        if let Err(e) = drop_privileges(uid, gid) {
            drop(device);
            module.exit();
            kernel::stop();
            return Err(e);
        }
        log::debug!("running as uid {uid}, gid {gid}");
    }
    if let Some(path) = &args.pidfile
        && let Err(e) = write_pidfile(path)
    {
        log::warn!("cannot write pid file {}: {e}", path.display());
    }

    // Wait for SIGINT/SIGTERM, or for the connection to vanish under us.
    let lost = loop {
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if let Some(dev) = &device {
            fds.push(PollFd::new(dev.gone_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {}", e.desc())),
        }
        if fds.get(1).is_some_and(|f| f.any().unwrap_or(false)) {
            break true;
        }
        if fds[0].any().unwrap_or(false) {
            if let Ok(Some(sig)) = signals.read_signal() {
                log::debug!("signal {}: unloading", sig.ssi_signo);
            }
            break false;
        }
    };

    if let Some(dev) = device {
        dev.stop();
    }
    module.exit();
    kernel::stop();
    let bad = kernel::alloc::softirq_allocations();
    if bad != 0 {
        log::error!("BUG: {bad} allocations were made in softirq context");
    }
    if let Some(path) = &args.pidfile {
        let _ = std::fs::remove_file(path);
    }
    if lost {
        return Err("the connection to /dev/cuse was lost; the device is gone".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse_octal("0666"), Ok(0o666));
        assert_eq!(parse_octal("600"), Ok(0o600));
        assert!(parse_octal("0999").is_err());
        assert!(parse_octal("77777").is_err());
    }

    #[test]
    fn defaults() {
        let a = Args::parse_from(["deferred"]);
        assert_eq!(
            (a.module.as_str(), a.name.as_str()),
            ("deferred", "deferred")
        );
        assert_eq!((a.major, a.minor, a.threads, a.mode), (42, 0, 8, None));
        assert!(Args::try_parse_from(["deferred", "nope"]).is_err());
        let a = Args::parse_from(["deferred", "timer", "--mode", "0666", "-vv"]);
        assert_eq!(
            (a.module.as_str(), a.mode, a.verbose),
            ("timer", Some(0o666), 2)
        );
    }
}
