/* qcow2j lib: rebuilding refcounts QEMU left stale. */
#ifndef QCOW2J_REBUILD_H
#define QCOW2J_REBUILD_H

#include <stdint.h>

#include "image-internal.h"

/* Count the references to every cluster below file_end, walking every
 * table (walk.c, strict: a reference outside the file or misaligned is
 * refused, naming it).  During the set-up, before anything is written,
 * so that such an image is refused unchanged.  The counts, one per
 * cluster (malloc'd), or NULL with errno. */
extern uint16_t *qcow2_recount (struct qcow2_image *img, uint64_t file_end);

/* Set every refcount below file_end that differs from counts through the
 * journal, and the active tables' COPIED flags (during the set-up, once
 * the journal exists). */
extern int qcow2_rebuild_refcounts (struct qcow2_image *img,
                                    const uint16_t *counts,
                                    uint64_t file_end);

#endif /* QCOW2J_REBUILD_H */
