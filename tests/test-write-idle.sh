#!/usr/bin/env bash
# A server that goes idle checkpoints and clears "qcow2j journal dirty":
# killed with SIGKILL then, it leaves an image that QEMU opens and checks
# clean, with every flushed write in it.  Busy, the same kill leaves the
# image refused by QEMU with our feature's name, read-only serving reads
# it (replayed in memory) without changing it, and the recovery command of
# the man page replays it.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires nbdsh --version
cd "$tmp"

sock=$tmp/sock
qemu-img create -q -f qcow2 img.qcow2 64M
"${NBDKIT_CMD[@]}" -f -U "$sock" "$QCOW2J" file=img.qcow2 &
pid=$!
cleanup_fn "kill -9 $pid 2>/dev/null"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
uri="nbd+unix:///?socket=$sock"

nbdsh -u "$uri" -c 'h.pwrite(b"\x17" * 65536 * 4, 1 << 20)' -c 'h.flush()'
# Busy: the journal holds the change; QEMU must refuse the image.
info=$(qemu-img info -U img.qcow2 2>&1) && fail "qemu-img opened a dirty image: $info"
[[ $info == *'qcow2j journal dirty: serve with nbdkit qcow2j'* ]] || fail "no feature name: $info"

# Idle for longer than the checkpoint's idle delay.
sleep 8
kill -9 $pid
wait $pid 2>/dev/null || :
qemu-img check img.qcow2 || fail "idle then killed: qemu-img check failed"
qemu-io -f qcow2 -c 'read -P 0x17 1M 256k' img.qcow2 >/dev/null ||
    fail "idle then killed: flushed data missing"

# Busy kill, then the documented recovery.
rm -f "$sock"
"${NBDKIT_CMD[@]}" -f -U "$sock" "$QCOW2J" file=img.qcow2 &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
nbdsh -u "$uri" -c 'h.pwrite(b"\x29" * 65536, 8 << 20)' -c 'h.flush()'
kill -9 $pid
wait $pid 2>/dev/null || :
! qemu-img info img.qcow2 >/dev/null 2>&1 || fail "busy kill: image not dirty"
# Read-only serving replays the journal in memory, changing nothing.
nbdkit -r -U - "$QCOW2J" file=img.qcow2 \
    --run 'nbdsh -u "$uri" -c "assert h.pread(65536, 8 << 20) == b\"\\x29\" * 65536"' ||
    fail "read-only: the flushed write does not read back"
! qemu-img info img.qcow2 >/dev/null 2>&1 ||
    fail "read-only serving replayed the journal into the file"
nbdkit -U - "$QCOW2J" file=img.qcow2 --run 'nbdinfo --size "$uri"' >/dev/null
qemu-img check img.qcow2 || fail "after recovery: qemu-img check failed"
qemu-io -f qcow2 -c 'read -P 0x29 8M 64k' -c 'read -P 0x17 1M 256k' img.qcow2 \
    >/dev/null || fail "after recovery: flushed data missing"
