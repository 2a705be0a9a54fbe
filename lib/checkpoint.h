/* qcow2j lib: the checkpoint. */
#ifndef QCOW2J_CHECKPOINT_H
#define QCOW2J_CHECKPOINT_H

#include "image-internal.h"

/* Write the committed state of every changed metadata slice in place,
 * flush, move the journal's head past it, and discard the clusters whose
 * free it passed (10.2).  A failure stops writes (the journal keeps every
 * committed change).  Not under meta_lock. */
extern int qcow2_checkpoint (struct qcow2_image *img);

/* Ask the background thread (checkpointer.c) to look now. */
extern void qcow2_checkpoint_wake (struct qcow2_image *img);

#endif /* QCOW2J_CHECKPOINT_H */
