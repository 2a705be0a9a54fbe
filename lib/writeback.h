/* qcow2j lib: tables written home in order, for images that carry no
 * journal. */
#ifndef QCOW2J_WRITEBACK_H
#define QCOW2J_WRITEBACK_H

#include <stdint.h>

/* The journal's write_back hook (journal.h) for a version 2 image:
 * opaque is the image.  Writes everything sealed so far home in the
 * order of docs/journal-format.md 13.1 (V1-V6), then makes the refcount
 * decrements it made safe.  A failure stops writes. */
extern int qcow2_write_back (void *opaque, uint64_t seq);

#endif /* QCOW2J_WRITEBACK_H */
