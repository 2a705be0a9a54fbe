/* qcow2j lib: where new host clusters come from. */
#ifndef QCOW2J_ALLOC_H
#define QCOW2J_ALLOC_H

#include <stdint.h>

#include "image-internal.h"

/* Take n contiguous new clusters past everything in use, extending the
 * file over them (they are not yet referenced nor counted: the caller's
 * change does that).  Needs meta_lock, inside a change. */
extern int qcow2_alloc_clusters (struct qcow2_image *img, uint64_t n,
                                 uint64_t *offset);

/* Before a change that may allocate clusters: make sure host space is
 * reserved for the next few, so that a full host disk fails the request
 * now (ENOSPC), before anything is changed, rather than half way through
 * the change (which stops all writes) or at the checkpoint.  Needs
 * meta_lock. */
extern int qcow2_reserve_space (struct qcow2_image *img);

#endif /* QCOW2J_ALLOC_H */
