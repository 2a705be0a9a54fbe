/* qcow2j lib: free space inside the image file (space.c). */
#ifndef QCOW2J_SPACE_H
#define QCOW2J_SPACE_H

#include <stdbool.h>
#include <stdint.h>

#include "image-internal.h"

/* What a free range of the file reads as, in every crash outcome. */
enum space_kind {
  SPACE_CLEAN = 1,              /* zeroes (a durable hole): fresh (E2) */
  SPACE_STALE = 2,              /* whatever it held before */
};

/* Learn that [start, start + len), cluster aligned, has refcount 0: the
 * parts that hold no metadata (the metadata map must be built) are free.
 * Parts that are holes in the host file are clean: the caller flushes
 * before anything is allocated.  Under setup_lock, in the set-up (the
 * signature is qcow2_refcount_zero_runs's callback's).  Always 0. */
extern int qcow2_space_learn_run (struct qcow2_image *img, uint64_t start,
                                  uint64_t len, void *opaque);

/* Forget every free range (nothing may be taken until learnt again). */
extern void qcow2_space_forget (struct qcow2_image *img);

/* Take n contiguous free clusters: at hint if they are free there, else
 * the lowest run long enough (first fit), clean ranges first or stale
 * ones first as asked.  *fresh: every byte reads as zeroes in every crash
 * outcome (a clean range).  1 if taken, 0 if no free range is long
 * enough.  Under meta_lock. */
extern int qcow2_space_take (struct qcow2_image *img, uint64_t n,
                             uint64_t hint, bool prefer_clean,
                             uint64_t *offset, bool *fresh);

/* Take [start, start + len) if all of it is free (1), else 0.  Under
 * meta_lock or setup_lock. */
extern int qcow2_space_take_at (struct qcow2_image *img, uint64_t start,
                                uint64_t len);

/* [start, start + len) is free again, of this kind.  Forgotten (left for
 * the next session to find) if the map is full or memory is short.
 * Under meta_lock. */
extern void qcow2_space_give (struct qcow2_image *img, uint64_t start,
                              uint64_t len, enum space_kind kind);

/* Bytes known free (read without meta_lock, it is only a hint). */
extern uint64_t qcow2_space_free_bytes (struct qcow2_image *img);

/* Where the run of free space that ends at 'end' starts ('end' if the
 * cluster before it is not free). */
extern uint64_t qcow2_space_free_tail (struct qcow2_image *img, uint64_t end);

/* Where the run of clean free space that starts at 'start' ends ('start'
 * if none starts there).  Under meta_lock. */
extern uint64_t qcow2_space_clean_from (struct qcow2_image *img,
                                        uint64_t start);

#endif /* QCOW2J_SPACE_H */
