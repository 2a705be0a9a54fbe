/* qcow2j lib: turning an open image writable, flushing, and closing it
 * cleanly (docs/journal-format.md sections 11 and 12).
 *
 * Opening for writing: refuse what cannot be journalled, take QEMU's
 * writer locks, replay a dirty journal, put a new journal area past the
 * end of the file, rewrite the header extensions (our journal extension
 * first, the feature name table naming our bits), and set "journal
 * valid".  "journal dirty" is set lazily, before the first transaction
 * (the pre-commit hook).  Closing: commit, checkpoint everything, clear
 * "dirty", clear "valid", and give back the journal's space when it is
 * the end of the file: what remains is plain qcow2 that qemu-img checks
 * clean.
 */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "byteorder.h"
#include "cleanup.h"
#include "crc32c.h"
#include "format.h"
#include "image-internal.h"
#include "journal-format.h"
#include "lock.h"
#include "log.h"
#include "minmax.h"

#define JOURNAL_SIZE (4ULL << 20)       /* default area size */
#define QJ_DIRTY_NAME "qcow2j journal dirty"
#define QJ_VALID_NAME "qcow2j journal valid"

/* Write an 8-byte header word (a feature word) and flush. */
static int
write_header_word (struct qcow2_image *img, uint64_t offset, uint64_t value)
{
  uint8_t b[8];

  put_be64 (b, value);
  if (hostio_pwrite (img->file, b, 8, offset) == -1 ||
      hostio_flush (img->file) == -1) {
    qerror ("%s: write header: %m", img->file->name);
    return -1;
  }
  return 0;
}

/* The Q2JL extension's 32 data bytes. */
static void
encode_journal_ext (uint8_t *d, uint64_t offset, uint64_t size, uint64_t id)
{
  memset (d, 0, QJ_EXT_LENGTH);
  if (size != 0) {
    put_be64 (d, offset);
    put_be64 (d + 8, size);
    put_be64 (d + 16, id);
    put_be32 (d + 24, QJ_VERSION);
  }
  put_be32 (d + 28, crc32c (0, d, 28));
}

/* Build cluster 0 (cs bytes, header already in c0) with the extension
 * area: Q2JL first (so that its data bytes sit in the first sector), a
 * feature name table (QEMU's entries and ours, or only ours, or none,
 * whatever fits: small clusters have little room, and QEMU itself leaves
 * the table out of them), every other extension as it was, the backing
 * file name.  Returns false if even Q2JL does not fit. */
static bool
layout_extensions (struct qcow2_image *img, uint8_t *c0, size_t cs,
                   const uint8_t *journal_ext, unsigned table)
{
  const struct qcow2_header *h = &img->hdr;
  size_t pos = h->header_length;
  size_t first = table == 2 ? 0 : qcow2_nr_qemu_features;
  size_t nr = table == 0 ? 0 : qcow2_nr_qemu_features + 2 - first;
  size_t need = 8 + QJ_EXT_LENGTH + (nr ? 8 + nr * 48 : 0) + 8 +
    (h->backing_file ? strlen (h->backing_file) : 0);

  for (size_t i = 0; i < h->nr_extensions; i++)
    need += 8 + ROUND_UP (h->extensions[i].length, 8u);
  if (pos + need > cs)
    return false;

  memset (c0 + pos, 0, cs - pos);
  put_be32 (c0 + pos, QJ_EXT_MAGIC);
  put_be32 (c0 + pos + 4, QJ_EXT_LENGTH);
  memcpy (c0 + pos + 8, journal_ext, QJ_EXT_LENGTH);
  pos += 8 + QJ_EXT_LENGTH;

  if (nr > 0) {
    put_be32 (c0 + pos, QCOW2_EXT_FEATURE_NAMES);
    put_be32 (c0 + pos + 4, nr * 48);
    pos += 8;
    for (size_t i = first; i < qcow2_nr_qemu_features + 2; i++, pos += 48) {
      bool ours = i >= qcow2_nr_qemu_features;
      const char *name = !ours ? qcow2_qemu_features[i].name
        : i == qcow2_nr_qemu_features ? QJ_DIRTY_NAME : QJ_VALID_NAME;

      c0[pos] = !ours ? qcow2_qemu_features[i].type
        : i == qcow2_nr_qemu_features ? 0 : 2;
      c0[pos + 1] = !ours ? qcow2_qemu_features[i].bit : 60;
      memcpy (c0 + pos + 2, name, strlen (name));
    }
  }
  for (size_t i = 0; i < h->nr_extensions; i++) {
    const struct qcow2_extension *e = &h->extensions[i];

    put_be32 (c0 + pos, e->type);
    put_be32 (c0 + pos + 4, e->length);
    memcpy (c0 + pos + 8, e->data, e->length);
    pos += 8 + ROUND_UP (e->length, 8u);
  }
  pos += 8;                                     /* end of extensions */
  if (h->backing_file) {
    memcpy (c0 + pos, h->backing_file, strlen (h->backing_file));
    put_be64 (c0 + 8, pos);                        /* backing_file_offset */
  }
  return true;
}

