#!/usr/bin/env bash
# Guest I/O through L2 entries that name the image's own metadata: the
# L1 table, an L2 table, the refcount table, a refcount block, the
# snapshot table, a snapshot's L1 table, the bitmap directory, a bitmap
# table; and space past the end of the file (where a power cut can leave
# an entry, and where the session's new clusters and journal go: an entry
# may name only a cluster the session allocated there).
# A write, a zero and a trim through each must fail with EIO, say what it
# prevented, change none of the metadata the entry names (nor the
# journal), and leave the image marked corrupt (as QEMU does) and still
# readable.  A read through an entry naming space past the end of the file
# fails too (a read of other metadata is harmless, and QEMU allows it).  The same I/O on an honest cluster of the same image
# succeeds first, so the refusals are not the image's fault.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires qemu-img --version
requires qemu-io --version
requires python3 -c 'import nbd'
cd "$tmp"

patch="python3 $SRCDIR/tests/qcow2-patch.py"
C=65536
COPIED=$((1 << 63))

# Guest cluster 0 honest data (0x11); cluster 1 is the one patched.
base ()
{
    qemu-img create -q -f qcow2 -o cluster_size=$C "$1" 16M
    qemu-io -f qcow2 -c "write -P 0x11 0 $C" -c "write -P 0x22 $C $C" \
        "$1" >/dev/null
}

# The data of the header extension of type $2 (hex), as a byte offset.
ext_data ()
{
    $patch "$1" ext-list | awk -v t="$2" '$2 == t { print $4 + 8 }'
}
# The 8-byte big-endian number at byte $2 of the file.
u64 ()
{
    echo $((0x$($patch "$1" peek "$2" 8)))
}

# prepare IMG KIND: what the image needs for KIND to exist.
prepare ()
{
    case "$2" in
        snaptable|snapl1) qemu-img snapshot -c s1 "$1" ;;
        bitmapdir|bitmaptable)
            # A first session sets a bit, so that the bitmap has a data
            # cluster (it changes then, not later).
            qemu-img bitmap --add "$1" b0
            nbdkit -U - "$QCOW2J" file="$1" \
                --run 'nbdsh -u "$uri" -c "h.pwrite(b\"\x11\" * 4096, 0)"' ;;
    esac
}

target ()                       # target IMG KIND: a host offset
{
    local size
    case "$2" in
        l1) $patch "$1" get l1_table_offset ;;
        l2) $patch "$1" l2-offset 0 ;;
        reftable) $patch "$1" get refcount_table_offset ;;
        refblock) u64 "$1" "$($patch "$1" get refcount_table_offset)" ;;
        snaptable) $patch "$1" get snapshots_offset ;;
        snapl1) u64 "$1" "$($patch "$1" get snapshots_offset)" ;;
        bitmapdir) u64 "$1" $(( $(ext_data "$1" 0x23852875) + 16 )) ;;
        bitmaptable) u64 "$1" "$(u64 "$1" $(( $(ext_data "$1" 0x23852875) + 16 )))" ;;
        past-eof)
            size=$(stat -c %s "$1")
            echo $(( (size + C - 1) / C * C )) ;;
    esac
}

cat > io.py <<'PY'
import sys
import nbd
op = sys.argv[1]
h = nbd.NBD()
h.connect_uri(sys.argv[2])
try:
    if op == "read":
        h.pread(4096, 65536)
    elif op == "write":
        h.pwrite(b"\xee" * 4096, 65536)
    elif op == "zero":
        h.zero(65536, 65536)
    elif op == "trim":
        h.trim(65536, 65536)
    h.flush()
except nbd.Error as e:
    print("refused: %s" % e.string)
    if "Input/output error" not in e.string:
        sys.exit(2)
    # A flush after it: EIO once writes stopped (an image marked
    # corrupt), else fine.
    try:
        h.flush()
        print("flush: ok")
    except nbd.Error as e:
        print("flush: %s" % e.string)
        sys.exit(3 if "Input/output error" in e.string else 2)
    sys.exit(0)
sys.exit(1)
PY

