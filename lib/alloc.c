/* qcow2j lib: where new host clusters come from.
 *
 * First from the image's free space (space.c): clusters that no
 * metadata and no refcount holds, whose free the journal's head has
 * durably passed (rules R2 and R3), near a hint or after the previous
 * allocation.  Only when none is long enough, from past the end of
 * everything in use (next_free), extending the file over them.  A block
 * device cannot grow: there the device's end is the limit (ENOSPC).
 *
 * Whether new data may use the one-flush commit depends on where it
 * came from (docs/journal-format.md 8.4, E2): past the end of the file
 * (M4) or from a clean free range (a durable hole, M5), the cluster reads
 * as zeroes in every crash outcome and is fresh; from a stale range it
 * may read as anything it held before, and the write that takes it must
 * fill the whole cluster and commit with two flushes.
 *
 * Tables (L2 tables, refcount blocks, the refcount table) start as
 * zeroes read through the metadata cache, and are written in place by the
 * checkpoint long after the change that allocated them, slice by changed
 * slice.  So a table goes into clean space (given host blocks at once: a
 * host that finds no room at the checkpoint fails it, which stops all
 * writes), or into stale space zeroed first (outside the journal, so the
 * change then needs the two-flush commit), or past the end of the file
 * into space qcow2_reserve_space reserved before the change began.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>

#include "alloc.h"
#include "format.h"
#include "log.h"
#include "minmax.h"
#include "space.h"

/* n new clusters past next_free. */
static int
extend (struct qcow2_image *img, uint64_t n, uint64_t *offset)
{
  uint64_t end = img->next_free + n * img->hdr.cluster_size;

  if (img->file->fixed_size) {
    qerror ("%s: no free space left on the device", img->file->name);
    errno = ENOSPC;
    return -1;
  }
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
  return 0;
}

/* Data is written a few KiB at a time into the clusters it takes.
 * Where they are holes in the file, the file system allocates blocks
 * under each of those writes (ext4: under the inode's lock, which every
 * write to the file takes), and random 4 KiB writes into new space cost
 * the server markedly more CPU and latency than writes into allocated
 * blocks (bench/run.sh, randwrite).  So the clean free space at the end
 * of the file (the gap below the journal), where new data goes, is given
 * host blocks ahead of the allocator, DATA_AHEAD at a time.  They read as
 * zeroes until written, in every crash outcome (docs/journal-format.md
 * 1.3, M6): the clusters stay fresh (E2).  Only at the end of the file,
 * so that the clean close (session.c) cuts the unused rest off with the
 * free space there, and free space inside the file (holes that trims
 * punched) keeps costing the host nothing.  A cluster taken this way
 * holds host blocks for all of it, as QEMU's new clusters do (qemu-nbd
 * leaves as many blocks allocated after random 4 KiB writes), where a
 * cluster written a few KiB at a time into a hole would hold only those.
 * If the host is too full for that much, only the clusters taken; if not
 * even those, the data write into the hole may still find room, as
 * before. */
#define DATA_AHEAD (8ULL << 20)

static int
reserve_ahead (struct qcow2_image *img, uint64_t offset, uint64_t len)
{
  uint64_t end, to;
  int r;

  if ((offset >= img->ahead_start && offset + len <= img->ahead_end) ||
      img->file->fixed_size || img->cannot_reserve || img->ahead_full)
    return 0;
  end = qcow2_space_clean_from (img, offset + len);
  if (end != img->journal_start && end != img->next_free)
    return 0;                   /* not the end of the file */
  to = MIN (end, offset + len + DATA_AHEAD);
  r = hostio_reserve (img->file, offset, to - offset);
  if (r == -1 && errno == ENOSPC) {
    /* The host is full.  A file system may keep what a reservation got
     * before it failed (ext4 does), which would leave no room for the
     * tables and the checkpoint: give back what lies past the clusters
     * taken (free clean space, which reads as zeroes punched or not;
     * best effort), and reserve nothing ahead for the rest of the
     * session, so that data writes get their own blocks again. */
    img->ahead_full = true;
    if (to > offset + len)
      (void) hostio_punch (img->file, offset + len, to - (offset + len));
    to = offset + len;
    r = hostio_reserve (img->file, offset, len);
  }
  if (r == -1) {
    if (errno == ENOTSUP)
      img->cannot_reserve = true;
    else if (errno != ENOSPC) {
      qerror ("%s: reserve space for new clusters: %m", img->file->name);
      return -1;
    }
    return 0;
  }
  img->ahead_start = offset;
  img->ahead_end = to;
  return 0;
}

