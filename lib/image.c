/* qcow2j lib: opening and closing images, and what the plugin asks of them.
 *
 * Opening reads and validates the header, the active L1 table and the
 * snapshot table of each image of the backing chain, and opens any
 * external data file; L2 tables are only read when a request needs them.
 * Nothing is written: the file is opened read-only unless asked, and
 * even then nothing changes until the first write (session.c).  An image
 * opened read-only may serve an internal snapshot instead of its active
 * layer (qcow2_load_snapshot): the snapshot's L1 table and disk size take
 * the active ones' place in memory, so that reads and block status, which
 * go through them, need nothing else.
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backing.h"
#include "format.h"
#include "lock.h"
#include "log.h"
#include "minmax.h"
#include "owed.h"
#include "session.h"
#include "snapshot.h"
#include "tables.h"

/* Open one image of a chain: io (taken over), names relative to dir,
 * the cache shared along the chain (NULL: make one). */
static struct qcow2_image *
open_layer (struct hostio *io, const char *dir, struct mcache *cache,
            unsigned depth, struct chain_ids *ids,
            const struct qcow2_open_options *opts);

/* The backing file of img, if any: a raw one is set up by backing.c, a
 * qcow2 one is the next layer. */
static int
open_backing_layer (struct qcow2_image *img, unsigned depth,
                    struct chain_ids *ids,
                    const struct qcow2_open_options *opts)
{
  struct hostio *io;
  char *dir;

  if (qcow2_open_backing (img, depth, ids, opts, &io, &dir) == -1)
    return -1;
  if (io == NULL)
    return 0;
  img->backing.image = open_layer (io, dir, img->cache, depth + 1, ids, opts);
  free (dir);
  if (img->backing.image == NULL)
    return -1;
  img->backing.kind = BACKING_QCOW2;
  img->backing.size = img->backing.image->hdr.size;
  return 0;
}

static struct qcow2_image *
open_layer (struct hostio *io, const char *dir, struct mcache *cache,
            unsigned depth, struct chain_ids *ids,
            const struct qcow2_open_options *opts)
{
  struct qcow2_image *img;
  const struct qcow2_header *h;
  int64_t size;

  img = calloc (1, sizeof *img);
  if (img == NULL) {
    qerror ("calloc: %m");
    hostio_close (io);
    return NULL;
  }
  img->file = io;
  pthread_mutex_init (&img->meta_lock, NULL);
  pthread_mutex_init (&img->setup_lock, NULL);
  pthread_mutex_init (&img->dirty_lock, NULL);
  pthread_mutex_init (&img->checkpoint_lock, NULL);
  pthread_mutex_init (&img->thread_lock, NULL);
  pthread_rwlock_init (&img->map_lock, NULL);
  pthread_cond_init (&img->inflight_done, NULL);
  pthread_cond_init (&img->thread_cond, NULL);
  pthread_mutex_init (&img->owed_lock, NULL);
  pthread_cond_init (&img->owed_idle, NULL);
  img->lock_files = opts->lock;
  if (dir != NULL && (img->dir = strdup (dir)) == NULL) {
    qerror ("strdup: %m");
    goto fail;
  }
  if (qcow2_chain_add (ids, io) == -1)
    goto fail;
  if (opts->lock && hostio_file_fd (io) >= 0 &&
      qcow2_lock_fd (hostio_file_fd (io), io->name, false) == -1)
    goto fail;

  size = hostio_size (io);
  if (size == -1) {
    qerror ("%s: size: %m", io->name);
    goto fail;
  }
  img->file_size = img->open_end = img->alloc_start = img->gap_end = size;
  if (qcow2_header_read (io, img->file_size, &img->hdr) == -1)
    goto fail;
  h = &img->hdr;

  img->slice_size = MIN (h->cluster_size, (uint64_t) MCACHE_MAX_SLICE);
  img->csize_shift = 62 - (h->cluster_bits - 8);
  img->csize_mask = (1ULL << (h->cluster_bits - 8)) - 1;
  img->coffset_mask = (1ULL << img->csize_shift) - 1;
  qcow2_owed_init (img);

  if (cache == NULL) {
    cache = mcache_new (opts->l2_cache_bytes ? opts->l2_cache_bytes
                         : QCOW2_DEFAULT_L2_CACHE_BYTES);
    if (cache == NULL)
      goto fail;
    img->owns_cache = true;
  }
  img->cache = cache;

  if (qcow2_read_l1 (img) == -1 ||
      qcow2_snapshots_load (img) == -1 ||
      qcow2_open_data_file (img, depth == 0, opts) == -1 ||
      open_backing_layer (img, depth, ids, opts) == -1)
    goto fail;
  return img;

 fail:
  qcow2_close (img);
  return NULL;
}

struct qcow2_image *
qcow2_open_hostio (struct hostio *io, const char *dir,
                   const struct qcow2_open_options *opts)
{
  struct chain_ids ids = { .n = 0 };
  struct qcow2_image *img = open_layer (io, dir, NULL, 0, &ids, opts);

  /* The caller opened io: writable if it says so. */
  if (img)
    img->file_rw = opts->writable;
  return img;
}

struct qcow2_image *
qcow2_open (const char *path, const struct qcow2_open_options *opts)
{
  struct qcow2_image *img;
  struct hostio *io;
  bool rw = opts->writable && access (path, W_OK) == 0;
  char *dir;

  io = hostio_file_open (path, rw);
  if (io == NULL)
    return NULL;
  dir = qcow2_dirname (path);
  if (dir == NULL) {
    hostio_close (io);
    return NULL;
  }
  {
    struct qcow2_open_options o = *opts;

    o.writable = rw;
    img = qcow2_open_hostio (io, dir, &o);
  }
  free (dir);
  return img;
}

