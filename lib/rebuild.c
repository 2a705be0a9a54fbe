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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "cleanup.h"
#include "commit.h"
#include "entry.h"
#include "format.h"
#include "l2.h"
#include "log.h"
#include "metadata.h"
#include "metamap.h"
#include "minmax.h"
#include "rebuild.h"
#include "refcount.h"
#include "state.h"
#include "walk.h"

struct counts {
  uint16_t *v;                  /* expected refcount of each cluster */
  uint64_t n;                   /* clusters in the file */
};

/* A reference that names no place in the file: the image is corrupt. */
static int
bad (struct qcow2_image *img, const char *what, uint64_t offset)
{
  qerror ("%s: corrupt image: rebuilding refcounts: %s 0x%" PRIx64
          " lies outside the file or is misaligned: repair it with "
          "qemu-img check -r all", img->file->name, what, offset);
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
    uint64_t e = get_be64 (t + i), first, n, where;
    bool compressed = qcow2_entry_type (img, e) == ENTRY_COMPRESSED;
    enum meta_kind kind;
    char what[80];

    qcow2_entry_clusters (img, e, &first, &n);
    if (n == 0)
      continue;
    snprintf (what, sizeof what, "L2 table 0x%" PRIx64 ": entry %" PRIu64
              ": %s", l2, i / h->l2_entry_size,
              compressed ? "compressed data" : "data cluster");
    if (!compressed && !IS_ALIGNED (first, h->cluster_size))
      return bad (img, what, first);
    /* Data in a cluster of the image's own metadata (the map is built
     * first): counting it would make the corruption look consistent. */
    kind = qcow2_metamap_find (img, first, n * h->cluster_size, &where);
    if (kind != META_NONE) {
      qerror ("%s: corrupt image: rebuilding refcounts: %s 0x%" PRIx64
              " overlaps the %s at 0x%" PRIx64 ": repair it with qemu-img "
              "check -r all", img->file->name, what, first,
              qcow2_meta_kind_name (kind), where);
      errno = EIO;
      return -1;
    }
    if (add (img, c, first, n * h->cluster_size, what) == -1)
      return -1;
  }
  return 0;
}

/* One reference to a region of metadata (walk.c), and for an L2 table
 * the data it maps. */
static int
count (struct qcow2_image *img, void *opaque, enum meta_kind kind,
       uint64_t offset, uint64_t len)
{
  struct counts *c = opaque;

  if (add (img, c, offset, len, qcow2_meta_kind_name (kind)) == -1)
    return -1;
  if (kind == META_L2 || kind == META_SNAPSHOT_L2)
    return count_l2 (img, c, offset);
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

uint16_t *
qcow2_recount (struct qcow2_image *img, uint64_t file_end)
{
  struct counts c;

  c.n = DIV_ROUND_UP (file_end, img->hdr.cluster_size);
  c.v = calloc (c.n ? c.n : 1, sizeof *c.v);
  if (c.v == NULL) {
    qerror ("%s: rebuilding refcounts: calloc: %m", img->file->name);
    return NULL;
  }
  if (qcow2_walk_metadata (img, file_end, true, count, &c) == -1) {
    free (c.v);
    return NULL;
  }
  return c.v;
}

int
qcow2_rebuild_refcounts (struct qcow2_image *img, const uint16_t *counts,
                         uint64_t file_end)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t cs = h->cluster_size;
  const uint64_t n = DIV_ROUND_UP (file_end, cs);
  int r = 0;

  /* During the set-up: no writer runs beside it (session.c). */
  assert (qcow2_state (img) == SESSION_READY);
  ASSERT_JOURNAL_SET_UP (img);

  /* Set what differs, committing as transactions grow.  If the refcount
   * table has to move meanwhile, its old clusters are free. */
  qcow2_meta_lock (img);
  const uint64_t old_table = h->refcount_table_offset;
  const uint64_t old_table_end = old_table +
    (uint64_t) h->refcount_table_clusters * cs;
  for (uint64_t i = 0; i < n && r == 0; i++) {
    uint64_t rc, want = counts[i];

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
  return r;
}
