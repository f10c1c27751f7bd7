//! Exercise 6: a kernel thread, started at load and stopped, and waited for, at unload.
//!
//! The lab's `6-kthread` module on the runtime, synchronised as the lab asks: two wait queues
//! and two atomic flags.
//!
//! ```text
//! kthread_init: pr_info("[kthread_init] Init module"); init wq_stop_thread, wq_thread_terminated,
//!               flag_stop_thread = 0, flag_thread_terminated = 0;
//!               kthread_run(my_thread_f, NULL, "%skthread%d", "my", 0)          -> "mykthread0"
//! my_thread_f:  pr_info("[my_thread_f] Current process id is %d (%s)", current->pid, current->comm);
//!               wait_event_interruptible(wq_stop_thread, atomic_read(&flag_stop_thread) != 0);
//!               atomic_set(&flag_thread_terminated, 1); wake_up_interruptible(&wq_thread_terminated);
//!               pr_info("[my_thread_f] Exiting"); do_exit(0)
//! kthread_exit: atomic_set(&flag_stop_thread, 1); wake_up_interruptible(&wq_stop_thread);
//!               wait_event_interruptible(wq_thread_terminated, atomic_read(&flag_thread_terminated) != 0);
//!               pr_info("[kthread_exit] Exit module")
//! ```
//! Where the kernel thread calls `do_exit`, the userspace thread returns from its function; the
//! runtime reaps it, as kthreadd does (no `kthread_stop`). An exit that does not wait for the
//! thread is the kernel's Oops: the module's code freed while its thread still runs it
//! ([`crate::module::ModuleInfo::unload`]; the exit and the thread take turns during the unload,
//! so the report never depends on which thread the scheduler ran first).
//!
//! The `TODO` comments are the lab's steps (`scripts/lab new` strips the lines after each).

use std::sync::Arc;

use crate::kernel::atomic::Atomic;
use crate::kernel::error::Result;
use crate::kernel::kthread::TaskStruct;
use crate::kernel::sched::current;
use crate::kernel::wait::{WaitQueueHead, wait_event_interruptible, wake_up_interruptible};
use crate::module::{Module, ModuleInfo};
use crate::pr_info;

/// The module: `deferred kthread`.
pub const MODULE: ModuleInfo = ModuleInfo {
    name: "kthread",
    description: "exercise 6: a kernel thread `mykthread0`",
    params: &[],
    has_device: false,
    init: |_| Ok(Box::new(KthreadModule::load()?)),
};

/// The two wait queues and two flags shared by the module and its thread.
pub struct Sync {
    wq_stop_thread: WaitQueueHead,
    wq_thread_terminated: WaitQueueHead,
    flag_stop_thread: Atomic,
    flag_thread_terminated: Atomic,
}

/// The thread's function: process context, on its own thread (`kernel::kthread`).
fn my_thread_f(sync: Arc<Sync>) -> i32 {
    // TODO/6: print "[my_thread_f] Current process id is PID (COMM)" of `current()` (the
    // runtime's `kernel::sched::current`: `pid()`, `comm()`).
    let cur = current();
    pr_info!(
        "[my_thread_f] Current process id is {} ({})",
        cur.pid(),
        cur.comm()
    );
    // TODO/3: sleep until the module says stop: `wait_event_interruptible(&wq_stop_thread,
    // || flag_stop_thread.read() != 0)` (`kernel::wait`), again after a spurious wake-up
    // (it returns an error).
    while wait_event_interruptible(&sync.wq_stop_thread, || sync.flag_stop_thread.read() != 0)
        .is_err()
    {}
    // TODO/2: tell the module the thread is done: set `flag_thread_terminated` to 1 and
    // `wake_up_interruptible(&wq_thread_terminated)`.
    sync.flag_thread_terminated.set(1);
    wake_up_interruptible(&sync.wq_thread_terminated);
    pr_info!("[my_thread_f] Exiting");
    0
}

/// The loaded module.
pub struct KthreadModule {
    sync: Arc<Sync>,
    /// The thread (`struct task_struct *`), once started.
    task: Option<TaskStruct>,
}

impl KthreadModule {
    /// `insmod kthread.ko`.
    pub fn load() -> Result<KthreadModule> {
        pr_info!("[kthread_init] Init module");
        let sync = Arc::new(Sync {
            wq_stop_thread: WaitQueueHead::new(),
            wq_thread_terminated: WaitQueueHead::new(),
            flag_stop_thread: Atomic::new(0),
            flag_thread_terminated: Atomic::new(0),
        });
        let mut module = KthreadModule { sync, task: None };
        // TODO/2: start the thread "mykthread0" running `my_thread_f` with the shared state:
        // `kthread_run!(my_thread_f, sync.clone(), "{}kthread{}", "my", 0)` (`kernel::kthread`).
        let task = crate::kthread_run!(my_thread_f, module.sync.clone(), "{}kthread{}", "my", 0)?;
        module.task = Some(task);
        Ok(module)
    }

    /// The thread (`struct task_struct *`), once started.
    pub fn task(&self) -> Option<&TaskStruct> {
        self.task.as_ref()
    }
}

impl Module for KthreadModule {
    fn exit(&mut self) {
        // TODO/7: tell the thread to stop (set `flag_stop_thread`, `wake_up_interruptible(&
        // wq_stop_thread)`), then wait until it says it is done (`wait_event_interruptible` on
        // `wq_thread_terminated`, again after a spurious wake-up).
        self.sync.flag_stop_thread.set(1);
        wake_up_interruptible(&self.sync.wq_stop_thread);
        while wait_event_interruptible(&self.sync.wq_thread_terminated, || {
            self.sync.flag_thread_terminated.read() != 0
        })
        .is_err()
        {}
        pr_info!("[kthread_exit] Exit module");
    }
}
