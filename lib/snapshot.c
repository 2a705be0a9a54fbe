/* qcow2j lib: the internal snapshot table.
 *
 * The table is walked once, at open (and again after a replay changed the
 * header): every entry is validated and what qcow2j needs of it (where
 * its L1 table is, its disk size, its id and name) is kept in
 * img->snapshots, so that no other code walks the table.  qcow2j serves
 * the active layer, or one snapshot read-only (qcow2_load_snapshot, which
 * looks it up here), and never changes snapshot metadata.  The walk is
 * bounded by QEMU's limits (65536 entries, 1 KiB of extra data each,
 * 64 MiB in all) so a hostile count cannot make the open slow or large.
 */
#include <config.h>

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "format.h"
#include "image-internal.h"
#include "log.h"
#include "minmax.h"
#include "snapshot.h"

#define SNAPSHOT_HEADER_SIZE 40
/* The extra data holds the snapshot's disk size in bytes 8-15; without
 * them the disk size is the image's (as QEMU reads it). */
#define SNAPSHOT_EXTRA_DISK_SIZE 8

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

void
qcow2_snapshots_free (struct qcow2_image *img)
{
  for (uint32_t i = 0; i < img->snapshots_filled; i++) {
    free (img->snapshots[i].id);
    free (img->snapshots[i].name);
  }
  free (img->snapshots);
  img->snapshots = NULL;
  img->snapshots_filled = 0;
}

/* Fill sn's disk size, id and name from the rest of the entry at pos:
 * extra bytes of extra data, then the id and the name strings. */
static int
entry_tail (struct qcow2_image *img, uint32_t i, uint64_t pos,
            uint32_t extra, uint16_t id_len, uint16_t name_len,
            struct qcow2_snapshot *sn)
{
  const size_t len = (size_t) extra + id_len + name_len;
  uint8_t *tail = malloc (len ? len : 1);

  if (tail == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  if (hostio_pread (img->file, tail, len, pos + SNAPSHOT_HEADER_SIZE) == -1) {
    qerror ("%s: read snapshot %" PRIu32 ": %m", img->file->name, i);
    free (tail);
    return -1;
  }
  sn->disk_size = extra >= SNAPSHOT_EXTRA_DISK_SIZE + 8 ?
    get_be64 (tail + SNAPSHOT_EXTRA_DISK_SIZE) : img->hdr.size;
  /* As QEMU: the strings end at the first NUL, if any. */
  sn->id = strndup ((char *) tail + extra, id_len);
  sn->name = strndup ((char *) tail + extra + id_len, name_len);
  free (tail);
  if (sn->id == NULL || sn->name == NULL) {
    qerror ("strndup: %m");
    return -1;
  }
  return 0;
}

int
qcow2_snapshots_load (struct qcow2_image *img)
{
  const struct qcow2_header *h = &img->hdr;
  uint64_t pos = h->snapshots_offset;
  const char *what;

  qcow2_snapshots_free (img);
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
    img->snapshots_filled = i + 1;
    if (entry_tail (img, i, pos, extra, id_len, name_len,
                    &img->snapshots[i]) == -1)
      return -1;
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

static bool
matches (const struct qcow2_snapshot *sn, const char *id, const char *name)
{
  return (id == NULL || strcmp (sn->id, id) == 0) &&
    (name == NULL || strcmp (sn->name, name) == 0);
}

static const struct qcow2_snapshot *
find (const struct qcow2_image *img, const char *id, const char *name)
{
  for (uint32_t i = 0; i < img->hdr.nb_snapshots; i++)
    if (matches (&img->snapshots[i], id, name))
      return &img->snapshots[i];
  return NULL;
}

/* Append s to the message buf (len bytes, used so far), at most max bytes
 * of it: it comes from the file, so control characters become '?'. */
static void
append (char *buf, size_t len, size_t *used, const char *s, size_t max)
{
  size_t n = strnlen (s, max);

  for (size_t k = 0; k < n && *used + 1 < len; k++)
    buf[(*used)++] = (unsigned char) s[k] < 0x20 || s[k] == 0x7f ? '?' : s[k];
  if (s[n] != '\0')
    append (buf, len, used, "...", 3);
  buf[*used] = '\0';
}

/* "it has id 1 's1', id 2 's2'": the snapshots the image has, for a
 * message. */
static void
list_snapshots (const struct qcow2_image *img, char *buf, size_t len)
{
  const size_t room = len - 32;      /* for the "... (N in all)" */
  size_t used = 0;
  uint32_t i;

  if (img->hdr.nb_snapshots == 0) {
    snprintf (buf, len, "it has no snapshots");
    return;
  }
  for (i = 0; i < img->hdr.nb_snapshots && used + 1 < room; i++) {
    append (buf, room, &used, i ? ", id " : "it has id ", 10);
    append (buf, room, &used, img->snapshots[i].id, 32);
    append (buf, room, &used, " '", 2);
    append (buf, room, &used, img->snapshots[i].name, 64);
    append (buf, room, &used, "'", 1);
  }
  if (i < img->hdr.nb_snapshots)
    snprintf (buf + used, len - used, "... (%" PRIu32 " in all)",
              img->hdr.nb_snapshots);
}

const struct qcow2_snapshot *
qcow2_snapshot_find (const struct qcow2_image *img,
                     const struct qcow2_snapshot_choice *which)
{
  const struct qcow2_snapshot *sn;
  char asked[256], has[1024];

  if (which->id_or_name) {
    sn = find (img, which->id_or_name, NULL);
    if (sn == NULL)
      sn = find (img, NULL, which->id_or_name);
    if (sn)
      return sn;
    snprintf (asked, sizeof asked, "id or name '%s'", which->id_or_name);
  }
  else {
    assert (which->id || which->name);
    sn = find (img, which->id, which->name);
    if (sn)
      return sn;
    if (which->id && which->name)
      snprintf (asked, sizeof asked, "id '%s' and name '%s'", which->id,
                which->name);
    else if (which->id)
      snprintf (asked, sizeof asked, "id '%s'", which->id);
    else
      snprintf (asked, sizeof asked, "name '%s'", which->name);
  }
  list_snapshots (img, has, sizeof has);
  qerror ("%s: snapshot %s: no such internal snapshot: %s",
          img->file->name, asked, has);
  errno = ENOENT;
  return NULL;
}
