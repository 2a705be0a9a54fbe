/* qcow2j tests: qemu-img check in the background (see qemu-check.h). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qemu-check.h"
#include "unit.h"

#define MAX_JOBS 2

extern char **environ;

struct qjob {
  pid_t pid;
  char path[300], log[300], what[200];
  struct qemu_check_tally *tally;       /* NULL: only exit 0 passes */
};
static struct qjob jobs[MAX_JOBS];
static unsigned njobs;
static uint64_t started;

static bool
all_zero (const uint8_t *p, uint64_t n)
{
  for (uint64_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

static void
reap_one (void)
{
  int status, code;
  pid_t pid;
  unsigned i;

  do
    pid = waitpid (-1, &status, 0);
  while (pid == -1 && errno == EINTR);
  REQUIRE (pid > 0);
  for (i = 0; i < njobs && jobs[i].pid != pid; i++)
    ;
  REQUIRE (i < njobs);
  code = WIFEXITED (status) ? WEXITSTATUS (status) : -1;
  if (jobs[i].tally) {
    struct qemu_check_tally *ty = jobs[i].tally;

    if (code == 0)
      ty->clean++;
    else if (code == 3)
      ty->leaks++;
    else if (code == 2)
      ty->corrupt++;
    else
      ty->other++;
  }
  if (code != 0 && (code != 3 || jobs[i].tally == NULL)) {
    char line[512];
    FILE *fp = fopen (jobs[i].log, "r");

    FAIL ("%s: qemu-img check failed (status 0x%x):", jobs[i].what, status);
    while (fp && fgets (line, sizeof line, fp))
      fprintf (stderr, "  %s", line);
    if (fp)
      fclose (fp);
    if (getenv ("QCOW2J_KEEP") == NULL)
      unlink (jobs[i].path);
    else
      fprintf (stderr, "  image kept: %s\n", jobs[i].path);
  }
  else
    unlink (jobs[i].path);
  unlink (jobs[i].log);
  jobs[i] = jobs[--njobs];
}

static void
start (const char *dir, const uint8_t *data, uint64_t size, const char *what,
       struct qemu_check_tally *tally)
{
  const uint64_t chunk = 64 * 1024;
  char *argv[] = { "qemu-img", "check", "-f", "qcow2", NULL, NULL };
  posix_spawn_file_actions_t fa;
  struct qjob *j;
  int fd;

  while (njobs == MAX_JOBS)
    reap_one ();
  j = &jobs[njobs];
  snprintf (j->path, sizeof j->path, "%s/check-%" PRIu64 ".qcow2", dir,
            started);
  snprintf (j->log, sizeof j->log, "%s/check-%" PRIu64 ".log", dir, started);
  snprintf (j->what, sizeof j->what, "%s", what);
  j->tally = tally;
  fd = open (j->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  REQUIRE (fd >= 0);
  for (uint64_t pos = 0; pos < size; pos += chunk) {
    uint64_t n = size - pos < chunk ? size - pos : chunk;
    if (!all_zero (data + pos, n))
      CHECK (pwrite (fd, data + pos, n, pos) == (ssize_t) n);
  }
  CHECK (ftruncate (fd, size) == 0);
  CHECK (close (fd) == 0);

  argv[4] = j->path;
  CHECK (posix_spawn_file_actions_init (&fa) == 0);
  CHECK (posix_spawn_file_actions_addopen (&fa, 1, j->log,
                                           O_WRONLY | O_CREAT | O_TRUNC,
                                           0644) == 0);
  CHECK (posix_spawn_file_actions_adddup2 (&fa, 1, 2) == 0);
  REQUIRE (posix_spawnp (&j->pid, "qemu-img", &fa, NULL, argv, environ) == 0);
  posix_spawn_file_actions_destroy (&fa);
  njobs++;
  started++;
}

void
qemu_check_start (const char *dir, const uint8_t *data, uint64_t size,
                  const char *what)
{
  start (dir, data, size, what, NULL);
}

void
qemu_check_start_leaks (const char *dir, const uint8_t *data, uint64_t size,
                        const char *what, struct qemu_check_tally *tally)
{
  start (dir, data, size, what, tally);
}

void
qemu_check_wait_all (void)
{
  while (njobs > 0)
    reap_one ();
}

uint64_t
qemu_check_started (void)
{
  return started;
}

void
qemu_check_cleanup (void)
{
  for (unsigned i = 0; i < njobs; i++) {
    waitpid (jobs[i].pid, NULL, 0);
    unlink (jobs[i].path);
    unlink (jobs[i].log);
  }
  njobs = 0;
}
