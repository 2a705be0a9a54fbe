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
 *    never be written; then the same of one of its internal snapshots,
 *    served as qemu-nbd -l serves one;
 * 2. opens a copy writable, runs qcow2_make_writable (replaying a dirty
 *    journal, rebuilding stale refcounts), then a few writes, zeroes,
 *    trims, reads and flushes derived from the input's last bytes, and
 *    closes it.  Throughout, from before the open to the close, the
 *    metadata oracle checks every change lib makes to the file: each
 *    changed byte of a cluster that held metadata at open (header, L1
 *    and L2 tables, refcount table and blocks, snapshot table and the
 *    snapshots' L1 and L2 tables, bitmap directory, tables and data, as
 *    walk_metadata finds them in the input, independently of lib) must
 *    be a header byte the DIRTY protocol or the header writes change, in
 *    a cluster punched whole before, set by a valid record of the
 *    journal the file holds at that moment (decoded here, not by lib),
 *    or a bitmap's "in use" flag; and the journal area lib places must
 *    not overlap that metadata (rules (a)-(d), in detail where "The
 *    metadata oracle of the write passes" begins, below);
 * 3. after a clean close, reopens the result read-only: it must open
 *    (lib wrote it) with no dirty journal, and reads; and checks two
 *    oracles: every byte the requests of pass 2 wrote or zeroed (in the
 *    first WRITE_WINDOW bytes of the disk) reads back as written (unless
 *    the input's refcounts leave a cluster its entries name at 0: lib
 *    trusts refcounts, refcounts_cover_data says why), and no
 *    sector of the image's metadata (all walk_metadata finds in the
 *    result) starts with the tag every written guest sector starts with:
 *    a guest write never lands on metadata;
 * 4. replays the copy taken after the first successful flush of pass 2,
 *    as if the power had been cut there, and closes that, under the
 *    metadata oracle of pass 2 (its metadata at open: the copy's).
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

#include "crc32c.h"
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
  struct oracle *oracle;        /* pass 2: every change is checked */
};

/* The metadata oracle of the write passes (below): each hook sees a
 * change before it is made, or (after_write) just after. */
struct oracle;
static void oracle_write (struct fz_io *m, const uint8_t *buf,
                          uint64_t count, uint64_t offset);
static void oracle_after_write (struct fz_io *m, uint64_t count,
                                uint64_t offset);
static void oracle_punch (struct fz_io *m, uint64_t offset, uint64_t count);
static void oracle_truncate (struct fz_io *m, uint64_t size);
static void oracle_free (struct oracle *o);

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
  if (m->oracle)
    oracle_write (m, buf, count, offset);
  if (fz_grow (m, offset + count) == -1)
    return -1;
  memcpy (m->data + offset, buf, count);
  if (m->oracle)
    oracle_after_write (m, count, offset);
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
  if (m->oracle)
    oracle_punch (m, offset, count);
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
  if (m->oracle)
    oracle_truncate (m, size);
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
  oracle_free (m->oracle);
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

/* The image's metadata, walked in the file ------------------------------
 *
 * Independently of lib: from the qcow2 specification, on the bytes of
 * the file, every table bounded by the file's size.  What is malformed
 * (the image is mutated) is skipped, not guessed at: a structure lib
 * refuses to use is no metadata it could be expected to keep.  One walk
 * serves both metadata oracles: the write passes' (which clusters held
 * metadata at open) and pass 3's (no guest data in the metadata a clean
 * close left). */

