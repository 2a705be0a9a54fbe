#!/usr/bin/env bash
# Read-only: images with every refcount width qcow2 allows.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

for bits in 1 2 4 8 16 32 64; do
    for cs in 4096 65536; do
        img="$tmp/rc$bits-$cs.qcow2"
        qemu-img create -q -f qcow2 -o compat=1.1,refcount_bits=$bits,cluster_size=$cs \
                 "$img" $((64 * cs))
        scribble "$img" $cs
        if [ $bits -ge 2 ]; then
            # Shared clusters (refcount 2) after an internal snapshot, then
            # copy-on-write of some of them.
            qemu-img snapshot -c snap1 "$img"
            qio "$img" "write -P 0xc1 $((cs / 2)) $cs" \
                       "write -P 0xc2 $((40 * cs)) $((3 * cs))"
        fi
        check_image "$img"
    done
done
