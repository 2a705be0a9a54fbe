/* qcow2j lib: where new host clusters come from. */
#ifndef QCOW2J_ALLOC_H
#define QCOW2J_ALLOC_H

#include <stdbool.h>
#include <stdint.h>

#include "image-internal.h"

/* Take n contiguous clusters: free space of the image (at hint, a host
 * offset, if free there; 0 for none), else new space past everything in
 * use, extending the file over it.  They are not yet referenced nor
 * counted: the caller's change does that.  For guest data, fresh is not
 * NULL and tells whether they read as zeroes in every crash outcome
 * (docs/journal-format.md 8.4, E2); for tables it is NULL.  Needs
 * meta_lock. */
extern int qcow2_alloc_clusters (struct qcow2_image *img, uint64_t n,
                                 uint64_t hint, bool *fresh,
                                 uint64_t *offset);

/* Clusters taken by qcow2_alloc_clusters that no change used after all
 * (the data write failed): free again, and no longer fresh. */
extern void qcow2_alloc_unused (struct qcow2_image *img, uint64_t offset,
                                uint64_t n);

/* Before a change that may allocate clusters: make sure host space is
 * there for the next few (free space, or space reserved past the end),
 * so that a full host disk fails the request now (ENOSPC), before
 * anything is changed, rather than half way through the change (which
 * stops all writes) or at the checkpoint.  Needs meta_lock. */
extern int qcow2_reserve_space (struct qcow2_image *img);

#endif /* QCOW2J_ALLOC_H */
