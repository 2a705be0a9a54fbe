/* qcow2j lib: free space inside the image file.
 *
 * The clusters a write session may allocate without growing the file:
 * refcount 0, no metadata, not the journal.  Learnt once, when the
 * session is set up (one pass over the refcount blocks), then kept in
 * memory: the allocator takes from it, and the checkpoint gives back the
 * clusters whose free the journal's head has durably passed (rules R2 and
 * R3: never earlier).  Nothing here is on disk: a crash forgets it, and
 * the next session learns it again from the refcounts.
 *
 * Each free range is tagged with what it reads as after any crash:
 *
 *   clean  zeroes, or data written to it since it was taken: a hole in
 *          the file that a completed flush has made durable (section 1.3,
 *          M5).  Such a cluster is fresh in the sense of the one-flush
 *          commit (E2), exactly like space past the end of the file.
 *   stale  anything it held before: reusing it needs the two-flush
 *          commit and the whole cluster written.
 *
 * At set-up, free ranges that are holes in the host file are clean (the
 * set-up flushes before anything is allocated), the rest stale: data a
 * journal-unaware writer freed, or data written into fresh space by a
 * commit that a crash lost.  The checkpoint punches what it releases
 * and flushes, so that ranges freed in a session come back clean where
 * the host can punch (a block device that cannot guarantee zeroes gives
 * them back stale).
 *
 * Allocation is first fit, lowest offset first, as QEMU allocates: the
 * file stays compact, and what a clean close cuts off its end grows.  A
 * caller that knows where a neighbour lives passes it as a hint, so that
 * a guest writing a region in order gets it in order on the host.  Data
 * takes clean space first (the one-flush commit); see
 * qcow2_alloc_clusters for tables.  Each kind keeps a low mark below
 * which it has no range, so that the search is a bisection and a short
 * walk, not a scan of the whole map.
 *
 * Kept in a rangemap (rangemap.c says why a sorted array), capped at
 * MAX_RANGES ranges: a file whose free space is fragmented past that (a
 * hostile image, or churn over millions of clusters) has the rest of its
 * free space forgotten until the next session, which only costs growth,
 * never correctness.
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>

#include "format.h"
#include "log.h"
#include "metamap.h"
#include "minmax.h"
#include "space.h"

#define MAX_RANGES (1u << 16)   /* 1.5 MiB of ranges */

static void
add (struct qcow2_image *img, uint64_t start, uint64_t end,
     enum space_kind kind)
{
  if (start >= end || img->space.len + 2 > MAX_RANGES ||
      rangemap_set (&img->space, start, end, kind) == -1)
    return;
  img->space_low[kind - 1] = MIN (img->space_low[kind - 1], start);
  __atomic_add_fetch (&img->space_free, end - start, __ATOMIC_RELAXED);
}

void
qcow2_space_give (struct qcow2_image *img, uint64_t start, uint64_t len,
                  enum space_kind kind)
{
  ASSERT_META_LOCKED (img);
  assert (IS_ALIGNED (start | len, img->hdr.cluster_size));
  assert (rangemap_kind_at (&img->space, start) == 0);
  add (img, start, start + len, kind);
}

uint64_t
qcow2_space_free_bytes (struct qcow2_image *img)
{
  return __atomic_load_n (&img->space_free, __ATOMIC_RELAXED);
}

/* Remove [start, end) (free, of one kind or several) from the map. */
static int
cut (struct qcow2_image *img, uint64_t start, uint64_t end)
{
  if (rangemap_set (&img->space, start, end, 0) == -1)
    return -1;
  __atomic_sub_fetch (&img->space_free, end - start, __ATOMIC_RELAXED);
  return 0;
}

/* Is [start, end) free, and of which kind (0 if not all free; the
 * stalest kind if several)? */
static unsigned
free_kind (struct qcow2_image *img, uint64_t start, uint64_t end)
{
  size_t i = rangemap_first_after (&img->space, start);
  unsigned kind = SPACE_CLEAN;
  uint64_t pos = start;

  for (; pos < end && i < img->space.len && img->space.v[i].start <= pos;
       i++) {
    kind = MAX (kind, img->space.v[i].kind);
    pos = img->space.v[i].end;
  }
  return pos >= end ? kind : 0;
}

int
qcow2_space_take_at (struct qcow2_image *img, uint64_t start, uint64_t len)
{
  if (free_kind (img, start, start + len) == 0 ||
      cut (img, start, start + len) == -1)
    return 0;
  return 1;
}