static uint64_t
be (const uint8_t *p, unsigned n)
{
  uint64_t v = 0;

  for (unsigned i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

enum mkind {
  MK_NONE, MK_HEADER, MK_L1, MK_L2, MK_REFTABLE, MK_REFBLOCK,
  MK_SNAPTABLE, MK_SNAP_L1, MK_SNAP_L2, MK_BITMAP_DIR, MK_BITMAP_TABLE,
  MK_BITMAP_DATA,
  MK_BITMAP_FLAGS,              /* no structure: the 4-byte flags word of
                                   a bitmap directory entry */
};

static const char *const mkind_name[] = {
  [MK_NONE] = "(no metadata)", [MK_HEADER] = "header cluster",
  [MK_L1] = "L1 table", [MK_L2] = "L2 table",
  [MK_REFTABLE] = "refcount table", [MK_REFBLOCK] = "refcount block",
  [MK_SNAPTABLE] = "snapshot table", [MK_SNAP_L1] = "snapshot's L1 table",
  [MK_SNAP_L2] = "snapshot's L2 table",
  [MK_BITMAP_DIR] = "bitmap directory", [MK_BITMAP_TABLE] = "bitmap table",
  [MK_BITMAP_DATA] = "bitmap data cluster",
  [MK_BITMAP_FLAGS] = "bitmap directory entry's flags",
};

#define QCOW_MAGIC 0x514649fbU
#define EXT_BITMAPS 0x23852875U
#define EXT_Q2JL 0x51324a4cU
#define OFFSET_MASK 0x00fffffffffffe00ULL       /* L1, L2, bitmap tables */
#define AUTOCLEAR_BITMAPS (1ULL << 0)
#define AUTOCLEAR_VALID (1ULL << 60)
#define INCOMPAT_QEMU_DIRTY (1ULL << 0)
#define INCOMPAT_CORRUPT (1ULL << 1)
#define INCOMPAT_DIRTY (1ULL << 60)

/* What the header cluster says, as far as the oracles need it. */
struct hdr {
  uint64_t cs;
  unsigned version;
  uint64_t backing;             /* backing_file_offset */
  uint64_t autoclear;
  uint64_t ext_end;             /* the end marker, or the end of the
                                   extension area without one */
  unsigned n_q2jl;              /* Q2JL extensions, of any length */
  uint64_t q2jl;                /* data bytes of the last one of 32 bytes */
  uint64_t bitmaps;             /* data bytes of the bitmaps extension
                                   (of 24 bytes), or 0 */
};

/* Parse the header at data; calls each_ext for each header extension
 * (its type, length and where its data bytes are).  False if it is no qcow2
 * header with a usable cluster size. */
static bool
parse_header (const uint8_t *data, uint64_t size, struct hdr *h,
              void (*each_ext) (void *opaque, uint32_t type, uint32_t len,
                                uint64_t pos),
              void *opaque)
{
  unsigned bits;
  uint64_t len, pos, area_end;

  memset (h, 0, sizeof *h);
  if (size < 104 || be (data, 4) != QCOW_MAGIC)
    return false;
  h->version = be (data + 4, 4);
  bits = be (data + 20, 4);
  if ((h->version != 2 && h->version != 3) || bits < 9 || bits > 21)
    return false;
  h->cs = 1ULL << bits;
  h->backing = be (data + 8, 8);
  h->autoclear = h->version == 3 ? be (data + 88, 8) : 0;
  h->ext_end = h->cs;
  if (h->version == 2)
    return true;                /* no extensions that lib would parse */

  /* Extensions, from header_length up to the backing file name (or the
   * end of the cluster), until the end marker. */
  len = be (data + 100, 4);
  if (len < 104 || len % 8 != 0 || len > h->cs)
    return true;
  area_end = h->backing > len && h->backing <= h->cs ? h->backing : h->cs;
  h->ext_end = area_end;
  for (pos = len; pos + 8 <= area_end && pos + 8 <= size; ) {
    uint32_t type = be (data + pos, 4), elen = be (data + pos + 4, 4);

    if (type == 0) {
      h->ext_end = pos;
      break;
    }
    if (elen > area_end - pos - 8 || elen > size - pos - 8)
      break;                    /* malformed: lib refuses the header */
    if (type == EXT_Q2JL) {
      h->n_q2jl++;
      if (elen == 32)
        h->q2jl = pos + 8;
    }
    if (type == EXT_BITMAPS && elen == 24)
      h->bitmaps = pos + 8;
    if (each_ext)
      each_ext (opaque, type, elen, pos + 8);
    pos += 8 + ((uint64_t) elen + 7) / 8 * 8;
  }
  return true;
}

typedef void meta_fn (void *opaque, enum mkind kind, uint64_t offset,
                      uint64_t len);

struct walk {
  const uint8_t *data;
  uint64_t size, cs;
  uint64_t budget;              /* table entries left to read: with
                                   snapshots sharing tables the walk
                                   could otherwise take long */
  meta_fn *fn;
  void *opaque;
};

/* Report [offset, offset+len), cut to the file. */
static void
emit (struct walk *w, enum mkind kind, uint64_t offset, uint64_t len)
{
  if (offset >= w->size || len == 0)
    return;
  if (len > w->size - offset)
    len = w->size - offset;
  w->fn (w->opaque, kind, offset, len);
}

/* A table of n 8-byte entries at offset: cluster aligned, not in the
 * header cluster, inside the file?  (Else malformed, and skipped.) */
static bool
table_ok (const struct walk *w, uint64_t offset, uint64_t n)
{
  return offset != 0 && offset % w->cs == 0 && offset < w->size &&
    n <= (w->size - offset) / 8;
}

/* The table of n entries at offset, and the clusters of size len its
 * entries name (entry & mask; the entry's flag bits left out). */
static void
walk_table (struct walk *w, uint64_t offset, uint64_t n, uint64_t mask,
            enum mkind kind, enum mkind named)
{
  if (!table_ok (w, offset, n))
    return;
  emit (w, kind, offset, n * 8);
  for (uint64_t i = 0; i < n && w->budget > 0; i++, w->budget--) {
    uint64_t c = be (w->data + offset + 8 * i, 8) & mask;

    if (c != 0 && c % w->cs == 0)
      emit (w, named, c, w->cs);
  }
}

/* The snapshot table (n entries at offset): each entry 40 bytes, then
 * extra data, id and name, padded to 8; each snapshot's L1 table and
 * the L2 tables it names. */
static void
walk_snapshots (struct walk *w, uint64_t offset, uint64_t n)
{
  uint64_t pos = offset;

  if (n == 0 || offset == 0 || offset % w->cs != 0 || offset >= w->size)
    return;
  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *e = w->data + pos;
    uint64_t len;

    if (w->size - pos < 40)
      break;
    len = 40 + be (e + 36, 4) + be (e + 12, 2) + be (e + 14, 2);
    len = (len + 7) / 8 * 8;
    if (len > w->size - pos)
      break;
    walk_table (w, be (e, 8), be (e + 8, 4), OFFSET_MASK, MK_SNAP_L1,
                MK_SNAP_L2);
    pos += len;
  }
  emit (w, MK_SNAPTABLE, offset, pos - offset);
}

/* The bitmap directory (extension data bytes at ext): each entry 24
 * bytes, then extra data and name, padded to 8; each bitmap's table and
 * the data clusters it names.  Only while autoclear bit 0 says the
 * extension is consistent (otherwise QEMU ignores it, and so does lib). */
static void
walk_bitmaps (struct walk *w, const struct hdr *h)
{
  const uint8_t *x = w->data + h->bitmaps;
  uint64_t n, dsize, doff, pos = 0;

  if (h->bitmaps == 0 || !(h->autoclear & AUTOCLEAR_BITMAPS))
    return;
  n = be (x, 4);
  dsize = be (x + 8, 8);
  doff = be (x + 16, 8);
  if (n == 0 || doff == 0 || doff % w->cs != 0 || doff >= w->size ||
      dsize > w->size - doff)
    return;
  emit (w, MK_BITMAP_DIR, doff, dsize);
  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *e = w->data + doff + pos;
    uint64_t len;

    if (dsize - pos < 24)
      break;
    len = 24 + be (e + 20, 4) + be (e + 18, 2);
    if (len > dsize - pos)
      break;
    emit (w, MK_BITMAP_FLAGS, doff + pos + 12, 4);
    walk_table (w, be (e, 8), be (e + 8, 4), OFFSET_MASK, MK_BITMAP_TABLE,
                MK_BITMAP_DATA);
    pos += (len + 7) / 8 * 8;
  }
}

