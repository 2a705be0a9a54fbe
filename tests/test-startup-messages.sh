#!/usr/bin/env bash
# Startup errors say what to do: a raw file points at the file plugin, a
# missing image at create=true, a bad parameter value names its key, a
# missing backing file at qemu-img rebase -u; and create=true on an
# existing image of another size warns that it is served unchanged.
source "$SRCDIR/tests/functions.sh"
requires qemu-img --version
cd "$tmp"

# refused LOG ARGS...: nbdkit must refuse to start.
refused ()
{
    local log=$1
    shift
    if nbdkit -U - "$QCOW2J" "$@" --run true 2>"$log"; then
        fail "started: $*"
    fi
}
# says LOG PATTERN: LOG must contain the fixed string PATTERN.
says ()
{
    grep -qF -- "$2" "$1" || fail "expected \"$2\" in: $(cat "$1")"
}

truncate -s 1M disk.raw
refused raw.log file=disk.raw
says raw.log "disk.raw: not a qcow2 image: magic 0x00000000"
says raw.log "serve it with nbdkit's file plugin: nbdkit file $tmp/disk.raw"

refused missing.log file=nowhere.qcow2
says missing.log "nowhere.qcow2: cannot open the image: No such file or directory"
says missing.log "create=true size=SIZE"
grep -q realpath missing.log && fail "realpath: $(cat missing.log)"

qemu-img create -q -f qcow2 a.qcow2 1M
refused bool.log file=a.qcow2 readonly=bogus
says bool.log "readonly=bogus: expected true, false or auto"
refused lock.log file=a.qcow2 locking=maybe
says lock.log "locking=maybe: expected true or false"
refused size.log file=new.qcow2 create=true size=lots
says size.log "size=lots"
refused orphan.log file=a.qcow2 cluster-size=4K
says orphan.log "cluster-size= only goes with create=true"
refused unknown.log file=a.qcow2 colour=blue
says unknown.log "unknown parameter 'colour'"

qemu-img create -q -f qcow2 base.qcow2 1M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
mv base.qcow2 moved.qcow2
refused backing.log file=top.qcow2
says backing.log "cannot open its backing file \"base.qcow2\" ($tmp/base.qcow2)"
says backing.log "qemu-img rebase -u -b NEW-NAME -F qcow2 $tmp/top.qcow2"
# ... and the command it suggests works.
qemu-img rebase -u -b moved.qcow2 -F qcow2 top.qcow2
nbdkit -U - "$QCOW2J" file=top.qcow2 --run true

qemu-img create -q -f qcow2 ten.qcow2 10M
nbdkit -U - "$QCOW2J" file=ten.qcow2 create=true size=20M \
    --run 'nbdsh -u "$uri" -c "assert h.get_size() == 10 << 20"' 2>size.log
says size.log "ten.qcow2: warning: create=true: the image exists, of size 10485760 and not size=20971520: serving it unchanged"
nbdkit -U - "$QCOW2J" file=ten.qcow2 create=true size=10M --run true 2>same.log
[ ! -s same.log ] || fail "create=true, same size: $(cat same.log)"
