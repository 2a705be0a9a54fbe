/* qcow2j lib: keeping persistent dirty bitmaps up to date.
 *
 * Before its first write a session takes every enabled bitmap it can keep
 * up to date.  One it cannot (a table that does not fit the disk, an
 * entry naming no bitmap data) is marked "in use", exactly as QEMU leaves
 * its bitmaps after an unclean stop: QEMU then knows its contents are not
 * to be trusted (and qemu-img check still passes), so no bitmap ever
 * claims clean what qcow2j wrote.  That flag is set in place in the
 * directory and flushed before anything else is written.  Disabled
 * bitmaps, bitmaps already in use and bitmaps QEMU would not load stay
 * as they are.
 *
 * Every write, zero and trim sets the bits covering its range in every
 * bitmap the session keeps (chosen at the set-up, above), so that
 * an incremental backup that trusts the bitmap copies every range that
 * changed.  The bits are metadata like any other: set through the
 * journal (SET64 records on the bitmap data, a ZERO record and a table
 * entry for a new data cluster), checkpointed in place, replayed after a
 * crash.  A bitmap is never "in use" while qcow2j serves it: after a kill
 * it is as consistent as the rest of the metadata.
 *
 * Order is what makes that true.  The bits go into a transaction before
 * the change they describe: a write that allocates maps its data in a
 * later transaction, a zero or trim changes its entries in a later one,
 * and replay applies transactions in order, so whatever a crash keeps of
 * the change, it keeps the bits too.  A write in place changes data with
 * no transaction at all, so its caller commits first while any bit set
 * in memory is not yet durable (qcow2_bitmaps_pending, write.c): whoever
 * set it, this request or another, and for whichever range.  That costs
 * a commit per granule first written after a backup cleared the bitmap.
 *
 * Layout (QEMU's docs/interop/qcow2.txt): bit i of a bitmap covers guest
 * bytes [i << granularity_bits, (i + 1) << granularity_bits), and lives in
 * bit i % 8 of byte i / 8 of the bitmap's data, which is split into
 * clusters named by the bitmap table; an entry of 0 stands for a cluster
 * of zeroes, an entry of 1 for a cluster of ones.
 */
#include <config.h>

#include <inttypes.h>
#include <stdlib.h>

#include "alloc.h"
#include "byteorder.h"
#include "cleanup.h"
#include "bitmaps-live.h"
#include "bitmaps.h"
#include "commit.h"
#include "log.h"
#include "metadata.h"
#include "metamap.h"
#include "minmax.h"
#include "refcount.h"
#include "state.h"

/* The value, as an 8-byte word read big-endian, whose bits lo..hi (bit
 * order of the bitmap: bit i in byte i / 8, bit i % 8) are set. */
static uint64_t
word_mask (unsigned lo, unsigned hi)
{
  uint64_t mask = 0;

  for (unsigned byte = lo / 8; byte <= hi / 8; byte++) {
    unsigned from = MAX (lo, byte * 8) - byte * 8;
    unsigned to = MIN (hi, byte * 8 + 7) - byte * 8;
    uint64_t bits = ((2ULL << to) - 1) & ~((1ULL << from) - 1);

    mask |= bits << (56 - 8 * byte);
  }
  return mask;
}

/* The data cluster of table entry ti, allocated (zeroed) if it has none;
 * 0 if the entry says "all ones". */
static int
data_cluster (struct qcow2_image *img, const struct qcow2_live_bitmap *b,
              uint64_t ti, uint64_t *data, bool *newly)
{
  const uint64_t cs = img->hdr.cluster_size;
  const uint64_t entry_at = b->table_offset + 8 * ti;
  uint64_t e;

  if (qcow2_meta_read64 (img, entry_at, &e) == -1)
    return -1;
  *data = e & QCOW2_BITMAP_TABLE_OFFSET_MASK;
  if (*data != 0 || (e & QCOW2_BITMAP_TABLE_ALL_ONES))
    return 0;
  /* Tables come from space that reads as zeroes (alloc.c); the ZERO
   * record says so to a replay. */
  if (qcow2_alloc_clusters (img, 1, 0, NULL, data) == -1 ||
      qcow2_metamap_set (img, *data, cs, META_BITMAP_DATA) == -1 ||
      journal_add_zero (img->journal, *data, cs) == -1 ||
      qcow2_refcount_set (img, *data, 1) == -1 ||
      qcow2_meta_set64 (img, entry_at, *data) == -1)
    return -1;
  *newly = true;
  return 0;
}

