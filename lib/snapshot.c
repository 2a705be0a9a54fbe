/* qcow2j lib: the internal snapshot table.
 *
 * The table is walked once, at open (and again after a replay changed the
 * header): every entry is validated and what qcow2j needs of it (where
 * its L1 table is) is kept in img->snapshots, so that no other code walks
 * the table.  qcow2j serves the active layer and leaves snapshot metadata
 * untouched.  The walk is bounded by QEMU's limits (65536 entries, 1 KiB
 * of extra data each, 64 MiB in all) so a hostile count cannot make the
 * open slow or large.
 */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "image-internal.h"
#include "log.h"
#include "minmax.h"
#include "snapshot.h"

#define SNAPSHOT_HEADER_SIZE 40

/* Which table that qcow2j changes in place (the active L1 table, the
 * refcount table) does [offset, offset+len) overlap, if any?  Snapshot
 * metadata there would be overwritten by the first write. */
static const char *
overlapped_table (const struct qcow2_header *h, uint64_t offset,
                  uint64_t len)
{
  uint64_t l1_end = h->l1_table_offset + (uint64_t) h->l1_size * 8;
  uint64_t rt_end = h->refcount_table_offset +
    (uint64_t) h->refcount_table_clusters * h->cluster_size;

  if (len == 0)
    return NULL;
  if (h->l1_size > 0 && offset < l1_end && h->l1_table_offset < offset + len)
    return "the L1 table";
  if (offset < rt_end && h->refcount_table_offset < offset + len)
    return "the refcount table";
  return NULL;
}

int
qcow2_snapshots_load (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;
  uint64_t pos = h->snapshots_offset;
  const char *what;

  free (img->snapshots);
  img->snapshots = NULL;
  img->snapshot_table_bytes = 0;
  if (h->nb_snapshots == 0)
    return 0;
  /* header.c bounded nb_snapshots by QEMU's limit. */
  img->snapshots = calloc (h->nb_snapshots, sizeof *img->snapshots);
  if (img->snapshots == NULL) {
    qerror ("calloc: %m");
    return -1;
  }

  for (uint32_t i = 0; i < h->nb_snapshots; i++) {
    uint8_t e[SNAPSHOT_HEADER_SIZE];
    uint64_t l1_offset, entry_len;
    uint32_t l1_size, extra;
    uint16_t id_len, name_len;

    if (pos - h->snapshots_offset > QCOW2_MAX_SNAPSHOTS_BYTES ||
        pos + SNAPSHOT_HEADER_SIZE > img->file_size) {
      qerror ("%s: snapshot table (snapshots_offset 0x%" PRIx64
              ", nb_snapshots %" PRIu32 "): entry %" PRIu32 " lies past the "
              "end of the file or the 64 MiB limit", img->file->name,
              h->snapshots_offset, h->nb_snapshots, i);
      errno = EINVAL;
      return -1;
    }
    if (hostio_pread (img->file, e, sizeof e, pos) == -1) {
      qerror ("%s: read snapshot table: %m", img->file->name);
      return -1;
    }
    memcpy (&l1_offset, e, 8);
    l1_offset = be64toh (l1_offset);
    memcpy (&l1_size, e + 8, 4);
    l1_size = be32toh (l1_size);
    memcpy (&id_len, e + 12, 2);
    id_len = be16toh (id_len);
    memcpy (&name_len, e + 14, 2);
    name_len = be16toh (name_len);
    memcpy (&extra, e + 36, 4);
    extra = be32toh (extra);

    if (extra > QCOW2_MAX_SNAPSHOT_EXTRA) {
      qerror ("%s: snapshot %" PRIu32 ": extra_data_size %" PRIu32
              " is too large (maximum %d)", img->file->name, i, extra,
              QCOW2_MAX_SNAPSHOT_EXTRA);
      errno = EINVAL;
      return -1;
    }
    if ((uint64_t) l1_size * 8 > QCOW2_MAX_L1_BYTES ||
        !IS_ALIGNED (l1_offset, h->cluster_size) ||
        (l1_size > 0 && (l1_offset < h->cluster_size ||
                         l1_offset > img->file_size ||
                         (uint64_t) l1_size * 8 >
                         img->file_size - l1_offset))) {
      qerror ("%s: snapshot %" PRIu32 ": L1 table (offset 0x%" PRIx64
              ", %" PRIu32 " entries) is misaligned, too large or outside "
              "the file", img->file->name, i, l1_offset, l1_size);
      errno = EINVAL;
      return -1;
    }
    if ((what = overlapped_table (h, l1_offset, (uint64_t) l1_size * 8))) {
      qerror ("%s: snapshot %" PRIu32 ": L1 table (offset 0x%" PRIx64
              ") overlaps %s", img->file->name, i, l1_offset, what);
      errno = EINVAL;
      return -1;
    }
    entry_len = SNAPSHOT_HEADER_SIZE + (uint64_t) extra + id_len + name_len;
    if (pos + entry_len > img->file_size) {
      qerror ("%s: snapshot %" PRIu32 ": entry (%" PRIu64 " bytes at 0x%"
              PRIx64 ") runs past the end of the file", img->file->name, i,
              entry_len, pos);
      errno = EINVAL;
      return -1;
    }
    img->snapshots[i].l1_offset = l1_offset;
    img->snapshots[i].l1_size = l1_size;
    pos += ROUND_UP (entry_len, 8);
  }
  if ((what = overlapped_table (h, h->snapshots_offset,
                                pos - h->snapshots_offset))) {
    qerror ("%s: snapshot table (snapshots_offset 0x%" PRIx64 ", %" PRIu64
            " bytes) overlaps %s", img->file->name, h->snapshots_offset,
            pos - h->snapshots_offset, what);
    errno = EINVAL;
    return -1;
  }
  img->snapshot_table_bytes = pos - h->snapshots_offset;
  return 0;
}
