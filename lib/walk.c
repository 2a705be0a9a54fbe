/* qcow2j lib: one walk over every table of the image's metadata.
 *
 * Two things need every table the image holds: the metadata map
 * (metamap.c), built when a write session starts, and the refcount
 * rebuild after QEMU's lazy refcounts (rebuild.c).  They walk the same
 * graph -- header, L1, L2, refcount table and blocks, snapshots and their
 * tables, bitmaps and theirs -- so the walk, the reads and the bounds of
 * every reference are written here once.  The directories the walk
 * starts from are parsed in one place each: the snapshot table by
 * snapshot.c at open, the bitmap directory by bitmaps.c.
 *
 * A table's size is bounded before it is read: the active L1 and
 * refcount tables are in memory already (header.c bounded them), a
 * snapshot's L1 table by QEMU's L1 limit (snapshot.c), a bitmap table by
 * QEMU's 64 MiB limit (bitmaps.c), an L2 table or a data cluster is one
 * cluster.  So the memory a walk takes is bounded whatever the image
 * says, and no read goes past the end of the file.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "bitmaps.h"
#include "byteorder.h"
#include "cleanup.h"
#include "format.h"
#include "log.h"
#include "minmax.h"
#include "walk.h"

struct walk {
  struct qcow2_image *img;
  uint64_t file_end;
  bool strict;
  qcow2_walk_fn visit;
  void *opaque;
};

/* Is the region that 'field' names at 'offset' inside the bounds?  1 if
 * so, 0 if not and the walk skips it, -1 if not and the walk stops. */
static int
bounded (struct walk *w, const char *field, uint64_t offset, uint64_t len)
{
  const char *problem;

  const uint64_t cs = w->img->hdr.cluster_size;

  /* The file may end inside its last cluster (QEMU does not pad it);
   * what lies past the end of the file there reads as zeroes. */
  if (len == 0)
    return 1;                   /* an empty table names nothing */
  if (!IS_ALIGNED (offset, cs))
    problem = "is not aligned to a cluster";
  else if (offset >= w->file_end ||
           len > ROUND_UP (w->file_end, cs) - offset)
    problem = "lies past the end of the file";
  else
    return 1;
  if (!w->strict) {
    qdebug ("%s: %s 0x%" PRIx64 " (%" PRIu64 " bytes) %s (0x%" PRIx64
            " bytes): skipped", w->img->file->name, field, offset, len,
            problem, w->file_end);
    return 0;
  }
  qerror ("%s: corrupt image: %s 0x%" PRIx64 " (%" PRIu64 " bytes) %s "
          "(0x%" PRIx64 " bytes): repair it with qemu-img check -r all",
          w->img->file->name, field, offset, len, problem, w->file_end);
  errno = EIO;
  return -1;
}

/* Visit a region, after checking its bounds.  1 visited, 0 skipped,
 * -1 stop. */
static int
region (struct walk *w, enum meta_kind kind, const char *field,
        uint64_t offset, uint64_t len)
{
  int r = bounded (w, field, offset, len);

  if (r <= 0)
    return r;
  return w->visit (w->img, w->opaque, kind, offset, len) == -1 ? -1 : 1;
}

/* Read a table whose bounds region() checked: what of it lies past the
 * end of the file, inside its last cluster, reads as zeroes. */
static uint64_t *
read_table (struct walk *w, const char *what, uint64_t offset, uint64_t len)
{
  const uint64_t in_file = MIN (len, w->file_end - offset);
  uint64_t *t = calloc (1, len ? len : 1);

  if (t == NULL) {
    qerror ("%s: %s: calloc: %m", w->img->file->name, what);
    return NULL;
  }
  if (hostio_pread (w->img->file, t, in_file, offset) == -1) {
    qerror ("%s: read %s at 0x%" PRIx64 ": %m", w->img->file->name, what,
            offset);
    free (t);
    return NULL;
  }
  return t;
}

/* The L2 tables an L1 table names: in memory in host order for the active
 * table, big-endian as read for a snapshot's ('snapshot' >= 0). */
static int
l2_tables (struct walk *w, const uint64_t *l1, uint64_t n, int64_t snapshot)
{
  const enum meta_kind kind = snapshot < 0 ? META_L2 : META_SNAPSHOT_L2;
  char field[80];

  for (uint64_t i = 0; i < n; i++) {
    uint64_t e = snapshot < 0 ? __atomic_load_n (&l1[i], __ATOMIC_ACQUIRE)
      : be64toh (l1[i]);
    uint64_t l2 = e & L1E_OFFSET_MASK;

    if (l2 == 0)
      continue;
    if (snapshot < 0)
      snprintf (field, sizeof field, "L1 entry %" PRIu64 ": L2 table", i);
    else
      snprintf (field, sizeof field, "snapshot %" PRIi64 ": L1 entry %"
                PRIu64 ": L2 table", snapshot, i);
    if (region (w, kind, field, l2, w->img->hdr.cluster_size) == -1)
      return -1;
  }
  return 0;
}

