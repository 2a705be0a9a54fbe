/* The write path when the host fails a call.
 *
 * A fixed workload (the journal set-up of qcow2_make_writable, writes that
 * allocate, in-place overwrites, writes into zero clusters with and without
 * a host cluster, zeroes, a trim, flushes of each kind, and a clean
 * qcow2_close) runs once on the power-cut simulator without faults, which
 * counts the host calls of each kind (pwrite, flush, truncate, punch,
 * reserve) and
 * records the guest disk after every operation.  It runs for 64 KiB
 * clusters, 4 KiB clusters (where one write allocates a second L2 table
 * after the journal is dirty) and 32 KiB clusters with extended L2.
 *
 * Then, for every one of those calls and for EIO and ENOSPC, the workload
 * runs again from the same image with exactly that call failing, and:
 *
 * - the operation during which it failed (or a later one) returns -1 with
 *   errno the injected error or EIO; the test then stops issuing work and
 *   calls qcow2_close (which may fail).  Only the steps of a clean close
 *   that come after the journal was durably invalidated (giving its space
 *   back), the punches of freed clusters, a reservation of space ahead
 *   failing with ENOSPC (retried for only what the change needs), and a
 *   write or zero failing with ENOSPC (tried again after a checkpoint
 *   released the clusters freed before it) may swallow an error;
 * - the file as the failure left it, and a few states a power cut after
 *   the failure could leave (powercut_crash_state), each reopen writable
 *   (qcow2_make_writable replays the journal) and read, per sector, the
 *   disk as it was at the last acknowledged qcow2_flush (or qcow2_close)
 *   or a state a later operation, up to the failing one, produced (a
 *   trimmed sector may also read as zeroes or keep its old content): so
 *   every write acknowledged by a flush reads back;
 * - the recovered image closes cleanly and "qemu-img check" exits 0 on it
 *   (for the file as left, and for some of the power-cut states);
 * - a qcow2_close that returned 0 left plain qcow2 (image.h: it returns
 *   -1 if the clean close failed and the image keeps its journal): the
 *   journal is not dirty, and "qemu-img check" exits 0 on the file as is.
 *
 * docs/journal-format.md section 8.7: after a failed write or flush of a
 * commit the writer fails the waiting requests and commits nothing more;
 * the image stays dirty and the next open replays.
 *
 * QCOW2J_VERBOSE=1 prints the library's messages and every run.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "create.h"
#include "image.h"
#include "log.h"
#include "powercut.h"
#include "qemu-check.h"
#include "unit.h"

extern char **environ;

#define SECTOR ((uint64_t) 512)
#define KiB ((uint64_t) 1024)
#define MiB (1024 * KiB)
struct config {
  uint64_t cs, disk;
  bool extl2;
};

/* With 4 KiB clusters an L2 table maps 2 MiB: the write near the end of
 * that disk allocates a second one after the journal is dirty. */
static const struct config configs[] = {
  { 64 * KiB, 2 * MiB, false },
  { 4 * KiB, 3 * MiB, false },
  { 32 * KiB, 2 * MiB, true },
};

enum op_type { OP_SETUP, OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH, OP_CLOSE };

struct wop {
  enum op_type type;
  uint64_t offset, len;
  bool may_trim;
  const char *what;
};

/* The current configuration and its workload. */
static uint64_t cs, disk_size, nsect;
static bool extl2;
static struct wop workload[40];
static unsigned nops;

static void
add_op (enum op_type type, uint64_t offset, uint64_t len, bool may_trim,
        const char *what)
{
  REQUIRE (nops < sizeof workload / sizeof workload[0]);
  CHECK (offset % SECTOR == 0 && len % SECTOR == 0);
  CHECK (offset + len <= disk_size);
  workload[nops++] = (struct wop) { type, offset, len, may_trim, what };
}

/* Trims touch nothing written later (the check of trimmed sectors relies
 * on it).  Everything is sector-aligned (cs / 8 is at least 512). */
