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
/* Q2JL, a feature name table of our two entries, an end marker. */
#define MAX_ADDITIONS (8 + QJ_EXT_LENGTH + 8 + 2 * 48 + 8)

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

/* Write len bytes at offset and flush. */
static int
write_durably (struct qcow2_image *img, const void *buf, size_t len,
               uint64_t offset)
{
  if (hostio_pwrite (img->file, buf, len, offset) == -1 ||
      hostio_flush (img->file) == -1) {
    qerror ("%s: write header: %m", img->file->name);
    return -1;
  }
  return 0;
}

/* Does the (last) feature name table name our two bits? */
static bool
names_our_bits (const struct qcow2_header *h)
{
  const char *dirty = qcow2_feature_name (h, 0, 60);
  const char *valid = qcow2_feature_name (h, 2, 60);

  return dirty && strcmp (dirty, QJ_DIRTY_NAME) == 0 &&
    valid && strcmp (valid, QJ_VALID_NAME) == 0;
}

/* Our bits' entries, as the feature name table in memory. */
static int
remember_our_names (struct qcow2_header *h)
{
  struct qcow2_feature_name *f = calloc (2, sizeof *f);

  if (f == NULL) {
    qerror ("calloc: %m");
    return -1;
  }
  f[0].type = 0;
  f[0].bit = 60;
  strcpy (f[0].name, QJ_DIRTY_NAME);
  f[1].type = 2;
  f[1].bit = 60;
  strcpy (f[1].name, QJ_VALID_NAME);
  free (h->feature_names);
  h->feature_names = f;
  h->nr_feature_names = 2;
  return 0;
}

/* The extensions to add after the last one: Q2JL (data bytes data) if
 * the header lacks it, our feature names if asked, and an end marker.
 * Returns their length (0: nothing to add), and where the Q2JL data
 * bytes will be. */
static size_t
build_additions (const struct qcow2_header *h, const uint8_t *data,
                 bool names, uint8_t *add, uint64_t *journal_pos)
{
  size_t n = 0;

  memset (add, 0, MAX_ADDITIONS);
  if (!h->journal.present) {
    put_be32 (add, QJ_EXT_MAGIC);
    put_be32 (add + 4, QJ_EXT_LENGTH);
    memcpy (add + 8, data, QJ_EXT_LENGTH);
    *journal_pos = h->extensions_end + 8;
    n = 8 + QJ_EXT_LENGTH;
  }
  if (names) {
    put_be32 (add + n, QCOW2_EXT_FEATURE_NAMES);
    put_be32 (add + n + 4, 2 * 48);
    add[n + 8] = 0;                             /* incompatible */
    add[n + 9] = 60;
    memcpy (add + n + 10, QJ_DIRTY_NAME, strlen (QJ_DIRTY_NAME));
    add[n + 56] = 2;                            /* autoclear */
    add[n + 57] = 60;
    memcpy (add + n + 58, QJ_VALID_NAME, strlen (QJ_VALID_NAME));
    n += 8 + 2 * 48;
  }
  return n ? n + 8 : 0;                         /* the new end marker */
}

/* Do n bytes fit at the end of the extension area, the backing file name
 * staying where it is (*name_pos = 0) or moving to the end of the
 * cluster (*name_pos), where the old name and the new extensions leave
 * room for it? */
static bool
room_for (const struct qcow2_header *h, uint64_t n, uint64_t *name_pos)
{
  const uint64_t end = h->extensions_end;
  const uint64_t len = h->backing_file_size;

  *name_pos = 0;
  if (h->backing_file == NULL)
    return end + n <= h->cluster_size;
  if (end + n <= h->backing_file_offset)
    return true;
  /* Without an end marker the extensions run into the name: moving it
   * would let readers parse the old name as extensions. */
  if (!h->has_end_marker)
    return false;
  *name_pos = (h->cluster_size - len) & ~(uint64_t) 7;
  return *name_pos >= end + n && *name_pos >= h->backing_file_offset + len;
}

/* Do the header, its extensions, n bytes more and the backing file name
 * (before and after) all lie in the first sector? */
static bool
fits_first_sector (const struct qcow2_header *h, uint64_t n)
{
  const uint64_t len = h->backing_file ? h->backing_file_size : 0;

  return h->extensions_end + n + len <= 512 &&
    (len == 0 || h->backing_file_offset + len <= 512);
}

/* When the backing file name would have to move over itself (small
 * clusters), but everything stays in the first sector: build that sector
 * with the additions and the name after them, and write it at once (a
 * sector is written whole or not at all, M3). */
static int
rewrite_first_sector (struct qcow2_image *img, const uint8_t *add, size_t n)
{
  struct qcow2_header *h = &img->hdr;
  const uint64_t end = h->extensions_end;
  const uint64_t len = h->backing_file ? h->backing_file_size : 0;
  uint8_t sector[512];

  if (!fits_first_sector (h, n)) {
    qerror ("%s: no room in the header cluster for the journal extension",
            img->file->name);
    errno = ENOSPC;
    return -1;
  }
  if (hostio_pread (img->file, sector, sizeof sector, 0) == -1) {
    qerror ("%s: read header: %m", img->file->name);
    return -1;
  }
  memcpy (sector + end, add, n);
  if (len > 0) {
    memcpy (sector + end + n, h->backing_file, len);
    put_be64 (sector + 8, end + n);
  }
  if (write_durably (img, sector, sizeof sector, 0) == -1)
    return -1;
  if (len > 0)
    h->backing_file_offset = end + n;
  return 0;
}

