/* A dirty journal replayed in memory (lib/overlay.c).
 *
 * An image is written through lib (allocating writes, zeroes, a flush) and its bytes taken while the journal is still dirty, as a
 * killed server leaves them.  Opened read-only, qcow2_replay_in_memory
 * must make it read as the client wrote it, refuse writes, and leave
 * the file's bytes exactly as they were; a writable open of another copy
 * (the replay in place) must read the same.  Then hostile journals of
 * many small transactions, each zeroing the same 1 MiB: 129 of them ask
 * for more than the replay work bound (docs/journal-format.md rule R6)
 * and must be refused, quickly, by a read-only open (EFBIG, before the
 * overlay holds a sector) and by a writable one, without a byte of the
 * file changing; 128 reach the bound and must be accepted by both.
 * Last, the writer's side: a workload that asks for more than the bound
 * in all must checkpoint on the way and leave a journal that replays.
 */
#include <config.h>

#include <fcntl.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "create.h"
#include "header.h"
#include "image.h"
#include "journal.h"
#include "journal-format.h"
#include "log.h"
#include "mem-io.h"
#include "run-shell.h"
#include "unit.h"

#define MiB (1ULL << 20)
#define DISK (16 * MiB)

static struct mem_io *
copy_io (const uint8_t *data, uint64_t size)
{
  struct mem_io *m = mem_io_new ("copy", size);

  REQUIRE (m != NULL);
  memcpy (m->data, data, size);
  return m;
}

static void
read_disk (struct qcow2_image *img, uint8_t *buf)
{
  CHECK (qcow2_pread (img, buf, DISK, 0) == 0);
}

static struct qcow2_open_options rw = { .writable = true };
static struct qcow2_open_options ro = { .writable = false };
static uint8_t *model, *got;    /* what the client wrote; a disk read */
static uint8_t *dirty;          /* the image file, its journal dirty */
static uint64_t dirty_size;

/* Writes, zeroes and trims, flushed: the journal holds them. */
static void
make_dirty (void)
{
  char path[] = "/tmp/qcow2j-overlay.XXXXXX";
  uint64_t seed = 12345;
  struct qcow2_image *img;
  struct mem_io *m;
  struct stat st;
  int fd;

  model = calloc (1, DISK);
  got = malloc (DISK);
  REQUIRE (model && got);
  fd = mkstemp (path);
  REQUIRE (fd >= 0);
  close (fd);
  CHECK (qcow2_create (path, DISK, 4096, false, false) == 0);
  fd = open (path, O_RDONLY);
  REQUIRE (fd >= 0 && fstat (fd, &st) == 0);
  m = mem_io_new ("image", st.st_size);
  CHECK (pread (fd, m->data, st.st_size, 0) == st.st_size);
  close (fd);
  unlink (path);

  img = qcow2_open_hostio (&m->io, NULL, &rw);
  REQUIRE (img != NULL && qcow2_make_writable (img) == 0);
  for (int i = 0; i < 200; i++) {
    uint64_t off, len;

    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    off = (seed >> 20) % (DISK / 512) * 512;
    len = 512 * (1 + (seed >> 8) % 64);
    if (off + len > DISK)
      len = DISK - off;
    if (i % 5 == 4) {
      CHECK (qcow2_zero (img, len, off, (seed & 1) != 0, false) == 0);
      memset (model + off, 0, len);
    }
    else {
      memset (model + off, i + 1, len);
      CHECK (qcow2_pwrite (img, model + off, len, off) == 0);
    }
  }
  CHECK (qcow2_flush (img) == 0);
  dirty_size = m->size;
  dirty = malloc (dirty_size);
  REQUIRE (dirty != NULL);
  memcpy (dirty, m->data, dirty_size);
  CHECK (qcow2_close (img) == 0);
}

/* The checkpoint thread never ran: the journal must be dirty on disk. */
UNIT_CASE (dirty_on_disk)
{
  struct mem_io *c = copy_io (dirty, dirty_size);
  struct qcow2_image *probe = qcow2_open_hostio (&c->io, NULL, &ro);

  REQUIRE (probe != NULL);
  CHECK (qcow2_journal_dirty (probe));
  qcow2_close (probe);
}

/* Read-only: replayed in memory, the file untouched. */
UNIT_CASE (replay_in_memory)
{
  struct mem_io *m = copy_io (dirty, dirty_size);
  struct qcow2_image *img = qcow2_open_hostio (&m->io, NULL, &ro);

  REQUIRE (img != NULL);
  CHECK (qcow2_journal_dirty (img));
  CHECK (qcow2_replay_in_memory (img) == 0);
  CHECK (!qcow2_journal_dirty (img));
  read_disk (img, got);
  CHECK (memcmp (got, model, DISK) == 0);
  CHECK (qcow2_pwrite (img, model, 512, 0) == -1);
  CHECK (m->size == dirty_size && memcmp (m->data, dirty, dirty_size) == 0);
  CHECK (qcow2_close (img) == 0);
}

