//! `timer_list`: one-shot timers in jiffies whose handlers run in softirq context.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
//! use deferred::kernel::{jiffies::{jiffies, HZ}, timer::{Timer, TimerList}};
//!
//! struct Dev { nseconds: AtomicU64 }
//!
//! fn timer_handler(t: &Timer<Dev>) {
//!     let dev = t.data();                                  // from_timer(dev, t, timer)
//!     let n = dev.nseconds.fetch_add(1, Relaxed) + 1;
//!     deferred::pr_info!("[timer_handler] nseconds = {}", n);
//!     t.mod_timer(jiffies() + HZ);                       // periodic: re-arm from the handler
//! }
//!
//! deferred::kernel::start()?;
//! let timer = TimerList::new(timer_handler, Dev { nseconds: AtomicU64::new(0) });
//! timer.mod_timer(jiffies() + 1);
//! while timer.data().nseconds.load(Relaxed) == 0 {      // the first expiry, a jiffy later
//!     std::thread::yield_now();
//! }
//! timer.del_timer_sync();                                // also done by Drop
//! assert!(!timer.timer_pending());
//! # Ok::<(), deferred::kernel::error::Error>(())
//! ```
//!
//! # Reaching the container (the kernel's `from_timer`)
//! In C the container embeds the `timer_list` and the handler goes back with `container_of`.
//! Here it is turned inside out, safely: a [`TimerList<T>`] owns a heap node, a [`Timer<T>`],
//! that holds the list links *and the container's data `T`*. The handler receives
//! `&Timer<T>` and reaches the container with [`Timer::data`]. The node never moves while the
//! `TimerList` lives (so a pending timer's links stay valid), and `Drop` runs
//! `del_timer_sync` before the node is freed: a timer can never outlive its handler or its data.
//!
//! For the workqueue's delayed work (and any container with more in it), put what the handler
//! needs in `T`: e.g. `DelayedWork { timer: TimerList<Work> }` whose handler does
//! `queue_work(t.data())`, or `TimerList<Arc<Shared>>` to share state with process context (the
//! handler only borrows: the `Arc` is dropped in process context, never in the handler).
//!
//! # The pending structure: a sorted intrusive list (not the kernel's wheel)
//! The kernel (`kernel/time/timer.c`) keeps pending timers in a non-cascading wheel: levels of
//! 64 buckets, each level 8 times coarser (its table at HZ = 250: level 0, 4 ms buckets,
//! 0-255 ms; level 1, 32 ms, 256 ms-2047 ms; level 2, 256 ms, ~2 s-~16 s; ... 9 levels up to
//! ~12 days); insertion is O(1) and a timer at level >= 1 fires up to 12.5 % late. Here the pending timers are a doubly linked
//! list sorted by expiry, intrusive (the links live in the timer's node: no allocation, ever,
//! on any path): the earliest expiry, which the tickless POSIX timer is armed for, is the head
//! (O(1)); removal is O(1); insertion walks from the tail (O(n) worst case, O(1) for the
//! common re-arm "now + delay", which lands at the end). Timers fire in the jiffy they asked
//! for, never late by a bucket, never early. With the lab's handful of timers (and the stress
//! test's 200) the walk is short; a wheel would pay off at tens of thousands of timers.
//!
//! # Expiry
//! `TIMER_SOFTIRQ` (raised by the timer signal's handler) takes every timer with
//! `expires <= jiffies` off the list onto an "expiring" list, then runs them one by one with the
//! base unlocked, recording the running timer; a handler may re-arm its own timer (it goes back
//! on the pending list and fires at the earliest on the next jiffy). At the end the POSIX timer
//! is armed for the new head, or disarmed when nothing is pending.
//!
//! # Ground rules (the base, shared with signal context)
//! - `BASE.lock` (a spin flag) protects the links of every node, both lists, `running`,
//!   `running_tid`, `armed` and `in_run`. Process context takes it with the timer signal
//!   blocked on its thread (the kernel's `spin_lock_irqsave`), so the handler never interrupts
//!   a holder on the same thread; a handler on another thread spins only for the few
//!   instructions of a list operation.
//! - The base is reached only through the guard's raw pointer (`BaseGuard::base`), field by
//!   field: never as a `&mut BaseInner`, which would assert uniqueness over the sentinels that
//!   linked nodes point into.
//! - `expires` and `pending` are atomics written under the lock and read lock-free
//!   (`expires()`, `timer_pending()`), as the kernel reads them with READ_ONCE.
//! - A node is on at most one list; `pending` is true exactly while it is linked.
//! - The handler runs with the lock dropped; `running` points at its node until it returns, so
//!   `del_timer_sync` can wait for it (and refuse to wait for itself).
//! - The node's memory is owned by the `TimerList` (process context); signal context only
//!   borrows it, and `Drop` unlinks it and waits for a running handler before freeing it.

