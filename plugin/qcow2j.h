/* nbdkit-qcow2j-plugin: what the plugin's files share (all hidden from
 * nbdkit by -fvisibility=hidden and plugin/qcow2j.syms). */
#ifndef QCOW2J_PLUGIN_H
#define QCOW2J_PLUGIN_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "create.h"
#include "image.h"

/* params.c: the plugin's parameters. */
enum qcow2j_readonly {
  READONLY_FALSE,               /* writable, or refuse to start */
  READONLY_TRUE,                /* like nbdkit -r */
  READONLY_AUTO,                /* writable if possible, said otherwise */
};

struct qcow2j_params {
  char *filename;               /* file=, absolute */
  enum qcow2j_readonly readonly;
  uint64_t l2_cache_bytes;      /* l2-cache-size=, 0: the default */
  bool locking;                 /* locking= */
  bool create;                  /* create= */
  bool created;                 /* create=true made the file */
  struct qcow2_snapshot_choice snapshot; /* snapshot=, snapshot-id=,
                                   snapshot-name= (all NULL: none) */
  struct qcow2_create_options create_opts;
};

extern struct qcow2j_params qcow2j_params;
extern int qcow2j_config (const char *key, const char *value);
extern int qcow2j_config_complete (void);
extern void qcow2j_params_free (void);
extern bool qcow2j_params_snapshot (void);

#define qcow2j_config_help \
  "[file=]<FILENAME>     (required) The qcow2 image to serve.\n" \
  "readonly=true|false|auto\n" \
  "                      Serve read-only; auto: read-only only if it\n" \
  "                      cannot be written (default false: refuse).\n" \
  "l2-cache-size=SIZE    Bound of the L2 metadata cache (default 32M).\n" \
  "locking=false         Do not take QEMU-compatible image locks.\n" \
  "snapshot=ID_OR_NAME   Serve an internal snapshot, read-only (an id,\n" \
  "                      else a name, as qemu-nbd -l).\n" \
  "snapshot-id=ID, snapshot-name=NAME\n" \
  "                      The same by id, by name, or by both.\n" \
  "create=true [size=SIZE] [cluster-size=SIZE] [backing-file=FILE\n" \
  "  backing-format=qcow2|raw] [refcount-bits=N] [extended-l2=true]\n" \
  "  [compression-type=zlib|zstd] [lazy-refcounts=true]\n" \
  "  [preallocation=off|metadata|falloc|full]\n" \
  "                      Create a new image if the file does not exist."

/* cmdline.c: nbdkit's own command line. */
extern int qcow2j_cmdline_parse (void);
extern bool qcow2j_cmdline_readonly (void);
extern bool qcow2j_cmdline_syslog (void);

/* notice.c: messages a user must see without -v. */
extern void qcow2j_vnotice (const char *fs, va_list args);
extern void qcow2j_notice (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));

/* startup.c: open the image and decide whether it is served writable. */
struct qcow2_image;
extern struct qcow2_image *qcow2j_open_image (bool *writable);

#endif /* QCOW2J_PLUGIN_H */
