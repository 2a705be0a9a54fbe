#!/usr/bin/env bash
# create=true takes qemu-img's creation options: a backing file and its
# format (the size then defaults to the backing file's), refcount width,
# extended L2 entries, compression type, lazy refcounts, preallocation
# (off, metadata, falloc, full), and the sizes qemu-img takes (0, rounded
# up to 512).  Each image is one qemu-img info describes as asked, qemu-img
# check passes, and, with preallocation, one qemu-img map lays out as it
# lays out its own.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires nbdsh --version
requires python3 -c 'import json'
cd "$tmp"

# make NAME PARAMS...: create NAME with qcow2j, write 4 KiB at 64 KiB
# through it (unless the disk is too small), check it.
make ()
{
    local name=$1
    shift
    rm -f "$name"
    nbdkit -U - "$QCOW2J" file="$name" create=true "$@" \
        --run 'nbdsh -u "$uri" -c "
if h.get_size() >= 69632:
    h.pwrite(b\"\\x3c\" * 4096, 65536)
    h.flush()"' || fail "create $name $*"
    qemu-img check -q "$name" || fail "qemu-img check $name ($*)"
}
# field NAME KEY: a field of qemu-img info --output=json (format-specific
# ones by their name under data).
field ()
{
    qemu-img info --output=json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)
k = sys.argv[1]
v = d.get(k, d["format-specific"]["data"].get(k))
print(str(v).lower())' "$2"
}
expect ()
{
    local got
    got=$(field "$1" "$2")
    [ "$got" = "$3" ] || fail "$1: $2 is $got, not $3"
}

# Sizes: 0, and rounded up to 512 as qemu-img does.
make zero.qcow2 size=0
expect zero.qcow2 virtual-size 0
make odd.qcow2 size=1000
expect odd.qcow2 virtual-size 1024

# Refcount widths, cluster sizes.
for bits in 1 2 4 8 16 32 64; do
    make rc$bits.qcow2 size=8M refcount-bits=$bits cluster-size=4K
    expect rc$bits.qcow2 refcount-bits $bits
    expect rc$bits.qcow2 cluster-size 4096
done

make ext.qcow2 size=8M extended-l2=true
expect ext.qcow2 extended-l2 true
make zstd.qcow2 size=8M compression-type=zstd lazy-refcounts=true
expect zstd.qcow2 compression-type zstd
expect zstd.qcow2 lazy-refcounts true
make plain.qcow2 size=8M compression-type=zlib lazy-refcounts=false
expect plain.qcow2 compression-type zlib
expect plain.qcow2 lazy-refcounts false
expect plain.qcow2 refcount-bits 16

# A backing file: its data shows through, and its size is the default.
qemu-img create -q -f qcow2 base.qcow2 12M
qemu-io -f qcow2 -c 'write -P 0x7b 0 12M' base.qcow2 >/dev/null
make top.qcow2 backing-file=base.qcow2 backing-format=qcow2
expect top.qcow2 backing-filename base.qcow2
expect top.qcow2 backing-filename-format qcow2
expect top.qcow2 virtual-size $((12 << 20))
qemu-io -f qcow2 -c 'read -P 0x7b 0 64k' -c 'read -P 0x3c 64k 4k' \
    -c 'read -P 0x7b 68k 1M' top.qcow2 >/dev/null || fail "top.qcow2: content"
make small-top.qcow2 backing-file=base.qcow2 backing-format=qcow2 size=4M
expect small-top.qcow2 virtual-size $((4 << 20))
truncate -s 3M base.raw
make rawtop.qcow2 backing-file=base.raw backing-format=raw
expect rawtop.qcow2 backing-filename-format raw
expect rawtop.qcow2 virtual-size $((3 << 20))
# Refused as qemu-img refuses: no such backing file, no format, and
# preallocation over a backing file without extended L2 entries.
! nbdkit -U - "$QCOW2J" file=x.qcow2 create=true backing-file=none.qcow2 \
    backing-format=qcow2 --run true 2>err || fail "a missing backing file"
grep -q 'none.qcow2: No such file' err || fail "missing backing: $(cat err)"
! nbdkit -U - "$QCOW2J" file=x.qcow2 create=true backing-file=base.qcow2 \
    preallocation=metadata backing-format=qcow2 --run true 2>err || fail "prealloc over backing"
grep -q 'extended L2' err || fail "prealloc over backing: $(cat err)"
[ ! -e x.qcow2 ] || fail "a refused create left a file"
make pretop.qcow2 backing-file=base.qcow2 backing-format=qcow2 \
    preallocation=metadata extended-l2=true
qemu-io -f qcow2 -c 'read -P 0x7b 0 64k' -c 'read -P 0x3c 64k 4k' \
    -c 'read -P 0x7b 1M 1M' pretop.qcow2 >/dev/null || fail "pretop.qcow2: content"

# Preallocation: the same map as qemu-img's own image (host offsets
# aside), the data reads as zeroes, and falloc and full take the space.
map ()
{
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    e.pop("offset", None)
    print(e)'
}
for mode in metadata falloc full; do
    for ext in false true; do
        opts="preallocation=$mode,extended_l2=$([ $ext = true ] && echo on || echo off)"
        qemu-img create -q -f qcow2 -o "$opts" theirs.qcow2 10M
        rm -f ours.qcow2
        nbdkit -U - "$QCOW2J" file=ours.qcow2 create=true size=10M \
            preallocation=$mode extended-l2=$ext --run true
        qemu-img check -q ours.qcow2 || fail "$opts: qemu-img check"
        [ "$(map ours.qcow2)" = "$(map theirs.qcow2)" ] ||
            fail "$opts: maps differ: $(map ours.qcow2) / $(map theirs.qcow2)"
        qemu-img compare -q ours.qcow2 theirs.qcow2 || fail "$opts: content"
        used=$(( $(stat -c %b ours.qcow2) * $(stat -c %B ours.qcow2) ))
        case $mode in
            metadata) [ $used -lt $((2 << 20)) ] || fail "$opts: $used bytes used" ;;
            *) [ $used -ge $((10 << 20)) ] || fail "$opts: only $used bytes used" ;;
        esac
    done
done
# Served, preallocated images read and write as any other.
make pre.qcow2 size=10M preallocation=metadata cluster-size=512 refcount-bits=4
qemu-io -f qcow2 -c 'read -P 0 0 64k' -c 'read -P 0x3c 64k 4k' pre.qcow2 >/dev/null ||
    fail "pre.qcow2: content"
