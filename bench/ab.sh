#!/usr/bin/env bash
# ab.sh compares two builds of stackd side by side: a base revision and the
# working tree, both serving the default stack (split 1 MiB -> stripe 64 KiB
# x 4 -> memory) over a unix socket. It is the quick check for a change to
# the request path; bench/run.sh is the full comparison with other servers.
#
#   bench/ab.sh                 # base: HEAD
#   AB_BASE=HEAD~3 bench/ab.sh  # base: any revision git understands
#
# For each repetition and workload it runs fio once against each build,
# alternating which goes first, so that drift on a noisy machine touches both
# alike. It prints, per workload, the median IOPS (or MB/s) and the median
# server CPU time per request of each build, and the ratio new/base of each
# median. Server CPU per request is the steadier of the two on a shared
# machine: it does not depend on how much CPU fio got.
#
# Knobs (environment):
#   AB_BASE=HEAD       revision to compare against
#   AB_NEW             revision to measure instead of the working tree
#   AB_RUNTIME=4       seconds measured per fio run (after a 1 s ramp)
#   AB_REPS=5          repetitions per (workload, build)
#   AB_WORKLOADS       subset of the workloads in bench/workloads.tsv
#                      (default: those that run against every server; the
#                      delayed ones need delayed twins, which ab.sh does
#                      not start)
#   AB_STACK=default   what both builds serve: default (split 1 MiB ->
#                      stripe 64 KiB x 4 -> memory) or null (one null
#                      target: the protocol engine alone)
#   AB_BASE_ENV, AB_NEW_ENV
#                      environment for each build's process, e.g.
#                      AB_BASE=HEAD AB_NEW_ENV=GOMAXPROCS=1 compares a
#                      runtime setting on the same code
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
BASE=${AB_BASE:-HEAD}
NEW=${AB_NEW:-}
RUNTIME=${AB_RUNTIME:-4}
REPS=${AB_REPS:-5}
WORKLOADS=${AB_WORKLOADS:-$(workload_names servers all)}
SIZE_MIB=1024
STACK=${AB_STACK:-default}
case $STACK in
default) STACK_YAML=$(default_stack "$SIZE_MIB") ;;
null) STACK_YAML="      null: {size: ${SIZE_MIB}MiB}" ;;
*) echo "ab.sh: AB_STACK is default or null, not $STACK" >&2; exit 2 ;;
esac

need_tools go fio nbdinfo jq git
# shellcheck disable=SC2086 # a list of words
check_workloads $WORKLOADS

WORK=$(mktemp -d /dev/shm/stackd-ab.XXXXXX)
declare -A PID=()
cleanup() {
	stop_all
	git -C "$ROOT" worktree remove --force "$WORK/base-src" 2>/dev/null || true
	git -C "$ROOT" worktree remove --force "$WORK/new-src" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building base ($BASE) and new (${NEW:-working tree})"
git -C "$ROOT" worktree add --detach "$WORK/base-src" "$BASE" >/dev/null 2>&1
(cd "$WORK/base-src" && go build -o "$WORK/stackd-base" ./cmd/stackd)
NEW_SRC=$ROOT
if [[ -n $NEW ]]; then
	git -C "$ROOT" worktree add --detach "$WORK/new-src" "$NEW" >/dev/null 2>&1
	NEW_SRC=$WORK/new-src
fi
(cd "$NEW_SRC" && go build -o "$WORK/stackd-new" ./cmd/stackd)

start() {
	local b=$1 envvar=AB_${1^^}_ENV
	stackd_config "$(sock "$b")" "$STACK_YAML" >"$WORK/$b.yaml"
	# shellcheck disable=SC2086 # VAR=VALUE words for env
	env ${!envvar:-} "$WORK/stackd-$b" serve -config "$WORK/$b.yaml" -log-level warn >"$WORK/$b.log" 2>&1 &
	PID[$b]=$!
	wait_ready "$b"
	prefill "$(uri "$b")"
}

CLK_TCK=$(getconf CLK_TCK)
RESULTS=$WORK/results.tsv
: >"$RESULTS"

# measure WORKLOAD BUILD appends "workload build rate cpu_us_per_request".
measure() {
	local wl=$1 b=$2 c0 c1 fpid
	fio_run "$wl" "$(uri "$b")" "$RUNTIME" 1 "$WORK/out.json" >/dev/null &
	fpid=$!
	sleep 1
	c0=$(cpu_ticks "${PID[$b]}")
	wait "$fpid"
	c1=$(cpu_ticks "${PID[$b]}")
	jq -r --arg wl "$wl" --arg b "$b" --arg unit "$(workload_field "$wl" unit)" \
		--argjson cpu $((c1 - c0)) --argjson clk "$CLK_TCK" '
		.jobs[0] as $j
		| ($j.read.total_ios + $j.write.total_ios) as $n
		| (if $unit == "mbps" then ($j.read.bw_bytes + $j.write.bw_bytes) / 1e6
		   else $j.read.iops + $j.write.iops end) as $rate
		| "\($wl)\t\($b)\t\($rate)\t\(if $n > 0 then $cpu / $clk * 1e6 / $n else 0 end)"' \
		"$WORK/out.json" | tee -a "$RESULTS" | awk -F'\t' '{ printf "  %s %-4s %10.0f %8.1fus/req\n", $1, $2, $3, $4 }' >&2
}

start base
start new
order=(base new)
for rep in $(seq "$REPS"); do
	for wl in $WORKLOADS; do
		for b in "${order[@]}"; do
			measure "$wl" "$b"
		done
		order=("${order[1]}" "${order[0]}")
	done
	log "repetition $rep of $REPS done"
done

printf '\nbase %s vs %s, %s stack; median of %s runs of %s s\n\n' "$BASE" "${NEW:-working tree}" "$STACK" "$REPS" "$RUNTIME"
printf '%-16s %12s %12s %7s %12s %12s %7s\n' workload base new ratio "cpu/req base" "cpu/req new" ratio
for wl in $WORKLOADS; do
	awk -F'\t' -v wl="$wl" '
		function median(a, n,    i, j, t) {
			for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
			return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		$1 == wl && $2 == "base" { rb[++nb] = $3; cb[nb] = $4 }
		$1 == wl && $2 == "new" { rn[++nn] = $3; cn[nn] = $4 }
		END {
			b = median(rb, nb); n = median(rn, nn); x = median(cb, nb); y = median(cn, nn)
			printf "%-16s %12.0f %12.0f %6.2fx %10.1fus %10.1fus %6.2fx\n", wl, b, n, n / b, x, y, y / x
		}' "$RESULTS"
done
