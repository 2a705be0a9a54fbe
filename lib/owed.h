/* qcow2j lib: the sectors of new clusters still owed their old content
 * (delayed copy-on-write, docs/journal-format.md 8.6; owed.c). */
#ifndef QCOW2J_OWED_H
#define QCOW2J_OWED_H

#include <stdbool.h>
#include <stdint.h>

#include "format.h"
#include "image-internal.h"

#define OWED_SECTOR 512
#define OWED_MAX_WORDS \
  ((1ULL << QCOW2_MAX_CLUSTER_BITS) / OWED_SECTOR / 64)

/* A copy of one owed cluster's state, taken under owed_lock. */
struct owed_view {
  uint64_t guest;               /* guest offset of the cluster */
  uint64_t host;                /* the new host cluster mapped for it */
  uint64_t source;              /* the L2 entry it replaced */
  uint64_t bits[OWED_MAX_WORDS];  /* bit s: sector s is owed */
};

static inline bool
qcow2_owed_sector (const struct owed_view *v, uint64_t s)
{
  return v->bits[s / 64] >> (s % 64) & 1;
}

/* Size the table once the header is read; free it (image.c; the lock
 * and condition are image.c's to create and destroy). */
extern void qcow2_owed_init (struct qcow2_image *img);
extern void qcow2_owed_destroy (struct qcow2_image *img);

/* Is any cluster owed?  Lock-free; a mapping of an owed cluster is
 * published only after its entry is in the table, so a reader that found
 * that mapping sees it here. */
static inline bool
qcow2_owed_any (struct qcow2_image *img)
{
  return __atomic_load_n (&img->nr_owed, __ATOMIC_ACQUIRE) > 0;
}

/* Under meta_lock, while planning a change: promise a slot to the change
 * (false if the table is full: copy at once instead).  The change then
 * either calls qcow2_owed_add, inside its bracket before it publishes
 * the mapping, or gives the slot back with qcow2_owed_unreserve. */
extern bool qcow2_owed_reserve (struct qcow2_image *img);
extern void qcow2_owed_unreserve (struct qcow2_image *img);
/* Under meta_lock, inside the change that maps host for the guest
 * cluster: every sector of it but [from, to) (cluster-relative, sector
 * aligned) is owed from source, the entry the change replaces. */
extern void qcow2_owed_add (struct qcow2_image *img, uint64_t guest,
                            uint64_t host, uint64_t source, uint64_t from,
                            uint64_t to);

/* A copy of the owed state of the guest cluster mapped at host, for a
 * read; false if nothing of it is owed. */
extern bool qcow2_owed_peek (struct qcow2_image *img, uint64_t guest,
                             uint64_t host, struct owed_view *v);

/* Claims: one write or fill at a time per owed cluster, each over its
 * host I/O with no lock held.  qcow2_owed_claim waits for the claim on
 * the guest cluster mapped at host, and returns false (no claim) if
 * nothing of it is owed.  qcow2_owed_claim_next claims an owed cluster
 * to fill: any (all true), or the oldest while the table is full (false
 * when there is none).  Every claim ends with qcow2_owed_done, saying
 * which sectors [from, to) (cluster-relative, sector aligned; from == to
 * for none) now hold what the mapping promises. */
extern bool qcow2_owed_claim (struct qcow2_image *img, uint64_t guest,
                              uint64_t host, struct owed_view *v);
extern bool qcow2_owed_claim_next (struct qcow2_image *img, bool all,
                                   struct owed_view *v);
extern void qcow2_owed_done (struct qcow2_image *img,
                             const struct owed_view *v, uint64_t from,
                             uint64_t to);

/* Under meta_lock, inside the change that replaced the mapping of the
 * guest cluster (a zero or trim of all of it, D5): it owes nothing any
 * more, and is never filled.  Waits for a claim on it to end.  The entry
 * stays for reads that found the old mapping (owed.c, invariant 5). */
extern void qcow2_owed_drop (struct qcow2_image *img, uint64_t guest);

/* Under checkpoint_lock: mark the entries dropped so far, and say if
 * there are any; once every read begun before this has ended
 * (qcow2_io_wait_older), qcow2_owed_forget_end removes them. */
extern bool qcow2_owed_forget_begin (struct qcow2_image *img);
extern void qcow2_owed_forget_end (struct qcow2_image *img);

#endif /* QCOW2J_OWED_H */
