/* Unit tests of the free space manager (lib/space.c): random gives,
 * takes, takes at a place and free-tail lookups checked against a model
 * that keeps one state per cluster (used, clean or stale), and learning
 * free space from refcount-zero runs, the metadata map and the host's
 * holes.
 *
 * After every operation: the ranges are sorted, disjoint, cluster
 * aligned and merged (no two touching ranges of one kind), each cluster's
 * kind is the model's, and qcow2_space_free_bytes is the model's free
 * bytes.  A take must return free clusters of one kind chosen as the
 * header promises: the hint if it is free and of the kind asked for
 * first, else first fit (the lowest run long enough) among ranges of
 * the kind asked for first, else of the other kind; *fresh exactly when
 * every cluster taken was clean; 0 only when no range of either kind is
 * long enough. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <string.h>

#include "metamap.h"
#include "space.h"
#include "unit.h"

#define CS 4096
#define CLUSTERS 200
#define GRAIN 1024              /* host allocation granularity */
#define GRAINS (CLUSTERS * CS / GRAIN)

enum { USED = 0, CLEAN = SPACE_CLEAN, STALE = SPACE_STALE };

static unsigned model[CLUSTERS];

/* The host file: which GRAIN-sized pieces are holes. */
static bool hole[GRAINS];
static bool status_fails;

static int
fake_block_status (struct hostio *io, uint64_t o, uint64_t c, bool *is_data,
                   uint64_t *run)
{
  uint64_t g = o / GRAIN, end = o + c, r;

  if (status_fails) {
    errno = EIO;
    return -1;
  }
  *is_data = !hole[g];
  /* The maximal run of one status, capped at count. */
  r = (g + 1) * GRAIN - o;
  for (g++; g < GRAINS && hole[g] == !*is_data && o + r < end; g++)
    r += GRAIN;
  *run = r < c ? r : c;
  return 0;
}

static const struct hostio_ops fake_ops = {
  .block_status = fake_block_status,
};
static struct hostio io = { .ops = &fake_ops, .name = (char *) "image" };
static struct qcow2_image img = { .file = &io };

static uint64_t
rnd (uint64_t *seed)
{
  *seed = *seed * 6364136223846793005ULL + 1442695040888963407ULL;
  return *seed >> 33;
}

static void
compare (void)
{
  uint64_t free_bytes = 0;

  for (size_t i = 0; i < img.space.len; i++) {
    const struct range *e = &img.space.v[i];

    CHECK (e->start < e->end && e->start % CS == 0 && e->end % CS == 0);
    CHECK (e->kind == SPACE_CLEAN || e->kind == SPACE_STALE);
    CHECK (e->end <= (uint64_t) CLUSTERS * CS);
    if (i > 0)
      CHECK (img.space.v[i - 1].end < e->start ||
             (img.space.v[i - 1].end == e->start &&
              img.space.v[i - 1].kind != e->kind));
  }
  for (uint64_t c = 0; c < CLUSTERS; c++) {
    unsigned k = rangemap_kind_at (&img.space, c * CS + 100);

    if (k != model[c]) {
      FAIL ("cluster %" PRIu64 ": kind %u, model %u", c, k, model[c]);
      break;
    }
    if (model[c] != USED)
      free_bytes += CS;
  }
  CHECK (qcow2_space_free_bytes (&img) == free_bytes);
}

/* The stalest kind of [c, c + n) if all free, else USED. */
static unsigned
model_kind (uint64_t c, uint64_t n)
{
  unsigned k = CLEAN;

  if (c + n > CLUSTERS)
    return USED;
  for (uint64_t i = c; i < c + n; i++) {
    if (model[i] == USED)
      return USED;
    if (model[i] > k)
      k = model[i];
  }
  return k;
}

/* First fit among maximal runs of one kind, as promised: the lowest run
 * of that kind with n clusters, from its start.  CLUSTERS if none. */
static uint64_t
model_first_fit (uint64_t n, unsigned kind)
{
  for (uint64_t c = 0; c < CLUSTERS; ) {
    uint64_t e = c;

    if (model[c] != kind) {
      c++;
      continue;
    }
    while (e < CLUSTERS && model[e] == kind)
      e++;
    if (e - c >= n)
      return c;
    c = e;
  }
  return CLUSTERS;
}

static void
op_give (uint64_t *seed)
{
  uint64_t c = rnd (seed) % CLUSTERS, n = 1 + rnd (seed) % 6, k;
  unsigned kind = rnd (seed) % 2 ? SPACE_CLEAN : SPACE_STALE;

  /* Only used clusters may be given. */
  for (k = 0; k < n && c + k < CLUSTERS && model[c + k] == USED; k++)
    ;
  if (k == 0)
    return;
  qcow2_space_give (&img, c * CS, k * CS, kind);
  for (uint64_t i = c; i < c + k; i++)
    model[i] = kind;
}

