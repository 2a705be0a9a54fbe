/* qcow2j lib: reading an image with a dirty journal without changing it
 * (docs/journal-format.md 11.5).
 *
 * A read-only open cannot replay the journal into the file, so it replays
 * it into memory: every record is applied, in journal order, to copies of
 * the 512-byte sectors it touches, kept in a hash table; the image then
 * reads its file through a hostio that returns the file's bytes patched
 * with those sectors.  Guest data is never in the journal, so only
 * metadata sectors are held.  A hostile journal could name a great many
 * sectors, or the same ones over and over: journal_scan refuses, before
 * any record reaches the overlay, a journal whose records touch more than
 * QJ_MAX_LIVE_SECTORS sectors in all (rule R6, the bound a writable
 * open's replay in place obeys too), so the overlay never holds more than
 * that many, nor spends more than that much copying.
 *
 * The overlay is built once, before any reader uses the image, and only
 * read afterwards: no lock is needed.
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "format.h"
#include "image-internal.h"
#include "journal-ext.h"
#include "journal-format.h"
#include "journal.h"
#include "log.h"
#include "minmax.h"
#include "state.h"
#include "tables.h"

#define SECTOR QJ_SECTOR

struct sector {
  uint64_t number;              /* file offset / SECTOR, + 1 (0: empty) */
  uint8_t *data;
};

struct overlay {
  struct hostio io;
  struct hostio *inner;
  struct sector *table;         /* open addressing, linear probing */
  size_t cap, used;             /* cap: a power of 2 */
  int error;                    /* a record could not be applied */
};

static size_t
slot_of (const struct overlay *ov, uint64_t number)
{
  return (number * 0x9e3779b97f4a7c15ULL >> 20) & (ov->cap - 1);
}

static struct sector *
find (const struct overlay *ov, uint64_t number)
{
  for (size_t i = slot_of (ov, number + 1); ov->cap;
       i = (i + 1) & (ov->cap - 1)) {
    if (ov->table[i].number == number + 1)
      return &ov->table[i];
    if (ov->table[i].number == 0)
      return NULL;
  }
  return NULL;
}

static int
grow (struct overlay *ov)
{
  size_t cap = ov->cap ? ov->cap * 2 : 1024;
  struct sector *table = calloc (cap, sizeof *table), *old = ov->table;
  size_t old_cap = ov->cap;

  if (table == NULL)
    return -1;
  ov->table = table;
  ov->cap = cap;
  for (size_t i = 0; i < old_cap; i++)
    if (old[i].number != 0) {
      size_t j = slot_of (ov, old[i].number);
      while (table[j].number != 0)
        j = (j + 1) & (cap - 1);
      table[j] = old[i];
    }
  free (old);
  return 0;
}

/* The overlay's copy of sector number, made on first use: from the file,
 * unless the caller is about to overwrite all of it (whole). */
static uint8_t *
sector_for_write (struct overlay *ov, uint64_t number, bool whole)
{
  struct sector *s = find (ov, number);
  size_t i;

  if (s)
    return s->data;
  /* Every sector copied was touched by a record that journal_scan
   * counted against the bound. */
  assert (ov->used < QJ_MAX_LIVE_SECTORS);
  if (ov->used * 2 >= ov->cap && grow (ov) == -1) {
    qerror ("calloc: %m");
    return NULL;
  }
  i = slot_of (ov, number + 1);
  while (ov->table[i].number != 0)
    i = (i + 1) & (ov->cap - 1);
  ov->table[i].data = malloc (SECTOR);
  if (ov->table[i].data == NULL) {
    qerror ("malloc: %m");
    return NULL;
  }
  if (!whole &&
      hostio_pread (ov->inner, ov->table[i].data, SECTOR,
                    number * SECTOR) == -1) {
    qerror ("%s: read: %m", ov->inner->name);
    free (ov->table[i].data);
    ov->table[i].data = NULL;
    return NULL;
  }
  ov->table[i].number = number + 1;
  ov->used++;
  return ov->table[i].data;
}

/* journal_apply_fn: one record's bytes (NULL: zeroes). */
static int
overlay_apply (void *opaque, uint64_t offset, const void *buf, uint64_t count)
{
  struct overlay *ov = opaque;

  while (count > 0) {
    uint64_t in = offset % SECTOR, n = MIN (count, SECTOR - in);
    uint8_t *s = sector_for_write (ov, offset / SECTOR, n == SECTOR);

    if (s == NULL)
      return -1;
    if (buf) {
      memcpy (s + in, buf, n);
      buf = (const uint8_t *) buf + n;
    }
    else
      memset (s + in, 0, n);
    offset += n;
    count -= n;
  }
  return 0;
}

