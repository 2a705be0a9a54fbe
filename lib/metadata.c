/* qcow2j lib: journalled changes to the metadata in the image file.
 *
 * Every change to an L1, L2 or refcount table or to a header word goes
 * through qcow2_meta_set64: the new value goes into the metadata cache's
 * live bytes (which every later read sees) and, as an absolute value,
 * into the journal's open transaction.  Nothing is written in place here:
 * the checkpoint does that from the committed state (rule R1).
 *
 * Callers hold img->meta_lock and bracket each consistent change with
 * journal_begin/journal_end, so that a transaction never holds half of
 * one (an allocation without the entry that uses it, say).
 */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "format.h"
#include "image-internal.h"
#include "log.h"
#include "map.h"
#include "minmax.h"

int
qcow2_meta_read64 (struct qcow2_image *img, uint64_t offset, uint64_t *value)
{
  uint64_t slice = ROUND_DOWN (offset, (uint64_t) img->slice_size);
  uint64_t be;

  if (mcache_read (img->cache, img->file, img, slice, img->slice_size,
                   offset - slice, 8, &be) == -1) {
    qerror ("%s: read metadata at 0x%" PRIx64 ": %m", img->file->name,
            offset);
    return -1;
  }
  *value = be64toh (be);
  return 0;
}

int
qcow2_meta_set64 (struct qcow2_image *img, uint64_t offset, uint64_t value,
                  bool fresh)
{
  uint64_t slice = ROUND_DOWN (offset, (uint64_t) img->slice_size);
  uint64_t be = htobe64 (value);

  if (mcache_write (img->cache, img->file, img, slice, img->slice_size,
                    offset - slice, 8, &be, fresh) == -1) {
    qerror ("%s: change metadata at 0x%" PRIx64 ": %m", img->file->name,
            offset);
    return -1;
  }
  return journal_add_set64 (img->journal, offset, value);
}

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

static int
set_l1 (struct qcow2_image *img, uint64_t l1i, uint64_t value)
{
  if (qcow2_meta_set64 (img, img->hdr.l1_table_offset + 8 * l1i, value,
                        false) == -1)
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
  uint64_t new;

  if (table == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  for (uint64_t i = 0; i < h->cluster_size / 8; i++)
    if (qcow2_meta_read64 (img, old + 8 * i, &table[i]) == -1)
      return -1;
  for (uint64_t i = 0; i < h->cluster_size / 8; i += words) {
    uint64_t e = table[i], host = e & L2E_OFFSET_MASK, rc;

    if (e & QCOW_OFLAG_COMPRESSED || host == 0)
      continue;
    if (qcow2_refcount_get (img, host, &rc) == -1)
      return -1;
    e = rc == 1 ? e | QCOW_OFLAG_COPIED : e & ~QCOW_OFLAG_COPIED;
    table[i] = e;
  }
  for (uint64_t i = 0; i < h->cluster_size / 8; i++)
    table[i] = htobe64 (table[i]);

  /* The copy goes to a new cluster outside the journal: it must be
   * durable before the transaction that links it. */
  if (qcow2_alloc_reserve (img, 1, &new) == -1)
    return -1;
  if (hostio_pwrite (img->file, table, h->cluster_size, new) == -1) {
    qerror ("%s: write L2 table copy at 0x%" PRIx64 ": %m",
            img->file->name, new);
    return -1;
  }
  journal_need_ordering (img->journal);
  if (qcow2_refcount_set (img, new, 1) == -1 ||
      set_l1 (img, l1i, new | QCOW_OFLAG_COPIED) == -1 ||
      qcow2_cluster_unref (img, old) == -1)
    return -1;
  return 0;
}

int
qcow2_l2_prepare (struct qcow2_image *img, uint64_t guest,
                  uint64_t *entry_offset)
{
  uint64_t l1i, in_table, l1e, l2;

  l2_position (img, guest, &l1i, &in_table);
  l1e = img->l1[l1i];
  l2 = l1e & L1E_OFFSET_MASK;
  if (l2 == 0) {
    /* A new, empty L2 table. */
    if (qcow2_alloc_reserve (img, 1, &l2) == -1 ||
        journal_add_zero (img->journal, l2, img->hdr.cluster_size) == -1 ||
        qcow2_refcount_set (img, l2, 1) == -1 ||
        set_l1 (img, l1i, l2 | QCOW_OFLAG_COPIED) == -1)
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
  uint64_t slice = ROUND_DOWN (entry_offset, (uint64_t) img->slice_size);
  uint64_t be[2] = { htobe64 (entry), htobe64 (bitmap) };
  unsigned len = img->hdr.l2_entry_size;

  /* Both halves of an extended entry change in one step: a reader never
   * sees the new entry with the old bitmap. */
  if (mcache_write (img->cache, img->file, img, slice, img->slice_size,
                    entry_offset - slice, len, be, false) == -1) {
    qerror ("%s: change metadata at 0x%" PRIx64 ": %m", img->file->name,
            entry_offset);
    return -1;
  }
  if (journal_add_set64 (img->journal, entry_offset, entry) == -1 ||
      (len == 16 &&
       journal_add_set64 (img->journal, entry_offset + 8, bitmap) == -1))
    return -1;
  return 0;
}
