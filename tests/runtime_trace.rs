//! Trace events (src/kernel/trace.rs): what a timer that schedules a tasklet and queues work
//! records, in which context and order; nothing while off; the event filter; the trace file.

mod runtime_common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
use std::time::Duration;

use deferred::kernel::jiffies::jiffies;
use deferred::kernel::tasklet::{Tasklet, tasklet_schedule};
use deferred::kernel::timer::{Timer, TimerList};
use deferred::kernel::trace::{self, Event, Record};
use deferred::kernel::workqueue::{Work, schedule_work};
use deferred::{impl_has_work, kernel, pr_info};
use runtime_common::{assert_no_softirq_allocations, setup, wait_for};

struct Dev {
    work: Work<Dev>,
    tasklet: Tasklet<()>,
    worked: AtomicBool,
    /// The thread the timer interrupted.
    interrupted: AtomicI32,
}
impl_has_work!(Dev, work);

static DEV: Dev = Dev {
    work: Work::new(traced_work),
    tasklet: Tasklet::new(traced_tasklet, ()),
    worked: AtomicBool::new(false),
    interrupted: AtomicI32::new(0),
};

fn dev() -> Pin<&'static Dev> {
    Pin::static_ref(&DEV)
}

fn traced_timer(_t: &Timer<()>) {
    DEV.interrupted
        .store(kernel::sched::current().pid(), SeqCst);
    pr_info!("[traced_timer] in softirq");
    tasklet_schedule(Pin::static_ref(&DEV.tasklet));
    schedule_work(dev());
}

fn traced_tasklet(_t: Pin<&Tasklet<()>>) {}

fn traced_work(d: &Dev) {
    pr_info!("[traced_work] on a worker");
    d.worked.store(true, SeqCst);
}

fn drain() -> Vec<Record> {
    let mut v = Vec::new();
    trace::drain(|r| v.push(*r));
    v
}

fn line(r: &Record) -> String {
    let mut s = String::new();
    r.write_line(&mut s);
    s
}

fn position(rs: &[Record], from: usize, what: impl Fn(&Record) -> bool) -> usize {
    from + rs[from..]
        .iter()
        .position(what)
        .unwrap_or_else(|| panic!("expected event not found after #{from}"))
}

#[test]
fn a_timer_queueing_a_tasklet_and_work_is_traced_in_order_and_context() {
    let _g = setup();
    drain();
    trace::set_enabled(trace::ALL);
    let timer = TimerList::new(traced_timer, ());
    timer.mod_timer(jiffies() + 2);
    assert!(
        wait_for(Duration::from_secs(5), || DEV.worked.load(SeqCst)),
        "the work ran"
    );
    // The work's end is recorded after its handler returns; the timer's and the tasklet's exits
    // after theirs, which may come later still: the work may run on a worker before the
    // interrupted thread (preempted, on a loaded machine) finishes the timer's softirq.
    let mut rs = Vec::new();
    let ends = [
        Event::WorkqueueExecuteEnd,
        Event::TimerExpireExit,
        Event::TaskletExit,
    ];
    assert!(
        wait_for(Duration::from_secs(5), || {
            rs.extend(drain());
            ends.iter().all(|e| rs.iter().any(|r| r.event == *e))
        }),
        "execute_end, timer_expire_exit and tasklet_exit recorded"
    );
    trace::set_enabled(0);
    let lines: Vec<String> = rs.iter().map(line).collect();
    let all = lines.join("\n");
    let me = DEV.interrupted.load(SeqCst);
    let is = |r: &Record, e: Event| r.event == e;
    let init = position(&rs, 0, |r| is(r, Event::TimerInit));
    let start = position(&rs, init, |r| is(r, Event::TimerStart));
    assert!(
        lines[start].contains("function=traced_timer") && lines[start].contains("[timeout=2]"),
        "{}",
        lines[start]
    );
    // The interrupt, on the thread the handler reports as current.
    let irq = position(&rs, start, |r| is(r, Event::IrqHandlerEntry) && r.pid == me);
    assert_eq!(&rs[irq].flags()[..3], b"d.h", "{}", lines[irq]);
    let raise = position(&rs, irq, |r| is(r, Event::SoftirqRaise) && r.pid == me);
    assert!(lines[raise].ends_with("vec=1 [action=TIMER]"), "{all}");
    assert_eq!(rs[raise].flags()[2], b'h');
    let entry = position(&rs, raise, |r| is(r, Event::SoftirqEntry) && r.pid == me);
    let expire = position(&rs, entry, |r| is(r, Event::TimerExpireEntry));
    assert!(lines[expire].contains("function=traced_timer"), "{all}");
    let printk = position(&rs, expire, |r| is(r, Event::Console));
    assert!(
        lines[printk].ends_with("console: [traced_timer] in softirq"),
        "{all}"
    );
    let queued = position(&rs, printk, |r| is(r, Event::WorkqueueQueueWork));
    assert!(
        lines[queued].contains("function=traced_work workqueue=events"),
        "{}",
        lines[queued]
    );
    let exit = position(&rs, queued, |r| is(r, Event::TimerExpireExit));
    for r in &rs[entry..=exit] {
        if r.pid == me {
            assert_eq!(r.flags()[2], b's', "softirq context: {}", line(r));
        }
    }
    let tasklet = position(&rs, exit, |r| is(r, Event::TaskletEntry));
    assert!(
        lines[tasklet].contains("function=traced_tasklet"),
        "{}",
        lines[tasklet]
    );
    assert_eq!(rs[tasklet].flags()[2], b's');
    position(&rs, tasklet, |r| is(r, Event::TaskletExit));
    // The work on a worker, in process context.
    let run = position(&rs, queued, |r| is(r, Event::WorkqueueExecuteStart));
    assert!(rs[run].comm().starts_with("events/"), "{}", lines[run]);
    assert_eq!(&rs[run].flags(), b".....");
    assert!(
        lines[run].ends_with("function traced_work"),
        "{}",
        lines[run]
    );
    let end = position(&rs, run, |r| is(r, Event::WorkqueueExecuteEnd));
    assert_eq!(rs[end].pid, rs[run].pid);
    assert_no_softirq_allocations();
}

