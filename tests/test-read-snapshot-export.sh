#!/usr/bin/env bash
# Serving an internal snapshot (snapshot=, snapshot-id=, snapshot-name=),
# as qemu-nbd -l does: for each snapshot, by name and by id, the content,
# the size and the block status map equal the reference, writes fail,
# and the image file is unchanged.  Snapshots taken before and after
# writes of every kind (overlapping data, zero writes, discards,
# compressed clusters), before and after resizes, over a backing file
# that has snapshots of its own, with extended L2 entries, and in a
# version 2 image whose snapshot entries carry no disk size.
#
# Two references.  qemu-nbd -l on the image itself: content and map must
# be exactly its own, except that qemu-nbd -l serves the size of the
# active layer (QEMU's bdrv_snapshot_load_tmp switches the L1 table and
# keeps the disk size): past the snapshot's own size it serves what the
# snapshot does not have, and short of it cuts the snapshot off.  qcow2j
# serves the snapshot's disk size, as a revert makes it, so where the
# sizes differ qemu-nbd -l is compared over the shorter of the two.  And
# the snapshot reverted to (qemu-img snapshot -a) in a copy of the image:
# the size and content must be its own, and the map must fit its content
# and qemu-img map's holes (check-map.py); not its exact extents: cp turns
# runs of zeroes QEMU wrote into holes, which QEMU then reports as zero.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires qemu-nbd --version
requires python3 -c 'import nbd; nbd.NBD().set_strict_mode'
cd "$tmp"

# clip_map LENGTH < MAP: nbdinfo --map output as "offset length type",
# cut at LENGTH, adjacent extents of one type merged.
clip_map ()
{
    python3 -c '
import sys
end = int(sys.argv[1]); out = []
for line in sys.stdin:
    o, l, t = (int(x) for x in line.split()[:3])
    l = min(l, end - o)
    if l <= 0:
        continue
    if out and out[-1][2] == t and out[-1][0] + out[-1][1] == o:
        out[-1][1] += l
    else:
        out.append([o, l, t])
for e in out:
    print(*e)' "$1"
}

# qemu_run IMG CMD [QEMU-NBD-ARG...]: serve IMG read-only with qemu-nbd
# and run the shell command CMD with $uri set.
qemu_run ()
{
    local img=$1 cmd=$2 sock=$tmp/qemu.sock pid rc=0
    shift 2
    rm -f "$sock"
    qemu-nbd -t --shared=0 -r -f qcow2 -k "$sock" "$@" "$img" &
    pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    uri="nbd+unix:///?socket=$sock" bash -c "$cmd" || rc=$?
    kill "$pid"; wait "$pid" 2>/dev/null || :
    return $rc
}

copy_and_map='nbdcopy "$uri" out.raw && nbdinfo --map "$uri" > out.map'

# reference IMG ID QEMU-L: the snapshot with that id reverted to in a copy
# of IMG (next to it, for its backing file), into ref.raw and, mapped by
# qemu-img, ref-map.json; what qemu-nbd -l QEMU-L serves of IMG into
# ql.raw and ql.map.
reference ()
{
    local img=$1 id=$2 ql=$3 copy
    copy="$(dirname "$img")/reverted.qcow2"
    cp "$img" "$copy"
    qemu-img snapshot -a "$id" "$copy"
    qemu-img convert -O raw "$copy" ref.raw
    qemu-img map --output=json "$copy" > ref-map.json
    rm "$copy"
    qemu_run "$img" "$copy_and_map" -l "$ql"
    mv out.raw ql.raw; mv out.map ql.map
    [ "$(stat -c %s ql.raw)" = "$(image_size "$img")" ] ||
        fail "$img: qemu-nbd -l $ql does not serve the active layer's size"
}

# Writes, zeroes and trims sent to the server (libnbd's own check of the
# read-only flag off) must fail with EPERM or EROFS.
write_probe='
import errno, nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
assert h.is_read_only(), "the export is writable"
for what, op in (("pwrite", lambda: h.pwrite(b"x" * 512, 0)),
                 ("zero", lambda: h.zero(512, 0)),
                 ("trim", lambda: h.trim(512, 0))):
    try:
        op()
    except nbd.Error as e:
        assert e.errnum in (errno.EPERM, errno.EROFS), \
            "%s: errnum %d: %s" % (what, e.errnum, e.string)
        continue
    raise AssertionError("%s succeeded" % what)
