#!/usr/bin/env bash
# Whether an image is served writable is decided at startup, as qemu-nbd
# does: an image that cannot be written as asked (another server holds
# QEMU's locks, a corrupt image, a read-only mount or file)
# stops the server before it accepts connections, with a message on the
# terminal.  readonly=auto falls back to read-only and says so once, at
# startup; -r (however it is spelt on nbdkit's command line), readonly=true
# and the cow filter serve read-only, without write locks and without
# refusing.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires nbdsh --version
cd "$tmp"

# must_refuse LOGFILE NBDKIT-ARGS...: nbdkit must exit non-zero without
# running --run (so before serving).
must_refuse ()
{
    local log=$1
    shift
    if nbdkit -U - "$QCOW2J" "$@" --run 'touch served' 2>"$log"; then
        cat "$log" >&2
        fail "started: $*"
    fi
    [ ! -e served ] || fail "served before refusing: $*"
}
# read_only ARGS...: served, and clients see a read-only disk.
read_only ()
{
    nbdkit -U - "$@" --run 'nbdsh -u "$uri" -c "assert h.is_read_only()"'
}
# writable ARGS...: served, and a client can write.
writable ()
{
    nbdkit -U - "$@" --run 'nbdsh -u "$uri" -c "assert not h.is_read_only()" -c "h.pwrite(b\"w\" * 512, 0)" -c "h.flush()"'
}

qemu-img create -q -f qcow2 a.qcow2 64M

# 1. A second server on an image another one serves writable refuses to
# start, in the default (forking) mode too, and the first keeps writing.
nbdkit -P "$tmp/first.pid" -U "$tmp/first.sock" "$QCOW2J" file=a.qcow2
cleanup_fn 'kill $(cat "$tmp/first.pid") 2>/dev/null'
must_refuse second.log file=a.qcow2
grep -q 'a.qcow2: failed to get .*lock' second.log || fail "second server: $(cat second.log)"
if nbdkit -P "$tmp/second.pid" -U "$tmp/second.sock" "$QCOW2J" file=a.qcow2 2>second-bg.log; then
    kill "$(cat "$tmp/second.pid")"
    fail "a second forking server started"
fi
grep -q 'failed to get .*lock' second-bg.log || fail "forking second server: $(cat second-bg.log)"
# qemu-io is refused too (the lock survived nbdkit's fork), and the first
# server's clients still write.
qemu-io -r -f qcow2 -c 'read 0 512' a.qcow2 >/dev/null 2>&1 &&
    fail "qemu-io opened an image qcow2j serves writable"
nbdsh -u "nbd+unix:///?socket=$tmp/first.sock" \
      -c 'assert not h.is_read_only()' -c 'h.pwrite(b"1" * 512, 0)' -c 'h.flush()'
kill "$(cat "$tmp/first.pid")"
for _ in $(seq 100); do [ -S "$tmp/first.sock" ] || break; sleep 0.1; done
qemu-img check -q a.qcow2

# 2. -r in every spelling serves read-only without QEMU's write locks:
# qemu-io (a reader that lets nobody write) opens the image meanwhile.
for r in -r --readonly --read-only --read -vr; do
    nbdkit -U - $r "$QCOW2J" file=a.qcow2 \
        --run 'nbdsh -u "$uri" -c "assert h.is_read_only()" &&
               qemu-io -r -f qcow2 -c "read 0 512" a.qcow2 >/dev/null' 2>/dev/null ||
        fail "nbdkit $r: not read-only, or took write locks"
done
# ... also after the plugin's parameters (nbdkit permutes its options) ...
nbdkit -U - "$QCOW2J" file=a.qcow2 -r --run 'nbdsh -u "$uri" -c "assert h.is_read_only()"'
# ... but an option's argument that looks like -r is no -r.
nbdkit -U - -e -r "$QCOW2J" file=a.qcow2 \
    --run 'nbdsh -u "$uri" -c "assert not h.is_read_only()" &&
           ! qemu-io -r -f qcow2 -c "read 0 512" a.qcow2 >/dev/null 2>&1'
# Served writable, the write locks are taken before any client connects.
nbdkit -U - "$QCOW2J" file=a.qcow2 \
    --run '! qemu-io -r -f qcow2 -c "read 0 512" a.qcow2 >/dev/null 2>&1' ||
    fail "no write lock at startup"

# 3. A version 2 image is served writable (without a journal:
# docs/journal-format.md 13.1), with the write locks, and stays version 2;
# -r, readonly=true, readonly=auto and the cow filter work as for any.
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 16M
writable "$QCOW2J" file=v2.qcow2 2>v2.log
[ ! -s v2.log ] || fail "a v2 image served writable said: $(cat v2.log)"
nbdkit -U - "$QCOW2J" file=v2.qcow2 \
    --run '! qemu-io -r -f qcow2 -c "read 0 512" v2.qcow2 >/dev/null 2>&1' ||
    fail "v2: no write lock at startup"
qemu-img check -q v2.qcow2
qemu-img info v2.qcow2 | grep -q 'compat: 0.10' || fail "v2: the version changed"
qemu-io -f qcow2 -c 'read -P 0x77 0 512' v2.qcow2 >/dev/null ||
    fail "v2: the write is not there"
