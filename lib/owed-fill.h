/* qcow2j lib: delayed copy-on-write, the writes (owed-fill.c). */
#ifndef QCOW2J_OWED_FILL_H
#define QCOW2J_OWED_FILL_H

#include <stdint.h>

#include "image-internal.h"

/* A write in place of count bytes at guest offset (inside one cluster),
 * host its host offset: if the cluster owes sectors, write through the
 * table (sectors written in part are completed from the source) and pay
 * the sectors written.  1 if written, 0 if nothing of the cluster is
 * owed (the caller writes), -1 with errno (the sectors stay owed).
 * Not under meta_lock. */
extern int qcow2_owed_write (struct qcow2_image *img, const void *buf,
                             uint64_t count, uint64_t offset, uint64_t host);

/* Copy everything still owed into the new clusters: the journal's
 * pre_seal hook (commit.c), once no change is half made and new ones
 * wait (D1).  0, or -1 with errno after stopping writes. */
extern int qcow2_owed_fill_all (struct qcow2_image *img);

/* While the table is full, fill the oldest owed clusters.  Not under
 * meta_lock.  0, or -1 with errno after stopping writes. */
extern int qcow2_owed_fill_early (struct qcow2_image *img);

#endif /* QCOW2J_OWED_FILL_H */
