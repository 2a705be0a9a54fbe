#!/usr/bin/env bash
# make install puts the plugin where nbdkit finds it by its short name,
# the man page where man finds nbdkit's own, and the journal's format
# specification with the docs; make uninstall removes every file it put
# there.  Both into a staging root (DESTDIR) and into a temporary prefix.
source "$SRCDIR/tests/functions.sh"
requires make --version
: "${BUILDDIR:?run the tests with make check}"

# mk ARGS...: make in the build tree, on its own (not as part of the
# make check that runs this test).
mk ()
{
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$BUILDDIR" "$@" \
        >"$tmp/make.log" 2>&1 || { cat "$tmp/make.log" >&2; fail "make $*"; }
}
# installed ROOT NAME: the one file called NAME under ROOT.
installed ()
{
    local found
    found=$(find "$1" -name "$2" ! -type d)
    [ -n "$found" ] || fail "make install did not install $2"
    [ "$(wc -l <<<"$found")" = 1 ] || fail "$2 installed twice: $found"
    echo "$found"
}
# nothing_left ROOT: no file (only empty directories) under ROOT.
nothing_left ()
{
    local left
    left=$(find "$1" ! -type d)
    [ -z "$left" ] || fail "make uninstall left: $left"
}

# 1. A staging root, with the configured directories.
root=$tmp/root
mk install DESTDIR="$root"
plugin=$(installed "$root" nbdkit-qcow2j-plugin.so)
man=$(installed "$root" nbdkit-qcow2j-plugin.1)
doc=$(installed "$root" journal-format.md)
[ -z "$(find "$root" -name '*.la')" ] || fail "a libtool .la file was installed"
[[ $man == */man1/nbdkit-qcow2j-plugin.1 ]] || fail "man page at $man"
[[ $doc == */doc/*/journal-format.md ]] || fail "journal format at $doc"
nbdkit "$plugin" --dump-plugin | grep -q '^qcow2j_journal=yes' ||
    fail "nbdkit cannot load the installed plugin"
# Installed in nbdkit's plugin directory, the man page goes under
# nbdkit's prefix, where man looks for nbdkit's own pages.
nbdkit_plugindir=$(pkg-config --variable=plugindir nbdkit 2>/dev/null || :)
nbdkit_prefix=$(pkg-config --variable=prefix nbdkit 2>/dev/null || :)
if [ -n "$nbdkit_plugindir" ] && [ "${plugin%/*}" = "$root$nbdkit_plugindir" ]; then
    [ "${man%/man1/*}" = "$root$nbdkit_prefix/share/man" ] ||
        fail "plugin in nbdkit's directory, but man page at ${man#"$root"}"
    [ "${doc%/doc/*}" = "$root$nbdkit_prefix/share" ] ||
        fail "plugin in nbdkit's directory, but docs at ${doc#"$root"}"
fi
mk uninstall DESTDIR="$root"
nothing_left "$root"

# 2. A temporary prefix.
prefix=$tmp/prefix
mk install prefix="$prefix" plugindir="$prefix/lib/nbdkit/plugins"
plugin=$(installed "$prefix" nbdkit-qcow2j-plugin.so)
[ "$plugin" = "$prefix/lib/nbdkit/plugins/nbdkit-qcow2j-plugin.so" ] ||
    fail "plugin at $plugin"
man=$(installed "$prefix" nbdkit-qcow2j-plugin.1)
[ "$man" = "$prefix/share/man/man1/nbdkit-qcow2j-plugin.1" ] || fail "man page at $man"
installed "$prefix" journal-format.md >/dev/null
MANPATH="$prefix/share/man" man -w nbdkit-qcow2j-plugin >/dev/null 2>&1 ||
    ! command -v man >/dev/null || fail "man does not find the page under $prefix"
mk uninstall prefix="$prefix" plugindir="$prefix/lib/nbdkit/plugins"
nothing_left "$prefix"
