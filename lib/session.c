/* qcow2j lib: the write session: the gate every write, zero, trim and
 * flush passes, the journal's set-up at the first of them, and the clean
 * close (docs/journal-format.md sections 11 and 12).
 *
 * The session's life is the state word of state.c.  qcow2_prepare_writable
 * moves READ_ONLY to READY after refusing what cannot be journalled and
 * taking QEMU's writer locks, changing nothing in the file.  The first
 * write, zero or trim sets the journal up (READY to JOURNALLED: 12.1, O2
 * to O8): replay a dirty journal, mark persistent bitmaps in use, put the
 * journal area in the previous session's area or past the end of the
 * file, add our header extension, set "journal valid", and rebuild
 * refcounts that QEMU left stale.  So an image served writable but only
 * read is never modified.  Closing commits, checkpoints, clears our bits
 * and gives the journal's space back (12.2, C1 to C6): what remains is
 * plain qcow2 that qemu-img checks clean.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/random.h>

#include "bitmaps.h"
#include "checkpoint.h"
#include "cleanup.h"
#include "clock.h"
#include "commit.h"
#include "dirty.h"
#include "discard.h"
#include "format.h"
#include "header-write.h"
#include "journal-format.h"
#include "lock.h"
#include "log.h"
#include "metamap.h"
#include "minmax.h"
#include "rebuild.h"
#include "refcount.h"
#include "session.h"
#include "state.h"
#include "tables.h"
#include "write.h"

#define JOURNAL_SIZE (4ULL << 20)       /* default area size */

static int
refuse (struct qcow2_image *img, int err, const char *why)
{
  qerror ("%s: cannot write to this image: %s", img->file->name, why);
  errno = err;
  return -1;
}

bool
qcow2_journal_dirty (const struct qcow2_image *img)
{
  return img->hdr.incompatible_features & QJ_INCOMPAT_DIRTY;
}

/* Under setup_lock. */
static int
prepare (struct qcow2_image *img)
{
  int fd;

  switch (qcow2_state (img)) {
  case SESSION_READ_ONLY:
    break;
  case SESSION_REPLAYED_IN_MEMORY:
    return refuse (img, EROFS, "its dirty journal was replayed in memory "
                   "for a read-only connection; restart the server to "
                   "write");
  case SESSION_CLOSED:
    return refuse (img, EROFS, "it has been closed");
  case SESSION_READY:
  case SESSION_JOURNALLED:
  case SESSION_FAILED:
    return 0;                   /* writes then say why they fail */
  }
  if (!img->file_rw)
    return refuse (img, EROFS, "it is open read-only");
  if (img->data != img->file && !img->data_rw)
    return refuse (img, EROFS, "its external data file is read-only");
  if (img->hdr.version < 3) {
    qerror ("%s: cannot write to this image: it is a version 2 image; stop "
            "the server, then upgrade it with: qemu-img amend -f qcow2 "
            "-o compat=1.1 %s", img->file->name, img->file->name);
    errno = ENOTSUP;
    return -1;
  }
  if (img->hdr.incompatible_features & QCOW2_INCOMPAT_CORRUPT) {
    qerror ("%s: cannot write to this image: it is marked corrupt; stop "
            "the server, then repair it with: qemu-img check -r all %s",
            img->file->name, img->file->name);
    errno = EROFS;
    return -1;
  }
  if (img->hdr.journal.present && img->hdr.journal.pos == 0)
    return refuse (img, EINVAL, "its qcow2j journal extension (Q2JL) has "
                   "a length other than 32");
  if (!qcow2_header_has_room (&img->hdr))
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
  qcow2_state_move (img, SESSION_READ_ONLY, SESSION_READY);
  return 0;
}

int
qcow2_prepare_writable (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->setup_lock);

  return prepare (img);
}

/* Setting up ------------------------------------------------------------- */

/* O2: replay a dirty journal in place, then validate what the header now
 * names before clearing DIRTY (until then a crash replays again). */
static int
replay (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;
  struct journal_replay_stats st;
  struct journal *j;

  if (!(h->autoclear_features & QJ_AUTOCLEAR_VALID) || !h->journal.intact)
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
  if (qcow2_reload_metadata (img) == -1)
    return -1;
  return qcow2_dirty_clear_replayed (img);
}

/* O3: the area a previous session used (the extension keeps its place
 * after a clean close) can hold the new journal if it lies inside the
 * file and no cluster of it is in use (a journal-unaware writer may have
 * taken them since). */
static bool
reusable_area (struct qcow2_image *img)
{
  const struct qcow2_journal_ext *e = &img->hdr.journal;
  const uint64_t cs = img->hdr.cluster_size;

  uint64_t where;

  if (!e->intact || e->size < QJ_MIN_AREA || e->size > QJ_MAX_AREA ||
      e->size % QJ_BLOCK != 0 || !IS_ALIGNED (e->offset, cs) ||
      e->offset % QJ_BLOCK != 0 ||
      !IS_ALIGNED (e->size, cs) || e->offset < cs ||
      e->offset > img->next_free || e->size > img->next_free - e->offset ||
      qcow2_metamap_find (img, e->offset, e->size, &where) != META_NONE)
    return false;
  for (uint64_t c = e->offset; c < e->offset + e->size; c += cs) {
    uint64_t rc;

    if (qcow2_refcount_get (img, c, &rc) == -1 || rc != 0)
      return false;
  }
  return true;
}

