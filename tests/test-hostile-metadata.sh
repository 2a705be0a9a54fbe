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
# tests/hostile-cases.sh crafts them (test-hostile-writes.sh drives writes
# through the same ones).
source "$SRCDIR/tests/hostile-cases.sh"
hostile_cases

for name in "${HC_NAMES[@]}"; do
    serve "$name" "${HC_IMG[$name]}" "${HC_MODE[$name]}" ${HC_BAD[$name]} -- \
          ${HC_GOOD[$name]}
    # Sanity: the pristine image reads back as expected.
    if [ "$name" = pristine ] && [ ${#failures[@]} -ne 0 ]; then
        fail "the unpatched image does not read back correctly"
    fi
done

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
