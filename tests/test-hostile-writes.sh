#!/usr/bin/env bash
# Hostile qcow2 metadata on the write path: the images of
# tests/hostile-cases.sh (broken L1/L2 entries, entries naming other
# metadata, broken compressed clusters, an invalid extended-L2 bitmap),
# driven with writes, zeroes, trims and flushes, not only reads
# (test-hostile-metadata.sh does the reads).  Issue #11: every request
# through a broken entry either succeeds or is refused with EIO, and a
# refusal never leaves the image worse than it was.
#
# For each class, on a fresh copy of the crafted image, in one session:
#  1. the GOOD ranges (which do not depend on the broken entry) read back;
#  2. through the broken cluster: a 512-byte write at its start, a
#     full-cluster write, a write-zeroes and a trim, each followed by a
#     flush.  Each request and flush succeeds or fails with EIO (no other
#     errno, no disconnect, no crash, no hang).  A write or zero that
#     succeeded reads back what it wrote (zeroes for a zero); after a
#     trim that succeeded the cluster reads as zeroes or as it read just
#     before (failing to read only if it failed just before);
#  3. the GOOD ranges still read back on the same connection; nbdkit
#     exits 0 on SIGTERM, without a sanitizer report;
#  4. "never worse": qemu-img check --output=json of the image after the
#     session shows no more corruptions or check errors than of the
#     crafted image, no leaks unless it had some, and does not fail in a
#     new way (exit status 1, internal error or cannot open; 2,
#     corruptions); for two classes the bound is a little looser, for
#     QEMU's sake (HEADER_AS_L2 below says why);
#  5. the image reopens in qcow2j with readonly=true, the GOOD ranges
#     read the same, and the broken cluster reads as the session last
#     read it (what was flushed stays);
#  6. every request refused with EIO is explained in the server log by a
#     line naming an offset or entry (0x...) and what is wrong with it
#     (preventing, corrupt, reserved, not aligned, past the end, ...), in
#     that request or, once the session stopped writes, before.
# What a refused request did to the broken cluster is shown ("changed
# from ...") but not judged: NBD leaves a failed write's range undefined,
# and step 4 judges the image.
# "pristine", the unpatched image, is the control: there every request
# must succeed.  Every class runs on version 3 images, then on version 2
# ones (written without a journal), but the classes version 2 cannot
# have.  Each class prints one line saying what each request did,
# so that the log documents the behaviour.
source "$SRCDIR/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires timeout --version
requires python3 -c 'import nbd'

C=65536
failures=()

source "$SRCDIR/tests/write-helpers.sh"
source "$SRCDIR/tests/hostile-cases.sh"

# ---- the client -----------------------------------------------------------
# writes.py URI LOG CLUSTER OUT GOOD...
#   Steps 1-3 and 6 above against URI, whose server logs to LOG; CLUSTER is
#   the guest offset of the broken cluster; GOOD ranges are OFF:LEN:BYTE.
#   Prints a progress line per request (to find a hang), then
#   "summary: ..." and a line per ERROR; writes the last read of CLUSTER
#   (hex, or "EIO") to OUT.  Exit 1 on any ERROR.
cat > "$tmp/writes.py" <<'EOF'
import re
import sys
import nbd

uri, log, cluster, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
good = [tuple(int(x, 0) for x in a.split(":")) for a in sys.argv[5:]]
C = 65536
errors = []
summary = []
# What a refusal's message looks like (lib/map.c bad_entry, lib/overlap.c,
# lib/read.c): an offset or entry in hex and what is wrong with it.
EXPLAINS = re.compile(r"preventing|corrupt|invalid|reserved|unaligned|"
                      r"not cluster aligned|past the end|inside the qcow2j "
                      r"journal|does not decompress|subcluster|overlaps",
                      re.I)
STOPPED = "refusing further writes"

def progress(s):
    print(s, flush=True)

def log_text():
    with open(log, "rb") as f:
        return f.read().decode("utf-8", "replace")

def explained(text):
    return [l for l in text.splitlines() if "0x" in l and EXPLAINS.search(l)]

h = nbd.NBD()
try:
    h.connect_uri(uri)
except nbd.Error as e:
    print("ERROR: connect: %s" % e)
    sys.exit(1)