/* Refcounts QEMU left stale (its dirty bit, lazy refcounts): rebuild them
 * through the new journal, commit, checkpoint, and only then clear
 * QEMU's bit.  A crash on the way leaves the bit set, and the rebuild
 * runs again. */
static int
rebuild_stale_refcounts (struct qcow2_image *img, uint64_t old_end)
{
  bool covered;

  qdebug ("%s: rebuilding refcounts left stale by QEMU", img->file->name);
  if (qcow2_rebuild_refcounts (img, old_end) == -1 ||
      qcow2_commit (img, &covered) == -1 ||
      qcow2_checkpoint (img) == -1)
    return -1;
  return qcow2_dirty_clear_qemu (img);
}

/* Under setup_lock, in SESSION_READY. */
static int
set_up (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  uint64_t jsize, jarea, jid, old_end;
  bool stale_refcounts;

  if (qcow2_refcounts_load (img) == -1)
    return -1;
  if (qcow2_journal_dirty (img) && replay (img) == -1)
    return -1;
  if (qcow2_bitmaps_mark_in_use (img) == -1 ||
      qcow2_metamap_build (img) == -1)
    return -1;
  /* QEMU's dirty bit: refcounts lag (lazy refcounts); rebuilt below,
   * once the journal exists.  Until then nothing may trust them, not
   * even to reuse an old journal area. */
  stale_refcounts = img->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY;
  old_end = img->file_size;

  /* O3, O5: the journal area: the previous one if its clusters are still
   * free, else new space past everything in use.  Allocation starts past
   * both the area and the end of the file. */
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
    if (hostio_truncate (img->file, img->next_free) == -1) {
      qerror ("%s: extend for the journal: %m", img->file->name);
      return -1;
    }
  }
  /* Entries may name what the file held before the journal came, or
   * what this session allocates past it; never the journal. */
  if (qcow2_metamap_set (img, jarea, jsize, META_JOURNAL) == -1)
    return -1;
  /* Readers run meanwhile: the journal is fenced off before the file's
   * bounds take it in. */
  __atomic_store_n (&img->journal_start, jarea, __ATOMIC_RELEASE);
  __atomic_store_n (&img->journal_end, jarea + jsize, __ATOMIC_RELEASE);
  __atomic_store_n (&img->alloc_start, img->next_free, __ATOMIC_RELEASE);
  __atomic_store_n (&img->file_size, img->next_free, __ATOMIC_RELEASE);
  if (img->data == img->file)
    __atomic_store_n (&img->data_size, img->next_free, __ATOMIC_RELEASE);

  /* O6: a new journal id, never the one the extension held. */
  do {
    if (getrandom (&jid, sizeof jid, 0) != sizeof jid) {
      qerror ("getrandom: %m");
      return -1;
    }
  } while (jid == 0 || jid == img->hdr.journal.id);

  /* O5: host space for the whole ring now: a commit must never fail for
   * want of it (that would stop every write until the server restarts). */
  if (hostio_reserve (img->file, jarea, jsize) == -1 && errno != ENOTSUP) {
    qerror ("%s: reserve space for the journal: %m", img->file->name);
    return -1;
  }
  /* O4, O6: superblocks, then the extension (each flushed). */
  img->journal = journal_create (img->file, jarea, jsize, jid, cs);
  if (img->journal == NULL ||
      qcow2_header_write_journal_ext (img, jarea, jsize, jid) == -1)
    return -1;
  /* O7. */
  img->hdr.autoclear_features |= QJ_AUTOCLEAR_VALID;
  if (qcow2_header_write_word (img, QCOW2_OFF_AUTOCLEAR,
                               img->hdr.autoclear_features, true) == -1)
    return -1;
  img->hdr.journal.present = img->hdr.journal.intact = true;
  img->hdr.journal.offset = jarea;
  img->hdr.journal.size = jsize;
  img->hdr.journal.id = jid;

  qcow2_commit_hooks_install (img);
  img->ring_high_water = journal_ring_size (img->journal) / 2;
  __atomic_store_n (&img->last_change, qcow2_now (), __ATOMIC_RELAXED);
  if (stale_refcounts && rebuild_stale_refcounts (img, old_end) == -1)
    return -1;
  return 0;
}

int
qcow2_make_writable (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->setup_lock);

  if (prepare (img) == -1)
    return -1;
  switch (qcow2_state (img)) {
  case SESSION_JOURNALLED:
    return 0;
  case SESSION_READY:
    break;
  default:
    return qcow2_check_writing (img);
  }
  if (set_up (img) == -1)
    return -1;
  /* O8: serve. */
  qcow2_state_move (img, SESSION_READY, SESSION_JOURNALLED);
  return 0;
}

