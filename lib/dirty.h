/* qcow2j lib: the "journal dirty" bit, and QEMU's dirty and corrupt
 * bits: the incompatible features word. */
#ifndef QCOW2J_DIRTY_H
#define QCOW2J_DIRTY_H

#include "image-internal.h"

/* Before a transaction is written (the journal's pre_commit hook): write
 * DIRTY if it is not yet on disk.  Returns 1 if it wrote it (it must be
 * durable before the transaction: the journal flushes first), 0 if not,
 * -1 with errno. */
extern int qcow2_dirty_before_commit (struct qcow2_image *img);
/* A transaction is durable (the journal's durable hook, under its lock):
 * so is the DIRTY written before it. */
extern void qcow2_dirty_after_commit (struct qcow2_image *img);
/* When idle with every transaction checkpointed: clear DIRTY, so that
 * QEMU can open the image even if the server is killed now. */
extern int qcow2_dirty_clear_if_idle (struct qcow2_image *img);
/* Clean close, after the last checkpoint: clear DIRTY (12.2, C4). */
extern int qcow2_dirty_clear (struct qcow2_image *img);
/* After a replay in place, before the journal is used again: clear the
 * DIRTY that the previous session left (12.1). */
extern int qcow2_dirty_clear_replayed (struct qcow2_image *img);
/* After the refcounts QEMU left stale are rebuilt and checkpointed: clear
 * QEMU's dirty bit (incompatible bit 0), keeping ours as it is. */
extern int qcow2_dirty_clear_qemu (struct qcow2_image *img);
/* The image's metadata is corrupt: set QEMU's corrupt bit (incompatible
 * bit 1), durably, so that neither QEMU nor qcow2j writes the image before
 * qemu-img check -r repairs it. */
extern int qcow2_dirty_mark_corrupt (struct qcow2_image *img);

#endif /* QCOW2J_DIRTY_H */