def good_reads(when):
    for off, ln, byte in good:
        try:
            buf = h.pread(ln, off)
        except nbd.Error as e:
            errors.append("%s: read of intact range %d+%d failed: %s"
                          % (when, off, ln, e))
            continue
        if buf != bytes([byte]) * ln:
            errors.append("%s: read of intact range %d+%d returned wrong data"
                          " (first bytes %s, expected 0x%02x)"
                          % (when, off, ln, buf[:8].hex(), byte))

def read(ln, off):
    """The bytes read, or the errno name of the failure."""
    try:
        return h.pread(ln, off)
    except nbd.Error as e:
        return e.errno or "error (%s)" % e.string

def describe(r):
    if isinstance(r, str):
        return r
    if r == bytes(len(r)):
        return "zeroes"
    if r == bytes([r[0]]) * len(r):
        return "0x%02x" % r[0]
    return "data %s..." % r[:8].hex()

# A request: succeeds ("ok"), or fails; only EIO is allowed, and an EIO
# must be explained in the log.  Returns "ok" or the errno name.
def request(name, fn):
    before = log_text()
    progress("%s..." % name)
    try:
        fn()
        res = "ok"
    except nbd.Error as e:
        res = e.errno or "no errno"
        if res != "EIO":
            errors.append("%s failed with %s, not EIO: %s" % (name, res, e.string))
    if res == "EIO":
        new = log_text()[len(before):]
        if not explained(new):
            if STOPPED in before and explained(before):
                pass        # writes stopped earlier, for a reason given then
            else:
                errors.append("%s refused with EIO and no log line explains "
                              "it (new log: %r)" % (name, new[-400:]))
    if h.aio_is_closed() or h.aio_is_dead():
        errors.append("%s: the connection is gone" % name)
        raise SystemExit
    return res

A = b"\xa5" * 512
B = b"\x5a" * C
Z = bytes(C)
ops = [
    ("write512", lambda: h.pwrite(A, cluster), A, 512),
    ("write64k", lambda: h.pwrite(B, cluster), B, C),
    ("zero", lambda: h.zero(C, cluster), Z, C),
    ("trim", lambda: h.trim(C, cluster), None, C),
]

state = {"last": None}

def main():
    good_reads("before")
    last = state["last"] = read(C, cluster)
    summary.append("read %s" % describe(last))
    for name, fn, expect, ln in ops:
        before = last
        res = request(name, fn)
        fres = request(name + " flush", h.flush)
        last = state["last"] = read(C, cluster)
        word = "%s %s" % (name, res)
        if fres != "ok":
            word += " (flush %s)" % fres
        if res == "ok":
            if expect is not None:
                got = read(ln, cluster)
                if got != expect:
                    errors.append("%s succeeded but %d bytes at %d read back"
                                  " as %s" % (name, ln, cluster, describe(got)))
            else:
                # Trim: zeroes or the old content, sector by sector; or
                # still unreadable if it was.
                if isinstance(last, str):
                    if last != before:
                        errors.append("trim succeeded and the cluster then"
                                      " read %s (before: %s)"
                                      % (last, describe(before)))
                else:
                    for s in range(0, C, 512):
                        sec = last[s:s + 512]
                        if sec != bytes(512) and (isinstance(before, str) or
                                                  sec != before[s:s + 512]):
                            errors.append("trim succeeded and sector %d of the"
                                          " cluster then read %s (before: %s)"
                                          % (s // 512, describe(sec),
                                             describe(before)))
                            break
            word += ", reads %s" % describe(last)
        else:
            word += ", reads %s" % describe(last)
            if last != before:
                word += " (changed from %s)" % describe(before)
        summary.append(word)
    good_reads("after")

try:
    main()
except SystemExit:
    pass
with open(out, "w") as f:
    last = state["last"]
    f.write(last if isinstance(last, str) or last is None else last.hex())
print("summary: " + ", ".join(summary))
try:
    h.shutdown()
except nbd.Error as e:
    errors.append("shutdown: %s" % e)
for e in errors:
    print("ERROR: " + e)
sys.exit(1 if errors else 0)
EOF

# reopen.py URI LAST GOOD...: step 5, read-only: the GOOD ranges read
# back, and the broken cluster reads as LAST (a file from writes.py).
cat > "$tmp/reopen.py" <<'EOF2'
import sys
import nbd

