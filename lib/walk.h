/* qcow2j lib: one walk over every table of the image's metadata (walk.c). */
#ifndef QCOW2J_WALK_H
#define QCOW2J_WALK_H

#include <stdbool.h>
#include <stdint.h>

#include "image-internal.h"

/* Called once per reference to a region of metadata: the region
 * [offset, offset + len) holds metadata of this kind.  An L2 table that
 * two L1 tables name is visited twice, once per reference.  Return 0 to
 * go on, -1 (errno set, the error said) to stop the walk. */
typedef int (*qcow2_walk_fn) (struct qcow2_image *img, void *opaque,
                              enum meta_kind kind, uint64_t offset,
                              uint64_t len);

/* Visit the header cluster, the active L1 table (as held in memory) and
 * the L2 tables it names, the refcount table and blocks (in memory), the
 * snapshot table, each snapshot's L1 table and the L2 tables it names,
 * the bitmap directory, each bitmap table and its data clusters: every
 * region before the regions its table names.  Each table is read once,
 * after its bounds are checked here: a region must be cluster-aligned
 * (tables and data) and lie below file_end.
 *
 * A reference that breaks these bounds is, if 'strict', an error naming
 * the field and its value (EIO: the walk stops); otherwise it is skipped
 * with the tables it would name (a read through it is refused anyway,
 * map.c).  0, or -1 with errno. */
extern int qcow2_walk_metadata (struct qcow2_image *img, uint64_t file_end,
                                bool strict, qcow2_walk_fn visit,
                                void *opaque);

#endif /* QCOW2J_WALK_H */
