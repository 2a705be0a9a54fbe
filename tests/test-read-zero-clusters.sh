#!/usr/bin/env bash
# Read-only: zero clusters.  Zero-plain (zero flag, no host cluster) and
# zero-alloc (zero flag with a host cluster that still holds old, non-zero
# bytes: these must read as zeroes, never as the stale data), partial-cluster
# zero writes, discards, metadata-preallocated images and zero clusters
# hiding backing-file data.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

for cs in 4096 65536; do
    img="$tmp/z-$cs.qcow2"
    qemu-img create -q -f qcow2 -o cluster_size=$cs "$img" $((32 * cs))
    # Fill with non-zero data first so that zero-alloc clusters keep stale
    # bytes in their host clusters.
    qio "$img" "write -P 0x5a 0 $((24 * cs))"
    qio "$img" \
        "write -z $((1*cs)) $cs" \
        "write -z -u $((2*cs)) $cs" \
        "write -z $((4*cs)) $((3*cs))" \
        "write -z -u $((8*cs)) $((2*cs))" \
        "write -z $((11*cs + 512)) 1024" \
        "write -z -u $((12*cs + cs/2)) $cs" \
        "discard $((14*cs)) $cs" \
        "discard $((15*cs + 512)) 512" \
        "write -z $((26*cs)) $cs" \
        "write -z -u $((27*cs)) $cs" \
        "discard $((28*cs)) $cs"
    check_image "$img"

    # Rewrite part of a zero-alloc and a zero-plain cluster.
    qio "$img" "write -P 0x6b $((1*cs + 1024)) 512" \
               "write -P 0x6c $((2*cs)) 512"
    check_image "$img"

    # Make sure the stale bytes really are still in the file, i.e. that the
    # test above exercised zero-alloc clusters with non-zero host data.
    if ! qemu-img map --output=json "$img" | grep -c '"zero": true, "data": false, "offset"' >/dev/null; then
        echo "note: qemu-img made no zero-alloc clusters with cluster size $cs"
    fi
done

# preallocation=metadata: every cluster allocated, then zeroed, written,
# discarded.
img="$tmp/zmeta.qcow2"
qemu-img create -q -f qcow2 -o preallocation=metadata "$img" 4M
check_image "$img"
qio "$img" "write -P 0x71 0 1M" \
           "write -z 65536 65536" \
           "write -z -u 196608 65536" \
           "discard 327680 131072" \
           "write -P 0x72 2M 1000" \
           "write -z 3M 1M"
check_image "$img"

# Zero clusters over backing data must read zero (the zero flag hides the
# backing file); unallocated clusters show the backing.
base="$tmp/zbase.qcow2"
top="$tmp/ztop.qcow2"
qemu-img create -q -f qcow2 "$base" 2M
qio "$base" "write -P 0xba 0 2M"
qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$top"
qio "$top" "write -z 0 65536" \
           "write -z -u 131072 65536" \
           "write -P 0x81 262144 65536" \
           "write -z 262144 65536" \
           "write -P 0x82 393216 65536" \
           "write -z -u 393216 65536" \
           "discard 524288 65536" \
           "write -z 655360 4096" \
           "write -z 800000 1000"
check_image "$top"
