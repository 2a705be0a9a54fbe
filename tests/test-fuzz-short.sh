#!/usr/bin/env bash
# Fuzz lib/ for a short while (fuzz/run.sh: the libFuzzer harness
# fuzz/fuzz-image.c over image open, metadata reads, journal replay and
# writes, seeded with images qemu-img makes), after replaying every input
# kept in fuzz/regressions/ once.  60 s; QCOW2J_SLOW=1: 600 s.  Longer runs:
# fuzz/run.sh 3600.  Skipped without clang's libFuzzer.
#
# In the ASan/UBSan build of check.sh (QCOW2J_PRELOAD set) only the
# regressions are replayed: the fuzzer carries its own sanitizers, so a
# second run would find nothing new.
source "$SRCDIR/tests/functions.sh"
requires clang --version

seconds=60
[ "${QCOW2J_SLOW:-0}" = 1 ] && seconds=600

# The sanitizer options of check.sh are for the plugin, not for the fuzzer.
unset ASAN_OPTIONS UBSAN_OPTIONS
export BUILDDIR=${BUILDDIR:-$SRCDIR}

rc=0
"$SRCDIR/fuzz/run.sh" --replay || rc=$?
case $rc in
    0) ;;
    77) exit 77 ;;
    *) fail "an input of fuzz/regressions crashed (above)" ;;
esac
[ -n "${QCOW2J_PRELOAD:-}" ] && exit 0

"$SRCDIR/fuzz/run.sh" "$seconds" || fail "the fuzzer found a crash (above)"
