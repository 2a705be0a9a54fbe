/* qcow2j lib: the "journal dirty" bit (incompatible bit 60), and QEMU's
 * own dirty bit (bit 0, lazy refcounts).
 *
 * The protocol (docs/journal-format.md 2.3): DIRTY is set, and durable,
 * before the first transaction of a session whose effects are not in
 * place yet (written by the pre-commit hook, made durable by the
 * journal's flush before that transaction: condition E4 of the one-flush
 * commit needs it durable); it is cleared only once everything committed
 * is checkpointed: when idle, at a clean close, or after a replay.
 *
 * The word on disk is hdr.incompatible_features, which never holds our
 * bit while a session runs, with QJ_INCOMPAT_DIRTY added while
 * dirty_written.  Every write of it happens under dirty_lock.  The
 * durable hook reads dirty_written without it: it runs in the committing
 * thread, after that thread's pre-commit hook took dirty_lock, and the
 * idle clear cannot run during a commit (journal_is_idle is false while
 * one is under way, and a commit that starts after the clear's check
 * waits for dirty_lock in its pre-commit hook).
 */
#include <config.h>

#include "cleanup.h"
#include "dirty.h"
#include "format.h"
#include "header-write.h"
#include "journal-format.h"
#include "log.h"

/* Write the incompatible features word as it must now be on disk. */
static int
write_word (struct qcow2_image *img, bool flush)
{
  return qcow2_header_write_word (img, QCOW2_OFF_INCOMPATIBLE,
                                  img->hdr.incompatible_features |
                                  (img->dirty_written ? QJ_INCOMPAT_DIRTY : 0),
                                  flush);
}

int
qcow2_dirty_before_commit (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->dirty_lock);

  if (img->dirty_written)
    return 0;
  img->dirty_written = true;
  if (write_word (img, false) == -1) {
    img->dirty_written = false;
    return -1;
  }
  return 1;
}

void
qcow2_dirty_after_commit (struct qcow2_image *img)
{
  if (img->dirty_written)
    __atomic_store_n (&img->dirty_durable, true, __ATOMIC_RELEASE);
}

/* Clear DIRTY on disk, durably.  Under dirty_lock. */
static int
clear (struct qcow2_image *img)
{
  if (!img->dirty_written)
    return 0;
  img->dirty_written = false;
  if (write_word (img, true) == -1) {
    img->dirty_written = true;
    return -1;
  }
  __atomic_store_n (&img->dirty_durable, false, __ATOMIC_RELEASE);
  return 0;
}

int
qcow2_dirty_clear_if_idle (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->dirty_lock);

  if (!img->dirty_written || !journal_is_idle (img->journal) ||
      journal_durable_seq (img->journal) >= journal_head_seq (img->journal))
    return 0;
  if (clear (img) == -1)
    return -1;
  qdebug ("%s: idle: journal dirty bit cleared", img->file->name);
  return 0;
}

int
qcow2_dirty_clear (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->dirty_lock);

  return clear (img);
}

int
qcow2_dirty_clear_replayed (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->dirty_lock);

  assert (!img->dirty_written && img->journal == NULL);
  img->hdr.incompatible_features &= ~QJ_INCOMPAT_DIRTY;
  return write_word (img, true);
}

int
qcow2_dirty_clear_qemu (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->dirty_lock);

  img->hdr.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
  return write_word (img, true);
}

int
qcow2_dirty_mark_corrupt (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->dirty_lock);

  /* A version 2 header has no such word (bytes 72 on are its
   * extensions): writes stop, and that is all. */
  if (img->hdr.version < 3)
    return 0;
  img->hdr.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
  return write_word (img, true);
}
