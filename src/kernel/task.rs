//! A counted reference to a process: the userspace `get_task_struct()` / `put_task_struct()`.
//!
//! The lab's MON command takes a reference on a `struct task_struct` so that the task can be
//! inspected after it exits, and its timer checks `task->__state == TASK_DEAD` every second.
//! Here the reference is a file descriptor that names *that* process and no other, whatever
//! happens to its pid number later:
//!
//! - a process (thread-group leader): a pidfd (`pidfd_open(2)`). It polls readable as soon as the
//!   process has exited, reaped or not, so a zombie counts as dead, as TASK_DEAD does.
//! - a thread that is not a group leader (the kernel module accepts any task id): an
//!   `O_DIRECTORY` fd of `/proc/<tgid>/task/<tid>`. procfs pins the directory to the task's
//!   `struct pid`; once the thread is gone, `openat(fd, "stat")` fails, even if the number was
//!   reused meanwhile.
//!
//! Closing the descriptor is `put_task_struct()`. Both checks ([`TaskRef::is_dead`]) are single
//! system calls on descriptors held since the reference was taken: async-signal-safe, so the
//! timer handler (softirq context) may call them.
//!
//! # Scale
//! Polling every reference every second costs one system call per watched process per tick.
//! [`TaskWatch`] puts the pidfds in one epoll set instead: a tick costs one `epoll_wait` with a
//! zero timeout, which returns only the processes that exited. Only thread references (rare)
//! still need a check of their own each tick ([`TaskRef::needs_polling`]).
//!
//! # PID reuse
//! The pid number and comm are read once, in process context, when the reference is taken. The
//! comm is read from `/proc/<pid>/stat` *after* the pidfd exists and trusted only if the pidfd's
//! process had not been reaped once the read finished (its fdinfo still shows the pid): a reaped
//! process cannot come back, so the read was of the process the pidfd names. Otherwise the call
//! answers ESRCH, as if it had come after the process was gone.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};

use super::error::{Error, Result};
use super::sched::TASK_COMM_LEN;

#[derive(Debug)]
enum Handle {
    /// A pidfd: readable once the process has exited.
    Process(OwnedFd),
    /// `/proc/<tgid>/task/<tid>` opened as a directory.
    Thread(OwnedFd),
}

/// A counted reference to a task (process or thread), taken by [`TaskRef::get`].
///
/// Plain data and one descriptor: dropping it frees nothing on the heap, only closes the
/// descriptor (async-signal-safe), so it may be dropped in softirq context.
#[derive(Debug)]
pub struct TaskRef {
    handle: Handle,
    pid: i32,
    comm: [u8; TASK_COMM_LEN],
    comm_len: u8,
    /// Its entry in the table of references held ([`check_leaks`]): kept for its `Drop`.
    _held: Held,
}

/// The references held, for the leak check at unload: a fixed table of pids claimed lock-free
/// (a reference dropped in softirq context only stores 0). Beyond its size, references are
/// counted but not named.
const HELD_SLOTS: usize = 1024;
static HELD: [AtomicI32; HELD_SLOTS] = [const { AtomicI32::new(0) }; HELD_SLOTS];
static HELD_COMM: [[AtomicU8; TASK_COMM_LEN]; HELD_SLOTS] =
    [const { [const { AtomicU8::new(0) }; TASK_COMM_LEN] }; HELD_SLOTS];
static HELD_UNNAMED: AtomicUsize = AtomicUsize::new(0);
static HELD_NEXT: AtomicUsize = AtomicUsize::new(0);

/// One reference's entry in the table (`None`: counted in `HELD_UNNAMED` only).
#[derive(Debug)]
struct Held(Option<usize>);

impl Held {
    /// Records a reference to `pid` (process context).
    fn new(pid: i32, comm: &[u8]) -> Held {
        let start = HELD_NEXT.load(Ordering::Relaxed);
        for i in 0..HELD_SLOTS {
            let slot = (start + i) % HELD_SLOTS;
            if HELD[slot].load(Ordering::Relaxed) == 0
                && HELD[slot]
                    .compare_exchange(0, -1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                for (j, c) in HELD_COMM[slot].iter().enumerate() {
                    c.store(comm.get(j).copied().unwrap_or(0), Ordering::Relaxed);
                }
                HELD[slot].store(pid, Ordering::Release);
                HELD_NEXT.store(slot + 1, Ordering::Relaxed);
                return Held(Some(slot));
            }
        }
        HELD_UNNAMED.fetch_add(1, Ordering::Relaxed);
        Held(None)
    }
}

