#!/usr/bin/env python3
"""Turns the raw results of scripts/bench into a Markdown table and a PNG of the distributions.

    bench/report.py RAW.jsonl OUT.md [OUT.png]

RAW.jsonl: one record a line, {"case": ..., "impl": "ours" | "ref", "data": {...}, "cmd": "..."},
where data is what a bench program printed (min_us/p50_us/p99_us/max_us/cdf_us, calls_per_s, ...).
Benchmarks report; nothing here fails on a missed target (exit 0 unless the input is unreadable).
"""
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


def cyclictest_stats(ct):
    """cyclictest --json output -> our stats fields (its histogram has 1 us buckets)."""
    hist = ct["thread"]["0"]["histogram"]
    pts = sorted((int(k), v) for k, v in hist.items())
    n = sum(v for _, v in pts)

    def pct(p):
        k = max(1, min(n, int(p / 100.0 * n + 0.999999)))
        c = 0
        for us, v in pts:
            c += v
            if c >= k:
                return float(us)
        return float(pts[-1][0])

    return {
        "samples": n,
        "cycles": ct["thread"]["0"].get("cycles", n),
        "min_us": float(ct["thread"]["0"]["min"]),
        "p50_us": pct(50),
        "p99_us": pct(99),
        "p999_us": pct(99.9),
        "max_us": float(ct["thread"]["0"]["max"]),
        "cdf_us": [pct(p) for p in range(101)],
    }


def pick(recs, case, impl):
    return [r for r in recs if r["case"] == case and r["impl"] == impl and "error" not in r["data"]]


def median_round(rs, key="p50_us"):
    """The round whose `key` is the median: its numbers are shown (and its distribution plotted)."""
    if not rs:
        return None
    rs = sorted(rs, key=lambda r: r["data"].get(key, 0))
    return rs[(len(rs) - 1) // 2]


IMPL_NAMES = {
    "ours": "ours (deferred)",
    "bare": "ours, transport alone (no module)",
    "ref": "cuse_ref (libfuse3)",
    "floor": "floor: raw loop, sleeping read",
    "spin": "floor: raw loop, spinning read",
    "quiet": "ours, logging off",
    "alt": "ours, alternative build",
}
IOCTL_IMPLS = ["ours", "bare", "ref", "floor", "spin", "quiet", "alt"]


def boots_of(rs):
    return sorted({r.get("boot", 1) for r in rs})


def per_boot(rs, f):
    """f's value over each boot's rounds, as 'a / b' (the spread between boots), or '' with one boot."""
    bs = boots_of(rs)
    if len(bs) < 2:
        return ""
    vals = [f([r for r in rs if r.get("boot", 1) == b]) for b in bs]
    return " / ".join(fmt(v, 2) if isinstance(v, float) and v < 10 else fmt(v) for v in vals)


def paired(a, b, key="calls_per_s"):
    """The ratios a/b round by round (rounds are paired by their order within each boot).

    >>> a = [{"data": {"p99_us": 2.0}}, {"data": {"p99_us": 3.0}}]
    >>> b = [{"data": {"p99_us": 4.0}}, {"data": {"p99_us": 1.5}}]
    >>> paired(a, b, "p99_us")  # one boot: round 1 with round 1, round 2 with round 2
    [0.5, 2.0]
    """
    out = []
    for bt in boots_of(a):
        xs = [r for r in a if r.get("boot", 1) == bt]
        ys = [r for r in b if r.get("boot", 1) == bt]
        out += [x["data"][key] / y["data"][key] for x, y in zip(xs, ys) if y["data"].get(key)]
    return out


def med(xs):
    return statistics.median(xs) if xs else None


def median_interval(xs, level=0.95):
    """A distribution-free interval for the median of what xs are drawn from: the k-th smallest
    and k-th largest of xs, k the largest whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is at
    least `level` (k = 1 when even the whole range covers less: its coverage is then lower).
    Returns (low, high, coverage), or None for no xs.

    >>> median_interval([0.9, 1.3, 0.7, 1.1, 1.0, 0.8])  # 6 rounds: the whole range, 1 - 2/64
    (0.7, 1.3, 0.96875)
    >>> median_interval(list(range(10)))  # 10 rounds: the 2nd to the 9th, 1 - 2 * 11/1024
    (1, 8, 0.978515625)
    >>> median_interval([5, 1, 3, 2, 4])  # 5 rounds cannot reach 95%: the whole range, 1 - 2/32
    (1, 5, 0.9375)
    >>> median_interval([]) is None
    True
    """
    n = len(xs)
    if not n:
        return None
    xs = sorted(xs)

    def coverage(k):
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while 2 * (k + 1) <= n and coverage(k + 1) >= level:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)


