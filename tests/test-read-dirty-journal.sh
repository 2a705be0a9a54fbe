#!/usr/bin/env bash
# An image left with a dirty journal (server killed while busy) is served
# read-only by replaying the journal in memory (docs/journal-format.md
# 11.5): readonly=true, nbdkit -r and the cow filter all read the
# replayed disk, and the file is not changed by a byte.  A later writable
# server replays it in place and serves the same disk.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires qemu-img --version
requires nbdcopy --version
cd "$tmp"

# killed_image IMG CLUSTER_SIZE [BACKING]: allocating writes, zeroes and
# trims, flushed, then SIGKILL before the checkpoint: a dirty journal.
killed_image ()
{
    local img=$1 cs=$2 backing=${3:-} info
    if [ -n "$backing" ]; then
        qemu-img create -q -f qcow2 -F qcow2 -b "$backing" \
            -o cluster_size="$cs" "$img"
    else
        qemu-img create -q -f qcow2 -o cluster_size="$cs" "$img" 64M
    fi
    serve_start "$img"
    nbdsh -u "$uri" -c '
import random
r = random.Random(7)
for i in range(300):
    off = r.randrange(0, 64 << 20, 512)
    n = min(r.choice([512, 4096, 65536, 200000]), (64 << 20) - off)
    k = r.random()
    if k < 0.7:
        h.pwrite(bytes([i % 250 + 1]) * n, off)
    elif k < 0.85:
        h.zero(n, off)
    else:
        h.trim(n, off)
h.flush()
'
    serve_stop KILL
    info=$(qemu-img info "$img" 2>&1) && fail "$img: the image is not dirty"
    [[ $info == *'qcow2j journal dirty: serve with nbdkit qcow2j'* ]] || fail "$img: $info"
}

# read_all IMG OUT HOW: the disk served read-only (HOW: param, -r or
# cow), copied to OUT.
read_all ()
{
    local img=$1 out=$2 how=$3 pre=() post=()
    case "$how" in
        param) post=(readonly=true) ;;
        -r) pre=(-r) ;;
        cow) pre=(--filter=cow) ;;
    esac
    nbdkit -U - "${pre[@]}" "$QCOW2J" file="$img" "${post[@]}" \
        --run "nbdcopy \"\$uri\" '$out'" 2> read.log ||
        { cat read.log >&2; fail "$img: reading it read-only ($how) failed"; }
}

qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x33 0 64M' base.qcow2 >/dev/null

for layout in "64k 65536" "4k-backing 4096 base.qcow2" "512 512"; do
    set -- $layout
    name=$1
    killed_image "$name.qcow2" "$2" "${3:-}"
    before=$(sha256sum < "$name.qcow2")

    read_all "$name.qcow2" "$name-ro.raw" param
    read_all "$name.qcow2" "$name-r.raw" -r
    read_all "$name.qcow2" "$name-cow.raw" cow
    [ "$(sha256sum < "$name.qcow2")" = "$before" ] ||
        fail "$name: a read-only server changed the file"
    cmp "$name-ro.raw" "$name-r.raw" || fail "$name: -r reads differ"
    cmp "$name-ro.raw" "$name-cow.raw" || fail "$name: cow filter reads differ"

    # Replayed in place by a writable server: the same disk, and clean.
    qcow2j_rw "$name.qcow2" "nbdcopy \"\$uri\" '$name-rw.raw'"
    cmp "$name-ro.raw" "$name-rw.raw" ||
        fail "$name: the disk replayed in memory differs from the one replayed in place"
    img_compare "$name.qcow2" "$name-ro.raw"
    echo "$name: ok"
done

# A damaged journal (a byte of the first transaction flipped: the chain
# ends there, as after a torn commit): the read-only server neither
# crashes nor changes the file.
killed_image bad.qcow2 65536
python3 - bad.qcow2 <<'EOF'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    d = f.read()
    # The first transaction after the superblocks: flip a payload byte.
    i = d.find(b'QJTX')
    assert i > 0, 'no transaction found'
    f.seek(i + 100)
    b = f.read(1)
    f.seek(i + 100)
    f.write(bytes([b[0] ^ 0xff]))
EOF
before=$(sha256sum < bad.qcow2)
nbdkit -U - "$QCOW2J" file=bad.qcow2 readonly=true \
    --run 'nbdcopy "$uri" bad.raw' 2> bad.log || :
[ "$(sha256sum < bad.qcow2)" = "$before" ] || fail "bad: the file changed"
grep -c 'Segmentation\|Aborted\|Assertion\|Sanitizer' bad.log >/dev/null &&
    fail "bad: the server crashed: $(cat bad.log)"
echo "bad: ok"
