/* qcow2j lib: error and debug reporting (see log.h for why it is pluggable). */
#include <config.h>

#include <errno.h>
#include <stdio.h>

#include "log.h"

bool qlog_debug_map;

static void
stderr_handler (const char *fs, va_list args)
{
  fprintf (stderr, "qcow2j: ");
  vfprintf (stderr, fs, args);
  fputc ('\n', stderr);
}

static qlog_handler error_handler = stderr_handler;
static qlog_handler debug_handler = NULL;

void
qlog_set_handlers (qlog_handler error, qlog_handler debug)
{
  error_handler = error;
  debug_handler = debug;
}

void
qerror (const char *fs, ...)
{
  int saved_errno = errno;
  va_list args;

  va_start (args, fs);
  errno = saved_errno;          /* for %m */
  error_handler (fs, args);
  va_end (args);
  errno = saved_errno;
}

void
qdebug (const char *fs, ...)
{
  int saved_errno = errno;
  va_list args;

  if (debug_handler == NULL)
    return;
  va_start (args, fs);
  errno = saved_errno;
  debug_handler (fs, args);
  va_end (args);
  errno = saved_errno;
}
