#!/bin/sh
# Runs INSIDE the VM (busybox sh), through scripts/vm:
#   SERVERS='NAME:COMMAND;NAME:COMMAND;spin:' sh vm-lone.sh [CALLS] [ROUNDS]
# A quick side-by-side of servers for a lone client (THREADS=N in the environment: N clients;
# THREADS="2 4": each server runs 2 then 4 clients in every round, the runs named NAME-t2, NAME-t4):
# each server NAME is started with COMMAND (which must serve /dev/NAME), then ROUNDS rounds of
# CALLS CANCEL ioctls each, the servers alternating their order every round. The name `spin`
# (no command) is the spinning floor (bench/cuse_floor spin), started for its own runs only: it
# burns a CPU; `spinN` (N a number) is the spinning floor answering after N ns of busy work. Prints one "LAT NAME {json}" line per run (ioctl_bench's JSON), then "CTXT NAME N":
# the VM's context switches during the run, per 100 calls (200: every call sleeps once); e.g.
#   scripts/vm --add bench/build/cuse_floor:/usr/local/bin/cuse_floor \
#     --add bench/build/ioctl_bench:/usr/local/bin/ioctl_bench --add bench/vm-lone.sh:/root/vm-lone.sh \
#     --add bench/vm-lib.sh:/root/vm-lib.sh \
#     --env 'SERVERS=ours:deferred --name ours --major 0;quiet:RUST_LOG=warn deferred --name quiet --major 0;spin:' \
#     -- sh /root/vm-lone.sh 10000 6
# The paired ratios of two servers over the rounds, from the log: bench/lone_pairs.py LOG A B.
CALLS=${1:-10000} ROUNDS=${2:-6}
ctxt() { awk '/^ctxt/ { print $2 }' /proc/stat; }
. "${0%/*}/vm-lib.sh" # wait_node, floor_work
NAMES=
IFS=';'
for s in $SERVERS; do
	n=${s%%:*}; c=${s#*:}
	[ -n "$(floor_work "$n")" ] && { NAMES="$NAMES $n"; continue; }
	sh -c "$c" >/tmp/$n.log 2>&1 &
	wait_node $n || echo "FAIL $n did not start"
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
		for T in ${THREADS:-1}; do
			N=$n; [ "$T" = "${THREADS:-1}" ] || N=$n-t$T
			echo "LAT $N $(ioctl_bench /dev/$n 0x6b02 $CALLS $T | sed 's/,"cdf_us.*//')}"
		done
		echo "CTXT $n $(( ($(ctxt) - c0) * 100 / CALLS ))"
		if [ -n "$W" ]; then kill $SP; wait $SP 2>/dev/null; while [ -e /dev/$n ]; do sleep 0.05; done; fi
	done
	r=$((r+1))
done
echo DONE
