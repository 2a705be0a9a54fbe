#!/usr/bin/env bash
# lib/ calls in one direction: each file calls only files of its own layer
# or the layers below it, as the table at the top of lib/image-internal.h
# says, and no two files call each other (read from the built objects).
source "$SRCDIR/tests/functions.sh"

objs="$BUILDDIR/lib/.libs"
python3 "$SRCDIR/tests/check-layers.py" "$SRCDIR/lib" "$objs"

# The check itself must catch an upward call: put write.c in the lowest
# layer of a copy of the table, and it must name write.c's calls.
mkdir "$tmp/lib"
cp "$SRCDIR"/lib/*.c "$tmp/lib/"
sed -e '/form layers/,/Lock order/ s/\bwrite\.c, //' \
    -e '/form layers/,/Lock order/ s/\(\*   below  *\)/\1write.c, /' \
    "$SRCDIR/lib/image-internal.h" > "$tmp/lib/image-internal.h"
grep -q 'below  *write\.c' "$tmp/lib/image-internal.h"
if python3 "$SRCDIR/tests/check-layers.py" "$tmp/lib" "$objs" 2>"$tmp/err"; then
    echo "$0: an upward call from write.c was not reported"
    exit 1
fi
grep -q '^check-layers: write\.c (below) calls .* a layer above' "$tmp/err"