/* Writable: replayed in place, the same disk. */
UNIT_CASE (replay_in_place)
{
  struct mem_io *m = copy_io (dirty, dirty_size);
  struct qcow2_image *img = qcow2_open_hostio (&m->io, NULL, &rw);

  REQUIRE (img != NULL);
  CHECK (qcow2_make_writable (img) == 0);
  read_disk (img, got);
  CHECK (memcmp (got, model, DISK) == 0);
  CHECK (qcow2_close (img) == 0);
}

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Error messages, kept (the first few) and printed. */
static char msgs[4096];

static void __attribute__ ((format (printf, 1, 0)))
capture (const char *fs, va_list args)
{
  size_t used = strlen (msgs);
  char msg[512];

  vsnprintf (msg, sizeof msg, fs, args);
  fprintf (stderr, "qcow2j: %s\n", msg);
  snprintf (msgs + used, sizeof msgs - used, "%s\n", msg);
}

/* A copy of the dirty image whose journal holds, instead of its own
 * transactions (replayed in place, DIRTY left set), ntx transactions that
 * each zero the same 1 MiB past the end of the file: 2048 sectors of
 * replay work each. */
static struct mem_io *
zero_chain (const uint8_t *bytes, uint64_t size, unsigned ntx)
{
  struct mem_io *m = copy_io (bytes, size);
  struct journal_replay_stats st;
  struct qcow2_header h;
  struct journal *j;
  const uint8_t *sb;
  uint64_t off, seq, tgt;

  REQUIRE (qcow2_header_read (&m->io, m->size, &h) == 0);
  j = journal_open (&m->io, h.journal.offset, h.journal.size,
                    h.journal.id, h.cluster_size);
  REQUIRE (j != NULL && journal_replay (j, &st) == 0 && st.transactions > 0);
  journal_free (j);
  /* The newest superblock now points just past what was replayed. */
  sb = m->data + h.journal.offset;
  if (get_be64 (sb + QJ_BLOCK + QJ_SB_OFF_GENERATION) >
      get_be64 (sb + QJ_SB_OFF_GENERATION))
    sb += QJ_BLOCK;
  off = h.journal.offset + get_be64 (sb + QJ_SB_OFF_HEAD);
  seq = get_be64 (sb + QJ_SB_OFF_HEAD_SEQ);
  tgt = (m->size + 2 * MiB) / MiB * MiB;
  for (unsigned k = 0; k < ntx; k++, off += QJ_BLOCK) {
    uint8_t *t = m->data + off;

    CHECK (off + QJ_BLOCK <= h.journal.offset + h.journal.size);
    memset (t, 0, QJ_BLOCK);
    memcpy (t + QJ_TX_OFF_MAGIC, QJ_TX_MAGIC, 4);
    put_be64 (t + QJ_TX_OFF_ID, h.journal.id);
    put_be64 (t + QJ_TX_OFF_SEQ, seq + k);
    put_be32 (t + QJ_TX_OFF_PAYLOAD, QJ_TX_HEADER + 24);
    put_be32 (t + QJ_TX_OFF_TOTAL, QJ_BLOCK);
    put_be32 (t + QJ_TX_OFF_NR_RECORDS, 1);
    put_be64 (t + QJ_TX_OFF_MIN_FILE, tgt + MiB);
    put_be16 (t + QJ_TX_HEADER, QJ_REC_ZERO);
    put_be32 (t + QJ_TX_HEADER + 4, 24);
    put_be64 (t + QJ_TX_HEADER + 8, tgt);
    put_be64 (t + QJ_TX_HEADER + 16, MiB);
    put_be32 (t + QJ_TX_OFF_CRC, crc32c (0, t, QJ_TX_HEADER + 24));
  }
  qcow2_header_free (&h);
  return m;
}

/* The writer keeps the live region within the bound (rule R6): 72 new
 * 2 MiB L2 tables (a ZERO of 4096 sectors each, 294 912 in all, more than
 * the bound) written and flushed with no checkpoint thread running: the
 * commits must checkpoint on the way (the head moves), every write
 * succeeds, and the journal a killed server would leave replays, in
 * memory and in place, to the disk as written. */
