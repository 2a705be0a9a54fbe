/* qcow2j lib: the checkpoint (docs/journal-format.md section 10).
 *
 * A checkpoint writes the committed state of every changed metadata slice
 * in place (never live state: rule R1), flushes, and then lets the journal
 * move its head past the transactions that state includes, which frees
 * ring space; clusters freed by those transactions are then discarded on
 * the host (rule R3: only once the head has durably passed their free).
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
#include "log.h"
#include "metamap.h"
#include "overlap.h"
#include "state.h"

static int
compare_offsets (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

  return x < y ? -1 : x > y;
}

/* A cluster whose free the head has passed: no longer metadata if it was
 * a table.  False if the map says it is live metadata (a cluster freed as
 * data while the map says otherwise: never punch it). */
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
    return qcow2_metamap_set (img, cluster, cs, META_NONE) == 0;
  default:
    qerror ("%s: checkpoint: freed cluster 0x%" PRIx64 " holds live "
            "metadata: not discarded", img->file->name, cluster);
    return false;
  }
}

/* Give the host back the clusters whose free the head has passed, in as
 * few calls as runs of adjacent clusters allow. */
static void
discard_released (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  uint64_t v[1024];
  size_t n;

  while ((n = journal_take_released (img->journal, v, 1024)) > 0) {
    size_t k = 0;

    for (size_t i = 0; i < n; i++)
      if (released (img, v[i]))
        v[k++] = v[i];
    qsort (v, k, sizeof v[0], compare_offsets);
    for (size_t i = 0, j; i < k; i = j) {
      for (j = i + 1; j < k && v[j] == v[j - 1] + cs; j++)
        ;
      if (hostio_punch (img->file, v[i], (j - i) * cs) == -1)
        qdebug ("%s: discard 0x%" PRIx64 ": %m", img->file->name, v[i]);
    }
  }
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

int
qcow2_checkpoint (struct qcow2_image *img)
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
  for (ssize_t i = 0; i < n; i++) {
    int r;

    /* Committed changes go only to tables: a write-back elsewhere would
     * mean the map and the tables disagree (overlap.c). */
    if (!qcow2_metamap_is_table (img, d[i].offset, d[i].size)) {
      uint64_t where = d[i].offset;

      return qcow2_overlap_refuse (img, "a checkpoint write-back",
                                   d[i].offset,
                                   qcow2_metamap_find (img, d[i].offset,
                                                       d[i].size, &where),
                                   where);
    }
    if (d[i].offset == 0)       /* the header: its journalled words */
      r = hostio_pwrite (img->file, d[i].data + QJ_HEADER_WORDS_START,
                         QJ_HEADER_WORDS_END - QJ_HEADER_WORDS_START,
                         QJ_HEADER_WORDS_START);
    else
      r = hostio_pwrite (img->file, d[i].data, d[i].size, d[i].offset);
    if (r == -1) {
      qerror ("%s: checkpoint: write at 0x%" PRIx64 ": %m",
              img->file->name, d[i].offset);
      return failed (img);
    }
  }
  if (n > 0 && hostio_flush (img->file) == -1) {
    qerror ("%s: checkpoint: flush: %m", img->file->name);
    return failed (img);
  }
  if (seq >= journal_head_seq (img->journal) &&
      journal_checkpointed (img->journal, seq) == -1)
    return failed (img);
  for (ssize_t i = 0; i < n; i++)
    mcache_cleaned (img->cache, &d[i]);
  discard_released (img);
  return 0;
}

void
qcow2_checkpoint_wake (struct qcow2_image *img)
{
  pthread_mutex_lock (&img->thread_lock);
  pthread_cond_signal (&img->thread_cond);
  pthread_mutex_unlock (&img->thread_lock);
}
