#!/usr/bin/env python3
"""Summarises a bench/vm-configs.sh log: per server, the median 1-client p50 and p99 and the median
calls/s at 1, 2, 4, 8 client threads, each with its ratio to the reference (cuse_ref), then every
round's calls/s and the CPU time each server used over the whole run.

    bench/configs_summary.py LOG
"""
import collections
import json
import statistics
import sys


def main(path):
    tput = collections.defaultdict(list)
    p50 = collections.defaultdict(list)
    p99 = collections.defaultdict(list)
    cpu = []
    cput = collections.defaultdict(lambda: [0, 0, 0])
    impls = []
    with open(path) as f:
        for line in f:
            if line.startswith("CPU "):
                cpu.append(line.split()[1:])
                continue
            if line.startswith("CPUT "):
                _, t, impl, ticks, calls, *sleeps = line.split()
                cput[(impl, int(t))][0] += int(ticks)
                cput[(impl, int(t))][1] += int(calls)
                cput[(impl, int(t))][2] += int(sleeps[0]) if sleeps else 0
                continue
            if not line.startswith("EXP ") or line.startswith("EXP done"):
                continue
            _, t, impl, rec = line.split(" ", 3)
            rec = json.loads(rec)
            if impl not in impls:
                impls.append(impl)
            tput[(impl, int(t))].append(rec["calls_per_s"])
            if t == "1":
                p50[impl].append(rec["p50_us"])
                p99[impl].append(rec["p99_us"])
    if "ref" not in impls:
        sys.exit(f"{path}: no reference results (EXP ... ref ...)")
    med = statistics.median
    print("| server | 1-client p50 (us) | ratio | p99 (us) | ratio | " + " | ".join(f"{t} clients calls/s | ratio" for t in (1, 2, 4, 8)) + " |")
    print("|---" * 12 + "|")
    for i in impls:
        row = [i, f"{med(p50[i]):.1f}", f"{med(p50[i]) / med(p50['ref']):.2f}",
               f"{med(p99[i]):.1f}", f"{med(p99[i]) / med(p99['ref']):.2f}"]
        for t in (1, 2, 4, 8):
            m = med(tput[(i, t)])
            row += [f"{m:,.0f}", f"{m / med(tput[('ref', t)]):.2f}"]
        print("| " + " | ".join(row) + " |")
    print()
    for i in impls:
        print(f"- {i}: calls/s per round: " + "; ".join(f"{t}: {[round(x) for x in tput[(i, t)]]}" for t in (1, 2, 4, 8)))
    if cput:
        print()
        print("The server's CPU time per call (us) / its threads' sleeps per call, all rounds, by client threads:")
        for i in impls:
            per = []
            for t in (1, 2, 4, 8):
                ticks, calls, sleeps = cput[(i, t)]
                per.append(f"{t}: {ticks * 10_000 / calls:.1f} / {sleeps / calls:.2f}" if calls else f"{t}: -")
            print(f"- {i}: " + ", ".join(per))
    if cpu:
        print()
        ref = next((float(c[1]) for c in cpu if c[0] == "ref"), None)
        for name, ticks, threads in cpu:
            rel = f" ({float(ticks) / ref:.2f}x the reference)" if ref else ""
            print(f"- CPU over the run, {name}: {int(ticks) / 100:.2f} s{rel}, {threads} threads")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: configs_summary.py LOG  (the output of bench/vm-configs.sh)")
    main(sys.argv[1])
