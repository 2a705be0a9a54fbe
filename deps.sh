#!/usr/bin/env bash
# Install what is missing (Debian 12, as root or with sudo).
#   ./deps.sh          what building and serving need
#   ./deps.sh --test   that, and what the test suite needs
set -euo pipefail

packages=(
  build-essential autoconf automake libtool pkg-config perl
  nbdkit nbdkit-plugin-dev zlib1g-dev libzstd-dev
)
if [ "${1:-}" = --test ]; then
  packages+=(
    qemu-utils libnbd-bin python3-libnbd fio valgrind
    clang libclang-rt-14-dev   # libFuzzer: fuzz/run.sh, tests/test-fuzz-short.sh
  )
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
    missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "deps.sh: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
