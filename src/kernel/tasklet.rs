//! Tasklets: deferred functions that run in softirq context (`HI_SOFTIRQ`, `TASKLET_SOFTIRQ`).
//!
//! ```
//! use std::pin::Pin;
//! use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
//! use deferred::kernel::tasklet::{Tasklet, tasklet_enable, tasklet_kill, tasklet_schedule};
//!
//! fn handler(t: Pin<&Tasklet<AtomicU32>>) {                           // softirq context
//!     let n = t.data().fetch_add(1, SeqCst) + 1;
//!     deferred::pr_info!("tasklet run {n}");
//! }
//!
//! static MY_TASKLET: Tasklet<AtomicU32> = Tasklet::new(handler, AtomicU32::new(0)); // DECLARE_TASKLET
//! static OFF: Tasklet<AtomicU32> = Tasklet::new_disabled(handler, AtomicU32::new(0)); // DECLARE_TASKLET_DISABLED
//!
//! deferred::kernel::start()?;
//! tasklet_schedule(Pin::static_ref(&MY_TASKLET));
//! tasklet_kill(&MY_TASKLET);                 // waits until it has run
//! assert_eq!(MY_TASKLET.data().load(SeqCst), 1);
//!
//! tasklet_schedule(Pin::static_ref(&OFF));   // held while disabled...
//! tasklet_enable(&OFF);                      // ...runs once enabled
//! tasklet_kill(&OFF);
//! assert_eq!(OFF.data().load(SeqCst), 1);
//!
//! let t = Box::pin(Tasklet::new(handler, AtomicU32::new(0)));  // dynamic: tasklet_init
//! tasklet_schedule(t.as_ref());
//! drop(t);                                   // Drop runs tasklet_kill
//! # Ok::<(), deferred::kernel::error::Error>(())
//! ```
//!
//! The lab text's rules, all kept: scheduled several times before it runs, a tasklet runs once; once
//! it has run it can be scheduled again, also from its own handler; `tasklet_hi_schedule` puts it
//! on the `HI_SOFTIRQ` list, which runs before everything else; a tasklet never runs on two
//! threads at once (softirq processing is serialised, and the `RUN` bit makes it explicit);
//! `tasklet_disable` holds it (it stays scheduled and runs after `tasklet_enable`);
//! `tasklet_kill` waits until it is neither scheduled nor running.
//!
//! One departure from the kernel, for the better: the kernel puts a disabled, scheduled tasklet
//! back on the list and re-raises the softirq, spinning through softirq rounds until it is
//! enabled; here it is *parked* (taken off the list, `PARKED` bit set) and `tasklet_enable`
//! requeues it, so a disabled tasklet costs nothing while it waits.
//!
//! Scheduling links the tasklet into a list by address, so it takes `Pin<&Tasklet>`: a static
//! (`Pin::static_ref`) or a pinned heap tasklet (`Box::pin`, `Arc::pin`). `Drop` runs
//! `tasklet_kill`, so a tasklet is never freed while scheduled or running.
//!
//! # Ground rules (shared with signal context)
//! - `state` bits, atomic: `SCHED` (on a list or parked; set by whoever schedules it, which
//!   alone may link it), `RUN` (its handler is running), `PARKED` (scheduled but off-list
//!   because disabled; whoever clears it owns the requeue), `HI` (which list it belongs to).
//! - `next` is written only by the pusher that holds `SCHED` and read by the action after
//!   taking the whole list with a swap; each node is on a list at most once, so the lock-free
//!   push (a CAS on the head) has no ABA problem.
//! - `count` (disable depth) is an atomic; the action re-checks it after setting `PARKED`, and
//!   `tasklet_enable` clears `PARKED` after dropping it to 0, so a parked tasklet is never lost.
//! - The handler only borrows the tasklet; it is owned in process context (or static).

use std::marker::PhantomPinned;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use crate::kernel::panic;
use crate::kernel::softirq::{self, Softirq};
use crate::kernel::trace;

const SCHED: u32 = 1;
const RUN: u32 = 2;
const PARKED: u32 = 4;
const HI: u32 = 8;

#[repr(C)]
struct Node {
    next: AtomicPtr<Node>,
    state: AtomicU32,
    count: AtomicU32,
    call: unsafe fn(*const Node),
    /// The handler's name, for reports.
    name: panic::Name,
}

