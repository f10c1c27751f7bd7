//! Kernel threads (src/kernel/kthread.rs) and the lab's exercise 6 protocol.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
use std::thread;
use std::time::Duration;

use deferred::kernel::atomic::Atomic;
use deferred::kernel::kthread::{TaskStruct, kthread_should_stop, kthread_stop, wake_up_process};
use deferred::kernel::sched;
use deferred::kernel::wait::{
    ERESTARTSYS, WaitQueueHead, wait_event, wait_event_interruptible, wake_up_interruptible,
};
use deferred::{kthread_create, kthread_run};

mod runtime_common;
use runtime_common::{in_futex, wait_for, watchdog};

fn comm_of(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The thread is gone: its /proc entry disappears (it may linger a moment after the exit).
fn assert_gone(task: &TaskStruct) {
    let pid = task.pid();
    assert!(
        wait_for(Duration::from_secs(5), || comm_of(pid).is_none()),
        "thread gone from /proc/self/task"
    );
}

#[test]
fn kthread_create_does_not_run_until_wake_up_process() {
    watchdog();
    static RAN: AtomicBool = AtomicBool::new(false);
    fn threadfn(data: i32) -> i32 {
        RAN.store(true, SeqCst);
        data
    }
    let task = kthread_create!(threadfn, 7, "{}kthread{}", "created", 1).unwrap();
    assert_eq!(task.comm(), "createdkthread1");
    assert_eq!(
        comm_of(task.pid()).as_deref(),
        Some("createdkthread1"),
        "the thread exists, named"
    );
    // Asleep (blocked in futex(2)) without having run threadfn.
    assert!(
        wait_for(Duration::from_secs(5), || in_futex(task.pid())),
        "the created thread never went to sleep"
    );
    assert!(!RAN.load(SeqCst), "threadfn ran before wake_up_process");
    assert!(wake_up_process(&task), "a created thread was not running");
    assert!(
        wait_for(Duration::from_secs(5), || RAN.load(SeqCst)),
        "threadfn runs after wake_up_process"
    );
    assert_eq!(kthread_stop(&task), 7);
}

#[test]
fn kthread_run_names_the_thread_and_kthread_stop_returns_the_result() {
    watchdog();
    static SEEN_PID: AtomicI32 = AtomicI32::new(0);
    let task = kthread_run!(
        |_: ()| {
            SEEN_PID.store(sched::current().pid(), SeqCst);
            while !kthread_should_stop() {
                thread::sleep(Duration::from_millis(5));
            }
            42
        },
        (),
        "{}kthread{}",
        "my",
        0
    )
    .unwrap();
    assert_eq!(task.comm(), "mykthread0");
    let tid = task.pid();
    let found = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            comm_of(e.file_name().to_str().unwrap().parse().unwrap()).as_deref()
                == Some("mykthread0")
        });
    assert!(found, "mykthread0 not in /proc/self/task/*/comm");
    assert_eq!(comm_of(tid).as_deref(), Some("mykthread0"));
    assert!(
        wait_for(Duration::from_secs(5), || { SEEN_PID.load(SeqCst) != 0 }),
        "thread started"
    );
    assert_eq!(SEEN_PID.load(SeqCst), tid, "pid() is the thread's tid");
    assert_eq!(kthread_stop(&task), 42);
    assert!(task.has_exited());
    assert_gone(&task);
    assert_eq!(
        kthread_stop(&task),
        42,
        "a second stop returns the same result"
    );
}

#[test]
fn names_follow_the_kernel_comm_rules() {
    watchdog();
    let task = kthread_create!(|_: ()| 0, (), "{}-{}", "a_very_long_thread", "name").unwrap();
    assert_eq!(task.comm(), "a_very_long_thr", "at most 15 bytes");
    assert_eq!(comm_of(task.pid()).as_deref(), Some("a_very_long_thr"));
    kthread_stop(&task);
}

#[test]
fn a_thread_stopped_before_it_was_woken_never_runs_and_returns_eintr() {
    watchdog();
    static RAN: AtomicBool = AtomicBool::new(false);
    let task = kthread_create!(
        |_: ()| {
            RAN.store(true, SeqCst);
            0
        },
        (),
        "never"
    )
    .unwrap();
    assert_eq!(kthread_stop(&task), -libc::EINTR);
    assert!(!RAN.load(SeqCst));
    assert_gone(&task);
}

#[test]
fn a_thread_that_returns_by_itself_still_gives_its_result_to_kthread_stop() {
    watchdog();
    let task = kthread_run!(|x: i32| x * 2, 21, "selfexit").unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || task.has_exited()),
        "thread exits"
    );
    assert_eq!(kthread_stop(&task), 42);
}

#[test]
fn kthread_stop_interrupts_wait_event_interruptible() {
    watchdog();
    static WQ: WaitQueueHead = WaitQueueHead::new();
    let task = kthread_run!(
        |_: ()| match wait_event_interruptible(&WQ, || false) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        },
        (),
        "interruptible"
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || WQ.active()),
        "thread sleeps"
    );
    assert_eq!(kthread_stop(&task), -ERESTARTSYS);
}

