#!/usr/bin/env python3
"""How a lone client's wake-up reaches it, boot by boot: a table from bench/vm-wake-trace.sh runs.

    bench/wake_modes.py LOG...

Each LOG is the output of one VM boot running bench/vm-wake-trace.sh, e.g.

    for b in 1 2 3 4; do
        scripts/vm --add bench/build/cuse_floor:/usr/local/bin/cuse_floor \\
            --add bench/build/ioctl_bench:/usr/local/bin/ioctl_bench \\
            --add bench/vm-wake-trace.sh:/root/w.sh --add bench/vm-lib.sh:/root/vm-lib.sh \\
            -- sh /root/w.sh 5000 > /tmp/wake$b.log
    done
    bench/wake_modes.py /tmp/wake*.log

Prints a Markdown table: per boot and server, the untraced run's p50/p99, the traced run's p50,
and the share of the traced run's client wake-ups that came while its CPU was still polling in
the idle loop (no interrupt, no halt).
"""
import json
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("| boot | server | p50 (us) | p99 (us) | traced run's p50 (us) | wake-ups by interrupt | while idle polling | polling share |")
    print("|---|---|---|---|---|---|---|---|")
    for boot, path in enumerate(sys.argv[1:], 1):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.startswith("WAKE "):
                    continue
                _, server, data = line.split(" ", 2)
                if server in ("done", "error"):
                    continue
                d = json.loads(data)
                total = d["ipi"] + d["poll"]
                share = 100.0 * d["poll"] / total if total else 0.0
                traced = d.get("traced_p50_us", "-")
                print(f"| {boot} | {server} | {d['p50_us']} | {d['p99_us']} | {traced} | {d['ipi']} | {d['poll']} | {share:.0f}% |")


if __name__ == "__main__":
    main()