/* Is there room in cluster 0 for at least the Q2JL extension? */
static bool
header_has_room (const struct qcow2_header *h)
{
  uint8_t data[QJ_EXT_LENGTH] = { 0 };
  uint8_t add[MAX_ADDITIONS];
  uint64_t journal_pos, name_pos;
  size_t n = build_additions (h, data, false, add, &journal_pos);

  return n == 0 || room_for (h, n, &name_pos) || fits_first_sector (h, n);
}

/* Put the journal's location in the Q2JL extension (docs/journal-format.md
 * 12.1, O4 and O6), adding the extension, and a feature name table naming
 * our bits, if the header lacks them.
 *
 * Cluster 0 is never rewritten: a write of several sectors can be torn,
 * and a torn header cluster (extensions of two layouts, a backing file
 * name half moved) is an image nobody can open.  What is added goes after
 * the last extension, into bytes no reader uses, and becomes part of the
 * header only through single-sector "switch" writes, each after a flush:
 *
 * 1. if the backing file name is in the way, a copy of it at the end of
 *    the cluster, then the backing_file_offset word pointing to it;
 * 2. the new extensions but their first 8 bytes, and a new end marker;
 * 3. those first 8 bytes over the old end marker.
 *
 * A crash leaves the old header or the new one.  An existing Q2JL only has
 * its data bytes rewritten in place: DIRTY is clear, so a torn result only
 * makes the (empty) journal untrusted (3.3). */
static int
write_extensions (struct qcow2_image *img, uint64_t joffset, uint64_t jsize,
                  uint64_t jid)
{
  struct qcow2_header *h = &img->hdr;
  const uint64_t end = h->extensions_end;
  uint8_t data[QJ_EXT_LENGTH];
  uint8_t add[MAX_ADDITIONS];
  uint64_t journal_pos = h->journal.pos, name_pos;
  bool add_names = !names_our_bits (h);
  size_t n;

  encode_journal_ext (data, joffset, jsize, jid);
  if (h->journal.present &&
      write_durably (img, data, sizeof data, journal_pos) == -1)
    return -1;
  if (h->journal.present && !add_names)
    return 0;

  /* Without the names if they do not fit (small clusters): QEMU then
   * calls the dirty bit "Unknown incompatible feature". */
  n = build_additions (h, data, add_names, add, &journal_pos);
  if (add_names && !room_for (h, n, &name_pos) &&
      !fits_first_sector (h, n)) {
    add_names = false;
    n = build_additions (h, data, false, add, &journal_pos);
  }
  if (n == 0)
    return 0;
  if (!room_for (h, n, &name_pos)) {
    if (rewrite_first_sector (img, add, n) == -1)
      return -1;
  }
  else {
    /* 1. Move the backing file name out of the way. */
    if (name_pos != 0) {
      uint8_t word[8];

      put_be64 (word, name_pos);
      if (write_durably (img, h->backing_file, h->backing_file_size,
                         name_pos) == -1 ||
          write_durably (img, word, 8, 8) == -1)
        return -1;
      h->backing_file_offset = name_pos;
    }
    /* 2 and 3. */
    if (write_durably (img, add + 8, n - 8, end + 8) == -1 ||
        write_durably (img, add, 8, end) == -1)
      return -1;
  }
  h->extensions_end = end + n - 8;
  h->has_end_marker = true;
  h->journal.present = true;
  h->journal.pos = journal_pos;
  return add_names ? remember_our_names (h) : 0;
}

/* Write an 8-byte header word (a feature word) and flush. */
static int
write_header_word (struct qcow2_image *img, uint64_t offset, uint64_t value)
{
  uint8_t b[8];

  put_be64 (b, value);
  return write_durably (img, b, 8, offset);
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
  return qcow2_reload_metadata (img);
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
  if (img->replayed_in_memory)
    return refuse (img, EROFS, "its dirty journal was replayed in memory "
                   "for a read-only connection; restart the server to "
                   "write");
  if (img->hdr.journal.present && img->hdr.journal.pos == 0)
    return refuse (img, EINVAL, "its qcow2j journal extension (Q2JL) has "
                   "a length other than 32");
  if (!header_has_room (&img->hdr))
    return refuse (img, ENOSPC, "no room in the header cluster for the "
                   "journal extension (a shorter backing file name, set "
                   "with qemu-img rebase -u, makes room)");

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

  /* Host space for the whole ring now: a commit must never fail for want
   * of it (that would stop every write until the server restarts). */
  if (hostio_reserve (img->file, jarea, jsize) == -1 && errno != ENOTSUP) {
    qerror ("%s: reserve space for the journal: %m", img->file->name);
    return -1;
  }
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
    if (qcow2_make_writable (img) == -1)
      /* Nothing was committed, but the set-up may be half done. */
      return qcow2_stop_writes (img, "journal set-up failed");
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
      return qcow2_stop_writes (img, "a host flush failed");
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
  int64_t size;

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
                       img->hdr.journal.pos) == -1 ||
        hostio_flush (img->file) == -1 ||
        img->file->ops->truncate (img->file, jarea) == -1)
      qdebug ("%s: truncate the journal away: %m", img->file->name);
  }
  else {
    uint8_t d[QJ_EXT_LENGTH];

    encode_journal_ext (d, jarea, jsize, 0);
    if (hostio_pwrite (img->file, d, sizeof d,
                       img->hdr.journal.pos) == -1 ||
        hostio_flush (img->file) == -1 ||
        img->file->ops->punch (img->file, jarea, jsize) == -1)
      qdebug ("%s: discard the journal: %m", img->file->name);
  }
  /* Space reserved past the end of the file (qcow2_reserve_space). */
  size = hostio_size (img->file);
  if (size >= 0 && img->space_reserved > (uint64_t) size &&
      img->file->ops->punch (img->file, size,
                             img->space_reserved - size) == -1)
    qdebug ("%s: give back reserved space: %m", img->file->name);
  img->writable = false;
  return 0;
}
