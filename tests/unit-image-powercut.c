/* The whole write path under power cuts.
 *
 * Each trial creates a small image (qcow2_create), loads it into the
 * power-cut simulator, opens it writable with qcow2_open_hostio and runs
 * a random workload of qcow2_pwrite (random data, 512 bytes to 200 KiB,
 * cluster-, sector- and byte-aligned), qcow2_zero (may_trim both ways,
 * sometimes fast), qcow2_trim and qcow2_flush, keeping a model of the
 * guest content: for every 512-byte sector, each version the client gave
 * it.  The checkpoint thread does not run, so checkpoints happen when the
 * journal ring fills (the long trials fill it) and in qcow2_close, which
 * ends half of the trials.
 *
 * Then, for sampled moments of the run (evenly spaced ones; every moment
 * just before a host flush completes, or one in 25 in the long runs; and
 * up to about MAX_DENSE moments, flushes included, of each call that wrote
 * a journal superblock or closed the image: the journal set-up,
 * checkpoints, the close sequence), it builds a file a power cut could
 * leave, opens it writable (qcow2_make_writable replays the journal),
 * reads the whole disk and checks, per sector, the guarantee of
 * docs/journal-format.md section 8:
 *
 * - a sector holds what it held when the last acknowledged qcow2_flush
 *   (or qcow2_close) was called, or a version the client wrote after
 *   that flush, by a call already started at the cut;
 * - a sector never written reads as zeroes;
 * - after a trim the sector may also keep what it held before the trim.
 *
 * (The simulator applies a write smaller than a sector on its own, on
 * whatever the sector holds, as no disk under a page cache would: a sector
 * written in part by a call after another call since the last flush may
 * then mix their bytes.  Only such sectors are checked byte by byte, every
 * byte coming from one of the allowed versions.)
 *
 * The recovered image must then close cleanly; some of them are reopened
 * read-only (same content, journal not dirty) and checked by
 * "qemu-img check" (exit 0: no leak, no corruption).  For some states the
 * power is cut again during the recovery itself (replay, journal set-up,
 * close), and recovering from that must give exactly the same disk.
 *
 * QCOW2J_SLOW=1 runs ten times as many trials.  QCOW2J_SEED=N repeats one
 * (with more moments).  QCOW2J_VERBOSE=1 describes each trial;
 * QCOW2J_KEEP=1 keeps the images qemu-img check refused.
 */
#include <config.h>

#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "create.h"
#include "image.h"
#include "journal-format.h"
#include "log.h"
#include "powercut.h"
#include "qemu-check.h"
#include "unit.h"

extern char **environ;

#define SECTOR ((uint64_t) 512)
#define KiB ((uint64_t) 1024)
#define MiB (1024 * KiB)
#define MAX_IO (200 * KiB)
#define MAX_DENSE 120
#define DENSE_FLUSH_REPS 4

enum content { C_ZERO, C_GEN, C_STORED };

/* One version of a sector. */
struct entry {
  uint32_t op;                  /* the call that wrote it */
  uint8_t kind;                 /* enum content */
  bool trim;                    /* a trim: what it held before may stay */
  bool partial;                 /* the call wrote part of the sector */
  uint32_t data;                /* C_GEN: generating op; C_STORED: index */
  uint64_t hash;
};

struct hist {
  struct entry *e;
  uint32_t n, cap;
};

enum op_type { OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH, OP_CLOSE };

struct op {
  enum op_type type;
  uint64_t start, end;          /* moments before and after the call */
  uint64_t offset, len;
  bool dense;                   /* check many moments inside */
};

/* The image a trial starts from: empty (qcow2_create), or made by
 * qemu-img with data in part of the disk, as compressed clusters, or
 * under an internal snapshot (every cluster shared: each write copies). */
enum base { BASE_EMPTY, BASE_COMPRESSED, BASE_SNAPSHOT };

struct config {
  uint64_t cs, size;
  bool extl2, long_run;
  enum base base;
  bool close;                   /* qcow2_close at the end */
};

static const struct config configs[] = {
  { 4 * KiB, 8 * MiB, false, true, BASE_EMPTY, true },
  { 64 * KiB, 16 * MiB, false, false, BASE_EMPTY, false },
  { 64 * KiB, 8 * MiB, true, false, BASE_COMPRESSED, true },
  { 4 * KiB, 16 * MiB, false, false, BASE_SNAPSHOT, false },
  { 32 * KiB, 8 * MiB, true, true, BASE_EMPTY, false },
  { 16 * KiB, 8 * MiB, false, true, BASE_SNAPSHOT, true },
  { 64 * KiB, 16 * MiB, false, false, BASE_SNAPSHOT, true },
  { 64 * KiB, 8 * MiB, true, false, BASE_SNAPSHOT, false },
  { 4 * KiB, 8 * MiB, false, false, BASE_COMPRESSED, true },
  { 64 * KiB, 8 * MiB, false, false, BASE_COMPRESSED, false },
  { 32 * KiB, 8 * MiB, true, true, BASE_SNAPSHOT, true },
  { 4 * KiB, 8 * MiB, false, true, BASE_COMPRESSED, false },
};
#define NR_CONFIGS (sizeof configs / sizeof configs[0])

/* A hostio in front of the simulator that notices journal superblock
 * writes (set-up, checkpoints, moving the head). */
struct tap {
  struct hostio io;
  struct hostio *inner;
  uint64_t sb_writes, small_sb_writes;
  uint64_t transactions;        /* in the whole trial */
};

