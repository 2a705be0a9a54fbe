/* qcow2j lib: error and debug reporting.
 *
 * lib/ must not depend on nbdkit, yet its errors must reach the user through
 * nbdkit_error when it runs inside the server.  So every message goes
 * through a pair of handlers that the plugin replaces at load time; the
 * defaults print to stderr, which is what unit tests and fuzzers want.
 *
 * Messages follow nbdkit's convention: "what: detail: %m", lower case, no
 * trailing newline.  Both functions preserve errno, so a caller can set
 * errno, report, and return -1.
 */
#ifndef QCOW2J_LOG_H
#define QCOW2J_LOG_H

#include <stdarg.h>
#include <stdbool.h>

typedef void (*qlog_handler) (const char *fs, va_list args);

extern void qlog_set_handlers (qlog_handler error, qlog_handler debug);

extern void qerror (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));
extern void qdebug (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));

/* Set by the plugin from its -D qcow2j.* debug flags. */
extern bool qlog_debug_map;

#endif /* QCOW2J_LOG_H */
