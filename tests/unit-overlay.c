/* A dirty journal replayed in memory (lib/overlay.c).
 *
 * An image is written through lib (allocating writes, zeroes, a flush) and its bytes taken while the journal is still dirty, as a
 * killed server leaves them.  Opened read-only, qcow2_replay_in_memory
 * must make it read as the client wrote it, refuse writes, and leave
 * the file's bytes exactly as they were; a writable open of another copy
 * (the replay in place) must read the same.  Then a hostile journal whose
 * one transaction zeroes 300 MiB must be refused (EFBIG, bounded memory),
 * again without a byte of the file changing.
 */
#include <config.h>

#include <fcntl.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "create.h"
#include "header.h"
#include "image.h"
#include "journal.h"
#include "mem-io.h"
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

/* Hostile: one transaction zeroing 300 MiB past the end of the file. */
UNIT_CASE (huge_zero_refused)
{
  struct mem_io *m = copy_io (dirty, dirty_size);
  struct qcow2_header h;
  struct qcow2_image *img;
  struct journal *j;
  uint8_t *before;
  uint64_t seq, before_size;

  REQUIRE (qcow2_header_read (&m->io, m->size, &h) == 0);
  j = journal_create (&m->io, h.journal.offset, h.journal.size,
                      h.journal.id, h.cluster_size);
  REQUIRE (j != NULL);
  journal_begin (j);
  journal_need_file_size (j, 1024 * MiB);
  CHECK (journal_add_zero (j, 512 * MiB, 300 * MiB) == 0);
  journal_end (j);
  CHECK (journal_commit (j, &seq) == 0);
  journal_free (j);
  qcow2_header_free (&h);
  before_size = m->size;
  before = malloc (before_size);
  REQUIRE (before != NULL);
  memcpy (before, m->data, before_size);
  img = qcow2_open_hostio (&m->io, NULL, &ro);
  REQUIRE (img != NULL);
  CHECK (qcow2_journal_dirty (img));
  errno = 0;
  CHECK (qcow2_replay_in_memory (img) == -1 && errno == EFBIG);
  CHECK (qcow2_journal_dirty (img));
  CHECK (m->size == before_size && memcmp (m->data, before, before_size) == 0);
  qcow2_close (img);
  free (before);
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (dirty_on_disk),
  UNIT_ENTRY (replay_in_memory),
  UNIT_ENTRY (replay_in_place),
  UNIT_ENTRY (huge_zero_refused),
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