static TASKLET_VEC: AtomicPtr<Node> = AtomicPtr::new(std::ptr::null_mut());
static TASKLET_HI_VEC: AtomicPtr<Node> = AtomicPtr::new(std::ptr::null_mut());

/// `struct tasklet_struct`: a handler, its data, and the scheduling state.
///
/// `T` is shared with the handler, which runs in softirq context on some thread: `Sync`.
#[repr(C)]
pub struct Tasklet<T = ()> {
    node: Node,
    /// The handler: `call_handler::<T, F>`.
    func: fn(Pin<&Tasklet<T>>),
    data: T,
    _pin: PhantomPinned,
}

/// What a tasklet handler is: a function `fn(Pin<&Tasklet<T>>)` (or a closure that captures
/// nothing). The runtime keeps its type, which also names it in reports (`type_name`).
pub trait TaskletFn<T>: Fn(Pin<&Tasklet<T>>) + Copy + Send + Sync {}
impl<T, F: Fn(Pin<&Tasklet<T>>) + Copy + Send + Sync> TaskletFn<T> for F {}

fn call_handler<T, F: TaskletFn<T>>(t: Pin<&Tasklet<T>>) {
    panic::conjure::<F>()(t)
}

// SAFETY: the node is only touched through atomics (Ground rules); `data` is Sync.
unsafe impl<T: Sync> Sync for Tasklet<T> {}
// SAFETY: as above; nothing in the node is tied to a thread.
unsafe impl<T: Send> Send for Tasklet<T> {}

/// # Safety
/// `n` heads a live `Tasklet<T>` (`repr(C)`, node first) that is pinned.
unsafe fn call_tasklet<T>(n: *const Node) {
    // SAFETY: per the contract: live and pinned.
    let t = unsafe { Pin::new_unchecked(&*(n as *const Tasklet<T>)) };
    trace::tasklet_entry(n, t.node.name);
    (t.func)(t);
    trace::tasklet_exit(n, t.node.name);
}

impl<T> Tasklet<T> {
    /// `DECLARE_TASKLET` / `tasklet_init`: an enabled tasklet.
    pub const fn new<F: TaskletFn<T>>(func: F, data: T) -> Self {
        Self::with_count(func, data, 0)
    }

    /// `DECLARE_TASKLET_DISABLED`: a disabled tasklet (count 1): scheduling it queues it, and it
    /// runs after `tasklet_enable`.
    pub const fn new_disabled<F: TaskletFn<T>>(func: F, data: T) -> Self {
        Self::with_count(func, data, 1)
    }

    const fn with_count<F: TaskletFn<T>>(func: F, data: T, count: u32) -> Self {
        let _ = func; // zero-sized: its type is what is kept
        Tasklet {
            node: Node {
                next: AtomicPtr::new(std::ptr::null_mut()),
                state: AtomicU32::new(0),
                count: AtomicU32::new(count),
                call: call_tasklet::<T>,
                name: panic::name_of::<F>,
            },
            func: call_handler::<T, F>,
            data,
            _pin: PhantomPinned,
        }
    }

