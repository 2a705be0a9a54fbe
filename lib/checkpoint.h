/* qcow2j lib: the checkpoint. */
#ifndef QCOW2J_CHECKPOINT_H
#define QCOW2J_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "image-internal.h"

/* Write the committed state of every changed metadata slice in place,
 * flush, move the journal's head past it, and discard the clusters whose
 * free it passed (10.2).  A failure stops writes (the journal keeps every
 * committed change).  Without a journal: a commit (writeback.c).  Not
 * under meta_lock. */
extern int qcow2_checkpoint (struct qcow2_image *img);

/* Write one slice of committed state home (the header: only its
 * journalled words), refusing one the metadata map says is no table
 * (overlap.c).  0, or -1 with errno after reporting; the caller stops
 * writes. */
extern int qcow2_write_home (struct qcow2_image *img,
                             const struct mcache_dirty *d);

/* Clusters that no durable table names any more and whose refcount is
 * 0 (v[0..n), reordered): once I/O that found them mapped is done
 * (grace.c), punched, flushed, and handed to the allocator (space.c).
 * A table's slices leave the metadata cache.  Neither meta_lock nor
 * checkpoint_lock held. */
extern int qcow2_release_clusters (struct qcow2_image *img, uint64_t *v,
                                   size_t n);

/* Delayed copy-on-write entries that zeroes and trims dropped go, once
 * no read that found their old mapping can be under way (owed.c). */
extern void qcow2_forget_dropped_owed (struct qcow2_image *img);

/* Ask the background thread (checkpointer.c) to look now. */
extern void qcow2_checkpoint_wake (struct qcow2_image *img);

#endif /* QCOW2J_CHECKPOINT_H */
