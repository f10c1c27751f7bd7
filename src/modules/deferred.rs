//! Exercises 3, 4, 5 and 7: `/dev/deferred`, a device-wide timer driven by ioctls.
//!
//! The lab's `3-4-5-deferred` module, on the runtime. One timer and one `flag` for the whole
//! device, shared by every opener (the last command wins):
//!
//! | ioctl | process context (the ioctl) | softirq context (the timer) |
//! |---|---|---|
//! | `MY_IOCTL_TIMER_SET n` | flag = SET; `mod_timer(jiffies + n*HZ)` | print the interrupted task |
//! | `MY_IOCTL_TIMER_CANCEL` | `del_timer` | - |
//! | `MY_IOCTL_TIMER_ALLOC n` | flag = ALLOC; `mod_timer(jiffies + n*HZ)` | `schedule_work`: `alloc_io()` sleeps 5 s on `events/N` (exercise 5), or, with `--alloc-io-direct`, `alloc_io()` right in the timer (exercise 4: the kernel's BUG reports) |
//! | `MY_IOCTL_TIMER_MON pid` | take a reference on the task, add it under `spin_lock_bh`; flag = MON; `mod_timer(jiffies + HZ)` | under `spin_lock`, report and drop every task that has terminated, newest first; re-arm for a second later |
//!
//! Every expiry first prints `[timer_handler] pid = <pid>, comm = <comm>` of the thread the
//! timer signal interrupted (the lab prints `current`: on its idle VM, `swapper/0`).
//!
//! # Huge timeouts
//! `jiffies + n * HZ` is computed in wrapping 64-bit arithmetic, as the kernel's `unsigned long`
//! does, and the runtime treats the result as the kernel's timer code does: an expiry that is
//! not after now (the product wrapped past half the range) fires at the next tick; anything else
//! waits as asked. Nothing overflows, panics or is refused: the kernel returns 0 too.
//!
//! # The monitored list, at scale
//! The lab walks its list and reads `task->__state` of each entry every second. Here a task
//! reference is a pidfd ([`TaskRef`]); all of them sit in one epoll set ([`TaskWatch`]), so a
//! tick costs one `epoll_wait` plus the work for the tasks that did exit, however many are
//! watched. Thread ids (not thread-group leaders) cannot be in the set and are checked one by one
//! each tick (they are rare: the lab's users monitor processes).
//!
//! # Ground rules (shared with the timer, i.e. softirq context)
//! - `Shared::flag`: an atomic; written by ioctls, read by the timer (the lab's plain int).
//! - `Shared::mon`: a [`SpinLock`]; process context takes it with `lock_bh()`, the timer with
//!   `lock()`, as the lab requires (exercise 7). Everything the timer does under it is
//!   allocation-free: entries live in a slab whose capacity process context reserves before
//!   adding, a dead entry's slot goes back on a free list within that capacity, and dropping a
//!   [`TaskRef`] only closes a descriptor.
//! - `Shared::work`: the runtime's work item; `schedule_work` is lock-free and signal-safe.
//!
//! The `TODO N` comments are the lab's steps (`scripts/lab new` strips the lines after each):
//! 1 the timer (exercise 3), 2 the flag (exercise 4), 3 the work item (exercise 5), 4 the
//! monitored list (exercise 7).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use super::abi::{Command, ioctl_command_to_string};
use crate::kernel::error::{Error, Result};
use crate::kernel::fs::{File, FileOperations};
use crate::kernel::jiffies::{HZ, jiffies};
use crate::kernel::sched::{current, schedule_timeout};
use crate::kernel::spinlock::SpinLock;
use crate::kernel::task::{TaskRef, TaskWatch};
use crate::kernel::timer::{Timer, TimerList};
use crate::kernel::workqueue::{self, Work, flush_scheduled_work, schedule_work};
use crate::module::{Module, ModuleInfo, Param};
use crate::{impl_has_work, pr_debug, pr_err, pr_info};

