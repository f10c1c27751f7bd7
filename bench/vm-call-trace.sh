#!/bin/sh
# Runs INSIDE the VM (busybox sh), through scripts/vm:
#   SERVERS='NAME:COMMAND;...;spin:' [THREADS=N] [RAW=1] sh vm-call-trace.sh [CALLS]
# Where the round trips go, per server (each started alone, as in vm-lone.sh: NAME serves
# /dev/NAME; `spin` is the spinning floor, bench/cuse_floor spin), from the kernel's trace points
# (system calls, switches, wake-ups, migrations) over CALLS calls (default 2000) of ioctl_bench
# from THREADS client threads (default 1). For a lone client, two summaries:
# - "COUNT": system calls, context switches and wake-ups per call (those seen in at least 5 %
#   of the calls), e.g. whether the answer wakes a sleeping client ("wake by <server> of
#   ioctl_bench") or the client sleeps at all ("switch ioctl_bench -> swapper/N");
# - "SEGMENT": the mean and median (us, tracing included) of the client's ioctl entry to the
#   server's read returning the request (A-B), that read to the answer's writev (B-C), the writev
#   to the client's ioctl return (C-D), and the client's own time to its next call (D-A).
#   scripts/vm [--smp 1] --add bench/build/cuse_floor:/usr/local/bin/cuse_floor \
#     --add bench/build/ioctl_bench:/usr/local/bin/ioctl_bench \
#     --add bench/vm-call-trace.sh:/root/vm-call-trace.sh --add bench/vm-lib.sh:/root/vm-lib.sh \
#     --env 'SERVERS=ours:deferred --name ours --major 0;spin:' -- sh /root/vm-call-trace.sh
# With RAW=1 (several clients' slow calls, for bench/slow_calls.py to explain): ioctl_bench's
# JSON line as "LAT NAME {json}" and the raw trace between "TRACE NAME BEGIN" and
# "TRACE NAME END" instead, e.g.
#   scripts/vm --add bench/build/ioctl_bench:/usr/local/bin/ioctl_bench \
#     --add bench/vm-call-trace.sh:/root/vm-call-trace.sh --add bench/vm-lib.sh:/root/vm-lib.sh \
#     --env THREADS=2 --env RAW=1 \
#     --env 'SERVERS=ours:deferred --name ours --major 0' -- sh /root/vm-call-trace.sh 4000 \
#     > /tmp/tail.log && python3 bench/slow_calls.py /tmp/tail.log
N=${1:-2000}
T=/sys/kernel/tracing
mount -t tracefs none $T 2>/dev/null
. "${0%/*}/vm-lib.sh" # wait_node, floor_work
# stop PID: PID and its children (the server a `sh -c` started).
stop() {
	for p in /proc/[0-9]*; do
		[ "$(cut -d' ' -f4 $p/stat 2>/dev/null)" = "$1" ] && kill ${p#/proc/} 2>/dev/null
	done
	kill $1 2>/dev/null; wait $1 2>/dev/null
}

# trace NAME: CALLS calls of ioctl_bench on /dev/NAME, traced; the trace left in $T/trace, and
# ioctl_bench's JSON line printed with RAW=1.
trace() {
	ioctl_bench /dev/$1 0x6b02 1000 "${THREADS:-1}" >/dev/null
	echo >$T/trace
	echo 131072 >$T/buffer_size_kb
	for e in raw_syscalls/sys_enter raw_syscalls/sys_exit sched/sched_switch \
		sched/sched_wakeup sched/sched_migrate_task; do
		echo 1 >$T/events/$e/enable
	done
	echo 1 >$T/tracing_on
	lat=$(ioctl_bench /dev/$1 0x6b02 "$N" "${THREADS:-1}" | sed 's/,"cdf_us.*//')
	echo 0 >$T/tracing_on
	echo 0 >$T/events/enable
	[ -n "$RAW" ] && echo "LAT $1 $lat}"
}

# raw NAME: the trace in $T/trace, between markers.
raw() {
	echo "TRACE $1 BEGIN"
	grep -v '^#' $T/trace
	echo "TRACE $1 END"
}

# report NAME: the two summaries of the trace in $T/trace.
report() {
	grep -v '^#' $T/trace | awk -v n="$N" -v name="$1" '
		# "comm-tid [cpu] flags time: event: ..."; comm may contain "-", the tid follows the last.
		{ c = $1; sub(/-[0-9]+$/, "", c); t = $4; sub(/:$/, "", t); t *= 1000000 }
		/sys_enter:/ { match($0, /NR [0-9]+/); nr = substr($0, RSTART + 3, RLENGTH - 3) + 0
			a["sys " c " " nr]++
			if (c == "ioctl_bench" && nr == 16) { if (st == 4) seg("D-A", t - d); st = 1; s0 = t }
			else if (nr == 20 && st == 2) { seg("B-C", t - b); st = 3; cc = t } }
		/sys_exit:/ { match($0, /NR [0-9]+ = -?[0-9]+/); split(substr($0, RSTART + 3, RLENGTH - 3), r, " = ")
			if (r[1] == 0 && r[2] > 0 && st == 1) { seg("A-B", t - s0); st = 2; b = t }
			else if (c == "ioctl_bench" && r[1] == 16 && st == 3) { seg("C-D", t - cc); st = 4; d = t } }
		/sched_switch:/ { match($0, /prev_comm=[^ ]+/); p = substr($0, RSTART + 10, RLENGTH - 10)
			match($0, /next_comm=[^ ]+/); q = substr($0, RSTART + 10, RLENGTH - 10); a["switch " p " -> " q]++ }
		/sched_wakeup:/ { match($0, /comm=[^ ]+/); q = substr($0, RSTART + 5, RLENGTH - 5); a["wake by " c " of " q]++ }
		function seg(k, v) { m[k] += v; cnt[k]++; vals[k, cnt[k]] = v }
		END {
			for (k in a) if (a[k] >= n / 20) printf "COUNT %s %6.2f %s\n", name, a[k] / n, k
			split("A-B B-C C-D D-A", ks, " ")
			for (i = 1; i <= 4; i++) {
				k = ks[i]; if (!cnt[k]) continue
				# median: a counting pass over whole microseconds (the trace clock has us steps)
				delete h; for (j = 1; j <= cnt[k]; j++) h[int(vals[k, j])]++
				half = cnt[k] / 2; acc = 0; med = -1
				for (v = 0; med < 0; v++) { acc += h[v]; if (acc >= half) med = v }
				printf "SEGMENT %s %s mean %.1f median %d (%d calls)\n", name, k, m[k] / cnt[k], med, cnt[k]
			}
		}' | sort
}

IFS=';'
for s in $SERVERS; do
	unset IFS
	n=${s%%:*} c=${s#*:}
	if [ "$n" = spin ]; then
		cuse_floor spin spin >/tmp/spin.log 2>&1 &
	else
		sh -c "$c" >/tmp/$n.log 2>&1 &
	fi
	P=$!
	if wait_node $n; then
		trace $n
		if [ -n "$RAW" ]; then raw $n; else report $n; fi
	else
		echo "FAIL $n did not start"
	fi
	stop $P
	while [ -e /dev/$n ]; do sleep 0.05; done
	IFS=';'
done
unset IFS
echo DONE
