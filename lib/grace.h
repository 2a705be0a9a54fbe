/* qcow2j lib: host I/O in flight against reuse of its clusters (grace.c). */
#ifndef QCOW2J_GRACE_H
#define QCOW2J_GRACE_H

#include "image-internal.h"

/* Around a lookup of a host offset in the image's tables and the host
 * I/O that uses it, when no lock keeps the cluster from being freed
 * meanwhile (reads, writes in place).  qcow2_io_end takes what
 * qcow2_io_begin returned.  Lock-free; may nest. */
extern unsigned qcow2_io_begin (struct qcow2_image *img);
extern void qcow2_io_end (struct qcow2_image *img, unsigned token);

/* Wait until every section begun before this call has ended.  Under
 * checkpoint_lock (one waiter at a time); the caller must not be inside a
 * section. */
extern void qcow2_io_wait_older (struct qcow2_image *img);

#endif /* QCOW2J_GRACE_H */
