/* qcow2j lib: rebuilding the refcounts of an image QEMU left with lazy
 * refcounts after an unclean stop (incompatible bit 0, "dirty bit").
 *
 * Such an image's refcounts lag its L1/L2 tables, and writing to it could
 * hand out a cluster still in use.  Before its first write, qcow2j counts
 * every reference QEMU's checker counts (the header, the active and every
 * snapshot's L1 and L2 tables and the data they map, the snapshot table,
 * the refcount table and blocks, the bitmap directory, tables and data),
 * sets every refcount that differs through the journal, fixes the COPIED
 * flags of the active tables, checkpoints, and only then clears the dirty
 * bit.  A crash on the way leaves the bit set, and the rebuild runs again.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bitmaps.h"
#include "byteorder.h"
#include "cleanup.h"
#include "commit.h"
#include "entry.h"
#include "format.h"
#include "l2.h"
#include "log.h"
#include "metadata.h"
#include "minmax.h"
#include "rebuild.h"
#include "refcount.h"
#include "state.h"

struct counts {
  uint16_t *v;                  /* expected refcount of each cluster */
  uint64_t n;                   /* clusters in the file */
};

static int
bad (struct qcow2_image *img, const char *what, uint64_t offset)
{
  qerror ("%s: rebuilding refcounts: %s at 0x%" PRIx64 " lies outside the "
          "file or is misaligned", img->file->name, what, offset);
  errno = EIO;
  return -1;
}

/* One more reference to every cluster of [offset, offset+len). */
static int
add (struct qcow2_image *img, struct counts *c, uint64_t offset,
     uint64_t len, const char *what)
{
  const unsigned cb = img->hdr.cluster_bits;

  if (len == 0)
    return 0;
  if (offset + len < offset || ((offset + len - 1) >> cb) >= c->n)
    return bad (img, what, offset);
  for (uint64_t i = offset >> cb; i <= (offset + len - 1) >> cb; i++)
    if (c->v[i] < UINT16_MAX)
      c->v[i]++;
  return 0;
}