uri, cluster, lastf = sys.argv[1], int(sys.argv[2]), sys.argv[3]
good = [tuple(int(x, 0) for x in a.split(":")) for a in sys.argv[4:]]
C = 65536
errors = []
h = nbd.NBD()
h.connect_uri(uri)
for off, ln, byte in good:
    try:
        buf = h.pread(ln, off)
    except nbd.Error as e:
        errors.append("read of intact range %d+%d failed: %s" % (off, ln, e))
        continue
    if buf != bytes([byte]) * ln:
        errors.append("read of intact range %d+%d returned wrong data (first"
                      " bytes %s, expected 0x%02x)" % (off, ln, buf[:8].hex(), byte))
try:
    last = open(lastf).read()
except OSError:
    last = ""           # the session's client died: nothing to compare
try:
    got = h.pread(C, cluster).hex()
except nbd.Error as e:
    got = e.errno or "error"
if last and got != last:
    errors.append("the broken cluster reads %s, the session last read %s"
                  % (got[:16], last[:16]))
h.shutdown()
for e in errors:
    print("ERROR: " + e)
sys.exit(1 if errors else 0)
EOF2

# ---- helpers --------------------------------------------------------------
# The servers: serve_start and serve_stop (tests/write-helpers.sh), which
# run nbdkit in the foreground (-f) in the background (not --run: nbdkit
# 1.32 then does not wait for its server to exit, and qemu-img check could
# see the image still open).  A server that does not start, or exits
# with an error, is a finding of its class, not the end of the test.
export SERVE_MAY_FAIL=1 SERVE_STOP_MAY_FAIL=1
start_server () { serve_start "$@"; }
stop_server () { serve_stop TERM; }

# qcheck IMG: "RC CORRUPTIONS LEAKS CHECK-ERRORS", with "-" for the counts
# when qemu-img check printed no report (it could not open the image).
qcheck ()
{
    local rc=0 out
    out=$(timeout -k 5 60 qemu-img check --output=json "$1" 2>/dev/null) || rc=$?
    python3 -c '
import json, sys
try:
    r = json.loads(sys.stdin.read())
except ValueError:
    print(sys.argv[1], "- - -"); sys.exit(0)
print(sys.argv[1], r.get("corruptions", 0), r.get("leaks", 0), r.get("check-errors", 0))
' "$rc" <<<"$out"
}
# qcheck_worse BEFORE AFTER: what is worse in AFTER (empty if nothing).
qcheck_worse ()
{
    local b=($1) a=($2) w=()
    if [ "${a[1]}" = - ]; then
        [ "${b[1]}" = - ] || w+=("qemu-img check cannot open it (exit status ${a[0]})")
    elif [ "${b[1]}" != - ]; then
        [ "${a[1]}" -le "${b[1]}" ] || w+=("corruptions ${b[1]} -> ${a[1]}")
        [ "${a[3]}" -le "${b[3]}" ] || w+=("check errors ${b[3]} -> ${a[3]}")
        [ "${a[2]}" = 0 ] || [ "${b[2]}" != 0 ] || w+=("leaks 0 -> ${a[2]}")
    fi
    if [ "${a[0]}" != "${b[0]}" ]; then
        case ${a[0]} in
            1|2|124|137) w+=("qemu-img check exit status ${b[0]} -> ${a[0]}") ;;
        esac
    fi
    local IFS=';'
    echo "${w[*]}"
}

