#!/bin/sh
# Runs INSIDE the VM (busybox sh), through scripts/vm:
#   SERVERS='NAME:COMMAND;NAME:COMMAND;spin:;spin500:' sh vm-turnaround.sh [CALLS]
# A server's turnaround: the time from its read(2) returning a request to its writev(2) of the
# answer, for a lone client's CALLS (default 2000) CANCEL ioctls, each server alone, from the
# kernel's raw_syscalls trace points (clock x86-tsc, converted with the TSC rate the kernel
# detected at boot; the trace points' own cost is in every figure alike). Servers as in
# vm-lone.sh: NAME serves /dev/NAME, started with COMMAND; `spin` is the spinning floor
# (bench/cuse_floor spin) and `spinN` the same answering after N ns of busy work, the yardsticks.
# Prints per server its latency ("LAT NAME {json}", traced), then at the end per server
# "TURN NAME n=... p10=... p50=... p90=... (us) syscalls=..." (the mean number of other system
# calls between the read and the answer, and which, "NR:count"). E.g.
#   scripts/vm --add bench/build/cuse_floor:/usr/local/bin/cuse_floor \
#     --add bench/build/ioctl_bench:/usr/local/bin/ioctl_bench \
#     --add target/release/examples/cuse_null:/usr/local/bin/cuse_null \
#     --add bench/vm-turnaround.sh:/root/vm-turnaround.sh --add bench/vm-lib.sh:/root/vm-lib.sh \
#     --env 'SERVERS=bare:cuse_null bare;spin:;spin500:;spin1000:;ours:deferred --name ours --major 0' \
#     -- sh /root/vm-turnaround.sh 2000
N=${1:-2000}
T=/sys/kernel/tracing
mount -t tracefs none $T 2>/dev/null
MHZ=$(dmesg | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | head -1)
[ -n "$MHZ" ] || { echo "FAIL no TSC rate in dmesg"; exit 1; }
# Set up once: changing the clock, the buffer or clearing it while a server spins in system
# calls hung 6.1's ring buffer reset (soft lockups on both CPUs, in the console of a boot). The
# servers' events are told apart by markers; the trace is read once all have run.
echo 0 >$T/tracing_on
echo nop >$T/current_tracer
echo 32768 >$T/buffer_size_kb
echo x86-tsc >$T/trace_clock
echo >$T/trace
# Every system call's entry but read's (a spinning server's empty reads), and the exits of the
# reads that returned a request.
echo 'id != 0' >$T/events/raw_syscalls/sys_enter/filter
echo 'id == 0 && ret > 0' >$T/events/raw_syscalls/sys_exit/filter
echo 1 >$T/events/raw_syscalls/enable
. "${0%/*}/vm-lib.sh" # wait_node, floor_work
NAMES=
IFS=';'
for s in $SERVERS; do
	unset IFS
	n=${s%%:*}; c=${s#*:}
	NAMES="$NAMES $n"
	W=$(floor_work "$n")
	if [ -n "$W" ]; then cuse_floor spin "$n" "$W" >/dev/null 2>&1 & else sh -c "exec env $c" >"/tmp/$n.log" 2>&1 & fi
	SP=$!
	if wait_node "$n"; then
		ioctl_bench "/dev/$n" 0x6b02 2000 1 >/dev/null
		echo 1 >$T/tracing_on
		echo "TURN_BEGIN $n" >$T/trace_marker
		L=$(ioctl_bench "/dev/$n" 0x6b02 "$N" 1 | sed 's/,"cdf_us.*//')
		echo 0 >$T/tracing_on
		echo "LAT $n $L}"
	else
		echo "FAIL $n did not start"
	fi
	kill $SP 2>/dev/null; wait $SP 2>/dev/null
	i=0; while [ -e "/dev/$n" ] && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.05; done
	IFS=';'
done
unset IFS
echo 0 >$T/events/raw_syscalls/enable
grep -v '^#' $T/trace >/tmp/turn.trace
for n in $NAMES; do
	# Per thread: a read that returned a request starts a turnaround, its writev ends it; the
	# other system calls between are counted (by number) once it ends.
	awk -v name="$n" '/tracing_mark_write: TURN_BEGIN/ { on = ($NF == name); next } on' /tmp/turn.trace |
	awk -v mhz="$MHZ" '
		{
			t = ""
			for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+:$/) { t = substr($i, 1, length($i) - 1); break }
			if (t == "" || !match($0, /NR -?[0-9]+/)) next
			nr = substr($0, RSTART + 3, RLENGTH - 3)
			np = split($1, a, "-"); pid = a[np]
			if ($0 ~ /sys_exit/) { start[pid] = t; between[pid] = "" }
			else if (pid in start) {
				if (nr == 20) {
					k = split(between[pid], b, " ")
					for (j = 1; j <= k; j++) seen[b[j]]++
					printf "G %.3f %d\n", (t - start[pid]) / mhz, k
					delete start[pid]
				} else between[pid] = between[pid] " " nr
			}
		}
		END { s = ""; for (k in seen) s = s " " k ":" seen[k]; print "S" s }' >/tmp/turn.$n
	grep '^G' /tmp/turn.$n | sort -k2 -n | awk -v name="$n" -v calls="$(grep '^S' /tmp/turn.$n | cut -c3-)" '
		{ g[NR] = $2; o += $3 }
		END {
			if (NR == 0) { print "TURN " name " n=0"; exit }
			printf "TURN %s n=%d p10=%.2f p50=%.2f p90=%.2f syscalls=%.2f %s\n", name, NR,
				g[int(NR * 0.1) + 1], g[int(NR * 0.5) + 1], g[int(NR * 0.9) + 1], o / NR, calls
		}'
done
echo DONE
