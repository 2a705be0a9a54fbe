/* qcow2j lib: metadata changes bracketed, and commits.
 *
 * Every change (write.c, discard.c, rebuild.c) is made between
 * qcow2_change_begin and qcow2_change_end, so that the journal never
 * seals a transaction holding half of one (rule R4), and so that a
 * change that fails half way stops all writes before the bracket closes:
 * what it added must never be committed.  Commits go through
 * qcow2_commit, which makes room in the ring by checkpointing when the
 * ring is full.
 *
 * The journal's hooks (journal.h) tie a commit to the rest of the image:
 * guest data in an external data file is flushed first (8.3 step 2: data
 * before the transaction that maps it; E3 denies such batches the
 * one-flush commit), DIRTY is written before the first transaction
 * (dirty.c), sectors of new clusters still owed their old content are
 * copied before the seal (owed-fill.c: delayed copy-on-write, D1), and
 * the metadata cache snapshots what a sealed transaction holds and
 * promotes it to committed state once durable (rule R1).
 */
#include <config.h>

#include <errno.h>

#include "checkpoint.h"
#include "commit.h"
#include "dirty.h"
#include "log.h"
#include "owed-fill.h"
#include "state.h"

void
qcow2_change_begin (struct qcow2_image *img)
{
  ASSERT_META_LOCKED (img);
  ASSERT_JOURNAL_SET_UP (img);
  journal_begin (img->journal);
}

int
qcow2_change_end (struct qcow2_image *img, int r)
{
  ASSERT_META_LOCKED (img);
  if (r == -1)
    qcow2_stop_writes (img, "a metadata change failed (committed data is "
                       "safe)");
  journal_end (img->journal);
  return r;
}

int
qcow2_commit (struct qcow2_image *img, bool *covered)
{
  uint64_t sealed_before, sealed_now, durable_now;

  ASSERT_META_UNLOCKED (img);
  ASSERT_JOURNAL_SET_UP (img);
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
qcow2_after_piece (struct qcow2_image *img)
{
  bool covered;

  if (journal_open_is_large (img->journal) &&
      qcow2_commit (img, &covered) == -1)
    return -1;
  if (journal_ring_used (img->journal) > img->ring_high_water)
    qcow2_checkpoint_wake (img);
  return 0;
}

/* Frees waiting for a checkpoint that make it worth running one early:
 * reusing them keeps the file compact, and the checkpoint's cost (its
 * flushes) is spread over this much.  Fewer wait for the checkpoint
 * thread (a few seconds). */
#define RELEASE_AFTER_BYTES (4ULL << 20)

int
qcow2_release_freed_early (struct qcow2_image *img)
{
  bool covered;

  if (journal_frees_pending (img->journal) * img->hdr.cluster_size <
      RELEASE_AFTER_BYTES)
    return 0;
  if (qcow2_commit (img, &covered) == -1 || qcow2_checkpoint (img) == -1)
    return -1;
  return 0;
}

/* Journal hooks ---------------------------------------------------------- */

static int
pre_commit (void *opaque)
{
  struct qcow2_image *img = opaque;

  if (img->data != img->file && hostio_flush (img->data) == -1) {
    qerror ("%s: flush: %m", img->data->name);
    return -1;
  }
  return qcow2_dirty_before_commit (img);
}

static int
pre_seal (void *opaque)
{
  return qcow2_owed_fill_all (opaque);
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
  qcow2_dirty_after_commit (img);
}

void
qcow2_commit_hooks_install (struct qcow2_image *img,
                            int (*write_back) (void *, uint64_t))
{
  const struct journal_hooks hooks = {
    .pre_commit = pre_commit, .pre_seal = pre_seal, .sealed = sealed,
    .durable = durable, .write_back = write_back,
  };

  journal_set_hooks (img->journal, &hooks, img);
}
