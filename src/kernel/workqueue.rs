//! Workqueues: work items run later, in process context, on named worker threads.
//!
//! A work item (`struct work_struct`) is a handler plus queueing state, embedded in the data it
//! works on. Queueing it (from process context or from a timer handler, i.e. softirq context)
//! hands it to a worker thread that calls the handler in process context, where it may sleep,
//! allocate and take locks. A delayed work item (`struct delayed_work`) is a work item plus a
//! `timer_list` whose handler queues it.
//!
//! | C                                                    | Rust                                          |
//! |------------------------------------------------------|-----------------------------------------------|
//! | `struct my_data { struct work_struct w; ... }`       | `struct MyData { w: Work<MyData>, ... }` + `impl_has_work!(MyData, w)` |
//! | `INIT_WORK(&d->w, handler)` / `DECLARE_WORK`         | `w: Work::new(handler)` (a `const fn`)        |
//! | `void handler(struct work_struct *w)` + `container_of(w, struct my_data, w)` | `fn handler(d: &MyData)` |
//! | `schedule_work(&d->w)`                               | `schedule_work(d)` with `d: Pin<&MyData>`     |
//! | `queue_work(wq, &d->w)`                              | `queue_work(&wq, d)`                          |
//! | `cancel_work_sync(&d->w)`                            | `cancel_work_sync(&d.w)`                      |
//! | `flush_scheduled_work()`, `flush_workqueue(wq)`      | same names                                    |
//! | `create_workqueue("q")`, `create_singlethread_workqueue("q")`, `destroy_workqueue(wq)` | same names |
//! | `INIT_DELAYED_WORK`, `schedule_delayed_work(_on)`, `queue_delayed_work`, `cancel_delayed_work(_sync)` | same names, [`DelayedWork`] |
//! | `schedule_on_each_cpu(func)`                         | `schedule_on_each_cpu(\|\| ...)`              |
//!
//! # Example: the lab's `my_device_data` (exercise 5's shape)
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
//! use deferred::impl_has_work;
//! use deferred::kernel::workqueue::{Work, flush_scheduled_work, schedule_work};
//!
//! struct MyDeviceData {
//!     my_work: Work<MyDeviceData>, // declared first: dropped (cancelled) first
//!     counter: AtomicU32,
//! }
//! impl_has_work!(MyDeviceData, my_work);
//!
//! fn my_work_handler(my_data: &MyDeviceData) {
//!     // container_of(work, struct my_device_data, my_work), done by the runtime
//!     my_data.counter.fetch_add(1, SeqCst); // process context: may sleep, allocate
//! }
//!
//! let dev = Box::pin(MyDeviceData { my_work: Work::new(my_work_handler), counter: AtomicU32::new(0) });
//! schedule_work(dev.as_ref()); // also callable from a timer handler (softirq context)
//! flush_scheduled_work();
//! assert_eq!(dev.counter.load(SeqCst), 1);
//! ```
//!
//! # Reaching the container (`container_of`, safely)
//! As Rust-for-Linux's `kernel::workqueue` does: the containing type `T` implements
//! [`HasWork<ID>`] (through [`impl_has_work!`](crate::impl_has_work), which computes the field's
//! offset with `core::mem::offset_of!` and checks its type), and one queues the *container*
//! (`Pin<&T>`), never a bare work item, so the runtime always knows the `T` around the item:
//! the worker computes `&T` from the item's address minus the offset and passes it to the
//! handler. `ID` tells apart several work items of one type (default 0; Rust infers it when `T`
//! has one). The container is pinned (`Pin`): it cannot move while queued.
//!
//! # Lifetime: who keeps a queued item alive
//! Nothing is reference-counted: the worker holds a raw pointer. What makes it sound:
//! - `Work`'s `Drop` runs `cancel_work_sync` and then waits until no worker list links the
//!   item; `DelayedWork`'s `Drop` first does `cancel_delayed_work_sync`. Pinning guarantees
//!   that `Drop` runs before the memory is reused.
//! - A handler borrows the whole container, and Rust drops fields in declaration order, so
//!   **declare the work field before the fields its handler uses** (or cancel it in the
//!   container's own `Drop`): that is the contract of the unsafe trait [`HasWork`], stated again
//!   on [`impl_has_work!`](crate::impl_has_work). `'static` containers (a `static`, a leaked box)
//!   have nothing to worry about.
//! - The kernel lets a handler `kfree()` its own container; here the handler borrows it for its
//!   whole run, so dropping a work item from its own handler is reported (`BUG: work item freed
//!   from its own handler`) and aborts (a `TimerList` can defer its own free, as its node is
//!   the runtime's; a work item's container is the caller's memory).
//! - Dropping a work item still pending or running is reported as the kernel's debugobjects
//!   reports it (`ODEBUG: free active (active state 0) object type: work_struct hint:
//!   <handler>`), then made safe: cancelled and waited for. In softirq context nothing may wait:
//!   an idle item drops silently, a delayed one waiting for its timer is cancelled, and one a
//!   worker holds (queued or running) ends in `panic()` after the kernel's reports.
//! - A workqueue's control block is never freed ([`destroy_workqueue`] stops and joins its
//!   workers, then leaves the block, a few hundred bytes, marked dead): a late timer handler
//!   queueing on a destroyed queue finds memory that is still there, and is refused.
//!
//! # States of a work item
//! ```text
//!            queue_work                            worker takes it         handler returns
//!   idle ──────────────────────> PENDING|LINKED ──────────────────> RUNNING ──────────────> idle
//!     │                              ^     │ cancel: clears PENDING
//!     │ queue_delayed_work           │     v (still LINKED: the worker skips it, then idle)
//!     └──────> PENDING|DELAYED ──────┘
//!              (timer armed)   timer handler (softirq): DELAYED -> LINKED, pushed
//! ```
//! - `PENDING`: will run; `queue_*` on a pending item returns false and changes nothing (a work
//!   queued twice runs once).
//! - `DELAYED`: pending on its delay timer, not runnable yet. `cancel_delayed_work*` deletes the
//!   timer and clears `PENDING|DELAYED`; a timer handler racing with it finds `PENDING` clear
//!   and links nothing.
//! - `LINKED`: physically on a worker's list (the list cannot unlink from the middle: a cancelled
//!   item stays linked and the worker skips it; re-queueing it meanwhile just sets `PENDING` again).
//! - `RUNNING`: its handler runs. A work item never runs on two workers at once: a worker that
//!   takes an item still running elsewhere waits for that run to finish.
//! - `CANCELING`: a `cancel_*_sync` is in progress; `queue_*` fails meanwhile (so a handler that
//!   re-queues itself cannot escape the cancel), as the kernel's `WORK_OFFQ_CANCELING`.
//! - `WAITERS`: somebody sleeps on the state word (futex) until a bit clears.
//!
//! # Workers and their lists
//! Each worker thread (`events/0`, ..., or a single-thread queue's own name) owns a pool: an
//! intrusive Treiber stack of work items (`head`), a wait queue it sleeps on, and two counters,
//! `pushed` (items linked so far) and `done` (items taken off and finished). `queue_work` links
//! the item with one CAS and wakes the worker ([`wake_up`]: a futex wake); the worker takes the
//! whole stack with one swap and reverses it, so items run in the order they were queued.
//! `flush_workqueue` reads `pushed` of every pool and waits until `done` reaches it: everything
//! queued before the flush has finished (later items do not delay it). It does not wait for a
//! delayed work whose timer has not fired yet (the lab text: cancel delayed work before flushing).
//!
//! `queue_work` on a per-CPU queue picks the calling CPU's worker (`sched_getcpu`), as the
//! kernel does; each worker of `create_workqueue` is pinned to its CPU when the process may run
//! there.
//!
//! # Contexts
//! - `queue_work`, `queue_work_on`, `schedule_work`, `schedule_delayed_work*`,
//!   `queue_delayed_work*`, `cancel_delayed_work`: any context, softirq (signal handler) included:
//!   lock-free, allocation-free, async-signal-safe (atomics, `sched_getcpu`, futex wake).
//!   The system queue must exist before a timer queues on it: [`init`] (called at start) or any
//!   process-context use creates it.
//! - `flush_*`, `cancel_work_sync`, `cancel_delayed_work_sync`, `create_*`, `destroy_workqueue`,
//!   `schedule_on_each_cpu`: process context (`might_sleep()` first).
//! - Handlers run in process context on the worker thread.
//!
//! # Ground rules (shared with signal context)
//! - `RawWork::state` and the workers' lists follow [`crate::kernel::sync::work`] (the state
//!   word's transitions, `WAITERS`, the intrusive Treiber stack; model-checked under loom): the
//!   signal path (`queue_*`, the delay timer's handler, `cancel_delayed_work`) only sets
//!   `PENDING|LINKED` (or `DELAYED` -> `LINKED`) and links, clears `PENDING`, or fails. It never
//!   waits. An item cannot be linked twice: linking requires `LINKED` clear, and the worker
//!   clears it (after reading `next`) only once the item is off every list.
//! - `pushed`/`done` are atomics; wake-ups are futex wakes.
//! - The workqueue control block and the system queue are `'static`: the handler never frees.
//! - `WqInner::dead`/`inflight`: a queueing call increments `inflight`, then checks `dead`, links,
//!   decrements; `destroy_workqueue` sets `dead`, then waits for `inflight == 0` before stopping
//!   the workers (both `SeqCst`: one of the two always sees the other), so nothing is ever
//!   linked on a list whose worker has gone.
//! - A `futex(FUTEX_WAKE)` issued right after a CAS that let an owner go (its `Drop` may free the
//!   item at once) can name memory that was just freed: FUTEX_WAKE only uses the address as a
//!   key and writes nothing, so the worst case is a spurious wake-up, which every waiter
//!   tolerates by re-checking.