impl Drop for Held {
    /// `put_task_struct`'s bookkeeping: any context (atomic stores only).
    fn drop(&mut self) {
        match self.0 {
            Some(slot) => HELD[slot].store(0, Ordering::Release),
            None => {
                HELD_UNNAMED.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The task references held right now: (pid, comm) of each named one, and how many more.
pub fn held() -> (Vec<(i32, String)>, usize) {
    let mut named = Vec::new();
    for (slot, pid) in HELD.iter().enumerate() {
        let pid = pid.load(Ordering::Acquire);
        if pid > 0 {
            let comm: Vec<u8> = HELD_COMM[slot]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .take_while(|&c| c != 0)
                .collect();
            named.push((pid, String::from_utf8_lossy(&comm).into_owned()));
        }
    }
    (named, HELD_UNNAMED.load(Ordering::Relaxed))
}

/// The leak check after module `module`'s exit (kmemleak's report): every task reference still
/// held is one the module never put. Reports them, naming the tasks, and taints
/// ([`crate::kernel::bug`]); returns how many. Process context.
pub fn check_leaks(module: &str) -> usize {
    let (named, unnamed) = held();
    let n = named.len() + unnamed;
    if n == 0 {
        return 0;
    }
    crate::kernel::bug::add_taint(crate::kernel::bug::TAINT_WARN);
    crate::pr_err!("kmemleak: {n} new suspected memory leaks (see /sys/kernel/debug/kmemleak)");
    for (pid, comm) in &named {
        crate::pr_err!(
            "unreferenced object: task_struct of pid {pid} ({comm}): a reference \
             (get_task_struct / TaskRef::get) module {module} never put (dropped)"
        );
    }
    if unnamed > 0 {
        crate::pr_err!("unreferenced object: {unnamed} more task_struct references");
    }
    n
}

impl TaskRef {
    /// Looks `pid` up and takes a reference (`find_get_pid` + `get_pid_task` + `get_task_struct`).
    ///
    /// Errors, as the lab's module answers them: no such task (`pid` <= 0, never existed, already
    /// reaped, gone during the call) -> `ESRCH`; out of descriptors -> `ENOMEM` (the kernel's
    /// allocation failure).
    pub fn get(pid: i32) -> Result<TaskRef> {
        if pid <= 0 {
            return Err(Error::ESRCH);
        }
        match pidfd_open(pid) {
            Ok(fd) => {
                let (comm, comm_len) = read_comm(&format!("/proc/{pid}/stat"))?;
                // Trust the comm only if the process was not reaped before the read ended.
                if pidfd_pid(&fd) != Some(pid) {
                    return Err(Error::ESRCH);
                }
                Ok(TaskRef {
                    handle: Handle::Process(fd),
                    pid,
                    _held: Held::new(pid, &comm[..comm_len as usize]),
                    comm,
                    comm_len,
                })
            }
            // Not a thread-group leader: EINVAL before Linux 6.9, ENOENT after.
            Err(Error::EINVAL | Error::ENOENT) => Self::get_thread(pid),
            Err(e) => Err(resource_errno(e)),
        }
    }

    fn get_thread(tid: i32) -> Result<TaskRef> {
        let tgid = thread_group(tid).ok_or(Error::ESRCH)?;
        let dir = format!("/proc/{tgid}/task/{tid}");
        let path = std::ffi::CString::new(dir.clone()).map_err(|_| Error::ESRCH)?;
        // SAFETY: `path` is a valid NUL-terminated string; the flags open a directory read-only.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(resource_errno(Error::last()));
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let (comm, comm_len) = read_comm(&format!("{dir}/stat"))?;
        let task = TaskRef {
            handle: Handle::Thread(fd),
            pid: tid,
            _held: Held::new(tid, &comm[..comm_len as usize]),
            comm,
            comm_len,
        };
        // The directory was opened before the read: if it still names a live thread, the read
        // was of that thread.
        if task.is_dead() {
            return Err(Error::ESRCH);
        }
        Ok(task)
    }

    /// The task's id as the caller gave it (`task->pid`).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The task's comm when the reference was taken (`task->comm`).
    pub fn comm(&self) -> &str {
        std::str::from_utf8(&self.comm[..usize::from(self.comm_len)]).unwrap_or("?")
    }

    /// The comm as raw bytes (for printing without allocation).
    pub fn comm_bytes(&self) -> &[u8] {
        &self.comm[..usize::from(self.comm_len)]
    }

    /// True for a thread reference, which [`TaskWatch`] cannot watch: check it with
    /// [`TaskRef::is_dead`] each tick instead.
    pub fn needs_polling(&self) -> bool {
        matches!(self.handle, Handle::Thread(_))
    }

    /// The pidfd, for a process reference.
    pub fn pidfd(&self) -> Option<RawFd> {
        match &self.handle {
            Handle::Process(fd) => Some(fd.as_raw_fd()),
            Handle::Thread(_) => None,
        }
    }

    /// Has the task terminated (TASK_DEAD: exited, reaped or not)? False when the check itself
    /// fails for want of resources (out of descriptors): the caller looks again later.
    ///
    /// Async-signal-safe: one `poll` with a zero timeout, or one `openat` + `close`, and no
    /// allocation. Safe to call in softirq context.
    pub fn is_dead(&self) -> bool {
        match &self.handle {
            Handle::Process(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                loop {
                    // SAFETY: `pfd` is one valid pollfd; a zero timeout never blocks.
                    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
                    if n >= 0 {
                        return n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0;
                    }
                    if Error::last() != Error::EINTR {
                        return false;
                    }
                }
            }
            Handle::Thread(dir) => {
                // SAFETY: `dir` is an open directory descriptor and the name a static C string.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        c"stat".as_ptr(),
                        libc::O_RDONLY | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return gone(Error::last());
                }
                let mut buf = [0u8; 512];
                // SAFETY: reading into a stack buffer of the given length from a fd we own.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                let err = Error::last();
                // SAFETY: `fd` was opened above and is closed once.
                unsafe { libc::close(fd) };
                if n < 0 {
                    return gone(err);
                }
                matches!(stat_state(&buf[..n as usize]), Some(b'Z' | b'X' | b'x'))
            }
        }
    }
}

/// Does a failed `openat`/`read` of a thread's `stat` say the thread is gone? Only ENOENT (the
/// task's directory is empty once it is reaped) and ESRCH (procfs found no task behind the
/// directory) do. Anything else (EMFILE and ENFILE when every descriptor is taken, ENOMEM,
/// EINTR) says nothing about the thread: "unknown", and the next tick looks again.
fn gone(err: Error) -> bool {
    matches!(err, Error::ENOENT | Error::ESRCH)
}

/// The state letter of a `/proc/.../stat` line: the first field after the comm's `)`.
fn stat_state(stat: &[u8]) -> Option<u8> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).copied()
}

/// Reads the comm from a `stat` file: between the first `(` and the last `)`.
fn read_comm(path: &str) -> Result<([u8; TASK_COMM_LEN], u8)> {
    // Out of descriptors (the pidfd may have taken the last one) is ENOMEM, not "no such task".
    let stat = fs::read(path).map_err(|e| resource_errno(Error::from(e)))?;
    let open = stat.iter().position(|&b| b == b'(').ok_or(Error::ESRCH)?;
    let close = stat.iter().rposition(|&b| b == b')').ok_or(Error::ESRCH)?;
    let name = stat.get(open + 1..close).ok_or(Error::ESRCH)?;
    let len = name.len().min(TASK_COMM_LEN - 1);
    let mut comm = [0u8; TASK_COMM_LEN];
    comm[..len].copy_from_slice(&name[..len]);
    Ok((comm, len as u8))
}

/// The thread group of a task id, from `/proc/<tid>/status`.
fn thread_group(tid: i32) -> Option<i32> {
    let status = procfs::process::Process::new(tid).ok()?.status().ok()?;
    Some(status.tgid)
}

fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Error::last());
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns. pidfds are O_CLOEXEC.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The pid a pidfd names now, from its fdinfo; `None` once the process has been reaped (-1).
fn pidfd_pid(fd: &OwnedFd) -> Option<i32> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let line = info.lines().find_map(|l| l.strip_prefix("Pid:"))?;
    line.trim().parse().ok().filter(|&p: &i32| p > 0)
}

