#!/usr/bin/env bash
# bench/run.sh: qcow2j against qemu-nbd and the raw NBD ceiling, one command.
#
# Each row is a fio workload driven over a unix socket with fio's nbd engine
# against each server in turn, each on a fresh image:
#   qcow2j      nbdkit with the built plugin, file=IMAGE
#   qemu-wb     qemu-nbd --cache=writeback
#   qemu-uring  qemu-nbd --cache=none --aio=io_uring --discard=unmap (its
#               best mode; -e 0: any number of connections, multi-conn)
#   raw         nbdkit's file plugin on a raw file written full once: the
#               ceiling of the NBD path on this machine
#   raw-new     nbdkit's file plugin on a new sparse raw file, in the rows
#               into new space: what the file system charges any server
#               for giving new space host blocks (a raw file pays it too)
# It prints, per row and server: IOPS (MB/s for 1 MiB writes), the ratio to
# the raw ceiling and to the faster qemu-nbd mode, host flushes per client
# flush, bytes the server wrote per byte the client wrote, and whether
# qemu-img check passes afterwards.  Host flushes, bytes written, peak
# memory and CPU come from an LD_PRELOAD shim (bench/flushcount.c), which
# also emulates a slow flush device for the "@slow" rows.  A scale row opens
# a sparse 1 TiB image: time until the server answers, random reads across
# it, peak memory.
#
# The point is qcow2j's metadata journal (docs/journal-format.md, 8): a
# write into new space should cost one host flush per client flush and
# about one byte written per byte sent, as on a raw file.
#
#   bench/run.sh [--quick] [--rows=REGEX] [--servers=LIST] [--slow-flush=US]
#                [--runtime=S] [--size=GIB] [--dir=DIR] [--out=BASE]
#                [--plugin=SO] [--deps]
set -euo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH   # Debian's python3 and tools first

here=$(cd "$(dirname "$0")" && pwd)
plugin=$here/../.libs/nbdkit-qcow2j-plugin.so
runtime=20 size_gib=4 scale_runtime=10
rows_re=. servers=qcow2j,qemu-wb,qemu-uring,raw,raw-new flush_delay_us=2000
dir=/var/tmp out=$here/last

all_rows=(randwrite randwrite-fsync1 seqwrite-1m overwrite randread
          seqwrite-fsync32 overlay-fsync32 multiconn multiconn-fsync1
          randwrite-fsync1@slow seqwrite-fsync32@slow overlay-fsync32@slow
          scale-1t)

die() { echo "bench: $*" >&2; exit 1; }

usage() {
  sed -n '/^#   bench/,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
  cat <<EOF
  --quick        ${runtime}s -> 5 s per row, 1 GiB images (development, smoke test)
  --rows=REGEX   rows whose name matches: ${all_rows[*]}
  --servers=LIST comma-separated, from: $servers
  --slow-flush=US  each host flush costs US µs more in the @slow rows
                 (default $flush_delay_us; 0 skips those rows)
  --runtime=S    seconds per row (default $runtime)      --size=GIB  image size (default $size_gib)
  --dir=DIR      where the temporary images go (default $dir)
  --out=BASE     write BASE.md (the table) and BASE.csv (default bench/last)
  --plugin=SO    the qcow2j plugin (default .libs/nbdkit-qcow2j-plugin.so)
  --deps         install the Debian packages bench needs, then exit
EOF
}

# ---- dependencies ------------------------------------------------------
deps=(fio:fio qemu-img:qemu-utils qemu-nbd:qemu-utils nbdkit:nbdkit
      nbdinfo:libnbd-bin nbdcopy:libnbd-bin cc:gcc python3:python3
      /usr/include/liburing.h:liburing-dev)

