/* qcow2j lib: journalled metadata words. */
#ifndef QCOW2J_METADATA_H
#define QCOW2J_METADATA_H

#include <stdint.h>

#include "image-internal.h"

/* The 8-byte word at host offset of the image file, as every reader sees
 * it (the metadata cache's live bytes).  0, or -1 with errno after
 * reporting. */
extern int qcow2_meta_read64 (struct qcow2_image *img, uint64_t offset,
                              uint64_t *value);

/* Set n (1 or 2) consecutive words at offset to values: in the cache at
 * once (a reader never sees one without the other) and, as absolute
 * values, in the journal's open transaction.  The caller holds meta_lock
 * and is inside a change (commit.c). */
extern int qcow2_meta_set (struct qcow2_image *img, uint64_t offset,
                           const uint64_t *values, unsigned n);

static inline int
qcow2_meta_set64 (struct qcow2_image *img, uint64_t offset, uint64_t value)
{
  return qcow2_meta_set (img, offset, &value, 1);
}

#endif /* QCOW2J_METADATA_H */
