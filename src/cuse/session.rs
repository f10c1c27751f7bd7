//! The connection's life: open `/dev/cuse`, the INIT handshake, the reader threads and the
//! dispatch of each request to the [`FileOperations`].
//!
//! ```text
//!  Cuse::open ──> Cuse::start(fops) ──> Device (node present, readers running) ──> Device::stop
//!  (checks,        (CUSE_INIT reply,      reader "cuse/N": read (blocking)            (stop readers,
//!   /dev/cuse)      wait for the node)    -> decode -> fops -> Reply                 close fd: node gone)
//! ```
//!
//! Once the connection is up the fd is blocking and every reader sleeps in `read(2)`, as libfuse's
//! workers do: the kernel queues the readers exclusively (`fuse_dev_do_read`), so a request wakes
//! one reader, not all of them, and costs one system call to receive. Stopping does not wait for a
//! request: [`Device::stop`] raises a flag and interrupts each reader's `read` with a signal of
//! its own (a real-time signal with an empty handler, installed without `SA_RESTART`), again
//! until the reader has left. `read` errors EAGAIN/EINTR/ENOENT: read again (interrupted, or the
//! kernel dropped the request); ENODEV/ECONNABORTED: the connection is gone.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::stat::Mode;

use super::abi::{self, Operation};
use super::reply::{Begin, Channel, Delivery};
use crate::kernel::error::Error as KernelError;
use crate::kernel::fs::{File, FileOperations};
use crate::sys::futex;

/// Where the CUSE control device lives.
pub const CUSE_DEV: &str = "/dev/cuse";

/// What the device looks like and how it is served.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DEVNAME`: the node is `/dev/<name>`, the sysfs entry `/sys/class/cuse/<name>`.
    pub name: String,
    /// Device major; 0 = allocate one dynamically.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
    /// Most reader threads on the one fd (the pool starts with one; see `Server::spawn_reader`).
    pub threads: usize,
    /// Largest READ the kernel may send.
    pub max_read: u32,
    /// Largest WRITE the kernel may send.
    pub max_write: u32,
    /// Mode bits to give the node once it appears (devtmpfs makes it 0600).
    pub mode: Option<u32>,
    /// Group to give the node once it appears.
    pub gid: Option<u32>,
    /// How long to wait for the kernel's answer and the node.
    pub timeout: Duration,
    /// After answering a request, how long one reader polls for the next before it sleeps in
    /// `read(2)` (zero: never). See [`reader`].
    pub spin: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            name: "deferred".into(),
            major: 42,
            minor: 0,
            threads: 8,
            max_read: 4096,
            max_write: 4096,
            mode: None,
            gid: None,
            timeout: Duration::from_secs(5),
            spin: Duration::from_micros(200),
        }
    }
}

impl Config {
    /// The read buffer the kernel requires: at least `max(8192, 80 + max_write)`.
    pub fn read_buffer_len(&self) -> usize {
        abi::FUSE_MIN_READ_BUFFER
            .max(abi::IN_HEADER_LEN + std::mem::size_of::<abi::WriteIn>() + self.max_write as usize)
    }

    /// The `/dev` node.
    pub fn node(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// The sysfs entry the kernel creates on a successful INIT.
    pub fn sysfs(&self) -> PathBuf {
        Path::new("/sys/class/cuse").join(&self.name)
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |why: &str| Error::Config(format!("device name `{}` {why}", self.name));
        if self.name.is_empty() {
            return Err(bad("is empty"));
        }
        if self.name.contains(['/', '\0']) || self.name == "." || self.name == ".." {
            return Err(bad("must be a plain file name (no `/`)"));
        }
        if self.name.len() > 200 {
            return Err(bad("is too long"));
        }
        if self.threads == 0 || self.threads > 64 {
            return Err(Error::Config(format!(
                "--threads {} is out of range (1..=64)",
                self.threads
            )));
        }
        if self.minor >= 1 << 20 || self.major >= 1 << 12 {
            return Err(Error::Config(format!(
                "device number {}:{} is out of range (major < 4096, minor < 1048576)",
                self.major, self.minor
            )));
        }
        Ok(())
    }
}

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

/// An open `/dev/cuse` (or test fd), not yet initialised.
#[derive(Debug)]
pub struct Cuse {
    fd: OwnedFd,
    config: Config,
    /// A real `/dev/cuse`: INIT is confirmed through sysfs and the node.
    real: bool,
}

impl Cuse {
    /// Opens `/dev/cuse` (`O_RDWR | O_CLOEXEC`, non-blocking), after checking the configuration
    /// and that no device of that name exists.
    pub fn open(config: Config) -> Result<Cuse, Error> {
        config.check()?;
        if config.sysfs().exists() {
            return Err(Error::NameTaken(config.name.clone()));
        }
        let fd = open(
            CUSE_DEV,
            OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ENOENT | Errno::ENODEV | Errno::ENXIO => Error::NoCuse,
            Errno::EACCES | Errno::EPERM => Error::Permission,
            e => Error::Sys("open /dev/cuse", e.into()),
        })?;
        Ok(Cuse {
            fd,
            config,
            real: true,
        })
    }

    /// Serves any message-preserving fd (e.g. one end of a `SOCK_SEQPACKET` pair) as if it were
    /// `/dev/cuse`: for tests that play the kernel. Nothing is checked in sysfs or `/dev`.
    pub fn from_fd(fd: OwnedFd, config: Config) -> Result<Cuse, Error> {
        config.check()?;
        Ok(Cuse {
            fd,
            config,
            real: false,
        })
    }

    /// Answers CUSE_INIT, waits for the node, starts the reader threads serving `fops`.
    pub fn start(self, fops: Arc<dyn FileOperations>) -> Result<Device, Error> {
        let Cuse { fd, config, real } = self;
        let chan = Arc::new(Channel::new(fd));
        let mut buf = vec![0u8; config.read_buffer_len()];
        init(&chan, &config, &mut buf)?;
        let devnum = if real {
            let devnum = confirm(&chan, &config)?;
            let node = wait_node(&config, devnum)?;
            apply_owner_mode(&node, &config)?;
            devnum
        } else {
            (config.major, config.minor)
        };
        log::debug!(
            "device {} {}:{} up, up to {} reader threads",
            config.name,
            devnum.0,
            devnum.1,
            config.threads
        );
        // From here on the readers sleep in read(2) (see the module's documentation).
        let wake = wake_signal()?;
        let flags = nix::fcntl::fcntl(chan.fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(sys("fcntl F_GETFL /dev/cuse"))?;
        let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(chan.fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(sys("fcntl F_SETFL /dev/cuse"))?;
        let gone = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(sys("eventfd"))?,
        );
        let server = Arc::new(Server {
            chan,
            fops,
            next_fh: AtomicU64::new(1),
            max_read: config.max_read,
            spin: config.spin,
            spinning: AtomicBool::new(false),
            spin_misses: AtomicU32::new(0),
            spin_skip: AtomicU32::new(0),
            recent_callers: [const { AtomicU32::new(0) }; RECENT_CALLERS],
            recent_next: AtomicUsize::new(0),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stop: AtomicBool::new(false),
            gone: gone.clone(),
            wake,
            buffer_len: config.read_buffer_len(),
            max_readers: config.threads,
            active: AtomicUsize::new(0),
            parked: Mutex::new(Vec::new()),
            readers: Mutex::new(Vec::with_capacity(config.threads)),
        });
        server.spawn_reader()?;
        Ok(Device {
            server: Some(server),
            gone,
            config,
            devnum,
            real,
        })
    }
}

/// `Error::Sys(what, errno)` from any error the runtime's errno type converts from.
fn sys<E: Into<KernelError>>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Sys(what, e.into())
}

