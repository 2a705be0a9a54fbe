/* qcow2j lib: the checkpoint (docs/journal-format.md section 10).
 *
 * A checkpoint writes the committed state of every changed metadata slice
 * in place (never live state: rule R1), flushes, and then lets the journal
 * move its head past the transactions that state includes, which frees
 * ring space; clusters freed by those transactions are then punched on
 * the host and given to the allocator (rules R2 and R3: only once the
 * head has durably passed their free; space.c).
 * The header slice is special: only its journalled words are ever written
 * back, so that the feature words and extensions written directly
 * (header-write.c) are never overwritten with old bytes.
 *
 * Who runs it: a commit that finds the ring full (commit.c), the
 * background thread (checkpointer.c), the clean close and the refcount
 * rebuild (session.c).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "checkpoint.h"
#include "cleanup.h"
#include "journal-format.h"
#include "grace.h"
#include "log.h"
#include "metamap.h"
#include "overlap.h"
#include "owed.h"
#include "space.h"
#include "state.h"

static int
compare_offsets (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

  return x < y ? -1 : x > y;
}

/* A cluster whose free the head has passed: no longer metadata if it was
 * a table (and its slices leave the metadata cache, so that whatever
 * uses the cluster next never sees them).  False if the map says it is
 * live metadata (a cluster freed as data while the map says otherwise:
 * never punch it). */
static bool
released (struct qcow2_image *img, uint64_t cluster)
{
  const uint64_t cs = img->hdr.cluster_size;
  uint64_t where;

  switch (qcow2_metamap_find (img, cluster, cs, &where)) {
  case META_NONE:
    return true;
  case META_FREEING:
    /* Failing to shrink the map (ENOMEM) only keeps the cluster fenced
     * off and unpunched. */
    if (qcow2_metamap_set (img, cluster, cs, META_NONE) == -1)
      return false;
    mcache_forget (img->cache, img, cluster, cs, img->slice_size);
    return true;
  default:
    qerror ("%s: checkpoint: freed cluster 0x%" PRIx64 " holds live "
            "metadata: not discarded", img->file->name, cluster);
    return false;
  }
}

/* Runs of released clusters, for the allocator. */
struct freed {
  struct range *v;
  size_t n, cap;
};

static int
freed_add (struct freed *f, uint64_t start, uint64_t len, unsigned kind)
{
  if (f->n == f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 64;
    struct range *v = realloc (f->v, cap * sizeof *v);

    if (v == NULL)
      return -1;
    f->v = v;
    f->cap = cap;
  }
  f->v[f->n++] = (struct range) { start, start + len, kind };
  return 0;
}

/* Clusters no table names any more, durably (v[0..n), in any order,
 * each at most once after sorting): punched on the host (where they
 * cannot be read or written by anything in flight any more), then,
 * after a flush that makes the punches durable, clean free space
 * (docs/journal-format.md M5); stale where the host could not punch.
 * Added to out as runs of adjacent clusters; on ENOMEM the rest are left
 * out: refcount 0 on disk, found again by the next session. */
static int
punch_released (struct qcow2_image *img, uint64_t *v, size_t n,
                struct freed *out)
{
  const uint64_t cs = img->hdr.cluster_size;
  bool punched = false;
  size_t k;

  if (n == 0)
    return 0;
  /* Sorted, each cluster once. */
  qsort (v, n, sizeof v[0], compare_offsets);
  for (size_t i = k = 1; i < n; i++)
    if (v[i] != v[k - 1])
      v[k++] = v[i];
  n = k;
  /* Reads and writes in place that found these clusters mapped before
   * their free may still be under way (grace.c). */
  qcow2_io_wait_older (img);
  for (size_t i = 0, j; i < n; i = j) {
    bool zeroed;

    for (j = i + 1; j < n && v[j] == v[j - 1] + cs; j++)
      ;
    zeroed = hostio_punch (img->file, v[i], (j - i) * cs) == 0;
    if (!zeroed)
      qdebug ("%s: discard 0x%" PRIx64 ": %m", img->file->name, v[i]);
    punched |= zeroed;
    if (freed_add (out, v[i], (j - i) * cs,
                   zeroed ? SPACE_CLEAN : SPACE_STALE) == -1)
      break;
  }
  if (punched && hostio_flush (img->file) == -1) {
    qerror ("%s: checkpoint: flush: %m", img->file->name);
    out->n = 0;
    return -1;
  }
  return 0;
}

/* The clusters whose free the head has passed (rules R2, R3). */
static int
release_freed (struct qcow2_image *img, struct freed *out)
{
  CLEANUP_FREE uint64_t *v = NULL;
  size_t n = 0, cap = 0, k;

  for (;;) {
    if (n == cap) {
      uint64_t *nv;

      cap = cap ? cap * 2 : 1024;
      nv = realloc (v, cap * sizeof *v);
      if (nv == NULL)
        break;
      v = nv;
    }
    k = journal_take_released (img->journal, v + n, cap - n);
    if (k == 0)
      break;
    for (size_t i = n, end = n + k; i < end; i++)
      if (released (img, v[i]))
        v[n++] = v[i];
  }
  return punch_released (img, v, n, out);
}