/* Report every metadata structure of the image in data to fn: header
 * cluster, L1 table and its L2 tables, refcount table and its blocks,
 * snapshot table and each snapshot's L1 and L2 tables, bitmap
 * directory, tables and data clusters. */
static void
walk_metadata (const uint8_t *data, uint64_t size, meta_fn *fn,
               void *opaque)
{
  struct hdr h;
  struct walk w = {
    .data = data, .size = size, .budget = 1 << 22, .fn = fn,
    .opaque = opaque,
  };

  if (!parse_header (data, size, &h, NULL, NULL))
    return;
  w.cs = h.cs;
  emit (&w, MK_HEADER, 0, h.cs);
  walk_table (&w, be (data + 40, 8), be (data + 36, 4), OFFSET_MASK,
              MK_L1, MK_L2);
  walk_table (&w, be (data + 48, 8), be (data + 56, 4) * h.cs / 8,
              ~(uint64_t) 511, MK_REFTABLE, MK_REFBLOCK);
  walk_snapshots (&w, be (data + 64, 8), be (data + 60, 4));
  walk_bitmaps (&w, &h);
}

/* The metadata oracle of the write passes ---------------------------------
 *
 * Before lib opens the file writable, the walk above records which
 * clusters held metadata.  Every change lib then makes to the file (a
 * pwrite, a punch, a truncation), byte by byte where the old and the new
 * byte differ, must be one of:
 *
 * (a) in the header cluster, a byte that the DIRTY protocol and the
 *     header writes outside the journal change (docs/journal-format.md
 *     2.3, 3.3, 12.1 O4, 12.2 C5; lib/dirty.c, lib/header-write.c):
 *     bits 60 (DIRTY, set and cleared), 0 (QEMU's dirty bit, cleared
 *     after a refcount rebuild) and 1 (corrupt, set) of the incompatible
 *     features word; bit 60 (VALID) of the autoclear word; the data
 *     bytes of a Q2JL extension present at open; anything from the end
 *     of the extensions at open to the end of the cluster (the Q2JL and
 *     feature name table added, a new end marker, a moved backing file
 *     name); and backing_file_offset if the image had a backing file
 *     name (moved out of the additions' way).  Header bytes 24-71 follow
 *     (c), like any journalled metadata; no other header byte may change;
 * (b) a whole cluster punched (not cluster 0): the checkpoint punches
 *     freed clusters before they are reused (10.2 step 5), after which
 *     the cluster is no longer the open-time metadata this oracle keeps;
 * (c) the value a valid record of the journal now in the file gives that
 *     byte (0 for ZERO): the journal decoded here from the Q2JL extension,
 *     superblocks and chain of the file's current bytes, independently of
 *     lib's journal code (lib's crc32c is the only part used).  A
 *     checkpoint writes home while its records are still in the ring,
 *     and a replay before it moves the head, so "a record of the chain
 *     from the head" is the rule;
 * (d) bit 0 ("in use") of a bitmap directory entry's flags, set: lib
 *     marks every persistent bitmap in use in place, outside the journal,
 *     before its first write (lib/bitmaps.c), as QEMU leaves them after
 *     an unclean stop;
 * (e) in a version 2 image, which carries no journal (lib/writeback.c:
 *     tables written home in place, in order), a byte of a cluster that
 *     the file's current state still names as its L1 table, an L2 table
 *     of it, its refcount table or a refcount block of it, or a header
 *     byte of 24-71 (the words a write-back writes).  Rules (a) and (c)
 *     do not apply there: no other header byte may change.
 *
 * And the journal area lib places (a Q2JL lib writes, with a non-zero
 * id) overlaps no open-time metadata cluster that is still one.  A
 * violation prints what and where and aborts.  What lib writes into
 * clusters that held no metadata at open (new tables, data, the journal)
 * is not this oracle's business. */

/* A byte range a record of the journal sets: to the bytes at src in the
 * file, or to zeroes (src == ZERO_SRC). */
struct rec {
  uint64_t start, len, src;
};
#define ZERO_SRC UINT64_MAX

struct oracle {
  uint64_t cs, nclusters;
  uint8_t *kind;                /* enum mkind of each cluster at open, or
                                   MK_NONE (none, or punched since) */
  uint64_t backing;             /* backing_file_offset at open */
  uint64_t ext_end;             /* struct hdr's, at open */
  uint64_t *q2jl;               /* data bytes of the Q2JL extensions of 32
                                   bytes at open */
  size_t n_q2jl;
  uint64_t *flags;              /* bitmap entries' flags words at open */
  size_t n_flags;
  uint64_t area, area_size, area_id;    /* the Q2JL as last seen */