#[test]
fn wake_up_process_makes_a_sleeping_kthread_recheck_its_condition() {
    watchdog();
    // The condition changes without any wake_up on the queue: only wake_up_process (and
    // kthread_stop) reach the sleeper, as in the kernel.
    static WQ: WaitQueueHead = WaitQueueHead::new();
    static FLAG: AtomicBool = AtomicBool::new(false);
    let task = kthread_run!(
        |_: ()| {
            wait_event(&WQ, || FLAG.load(SeqCst) || kthread_should_stop());
            i32::from(FLAG.load(SeqCst))
        },
        (),
        "rechecks"
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || WQ.active()),
        "thread sleeps"
    );
    FLAG.store(true, SeqCst);
    wake_up_process(&task);
    assert!(
        wait_for(Duration::from_secs(5), || task.has_exited()),
        "thread rechecked and exited"
    );
    assert_eq!(kthread_stop(&task), 1);
}

#[test]
fn kthread_stop_wakes_a_wait_event_whose_condition_checks_kthread_should_stop() {
    watchdog();
    static WQ: WaitQueueHead = WaitQueueHead::new();
    let task = kthread_run!(
        |_: ()| {
            wait_event(&WQ, kthread_should_stop);
            5
        },
        (),
        "stopcond"
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || WQ.active()),
        "thread sleeps"
    );
    assert_eq!(kthread_stop(&task), 5);
}

/// The lab's exercise 6: the thread prints its pid, waits for the stop flag on one queue, then
/// sets the terminated flag and wakes the other queue; module exit does the mirror image.
#[test]
fn exercise_6_two_wait_queues_and_two_atomic_flags() {
    watchdog();
    static WQ_STOP_THREAD: WaitQueueHead = WaitQueueHead::new();
    static WQ_THREAD_TERMINATED: WaitQueueHead = WaitQueueHead::new();
    static FLAG_STOP_THREAD: Atomic = Atomic::new(0);
    static FLAG_THREAD_TERMINATED: Atomic = Atomic::new(0);
    static THREAD_PID: AtomicI32 = AtomicI32::new(0);

    fn my_thread_f(_data: ()) -> i32 {
        let me = sched::current();
        THREAD_PID.store(me.pid(), SeqCst);
        deferred::pr_info!(
            "[my_thread_f] Current process id is {} ({})",
            me.pid(),
            me.comm()
        );
        wait_event(&WQ_STOP_THREAD, || FLAG_STOP_THREAD.read() != 0);
        FLAG_THREAD_TERMINATED.set(1);
        wake_up_interruptible(&WQ_THREAD_TERMINATED);
        0
    }

    let cap = deferred::kernel::printk::capture();
    // kthread_mod_init
    let task = kthread_run!(my_thread_f, (), "{}kthread{}", "my", 0).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || { THREAD_PID.load(SeqCst) != 0 }),
        "thread ran"
    );
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        FLAG_THREAD_TERMINATED.read(),
        0,
        "the thread waits for the stop flag"
    );
    // kthread_mod_exit
    FLAG_STOP_THREAD.set(1);
    wake_up_interruptible(&WQ_STOP_THREAD);
    wait_event_interruptible(&WQ_THREAD_TERMINATED, || FLAG_THREAD_TERMINATED.read() != 0).unwrap();
    assert_eq!(FLAG_THREAD_TERMINATED.read(), 1);
    assert_eq!(kthread_stop(&task), 0);
    assert!(cap.contains(&format!(
        "[my_thread_f] Current process id is {} (mykthread0)",
        task.pid()
    )));
}

#[test]
fn a_woken_thread_stopped_at_once_still_runs_threadfn() {
    // The kernel's contract: -EINTR only if wake_up_process() was never called.
    watchdog();
    for i in 0..50 {
        let task = kthread_run!(|x: i32| x, i, "quick{}", i).unwrap();
        assert_eq!(kthread_stop(&task), i, "round {i}");
    }
}

/// The calling thread's nice value (Linux: per thread).
fn thread_nice() -> i32 {
    // SAFETY: getpriority reads the calling thread's nice value; no pointers are passed.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Sets the calling thread's nice value; false if refused (lowering needs CAP_SYS_NICE).
fn set_thread_nice(nice: i32) -> bool {
    // SAFETY: setpriority changes the calling thread's nice value; no pointers are passed.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
}

#[test]
fn a_kthread_starts_with_the_runtimes_nice_value_not_its_creators() {
    watchdog();
    deferred::kernel::start().unwrap();
    // Every test thread has the nice value of the one that started the runtime.
    let base = thread_nice();
    let raised = (base + 4).min(19);
    thread::spawn(move || {
        assert!(
            set_thread_nice(raised),
            "raising a nice value needs no privilege"
        );
        // Whether a thread at `raised` may go back to `base` (root, CAP_SYS_NICE, RLIMIT_NICE):
        // a kthread does then; otherwise it keeps its creator's.
        let may_lower = thread::spawn(move || set_thread_nice(base)).join().unwrap();
        fn threadfn(_: ()) -> i32 {
            thread_nice()
        }
        let task = kthread_run!(threadfn, (), "nice_kthread").unwrap();
        let want = if may_lower { base } else { raised };
        assert_eq!(kthread_stop(&task), want, "may_lower {may_lower}");
        assert_eq!(thread_nice(), raised, "the creator keeps its own");
    })
    .join()
    .unwrap();
}
