#!/bin/sh
# /init of the end-to-end guest (busybox sh, PID 1). It attaches a stackd
# export with the kernel's NBD client, exercises it, and reports on the
# serial console:
#
#	E2E-STEP NAME t=SECONDS      progress, with the guest's uptime
#	E2E-INFO KEY VALUE...        what the host may log or check
#	E2E-SUM PATH SHA256          a file the host checks in the image
#	E2E-PASS                     the whole job succeeded
#	E2E-FAIL: REASON             it did not
#
# then powers off. The job comes from the kernel command line:
#
#	stackd.port=PORT        the host's NBD port, reached as 10.0.2.2
#	stackd.export=NAME      the export to attach
#	stackd.conns=N          nbd-client connections (-C N), default 1
#	stackd.job=JOB          the scenario: fs (the default) or idle
#	stackd.max_sectors_kb=N the largest request the kernel makes, in KiB
#	                        (default: the kernel's own, 128 or 1280)
#	stackd.idle=SECONDS     how long the idle job leaves the device idle
#	stackd.timeout=SECONDS  the kernel's request timeout (nbd-client -t);
#	                        default none: a request waits for ever
#	stackd.tls=DIR          attach over TLS with DIR's ca-cert.pem,
#	                        client-cert.pem and client-key.pem (nbd-client
#	                        -cacertfile -certfile -keyfile)
#	stackd.tlshostname=NAME the name the server's certificate must carry
#	                        (nbd-client -tlshostname; the guest reaches the
#	                        server as 10.0.2.2, which it does not name)
#
# fs: raw O_DIRECT writes, reads and zeroing across the 64 KiB stripe
# chunk and 1 MiB split boundaries (before mkfs, so the filesystem the
# host checks afterwards is intact); mkfs.ext4; 32 MiB of random files and
# 500 small ones (unpacked from a tar the initramfs carries); their
# checksums verified after a remount with the page cache dropped; fstrim;
# e2fsck; detach.
#
# idle: a 32 MiB write and a 32 MiB read (with max_sectors_kb raised, one
# request each: the read's reply is larger than any socket buffer, so
# stackd's writer goroutine sends its tail and arms the write deadline);
# then the device sits idle for stackd.idle seconds, longer than the
# reply_timeout stackd runs with; then a small read, a small write and the
# large read again, each of which must succeed; detach. A connection that
# merely idled must not be dropped, however short the reply timeout.

export PATH=/bin:/sbin
/bin/busybox --install -s /bin

fail() {
	echo "E2E-FAIL: $*"
	[ -f /tmp/log ] && tail -n 20 /tmp/log
	sync
	poweroff -f
	sleep 10
}
step() {
	read -r up _ </proc/uptime
	echo "E2E-STEP $1 t=$up"
}
# run CMD...: runs CMD with its output kept in /tmp/log, failing the job
# (and showing that output) when it exits non-zero.
run() {
	"$@" >/tmp/log 2>&1 || fail "$* exited $?"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /var && ln -s /run /var/run

port="" export="" conns=1 job=fs max_sectors_kb="" idle="" timeout="" tls="" tlshostname=""
for w in $(cat /proc/cmdline); do
	case $w in
	stackd.port=*) port=${w#*=} ;;
	stackd.export=*) export=${w#*=} ;;
	stackd.conns=*) conns=${w#*=} ;;
	stackd.job=*) job=${w#*=} ;;
	stackd.max_sectors_kb=*) max_sectors_kb=${w#*=} ;;
	stackd.idle=*) idle=${w#*=} ;;
	stackd.timeout=*) timeout=${w#*=} ;;
	stackd.tls=*) tls=${w#*=} ;;
	stackd.tlshostname=*) tlshostname=${w#*=} ;;
	esac
done
[ -n "$port" ] || fail "no stackd.port= on the kernel command line"
case $job in
fs) ;;
idle) [ -n "$idle" ] || fail "stackd.job=idle needs stackd.idle=SECONDS" ;;
*) fail "unknown job $job" ;;
esac
echo "E2E-INFO kernel $(uname -r)"
step start

for m in $(cat /lib/e2e/modules); do
	insmod /lib/e2e/"$m" 2>/tmp/log || fail "insmod $m: $(cat /tmp/log)"
done

# Only the on-link 10.0.2.0/24 of qemu's user network, and no route
# beyond it: the guest reaches the host's loopback and nothing else.
i=0
while [ ! -e /sys/class/net/eth0 ]; do
	i=$((i + 1))
	[ $i -le 50 ] || fail "no eth0"
	sleep 0.1
done
run ip link set lo up
run ip addr add 10.0.2.15/24 dev eth0
run ip link set eth0 up
step network