  /* The journal in the file, decoded when a change needs it, and again
   * after lib writes cluster 0 or the area. */
  bool decoded;
  uint64_t jarea, jsize;        /* the area decoded (jsize 0: none) */
  uint64_t head_seq, n_tx;      /* the chain: from head_seq, n_tx long */
  struct rec *rec;              /* sorted by start */
  uint64_t *maxend;             /* of rec[0..i] */
  size_t n_rec, cap_rec;
  char why[200];                /* why there is no (longer a) chain */
  bool v2;                      /* a version 2 image: rule (e) */
  uint8_t *now_kind;            /* v2: enum mkind of each cluster in the
                                   file's current state (now_valid) */
  uint64_t now_clusters;
  bool now_valid;
  uint64_t by_rule[5];          /* changed bytes each rule allowed (the
                                   verbose trace says how many) */
};

static void *
xrealloc (void *p, size_t n)
{
  p = realloc (p, n ? n : 1);
  if (p == NULL)
    abort ();
  return p;
}

static void
mark_open_meta (void *opaque, enum mkind kind, uint64_t offset, uint64_t len)
{
  struct oracle *o = opaque;

  if (kind == MK_BITMAP_FLAGS) {
    o->flags = xrealloc (o->flags, (o->n_flags + 1) * sizeof *o->flags);
    o->flags[o->n_flags++] = offset;
    return;
  }
  for (uint64_t c = offset / o->cs; c <= (offset + len - 1) / o->cs &&
         c < o->nclusters; c++)
    if (o->kind[c] == MK_NONE)
      o->kind[c] = kind;
}

static void
note_q2jl (void *opaque, uint32_t type, uint32_t len, uint64_t pos)
{
  struct oracle *o = opaque;

  if (type == EXT_Q2JL && len == 32) {
    o->q2jl = xrealloc (o->q2jl, (o->n_q2jl + 1) * sizeof *o->q2jl);
    o->q2jl[o->n_q2jl++] = pos;
  }
}

/* The Q2JL extension of the file, if it names a journal (one extension
 * of 32 bytes, its CRC and version right, a non-zero id). */
static bool
q2jl_of (const struct hdr *h, const uint8_t *data, uint64_t *area,
         uint64_t *size, uint64_t *id)
{
  const uint8_t *d = data + h->q2jl;

  if (h->n_q2jl != 1 || h->q2jl == 0 ||
      be (d + 28, 4) != crc32c (0, d, 28) || be (d + 24, 4) != 1)
    return false;
  *area = be (d, 8);
  *size = be (d + 8, 8);
  *id = be (d + 16, 8);
  return *id != 0;
}

/* Record what data held at open.  NULL if it is no image lib could open
 * writable (then there is nothing to keep). */
static struct oracle *
oracle_new (const uint8_t *data, uint64_t size)
{
  struct oracle *o;
  struct hdr h;

  if (!parse_header (data, size, &h, NULL, NULL))
    return NULL;
  o = calloc (1, sizeof *o);
  if (o == NULL)
    abort ();
  o->cs = h.cs;
  o->nclusters = (size + h.cs - 1) / h.cs;
  o->kind = calloc (o->nclusters ? o->nclusters : 1, 1);
  if (o->kind == NULL)
    abort ();
  o->backing = h.backing;
  o->ext_end = h.ext_end;
  o->v2 = h.version == 2;
  parse_header (data, size, &h, note_q2jl, o);
  if (!q2jl_of (&h, data, &o->area, &o->area_size, &o->area_id))
    o->area = o->area_size = o->area_id = 0;
  walk_metadata (data, size, mark_open_meta, o);
  return o;
}

static void
oracle_free (struct oracle *o)
{
  if (o == NULL)
    return;
  trace ("oracle: changed metadata bytes allowed by rule a %" PRIu64
         ", c %" PRIu64 ", d %" PRIu64 ", e %" PRIu64 "; clusters punched "
         "(b) %" PRIu64, o->by_rule[0], o->by_rule[2], o->by_rule[3],
         o->by_rule[4], o->by_rule[1]);
  free (o->kind);
  free (o->now_kind);
  free (o->q2jl);
  free (o->flags);
  free (o->rec);
  free (o->maxend);
  free (o);
}

static void
add_rec (struct oracle *o, uint64_t start, uint64_t len, uint64_t src)
{
  if (o->n_rec == o->cap_rec) {
    o->cap_rec = o->cap_rec ? 2 * o->cap_rec : 256;
    o->rec = xrealloc (o->rec, o->cap_rec * sizeof *o->rec);
  }
  o->rec[o->n_rec++] = (struct rec) { start, len, src };
}

static int
compare_rec (const void *a, const void *b)
{
  const struct rec *x = a, *y = b;

  return x->start < y->start ? -1 : x->start > y->start;
}

/* The records of the transaction at t (payload bytes, nr records) that
 * lies at file offset at, into o->rec.  False if one is malformed
 * (section 6.6: a reader refuses such a journal). */
static bool
decode_records (struct oracle *o, const uint8_t *t, uint64_t at,
                uint64_t payload, uint64_t nr)
{
  uint64_t pos = 64;

  for (uint64_t r = 0; r < nr; r++) {
    const uint8_t *p = t + pos;
    uint64_t type, len, n;

    if (payload - pos < 8)
      return false;
    type = be (p, 2);
    len = be (p + 4, 4);
    if (be (p + 2, 2) != 0 || len < 8 || len % 8 != 0 || len > payload - pos)
      return false;
    switch (type) {
    case 0:                                     /* PAD */
      break;
    case 1:                                     /* SET64 */
    case 3:                                     /* ZERO */
      if (len == 8 || (len - 8) % 16 != 0)
        return false;
      n = (len - 8) / 16;
      for (uint64_t i = 0; i < n; i++) {
        uint64_t off = be (p + 8 + 16 * i, 8);
        uint64_t cnt = type == 1 ? 8 : be (p + 16 + 16 * i, 8);

        if (off + cnt < off || cnt == 0)
          return false;
        add_rec (o, off, cnt, type == 1 ? at + pos + 16 + 16 * i : ZERO_SRC);
      }
      break;
    case 2: {                                   /* WRITE */
      uint64_t off, cnt;

      if (len < 24)
        return false;
      off = be (p + 8, 8);
      cnt = be (p + 16, 4);
      if (cnt == 0 || len != 24 + (cnt + 7) / 8 * 8 || off + cnt < off)
        return false;
      add_rec (o, off, cnt, at + pos + 24);
      break;
    }
    default:
      return false;
    }
    pos += len;
  }
  return pos == payload;
}

