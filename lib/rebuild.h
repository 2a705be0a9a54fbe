/* qcow2j lib: rebuilding refcounts QEMU left stale. */
#ifndef QCOW2J_REBUILD_H
#define QCOW2J_REBUILD_H

#include <stdint.h>

#include "image-internal.h"

/* Recount every cluster below file_end and set what differs through the
 * journal, and the active tables' COPIED flags (during the set-up). */
extern int qcow2_rebuild_refcounts (struct qcow2_image *img,
                                    uint64_t file_end);

#endif /* QCOW2J_REBUILD_H */
