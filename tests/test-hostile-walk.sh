#!/usr/bin/env bash
# Tables that name places outside the file (or data in the image's own
# metadata), on an image whose refcounts
# QEMU left stale (lazy refcounts, its dirty bit set): qcow2j must count
# every reference before its first write (lib/walk.c walks every table,
# strict), so each such reference is refused at the writable open, naming
# the field and its value, with the image left byte for byte as it was.
# The honest image of the same shape (a snapshot, a persistent bitmap)
# is rebuilt, written and passes qemu-img check.  Then the same hostile
# references on an image with trustworthy refcounts: served, the honest
# ranges readable and writable, nothing refused but I/O through them.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires python3 -c 'import nbd'
cd "$tmp"

patch="python3 $SRCDIR/tests/qcow2-patch.py"
C=65536
COPIED=$((1 << 63))
PAST=$((1 << 40))               # far past the end of any file here

u64 () { echo $((0x$($patch "$1" peek "$2" 8))); }
ext_data () { $patch "$1" ext-list | awk -v t="$2" '$2 == t { print $4 + 8 }'; }

# A 4 GiB disk (L1 entries 1.. unused), data in guest cluster 0 and at
# 1 GiB, a snapshot, a persistent bitmap with set bits (so its table
# names a data cluster), refcounts left stale by an aborted QEMU.
make_image ()                   # make_image IMG LAZY
{
    qemu-img create -q -f qcow2 -o cluster_size=$C,lazy_refcounts=$2 "$1" 4G
    qemu-io -f qcow2 -c "write -P 0x11 0 $C" -c "write -P 0x12 1G $C" "$1" >/dev/null
    qemu-img snapshot -c s1 "$1"
    qemu-img bitmap --add "$1" b0
    qemu-io -f qcow2 -c "write -P 0x13 2M $C" "$1" >/dev/null
    if [ "$2" = on ]; then
        qemu-io -f qcow2 -c "write -P 0x14 0 $C" -c "write -P 0x15 3M $C" \
            -c abort "$1" >/dev/null 2>&1 || :
        [ $(( $($patch "$1" get incompatible_features) & 1 )) = 1 ] ||
            fail "QEMU left no dirty bit on $1"
    fi
}

snap_l1 () { u64 "$1" "$($patch "$1" get snapshots_offset)"; }
bitmap_table ()
{
    local dir
    dir=$(u64 "$1" $(( $(ext_data "$1" 0x23852875) + 16 )))
    u64 "$1" "$dir"
}

# corrupt IMG KIND: one hostile reference; prints what the refusal says.
corrupt ()
{
    local f=$1 l2
    case "$2" in
        l1-past-eof)
            $patch "$f" l1 2 $((COPIED | PAST)) >/dev/null
            echo "L1 entry 2: L2 table 0x$(printf %x $PAST)" ;;
        l1-misaligned)
            $patch "$f" l1 2 $((COPIED | 3 * C + 512)) >/dev/null
            echo "L1 entry 2: L2 table 0x$(printf %x $((3 * C + 512))) (65536 bytes) is not aligned" ;;
        l2-past-eof)
            l2=$($patch "$f" l2-offset 0)
            $patch "$f" l2 0 5 $((COPIED | PAST)) >/dev/null
            echo "L2 table 0x$(printf %x "$l2"): entry 5: data cluster 0x$(printf %x $PAST)" ;;
        l2-names-reftable)
            l2=$($patch "$f" l2-offset 0)
            rt=$($patch "$f" get refcount_table_offset)
            $patch "$f" l2 0 5 $((COPIED | rt)) >/dev/null
            echo "L2 table 0x$(printf %x "$l2"): entry 5: data cluster 0x$(printf %x "$rt") overlaps the refcount table" ;;
        snapl1-past-eof)
            l2=$(snap_l1 "$f")
            $patch "$f" poke $((l2 + 16)) "$(printf %016x $PAST)" >/dev/null
            echo "snapshot 0: L1 entry 2: L2 table 0x$(printf %x $PAST)" ;;
        bitmap-data-past-eof)
            l2=$(bitmap_table "$f")
            $patch "$f" poke "$l2" "$(printf %016x $PAST)" >/dev/null
            echo "bitmap 0: table entry 0: bitmap data 0x$(printf %x $PAST)" ;;
    esac
}

# serve IMG: write a cluster at 64 MiB and read guest cluster 0 back.
serve ()
{
    nbdkit -U - "$QCOW2J" file="$1" --run 'nbdsh -u "$uri" -c "
h.pwrite(b\"\\x21\" * 65536, 64 << 20)
assert h.pread(65536, 64 << 20) == b\"\\x21\" * 65536
h.flush()
"'
}

# --- the honest image: rebuilt, written, clean --------------------------
make_image good.qcow2 on
cp good.qcow2 lazy-base.qcow2
serve good.qcow2 > serve.log 2>&1 || { cat serve.log; fail "honest image not served"; }
qemu-img check good.qcow2 > check.log 2>&1 || { cat check.log; fail "honest image: check"; }
echo "ok: a QEMU-dirty image with a snapshot and a bitmap: rebuilt, written, clean"

# --- hostile references with stale refcounts: refused, image unchanged --
for kind in l1-past-eof l1-misaligned l2-past-eof l2-names-reftable \
            snapl1-past-eof bitmap-data-past-eof; do
    f=$kind.qcow2
    cp lazy-base.qcow2 "$f"
    want=$(corrupt "$f" "$kind")
    cp "$f" before.qcow2
    rc=0; serve "$f" > serve.log 2>&1 || rc=$?
    [ $rc != 0 ] || { cat serve.log; fail "$kind: a write was accepted"; }
    grep -qF "$want" serve.log ||
        { cat serve.log; fail "$kind: the refusal does not say: $want"; }
    grep -q "corrupt image" serve.log ||
        { cat serve.log; fail "$kind: the refusal does not say the image is corrupt"; }
    cmp -s "$f" before.qcow2 || fail "$kind: the refused image was changed"
    echo "ok: $kind: refused unchanged: $(grep -oF "$want" serve.log | head -1)"
done

# --- the same references with trustworthy refcounts: served -------------
make_image trusted.qcow2 off
for kind in l1-past-eof snapl1-past-eof bitmap-data-past-eof; do
    f=trusted-$kind.qcow2
    cp trusted.qcow2 "$f"
    corrupt "$f" "$kind" >/dev/null
    serve "$f" > serve.log 2>&1 || { cat serve.log; fail "$kind: not served"; }
    echo "ok: $kind with trustworthy refcounts: served"
done
