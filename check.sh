#!/usr/bin/env bash
# Build qcow2j and run the whole test suite (unit tests and shell tests
# driving the real plugin).  Prints 'N passed, N failed[, N skipped]' last.
#   ./check.sh            the suite
#   QCOW2J_SLOW=1 ./check.sh   also the slow soak and fuzz runs
set -uo pipefail
cd "$(dirname "$0")"
./build.sh || exit 1

rm -f tests/*.trs tests/*.log
make -j"$(nproc)" check
status=$?

# Count from the harness's results, whatever make said.
pass=0 fail=0 skip=0
for trs in $(find tests -name '*.trs'); do
  case "$(sed -n 's/^:test-result: //p' "$trs")" in
    PASS|XFAIL) pass=$((pass+1)) ;;
    SKIP) skip=$((skip+1)) ;;
    *) fail=$((fail+1)) ;;
  esac
done
if [ "$fail" -gt 0 ]; then
  for log in tests/*.log; do
    grep -q '^FAIL\|^ERROR' "$log" 2>/dev/null && { echo "==== $log"; tail -40 "$log"; }
  done
fi
if [ "$skip" -gt 0 ]; then
  echo "$pass passed, $fail failed, $skip skipped"
else
  echo "$pass passed, $fail failed"
fi
[ "$status" = 0 ] && [ "$fail" = 0 ]
