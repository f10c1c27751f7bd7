#!/usr/bin/env python3
"""Summarises a bench/vm-lone.sh log: per server, the median calls/s (the range over rounds) and
the median p50; then, for each pair A B given, the median over rounds of A / B within the same
round (calls/s and p50), with the range of the rounds' ratios and, for calls/s, an interval for
that median (report.py's median_interval: distribution-free, its coverage given). Pairing within
a round cancels most of the machine's drift between rounds, which is larger than the effects
measured; the interval says whether the rounds resolve the effect at all.

    bench/lone_pairs.py LOG [A B ...]

e.g. `bench/lone_pairs.py bench/results/lone-dec1-help1.vm.log help head head spin`.
"""
import json
import re
import statistics
import sys

from report import median_interval


def rounds(path):
    """The LAT records of the log, grouped by round (every server runs once a round)."""
    runs = []
    with open(path) as f:
        for line in f:
            m = re.match(r"LAT (\S+) (\{.*)", line.strip())
            if m:
                # vm-lone.sh cuts each record at its distribution: close the object again.
                text = re.sub(r',"cdf_us.*', "", m.group(2)).rstrip("}") + "}"
                runs.append((m.group(1), json.loads(text)))
    names = list(dict.fromkeys(n for n, _ in runs))
    k = len(names)
    if k == 0 or len(runs) % k:
        sys.exit(f"{path}: {len(runs)} runs of {k} servers: not whole rounds")
    return names, [dict(runs[i : i + k]) for i in range(0, len(runs), k)]


def main(path, pairs):
    names, rs = rounds(path)
    for n in names:
        calls = [r[n]["calls_per_s"] for r in rs]
        p50 = [r[n]["p50_us"] for r in rs]
        print(
            f"{n:10} calls/s {statistics.median(calls):8.0f} [{min(calls):.0f}-{max(calls):.0f}]"
            f"  p50 {statistics.median(p50):6.1f} us"
        )
    for a, b in pairs:
        if a not in names or b not in names:
            sys.exit(f"{path}: no server {a if a not in names else b} (servers: {' '.join(names)})")
        rc = [r[a]["calls_per_s"] / r[b]["calls_per_s"] for r in rs]
        rp = [r[a]["p50_us"] / r[b]["p50_us"] for r in rs]
        lo, hi, cov = median_interval(rc)
        print(
            f"{a} / {b}: calls/s {statistics.median(rc):.2f} (rounds {min(rc):.2f}-{max(rc):.2f},"
            f" median within {lo:.2f}-{hi:.2f} at {cov:.0%}),"
            f" p50 {statistics.median(rp):.2f} (rounds {min(rp):.2f}-{max(rp):.2f}), {len(rs)} rounds"
        )


if __name__ == "__main__":
    if len(sys.argv) < 2 or len(sys.argv) % 2:
        sys.exit("usage: bench/lone_pairs.py LOG [A B ...]  (pairs of server names)")
    main(sys.argv[1], list(zip(sys.argv[2::2], sys.argv[3::2])))
