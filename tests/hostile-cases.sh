# Sourced (after functions.sh) by test-hostile-metadata.sh (reads) and
# test-hostile-writes.sh (writes): the hostile L1/L2 entries and
# compressed clusters, crafted once for both.  Each class is an image
# whose header is valid (so the open succeeds) but one entry, or the
# compressed data it names, is broken.
#
#   hostile_cases [v2]
#                   craft every image in $tmp (version 2 images with
#                   "v2": without the classes version 2 cannot have,
#                   zstd compression and extended L2) and fill
#     HC_NAMES          the classes, in order; the first, "pristine", is
#                       the unpatched image (a control)
#     HC_IMG[NAME]      the crafted image (do not write it: copy it)
#     HC_MODE[NAME]     strict: a read of a BAD range must fail with EIO;
#                       lenient: metadata naming other metadata, where a
#                       read may fail or return anything (QEMU allows a
#                       read of metadata as data)
#     HC_BAD[NAME]      the ranges that depend on the broken entry,
#                       "OFF:LEN ..." (none for pristine)
#     HC_GOOD[NAME]     ranges that do not, "OFF:LEN:BYTE ..." (LEN
#                       copies of BYTE)
#     HC_CLUSTER[NAME]  the guest offset of the cluster the broken entry
#                       maps (the first BAD range starts there)
#
# Needs qemu-img and qemu-io; prints a line for a compression type that
# qemu-img cannot create (those classes are then left out).

_hc_patch="python3 $SRCDIR/tests/qcow2-patch.py"

declare -a HC_NAMES=()
declare -A HC_IMG=() HC_MODE=() HC_BAD=() HC_GOOD=() HC_CLUSTER=()