dev=/dev/nbd0
set -- /sbin/nbd-client 10.0.2.2 "$port" $dev
[ -n "$export" ] && set -- "$@" -N "$export"
[ "$conns" -gt 1 ] && set -- "$@" -C "$conns"
[ -n "$timeout" ] && set -- "$@" -t "$timeout"
if [ -n "$tls" ]; then
	[ -n "$tlshostname" ] || fail "stackd.tls= needs stackd.tlshostname=NAME"
	set -- "$@" -cacertfile "$tls/ca-cert.pem" -certfile "$tls/client-cert.pem" -keyfile "$tls/client-key.pem"
	# First a name the server's certificate lacks: nbd-client must
	# refuse the server, or the attach below would prove nothing about
	# its verifying the server (it does only when given both -cacertfile
	# and -tlshostname). Its TLS child, which refuses, has no stderr:
	# what the parent says is only that the negotiation broke off; the
	# host checks in stackd's log that it broke off in the handshake.
	if "$@" -tlshostname wrong.invalid >/tmp/log 2>&1; then
		fail "nbd-client accepted a server certificate without the name wrong.invalid"
	fi
	echo "E2E-INFO tls-refused $(tr '\n' ' ' </tmp/log)"
	[ "$(cat /sys/block/nbd0/size)" = 0 ] || fail "nbd0 was configured by a refused nbd-client"
	step tls-refused
	set -- "$@" -tlshostname "$tlshostname"
fi
"$@" >/tmp/log 2>&1 || fail "nbd-client: $(tr '\n' ' ' </tmp/log)"
i=0
while [ "$(cat /sys/block/nbd0/size)" = 0 ]; do
	i=$((i + 1))
	[ $i -le 100 ] || fail "nbd0 has no size after nbd-client"
	sleep 0.1
done
q=/sys/block/nbd0/queue
echo "E2E-INFO size $(($(cat /sys/block/nbd0/size) * 512))"
for f in logical_block_size max_sectors_kb max_hw_sectors_kb discard_max_bytes write_zeroes_max_bytes; do
	[ -f $q/$f ] && echo "E2E-INFO $f $(cat $q/$f)"
done
step attached

if [ -n "$max_sectors_kb" ]; then
	echo "$max_sectors_kb" >$q/max_sectors_kb || fail "cannot set max_sectors_kb to $max_sectors_kb"
	echo "E2E-INFO max_sectors_kb now $(cat $q/max_sectors_kb)"
fi
MiB=1048576
KiB=1024

# --- What both jobs use. ----------------------------------------------------
# check OFF LEN FILE [BS]: the device's LEN bytes at OFF, read with
# O_DIRECT in blocks of BS (default: the largest of 1 MiB, 64 KiB, 4 KiB
# and 512 that divides LEN), equal FILE.
check() {
	bs=${4:-}
	if [ -z "$bs" ]; then
		for bs in $MiB $((64 * KiB)) $((4 * KiB)) 512; do
			[ $(($2 % bs)) -eq 0 ] && break
		done
	fi
	dd if=$dev of=/tmp/got bs=$bs skip=$1 count=$(($2 / bs)) iflag=direct,skip_bytes 2>/tmp/log ||
		fail "direct read at $1+$2: $(cat /tmp/log)"
	cmp /tmp/got "$3" >/tmp/log 2>&1 || fail "data at $1+$2 differs: $(cat /tmp/log)"
}
# expect OFF LEN PATOFF: the device's LEN bytes at OFF equal the pattern's
# LEN bytes at PATOFF.
expect() {
	dd if=/tmp/pat of=/tmp/want bs=512 skip=$(($3 / 512)) count=$(($2 / 512)) 2>/dev/null
	check "$1" "$2" /tmp/want
}
# zeroes OFF LEN: the device's LEN bytes at OFF are zero.
zeroes() {
	dd if=/dev/zero of=/tmp/want bs=512 count=$(($2 / 512)) 2>/dev/null
	check "$1" "$2" /tmp/want
}

# detach: detaches the device and reports success.
detach() {
	echo "E2E-INFO stat $(cat /sys/block/nbd0/stat)"
	run /sbin/nbd-client -d $dev
	step detached
	echo E2E-PASS
	sync
	poweroff -f
	sleep 10
}

# --- The idle job. ----------------------------------------------------------
if [ "$job" = idle ]; then
	run dd if=/dev/urandom of=/tmp/big bs=1M count=32
	run dd if=/tmp/big of=$dev bs=32M count=1 oflag=direct
	step big-written
	check 0 $((32 * MiB)) /tmp/big $((32 * MiB))
	step big-read
	sleep "$idle"
	step idle
	# The first request after the idle spell is the one whose reply a
	# stale write deadline would fail: a small read, answered at once.
	dd if=/tmp/big of=/tmp/head bs=4k count=1 2>/dev/null
	check 0 $((4 * KiB)) /tmp/head
	step read-after-idle
	dd if=/dev/urandom of=/tmp/small bs=4k count=1 2>/dev/null
	run dd if=/tmp/small of=$dev bs=4k seek=$((33 * MiB)) count=1 oflag=direct,seek_bytes
	check $((33 * MiB)) $((4 * KiB)) /tmp/small
	check 0 $((32 * MiB)) /tmp/big $((32 * MiB))
	step io-after-idle
	detach
