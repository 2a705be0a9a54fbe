/* qcow2j lib: the write session: the gate every write, zero, trim and
 * flush passes, the journal's set-up at the first of them, and the clean
 * close (docs/journal-format.md sections 11 and 12).
 *
 * The session's life is the state word of state.c.  qcow2_prepare_writable
 * moves READ_ONLY to READY after refusing what cannot be journalled and
 * taking QEMU's writer locks, changing nothing in the file.  The first
 * write, zero or trim sets the journal up (READY to JOURNALLED: 12.1, O2
 * to O8): replay a dirty journal, mark persistent bitmaps in use, learn
 * the free space (space.c), put the journal area in the previous
 * session's area, in free space or past the end of the file, add our
 * header extension, set "journal valid", and rebuild refcounts that QEMU
 * left stale.  So an image served writable but only read is never
 * modified (but for one that is marked corrupt with its journal dirty:
 * its journal is replayed when it is prepared, so that QEMU can repair
 * it, and writing is refused).  Closing commits, checkpoints, clears our bits and gives the
 * journal's space back, cutting free space off the end of the file (12.2,
 * C1 to C6): what remains is plain qcow2 that qemu-img checks clean.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/random.h>

#include "bitmaps-live.h"
#include "checkpoint.h"
#include "cleanup.h"
#include "clock.h"
#include "commit.h"
#include "dirty.h"
#include "discard.h"
#include "format.h"
#include "header-write.h"
#include "journal-ext.h"
#include "journal-format.h"
#include "lock.h"
#include "log.h"
#include "metamap.h"
#include "minmax.h"
#include "rebuild.h"
#include "refcount.h"
#include "session.h"
#include "space.h"
#include "state.h"
#include "tables.h"
#include "write.h"
#include "writeback.h"

#define JOURNAL_SIZE (4ULL << 20)       /* default area size */
/* The gap left below the journal of a file: the disk's size, its tables
 * and this much more; not past this offset. */
#define JOURNAL_GAP_SLACK (64ULL << 20)
#define JOURNAL_GAP_LIMIT (4ULL << 40)

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
/* QEMU's writer locks on the file and the data file. */
static int
take_locks (struct qcow2_image *img)
{
  int fd = hostio_file_fd (img->file);

  if (img->lock_files && fd >= 0 &&
      qcow2_lock_fd (fd, img->file->name, true) == -1)
    return -1;
  fd = hostio_file_fd (img->data);
  if (img->lock_files && img->data != img->file && fd >= 0 &&
      qcow2_lock_fd (fd, img->data->name, true) == -1)
    return -1;
  return 0;
}

static int replay (struct qcow2_image *img);

static int
prepare (struct qcow2_image *img)
{
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
  if (img->hdr.incompatible_features & QCOW2_INCOMPAT_CORRUPT) {
    /* Marked corrupt by a session that then stopped with its journal
     * dirty: QEMU's tools could not open it to repair it.  Replay the
     * journal (its transactions are as sound as ever), which clears the
     * bit. */
    if (qcow2_journal_dirty (img) && take_locks (img) == 0 &&
        replay (img) == 0)
      qdebug ("%s: replayed the journal of a corrupt image",
              img->file->name);
    qerror ("%s: cannot write to this image: it is marked corrupt; stop "
            "the server, then repair it with: qemu-img check -r all %s",
            img->file->name, img->file->name);
    errno = EROFS;
    return -1;
  }
  /* Version 2: no journal, so no extension (13). */
  if (!qcow2_no_journal (img) && img->hdr.journal.present &&
      img->hdr.journal.pos == 0)
    return refuse (img, EINVAL, "its qcow2j journal extension (Q2JL) has "
                   "a length other than 32");
  if (!qcow2_no_journal (img) && !qcow2_header_has_room (&img->hdr))
    return refuse (img, ENOSPC, "no room in the header cluster for the "
                   "journal extension (a shorter backing file name, set "
                   "with qemu-img rebase -u, makes room)");

  if (take_locks (img) == -1)
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

  if (qj_ext_check_replayable (img->file->name, h, img->file_size) == -1)
    return -1;
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
 * after a clean close) can hold the new journal if it is well formed and
 * every cluster of it is free space (a journal-unaware writer may have
 * taken some since).  Takes it. */
