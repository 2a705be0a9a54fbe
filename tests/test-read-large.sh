#!/usr/bin/env bash
# Read-only: very large sparse images (1 TiB, and 16 TiB): a few writes
# near the start, across 2^31/2^32 and L2-table boundaries, in the middle
# and at the very end; read back with libnbd (python) and compared; the
# size is right; extents over the whole disk complete and agree with
# qemu-img map.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"
requires python3 -c 'import nbd'

TiB=$((1 << 40))
GiB=$((1 << 30))

# The writes, "offset length byte" in order (byte 0 = write -z).  The
# checker replays them onto zero to compute what every window must read.
writes_for ()
{
    local size=$1
    cat <<EOT
0 1048576 0x11
$((3 * 1048576 + 100)) 5000 0x12
$((2 * GiB - 4096)) 8192 0x13
$((4 * GiB - 4096)) 8192 0x14
$((4 * GiB - 1024)) 2048 0
$((size / 2 - 32768)) 65536 0x21
$((size / 2 + 512 * 1048576 - 100)) 200 0x22
$((size - 1048576 - 65536)) 1048576 0x31
$((size - 1048576)) 65536 0
$((size - 512)) 512 0x32
EOT
}

cat > "$tmp/check-regions.py" <<'PY'
# check-regions.py URI SIZE WRITES-FILE: read a window around every write
# and compare with the replayed writes.
import sys
import nbd

uri, size, wfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
writes = []
for line in open(wfile):
    o, l, b = line.split()
    writes.append((int(o), int(l), int(b, 0)))

h = nbd.NBD()
h.connect_uri(uri)
got_size = h.get_size()
if got_size != size:
    sys.exit("size: qcow2j says %d, expected %d" % (got_size, size))

margin = 65536 + 4096
bad = 0
windows = [(max(0, o - margin), min(size, o + l + margin)) for o, l, _ in writes]
# a few windows far from any write: must be zero
windows += [(size // 3, size // 3 + 1048576), (size // 4 * 3 + 12345, size // 4 * 3 + 200000)]
for ws, we in windows:
    expect = bytearray(we - ws)
    for o, l, b in writes:
        s, e = max(o, ws), min(o + l, we)
        if s < e:
            expect[s - ws:e - ws] = bytes([b]) * (e - s)
    pos = ws
    while pos < we:
        n = min(we - pos, 32 << 20)
        buf = h.pread(n, pos)
        exp = expect[pos - ws:pos - ws + n]
        if buf != exp:
            i = next(k for k in range(n) if buf[k] != exp[k])
            print("MISMATCH at %#x: got %s expected %s" %
                  (pos + i, buf[i:i+8].hex(' '), bytes(exp[i:i+8]).hex(' ')),
                  file=sys.stderr)
            bad += 1
            break
        pos += n
    # unaligned tiny reads across the window edges too
    for off in (ws, (ws + we) // 2 - 3, we - 7):
        n = min(7, we - off)
        if n > 0 and h.pread(n, off) != bytes(expect[off - ws:off - ws + n]):
            print("MISMATCH in a %d-byte read at %#x" % (n, off), file=sys.stderr)
            bad += 1
h.shutdown()
sys.exit(1 if bad else 0)
PY

for size in $TiB $((16 * TiB)); do
    img="$tmp/large-$size.qcow2"
    if ! qemu-img create -q -f qcow2 "$img" $size 2>"$tmp/err"; then
        cat "$tmp/err"
        echo "note: qemu-img cannot create a $size byte image; skipped"
        continue
    fi
    writes_for $size > "$tmp/writes"
    cmds=()
    while read -r o l b; do
        if [ "$b" = 0 ]; then cmds+=("write -z $o $l")
        else cmds+=("write -P $b $o $l"); fi
    done < "$tmp/writes"
    qio "$img" "${cmds[@]}"
    qemu-img map --output=json "$img" > "$tmp/qemu-map.json"

    # A sparse raw reference to check the extents against, where the host
    # filesystem can hold a file that large.
    ref="$tmp/ref.raw"
    rm -f "$ref"
    if ! qemu-img convert -O raw "$img" "$ref" 2>/dev/null; then
        rm -f "$ref"
    fi

    sha_before=$(sha256sum < "$img")
    printf -v cmd '%s && %s && %s' \
        "python3 $(printf %q "$tmp/check-regions.py") \"\$uri\" $size $(printf %q "$tmp/writes")" \
        "test \"\$(nbdinfo --size \"\$uri\")\" = $size" \
        "timeout 50 nbdinfo --map $_nbdinfo_map_json \"\$uri\" > $(printf %q "$tmp/map")"
    qcow2j_run "$img" "$cmd" || fail "large-$size: reads, size or map failed"
    [ "$(sha256sum < "$img")" = "$sha_before" ] || fail "large-$size: image changed"

    if [ -f "$ref" ]; then
        python3 "$CHECK_MAP" "$ref" "$tmp/map" "$tmp/qemu-map.json" ||
            fail "large-$size: extents check failed"
    else
        # No reference file: check coverage and qemu-img's holes only,
        # against a sparse stand-in of the right size holding the writes.
        echo "note: no raw reference for $size bytes (host filesystem limit);" \
             "checking extents against the list of writes"
        python3 - "$tmp/map" "$tmp/qemu-map.json" $size "$tmp/writes" <<'PY' ||
import json, sys
qmap = json.load(open(sys.argv[1])) if open(sys.argv[1]).read(1) == '[' else \
    [dict(zip(('offset', 'length', 'type'), map(int, l.split()[:3])))
     for l in open(sys.argv[1]) if l.strip()]
qemu = json.load(open(sys.argv[2]))
size = int(sys.argv[3])
pos = 0
for e in qmap:
    assert e['offset'] == pos, "gap/overlap at %#x" % pos
    pos += e['length']
assert pos == size, "extents end at %#x, size %#x" % (pos, size)
# replay the writes: the final non-zero byte ranges must not be in any
# zero extent
segs = []          # (start, end, nonzero) in write order; later wins
for line in open(sys.argv[4]):
    o, l, b = (int(x, 0) for x in line.split())
    segs.append((o, o + l, b != 0))
points = sorted({p for s, e, _ in segs for p in (s, e)})
for a, b in zip(points, points[1:]):
    state = None
    for s, e, nz in segs:
        if s <= a and b <= e:
            state = nz
    if not state:
        continue
    for e in qmap:
        if e['type'] & 2 and e['offset'] < b and a < e['offset'] + e['length']:
            sys.exit("written range [%#x, %#x) reported zero: %s" % (a, b, e))
# every qemu-img hole must be zero in qcow2j
zr = [(e['offset'], e['offset'] + e['length']) for e in qmap if e['type'] & 2]
import bisect
starts = [s for s, _ in zr]
for e in qemu:
    if e['data']:
        continue
    p, end = e['start'], e['start'] + e['length']
    while p < end:
        i = bisect.bisect_right(starts, p) - 1
        if i < 0 or zr[i][1] <= p:
            sys.exit("qemu-img hole at %#x not reported zero by qcow2j" % p)
        p = zr[i][1]
PY
            fail "large-$size: extents check failed"
    fi
    echo "ok: $size bytes"
    rm -f "$ref"
done