/* The gate ---------------------------------------------------------------- */

/* Every write, zero and trim passes here: the first one sets the journal
 * up.  0, or -1 with errno (EROFS if the image may not be written, the
 * latched error once writes stopped). */
static int
begin_write (struct qcow2_image *img)
{
  switch (qcow2_state (img)) {
  case SESSION_JOURNALLED:
    return 0;
  case SESSION_READY:
    /* Nothing was committed, but the set-up may be half done.  (A direct
     * qcow2_make_writable that fails may be tried again.) */
    if (qcow2_make_writable (img) == -1)
      return qcow2_stop_writes (img, "journal set-up failed");
    return 0;
  default:
    return qcow2_check_writing (img);
  }
}

/* Flush and close: 1 if the session is JOURNALLED; 0 if nothing was
 * written yet (or ever, the journal's set-up having failed); -1 with the
 * latched errno once journalled writes stopped. */
static int
journalled (struct qcow2_image *img)
{
  switch (qcow2_state (img)) {
  case SESSION_JOURNALLED:
    return 1;
  case SESSION_FAILED:
    return img->journal ? qcow2_check_writing (img) : 0;
  default:
    return 0;
  }
}

/* A write, zero or trim completed: the checkpointer times idleness from
 * here. */
static void
changed (struct qcow2_image *img)
{
  __atomic_store_n (&img->last_change, qcow2_now (), __ATOMIC_RELAXED);
}

int
qcow2_pwrite (struct qcow2_image *img, const void *buf, uint64_t count,
              uint64_t offset)
{
  if (begin_write (img) == -1 ||
      qcow2_write_range (img, buf, count, offset) == -1)
    return -1;
  changed (img);
  return 0;
}

int
qcow2_zero (struct qcow2_image *img, uint64_t count, uint64_t offset,
            bool may_trim, bool fast)
{
  if (begin_write (img) == -1 ||
      qcow2_zero_range (img, count, offset, may_trim, fast) == -1)
    return -1;
  changed (img);
  return 0;
}

int
qcow2_trim (struct qcow2_image *img, uint64_t count, uint64_t offset)
{
  if (begin_write (img) == -1 ||
      qcow2_trim_range (img, count, offset) == -1)
    return -1;
  changed (img);
  return 0;
}

int
qcow2_flush (struct qcow2_image *img)
{
  bool covered;
  int r = journalled (img);

  if (r <= 0)
    return r;
  if (qcow2_commit (img, &covered) == -1)
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

/* Clean close ------------------------------------------------------------ */

int
qcow2_session_close (struct qcow2_image *img)
{
  const uint64_t jarea = img->hdr.journal.offset;
  const uint64_t jsize = img->hdr.journal.size;
  bool covered;
  int64_t size;
  int r = journalled (img);

  /* After a failure the journal, if any, is kept, and replayed at the
   * next writable open. */
  if (r <= 0)
    return r;
  /* C1 is the caller's (no request in flight).  C2, C3. */
  if (qcow2_commit (img, &covered) == -1 || qcow2_checkpoint (img) == -1)
    return -1;
  if (journal_ring_used (img->journal) != 0) {
    qerror ("%s: close: the journal is not empty after a checkpoint",
            img->file->name);
    errno = EIO;
    return qcow2_stop_writes (img, "close failed");
  }
  /* C4. */
  if (qcow2_dirty_clear (img) == -1)
    return qcow2_stop_writes (img, "close failed");
  /* C5: invalidate the journal, then give its space back.  Its clusters
   * were never refcounted: cut them off the end of the file, or keep the
   * area as a hint for the next session and discard its blocks. */
  img->hdr.autoclear_features &= ~QJ_AUTOCLEAR_VALID;
  if (qcow2_header_write_word (img, QCOW2_OFF_AUTOCLEAR,
                               img->hdr.autoclear_features, true) == -1)
    return qcow2_stop_writes (img, "close failed");
  if (jarea + jsize == img->next_free) {
    if (qcow2_header_release_journal_ext (img, false) == -1 ||
        hostio_truncate (img->file, jarea) == -1)
      qdebug ("%s: truncate the journal away: %m", img->file->name);
  }
  else if (qcow2_header_release_journal_ext (img, true) == -1 ||
           hostio_punch (img->file, jarea, jsize) == -1)
    qdebug ("%s: discard the journal: %m", img->file->name);
  /* Space reserved past the end of the file (qcow2_reserve_space). */
  size = hostio_size (img->file);
  if (size >= 0 && img->space_reserved > (uint64_t) size &&
      hostio_punch (img->file, size, img->space_reserved - size) == -1)
    qdebug ("%s: give back reserved space: %m", img->file->name);
  qcow2_state_move (img, SESSION_JOURNALLED, SESSION_CLOSED);
  return 0;
}
