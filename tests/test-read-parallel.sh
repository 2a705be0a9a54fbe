#!/usr/bin/env bash
# Read-only: concurrent readers on separate connections over a 1 GiB image
# with many allocated clusters spread over many L2 tables, with the default
# L2 cache and with a tiny one (l2-cache-size=64K) that forces evictions.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"
requires python3 -c 'import nbd'

size=$((1 << 30))
src="$tmp/src.raw"
# ~2500 extents of random data (512 bytes .. 96 KiB, assorted alignments),
# ~70 MiB in all, scattered over the whole GiB.
python3 - "$src" $size <<'PY'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
rnd = random.Random(20240601)
with open(path, 'wb') as f:
    f.truncate(size)
    for i in range(2500):
        length = rnd.choice([512, 4096, 65536, 98304, rnd.randrange(1, 50000)])
        off = rnd.randrange(0, size - length)
        if i % 3 == 0:
            off &= ~65535
        f.seek(off)
        f.write(os.urandom(length))
    f.seek(size - 4096)
    f.write(os.urandom(4096))
PY

cat > "$tmp/random-reads.py" <<'PY'
# random-reads.py URI REF: random reads of random sizes, several in flight,
# each compared with REF.
import os, random, sys
import nbd
uri, ref = sys.argv[1], sys.argv[2]
fd = os.open(ref, os.O_RDONLY)
size = os.fstat(fd).st_size
h = nbd.NBD()
h.connect_uri(uri)
assert h.get_size() == size
rnd = random.Random(os.getpid())
bad = 0
pending = []
def check(buf, off, n):
    global bad
    exp = os.pread(fd, n, off)
    if bytes(buf) != exp:
        bad += 1
        if bad < 5:
            i = next(k for k in range(n) if buf[k] != exp[k])
            print("random read [%#x, +%d): first difference at %#x" % (off, n, off + i),
                  file=sys.stderr)
for i in range(3000):
    n = rnd.choice([1, 511, 4096, 65536, 65537, 200000])
    off = rnd.randrange(0, size - n)
    buf = nbd.Buffer(n)
    cookie = h.aio_pread(buf, off)
    pending.append((cookie, buf, off, n))
    while len(pending) >= 16 or (i == 2999 and pending):
        c, b, o, m = pending.pop(0)
        while not h.aio_command_completed(c):
            h.poll(-1)
        check(b.to_bytearray(), o, m)
h.shutdown()
sys.exit(1 if bad else 0)
PY

# parallel_check IMG PARAM...
parallel_check ()
{
    local img=$1 label cmd i
    shift
    label="${img#"$tmp"/}${*:+ ($*)}"
    rm -f "$tmp"/out*.raw
    q () { printf %q "$1"; }
    cmd="set -e
nbdcopy --connections=1 \"\$uri\" $(q "$tmp/out1.raw") & p1=\$!
nbdcopy --connections=1 --no-extents --request-size=65536 \"\$uri\" $(q "$tmp/out2.raw") & p2=\$!
nbdcopy --connections=1 --request-size=4096 --requests=32 \"\$uri\" $(q "$tmp/out3.raw") & p3=\$!
python3 $(q "$tmp/random-reads.py") \"\$uri\" $(q "$src") & p4=\$!
rc=0
for p in \$p1 \$p2 \$p3 \$p4; do wait \$p || { echo \"reader pid \$p failed\" >&2; rc=1; }; done
exit \$rc"
    qcow2j_run "$img" "$cmd" "$@" || fail "$label: concurrent readers failed"
    for i in 1 2 3; do
        _cmp_raw "$label" "$src" "$tmp/out$i.raw" "concurrent reader $i"
    done
    echo "ok: $label"
}

img64="$tmp/par-64k.qcow2"
qemu-img convert -f raw -O qcow2 "$src" "$img64"
parallel_check "$img64"
parallel_check "$img64" l2-cache-size=64K

# 4k clusters: each L2 table maps only 2 MiB, so the whole GiB needs 512
# tables and a 64K cache holds 16 of them.
img4k="$tmp/par-4k.qcow2"
qemu-img convert -f raw -O qcow2 -o cluster_size=4096 "$src" "$img4k"
parallel_check "$img4k" l2-cache-size=64K
