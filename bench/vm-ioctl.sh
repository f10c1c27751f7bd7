#!/bin/sh
# Runs INSIDE the VM (busybox sh), started by scripts/bench through scripts/vm:
#   sh vm-ioctl.sh CALLS TPUT_CALLS ROUNDS IDLE_S
# Starts the reference (cuse_ref, libfuse3), our daemon (`deferred`, as it ships: it logs every
# ioctl, here to a file in tmpfs) and the floors (bench/cuse_floor: a raw loop over /dev/cuse, no
# library; `floor` sleeps in read(2), `spin` reads non-blocking in a busy loop) side by side, then
# in this one boot:
#   idle:  the servers idle for IDLE_S seconds: context switches of all their threads, CPU time,
#          RSS (idle_after: the same once more after all the runs below)
#   lat:   ROUNDS x CALLS CANCEL ioctls from 1 thread, the servers alternating
#   tput:  1/2/4/8 client threads, ROUNDS x TPUT_CALLS calls each, alternating
# The spinning floor burns a CPU while it runs, so it runs only for its own runs (started before
# each, stopped after): the others are measured without it.
# With cuse_null installed (`cargo build --release --example cuse_null`), our transport alone runs
# too: the daemon's CUSE session and readers, every ioctl answered 0 (no module, no log line),
# /dev/cuse_null: impl "bare", which splits a request's cost into the transport's and the module's.
# Each result is one line: "BENCH <case> <impl> <json>" (impl = ref | ours | bare | floor | spin |
# quiet | alt).
# With BENCH_QUIET=1 in the environment a third server runs too: ours with logging off
# (RUST_LOG=warn, /dev/deferred_quiet, dynamic major), to show what logging each ioctl costs.
# With BENCH_ALT=PATH another build of the daemon runs too, as it ships (/dev/deferred_alt,
# dynamic major): impl "alt", to measure a change against the current code in the same boot.
CALLS=${1:-20000} TPUT=${2:-16000} ROUNDS=${3:-5} IDLE_S=${4:-10}
CANCEL=0x00006b02

. "${0%/*}/vm-lib.sh" # wait_node, floor_work

# ctxt switches (voluntary + nonvoluntary) summed over all threads of PID.
switches() {
	cat /proc/$1/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ {s += $2} END {print s + 0}'
}
# Rss from smaps_rollup (a page-table walk): the VM kernel (6.1) syncs VmRSS lazily (per-thread counters).
rss_kb() { awk '/^Rss:/ {print $2}' /proc/$1/smaps_rollup; }
threads() { ls /proc/$1/task | wc -l; }
# CPU time (user + system, all threads) so far, in seconds (clock ticks of 1/100 s).
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' /proc/$1/stat; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }

cuse_ref >/tmp/cuse_ref.log 2>&1 &
REF=$!
deferred >/tmp/deferred.log 2>&1 &
OURS=$!
QUIET=
if [ "${BENCH_QUIET:-0}" = 1 ]; then
	RUST_LOG=warn deferred --name deferred_quiet --major 0 >/tmp/deferred_quiet.log 2>&1 &
	QUIET=$!
fi
BARE=
if command -v cuse_null >/dev/null; then
	cuse_null >/tmp/cuse_null.log 2>&1 &
	BARE=$!
fi
FLOOR=
if command -v cuse_floor >/dev/null; then
	cuse_floor sleep >/tmp/cuse_floor.log 2>&1 &
	FLOOR=$!
fi
ALT=
if [ -n "${BENCH_ALT:-}" ]; then
	"$BENCH_ALT" --name deferred_alt --major 0 >/tmp/deferred_alt.log 2>&1 &
	ALT=$!
fi
IMPLS=
if wait_node cuse_ref $REF; then IMPLS="ref"; else echo "BENCH error ref {\"error\":\"cuse_ref did not start\"}"; cat /tmp/cuse_ref.log; fi
if wait_node deferred $OURS; then IMPLS="$IMPLS ours"; else echo "BENCH error ours {\"error\":\"deferred did not start\"}"; tail -5 /tmp/deferred.log; fi
if [ -n "$BARE" ]; then
	if wait_node cuse_null $BARE; then IMPLS="$IMPLS bare"; else echo "BENCH error bare {\"error\":\"cuse_null did not start\"}"; tail -5 /tmp/cuse_null.log; fi
fi
if [ -n "$QUIET" ]; then
	if wait_node deferred_quiet $QUIET; then IMPLS="$IMPLS quiet"; else echo "BENCH error quiet {\"error\":\"deferred --name deferred_quiet did not start\"}"; tail -5 /tmp/deferred_quiet.log; fi
