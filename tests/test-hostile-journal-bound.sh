#!/usr/bin/env bash
# A dirty journal that asks replay for more work than rule R6 allows
# (docs/journal-format.md section 9: here, transactions of a few dozen
# bytes that each zero the same 1 MiB, 129 MiB in all) is refused by every
# open (with a message naming the total and the bound): read-only servers
# serve nothing and a writable one does not start; none crashes or hangs,
# and the file does not change by a byte.  The same journal with 100 such transactions
# (under the bound) is replayed, in memory and in place: the refusals are
# not artefacts of the crafting.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires qemu-img --version
requires nbdcopy --version
cd "$tmp"

# A dirty journal: writes, a flush, then SIGKILL before any checkpoint.
qemu-img create -q -f qcow2 killed.qcow2 64M
serve_start killed.qcow2
nbdsh -u "$uri" -c '
for i in range(64):
    h.pwrite(bytes([i + 1]) * 65536, i * (1 << 20))
h.flush()
'
serve_stop KILL
[[ $(qemu-img info killed.qcow2 2>&1) == *'qcow2j journal dirty'* ]] ||
    fail "killed.qcow2 is not dirty"

# append_zero_chain IMG N: after the journal's chain, N transactions, each
# one ZERO record of the same 1 MiB past the end of the file.
append_zero_chain ()
{
    python3 - "$1" "$2" <<'EOF'
import struct, sys

def crc32c(data, table=[]):
    if not table:
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
            table.append(c)
    c = 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF

path, n = sys.argv[1], int(sys.argv[2])
with open(path, 'r+b') as f:
    d = f.read()
    size = len(d)
    # The Q2JL extension.
    off = struct.unpack('>I', d[100:104])[0]
    while True:
        t, ln = struct.unpack('>II', d[off:off + 8])
        if t == 0:
            sys.exit('no Q2JL extension')
        if t == 0x51324A4C:
            area, asize, jid = struct.unpack('>QQQ', d[off + 8:off + 32])
            break
        off += 8 + (ln + 7) // 8 * 8
    # The newest superblock, then the chain from its head.
    sbs = [struct.unpack('>Q', d[area + c * 4096 + 24:area + c * 4096 + 32]) +
           struct.unpack('>QQ', d[area + c * 4096 + 40:area + c * 4096 + 56])
           for c in (0, 1)]
    gen, head, seq = max(sbs)
    off = head
    while d[area + off:area + off + 4] == b'QJTX' and \
            struct.unpack('>QQ', d[area + off + 8:area + off + 24]) == (jid, seq):
        off += struct.unpack('>I', d[area + off + 28:area + off + 32])[0]
        off = 8192 if off == asize else off
        seq += 1
    if off + 4096 * n > asize or (off < head and off + 4096 * n > head):
        sys.exit('no room in the ring after the chain')
    tgt = (size + (2 << 20)) >> 20 << 20
    for k in range(n):
        rec = struct.pack('>HHIQQ', 3, 0, 24, tgt, 1 << 20)
        tx = bytearray(b'QJTX' + struct.pack('>IQQIIIIQ', 0, jid, seq + k,
                                             88, 4096, 1, 0, tgt + (1 << 20))
                       + bytes(16) + rec)
        tx[4:8] = struct.pack('>I', crc32c(tx))
        f.seek(area + off + 4096 * k)
        f.write(tx)
EOF
}

# expect_refused LOG: the log names the total and the bound, and no crash.
expect_refused ()
{
    grep -q 'ask replay for too much work: sectors written: [0-9]*, more than the bound of 262144' "$1" ||
        { cat "$1" >&2; fail "$1: no message naming the total and the bound"; }
    if grep -q 'Segmentation\|Aborted\|Assertion\|Sanitizer' "$1"; then
        cat "$1" >&2
        fail "$1: the server crashed"
    fi
}

cp killed.qcow2 hostile.qcow2
append_zero_chain hostile.qcow2 129
before=$(sha256sum < hostile.qcow2)
unchanged ()
{
    [ "$(sha256sum < hostile.qcow2)" = "$before" ] ||
        fail "hostile.qcow2 changed ($*)"
}

# Read-only servers: nbdkit -r, readonly=true, the cow filter.
for how in -r readonly=true --filter=cow; do
    pre=() post=()
    case "$how" in readonly=true) post=("$how") ;; *) pre=("$how") ;; esac
    start=$SECONDS
    if timeout 60 "${NBDKIT_CMD[@]}" -U - "${pre[@]}" "$QCOW2J" file=hostile.qcow2 \
            "${post[@]}" --run 'nbdcopy "$uri" ro.raw' 2> ro.log; then
        fail "read-only ($how): served a journal past the bound"
    fi
    [ $((SECONDS - start)) -lt 30 ] || fail "read-only ($how): took $((SECONDS - start)) s"
    expect_refused ro.log
    unchanged "read-only server, $how"
    echo "read-only ($how): refused: $(grep -o 'journal transactions.*' ro.log | head -1)"
done

# A writable server replays a dirty journal at startup: it refuses to
# start, saying why, quickly, and the file stays as it was (still dirty).
start=$SECONDS
if timeout 60 "${NBDKIT_CMD[@]}" -U - "$QCOW2J" file=hostile.qcow2 \
        --run 'nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 4096, 0)" -c "h.flush()"' \
        2> rw.log; then
    fail "writable: served a journal past the bound"
fi
[ $((SECONDS - start)) -lt 30 ] || fail "writable: took $((SECONDS - start)) s"
expect_refused rw.log
grep -q 'not served' rw.log || { cat rw.log >&2; fail "writable: no refusal at startup"; }
unchanged "writable server"
[[ $(qemu-img info hostile.qcow2 2>&1) == *'qcow2j journal dirty'* ]] ||
    fail "hostile.qcow2 is no longer dirty"
echo "writable: refused at startup, the file unchanged"

# Control: 100 transactions (under the bound) replay, and read as the
# image without them.
cp killed.qcow2 control.qcow2
append_zero_chain control.qcow2 100
nbdkit -U - -r "$QCOW2J" file=killed.qcow2 --run 'nbdcopy "$uri" want.raw'
nbdkit -U - -r "$QCOW2J" file=control.qcow2 --run 'nbdcopy "$uri" got-ro.raw' ||
    fail "control: the read-only server refused a journal under the bound"
cmp want.raw got-ro.raw || fail "control: read-only disk differs"
qcow2j_rw control.qcow2 "nbdcopy \"\$uri\" got-rw.raw" ||
    fail "control: the writable server refused a journal under the bound"
cmp want.raw got-rw.raw || fail "control: writable disk differs"
img_compare control.qcow2 want.raw
echo "control: 100 transactions replayed in memory and in place"
