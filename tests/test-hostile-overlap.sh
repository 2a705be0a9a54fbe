#!/usr/bin/env bash
# Guest I/O through L2 entries that name the image's own metadata: the
# L1 table, an L2 table, the refcount table, a refcount block,
# and space past the end of the file (where a power cut can leave an entry,
# and where the journal goes at the first write).  A write, a zero and a
# trim through each must fail with EIO, say what it prevented, change none
# of the metadata the entry names (nor the journal), and leave the image
# marked corrupt (as QEMU does) and still readable.  The same I/O on an
# honest cluster of the same image succeeds first, so the refusals are not
# the image's fault.
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

target ()                       # target IMG KIND: a host offset
{
    local size
    case "$2" in
        l1) $patch "$1" get l1_table_offset ;;
        l2) $patch "$1" l2-offset 0 ;;
        reftable) $patch "$1" get refcount_table_offset ;;
        refblock) echo $((0x$($patch "$1" peek "$($patch "$1" get refcount_table_offset)" 8))) ;;
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
    if op == "write":
        h.pwrite(b"\xee" * 4096, 65536)
    elif op == "zero":
        h.zero(65536, 65536)
    elif op == "trim":
        h.trim(65536, 65536)
    h.flush()
except nbd.Error as e:
    print("refused: %s" % e.string)
    sys.exit(0 if "Input/output error" in e.string else 2)
sys.exit(1)
PY

for kind in l1 l2 reftable refblock past-eof; do
    for op in write zero trim; do
        img="$kind-$op.qcow2"
        base "$img"
        t=$(target "$img" "$kind")
        $patch "$img" l2 0 1 $((COPIED | t))
        # The metadata the entry names, before.  (Offset 0, the header,
        # cannot be named: an entry with offset 0 is unallocated.)
        case "$kind" in
            past-eof) len=0 ;;
            *) len=$C ;;
        esac
        [ "$len" = 0 ] || $patch "$img" peek "$t" "$len" > before.hex

        serve_start "$img"
        # Honest I/O on cluster 0 works, and sets the journal up (past
        # the end of the file: where the past-eof entry points).
        nbdsh -u "$uri" -c 'h.pwrite(b"\x33" * 4096, 0)' -c 'h.flush()' ||
            fail "$kind $op: an honest write failed"
        rc=0
        python3 io.py "$op" "$uri" > io.out || rc=$?
        case $rc in
            0) ;;
            1) fail "$kind $op: the $op through an entry naming the $kind succeeded" ;;
            *) cat io.out; fail "$kind $op: not refused with EIO" ;;
        esac
        serve_stop TERM || :
        grep -q 'preventing\|past the end of the file\|inside the qcow2j journal' "$server_log" ||
            { cat "$server_log" >&2; fail "$kind $op: no message says what was prevented"; }
        if [ "$len" != 0 ]; then
            $patch "$img" peek "$t" "$len" > after.hex
            cmp -s before.hex after.hex || fail "$kind $op: the $kind changed"
        fi
        # Marked corrupt (or, past the end, refused before any harm);
        # readable: cluster 0 as honestly written.
        if [ "$kind" != past-eof ]; then
            qemu-img info "$img" | grep -q 'corrupt: true' ||
                fail "$kind $op: not marked corrupt"
        fi
        nbdkit -U - -r "$QCOW2J" file="$img" \
            --run 'nbdsh -u "$uri" -c "assert h.pread(4096, 0) == b\"\\x33\" * 4096"' ||
            fail "$kind $op: the image does not read back"
        echo "$kind $op: $(cat io.out)"
    done
done
