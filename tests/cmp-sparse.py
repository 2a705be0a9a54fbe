#!/usr/bin/python3
# cmp-sparse.py A B: like cmp -s for two files of the same size, but only
# reads the parts where either file has data (SEEK_DATA/SEEK_HOLE), so
# large sparse files compare quickly.  On a difference prints the first
# differing offset and bytes and exits 1.
import os
import sys


def segments(fd, size):
    pos = 0
    while pos < size:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        h = os.lseek(fd, d, os.SEEK_HOLE)
        yield d, min(h, size)
        pos = h


def main():
    a, b = sys.argv[1:3]
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    sa, sb = os.fstat(fa).st_size, os.fstat(fb).st_size
    if sa != sb:
        print("sizes differ: %d %d" % (sa, sb))
        sys.exit(1)
    ranges = sorted(list(segments(fa, sa)) + list(segments(fb, sb)))
    merged = []
    for s, e in ranges:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    chunk = 4 << 20
    for s, e in merged:
        p = s
        while p < e:
            n = min(chunk, e - p)
            x, y = os.pread(fa, n, p), os.pread(fb, n, p)
            if x != y:
                i = next(k for k in range(min(len(x), len(y))) if x[k] != y[k])
                print("first difference at %#x: %s / %s" %
                      (p + i, x[i:i + 8].hex(' '), y[i:i + 8].hex(' ')))
                sys.exit(1)
            p += n
    sys.exit(0)


if __name__ == '__main__':
    main()
