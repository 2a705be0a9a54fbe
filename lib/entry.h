/* qcow2j lib: what an L2 entry is, and which host clusters it holds. */
#ifndef QCOW2J_ENTRY_H
#define QCOW2J_ENTRY_H

#include <stdint.h>

#include "format.h"
#include "image-internal.h"

/* The kinds of an L2 entry's standard half (QEMU's QCow2ClusterType).
 * With extended L2 entries the zero flag is unused: such an entry is
 * NORMAL or UNALLOCATED, and its subcluster bitmap says what reads. */
enum qcow2_entry_type {
  ENTRY_UNALLOCATED,            /* reads through to the backing chain */
  ENTRY_ZERO_PLAIN,             /* zero flag, no host cluster */
  ENTRY_ZERO_ALLOC,             /* zero flag, host cluster kept */
  ENTRY_NORMAL,                 /* data in a host cluster */
  ENTRY_COMPRESSED,             /* compressed data, see qcow2_compressed */
};

/* Classify entry (not validated: map.c's qcow2_check_entry does that).
 * With an external data file, offset 0 with COPIED is a real mapping. */
extern enum qcow2_entry_type qcow2_entry_type (const struct qcow2_image *img,
                                               uint64_t entry);

/* The host offset a NORMAL or ZERO_ALLOC entry names (in img->data). */
static inline uint64_t
qcow2_entry_host (uint64_t entry)
{
  return entry & L2E_OFFSET_MASK;
}

/* A compressed entry's data: the host bytes [*offset, *offset+*length)
 * of the image file (they end on a 512-byte sector boundary). */
extern void qcow2_compressed (const struct qcow2_image *img, uint64_t entry,
                              uint64_t *offset, uint64_t *length);

/* The refcounted host clusters entry holds, *count of them from *first
 * (*count is 0 for none): its data cluster (not when it lies in an
 * external data file), or every cluster its compressed data touches. */
extern void qcow2_entry_clusters (const struct qcow2_image *img,
                                  uint64_t entry, uint64_t *first,
                                  uint64_t *count);

#endif /* QCOW2J_ENTRY_H */