h.shutdown()'

# check LABEL IMG PARAM...: qcow2j serving IMG with PARAM... against the
# last reference; the file must not change.
check ()
{
    local label=$1 img=$2 n
    shift 2
    cp "$img" before.qcow2
    nbdkit -U - "$QCOW2J" file="$img" "$@" \
        --run "$copy_and_map && nbdinfo --size \"\$uri\" > out.size &&
               nbdinfo \"\$uri\" > out.info && python3 -c '$write_probe' \"\$uri\"" \
        2> out.err || { cat out.err >&2; fail "$label: serving failed"; }
    cmp -s before.qcow2 "$img" || fail "$label: the image file changed"
    grep -q 'notice: .*serving an internal snapshot read-only' out.err ||
        fail "$label: no notice that the snapshot is served read-only"
    grep -q 'serving snapshot ' out.info ||
        fail "$label: the description does not name the snapshot"

    [ "$(cat out.size)" = "$(stat -c %s ref.raw)" ] ||
        fail "$label: size $(cat out.size), the snapshot's is $(stat -c %s ref.raw)"
    cmp ref.raw out.raw || fail "$label: content differs from the reverted snapshot's"
    python3 "$CHECK_MAP" ref.raw out.map ref-map.json ||
        fail "$label: map does not fit the reverted snapshot"

    n=$(stat -c %s ql.raw)
    [ "$n" -le "$(cat out.size)" ] || n=$(cat out.size)
    cmp -n "$n" ql.raw out.raw || fail "$label: content differs from qemu-nbd -l's"
    diff -u <(clip_map "$n" < ql.map) <(clip_map "$n" < out.map) ||
        fail "$label: map differs from qemu-nbd -l's"
    echo "ok: $label: $(cat out.size) bytes, $(wc -l < out.map) extents" \
         "(qemu-nbd -l: $(stat -c %s ql.raw) bytes)"
}

# check_all IMG ID NAME [PARAM...]: the snapshot by each spelling.
check_all ()
{
    local img=$1 id=$2 name=$3
    shift 3
    reference "$img" "$id" "snapshot.id=$id"
    check "$img $name snapshot=$name" "$img" snapshot="$name" "$@"
    check "$img $name snapshot=$id" "$img" snapshot="$id" "$@"
    check "$img $name snapshot-name=$name" "$img" snapshot-name="$name" "$@"
    check "$img $name snapshot-id=$id" "$img" snapshot-id="$id" "$@"
    check "$img $name snapshot-id=$id snapshot-name=$name" "$img" \
          snapshot-id="$id" snapshot-name="$name" "$@"
}

M=$((1 << 20))

# --- snapshots around writes of every kind and resizes ----------------------
qemu-img create -q -f qcow2 main.qcow2 8M
qio main.qcow2 "write -P 0xa1 0 2M" "write -P 0xa2 3M 512k" \
    "write -c -P 0xa3 5M 128k" "write -z 6M 64k"
qemu-img snapshot -c s1 main.qcow2                              # 8M
qio main.qcow2 "write -P 0xb1 1M 1M" "write -P 0xb2 $((2 * M + 100)) 5000" \
    "discard 3M 256k" "write -z 512k 128k" "write -c -P 0xb3 4M 64k" \
    "write -z -u 7M 64k"
qemu-img resize -q main.qcow2 12M
qio main.qcow2 "write -P 0xb4 9M 1M" "write -c -P 0xb5 11M 64k"
qemu-img snapshot -c s2 main.qcow2                              # 12M
qio main.qcow2 "write -P 0xc1 0 4M" "write -z 9M 512k" "discard 5M 128k"
qemu-img resize -q --shrink main.qcow2 10M
qemu-img snapshot -c s3 main.qcow2                              # 10M
# A snapshot whose name is another's id: a bare "1" is the id.
qio main.qcow2 "write -P 0xd1 6M 1M"
qemu-img snapshot -c 1 main.qcow2                               # id 4
qio main.qcow2 "write -P 0xe1 0 10M"
qemu-img check -q main.qcow2

