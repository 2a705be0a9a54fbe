/* nbdkit-qcow2j-plugin: the nbdkit glue.
 *
 * Thin on purpose: lifecycle, and mapping NBD requests, flags and errors
 * onto the image API in lib/.  No qcow2 format logic lives here; the
 * parameters are params.c's, and what happens at startup is startup.c's.
 *
 * One image object serves every connection (so a flush on any connection
 * will cover writes from all of them, and multi-conn can be advertised),
 * under the PARALLEL thread model; lib/ does its own locking.
 *
 * The image is opened, and whether it is served writable decided, in
 * .get_ready, the last point where an error reaches the user's terminal.
 */
#include <config.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <zlib.h>
#include <zstd.h>

#include "image.h"
#include "log.h"
#include "qcow2j.h"

/* -D qcow2j.map=1: log every guest to host mapping (very chatty). */
NBDKIT_DLL_PUBLIC int qcow2j_debug_map;
/* -D qcow2j.cache=1: log L2 cache statistics when the server stops. */
NBDKIT_DLL_PUBLIC int qcow2j_debug_cache;

static struct qcow2_image *image;       /* shared by all connections */
static bool writable;                   /* decided at startup */

/* lib/ reports through nbdkit from the start (create=true runs in
 * .config_complete). */
static void
qcow2j_load (void)
{
  qlog_set_handlers (nbdkit_verror, nbdkit_vdebug);
}

static void
qcow2j_unload (void)
{
  qcow2j_params_free ();
}

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
  qlog_debug_map = qcow2j_debug_map;

  if (qcow2j_cmdline_parse () == -1)
    return -1;
  image = qcow2j_open_image (&writable);
  return image ? 0 : -1;
}

/* nbdkit forks after .get_ready: threads start here, never earlier. */
static int
qcow2j_after_fork (void)
{
  if (image && writable)
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
                  "replayed at the next writable open",
                  qcow2j_params.filename);
  image = NULL;
}

/* Everything was decided at startup: a connection needs no state. */
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
  .load               = qcow2j_load,
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
