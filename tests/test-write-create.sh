#!/usr/bin/env bash
# create=true makes a new image when the file does not exist (CI fixtures),
# serves an existing one unchanged, and the result checks clean.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires nbdsh --version
cd "$tmp"

nbdkit -U - "$QCOW2J" file=new.qcow2 create=true size=100M cluster-size=4K \
    --run 'nbdsh -u "$uri" -c "assert h.get_size() == 100 * 1024 * 1024" \
                 -c "h.pwrite(b\"fixture!\" * 512, 1 << 20)" -c "h.flush()"'
qemu-img check new.qcow2
info=$(qemu-img info --output=json new.qcow2)
# (Not 'echo | grep -q': with pipefail, grep's early exit can fail echo.)
[[ $info == *'"virtual-size": 104857600'* ]] || fail "wrong size: $info"
[[ $info == *'"cluster-size": 4096'* ]] || fail "wrong cluster size: $info"
qemu-io -f qcow2 -c 'read -P 0x66 1M 1' -c 'read -P 0 0 1M' new.qcow2 >/dev/null ||
    fail "new image content"

# An existing image is served as it is (size= is ignored).
nbdkit -U - "$QCOW2J" file=new.qcow2 create=true size=1G \
    --run 'nbdsh -u "$uri" -c "assert h.get_size() == 100 * 1024 * 1024"'

# size= without create=true, and create=true without size=, are errors.
! nbdkit -U - "$QCOW2J" file=x.qcow2 size=1G --run true 2>err || fail "size= alone accepted"
! nbdkit -U - "$QCOW2J" file=x.qcow2 create=true --run true 2>err ||
    fail "create=true without size= accepted"
grep -q 'size=' err || fail "no useful message: $(cat err)"
[ ! -e x.qcow2 ] || fail "a failed create left a file"
