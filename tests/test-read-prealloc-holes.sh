#!/usr/bin/env bash
# Holes under allocated clusters (preallocation=metadata, also with an
# external data file and with extended L2): block status reports them as
# zero, exactly as qemu-nbd does, so nbdcopy neither reads nor writes
# them.  An ordinary image (clusters QEMU wrote in part) keeps qemu-nbd's
# map too: its unwritten cluster tails are not split off.  Then a write
# session on a preallocated image: what it wrote is data, the rest still
# zero, and qemu-img check and compare agree.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
requires nbdcopy --version
requires python3 -c 'import nbd'
cd "$tmp"

# map IMG: nbdinfo --map through qcow2j (read-only), "start length type".
map_qcow2j ()
{
    nbdkit -U - "$QCOW2J" file="$1" readonly=true \
        --run 'nbdinfo --map "$uri"' | awk '{ print $1, $2, $3 }'
}
map_qemu ()
{
    local sock=$tmp/qemu.sock
    rm -f "$sock"
    qemu-nbd -t --shared=0 -r -f qcow2 -k "$sock" "$1" &
    local pid=$!
    for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    nbdinfo --map "nbd+unix:///?socket=$sock" | awk '{ print $1, $2, $3 }'
    kill $pid; wait $pid 2>/dev/null || :
}
same_map ()                     # same_map NAME IMG
{
    map_qcow2j "$2" > "$1.q"
    map_qemu "$2" > "$1.qemu"
    diff -u "$1.qemu" "$1.q" > "$1.diff" ||
        { head -20 "$1.diff"; fail "$1: the map differs from qemu-nbd's"; }
    echo "ok: $1: map as qemu-nbd's ($(wc -l < "$1.q") extents, $(grep -c ' 2$' "$1.q" || :) zero)"
}

writes=(-c 'write -P 0x51 1M 64k' -c 'write -P 0x52 5M 4k' -c 'write -z 9M 64k')

qemu-img create -q -f qcow2 -o preallocation=metadata pm.qcow2 64M
qemu-io -f qcow2 "${writes[@]}" pm.qcow2 >/dev/null
same_map prealloc pm.qcow2
grep -q '^0 1048576 2$' prealloc.q || fail "prealloc: the hole before the data is not zero"

qemu-img create -q -f qcow2 -o preallocation=metadata,extended_l2=on pmx.qcow2 64M
qemu-io -f qcow2 "${writes[@]}" pmx.qcow2 >/dev/null
same_map prealloc-extended-l2 pmx.qcow2

# With an external data file qemu-nbd reports everything as data (QEMU
# asks only the image file for holes); the holes of the data file read as
# zeroes all the same, so qcow2j reports them as it does in the image file.
qemu-img create -q -f qcow2 -o preallocation=metadata,data_file=pmd.raw pmd.qcow2 64M
qemu-io -f qcow2 "${writes[@]}" pmd.qcow2 >/dev/null
map_qcow2j pmd.qcow2 > prealloc-data-file.q
for ext in '1048576 65536 0' '5242880 4096 0' '9437184 65536 3'; do
    grep -q "^$ext\$" prealloc-data-file.q ||
        { cat prealloc-data-file.q; fail "data file: no extent $ext"; }
done
grep -q '^1114112 4128768 2$' prealloc-data-file.q ||
    { cat prealloc-data-file.q; fail "data file: its hole is not reported zero"; }
qemu-img convert -O raw pmd.qcow2 pmd-ref.raw
nbdkit -U - "$QCOW2J" file=pmd.qcow2 readonly=true \
    --run 'nbdcopy "$uri" pmd-copy.raw'
cmp pmd-ref.raw pmd-copy.raw || fail "nbdcopy of the data-file image differs"
echo "ok: prealloc-data-file: the data file's holes reported zero, content equal"

# An ordinary image of clusters written in part, in random order.
qemu-img create -q -f qcow2 ord.qcow2 256M
python3 -c '
import random
r = random.Random(7); c = list(range(4096)); r.shuffle(c)
for i in c[:1500]: print("write -q -P 7 %d 4k" % (i * 65536))' |
    qemu-io -f qcow2 ord.qcow2 >/dev/null
same_map ordinary ord.qcow2

# nbdcopy skips the zeroes and copies the data.
qemu-img convert -O raw pm.qcow2 pm-ref.raw
nbdkit -U - "$QCOW2J" file=pm.qcow2 readonly=true \
    --run 'nbdcopy "$uri" pm-copy.raw'
cmp pm-ref.raw pm-copy.raw || fail "nbdcopy of the preallocated image differs"
used=$(du -k pm-copy.raw | cut -f1)
[ "$used" -lt 1024 ] || fail "nbdcopy wrote the zeroes: $used KiB used"
echo "ok: nbdcopy: same content, $used KiB written"

# A write session on the preallocated image.
nbdkit -U - "$QCOW2J" file=pm.qcow2 --run 'nbdsh -u "$uri" -c "
h.pwrite(b\"\\x61\" * 65536, 20 << 20)
h.pwrite(b\"\\x62\" * 512, 30 << 20)
h.flush()
"'
qemu-img check -q pm.qcow2 || fail "check after writing"
qemu-io -f raw -c 'write -P 0x61 20M 64k' -c 'write -P 0x62 30M 512' pm-ref.raw >/dev/null
qemu-img compare -q pm.qcow2 pm-ref.raw || fail "compare after writing"
same_map prealloc-written pm.qcow2
grep -q '^20971520 65536 0$' prealloc-written.q || fail "the write is not data"
