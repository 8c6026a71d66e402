#!/usr/bin/env bash
# Installs the Debian packages the test suite drives as real NBD peers, when
# they are missing. Runs as root (or with password-less sudo) on
# Debian/Ubuntu; elsewhere it only reports what is missing, and the tests
# that need a peer then fail under CI=true and skip otherwise.
#
#	scripts/install-test-deps.sh                  # the suite's packages
#	scripts/install-test-deps.sh PACKAGE:COMMAND… # these instead
#
# The second form is how tests/e2e/prepare.sh installs the host tools its
# VM needs: this script is the one place the project installs packages.
set -euo pipefail
# Some commands (depmod, mke2fs) live in the sbin directories, which a
# non-root PATH may leave out.
PATH=$PATH:/usr/sbin:/sbin

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
if [ $# -gt 0 ]; then
	wanted=("$@")
fi

missing=()
for w in "${wanted[@]}"; do
	pkg=${w%%:*} cmd=${w##*:}
	# A path (a header, a module; a glob for the multiarch directory)
	# stands for a package that provides no command.
	if [[ $cmd == /* ]]; then
		compgen -G "$cmd" >/dev/null && continue
	elif command -v "$cmd" >/dev/null 2>&1; then
		continue
	fi
	case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
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
	sudo="sudo -n"
	if ! sudo -n true 2>/dev/null; then
		echo "install-test-deps: not root and no password-less sudo; install ${missing[*]} by hand" >&2
		exit 0
	fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
if ! $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/install-test-deps.$$.log 2>&1; then
	tail -n 20 /tmp/install-test-deps.$$.log >&2
	rm -f /tmp/install-test-deps.$$.log
	echo "install-test-deps: apt-get install ${missing[*]} failed" >&2
	exit 1
fi
rm -f /tmp/install-test-deps.$$.log
# Debian's prometheus package starts a Prometheus server where systemd
# runs; the tests want only its promtool.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	$sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
