#!/usr/bin/env bash
# Hostile qcow2 metadata found at read time: the header is valid so the open
# succeeds, but an L1/L2 entry or compressed cluster is broken.  Reading the
# affected range must fail with EIO, ranges that do not depend on the broken
# metadata must still read correctly afterwards (the server is alive), and
# nbdkit must exit cleanly.  Then a short byte-flipping fuzz run that only
# asks for no crash, no hang and no sanitizer report.
#
# The fuzz run uses QCOW2J_FUZZ_SEED if set (to reproduce a failure), else
# $RANDOM; QCOW2J_FUZZ_ITERS (default 200) and QCOW2J_FUZZ_SECONDS (default
# 40) bound it.
source "$SRCDIR/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires nbdcopy --version
requires timeout --version
requires python3 -c 'import nbd'

patch="python3 $SRCDIR/tests/qcow2-patch.py"
# timeout(1) cannot run a shell function: hand functions.sh's nbdkit wrapper
# (and whatever it reads) to a child bash.
export QCOW2J NBDKIT_BIN QCOW2J_PRELOAD
export -f nbdkit

K=1024 M=$((1024 * 1024)) C=65536
failures=()
ncases=0

# ---- the reader -----------------------------------------------------------
# check.py URI MODE BAD... -- GOOD...
#   MODE strict: every BAD read (OFF:LEN) must fail with EIO.
#   MODE lenient: a BAD read may fail (any errno) or return anything.
#   GOOD reads (OFF:LEN:BYTE) must return LEN copies of BYTE, both before and
#   after the bad reads; a block-status walk of the whole disk in between may
#   fail but must not take the server down.
cat > "$tmp/check.py" <<'EOF'
import sys
import nbd

uri, mode = sys.argv[1], sys.argv[2]
rest = sys.argv[3:]
sep = rest.index("--")
bad = [tuple(int(x, 0) for x in a.split(":")) for a in rest[:sep]]
good = [tuple(int(x, 0) for x in a.split(":")) for a in rest[sep + 1:]]
errors = []

h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
try:
    h.connect_uri(uri)
except nbd.Error as e:
    print("open failed: %s" % e)
    sys.exit(1)

def good_reads(when):
    for off, ln, byte in good:
        try:
            buf = h.pread(ln, off)
        except nbd.Error as e:
            errors.append("%s: read of intact range %d+%d failed: %s"
                          % (when, off, ln, e))
            continue
        if buf != bytes([byte]) * ln:
            errors.append("%s: read of intact range %d+%d returned wrong data"
                          " (first bytes %s, expected 0x%02x)"
                          % (when, off, ln, buf[:8].hex(), byte))

good_reads("before")
for off, ln in bad:
    try:
        buf = h.pread(ln, off)
    except nbd.Error as e:
        if mode == "strict" and e.errno != "EIO":
            errors.append("read of corrupted range %d+%d failed with %s"
                          " (errnum %d), expected EIO: %s"
                          % (off, ln, e.errno, e.errnum, e.string))
        else:
            print("read of corrupted range %d+%d: %s" % (off, ln, e.errno))
    else:
        if mode == "strict":
            errors.append("read of corrupted range %d+%d succeeded"
                          " (first bytes %s)" % (off, ln, buf[:8].hex()))
        else:
            print("read of corrupted range %d+%d succeeded" % (off, ln))

# Extents over the whole disk: errors are fine, a dead server is not.
def cb(metacontext, offset, entries, err):
    return 0
try:
    size = h.get_size()
    off = 0
    while off < size:
        n = min(size - off, 1 << 30)
        h.block_status(n, off, cb)
        off += n
except nbd.Error as e:
    print("block status: %s" % e)

good_reads("after")
try:
    h.shutdown()
except nbd.Error as e:
    errors.append("shutdown: %s" % e)
for e in errors:
    print("ERROR: " + e)
sys.exit(1 if errors else 0)
EOF

# serve NAME IMG MODE BAD... -- GOOD...: run check.py against IMG.
serve ()
{
    local name=$1 img=$2 st=0 err=$tmp/case.err why=
    shift 2
    ncases=$((ncases + 1))
    CHECK_PY=$tmp/check.py CHECK_ARGS="$*" timeout -k 5 60 bash -c \
        'nbdkit -U - "$QCOW2J" file="$1" --run "python3 \"\$CHECK_PY\" \"\$uri\" \$CHECK_ARGS"' \
        _ "$img" >"$tmp/case.out" 2>"$err" || st=$?

    if [ $st -eq 124 ] || [ $st -eq 137 ]; then
        why="timed out after 60 s (exit status $st)"
    elif [ $st -ge 128 ]; then
        why="killed by signal $((st - 128)) (exit status $st)"
    elif grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$err"; then
        why="sanitizer report"
    elif [ $st -ne 0 ]; then
        why="exit status $st"
    fi
    if [ -n "$why" ]; then
        failures+=("$name")
        echo "FAIL: $name: $why"
        sed -e 's/^/    out| /' "$tmp/case.out" | head -n 20
        sed -e 's/^/    err| /' "$err" | head -n 20
    else
        echo "ok: $name: $(tr '\n' ' ' < "$tmp/case.out")"
    fi
}

