#!/usr/bin/env bash
# An image on a block device (a loop device: needs root) is served
# writable; the journal goes into the device's free space and the device
# never grows (lib/alloc.c: ENOSPC instead of extending).
#
# Part 1: a 48 MiB disk on a 64 MiB device: write 8 MiB, trim 2 MiB of it,
# write 4 MiB elsewhere, overwrite 1 MiB, flush, checking every read while
# the server runs.  Afterwards (device detached) qemu-img check on the
# backing file exits 0 (no leaks), the content is the model's (trimmed
# clusters read as zeroes or their old data, nothing else), and the file
# has its old size.
#
# Part 2: a 48 MiB disk on a 16 MiB device: write 1 MiB pieces until a
# write fails.  It must fail with ENOSPC (not EIO, not a dead server);
# everything written before reads back; an in-place overwrite still
# works; after trimming a piece a new write fits again (the freed
# clusters are released for it); the server closes cleanly, qemu-img
# check exits 0 (leaks count as failure), the content is the model's and
# the device file has its old size.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires qemu-img --version
requires qemu-io --version
if [ "$(id -u)" != 0 ]; then
    echo "$0: skipped: needs root (loop devices)"
    exit 77
fi
requires losetup --version

cd "$tmp"
MiB=$((1 << 20))

dev=
detach ()
{
    if [ -n "$dev" ]; then
        losetup -d "$dev" || fail "losetup -d $dev failed"
        dev=
    fi
}
cleanup_fn '[ -z "$dev" ] || losetup -d "$dev"'

# attach FILE: $dev is a loop device over FILE (skip if there is none).
attach ()
{
    if ! dev=$(losetup -f --show "$1" 2>&1); then
        echo "$0: skipped: losetup does not work here: $dev"
        dev=
        exit 77
    fi
}

# check_model IMG RAWMODEL TRIMMED: the guest content of IMG equals the
# model, except that in the TRIMMED ranges ("start:len ...") each cluster
# may also read as zeroes.
check_model ()
{
    to_raw "$1" got.raw
    python3 - got.raw "$2" "$3" <<'PY' || fail "${1#"$tmp"/}: content differs from the model"
import sys
got = open(sys.argv[1], 'rb').read()
exp = bytearray(open(sys.argv[2], 'rb').read())
CS = 65536
for r in sys.argv[3].split():
    s, n = (int(x) for x in r.split(':'))
    for o in range(s, s + n, CS):
        if got[o:o + CS] == bytes(CS):
            exp[o:o + CS] = bytes(CS)
if len(got) != len(exp):
    sys.exit("size %d, expected %d" % (len(got), len(exp)))
if got != exp:
    i = next(k for k in range(len(got)) if got[k] != exp[k])
    sys.exit("first difference at %#x: %02x, expected %02x" % (i, got[i], exp[i]))
PY
}

# ---- Part 1: read-write on a 64 MiB device ---------------------------------
truncate -s 64M dev1.img
qemu-img create -q -f qcow2 dev1.img 48M
truncate -s 64M dev1.img        # qemu-img create shrank it
attach dev1.img
dev_size=$(blockdev --getsize64 "$dev")
[ "$dev_size" = $((64 * MiB)) ] || fail "the loop device has $dev_size bytes"

serve_start "$dev"
python3 - "$uri" model1.raw <<'PY' || { cat "$server_log" >&2; fail "part 1: the workload failed"; }
import sys
import nbd
MiB = 1 << 20
h = nbd.NBD()
h.connect_uri(sys.argv[1])
if h.is_read_only():
    sys.exit("the block device is served read-only")
size = h.get_size()
model = bytearray(size)
def write(off, data):
    h.pwrite(data, off)
    model[off:off + len(data)] = data
def verify(off, n):
    got = h.pread(n, off)
    if got != model[off:off + n]:
        sys.exit("read [%#x, +%#x) differs from the model" % (off, n))
for i in range(8):
    write(i * MiB, bytes([0x50 + i]) * MiB)
h.flush()
verify(0, 8 * MiB)
h.trim(2 * MiB, 2 * MiB)            # [2M, 4M): zeroes or old data
got = h.pread(2 * MiB, 2 * MiB)
for o in range(0, 2 * MiB, 65536):
    piece = got[o:o + 65536]
    if piece != bytes(65536) and piece != model[2 * MiB + o:2 * MiB + o + 65536]:
        sys.exit("trimmed cluster at %#x reads as neither zeroes nor old data" % (2 * MiB + o))
