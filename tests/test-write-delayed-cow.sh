#!/usr/bin/env bash
# Delayed copy-on-write (docs/journal-format.md 8.6): writes smaller than
# a cluster into clusters whose content comes from a backing file (qcow2
# and raw), a compressed cluster or a cluster shared with a snapshot map
# a new cluster at once and leave the rest owed until a later write fills
# it or the commit copies it.  Over cluster sizes 512 B to 2 MiB (and
# extended L2 entries, where nothing is delayed): 4 KiB pieces written
# sequentially and at random, pieces of sectors, overwrites of parts of
# pieces, zeroes and trims of whole owed clusters and of parts, each read
# back before and after a flush (what is owed must read as the old
# content); after the server stops, qemu-img check exits 0 and the image
# equals the model.  Then the bytes: sequential 4 KiB writes with a flush
# every 32 over a backing file must not pass 1.1 bytes written (wchar of
# the server, /proc/PID/io) per byte sent.  Then kill -9 in the middle of
# unflushed pieces: what was flushed is there, every other sector holds
# its old content or what the client wrote, never zeroes where the
# backing file had data.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires qemu-img --version

W="$tmp/workload.py"
cat > "$W" <<'PY'
import random, sys
import nbd

uri, modelf, seed, cs = sys.argv[1:5]
seed, cs = int(seed), int(cs)
rng = random.Random(seed)
model = bytearray(open(modelf, 'rb').read())
size = len(model)
h = nbd.NBD()
h.connect_uri(uri)
K = 4096
what = ['']


def die(msg):
    sys.exit("delayed-cow: FAIL (seed %d, cs %d) after %s: %s"
             % (seed, cs, what[0], msg))


def verify(off, n):
    got = h.pread(n, off)
    exp = model[off:off + n]
    if got != exp:
        i = next(k for k in range(n) if got[k] != exp[k])
        die("read [%#x, +%#x): first difference at %#x: got %s, expected %s"
            % (off, n, off + i, got[i:i + 8].hex(' '),
               exp[i:i + 8].hex(' ')))


def write(off, n):
    data = rng.randbytes(n)
    what[0] = "write %#x+%#x" % (off, n)
    h.pwrite(data, off)
    model[off:off + n] = data


def zero(off, n, trim):
    what[0] = "zero %#x+%#x%s" % (off, n, " may_trim" if trim else "")
    h.zero(n, off, 0 if trim else nbd.CMD_FLAG_NO_HOLE)
    model[off:off + n] = bytes(n)


def trim(off, n):
    # A trim of whole clusters over data reads back as zeroes (they are
    # zero-flagged, as the backing file would show through otherwise);
    # adopt what it reads, which must be zeroes or what was there.
    what[0] = "trim %#x+%#x" % (off, n)
    h.trim(n, off)
    got = h.pread(n, off)
    for s in range(0, n, 512):
        p = got[s:s + 512]
        if p != model[off + s:off + s + 512] and p != bytes(512):
            die("trimmed sector %#x reads neither old data nor zeroes"
                % (off + s))
    model[off:off + n] = got


def flush():
    what[0] = "flush"
    h.flush()


def region_check(off, n):
    verify(off, n)


