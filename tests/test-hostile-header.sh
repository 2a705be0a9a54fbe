#!/usr/bin/env bash
# Hostile qcow2 headers: every image here is a small valid image with one
# header field (or the file itself) broken.  Opening must fail cleanly: nbdkit
# exits non-zero, neither by a signal nor by hanging, and the error message
# names the offending header field as spelled in QEMU's docs/interop/qcow2.txt
# (the plugin's convention: open errors name the field and its value).
source "$SRCDIR/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires timeout --version
requires python3 --version

patch="python3 $SRCDIR/tests/qcow2-patch.py"
# timeout(1) cannot run a shell function: hand functions.sh's nbdkit wrapper
# (and whatever it reads) to a child bash.
export QCOW2J NBDKIT_BIN QCOW2J_PRELOAD
export -f nbdkit

# ---- images ---------------------------------------------------------------
# plain.qcow2: 64 MiB, 64 KiB clusters, v3, some data in two places.
qemu-img create -q -f qcow2 -o cluster_size=65536 "$tmp/plain.qcow2" 64M
qemu-io -f qcow2 -c 'write -q -P 0x11 0 1M' -c 'write -q -P 0x22 32M 128k' \
        "$tmp/plain.qcow2" >/dev/null
# back.qcow2: the same with a backing file (base.qcow2, named relatively).
qemu-img create -q -f qcow2 -o cluster_size=65536 "$tmp/base.qcow2" 64M
qemu-io -f qcow2 -c 'write -q -P 0x33 0 64k' "$tmp/base.qcow2" >/dev/null
(cd "$tmp" && qemu-img create -q -f qcow2 -o cluster_size=65536 \
                      -b base.qcow2 -F qcow2 back.qcow2 64M)
qemu-io -f qcow2 -c 'write -q -P 0x44 64k 64k' "$tmp/back.qcow2" >/dev/null

# Sanity: the pristine images open, so a failure below is due to the patch.
for i in plain back; do
    st=0
    (cd "$tmp" && timeout -k 5 60 bash -c \
        'nbdkit -U - "$QCOW2J" file="$1" --run "nbdinfo \"\$uri\""' _ "$tmp/$i.qcow2") \
        >"$tmp/pristine.out" 2>"$tmp/pristine.err" || st=$?
    if [ $st -ne 0 ]; then
        cat "$tmp/pristine.err" >&2
        fail "the unpatched image $i.qcow2 does not open (exit status $st)"
    fi
done

# ---- the check ------------------------------------------------------------
failures=()
ncases=0

# expect_fail NAME IMG KIND PATTERN
#   Serve IMG with nbdinfo and require a clean failure whose stderr matches
#   PATTERN: KIND is 'field' (PATTERN is a field name, matched as a whole word)
#   or 're' (PATTERN is a case-insensitive extended regexp).
expect_fail ()
{
    local name=$1 img=$2 kind=$3 pattern=$4 st=0 err=$tmp/case.err why=
    ncases=$((ncases + 1))
    (cd "$tmp" && timeout -k 5 60 bash -c \
        'nbdkit -U - "$QCOW2J" file="$1" --run "nbdinfo \"\$uri\""' _ "$img") \
        >"$tmp/case.out" 2>"$err" || st=$?

    if [ $st -eq 0 ]; then
        why="opened successfully (nbdkit exit status 0)"
    elif [ $st -eq 124 ] || [ $st -eq 137 ]; then
        why="timed out after 60 s (exit status $st)"
    elif [ $st -ge 128 ]; then
        why="killed by signal $((st - 128)) (exit status $st)"
    elif grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$err"; then
        why="sanitizer report"
    elif [ "$kind" = field ] && ! grep -qwF -- "$pattern" "$err"; then
        why="error message does not name the field '$pattern'"
    elif [ "$kind" = re ] && ! grep -qiE -- "$pattern" "$err"; then
        why="error message does not match /$pattern/i"
    fi

    if [ -n "$why" ]; then
        failures+=("$name")
        echo "FAIL: $name: $why; stderr was:"
        sed -e 's/^/    | /' "$err" | head -n 20
    else
        echo "ok: $name: $(grep -m1 -iE 'error' "$err" || head -n1 "$err")"
    fi
}

