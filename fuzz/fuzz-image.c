/* qcow2j: libFuzzer harness over lib/ (image open, metadata reads,
 * journal replay and writes on mutated images).
 *
 * The input is the image file itself (at most MAX_INPUT bytes), held by
 * an in-memory hostio.  Each run:
 *
 * 1. opens it read-only (replaying a dirty journal in memory) and reads
 *    it: extents over the whole disk, reads of a few chunks spread across
 *    it and at input-derived places (each chunk's zero extents must read
 *    as zeroes), the description; a write must fail, and the file must
 *    never be written;
 * 2. opens a copy writable, runs qcow2_make_writable (replaying a dirty
 *    journal, rebuilding stale refcounts), then a few writes, zeroes,
 *    trims, reads and flushes derived from the input's last bytes, and
 *    closes it;
 * 3. after a clean close, reopens the result read-only: it must open
 *    (lib wrote it) with no dirty journal, and reads; and checks two
 *    oracles: every byte the requests of pass 2 wrote or zeroed (in the
 *    first WRITE_WINDOW bytes of the disk) reads back as written, and no
 *    sector of the image's metadata (header, L1 and L2 tables, refcount
 *    table and blocks, found by a walk of the file written here, not by
 *    lib) starts with the tag every written guest sector starts with: a
 *    guest write never lands on metadata;
 * 4. replays the copy taken after the last flush, as if the power had
 *    been cut there, and closes that.
 *
 * Work is bounded: the host file cannot grow past MAX_FILE (writes past
 * it fail with ENOSPC), the L2 cache is small, reads and writes touch at
 * most a few hundred KiB.  Set QCOW2J_FUZZ_VERBOSE=1 to see lib's error
 * messages (silenced otherwise).
 *
 * Build and run: fuzz/run.sh SECONDS.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hostio.h"
#include "image.h"
#include "log.h"

#define MAX_INPUT ((size_t) 4 << 20)
#define MAX_FILE ((uint64_t) 64 << 20)
#define L2_CACHE_BYTES ((uint64_t) 256 << 10)
#define READ_CHUNK ((uint64_t) 64 << 10)
#define MAX_WRITE ((uint64_t) 192 << 10)
#define WRITE_WINDOW ((uint64_t) 16 << 20)
#define MAX_OPS 8
#define MAX_EXTENTS 256         /* recorded per chunk for the zero check */

/* Failing checks of the harness's own oracles. */
#define FUZZ_ASSERT(expr)                                               \
  do {                                                                  \
    if (!(expr)) {                                                      \
      fprintf (stderr, "fuzz-image.c:%d: check failed: %s\n",           \
               __LINE__, #expr);                                        \
      abort ();                                                         \
    }                                                                   \
  } while (0)

/* The in-memory host file --------------------------------------------- */

static bool verbose;

/* With QCOW2J_FUZZ_VERBOSE, say what the harness does. */
static void __attribute__ ((format (printf, 1, 2)))
trace (const char *fs, ...)
{
  va_list args;

  if (!verbose)
    return;
  va_start (args, fs);
  fprintf (stderr, "fuzz: ");
  vfprintf (stderr, fs, args);
  fputc ('\n', stderr);
  va_end (args);
}


struct fz_io {
  struct hostio io;
  uint8_t *data;                /* MAX_FILE bytes from buf_get */
  uint64_t size;
  bool read_only;               /* any change is a bug (abort) */
  bool closed;                  /* lib closed it; the harness frees it */
};

static int
fz_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  struct fz_io *m = (struct fz_io *) io;
  uint64_t avail = offset < m->size ? m->size - offset : 0;

  FUZZ_ASSERT (!m->closed);
  if (avail > count)
    avail = count;
  if (avail)
    memcpy (buf, m->data + offset, avail);
  memset ((uint8_t *) buf + avail, 0, count - avail);
  return 0;
}