UNIT_CASE (writer_bound)
{
  const uint64_t span = 512ULL << 30;   /* what one 2 MiB L2 table maps */
  const unsigned ntables = 72;
  char path[] = "/tmp/qcow2j-overlay-bound.XXXXXX", copy[64];
  uint8_t sector[512], back[512], sb[2][QJ_SB_USED];
  struct qcow2_image *img, *w;
  struct qcow2_header h;
  struct hostio *io;
  int fd;

  fd = mkstemp (path);
  REQUIRE (fd >= 0);
  close (fd);
  snprintf (copy, sizeof copy, "%s.dirty", path);
  CHECK (qcow2_create (path, ntables * span, 2 * MiB, false, false) == 0);
  w = qcow2_open (path, &rw);
  REQUIRE (w != NULL && qcow2_make_writable (w) == 0);
  for (unsigned i = 0; i < ntables; i++) {
    memset (sector, i + 1, sizeof sector);
    CHECK (qcow2_pwrite (w, sector, sizeof sector, i * span) == 0);
  }
  CHECK (qcow2_flush (w) == 0);
  /* What a server killed now leaves: dirty, the head moved. */
  CHECK (run_shell ("cp --sparse=always %s %s", path, copy) == 0);
  CHECK (qcow2_close (w) == 0);
  io = hostio_file_open (copy, false);
  REQUIRE (io != NULL && qcow2_header_read (io, hostio_size (io), &h) == 0);
  CHECK (h.incompatible_features & QJ_INCOMPAT_DIRTY);
  CHECK (hostio_pread (io, sb[0], QJ_SB_USED, h.journal.offset) == 0 &&
         hostio_pread (io, sb[1], QJ_SB_USED,
                       h.journal.offset + QJ_BLOCK) == 0);
  CHECK (get_be64 (sb[0] + QJ_SB_OFF_HEAD_SEQ) > 1 ||
         get_be64 (sb[1] + QJ_SB_OFF_HEAD_SEQ) > 1);
  qcow2_header_free (&h);
  hostio_close (io);

  for (int writable = 0; writable <= 1; writable++) {
    img = qcow2_open (copy, writable ? &rw : &ro);
    REQUIRE (img != NULL && qcow2_journal_dirty (img));
    CHECK (writable ? qcow2_make_writable (img) == 0
           : qcow2_replay_in_memory (img) == 0);
    for (unsigned i = 0; i < ntables; i++) {
      memset (sector, i + 1, sizeof sector);
      CHECK (qcow2_pread (img, back, sizeof back, i * span) == 0);
      CHECK (memcmp (back, sector, sizeof back) == 0);
    }
    CHECK (qcow2_close (img) == 0);
  }
  unlink (copy);
  unlink (path);
  printf ("writer: %u new 2 MiB L2 tables, checkpointed on the way, "
          "replayed\n", ntables);
}

/* Hostile: past the bound, refused by both opens, the file unchanged. */
UNIT_CASE (bound_refused)
{
  qlog_set_handlers (capture, NULL);
  for (int writable = 0; writable <= 1; writable++) {
    struct mem_io *c = zero_chain (dirty, dirty_size, 129);
    uint8_t *before = malloc (c->size);
    uint64_t before_size = c->size;
    struct qcow2_image *img;
    double t;
    int r;

    REQUIRE (before != NULL);
    memcpy (before, c->data, c->size);
    img = qcow2_open_hostio (&c->io, NULL, writable ? &rw : &ro);
    REQUIRE (img != NULL);
    CHECK (qcow2_journal_dirty (img));
    msgs[0] = '\0';
    errno = 0;
    t = now ();
    r = writable ? qcow2_make_writable (img) : qcow2_replay_in_memory (img);
    t = now () - t;
    printf ("129 x 1 MiB ZERO, %s open: refused in %.3f s\n",
            writable ? "writable" : "read-only", t);
    CHECK (r == -1 && errno == EFBIG);
    CHECK (strstr (msgs, "ask replay for too much work: sectors written: "
                   "264192, more than the bound of 262144") != NULL);
    CHECK (qcow2_journal_dirty (img));
    CHECK (c->size == before_size &&
           memcmp (c->data, before, before_size) == 0);
    qcow2_close (img);
    free (before);
  }
}

/* At the bound: accepted by both, the disk as written. */
UNIT_CASE (bound_accepted)
{
  struct mem_io *m = zero_chain (dirty, dirty_size, 128);
  uint64_t size = m->size;
  uint8_t *bytes = malloc (size);
  struct qcow2_image *img;
  double t;

  REQUIRE (bytes != NULL);
  memcpy (bytes, m->data, size);
  img = qcow2_open_hostio (&m->io, NULL, &ro);
  REQUIRE (img != NULL);
  t = now ();
  CHECK (qcow2_replay_in_memory (img) == 0);
  printf ("128 x 1 MiB ZERO, read-only open: replayed in memory in "
          "%.3f s\n", now () - t);
  read_disk (img, got);
  CHECK (memcmp (got, model, DISK) == 0);
  CHECK (m->size == size && memcmp (m->data, bytes, size) == 0);
  CHECK (qcow2_close (img) == 0);
  m = copy_io (bytes, size);
  img = qcow2_open_hostio (&m->io, NULL, &rw);
  REQUIRE (img != NULL);
  CHECK (qcow2_make_writable (img) == 0);
  read_disk (img, got);
  CHECK (memcmp (got, model, DISK) == 0);
  CHECK (qcow2_close (img) == 0);
  free (bytes);
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (dirty_on_disk),
  UNIT_ENTRY (replay_in_memory),
  UNIT_ENTRY (replay_in_place),
  UNIT_ENTRY (bound_refused),
  UNIT_ENTRY (bound_accepted),
  UNIT_ENTRY (writer_bound),
};

int
main (int argc, char *argv[])
{
  UNIT_SELECT (argc, argv, cases);
  make_dirty ();
  UNIT_RUN (cases);
  free (dirty);
  free (model);
  free (got);
  return unit_status ();
}
