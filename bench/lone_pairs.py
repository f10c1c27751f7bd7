#!/usr/bin/env python3
"""Summarises a bench/vm-lone.sh log: per server, the median calls/s (the range over rounds) and
the median p50; then, for each pair A B given, the median over rounds of A / B within the same
round (calls/s, p50 and p99), with the range of the rounds' ratios and an interval for that
median (report.py's median_interval: distribution-free, its coverage given). Pairing within a
round cancels most of the machine's drift between rounds, which is larger than the effects
measured; the interval says whether the rounds resolve the effect at all. LOG may be several
logs joined by commas (boots of the same servers): their rounds are pooled.

    bench/lone_pairs.py LOG[,LOG...] [A B ...]

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


def ratio_line(label, xs):
    """`label median (rounds min-max, median within lo-hi at cov)` for the rounds' ratios xs."""
    lo, hi, cov = median_interval(xs)
    return (
        f"{label} {statistics.median(xs):.2f} (rounds {min(xs):.2f}-{max(xs):.2f},"
        f" median within {lo:.2f}-{hi:.2f} at {cov:.0%})"
    )


def main(paths, pairs):
    names, rs = None, []
    for path in paths.split(","):
        n, r = rounds(path)
        if names is not None and n != names:
            sys.exit(f"{path}: servers {' '.join(n)}, not {' '.join(names)} as in the logs before")
        names, rs = n, rs + r
    for n in names:
        calls = [r[n]["calls_per_s"] for r in rs]
        p50 = [r[n]["p50_us"] for r in rs]
        p99 = [r[n]["p99_us"] for r in rs]
        print(
            f"{n:10} calls/s {statistics.median(calls):8.0f} [{min(calls):.0f}-{max(calls):.0f}]"
            f"  p50 {statistics.median(p50):6.1f} us  p99 {statistics.median(p99):7.1f} us"
        )
    for a, b in pairs:
        if a not in names or b not in names:
            sys.exit(f"{paths}: no server {a if a not in names else b} (servers: {' '.join(names)})")
        parts = [
            ratio_line(key, [r[a][field] / r[b][field] for r in rs])
            for key, field in (("calls/s", "calls_per_s"), ("p50", "p50_us"), ("p99", "p99_us"))
        ]
        print(f"{a} / {b}, {len(rs)} rounds: " + "; ".join(parts))


if __name__ == "__main__":
    if len(sys.argv) < 2 or len(sys.argv) % 2:
        sys.exit("usage: bench/lone_pairs.py LOG[,LOG...] [A B ...]  (pairs of server names)")
    main(sys.argv[1], list(zip(sys.argv[2::2], sys.argv[3::2])))
