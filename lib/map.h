/* qcow2j lib: translating guest offsets to host locations through the
 * L1 and L2 tables. */
#ifndef QCOW2J_MAP_H
#define QCOW2J_MAP_H

#include <stdint.h>

#include "image-internal.h"

enum qcow2_run_type {
  RUN_DATA,                     /* host_offset in img->data */
  RUN_ZERO,                     /* reads as zeroes */
  RUN_UNALLOCATED,              /* falls through to the backing file */
  RUN_COMPRESSED,               /* l2_entry describes the cluster */
};

struct qcow2_run {
  enum qcow2_run_type type;
  uint64_t length;              /* > 0 */
  uint64_t host_offset;         /* RUN_DATA: host offset of the first byte */
  uint64_t l2_entry;            /* RUN_COMPRESSED: the raw descriptor */
  bool copied;                  /* RUN_DATA: the cluster's refcount is 1
                                   (COPIED), so it may be written in place */
};

/* Describe the run of guest bytes starting at offset (inside the disk) that
 * share one type and, for data, are contiguous on the host; its length is
 * at most max_len.  Compressed runs never cross a cluster boundary.
 * Returns 0, or -1 with errno EIO after reporting bad metadata. */
extern int qcow2_map (struct qcow2_image *img, uint64_t offset,
                      uint64_t max_len, struct qcow2_run *run);

/* The offset of the L2 table mapping guest offset guest (0: none), from
 * its L1 entry, checked as a read would.  0, or -1 with errno EIO after
 * reporting. */
extern int qcow2_l2_table (struct qcow2_image *img, uint64_t guest,
                           uint64_t *l2_offset);

/* Check an L2 entry (and subcluster bitmap) of guest offset as a read
 * would, before a write acts on what it names.  0, or -1 with errno EIO
 * after reporting. */
extern int qcow2_check_entry (struct qcow2_image *img, uint64_t guest,
                              uint64_t entry, uint64_t bitmap);

#endif /* QCOW2J_MAP_H */
