#!/usr/bin/env python3
"""What the slow calls of a traced run waited for (the log of bench/vm-call-trace.sh with RAW=1).

    python3 bench/slow_calls.py LOG [THRESHOLD_US]

Per server in LOG: the clients' ioctl calls from the trace (sys_enter to sys_exit of NR 16 by
ioctl_bench), their p50 and p99, and the calls slower than THRESHOLD_US (default: that run's
p99) counted by what happened while they lasted: a thread (a client, one of our readers
`cuse/N`, our console `printk`, another server's thread) switched out while still runnable
(state R: preempted) and by whom, the console writing. Then the events of the median slow call, system calls
that only poll (a read answering EAGAIN, clock reads) left out.
"""
import collections
import re
import sys

EVENT = re.compile(r'^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s*(.*)$')
SWITCH = re.compile(r'prev_comm=(\S+) .*prev_state=(\S+) ==> next_comm=(\S+)')


def traces(path):
    """(name, events) per traced server; an event is (us, cpu, comm, tid, name, rest)."""
    name, events = None, None
    for line in open(path, errors='replace'):
        if line.startswith('TRACE ') and line.rstrip().endswith(' BEGIN'):
            name, events = line.split()[1], []
        elif line.startswith('TRACE ') and line.rstrip().endswith(' END'):
            yield name, events
            name, events = None, None
        elif events is not None:
            m = EVENT.match(line)
            if m:
                comm, tid, cpu, ts, ev, rest = m.groups()
                events.append((float(ts) * 1e6, int(cpu), comm, int(tid), ev, rest))


def calls(events):
    """(duration us, tid, first event index, last event index) of every client ioctl."""
    entered, out = {}, []
    for i, (t, _, comm, tid, ev, rest) in enumerate(events):
        if comm != 'ioctl_bench' or not rest.startswith('NR 16 '):
            continue
        if ev == 'sys_enter':
            entered[tid] = (t, i)
        elif ev == 'sys_exit' and tid in entered:
            t0, i0 = entered.pop(tid)
            out.append((t - t0, tid, i0, i))
    return sorted(out)


def kind(comm):
    return re.sub(r'\d+', 'N', comm)


def causes(events, i0, i1):
    tags = set()
    for (_, _, comm, _, ev, rest) in events[i0:i1 + 1]:
        if ev == 'sched_switch':
            m = SWITCH.search(rest)
            # The idle task is always runnable: its switches are a CPU waking up.
            if m and m.group(2).startswith('R') and not m.group(1).startswith('swapper'):
                who = 'client' if m.group(1) == 'ioctl_bench' else kind(m.group(1))
                tags.add(f'{who} preempted by {kind(m.group(3))}')
        elif comm == 'printk' and ev == 'sys_enter' and rest.startswith('NR 1 '):
            tags.add('console write')
    return tuple(sorted(tags)) or ('nothing switched out while runnable',)


def polling(ev, rest):
    """A system call that only polls: a read answering EAGAIN, a clock read."""
    return ev in ('sys_enter', 'sys_exit') and (
        rest.startswith('NR 228 ') or (rest.startswith('NR 0 ') and (rest.endswith('= -11') or ev == 'sys_enter')))


def die(message, status):
    print(message, file=sys.stderr)
    sys.exit(status)


def main():
    usage = __doc__.strip().splitlines()[2].strip()
    if len(sys.argv) not in (2, 3):
        die(f'usage: {usage}', 2)
    try:
        given = float(sys.argv[2]) if len(sys.argv) == 3 else None
    except ValueError:
        die(f'slow_calls: THRESHOLD_US {sys.argv[2]!r} is not a number of microseconds', 2)
    try:
        runs = list(traces(sys.argv[1]))
    except OSError as e:
        die(f'slow_calls: cannot read {sys.argv[1]}: {e.strerror}', 1)
    if not runs:
        die(f'slow_calls: no "TRACE NAME BEGIN" in {sys.argv[1]}: is it the output of bench/vm-call-trace.sh with RAW=1?', 1)
    for name, events in runs:
        cs = calls(events)
        if not cs:
            print(f'{name}: no calls traced')
            continue
        p50, p99 = cs[len(cs) // 2][0], cs[min(len(cs) - 1, int(len(cs) * 0.99))][0]
        threshold = p99 if given is None else given
        slow = [c for c in cs if c[0] > threshold]
        print(f'{name}: {len(cs)} calls, p50 {p50:.0f} us, p99 {p99:.0f} us; '
              f'{len(slow)} slower than {threshold:.0f} us, by what happened meanwhile:')
        for tags, n in collections.Counter(causes(events, i0, i1) for _, _, i0, i1 in slow).most_common():
            print(f'  {n:5d}  {"; ".join(tags)}')
        if slow:
            d, tid, i0, i1 = slow[len(slow) // 2]
            t0 = events[i0][0]
            print(f'  the median slow call: ioctl_bench-{tid}, {d:.0f} us:')
            for (t, cpu, comm, tid, ev, rest) in events[i0:i1 + 1]:
                if not polling(ev, rest):
                    print(f'  {t - t0:8.1f} [{cpu}] {comm}-{tid}: {ev} {rest[:110]}')


if __name__ == '__main__':
    main()
