/* Many threads on one writable image.
 *
 * For each configuration (4 KiB and 64 KiB clusters, 64 KiB with
 * extended L2 entries, and, when qemu-img is there, 4 KiB, 64 KiB and
 * 32 KiB extended-L2 images over a qcow2 backing file holding a known
 * pattern: writes smaller than a cluster there delay their copy)
 * the test creates an image, opens it writable with the checkpoint thread
 * running, and lets NWORKERS threads issue random qcow2_pwrite,
 * qcow2_zero (may_trim both ways, sometimes fast), qcow2_trim,
 * qcow2_flush, qcow2_pread and qcow2_extents calls for a few seconds on
 * a 2 MiB region, so that they collide all the time.  In the middle of
 * the run a quiet phase (only reads and extents) lasts long enough for
 * the checkpoint thread to run an idle checkpoint (and discard the
 * clusters freed so far) under them.
 *
 * Every 512-byte sector written carries a stamp: the writer's thread id
 * and op sequence number, the sector's own index, the range of the write
 * and a checksum; each thread logs the range of every write it issues.
 * So any sector read back can be attributed to exactly one write, and is
 * checked to be either zeroes, the backing file's data, or a complete,
 * valid stamp of a write that covered that very sector (never torn, never
 * one for another offset).  Only a sector that some write, zero or trim
 * was changing during the read may be torn, and then each of its 8-byte
 * words must still come from zeroes, the backing data or a recent write
 * to that sector.
 *
 * A shared per-sector table (under one mutex, taken when an operation is
 * issued and when it completes, never around the library call) counts
 * the operations in flight on each sector and a generation bumped at
 * every issue and completion.  A write, zero or trim that ran on a
 * sector with nothing else changing it defines what the sector holds
 * (zeroes after a zero; after a trim its old content, zeroes or the
 * backing data); overlapping ones leave it unknown until a read
 * observes it.  A read (or the read behind an extents check) during
 * which nothing changed a sector must then return exactly that.
 * A range that qcow2_extents reports as ZERO is read back at once, and
 * must be zeroes where nothing changed it meanwhile.
 *
 * At the end: a full read must match the model, qcow2_close must
 * succeed, "qemu-img check" must exit 0, and both a fresh qcow2_open and
 * "qemu-img convert" must give exactly the bytes of that last read.
 *
 * QCOW2J_SEED=N repeats a seed (as far as thread timing allows);
 * QCOW2J_SLOW=1 runs five times longer.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "create.h"
#include "image.h"
#include "log.h"
#include "run-shell.h"
#include "unit.h"

#define SECTOR ((uint64_t) 512)
#define MiB ((uint64_t) 1024 * 1024)
#define DISK (4 * MiB)
#define NSECT (DISK / SECTOR)
#define REGION_OFF (1 * MiB)            /* ops stay in [1 MiB, 3 MiB) */
#define REGION_LEN (2 * MiB)
#define RS0 (REGION_OFF / SECTOR)
#define RSN (REGION_LEN / SECTOR)
#define NWORKERS 7
#define LOG_CAP (1u << 18)              /* ops per thread and config */
#define MAX_EXTENTS 8192

/* Content codes: what a sector holds.  A stamp is STAMP_BIT | tid << 40 |
 * seq. */
#define C_ZERO 0
#define C_BACKING 1
#define C_UNKNOWN 2
#define C_TRIM 3                        /* only as an op's effect */
#define C_KEEP 4                        /* only as an op's effect */
#define C_INVALID 5                     /* none of the others */
#define STAMP_BIT (1ULL << 63)
#define STAMP(tid, seq) (STAMP_BIT | (uint64_t) (tid) << 40 | (seq))
#define STAMP_TID(c) ((unsigned) (((c) >> 40) & 0xffff))
#define STAMP_SEQ(c) ((uint64_t) ((c) & ((UINT64_C (1) << 40) - 1)))

static const char stamp_magic[8] = "QJSTAMP1";
static const char backing_magic[8] = "QJBACKNG";

struct config {
  const char *name;
  uint64_t cluster_size;
  bool extended_l2;
  bool backing;
};

static const struct config configs[] = {
  { "4k", 4096, false, false },
  { "64k", 65536, false, false },
  { "64k-extl2", 65536, true, false },
  { "4k-backing", 4096, false, true },
  { "64k-backing", 65536, false, true },
  { "32k-extl2-backing", 32768, true, true },
};

/* The current configuration. */
static const struct config *cfg;
static struct qcow2_image *img;
static bool bhas[NSECT];                /* backing file has data there */

/* The model, under model_lock. */
static pthread_mutex_t model_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t expect[NSECT];          /* content code, or C_UNKNOWN */
static uint64_t trim_prev[NSECT];       /* if trimmed: content before */
static bool trimmed[NSECT];
#define HIST 16
static uint64_t hist[NSECT][HIST][2];   /* the last writes: code, range */
static unsigned hist_next[NSECT];
static bool conflict[NSECT];            /* overlapping changes in flight */
static uint32_t inflight[NSECT];
static uint64_t gen[NSECT];

