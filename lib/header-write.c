/* qcow2j lib: cluster 0 changed in place, outside the journal: the
 * feature words, and the Q2JL extension and a feature name table naming
 * our bits, added without ever rewriting the header cluster
 * (docs/journal-format.md 3.3 and 12.1 O4).
 *
 * These writes are not journalled because the journal's validity depends
 * on them (the extension locates it, the bits say whether it is to be
 * trusted); the spec orders each of them against the journal's own
 * writes, and every one is a single-sector write or made harmless by the
 * state of the bits when it lands.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "format.h"
#include "header-write.h"
#include "journal-ext.h"
#include "log.h"

/* What QEMU's tools print when they refuse a dirty image: the way out
 * (at most 46 bytes). */
#define QJ_DIRTY_NAME "qcow2j journal dirty: serve with nbdkit qcow2j"
#define QJ_VALID_NAME "qcow2j journal valid"
/* Q2JL, a feature name table of our two entries, an end marker. */
#define MAX_ADDITIONS (8 + QJ_EXT_LENGTH + 8 + 2 * 48 + 8)

/* Write len bytes at offset of cluster 0, then flush if asked. */
static int
write_bytes (struct qcow2_image *img, const void *buf, size_t len,
             uint64_t offset, bool flush)
{
  if (hostio_pwrite (img->file, buf, len, offset) == -1 ||
      (flush && hostio_flush (img->file) == -1)) {
    qerror ("%s: write header at %" PRIu64 ": %m", img->file->name, offset);
    return -1;
  }
  return 0;
}

/* The same, durably. */
static int
write_durably (struct qcow2_image *img, const void *buf, size_t len,
               uint64_t offset)
{
  return write_bytes (img, buf, len, offset, true);
}

/* Does the (last) feature name table name our two bits? */
static bool
names_our_bits (const struct qcow2_header *h)
{
  const char *dirty = qcow2_feature_name (h, 0, 60);
  const char *valid = qcow2_feature_name (h, 2, 60);

  return dirty && strcmp (dirty, QJ_DIRTY_NAME) == 0 &&
    valid && strcmp (valid, QJ_VALID_NAME) == 0;
}

/* Our bits' entries, as the feature name table in memory. */
static int
remember_our_names (struct qcow2_header *h)
{
  struct qcow2_feature_name *f = calloc (2, sizeof *f);

  if (f == NULL) {
    qerror ("calloc: %m");
    return -1;
  }
  f[0].type = 0;
  f[0].bit = 60;
  strcpy (f[0].name, QJ_DIRTY_NAME);
  f[1].type = 2;
  f[1].bit = 60;
  strcpy (f[1].name, QJ_VALID_NAME);
  free (h->feature_names);
  h->feature_names = f;
  h->nr_feature_names = 2;
  return 0;
}

/* The extensions to add after the last one: Q2JL (data bytes data) if
 * the header lacks it, our feature names if asked, and an end marker.
 * Returns their length (0: nothing to add), and where the Q2JL data
 * bytes will be. */
static size_t
build_additions (const struct qcow2_header *h, const uint8_t *data,
                 bool names, uint8_t *add, uint64_t *journal_pos)
{
  size_t n = 0;

  memset (add, 0, MAX_ADDITIONS);
  if (!h->journal.present) {
    put_be32 (add, QJ_EXT_MAGIC);
    put_be32 (add + 4, QJ_EXT_LENGTH);
    memcpy (add + 8, data, QJ_EXT_LENGTH);
    *journal_pos = h->extensions_end + 8;
    n = 8 + QJ_EXT_LENGTH;
  }
  if (names) {
    put_be32 (add + n, QCOW2_EXT_FEATURE_NAMES);
    put_be32 (add + n + 4, 2 * 48);
    add[n + 8] = 0;                             /* incompatible */
    add[n + 9] = 60;
    memcpy (add + n + 10, QJ_DIRTY_NAME, strlen (QJ_DIRTY_NAME));
    add[n + 56] = 2;                            /* autoclear */
    add[n + 57] = 60;
    memcpy (add + n + 58, QJ_VALID_NAME, strlen (QJ_VALID_NAME));
    n += 8 + 2 * 48;
  }
  return n ? n + 8 : 0;                         /* the new end marker */
}

/* Do n bytes fit at the end of the extension area, the backing file name
 * staying where it is (*name_pos = 0) or moving to the end of the
 * cluster (*name_pos), where the old name and the new extensions leave
 * room for it? */
static bool
room_for (const struct qcow2_header *h, uint64_t n, uint64_t *name_pos)
{
  const uint64_t end = h->extensions_end;
  const uint64_t len = h->backing_file_size;

  *name_pos = 0;
  if (h->backing_file == NULL)
    return end + n <= h->cluster_size;
  if (end + n <= h->backing_file_offset)
    return true;
  /* Without an end marker the extensions run into the name: moving it
   * would let readers parse the old name as extensions. */
  if (!h->has_end_marker)
    return false;
  *name_pos = (h->cluster_size - len) & ~(uint64_t) 7;
  return *name_pos >= end + n && *name_pos >= h->backing_file_offset + len;
}

/* Do the header, its extensions, n bytes more and the backing file name
 * (before and after) all lie in the first sector? */
static bool
fits_first_sector (const struct qcow2_header *h, uint64_t n)
{
  const uint64_t len = h->backing_file ? h->backing_file_size : 0;

  return h->extensions_end + n + len <= 512 &&
    (len == 0 || h->backing_file_offset + len <= 512);
}

