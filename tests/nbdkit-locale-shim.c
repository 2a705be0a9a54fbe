/* qcow2j tests: preloaded into nbdkit, after a sanitizer's runtime, in
 * the sanitizer runs of the test suite (functions.sh).
 *
 * With libasan preloaded into Debian's nbdkit 1.32, glibc's locale lock
 * is left with a broken reader count, and nbdkit hangs at exit in
 * p11-kit's destructor, which calls freelocale (seen on every refused
 * start: the error is printed, then the process never exits; the file
 * plugin does the same).  Nothing of qcow2j runs there.  Letting
 * freelocale leak the locale (the process is exiting anyway) lets such
 * runs end.
 */
#include <config.h>

#include <locale.h>

void
freelocale (locale_t locale)
{
  (void) locale;
}
