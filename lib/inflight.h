/* qcow2j lib: guest clusters being allocated, one change at a time. */
#ifndef QCOW2J_INFLIGHT_H
#define QCOW2J_INFLIGHT_H

#include <stdint.h>

#include "image-internal.h"

/* Under meta_lock: wait until no other thread is changing the guest
 * cluster (its offset), then mark it in flight.  meta_lock is released
 * while waiting. */
extern void qcow2_cluster_lock (struct qcow2_image *img, uint64_t cluster);
/* Under meta_lock: the change of that cluster is over. */
extern void qcow2_cluster_unlock (struct qcow2_image *img, uint64_t cluster);

#endif /* QCOW2J_INFLIGHT_H */
