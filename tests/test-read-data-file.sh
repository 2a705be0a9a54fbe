#!/usr/bin/env bash
# Read-only: external data files (-o data_file=NAME), with and without
# data_file_raw=on.
#
# qemu 7.2 resolves a relative data file name against its current
# directory, not the image's directory (unlike backing file names), so the
# main cases use absolute names and run from another directory, and the
# relative-name case runs from the image's own directory, where both
# interpretations agree.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

mkdir -p "$tmp/img" "$tmp/elsewhere"
cd "$tmp/elsewhere"

for raw in off on; do
    for cs in 4096 65536; do
        img="$tmp/img/df-$raw-$cs.qcow2"
        qemu-img create -q -f qcow2 \
                 -o data_file="$tmp/img/df-$raw-$cs.data",data_file_raw=$raw,cluster_size=$cs \
                 "$img" $((40 * cs))
        check_image "$img"
        scribble "$img" $cs
        check_image "$img"
    done
done

# data_file_raw=on: the data file is the guest disk, byte for byte; writes
# made directly to it show through the qcow2 image.
img="$tmp/img/df-on-65536.qcow2"
qemu-io -f raw -c "write -P 0xd1 $((30 * 65536 + 100)) 3000" \
        -c "write -P 0xd2 $((39 * 65536)) 65536" \
        "$tmp/img/df-on-65536.data" >/dev/null
check_image "$img"

# A data file in another directory.
mkdir -p "$tmp/data"
img="$tmp/img/df-abs.qcow2"
qemu-img create -q -f qcow2 -o data_file="$tmp/data/abs.data" "$img" 4M
qio "$img" "write -P 0xd3 0 100000" "write -z 200000 100000" "write -P 0xd4 3M 65536"
check_image "$img"

# A relative data file name, served from the image's directory.
cd "$tmp/img"
for raw in off on; do
    qemu-img create -q -f qcow2 -o data_file=rel-$raw.data,data_file_raw=$raw \
             rel-$raw.qcow2 4M
    qio rel-$raw.qcow2 "write -P 0xd5 4096 100000" "write -z 1M 65536"
    check_image "$tmp/img/rel-$raw.qcow2"
done
