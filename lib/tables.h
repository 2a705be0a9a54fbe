/* qcow2j lib: the tables kept in memory. */
#ifndef QCOW2J_TABLES_H
#define QCOW2J_TABLES_H

#include "image-internal.h"

/* Read the active L1 table into img->l1. */
extern int qcow2_read_l1 (struct qcow2_image *img);
/* Read the refcount table into img->reftable (before the first change). */
extern int qcow2_refcounts_load (struct qcow2_image *img);
/* After a replay changed the file: read the header again, validate the
 * snapshot table it names, and read the L1 table (and the refcount
 * table, if it was loaded) again.  Nothing else may use the image
 * meanwhile. */
extern int qcow2_reload_metadata (struct qcow2_image *img);

#endif /* QCOW2J_TABLES_H */
