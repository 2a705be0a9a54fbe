/* qcow2j lib: zeroing and trimming.
 *
 * Whole clusters (whole subclusters with extended L2 entries) are zeroed
 * in the metadata alone: the zero flag (or zero bits), keeping the host
 * cluster when the client asked for the range to stay allocated (no
 * MAY_TRIM), releasing it otherwise.  Partial clusters are written with
 * zeroes through the normal write path, unless they already read as
 * zeroes.  Version 2 images have no zero flag: there a cluster can only be
 * unmapped, which is right only where no backing file shows through.
 *
 * Trim is advisory: it releases whole clusters (zero-flagging them where a
 * backing file would otherwise show through) and ignores the rest.
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
#include "discard.h"
#include "entry.h"
#include "format.h"
#include "inflight.h"
#include "l2.h"
#include "log.h"
#include "map.h"
#include "minmax.h"
#include "overlap.h"
#include "owed.h"
#include "refcount.h"
#include "write.h"

enum action { ZERO_KEEP, ZERO_RELEASE, UNMAP };

static bool
backing_under (struct qcow2_image *img, uint64_t cluster)
{
  return img->backing.kind != BACKING_NONE && cluster < img->backing.size;
}

/* Change the L2 entry of the cluster holding [offset, offset+count), all
 * of its whole subclusters (or the whole cluster) covered.  Returns 1 if
 * that needs data written instead (part of a compressed cluster). */
static int
change_entry (struct qcow2_image *img, uint64_t offset, uint64_t count,
              enum action action)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t cluster = ROUND_DOWN (offset, h->cluster_size);
  const bool extl2 = h->l2_entry_size == 16;
  uint64_t entry_offset, entry, bitmap, host, new_entry, new_bitmap = 0;
  uint64_t held_first, held;
  enum qcow2_entry_type type;
  bool release;
  int r;

  qcow2_meta_lock (img);
  qcow2_cluster_lock (img, cluster);
  r = qcow2_l2_entry_to_change (img, offset, &entry_offset, &entry,
                                &bitmap);
  if (r == -1)
    goto out;
  type = qcow2_entry_type (img, entry);
  host = qcow2_entry_host (entry);
  /* An entry naming metadata is corruption: not one to keep or free. */
  qcow2_entry_clusters (img, entry, &held_first, &held);
  if (held > 0 &&
      qcow2_overlap_check (img, held_first, held * h->cluster_size,
                           "a zero or trim") == -1) {
    r = -1;
    goto out;
  }

  if (extl2) {
    unsigned first = (offset - cluster) / h->subcluster_size;
    unsigned n = count / h->subcluster_size;
    uint32_t touched = n == 32 ? 0xffffffff
      : (uint32_t) (((1ULL << n) - 1) << first);
    bool whole = touched == 0xffffffff;

    if (action == UNMAP) {
      new_bitmap = bitmap & ~(uint64_t) touched & ~((uint64_t) touched << 32);
      if (backing_under (img, cluster))
        new_bitmap |= (uint64_t) touched << 32;
    }
    else
      new_bitmap = (bitmap & ~(uint64_t) touched) | (uint64_t) touched << 32;
    /* A compressed cluster has no subclusters: part of it is zeroed by
     * writing (the caller does). */
    if (type == ENTRY_COMPRESSED && !whole) {
      r = 1;
      goto out;
    }
    /* The host cluster goes only when no subcluster needs it. */
    release = host != 0 && whole && (action != ZERO_KEEP ||
                                      type == ENTRY_COMPRESSED);
    new_entry = release ? 0 : entry;
    if (release)
      new_bitmap &= ~0xffffffffULL;
    if (new_entry == entry && new_bitmap == bitmap)
      goto out;                         /* nothing changes */
  }
  else {
    bool compressed = type == ENTRY_COMPRESSED;

    if (action == UNMAP && !backing_under (img, cluster))
      new_entry = 0;
    else if (action == ZERO_KEEP && host != 0 && !compressed &&
             (entry & QCOW_OFLAG_COPIED))
      new_entry = host | QCOW_OFLAG_ZERO | QCOW_OFLAG_COPIED;
    else
      new_entry = QCOW_OFLAG_ZERO;
    release = (compressed || host != 0) && !(new_entry & L2E_OFFSET_MASK);
    if (new_entry == entry)
      goto out;
  }

  /* Room for tables, unless the change needs none (so that a trim on a
   * full block device, which only frees, still works). */
  if (!qcow2_l2_ready (img, offset) && qcow2_reserve_space (img) == -1) {
    r = -1;
    goto out;
  }
  qcow2_change_begin (img);
  r = qcow2_l2_prepare (img, offset, &entry_offset);
  if (r == 0)
    r = qcow2_l2_set (img, entry_offset, new_entry, new_bitmap);
  if (r == 0 && release)
    r = qcow2_release_host (img, entry);
  /* The whole cluster changed: what its new cluster owed is owed no more
   * (delayed copy-on-write, D5; only standard entries have any). */
  if (r == 0 && !extl2)
    qcow2_owed_drop (img, cluster);
  qcow2_change_end (img, r);

 out:
  qcow2_cluster_unlock (img, cluster);
  qcow2_meta_unlock (img);
  return r;
}

/* The dirty bitmaps' bits of a piece of a zero or trim request, all of
 * it, as QEMU marks them, even where nothing changes.  What changes
 * does so in a later transaction (entries), or through the write path
 * (which commits the bits first where it writes in place), so no commit
 * is needed here (bitmaps-live.c). */
static int
mark_bitmaps (struct qcow2_image *img, uint64_t offset, uint64_t count)
{
  return qcow2_bitmaps_mark (img, offset, count);
}

