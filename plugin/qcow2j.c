/* nbdkit-qcow2j-plugin: the nbdkit glue.
 *
 * Thin on purpose: parameters, lifecycle, and mapping NBD requests, flags
 * and errors onto the image API in lib/.  No qcow2 format logic lives here.
 *
 * One image object serves every connection (so a flush on any connection
 * will cover writes from all of them, and multi-conn can be advertised),
 * under the PARALLEL thread model; lib/ does its own locking.
 *
 * The image is opened and validated in .get_ready, the last point where an
 * error reaches the user's terminal.  Nothing in the file is modified
 * there: .get_ready cannot know whether nbdkit runs with -r, or whether a
 * filter (cow, checkwrite) will only ever open the plugin read-only.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <zlib.h>
#include <zstd.h>

#include "cleanup.h"
#include "create.h"
#include "image.h"
#include "log.h"

/* -D qcow2j.map=1: log every guest to host mapping (very chatty). */
NBDKIT_DLL_PUBLIC int qcow2j_debug_map;
/* -D qcow2j.cache=1: log L2 cache statistics when the server stops. */
NBDKIT_DLL_PUBLIC int qcow2j_debug_cache;

static const char *file_arg;            /* file=, as given */
static char *filename;                  /* file=, absolute */
static bool readonly;                   /* readonly= */
static uint64_t l2_cache_bytes;         /* l2-cache-size= */
static bool locking = true;             /* locking= */
static bool create;                     /* create= */
static int64_t create_size = -1;        /* size= */
static int64_t create_cluster_size = 65536; /* cluster-size= */

static struct qcow2_image *image;       /* shared by all connections */
/* Serializes the first writable .open (journal replay and set-up). */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static bool writable;                   /* image set up for writing */

static void
qcow2j_unload (void)
{
  free (filename);
}

static int
qcow2j_config (const char *key, const char *value)
{
  int r;

  if (strcmp (key, "file") == 0)
    file_arg = value;           /* resolved in .config_complete */
  else if (strcmp (key, "readonly") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    readonly = r;
  }
  else if (strcmp (key, "l2-cache-size") == 0) {
    int64_t size = nbdkit_parse_size (value);
    if (size == -1)
      return -1;
    if (size < 65536) {
      nbdkit_error ("l2-cache-size must be at least 64K");
      return -1;
    }
    l2_cache_bytes = size;
  }
  else if (strcmp (key, "create") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    create = r;
  }
  else if (strcmp (key, "size") == 0) {
    create_size = nbdkit_parse_size (value);
    if (create_size == -1)
      return -1;
  }
  else if (strcmp (key, "cluster-size") == 0) {
    create_cluster_size = nbdkit_parse_size (value);
    if (create_cluster_size == -1)
      return -1;
  }
  else if (strcmp (key, "locking") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    locking = r;
  }
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

static int
qcow2j_config_complete (void)
{
  if (file_arg == NULL) {
    nbdkit_error ("you must supply the file=<FILENAME> parameter");
    return -1;
  }
  if ((create_size != -1 || create_cluster_size != 65536) && !create) {
    nbdkit_error ("size= and cluster-size= go with create=true");
    return -1;
  }
  /* Resolve now: nbdkit changes directory to / when it daemonizes. */
  if (create && access (file_arg, F_OK) == -1) {
    if (create_size == -1) {
      nbdkit_error ("create=true needs size= for a new image");
      return -1;
    }
    filename = nbdkit_absolute_path (file_arg);
    if (filename == NULL ||
        qcow2_create (filename, create_size, create_cluster_size, false,
                      true) == -1)
      return -1;
  }
  else
    filename = nbdkit_realpath (file_arg);
  return filename ? 0 : -1;
}

#define qcow2j_config_help \
  "[file=]<FILENAME>     (required) The qcow2 image to serve.\n" \
  "readonly=true         Serve read-only.\n" \
  "l2-cache-size=SIZE    Bound of the L2 metadata cache (default 32M).\n" \
  "locking=false         Do not take QEMU-compatible image locks.\n" \
  "create=true size=SIZE [cluster-size=SIZE]\n" \
  "                      Create a new image if the file does not exist."

static void
qcow2j_dump_plugin (void)
{
  printf ("qcow2j_version=%s\n", PACKAGE_VERSION);
  printf ("qcow2j_zlib=%s\n", zlibVersion ());
  printf ("qcow2j_zstd=%s\n", ZSTD_versionString ());
  printf ("qcow2j_write=yes\n");
  printf ("qcow2j_journal=yes\n");
}

static int
qcow2j_get_ready (void)
{
  struct qcow2_open_options opts = {
    .l2_cache_bytes = l2_cache_bytes,
    .lock = locking,
    .writable = !readonly,
  };

  qlog_set_handlers (nbdkit_verror, nbdkit_vdebug);
  qlog_debug_map = qcow2j_debug_map;

  image = qcow2_open (filename, &opts);
  if (image == NULL)
    return -1;
  if (qcow2_is_corrupt (image))
    nbdkit_debug ("%s: image is marked corrupt: serving it read-only",
                  filename);
  return 0;
}

/* nbdkit forks after .get_ready: threads start here, never earlier. */
static int
qcow2j_after_fork (void)
{
  if (image && qcow2_can_write (image))
    return qcow2_start_checkpointer (image);
  return 0;
}

static void
qcow2j_cleanup (void)
{
  if (image && qcow2j_debug_cache)
    qcow2_debug_stats (image);
  /* Stops the checkpoint thread, checkpoints everything and leaves plain
   * qcow2 behind. */
  if (qcow2_close (image) == -1)
    nbdkit_error ("%s: clean close failed: the journal is kept and will be "
                  "replayed at the next writable open", filename);
  image = NULL;
}

static void *
qcow2j_open (int readonly_connection)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&open_lock);

  /* A writable connection may write: check that the image allows it and
   * take QEMU's writer locks; the journal is set up at the first write.
   * A dirty journal is replayed now (it must be, before any read): in
   * place for a writable connection; in memory otherwise, so that -r and
   * read-only filters never change the file (the image then stays
   * read-only until the server restarts).  An image that cannot be
   * written is served read-only, with the reason logged. */
  if (!readonly_connection && !readonly && !writable &&
      qcow2_can_write (image)) {
    int r = qcow2_journal_dirty (image) ? qcow2_make_writable (image)
      : qcow2_prepare_writable (image);
    if (r == 0)
      writable = true;
    else if (qcow2_journal_dirty (image))
      return NULL;
  }
  if (qcow2_replay_in_memory (image) == -1)
    return NULL;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