static void
build_workload (void)
{
  nops = 0;
  add_op (OP_SETUP, 0, 0, false, "make_writable (journal set-up)");
  add_op (OP_WRITE, 0, 2 * cs, false, "write allocating clusters 0-1");
  add_op (OP_WRITE, 3 * cs + cs / 8, cs / 4, false,
          "write allocating part of cluster 3");
  add_op (OP_FLUSH, 0, 0, false, "flush (one-flush commit)");
  add_op (OP_WRITE, cs / 4, cs / 2, false, "overwrite in place (cluster 0)");
  add_op (OP_WRITE, 5 * cs, cs, false, "write allocating cluster 5");
  add_op (OP_FLUSH, 0, 0, false, "flush (commit)");
  add_op (OP_WRITE, disk_size - 2 * cs, cs / 2, false,
          "write allocating near the end (a new L2 table with 4 KiB "
          "clusters)");
  add_op (OP_WRITE, cs + cs / 8, cs / 8, false,
          "overwrite in place (cluster 1)");
  add_op (OP_FLUSH, 0, 0, false, "flush (commit)");
  add_op (OP_WRITE, cs + cs / 4, cs / 8, false,
          "overwrite in place (cluster 1)");
  add_op (OP_FLUSH, 0, 0, false, "flush (in-place data only)");
  add_op (OP_ZERO, 5 * cs, cs, true, "zero cluster 5, may_trim (released)");
  add_op (OP_ZERO, 0, cs, false, "zero cluster 0, keep (preallocated zero)");
  add_op (OP_ZERO, 7 * cs, cs, false, "zero unallocated cluster 7");
  add_op (OP_FLUSH, 0, 0, false, "flush (commit of zeroes)");
  add_op (OP_WRITE, 5 * cs + cs / 4, cs / 8, false,
          "write into zero cluster 5 (no host cluster)");
  add_op (OP_WRITE, 7 * cs + cs / 8, cs / 8, false,
          "write into zero cluster 7 (no host cluster)");
  add_op (OP_WRITE, cs / 8, cs / 8, false,
          "write into preallocated zero cluster 0 (copy-on-write)");
  add_op (OP_ZERO, 3 * cs + cs / 4, cs / 8, false,
          "zero part of cluster 3 (writes zeroes)");
  add_op (OP_FLUSH, 0, 0, false, "flush (two-flush commit)");
  add_op (OP_TRIM, cs - cs / 8, cs + cs / 4, false,
          "trim cluster 1 (and parts around it)");
  add_op (OP_WRITE, 8 * cs, 3 * cs, false, "write allocating clusters 8-10");
  add_op (OP_FLUSH, 0, 0, false, "flush (commit of trim and allocation)");
  add_op (OP_WRITE, 12 * cs, cs / 4, false,
          "write allocating cluster 12, unflushed");
  add_op (OP_WRITE, cs / 4, cs / 8, false, "overwrite in place, unflushed");
  add_op (OP_CLOSE, 0, 0, false, "close");
}

/* Host call kinds. */
#define NR_KINDS 5
static const char kinds[NR_KINDS] = { 'w', 'f', 't', 'p', 'r' };
static const char *const kind_names[NR_KINDS] = { "pwrite", "flush",
                                                  "truncate", "punch",
                                                  "reserve" };

/* A hostio in front of the simulator: counts the calls of each kind,
 * notes the operation they belong to, and sees the injected failure. */
struct tap {
  struct hostio io;
  struct hostio *inner;
  struct powercut *pc;
  unsigned op;                  /* the workload operation running */
  uint64_t count[NR_KINDS];
  unsigned *site_op[NR_KINDS];  /* baseline: the op of each call */
  uint64_t site_cap[NR_KINDS];
  bool record_sites;
  /* The injected failure. */
  int inj_kind;                 /* -1: none */
  uint64_t inj_nth;
  bool fired, fired_best_effort;
  unsigned fired_op;
  uint64_t fired_moment;
  uint64_t failed_reserve;       /* offset of the failed reserve call */
  /* In qcow2_close: VALID cleared (8 bytes at 88) and flushed. */
  bool valid_cleared, best_effort;
};

