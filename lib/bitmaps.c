/* qcow2j lib: persistent dirty bitmaps.
 *
 * qcow2j does not update bitmaps.  Before its first write it marks every
 * persistent bitmap "in use", exactly as QEMU leaves them after an
 * unclean stop: QEMU then knows their contents are not to be trusted
 * (and qemu-img check still passes), so no bitmap ever claims clean what
 * qcow2j wrote.  The flag is set in place in the bitmap directory and
 * flushed before anything else is written.
 */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "cleanup.h"
#include "format.h"
#include "image-internal.h"
#include "log.h"
#include "minmax.h"

#define BME_FLAG_IN_USE 1u
#define BITMAP_ENTRY_HEADER 24          /* fixed part of a directory entry */

int
qcow2_bitmaps_mark_in_use (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;
  uint64_t size = h->bitmap_directory_size, pos = 0;
  CLEANUP_FREE uint8_t *dir = NULL;
  bool changed = false;

  if (!h->has_bitmaps_ext || !(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) ||
      h->nb_bitmaps == 0)
    return 0;
  /* header.c bounded the size and checked the offset against the file. */
  dir = malloc (size);
  if (dir == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  if (hostio_pread (img->file, dir, size, h->bitmap_directory_offset) == -1) {
    qerror ("%s: read the bitmap directory: %m", img->file->name);
    return -1;
  }
  for (uint32_t i = 0; i < h->nb_bitmaps; i++) {
    uint32_t flags, extra;
    uint16_t name;

    if (size - pos < BITMAP_ENTRY_HEADER)
      goto bad;
    flags = get_be32 (dir + pos + 12);
    name = get_be16 (dir + pos + 18);
    extra = get_be32 (dir + pos + 20);
    if (extra > size || size - pos - BITMAP_ENTRY_HEADER < (uint64_t) extra + name)
      goto bad;
    if (!(flags & BME_FLAG_IN_USE)) {
      put_be32 (dir + pos + 12, flags | BME_FLAG_IN_USE);
      changed = true;
    }
    pos += ROUND_UP (BITMAP_ENTRY_HEADER + (uint64_t) extra + name, 8);
  }
  if (!changed)
    return 0;
  if (hostio_pwrite (img->file, dir, size, h->bitmap_directory_offset) == -1 ||
      hostio_flush (img->file) == -1) {
    qerror ("%s: mark bitmaps in use: %m", img->file->name);
    return -1;
  }
  qdebug ("%s: %" PRIu32 " persistent bitmaps marked in use",
          img->file->name, h->nb_bitmaps);
  return 0;

 bad:
  qerror ("%s: the bitmap directory (%" PRIu32 " bitmaps, %" PRIu64
          " bytes) is malformed", img->file->name, h->nb_bitmaps, size);
  errno = EINVAL;
  return -1;
}
