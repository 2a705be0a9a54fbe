/* qcow2j lib: writing guest data.
 *
 * A write to a cluster the image owns alone (COPIED, refcount 1) goes
 * straight to the host, with no lock and no metadata change.  Anything
 * else allocates: a new host cluster past everything in use receives the
 * guest data, filled around it with the cluster's old content where that
 * is not zero (copy-on-write from the backing chain, a compressed cluster,
 * a cluster shared with a snapshot), and only once that data is written
 * does a journalled change map it and release what the entry held before.
 * So readers never see an entry that points at data not yet written.
 *
 * Allocating writes to one guest cluster are serialized by marking the
 * cluster in flight; the metadata lock is not held over the data I/O.
 *
 * A write smaller than a cluster whose old content is data (backing
 * chain, compressed, shared) maps its new cluster holding only the
 * client's sectors; the rest is owed (owed.c) and paid by later writes
 * or by the fill before the commit seals (owed-fill.c: delayed
 * copy-on-write, docs/journal-format.md 8.6).
 *
 * With persistent dirty bitmaps to keep, each piece first sets its bits
 * (bitmaps-live.c), and commits them before writing if any was clear.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "bitmaps-live.h"
#include "cleanup.h"
#include "commit.h"
#include "entry.h"
#include "format.h"
#include "grace.h"
#include "inflight.h"
#include "l2.h"
#include "log.h"
#include "map.h"
#include "minmax.h"
#include "overlap.h"
#include "owed.h"
#include "owed-fill.h"
#include "refcount.h"
#include "state.h"
#include "write.h"

/* Writing one piece (inside one cluster) ---------------------------------- */

/* Guest bytes to host offset 'host' of the data file (overlap.c). */
static int
write_data (struct qcow2_image *img, const void *buf, uint64_t count,
            uint64_t host)
{
  return qcow2_write_guest_data (img, buf, count, host, "a guest write");
}

/* Write in place if the piece lies in clusters the image owns alone.
 * Returns 1 if written, 0 if the slow path is needed, -1 on error. */
static int
write_in_place (struct qcow2_image *img, const void *buf, uint64_t count,
                uint64_t offset)
{
  struct qcow2_run run;
  unsigned io = qcow2_io_begin (img);  /* the cluster stays ours */
  int r = qcow2_map (img, offset, count, &run);

  if (r == 0 && run.type == RUN_DATA && run.copied && run.length >= count) {
    /* A new cluster may still owe sectors (owed-fill.c). */
    r = qcow2_owed_write (img, buf, count, offset, run.host_offset);
    if (r == 0)
      r = write_data (img, buf, count, run.host_offset) == -1 ? -1 : 1;
  }
  qcow2_io_end (img, io);
  return r;
}

/* Does the cluster at cluster_start read as zeroes from nothing but
 * metadata (no host data and no backing file under it)? */
static bool
reads_zero_without_data (struct qcow2_image *img, uint64_t cluster_start,
                         uint64_t entry)
{
  switch (qcow2_entry_type (img, entry)) {
  case ENTRY_ZERO_PLAIN:
    return true;
  case ENTRY_UNALLOCATED:
    return img->backing.kind == BACKING_NONE ||
      cluster_start >= img->backing.size;
  default:
    return false;
  }
}

/* May the cluster's old content (its L2 entry) stay where it is while a
 * new cluster takes its place (delayed copy-on-write, docs/journal-
 * format.md 8.6)?  For a source that holds data: the backing chain, a
 * compressed cluster, a cluster shared with a snapshot (a normal one
 * that is not ours: we would write in place).  Zeroes are not delayed
 * (fresh space gives them for free).  Nor with extended L2 entries,
 * where a write allocates only the subclusters it touches and the others
 * keep reading the backing file: no copy to save; nor with an external
 * data file, where the new cluster is the guest offset itself. */
static bool
delayable_source (struct qcow2_image *img, uint64_t cluster_start,
                  uint64_t entry)
{
  if (img->hdr.l2_entry_size == 16 || img->hdr.data_file != NULL)
    return false;
  switch (qcow2_entry_type (img, entry)) {
  case ENTRY_UNALLOCATED:
    return img->backing.kind != BACKING_NONE &&
      cluster_start < img->backing.size;
  case ENTRY_COMPRESSED:
    return true;
  case ENTRY_NORMAL:
    return !(entry & QCOW_OFLAG_COPIED);
  default:
    return false;
  }
}

/* Write [from, to) at host offset 'host': the client's bytes (count at
 * offset) with the old content of the guest range around them. */
