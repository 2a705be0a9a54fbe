/* qcow2j lib: the tables kept in memory: the active L1 table (read at
 * open: at most 32 MiB by QEMU's limit, 16 KiB for a 1 TiB image of
 * 64 KiB clusters, so opening is instant) and the refcount table (read
 * before the first change), and both read again with the header after a
 * replay changed them.  L2 tables and refcount blocks are not kept here:
 * the metadata cache holds slices of them on demand.
 */
#include <config.h>

#include <endian.h>
#include <stdlib.h>

#include "log.h"
#include "snapshot.h"
#include "tables.h"

int
qcow2_read_l1 (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;
  size_t bytes = (size_t) h->l1_size * 8;

  img->l1 = malloc (bytes ? bytes : 8);
  if (img->l1 == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  if (bytes > 0 &&
      hostio_pread (img->file, img->l1, bytes, h->l1_table_offset) == -1) {
    qerror ("%s: read L1 table: %m", img->file->name);
    return -1;
  }
  for (uint32_t i = 0; i < h->l1_size; i++)
    img->l1[i] = be64toh (img->l1[i]);
  return 0;
}

int
qcow2_refcounts_load (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;
  uint64_t bytes = (uint64_t) h->refcount_table_clusters * h->cluster_size;

  img->reftable = malloc (bytes);
  if (img->reftable == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  if (hostio_pread (img->file, img->reftable, bytes,
                    h->refcount_table_offset) == -1) {
    qerror ("%s: read refcount table: %m", img->file->name);
    return -1;
  }
  img->reftable_entries = bytes / 8;
  for (uint64_t i = 0; i < img->reftable_entries; i++)
    img->reftable[i] = be64toh (img->reftable[i]);
  img->refblock_entries = h->cluster_size * 8 >> h->refcount_order;
  return 0;
}

int
qcow2_reload_metadata (struct qcow2_image *img)
{
  struct qcow2_header h;
  int64_t size = hostio_size (img->file);
  bool refcounts = img->reftable != NULL;

  if (size == -1 || qcow2_header_read (img->file, size, &h) == -1)
    return -1;
  /* Reads before the replay may have cached tables it changed. */
  mcache_forget_owner (img->cache, img);
  qcow2_header_free (&img->hdr);
  img->hdr = h;
  img->file_size = img->open_end = img->alloc_start = img->gap_end = size;
  if (img->data == img->file)
    img->data_size = size;
  free (img->l1);
  img->l1 = NULL;
  free (img->reftable);
  img->reftable = NULL;
  if (qcow2_snapshots_load (img) == -1 || qcow2_read_l1 (img) == -1)
    return -1;
  return refcounts ? qcow2_refcounts_load (img) : 0;
}