# ---- one class ------------------------------------------------------------
# QEMU's check reads an L1 entry whose offset bits are 0 but which has
# other bits set as an L2 table at offset 0: it takes the header cluster
# for L2 entries, and counts its bytes as corruptions.  The header
# extensions qcow2j adds when a session first writes (its journal's, and
# a feature name table naming its feature bits) then add "corruptions"
# that are no harm to the image.  For these classes the bound of step 4
# is the check of the crafted image after a session that only rewrote
# cluster 0 with what it held.  (QEMU 7.2 reads through these entries
# as unallocated, and a write through them aborts qemu-io: "Assertion
# `offset != 0' failed" in qcow2-cache.c.)
HEADER_AS_L2="l1-at-header-copied l1-at-header-rsvd"
run_case ()
{
    local name=$1 img=$tmp/w-$1.qcow2 why=() st=0 before after worse summary crafted=
    local cluster=${HC_CLUSTER[$1]} good=(${HC_GOOD[$1]})
    cp "${HC_IMG[$name]}" "$img"
    before=$(qcheck "${HC_IMG[$name]}")
    case " $HEADER_AS_L2 " in
        *" $name "*)
            # The bound: the crafted image as any write session leaves
            # it (cluster 0 rewritten with what it holds).
            cp "${HC_IMG[$name]}" "$tmp/base.qcow2"
            start_server "$tmp/base.qcow2" || fail "$name: the server did not start"
            timeout -k 5 60 python3 -c '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x11" * 65536, 0); h.flush(); h.shutdown()' "$uri" ||
                fail "$name: an honest write failed"
            stop_server
            crafted=$before
            before=$(qcheck "$tmp/base.qcow2")
            ;;
    esac

    # 1-3, 6.
    rm -f "$tmp/last"
    if start_server "$img"; then
        timeout -k 5 60 python3 "$tmp/writes.py" "$uri" "$server_log" "$cluster" \
                "$tmp/last" "${good[@]}" >"$tmp/case.out" 2>&1 || st=$?
        stop_server
        case $st in
            0) ;;
            124|137) why+=("the client timed out after 60 s (last request: $(tail -n 1 "$tmp/case.out"))") ;;
            *) why+=("the client failed (exit status $st)") ;;
        esac
        [ "$server_rc" = 0 ] || why+=("nbdkit exited with status $server_rc")
        if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$server_log"; then
            why+=("sanitizer report")
        fi
    else
        stop_server
        why+=("the server did not start")
    fi
    cp "$server_log" "$tmp/case.log"
    summary=$(sed -n 's/^summary: //p' "$tmp/case.out")
    if [ "$name" = pristine ] && grep -q 'EIO\|ERROR' <<<"$summary"; then
        why+=("a request on the unpatched image failed")
    fi

    # 4.
    after=$(qcheck "$img")
    worse=$(qcheck_worse "$before" "$after")
    [ -z "$worse" ] || why+=("the image is worse: $worse")

    # 5.
    if start_server "$img" readonly=true; then
        st=0
        timeout -k 5 60 python3 "$tmp/reopen.py" "$uri" "$cluster" "$tmp/last" \
                "${good[@]}" >"$tmp/reopen.out" 2>&1 || st=$?
        stop_server
        [ $st = 0 ] || why+=("read-only reopen: $(grep -m1 ERROR "$tmp/reopen.out" || echo "exit status $st")")
        [ "$server_rc" = 0 ] || why+=("read-only nbdkit exited with status $server_rc")
    else
        stop_server
        why+=("the read-only reopen failed: $(tail -n 2 "$server_log")")
    fi

    local line="$name: $summary; check before [$before] after [$after]"
    [ -z "${crafted:-}" ] || line+=" (crafted [$crafted])"
    if [ ${#why[@]} -ne 0 ]; then
        failures+=("$name")
        echo "FAIL: $line"
        local w
        for w in "${why[@]}"; do echo "    why| $w"; done
        { grep -v -e '\.\.\.$' -e '^summary: ' "$tmp/case.out" || :; } |
            sed -e 's/^/    out| /' | head -n 20
        { grep -v '^$' "$tmp/case.log" || :; } | sed -e 's/^/    log| /' | head -n 30
    else
        echo "ok: $line"
        # What the refusals said (the distinct messages, first three).
        { grep -E '0x' "$tmp/case.log" || :; } | sed -e "s|$tmp/||; s/^nbdkit: [^ ]*: //" |
            awk '!seen[$0]++' | head -n 3 | sed -e 's/^/    log| /'
    fi
}

echo "qemu-img check columns: exit status, corruptions, leaks, check errors"
ncases=0
for version in v3 v2; do
    echo "--- version ${version#v} images"
    hostile_cases $version
    for name in "${HC_NAMES[@]}"; do
        run_case "$name"
    done
    ncases=$((ncases + ${#HC_NAMES[@]}))
done
echo "$ncases cases, ${#failures[@]} failed${failures:+: ${failures[*]}}"
[ ${#failures[@]} -eq 0 ]