static int
overlay_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  struct overlay *ov = (struct overlay *) io;
  uint8_t *p = buf;

  if (hostio_pread (ov->inner, buf, count, offset) == -1)
    return -1;
  if (ov->used == 0)
    return 0;
  for (uint64_t pos = offset; pos < offset + count; ) {
    uint64_t in = pos % SECTOR, n = MIN (offset + count - pos, SECTOR - in);
    const struct sector *s = find (ov, pos / SECTOR);

    if (s)
      memcpy (p + (pos - offset), s->data + in, n);
    pos += n;
  }
  return 0;
}

static int
overlay_read_only (void)
{
  errno = EROFS;
  return -1;
}

static int
overlay_pwrite (struct hostio *io, const void *buf, size_t count,
                uint64_t offset)
{
  return overlay_read_only ();
}

static int
overlay_flush (struct hostio *io)
{
  return 0;
}

static int
overlay_punch (struct hostio *io, uint64_t offset, uint64_t count)
{
  return overlay_read_only ();
}

static int
overlay_truncate (struct hostio *io, uint64_t size)
{
  return overlay_read_only ();
}

static int64_t
overlay_size (struct hostio *io)
{
  return hostio_size (((struct overlay *) io)->inner);
}

static int
overlay_block_status (struct hostio *io, uint64_t offset, uint64_t count,
                      bool *is_data, uint64_t *run)
{
  struct hostio *inner = ((struct overlay *) io)->inner;

  return inner->ops->block_status (inner, offset, count, is_data, run);
}

static int64_t
overlay_allocated (struct hostio *io)
{
  return hostio_allocated (((struct overlay *) io)->inner);
}

static void
overlay_close (struct hostio *io)
{
  struct overlay *ov = (struct overlay *) io;

  for (size_t i = 0; i < ov->cap; i++)
    free (ov->table[i].data);
  free (ov->table);
  hostio_close (ov->inner);
  free (ov);
}

static const struct hostio_ops overlay_ops = {
  .pread = overlay_pread, .pwrite = overlay_pwrite, .flush = overlay_flush,
  .punch = overlay_punch, .truncate = overlay_truncate,
  .size = overlay_size, .block_status = overlay_block_status,
  .allocated = overlay_allocated, .close = overlay_close,
};

int
qcow2_replay_in_memory (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->setup_lock);
  const struct qcow2_header *h = &img->hdr;
  struct journal_replay_stats st;
  struct overlay *ov;
  struct journal *j;

  /* Once journalled, the image replayed its journal in place. */
  if (!qcow2_journal_dirty (img) ||
      (qcow2_state (img) != SESSION_READ_ONLY &&
       qcow2_state (img) != SESSION_READY))
    return 0;
  if (qj_ext_check_replayable (img->file->name, h, img->file_size) == -1)
    return -1;
  ov = calloc (1, sizeof *ov);
  if (ov == NULL) {
    qerror ("calloc: %m");
    return -1;
  }
  ov->io.ops = &overlay_ops;
  ov->io.name = img->file->name;
  ov->inner = img->file;
  j = journal_open (img->file, h->journal.offset, h->journal.size,
                    h->journal.id, h->cluster_size);
  if (j == NULL || journal_scan (j, overlay_apply, ov, &st) == -1) {
    journal_free (j);
    ov->inner = NULL;
    overlay_close (&ov->io);
    return -1;
  }
  journal_free (j);

  /* Read the header and the L1 table again, through the overlay; DIRTY
   * stays set in the file, not in memory. */
  if (img->data == img->file)
    img->data = &ov->io;
  img->file = &ov->io;
  if (!qcow2_state_move (img, SESSION_READ_ONLY, SESSION_REPLAYED_IN_MEMORY))
    qcow2_state_move (img, SESSION_READY, SESSION_REPLAYED_IN_MEMORY);
  if (qcow2_reload_metadata (img) == -1)
    return -1;
  img->hdr.incompatible_features &= ~QJ_INCOMPAT_DIRTY;
  /* Host offsets up to the journal's file size read as zeroes. */
  if (st.min_file_size > img->file_size) {
    img->file_size = img->open_end = img->alloc_start = img->gap_end =
      st.min_file_size;
    if (img->data == img->file)
      img->data_size = img->file_size;
  }
  /* The journal stays live in the file: no entry may name it. */
  img->journal_start = img->hdr.journal.offset;
  img->journal_end = img->hdr.journal.offset + img->hdr.journal.size;
  qdebug ("%s: journal replayed in memory: %" PRIu64 " transactions, %"
          PRIu64 " records, %zu sectors", ov->inner->name, st.transactions,
          st.records, ov->used);
  return 0;
}
