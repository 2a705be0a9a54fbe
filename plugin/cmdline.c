/* nbdkit-qcow2j-plugin: what nbdkit was told on its command line.
 *
 * nbdkit 1.32 gives a plugin no way to learn, before connections arrive,
 * that the server is read-only (-r), that a filter (cow, checkwrite) will
 * only ever open it read-only, or where messages go (--log).  Yet
 * writability must be decided at startup, where errors reach the user's
 * terminal: an image served with -r must never take QEMU's write locks,
 * nor be refused for being marked corrupt.  So the plugin
 * reads nbdkit's arguments from /proc/self/cmdline, the way nbdkit's own
 * getopt_long sees them: options may come anywhere (they are permuted),
 * "--" ends them, long options may be abbreviated, and an option's
 * argument (--run 'cmd -r') is never taken for an option.
 */
#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "cleanup.h"
#include "qcow2j.h"

/* Short options of nbdkit 1.32 (nbdkit --short-options) that take an
 * argument. */
#define SHORT_WITH_ARG "DegipPtuU"

enum meaning { OTHER, READONLY, FILTER, LOG };

struct long_option {
  const char *name;
  bool has_arg;
  enum meaning meaning;
};

/* nbdkit 1.32's long options (nbdkit --long-options). */
static const struct long_option long_options[] = {
  { "debug", true, OTHER },        { "dump-config", false, OTHER },
  { "dump-plugin", false, OTHER }, { "exit-with-parent", false, OTHER },
  { "export", true, OTHER },       { "export-name", true, OTHER },
  { "exportname", true, OTHER },   { "filter", true, FILTER },
  { "foreground", false, OTHER },  { "no-fork", false, OTHER },
  { "group", true, OTHER },        { "help", false, OTHER },
  { "ip-addr", true, OTHER },      { "ipaddr", true, OTHER },
  { "ipv4-only", false, OTHER },   { "ipv6-only", false, OTHER },
  { "log", true, LOG },            { "mask-handshake", true, OTHER },
  { "new-style", false, OTHER },   { "newstyle", false, OTHER },
  { "no-sr", false, OTHER },       { "old-style", false, OTHER },
  { "oldstyle", false, OTHER },    { "pid-file", true, OTHER },
  { "pidfile", true, OTHER },      { "port", true, OTHER },
  { "read-only", false, READONLY }, { "readonly", false, READONLY },
  { "run", true, OTHER },          { "selinux-label", true, OTHER },
  { "single", false, OTHER },      { "stdin", false, OTHER },
  { "swap", false, OTHER },        { "threads", true, OTHER },
  { "tls", true, OTHER },          { "tls-certificates", true, OTHER },
  { "tls-psk", true, OTHER },      { "tls-verify-peer", false, OTHER },
  { "unix", true, OTHER },         { "user", true, OTHER },
  { "verbose", false, OTHER },     { "version", false, OTHER },
  { "vsock", false, OTHER },
};
#define NR_LONG_OPTIONS (sizeof long_options / sizeof long_options[0])

static bool parsed;
static bool readonly;           /* -r, or a filter that opens us read-only */
static bool syslog_wanted;      /* --log=syslog */

/* The long option that name (len bytes, perhaps abbreviated) means, as
 * getopt_long picks it: an exact match, or the only one it abbreviates
 * (abbreviations of options that mean the same are not ambiguous). */
static const struct long_option *
find_long (const char *name, size_t len)
{
  const struct long_option *found = NULL;

  for (size_t i = 0; i < NR_LONG_OPTIONS; i++) {
    const struct long_option *o = &long_options[i];

    if (strncmp (o->name, name, len) != 0)
      continue;
    if (o->name[len] == '\0')
      return o;
    if (found && (found->has_arg != o->has_arg ||
                  found->meaning != o->meaning))
      return NULL;              /* ambiguous: nbdkit refused it anyway */
    if (found == NULL)
      found = o;
  }
  return found;
}