use std::cell::UnsafeCell;
use std::mem::ManuallyDrop;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::kernel::debugobjects::{self, Deferred};
use crate::kernel::jiffies::{self, time_after, time_before, time_before_eq};
use crate::kernel::panic::{self, warn_at};
use crate::kernel::sched;
use crate::kernel::softirq::{self, Softirq};
use crate::kernel::sync::spin::SpinFlag;
use crate::kernel::trace;

/// The list links and bookkeeping of one timer (first field of `Timer<T>`, `repr(C)`).
#[repr(C)]
struct Node {
    prev: UnsafeCell<*mut Node>,
    next: UnsafeCell<*mut Node>,
    expires: AtomicU64,
    pending: AtomicBool,
    /// Calls the typed handler for the `Timer<T>` this node heads.
    call: unsafe fn(*const Node),
}

impl Node {
    const fn sentinel() -> Node {
        Node {
            prev: UnsafeCell::new(std::ptr::null_mut()),
            next: UnsafeCell::new(std::ptr::null_mut()),
            expires: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            call: sentinel_call,
        }
    }
}

/// # Safety
/// Never called: sentinels are never on the expiring list as timers.
unsafe fn sentinel_call(_: *const Node) {}

struct BaseInner {
    head: Node,
    expiring: Node,
    running: *const Node,
    running_tid: i32,
    /// The jiffy the POSIX timer is armed for.
    armed: Option<u64>,
    /// TIMER_SOFTIRQ is processing (it re-arms at its end).
    in_run: bool,
}

struct Base {
    /// The spin flag (model-checked under loom: `sync::spin`).
    lock: SpinFlag,
    inner: UnsafeCell<BaseInner>,
}

// SAFETY: `inner` is only touched with `lock` held (Ground rules), through `BaseGuard::base`.
unsafe impl Sync for Base {}

static BASE: Base = Base {
    lock: SpinFlag::new(),
    inner: UnsafeCell::new(BaseInner {
        head: Node::sentinel(),
        expiring: Node::sentinel(),
        running: std::ptr::null(),
        running_tid: 0,
        armed: None,
        in_run: false,
    }),
};

static EXPIRIES: AtomicU64 = AtomicU64::new(0);

/// The base, locked (`raw_spin_lock_irqsave`). Dropping it unlocks and restores interrupts.
struct BaseGuard {
    flags: Option<softirq::IrqFlags>,
}

impl BaseGuard {
    fn lock() -> BaseGuard {
        // Interrupts off in process context, as the kernel's base lock is taken (on swapper/0
        // that blocks the timer signal; elsewhere it never comes: no system call). In interrupt
        // context, or with bottom halves disabled, no timer can run on this thread anyway.
        let flags = (!softirq::in_interrupt()).then(softirq::local_irq_save);
        BASE.lock.lock();
        let g = BaseGuard { flags };
        let b = g.base();
        // SAFETY: lock held; first use makes both sentinels empty circular lists. The
        // sentinels' addresses come from the static's raw pointer, never through a reference.
        unsafe {
            let h = &raw mut (*b).head;
            if (*(*h).next.get()).is_null() {
                *(*h).next.get() = h;
                *(*h).prev.get() = h;
                let e = &raw mut (*b).expiring;
                *(*e).next.get() = e;
                *(*e).prev.get() = e;
            }
        }
        g
    }