/// `TIMER_TYPE_NONE`: nothing armed yet.
pub const TIMER_TYPE_NONE: i32 = -1;
/// `TIMER_TYPE_SET`: print and stop.
pub const TIMER_TYPE_SET: i32 = 0;
/// `TIMER_TYPE_ALLOC`: run `alloc_io()` (through a work item).
pub const TIMER_TYPE_ALLOC: i32 = 1;
/// `TIMER_TYPE_MON`: check the monitored tasks, every second.
pub const TIMER_TYPE_MON: i32 = 2;

/// Tasks reported dead per batch in one tick (a stack buffer in softirq context); more exits in
/// one tick are handled in further batches of the same tick.
const DEAD_BATCH: usize = 256;

/// `alloc_io_direct=1`: exercise 4.
pub const ALLOC_IO_DIRECT: Param<bool> = Param::new(
    "alloc_io_direct",
    false,
    "exercise 4: call alloc_io() right in the timer handler (the kernel's BUG reports) instead of \
     through a work item (exercise 5)",
);

/// The module: `deferred [deferred] [alloc_io_direct=1]`.
pub const MODULE: ModuleInfo = ModuleInfo {
    name: "deferred",
    description: "exercises 3-4-5-7: /dev/deferred, timer set/cancel, alloc work, pid monitor",
    params: &[&ALLOC_IO_DIRECT],
    has_device: true,
    init: |params| {
        let opts = Options {
            alloc_io_direct: params.get(&ALLOC_IO_DIRECT),
        };
        Ok(Box::new(DeferredModule::load(opts)?))
    },
};

/// Options of the module (its parameters).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Exercise 4: call `alloc_io()` from the timer itself instead of through a work item.
    pub alloc_io_direct: bool,
}

/// One monitored task (`struct mon_proc`).
struct MonProc {
    task: TaskRef,
    /// Insertion order: larger is newer (the lab's `list_add` puts new entries first).
    seq: u64,
}

/// The monitored list: a slab of entries, their free slots, and the epoll set of their pidfds.
struct MonList {
    slots: Vec<Option<MonProc>>,
    free: Vec<usize>,
    /// Slots holding thread references, checked one by one each tick.
    polled: Vec<usize>,
    watch: TaskWatch,
    next_seq: u64,
    live: usize,
}

impl MonList {
    fn new() -> Result<MonList> {
        Ok(MonList {
            slots: Vec::new(),
            free: Vec::new(),
            polled: Vec::new(),
            watch: TaskWatch::new()?,
            next_seq: 0,
            live: 0,
        })
    }

    /// `list_add`: process context, under `lock_bh`. Reserves every capacity the timer could
    /// need to remove this entry later, so the timer never allocates.
    fn add(&mut self, task: TaskRef) -> Result<()> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        // Room for every slot on the free list and the polled list: pushes in the timer then
        // stay within capacity.
        self.free.reserve(self.slots.len() - self.free.len());
        if task.needs_polling() {
            self.polled.reserve(1);
            self.polled.push(slot);
        } else if let Err(e) = self.watch.add(&task, slot as u64) {
            self.free.push(slot);
            return Err(e);
        }
        self.next_seq += 1;
        self.slots[slot] = Some(MonProc {
            task,
            seq: self.next_seq,
        });
        self.live += 1;
        Ok(())
    }

    /// The timer's walk: report and drop every terminated task, newest first. Softirq context,
    /// under `lock()`: no allocation (fixed stack buffers, pushes within reserved capacity).
    fn reap(&mut self) {
        loop {
            let mut dead = [0u64; DEAD_BATCH];
            let mut n = self.watch.ready(&mut dead);
            // Thread entries: one check each.
            let mut i = 0;
            while i < self.polled.len() && n < DEAD_BATCH {
                let slot = self.polled[i];
                let dead_now = self
                    .slots
                    .get(slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|p| p.task.is_dead());
                if dead_now {
                    dead[n] = slot as u64;
                    n += 1;
                    self.polled.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if n == 0 {
                return;
            }
            // Newest first, as the lab's list (list_add at the head) is walked.
            let batch = &mut dead[..n];
            batch.sort_unstable_by_key(|&s| {
                let entry = self.slots.get(s as usize).and_then(Option::as_ref);
                std::cmp::Reverse(entry.map_or(0, |p| p.seq))
            });
            for &s in batch.iter() {
                let s = s as usize;
                // `get_mut`, not indexing: no panic path in softirq context.
                if let Some(p) = self.slots.get_mut(s).and_then(Option::take) {
                    pr_info!(
                        "task {} ({}) is dead",
                        // Comm bytes as printed by the kernel's %s.
                        Bytes(p.task.comm_bytes()),
                        p.task.pid()
                    );
                    // put_task_struct: closes the pidfd, which also leaves the epoll set.
                    drop(p);
                    self.free.push(s);
                    self.live = self.live.saturating_sub(1);
                }
            }
            if n < DEAD_BATCH {
                return;
            }
        }
    }

    /// Drops every entry (module exit): process context.
    fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.polled.clear();
        self.live = 0;
    }
}

