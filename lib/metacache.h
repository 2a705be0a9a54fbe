/* qcow2j lib: the metadata cache: slices of L2 tables and refcount blocks,
 * and the pages of the L1 table, the refcount table and the header that
 * the write path changes.
 *
 * Slices are at most 4 KiB (512 standard L2 entries), not whole clusters:
 * with 2 MiB clusters a whole table is 2 MiB, and a random 4 KiB read
 * should not cost that.  The cache is bounded in bytes (the plugin's
 * l2-cache-size, default 32 MiB like QEMU's cap, which covers a 256 GiB
 * image of 64 KiB clusters whole), filled lazily, and shared by every
 * image of a backing chain so that the bound is global.  It is split into
 * shards, each with its own mutex, hash table and clock eviction, so that
 * parallel readers rarely meet on a lock; no lock is held across host I/O.
 *
 * Changes (mcache_write) go to a slice's live bytes, which every read sees
 * at once.  The journal's rule R1 says a checkpoint may write in place only
 * committed state, so each changed slice also keeps, until the checkpoint
 * has written it:
 *   sealed     a copy taken when the transaction holding its latest change
 *              was sealed (mcache_seal, called from the journal as it seals
 *              a transaction, when no change is half made);
 *   committed  that copy, once the transaction is durable (mcache_durable).
 * A slice with live changes not yet checkpointed is never evicted (the
 * bound is then exceeded until the next checkpoint).
 */
#ifndef QCOW2J_METACACHE_H
#define QCOW2J_METACACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "hostio.h"

#define MCACHE_MAX_SLICE 4096

struct mcache;

/* A cache of about 'bytes' bytes (each slot holds up to MCACHE_MAX_SLICE
 * bytes).  NULL and errno on error. */
extern struct mcache *mcache_new (uint64_t bytes);
extern void mcache_free (struct mcache *c);

/* Copy 'count' bytes at byte 'start' of the slice of slice_size bytes (a
 * power of two up to MCACHE_MAX_SLICE, fixed per owner) at host offset
 * slice_offset of io into out, reading the slice from io on a miss.
 * 'owner' tells apart the files of a chain (any unique pointer).  The
 * slice must lie wholly in one cluster.  Returns 0, or -1 with errno set
 * after a failed read (not reported: the caller knows the context). */
extern int mcache_read (struct mcache *c, struct hostio *io,
                        const void *owner, uint64_t slice_offset,
                        unsigned slice_size, unsigned start, unsigned count,
                        void *out);

/* Change count bytes at byte start of a slice (reading it first if it is
 * not cached).  Callers serialize changes (the image's
 * metadata lock) and journal them; 0, or -1 with errno. */
extern int mcache_write (struct mcache *c, struct hostio *io,
                         const void *owner, uint64_t slice_offset,
                         unsigned slice_size, unsigned start, unsigned count,
                         const void *in);

/* The transaction holding every change made so far is sealed: snapshot
 * the slices changed since the last seal. */
extern void mcache_seal (struct mcache *c);
/* That transaction is durable: its snapshots become the committed state. */
extern void mcache_durable (struct mcache *c);

/* Committed state waiting to be written in place. */
struct mcache_dirty {
  const void *owner;
  uint64_t offset;
  unsigned size;
  uint64_t version;
  uint8_t data[MCACHE_MAX_SLICE];
};
/* Copy out the committed state of every slice of owner that has some not
 * yet written in place.  Returns the number of entries in *out (malloc'd;
 * the caller frees it), or -1 on ENOMEM. */
extern ssize_t mcache_collect (struct mcache *c, const void *owner,
                               struct mcache_dirty **out);
/* d has been written in place and flushed, and the journal head moved
 * past it: forget its committed copy unless it changed meanwhile. */
extern void mcache_cleaned (struct mcache *c, const struct mcache_dirty *d);

/* The slices of owner in [offset, offset + len) no longer hold
 * metadata (a table freed, its free checkpointed): drop them, so that the
 * clusters can be reused for anything.  They must have no change waiting
 * to be written in place. */
extern void mcache_forget (struct mcache *c, const void *owner,
                           uint64_t offset, uint64_t len,
                           unsigned slice_size);

/* Every slice of owner: the file changed under the cache (a journal
 * replayed on it).  None may have a change waiting to be written. */
extern void mcache_forget_owner (struct mcache *c, const void *owner);

struct mcache_stats {
  uint64_t hits, misses, evictions, slices;
};
extern void mcache_stats (struct mcache *c, struct mcache_stats *stats);

#endif /* QCOW2J_METACACHE_H */
