#!/usr/bin/env bash
# Read-only: compat=0.10 (version 2) images, which have no zero flag:
# write -z writes real zeroes (or deallocates when nothing shows through).
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

for cs in 4096 65536 2097152; do
    img="$tmp/v2-$cs.qcow2"
    qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=$cs "$img" $((24 * cs))
    scribble "$img" $cs
    check_image "$img" readonly=true
done

# v2 overlay on a v2 base: zero writes over backing data must read as
# zeroes (qemu has to allocate and write zeroes since v2 has no zero flag).
base="$tmp/v2base.qcow2"
top="$tmp/v2top.qcow2"
qemu-img create -q -f qcow2 -o compat=0.10 "$base" 4M
qio "$base" "write -P 0xb1 0 4M"
qemu-img create -q -f qcow2 -o compat=0.10 -b "$base" -F qcow2 "$top"
qio "$top" "write -P 0x21 65536 4096" \
           "write -z 131072 65536" \
           "write -z -u 262144 65536" \
           "write -z 400000 1000" \
           "discard 1048576 131072" \
           "write -P 0x22 $((4*1048576 - 512)) 512"
check_image "$top" readonly=true

# v2 with an internal snapshot.
img="$tmp/v2snap.qcow2"
qemu-img create -q -f qcow2 -o compat=0.10 "$img" 2M
qio "$img" "write -P 0x31 0 1M"
qemu-img snapshot -c s1 "$img"
qio "$img" "write -P 0x32 65536 65536" "write -z 524288 65536"
check_image "$img" readonly=true
