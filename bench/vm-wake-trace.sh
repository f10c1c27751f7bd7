#!/bin/sh
# Runs INSIDE the VM (busybox sh), through scripts/vm:
#   sh vm-wake-trace.sh [CALLS]
# How a lone client's wake-up reaches it, for our daemon and for the spinning floor
# (bench/cuse_floor spin), each run alone: CALLS CANCEL ioctls from one thread, untraced (the
# latency), then again with the scheduler's trace points on (sched_switch, sched_wakeup and the
# interrupt vectors). A client asleep in its ioctl on an idle CPU is woken in one of two ways:
#   ipi   the CPU had halted: the answering CPU sends an interrupt (sched_wakeup in hard-irq
#         context), and the idle CPU must come out of halt (in a TCG guest: its host thread must
#         be woken and scheduled)
#   poll  the answer came while the idle CPU was still in the idle loop's polling phase, before
#         it halted: no interrupt, the idle task itself switches to the client
# Prints "WAKE <server> {json}" lines: the untraced run's p50/p99, the traced run's p50 (the mode
# can change from one run to the next: the counts belong to the traced run) and the count of each
# kind of wake-up.
# bench/wake_modes.py (on the host) turns a log of these runs into a table.
CALLS=${1:-5000}
T=/sys/kernel/tracing
mount -t tracefs none $T 2>/dev/null
. "${0%/*}/vm-lib.sh" # wait_node, floor_work
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }

# measure NAME DEV: one untraced run, one traced run.
measure() {
	name=$1
	ioctl_bench "$2" 0x6b02 1000 1 >/dev/null
	lat=$(ioctl_bench "$2" 0x6b02 "$CALLS" 1)
	echo 16384 >$T/buffer_size_kb
	echo >$T/trace
	for e in sched/sched_switch sched/sched_wakeup irq_vectors; do echo 1 >$T/events/$e/enable; done
	echo 1 >$T/tracing_on
	traced=$(ioctl_bench "$2" 0x6b02 "$CALLS" 1)
	echo 0 >$T/tracing_on
	for e in sched/sched_switch sched/sched_wakeup irq_vectors; do echo 0 >$T/events/$e/enable; done
	# The wake-ups of the client (comm ioctl_bench): the flags column has an h in hard-irq context.
	counts=$(grep 'sched_wakeup: comm=ioctl_bench' $T/trace | awk '{ if (index($3, "h")) i++; else p++ } END { printf "%d %d", i, p }')
	set -- $counts
	echo "WAKE $name {\"p50_us\":$(echo "$lat" | field p50_us),\"p99_us\":$(echo "$lat" | field p99_us),\"traced_p50_us\":$(echo "$traced" | field p50_us),\"ipi\":$1,\"poll\":$2}"
}

deferred >/tmp/deferred.log 2>&1 &
D=$!
wait_node deferred || { echo "WAKE error {\"error\":\"deferred did not start\"}"; exit 1; }
measure ours /dev/deferred
kill -INT $D; wait $D 2>/dev/null
cuse_floor spin >/tmp/spin.log 2>&1 &
S=$!
wait_node cuse_floor_spin || { echo "WAKE error {\"error\":\"cuse_floor spin did not start\"}"; exit 1; }
measure spin /dev/cuse_floor_spin
kill $S; wait $S 2>/dev/null
echo "WAKE done {}"