static int
read_table (struct qcow2_image *img, uint64_t offset, uint64_t len,
            uint8_t **out)
{
  *out = malloc (len ? len : 1);
  if (*out == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  if (hostio_pread (img->file, *out, len, offset) == -1) {
    qerror ("%s: rebuilding refcounts: read at 0x%" PRIx64 ": %m",
            img->file->name, offset);
    free (*out);
    return -1;
  }
  return 0;
}

static int
count_l2 (struct qcow2_image *img, struct counts *c, uint64_t l2)
{
  const struct qcow2_header *h = &img->hdr;
  CLEANUP_FREE uint8_t *t = NULL;

  if (read_table (img, l2, h->cluster_size, &t) == -1)
    return -1;
  for (uint64_t i = 0; i < h->cluster_size; i += h->l2_entry_size) {
    uint64_t e = get_be64 (t + i), first, n;

    qcow2_entry_clusters (img, e, &first, &n);
    if (n == 0)
      continue;
    if (qcow2_entry_type (img, e) == ENTRY_COMPRESSED) {
      if (add (img, c, first, n * h->cluster_size, "compressed data") == -1)
        return -1;
    }
    else if (!IS_ALIGNED (first, h->cluster_size) ||
             add (img, c, first, h->cluster_size, "a data cluster") == -1)
      return bad (img, "a data cluster", first);
  }
  return 0;
}

static int
count_l1 (struct qcow2_image *img, struct counts *c, uint64_t l1,
          uint32_t l1_size)
{
  const uint64_t cs = img->hdr.cluster_size;
  CLEANUP_FREE uint8_t *t = NULL;

  if (add (img, c, l1, (uint64_t) l1_size * 8, "an L1 table") == -1 ||
      read_table (img, l1, (uint64_t) l1_size * 8, &t) == -1)
    return -1;
  for (uint32_t i = 0; i < l1_size; i++) {
    uint64_t l2 = get_be64 (t + 8 * i) & L1E_OFFSET_MASK;

    if (l2 == 0)
      continue;
    if (!IS_ALIGNED (l2, cs) || add (img, c, l2, cs, "an L2 table") == -1 ||
        count_l2 (img, c, l2) == -1)
      return bad (img, "an L2 table", l2);
  }
  return 0;
}

static int
count_snapshots (struct qcow2_image *img, struct counts *c)
{
  /* snapshot.c validated the table at open. */
  for (uint32_t i = 0; i < img->hdr.nb_snapshots; i++)
    if (count_l1 (img, c, img->snapshots[i].l1_offset,
                  img->snapshots[i].l1_size) == -1)
      return -1;
  return add (img, c, img->hdr.snapshots_offset, img->snapshot_table_bytes,
              "the snapshot table");
}

static int
count_bitmaps (struct qcow2_image *img, struct counts *c)
{
  const struct qcow2_header *h = &img->hdr;
  CLEANUP_FREE uint8_t *dir = NULL;
  CLEANUP_FREE struct qcow2_bitmap *bitmaps = NULL;
  int n = qcow2_bitmaps_read (img, &dir, &bitmaps);

  if (n < 0)
    return -1;
  if (n > 0 && add (img, c, h->bitmap_directory_offset,
                    h->bitmap_directory_size, "the bitmap directory") == -1)
    return -1;
  for (int i = 0; i < n; i++) {
    CLEANUP_FREE uint8_t *t = NULL;
    uint64_t table = bitmaps[i].table_offset;
    uint64_t size = bitmaps[i].table_size;

    if (add (img, c, table, size * 8, "a bitmap table") == -1 ||
        read_table (img, table, size * 8, &t) == -1)
      return -1;
    for (uint64_t k = 0; k < size; k++) {
      uint64_t data = get_be64 (t + 8 * k) & QCOW2_BITMAP_TABLE_OFFSET_MASK;

      if (data && add (img, c, data, h->cluster_size, "bitmap data") == -1)
        return -1;
    }
  }
  return 0;
}

static int fix_copied_l2 (struct qcow2_image *img, uint32_t i);

/* The active tables' COPIED flags must say "refcount is 1": one L2 table
 * per change, committing as transactions grow. */
static int
fix_copied (struct qcow2_image *img)
{
  for (uint32_t i = 0; i < img->hdr.l1_size; i++) {
    int r;

    qcow2_meta_lock (img);
    qcow2_change_begin (img);
    r = qcow2_change_end (img, fix_copied_l2 (img, i));
    qcow2_meta_unlock (img);
    if (r == -1 || qcow2_after_piece (img) == -1)
      return -1;
  }
  return 0;
}

static int
fix_copied_l2 (struct qcow2_image *img, uint32_t i)
{
  const struct qcow2_header *h = &img->hdr;
  const unsigned words = h->l2_entry_size / 8;

  {
    uint64_t l1e = img->l1[i], l2 = l1e & L1E_OFFSET_MASK, rc, want;

    if (l2 == 0)
      return 0;
    if (qcow2_refcount_get (img, l2, &rc) == -1)
      return -1;
    want = rc == 1 ? l1e | QCOW_OFLAG_COPIED : l1e & ~QCOW_OFLAG_COPIED;
    if (want != l1e) {
      if (qcow2_l1_set (img, i, want) == -1)
        return -1;
    }
    for (uint64_t k = 0; k < h->cluster_size / 8; k += words) {
      uint64_t e, host;

      if (qcow2_meta_read64 (img, l2 + 8 * k, &e) == -1)
        return -1;
      host = qcow2_entry_host (e);
      if (qcow2_entry_type (img, e) == ENTRY_COMPRESSED ||
          (host == 0 && !(e & QCOW_OFLAG_COPIED)))
        continue;
      if (h->data_file)
        continue;               /* not refcounted: COPIED as written */
      if (qcow2_refcount_get (img, host, &rc) == -1)
        return -1;
      want = rc == 1 ? e | QCOW_OFLAG_COPIED : e & ~QCOW_OFLAG_COPIED;
      if (want != e && qcow2_meta_set64 (img, l2 + 8 * k, want) == -1)
        return -1;
    }
  }
  return 0;
}

int
qcow2_rebuild_refcounts (struct qcow2_image *img, uint64_t file_end)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t cs = h->cluster_size;
  struct counts c;
  int r = 0;

  /* During the set-up: no writer runs beside it (session.c). */
  assert (qcow2_state (img) == SESSION_READY);
  ASSERT_JOURNAL_SET_UP (img);
  c.n = DIV_ROUND_UP (file_end, cs);
  c.v = calloc (c.n ? c.n : 1, sizeof *c.v);
  if (c.v == NULL) {
    qerror ("%s: rebuilding refcounts: calloc: %m", img->file->name);
    return -1;
  }
  if (add (img, &c, 0, cs, "the header") == -1 ||
      count_l1 (img, &c, h->l1_table_offset, h->l1_size) == -1 ||
      count_snapshots (img, &c) == -1 ||
      count_bitmaps (img, &c) == -1 ||
      add (img, &c, h->refcount_table_offset,
           (uint64_t) h->refcount_table_clusters * cs,
           "the refcount table") == -1)
    goto fail;
  for (uint64_t i = 0; i < img->reftable_entries; i++) {
    uint64_t rb = img->reftable[i] & REFT_OFFSET_MASK;

    if (rb && (!IS_ALIGNED (rb, cs) ||
               add (img, &c, rb, cs, "a refcount block") == -1))
      goto fail;
  }

  /* Set what differs, committing as transactions grow.  If the refcount
   * table has to move meanwhile, its old clusters are free. */
  qcow2_meta_lock (img);
  const uint64_t old_table = h->refcount_table_offset;
  const uint64_t old_table_end = old_table +
    (uint64_t) h->refcount_table_clusters * cs;
  for (uint64_t i = 0; i < c.n && r == 0; i++) {
    uint64_t rc, want = c.v[i];

    if (h->refcount_table_offset != old_table &&
        i * cs >= old_table && i * cs < old_table_end)
      want = 0;
    qcow2_change_begin (img);
    r = qcow2_refcount_get (img, i * cs, &rc);
    if (r == 0 && rc != want)
      r = qcow2_refcount_set (img, i * cs, want);
    qcow2_change_end (img, r);
    if (r == 0 && i % 4096 == 4095) {
      qcow2_meta_unlock (img);
      r = qcow2_after_piece (img);
      qcow2_meta_lock (img);
    }
  }
  qcow2_meta_unlock (img);
  if (r == 0)
    r = fix_copied (img);
  free (c.v);
  return r;

 fail:
  free (c.v);
  return -1;
}