/* Bits [first, last] of one bitmap, inside the disk. */
static int
mark_bits (struct qcow2_image *img, const struct qcow2_live_bitmap *b,
           uint64_t first, uint64_t last, bool *newly)
{
  const uint64_t per_cluster = img->hdr.cluster_size * 8;

  for (uint64_t ti = first / per_cluster; ti <= last / per_cluster; ti++) {
    const uint64_t base = ti * per_cluster;
    const uint64_t lo = MAX (first, base) - base;
    const uint64_t hi = MIN (last, base + per_cluster - 1) - base;
    uint64_t data;

    if (data_cluster (img, b, ti, &data, newly) == -1)
      return -1;
    if (data == 0)
      continue;                 /* all ones already */
    for (uint64_t w = lo / 64; w <= hi / 64; w++) {
      uint64_t old, mask = word_mask (MAX (lo, w * 64) - w * 64,
                                      MIN (hi, w * 64 + 63) - w * 64);

      if (qcow2_meta_read64 (img, data + 8 * w, &old) == -1)
        return -1;
      if ((old | mask) == old)
        continue;
      if (qcow2_meta_set64 (img, data + 8 * w, old | mask) == -1)
        return -1;
      *newly = true;
    }
  }
  return 0;
}

int
qcow2_bitmaps_mark (struct qcow2_image *img, uint64_t offset,
                    uint64_t count)
{
  const uint64_t size = img->hdr.size;
  uint64_t sealed, durable;
  bool newly = false;
  int r = 0;

  if (img->nr_live_bitmaps == 0 || count == 0 || offset >= size)
    return 0;
  count = MIN (count, size - offset);
  qcow2_meta_lock (img);
  /* A new data cluster fails for want of space here, not half way. */
  if (qcow2_check_writing (img) == -1 || qcow2_reserve_space (img) == -1) {
    qcow2_meta_unlock (img);
    return -1;
  }
  qcow2_change_begin (img);
  for (unsigned i = 0; i < img->nr_live_bitmaps && r == 0; i++) {
    const struct qcow2_live_bitmap *b = &img->live_bitmaps[i];

    r = mark_bits (img, b, offset >> b->granularity_bits,
                   (offset + count - 1) >> b->granularity_bits, &newly);
  }
  /* The bits are in the open transaction: durable once a transaction
   * sealed after now is. */
  if (r == 0 && newly) {
    journal_generations (img->journal, &sealed, &durable);
    if (img->bits_durable_at < sealed + 1)
      __atomic_store_n (&img->bits_durable_at, sealed + 1, __ATOMIC_RELEASE);
  }
  r = qcow2_change_end (img, r);
  qcow2_meta_unlock (img);
  return r;
}

bool
qcow2_bitmaps_pending (struct qcow2_image *img)
{
  uint64_t sealed, durable;

  if (img->nr_live_bitmaps == 0)
    return false;
  journal_generations (img->journal, &sealed, &durable);
  return durable < __atomic_load_n (&img->bits_durable_at, __ATOMIC_ACQUIRE);
}

/* Can this enabled bitmap be kept up to date?  NULL if so, else why not:
 * its table must have the size the disk and granularity give and lie
 * where the metadata map holds it, and each entry must name a data
 * cluster the map holds as bitmap data, or none. */
