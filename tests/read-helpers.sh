# Sourced (after functions.sh) by the tests/test-read-*.sh tests.
#
#   qcow2j_run IMG CMD [PARAM...]  serve IMG through qcow2j and run the
#                                  shell command CMD with $uri set
#   check_image IMG [PARAM...]     compare everything qcow2j serves for IMG
#                                  (content and extents) with qemu-img
#                                  (CHECK_REQUEST_SIZE: request size of
#                                  the parallel copy, default 4096)
#   qio IMG CMD...                 run qemu-io commands on a qcow2 image
#   scribble IMG CLUSTER_SIZE      a standard mix of writes, zero writes and
#                                  discards at cluster-aligned and unaligned
#                                  offsets
#
# For developing the tests without a built plugin, QCOW2J_STANDIN=qemu-nbd
# serves with qemu-nbd instead (set QCOW2J to anything, e.g. /dev/null).

requires qemu-img --version
requires qemu-io --version
requires nbdcopy --version
requires nbdinfo --version
requires python3 -c 'import os; os.SEEK_DATA'

CHECK_MAP="$SRCDIR/tests/check-map.py"


# Does this nbdinfo have --map --json?  (libnbd >= 1.8 does.)  If not,
# check-map.py parses the plain "offset length type description" output.
if nbdinfo --help 2>&1 | grep -c -- '--map.*--json' >/dev/null; then
    _nbdinfo_map_json=--json
else
    _nbdinfo_map_json=
fi

# qcow2j_run IMG CMD [PARAM...]
qcow2j_run ()
{
    local img=$1 cmd=$2
    shift 2
    if [ "${QCOW2J_STANDIN:-}" = qemu-nbd ]; then
        local sock pid rc=0 fmt=qcow2
        sock=$(mktemp -u "$tmp/standin.XXXXXX")
        case "$(qemu-img info --output=json "$img" 2>/dev/null |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])' 2>/dev/null)" in
            raw) fmt=raw ;;
        esac
        qemu-nbd -r -t --shared=0 -f "$fmt" -k "$sock" "$img" &
        pid=$!
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
        uri="nbd+unix:///?socket=$sock" bash -c "$cmd" || rc=$?
        kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
        return $rc
    fi
    nbdkit -U - "$QCOW2J" file="$img" "$@" --run "$cmd"
}

# qio IMG CMD...: qemu-io -c CMD ... on IMG (format probed), quietly.
qio ()
{
    local img=$1 c args=() out
    shift
    for c in "$@"; do args+=(-c "$c"); done
    if ! out=$(qemu-io "${args[@]}" "$img" 2>&1); then
        echo "$out" >&2
        fail "qemu-io on $img failed: $*"
    fi
}

# scribble IMG CS: writes at cluster-aligned and unaligned offsets of a
# qcow2 image whose cluster size is CS, covering the first ~12 clusters
# and the last cluster; the image must be at least 16*CS bytes.
scribble ()
{
    local img=$1 cs=$2 size
    size=$(qemu-img info --output=json "$img" |
               python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    qio "$img" \
        "write -P 0x11 0 $cs" \
        "write -P 0x22 $((cs + 512)) 1024" \
        "write -P 0x33 $((3*cs - 1000)) 2000" \
        "write -P 0x44 $((4*cs)) $((2*cs))" \
        "write -z $((5*cs)) $((cs / 2))" \
        "write -P 0x55 $((7*cs + 3)) 7" \
        "write -z -u $((8*cs)) $cs" \
        "write -P 0x66 $((9*cs)) $((2*cs))" \
        "discard $((9*cs)) $cs" \
        "write -z $((10*cs + 512)) 512" \
        "write -P 0x77 $((12*cs)) $cs" \
        "write -z -u $((12*cs)) $cs" \
        "write -P 0x88 $((size - 512)) 512" \
        "write -P 0x99 $((size - cs - 100)) 200"
}

# image_size IMG: virtual size in bytes.
image_size ()
{
    qemu-img info --output=json "$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'
}

# check_image IMG [PARAM...]: qcow2j must serve exactly what qemu-img reads,
# and its extents must be consistent with the data and with qemu-img map.
# Serving must not change a byte of IMG.
# qemu-img runs before the image is served, so locks don't interfere.
check_image ()
{
    local img=$1
    shift
    local d="$tmp/check" label rs cmd sha_before
    label="${img#"$tmp"/}${*:+ ($*)}"
    rm -rf "$d"; mkdir -p "$d"

    qemu-img convert -O raw "$img" "$d/ref.raw" ||
        fail "$label: qemu-img convert failed"
    qemu-img map --output=json "$img" > "$d/qemu-map.json" ||
        fail "$label: qemu-img map failed"

    # Small requests so that many reads fall inside one cluster and are
    # spread across connections and in-flight requests.  Tests may raise it
    # (e.g. for 2M compressed clusters) with CHECK_REQUEST_SIZE.
    rs=${CHECK_REQUEST_SIZE:-4096}
    printf -v cmd '%s && %s && %s' \
        "nbdcopy \"\$uri\" $(printf %q "$d/out.raw")" \
        "nbdcopy --connections=4 --requests=16 --request-size=$rs --no-extents \"\$uri\" $(printf %q "$d/out4.raw")" \
        "nbdinfo --map $_nbdinfo_map_json \"\$uri\" > $(printf %q "$d/map")"
    sha_before=$(sha256sum < "$img")
    if ! qcow2j_run "$img" "$cmd" "$@" 2> "$d/stderr"; then
        cat "$d/stderr" >&2
        fail "$label: serving through qcow2j failed"
    fi
    if [ "$(sha256sum < "$img")" != "$sha_before" ]; then
        fail "$label: serving read-only modified the image file"
    fi

    _cmp_raw "$label" "$d/ref.raw" "$d/out.raw" "nbdcopy (using extents)"
    _cmp_raw "$label" "$d/ref.raw" "$d/out4.raw" \
             "nbdcopy --connections=4 --request-size=$rs --no-extents"
    if ! python3 "$CHECK_MAP" "$d/ref.raw" "$d/map" "$d/qemu-map.json"; then
        fail "$label: extents check failed"
    fi
    echo "ok: $label"
}

# _cmp_raw LABEL REF OUT HOW
_cmp_raw ()
{
    local label=$1 ref=$2 out=$3 how=$4
    local rsz osz
    rsz=$(stat -c %s "$ref"); osz=$(stat -c %s "$out")
    if [ "$rsz" != "$osz" ]; then
        fail "$label: $how: size $osz, the reference is $rsz bytes"
    fi
    if [ "$rsz" -gt $((64 << 20)) ]; then
        # Large, sparse files: compare only where either has data.
        if ! python3 "$SRCDIR/tests/cmp-sparse.py" "$ref" "$out" >&2; then
            fail "$label: $how: content mismatch"
        fi
    elif ! cmp -s "$ref" "$out"; then
        echo "$label: $how: content differs from the reference;" \
             "first differing bytes (offset: ref out, octal):" >&2
        { cmp -l "$ref" "$out" 2>&1 | head -n 8 |
              awk '{ printf "  %#x: %s %s\n", $1 - 1, $2, $3 }' >&2; } || :
        fail "$label: $how: content mismatch"
    fi
}
