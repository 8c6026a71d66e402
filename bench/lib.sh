# Shell functions the bench scripts share: the fio workloads of
# bench/workloads.tsv, the default stack's configuration, a scratch
# directory, building and starting stackd, starting and stopping servers,
# a median, and how to read a server's CPU time. Sourced, not run.
#
# The functions that name a server use the caller's WORK (its scratch
# directory: NAME's socket is WORK/NAME.sock, its log WORK/NAME.log) and
# PID (an associative array: NAME's process id).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORKLOADS_FILE=$BENCH_DIR/workloads.tsv
BENCH_SCRIPT=${0##*/}

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# run_knobs PREFIX sets RUNTIME, RAMP and REPS (the seconds each fio run
# measures, the seconds of ramp before it, and the runs per cell) from
# PREFIX_RUNTIME, PREFIX_RAMP and PREFIX_REPS, defaulting to 5, 1 and 3:
# every bench script measures alike unless told otherwise.
run_knobs() {
	local v
	v=$1_RUNTIME RUNTIME=${!v:-5}
	v=$1_RAMP RAMP=${!v:-1}
	v=$1_REPS REPS=${!v:-3}
}

# need_tools TOOL... exits if a tool is not on PATH.
need_tools() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || { echo "$BENCH_SCRIPT: $tool not found" >&2; exit 2; }
	done
}

# workloads_awk PROGRAM [AWK-OPTION...] runs the awk PROGRAM over the
# workloads of workloads.tsv, one a record, with idx[COLUMN] set to the
# number of COLUMN's field.
workloads_awk() {
	local program=$1
	shift
	awk -F'\t' "$@" '
		/^#/ || NF == 0 { next }
		!head { for (i = 1; i <= NF; i++) idx[$i] = i; head = 1; next }
		'"$program" "$WORKLOADS_FILE"
}

# workload_names [COLUMN WORD] prints the names of the workloads in
# workloads.tsv, in its order, on one line; with COLUMN and WORD, only those
# whose COLUMN holds WORD.
workload_names() {
	workloads_awk '
		col == "" || index(" " $idx[col] " ", " " word " ") { printf "%s%s", sep, $1; sep = " " }
		END { print "" }' -v col="${1:-}" -v word="${2:-}"
}

# workload_field NAME COLUMN prints one field of a workload in workloads.tsv
# ("" for "-"); it fails for a workload or column the file lacks.
workload_field() {
	workloads_awk '
		$1 == name && col in idx { v = $idx[col]; print (v == "-" ? "" : v); found = 1; exit }
		END { if (!found) exit 1 }' -v name="$1" -v col="$2" && return 0
	echo "$BENCH_SCRIPT: no workload $1 with a column $2 in $WORKLOADS_FILE" >&2
	return 1
}

# check_workloads NAME... exits unless every NAME is in workloads.tsv, so
# that a misspelt BENCH_WORKLOADS fails before anything is measured.
check_workloads() {
	local wl
	for wl in "$@"; do
		workload_field "$wl" name >/dev/null || exit 2
	done
}

# fio_run WORKLOAD URI RUNTIME RAMP JSON runs WORKLOAD's fio job against
# URI for RAMP (not measured) plus RUNTIME seconds and writes fio's JSON
# report to JSON.
fio_run() {
	local opts
	opts=$(workload_field "$1" fio) || return 2
	# shellcheck disable=SC2086 # the options are words
	fio --name="$1" --ioengine=nbd --uri="$2" $opts \
		--time_based --runtime="$3" --ramp_time="$4" \
		--norandommap --randrepeat=0 --group_reporting \
		--output-format=json --output="$5"
}

# prefill URI writes the whole export once, so that reads hit data and no
# server is measured reading holes.
prefill() {
	fio --name=prefill --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 >/dev/null
}

# stackd_config SOCKET STACK-YAML prints a stackd configuration that serves
# STACK-YAML (the value of `stack:`, indented by 6) as export "default" on a
# unix socket, without metrics. It holds only keys that every revision of
# stackd knows, because ab.sh serves it from old builds too.
stackd_config() {
	printf 'listen:\n  - unix: %s\nmetrics: {address: off}\nexports:\n  - name: default\n    stack:\n%s\n' "$1" "$2"
}

# default_stack SIZE-MIB [LEG-LATENCY] prints the default stack, for
# stackd_config: split 1 MiB -> stripe 64 KiB x 4 -> memory, SIZE-MIB in
# all. With a latency (such as 1ms), each memory leg sits under a
# delay layer that holds reads and writes that long, as nbdkit's delay
# filter does with delay-read and delay-write.
default_stack() {
	local leg=$(($1 / 4)) i
	printf '      split:\n        max_bytes: 1MiB\n        leg:\n          stripe:\n            chunk: 64KiB\n            legs:\n'
	for i in 1 2 3 4; do
		if [[ -n ${2:-} ]]; then
			printf '              - delay: {read: %s, write: %s, leg: {memory: {size: %dMiB}}}\n' "$2" "$2" "$leg"
		else
			printf '              - memory: {size: %dMiB}\n' "$leg"
		fi
	done
}

# bench_work TEMPLATE makes WORK, a fresh directory from the mktemp
# template, and PID, empty; on exit every server in PID is stopped and
# WORK removed.
bench_work() {
	WORK=$(mktemp -d "$1")
	declare -gA PID=()
	trap 'stop_all; rm -rf "$WORK"' EXIT
}

# build_stackd builds this tree's stackd as WORK/stackd.
build_stackd() {
	log "building stackd"
	(cd "$BENCH_DIR/.." && go build -o "$WORK/stackd" ./cmd/stackd)
}

# serve_stackd NAME CONFIG [ARG...] starts WORK/stackd as server NAME on
# the configuration CONFIG (YAML), with ARGs after it and its log in
# WORK/NAME.log; the caller waits for it (wait_ready, for a unix socket).
serve_stackd() {
	local name=$1
	printf '%s\n' "$2" >"$WORK/$name.yaml"
	shift 2
	"$WORK/stackd" serve -config "$WORK/$name.yaml" "$@" >"$WORK/$name.log" 2>&1 &
	PID[$name]=$!
}

# median reads numbers, one a line, and prints their median: the middle
# one, or the mean of the middle two.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

sock() { echo "$WORK/$1.sock"; }
uri() { echo "nbd+unix:///default?socket=$(sock "$1")"; }

# wait_ready NAME waits until server NAME answers on its socket; it exits,
# with the server's log, if the server dies or does not answer in 20 s.
wait_ready() {
	local name=$1
	for _ in $(seq 200); do
		if ! kill -0 "${PID[$name]}" 2>/dev/null; then
			echo "$BENCH_SCRIPT: $name exited during start:" >&2
			cat "$WORK/$name.log" >&2
			exit 1
		fi
		nbdinfo --size "$(uri "$name")" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "$BENCH_SCRIPT: $name does not answer on $(sock "$name")" >&2
	exit 1
}

# stop_pid PID ends a process: SIGTERM, then SIGKILL if it is still there
# after 5 s.
stop_pid() {
	local pid=$1
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# stop_all stops every server in PID.
stop_all() {
	local name
	for name in "${!PID[@]}"; do
		stop_pid "${PID[$name]}"
	done
}

# cpu_ticks PID prints the process's user+system CPU time in clock ticks.
cpu_ticks() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	stat=${stat##*) }
	set -- $stat
	echo $((${12} + ${13}))
}