static const char *
unmaintainable (struct qcow2_image *img, const struct qcow2_bitmap *b)
{
  const uint64_t cs = img->hdr.cluster_size;
  const uint64_t bits = DIV_ROUND_UP (img->hdr.size,
                                      1ULL << b->granularity_bits);
  CLEANUP_FREE uint8_t *t = NULL;
  uint64_t at;

  if (b->table_size != DIV_ROUND_UP (bits, cs * 8))
    return "its table's size does not match the disk's";
  /* The walk (walk.c) put a well-placed table in the map; one it skipped
   * (misaligned, past the end of the file) is not there. */
  if (qcow2_metamap_find (img, b->table_offset, 1, &at) != META_BITMAP_TABLE ||
      at != b->table_offset)
    return "its table is misaligned or outside the file";
  t = malloc (b->table_size ? (uint64_t) b->table_size * 8 : 1);
  if (t == NULL)
    return "out of memory";
  if (hostio_pread (img->file, t, (uint64_t) b->table_size * 8,
                    b->table_offset) == -1)
    return "its table cannot be read";
  for (uint32_t i = 0; i < b->table_size; i++) {
    uint64_t e = get_be64 (t + 8 * i), where;
    uint64_t data = e & QCOW2_BITMAP_TABLE_OFFSET_MASK;

    if (e & ~(QCOW2_BITMAP_TABLE_OFFSET_MASK | QCOW2_BITMAP_TABLE_ALL_ONES) ||
        (data != 0 && (e & QCOW2_BITMAP_TABLE_ALL_ONES)))
      return "a table entry has reserved bits set";
    if (data != 0 &&
        (!IS_ALIGNED (data, cs) ||
         qcow2_metamap_find (img, data, cs, &where) != META_BITMAP_DATA ||
         where != data))
      return "a table entry names no bitmap data cluster";
  }
  return NULL;
}

int
qcow2_bitmaps_start (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;
  CLEANUP_FREE uint8_t *dir = NULL;
  CLEANUP_FREE struct qcow2_bitmap *bitmaps = NULL;
  unsigned in_use = 0;
  int n = qcow2_bitmaps_read (img, &dir, &bitmaps);

  if (n <= 0)
    return n;
  img->live_bitmaps = calloc (n, sizeof *img->live_bitmaps);
  if (img->live_bitmaps == NULL) {
    qerror ("calloc: %m");
    return -1;
  }
  for (int i = 0; i < n; i++) {
    const struct qcow2_bitmap *b = &bitmaps[i];
    const char *why;

    /* In use (QEMU will not trust it), disabled (QEMU leaves it
     * unchanged) or unknown to QEMU (it will not load it): as it is. */
    if ((b->flags & QCOW2_BITMAP_IN_USE) || !(b->flags & QCOW2_BITMAP_AUTO) ||
        (b->flags & ~(QCOW2_BITMAP_IN_USE | QCOW2_BITMAP_AUTO |
                      QCOW2_BITMAP_EXTRA_DATA_COMPATIBLE)) ||
        b->type != QCOW2_BITMAP_TYPE_DIRTY ||
        b->granularity_bits < 9 || b->granularity_bits > 31)
      continue;
    why = unmaintainable (img, b);
    if (why == NULL) {
      struct qcow2_live_bitmap *l = &img->live_bitmaps[img->nr_live_bitmaps++];

      l->table_offset = b->table_offset;
      l->table_size = b->table_size;
      l->granularity_bits = b->granularity_bits;
      continue;
    }
    qerror ("%s: persistent bitmap %d (table at 0x%" PRIx64 "): %s: it "
            "cannot be kept up to date, so it is marked in use",
            img->file->name, i, b->table_offset, why);
    qcow2_bitmaps_set_flags (dir, b->entry_pos,
                             b->flags | QCOW2_BITMAP_IN_USE);
    in_use++;
  }
  qdebug ("%s: %u persistent bitmaps kept up to date, %u marked in use",
          img->file->name, img->nr_live_bitmaps, in_use);
  if (in_use == 0)
    return 0;
  /* In place, flushed before anything else is written. */
  if (hostio_pwrite (img->file, dir, h->bitmap_directory_size,
                     h->bitmap_directory_offset) == -1 ||
      hostio_flush (img->file) == -1) {
    qerror ("%s: mark bitmaps in use: %m", img->file->name);
    return -1;
  }
  return 0;
}
