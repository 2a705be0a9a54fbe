/* The whole write path under power cuts.
 *
 * Each trial creates a small image (see enum base: empty, compressed
 * clusters, an internal snapshot, a backing file; 512-byte clusters with
 * 64-bit refcounts, whose refcount table must grow), loads it into the
 * power-cut simulator, opens it writable with qcow2_open_hostio and runs
 * a random workload of qcow2_pwrite (random data, 512 bytes to 200 KiB,
 * cluster-, sector- and byte-aligned), qcow2_zero (may_trim both ways,
 * sometimes fast), qcow2_trim and qcow2_flush, keeping a model of the
 * guest content: for every 512-byte sector, each version the client gave
 * it.  In most trials one thread runs the workload and the checkpoint
 * thread does not run, so checkpoints happen when the journal ring fills
 * (the long trials fill it) and in qcow2_close, which ends half of the
 * trials.  In the others two worker threads share the disk by stripes and
 * the checkpoint thread runs: commits of both meet its checkpoints.
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
 *   (or qcow2_close) was called (what calls that had returned by then
 *   wrote), or a version written later, by a call already started at
 *   the cut;
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
 * QCOW2J_SLOW=1 runs ten times as many trials; QCOW2J_QUICK=1 (the
 * sanitizer runs) samples fewer moments of the same trials and has one
 * state in 40 checked by qemu-img.  QCOW2J_SEED=N repeats one
 * (with more moments).  QCOW2J_VERBOSE=1 describes each trial;
 * QCOW2J_KEEP=1 keeps the images qemu-img check refused.
 *
 * The "reuse" case (see "Power cuts over several sessions" below) runs
 * trials of three sessions on one image, reusing the clusters earlier
 * sessions and checkpoints freed, and cuts the power at every moment
 * (every other one, and every subset of short windows holding punches,
 * unless QCOW2J_SLOW=1: every one).  "unit-image-powercut reuse" runs it
 * alone; QCOW2J_SEED=N repeats one of its trials, QCOW2J_EVENTS=1 lists
 * the host I/O of its second session.
 *
 * The "delayedcow" case (see "Power cuts and delayed copy-on-write"
 * below) writes small pieces into clusters over old content (a backing
 * file, compressed or shared clusters) and checks every flush moment.
 *
 * The "bitmaps" case (see "Power cuts and persistent dirty bitmaps"
 * below) runs two sessions on images with persistent bitmaps made by
 * QEMU, cuts the power at every moment, and checks that the recovered
 * bitmaps mark every granule that changed, and only granules calls
 * touched.
 *
 * The "v2" case (see "Power cuts on version 2 images" below) runs two
 * sessions on compat=0.10 images, which lib writes without a journal
 * (lib/writeback.c), and checks each crash state as the file is: version
 * 2 still, no journal extension, every sector an allowed version,
 * qemu-img check finding at worst leaked clusters; then a session on it.
 */
#include <config.h>

#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "byteorder.h"
#include "checkpoint.h"
#include "create.h"
#include "image.h"
#include "image-internal.h"
#include "journal-format.h"
#include "log.h"
#include "map.h"
#include "owed.h"
#include "powercut.h"
#include "qemu-check.h"
#include "run-shell.h"
#include "unit.h"

extern char **environ;

#define SECTOR ((uint64_t) 512)
#define KiB ((uint64_t) 1024)
#define MiB (1024 * KiB)
#define MAX_IO (200 * KiB)
#define MAX_DENSE 120
#define DENSE_FLUSH_REPS 4
#define MAX_EVERY_SUBSET 4      /* writes pending at a flush */
#define MAX_PUNCH_SUBSET 6      /* the same, punches among them */
#define STRIPE (256 * KiB)      /* owned by one worker thread */

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

enum op_type { OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH, OP_CLOSE, OP_OPEN,
               OP_CHECKPOINT };

struct op {
  enum op_type type;
  uint64_t start, end;          /* moments before and after the call */
  /* Stamps from one counter, before and after the call: a call whose
   * end_seq is below a flush's start_seq returned before that flush was
   * called, so the flush covers it. */
  uint64_t start_seq, end_seq;
  uint64_t sb_writes;           /* journal superblock writes before it */
  uint64_t offset, len;
  bool dense;                   /* check many moments inside */
};

/* The image a trial starts from: empty (qcow2_create, or qemu-img
 * create for other refcount widths), or made by qemu-img with data in
 * part of the disk, as compressed clusters, under an internal snapshot
 * (every cluster shared: each write copies), or in a qcow2 backing file
 * (the top image holding some data of its own over it). */
enum base { BASE_EMPTY, BASE_COMPRESSED, BASE_SNAPSHOT, BASE_BACKING,
            BASE_BITMAPS };

struct config {
  uint64_t cs, size;
  bool extl2, long_run;
  enum base base;
  bool close;                   /* qcow2_close at the end */
  unsigned threads;             /* workers (more than one: the checkpoint
                                   thread runs too) */
  unsigned refcount_bits;       /* 0: 16 */
  bool v2;                      /* compat=0.10: written without a journal */
};

/* 512-byte clusters with 64-bit refcounts: one refcount table cluster
 * covers 2 MiB of file, so those images grow their refcount table. */
static const struct config configs[] = {
  { 4 * KiB, 8 * MiB, false, true, BASE_EMPTY, true, 1, 0, false },
  { 64 * KiB, 16 * MiB, false, false, BASE_BACKING, false, 1, 0, false },
  { 64 * KiB, 8 * MiB, true, false, BASE_COMPRESSED, true, 1, 0, false },
  { 4 * KiB, 16 * MiB, false, false, BASE_SNAPSHOT, false, 2, 0, false },
  { 32 * KiB, 8 * MiB, true, true, BASE_EMPTY, false, 2, 0, false },
  { 512, 8 * MiB, false, false, BASE_EMPTY, true, 1, 64, false },
  { 16 * KiB, 8 * MiB, false, true, BASE_SNAPSHOT, true, 1, 0, false },
  { 64 * KiB, 16 * MiB, false, false, BASE_SNAPSHOT, true, 1, 0, false },
  { 32 * KiB, 8 * MiB, true, false, BASE_BACKING, true, 2, 0, false },
  { 64 * KiB, 8 * MiB, true, false, BASE_SNAPSHOT, false, 1, 0, false },
  { 4 * KiB, 8 * MiB, false, false, BASE_COMPRESSED, true, 1, 0, false },
  { 4 * KiB, 8 * MiB, false, true, BASE_BACKING, false, 1, 0, false },
  { 64 * KiB, 8 * MiB, false, false, BASE_COMPRESSED, false, 2, 0, false },
  { 32 * KiB, 8 * MiB, true, true, BASE_SNAPSHOT, true, 1, 0, false },
  { 512, 8 * MiB, false, true, BASE_EMPTY, false, 2, 64, false },
  { 4 * KiB, 8 * MiB, false, true, BASE_COMPRESSED, false, 1, 0, false },
};
#define NR_CONFIGS (sizeof configs / sizeof configs[0])

/* A hostio in front of the simulator that counts journal superblock
 * writes (set-up, checkpoints, moving the head) and transactions. */
struct tap {
  struct hostio io;
  struct hostio *inner;
  uint64_t sb_writes, transactions;     /* atomic */
};

struct trial {
  uint64_t seed, rng;
  struct config cfg;
  pthread_mutex_t lock;         /* ops, store, seq */
  uint64_t seq;
  bool close_at_end;
  uint64_t nsect;
  struct powercut *pc;
  struct tap tap;
  struct qcow2_image *img;
  uint8_t *model;               /* the disk as the client sees it */
  uint8_t *init;                /* and as it was at the start */
  uint8_t init_header[72];      /* the image's first bytes at the start */
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
  /* "v2" trials: every flush call is a write-back, checked densely (at
   * most about max_dense moments of each call, not MAX_DENSE). */
  bool dense_flushes;
  unsigned max_dense;
  /* "bitmaps" trials: the image's persistent bitmaps at the start (b0,
   * b1, b2: see "Power cuts and persistent dirty bitmaps"), NULL in the
   * others. */
  struct bm *bm;
  /* The library's delayed copy-on-write counters when the workload
   * ended (image-internal.h; observational only). */
  uint64_t owed_delayed, owed_filled;
};

static bool check_bitmaps (struct trial *t, const uint8_t *file,
                           uint64_t file_size, uint64_t moment,
                           const char *what);

/* A thread running part of the workload on the stripes it owns. */
struct worker {
  struct trial *t;
  uint64_t rng;
  unsigned id, n;               /* stripe i belongs to worker i % n */
  unsigned nops;
  pthread_t thread;
};

static char dir[256];
static uint64_t nr_trials, states, sb_writes;
static uint64_t recovery_cuts, byte_checked, ops_total;
static uint64_t threaded_trials, backing_trials, reftable_moves;
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
    REQUIRE (h->e != NULL);
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
    pthread_mutex_lock (&t->lock);
    if (t->nstore == t->cap_store) {
      t->cap_store = t->cap_store ? t->cap_store * 2 : 64;
      t->store = realloc (t->store, t->cap_store * sizeof *t->store);
      REQUIRE (t->store != NULL);
    }
    memcpy (t->store[t->nstore], p, SECTOR);
    e.kind = C_STORED;
    e.data = t->nstore++;
    pthread_mutex_unlock (&t->lock);
  }
  /* Only the worker owning the sector writes its history. */
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

  if (count >= 8 && memcmp (buf, QJ_SB_MAGIC, 8) == 0)
    __atomic_add_fetch (&tp->sb_writes, 1, __ATOMIC_SEQ_CST);
  if (count >= 4 && memcmp (buf, QJ_TX_MAGIC, 4) == 0)
    __atomic_add_fetch (&tp->transactions, 1, __ATOMIC_SEQ_CST);
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
  REQUIRE (b->data != NULL);
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

/* At exit, after a failed REQUIRE in set-up too: no scratch file left
 * behind. */
static void
cleanup (void)
{
  char path[300];

  qemu_check_cleanup ();
  snprintf (path, sizeof path, "%s/base.raw", dir);
  unlink (path);
  snprintf (path, sizeof path, "%s/base.qcow2", dir);
  unlink (path);
  snprintf (path, sizeof path, "%s/backing.qcow2", dir);
  unlink (path);
  rmdir (dir);
}

/* The workload ------------------------------------------------------------ */

static uint32_t
begin_op (struct trial *t, enum op_type type, uint64_t offset, uint64_t len)
{
  struct op *o;
  uint32_t op;

  pthread_mutex_lock (&t->lock);
  if (t->nops == t->cap_ops) {
    t->cap_ops = t->cap_ops ? t->cap_ops * 2 : 256;
    t->ops = realloc (t->ops, t->cap_ops * sizeof *t->ops);
    REQUIRE (t->ops != NULL);
  }
  op = t->nops++;
  o = &t->ops[op];
  memset (o, 0, sizeof *o);
  o->type = type;
  o->offset = offset;
  o->len = len;
  o->sb_writes = __atomic_load_n (&t->tap.sb_writes, __ATOMIC_SEQ_CST);
  o->start = powercut_moment (t->pc);
  o->start_seq = ++t->seq;
  pthread_mutex_unlock (&t->lock);
  return op;
}

static void
end_op (struct trial *t, uint32_t op)
{
  struct op *o;

  pthread_mutex_lock (&t->lock);
  o = &t->ops[op];
  o->end_seq = ++t->seq;
  o->end = powercut_moment (t->pc);
  o->dense = o->type == OP_CLOSE || o->type == OP_OPEN ||
    o->type == OP_CHECKPOINT || (o->type == OP_FLUSH && t->dense_flushes) ||
    __atomic_load_n (&t->tap.sb_writes, __ATOMIC_SEQ_CST) > o->sb_writes;
  ops_total++;
  pthread_mutex_unlock (&t->lock);
}

/* A random range: cluster-aligned, sector-aligned or byte-aligned, in
 * the part of the disk the worker owns. */
static void
pick_range (struct worker *w, bool small, uint64_t *offset, uint64_t *len)
{
  const struct trial *t = w->t;
  const uint64_t cs = t->cfg.cs;
  /* Long runs mostly churn a hot region: writes, zeroes and trims there
   * keep changing mappings, so that most flushes commit a transaction. */
  uint64_t size = t->cfg.long_run && pc_rand (&w->rng) % 4 != 0
    ? 1 * MiB : t->cfg.size;
  uint64_t base = 0;
  uint64_t mode = pc_rand (&w->rng) % 10;
  uint64_t max = small ? 8 * KiB : pc_rand (&w->rng) % 4 ? 32 * KiB : MAX_IO;
  uint64_t n = SECTOR + pc_rand (&w->rng) % (max - SECTOR + 1);

  if (w->n > 1) {
    /* One of its stripes (each of them a whole number of clusters). */
    uint64_t owned = size / STRIPE / w->n;
    base = (pc_rand (&w->rng) % owned * w->n + w->id) * STRIPE;
    size = STRIPE;
  }
  if (mode < 4 || (t->cfg.long_run && mode < 7)) {
    uint64_t nc = 1 + n / cs;
    if (nc * cs > MAX_IO)
      nc = MAX_IO / cs ? MAX_IO / cs : 1;
    if (small && nc > 2)
      nc = 1 + pc_rand (&w->rng) % 2;
    *len = nc * cs;
    *offset = pc_rand (&w->rng) % (size / cs - nc + 1) * cs;
  }
  else if (mode < 8 || (t->cfg.long_run && mode < 9)) {
    *len = (n + SECTOR - 1) / SECTOR * SECTOR;
    *offset = pc_rand (&w->rng) % ((size - *len) / SECTOR + 1) * SECTOR;
  }
  else {
    *len = n;
    *offset = pc_rand (&w->rng) % (size - n + 1);
  }
  /* Now and then at the very end of the disk (or of the stripe). */
  if (pc_rand (&w->rng) % 20 == 0)
    *offset = (w->n > 1 ? size : t->cfg.size) - *len;
  *offset += base;
}

