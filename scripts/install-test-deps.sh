#!/usr/bin/env bash
# Installs the Debian packages the test suite drives as real NBD peers, when
# they are missing. Runs as root (or with sudo) on Debian/Ubuntu; elsewhere it
# only reports what is missing, and the tests that need a peer then fail
# under CI=true and skip otherwise.
set -euo pipefail

# package:command-it-provides
wanted=(
	libnbd-bin:nbdinfo
	python3-libnbd:nbdsh
	qemu-utils:qemu-io
	fio:fio
	nbdkit:nbdkit
	# promtool checks deploy/prometheus (metrics/deploy_test.go).
	prometheus:promtool
	# strace watches the file target fsync a new image and its directory
	# (targets/file_test.go).
	strace:strace
	# Hosts in network namespaces (tests/peers/hosts_test.go), an
	# immutable image (chattr, cmd/stackd/readonly_test.go) and a small
	# tmpfs under a mirror leg (mount): on most Debian systems already, but
	# not on every minimal one.
	iproute2:ip
	e2fsprogs:chattr
	mount:mount
	# A one-node Ceph cluster for the rbd target's tests
	# (internal/stackdtest/ceph.go), librbd's headers for its cgo build,
	# and qemu's rbd driver for the bench's qemu-nbd over rbd:.
	ceph-mon:ceph-mon
	ceph-osd:ceph-osd
	ceph-mgr:ceph-mgr
	ceph-common:rbd
	librbd-dev:/usr/include/rbd/librbd.h
	librados-dev:/usr/include/rados/librados.h
	qemu-block-extra:/usr/lib/*/qemu/block-rbd.so
)

missing=()
for w in "${wanted[@]}"; do
	pkg=${w%%:*} cmd=${w##*:}
	# A path (a header, a module; a glob for the multiarch directory)
	# stands for a package that provides no command.
	if [[ $cmd == /* ]]; then
		compgen -G "$cmd" >/dev/null || missing+=("$pkg")
	elif ! command -v "$cmd" >/dev/null 2>&1; then
		missing+=("$pkg")
	fi
done
# fio must have been built with the nbd engine (Debian's is, via libnbd).
if command -v fio >/dev/null 2>&1 && ! fio --enghelp 2>/dev/null | grep -qw nbd; then
	echo "install-test-deps: fio has no nbd ioengine" >&2
fi

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
echo "install-test-deps: installing ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-test-deps: no apt-get; install ${missing[*]} by hand" >&2
	exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's prometheus package starts a Prometheus server where systemd
# runs; the tests want only its promtool.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	$sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