/* Filters that open the plugin read-only whatever the server is. */
static bool
readonly_filter (const char *filter)
{
  const char *base = strrchr (filter, '/');

  base = base ? base + 1 : filter;
  return strcmp (base, "cow") == 0 ||
    strcmp (base, "nbdkit-cow-filter.so") == 0 ||
    strcmp (base, "checkwrite") == 0 ||
    strcmp (base, "nbdkit-checkwrite-filter.so") == 0;
}

static void
option (enum meaning meaning, const char *value)
{
  switch (meaning) {
  case READONLY:
    readonly = true;
    break;
  case FILTER:
    if (readonly_filter (value))
      readonly = true;
    break;
  case LOG:
    syslog_wanted = strcmp (value, "syslog") == 0;
    break;
  case OTHER:
    break;
  }
}

/* argv[i] starts with "--": returns the index of its last word. */
static size_t
long_arg (char **argv, size_t argc, size_t i)
{
  const char *name = argv[i] + 2;
  const char *eq = strchr (name, '=');
  const struct long_option *o =
    find_long (name, eq ? (size_t) (eq - name) : strlen (name));

  if (o == NULL)
    return i;
  if (!o->has_arg) {
    option (o->meaning, NULL);
    return i;
  }
  if (eq) {
    option (o->meaning, eq + 1);
    return i;
  }
  if (i + 1 < argc)
    option (o->meaning, argv[i + 1]);
  return i + 1;
}

/* argv[i] is a cluster of short options ("-fr", "-U-", "-U", "-"):
 * returns the index of its last word. */
static size_t
short_args (char **argv, size_t argc, size_t i)
{
  for (const char *p = argv[i] + 1; *p; p++) {
    if (strchr (SHORT_WITH_ARG, *p))
      return p[1] ? i : i + 1;  /* the rest, or the next word */
    if (*p == 'r')
      option (READONLY, NULL);
  }
  return i;
}

static void
parse_argv (char **argv, size_t argc)
{
  for (size_t i = 1; i < argc; i++) {
    if (strcmp (argv[i], "--") == 0)
      break;
    if (strncmp (argv[i], "--", 2) == 0)
      i = long_arg (argv, argc, i);
    else if (argv[i][0] == '-' && argv[i][1] != '\0')
      i = short_args (argv, argc, i);
  }
}

/* Read /proc/self/cmdline, a NUL-separated argv. */
static int
parse (void)
{
  CLEANUP_FREE char *buf = NULL;
  CLEANUP_FREE char **argv = NULL;
  size_t len = 0, argc = 0;
  FILE *fp;

  fp = fopen ("/proc/self/cmdline", "re");
  if (fp == NULL) {
    nbdkit_error ("/proc/self/cmdline: %m");
    return -1;
  }
  for (;;) {
    char *p = realloc (buf, len + 4096 + 1);
    size_t n;

    if (p == NULL) {
      nbdkit_error ("realloc: %m");
      fclose (fp);
      return -1;
    }
    buf = p;
    n = fread (buf + len, 1, 4096, fp);
    len += n;
    if (n < 4096)
      break;
  }
  if (ferror (fp)) {
    nbdkit_error ("/proc/self/cmdline: read error");
    fclose (fp);
    return -1;
  }
  fclose (fp);
  buf[len] = '\0';

  argv = calloc (len + 1, sizeof *argv);
  if (argv == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  for (size_t i = 0; i < len; i += strlen (buf + i) + 1)
    argv[argc++] = buf + i;
  parse_argv (argv, argc);
  parsed = true;
  return 0;
}

int
qcow2j_cmdline_parse (void)
{
  return parsed ? 0 : parse ();
}

bool
qcow2j_cmdline_readonly (void)
{
  return readonly;
}

bool
qcow2j_cmdline_syslog (void)
{
  return syslog_wanted;
}