/* Is the superblock at sb valid for the journal id of size jsize
 * (section 4.3)?  Fills its generation, head and head_seq. */
static bool
sb_valid (const uint8_t *sb, uint64_t id, uint64_t jsize, uint64_t *gen,
          uint64_t *head, uint64_t *head_seq)
{
  *gen = be (sb + 24, 8);
  *head = be (sb + 40, 8);
  *head_seq = be (sb + 48, 8);
  return memcmp (sb, "qcow2jSB", 8) == 0 && be (sb + 8, 4) == 1 &&
    be (sb + 12, 4) == 4096 && be (sb + 16, 8) == id && *gen != 0 &&
    be (sb + 32, 8) == jsize && *head % 4096 == 0 && *head >= 8192 &&
    *head < jsize && *head_seq >= 1 && be (sb + 56, 4) == 0 &&
    be (sb + 60, 4) == crc32c (0, sb, 60);
}

static void __attribute__ ((format (printf, 2, 3)))
no_journal (struct oracle *o, const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  vsnprintf (o->why, sizeof o->why, fs, args);
  va_end (args);
}

/* Decode the journal the file holds now (sections 3, 4, 5, 6, 11.2):
 * the records of its chain, from the newest superblock's head. */
static void
decode_journal (struct fz_io *m, struct oracle *o)
{
  static const uint8_t zero4[4];
  const uint8_t *data = m->data;
  struct hdr h;
  uint64_t area, jsize, id, g[2], hd[2], hs[2], off, seq, walked, max_tx;
  bool ok[2];
  int best;

  o->decoded = true;
  o->n_rec = 0;
  o->jarea = o->jsize = o->head_seq = o->n_tx = 0;
  if (!parse_header (data, m->size, &h, NULL, NULL) || h.version != 3) {
    no_journal (o, "no qcow2 v3 header");
    return;
  }
  if (!q2jl_of (&h, data, &area, &jsize, &id)) {
    no_journal (o, "no Q2JL extension naming a journal (%u found)",
                h.n_q2jl);
    return;
  }
  if (!(h.autoclear & AUTOCLEAR_VALID)) {
    no_journal (o, "autoclear bit 60 (VALID) is clear");
    return;
  }
  /* Section 3.2 also wants the area inside the file; lib replays one
   * that runs past its end (reading zeroes there, as hostio.h promises
   * for any read past the end), and so does this decoder: what it checks
   * is the records.  The bytes past the end are made zeroes here (lib
   * cannot see them; fz_grow would zero them). */
  if (area == 0 || area % h.cs != 0 || jsize < (1 << 20) ||
      jsize > (1 << 30) || jsize % 4096 != 0 || jsize % h.cs != 0 ||
      area > MAX_FILE || jsize > MAX_FILE - area) {
    no_journal (o, "the Q2JL area 0x%" PRIx64 "+0x%" PRIx64 " is invalid",
                area, jsize);
    return;
  }
  if (area + jsize > m->size)
    memset (m->data + m->size, 0, area + jsize - m->size);
  o->jarea = area;
  o->jsize = jsize;
  for (int i = 0; i < 2; i++)
    ok[i] = sb_valid (data + area + 4096 * i, id, jsize, &g[i], &hd[i],
                      &hs[i]);
  if (!ok[0] && !ok[1]) {
    no_journal (o, "no valid superblock");
    return;
  }
  if (ok[0] && ok[1] && g[0] == g[1] &&
      memcmp (data + area, data + area + 4096, 64) != 0) {
    no_journal (o, "both superblocks have generation %" PRIu64 " but "
                "differ", g[0]);
    return;
  }
  best = !ok[0] || (ok[1] && g[1] > g[0]);
  off = hd[best];
  seq = o->head_seq = hs[best];
  max_tx = jsize - 8192 < (16 << 20) ? jsize - 8192 : 16 << 20;
  no_journal (o, "the chain ends before seq %" PRIu64, seq);
  for (walked = 0; walked < jsize - 8192; ) {
    const uint8_t *t = data + area + off;
    uint64_t payload = be (t + 24, 4), total = be (t + 28, 4);
    uint32_t crc;
    size_t first = o->n_rec;

    if (memcmp (t, "QJTX", 4) != 0 || be (t + 8, 8) != id ||
        be (t + 16, 8) != seq || payload % 8 != 0 || payload < 64 ||
        payload > total || total % 4096 != 0 || total < 4096 ||
        total > max_tx || total > jsize - off)
      break;
    crc = crc32c (0, t, 4);
    crc = crc32c (crc, zero4, 4);
    crc = crc32c (crc, t + 8, payload - 8);
    if (be (t + 4, 4) != crc)
      break;
    if (!(be (t + 36, 4) & 1) &&
        !decode_records (o, t, area + off, payload, be (t + 32, 4))) {
      o->n_rec = first;
      no_journal (o, "transaction seq %" PRIu64 " has a malformed record "
                  "(a reader refuses the journal)", seq);
      break;
    }
    o->n_tx++;
    walked += total;
    seq++;
    no_journal (o, "the chain ends before seq %" PRIu64, seq);
    off = off + total == jsize ? 8192 : off + total;
  }
  qsort (o->rec, o->n_rec, sizeof *o->rec, compare_rec);
  o->maxend = xrealloc (o->maxend, (o->n_rec ? o->n_rec : 1)
                        * sizeof *o->maxend);
  for (size_t i = 0; i < o->n_rec; i++) {
    uint64_t end = o->rec[i].start + o->rec[i].len;

    o->maxend[i] = i > 0 && o->maxend[i - 1] > end ? o->maxend[i - 1] : end;
  }
}

