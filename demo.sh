#!/usr/bin/env bash
# Build qcow2j and serve a qcow2 image with it in the foreground.
#   ./demo.sh [IMAGE.qcow2]
# Without an image, a small demo image is made in ./demo.qcow2.
set -euo pipefail
cd "$(dirname "$0")"
./build.sh

image=${1:-demo.qcow2}
if [ ! -e "$image" ]; then
  echo "demo.sh: creating a 1 GiB demo image $image"
  qemu-img create -q -f qcow2 "$image" 1G
  qemu-io -f qcow2 -c 'write -P 0x61 0 4M' -c 'write -z 8M 8M' \
          -c 'write -P 0x62 512M 1M' "$image" >/dev/null
fi

echo "demo.sh: serving $image at nbd://localhost:10809/ (Ctrl-C to stop)"
echo "demo.sh: try: nbdinfo nbd://localhost:10809/"
exec nbdkit -f "$PWD/.libs/nbdkit-qcow2j-plugin.so" file="$image"