# _hc_add NAME IMG MODE CLUSTER BAD... -- GOOD...
_hc_add ()
{
    local name=$1 img=$2 mode=$3 cluster=$4 bad=() good=()
    shift 4
    while [ $# -gt 0 ] && [ "$1" != -- ]; do bad+=("$1"); shift; done
    shift
    good=("$@")
    HC_NAMES+=("$name")
    HC_IMG[$name]=$img
    HC_MODE[$name]=$mode
    HC_CLUSTER[$name]=$cluster
    HC_BAD[$name]="${bad[*]}"
    HC_GOOD[$name]="${good[*]}"
}

hostile_cases ()
{
    local C=65536 M=$((1024 * 1024))
    local TB=$((1 << 40)) OFLAG_COPIED=$((1 << 63))
    local P=$tmp/plain.qcow2 l1off rtoff l1_1 l2_3 ct img e omask hoff bm
    local v2=${1:-} compat= cts="zlib zstd"

    if [ "$v2" = v2 ]; then compat=,compat=0.10 cts=zlib; fi
    HC_NAMES=()
    HC_IMG=() HC_MODE=() HC_BAD=() HC_GOOD=() HC_CLUSTER=()

    # plain.qcow2: 1 GiB so that it has two L1 entries.  Under L1[0]:
    # clusters 0-15 = 0x11 except cluster 9 = 0x55, cluster 16 on
    # unallocated; under L1[1]: the cluster at 512M = 0x22.
    qemu-img create -q -f qcow2 -o cluster_size=$C$compat "$P" 1G
    qemu-io -f qcow2 -c 'write -q -P 0x11 0 1M' \
            -c 'write -q -P 0x22 512M 64k' -c 'write -q -P 0x55 576k 64k' \
            "$P" >/dev/null
    l1off=$($_hc_patch "$P" get l1_table_offset)
    rtoff=$($_hc_patch "$P" get refcount_table_offset)
    [ "$($_hc_patch "$P" get l1_size)" -ge 2 ] || fail "plain.qcow2 has only one L1 entry"
    l1_1=$($_hc_patch "$P" l1 1)
    l2_3=$($_hc_patch "$P" l2 0 3)

    # L1 classes: L1[1] patched, the cluster at 512M broken.
    local l1good=(0:$C:0x11 $((15 * C)):$C:0x11 $((16 * C)):$C:0 $((9 * C)):$C:0x55)
    # L2 classes: L2[0][3] patched, guest cluster 3 broken.
    local l2good=(0:$C:0x11 $((2 * C)):$C:0x11 $((4 * C)):$C:0x11 $((16 * C)):$C:0
                  $((512 * M)):$C:0x22)
    _l1case ()   # _l1case NAME MODE VALUE
    {
        cp "$P" "$tmp/$1.qcow2"
        $_hc_patch "$tmp/$1.qcow2" l1 1 "$3"
        _hc_add "$1" "$tmp/$1.qcow2" "$2" $((512 * M)) $((512 * M)):$C -- "${l1good[@]}"
    }
    _l2case ()   # _l2case NAME MODE VALUE
    {
        cp "$P" "$tmp/$1.qcow2"
        $_hc_patch "$tmp/$1.qcow2" l2 0 3 "$3"
        _hc_add "$1" "$tmp/$1.qcow2" "$2" $((3 * C)) \
                $((3 * C)):$C $((3 * C + 512)):512 -- "${l2good[@]}"
    }

    _hc_add pristine "$P" strict $((3 * C)) -- \
            0:$C:0x11 $((9 * C)):$C:0x55 $((512 * M)):$C:0x22 $((16 * C)):$C:0

    _l1case l1-reserved-bits     strict $((l1_1 | (1 << 56)))
    _l1case l1-reserved-low-bit  strict $((l1_1 | 1))
    _l1case l1-unaligned         strict $((l1_1 + 512))
    _l1case l1-past-eof          strict $((OFLAG_COPIED | TB))
    _l2case l2-reserved-bits     strict $((l2_3 | (1 << 56)))
    _l2case l2-reserved-low-bits strict $((l2_3 | 2))
    _l2case l2-unaligned         strict $((l2_3 + 512))
    _l2case l2-past-eof          strict $((OFLAG_COPIED | TB))
    # Metadata pointing at other metadata.
    _l1case l1-at-header-copied  lenient $OFLAG_COPIED
    _l1case l1-at-header-rsvd    lenient $((OFLAG_COPIED | 0x1ff))
    _l1case l1-at-l1-table       lenient $((OFLAG_COPIED | l1off))
    _l1case l1-at-refcount-table lenient $((OFLAG_COPIED | rtoff))
    _l2case l2-at-header         lenient $OFLAG_COPIED
    _l2case l2-at-l1-table       lenient $((OFLAG_COPIED | l1off))

    # Compressed clusters: cluster 0 and 1 compressed (0x66, 0x77),
    # cluster 2 plain (0x11); cluster 1's entry or data broken.
    for ct in $cts; do
        img=$tmp/comp-$ct.qcow2
        if [ "$v2" = v2 ]; then
            qemu-img create -q -f qcow2 -o cluster_size=$C$compat "$img" 64M
        elif ! qemu-img create -q -f qcow2 -o cluster_size=$C,compression_type=$ct "$img" 64M \
             2>/dev/null; then
            echo "skipping compression_type=$ct: qemu-img cannot create it"
            continue
        fi
        qemu-io -f qcow2 -c 'write -q -c -P 0x66 0 64k' -c 'write -q -c -P 0x77 64k 64k' \
                -c 'write -q -P 0x11 128k 64k' "$img" >/dev/null
        e=$($_hc_patch "$img" l2 0 1)
        [ $(( (e >> 62) & 1 )) -eq 1 ] || fail "comp-$ct.qcow2: cluster 1 is not compressed"
        # 64 KiB clusters: host offset is bits 0..53, sector count bits 54..61.
        omask=$(( (1 << 54) - 1 ))
        hoff=$((e & omask))

        cp "$img" "$tmp/comp-$ct-past-eof.qcow2"
        $_hc_patch "$tmp/comp-$ct-past-eof.qcow2" l2 0 1 $(( (e & ~omask) | TB ))
        _hc_add comp-$ct-past-eof "$tmp/comp-$ct-past-eof.qcow2" strict $C $C:$C -- \
                0:$C:0x66 $((2 * C)):$C:0x11 $((3 * C)):$C:0

        cp "$img" "$tmp/comp-$ct-garbage.qcow2"
        $_hc_patch "$tmp/comp-$ct-garbage.qcow2" poke $hoff ffffffffffffffffffffffffffffffff
        _hc_add comp-$ct-garbage "$tmp/comp-$ct-garbage.qcow2" strict $C $C:$C -- \
                0:$C:0x66 $((2 * C)):$C:0x11 $((3 * C)):$C:0
    done

    # Extended L2: clusters 0 and 1 = 0x66 (all 32 subclusters
    # allocated); set the zero bit of subcluster 0 of cluster 1 as well:
    # that subcluster is invalid.
    if [ "$v2" = v2 ]; then
        unset -f _l1case _l2case
        return 0
    fi
    img=$tmp/extl2.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=$C,extended_l2=on "$img" 64M
    qemu-io -f qcow2 -c 'write -q -P 0x66 0 128k' "$img" >/dev/null
    bm=$($_hc_patch "$img" l2bitmap 0 1)
    [ $((bm & 1)) -eq 1 ] || fail "extl2.qcow2: subcluster 0 of cluster 1 not allocated"
    $_hc_patch "$img" l2bitmap 0 1 $((bm | (1 << 32)))
    _hc_add extl2-alloc-and-zero "$img" strict $C $C:2048 $C:$C -- \
            0:$C:0x66 $((2 * C)):$C:0

    unset -f _l1case _l2case
}
