/* qcow2j lib: where new host clusters come from.
 *
 * Allocation only ever takes new space past the end of everything in use
 * (next_free), and never reuses a freed cluster while the image is open.
 * That keeps the journal's reuse rules (R2, R3) trivially true, and makes
 * every new cluster "fresh" in the sense of the one-flush commit (E2):
 * space no durable metadata has ever pointed at, which reads as zeroes or
 * as the data written to it.  Freed clusters are discarded on the host
 * once the checkpoint has moved past their free; qemu-img and later opens
 * can reuse them.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>

#include "alloc.h"
#include "format.h"
#include "log.h"
#include "minmax.h"

int
qcow2_alloc_clusters (struct qcow2_image *img, uint64_t n, uint64_t *offset)
{
  uint64_t end = img->next_free + n * img->hdr.cluster_size;

  ASSERT_META_LOCKED (img);
  if (end > QCOW2_MAX_HOST_OFFSET) {
    qerror ("%s: the image would grow past the qcow2 limit",
            img->file->name);
    errno = ENOSPC;
    return -1;
  }
  /* Extend the file now, so that the new clusters read as zeroes and lie
   * inside it; the transaction that uses them records the length too
   * (rule R5). */
  if ((int64_t) end > hostio_size (img->file) &&
      hostio_truncate (img->file, end) == -1) {
    qerror ("%s: extend to %" PRIu64 " bytes: %m", img->file->name, end);
    return -1;
  }
  *offset = img->next_free;
  img->next_free = end;
  __atomic_store_n (&img->file_size, end, __ATOMIC_RELEASE);
  if (img->data == img->file)
    __atomic_store_n (&img->data_size, end, __ATOMIC_RELEASE);
  journal_need_file_size (img->journal, end);
  return 0;
}

/* Space for this many clusters past next_free before each change (a new
 * cluster, its L2 table, refcount blocks), reserved this far ahead at a
 * time. */
#define RESERVE_CLUSTERS 8
#define RESERVE_AHEAD (4ULL << 20)

int
qcow2_reserve_space (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  const uint64_t need = img->next_free + RESERVE_CLUSTERS * cs;
  uint64_t from, to;
  int r;

  ASSERT_META_LOCKED (img);
  if (img->cannot_reserve || img->space_reserved >= need)
    return 0;
  from = MAX (img->space_reserved, img->next_free);
  to = img->next_free + MAX (RESERVE_AHEAD, 2 * RESERVE_CLUSTERS * cs);
  r = hostio_reserve (img->file, from, to - from);
  if (r == -1 && errno == ENOSPC) {
    /* No room to reserve ahead: only what the change may need. */
    to = need;
    r = hostio_reserve (img->file, from, to - from);
  }
  if (r == -1) {
    if (errno == ENOTSUP) {
      img->cannot_reserve = true;
      return 0;
    }
    qerror ("%s: reserve space for new clusters: %m", img->file->name);
    return -1;
  }
  img->space_reserved = to;
  return 0;
}