/// Prints bytes as the kernel's `%s` would (invalid UTF-8 shown lossily, without allocation).
struct Bytes<'a>(&'a [u8]);

impl std::fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("?")?;
            }
        }
        Ok(())
    }
}

/// What the timer handler reaches (`from_timer`): the lab's `struct my_device_data` less the
/// cdev and the timer itself.
struct Shared {
    /// `INIT_WORK(&dev->work, work_handler)`. Declared first: dropped (and so cancelled)
    /// before the fields its handler could use.
    work: Work<Shared>,
    flag: AtomicI32,
    mon: SpinLock<MonList>,
    alloc_io_direct: bool,
    /// Ioctls served (for tests and the soak checker).
    ioctls: AtomicU64,
}

impl_has_work!(Shared, work);

/// The lab's `alloc_io()`: a blocking operation (5 s). In the timer (exercise 4) the runtime
/// reports the kernel's BUGs and does not sleep.
fn alloc_io() {
    schedule_timeout(5 * HZ);
    pr_info!("Yawn! I've been sleeping for 5 seconds.");
}

/// The work handler: process context, on `events/N` (exercise 5).
fn work_handler(_dev: &Shared) {
    // TODO 3: the work's job, in process context (it may sleep): `alloc_io()`.
    alloc_io();
}

/// Are debug lines wanted? One atomic load (`log`'s max level): signal-safe.
fn debug_on() -> bool {
    log::max_level() >= log::LevelFilter::Debug
}

/// The timer handler: softirq context.
fn timer_handler(timer: &Timer<Shared>) {
    let dev = timer.data();
    // For the debug line: an ioctl re-arming right now can make `expires` the new, later one.
    let (expires, now) = (timer.expires(), jiffies());
    // TODO 1/2: print the task the timer interrupted, "[timer_handler] pid = PID, comm = COMM":
    // `current()` (kernel::sched) and its `pid()`, `comm()`.
    let cur = current();
    pr_info!("[timer_handler] pid = {}, comm = {}", cur.pid(), cur.comm());
    if debug_on() {
        pr_debug!("[timer_handler] expires = {expires}, jiffies = {now}");
    }
    // TODO 2/5: act on the command the ioctl left in `dev.flag` (an atomic: load with
    // Acquire): TIMER_TYPE_ALLOC -> `on_alloc(dev)`, TIMER_TYPE_MON -> `on_mon(timer)`,
    // TIMER_TYPE_SET -> nothing more.
    match dev.flag.load(Ordering::Acquire) {
        TIMER_TYPE_ALLOC => on_alloc(dev),
        TIMER_TYPE_MON => on_mon(timer),
        _ => {}
    }
}

/// ALLOC expired: softirq context.
fn on_alloc(dev: &Shared) {
    if dev.alloc_io_direct {
        // TODO 2: exercise 4 (`alloc_io_direct=1`): call `alloc_io()` right here, in the timer
        // (the runtime prints the kernel's BUG: a sleeping function in atomic context).
        alloc_io();
        return;
    }
    // TODO 3/4: exercise 5: do not block here; queue the device's work item instead, which
    // runs `work_handler` in process context on `events/0`: `schedule_work` (kernel::workqueue,
    // lock-free) on `dev` pinned (`Pin::new_unchecked`: the timer keeps it at a fixed address).
    // SAFETY: `dev` is the data of a `TimerList`, which keeps its node (and so `dev`) boxed at
    // a fixed address until it is dropped: it never moves.
    let pinned = unsafe { Pin::new_unchecked(dev) };
    schedule_work(pinned);
}

