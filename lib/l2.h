/* qcow2j lib: L1 and L2 entries, looked up and changed. */
#ifndef QCOW2J_L2_H
#define QCOW2J_L2_H

#include <stdbool.h>
#include <stdint.h>

#include "image-internal.h"

/* The L2 entry (and subcluster bitmap) of guest offset; *entry_offset is
 * its host offset, 0 if there is no L2 table. */
extern int qcow2_l2_lookup (struct qcow2_image *img, uint64_t guest,
                            uint64_t *entry_offset, uint64_t *entry,
                            uint64_t *bitmap);

/* The same, before a change acts on what the entry names: under
 * meta_lock, the guest cluster in flight (inflight.c); fails with the
 * latched error once writes have stopped, and checks the entry as a read
 * would. */
extern int qcow2_l2_entry_to_change (struct qcow2_image *img, uint64_t guest,
                                     uint64_t *entry_offset, uint64_t *entry,
                                     uint64_t *bitmap);

/* Make sure guest offset's L2 table exists and is not shared (allocating
 * or copying it), and return the host offset of its entry.  Needs
 * meta_lock, inside a change. */
extern int qcow2_l2_prepare (struct qcow2_image *img, uint64_t guest,
                             uint64_t *entry_offset);

/* True if guest offset's L2 table exists and is the active L1's alone:
 * qcow2_l2_prepare then allocates nothing.  Needs meta_lock. */
extern bool qcow2_l2_ready (struct qcow2_image *img, uint64_t guest);

/* Set the entry at entry_offset (and its bitmap with extended L2 entries,
 * in the same step).  Needs meta_lock, inside a change. */
extern int qcow2_l2_set (struct qcow2_image *img, uint64_t entry_offset,
                         uint64_t entry, uint64_t bitmap);

/* Set L1 entry l1i.  Needs meta_lock, inside a change. */
extern int qcow2_l1_set (struct qcow2_image *img, uint64_t l1i,
                         uint64_t value);

#endif /* QCOW2J_L2_H */
