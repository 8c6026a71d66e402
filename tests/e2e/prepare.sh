#!/usr/bin/env bash
# Prepares what the kernel-client end-to-end test boots: a stock Debian
# kernel and a small initramfs (busybox, the kernel modules it needs,
# nbd-client, e2fsprogs, and init.sh as /init) for each kernel series
# named on the command line ("6.1", "6.12"; default both).
#
#	tests/e2e/prepare.sh [SERIES...]
#
# The host needs qemu-system-x86_64 and a few tools; they are installed
# with apt-get when missing (as root, or through sudo). The kernels,
# busybox and nbd-client are fetched with `apt-get download` and unpacked,
# never installed. Everything is cached under $STACKD_E2E_CACHE (default
# tests/e2e/cache/, git-ignored): a second run with nothing changed only
# checks the cache.
#
# Progress goes to stderr. Stdout carries one line per series:
#
#	ready SERIES VMLINUZ INITRD KERNEL-RELEASE
#	unavailable SERIES REASON...
#
# "unavailable" means the configured apt sources offer no such kernel; the
# test decides whether that is a failure. Any other problem exits non-zero.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${STACKD_E2E_CACHE:-$here/cache}
series_wanted=("$@")
if [ ${#series_wanted[@]} -eq 0 ]; then
	series_wanted=(6.1 6.12)
fi

log() { echo "prepare: $*" >&2; }
die() {
	echo "prepare: error: $*" >&2
	exit 1
}

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
# Two test runs at once share the cache: take turns.
exec 9>"$cache/.lock"
flock -w 900 9 || die "cache $cache is locked by another run"

# apt's package lists may be missing or stale on a fresh machine: refresh
# them at most once per run, and only when a look-up or download fails.
apt_updated=0
apt_update() {
	if [ $apt_updated -eq 0 ]; then
		log "apt-get update"
		$sudo apt-get update -qq >&2 || die "apt-get update failed"
		apt_updated=1
		return 0
	fi
	return 1
}

# Host tools, as "package:command", installed by the project's one
# installer when missing.
host_tools=(
	qemu-system-x86:qemu-system-x86_64
	kmod:depmod
	cpio:cpio
	e2fsprogs:mke2fs
	e2fsprogs:e2fsck
	e2fsprogs:debugfs
	util-linux:fstrim
	util-linux:blkdiscard
	util-linux:flock
	xz-utils:xz
	gzip:gzip
	dpkg:dpkg-deb
	libc-bin:ldd
)
"$here/../../scripts/install-test-deps.sh" "${host_tools[@]}" >&2 || die "installing the host tools failed"
export PATH=$PATH:/usr/sbin:/sbin
for t in "${host_tools[@]}"; do
	command -v "${t##*:}" >/dev/null 2>&1 || die "missing ${t##*:} (Debian package ${t%%:*})"
done

# apt_candidate PKG: prints PKG's candidate version, empty if apt knows none.
apt_candidate() {
	apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}

# fetch PKG: downloads PKG's candidate into the cache unless a .deb of it is
# there already, and sets $fetched to the .deb's path. Returns 1 when apt
# cannot provide it, even after refreshing its lists.
debs=$cache/debs
mkdir -p "$debs"
fetched=""
cached_deb() {
	find "$debs" -maxdepth 1 -name "${1}_*.deb" -print | sort -V | tail -n 1
}
fetch() {
	local pkg=$1
	fetched=$(cached_deb "$pkg")
	[ -z "$fetched" ] || return 0
	if [ -z "$(apt_candidate "$pkg")" ]; then
		apt_update || true
		[ -n "$(apt_candidate "$pkg")" ] || return 1
	fi
	log "apt-get download $pkg"
	# Into a scratch directory first: an interrupted download must not
	# look like a cached package.
	rm -rf "$debs/.partial"
	mkdir "$debs/.partial"
	if ! (cd "$debs/.partial" && apt-get download -q "$pkg" >/dev/null 2>&1); then
		# Stale lists name files the mirror no longer has.
		apt_update || true
		(cd "$debs/.partial" && apt-get download -q "$pkg" >&2) || return 1
	fi
	mv "$debs/.partial/"*.deb "$debs/"
	rmdir "$debs/.partial"
	fetched=$(cached_deb "$pkg")
	[ -n "$fetched" ]
}

# kernel_package SERIES: prints the kernel package of that series, empty if
# the apt sources offer none.
kernel_package() {
	local p=""
	case $1 in
	6.1)
		# The kernel Debian 12's linux-image-amd64 stands for.
		p=$(apt-cache depends linux-image-amd64 2>/dev/null |
			grep -oE 'linux-image-6\.1\.[0-9]+-[0-9]+-amd64' | head -n 1 || true)
		;;
	6.12)
		p=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' 2>/dev/null |
			awk '{ print $1 }' | sort -V | tail -n 1 || true)
		;;
	*) die "unknown kernel series $1 (want 6.1 or 6.12)" ;;
	esac
	echo "$p"
}

