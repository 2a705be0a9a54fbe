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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <zlib.h>
#include <zstd.h>

#include "image.h"
#include "log.h"

/* -D qcow2j.map=1: log every guest to host mapping (very chatty). */
NBDKIT_DLL_PUBLIC int qcow2j_debug_map;
/* -D qcow2j.cache=1: log L2 cache statistics when the server stops. */
NBDKIT_DLL_PUBLIC int qcow2j_debug_cache;

static char *filename;                  /* file=, absolute */
static bool readonly;                   /* readonly= */
static uint64_t l2_cache_bytes;         /* l2-cache-size= */
static bool locking = true;             /* locking= */

static struct qcow2_image *image;       /* shared by all connections */

static void
qcow2j_unload (void)
{
  free (filename);
}

static int
qcow2j_config (const char *key, const char *value)
{
  int r;

  if (strcmp (key, "file") == 0) {
    free (filename);
    /* Resolve now: nbdkit changes directory to / when it daemonizes. */
    filename = nbdkit_realpath (value);
    if (filename == NULL)
      return -1;
  }
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
  if (filename == NULL) {
    nbdkit_error ("you must supply the file=<FILENAME> parameter");
    return -1;
  }
  return 0;
}

#define qcow2j_config_help \
  "[file=]<FILENAME>     (required) The qcow2 image to serve.\n" \
  "readonly=true         Serve read-only.\n" \
  "l2-cache-size=SIZE    Bound of the L2 metadata cache (default 32M).\n" \
  "locking=false         Do not take QEMU-compatible image locks."

static void
qcow2j_dump_plugin (void)
{
  printf ("qcow2j_version=%s\n", PACKAGE_VERSION);
  printf ("qcow2j_zlib=%s\n", zlibVersion ());
  printf ("qcow2j_zstd=%s\n", ZSTD_versionString ());
  printf ("qcow2j_write=no\n");
}

static int
qcow2j_get_ready (void)
{
  struct qcow2_open_options opts = {
    .l2_cache_bytes = l2_cache_bytes,
    .lock = locking,
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

static void
qcow2j_cleanup (void)
{
  if (image && qcow2j_debug_cache)
    qcow2_debug_stats (image);
  qcow2_close (image);
  image = NULL;
}

static void *
qcow2j_open (int readonly_connection)
{
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
  return 0;
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
  .cleanup            = qcow2j_cleanup,
  .open               = qcow2j_open,
  .get_size           = qcow2j_get_size,
  .export_description = qcow2j_export_description,
  .block_size         = qcow2j_block_size,
  .can_write          = qcow2j_can_write,
  .can_multi_conn     = qcow2j_can_multi_conn,
  .can_extents        = qcow2j_can_extents,
  .pread              = qcow2j_pread,
  .extents            = qcow2j_extents,
  .errno_is_preserved = 1,
};

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
NBDKIT_REGISTER_PLUGIN (plugin)