/* A table in free space: host blocks for a clean range, zeroes written
 * over a stale one.  0, or -1 to take space past the end instead (the
 * range was given back) or on a failed write. */
static int
prepare_table (struct qcow2_image *img, uint64_t offset, uint64_t len,
               bool clean)
{
  static const uint8_t zeroes[65536];

  if (clean) {
    if (img->file->fixed_size ||
        hostio_reserve (img->file, offset, len) == 0 || errno == ENOTSUP)
      return 0;
    qcow2_space_give (img, offset, len, SPACE_CLEAN);
    return -1;
  }
  for (uint64_t o = 0; o < len; o += MIN (len - o, sizeof zeroes))
    if (hostio_pwrite (img->file, zeroes, MIN (len - o, sizeof zeroes),
                       offset + o) == -1) {
      qerror ("%s: zero a cluster for a table at 0x%" PRIx64 ": %m",
              img->file->name, offset + o);
      return -1;
    }
  journal_need_ordering (img->journal);
  return 0;
}

int
qcow2_alloc_clusters (struct qcow2_image *img, uint64_t n, uint64_t hint,
                      bool *fresh, uint64_t *offset)
{
  const uint64_t len = n * img->hdr.cluster_size;
  bool clean, reused = true;

  ASSERT_META_LOCKED (img);
  if (qcow2_space_take (img, n, hint, true, offset, &clean)) {
    if (fresh == NULL && prepare_table (img, *offset, len, clean) == -1) {
      if (!clean)
        return -1;
      if (extend (img, n, offset) == -1)
        return -1;
      reused = false;
    }
  }
  else if (extend (img, n, offset) == -1)
    return -1;
  else {
    clean = true;
    reused = false;
  }
  if (fresh != NULL && clean && reused &&
      reserve_ahead (img, *offset, len) == -1) {
    qcow2_space_give (img, *offset, len, SPACE_CLEAN);
    return -1;
  }
  if (fresh != NULL)
    *fresh = clean;
  /* Entries may name it now (map.c), wherever it lies. */
  if (*offset >= img->alloc_start && *offset < img->journal_start &&
      *offset + len > img->gap_end)
    __atomic_store_n (&img->gap_end, *offset + len, __ATOMIC_RELEASE);
  /* Observational counters (image-internal.h), for the tests only. */
  if (fresh == NULL)
    img->stat_table_reused += reused ? n : 0;
  else if (!reused)
    img->stat_data_new += n;
  else if (clean)
    img->stat_data_clean += n;
  else
    img->stat_data_stale += n;
  journal_need_file_size (img->journal, *offset + len);
  return 0;
}

void
qcow2_alloc_unused (struct qcow2_image *img, uint64_t offset, uint64_t n)
{
  ASSERT_META_LOCKED (img);
  qcow2_space_give (img, offset, n * img->hdr.cluster_size, SPACE_STALE);
}

/* Space for this many clusters before each change (a new cluster, its L2
 * table, refcount blocks): from free space, or reserved past next_free,
 * this far ahead at a time. */
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
  if (qcow2_space_free_bytes (img) >= RESERVE_CLUSTERS * cs)
    return 0;
  if (img->file->fixed_size) {
    /* The device's end: fail the request now, not the change. */
    qerror ("%s: no free space left on the device", img->file->name);
    errno = ENOSPC;
    return -1;
  }
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