/// Out of descriptors or memory is the kernel's ENOMEM; anything else means the task is gone.
fn resource_errno(e: Error) -> Error {
    match e {
        // ENOSPC: epoll's max_user_watches reached.
        Error::EMFILE | Error::ENFILE | Error::ENOMEM | Error::ENOSPC => Error::ENOMEM,
        _ => Error::ESRCH,
    }
}

/// Watches many process references at once: a tick asks which exited, at a cost that grows with
/// the processes that exited, not with those watched.
///
/// # Ground rules
/// The epoll descriptor is created and filled in process context ([`TaskWatch::add`]);
/// [`TaskWatch::ready`] is a single `epoll_wait` and may run in softirq context. Closing a pidfd
/// (dropping its [`TaskRef`]) removes it from the set by itself.
#[derive(Debug)]
pub struct TaskWatch {
    epfd: OwnedFd,
}

impl TaskWatch {
    /// An empty set.
    pub fn new() -> Result<TaskWatch> {
        // SAFETY: epoll_create1 takes flags and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(resource_errno(Error::last()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TaskWatch { epfd })
    }

    /// Watches `task` (a process reference) under `token`, which [`TaskWatch::ready`] returns,
    /// once, after it exits. A thread reference is refused with EINVAL: poll it instead.
    pub fn add(&self, task: &TaskRef, token: u64) -> Result<()> {
        let fd = task.pidfd().ok_or(Error::EINVAL)?;
        let mut ev = libc::epoll_event {
            // One-shot: an exit is reported once, so repeated `epoll_wait`s in one `ready` never
            // return a process twice (level-triggered items would come back at the tail).
            events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open and `ev` is a valid event.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(resource_errno(Error::last()));
        }
        Ok(())
    }