    /// The base, as a raw pointer valid while the guard lives. Never turned into a `&mut
    /// BaseInner`: nodes hold raw pointers to the sentinels inside it, and a fresh unique
    /// reference to the whole base on every lock would invalidate them. Fields are read and
    /// written through raw place expressions (`(*b).in_run = ...`), which create no reference.
    fn base(&self) -> *mut BaseInner {
        BASE.inner.get()
    }

    /// The timer whose handler runs now, and the thread it runs on.
    fn running(&self) -> (*const Node, i32) {
        let b = self.base();
        // SAFETY: lock held by this guard; raw places only.
        unsafe { ((*b).running, (*b).running_tid) }
    }
}

impl Drop for BaseGuard {
    fn drop(&mut self) {
        BASE.lock.unlock();
        if let Some(f) = self.flags {
            softirq::local_irq_restore(f);
        }
    }
}

/// # Safety
/// Base lock held; `n` is a live, unlinked node; `pos` is linked (or a sentinel).
unsafe fn link_after(pos: *mut Node, n: *mut Node) {
    // SAFETY: per the contract, all three nodes are live and the lock serialises link updates.
    unsafe {
        let next = *(*pos).next.get();
        *(*n).prev.get() = pos;
        *(*n).next.get() = next;
        *(*next).prev.get() = n;
        *(*pos).next.get() = n;
    }
}

/// # Safety
/// Base lock held; `n` is live. Returns whether it was linked.
unsafe fn unlink(n: *mut Node) -> bool {
    // SAFETY: per the contract; a linked node's neighbours are live (Ground rules).
    unsafe {
        let next = *(*n).next.get();
        if next.is_null() {
            return false;
        }
        let prev = *(*n).prev.get();
        *(*prev).next.get() = next;
        *(*next).prev.get() = prev;
        *(*n).next.get() = std::ptr::null_mut();
        *(*n).prev.get() = std::ptr::null_mut();
        (*n).pending.store(false, Ordering::Release);
        true
    }
}

/// Insert `n` (unlinked) into the pending list, sorted by expiry (after equal expiries).
///
/// # Safety
/// `g` holds the base lock; `n` is live and unlinked.
unsafe fn enqueue(g: &BaseGuard, n: *mut Node, expires: u64) {
    let b = g.base();
    // SAFETY: lock held (`g`); the walk only visits linked nodes (live by the Ground rules);
    // the base's fields are reached through raw places.
    unsafe {
        let head = &raw mut (*b).head;
        (*n).expires.store(expires, Ordering::Relaxed);
        let mut pos = *(*head).prev.get();
        while pos != head && time_after((*pos).expires.load(Ordering::Relaxed), expires) {
            pos = *(*pos).prev.get();
        }
        link_after(pos, n);
        (*n).pending.store(true, Ordering::Release);
        if *(*head).next.get() == n && !(*b).in_run {
            let earlier = match (*b).armed {
                None => true,
                Some(a) => time_before(expires, a),
            };
            if earlier {
                (*b).armed = Some(expires);
                softirq::program_timer_interrupt(Some(jiffies::jiffies_to_monotonic_ns(expires)));
            }
        }
    }
}

/// Arm the POSIX timer for the head (not earlier than `min`), or disarm it. `g` holds the lock.
fn program_for_head(g: &BaseGuard, min: Option<u64>) {
    let b = g.base();
    // SAFETY: lock held (`g`); the head's next is a live node or the sentinel; raw places only.
    unsafe {
        let head = &raw mut (*b).head;
        let first = *(*head).next.get();
        if first == head {
            if (*b).armed.take().is_some() {
                softirq::program_timer_interrupt(None);
            }
            return;
        }
        let mut at = (*first).expires.load(Ordering::Relaxed);
        if let Some(m) = min.filter(|&m| time_before(at, m)) {
            at = m;
        }
        (*b).armed = Some(at);
        softirq::program_timer_interrupt(Some(jiffies::jiffies_to_monotonic_ns(at)));
    }
}

