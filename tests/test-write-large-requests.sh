#!/usr/bin/env bash
# The largest requests NBD allows (64 MiB writes, zero and trim of nearly
# 4 GiB) on small clusters, where one request changes more metadata than
# the journal's ring holds: they must succeed (committing as they go), and
# the image must check clean and read right.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires nbdsh --version
cd "$tmp"

qemu-img create -q -f qcow2 -o cluster_size=4096 big.qcow2 8G
nbdkit -U - "$QCOW2J" file=big.qcow2 --run 'nbdsh -u "$uri" -c "
big = 4 * 1024**3 - 4096
h.pwrite(b\"\\x5a\" * (64 << 20), 0)
h.zero(big, 64 << 20, nbd.CMD_FLAG_NO_HOLE)
h.zero(big, 0)
h.pwrite(b\"\\x6b\" * (64 << 20), 1 << 30)
h.trim(big, 4 << 30)
h.flush()
assert h.pread(4096, 1 << 30) == b\"\\x6b\" * 4096
assert h.pread(4096, 0) == bytes(4096)
"'
qemu-img check big.qcow2 || fail "qemu-img check after large requests"
qemu-io -f qcow2 -c 'read -P 0x6b 1G 64M' -c 'read -P 0 0 64M' big.qcow2 >/dev/null ||
    fail "content after large requests"

qemu-img create -q -f qcow2 -o cluster_size=512 small.qcow2 1G
nbdkit -U - "$QCOW2J" file=small.qcow2 --run 'nbdsh -u "$uri" -c "
h.pwrite(b\"\\x7c\" * (64 << 20), 512)
h.zero(256 << 20, 128 << 20, nbd.CMD_FLAG_NO_HOLE)
h.flush()
"'
qemu-img check small.qcow2 || fail "qemu-img check, 512-byte clusters"
qemu-io -f qcow2 -c 'read -P 0x7c 512 64M' small.qcow2 >/dev/null ||
    fail "content, 512-byte clusters"
