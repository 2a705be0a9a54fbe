/* qcow2j lib: metadata changes bracketed, and commits. */
#ifndef QCOW2J_COMMIT_H
#define QCOW2J_COMMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "image-internal.h"

/* Bracket one consistent change (records that must reach the same
 * transaction: an allocation and the entry that uses it, say).  Under
 * meta_lock.  qcow2_change_end takes the change's result: if it failed
 * (-1) the open transaction may hold half of it, so writes stop (the
 * failure latch) before the bracket closes, and it is never committed.
 * Returns r, errno kept. */
extern void qcow2_change_begin (struct qcow2_image *img);
extern int qcow2_change_end (struct qcow2_image *img, int r);

/* Commit everything changed so far, checkpointing first if the ring has
 * no room.  *covered says whether a commit sealed after the call began
 * completed: its flushes then covered every write completed before the
 * call.  Not under meta_lock. */
extern int qcow2_commit (struct qcow2_image *img, bool *covered);

/* After each piece of a large request: keep the open transaction well
 * below the ring's size, and ask for a checkpoint when the ring fills. */
extern int qcow2_after_piece (struct qcow2_image *img);

/* Before each piece of a request that may allocate: if many clusters
 * freed earlier wait for a checkpoint to become free space (docs/journal-
 * format.md R2, R3), commit and checkpoint now, so that the piece reuses
 * them rather than grow the file.  Not under meta_lock. */
extern int qcow2_release_freed_early (struct qcow2_image *img);

/* Give the journal the image's hooks (journal.h): DIRTY before the first
 * transaction, the cache's sealed and committed states, and for a journal
 * with no area (ordered mode) the write-back (else NULL). */
extern void qcow2_commit_hooks_install (struct qcow2_image *img,
                                        int (*write_back) (void *,
                                                           uint64_t));

#endif /* QCOW2J_COMMIT_H */