static void
op_take (uint64_t *seed)
{
  uint64_t n = 1 + rnd (seed) % 4;
  uint64_t hint = rnd (seed) % 3 ? (rnd (seed) % CLUSTERS) * CS : 0;
  bool prefer_clean = rnd (seed) % 2;
  unsigned first = prefer_clean ? CLEAN : STALE, other = CLEAN + STALE - first;
  uint64_t offset = UINT64_MAX, expect;
  bool fresh = false, hinted;
  unsigned kind;
  int r;

  hinted = hint != 0 && model_kind (hint / CS, n) == first;
  if (hinted) {
    expect = hint / CS;
    kind = first;
  }
  else {
    kind = first;
    expect = model_first_fit (n, kind);
    if (expect == CLUSTERS) {
      kind = other;
      expect = model_first_fit (n, kind);
    }
  }
  r = qcow2_space_take (&img, n, hint, prefer_clean, &offset, &fresh);
  if (expect == CLUSTERS) {
    if (r != 0)
      FAIL ("take %" PRIu64 ": took %#" PRIx64 " though no run of one kind "
            "is long enough", n, offset);
    CHECK (r == 0);
    return;
  }
  if (r != 1) {
    FAIL ("take %" PRIu64 " (hint %#" PRIx64 ", prefer_clean %d): nothing, "
          "expected cluster %" PRIu64, n, hint, prefer_clean, expect);
    return;
  }
  /* What was taken was free, and of the kind promised. */
  REQUIRE (offset % CS == 0 && offset / CS + n <= CLUSTERS);
  if (model_kind (offset / CS, n) == USED)
    FAIL ("take %" PRIu64 ": [%#" PRIx64 ", +%" PRIu64 " clusters) was not "
          "all free", n, offset, n);
  CHECK (fresh == (model_kind (offset / CS, n) == CLEAN));
  if (offset / CS != expect)
    FAIL ("take %" PRIu64 " (hint %#" PRIx64 "%s, prefer_clean %d): took "
          "cluster %" PRIu64 ", expected %" PRIu64 " (kind %u)", n, hint,
          hinted ? ", honoured" : "", prefer_clean, offset / CS, expect,
          kind);
  if (prefer_clean && kind == CLEAN)
    CHECK (fresh);
  for (uint64_t i = offset / CS; i < offset / CS + n && i < CLUSTERS; i++)
    model[i] = USED;
}

static void
op_take_at (uint64_t *seed)
{
  uint64_t c = rnd (seed) % CLUSTERS, n = 1 + rnd (seed) % 5;
  bool all_free = model_kind (c, n) != USED;
  int r;

  if (c + n > CLUSTERS)
    n = CLUSTERS - c;
  all_free = model_kind (c, n) != USED;
  r = qcow2_space_take_at (&img, c * CS, n * CS);
  CHECK (r == (all_free ? 1 : 0));
  if (r == 1)
    for (uint64_t i = c; i < c + n; i++)
      model[i] = USED;
}

static void
op_free_tail (uint64_t *seed)
{
  uint64_t end = rnd (seed) % (CLUSTERS + 1), c = end;

  while (c > 0 && model[c - 1] != USED)
    c--;
  if (qcow2_space_free_tail (&img, end * CS) != c * CS)
    FAIL ("free_tail (%#" PRIx64 ") = %#" PRIx64 ", expected %#" PRIx64,
          end * CS, qcow2_space_free_tail (&img, end * CS), c * CS);
}

static void
reset (void)
{
  qcow2_space_forget (&img);
  memset (model, 0, sizeof model);
}

UNIT_CASE (random_operations)
{
  uint64_t seed = 7;

  qcow2_meta_lock (&img);
  reset ();
  for (int round = 0; round < 40000; round++) {
    /* Phases that lean towards giving or towards taking, so that the
     * map goes from empty to full and back. */
    unsigned bias = (round / 2000) % 2 ? 6 : 3, op = rnd (&seed) % 10;

    if (op < bias)
      op_give (&seed);
    else if (op < 8)
      op_take (&seed);
    else if (op == 8)
      op_take_at (&seed);
    else
      op_free_tail (&seed);
    compare ();
    if (unit_failed () > 20)
      break;
  }
  qcow2_meta_unlock (&img);
}

/* The lowest run first, hints honoured, clean first unless none is
 * long enough. */
