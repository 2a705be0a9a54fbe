#!/usr/bin/env bash
# Write path with qemu as the NBD client: qemu-io -f raw over the served
# image runs write -P (plain, FUA, writev), write -z (with and without -u),
# discard and batches of aio_write + aio_flush; the same commands run on
# a raw copy of the image with qemu-io.  Every discarded range is later
# rewritten by writes and zero writes (what a discard leaves is
# unspecified), and then the served content must equal the raw copy, both
# while the server runs (nbdcopy) and after it stops (qemu-img compare);
# qemu-img check must exit 0 after every stop.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"
source "$SRCDIR/tests/write-helpers.sh"

cd "$tmp"

# gen_cmds SIZE CS SEED NSEG NOPS: writes NSEG files seg.N, one qemu-io
# command per line; at the end of each segment every discarded range has
# been rewritten.
gen_cmds ()
{
    python3 - "$@" <<'PY'
import random, sys
size, cs, seed, nseg, nops = map(int, sys.argv[1:6])
r = random.Random(seed)

def rng_range(maxlen):
    k = r.random()
    if k < 0.3:
        c = r.randrange(size // cs)
        off, n = c * cs, r.randint(1, 3) * cs
    elif k < 0.6:
        off, n = r.randrange(size // 512) * 512, r.randint(1, 128) * 512
    else:
        b = r.randrange(1, size // cs) * cs
        off = max(0, b - r.randint(1, min(cs, 8192)))
        n = r.randint(1, 20000)
    return off, max(1, min(n, size - off, maxlen))

def pat():
    return "0x%02x" % r.randint(1, 255)

def cover(off, n):
    """Rewrite [off, off+n) in random pieces."""
    out, p = [], off
    while p < off + n:
        k = min(off + n - p, r.randint(1, 3 * cs))
        if r.random() < 0.3:
            out.append("write -z %s%d %d" % ("-u " if r.random() < .5 else "", p, k))
        else:
            out.append("write -P %s %d %d" % (pat(), p, k))
        p += k
    r.shuffle(out)          # the pieces do not overlap: order is free
    return out

for s in range(nseg):
    cmds, pending = [], []
    for i in range(nops):
        k = r.random()
        if k < 0.35:
            off, n = rng_range(4 * cs)
            cmds.append("write %s-P %s %d %d" % ("-f " if r.random() < .2 else "", pat(), off, n))
        elif k < 0.45:
            off, n = rng_range(4 * cs)
            parts = sorted(r.sample(range(1, n), min(n - 1, r.randint(0, 3)))) if n > 1 else []
            lens, q = [], 0
            for e in parts + [n]:
                lens.append(e - q); q = e
            cmds.append("writev -P %s %d %s" % (pat(), off, ' '.join(map(str, lens))))
        elif k < 0.6:
            off, n = rng_range(8 * cs)
            cmds.append("write -z %s%d %d" % ("-u " if r.random() < .5 else "", off, n))
        elif k < 0.72:
            off, n = rng_range(8 * cs)
            cmds.append("discard %d %d" % (off, n))
            pending.append((i + r.randint(0, 15), off, n))
        elif k < 0.85:
            # A batch of non-overlapping aio writes, then aio_flush.
            used = []
            for _ in range(r.randint(2, 8)):
                off, n = rng_range(2 * cs)
                if any(off < e and b < off + n for b, e in used):
                    continue
                used.append((off, off + n))
                cmds.append("aio_write -P %s %d %d" % (pat(), off, n))
            cmds.append("aio_flush")
        elif k < 0.9:
            cmds.append("flush")
        due = [p for p in pending if p[0] <= i]
        for p in due:
            pending.remove(p)
            cmds.extend(cover(p[1], p[2]))
    for p in pending:
        cmds.extend(cover(p[1], p[2]))
    cmds.append("flush")
    with open("seg.%d" % s, "w") as f:
        f.write('\n'.join(cmds) + '\n')
PY
}

# run_qio TARGET SEGFILE [FMT]: run the commands of SEGFILE with qemu-io.
run_qio ()
{
    local target=$1 seg=$2 args=() c out
    while IFS= read -r c; do args+=(-c "$c"); done < "$seg"
    if ! out=$(qemu-io -f raw "${args[@]}" "$target" 2>&1); then
        echo "$out" | grep -v -e '^wrote ' -e ' ops; ' >&2
        return 1
    fi
    if grep -qi -e error -e fail <<< "$out"; then
        echo "$out" | grep -i -e error -e fail >&2
        return 1
    fi
}

# variant LABEL IMG CS NSEG NOPS
variant ()
{
    local label=$1 img=$2 cs=$3 nseg=$4 nops=$5 size s
    size=$(image_size "$img")
    rm -f seg.*
    gen_cmds "$size" "$cs" $((test_seed + _vn)) "$nseg" "$nops"; _vn=$((_vn + 1))
    to_raw "$img" mirror.raw
    serve_start "$img"
    for s in $(seq 0 $((nseg - 1))); do
        run_qio "$uri" seg.$s || { serve_stop; fail "$label: qemu-io over NBD failed in segment $s"; }
        run_qio mirror.raw seg.$s || fail "$label: qemu-io on the raw mirror failed"
        rm -f served.raw
        nbdcopy "$uri" served.raw || { serve_stop; fail "$label: nbdcopy failed"; }
        if ! cmp -s mirror.raw served.raw; then
            { cmp -l mirror.raw served.raw | head -n 5; } >&2 || :
            serve_stop
            fail "$label: after segment $s the served content differs from the mirror"
        fi
    done
    serve_stop
    qcheck "$img"
    img_compare "$img" mirror.raw
    # And once more after reopening.
    serve_start "$img"
    rm -f served.raw
    nbdcopy "$uri" served.raw
    serve_stop
    qcheck "$img"
    cmp -s mirror.raw served.raw || fail "$label: content differs after reopening"
    echo "ok: $label ($(cat seg.* | wc -l) commands)"
}
_vn=0

qemu-img create -q -f qcow2 plain.qcow2 32M
variant "64k clusters" plain.qcow2 65536 3 150

qemu-img create -q -f qcow2 -o cluster_size=4096,extended_l2=off small.qcow2 8M
scribble small.qcow2 4096
variant "4k clusters" small.qcow2 4096 3 150

random_file base.raw $((12 << 20)) "$test_seed"
qemu-img convert -q -f raw -O qcow2 base.raw base.qcow2
qemu-img create -q -f qcow2 -o cluster_size=16384 -b base.qcow2 -F qcow2 top.qcow2 16M
variant "overlay with 16k clusters over random data" top.qcow2 16384 3 150
qemu-img compare -F raw base.qcow2 base.raw >/dev/null || fail "the backing file changed"

python3 -c '
import random, sys
r = random.Random(3)
with open(sys.argv[1], "wb") as f:
    for i in range(16 * 256):
        u = r.randbytes(r.randint(8, 100)); f.write((u * 100)[:4096])
' comp.raw
qemu-img convert -q -c -f raw -O qcow2 comp.raw comp.qcow2
variant "compressed clusters" comp.qcow2 65536 3 150