def ioctl_section(recs, w, cmds, plots):
    lat = {i: pick(recs, "lat", i) for i in IOCTL_IMPLS}
    if not any(lat.values()) and not any(pick(recs, f"tput{t}", i) for t in (1, 2, 4, 8) for i in IOCTL_IMPLS):
        return
    nboots = len(boots_of([r for rs in lat.values() for r in rs]))
    w("## ioctl round trip through CUSE (VM): ours, libfuse and the floors, in the same boot\n")
    w("The floors (bench/cuse_floor) are one thread in a raw loop over /dev/cuse, no library, no logging:")
    w("*sleeping* blocks in read(2) (uses no CPU when idle), *spinning* reads non-blocking in a busy loop")
    w("(burns a CPU all the time: the floor of a lone client's round trip). Every server answers the")
    w("same CANCEL ioctl; rounds alternate the servers' order. *Transport alone* (bench/cuse_null.rs) is")
    w("our CUSE session and reader pool answering every ioctl 0 with no module behind it: what is left")
    w("between it and ours is the lab module's work (its timer call and its log line). Figures: the median over all rounds"
      + (f" of {nboots} boots; *per boot*: each boot's median (the spread)." if nboots > 1 else "."))
    w("")
    w("### One client thread: latency (us)\n")
    w("| server | rounds | min | p50 | p99 | max | p50 per boot | p99 per boot | p50 / spinning | p99 / libfuse | target | |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    mp = {}
    for i in IOCTL_IMPLS:
        rs = lat[i]
        if not rs:
            continue
        mp[i] = {k: med([r["data"][k] for r in rs]) for k in ("min_us", "p50_us", "p99_us", "max_us")}
    series = []
    for i in IOCTL_IMPLS:
        rs = lat[i]
        if not rs:
            continue
        d = mp[i]
        r50 = ratio(d["p50_us"], mp.get("spin", {}).get("p50_us"))
        r99 = ratio(d["p99_us"], mp.get("ref", {}).get("p99_us"))
        tgt, ok = "", None
        if i == "ours":
            tgt = "p50 <= 1.2x spinning, p99 <= libfuse"
            if r50 is not None and r99 is not None:
                ok = r50 <= 1.2 and r99 <= 1.0
        w(f"| {IMPL_NAMES[i]} | {len(rs)} | {fmt(d['min_us'])} | {fmt(d['p50_us'])} | {fmt(d['p99_us'])} | {fmt(d['max_us'])} | "
          f"{per_boot(rs, lambda x: med([r['data']['p50_us'] for r in x]))} | {per_boot(rs, lambda x: med([r['data']['p99_us'] for r in x]))} | "
          f"{fmt(r50, 2)} | {fmt(r99, 2)} | {tgt} | {verdict(ok)} |")
        m = median_round(rs)
        if m and m["data"].get("cdf_us"):
            series.append((IMPL_NAMES[i], m["data"]["cdf_us"]))
        if m and m.get("cmd"):
            cmds.append(m["cmd"])
    w("")
    # The same targets on the per-round ratios (each round runs every server once): the
    # interval for their median, listed where it spans the target.
    unresolved = []
    for key, x, limit, what in (("p50_us", "spin", 1.2, "p50"), ("p99_us", "ref", 1.0, "p99")):
        rs = paired(lat["ours"], lat[x], key)
        iv = median_interval(rs)
        if iv and iv[0] <= limit < iv[1]:
            unresolved.append((what, x, limit, med(rs), iv, len(rs)))
    if unresolved:
        w("**Not resolved by these rounds** (ours / the other server's figure within each round,")
        w("the interval for the median of those ratios spanning the target; see the throughput's note):\n")
        for what, x, limit, m, (lo, hi, cov), n in unresolved:
            w(f"- {what}, ours / {IMPL_NAMES[x]}: {fmt(m, 2)} per round, interval {fmt(lo, 2)}-{fmt(hi, 2)} "
              f"({cov:.0%}, {n} rounds), target <= {limit}")
        w("")
    if series:
        plots.append(("ioctl round trip, 1 client thread (VM): distribution of the median round", series))

    tput = {(t, i): pick(recs, f"tput{t}", i) for t in (1, 2, 4, 8) for i in IOCTL_IMPLS}
    if not any(tput.values()):
        return
    present = [i for i in IOCTL_IMPLS if any(tput[(t, i)] for t in (1, 2, 4, 8))]
    w("### Throughput (calls/s) by client threads\n")
    w("*paired*: the median over rounds of ours / the other server within the same round (the machine")
    w("drifts between rounds); *per boot*: that paired ratio in each boot.\n")
    bare = "bare" in present
    w("| client threads | " + " | ".join(IMPL_NAMES[i] for i in present)
      + " | ours / libfuse, paired | per boot | ours / sleeping loop, paired | per boot | ours / spinning loop, paired | per boot"
      + (" | transport alone / sleeping loop, paired | per boot | transport alone / spinning loop, paired | per boot" if bare else "")
      + " | target | |")
    w("|---|" + "---|" * len(present) + "---|---|---|---|---|---|" + ("---|---|---|---|" if bare else "") + "---|---|")
    curves = {i: [] for i in present}
    unresolved = []  # targets whose interval for the paired ratio's median spans the limit
    for t in (1, 2, 4, 8):
        cells = []
        for i in present:
            m = med([r["data"]["calls_per_s"] for r in tput[(t, i)]])
            cells.append(fmt(m))
            if m:
                curves[i].append((t, m))
        def vs(rs, x):
            """rs against server x: the paired ratio's median over all rounds, and per boot."""
            return med(paired(rs, tput[(t, x)])), per_boot(rs, lambda b: med(paired(b, tput[(t, x)])))

        o = tput[(t, "ours")]
        pr, pb = {}, {}
        for x in ("ref", "floor", "spin"):
            pr[x], pb[x] = vs(o, x)
        tgt = ">= libfuse, >= sleeping loop" + (", >= 0.8x spinning" if t == 1 else "")
        ok = None
        if pr["ref"] is not None and pr["floor"] is not None:
            ok = pr["ref"] >= 1.0 and pr["floor"] >= 1.0 and (t != 1 or pr["spin"] is None or pr["spin"] >= 0.8)
        for x, limit in (("ref", 1.0), ("floor", 1.0), ("spin", 0.8 if t == 1 else None)):
            iv = median_interval(paired(o, tput[(t, x)]))
            if limit is not None and iv and iv[0] < limit <= iv[1]:
                unresolved.append((t, x, limit, pr[x], iv, len(paired(o, tput[(t, x)]))))
        bare_cells = ""
        if bare:
            for x in ("floor", "spin"):
                r, per = vs(tput[(t, "bare")], x)
                bare_cells += f" | {fmt(r, 2)} | {per}"
        w(f"| {t} | " + " | ".join(cells)
          + f" | {fmt(pr['ref'], 2)} | {pb['ref']} | {fmt(pr['floor'], 2)} | {pb['floor']} | {fmt(pr['spin'], 2)} | {pb['spin']}"
          + bare_cells + f" | {tgt} | {verdict(ok)} |")
    w("")
    if unresolved:
        w("**Not resolved by these rounds**: the interval for the paired ratio's median (the k-th smallest")
        w("to the k-th largest of the rounds' ratios, distribution-free; its coverage in brackets) spans")
        w("the target, so the rounds' spread could give either verdict; more rounds or boots narrow it:\n")
        for t, x, limit, m, (lo, hi, cov), n in unresolved:
            w(f"- {t} client{'s' if t > 1 else ''}, ours / {IMPL_NAMES[x]}: {fmt(m, 2)}, interval "
              f"{fmt(lo, 2)}-{fmt(hi, 2)} ({cov:.0%}, {n} rounds), target >= {limit}")
        w("")
    plots.append(("ioctl throughput (VM): calls/s by client threads, median of rounds",
                  [(IMPL_NAMES[i], c) for i, c in curves.items() if c], "xy"))


MODE = {"epoll": "mechanism (TaskWatch)", "poll-each": "mechanism, one poll per task", "daemon": "deferred module"}


def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def verdict(ok):
    return "-" if ok is None else ("met" if ok else "**missed**")


def stats_cells(d):
    if not d:
        return ["-"] * 4
    return [fmt(d.get(k)) for k in ("min_us", "p50_us", "p99_us", "max_us")]


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: report.py RAW.jsonl OUT.md [OUT.png]")
    recs = load(sys.argv[1])
    for r in recs:
        if r["case"] == "timer" and r["impl"] == "ref" and "thread" in r["data"]:
            r["data"] = cyclictest_stats(r["data"])
    meta = next((r["data"] for r in recs if r["case"] == "meta"), {})
    out = []
    w = out.append
    cmds = []
    plots = []  # (title, [(label, cdf_us)])

    w(f"# Benchmark results\n\n{meta.get('date', '')} on `{meta.get('host', '?')}` "
      f"({meta.get('cpus', '?')} CPUs, kernel {meta.get('kernel', '?')}, load average {meta.get('load', '?')}); "
      f"commit `{meta.get('commit', '?')}`. "
      f"Latencies in microseconds. Benchmarks report: noise is not a failure.\n")

    # --- the ioctl round trip: ours vs libfuse and the floors ------------------------------------
    ioctl_section(recs, w, cmds, plots)

    # --- latency comparisons: ours vs reference -------------------------------------------------
    if any(r["case"] == "work" for r in recs):
        w("## Latency, ours vs the reference (same run)\n")
        # Since 2026-12-03 the two run at the same time (their records carry the round); before,
        # one after the other, alternating who went first.
        together = all("round" in r for r in recs if r["case"] == "work")
        how = ("the two run at the same time, so they see the same load" if together
               else "the two run back to back, alternating who goes first")
        w("Each side's figures: its round with the median p50. Ratios: ours / the reference within each")
        w(f"round ({how}), the median over the rounds")
        w("[min-max]; the verdict takes these.\n")
        w("| benchmark | impl | samples | min | p50 | p99 | max | p50 ratio | p99 ratio | target | |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
    lat_cases = [
        ("work", "timer handler -> work handler (host)", "pipe wake", 1.2, True),
    ]
    for case, title, refname, limit, both in lat_cases:
        ours_rs, ref_rs = pick(recs, case, "ours"), pick(recs, case, "ref")
        o, f = median_round(ours_rs), median_round(ref_rs)
        if not o and not f:
            continue
        od, fd = (o or {}).get("data"), (f or {}).get("data")
        extra_series = []
        # Ratios within each round (the two run at the same time, or back to back in older runs), their
        # median over the rounds: the machine drifts between rounds more than the two differ. The
        # shown rounds (each side's median p50) are not each other's pair.
        pairs = {k: paired(ours_rs, ref_rs, k) for k in ("p50_us", "p99_us")}
        r50, r99 = med(pairs["p50_us"]), med(pairs["p99_us"])
        if r50 is None:
            r50 = ratio(od and od.get("p50_us"), fd and fd.get("p50_us"))
        if r99 is None:
            r99 = ratio(od and od.get("p99_us"), fd and fd.get("p99_us"))

        def cell(r, xs):
            return spread(xs) if len(xs) > 1 else fmt(r, 2)

        ok = None
        if r50 is not None:
            ok = r50 <= limit and (not both or (r99 is not None and r99 <= limit))
        tgt = f"p50{' and p99' if both else ''} <= {limit}x"
        nr = len(ours_rs)
        w(f"| {title} | ours{f' (median of {nr} rounds)' if nr > 1 else ''} | {fmt(od and od.get('samples'))} | "
          + " | ".join(stats_cells(od)) + f" | {cell(r50, pairs['p50_us'])} | {cell(r99, pairs['p99_us'])} | {tgt} | {verdict(ok)} |")
        nf = len(ref_rs)
        w(f"| | {refname}{f' (median of {nf})' if nf > 1 else ''} | {fmt(fd and fd.get('samples'))} | "
          + " | ".join(stats_cells(fd)) + " | | | | |")
        for extra, label in (("quiet", "ours, logging off (RUST_LOG=warn)"), ("alt", "ours, alternative build (--alt)")):
            q = median_round(pick(recs, case, extra))
            if q:
                qd = q["data"]
                w(f"| | {label} | {fmt(qd.get('samples'))} | " + " | ".join(stats_cells(qd))
                  + f" | {fmt(ratio(qd.get('p50_us'), fd and fd.get('p50_us')), 2)} | {fmt(ratio(qd.get('p99_us'), fd and fd.get('p99_us')), 2)} | ({extra} / ref) | |")
                if qd.get("cdf_us"):
                    extra_series.append((label, qd["cdf_us"]))
        fl = median_round(pick(recs, case, "floor"))
        if fl:
            fld = fl["data"]
            w(f"| | floor: bare signal handler (sig_lateness) | {fmt(fld.get('samples'))} | " + " | ".join(stats_cells(fld))
              + f" | {fmt(ratio(od and od.get('p50_us'), fld.get('p50_us')), 2)} | {fmt(ratio(od and od.get('p99_us'), fld.get('p99_us')), 2)} | (ours / floor) | |")
            if fl.get("cmd"):
                cmds.append(fl["cmd"])
        series = []
        if od and od.get("cdf_us"):
            series.append(("ours", od["cdf_us"]))
        if fd and fd.get("cdf_us"):
            series.append((refname, fd["cdf_us"]))
        series += extra_series
        fl = median_round(pick(recs, case, "floor"))
        if fl and fl["data"].get("cdf_us"):
            series.append(("bare signal handler", fl["data"]["cdf_us"]))
        plots.append((title, series))
        for rr in (o, f):
            if rr and rr.get("cmd"):
                cmds.append(rr["cmd"])
    if any(r["case"] == "work" for r in recs):
        w("")

    timer_section(recs, w, plots, cmds)

    # --- monitoring at scale ----------------------------------------------------------------------
    mons = [r for r in recs if r["case"] == "mon"]
    mon_series = {}
    if mons:
        w("## Monitoring at scale (host): MON's mechanism, a tick in signal context\n")
        w("| watched | mode | ticks | tick p50 | tick p99 | tick max | tick, no exit (p50) | exits seen at the first tick | detection p50 / max (ms) | RSS (kB) | target | |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in mons:
            d = r["data"]
            ok = None
            if d.get("mode") in ("epoll", "daemon"):
                ok = (d.get("tick_p99_us", 1e9) <= 1000 and d.get("missed", 1) == 0
                      and d.get("within_one_tick") == d.get("killed") and d.get("rss_kb", 1e9) <= 32 * 1024)
            det = f"{fmt((d.get('detect_p50_us') or 0) / 1000)} / {fmt((d.get('detect_max_us') or 0) / 1000)}"
            w(f"| {d['watched']:,} | {MODE.get(d.get('mode'), d.get('mode'))} | {d.get('ticks')} | {fmt(d.get('tick_p50_us'))} | "
              f"{fmt(d.get('tick_p99_us'))} | {fmt(d.get('tick_max_us'))} | {fmt(d.get('idle_tick_p50_us'))} | "
              f"{d.get('within_one_tick')}/{d.get('killed')} | {det} | {fmt(d.get('rss_kb'))} | "
              f"{'tick p99 <= 1 ms, 1 tick, RSS <= 32 MB' if d.get('mode') != 'poll-each' else 'comparison'} | {verdict(ok)} |")
            if r.get("cmd"):
                cmds.append(r["cmd"])
            if d.get("tick_cdf_us") and d.get("mode") != "poll-each":
                mon_series.setdefault(d.get("mode"), []).append((f"{d['watched']:,} watched", d["tick_cdf_us"]))
        for mode, series in mon_series.items():
            plots.append((f"MON tick cost in signal context: {MODE.get(mode, mode)}", series))
        daemons = [r["data"] for r in mons if r["data"].get("mode") == "daemon"]
        if daemons:
            w("\nThe module (mon_daemon): the MON ioctl itself, and a burst of exits in one tick:\n")
            w("| watched | MON ioctl p50 / p99 (us) | RSS before / after MON (kB) | burst | most exits reported in one tick | that tick (us) | burst exits reported late | burst detection max (ms) |")
            w("|---|---|---|---|---|---|---|---|")
            for d in daemons:
                w(f"| {d['watched']:,} | {fmt(d.get('mon_ioctl_p50_us'))} / {fmt(d.get('mon_ioctl_p99_us'))} | "
                  f"{fmt(d.get('rss_kb_before_refs'))} / {fmt(d.get('rss_kb'))} | {d.get('burst')} | {d.get('max_exits_in_tick')} | "
                  f"{fmt(d.get('burst_tick_us'))} | {d.get('burst_seen_late')} | {fmt((d.get('burst_detect_max_us') or 0) / 1000)} |")
        w("")

    # --- idle -------------------------------------------------------------------------------------
    idle = [r for r in recs if r["case"] in ("idle", "idle_after")]
    if idle:
        w("## Idle cost (VM): nothing pending\n")
        w("*before*: no client has come yet; *after*: once every run above has ended.\n")
        w("| impl | when | boot | seconds | context switches, all threads | wakeups/s | CPU (s) | threads | RSS (kB) | target | |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in idle:
            d = r["data"]
            if "error" in d:
                continue
            ok = None
            if r["impl"] == "ours":
                ok = d["wakeups_per_s"] == 0 and d.get("cpu_s", 0) == 0 and d["rss_kb"] <= 8 * 1024
            name = IMPL_NAMES.get(r["impl"], r["impl"])
            when = "before" if r["case"] == "idle" else "after"
            w(f"| {name} | {when} | {r.get('boot', 1)} | {d['seconds']} | {d['switches']} | {d['wakeups_per_s']} | {fmt(d.get('cpu_s'), 2)} | "
              f"{d['threads']} | {d['rss_kb']:,} | {'0/s, 0 CPU, RSS <= 8 MB' if r['impl'] == 'ours' else ''} | {verdict(ok)} |")
        after = {r["impl"]: r["data"] for r in recs if r["case"] == "rss_after" and "error" not in r["data"]}
        for impl, d in after.items():
            impl = IMPL_NAMES.get(impl, impl)
            cpu = ""
            if "cpu_s" in d:
                cpu = f", CPU time over all the runs {d['cpu_s']:.2f} s"
                if impl != IMPL_NAMES["ref"] and after.get("ref", {}).get("cpu_s"):
                    cpu += f" ({d['cpu_s'] / after['ref']['cpu_s']:.2f}x cuse_ref's for the same calls)"
            w(f"\nAfter the ioctl runs: {impl} RSS {d['rss_kb']:,} kB, {d['threads']} threads{cpu}.")
        w("")

    errors = [r for r in recs if "error" in r.get("data", {})]
    if errors:
        w("## Not measured\n")
        for r in errors:
            w(f"- {r['case']} / {r['impl']}: {r['data']['error']}")
        w("")

    w("## Commands\n")
    w("All of the above: `scripts/bench` (see `scripts/bench --help`). Single runs:\n")
    w("```")
    for c in meta.get("commands", []) + sorted(set(cmds), key=cmds.index):
        w(c)
    w("```")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")

    if len(sys.argv) == 4 and plots:
        plot(plots, sys.argv[3])


TIMER_IMPLS = [
    ("ours", "ours, every handler (timer_lateness: 16 timer_list timers)"),
    ("ours_first", "ours, the first handler of each interrupt (one sample per signal)"),
    ("ref", "cyclictest -x"),
    ("floor", "floor: bare signal handler (sig_lateness handler)"),
    ("floor_sigwait", "floor: sigwait (sig_lateness sigwait)"),
]
TIMER_LIMIT = 1.2
TIMER_SET = 3
# cyclictest -x rounds whose histogram lost more of its cycles than this are left out of ratios.
CT_KEPT = 0.95


def spread(vals):
    """'median [min-max]' of per-round values."""
    if not vals:
        return "-"
    return f"{fmt(statistics.median(vals), 2)} [{fmt(min(vals), 2)}-{fmt(max(vals), 2)}]"


def timer_section(recs, w, plots, cmds):
    """Timer lateness: every round runs the four programs at once; ratios are taken within a round,
    then summarised (median and spread), per set of 3 rounds and overall."""
    rs = [r for r in recs if r["case"] == "timer" and "error" not in r["data"]]
    if not rs:
        return
    rounds = {}
    for r in rs:
        rounds.setdefault(r.get("round", 0), {})[r["impl"]] = r
        if r["impl"] == "ours" and r["data"].get("first_p50_us") is not None:
            d = {k[len("first_"):]: v for k, v in r["data"].items() if k.startswith("first_")}
            rounds[r.get("round", 0)]["ours_first"] = {"data": d, "cmd": r.get("cmd")}
    order = sorted(rounds)
    # cyclictest -x loses samples under overruns: after some late signals its next expected expiry
    # is a period too far, every later sample comes out negative and lands outside its histogram.
    bad_ref = set()
    for k in order:
        ref = rounds[k].get("ref")
        if ref and ref["data"].get("cycles") and ref["data"]["samples"] < CT_KEPT * ref["data"]["cycles"]:
            bad_ref.add(k)
    w("## Timer lateness (host): ours, `cyclictest -x` and the two bare floors, all at once in each round\n")
    w(f"{len(order)} rounds; each runs the four programs at the same time (each wakes 250 times a second), so every")
    w("ratio compares programs under the same load; the figures are the median over rounds. Ratios are ours / other")
    w("within each round: median [min-max] over the rounds, and the median of each set of 3 rounds (the target")
    w(f"needs p50 and p99 at most {TIMER_LIMIT}x cyclictest's in every set). One late wake-up of ours makes every")
    w("timer due meanwhile late, one sample each; the references take one sample per signal, as does the")
    w("'first handler' row.\n")
    w("| impl | rounds | samples (median) | min | p50 | p99 | p99.9 | max |")
    w("|---|---|---|---|---|---|---|---|")
    series = []
    for impl, label in TIMER_IMPLS:
        ds = [rounds[k][impl]["data"] for k in order if impl in rounds[k]]
        if impl == "ref" and bad_ref and len(bad_ref) < len(ds):
            ds = [rounds[k][impl]["data"] for k in order if impl in rounds[k] and k not in bad_ref]
            label += f" (the {len(ds)} rounds without lost samples)"
        if not ds:
            continue
        med = lambda key: statistics.median(d[key] for d in ds if d.get(key) is not None) if any(d.get(key) is not None for d in ds) else None
        w(f"| {label} | {len(ds)} | {fmt(med('samples'))} | {fmt(med('min_us'))} | {fmt(med('p50_us'))} | {fmt(med('p99_us'))} | "
          f"{fmt(med('p999_us'))} | {fmt(med('max_us'))} |")
        mid = sorted(ds, key=lambda d: d.get("p50_us", 0))[(len(ds) - 1) // 2]
        if mid.get("cdf_us"):
            series.append((label, mid["cdf_us"]))
        cmd = next((rounds[k][impl].get("cmd") for k in order if impl in rounds[k]), None)
        if cmd and impl != "ours_first":
            cmds.append(cmd)
    plots.append(("timer lateness (host), median round of each", series))
    if bad_ref:
        kept = ", ".join(f"{rounds[k]['ref']['data']['samples']}/{rounds[k]['ref']['data']['cycles']}" for k in sorted(bad_ref))
        w(f"\ncyclictest -x lost samples in {len(bad_ref)} of {len(order)} rounds (histogram / cycles: {kept}): "
          "some of its samples come out negative (its expected expiry ahead of the signal: its max then reads "
          "negative too) and fall outside its histogram, after late signals, so its percentiles leave out late "
          "stretches. Those rounds are left out of the ratios to it; the sigwait floor is the same mechanism "
          "(a POSIX timer to one thread, taken in sigwait), measured without that flaw.")
    w("")
    w("| ours / | rounds | p50 | p99 | p99.9 | p50, p99 per set of 3 rounds | target | |")
    w("|---|---|---|---|---|---|---|---|")
    for mine, mlabel in TIMER_IMPLS[:2]:
        for impl, label in TIMER_IMPLS[2:]:
            per = {q: [] for q in ("p50_us", "p99_us", "p999_us")}
            sets = []
            n = 0
            for i in range(0, len(order), TIMER_SET):
                s50, s99 = [], []
                for k in order[i:i + TIMER_SET]:
                    o, x = rounds[k].get(mine), rounds[k].get(impl)
                    if not o or not x or (impl == "ref" and k in bad_ref):
                        continue
                    n += 1
                    for q in per:
                        rr = ratio(o["data"].get(q), x["data"].get(q))
                        if rr is not None:
                            per[q].append(rr)
                    s50.append(ratio(o["data"]["p50_us"], x["data"]["p50_us"]))
                    s99.append(ratio(o["data"]["p99_us"], x["data"]["p99_us"]))
                if s50 and s99:
                    sets.append((statistics.median(s50), statistics.median(s99)))
            ok = None
            full = (len(order) + TIMER_SET - 1) // TIMER_SET
            if impl == "ref" and len(sets) == full:
                ok = all(a <= TIMER_LIMIT and b <= TIMER_LIMIT for a, b in sets)
            who = "every handler" if mine == "ours" else "first handler"
            w(f"| {who} / {label} | {n} | {spread(per['p50_us'])} | {spread(per['p99_us'])} | {spread(per['p999_us'])} | "
              + ("; ".join(f"{fmt(a, 2)}, {fmt(b, 2)}" for a, b in sets) or "-")
              + f" | {f'p50 and p99 <= {TIMER_LIMIT}x, every set' if impl == 'ref' else '(floor)'} | "
              + (f"{verdict(ok)} |" if impl != "ref" or len(sets) == full else "no verdict: a set without a valid round |"))
    # Where ours spends it: the kernel's delivery vs the runtime's own path (first handler).
    ds = [rounds[k]["ours"]["data"] for k in order if "ours" in rounds[k]]
    if ds and all(d.get("delivery_p50_us") is not None for d in ds):
        med = lambda key: statistics.median(d[key] for d in ds)
        w("")
        w("Ours, the first handler of each interrupt, split at the signal handler's entry (median over rounds, us):")
        w(f"expiry -> handler entry (the kernel: hrtimer, signal, waking swapper/0, a CPU for it) p50 {fmt(med('delivery_p50_us'))}, "
          f"p99 {fmt(med('delivery_p99_us'))}, p99.9 {fmt(med('delivery_p999_us'))}; handler entry -> timer handler (the runtime) "
          f"p50 {fmt(med('runtime_p50_us'))}, p99 {fmt(med('runtime_p99_us'))}, p99.9 {fmt(med('runtime_p999_us'))}.")
    w("")


def plot(plots, png):
    """One panel per plot, two a row; an odd last one takes the whole row (no empty panel).
    A plot is (title, series) with series [(label, cdf_us)]: a distribution, percentile against
    latency; or (title, series, "xy") with series [(label, [(x, y), ...])]: calls/s by clients."""
    gp = shutil.which("gnuplot")
    if not gp:
        print("report.py: gnuplot not found: no plot (apt-get install gnuplot-nox)", file=sys.stderr)
        return
    tmp = tempfile.mkdtemp(prefix="bench-plot.")
    n = len(plots)
    rows = (n + 1) // 2
    script = [f"set terminal pngcairo size 1400,{420 * rows} font ',10'",
              f"set output '{png}'", "set termoption noenhanced",
              "set multiplot", "set grid", "set key bottom right"]
    for i, p in enumerate(plots):
        title, series = p[0], p[1]
        xy = len(p) > 2 and p[2] == "xy"
        row, col = divmod(i, 2)
        wide = i == n - 1 and n % 2 == 1
        script.append(f"set origin {0 if wide else col * 0.5},{1 - (row + 1) / rows}")
        script.append(f"set size {1 if wide else 0.5},{1 / rows}")
        cmds = []
        for j, (label, pts) in enumerate(series):
            path = os.path.join(tmp, f"p{i}_{j}.dat")
            with open(path, "w") as f:
                if xy:
                    for x, y in pts:
                        f.write(f"{x} {y}\n")
                else:
                    for q, v in enumerate(pts):
                        f.write(f"{max(v, 0.001)} {q}\n")
            style = "linespoints pt 7" if xy else "lines"
            cmds.append(f"'{path}' using 1:2 with {style} lw 2 title '{label}'")
        if xy:
            script += ["set logscale x 2", "set xrange [0.9:9]", "set xtics (1, 2, 4, 8)", "set xlabel 'client threads'",
                       "set ylabel 'calls/s'", "set yrange [0:*]", "set key top left"]
        else:
            script += ["set logscale x", "set autoscale x", "set xtics auto", "set xlabel 'latency (us, log scale)'",
                       "set ylabel 'percentile'", "set yrange [0:100]", "set key bottom right"]
        script.append(f"set title '{title}'")
        if cmds:
            script.append("plot " + ", ".join(cmds))
    script.append("unset multiplot")
    subprocess.run([gp], input="\n".join(script), text=True, check=False)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