/* Rewrite the header cluster with the journal extension, in one write as
 * QEMU does. */
static int
write_extensions (struct qcow2_image *img, uint64_t joffset, uint64_t jsize,
                  uint64_t jid)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t cs = h->cluster_size;
  CLEANUP_FREE uint8_t *c0 = calloc (1, cs);
  uint8_t ext[QJ_EXT_LENGTH];
  unsigned table = 3;

  if (c0 == NULL) {
    qerror ("calloc: %m");
    return -1;
  }
  if (hostio_pread (img->file, c0, h->header_length, 0) == -1) {
    qerror ("%s: read header: %m", img->file->name);
    return -1;
  }
  encode_journal_ext (ext, joffset, jsize, jid);
  while (table-- > 0 && !layout_extensions (img, c0, cs, ext, table))
    ;
  if (table == (unsigned) -1) {
    qerror ("%s: no room in the header cluster for the journal extension",
            img->file->name);
    errno = ENOSPC;
    return -1;
  }
  if (hostio_pwrite (img->file, c0, cs, 0) == -1 ||
      hostio_flush (img->file) == -1) {
    qerror ("%s: write header: %m", img->file->name);
    return -1;
  }
  if (h->backing_file)
    img->hdr.backing_file_offset =
      get_be64 (c0 + 8);
  return 0;
}

/* Journal hooks ---------------------------------------------------------- */

static int
pre_commit (void *opaque)
{
  struct qcow2_image *img = opaque;
  int r = 0;

  /* Guest data in an external data file must be durable before the
   * transaction that maps it. */
  if (img->data != img->file && hostio_flush (img->data) == -1) {
    qerror ("%s: flush: %m", img->data->name);
    return -1;
  }
  pthread_mutex_lock (&img->dirty_lock);
  if (!img->dirty_durable && !img->dirty_written) {
    uint8_t b[8];

    put_be64 (b, img->hdr.incompatible_features | QJ_INCOMPAT_DIRTY);
    if (hostio_pwrite (img->file, b, 8, QCOW2_OFF_INCOMPATIBLE) == -1) {
      qerror ("%s: set the journal dirty bit: %m", img->file->name);
      r = -1;
    }
    else {
      img->dirty_written = true;
      r = 1;                    /* durable before the transaction */
    }
  }
  pthread_mutex_unlock (&img->dirty_lock);
  return r;
}

static void
sealed (void *opaque)
{
  struct qcow2_image *img = opaque;

  mcache_seal (img->cache);
}

static void
durable (void *opaque)
{
  struct qcow2_image *img = opaque;

  mcache_durable (img->cache);
  /* The commit's flushes covered the dirty bit write. */
  if (img->dirty_written)
    __atomic_store_n (&img->dirty_durable, true, __ATOMIC_RELEASE);
}

/* Turning writable ------------------------------------------------------- */

static int
refuse (struct qcow2_image *img, int err, const char *why)
{
  qerror ("%s: cannot write to this image: %s", img->file->name, why);
  errno = err;
  return -1;
}

/* Read the header, L1 and refcount tables again after a replay changed
 * them in place. */
static int
reload_metadata (struct qcow2_image *img)
{
  struct qcow2_header h;
  int64_t size = hostio_size (img->file);

  if (size == -1 || qcow2_header_read (img->file, size, &h) == -1)
    return -1;
  qcow2_header_free (&img->hdr);
  img->hdr = h;
  img->file_size = size;
  free (img->l1);
  img->l1 = NULL;
  free (img->reftable);
  img->reftable = NULL;
  return qcow2_read_l1 (img) == -1 || qcow2_refcounts_load (img) == -1
    ? -1 : 0;
}