/// Is the pending list empty and no expiry run in progress (so the interrupt may be disarmed)?
/// `g` holds the lock.
fn idle(g: &BaseGuard) -> bool {
    let b = g.base();
    // SAFETY: lock held (`g`); raw places only.
    unsafe {
        let head = &raw mut (*b).head;
        *(*head).next.get() == head && !(*b).in_run
    }
}

/// The `TIMER_SOFTIRQ` action: run every expired timer, then re-arm the interrupt.
fn run_timer_softirq() {
    let mut g = BaseGuard::lock();
    let clk = jiffies::jiffies();
    let b = g.base();
    // SAFETY: lock held (`g`); move the expired prefix of the sorted list onto `expiring`.
    unsafe {
        (*b).in_run = true;
        (*b).armed = None;
        let head = &raw mut (*b).head;
        let exp = &raw mut (*b).expiring;
        loop {
            let first = *(*head).next.get();
            if first == head || !time_before_eq((*first).expires.load(Ordering::Relaxed), clk) {
                break;
            }
            unlink(first);
            trace::timer_cancel(first);
            link_after(*(*exp).prev.get(), first);
            (*first).pending.store(true, Ordering::Release);
        }
    }
    let me = sched::gettid();
    loop {
        let b = g.base();
        // SAFETY: lock held (`g`); `expiring` is a valid circular list; raw places only.
        let n = unsafe {
            let exp = &raw mut (*b).expiring;
            let n = *(*exp).next.get();
            if n == exp {
                break;
            }
            unlink(n);
            (*b).running = n;
            (*b).running_tid = me;
            n
        };
        drop(g);
        EXPIRIES.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `n` was pending, so its TimerList is alive; Drop/del_timer_sync wait for
        // `running` to clear before the node can be freed.
        unsafe { ((*n).call)(n) };
        g = BaseGuard::lock();
        let b = g.base();
        // SAFETY: lock held (`g`); raw places only.
        unsafe {
            (*b).running = std::ptr::null();
            (*b).running_tid = 0;
        }
    }
    // SAFETY: lock held (`g`); raw place.
    unsafe { (*g.base()).in_run = false };
    program_for_head(&g, Some(clk.wrapping_add(1)));
    drop(g);
}

/// Install the `TIMER_SOFTIRQ` action (called by the runtime's start).
pub(crate) fn init() {
    softirq::open_softirq(Softirq::Timer, run_timer_softirq);
}

/// Re-arm the POSIX timer for the earliest pending timer (after start).
pub(crate) fn rearm() {
    let g = BaseGuard::lock();
    program_for_head(&g, None);
}

/// Timer handlers run so far (all timers).
pub fn expiries() -> u64 {
    EXPIRIES.load(Ordering::Relaxed)
}

/// The heap node of a timer: the list links, the handler and the container's data.
/// Handlers receive `&Timer<T>`; process context reaches it through [`TimerList`]'s `Deref`.
///
/// `T` is shared with the handler, which runs on another thread in softirq context: it must be
/// `Send + Sync`, and the handler must only do what softirq context allows (no blocking, no
/// allocation, `lock()` not `lock_bh()`).
#[repr(C)]
pub struct Timer<T> {
    node: Node,
    /// The handler: `call_handler::<T, F>` as a `fn(&Timer<T>)`.
    func: AtomicUsize,
    /// The handler's name: `panic::name_of::<F>` as a [`panic::Name`].
    name: AtomicUsize,
    /// Links the timer on the deferred frees when its `TimerList` is dropped in softirq context.
    deferred: Deferred,
    data: T,
}

/// What a timer handler is: a function `fn(&Timer<T>)` (or a closure that captures nothing).
/// The runtime keeps its type, which also names it in reports (`type_name`).
pub trait TimerFn<T>: Fn(&Timer<T>) + Copy + Send + Sync {}
impl<T, F: Fn(&Timer<T>) + Copy + Send + Sync> TimerFn<T> for F {}

