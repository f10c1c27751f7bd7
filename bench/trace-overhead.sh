#!/usr/bin/env bash
# What the trace events cost: one trace point off and on (trace_cost: ns per call), then
# timer_lateness and work_wake with tracing off and with every event recorded into a file
# (BENCH_TRACE), alternating off/on in each round of one run.
#
#   bench/trace-overhead.sh [ROUNDS] [SECONDS]     (default 3 rounds of 10 s per run)
#
# Prints Markdown tables (trace_cost; the median over the rounds of each bench's p50 / p99 / max)
# into bench/results/trace-overhead.md, the raw JSON lines into bench/results/trace-overhead.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-10}
cargo build --release -q --example timer_lateness --example work_wake --example trace_cost
EX=target/release/examples
OUT=bench/results/trace-overhead.jsonl
TRACE=$(mktemp --suffix=.trace)
trap 'rm -f "$TRACE"' EXIT
: >"$OUT"
$EX/trace_cost >>"$OUT"
for ((r = 1; r <= ROUNDS; r++)); do
	for mode in off on; do
		for b in "timer_lateness $SECS" "work_wake $SECS 4000"; do
			echo "trace-overhead: round $r/$ROUNDS, tracing $mode: ${b%% *}" >&2
			if [[ $mode == on ]]; then
				line=$(BENCH_TRACE=$TRACE $EX/$b)
			else
				line=$($EX/$b)
			fi
			python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.pop("cdf_us",None); d.pop("first_cdf_us",None); d["tracing"]=sys.argv[2]; d["round"]=int(sys.argv[3]); print(json.dumps(d))' \
				"$line" "$mode" "$r" >>"$OUT"
		done
	done
done
python3 - "$OUT" <<'PY' | tee bench/results/trace-overhead.md
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
c = next(r for r in rows if r["bench"] == "trace_cost")
print("| trace point | off (ns per call) | on (ns per call) |")
print("|---|---|---|")
for k in ("timer_start", "console"):
    print(f'| {k} | {c[k + "_off_ns"]:.2f} | {c[k + "_on_ns"]:.1f} |')
print()
rows = [r for r in rows if r["bench"] != "trace_cost"]
print("| bench | tracing | samples | events written (lost) | p50 us | p99 us | max us |")
print("|---|---|---|---|---|---|---|")
for bench in ("timer_lateness", "work_wake"):
    for mode in ("off", "on"):
        rs = [r for r in rows if r["bench"] == bench and r["tracing"] == mode]
        med = lambda k: statistics.median(r[k] for r in rs)
        ev = f'{int(med("trace_events"))} ({int(med("trace_lost"))})' if mode == "on" else "-"
        print(f'| {bench} | {mode} | {int(med("samples"))} | {ev} | {med("p50_us"):.2f} | {med("p99_us"):.2f} | {med("max_us"):.1f} |')
PY
