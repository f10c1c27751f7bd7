//! Workqueues (src/kernel/workqueue.rs): work items, the system queue `events`, private queues.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::thread;
use std::time::Duration;

use deferred::kernel::sched::{self, msleep};
use deferred::kernel::wait::{WaitQueueHead, wait_event, wake_up_all};
use deferred::kernel::workqueue::{
    HasWork, Work, cancel_work_sync, create_singlethread_workqueue, create_workqueue,
    destroy_workqueue, flush_scheduled_work, flush_workqueue, num_online_cpus, queue_work,
    schedule_on_each_cpu, schedule_work,
};
use deferred::{impl_has_work, kernel};

mod runtime_common;
use runtime_common::{wait_for, watchdog};

fn start() {
    watchdog();
    kernel::start().unwrap();
    kernel::workqueue::init().unwrap();
}

fn comm_of(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(comm_of)
        .collect()
}

/// A gate a work handler blocks on, to keep a worker busy while the test queues behind it.
struct Gate {
    work: Work<Gate>,
    wq: WaitQueueHead,
    open: AtomicBool,
    entered: AtomicBool,
}
impl_has_work!(Gate, work);

impl Gate {
    fn new() -> Self {
        Gate {
            work: Work::new(|g: &Gate| {
                g.entered.store(true, SeqCst);
                wait_event(&g.wq, || g.open.load(SeqCst));
            }),
            wq: WaitQueueHead::new(),
            open: AtomicBool::new(false),
            entered: AtomicBool::new(false),
        }
    }
    fn open(&self) {
        self.open.store(true, SeqCst);
        wake_up_all(&self.wq);
    }
}

/// The lab's container: a device whose work handler reaches it with `container_of`.
struct MyDeviceData {
    my_work: Work<MyDeviceData>,
    runs: AtomicU32,
    value: u64,
    seen_value: AtomicUsize,
    comm: Mutex<String>,
    may_sleep: AtomicBool,
}
impl_has_work!(MyDeviceData, my_work);

fn my_work_handler(my_data: &MyDeviceData) {
    my_data.seen_value.store(my_data.value as usize, SeqCst);
    *my_data.comm.lock().unwrap() = sched::current().comm().to_string();
    my_data
        .may_sleep
        .store(sched::in_task() && sched::might_sleep(), SeqCst);
    my_data.runs.fetch_add(1, SeqCst);
}

impl MyDeviceData {
    fn new(value: u64) -> Self {
        MyDeviceData {
            my_work: Work::new(my_work_handler),
            runs: AtomicU32::new(0),
            value,
            seen_value: AtomicUsize::new(0),
            comm: Mutex::new(String::new()),
            may_sleep: AtomicBool::new(false),
        }
    }
}

#[test]
fn schedule_work_runs_in_process_context_on_events_n_and_reaches_its_container() {
    start();
    let dev = Box::pin(MyDeviceData::new(0xdead));
    assert!(schedule_work(dev.as_ref()));
    flush_scheduled_work();
    assert_eq!(dev.runs.load(SeqCst), 1);
    assert_eq!(
        dev.seen_value.load(SeqCst),
        0xdead,
        "container_of reached the container"
    );
    let comm = dev.comm.lock().unwrap().clone();
    let cpu: usize = comm
        .strip_prefix("events/")
        .unwrap_or_else(|| panic!("ran on {comm:?}, not events/N"))
        .parse()
        .unwrap();
    assert!(cpu < num_online_cpus());
    assert!(dev.may_sleep.load(SeqCst), "handler not in process context");
    // The system queue has one worker per online CPU, visible as a thread name, in /proc and
    // in `ps -eL -o tid,comm` (here restricted to this process).
    let names = thread_names();
    let ps = std::process::Command::new("ps")
        .args([
            "-L",
            "-p",
            &std::process::id().to_string(),
            "-o",
            "tid=,comm=",
        ])
        .output()
        .expect("ps (procps) is needed for this test");
    let ps = String::from_utf8_lossy(&ps.stdout);
    for cpu in 0..num_online_cpus() {
        let name = format!("events/{cpu}");
        assert!(names.contains(&name), "{name} missing in /proc: {names:?}");
        assert!(
            ps.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&name)),
            "{name} missing in ps -L:\n{ps}"
        );
    }
}

#[test]
fn a_work_queued_while_pending_is_queued_once() {
    start();
    let wq = create_singlethread_workqueue("once_wq").unwrap();
    let gate = Box::pin(Gate::new());
    let dev = Box::pin(MyDeviceData::new(1));
    assert!(queue_work(&wq, gate.as_ref()));
    assert!(
        wait_for(Duration::from_secs(5), || { gate.entered.load(SeqCst) }),
        "gate entered"
    );
    assert!(queue_work(&wq, dev.as_ref()), "first queue_work");
    assert!(
        !queue_work(&wq, dev.as_ref()),
        "queued while pending: false"
    );
    assert!(!queue_work(&wq, dev.as_ref()));
    assert!(dev.my_work.pending());
    gate.open();
    flush_workqueue(&wq);
    assert_eq!(dev.runs.load(SeqCst), 1, "ran once");
    assert!(!dev.my_work.pending());
    // Once run, it can be queued again.
    assert!(queue_work(&wq, dev.as_ref()));
    flush_workqueue(&wq);
    assert_eq!(dev.runs.load(SeqCst), 2);
    destroy_workqueue(wq);
}

