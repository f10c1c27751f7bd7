//! The daemon: one lifecycle for every set of modules (`insmod` at start, `rmmod` at SIGINT or
//! SIGTERM).
//!
//! [`main`] builds the whole daemon from a list of [`ModuleInfo`]: the command line (the module,
//! its parameters, the device's name, number, mode, owner, the transport's threads, `--user`,
//! `--pidfile`, `--trace`, `-v`), the logging, the runtime, CUSE, the stop signals and the exit status. The
//! shipped `deferred` binary is [`daemon_main!`](crate::daemon_main) over the lab's modules; a
//! crate of one's own modules is the same one line:
//!
//! ```ignore
//! deferred::daemon_main!(&[my_modules::timer::MODULE, my_modules::deferred::MODULE]);
//! ```
//!
//! The exit status is 0 after a clean unload; 1 when the daemon could not start, lost its
//! connection to `/dev/cuse`, or when the kernel is tainted: a BUG or WARN was reported while
//! it ran (an allocation in softirq context, a task reference still held at unload, a kernel
//! thread still running its module's code at unload, a WARN of the timer or workqueue code; see
//! [`crate::kernel::bug`]); 2 for a bad command line.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cuse::{Config, Cuse};
use crate::kernel;
use crate::module::{ModuleInfo, Params};

/// The daemon's `main` over `modules`, with the counting allocator as the global allocator (it
/// catches allocations in softirq context):
///
/// ```ignore
/// deferred::daemon_main!(&[hello::MODULE]);
/// ```
#[macro_export]
macro_rules! daemon_main {
    ($modules:expr $(,)?) => {
        #[global_allocator]
        static DEFERRED_ALLOCATOR: $crate::kernel::alloc::CountingAllocator =
            $crate::kernel::alloc::CountingAllocator;

        fn main() -> ::std::process::ExitCode {
            $crate::daemon::main($modules)
        }
    };
}