piece = min(K, cs // 2) if cs >= 1024 else 512
span = max(cs, 64 * 1024)          # work in units that hold whole clusters
nunits = size // span
units = list(range(nunits))
rng.shuffle(units)
u = iter(units)

# 1. Sequential pieces into clusters over old data, read back before and
#    after each flush; a flush half way through a cluster.
base = next(u) * span
for k, off in enumerate(range(base, base + span, piece)):
    write(off, piece)
    if k % 3 == 0:
        region_check(base, span)
    if k == (span // piece) // 2:
        flush()
        region_check(base, span)
flush()
region_check(base, span)

# 2. Random pieces into clusters: every piece aligned or not, some of
#    sectors, some overwriting parts of earlier ones.
base = next(u) * span
for k in range(40):
    kind = rng.randrange(4)
    if kind == 0:
        n = piece
        off = base + rng.randrange(span // piece) * piece
    elif kind == 1:
        n = 512 * rng.randrange(1, 9)
        off = base + rng.randrange((span - n) // 512 + 1) * 512
    else:
        n = rng.randrange(1, 3000)
        off = base + rng.randrange(span - n + 1)
    write(off, n)
    region_check(base, span)
    if rng.randrange(8) == 0:
        flush()
        region_check(base, span)
flush()
region_check(base, span)

# 3. Zeroes and trims over owed clusters: whole clusters (D5: nothing
#    owed any more), parts (a write of zeroes); read back, flush, read.
for trimming in (False, True):
    base = next(u) * span
    for c in range(base, base + span, cs):
        write(c + (cs // 4 // 512) * 512, min(piece, cs // 2))
    region_check(base, span)
    for c in range(base, base + span, cs * 2):
        if trimming:
            trim(c, cs)
        else:
            zero(c, cs, rng.randrange(2) == 0)
    region_check(base, span)
    # Partial zeroes in clusters still owed.
    for c in range(base + cs, base + span, cs * 2):
        if cs > 512:
            zero(c + 512, min(2048, cs - 512), True)
    region_check(base, span)
    flush()
    region_check(base, span)

# 4. Pieces left owed at the end: the close's commit fills them.
base = next(u) * span
for c in range(base, base + span, cs):
    # (512 B clusters: the piece crosses into the next cluster, or the
    # end of the disk.)
    write(c + cs // 2, min(512, size - (c + cs // 2)))
region_check(base, span)

open(modelf, 'wb').write(model)
h.shutdown()
PY

# run_case NAME CS BACKFMT SOURCE [CREATE_OPTS]
#   SOURCE: backing (qcow2 or raw backing file), compressed (the data in
#   compressed clusters), snapshot (the data in clusters an internal
#   snapshot shares).
run_case ()
{
    local name=$1 cs=$2 backfmt=$3 source=$4 opts=${5:-}
    local size=$((cs > 512 * 1024 ? 6 * cs : 4 * 1024 * 1024))
    local img="$tmp/$name.qcow2" model="$tmp/$name.raw"
    local seed=$((test_seed + cs))

    random_file "$model" $size $seed
    # Some holes in the old content too.
    qemu-io -f raw -c "write -z $((size / 2)) 65536" "$model" >/dev/null
    case $source in
        backing)
            if [ "$backfmt" = raw ]; then
                cp "$model" "$tmp/$name.back"
            else
                qemu-img convert -f raw -O qcow2 -o cluster_size=65536 \
                    "$model" "$tmp/$name.back"
            fi
            qemu-img create -q -f qcow2 -b "$tmp/$name.back" -F "$backfmt" \
                -o "cluster_size=$cs$opts" "$img" ;;
        compressed)
            qemu-img convert -c -f raw -O qcow2 -o "cluster_size=$cs$opts" \
                "$model" "$img" ;;
        snapshot)
            qemu-img convert -f raw -O qcow2 -o "cluster_size=$cs$opts" \
                "$model" "$img"
            qemu-img snapshot -c before "$img" ;;
    esac
    cp "$model" "$tmp/$name.before"
    qcow2j_rw "$img" "python3 '$W' \"\$uri\" '$model' $seed $cs" ||
        fail "$name: the workload failed"
    img_compare "$img" "$model"
    if [ "$source" = snapshot ]; then
        # The snapshot keeps its old content.
        qemu-img convert -O raw -l snapshot.name=before "$img" "$tmp/snap.raw"
        cmp "$tmp/snap.raw" "$tmp/$name.before" ||
            fail "$name: the snapshot changed"
        rm -f "$tmp/snap.raw"
    fi
    rm -f "$img" "$model" "$tmp/$name.back" "$tmp/$name.before"
    echo "$0: $name ok"
}

run_case qcow2-64k 65536 qcow2 backing
run_case raw-64k 65536 raw backing
run_case qcow2-4k 4096 qcow2 backing
run_case raw-16k 16384 raw backing
run_case qcow2-512 512 qcow2 backing
run_case qcow2-2m 2097152 qcow2 backing
run_case extl2-64k 65536 qcow2 backing ",extended_l2=on"
run_case compressed-64k 65536 - compressed
run_case compressed-8k 8192 - compressed
run_case snapshot-64k 65536 - snapshot
run_case snapshot-32k 32768 - snapshot

# Bytes written per byte sent: sequential 4 KiB writes with a flush every
# 32 over a filled backing file (bench/'s overlay-fsync32 row, small).
# wchar counts every byte the server passed to write calls; the data, the
# journal's transactions and nothing else should be there.
BYTES="$tmp/bytes.py"
cat > "$BYTES" <<'PY'
import sys
import nbd

uri, pid, n = sys.argv[1], sys.argv[2], int(sys.argv[3])


def wchar():
    for line in open('/proc/%s/io' % pid):
        if line.startswith('wchar:'):
            return int(line.split()[1])


h = nbd.NBD()
h.connect_uri(uri)
buf = b'\xa5' * 4096
# The journal is set up by the first write: a whole cluster elsewhere.
h.pwrite(b'\0' * 65536, n * 4096)
h.flush()
w0 = wchar()
for i in range(n):
    h.pwrite(buf, i * 4096)
    if (i + 1) % 32 == 0:
        h.flush()
ratio = (wchar() - w0) / (n * 4096)
print("bytes written per byte sent: %.3f" % ratio)
if ratio > 1.1:
    sys.exit("delayed-cow: FAIL: %.3f bytes written per byte sent (at most "
             "1.1)" % ratio)
h.shutdown()
PY
random_file "$tmp/back.raw" $((8 * 1024 * 1024)) $test_seed
qemu-img convert -f raw -O qcow2 "$tmp/back.raw" "$tmp/back.qcow2"
qemu-img create -q -f qcow2 -b "$tmp/back.qcow2" -F qcow2 "$tmp/top.qcow2"
serve_start "$tmp/top.qcow2"
python3 "$BYTES" "$uri" "$server_pid" 1536 || fail "bytes per byte sent"
serve_stop TERM
qcheck "$tmp/top.qcow2"
rm -f "$tmp/top.qcow2"

# kill -9 with pieces unflushed: flushed pieces are there; every other
# sector reads its old content or the data written to it.
KILL="$tmp/kill.py"
cat > "$KILL" <<'PY'
import random, sys
import nbd

uri, back, state, seed, phase = sys.argv[1:6]
rng = random.Random(int(seed))
old = open(back, 'rb').read()
size = len(old)
cs = 65536
h = nbd.NBD()
h.connect_uri(uri)

if phase == 'write':
    # Flushed: clusters 0-7 written in part and cluster 8 whole; then
    # unflushed pieces into clusters 16-31.  Record both.
    flushed = bytearray(old)
    mine = {}
    for c in range(8):
        off = c * cs + rng.randrange(16) * 4096
        d = rng.randbytes(4096)
        h.pwrite(d, off)
        flushed[off:off + 4096] = d
    d = rng.randbytes(cs)
    h.pwrite(d, 8 * cs)
    flushed[8 * cs:9 * cs] = d
    h.flush()
    for k in range(64):
        off = (16 + rng.randrange(16)) * cs + rng.randrange(128) * 512
        n = min(512 * rng.randrange(1, 9), size - off)
        d = rng.randbytes(n)
        h.pwrite(d, off)
        for s in range(off // 512, (off + n) // 512):
            mine.setdefault(s, []).append(d[s * 512 - off:(s + 1) * 512 - off])
    with open(state, 'wb') as f:
        f.write(flushed)
    with open(state + '.unflushed', 'w') as f:
        for s, vs in mine.items():
            for v in vs:
                f.write("%d %s\n" % (s, v.hex()))
    print("written")
    sys.stdout.flush()
else:
    flushed = open(state, 'rb').read()
    unflushed = {}
    for line in open(state + '.unflushed'):
        s, v = line.split()
        unflushed.setdefault(int(s), []).append(bytes.fromhex(v))
    got = h.pread(size, 0)
    bad = 0
    for s in range(size // 512):
        p = got[s * 512:(s + 1) * 512]
        ok = [flushed[s * 512:(s + 1) * 512]] + unflushed.get(s, [])
        if p not in ok:
            bad += 1
            if bad < 5:
                print("sector %d: %s, neither old content nor written%s"
                      % (s, "zeroes" if p == bytes(512) else p[:8].hex(),
                         "" if s in unflushed else " (never written)"),
                      file=sys.stderr)
    if bad:
        sys.exit("delayed-cow: FAIL: %d sectors wrong after kill -9" % bad)
    print("after kill -9: every sector old or written")
h.shutdown()
PY
qemu-img create -q -f qcow2 -b "$tmp/back.qcow2" -F qcow2 "$tmp/top.qcow2"
serve_start "$tmp/top.qcow2"
python3 "$KILL" "$uri" "$tmp/back.raw" "$tmp/state" $test_seed write ||
    fail "kill -9: the writes failed"
serve_stop KILL
serve_start "$tmp/top.qcow2"
python3 "$KILL" "$uri" "$tmp/back.raw" "$tmp/state" $test_seed check ||
    fail "kill -9: the image is wrong after replay"
serve_stop TERM
qcheck "$tmp/top.qcow2"
