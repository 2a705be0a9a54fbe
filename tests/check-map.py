#!/usr/bin/python3
# check-map.py REF.RAW QCOW2J-MAP QEMU-MAP.json
#
# Cross-check the base:allocation extents that qcow2j served against the
# real content of the image and against what qemu-img map finds:
#
#  1. qcow2j's extents cover [0, size of REF.RAW) exactly, in order, with
#     no gaps or overlaps;
#  2. every range qcow2j reports with the zero bit (NBD_STATE_ZERO = 2) set
#     is all zero bytes in REF.RAW (never claim zero where there is data);
#  3. every range qemu-img map reports with "data": false is reported with
#     the zero bit by qcow2j (find the holes qemu-img finds).
#
# QCOW2J-MAP is the output of 'nbdinfo --map --json' or, when the first
# non-blank character is not '[', of plain 'nbdinfo --map'
# ("offset length type description" per line).
#
# Zero checking uses SEEK_DATA/SEEK_HOLE on REF.RAW so that huge sparse
# references are cheap.  Exit status 0 if all good, 1 with diagnostics on
# stderr otherwise.

import json
import os
import sys

MAX_REPORT = 10


def load_qcow2j_map(path):
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith('['):
        return [(e['offset'], e['length'], e['type'])
                for e in json.loads(text)]
    out = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        out.append((int(fields[0]), int(fields[1]), int(fields[2])))
    return out


def load_qemu_map(path):
    with open(path) as f:
        return json.load(f)


def data_segments(fd, start, end):
    """Yield (off, len) of the non-hole segments of fd within [start, end)."""
    pos = start
    while pos < end:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:          # ENXIO: no more data
            return
        if d >= end:
            return
        h = os.lseek(fd, d, os.SEEK_HOLE)
        h = min(h, end)
        yield d, h - d
        pos = h


def first_nonzero(fd, start, end):
    """Return the offset of the first non-zero byte in [start, end) or None."""
    chunk = 1 << 20
    for off, length in data_segments(fd, start, end):
        p, stop = off, off + length
        while p < stop:
            n = min(chunk, stop - p)
            buf = os.pread(fd, n, p)
            if len(buf) != n:
                raise RuntimeError("short read of reference at %d" % p)
            if buf.count(0) != n:
                i = next(k for k, b in enumerate(buf) if b != 0)
                return p + i
            p += n
    return None


def fmt_range(off, length):
    return "[%#x, %#x) (%d bytes)" % (off, off + length, length)


def dump_maps(qmap, qemu):
    sys.stderr.write("--- qcow2j extents (offset length type) ---\n")
    for i, (o, l, t) in enumerate(qmap):
        if i >= 60:
            sys.stderr.write("... %d more\n" % (len(qmap) - i))
            break
        sys.stderr.write("  %#14x %#14x %d\n" % (o, l, t))
    sys.stderr.write("--- qemu-img map (start length data zero depth) ---\n")
    for i, e in enumerate(qemu):
        if i >= 60:
            sys.stderr.write("... %d more\n" % (len(qemu) - i))
            break
        sys.stderr.write("  %#14x %#14x data=%s zero=%s depth=%s\n" %
                         (e['start'], e['length'], e['data'], e['zero'],
                          e.get('depth')))


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: check-map.py REF.RAW QCOW2J-MAP QEMU-MAP.json")
    ref, qpath, qemupath = sys.argv[1:]
    qmap = load_qcow2j_map(qpath)
    qemu = load_qemu_map(qemupath)
    errors = []

    fd = os.open(ref, os.O_RDONLY)
    size = os.fstat(fd).st_size

    # 1. coverage
    pos = 0
    for (o, l, t) in qmap:
        if o != pos:
            errors.append("qcow2j extents: expected an extent at %#x, got "
                          "one at %#x" % (pos, o))
            break
        if l <= 0:
            errors.append("qcow2j extents: empty/negative extent at %#x" % o)
            break
        pos = o + l
    else:
        if pos != size:
            errors.append("qcow2j extents end at %#x but the disk is %#x "
                          "bytes" % (pos, size))

    # 2. zero claims must be true
    bad = 0
    for (o, l, t) in qmap:
        if not (t & 2):
            continue
        end = min(o + l, size)
        nz = first_nonzero(fd, o, end)
        if nz is not None:
            bad += 1
            if bad <= MAX_REPORT:
                b = os.pread(fd, 16, nz)
                errors.append("qcow2j reports %s as zero (type %d) but the "
                              "reference has data at %#x: %s" %
                              (fmt_range(o, l), t, nz, b.hex(' ')))

    # 3. qemu-img holes must be zero in qcow2j
    zero_ranges = [(o, o + l) for (o, l, t) in qmap if t & 2]
    bad = 0
    j = 0
    for e in qemu:
        if e['data']:
            continue
        s, end = e['start'], e['start'] + e['length']
        # advance j to the first zero range that may overlap
        while j < len(zero_ranges) and zero_ranges[j][1] <= s:
            j += 1
        k = j
        p = s
        missing = []
        while p < end:
            while k < len(zero_ranges) and zero_ranges[k][1] <= p:
                k += 1
            if k < len(zero_ranges) and zero_ranges[k][0] <= p:
                p = zero_ranges[k][1]
                continue
            nxt = end
            if k < len(zero_ranges):
                nxt = min(end, zero_ranges[k][0])
            missing.append((p, nxt - p))
            p = nxt
        for (mo, ml) in missing:
            bad += 1
            if bad <= MAX_REPORT:
                errors.append("qemu-img map reports %s as a hole (data: "
                              "false, zero: %s, depth %s) but qcow2j does not "
                              "report %s as zero" %
                              (fmt_range(s, e['length']), e['zero'],
                               e.get('depth'), fmt_range(mo, ml)))
    os.close(fd)

    if errors:
        for m in errors:
            sys.stderr.write("check-map: %s\n" % m)
        dump_maps(qmap, qemu)
        sys.exit(1)


if __name__ == '__main__':
    main()