/// Waits up to `timeout` for `fd` to be readable; returns its revents.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<PollFlags, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as u32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(PollFlags::empty()),
            Ok(_) => return Ok(fds[0].revents().unwrap_or(PollFlags::empty())),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(sys("poll /dev/cuse")(e)),
        }
    }
}

/// Reads CUSE_INIT and answers it.
fn init(chan: &Arc<Channel>, config: &Config, buf: &mut [u8]) -> Result<(), Error> {
    let deadline = Instant::now() + config.timeout;
    let n = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Protocol(format!(
                "no CUSE_INIT from the kernel within {:?}",
                config.timeout
            )));
        }
        wait_readable(chan.fd().as_fd(), left)?;
        match nix::unistd::read(chan.fd(), buf) {
            Ok(0) => return Err(Error::Protocol("connection closed before CUSE_INIT".into())),
            Ok(n) => break n,
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOENT) => continue,
            Err(e) => return Err(sys("read CUSE_INIT from /dev/cuse")(e)),
        }
    };
    let req = abi::decode(&buf[..n]).map_err(|e| Error::Protocol(format!("CUSE_INIT: {e}")))?;
    let (reply, _) = chan.begin(req.header.unique);
    let Operation::CuseInit(arg) = req.op else {
        let _ = reply.error(KernelError::EIO);
        return Err(Error::Protocol(format!(
            "first request is opcode {}, not CUSE_INIT",
            req.header.opcode
        )));
    };
    log::debug!(
        "CUSE_INIT: protocol {}.{}, flags {:#x}",
        arg.major,
        arg.minor,
        arg.flags
    );
    if arg.major != abi::FUSE_KERNEL_VERSION || arg.minor < abi::FUSE_MIN_MINOR_VERSION {
        let _ = reply.error(KernelError::EPROTO);
        return Err(Error::Protocol(format!(
            "kernel speaks FUSE {}.{}, we need 7.{} or later",
            arg.major,
            arg.minor,
            abi::FUSE_MIN_MINOR_VERSION
        )));
    }
    if arg.flags & abi::CUSE_UNRESTRICTED_IOCTL == 0 {
        log::warn!("the kernel does not offer unrestricted ioctls: arguments will not be raw");
    }
    let out = abi::CuseInitOut {
        major: abi::FUSE_KERNEL_VERSION,
        minor: arg.minor.min(abi::FUSE_KERNEL_MINOR_VERSION),
        flags: arg.flags & abi::CUSE_UNRESTRICTED_IOCTL,
        max_read: config.max_read,
        max_write: config.max_write,
        dev_major: config.major,
        dev_minor: config.minor,
        ..Default::default()
    };
    let info = format!("DEVNAME={}\0", config.name);
    match reply.init(&out, info.as_bytes()) {
        Delivery::Sent => Ok(()),
        // The kernel processes the INIT reply inside our write: a failure to register the
        // device aborts the connection, which `confirm` diagnoses.
        Delivery::Dropped | Delivery::Failed => Ok(()),
    }
}

/// The kernel does not answer an INIT reply: success shows as `/sys/class/cuse/<name>`, failure
/// as an aborted connection. Returns the device number.
fn confirm(chan: &Channel, config: &Config) -> Result<(u32, u32), Error> {
    let sysfs = config.sysfs();
    let deadline = Instant::now() + config.timeout;
    let mut wait = Duration::ZERO;
    loop {
        // The connection first: if our INIT was refused because another instance took the name
        // in the meantime, sysfs shows *its* device.
        let revents = wait_readable(chan.fd().as_fd(), wait)?;
        if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
            return Err(refused(config));
        }
        if let Ok(dev) = fs::read_to_string(sysfs.join("dev")) {
            return parse_devnum(&dev).ok_or_else(|| {
                Error::Protocol(format!("{}/dev: `{}`", sysfs.display(), dev.trim()))
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::Refused(format!(
                "{} did not appear within {:?}",
                sysfs.display(),
                config.timeout
            )));
        }
        // A pending request (POLLIN) must not make this spin.
        wait = Duration::from_millis(20);
        if !revents.is_empty() {
            std::thread::sleep(wait);
        }
    }
}

/// Why INIT was refused, as far as we can tell.
fn refused(config: &Config) -> Error {
    if config.sysfs().exists() {
        return Error::NameTaken(config.name.clone());
    }
    if config.major != 0 {
        let holder = char_major_holder(config.major);
        if holder.is_some() || Path::new("/proc/devices").exists() {
            return Error::DevnumTaken {
                major: config.major,
                minor: config.minor,
                holder,
            };
        }
    }
    Error::Refused(format!(
        "INIT of `{}` aborted (name taken or device number in use?)",
        config.name
    ))
}

/// The driver holding character major `major`, from `/proc/devices`.
pub fn char_major_holder(major: u32) -> Option<String> {
    let text = fs::read_to_string("/proc/devices").ok()?;
    text.lines()
        .skip_while(|l| !l.starts_with("Character devices:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let mut it = l.split_whitespace();
            let m: u32 = it.next()?.parse().ok()?;
            (m == major).then(|| it.collect::<Vec<_>>().join(" "))
        })
}