use core::marker::{PhantomData, PhantomPinned};
use core::pin::Pin;
use core::ptr;
use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst,
};
use std::cell::Cell;
use std::panic::Location;
use std::sync::{Mutex, OnceLock};

use super::debugobjects;
use super::error::{Error, Result};
use super::jiffies;
use super::kthread::{self, TaskStruct, kthread_should_stop};
use super::panic;
use super::sched;
use super::timer::{Timer, TimerList};
use super::trace;
use super::wait::{WaitQueueHead, wait_event, wake_up};

use super::sync::work::{self, CANCELING, DELAYED, LINKED, Linked, PENDING, RUNNING, WorkList};

/// The type-erased part of a work item: what the worker and the lists see.
#[derive(Debug)]
#[repr(C)]
struct RawWork {
    state: AtomicU32,
    next: AtomicPtr<RawWork>,
    /// Calls the handler with the container (see [`Work::run`]).
    run: unsafe fn(*const RawWork),
    /// The handler's name, for reports.
    name: panic::Name,
}

impl Linked for RawWork {
    fn next(&self) -> &AtomicPtr<RawWork> {
        &self.next
    }
}

/// `struct work_struct`: a work item embedded in a `T`, whose handler receives `&T`.
///
/// `ID` distinguishes several work items in one `T`. See the module docs.
#[repr(C)]
pub struct Work<T, const ID: u64 = 0> {
    raw: RawWork,
    handler: fn(&T),
    _container: PhantomData<fn(&T)>,
    _pin: PhantomPinned,
}

impl<T, const ID: u64> core::fmt::Debug for Work<T, ID> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Work")
            .field("id", &ID)
            .field("state", &self.raw.state.load(SeqCst))
            .finish()
    }
}

