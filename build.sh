#!/usr/bin/env bash
# Install what is missing (Debian 12, as root or with sudo) and build qcow2j.
#   ./build.sh [configure options...]
set -euo pipefail
cd "$(dirname "$0")"

packages=(
  build-essential autoconf automake libtool pkg-config perl
  nbdkit nbdkit-plugin-dev zlib1g-dev libzstd-dev
  qemu-utils libnbd-bin python3-libnbd fio valgrind
  clang libclang-rt-14-dev   # libFuzzer: fuzz/run.sh, tests/test-fuzz-short.sh
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
    missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "build.sh: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if [ ! -x configure ] || [ configure.ac -nt configure ] ||
   [ Makefile.am -nt Makefile.in ]; then
  autoreconf -fi
fi
if [ ! -f Makefile ] || [ $# -gt 0 ] || [ configure -nt config.status ]; then
  ./configure --enable-werror "$@"
fi
make -j"$(nproc)"
