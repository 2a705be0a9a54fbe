/* qcow2j unit tests: the runner every tests/unit-*.c uses.
 *
 * A test program is a table of named cases:
 *
 *   UNIT_CASE (replay) { ... CHECK (x == 1); ... }
 *   static const struct unit_case cases[] = { UNIT_ENTRY (replay), ... };
 *   UNIT_MAIN (cases)
 *
 * "unit-foo" runs every case, "unit-foo NAME..." the cases named, and
 * "unit-foo --list" prints the names.  Each case is reported ok or FAIL.
 * CHECK reports a failed expression (file:line) and goes on, so that one
 * run shows every failed check; REQUIRE also stops the case, for where
 * going on would crash (a null pointer...); FAIL reports a failure
 * described by a printf format.  Checks may fail in any thread, and are
 * all counted; stopping the case (REQUIRE, unit_stop) from a thread other
 * than the one running it aborts the program, as a longjmp cannot cross
 * threads, and before any case (in set-up) exits.  The exit status is 1
 * if any check failed, 2 for a bad argument.  A program with set-up to do
 * calls UNIT_SELECT before it and UNIT_RUN after it, then returns
 * unit_status (). */
#ifndef QCOW2J_UNIT_H
#define QCOW2J_UNIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

struct unit_case {
  const char *name;
  void (*fn) (void);
};

#define UNIT_CASE(name) static void unit_case_##name (void)
#define UNIT_ENTRY(name) { #name, unit_case_##name }

/* Record a failure (file:line and a printf format), in any thread. */
extern void unit_fail (const char *file, int line, const char *fs, ...)
  __attribute__ ((format (printf, 3, 4)));
/* Stop the current case (after a failure). */
extern void unit_stop (void) __attribute__ ((noreturn));

#define FAIL(...) unit_fail (__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(expr) \
  ((expr) ? (void) 0 : FAIL ("check failed: %s", #expr))
#define REQUIRE(expr) \
  ((expr) ? (void) 0 : (FAIL ("check failed: %s", #expr), unit_stop ()))

/* Failed checks so far. */
extern unsigned unit_failed (void);

/* QCOW2J_QUICK=1 (check.sh sets it for the sanitizer builds, where
 * everything runs several times slower): the long randomized tests
 * sample fewer of the same states; every kind of case still runs. */
extern bool unit_quick (void);
/* EXIT_FAILURE if any check failed, else EXIT_SUCCESS. */
extern int unit_status (void);
/* Handle the arguments: --list prints the names and exits, an unknown
 * name exits with status 2. */
extern void unit_select (int argc, char *argv[],
                         const struct unit_case *cases, size_t n);
/* Run the cases selected, reporting each; unit_status (). */
extern int unit_run (const struct unit_case *cases, size_t n);

#define UNIT_SELECT(argc, argv, cases) \
  unit_select ((argc), (argv), (cases), sizeof (cases) / sizeof (cases)[0])
#define UNIT_RUN(cases) unit_run ((cases), sizeof (cases) / sizeof (cases)[0])
#define UNIT_MAIN(cases)                        \
  int                                           \
  main (int argc, char *argv[])                 \
  {                                             \
    UNIT_SELECT (argc, argv, cases);            \
    return UNIT_RUN (cases);                    \
  }

#endif /* QCOW2J_UNIT_H */
