#!/bin/sh
# Runs INSIDE the VM (busybox sh), through scripts/vm:
#   SERVERS='NAME:COMMAND;...' THREADS=N sh vm-tail-trace.sh [CALLS]
# The slow calls of several clients, for bench/slow_calls.py to explain: per server (NAME
# serves /dev/NAME, started with COMMAND, each alone), CALLS calls (default 4000) of ioctl_bench
# from THREADS client threads (default 2) under the kernel's trace points (system calls,
# switches, wake-ups, migrations); prints ioctl_bench's JSON line and the raw trace between
# "TRACE NAME BEGIN" and "TRACE NAME END". E.g.
#   scripts/vm --add bench/build/ioctl_bench:/usr/local/bin/ioctl_bench \
#     --add bench/vm-tail-trace.sh:/root/vm-tail-trace.sh --env THREADS=2 \
#     --env 'SERVERS=ours:deferred --name ours --major 0' -- sh /root/vm-tail-trace.sh \
#     > /tmp/tail.log && python3 bench/slow_calls.py /tmp/tail.log
N=${1:-4000}
T=/sys/kernel/tracing
mount -t tracefs none $T 2>/dev/null
wait_node() { i=0; while [ ! -e "/dev/$1" ]; do i=$((i + 1)); [ $i -gt 200 ] && return 1; sleep 0.1; done; }
# stop PID: PID and its children (the server a `sh -c` started).
stop() {
	for p in /proc/[0-9]*; do
		[ "$(cut -d' ' -f4 $p/stat 2>/dev/null)" = "$1" ] && kill ${p#/proc/} 2>/dev/null
	done
	kill $1 2>/dev/null; wait $1 2>/dev/null
}

IFS=';'
for s in $SERVERS; do
	unset IFS
	n=${s%%:*} c=${s#*:}
	sh -c "$c" >/tmp/$n.log 2>&1 &
	P=$!
	if wait_node $n; then
		ioctl_bench /dev/$n 0x6b02 2000 "${THREADS:-2}" >/dev/null
		echo >$T/trace
		echo 131072 >$T/buffer_size_kb
		for e in raw_syscalls/sys_enter raw_syscalls/sys_exit sched/sched_switch \
			sched/sched_wakeup sched/sched_migrate_task; do
			echo 1 >$T/events/$e/enable
		done
		echo 1 >$T/tracing_on
		echo "LAT $n $(ioctl_bench /dev/$n 0x6b02 "$N" "${THREADS:-2}" | sed 's/,"cdf_us.*//')}"
		echo 0 >$T/tracing_on
		echo 0 >$T/events/enable
		echo "TRACE $n BEGIN"
		grep -v '^#' $T/trace
		echo "TRACE $n END"
	else
		echo "FAIL $n did not start"
	fi
	stop $P
	while [ -e /dev/$n ]; do sleep 0.05; done
	IFS=';'
done
unset IFS
echo DONE
