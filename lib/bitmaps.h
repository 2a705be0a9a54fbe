/* qcow2j lib: the persistent bitmap directory. */
#ifndef QCOW2J_BITMAPS_H
#define QCOW2J_BITMAPS_H

#include <stdint.h>

#include "image-internal.h"

/* One directory entry, as far as qcow2j needs it. */
struct qcow2_bitmap {
  uint64_t entry_pos;           /* its entry's offset in the directory */
  uint64_t table_offset;        /* its bitmap table */
  uint32_t table_size;          /* entries in that table */
  uint32_t flags;
  uint8_t type;                 /* 1: dirty tracking, the only one */
  uint8_t granularity_bits;     /* each bit covers 2^this guest bytes */
};

#define QCOW2_BITMAP_IN_USE 1u  /* flags: contents not to be trusted */
#define QCOW2_BITMAP_AUTO   2u  /* flags: enabled, tracks every write */
#define QCOW2_BITMAP_EXTRA_DATA_COMPATIBLE 4u
#define QCOW2_BITMAP_TYPE_DIRTY 1
/* A bitmap table entry with no data cluster whose bit 0 is set: every bit
 * of that part of the bitmap is set. */
#define QCOW2_BITMAP_TABLE_ALL_ONES 1u
/* A bitmap table entry: the offset of a cluster of bitmap data (0: all
 * zeroes or all ones, per bit 0). */
#define QCOW2_BITMAP_TABLE_OFFSET_MASK 0x00fffffffffffe00ULL

/* Read and walk the bitmap directory, if the image has one that QEMU
 * would use (the extension, with the autoclear bit set): *dir gets its
 * bytes and *bitmaps one entry per bitmap (both malloc'd, NULL if
 * none).  Returns the number of bitmaps, or -1 with errno EINVAL after
 * naming what is malformed. */
extern int qcow2_bitmaps_read (struct qcow2_image *img, uint8_t **dir,
                               struct qcow2_bitmap **bitmaps);

/* Set the flags of the bitmap whose entry is at entry_pos in the
 * directory bytes dir (as qcow2_bitmaps_read returned them). */
extern void qcow2_bitmaps_set_flags (uint8_t *dir, uint64_t entry_pos,
                                     uint32_t flags);

#endif /* QCOW2J_BITMAPS_H */
