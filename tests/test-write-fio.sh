#!/usr/bin/env bash
# Write path under fio (--ioengine=nbd): two jobs, each on its own 32 MiB
# half of a fresh 64 MiB image, random writes of 4k..64k blocks at queue
# depth 8 with crc32c verify headers and a flush every 16 writes; fio
# reads everything back and verifies it.  After the server stops qemu-img
# check exits 0; then the server is restarted and fio --verify_only checks
# that every block survived.  Then the same with 4k clusters and a
# sequential-write + random-overwrite job.
source "$SRCDIR/tests/functions.sh"
source "$SRCDIR/tests/read-helpers.sh"
source "$SRCDIR/tests/write-helpers.sh"
requires fio --version
if ! fio --enghelp=nbd >/dev/null 2>&1; then
    echo "$0: skipped: this fio has no nbd ioengine"
    exit 77
fi

cd "$tmp"
export RW_MULTI=1      # two jobs: two connections

# fio_job NAME RW EXTRA...: a job file
fio_job ()
{
    local name=$1 rw=$2
    shift 2
    {
        cat <<EOF
[global]
ioengine=nbd
uri=\${uri}
rw=$rw
bsrange=4k-64k
size=32M
offset_increment=32M
numjobs=2
iodepth=8
fsync=16
verify=crc32c
verify_fatal=1
verify_dump=0
randrepeat=1
randseed=$((test_seed % 1000000))
group_reporting=1
EOF
        local x
        for x in "$@"; do echo "$x"; done
        echo "[$name]"
    } > "$name.fio"
}

# fio_run JOBFILE [ARGS...]: run fio against $uri (shell command for
# qcow2j_rw).
fio_cmd ()
{
    printf 'fio --output=%q %q %s' "$1.out" "$1.fio" "${*:2}"
}

run_case ()
{
    local label=$1 img=$2 name=$3
    qcow2j_rw "$img" "$(fio_cmd "$name")" || {
        cat "$name.out" >&2; fail "$label: fio write+verify failed"; }
    grep -q 'err= 0' "$name.out" || { cat "$name.out" >&2; fail "$label: fio reported errors"; }
    qcow2j_rw "$img" "$(fio_cmd "$name" --verify_only)" || {
        cat "$name.out" >&2; fail "$label: fio --verify_only after a restart failed"; }
    grep -q 'err= 0' "$name.out" || { cat "$name.out" >&2; fail "$label: fio --verify_only reported errors"; }
    echo "ok: $label"
}

qemu-img create -q -f qcow2 a.qcow2 64M
fio_job rw64k randwrite
run_case "random writes, 64k clusters" a.qcow2 rw64k

qemu-img create -q -f qcow2 -o cluster_size=4096 b.qcow2 64M
fio_job seq4k write
run_case "sequential writes, 4k clusters" b.qcow2 seq4k
# Overwrite (COW of allocated clusters is not needed, but L2 entries are
# rewritten in place) with a different seed and verify again.
fio_job over4k randwrite "bsrange=512-16k" "randseed=$((test_seed % 1000000 + 1))"
run_case "random overwrites, 4k clusters, 512-byte blocks" b.qcow2 over4k