qcow2j_get_size (void *handle)
{
  return qcow2_size (image);
}

static const char *
qcow2j_export_description (void *handle)
{
  char desc[512];

  qcow2_describe (image, desc, sizeof desc);
  return nbdkit_strdup_intern (desc);
}

static int
qcow2j_block_size (void *handle,
                   uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  uint64_t cs = qcow2_cluster_size (image);

  *minimum = 1;
  /* Whole clusters avoid read-modify-write when allocating. */
  *preferred = cs < 4096 ? 4096 : cs;
  *maximum = 0xffffffff;
  return 0;
}

static int
qcow2j_can_write (void *handle)
{
  return writable;
}

static int
qcow2j_can_flush (void *handle)
{
  return 1;
}

static int
qcow2j_can_trim (void *handle)
{
  return 1;
}

static int
qcow2j_can_zero (void *handle)
{
  return 1;
}

static int
qcow2j_can_fast_zero (void *handle)
{
  return 1;
}

static int
qcow2j_can_fua (void *handle)
{
  return NBDKIT_FUA_EMULATE;
}

static int
qcow2j_can_multi_conn (void *handle)
{
  return 1;
}

static int
qcow2j_can_extents (void *handle)
{
  return 1;
}

static int
qcow2j_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  return qcow2_pread (image, buf, count, offset);
}

static int
qcow2j_pwrite (void *handle, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags)
{
  return qcow2_pwrite (image, buf, count, offset);
}

/* Never ENOTSUP unless FAST_ZERO was asked: nbdkit 1.32's fallback for
 * it corrupts data (lib/ writes zeroes itself when it must). */
static int
qcow2j_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return qcow2_zero (image, count, offset, flags & NBDKIT_FLAG_MAY_TRIM,
                     flags & NBDKIT_FLAG_FAST_ZERO);
}

static int
qcow2j_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return qcow2_trim (image, count, offset);
}

/* Covers writes completed on every connection (multi-conn). */
static int
qcow2j_flush (void *handle, uint32_t flags)
{
  return qcow2_flush (image);
}

static int
add_extent (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  return nbdkit_add_extent (opaque, offset, length, type);
}

static int
qcow2j_extents (void *handle, uint32_t count, uint64_t offset,
                uint32_t flags, struct nbdkit_extents *extents)
{
  return qcow2_extents (image, count, offset, flags & NBDKIT_FLAG_REQ_ONE,
                        add_extent, extents);
}

static struct nbdkit_plugin plugin = {
  .name               = "qcow2j",
  .longname           = "nbdkit qcow2 plugin with a metadata journal",
  .version            = PACKAGE_VERSION,
  .magic_config_key   = "file",
  .unload             = qcow2j_unload,
  .config             = qcow2j_config,
  .config_complete    = qcow2j_config_complete,
  .config_help        = qcow2j_config_help,
  .dump_plugin        = qcow2j_dump_plugin,
  .get_ready          = qcow2j_get_ready,
  .after_fork         = qcow2j_after_fork,
  .cleanup            = qcow2j_cleanup,
  .open               = qcow2j_open,
  .get_size           = qcow2j_get_size,
  .export_description = qcow2j_export_description,
  .block_size         = qcow2j_block_size,
  .can_write          = qcow2j_can_write,
  .can_flush          = qcow2j_can_flush,
  .can_trim           = qcow2j_can_trim,
  .can_zero           = qcow2j_can_zero,
  .can_fast_zero      = qcow2j_can_fast_zero,
  .can_fua            = qcow2j_can_fua,
  .can_multi_conn     = qcow2j_can_multi_conn,
  .can_extents        = qcow2j_can_extents,
  .pread              = qcow2j_pread,
  .pwrite             = qcow2j_pwrite,
  .zero               = qcow2j_zero,
  .trim               = qcow2j_trim,
  .flush              = qcow2j_flush,
  .extents            = qcow2j_extents,
  .errno_is_preserved = 1,
};

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
NBDKIT_REGISTER_PLUGIN (plugin)