#[test]
fn cancel_work_sync_on_pending_work_means_it_never_runs() {
    start();
    let wq = create_singlethread_workqueue("cancel_wq").unwrap();
    let gate = Box::pin(Gate::new());
    let dev = Box::pin(MyDeviceData::new(2));
    queue_work(&wq, gate.as_ref());
    assert!(
        wait_for(Duration::from_secs(5), || { gate.entered.load(SeqCst) }),
        "gate entered"
    );
    assert!(queue_work(&wq, dev.as_ref()));
    assert!(cancel_work_sync(&dev.my_work), "was pending");
    assert!(!dev.my_work.pending());
    gate.open();
    flush_workqueue(&wq);
    msleep(50);
    assert_eq!(dev.runs.load(SeqCst), 0, "a cancelled work ran");
    assert!(!cancel_work_sync(&dev.my_work), "nothing pending any more");
    // Cancelled while still linked, then queued again: runs exactly once.
    let gate2 = Box::pin(Gate::new());
    queue_work(&wq, gate2.as_ref());
    assert!(
        wait_for(Duration::from_secs(5), || { gate2.entered.load(SeqCst) }),
        "gate entered"
    );
    assert!(queue_work(&wq, dev.as_ref()));
    assert!(cancel_work_sync(&dev.my_work));
    assert!(queue_work(&wq, dev.as_ref()), "re-queue after cancel");
    gate2.open();
    flush_workqueue(&wq);
    assert_eq!(dev.runs.load(SeqCst), 1);
    destroy_workqueue(wq);
}

struct Slow {
    work: Work<Slow>,
    started: AtomicBool,
    finished: AtomicBool,
}
impl_has_work!(Slow, work);

#[test]
fn cancel_work_sync_on_running_work_waits_until_it_finished() {
    start();
    let slow = Box::pin(Slow {
        work: Work::new(|s: &Slow| {
            s.started.store(true, SeqCst);
            msleep(300);
            s.finished.store(true, SeqCst);
        }),
        started: AtomicBool::new(false),
        finished: AtomicBool::new(false),
    });
    assert!(schedule_work(slow.as_ref()));
    assert!(
        wait_for(Duration::from_secs(5), || { slow.started.load(SeqCst) }),
        "handler started"
    );
    assert!(!slow.finished.load(SeqCst));
    assert!(!cancel_work_sync(&slow.work), "running, not pending");
    assert!(
        slow.finished.load(SeqCst),
        "cancel_work_sync returned while the handler ran"
    );
    assert!(!slow.work.running());
}

struct Counter {
    work: Work<Counter>,
    delay_ms: u64,
    done: &'static AtomicU32,
}
impl_has_work!(Counter, work);

#[test]
fn flush_workqueue_waits_for_everything_queued_before_it() {
    start();
    static DONE: AtomicU32 = AtomicU32::new(0);
    let wq = create_workqueue("flush_wq").unwrap();
    let items: Vec<_> = (0..20)
        .map(|i| {
            Box::pin(Counter {
                work: Work::new(|c: &Counter| {
                    msleep(c.delay_ms);
                    c.done.fetch_add(1, SeqCst);
                }),
                delay_ms: 5 + (i % 3) * 10,
                done: &DONE,
            })
        })
        .collect();
    for (i, it) in items.iter().enumerate() {
        // Spread over both CPUs' workers.
        assert!(deferred::kernel::workqueue::queue_work_on(
            i,
            &wq,
            it.as_ref()
        ));
    }
    flush_workqueue(&wq);
    assert_eq!(
        DONE.load(SeqCst),
        20,
        "flush returned before every queued work finished"
    );
    destroy_workqueue(wq);
}

#[test]
fn single_thread_workqueue_worker_is_named_by_the_queue() {
    start();
    let wq = create_singlethread_workqueue("my_workqueue").unwrap();
    let workers = wq.workers();
    assert_eq!(workers.len(), 1);
    assert_eq!(comm_of(workers[0].pid()).as_deref(), Some("my_workqueue"));
    let dev = Box::pin(MyDeviceData::new(3));
    queue_work(&wq, dev.as_ref());
    flush_workqueue(&wq);
    assert_eq!(*dev.comm.lock().unwrap(), "my_workqueue");
    destroy_workqueue(wq);
}

#[test]
fn create_workqueue_has_a_worker_per_cpu_named_name_slash_cpu() {
    start();
    let wq = create_workqueue("percpu").unwrap();
    let names: BTreeSet<String> = wq
        .workers()
        .iter()
        .map(|t| comm_of(t.pid()).unwrap())
        .collect();
    let want: BTreeSet<String> = (0..num_online_cpus())
        .map(|c| format!("percpu/{c}"))
        .collect();
    assert_eq!(names, want);
    destroy_workqueue(wq);
}

