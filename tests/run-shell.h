/* qcow2j unit tests: run a shell command (qemu-img, cmp...) and get its
 * exit status, for the tests that check images with outside tools. */
#ifndef QCOW2J_RUN_SHELL_H
#define QCOW2J_RUN_SHELL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

/* Run a shell command (printf format); its exit status, or -1 if it did
 * not exit. */
static inline int __attribute__ ((format (printf, 1, 2)))
run_shell (const char *fs, ...)
{
  char cmd[1024];
  va_list args;
  int r;

  va_start (args, fs);
  vsnprintf (cmd, sizeof cmd, fs, args);
  va_end (args);
  r = system (cmd);
  return r == -1 || !WIFEXITED (r) ? -1 : WEXITSTATUS (r);
}

#endif /* QCOW2J_RUN_SHELL_H */
