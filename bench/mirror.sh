#!/usr/bin/env bash
# bench/mirror.sh: what a mirror costs. Side by side in one run, stackd
# serving a mirror of two RAM legs and stackd serving one RAM leg, each
# workload's repetitions interleaved so that the machine's other load falls
# on both alike; the medians and their ratio. Then the resync rate: a
# mirror's second leg is failed and restored through the control socket,
# and the time its resync takes is set against the configured rate.
#
#   bench/mirror.sh                  3 repetitions of 5 s, 1 GiB legs
#   MIRROR_REPS=5 MIRROR_RUNTIME=10 bench/mirror.sh
#
# Needs fio with the nbd engine, nbdinfo and a Go toolchain; writes its
# table to stdout and its scratch files under a temporary directory.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

run_knobs MIRROR
LEG_MIB=${MIRROR_LEG_MIB:-1024}
# The resync test copies RESYNC_MIB at RESYNC_RATE: about 4 s at the
# defaults, long enough that the start and the end are a small part of it.
RESYNC_MIB=${MIRROR_RESYNC_MIB:-256}
RESYNC_RATE_MIB=${MIRROR_RESYNC_RATE_MIB:-64}
WORKLOADS=(rw4k-qd32 rr4k-qd32)

need_tools fio nbdinfo go
bench_work /tmp/stackd-mirror-bench.XXXXXX
build_stackd

# serve NAME STACK-YAML [EXTRA-CONFIG] starts stackd as server NAME.
serve() {
	serve_stackd "$1" "$(stackd_config "$(sock "$1")" "$2"; printf '%s' "${3:-}")"
	wait_ready "$1"
}

single="      memory: {size: ${LEG_MIB}MiB}"
mirror="      mirror:
        legs:
          - memory: {size: ${LEG_MIB}MiB}
          - memory: {size: ${LEG_MIB}MiB}"
serve single "$single"
serve mirror "$mirror"
for name in single mirror; do
	log "prefilling $name"
	prefill "$(uri "$name")"
done

# iops JSON prints the IOPS of fio's JSON report.
iops() {
	python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))' "$1"
}

printf '| workload | one RAM leg (IOPS) | mirror of two (IOPS) | mirror / one leg |\n|---|---:|---:|---:|\n'
for wl in "${WORKLOADS[@]}"; do
	declare -a one=() two=()
	for rep in $(seq "$REPS"); do
		for name in single mirror; do
			fio_run "$wl" "$(uri "$name")" "$RUNTIME" "$RAMP" "$WORK/$wl-$name-$rep.json"
		done
		one+=("$(iops "$WORK/$wl-single-$rep.json")")
		two+=("$(iops "$WORK/$wl-mirror-$rep.json")")
	done
	m1=$(printf '%s\n' "${one[@]}" | median) m2=$(printf '%s\n' "${two[@]}" | median)
	printf '| %s | %s | %s | %.2fx |\n' "$(workload_field "$wl" label)" "$m1" "$m2" "$(echo "$m2 / $m1" | bc -l)"
	unset one two
done
stop_all
PID=()

# The resync: write RESYNC_MIB, fail leg 1, write it again so that every
# region is dirty for leg 1, restore it, and time the resync to the end.
resync="      mirror:
        resync_rate: ${RESYNC_RATE_MIB}MiB/s
        legs:
          - memory: {size: ${RESYNC_MIB}MiB}
          - memory: {size: ${RESYNC_MIB}MiB}"
serve resync "$resync" "control: $WORK/control.sock
"
ctl() { "$WORK/stackd" "$@" -control "$WORK/control.sock"; }
prefill "$(uri resync)"
ctl leg fail default/mirror/leg1 >/dev/null
prefill "$(uri resync)"
start=$(date +%s.%N)
ctl leg restore default/mirror/leg1 >/dev/null
for _ in $(seq 6000); do # 10 minutes at most
	ctl status -json | grep -q '"resyncing"' || break
	sleep 0.1
done
end=$(date +%s.%N)
secs=$(echo "$end - $start" | bc -l)
rate=$(echo "$RESYNC_MIB / $secs" | bc -l)
printf '\n| resync of %d MiB | configured | measured | measured / configured |\n|---|---:|---:|---:|\n' "$RESYNC_MIB"
printf '| %.1f s | %d MiB/s | %.1f MiB/s | %.2f |\n' "$secs" "$RESYNC_RATE_MIB" "$rate" "$(echo "$rate / $RESYNC_RATE_MIB" | bc -l)"