/// A type that embeds a [`Work<Self, ID>`] (the `container_of` relation).
///
/// Implement it with [`impl_has_work!`](crate::impl_has_work).
///
/// # Safety
/// - `OFFSET` is the byte offset of a field of type `Work<Self, ID>` inside `Self`.
/// - Dropping a `Self` never invalidates anything the work's handler uses while the work may
///   still be queued or running: the work field is declared before such fields (its `Drop`
///   cancels synchronously first), or `Self`'s own `Drop` cancels it.
pub unsafe trait HasWork<const ID: u64 = 0>: Sized + Sync {
    /// Offset of the `Work<Self, ID>` field.
    const OFFSET: usize;

    /// The embedded work item.
    fn work(&self) -> &Work<Self, ID> {
        // SAFETY: by the trait's contract a `Work<Self, ID>` lives at `OFFSET` inside `self`.
        unsafe { &*ptr::from_ref(self).cast::<u8>().add(Self::OFFSET).cast() }
    }
}

/// Implements [`HasWork`] for a struct from the path of its work field:
/// `impl_has_work!(MyData, work)`, `impl_has_work!(MyData, work2, 1)` (ID 1),
/// `impl_has_work!(MyData, dwork.work)` (the item inside a [`DelayedWork`] field).
///
/// The macro checks the field's type and computes its offset with `offset_of!`.
/// **Declare the work field before the fields its handler uses** (or cancel it in your `Drop`):
/// fields drop in declaration order and the work's `Drop` is what waits for a running handler.
#[macro_export]
macro_rules! impl_has_work {
    ($ty:ty, $($field:ident).+) => {
        $crate::impl_has_work!($ty, $($field).+, 0);
    };
    ($ty:ty, $($field:ident).+, $id:expr) => {
        // SAFETY: the offset comes from `offset_of!` on a field whose type the function below
        // checks to be `Work<Self, ID>`; the drop-order rule is stated on the macro.
        unsafe impl $crate::kernel::workqueue::HasWork<{ $id }> for $ty {
            const OFFSET: usize = {
                #[allow(dead_code)]
                fn check(c: &$ty) -> &$crate::kernel::workqueue::Work<$ty, { $id }> {
                    &c.$($field).+
                }
                ::core::mem::offset_of!($ty, $($field).+)
            };
        }
    };
}

/// What a work handler is: a function `fn(&T)` receiving the container (or a closure that
/// captures nothing). The runtime keeps its type, which also names it in reports (`type_name`).
pub trait WorkFn<T>: Fn(&T) + Copy + Send + Sync {}
impl<T, F: Fn(&T) + Copy + Send + Sync> WorkFn<T> for F {}

fn call_handler<T, F: WorkFn<T>>(container: &T) {
    panic::conjure::<F>()(container)
}

impl<T: HasWork<ID>, const ID: u64> Work<T, ID> {
    /// `INIT_WORK(&work, handler)` / `DECLARE_WORK(name, handler)`: an idle work item whose
    /// handler receives its container.
    pub const fn new<F: WorkFn<T>>(handler: F) -> Self {
        let _ = handler; // zero-sized: its type is what is kept
        Self {
            raw: RawWork {
                state: AtomicU32::new(0),
                next: AtomicPtr::new(ptr::null_mut()),
                run: Self::run,
                name: panic::name_of::<F>,
            },
            handler: call_handler::<T, F>,
            _container: PhantomData,
            _pin: PhantomPinned,
        }
    }

    /// The worker's entry: recovers the container and calls the handler.
    ///
    /// # Safety
    /// `raw` points to the `raw` field of a live `Work<T, ID>` embedded in a live, pinned `T`
    /// at `T::OFFSET` (queueing only ever links items reached from a `Pin<&T>`).
    unsafe fn run(raw: *const RawWork) {
        let work = raw.cast::<Self>(); // `raw` is the first field of a repr(C) `Work`.
        // SAFETY: per this function's contract the container starts `OFFSET` bytes before the
        // work item and is alive (its `Drop` would first wait for this run to finish).
        let container = unsafe { &*work.cast::<u8>().sub(T::OFFSET).cast::<T>() };
        // SAFETY: `work` is live (see above).
        let handler = unsafe { (*work).handler };
        handler(container);
    }
}

impl<T, const ID: u64> Work<T, ID> {
    /// `work_pending()`: queued (or its delay timer armed) and not yet started.
    pub fn pending(&self) -> bool {
        self.raw.state.load(SeqCst) & PENDING != 0
    }

    /// True while its handler runs.
    pub fn running(&self) -> bool {
        self.raw.state.load(SeqCst) & RUNNING != 0
    }
}

impl<T, const ID: u64> Drop for Work<T, ID> {
    fn drop(&mut self) {
        let raw = &self.raw;
        if ptr::eq(CURRENT_WORK.with(Cell::get), raw) {
            // The handler receives `&T` for its whole run: freeing `T` under it is unsound (and
            // waiting for our own run would deadlock). The kernel allows `kfree` here; Rust's
            // borrow does not. Same policy as the core's `TimerList`.
            crate::pr_emerg!("BUG: work item freed from its own handler");
            crate::kernel::printk::flush();
            std::process::abort();
        }
        let state = raw.state.load(SeqCst);
        if state & (PENDING | LINKED | RUNNING) == 0 {
            return;
        }
        if state & (PENDING | RUNNING) != 0 {
            debugobjects::report_free_active("work_struct", (raw.name)());
        }
        if panic::in_irq_context() {
            // cancel_work_sync would sleep here: the kernel's BUG, and no sleep.
            let _ = sched::might_sleep();
            unpend(raw);
            if raw.state.load(SeqCst) & (LINKED | RUNNING) != 0 {
                // A worker holds it (queued or running): its memory cannot go, and nothing
                // here may wait for the worker to let it go.
                panic::panic_in_interrupt("work_struct freed in softirq context while queued");
            }
            return;
        }
        cancel_raw_sync(raw);
        // A cancelled item may still sit on a worker's list: wait until the worker passed it.
        wait_state_clear(raw, LINKED | RUNNING);
    }
}

