#!/usr/bin/env bash
# Install what building needs (deps.sh; Debian 12, as root or with sudo)
# and build qcow2j.
#   ./build.sh [configure options...]
set -euo pipefail
cd "$(dirname "$0")"

./deps.sh

if [ ! -x configure ] || [ configure.ac -nt configure ] ||
   [ Makefile.am -nt Makefile.in ]; then
  autoreconf -fi
fi
if [ ! -f Makefile ] || [ $# -gt 0 ] || [ configure -nt config.status ]; then
  ./configure --enable-werror "$@"
fi
make -j"$(nproc)"
