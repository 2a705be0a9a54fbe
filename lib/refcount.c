/* qcow2j lib: refcounts.
 *
 * A refcount of width w bits (1 to 64) is changed by journalling the
 * whole 8-byte word that holds it, with its final value.  Refcount blocks
 * are created when a cluster without one is counted, and the refcount
 * table moves to a larger copy when it has no entry for it.  A cluster
 * whose count drops to 0 is freed: its host space is discarded once the
 * checkpoint has passed the free (rule R3, journal_defer_free).
 */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "format.h"
#include "alloc.h"
#include "entry.h"
#include "log.h"
#include "metadata.h"
#include "metamap.h"
#include "minmax.h"
#include "overlap.h"
#include "refcount.h"

/* Where the refcount of the cluster at offset lives: the host offset of
 * its 8-byte word and its bit position in the word, counted in the
 * word's big-endian bytes.  *word = 0 if it has no refcount block. */
static int
locate (struct qcow2_image *img, uint64_t offset, uint64_t *word,
        unsigned *bit)
{
  const struct qcow2_header *h = &img->hdr;
  uint64_t index = offset >> h->cluster_bits;
  uint64_t ti = index / img->refblock_entries;
  uint64_t bi = index % img->refblock_entries;
  uint64_t bitoff = bi << h->refcount_order, rb;

  *word = 0;
  *bit = bitoff % 64;
  if (ti >= img->reftable_entries)
    return 0;
  if (img->reftable[ti] & REFT_RESERVED_MASK) {
    qerror ("%s: refcount table entry %" PRIu64 " (0x%016" PRIx64 ") has "
            "reserved bits set", img->file->name, ti, img->reftable[ti]);
    errno = EIO;
    return -1;
  }
  rb = img->reftable[ti] & REFT_OFFSET_MASK;
  if (rb == 0)
    return 0;
  if (!IS_ALIGNED (rb, h->cluster_size) || rb >= img->next_free) {
    qerror ("%s: refcount block %" PRIu64 " at 0x%" PRIx64 " is misaligned "
            "or outside the image", img->file->name, ti, rb);
    errno = EIO;
    return -1;
  }
  *word = rb + bitoff / 64 * 8;
  return 0;
}

/* Refcount at bit position bit (bits counted from the word's first
 * big-endian byte; narrower refcounts are packed from the LSB of each
 * byte, as QEMU does) of width w. */
static uint64_t
decode (uint64_t word, unsigned bit, unsigned w)
{
  uint8_t b[8];
  uint64_t be = htobe64 (word), v = 0;

  memcpy (b, &be, 8);
  if (w >= 8) {
    for (unsigned k = 0; k < w / 8; k++)
      v = v << 8 | b[bit / 8 + k];
    return v;
  }
  return (b[bit / 8] >> (bit % 8)) & ((1u << w) - 1);
}

static uint64_t
encode (uint64_t word, unsigned bit, unsigned w, uint64_t value)
{
  uint8_t b[8];
  uint64_t be = htobe64 (word);

  memcpy (b, &be, 8);
  if (w >= 8)
    for (unsigned k = w / 8; k-- > 0; value >>= 8)
      b[bit / 8 + k] = value & 0xff;
  else {
    uint8_t mask = ((1u << w) - 1) << (bit % 8);
    b[bit / 8] = (b[bit / 8] & ~mask) | ((value << (bit % 8)) & mask);
  }
  memcpy (&be, b, 8);
  return be64toh (be);
}

int
qcow2_refcount_get (struct qcow2_image *img, uint64_t offset, uint64_t *value)
{
  uint64_t word_off, word;
  unsigned bit;

  if (locate (img, offset, &word_off, &bit) == -1)
    return -1;
  if (word_off == 0) {
    *value = 0;
    return 0;
  }
  if (qcow2_meta_read64 (img, word_off, &word) == -1)
    return -1;
  *value = decode (word, bit, 1u << img->hdr.refcount_order);
  return 0;
}

/* The refcount table has no entry ti: move it to a larger copy.  The copy
 * is written outside the journal into new clusters (ordered before the
 * transaction), then the header is switched to it by journalled header
 * words, and the old table is freed. */