/// The daemon's own options (the module's come from its [`ModuleInfo::params`]).
#[derive(Args, Debug, Clone)]
pub struct Options {
    /// Device name: the node is /dev/NAME.
    #[arg(long, default_value = "deferred")]
    pub name: String,
    /// Device major (0: allocate one dynamically).
    #[arg(long, default_value_t = 42)]
    pub major: u32,
    /// Device minor.
    #[arg(long, default_value_t = 0)]
    pub minor: u32,
    /// Mode of the node, octal (default: as devtmpfs makes it, 0600).
    #[arg(long, value_parser = parse_octal)]
    pub mode: Option<u32>,
    /// Group of the node (name or number).
    #[arg(long)]
    pub group: Option<String>,
    /// Once the device is up, drop root for this user (name or number): its uid, its primary
    /// group (a number without a passwd entry: the same number as gid), no supplementary groups.
    #[arg(long)]
    pub user: Option<String>,
    /// Most reader threads on /dev/cuse (the pool starts with one and grows while all are busy).
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// After answering the only request in flight, one reader polls for the next before it
    /// sleeps: for a lone client this many microseconds, while that is seen to serve it faster
    /// than sleeping; for several, 4x the mean interval between their requests (at most this);
    /// backing off when none comes (0: never; never on one CPU; saves a sleep and a wake-up per
    /// round trip for a client that asks again at once).
    #[arg(long, default_value_t = 20_000, value_name = "US",
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub spin_us: u64,
    /// The nice value of a reader serving a lone client, relative to the daemon's (-5: woken
    /// by a request, it preempts the caller before the caller sleeps waiting for the answer,
    /// where the scheduler weighs wake-ups by nice value; 0: the daemon's). Lowering it needs
    /// CAP_SYS_NICE; without it, the readers keep the daemon's.
    #[arg(long, default_value_t = -5, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-39..=39))]
    pub reader_nice: i32,
    /// Write the daemon's pid to this file once the device is ready (node present, with its
    /// mode and group); removed on exit.
    #[arg(long)]
    pub pidfile: Option<PathBuf>,
    #[command(flatten)]
    pub trace: crate::tracefile::TraceArgs,
    /// More logging (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// What the command line asks for.
#[derive(Debug)]
pub struct Invocation {
    /// The module to load.
    pub module: &'static ModuleInfo,
    /// Its parameters.
    pub params: Params,
    /// The daemon's options.
    pub options: Options,
}

/// Why a list of modules cannot make a daemon (a programming error of the list's author).
fn check_registry(modules: &[ModuleInfo]) -> Result<(), String> {
    if modules.is_empty() {
        return Err("no modules to load".into());
    }
    let reserved = Options::augment_args(Command::new("x"));
    for (i, m) in modules.iter().enumerate() {
        if modules[..i].iter().any(|o| o.name == m.name) {
            return Err(format!("two modules are named `{}`", m.name));
        }
        for (j, p) in m.params.iter().enumerate() {
            if m.params[..j]
                .iter()
                .any(|o| crate::module::parameq(o.name(), p.name()))
            {
                return Err(format!(
                    "module `{}` declares parameter `{}` twice",
                    m.name,
                    p.name()
                ));
            }
            let flag = p.name().replace('_', "-");
            if ["help", "version"].contains(&flag.as_str())
                || reserved
                    .get_arguments()
                    .any(|a| a.get_long() == Some(flag.as_str()))
            {
                return Err(format!(
                    "parameter `{}` of module `{}` has the name of a daemon option",
                    p.name(),
                    m.name
                ));
            }
        }
    }
    Ok(())
}

fn modules_help(modules: &[ModuleInfo]) -> String {
    let mut s = String::from(
        "Modules (the first is the default), with their parameters: give them after the module as \
         insmod takes them (timer once=1) or as options (--once):\n",
    );
    for m in modules {
        s += &format!("  {:<10}{}\n", m.name, m.description);
        for p in m.params_help() {
            s += &format!("  {:<12}{p}\n", "");
        }
    }
    s += "\nStart = insmod (the node appears, no mknod); SIGINT/SIGTERM = rmmod (the node goes).\n\
          Exit status: 0 after a clean unload; 1 if it could not start, lost /dev/cuse, or a BUG \
          or WARNING was reported (the kernel is tainted); 2 for a bad command line.\n\
          Environment: RUST_LOG=LEVEL the log filter (as -v); DEFERRED_CLOCK=auto|tsc|monotonic \
          the clock of the log's timestamps (auto: the TSC where clock_gettime is a system \
          call, as in a TCG VM).";
    s
}

/// The command line of a daemon serving `modules`.
pub fn command(modules: &'static [ModuleInfo]) -> Command {
    let names: Vec<&'static str> = modules.iter().map(|m| m.name).collect();
    let mut cmd = Command::new("deferred")
        .version(env!("CARGO_PKG_VERSION"))
        .after_help(modules_help(modules))
        .arg(
            Arg::new("module")
                .value_name("MODULE")
                .help("The module to load.")
                .default_value(names[0])
                .value_parser(names),
        )
        .arg(
            Arg::new("params")
                .help("The module's parameters, as insmod takes them (see Modules below).")
                .value_name("PARAM=VALUE")
                .num_args(0..)
                .trailing_var_arg(false),
        );
    cmd = Options::augment_args(cmd)
        .about("Load a lab module in userspace; its device is served through CUSE.");
    // Each parameter also as an option, once per name (its help names the modules having it).
    let mut seen: Vec<String> = Vec::new();
    for m in modules {
        for p in m.params {
            let flag = p.name().replace('_', "-");
            if seen.contains(&flag) {
                continue;
            }
            seen.push(flag.clone());
            let owners: Vec<&str> = modules
                .iter()
                .filter(|o| o.param(p.name()).is_some())
                .map(|o| o.name)
                .collect();
            let mut arg = Arg::new(flag.clone())
                .long(flag)
                .help(format!(
                    "{}: {} (or {}={})",
                    owners.join(", "),
                    p.description(),
                    p.name(),
                    if p.type_name() == "bool" {
                        "1".to_string()
                    } else {
                        p.type_name().to_uppercase()
                    }
                ))
                .help_heading("Module parameters");
            arg = if p.type_name() == "bool" {
                arg.action(ArgAction::SetTrue)
            } else {
                arg.value_name(p.type_name().to_uppercase())
            };
            cmd = cmd.arg(arg);
        }
    }
    cmd
}

/// The invocation `matches` asks for: the module, its parameters (positional `name=value`
/// first, then `--name` options), the options.
pub fn invocation(
    modules: &'static [ModuleInfo],
    matches: &ArgMatches,
) -> Result<Invocation, String> {
    let name = matches
        .get_one::<String>("module")
        .map_or(modules[0].name, String::as_str);
    let module = modules
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| format!("no module `{name}`"))?;
    let positional: Vec<&str> = matches
        .get_many::<String>("params")
        .map(|v| v.map(String::as_str).collect())
        .unwrap_or_default();
    let mut params = module.parse_params(&positional)?;
    for m in modules {
        for p in m.params {
            let id = p.name().replace('_', "-");
            if matches.value_source(&id) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            if module.param(p.name()).is_none() {
                let owners: Vec<&str> = modules
                    .iter()
                    .filter(|o| o.param(p.name()).is_some())
                    .map(|o| o.name)
                    .collect();
                return Err(format!(
                    "--{id} is a parameter of {}, not of `{}`",
                    owners.join(", "),
                    module.name
                ));
            }
            if p.type_name() == "bool" {
                params.set(module, p.name(), None)?;
            } else if let Some(v) = matches.get_one::<String>(&id) {
                params.set(module, p.name(), Some(v))?;
            }
        }
    }
    let options = Options::from_arg_matches(matches).map_err(|e| e.to_string())?;
    Ok(Invocation {
        module,
        params,
        options,
    })
}