/// A MON tick: softirq context.
fn on_mon(timer: &Timer<Shared>) {
    // TODO 4/6: report and drop every monitored task that has terminated: `reap()` the list
    // under `timer.data().mon.lock()` (a plain spin_lock: bottom halves are off in softirq
    // context), then re-arm the timer one second (HZ) from now: `mod_timer`.
    timer.data().mon.lock().reap();
    let next = jiffies().wrapping_add(HZ);
    timer.mod_timer(next);
    if debug_on() {
        pr_debug!("[timer_handler] re-armed, expires = {next}");
    }
}

/// The device: its timer, which carries everything else.
pub struct DeferredDevice {
    timer: TimerList<Shared>,
    /// Serializes the ioctls' timer operations with their debug lines (process context only).
    ctl: std::sync::Mutex<()>,
}

impl DeferredDevice {
    /// `deferred_init`'s device part: flag NONE, the work item, the lock and list, the timer.
    pub fn new(opts: Options) -> Result<DeferredDevice> {
        workqueue::init()?;
        let shared = Shared {
            work: Work::new(work_handler),
            flag: AtomicI32::new(TIMER_TYPE_NONE),
            mon: SpinLock::new("deferred_lock", MonList::new()?),
            alloc_io_direct: opts.alloc_io_direct,
            ioctls: AtomicU64::new(0),
        };
        let timer = TimerList::declare(shared);
        // TODO 1: set the timer up with its handler: `timer.timer_setup(timer_handler)`.
        timer.timer_setup(timer_handler);
        Ok(DeferredDevice {
            timer,
            ctl: std::sync::Mutex::new(()),
        })
    }

    fn dev(&self) -> &Shared {
        self.timer.data()
    }

    /// The current `flag` (TIMER_TYPE_*).
    pub fn flag(&self) -> i32 {
        self.dev().flag.load(Ordering::Acquire)
    }

    /// Is the device's timer armed?
    pub fn timer_pending(&self) -> bool {
        self.timer.timer_pending()
    }

    /// The jiffy the timer was last armed for.
    pub fn expires(&self) -> u64 {
        self.timer.expires()
    }

    /// Is the work item's handler (`alloc_io`) running now?
    pub fn work_running(&self) -> bool {
        self.dev().work.running()
    }

    /// How many tasks are monitored.
    pub fn monitored(&self) -> usize {
        self.dev().mon.lock_bh().live
    }

    /// Ioctls served so far.
    pub fn ioctls(&self) -> u64 {
        self.dev().ioctls.load(Ordering::Relaxed)
    }

    /// Arms the timer `seconds` from now, in the kernel's unsigned long arithmetic.
    ///
    /// With debug output on (`deferred -v`, or `RUST_LOG=info,printk=debug`) it also prints the
    /// argument, the expiry and the jiffy, in the order of the arming (under `ctl`), for the soak
    /// checker; the default output is the lab's.
    fn arm_in(&self, seconds: u64) {
        let _ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let now = jiffies();
        let expires = now.wrapping_add(seconds.wrapping_mul(HZ));
        // TODO 1: arm the device's timer for `expires`: `self.timer.mod_timer(expires)` (it
        // moves the timer if it is pending already).
        self.timer.mod_timer(expires);
        if debug_on() {
            pr_debug!("[deferred_ioctl] arg = {seconds}, expires = {expires}, jiffies = {now}");
        }
    }

    /// `del_timer`, with its debug line in order with the armings.
    fn cancel(&self) {
        let _ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        // TODO 1: deactivate the timer: `self.timer.del_timer()`.
        self.timer.del_timer();
        if debug_on() {
            pr_debug!("[deferred_ioctl] cancelled");
        }
    }