struct trial {
  uint64_t seed, rng;
  struct config cfg;
  bool close_at_end;
  uint64_t nsect;
  struct powercut *pc;
  struct tap tap;
  struct qcow2_image *img;
  uint8_t *model;               /* the disk as the client sees it */
  uint8_t *init;                /* and as it was at the start */
  uint64_t *init_hash;
  struct hist *hist;
  uint8_t (*store)[SECTOR];
  uint32_t nstore, cap_store;
  struct op *ops;
  uint32_t nops, cap_ops;
  uint8_t *disk;                /* a recovered disk */
  uint64_t *first_hash;         /* the sector hashes of that disk */
  unsigned printed;
  uint64_t states;
};

static char dir[256];
static uint64_t nr_trials, states, failures, ring_checkpoints;
static uint64_t recovery_cuts, byte_checked, ops_total;
static uint64_t zero_hash;
static bool have_qemu_img;
static unsigned qemu_every = 10;  /* one state in this many */

static void
report (const char *fs, va_list args)
{
  /* No trial expects the library to report an error: print them all. */
  fprintf (stderr, "qcow2j: ");
  vfprintf (stderr, fs, args);
  fputc ('\n', stderr);
}

/* Sector content ------------------------------------------------------- */

static uint64_t
hash_sector (const uint8_t *p)
{
  uint64_t h = 0x243f6a8885a308d3ULL;

  for (unsigned i = 0; i < SECTOR; i += 8) {
    uint64_t w;
    memcpy (&w, p + i, 8);
    h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
  }
  return h;
}

static bool
is_zero (const uint8_t *p, uint64_t n)
{
  for (uint64_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

/* The data op writes to a sector (or the part of it that it covers). */
static void
gen_sector (const struct trial *t, uint32_t op, uint64_t sector, uint8_t *out)
{
  uint64_t r = t->seed * 0xd1b54a32d192ed03ULL ^ (uint64_t) op << 40 ^ sector;

  for (unsigned i = 0; i < SECTOR; i += 8) {
    uint64_t w = pc_rand (&r);
    memcpy (out + i, &w, 8);
  }
}

static void
entry_content (const struct trial *t, const struct entry *e, uint64_t sector,
               uint8_t *out)
{
  if (e == NULL)
    memcpy (out, t->init + sector * SECTOR, SECTOR);
  else if (e->kind == C_ZERO)
    memset (out, 0, SECTOR);
  else if (e->kind == C_GEN)
    gen_sector (t, e->data, sector, out);
  else
    memcpy (out, t->store[e->data], SECTOR);
}

static void
push_entry (struct trial *t, uint64_t s, struct entry e)
{
  struct hist *h = &t->hist[s];

  if (h->n == h->cap) {
    h->cap = h->cap ? h->cap * 2 : 4;
    h->e = realloc (h->e, h->cap * sizeof *h->e);
    CHECK (h->e != NULL);
  }
  h->e[h->n++] = e;
}

/* Record the model's sector s as the version op wrote. */
static void
note_sector (struct trial *t, uint64_t s, uint32_t op, bool full, bool gen,
             bool trim)
{
  const uint8_t *p = t->model + s * SECTOR;
  struct entry e = { .op = op, .trim = trim, .partial = !full,
                     .hash = hash_sector (p) };

  if (e.hash == zero_hash && is_zero (p, SECTOR))
    e.kind = C_ZERO;
  else if (full && gen) {
    e.kind = C_GEN;
    e.data = op;
  }
  else {
    if (t->nstore == t->cap_store) {
      t->cap_store = t->cap_store ? t->cap_store * 2 : 64;
      t->store = realloc (t->store, t->cap_store * sizeof *t->store);
      CHECK (t->store != NULL);
    }
    memcpy (t->store[t->nstore], p, SECTOR);
    e.kind = C_STORED;
    e.data = t->nstore++;
  }
  push_entry (t, s, e);
}

/* The tap --------------------------------------------------------------- */

static int
tap_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  return hostio_pread (((struct tap *) io)->inner, buf, count, offset);
}

static int
tap_pwrite (struct hostio *io, const void *buf, size_t count, uint64_t offset)
{
  struct tap *tp = (struct tap *) io;

  if (count >= 8 && memcmp (buf, QJ_SB_MAGIC, 8) == 0) {
    tp->sb_writes++;
    if (count < QJ_BLOCK)
      tp->small_sb_writes++;    /* not journal_create */
  }
  if (count >= 4 && memcmp (buf, QJ_TX_MAGIC, 4) == 0)
    tp->transactions++;
  return hostio_pwrite (tp->inner, buf, count, offset);
}

static int
tap_flush (struct hostio *io)
{
  return hostio_flush (((struct tap *) io)->inner);
}

static int
tap_punch (struct hostio *io, uint64_t offset, uint64_t count)
{
  struct hostio *in = ((struct tap *) io)->inner;
  return in->ops->punch (in, offset, count);
}

static int
tap_truncate (struct hostio *io, uint64_t size)
{
  struct hostio *in = ((struct tap *) io)->inner;
  return in->ops->truncate (in, size);
}

static int64_t
tap_size (struct hostio *io)
{
  return hostio_size (((struct tap *) io)->inner);
}

static int
tap_block_status (struct hostio *io, uint64_t offset, uint64_t count,
                  bool *is_data, uint64_t *run)
{
  struct hostio *in = ((struct tap *) io)->inner;
  return in->ops->block_status (in, offset, count, is_data, run);
}

static void
tap_close (struct hostio *io)
{
}

static const struct hostio_ops tap_ops = {
  .pread = tap_pread, .pwrite = tap_pwrite, .flush = tap_flush,
  .punch = tap_punch, .truncate = tap_truncate, .size = tap_size,
  .block_status = tap_block_status, .close = tap_close,
};

/* A plain in-memory file owning a malloc'd buffer (a crash state), for
 * recoveries whose own writes need not be recorded. */
struct buf_io {
  struct hostio io;
  uint8_t *data;
  uint64_t size, cap;
};

static void
buf_reserve (struct buf_io *b, uint64_t size)
{
  if (size <= b->cap)
    return;
  b->cap = size + size / 4;
  b->data = realloc (b->data, b->cap);
  CHECK (b->data != NULL);
}

static int
buf_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  struct buf_io *b = (struct buf_io *) io;
  uint64_t avail = offset < b->size ? b->size - offset : 0;

  if (avail > count)
    avail = count;
  memcpy (buf, b->data + offset, avail);
  memset ((uint8_t *) buf + avail, 0, count - avail);
  return 0;
}