static int
write_filled (struct qcow2_image *img, const uint8_t *buf, uint64_t count,
              uint64_t offset, uint64_t from, uint64_t to, uint64_t host)
{
  CLEANUP_FREE uint8_t *cbuf = NULL;

  if (to - from == count)       /* nothing around them: no copy */
    return write_data (img, buf, count, host);
  cbuf = malloc (to - from);
  if (cbuf == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  if (qcow2_pread (img, cbuf, to - from, from) == -1)
    return -1;
  memcpy (cbuf + (offset - from), buf, count);
  return write_data (img, cbuf, to - from, host);
}

/* Extended L2, a cluster we own: the client's bytes go straight to the
 * subclusters already allocated (never rewriting their other bytes, which
 * a concurrent in-place write may be changing), and the unallocated or
 * zero subclusters it touches are written whole, filled with their old
 * content (backing data or zeroes). */
static int
fill_subclusters (struct qcow2_image *img, const uint8_t *buf, uint64_t count,
                  uint64_t offset, uint64_t cluster, uint64_t host,
                  uint64_t bitmap)
{
  const uint64_t sc = img->hdr.subcluster_size;
  const uint64_t end = offset + count;

  for (uint64_t from = ROUND_DOWN (offset, sc); from < end; from += sc) {
    unsigned k = (from - cluster) / sc;
    uint64_t a = MAX (from, offset), b = MIN (from + sc, end);
    int r;

    if (bitmap & (1ULL << k))
      r = write_data (img, buf + (a - offset), b - a, host + (a - cluster));
    else
      r = write_filled (img, buf + (a - offset), b - a, a, from, from + sc,
                        host + (from - cluster));
    if (r == -1)
      return -1;
  }
  return 0;
}

/* Where a new host cluster for the guest cluster at cluster_start would
 * best go: right after the host cluster of the guest cluster before it,
 * if that one is allocated (0: no hint). */
static uint64_t
neighbour_hint (struct qcow2_image *img, uint64_t cluster_start)
{
  uint64_t entry_offset, entry, bitmap, host;

  if (cluster_start == 0 ||
      qcow2_l2_lookup (img, cluster_start - img->hdr.cluster_size,
                       &entry_offset, &entry, &bitmap) == -1 ||
      qcow2_entry_type (img, entry) != ENTRY_NORMAL)
    return 0;
  host = qcow2_entry_host (entry);
  return host != 0 ? host + img->hdr.cluster_size : 0;
}

static int
write_piece (struct qcow2_image *img, const uint8_t *buf, uint64_t count,
             uint64_t offset)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t cs = h->cluster_size;
  const uint64_t cluster = ROUND_DOWN (offset, cs);
  const bool extl2 = h->l2_entry_size == 16;
  uint64_t entry_offset, entry, bitmap, host, new_entry, new_bitmap;
  uint64_t write_from, write_to, target;
  bool new_cluster, fill_all, ordered, fresh, covered, delayed = false;
  int r;

  /* Bits of the dirty bitmaps first, durable before data may change in
   * place (bitmaps-live.c says why). */
  if (qcow2_bitmaps_mark (img, offset, count) == -1 ||
      (qcow2_bitmaps_pending (img) && qcow2_commit (img, &covered) == -1))
    return -1;
  r = write_in_place (img, buf, count, offset);
  if (r != 0)
    return r;

  /* Owed clusters past the bound are paid before another is added. */
  if (qcow2_owed_fill_early (img) == -1)
    return -1;
  qcow2_meta_lock (img);
  qcow2_cluster_lock (img, cluster);
  /* Someone may have allocated it while we waited. */
  qcow2_meta_unlock (img);
  r = write_in_place (img, buf, count, offset);
  qcow2_meta_lock (img);
  if (r != 0)
    goto out;

  r = qcow2_l2_entry_to_change (img, offset, &entry_offset, &entry, &bitmap);
  if (r == -1)
    goto out;
  host = qcow2_entry_host (entry);

  /* Plan the data write: [write_from, write_to) of the cluster, at host
   * cluster 'target' (new, or the existing one for subclusters). */
  new_bitmap = bitmap;
  if (extl2 && host != 0 && (entry & QCOW_OFLAG_COPIED) &&
      !(entry & QCOW_OFLAG_COMPRESSED)) {
    /* Unallocated or zero subclusters of a cluster we own: fill them in
     * place, whole subclusters at a time. */
    new_cluster = false;
    target = host;
    fill_all = false;
  }
  else {
    new_cluster = true;
    /* An external data file maps guest offsets to the same offsets. */
    if (h->data_file != NULL) {
      target = cluster;
      fresh = false;
    }
    else if (qcow2_alloc_clusters (img, 1, neighbour_hint (img, cluster),
                                   &fresh, &target) == -1) {
      r = -1;
      goto out;
    }
    /* Old content to keep around the write, unless it is all zeroes that
     * fresh space gives for free. */
    fill_all = !reads_zero_without_data (img, cluster, entry) || !fresh;
  }
  if (extl2) {
    uint64_t sc = h->subcluster_size;
    unsigned first = (offset - cluster) / sc;
    unsigned last = (offset + count - 1 - cluster) / sc;
    uint32_t touched = (uint32_t) ((2ULL << last) - (1ULL << first));

    write_from = cluster + first * sc;
    write_to = cluster + (last + 1) * sc;
    if (new_cluster && host != 0) {
      /* Copying a shared or compressed cluster: all of it. */
      write_from = cluster;
      write_to = cluster + cs;
      new_bitmap = 0xffffffff;
    }
    else
      new_bitmap = (bitmap | touched) & ~((uint64_t) touched << 32);
    /* Whole subclusters are written: the rest of each comes from the old
     * content (in place, it is not fresh space). */
    fill_all = fill_all || !new_cluster;
  }
  else if (fill_all &&
           ROUND_UP (offset + count, OWED_SECTOR) -
           ROUND_DOWN (offset, OWED_SECTOR) < cs &&
           delayable_source (img, cluster, entry) &&
           qcow2_owed_reserve (img)) {
    /* Delayed copy-on-write: the client's sectors now (the rest of a
     * sector it writes in part from the old content), the others owed
     * from the old entry, the source (owed.c). */
    delayed = true;
    write_from = ROUND_DOWN (offset, OWED_SECTOR);
    write_to = ROUND_UP (offset + count, OWED_SECTOR);
  }
  else if (fill_all) {
    write_from = cluster;
    write_to = cluster + cs;
  }
  else {
    write_from = offset;
    write_to = offset + count;
  }
  /* The one-flush commit (docs/journal-format.md 8.4) lets data and
   * transaction land in any order only when the batch's guest range read
   * as zeroes from metadata alone (E1) and its new host range is fresh
   * (E2: alloc.c says so, for space past the end of the file or a
   * durable hole; never this cluster's own host cluster rewritten in
   * place), with no external data file (E3; compressed data is never
   * written here): fill_all is false exactly then.  E4 (DIRTY durable,
   * ring space) is the journal's and dirty.c's to keep.  Anything else
   * asks for the two-flush commit (8.3): the data must be durable (F1)
   * before the transaction is written.  Delayed copy-on-write too (D2):
   * its source is data (fill_all), and the fill before the seal writes
   * the rest of the cluster, which F1 makes durable (owed-fill.c). */
  ordered = fill_all || !new_cluster;
  qcow2_meta_unlock (img);

  /* Data, without the lock: old content around the new bytes. */
  if (new_cluster)
    r = write_filled (img, buf, count, offset, write_from, write_to,
                      target + (write_from - cluster));
  else
    r = fill_subclusters (img, buf, count, offset, cluster, target, bitmap);
  qcow2_meta_lock (img);
  /* Metadata: map the new data and let go of what was there, if there
   * is room for the tables that may need (else the cluster goes back). */
  if (r == 0)
    r = qcow2_reserve_space (img);
  if (r == -1) {
    if (new_cluster && h->data_file == NULL)
      qcow2_alloc_unused (img, target, 1);
    if (delayed)
      qcow2_owed_unreserve (img);
    goto out;
  }
  if (img->data != img->file &&
      target + (write_to - cluster) > img->data_size)
    __atomic_store_n (&img->data_size, target + (write_to - cluster),
                      __ATOMIC_RELEASE);

  qcow2_change_begin (img);
  if (new_cluster) {
    new_entry = target | QCOW_OFLAG_COPIED;
    r = h->data_file ? 0 : qcow2_refcount_set (img, target, 1);
    if (r == 0)
      r = qcow2_l2_prepare (img, offset, &entry_offset);
    /* Owed sectors are known before the mapping is published (owed.c,
     * invariant 1); a failed change stops writes, the entry unused. */
    if (delayed && r == 0)
      qcow2_owed_add (img, cluster, target, entry, write_from - cluster,
                      write_to - cluster);
    else if (delayed)
      qcow2_owed_unreserve (img);
    if (r == 0)
      r = qcow2_l2_set (img, entry_offset, new_entry, extl2 ? new_bitmap : 0);
    if (r == 0 && (h->data_file == NULL || host != target))
      r = qcow2_release_host (img, entry);
  }
  else {
    r = qcow2_l2_prepare (img, offset, &entry_offset);
    if (r == 0)
      r = qcow2_l2_set (img, entry_offset, entry, new_bitmap);
  }
  if (r == 0 && ordered)
    journal_need_ordering (img->journal);
  qcow2_change_end (img, r);

 out:
  qcow2_cluster_unlock (img, cluster);
  qcow2_meta_unlock (img);
  return r < 0 ? -1 : 0;
}

int
qcow2_write_range (struct qcow2_image *img, const void *buf, uint64_t count,
                   uint64_t offset)
{
  const uint8_t *p = buf;

  ASSERT_META_UNLOCKED (img);
  ASSERT_JOURNAL_SET_UP (img);
  while (count > 0) {
    uint64_t n = MIN (count, img->hdr.cluster_size -
                      (offset & (img->hdr.cluster_size - 1)));

    /* Reuse what was freed before growing the file; keep the open
     * transaction small, whatever the request's size. */
    if (qcow2_release_freed_early (img) == -1 ||
        write_piece (img, p, n, offset) == -1 ||
        qcow2_after_piece (img) == -1)
      return -1;
    p += n;
    offset += n;
    count -= n;
  }
  return 0;
}
