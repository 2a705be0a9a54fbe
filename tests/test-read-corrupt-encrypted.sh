#!/usr/bin/env bash
# Read-only: an image with the corrupt bit set is still served read-only
# with the right content; encrypted images and images with unknown
# incompatible feature bits are refused with a useful message.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

# set_incompat IMG BIT: OR bit BIT into incompatible_features (header
# offset 72, big-endian u64).
set_incompat ()
{
    python3 - "$1" "$2" <<'PY'
import struct, sys
path, bit = sys.argv[1], int(sys.argv[2])
with open(path, 'r+b') as f:
    f.seek(72)
    v = struct.unpack('>Q', f.read(8))[0] | (1 << bit)
    f.seek(72)
    f.write(struct.pack('>Q', v))
PY
}

# expect_refused IMG REGEX WHAT: qcow2j must refuse IMG (nbdkit exits
# non-zero) with a message on stderr matching the extended regex REGEX
# (case-insensitive).
expect_refused ()
{
    local img=$1 re=$2 what=$3 rc=0
    qcow2j_run "$img" 'nbdinfo --size "$uri"' > "$tmp/out" 2> "$tmp/err" || rc=$?
    if [ $rc = 0 ]; then
        cat "$tmp/out" "$tmp/err"
        fail "$what: qcow2j served $img instead of refusing it"
    fi
    if ! grep -q -i -E "$re" "$tmp/err"; then
        echo "--- stderr ---"; cat "$tmp/err"; echo "--------------"
        fail "$what: refused, but the message does not match /$re/"
    fi
    echo "ok: $what refused: $(grep -i -E "$re" "$tmp/err" | head -n 1)"
}

# --- corrupt bit (incompatible bit 1): byte 79 |= 0x02 ----------------------
img="$tmp/corrupt.qcow2"
qemu-img create -q -f qcow2 -o compat=1.1 "$img" 8M
scribble "$img" 65536
python3 - "$img" <<'PY'
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(79)
    b = f.read(1)[0] | 0x02
    f.seek(79)
    f.write(bytes([b]))
PY
qemu-img info "$img" | grep -c 'corrupt: true' >/dev/null || fail "corrupt bit not set"
check_image "$img" readonly=true

# Corrupt bit on an image with a backing file and compressed clusters.
base="$tmp/corrupt-base.qcow2"
qemu-img create -q -f qcow2 "$base" 4M
qio "$base" "write -P 0x77 0 4M"
img="$tmp/corrupt-top.qcow2"
qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$img"
qio "$img" "write -c -P 0x78 0 65536" "write -z 1M 65536"
set_incompat "$img" 1
check_image "$img" readonly=true

# --- encryption -------------------------------------------------------------
img="$tmp/luks.qcow2"
# qemu-img times its key derivation and, on a loaded machine, sometimes
# fails with "Unable to get accurate CPU usage": try a few times.
for try in 1 2 3 4 5; do
    qemu-img create -q -f qcow2 --object secret,id=sec0,data=abc \
             -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=50 \
             "$img" 4M && break
    [ $try = 5 ] && fail "qemu-img could not create a LUKS image"
    sleep 1
done
expect_refused "$img" 'encrypt' "LUKS-encrypted image"

if qemu-img create -q -f qcow2 --object secret,id=sec0,data=abc \
            -o encrypt.format=aes,encrypt.key-secret=sec0 "$tmp/aes.qcow2" 4M 2>/dev/null
then
    expect_refused "$tmp/aes.qcow2" 'encrypt' "AES-encrypted image"
else
    echo "note: qemu-img cannot create AES-encrypted qcow2; skipped"
fi

# crypt_method (header offset 32, u32) forced to 1 on a plain image.
img="$tmp/crypt1.qcow2"
qemu-img create -q -f qcow2 "$img" 4M
qio "$img" "write -P 0x12 0 65536"
printf '\x00\x00\x00\x01' | dd of="$img" bs=1 seek=32 conv=notrunc status=none
expect_refused "$img" 'encrypt' "crypt_method=1 image"

# --- unknown incompatible feature bits -------------------------------------
# Bit 20 with no feature name table entry: the message must name the bit
# (as "20" or as the hex mask 100000 / 0x100000).
img="$tmp/unknown.qcow2"
qemu-img create -q -f qcow2 "$img" 4M
qio "$img" "write -P 0x21 0 65536"
set_incompat "$img" 20
expect_refused "$img" '(^|[^0-9])20([^0-9]|$)|(^|[^0-9a-f])(0x)?0*100000([^0-9a-f]|$)' "unknown incompatible bit 20"

# Bit 21 with a feature name table entry naming it: the message must use
# the name.  qemu-img writes a feature name table (extension 0x6803f857,
# 48-byte entries: u8 type, u8 bit, char name[46]) in v3 images; rewrite
# one entry to describe incompatible bit 21.
img="$tmp/named.qcow2"
qemu-img create -q -f qcow2 "$img" 4M
qio "$img" "write -P 0x22 0 65536"
python3 - "$img" <<'PY'
import struct, sys
NAME = b'qcow2j test feature'
with open(sys.argv[1], 'r+b') as f:
    h = f.read(4096)
    hlen = struct.unpack('>I', h[100:104])[0]
    pos = hlen
    while True:
        t, l = struct.unpack('>II', h[pos:pos + 8])
        if t == 0:
            sys.exit("no feature name table")
        if t == 0x6803f857:
            break
        pos += 8 + ((l + 7) & ~7)
    entries = [h[pos + 8 + i:pos + 8 + i + 48] for i in range(0, l, 48)]
    # Rewrite the last incompatible entry (keeps the others intact).
    idx = max(i for i, e in enumerate(entries) if e[0] == 0)
    entry = bytes([0, 21]) + NAME + b'\0' * (46 - len(NAME))
    f.seek(pos + 8 + idx * 48)
    f.write(entry)
    f.seek(72)
    v = struct.unpack('>Q', f.read(8))[0] | (1 << 21)
    f.seek(72)
    f.write(struct.pack('>Q', v))
PY
expect_refused "$img" 'qcow2j test feature' "named unknown incompatible bit 21"
