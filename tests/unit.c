/* qcow2j unit tests: the runner (tests/unit.h), one copy per program so
 * that a check failing in any file or thread of it is counted. */
#include <config.h>

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

/* Failures printed per case; later ones are only counted. */
#define UNIT_MAX_REPORTS 50

static const char *unit_prog;   /* for messages */
static char **unit_names;       /* the cases to run; NULL: all */
static unsigned unit_failures;  /* failed checks, every thread (atomic) */
static unsigned unit_case_start; /* unit_failures when the case began */
static pthread_t unit_case_thread;
static bool unit_in_case;
static jmp_buf unit_stop_jmp;

void
unit_fail (const char *file, int line, const char *fs, ...)
{
  unsigned n = __atomic_fetch_add (&unit_failures, 1, __ATOMIC_SEQ_CST) -
    __atomic_load_n (&unit_case_start, __ATOMIC_SEQ_CST);
  va_list args;

  if (n > UNIT_MAX_REPORTS)
    return;
  flockfile (stderr);
  if (n == UNIT_MAX_REPORTS)
    fprintf (stderr, "%s:%d: more failures, counted but not printed\n",
             file, line);
  else {
    fprintf (stderr, "%s:%d: ", file, line);
    va_start (args, fs);
    vfprintf (stderr, fs, args);
    va_end (args);
    fputc ('\n', stderr);
  }
  funlockfile (stderr);
}

/* A longjmp is only possible from the thread that runs the case. */
void
unit_stop (void)
{
  if (!unit_in_case)
    exit (EXIT_FAILURE);
  if (pthread_equal (pthread_self (), unit_case_thread))
    longjmp (unit_stop_jmp, 1);
  fprintf (stderr, "%s: a REQUIRE failed in a thread other than the "
           "case's: aborting\n", unit_prog);
  abort ();
}

bool
unit_quick (void)
{
  const char *q = getenv ("QCOW2J_QUICK");

  return q != NULL && strcmp (q, "1") == 0;
}

unsigned
unit_failed (void)
{
  return __atomic_load_n (&unit_failures, __ATOMIC_SEQ_CST);
}

int
unit_status (void)
{
  return unit_failed () ? EXIT_FAILURE : EXIT_SUCCESS;
}

static bool
unit_selected (const char *name)
{
  if (unit_names == NULL)
    return true;
  for (char **p = unit_names; *p; p++)
    if (strcmp (*p, name) == 0)
      return true;
  return false;
}

void
unit_select (int argc, char *argv[], const struct unit_case *cases, size_t n)
{
  const char *slash = strrchr (argv[0], '/');

  unit_prog = slash ? slash + 1 : argv[0];
  setvbuf (stdout, NULL, _IONBF, 0);
  if (argc == 2 && strcmp (argv[1], "--list") == 0) {
    for (size_t i = 0; i < n; i++)
      printf ("%s\n", cases[i].name);
    exit (EXIT_SUCCESS);
  }
  for (int a = 1; a < argc; a++) {
    size_t i = 0;

    while (i < n && strcmp (cases[i].name, argv[a]) != 0)
      i++;
    if (i == n) {
      fprintf (stderr, "%s: no case named %s (--list lists them)\n",
               unit_prog, argv[a]);
      exit (2);
    }
  }
  unit_names = argc > 1 ? argv + 1 : NULL;
}

/* Run one case; its failed checks. */
static unsigned
unit_run_case (const struct unit_case *c)
{
  unit_case_thread = pthread_self ();
  __atomic_store_n (&unit_case_start, unit_failed (), __ATOMIC_SEQ_CST);
  if (setjmp (unit_stop_jmp) == 0) {
    unit_in_case = true;
    c->fn ();
  }
  unit_in_case = false;
  return unit_failed () - unit_case_start;
}

int
unit_run (const struct unit_case *cases, size_t n)
{
  unsigned ran = 0, failed = 0;

  for (size_t i = 0; i < n; i++) {
    unsigned f;

    if (!unit_selected (cases[i].name))
      continue;
    ran++;
    f = unit_run_case (&cases[i]);
    if (f) {
      printf ("%s: %s: FAIL (%u failed checks)\n", unit_prog, cases[i].name,
              f);
      failed++;
    }
    else
      printf ("%s: %s: ok\n", unit_prog, cases[i].name);
  }
  if (failed)
    printf ("%s: %u of %u cases failed\n", unit_prog, failed, ran);
  return unit_status ();
}

