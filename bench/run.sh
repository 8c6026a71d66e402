#!/usr/bin/env bash
# bench/run.sh — stackd against its peers under fio, side by side.
#
#   bench/run.sh                                  # full run, ~30 minutes
#   BENCH_RUNTIME=2 BENCH_REPS=1 bench/run.sh     # short run, ~8 minutes
#   BENCH_SMOKE=1 bench/run.sh                    # smoke run, ~4 minutes
#
# One command reproduces bench/results/: it builds stackd, the go-nbd peer
# (bench/gonbd-server) and the profiling harness (bench/profile), starts
# every server on a unix socket under a tmpfs directory, fills each export
# once, then runs the same fio --ioengine=nbd jobs against each: every
# (workload, server) pair BENCH_REPS times, round-robin over the servers
# (and rotating which server goes first), so that drift on the machine hits
# all of them alike. Then it measures stackd's peak RSS under 64 x 128
# in-flight 1 MiB writes, counts syscalls per request of every server, and
# profiles stackd in process. Finally bench/report turns it all into
# bench/results/results.md (the table), chart.svg and results.json.
#
# Servers (columns of the table), each exporting BENCH_SIZE_MIB of storage:
#   stackd-default  the default stack: split 1MiB -> stripe 64KiB x 4 -> memory
#   stackd-default-p1
#                   the same with GOMAXPROCS=1: on a machine where the client
#                   takes a core, one P spares the Go scheduler its spinning
#   stackd-memory   stackd, one flat memory target
#   stackd-file     stackd, one file target on tmpfs
#   nbdkit-memory   nbdkit memory plugin (default: 16 threads, sparse array)
#   nbdkit-file     nbdkit file plugin on tmpfs (default cache mode)
#   qemu-nbd        qemu-nbd -f raw -e 0 -t on a tmpfs file (defaults:
#                   --cache=writeback, --aio=threads)
#   go-nbd          bench/gonbd-server: go-nbd's server.Handle + memory backend
#   stackd-null     stackd, one null target: the protocol engine alone
#   nbdkit-null     nbdkit null plugin: nbdkit's engine alone, the baseline
#                   stackd-null is compared with
# The workloads that workloads.tsv marks `delayed` (the 1 ms leg) run
# against delayed twins of three of them:
#   stackd-default with a 1ms delay layer over each memory leg, nbdkit
#   memory under --filter=delay (delay-read=1ms delay-write=1ms), and
#   gonbd-server -delay 1ms. The other columns are n/a for that row.
#
# Workloads (rows): bench/workloads.tsv names them, gives their fio options
# and says which run against the delayed twins and in which phases.
#
# Environment (all optional):
#   BENCH_SMOKE=0        1 checks the scripts end to end, not the servers:
#                        the knobs below that are unset default to their
#                        shortest (1 s runs, one repetition, 64 MiB
#                        exports, no waiting for a quiet machine, no
#                        retries) and the results go to a new directory
#                        under /tmp, never to bench/results
#   BENCH_RUNTIME=5      seconds measured per fio run (after the ramp)
#   BENCH_RAMP=1         seconds of ramp-up per run, not measured
#   BENCH_REPS=3         repetitions per (workload, server); the table is
#                        their median
#   BENCH_SIZE_MIB=1024  export size (a multiple of 4)
#   BENCH_SERVERS        space-separated subset of the servers above
#   BENCH_WORKLOADS      space-separated subset of the workloads in
#                        bench/workloads.tsv (default: all of them)
#   BENCH_MEMORY=1       0 skips the peak-RSS measurement
#   BENCH_MEM_RUNTIME=10 seconds of the 64-connection write storm
#   BENCH_CENSUS=1       0 skips the syscall census (needs perf)
#   BENCH_PROFILE=1      0 skips the in-process profile
#   BENCH_PROFILE_RUNTIME=10  seconds of each profiled fio run
#   BENCH_QUIET_START=120  seconds to wait, at most, for the machine to go
#                        quiet (other processes using < 10% of the CPUs)
#                        before measuring
#   BENCH_QUIET_BUDGET=300 seconds to spend, at most over the whole run,
#                        waiting before a fio run until other processes use
#                        < 15% of the CPUs; 0 disables the gate
#   BENCH_RETRIES=2      times a run disturbed by other load (> 15% of the
#                        CPUs during the run) is repeated
#   BENCH_RETRY_BUDGET=20  repeats allowed over the whole run
#   BENCH_OUT            results directory (default bench/results); raw fio
#                        JSON goes to BENCH_OUT/raw (not committed)
#
# Needs: go, fio (with the nbd engine), nbdkit, qemu-nbd, nbdinfo; perf for
# the syscall census (skipped without it). Everything runs on this machine:
# fio and the server share its cores, so read the numbers as a comparison
# between servers under the same client, not as absolute limits.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
if [[ ${BENCH_SMOKE:-0} == 1 ]]; then
	: "${BENCH_RUNTIME:=1}" "${BENCH_RAMP:=1}" "${BENCH_REPS:=1}" "${BENCH_SIZE_MIB:=64}"
	: "${BENCH_MEM_RUNTIME:=2}" "${BENCH_PROFILE_RUNTIME:=2}"
	: "${BENCH_QUIET_START:=0}" "${BENCH_QUIET_BUDGET:=0}" "${BENCH_RETRIES:=0}"
	: "${BENCH_OUT:=$(mktemp -d /tmp/stackd-bench-smoke.XXXXXX)}"