fn call_handler<T, F: TimerFn<T>>(t: &Timer<T>) {
    panic::conjure::<F>()(t)
}

// SAFETY: the links are only touched under the base lock; `data` is `Sync`, and is dropped in
// the owner's (process) context after the timer is stopped.
unsafe impl<T: Send + Sync> Sync for Timer<T> {}
// SAFETY: as above; the node carries no thread affinity.
unsafe impl<T: Send + Sync> Send for Timer<T> {}

/// # Safety
/// `n` heads a live `Timer<T>` (it is `repr(C)` with the node first).
unsafe fn call_timer<T>(n: *const Node) {
    // SAFETY: per the contract.
    let t = unsafe { &*(n as *const Timer<T>) };
    let f = t.func.load(Ordering::Acquire);
    if f == 0 {
        // Never armed without a handler (mod_timer refuses): nothing to run.
        return;
    }
    // SAFETY: a non-zero `func` only ever holds a `fn(&Timer<T>)` (set in new/timer_setup).
    let f: fn(&Timer<T>) = unsafe { std::mem::transmute::<usize, fn(&Timer<T>)>(f) };
    let name = t.name();
    trace::timer_expire_entry(n, name);
    panic::softirq_call(
        panic::Kind::Timer,
        Softirq::Timer as usize,
        Some(name),
        || f(t),
    );
    trace::timer_expire_exit(n);
}

impl<T> Timer<T> {
    fn node_ptr(&self) -> *mut Node {
        &self.node as *const Node as *mut Node
    }

    /// The container's data (the kernel's `from_timer`).
    pub fn data(&self) -> &T {
        &self.data
    }

    /// `timer->expires`: the jiffy it was last armed for.
    pub fn expires(&self) -> u64 {
        self.node.expires.load(Ordering::Relaxed)
    }

    /// `timer_pending()`: armed and not yet run. Lock-free (a snapshot).
    pub fn timer_pending(&self) -> bool {
        self.node.pending.load(Ordering::Acquire)
    }

    /// `timer_setup`: (re)set the handler. Call it on a timer that is not pending.
    pub fn timer_setup<F: TimerFn<T>>(&self, _func: F) {
        // The name first: a handler run that sees the function sees its name.
        self.name.store(
            panic::name_of::<F> as panic::Name as usize,
            Ordering::Release,
        );
        self.func.store(
            call_handler::<T, F> as fn(&Timer<T>) as usize,
            Ordering::Release,
        );
        trace::timer_init(self.node_ptr());
    }