UNIT_CASE (first_fit_and_hint)
{
  uint64_t off;
  bool fresh;

  qcow2_meta_lock (&img);
  reset ();
  qcow2_space_give (&img, 10 * CS, 10 * CS, SPACE_CLEAN);
  qcow2_space_give (&img, 30 * CS, 4 * CS, SPACE_STALE);
  CHECK (qcow2_space_take (&img, 2, 0, true, &off, &fresh) == 1 &&
         off == 10 * CS && fresh);
  CHECK (qcow2_space_take (&img, 2, 0, true, &off, &fresh) == 1 &&
         off == 12 * CS && fresh);
  /* A hint that is free and clean is honoured. */
  CHECK (qcow2_space_take (&img, 1, 18 * CS, true, &off, &fresh) == 1 &&
         off == 18 * CS && fresh);
  /* Tables ask for stale first. */
  CHECK (qcow2_space_take (&img, 1, 0, false, &off, &fresh) == 1 &&
         off == 30 * CS && !fresh);
  /* A stale hint is not honoured when clean is asked for first: the
   * lowest clean run. */
  CHECK (qcow2_space_take (&img, 1, 31 * CS, true, &off, &fresh) == 1 &&
         off == 14 * CS && fresh);
  CHECK (qcow2_space_take (&img, 3, 0, true, &off, &fresh) == 1 &&
         off == 15 * CS && fresh);
  /* No clean run long enough: stale, even though clean was asked for. */
  CHECK (qcow2_space_take (&img, 2, 0, true, &off, &fresh) == 1 &&
         off == 31 * CS && !fresh);
  /* Nothing long enough of one kind: nothing. */
  CHECK (qcow2_space_take (&img, 2, 0, true, &off, &fresh) == 0);
  CHECK (qcow2_space_free_bytes (&img) == 2 * CS);
  CHECK (qcow2_space_free_tail (&img, 20 * CS) == 19 * CS);
  CHECK (qcow2_space_free_tail (&img, 34 * CS) == 33 * CS);
  CHECK (qcow2_space_free_tail (&img, 33 * CS) == 33 * CS);
  qcow2_meta_unlock (&img);
}

/* Learning: the free clusters of refcount-zero runs are those holding no
 * metadata; clean where the whole cluster is a hole in the host file,
 * stale where any of it holds data, all stale when the host cannot say. */
UNIT_CASE (learn_runs)
{
  uint64_t seed = 99;

  for (int round = 0; round < 300; round++) {
    bool meta[CLUSTERS] = { false };
    bool zero[CLUSTERS] = { false };

    REQUIRE (qcow2_metamap_set (&img, 0, CLUSTERS * CS, META_NONE) == 0);
    for (int i = 0; i < 8; i++) {
      uint64_t c = rnd (&seed) % CLUSTERS, n = 1 + rnd (&seed) % 8;

      if (c + n > CLUSTERS)
        n = CLUSTERS - c;
      REQUIRE (qcow2_metamap_set (&img, c * CS, n * CS,
                                  (enum meta_kind) (1 + rnd (&seed) % 5)) == 0);
      for (uint64_t k = c; k < c + n; k++)
        meta[k] = true;
    }
    /* Holes in runs of 1 to 12 grains, so that some cover part of a
     * cluster. */
    for (uint64_t g = 0; g < GRAINS; ) {
      uint64_t n = 1 + rnd (&seed) % 12;
      bool h = rnd (&seed) % 2;

      for (; n > 0 && g < GRAINS; n--, g++)
        hole[g] = h;
    }
    status_fails = round % 10 == 9;
    qcow2_space_forget (&img);
    memset (model, 0, sizeof model);
    /* A few disjoint refcount-zero runs, in order. */
    for (uint64_t c = rnd (&seed) % 10; c < CLUSTERS; ) {
      uint64_t n = 1 + rnd (&seed) % 30;

      if (c + n > CLUSTERS)
        n = CLUSTERS - c;
      CHECK (qcow2_space_learn_run (&img, c * CS, n * CS, NULL) == 0);
      for (uint64_t k = c; k < c + n; k++)
        zero[k] = true;
      c += n + 1 + rnd (&seed) % 10;
    }
    for (uint64_t c = 0; c < CLUSTERS; c++) {
      bool all_hole = true;

      for (uint64_t g = c * CS / GRAIN; g < (c + 1) * CS / GRAIN; g++)
        all_hole = all_hole && hole[g];
      if (!zero[c] || meta[c])
        model[c] = USED;
      else
        model[c] = all_hole && !status_fails ? CLEAN : STALE;
    }
    compare ();
    if (unit_failed () > 20)
      break;
  }
  status_fails = false;
  qcow2_space_forget (&img);
  REQUIRE (qcow2_metamap_set (&img, 0, CLUSTERS * CS, META_NONE) == 0);
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (random_operations),
  UNIT_ENTRY (first_fit_and_hint),
  UNIT_ENTRY (learn_runs),
};

int
main (int argc, char *argv[])
{
  UNIT_SELECT (argc, argv, cases);
  img.hdr.cluster_size = CS;
  pthread_mutex_init (&img.meta_lock, NULL);
  pthread_rwlock_init (&img.map_lock, NULL);
  UNIT_RUN (cases);
  qcow2_space_forget (&img);
  rangemap_clear (&img.space);
  rangemap_clear (&img.map);
  pthread_rwlock_destroy (&img.map_lock);
  pthread_mutex_destroy (&img.meta_lock);
  return unit_status ();
}