fi
run_knobs BENCH
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
OUT=${BENCH_OUT:-$ROOT/bench/results}
DO_MEMORY=${BENCH_MEMORY:-1}
MEM_RUNTIME=${BENCH_MEM_RUNTIME:-10}
DO_CENSUS=${BENCH_CENSUS:-1}
DO_PROFILE=${BENCH_PROFILE:-1}
PROFILE_RUNTIME=${BENCH_PROFILE_RUNTIME:-10}
QUIET_START=${BENCH_QUIET_START:-120}
RETRIES=${BENCH_RETRIES:-2}
RETRY_BUDGET=${BENCH_RETRY_BUDGET:-20}
QUIET_BUDGET=${BENCH_QUIET_BUDGET:-300}
ALL_SERVERS="stackd-default stackd-default-p1 stackd-memory stackd-file nbdkit-memory nbdkit-file qemu-nbd go-nbd stackd-null nbdkit-null"
SERVERS=${BENCH_SERVERS:-$ALL_SERVERS}
WORKLOADS=${BENCH_WORKLOADS:-$(workload_names)}
# The payload budget stackd runs with; the default, written out so the
# memory measurement states what it is measured against.
PAYLOAD_BUDGET=256MiB

if (( SIZE_MIB % 4 != 0 )); then
	echo "BENCH_SIZE_MIB must be a multiple of 4" >&2
	exit 2
fi
need_tools go fio nbdkit qemu-nbd nbdinfo
# shellcheck disable=SC2086 # a list of words
check_workloads $WORKLOADS