    /// The handler's name (its path), as reports print it.
    pub fn handler_name(&self) -> &'static str {
        (self.node.name)()
    }

    /// The tasklet's data (the kernel's `data` argument, or `from_tasklet`).
    pub fn data(&self) -> &T {
        &self.data
    }

    /// Scheduled and not yet run.
    pub fn is_scheduled(&self) -> bool {
        self.node.state.load(Ordering::SeqCst) & SCHED != 0
    }

    /// Its handler is running right now.
    pub fn is_running(&self) -> bool {
        self.node.state.load(Ordering::SeqCst) & RUN != 0
    }

    fn node_ptr(&self) -> *mut Node {
        &self.node as *const Node as *mut Node
    }

    /// `tasklet_schedule`: run the handler once, soon, from `TASKLET_SOFTIRQ`. Any context.
    pub fn schedule(self: Pin<&Self>) {
        if self.node.state.fetch_or(SCHED, Ordering::SeqCst) & SCHED == 0 {
            self.node.state.fetch_and(!HI, Ordering::SeqCst);
            push(&TASKLET_VEC, self.node_ptr());
            softirq::raise_softirq(Softirq::Tasklet);
        }
    }

    /// `tasklet_hi_schedule`: as `schedule`, on the `HI_SOFTIRQ` list (runs first). Any context.
    pub fn hi_schedule(self: Pin<&Self>) {
        if self.node.state.fetch_or(SCHED, Ordering::SeqCst) & SCHED == 0 {
            self.node.state.fetch_or(HI, Ordering::SeqCst);
            push(&TASKLET_HI_VEC, self.node_ptr());
            softirq::raise_softirq(Softirq::Hi);
        }
    }

    /// `tasklet_disable_nosync`: stop the tasklet from running (nests); does not wait.
    pub fn disable_nosync(&self) {
        self.node.count.fetch_add(1, Ordering::SeqCst);
    }

    /// `tasklet_disable`: stop the tasklet from running (nests) and wait until a running
    /// handler has finished. A scheduled tasklet stays scheduled and runs after enable.
    pub fn disable(&self) {
        self.disable_nosync();
        self.unlock_wait();
    }

    /// `tasklet_enable`: undo one disable; at 0 a tasklet scheduled meanwhile is queued again.
    pub fn enable(&self) {
        let prev = self.node.count.fetch_sub(1, Ordering::SeqCst);
        if prev == 1 {
            unpark(self.node_ptr());
        } else if prev == 0 {
            self.node.count.fetch_add(1, Ordering::SeqCst);
            crate::pr_warn!("tasklet_enable() on an enabled tasklet");
        }
    }

    /// `tasklet_kill`: wait until the tasklet is neither scheduled nor running (a scheduled
    /// one runs first; a disabled scheduled one is simply unscheduled). It may be scheduled
    /// again afterwards. Process context (bottom halves may be off: ksoftirqd/0 runs it);
    /// from softirq context the kernel's notice is printed and it returns.
    pub fn kill(&self) {
        if softirq::in_serving_softirq() || softirq::in_irq() {
            crate::pr_notice!("Attempt to kill tasklet from interrupt");
            return;
        }
        let st = &self.node.state;
        let mut spins = 0u32;
        // If it was scheduled with bottom halves off and nothing woke ksoftirqd/0 yet, make
        // sure someone runs it while we wait.
        if st.load(Ordering::SeqCst) & SCHED != 0 {
            softirq::wakeup_softirqd();
        }
        loop {
            let s = st.fetch_or(SCHED, Ordering::SeqCst);
            if s & SCHED == 0 {
                break;
            }
            if s & PARKED != 0 && st.fetch_and(!PARKED, Ordering::SeqCst) & PARKED != 0 {
                // We own the parked tasklet: it is on no list; SCHED (still set) is ours.
                break;
            }
            backoff(&mut spins);
        }
        self.unlock_wait();
        st.fetch_and(!(SCHED | HI), Ordering::SeqCst);
    }

    /// `tasklet_unlock_wait`: wait while the handler runs (not from the handler itself).
    fn unlock_wait(&self) {
        if softirq::in_serving_softirq() {
            // Tasklets run one at a time: if we are in softirq context, only we could be
            // running it, and waiting for ourselves would never end.
            return;
        }
        let mut spins = 0u32;
        while self.is_running() {
            backoff(&mut spins);
        }
    }
}