static void
tap_note (struct tap *tp, int k, int r)
{
  uint64_t i = tp->count[k]++;

  if (tp->record_sites) {
    if (i == tp->site_cap[k]) {
      tp->site_cap[k] = tp->site_cap[k] ? tp->site_cap[k] * 2 : 256;
      tp->site_op[k] = realloc (tp->site_op[k],
                                tp->site_cap[k] * sizeof *tp->site_op[k]);
      REQUIRE (tp->site_op[k] != NULL);
    }
    tp->site_op[k][i] = tp->op;
  }
  if (tp->inj_kind == k && i == tp->inj_nth) {
    /* The simulator fails exactly this call. */
    CHECK (r == -1);
    tp->fired = true;
    tp->fired_op = tp->op;
    tp->fired_best_effort = tp->best_effort || kinds[k] == 'p';
    tp->fired_moment = powercut_moment (tp->pc);
  }
  else
    CHECK (r == 0);
}

static int
tap_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  return hostio_pread (((struct tap *) io)->inner, buf, count, offset);
}

static int
tap_pwrite (struct hostio *io, const void *buf, size_t count, uint64_t offset)
{
  struct tap *tp = (struct tap *) io;
  int r = hostio_pwrite (tp->inner, buf, count, offset);
  int e = errno;

  tap_note (tp, 0, r);
  if (r == 0 && workload[tp->op].type == OP_CLOSE && offset == 88 &&
      count == 8)
    tp->valid_cleared = true;
  errno = e;
  return r;
}

static int
tap_flush (struct hostio *io)
{
  struct tap *tp = (struct tap *) io;
  int r = hostio_flush (tp->inner);
  int e = errno;

  tap_note (tp, 1, r);
  if (r == 0 && tp->valid_cleared)
    tp->best_effort = true;
  errno = e;
  return r;
}

static int
tap_truncate (struct hostio *io, uint64_t size)
{
  struct tap *tp = (struct tap *) io;
  int r = tp->inner->ops->truncate (tp->inner, size);
  int e = errno;

  tap_note (tp, 2, r);
  errno = e;
  return r;
}