WORK=$(mktemp -d /dev/shm/stackd-bench.XXXXXX)
BIN=$WORK/bin
RAW=$OUT/raw
mkdir -p "$BIN" "$OUT" "$RAW"
rm -f "$RAW"/*.json "$RAW"/*.csv "$RAW"/*.tsv "$RAW"/*.txt
declare -A PID=()
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

cleanup() {
	stop_all
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- build ---

log "building stackd, gonbd-server, profile and report (from the current tree)"
(cd "$ROOT" && go build -o "$BIN/stackd" ./cmd/stackd \
	&& go build -o "$BIN/gonbd-server" ./bench/gonbd-server \
	&& go build -o "$BIN/profile" ./bench/profile \
	&& go build -o "$BIN/report" ./bench/report)
REVISION=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Outside a git checkout (a copy of the tree) both are unknown, not fatal.
if DIRTY=$(cd "$ROOT" && git status --porcelain -- cmd nbd stack targets bioset configs go.mod 2>/dev/null); then
	DIRTY=$(printf '%s' "$DIRTY" | grep -c '^' || true)
else
	DIRTY=unknown
fi

# -------------------------------------------------------------- servers ---

# config NAME STACK-YAML writes NAME's stackd configuration: STACK-YAML
# served on NAME's socket, with the payload budget written out.
config() {
	{
		stackd_config "$(sock "$1")" "$2"
		printf 'limits:\n  payload_budget: %s\n' "$PAYLOAD_BUDGET"
	} >"$WORK/$1.yaml"
}

# start NAME launches one server instance in the background, under the
# command in WRAP if set (the census runs servers under perf stat).
WRAP=()
start() {
	local name=$1 s
	s=$(sock "$name")
	rm -f "$s"
	case $name in
	stackd-default | stackd-default-p1)
		config "$name" "$(default_stack "$SIZE_MIB")" ;;
	stackd-default-delay)
		config "$name" "$(default_stack "$SIZE_MIB" 1ms)" ;;
	stackd-memory)
		config "$name" "      memory: {size: ${SIZE_MIB}MiB}" ;;
	stackd-null)
		config "$name" "      null: {size: ${SIZE_MIB}MiB}" ;;
	stackd-file)
		truncate -s "${SIZE_MIB}M" "$WORK/$name.img"
		config "$name" "      file: {path: $WORK/$name.img, size: ${SIZE_MIB}MiB}" ;;
	nbdkit-file | qemu-nbd)
		truncate -s "${SIZE_MIB}M" "$WORK/$name.img" ;;
	esac
	case $name in
	stackd-default-p1)
		GOMAXPROCS=1 "${WRAP[@]}" "$BIN/stackd" serve -config "$WORK/$name.yaml" -log-level warn >"$WORK/$name.log" 2>&1 & ;;
	stackd-*)
		"${WRAP[@]}" "$BIN/stackd" serve -config "$WORK/$name.yaml" -log-level warn >"$WORK/$name.log" 2>&1 & ;;
	nbdkit-memory)
		"${WRAP[@]}" nbdkit -f -U "$s" memory "${SIZE_MIB}M" >"$WORK/$name.log" 2>&1 & ;;
	nbdkit-memory-delay)
		"${WRAP[@]}" nbdkit -f -U "$s" --filter=delay memory "${SIZE_MIB}M" delay-read=1ms delay-write=1ms >"$WORK/$name.log" 2>&1 & ;;
	nbdkit-null)
		"${WRAP[@]}" nbdkit -f -U "$s" null "${SIZE_MIB}M" >"$WORK/$name.log" 2>&1 & ;;
	nbdkit-file)
		"${WRAP[@]}" nbdkit -f -U "$s" file "$WORK/$name.img" >"$WORK/$name.log" 2>&1 & ;;
	qemu-nbd)
		"${WRAP[@]}" qemu-nbd -k "$s" -f raw -e 0 -t -x default "$WORK/$name.img" >"$WORK/$name.log" 2>&1 & ;;
	go-nbd)
		"${WRAP[@]}" "$BIN/gonbd-server" -socket "$s" -size "${SIZE_MIB}MiB" >"$WORK/$name.log" 2>&1 & ;;
	go-nbd-delay)
		"${WRAP[@]}" "$BIN/gonbd-server" -socket "$s" -size "${SIZE_MIB}MiB" -delay 1ms >"$WORK/$name.log" 2>&1 & ;;
	*)
		echo "run.sh: unknown server $name" >&2; exit 2 ;;
	esac
	PID[$name]=$!
	wait_ready "$name"
}

stop() {
	stop_pid "${PID[$1]}"
	unset "PID[$1]"
}

# stop_wrapped NAME stops a server started under WRAP: the server is the
# wrapper's child, and the wrapper (perf) writes its counts once it exits.
stop_wrapped() {
	local pid=${PID[$1]} child
	child=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true)
	if [[ -n $child ]]; then
		kill -TERM $child 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	stop "$1"
}

# instance WORKLOAD SERVER prints the server instance that runs WORKLOAD in
# SERVER's column, or nothing if the pair is n/a.
instance() {
	if [[ $(workload_field "$1" servers) == delayed ]]; then
		case $2 in
		stackd-default | nbdkit-memory | go-nbd) echo "$2-delay" ;;
		esac
	else
		echo "$2"
	fi
}

# busy_ticks prints the machine's non-idle CPU time in clock ticks.
busy_ticks() {
	local _cpu user nice sys idle iowait irq softirq steal rest
	read -r _cpu user nice sys idle iowait irq softirq steal rest </proc/stat
	echo $((user + nice + sys + irq + softirq + steal))
}

# other_load SECONDS prints, in percent of all CPUs, how busy the machine is
# over SECONDS: between fio runs our servers are idle, so that is load from
# other processes.
other_load() {
	local b0 b1
	b0=$(busy_ticks)
	sleep "$1"
	b1=$(busy_ticks)
	awk -v t=$((b1 - b0)) -v s="$1" -v c="$CLK_TCK" -v n="$NCPU" 'BEGIN { printf "%d\n", t * 100 / (c * n * s) }'
}

# quiet_gate waits, while QUIET_BUDGET lasts, until other processes use less
# than 15% of the CPUs; it sets WAITED to the seconds it waited.
quiet_gate() {
	WAITED=0
	while ((QUIET_BUDGET > 0)); do
		(($(other_load 0.3) < 15)) && return 0
		sleep 0.7
		WAITED=$((WAITED + 1))
		QUIET_BUDGET=$((QUIET_BUDGET - 1))
	done
}

# ----------------------------------------------------------------- runs ---

RUNS=$RAW/runs.tsv
printf 'rep\tworkload\tserver\tinstance\tstatus\tfile\tserver_cpu_ticks\tbusy_ticks\tfio_cpu_ms\tclk_tck\tquiet_wait_s\n' >"$RUNS"

# children_ms sets CHILD_MS to the CPU time (user+system, ms) of this shell's
# waited-for children, fio among them. Call it directly, never in $(...): a
# subshell's `times` would report the subshell's children.
children_ms() {
	times >"$WORK/times"
	CHILD_MS=$(awk 'NR == 2 {
		t = 0
		for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] }
		printf "%d\n", t * 1000
	}' "$WORK/times")
}

# run_one REP WORKLOAD SERVER INSTANCE runs one fio job and logs it in
# runs.tsv. A run that other processes disturbed (they used more than 15% of
# the CPUs meanwhile) is logged as such and run again, up to RETRIES times
# while RETRY_BUDGET lasts; the last attempt counts whatever happened.
run_one() {
	local rep=$1 wl=$2 srv=$3 inst=$4 attempt
	for attempt in $(seq 0 "$RETRIES"); do
		measure "$@" "$attempt" && return 0
		if ((attempt == RETRIES || RETRY_BUDGET <= 0)); then
			# measure logged the run as disturbed; count it after all.
			sed -i '$ s/\tdisturbed\t/\tok\t/' "$RUNS"
			return 0
		fi
		RETRY_BUDGET=$((RETRY_BUDGET - 1))
		log "$wl on $inst disturbed by other load; running it again"
	done
}

# measure REP WORKLOAD SERVER INSTANCE ATTEMPT runs fio once; it fails if
# other processes disturbed the run.
measure() {
	local rep=$1 wl=$2 srv=$3 inst=$4 attempt=$5 file status=ok c0 c1 b0 b1 f0 f1 fpid other
	file="$wl.$srv.$rep.$attempt.json"
	quiet_gate
	children_ms
	f0=$CHILD_MS
	# fio's ramp is not measured: sample the server's CPU time from its end.
	fio_run "$wl" "$(uri "$inst")" "$RUNTIME" "$RAMP" "$RAW/$file" >"$WORK/fio.log" 2>&1 &
	fpid=$!
	sleep "$RAMP"
	c0=$(cpu_ticks "${PID[$inst]}")
	b0=$(busy_ticks)
	wait "$fpid" || status=fail
	c1=$(cpu_ticks "${PID[$inst]}")
	b1=$(busy_ticks)
	children_ms
	f1=$CHILD_MS
	if ! kill -0 "${PID[$inst]}" 2>/dev/null; then
		status=fail
		log "$inst died; its log:"
		cat "$WORK/$inst.log" >&2
	fi
	if [[ $status != ok ]]; then
		log "fio failed: $wl on $inst:"
		cat "$WORK/fio.log" >&2
	fi
	# Share of the CPUs busy with neither fio (its measured part) nor the
	# server while fio measured.
	other=$(awk -v b=$((b1 - b0)) -v c=$((c1 - c0)) -v f=$((f1 - f0)) -v clk="$CLK_TCK" \
		-v n="$NCPU" -v rt="$RUNTIME" -v ramp="$RAMP" \
		'BEGIN { printf "%d\n", ((b - c) / clk - f / 1000 * rt / (rt + ramp)) * 100 / (n * rt) }')
	if [[ $status == ok ]] && ((other > 15)); then
		status=disturbed
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$wl" "$srv" "$inst" "$status" "$file" \
		$((c1 - c0)) $((b1 - b0)) $((f1 - f0)) "$CLK_TCK" "$WAITED" >>"$RUNS"
	[[ $status != disturbed ]]
}

read -r -a servers <<<"$SERVERS"
read -r -a workloads <<<"$WORKLOADS"
instances=()
for srv in "${servers[@]}"; do
	for wl in "${workloads[@]}"; do
		inst=$(instance "$wl" "$srv")
		if [[ -n $inst && " ${instances[*]} " != *" $inst "* ]]; then
			instances+=("$inst")
		fi
	done
done

{
	echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "revision=$REVISION"
	echo "dirty_files=$DIRTY"
	echo "runtime=$RUNTIME"
	echo "ramp=$RAMP"
	echo "reps=$REPS"
	echo "size_mib=$SIZE_MIB"
	echo "payload_budget=$PAYLOAD_BUDGET"
	echo "cpus=$(nproc)"
	echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "kernel=$(uname -r)"
	echo "fio=$(fio --version)"
	echo "nbdkit=$(nbdkit --version)"
	echo "qemu_nbd=$(qemu-nbd --version | head -1)"
	echo "go=$(go version | cut -d' ' -f3)"
	echo "servers=$SERVERS"
	echo "workloads=$WORKLOADS"
	echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RAW/meta.txt"

if ((QUIET_START > 0)); then
	for _ in $(seq $((QUIET_START / 5))); do
		load=$(other_load 5)
		((load < 10)) && break
		log "waiting for the machine to go quiet: other processes use ${load}% of the CPUs"
	done
	echo "other_load_at_start=${load:-0}%" >>"$RAW/meta.txt"
fi

log "starting ${#instances[@]} servers and filling each export (${SIZE_MIB} MiB)"
for inst in "${instances[@]}"; do
	start "$inst"
	prefill "$(uri "$inst")"
done

total=0
for wl in "${workloads[@]}"; do
	for srv in "${servers[@]}"; do
		if [[ -n $(instance "$wl" "$srv") ]]; then total=$((total + 1)); fi
	done
done
total=$((total * REPS))
log "measuring: $total fio runs of ${RAMP}+${RUNTIME}s (about $(((total * (RUNTIME + RAMP + 1) + 59) / 60)) minutes)"
n=0
for rep in $(seq "$REPS"); do
	for wl in "${workloads[@]}"; do
		# Rotate the starting server every repetition and workload.
		k=${#servers[@]}
		for i in $(seq 0 $((k - 1))); do
			srv=${servers[$(((i + rep + n) % k))]}
			inst=$(instance "$wl" "$srv")
			if [[ -z $inst ]]; then continue; fi
			run_one "$rep" "$wl" "$srv" "$inst"
		done
		n=$((n + 1))
		log "rep $rep/$REPS: $wl done"
	done
done
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW/meta.txt"
echo "quiet_budget_left=$QUIET_BUDGET" >>"$RAW/meta.txt"
echo "retry_budget_left=$RETRY_BUDGET" >>"$RAW/meta.txt"

for inst in "${instances[@]}"; do
	stop "$inst"
	rm -f "$WORK/$inst.img"
done

# ------------------------------------------------------- syscall census ---
# perf counts each server's syscalls (by kind), context switches and CPU
# time while fio runs the census workloads of workloads.tsv. Tracing costs
# a little, so these runs are separate from the table's.

events=
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
	events=raw_syscalls:sys_enter,context-switches,task-clock
	for sc in read readv recvfrom recvmsg write writev sendto sendmsg \
		pread64 pwrite64 preadv pwritev preadv2 pwritev2 lseek \
		futex epoll_pwait epoll_wait ppoll poll nanosleep sched_yield tgkill getpid; do
		if [[ -d /sys/kernel/tracing/events/syscalls/sys_enter_$sc ]]; then
			events+=,syscalls:sys_enter_$sc
		fi
	done
fi
read -r -a census <<<"$(workload_names phases census)"
if [[ $DO_CENSUS == 1 && -n $events ]]; then
	log "syscall census: ${#servers[@]} servers x ${#census[@]} workloads"
	printf 'workload\tserver\tfile\tperf\n' >"$RAW/census.tsv"
	for srv in "${servers[@]}"; do
		for wl in "${census[@]}"; do
			# perf stat runs the server from start to exit: counters of
			# threads created after perf attaches to a running process
			# would only be added when those threads exit, so attaching
			# with -p misses threads that live on. The prefill's thousand
			# 1 MiB writes add under 1% to the syscalls; with no ramp,
			# fio's request count is every other request the server saw.
			WRAP=(perf stat -x, -e "$events" -o "$RAW/census.$wl.$srv.csv" --)
			start "$srv"
			WRAP=()
			prefill "$(uri "$srv")"
			fio_run "$wl" "$(uri "$srv")" "$RUNTIME" 0 "$RAW/census.$wl.$srv.json" >/dev/null 2>&1 \
				|| log "census: fio failed on $srv"
			stop_wrapped "$srv"
			rm -f "$WORK/$srv.img"
			printf '%s\t%s\t%s\t%s\n' "$wl" "$srv" "census.$wl.$srv.json" "census.$wl.$srv.csv" >>"$RAW/census.tsv"
		done
	done
fi

# --------------------------------------------------------------- memory ---
# Peak RSS of stackd (default stack, payload budget $PAYLOAD_BUDGET) while
# 64 connections each keep 128 x 1 MiB writes in flight. The export is
# filled first, so the RSS before the storm already holds the data; the
# difference is what the storm adds.

if [[ $DO_MEMORY == 1 ]]; then
	log "memory: 64 connections x 128 x 1 MiB writes for ${MEM_RUNTIME}s against stackd-default"
	start stackd-default
	prefill "$(uri stackd-default)"
	pid=${PID[stackd-default]}
	rss_before=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
	hwm_before=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
	(
		while kill -0 "$pid" 2>/dev/null; do
			printf '%s %s\n' "$(date +%s.%N)" "$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
			sleep 0.1
		done
	) >"$RAW/memory-rss.txt" &
	sampler=$!
	fio --name=storm --ioengine=nbd --uri="$(uri stackd-default)" --rw=randwrite --bs=1M \
		--iodepth=128 --numjobs=64 --time_based --runtime="$MEM_RUNTIME" \
		--norandommap --randrepeat=0 --group_reporting \
		--output-format=json --output="$RAW/memory-fio.json" >"$WORK/fio.log" 2>&1 \
		|| { log "memory: fio failed"; cat "$WORK/fio.log" >&2; }
	hwm_after=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
	rss_after=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
	kill "$sampler" 2>/dev/null || true
	wait "$sampler" 2>/dev/null || true
	stop stackd-default
	{
		echo "payload_budget=$PAYLOAD_BUDGET"
		echo "connections=64"
		echo "iodepth=128"
		echo "bs=1MiB"
		echo "runtime=$MEM_RUNTIME"
		echo "rss_before_kib=$rss_before"
		echo "hwm_before_kib=$hwm_before"
		echo "hwm_after_kib=$hwm_after"
		echo "rss_after_kib=$rss_after"
	} >"$RAW/memory.txt"
fi

# -------------------------------------------------------------- profile ---
# bench/profile serves the embedded default configuration in process and
# writes CPU, allocation, mutex and block profiles of the fio run alone.

if [[ $DO_PROFILE == 1 ]]; then
	PROF=$OUT/profile
	mkdir -p "$PROF"
	for wl in $(workload_names phases profile); do
		log "profile: stackd default stack, $wl, ${PROFILE_RUNTIME}s"
		dir=$WORK/prof-$wl
		mkdir -p "$dir"
		s=$(sock profile)
		"$BIN/profile" -socket "$s" -out "$dir" >"$WORK/profile.log" 2>&1 &
		PID[profile]=$!
		wait_ready profile
		prefill "$(uri profile)"
		kill -USR1 "${PID[profile]}"
		sleep 0.2
		fio_run "$wl" "$(uri profile)" "$PROFILE_RUNTIME" 0 "$dir/fio.json" >/dev/null 2>&1 &
		fpid=$!
		if [[ -n $events ]]; then
			perf stat -x, -e "$events" -p "${PID[profile]}" -o "$dir/perf.csv" -- sleep "$PROFILE_RUNTIME" 2>/dev/null || true
		fi
		wait "$fpid" || log "profile: fio failed"
		kill -USR2 "${PID[profile]}"
		for _ in $(seq 100); do [[ -s $dir/window.json ]] && break; sleep 0.1; done
		stop profile
		cp "$dir/fio.json" "$PROF/$wl.fio.json"
		cp "$dir/window.json" "$PROF/$wl.window.json"
		if [[ -f $dir/perf.csv ]]; then cp "$dir/perf.csv" "$PROF/$wl.perf.csv"; fi
		cp "$dir/cpu.pprof" "$PROF/$wl.cpu.pprof"
		(
			cd "$dir"
			echo "## CPU (flat)"
			go tool pprof -top -nodecount=45 "$BIN/profile" cpu.pprof 2>/dev/null
			echo
			echo "## CPU (cumulative)"
			go tool pprof -top -cum -nodecount=45 "$BIN/profile" cpu.pprof 2>/dev/null
			echo
			echo "## Allocations in the window (objects)"
			go tool pprof -top -sample_index=alloc_objects -nodecount=25 -base allocs-start.pprof "$BIN/profile" allocs-end.pprof 2>/dev/null
			echo
			echo "## Allocations in the window (bytes)"
			go tool pprof -top -sample_index=alloc_space -nodecount=15 -base allocs-start.pprof "$BIN/profile" allocs-end.pprof 2>/dev/null
			echo
			echo "## Mutex contention (delay)"
			go tool pprof -top -nodecount=20 "$BIN/profile" mutex.pprof 2>/dev/null
			echo
			echo "## Blocking (delay)"
			go tool pprof -top -nodecount=20 "$BIN/profile" block.pprof 2>/dev/null
		) >"$PROF/$wl.top.txt"
	done
fi

# --------------------------------------------------------------- report ---

log "writing $OUT/results.md"
"$BIN/report" -workloads "$WORKLOADS_FILE" -raw "$RAW" -out "$OUT"
log "done"
