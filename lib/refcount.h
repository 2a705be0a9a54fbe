/* qcow2j lib: refcounts. */
#ifndef QCOW2J_REFCOUNT_H
#define QCOW2J_REFCOUNT_H

#include <stdint.h>

#include "image-internal.h"

/* The refcount of the cluster at host offset (0 past the table). */
extern int qcow2_refcount_get (struct qcow2_image *img, uint64_t offset,
                               uint64_t *value);

/* Set it, creating its refcount block or growing the refcount table as
 * needed.  Needs meta_lock, inside a change. */
extern int qcow2_refcount_set (struct qcow2_image *img, uint64_t offset,
                               uint64_t value);

/* Drop one reference to the cluster at offset; frees it (host space
 * discarded after the checkpoint) when none is left.  A cluster of the
 * image's own metadata is refused (EIO): an entry naming it is
 * corruption.  Needs meta_lock, inside a change. */
extern int qcow2_cluster_unref (struct qcow2_image *img, uint64_t offset);

/* Drop what an L2 entry holds (entry.c's qcow2_entry_clusters). */
extern int qcow2_release_host (struct qcow2_image *img, uint64_t entry);

#endif /* QCOW2J_REFCOUNT_H */