static int
buf_pwrite (struct hostio *io, const void *buf, size_t count, uint64_t offset)
{
  struct buf_io *b = (struct buf_io *) io;

  if (offset + count > b->size) {
    buf_reserve (b, offset + count);
    memset (b->data + b->size, 0, offset + count - b->size);
    b->size = offset + count;
  }
  memcpy (b->data + offset, buf, count);
  return 0;
}

static int
buf_flush (struct hostio *io)
{
  return 0;
}

static int
buf_punch (struct hostio *io, uint64_t offset, uint64_t count)
{
  struct buf_io *b = (struct buf_io *) io;

  if (offset < b->size)
    memset (b->data + offset, 0,
            (offset + count > b->size ? b->size : offset + count) - offset);
  return 0;
}

static int
buf_truncate (struct hostio *io, uint64_t size)
{
  struct buf_io *b = (struct buf_io *) io;

  if (size > b->size) {
    buf_reserve (b, size);
    memset (b->data + b->size, 0, size - b->size);
  }
  b->size = size;
  return 0;
}

static int64_t
buf_size (struct hostio *io)
{
  return ((struct buf_io *) io)->size;
}

static int
buf_block_status (struct hostio *io, uint64_t offset, uint64_t count,
                  bool *is_data, uint64_t *run)
{
  *is_data = true;
  *run = count;
  return 0;
}

static const struct hostio_ops buf_ops = {
  .pread = buf_pread, .pwrite = buf_pwrite, .flush = buf_flush,
  .punch = buf_punch, .truncate = buf_truncate, .size = buf_size,
  .block_status = buf_block_status, .close = tap_close,
};

/* A crash state to recover: recorded (so that the power can be cut
 * during the recovery too) or not. */
struct target {
  struct powercut *pc;
  struct buf_io b;
};

static void
target_init (struct target *tg, uint8_t *data, uint64_t size, bool record)
{
  memset (tg, 0, sizeof *tg);
  if (record) {
    tg->pc = powercut_new ("crash", data, size);
    free (data);
  }
  else {
    tg->b.io.ops = &buf_ops;
    tg->b.io.name = (char *) "crash";
    tg->b.data = data;
    tg->b.size = tg->b.cap = size;
  }
}

static struct hostio *
target_io (struct target *tg)
{
  return tg->pc ? powercut_io (tg->pc) : &tg->b.io;
}

static const uint8_t *
target_data (struct target *tg, uint64_t *size)
{
  if (tg->pc)
    return powercut_data (tg->pc, size);
  *size = tg->b.size;
  return tg->b.data;
}

static void
target_free (struct target *tg)
{
  if (tg->pc)
    powercut_free (tg->pc);
  free (tg->b.data);
}

/* At exit, a failed CHECK included: no scratch file left behind. */
static void
cleanup (void)
{
  char path[300];

  qemu_check_cleanup ();
  snprintf (path, sizeof path, "%s/base.raw", dir);
  unlink (path);
  snprintf (path, sizeof path, "%s/base.qcow2", dir);
  unlink (path);
  rmdir (dir);
}

/* The workload ------------------------------------------------------------ */

static uint32_t
begin_op (struct trial *t, enum op_type type, uint64_t offset, uint64_t len)
{
  struct op *o;

  if (t->nops == t->cap_ops) {
    t->cap_ops = t->cap_ops ? t->cap_ops * 2 : 256;
    t->ops = realloc (t->ops, t->cap_ops * sizeof *t->ops);
    CHECK (t->ops != NULL);
  }
  o = &t->ops[t->nops];
  memset (o, 0, sizeof *o);
  o->type = type;
  o->offset = offset;
  o->len = len;
  o->start = powercut_moment (t->pc);
  t->tap.sb_writes = t->tap.small_sb_writes = 0;
  return t->nops++;
}

static void
end_op (struct trial *t, uint32_t op)
{
  struct op *o = &t->ops[op];

  o->end = powercut_moment (t->pc);
  o->dense = t->tap.sb_writes > 0 || o->type == OP_CLOSE;
  if (t->tap.small_sb_writes > 0 && o->type != OP_CLOSE)
    ring_checkpoints++;
  ops_total++;
}

