/* qcow2j lib: refcounts. */
#ifndef QCOW2J_REFCOUNT_H
#define QCOW2J_REFCOUNT_H

#include <stdbool.h>
#include <stdint.h>

#include "image-internal.h"

/* The refcount of the cluster at host offset (0 past the table). */
extern int qcow2_refcount_get (struct qcow2_image *img, uint64_t offset,
                               uint64_t *value);

/* Set it, creating its refcount block or growing the refcount table as
 * needed.  Needs meta_lock, inside a change. */
extern int qcow2_refcount_set (struct qcow2_image *img, uint64_t offset,
                               uint64_t value);

/* Drop one reference to the cluster at offset; frees it (host space
 * discarded after the checkpoint) when none is left.  A cluster of the
 * image's own metadata is refused (EIO): an entry naming it is
 * corruption.  Without a journal only the checks are made now: the
 * decrement waits (qcow2_cluster_unref_deferred).  Needs meta_lock,
 * inside a change. */
extern int qcow2_cluster_unref (struct qcow2_image *img, uint64_t offset);

/* Without a journal (docs/journal-format.md 13.1, V6): drop the
 * reference qcow2_cluster_unref deferred; *last says that was the last
 * (the cluster is to be released).  Needs meta_lock, inside a change. */
extern int qcow2_cluster_unref_deferred (struct qcow2_image *img,
                                         uint64_t offset, bool *last);

/* Call fn for each maximal run of clusters in [0, end) whose refcount is
 * 0, in order, stopping at the first fn that returns -1; *used_end is
 * the end of the last cluster whose refcount is not 0 (inside the file
 * or past its end).  Reads every refcount block from the file: every
 * refcount change must be checkpointed.  Under setup_lock. */
extern int qcow2_refcount_zero_runs (struct qcow2_image *img, uint64_t end,
                                     int (*fn) (struct qcow2_image *img,
                                                uint64_t start, uint64_t len,
                                                void *opaque),
                                     void *opaque, uint64_t *used_end);

/* Drop what an L2 entry holds (entry.c's qcow2_entry_clusters). */
extern int qcow2_release_host (struct qcow2_image *img, uint64_t entry);

#endif /* QCOW2J_REFCOUNT_H */
