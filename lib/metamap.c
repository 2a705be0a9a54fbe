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

#include "log.h"
#include "metamap.h"
#include "minmax.h"
#include "rangemap.h"
#include "walk.h"

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

/* Metadata that the checkpoint (or a v2 write-back) writes in place. */
static bool
written_back (enum meta_kind kind)
{
  switch (kind) {
  case META_HEADER: case META_L1: case META_L2: case META_SNAPSHOT_L2:
  case META_REFTABLE: case META_REFBLOCK: case META_FREEING:
  case META_BITMAP_TABLE: case META_BITMAP_DATA:
    return true;
  default:
    return false;
  }
}

bool
qcow2_metamap_is_table (struct qcow2_image *img, uint64_t start, uint64_t len)
{
  bool ok = false;
  size_t i;

  pthread_rwlock_rdlock (&img->map_lock);
  i = rangemap_first_after (&img->map, start);
  if (i < img->map.len && img->map.v[i].start <= start &&
      start + len <= img->map.v[i].end)
    ok = written_back (img->map.v[i].kind);
  pthread_rwlock_unlock (&img->map_lock);
  return ok;
}

int
qcow2_metamap_reserve_tables (struct qcow2_image *img)
{
  if (img->file->fixed_size)
    return 0;
  for (size_t i = 0; i < img->map.len; i++) {
    const struct range *r = &img->map.v[i];

    if (written_back (r->kind) &&
        hostio_reserve (img->file, r->start, r->end - r->start) == -1) {
      if (errno == ENOTSUP)
        return 0;
      qerror ("%s: reserve host space for the %s at 0x%" PRIx64 ": %m",
              img->file->name, qcow2_meta_kind_name (r->kind), r->start);
      return -1;
    }
  }
  return 0;
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

static int
visit (struct qcow2_image *img, void *opaque, enum meta_kind kind,
       uint64_t offset, uint64_t len)
{
  (void) opaque;
  return add (img, offset, len, kind);
}

int
qcow2_metamap_build (struct qcow2_image *img)
{
  img->map.len = 0;
  /* Lenient: a reference outside the file is refused where it is used
   * (map.c), and names nothing to protect here. */
  return qcow2_walk_metadata (img, img->file_size, false, visit, NULL);
}
