# Sourced (after functions.sh) by the tests/test-write-*.sh tests.
#
#   serve_start IMG [PARAM...]   start a read-write server for IMG in the
#                                background; sets $uri, $server_pid,
#                                $server_log.  Fails if it does not start
#                                (returns 1, log in $server_log, when
#                                SERVE_MAY_FAIL=1).
#   serve_stop [SIGNAL]          stop it (default TERM) and wait for it; a
#                                TERM stop must exit 0 (unless
#                                SERVE_STOP_MAY_FAIL=1).  Sets $server_rc.
#   qcow2j_rw IMG CMD [PARAM...] serve IMG read-write, run the shell
#                                command CMD with $uri set, stop the server
#                                and qemu-img check IMG; returns CMD's
#                                status (the server's log: $server_log)
#   qcheck IMG [OK_CODES]        qemu-img check IMG must exit 0 (or one of
#                                OK_CODES, e.g. "0 3")
#   img_compare IMG RAW          the guest content of IMG must equal RAW
#   to_raw IMG RAW               qemu-img convert IMG to a raw file
#   random_file FILE SIZE SEED   SIZE deterministic pseudo-random bytes
#
# The server is nbdkit in the foreground (-f -U SOCK), not --run: with
# --run nbdkit 1.32 SIGTERMs its server process and exits without waiting
# for it, so the image could still be open when qemu-img check runs.
#
# For developing the tests without a working write path,
# QCOW2J_STANDIN=qemu-nbd serves with 'qemu-nbd -t --shared=0 -f qcow2
# --discard=unmap' (so that trims do something)
# instead ('-e 4' when RW_MULTI=1; readonly=true becomes -r).

if ! declare -F qio >/dev/null; then
    source "$SRCDIR/tests/read-helpers.sh"
fi
requires python3 -c 'import nbd'

standin=
[ "${QCOW2J_STANDIN:-}" = qemu-nbd ] && standin=qemu-nbd

server_pid=
server_log=
server_rc=
_srv_n=0

# serve_start IMG [PARAM...]
serve_start ()
{
    local img=$1 sock i
    shift
    _srv_n=$((_srv_n + 1))
    sock="$tmp/srv$_srv_n.sock"
    server_log="$tmp/server$_srv_n.log"
    rm -f "$sock"
    : > "$server_log"
    if [ "$standin" = qemu-nbd ]; then
        local opts=(-t -f qcow2 --discard=unmap -k "$sock") p
        if [ "${RW_MULTI:-0}" = 1 ]; then opts+=(-e 4); else opts+=(--shared=0); fi
        for p in "$@"; do
            case "$p" in
                readonly=true|-r) opts+=(-r) ;;
                *) ;;
            esac
        done
        qemu-nbd "${opts[@]}" "$img" 2>>"$server_log" &
        server_pid=$!
    else
        "${NBDKIT_CMD[@]}" -f -U "$sock" "$QCOW2J" file="$img" "$@" \
            2>>"$server_log" &
        server_pid=$!
    fi
    for i in $(seq 300); do
        [ -S "$sock" ] && break
        if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
        sleep 0.05
    done
    if [ ! -S "$sock" ]; then
        wait "$server_pid" 2>/dev/null || :
        server_pid=
        if [ "${SERVE_MAY_FAIL:-0}" = 1 ]; then return 1; fi
        cat "$server_log" >&2
        fail "the server did not start on $img"
    fi
    uri="nbd+unix:///?socket=$sock"
    export uri
}

# serve_stop [SIGNAL]
serve_stop ()
{
    local sig=${1:-TERM} i
    server_rc=
    [ -n "$server_pid" ] || return 0
    kill -s "$sig" "$server_pid" 2>/dev/null || :
    # (stderr off: bash reports a job killed by a signal as "Killed".)
    {
        for i in $(seq 600); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$server_pid" 2>/dev/null; then
            kill -9 "$server_pid"
            wait "$server_pid" || :
            server_rc=timeout
        else
            server_rc=0
            wait "$server_pid" || server_rc=$?
        fi
    } 2>/dev/null
    if [ "$server_rc" = timeout ]; then
        server_pid=
        cat "$server_log" >&2
        fail "the server did not exit within 30 s of SIG$sig"
    fi
    server_pid=
    if [ "$sig" = TERM ] && [ "$server_rc" != 0 ] &&
       [ "${SERVE_STOP_MAY_FAIL:-0}" != 1 ]; then
        cat "$server_log" >&2
        fail "the server exited with status $server_rc after SIGTERM"
    fi
}
cleanup_fn '[ -z "$server_pid" ] || { kill -9 $server_pid; wait $server_pid; } 2>/dev/null'

# qcheck IMG [OK_CODES]
qcheck ()
{
    local img=$1 ok=${2:-0} out rc=0 c
    out=$(qemu-img check "$img" 2>&1) || rc=$?
    for c in $ok; do
        [ "$rc" = "$c" ] && return 0
    done
    echo "$out" >&2
    fail "qemu-img check ${img#"$tmp"/} exited with status $rc"
}

# qcow2j_rw IMG CMD [PARAM...]
qcow2j_rw ()
{
    local img=$1 cmd=$2 rc=0
    shift 2
    serve_start "$img" "$@" || return 1
    bash -c "$cmd" || rc=$?
    serve_stop TERM
    if [ "$rc" != 0 ]; then cat "$server_log" >&2; fi
    qcheck "$img"
    return $rc
}

# to_raw IMG RAW
to_raw ()
{
    qemu-img convert -O raw "$1" "$2" || fail "qemu-img convert $1 failed"
}

# img_compare IMG RAW
img_compare ()
{
    local out
    if ! out=$(qemu-img compare -F raw "$1" "$2" 2>&1); then
        echo "$out" >&2
        fail "${1#"$tmp"/}: content differs from the model ${2#"$tmp"/}"
    fi
}

# random_file FILE SIZE SEED
random_file ()
{
    python3 -c '
import random, sys
r = random.Random(int(sys.argv[3]))
with open(sys.argv[1], "wb") as f:
    n = int(sys.argv[2])
    while n > 0:
        k = min(n, 1 << 20); f.write(r.randbytes(k)); n -= k
' "$1" "$2" "$3"
}

# A seed for the random workloads: QCOW2J_SEED reproduces a run.
test_seed=${QCOW2J_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
echo "$0: seed $test_seed (set QCOW2J_SEED=$test_seed to repeat)"
