/* qcow2j lib: what an L2 entry is, and which host clusters it holds.
 *
 * Reads, writes, zeroing, trimming, freeing and the refcount rebuild all
 * need to know what an entry maps and what it owns on the host.  They ask
 * here, so that a rule of the format (the zero flag unused with extended
 * L2 entries, offset 0 being a real mapping in an external data file, the
 * compressed descriptor's layout for each cluster size) is written once,
 * as QEMU's qcow2_get_cluster_type is.
 */
#include <config.h>

#include "entry.h"
#include "format.h"
#include "minmax.h"

enum qcow2_entry_type
qcow2_entry_type (const struct qcow2_image *img, uint64_t entry)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t host = qcow2_entry_host (entry);

  if (entry & QCOW_OFLAG_COMPRESSED)
    return ENTRY_COMPRESSED;
  if (h->l2_entry_size == 8 && (entry & QCOW_OFLAG_ZERO))
    return host != 0 ? ENTRY_ZERO_ALLOC : ENTRY_ZERO_PLAIN;
  if (host != 0 || (h->data_file != NULL && (entry & QCOW_OFLAG_COPIED)))
    return ENTRY_NORMAL;
  return ENTRY_UNALLOCATED;
}

void
qcow2_compressed (const struct qcow2_image *img, uint64_t entry,
                  uint64_t *offset, uint64_t *length)
{
  /* The descriptor: the host byte offset in the low csize_shift bits,
   * above it the number of 512-byte sectors, minus one, that the data
   * occupies counting from the sector holding that byte. */
  const uint64_t start = entry & img->coffset_mask;
  const uint64_t sectors = ((entry >> img->csize_shift) & img->csize_mask) + 1;

  *offset = start;
  *length = ROUND_DOWN (start, (uint64_t) QCOW2_COMPRESSED_SECTOR) +
    sectors * QCOW2_COMPRESSED_SECTOR - start;
}

void
qcow2_entry_clusters (const struct qcow2_image *img, uint64_t entry,
                      uint64_t *first, uint64_t *count)
{
  const uint64_t cs = img->hdr.cluster_size;
  uint64_t offset, length;

  *first = *count = 0;
  switch (qcow2_entry_type (img, entry)) {
  case ENTRY_COMPRESSED:
    qcow2_compressed (img, entry, &offset, &length);
    *first = ROUND_DOWN (offset, cs);
    *count = (ROUND_UP (offset + length, cs) - *first) / cs;
    break;
  case ENTRY_NORMAL:
  case ENTRY_ZERO_ALLOC:
    if (img->hdr.data_file == NULL) {
      *first = qcow2_entry_host (entry);
      *count = 1;
    }
    break;
  case ENTRY_UNALLOCATED:
  case ENTRY_ZERO_PLAIN:
    break;
  }
}
