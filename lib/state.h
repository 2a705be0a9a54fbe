/* qcow2j lib: the write session's state word and its failure latch. */
#ifndef QCOW2J_STATE_H
#define QCOW2J_STATE_H

#include <stdbool.h>

#include "image-internal.h"

static inline enum session_state
qcow2_state (struct qcow2_image *img)
{
  return __atomic_load_n (&img->state, __ATOMIC_ACQUIRE);
}

/* Move from 'from' to 'to' (not to SESSION_FAILED: see qcow2_stop_writes).
 * Returns false, changing nothing, if the state was not 'from'. */
extern bool qcow2_state_move (struct qcow2_image *img,
                              enum session_state from,
                              enum session_state to);

/* The failure latch.  After a failure that leaves the image unsafe to
 * change further (a change failed half way, a host flush or a checkpoint
 * failed): refuse every later write, zero, trim, flush and commit with
 * errno (EIO if 0), and fail the journal so that the open transaction,
 * which may hold half a change, is never committed.  What was committed
 * before is replayed at the next open.  Logs why, once.  Returns -1 with
 * errno set, so that callers can return its result. */
extern int qcow2_stop_writes (struct qcow2_image *img, const char *why);

/* 0 if writes may go on; else -1 with errno set: the latched error
 * (SESSION_FAILED), or EROFS (not writable). */
extern int qcow2_check_writing (struct qcow2_image *img);

#endif /* QCOW2J_STATE_H */