/* A random range: cluster-aligned, sector-aligned or byte-aligned. */
static void
pick_range (struct trial *t, bool small, bool bytes_ok,
            uint64_t *offset, uint64_t *len)
{
  const uint64_t cs = t->cfg.cs;
  /* Long runs mostly churn a hot region: writes, zeroes and trims there
   * keep changing mappings, so that most flushes commit a transaction. */
  const uint64_t size = t->cfg.long_run && pc_rand (&t->rng) % 4 != 0
    ? 1 * MiB : t->cfg.size;
  uint64_t mode = pc_rand (&t->rng) % 10;
  uint64_t max = small ? 8 * KiB : pc_rand (&t->rng) % 4 ? 32 * KiB : MAX_IO;
  uint64_t n = SECTOR + pc_rand (&t->rng) % (max - SECTOR + 1);

  if (mode < 4 || (t->cfg.long_run && mode < 7)) {
    uint64_t nc = 1 + n / cs;
    if (nc * cs > MAX_IO)
      nc = MAX_IO / cs ? MAX_IO / cs : 1;
    if (small && nc > 2)
      nc = 1 + pc_rand (&t->rng) % 2;
    *len = nc * cs;
    *offset = pc_rand (&t->rng) % (size / cs - nc + 1) * cs;
  }
  else if (mode < 8 || !bytes_ok || (t->cfg.long_run && mode < 9)) {
    *len = (n + SECTOR - 1) / SECTOR * SECTOR;
    *offset = pc_rand (&t->rng) % ((size - *len) / SECTOR + 1) * SECTOR;
  }
  else {
    *len = n;
    *offset = pc_rand (&t->rng) % (size - n + 1);
  }
  /* Now and then at the very end of the disk. */
  if (pc_rand (&t->rng) % 20 == 0)
    *offset = t->cfg.size - *len;
}

static void
do_write (struct trial *t, bool small)
{
  uint64_t offset, len, s0, s1;
  uint8_t *buf, g[SECTOR];
  uint32_t op;

  pick_range (t, small, true, &offset, &len);
  s0 = offset / SECTOR;
  s1 = (offset + len + SECTOR - 1) / SECTOR;
  buf = malloc (len);
  CHECK (buf != NULL);
  op = t->nops;
  for (uint64_t s = s0; s < s1; s++) {
    uint64_t a = s * SECTOR > offset ? s * SECTOR : offset;
    uint64_t b = (s + 1) * SECTOR < offset + len ? (s + 1) * SECTOR
      : offset + len;
    gen_sector (t, op, s, g);
    memcpy (buf + (a - offset), g + (a - s * SECTOR), b - a);
  }
  CHECK (begin_op (t, OP_WRITE, offset, len) == op);
  if (qcow2_pwrite (t->img, buf, len, offset) != 0) {
    fprintf (stderr, "seed %" PRIu64 ": qcow2_pwrite (%" PRIu64 ", %"
             PRIu64 ") failed: %m\n", t->seed, len, offset);
    exit (EXIT_FAILURE);
  }
  end_op (t, op);
  memcpy (t->model + offset, buf, len);
  for (uint64_t s = s0; s < s1; s++)
    note_sector (t, s, op, s * SECTOR >= offset &&
                 (s + 1) * SECTOR <= offset + len, true, false);
  free (buf);
}

static void
do_zero (struct trial *t, bool small)
{
  uint64_t offset, len, s0, s1;
  bool may_trim = pc_rand (&t->rng) & 1;
  bool fast = pc_rand (&t->rng) % 5 == 0;
  uint32_t op;
  int r;

  pick_range (t, small, true, &offset, &len);
  s0 = offset / SECTOR;
  s1 = (offset + len + SECTOR - 1) / SECTOR;
  op = begin_op (t, OP_ZERO, offset, len);
  r = qcow2_zero (t->img, len, offset, may_trim, fast);
  end_op (t, op);
  if (r != 0) {
    if (fast && errno == ENOTSUP)
      return;                   /* nothing changed: the final check says */
    fprintf (stderr, "seed %" PRIu64 ": qcow2_zero (%" PRIu64 ", %"
             PRIu64 ") failed: %m\n", t->seed, len, offset);
    exit (EXIT_FAILURE);
  }
  memset (t->model + offset, 0, len);
  for (uint64_t s = s0; s < s1; s++)
    note_sector (t, s, op, s * SECTOR >= offset &&
                 (s + 1) * SECTOR <= offset + len, false, false);
}

static void
do_trim (struct trial *t, bool small)
{
  uint64_t offset, len, s0, s1;
  uint8_t *live;
  uint32_t op;

  pick_range (t, small, true, &offset, &len);
  s0 = offset / SECTOR;
  s1 = (offset + len + SECTOR - 1) / SECTOR;
  op = begin_op (t, OP_TRIM, offset, len);
  CHECK (qcow2_trim (t->img, len, offset) == 0);
  end_op (t, op);
  /* What the trim did: whole sectors of the range may read as zeroes now;
   * nothing else may change. */
  live = malloc ((s1 - s0) * SECTOR);
  CHECK (live != NULL);
  CHECK (qcow2_pread (t->img, live, (s1 - s0) * SECTOR, s0 * SECTOR) == 0);
  for (uint64_t s = s0; s < s1; s++) {
    const uint8_t *p = live + (s - s0) * SECTOR;
    bool full = s * SECTOR >= offset && (s + 1) * SECTOR <= offset + len;

    if (memcmp (p, t->model + s * SECTOR, SECTOR) == 0)
      continue;
    if (!full || !is_zero (p, SECTOR)) {
      fprintf (stderr, "seed %" PRIu64 ": trim (%" PRIu64 ", %" PRIu64
               ") changed sector %" PRIu64 " to something else than "
               "zeroes\n", t->seed, len, offset, s);
      failures++;
    }
    memcpy (t->model + s * SECTOR, p, SECTOR);
    note_sector (t, s, op, true, false, true);
  }
  free (live);
}

static void
do_flush (struct trial *t)
{
  uint32_t op = begin_op (t, OP_FLUSH, 0, 0);

  if (qcow2_flush (t->img) != 0) {
    fprintf (stderr, "seed %" PRIu64 ": qcow2_flush failed: %m\n", t->seed);
    exit (EXIT_FAILURE);
  }
  end_op (t, op);
}