fi
if [ -n "$ALT" ]; then
	if wait_node deferred_alt $ALT; then IMPLS="$IMPLS alt"; else echo "BENCH error alt {\"error\":\"$BENCH_ALT did not start\"}"; tail -5 /tmp/deferred_alt.log; fi
fi
if [ -n "$FLOOR" ]; then
	if wait_node cuse_floor_sleep $FLOOR; then IMPLS="$IMPLS floor"; else echo "BENCH error floor {\"error\":\"cuse_floor sleep did not start\"}"; cat /tmp/cuse_floor.log; fi
	IMPLS="$IMPLS spin"
fi
dev() { case $1 in ref) echo /dev/cuse_ref ;; ours) echo /dev/deferred ;; bare) echo /dev/cuse_null ;; quiet) echo /dev/deferred_quiet ;; alt) echo /dev/deferred_alt ;; floor) echo /dev/cuse_floor_sleep ;; spin) echo /dev/cuse_floor_spin ;; esac; }
pid() { case $1 in ref) echo $REF ;; ours) echo $OURS ;; bare) echo $BARE ;; quiet) echo $QUIET ;; alt) echo $ALT ;; floor) echo $FLOOR ;; esac; }

# idle CASE: every server but the spinning floor idle for IDLE_S seconds.
idle() {
	for i in $IMPLS; do
		[ $i = spin ] && continue
		eval "s0_$i=\$(switches \$(pid $i)) c0_$i=\$(cpu_ticks \$(pid $i))"
	done
	sleep "$IDLE_S"
	for i in $IMPLS; do
		[ $i = spin ] && continue
		p=$(pid $i)
		eval "s0=\$s0_$i c0=\$c0_$i"
		s1=$(switches $p) c1=$(cpu_ticks $p)
		echo "BENCH $1 $i {\"bench\":\"idle\",\"seconds\":$IDLE_S,\"switches\":$((s1 - s0)),\"wakeups_per_s\":$(awk "BEGIN {printf \"%.2f\", ($s1 - $s0) / $IDLE_S}"),\"cpu_s\":$(awk "BEGIN {printf \"%.2f\", ($c1 - $c0) / 100}"),\"threads\":$(threads $p),\"rss_kb\":$(rss_kb $p)}"
	done
}

# run CASE IMPL N T: one ioctl_bench run against IMPL (the spinning floor started for it alone).
run() {
	if [ $2 = spin ]; then
		cuse_floor spin >/tmp/cuse_floor_spin.log 2>&1 &
		SPIN=$!
		if ! wait_node cuse_floor_spin $SPIN; then
			echo "BENCH $1 spin {\"error\":\"cuse_floor spin did not start\"}"
			return
		fi
	fi
	echo "BENCH $1 $2 $(ioctl_bench "$(dev $2)" $CANCEL "$3" "$4")"
	if [ $2 = spin ]; then
		kill $SPIN
		wait $SPIN 2>/dev/null
		n=0
		while [ -e /dev/cuse_floor_spin ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
	fi
}

# Idle first: nothing has been asked of any server yet.
sleep 1
idle idle

# Warm-up (not recorded).
for i in $IMPLS; do [ $i = spin ] || ioctl_bench "$(dev $i)" $CANCEL 1000 1 >/dev/null; done

order() { # alternate who goes first from round to round
	if [ $(($1 % 2)) -eq 0 ]; then echo "$IMPLS"; else echo "$IMPLS" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}'; fi
}
r=0
while [ $r -lt "$ROUNDS" ]; do
	for i in $(order $r); do run lat $i "$CALLS" 1; done
	r=$((r + 1))
done
for t in 1 2 4 8; do
	r=0
	while [ $r -lt "$ROUNDS" ]; do
		for i in $(order $r); do run tput$t $i "$TPUT" $t; done
		r=$((r + 1))
	done
done
# Idle again: whatever the runs left spinning or waking must have stopped.
sleep 1
idle idle_after
for i in $IMPLS; do
	[ $i = spin ] && continue
	p=$(pid $i)
	echo "BENCH rss_after $i {\"bench\":\"rss\",\"rss_kb\":$(rss_kb $p),\"threads\":$(threads $p),\"cpu_s\":$(cpu_s $p)}"
done
for p in $OURS $REF $BARE $QUIET $ALT $FLOOR; do kill -INT $p 2>/dev/null; done
sleep 1
for p in $OURS $REF $BARE $QUIET $ALT $FLOOR; do kill -KILL $p 2>/dev/null; done
echo "BENCH done - {}"
