/* qcow2j lib: journalled metadata words.
 *
 * Every change to an L1, L2 or refcount table or to a header word goes
 * through qcow2_meta_set: the new value goes into the metadata cache's
 * live bytes (which every later read sees) and, as an absolute value,
 * into the journal's open transaction.  Nothing is written in place here:
 * the checkpoint does that from the committed state (rule R1).  The
 * tables' own logic (l2.c, refcount.c) lies above this layer, so that it
 * knows nothing of what the words mean.
 */
#include <config.h>

#include <endian.h>
#include <inttypes.h>

#include "log.h"
#include "metadata.h"
#include "minmax.h"

int
qcow2_meta_read64 (struct qcow2_image *img, uint64_t offset, uint64_t *value)
{
  uint64_t slice = ROUND_DOWN (offset, (uint64_t) img->slice_size);
  uint64_t be;

  if (mcache_read (img->cache, img->file, img, slice, img->slice_size,
                   offset - slice, 8, &be) == -1) {
    qerror ("%s: read metadata at 0x%" PRIx64 ": %m", img->file->name,
            offset);
    return -1;
  }
  *value = be64toh (be);
  return 0;
}

int
qcow2_meta_set (struct qcow2_image *img, uint64_t offset,
                const uint64_t *values, unsigned n)
{
  uint64_t slice = ROUND_DOWN (offset, (uint64_t) img->slice_size);
  uint64_t be[2];

  ASSERT_META_LOCKED (img);
  assert (n >= 1 && n <= 2 && offset % 8 == 0);
  assert (offset + 8 * n <= slice + img->slice_size);
  for (unsigned i = 0; i < n; i++)
    be[i] = htobe64 (values[i]);
  if (mcache_write (img->cache, img->file, img, slice, img->slice_size,
                    offset - slice, 8 * n, be) == -1) {
    qerror ("%s: change metadata at 0x%" PRIx64 ": %m", img->file->name,
            offset);
    return -1;
  }
  for (unsigned i = 0; i < n; i++)
    if (journal_add_set64 (img->journal, offset + 8 * i, values[i]) == -1)
      return -1;
  return 0;
}
