/* qcow2j lib: the exact map of the image's own metadata.
 *
 * Which clusters of the image file hold metadata, and of what kind: the
 * header cluster, the active L1 table and every L2 table it names, the
 * refcount table and blocks, the snapshot table, each snapshot's L1 table
 * and the L2 tables it names, the bitmap directory, bitmap tables and
 * bitmap data, and the live journal area.  Built when the write session
 * starts (after any replay), kept current as tables are allocated and
 * freed, and asked before every in-place guest write, every free, every
 * punch and every checkpoint write-back: a host offset taken from an
 * entry may name any of these only through corruption, and acting on it
 * would destroy the image (QEMU's qcow2_check_metadata_overlap is the
 * model; every kind here is always checked).
 *
 * Kept in a rangemap (rangemap.c says why a sorted array).  Checks are on
 * the write path and must be cheap; changes are rare (a new L2 table per
 * 512 MiB of guest data with 64 KiB clusters, a refcount block per 2 GiB
 * of host space).  A bitmap of clusters would cost 1 bit per cluster of
 * the whole file (256 MiB for a 1 TiB image of 512-byte clusters).  The
 * map holds one range per table at most, and tables may not overlap
 * (add() refuses), so its size is bounded by the file's.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bitmaps.h"
#include "byteorder.h"
#include "cleanup.h"
#include "format.h"
#include "log.h"
#include "metamap.h"
#include "minmax.h"
#include "rangemap.h"

const char *
qcow2_meta_kind_name (enum meta_kind kind)
{
  switch (kind) {
  case META_NONE: return "nothing";
  case META_HEADER: return "qcow2 header";
  case META_L1: return "active L1 table";
  case META_L2: return "active L2 table";
  case META_REFTABLE: return "refcount table";
  case META_REFBLOCK: return "refcount block";
  case META_SNAPSHOTS: return "snapshot table";
  case META_SNAPSHOT_L1: return "inactive L1 table";
  case META_SNAPSHOT_L2: return "inactive L2 table";
  case META_BITMAP_DIR: return "bitmap directory";
  case META_BITMAP_TABLE: return "bitmap table";
  case META_BITMAP_DATA: return "bitmap data";
  case META_JOURNAL: return "qcow2j journal";
  case META_FREEING: return "table being freed";
  }
  abort ();
}

static void
cluster_range (const struct qcow2_image *img, uint64_t start, uint64_t len,
               uint64_t *from, uint64_t *to)
{
  const uint64_t cs = img->hdr.cluster_size;

  *from = ROUND_DOWN (start, cs);
  *to = ROUND_UP (start + len, cs);
}

int
qcow2_metamap_set (struct qcow2_image *img, uint64_t start, uint64_t len,
                   enum meta_kind kind)
{
  uint64_t from, to;
  int r;

  if (len == 0)
    return 0;
  cluster_range (img, start, len, &from, &to);
  pthread_rwlock_wrlock (&img->map_lock);
  r = rangemap_set (&img->map, from, to, kind);
  pthread_rwlock_unlock (&img->map_lock);
  if (r == -1)
    qerror ("%s: metadata map: %m", img->file->name);
  return r;
}

enum meta_kind
qcow2_metamap_find (struct qcow2_image *img, uint64_t start, uint64_t len,
                    uint64_t *where)
{
  enum meta_kind kind = META_NONE;
  size_t i;

  if (len == 0)
    return META_NONE;
  pthread_rwlock_rdlock (&img->map_lock);
  i = rangemap_first_after (&img->map, start);
  if (i < img->map.len && img->map.v[i].start < start + len) {
    kind = img->map.v[i].kind;
    *where = MAX (img->map.v[i].start,
                  ROUND_DOWN (start, (uint64_t) img->hdr.cluster_size));
  }
  pthread_rwlock_unlock (&img->map_lock);
  return kind;
}

bool
qcow2_metamap_next_gap (struct qcow2_image *img, uint64_t start, uint64_t end,
                        uint64_t *from, uint64_t *to)
{
  uint64_t pos = start;
  size_t i;

  pthread_rwlock_rdlock (&img->map_lock);
  for (i = rangemap_first_after (&img->map, start);
       i < img->map.len && img->map.v[i].start <= pos; i++)
    pos = MAX (pos, img->map.v[i].end);
  *from = pos;
  *to = i < img->map.len ? MIN (end, img->map.v[i].start) : end;
  pthread_rwlock_unlock (&img->map_lock);
  return *from < *to;
}

bool
qcow2_metamap_is_table (struct qcow2_image *img, uint64_t start, uint64_t len)
{
  bool ok = false;
  size_t i;

  pthread_rwlock_rdlock (&img->map_lock);
  i = rangemap_first_after (&img->map, start);
  if (i < img->map.len && img->map.v[i].start <= start &&
      start + len <= img->map.v[i].end) {
    switch (img->map.v[i].kind) {
    case META_HEADER: case META_L1: case META_L2: case META_SNAPSHOT_L2:
    case META_REFTABLE: case META_REFBLOCK: case META_FREEING:
      ok = true;
      break;
    default:
      break;
    }
  }
  pthread_rwlock_unlock (&img->map_lock);
  return ok;
}

/* Building ---------------------------------------------------------------- */

/* Add metadata found at open.  Two tables in one cluster (an L2 table
 * that is also a refcount block, two snapshots' L1 tables) mean a corrupt
 * image: the set-up fails and nothing is written.  Only L2 tables are
 * shared: between snapshots, and with the active L1 (they stay active).
 * Since no other table may overlap another, what is read to build the
 * map is bounded by the file's length. */
static int
add (struct qcow2_image *img, uint64_t start, uint64_t len,
     enum meta_kind kind)
{
  uint64_t from, to, where = 0;
  enum meta_kind clash = META_NONE;
  bool active_l2 = false;