# case NAME KIND PATTERN [SOURCE] -- PATCH-COMMAND...
#   Copy SOURCE (default plain) to NAME.qcow2, apply each qcow2-patch.py
#   command (separated by '--'), then expect_fail.
case_ ()
{
    local name=$1 kind=$2 pattern=$3 src=plain
    shift 3
    if [ "$1" != -- ]; then src=$1; shift; fi
    local img=$tmp/$name.qcow2 cmd=()
    cp "$tmp/$src.qcow2" "$img"
    shift # --
    while [ $# -gt 0 ]; do
        if [ "$1" = -- ]; then
            $patch "$img" "${cmd[@]}" >/dev/null
            cmd=()
        else
            cmd+=("$1")
        fi
        shift
    done
    [ ${#cmd[@]} -eq 0 ] || $patch "$img" "${cmd[@]}" >/dev/null
    expect_fail "$name" "$img" "$kind" "$pattern"
}

l1off=$($patch "$tmp/plain.qcow2" get l1_table_offset)
rtoff=$($patch "$tmp/plain.qcow2" get refcount_table_offset)
incompat=$($patch "$tmp/plain.qcow2" get incompatible_features)
G=$((1 << 30))

case_ bad-magic                 field magic -- set magic 0x514649fc
case_ version-1                 field version -- set version 1
case_ version-4                 field version -- set version 4
case_ cluster-bits-8            field cluster_bits -- set cluster_bits 8
case_ cluster-bits-22           field cluster_bits -- set cluster_bits 22
case_ cluster-bits-63           field cluster_bits -- set cluster_bits 63
case_ header-length-0           field header_length -- set header_length 0
case_ header-length-7           field header_length -- set header_length 7
case_ header-length-past-cluster field header_length -- set header_length $((65536 + 8))
case_ refcount-order-7          field refcount_order -- set refcount_order 7
case_ size-2-63                 field size -- set size 2**63
case_ l1-size-huge              field l1_size -- set l1_size 0x7fffffff
case_ l1-size-0                 field l1_size -- set l1_size 0
case_ l1-size-too-small-for-size field l1_size -- set size $((2 * G))
case_ l1-table-offset-unaligned field l1_table_offset -- set l1_table_offset $((l1off + 512))
case_ l1-table-offset-0         field l1_table_offset -- set l1_table_offset 0
case_ l1-table-offset-past-eof  field l1_table_offset -- set l1_table_offset $G
case_ refcount-table-offset-unaligned field refcount_table_offset -- set refcount_table_offset $((rtoff + 512))
case_ refcount-table-offset-0   field refcount_table_offset -- set refcount_table_offset 0
case_ refcount-table-offset-past-eof field refcount_table_offset -- set refcount_table_offset $G
case_ refcount-table-clusters-huge field refcount_table_clusters -- set refcount_table_clusters 0x10000000
case_ nb-snapshots-huge         field nb_snapshots -- \
      set snapshots_offset $l1off -- set nb_snapshots 1000000
case_ snapshots-offset-past-eof field snapshots_offset -- \
      set nb_snapshots 1 -- set snapshots_offset $G
case_ backing-file-size-5000    field backing_file_size back -- set backing_file_size 5000
case_ backing-file-offset-past-cluster field backing_file_offset back -- \
      set backing_file_offset $((65536 + 256))
case_ backing-name-straddles-cluster re 'backing_file_(offset|size)' back -- \
      set backing_file_offset $((65536 - 4)) -- set backing_file_size 10
case_ crypt-method-1            field crypt_method -- set crypt_method 1
case_ incompatible-unknown-bit  field incompatible_features -- \
      set incompatible_features $((incompat | (1 << 40)))
case_ ext-unknown-length-past-cluster re 'extension' -- ext-append 0x12345678 65536
case_ ext-feature-table-length-past-cluster re 'extension' -- ext-set 0 length 0x10000

# Backing loops.  Names are relative, resolved against the image's directory
# (nbdkit also runs in that directory); rewritten in place with equal lengths.
cp "$tmp/back.qcow2" "$tmp/loop.qcow2"              # len(loop.qcow2) == len(base.qcow2)
$patch "$tmp/loop.qcow2" backing-name loop.qcow2
expect_fail backing-loop-self "$tmp/loop.qcow2" re 'loop|backing'

(cd "$tmp" &&
 qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.qcow2 -F qcow2 lpb.qcow2 64M &&
 qemu-img create -q -f qcow2 -o cluster_size=65536 -b lpb.qcow2 -F qcow2 lpa.qcow2 64M)
$patch "$tmp/lpb.qcow2" backing-name lpa.qcow2     # lpa -> lpb -> lpa -> ...
expect_fail backing-loop-2 "$tmp/lpa.qcow2" re 'loop|backing'

# Truncated files: the error may speak of the size or a short read instead.
# (Not "header_length 0": the bytes are missing, not zero.)
short='size|short|truncat|eof|end of file|too small|empty'
cp "$tmp/plain.qcow2" "$tmp/trunc100.qcow2"; $patch "$tmp/trunc100.qcow2" truncate 100
expect_fail truncated-100 "$tmp/trunc100.qcow2" re "$short"
: > "$tmp/trunc0.qcow2"
expect_fail truncated-0 "$tmp/trunc0.qcow2" re "$short"

cp "$tmp/plain.qcow2" "$tmp/trunc-l1.qcow2"; $patch "$tmp/trunc-l1.qcow2" truncate $((l1off + 4))
expect_fail truncated-in-l1-table "$tmp/trunc-l1.qcow2" re "l1_table_offset|$short"

echo "$ncases cases, ${#failures[@]} failed${failures:+: ${failures[*]}}"
[ ${#failures[@]} -eq 0 ] || exit 1