/* Does a record of the journal's chain set the byte at x to v? */
static bool
journal_sets (struct fz_io *m, struct oracle *o, uint64_t x, uint8_t v)
{
  size_t lo = 0, hi;

  if (!o->decoded)
    decode_journal (m, o);
  /* The last record starting at or before x, then back while one may
   * still reach x. */
  for (hi = o->n_rec; lo < hi; ) {
    size_t mid = lo + (hi - lo) / 2;

    if (o->rec[mid].start <= x)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (size_t i = lo; i-- > 0 && o->maxend[i] > x; ) {
    const struct rec *r = &o->rec[i];

    if (x < r->start + r->len &&
        (r->src == ZERO_SRC ? 0 : m->data[r->src + (x - r->start)]) == v)
      return true;
  }
  return false;
}

/* Rule (a): may the header byte x change from old to new outside the
 * journal?  Returns NULL if so, "" if it is a journalled byte (24-71),
 * else what it is. */
static const char *
header_rule (const struct oracle *o, uint64_t x, uint8_t old, uint8_t new)
{
  /* The bits each feature word may gain and lose. */
  static const struct {
    uint64_t at, may_set, may_clear;
    const char *name;
  } words[] = {
    { 72, INCOMPAT_DIRTY | INCOMPAT_CORRUPT,
      INCOMPAT_DIRTY | INCOMPAT_QEMU_DIRTY, "incompatible features" },
    { 88, AUTOCLEAR_VALID, AUTOCLEAR_VALID, "autoclear features" },
  };

  if (x >= 24 && x < 72)
    return "";
  if (x >= 8 && x < 16)
    return o->backing ? NULL : "backing_file_offset (no backing file)";
  for (unsigned i = 0; i < 2; i++)
    if (x >= words[i].at && x < words[i].at + 8) {
      unsigned shift = 8 * (7 - (x - words[i].at));
      uint8_t set = (old ^ new) & new, cleared = (old ^ new) & old;

      if ((set & ~(words[i].may_set >> shift)) == 0 &&
          (cleared & ~(words[i].may_clear >> shift)) == 0)
        return NULL;
      return words[i].name;
    }
  for (size_t i = 0; i < o->n_q2jl; i++)
    if (x >= o->q2jl[i] && x < o->q2jl[i] + 32)
      return NULL;
  if (x >= o->ext_end)
    return NULL;
  return x < 104 ? "a header field" : "a header extension present at open";
}

/* Rule (e) walks the file as it is now. */
static void
mark_now_meta (void *opaque, enum mkind kind, uint64_t offset, uint64_t len)
{
  struct oracle *o = opaque;

  for (uint64_t c = offset / o->cs; c <= (offset + len - 1) / o->cs &&
         c < o->now_clusters; c++)
    o->now_kind[c] = kind;
}

/* Rule (e): is the byte at x one a version 2 write-back may write? */
static bool
v2_home (struct fz_io *m, struct oracle *o, uint64_t x)
{
  enum mkind k;

  if (x < o->cs)
    return x >= 24 && x < 72;
  if (!o->now_valid) {
    o->now_clusters = (m->size + o->cs - 1) / o->cs;
    free (o->now_kind);
    o->now_kind = calloc (o->now_clusters ? o->now_clusters : 1, 1);
    if (o->now_kind == NULL)
      abort ();
    walk_metadata (m->data, m->size, mark_now_meta, o);
    o->now_valid = true;
  }
  k = x / o->cs < o->now_clusters ? o->now_kind[x / o->cs] : MK_NONE;
  return k == MK_L1 || k == MK_L2 || k == MK_REFTABLE || k == MK_REFBLOCK;
}

/* The byte at x, open-time metadata, changes from old to new by op
 * [offset, offset+count): allowed by rule (a), (c), (d) or (e), or
 * abort. */
static void
check_change (struct fz_io *m, struct oracle *o, const char *op,
              uint64_t offset, uint64_t count, uint64_t x, uint8_t old,
              uint8_t new)
{
  const uint64_t cluster = x / o->cs * o->cs;
  const char *what = "";

  if (o->v2) {
    if (v2_home (m, o, x)) {
      o->by_rule[4]++;
      return;
    }
    fprintf (stderr, "fuzz-image.c: metadata oracle: a %s of 0x%" PRIx64
             "+0x%" PRIx64 " changes byte 0x%" PRIx64 " of the %s at 0x%"
             PRIx64 " (metadata at open) from 0x%02x to 0x%02x: in a "
             "version 2 image, where only the tables the file names now "
             "and header bytes 24-71 are written (rule e)\n", op, offset,
             count, x, mkind_name[o->kind[x / o->cs]], cluster, old, new);
    abort ();
  }
  if (x < o->cs) {
    what = header_rule (o, x, old, new);
    if (what == NULL) {
      o->by_rule[0]++;
      return;
    }
  }
  else
    for (size_t i = 0; i < o->n_flags; i++)
      if (x == o->flags[i] + 3 && (old ^ new) == 1 && (new & 1)) {
        o->by_rule[3]++;
        return;
      }
  if (*what == '\0' && journal_sets (m, o, x, new)) {
    o->by_rule[2]++;
    return;
  }
  fprintf (stderr, "fuzz-image.c: metadata oracle: a %s of 0x%" PRIx64
           "+0x%" PRIx64 " changes byte 0x%" PRIx64 " of the %s at 0x%"
           PRIx64 " (metadata at open) from 0x%02x to 0x%02x", op, offset,
           count, x, mkind_name[o->kind[x / o->cs]], cluster, old, new);
  if (*what != '\0')
    fprintf (stderr, ": in %s, where no write outside the journal may make "
             "that change (rule a)\n", what);
  else if (o->jsize == 0)
    fprintf (stderr, ": no journal record can justify it: %s (rule c)\n",
             o->why);
  else
    fprintf (stderr, ": no record of the journal at 0x%" PRIx64 "+0x%"
             PRIx64 " (%" PRIu64 " valid transactions from seq %" PRIu64
             ", %zu target ranges; %s) sets it to that value "
             "(rule c)\n", o->jarea, o->jsize, o->n_tx, o->head_seq,
             o->n_rec, o->why);
  abort ();
}

/* Clusters of the open-time metadata that [offset, offset+count) of the
 * file, as long as it is now, meets: calls check_change for each byte
 * whose value changes to buf's (zeroes if buf is NULL). */
static void
check_range (struct fz_io *m, const char *op, const uint8_t *buf,
             uint64_t offset, uint64_t count)
{
  struct oracle *o = m->oracle;

  if (count == 0)
    return;
  for (uint64_t c = offset / o->cs; c < o->nclusters &&
         c <= (offset + count - 1) / o->cs; c++) {
    uint64_t lo = c * o->cs > offset ? c * o->cs : offset;
    uint64_t hi = (c + 1) * o->cs < offset + count ? (c + 1) * o->cs
      : offset + count;

    if (o->kind[c] == MK_NONE)
      continue;
    for (uint64_t x = lo; x < hi; x++) {
      uint8_t old = x < m->size ? m->data[x] : 0;
      uint8_t new = buf ? buf[x - offset] : 0;

      if (old != new)
        check_change (m, o, op, offset, count, x, old, new);
    }
  }
}

/* Has lib changed the file where the decoded journal lies (or written
 * anything while none was found)? */
static void
invalidate (struct oracle *o, uint64_t offset, uint64_t count)
{
  o->now_valid = false;
  if (o->jsize == 0 || offset < o->cs ||
      (offset < o->jarea + o->jsize &&
       (o->jarea <= offset || o->jarea - offset < count)))
    o->decoded = false;
}

static void
oracle_write (struct fz_io *m, const uint8_t *buf, uint64_t count,
              uint64_t offset)
{
  check_range (m, "write", buf, offset, count);
}

/* After a write to cluster 0: if it placed a journal (a Q2JL with a new
 * area or id), its area must overlap no open-time metadata still there. */
static void
oracle_after_write (struct fz_io *m, uint64_t count, uint64_t offset)
{
  struct oracle *o = m->oracle;
  struct hdr h;
  uint64_t area, size, id;

  invalidate (o, offset, count);
  if (offset >= o->cs || !parse_header (m->data, m->size, &h, NULL, NULL) ||
      !q2jl_of (&h, m->data, &area, &size, &id) ||
      (area == o->area && size == o->area_size && id == o->area_id))
    return;
  o->area = area;
  o->area_size = size;
  o->area_id = id;
  trace ("oracle: journal area 0x%" PRIx64 "+0x%" PRIx64, area, size);
  for (uint64_t c = area / o->cs; c < o->nclusters && size > 0 &&
         c <= (area + size - 1) / o->cs; c++)
    if (o->kind[c] != MK_NONE) {
      fprintf (stderr, "fuzz-image.c: metadata oracle: the journal area "
               "0x%" PRIx64 "+0x%" PRIx64 " overlaps the %s at 0x%" PRIx64
               " (metadata at open, not punched since)\n", area, size,
               mkind_name[o->kind[c]], c * o->cs);
      abort ();
    }
}

/* A punch: whole clusters (but cluster 0) stop being open-time metadata
 * (rule b); in part, it zeroes bytes as a write would. */
static void
oracle_punch (struct fz_io *m, uint64_t offset, uint64_t count)
{
  struct oracle *o = m->oracle;
  uint64_t end = offset < m->size && count < m->size - offset
    ? offset + count : m->size;

  for (uint64_t c = offset / o->cs; offset < end && c < o->nclusters &&
         c <= (end - 1) / o->cs; c++) {
    uint64_t cend = (c + 1) * o->cs < m->size ? (c + 1) * o->cs : m->size;

    if (c > 0 && o->kind[c] != MK_NONE && offset <= c * o->cs &&
        end >= cend) {
      trace ("oracle: %s at 0x%" PRIx64 " punched", mkind_name[o->kind[c]],
             c * o->cs);
      o->kind[c] = MK_NONE;
      o->by_rule[1]++;
    }
  }
  if (offset < end)
    check_range (m, "punch", NULL, offset, end - offset);
  invalidate (o, offset, count);
}

/* A truncation loses what lies past the new end: as if zeroed. */
static void
oracle_truncate (struct fz_io *m, uint64_t size)
{
  if (size < m->size)
    check_range (m, "truncation", NULL, size, m->size - size);
  m->oracle->decoded = false;
  m->oracle->now_valid = false;
}

/* The passes ------------------------------------------------------------- */

static const struct qcow2_open_options ro_opts = {
  .l2_cache_bytes = L2_CACHE_BYTES, .lock = false, .writable = false,
};
static const struct qcow2_open_options rw_opts = {
  .l2_cache_bytes = L2_CACHE_BYTES, .lock = false, .writable = true,
};

/* Open data read-only again and serve one of its internal snapshots
 * (like qemu-nbd -l; by id or name, the first of "1" to "4", as QEMU
 * numbers them, from a place the input chooses), then read it: a snapshot's L1 table, L2 tables
 * and disk size, as hostile as the rest of the input. */
static void
snapshot_pass (const uint8_t *data, size_t size, uint64_t *rng)
{
  static const char *const ids[] = { "1", "2", "3", "4" };
  struct fz_io *io = fz_new (data, size, true);
  struct qcow2_image *img = qcow2_open_hostio (&io->io, NULL, &ro_opts);
  struct qcow2_snapshot_choice which = { 0 };
  unsigned first = next (rng) % 4;
  int r = -1;

  if (img == NULL) {
    fz_free (io);
    return;
  }
  /* The first of the ids that names one (a failure for want of a match
   * changes nothing: the next may be tried). */
  if (qcow2_replay_in_memory (img) == 0)
    for (unsigned i = 0; i < 4 && r == -1; i++) {
      which.id_or_name = ids[(first + i) % 4];
      r = qcow2_load_snapshot (img, &which);
      if (r == -1 && errno != ENOENT)
        break;
    }
  if (r == 0) {
    trace ("snapshot %s served", which.id_or_name);
    exercise_reads (img, rng);
    FUZZ_ASSERT (qcow2_pwrite (img, wbuf, 512 < qcow2_size (img) ? 512
                               : qcow2_size (img), 0) == -1 ||
                 qcow2_size (img) == 0);
  }
  FUZZ_ASSERT (qcow2_close (img) == 0);
  fz_free (io);
}

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
  struct qcow2_image *img;
  bool clean = false;
  int r;

  /* What held metadata before lib touches the file: from here to the
   * close, every change lib makes to it is checked. */
  io->oracle = oracle_new (data, size);
  img = qcow2_open_hostio (&io->io, NULL, &rw_opts);
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

struct file_view {
  const uint8_t *data;
  uint64_t size;
};

static void
no_tag_in_meta (void *opaque, enum mkind kind, uint64_t offset, uint64_t len)
{
  const struct file_view *f = opaque;

  if (kind != MK_BITMAP_FLAGS)
    no_tag_in (f->data, f->size, offset, len, mkind_name[kind]);
}

/* No guest write may have landed in the metadata of the image file a
 * clean close left, as walk_metadata finds it (independently of lib). */
static void
check_metadata (const uint8_t *data, uint64_t size)
{
  struct file_view f = { data, size };

  walk_metadata (data, size, no_tag_in_meta, &f);
}

/* Does every host cluster an active L2 entry names (inside the file)
 * have a refcount other than 0?  lib trusts the refcounts to find free
 * space, as QEMU does; in an image where one does not (qemu-img check
 * calls it corrupt) a new cluster may be handed out over data an entry
 * still names, and the content oracle would judge the input, not lib.
 * Extended L2 entries are 16 bytes; compressed entries are left out. */
static bool
refcounts_cover_data (const uint8_t *data, uint64_t size)
{
  const uint64_t omask = 0x00fffffffffffe00ULL;
  struct hdr h;
  uint64_t l1, l1n, rt, rtn, order, per_block, esize;

  if (!parse_header (data, size, &h, NULL, NULL))
    return true;
  l1n = be (data + 36, 4);
  l1 = be (data + 40, 8);
  rt = be (data + 48, 8);
  rtn = be (data + 56, 4) * h.cs / 8;
  order = h.version == 3 ? be (data + 96, 4) : 4;
  esize = h.version == 3 && (be (data + 72, 8) & (1ULL << 4)) ? 16 : 8;
  if (order > 6)
    return true;
  per_block = h.cs * 8 >> order;
  for (uint64_t i = 0; i < l1n && l1 < size && i < (size - l1) / 8; i++) {
    uint64_t l2 = be (data + l1 + 8 * i, 8) & omask;

    if (l2 == 0 || l2 >= size || h.cs > size - l2)
      continue;
    for (uint64_t j = 0; j < h.cs / esize; j++) {
      uint64_t e = be (data + l2 + j * esize, 8), host = e & omask;
      uint64_t c, ti, rb, bit, rc = 0;

      if ((e & (1ULL << 62)) || host == 0 || host >= size)
        continue;
      c = host / h.cs;
      ti = c / per_block;
      if (ti >= rtn || rt >= size || ti >= (size - rt) / 8)
        return false;
      rb = be (data + rt + 8 * ti, 8) & ~511ULL;
      if (rb == 0 || rb >= size || h.cs > size - rb)
        return false;
      bit = (c % per_block) << order;
      if (order < 3)
        rc = data[rb + bit / 8] >> (bit % 8) & ((1u << (1u << order)) - 1);
      else
        rc = be (data + rb + bit / 8, 1u << (order - 3));
      if (rc == 0)
        return false;
    }
  }
  return true;
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

  /* 1: read-only, the active layer and a snapshot. */
  if (read_only_pass (data, size, &rng, false))
    snapshot_pass (data, size, &rng);

  /* 2: writable, with requests. */
  if (write_pass (data, size, &rng, true, &crash_copy, &crash_size,
                  &out, &out_size)) {
    /* 3: what a clean close leaves must open read-only, not dirty, read
     * as written, with no guest data in its metadata (unless the input
     * held the tag already). */
    read_only_pass (out, out_size, &rng, true);
    if (refcounts_cover_data (data, size))
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