/// The daemon: parses the command line, sets up logging, loads the module chosen and serves
/// its device until SIGINT/SIGTERM. Install [`kernel::alloc::CountingAllocator`] as the global
/// allocator ([`daemon_main!`](crate::daemon_main) does).
pub fn main(modules: &'static [ModuleInfo]) -> ExitCode {
    if let Err(e) = check_registry(modules) {
        eprintln!("deferred: {e}");
        return ExitCode::FAILURE;
    }
    let mut cmd = command(modules);
    let matches = cmd.get_matches_mut();
    let inv = match invocation(modules, &matches) {
        Ok(inv) => inv,
        Err(e) => cmd.error(clap::error::ErrorKind::ValueValidation, e).exit(),
    };
    crate::logging::init(inv.options.verbose);
    if !kernel::alloc::installed() {
        log::error!(
            "the counting allocator is not the global allocator: allocations in softirq context \
             would go unreported (use deferred::daemon_main!, or install \
             deferred::kernel::alloc::CountingAllocator with #[global_allocator])"
        );
        return ExitCode::FAILURE;
    }
    let result = run(&inv);
    let tainted = kernel::bug::tainted();
    match result {
        Err(e) => {
            eprintln!("deferred: {e}");
            ExitCode::FAILURE
        }
        Ok(()) if tainted != 0 => {
            eprintln!(
                "deferred: exit status 1: the kernel is tainted ({}): {} BUG/WARNING report(s) above",
                kernel::bug::taint_string(),
                kernel::bug::reports()
            );
            ExitCode::FAILURE
        }
        Ok(()) => ExitCode::SUCCESS,
    }
}

