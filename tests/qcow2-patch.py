#!/usr/bin/python3
"""qcow2-patch.py: poke fields of a qcow2 image in place, for hostile-input tests.

Usage: qcow2-patch.py IMAGE COMMAND ARGS...

  get FIELD               print a header field (decimal)
  set FIELD VALUE         write a header field
  fields                  print every header field
  l1 I [VALUE]            print / set L1 entry I (raw 64-bit)
  l2 I J [VALUE]          print / set the first 64 bits of entry J of the L2
                          table that L1 entry I points to
  l2bitmap I J [VALUE]    print / set the subcluster bitmap (second 64 bits)
                          of an extended-L2 entry
  l2-offset I             print the host offset of the L2 table of L1 entry I
  ext-list                print the header extensions: index type length offset
  ext-append TYPE LENGTH [HEXDATA]
                          add a header extension in place of the end marker;
                          LENGTH is written as given even if it disagrees with
                          HEXDATA (so it can lie); the end marker is rewritten
                          after the data when it fits in the first cluster
  ext-set N FIELD VALUE   set 'type' or 'length' of extension N (from ext-list)
  backing-name NAME       overwrite the backing file name in place at
                          backing_file_offset and set backing_file_size
  poke OFFSET HEXDATA     write raw bytes
  peek OFFSET LENGTH      print raw bytes as hex
  truncate SIZE           truncate the file to SIZE bytes
  flip SEED MIN MAX START:END...
                          XOR MIN..MAX random bytes (chosen with SEED) at random
                          offsets in the given byte ranges with random non-zero
                          values; prints what it changed

All numbers accept Python integer syntax (0x..., 0o..., 1_000, decimal) and
also 2**N.  Multi-byte fields are big-endian, as in QEMU's docs/interop/qcow2.txt,
whose field names are used here.
"""

import os
import random
import struct
import sys

# name: (offset, size) from docs/interop/qcow2.txt
FIELDS = {
    "magic": (0, 4),
    "version": (4, 4),
    "backing_file_offset": (8, 8),
    "backing_file_size": (16, 4),
    "cluster_bits": (20, 4),
    "size": (24, 8),
    "crypt_method": (32, 4),
    "l1_size": (36, 4),
    "l1_table_offset": (40, 8),
    "refcount_table_offset": (48, 8),
    "refcount_table_clusters": (56, 4),
    "nb_snapshots": (60, 4),
    "snapshots_offset": (64, 8),
    # version 3 only from here on
    "incompatible_features": (72, 8),
    "compatible_features": (80, 8),
    "autoclear_features": (88, 8),
    "refcount_order": (96, 4),
    "header_length": (100, 4),
    "compression_type": (104, 1),
}

FMT = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}
INCOMPAT_EXTL2 = 1 << 4
L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00


def die(msg):
    sys.stderr.write("qcow2-patch.py: %s\n" % msg)
    sys.exit(2)


def num(s):
    s = s.strip()
    if "**" in s:
        a, b = s.split("**", 1)
        return num(a) ** num(b)
    try:
        return int(s, 0)
    except ValueError:
        die("not a number: %r" % s)


def read_at(f, off, n):
    f.seek(off)
    b = f.read(n)
    if len(b) != n:
        die("short read of %d bytes at offset %d" % (n, off))
    return b


def write_at(f, off, b):
    f.seek(off)
    f.write(b)


def get_field(f, name):
    if name not in FIELDS:
        die("unknown field %r (known: %s)" % (name, ", ".join(FIELDS)))
    off, size = FIELDS[name]
    return struct.unpack(FMT[size], read_at(f, off, size))[0]


def set_field(f, name, value):
    if name not in FIELDS:
        die("unknown field %r (known: %s)" % (name, ", ".join(FIELDS)))
    off, size = FIELDS[name]
    value &= (1 << (8 * size)) - 1
    write_at(f, off, struct.pack(FMT[size], value))


def cluster_size(f):
    cb = get_field(f, "cluster_bits")
    if not 9 <= cb <= 21:
        die("cluster_bits %d is out of range for this tool" % cb)
    return 1 << cb


def extended_l2(f):
    return get_field(f, "version") >= 3 and \
        bool(get_field(f, "incompatible_features") & INCOMPAT_EXTL2)


def l1_entry_offset(f, i):
    l1_size = get_field(f, "l1_size")
    if not 0 <= i < l1_size:
        die("L1 index %d out of range (l1_size %d)" % (i, l1_size))
    return get_field(f, "l1_table_offset") + 8 * i


def l2_table_offset(f, i):
    e = struct.unpack(">Q", read_at(f, l1_entry_offset(f, i), 8))[0]
    off = e & L1_OFFSET_MASK
    if off == 0:
        die("L1 entry %d is unallocated" % i)
    return off


def l2_entry_offset(f, i, j):
    esize = 16 if extended_l2(f) else 8
    n = cluster_size(f) // esize
    if not 0 <= j < n:
        die("L2 index %d out of range (%d entries per table)" % (j, n))
    return l2_table_offset(f, i) + esize * j