    /// The handler's name (its path), as reports print it.
    pub fn handler_name(&self) -> &'static str {
        self.name()()
    }

    /// The function that names the handler.
    fn name(&self) -> panic::Name {
        fn not_set_up() -> &'static str {
            "(not set up)"
        }
        let name = self.name.load(Ordering::Acquire);
        if name == 0 {
            return not_set_up;
        }
        // SAFETY: `name` only ever holds a `panic::Name` (set in new/timer_setup).
        unsafe { std::mem::transmute::<usize, panic::Name>(name) }
    }

    /// `mod_timer(timer, expires)`: arm the timer for jiffy `expires`, moving it if it was
    /// pending. Returns whether it was pending. Any context (re-arming from its own handler
    /// makes a periodic timer). On a timer never set up ([`TimerList::declare`] without
    /// [`Timer::timer_setup`]) it prints the kernel's ODEBUG warning and arms nothing.
    #[track_caller]
    pub fn mod_timer(&self, expires: u64) -> bool {
        if self.func.load(Ordering::Acquire) == 0 {
            warn_at(
                Location::caller(),
                "mod_timer() on a timer never set up (call timer_setup() first): not armed; ODEBUG: \
                 assert_init not available (active state 0) object type: timer_list hint: 0x0",
            );
            return false;
        }
        let g = BaseGuard::lock();
        let n = self.node_ptr();
        let was_pending = self.node.pending.load(Ordering::Relaxed);
        if was_pending && self.node.expires.load(Ordering::Relaxed) == expires {
            return true;
        }
        // SAFETY: lock held; `n` is this live timer's node.
        unsafe {
            unlink(n);
            enqueue(&g, n, expires);
        }
        trace::timer_start(n, self.name(), expires);
        was_pending
    }

    /// `add_timer`: arm a timer that is not pending for `expires()` (set by a previous
    /// `mod_timer` or [`Timer::set_expires`]). Warns if it is pending.
    #[track_caller]
    pub fn add_timer(&self) {
        if self.timer_pending() {
            warn_at(Location::caller(), "add_timer() on a pending timer");
            return;
        }
        self.mod_timer(self.expires());
    }

    /// Set `timer->expires` without arming (for `add_timer`). Ignored while pending.
    pub fn set_expires(&self, expires: u64) {
        let g = BaseGuard::lock();
        if !self.node.pending.load(Ordering::Relaxed) {
            self.node.expires.store(expires, Ordering::Relaxed);
        }
        drop(g);
    }

    /// `del_timer`: deactivate the timer; returns whether it was pending. Does not wait for a
    /// running handler. Any context.
    pub fn del_timer(&self) -> bool {
        // As the kernel's timer_delete: a timer that is not pending needs no lock (and so no
        // signal-mask system calls). A concurrent mod_timer that wins the race simply comes after.
        if !self.timer_pending() {
            return false;
        }
        let g = BaseGuard::lock();
        // SAFETY: lock held; our own live node.
        let was = unsafe { unlink(self.node_ptr()) };
        if was {
            trace::timer_cancel(self.node_ptr());
        }
        if was && idle(&g) {
            program_for_head(&g, None);
        }
        was
    }

    /// `del_timer_sync`: deactivate the timer and wait until its handler runs nowhere; returns
    /// whether it was pending. Process context (it may wait; `might_sleep` reports atomic
    /// callers, and it still waits, spinning, as the kernel does). Called from the timer's own
    /// handler it prints the kernel's WARNING and returns instead of waiting for itself.
    #[track_caller]
    pub fn del_timer_sync(&self) -> bool {
        let loc = Location::caller();
        if softirq::in_irq() {
            warn_at(loc, "del_timer_sync() in hardirq context");
        }
        let me = sched::gettid();
        let n = self.node_ptr() as *const Node;
        let mut checked = false;
        let mut spins = 0u32;
        loop {
            let g = BaseGuard::lock();
            let (running, running_tid) = g.running();
            if running == n {
                if running_tid == me {
                    drop(g);
                    warn_at(
                        loc,
                        "del_timer_sync() called from the timer's own handler: it would wait for itself for ever",
                    );
                    return self.del_timer();
                }
                drop(g);
                if !checked {
                    checked = true;
                    if !softirq::in_serving_softirq() {
                        let _ = sched::might_sleep_at(loc);
                    }
                }
                spins += 1;
                if spins < 100 {
                    // SAFETY: plain syscall.
                    unsafe { libc::sched_yield() };
                } else {
                    sched::sleep_until_ns(jiffies::monotonic_ns() + 100_000);
                }
                continue;
            }
            // SAFETY: lock held; our own live node.
            let was = unsafe { unlink(self.node_ptr()) };
            if was {
                trace::timer_cancel(self.node_ptr());
            }
            if was && idle(&g) {
                program_for_head(&g, None);
            }
            return was;
        }
    }
}

/// `struct timer_list`: owns a [`Timer<T>`] node on the heap (stable while pending) and stops
/// it on drop (`del_timer_sync`). Derefs to `Timer<T>` for `mod_timer`, `del_timer`, ...
pub struct TimerList<T: Send + Sync = ()> {
    timer: ManuallyDrop<Box<Timer<T>>>,
}

impl<T: Send + Sync> TimerList<T> {
    /// `timer_setup(&timer, func, 0)` on a new timer carrying `data`. Process context.
    pub fn new<F: TimerFn<T>>(func: F, data: T) -> Self {
        let t = Self::declare(data);
        t.timer_setup(func);
        t
    }