static int
grow_reftable (struct qcow2_image *img, uint64_t ti)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t per_cluster = h->cluster_size / 8;
  uint64_t old_offset = h->refcount_table_offset;
  uint64_t old_clusters = h->refcount_table_clusters;
  uint64_t entries, clusters, offset;
  uint64_t *table;
  CLEANUP_FREE uint64_t *be = NULL;

  /* Room for ti, the table itself and a margin, with slack to grow. */
  entries = MAX (ti + 1, img->reftable_entries * 2);
  clusters = DIV_ROUND_UP (entries, per_cluster) + 1;
  entries = clusters * per_cluster;
  if (clusters * h->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
    qerror ("%s: the refcount table would exceed QEMU's limit",
            img->file->name);
    errno = ENOSPC;
    return -1;
  }
  table = calloc (entries, 8);
  be = calloc (entries, 8);
  if (table == NULL || be == NULL) {
    free (table);
    qerror ("calloc: %m");
    return -1;
  }
  memcpy (table, img->reftable, img->reftable_entries * 8);
  for (uint64_t i = 0; i < entries; i++)
    be[i] = htobe64 (table[i]);
  if (qcow2_alloc_clusters (img, clusters, 0, NULL, &offset) == -1 ||
      hostio_pwrite (img->file, be, entries * 8, offset) == -1) {
    qerror ("%s: write new refcount table: %m", img->file->name);
    free (table);
    return -1;
  }
  journal_need_ordering (img->journal);

  /* Switch: header words 48-55 (offset) and 56-63 (clusters and
   * nb_snapshots, unchanged). */
  if (qcow2_meta_set64 (img, QCOW2_OFF_REFCOUNT_TABLE_OFFSET, offset) == -1 ||
      qcow2_meta_set64 (img, QCOW2_OFF_REFCOUNT_TABLE_CLUSTERS,
                        clusters << 32 | h->nb_snapshots) == -1) {
    free (table);
    return -1;
  }
  free (img->reftable);
  img->reftable = table;
  img->reftable_entries = entries;
  img->hdr.refcount_table_offset = offset;
  img->hdr.refcount_table_clusters = clusters;

  /* Count the new table, free the old one (metadata until that free is
   * checkpointed). */
  if (qcow2_metamap_set (img, offset, clusters * h->cluster_size,
                         META_REFTABLE) == -1 ||
      qcow2_metamap_set (img, old_offset, old_clusters * h->cluster_size,
                         META_FREEING) == -1)
    return -1;
  for (uint64_t c = 0; c < clusters; c++)
    if (qcow2_refcount_set (img, offset + c * h->cluster_size, 1) == -1)
      return -1;
  for (uint64_t c = 0; c < old_clusters; c++)
    if (qcow2_cluster_unref (img, old_offset + c * h->cluster_size) == -1)
      return -1;
  return 0;
}

int
qcow2_refcount_set (struct qcow2_image *img, uint64_t offset, uint64_t value)
{
  const struct qcow2_header *h = &img->hdr;
  const unsigned w = 1u << h->refcount_order;
  uint64_t ti = (offset >> h->cluster_bits) / img->refblock_entries;
  uint64_t word_off, word;
  unsigned bit;

  ASSERT_META_LOCKED (img);
  if (w < 64 && value >> w) {
    qerror ("%s: refcount of cluster 0x%" PRIx64 " would overflow %u bits",
            img->file->name, offset, w);
    errno = EIO;
    return -1;
  }
  if (ti >= img->reftable_entries && grow_reftable (img, ti) == -1)
    return -1;
  if ((img->reftable[ti] & REFT_OFFSET_MASK) == 0) {
    /* A new refcount block, which may count itself. */
    uint64_t rb;

    if (qcow2_alloc_clusters (img, 1, 0, NULL, &rb) == -1 ||
        qcow2_metamap_set (img, rb, h->cluster_size, META_REFBLOCK) == -1 ||
        journal_add_zero (img->journal, rb, h->cluster_size) == -1 ||
        qcow2_meta_set64 (img, h->refcount_table_offset + 8 * ti, rb) == -1)
      return -1;
    img->reftable[ti] = rb;
    if (qcow2_refcount_set (img, rb, 1) == -1)
      return -1;
  }
  if (locate (img, offset, &word_off, &bit) == -1 ||
      qcow2_meta_read64 (img, word_off, &word) == -1)
    return -1;
  return qcow2_meta_set64 (img, word_off, encode (word, bit, w, value));
}