/* Does [offset, offset+count) already read as zeroes from metadata? */
static int
reads_zero (struct qcow2_image *img, uint64_t offset, uint64_t count)
{
  while (count > 0) {
    struct qcow2_run run;

    if (qcow2_map (img, offset, count, &run) == -1)
      return -1;
    if (run.type != RUN_ZERO &&
        !(run.type == RUN_UNALLOCATED &&
          !backing_under (img, ROUND_DOWN (offset, img->hdr.cluster_size))))
      return 0;
    offset += run.length;
    count -= run.length;
  }
  return 1;
}

/* The part of [offset, offset+count) inside one cluster that the metadata
 * alone can zero: whole subclusters (or the whole cluster).  Returns its
 * start and length via *mstart, *mlen (0 if none). */
static void
metadata_part (struct qcow2_image *img, uint64_t offset, uint64_t count,
               uint64_t *mstart, uint64_t *mlen)
{
  const struct qcow2_header *h = &img->hdr;
  uint64_t unit = h->l2_entry_size == 16 ? h->subcluster_size
    : h->cluster_size;
  uint64_t start = ROUND_UP (offset, unit);
  uint64_t end = ROUND_DOWN (offset + count, unit);

  /* A standard cluster partly past the end of the disk counts as whole
   * when the range reaches the end. */
  if (offset + count == h->size && end < offset + count)
    end = ROUND_UP (offset + count, unit);
  *mstart = start;
  *mlen = end > start ? end - start : 0;
}

static int
zero_data (struct qcow2_image *img, uint64_t offset, uint64_t count)
{
  CLEANUP_FREE uint8_t *zeroes = NULL;
  int r = reads_zero (img, offset, count);

  if (r != 0)
    return r < 0 ? -1 : 0;
  zeroes = calloc (1, count);
  if (zeroes == NULL) {
    qerror ("calloc: %m");
    return -1;
  }
  return qcow2_write_range (img, zeroes, count, offset);
}

int
qcow2_zero_range (struct qcow2_image *img, uint64_t count, uint64_t offset,
                  bool may_trim, bool fast)
{
  const struct qcow2_header *h = &img->hdr;
  const bool v2 = h->version < 3;

  ASSERT_META_UNLOCKED (img);
  ASSERT_JOURNAL_SET_UP (img);
  /* A fast zero must not fall back to writing data: decide up front. */
  if (fast)
    for (uint64_t pos = offset, end = offset + count; pos < end; ) {
      uint64_t n = MIN (end - pos, h->cluster_size - (pos & (h->cluster_size - 1)));
      uint64_t ms, ml;
      int z;

      metadata_part (img, pos, n, &ms, &ml);
      if (ml > 0 && ml < h->cluster_size) {
        /* Part of a compressed cluster can only be zeroed by writing. */
        struct qcow2_run run;

        if (qcow2_map (img, ms, ml, &run) == -1)
          return -1;
        if (run.type == RUN_COMPRESSED)
          ml = 0;
      }
      if (ml != n || (v2 && backing_under (img, ROUND_DOWN (pos, h->cluster_size))) ||
          (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)) {
        z = reads_zero (img, pos, n);
        if (z == -1)
          return -1;
        if (z == 0) {
          errno = ENOTSUP;
          return -1;
        }
      }
      pos += n;
    }

  while (count > 0) {
    uint64_t n = MIN (count, h->cluster_size - (offset & (h->cluster_size - 1)));
    uint64_t ms, ml;

    if (mark_bitmaps (img, offset, n) == -1)
      return -1;
    metadata_part (img, offset, n, &ms, &ml);
    if (v2 && (backing_under (img, ROUND_DOWN (offset, h->cluster_size)) ||
               !may_trim))
      ml = 0;                   /* no zero flag: real zeroes */
    /* A raw external data file must read as the disk does. */
    if (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)
      ml = 0;
    if (ml == 0) {
      if (zero_data (img, offset, n) == -1)
        return -1;
    }
    else {
      int r;

      if (ms > offset && zero_data (img, offset, ms - offset) == -1)
        return -1;
      r = change_entry (img, ms, ml, v2 ? UNMAP :
                        may_trim ? ZERO_RELEASE : ZERO_KEEP);
      if (r == -1 || (r == 1 && zero_data (img, ms, ml) == -1) ||
          qcow2_after_piece (img) == -1)
        return -1;
      if (ms + ml < offset + n &&
          zero_data (img, ms + ml, offset + n - ms - ml) == -1)
        return -1;
    }
    offset += n;
    count -= n;
  }
  return 0;
}

int
qcow2_trim_range (struct qcow2_image *img, uint64_t count, uint64_t offset)
{
  const struct qcow2_header *h = &img->hdr;

  ASSERT_META_UNLOCKED (img);
  ASSERT_JOURNAL_SET_UP (img);
  while (count > 0) {
    uint64_t n = MIN (count, h->cluster_size - (offset & (h->cluster_size - 1)));
    uint64_t ms, ml;

    if (mark_bitmaps (img, offset, n) == -1)
      return -1;
    metadata_part (img, offset, n, &ms, &ml);
    /* A raw external data file must keep reading as the disk does: the
     * trim changes nothing there (but is marked, as QEMU marks it). */
    if (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)
      ml = 0;
    /* Over a backing file a v2 image cannot hide it: leave it. */
    if (ml > 0 && !(h->version < 3 &&
                    backing_under (img, ROUND_DOWN (offset, h->cluster_size))) &&
        (change_entry (img, ms, ml, UNMAP) == -1 ||
         qcow2_after_piece (img) == -1))
      return -1;
    offset += n;
    count -= n;
  }
  return 0;
}
