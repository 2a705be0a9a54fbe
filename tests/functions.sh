# Sourced by every shell test (tests/test-*.sh).
#
# Tests run under automake's parallel harness: exit 0 is a pass, 77 a skip,
# anything else a failure.  'make check' exports QCOW2J (the built plugin),
# SRCDIR and BUILDDIR.  Every test gets its own scratch directory $tmp, removed
# on exit, and runs the real nbdkit with the plugin given by path.

set -eu
set -o pipefail

# nbdsh and libnbd scripts need Debian's python3 (python3-libnbd), not a
# python3 that some version manager put first in PATH.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
export LC_ALL=C

: "${QCOW2J:?QCOW2J must name the plugin .so: run the tests with make check}"
: "${SRCDIR:=$(cd "$(dirname "$0")/.." && pwd)}"

# requires CMD...: skip the test unless CMD succeeds.
requires ()
{
    if ! "$@" >/dev/null 2>&1; then
        echo "$0: skipped: this test needs: $*"
        exit 77
    fi
}

# cleanup_fn CMD ARGS...: run CMD on exit, the last registered first (so
# that servers stop and mounts go before $tmp is removed).
_cleanup_hooks=()
cleanup_fn ()
{
    local IFS=' '
    _cleanup_hooks+=("$*")
}
_run_cleanup_hooks ()
{
    local status=$? i
    set +e
    for ((i = ${#_cleanup_hooks[@]} - 1; i >= 0; i--)); do
        eval "${_cleanup_hooks[i]}"
    done
    exit $status
}
trap _run_cleanup_hooks EXIT
trap 'exit 130' INT QUIT TERM

tmp=$(mktemp -d /tmp/qcow2j-test.XXXXXX)
cleanup_fn rm -rf "$tmp"

# A test that hangs fails after QCOW2J_TEST_TIMEOUT seconds (default 20
# minutes, far above the slowest test under a sanitizer) instead of
# holding up the whole suite: its children are stopped, then itself.
_watchdog_shell=$$
(
    sleep "${QCOW2J_TEST_TIMEOUT:-1200}" &
    wait $!
    echo "$0: FAIL: timed out after ${QCOW2J_TEST_TIMEOUT:-1200} s" >&2
    for p in $(pgrep -P "$_watchdog_shell"); do
        [ "$p" = "$BASHPID" ] || kill -TERM "$p" 2>/dev/null
    done
    kill -TERM "$_watchdog_shell"
) </dev/null >/dev/null &
_watchdog=$!
cleanup_fn 'pkill -P $_watchdog; kill $_watchdog 2>/dev/null'


# nbdkit ARGS...: the system nbdkit, with a sanitizer runtime preloaded when
# QCOW2J_PRELOAD is set (the plugin is dlopen'ed by an uninstrumented
# server, so the runtime must come first).  Leaks in the server are
# test-valgrind.sh's business.
export NBDKIT_BIN
NBDKIT_BIN=$(type -P nbdkit) || { echo "$0: nbdkit is not installed (run ./build.sh)" >&2; exit 1; }
# NBDKIT_CMD is the same as a command (for servers run in the background,
# whose pid must be nbdkit's own).
NBDKIT_CMD=("$NBDKIT_BIN")
if [ -n "${QCOW2J_PRELOAD:-}" ]; then
    # nbdkit-locale-shim.c says why it comes along.
    QCOW2J_PRELOAD="$QCOW2J_PRELOAD $BUILDDIR/tests/.libs/nbdkit-locale-shim.so"
    NBDKIT_CMD=(env "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
                "LD_PRELOAD=$QCOW2J_PRELOAD" "$NBDKIT_BIN")
fi
# (The function does not use the array, so that tests can export it to a
# child shell.)
nbdkit ()
{
    if [ -n "${QCOW2J_PRELOAD:-}" ]; then
        env "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
            "LD_PRELOAD=$QCOW2J_PRELOAD" "$NBDKIT_BIN" "$@"
    else
        "$NBDKIT_BIN" "$@"
    fi
}

# fail MESSAGE: report and exit with failure.
fail ()
{
    echo "$0: FAIL: $*" >&2
    exit 1
}
