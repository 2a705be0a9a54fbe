/* qcow2j lib: the sharded metadata cache (see metacache.h for the design
 * and the meaning of live, sealed and committed slices). */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "cleanup.h"
#include "log.h"
#include "metacache.h"

#define NR_SHARDS 16
#define MIN_SLOTS_PER_SHARD 4
#define NO_SLOT UINT32_MAX

struct slot {
  const void *owner;            /* NULL: slot never used */
  uint64_t offset;
  uint32_t next;                /* hash chain */
  unsigned size;                /* bytes of the slice */
  bool referenced;              /* clock bit: used since the hand passed */
  bool forgotten;               /* mcache_forget: never found again, the
                                   first the clock evicts */
  bool modified;                /* live changed since the last seal */
  uint8_t *data;                /* live bytes (MCACHE_MAX_SLICE allocated) */
  uint8_t *sealed;              /* at the last seal, if changed before it */
  uint8_t *committed;           /* durable, not yet written in place */
  uint8_t *spare;               /* allocated at the first change, so that
                                   sealing never allocates */
  uint64_t version;             /* bumped when committed changes */
};

/* A list of slot indices, with room for every slot of the shard (so that
 * adding never fails once a shard exists). */
struct list {
  uint32_t *v;
  size_t n;
};

struct shard {
  pthread_mutex_t lock;
  struct slot *slots;
  uint32_t nr_slots, used, hand;
  uint32_t *buckets;            /* heads of hash chains */
  uint32_t bucket_mask;
  struct list modified;         /* slots with modified set */
  struct list sealed;           /* slots with a sealed copy */
  struct list committed;        /* slots with a committed copy */
  uint64_t hits, misses, evictions;
};

struct mcache {
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

static struct shard *
shard_of (struct mcache *c, uint64_t h)
{
  return &c->shards[(h >> 56) % NR_SHARDS];
}

static void
list_add (struct list *l, uint32_t i)
{
  l->v[l->n++] = i;
}

/* Give the shard's lists room for n slots. */
static int
lists_reserve (struct shard *s, uint32_t n)
{
  struct list *lists[] = { &s->modified, &s->sealed, &s->committed };

  for (int i = 0; i < 3; i++) {
    uint32_t *v = realloc (lists[i]->v, n * sizeof *v);
    if (v == NULL)
      return -1;
    lists[i]->v = v;
  }
  return 0;
}

static bool
pinned (const struct slot *s)
{
  return s->modified || s->sealed || s->committed;
}

struct mcache *
mcache_new (uint64_t bytes)
{
  struct mcache *c;
  uint64_t per_shard;
  uint32_t nbuckets;

  per_shard = bytes / MCACHE_MAX_SLICE / NR_SHARDS;
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
    if (s->slots == NULL || s->buckets == NULL ||
        lists_reserve (s, per_shard) == -1) {
      mcache_free (c);
      goto nomem;
    }
    for (uint32_t b = 0; b < nbuckets; b++)
      s->buckets[b] = NO_SLOT;
  }
  return c;

 nomem:
  qerror ("metadata cache: calloc: %m");
  errno = ENOMEM;
  return NULL;
}

