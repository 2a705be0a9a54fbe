#!/usr/bin/env bash
# Read-only: images with internal snapshots, persistent dirty bitmaps
# (including one left in use by a crash) and a dirty lazy_refcounts image.
# Reads must show the active layer, and serving must not change a byte of
# the file.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"

# check_unchanged IMG PARAM...: check_image, plus an explicit before/after
# checksum of IMG.
check_unchanged ()
{
    local img=$1 before
    before=$(sha256sum < "$img")
    check_image "$@"
    [ "$(sha256sum < "$img")" = "$before" ] ||
        fail "$img: the image file changed while served read-only"
}

# header_u64 IMG OFFSET
header_u64 ()
{
    python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); f.seek(int(sys.argv[2])); print(struct.unpack(">Q", f.read(8))[0])' "$1" "$2"
}

# --- internal snapshots ----------------------------------------------------
img="$tmp/snap.qcow2"
qemu-img create -q -f qcow2 "$img" 8M
qio "$img" "write -P 0x01 0 4M" "write -z 5M 1M"
qemu-img snapshot -c s1 "$img"
qio "$img" "write -P 0x02 65536 65536" \
           "write -P 0x03 $((1048576 + 100)) 5000" \
           "write -z 2M 65536" \
           "discard 3M 131072" \
           "write -P 0x04 6M 65536"
qemu-img snapshot -c s2 "$img"
qio "$img" "write -P 0x05 0 4096" "write -z -u 65536 65536" "write -P 0x06 7M 1M"
qemu-img snapshot -l "$img" | grep -c s2 >/dev/null || fail "snapshots not created"
check_unchanged "$img"

# Snapshot deleted again (refcounts drop, clusters freed/reused).
qemu-img snapshot -d s1 "$img"
qio "$img" "write -P 0x07 $((4 * 1048576)) 1M"
check_unchanged "$img"

# Snapshot applied (-a): the active layer reverts to s2.
qemu-img snapshot -a s2 "$img"
check_unchanged "$img"

# --- persistent bitmaps ------------------------------------------------------
img="$tmp/bitmap.qcow2"
qemu-img create -q -f qcow2 "$img" 8M
qio "$img" "write -P 0x11 0 1M"
qemu-img bitmap --add "$img" b0
qemu-img bitmap --add -g 65536 "$img" b1
qemu-img bitmap --disable "$img" b1
qemu-img bitmap --enable "$img" b1
qio "$img" "write -P 0x12 2M 1M" "write -z 0 65536" "discard 131072 65536"
qemu-img info "$img" | grep -c 'name: b1' >/dev/null || fail "bitmaps not created"
check_unchanged "$img"

# Bitmap left "in use" (qemu-io aborted with the image open read-write and
# a bitmap enabled).
ulimit -c 0
qemu-io -c "write -P 0x13 4M 65536" -c abort "$img" >/dev/null 2>&1 || :
check_unchanged "$img"

# --- lazy_refcounts=on image left dirty --------------------------------------
img="$tmp/lazy.qcow2"
qemu-img create -q -f qcow2 -o lazy_refcounts=on "$img" 8M
qio "$img" "write -P 0x21 0 1M"
qemu-io -c "write -P 0x22 65536 65536" \
        -c "write -P 0x23 3M 1M" \
        -c "write -z 512k 65536" \
        -c abort "$img" >/dev/null 2>&1 || :
# incompatible_features bit 0: dirty
[ $(( $(header_u64 "$img" 72) & 1 )) = 1 ] || fail "lazy.qcow2: dirty bit not set"
check_unchanged "$img"
[ $(( $(header_u64 "$img" 72) & 1 )) = 1 ] ||
    fail "lazy.qcow2: the dirty bit was cleared while served read-only"
# And explicitly read-only.
check_unchanged "$img" readonly=true

# Dirty lazy-refcounts image with an internal snapshot and a bitmap too.
img="$tmp/all.qcow2"
qemu-img create -q -f qcow2 -o lazy_refcounts=on "$img" 8M
qio "$img" "write -P 0x31 0 2M"
qemu-img snapshot -c s1 "$img"
qemu-img bitmap --add "$img" b0
qemu-io -c "write -P 0x32 1M 2M" -c "write -z -u 0 65536" -c abort "$img" >/dev/null 2>&1 || :
check_unchanged "$img"
