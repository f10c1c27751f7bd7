#!/bin/sh
# Runs INSIDE the VM (busybox sh): libfuse's reference and several configurations of our daemon
# side by side in one boot, to choose between options (e.g. --spin-us, --threads) by measurement.
#
#   sh vm-configs.sh ROUNDS CALLS TPUT NAME:FLAGS...
#
# NAME:FLAGS starts `deferred --name d_NAME --major 0 FLAGS` (FLAGS comma-separated, e.g.
# `s200:--spin-us,200`; FLAGS starting with a path run that binary instead, e.g.
# `old:/usr/local/bin/deferred-old,--threads,4` after `--add BIN:/usr/local/bin/deferred-old`; a
# NAME ending in q runs with RUST_LOG=warn: logging off; the NAMEs `floor` and `spin` run
# bench/cuse_floor sleep|spin, the floors: `spin` burns a CPU, so it is started for its own runs
# only). Each round runs,
# for 1, 2, 4, 8 client threads, `ioctl_bench DEV 0x6b02 N T` against every server (N = CALLS for
# 1 client, TPUT otherwise), alternating the order from round to round. Output lines:
#   EXP <threads> <name> <ioctl_bench json>
#   CPUT <threads> <name> <clock ticks the server used during that run> <calls> <its sleeps>
#   CPU <name> <utime+stime clock ticks of the whole server> <threads>
# From the host (the summary: medians and ratios to the reference; see docs/performance.md):
#   scripts/vm --add bench/build/cuse_ref:/usr/local/bin/cuse_ref --add bench/build/cuse_floor:/usr/local/bin/cuse_floor \
#     --add bench/build/ioctl_bench:/usr/local/bin/ioctl_bench --add bench/vm-configs.sh:/root/c.sh \
#     -- sh /root/c.sh 5 10000 16000 s200:--spin-us,200 s0:--spin-us,0 > /tmp/c.log
#   bench/configs_summary.py /tmp/c.log
ROUNDS=$1 CALLS=$2 TPUT=$3
CANCEL=0x00006b02
cuse_ref >/tmp/cuse_ref.log 2>&1 &
pid_ref=$!
IMPLS="ref"
shift 3
for c in "$@"; do
	name=${c%%:*}
	flags=$(echo "${c#*:}" | tr ',' ' ')
	bin=deferred
	case $flags in /*) bin=${flags%% *}; flags=${flags#"$bin"} ;; esac
	case $name in
	floor) cuse_floor sleep d_floor >/tmp/d_floor.log 2>&1 & ;;
	spin) IMPLS="$IMPLS spin"; continue ;;
	*q) RUST_LOG=warn $bin --name "d_$name" --major 0 $flags >/tmp/d_$name.log 2>&1 & ;;
	*) $bin --name "d_$name" --major 0 $flags >/tmp/d_$name.log 2>&1 & ;;
	esac
	eval "pid_$name=\$!"
	IMPLS="$IMPLS $name"
done
# Voluntary context switches (sleeps) summed over all threads of PID.
switches() { cat /proc/$1/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }
dev() { if [ "$1" = ref ]; then echo /dev/cuse_ref; else echo "/dev/d_$1"; fi; }
for i in $IMPLS; do
	[ $i = spin ] && continue
	n=0
	while [ ! -e "$(dev $i)" ] && [ $n -lt 200 ]; do sleep 0.1; n=$((n + 1)); done
	[ -e "$(dev $i)" ] || { echo "EXP error: $(dev $i) did not appear"; cat /tmp/d_$i.log 2>/dev/null; exit 1; }
done
for i in $IMPLS; do [ $i = spin ] || ioctl_bench "$(dev $i)" $CANCEL 1000 1 >/dev/null; done
r=0
while [ $r -lt "$ROUNDS" ]; do
	if [ $((r % 2)) -eq 1 ]; then
		order=$(echo "$IMPLS" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}')
	else
		order=$IMPLS
	fi
	for t in 1 2 4 8; do
		n=$TPUT
		[ $t = 1 ] && n=$CALLS
		for i in $order; do
			if [ $i = spin ]; then
				cuse_floor spin d_spin >/tmp/d_spin.log 2>&1 &
				pid_spin=$!
				k=0
				while [ ! -e /dev/d_spin ] && [ $k -lt 200 ]; do sleep 0.05; k=$((k + 1)); done
			fi
			eval "p=\$pid_$i"
			c0=$(awk '{print $14 + $15}' /proc/$p/stat)
			v0=$(switches $p)
			echo "EXP $t $i $(ioctl_bench "$(dev $i)" $CANCEL "$n" $t)"
			echo "CPUT $t $i $(($(awk '{print $14 + $15}' /proc/$p/stat) - c0)) $n $(($(switches $p) - v0))"
			if [ $i = spin ]; then
				kill $pid_spin
				wait $pid_spin 2>/dev/null
				k=0
				while [ -e /dev/d_spin ] && [ $k -lt 100 ]; do sleep 0.05; k=$((k + 1)); done
			fi
		done
	done
	r=$((r + 1))
done
for i in $IMPLS; do
	[ $i = spin ] && continue
	eval "p=\$pid_$i"
	echo "CPU $i $(awk '{print $14 + $15}' /proc/$p/stat) $(ls /proc/$p/task | wc -l)"
done
echo "EXP done"