static bool
reuse_area (struct qcow2_image *img)
{
  const struct qcow2_journal_ext *e = &img->hdr.journal;
  const uint64_t cs = img->hdr.cluster_size;

  return e->intact && e->size >= QJ_MIN_AREA && e->size <= QJ_MAX_AREA &&
    e->size % QJ_BLOCK == 0 && IS_ALIGNED (e->offset, cs) &&
    e->offset % QJ_BLOCK == 0 && IS_ALIGNED (e->size, cs) &&
    e->offset >= cs && e->offset <= img->next_free &&
    e->size <= img->next_free - e->offset &&
    qcow2_space_take_at (img, e->offset, e->size);
}

/* O5: a new area of jsize bytes in free space, aligned for the journal's
 * blocks (0 if there is no such run). */
static uint64_t
area_in_free_space (struct qcow2_image *img, uint64_t jsize)
{
  const uint64_t cs = img->hdr.cluster_size;
  const uint64_t align = MAX (cs, (uint64_t) QJ_BLOCK);
  uint64_t at, jarea;
  bool clean;

  if (!qcow2_space_take (img, (jsize + align - cs) / cs, 0, false, &at,
                         &clean))
    return 0;
  jarea = ROUND_UP (at, align);
  if (jarea > at)
    qcow2_space_give (img, at, jarea - at,
                      clean ? SPACE_CLEAN : SPACE_STALE);
  if (at + (align - cs) > jarea)
    qcow2_space_give (img, jarea + jsize, at + (align - cs) - jarea,
                      clean ? SPACE_CLEAN : SPACE_STALE);
  return jarea;
}

/* Learn the file's free space from the refcounts (space.c).  Clusters
 * counted past the end of the file (QEMU extends the file by writing
 * data, and a power cut may lose the write but keep the refcount and
 * the entry) are in use: new space starts past them. */
static int
learn_free_space (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  /* A block device's partial last cluster is no space at all. */
  uint64_t end = img->file->fixed_size ?
    ROUND_DOWN (img->file_size, cs) : img->next_free;
  uint64_t used_end;
  int r;

  qcow2_meta_lock (img);
  qcow2_space_forget (img);
  r = qcow2_refcount_zero_runs (img, end, qcow2_space_learn_run, NULL,
                                &used_end);
  if (r == 0)
    img->next_free = MAX (img->next_free, used_end);
  qcow2_meta_unlock (img);
  return r;
}

/* O3, O5: where the journal goes.  In a file, past everything in use:
 * the clean close cuts it off with the free space at the end, and what
 * a previous session's area left inside the file is free space for data.
 * On a block device, which cannot grow, in the previous area if its
 * clusters are still free, else in a run of free space. */
