#!/usr/bin/env bash
# Write path: a random workload of pwrite, zero (NO_HOLE, FUA, FAST_ZERO),
# trim, flush and read through one connection, mirrored in a bytearray
# model; every read is checked against the model while the server runs.
# After the server stops: qemu-img check exits 0 and the image's guest
# content equals the model.  Run over many kinds of image: cluster sizes,
# refcount widths, extended L2, backing files (copy-on-write), compressed
# clusters, internal snapshots (which must keep their old content),
# zero clusters with host clusters, preallocation and compat=0.10
# (written without a journal: plain, backing file, compressed, snapshot).
#
# Trimmed ranges are read back at once: each 512-byte piece must be the
# old data, zeroes, or the backing file's data, and that is adopted into
# the model (any other content is a failure: it would expose data that
# was never there).
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"
source "$SRCDIR/tests/write-helpers.sh"

W="$tmp/workload.py"
cat > "$W" <<'PY'
import errno, os, random, sys
import nbd

uri, init, out, backing, seed, nops, cs = sys.argv[1:8]
seed, nops, cs = int(seed), int(nops), int(cs)
rng = random.Random(seed)
model = bytearray(open(init, 'rb').read())
size = len(model)
back = None
if backing != '-':
    back = bytearray(open(backing, 'rb').read())
    back[size:] = b''
    back += bytes(size - len(back))

h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
if h.is_read_only():
    print("workload: the server is read-only", file=sys.stderr)
    sys.exit(3)
if h.get_size() != size:
    sys.exit("workload: size %d, expected %d" % (h.get_size(), size))
for c in ('can_flush', 'can_fua', 'can_trim', 'can_zero'):
    if not getattr(h, c)():
        sys.exit("workload: %s is false" % c)
fast = h.can_fast_zero()
stats = dict(write=0, zero=0, fastzero=0, fastzero_enotsup=0, trim=0,
             flush=0, read=0, trim_kept=0, trim_zero=0, trim_backing=0,
             enotsup_kept=0, enotsup_zero=0)
# The NBD spec asks a fast zero that fails with ENOTSUP to leave the range
# alone only as "preferably"; qemu-nbd zeroes the aligned part first.
# Against qcow2j the range must be unchanged; QCOW2J_STANDIN relaxes that
# to "each piece old data or zeroes".
strict_fast_zero = os.environ.get('QCOW2J_STANDIN', '') == ''
last = ['']


def hook(t, v, tb):
    sys.__excepthook__(t, v, tb)
    print("workload: FAIL (seed %d) during %s" % (seed, last[0]), file=sys.stderr)
sys.excepthook = hook


def die(msg):
    print("workload: FAIL (seed %d) after %s: %s" % (seed, last[0], msg),
          file=sys.stderr)
    sys.exit(1)


def verify(off, n, what="read"):
    got = h.pread(n, off)
    exp = model[off:off + n]
    if got != exp:
        i = next(k for k in range(n) if got[k] != exp[k])
        die("%s [%#x, +%#x): first difference at %#x: got %s, expected %s"
            % (what, off, n, off + i, got[i:i + 8].hex(' '),
               exp[i:i + 8].hex(' ')))
    stats['read'] += 1