#[test]
fn schedule_on_each_cpu_runs_once_per_cpu_and_waits() {
    start();
    let seen = Mutex::new(Vec::new());
    assert_eq!(
        schedule_on_each_cpu(|| {
            msleep(20);
            seen.lock()
                .unwrap()
                .push(sched::current().comm().to_string());
        }),
        Ok(())
    );
    let mut seen = seen.into_inner().unwrap();
    seen.sort();
    let want: Vec<String> = (0..num_online_cpus())
        .map(|c| format!("events/{c}"))
        .collect();
    assert_eq!(seen, want, "once on every events/N, all done on return");
}

#[test]
fn destroy_workqueue_drains_and_its_workers_are_gone() {
    start();
    static DONE: AtomicU32 = AtomicU32::new(0);
    let wq = create_singlethread_workqueue("drain_wq").unwrap();
    let tid = wq.workers()[0].pid();
    let items: Vec<_> = (0..5)
        .map(|_| {
            Box::pin(Counter {
                work: Work::new(|c: &Counter| {
                    msleep(c.delay_ms);
                    c.done.fetch_add(1, SeqCst);
                }),
                delay_ms: 30,
                done: &DONE,
            })
        })
        .collect();
    for it in &items {
        queue_work(&wq, it.as_ref());
    }
    destroy_workqueue(wq);
    assert_eq!(DONE.load(SeqCst), 5, "destroy_workqueue did not drain");
    assert!(
        wait_for(Duration::from_secs(5), || { comm_of(tid).is_none() }),
        "worker gone"
    );
}

/// Two work items in one container, told apart by their ID.
struct Two {
    a: Work<Two, 0>,
    b: Work<Two, 1>,
    hits: Mutex<Vec<char>>,
}
impl_has_work!(Two, a);
impl_has_work!(Two, b, 1);

#[test]
fn two_work_items_in_one_container() {
    start();
    let wq = create_singlethread_workqueue("two_wq").unwrap();
    let two = Box::pin(Two {
        a: Work::new(|t: &Two| t.hits.lock().unwrap().push('a')),
        b: Work::new(|t: &Two| t.hits.lock().unwrap().push('b')),
        hits: Mutex::new(Vec::new()),
    });
    assert!(queue_work::<_, 1>(&wq, two.as_ref()));
    assert!(queue_work::<_, 0>(&wq, two.as_ref()));
    flush_workqueue(&wq);
    assert_eq!(
        *two.hits.lock().unwrap(),
        vec!['b', 'a'],
        "FIFO, each its own handler"
    );
    assert!(std::ptr::eq(HasWork::<1>::work(&*two), &two.b));
    destroy_workqueue(wq);
}

#[test]
fn dropping_a_container_cancels_its_pending_work() {
    start();
    static RAN: AtomicU32 = AtomicU32::new(0);
    let wq = create_singlethread_workqueue("drop_wq").unwrap();
    let gate: &'static Gate = Box::leak(Box::new(Gate::new()));
    queue_work(&wq, Pin::static_ref(gate));
    assert!(
        wait_for(Duration::from_secs(5), || { gate.entered.load(SeqCst) }),
        "gate entered"
    );
    let doomed = Box::pin(Counter {
        work: Work::new(|c: &Counter| {
            c.done.fetch_add(1, SeqCst);
        }),
        delay_ms: 0,
        done: &RAN,
    });
    queue_work(&wq, doomed.as_ref());
    // Dropping waits until the worker has passed over the (cancelled) item: open the gate
    // from another thread meanwhile.
    let opener = thread::spawn(move || {
        msleep(100);
        gate.open();
    });
    drop(doomed);
    opener.join().unwrap();
    flush_workqueue(&wq);
    assert_eq!(RAN.load(SeqCst), 0, "the work of a dropped container ran");
    destroy_workqueue(wq);
}

#[test]
fn a_handler_may_requeue_itself_and_cancel_work_sync_still_stops_it() {
    start();
    struct Again {
        work: Work<Again>,
        runs: AtomicU32,
        wq: deferred::kernel::workqueue::Workqueue,
    }
    impl_has_work!(Again, work);
    static AGAIN: std::sync::OnceLock<&'static Again> = std::sync::OnceLock::new();
    let again: &'static Again = Box::leak(Box::new(Again {
        work: Work::new(|a: &Again| {
            a.runs.fetch_add(1, SeqCst);
            msleep(2);
            // Re-queue itself, as a periodic work does.
            queue_work(&a.wq, Pin::static_ref(*AGAIN.get().unwrap()));
        }),
        runs: AtomicU32::new(0),
        wq: create_singlethread_workqueue("again_wq").unwrap(),
    }));
    AGAIN.set(again).ok().unwrap();
    queue_work(&again.wq, Pin::static_ref(again));
    assert!(
        wait_for(Duration::from_secs(5), || { again.runs.load(SeqCst) > 5 }),
        "re-queued a few times"
    );
    cancel_work_sync(&again.work);
    let n = again.runs.load(SeqCst);
    msleep(100);
    assert_eq!(
        again.runs.load(SeqCst),
        n,
        "ran after cancel_work_sync returned"
    );
    assert!(!again.work.pending());
}