    /// Fills `out` with the tokens of watched processes that have exited and returns how many
    /// (all of them, up to `out.len()`). Each exit is reported once: the caller owns it from then
    /// on; exits that did not fit in `out` are reported by the next call.
    ///
    /// Async-signal-safe: `epoll_wait` with a zero timeout into a stack buffer, repeated while
    /// batches come back full (no allocation).
    pub fn ready(&self, out: &mut [u64]) -> usize {
        const BATCH: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let mut filled = 0;
        while filled < out.len() {
            let want = (out.len() - filled).min(BATCH);
            // SAFETY: `events` has room for `want` <= BATCH entries; a zero timeout never blocks.
            let n = unsafe {
                libc::epoll_wait(self.epfd.as_raw_fd(), events.as_mut_ptr(), want as i32, 0)
            };
            if n < 0 {
                if Error::last() == Error::EINTR {
                    continue;
                }
                break;
            }
            let n = n as usize;
            for (slot, ev) in out[filled..].iter_mut().zip(&events[..n]) {
                *slot = ev.u64;
            }
            filled += n;
            if n < want {
                break;
            }
        }
        filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_letter_follows_the_last_paren() {
        assert_eq!(stat_state(b"12 (a) b) R 1 2"), Some(b'R'));
        assert_eq!(stat_state(b"12 (sleep) Z 1"), Some(b'Z'));
        assert_eq!(stat_state(b"garbage"), None);
    }

    #[test]
    fn comm_is_truncated_to_fifteen_bytes() {
        let dir = std::env::temp_dir().join(format!("task-comm-{}", std::process::id()));
        fs::write(&dir, "7 (a_very_long_name_here) S 1").unwrap();
        let (comm, len) = read_comm(dir.to_str().unwrap()).unwrap();
        fs::remove_file(&dir).unwrap();
        assert_eq!(&comm[..len as usize], b"a_very_long_nam");
    }

    #[test]
    fn nonpositive_pids_do_not_exist() {
        for pid in [0, -1, i32::MIN] {
            assert_eq!(TaskRef::get(pid).unwrap_err(), Error::ESRCH);
        }
    }
}
