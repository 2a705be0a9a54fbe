#!/usr/bin/env bash
# Persistent dirty bitmaps kept up to date: every write, zero and trim
# through qcow2j sets its range in every enabled bitmap, as QEMU itself
# shows them (qemu-nbd -B NAME, nbdinfo --map=qemu:dirty-bitmap:NAME):
# exactly the granules the requests touched, after a clean close and
# after kill -9 and a replay (every granule whose content changed is
# dirty), with qemu-img check clean and no bitmap left in use.  A
# disabled bitmap keeps its bits; a read-only serve changes nothing; a
# bitmap cleared by a backup tool starts over.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
requires python3 -c 'import nbd'
cd "$tmp"

size=$((64 << 20))

# make IMG: data, an enabled bitmap of 64 KiB granules (b0), a disabled
# one with a few bits (b1), an enabled one of 4 KiB granules (b2).
make_image ()
{
    qemu-img create -q -f qcow2 "$1" $size
    qemu-io -f qcow2 -c 'write -P 0x11 0 8M' -c 'write -P 0x12 30M 2M' "$1" >/dev/null
    qemu-img bitmap --add "$1" b1
    qemu-io -f qcow2 -c 'write -P 0x13 4M 64k' "$1" >/dev/null
    qemu-img bitmap --disable "$1" b1
    qemu-img bitmap --add "$1" b0
    qemu-img bitmap --add -g 4096 "$1" b2
}

# dirty IMG NAME: the bitmap's dirty ranges as QEMU serves them.
dirty ()
{
    local sock=$tmp/q.sock
    rm -f "$sock"
    qemu-nbd -t --shared=0 -r -f qcow2 -B "$2" -k "$sock" "$1" &
    local pid=$!
    for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    nbdinfo --map=qemu:dirty-bitmap:"$2" "nbd+unix:///?socket=$sock" |
        awk '$3 == 1 { print $1, $2 }'
    kill $pid; wait $pid 2>/dev/null || :
}

# The requests: writes, zeroes and trims at odd offsets and lengths, in
# ops.txt as "kind offset length" (the ops script writes it).
cat > ops.py <<'PY'
import random, sys
r = random.Random(int(sys.argv[1]))
size = int(sys.argv[2])
ops = [("write", 1 << 20, 4096), ("write", (1 << 20) + 3 * 65536 + 512, 700),
       ("zero", 40 << 20, 1 << 20), ("trim", 50 << 20, 65536 * 3),
       ("write", size - 512, 512)]