def header_ext_start(f):
    if get_field(f, "version") >= 3:
        return get_field(f, "header_length")
    return 72


def ext_list(f):
    """[(index, type, length, offset-of-ext-header)] up to and including the end marker."""
    cs = cluster_size(f)
    off = header_ext_start(f)
    res = []
    while off + 8 <= cs:
        t, ln = struct.unpack(">II", read_at(f, off, 8))
        res.append((len(res), t, ln, off))
        if t == 0:
            break
        off += 8 + ((ln + 7) & ~7)
    return res


def u64_cmd(f, off, args):
    if args:
        write_at(f, off, struct.pack(">Q", num(args[0]) & (2**64 - 1)))
    else:
        print("0x%016x" % struct.unpack(">Q", read_at(f, off, 8))[0])


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    path, cmd, args = argv[1], argv[2], argv[3:]

    def need(n, m=None):
        m = n if m is None else m
        if not n <= len(args) <= m:
            die("%s: wrong number of arguments" % cmd)

    if cmd == "truncate":
        need(1)
        os.truncate(path, num(args[0]))
        return

    with open(path, "r+b") as f:
        if cmd == "get":
            need(1)
            print(get_field(f, args[0]))
        elif cmd == "set":
            need(2)
            set_field(f, args[0], num(args[1]))
        elif cmd == "fields":
            need(0)
            for name in FIELDS:
                print("%s %d" % (name, get_field(f, name)))
        elif cmd == "l1":
            need(1, 2)
            u64_cmd(f, l1_entry_offset(f, num(args[0])), args[1:])
        elif cmd == "l2":
            need(2, 3)
            u64_cmd(f, l2_entry_offset(f, num(args[0]), num(args[1])), args[2:])
        elif cmd == "l2bitmap":
            need(2, 3)
            if not extended_l2(f):
                die("not an extended-L2 image")
            u64_cmd(f, l2_entry_offset(f, num(args[0]), num(args[1])) + 8, args[2:])
        elif cmd == "l2-offset":
            need(1)
            print(l2_table_offset(f, num(args[0])))
        elif cmd == "ext-list":
            need(0)
            for idx, t, ln, off in ext_list(f):
                print("%d 0x%08x %d %d" % (idx, t, ln, off))
        elif cmd == "ext-append":
            need(2, 3)
            t, ln = num(args[0]), num(args[1])
            data = bytes.fromhex(args[2]) if len(args) > 2 else b""
            exts = ext_list(f)
            if not exts or exts[-1][1] != 0:
                die("no end-of-extensions marker found")
            off = exts[-1][3]
            blob = struct.pack(">II", t, ln) + data
            blob += b"\0" * (-len(blob) % 8)
            cs = cluster_size(f)
            if off + len(blob) > cs:
                die("extension data does not fit in the first cluster")
            write_at(f, off, blob)
            if off + len(blob) + 8 <= cs:
                write_at(f, off + len(blob), b"\0" * 8)
        elif cmd == "ext-set":
            need(3)
            n, field, v = num(args[0]), args[1], num(args[2])
            exts = ext_list(f)
            if not 0 <= n < len(exts):
                die("no extension %d" % n)
            if field not in ("type", "length"):
                die("ext-set: field must be 'type' or 'length'")
            write_at(f, exts[n][3] + (0 if field == "type" else 4),
                     struct.pack(">I", v & 0xFFFFFFFF))
        elif cmd == "backing-name":
            need(1)
            name = args[0].encode()
            off = get_field(f, "backing_file_offset")
            if off == 0:
                die("image has no backing file")
            write_at(f, off, name)
            set_field(f, "backing_file_size", len(name))
        elif cmd == "poke":
            need(2)
            write_at(f, num(args[0]), bytes.fromhex(args[1]))
        elif cmd == "peek":
            need(2)
            print(read_at(f, num(args[0]), num(args[1])).hex())
        elif cmd == "flip":
            if len(args) < 4:
                die("flip SEED MIN MAX START:END...")
            rng = random.Random(num(args[0]))
            lo, hi = num(args[1]), num(args[2])
            ranges = []
            for r in args[3:]:
                a, b = r.split(":")
                a, b = num(a), num(b)
                if b > a:
                    ranges.append((a, b))
            if not ranges:
                die("flip: no non-empty range")
            total = sum(b - a for a, b in ranges)
            out = []
            for _ in range(rng.randint(lo, hi)):
                k = rng.randrange(total)
                for a, b in ranges:
                    if k < b - a:
                        off = a + k
                        break
                    k -= b - a
                x = rng.randrange(1, 256)
                old = read_at(f, off, 1)[0]
                write_at(f, off, bytes([old ^ x]))
                out.append("0x%x:%02x->%02x" % (off, old, old ^ x))
            print(" ".join(out))
        else:
            die("unknown command %r" % cmd)


if __name__ == "__main__":
    main(sys.argv)
