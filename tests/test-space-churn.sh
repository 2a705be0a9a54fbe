#!/usr/bin/env bash
# Free space reuse (lib/space.c, lib/alloc.c, the checkpoint's release of
# freed clusters, and the clean close's cut of free space at the end of
# the file): a guest that writes, trims and rewrites the same 16 MiB over
# and over must not make the image grow by 16 MiB each time.
#
# Part 1: ten sessions, each writing 16 MiB, trimming it and writing it
# again (with a flush after each step).  After every session qemu-img
# check exits 0 and the content is what was written last.  The same
# operations go through qemu-io on a copy of the image (QEMU's qcow2
# frees trimmed clusters and reuses them at once); both file sizes, and
# the host blocks allocated, are logged per round.  After every session
# qcow2j's file must be no longer than QEMU's plus one cluster, and hold
# no more host blocks than QEMU's plus one cluster (nothing reserved past
# the end of the file is left behind).
#
# Part 2: one session repeating write/trim/rewrite ten times: while the
# server runs, the file holds at most twice the data plus the 4 MiB
# journal in host blocks (trimmed clusters come back to the allocator
# before the file grows); after the close, content, qemu-img check, length
# and host blocks as in part 1.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires qemu-img --version
requires qemu-io --version

cd "$tmp"
MiB=$((1 << 20))
DATA=$((16 * MiB))
SLACK=65536                     # one cluster

W="$tmp/churn.py"
cat > "$W" <<'PY'
# churn.py URI REPEATS P1 P2: REPEATS times write P1 over [0, 16M),
# flush, trim it, flush, write P2 over it, flush.  Then checks the
# content reads as P2.
import sys
import nbd

uri, repeats, p1, p2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0), \
    int(sys.argv[4], 0)
MiB = 1 << 20
DATA = 16 * MiB
CHUNK = 4 * MiB
h = nbd.NBD()
h.connect_uri(uri)
if not h.can_trim():
    sys.exit("churn: the server cannot trim")
b1 = bytes([p1]) * CHUNK
b2 = bytes([p2]) * CHUNK
for _ in range(repeats):
    for o in range(0, DATA, CHUNK):
        h.pwrite(b1, o)
    h.flush()
    for o in range(0, DATA, CHUNK):
        h.trim(CHUNK, o)
    h.flush()
    for o in range(0, DATA, CHUNK):
        h.pwrite(b2, o)
    h.flush()
for o in range(0, DATA, CHUNK):
    if h.pread(CHUNK, o) != b2:
        sys.exit("churn: [%#x, +%#x) does not read as %#x" % (o, CHUNK, p2))
h.shutdown()
PY

fsize () { stat -c %s "$1"; }
falloc () { echo $(($(stat -c "%b * %B" "$1"))); }

# qemu_churn IMG REPEATS P1 P2: the same operations through QEMU.
qemu_churn ()
{
    local img=$1 n=$2 p1=$3 p2=$4 args=() i
    for ((i = 0; i < n; i++)); do
        args+=(-c "write -q -P $p1 0 16M" -c flush
               -c "discard -q 0 16M" -c flush
               -c "write -q -P $p2 0 16M" -c flush)
    done
    qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null ||
        fail "qemu-io churn on ${img#"$tmp"/} failed"
}

# expect_content IMG P: [0, 16M) reads as P, the rest as zeroes.
expect_content ()
{
    local out
    out=$(qemu-io -f qcow2 -r -c "read -P $2 0 16M" -c "read -P 0 16M 48M" \
              "$1" 2>&1) || fail "qemu-io read of ${1#"$tmp"/}: $out"
    if grep -qi "pattern verification failed\|error" <<<"$out"; then
        echo "$out" >&2
        fail "${1#"$tmp"/}: content is not pattern $2 then zeroes"
    fi
}