/* Per-thread write logs: wlog[tid][seq] = start << 16 | nsect, and the
 * last seq issued.  Atomic: read by threads that found the stamp. */
static uint64_t *wlog[NWORKERS];
static uint64_t issued[NWORKERS];

static int phase;                       /* 0 all ops, 1 quiet, 2 stop */

struct counts {
  uint64_t writes, reads, zeroes, zeroes_trim, zeroes_fast_enotsup, trims,
    flushes, extents, extents_zero_sectors, exact, resolved, mixed;
};

struct worker {
  pthread_t thread;
  unsigned tid;
  uint64_t rng;
  uint64_t seq;
  uint8_t *buf;                         /* REGION_LEN */
  uint64_t *obs;                        /* RSN codes */
  uint64_t *g;                          /* RSN generations */
  struct counts c;
};

static uint64_t
splitmix (uint64_t x)
{
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static uint64_t
rnd (uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static uint64_t
rnd_range (uint64_t *s, uint64_t lo, uint64_t hi)   /* inclusive */
{
  return lo + rnd (s) % (hi - lo + 1);
}

static uint64_t
sector_sum (const uint8_t *p)
{
  uint64_t h = 0xcbf29ce484222325ULL;

  for (unsigned i = 0; i < 504; i += 8) {
    uint64_t w;
    memcpy (&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
  }
  return h;
}

static void
put64 (uint8_t *p, uint64_t v)
{
  memcpy (p, &v, 8);
}

static uint64_t
get64 (const uint8_t *p)
{
  uint64_t v;
  memcpy (&v, p, 8);
  return v;
}

/* Stamp: magic, code, sector, start << 16 | nsect, filler, checksum. */
static void
make_stamp (uint8_t *p, uint64_t code, uint64_t s, uint64_t start,
            uint64_t n)
{
  memcpy (p, stamp_magic, 8);
  put64 (p + 8, code);
  put64 (p + 16, s);
  put64 (p + 24, start << 16 | n);
  for (unsigned i = 32; i < 504; i += 8)
    put64 (p + i, splitmix (code * 31 + s * 0x10001 + i));
  put64 (p + 504, sector_sum (p));
}

static void
make_backing (uint8_t *p, uint64_t s)
{
  memcpy (p, backing_magic, 8);
  put64 (p + 8, s);
  for (unsigned i = 16; i < 504; i += 8)
    put64 (p + i, splitmix (s * 0x5bd1e995 + i + 0xbac));
  put64 (p + 504, sector_sum (p));
}

static bool
is_zero (const uint8_t *p)
{
  for (unsigned i = 0; i < SECTOR; i += 8)
    if (get64 (p + i) != 0)
      return false;
  return true;
}

static void
dump_sector (const uint8_t *p)
{
  for (unsigned i = 0; i < 64; i++)
    fprintf (stderr, "%02x%s", p[i], i % 32 == 31 ? "\n" : " ");
}

/* Which bytes of a torn stamp differ from the stamp its header names,
 * and whether they are zeroes or backing data. */
static void
torn (const uint8_t *p, uint64_t s)
{
  uint8_t want[SECTOR], back[SECTOR];
  uint64_t range = get64 (p + 24);

  make_stamp (want, get64 (p + 8), get64 (p + 16), range >> 16,
              range & 0xffff);
  make_backing (back, s);
  for (unsigned i = 0; i < SECTOR; ) {
    unsigned j = i;
    bool same = p[i] == want[i];

    while (j < SECTOR && (p[j] == want[j]) == same)
      j++;
    if (!same) {
      bool zero = true, backing = true;

      for (unsigned k = i; k < j; k++) {
        zero &= p[k] == 0;
        backing &= p[k] == back[k];
      }
      fprintf (stderr, "  bytes %u-%u differ from the stamp%s\n", i, j - 1,
               zero ? ": zeroes" : backing ? ": backing data" : "");
    }
    i = j;
  }
}

/* What sector s holds, as read into p: zeroes, the backing data or a
 * valid stamp of a write that covered s.  Anything else is C_INVALID,
 * or with strict fails the test, saying why. */
static uint64_t
classify (const uint8_t *p, uint64_t s, const char *what, bool strict)
{
  uint8_t want[SECTOR];
  uint64_t code, range, start, n, tid, seq;

  if (is_zero (p))
    return C_ZERO;
  if (cfg->backing && bhas[s]) {
    make_backing (want, s);
    if (memcmp (p, want, SECTOR) == 0)
      return C_BACKING;
  }
  if (!strict) {
    code = get64 (p + 8);
    range = get64 (p + 24);
    tid = STAMP_TID (code);
    seq = STAMP_SEQ (code);
    if (memcmp (p, stamp_magic, 8) != 0 || get64 (p + 16) != s ||
        !(code & STAMP_BIT) || tid >= NWORKERS || seq >= LOG_CAP ||
        seq > __atomic_load_n (&issued[tid], __ATOMIC_ACQUIRE) ||
        __atomic_load_n (&wlog[tid][seq], __ATOMIC_RELAXED) != range ||
        s < range >> 16 || s >= (range >> 16) + (range & 0xffff))
      return C_INVALID;
    make_stamp (want, code, s, range >> 16, range & 0xffff);
    return memcmp (p, want, SECTOR) == 0 ? code : C_INVALID;
  }
  if (memcmp (p, stamp_magic, 8) != 0) {
    fprintf (stderr, "%s: %s: sector %" PRIu64 " holds neither zeroes, "
             "backing data nor a stamp:\n", cfg->name, what, s);
    goto bad;
  }
  if (sector_sum (p) != get64 (p + 504)) {
    fprintf (stderr, "%s: %s: sector %" PRIu64 ": torn stamp (bad "
             "checksum):\n", cfg->name, what, s);
    torn (p, s);
    goto bad;
  }
  code = get64 (p + 8);
  range = get64 (p + 24);
  start = range >> 16;
  n = range & 0xffff;
  tid = STAMP_TID (code);
  seq = STAMP_SEQ (code);
  if (get64 (p + 16) != s) {
    fprintf (stderr, "%s: %s: sector %" PRIu64 " holds the stamp of sector "
             "%" PRIu64 " (thread %" PRIu64 " op %" PRIu64 ")\n",
             cfg->name, what, s, get64 (p + 16), tid, seq);
    goto bad;
  }
  if (!(code & STAMP_BIT) || tid >= NWORKERS ||
      seq > __atomic_load_n (&issued[tid], __ATOMIC_ACQUIRE) ||
      seq >= LOG_CAP ||
      __atomic_load_n (&wlog[tid][seq], __ATOMIC_RELAXED) != range ||
      s < start || s >= start + n) {
    fprintf (stderr, "%s: %s: sector %" PRIu64 ": stamp of thread %" PRIu64
             " op %" PRIu64 " (%" PRIu64 "+%" PRIu64 ") matches no write "
             "issued over it\n", cfg->name, what, s, tid, seq, start, n);
    goto bad;
  }
  make_stamp (want, code, s, start, n);
  if (memcmp (p, want, SECTOR) != 0) {
    fprintf (stderr, "%s: %s: sector %" PRIu64 ": stamp content differs\n",
             cfg->name, what, s);
    goto bad;
  }
  return code;

 bad:
  dump_sector (p);
  FAIL ("%s: %s: sector %" PRIu64 " is none of the writes to it (above)",
        cfg->name, what, s);
  unit_stop ();
}

/* Content codes compare after this: backing data where the backing file
 * has none is zeroes. */
static uint64_t
canon (uint64_t code, uint64_t s)
{
  return code == C_BACKING && !bhas[s] ? C_ZERO : code;
}

static void
describe (char *b, size_t len, uint64_t code)
{
  if (code & STAMP_BIT)
    snprintf (b, len, "write %u.%" PRIu64, STAMP_TID (code),
              STAMP_SEQ (code));
  else
    snprintf (b, len, "%s", code == C_ZERO ? "zeroes" :
              code == C_BACKING ? "backing data" :
              code == C_INVALID ? "garbage" : "unknown");
}

/* Under model_lock, nothing having changed s during the read: check what
 * was observed against the model, and learn it. */
static void
check_observed (struct worker *w, uint64_t s, uint64_t obs, const char *what)
{
  uint64_t e = canon (expect[s], s);
  bool ok;

  obs = canon (obs, s);
  if (e == C_UNKNOWN) {
    expect[s] = obs;
    trimmed[s] = false;
    if (w)
      w->c.resolved++;
    return;
  }
  if (trimmed[s]) {
    uint64_t prev = canon (trim_prev[s], s);

    ok = obs == C_ZERO || obs == canon (C_BACKING, s) ||
      prev == C_UNKNOWN || obs == prev || obs == e;
  }
  else
    ok = obs == e;
  if (!ok) {
    char b1[64], b2[64], b3[64];

    describe (b1, sizeof b1, obs);
    describe (b2, sizeof b2, e);
    describe (b3, sizeof b3, trim_prev[s]);
    FAIL ("%s: %s: sector %" PRIu64 " reads as %s, but the last "
          "write to it was %s%s%s (nothing else changed it since)",
          cfg->name, what, s, b1, b2,
          trimmed[s] ? ", then trimmed, before that " : "",
          trimmed[s] ? b3 : "");
    unit_stop ();
  }
  expect[s] = obs;
  trimmed[s] = false;
  if (w)
    w->c.exact++;
}

/* Changes: issue and completion. */
static void
change_issue (uint64_t s0, uint64_t n, uint64_t code)
{
  pthread_mutex_lock (&model_lock);
  for (uint64_t s = s0; s < s0 + n; s++) {
    if (code) {
      hist[s][hist_next[s]][0] = code;
      hist[s][hist_next[s]][1] = s0 << 16 | n;
      hist_next[s] = (hist_next[s] + 1) % HIST;
    }
    if (inflight[s])
      conflict[s] = true;
    inflight[s]++;
    gen[s]++;
  }
  pthread_mutex_unlock (&model_lock);
}

/* effect: C_ZERO, C_TRIM, C_KEEP (nothing changed) or a stamp code (the
 * sector gets stamp code, for a write). */
static void
change_done (uint64_t s0, uint64_t n, uint64_t effect)
{
  pthread_mutex_lock (&model_lock);
  for (uint64_t s = s0; s < s0 + n; s++) {
    inflight[s]--;
    gen[s]++;
    if (conflict[s]) {
      expect[s] = C_UNKNOWN;
      trimmed[s] = false;
      if (inflight[s] == 0)
        conflict[s] = false;
    }
    else if (effect == C_KEEP)
      ;
    else if (effect == C_TRIM) {
      if (!trimmed[s]) {
        trim_prev[s] = expect[s];
        trimmed[s] = true;
      }
    }
    else {
      expect[s] = effect;
      trimmed[s] = false;
    }
  }
  pthread_mutex_unlock (&model_lock);
}

/* Reads: the generation of every sector at issue (UINT64_MAX: something
 * was changing it already). */
static void
read_issue (struct worker *w, uint64_t s0, uint64_t n)
{
  pthread_mutex_lock (&model_lock);
  for (uint64_t s = s0; s < s0 + n; s++)
    w->g[s - s0] = inflight[s] ? UINT64_MAX : gen[s];
  pthread_mutex_unlock (&model_lock);
}

/* Under model_lock: a sector read while something changed it may mix
 * the old and the new content (as on a disk: the host kernel does not
 * make a buffered read atomic against a write of the same bytes, and the
 * library writes data in place): then every 8-byte word must still come
 * from zeroes, the backing data or the stamp of a recent write to this
 * very sector. */
static bool
mixed_ok (const uint8_t *p, uint64_t s)
{
  uint8_t cand[HIST + 1][SECTOR];
  unsigned nc = 0;

  make_backing (cand[nc++], s);
  for (unsigned h = 0; h < HIST; h++)
    if (hist[s][h][0])
      make_stamp (cand[nc++], hist[s][h][0], s, hist[s][h][1] >> 16,
                  hist[s][h][1] & 0xffff);
  for (unsigned i = 0; i < SECTOR; i += 8) {
    uint64_t v = get64 (p + i);
    bool found = v == 0;

    for (unsigned c = 0; c < nc && !found; c++)
      found = v == get64 (cand[c] + i) && (c > 0 || bhas[s]);
    if (!found)
      return false;
  }
  return true;
}

/* Under model_lock: check the read of sector s into p that was classified
 * as obs, given its generation g at issue. */
static void
check_read (struct worker *w, const uint8_t *p, uint64_t s, uint64_t obs,
            uint64_t g, const char *what)
{
  if (g == gen[s]) {                    /* nothing changed it meanwhile */
    if (obs == C_INVALID)
      classify (p, s, what, true);      /* explains, exits */
    check_observed (w, s, obs, what);
  }
  else if (obs == C_INVALID) {
    if (!mixed_ok (p, s)) {
      fprintf (stderr, "%s: %s: sector %" PRIu64 " (changing during the "
               "read) mixes in bytes of no write to it\n", cfg->name,
               what, s);
      classify (p, s, what, true);     /* explains, stops */
    }
    w->c.mixed++;
  }
}

static void
read_done (struct worker *w, uint64_t s0, uint64_t n, const char *what)
{
  pthread_mutex_lock (&model_lock);
  for (uint64_t s = s0; s < s0 + n; s++)
    check_read (w, w->buf + (s - s0) * SECTOR, s, w->obs[s - s0],
                w->g[s - s0], what);
  pthread_mutex_unlock (&model_lock);
}

static void
fail_op (const char *op, uint64_t s0, uint64_t n)
{
  FAIL ("%s: %s at sector %" PRIu64 " (+%" PRIu64 "): %s", cfg->name, op,
        s0, n, strerror (errno));
  unit_stop ();
}

/* Operations ------------------------------------------------------------- */

static uint64_t
cluster_sectors (void)
{
  return cfg->cluster_size / SECTOR;
}

/* A random range in the region: n sectors from lo..hi, aligned to the
 * cluster sometimes. */
static void
pick_range (struct worker *w, uint64_t lo, uint64_t hi, uint64_t *s0,
            uint64_t *n)
{
  *n = rnd_range (&w->rng, lo, hi);
  if (*n > RSN)
    *n = RSN;
  *s0 = RS0 + rnd (&w->rng) % (RSN - *n + 1);
  if (rnd (&w->rng) % 3 == 0)
    *s0 -= (*s0 - RS0) % cluster_sectors ();
}

static void
op_write (struct worker *w)
{
  uint64_t s0, n, seq, code;

  if (rnd (&w->rng) % 10 == 0) {        /* a whole cluster, or 64 KiB */
    uint64_t cs = cluster_sectors () < 128 ? cluster_sectors () : 128;
    pick_range (w, cs, cs, &s0, &n);
  }
  else
    pick_range (w, 1, 40, &s0, &n);
  seq = ++w->seq;
  code = STAMP (w->tid, seq);
  for (uint64_t i = 0; i < n; i++)
    make_stamp (w->buf + i * SECTOR, code, s0 + i, s0, n);
  __atomic_store_n (&wlog[w->tid][seq], s0 << 16 | n, __ATOMIC_RELAXED);
  __atomic_store_n (&issued[w->tid], seq, __ATOMIC_RELEASE);

  change_issue (s0, n, code);
  if (qcow2_pwrite (img, w->buf, n * SECTOR, s0 * SECTOR) == -1)
    fail_op ("qcow2_pwrite", s0, n);
  change_done (s0, n, code);
  w->c.writes++;
}

static void
op_zero (struct worker *w)
{
  uint64_t s0, n;
  bool may_trim = rnd (&w->rng) & 1, fast = rnd (&w->rng) % 5 == 0;
  int r;

  pick_range (w, 1, 2 * cluster_sectors (), &s0, &n);
  change_issue (s0, n, 0);
  r = qcow2_zero (img, n * SECTOR, s0 * SECTOR, may_trim, fast);
  if (r == -1 && !(fast && errno == ENOTSUP))
    fail_op ("qcow2_zero", s0, n);
  change_done (s0, n, r == 0 ? C_ZERO : C_KEEP);
  w->c.zeroes++;
  if (may_trim)
    w->c.zeroes_trim++;
  if (r == -1)
    w->c.zeroes_fast_enotsup++;
}

static void
op_trim (struct worker *w)
{
  uint64_t s0, n;

  pick_range (w, 1, 2 * cluster_sectors (), &s0, &n);
  change_issue (s0, n, 0);
  if (qcow2_trim (img, n * SECTOR, s0 * SECTOR) == -1)
    fail_op ("qcow2_trim", s0, n);
  change_done (s0, n, C_TRIM);
  w->c.trims++;
}

static void
op_flush (struct worker *w)
{
  if (qcow2_flush (img) == -1)
    fail_op ("qcow2_flush", 0, 0);
  w->c.flushes++;
}

static void
op_read (struct worker *w)
{
  uint64_t s0, n;

  if (rnd (&w->rng) % 50 == 0)
    pick_range (w, 1, RSN, &s0, &n);
  else
    pick_range (w, 1, 64, &s0, &n);
  read_issue (w, s0, n);
  if (qcow2_pread (img, w->buf, n * SECTOR, s0 * SECTOR) == -1)
    fail_op ("qcow2_pread", s0, n);
  for (uint64_t i = 0; i < n; i++)
    w->obs[i] = classify (w->buf + i * SECTOR, s0 + i, "read", false);
  read_done (w, s0, n, "read");
  w->c.reads++;
}

struct extent_list {
  uint64_t n;
  uint64_t off[MAX_EXTENTS], len[MAX_EXTENTS];
  unsigned type[MAX_EXTENTS];
};

static int
collect_extent (void *opaque, uint64_t offset, uint64_t length,
                unsigned type)
{
  struct extent_list *l = opaque;

  if (l->n >= MAX_EXTENTS) {
    FAIL ("%s: qcow2_extents: too many extents", cfg->name);
    unit_stop ();
  }
  l->off[l->n] = offset;
  l->len[l->n] = length;
  l->type[l->n] = type;
  l->n++;
  return 0;
}

static void
op_extents (struct worker *w)
{
  static __thread struct extent_list l;
  uint64_t s0, n, at;
  bool one_only = rnd (&w->rng) % 4 == 0;

  pick_range (w, 1, RSN, &s0, &n);
  l.n = 0;
  read_issue (w, s0, n);
  if (qcow2_extents (img, n * SECTOR, s0 * SECTOR, one_only,
                     collect_extent, &l) == -1)
    fail_op ("qcow2_extents", s0, n);
  /* Consecutive extents from the start, inside the request. */
  CHECK (l.n >= 1);
  CHECK (!one_only || l.n == 1);
  at = s0 * SECTOR;
  for (uint64_t i = 0; i < l.n; i++) {
    if (l.off[i] != at || l.len[i] == 0 || l.type[i] > 3 ||
        l.off[i] % SECTOR || l.len[i] % SECTOR) {
      FAIL ("%s: qcow2_extents (%" PRIu64 "+%" PRIu64 "): "
            "extent %" PRIu64 " is 0x%" PRIx64 "+0x%" PRIx64 " type %u",
            cfg->name, s0 * SECTOR, n * SECTOR, i, l.off[i], l.len[i],
            l.type[i]);
      unit_stop ();
    }
    at += l.len[i];
  }
  CHECK (at <= (s0 + n) * SECTOR);

  /* Read back the zero extents now; sectors nothing changed since the
   * extents call began must be zeroes. */
  for (uint64_t i = 0; i < l.n; i++) {
    uint64_t e0 = l.off[i] / SECTOR, en = l.len[i] / SECTOR;

    if (!(l.type[i] & QCOW2_EXTENT_ZERO))
      continue;
    if (qcow2_pread (img, w->buf + (e0 - s0) * SECTOR, en * SECTOR,
                     e0 * SECTOR) == -1)
      fail_op ("qcow2_pread", e0, en);
  }
  pthread_mutex_lock (&model_lock);
  for (uint64_t i = 0; i < l.n; i++) {
    uint64_t e0 = l.off[i] / SECTOR, en = l.len[i] / SECTOR;

    if (!(l.type[i] & QCOW2_EXTENT_ZERO))
      continue;
    for (uint64_t s = e0; s < e0 + en; s++) {
      const uint8_t *p = w->buf + (s - s0) * SECTOR;
      uint64_t obs = classify (p, s, "read of a zero extent", false);

      if (w->g[s - s0] == gen[s] && obs != C_ZERO) {
        char b[64];

        describe (b, sizeof b, obs);
        FAIL ("%s: qcow2_extents reported 0x%" PRIx64 "+0x%"
              PRIx64 " as zero (type %u), but sector %" PRIu64 " reads "
              "as %s and nothing changed it meanwhile", cfg->name,
              l.off[i], l.len[i], l.type[i], s, b);
        unit_stop ();
      }
      check_read (w, p, s, obs, w->g[s - s0], "read of a zero extent");
      if (w->g[s - s0] == gen[s])
        w->c.extents_zero_sectors++;
    }
  }
  pthread_mutex_unlock (&model_lock);
  w->c.extents++;
}

static void *
worker_thread (void *arg)
{
  struct worker *w = arg;
  int p;

  while ((p = __atomic_load_n (&phase, __ATOMIC_ACQUIRE)) != 2 &&
         w->seq < LOG_CAP - 1) {
    unsigned r = rnd (&w->rng) % 100;

    if (p == 1)                         /* quiet: no changes */
      r = r < 80 ? 99 : 0;
    if (r < 3)
      op_extents (w);
    else if (r < 8)
      op_flush (w);
    else if (r < 16)
      op_trim (w);
    else if (r < 30)
      op_zero (w);
    else if (r < 65)
      op_write (w);
    else
      op_read (w);
  }
  return NULL;
}

/* Images ----------------------------------------------------------------- */

static bool have_qemu_img;

static void
full_read (struct qcow2_image *im, uint8_t *buf)
{
  CHECK (qcow2_size (im) == DISK);
  for (uint64_t off = 0; off < DISK; off += MiB)
    CHECK (qcow2_pread (im, buf + off, MiB, off) == 0);
}

static void
make_backing_file (const char *path)
{
  struct qcow2_open_options opts = { .writable = true };
  struct qcow2_image *b;
  uint8_t *buf = malloc (DISK);

  CHECK (qcow2_create (path, DISK, 65536, false, true) == 0);
  b = qcow2_open (path, &opts);
  REQUIRE (b != NULL);
  CHECK (qcow2_prepare_writable (b) == 0);
  /* Data in runs of 3 KiB every 8 KiB or so: never cluster-aligned. */
  for (uint64_t s = 0; s < NSECT; s++) {
    bhas[s] = (s + 3) % 16 < 6 || (s / 128) % 5 == 1;
    if (bhas[s])
      make_backing (buf + s * SECTOR, s);
    else
      memset (buf + s * SECTOR, 0, SECTOR);
  }
  for (uint64_t s = 0; s < NSECT; s++)
    if (bhas[s])
      CHECK (qcow2_pwrite (b, buf + s * SECTOR, SECTOR, s * SECTOR) == 0);
  CHECK (qcow2_close (b) == 0);
  free (buf);
}

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
sleep_s (double s)
{
  struct timespec ts = { (time_t) s, (long) ((s - (time_t) s) * 1e9) };

  while (nanosleep (&ts, &ts) == -1 && errno == EINTR)
    ;
}

static void
run_config (const struct config *c, const char *dir, uint64_t seed,
            double scale)
{
  char path[256], base[256], raw[256], cmd[1024];
  struct qcow2_open_options opts = { .writable = true, .lock = false };
  struct worker w[NWORKERS];
  struct counts tot = { 0 };
  uint8_t *fin = malloc (DISK), *again = malloc (DISK);
  double t0 = now (), t_run, t_close;

  cfg = c;
  snprintf (path, sizeof path, "%s/%s.qcow2", dir, c->name);
  snprintf (base, sizeof base, "%s/%s-base.qcow2", dir, c->name);
  snprintf (raw, sizeof raw, "%s/%s.raw", dir, c->name);

  memset (bhas, 0, sizeof bhas);
  if (c->backing) {
    make_backing_file (base);
    snprintf (cmd, sizeof cmd, "qemu-img create -q -f qcow2 -b '%s' "
              "-F qcow2 -o cluster_size=%" PRIu64 ",extended_l2=%s '%s' %"
              PRIu64, base, c->cluster_size, c->extended_l2 ? "on" : "off",
              path, DISK);
    CHECK (run_shell ("%s", cmd) == 0);
  }
  else
    CHECK (qcow2_create (path, DISK, c->cluster_size, c->extended_l2,
                         true) == 0);

  for (uint64_t s = 0; s < NSECT; s++) {
    expect[s] = c->backing ? C_BACKING : C_ZERO;
    trimmed[s] = conflict[s] = false;
    inflight[s] = 0;
    gen[s] = 0;
  }
  memset (issued, 0, sizeof issued);
  memset (hist, 0, sizeof hist);
  memset (hist_next, 0, sizeof hist_next);
  for (unsigned i = 0; i < NWORKERS; i++)
    memset (wlog[i], 0, LOG_CAP * sizeof wlog[i][0]);

  img = qcow2_open (path, &opts);
  REQUIRE (img != NULL);
  CHECK (qcow2_prepare_writable (img) == 0);
  CHECK (qcow2_start_checkpointer (img) == 0);

  __atomic_store_n (&phase, 0, __ATOMIC_RELEASE);
  for (unsigned i = 0; i < NWORKERS; i++) {
    memset (&w[i], 0, sizeof w[i]);
    w[i].tid = i;
    w[i].rng = splitmix (seed * 1000 + (c - configs) * 16 + i) | 1;
    w[i].buf = malloc (REGION_LEN);
    w[i].obs = malloc (RSN * sizeof (uint64_t));
    w[i].g = malloc (RSN * sizeof (uint64_t));
    REQUIRE (pthread_create (&w[i].thread, NULL, worker_thread, &w[i]) == 0);
  }
  sleep_s (1.0 * scale);
  __atomic_store_n (&phase, 1, __ATOMIC_RELEASE);
  sleep_s (2.6);                        /* the checkpoint waits 2 s idle */
  __atomic_store_n (&phase, 0, __ATOMIC_RELEASE);
  /* Short: qcow2_close discards every cluster freed since the last
   * checkpoint one by one, which can take seconds on a slow host. */
  sleep_s (0.5 * scale);
  t_run = now () - t0;
  __atomic_store_n (&phase, 2, __ATOMIC_RELEASE);
  for (unsigned i = 0; i < NWORKERS; i++) {
    CHECK (pthread_join (w[i].thread, NULL) == 0);
    tot.writes += w[i].c.writes;
    tot.reads += w[i].c.reads;
    tot.zeroes += w[i].c.zeroes;
    tot.zeroes_trim += w[i].c.zeroes_trim;
    tot.zeroes_fast_enotsup += w[i].c.zeroes_fast_enotsup;
    tot.trims += w[i].c.trims;
    tot.flushes += w[i].c.flushes;
    tot.extents += w[i].c.extents;
    tot.extents_zero_sectors += w[i].c.extents_zero_sectors;
    tot.exact += w[i].c.exact;
    tot.resolved += w[i].c.resolved;
    tot.mixed += w[i].c.mixed;
    free (w[i].buf);
    free (w[i].obs);
    free (w[i].g);
  }

  /* The last state: a full read matching the model. */
  full_read (img, fin);
  for (uint64_t s = 0; s < NSECT; s++) {
    CHECK (inflight[s] == 0);
    check_observed (NULL, s, classify (fin + s * SECTOR, s, "final read", true),
                    "final read");
  }
  t_close = now ();
  CHECK (qcow2_close (img) == 0);
  img = NULL;
  t_close = now () - t_close;

  if (have_qemu_img) {
    snprintf (cmd, sizeof cmd, "qemu-img check -q -f qcow2 '%s'", path);
    if (run_shell ("%s", cmd) != 0) {
      FAIL ("%s: qemu-img check failed:", c->name);
      snprintf (cmd, sizeof cmd, "qemu-img check -f qcow2 '%s' >&2", path);
      run_shell ("%s", cmd);
    }
  }

  /* A fresh open reads the same. */
  opts.writable = false;
  img = qcow2_open (path, &opts);
  REQUIRE (img != NULL);
  CHECK (!qcow2_journal_dirty (img));
  full_read (img, again);
  for (uint64_t s = 0; s < NSECT; s++)
    if (memcmp (fin + s * SECTOR, again + s * SECTOR, SECTOR) != 0) {
      FAIL ("%s: sector %" PRIu64 " differs after reopening", c->name, s);
      break;
    }
  CHECK (qcow2_close (img) == 0);
  img = NULL;

  /* And so does QEMU. */
  if (have_qemu_img) {
    FILE *f;

    snprintf (cmd, sizeof cmd, "qemu-img convert -f qcow2 -O raw '%s' '%s'",
              path, raw);
    CHECK (run_shell ("%s", cmd) == 0);
    f = fopen (raw, "rb");
    REQUIRE (f != NULL);
    CHECK (fread (again, 1, DISK, f) == DISK);
    fclose (f);
    for (uint64_t s = 0; s < NSECT; s++)
      if (memcmp (fin + s * SECTOR, again + s * SECTOR, SECTOR) != 0) {
        FAIL ("%s: sector %" PRIu64 " differs as QEMU reads it", c->name,
              s);
        break;
      }
    unlink (raw);
  }
  unlink (path);
  if (c->backing)
    unlink (base);

  printf ("%s: %.1f s (ops %.1f s, close %.1f s): %" PRIu64 " writes, %" PRIu64 " reads, %" PRIu64
          " zeroes (%" PRIu64 " may_trim, %" PRIu64 " fast refused), %"
          PRIu64 " trims, %" PRIu64 " flushes, %" PRIu64 " extents (%"
          PRIu64 " zero sectors read back); %" PRIu64 " sectors checked "
          "exactly, %" PRIu64 " learnt, %" PRIu64 " read mixed while "
          "changing\n",
          c->name, now () - t0, t_run, t_close, tot.writes, tot.reads, tot.zeroes,
          tot.zeroes_trim, tot.zeroes_fast_enotsup, tot.trims, tot.flushes,
          tot.extents, tot.extents_zero_sectors, tot.exact, tot.resolved,
          tot.mixed);
  fflush (stdout);
  CHECK (tot.writes > 0 && tot.reads > 0);
  free (fin);
  free (again);
}

static char dir[] = "/tmp/qcow2j-threads-XXXXXX";
static uint64_t seed;
static double scale;

/* Configurations over a backing file need qemu-img to make it. */
static void
run_named (const char *name)
{
  const struct config *c = configs;

  while (strcmp (c->name, name) != 0)
    c++;
  if (c->backing && !have_qemu_img)
    printf ("%s: skipped: no qemu-img\n", name);
  else
    run_config (c, dir, seed, scale);
}

UNIT_CASE (c4k) { run_named ("4k"); }
UNIT_CASE (c64k) { run_named ("64k"); }
UNIT_CASE (c64k_extl2) { run_named ("64k-extl2"); }
UNIT_CASE (c4k_backing) { run_named ("4k-backing"); }
UNIT_CASE (c64k_backing) { run_named ("64k-backing"); }
UNIT_CASE (c32k_extl2_backing) { run_named ("32k-extl2-backing"); }

static const struct unit_case cases[] = {
  UNIT_ENTRY (c4k),
  UNIT_ENTRY (c64k),
  UNIT_ENTRY (c64k_extl2),
  UNIT_ENTRY (c4k_backing),
  UNIT_ENTRY (c64k_backing),
  UNIT_ENTRY (c32k_extl2_backing),
};

int
main (int argc, char *argv[])
{
  const char *e = getenv ("QCOW2J_SEED");

  UNIT_SELECT (argc, argv, cases);
  seed = e ? strtoull (e, NULL, 0) : (uint64_t) time (NULL);
  scale = getenv ("QCOW2J_SLOW") ? 5 : 1;
  printf ("seed %" PRIu64 " (QCOW2J_SEED=%" PRIu64 " repeats it)\n",
          seed, seed);
  REQUIRE (mkdtemp (dir) != NULL);
  have_qemu_img = run_shell ("qemu-img --version >/dev/null 2>&1") == 0;
  if (!have_qemu_img)
    printf ("qemu-img not found: no backing files, no qemu-img check\n");
  for (unsigned i = 0; i < NWORKERS; i++)
    REQUIRE ((wlog[i] = malloc (LOG_CAP * sizeof wlog[i][0])) != NULL);
  UNIT_RUN (cases);
  rmdir (dir);
  return unit_status ();
}