static void
do_write_at (struct trial *t, uint64_t offset, uint64_t len)
{
  uint64_t s0, s1;
  uint8_t *buf, g[SECTOR];
  uint32_t op;

  s0 = offset / SECTOR;
  s1 = (offset + len + SECTOR - 1) / SECTOR;
  buf = malloc (len);
  REQUIRE (buf != NULL);
  /* The data depends on the call's number. */
  op = begin_op (t, OP_WRITE, offset, len);
  for (uint64_t s = s0; s < s1; s++) {
    uint64_t a = s * SECTOR > offset ? s * SECTOR : offset;
    uint64_t b = (s + 1) * SECTOR < offset + len ? (s + 1) * SECTOR
      : offset + len;
    gen_sector (t, op, s, g);
    memcpy (buf + (a - offset), g + (a - s * SECTOR), b - a);
  }
  if (qcow2_pwrite (t->img, buf, len, offset) != 0) {
    FAIL ("seed %" PRIu64 ": qcow2_pwrite (%" PRIu64 ", %" PRIu64
          ") failed: %s", t->seed, len, offset, strerror (errno));
    unit_stop ();
  }
  end_op (t, op);
  memcpy (t->model + offset, buf, len);
  for (uint64_t s = s0; s < s1; s++)
    note_sector (t, s, op, s * SECTOR >= offset &&
                 (s + 1) * SECTOR <= offset + len, true, false);
  free (buf);
}

static void
do_write (struct worker *w, bool small)
{
  uint64_t offset, len;

  pick_range (w, small, &offset, &len);
  do_write_at (w->t, offset, len);
}

static void
do_zero_at (struct trial *t, uint64_t offset, uint64_t len, bool may_trim,
            bool fast)
{
  uint64_t s0, s1;
  uint32_t op;
  int r;

  s0 = offset / SECTOR;
  s1 = (offset + len + SECTOR - 1) / SECTOR;
  op = begin_op (t, OP_ZERO, offset, len);
  r = qcow2_zero (t->img, len, offset, may_trim, fast);
  end_op (t, op);
  if (r != 0) {
    if (fast && errno == ENOTSUP)
      return;                   /* nothing changed: the final check says */
    FAIL ("seed %" PRIu64 ": qcow2_zero (%" PRIu64 ", %" PRIu64
          ") failed: %s", t->seed, len, offset, strerror (errno));
    unit_stop ();
  }
  memset (t->model + offset, 0, len);
  for (uint64_t s = s0; s < s1; s++)
    note_sector (t, s, op, s * SECTOR >= offset &&
                 (s + 1) * SECTOR <= offset + len, false, false);
}

static void
do_zero (struct worker *w, bool small)
{
  uint64_t offset, len;
  bool may_trim = pc_rand (&w->rng) & 1;
  bool fast = pc_rand (&w->rng) % 5 == 0;

  pick_range (w, small, &offset, &len);
  do_zero_at (w->t, offset, len, may_trim, fast);
}

static void
do_trim_at (struct trial *t, uint64_t offset, uint64_t len)
{
  uint64_t s0, s1;
  uint8_t *live;
  uint32_t op;

  s0 = offset / SECTOR;
  s1 = (offset + len + SECTOR - 1) / SECTOR;
  op = begin_op (t, OP_TRIM, offset, len);
  CHECK (qcow2_trim (t->img, len, offset) == 0);
  end_op (t, op);
  /* What the trim did: whole sectors of the range may read as zeroes now;
   * nothing else may change. */
  live = malloc ((s1 - s0) * SECTOR);
  REQUIRE (live != NULL);
  CHECK (qcow2_pread (t->img, live, (s1 - s0) * SECTOR, s0 * SECTOR) == 0);
  for (uint64_t s = s0; s < s1; s++) {
    const uint8_t *p = live + (s - s0) * SECTOR;
    bool full = s * SECTOR >= offset && (s + 1) * SECTOR <= offset + len;

    if (memcmp (p, t->model + s * SECTOR, SECTOR) == 0)
      continue;
    if (!full || !is_zero (p, SECTOR)) {
      FAIL ("seed %" PRIu64 ": trim (%" PRIu64 ", %" PRIu64 ") changed "
            "sector %" PRIu64 " to something else than zeroes", t->seed,
            len, offset, s);
    }
    memcpy (t->model + s * SECTOR, p, SECTOR);
    note_sector (t, s, op, true, false, true);
  }
  free (live);
}

static void
do_trim (struct worker *w, bool small)
{
  uint64_t offset, len;

  pick_range (w, small, &offset, &len);
  do_trim_at (w->t, offset, len);
}

static void
do_flush_t (struct trial *t)
{
  uint32_t op = begin_op (t, OP_FLUSH, 0, 0);

  if (qcow2_flush (t->img) != 0) {
    FAIL ("seed %" PRIu64 ": qcow2_flush failed: %s", t->seed,
          strerror (errno));
    unit_stop ();
  }
  end_op (t, op);
}

static void
do_flush (struct worker *w)
{
  do_flush_t (w->t);
}

static void *
run_worker (void *arg)
{
  struct worker *w = arg;
  const bool long_run = w->t->cfg.long_run;

  for (unsigned i = 0; i < w->nops; i++) {
    uint64_t r = pc_rand (&w->rng) % 100;
    bool small = long_run ? pc_rand (&w->rng) % 8 != 0
      : pc_rand (&w->rng) % 3 == 0;

    /* Long runs flush after most calls, to commit many small
     * transactions and fill the journal ring. */
    if (long_run)
      r = i % 2 == 0 ? r * 66 / 100 : r < 85 ? 66 : 45;
    if (r < 45)
      do_write (w, small);
    else if (r < 58)
      do_zero (w, small);
    else if (r < 66)
      do_trim (w, small);
    else
      do_flush (w);
  }
  return NULL;
}

/* The live image reads as the model. */
static void
check_live (struct trial *t)
{
  uint8_t *buf = malloc (t->cfg.size);

  REQUIRE (buf != NULL);
  CHECK (qcow2_pread (t->img, buf, t->cfg.size, 0) == 0);
  for (uint64_t s = 0; s < t->nsect; s++)
    if (memcmp (buf + s * SECTOR, t->model + s * SECTOR, SECTOR) != 0) {
      FAIL ("seed %" PRIu64 ": the live image differs from the model at "
            "sector %" PRIu64, t->seed, s);
      break;
    }
  free (buf);
}

/* Fill t->init: data in about half of the disk, in runs of sectors
 * (compressible: zlib must want it). */
static void
make_content (struct trial *t)
{
  for (uint64_t pos = 0; pos < t->cfg.size; ) {
    uint64_t n = SECTOR * (1 + pc_rand (&t->rng) % 256);
    bool data = pc_rand (&t->rng) & 1;

    if (n > t->cfg.size - pos)
      n = t->cfg.size - pos;
    for (uint64_t i = 0; data && i < n; i++)
      t->init[pos + i] = ((pos + i) / SECTOR * 7 + i / 64) % 251 + 1;
    pos += n;
  }
}