for i in range(4):
    write(16 * MiB + i * MiB, bytes([0x70 + i]) * MiB)
write(5 * MiB, bytes([0x7f]) * MiB)       # in place
h.flush()
verify(4 * MiB, 4 * MiB)
verify(16 * MiB, 4 * MiB)
open(sys.argv[2], 'wb').write(model)
h.shutdown()
PY
serve_stop TERM
[ "$(blockdev --getsize64 "$dev")" = "$dev_size" ] || fail "the device changed size"
detach
[ "$(stat -c %s dev1.img)" = $((64 * MiB)) ] || fail "dev1.img changed size"
qcheck dev1.img
check_model dev1.img model1.raw "$((2 * MiB)):$((2 * MiB))"
qemu-io -f qcow2 -r -c "read -P 0x57 7M 1M" -c "read -P 0x73 19M 1M" dev1.img |
    grep -q "verification failed" && fail "qemu-io reads other data"
echo "ok: read-write on a block device"

# ---- Part 2: a device too small for the disk -------------------------------
truncate -s 16M dev2.img
qemu-img create -q -f qcow2 dev2.img 48M
truncate -s 16M dev2.img
attach dev2.img
dev_size=$(blockdev --getsize64 "$dev")

serve_start "$dev"
python3 - "$uri" model2.raw <<'PY' || { cat "$server_log" >&2; fail "part 2: the workload failed"; }
import errno, sys
import nbd
MiB = 1 << 20
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
model = bytearray(size)
def verify(off, n):
    got = h.pread(n, off)
    if got != model[off:off + n]:
        sys.exit("read [%#x, +%#x) differs from the model" % (off, n))

# Fill: 1 MiB pieces until one fails.
n = 0
err = None
while n < size // MiB:
    data = bytes([1 + n % 250]) * MiB
    try:
        h.pwrite(data, n * MiB)
    except nbd.Error as e:
        err = e
        break
    model[n * MiB:(n + 1) * MiB] = data
    n += 1
if err is None:
    sys.exit("48 MiB of data fitted on a 16 MiB device")
print("filled %d MiB, then: %s" % (n, err))
if err.errnum != errno.ENOSPC:
    sys.exit("the write failed with %s, expected ENOSPC" % err.errno)
if n < 4:
    sys.exit("only %d MiB fitted" % n)
# The failed piece may have been written in part: whatever it reads as
# now is what the model expects (old zeroes or new data, per cluster).
got = h.pread(MiB, n * MiB)
new = bytes([1 + n % 250]) * MiB
for o in range(0, MiB, 65536):
    piece = got[o:o + 65536]
    if piece not in (bytes(65536), new[:65536]):
        sys.exit("the failed write left cluster %#x neither old nor new" % (n * MiB + o))
model[n * MiB:(n + 1) * MiB] = got
# Still serving: reads, a flush, an in-place overwrite.
verify(0, (n + 1) * MiB)
h.flush()
data = bytes([0xee]) * MiB
h.pwrite(data, 0)
model[0:MiB] = data
h.flush()
verify(0, MiB)
# Trim a piece: a new write needs the room it frees, and gets it.
h.trim(MiB, MiB)
got = h.pread(MiB, MiB)
for o in range(0, MiB, 65536):
    piece = got[o:o + 65536]
    if piece != bytes(65536) and piece != model[MiB + o:MiB + o + 65536]:
        sys.exit("trimmed cluster at %#x reads as neither zeroes nor old data" % (MiB + o))
model[MiB:2 * MiB] = got
data = bytes([0xdd]) * MiB
try:
    h.pwrite(data, 40 * MiB)
except nbd.Error as e:
    sys.exit("a write after a trim freed 1 MiB failed: %s" % e)
model[40 * MiB:41 * MiB] = data
h.flush()
verify(0, size)
open(sys.argv[2], 'wb').write(model)
h.shutdown()
PY
serve_stop TERM
grep -v "no free space left on the device" "$server_log" | grep -i "error\|corrupt" &&
    fail "the server logged errors other than the device being full"
[ "$(blockdev --getsize64 "$dev")" = "$dev_size" ] || fail "the device changed size"
detach
[ "$(stat -c %s dev2.img)" = $((16 * MiB)) ] || fail "dev2.img changed size"
qcheck dev2.img
check_model dev2.img model2.raw ""
echo "ok: a full block device fails writes with ENOSPC and stays clean"
