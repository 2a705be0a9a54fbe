#!/usr/bin/env bash
# Build qcow2j and serve a qcow2 image with it in the foreground.
#   ./demo.sh [IMAGE.qcow2]
# IMAGE is relative to the directory demo.sh is run from.  Without one, a
# new 1 GiB image demo.qcow2 is made there (by the plugin: create=true).
# Installs only what building and serving need.
set -euo pipefail
image=$(realpath -m -- "${1:-demo.qcow2}")
top=$(cd "$(dirname "$0")" && pwd)
"$top/build.sh"

create=()
if [ ! -e "$image" ]; then
  if [ $# -gt 0 ]; then
    echo "demo.sh: $image: no such file" >&2
    exit 1
  fi
  echo "demo.sh: creating a 1 GiB demo image $image"
  create=(create=true size=1G)
fi

echo "demo.sh: serving $image at nbd://localhost:10809/ (Ctrl-C to stop)"
echo "demo.sh: try: nbdinfo nbd://localhost:10809/ (Debian package libnbd-bin)"
exec nbdkit -f "$top/.libs/nbdkit-qcow2j-plugin.so" file="$image" "${create[@]}"