static int
refcount_blocks (struct walk *w)
{
  struct qcow2_image *img = w->img;
  char field[64];

  for (uint64_t i = 0; i < img->reftable_entries; i++) {
    uint64_t rb = img->reftable[i] & REFT_OFFSET_MASK;

    if (rb == 0)
      continue;
    snprintf (field, sizeof field, "refcount table entry %" PRIu64
              ": refcount block", i);
    if (region (w, META_REFBLOCK, field, rb, img->hdr.cluster_size) == -1)
      return -1;
  }
  return 0;
}

static int
snapshots (struct walk *w)
{
  struct qcow2_image *img = w->img;
  char field[64];
  int r;

  if (img->hdr.nb_snapshots == 0)
    return 0;
  r = region (w, META_SNAPSHOTS, "snapshots_offset: the snapshot table",
              img->hdr.snapshots_offset, img->snapshot_table_bytes);
  if (r <= 0)
    return r;
  for (uint32_t i = 0; i < img->hdr.nb_snapshots; i++) {
    const struct qcow2_snapshot *s = &img->snapshots[i];
    const uint64_t len = (uint64_t) s->l1_size * 8;
    CLEANUP_FREE uint64_t *l1 = NULL;

    if (s->l1_size == 0)
      continue;
    snprintf (field, sizeof field, "snapshot %" PRIu32 ": L1 table", i);
    r = region (w, META_SNAPSHOT_L1, field, s->l1_offset, len);
    if (r == -1)
      return -1;
    if (r == 0)
      continue;
    l1 = read_table (w, "a snapshot's L1 table", s->l1_offset, len);
    if (l1 == NULL || l2_tables (w, l1, s->l1_size, i) == -1)
      return -1;
  }
  return 0;
}

static int
bitmaps (struct walk *w)
{
  struct qcow2_image *img = w->img;
  const uint64_t cs = img->hdr.cluster_size;
  CLEANUP_FREE uint8_t *dir = NULL;
  CLEANUP_FREE struct qcow2_bitmap *b = NULL;
  char field[80];
  int n = qcow2_bitmaps_read (img, &dir, &b), r;

  if (n <= 0)
    return n;
  /* header.c checked the directory lies in the file; it need not be
   * cluster-aligned. */
  if (w->visit (img, w->opaque, META_BITMAP_DIR,
                img->hdr.bitmap_directory_offset,
                img->hdr.bitmap_directory_size) == -1)
    return -1;
  for (int i = 0; i < n; i++) {
    const uint64_t len = (uint64_t) b[i].table_size * 8;
    CLEANUP_FREE uint64_t *t = NULL;

    if (len == 0)
      continue;
    snprintf (field, sizeof field, "bitmap %d: bitmap table", i);
    r = region (w, META_BITMAP_TABLE, field, b[i].table_offset, len);
    if (r == -1)
      return -1;
    if (r == 0)
      continue;
    t = read_table (w, "a bitmap table", b[i].table_offset, len);
    if (t == NULL)
      return -1;
    for (uint32_t k = 0; k < b[i].table_size; k++) {
      uint64_t data = be64toh (t[k]) & QCOW2_BITMAP_TABLE_OFFSET_MASK;

      if (data == 0)
        continue;
      snprintf (field, sizeof field, "bitmap %d: table entry %" PRIu32
                ": bitmap data", i, k);
      if (region (w, META_BITMAP_DATA, field, data, cs) == -1)
        return -1;
    }
  }
  return 0;
}

int
qcow2_walk_metadata (struct qcow2_image *img, uint64_t file_end,
                     bool strict, qcow2_walk_fn visit, void *opaque)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t cs = h->cluster_size;
  struct walk w = {
    .img = img, .file_end = file_end, .strict = strict,
    .visit = visit, .opaque = opaque,
  };

  /* The active L2 tables come before any snapshot's: metamap.c counts
   * on it to tell a shared L2 table from a clash. */
  if (region (&w, META_HEADER, "the header", 0, cs) == -1 ||
      region (&w, META_L1, "l1_table_offset: the L1 table",
              h->l1_table_offset, (uint64_t) h->l1_size * 8) == -1 ||
      region (&w, META_REFTABLE, "refcount_table_offset: the refcount table",
              h->refcount_table_offset,
              (uint64_t) h->refcount_table_clusters * cs) == -1 ||
      refcount_blocks (&w) == -1 ||
      l2_tables (&w, img->l1, h->l1_size, -1) == -1 ||
      snapshots (&w) == -1 ||
      bitmaps (&w) == -1)
    return -1;
  return 0;
}
