#!/usr/bin/env python3
"""Where a POSIX timer signal's lateness goes, stage by stage, from the kernel's own trace points.

    bench/timer_stages.py [--seconds-label] CMD [ARGS...] [:: CMD [ARGS...]] ...

Runs the commands at the same time (e.g. `target/release/examples/timer_lateness 10 :: cyclictest
-x -D 10 -i 4000 -q --policy=other --default-system`) under a tracefs instance of its own
(trace clock `mono`, so the stamps are CLOCK_MONOTONIC like the programs' own), and for every
POSIX-timer signal sent to one of their threads prints the distribution (us) of each stage:

    expiry -> fire        the hrtimer's expiry (hrtimer_start) to its interrupt (hrtimer_expire_entry)
    fire -> wakeup        the signal queued (signal_generate) and its thread woken (sched_wakeup)
    wakeup -> on CPU      the woken thread waiting for a CPU (sched_switch to it)
    on CPU -> deliver     back to user space with a handler to run (signal_deliver); a program
                          taking the signal in sigwait has no such event: its stage ends on CPU
    total                 expiry to the last of these

and how the target thread was found (woken from sleep, already running, or runnable but not
running). Needs root and tracefs (mounted at /sys/kernel/tracing, or mountable there). The
threads of each command are those alive 1 s after its start.
"""
import collections
import os
import re
import subprocess
import sys
import time

TRACING = "/sys/kernel/tracing"
EVENTS = {
    "timer/hrtimer_start": "function.function == posix_timer_fn",
    "timer/hrtimer_expire_entry": "function.function == posix_timer_fn",
    "signal/signal_generate": "sig == 14 || sig >= 34",  # SIGALRM (cyclictest) and real-time
    "signal/signal_deliver": "sig == 14 || sig >= 34",
    "sched/sched_wakeup": None,
    "sched/sched_switch": None,
}
LINE = re.compile(r"^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+): (.*)$")


def write(path, value):
    with open(path, "w") as f:
        f.write(value)


def run_traced(cmds):
    if not os.path.isdir(f"{TRACING}/instances"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACING], check=False)
    inst = f"{TRACING}/instances/timer_stages-{os.getpid()}"
    os.mkdir(inst)
    label = {}
    try:
        write(f"{inst}/trace_clock", "mono")
        write(f"{inst}/buffer_size_kb", "30000")
        for ev, flt in EVENTS.items():
            if flt:
                write(f"{inst}/events/{ev}/filter", flt)
            write(f"{inst}/events/{ev}/enable", "1")
        write(f"{inst}/tracing_on", "1")
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for c in cmds]
        time.sleep(1.0)
        for i, p in enumerate(procs):
            try:
                for t in os.listdir(f"/proc/{p.pid}/task"):
                    label[int(t)] = f"{i}: {' '.join(cmds[i])}"
            except OSError:
                pass
        for p in procs:
            p.communicate()
        write(f"{inst}/tracing_on", "0")
        with open(f"{inst}/trace") as f:
            trace = f.read()
    finally:
        for ev in EVENTS:
            try:
                write(f"{inst}/events/{ev}/enable", "0")
            except OSError:
                pass
        os.rmdir(inst)
    return trace, label


def parse(trace, label):
    armed = {}  # hrtimer -> expiry (ns)
    fired = {}  # cpu -> (fire ns, expiry ns) of the last POSIX timer interrupt there
    last_wake = {}
    pend = {}  # thread -> the signal on its way
    recs = []

    def close(t):
        r = pend.pop(t, None)
        if r and r.get("on") is not None:
            recs.append(r)

    for line in trace.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        _, pid, cpu, ts, ev, rest = m.groups()
        pid, cpu, ts = int(pid), int(cpu), int(round(float(ts) * 1e9))
        kv = dict(re.findall(r"(\w+)=(\S+)", rest))
        if ev == "hrtimer_start":
            armed[kv["hrtimer"]] = int(kv["expires"])
        elif ev == "hrtimer_expire_entry":
            fired[cpu] = (int(kv["now"]), armed.get(kv["hrtimer"]))
        elif ev == "signal_generate":
            t = int(kv["pid"])
            f = fired.pop(cpu, None)
            if t not in label or not f or f[1] is None or ts - f[0] > 1_000_000:
                continue
            close(t)  # a sigwait program: its last signal ended on CPU
            r = {"grp": label[t], "exp": f[1], "fire": f[0], "gen": ts}
            # The wake-up comes before signal_generate is traced (it is traced last).
            if f[0] <= last_wake.get(t, -1) <= ts:
                r["wake"] = last_wake[t]
            pend[t] = r
        elif ev == "sched_wakeup":
            t = int(kv["pid"])
            last_wake[t] = ts
            if t in pend and "wake" not in pend[t]:
                pend[t]["wake"] = ts
        elif ev == "sched_switch":
            t = int(kv["next_pid"])
            if t in pend and "on" not in pend[t]:
                pend[t]["on"] = ts
                pend[t]["state"] = "woken" if "wake" in pend[t] else "runnable"
        elif ev == "signal_deliver" and pid in pend:
            r = pend[pid]
            r["dlv"] = ts
            if "on" not in r:
                r["on"], r["state"] = None, "running"
            pend.pop(pid)
            recs.append(r)
    for t in list(pend):
        close(t)
    return recs


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] / 1000


def report(grp, recs):
    end = lambda r: r.get("dlv") or r["on"]
    stages = [
        ("expiry -> fire", [r["fire"] - r["exp"] for r in recs]),
        ("fire -> wakeup", [r["wake"] - r["fire"] for r in recs if "wake" in r]),
        ("wakeup -> on CPU", [r["on"] - r["wake"] for r in recs if "wake" in r and r["on"]]),
        ("signal -> on CPU (runnable)", [r["on"] - r["gen"] for r in recs if r["state"] == "runnable"]),
        ("on CPU -> deliver", [r["dlv"] - r["on"] for r in recs if r.get("dlv") and r["on"]]),
        ("signal -> deliver (running)", [r["dlv"] - r["gen"] for r in recs if r["state"] == "running"]),
        ("total", [end(r) - r["exp"] for r in recs]),
    ]
    states = dict(collections.Counter(r["state"] for r in recs))
    print(f"{grp}\n  {len(recs)} signals; the target thread was: {states}")
    for name, v in stages:
        if v:
            print(f"  {name:28s} n={len(v):5d}  p50 {pct(v, .5):8.1f}  p90 {pct(v, .9):8.1f}  p99 {pct(v, .99):8.1f}"
                  f"  p99.9 {pct(v, .999):8.1f}  max {max(v) / 1000:9.1f}")


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        sys.exit(__doc__)
    cmds, cur = [], []
    for a in args:
        if a == "::":
            cmds.append(cur)
            cur = []
        else:
            cur.append(a)
    cmds.append(cur)
    if any(not c for c in cmds):
        sys.exit("timer_stages: an empty command (see --help)")
    with open("/proc/loadavg") as f:
        load0 = " ".join(f.read().split()[:3])
    trace, label = run_traced(cmds)
    with open("/proc/loadavg") as f:
        load1 = " ".join(f.read().split()[:3])
    recs = parse(trace, label)
    print(f"load average {load0} -> {load1}; stages in us")
    for grp in sorted(set(r["grp"] for r in recs)):
        report(grp, [r for r in recs if r["grp"] == grp])


if __name__ == "__main__":
    main()
