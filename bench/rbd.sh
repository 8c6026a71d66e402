#!/usr/bin/env bash
# The rbd bench: one image of a one-node memstore Ceph cluster that the run
# starts itself (internal/stackdtest/ceph.go), served side by side by
# stackd's rbd target and by qemu-nbd's rbd driver (qemu-block-extra), each
# driven by fio's nbd engine over a unix socket: 4 KiB randread and
# randwrite at qd32, 4 KiB randread at qd1, 1 MiB sequential write at qd8.
#
#   bench/rbd.sh [SECONDS [WORKERS...]]
#
# SECONDS each workload runs (default 10); WORKERS, stackd columns at
# those rbd worker counts (default: one column at the default, 32). The
# table is in the test's log (tests/rbd/bench_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true
STACKD_RBD_BENCH=$secs STACKD_RBD_BENCH_WORKERS="$*" \
	exec go test -tags rbd,pacific -count=1 -run '^TestRBDBench$' -v -timeout 30m ./tests/rbd