// ---------------------------------------------------------------------------------------------
// State word helpers.

/// [`work::update`] on the item's state word. Async-signal-safe.
fn update(raw: &RawWork, f: impl FnMut(u32) -> Option<u32>) -> Result<u32, u32> {
    work::update(&raw.state, f)
}

/// Sleeps until none of `mask` is set in the state. Process context.
fn wait_state_clear(raw: &RawWork, mask: u32) {
    if raw.state.load(SeqCst) & mask != 0 {
        sched::going_to_sleep();
    }
    work::wait_until(&raw.state, |s| s & mask == 0);
}

// ---------------------------------------------------------------------------------------------
// Workqueues and their workers.

/// One worker thread and its list.
struct Pool {
    /// Linked items (an intrusive Treiber stack, [`WorkList`]).
    list: WorkList<RawWork>,
    /// The worker sleeps here until `list` is non-empty or it is stopped.
    more: WaitQueueHead,
    /// Items linked so far / taken off and finished so far (see `flush_workqueue`).
    pushed: AtomicU64,
    done: AtomicU64,
    /// Woken after every finished item (flushers sleep here).
    progress: WaitQueueHead,
    /// The CPU this worker serves (per-CPU queues).
    cpu: usize,
    task: Mutex<Option<TaskStruct>>,
}

/// The control block of a workqueue; never freed (see the module docs).
struct WqInner {
    name: String,
    pools: Box<[Pool]>,
    dead: AtomicBool,
    /// Queueing calls between their `dead` check and their push (see [`live`]).
    inflight: AtomicU32,
}

/// `struct workqueue_struct *`: a workqueue owned by its creator. Dropping it destroys it
/// ([`destroy_workqueue`]).
pub struct Workqueue {
    inner: &'static WqInner,
}

impl core::fmt::Debug for Workqueue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Workqueue")
            .field("name", &self.inner.name)
            .field("workers", &self.inner.pools.len())
            .finish()
    }
}

thread_local! {
    /// The pool the calling worker thread serves (null elsewhere).
    static CURRENT_POOL: Cell<*const Pool> = const { Cell::new(ptr::null()) };
    /// The work item whose handler the calling worker thread runs (null elsewhere).
    static CURRENT_WORK: Cell<*const RawWork> = const { Cell::new(ptr::null()) };
}

/// Online CPUs (`num_online_cpus()`), at least 1.
pub fn num_online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// `smp_processor_id()`: the CPU the caller runs on. Async-signal-safe.
pub fn smp_processor_id() -> usize {
    // SAFETY: sched_getcpu has no preconditions (vDSO getcpu).
    usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0)
}

impl Workqueue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its worker threads (one per CPU for `create_workqueue`, one otherwise).
    pub fn workers(&self) -> Vec<TaskStruct> {
        self.inner
            .pools
            .iter()
            .filter_map(|p| p.task.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    fn create(name: &str, per_cpu: bool) -> Result<Workqueue> {
        let n = if per_cpu { num_online_cpus() } else { 1 };
        let pools = (0..n)
            .map(|cpu| Pool {
                list: WorkList::new(),
                more: WaitQueueHead::new(),
                pushed: AtomicU64::new(0),
                done: AtomicU64::new(0),
                progress: WaitQueueHead::new(),
                cpu,
                task: Mutex::new(None),
            })
            .collect();
        let inner: &'static WqInner = Box::leak(Box::new(WqInner {
            name: name.to_owned(),
            pools,
            dead: AtomicBool::new(false),
            inflight: AtomicU32::new(0),
        }));
        let wq = Workqueue { inner };
        for pool in inner.pools.iter() {
            let res = if per_cpu {
                kthread::kthread_run_kernel(
                    worker_thread,
                    (inner.name.as_str(), pool, true),
                    format_args!("{}/{}", name, pool.cpu),
                )
            } else {
                kthread::kthread_run_kernel(
                    worker_thread,
                    (inner.name.as_str(), pool, false),
                    format_args!("{}", name),
                )
            };
            match res {
                Ok(t) => *pool.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(t),
                Err(e) => {
                    drop(wq); // stops the workers already started
                    return Err(e);
                }
            }
        }
        Ok(wq)
    }
}

impl Drop for Workqueue {
    fn drop(&mut self) {
        destroy_inner(self.inner);
    }
}

/// The body of a worker thread.
fn worker_thread((wq_name, pool, pin): (&'static str, &'static Pool, bool)) -> i32 {
    if pin {
        pin_to_cpu(pool.cpu);
    }
    CURRENT_POOL.with(|c| c.set(pool));
    loop {
        wait_event(&pool.more, || {
            !pool.list.is_empty() || kthread_should_stop()
        });
        if pool.list.is_empty() {
            if kthread_should_stop() {
                break;
            }
            continue;
        }
        // SAFETY: items on a list are live: their Drop waits until LINKED clears, which only
        // `process_one` does.
        unsafe {
            pool.list.take_all(|item| {
                process_one(wq_name, item);
                pool.done.fetch_add(1, SeqCst);
                wake_up(&pool.progress);
            });
        }
    }
    CURRENT_POOL.with(|c| c.set(ptr::null()));
    0
}

/// Takes one item off its list: runs it if still pending, skips it if cancelled. A handler that
/// panics is reported (an Oops, see [`panic`]) and finishes like one that returned.
fn process_one(wq_name: &'static str, item: &RawWork) {
    // A work item never runs on two workers at once: `start` waits for a run elsewhere to end.
    if !work::start(&item.state) {
        return; // cancelled while queued, or waiting for its delay timer
    }
    CURRENT_WORK.with(|c| c.set(item));
    trace::workqueue_execute_start(item, item.name);
    panic::work_call(item.name, wq_name, || {
        // SAFETY: the item was linked from a `Pin<&T>` (see `Work::run`'s contract) and its
        // Drop waits for RUNNING to clear, which happens only below.
        unsafe { (item.run)(item) }
    });
    trace::workqueue_execute_end(item, item.name);
    CURRENT_WORK.with(|c| c.set(ptr::null()));
    work::finish(&item.state);
}