  if (len == 0)
    return 0;
  cluster_range (img, start, len, &from, &to);
  pthread_rwlock_rdlock (&img->map_lock);
  for (size_t i = rangemap_first_after (&img->map, from);
       i < img->map.len && img->map.v[i].start < to; i++) {
    enum meta_kind old = img->map.v[i].kind;

    if (kind == META_SNAPSHOT_L2 &&
        (old == META_L2 || old == META_SNAPSHOT_L2))
      active_l2 = active_l2 || old == META_L2;
    else if (clash == META_NONE) {
      clash = old;
      where = MAX (img->map.v[i].start, from);
    }
  }
  pthread_rwlock_unlock (&img->map_lock);
  if (clash != META_NONE) {
    qerror ("%s: corrupt image: the %s at 0x%" PRIx64 " overlaps the %s "
            "at 0x%" PRIx64 ": repair it with qemu-img check -r all",
            img->file->name, qcow2_meta_kind_name (kind), start,
            qcow2_meta_kind_name (clash), where);
    errno = EIO;
    return -1;
  }
  if (active_l2)
    return 0;
  return qcow2_metamap_set (img, start, len, kind);
}

/* An L1 table's L2 tables (entries in host order when 'l1' is the active
 * table in memory, big-endian when read from a snapshot). */
static int
add_l2_tables (struct qcow2_image *img, const uint64_t *l1, uint64_t n,
               bool big_endian, enum meta_kind kind)
{
  for (uint64_t i = 0; i < n; i++) {
    uint64_t e = big_endian ? be64toh (l1[i]) :
      __atomic_load_n (&l1[i], __ATOMIC_ACQUIRE);
    uint64_t l2 = e & L1E_OFFSET_MASK;

    if (l2 != 0 && add (img, l2, img->hdr.cluster_size, kind) == -1)
      return -1;
  }
  return 0;
}

static int
add_snapshots (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;

  if (h->nb_snapshots == 0)
    return 0;
  if (add (img, h->snapshots_offset, img->snapshot_table_bytes,
           META_SNAPSHOTS) == -1)
    return -1;
  for (uint32_t i = 0; i < h->nb_snapshots; i++) {
    const struct qcow2_snapshot *s = &img->snapshots[i];
    CLEANUP_FREE uint64_t *l1 = NULL;

    if (s->l1_size == 0)
      continue;
    /* snapshot.c bounded l1_size by QEMU's limit on L1 tables. */
    l1 = malloc ((uint64_t) s->l1_size * 8);
    if (l1 == NULL) {
      qerror ("%s: snapshot L1 table: malloc: %m", img->file->name);
      return -1;
    }
    if (hostio_pread (img->file, l1, (uint64_t) s->l1_size * 8,
                      s->l1_offset) == -1) {
      qerror ("%s: read snapshot L1 table at 0x%" PRIx64 ": %m",
              img->file->name, s->l1_offset);
      return -1;
    }
    if (add (img, s->l1_offset, (uint64_t) s->l1_size * 8,
             META_SNAPSHOT_L1) == -1 ||
        add_l2_tables (img, l1, s->l1_size, true, META_SNAPSHOT_L2) == -1)
      return -1;
  }
  return 0;
}

static int
add_bitmaps (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  CLEANUP_FREE uint8_t *dir = NULL;
  CLEANUP_FREE struct qcow2_bitmap *bitmaps = NULL;
  int n = qcow2_bitmaps_read (img, &dir, &bitmaps);

  if (n <= 0)
    return n;
  if (add (img, img->hdr.bitmap_directory_offset,
           img->hdr.bitmap_directory_size, META_BITMAP_DIR) == -1)
    return -1;
  for (int i = 0; i < n; i++) {
    const struct qcow2_bitmap *b = &bitmaps[i];
    CLEANUP_FREE uint64_t *table = NULL;

    if (b->table_size == 0)
      continue;
    table = malloc ((uint64_t) b->table_size * 8);
    if (table == NULL) {
      qerror ("%s: bitmap table: malloc: %m", img->file->name);
      return -1;
    }
    if (hostio_pread (img->file, table, (uint64_t) b->table_size * 8,
                      b->table_offset) == -1) {
      qerror ("%s: read bitmap table at 0x%" PRIx64 ": %m",
              img->file->name, b->table_offset);
      return -1;
    }
    if (add (img, b->table_offset, (uint64_t) b->table_size * 8,
             META_BITMAP_TABLE) == -1)
      return -1;
    for (uint32_t k = 0; k < b->table_size; k++) {
      uint64_t data = be64toh (table[k]) & QCOW2_BITMAP_TABLE_OFFSET_MASK;

      if (data != 0 && add (img, data, cs, META_BITMAP_DATA) == -1)
        return -1;
    }
  }
  return 0;
}

int
qcow2_metamap_build (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t cs = h->cluster_size;

  img->map.len = 0;
  if (add (img, 0, cs, META_HEADER) == -1 ||
      add (img, h->l1_table_offset, (uint64_t) h->l1_size * 8,
           META_L1) == -1 ||
      add (img, h->refcount_table_offset,
           (uint64_t) h->refcount_table_clusters * cs, META_REFTABLE) == -1)
    return -1;
  for (uint64_t i = 0; i < img->reftable_entries; i++) {
    uint64_t rb = img->reftable[i] & REFT_OFFSET_MASK;

    if (rb != 0 && add (img, rb, cs, META_REFBLOCK) == -1)
      return -1;
  }
  if (add_l2_tables (img, img->l1, h->l1_size, false, META_L2) == -1 ||
      add_snapshots (img) == -1 ||
      add_bitmaps (img) == -1)
    return -1;
  return 0;
}
