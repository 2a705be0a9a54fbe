/* qcow2j lib: persistent dirty bitmaps.
 *
 * The directory is walked in one place, qcow2_bitmaps_read, with every
 * bound checked there: the directory's size need not be a multiple of
 * the 8-byte entry alignment, and a hostile entry may claim more name or
 * extra data than the directory holds.
 *
 * Which bitmaps a write session keeps up to date, and how: bitmaps-live.c.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bitmaps.h"
#include "byteorder.h"
#include "cleanup.h"
#include "format.h"
#include "log.h"
#include "minmax.h"

/* A directory entry: table offset u64, table size u32, flags u32, type
 * u8, granularity bits u8, name size u16, extra data size u32, then
 * extra data and name, padded to 8 bytes. */
#define BME_HEADER          24
#define BME_OFF_TABLE        0
#define BME_OFF_TABLE_SIZE   8
#define BME_OFF_FLAGS       12
#define BME_OFF_TYPE        16
#define BME_OFF_GRANULARITY 17
#define BME_OFF_NAME_SIZE   18
#define BME_OFF_EXTRA_SIZE  20
/* A bitmap table larger than this is refused (QEMU's limit). */
#define BME_MAX_TABLE_BYTES (64u << 20)

static int
malformed (struct qcow2_image *img, uint32_t i, const char *what)
{
  const struct qcow2_header *h = &img->hdr;

  qerror ("%s: the bitmap directory (%" PRIu32 " bitmaps, %" PRIu64
          " bytes at 0x%" PRIx64 ") is malformed: bitmap %" PRIu32 ": %s",
          img->file->name, h->nb_bitmaps, h->bitmap_directory_size,
          h->bitmap_directory_offset, i, what);
  errno = EINVAL;
  return -1;
}

int
qcow2_bitmaps_read (struct qcow2_image *img, uint8_t **dirp,
                    struct qcow2_bitmap **bitmapsp)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t size = h->bitmap_directory_size;
  CLEANUP_FREE uint8_t *dir = NULL;
  CLEANUP_FREE struct qcow2_bitmap *bitmaps = NULL;
  uint64_t pos = 0;

  *dirp = NULL;
  *bitmapsp = NULL;
  if (!h->has_bitmaps_ext ||
      !(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) ||
      h->nb_bitmaps == 0)
    return 0;
  /* header.c bounded the size and the count, and checked the directory
   * lies in the file. */
  dir = malloc (size ? size : 1);
  bitmaps = calloc (h->nb_bitmaps, sizeof *bitmaps);
  if (dir == NULL || bitmaps == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  if (hostio_pread (img->file, dir, size, h->bitmap_directory_offset) == -1) {
    qerror ("%s: read the bitmap directory: %m", img->file->name);
    return -1;
  }
  for (uint32_t i = 0; i < h->nb_bitmaps; i++) {
    struct qcow2_bitmap *b = &bitmaps[i];
    uint64_t len;

    if (pos > size || size - pos < BME_HEADER)
      return malformed (img, i, "its entry lies past the directory's end");
    len = BME_HEADER + (uint64_t) get_be32 (dir + pos + BME_OFF_EXTRA_SIZE) +
      get_be16 (dir + pos + BME_OFF_NAME_SIZE);
    if (len > size - pos)
      return malformed (img, i, "its name and extra data run past the "
                        "directory's end");
    b->entry_pos = pos;
    b->table_offset = get_be64 (dir + pos + BME_OFF_TABLE);
    b->table_size = get_be32 (dir + pos + BME_OFF_TABLE_SIZE);
    b->flags = get_be32 (dir + pos + BME_OFF_FLAGS);
    b->type = dir[pos + BME_OFF_TYPE];
    b->granularity_bits = dir[pos + BME_OFF_GRANULARITY];
    if ((uint64_t) b->table_size * 8 > BME_MAX_TABLE_BYTES)
      return malformed (img, i, "its bitmap table is larger than 64 MiB");
    pos += ROUND_UP (len, 8);
  }
  *dirp = dir;
  *bitmapsp = bitmaps;
  dir = NULL;
  bitmaps = NULL;
  return h->nb_bitmaps;
}

void
qcow2_bitmaps_set_flags (uint8_t *dir, uint64_t entry_pos, uint32_t flags)
{
  put_be32 (dir + entry_pos + BME_OFF_FLAGS, flags);
}