# ---- Part 1: ten sessions -------------------------------------------------
qemu-img create -q -f qcow2 img.qcow2 64M
cp img.qcow2 ref.qcow2
for r in $(seq 1 10); do
    p1=$(printf '0x%02x' $((r * 2)))
    p2=$(printf '0x%02x' $((0x80 + r)))
    serve_start img.qcow2
    python3 "$W" "$uri" 1 "$p1" "$p2" ||
        { cat "$server_log" >&2; fail "round $r: the workload failed"; }
    serve_stop TERM
    qcheck img.qcow2
    expect_content img.qcow2 "$p2"
    qemu_churn ref.qcow2 1 "$p1" "$p2"
    qcheck ref.qcow2
    ours=$(fsize img.qcow2) theirs=$(fsize ref.qcow2)
    ours_a=$(falloc img.qcow2) theirs_a=$(falloc ref.qcow2)
    echo "round $r: qcow2j $ours bytes ($ours_a allocated)," \
         "qemu $theirs bytes ($theirs_a allocated)"
    # Whatever is freed is punched or reused: no more host blocks than
    # QEMU's; and the file is no longer than QEMU's.
    [ "$ours_a" -le $((theirs_a + SLACK)) ] ||
        fail "round $r: $ours_a bytes allocated, QEMU $theirs_a (+$SLACK allowed)"
    [ "$ours" -le $((theirs + SLACK)) ] ||
        fail "round $r: the file is $ours bytes, QEMU's $theirs (+$SLACK allowed)"
done
qemu-img compare -q img.qcow2 ref.qcow2 ||
    fail "qcow2j and QEMU disagree on the content"
echo "ok: ten sessions of churn"

# ---- Part 2: one session, ten repeats -------------------------------------
qemu-img create -q -f qcow2 one.qcow2 64M
cp one.qcow2 oneref.qcow2
serve_start one.qcow2
python3 "$W" "$uri" 10 0x11 0x22 ||
    { cat "$server_log" >&2; fail "one session: the workload failed"; }
open_size=$(fsize one.qcow2) open_alloc=$(falloc one.qcow2)
serve_stop TERM
qcheck one.qcow2
expect_content one.qcow2 0x22
qemu_churn oneref.qcow2 10 0x11 0x22
qcheck oneref.qcow2
ours=$(fsize one.qcow2) theirs=$(fsize oneref.qcow2)
ours_a=$(falloc one.qcow2) theirs_a=$(falloc oneref.qcow2)
echo "one session: qcow2j $open_size bytes ($open_alloc allocated) while" \
     "open, $ours ($ours_a allocated) after close;" \
     "qemu $theirs bytes ($theirs_a allocated)"
# While open the file is sparse (the journal lies past a gap as large as
# the disk): its host blocks are what count.
[ "$open_alloc" -le $((2 * DATA + 4 * MiB + 2 * MiB)) ] ||
    fail "one session: $open_alloc bytes allocated while open (2 x 16 MiB data + 4 MiB journal + 2 MiB allowed)"
[ "$ours" -le $((theirs + SLACK)) ] ||
    fail "one session: $ours bytes after close, QEMU's $theirs (+$SLACK allowed)"
# The close checkpoint releases and punches every trimmed cluster.
[ "$ours_a" -le $((theirs_a + SLACK)) ] ||
    fail "one session: $ours_a bytes allocated after close, QEMU's $theirs_a (+$SLACK allowed)"
qemu-img compare -q one.qcow2 oneref.qcow2 ||
    fail "one session: qcow2j and QEMU disagree on the content"
echo "ok: one session of churn"

# ---- Part 3: the gap below the journal after crashes -----------------------
# A sparse file's journal lies past a gap as large as the disk; a server
# killed leaves it there, and the next session must reuse it, not add a
# gap of its own each time.  After a clean close, the file is cut back.
qemu-img create -q -f qcow2 big.qcow2 1T
for r in 1 2 3; do
    serve_start big.qcow2
    nbdsh -u "$uri" -c "h.pwrite(b'\x5a' * 65536, $r * 65536)" -c 'h.flush()' ||
        fail "crash round $r: the write failed"
    serve_stop KILL || :
    size=$(fsize big.qcow2)
    echo "crash round $r: $size bytes"
    [ "$r" = 1 ] && first=$size
    [ "$size" -le $((first + 8 * MiB)) ] ||
        fail "crash round $r: the file grew to $size bytes ($first after the first crash)"
done
serve_start big.qcow2
nbdsh -u "$uri" -c 'assert h.pread(65536, 3 * 65536) == b"\x5a" * 65536'
serve_stop TERM
qcheck big.qcow2
[ "$(fsize big.qcow2)" -le $((2 * MiB)) ] ||
    fail "after a clean close the file is $(fsize big.qcow2) bytes"
echo "ok: crashes leave one gap"
