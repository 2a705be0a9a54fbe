#!/usr/bin/env bash
# Read-only: extended L2 entries (32 subclusters per cluster): subcluster
# allocation, subcluster zero bits, discard, and unallocated subclusters
# showing the backing file through.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

# subcluster_writes IMG CS: writes at subcluster granularity.
subcluster_writes ()
{
    local img=$1 cs=$2 sc=$(( $2 / 32 ))
    qio "$img" \
        "write -P 0x11 0 $sc" \
        "write -P 0x12 $((2*sc)) $sc" \
        "write -P 0x13 $((31*sc)) $sc" \
        "write -P 0x14 $((cs + 5*sc + 100)) 300" \
        "write -P 0x15 $((2*cs - sc/2)) $sc" \
        "write -P 0x16 $((3*cs)) $cs" \
        "write -z $((3*cs + 4*sc)) $((3*sc))" \
        "write -z -u $((3*cs + 10*sc)) $sc" \
        "discard $((3*cs + 20*sc)) $((2*sc))" \
        "write -z $((5*cs + 7*sc)) $sc" \
        "write -z -u $((6*cs)) $cs" \
        "write -P 0x17 $((7*cs + 3*sc)) $((40*sc))" \
        "discard $((8*cs)) $sc" \
        "write -P 0x18 $((10*cs + 1)) $((sc - 2))" \
        "write -z $((10*cs + sc/2)) 512"
}

for cs in 16384 65536 2097152; do
    img="$tmp/xl2-$cs.qcow2"
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs "$img" $((16 * cs))
    subcluster_writes "$img" $cs
    check_image "$img"
    scribble "$img" $cs
    check_image "$img"

    # Over a backing file full of data: unallocated subclusters read the
    # backing, zero subclusters read zero.
    base="$tmp/xl2base-$cs.qcow2"
    top="$tmp/xl2top-$cs.qcow2"
    qemu-img create -q -f qcow2 -o cluster_size=65536 "$base" $((16 * cs))
    qio "$base" "write -P 0xb0 0 $((16 * cs))" "write -z $((9*cs)) $cs"
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs \
             -b "$base" -F qcow2 "$top"
    subcluster_writes "$top" $cs
    check_image "$top"

    # Extended-L2 base under an extended-L2 overlay.
    top2="$tmp/xl2top2-$cs.qcow2"
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs \
             -b "$img" -F qcow2 "$top2"
    qio "$top2" "write -P 0xd1 $((cs/32)) $((cs/32))" \
                "write -z $((cs + 5*cs/32)) $((cs/32))" \
                "discard $((4*cs)) $((cs/16))"
    check_image "$top2"
done