    /// A `struct timer_list` carrying `data`, not set up yet: [`Timer::timer_setup`] gives it its
    /// handler; `mod_timer` before that is refused with the kernel's warning. Process context.
    pub fn declare(data: T) -> Self {
        TimerList {
            timer: ManuallyDrop::new(Box::new(Timer {
                node: Node {
                    prev: UnsafeCell::new(std::ptr::null_mut()),
                    next: UnsafeCell::new(std::ptr::null_mut()),
                    expires: AtomicU64::new(0),
                    pending: AtomicBool::new(false),
                    call: call_timer::<T>,
                },
                func: AtomicUsize::new(0),
                name: AtomicUsize::new(0),
                deferred: Deferred::new(free_deferred::<T>),
                data,
            })),
        }
    }
}

/// Frees a timer whose `TimerList` was dropped in softirq context (process context: through
/// the `TimerList`'s own drop, which waits for a running handler).
///
/// # Safety
/// `d` is the `deferred` field of a `Timer<T>` leaked from its `TimerList` by that drop.
unsafe fn free_deferred<T: Send + Sync>(d: *mut Deferred) {
    // SAFETY: per the contract, `d` lies `offset_of!(Timer<T>, deferred)` bytes into a boxed
    // `Timer<T>` that nothing else owns now.
    let timer = unsafe {
        Box::from_raw(
            d.byte_sub(std::mem::offset_of!(Timer<T>, deferred))
                .cast::<Timer<T>>(),
        )
    };
    drop(TimerList {
        timer: ManuallyDrop::new(timer),
    });
}

impl<T: Send + Sync> std::ops::Deref for TimerList<T> {
    type Target = Timer<T>;
    fn deref(&self) -> &Timer<T> {
        &self.timer
    }
}

/// Dropping a `TimerList` frees its node: `del_timer_sync` first (a running handler is waited
/// for). A timer still pending is reported as the kernel's debugobjects reports it (`ODEBUG:
/// free active ... object type: timer_list hint: <handler>`). In softirq context (a handler
/// dropping a timer, its own included) nothing may wait or be freed: the timer is deactivated
/// and the free deferred to process context, where it happens once no handler runs it.
impl<T: Send + Sync> Drop for TimerList<T> {
    fn drop(&mut self) {
        if self.timer.timer_pending() {
            debugobjects::report_free_active("timer_list", self.timer.handler_name());
        }
        if panic::in_irq_context() {
            self.timer.del_timer();
            // SAFETY: `self.timer` is not used again (we are in its drop).
            let raw = Box::into_raw(unsafe { ManuallyDrop::take(&mut self.timer) });
            // SAFETY: `raw` is live and now owned by the deferred free alone.
            unsafe { debugobjects::defer_free(&raw mut (*raw).deferred) };
            return;
        }
        self.timer.del_timer_sync();
        // SAFETY: not used again (we are in its drop).
        unsafe { ManuallyDrop::drop(&mut self.timer) };
    }
}

/// `timer_setup(func, data)`: a new timer (see [`TimerList::new`]).
pub fn timer_setup<T: Send + Sync, F: TimerFn<T>>(func: F, data: T) -> TimerList<T> {
    TimerList::new(func, data)
}

/// `mod_timer(&timer, expires)`.
#[track_caller]
pub fn mod_timer<T>(timer: &Timer<T>, expires: u64) -> bool {
    timer.mod_timer(expires)
}

/// `del_timer(&timer)`.
pub fn del_timer<T>(timer: &Timer<T>) -> bool {
    timer.del_timer()
}

/// `del_timer_sync(&timer)`.
#[track_caller]
pub fn del_timer_sync<T>(timer: &Timer<T>) -> bool {
    timer.del_timer_sync()
}

/// `timer_pending(&timer)`.
pub fn timer_pending<T>(timer: &Timer<T>) -> bool {
    timer.timer_pending()
}