/// Pins the calling thread to `cpu` if the process may run there (errors are ignored: a
/// restricted CPU set leaves the worker unpinned).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it (cpu is
    // bounded by the online count, far below CPU_SETSIZE on the machines we run on).
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Links `raw` on `pool` of `wq` (the caller has just set `LINKED`) and wakes the worker.
/// Async-signal-safe.
fn push(wq: &WqInner, pool: &Pool, raw: &RawWork) {
    trace::workqueue_queue_work(raw, raw.name, &wq.name, pool.cpu);
    trace::workqueue_activate_work(raw);
    pool.pushed.fetch_add(1, SeqCst);
    pool.list.push(raw);
    wake_up(&pool.more);
}

/// Runs `f` (which may link work on `wq`) unless `wq` is destroyed: a queueing call announces
/// itself in `inflight` before it checks `dead`, and `destroy_workqueue` sets `dead` before it
/// waits for `inflight` to reach 0 and stops the workers, so no item is ever linked on a list
/// whose worker has gone (a `queue_work` that returned true always runs). Async-signal-safe.
fn live<R>(wq: &WqInner, f: impl FnOnce() -> R) -> Option<R> {
    wq.inflight.fetch_add(1, SeqCst);
    let r = (!wq.dead.load(SeqCst)).then(f);
    wq.inflight.fetch_sub(1, SeqCst);
    r
}

/// Queues `raw` on `pool` unless pending or being cancelled. Async-signal-safe.
fn queue_raw(wq: &WqInner, pool: &Pool, raw: &RawWork) -> bool {
    live(wq, || queue_live(wq, pool, raw)).unwrap_or(false)
}

fn queue_live(wq: &WqInner, pool: &Pool, raw: &RawWork) -> bool {
    match work::queue(&raw.state) {
        Some(link) => {
            if link {
                push(wq, pool, raw);
            }
            true
        }
        None => false,
    }
}

fn pool_for(wq: &WqInner, cpu: usize) -> &Pool {
    &wq.pools[cpu % wq.pools.len()]
}

/// `queue_work(wq, &work)`: queues the container's work item `ID` on `wq`, on the calling
/// CPU's worker. False if it was already pending (then it runs once) or is being cancelled, or
/// `wq` is destroyed. Any context, softirq included.
pub fn queue_work<T: HasWork<ID>, const ID: u64>(wq: &Workqueue, this: Pin<&T>) -> bool {
    queue_work_on(smp_processor_id(), wq, this)
}

/// `queue_work_on(cpu, wq, &work)`: as [`queue_work`], on `cpu`'s worker.
pub fn queue_work_on<T: HasWork<ID>, const ID: u64>(
    cpu: usize,
    wq: &Workqueue,
    this: Pin<&T>,
) -> bool {
    queue_raw(
        wq.inner,
        pool_for(wq.inner, cpu),
        &this.get_ref().work().raw,
    )
}

/// `cancel_work_sync(&work)`: on return the work is neither pending nor running anywhere.
/// If it was pending it will not run; if it is running, waits for the handler to return.
/// Returns true if it was pending. Process context. Called from the work's own handler it
/// only cancels a pending re-queue (waiting for itself would deadlock).
#[track_caller]
pub fn cancel_work_sync<T, const ID: u64>(work: &Work<T, ID>) -> bool {
    if !sched::might_sleep() {
        return false;
    }
    cancel_raw_sync(&work.raw)
}

fn cancel_raw_sync(raw: &RawWork) -> bool {
    cancel_raw_sync_with(raw, || {})
}

/// Clears `PENDING` (and `DELAYED`); true if it was pending. Any context.
fn unpend(raw: &RawWork) -> bool {
    work::unpend(&raw.state)
}

/// The synchronous cancel; `stop_timer` deactivates a delay timer (after `CANCELING` is set,
/// before `PENDING` is cleared).
fn cancel_raw_sync_with(raw: &RawWork, stop_timer: impl FnOnce()) -> bool {
    if ptr::eq(CURRENT_WORK.with(Cell::get), raw) {
        stop_timer();
        return unpend(raw);
    }
    let _ = update(raw, |s| Some(s | CANCELING));
    stop_timer();
    let was = unpend(raw);
    wait_state_clear(raw, RUNNING);
    let _ = update(raw, |s| Some(s & !CANCELING));
    was
}

/// `cancel_work(&work)`: the asynchronous cancel: a pending work will not run; a running one
/// may still be running on return. True if it was pending. Any context.
pub fn cancel_work<T, const ID: u64>(work: &Work<T, ID>) -> bool {
    unpend(&work.raw)
}

/// `flush_work(&work)`: waits until the work is neither pending nor running (a delayed work
/// whose timer has not fired counts as pending). True if it had to wait. Process context.
#[track_caller]
pub fn flush_work<T, const ID: u64>(work: &Work<T, ID>) -> bool {
    if !sched::might_sleep() || ptr::eq(CURRENT_WORK.with(Cell::get), &work.raw) {
        return false;
    }
    let busy = work.raw.state.load(SeqCst) & (PENDING | RUNNING) != 0;
    wait_state_clear(&work.raw, PENDING | RUNNING);
    busy
}

/// `create_workqueue(name)`: a workqueue with one worker per online CPU, named `name/<cpu>`.
/// Process context.
#[track_caller]
pub fn create_workqueue(name: &str) -> Result<Workqueue> {
    if !sched::might_sleep() {
        return Err(Error::EWOULDBLOCK);
    }
    Workqueue::create(name, true)
}