/// Loads the module, serves its device until SIGINT/SIGTERM (or until /dev/cuse goes away),
/// unloads it and runs the checks done at unload.
pub fn run(inv: &Invocation) -> Result<(), String> {
    let args = &inv.options;
    let info = inv.module;
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

    let user = args.user.as_deref().map(resolve_user).transpose()?;
    // Open /dev/cuse before init: a missing CUSE or a second instance fails without side effects.
    let cuse = if info.has_device {
        let config = Config {
            name: args.name.clone(),
            major: args.major,
            minor: args.minor,
            threads: args.threads,
            spin: std::time::Duration::from_micros(args.spin_us),
            reader_nice: args.reader_nice,
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
    let module = match info.load(&inv.params) {
        Ok(m) => m,
        Err(e) => {
            kernel::stop();
            return Err(format!("module `{}`: init failed: {e:?} ({e})", info.name));
        }
    };
    // rmmod: exit, then what it left running or held is reported, then the module's memory goes.
    let unload = |module: Box<dyn crate::module::Module>| {
        info.unload(module);
        kernel::stop();
    };
    let device = match (cuse, module.file_operations()) {
        (Some(cuse), Some(fops)) => match cuse.start(fops) {
            Ok(dev) => Some(dev),
            Err(e) => {
                unload(module);
                return Err(e.to_string());
            }
        },
        (Some(_), None) => {
            unload(module);
            return Err(format!(
                "module `{}` has a device (has_device) but its file_operations() gave none",
                info.name
            ));
        }
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
            unload(module);
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
    unload(module);
    if let Some(path) = &args.pidfile {
        let _ = std::fs::remove_file(path);
    }
    if lost {
        return Err("the connection to /dev/cuse was lost; the device is gone".into());
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        command(crate::modules::MODULES).debug_assert();
        check_registry(crate::modules::MODULES).unwrap();
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse_octal("0666"), Ok(0o666));
        assert_eq!(parse_octal("600"), Ok(0o600));
        assert!(parse_octal("0999").is_err());
        assert!(parse_octal("77777").is_err());
    }

    fn parse(args: &[&str]) -> Result<Invocation, String> {
        let m = command(crate::modules::MODULES)
            .try_get_matches_from(args)
            .map_err(|e| e.to_string())?;
        invocation(crate::modules::MODULES, &m)
    }

    #[test]
    fn defaults_and_module_parameters() {
        let a = parse(&["deferred"]).unwrap();
        assert_eq!(
            (a.module.name, a.options.name.as_str()),
            ("deferred", "deferred")
        );
        let o = &a.options;
        assert_eq!((o.major, o.minor, o.threads, o.mode), (42, 0, 8, None));
        assert!(parse(&["deferred", "nope"]).is_err());
        let a = parse(&["deferred", "timer", "--mode", "0666", "-vv"]).unwrap();
        assert_eq!(
            (a.module.name, a.options.mode, a.options.verbose),
            ("timer", Some(0o666), 2)
        );

        use crate::modules::{deferred::ALLOC_IO_DIRECT, timer::ONCE};
        let once = |args: &[&str]| parse(args).unwrap().params.get(&ONCE);
        let direct = |args: &[&str]| parse(args).unwrap().params.get(&ALLOC_IO_DIRECT);
        assert!(!a.params.get(&ONCE));
        assert!(once(&["deferred", "timer", "--once"]));
        assert!(once(&["deferred", "timer", "once=1"]));
        assert!(once(&["deferred", "timer", "once"]));
        assert!(!once(&["deferred", "timer", "once=n"]));
        assert!(direct(&["deferred", "--alloc-io-direct"]));
        assert!(direct(&["deferred", "deferred", "alloc_io_direct=y", "-v"]));
        assert_eq!(
            parse(&["deferred", "--once"]).unwrap_err(),
            "--once is a parameter of timer, not of `deferred`"
        );
        assert_eq!(
            parse(&["deferred", "timer", "once=2"]).unwrap_err(),
            "`once=2`: not a bool (1/y/on or 0/n/off)"
        );
        assert_eq!(
            parse(&["deferred", "kthread", "x=1"]).unwrap_err(),
            "module `kthread` has no parameter `x` (it takes none)"
        );
    }

    #[test]
    fn help_lists_every_module_and_its_parameters() {
        let help = command(crate::modules::MODULES)
            .render_long_help()
            .to_string();
        for m in crate::modules::MODULES {
            assert!(help.contains(m.description), "{help}");
            for p in m.params {
                assert!(
                    help.contains(&format!("--{}", p.name().replace('_', "-"))),
                    "{help}"
                );
                assert!(help.contains(p.description()), "{help}");
            }
        }
    }

    #[test]
    fn a_broken_registry_is_refused() {
        const DUP: crate::module::Param<bool> = crate::module::Param::new("threads", false, "");
        let m = crate::modules::MODULES[1];
        assert!(check_registry(&[]).is_err());
        assert_eq!(
            check_registry(&[m, m]).unwrap_err(),
            format!("two modules are named `{}`", m.name)
        );
        let bad = ModuleInfo {
            params: &[&DUP],
            ..m
        };
        assert!(
            check_registry(&[bad])
                .unwrap_err()
                .contains("has the name of a daemon option")
        );
    }
}