/* File buffers: MAX_FILE bytes of address space each, reused from run
 * to run (mapping and zeroing megabytes of fresh pages every run would
 * cost more than the runs themselves).  A run has at most four files. */
#define POOL 4
static uint8_t *pool[POOL];
static unsigned pool_n;

static uint8_t *
buf_get (void)
{
  void *p;

  if (pool_n > 0)
    return pool[--pool_n];
  p = mmap (NULL, MAX_FILE, PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    abort ();
  return p;
}

static void
buf_put (uint8_t *p)
{
  if (p == NULL)
    return;
  if (pool_n < POOL)
    pool[pool_n++] = p;
  else
    munmap (p, MAX_FILE);
}

/* Make the file size bytes long at least (new bytes zero). */
static int
fz_grow (struct fz_io *m, uint64_t size)
{
  if (size > MAX_FILE) {
    errno = ENOSPC;
    return -1;
  }
  if (size > m->size) {
    memset (m->data + m->size, 0, size - m->size);
    m->size = size;
  }
  return 0;
}

/* The file may be written there (else the run fails), and it has room:
 * space past MAX_FILE cannot be had (ENOSPC). */
static int
fz_room (struct fz_io *m, uint64_t offset, uint64_t count)
{
  FUZZ_ASSERT (!m->closed);
  FUZZ_ASSERT (!m->read_only);
  if (offset > MAX_FILE || count > MAX_FILE - offset) {
    errno = ENOSPC;
    return -1;
  }
  return 0;
}

static int
fz_pwrite (struct hostio *io, const void *buf, size_t count, uint64_t offset)
{
  struct fz_io *m = (struct fz_io *) io;

  if (fz_room (m, offset, count) == -1)
    return -1;
  if (fz_grow (m, offset + count) == -1)
    return -1;
  memcpy (m->data + offset, buf, count);
  return 0;
}

static int
fz_flush (struct hostio *io)
{
  struct fz_io *m = (struct fz_io *) io;

  FUZZ_ASSERT (!m->closed);
  return 0;
}

static int
fz_punch (struct hostio *io, uint64_t offset, uint64_t count)
{
  struct fz_io *m = (struct fz_io *) io;

  FUZZ_ASSERT (!m->closed);
  FUZZ_ASSERT (!m->read_only);
  trace ("host punch 0x%" PRIx64 "+0x%" PRIx64, offset, count);
  if (offset < m->size) {
    if (count > m->size - offset)
      count = m->size - offset;
    memset (m->data + offset, 0, count);
  }
  return 0;
}

static int
fz_truncate (struct hostio *io, uint64_t size)
{
  struct fz_io *m = (struct fz_io *) io;

  FUZZ_ASSERT (!m->closed);
  FUZZ_ASSERT (!m->read_only);
  if (size > MAX_FILE) {
    errno = EFBIG;
    return -1;
  }
  if (size < m->size)
    m->size = size;
  return fz_grow (m, size);
}

/* The library's ENOSPC paths run past MAX_FILE. */
static int
fz_reserve (struct hostio *io, uint64_t offset, uint64_t count)
{
  return fz_room ((struct fz_io *) io, offset, count);
}

static int64_t
fz_size (struct hostio *io)
{
  struct fz_io *m = (struct fz_io *) io;

  FUZZ_ASSERT (!m->closed);
  return m->size;
}

static int
fz_block_status (struct hostio *io, uint64_t offset, uint64_t count,
                 bool *is_data, uint64_t *run)
{
  struct fz_io *m = (struct fz_io *) io;

  FUZZ_ASSERT (!m->closed);
  FUZZ_ASSERT (count > 0);
  *is_data = true;
  *run = count;
  return 0;
}

static void
fz_close (struct hostio *io)
{
  struct fz_io *m = (struct fz_io *) io;

  FUZZ_ASSERT (!m->closed);
  m->closed = true;
}

static const struct hostio_ops fz_ops = {
  .pread = fz_pread, .pwrite = fz_pwrite, .flush = fz_flush,
  .punch = fz_punch, .truncate = fz_truncate, .reserve = fz_reserve,
  .size = fz_size, .block_status = fz_block_status, .close = fz_close,
};

static struct fz_io *
fz_new (const uint8_t *data, size_t size, bool read_only)
{
  struct fz_io *m = calloc (1, sizeof *m);

  if (m == NULL)
    abort ();
  m->io.ops = &fz_ops;
  m->io.name = strdup ("fuzz.qcow2");
  m->data = buf_get ();
  if (m->io.name == NULL || size > MAX_FILE)
    abort ();
  memcpy (m->data, data, size);
  m->size = size;
  m->read_only = read_only;
  return m;
}

/* Free a hostio that lib has closed. */
static void
fz_free (struct fz_io *m)
{
  FUZZ_ASSERT (m->closed);
  buf_put (m->data);
  free (m->io.name);
  free (m);
}

/* Deterministic choices, from the input's last bytes ------------------ */

static uint64_t
next (uint64_t *s)
{
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t
below (uint64_t *s, uint64_t n)
{
  return n ? next (s) % n : 0;
}

static uint64_t
seed_of (const uint8_t *data, size_t size)
{
  size_t n = size < 16 ? size : 16;
  uint64_t h = 0xcbf29ce484222325ULL;

  for (size_t i = size - n; i < size; i++)
    h = (h ^ data[i]) * 0x100000001b3ULL;
  return h;
}

/* Reads ---------------------------------------------------------------- */

struct extents {
  uint64_t offset, count;       /* the request */
  uint64_t pos;                 /* where the next extent must start */
  unsigned n;
  struct { uint64_t offset, length; unsigned type; } e[MAX_EXTENTS];
};

static int
extent_cb (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  struct extents *x = opaque;

  /* Contiguous, non-empty, inside the request, known type bits. */
  FUZZ_ASSERT (offset == x->pos);
  FUZZ_ASSERT (length > 0);
  FUZZ_ASSERT (length <= x->offset + x->count - offset);
  FUZZ_ASSERT ((type & ~(unsigned) (QCOW2_EXTENT_HOLE | QCOW2_EXTENT_ZERO))
               == 0);
  x->pos = offset + length;
  if (x->n < MAX_EXTENTS) {
    x->e[x->n].offset = offset;
    x->e[x->n].length = length;
    x->e[x->n].type = type;
  }
  x->n++;
  return 0;
}

static int
extents (struct qcow2_image *img, uint64_t count, uint64_t offset,
         bool one_only, struct extents *x)
{
  int r;

  x->offset = x->pos = offset;
  x->count = count;
  x->n = 0;
  r = qcow2_extents (img, count, offset, one_only, extent_cb, x);
  if (r == 0) {
    FUZZ_ASSERT (x->n > 0);
    FUZZ_ASSERT (!one_only || x->n == 1);
  }
  return r;
}

static uint8_t rbuf[READ_CHUNK];
static const uint8_t zeroes[READ_CHUNK];
static struct extents ext;

/* Read [offset, offset+count) and check that what extents call zero
 * reads as zeroes. */
static void
read_chunk (struct qcow2_image *img, uint64_t offset, uint64_t count)
{
  if (count == 0)
    return;
  if (qcow2_pread (img, rbuf, count, offset) == -1)
    return;
  if (extents (img, count, offset, false, &ext) == -1)
    return;
  for (unsigned i = 0; i < ext.n && i < MAX_EXTENTS; i++) {
    const uint8_t *p = rbuf + (ext.e[i].offset - offset);

    if ((ext.e[i].type & QCOW2_EXTENT_ZERO) &&
        memcmp (p, zeroes, ext.e[i].length) != 0) {
      fprintf (stderr, "fuzz-image.c: 0x%" PRIx64 "+0x%" PRIx64 " does not "
               "read as zeroes but its extent says zero\n",
               ext.e[i].offset, ext.e[i].length);
      abort ();
    }
  }
}

static void
exercise_reads (struct qcow2_image *img, uint64_t *rng)
{
  const uint64_t vsize = qcow2_size (img);
  char desc[512];

  qcow2_describe (img, desc, sizeof desc);
  (void) qcow2_cluster_size (img);
  (void) qcow2_is_corrupt (img);
  if (vsize == 0)
    return;

  /* The whole disk (lib bounds the number of extents per call). */
  extents (img, vsize, 0, false, &ext);

  /* Eight chunks across the disk, then the last one. */
  for (unsigned i = 0; i < 8; i++) {
    uint64_t off = vsize / 8 * i & ~(uint64_t) 511;
    uint64_t len = vsize - off < READ_CHUNK / 4 ? vsize - off : READ_CHUNK / 4;

    read_chunk (img, off, len);
  }
  read_chunk (img, vsize > READ_CHUNK ? vsize - READ_CHUNK : 0,
              vsize > READ_CHUNK ? READ_CHUNK : vsize);

  /* A few input-derived ones, unaligned. */
  for (unsigned i = 0; i < 3; i++) {
    uint64_t off = below (rng, vsize);
    uint64_t max = vsize - off < READ_CHUNK ? vsize - off : READ_CHUNK;

    read_chunk (img, off, 1 + below (rng, max));
    extents (img, vsize - off, off, true, &ext);
  }
}

/* Writes --------------------------------------------------------------- */

static uint8_t wbuf[MAX_WRITE];

/* Every guest sector written starts with this tag (then the op and the
 * sector's guest offset); its other bytes are 0x41 + op.  A byte's
 * content is a function of the op and its guest offset. */
static const char tag[8] = "Q2JFUZZ!";

static uint8_t
gen_byte (unsigned op, uint64_t off)
{
  unsigned k = off % 512;

  if (k < 8)
    return tag[k];
  if (k == 8)
    return op;
  if (k < 17)
    return (off / 512) >> (8 * (k - 9));
  return 0x41 + op;
}

/* What pass 2 made of each byte of the first WRITE_WINDOW bytes: 0 not
 * touched, 1 + op written by op, ZEROED, or UNKNOWN (trimmed, or a
 * request that failed). */
#define ZEROED 0xfe
#define UNKNOWN 0xff
static uint8_t *expect;
static uint64_t expect_len;

static void
model (uint64_t off, uint64_t len, uint8_t what)
{
  if (off >= expect_len)
    return;
  if (len > expect_len - off)
    len = expect_len - off;
  memset (expect + off, what, len);
}

/* An offset and a length for a request: inside the first WRITE_WINDOW
 * bytes of the disk or at its end; cluster-, sector- or byte-aligned. */
static void
pick_range (uint64_t *rng, uint64_t vsize, uint64_t cs,
            uint64_t *offset, uint64_t *count)
{
  uint64_t window = vsize < WRITE_WINDOW ? vsize : WRITE_WINDOW;
  uint64_t align = 1, off, len, max;

  switch (below (rng, 3)) {
  case 0: align = cs; break;
  case 1: align = 512; break;
  }
  len = 1 + below (rng, 2 * cs + 1024);
  if (len > MAX_WRITE)
    len = 1 + below (rng, MAX_WRITE);
  if (align > 1)
    len = (len + align - 1) / align * align;
  if (len > vsize)
    len = vsize;
  if (below (rng, 8) == 0)
    off = vsize - len;                          /* the end of the disk */
  else {
    off = below (rng, window);
    off -= off % align;
  }
  max = vsize - off;
  if (len > max)
    len = max;
  if (len > MAX_WRITE)
    len = MAX_WRITE;
  *offset = off;
  *count = len;
}

/* Run the input-derived requests.  After the first successful flush,
 * *crash_copy gets a copy of the file (as a power cut would leave it). */
static void
exercise_writes (struct qcow2_image *img, uint64_t *rng, struct fz_io *io,
                 uint8_t **crash_copy, uint64_t *crash_size)
{
  const uint64_t vsize = qcow2_size (img);
  const uint64_t cs = qcow2_cluster_size (img);
  unsigned nops = 1 + below (rng, MAX_OPS);

  if (expect == NULL && (expect = malloc (WRITE_WINDOW)) == NULL)
    abort ();
  expect_len = vsize < WRITE_WINDOW ? vsize : WRITE_WINDOW;
  memset (expect, 0, expect_len);
  if (vsize == 0)
    return;
  for (unsigned i = 0; i < nops; i++) {
    uint64_t off, len;
    int r;

    pick_range (rng, vsize, cs, &off, &len);
    switch (below (rng, 10)) {
    case 0: case 1: case 2: case 3:
      for (uint64_t b = 0; b < len; b++)
        wbuf[b] = gen_byte (i, off + b);
      r = qcow2_pwrite (img, wbuf, len, off);
      trace ("pwrite 0x%" PRIx64 "+0x%" PRIx64 ": %d", off, len, r);
      model (off, len, r == 0 ? 1 + i : UNKNOWN);
      break;
    case 4: case 5: {
      bool may_trim = below (rng, 2), fast = below (rng, 4) == 0;

      r = qcow2_zero (img, len, off, may_trim, fast);
      trace ("zero 0x%" PRIx64 "+0x%" PRIx64 " may_trim=%d fast=%d: %d",
             off, len, may_trim, fast, r);
      model (off, len, r == 0 ? ZEROED : UNKNOWN);
      break;
    }
    case 6:
      r = qcow2_trim (img, len, off);
      trace ("trim 0x%" PRIx64 "+0x%" PRIx64 ": %d", off, len, r);
      model (off, len, UNKNOWN);
      break;
    case 7:
      trace ("read 0x%" PRIx64 "+0x%" PRIx64, off, len);
      read_chunk (img, off, len < READ_CHUNK ? len : READ_CHUNK);
      break;
    default:
      r = qcow2_flush (img);
      trace ("flush: %d", r);
      if (r == 0 && *crash_copy == NULL) {
        /* The file as a power cut right now would leave it. */
        *crash_copy = buf_get ();
        memcpy (*crash_copy, io->data, io->size);
        *crash_size = io->size;
      }
    }
  }
  read_chunk (img, 0, vsize < READ_CHUNK ? vsize : READ_CHUNK);
}

/* The passes ------------------------------------------------------------- */

static const struct qcow2_open_options ro_opts = {
  .l2_cache_bytes = L2_CACHE_BYTES, .lock = false, .writable = false,
};
static const struct qcow2_open_options rw_opts = {
  .l2_cache_bytes = L2_CACHE_BYTES, .lock = false, .writable = true,
};

/* Open data read-only and read it.  Returns true if it opened. */
static bool
read_only_pass (const uint8_t *data, size_t size, uint64_t *rng,
                bool must_open)
{
  struct fz_io *io = fz_new (data, size, true);
  struct qcow2_image *img = qcow2_open_hostio (&io->io, NULL, &ro_opts);

  if (img == NULL) {
    if (must_open) {
      fprintf (stderr, "fuzz-image.c: lib cannot open the image it closed "
               "cleanly\n");
      abort ();
    }
    fz_free (io);
    return false;
  }
  if (must_open)
    FUZZ_ASSERT (!qcow2_journal_dirty (img));
  /* A dirty journal is replayed in memory (the file is read-only: any
   * write to it fails the run). */
  if (qcow2_replay_in_memory (img) == -1) {
    trace ("replay in memory: -1");
    FUZZ_ASSERT (qcow2_close (img) == 0);
    fz_free (io);
    return true;
  }
  exercise_reads (img, rng);
  /* Opened read-only: writing must be refused. */
  FUZZ_ASSERT (qcow2_pwrite (img, wbuf, 512 < qcow2_size (img) ? 512
                             : qcow2_size (img), 0) == -1 ||
               qcow2_size (img) == 0);
  FUZZ_ASSERT (qcow2_flush (img) == 0);
  FUZZ_ASSERT (qcow2_close (img) == 0);
  fz_free (io);
  return true;
}

/* Open a writable copy of data, make it writable and close it.  With
 * ops, run requests in between; a copy of the file after the first
 * successful flush is returned in *crash_copy (else NULL).  Returns
 * true if it was made writable, flushed and closed cleanly, the final
 * file then in *out. */
static bool
write_pass (const uint8_t *data, size_t size, uint64_t *rng, bool ops,
            uint8_t **crash_copy, uint64_t *crash_size,
            uint8_t **out, uint64_t *out_size)
{
  struct fz_io *io = fz_new (data, size, false);
  struct qcow2_image *img = qcow2_open_hostio (&io->io, NULL, &rw_opts);
  bool clean = false;
  int r;

  if (img == NULL) {
    fz_free (io);
    return false;
  }
  FUZZ_ASSERT (qcow2_can_write (img));
  if (qcow2_journal_dirty (img)) {
    /* Not readable before the replay: a read may fail, must not crash. */
    uint64_t len = qcow2_size (img) < 4096 ? qcow2_size (img) : 4096;

    if (len)
      qcow2_pread (img, rbuf, len, 0);
  }
  r = qcow2_make_writable (img);
  trace ("make_writable%s: %d", ops ? "" : " (after a power cut)", r);
  if (r == 0) {
    FUZZ_ASSERT (!qcow2_journal_dirty (img));
    if (ops)
      exercise_writes (img, rng, io, crash_copy, crash_size);
    /* After a failed metadata change lib refuses writes and flushes,
     * and its close leaves the journal to be replayed (returning 0). */
    clean = qcow2_flush (img) == 0;
    trace ("flush: %d", clean ? 0 : -1);
  }
  /* (A close returns 0 too when nothing was set up.) */
  r = qcow2_close (img);
  trace ("close: %d", r);
  if (r == -1)
    clean = false;
  if (clean && out) {
    *out = io->data;
    *out_size = io->size;
    io->data = NULL;
  }
  fz_free (io);
  return clean;
}

/* The oracles of pass 3 --------------------------------------------------- */

static uint64_t
be (const uint8_t *p, unsigned n)
{
  uint64_t v = 0;

  for (unsigned i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

/* No sector of the n clusters at offset (those inside the file) starts
 * with the guest data tag. */
static void
no_tag_in (const uint8_t *data, uint64_t size, uint64_t offset, uint64_t len,
           const char *what)
{
  for (uint64_t o = offset; o < offset + len && o + 8 <= size; o += 512)
    if (memcmp (data + o, tag, 8) == 0) {
      uint64_t sector = 0;

      for (unsigned k = 8; k-- > 0; )
        sector = sector << 8 | data[o + 9 + k];
      fprintf (stderr, "fuzz-image.c: guest data (op %u, guest sector %"
               PRIu64 ") in the %s at 0x%" PRIx64 "\n", data[o + 8],
               sector, what, o);
      abort ();
    }
}

/* Walk the metadata of the image file a clean close left (as written,
 * independently of lib): header cluster, L1 table and the L2 tables it
 * names, refcount table and blocks.  No guest write may have landed
 * there. */
static void
check_metadata (const uint8_t *data, uint64_t size)
{
  unsigned bits;
  uint64_t cs, l1, l1_size, rt, rt_clusters;

  if (size < 72)
    return;
  bits = be (data + 20, 4);
  if (bits < 9 || bits > 21)
    return;
  cs = 1ULL << bits;
  l1_size = be (data + 36, 4);
  l1 = be (data + 40, 8);
  rt = be (data + 48, 8);
  rt_clusters = be (data + 56, 4);
  no_tag_in (data, size, 0, cs, "header cluster");
  if (l1 < size && l1_size <= (size - l1) / 8) {
    no_tag_in (data, size, l1, l1_size * 8, "L1 table");
    for (uint64_t i = 0; i < l1_size; i++) {
      uint64_t l2 = be (data + l1 + 8 * i, 8) & 0x00fffffffffffe00ULL;

      if (l2 != 0 && l2 < size)
        no_tag_in (data, size, l2, cs, "L2 table");
    }
  }
  if (rt < size && rt_clusters <= (size - rt) / cs) {
    no_tag_in (data, size, rt, rt_clusters * cs, "refcount table");
    for (uint64_t i = 0; i < rt_clusters * cs / 8; i++) {
      uint64_t rb = be (data + rt + 8 * i, 8) & ~(uint64_t) 511;

      if (rb != 0 && rb < size)
        no_tag_in (data, size, rb, cs, "refcount block");
    }
  }
}

/* Every byte pass 2 wrote or zeroed reads so from what its clean close
 * left. */
static void
check_content (const uint8_t *data, uint64_t size)
{
  struct fz_io *io = fz_new (data, size, true);
  struct qcow2_image *img = qcow2_open_hostio (&io->io, NULL, &ro_opts);

  FUZZ_ASSERT (img != NULL);
  for (uint64_t off = 0; off < expect_len; ) {
    uint64_t n = 0;

    while (off < expect_len &&
           (expect[off] == 0 || expect[off] == UNKNOWN))
      off++;
    while (off + n < expect_len && n < READ_CHUNK &&
           expect[off + n] != 0 && expect[off + n] != UNKNOWN)
      n++;
    if (n == 0)
      break;
    FUZZ_ASSERT (qcow2_pread (img, rbuf, n, off) == 0);
    for (uint64_t b = 0; b < n; b++) {
      uint8_t e = expect[off + b] == ZEROED ? 0
        : gen_byte (expect[off + b] - 1, off + b);

      if (rbuf[b] != e) {
        fprintf (stderr, "fuzz-image.c: guest byte 0x%" PRIx64 " reads "
                 "0x%02x after the clean close, not 0x%02x (%s)\n",
                 off + b, rbuf[b], e,
                 expect[off + b] == ZEROED ? "zeroed" : "written");
        abort ();
      }
    }
    off += n;
  }
  FUZZ_ASSERT (qcow2_close (img) == 0);
  fz_free (io);
}

static void
quiet (const char *fs, va_list args)
{
  (void) fs;
  (void) args;
}

static void
loud (const char *fs, va_list args)
{
  fprintf (stderr, "qcow2j: ");
  vfprintf (stderr, fs, args);
  fputc ('\n', stderr);
}

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  const char *v = getenv ("QCOW2J_FUZZ_VERBOSE");

  (void) argc;
  (void) argv;
  verbose = v && *v && strcmp (v, "0") != 0;
  if (verbose)
    qlog_set_handlers (loud, loud);
  else
    qlog_set_handlers (quiet, NULL);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  uint64_t rng;
  uint8_t *crash_copy = NULL, *out = NULL;
  uint64_t crash_size = 0, out_size = 0;

  if (size > MAX_INPUT)
    return 0;
  rng = seed_of (data, size);

  /* 1: read-only. */
  read_only_pass (data, size, &rng, false);

  /* 2: writable, with requests. */
  if (write_pass (data, size, &rng, true, &crash_copy, &crash_size,
                  &out, &out_size)) {
    /* 3: what a clean close leaves must open read-only, not dirty, read
     * as written, with no guest data in its metadata (unless the input
     * held the tag already). */
    read_only_pass (out, out_size, &rng, true);
    check_content (out, out_size);
    if (memmem (data, size, tag, sizeof tag) == NULL)
      check_metadata (out, out_size);
  }
  buf_put (out);

  /* 4: the power cut after the first flush: replay it. */
  if (crash_copy) {
    write_pass (crash_copy, crash_size, &rng, false, NULL, NULL, NULL, NULL);
    buf_put (crash_copy);
  }
  return 0;
}
