# Helpers shared by the bench/vm-*.sh scripts, which source it inside the VM (busybox sh) from
# their own directory: give it to scripts/vm beside them, `--add bench/vm-lib.sh:/root/vm-lib.sh`.

# wait_node NODE [PID]: 0 once /dev/NODE exists; 1 after 20 s, or as soon as PID (the server
# that should make it) has died.
wait_node() {
	i=0
	while [ ! -e "/dev/$1" ]; do
		[ -z "$2" ] || kill -0 "$2" 2>/dev/null || return 1
		i=$((i + 1))
		[ $i -gt 200 ] && return 1
		sleep 0.1
	done
}

# floor_work NAME: the busy work (ns) per request of the spinning floor called NAME (`spin`: 0,
# `spinN`: N); nothing for any other name.
floor_work() { case $1 in spin) echo 0 ;; spin*[!0-9]*) ;; spin?*) echo "${1#spin}" ;; esac; }