/* The live image reads as the model. */
static void
check_live (struct trial *t)
{
  uint8_t *buf = malloc (t->cfg.size);

  CHECK (buf != NULL);
  CHECK (qcow2_pread (t->img, buf, t->cfg.size, 0) == 0);
  for (uint64_t s = 0; s < t->nsect; s++)
    if (memcmp (buf + s * SECTOR, t->model + s * SECTOR, SECTOR) != 0) {
      fprintf (stderr, "seed %" PRIu64 ": the live image differs from the "
               "model at sector %" PRIu64 "\n", t->seed, s);
      failures++;
      break;
    }
  free (buf);
}

/* Run a command; its exit status, or -1. */
static int __attribute__ ((format (printf, 1, 2)))
run (const char *fs, ...)
{
  char cmd[1024];
  va_list args;
  int r;

  va_start (args, fs);
  vsnprintf (cmd, sizeof cmd, fs, args);
  va_end (args);
  r = system (cmd);
  return r == -1 || !WIFEXITED (r) ? -1 : WEXITSTATUS (r);
}

/* An image made by qemu-img holding t->init: data in about half of the
 * disk, in runs of sectors (compressible: zlib must want it), compressed
 * or under an internal snapshot. */
static void
make_base (struct trial *t, const char *path)
{
  char raw[300];
  int fd;

  for (uint64_t pos = 0; pos < t->cfg.size; ) {
    uint64_t n = SECTOR * (1 + pc_rand (&t->rng) % 256);
    bool data = pc_rand (&t->rng) & 1;

    if (n > t->cfg.size - pos)
      n = t->cfg.size - pos;
    for (uint64_t i = 0; data && i < n; i++)
      t->init[pos + i] = ((pos + i) / SECTOR * 7 + i / 64) % 251 + 1;
    pos += n;
  }
  snprintf (raw, sizeof raw, "%s/base.raw", dir);
  fd = open (raw, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK (fd >= 0);
  CHECK (pwrite (fd, t->init, t->cfg.size, 0) == (ssize_t) t->cfg.size);
  CHECK (close (fd) == 0);
  CHECK (run ("qemu-img convert -q -f raw -O qcow2 %s -o cluster_size=%"
              PRIu64 "%s '%s' '%s'",
              t->cfg.base == BASE_COMPRESSED ? "-c" : "", t->cfg.cs,
              t->cfg.extl2 ? ",extended_l2=on" : "", raw, path) == 0);
  if (t->cfg.base == BASE_SNAPSHOT)
    CHECK (run ("qemu-img snapshot -c before '%s'", path) == 0);
  unlink (raw);
}

static void
run_workload (struct trial *t, unsigned nops)
{
  struct qcow2_open_options opts = { .writable = true };
  char path[300];
  uint8_t *data;
  struct stat st;
  int fd;

  snprintf (path, sizeof path, "%s/base.qcow2", dir);
  if (t->cfg.base == BASE_EMPTY || !have_qemu_img)
    CHECK (qcow2_create (path, t->cfg.size, t->cfg.cs, t->cfg.extl2,
                         false) == 0);
  else
    make_base (t, path);
  for (uint64_t s = 0; s < t->nsect; s++)
    t->init_hash[s] = hash_sector (t->init + s * SECTOR);
  memcpy (t->model, t->init, t->cfg.size);
  fd = open (path, O_RDONLY);
  CHECK (fd >= 0);
  CHECK (fstat (fd, &st) == 0);
  data = malloc (st.st_size);
  CHECK (data != NULL);
  CHECK (pread (fd, data, st.st_size, 0) == st.st_size);
  close (fd);
  unlink (path);
  t->pc = powercut_new ("image", data, st.st_size);
  free (data);
  t->tap.io.ops = &tap_ops;
  t->tap.io.name = (char *) "image";
  t->tap.inner = powercut_io (t->pc);

  /* A small metadata cache now and then, so that slices are evicted. */
  if (pc_rand (&t->rng) % 3 == 0)
    opts.l2_cache_bytes = 64 * KiB;
  t->img = qcow2_open_hostio (&t->tap.io, NULL, &opts);
  CHECK (t->img != NULL);
  CHECK (qcow2_prepare_writable (t->img) == 0);
  check_live (t);

  for (unsigned i = 0; i < nops; i++) {
    uint64_t r = pc_rand (&t->rng) % 100;
    bool small = t->cfg.long_run ? pc_rand (&t->rng) % 8 != 0
      : pc_rand (&t->rng) % 3 == 0;

    /* Long runs flush after most calls, to commit many small
     * transactions and fill the journal ring. */
    if (t->cfg.long_run)
      r = i % 2 == 0 ? r * 66 / 100 : r < 85 ? 66 : 45;
    if (r < 45)
      do_write (t, small);
    else if (r < 58)
      do_zero (t, small);
    else if (r < 66)
      do_trim (t, small);
    else
      do_flush (t);
  }
  check_live (t);
  if (t->close_at_end) {
    uint32_t op = begin_op (t, OP_CLOSE, 0, 0);
    CHECK (qcow2_close (t->img) == 0);
    end_op (t, op);
    t->img = NULL;
  }
}

/* Checking a crash state ---------------------------------------------------- */

/* The last call of flush or close completed at moment, or -1. */
static int64_t
last_acked_flush (const struct trial *t, uint64_t moment)
{
  for (uint32_t i = t->nops; i-- > 0; )
    if ((t->ops[i].type == OP_FLUSH || t->ops[i].type == OP_CLOSE) &&
        t->ops[i].end <= moment)
      return i;
  return -1;
}

/* The allowed versions of sector s: the one flushed (and what it
 * replaced, for a trim), and those written since by calls started
 * before the cut.  Returns how many were put in out[]. */
static size_t
allowed_versions (const struct trial *t, uint64_t s, int64_t flushed,
                  uint64_t moment, const struct entry **out, size_t max,
                  unsigned *partial_after)
{
  const struct hist *h = &t->hist[s];
  int64_t fi = -1;
  size_t n = 0;

  *partial_after = 0;
  for (uint32_t k = 0; k < h->n && (int64_t) h->e[k].op < flushed; k++)
    fi = k;
  /* NULL stands for the initial content (zeroes in an empty image). */
  if (fi < 0)
    out[n++] = NULL;
  else {
    int64_t k = fi;
    out[n++] = &h->e[k];
    while (h->e[k].trim && n < max) {
      k--;
      out[n++] = k >= 0 ? &h->e[k] : NULL;
      if (k < 0)
        break;
    }
  }
  for (uint32_t k = fi + 1; k < h->n && n < max; k++) {
    if (t->ops[h->e[k].op].start >= moment)
      break;
    out[n++] = &h->e[k];
    /* A sub-sector write that the simulator may apply alone on a sector
     * that other writes since the flush may or may not have reached. */
    if (h->e[k].partial && k > fi + 1)
      (*partial_after)++;
  }
  return n;
}

static const char *
op_name (enum op_type type)
{
  switch (type) {
  case OP_WRITE: return "write";
  case OP_ZERO: return "zero";
  case OP_TRIM: return "trim";
  case OP_FLUSH: return "flush";
  case OP_CLOSE: return "close";
  }
  return "?";
}

/* Explain a bad sector. */
static void
describe_bad (struct trial *t, uint64_t s, const uint8_t *p, int64_t flushed,
              uint64_t moment)
{
  const struct hist *h = &t->hist[s];
  uint64_t hs = hash_sector (p);
  bool known = false;

  fprintf (stderr, "  sector %" PRIu64 " (guest 0x%" PRIx64 "): ", s,
           s * SECTOR);
  if (is_zero (p, SECTOR))
    fprintf (stderr, "zeroes");
  else
    fprintf (stderr, "%02x %02x %02x %02x...", p[0], p[1], p[2], p[3]);
  for (uint32_t k = 0, shown = 0; k < h->n && shown < 3; k++)
    if (h->e[k].hash == hs && hs != zero_hash) {
      const struct op *o = &t->ops[h->e[k].op];

      shown++;
      fprintf (stderr, "%s the version of call %" PRIu32 " (%s %" PRIu64
               " at 0x%" PRIx64 ", moments %" PRIu64 "-%" PRIu64 ")",
               known ? "," : " =", h->e[k].op, op_name (o->type), o->len,
               o->offset, o->start, o->end);
      known = true;
    }
  fprintf (stderr, "%s; last acknowledged flush: call %" PRId64
           "; versions:", known || hs == zero_hash ? ""
           : " (no version the client wrote)", flushed);
  {
    uint32_t k0 = 0, shown = 0;
    for (uint32_t k = 0; k < h->n; k++)
      if ((int64_t) h->e[k].op < flushed)
        k0 = k;
    k0 = k0 > 3 ? k0 - 3 : 0;
    if (k0 > 0)
      fprintf (stderr, " ...");
    for (uint32_t k = k0; k < h->n && shown < 12; k++, shown++)
      fprintf (stderr, " %" PRIu32 "%s%s%s", h->e[k].op,
               h->e[k].kind == C_ZERO ? "z" : "",
               h->e[k].partial ? "p" : "",
               t->ops[h->e[k].op].start >= moment ? "(later)" : "");
  }
  fprintf (stderr, "\n");
}

/* Check a recovered disk (t->disk); returns the number of bad sectors. */
static uint64_t
check_disk (struct trial *t, uint64_t moment)
{
  int64_t flushed = last_acked_flush (t, moment);
  uint64_t bad = 0;
  const struct entry *allowed[1024];

  for (uint64_t s = 0; s < t->nsect; s++) {
    const uint8_t *p = t->disk + s * SECTOR;
    uint64_t hs = hash_sector (p);
    unsigned partial_after;
    size_t n = allowed_versions (t, s, flushed, moment, allowed, 1024,
                                 &partial_after);
    bool ok = false;

    t->first_hash[s] = hs;
    for (size_t i = 0; i < n && !ok; i++)
      ok = (allowed[i] ? allowed[i]->hash : t->init_hash[s]) == hs;
    if (!ok && partial_after > 0) {
      /* Bytes of several sub-sector writes: each byte from a version. */
      uint8_t (*v)[SECTOR] = malloc (n * SECTOR);
      CHECK (v != NULL);
      for (size_t i = 0; i < n; i++)
        entry_content (t, allowed[i], s, v[i]);
      ok = true;
      for (unsigned b = 0; b < SECTOR && ok; b++) {
        bool any = false;
        for (size_t i = 0; i < n && !any; i++)
          any = v[i][b] == p[b];
        ok = any;
      }
      free (v);
      if (ok)
        byte_checked++;
    }
    if (!ok) {
      if (bad < 4 && t->printed < 8)
        describe_bad (t, s, p, flushed, moment);
      bad++;
    }
  }
  return bad;
}

/* Open, make writable (replaying), read the whole disk into t->disk. */
static bool
recover (struct trial *t, struct hostio *io, const char *what)
{
  struct qcow2_open_options opts = { .writable = true,
                                     .l2_cache_bytes = 1 * MiB };
  struct qcow2_image *img = qcow2_open_hostio (io, NULL, &opts);

  if (img == NULL) {
    fprintf (stderr, "%s: qcow2_open_hostio failed: %m\n", what);
    return false;
  }
  if (qcow2_make_writable (img) == -1) {
    fprintf (stderr, "%s: qcow2_make_writable failed: %m\n", what);
    qcow2_close (img);
    return false;
  }
  if (qcow2_pread (img, t->disk, t->cfg.size, 0) == -1) {
    fprintf (stderr, "%s: reading the disk failed: %m\n", what);
    qcow2_close (img);
    return false;
  }
  if (qcow2_close (img) == -1) {
    fprintf (stderr, "%s: qcow2_close failed: %m\n", what);
    return false;
  }
  return true;
}

/* The closed image reopens read-only, clean, with the same content. */
static bool
reopen_same (struct trial *t, struct hostio *io, const char *what)
{
  struct qcow2_open_options opts = { .l2_cache_bytes = 1 * MiB };
  struct qcow2_image *img = qcow2_open_hostio (io, NULL, &opts);
  bool ok = true;

  if (img == NULL) {
    fprintf (stderr, "%s: reopening after close failed: %m\n", what);
    return false;
  }
  if (qcow2_journal_dirty (img)) {
    fprintf (stderr, "%s: journal dirty after a clean close\n", what);
    ok = false;
  }
  else if (qcow2_pread (img, t->disk, t->cfg.size, 0) == -1) {
    fprintf (stderr, "%s: reading after close failed: %m\n", what);
    ok = false;
  }
  else
    for (uint64_t s = 0; s < t->nsect && ok; s++)
      if (hash_sector (t->disk + s * SECTOR) != t->first_hash[s]) {
        fprintf (stderr, "%s: sector %" PRIu64 " changed across close\n",
                 what, s);
        ok = false;
      }
  qcow2_close (img);
  return ok;
}

static void
check_moment (struct trial *t, uint64_t moment, bool final)
{
  uint8_t *crash;
  uint64_t crash_size, bad;
  struct target tg;
  char what[200];
  bool ok, cut_again = pc_rand (&t->rng) % 6 == 0;
  bool qemu = final || pc_rand (&t->rng) % qemu_every == 0;

  snprintf (what, sizeof what, "seed %" PRIu64 ", moment %" PRIu64 "/%"
            PRIu64, t->seed, moment, powercut_moment (t->pc));
  powercut_crash_state (t->pc, moment, &t->rng, &crash, &crash_size);
  target_init (&tg, crash, crash_size, cut_again);
  states++;
  t->states++;

  ok = recover (t, target_io (&tg), what);
  if (ok) {
    bad = check_disk (t, moment);
    if (bad > 0) {
      fprintf (stderr, "%s: %" PRIu64 " sectors hold what they may not\n",
               what, bad);
      ok = false;
    }
  }
  if (ok && qemu) {
    ok = reopen_same (t, target_io (&tg), what);
    if (have_qemu_img) {
      uint64_t size;
      const uint8_t *d = target_data (&tg, &size);
      qemu_check_start (dir, d, size, what);
    }
  }

  /* The power fails again during the recovery: recovering from that
   * gives the same disk. */
  if (ok && cut_again) {
    uint64_t n2 = powercut_moment (tg.pc);
    uint64_t m2 = pc_rand (&t->rng) % (n2 + 1);
    uint8_t *crash2;
    uint64_t crash2_size;
    struct target tg2;
    char what2[260];

    /* Half the time just before one of the recovery's flushes
     * completes. */
    if (pc_rand (&t->rng) & 1) {
      uint64_t nf = 0, k;
      for (uint64_t i = 0; i < n2; i++)
        nf += powercut_is_flush (tg.pc, i);
      k = nf ? pc_rand (&t->rng) % nf : 0;
      for (uint64_t i = 0; i < n2 && nf; i++)
        if (powercut_is_flush (tg.pc, i) && k-- == 0) {
          m2 = i;
          break;
        }
    }
    snprintf (what2, sizeof what2, "%s, recovery cut at %" PRIu64 "/%"
              PRIu64, what, m2, n2);
    powercut_crash_state (tg.pc, m2, &t->rng, &crash2, &crash2_size);
    target_init (&tg2, crash2, crash2_size, false);
    recovery_cuts++;
    ok = recover (t, target_io (&tg2), what2);
    for (uint64_t s = 0; s < t->nsect && ok; s++)
      if (hash_sector (t->disk + s * SECTOR) != t->first_hash[s]) {
        fprintf (stderr, "%s: sector %" PRIu64 " differs from the first "
                 "recovery\n", what2, s);
        ok = false;
      }
    target_free (&tg2);
  }
  if (!ok) {
    failures++;
    t->printed++;
  }
  target_free (&tg);
}

static void
run_trial (uint64_t seed, unsigned samples)
{
  struct trial *t = calloc (1, sizeof *t);
  uint64_t moments, before = failures, next = 0;
  uint64_t dense_m = 0, file_size;
  uint32_t dense_op = 0;
  unsigned nops, flush_every;
  struct timespec t0, t1, t2;

  CHECK (t != NULL);
  t->seed = seed;
  t->rng = seed;
  t->cfg = configs[seed % NR_CONFIGS];
  t->close_at_end = t->cfg.close;
  t->nsect = t->cfg.size / SECTOR;
  t->model = calloc (1, t->cfg.size);
  t->init = calloc (1, t->cfg.size);
  t->init_hash = malloc (t->nsect * sizeof *t->init_hash);
  t->disk = malloc (t->cfg.size);
  t->first_hash = malloc (t->nsect * sizeof *t->first_hash);
  t->hist = calloc (t->nsect, sizeof *t->hist);
  CHECK (t->model && t->init && t->init_hash && t->disk && t->first_hash &&
         t->hist);

  nops = t->cfg.long_run ? 5000 : 150 + pc_rand (&t->rng) % 150;
  clock_gettime (CLOCK_MONOTONIC, &t0);
  run_workload (t, nops);
  clock_gettime (CLOCK_MONOTONIC, &t1);
  nr_trials++;

  /* Moments in increasing order (cheap for the simulator): evenly spaced
   * ones; moments just before a host flush completes (all of them in
   * short runs, one in flush_every in long ones); many moments of the
   * calls that set up the journal, checkpointed or closed. */
  moments = powercut_moment (t->pc);
  powercut_data (t->pc, &file_size);
  flush_every = t->cfg.long_run ? 25 : 1;
  for (uint64_t m = 0, nflush = 0; m <= moments; m++) {
    bool dense = false, take = false;
    unsigned reps = 1;

    while (dense_op < t->nops && t->ops[dense_op].end < m)
      dense_op++;
    for (uint32_t i = dense_op; i < t->nops && t->ops[i].start <= m; i++)
      if (t->ops[i].dense && m >= t->ops[i].start && m <= t->ops[i].end) {
        /* At most about MAX_DENSE moments of each (a checkpoint of many
         * slices has hundreds), and all its flush moments. */
        uint64_t stride = 1 + (t->ops[i].end - t->ops[i].start) / MAX_DENSE;
        dense = (m - t->ops[i].start) % stride == 0 || m == t->ops[i].end ||
          powercut_is_flush (t->pc, m);
        /* Just before one of their flushes completes: several subsets
         * of the writes in flight (a checkpoint's pages, its superblock,
         * the header words). */
        if (powercut_is_flush (t->pc, m))
          reps = DENSE_FLUSH_REPS;
        break;
      }
    if (powercut_is_flush (t->pc, m) && nflush++ % flush_every == 0)
      take = true;
    if (m == next) {
      take = true;
      next += 1 + moments / samples;
    }
    if (dense) {
      take = true;
      dense_m++;
    }
    for (unsigned r = 0; take && m < moments && r < reps; r++)
      check_moment (t, m, false);
  }
  check_moment (t, moments, true);
  failures += qemu_check_wait_all ();
  clock_gettime (CLOCK_MONOTONIC, &t2);
  if (getenv ("QCOW2J_VERBOSE"))
    fprintf (stderr, "seed %" PRIu64 ": cs %" PRIu64 "%s%s, %" PRIu64
             " MiB, %u calls%s, %" PRIu64 " moments (%" PRIu64
             " in set-up/checkpoint/close), %" PRIu64 " transactions, %"
             PRIu64 " crash states; %.1f s + %.1f s; file %" PRIu64 " MiB\n",
             seed, t->cfg.cs, t->cfg.extl2 ? " extl2" : "",
             t->cfg.base == BASE_COMPRESSED ? " compressed"
             : t->cfg.base == BASE_SNAPSHOT ? " snapshot" : "",
             t->cfg.size / MiB, t->nops,
             t->close_at_end ? " + close" : "", moments, dense_m,
             t->tap.transactions, t->states,
             (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9,
             (t2.tv_sec - t1.tv_sec) + (t2.tv_nsec - t1.tv_nsec) / 1e9,
             file_size / MiB);
  if (failures > before)
    fprintf (stderr, "trial with seed %" PRIu64 " failed (QCOW2J_SEED=%"
             PRIu64 " repeats it)\n", seed, seed);

  if (t->img)
    qcow2_close (t->img);       /* after the checks: it writes */
  powercut_free (t->pc);
  for (uint64_t s = 0; s < t->nsect; s++)
    free (t->hist[s].e);
  free (t->hist);
  free (t->store);
  free (t->ops);
  free (t->model);
  free (t->init);
  free (t->init_hash);
  free (t->disk);
  free (t->first_hash);
  free (t);
}

int
main (void)
{
  const char *slow = getenv ("QCOW2J_SLOW");
  const char *seed_env = getenv ("QCOW2J_SEED");
  const char *tmp = getenv ("TMPDIR");
  unsigned trials = slow && *slow == '1' ? 120 : 12;
  uint8_t zero[SECTOR] = { 0 };

  /* Keep the large buffers of crash states in the heap. */
  mallopt (M_MMAP_THRESHOLD, 32 * MiB);
  mallopt (M_TRIM_THRESHOLD, 256 * MiB);
  qlog_set_handlers (report, NULL);
  zero_hash = hash_sector (zero);
  have_qemu_img = system ("qemu-img --version >/dev/null 2>&1") == 0;
  if (!have_qemu_img)
    fprintf (stderr, "unit-image-powercut: qemu-img not found: "
             "images are not checked by QEMU\n");
  /* Scratch images for qemu-img: in memory if possible (hundreds of
   * them, written and removed at once: no use writing them back). */
  snprintf (dir, sizeof dir, "/dev/shm/qcow2j-powercut.XXXXXX");
  if (mkdtemp (dir) == NULL) {
    snprintf (dir, sizeof dir, "%s/qcow2j-powercut.XXXXXX",
              tmp && *tmp ? tmp : "/tmp");
    CHECK (mkdtemp (dir) != NULL);
  }

  atexit (cleanup);

  if (seed_env) {
    run_trial (strtoull (seed_env, NULL, 0), 2000);
    trials = 1;
  }
  else
    for (unsigned i = 0; i < trials; i++)
      run_trial (1000 + i, 150);
  failures += qemu_check_wait_all ();
  printf ("unit-image-powercut: %u trials, %" PRIu64 " crash states, %"
          PRIu64 " qemu-img checks, %" PRIu64 " failures\n",
          trials, states, qemu_check_started (), failures);
  printf ("unit-image-powercut: %" PRIu64 " calls, %" PRIu64
          " checkpoints on a full ring, %" PRIu64 " cuts during recovery, %"
          PRIu64 " sectors checked byte by byte\n",
          ops_total, ring_checkpoints, recovery_cuts, byte_checked);
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