/* Hand released runs to the allocator (meta_lock: never with
 * checkpoint_lock held). */
static void
give_freed (struct qcow2_image *img, struct freed *freed)
{
  if (freed->n > 0) {
    qcow2_meta_lock (img);
    for (size_t i = 0; i < freed->n; i++)
      qcow2_space_give (img, freed->v[i].start,
                        freed->v[i].end - freed->v[i].start,
                        freed->v[i].kind);
    qcow2_meta_unlock (img);
  }
  free (freed->v);
}

int
qcow2_release_clusters (struct qcow2_image *img, uint64_t *v, size_t n)
{
  struct freed freed = { 0 };
  size_t k = 0;
  int r;

  ASSERT_META_UNLOCKED (img);
  for (size_t i = 0; i < n; i++)
    if (released (img, v[i]))
      v[k++] = v[i];
  r = punch_released (img, v, k, &freed);
  give_freed (img, &freed);
  return r;
}

int
qcow2_write_home (struct qcow2_image *img, const struct mcache_dirty *d)
{
  uint64_t where = d->offset;
  int r;

  /* Committed changes go only to tables: a write-back elsewhere would
   * mean the map and the tables disagree (overlap.c). */
  if (!qcow2_metamap_is_table (img, d->offset, d->size))
    return qcow2_overlap_refuse (img, "a checkpoint write-back", d->offset,
                                 qcow2_metamap_find (img, d->offset, d->size,
                                                     &where),
                                 where);
  if (d->offset == 0)           /* the header: its journalled words */
    r = hostio_pwrite (img->file, d->data + QJ_HEADER_WORDS_START,
                       QJ_HEADER_WORDS_END - QJ_HEADER_WORDS_START,
                       QJ_HEADER_WORDS_START);
  else
    r = hostio_pwrite (img->file, d->data, d->size, d->offset);
  if (r == -1)
    qerror ("%s: checkpoint: write at 0x%" PRIx64 ": %m", img->file->name,
            d->offset);
  return r;
}

/* A failed checkpoint leaves the journal holding everything (in-place
 * state is a mix of committed states, which replay repairs), but writes
 * stop: the ring could only fill up, and the host is failing. */
static int
failed (struct qcow2_image *img)
{
  return qcow2_stop_writes (img, "checkpoint failed (the journal keeps "
                            "every committed change)");
}

/* Under checkpoint_lock: everything but handing the freed clusters to
 * the allocator. */
static int
checkpoint (struct qcow2_image *img, struct freed *freed)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->checkpoint_lock);
  CLEANUP_FREE struct mcache_dirty *d = NULL;
  uint64_t seq = journal_durable_seq (img->journal);
  ssize_t n;

  /* checkpoint_lock and meta_lock never nest (image-internal.h). */
  ASSERT_META_UNLOCKED (img);
  ASSERT_JOURNAL_SET_UP (img);
  n = mcache_collect (img->cache, img, &d);
  if (n == -1) {
    qerror ("%s: checkpoint: %m", img->file->name);
    return failed (img);
  }
  for (ssize_t i = 0; i < n; i++)
    if (qcow2_write_home (img, &d[i]) == -1)
      return failed (img);
  if (n > 0 && hostio_flush (img->file) == -1) {
    qerror ("%s: checkpoint: flush: %m", img->file->name);
    return failed (img);
  }
  if (seq >= journal_head_seq (img->journal) &&
      journal_checkpointed (img->journal, seq) == -1)
    return failed (img);
  for (ssize_t i = 0; i < n; i++)
    mcache_cleaned (img->cache, &d[i]);
  if (release_freed (img, freed) == -1)
    return failed (img);
  qcow2_forget_dropped_owed (img);
  return 0;
}

void
qcow2_forget_dropped_owed (struct qcow2_image *img)
{
  if (qcow2_owed_forget_begin (img)) {
    qcow2_io_wait_older (img);
    qcow2_owed_forget_end (img);
  }
}

int
qcow2_checkpoint (struct qcow2_image *img)
{
  struct freed freed = { 0 };
  int r;

  /* Without a journal a commit writes everything home (writeback.c);
   * one more makes the refcount decrements of the last one durable. */
  if (qcow2_no_journal (img))
    return journal_commit (img->journal, NULL);
  r = checkpoint (img, &freed);
  /* meta_lock only now: it never nests with checkpoint_lock. */
  give_freed (img, &freed);
  return r;
}

void
qcow2_checkpoint_wake (struct qcow2_image *img)
{
  pthread_mutex_lock (&img->thread_lock);
  pthread_cond_signal (&img->thread_cond);
  pthread_mutex_unlock (&img->thread_lock);
}