    /// `deferred_exit`'s teardown (after the device is gone): `del_timer_sync`,
    /// `flush_scheduled_work` (a running ALLOC work is waited for), drop every monitored task.
    pub fn shutdown(&self) {
        // TODO 1: stop the timer and wait for a running handler: `self.timer.del_timer_sync()`.
        self.timer.del_timer_sync();
        // TODO 3: wait for the work item, queued or running: `flush_scheduled_work()`.
        flush_scheduled_work();
        // TODO 4: drop (put) every task left in the list: `clear()` it under `lock_bh()`.
        self.dev().mon.lock_bh().clear();
    }
}

impl FileOperations for DeferredDevice {
    fn open(&self, _file: &File) -> Result<()> {
        pr_info!("[deferred_open] Device opened");
        Ok(())
    }

    fn release(&self, _file: &File) {
        pr_info!("[deferred_release] Device released");
    }

    fn unlocked_ioctl(&self, _file: &File, cmd: u32, arg: u64) -> Result<i32> {
        let dev = self.dev();
        dev.ioctls.fetch_add(1, Ordering::Relaxed);
        pr_info!("[deferred_ioctl] Command: {}", ioctl_command_to_string(cmd));
        match Command::from_cmd(cmd) {
            Some(Command::Set) => {
                // TODO 2: tell the handler what to do: `dev.flag` = TIMER_TYPE_SET (Release).
                dev.flag.store(TIMER_TYPE_SET, Ordering::Release);
                self.arm_in(arg);
            }
            Some(Command::Cancel) => self.cancel(),
            Some(Command::Alloc) => {
                // TODO 2: `dev.flag` = TIMER_TYPE_ALLOC (Release).
                dev.flag.store(TIMER_TYPE_ALLOC, Ordering::Release);
                self.arm_in(arg);
            }
            Some(Command::Mon) => {
                // The kernel's pid_t is an int: the low 32 bits of the argument, sign and all
                // (so -1 arrives as -1 from a 32- or a 64-bit caller), as find_vpid(arg) sees it.
                let pid = arg as u32 as i32;
                // TODO 4/10: take a reference on the task, `TaskRef::get(pid)` (kernel::task: the
                // kernel's get_proc, ESRCH if there is none), and add it to the list under
                // `dev.mon.lock_bh()` (the timer takes the lock too: bottom halves off).
                let task = match TaskRef::get(pid) {
                    // Out of descriptors: the dead entries still hold theirs until a MON tick
                    // reports them (the timer may not be in MON mode any more): report them now.
                    Err(Error::ENOMEM) => {
                        dev.mon.lock_bh().reap();
                        TaskRef::get(pid)?
                    }
                    r => r?,
                };
                dev.mon.lock_bh().add(task)?;
                // TODO 2: `dev.flag` = TIMER_TYPE_MON (Release).
                dev.flag.store(TIMER_TYPE_MON, Ordering::Release);
                self.arm_in(1);
            }
            None => return Err(Error::ENOTTY),
        }
        Ok(0)
    }
}

/// The loaded module.
pub struct DeferredModule {
    dev: Arc<DeferredDevice>,
}

impl DeferredModule {
    /// `insmod deferred.ko`: `[deferred_init] Init module`, then the device.
    pub fn load(opts: Options) -> Result<DeferredModule> {
        pr_info!("[deferred_init] Init module");
        let dev = DeferredDevice::new(opts).inspect_err(|e| {
            pr_err!("[deferred_init] cannot set up the device: {e}");
        })?;
        Ok(DeferredModule { dev: Arc::new(dev) })
    }

    /// The device (for in-process tests).
    pub fn device(&self) -> &Arc<DeferredDevice> {
        &self.dev
    }
}

impl Module for DeferredModule {
    fn file_operations(&self) -> Option<Arc<dyn FileOperations>> {
        Some(self.dev.clone())
    }

    fn exit(&mut self) {
        pr_info!("[deferred_exit] Exit module");
        self.dev.shutdown();
    }
}