for kind in l1 l2 reftable refblock snaptable snapl1 bitmapdir bitmaptable \
           past-eof; do
    ops="write zero trim"
    case $kind in past-eof) ops="read $ops" ;; esac
    for op in $ops; do
        img="$kind-$op.qcow2"
        base "$img"
        prepare "$img" "$kind"
        t=$(target "$img" "$kind")
        [ "$t" -gt 0 ] || fail "$kind: no target found"
        $patch "$img" l2 0 1 $((COPIED | t))
        # The metadata the entry names, before.  (Offset 0, the header,
        # cannot be named: an entry with offset 0 is unallocated.)
        case "$kind" in
            past-eof) len=0 ;;
            *) len=$C ;;
        esac
        # (A table at the end of the file may end before its cluster.)
        size=$(stat -c %s "$img")
        [ "$len" = 0 ] || [ $((t + len)) -le "$size" ] || len=$((size - t))
        [ "$len" = 0 ] || $patch "$img" peek "$t" "$len" > before.hex
        cp "$img" qemu-only.qcow2

        serve_start "$img"
        # Honest I/O on cluster 0 works, and sets the journal up (past
        # the end of the file: where the past-eof entry points).
        nbdsh -u "$uri" -c 'h.pwrite(b"\x33" * 4096, 0)' -c 'h.flush()' ||
            fail "$kind $op: an honest write failed"
        rc=0
        python3 io.py "$op" "$uri" > io.out || rc=$?
        case $kind,$rc in
            past-eof,0) ;;                  # refused, the session goes on
            past-eof,3) fail "$kind $op: a flush after the refusal failed" ;;
            *,3) ;;                         # corrupt: writes stopped
            *,0) fail "$kind $op: writes go on on an image marked corrupt" ;;
            *,1) fail "$kind $op: the $op through an entry naming the $kind succeeded" ;;
            *) cat io.out; fail "$kind $op: not refused with EIO" ;;
        esac
        serve_stop TERM || :
        case $kind in
            past-eof) expect='past the end of the file' ;;
            *) expect='preventing' ;;
        esac
        grep -q "$expect" "$server_log" ||
            { cat "$server_log" >&2; fail "$kind $op: no message says what was prevented"; }
        if [ "$len" != 0 ]; then
            $patch "$img" peek "$t" "$len" > after.hex
            cmp -s before.hex after.hex || fail "$kind $op: the $kind changed"
        fi
        # Marked corrupt (or, past the end, refused before any harm);
        # readable: cluster 0 as honestly written.
        if [ "$kind" != past-eof ]; then
            # A restart refuses to write, says how to repair, and first
            # replays a journal left dirty, so that QEMU can repair it.
            ! nbdkit -U - "$QCOW2J" file="$img" --run true 2>restart.log ||
                fail "$kind $op: a corrupt image was served writable"
            grep -q 'marked corrupt.*qemu-img check -r all' restart.log ||
                fail "$kind $op: restart said: $(cat restart.log)"
            qemu-img info "$img" | grep -q 'corrupt: true' ||
                fail "$kind $op: not marked corrupt"
            qemu-img check -q -r all "$img" >/dev/null 2>&1 || :
            # As well as QEMU repairs the crafted image by itself: it
            # cannot when a data entry shares a cluster with a bitmap
            # directory it trusts (its repair says "No errors", and the
            # next check finds the same one again).
            qemu-img check -q -r all qemu-only.qcow2 >/dev/null 2>&1 || :
            if qemu-img check -q qemu-only.qcow2 >/dev/null 2>&1; then
                qemu-img check -q "$img" || fail "$kind $op: qemu-img check -r all did not repair it"
            else
                diff <(qemu-img check "$img" 2>&1 | grep -E '^(ERROR|Leaked)') \
                     <(qemu-img check qemu-only.qcow2 2>&1 | grep -E '^(ERROR|Leaked)') ||
                    fail "$kind $op: after repair, worse than QEMU's own repair of the crafted image"
            fi
        fi
        nbdkit -U - -r "$QCOW2J" file="$img" \
            --run 'nbdsh -u "$uri" -c "assert h.pread(4096, 0) == b\"\\x33\" * 4096"' ||
            fail "$kind $op: the image does not read back"
        echo "$kind $op: $(tr '\n' ' ' < io.out)"
    done
done
