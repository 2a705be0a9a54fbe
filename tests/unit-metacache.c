/* Unit tests of the L2 slice cache: hits, misses, clock eviction, bounded
 * size, and many threads reading at once (run it under TSan). */
#include <config.h>

#include <pthread.h>

#include "byteorder.h"
#include "mem-io.h"
#include "metacache.h"
#include "unit.h"

#define SLICE 4096
#define NR_SLICES 256

static struct mem_io *m;
static struct mcache *cache;

static void
fill (void)
{
  m = mem_io_new ("l2", NR_SLICES * SLICE);
  for (unsigned s = 0; s < NR_SLICES; s++)
    for (unsigned i = 0; i < SLICE / 8; i++)
      put_be64 (m->data + s * SLICE + i * 8, (uint64_t) s << 32 | i);
}

static void
check_entry (const void *owner, unsigned s, unsigned i)
{
  uint8_t out[8], want[8];

  CHECK (mcache_read (cache, &m->io, owner, (uint64_t) s * SLICE, SLICE,
                       i * 8, 8, out) == 0);
  put_be64 (want, (uint64_t) s << 32 | i);
  CHECK (memcmp (out, want, 8) == 0);
}

static void *
reader (void *arg)
{
  unsigned seed = (uintptr_t) arg;

  for (int n = 0; n < 20000; n++) {
    seed = seed * 1103515245 + 12345;
    check_entry (m, (seed >> 8) % NR_SLICES, (seed >> 4) % (SLICE / 8));
  }
  return NULL;
}

/* Large cache: one miss per slice, then only hits. */
UNIT_CASE (hits)
{
  struct mcache_stats st;

  fill ();
  cache = mcache_new (64 << 20);
  REQUIRE (cache != NULL);
  for (unsigned s = 0; s < NR_SLICES; s++)
    check_entry (m, s, s % 512);
  CHECK (m->reads == NR_SLICES);
  for (unsigned s = 0; s < NR_SLICES; s++)
    check_entry (m, s, 511 - s % 512);
  CHECK (m->reads == NR_SLICES);
  /* A different owner is a different key. */
  check_entry (cache, 0, 0);
  CHECK (m->reads == NR_SLICES + 1);
  /* Smaller slices (512-byte clusters) share the cache. */
  {
    uint8_t out[8];
    CHECK (mcache_read (cache, &m->io, &fill, 512, 512, 8, 8, out) == 0);
    CHECK (out[7] == 65);       /* entry 65 of slice 0 */
  }
  mcache_stats (cache, &st);
  CHECK (st.evictions == 0);
  mcache_free (cache);
  m->io.ops->close (&m->io);
}

/* The smallest cache (4 slots in each of 16 shards) must stay bounded
 * and still return right answers while evicting, also to parallel
 * readers. */
UNIT_CASE (eviction)
{
  struct mcache_stats st;
  pthread_t threads[4];

  fill ();
  cache = mcache_new (0);
  REQUIRE (cache != NULL);
  for (int pass = 0; pass < 3; pass++)
    for (unsigned s = 0; s < NR_SLICES; s++)
      check_entry (m, s, 7);
  mcache_stats (cache, &st);
  CHECK (st.slices <= 64);
  CHECK (st.evictions > 0);

  /* Parallel readers over the small cache. */
  for (uintptr_t t = 0; t < 4; t++)
    REQUIRE (pthread_create (&threads[t], NULL, reader, (void *) (t + 1)) == 0);
  for (int t = 0; t < 4; t++)
    CHECK (pthread_join (threads[t], NULL) == 0);
  mcache_free (cache);
  m->io.ops->close (&m->io);
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (hits),
  UNIT_ENTRY (eviction),
};

UNIT_MAIN (cases)