check_all main.qcow2 1 s1
check_all main.qcow2 2 s2
check_all main.qcow2 3 s3
reference main.qcow2 4 snapshot.name=1
check "main.qcow2 snapshot-name=1" main.qcow2 snapshot-name=1
check "main.qcow2 snapshot-id=4" main.qcow2 snapshot-id=4
reference main.qcow2 1 1
check "main.qcow2 snapshot=1 (the id, not the name)" main.qcow2 snapshot=1
# Asked read-only, that is not said.
for ro in "-r" "readonly=true" "readonly=auto"; do
    case $ro in -r) args=(-r "$QCOW2J") ;; *) args=("$QCOW2J" "$ro") ;; esac
    nbdkit -U - "${args[@]}" file=main.qcow2 snapshot=s2 \
        --run 'nbdinfo --size "$uri"' > ro.size 2> ro.err ||
        { cat ro.err >&2; fail "$ro: serving failed"; }
    [ "$(cat ro.size)" = $((12 * M)) ] || fail "$ro: size $(cat ro.size)"
    case $ro in
        readonly=auto) grep -q 'serving an internal snapshot read-only' ro.err ;;
        *) ! grep -q notice ro.err ;;
    esac || { cat ro.err >&2; fail "$ro: the read-only notice was wrong"; }
done
echo "ok: -r, readonly=true: served without a notice; readonly=auto: with one"

# --- an overlay with snapshots, over a backing file with its own ------------
qemu-img create -q -f qcow2 base.qcow2 8M
qio base.qcow2 "write -P 0x51 0 8M"
qemu-img snapshot -c b1 base.qcow2
qio base.qcow2 "write -P 0x52 0 1M" "write -z 6M 1M"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 over.qcow2 8M
qio over.qcow2 "write -P 0x61 1M 1M" "write -c -P 0x62 3M 64k"
qemu-img snapshot -c o1 over.qcow2
qio over.qcow2 "write -z 2M 1M" "discard 1M 64k" "write -P 0x63 4M 64k" \
    "write -z -u 5M 64k"
qemu-img snapshot -c o2 over.qcow2
qio over.qcow2 "write -P 0x64 0 8M"
check_all over.qcow2 1 o1
check_all over.qcow2 2 o2

# --- extended L2 ----------------------------------------------------------
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k xl2.qcow2 8M
qio xl2.qcow2 "write -P 0x71 0 4k" "write -P 0x72 $((64 * 1024 + 2048)) 6k" \
    "write -P 0x73 1M 256k" "write -c -P 0x74 2M 64k"
qemu-img snapshot -c x1 xl2.qcow2
qio xl2.qcow2 "write -z 2048 2048" "write -P 0x75 8k 4k" \
    "discard $((1 * M + 64 * 1024)) 64k" "write -z -u $((1 * M + 2048)) 4k" \
    "write -c -P 0x76 3M 64k"
qemu-img snapshot -c x2 xl2.qcow2
qio xl2.qcow2 "write -P 0x77 0 8M"
check_all xl2.qcow2 1 x1
check_all xl2.qcow2 2 x2

# --- a dirty journal: replayed in memory, then the snapshot served ---------
# qcow2j writes the active layer (copying the clusters the snapshot
# shares) and is killed with its journal dirty.
qemu-img create -q -f qcow2 dirty.qcow2 8M
qio dirty.qcow2 "write -P 0x91 0 4M" "write -c -P 0x92 5M 64k"
qemu-img snapshot -c d1 dirty.qcow2
reference dirty.qcow2 1 d1
serve_start dirty.qcow2
nbdsh -u "$uri" -c '
h.pwrite(b"\x93" * (1 << 20), 512 * 1024)
h.zero(1 << 20, 2 << 20)
h.trim(65536, 5 << 20)
h.pwrite(b"\x94" * 4096, 7 << 20)
h.flush()'
serve_stop KILL
qemu-img info dirty.qcow2 >/dev/null 2>&1 && fail "dirty.qcow2: the journal is not dirty"
check "dirty.qcow2 d1 (dirty journal)" dirty.qcow2 snapshot=d1
grep -q 'replayed the journal .* in memory' out.err ||
    fail "dirty.qcow2: the journal was not replayed in memory"