void
mcache_free (struct mcache *c)
{
  if (c == NULL)
    return;
  for (int i = 0; i < NR_SHARDS; i++) {
    struct shard *s = &c->shards[i];

    if (s->slots)
      for (uint32_t j = 0; j < s->used; j++) {
        free (s->slots[j].data);
        free (s->slots[j].sealed);
        free (s->slots[j].committed);
        free (s->slots[j].spare);
      }
    free (s->slots);
    free (s->buckets);
    free (s->modified.v);
    free (s->sealed.v);
    free (s->committed.v);
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
    if (s->slots[i].owner == owner && s->slots[i].offset == offset &&
        !s->slots[i].forgotten)
      return &s->slots[i];
  return NULL;
}

/* Under s->lock: a slot for a new slice, evicting a clean slice by the
 * clock, or growing the shard when every slice is pinned.  NULL only when
 * out of memory. */
static struct slot *
take_slot (struct shard *s)
{
  struct slot *slot;
  uint32_t *link;

  if (s->used == s->nr_slots) {
    /* Two turns of the clock find a clean slice if there is one. */
    for (uint32_t n = 0; n < 2 * s->nr_slots; n++) {
      slot = &s->slots[s->hand];
      s->hand = (s->hand + 1) % s->nr_slots;
      if (pinned (slot))
        continue;
      if (slot->referenced) {
        slot->referenced = false;
        continue;
      }
      link = &s->buckets[hash_key (slot->owner, slot->offset) & s->bucket_mask];
      while (&s->slots[*link] != slot)
        link = &s->slots[*link].next;
      *link = slot->next;
      s->evictions++;
      return slot;
    }
    /* All pinned: grow (indices stay valid). */
    {
      uint32_t n = s->nr_slots * 2;
      struct slot *v;

      if (lists_reserve (s, n) == -1)
        return NULL;
      v = realloc (s->slots, n * sizeof *v);
      if (v == NULL)
        return NULL;
      memset (v + s->nr_slots, 0, (n - s->nr_slots) * sizeof *v);
      s->slots = v;
      s->nr_slots = n;
    }
  }
  slot = &s->slots[s->used];
  slot->data = malloc (MCACHE_MAX_SLICE);
  if (slot->data == NULL)
    return NULL;
  s->used++;
  return slot;
}

/* Under s->lock: insert a slice read as buf.  NULL if out of memory. */
static struct slot *
insert (struct shard *s, uint64_t h, const void *owner, uint64_t offset,
        unsigned size, const uint8_t *buf)
{
  struct slot *slot = take_slot (s);

  if (slot == NULL)
    return NULL;
  memcpy (slot->data, buf, size);
  slot->forgotten = false;
  slot->owner = owner;
  slot->offset = offset;
  slot->size = size;
  slot->referenced = true;
  slot->next = s->buckets[h & s->bucket_mask];
  s->buckets[h & s->bucket_mask] = slot - s->slots;
  return slot;
}

int
mcache_read (struct mcache *c, struct hostio *io, const void *owner,
             uint64_t slice_offset, unsigned slice_size, unsigned start,
             unsigned count, void *out)
{
  uint64_t h = hash_key (owner, slice_offset);
  struct shard *s = shard_of (c, h);
  uint8_t buf[MCACHE_MAX_SLICE];
  uint64_t evictions;

  assert (owner != NULL);
  assert (slice_size > 0 && slice_size <= MCACHE_MAX_SLICE &&
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
    evictions = s->evictions;
  }

  /* Miss: read without holding the lock. */
  if (hostio_pread (io, buf, slice_size, slice_offset) == -1)
    return -1;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
    struct slot *slot = lookup (s, h, owner, slice_offset);

    /* Another thread may have inserted (and even changed) it meanwhile:
     * its bytes are the newer ones.  And if the shard evicted anything
     * during the read, this very slice may have been changed, written
     * back and evicted, and the bytes read may predate that: answer
     * with them (this read was concurrent with the change) but do not
     * cache them. */
    if (slot)
      memcpy (buf, slot->data, slice_size);
    else if (s->evictions == evictions)
      insert (s, h, owner, slice_offset, slice_size, buf);
  }
  memcpy (out, buf + start, count);
  return 0;
}

int
mcache_write (struct mcache *c, struct hostio *io, const void *owner,
              uint64_t slice_offset, unsigned slice_size, unsigned start,
              unsigned count, const void *in)
{
  uint64_t h = hash_key (owner, slice_offset);
  struct shard *s = shard_of (c, h);
  uint8_t buf[MCACHE_MAX_SLICE];
  bool have = false;

  assert (start + count <= slice_size && slice_size <= MCACHE_MAX_SLICE);
  for (;;) {
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
      struct slot *slot = lookup (s, h, owner, slice_offset);

      if (slot == NULL && have) {
        slot = insert (s, h, owner, slice_offset, slice_size, buf);
        if (slot == NULL) {
          qerror ("metadata cache: %m");
          errno = ENOMEM;
          return -1;
        }
      }
      if (slot) {
        if (!slot->modified) {
          if (slot->spare == NULL &&
              (slot->spare = malloc (MCACHE_MAX_SLICE)) == NULL) {
            qerror ("metadata cache: %m");
            errno = ENOMEM;
            return -1;
          }
          list_add (&s->modified, slot - s->slots);
        }
        memcpy (slot->data + start, in, count);
        slot->modified = true;
        slot->referenced = true;
        return 0;
      }
    }
    /* Not cached: read it unlocked, then try again. */
    if (hostio_pread (io, buf, slice_size, slice_offset) == -1)
      return -1;
    have = true;
  }
}

