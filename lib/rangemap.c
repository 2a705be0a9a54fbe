/* qcow2j lib: a sorted array of disjoint, tagged ranges.
 *
 * The bookkeeping under the metadata map (metamap.c: which clusters hold
 * which metadata) and the free-space map (space.c: which clusters are
 * free, and whether they read as zeroes).  Both are asked on every
 * request and changed far less often, and both stay small for the images
 * a server meets (a few extents per table or per run of free space), so
 * a sorted array searched by bisection does better than a tree: a lookup
 * touches log2(n) cache lines and no pointers, and a change costs one
 * memmove of the tail, which for a few thousand ranges is cheaper than
 * the metadata write that comes with it.  Where a map could grow without
 * bound (free space fragmented by a hostile image), its owner caps it.
 * A library tree (glib's GTree, Judy arrays) or a bitmap of clusters was
 * considered: a tree costs a pointer chase per level and an allocation
 * per range, and would add a dependency; a bitmap costs one bit per
 * cluster of the file whether free or not (256 MiB for a 1 TiB file of
 * 512-byte clusters) and a scan to find a run.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "minmax.h"
#include "rangemap.h"

size_t
rangemap_first_after (const struct rangemap *m, uint64_t offset)
{
  size_t lo = 0, hi = m->len;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;

    if (m->v[mid].end <= offset)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

unsigned
rangemap_kind_at (const struct rangemap *m, uint64_t offset)
{
  size_t i = rangemap_first_after (m, offset);

  return i < m->len && m->v[i].start <= offset ? m->v[i].kind : 0;
}

/* Room for two more ranges: a change splits at most one range in two and
 * adds one. */
static int
reserve (struct rangemap *m)
{
  struct range *v;
  size_t cap;

  if (m->len + 2 <= m->cap)
    return 0;
  cap = MAX (m->cap * 2, (size_t) 64);
  v = realloc (m->v, cap * sizeof *v);
  if (v == NULL) {
    errno = ENOMEM;
    return -1;
  }
  m->v = v;
  m->cap = cap;
  return 0;
}

int
rangemap_set (struct rangemap *m, uint64_t start, uint64_t end,
              unsigned kind)
{
  struct range *v;
  size_t i, j;

  if (start >= end)
    return 0;
  if (reserve (m) == -1)
    return -1;
  v = m->v;
  /* Cut [start, end) out of what is there: ranges i to j-1 overlap it. */
  i = rangemap_first_after (m, start);
  if (i < m->len && v[i].start < start && v[i].end > end) {
    /* One range holds the whole of it: split that range. */
    memmove (&v[i + 3], &v[i + 1], (m->len - i - 1) * sizeof *v);
    v[i + 2] = v[i];
    v[i + 2].start = end;
    v[i].end = start;
    m->len += 2;
    v[i + 1] = (struct range) { start, start, 0 };
    i++;
    j = i + 1;
  }
  else {
    if (i < m->len && v[i].start < start) {
      v[i].end = start;
      i++;
    }
    for (j = i; j < m->len && v[j].end <= end; j++)
      ;
    if (j < m->len && v[j].start < end)
      v[j].start = end;
  }
  /* Now ranges i to j-1 lie inside [start, end): replace them by one. */
  if (kind == 0) {
    memmove (&v[i], &v[j], (m->len - j) * sizeof *v);
    m->len -= j - i;
    return 0;
  }
  if (j == i) {
    memmove (&v[i + 1], &v[i], (m->len - i) * sizeof *v);
    m->len++;
    j = i + 1;
  }
  v[i] = (struct range) { start, end, kind };
  memmove (&v[i + 1], &v[j], (m->len - j) * sizeof *v);
  m->len -= j - i - 1;
  /* Merge with neighbours of the same kind. */
  if (i + 1 < m->len && v[i + 1].start == end && v[i + 1].kind == kind) {
    v[i].end = v[i + 1].end;
    memmove (&v[i + 1], &v[i + 2], (m->len - i - 2) * sizeof *v);
    m->len--;
  }
  if (i > 0 && v[i - 1].end == start && v[i - 1].kind == kind) {
    v[i - 1].end = v[i].end;
    memmove (&v[i], &v[i + 1], (m->len - i - 1) * sizeof *v);
    m->len--;
  }
  return 0;
}

void
rangemap_clear (struct rangemap *m)
{
  free (m->v);
  m->v = NULL;
  m->len = m->cap = 0;
}
