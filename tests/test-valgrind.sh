#!/usr/bin/env bash
# The plugin under valgrind, serving a backing chain with compressed and
# zero clusters to parallel readers, block status, then writes, zeroes,
# trims and flushes (journal set-up, copy-on-write, checkpoint, clean
# close): no invalid access and no leak.  The server runs in the foreground (not with --run, whose server
# process is a child whose exit status nbdkit does not pass on) and must
# exit with status 0 after SIGTERM.
source "$SRCDIR/tests/functions.sh"
requires valgrind --version
if [ -n "${QCOW2J_PRELOAD:-}" ]; then
    echo "$0: skipped: valgrind cannot run a sanitizer build"
    exit 77
fi
requires qemu-img --version
requires nbdcopy --version

cd "$tmp"
qemu-img create -q -f qcow2 base.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x11 0 4M' -c 'write -z 8M 1M' base.qcow2 >/dev/null
qemu-img convert -c -O qcow2 -o compression_type=zstd base.qcow2 packed.qcow2
qemu-img create -q -f qcow2 -b packed.qcow2 -F qcow2 top.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x22 1M 64k' -c 'write -z -u 2M 1M' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 ref.raw

sock=$(mktemp -u /tmp/qcow2j-sock.XXXXXX)
valgrind --quiet --error-exitcode=119 --leak-check=full \
         --show-leak-kinds=definite,indirect \
         --errors-for-leak-kinds=definite,indirect --keep-debuginfo=yes \
         --suppressions="$SRCDIR/tests/valgrind.supp" \
         "$NBDKIT_BIN" -f -U "$sock" "$QCOW2J" file=top.qcow2 \
         l2-cache-size=64K 2> valgrind.log &
pid=$!
cleanup_fn "kill $pid 2>/dev/null"
for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat valgrind.log; fail "nbdkit did not start under valgrind"; }

uri="nbd+unix:///?socket=$sock"
nbdcopy --connections=2 "$uri" out.raw
nbdinfo --map "$uri" > /dev/null
cmp ref.raw out.raw || fail "content differs under valgrind"
nbdsh -u "$uri" -c '
h.pwrite(b"\x33" * 100000, 12345)
h.pwrite(b"\x44" * 4096, 2 << 20)
h.zero(1 << 20, 5 << 20)
h.trim(1 << 20, 9 << 20)
h.flush()
assert h.pread(4096, 2 << 20) == b"\x44" * 4096
'

kill -TERM $pid
status=0
wait $pid || status=$?
cat valgrind.log
[ $status = 0 ] || fail "nbdkit under valgrind exited with status $status"
qemu-img check top.qcow2 || fail "qemu-img check after the valgrind run"
