#!/usr/bin/env bash
# Read-only: preallocated images (metadata, falloc, full), fresh and after
# writes, zero writes and discards.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

for prealloc in metadata falloc full; do
    for cs in 4096 65536 2097152; do
        img="$tmp/p-$prealloc-$cs.qcow2"
        size=$((16 * cs)); [ $size -lt $((8 << 20)) ] && size=$((8 << 20))
        qemu-img create -q -f qcow2 -o preallocation=$prealloc,cluster_size=$cs \
                 "$img" $size
        check_image "$img"
        scribble "$img" $cs
        check_image "$img"
    done
done

# Preallocated overlay over a backing file with data (qemu needs
# extended_l2=on for that): the clusters are allocated in the overlay but
# their subclusters are not, so the backing file still shows through
# until written.
base="$tmp/p-base.qcow2"
qemu-img create -q -f qcow2 "$base" 4M
qio "$base" "write -P 0xbb 0 4M"
for prealloc in metadata falloc; do
    top="$tmp/p-top-$prealloc.qcow2"
    qemu-img create -q -f qcow2 -o preallocation=$prealloc,extended_l2=on -b "$base" -F qcow2 "$top" 4M
    qio "$top" "write -P 0x91 65536 4096" "write -z 1M 65536"
    check_image "$top"
done