int
qcow2_load_snapshot (struct qcow2_image *img,
                     const struct qcow2_snapshot_choice *which)
{
  const struct qcow2_snapshot *sn;

  /* The header in memory becomes the snapshot's: nothing may write it. */
  assert (!img->file_rw);
  assert (!qcow2_journal_dirty (img));
  assert (img->served_snapshot == NULL);
  sn = qcow2_snapshot_find (img, which);
  if (sn == NULL)
    return -1;
  if (sn->disk_size > INT64_MAX) {
    qerror ("%s: snapshot %s: disk size %" PRIu64 " is too large",
            img->file->name, sn->id, sn->disk_size);
    errno = EINVAL;
    return -1;
  }
  /* Its L1 table was validated with the snapshot table (snapshot.c).
   * One too short for the disk size leaves the rest unallocated, as QEMU
   * reads it. */
  free (img->l1);
  img->l1 = NULL;
  img->hdr.size = sn->disk_size;
  img->hdr.l1_size = sn->l1_size;
  img->hdr.l1_table_offset = sn->l1_offset;
  img->served_snapshot = sn;
  return qcow2_read_l1 (img);
}

int
qcow2_close (struct qcow2_image *img)
{
  int saved_errno = errno;
  int r = 0;

  if (img == NULL)
    return 0;
  qcow2_stop_checkpointer (img);
  if (qcow2_session_close (img) == -1) {
    saved_errno = errno;
    r = -1;
  }
  journal_free (img->journal);
  free (img->reftable);
  qcow2_snapshots_free (img);
  free (img->live_bitmaps);
  free (img->inflight);
  if (img->backing.image)
    qcow2_close (img->backing.image);
  hostio_close (img->backing.raw);
  free (img->backing.path);
  if (img->data != img->file)
    hostio_close (img->data);
  hostio_close (img->file);
  if (img->owns_cache)
    mcache_free (img->cache);
  free (img->l1);
  rangemap_clear (&img->map);
  rangemap_clear (&img->space);
  free (img->dir);
  qcow2_header_free (&img->hdr);
  pthread_mutex_destroy (&img->meta_lock);
  pthread_mutex_destroy (&img->setup_lock);
  pthread_mutex_destroy (&img->dirty_lock);
  pthread_mutex_destroy (&img->checkpoint_lock);
  pthread_mutex_destroy (&img->thread_lock);
  pthread_rwlock_destroy (&img->map_lock);
  pthread_cond_destroy (&img->inflight_done);
  pthread_cond_destroy (&img->thread_cond);
  qcow2_owed_destroy (img);
  pthread_mutex_destroy (&img->owed_lock);
  pthread_cond_destroy (&img->owed_idle);
  free (img);
  errno = saved_errno;
  return r;
}

bool
qcow2_can_write (const struct qcow2_image *img)
{
  return img->file_rw;
}

uint64_t
qcow2_size (const struct qcow2_image *img)
{
  return img->hdr.size;
}

uint64_t
qcow2_cluster_size (const struct qcow2_image *img)
{
  return img->hdr.cluster_size;
}

bool
qcow2_is_corrupt (const struct qcow2_image *img)
{
  return img->hdr.incompatible_features & QCOW2_INCOMPAT_CORRUPT;
}

static const char *
basename_of (const char *path)
{
  const char *slash = strrchr (path, '/');

  return slash ? slash + 1 : path;
}

void
qcow2_describe (const struct qcow2_image *img, char *buf, size_t len)
{
  const struct qcow2_header *h = &img->hdr;
  size_t used = 0;

#define ADD(...)                                                        \
  do {                                                                  \
    if (used < len)                                                     \
      used += snprintf (buf + used, len - used, __VA_ARGS__);           \
  } while (0)

  ADD ("qcow2 v%" PRIu32 ", cluster size %" PRIu64, h->version,
       h->cluster_size);
  if (h->l2_entry_size == 16)
    ADD (", extended L2");
  if (h->compression_type == QCOW2_COMPRESSION_ZSTD)
    ADD (", zstd compression");
  if (h->data_file)
    ADD (", data file %s", h->data_file);
  if (h->nb_snapshots)
    ADD (", %" PRIu32 " snapshot%s", h->nb_snapshots,
         h->nb_snapshots == 1 ? "" : "s");
  if (img->served_snapshot)
    ADD (", serving snapshot %.32s '%.64s'", img->served_snapshot->id,
         img->served_snapshot->name);
  if (h->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
    ADD (", marked corrupt");
  for (const struct qcow2_image *i = img; i->backing.kind != BACKING_NONE;
       i = i->backing.image) {
    ADD (", backing %s (%s)", basename_of (i->backing.path),
         i->backing.kind == BACKING_QCOW2 ? "qcow2" : "raw");
    if (i->backing.kind == BACKING_RAW)
      break;
  }
#undef ADD
}

void
qcow2_debug_stats (struct qcow2_image *img)
{
  struct mcache_stats st;

  mcache_stats (img->cache, &st);
  qdebug ("l2 cache: %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64
          " evictions, %" PRIu64 " slices held", st.hits, st.misses,
          st.evictions, st.slices);
}