def rnd_range(maxlen):
    r = rng.random()
    nclu = size // cs
    if r < 0.3:                          # whole clusters
        c = rng.randrange(nclu)
        n = rng.randint(1, min(4, nclu - c)) * cs
        off = c * cs
    elif r < 0.55:                       # 512-aligned
        off = rng.randrange(size // 512) * 512
        n = rng.randint(1, 256) * 512
    elif r < 0.9:                        # unaligned, across a cluster boundary
        b = rng.randrange(1, nclu) * cs if nclu > 1 else size // 2
        off = max(0, b - rng.randint(1, min(cs, 16384)))
        n = rng.randint(1, 32768)
    else:                                # anywhere, small
        off = rng.randrange(size)
        n = rng.randint(1, 4096)
    n = max(1, min(n, size - off, maxlen))
    return off, n


def payload(n):
    r = rng.random()
    if r < 0.1:
        return bytes(n)                  # zeroes written as data
    if r < 0.3:                          # compressible
        unit = rng.randbytes(rng.randint(1, 64))
        return (unit * (n // len(unit) + 1))[:n]
    return rng.randbytes(n)


def around(off, n):
    lo = max(0, off - cs - rng.randint(0, 512))
    hi = min(size, off + n + cs + rng.randint(0, 512))
    return lo, hi - lo


def adopt(off, n, old, what, allow_backing):
    """Read [off, off+n) back; each 512-byte piece must be the old data,
    zeroes or (if allowed) backing data; the model takes what was read."""
    got = h.pread(n, off)
    p = off
    while p < off + n:
        e = min(off + n, (p // 512 + 1) * 512)
        a, b = p - off, e - off
        piece = got[a:b]
        if piece == old[a:b]:
            stats[what + '_kept'] += 1
        elif piece.count(0) == len(piece):
            stats[what + '_zero'] += 1
        elif allow_backing and back is not None and piece == back[p:e]:
            stats[what + '_backing'] += 1
        else:
            die("after %s [%#x, +%#x): [%#x, %#x) is neither the old data, "
                "zeroes nor backing data: %s"
                % (what, off, n, p, e, piece[:8].hex(' ')))
        p = e
    model[off:off + n] = got


def trim(off, n, flags):
    old = bytes(model[off:off + n])
    h.trim(n, off, flags)
    adopt(off, n, old, 'trim', True)


maxwrite = max(2 * cs, 1 << 20)
for i in range(nops):
    r = rng.random()
    if r < 0.45:
        off, n = rnd_range(maxwrite)
        data = payload(n)
        fl = nbd.CMD_FLAG_FUA if rng.random() < 0.2 else 0
        last[0] = "op %d: pwrite [%#x, +%#x) flags %#x" % (i, off, n, fl)
        h.pwrite(data, off, fl)
        model[off:off + n] = data
        stats['write'] += 1
    elif r < 0.70:
        off, n = rnd_range(4 * max(cs, 65536))
        fl = 0
        if rng.random() < 0.5:
            fl |= nbd.CMD_FLAG_NO_HOLE
        if rng.random() < 0.2:
            fl |= nbd.CMD_FLAG_FUA
        if fast and rng.random() < 0.3:
            fl |= nbd.CMD_FLAG_FAST_ZERO
        last[0] = "op %d: zero [%#x, +%#x) flags %#x" % (i, off, n, fl)
        try:
            h.zero(n, off, fl)
        except nbd.Error as e:
            if (fl & nbd.CMD_FLAG_FAST_ZERO) and e.errnum == errno.ENOTSUP:
                stats['fastzero_enotsup'] += 1
                if strict_fast_zero:
                    verify(off, n, "range after a fast zero that failed with ENOTSUP")
                else:
                    adopt(off, n, bytes(model[off:off + n]), 'enotsup', False)
                continue
            die("zero failed: %s" % e)
        model[off:off + n] = bytes(n)
        stats['fastzero' if fl & nbd.CMD_FLAG_FAST_ZERO else 'zero'] += 1
    elif r < 0.80:
        off, n = rnd_range(4 * max(cs, 65536))
        fl = nbd.CMD_FLAG_FUA if rng.random() < 0.2 else 0
        last[0] = "op %d: trim [%#x, +%#x) flags %#x" % (i, off, n, fl)
        trim(off, n, fl)
        stats['trim'] += 1
        continue
    elif r < 0.85:
        last[0] = "op %d: flush" % i
        h.flush()
        stats['flush'] += 1
        continue
    else:
        off, n = rnd_range(1 << 20)
        last[0] = "op %d: read [%#x, +%#x)" % (i, off, n)
        verify(off, n)
        continue
    # Read back around what was written (copy-on-write neighbours).
    if rng.random() < 0.5:
        verify(*around(off, n), what="read back around the last op")

last[0] = "the final flush and full read"
h.flush()
step = 4 << 20
for off in range(0, size, step):
    verify(off, min(step, size - off), "final full read")

# Block status: whatever is reported as reading zero must read zero.
if h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
    pos = 0
    while pos < size:
        ext = []
        def cb3(metacontext, offset, entries, err):
            if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
                ext.extend(zip(entries[0::2], entries[1::2]))
        h.block_status(size - pos, pos, cb3)
        if not ext:
            die("block status returned no extent at %#x" % pos)
        for ln, fl in ext:
            end = min(size, pos + ln)
            if fl & nbd.STATE_ZERO and model[pos:end].count(0) != end - pos:
                die("block status says [%#x, %#x) reads as zeroes, the model "
                    "has data there" % (pos, end))
            pos = end
            if pos >= size:
                break

h.shutdown()
with open(out, 'wb') as f:
    f.write(model)
print("workload: %s" % ' '.join('%s=%d' % kv for kv in stats.items()))
PY

# run_variant LABEL IMG NOPS CS [BACKING_RAW]: the workload on IMG; on
# return $tmp/model.raw holds the content IMG must have.
run_variant ()
{
    local label=$1 img=$2 nops=$3 cs=$4 backing=${5:--} rc=0 seed
    seed=$((test_seed + ${#label} * 7919 + _variant_n)); _variant_n=$((_variant_n + 1))
    to_raw "$img" "$tmp/init.raw"
    rm -f "$tmp/model.raw"
    qcow2j_rw "$img" "python3 $W \"\$uri\" $tmp/init.raw $tmp/model.raw $backing $seed $nops $cs" || rc=$?
    if [ "$rc" != 0 ]; then
        variant_rc=$rc
        if [ "${ACCEPT_REFUSAL:-0}" = 1 ]; then return 0; fi
        fail "$label: the workload failed (status $rc, seed $seed)"
    fi
    variant_rc=0
    img_compare "$img" "$tmp/model.raw"
    echo "ok: $label"
}
_variant_n=0

cd "$tmp"

# --- cluster sizes ------------------------------------------------------
qemu-img create -q -f qcow2 -o cluster_size=512 cs512.qcow2 4M
run_variant "cluster_size=512" cs512.qcow2 1200 512
qemu-img create -q -f qcow2 -o cluster_size=65536 cs64k.qcow2 32M
scribble cs64k.qcow2 65536
run_variant "cluster_size=64k" cs64k.qcow2 1200 65536
qemu-img create -q -f qcow2 -o cluster_size=2M cs2m.qcow2 64M
run_variant "cluster_size=2M" cs2m.qcow2 250 2097152

# --- refcount widths (small clusters: many refcount blocks) ----------------
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 rc1.qcow2 8M
run_variant "refcount_bits=1" rc1.qcow2 1000 512
qemu-img create -q -f qcow2 -o cluster_size=4096,refcount_bits=64 rc64.qcow2 16M
scribble rc64.qcow2 4096
run_variant "refcount_bits=64" rc64.qcow2 1000 4096

# --- extended L2 entries (subclusters) -----------------------------------
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=65536 el2.qcow2 32M
scribble el2.qcow2 65536
run_variant "extended_l2=on, 64k" el2.qcow2 1000 65536
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16384 el2s.qcow2 8M
run_variant "extended_l2=on, 16k" el2s.qcow2 800 16384

# --- backing file: unwritten parts show the backing data, partial writes
# copy the rest of the cluster from it.  The overlay is bigger than the
# backing file and has a different cluster size.
mkdir -p bk
qemu-img create -q -f qcow2 -o cluster_size=4096 bk/base.qcow2 12M
qio bk/base.qcow2 "write -P 0xb1 0 12M" "write -z 1M 512k" "write -z -u 3M 256k" \
    "discard 5M 128k"
sha_base=$(sha256sum < bk/base.qcow2)
(cd bk && qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.qcow2 -F qcow2 top.qcow2 16M)
qio bk/top.qcow2 "write -P 0x21 64k 64k" "write -z 256k 64k" "write -P 0x22 $((12*1048576 - 3000)) 6000"
to_raw bk/base.qcow2 bk/base.raw
run_variant "backing file" bk/top.qcow2 1200 65536 "$tmp/bk/base.raw"
[ "$(sha256sum < bk/base.qcow2)" = "$sha_base" ] || fail "the backing file was modified"
# Random data in the backing file, 512-byte overlay clusters.
random_file bk/rnd.raw $((6 << 20)) "$test_seed"
qemu-img convert -q -f raw -O qcow2 -o cluster_size=65536 bk/rnd.raw bk/rnd.qcow2
(cd bk && qemu-img create -q -f qcow2 -o cluster_size=512 -b rnd.qcow2 -F qcow2 top2.qcow2 8M)
run_variant "backing file, 512-byte overlay clusters" bk/top2.qcow2 1000 512 "$tmp/bk/rnd.raw"

# --- compressed clusters: partial overwrites keep the rest of the
# decompressed cluster.
python3 - comp.raw <<'PY'
import random, sys
r = random.Random(7)
with open(sys.argv[1], 'wb') as f:
    for i in range(16 * 256):          # 16 MiB of compressible 4k blocks
        unit = r.randbytes(r.randint(8, 200))
        f.write((unit * (4096 // len(unit) + 1))[:4096])
PY
for spec in "65536 zlib" "2097152 zlib" "65536 zstd"; do
    set -- $spec
    if ! qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=$1,compression_type=$2 \
         comp.raw comp-$1-$2.qcow2 2>/dev/null; then
        echo "note: no $2 compression in qemu-img: skipping that variant"
        continue
    fi
    qemu-img check comp-$1-$2.qcow2 | grep -c ' [1-9][0-9.]*% compressed' >/dev/null ||
        fail "comp-$1-$2.qcow2 has no compressed clusters"
    if [ $1 = 2097152 ]; then n=250; else n=1000; fi
    run_variant "compressed ($2, cluster_size=$1)" comp-$1-$2.qcow2 $n $1
done

# --- internal snapshot: the snapshot keeps its content --------------------
qemu-img create -q -f qcow2 -o cluster_size=65536 snap.qcow2 16M
qio snap.qcow2 "write -P 0x51 0 12M" "write -z 2M 1M" "write -P 0x52 $((5*1048576 + 100)) 3000"
qemu-img snapshot -c s1 snap.qcow2
to_raw snap.qcow2 snap-s1.raw
qio snap.qcow2 "write -P 0x53 64k 64k" "write -z 8M 64k"
run_variant "internal snapshot" snap.qcow2 1200 65536
qemu-img snapshot -l snap.qcow2 | grep -cw s1 >/dev/null || fail "snapshot s1 is gone"
cp snap.qcow2 snap-copy.qcow2
qemu-img snapshot -a s1 snap-copy.qcow2 || fail "qemu-img snapshot -a s1 failed"
qcheck snap-copy.qcow2
img_compare snap-copy.qcow2 snap-s1.raw
echo "ok: snapshot s1 unchanged"
# ... and a second snapshot, taken between two write sessions.
qemu-img snapshot -c s2 snap.qcow2
to_raw snap.qcow2 snap-s2.raw
run_variant "two internal snapshots" snap.qcow2 600 65536
for s in s1 s2; do
    cp snap.qcow2 snap-copy.qcow2
    qemu-img snapshot -a $s snap-copy.qcow2
    qcheck snap-copy.qcow2
    img_compare snap-copy.qcow2 snap-$s.raw
done
echo "ok: snapshots s1 and s2 unchanged"

# --- zero clusters that keep their host cluster (stale data inside) ------
qemu-img create -q -f qcow2 -o cluster_size=65536 zalloc.qcow2 16M
qio zalloc.qcow2 "write -P 0x5a 0 16M"
qio zalloc.qcow2 "write -z 1M 4M" "write -z 8M 64k" "write -z 10M 2M" "write -z 15M 1M"
qemu-img map --output=json zalloc.qcow2 | grep -c '"zero": true, "data": false, "offset"' >/dev/null ||
    fail "qemu-img made no zero clusters with host clusters"
run_variant "zero clusters with host clusters" zalloc.qcow2 1200 65536

# --- preallocation ---------------------------------------------------------
for p in metadata falloc; do
    qemu-img create -q -f qcow2 -o preallocation=$p,cluster_size=65536 pre-$p.qcow2 16M
    run_variant "preallocation=$p" pre-$p.qcow2 800 65536
done

# --- compat=0.10 (v2): written without a journal, tables in order
# (docs/journal-format.md 13.1); the version stays 2. ----------------------
v2_variant ()
{
    local label=$1 img=$2
    run_variant "$@"
    qemu-img info "$img" | grep -q 'compat: 0.10' ||
        fail "$label: the image is no longer version 2"
    # Nothing of a journal: no Q2JL extension (its magic) in the header.
    head -c 65536 "$img" | grep -qa Q2JL &&
        fail "$label: a journal extension in a v2 image"
    :
}
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=65536 v2.qcow2 16M
scribble v2.qcow2 65536
v2_variant "compat=0.10" v2.qcow2 1000 65536
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 v2-512.qcow2 4M
v2_variant "compat=0.10, cluster_size=512 (many tables)" v2-512.qcow2 1000 512
qemu-img create -q -f qcow2 -o compat=0.10 bk/v2base.qcow2 8M
qio bk/v2base.qcow2 "write -P 0xc1 0 8M"
to_raw bk/v2base.qcow2 bk/v2base.raw
(cd bk && qemu-img create -q -f qcow2 -o compat=0.10 -b v2base.qcow2 -F qcow2 v2top.qcow2)
v2_variant "compat=0.10 over a backing file" bk/v2top.qcow2 800 65536 "$tmp/bk/v2base.raw"
qemu-img convert -q -c -f raw -O qcow2 -o compat=0.10,cluster_size=65536 \
    comp.raw v2-comp.qcow2
v2_variant "compat=0.10, compressed clusters" v2-comp.qcow2 800 65536
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=65536 v2snap.qcow2 16M
qio v2snap.qcow2 "write -P 0x61 0 12M"
qemu-img snapshot -c s1 v2snap.qcow2
to_raw v2snap.qcow2 v2snap-s1.raw
v2_variant "compat=0.10, internal snapshot" v2snap.qcow2 1000 65536
cp v2snap.qcow2 v2snap-copy.qcow2
qemu-img snapshot -a s1 v2snap-copy.qcow2 || fail "v2: qemu-img snapshot -a s1 failed"
qcheck v2snap-copy.qcow2
img_compare v2snap-copy.qcow2 v2snap-s1.raw
echo "ok: compat=0.10: snapshot s1 unchanged"

# --- external data files -----------------------------------------------------
qemu-img create -q -f qcow2 -o data_file="$tmp/df.raw" df.qcow2 16M
qio df.qcow2 "write -P 0x3c 1M 2M"
run_variant "external data file" df.qcow2 800 65536
qemu-img create -q -f qcow2 -o data_file="$tmp/dfr.raw",data_file_raw=on dfr.qcow2 16M
qio dfr.qcow2 "write -P 0x3d 1M 2M"
run_variant "external raw data file" dfr.qcow2 800 65536
# The raw data file must read as the disk does.
cmp dfr.raw "$tmp/model.raw" || fail "the raw data file differs from the disk"
echo "ok: the raw data file reads as the disk"

# --- persistent bitmaps: kept, none left in use (test-write-bitmaps.sh
# checks their bits) -----------------------------------------------------------
qemu-img create -q -f qcow2 bm.qcow2 16M
qemu-img bitmap --add bm.qcow2 b0
qemu-img bitmap --add --disable bm.qcow2 b1
run_variant "persistent bitmaps" bm.qcow2 600 65536
[ "$(qemu-img info --output=json bm.qcow2 |
     python3 -c 'import json,sys; d=json.load(sys.stdin)
print(sum("in-use" in b["flags"] for b in d["format-specific"]["data"]["bitmaps"]))')" = 0 ] ||
    fail "persistent bitmaps: left in use"
echo "ok: persistent bitmaps kept, none in use"

# --- lazy refcounts left dirty by QEMU (refcounts stale, snapshot shared):
# rebuilt before the first write --------------------------------------------
qemu-img create -q -f qcow2 -o lazy_refcounts=on lazy.qcow2 16M
qio lazy.qcow2 "write -P 0x4d 0 4M"
qemu-img snapshot -c s1 lazy.qcow2
to_raw lazy.qcow2 "$tmp/lazy-s1.raw"
qemu-io -f qcow2 -c 'write -P 0x4e 0 1M' -c 'write -P 0x4f 6M 3M' -c abort \
    lazy.qcow2 >/dev/null 2>&1 || :
rc=0; qemu-img check lazy.qcow2 >/dev/null 2>&1 || rc=$?
[ $rc != 0 ] || fail "dirty lazy refcounts: QEMU left no stale refcounts to rebuild"
run_variant "dirty lazy refcounts, rebuilt" lazy.qcow2 600 65536
cp lazy.qcow2 lazy-copy.qcow2
qemu-img snapshot -a s1 lazy-copy.qcow2
img_compare lazy-copy.qcow2 "$tmp/lazy-s1.raw"
echo "ok: dirty lazy refcounts: snapshot s1 unchanged"