static int
replay (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;
  struct journal_replay_stats st;
  struct journal *j;

  if (!(h->autoclear_features & QJ_AUTOCLEAR_VALID) || !h->journal.crc_ok)
    return refuse (img, EINVAL, "its qcow2j journal is marked dirty but "
                   "is not valid (was the image changed by another "
                   "program?): it needs a manual repair");
  j = journal_open (img->file, h->journal.offset, h->journal.size,
                    h->journal.id, h->cluster_size);
  if (j == NULL || journal_replay (j, &st) == -1) {
    journal_free (j);
    return -1;
  }
  journal_free (j);
  qdebug ("%s: journal replayed: %" PRIu64 " transactions, %" PRIu64
          " records", img->file->name, st.transactions, st.records);
  img->hdr.incompatible_features &= ~QJ_INCOMPAT_DIRTY;
  if (write_header_word (img, QCOW2_OFF_INCOMPATIBLE,
                         img->hdr.incompatible_features) == -1)
    return -1;
  return reload_metadata (img);
}

/* The area a previous session used (the extension keeps its place after
 * a clean close) can hold the new journal if it lies inside the file and
 * no cluster of it is in use (a journal-unaware writer may have taken
 * them since). */
static bool
reusable_area (struct qcow2_image *img)
{
  const struct qcow2_journal_ext *e = &img->hdr.journal;
  const uint64_t cs = img->hdr.cluster_size;

  if (!e->crc_ok || e->size < QJ_MIN_AREA || e->size > QJ_MAX_AREA ||
      e->size % QJ_BLOCK != 0 || !IS_ALIGNED (e->offset, cs) ||
      e->offset % QJ_BLOCK != 0 ||
      !IS_ALIGNED (e->size, cs) || e->offset < cs ||
      e->offset > img->next_free || e->size > img->next_free - e->offset)
    return false;
  for (uint64_t c = e->offset; c < e->offset + e->size; c += cs) {
    uint64_t rc;

    if (qcow2_refcount_get (img, c, &rc) == -1 || rc != 0)
      return false;
  }
  return true;
}

bool
qcow2_journal_dirty (const struct qcow2_image *img)
{
  return img->hdr.incompatible_features & QJ_INCOMPAT_DIRTY;
}

int
qcow2_prepare_writable (struct qcow2_image *img)
{
  int fd;

  if (img->write_ready)
    return 0;
  if (!img->file_rw)
    return refuse (img, EROFS, "it is open read-only");
  if (img->data != img->file && !img->data_rw)
    return refuse (img, EROFS, "its external data file is read-only");
  if (img->hdr.version < 3)
    return refuse (img, ENOTSUP, "version 2 images are served read-only; "
                   "upgrade it with: qemu-img amend -o compat=1.1");
  if (img->hdr.incompatible_features & QCOW2_INCOMPAT_CORRUPT)
    return refuse (img, EROFS, "it is marked corrupt; "
                   "repair it with: qemu-img check -r all");

  fd = hostio_file_fd (img->file);
  if (img->lock_files && fd >= 0 &&
      qcow2_lock_fd (fd, img->file->name, true) == -1)
    return -1;
  fd = hostio_file_fd (img->data);
  if (img->lock_files && img->data != img->file && fd >= 0 &&
      qcow2_lock_fd (fd, img->data->name, true) == -1)
    return -1;
  img->write_ready = true;
  return 0;
}

/* Under setup_lock. */
static int commit (struct qcow2_image *img, bool *covered);

/* After the refcounts are rebuilt and checkpointed: clear QEMU's dirty
 * bit (keeping ours as it is). */
static int
clear_qemu_dirty (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->dirty_lock);

  img->hdr.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
  return write_header_word (img, QCOW2_OFF_INCOMPATIBLE,
                            img->hdr.incompatible_features |
                            (img->dirty_written ? QJ_INCOMPAT_DIRTY : 0));
}