/// Parses sysfs's `MAJOR:MINOR\n`.
pub fn parse_devnum(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Waits for devtmpfs to create `/dev/<name>` as our character device.
fn wait_node(config: &Config, (major, minor): (u32, u32)) -> Result<PathBuf, Error> {
    let node = config.node();
    let want = libc::makedev(major, minor);
    let deadline = Instant::now() + config.timeout;
    let mut last = None;
    loop {
        match fs::metadata(&node) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == want => return Ok(node),
            Ok(m) => last = Some(m),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(Error::Node(match last {
                Some(m) => format!(
                    "{} exists but is not this device ({}:{} wanted, found {}{}:{}): remove it",
                    node.display(),
                    major,
                    minor,
                    if m.file_type().is_char_device() {
                        "c "
                    } else {
                        "not a char device, "
                    },
                    libc::major(m.rdev()),
                    libc::minor(m.rdev())
                ),
                None => format!(
                    "{} did not appear within {:?} (is devtmpfs mounted on /dev?)",
                    node.display(),
                    config.timeout
                ),
            }));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn apply_owner_mode(node: &Path, config: &Config) -> Result<(), Error> {
    if let Some(gid) = config.gid {
        nix::unistd::chown(node, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(sys("chown the node"))?;
    }
    if let Some(mode) = config.mode {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(node, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(sys("chmod the node"))?;
    }
    Ok(())
}

/// How many of the last requests' callers are remembered (to count the active clients).
const RECENT_CALLERS: usize = 8;

/// What the reader threads share: the connection, the file operations, and the pool of readers.
struct Server {
    chan: Arc<Channel>,
    fops: Arc<dyn FileOperations>,
    next_fh: AtomicU64,
    max_read: u32,
    spin: Duration,
    /// One reader at a time spins (see [`reader`]).
    spinning: AtomicBool,
    /// Spins in a row that ran out without a request.
    spin_misses: AtomicU32,
    /// Chances to spin still to pass up after misses (a back-off).
    spin_skip: AtomicU32,
    /// The callers (thread ids) of the last requests, a ring: how many clients are active.
    recent_callers: [AtomicU32; RECENT_CALLERS],
    recent_next: AtomicUsize,
    /// CPUs this process may run on.
    cpus: usize,
    /// Set by [`Device::stop`]: readers leave when they see it.
    stop: AtomicBool,
    /// Written when the connection ends (not when stopped).
    gone: Arc<EventFd>,
    /// The signal that interrupts a reader's read when stopping ([`wake_signal`]).
    wake: i32,
    buffer_len: usize,
    /// [`Config::threads`]: the pool grows up to this many readers.
    max_readers: usize,
    /// Readers not parked (spawned, less those in `parked`).
    active: AtomicUsize,
    /// Parked readers, the most recently parked last; each waits on its own futex word.
    parked: Mutex<Vec<Arc<AtomicU32>>>,
    /// Every reader spawned, in order (`cuse/0`, `cuse/1`, ...).
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl Server {
    /// Adds a reader to the pool, unless it is full or stopping. As libfuse's multi-threaded
    /// loop does: the pool starts with one reader and grows by one each time a reader takes a
    /// request while no other is waiting, up to [`Config::threads`]; readers never retire (a
    /// reader asleep in `read(2)` costs no CPU). So the pool follows the clients' concurrency:
    /// more readers than requests in flight would only take turns being woken.
    fn spawn_reader(self: &Arc<Server>) -> Result<(), Error> {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if self.stop.load(Ordering::Acquire) || readers.len() >= self.max_readers {
            return Ok(());
        }
        let server = self.clone();
        match std::thread::Builder::new()
            .name(format!("cuse/{}", readers.len()))
            .spawn(move || reader(&server))
        {
            Ok(t) => {
                readers.push(t);
                self.active.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => Err(sys("spawn a reader thread")(e)),
        }
    }

    /// Readers in the pool now.
    fn readers(&self) -> usize {
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AtomicU32>>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more reader to wait for requests: the most recently parked one (its stack is the
    /// warmest), or a new one.
    fn add_reader(self: &Arc<Server>) -> Result<(), Error> {
        let mut parked = self.parked();
        if let Some(word) = parked.pop() {
            self.active.fetch_add(1, Ordering::AcqRel);
            drop(parked);
            word.store(1, Ordering::Release);
            futex::wake(&word, 1);
            return Ok(());
        }
        drop(parked);
        self.spawn_reader()
    }

    /// Parks the calling reader (out of `read(2)`) if it would otherwise sleep there (no request
    /// waiting) while two other active readers are free (not busy with a request), until
    /// [`Server::add_reader`] or stop needs it; `false` if it did not park. The decision and the
    /// count change are one compare-and-swap, so readers finishing together cannot all park: at
    /// least two stay active. Under load requests are queued, nobody parks, and the pool keeps
    /// the readers the clients need.
    fn park_if_spare(&self, fd: BorrowedFd<'_>, word: &Arc<AtomicU32>) -> bool {
        if self.active.load(Ordering::Acquire) < self.chan.in_flight() + 3 || readable_now(fd) {
            return false;
        }
        word.store(0, Ordering::Release);
        {
            let mut parked = self.parked();
            let mut active = self.active.load(Ordering::Acquire);
            loop {
                if active < self.chan.in_flight() + 3 {
                    return false;
                }
                match self.active.compare_exchange(
                    active,
                    active - 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(now) => active = now,
                }
            }
            parked.push(word.clone());
        }
        // Stop wakes every parked word after raising `stop`; a reader parked after that sees it.
        while word.load(Ordering::Acquire) == 0 && !self.stop.load(Ordering::Acquire) {
            futex::wait(word, 0, None);
        }
        true
    }

    /// Wakes every parked reader (when stopping).
    fn unpark_all(&self) {
        for word in self.parked().drain(..) {
            word.store(1, Ordering::Release);
            futex::wake(&word, 1);
        }
    }
}

/// The signal that interrupts a reader's `read(2)` when the device stops: the highest real-time
/// signal nobody handles (the runtime's timer takes the lowest), with an empty handler and no
/// `SA_RESTART`. Installed once per process.
fn wake_signal() -> Result<i32, Error> {
    static WAKE: OnceLock<Result<i32, Errno>> = OnceLock::new();
    /// Empty: its only effect is that the interrupted `read` returns EINTR. Async-signal-safe.
    extern "C" fn interrupted(_: libc::c_int) {}
    let sig = *WAKE.get_or_init(|| {
        for sig in (libc::SIGRTMIN()..=libc::SIGRTMAX()).rev() {
            // SAFETY: a zeroed sigaction is a valid out-parameter.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: querying (null new action) a valid signal number.
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            // SAFETY: a zeroed sigaction is valid; handler, flags (none: no SA_RESTART, so the
            // read returns EINTR) and an empty mask are filled in below.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = interrupted as extern "C" fn(libc::c_int) as usize;
            // SAFETY: sa.sa_mask is a valid sigset_t to initialise.
            unsafe { libc::sigemptyset(&mut sa.sa_mask) };
            // SAFETY: installing a handler that does nothing for a signal that had none.
            if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
                return Err(Errno::last());
            }
            return Ok(sig);
        }
        Err(Errno::EAGAIN)
    });
    sig.map_err(sys(
        "a real-time signal to stop the readers with (sigaction)",
    ))
}

/// Unblocks the real-time signal `sig` for the calling thread (nix's `SigSet` holds only the
/// standard signals).
fn unblock(sig: i32) -> Result<(), Errno> {
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid; `sig` is a real-time signal number.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    // SAFETY: a valid set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(rc))
    }
}

/// One reader thread: one read = one request, until stopped or the connection is gone.
///
/// Spin, then sleep: a reader that has just answered the only request in flight polls the fd
/// (without sleeping) for up to [`Config::spin`] before it goes to sleep in `read(2)`, one
/// reader at a time. A client that asks again right away is served without a sleep and a
/// wake-up on either side of the round trip (on an idle CPU, waking a sleeper is most of it).
/// It is not tried while other requests are in flight (other readers are running and the next
/// request is likely queued already), nor while more clients are active (distinct callers among
/// the last 8 requests) than there are CPUs: then the CPUs are busy, and a spinning reader would
/// only take one from a client. Spins that run out make the
/// readers pass up the next chances (1, 2, 4, ... up to 64 in a row), so a client that asks
/// rarely costs no more than a sleeping reader; a quiet device costs nothing.
/// The same trade as the kernel's `net.core.busy_read`.
fn reader(server: &Arc<Server>) {
    // Whoever spawned us may block signals; the stop signal must get through.
    let _ = unblock(server.wake);
    let mut buf = vec![0u8; server.buffer_len];
    let fd = server.chan.fd();
    let mut answered = false;
    let park = Arc::new(AtomicU32::new(0));
    while !server.stop.load(Ordering::Acquire) {
        // Nothing to read and two other readers free already: this one parks. With the kernel
        // waking waiting readers in turn (FIFO), fewer of them means warmer ones.
        if answered && server.park_if_spare(fd.as_fd(), &park) {
            answered = false;
            continue;
        }
        if answered && server.should_spin() && !server.spinning.swap(true, Ordering::Acquire) {
            let hit = spin_for_request(fd.as_fd(), server.spin);
            server.spun(hit);
            server.spinning.store(false, Ordering::Release);
        }
        answered = false;
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => {
                log::debug!("connection closed");
                break;
            }
            Ok(n) => {
                // Every other active reader busy with a request (answered ones are out of the
                // in-flight table, even if their reader has not come back to read yet)?
                if server.chan.in_flight() + 1 >= server.active.load(Ordering::Acquire)
                    && let Err(e) = server.add_reader()
                {
                    // The readers there are go on serving.
                    log::warn!("{e}");
                }
                let s = std::panic::AssertUnwindSafe(server);
                let req = std::panic::AssertUnwindSafe(&buf[..n]);
                if std::panic::catch_unwind(|| s.handle(&req)).is_err() {
                    log::error!("bug: a request handler panicked; the request was answered EIO");
                }
                answered = true;
            }
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOENT) => continue,
            Err(Errno::ENODEV | Errno::ECONNABORTED) => {
                log::debug!("connection gone");
                break;
            }
            Err(e) => {
                log::error!("read /dev/cuse: {}", e.desc());
                break;
            }
        }
    }
    if !server.stop.load(Ordering::Acquire) {
        let _ = server.gone.write(1); // stopped is not "gone"
    }
}

/// Whether a request is waiting to be read.
fn readable_now(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Polls `fd` without sleeping until it is readable (or hung up: `true`) or `window` has passed
/// (`false`).
fn spin_for_request(fd: BorrowedFd<'_>, window: Duration) -> bool {
    let start = Instant::now();
    loop {
        // The clock is read every few polls: in a VM it can cost more than a poll.
        for _ in 0..4 {
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(0) | Err(Errno::EINTR) => {}
                _ => return true, // readable, hung up, or an error the read will report
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= window {
            return false;
        }
    }
}

impl Server {
    /// Whether a reader that has just answered should spin for the next request (see [`reader`]).
    fn should_spin(&self) -> bool {
        if self.spin.is_zero() || self.chan.in_flight() != 0 || self.active_clients() > self.cpus {
            return false;
        }
        // Back-off after misses: pass up this chance if some are still to be passed up.
        let skip = self.spin_skip.load(Ordering::Relaxed);
        if skip > 0 {
            self.spin_skip.store(skip - 1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Remembers the caller of a request.
    fn note_caller(&self, tid: u32) {
        let i = self.recent_next.fetch_add(1, Ordering::Relaxed) % RECENT_CALLERS;
        self.recent_callers[i].store(tid, Ordering::Relaxed);
    }

    /// Distinct callers among the last requests.
    fn active_clients(&self) -> usize {
        let mut seen = [0u32; RECENT_CALLERS];
        let mut n = 0;
        for c in &self.recent_callers {
            let tid = c.load(Ordering::Relaxed);
            if tid != 0 && !seen[..n].contains(&tid) {
                seen[n] = tid;
                n += 1;
            }
        }
        n
    }

    /// Records how a spin went.
    fn spun(&self, hit: bool) {
        if hit {
            self.spin_misses.store(0, Ordering::Relaxed);
        } else {
            let misses = self.spin_misses.fetch_add(1, Ordering::Relaxed) + 1;
            self.spin_skip
                .store(1 << (misses - 1).min(6), Ordering::Relaxed);
        }
    }
}

impl Server {
    /// Handles one request; every request but INTERRUPT is answered exactly once.
    fn handle(&self, buf: &[u8]) {
        let req = match abi::decode(buf) {
            Ok(req) => req,
            Err(e) => {
                log::warn!("malformed request: {e}");
                if let (Some(unique), Some(op)) = (e.unique, e.opcode)
                    && op != abi::FUSE_INTERRUPT
                {
                    let (reply, _) = self.chan.begin(unique);
                    let _ = reply.error(KernelError::EIO);
                }
                return;
            }
        };
        let h = req.header;
        self.note_caller(h.pid);
        if let Operation::Interrupt(arg) = req.op {
            log::debug!("request {}: INTERRUPT {}", h.unique, arg.unique);
            self.chan.interrupt(arg.unique);
            return;
        }
        let (reply, begin) = self.chan.begin(h.unique);
        // A RELEASE always runs: the file is gone whatever its closer does. The kernel sends it
        // from the closing task, which may be dying (SIGKILL): then it marks the request
        // interrupted and sends an INTERRUPT for it once a reader has read it, and that INTERRUPT
        // can reach another reader before this one enters the RELEASE in the table. Skipping it
        // then would leave the module's file open for good.
        if begin == Begin::Interrupted && !matches!(req.op, Operation::Release(_)) {
            log::debug!("request {}: interrupted before it ran", h.unique);
            let _ = reply.error(KernelError::EINTR);
            return;
        }
        match req.op {
            Operation::Open(arg) => {
                let file = File {
                    fh: self.next_fh.fetch_add(1, Ordering::Relaxed),
                    flags: arg.flags,
                    caller_tid: h.pid,
                };
                log::debug!(
                    "request {}: OPEN flags={:#o} -> fh {}",
                    h.unique,
                    arg.flags,
                    file.fh
                );
                match self.fops.open(&file) {
                    Ok(()) => {
                        if reply.open(file.fh) == Delivery::Dropped {
                            // The caller gave up (interrupted): no RELEASE will come.
                            log::debug!("open fh {} abandoned by its caller: released", file.fh);
                            self.fops.release(&File {
                                caller_tid: 0,
                                ..file
                            });
                        }
                    }
                    Err(e) => {
                        let _ = reply.error(e);
                    }
                }
            }
            Operation::Release(arg) => {
                log::debug!("request {}: RELEASE fh {}", h.unique, arg.fh);
                self.fops.release(&File {
                    fh: arg.fh,
                    flags: arg.flags,
                    caller_tid: h.pid,
                });
                let _ = reply.ok();
            }
            Operation::Ioctl(arg, _) => {
                let file = File {
                    fh: arg.fh,
                    flags: 0,
                    caller_tid: h.pid,
                };
                let compat = arg.flags & abi::FUSE_IOCTL_COMPAT != 0;
                log::debug!(
                    "request {}: IOCTL fh {} cmd={:#010x} arg={:#x} flags={:#x} tid {}",
                    h.unique,
                    arg.fh,
                    arg.cmd,
                    arg.arg,
                    arg.flags,
                    h.pid
                );
                let result = if compat {
                    self.fops.compat_ioctl(&file, arg.cmd, arg.arg)
                } else {
                    self.fops.unlocked_ioctl(&file, arg.cmd, arg.arg)
                };
                let _ = match result {
                    Ok(v) => reply.ioctl(v),
                    Err(e) => reply.error(e),
                };
            }
            Operation::Read(arg) => {
                let file = File {
                    fh: arg.fh,
                    flags: arg.flags,
                    caller_tid: h.pid,
                };
                let size = arg.size.min(self.max_read);
                log::debug!("request {}: READ fh {} size {}", h.unique, arg.fh, size);
                let _ = match self.fops.read(&file, size, arg.offset) {
                    Ok(data) => reply.data(&data[..data.len().min(size as usize)]),
                    Err(e) => reply.error(e),
                };
            }
            Operation::Write(arg, data) => {
                let file = File {
                    fh: arg.fh,
                    flags: arg.flags,
                    caller_tid: h.pid,
                };
                log::debug!(
                    "request {}: WRITE fh {} size {}",
                    h.unique,
                    arg.fh,
                    data.len()
                );
                let _ = match self.fops.write(&file, data, arg.offset) {
                    Ok(n) => reply.write(n.min(arg.size)),
                    Err(e) => reply.error(e),
                };
            }
            Operation::Poll(arg) => {
                // The lab's module has no .poll: the kernel reports DEFAULT_POLLMASK for it.
                log::debug!(
                    "request {}: POLL fh {} events {:#x}",
                    h.unique,
                    arg.fh,
                    arg.events
                );
                let _ = reply.poll(abi::DEFAULT_POLLMASK);
            }
            Operation::CuseInit(_) => {
                log::warn!("request {}: CUSE_INIT again: EIO", h.unique);
                let _ = reply.error(KernelError::EIO);
            }
            Operation::Unknown(opcode) => {
                log::debug!("request {}: opcode {opcode}: ENOSYS", h.unique);
                let _ = reply.error(KernelError::ENOSYS);
            }
            Operation::Interrupt(_) => unreachable!("handled above"),
        }
    }
}

/// A served device. Dropping it (or [`Device::stop`]) removes the node.
pub struct Device {
    server: Option<Arc<Server>>,
    gone: Arc<EventFd>,
    config: Config,
    devnum: (u32, u32),
    real: bool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.config.name)
            .field("devnum", &self.devnum)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// The node (`/dev/<name>`).
    pub fn node(&self) -> PathBuf {
        self.config.node()
    }

    /// The device number the kernel registered.
    pub fn devnum(&self) -> (u32, u32) {
        self.devnum
    }

    /// Readable once the connection is gone (all readers saw it end): for a main loop's poll.
    pub fn gone_fd(&self) -> BorrowedFd<'_> {
        self.gone.as_fd()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.server.as_ref().map_or(0, |s| s.chan.in_flight())
    }

    /// Reader threads now (the pool grows with concurrent requests up to [`Config::threads`]).
    pub fn readers(&self) -> usize {
        self.server.as_ref().map_or(0, |s| s.readers())
    }

    /// Stops the readers (each finishes the request it is handling), then closes the fd: the
    /// kernel removes the node, and clients that still hold it open get ENODEV/ENOTCONN.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(server) = &self.server {
            server.stop.store(true, Ordering::Release);
            server.unpark_all();
            // Once `stop` is seen under the pool's lock no reader is added: take them until
            // none is left (one may have been added just before).
            loop {
                let readers =
                    std::mem::take(&mut *server.readers.lock().unwrap_or_else(|e| e.into_inner()));
                if readers.is_empty() {
                    break;
                }
                for t in readers {
                    // A reader sees the flag when its read returns: the signal makes it return
                    // EINTR. It may land just before the reader enters read(2), so it is sent
                    // again until the reader has left (a reader busy with a request finishes
                    // it first).
                    while !t.is_finished() {
                        // SAFETY: the thread is not joined yet, so its pthread_t is valid; the
                        // signal has an empty handler.
                        unsafe { libc::pthread_kill(t.as_pthread_t(), server.wake) };
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if t.join().is_err() {
                        log::error!("bug: a reader thread panicked");
                    }
                }
            }
        }
        if let Some(server) = self.server.take() {
            match Arc::try_unwrap(server) {
                Ok(server) => drop(server), // closes /dev/cuse
                Err(_) => log::error!("bug: the connection is still referenced after stop"),
            }
        }
        if self.real {
            // sysfs goes synchronously with the close; devtmpfs removes the node shortly after.
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.config.node().exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuse::abi::{
        CUSE_INIT, FUSE_INTERRUPT, FUSE_IOCTL, FUSE_OPEN, FUSE_POLL, FUSE_READ, FUSE_RELEASE,
        FUSE_WRITE, IoctlIn, OutHeader, encode_ioctl_in, encode_request,
    };
    use std::sync::Mutex;
    use std::sync::mpsc;

    /// Records every call; ioctl 0x6b64 blocks while `hold` is set.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        hold: (Mutex<bool>, std::sync::Condvar),
    }

    impl Recorder {
        fn set_hold(&self, on: bool) {
            *self.hold.0.lock().unwrap() = on;
            self.hold.1.notify_all();
        }
        fn wait_calls(&self, n: usize) {
            eventually(&format!("{n} calls"), || {
                self.calls.lock().unwrap().len() >= n
            });
        }
    }

    /// Waits for `cond`, failing the test (`what` not reached) after 5 s.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{what}: not reached in 5 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    impl FileOperations for Recorder {
        fn open(&self, f: &File) -> Result<(), KernelError> {
            self.calls.lock().unwrap().push(format!("open {}", f.fh));
            Ok(())
        }
        fn release(&self, f: &File) {
            self.calls.lock().unwrap().push(format!("release {}", f.fh));
        }
        fn unlocked_ioctl(&self, f: &File, cmd: u32, arg: u64) -> Result<i32, KernelError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("ioctl {} {cmd:#x} {arg}", f.fh));
            if cmd == 0x6b64 {
                let mut held = self.hold.0.lock().unwrap();
                while *held {
                    held = self.hold.1.wait(held).unwrap();
                }
            }
            match cmd {
                0x6b02 => Ok(0),
                0x6b05 => Ok(arg as i32),
                0x6b64 => Ok(1),
                _ => Err(KernelError::ENOTTY),
            }
        }
        fn compat_ioctl(&self, _f: &File, cmd: u32, _arg: u64) -> Result<i32, KernelError> {
            self.calls.lock().unwrap().push(format!("compat {cmd:#x}"));
            Ok(32)
        }
    }

    /// The "kernel" side of a test connection.
    struct Kernel {
        fd: OwnedFd,
    }

    impl Kernel {
        fn send(&self, opcode: u32, unique: u64, body: &[u8]) {
            let buf = encode_request(opcode, unique, 1234, body);
            nix::unistd::write(&self.fd, &buf).unwrap();
        }
        fn send_raw(&self, buf: &[u8]) {
            nix::unistd::write(&self.fd, buf).unwrap();
        }
        /// The next reply (waits up to 5 s).
        fn recv(&self) -> (OutHeader, Vec<u8>) {
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            assert_eq!(
                poll(&mut fds, PollTimeout::from(5000u16)).unwrap(),
                1,
                "no reply"
            );
            let mut buf = [0u8; 8192];
            let n = nix::unistd::read(&self.fd, &mut buf).unwrap();
            let h = OutHeader::decode(&buf[..n]).unwrap();
            assert_eq!(h.len as usize, n);
            (h, buf[16..n].to_vec())
        }
        fn ioctl(&self, unique: u64, fh: u64, flags: u32, cmd: u32, arg: u64) {
            let body = encode_ioctl_in(&IoctlIn {
                fh,
                flags,
                cmd,
                arg,
                ..Default::default()
            });
            self.send(FUSE_IOCTL, unique, &body);
        }
    }

    fn start(threads: usize) -> (Device, Kernel, Arc<Recorder>) {
        let (a, b) = crate::cuse::reply::tests::seqpacket_pair(0);
        nix::fcntl::fcntl(&a, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let kernel = Kernel { fd: b };
        let mut init = Vec::new();
        for v in [7u32, 38, 0, abi::CUSE_UNRESTRICTED_IOCTL] {
            init.extend_from_slice(&v.to_le_bytes());
        }
        kernel.send(CUSE_INIT, 2, &init);
        let config = Config {
            threads,
            ..Config::default()
        };
        let rec = Arc::new(Recorder::default());
        let dev = Cuse::from_fd(a, config)
            .unwrap()
            .start(rec.clone())
            .unwrap();
        let (h, body) = kernel.recv();
        assert_eq!((h.unique, h.error), (2, 0));
        assert_eq!(body.len(), 72 + "DEVNAME=deferred\0".len());
        let word = |i: usize| u32::from_le_bytes(body[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), 7);
        assert_eq!(word(1), 31, "min(kernel 38, ours 31)");
        assert_eq!(word(3), abi::CUSE_UNRESTRICTED_IOCTL);
        assert_eq!((word(4), word(5)), (4096, 4096));
        assert_eq!((word(6), word(7)), (42, 0));
        assert_eq!(&body[72..], b"DEVNAME=deferred\0");
        (dev, kernel, rec)
    }

    #[test]
    fn open_ioctl_release_round_trip() {
        let (dev, k, rec) = start(2);
        k.send(FUSE_OPEN, 4, &[0u8; 8]);
        let (h, body) = k.recv();
        assert_eq!((h.unique, h.error), (4, 0));
        let fh = u64::from_le_bytes(body[..8].try_into().unwrap());
        assert_eq!(fh, 1);
        k.ioctl(6, fh, abi::FUSE_IOCTL_UNRESTRICTED, 0x6b05, 17);
        let (h, body) = k.recv();
        assert_eq!((h.unique, h.error), (6, 0));
        assert_eq!(i32::from_le_bytes(body[..4].try_into().unwrap()), 17);
        assert_eq!(body.len(), 16);
        k.ioctl(8, fh, abi::FUSE_IOCTL_UNRESTRICTED, 0x4008_6b99, 0);
        let (h, body) = k.recv();
        assert_eq!((h.unique, h.error), (8, -(Errno::ENOTTY as i32)));
        assert!(body.is_empty());
        k.ioctl(
            10,
            fh,
            abi::FUSE_IOCTL_COMPAT | abi::FUSE_IOCTL_32BIT,
            0x4004_6b01,
            3,
        );
        let (h, body) = k.recv();
        assert_eq!((h.unique, h.error), (10, 0));
        assert_eq!(i32::from_le_bytes(body[..4].try_into().unwrap()), 32);
        let mut rel = vec![0u8; 24];
        rel[..8].copy_from_slice(&fh.to_le_bytes());
        k.send(FUSE_RELEASE, 12, &rel);
        assert_eq!(k.recv().0.unique, 12);
        dev.stop();
        assert_eq!(
            *rec.calls.lock().unwrap(),
            [
                "open 1",
                "ioctl 1 0x6b05 17",
                "ioctl 1 0x40086b99 0",
                "compat 0x40046b01",
                "release 1"
            ]
        );
    }

    #[test]
    fn read_write_poll_unknown_and_malformed() {
        let (dev, k, _) = start(1);
        k.send(FUSE_READ, 4, &[0u8; 40]);
        assert_eq!(k.recv().0.error, -(Errno::EINVAL as i32));
        let mut w = vec![0u8; 40];
        w[16..20].copy_from_slice(&2u32.to_le_bytes());
        w.extend_from_slice(b"hi");
        k.send(FUSE_WRITE, 6, &w);
        assert_eq!(k.recv().0.error, -(Errno::EINVAL as i32));
        k.send(FUSE_POLL, 8, &[0u8; 24]);
        let (h, body) = k.recv();
        assert_eq!(h.error, 0);
        assert_eq!(
            body,
            abi::PollOut {
                revents: abi::DEFAULT_POLLMASK,
                padding: 0
            }
            .encode()
        );
        k.send(25, 10, &[]); // FUSE_FLUSH: never sent by CUSE
        assert_eq!(
            k.recv().0,
            OutHeader {
                len: 16,
                error: -(Errno::ENOSYS as i32),
                unique: 10
            }
        );
        // A length mismatch with a readable header: answered EIO.
        let mut bad = encode_request(FUSE_OPEN, 12, 0, &[0u8; 8]);
        bad[0] = 99;
        k.send_raw(&bad);
        assert_eq!(
            k.recv().0,
            OutHeader {
                len: 16,
                error: -(Errno::EIO as i32),
                unique: 12
            }
        );
        // A runt: nothing to answer, and the server survives it.
        k.send_raw(&[1, 2, 3]);
        k.ioctl(14, 1, 0, 0x6b02, 0);
        assert_eq!(
            k.recv().0,
            OutHeader {
                len: 32,
                error: 0,
                unique: 14
            }
        );
        dev.stop();
    }

    #[test]
    fn interrupt_answers_a_blocked_request_eintr() {
        let (dev, k, rec) = start(2);
        rec.set_hold(true);
        k.ioctl(20, 1, 0, 0x6b64, 0); // blocks in the file operation
        rec.wait_calls(1);
        assert_eq!(dev.in_flight(), 1);
        k.send(FUSE_INTERRUPT, 21, &20u64.to_le_bytes());
        assert_eq!(
            k.recv().0,
            OutHeader {
                len: 16,
                error: -(Errno::EINTR as i32),
                unique: 20
            }
        );
        rec.set_hold(false); // the operation finishes: its late answer is dropped
        k.ioctl(22, 1, 0, 0x6b02, 0);
        assert_eq!(
            k.recv().0,
            OutHeader {
                len: 32,
                error: 0,
                unique: 22
            },
            "no second answer to 20"
        );
        assert_eq!(dev.in_flight(), 0);
        dev.stop();
    }

    #[test]
    fn a_release_interrupted_before_it_ran_still_releases() {
        // As when the closing task dies of SIGKILL: the INTERRUPT can be read before its RELEASE.
        let (dev, k, rec) = start(1);
        k.send(FUSE_INTERRUPT, 41, &40u64.to_le_bytes());
        let mut rel = vec![0u8; 24];
        rel[..8].copy_from_slice(&7u64.to_le_bytes());
        k.send(FUSE_RELEASE, 40, &rel);
        assert_eq!(
            k.recv().0,
            OutHeader {
                len: 16,
                error: 0,
                unique: 40
            }
        );
        assert!(
            rec.calls.lock().unwrap().contains(&"release 7".to_string()),
            "{:?}",
            rec.calls.lock().unwrap()
        );
        dev.stop();
    }

    #[test]
    fn an_interrupt_read_before_its_target_still_applies() {
        let (dev, k, rec) = start(1);
        k.send(FUSE_INTERRUPT, 31, &30u64.to_le_bytes());
        k.ioctl(30, 1, 0, 0x6b02, 0);
        assert_eq!(
            k.recv().0,
            OutHeader {
                len: 16,
                error: -(Errno::EINTR as i32),
                unique: 30
            }
        );
        assert!(
            rec.calls.lock().unwrap().is_empty(),
            "an interrupted request does not run"
        );
        dev.stop();
    }

    #[test]
    fn many_requests_on_many_threads_are_each_answered_once() {
        let (dev, k, _) = start(4);
        let n = 2000u64;
        let kfd = k.fd.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let k = Kernel { fd: kfd };
            for i in 0..n {
                k.ioctl(100 + 2 * i, 1, 0, 0x6b05, i);
            }
        });
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n {
            let (h, body) = k.recv();
            assert_eq!(h.error, 0);
            let v = i32::from_le_bytes(body[..4].try_into().unwrap()) as u64;
            assert_eq!(
                h.unique,
                100 + 2 * v,
                "each reply carries its request's answer"
            );
            assert!(seen.insert(h.unique), "answered twice: {}", h.unique);
        }
        sender.join().unwrap();
        assert_eq!(seen.len() as u64, n);
        dev.stop();
    }

    #[test]
    fn a_closed_connection_is_reported_on_gone_fd() {
        let (dev, k, _) = start(3);
        drop(k);
        let mut fds = [PollFd::new(dev.gone_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(5000u16)).unwrap(), 1);
        dev.stop();
    }

    #[test]
    fn the_pool_grows_with_concurrent_requests_up_to_its_maximum() {
        let (dev, k, rec) = start(3);
        assert_eq!(dev.readers(), 1, "one reader to begin with");
        rec.set_hold(true);
        // Each held request keeps its reader busy: the next request finds no reader waiting.
        for (i, unique) in [50u64, 51, 52].into_iter().enumerate() {
            k.ioctl(unique, 1, 0, 0x6b64, 0);
            rec.wait_calls(i + 1);
            // A reader that takes a request with no other waiting adds one (up to 3).
            let want = (i + 2).min(3);
            eventually("the pool grown", || dev.readers() >= want);
            assert_eq!(dev.readers(), want, "after {} held requests", i + 1);
        }
        // All three busy: a fourth request waits for one of them.
        k.ioctl(53, 1, 0, 0x6b02, 0);
        let mut fds = [PollFd::new(k.fd.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(200u16)).unwrap(), 0);
        rec.set_hold(false);
        let mut answered: Vec<u64> = (0..4).map(|_| k.recv().0.unique).collect();
        answered.sort();
        assert_eq!(answered, [50, 51, 52, 53]);
        assert_eq!(dev.readers(), 3, "never more than the maximum");
        dev.stop();
    }

    #[test]
    fn requests_one_at_a_time_keep_the_pool_at_two() {
        let (dev, k, _) = start(8);
        for unique in 60..160u64 {
            k.ioctl(unique, 1, 0, 0x6b02, 0);
            assert_eq!(k.recv().0.unique, unique);
        }
        // The first request added a second reader; after it, one always waits.
        assert_eq!(dev.readers(), 2);
        dev.stop();
    }

    #[test]
    fn spins_that_find_no_request_back_off() {
        let (dev, k, _) = start(2);
        let server = dev.server.clone().unwrap();
        assert_eq!(
            server.spin,
            Duration::from_micros(200),
            "the default window"
        );
        let misses = || {
            (
                server.spin_misses.load(Ordering::Relaxed),
                server.spin_skip.load(Ordering::Relaxed),
            )
        };
        // Requests 20 ms apart: every spin runs out. Passed-up chances double: 1, 2, 4, ...
        let mut seen = Vec::new();
        for unique in 70..78u64 {
            k.ioctl(unique, 1, 0, 0x6b02, 0);
            assert_eq!(k.recv().0.unique, unique);
            std::thread::sleep(Duration::from_millis(20));
            seen.push(misses());
        }
        assert_eq!(
            seen,
            [
                (1, 1),
                (1, 0),
                (2, 2),
                (2, 1),
                (2, 0),
                (3, 4),
                (3, 3),
                (3, 2)
            ]
        );
        server.spun(true);
        assert_eq!(
            misses().0,
            0,
            "a spin that finds a request resets the back-off"
        );
        drop(server);
        dev.stop();
    }

    #[test]
    fn no_spinning_while_more_clients_than_cpus_are_active() {
        let (dev, _k, _) = start(2);
        let server = dev.server.clone().unwrap();
        for tid in 1..=server.cpus as u32 + 1 {
            server.note_caller(tid);
        }
        assert_eq!(server.active_clients(), server.cpus + 1);
        assert!(!server.should_spin(), "more clients than CPUs: no spin");
        for _ in 0..RECENT_CALLERS {
            server.note_caller(7);
        }
        assert_eq!(server.active_clients(), 1);
        assert!(server.should_spin(), "one client, nothing in flight: spin");
        drop(server);
        dev.stop();
    }

    #[test]
    fn eight_clients_at_a_time_never_stall_the_pool() {
        // Eight requests outstanding at all times, a new one for each answer, as eight clients
        // do: readers grow, park and come back concurrently; every request must be answered.
        let (dev, k, _) = start(8);
        let kfd = k.fd.try_clone().unwrap();
        let (tx, rx) = mpsc::channel::<u64>();
        let sender = std::thread::spawn(move || {
            let k = Kernel { fd: kfd };
            let mut next = 1000u64;
            for _ in 0..8 {
                k.ioctl(next, 1, 0, 0x6b02, 0);
                next += 1;
            }
            while rx.recv().is_ok() {
                if next < 1000 + 4000 {
                    k.ioctl(next, 1, 0, 0x6b02, 0);
                    next += 1;
                }
            }
        });
        for _ in 0..4000 {
            let (h, _) = k.recv(); // fails after 5 s without an answer: a stall
            assert_eq!(h.error, 0);
            tx.send(h.unique).unwrap();
        }
        drop(tx);
        sender.join().unwrap();
        assert!(dev.server.as_ref().unwrap().active.load(Ordering::Acquire) >= 1);
        dev.stop();
    }

    #[test]
    fn readers_beyond_need_park_and_come_back_first_when_needed() {
        let (dev, k, rec) = start(4);
        let server = dev.server.clone().unwrap();
        // Three held requests: the pool grows to 4 (3 busy, 1 waiting).
        rec.set_hold(true);
        for (i, unique) in [80u64, 81, 82].into_iter().enumerate() {
            k.ioctl(unique, 1, 0, 0x6b64, 0);
            rec.wait_calls(i + 1);
        }
        eventually("4 readers", || dev.readers() == 4);
        rec.set_hold(false);
        for _ in 0..3 {
            k.recv();
        }
        // Requests one at a time: each answer lets its reader check; two stay active.
        for unique in 83..103u64 {
            k.ioctl(unique, 1, 0, 0x6b02, 0);
            assert_eq!(k.recv().0.unique, unique);
        }
        eventually("2 parked", || server.parked().len() == 2);
        assert_eq!(server.active.load(Ordering::Acquire), 2);
        assert_eq!(dev.readers(), 4, "parked, not gone");
        // Two held requests: the second finds the other active reader busy and calls one back.
        rec.set_hold(true);
        k.ioctl(103, 1, 0, 0x6b64, 0);
        rec.wait_calls(23 + 1);
        k.ioctl(104, 1, 0, 0x6b64, 0);
        rec.wait_calls(23 + 2);
        eventually("1 parked", || server.parked().len() == 1);
        assert_eq!(dev.readers(), 4, "called back, none spawned");
        rec.set_hold(false);
        let mut answered = [k.recv().0.unique, k.recv().0.unique];
        answered.sort();
        assert_eq!(answered, [103, 104]);
        drop(server);
        // Stopping wakes the parked readers too.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            dev.stop();
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("stop did not return: a parked reader stayed parked");
    }

    #[test]
    fn stop_interrupts_readers_asleep_in_read() {
        // Started from a thread that blocks every signal (the readers inherit its mask), so the
        // readers must unblock the stop signal themselves.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: a zeroed sigset_t is valid storage for sigfillset.
            let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid set; blocks every signal for this thread only.
            unsafe {
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            }
            let (dev, k, rec) = start(8);
            k.ioctl(40, 1, 0, 0x6b02, 0);
            assert_eq!(k.recv().0.unique, 40);
            std::thread::sleep(Duration::from_millis(50)); // all 8 asleep in read(2)
            let t0 = Instant::now();
            let gone = dev.gone.clone();
            dev.stop();
            tx.send((t0.elapsed(), k, gone, rec)).unwrap();
        });
        let (took, k, gone, rec) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("stop did not return: a reader stayed asleep in read(2)");
        assert!(took < Duration::from_secs(2), "stop took {took:?}");
        let mut buf = [0u8; 64];
        assert_eq!(
            nix::unistd::read(&k.fd, &mut buf),
            Ok(0),
            "the connection is closed once stopped"
        );
        assert_eq!(
            gone.read().err(),
            Some(Errno::EAGAIN),
            "stopped is not gone"
        );
        assert_eq!(rec.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn bad_configs_are_refused() {
        for name in ["", "a/b", "..", "x\0y"] {
            let c = Config {
                name: name.into(),
                ..Config::default()
            };
            assert!(matches!(c.check(), Err(Error::Config(_))), "{name:?}");
        }
        assert!(
            Config {
                threads: 0,
                ..Config::default()
            }
            .check()
            .is_err()
        );
        assert!(Config::default().check().is_ok());
        assert!(Config::default().read_buffer_len() >= 8192);
        let big = Config {
            max_write: 1 << 20,
            ..Config::default()
        };
        assert!(big.read_buffer_len() >= 80 + (1 << 20));
    }

    #[test]
    fn devnum_and_proc_devices_parsing() {
        assert_eq!(parse_devnum("42:0\n"), Some((42, 0)));
        assert_eq!(parse_devnum("x"), None);
        // Character major 1 is `mem` on every Linux.
        if Path::new("/proc/devices").exists() {
            assert_eq!(char_major_holder(1).as_deref(), Some("mem"));
        }
    }

    #[test]
    fn errors_are_one_line() {
        let errs = [
            Error::NoCuse,
            Error::Permission,
            Error::NameTaken("deferred".into()),
            Error::DevnumTaken {
                major: 42,
                minor: 0,
                holder: Some("foo".into()),
            },
        ];
        for e in errs {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
        }
        assert_eq!(
            Error::NameTaken("deferred".into()).to_string(),
            "the device name `deferred` is taken (another deferred running? see /sys/class/cuse/deferred)"
        );
    }
}