static int
tap_punch (struct hostio *io, uint64_t offset, uint64_t count)
{
  struct tap *tp = (struct tap *) io;
  int r = tp->inner->ops->punch (tp->inner, offset, count);
  int e = errno;

  tap_note (tp, 3, r);
  errno = e;
  return r;
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

static int
tap_reserve (struct hostio *io, uint64_t offset, uint64_t count)
{
  struct tap *tp = (struct tap *) io;
  int r = hostio_reserve (tp->inner, offset, count);
  int e = errno;
  bool was_fired = tp->fired;

  tap_note (tp, 4, r);
  /* Reserving ahead failed with ENOSPC: the library retries with only
   * what the change needs (qcow2_reserve_space), which may succeed. */
  if (was_fired && r == 0 && offset == tp->failed_reserve)
    tp->fired_best_effort = true;
  if (!was_fired && tp->fired)
    tp->failed_reserve = offset;
  errno = e;
  return r;
}

static const struct hostio_ops tap_ops = {
  .pread = tap_pread, .pwrite = tap_pwrite, .flush = tap_flush,
  .punch = tap_punch, .truncate = tap_truncate, .reserve = tap_reserve,
  .size = tap_size,
  .block_status = tap_block_status, .close = tap_close,
};

/* State ------------------------------------------------------------------ */

static char dir[256];
static uint8_t *initial;                /* the fresh image */
static uint64_t initial_size;
static uint8_t *snap[41];               /* the disk after the first k ops */
static bool *trimmed;                   /* [k * nsect + s]: op k is a trim
                                           covering s */
static uint64_t sites, runs, reopen_checks, swallowed;
static bool have_qemu_img, verbose;
static bool lib_quiet;                  /* errors are expected now */
static uint64_t rng = 42;

static void
log_error (const char *fs, va_list args)
{
  if (lib_quiet && !verbose)
    return;
  fprintf (stderr, "qcow2j: ");
  vfprintf (stderr, fs, args);
  fputc ('\n', stderr);
}

static void
log_debug (const char *fs, va_list args)
{
  if (!verbose)
    return;
  fprintf (stderr, "qcow2j debug: ");
  vfprintf (stderr, fs, args);
  fputc ('\n', stderr);
}

static void
fail (const char *what, const char *fs, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
fail (const char *what, const char *fs, ...)
{
  char msg[512];
  va_list args;

  va_start (args, fs);
  vsnprintf (msg, sizeof msg, fs, args);
  va_end (args);
  FAIL ("%s: %s", what, msg);
}

static void
gen_data (unsigned op, uint64_t offset, uint64_t len, uint8_t *out)
{
  for (uint64_t s = 0; s < len; s += SECTOR) {
    uint64_t r = (uint64_t) op << 48 ^ (offset + s) ^ 0x5eed;
    for (unsigned i = 0; i < SECTOR; i += 8) {
      uint64_t w = pc_rand (&r);
      memcpy (out + s + i, &w, 8);
    }
  }
}

static bool
is_zero (const uint8_t *p, uint64_t n)
{
  for (uint64_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

static void
check_image (const uint8_t *data, uint64_t size, const char *what)
{
  if (have_qemu_img)
    qemu_check_start (dir, data, size, what);
}

/* The workload ------------------------------------------------------------ */

/* Run operation i; 0 or -1 with errno set. */
static int
do_op (struct qcow2_image *img, unsigned i)
{
  const struct wop *w = &workload[i];

  switch (w->type) {
  case OP_SETUP:
    return qcow2_make_writable (img);
  case OP_WRITE: {
    uint8_t *buf = malloc (w->len);
    int r, e;

    REQUIRE (buf != NULL);
    gen_data (i, w->offset, w->len, buf);
    r = qcow2_pwrite (img, buf, w->len, w->offset);
    e = errno;
    free (buf);
    errno = e;
    return r;
  }
  case OP_ZERO:
    return qcow2_zero (img, w->len, w->offset, w->may_trim, false);
  case OP_TRIM:
    return qcow2_trim (img, w->len, w->offset);
  case OP_FLUSH:
    return qcow2_flush (img);
  case OP_CLOSE:
    return qcow2_close (img);
  }
  abort ();
}

/* The baseline: no fault.  Counts the calls and records the disk after
 * every operation. */
static void
baseline (struct tap *tp, struct powercut **pcp)
{
  struct qcow2_open_options opts = { .writable = true };
  struct powercut *pc = powercut_new ("image", initial, initial_size);
  struct qcow2_image *img;

  memset (tp, 0, sizeof *tp);
  tp->io.ops = &tap_ops;
  tp->io.name = (char *) "image";
  tp->inner = powercut_io (pc);
  tp->pc = pc;
  tp->inj_kind = -1;
  tp->record_sites = true;

  img = qcow2_open_hostio (&tp->io, NULL, &opts);
  REQUIRE (img != NULL);
  snap[0] = calloc (1, disk_size);
  REQUIRE (snap[0] != NULL);
  for (unsigned i = 0; i < nops; i++) {
    const struct wop *w = &workload[i];

    tp->op = i;
    snap[i + 1] = malloc (disk_size);
    REQUIRE (snap[i + 1] != NULL);
    memcpy (snap[i + 1], snap[i], disk_size);
    if (do_op (img, i) == -1) {
      FAIL ("baseline: op %u (%s) failed: %s", i, w->what, strerror (errno));
      unit_stop ();
    }
    if (w->type == OP_WRITE)
      gen_data (i, w->offset, w->len, snap[i + 1] + w->offset);
    else if (w->type == OP_ZERO)
      memset (snap[i + 1] + w->offset, 0, w->len);
    else if (w->type == OP_TRIM) {
      /* Advisory: what it did is what the image reads now. */
      CHECK (qcow2_pread (img, snap[i + 1] + w->offset, w->len,
                          w->offset) == 0);
      for (uint64_t s = w->offset / SECTOR;
           s < (w->offset + w->len) / SECTOR; s++)
        trimmed[i * nsect + s] = true;
    }
    if (w->type != OP_CLOSE) {
      uint8_t *live = malloc (disk_size);
      REQUIRE (live != NULL);
      CHECK (qcow2_pread (img, live, disk_size, 0) == 0);
      if (memcmp (live, snap[i + 1], disk_size) != 0) {
        FAIL ("baseline: after op %u (%s) the disk differs from the model",
              i, w->what);
        unit_stop ();
      }
      free (live);
    }
  }
  tp->record_sites = false;
  *pcp = pc;
}

/* Checking a recovered disk ---------------------------------------------- */

/* The disk must read, per sector, as snap[k] for some k in [acked, last],
 * or for a trim among ops [acked, last) (or before) as zeroes or what it
 * held before the trim. */
static uint64_t
check_disk (const uint8_t *disk, unsigned acked, unsigned last,
            const char *what)
{
  uint64_t bad = 0;

  for (uint64_t s = 0; s < nsect; s++) {
    const uint8_t *p = disk + s * SECTOR;
    bool ok = false;

    for (unsigned k = acked; k <= last && !ok; k++)
      ok = memcmp (p, snap[k] + s * SECTOR, SECTOR) == 0;
    for (unsigned k = 0; k < last && !ok; k++)
      if (trimmed[k * nsect + s])
        ok = is_zero (p, SECTOR) ||
          memcmp (p, snap[k] + s * SECTOR, SECTOR) == 0;
    if (!ok) {
      if (bad < 3) {
        int match = -1;
        for (unsigned k = 0; k <= nops; k++)
          if (memcmp (p, snap[k] + s * SECTOR, SECTOR) == 0)
            match = k;
        fprintf (stderr, "  %s: guest sector %" PRIu64 " (0x%" PRIx64
                 "): %s, allowed the disk after %u..%u ops; it is the disk "
                 "after %d ops%s\n", what, s, s * SECTOR,
                 is_zero (p, SECTOR) ? "zeroes" : "data", acked, last, match,
                 match < 0 ? " (never written)" : "");
      }
      bad++;
    }
  }
  return bad;
}

/* Open the file writable (replaying), read the disk, check it, close.
 * Returns the recovered file's simulator (or NULL). */
static struct powercut *
recover (const uint8_t *data, uint64_t size, unsigned acked, unsigned last,
         const char *what)
{
  struct qcow2_open_options opts = { .writable = true };
  struct powercut *pc = powercut_new ("recovered", data, size);
  struct qcow2_image *img;
  uint8_t *disk = malloc (disk_size);
  uint64_t bad;

  REQUIRE (disk != NULL);
  reopen_checks++;
  img = qcow2_open_hostio (powercut_io (pc), NULL, &opts);
  if (img == NULL) {
    fail (what, "qcow2_open_hostio failed: %m");
    goto err;
  }
  if (qcow2_make_writable (img) == -1) {
    fail (what, "qcow2_make_writable failed: %m");
    qcow2_close (img);
    goto err;
  }
  if (qcow2_pread (img, disk, disk_size, 0) == -1) {
    fail (what, "reading the disk failed: %m");
    qcow2_close (img);
    goto err;
  }
  bad = check_disk (disk, acked, last, what);
  if (bad > 0) {
    fail (what, "%" PRIu64 " sectors hold what they may not", bad);
    qcow2_close (img);
    goto err;
  }
  if (qcow2_close (img) == -1) {
    fail (what, "qcow2_close of the recovered image failed: %m");
    goto err;
  }
  free (disk);
  return pc;

 err:
  free (disk);
  powercut_free (pc);
  return NULL;
}

/* One fault run ------------------------------------------------------------ */

static void
fault_run (int k, uint64_t nth, int err, const struct tap *base)
{
  struct qcow2_open_options opts = { .writable = true };
  struct powercut *pc = powercut_new ("image", initial, initial_size);
  struct tap tp;
  struct qcow2_image *img;
  unsigned site = base->site_op[k][nth];
  unsigned acked = 0, last = nops, failed_op = nops;
  uint64_t ack_moment = 0, end_moment, failures_before = unit_failed ();
  int failed_errno = 0, close_r = 0, close_errno = 0;
  bool closed = false;
  char what[300];

  alarm (60);                   /* never hang */
  runs++;
  snprintf (what, sizeof what, "cs %" PRIu64 "%s: %s #%" PRIu64 " (in op "
            "%u: %s) failing with %s", cs, extl2 ? " extl2" : "",
            kind_names[k], nth, site, workload[site].what,
            err == EIO ? "EIO" : "ENOSPC");

  memset (&tp, 0, sizeof tp);
  tp.io.ops = &tap_ops;
  tp.io.name = (char *) "image";
  tp.inner = powercut_io (pc);
  tp.pc = pc;
  tp.inj_kind = k;
  tp.inj_nth = nth;
  powercut_fail_at (pc, kinds[k], nth, err);

  lib_quiet = true;
  img = qcow2_open_hostio (&tp.io, NULL, &opts);
  REQUIRE (img != NULL);
  for (unsigned i = 0; i < nops; i++) {
    tp.op = i;
    errno = 0;
    if (do_op (img, i) == -1) {
      failed_op = i;
      failed_errno = errno;
      break;
    }
    if (workload[i].type == OP_FLUSH || workload[i].type == OP_CLOSE) {
      acked = i + 1;            /* everything before it is durable */
      ack_moment = powercut_moment (pc);
    }
  }
  if (failed_op < nops) {
    closed = workload[failed_op].type == OP_CLOSE;
    last = failed_op + 1;       /* the failing op may have happened */
    if (!closed) {
      tp.op = nops - 1;
      errno = 0;
      close_r = qcow2_close (img);
      close_errno = errno;
    }
  }
  lib_quiet = false;
  end_moment = powercut_moment (pc);

  if (!tp.fired)
    fail (what, "the fault was never injected (the workload's calls "
          "changed)");
  else if (failed_op == nops) {
    /* A write or zero that finds the host full while freed clusters wait
     * for a checkpoint checkpoints and tries again (session.c). */
    bool retried = err == ENOSPC &&
      (workload[tp.fired_op].type == OP_WRITE ||
       workload[tp.fired_op].type == OP_ZERO);

    if (!tp.fired_best_effort && !retried)
      fail (what, "no operation failed: the error was swallowed");
    else
      swallowed++;
  }
  else {
    if (failed_op < tp.fired_op)
      fail (what, "op %u (%s) failed before the fault", failed_op,
            workload[failed_op].what);
    if (failed_errno != err && failed_errno != EIO)
      fail (what, "op %u (%s) failed with errno %d (%s), not %s or EIO",
            failed_op, workload[failed_op].what, failed_errno,
            strerror (failed_errno), err == EIO ? "EIO" : "ENOSPC");
    if (close_r == -1 && close_errno != err && close_errno != EIO)
      fail (what, "qcow2_close after the failure failed with errno %d (%s)",
            close_errno, strerror (close_errno));
  }
  if (verbose)
    fprintf (stderr, "%s: op %d failed (%s), close %d, acked %u ops\n",
             what, failed_op == nops ? -1 : (int) failed_op,
             failed_errno ? strerror (failed_errno) : "-", close_r, acked);

  /* A close that returned 0 left plain qcow2 (image.h: "Returns -1 if
   * that failed (the image then keeps its journal ...)"). */
  if (failed_op == nops || (!closed && close_r == 0)) {
    uint64_t size;
    const uint8_t *d = powercut_data (pc, &size);
    struct powercut *ro = powercut_new ("closed", d, size);
    struct qcow2_open_options ro_opts = { .writable = false };
    struct qcow2_image *rimg;
    char w2[400];

    snprintf (w2, sizeof w2, "%s, file as left by a successful close", what);
    lib_quiet = true;
    rimg = qcow2_open_hostio (powercut_io (ro), NULL, &ro_opts);
    lib_quiet = false;
    if (rimg == NULL)
      fail (w2, "it does not open read-only: %m");
    else {
      if (qcow2_journal_dirty (rimg))
        fail (w2, "qcow2_close returned 0 but left the journal dirty (the "
              "image needs a replay; QEMU refuses it)");
      else
        check_image (d, size, w2);
      qcow2_close (rimg);
    }
    powercut_free (ro);
  }

  /* The file as it is. */
  {
    uint64_t size;
    const uint8_t *d = powercut_data (pc, &size);
    char w2[400];
    struct powercut *rec;

    snprintf (w2, sizeof w2, "%s, file as left", what);
    rec = recover (d, size, acked, last, w2);
    if (rec) {
      const uint8_t *rd = powercut_data (rec, &size);
      check_image (rd, size, w2);
      powercut_free (rec);
    }
  }

  /* Power cuts after the failure (at its moment, at the end, and one
   * between the last acknowledged flush and the end). */
  {
    uint64_t moments[3];

    /* (A swallowed fault may come before the last acknowledged flush.) */
    moments[0] = tp.fired && tp.fired_moment > ack_moment ? tp.fired_moment
      : ack_moment;
    moments[1] = ack_moment + pc_rand (&rng) % (end_moment - ack_moment + 1);
    moments[2] = end_moment;
    /* Non-decreasing: cheap for the simulator. */
    if (moments[1] < moments[0]) {
      uint64_t x = moments[0];
      moments[0] = moments[1];
      moments[1] = x;
    }
    for (unsigned m = 0; m < 3; m++) {
      uint8_t *crash;
      uint64_t crash_size, size;
      struct powercut *rec;
      char w2[400];

      CHECK (moments[m] >= ack_moment && moments[m] <= end_moment);
      snprintf (w2, sizeof w2, "%s, power cut at moment %" PRIu64 "/%"
                PRIu64, what, moments[m], end_moment);
      powercut_crash_state (pc, moments[m], &rng, &crash, &crash_size);
      rec = recover (crash, crash_size, acked, last, w2);
      free (crash);
      if (rec && (runs + m) % 3 == 0) {
        const uint8_t *rd = powercut_data (rec, &size);
        check_image (rd, size, w2);
      }
      if (rec)
        powercut_free (rec);
    }
  }

  if (unit_failed () > failures_before)
    fprintf (stderr, "  (%s: op %d failed with %s; qcow2_close after it: "
             "%d%s%s; acknowledged: the first %u ops)\n", what,
             failed_op == nops ? -1 : (int) failed_op,
             failed_errno ? strerror (failed_errno) : "-", close_r,
             close_r ? ", " : "", close_r ? strerror (close_errno) : "",
             acked);
  powercut_free (pc);
  alarm (0);
}

static void
run_config (const struct config *cfg)
{
  struct tap base;
  struct powercut *pc;
  char path[300];
  struct stat st;
  int fd;

  cs = cfg->cs;
  disk_size = cfg->disk;
  extl2 = cfg->extl2;
  nsect = disk_size / SECTOR;
  build_workload ();
  trimmed = calloc (nops * nsect, sizeof *trimmed);
  REQUIRE (trimmed != NULL);

  /* The initial image. */
  snprintf (path, sizeof path, "%s/base.qcow2", dir);
  CHECK (qcow2_create (path, disk_size, cs, extl2, false) == 0);
  fd = open (path, O_RDONLY);
  REQUIRE (fd >= 0);
  REQUIRE (fstat (fd, &st) == 0);
  initial_size = st.st_size;
  initial = malloc (initial_size);
  REQUIRE (initial != NULL);
  CHECK (pread (fd, initial, initial_size, 0) == (ssize_t) initial_size);
  close (fd);
  unlink (path);

  /* Without faults: the calls, the disk after each op, and the closed
   * image is good. */
  alarm (60);
  baseline (&base, &pc);
  {
    uint64_t size;
    const uint8_t *d = powercut_data (pc, &size);
    struct powercut *rec = recover (d, size, nops, nops, "baseline");

    if (rec) {
      d = powercut_data (rec, &size);
      check_image (d, size, "baseline, recovered");
      powercut_free (rec);
    }
    d = powercut_data (pc, &size);
    check_image (d, size, "baseline, closed");
  }
  powercut_free (pc);
  for (int k = 0; k < NR_KINDS; k++)
    sites += base.count[k];
  printf ("unit-image-faults: cs %" PRIu64 "%s, %u ops: %" PRIu64
          " pwrites, %" PRIu64 " flushes, %" PRIu64 " truncates, %" PRIu64
          " punches, %" PRIu64 " reserves\n", cs, extl2 ? " extl2" : "", nops,
          base.count[0], base.count[1], base.count[2], base.count[3],
          base.count[4]);
  fflush (stdout);
  alarm (0);

  /* Quick (unit.h): each call fails with one of the two errors, in
   * turn, rather than with both. */
  for (int k = 0; k < NR_KINDS; k++)
    for (uint64_t n = 0; n < base.count[k]; n++) {
      if (!unit_quick () || n % 2 == 0)
        fault_run (k, n, EIO, &base);
      if (!unit_quick () || n % 2 == 1)
        fault_run (k, n, ENOSPC, &base);
    }
  qemu_check_wait_all ();

  for (int k = 0; k < NR_KINDS; k++)
    free (base.site_op[k]);
  free (initial);
  free (trimmed);
  for (unsigned i = 0; i <= nops; i++)
    free (snap[i]);
}

UNIT_CASE (cs64k) { run_config (&configs[0]); }
UNIT_CASE (cs4k) { run_config (&configs[1]); }
UNIT_CASE (cs32k_extl2) { run_config (&configs[2]); }

static const struct unit_case cases[] = {
  UNIT_ENTRY (cs64k),
  UNIT_ENTRY (cs4k),
  UNIT_ENTRY (cs32k_extl2),
};

int
main (int argc, char *argv[])
{
  const char *tmp = getenv ("TMPDIR");
  const char *v = getenv ("QCOW2J_VERBOSE");

  UNIT_SELECT (argc, argv, cases);
  verbose = v && *v == '1';
  qlog_set_handlers (log_error, log_debug);
  have_qemu_img = system ("qemu-img --version >/dev/null 2>&1") == 0;
  if (!have_qemu_img)
    fprintf (stderr, "unit-image-faults: qemu-img not found: images are "
             "not checked by QEMU\n");
  snprintf (dir, sizeof dir, "%s/qcow2j-faults.XXXXXX",
            tmp && *tmp ? tmp : "/tmp");
  REQUIRE (mkdtemp (dir) != NULL);

  UNIT_RUN (cases);
  rmdir (dir);

  printf ("unit-image-faults: %" PRIu64 " call sites x 2 errors = %" PRIu64
          " runs, %" PRIu64 " reopen checks, %u failures\n",
          sites, runs, reopen_checks, unit_failed ());
  printf ("unit-image-faults: %" PRIu64 " qemu-img checks, %" PRIu64
          " runs where a best-effort step swallowed the error\n",
          qemu_check_started (), swallowed);
  return unit_status ();
}
