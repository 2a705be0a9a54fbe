/* qcow2j lib: the persistent dirty bitmaps a write session keeps up to
 * date (bitmaps-live.c). */
#ifndef QCOW2J_BITMAPS_LIVE_H
#define QCOW2J_BITMAPS_LIVE_H

#include <stdbool.h>
#include <stdint.h>

#include "image-internal.h"

/* Before the first write: take every persistent bitmap that is enabled,
 * consistent and well formed as one this session keeps up to date
 * (img->live_bitmaps); mark in use any other enabled one that QEMU would
 * trust, since its contents will no longer be right; leave disabled,
 * in-use and unknown ones as they are.  Under setup_lock, with the
 * metadata map built. */
extern int qcow2_bitmaps_start (struct qcow2_image *img);

/* Set the bits that cover guest [offset, offset + count) in every bitmap
 * of img->live_bitmaps, in a change of its own (before the change that
 * alters the range, so a crash can never keep the alteration without
 * the bits: transactions replay in order).  Not under meta_lock.  0, or
 * -1 with errno. */
extern int qcow2_bitmaps_mark (struct qcow2_image *img, uint64_t offset,
                               uint64_t count);

/* Is some bit set by qcow2_bitmaps_mark (by any request) not durable
 * yet?  A write that changes data in place, with no transaction of its
 * own, must commit first then. */
extern bool qcow2_bitmaps_pending (struct qcow2_image *img);

#endif /* QCOW2J_BITMAPS_LIVE_H */