impl<T> Drop for Tasklet<T> {
    fn drop(&mut self) {
        if softirq::in_serving_softirq() || softirq::in_irq() {
            if self.is_scheduled() || self.is_running() {
                // On a list, or running: the softirq touches it after we return, and nothing
                // here may wait for that.
                crate::kernel::debugobjects::report_free_active(
                    "tasklet_struct",
                    self.handler_name(),
                );
                panic::panic_in_interrupt("tasklet_struct freed in softirq context while active");
            }
            return;
        }
        self.kill();
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 100 {
        // SAFETY: plain syscall.
        unsafe { libc::sched_yield() };
    } else {
        crate::kernel::sched::sleep_until_ns(crate::kernel::jiffies::monotonic_ns() + 100_000);
    }
}

fn push(list: &AtomicPtr<Node>, n: *mut Node) {
    let mut head = list.load(Ordering::SeqCst);
    loop {
        // SAFETY: `n` is a live pinned tasklet whose SCHED bit we hold: only we write `next`.
        unsafe { (*n).next.store(head, Ordering::Relaxed) };
        match list.compare_exchange_weak(head, n, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return,
            Err(h) => head = h,
        }
    }
}

/// Requeue a parked tasklet if we are the one that clears `PARKED` and it is enabled.
fn unpark(n: *mut Node) {
    // SAFETY: `n` is a live tasklet (a caller's reference, or a node the action holds).
    let node = unsafe { &*n };
    if node.count.load(Ordering::SeqCst) != 0 {
        return;
    }
    if node.state.fetch_and(!PARKED, Ordering::SeqCst) & PARKED != 0 {
        if node.state.load(Ordering::SeqCst) & HI != 0 {
            push(&TASKLET_HI_VEC, n);
            softirq::raise_softirq(Softirq::Hi);
        } else {
            push(&TASKLET_VEC, n);
            softirq::raise_softirq(Softirq::Tasklet);
        }
    }
}

/// `tasklet_action_common`: run every tasklet on `list`, in scheduling order.
fn action(list: &AtomicPtr<Node>) {
    // Take the whole list, then reverse it (pushes are LIFO) into scheduling order.
    let mut l = list.swap(std::ptr::null_mut(), Ordering::SeqCst);
    let mut fifo: *mut Node = std::ptr::null_mut();
    while !l.is_null() {
        // SAFETY: nodes on a list are live (scheduled tasklets cannot be freed: Drop kills).
        let next = unsafe { (*l).next.load(Ordering::Relaxed) };
        // SAFETY: as above; we own the taken list.
        unsafe { (*l).next.store(fifo, Ordering::Relaxed) };
        fifo = l;
        l = next;
    }
    while !fifo.is_null() {
        let n = fifo;
        // SAFETY: live (see above). Read `next` before the handler may re-schedule `n`.
        let node = unsafe { &*n };
        fifo = node.next.load(Ordering::Relaxed);
        if node.state.fetch_or(RUN, Ordering::SeqCst) & RUN == 0 {
            if node.count.load(Ordering::SeqCst) == 0 {
                node.state.fetch_and(!SCHED, Ordering::SeqCst);
                let vec = if node.state.load(Ordering::SeqCst) & HI != 0 {
                    Softirq::Hi
                } else {
                    Softirq::Tasklet
                };
                panic::softirq_call(panic::Kind::Tasklet, vec as usize, Some(node.name), || {
                    // SAFETY: `n` heads a live, pinned Tasklet<T> of the type its `call` was
                    // made for.
                    unsafe { (node.call)(n) }
                });
                // After this store the owner may free the tasklet: do not touch `node` again.
                node.state.fetch_and(!RUN, Ordering::SeqCst);
                continue;
            }
            node.state.fetch_and(!RUN, Ordering::SeqCst);
            // Disabled: park it; tasklet_enable requeues it. Re-check against a racing enable.
            node.state.fetch_or(PARKED, Ordering::SeqCst);
            unpark(n);
            continue;
        }
        // Running elsewhere (cannot happen while softirqs are serialised): try again later.
        let hi = node.state.load(Ordering::SeqCst) & HI != 0;
        push(list, n);
        softirq::raise_softirq_irqoff(if hi { Softirq::Hi } else { Softirq::Tasklet });
    }
}

fn tasklet_action() {
    action(&TASKLET_VEC);
}

fn tasklet_hi_action() {
    action(&TASKLET_HI_VEC);
}

/// Install the `HI_SOFTIRQ` and `TASKLET_SOFTIRQ` actions (called by the runtime's start).
pub(crate) fn init() {
    softirq::open_softirq(Softirq::Hi, tasklet_hi_action);
    softirq::open_softirq(Softirq::Tasklet, tasklet_action);
}

/// `tasklet_init`: a new enabled tasklet (pin it before scheduling: `Box::pin`).
pub const fn tasklet_init<T, F: TaskletFn<T>>(func: F, data: T) -> Tasklet<T> {
    Tasklet::new(func, data)
}

/// `tasklet_schedule(t)`.
pub fn tasklet_schedule<T>(t: Pin<&Tasklet<T>>) {
    t.schedule()
}

/// `tasklet_hi_schedule(t)`.
pub fn tasklet_hi_schedule<T>(t: Pin<&Tasklet<T>>) {
    t.hi_schedule()
}

/// `tasklet_disable(t)`.
pub fn tasklet_disable<T>(t: &Tasklet<T>) {
    t.disable()
}

/// `tasklet_disable_nosync(t)`.
pub fn tasklet_disable_nosync<T>(t: &Tasklet<T>) {
    t.disable_nosync()
}

/// `tasklet_enable(t)`.
pub fn tasklet_enable<T>(t: &Tasklet<T>) {
    t.enable()
}

/// `tasklet_kill(t)`.
pub fn tasklet_kill<T>(t: &Tasklet<T>) {
    t.kill()
}