for _ in range(60):
    kind = r.choice(["write", "write", "write", "zero", "trim"])
    off = r.randrange(0, size // 512) * 512
    n = min(r.choice([512, 4096, 12288, 65536, 200704]), size - off)
    ops.append((kind, off, n))
for k, o, n in ops:
    print(k, o, n)
PY
cat > run-ops.py <<'PY'
import sys
for line in open(sys.argv[1]):
    k, o, n = line.split(); o = int(o); n = int(n)
    if k == "write":
        h.pwrite(bytes([(o >> 9) & 0xff | 1]) * n, o)
    elif k == "zero":
        h.zero(n, o)
    else:
        h.trim(n, o)
h.flush()
PY
# expected OPS GRANULARITY: the granules the requests touch, as ranges.
cat > expected.py <<'PY'
import sys
g = int(sys.argv[2]); size = int(sys.argv[3])
bits = set()
for line in open(sys.argv[1]):
    k, o, n = line.split(); o = int(o); n = int(n)
    bits.update(range(o // g, (o + n - 1) // g + 1))
runs, start, prev = [], None, None
for b in sorted(bits):
    if start is None or b != prev + 1:
        if start is not None: runs.append((start, prev))
        start = b
    prev = b
if start is not None: runs.append((start, prev))
for a, b in runs:
    print(a * g, min((b + 1) * g, size) - a * g)
PY

check_bitmaps ()                # check_bitmaps IMG WHAT
{
    qemu-img check -q "$1" || fail "$2: qemu-img check"
    qemu-img info --output=json "$1" > info.json
    python3 - <<'PY' || fail "$2: a bitmap is in use or gone"
import json
bm = json.load(open("info.json"))["format-specific"]["data"]["bitmaps"]
assert sorted(b["name"] for b in bm) == ["b0", "b1", "b2"], bm
assert all("in-use" not in b["flags"] for b in bm), bm
assert {b["name"]: "auto" in b["flags"] for b in bm} == {"b0": True, "b1": False, "b2": True}, bm
PY
    [ "$(dirty "$1" b1)" = "$b1_before" ] || fail "$2: the disabled bitmap changed"
}

# --- a clean close ---------------------------------------------------------
make_image img.qcow2
b1_before=$(dirty img.qcow2 b1)
[ -n "$b1_before" ] || fail "the disabled bitmap has no bits to keep"
python3 ops.py 1 $size > ops.txt
nbdkit -U - "$QCOW2J" file=img.qcow2 --run "nbdsh -u \"\$uri\" -c 'import sys; sys.argv = [\"\", \"ops.txt\"]' -c \"exec(open('run-ops.py').read())\""
check_bitmaps img.qcow2 "clean close"
for b in "b0 65536" "b2 4096"; do
    set -- $b
    dirty img.qcow2 $1 > got-$1
    python3 expected.py ops.txt $2 $size > want-$1
    diff -u want-$1 got-$1 > d-$1 || { head -20 d-$1; fail "clean close: bitmap $1 is not the requests' ranges"; }
    echo "ok: clean close: $1 dirty exactly where the requests went ($(wc -l < got-$1) ranges)"
done

# --- a read-only serve changes nothing -------------------------------------
cp img.qcow2 ro-before.qcow2
nbdkit -U - -r "$QCOW2J" file=img.qcow2 --run 'nbdinfo --map "$uri" >/dev/null'
cmp -s img.qcow2 ro-before.qcow2 || fail "a read-only serve changed the image"

# --- a backup tool clears the bitmap: only later writes count ---------------
qemu-img bitmap --clear img.qcow2 b0
nbdkit -U - "$QCOW2J" file=img.qcow2 --run 'nbdsh -u "$uri" -c "h.pwrite(b\"\\x77\" * 100, (7 << 20) + 65536 * 5 + 9); h.flush()"'
[ "$(dirty img.qcow2 b0)" = "$(( (7 << 20) + 65536 * 5 )) 65536" ] ||
    fail "after --clear: $(dirty img.qcow2 b0)"
echo "ok: after a clear, only the new write is dirty"

# --- kill -9, then a replay --------------------------------------------------
make_image k.qcow2
qemu-img convert -O raw k.qcow2 k-before.raw
python3 ops.py 2 $size > kops.txt
sock=$tmp/k.sock
"${NBDKIT_CMD[@]}" -f -U "$sock" "$QCOW2J" file=k.qcow2 &
pid=$!
cleanup_fn "kill -9 $pid 2>/dev/null"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
head -n 40 kops.txt > kops-flushed.txt
tail -n +41 kops.txt > kops-late.txt
nbdsh -u "nbd+unix:///?socket=$sock" -c 'import sys; sys.argv = ["", "kops-flushed.txt"]' -c "exec(open('run-ops.py').read())"
# The rest without a flush: some may be lost, none may go unmarked.
sed -i 's/^h.flush()$//' run-ops.py
nbdsh -u "nbd+unix:///?socket=$sock" -c 'import sys; sys.argv = ["", "kops-late.txt"]' -c "exec(open('run-ops.py').read())"
kill -9 $pid; wait $pid 2>/dev/null || :
nbdkit -U - "$QCOW2J" file=k.qcow2 --run true 2>/dev/null   # replays, closes
check_bitmaps k.qcow2 "kill -9"
qemu-img convert -O raw k.qcow2 k-after.raw
for b in "b0 65536" "b2 4096"; do
    set -- $b
    dirty k.qcow2 $1 > kgot-$1
    python3 expected.py kops-flushed.txt $2 $size > kflushed-$1
    python3 expected.py kops.txt $2 $size > kall-$1
    python3 - kgot-$1 kflushed-$1 kall-$1 k-before.raw k-after.raw $2 <<'PY' || fail "kill -9: bitmap $1"
import sys
got, flushed, every, before, after, g = sys.argv[1:]; g = int(g)
def granules(path):
    s = set()
    for line in open(path):
        o, n = map(int, line.split())
        s.update(range(o // g, (o + n - 1) // g + 1))
    return s
got, flushed, every = granules(got), granules(flushed), granules(every)
assert flushed <= got, "a flushed request's granules are not dirty: %s" % sorted(flushed - got)[:5]
assert got <= every, "granules no request touched are dirty: %s" % sorted(got - every)[:5]
a, b = open(before, "rb"), open(after, "rb")
i = 0
while True:
    x, y = a.read(g), b.read(g)
    if not x: break
    assert x == y or i in got, "granule %d changed but is not dirty" % i
    i += 1
PY
    echo "ok: kill -9 and replay: $1 has every flushed request and every changed granule"
done

# --- data changed in place right after bits set by another request --------
# (a zero, or a trim, sets the bits of its whole range; the write that
# follows in place must still commit them before it writes: a kill at once
# after must leave the granule dirty).
for case in zero trim; do
    f=inplace-$case.qcow2
    qemu-img create -q -f qcow2 $f $size
    qemu-io -f qcow2 -c 'write -P 0x55 0 1M' $f >/dev/null
    qemu-img bitmap --add $f b0
    sock=$tmp/$case.sock
    "${NBDKIT_CMD[@]}" -f -U "$sock" "$QCOW2J" file=$f &
    pid=$!
    cleanup_fn "kill -9 $pid 2>/dev/null"
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    case $case in
        zero) req='h.zero(8192, 4096)' ;;                 # rewrites in place
        trim) req='h.trim(4096, 65536 + 512); h.pwrite(b"\xaa" * 4096, 65536 + 8192)' ;;
    esac
    nbdsh -u "nbd+unix:///?socket=$sock" -c 'h.pwrite(b"\1" * 512, 32 << 20); h.flush()' -c "$req"
    kill -9 $pid; wait $pid 2>/dev/null || :
    nbdkit -U - "$QCOW2J" file=$f --run true 2>/dev/null
    qemu-img check -q $f || fail "in place after $case: qemu-img check"
    want=$([ $case = zero ] && echo 0 || echo 65536)
    dirty $f b0 | grep -q "^$want " ||
        fail "in place after $case: granule $want changed but is not dirty: $(dirty $f b0 | tr '\n' ' ')"
    echo "ok: kill -9 right after an in-place write following a $case: its granule is dirty"
done

# --- a bitmap table that is not where a table may be: marked in use, never
# written through (a table misaligned into an L2 table's unused tail, or
# past the end of the file) ----------------------------------------------------
for case in misaligned past-eof; do
    f=table-$case.qcow2
    qemu-img create -q -f qcow2 $f $size
    qemu-io -f qcow2 -c 'write -P 0x11 0 1M' $f >/dev/null
    qemu-img bitmap --add $f b0
    dir=$(( 0x$(python3 "$SRCDIR/tests/qcow2-patch.py" $f peek $(( $(python3 "$SRCDIR/tests/qcow2-patch.py" $f ext-list | awk '$2 == "0x23852875" { print $4 + 8 }') + 16 )) 8) ))
    case $case in
        misaligned) to=$(( $(python3 "$SRCDIR/tests/qcow2-patch.py" $f l2-offset 0) + 8 * 100 )) ;;
        past-eof) to=$((64 << 20)) ;;
    esac
    python3 "$SRCDIR/tests/qcow2-patch.py" $f poke $dir "$(printf %016x $to)" >/dev/null
    nbdkit -U - "$QCOW2J" file=$f --run 'nbdsh -u "$uri" -c "h.pwrite(b\"\\x22\" * 512, 0); h.pwrite(b\"\\x22\" * 512, 7 << 20); h.flush()"' 2>$case.log ||
        fail "table $case: the writes failed: $(cat $case.log)"
    grep -q "its table is misaligned or outside the file: it cannot be kept up to date, so it is marked in use" $case.log ||
        fail "table $case: not marked in use with a reason: $(cat $case.log)"
    qemu-io -f qcow2 -r -U -c 'read -P 0 6400k 64k' -c 'read -P 0x22 7M 512' $f >/dev/null 2>&1 ||
        [ $case = misaligned ] ||   # QEMU will not open a misplaced table
        fail "table $case: guest data damaged"
    nbdkit -U - -r "$QCOW2J" file=$f --run 'nbdsh -u "$uri" -c "assert h.pread(65536, 6400 << 10) == bytes(65536); assert h.pread(512, 7 << 20) == b\"\\x22\" * 512"' ||
        fail "table $case: guest data damaged"
    echo "ok: a bitmap table $case: marked in use, guest data intact"
done
