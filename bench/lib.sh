# Shell functions bench/run.sh and bench/ab.sh share: the fio workloads
# both run, and how both read a server's CPU time. Sourced, not run.

# fio_args WORKLOAD prints the workload's fio options.
fio_args() {
	case $1 in
	rr4k-qd1) echo "--rw=randread --bs=4k --iodepth=1" ;;
	rr4k-qd32) echo "--rw=randread --bs=4k --iodepth=32" ;;
	rw4k-qd1) echo "--rw=randwrite --bs=4k --iodepth=1" ;;
	rw4k-qd32) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
	sr1m-qd8) echo "--rw=read --bs=1M --iodepth=8" ;;
	sw1m-qd8) echo "--rw=write --bs=1M --iodepth=8" ;;
	rr4k-qd32-4conn) echo "--rw=randread --bs=4k --iodepth=32 --numjobs=4" ;;
	rr4k-qd32-1ms) echo "--rw=randread --bs=4k --iodepth=32" ;;
	*) echo "bench: unknown workload $1" >&2; exit 2 ;;
	esac
}

# cpu_ticks PID prints the process's user+system CPU time in clock ticks.
cpu_ticks() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	stat=${stat##*) }
	set -- $stat
	echo $((${12} + ${13}))
}
