/* qcow2j lib: the internal snapshot table. */
#ifndef QCOW2J_SNAPSHOT_H
#define QCOW2J_SNAPSHOT_H

#include "image-internal.h"

/* Walk and validate the snapshot table that img->hdr names, filling
 * img->snapshots and img->snapshot_table_bytes.  0, or -1 with errno
 * EINVAL after naming the bad field. */
extern int qcow2_snapshots_load (struct qcow2_image *img);
/* Free img->snapshots. */
extern void qcow2_snapshots_free (struct qcow2_image *img);
/* The entry which names, or NULL with errno ENOENT after a message that
 * says what was asked and lists the snapshots the image has. */
extern const struct qcow2_snapshot *
qcow2_snapshot_find (const struct qcow2_image *img,
                     const struct qcow2_snapshot_choice *which);

#endif /* QCOW2J_SNAPSHOT_H */
