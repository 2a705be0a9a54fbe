/* qcow2j lib: tables written home in order, for images that carry no
 * journal (version 2: docs/journal-format.md 13.1).
 *
 * A version 2 image has no feature bit that could make QEMU refuse it
 * while its home locations lag a journal, so there the home locations are
 * the only copy of the metadata, and every state a power cut can leave in
 * them must be one QEMU accepts: at worst leaked clusters (a refcount
 * higher than the references), never a reference the refcounts do not
 * count, never an entry naming a table or data not yet written, never a
 * lost write that a flush acknowledged.
 *
 * The session runs as a journalled one does: changes are made in the
 * metadata cache by the same code, bracketed, batched and sealed by a
 * journal object, which here has no area (journal_create_ordered).  Two
 * things differ:
 *
 *   - A refcount decrement is not made when the change drops the
 *     reference (refcount.c, qcow2_cluster_unref): it waits, as a
 *     deferred free of the journal object, for the write-back that takes
 *     the reference out of the tables at home.  So between two
 *     write-backs the cache's refcounts only rise, and a cluster whose
 *     last reference went still counts as used: nothing can take it.
 *
 *   - A commit writes what was sealed home itself (the journal's
 *     write_back hook, qcow2_write_back), in this order, each step only
 *     after the previous one's flush:
 *       V1  flush: guest data, and the zeroes of every new table (space
 *           past the end of the file, or punched and flushed, or zeroed:
 *           alloc.c), are durable before anything names them;
 *       V2  refcount blocks (rises, and decrements of earlier rounds);
 *       V3  refcount table pages, then the header's words if the table
 *           moved (one sector; the table it replaced is not written);
 *       V4  L2 tables;
 *       V5  the L1 table;
 *       V6  the decrements deferred by the changes just written are made
 *           in the cache (the next write-back's V2 writes them), and the
 *           clusters they bring to 0 are released (checkpoint.c:
 *           waited for, punched, flushed, handed to the allocator).
 *     A step with nothing to write is skipped with its flush.
 *
 * Why a cut leaves at worst leaks.  Home holds the state the last
 * write-back completed plus any subset of the sectors this one wrote (M2).
 * Every entry an L2 table at home holds names a cluster whose rise was
 * durable in V2 before V4 began and whose data was durable in V1; every
 * L1 entry names an L2 table written (V4) and counted (V2) before V5;
 * every refcount block the refcount table names was written in V2 before
 * V3; a count falls only in a V2 after the write-back that took the last
 * reference out of the tables at home (V4, V5 of an earlier round).  A
 * torn page mixes old and new entries, and both are counted: the old
 * because its decrement waits, the new because its rise came first.  So a
 * count is never below the references to its cluster.  A cluster released
 * in V6 is named by no table at home, and its count there (1, the
 * decrement not yet written) only leaks it until the next V2: reusing it
 * sets it to 1 again, before the entry that uses it is written.
 *
 * QEMU's check also compares the COPIED flag with the refcount.  A flag is
 * set only on a cluster whose refcount in the cache is 1, which the state
 * at home never undercounts; an entry's flag is written with the entry,
 * and the deferred decrements concern only clusters the active tables no
 * longer name.
 */
#include <config.h>

#include <stdlib.h>

#include "checkpoint.h"
#include "cleanup.h"
#include "commit.h"
#include "log.h"
#include "metamap.h"
#include "minmax.h"
#include "refcount.h"
#include "state.h"
#include "writeback.h"

/* The steps that write tables, in their order; and tables not written
 * at all. */
enum step { STEP_REFBLOCKS, STEP_REFTABLE, STEP_HEADER, STEP_L2, STEP_L1,
            NR_STEPS, STEP_NONE = NR_STEPS };