# ---- images ---------------------------------------------------------------
# plain.qcow2: 1 GiB so that it has two L1 entries.  Under L1[0]: clusters
# 0-15 = 0x11 except cluster 9 = 0x55, cluster 16 on unallocated; under L1[1]:
# the cluster at 512M = 0x22.
qemu-img create -q -f qcow2 -o cluster_size=$C "$tmp/plain.qcow2" 1G
qemu-io -f qcow2 -c 'write -q -P 0x11 0 1M' \
        -c 'write -q -P 0x22 512M 64k' -c 'write -q -P 0x55 576k 64k' \
        "$tmp/plain.qcow2" >/dev/null
l1off=$($patch "$tmp/plain.qcow2" get l1_table_offset)
rtoff=$($patch "$tmp/plain.qcow2" get refcount_table_offset)
[ "$($patch "$tmp/plain.qcow2" get l1_size)" -ge 2 ] || fail "plain.qcow2 has only one L1 entry"
l1_1=$($patch "$tmp/plain.qcow2" l1 1)
l2_3=$($patch "$tmp/plain.qcow2" l2 0 3)
TB=$((1 << 40))
OFLAG_COPIED=$((1 << 63))

P=$tmp/plain.qcow2
l1case ()   # l1case NAME MODE VALUE: set L1[1], read 512M
{
    local name=$1 mode=$2 v=$3
    cp "$P" "$tmp/$name.qcow2"
    $patch "$tmp/$name.qcow2" l1 1 "$v"
    serve "$name" "$tmp/$name.qcow2" "$mode" $((512 * M)):$C -- \
          0:$C:0x11 $((15 * C)):$C:0x11 $((16 * C)):$C:0 $((9 * C)):$C:0x55
}
l2case ()   # l2case NAME MODE VALUE: set L2[0][3], read cluster 3
{
    local name=$1 mode=$2 v=$3
    cp "$P" "$tmp/$name.qcow2"
    $patch "$tmp/$name.qcow2" l2 0 3 "$v"
    serve "$name" "$tmp/$name.qcow2" "$mode" $((3 * C)):$C $((3 * C + 512)):512 -- \
          0:$C:0x11 $((2 * C)):$C:0x11 $((4 * C)):$C:0x11 $((16 * C)):$C:0 \
          $((512 * M)):$C:0x22
}

# Sanity: the pristine image reads back as expected.
serve pristine "$P" strict -- 0:$C:0x11 $((9 * C)):$C:0x55 $((512 * M)):$C:0x22 \
      $((16 * C)):$C:0