# --- unknown snapshots: refused at startup, naming what the image has -------
refused ()
{
    local label=$1 img=$2 want=$3
    shift 3
    cp "$img" before.qcow2
    if nbdkit -U - "$QCOW2J" file="$img" "$@" --run true 2> err; then
        fail "$label: served"
    fi
    cmp -s before.qcow2 "$img" || fail "$label: the image file changed"
    grep -qF -- "$want" err || { cat err >&2; fail "$label: not said: $want"; }
    echo "ok: $label: refused: $(grep error: err)"
}
refused "unknown name" main.qcow2 \
        "snapshot id or name 'nope': no such internal snapshot: it has id 1 's1', id 2 's2', id 3 's3', id 4 '1'" \
        snapshot=nope
refused "unknown id" main.qcow2 "snapshot id '9': no such internal snapshot: it has id 1 's1'" \
        snapshot-id=9
refused "id and name of two snapshots" main.qcow2 \
        "snapshot id '1' and name 's2': no such internal snapshot" \
        snapshot-id=1 snapshot-name=s2
qemu-img create -q -f qcow2 none.qcow2 1M
refused "no snapshots" none.qcow2 \
        "snapshot id or name 's1': no such internal snapshot: it has no snapshots" \
        snapshot=s1
refused "snapshot= with snapshot-id=" main.qcow2 "snapshot=s1: goes alone" \
        snapshot=s1 snapshot-id=1

# A disk size no NBD export can have (bytes 8-15 of the first entry's
# extra data): refused when that snapshot is asked for, not otherwise.
cp main.qcow2 huge.qcow2
python3 "$SRCDIR/tests/qcow2-patch.py" huge.qcow2 poke \
        $(( $(python3 "$SRCDIR/tests/qcow2-patch.py" huge.qcow2 get snapshots_offset) + 48 )) \
        8000000000000000
refused "disk size too large" huge.qcow2 \
        "snapshot 1: disk size 9223372036854775808 is too large" snapshot=s1
nbdkit -U - "$QCOW2J" file=huge.qcow2 snapshot=s2 --run 'nbdinfo --size "$uri"' \
       > huge.size 2>/dev/null || fail "huge.qcow2: snapshot s2 not served"
[ "$(cat huge.size)" = $((12 * M)) ] || fail "huge.qcow2: s2 size $(cat huge.size)"

# --- a version 2 image whose snapshot entries carry no disk size ------------
# The table is rewritten with 8 bytes of extra data (no disk size, which
# version 2 allows): the disk size is then the image's, for QEMU too.
# QEMU resizes no version 2 image with snapshots: the header's size is
# raised by hand (its one L1 entry covers 512M), so that the entry's
# disk size, were it read, would be wrong.
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M
qio v2.qcow2 "write -P 0x81 0 1M" "write -P 0x82 2M 64k"
qemu-img snapshot -c v1 v2.qcow2
qio v2.qcow2 "write -P 0x83 512k 1M"
python3 "$SRCDIR/tests/qcow2-patch.py" v2.qcow2 set size $((6 * M))
qio v2.qcow2 "write -P 0x84 5M 64k"
python3 - v2.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
hdr = f.read(72)
nb, off = struct.unpack(">IQ", hdr[60:72])
f.seek(off)
old = f.read(1 << 16)
pos, new = 0, b""
for _ in range(nb):
    e = old[pos:pos + 40]
    id_len, name_len = struct.unpack(">HH", e[12:16])
    extra = struct.unpack(">I", e[36:40])[0]
    assert extra >= 16
    strings = old[pos + 40 + extra:pos + 40 + extra + id_len + name_len]
    entry = e[:36] + struct.pack(">I", 8) + old[pos + 40:pos + 48] + strings
    new += entry + b"\0" * (-len(entry) % 8)
    pos += 40 + extra + id_len + name_len
    pos += -pos % 8
f.seek(off)
f.write(new + b"\0" * (pos - len(new)))
EOF
qemu-img check -q v2.qcow2
# QEMU's revert keeps the image's size: the reference is right as it is.
reference v2.qcow2 1 v1
check "v2.qcow2 v1 (no disk size in the entry)" v2.qcow2 snapshot=v1
[ "$(cat out.size)" = $((6 * M)) ] || fail "v2: the disk size is not the image's"
