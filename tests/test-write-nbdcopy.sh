#!/usr/bin/env bash
# Write path with nbdcopy: copy a 200 MiB sparse random disk (nbdkit
# sparse-random) into a fresh qcow2 image through the server, copy it back
# out and compare; again with --connections=4 (the server must advertise
# multi-conn, so nbdcopy really uses 4 connections) in both directions;
# then copy a second, different sparse disk over the written image, so
# that its holes become zero requests over allocated clusters.
# qemu-img check exits 0 after every stop, and qemu-img compare agrees.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires nbdkit sparse-random --version

cd "$tmp"
size=200M
s1=$((test_seed % 100000 + 1))
s2=$((s1 + 1))
nbdkit -U - sparse-random $size seed=$s1 percent=15 runlength=262144 --run 'nbdcopy "$uri" src1.raw'
nbdkit -U - sparse-random $size seed=$s2 percent=25 runlength=131072 --run 'nbdcopy "$uri" src2.raw'
echo "sources: $(du -k src1.raw | cut -f1) KiB and $(du -k src2.raw | cut -f1) KiB of data"

# cmp_sparse A B LABEL
cmp_sparse ()
{
    python3 "$SRCDIR/tests/cmp-sparse.py" "$1" "$2" >&2 || fail "$3: content differs"
}

# --- one connection -------------------------------------------------------
qemu-img create -q -f qcow2 one.qcow2 $size
qcow2j_rw one.qcow2 'nbdcopy src1.raw "$uri"' || fail "nbdcopy into the image failed"
img_compare one.qcow2 src1.raw
rm -f out.raw
qcow2j_rw one.qcow2 'nbdcopy "$uri" out.raw' readonly=true ||
    fail "nbdcopy out of the image (readonly=true) failed"
cmp_sparse src1.raw out.raw "copy out, one connection"
echo "ok: one connection"

# --- four connections -----------------------------------------------------
export RW_MULTI=1
qemu-img create -q -f qcow2 four.qcow2 $size
qcow2j_rw four.qcow2 '
    nbdinfo --can multi-conn "$uri" || { echo "multi-conn is not advertised" >&2; exit 1; }
    nbdcopy --connections=4 --requests=16 src1.raw "$uri"' ||
    fail "nbdcopy --connections=4 into the image failed"
img_compare four.qcow2 src1.raw
rm -f out.raw
qcow2j_rw four.qcow2 'nbdcopy --connections=4 --requests=16 "$uri" out.raw' ||
    fail "nbdcopy --connections=4 out of the image failed"
cmp_sparse src1.raw out.raw "copy out, four connections"
echo "ok: four connections"

# --- overwrite with a different sparse disk (zeroing allocated clusters),
# small requests on four connections, then copy out without extents -------
qcow2j_rw four.qcow2 '
    nbdcopy --connections=4 --requests=32 --request-size=65536 src2.raw "$uri" &&
    nbdcopy --connections=4 --no-extents "$uri" out2.raw' ||
    fail "overwriting copy failed"
img_compare four.qcow2 src2.raw
cmp_sparse src2.raw out2.raw "overwrite, copy out"
echo "ok: overwrite"

# --- the same into an image with 2M clusters, four connections -------------
qemu-img create -q -f qcow2 -o cluster_size=2M big.qcow2 $size
qcow2j_rw big.qcow2 'nbdcopy --connections=4 src2.raw "$uri"' || fail "copy into 2M clusters failed"
img_compare big.qcow2 src2.raw
echo "ok: 2M clusters"