/* When the backing file name would have to move over itself (small
 * clusters), but everything stays in the first sector: build that sector
 * with the additions and the name after them, and write it at once (a
 * sector is written whole or not at all, M3). */
static int
rewrite_first_sector (struct qcow2_image *img, const uint8_t *add, size_t n)
{
  struct qcow2_header *h = &img->hdr;
  const uint64_t end = h->extensions_end;
  const uint64_t len = h->backing_file ? h->backing_file_size : 0;
  uint8_t sector[512];

  if (!fits_first_sector (h, n)) {
    qerror ("%s: no room in the header cluster for the journal extension",
            img->file->name);
    errno = ENOSPC;
    return -1;
  }
  if (hostio_pread (img->file, sector, sizeof sector, 0) == -1) {
    qerror ("%s: read header: %m", img->file->name);
    return -1;
  }
  memcpy (sector + end, add, n);
  if (len > 0) {
    memcpy (sector + end + n, h->backing_file, len);
    put_be64 (sector + QCOW2_OFF_BACKING_FILE_OFFSET, end + n);
  }
  if (write_durably (img, sector, sizeof sector, 0) == -1)
    return -1;
  if (len > 0)
    h->backing_file_offset = end + n;
  return 0;
}

bool
qcow2_header_has_room (const struct qcow2_header *h)
{
  uint8_t data[QJ_EXT_LENGTH] = { 0 };
  uint8_t add[MAX_ADDITIONS];
  uint64_t journal_pos, name_pos;
  size_t n = build_additions (h, data, false, add, &journal_pos);

  return n == 0 || room_for (h, n, &name_pos) || fits_first_sector (h, n);
}

/* Put the journal's location in the Q2JL extension (docs/journal-format.md
 * 12.1, O4 and O6), adding the extension, and a feature name table naming
 * our bits, if the header lacks them.
 *
 * Cluster 0 is never rewritten: a write of several sectors can be torn,
 * and a torn header cluster (extensions of two layouts, a backing file
 * name half moved) is an image nobody can open.  What is added goes after
 * the last extension, into bytes no reader uses, and becomes part of the
 * header only through single-sector "switch" writes, each after a flush:
 *
 * 1. if the backing file name is in the way, a copy of it at the end of
 *    the cluster, then the backing_file_offset word pointing to it;
 * 2. the new extensions but their first 8 bytes, and a new end marker;
 * 3. those first 8 bytes over the old end marker.
 *
 * A crash leaves the old header or the new one.  An existing Q2JL only has
 * its data bytes rewritten in place: DIRTY is clear, so a torn result only
 * makes the (empty) journal untrusted (3.3). */
int
qcow2_header_write_journal_ext (struct qcow2_image *img, uint64_t joffset,
                                uint64_t jsize, uint64_t jid)
{
  struct qcow2_header *h = &img->hdr;
  const uint64_t end = h->extensions_end;
  uint8_t data[QJ_EXT_LENGTH];
  uint8_t add[MAX_ADDITIONS];
  uint64_t journal_pos = h->journal.pos, name_pos;
  bool add_names = !names_our_bits (h);
  size_t n;

  qj_ext_encode (data, joffset, jsize, jid);
  if (h->journal.present &&
      write_durably (img, data, sizeof data, journal_pos) == -1)
    return -1;
  if (h->journal.present && !add_names)
    return 0;

  /* Without the names if they do not fit (small clusters): QEMU then
   * calls the dirty bit "Unknown incompatible feature". */
  n = build_additions (h, data, add_names, add, &journal_pos);
  if (add_names && !room_for (h, n, &name_pos) &&
      !fits_first_sector (h, n)) {
    add_names = false;
    n = build_additions (h, data, false, add, &journal_pos);
  }
  if (n == 0)
    return 0;
  if (!room_for (h, n, &name_pos)) {
    if (rewrite_first_sector (img, add, n) == -1)
      return -1;
  }
  else {
    /* 1. Move the backing file name out of the way. */
    if (name_pos != 0) {
      uint8_t word[8];

      put_be64 (word, name_pos);
      if (write_durably (img, h->backing_file, h->backing_file_size,
                         name_pos) == -1 ||
          write_durably (img, word, 8, QCOW2_OFF_BACKING_FILE_OFFSET) == -1)
        return -1;
      h->backing_file_offset = name_pos;
    }
    /* 2 and 3. */
    if (write_durably (img, add + 8, n - 8, end + 8) == -1 ||
        write_durably (img, add, 8, end) == -1)
      return -1;
  }
  h->extensions_end = end + n - 8;
  h->has_end_marker = true;
  h->journal.present = true;
  h->journal.pos = journal_pos;
  return add_names ? remember_our_names (h) : 0;
}


int
qcow2_header_write_word (struct qcow2_image *img, uint64_t offset,
                         uint64_t value, bool flush)
{
  uint8_t b[8];

  put_be64 (b, value);
  return write_bytes (img, b, 8, offset, flush);
}

int
qcow2_header_release_journal_ext (struct qcow2_image *img, bool hint)
{
  const struct qcow2_journal_ext *e = &img->hdr.journal;
  uint8_t d[QJ_EXT_LENGTH];

  if (hint)
    qj_ext_encode (d, e->offset, e->size, 0);
  else
    memset (d, 0, sizeof d);
  return write_durably (img, d, sizeof d, e->pos);
}
