#!/usr/bin/env bash
# bench/remote.sh — the cost of an nbd leg, side by side in one run.
#
#   bench/remote.sh                         # ~3.5 minutes
#   REMOTE_RUNTIME=2 REMOTE_REPS=1 bench/remote.sh
#
# Three stackd processes on this machine: a remote serving memory
# exports (listening on a unix socket and on loopback TCP): "default", and
# "a" and "b" of half its size each; a front whose export is an nbd leg
# to "default" over loopback TCP; and a striped front, whose export is a
# stripe (64 KiB chunks) over two nbd legs, to "a" and "b". The same fio
# client (--ioengine=nbd, on a unix socket) runs each workload against the
# front, the striped front and straight against the remote (the
# baseline), rotating which goes first, REMOTE_REPS times; the table is
# the medians, the front's ratio to the remote and the stripe's to the
# one leg. The workloads are those of bench/workloads.tsv named in
# REMOTE_WORKLOADS.
#
# Environment (all optional):
#   REMOTE_RUNTIME=5     seconds measured per fio run (after the ramp)
#   REMOTE_RAMP=1        seconds of ramp-up, not measured
#   REMOTE_REPS=3        repetitions per (workload, side)
#   REMOTE_SIZE_MIB=512  the export's size
#   REMOTE_PORT=10919    the remote's loopback TCP port
#   REMOTE_CONNECTIONS=1 the leg's connections (stackd advertises
#                        CAN_MULTI_CONN, so more are used)
#   REMOTE_WORKLOADS="rr4k-qd32 rw4k-qd32 sr1m-qd8 sw1m-qd8"
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_knobs REMOTE
SIZE=${REMOTE_SIZE_MIB:-512}
PORT=${REMOTE_PORT:-10919}
CONNS=${REMOTE_CONNECTIONS:-1}
read -r -a WORKLOADS <<<"${REMOTE_WORKLOADS:-rr4k-qd32 rw4k-qd32 sr1m-qd8 sw1m-qd8}"
need_tools go fio nbdinfo jq
check_workloads "${WORKLOADS[@]}"

bench_work /tmp/stackd-remote-bench.XXXXXX
build_stackd

HALF=$((SIZE / 2))
serve_stackd remote "$(printf 'listen:\n  - unix: %s\n  - tcp: 127.0.0.1:%s\nmetrics: {address: off}\nexports:\n  - name: default\n    stack: {memory: {size: %dMiB}}\n  - name: a\n    stack: {memory: {size: %dMiB}}\n  - name: b\n    stack: {memory: {size: %dMiB}}\n' \
	"$(sock remote)" "$PORT" "$SIZE" "$HALF" "$HALF")"
wait_ready remote

# leg EXPORT MIB prints an nbd leg to the remote's EXPORT.
leg() { printf '{nbd: {uri: "nbd://127.0.0.1:%s/%s", connections: %d, size: %dMiB}}' "$PORT" "$1" "$CONNS" "$2"; }
serve_stackd front "$(stackd_config "$(sock front)" "      $(leg default "$SIZE")")"
wait_ready front
serve_stackd stripe "$(stackd_config "$(sock stripe)" "      {stripe: {chunk: 64KiB, legs: [$(leg a "$HALF"), $(leg b "$HALF")]}}")"
wait_ready stripe

log "prefilling through the fronts"
prefill "$(uri front)"
prefill "$(uri stripe)"

# result JSON UNIT prints the job's iops or MB/s (10^6 bytes a second).
result() {
	jq -r --arg unit "$2" '.jobs[0] | (.read.iops + .write.iops) as $iops
		| (.read.bw_bytes + .write.bw_bytes) as $bw
		| if $unit == "iops" then $iops else $bw / 1e6 end' "$1"
}

printf '| workload | unit | front (nbd leg) | straight to the remote | ratio | stripe over two legs | stripe / one leg |\n|---|---|---|---|---|---|---|\n' >"$WORK/table.md"
orders=("front remote stripe" "remote stripe front" "stripe front remote")
for wl in "${WORKLOADS[@]}"; do
	unit=$(workload_field "$wl" unit)
	: >"$WORK/$wl.front" >"$WORK/$wl.remote" >"$WORK/$wl.stripe"
	for rep in $(seq "$REPS"); do
		for side in ${orders[$((rep % 3))]}; do
			fio_run "$wl" "$(uri "$side")" "$RUNTIME" "$RAMP" "$WORK/$wl.$side.$rep.json" >/dev/null
			result "$WORK/$wl.$side.$rep.json" "$unit" >>"$WORK/$wl.$side"
			log "$wl $side rep $rep: $(tail -1 "$WORK/$wl.$side") $unit"
		done
	done
	f=$(median <"$WORK/$wl.front")
	r=$(median <"$WORK/$wl.remote")
	st=$(median <"$WORK/$wl.stripe")
	printf '| %s | %s | %.0f | %.0f | %.2f× | %.0f | %.2f× |\n' "$(workload_field "$wl" label)" "$unit" "$f" "$r" \
		"$(awk -v f="$f" -v r="$r" 'BEGIN { print (r > 0) ? f / r : 0 }')" "$st" \
		"$(awk -v s="$st" -v f="$f" 'BEGIN { print (f > 0) ? s / f : 0 }')" >>"$WORK/table.md"
done
cat "$WORK/table.md"
