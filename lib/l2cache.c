/* qcow2j lib: sharded L2 slice cache (see l2cache.h for the design). */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "l2cache.h"
#include "log.h"

#define NR_SHARDS 16
#define MIN_SLOTS_PER_SHARD 4
#define NO_SLOT UINT32_MAX

struct slot {
  const void *owner;            /* NULL: slot never used */
  uint64_t offset;
  uint32_t next;                /* hash chain */
  bool referenced;              /* clock bit: used since the hand passed */
  uint8_t *data;                /* L2CACHE_MAX_SLICE bytes, allocated on first use */
};

struct shard {
  pthread_mutex_t lock;
  struct slot *slots;
  uint32_t nr_slots, used, hand;
  uint32_t *buckets;            /* heads of hash chains */
  uint32_t bucket_mask;
  uint64_t hits, misses, evictions;
};

struct l2cache {
  struct shard shards[NR_SHARDS];
};

static uint64_t
hash_key (const void *owner, uint64_t offset)
{
  uint64_t h = (uint64_t) (uintptr_t) owner ^ (offset * 0x9e3779b97f4a7c15ULL);

  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 32;
  return h;
}

struct l2cache *
l2cache_new (uint64_t bytes)
{
  struct l2cache *c;
  uint64_t per_shard;
  uint32_t nbuckets;

  per_shard = bytes / L2CACHE_MAX_SLICE / NR_SHARDS;
  if (per_shard < MIN_SLOTS_PER_SHARD)
    per_shard = MIN_SLOTS_PER_SHARD;
  if (per_shard > (1u << 24))
    per_shard = 1u << 24;
  for (nbuckets = 1; nbuckets < per_shard * 2; nbuckets <<= 1)
    ;

  c = calloc (1, sizeof *c);
  if (c == NULL)
    goto nomem;
  for (int i = 0; i < NR_SHARDS; i++) {
    struct shard *s = &c->shards[i];

    pthread_mutex_init (&s->lock, NULL);
    s->nr_slots = per_shard;
    s->slots = calloc (per_shard, sizeof *s->slots);
    s->buckets = malloc (nbuckets * sizeof *s->buckets);
    s->bucket_mask = nbuckets - 1;
    if (s->slots == NULL || s->buckets == NULL) {
      l2cache_free (c);
      goto nomem;
    }
    for (uint32_t b = 0; b < nbuckets; b++)
      s->buckets[b] = NO_SLOT;
  }
  return c;

 nomem:
  qerror ("l2 cache: calloc: %m");
  errno = ENOMEM;
  return NULL;
}

void
l2cache_free (struct l2cache *c)
{
  if (c == NULL)
    return;
  for (int i = 0; i < NR_SHARDS; i++) {
    struct shard *s = &c->shards[i];

    if (s->slots)
      for (uint32_t j = 0; j < s->nr_slots; j++)
        free (s->slots[j].data);
    free (s->slots);
    free (s->buckets);
    pthread_mutex_destroy (&s->lock);
  }
  free (c);
}

/* Under s->lock. */
static struct slot *
lookup (struct shard *s, uint64_t h, const void *owner, uint64_t offset)
{
  for (uint32_t i = s->buckets[h & s->bucket_mask]; i != NO_SLOT;
       i = s->slots[i].next)
    if (s->slots[i].owner == owner && s->slots[i].offset == offset)
      return &s->slots[i];
  return NULL;
}

/* Under s->lock: a slot for a new slice, evicting by the clock if full.
 * Returns NULL only when out of memory. */
static struct slot *
take_slot (struct shard *s)
{
  struct slot *slot;
  uint32_t *link;

  if (s->used < s->nr_slots) {
    slot = &s->slots[s->used];
    slot->data = malloc (L2CACHE_MAX_SLICE);
    if (slot->data == NULL)
      return NULL;
    s->used++;
    return slot;
  }

  for (;;) {
    slot = &s->slots[s->hand];
    s->hand = (s->hand + 1) % s->nr_slots;
    if (!slot->referenced)
      break;
    slot->referenced = false;
  }
  /* Unlink the victim from its hash chain. */
  link = &s->buckets[hash_key (slot->owner, slot->offset) & s->bucket_mask];
  while (&s->slots[*link] != slot)
    link = &s->slots[*link].next;
  *link = slot->next;
  s->evictions++;
  return slot;
}

int
l2cache_read (struct l2cache *c, struct hostio *io, const void *owner,
              uint64_t slice_offset, unsigned slice_size, unsigned start,
              unsigned count, void *out)
{
  uint64_t h = hash_key (owner, slice_offset);
  struct shard *s = &c->shards[(h >> 56) % NR_SHARDS];
  uint8_t buf[L2CACHE_MAX_SLICE];

  assert (owner != NULL);
  assert (slice_size > 0 && slice_size <= L2CACHE_MAX_SLICE &&
          (slice_size & (slice_size - 1)) == 0);
  assert (start + count <= slice_size);

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
    struct slot *slot = lookup (s, h, owner, slice_offset);
    if (slot) {
      slot->referenced = true;
      s->hits++;
      memcpy (out, slot->data + start, count);
      return 0;
    }
    s->misses++;
  }

  /* Miss: read without holding the lock. */
  if (hostio_pread (io, buf, slice_size, slice_offset) == -1)
    return -1;
  memcpy (out, buf + start, count);

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
    struct slot *slot;

    if (lookup (s, h, owner, slice_offset) != NULL)
      return 0;                 /* another reader inserted it meanwhile */
    slot = take_slot (s);
    if (slot == NULL)
      return 0;                 /* out of memory: serve uncached */
    memcpy (slot->data, buf, slice_size);
    slot->owner = owner;
    slot->offset = slice_offset;
    slot->referenced = true;
    slot->next = s->buckets[h & s->bucket_mask];
    s->buckets[h & s->bucket_mask] = slot - s->slots;
  }
  return 0;
}

void
l2cache_stats (struct l2cache *c, struct l2cache_stats *stats)
{
  memset (stats, 0, sizeof *stats);
  for (int i = 0; i < NR_SHARDS; i++) {
    struct shard *s = &c->shards[i];
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);

    stats->hits += s->hits;
    stats->misses += s->misses;
    stats->evictions += s->evictions;
    stats->slices += s->used;
  }
}
