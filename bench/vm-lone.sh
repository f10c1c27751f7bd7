#!/bin/sh
# Runs INSIDE the VM (busybox sh), through scripts/vm:
#   SERVERS='NAME:COMMAND;NAME:COMMAND;spin:' sh vm-lone.sh [CALLS] [ROUNDS]
# A quick side-by-side of servers for a lone client (THREADS=N in the environment: N clients;
# THREADS="2 4": each server runs 2 then 4 clients in every round, the runs named NAME-t2, NAME-t4):
# each server NAME is started with COMMAND (which must serve /dev/NAME), then ROUNDS rounds of
# CALLS CANCEL ioctls each, the servers alternating their order every round. The name `spin`
# (no command) is the spinning floor (bench/cuse_floor spin), started for its own runs only: it
# burns a CPU; `spinN` (N a number) is the spinning floor answering after N ns of busy work. Prints one "LAT NAME {json}" line per run (ioctl_bench's JSON), then "CTXT NAME N":
# the VM's context switches during the runs, per 100 calls (200: every call sleeps once), and
# "CPU NAME user=U sys=S idle=I srv_user=SU srv_sys=SS": CPU time per call in microseconds (the
# VM's user, system (with irq and softirq) and idle time over all its CPUs, from /proc/stat; the
# server process's own, all its threads, from /proc/PID/stat; USER_HZ ticks, so worth reading over
# a run of a second or more); e.g.
#   scripts/vm --add bench/build/cuse_floor:/usr/local/bin/cuse_floor \
#     --add bench/build/ioctl_bench:/usr/local/bin/ioctl_bench --add bench/vm-lone.sh:/root/vm-lone.sh \
#     --add bench/vm-lib.sh:/root/vm-lib.sh \
#     --env 'SERVERS=ours:deferred --name ours --major 0;quiet:RUST_LOG=warn deferred --name quiet --major 0;spin:' \
#     -- sh /root/vm-lone.sh 10000 6
# The paired ratios of two servers over the rounds, from the log: bench/lone_pairs.py LOG A B.
CALLS=${1:-10000} ROUNDS=${2:-6}
ctxt() { awk '/^ctxt/ { print $2 }' /proc/stat; }
# vmcpu: the VM's user, system (+ irq, softirq) and idle (+ iowait) ticks; srvcpu PID: the
# process's user and system ticks (0 0 once it is gone).
vmcpu() { awk '/^cpu / { print $2 + $3, $4 + $7 + $8, $5 + $6 }' /proc/stat; }
srvcpu() { awk '{ print $14, $15 }' /proc/$1/stat 2>/dev/null || echo 0 0; }
# server PID: PID, or its child when PID is the shell that started it.
server() { c=$(cat /proc/$1/task/$1/children 2>/dev/null); [ "$(cat /proc/$1/comm 2>/dev/null)" = sh ] && [ -n "$c" ] && echo $c || echo $1; }
K=$((1000000 / $(getconf CLK_TCK 2>/dev/null || echo 100))) # microseconds per tick
NC=$((CALLS * $(echo ${THREADS:-1} | wc -w))) # calls a server makes a round: the runs of every THREADS
PIDS= # NAME:PID of each server started once, its own process (not the shell)
. "${0%/*}/vm-lib.sh" # wait_node, floor_work
NAMES=
IFS=';'
for s in $SERVERS; do
	n=${s%%:*}; c=${s#*:}
	[ -n "$(floor_work "$n")" ] && { NAMES="$NAMES $n"; continue; }
	sh -c "$c" >/tmp/$n.log 2>&1 &
	wait_node $n $! || echo "FAIL $n did not start"
	PIDS="$PIDS $n:$(server $!)"
	NAMES="$NAMES $n"
done
unset IFS
for n in $NAMES; do [ -n "$(floor_work $n)" ] || ioctl_bench /dev/$n 0x6b02 1000 1 >/dev/null; done
r=0
while [ $r -lt $ROUNDS ]; do
	L=$NAMES; [ $((r % 2)) = 1 ] && L=$(echo $NAMES | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}')
	for n in $L; do
		W=$(floor_work $n)
		if [ -n "$W" ]; then cuse_floor spin $n $W >/dev/null 2>&1 & SP=$!; wait_node $n; fi
		c0=$(ctxt)
		P=$SP; for p in $PIDS; do [ "${p%%:*}" = "$n" ] && P=${p#*:}; done
		set -- $(vmcpu) $(srvcpu $P)
		u0=$1 s0=$2 i0=$3 su0=$4 ss0=$5
		for T in ${THREADS:-1}; do
			N=$n; [ "$T" = "${THREADS:-1}" ] || N=$n-t$T
			echo "LAT $N $(ioctl_bench /dev/$n 0x6b02 $CALLS $T | sed 's/,"cdf_us.*//')}"
		done
		echo "CTXT $n $(( ($(ctxt) - c0) * 100 / NC ))"
		set -- $(vmcpu) $(srvcpu $P)
		echo "CPU $n user=$((($1 - u0) * K / NC)) sys=$((($2 - s0) * K / NC)) idle=$((($3 - i0) * K / NC)) srv_user=$((($4 - su0) * K / NC)) srv_sys=$((($5 - ss0) * K / NC)) pid=$P"
		if [ -n "$W" ]; then kill $SP; wait $SP 2>/dev/null; while [ -e /dev/$n ]; do sleep 0.05; done; fi
	done
	r=$((r+1))
done
echo DONE
