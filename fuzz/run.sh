#!/usr/bin/env bash
# Build the libFuzzer harness fuzz/fuzz-image.c (with every lib/*.c, clang
# -fsanitize=fuzzer,address,undefined) into build/fuzz, generate the seed
# corpus (fuzz/seeds.sh) into build/fuzz/corpus, and fuzz for SECONDS with
# fuzz/regressions/* as a second, read-only corpus.
#
#   fuzz/run.sh SECONDS [LIBFUZZER-OPTION...]   fuzz (default 60 s)
#   fuzz/run.sh --replay [FILE...]              run each file once
#                                               (default fuzz/regressions/*)
#
# Longer runs, opt-in:
#   fuzz/run.sh 3600              an hour (the corpus in build/fuzz/corpus
#                                 grows from run to run)
#   fuzz/run.sh 3600 -fork=4      the same on 4 cores
#   make check QCOW2J_SLOW=1      tests/test-fuzz-short.sh fuzzes 600 s
#                                 instead of 60 s
#
# On a crash, leak, timeout (-timeout=10) or out-of-memory (-rss_limit_mb=
# 2048) it exits 1, leaving the input in build/fuzz/artifacts/.  Minimize
# it (build/fuzz/fuzz-image -minimize_crash=1 -runs=10000 FILE), then keep
# it as fuzz/regressions/NAME so that every later run replays it.
# Exits 77 if clang's libFuzzer is not installed (Debian: clang and
# libclang-rt-14-dev; ./build.sh installs them).
#
# Environment: BUILDDIR, the configured tree whose config.h to use
# (default: this tree; a minimal config.h is made without one); QCOW2J,
# the built plugin for the dirty-journal seeds (default
# $BUILDDIR/.libs/nbdkit-qcow2j-plugin.so); CC (default clang);
# QCOW2J_FUZZ_VERBOSE=1 prints lib's messages and the requests made;
# QCOW2J_FUZZ_CFLAGS adds compiler flags.  To fuzz past a known UBSan
# finding not fixed yet, e.g.:
#   QCOW2J_FUZZ_CFLAGS=-fsanitize-recover=nonnull-attribute \
#   UBSAN_OPTIONS=suppressions=FILE fuzz/run.sh 600
# with the line 'nonnull-attribute:FUNCTION' in FILE.
set -euo pipefail
export LC_ALL=C

top=$(cd "$(dirname "$0")/.." && pwd)
: "${BUILDDIR:=$top}"
: "${CC:=clang}"
: "${QCOW2J:=$BUILDDIR/.libs/nbdkit-qcow2j-plugin.so}"
export QCOW2J
out=$top/build/fuzz
bin=$out/fuzz-image
regressions=$top/fuzz/regressions
flags=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=all -pthread -Wall)
# shellcheck disable=SC2206
extra=(${QCOW2J_FUZZ_CFLAGS:-})

mode=fuzz
seconds=60
case "${1:-}" in
    --replay) mode=replay; shift ;;
    '') ;;
    *[!0-9]*) echo "usage: fuzz/run.sh SECONDS [LIBFUZZER-OPTION...] | --replay [FILE...]" >&2
              exit 2 ;;
    *) seconds=$1; shift ;;
esac

mkdir -p "$out"

# Is libFuzzer there?
probe=$out/probe
printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
    'int LLVMFuzzerTestOneInput (const uint8_t *d, size_t n) { return 0; }' \
    > "$probe.c"
if ! "$CC" "${flags[@]}" -o "$probe" "$probe.c" >"$probe.log" 2>&1; then
    echo "fuzz/run.sh: $CC cannot build with -fsanitize=fuzzer (install clang and libclang-rt-14-dev):" >&2
    tail -3 "$probe.log" >&2
    exit 77
fi

# Build, when a source is newer than the binary.
if [ -f "$BUILDDIR/config.h" ]; then
    config_dir=$BUILDDIR
else
    config_dir=$out
    printf '#define _GNU_SOURCE 1\n' > "$out/config.h"
fi
rebuild=0
[ -x "$bin" ] || rebuild=1
# (The flags too: QCOW2J_FUZZ_CFLAGS may change between runs.)
if [ "$(cat "$bin.flags" 2>/dev/null)" != "$CC ${flags[*]} ${extra[*]}" ]; then
    rebuild=1
fi
for f in "$top"/lib/*.[ch] "$top"/fuzz/fuzz-image.c "$top"/fuzz/run.sh; do
    [ "$f" -nt "$bin" ] && rebuild=1
done
if [ $rebuild = 1 ]; then
    libs=$(pkg-config --cflags --libs zlib libzstd 2>/dev/null || echo -lz -lzstd)
    echo "fuzz/run.sh: building $bin"
    # shellcheck disable=SC2086
    "$CC" "${flags[@]}" "${extra[@]}" -I"$config_dir" -I"$top/lib" \
        -o "$bin.tmp" "$top"/fuzz/fuzz-image.c "$top"/lib/*.c $libs
    mv "$bin.tmp" "$bin"
    echo "$CC ${flags[*]} ${extra[*]}" > "$bin.flags"
fi

# (Options from the environment come last, and win.)
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}

if [ $mode = replay ]; then
    if [ $# = 0 ]; then
        shopt -s nullglob
        set -- "$regressions"/*
        shopt -u nullglob
    fi
    if [ $# = 0 ]; then
        echo "fuzz/run.sh: nothing to replay"
        exit 0
    fi
    # Each file once, on its own (a directory would be fuzzed instead).
    failed=0
    for f in "$@"; do
        if "$bin" -rss_limit_mb=2048 -timeout=10 "$f" >"$out/replay.log" 2>&1; then
            echo "fuzz/run.sh: ok: $f"
        else
            failed=$((failed + 1))
            echo "fuzz/run.sh: FAIL: $f:" >&2
            grep -E 'fuzz-image.c: |runtime error|Sanitizer|SUMMARY|^    #[0-9]+ 0x[0-9a-f]+ in [A-Za-z_0-9]+ [^ ]*/(lib|fuzz)/[^ /]+\.c:' \
                "$out/replay.log" | head -12 >&2
        fi
    done
    if [ $failed -gt 0 ]; then
        echo "fuzz/run.sh: $failed of $# inputs crashed (QCOW2J_FUZZ_VERBOSE=1 $bin FILE says more)" >&2
        exit 1
    fi
    echo "fuzz/run.sh: replayed $# inputs"
    exit 0
fi

# Seeds (regenerated each run: cheap), then fuzz.
mkdir -p "$out/corpus" "$out/artifacts"
"$top/fuzz/seeds.sh" "$out/corpus"
corpora=("$out/corpus")
if [ -d "$regressions" ] && [ -n "$(ls -A "$regressions")" ]; then
    corpora+=("$regressions")
fi
rc=0
stamp=$out/artifacts/.start
touch "$stamp"
"$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -max_len=4194304 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/" "$@" "${corpora[@]}" || rc=$?
# (With -fork=N -ignore_crashes=1 it exits 0 after crashes.)
found=$(find "$out/artifacts" -type f -newer "$stamp" ! -name '.*' | sort)
if [ $rc != 0 ] || [ -n "$found" ]; then
    echo "fuzz/run.sh: FAIL: the fuzzer exited $rc; new inputs in $out/artifacts:" >&2
    echo "${found:-(none)}" >&2
    exit 1
fi
echo "fuzz/run.sh: no crash in $seconds s"