/* First fit among ranges of one kind: the lowest range of that kind with
 * len bytes (scanning from the kind's low mark, below which it has no
 * range).  Its start, or UINT64_MAX. */
static uint64_t
first_fit (struct qcow2_image *img, uint64_t len, unsigned kind)
{
  const struct rangemap *m = &img->space;
  bool seen = false;

  for (size_t i = rangemap_first_after (m, img->space_low[kind - 1]);
       i < m->len; i++) {
    if (m->v[i].kind != kind)
      continue;
    if (!seen) {
      img->space_low[kind - 1] = m->v[i].start;
      seen = true;
    }
    if (m->v[i].end - m->v[i].start >= len)
      return m->v[i].start;
  }
  if (!seen)
    img->space_low[kind - 1] = UINT64_MAX;
  return UINT64_MAX;
}

int
qcow2_space_take (struct qcow2_image *img, uint64_t n, uint64_t hint,
                  bool prefer_clean, uint64_t *offset, bool *fresh)
{
  const uint64_t len = n * img->hdr.cluster_size;
  const unsigned first = prefer_clean ? SPACE_CLEAN : SPACE_STALE;
  unsigned kind;
  uint64_t at;

  ASSERT_META_LOCKED (img);
  /* The hint, if free and of the kind asked for first. */
  if (hint != 0 && (kind = free_kind (img, hint, hint + len)) == first &&
      cut (img, hint, hint + len) == 0) {
    at = hint;
    goto taken;
  }
  kind = first;
  at = first_fit (img, len, kind);
  if (at == UINT64_MAX) {
    kind = SPACE_CLEAN + SPACE_STALE - first;
    at = first_fit (img, len, kind);
  }
  /* Taking from the start of a range never needs memory. */
  if (at == UINT64_MAX || cut (img, at, at + len) == -1)
    return 0;
 taken:
  *offset = at;
  *fresh = kind == SPACE_CLEAN;
  return 1;
}

uint64_t
qcow2_space_free_tail (struct qcow2_image *img, uint64_t end)
{
  const struct rangemap *m = &img->space;
  size_t i;

  if (end == 0)
    return 0;
  i = rangemap_first_after (m, end - 1);
  if (i == m->len || m->v[i].start > end - 1 || m->v[i].end < end)
    return end;
  while (i > 0 && m->v[i - 1].end == m->v[i].start)
    i--;
  return m->v[i].start;
}

uint64_t
qcow2_space_clean_from (struct qcow2_image *img, uint64_t start)
{
  const struct rangemap *m = &img->space;
  size_t i = rangemap_first_after (m, start);

  if (i == m->len || m->v[i].start != start || m->v[i].kind != SPACE_CLEAN)
    return start;
  return m->v[i].end;
}

/* Learning ---------------------------------------------------------------- */

/* A run of free clusters without metadata: clean where the host file has
 * a hole over whole clusters. */
static void
add_classified (struct qcow2_image *img, uint64_t start, uint64_t end)
{
  const uint64_t cs = img->hdr.cluster_size;

  while (start < end) {
    bool is_data;
    uint64_t run, hole_start, hole_end;

    if (hostio_block_status (img->file, start, end - start, &is_data,
                             &run) == -1 || run == 0) {
      add (img, start, end, SPACE_STALE);
      return;
    }
    run = MIN (run, end - start);
    if (is_data)
      add (img, start, start + run, SPACE_STALE);
    else {
      /* Partial clusters at either end of the hole are stale. */
      hole_start = ROUND_UP (start, cs);
      hole_end = ROUND_DOWN (start + run, cs);
      if (hole_start < hole_end) {
        add (img, start, hole_start, SPACE_STALE);
        add (img, hole_start, hole_end, SPACE_CLEAN);
        add (img, hole_end, start + run, SPACE_STALE);
      }
      else
        add (img, start, start + run, SPACE_STALE);
    }
    start += run;
  }
}

int
qcow2_space_learn_run (struct qcow2_image *img, uint64_t start, uint64_t len,
                       void *opaque)
{
  uint64_t end = start + len, from, to;

  while (qcow2_metamap_next_gap (img, start, end, &from, &to)) {
    add_classified (img, from, to);
    start = to;
  }
  return 0;
}

void
qcow2_space_forget (struct qcow2_image *img)
{
  rangemap_clear (&img->space);
  __atomic_store_n (&img->space_free, 0, __ATOMIC_RELAXED);
  img->space_low[0] = img->space_low[1] = 0;
}
