#!/usr/bin/env bash
# Read-only: backing chains.  Backing names are relative to the directory of
# the image naming them, and nbdkit runs from another directory.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

mkdir -p "$tmp/chain" "$tmp/a" "$tmp/b" "$tmp/raw" "$tmp/big" "$tmp/nofmt" "$tmp/elsewhere"
# Nothing below may depend on the current directory: qemu-img and nbdkit
# must both resolve backing names against each image's own directory.
cd "$tmp/elsewhere"

# --- qcow2 -> qcow2 -> qcow2, a different cluster size at each level ------
qemu-img create -q -f qcow2 -o cluster_size=4096 "$tmp/chain/base.qcow2" 4M
qio "$tmp/chain/base.qcow2" "write -P 0x01 0 3M" "write -P 0x0b $((3*1048576 + 4096)) 8192"
(cd "$tmp/chain" &&
 qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.qcow2 -F qcow2 mid.qcow2 &&
 qemu-img create -q -f qcow2 -o cluster_size=16384 -b mid.qcow2 -F qcow2 top.qcow2)
qio "$tmp/chain/mid.qcow2" \
    "write -P 0x02 65536 65536" \
    "write -P 0x12 $((300 * 1024 + 7)) 5000" \
    "write -z 262144 131072" \
    "write -z -u 524288 65536" \
    "discard 655360 65536" \
    "write -P 0x22 $((3 * 1048576 + 512)) 512"
check_image "$tmp/chain/mid.qcow2"
qio "$tmp/chain/top.qcow2" \
    "write -P 0x03 16384 4096" \
    "write -z 81920 16384" \
    "write -P 0x13 270000 3000" \
    "write -z -u 540672 16384" \
    "discard 1048576 32768" \
    "write -P 0x23 $((4 * 1048576 - 1024)) 1024"
check_image "$tmp/chain/top.qcow2"

# --- backing in a sibling directory: "../b/base2.qcow2" -----------------
qemu-img create -q -f qcow2 "$tmp/b/base2.qcow2" 2M
qio "$tmp/b/base2.qcow2" "write -P 0x31 0 2M"
(cd "$tmp/a" && qemu-img create -q -f qcow2 -b ../b/base2.qcow2 -F qcow2 top2.qcow2)
qio "$tmp/a/top2.qcow2" "write -P 0x32 1M 4096" "write -z 0 65536"
check_image "$tmp/a/top2.qcow2"

# --- qcow2 -> raw; the raw backing is smaller than the overlay and ends
# part-way through an overlay cluster.  (The raw file is fully allocated:
# qemu-img map reports holes in a sparse raw backing file from
# SEEK_HOLE, which a qcow2 reader is not required to find.)
rawsize=$((3 * 1048576 + 512))
python3 -c 'import os,sys; open(sys.argv[1],"wb").write(os.urandom(int(sys.argv[2])))' \
        "$tmp/raw/base.raw" $rawsize
(cd "$tmp/raw" && qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 8M)
check_image "$tmp/raw/top.qcow2"
qio "$tmp/raw/top.qcow2" \
    "write -P 0x41 100000 1000" \
    "write -z 196608 65536" \
    "write -P 0x42 $((rawsize - 1024)) 512" \
    "write -P 0x43 $((5 * 1048576)) 65536"
check_image "$tmp/raw/top.qcow2"
# Two qcow2 levels over raw.
(cd "$tmp/raw" && qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 top2.qcow2)
qio "$tmp/raw/top2.qcow2" "write -P 0x44 $((rawsize + 512)) 4096" "write -z -u 0 65536"
check_image "$tmp/raw/top2.qcow2"

# --- overlay larger than its qcow2 backing: past the backing's end the
# unallocated clusters read (and map) as zeroes. ---------------------------
qemu-img create -q -f qcow2 "$tmp/big/base.qcow2" $((1048576 + 512))
qio "$tmp/big/base.qcow2" "write -P 0x51 0 $((1048576 + 512))"
(cd "$tmp/big" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 16M)
qio "$tmp/big/top.qcow2" "write -P 0x52 $((8 * 1048576)) 4096"
check_image "$tmp/big/top.qcow2"
# Cluster straddling the backing's end, rewritten partially.
qio "$tmp/big/top.qcow2" "write -P 0x53 $((1048576 + 4096)) 512"
check_image "$tmp/big/top.qcow2"

# --- backing file without a backing-format header extension --------------
# qemu-img 7.2 refuses 'rebase -u -b base.qcow2' without -F, so create the
# overlay with -F and then remove the backing-format extension from the
# header with python (which leaves a valid image: readers must probe).
strip_backing_format ()
{
    python3 - "$1" <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    h = f.read(4096)
    version = struct.unpack('>I', h[4:8])[0]
    hlen = struct.unpack('>I', h[100:104])[0] if version >= 3 else 72
    pos, exts = hlen, []
    while True:
        t, l = struct.unpack('>II', h[pos:pos + 8])
        if t == 0:
            break
        exts.append((t, h[pos + 8:pos + 8 + l]))
        pos += 8 + ((l + 7) & ~7)
    end = pos + 8
    kept = [(t, d) for (t, d) in exts if t != 0xE2792ACA]
    assert len(kept) == len(exts) - 1, "no backing format extension"
    out = b''.join(struct.pack('>II', t, len(d)) + d +
                   b'\0' * (((len(d) + 7) & ~7) - len(d)) for t, d in kept)
    out += b'\0' * 8
    out += b'\0' * (end - hlen - len(out))
    f.seek(hlen)
    f.write(out)
PY
}
qemu-img create -q -f qcow2 "$tmp/nofmt/base.qcow2" 2M
qio "$tmp/nofmt/base.qcow2" "write -P 0x61 0 1M"
(cd "$tmp/nofmt" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2)
qio "$tmp/nofmt/top.qcow2" "write -P 0x62 65536 4096" "write -z 262144 65536"
strip_backing_format "$tmp/nofmt/top.qcow2"
if qemu-img info "$tmp/nofmt/top.qcow2" | grep -c 'backing file format' >/dev/null; then
    fail "could not strip the backing format extension"
fi
check_image "$tmp/nofmt/top.qcow2"

# The same over a raw backing file: the format must be probed as raw.
python3 -c 'import os,sys; open(sys.argv[1],"wb").write(os.urandom(1048576))' \
        "$tmp/nofmt/base.raw"
(cd "$tmp/nofmt" && qemu-img create -q -f qcow2 -b base.raw -F raw top-raw.qcow2 2M)
qio "$tmp/nofmt/top-raw.qcow2" "write -P 0x63 65536 4096"
strip_backing_format "$tmp/nofmt/top-raw.qcow2"
check_image "$tmp/nofmt/top-raw.qcow2"
