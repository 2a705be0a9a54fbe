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
};

#define QCOW2_BITMAP_IN_USE 1u  /* flags: contents not to be trusted */
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

/* Mark every persistent bitmap in use (before a first write). */
extern int qcow2_bitmaps_mark_in_use (struct qcow2_image *img);

#endif /* QCOW2J_BITMAPS_H */