# Userland shared by every initramfs.
userland=$cache/userland
userland_debs=(busybox-static nbd-client libnl-3-200 libnl-genl-3-200)
userland_stamp=""
userland_files=()
for p in "${userland_debs[@]}"; do
	fetch "$p" || die "cannot fetch $p with apt-get download"
	userland_files+=("$fetched")
	userland_stamp+="$(basename "$fetched") "
done
if [ ! -f "$userland/.stamp" ] || [ "$(cat "$userland/.stamp")" != "$userland_stamp" ]; then
	log "unpacking ${userland_debs[*]}"
	rm -rf "$userland"
	mkdir -p "$userland"
	for f in "${userland_files[@]}"; do
		dpkg -x "$f" "$userland"
	done
	echo "$userland_stamp" >"$userland/.stamp"
fi
[ -x "$userland/bin/busybox" ] || die "busybox-static has no bin/busybox"
nbd_client=$(find "$userland/sbin" "$userland/usr/sbin" -name nbd-client -type f 2>/dev/null | head -n 1 || true)
[ -n "$nbd_client" ] || die "nbd-client package has no nbd-client binary"

# copy_with_libs ROOT FILE DEST: copies an executable into ROOT at DEST with
# the loader and every library ldd resolves for it, libraries from the
# unpacked userland first.
copy_with_libs() {
	local root=$1 file=$2 dest=$3 lib
	install -D -m 0755 "$file" "$root$dest"
	local libpath
	libpath=$(find "$userland" -name '*.so*' -printf '%h\n' | sort -u | paste -sd: -)
	local out
	out=$(LD_LIBRARY_PATH=$libpath ldd "$file") || die "ldd $file failed"
	if grep -q 'not found' <<<"$out"; then
		die "ldd $file: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
	fi
	while read -r lib; do
		[ -n "$lib" ] || continue
		# The loader resolves SONAMEs in /lib/x86_64-linux-gnu; the
		# interpreter keeps its absolute path.
		case $lib in
		/lib64/*) install -D -m 0755 "$(readlink -f "$lib")" "$root$lib" ;;
		*) install -D -m 0755 "$(readlink -f "$lib")" "$root/lib/x86_64-linux-gnu/$(basename "$lib")" ;;
		esac
	done < <(awk '/=> \// { print $3 } /^[ \t]*\/[^ ]+ \(/ { print $1 }' <<<"$out")
}

# The guest's top-level modules; their dependencies come from modules.dep.
# crc32c_generic is only a soft dependency of ext4 (through the crypto API),
# so modprobe-less loading must name it.
wanted_modules=(virtio_pci virtio_net nbd crc32c_generic ext4)

# 500 small files of random bytes, 1 B to 12 KiB, as one tar: the guest
# unpacks them in one process (500 processes cost seconds under emulation).
small=$cache/small.tar
if [ ! -f "$small" ]; then
	log "making $small"
	tmp=$(mktemp -d)
	mkdir "$tmp/small"
	for ((i = 0; i < 500; i++)); do
		head -c $((1 + (i * 997) % 12288)) /dev/urandom >"$tmp/small/f$i"
	done
	tar -C "$tmp" --owner=0 --group=0 --format=ustar -cf "$small.tmp" small
	mv "$small.tmp" "$small"
	rm -rf "$tmp"
fi

kernels=$cache/kernels
mkdir -p "$kernels"
script_sum=$(cat "$here/prepare.sh" "$here/init.sh" "$small" | sha256sum | cut -c1-16)

for series in "${series_wanted[@]}"; do
	pkg=$(kernel_package "$series")
	if [ -z "$pkg" ] && [ $apt_updated -eq 0 ]; then
		apt_update || true
		pkg=$(kernel_package "$series")
	fi
	if [ -z "$pkg" ]; then
		echo "unavailable $series no linux-image-$series kernel package in the configured apt sources"
		continue
	fi
	if ! fetch "$pkg"; then
		# Stale lists may name a kernel the mirror has replaced.
		apt_update || true
		pkg=$(kernel_package "$series")
		[ -n "$pkg" ] && fetch "$pkg" || die "cannot fetch the $series kernel ${pkg:-(none)}"
	fi
	deb=$fetched
	out=$kernels/$pkg
	stamp="$(basename "$deb") $userland_stamp $script_sum"
	if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ] &&
		[ -f "$out/vmlinuz" ] && [ -f "$out/initrd.cpio.gz" ]; then
		echo "ready $series $out/vmlinuz $out/initrd.cpio.gz $(cat "$out/release")"
		continue
	fi
	log "building initramfs for $pkg"
	rm -rf "$out"
	mkdir -p "$out"
	x=$out/unpacked
	dpkg -x "$deb" "$x"
	vmlinuz=$(find "$x/boot" -name 'vmlinuz-*' | head -n 1)
	[ -n "$vmlinuz" ] || die "$pkg has no boot/vmlinuz-*"
	release=${vmlinuz##*/vmlinuz-}
	moddir=$(find "$x" -maxdepth 3 -type d -path "*/modules/$release" | head -n 1)
	[ -n "$moddir" ] || die "$pkg has no modules for $release"
	# modules.dep is made at install time, by depmod, from the modules.
	depmod -b "${moddir%/lib/modules/*}" "$release" || die "depmod for $pkg failed"
	[ -f "$moddir/modules.dep" ] || die "depmod made no modules.dep for $pkg"

	# Resolve the load order: dependencies first, each module once,
	# built-in ones skipped.
	order=()
	declare -A seen=()
	resolve() {
		local name=$1 path dep
		[ -z "${seen[$name]-}" ] || return 0
		seen[$name]=1
		if grep -qE "/${name//_/[_-]}\.ko(\.[a-z]+)?$" "$moddir/modules.builtin" 2>/dev/null; then
			return 0
		fi
		path=$(grep -E "(^|/)${name//_/[_-]}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -n 1 | cut -d: -f1 || true)
		[ -n "$path" ] || die "$pkg: no module $name"
		for dep in $(grep -E "^$path:" "$moddir/modules.dep" | cut -d: -f2-); do
			dep=${dep##*/}
			dep=${dep%%.ko*}
			resolve "${dep//-/_}"
		done
		order+=("$path")
	}
	for m in "${wanted_modules[@]}"; do
		resolve "$m"
	done
	unset seen

	root=$out/root
	mkdir -p "$root"/{bin,sbin,dev,proc,sys,mnt,tmp,run,etc,lib/e2e}
	install -m 0755 "$userland/bin/busybox" "$root/bin/busybox"
	ln -s busybox "$root/bin/sh"
	install -m 0755 "$here/init.sh" "$root/init"
	cp "$small" "$root/lib/e2e/small.tar"
	i=0
	: >"$root/lib/e2e/modules"
	for path in "${order[@]}"; do
		name=$(basename "$path")
		name=${name%%.ko*}
		dst=$(printf '%02d-%s.ko' $i "$name")
		case $path in
		*.ko.xz) xz -dc "$moddir/$path" >"$root/lib/e2e/$dst" ;;
		*.ko.zst) zstd -qdc "$moddir/$path" >"$root/lib/e2e/$dst" ;;
		*.ko.gz) gzip -dc "$moddir/$path" >"$root/lib/e2e/$dst" ;;
		*.ko) cp "$moddir/$path" "$root/lib/e2e/$dst" ;;
		*) die "$pkg: cannot load $path" ;;
		esac
		echo "$dst" >>"$root/lib/e2e/modules"
		i=$((i + 1))
	done
	copy_with_libs "$root" "$nbd_client" /sbin/nbd-client
	for tool in mke2fs e2fsck fstrim blkdiscard; do
		copy_with_libs "$root" "$(command -v $tool)" /sbin/$tool
	done
	[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"
	ln -s /proc/mounts "$root/etc/mtab"
	echo "$release" >"$out/release"
	(cd "$root" && find . -print0 | LC_ALL=C sort -z |
		cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 >"$out/initrd.cpio.gz.tmp"
	mv "$out/initrd.cpio.gz.tmp" "$out/initrd.cpio.gz"
	cp "$vmlinuz" "$out/vmlinuz"
	log "$pkg: modules ${order[*]##*/}"
	# The unpacked package is a few hundred MiB: keep only what boots.
	rm -rf "$x" "$root"
	echo "$stamp" >"$out/.stamp"
	echo "ready $series $out/vmlinuz $out/initrd.cpio.gz $release"
done
