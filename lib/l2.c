/* qcow2j lib: L1 and L2 entries, looked up and changed.
 *
 * Changes go through the journalled words of metadata.c, and allocate
 * through alloc.c and refcount.c: a new L2 table is a journalled ZERO
 * range; an L2 table shared with a snapshot (no COPIED flag in its L1
 * entry) is copied before any of its entries changes.
 */
#include <config.h>

#include <endian.h>
#include <inttypes.h>
#include <stdlib.h>

#include "alloc.h"
#include "cleanup.h"
#include "entry.h"
#include "format.h"
#include "l2.h"
#include "log.h"
#include "map.h"
#include "metadata.h"
#include "metamap.h"
#include "refcount.h"
#include "state.h"

/* The L1 index, and the byte offset in its L2 table, of guest offset. */
static void
l2_position (const struct qcow2_image *img, uint64_t guest, uint64_t *l1i,
             uint64_t *in_table)
{
  const struct qcow2_header *h = &img->hdr;

  *l1i = guest >> (h->cluster_bits + h->l2_bits);
  *in_table = ((guest >> h->cluster_bits) & ((1ULL << h->l2_bits) - 1)) *
    h->l2_entry_size;
}

int
qcow2_l2_lookup (struct qcow2_image *img, uint64_t guest,
                 uint64_t *entry_offset, uint64_t *entry, uint64_t *bitmap)
{
  uint64_t l1i, in_table, l2;

  l2_position (img, guest, &l1i, &in_table);
  *entry = *bitmap = 0;
  *entry_offset = 0;
  if (qcow2_l2_table (img, guest, &l2) == -1)
    return -1;
  if (l2 == 0)
    return 0;
  *entry_offset = l2 + in_table;
  if (qcow2_meta_read64 (img, *entry_offset, entry) == -1)
    return -1;
  if (img->hdr.l2_entry_size == 16 &&
      qcow2_meta_read64 (img, *entry_offset + 8, bitmap) == -1)
    return -1;
  return 0;
}

int
qcow2_l2_entry_to_change (struct qcow2_image *img, uint64_t guest,
                          uint64_t *entry_offset, uint64_t *entry,
                          uint64_t *bitmap)
{
  ASSERT_META_LOCKED (img);
  if (qcow2_check_writing (img) == -1 ||
      qcow2_l2_lookup (img, guest, entry_offset, entry, bitmap) == -1)
    return -1;
  return qcow2_check_entry (img, guest, *entry, *bitmap);
}

int
qcow2_l1_set (struct qcow2_image *img, uint64_t l1i, uint64_t value)
{
  if (qcow2_meta_set64 (img, img->hdr.l1_table_offset + 8 * l1i,
                        value) == -1)
    return -1;
  __atomic_store_n (&img->l1[l1i], value, __ATOMIC_RELEASE);
  return 0;
}

/* The L2 table at old is shared with a snapshot: give the active L1 its
 * own copy.  Data clusters keep their refcounts (the snapshot's table
 * still counts for them), so an entry is COPIED only where its cluster's
 * refcount is 1. */
static int
copy_l2_table (struct qcow2_image *img, uint64_t l1i, uint64_t old)
{
  const struct qcow2_header *h = &img->hdr;
  const unsigned words = h->l2_entry_size / 8;
  CLEANUP_FREE uint64_t *table = malloc (h->cluster_size);
  uint64_t new, where;

  if (table == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  for (uint64_t i = 0; i < h->cluster_size / 8; i++)
    if (qcow2_meta_read64 (img, old + 8 * i, &table[i]) == -1)
      return -1;
  for (uint64_t i = 0; i < h->cluster_size / 8; i += words) {
    enum qcow2_entry_type type = qcow2_entry_type (img, table[i]);
    uint64_t host = qcow2_entry_host (table[i]), rc;

    if ((type != ENTRY_NORMAL && type != ENTRY_ZERO_ALLOC) || host == 0)
      continue;
    if (qcow2_refcount_get (img, host, &rc) == -1)
      return -1;
    table[i] = rc == 1 ? table[i] | QCOW_OFLAG_COPIED
      : table[i] & ~QCOW_OFLAG_COPIED;
  }
  for (uint64_t i = 0; i < h->cluster_size / 8; i++)
    table[i] = htobe64 (table[i]);

  /* The copy goes to a new cluster outside the journal (8.1): like
   * copy-on-write data, it must be durable before the transaction that
   * links it, so this change needs the two-flush commit (8.3). */
  if (qcow2_alloc_clusters (img, 1, 0, NULL, &new) == -1)
    return -1;
  if (hostio_pwrite (img->file, table, h->cluster_size, new) == -1) {
    qerror ("%s: write L2 table copy at 0x%" PRIx64 ": %m",
            img->file->name, new);
    return -1;
  }
  journal_need_ordering (img->journal);
  if (qcow2_metamap_set (img, new, h->cluster_size, META_L2) == -1 ||
      qcow2_refcount_set (img, new, 1) == -1 ||
      qcow2_l1_set (img, l1i, new | QCOW_OFLAG_COPIED) == -1 ||
      qcow2_cluster_unref (img, old) == -1)
    return -1;
  /* Still a snapshot's, unless that free was its last reference. */
  if (qcow2_metamap_find (img, old, 1, &where) == META_L2)
    return qcow2_metamap_set (img, old, h->cluster_size, META_SNAPSHOT_L2);
  return 0;
}

bool
qcow2_l2_ready (struct qcow2_image *img, uint64_t guest)
{
  uint64_t l1i, in_table, l1e;

  ASSERT_META_LOCKED (img);
  l2_position (img, guest, &l1i, &in_table);
  l1e = img->l1[l1i];
  return (l1e & L1E_OFFSET_MASK) != 0 && (l1e & QCOW_OFLAG_COPIED);
}

int
qcow2_l2_prepare (struct qcow2_image *img, uint64_t guest,
                  uint64_t *entry_offset)
{
  uint64_t l1i, in_table, l1e, l2;

  ASSERT_META_LOCKED (img);
  l2_position (img, guest, &l1i, &in_table);
  l1e = img->l1[l1i];
  l2 = l1e & L1E_OFFSET_MASK;
  if (l2 == 0) {
    /* A new, empty L2 table. */
    if (qcow2_alloc_clusters (img, 1, 0, NULL, &l2) == -1 ||
        qcow2_metamap_set (img, l2, img->hdr.cluster_size, META_L2) == -1 ||
        journal_add_zero (img->journal, l2, img->hdr.cluster_size) == -1 ||
        qcow2_refcount_set (img, l2, 1) == -1 ||
        qcow2_l1_set (img, l1i, l2 | QCOW_OFLAG_COPIED) == -1)
      return -1;
  }
  else if (!(l1e & QCOW_OFLAG_COPIED)) {
    if (copy_l2_table (img, l1i, l2) == -1)
      return -1;
    l2 = img->l1[l1i] & L1E_OFFSET_MASK;
  }
  *entry_offset = l2 + in_table;
  return 0;
}

int
qcow2_l2_set (struct qcow2_image *img, uint64_t entry_offset, uint64_t entry,
              uint64_t bitmap)
{
  const uint64_t words[2] = { entry, bitmap };

  /* Both halves of an extended entry change in one step: a reader never
   * sees the new entry with the old bitmap. */
  return qcow2_meta_set (img, entry_offset, words,
                         img->hdr.l2_entry_size / 8);
}
