#!/usr/bin/env python3
"""Connections racing over the same few clusters, and a checker of what
every read returned.

  check-races.py URI OLD_SIZE OFF SPAN CS NCONN NOPS SEED LOGDIR
  check-races.py old FILE SIZE        write the old content the checks expect
  check-races.py at-rest RAW LOGDIR   the image at rest (converted to RAW)
                                      must hold what the final read saw

NCONN processes, each with its own connection, make NOPS random requests
on the clusters of [OFF, OFF+SPAN): reads (a cluster, across a cluster
boundary, a few sectors), writes of a few sectors, zeroes and trims of
whole clusters and of parts (with and without NO_HOLE), flushes.  Every
sector written holds (tag, sector number) repeated, a tag per write; the
old content (the first OLD_SIZE bytes of the disk) holds (OLD_TAG,
sector), the rest zeroes.  Each request is logged with when it started
and ended (CLOCK_MONOTONIC); each read with the value it found in each
sector.

Then each sector of each read is checked as a register: a value is
allowed if the request that put it there started before the read ended
and no write or zero of that sector happened entirely between that
request's end and the read's start.  A trim allows zeroes or what was
there.  NBD promises no atomicity inside a sector, so a sector mixing
allowed values (16-byte pieces each allowed) is counted, not failed.
Delayed copy-on-write (docs/journal-format.md 8.6) is what this attacks:
sectors still owed their old content must read as it (D3), whole-cluster
zeroes and trims drop what is owed while reads race them (D5), and a
fill must never write over client data.

A final read of the whole span, after every process ended, goes to
LOGDIR/final for the caller to compare with the image at rest.
Exit 0 if no read saw a value it could not have, 1 otherwise."""
import multiprocessing as mp
import os
import pickle
import random
import struct
import sys
import time

import nbd

OLD_TAG = 0xBACC0000BACC0000
SEC = 512


def pattern(tag, s, n):
    return b''.join(struct.pack('<QQ', tag, s + i) * 32 for i in range(n))