static enum step
step_of (struct qcow2_image *img, const struct mcache_dirty *d)
{
  uint64_t where;

  if (d->offset == 0)
    return STEP_HEADER;
  switch (qcow2_metamap_find (img, d->offset, d->size, &where)) {
  case META_REFBLOCK:
    return STEP_REFBLOCKS;
  case META_REFTABLE:
    return STEP_REFTABLE;
  case META_L1:
    return STEP_L1;
  case META_FREEING:
    /* A refcount table replaced by a larger one (refcount.c), whose
     * last changes are in the new one: the header at home names the
     * old one until V3 names the new one, and a cut before that leaves
     * the new clusters the old one does not count unnamed too.  (Other
     * tables are marked freeing only when V6 releases them.) */
    return STEP_NONE;
  default:
    /* L2 tables, and anything else, which qcow2_write_home refuses. */
    return STEP_L2;
  }
}

static int
flush_file (struct hostio *io)
{
  if (hostio_flush (io) == -1) {
    qerror ("%s: write-back: flush: %m", io->name);
    return -1;
  }
  return 0;
}

/* V1 to V5, under checkpoint_lock; then the delayed copy-on-write
 * entries dropped before, as a checkpoint does. */
static int
write_tables (struct qcow2_image *img, uint64_t seq)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->checkpoint_lock);
  CLEANUP_FREE struct mcache_dirty *d = NULL;
  ssize_t n;

  if ((img->data != img->file && flush_file (img->data) == -1) ||
      flush_file (img->file) == -1)
    return -1;
  n = mcache_collect (img->cache, img, &d);
  if (n == -1) {
    qerror ("%s: write-back: %m", img->file->name);
    return -1;
  }
  for (enum step step = 0; step < NR_STEPS; step++) {
    bool wrote = false;

    for (ssize_t i = 0; i < n; i++) {
      if (step_of (img, &d[i]) != step)
        continue;
      if (qcow2_write_home (img, &d[i]) == -1)
        return -1;
      wrote = true;
    }
    if (wrote && flush_file (img->file) == -1)
      return -1;
  }
  for (ssize_t i = 0; i < n; i++)
    mcache_cleaned (img->cache, &d[i]);
  if (journal_checkpointed (img->journal, seq) == -1)
    return -1;
  qcow2_forget_dropped_owed (img);
  return 0;
}

/* Decrements made per change (each is consistent by itself): a bound on
 * the records one change adds. */
#define DECREMENTS_PER_CHANGE 4096

/* V6: the decrements the write-back just made safe (the journal object
 * releases them once told the state that deferred them is home). */
static int
apply_decrements (struct qcow2_image *img)
{
  CLEANUP_FREE uint64_t *v = NULL;
  size_t n = 0, cap = 0, k, last = 0;
  int r = 0;

  for (;;) {
    if (n == cap) {
      uint64_t *nv;

      cap = cap ? cap * 2 : 1024;
      nv = realloc (v, cap * sizeof *v);
      if (nv == NULL) {
        /* The rest leak until the next repair: never reused early. */
        qerror ("%s: write-back: realloc: %m", img->file->name);
        break;
      }
      v = nv;
    }
    k = journal_take_released (img->journal, v + n, cap - n);
    if (k == 0)
      break;
    n += k;
  }
  for (size_t i = 0; i < n && r == 0; ) {
    size_t end = MIN (n, i + DECREMENTS_PER_CHANGE);

    qcow2_meta_lock (img);
    qcow2_change_begin (img);
    for (; i < end && r == 0; i++) {
      bool freed;

      r = qcow2_cluster_unref_deferred (img, v[i], &freed);
      if (r == 0 && freed)
        v[last++] = v[i];
    }
    qcow2_change_end (img, r);
    qcow2_meta_unlock (img);
  }
  if (r == -1)
    return -1;
  return qcow2_release_clusters (img, v, last);
}

int
qcow2_write_back (void *opaque, uint64_t seq)
{
  struct qcow2_image *img = opaque;

  ASSERT_META_UNLOCKED (img);
  assert (qcow2_no_journal (img));
  if (write_tables (img, seq) == -1 || apply_decrements (img) == -1)
    return qcow2_stop_writes (img, "writing the tables home failed (the "
                              "image holds the last complete write-back, "
                              "at worst with leaked clusters)");
  return 0;
}