[ ${#failures[@]} -eq 0 ] || fail "the unpatched image does not read back correctly"

l1case l1-reserved-bits     strict $((l1_1 | (1 << 56)))
l1case l1-reserved-low-bit  strict $((l1_1 | 1))
l1case l1-unaligned         strict $((l1_1 + 512))
l1case l1-past-eof          strict $((OFLAG_COPIED | TB))
l2case l2-reserved-bits     strict $((l2_3 | (1 << 56)))
l2case l2-reserved-low-bits strict $((l2_3 | 2))
l2case l2-unaligned         strict $((l2_3 + 512))
l2case l2-past-eof          strict $((OFLAG_COPIED | TB))
# Metadata pointing at other metadata: anything goes except a crash or hang.
l1case l1-at-header-copied  lenient $OFLAG_COPIED
l1case l1-at-header-rsvd    lenient $((OFLAG_COPIED | 0x1ff))
l1case l1-at-l1-table       lenient $((OFLAG_COPIED | l1off))
l1case l1-at-refcount-table lenient $((OFLAG_COPIED | rtoff))
l2case l2-at-header         lenient $OFLAG_COPIED
l2case l2-at-l1-table       lenient $((OFLAG_COPIED | l1off))

# ---- compressed clusters --------------------------------------------------
# cluster 0 and 1 compressed (0x66, 0x77), cluster 2 plain (0x11).
for ct in zlib zstd; do
    img=$tmp/comp-$ct.qcow2
    if ! qemu-img create -q -f qcow2 -o cluster_size=$C,compression_type=$ct "$img" 64M \
         2>/dev/null; then
        echo "skipping compression_type=$ct: qemu-img cannot create it"
        continue
    fi
    qemu-io -f qcow2 -c 'write -q -c -P 0x66 0 64k' -c 'write -q -c -P 0x77 64k 64k' \
            -c 'write -q -P 0x11 128k 64k' "$img" >/dev/null
    e=$($patch "$img" l2 0 1)
    [ $(( (e >> 62) & 1 )) -eq 1 ] || fail "comp-$ct.qcow2: cluster 1 is not compressed"
    # 64 KiB clusters: host offset is bits 0..53, sector count bits 54..61.
    omask=$(( (1 << 54) - 1 ))
    hoff=$((e & omask))

    cp "$img" "$tmp/comp-$ct-past-eof.qcow2"
    $patch "$tmp/comp-$ct-past-eof.qcow2" l2 0 1 $(( (e & ~omask) | TB ))
    serve comp-$ct-past-eof "$tmp/comp-$ct-past-eof.qcow2" strict $C:$C -- \
          0:$C:0x66 $((2 * C)):$C:0x11 $((3 * C)):$C:0

    cp "$img" "$tmp/comp-$ct-garbage.qcow2"
    $patch "$tmp/comp-$ct-garbage.qcow2" poke $hoff ffffffffffffffffffffffffffffffff
    serve comp-$ct-garbage "$tmp/comp-$ct-garbage.qcow2" strict $C:$C -- \
          0:$C:0x66 $((2 * C)):$C:0x11 $((3 * C)):$C:0
done

# ---- extended L2 ----------------------------------------------------------
# clusters 0 and 1 = 0x66 (all 32 subclusters allocated); set the zero bit
# of subcluster 0 of cluster 1 as well: that subcluster is invalid.
img=$tmp/extl2.qcow2
qemu-img create -q -f qcow2 -o cluster_size=$C,extended_l2=on "$img" 64M
qemu-io -f qcow2 -c 'write -q -P 0x66 0 128k' "$img" >/dev/null
bm=$($patch "$img" l2bitmap 0 1)
[ $((bm & 1)) -eq 1 ] || fail "extl2.qcow2: subcluster 0 of cluster 1 not allocated"
$patch "$img" l2bitmap 0 1 $((bm | (1 << 32)))
serve extl2-alloc-and-zero "$img" strict $C:2048 $C:$C -- \
      0:$C:0x66 $((2 * C)):$C:0

echo "$ncases cases, ${#failures[@]} failed${failures:+: ${failures[*]}}"

# ---- fuzz-lite ------------------------------------------------------------
seed=${QCOW2J_FUZZ_SEED:-$RANDOM}
iters=${QCOW2J_FUZZ_ITERS:-200}
budget=${QCOW2J_FUZZ_SECONDS:-40}
echo "fuzz: seed $seed (rerun with QCOW2J_FUZZ_SEED=$seed), up to $iters iterations / ${budget}s"
RANDOM=$seed

# Two small images: plain + compressed + zero clusters, and extended L2.
qemu-img create -q -f qcow2 -o cluster_size=$C "$tmp/fz0.qcow2" 16M
qemu-io -f qcow2 -c 'write -q -P 0x11 0 512k' -c 'write -q -c -P 0x22 1M 128k' \
        -c 'write -q -z 2M 64k' -c 'write -q -P 0x33 8M 64k' "$tmp/fz0.qcow2" >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=$C,extended_l2=on "$tmp/fz1.qcow2" 16M
qemu-io -f qcow2 -c 'write -q -P 0x11 0 100k' -c 'write -q -P 0x22 130k 6k' \
        -c 'write -q -z 300k 8k' -c 'write -q -P 0x33 8M 64k' "$tmp/fz1.qcow2" >/dev/null
regions=()
for i in 0 1; do
    f=$tmp/fz$i.qcow2
    fl1=$($patch "$f" get l1_table_offset)
    fl2=$($patch "$f" l2-offset 0)
    regions+=("$i 0:1024"                           # header, extensions
              "$i 0:$((2 * C))"                     # the first two clusters
              "$i $fl1:$((fl1 + 8))"                # the L1 entry
              "$i $fl2:$((fl2 + 2048))"             # the used L2 entries
              "$i $fl2:$((fl2 + C))")               # the whole L2 table
done

fuzzfail=0
start=$SECONDS
n=0
while [ $n -lt "$iters" ] && [ $((SECONDS - start)) -lt "$budget" ]; do
    r=(${regions[$((RANDOM % ${#regions[@]}))]})
    s=$((RANDOM * 32768 + RANDOM))   # not $RANDOM$RANDOM: "0" then "28634" is not a number
    img=$tmp/fuzz.qcow2
    cp "$tmp/fz${r[0]}.qcow2" "$img"
    what=$($patch "$img" flip "$s" 1 8 "${r[1]}")
    st=0
    timeout -k 5 20 bash -c \
        'nbdkit -U - "$QCOW2J" file="$1" --run "nbdcopy \"\$uri\" /dev/null || true; nbdinfo --map \"\$uri\" || true"' \
        _ "$img" >/dev/null 2>"$tmp/fuzz.err" || st=$?
    why=
    if [ $st -eq 124 ] || [ $st -eq 137 ]; then
        why="timed out after 20 s"
    elif [ $st -ge 128 ]; then
        why="killed by signal $((st - 128))"
    elif grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$tmp/fuzz.err"; then
        why="sanitizer report"
    fi
    if [ -n "$why" ]; then
        fuzzfail=$((fuzzfail + 1))
        echo "FAIL: fuzz iteration $n (image fz${r[0]}, region ${r[1]}, flips: $what): $why (exit status $st)"
        grep -v '^$' "$tmp/fuzz.err" | sed -e 's/^/    err| /' | head -n 15
    fi
    n=$((n + 1))
done
echo "fuzz: $n iterations in $((SECONDS - start))s, $fuzzfail failed"

if [ ${#failures[@]} -ne 0 ] || [ $fuzzfail -ne 0 ]; then
    exit 1
fi