/// `create_singlethread_workqueue(name)`: a workqueue with one worker named `name`.
/// Process context.
#[track_caller]
pub fn create_singlethread_workqueue(name: &str) -> Result<Workqueue> {
    if !sched::might_sleep() {
        return Err(Error::EWOULDBLOCK);
    }
    Workqueue::create(name, false)
}

/// `flush_workqueue(wq)`: waits until every work queued on `wq` before the call has finished.
/// Does not wait for delayed work whose timer has not fired. Process context; from one of
/// `wq`'s own workers it warns and returns (it would wait for itself).
#[track_caller]
pub fn flush_workqueue(wq: &Workqueue) {
    if !sched::might_sleep() {
        return;
    }
    flush_inner(wq.inner, Location::caller());
}

/// Flushing a workqueue from one of its own work items: the kernel's lockdep report on the
/// workqueue's completion map (it would wait for itself); taints, and the flush returns.
fn recursive_flush(wq: &WqInner, caller: &Location<'_>) {
    crate::kernel::bug::add_taint(crate::kernel::bug::TAINT_WARN);
    let t = sched::current();
    crate::pr_warn!("============================================");
    crate::pr_warn!("WARNING: possible recursive locking detected");
    crate::pr_warn!("--------------------------------------------");
    crate::pr_warn!("{}/{} is trying to acquire lock:", t.comm(), t.pid());
    crate::pr_warn!(" ((wq_completion){}), at: __flush_workqueue", wq.name);
    crate::pr_warn!("");
    crate::pr_warn!("but task is already holding lock:");
    crate::pr_warn!(" ((wq_completion){}), at: process_one_work", wq.name);
    crate::pr_warn!("");
    crate::pr_warn!(" *** DEADLOCK ***");
    crate::pr_warn!("");
    crate::pr_warn!(
        "flush of workqueue {} from its own work item at {}:{}: it would wait for itself (not flushed)",
        wq.name,
        caller.file(),
        caller.line()
    );
}

fn flush_inner(wq: &WqInner, caller: &Location<'_>) {
    let me = CURRENT_POOL.with(Cell::get);
    if wq.pools.iter().any(|p| ptr::eq(p, me)) {
        recursive_flush(wq, caller);
        return;
    }
    let targets: Vec<u64> = wq.pools.iter().map(|p| p.pushed.load(SeqCst)).collect();
    for (pool, target) in wq.pools.iter().zip(targets) {
        wait_event(&pool.progress, || pool.done.load(SeqCst) >= target);
    }
}

/// `drain_workqueue(wq)`: flushes until the queue stays empty (work queued by its own work
/// items included). Process context.
#[track_caller]
pub fn drain_workqueue(wq: &Workqueue) {
    if !sched::might_sleep() {
        return;
    }
    drain_inner(wq.inner);
}

#[track_caller]
fn drain_inner(wq: &WqInner) {
    loop {
        let before: u64 = wq.pools.iter().map(|p| p.pushed.load(SeqCst)).sum();
        flush_inner(wq, Location::caller());
        let after: u64 = wq.pools.iter().map(|p| p.pushed.load(SeqCst)).sum();
        if before == after {
            return;
        }
    }
}

/// `destroy_workqueue(wq)`: drains the queue (everything queued runs), stops and joins its
/// workers. Later `queue_work` calls on it return false. Process context.
#[track_caller]
pub fn destroy_workqueue(wq: Workqueue) {
    drop(wq);
}

fn destroy_inner(wq: &'static WqInner) {
    if wq.dead.load(SeqCst) || !sched::might_sleep() {
        return;
    }
    drain_inner(wq);
    if wq.dead.swap(true, SeqCst) {
        return; // destroyed concurrently
    }
    // Queueing calls that passed the `dead` check finish linking (see `live`).
    while wq.inflight.load(SeqCst) != 0 {
        std::thread::yield_now();
    }
    for pool in wq.pools.iter() {
        let task = pool.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            // The worker only exits once its list is empty.
            kthread::kthread_stop(&task);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The system workqueue `events`.

static SYSTEM_WQ: OnceLock<Workqueue> = OnceLock::new();

/// Creates the system workqueue `events` (workers `events/0` ... `events/<ncpu-1>`) if it does
/// not exist yet. Called by the runtime's start; safe to call again. Process context.
pub fn init() -> Result {
    if SYSTEM_WQ.get().is_some() {
        return Ok(());
    }
    static CREATING: Mutex<()> = Mutex::new(());
    let _g = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    if SYSTEM_WQ.get().is_none() {
        let wq = Workqueue::create("events", true)?;
        let _ = SYSTEM_WQ.set(wq);
    }
    Ok(())
}

/// `system_wq`: the system workqueue. In process context it is created on first use; in
/// softirq context it must already exist ([`init`]), else `None`.
pub fn system_wq() -> Option<&'static Workqueue> {
    if let Some(wq) = SYSTEM_WQ.get() {
        return Some(wq);
    }
    if !sched::in_task() {
        return None;
    }
    init().ok()?;
    SYSTEM_WQ.get()
}

/// `schedule_work(&work)`: [`queue_work`] on the system queue (`events/<this cpu>`).
/// Any context, softirq included (the system queue must exist then: see [`init`]).
pub fn schedule_work<T: HasWork<ID>, const ID: u64>(this: Pin<&T>) -> bool {
    match system_wq() {
        Some(wq) => queue_work(wq, this),
        None => {
            crate::pr_err!(
                "schedule_work: the events workqueue does not exist yet (workqueue::init)\n"
            );
            false
        }
    }
}

/// `schedule_work_on(cpu, &work)`: [`queue_work_on`] on the system queue.
pub fn schedule_work_on<T: HasWork<ID>, const ID: u64>(cpu: usize, this: Pin<&T>) -> bool {
    match system_wq() {
        Some(wq) => queue_work_on(cpu, wq, this),
        None => {
            crate::pr_err!(
                "schedule_work_on: the events workqueue does not exist yet (workqueue::init)\n"
            );
            false
        }
    }
}

/// `flush_scheduled_work()`: [`flush_workqueue`] on the system queue. Process context.
#[track_caller]
pub fn flush_scheduled_work() {
    if !sched::might_sleep() {
        return;
    }
    if let Some(wq) = SYSTEM_WQ.get() {
        flush_inner(wq.inner, Location::caller());
    }
}

/// The work item `schedule_on_each_cpu` queues on every CPU.
struct OnCpu<'a> {
    work: Work<OnCpu<'a>>,
    f: &'a (dyn Fn() + Sync),
}

