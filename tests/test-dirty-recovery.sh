#!/usr/bin/env bash
# After a server is killed with SIGKILL mid-work, QEMU's tools refuse the
# image with a feature name that says what to do ("qcow2j journal dirty:
# serve with nbdkit qcow2j"), and doing it says, without -v and at
# startup, that the journal was replayed: in place when served writable
# (the image then checks clean), in memory, the file unchanged, when
# served read-only.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires nbdsh --version
cd "$tmp"

name='qcow2j journal dirty: serve with nbdkit qcow2j'
[ ${#name} -le 46 ] || fail "the feature name is longer than 46 bytes"

sock=$tmp/sock
uri="nbd+unix:///?socket=$sock"
qemu-img create -q -f qcow2 img.qcow2 64M
"${NBDKIT_CMD[@]}" -f -U "$sock" "$QCOW2J" file=img.qcow2 &
pid=$!
cleanup_fn "kill -9 $pid 2>/dev/null"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
nbdsh -u "$uri" -c 'h.pwrite(b"\x5a" * 65536, 4 << 20)' -c 'h.flush()'
kill -9 $pid
wait $pid 2>/dev/null || :

# QEMU refuses it, and its message carries the way out.
info=$(qemu-img info img.qcow2 2>&1) && fail "qemu-img opened a dirty image"
[[ $info == *"Unsupported qcow2 feature(s): $name"* ]] ||
    fail "qemu-img does not say what to do: $info"
check=$(qemu-img check img.qcow2 2>&1) && fail "qemu-img checked a dirty image"
[[ $check == *"$name"* ]] || fail "qemu-img check: $check"

# A dirty journal whose area the file no longer holds (cut short by
# another program): refused, read-only and writable, naming the area and
# the file's length, and the file left as it was.
cp img.qcow2 short.qcow2
jext=$(python3 "$SRCDIR/tests/qcow2-patch.py" short.qcow2 ext-list |
       awk '$2 == "0x51324a4c" { print $4 + 8 }')   # Q2JL's data bytes
jend=$(( 0x$(python3 "$SRCDIR/tests/qcow2-patch.py" short.qcow2 peek "$jext" 8) +
         0x$(python3 "$SRCDIR/tests/qcow2-patch.py" short.qcow2 peek $((jext + 8)) 8) ))
truncate -s $((jend - 65536)) short.qcow2
cp short.qcow2 short-before.qcow2
for mode in -r ""; do
    rc=0; nbdkit -U - $mode "$QCOW2J" file=short.qcow2 --run true 2>short.log || rc=$?
    [ $rc != 0 ] || fail "a journal past the end of the file was served ($mode)"
    grep -q "journal is marked dirty but is not valid: the journal area 0x.* runs past the end of the file ($((jend - 65536)) bytes)" short.log ||
        fail "journal past the end of the file: $(cat short.log)"
done
cmp -s short.qcow2 short-before.qcow2 || fail "the refused image was changed"
echo "ok: a journal past the end of the file: refused, unchanged"

# Read-only: replayed in memory, said once at startup, file unchanged.
cp img.qcow2 before.qcow2
nbdkit -U - -r "$QCOW2J" file=img.qcow2 \
    --run 'nbdsh -u "$uri" -c "assert h.pread(65536, 4 << 20) == b\"\\x5a\" * 65536"' \
    2>ro.log || fail "read-only: $(cat ro.log)"
[ "$(grep -c 'notice: .*img.qcow2: replayed the journal .* in memory, read-only: the file is unchanged' ro.log)" = 1 ] ||
    fail "read-only replay not said once: $(cat ro.log)"
cmp -s img.qcow2 before.qcow2 || fail "read-only serving changed the file"

# Writable: replayed in place, said at startup (before any client: the
# --run command finds the notice already printed), without -v.
nbdkit -U - "$QCOW2J" file=img.qcow2 --run "grep -c 'replayed' $tmp/rw.log > $tmp/seen" \
    2>rw.log || fail "writable: $(cat rw.log)"
grep -q 'notice: .*img.qcow2: replayed the journal of a server that did not stop cleanly: the image is consistent again' rw.log ||
    fail "writable replay not said: $(cat rw.log)"
[ "$(cat seen)" = 1 ] || fail "the replay was not said at startup"
grep -q 'error' rw.log && fail "an error after replay: $(cat rw.log)"
qemu-img check -q img.qcow2 || fail "after replay: qemu-img check failed"
qemu-io -f qcow2 -c 'read -P 0x5a 4M 64k' img.qcow2 >/dev/null ||
    fail "after replay: the flushed write is missing"

# A clean image says nothing.
nbdkit -U - "$QCOW2J" file=img.qcow2 --run true 2>clean.log
[ ! -s clean.log ] || fail "a clean image: $(cat clean.log)"
