/* qcow2j lib: guest clusters being allocated, one change at a time.
 *
 * An allocating write does its data I/O without meta_lock (so that
 * allocations of different clusters overlap), yet two changes of one
 * guest cluster must not interleave: the second would plan from an entry
 * the first is about to replace.  So a change marks its guest cluster in
 * flight for its whole length, and another change of the same cluster
 * waits.  Few clusters are ever in flight at once (one per request being
 * served), so a small array is searched.
 */
#include <config.h>

#include <stdlib.h>

#include "inflight.h"

void
qcow2_cluster_lock (struct qcow2_image *img, uint64_t cluster)
{
  ASSERT_META_LOCKED (img);
  for (;;) {
    bool busy = false;

    for (size_t i = 0; i < img->nr_inflight; i++)
      busy |= img->inflight[i] == cluster;
    if (!busy)
      break;
    qcow2_meta_wait (img, &img->inflight_done);
  }
  if (img->nr_inflight == img->cap_inflight) {
    size_t cap = img->cap_inflight ? img->cap_inflight * 2 : 64;
    uint64_t *v = realloc (img->inflight, cap * sizeof *v);
    if (v == NULL)
      abort ();                 /* a few bytes; nothing sane to do */
    img->inflight = v;
    img->cap_inflight = cap;
  }
  img->inflight[img->nr_inflight++] = cluster;
}

void
qcow2_cluster_unlock (struct qcow2_image *img, uint64_t cluster)
{
  size_t i;

  ASSERT_META_LOCKED (img);
  for (i = 0; i < img->nr_inflight; i++)
    if (img->inflight[i] == cluster)
      break;
  assert (i < img->nr_inflight);
  img->inflight[i] = img->inflight[--img->nr_inflight];
  pthread_cond_broadcast (&img->inflight_done);
}