/* qemu-img convert of t->init to a qcow2 file in dir. */
static void
convert_content (struct trial *t, const char *path, uint64_t cs,
                 bool compressed, bool extl2)
{
  char raw[300];
  int fd;

  snprintf (raw, sizeof raw, "%s/base.raw", dir);
  fd = open (raw, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK (fd >= 0);
  CHECK (pwrite (fd, t->init, t->cfg.size, 0) == (ssize_t) t->cfg.size);
  CHECK (close (fd) == 0);
  CHECK (run_shell ("qemu-img convert -q -f raw -O qcow2 %s -o cluster_size=%"
              PRIu64 "%s%s '%s' '%s'", compressed ? "-c" : "", cs,
              extl2 ? ",extended_l2=on" : "",
              t->cfg.v2 ? ",compat=0.10" : "", raw, path) == 0);
  unlink (raw);
}

static void make_bitmap_base (struct trial *t, const char *path);

/* The image a trial starts from (see enum base), at path; t->init gets
 * its content. */
static void
make_base (struct trial *t, const char *path)
{
  const struct config *c = &t->cfg;
  char backing[300];

  switch (c->base) {
  case BASE_EMPTY:
    if (c->v2)
      CHECK (run_shell ("qemu-img create -q -f qcow2 -o compat=0.10,"
                        "cluster_size=%" PRIu64 " '%s' %" PRIu64, c->cs, path,
                        c->size) == 0);
    else if (c->refcount_bits == 0 || !have_qemu_img)
      CHECK (qcow2_create (path, c->size, c->cs, c->extl2, false) == 0);
    else
      CHECK (run_shell ("qemu-img create -q -f qcow2 -o cluster_size=%" PRIu64
                  ",refcount_bits=%u%s '%s' %" PRIu64, c->cs,
                  c->refcount_bits, c->extl2 ? ",extended_l2=on" : "",
                  path, c->size) == 0);
    return;
  case BASE_COMPRESSED:
  case BASE_SNAPSHOT:
    make_content (t);
    convert_content (t, path, c->cs, c->base == BASE_COMPRESSED, c->extl2);
    if (c->base == BASE_SNAPSHOT)
      CHECK (run_shell ("qemu-img snapshot -c before '%s'", path) == 0);
    return;
  case BASE_BACKING:
    /* A backing file of another cluster size; the top image gets a run
     * of whole clusters and a few sectors of its own. */
    make_content (t);
    snprintf (backing, sizeof backing, "%s/backing.qcow2", dir);
    convert_content (t, backing, c->cs == 64 * KiB ? 16 * KiB : 64 * KiB,
                     false, false);
    CHECK (run_shell ("qemu-img create -q -f qcow2 -F qcow2 -b backing.qcow2 "
                "-o cluster_size=%" PRIu64 "%s%s '%s'", c->cs,
                c->extl2 ? ",extended_l2=on" : "",
                c->v2 ? ",compat=0.10" : "", path) == 0);
    CHECK (run_shell ("qemu-io -c 'write -q -P 0x5a 0 %" PRIu64 "' "
                "-c 'write -q -P 0xa5 %" PRIu64 " 3072' '%s'",
                c->size / 8, c->size / 2 + 1536, path) == 0);
    memset (t->init, 0x5a, c->size / 8);
    memset (t->init + c->size / 2 + 1536, 0xa5, 3072);
    return;
  case BASE_BITMAPS:
    make_bitmap_base (t, path);
    return;
  }
  abort ();
}

/* Make the trial's base image (make_base) and load it into a new
 * power-cut simulator behind the tap; the model starts as its content. */
static void
load_base (struct trial *t)
{
  char path[300];
  uint8_t *data;
  struct stat st;
  int fd;

  snprintf (path, sizeof path, "%s/base.qcow2", dir);
  if (t->cfg.base != BASE_EMPTY && !have_qemu_img)
    t->cfg.base = BASE_EMPTY;
  make_base (t, path);
  for (uint64_t s = 0; s < t->nsect; s++)
    t->init_hash[s] = hash_sector (t->init + s * SECTOR);
  memcpy (t->model, t->init, t->cfg.size);
  fd = open (path, O_RDONLY);
  REQUIRE (fd >= 0);
  REQUIRE (fstat (fd, &st) == 0);
  data = malloc (st.st_size);
  REQUIRE (data != NULL);
  CHECK (pread (fd, data, st.st_size, 0) == st.st_size);
  REQUIRE (st.st_size >= (off_t) sizeof t->init_header);
  memcpy (t->init_header, data, sizeof t->init_header);
  close (fd);
  unlink (path);
  t->pc = powercut_new ("image", data, st.st_size);
  free (data);
  t->tap.io.ops = &tap_ops;
  t->tap.io.name = (char *) "image";
  t->tap.inner = powercut_io (t->pc);
}

/* Random calls by t->cfg.threads workers.  Several workers: each writes,
 * zeroes, trims and flushes its own stripes (sharing L2 tables and
 * refcount blocks with the others), so that commits from several threads
 * meet checkpoints of the thread that runs in the plugin. */
static void
run_workers (struct trial *t, unsigned nops, void *(*worker) (void *))
{
  struct worker w[4];
  const unsigned nw = t->cfg.threads;

  REQUIRE (nw >= 1 && nw <= 4);
  for (unsigned i = 0; i < nw; i++) {
    w[i].t = t;
    w[i].rng = pc_rand (&t->rng);
    w[i].id = i;
    w[i].n = nw;
    w[i].nops = nops / nw;
  }
  if (nw == 1)
    worker (&w[0]);
  else {
    CHECK (qcow2_start_checkpointer (t->img) == 0);
    for (unsigned i = 0; i < nw; i++)
      REQUIRE (pthread_create (&w[i].thread, NULL, worker, &w[i]) == 0);
    for (unsigned i = 0; i < nw; i++)
      CHECK (pthread_join (w[i].thread, NULL) == 0);
    qcow2_stop_checkpointer (t->img);
  }
}

static void
run_workload (struct trial *t, unsigned nops, void *(*worker) (void *))
{
  struct qcow2_open_options opts = { .writable = true };

  load_base (t);

  /* A small metadata cache now and then, so that slices are evicted. */
  if (pc_rand (&t->rng) % 3 == 0)
    opts.l2_cache_bytes = 64 * KiB;
  t->img = qcow2_open_hostio (&t->tap.io, dir, &opts);
  REQUIRE (t->img != NULL);
  CHECK (qcow2_prepare_writable (t->img) == 0);
  check_live (t);
  run_workers (t, nops, worker);
  check_live (t);
  t->owed_delayed = t->img->stat_owed_delayed;
  t->owed_filled = t->img->stat_owed_filled;
  if (t->close_at_end) {
    uint32_t op = begin_op (t, OP_CLOSE, 0, 0);
    /* Anything still owed is filled by the close's commit. */
    t->owed_filled += __atomic_load_n (&t->img->nr_owed, __ATOMIC_RELAXED);
    CHECK (qcow2_close (t->img) == 0);
    end_op (t, op);
    t->img = NULL;
  }
}

/* Checking a crash state ---------------------------------------------------- */

/* Of the calls of flush or close completed at moment, the one called
 * last, or -1. */
static int64_t
last_acked_flush (const struct trial *t, uint64_t moment)
{
  int64_t last = -1;

  for (uint32_t i = 0; i < t->nops; i++)
    if ((t->ops[i].type == OP_FLUSH || t->ops[i].type == OP_CLOSE) &&
        t->ops[i].end <= moment &&
        (last < 0 || t->ops[i].start_seq > t->ops[last].start_seq))
      last = i;
  return last;
}

/* Did call op return before the flush (or close) 'flushed' was called? */
static bool
covered (const struct trial *t, uint32_t op, int64_t flushed)
{
  return flushed >= 0 && t->ops[op].end_seq < t->ops[flushed].start_seq;
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
  for (uint32_t k = 0; k < h->n && covered (t, h->e[k].op, flushed); k++)
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
  case OP_OPEN: return "open";
  case OP_CHECKPOINT: return "checkpoint";
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
      if (covered (t, h->e[k].op, flushed))
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
      REQUIRE (v != NULL);
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

/* One of the first n moments of pc just before a flush completes, chosen
 * at random (or otherwise, if there is none). */
static uint64_t
random_flush_moment (struct trial *t, struct powercut *pc, uint64_t n,
                     uint64_t otherwise)
{
  uint64_t nf = 0, k;

  for (uint64_t i = 0; i < n; i++)
    nf += powercut_is_flush (pc, i);
  k = nf ? pc_rand (&t->rng) % nf : 0;
  for (uint64_t i = 0; i < n && nf; i++)
    if (powercut_is_flush (pc, i) && k-- == 0)
      return i;
  return otherwise;
}

/* Open (writable: and make writable, replaying a dirty journal), read
 * the whole disk into t->disk, close. */
static bool
open_and_read (struct trial *t, struct hostio *io, bool writable,
               const char *what)
{
  struct qcow2_open_options opts = { .writable = writable,
                                     .l2_cache_bytes = 1 * MiB };
  struct qcow2_image *img = qcow2_open_hostio (io, dir, &opts);

  if (img == NULL) {
    fprintf (stderr, "%s: qcow2_open_hostio failed: %m\n", what);
    return false;
  }
  if (writable && qcow2_make_writable (img) == -1) {
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
  struct qcow2_image *img = qcow2_open_hostio (io, dir, &opts);
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

/* Check the crash state at moment made of the pending writes in subset,
 * or of a random subset (one write maybe torn) if subset is RANDOM. */
#define RANDOM UINT64_MAX
static void check_v2_moment (struct trial *t, uint64_t moment, bool final,
                             uint64_t subset);

static void
check_moment (struct trial *t, uint64_t moment, bool final, uint64_t subset)
{
  uint8_t *crash;
  uint64_t crash_size, bad;
  struct target tg;
  char what[200];
  bool ok, cut_again, qemu;

  /* Nothing is replayed there: the state itself is checked. */
  if (t->cfg.v2) {
    check_v2_moment (t, moment, final, subset);
    return;
  }
  cut_again = pc_rand (&t->rng) % 6 == 0;
  qemu = final || pc_rand (&t->rng) % qemu_every == 0;
  snprintf (what, sizeof what, "seed %" PRIu64 ", moment %" PRIu64 "/%"
            PRIu64, t->seed, moment, powercut_moment (t->pc));
  if (subset == RANDOM)
    powercut_crash_state (t->pc, moment, &t->rng, &crash, &crash_size);
  else
    powercut_crash_state_subset (t->pc, moment, subset, &crash, &crash_size);
  target_init (&tg, crash, crash_size, cut_again);
  states++;
  t->states++;

  ok = open_and_read (t, target_io (&tg), true, what);
  if (ok) {
    bad = check_disk (t, moment);
    if (bad > 0) {
      fprintf (stderr, "%s: %" PRIu64 " sectors hold what they may not\n",
               what, bad);
      ok = false;
    }
  }
  if (ok && t->bm) {
    uint64_t size;
    const uint8_t *d = target_data (&tg, &size);
    ok = check_bitmaps (t, d, size, moment, what);
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
    if (pc_rand (&t->rng) & 1)
      m2 = random_flush_moment (t, tg.pc, n2, m2);
    snprintf (what2, sizeof what2, "%s, recovery cut at %" PRIu64 "/%"
              PRIu64, what, m2, n2);
    powercut_crash_state (tg.pc, m2, &t->rng, &crash2, &crash2_size);
    target_init (&tg2, crash2, crash2_size, false);
    recovery_cuts++;
    ok = open_and_read (t, target_io (&tg2), true, what2);
    for (uint64_t s = 0; s < t->nsect && ok; s++)
      if (hash_sector (t->disk + s * SECTOR) != t->first_hash[s]) {
        fprintf (stderr, "%s: sector %" PRIu64 " differs from the first "
                 "recovery\n", what2, s);
        ok = false;
      }
    /* The second recovery may replay less or more of the journal than
     * the first: its bitmaps must hold just as well. */
    if (ok && t->bm) {
      uint64_t size;
      const uint8_t *d = target_data (&tg2, &size);
      ok = check_bitmaps (t, d, size, moment, what2);
    }
    target_free (&tg2);
  }
  if (!ok) {
    FAIL ("%s: the recovered image is wrong (above)", what);
    t->printed++;
  }
  target_free (&tg);
}

/* Is a punch among the events pending at moment m (since the last
 * flush)? */
static bool
punch_pending (struct powercut *pc, uint64_t m)
{
  for (uint64_t i = m; i > 0 && !powercut_is_flush (pc, i - 1); i--) {
    uint64_t off, len;

    if (powercut_event (pc, i - 1, &off, &len) == 'p')
      return true;
  }
  return false;
}

/* Check crash states at moments [from, to) of t->pc, in increasing order
 * (cheap for the simulator): 'samples' evenly spaced ones; one in
 * flush_every of the moments just before a host flush completes; many
 * moments of the calls that set up the journal, checkpointed or closed
 * (several subsets of what is pending at their flushes, every subset of
 * a few); and every 'stride'th moment if stride is not 0.  Returns the
 * number of moments taken inside such calls. */
static uint64_t
check_moments (struct trial *t, uint64_t from, uint64_t to, unsigned samples,
               unsigned flush_every, unsigned stride)
{
  uint64_t next = from, dense_m = 0;
  uint32_t dense_op = 0;

  for (uint64_t m = from, nflush = 0; m <= to; m++) {
    bool dense = false, take = false, every_subset = false;
    unsigned reps = 1;

    while (dense_op < t->nops && t->ops[dense_op].end < m)
      dense_op++;
    for (uint32_t i = dense_op; i < t->nops && t->ops[i].start <= m; i++)
      if (t->ops[i].dense && m >= t->ops[i].start && m <= t->ops[i].end) {
        /* At most about MAX_DENSE moments of each (a checkpoint of many
         * slices has hundreds), and all its flush moments. */
        uint64_t ostride = 1 + (t->ops[i].end - t->ops[i].start) /
          (t->max_dense ? t->max_dense : MAX_DENSE);
        dense = (m - t->ops[i].start) % ostride == 0 || m == t->ops[i].end ||
          powercut_is_flush (t->pc, m);
        /* Just before one of their flushes completes: several subsets
         * of the writes in flight (a checkpoint's pages, its superblock,
         * the header words), and every subset of a few (the steps of
         * changing the header cluster). */
        if (powercut_is_flush (t->pc, m)) {
          reps = DENSE_FLUSH_REPS;
          every_subset = powercut_pending (t->pc, m) <= MAX_EVERY_SUBSET;
        }
        break;
      }
    if (powercut_is_flush (t->pc, m) && nflush++ % flush_every == 0)
      take = true;
    if (m == next) {
      take = true;
      next += 1 + (to - from) / (samples ? samples : 1);
    }
    if (stride && (m - from) % stride == 0)
      take = true;
    /* Reuse trials: just before a flush completes with punches pending
     * (the checkpoint's, and those a commit into punched space may race
     * with): every subset of a short window, several of a long one. */
    if (stride && powercut_is_flush (t->pc, m) && punch_pending (t->pc, m)) {
      take = true;
      if (powercut_pending (t->pc, m) <= MAX_PUNCH_SUBSET)
        every_subset = true;
      else
        reps = DENSE_FLUSH_REPS * 2;
    }
    if (dense) {
      take = true;
      dense_m++;
    }
    for (unsigned r = 0; take && m < to && r < reps; r++)
      check_moment (t, m, false, RANDOM);
    for (uint64_t sub = 0; every_subset && m < to &&
           sub < 1ULL << powercut_pending (t->pc, m); sub++)
      check_moment (t, m, false, sub);
  }
  return dense_m;
}

/* A trial's image (closed after the checks: closing writes), simulator
 * and model. */
static void
trial_free (struct trial *t)
{
  if (t->img)
    qcow2_close (t->img);
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
  pthread_mutex_destroy (&t->lock);
  free (t);
}

/* A trial of this seed and image, its model and history allocated. */
static struct trial *
trial_new (uint64_t seed, struct config cfg)
{
  struct trial *t = calloc (1, sizeof *t);

  REQUIRE (t != NULL);
  t->seed = seed;
  t->rng = seed;
  t->cfg = cfg;
  t->nsect = t->cfg.size / SECTOR;
  t->model = calloc (1, t->cfg.size);
  t->init = calloc (1, t->cfg.size);
  t->init_hash = malloc (t->nsect * sizeof *t->init_hash);
  t->disk = malloc (t->cfg.size);
  t->first_hash = malloc (t->nsect * sizeof *t->first_hash);
  t->hist = calloc (t->nsect, sizeof *t->hist);
  REQUIRE (t->model && t->init && t->init_hash && t->disk && t->first_hash &&
           t->hist);
  pthread_mutex_init (&t->lock, NULL);
  return t;
}

static void
run_trial (uint64_t seed, unsigned samples)
{
  unsigned before = unit_failed ();
  struct trial *t = trial_new (seed, configs[seed % NR_CONFIGS]);
  uint64_t moments;
  uint64_t dense_m = 0, file_size;
  unsigned nops, flush_every;
  struct timespec t0, t1, t2;

  t->close_at_end = t->cfg.close;

  nops = t->cfg.long_run ? 5000 : 150 + pc_rand (&t->rng) % 150;
  clock_gettime (CLOCK_MONOTONIC, &t0);
  run_workload (t, nops, run_worker);
  clock_gettime (CLOCK_MONOTONIC, &t1);
  nr_trials++;
  threaded_trials += t->cfg.threads > 1;
  backing_trials += t->cfg.base == BASE_BACKING;
  sb_writes += t->tap.sb_writes;
  {
    /* Did the refcount table move (header bytes 48-55)? */
    uint64_t size;
    const uint8_t *d = powercut_data (t->pc, &size);
    reftable_moves += memcmp (d + 48, t->init_header + 48, 8) != 0;
  }

  /* Moments in increasing order (cheap for the simulator): evenly spaced
   * ones; moments just before a host flush completes (all of them in
   * short runs, one in flush_every in long ones); many moments of the
   * calls that set up the journal, checkpointed or closed. */
  moments = powercut_moment (t->pc);
  powercut_data (t->pc, &file_size);
  flush_every = t->cfg.long_run ? 25 : 1;
  dense_m = check_moments (t, 0, moments, samples, flush_every, 0);
  check_moment (t, moments, true, RANDOM);
  qemu_check_wait_all ();
  clock_gettime (CLOCK_MONOTONIC, &t2);
  if (getenv ("QCOW2J_VERBOSE"))
    fprintf (stderr, "seed %" PRIu64 ": cs %" PRIu64 "%s%s, refcount %u, "
             "%u thread%s, %" PRIu64
             " MiB, %u calls%s, %" PRIu64 " moments (%" PRIu64
             " in set-up/checkpoint/close), %" PRIu64 " transactions, %" PRIu64
             " superblock writes, %"
             PRIu64 " crash states; %.1f s + %.1f s; file %" PRIu64 " MiB\n",
             seed, t->cfg.cs, t->cfg.extl2 ? " extl2" : "",
             t->cfg.base == BASE_COMPRESSED ? " compressed"
             : t->cfg.base == BASE_SNAPSHOT ? " snapshot"
             : t->cfg.base == BASE_BACKING ? " backing" : "",
             t->cfg.refcount_bits ? t->cfg.refcount_bits : 16,
             t->cfg.threads, t->cfg.threads > 1 ? "s" : "",
             t->cfg.size / MiB, t->nops,
             t->close_at_end ? " + close" : "", moments, dense_m,
             t->tap.transactions, t->tap.sb_writes, t->states,
             (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9,
             (t2.tv_sec - t1.tv_sec) + (t2.tv_nsec - t1.tv_nsec) / 1e9,
             file_size / MiB);
  if (unit_failed () > before)
    fprintf (stderr, "trial with seed %" PRIu64 " failed (QCOW2J_SEED=%"
             PRIu64 " repeats it)\n", seed, seed);

  trial_free (t);
}

/* Power cuts over several sessions, reusing freed space --------------------
 *
 * The "reuse" case: each trial runs three write sessions on one image,
 * the later ones allocating data from the clusters the earlier ones freed
 * (lib/space.c, lib/alloc.c), and cuts the power at every moment of the
 * second and third (and at a sample of the first):
 *
 * 1. write a region A (whole clusters, parts of clusters, some gaps),
 *    flush, trim or zero (may_trim) parts of it, flush, close: the
 *    close's checkpoint punches the freed clusters.
 * 2. reopen (qcow2_prepare_writable on the same simulated file): the
 *    free space is learnt from the refcounts (stale: the simulator
 *    reports no holes), and writing a new region B reuses it (fill_all,
 *    two-flush commit); flush, trim parts of A and B, flush, and a
 *    checkpoint (qcow2_checkpoint, what the checkpoint thread runs)
 *    releases those clusters punched, as clean free space: writing a new
 *    region C reuses them with the one-flush commit, a part of a cluster
 *    written leaving the rest to read as zeroes.  Random calls over the
 *    whole disk, another trim and checkpoint, writes to region D, and
 *    the session ends with a close, a flush or nothing.
 * 3. a crash state of session 2 (a random moment, a random subset of
 *    the pending writes) is recovered (qcow2_make_writable replays), its
 *    disk checked, and it becomes the start of session 3, on a new
 *    simulated file: writes reuse the stale space learnt at set-up (what
 *    session 2 freed, what its lost transactions had allocated), trims,
 *    a checkpoint, clean reuse again, random calls.
 *
 * Every crash state is checked as in the "trials" case (what was
 * flushed is there, nothing else than a version written to that very
 * sector: data of another guest range, which a wrong reuse exposes, is
 * caught; trimmed sectors may keep their old data), a sample by
 * qemu-img check.  The clusters reused are counted by the library's
 * allocation counters (image-internal.h, observational only), and at
 * least one trial must reuse clean and stale space.
 */

static uint64_t
umin (uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

struct reuse_config {
  uint64_t cs, size;
  bool extl2;
  enum base base;
  unsigned refcount_bits;
};

static const struct reuse_config reuse_configs[] = {
  { 4 * KiB, 4 * MiB, false, BASE_EMPTY, 0 },
  { 64 * KiB, 8 * MiB, false, BASE_EMPTY, 0 },
  { 32 * KiB, 4 * MiB, true, BASE_EMPTY, 0 },
  { 512, 2 * MiB, false, BASE_EMPTY, 64 },
  { 16 * KiB, 4 * MiB, false, BASE_BACKING, 0 },
  { 16 * KiB, 4 * MiB, true, BASE_EMPTY, 0 },
  { 64 * KiB, 4 * MiB, false, BASE_SNAPSHOT, 0 },
  { 8 * KiB, 4 * MiB, false, BASE_EMPTY, 0 },
};
#define NR_REUSE_CONFIGS (sizeof reuse_configs / sizeof reuse_configs[0])

static uint64_t reuse_states, reuse_clean, reuse_stale, reuse_new;
static uint64_t reuse_tables, reuse_clean_trials, reuse_stale_trials;

static void
open_session (struct trial *t, bool replay)
{
  struct qcow2_open_options opts = { .writable = true };
  uint32_t op = begin_op (t, OP_OPEN, 0, 0);

  if (pc_rand (&t->rng) % 3 == 0)
    opts.l2_cache_bytes = 64 * KiB;
  t->img = qcow2_open_hostio (&t->tap.io, dir, &opts);
  REQUIRE (t->img != NULL);
  if (replay)
    CHECK (qcow2_make_writable (t->img) == 0);
  else
    CHECK (qcow2_prepare_writable (t->img) == 0);
  end_op (t, op);
}

/* Add the session's allocation counters to the totals. */
static void
count_reuse (struct trial *t, uint64_t *clean, uint64_t *stale)
{
  struct qcow2_image *img = t->img;

  qcow2_meta_lock (img);
  *clean += img->stat_data_clean;
  *stale += img->stat_data_stale;
  reuse_clean += img->stat_data_clean;
  reuse_stale += img->stat_data_stale;
  reuse_new += img->stat_data_new;
  reuse_tables += img->stat_table_reused;
  qcow2_meta_unlock (img);
}

static void
close_session (struct trial *t)
{
  uint32_t op = begin_op (t, OP_CLOSE, 0, 0);

  CHECK (qcow2_close (t->img) == 0);
  end_op (t, op);
  t->img = NULL;
}

/* What the checkpoint thread does when it finds the ring full. */
static void
checkpoint_now (struct trial *t)
{
  uint32_t op = begin_op (t, OP_CHECKPOINT, 0, 0);

  CHECK (qcow2_checkpoint (t->img) == 0);
  end_op (t, op);
}

/* Write much of [start, start + len): runs of whole clusters, parts of
 * clusters (sector- or byte-aligned), some gaps left unwritten. */
static void
write_region (struct trial *t, uint64_t start, uint64_t len, bool flushes)
{
  const uint64_t cs = t->cfg.cs, end = start + len;

  for (uint64_t pos = start; pos < end; ) {
    uint64_t r = pc_rand (&t->rng) % 10, n;

    if (r < 6) {
      pos = (pos + cs - 1) / cs * cs;
      n = cs * (1 + pc_rand (&t->rng) % 8);
    }
    else if (r < 9) {
      pos = (pos + SECTOR - 1) / SECTOR * SECTOR;
      n = SECTOR * (1 + pc_rand (&t->rng) % (2 * cs / SECTOR + 1));
    }
    else
      n = 1 + pc_rand (&t->rng) % (cs + SECTOR);
    if (pos >= end)
      break;
    n = umin (n, umin (MAX_IO, end - pos));
    if (pc_rand (&t->rng) % 6 != 0)
      do_write_at (t, pos, n);
    /* A flush after most writes: batches of one write, each committed on
     * its own, with one flush where the space is fresh. */
    if (flushes && pc_rand (&t->rng) % 3 != 0)
      do_flush_t (t);
    pos += n;
  }
}

/* k trims or zeroes (may_trim) in [start, start + len), mostly of whole
 * clusters, so that clusters are freed. */
static void
trim_region (struct trial *t, uint64_t start, uint64_t len, unsigned k)
{
  const uint64_t cs = t->cfg.cs, nc = len / cs;

  for (unsigned i = 0; i < k; i++) {
    uint64_t n = 1 + pc_rand (&t->rng) % umin (nc, 8), offset, count;

    offset = start + pc_rand (&t->rng) % (nc - n + 1) * cs;
    count = n * cs;
    if (pc_rand (&t->rng) % 5 == 0) {
      /* Sector-aligned, not cluster-aligned. */
      offset += SECTOR * (pc_rand (&t->rng) % (cs / SECTOR));
      count = umin (count, start + len - offset);
    }
    if (pc_rand (&t->rng) % 3 == 0)
      do_zero_at (t, offset, count, true, false);
    else
      do_trim_at (t, offset, count);
  }
}

static void
random_calls (struct trial *t, unsigned nops)
{
  struct worker w = { .t = t, .rng = pc_rand (&t->rng), .id = 0, .n = 1,
                      .nops = nops };

  run_worker (&w);
}

static uint64_t
sim_size (struct trial *t)
{
  uint64_t size;

  powercut_data (t->pc, &size);
  return size;
}

/* Forget the model: the disk now reads as t->disk, from the start. */
static void
reset_model (struct trial *t)
{
  memcpy (t->init, t->disk, t->cfg.size);
  memcpy (t->model, t->disk, t->cfg.size);
  for (uint64_t s = 0; s < t->nsect; s++) {
    t->init_hash[s] = hash_sector (t->init + s * SECTOR);
    t->hist[s].n = 0;
  }
  t->nstore = 0;
  t->nops = 0;
}

static void
run_reuse_trial (uint64_t seed, unsigned stride)
{
  const struct reuse_config *rc = &reuse_configs[seed % NR_REUSE_CONFIGS];
  struct trial *t = trial_new (seed, (struct config) {
      rc->cs, rc->size, rc->extl2, false, rc->base, false, 1,
      rc->refcount_bits, false });
  unsigned before = unit_failed ();
  uint64_t states0 = states, clean = 0, stale = 0;
  uint64_t q, fill, s1_end, s2_start, s2_end, s3_end, cut, size1, size2;
  uint64_t m3_open;
  uint8_t *crash;
  uint64_t crash_size;
  struct powercut *pc2;
  struct qcow2_open_options opts = { .writable = true };
  char what[200];
  unsigned end2, end3;

  q = t->cfg.size / 4 / t->cfg.cs * t->cfg.cs;
  fill = umin (q, 48 * t->cfg.cs);
  load_base (t);

  /* Session 1: data in region A, parts of it freed; the close punches. */
  open_session (t, false);
  write_region (t, 0, fill, false);
  do_flush_t (t);
  trim_region (t, 0, fill, 4 + pc_rand (&t->rng) % 5);
  do_flush_t (t);
  close_session (t);
  s1_end = powercut_moment (t->pc);
  size1 = sim_size (t);

  /* Session 2: stale reuse (learnt), then clean reuse (checkpoint). */
  s2_start = s1_end;
  open_session (t, false);
  write_region (t, q, fill, false);
  do_flush_t (t);
  trim_region (t, 0, fill, 2 + pc_rand (&t->rng) % 4);
  trim_region (t, q, fill, 3 + pc_rand (&t->rng) % 6);
  do_flush_t (t);
  checkpoint_now (t);
  write_region (t, 2 * q, fill, true);
  random_calls (t, 20 + pc_rand (&t->rng) % 20);
  do_flush_t (t);
  trim_region (t, 2 * q, fill, 3 + pc_rand (&t->rng) % 6);
  if (pc_rand (&t->rng) % 3 != 0)
    do_flush_t (t);
  checkpoint_now (t);
  write_region (t, 3 * q, fill / 2, true);
  random_calls (t, 10 + pc_rand (&t->rng) % 10);
  check_live (t);
  count_reuse (t, &clean, &stale);
  end2 = pc_rand (&t->rng) % 4;
  if (end2 < 2)
    close_session (t);
  else if (end2 == 2)
    do_flush_t (t);
  s2_end = powercut_moment (t->pc);
  size2 = sim_size (t);
  if (getenv ("QCOW2J_EVENTS"))
    for (uint64_t i = s2_start; i < s2_end; i++) {
      uint64_t off, len;
      char k = powercut_event (t->pc, i, &off, &len);
      const char *call = "";

      for (uint32_t j = 0; j < t->nops; j++)
        if (t->ops[j].start <= i && i < t->ops[j].end)
          call = op_name (t->ops[j].type);
      fprintf (stderr, "event %" PRIu64 ": %c 0x%" PRIx64 " +%" PRIu64
               " %s\n", i, k, off, len, call);
    }

  check_moments (t, 0, s1_end, 20, 2, 0);
  check_moments (t, s2_start, s2_end, 0, 1, stride);
  check_moment (t, s2_end, true, RANDOM);

  /* Session 3 starts from a crash state of session 2, recovered. */
  cut = s2_start + pc_rand (&t->rng) % (s2_end - s2_start + 1);
  powercut_crash_state (t->pc, cut, &t->rng, &crash, &crash_size);
  if (t->img)
    qcow2_close (t->img);       /* after the checks: it writes */
  t->img = NULL;
  pc2 = t->pc;
  t->pc = powercut_new ("image", crash, crash_size);
  free (crash);
  t->tap.inner = powercut_io (t->pc);
  snprintf (what, sizeof what, "seed %" PRIu64 ", session 3 from moment %"
            PRIu64 " of session 2", seed, cut);
  t->img = qcow2_open_hostio (&t->tap.io, dir, &opts);
  REQUIRE (t->img != NULL);
  REQUIRE (qcow2_make_writable (t->img) == 0);
  m3_open = powercut_moment (t->pc);
  REQUIRE (qcow2_pread (t->img, t->disk, t->cfg.size, 0) == 0);
  {
    /* The model of sessions 1 and 2 is still there. */
    uint64_t s2_moment_pc = cut;
    struct powercut *cur = t->pc;
    uint64_t bad;

    t->pc = pc2;
    bad = check_disk (t, s2_moment_pc);
    t->pc = cur;
    if (bad > 0)
      FAIL ("%s: %" PRIu64 " sectors hold what they may not", what, bad);
  }
  powercut_free (pc2);
  reset_model (t);
  {
    /* The recovery and set-up, as a call: a cut in it gives the crash
     * state's disk. */
    uint32_t op = begin_op (t, OP_OPEN, 0, 0);
    t->ops[op].start = 0;
    end_op (t, op);
    t->ops[op].end = m3_open;
    t->ops[op].dense = true;
  }
  write_region (t, 0, fill, false);
  write_region (t, 3 * q, fill, false);
  do_flush_t (t);
  trim_region (t, 0, fill, 2 + pc_rand (&t->rng) % 4);
  trim_region (t, 2 * q, fill, 2 + pc_rand (&t->rng) % 4);
  trim_region (t, 3 * q, fill, 2 + pc_rand (&t->rng) % 4);
  do_flush_t (t);
  checkpoint_now (t);
  write_region (t, q, fill, true);
  random_calls (t, 20 + pc_rand (&t->rng) % 20);
  check_live (t);
  count_reuse (t, &clean, &stale);
  end3 = pc_rand (&t->rng) % 2;
  if (end3 == 0)
    close_session (t);
  s3_end = powercut_moment (t->pc);

  check_moments (t, 0, s3_end, 0, 1, stride);
  check_moment (t, s3_end, true, RANDOM);
  qemu_check_wait_all ();

  reuse_clean_trials += clean > 0;
  reuse_stale_trials += stale > 0;
  reuse_states += states - states0;
  if (getenv ("QCOW2J_VERBOSE"))
    fprintf (stderr, "reuse seed %" PRIu64 ": cs %" PRIu64 "%s%s, refcount "
             "%u, %" PRIu64 " MiB; session 1 ends at moment %" PRIu64
             " (file %" PRIu64 " KiB), session 2 at %" PRIu64 " (%s, file %"
             PRIu64 " KiB), session 3 from moment %" PRIu64 ": %" PRIu64
             " moments (%s); data clusters reused: %" PRIu64 " clean, %"
             PRIu64 " stale; %" PRIu64 " crash states\n",
             seed, t->cfg.cs, t->cfg.extl2 ? " extl2" : "",
             t->cfg.base == BASE_COMPRESSED ? " compressed"
             : t->cfg.base == BASE_SNAPSHOT ? " snapshot"
             : t->cfg.base == BASE_BACKING ? " backing" : "",
             t->cfg.refcount_bits ? t->cfg.refcount_bits : 16,
             t->cfg.size / MiB, s1_end, size1 / KiB, s2_end,
             end2 < 2 ? "close" : end2 == 2 ? "flush" : "cut",
             size2 / KiB, cut, s3_end, end3 == 0 ? "close" : "cut",
             clean, stale, states - states0);
  if (unit_failed () > before)
    fprintf (stderr, "reuse trial with seed %" PRIu64 " failed "
             "(QCOW2J_SEED=%" PRIu64 " tests/unit-image-powercut reuse "
             "repeats it)\n", seed, seed);

  trial_free (t);
}

/* Trials a case runs: one per configuration (ten with QCOW2J_SLOW=1). */
static unsigned
case_trials (unsigned per_run)
{
  const char *slow = getenv ("QCOW2J_SLOW");

  return slow && *slow == '1' ? 10 * per_run : per_run;
}

UNIT_CASE (reuse)
{
  const char *seed_env = getenv ("QCOW2J_SEED");
  unsigned trials = case_trials (NR_REUSE_CONFIGS);
  uint64_t checks0 = qemu_check_started ();
  unsigned failed0 = unit_failed ();

  if (seed_env) {
    run_reuse_trial (strtoull (seed_env, NULL, 0), 1);
    trials = 1;
  }
  else
    for (unsigned i = 0; i < trials; i++)
      run_reuse_trial (5000 + i, trials > NR_REUSE_CONFIGS ? 1
                       : unit_quick () ? 16 : 2);
  qemu_check_wait_all ();
  printf ("unit-image-powercut reuse: %u trials of 3 sessions, %" PRIu64
          " crash states, %" PRIu64 " qemu-img checks, %u failures\n",
          trials, reuse_states, qemu_check_started () - checks0,
          unit_failed () - failed0);
  printf ("unit-image-powercut reuse: data clusters reused: %" PRIu64
          " clean (one-flush commit allowed), %" PRIu64 " stale; %" PRIu64
          " allocated past the end; %" PRIu64 " table clusters from free "
          "space; %" PRIu64 " trials reused clean space, %" PRIu64
          " stale space\n", reuse_clean, reuse_stale, reuse_new,
          reuse_tables, reuse_clean_trials, reuse_stale_trials);
  CHECK (reuse_clean_trials > 0);
  CHECK (reuse_stale_trials > 0);
}

UNIT_CASE (trials)
{
  const char *seed_env = getenv ("QCOW2J_SEED");
  unsigned trials = case_trials (NR_CONFIGS);

  if (seed_env) {
    run_trial (strtoull (seed_env, NULL, 0), 2000);
    trials = 1;
  }
  else
    for (unsigned i = 0; i < trials; i++)
      run_trial (1000 + i, unit_quick () ? 20 : 150);
  qemu_check_wait_all ();
  printf ("unit-image-powercut: %u trials, %" PRIu64 " crash states, %"
          PRIu64 " qemu-img checks, %u failures\n",
          trials, states, qemu_check_started (), unit_failed ());
  printf ("unit-image-powercut: %" PRIu64 " calls, %" PRIu64
          " journal superblock writes, %" PRIu64 " cuts during recovery, %"
          PRIu64 " sectors checked byte by byte\n",
          ops_total, sb_writes, recovery_cuts, byte_checked);
  printf ("unit-image-powercut: %" PRIu64 " trials over a backing file, %"
          PRIu64 " with several threads and the checkpoint thread, %" PRIu64
          " moved the refcount table\n",
          backing_trials, threaded_trials, reftable_moves);
}

/* Power cuts and persistent dirty bitmaps -----------------------------------
 *
 * The "bitmaps" case: the claim of lib/bitmaps-live.c, that a power cut
 * at any moment leaves bitmaps an incremental backup may trust.  Each
 * trial's base image is made by QEMU (qemu-img convert of content in
 * about half of the disk, so that writes overwrite allocated clusters in
 * place) with three persistent bitmaps: b2, given bits by a qemu-io write
 * while enabled and then disabled; b0 (64 KiB granules) and b1 (4 KiB,
 * 512 bytes on the 512-byte-cluster image so that its data spans two
 * clusters: QEMU allocates only those holding set bits, lib the others),
 * both enabled, with a few bits set by a last qemu-io write.  Two write sessions run on it: random
 * writes (in place or allocating), zeroes, trims, flushes and checkpoints
 * (the bits are checkpointed in place like any metadata), the first
 * ending with a close, the second with a close, a flush or nothing.  The
 * power is cut at every moment of both (QCOW2J_QUICK=1: every 8th, and
 * one flush in 4; several subsets of the windows pending at the flushes
 * of set-up, checkpoints and close), and each recovered
 * image (replayed by lib, closed) is checked as in the "trials" case and
 * then its bitmaps, parsed here from the file by QEMU's rules
 * (docs/interop/qcow2.txt), not lib's:
 *
 * - the autoclear bit and the directory are there, no bitmap is in use
 *   (QEMU would throw it away), b0 and b1 are enabled, b2 is disabled
 *   and holds exactly the bits it held;
 * - no bit that was set is clear;
 * - every granule whose content differs from the content at the start of
 *   the trial has its bit set in b0 and b1: what a backup that trusts
 *   them would miss;
 * - every bit set since the start covers a granule that a write, zero or
 *   trim started before the cut touched: no bit for a range no call
 *   asked for.
 *
 * A sample of the states goes to qemu-img check, as in the other cases
 * (one in 50, QCOW2J_QUICK=1: 200, as every moment is cut), which also
 * checks that the bitmaps' clusters are referenced.  The trial
 * counts the writes in place into granules whose b1 bit was clear (the
 * case where lib commits the bits before the data): without them the
 * case would prove little.  "unit-image-powercut bitmaps" runs it alone;
 * QCOW2J_SLOW=1 runs ten times as many trials, QCOW2J_SEED=N repeats one
 * of them, QCOW2J_EVENTS=1 lists its host I/O.
 */

#define NR_BM 3
static const char *const bm_names[NR_BM] = { "b0", "b1", "b2" };

/* One persistent bitmap as read from an image file. */
struct bm {
  uint32_t flags;               /* 1: in use, 2: enabled (auto) */
  unsigned granularity_bits;
  uint64_t nbits;
  uint8_t *bits;                /* bit i: bit i % 8 of byte i / 8 */
};

struct bm_config {
  uint64_t cs, size;
  bool extl2;
};

static const struct bm_config bm_configs[] = {
  { 4 * KiB, 4 * MiB, false },
  { 64 * KiB, 8 * MiB, false },
  { 512, 4 * MiB, false },
  { 32 * KiB, 4 * MiB, true },
  { 8 * KiB, 4 * MiB, false },
  { 16 * KiB, 4 * MiB, true },
};
#define NR_BM_CONFIGS (sizeof bm_configs / sizeof bm_configs[0])

static uint64_t bm_states, bm_dirty_checked, bm_new_checked;
static uint64_t bm_inplace_clean, bm_inplace_clean_trials;

static void
free_bitmaps (struct bm b[NR_BM])
{
  for (unsigned k = 0; k < NR_BM; k++) {
    free (b[k].bits);
    b[k].bits = NULL;
  }
}

static bool
bm_bit (const struct bm *b, uint64_t i)
{
  return b->bits[i / 8] >> (i % 8) & 1;
}

/* Read the bitmaps b0, b1 and b2 of the image file d (size bytes) with a
 * disk of disk_size bytes into out[] (bits malloc'd; free_bitmaps), as
 * QEMU would load them.  NULL if they are all there and well formed, else
 * what is wrong. */
static const char *
read_bitmaps (const uint8_t *d, uint64_t size, uint64_t disk_size,
              struct bm out[NR_BM])
{
  uint64_t cs, pos, dir_off = 0, dir_size = 0;
  uint32_t nb = 0;
  bool found = false;

  memset (out, 0, NR_BM * sizeof *out);
  if (size < 104 || memcmp (d, "QFI\xfb", 4) != 0 || get_be32 (d + 4) != 3)
    return "not a qcow2 version 3 header";
  cs = 1ULL << get_be32 (d + 20);
  /* Autoclear bit 0: a QEMU that wrote the image without keeping the
   * bitmaps clears it, and then ignores them. */
  if (!(get_be64 (d + 88) & 1))
    return "the bitmaps' autoclear bit is clear";
  for (pos = get_be32 (d + 100); pos + 8 <= size && pos < cs; ) {
    uint32_t type = get_be32 (d + pos), len = get_be32 (d + pos + 4);

    if (type == 0)
      break;
    if (type == 0x23852875 && len >= 24 && pos + 32 <= size) {
      nb = get_be32 (d + pos + 8);
      dir_size = get_be64 (d + pos + 16);
      dir_off = get_be64 (d + pos + 24);
      found = true;
    }
    pos += 8 + ((uint64_t) len + 7) / 8 * 8;
  }
  if (!found)
    return "no bitmaps extension";
  if (nb != NR_BM)
    return "not three bitmaps";
  if (dir_off > size || dir_size > size - dir_off)
    return "the directory is outside the file";
  for (uint64_t i = 0, at = 0; i < nb; i++) {
    const uint8_t *e = d + dir_off + at;
    uint64_t table, nbytes;
    uint32_t tsize, extra;
    uint16_t nlen;
    int k = -1;
    struct bm *b;

    if (at + 24 > dir_size)
      return "a directory entry runs past the directory";
    table = get_be64 (e);
    tsize = get_be32 (e + 8);
    nlen = get_be16 (e + 18);
    extra = get_be32 (e + 20);
    if (at + 24 + extra + nlen > dir_size)
      return "a directory entry runs past the directory";
    for (unsigned j = 0; j < NR_BM; j++)
      if (nlen == strlen (bm_names[j]) &&
          memcmp (e + 24 + extra, bm_names[j], nlen) == 0)
        k = j;
    if (k < 0 || out[k].bits != NULL)
      return "a bitmap not named b0, b1 or b2, or twice";
    b = &out[k];
    b->flags = get_be32 (e + 12);
    b->granularity_bits = e[17];
    if (e[16] != 1 || b->granularity_bits < 9 || b->granularity_bits > 31)
      return "a bitmap QEMU would not load (type, granularity)";
    b->nbits = (disk_size + (1ULL << b->granularity_bits) - 1) >>
      b->granularity_bits;
    nbytes = (b->nbits + 7) / 8;
    if (tsize != (nbytes + cs - 1) / cs)
      return "a table's size does not match the disk";
    if (table > size || 8 * (uint64_t) tsize > size - table)
      return "a table is outside the file";
    b->bits = calloc (tsize, cs);
    if (b->bits == NULL)
      return "out of memory";
    for (uint32_t ti = 0; ti < tsize; ti++) {
      uint64_t ent = get_be64 (d + table + 8 * ti);
      uint64_t data = ent & 0x00fffffffffffe00ULL;

      if (data != 0) {
        if (data > size || cs > size - data)
          return "a data cluster is outside the file";
        memcpy (b->bits + ti * cs, d + data, cs);
      }
      else if (ent & 1)
        memset (b->bits + ti * cs, 0xff, cs);
    }
    at += (24 + extra + nlen + 7) / 8 * 8;
  }
  return NULL;
}

/* The base image: content in about half of the disk, converted by QEMU;
 * b2 gets bits and is disabled, b0 and b1 get a few. */
static void
make_bitmap_base (struct trial *t, const char *path)
{
  const struct config *c = &t->cfg;
  const unsigned g1 = c->cs == 512 ? 512 : 4096;
  uint64_t off2, len2, off0, len0;

  make_content (t);
  convert_content (t, path, c->cs, false, c->extl2);
  /* Sector-aligned, so that the model is plain memsets. */
  len2 = SECTOR * (64 + pc_rand (&t->rng) % 512);
  off2 = pc_rand (&t->rng) % ((c->size - len2) / SECTOR + 1) * SECTOR;
  len0 = SECTOR * (1 + pc_rand (&t->rng) % 256);
  off0 = pc_rand (&t->rng) % ((c->size - len0) / SECTOR + 1) * SECTOR;
  CHECK (run_shell ("qemu-img bitmap --add -g 65536 '%s' b2 && "
                    "qemu-io -c 'write -q -P 0x33 %" PRIu64 " %" PRIu64 "' "
                    "'%s' && "
                    "qemu-img bitmap --disable '%s' b2 && "
                    "qemu-img bitmap --add -g 65536 '%s' b0 && "
                    "qemu-img bitmap --add -g %u '%s' b1 && "
                    "qemu-io -c 'write -q -P 0x44 %" PRIu64 " %" PRIu64 "' "
                    "'%s'", path, off2, len2, path, path, path, g1, path,
                    off0, len0, path) == 0);
  memset (t->init + off2, 0x33, len2);
  memset (t->init + off0, 0x44, len0);
}

/* Check the bitmaps of a recovered image file against those at the start
 * of the trial (t->bm) and its disk (t->disk) against the content at the
 * start (t->init); the calls started before the cut at moment are those
 * that may have set bits.  Reports to stderr and returns false if wrong. */
static bool
check_bitmaps (struct trial *t, const uint8_t *file, uint64_t file_size,
               uint64_t moment, const char *what)
{
  struct bm now[NR_BM];
  const char *why = read_bitmaps (file, file_size, t->cfg.size, now);
  unsigned bad = 0;

  bm_states++;
  if (why != NULL) {
    fprintf (stderr, "%s: bitmaps: %s\n", what, why);
    free_bitmaps (now);
    return false;
  }
  for (unsigned k = 0; k < NR_BM; k++) {
    const struct bm *b = &now[k], *b0 = &t->bm[k];

    if (b->flags != b0->flags || b->granularity_bits != b0->granularity_bits) {
      fprintf (stderr, "%s: bitmap %s: flags 0x%" PRIx32 ", granularity "
               "bits %u; at the start 0x%" PRIx32 ", %u (1: in use, 2: "
               "enabled)\n", what, bm_names[k], b->flags,
               b->granularity_bits, b0->flags, b0->granularity_bits);
      bad++;
    }
  }
  if (bad > 0) {
    free_bitmaps (now);
    return false;
  }
  /* Disabled: QEMU leaves it alone, and so must lib and its replay. */
  if (memcmp (now[2].bits, t->bm[2].bits, (now[2].nbits + 7) / 8) != 0) {
    fprintf (stderr, "%s: the disabled bitmap b2 changed\n", what);
    bad++;
  }
  for (unsigned k = 0; k < 2; k++) {
    const struct bm *b = &now[k], *b0 = &t->bm[k];
    const unsigned gb = b->granularity_bits;
    uint8_t *touched = calloc (1, b->nbits);

    REQUIRE (touched != NULL);
    for (uint32_t i = 0; i < t->nops; i++) {
      const struct op *o = &t->ops[i];

      if (o->start >= moment || o->len == 0 ||
          (o->type != OP_WRITE && o->type != OP_ZERO && o->type != OP_TRIM))
        continue;
      memset (touched + (o->offset >> gb), 1,
              ((o->offset + o->len - 1) >> gb) - (o->offset >> gb) + 1);
    }
    for (uint64_t i = 0; i < b->nbits; i++) {
      const uint64_t lo = i << gb;
      const uint64_t len = umin (1ULL << gb, t->cfg.size - lo);
      const bool set = bm_bit (b, i), was = bm_bit (b0, i);
      const char *wrong = NULL;

      if (was && !set)
        wrong = "was set, now clear";
      else if (!set && memcmp (t->disk + lo, t->init + lo, len) != 0)
        wrong = "clear, but the granule's content changed";
      else if (set && !was && !touched[i])
        wrong = "set, but no call started before the cut touched the granule";
      else if (set && !was)
        bm_new_checked++;
      if (set && memcmp (t->disk + lo, t->init + lo, len) != 0)
        bm_dirty_checked++;
      if (wrong == NULL)
        continue;
      if (bad++ < 4) {
        fprintf (stderr, "%s: bitmap %s: bit %" PRIu64 " (guest 0x%"
                 PRIx64 "+0x%" PRIx64 ") %s; calls touching it:", what,
                 bm_names[k], i, lo, len, wrong);
        for (uint32_t j = 0, shown = 0; j < t->nops && shown < 8; j++) {
          const struct op *o = &t->ops[j];

          if (o->len > 0 && o->offset < lo + len && lo < o->offset + o->len) {
            fprintf (stderr, " %" PRIu32 " (%s 0x%" PRIx64 "+%" PRIu64
                     ", moments %" PRIu64 "-%" PRIu64 ")", j,
                     op_name (o->type), o->offset, o->len, o->start, o->end);
            shown++;
          }
        }
        fprintf (stderr, "\n");
      }
    }
    free (touched);
  }
  if (bad > 0)
    fprintf (stderr, "%s: %u bitmap bits wrong\n", what, bad);
  free_bitmaps (now);
  return bad == 0;
}

/* Random calls over the whole disk, flushes fewer than in the "trials"
 * case (every write in place into a clean granule flushes anyway, for its
 * commit), and checkpoints.  A write is counted when it lands in place
 * into a granule b1 had clear at the start and no call of the trial has
 * touched since (dirty, b1's granules of the calls so far). */
static unsigned
bitmap_calls (struct trial *t, unsigned nops, uint8_t *dirty)
{
  struct worker w = { .t = t, .rng = pc_rand (&t->rng), .id = 0, .n = 1,
                      .nops = nops };
  const unsigned gb = t->bm[1].granularity_bits;
  unsigned inplace_clean = 0;

  for (unsigned i = 0; i < nops; i++) {
    uint64_t r = pc_rand (&w.rng) % 100, offset, len;
    bool small = pc_rand (&w.rng) % 3 == 0;

    if (r >= 90) {
      checkpoint_now (t);
      continue;
    }
    if (r >= 75) {
      do_flush_t (t);
      continue;
    }
    pick_range (&w, small, &offset, &len);
    if (r < 55) {
      struct qcow2_run run;
      bool clean = false;

      for (uint64_t g = offset >> gb; g <= (offset + len - 1) >> gb; g++)
        clean = clean || !dirty[g];
      /* Single-threaded: nothing changes the mapping meanwhile. */
      if (clean && qcow2_map (t->img, offset, len, &run) == 0 &&
          run.type == RUN_DATA && run.copied && run.length >= len)
        inplace_clean++;
      do_write_at (t, offset, len);
    }
    else if (r < 65)
      do_zero_at (t, offset, len, pc_rand (&w.rng) & 1,
                  pc_rand (&w.rng) % 5 == 0);
    else
      do_trim_at (t, offset, len);
    memset (dirty + (offset >> gb), 1,
            ((offset + len - 1) >> gb) - (offset >> gb) + 1);
  }
  return inplace_clean;
}

static void
run_bitmap_trial (uint64_t seed, unsigned flush_every, unsigned stride)
{
  const struct bm_config *bc = &bm_configs[seed % NR_BM_CONFIGS];
  struct trial *t = trial_new (seed, (struct config) {
      bc->cs, bc->size, bc->extl2, false, BASE_BITMAPS, false, 1, 0, false });
  struct bm init[NR_BM];
  unsigned before = unit_failed (), end2, inplace = 0, ncalls;
  uint64_t states0 = states, checks0 = qemu_check_started ();
  uint64_t s1_end, s2_end, size;
  const uint8_t *base;
  uint8_t *dirty;
  const char *why;

  load_base (t);
  base = powercut_data (t->pc, &size);
  why = read_bitmaps (base, size, t->cfg.size, init);
  if (why != NULL) {
    FAIL ("seed %" PRIu64 ": the base image's bitmaps: %s", seed, why);
    free_bitmaps (init);
    trial_free (t);
    return;
  }
  t->bm = init;
  /* What QEMU made: b0 and b1 enabled with a few bits, b2 disabled with
   * more; none in use. */
  CHECK (init[0].flags == 2 && init[1].flags == 2 && init[2].flags == 0);
  CHECK (!is_zero (init[2].bits, (init[2].nbits + 7) / 8));
  CHECK (!is_zero (init[1].bits, (init[1].nbits + 7) / 8));
  /* Every moment is cut, and 512-byte clusters make many moments of
   * each call. */
  ncalls = t->cfg.cs == 512 ? 10 : 25;
  dirty = malloc (init[1].nbits);
  REQUIRE (dirty != NULL);
  for (uint64_t i = 0; i < init[1].nbits; i++)
    dirty[i] = bm_bit (&init[1], i);

  /* Session 1, closed. */
  open_session (t, false);
  inplace += bitmap_calls (t, ncalls + pc_rand (&t->rng) % ncalls, dirty);
  check_live (t);
  close_session (t);
  s1_end = powercut_moment (t->pc);

  /* Session 2 on the same file: bits already set, some not yet. */
  open_session (t, false);
  inplace += bitmap_calls (t, ncalls + pc_rand (&t->rng) % ncalls, dirty);
  check_live (t);
  end2 = pc_rand (&t->rng) % 3;
  if (end2 == 0)
    close_session (t);
  else if (end2 == 1)
    do_flush_t (t);
  s2_end = powercut_moment (t->pc);
  if (getenv ("QCOW2J_EVENTS"))
    for (uint64_t i = 0; i < s2_end; i++) {
      uint64_t off, len;
      char k = powercut_event (t->pc, i, &off, &len);
      int64_t call = -1;

      for (uint32_t j = 0; j < t->nops; j++)
        if (t->ops[j].start <= i && i < t->ops[j].end)
          call = j;
      fprintf (stderr, "event %" PRIu64 ": %c 0x%" PRIx64 " +%" PRIu64
               " call %" PRId64 " %s\n", i, k, off, len, call,
               call >= 0 ? op_name (t->ops[call].type) : "");
    }

  check_moments (t, 0, s2_end, 0, flush_every, stride);
  check_moment (t, s2_end, true, RANDOM);
  qemu_check_wait_all ();

  bm_inplace_clean += inplace;
  bm_inplace_clean_trials += inplace > 0;
  if (getenv ("QCOW2J_VERBOSE"))
    fprintf (stderr, "bitmaps seed %" PRIu64 ": cs %" PRIu64 "%s, %" PRIu64
             " MiB, b1 granularity %u; %" PRIu32 " calls, %u writes in "
             "place into clean granules; session 1 ends at moment %" PRIu64
             ", session 2 at %" PRIu64 " (%s); %" PRIu64 " crash states, %"
             PRIu64 " qemu-img checks\n", seed, t->cfg.cs,
             t->cfg.extl2 ? " extl2" : "", t->cfg.size / MiB,
             1u << init[1].granularity_bits, t->nops, inplace, s1_end,
             s2_end, end2 == 0 ? "close" : end2 == 1 ? "flush" : "cut",
             states - states0, qemu_check_started () - checks0);
  if (unit_failed () > before)
    fprintf (stderr, "bitmaps trial with seed %" PRIu64 " failed "
             "(QCOW2J_SEED=%" PRIu64 " tests/unit-image-powercut bitmaps "
             "repeats it)\n", seed, seed);

  free (dirty);
  free_bitmaps (init);
  t->bm = NULL;
  trial_free (t);
}

UNIT_CASE (bitmaps)
{
  const char *seed_env = getenv ("QCOW2J_SEED");
  unsigned trials = case_trials (NR_BM_CONFIGS);
  uint64_t states0 = states, checks0 = qemu_check_started ();
  unsigned failed0 = unit_failed (), qemu_every0 = qemu_every;

  if (!have_qemu_img) {
    /* QEMU makes the bitmaps and judges them. */
    printf ("unit-image-powercut bitmaps: skipped: no qemu-img\n");
    return;
  }
  if (seed_env) {
    run_bitmap_trial (strtoull (seed_env, NULL, 0), 1, 1);
    trials = 1;
  }
  else {
    /* Every moment is cut: qemu-img check of one state in 10 would take
     * most of the case's time, for checks of the same few clusters. */
    qemu_every = unit_quick () ? 200 : 50;
    for (unsigned i = 0; i < trials; i++)
      run_bitmap_trial (7000 + i, unit_quick () ? 4 : 1,
                        unit_quick () ? 8 : 1);
  }
  qemu_check_wait_all ();
  qemu_every = qemu_every0;
  printf ("unit-image-powercut bitmaps: %u trials of 2 sessions, %" PRIu64
          " crash states (%" PRIu64 " bitmap checks), %" PRIu64
          " qemu-img checks, %u failures\n", trials, states - states0,
          bm_states, qemu_check_started () - checks0,
          unit_failed () - failed0);
  printf ("unit-image-powercut bitmaps: %" PRIu64 " writes in place into "
          "clean granules (in %" PRIu64 " trials); %" PRIu64 " changed "
          "granules found marked, %" PRIu64 " new bits found in touched "
          "granules\n", bm_inplace_clean, bm_inplace_clean_trials,
          bm_dirty_checked, bm_new_checked);
  /* Without writes in place into clean granules the commit before them
   * would go untested. */
  CHECK (bm_inplace_clean_trials == trials);
}

/* Power cuts on version 2 images, written without a journal ---------------
 *
 * The "v2" case: the claim of lib/writeback.c (docs/journal-format.md
 * 13.1), that a power cut at any moment of a session on a version 2
 * (compat=0.10) image leaves an image QEMU accepts with at worst leaked
 * clusters, that lost no write a flush acknowledged, and that is still
 * version 2 with no journal extension.  Nothing is replayed at the next
 * open, so the crash state itself is judged, not an image lib has opened
 * writable and closed (which could hide what a cut left).
 *
 * Each trial's base image is made by qemu-img with compat=0.10 (see
 * v2_configs): empty; compressed clusters; an internal snapshot, so that
 * writes copy shared L2 tables and data clusters; a backing file; and
 * 512-byte clusters (many tables and refcount blocks), one of them
 * filled past 8 MiB of file so that the refcount table must grow.  Two
 * sessions run on it.  The first writes a region, trims or zeroes
 * (may_trim) parts of it, makes random calls and closes.  The second
 * writes another region (reusing, learnt from the refcounts at open, the
 * clusters the first freed), trims both, flushes (the write-back after
 * the one that took the references out releases those clusters), writes
 * a third region into them, makes random calls (on two threads with the
 * checkpoint thread running, in some trials) and ends with a close, a
 * flush or nothing.  In the second session every flush call, each a
 * write-back, is checked as densely as a checkpoint in the other cases
 * (about MAX_DENSE moments of it; at each of its host flushes several
 * random subsets of the writes pending, every subset of a few), as is
 * every moment just before a host flush completes; the first session is
 * sampled (evenly spaced moments, one host flush in 8).
 *
 * Each crash state is checked as the file a cut leaves:
 *
 * - cluster 0 holds a version 2 header and no Q2JL magic;
 * - opened read-only by lib, every sector reads a version the model of
 *   the "trials" case allows (what the last acknowledged flush covered,
 *   or a later version);
 * - one state in v2_qemu_every (QCOW2J_QUICK=1: fewer), and the last,
 *   goes to qemu-img check, which must exit 0 or 3 (leaked clusters
 *   only): never 2 (corruption, a refcount below the references or a
 *   wrong COPIED flag), nor anything else;
 * - then it is opened writable, a write and a zero (may_trim) made and
 *   the image closed: it must still be version 2, read as the crash state
 *   with those two calls applied, and (sampled the same way) pass
 *   qemu-img check with exit 0 or 3, since lib does not repair the leaks
 *   a cut left.  In one state in 4 the power is cut again during that
 *   session, at a random moment (half the time just before one of its
 *   flushes completes), and that state must pass the same checks, each
 *   sector holding what the crash state held or what the session wrote.
 *
 * The exits of qemu-img are counted, for the states and for the images
 * after the session.  "unit-image-powercut v2" runs the case alone;
 * QCOW2J_SEED=N repeats one trial (with more moments), QCOW2J_VERBOSE=1
 * describes each trial.
 */

struct v2_config {
  uint64_t cs, size;
  enum base base;
  unsigned threads;             /* in the second session's random calls */
  bool grow;                    /* fill half the disk, then a quarter */
};

static const struct v2_config v2_configs[] = {
  { 64 * KiB, 8 * MiB, BASE_EMPTY, 1, false },
  { 4 * KiB, 4 * MiB, BASE_COMPRESSED, 1, false },
  { 16 * KiB, 8 * MiB, BASE_SNAPSHOT, 1, false },
  { 32 * KiB, 8 * MiB, BASE_BACKING, 1, false },
  { 512, 14 * MiB, BASE_EMPTY, 1, true },
  { 4 * KiB, 8 * MiB, BASE_SNAPSHOT, 2, false },
  { 512, 2 * MiB, BASE_SNAPSHOT, 1, false },
  { 8 * KiB, 4 * MiB, BASE_EMPTY, 2, false },
};
#define NR_V2_CONFIGS (sizeof v2_configs / sizeof v2_configs[0])

static uint64_t v2_states, v2_recuts, v2_reused, v2_reuse_trials;
static uint64_t v2_reftable_moves;
static unsigned v2_qemu_every = 5;
/* Moments of a write-back taken besides its flushes: it has few writes
 * (its tables), and there are many. */
#define V2_MAX_DENSE 30
/* qemu-img check of the crash states, and of the images after a session
 * on them (closed, or cut again). */
static struct qemu_check_tally v2_crash_tally, v2_after_tally;

/* Cluster 0 of the file d (size bytes): a version 2 header, and no Q2JL
 * extension magic anywhere in it. */
static bool
v2_header_ok (const uint8_t *d, uint64_t size, uint64_t cs, const char *what)
{
  uint8_t magic[4];

  put_be32 (magic, QJ_EXT_MAGIC);
  if (size < 72 || memcmp (d, "QFI\xfb", 4) != 0 || get_be32 (d + 4) != 2) {
    fprintf (stderr, "%s: no version 2 header\n", what);
    return false;
  }
  if (memmem (d, umin (size, cs), magic, sizeof magic) != NULL) {
    fprintf (stderr, "%s: Q2JL magic in cluster 0\n", what);
    return false;
  }
  return true;
}

/* A random sector-aligned range of 1 to 64 KiB. */
static void
v2_range (struct trial *t, uint64_t *offset, uint64_t *len)
{
  *len = SECTOR * (1 + pc_rand (&t->rng) % (64 * KiB / SECTOR));
  *offset = pc_rand (&t->rng) % ((t->cfg.size - *len) / SECTOR + 1) * SECTOR;
}

/* The state a cut during the session left (tg's moment m2): version 2,
 * accepted by QEMU, each sector as in the crash state (hashes in
 * t->first_hash), as the session left it (after), or as its write left it
 * (wdata at [woff, woff + wlen)) before its zero. */
static bool
v2_check_recut (struct trial *t, struct target *tg, uint64_t m2,
                const uint8_t *after, const uint8_t *wdata, uint64_t woff,
                uint64_t wlen, bool qemu, const char *what)
{
  uint8_t *crash;
  uint64_t size;
  struct target tg2;
  bool ok;

  powercut_crash_state (tg->pc, m2, &t->rng, &crash, &size);
  target_init (&tg2, crash, size, false);
  v2_recuts++;
  ok = v2_header_ok (crash, size, t->cfg.cs, what);
  if (ok && qemu)
    qemu_check_start_leaks (dir, crash, size, what, &v2_after_tally);
  ok = ok && open_and_read (t, target_io (&tg2), false, what);
  for (uint64_t s = 0; s < t->nsect && ok; s++) {
    uint64_t h = hash_sector (t->disk + s * SECTOR);

    if (h != t->first_hash[s] && h != hash_sector (after + s * SECTOR) &&
        (s * SECTOR < woff || s * SECTOR >= woff + wlen ||
         h != hash_sector (wdata + (s * SECTOR - woff)))) {
      fprintf (stderr, "%s: sector %" PRIu64 " holds neither what the "
               "crash state held nor what the session wrote\n", what, s);
      ok = false;
    }
  }
  target_free (&tg2);
  return ok;
}

/* A session on the crash state (its disk in t->disk, sector hashes in
 * t->first_hash): open writable, write, zero (may_trim), close; the image
 * is then still version 2, reads as expected and (if qemu) goes to
 * qemu-img check.  If cut_again, a state cut during the session is
 * checked too. */
static bool
v2_session_after (struct trial *t, uint8_t *crash, uint64_t crash_size,
                  bool cut_again, bool qemu, const char *what)
{
  struct qcow2_open_options opts = { .writable = true,
                                     .l2_cache_bytes = 1 * MiB };
  uint64_t woff, wlen, zoff, zlen, size;
  uint8_t *after = malloc (t->cfg.size), *buf = malloc (64 * KiB);
  struct qcow2_image *img;
  struct target tg;
  const uint8_t *d;
  char what2[260];
  bool ok = false;

  REQUIRE (after != NULL && buf != NULL);
  snprintf (what2, sizeof what2, "%s, after a session", what);
  target_init (&tg, crash, crash_size, cut_again);
  v2_range (t, &woff, &wlen);
  v2_range (t, &zoff, &zlen);
  for (uint64_t i = 0; i < wlen; i += 8) {
    uint64_t w = pc_rand (&t->rng);
    memcpy (buf + i, &w, 8);
  }
  memcpy (after, t->disk, t->cfg.size);
  memcpy (after + woff, buf, wlen);
  img = qcow2_open_hostio (target_io (&tg), dir, &opts);
  if (img == NULL)
    fprintf (stderr, "%s: qcow2_open_hostio failed: %m\n", what2);
  else if (qcow2_make_writable (img) == -1 ||
           qcow2_pwrite (img, buf, wlen, woff) == -1 ||
           qcow2_zero (img, zlen, zoff, true, false) == -1) {
    fprintf (stderr, "%s: make writable, write or zero failed: %m\n", what2);
    qcow2_close (img);
  }
  else if (qcow2_close (img) == -1)
    fprintf (stderr, "%s: qcow2_close failed: %m\n", what2);
  else
    ok = true;
  memset (after + zoff, 0, zlen);

  if (ok) {
    d = target_data (&tg, &size);
    ok = v2_header_ok (d, size, t->cfg.cs, what2);
    if (ok && qemu)
      qemu_check_start_leaks (dir, d, size, what2, &v2_after_tally);
  }
  if (ok && cut_again) {
    uint64_t n2 = powercut_moment (tg.pc), m2 = pc_rand (&t->rng) % (n2 + 1);

    if (pc_rand (&t->rng) & 1)
      m2 = random_flush_moment (t, tg.pc, n2, m2);
    snprintf (what2, sizeof what2, "%s, cut again at %" PRIu64 "/%" PRIu64
              " of a session", what, m2, n2);
    ok = v2_check_recut (t, &tg, m2, after, buf, woff, wlen, qemu, what2);
  }
  /* Last: it overwrites t->disk. */
  if (ok) {
    snprintf (what2, sizeof what2, "%s, after a session", what);
    ok = open_and_read (t, target_io (&tg), false, what2);
    for (uint64_t s = 0; s < t->nsect && ok; s++)
      if (memcmp (t->disk + s * SECTOR, after + s * SECTOR, SECTOR) != 0) {
        fprintf (stderr, "%s: sector %" PRIu64 " is not what the session "
                 "left (write 0x%" PRIx64 "+%" PRIu64 ", zero 0x%" PRIx64
                 "+%" PRIu64 ")\n", what2, s, woff, wlen, zoff, zlen);
        ok = false;
      }
  }
  target_free (&tg);
  free (after);
  free (buf);
  return ok;
}

static void
check_v2_moment (struct trial *t, uint64_t moment, bool final, uint64_t subset)
{
  uint8_t *crash;
  uint64_t crash_size, bad;
  struct target tg;
  char what[200];
  bool ok, cut_again = pc_rand (&t->rng) % 4 == 0;
  bool qemu = final || pc_rand (&t->rng) % v2_qemu_every == 0;

  snprintf (what, sizeof what, "v2 seed %" PRIu64 ", moment %" PRIu64 "/%"
            PRIu64, t->seed, moment, powercut_moment (t->pc));
  if (subset == RANDOM)
    powercut_crash_state (t->pc, moment, &t->rng, &crash, &crash_size);
  else
    powercut_crash_state_subset (t->pc, moment, subset, &crash, &crash_size);
  states++;
  t->states++;
  v2_states++;

  ok = v2_header_ok (crash, crash_size, t->cfg.cs, what);
  if (ok && qemu)
    qemu_check_start_leaks (dir, crash, crash_size, what, &v2_crash_tally);
  if (ok) {
    /* A copy: the session after it writes to its own. */
    uint8_t *copy = malloc (crash_size);

    REQUIRE (copy != NULL);
    memcpy (copy, crash, crash_size);
    target_init (&tg, copy, crash_size, false);
    ok = open_and_read (t, target_io (&tg), false, what);
    target_free (&tg);
  }
  if (ok) {
    bad = check_disk (t, moment);
    if (bad > 0) {
      fprintf (stderr, "%s: %" PRIu64 " sectors hold what they may not\n",
               what, bad);
      ok = false;
    }
  }
  if (ok)
    ok = v2_session_after (t, crash, crash_size, cut_again, qemu, what);
  else
    free (crash);
  if (!ok) {
    FAIL ("%s: the crash state is wrong (above)", what);
    t->printed++;
  }
}

/* Sequential writes of MAX_IO over [start, start + len), a flush after
 * every fourth. */
static void
v2_fill (struct trial *t, uint64_t start, uint64_t len)
{
  for (uint64_t pos = start, i = 1; pos < start + len; pos += MAX_IO, i++) {
    do_write_at (t, pos, umin (MAX_IO, start + len - pos));
    if (i % 4 == 0)
      do_flush_t (t);
  }
}

/* Data clusters the session allocated from free space inside the file. */
static uint64_t
v2_reuse_count (struct trial *t)
{
  uint64_t n;

  qcow2_meta_lock (t->img);
  n = t->img->stat_data_clean + t->img->stat_data_stale;
  qcow2_meta_unlock (t->img);
  return n;
}

static void
run_v2_trial (uint64_t seed, unsigned samples, unsigned flush_every1)
{
  const struct v2_config *vc = &v2_configs[seed % NR_V2_CONFIGS];
  struct trial *t = trial_new (seed, (struct config) {
      vc->cs, vc->size, false, false, vc->base, false, vc->threads, 0,
      true });
  unsigned before = unit_failed (), end2;
  uint64_t states0 = states, q, fill, s1_end, s2_end, reused, size;
  const uint8_t *d;

  q = t->cfg.size / 4 / t->cfg.cs * t->cfg.cs;
  fill = umin (q, 48 * t->cfg.cs);
  t->max_dense = V2_MAX_DENSE;
  load_base (t);

  /* Session 1: region A written, parts of it freed, random calls. */
  open_session (t, false);
  if (vc->grow)
    v2_fill (t, 0, t->cfg.size / 2);
  write_region (t, 0, fill, false);
  do_flush_t (t);
  trim_region (t, 0, fill, 4 + pc_rand (&t->rng) % 5);
  do_flush_t (t);
  random_calls (t, 20 + pc_rand (&t->rng) % 20);
  reused = v2_reuse_count (t);
  close_session (t);
  s1_end = powercut_moment (t->pc);

  /* Session 2, every write-back checked densely: region B reuses what
   * session 1 freed; trims free clusters of A and B, released by the
   * write-back after the one that drops their references; region C
   * reuses those. */
  t->dense_flushes = true;
  open_session (t, false);
  write_region (t, q, fill, true);
  trim_region (t, 0, fill, 2 + pc_rand (&t->rng) % 4);
  trim_region (t, q, fill, 3 + pc_rand (&t->rng) % 6);
  do_flush_t (t);
  do_flush_t (t);
  write_region (t, 2 * q, fill, true);
  if (vc->grow)
    v2_fill (t, t->cfg.size / 2, t->cfg.size / 4);
  run_workers (t, 30 + pc_rand (&t->rng) % 30, run_worker);
  check_live (t);
  reused += v2_reuse_count (t);
  end2 = pc_rand (&t->rng) % 3;
  if (end2 == 0)
    close_session (t);
  else if (end2 == 1)
    do_flush_t (t);
  s2_end = powercut_moment (t->pc);
  d = powercut_data (t->pc, &size);
  v2_reftable_moves += memcmp (d + 48, t->init_header + 48, 8) != 0;
  v2_reused += reused;
  v2_reuse_trials += reused > 0;

  check_moments (t, 0, s1_end, samples / 4, flush_every1, 0);
  check_moments (t, s1_end, s2_end, samples, 1, 0);
  check_moment (t, s2_end, true, RANDOM);
  qemu_check_wait_all ();

  if (getenv ("QCOW2J_VERBOSE"))
    fprintf (stderr, "v2 seed %" PRIu64 ": cs %" PRIu64 "%s, %u thread%s, %"
             PRIu64 " MiB; session 1 ends at moment %" PRIu64 ", session 2 "
             "at %" PRIu64 " (%s, file %" PRIu64 " KiB%s); %" PRIu64
             " clusters reused; %" PRIu64 " crash states\n", seed,
             t->cfg.cs, t->cfg.base == BASE_COMPRESSED ? " compressed"
             : t->cfg.base == BASE_SNAPSHOT ? " snapshot"
             : t->cfg.base == BASE_BACKING ? " backing" : "", vc->threads,
             vc->threads > 1 ? "s" : "", t->cfg.size / MiB, s1_end, s2_end,
             end2 == 0 ? "close" : end2 == 1 ? "flush" : "cut", size / KiB,
             memcmp (d + 48, t->init_header + 48, 8) != 0
             ? ", refcount table moved" : "", reused, states - states0);
  if (unit_failed () > before)
    fprintf (stderr, "v2 trial with seed %" PRIu64 " failed (QCOW2J_SEED=%"
             PRIu64 " tests/unit-image-powercut v2 repeats it)\n", seed, seed);
  trial_free (t);
}

UNIT_CASE (v2)
{
  const char *seed_env = getenv ("QCOW2J_SEED");
  unsigned trials = case_trials (NR_V2_CONFIGS);
  uint64_t checks0 = qemu_check_started ();
  unsigned failed0 = unit_failed ();
  const struct qemu_check_tally *c = &v2_crash_tally, *a = &v2_after_tally;

  if (!have_qemu_img) {
    /* QEMU makes the version 2 images and judges them. */
    printf ("unit-image-powercut v2: skipped: no qemu-img\n");
    return;
  }
  if (unit_quick ())
    v2_qemu_every = 20;
  if (seed_env) {
    run_v2_trial (strtoull (seed_env, NULL, 0), 1000, 1);
    trials = 1;
  }
  else
    for (unsigned i = 0; i < trials; i++)
      run_v2_trial (9000 + i, unit_quick () ? 20 : 60,
                    unit_quick () ? 16 : 8);
  qemu_check_wait_all ();
  printf ("unit-image-powercut v2: %u trials of 2 sessions, %" PRIu64
          " crash states (%" PRIu64 " cut again in the session after), %"
          PRIu64 " qemu-img checks, %u failures\n", trials, v2_states,
          v2_recuts, qemu_check_started () - checks0,
          unit_failed () - failed0);
  printf ("unit-image-powercut v2: qemu-img check of crash states: %" PRIu64
          " clean, %" PRIu64 " leaks only, %" PRIu64 " corrupt, %" PRIu64
          " other; after a session on them: %" PRIu64 " clean, %" PRIu64
          " leaks only, %" PRIu64 " corrupt, %" PRIu64 " other\n",
          c->clean, c->leaks, c->corrupt, c->other, a->clean, a->leaks,
          a->corrupt, a->other);
  printf ("unit-image-powercut v2: %" PRIu64 " data clusters reused (in %"
          PRIu64 " trials), %" PRIu64 " trials moved the refcount table\n",
          v2_reused, v2_reuse_trials, v2_reftable_moves);
  /* Without reuse and a refcount table that grows, the case would prove
   * less than it says. */
  if (seed_env == NULL) {
    CHECK (v2_reuse_trials > 0);
    CHECK (v2_reftable_moves > 0);
  }
}

/* Power cuts and delayed copy-on-write ----------------------------------
 *
 * The "delayedcow" case: small writes into clusters whose content comes
 * from a backing file, a compressed cluster or a cluster shared with a
 * snapshot.  Such a write maps a new cluster at once, holding only the
 * client's sectors, and the rest of it is owed from the old content
 * (lib/owed.c) until a later write fills it or the commit copies it
 * before it seals (docs/journal-format.md 8.6: D1, the fill before the
 * seal; D2, the two-flush commit, so that the fill is durable before the
 * transaction that maps the cluster).  The workload writes 4 KiB pieces
 * in sequential runs (each cluster filled by several calls, flushes
 * falling in the middle of clusters), 4 KiB pieces, runs of sectors and
 * pieces of sectors at random, overwrites, zeroes and trims of whole
 * clusters and of parts, with a flush every few calls; one or two worker
 * threads (two: the checkpoint thread runs too, and commits of old
 * changes meet the writes).  Every flush moment is cut, and a stride of
 * the others; each crash state is checked as in "trials": a sector holds
 * what the last acknowledged flush covered or a version written since,
 * never anything else (zeroes where the backing file had data are
 * caught: the old content is the backing file's).  A sample is checked
 * by qemu-img.  Every trial must have delayed copies, and commits must
 * have filled owed clusters (so the crash states tested what D1 and D2
 * protect).  And one fill fails (an injected EIO): the flush fails,
 * writes stop, and nothing maps the cluster it was to complete.
 */

static const struct config dcow_configs[] = {
  { 64 * KiB, 8 * MiB, false, false, BASE_BACKING, true, 1, 0, false },
  { 64 * KiB, 8 * MiB, false, false, BASE_BACKING, false, 2, 0, false },
  { 16 * KiB, 8 * MiB, false, false, BASE_COMPRESSED, true, 1, 0, false },
  { 32 * KiB, 8 * MiB, false, false, BASE_SNAPSHOT, false, 1, 0, false },
  { 4 * KiB, 8 * MiB, false, false, BASE_BACKING, false, 1, 0, false },
  { 128 * KiB, 8 * MiB, false, false, BASE_BACKING, true, 2, 0, false },
};
#define NR_DCOW_CONFIGS (sizeof dcow_configs / sizeof dcow_configs[0])

static uint64_t dcow_delayed, dcow_filled;

/* A cluster of the worker's part of the disk (its stripes when there are
 * several workers). */
static uint64_t
dcow_cluster (struct worker *w)
{
  const struct trial *t = w->t;
  const uint64_t cs = t->cfg.cs;

  if (w->n > 1) {
    uint64_t owned = t->cfg.size / STRIPE / w->n;
    uint64_t stripe = pc_rand (&w->rng) % owned * w->n + w->id;
    return stripe * STRIPE + pc_rand (&w->rng) % (STRIPE / cs) * cs;
  }
  return pc_rand (&w->rng) % (t->cfg.size / cs) * cs;
}

static void *
dcow_worker (void *arg)
{
  struct worker *w = arg;
  struct trial *t = w->t;
  const uint64_t cs = t->cfg.cs;
  const uint64_t piece = cs > 4 * KiB ? 4 * KiB : cs / 2;
  uint64_t pos = dcow_cluster (w), run_end = pos + cs;

  for (unsigned i = 0; i < w->nops; i++) {
    uint64_t r = pc_rand (&w->rng) % 100, c, n;

    if (r < 45) {
      /* The next piece of a sequential run through a few clusters. */
      if (pos >= run_end) {
        pos = dcow_cluster (w);
        run_end = pos + cs * (1 + pc_rand (&w->rng) % 3);
        if (run_end > t->cfg.size ||
            (w->n > 1 && (run_end - 1) / STRIPE != pos / STRIPE))
          run_end = pos + cs;
      }
      do_write_at (t, pos, piece);
      pos += piece;
    }
    else if (r < 70) {
      /* Somewhere in a cluster: a piece, sectors, or bytes. */
      c = dcow_cluster (w);
      switch (pc_rand (&w->rng) % 3) {
      case 0:
        do_write_at (t, c + pc_rand (&w->rng) % (cs / piece) * piece, piece);
        break;
      case 1:
        n = SECTOR * (1 + pc_rand (&w->rng) % (cs / SECTOR < 8 ? cs / SECTOR
                                                 : 8));
        do_write_at (t, c + pc_rand (&w->rng) % ((cs - n) / SECTOR + 1) *
                     SECTOR, n);
        break;
      default:
        n = 1 + pc_rand (&w->rng) % (cs < 3000 ? cs : 3000);
        do_write_at (t, c + pc_rand (&w->rng) % (cs - n + 1), n);
        break;
      }
    }
    else if (r < 76) {
      /* A whole cluster (D5) or a part (a write of zeroes). */
      c = dcow_cluster (w);
      if (pc_rand (&w->rng) & 1)
        do_zero_at (t, c, cs, pc_rand (&w->rng) & 1, false);
      else
        do_zero_at (t, c + cs / 4, cs / 4, true, false);
    }
    else if (r < 80)
      do_trim_at (t, dcow_cluster (w), cs);
    else
      do_flush_t (t);
  }
  return NULL;
}

static void
run_dcow_trial (uint64_t seed, unsigned samples, unsigned stride)
{
  unsigned before = unit_failed ();
  struct trial *t = trial_new (seed, dcow_configs[seed % NR_DCOW_CONFIGS]);
  uint64_t moments, states0 = states;

  t->close_at_end = t->cfg.close;
  run_workload (t, 200 + pc_rand (&t->rng) % 100, dcow_worker);
  nr_trials++;
  moments = powercut_moment (t->pc);
  check_moments (t, 0, moments, samples, 1, stride);
  check_moment (t, moments, true, RANDOM);
  qemu_check_wait_all ();
  if (getenv ("QCOW2J_VERBOSE"))
    fprintf (stderr, "delayedcow seed %" PRIu64 ": cs %" PRIu64 " %s, %u "
             "thread%s, %" PRIu32 " calls%s, %" PRIu64 " moments, %" PRIu64
             " crash states; %" PRIu64 " copies delayed, %" PRIu64
             " filled\n", seed, t->cfg.cs,
             t->cfg.base == BASE_COMPRESSED ? "compressed"
             : t->cfg.base == BASE_SNAPSHOT ? "snapshot" : "backing",
             t->cfg.threads, t->cfg.threads > 1 ? "s" : "", t->nops,
             t->close_at_end ? " + close" : "", moments, states - states0,
             t->owed_delayed, t->owed_filled);
  if (unit_failed () > before)
    fprintf (stderr, "delayedcow trial with seed %" PRIu64 " failed "
             "(QCOW2J_SEED=%" PRIu64 " tests/unit-image-powercut delayedcow "
             "repeats it)\n", seed, seed);
  dcow_delayed += t->owed_delayed;
  dcow_filled += t->owed_filled;
  /* Every trial delays copies (what the case is about). */
  CHECK (t->owed_delayed > 0);
  trial_free (t);
}

/* A fill that fails (its write of the new cluster) fails the flush that
 * asked for it and stops writes: the transaction mapping the cluster is
 * never sealed, and the file, and any crash of it, reads the flushed
 * piece and old content or the client's data elsewhere. */
static void
run_dcow_fill_failure (void)
{
  struct trial *t = trial_new (8999, dcow_configs[0]);
  struct qcow2_open_options opts = { .writable = true };
  uint8_t buf[4096] = { 1 };

  load_base (t);
  t->img = qcow2_open_hostio (&t->tap.io, dir, &opts);
  REQUIRE (t->img != NULL);
  CHECK (qcow2_prepare_writable (t->img) == 0);
  /* Past the top image's own data (make_base): over the backing file. */
  do_write_at (t, 2 * MiB, 4 * KiB);
  do_flush_t (t);
  do_write_at (t, 3 * MiB + 8 * KiB, 4 * KiB);
  CHECK (qcow2_owed_any (t->img));
  /* The next host write is the fill's (DIRTY is durable already). */
  powercut_fail_at (t->pc, 'w', 0, EIO);
  CHECK (qcow2_flush (t->img) == -1);
  CHECK (qcow2_pwrite (t->img, buf, sizeof buf, 4 * MiB) == -1);
  check_moment (t, powercut_moment (t->pc), true, RANDOM);
  qemu_check_wait_all ();
  trial_free (t);
}

UNIT_CASE (delayedcow)
{
  const char *seed_env = getenv ("QCOW2J_SEED");
  unsigned trials = case_trials (2 * NR_DCOW_CONFIGS);
  uint64_t states0 = states, checks0 = qemu_check_started ();
  unsigned failed0 = unit_failed ();

  if (!have_qemu_img) {
    /* QEMU makes the backing file, compressed and shared clusters. */
    printf ("unit-image-powercut delayedcow: skipped: no qemu-img\n");
    return;
  }
  dcow_delayed = dcow_filled = 0;
  if (seed_env) {
    run_dcow_trial (strtoull (seed_env, NULL, 0), 400, 1);
    trials = 1;
  }
  else
    for (unsigned i = 0; i < trials; i++)
      run_dcow_trial (9000 + i, unit_quick () ? 60 : 200,
                      unit_quick () ? 16 : 4);
  run_dcow_fill_failure ();
  qemu_check_wait_all ();
  printf ("unit-image-powercut delayedcow: %u trials, %" PRIu64 " crash "
          "states, %" PRIu64 " qemu-img checks, %u failures\n", trials,
          states - states0, qemu_check_started () - checks0,
          unit_failed () - failed0);
  printf ("unit-image-powercut delayedcow: %" PRIu64 " copies delayed, %"
          PRIu64 " owed clusters filled by a commit, early or at "
          "close\n", dcow_delayed, dcow_filled);
  CHECK (dcow_filled > 0);
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (trials),
  UNIT_ENTRY (reuse),
  UNIT_ENTRY (bitmaps),
  UNIT_ENTRY (v2),
  UNIT_ENTRY (delayedcow),
};

int
main (int argc, char *argv[])
{
  const char *tmp = getenv ("TMPDIR");
  uint8_t zero[SECTOR] = { 0 };

  UNIT_SELECT (argc, argv, cases);
  /* Keep the large buffers of crash states in the heap. */
  mallopt (M_MMAP_THRESHOLD, 32 * MiB);
  mallopt (M_TRIM_THRESHOLD, 256 * MiB);
  qlog_set_handlers (report, NULL);
  if (unit_quick ())
    qemu_every = 40;
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
    REQUIRE (mkdtemp (dir) != NULL);
  }

  atexit (cleanup);
  return UNIT_RUN (cases);
}
