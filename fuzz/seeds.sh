#!/usr/bin/env bash
# Generate the seed corpus of fuzz/fuzz-image.c: small qcow2 images made by
# qemu-img and qemu-io (and one by the plugin, killed with a dirty
# journal), each well under 1 MiB.
#   fuzz/seeds.sh OUTDIR
# QCOW2J names the built plugin .so (default: ./.libs/nbdkit-qcow2j-plugin.so
# beside this directory); without it, nbdkit or nbdsh, the qcow2j-written
# seeds are left out.  Without qemu-img there are no seeds at all.
set -euo pipefail
export LC_ALL=C
# nbdsh needs Debian's python3 (python3-libnbd), as in tests/functions.sh.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH

out=${1:?usage: fuzz/seeds.sh OUTDIR}
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
: "${QCOW2J:=$top/.libs/nbdkit-qcow2j-plugin.so}"

if ! qemu-img --version >/dev/null 2>&1 || ! qemu-io --version >/dev/null 2>&1; then
    echo "seeds.sh: qemu-img/qemu-io not found: no seeds" >&2
    exit 0
fi

tmp=$(mktemp -d /tmp/qcow2j-seeds.XXXXXX)
pid=
cleanup () { [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || :; rm -rf "$tmp"; }
trap cleanup EXIT
cd "$tmp"

n=0
# keep NAME: copy img.qcow2 into the corpus as seed-NAME.qcow2.
keep ()
{
    cp img.qcow2 "$out/seed-$1.qcow2"
    n=$((n + 1))
}
# mk OPTS SIZE: a new img.qcow2.
mk ()
{
    rm -f img.qcow2
    qemu-img create -q -f qcow2 ${1:+-o "$1"} img.qcow2 "$2"
}
# io CMD...: qemu-io commands on img.qcow2 (an 'abort' ends it on purpose).
io ()
{
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    (qemu-io -f qcow2 "${args[@]}" img.qcow2 >/dev/null 2>&1 || :) 2>/dev/null
}
# Data, zero clusters and a hole, for a disk of at least 256 KiB.
fill ()
{
    io "write -P 0x11 0 4k" "write -P 0x22 6k 3k" "write -P 0x33 64k 64k" \
       "write -z 16k 8k" "write -P 0x44 200k 1k" "discard 64k 4k"
}

# Cluster sizes.
mk cluster_size=512 256k; fill; keep c512
mk cluster_size=4096 1M; fill; keep c4k
mk cluster_size=65536 1M; fill; keep c64k
mk cluster_size=131072 1M; io "write -P 0x12 128k 4k"; keep c128k
# Refcount widths.
mk cluster_size=4096,refcount_bits=1 1M; fill; keep rb1
mk cluster_size=512,refcount_bits=16 256k; fill; keep rb16-c512
mk cluster_size=4096,refcount_bits=64 1M; fill; keep rb64
mk cluster_size=4096,refcount_bits=8 1M; fill; keep rb8
# Version 2.
mk compat=0.10,cluster_size=4096 1M; fill; keep v2
mk compat=0.10,cluster_size=512 256k; io "write -P 0x55 0 8k"; keep v2-c512
# Extended L2 (subclusters).
mk extended_l2=on,cluster_size=16384 1M
io "write -P 0x11 0 512" "write -P 0x22 1536 1k" "write -z 8k 4k" \
   "write -P 0x33 64k 20k" "discard 70k 512"
keep extl2-c16k
mk extended_l2=on,cluster_size=65536 1M
io "write -P 0x11 0 2k" "write -z 4k 8k" "write -P 0x33 128k 64k" \
   "discard 130k 2k"
keep extl2-c64k
# Compressed clusters, zlib and zstd.
for ct in zlib zstd; do
    mk compression_type=$ct,cluster_size=4096 1M
    io "write -c -P 0x61 0 4k" "write -c -P 0x62 8k 4k" \
       "write -c -z 12k 4k" "write -P 0x63 16k 4k"
    keep compressed-$ct-c4k
    mk compression_type=$ct,cluster_size=65536 1M
    io "write -c -P 0x64 0 64k" "write -P 0x65 64k 4k"
    keep compressed-$ct-c64k
done
mk compression_type=zstd,cluster_size=4096,extended_l2=on 1M 2>/dev/null &&
    { io "write -c -P 0x66 0 4k" "write -P 0x67 8k 512"; keep compressed-zstd-extl2; } || :
# Snapshots.
mk cluster_size=4096 1M; fill
qemu-img snapshot -c s1 img.qcow2
io "write -P 0x71 0 8k" "write -P 0x72 300k 4k"
qemu-img snapshot -c s2 img.qcow2
qemu-img snapshot -d s1 img.qcow2
keep snapshots
# Bitmaps, one left in use by an aborted qemu-io.
mk cluster_size=4096 1M
qemu-img bitmap --add img.qcow2 b0
qemu-img bitmap --add -g 65536 img.qcow2 b1
qemu-img bitmap --disable img.qcow2 b1
io "write -P 0x13 0 16k"
keep bitmaps
io "write -P 0x14 64k 4k" abort
keep bitmaps-in-use
# Lazy refcounts left dirty (QEMU's dirty bit).
mk lazy_refcounts=on,cluster_size=4096 1M
io "write -P 0x22 64k 64k" "write -P 0x23 0 4k" "write -z 8k 4k" abort
keep lazy-dirty
mk lazy_refcounts=on,cluster_size=512 256k
qemu-img snapshot -c s1 img.qcow2
io "write -P 0x24 0 8k" "discard 4k 1k" abort
keep lazy-dirty-snapshot
# Metadata preallocation, an empty disk, a zero-length disk.
mk preallocation=metadata,cluster_size=4096 512k; keep prealloc-metadata
mk cluster_size=65536 1M; keep empty
mk "" 0; keep size0
# Header fields lib refuses without a directory, but parses.
qemu-img create -q -f raw base.raw 1M
mk cluster_size=4096,backing_file=base.raw,backing_fmt=raw 1M
io "write -P 0x31 0 4k"; keep backing
rm -f data.raw
mk cluster_size=4096,data_file=data.raw 1M; keep data-file

# Written by qcow2j: a clean close, and a dirty journal.  Every change
# below is done in place (no cluster allocated), so with its journal
# area moved down to the end of the data and its trailing zeroes cut the
# file stays small; reads past the end of the file return zeroes, so the
# journal still replays.
if [ -f "$QCOW2J" ] && nbdkit --version >/dev/null 2>&1 &&
   nbdsh --version >/dev/null 2>&1; then
    sock=$tmp/sock
    # serve: start the plugin on img.qcow2.
    serve ()
    {
        rm -f "$sock"
        nbdkit -f -U "$sock" "$QCOW2J" file=img.qcow2 2>/dev/null &
        pid=$!
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
        [ -S "$sock" ]
    }
    # strip BEFORE: move the journal area down to the first aligned
    # offset at or past BEFORE bytes (the file's length before the
    # session: the plugin leaves a sparse gap as large as the disk below
    # the area, and a seed of 68 MiB is past the fuzzer's input limit),
    # rewriting the Q2JL extension's offset and CRC; then cut trailing
    # zero bytes (to a 512 boundary).  Transactions and superblocks hold
    # no host offset of the area, so they stay valid.
    strip ()
    {
        python3 - img.qcow2 "$1" <<'EOF'
import struct, sys
p, before = sys.argv[1], int(sys.argv[2])
d = bytearray(open(p, 'rb').read())

def crc32c(b):
    crc = 0xFFFFFFFF
    for x in b:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF

cs = 1 << struct.unpack('>I', d[20:24])[0]
pos, q2jl = struct.unpack('>I', d[100:104])[0], None
while pos + 8 <= cs:
    typ, length = struct.unpack('>II', d[pos:pos + 8])
    if typ == 0:
        break
    if typ == 0x51324A4C and length == 32:
        q2jl = pos + 8
    pos += 8 + (length + 7) // 8 * 8
if q2jl is not None:
    off, size = struct.unpack('>QQ', d[q2jl:q2jl + 16])
    align = max(cs, 4096)
    new = max(before, len(d[:off].rstrip(b'\0')))
    new = (new + align - 1) // align * align
    if 0 < new < off:
        area = d[off:off + size]
        d = d[:new] + bytes(new - len(d[:new])) + area
        d[q2jl:q2jl + 8] = struct.pack('>Q', new)
        d[q2jl + 28:q2jl + 32] = struct.pack('>I', crc32c(d[q2jl:q2jl + 28]))
end = len(d.rstrip(b'\0'))
end = (end + 511) // 512 * 512
open(p, 'wb').write(d[:end])
EOF
    }
    # journal NAME CS EXTL2 NBDSH-COMMANDS...: serve a prefilled image,
    # run the commands, each followed by a flush, kill -9 while the journal
    # is dirty.
    journal ()
    {
        local name=$1 cs=$2 extl2=$3 args=() c before
        shift 3
        mk cluster_size=$cs,extended_l2=$extl2 1M
        io "write -P 0x51 0 256k"
        before=$(stat -c %s img.qcow2)
        serve || { echo "seeds.sh: nbdkit did not start" >&2; return 0; }
        # A flush after each command: one transaction each.
        for c in "$@"; do args+=(-c "$c" -c 'h.flush()'); done
        nbdsh -u "nbd+unix:///?socket=$sock" "${args[@]}" ||
            echo "seeds.sh: nbdsh failed for $name" >&2
        kill -9 "$pid"; wait "$pid" 2>/dev/null || :; pid=
        if qemu-img info img.qcow2 >/dev/null 2>&1; then
            echo "seeds.sh: $name: the journal is not dirty" >&2
        fi
        strip "$before"
        keep "$name"
    }
    journal journal-dirty-c4k 4096 off \
        'h.zero(8192, 16384)' 'h.trim(4096, 65536)' \
        'h.pwrite(b"\x5a" * 3000, 70000)' \
        'h.zero(4096, 131072, nbd.CMD_FLAG_NO_HOLE)'
    journal journal-dirty-c512 512 off \
        'h.zero(1024, 2048)' 'h.trim(512, 8192)' 'h.zero(512, 20480)'
    journal journal-dirty-extl2 16384 on \
        'h.zero(512, 1024)' 'h.trim(16384, 32768)' \
        'h.zero(1536, 40960, nbd.CMD_FLAG_NO_HOLE)'

    # Clean: the plugin's header extension left behind by a clean close.
    mk cluster_size=4096 1M
    io "write -P 0x52 0 64k"
    if serve; then
        nbdsh -u "nbd+unix:///?socket=$sock" -c 'h.pwrite(b"\x53" * 4096, 8192)' \
            -c 'h.trim(4096, 16384)' -c 'h.flush()' || :
        kill -TERM "$pid"; wait "$pid" 2>/dev/null || :; pid=
        keep qcow2j-clean
    fi
else
    echo "seeds.sh: no plugin ($QCOW2J), nbdkit or nbdsh: no qcow2j-written seeds" >&2
fi

echo "seeds.sh: $n seeds in $out"
