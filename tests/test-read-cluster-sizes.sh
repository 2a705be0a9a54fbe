#!/usr/bin/env bash
# Read-only: content and extents for a range of cluster sizes, including a
# virtual size that is not a multiple of the cluster size.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

for cs in 512 4096 16384 65536 2097152; do
    img="$tmp/cs$cs.qcow2"
    size=$((32 * cs)); [ $size -lt $((4 << 20)) ] && size=$((4 << 20))
    qemu-img create -q -f qcow2 -o cluster_size=$cs "$img" $size
    scribble "$img" $cs
    check_image "$img"
done

# Virtual sizes that end part-way through a cluster (qemu-img needs
# multiples of 512).
for cs in 65536 2097152; do
    img="$tmp/odd$cs.qcow2"
    size=$((20 * cs + 3 * 512))
    qemu-img create -q -f qcow2 -o cluster_size=$cs "$img" $size
    scribble "$img" $cs
    qio "$img" "write -P 0xaa $((size - 1024)) 1024"
    check_image "$img"
done

# Tail cluster left unallocated, and one that is zero-flagged.
img="$tmp/oddtail.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=65536 "$img" $(((1 << 20) + 512))
qio "$img" "write -P 0x12 0 4096"
check_image "$img"
qio "$img" "write -z $((1 << 20)) 512"
check_image "$img"