static int
place_journal_locked (struct qcow2_image *img, uint64_t *jarea,
                      uint64_t *jsize)
{
  const uint64_t cs = img->hdr.cluster_size;
  const uint64_t align = MAX (cs, (uint64_t) QJ_BLOCK);
  uint64_t want, end;
  int r;

  *jsize = MAX (ROUND_UP (JOURNAL_SIZE, cs), (uint64_t) QJ_MIN_AREA);
  *jsize = ROUND_UP (*jsize, (uint64_t) QJ_BLOCK);
  if (img->file->fixed_size && reuse_area (img)) {
    *jarea = img->hdr.journal.offset;
    *jsize = img->hdr.journal.size;
    return 0;
  }
  if (img->file->fixed_size &&
      (*jarea = area_in_free_space (img, *jsize)) != 0)
    return 0;
  if (img->file->fixed_size) {
    qerror ("%s: no room for the journal: the device has no free run of "
            "%" PRIu64 " bytes%s", img->file->name, *jsize,
            qcow2_space_free_bytes (img) == 0 &&
            (img->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY) ?
            " (QEMU left its refcounts stale: repair the image with "
            "qemu-img check -r all first)" : "");
    errno = ENOSPC;
    return -1;
  }
  /* Past the end of the file, and, in a sparse file, past the room the
   * guest's data could take (a gap that costs nothing), so that new
   * clusters go below the journal and the clean close can cut it off.
   * The room counts from where the free space at the end of the file
   * starts: after a crash, what the last session left there (its gap,
   * its journal) is reused rather than added to.  Right at the end if
   * that room would make the file too long for common file systems, or
   * for this one.  Blocks of the journal are 4 KiB aligned, whatever
   * the clusters.  The clusters skipped are free, and fresh: past the
   * end of the file (M4). */
  end = ROUND_UP (img->next_free, align);
  *jarea = end;
  want = img->hdr.size <= JOURNAL_GAP_LIMIT ?
    qcow2_space_free_tail (img, img->next_free) + img->hdr.size +
    img->hdr.size / 64 + JOURNAL_GAP_SLACK : UINT64_MAX;
  if (img->file->sparse && want <= JOURNAL_GAP_LIMIT - *jsize) {
    *jarea = ROUND_UP (want, align);
    /* Inside the file (what a crashed session left): if free, there. */
    if (*jarea + *jsize <= img->next_free &&
        qcow2_space_take_at (img, *jarea, *jsize))
      return 0;
    *jarea = MAX (end, *jarea);
  }
  r = hostio_truncate (img->file, *jarea + *jsize);
  if (r == -1 && *jarea > end && (errno == EFBIG || errno == EINVAL)) {
    qdebug ("%s: no room for a gap below the journal: %m", img->file->name);
    *jarea = end;
    r = hostio_truncate (img->file, *jarea + *jsize);
  }
  if (r == -1) {
    qerror ("%s: extend for the journal: %m", img->file->name);
    return -1;
  }
  if (*jarea > img->next_free)
    qcow2_space_give (img, img->next_free, *jarea - img->next_free,
                      SPACE_CLEAN);
  img->next_free = *jarea + *jsize;
  return 0;
}

static int
place_journal (struct qcow2_image *img, uint64_t *jarea, uint64_t *jsize)
{
  int r;

  qcow2_meta_lock (img);
  r = place_journal_locked (img, jarea, jsize);
  qcow2_meta_unlock (img);
  return r;
}

/* Refcounts QEMU left stale (its dirty bit, lazy refcounts): rebuild them
 * through the new journal, commit, checkpoint, and only then clear
 * QEMU's bit.  A crash on the way leaves the bit set, and the rebuild
 * runs again. */
static int
rebuild_stale_refcounts (struct qcow2_image *img, const uint16_t *counts,
                         uint64_t old_end)
{
  bool covered;

  qdebug ("%s: rebuilding refcounts left stale by QEMU", img->file->name);
  if (qcow2_rebuild_refcounts (img, counts, old_end) == -1 ||
      qcow2_commit (img, &covered) == -1 ||
      qcow2_checkpoint (img) == -1)
    return -1;
  return qcow2_dirty_clear_qemu (img);
}

/* The rest of the set-up of a version 2 image, which carries no journal
 * (13): a journal object with no area, whose commits write the tables
 * home in order (writeback.c).  Entries may name anything this session
 * allocates past alloc_start: the journal, being nowhere, is fenced off
 * as an empty range past every offset. */
static int
set_up_ordered (struct qcow2_image *img, uint64_t alloc_start)
{
  __atomic_store_n (&img->journal_start, UINT64_MAX, __ATOMIC_RELEASE);
  __atomic_store_n (&img->journal_end, UINT64_MAX, __ATOMIC_RELEASE);
  __atomic_store_n (&img->gap_end, alloc_start, __ATOMIC_RELEASE);
  __atomic_store_n (&img->alloc_start, alloc_start, __ATOMIC_RELEASE);
  __atomic_store_n (&img->file_size, img->next_free, __ATOMIC_RELEASE);
  if (img->data == img->file)
    __atomic_store_n (&img->data_size, img->next_free, __ATOMIC_RELEASE);
  img->journal = journal_create_ordered (img->file, img->hdr.cluster_size);
  if (img->journal == NULL)
    return -1;
  qcow2_commit_hooks_install (img, qcow2_write_back);
  img->ring_high_water = journal_ring_size (img->journal) / 2;
  __atomic_store_n (&img->last_change, qcow2_now (), __ATOMIC_RELAXED);
  return 0;
}

