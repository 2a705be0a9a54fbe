/* nbdkit-qcow2j-plugin: notices, which a user must see without -v.
 *
 * nbdkit 1.32 has nbdkit_error, and nbdkit_debug, which prints only with
 * -v.  Some events are neither errors nor debugging: a dirty journal was
 * replayed, readonly=auto fell back to read-only, create=true kept an
 * existing image of another size.  They happen once, at startup, before
 * nbdkit forks into the background, so a notice goes where nbdkit's own
 * startup errors go: to stderr, or to syslog with --log=syslog.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

#include "qcow2j.h"

void
qcow2j_vnotice (const char *fs, va_list args)
{
  int saved_errno = errno;
  char msg[1024];

  vsnprintf (msg, sizeof msg, fs, args);
  if (qcow2j_cmdline_syslog ())
    syslog (LOG_NOTICE, "qcow2j: %s", msg);
  else
    fprintf (stderr, "nbdkit: qcow2j: notice: %s\n", msg);
  errno = saved_errno;
}

void
qcow2j_notice (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  qcow2j_vnotice (fs, args);
  va_end (args);
}
