#!/bin/sh
# Runs INSIDE the VM (busybox sh), through scripts/vm (e.g. with --smp 1):
#   sh vm-answer-trace.sh [CALLS]
# Where the kernel's time goes when a server answers a lone client's ioctl, for our daemon and
# for libfuse's (bench/cuse_ref), each traced alone: the function graph of the answer's
# fuse_dev_write (the server's writev), 4 levels deep, CALLS calls (default 500). Prints
# "ANSWER <server>" and one line per function called under it: the mean time (us, tracing
# included) and the count. A long `__wake_up` (~20 us here) woke a client that had gone to
# sleep in its wait for the answer (with `set_graph_function` __wake_up and 7 levels, its time
# is in `ttwu_do_activate`); a short one (~2 us) found no sleeper: the client was preempted by
# the woken server before it slept, and finds its answer without sleeping.
#   scripts/vm --smp 1 --add bench/build/cuse_ref:/usr/local/bin/cuse_ref \
#     --add bench/build/ioctl_bench:/usr/local/bin/ioctl_bench \
#     --add bench/vm-answer-trace.sh:/root/vm-answer-trace.sh \
#     --add bench/vm-lib.sh:/root/vm-lib.sh -- sh /root/vm-answer-trace.sh
N=${1:-500}
T=/sys/kernel/tracing
mount -t tracefs none $T 2>/dev/null
. "${0%/*}/vm-lib.sh" # wait_node, floor_work

# answer NAME DEV
answer() {
	ioctl_bench "$2" 0x6b02 2000 1 >/dev/null
	echo nop >$T/current_tracer
	echo >$T/trace
	echo 16384 >$T/buffer_size_kb
	echo fuse_dev_write >$T/set_graph_function
	echo 4 >$T/max_graph_depth
	echo function_graph >$T/current_tracer
	echo 1 >$T/tracing_on
	ioctl_bench "$2" 0x6b02 "$N" 1 >/dev/null
	echo 0 >$T/tracing_on
	echo "ANSWER $1"
	# Lines "cpu) duration us | function();" or "} /* function */": the mean per function.
	grep -v '^#' $T/trace | awk '
		/\|/ && match($0, /[0-9.]+ us/) {
			d = substr($0, RSTART, RLENGTH - 3) + 0
			split($0, p, "|"); f = p[2]
			if (match(f, /\/\* [a-z_0-9]+/)) f = substr(f, RSTART + 3, RLENGTH - 3)
			gsub(/[ {};()]/, "", f)
			if (f != "") { s[f] += d; n[f]++ }
		}
		END { for (k in s) if (n[k] >= 50) printf "  %8.2f us x%d %s\n", s[k] / n[k], n[k], k }' | sort -rn | head -12
	echo nop >$T/current_tracer
}

deferred >/tmp/deferred.log 2>&1 &
D=$!
wait_node deferred || { echo "ANSWER error: deferred did not start"; exit 1; }
answer ours /dev/deferred
kill -INT $D; wait $D 2>/dev/null
cuse_ref >/tmp/cuse_ref.log 2>&1 &
R=$!
wait_node cuse_ref || { echo "ANSWER error: cuse_ref did not start"; exit 1; }
answer libfuse /dev/cuse_ref
kill $R; wait $R 2>/dev/null
echo "ANSWER done"