static int
make_writable (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  uint64_t jsize, jarea, jid, old_end;
  bool stale_refcounts, covered;

  if (img->writable)
    return 0;
  if (qcow2_prepare_writable (img) == -1 ||
      qcow2_refcounts_load (img) == -1)
    return -1;
  if ((img->hdr.incompatible_features & QJ_INCOMPAT_DIRTY) &&
      replay (img) == -1)
    return -1;
  if (qcow2_bitmaps_mark_in_use (img) == -1)
    return -1;
  /* QEMU's dirty bit: refcounts lag (lazy refcounts); rebuilt below,
   * once the journal exists.  Until then nothing may trust them, not
   * even to reuse an old journal area. */
  stale_refcounts = img->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY;
  old_end = img->file_size;

  /* The journal area: the previous one if its clusters are still free,
   * else new space past everything in use.  Allocation starts past both
   * the area and the end of the file. */
  img->next_free = ROUND_UP (MAX (img->file_size, cs), cs);
  if (!stale_refcounts && reusable_area (img)) {
    jarea = img->hdr.journal.offset;
    jsize = img->hdr.journal.size;
  }
  else {
    jsize = MAX (ROUND_UP (JOURNAL_SIZE, cs), (uint64_t) QJ_MIN_AREA);
    jsize = ROUND_UP (jsize, (uint64_t) QJ_BLOCK);
    /* Blocks of the journal are 4 KiB aligned, whatever the clusters. */
    jarea = ROUND_UP (img->next_free, MAX (cs, (uint64_t) QJ_BLOCK));
    img->next_free = jarea + jsize;
    if (img->file->ops->truncate (img->file, img->next_free) == -1) {
      qerror ("%s: extend for the journal: %m", img->file->name);
      return -1;
    }
  }
  img->file_size = img->next_free;
  if (img->data == img->file)
    img->data_size = img->next_free;
  do {
    if (getrandom (&jid, sizeof jid, 0) != sizeof jid) {
      qerror ("getrandom: %m");
      return -1;
    }
  } while (jid == 0 || jid == img->hdr.journal.id);

  img->journal = journal_create (img->file, jarea, jsize, jid, cs);
  if (img->journal == NULL ||
      write_extensions (img, jarea, jsize, jid) == -1)
    return -1;
  img->hdr.autoclear_features |= QJ_AUTOCLEAR_VALID;
  if (write_header_word (img, 88, img->hdr.autoclear_features) == -1)
    return -1;
  img->hdr.journal.present = img->hdr.journal.crc_ok = true;
  img->hdr.journal.offset = jarea;
  img->hdr.journal.size = jsize;
  img->hdr.journal.id = jid;

  {
    const struct journal_hooks hooks = {
      .pre_commit = pre_commit, .sealed = sealed, .durable = durable,
    };
    journal_set_hooks (img->journal, &hooks, img);
  }
  img->ring_high_water = journal_ring_size (img->journal) / 2;
  img->last_change = qcow2_now ();
  if (stale_refcounts) {
    qdebug ("%s: rebuilding refcounts left stale by QEMU", img->file->name);
    if (qcow2_rebuild_refcounts (img, old_end) == -1 ||
        commit (img, &covered) == -1 ||
        qcow2_checkpoint (img) == -1 ||
        clear_qemu_dirty (img) == -1)
      return -1;
  }
  __atomic_store_n (&img->writable, true, __ATOMIC_RELEASE);
  return 0;
}

int
qcow2_make_writable (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->setup_lock);

  return make_writable (img);
}

int
qcow2_begin_write (struct qcow2_image *img)
{
  if (!__atomic_load_n (&img->writable, __ATOMIC_ACQUIRE)) {
    if (!img->write_ready) {
      errno = EROFS;
      return -1;
    }
    if (qcow2_make_writable (img) == -1) {
      /* Set-up failed: nothing was committed; refuse writes from now. */
      if (img->failed == 0)
        img->failed = errno ? errno : EIO;
      return -1;
    }
  }
  if (img->failed) {
    errno = img->failed;
    return -1;
  }
  return 0;
}

/* Flushing --------------------------------------------------------------- */

/* Commit the open transaction, checkpointing first if the ring is full.
 * *covered says whether a commit sealed after the call began completed:
 * its flush then covered every write completed before the call. */
