/* Unit tests of the metadata map (lib/metamap.c): random changes checked
 * against a model that keeps one kind per cluster, so that splitting,
 * cutting and merging extents can never lose or invent metadata. */
#include <config.h>

#include <pthread.h>

#include "metamap.h"
#include "unit.h"

#define CS 512
#define CLUSTERS 300

static enum meta_kind model[CLUSTERS];

static void
compare (struct qcow2_image *img)
{
  /* Disjoint, sorted, cluster aligned, no two neighbours of one kind. */
  for (size_t i = 0; i < img->map.len; i++) {
    const struct range *e = &img->map.v[i];

    CHECK (e->start < e->end && e->start % CS == 0 && e->end % CS == 0);
    CHECK (e->kind != META_NONE);
    if (i > 0)
      CHECK (img->map.v[i - 1].end < e->start ||
             (img->map.v[i - 1].end == e->start &&
              img->map.v[i - 1].kind != e->kind));
  }
  for (uint64_t c = 0; c < CLUSTERS; c++) {
    uint64_t where = 0;
    enum meta_kind k = qcow2_metamap_find (img, c * CS + 7, 1, &where);

    CHECK (k == model[c]);
    if (k != META_NONE)
      CHECK (where == c * CS);
  }
}

static struct hostio io = { .name = (char *) "image" };
static struct qcow2_image img = { .file = &io };

UNIT_CASE (random_changes)
{
  uint64_t seed = 42;

  for (int round = 0; round < 20000; round++) {
    uint64_t first, n;
    enum meta_kind kind;

    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    first = (seed >> 33) % CLUSTERS;
    n = 1 + (seed >> 20) % (round % 3 ? 4 : 40);
    if (first + n > CLUSTERS)
      n = CLUSTERS - first;
    /* Few kinds, so that merging happens often; NONE a third of the
     * time. */
    kind = (seed >> 8) % 3 == 0 ? META_NONE
      : (enum meta_kind) (1 + (seed >> 12) % 3);
    /* Unaligned bounds cover whole clusters. */
    REQUIRE (qcow2_metamap_set (&img, first * CS + (seed >> 4) % CS,
                                n * CS - CS + 1, kind) == 0);
    for (uint64_t c = first; c < first + n; c++)
      model[c] = kind;
    compare (&img);
  }
}

/* A range lookup reports the first cluster that holds metadata. */
UNIT_CASE (range_lookup)
{
  uint64_t where;

  CHECK (qcow2_metamap_set (&img, 0, CLUSTERS * CS, META_NONE) == 0);
  CHECK (img.map.len == 0);
  CHECK (qcow2_metamap_set (&img, 10 * CS, 2 * CS, META_L2) == 0);
  CHECK (qcow2_metamap_find (&img, 3 * CS, 20 * CS, &where) == META_L2 &&
         where == 10 * CS);
  CHECK (qcow2_metamap_find (&img, 12 * CS, 20 * CS, &where) == META_NONE);
  CHECK (qcow2_metamap_is_table (&img, 10 * CS + 8, 64));
  CHECK (!qcow2_metamap_is_table (&img, 11 * CS, 2 * CS));
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (random_changes),
  UNIT_ENTRY (range_lookup),
};

int
main (int argc, char *argv[])
{
  UNIT_SELECT (argc, argv, cases);
  img.hdr.cluster_size = CS;
  pthread_rwlock_init (&img.map_lock, NULL);
  UNIT_RUN (cases);
  rangemap_clear (&img.map);
  pthread_rwlock_destroy (&img.map_lock);
  return unit_status ();
}