// SAFETY: OFFSET is `offset_of!` the `work` field, of type `Work<Self, 0>` (the offset does not
// depend on the lifetime); `work` is declared first and the caller waits for every run.
unsafe impl HasWork for OnCpu<'_> {
    const OFFSET: usize = core::mem::offset_of!(OnCpu<'static>, work);
}

/// `schedule_on_each_cpu(func)`: runs `f` once on every `events/<cpu>` worker and waits for
/// all of them. `Err` if the system queue cannot be created.
/// Process context.
#[track_caller]
pub fn schedule_on_each_cpu(f: impl Fn() + Sync) -> Result {
    if !sched::might_sleep() {
        return Err(Error::EWOULDBLOCK);
    }
    let Some(wq) = system_wq() else {
        return Err(Error::ENOMEM);
    };
    let f: &(dyn Fn() + Sync) = &f;
    let items: Vec<Pin<Box<OnCpu<'_>>>> = (0..wq.inner.pools.len())
        .map(|_| {
            Box::pin(OnCpu {
                work: Work::new(|c: &OnCpu<'_>| (c.f)()),
                f,
            })
        })
        .collect();
    for (cpu, item) in items.iter().enumerate() {
        queue_work_on(cpu, wq, item.as_ref());
    }
    for item in &items {
        flush_work(&item.work);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Delayed work.

/// Where a delayed work's timer queues it (set when it is queued, read by the timer handler).
struct DelayTarget {
    work: AtomicPtr<RawWork>,
    wq: AtomicPtr<WqInner>,
    cpu: AtomicUsize,
}

/// `struct delayed_work`: a work item plus the `timer_list` that queues it after a delay.
///
/// Embed it in the container and implement [`HasDelayedWork`] with
/// [`impl_has_delayed_work!`](crate::impl_has_delayed_work). Its timer handler runs in softirq
/// context and only links the work on the target queue (lock-free, no allocation).
/// Dropping it cancels it synchronously (`cancel_delayed_work_sync`).
#[repr(C)]
pub struct DelayedWork<T, const ID: u64 = 0> {
    /// `dwork->work`: the work item proper (public for `offset_of!`).
    pub work: Work<T, ID>,
    timer: TimerList<DelayTarget>,
}

impl<T, const ID: u64> core::fmt::Debug for DelayedWork<T, ID> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DelayedWork")
            .field("work", &self.work)
            .field("timer_pending", &self.timer.timer_pending())
            .finish()
    }
}

/// A type that embeds a [`DelayedWork<Self, ID>`].
///
/// Implement it with [`impl_has_delayed_work!`](crate::impl_has_delayed_work).
///
/// # Safety
/// `DW_OFFSET` is the byte offset of a field of type `DelayedWork<Self, ID>` inside `Self`, and
/// [`HasWork<ID>`] points at that field's `work` (plus `HasWork`'s drop rule).
pub unsafe trait HasDelayedWork<const ID: u64 = 0>: HasWork<ID> {
    /// Offset of the `DelayedWork<Self, ID>` field.
    const DW_OFFSET: usize;

    /// The embedded delayed work.
    fn delayed_work(&self) -> &DelayedWork<Self, ID> {
        // SAFETY: by the trait's contract a `DelayedWork<Self, ID>` lives at `DW_OFFSET`.
        unsafe { &*ptr::from_ref(self).cast::<u8>().add(Self::DW_OFFSET).cast() }
    }
}

/// Implements [`HasDelayedWork`] (and [`HasWork`] for its inner work) from the name of a
/// `DelayedWork` field: `impl_has_delayed_work!(MyData, dwork)`, or with an ID:
/// `impl_has_delayed_work!(MyData, dwork, 1)`. Same drop rule as
/// [`impl_has_work!`](crate::impl_has_work): declare the field before what its handler uses.
#[macro_export]
macro_rules! impl_has_delayed_work {
    ($ty:ty, $field:ident) => {
        $crate::impl_has_delayed_work!($ty, $field, 0);
    };
    ($ty:ty, $field:ident, $id:expr) => {
        $crate::impl_has_work!($ty, $field.work, $id);
        // SAFETY: the offset comes from `offset_of!` on a field whose type the function below
        // checks to be `DelayedWork<Self, ID>`; `HasWork` above names its `work`.
        unsafe impl $crate::kernel::workqueue::HasDelayedWork<{ $id }> for $ty {
            const DW_OFFSET: usize = {
                #[allow(dead_code)]
                fn check(c: &$ty) -> &$crate::kernel::workqueue::DelayedWork<$ty, { $id }> {
                    &c.$field
                }
                ::core::mem::offset_of!($ty, $field)
            };
        }
    };
}

impl<T: HasWork<ID>, const ID: u64> DelayedWork<T, ID> {
    /// `INIT_DELAYED_WORK(&dwork, handler)`: an idle delayed work (allocates its timer node:
    /// process context).
    pub fn new<F: WorkFn<T>>(handler: F) -> Self {
        Self {
            work: Work::new(handler),
            timer: TimerList::new(
                delayed_work_timer_fn,
                DelayTarget {
                    work: AtomicPtr::new(ptr::null_mut()),
                    wq: AtomicPtr::new(ptr::null_mut()),
                    cpu: AtomicUsize::new(0),
                },
            ),
        }
    }
}

impl<T, const ID: u64> DelayedWork<T, ID> {
    /// `delayed_work_pending()`: its timer is armed or the work is queued.
    pub fn pending(&self) -> bool {
        self.work.pending()
    }

    /// True while its delay timer is armed.
    pub fn timer_pending(&self) -> bool {
        self.timer.timer_pending()
    }
}

impl<T, const ID: u64> Drop for DelayedWork<T, ID> {
    fn drop(&mut self) {
        // Stop the timer first (in softirq context no other timer handler runs: no wait);
        // `work`'s own Drop then reports a pending work, cancels it and waits for the worker.
        if panic::in_irq_context() {
            self.timer.del_timer();
        } else {
            self.timer.del_timer_sync();
        }
    }
}

/// The delay timer's handler (softirq context): links the work on its target queue, unless it
/// was cancelled meanwhile. Lock-free, allocation-free.
fn delayed_work_timer_fn(t: &Timer<DelayTarget>) {
    let d = t.data();
    let raw = d.work.load(SeqCst);
    let wq = d.wq.load(SeqCst);
    // SAFETY: both were set by `queue_delayed_work_on` before arming: `raw` is the work of a
    // pinned container whose DelayedWork's Drop stops this timer (del_timer_sync) before the
    // memory goes; `wq` is a control block, never freed.
    let (Some(raw), Some(wq)) = (unsafe { raw.as_ref() }, unsafe { wq.as_ref() }) else {
        return;
    };
    link_delayed(wq, d.cpu.load(SeqCst), raw);
}

/// The delay is over: link the work (if still pending) on `cpu`'s worker of `wq`.
fn link_delayed(wq: &WqInner, cpu: usize, raw: &RawWork) {
    let linked = live(wq, || {
        if let Ok(old) = update(raw, |s| {
            (s & PENDING != 0).then_some((s & !DELAYED) | LINKED)
        }) && old & LINKED == 0
        {
            push(wq, pool_for(wq, cpu), raw);
        }
    });
    if linked.is_none() {
        unpend(raw); // the queue was destroyed under its timer: the work will not run
    }
}

/// `queue_delayed_work_on(cpu, wq, &dwork, delay)`: queues the work on `cpu`'s worker of `wq`
/// once `delay` jiffies have passed (0: now). False if it was already pending (its timer is not
/// moved) or is being cancelled, or `wq` is destroyed. Any context, softirq included.
pub fn queue_delayed_work_on<T: HasDelayedWork<ID>, const ID: u64>(
    cpu: usize,
    wq: &Workqueue,
    this: Pin<&T>,
    delay: u64,
) -> bool {
    let dw = this.get_ref().delayed_work();
    let raw = &dw.work.raw;
    if wq.inner.dead.load(SeqCst) {
        return false;
    }
    let delayed = if delay == 0 { 0 } else { DELAYED };
    if update(raw, |s| {
        (s & (PENDING | CANCELING) == 0).then_some(s | PENDING | delayed)
    })
    .is_err()
    {
        return false;
    }
    if delay == 0 {
        link_delayed(wq.inner, cpu, raw);
        return true;
    }
    let target = dw.timer.data();
    target.work.store(ptr::from_ref(raw).cast_mut(), SeqCst);
    target.wq.store(ptr::from_ref(wq.inner).cast_mut(), SeqCst);
    target.cpu.store(cpu, SeqCst);
    dw.timer.mod_timer(jiffies::jiffies().wrapping_add(delay));
    true
}

/// `queue_delayed_work(wq, &dwork, delay)`: [`queue_delayed_work_on`] the calling CPU.
pub fn queue_delayed_work<T: HasDelayedWork<ID>, const ID: u64>(
    wq: &Workqueue,
    this: Pin<&T>,
    delay: u64,
) -> bool {
    queue_delayed_work_on(smp_processor_id(), wq, this, delay)
}

/// `schedule_delayed_work(&dwork, delay)`: [`queue_delayed_work`] on the system queue.
pub fn schedule_delayed_work<T: HasDelayedWork<ID>, const ID: u64>(
    this: Pin<&T>,
    delay: u64,
) -> bool {
    schedule_delayed_work_on(smp_processor_id(), this, delay)
}

/// `schedule_delayed_work_on(cpu, &dwork, delay)`: [`queue_delayed_work_on`] on the system queue.
pub fn schedule_delayed_work_on<T: HasDelayedWork<ID>, const ID: u64>(
    cpu: usize,
    this: Pin<&T>,
    delay: u64,
) -> bool {
    match system_wq() {
        Some(wq) => queue_delayed_work_on(cpu, wq, this, delay),
        None => {
            crate::pr_err!(
                "schedule_delayed_work: the events workqueue does not exist yet (workqueue::init)"
            );
            false
        }
    }
}

/// `cancel_delayed_work(&dwork)`: the asynchronous cancel: deactivates the timer and unqueues
/// the work; a handler already running may still run on return. True if it was pending.
/// Any context.
pub fn cancel_delayed_work<T, const ID: u64>(dwork: &DelayedWork<T, ID>) -> bool {
    dwork.timer.del_timer();
    unpend(&dwork.work.raw)
}

/// `cancel_delayed_work_sync(&dwork)`: on return the timer is off and the work runs nowhere
/// (waits for a running handler). True if it was pending. Process context.
#[track_caller]
pub fn cancel_delayed_work_sync<T, const ID: u64>(dwork: &DelayedWork<T, ID>) -> bool {
    if !sched::might_sleep() {
        return false;
    }
    cancel_raw_sync_with(&dwork.work.raw, || {
        dwork.timer.del_timer_sync();
    })
}
