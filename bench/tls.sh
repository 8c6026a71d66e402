#!/usr/bin/env bash
# bench/tls.sh — stackd over TLS against nbdkit over TLS, and stackd's TLS
# against its own plaintext, under fio, over TCP loopback.
#
#   bench/tls.sh                        # ~3 minutes
#   BENCH_RUNTIME=2 bench/tls.sh        # short run
#
# It makes a CA and a server certificate for 127.0.0.1 with openssl, in
# the layout nbdkit's --tls-certificates reads, and serves:
#   stackd-tls     the default stack, tls mode optional, on 127.0.0.1;
#                  fio connects with nbds:// (TLS), or nbd:// for the
#                  plaintext row
#   nbdkit-tls     nbdkit --tls=require --tls-certificates=DIR memory
# fio's nbd engine takes the CA from libnbd's default directory
# ($HOME/.pki/libnbd: its URI may not name local files), so HOME is a
# scratch directory here. No client certificates: the cost measured is
# the encryption. The workloads are bench/workloads.tsv's rr4k-qd32,
# rw4k-qd32, sr1m-qd8 and sw1m-qd8, each run BENCH_REPS times per server,
# alternating, the median reported. The goals (issue 15): stackd at
# least 1.0x nbdkit on every row, and TLS costing stackd at most 35% of
# its plaintext throughput on 1 MiB reads.
#
# Environment: BENCH_RUNTIME (5), BENCH_RAMP (1), BENCH_REPS (3),
# BENCH_SIZE_MIB (1024). Needs: go, fio (nbd engine), nbdkit, nbdinfo,
# openssl, jq.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_tools go fio nbdkit nbdinfo openssl jq

run_knobs BENCH
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
WORKLOADS=${TLS_WORKLOADS:-"rr4k-qd32 rw4k-qd32 sr1m-qd8 sw1m-qd8"}
check_workloads $WORKLOADS

bench_work /tmp/stackd-tls-bench.XXXXXX

# Certificates: a CA, and the server's for 127.0.0.1 and localhost.
TLS=$WORK/tls
mkdir -p "$TLS" "$WORK/home/.pki/libnbd"
(
	cd "$TLS"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj /CN=bench-ca -keyout ca-key.pem -out ca-cert.pem 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
		-keyout server-key.pem -out server.csr 2>/dev/null
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
	openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -days 2 \
		-extfile server.ext -out server-cert.pem 2>/dev/null
	chmod 600 ./*-key.pem
)
cp "$TLS/ca-cert.pem" "$WORK/home/.pki/libnbd/"
export HOME=$WORK/home

build_stackd

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STACKD_PORT=$(port)
NBDKIT_PORT=$(port)

serve_stackd stackd "$(
	printf 'listen:\n  - tcp: 127.0.0.1:%s\nmetrics: {address: off}\n' "$STACKD_PORT"
	printf 'tls: {cert: %s, key: %s, mode: optional}\n' "$TLS/server-cert.pem" "$TLS/server-key.pem"
	printf 'exports:\n  - name: default\n    stack:\n'
	default_stack "$SIZE_MIB"
)" -log-level warn
nbdkit -f -i 127.0.0.1 -p "$NBDKIT_PORT" --tls=require --tls-certificates="$TLS" memory "${SIZE_MIB}M" \
	>"$WORK/nbdkit.log" 2>&1 &
PID[nbdkit]=$!

declare -A URI=(
	[stackd-tls]="nbds://127.0.0.1:$STACKD_PORT/default"
	[stackd-plain]="nbd://127.0.0.1:$STACKD_PORT/default"
	[nbdkit-tls]="nbds://127.0.0.1:$NBDKIT_PORT/"
)
for name in stackd-tls nbdkit-tls; do
	for _ in $(seq 100); do
		nbdinfo --size "${URI[$name]}" >/dev/null 2>&1 && break
		sleep 0.1
	done
	nbdinfo --size "${URI[$name]}" >/dev/null || { echo "$name does not answer"; cat "$WORK"/*.log; exit 1; }
	log "prefilling $name"
	prefill "${URI[$name]}"
done

# result WORKLOAD JSON prints the run's IOPS or MB/s, as workloads.tsv's
# unit says.
result() {
	local unit
	unit=$(workload_field "$1" unit)
	if [[ $unit == iops ]]; then
		jq '[.jobs[0].read.iops, .jobs[0].write.iops] | add | floor' "$2"
	else
		jq '[.jobs[0].read.bw_bytes, .jobs[0].write.bw_bytes] | add / 1e6 | floor' "$2"
	fi
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A RES
runs() { # WORKLOAD SERVER...
	local wl=$1 rep name
	shift
	for rep in $(seq "$REPS"); do
		for name in "$@"; do
			log "$wl $name rep $rep"
			fio_run "$wl" "${URI[$name]}" "$RUNTIME" "$RAMP" "$WORK/out.json" >/dev/null
			RES[$wl,$name]+="$(result "$wl" "$WORK/out.json") "
		done
	done
}
for wl in $WORKLOADS; do
	if [[ $wl == sr1m-qd8 ]]; then
		runs "$wl" stackd-tls nbdkit-tls stackd-plain
	else
		runs "$wl" stackd-tls nbdkit-tls
	fi
done

printf '\n| workload | unit | stackd TLS | nbdkit TLS | stackd / nbdkit | stackd plaintext | TLS / plaintext |\n'
printf '| --- | --- | ---: | ---: | ---: | ---: | ---: |\n'
for wl in $WORKLOADS; do
	s=$(tr ' ' '\n' <<<"${RES[$wl,stackd-tls]}" | grep . | median)
	k=$(tr ' ' '\n' <<<"${RES[$wl,nbdkit-tls]}" | grep . | median)
	p=- r=-
	if [[ -n ${RES[$wl,stackd-plain]:-} ]]; then
		p=$(tr ' ' '\n' <<<"${RES[$wl,stackd-plain]}" | grep . | median)
		r=$(awk -v a="$s" -v b="$p" 'BEGIN { printf "%.2f", a / b }')
	fi
	printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$(workload_field "$wl" label)" "$(workload_field "$wl" unit)" \
		"$s" "$k" "$(awk -v a="$s" -v b="$k" 'BEGIN { printf "%.2fx", a / b }')" "$p" "$r"
done