missing_packages() {
  local d
  for d in "${deps[@]}"; do
    if [[ ${d%%:*} = /* ]]; then [ -e "${d%%:*}" ] && continue
    else command -v "${d%%:*}" >/dev/null && continue; fi
    echo "${d#*:}"
  done | sort -u
}

check_deps() {
  local missing
  missing=$(missing_packages | tr '\n' ' ')
  [ -z "$missing" ] ||
    die "missing packages; install them with: apt-get install $missing(or bench/run.sh --deps)"
  fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (needs fio built with libnbd)"
  [ -f "$plugin" ] || die "no plugin at $plugin: build first (./build.sh), or pass --plugin=SO"
}

install_deps() {
  local missing sudo=
  missing=$(missing_packages)
  [ -n "$missing" ] || return 0
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
}

# ---- images ------------------------------------------------------------
# The image a row needs: new (empty), filled (every byte written), overlay
# (an empty qcow2 over a filled qcow2 backing file), or huge (sparse 1 TiB).
row_image() {
  case ${1%@slow} in
    overwrite|randread) echo filled ;;
    overlay-*)          echo overlay ;;
    scale-*)            echo huge ;;
    *)                  echo new ;;
  esac
}

fixture_filled_raw() {   # random data, made once per run
  local f=$images/filled.raw
  if [ ! -f "$f" ]; then
    nbdkit -U - random size="${size_gib}G" --run "nbdcopy \"\$uri\" $f" >&2
    sync "$f"
  fi
  echo "$f"
}

fixture_backing() {
  local b=$images/backing.qcow2
  if [ ! -f "$b" ]; then
    qemu-img convert -O qcow2 "$(fixture_filled_raw)" "$b"
    sync "$b"
  fi
  echo "$b"
}

# Prints the path of an image of that kind for the server.  The raw server
# always gets the filled file, fully allocated, made once per run: freeing a
# file written at random offsets costs minutes on an ext4 mounted with
# -o discard, and a ceiling should pay no block allocation anyway.  The
# raw-new server gets a new sparse raw file (only in rows into new space).
prepare_image() {   # server kind
  local img=$images/image.qcow2 size=${size_gib}G
  [ "$2" = huge ] && size=1T
  rm -f "$img" "$images/image.raw"   # the scratch file system holds one
  if [ "$1" = raw-new ]; then
    img=$images/image.raw
    truncate -s "$size" "$img"
  elif [ "$1" = raw ]; then
    if [ "$2" = huge ]; then img=$images/huge.raw; truncate -s 1T "$img"
    else img=$(fixture_filled_raw); fi
  else
    case $2 in
      new|huge) qemu-img create -q -f qcow2 "$img" "$size" ;;
      filled)   qemu-img convert -O qcow2 "$(fixture_filled_raw)" "$img" ;;
      overlay)  qemu-img create -q -f qcow2 -b "$(fixture_backing)" -F qcow2 "$img" ;;
    esac
  fi
  sync "$img"
  echo "$img"
}

# In the rows over a filled image, every server starts with its image in
# the same state of the host page cache: out of it, as after a reboot,
# then, for randread, read through once.  Otherwise those rows compare
# how the images were last written: qemu-img convert leaves the filled
# qcow2 image cached in large folios, into which every 4 KiB write costs
# ext4 a walk over hundreds of buffer heads (perf: ext4_block_write_begin,
# about half the server's CPU in the overwrite row), while the raw file's
# cached folios depend on which rows ran before.  Rows into new space
# leave the raw file as it is: evicted, its 1 MiB writes ran at 190 to
# 200 MB/s in two runs, against 450 to 590 cached: a lower ceiling, for
# no reason that concerns the servers.
settle_cache() {   # row image
  dd if=/dev/null of="$2" oflag=nocache conv=notrunc,fdatasync count=0 status=none
  [ "$1" != randread ] || cat "$2" >/dev/null
}

# ---- servers -----------------------------------------------------------
server_cmd() {   # server image
  case $1 in
    qcow2j)     echo nbdkit -f -U "$sock" "$plugin" file="$2" ;;
    qemu-wb)    echo qemu-nbd -t -e 0 -k "$sock" -f qcow2 --cache=writeback "$2" ;;
    qemu-uring) echo qemu-nbd -t -e 0 -k "$sock" -f qcow2 --cache=none --aio=io_uring --discard=unmap "$2" ;;
    raw|raw-new) echo nbdkit -f -U "$sock" file file="$2" ;;
    *)          die "unknown server $1" ;;
  esac
}

# Starts the server with the shim, waits until nbdinfo gets an answer, sets
# server_pid and open_ms.
start_server() {   # server image delay_us
  local t0 cmd
  cmd=$(server_cmd "$1" "$2")
  rm -f "$sock" "$counts"
  t0=$(date +%s%N)
  # shellcheck disable=SC2086
  LD_PRELOAD=$shim BENCH_COUNT_FILE=$counts BENCH_FLUSH_DELAY_US=$3 \
    $cmd 2>>"$work/server.log" &
  server_pid=$!
  until nbdinfo --size "$uri" >/dev/null 2>&1; do
    kill -0 "$server_pid" 2>/dev/null ||
      die "$1 did not start: $(tail -3 "$work/server.log")"
    sleep 0.005
  done
  open_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
}

stop_server() {   # waits: qemu-nbd may write back its cache for seconds
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=
  [ -s "$counts" ] || die "the server left no counts ($counts): did it crash? $(tail -3 "$work/server.log")"
}

count() { awk -v k="$1" '$1 == k { print $2 }' "$counts"; }

check_image() {   # server image -> ok, FAILED or - (raw)
  if [[ $1 = raw* ]]; then echo -
  elif qemu-img check -q "$2" >>"$work/check.log" 2>&1; then echo ok
  else echo FAILED; fi
}

# ---- workloads ---------------------------------------------------------
# fio options of a row.  Write rows without flushes end with one flush
# (end_fsync, inside fio's runtime), so that data left in a page cache is
# paid for.  Writes into new space are not time-based: each block is
# written once.
row_fio() {
  local size=${size_gib}g quarter=$(( size_gib * 256 ))m
  local w4="--rw=randwrite --bs=4k" s4="--rw=write --bs=4k"
  case ${1%@slow} in
    randwrite)        echo "$w4 --iodepth=16 --size=$size --end_fsync=1" ;;
    randwrite-fsync1) echo "$w4 --iodepth=1 --fsync=1 --size=$size" ;;
    seqwrite-1m)      echo "--rw=write --bs=1m --iodepth=8 --size=$size --end_fsync=1" ;;
    overwrite)        echo "$w4 --iodepth=16 --size=$size --time_based --end_fsync=1" ;;
    randread)         echo "--rw=randread --bs=4k --iodepth=16 --size=$size --time_based" ;;
    seqwrite-fsync32|overlay-fsync32)
                      echo "$s4 --iodepth=1 --fsync=32 --size=$size" ;;
    multiconn)        echo "$w4 --iodepth=4 --numjobs=4 --size=$quarter --offset_increment=$quarter --end_fsync=1" ;;
    multiconn-fsync1) echo "$w4 --iodepth=1 --fsync=1 --numjobs=4 --size=$quarter --offset_increment=$quarter" ;;
    scale-1t)         echo "--rw=randread --bs=4k --iodepth=16 --size=1t --norandommap --time_based" ;;
    *)                die "unknown row $1" ;;
  esac
}

# Runs fio on the row; prints "metric value client_bytes client_flushes".
run_fio() {   # row
  local rt=$runtime json=$work/fio.json
  [[ $1 = scale-* ]] && rt=$scale_runtime
  # shellcheck disable=SC2046
  timeout $(( rt * 4 + 300 )) fio --name="$1" --ioengine=nbd --uri="$uri" \
    --runtime="$rt" --group_reporting --output-format=json \
    $(row_fio "$1") 2>>"$work/fio.log" | sed -n '/^{/,$p' >"$json" ||
    die "fio failed on $1: $(tail -3 "$work/fio.log")"
  python3 - "$json" "$(row_fio "$1")" <<'EOF'
import json, re, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
opts = sys.argv[2]
numjobs = int((re.findall(r"--numjobs=(\d+)", opts) or ["1"])[0])
flushes = job["sync"]["total_ios"] + (numjobs if "--end_fsync=1" in opts else 0)
io = job["read"] if "randread" in opts else job["write"]
if "--bs=1m" in opts:
    print("MB/s", round(io["bw_bytes"] / 1e6, 1), job["write"]["io_bytes"], flushes)
else:
    print("IOPS", round(io["iops"]), job["write"]["io_bytes"], flushes)
EOF
}

# ---- one measurement ---------------------------------------------------
csv_header="row,server,flush_delay_us,metric,value,client_bytes,client_flushes,host_flushes,sync_file_range,server_write_bytes,server_wchar,open_ms,vmhwm_kib,cpu_ms,check"

# raw-new runs only in the rows into new space (new, overlay): over a
# filled image it would be the raw row again.
measure() {   # row server
  local row=$1 server=$2 delay=0 img fio_out check
  case $server:$(row_image "$row") in raw-new:filled|raw-new:huge) return 0 ;; esac
  [[ $row = *@slow ]] && delay=$flush_delay_us
  img=$(prepare_image "$server" "$(row_image "$row")")
  [ "$(row_image "$row")" != filled ] || settle_cache "$row" "$img"
  start_server "$server" "$img" "$delay"
  fio_out=$(run_fio "$row")
  stop_server
  check=$(check_image "$server" "$img")
  read -r metric value cbytes cflushes <<<"$fio_out"
  echo "$row,$server,$delay,$metric,$value,$cbytes,$cflushes,$(count flushes),$(count sync_file_range),$(count write_bytes),$(count wchar),$open_ms,$(count vmhwm_kib),$(count cpu_ms),$check" >>"$out.csv"
  printf '  %-22s %-11s %8s %-4s  %s\n' "$row" "$server" "$value" "$metric" "$check" >&2
}

# ---- main --------------------------------------------------------------
parse_args() {
  local a
  for a in "$@"; do
    case $a in
      --quick)        runtime=5 size_gib=1 scale_runtime=3 ;;
      --rows=*)       rows_re=${a#*=} ;;
      --servers=*)    servers=${a#*=} ;;
      --slow-flush=*) flush_delay_us=${a#*=} ;;
      --runtime=*)    runtime=${a#*=} ;;
      --size=*)       size_gib=${a#*=} ;;
      --dir=*)        dir=${a#*=} ;;
      --out=*)        out=${a#*=} ;;
      --plugin=*)     plugin=${a#*=} ;;
      --deps)         install_deps; exit 0 ;;
      -h|--help)      usage; exit 0 ;;
      *)              usage >&2; exit 2 ;;
    esac
  done
}

# On a file system mounted with -o discard, freeing a file written at
# scattered offsets issues a discard per extent: deleting one image then
# takes minutes.  As root, the images go to an ext4 without discard on a
# loop device (direct I/O) over a file written full of zeroes, so the host
# file neither grows nor fragments and is freed in one piece.
use_scratch_fs() {
  local img=$work/fs.img
  findmnt -n -o OPTIONS --target "$dir" | tr , '\n' | grep -qx discard || return 0
  if [ "$(id -u)" != 0 ]; then
    echo "bench: warning: $dir discards on every free: deleting each image will be slow" >&2
    return 0
  fi
  echo "bench: $dir discards on every free; images go to an ext4 on a loop device in $work" >&2
  dd if=/dev/zero of="$img" bs=1M count=$(( (3 * size_gib + 1) * 1024 )) oflag=direct status=none
  mkfs.ext4 -q -F -E nodiscard "$img"
  loop_dev=$(losetup --direct-io=on --show -f "$img")
  mkdir "$work/fs"
  mount "$loop_dev" "$work/fs"
  images=$work/fs
  fs_desc="ext4 on a loop device (direct I/O) over a file on $fs_desc"
}

cleanup() {
  [ -z "${server_pid:-}" ] || { kill -TERM "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; }
  if [ -n "${loop_dev:-}" ]; then
    umount "$work/fs"
    losetup -d "$loop_dev"
  fi
  rm -rf "$work"
}

describe_machine() {
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC').  Machine: $(nproc) cores," \
       "$(lscpu | sed -n 's/^Model name: *//p' | head -1), Linux $(uname -r)," \
       "images on $fs_desc." \
       "Per row: ${runtime} s (scale: ${scale_runtime} s), ${size_gib} GiB images," \
       "slow flush ${flush_delay_us} µs."
}

main() {
  parse_args "$@"
  check_deps
  fs_desc="$(df --output=fstype "$dir" | tail -1) ($dir)"
  [[ $fs_desc != tmpfs* ]] ||
    echo "bench: warning: $dir is tmpfs; flushes cost nothing there (use --dir=)" >&2
  work=$(mktemp -d "$dir/qcow2j-bench.XXXXXX")
  images=$work
  trap cleanup EXIT
  use_scratch_fs
  sock=$work/nbd.sock uri="nbd+unix:///?socket=$work/nbd.sock" counts=$work/counts
  shim=$work/flushcount.so
  cc -O2 -shared -fPIC -o "$shim" "$here/flushcount.c" -ldl
  echo "$csv_header" >"$out.csv"

  local row server
  for row in "${all_rows[@]}"; do
    [[ $row =~ $rows_re ]] || continue
    [[ $row != *@slow || $flush_delay_us != 0 ]] || continue
    echo "bench: $row" >&2
    for server in ${servers//,/ }; do
      measure "$row" "$server"
    done
  done
  python3 "$here/report.py" "$out.csv" "$(describe_machine)" | tee "$out.md"
}

main "$@"