void
mcache_seal (struct mcache *c)
{
  for (int i = 0; i < NR_SHARDS; i++) {
    struct shard *s = &c->shards[i];
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);

    for (size_t k = 0; k < s->modified.n; k++) {
      struct slot *slot = &s->slots[s->modified.v[k]];

      /* Seals and durables alternate: nothing can be sealed already. */
      assert (slot->modified && slot->sealed == NULL && slot->spare);
      slot->sealed = slot->spare;
      slot->spare = NULL;
      memcpy (slot->sealed, slot->data, slot->size);
      slot->modified = false;
      list_add (&s->sealed, s->modified.v[k]);
    }
    s->modified.n = 0;
  }
}

void
mcache_durable (struct mcache *c)
{
  for (int i = 0; i < NR_SHARDS; i++) {
    struct shard *s = &c->shards[i];
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);

    for (size_t k = 0; k < s->sealed.n; k++) {
      struct slot *slot = &s->slots[s->sealed.v[k]];

      if (slot->committed == NULL)
        list_add (&s->committed, s->sealed.v[k]);
      else if (slot->spare == NULL)
        slot->spare = slot->committed;
      else
        free (slot->committed);
      slot->committed = slot->sealed;
      slot->sealed = NULL;
      slot->version++;
    }
    s->sealed.n = 0;
  }
}

ssize_t
mcache_collect (struct mcache *c, const void *owner, struct mcache_dirty **out)
{
  struct mcache_dirty *v = NULL;
  size_t n = 0, cap = 0;

  for (int i = 0; i < NR_SHARDS; i++) {
    struct shard *s = &c->shards[i];
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);

    for (size_t k = 0; k < s->committed.n; k++) {
      struct slot *slot = &s->slots[s->committed.v[k]];

      if (slot->owner != owner)
        continue;
      if (n == cap) {
        size_t ncap = cap ? cap * 2 : 16;
        struct mcache_dirty *nv = realloc (v, ncap * sizeof *nv);
        if (nv == NULL) {
          free (v);
          errno = ENOMEM;
          return -1;
        }
        v = nv;
        cap = ncap;
      }
      v[n].owner = owner;
      v[n].offset = slot->offset;
      v[n].size = slot->size;
      v[n].version = slot->version;
      memcpy (v[n].data, slot->committed, slot->size);
      n++;
    }
  }
  *out = v;
  return n;
}

void
mcache_cleaned (struct mcache *c, const struct mcache_dirty *d)
{
  uint64_t h = hash_key (d->owner, d->offset);
  struct shard *s = shard_of (c, h);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
  struct slot *slot = lookup (s, h, d->owner, d->offset);
  size_t n = 0;

  if (slot == NULL || slot->committed == NULL || slot->version != d->version)
    return;
  if (slot->spare == NULL)
    slot->spare = slot->committed;
  else
    free (slot->committed);
  slot->committed = NULL;
  for (size_t k = 0; k < s->committed.n; k++)
    if (&s->slots[s->committed.v[k]] != slot)
      s->committed.v[n++] = s->committed.v[k];
  s->committed.n = n;
}

void
mcache_forget (struct mcache *c, const void *owner, uint64_t offset,
               uint64_t len, unsigned slice_size)
{
  for (uint64_t o = offset; o < offset + len; o += slice_size) {
    uint64_t h = hash_key (owner, o);
    struct shard *s = shard_of (c, h);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
    struct slot *slot = lookup (s, h, owner, o);

    if (slot == NULL)
      continue;
    assert (!pinned (slot));
    /* Left in its hash chain, where the clock finds it to evict it. */
    slot->forgotten = true;
    slot->referenced = false;
  }
}

void
mcache_forget_owner (struct mcache *c, const void *owner)
{
  for (int i = 0; i < NR_SHARDS; i++) {
    struct shard *s = &c->shards[i];
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);

    for (uint32_t k = 0; k < s->used; k++) {
      struct slot *slot = &s->slots[k];

      if (slot->owner != owner)
        continue;
      assert (!pinned (slot));
      slot->forgotten = true;
      slot->referenced = false;
    }
  }
}

void
mcache_stats (struct mcache *c, struct mcache_stats *stats)
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
