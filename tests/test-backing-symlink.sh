#!/usr/bin/env bash
# An image served through a symlink finds its backing file as QEMU does:
# relative to the path the user gave (the symlink's directory), not to
# the symlink's target.  The same along a backing chain.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires nbdsh --version
cd "$tmp"

mkdir real link
qemu-img create -q -f qcow2 real/base.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' real/base.qcow2 >/dev/null
qemu-img create -q -f qcow2 link/base.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x22 0 1M' link/base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 real/top.qcow2
ln -s ../real/top.qcow2 link/top.qcow2

# What QEMU reads through the symlink: link/base.qcow2.
qemu-io -r -f qcow2 -c 'read -P 0x22 0 1M' link/top.qcow2 >/dev/null ||
    fail "qemu-io does not read link/base.qcow2 (a QEMU change?)"

check ()
{
    local path=$1 want=$2
    nbdkit -U - "$QCOW2J" file="$path" \
        --run "nbdsh -u \"\$uri\" -c 'assert h.pread(65536, 0) == b\"\\x$want\" * 65536'" ||
        fail "$path: does not read as 0x$want"
}
check link/top.qcow2 22
check real/top.qcow2 11
# From another directory, and with the absolute path.
(cd / && check "$tmp/link/top.qcow2" 22)

# A chain: the backing file is itself a symlink to an image whose own
# backing name is relative to the symlink's directory.
mkdir chain
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 real/mid.qcow2
ln -s ../real/mid.qcow2 link/mid.qcow2
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 -u link/top2.qcow2 1M
qemu-io -r -f qcow2 -c 'read -P 0x22 0 1M' link/top2.qcow2 >/dev/null ||
    fail "qemu-io: chain through a symlink"
check link/top2.qcow2 22
