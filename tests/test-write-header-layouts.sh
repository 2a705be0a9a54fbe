#!/usr/bin/env bash
# The first writable session adds the Q2JL extension and our feature names
# to cluster 0 without rewriting it (docs/journal-format.md 12.1, O4):
# after the last extension, moving the backing file name to the end of the
# cluster when it is in the way, or rewriting the first sector at once
# when everything lives there.  For each layout: the data is right, the
# backing file name and format survive, qemu-img checks the image clean,
# there is exactly one Q2JL, a busy kill leaves an image QEMU refuses by
# our feature's name, and a header QEMU rewrote since (dropping our names)
# gets them back.  An image whose header has no room is refused at startup
# with the reason, and left as it was.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires qemu-img --version
requires qemu-io --version
cd "$tmp"

# The extension types of cluster 0, in order, and the names of the last
# feature name table.
extensions ()
{
    python3 - "$1" <<'EOF'
import struct, sys
d = open(sys.argv[1], 'rb').read(65536)
hl = struct.unpack('>I', d[100:104])[0]
bfo = struct.unpack('>Q', d[8:16])[0]
cs = 1 << struct.unpack('>I', d[20:24])[0]
end = bfo if bfo else cs
pos, types, names = hl, [], []
while pos + 8 <= end:
    t, l = struct.unpack('>II', d[pos:pos + 8])
    if t == 0:
        break
    types.append('%08x' % t)
    if t == 0x6803f857:
        names = [d[pos + 8 + i + 2:pos + 8 + i + 48].rstrip(b'\0').decode()
                 for i in range(0, l, 48)]
    pos += 8 + (l + 7) // 8 * 8
print(' '.join(types))
print('|'.join(names))
EOF
}

# check_layout IMG: one Q2JL, our names in the last table.
check_layout ()
{
    local out types names
    out=$(extensions "$1")
    types=$(sed -n 1p <<<"$out")
    names=$(sed -n 2p <<<"$out")
    [ "$(grep -o 51324a4c <<<"$types" | wc -l)" = 1 ] ||
        fail "$1: not exactly one Q2JL extension: $types"
    [[ $names == *'qcow2j journal dirty: serve with nbdkit qcow2j'* ]] ||
        fail "$1: the last feature name table lacks our names: $names"
}

# busy_kill IMG MIB: write (allocating) at MIB MiB, flush and SIGKILL at
# once: QEMU must refuse the image by our feature's name; a clean session
# then recovers it.
busy_kill ()
{
    local img=$1 at=$(($2 << 20)) info
    serve_start "$img"
    nbdsh -u "$uri" -c "h.pwrite(b'\x3c' * 8192, $at)" -c 'h.flush()'
    serve_stop KILL
    info=$(qemu-img info "$img" 2>&1) && fail "$img: QEMU opened a dirty image"
    [[ $info == *'qcow2j journal dirty: serve with nbdkit qcow2j'* ]] ||
        fail "$img: QEMU's refusal does not name our feature: $info"
    qcow2j_rw "$img" 'nbdinfo --size "$uri" >/dev/null'
    qemu-io -f qcow2 -c "read -P 0x3c $at 8k" "$img" >/dev/null ||
        fail "$img: flushed write lost"
}

# long_name LEN: a relative file name of LEN bytes ending in .qcow2, in
# directories of at most 100 bytes.
long_name ()
{
    python3 -c '
import sys
n = int(sys.argv[1]) - len(".qcow2")
parts = []
while n > 101:
    parts.append("d" * 100)
    n -= 101
parts.append("b" * n + ".qcow2")
print("/".join(parts))' "$1"
}

# layout NAME CLUSTER_SIZE BACKING_NAME_LENGTH
layout ()
{
    local name=$1 cs=$2 len=$3 dir bname base top
    dir=$tmp/$name
    bname=$(long_name "$len")
    [ "${#bname}" = "$len" ] || fail "test set-up: long_name $len"
    mkdir -p "$dir/$(dirname "$bname")"
    base=$dir/$bname
    top=$dir/top.qcow2
    qemu-img create -q -f qcow2 "$base" 8M
    qemu-io -f qcow2 -c 'write -P 0x11 0 4M' "$base" >/dev/null
    (cd "$dir" && qemu-img create -q -f qcow2 -F qcow2 -b "$bname" \
        -o cluster_size="$cs" top.qcow2)
    [ "$(qemu-img info --output=json "$top" | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["backing-filename"])')" = "$bname" ] ||
        fail "$name: test set-up: backing name"

    qcow2j_rw "$top" 'nbdsh -u "$uri" -c "h.pwrite(b\"\\x22\" * 4096, 1 << 20)" -c "h.flush()"'
    check_layout "$top"
    qemu-img info "$top" | grep -c "backing file: $bname" >/dev/null ||
        fail "$name: backing file name lost: $(qemu-img info "$top")"
    qemu-img info "$top" | grep -c 'backing file format: qcow2' >/dev/null ||
        fail "$name: backing format lost"
    qemu-io -f qcow2 -c 'read -P 0x11 0 1M' -c 'read -P 0x22 1M 4k' \
        -c 'read -P 0x11 1052672 3141632' -c 'read -P 0 4M 4M' "$top" >/dev/null ||
        fail "$name: wrong content"
    busy_kill "$top" 5
    check_layout "$top"

    # QEMU rewrites the header (its own feature table only, Q2JL kept as
    # an unknown extension); the next session names our bits again.
    qemu-img amend -f qcow2 -o lazy_refcounts=on "$top"
    qemu-img amend -f qcow2 -o lazy_refcounts=off "$top"
    busy_kill "$top" 6
    check_layout "$top"
    qcheck "$top"
    echo "$name: ok: $(extensions "$top" | head -1)"
}

layout c64k-short 65536 20           # name after QEMU's table: moves
layout c4k-long 4096 600             # long name at the end of the cluster
layout c512-short 512 20             # one-sector cluster, name moves
layout c512-long 512 200             # no room to move: first sector rewritten

# No room at all: refused at startup with a clear error, image unchanged.
dir=$tmp/full
bname=$(long_name 360)
mkdir -p "$dir/$(dirname "$bname")"
qemu-img create -q -f qcow2 "$dir/$bname" 8M
(cd "$dir" && qemu-img create -q -f qcow2 -F qcow2 -b "$bname" \
    -o cluster_size=512 top.qcow2)
before=$(sha256sum < "$dir/top.qcow2")
SERVE_MAY_FAIL=1 qcow2j_rw "$dir/top.qcow2" \
    'nbdsh -u "$uri" -c "h.pwrite(b\"\\x22\" * 4096, 0)"' &&
    fail "full: a write succeeded without room for the journal extension"
grep -c 'cannot write to this image: no room in the header cluster' \
    "$server_log" >/dev/null || fail "full: no clear error: $(cat "$server_log")"
[ "$(sha256sum < "$dir/top.qcow2")" = "$before" ] ||
    fail "full: the refused image was changed"
echo "full: refused as expected"