read_only -r "$QCOW2J" file=v2.qcow2 2>v2-r.log
[ ! -s v2-r.log ] || fail "-r on a v2 image said: $(cat v2-r.log)"
read_only "$QCOW2J" file=v2.qcow2 readonly=true
writable "$QCOW2J" file=v2.qcow2 readonly=auto 2>v2-auto.log
[ ! -s v2-auto.log ] || fail "readonly=auto on a v2 image said: $(cat v2-auto.log)"
nbdkit -U - --filter=cow "$QCOW2J" file=v2.qcow2 \
    --run 'nbdsh -u "$uri" -c "h.pwrite(b\"c\" * 512, 0)"' ||
    fail "cow filter over a v2 image"
qemu-io -f qcow2 -c 'read -P 0x77 0 512' v2.qcow2 >/dev/null ||
    fail "v2: the cow filter wrote to the image"
echo "ok: a version 2 image"

# 4. An image marked corrupt.
qemu-img create -q -f qcow2 corrupt.qcow2 16M
printf '\x02' | dd of=corrupt.qcow2 bs=1 seek=79 conv=notrunc status=none
qemu-img info corrupt.qcow2 | grep -q 'corrupt: true' || fail "corrupt bit not set"
must_refuse corrupt.log file=corrupt.qcow2
grep -q "corrupt.qcow2: .*marked corrupt; stop the server, then repair it with: qemu-img check -r all" corrupt.log ||
    fail "corrupt message: $(cat corrupt.log)"
read_only -r "$QCOW2J" file=corrupt.qcow2
read_only "$QCOW2J" file=corrupt.qcow2 readonly=true
read_only "$QCOW2J" file=corrupt.qcow2 readonly=auto 2>corrupt-auto.log
[ "$(grep -c 'readonly=auto: serving it read-only' corrupt-auto.log)" = 1 ] ||
    fail "readonly=auto: $(cat corrupt-auto.log)"
grep -q 'marked corrupt' corrupt-auto.log ||
    fail "readonly=auto: no reason: $(cat corrupt-auto.log)"
grep -q 'error' corrupt-auto.log && fail "readonly=auto: an error: $(cat corrupt-auto.log)"
nbdkit -U - --filter=cow "$QCOW2J" file=corrupt.qcow2 \
    --run 'nbdsh -u "$uri" -c "h.pwrite(b\"c\" * 512, 0)"' ||
    fail "cow filter over a corrupt image"

# 5. A file the user may not write (as an unprivileged user) and a
# read-only file system (needs root).
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    chmod 755 "$tmp"
    qemu-img create -q -f qcow2 ro.qcow2 16M
    chmod 444 ro.qcow2
    as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    if "${as_nobody[@]}" test -r "$QCOW2J"; then
        if "${as_nobody[@]}" "${NBDKIT_CMD[@]}" -U - "$QCOW2J" file="$tmp/ro.qcow2" \
               --run true 2>ro.log; then
            fail "a read-only file was served writable"
        fi
        grep -q 'ro.qcow2: cannot open it for writing: Permission denied' ro.log ||
            fail "read-only file: $(cat ro.log)"
        "${as_nobody[@]}" "${NBDKIT_CMD[@]}" -U - "$QCOW2J" file="$tmp/ro.qcow2" readonly=auto \
            --run 'nbdsh -u "$uri" -c "assert h.is_read_only()"' 2>ro-auto.log
        grep -q 'readonly=auto: serving it read-only' ro-auto.log ||
            fail "read-only file, readonly=auto: $(cat ro-auto.log)"
        echo "ok: a file the user may not write"
    fi

    mkdir mnt
    if mount -t tmpfs -o size=64m tmpfs mnt 2>/dev/null; then
        cleanup_fn umount "$tmp/mnt"
        qemu-img create -q -f qcow2 mnt/m.qcow2 16M
        mount -o remount,ro mnt
        must_refuse mnt.log file=mnt/m.qcow2
        grep -q 'm.qcow2: cannot open it for writing: Read-only file system' mnt.log ||
            fail "read-only mount: $(cat mnt.log)"
        read_only -r "$QCOW2J" file=mnt/m.qcow2
        read_only "$QCOW2J" file=mnt/m.qcow2 readonly=auto 2>/dev/null
        echo "ok: a read-only file system"
    fi
fi

# 6. An image on a block device (a loop device; needs root) is served
# writable: the journal goes inside its free space.
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null; then
    qemu-img create -q -f qcow2 blk.qcow2 16M
    truncate -s 32M blk.qcow2
    if dev=$(losetup -f --show blk.qcow2 2>/dev/null); then
        cleanup_fn losetup -d "$dev"
        writable "$QCOW2J" file="$dev"
        writable "$QCOW2J" file="$dev" readonly=auto 2>/dev/null
        echo "ok: a block device"
    fi
fi

# 7. And a writable image is served writable, readonly=auto included.
writable "$QCOW2J" file=a.qcow2
writable "$QCOW2J" file=a.qcow2 readonly=auto 2>auto.log
[ ! -s auto.log ] || fail "readonly=auto on a writable image said: $(cat auto.log)"
qemu-img check -q a.qcow2
