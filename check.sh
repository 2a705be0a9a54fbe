#!/usr/bin/env bash
# Build qcow2j and run the whole test suite: unit tests of lib/ and shell
# tests driving the real plugin, then the same suite built with ASan and
# UBSan, then the threaded unit tests, and the plugin inside nbdkit under
# many connections, built with TSan.  The sanitizer runs sample fewer
# states in the long randomized tests (QCOW2J_QUICK=1, tests/unit.h),
# which the plain run covers in full, and the ASan run leaves out
# unit-image-powercut (see there).  Prints
# 'N passed, N failed[, N skipped]' last, counted from every run.
#   ./check.sh                 everything
#   QCOW2J_SANITIZERS=0 ./check.sh   only the plain build
#   QCOW2J_SLOW=1 ./check.sh   also the slow soak and fuzz runs
set -uo pipefail
cd "$(dirname "$0")"
top=$PWD
./deps.sh --test || exit 1
./build.sh || exit 1

# Threaded unit tests, and tests of the plugin under concurrent clients
# (run under TSan too).
THREADED_TESTS="tests/unit-metacache tests/unit-journal tests/unit-image-threads"
THREADED_TESTS+=" tests/test-write-multiconn.sh tests/test-write-fio.sh"
THREADED_TESTS+=" tests/test-write-delayed-cow-race.sh"

status=0
rm -f tests/*.trs tests/*.log
make -j"$(nproc)" check || status=1

# A copy of the tree (tracked and new files) for each sanitizer build: the
# source tree is configured in place, so automake will not build it
# out of tree.
sanitized_build ()
{
  local dir=$1 flags=$2
  rm -rf "$dir"
  mkdir -p "$dir"
  git ls-files -z --cached --others --exclude-standard |
    xargs -0 cp --parents -t "$dir" || return 1
  (cd "$dir" && autoreconf -fi >/dev/null 2>&1 &&
   ./configure --enable-werror CFLAGS="-O1 -g -fno-omit-frame-pointer $flags" \
               LDFLAGS="$flags" >/dev/null &&
   make -j"$(nproc)" >/dev/null)
}

runs=(.)
if [ "${QCOW2J_SANITIZERS:-1}" = 1 ]; then
  asan=build/asan
  if sanitized_build "$asan" "-fsanitize=address,undefined -fno-sanitize-recover=all"; then
    # The plugin is loaded by an uninstrumented nbdkit: preload the
    # runtime there (functions.sh does, for nbdkit only, and leaves leak
    # checking of the server to valgrind).
    # Every test but unit-image-powercut, whose crash states take over
    # half an hour under ASan even thinned: the plain run has it, and
    # unit-image-faults drives the same write path on the same simulator.
    asan_tests=$(printf 'print-tests:\n\t@echo $(TESTS)\n' |
                 make -s -C "$asan" -f Makefile -f - print-tests |
                 tr ' ' '\n' | grep -vx 'tests/unit-image-powercut' | tr '\n' ' ')
    (cd "$asan" &&
     QCOW2J_QUICK=1 QCOW2J_PRELOAD="$(gcc -print-file-name=libasan.so)" \
     ASAN_OPTIONS=abort_on_error=1 \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     make -j"$(nproc)" check TESTS="$asan_tests") || status=1
    runs+=("$asan")
  else
    echo "check.sh: ASan/UBSan build failed"; status=1
  fi
  tsan=build/tsan
  if sanitized_build "$tsan" "-fsanitize=thread"; then
    # As for ASan, nbdkit gets the runtime preloaded; a race report aborts
    # the server, which fails the test.
    (cd "$tsan" &&
     QCOW2J_QUICK=1 QCOW2J_PRELOAD="$(gcc -print-file-name=libtsan.so)" \
     TSAN_OPTIONS=halt_on_error=1 \
     make -j"$(nproc)" check TESTS="$THREADED_TESTS") || status=1
    runs+=("$tsan")
  else
    echo "check.sh: TSan build failed"; status=1
  fi
fi

# Count from the harness's results, whatever make said.
pass=0 fail=0 skip=0
for run in "${runs[@]}"; do
  for trs in "$run"/tests/*.trs; do
    [ -e "$trs" ] || continue
    case "$(sed -n 's/^:test-result: //p' "$trs")" in
      PASS|XFAIL) pass=$((pass+1)) ;;
      SKIP) skip=$((skip+1)) ;;
      *) fail=$((fail+1))
         echo "==== FAILED: $run/${trs%.trs}"; tail -40 "${trs%.trs}.log" ;;
    esac
  done
done
if [ "$skip" -gt 0 ]; then
  echo "$pass passed, $fail failed, $skip skipped"
else
  echo "$pass passed, $fail failed"
fi
[ "$status" = 0 ] && [ "$fail" = 0 ]
