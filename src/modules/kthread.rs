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
//! unload also joins it (`kthread_stop` on a thread that has already finished only collects its
//! result), so no thread outlives the module.

use std::sync::Arc;

use super::Module;
use crate::kernel::atomic::Atomic;
use crate::kernel::error::Result;
use crate::kernel::kthread::{TaskStruct, kthread_stop};
use crate::kernel::sched::current;
use crate::kernel::wait::{WaitQueueHead, wait_event_interruptible, wake_up_interruptible};
use crate::pr_info;

/// The two wait queues and two flags shared by the module and its thread.
pub struct Sync {
    wq_stop_thread: WaitQueueHead,
    wq_thread_terminated: WaitQueueHead,
    flag_stop_thread: Atomic,
    flag_thread_terminated: Atomic,
}

fn my_thread_f(sync: Arc<Sync>) -> i32 {
    let cur = current();
    pr_info!(
        "[my_thread_f] Current process id is {} ({})",
        cur.pid(),
        cur.comm()
    );
    // Only the stop flag ends the wait: a spurious wake-up goes back to sleep.
    while wait_event_interruptible(&sync.wq_stop_thread, || sync.flag_stop_thread.read() != 0)
        .is_err()
    {}
    sync.flag_thread_terminated.set(1);
    wake_up_interruptible(&sync.wq_thread_terminated);
    pr_info!("[my_thread_f] Exiting");
    0
}

/// The loaded module.
pub struct KthreadModule {
    sync: Arc<Sync>,
    task: TaskStruct,
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
        let task = crate::kthread_run!(my_thread_f, sync.clone(), "{}kthread{}", "my", 0)?;
        Ok(KthreadModule { sync, task })
    }

    /// The thread (`struct task_struct *`).
    pub fn task(&self) -> &TaskStruct {
        &self.task
    }
}

impl Module for KthreadModule {
    fn name(&self) -> &'static str {
        "kthread"
    }

    fn file_operations(&self) -> Option<Arc<dyn crate::kernel::fs::FileOperations>> {
        None
    }

    fn exit(self: Box<Self>) {
        self.sync.flag_stop_thread.set(1);
        wake_up_interruptible(&self.sync.wq_stop_thread);
        while wait_event_interruptible(&self.sync.wq_thread_terminated, || {
            self.sync.flag_thread_terminated.read() != 0
        })
        .is_err()
        {}
        kthread_stop(&self.task);
        pr_info!("[kthread_exit] Exit module");
    }
}