fi

# --- Raw I/O, before mkfs. -------------------------------------------------
# 6 MiB of random data, the pattern for every raw write.
run dd if=/dev/urandom of=/tmp/pat bs=64k count=96

# 3 MiB from 1 MiB - 8 KiB in 64 KiB writes: crosses the 1, 2 and 3 MiB
# split boundaries and 48 chunk boundaries.
off=$((MiB - 8 * KiB))
run dd if=/tmp/pat of=$dev bs=64k seek=$off count=48 oflag=direct,seek_bytes
# Small writes straddling a chunk boundary and a split boundary, at
# 512-byte (sector) granularity: three sectors across 4 MiB + 64 KiB, and
# 5 KiB across 6 MiB.
run dd if=/tmp/pat of=$dev bs=512 seek=$(((4 * MiB + 64 * KiB) / 512 - 1)) count=3 oflag=direct
run dd if=/tmp/pat of=$dev bs=512 skip=16 seek=$(((6 * MiB - 2 * KiB) / 512)) count=10 oflag=direct
# The whole pattern in one 6 MiB write from 16 MiB - 4 KiB: the kernel
# cuts it at max_sectors_kb, stackd at 1 MiB and at each chunk.
big=$((16 * MiB - 4 * KiB))
run dd if=/tmp/pat of=$dev bs=6M seek=$big count=1 oflag=direct,seek_bytes
step raw-written
expect $off $((3 * MiB)) 0
expect $((4 * MiB + 64 * KiB - 512)) 1536 0
expect $((6 * MiB - 2 * KiB)) $((5 * KiB)) $((16 * 512))
# A read that starts and ends mid-chunk and spans a split boundary.
expect $((2 * MiB - 36 * KiB)) $((100 * KiB)) $((2 * MiB - 36 * KiB - off))
# The 6 MiB write, read back in one 6 MiB read.
check $big $((6 * MiB)) /tmp/pat $((6 * MiB))
step raw-read

# Zero a range that starts and ends mid-chunk across the 2 MiB boundary
# (BLKZEROOUT: WRITE_ZEROES when the kernel sends it, zero writes
# otherwise), then check the zeroes and the data on either side.
zoff=$((2 * MiB - 68 * KiB))
zlen=$((136 * KiB + 1024))
run /sbin/blkdiscard -z -o $zoff -l $zlen $dev
expect $((zoff - 64 * KiB)) $((64 * KiB)) $((zoff - 64 * KiB - off))
zeroes $zoff $zlen
expect $((zoff + zlen)) $((64 * KiB)) $((zoff + zlen - off))
# Discard (TRIM) part of it: its contents are then unspecified, so only
# that it succeeds is checked.
run /sbin/blkdiscard -o $((3 * MiB)) -l $MiB $dev
step raw-zeroed

# --- Filesystem. ------------------------------------------------------------
run /sbin/mke2fs -q -F -t ext4 $dev
step mkfs
run mount -t ext4 $dev /mnt
for i in 0 1 2 3; do
	run dd if=/dev/urandom of=/mnt/big$i bs=1M count=8
done
step big-written
run tar -xf /lib/e2e/small.tar -C /mnt
step files-written
(cd /mnt && find . -type f | sort | xargs sha256sum) >/tmp/sums || fail "sha256sum"
[ "$(wc -l </tmp/sums)" -eq 504 ] || fail "expected 504 files, summed $(wc -l </tmp/sums)"
step summed
echo "E2E-SUM /big0 $(grep ' ./big0$' /tmp/sums | cut -d' ' -f1)"
run sync
run umount /mnt
echo 3 >/proc/sys/vm/drop_caches
run mount -t ext4 $dev /mnt
(cd /mnt && sha256sum -c /tmp/sums) >/tmp/log 2>&1 || fail "checksums differ after remount: $(grep -v ': OK$' /tmp/log | head -n 5)"
step verified
# Free 8 MiB, then trim every free block.
run rm /mnt/big3
run sync
/sbin/fstrim -v /mnt >/tmp/log 2>&1 || fail "fstrim: $(cat /tmp/log)"
echo "E2E-INFO fstrim $(cat /tmp/log)"
run umount /mnt
/sbin/e2fsck -fn $dev >/tmp/log 2>&1 || fail "e2fsck -fn exited $?: $(tail -n 5 /tmp/log)"
step fsck
detach
