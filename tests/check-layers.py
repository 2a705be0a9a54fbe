#!/usr/bin/env python3
"""Check that lib/'s files call each other in one direction.

The layer table at the top of lib/image-internal.h is the rule: a file
may call functions of files in its own layer or the layers below it, and
the graph "X.c calls a function defined in Y.c" must have no cycle.  The
graph is read from the built objects' symbol tables (nm), so it is the
real call graph, inline helpers of headers included.

  check-layers.py SRCDIR OBJDIR     exit 1, naming each breach"""
import glob
import os
import re
import subprocess
import sys


def layers(srcdir):
    """[(layer name, [file stems])], top layer first."""
    text = open(os.path.join(srcdir, "image-internal.h")).read()
    block = text.split("form layers", 1)[1].split("Lock order", 1)[0]
    order, files = [], None
    for line in block.splitlines():
        line = line.lstrip(" */")
        m = re.match(r"(\S+(?: \S+)?)\s{2,}(.*)", line)
        if m:
            files = []
            order.append((m.group(1), files))
            line = m.group(2)
        if files is not None:
            files += re.findall(r"([\w*-]+)\.c\b", line)
    return order


def symbols(objdir):
    """{stem: (defined, undefined)} from each object's symbol table."""
    out = {}
    for path in glob.glob(os.path.join(objdir, "libqcow2j_la-*.o")):
        stem = os.path.basename(path)[len("libqcow2j_la-"):-2]
        defined, undefined = set(), set()
        nm = subprocess.run(["nm", path], capture_output=True, text=True,
                            check=True).stdout
        for line in nm.splitlines():
            f = line.split()
            if len(f) == 2 and f[0] == "U":
                undefined.add(f[1])
            elif len(f) == 3 and f[1] in "TDBR":
                defined.add(f[2])
        out[stem] = (defined, undefined)
    return out


def main(srcdir, objdir):
    order = layers(srcdir)
    rank = {}
    for i, (name, pats) in enumerate(order):
        for pat in pats:
            for path in glob.glob(os.path.join(srcdir, pat + ".c")):
                rank[os.path.basename(path)[:-2]] = (len(order) - i, name)
    syms = symbols(objdir)
    sources = sorted(os.path.basename(p)[:-2]
                     for p in glob.glob(os.path.join(srcdir, "*.c")))
    bad = [f"{s}.c is in no layer of image-internal.h"
           for s in sources if s not in rank]
    bad += [f"{s}.c has no object in {objdir}"
            for s in sources if s not in syms]
    if bad:
        return report(bad)
    owner = {sym: s for s in sources for sym in syms[s][0]}
    deps = {s: sorted({owner[u] for u in syms[s][1] if u in owner} - {s})
            for s in sources}
    for s in sources:
        for d in deps[s]:
            if rank[d][0] > rank[s][0]:
                calls = sorted(u for u in syms[s][1] if owner.get(u) == d)
                bad.append(f"{s}.c ({rank[s][1]}) calls {d}.c "
                           f"({rank[d][1]}, a layer above): "
                           + ", ".join(calls))
    state = {}

    def visit(node, path):
        state[node] = "open"
        for d in deps[node]:
            if state.get(d) == "open":
                bad.append("cycle: " + " -> ".join(path[path.index(d):]
                                                   + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[node] = "done"

    for s in sources:
        if s not in state:
            visit(s, [s])
    return report(bad)


def report(bad):
    for b in bad:
        print("check-layers: " + b, file=sys.stderr)
    return 1 if bad else 0


sys.exit(main(sys.argv[1], sys.argv[2]))