int
qcow2_refcount_zero_runs (struct qcow2_image *img, uint64_t end,
                          int (*fn) (struct qcow2_image *img, uint64_t start,
                                     uint64_t len, void *opaque),
                          void *opaque, uint64_t *used_end)
{
  const struct qcow2_header *h = &img->hdr;
  const unsigned w = 1u << h->refcount_order;
  const uint64_t clusters = DIV_ROUND_UP (end, h->cluster_size);
  const uint64_t counted = img->reftable_entries * img->refblock_entries;
  CLEANUP_FREE uint64_t *block = malloc (h->cluster_size);
  uint64_t run = 0;             /* first cluster of the current free run */

  if (block == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  for (uint64_t c = 0; c < counted; ) {
    uint64_t n = img->refblock_entries;   /* c starts a block */
    uint64_t rb;
    unsigned bit;

    if (locate (img, c << h->cluster_bits, &rb, &bit) == -1)
      return -1;
    if (rb == 0) {              /* no refcount block: all 0 */
      c += n;
      continue;
    }
    if (hostio_pread (img->file, block, h->cluster_size, rb) == -1) {
      qerror ("%s: read refcount block at 0x%" PRIx64 ": %m",
              img->file->name, rb);
      return -1;
    }
    for (uint64_t k = 0; k < n; k++, c++) {
      uint64_t bitoff = k << h->refcount_order;

      if (decode (be64toh (block[bitoff / 64]), bitoff % 64, w) == 0)
        continue;
      if (run < MIN (c, clusters) &&
          fn (img, run << h->cluster_bits,
              (MIN (c, clusters) - run) << h->cluster_bits, opaque) == -1)
        return -1;
      run = c + 1;
    }
  }
  if (run < clusters &&
      fn (img, run << h->cluster_bits, (clusters - run) << h->cluster_bits,
          opaque) == -1)
    return -1;
  *used_end = run << h->cluster_bits;
  return 0;
}

/* Drop one reference to a cluster whose refcount is rc (not 0): a table
 * whose last reference goes is metadata until its free is checkpointed
 * (its committed changes may still be written back), then its bytes are
 * discarded on the host (checkpoint.c).  *last: that was the last. */
static int
drop_reference (struct qcow2_image *img, uint64_t offset, uint64_t rc,
                enum meta_kind kind, bool *last)
{
  if (qcow2_refcount_set (img, offset, rc - 1) == -1)
    return -1;
  *last = rc == 1;
  if (*last && kind != META_NONE &&
      qcow2_metamap_set (img, offset, img->hdr.cluster_size,
                         META_FREEING) == -1)
    return -1;
  return 0;
}

/* The cluster at offset, about to lose a reference: what the map says it
 * is, and its refcount.  Only data clusters and L2 tables are freed one
 * cluster at a time (a table being freed whole is marked so first). */
static int
unref_check (struct qcow2_image *img, uint64_t offset, enum meta_kind *kind,
             uint64_t *rc)
{
  uint64_t where;

  *kind = qcow2_metamap_find (img, offset, 1, &where);
  if (*kind != META_NONE && *kind != META_L2 && *kind != META_SNAPSHOT_L2 &&
      *kind != META_FREEING)
    return qcow2_overlap_refuse (img, "a free", offset, *kind, where);
  if (qcow2_refcount_get (img, offset, rc) == -1)
    return -1;
  if (*rc == 0) {
    qerror ("%s: refcount of cluster 0x%" PRIx64 " is already 0",
            img->file->name, offset);
    errno = EIO;
    return -1;
  }
  return 0;
}

int
qcow2_cluster_unref (struct qcow2_image *img, uint64_t offset)
{
  enum meta_kind kind;
  uint64_t rc;
  bool last;

  ASSERT_META_LOCKED (img);
  offset = ROUND_DOWN (offset, img->hdr.cluster_size);
  if (unref_check (img, offset, &kind, &rc) == -1)
    return -1;
  /* Without a journal the decrement itself waits until the tables that
   * held the reference are home (docs/journal-format.md 13.1). */
  if (qcow2_no_journal (img))
    return journal_defer_free (img->journal, offset);
  if (drop_reference (img, offset, rc, kind, &last) == -1)
    return -1;
  return last ? journal_defer_free (img->journal, offset) : 0;
}

int
qcow2_cluster_unref_deferred (struct qcow2_image *img, uint64_t offset,
                              bool *last)
{
  enum meta_kind kind;
  uint64_t rc;

  ASSERT_META_LOCKED (img);
  assert (qcow2_no_journal (img));
  if (unref_check (img, offset, &kind, &rc) == -1)
    return -1;
  return drop_reference (img, offset, rc, kind, last);
}

int
qcow2_release_host (struct qcow2_image *img, uint64_t entry)
{
  const uint64_t cs = img->hdr.cluster_size;
  uint64_t first, count;

  qcow2_entry_clusters (img, entry, &first, &count);
  if (count > 0 &&
      qcow2_overlap_check (img, first, count * cs, "freeing a data cluster")
      == -1)
    return -1;
  for (uint64_t c = 0; c < count; c++)
    if (qcow2_cluster_unref (img, first + c * cs) == -1)
      return -1;
  return 0;
}