/* Under setup_lock, in SESSION_READY. */
static int
set_up (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  uint64_t jsize, jarea, jid, old_end, alloc_start;
  CLEANUP_FREE uint16_t *counts = NULL;
  bool stale_refcounts;

  if (qcow2_refcounts_load (img) == -1)
    return -1;
  if (qcow2_journal_dirty (img) && replay (img) == -1)
    return -1;
  /* QEMU's dirty bit: refcounts lag (lazy refcounts); counted here,
   * before anything is written, and set below, once the journal exists.
   * Until then nothing may trust them, not even to reuse an old journal
   * area.  Whatever these walks refuse, the image is left as it was. */
  stale_refcounts = img->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY;
  old_end = img->file_size;
  if (qcow2_metamap_build (img) == -1 ||
      (stale_refcounts && (counts = qcow2_recount (img, old_end)) == NULL) ||
      qcow2_bitmaps_start (img) == -1)
    return -1;

  /* Free space, unless the refcounts cannot be trusted yet: then only
   * space past the end of the file, until they are rebuilt. */
  img->next_free = ROUND_UP (MAX (img->file_size, cs), cs);
  if (!stale_refcounts && learn_free_space (img) == -1)
    return -1;
  if (qcow2_metamap_reserve_tables (img) == -1)
    return -1;
  /* Entries may name what this session allocates from here on. */
  alloc_start = img->next_free;
  if (qcow2_no_journal (img))
    return set_up_ordered (img, alloc_start);
  if (place_journal (img, &jarea, &jsize) == -1)
    return -1;
  /* Entries may name what the file held before the journal came, or
   * what this session allocates past it; never the journal. */
  if (qcow2_metamap_set (img, jarea, jsize, META_JOURNAL) == -1)
    return -1;
  /* Readers run meanwhile: the journal is fenced off before the file's
   * bounds take it in. */
  __atomic_store_n (&img->journal_start, jarea, __ATOMIC_RELEASE);
  __atomic_store_n (&img->journal_end, jarea + jsize, __ATOMIC_RELEASE);
  __atomic_store_n (&img->gap_end, alloc_start, __ATOMIC_RELEASE);
  __atomic_store_n (&img->alloc_start, alloc_start, __ATOMIC_RELEASE);
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

  qcow2_commit_hooks_install (img, NULL);
  img->ring_high_water = journal_ring_size (img->journal) / 2;
  __atomic_store_n (&img->last_change, qcow2_now (), __ATOMIC_RELAXED);
  if (stale_refcounts &&
      (rebuild_stale_refcounts (img, counts, old_end) == -1 ||
       learn_free_space (img) == -1))
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

/* A request found the host full (ENOSPC, before it changed anything
 * half way).  Clusters freed earlier in the session become free space
 * only at a checkpoint: if there are any, commit and checkpoint, and say
 * whether the request is worth trying once more. */
static bool
room_made (struct qcow2_image *img)
{
  bool covered;

  if (errno != ENOSPC || qcow2_state (img) != SESSION_JOURNALLED ||
      !journal_frees_pending (img->journal))
    return false;
  qdebug ("%s: host full: releasing freed clusters", img->file->name);
  if (qcow2_commit (img, &covered) == -1 || qcow2_checkpoint (img) == -1)
    return false;
  errno = ENOSPC;
  return true;
}

int
qcow2_pwrite (struct qcow2_image *img, const void *buf, uint64_t count,
              uint64_t offset)
{
  if (begin_write (img) == -1)
    return -1;
  if (qcow2_write_range (img, buf, count, offset) == -1 &&
      (!room_made (img) ||
       qcow2_write_range (img, buf, count, offset) == -1))
    return -1;
  changed (img);
  return 0;
}

int
qcow2_zero (struct qcow2_image *img, uint64_t count, uint64_t offset,
            bool may_trim, bool fast)
{
  if (begin_write (img) == -1)
    return -1;
  if (qcow2_zero_range (img, count, offset, may_trim, fast) == -1 &&
      (!room_made (img) ||
       qcow2_zero_range (img, count, offset, may_trim, fast) == -1))
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

/* Make the data written in place durable.  A failed host flush may have
 * lost dirty pages that a later flush would not report again: no flush
 * may succeed after it. */
static int
flush_files (struct qcow2_image *img)
{
  if (hostio_flush (img->file) == -1 ||
      (img->data != img->file && hostio_flush (img->data) == -1)) {
    qerror ("%s: flush: %m", img->file->name);
    return qcow2_stop_writes (img, "a host flush failed");
  }
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
  /* Nothing to commit: only in-place data to make durable. */
  if (!covered && flush_files (img) == -1)
    return -1;
  return 0;
}

/* Clean close ------------------------------------------------------------ */

/* C5, once the journal is invalid: its clusters were never refcounted,
 * they are free space now.  Free space at the end of the file is cut off
 * (the journal's area with it, or else it is discarded and kept as a hint
 * for the next session), so that the file is no longer than its last
 * cluster in use.  Without a journal (jsize 0), only the free space.  A crash anywhere here leaves a valid image: what is
 * cut off has refcount 0 and nothing points at it. */
static void
give_back_space (struct qcow2_image *img, uint64_t jarea, uint64_t jsize)
{
  const uint64_t cs = img->hdr.cluster_size;
  int64_t size = hostio_size (img->file);
  uint64_t end;

  qcow2_meta_lock (img);
  if (jsize > 0)
    qcow2_space_give (img, jarea, jsize, SPACE_STALE);
  end = MAX (qcow2_space_free_tail (img, img->next_free), cs);
  qcow2_meta_unlock (img);
  if (img->file->fixed_size || size == -1 || end >= (uint64_t) size)
    end = UINT64_MAX;           /* nothing to cut off */
  if ((jsize > 0 &&
       qcow2_header_release_journal_ext (img, jarea + jsize <= end) == -1) ||
      (end != UINT64_MAX && hostio_truncate (img->file, end) == -1))
    qdebug ("%s: cut the free space at the end away: %m", img->file->name);
  if (jsize > 0 && jarea + jsize <= end &&
      hostio_punch (img->file, jarea, jsize) == -1)
    qdebug ("%s: discard the journal: %m", img->file->name);
  /* Space reserved past the end of the file (qcow2_reserve_space): a
   * truncation to the same length frees it (a punch past the end may
   * do nothing, as on ext4). */
  size = hostio_size (img->file);
  if (!img->file->fixed_size && size >= 0 &&
      img->space_reserved > (uint64_t) size &&
      hostio_truncate (img->file, size) == -1)
    qdebug ("%s: give back reserved space: %m", img->file->name);
}

/* Without a journal (13.1): everything written home, then once more for
 * the refcount decrements that made (writeback.c), and the free space at
 * the end cut off.  Data written in place since the last write-back is
 * made durable too: a commit with nothing to write flushes nothing. */
static int
close_ordered (struct qcow2_image *img)
{
  bool covered;

  if (qcow2_commit (img, &covered) == -1 || qcow2_checkpoint (img) == -1)
    return -1;
  if (flush_files (img) == -1)
    return -1;
  if (!journal_is_idle (img->journal) ||
      journal_frees_pending (img->journal) != 0) {
    qerror ("%s: close: changes are left after the write-back",
            img->file->name);
    errno = EIO;
    return qcow2_stop_writes (img, "close failed");
  }
  give_back_space (img, 0, 0);
  qcow2_state_move (img, SESSION_JOURNALLED, SESSION_CLOSED);
  return 0;
}

int
qcow2_session_close (struct qcow2_image *img)
{
  const uint64_t jarea = img->hdr.journal.offset;
  const uint64_t jsize = img->hdr.journal.size;
  bool covered;
  int r = journalled (img);

  /* After a failure the journal, if any, is kept, and replayed at the
   * next writable open. */
  if (r <= 0)
    return r;
  if (qcow2_no_journal (img))
    return close_ordered (img);
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
  /* C5: invalidate the journal, then give its space back. */
  img->hdr.autoclear_features &= ~QJ_AUTOCLEAR_VALID;
  if (qcow2_header_write_word (img, QCOW2_OFF_AUTOCLEAR,
                               img->hdr.autoclear_features, true) == -1)
    return qcow2_stop_writes (img, "close failed");
  give_back_space (img, jarea, jsize);
  qcow2_state_move (img, SESSION_JOURNALLED, SESSION_CLOSED);
  return 0;
}
