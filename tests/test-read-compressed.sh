#!/usr/bin/env bash
# Read-only: compressed clusters (zlib and zstd) of several cluster sizes,
# mixing compressible and incompressible (random) data, plus compressed
# clusters later overwritten, zeroed and discarded.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

# A raw source: random, zero, patterned and text runs of assorted lengths,
# many of them not cluster aligned.  Ends part-way through a 64k cluster.
raw="$tmp/src.raw"
size=$(( 12 * 1048576 + 3 * 512 ))
python3 - "$raw" $size <<'PY'
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
M = 1048576
with open(path, 'wb') as f:
    f.truncate(size)
    def put(off, data):
        f.seek(off); f.write(data)
    put(0, os.urandom(M))
    put(M, (b'qcow2j compressed cluster test line\n' * 50000)[:1500000])
    put(3000000, os.urandom(12345))
    put(4 * M, bytes(range(256)) * 8192)
    put(6 * M + 1000, os.urandom(4096))
    put(7 * M, ''.join('%d\n' % i for i in range(400000)).encode()[:2500000])
    put(10 * M, os.urandom(2 * M))
    put(size - 1536, os.urandom(1536))
PY

types="zlib"
if qemu-img create -q -f qcow2 -o compression_type=zstd "$tmp/probe.qcow2" 1M 2>/dev/null; then
    types="zlib zstd"
else
    echo "note: this qemu-img cannot create zstd images; zlib only"
fi

for ct in $types; do
    for cs in 4096 65536 2097152; do
        img="$tmp/c-$ct-$cs.qcow2"
        # Each small read of a compressed cluster may decompress all of it:
        # keep the number of reads per 2M cluster modest.
        CHECK_REQUEST_SIZE=$(( cs >= 2097152 ? 262144 : 4096 ))
        qemu-img convert -c -f raw -O qcow2 \
                 -o compression_type=$ct,cluster_size=$cs "$raw" "$img"
        check_image "$img"

        # Overwrite parts of compressed clusters (copy-on-write to normal
        # clusters), zero and discard some, write a full compressed cluster
        # with qemu-io write -c over previously uncompressed data.
        qio "$img" \
            "write -P 0xe1 100 1000" \
            "write -P 0xe2 $((2 * cs)) $cs" \
            "write -z $((1048576 + cs)) $cs" \
            "write -z -u $((1048576 + 3*cs)) $cs" \
            "discard $((4194304)) $cs" \
            "write -P 0xe3 $((7 * 1048576 + cs/2)) $((cs/4))" \
            "discard $((6 * 1048576)) $cs" \
            "write -c -P 0xe4 $((6 * 1048576)) $cs" \
            "discard $((10 * 1048576)) $cs" \
            "write -c -P 0xe5 $((10 * 1048576)) $cs"
        check_image "$img"
    done
done

# Compressed base with a non-compressed overlay.
base="$tmp/c-zlib-65536.qcow2"
top="$tmp/c-top.qcow2"
qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$top"
qio "$top" "write -P 0xf1 $((3 * 1048576 + 512)) 70000" \
           "write -z 0 65536" \
           "write -c -P 0xf2 $((5 * 1048576)) 65536"
check_image "$top"