static int
commit (struct qcow2_image *img, bool *covered)
{
  uint64_t sealed_before, sealed_now, durable_now;

  journal_generations (img->journal, &sealed_before, &durable_now);
  for (;;) {
    if (journal_commit (img->journal, NULL) == 0)
      break;
    if (errno != EAGAIN || qcow2_checkpoint (img) == -1)
      return -1;
  }
  journal_generations (img->journal, &sealed_now, &durable_now);
  *covered = durable_now > sealed_before;
  return 0;
}

int
qcow2_flush (struct qcow2_image *img)
{
  bool covered;

  /* The first write sets up the journal, then publishes 'writable'. */
  if (!__atomic_load_n (&img->writable, __ATOMIC_ACQUIRE))
    return 0;
  if (img->failed) {
    errno = img->failed;
    return -1;
  }
  if (commit (img, &covered) == -1)
    return -1;
  if (!covered) {
    /* Nothing to commit: only in-place data to make durable.  A failed
     * host flush may have lost dirty pages that a later flush would not
     * report again: no flush may succeed after it. */
    if (hostio_flush (img->file) == -1 ||
        (img->data != img->file && hostio_flush (img->data) == -1)) {
      qerror ("%s: flush: %m", img->file->name);
      if (img->failed == 0)
        img->failed = errno ? errno : EIO;
      journal_fail (img->journal, img->failed);
      return -1;
    }
  }
  return 0;
}

int
qcow2_commit_if_large (struct qcow2_image *img)
{
  bool covered;

  /* Keep transactions well below the ring, and wake the checkpoint when
   * the ring fills. */
  if (journal_open_bytes (img->journal) > journal_ring_size (img->journal) / 8 &&
      commit (img, &covered) == -1)
    return -1;
  if (journal_ring_used (img->journal) > img->ring_high_water)
    qcow2_checkpoint_wake (img);
  return 0;
}

/* Clean close ------------------------------------------------------------ */

int
qcow2_close_writable (struct qcow2_image *img)
{
  bool covered;
  uint64_t jarea = img->hdr.journal.offset, jsize = img->hdr.journal.size;

  if (!img->writable)
    return 0;
  if (img->failed) {
    /* Its journal is kept, and replayed at the next writable open. */
    errno = img->failed;
    return -1;
  }
  if (commit (img, &covered) == -1 ||
      qcow2_checkpoint (img) == -1)
    return -1;
  if (journal_ring_used (img->journal) != 0) {
    qerror ("%s: close: the journal is not empty after a checkpoint",
            img->file->name);
    errno = EIO;
    return -1;
  }
  pthread_mutex_lock (&img->dirty_lock);
  if (img->dirty_written) {
    if (write_header_word (img, QCOW2_OFF_INCOMPATIBLE,
                           img->hdr.incompatible_features) == -1) {
      pthread_mutex_unlock (&img->dirty_lock);
      return -1;
    }
    img->dirty_written = img->dirty_durable = false;
  }
  pthread_mutex_unlock (&img->dirty_lock);

  /* Invalidate the journal.  The extension keeps the area's place as a
   * hint for the next session (with a journal id no superblock holds). */
  img->hdr.autoclear_features &= ~QJ_AUTOCLEAR_VALID;
  if (write_header_word (img, 88, img->hdr.autoclear_features) == -1)
    return -1;
  /* Its clusters were never refcounted: cut them off the end of the file,
   * or give their blocks back to the host. */
  if (jarea + jsize == img->next_free) {
    uint8_t d[QJ_EXT_LENGTH];

    encode_journal_ext (d, 0, 0, 0);
    if (hostio_pwrite (img->file, d, sizeof d,
                       img->hdr.header_length + 8) == -1 ||
        hostio_flush (img->file) == -1 ||
        img->file->ops->truncate (img->file, jarea) == -1)
      qdebug ("%s: truncate the journal away: %m", img->file->name);
  }
  else {
    uint8_t d[QJ_EXT_LENGTH];

    encode_journal_ext (d, jarea, jsize, 0);
    if (hostio_pwrite (img->file, d, sizeof d,
                       img->hdr.header_length + 8) == -1 ||
        hostio_flush (img->file) == -1 ||
        img->file->ops->punch (img->file, jarea, jsize) == -1)
      qdebug ("%s: discard the journal: %m", img->file->name);
  }
  img->writable = false;
  return 0;
}
