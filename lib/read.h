/* qcow2j lib: reading guest data (read.c), what lib/ uses beyond the
 * image API's qcow2_pread. */
#ifndef QCOW2J_READ_H
#define QCOW2J_READ_H

#include <stdint.h>

#include "image-internal.h"

/* Read [offset, offset+count), inside one guest cluster, as the L2 entry
 * 'source' of img mapped it: unallocated (the backing chain), compressed,
 * or a normal cluster (one shared with a snapshot).  For delayed
 * copy-on-write (docs/journal-format.md 8.6 D3): the source stays
 * readable while anything is owed from it.  0, or -1 with errno. */
extern int qcow2_read_source (struct qcow2_image *img, uint64_t source,
                              void *buf, uint64_t count, uint64_t offset);

#endif /* QCOW2J_READ_H */