#[test]
fn off_records_nothing_and_the_filter_keeps_only_what_it_names() {
    let _g = setup();
    drain();
    fn nothing(_t: &Timer<AtomicBool>) {}
    fn fired(t: &Timer<AtomicBool>) {
        t.data().store(true, SeqCst);
    }
    trace::set_enabled(0);
    let t = TimerList::new(fired, AtomicBool::new(false));
    t.mod_timer(jiffies() + 1);
    assert!(
        wait_for(Duration::from_secs(5), || t.data().load(SeqCst)),
        "the timer fired"
    );
    pr_info!("not traced");
    assert_eq!(drain().len(), 0, "tracing off records nothing");

    trace::set_enabled(trace::parse_events("timer:timer_start,irq:*").unwrap());
    t.timer_setup(nothing);
    t.data().store(false, SeqCst);
    t.timer_setup(fired);
    t.mod_timer(jiffies() + 1);
    assert!(
        wait_for(Duration::from_secs(5), || t.data().load(SeqCst)),
        "the timer fired"
    );
    trace::set_enabled(0);
    let rs = drain();
    assert!(rs.iter().any(|r| r.event == Event::TimerStart));
    assert!(rs.iter().any(|r| r.event == Event::SoftirqEntry));
    for r in &rs {
        let (sys, name) = trace::EVENTS[r.event as usize];
        assert!(
            sys == "irq" || name == "timer_start",
            "not asked for: {}",
            line(r)
        );
    }
}

#[test]
fn kthread_start_and_stop_are_traced() {
    let _g = setup();
    drain();
    trace::set_enabled(trace::parse_events("task:*,sched:*").unwrap());
    let t = deferred::kthread_run!(
        |_: ()| {
            while !kernel::kthread::kthread_should_stop() {
                kernel::sched::msleep(1);
            }
            7
        },
        (),
        "tracedkthread"
    )
    .unwrap();
    let pid = t.pid();
    assert_eq!(kernel::kthread::kthread_stop(&t), 7);
    trace::set_enabled(0);
    let lines: Vec<String> = drain().iter().map(line).collect();
    let find = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{}", lines.join("\n")))
    };
    let new = find(&format!("task_newtask: pid={pid} comm=tracedkthread"));
    let stop = find(&format!("sched_kthread_stop: comm=tracedkthread pid={pid}"));
    let exit = find(&format!("sched_process_exit: comm=tracedkthread pid={pid}"));
    let ret = find("sched_kthread_stop_ret: ret=7");
    assert!(
        new < stop && stop < exit && exit < ret,
        "{}",
        lines.join("\n")
    );
    assert!(
        lines[exit]
            .trim_start()
            .starts_with(&format!("tracedkthread-{pid} ")),
        "the exit is recorded by the kthread itself: {}",
        lines[exit]
    );
}

#[test]
fn the_trace_file_is_ftrace_text_with_its_header_counts() {
    let _g = setup();
    let path = std::env::temp_dir().join(format!("runtime-trace-{}.trace", std::process::id()));
    let tracer = deferred::tracefile::Tracer::start(&path, trace::ALL).unwrap();
    for i in 0..100 {
        pr_info!("line {i}");
    }
    tracer.finish().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let events: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
    assert_eq!(header[0], "# tracer: nop");
    assert_eq!(
        header[2].trim_end(),
        format!(
            "# entries-in-buffer/entries-written: {0}/{0}   #P:1",
            events.len()
        )
    );
    assert!(header.last().unwrap().starts_with("#              | |"));
    let console: Vec<&&str> = events
        .iter()
        .filter(|l| l.contains(": console: line "))
        .collect();
    assert_eq!(console.len(), 100, "{text}");
    // `comm-pid [000] flags seconds.micros: event: fields`, as ftrace prints it.
    let l = console[0];
    let (task, rest) = l.trim_start().split_once(' ').unwrap();
    assert!(
        task.rsplit_once('-').unwrap().1.parse::<i32>().is_ok(),
        "{l}"
    );
    let rest = rest.trim_start();
    assert!(rest.starts_with("[000] ..... "), "{l}");
    let ts = rest[12..].trim_start().split_once(':').unwrap().0;
    let (s, us) = ts.split_once('.').unwrap();
    assert!(s.parse::<u64>().is_ok() && us.len() == 6, "{l}");
    assert!(l.ends_with(": console: line 0"), "{l}");
}
