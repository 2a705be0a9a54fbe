/* qcow2j lib: the metadata cache of L2 table slices.
 *
 * L2 tables are read in slices of at most 4 KiB (512 standard entries), not
 * whole clusters: with 2 MiB clusters a whole table is 2 MiB, and a random
 * 4 KiB read should not cost that.  The cache is bounded in bytes (the
 * plugin's l2-cache-size, default 32 MiB like QEMU's cap, which covers a
 * 256 GiB image of 64 KiB clusters whole), filled lazily, and shared by
 * every image of a backing chain so that the bound is global.
 *
 * It is split into shards, each with its own mutex, hash table and clock
 * (second-chance) eviction, so that parallel readers rarely meet on a
 * lock, and no lock is ever held across host I/O: a miss reads the slice
 * unlocked, then inserts it unless another thread got there first.
 */
#ifndef QCOW2J_L2CACHE_H
#define QCOW2J_L2CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "hostio.h"

#define L2CACHE_MAX_SLICE 4096

struct l2cache;

/* A cache of at most 'bytes' bytes of slices (each slot holds up to
 * L2CACHE_MAX_SLICE bytes).  NULL and errno on error. */
extern struct l2cache *l2cache_new (uint64_t bytes);
extern void l2cache_free (struct l2cache *c);

/* Copy 'count' bytes at byte 'start' of the slice of slice_size bytes (a
 * power of two up to L2CACHE_MAX_SLICE, fixed per owner) at host offset
 * slice_offset of io into out, reading the slice from io on a miss.
 * 'owner' tells apart the files of a chain (any unique pointer).  The
 * slice must lie wholly in one cluster.  Returns 0, or -1 with errno set
 * after a failed read (not reported: the caller knows the context). */
extern int l2cache_read (struct l2cache *c, struct hostio *io,
                         const void *owner, uint64_t slice_offset,
                         unsigned slice_size, unsigned start, unsigned count, void *out);

struct l2cache_stats {
  uint64_t hits, misses, evictions, slices;
};
extern void l2cache_stats (struct l2cache *c, struct l2cache_stats *stats);

#endif /* QCOW2J_L2CACHE_H */