def classify(buf, s0):
    """Per sector: its tag, 0 for zeroes, a tuple of tags for a torn
    sector, or a 'garbage:' string."""
    out = []
    for i in range(len(buf) // SEC):
        b = buf[i * SEC:(i + 1) * SEC]
        tag, sec = struct.unpack_from('<QQ', b)
        if b == bytes(SEC):
            out.append(0)
        elif sec == s0 + i and b == b[:16] * 32:
            out.append(tag)
        else:
            parts = set()
            for j in range(0, SEC, 16):
                t, q = struct.unpack_from('<QQ', b, j)
                if t == 0 and q == 0:
                    parts.add(0)
                elif q == s0 + i:
                    parts.add(t)
                else:
                    parts = None
                    break
            out.append(tuple(sorted(parts)) if parts
                       else 'garbage:' + b[:64].hex())
    return out


def some_sectors(rng, c, cs):
    n = SEC * rng.randrange(1, min(16, cs // SEC) + 1)
    return c + SEC * rng.randrange((cs - n) // SEC + 1), n


def part_or_whole(rng, c, cs):
    if rng.randrange(3) == 0 and cs > SEC:
        n = SEC * rng.randrange(1, cs // SEC)
        return c + SEC * rng.randrange((cs - n) // SEC + 1), n
    return c, cs


def worker(uri, off, span, cs, nops, seed, me, logdir):
    rng = random.Random(seed * 1000 + me)
    h = nbd.NBD()
    h.connect_uri(uri)
    log = []
    tags = 0
    for _ in range(nops):
        r = rng.random()
        c = off + rng.randrange(span // cs) * cs
        t0 = time.monotonic_ns()
        if r < 0.40:
            kind = rng.randrange(3)
            if kind == 0:
                a, n = c, cs
            elif kind == 1 and c + cs < off + span:
                a, n = c + max(cs // 2 // SEC, 1) * SEC, cs
            else:
                a, n = some_sectors(rng, c, cs)
            buf = h.pread(n, a)
            log.append(('r', a // SEC, n // SEC, t0, time.monotonic_ns(),
                        classify(buf, a // SEC)))
        elif r < 0.75:
            a, n = some_sectors(rng, c, cs)
            tags += 1
            tag = (me + 1) << 48 | tags
            h.pwrite(pattern(tag, a // SEC, n // SEC), a)
            log.append(('w', a // SEC, n // SEC, t0, time.monotonic_ns(), tag))
        elif r < 0.85:
            a, n = part_or_whole(rng, c, cs)
            h.zero(n, a, 0 if rng.randrange(2) else nbd.CMD_FLAG_NO_HOLE)
            log.append(('z', a // SEC, n // SEC, t0, time.monotonic_ns(), 0))
        elif r < 0.93:
            a, n = part_or_whole(rng, c, cs)
            h.trim(n, a)
            log.append(('t', a // SEC, n // SEC, t0, time.monotonic_ns(), 0))
        else:
            h.flush()
    h.shutdown()
    with open(os.path.join(logdir, 'log%d' % me), 'wb') as f:
        pickle.dump(log, f)


def check(logs, old_size, final):
    """The number of sectors read with a value they could not hold."""
    # Per sector: (start, end, value, supersedes) of what changed it.
    history = {}
    before = -(1 << 62)

    def changes(s):
        if s not in history:
            old = OLD_TAG if s * SEC < old_size else 0
            history[s] = [(before, before, old, True)]
        return history[s]

    for log in logs:
        for op in log:
            if op[0] != 'r':
                kind, s0, n, t0, t1, v = op
                for s in range(s0, s0 + n):
                    changes(s).append((t0, t1, v, kind != 't'))
    bad = torn = 0
    reads = [op for log in logs for op in log if op[0] == 'r'] + final
    for _, s0, n, r0, r1, vals in reads:
        for i, seen in enumerate(vals):
            if isinstance(seen, tuple):
                torn += 1
            for got in seen if isinstance(seen, tuple) else (seen,):
                s = s0 + i
                ops = changes(s)
                ok = any(v == got and w0 < r1 and
                         not any(sup and x0 > w1 and x1 < r0
                                 for x0, x1, _, sup in ops)
                         for w0, w1, v, _ in ops)
                if not ok:
                    bad += 1
                    if bad <= 10:
                        print('check-races: read of [%d, +%d) sectors at '
                              '%d..%d ns: sector %d (byte %#x) holds %s; the '
                              'last changes of it begun before the read '
                              'ended: %s' %
                              (s0, n, r0, r1, s, s * SEC,
                               hex(got) if isinstance(got, int) else got,
                               [(a, b, hex(v), sup)
                                for a, b, v, sup in sorted(ops)
                                if a < r1][-8:]))
    if torn:
        print('check-races: %d torn sectors seen (allowed)' % torn)
    return bad


def write_old(path, size):
    with open(path, 'wb') as f:
        for s in range(size // SEC):
            f.write(struct.pack('<QQ', OLD_TAG, s) * 32)


def check_at_rest(raw, logdir):
    rest = open(raw, 'rb').read()
    for _, s0, _, _, _, vals in pickle.load(open(os.path.join(logdir, 'final'),
                                                 'rb')):
        for i, v in enumerate(vals):
            b = rest[(s0 + i) * SEC:(s0 + i + 1) * SEC]
            tag = 0 if b == bytes(SEC) else struct.unpack_from('<Q', b)[0]
            if not isinstance(v, int) or tag != v:
                sys.exit('check-races: at rest, sector %d holds %#x, the last '
                         'read saw %s' % (s0 + i, tag, v))


def main():
    if sys.argv[1] == 'old':
        return write_old(sys.argv[2], int(sys.argv[3]))
    if sys.argv[1] == 'at-rest':
        return check_at_rest(sys.argv[2], sys.argv[3])
    uri = sys.argv[1]
    old_size, off, span, cs, nconn, nops, seed = map(int, sys.argv[2:9])
    logdir = sys.argv[9]
    procs = [mp.Process(target=worker,
                        args=(uri, off, span, cs, nops, seed, me, logdir))
             for me in range(nconn)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        sys.exit('check-races: a connection failed')
    logs = [pickle.load(open(os.path.join(logdir, 'log%d' % me), 'rb'))
            for me in range(nconn)]
    h = nbd.NBD()
    h.connect_uri(uri)
    final = []
    for a in range(off, off + span, cs):
        t0 = time.monotonic_ns()
        buf = h.pread(cs, a)
        final.append(('r', a // SEC, cs // SEC, t0, time.monotonic_ns(),
                      classify(buf, a // SEC)))
    h.shutdown()
    with open(os.path.join(logdir, 'final'), 'wb') as f:
        pickle.dump(final, f)
    bad = check(logs, old_size, final)
    print('check-races: seed %d: %d requests, %d bad sectors' %
          (seed, sum(map(len, logs)), bad))
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
