/* qcow2j lib: the image object, shared by the files of lib/ that implement
 * the image API.  Nothing outside lib/ sees this.
 *
 * The files of lib/ form layers; each calls only the layers below it:
 *
 *   image API      image.c (open, close, info), extents.c,
 *                  overlay.c (a dirty journal replayed in memory),
 *                  create.c
 *   write session  session.c (the gate every write, zero, trim and flush
 *                  passes; journal set-up; clean close), checkpointer.c
 *                  (the background thread)
 *   changes        write.c, discard.c, rebuild.c
 *   tables         l2.c (L1 and L2 entries), refcount.c, alloc.c (new
 *                  clusters), inflight.c (one allocation per guest cluster),
 *                  bitmaps-live.c (dirty bitmaps kept), writeback.c
 *                  (tables written home in order: version 2)
 *   commit         commit.c (changes bracketed, commits, journal hooks),
 *                  checkpoint.c, dirty.c (the "journal dirty" bit),
 *                  overlap.c (refusing I/O onto metadata), owed-fill.c
 *                  (delayed copy-on-write: writes into owed sectors,
 *                  and the fill before a seal)
 *   words          metadata.c (journalled 8-byte words), header-write.c
 *                  (cluster 0 written in place), tables.c (L1 and refcount
 *                  table read into memory), state.c (the session state
 *                  and its failure latch), space.c (free clusters)
 *   format         map.c (guest to host), read.c (guest content, for
 *                  clients and copy-on-write), entry.c (what an L2 entry is),
 *                  snapshot.c, bitmaps.c, backing.c, header.c,
 *                  journal-ext.c (the Q2JL extension), walk.c (every
 *                  table of the metadata, visited), metamap.c (where
 *                  the metadata is), grace.c (host I/O in flight),
 *                  owed.c (sectors of new clusters still owed their
 *                  old content)
 *   below          journal.c, journal-replay.c, metacache.c, hostio*.c,
 *                  lock.c, compress.c, crc32c.c, log.c, rangemap.c
 *
 * Lock order.  A thread holding a lock of this list may take only locks
 * further down.  Host I/O happens under setup_lock (the whole set-up),
 * checkpoint_lock (the checkpoint's writes and flush), meta_lock (as said
 * below), dirty_lock (the header word and its flush) and the journal's
 * sb_lock; never under the others.
 *
 *   1. setup_lock        the journal set-up (session.c); held over all of
 *                        it, including a refcount rebuild
 *   2. checkpoint_lock   one checkpoint at a time (checkpoint.c)
 *   3. meta_lock         metadata changes and the in-flight clusters;
 *                        held over host I/O only to load metadata, grow
 *                        the refcount table, copy an L2 table, zero a
 *                        reused cluster for a table, extend the file,
 *                        reserve space, or learn the free space.  Never taken with
 *                        checkpoint_lock held, nor the reverse: the two
 *                        never nest.
 *   4. dirty_lock        the "journal dirty" bit (dirty.c)
 *   5. journal sb_lock   superblock writes (journal.c)
 *   6. journal lock      the journal's in-memory state (journal.c); the
 *                        journal's sealed and durable hooks run under it
 *   7. cache shard lock  one shard of the metadata cache (metacache.c)
 *   -  map_lock          the metadata map (metamap.c): a leaf, taken
 *                        under any of the above, nothing taken under it
 *   -  thread_lock       the checkpointer thread's state: a leaf, nothing
 *                        is taken under it
 *   -  owed_lock         the owed table (owed.c): a leaf, taken under
 *                        meta_lock or no lock.  A claim on an owed
 *                        cluster (owed.c) is held over one write's or
 *                        one fill's host I/O with no lock held; its
 *                        holder takes no lock but owed_lock and those a
 *                        read takes (cache shards, map_lock), and never
 *                        waits for a change or a commit, so that
 *                        meta_lock holders and a committer holding
 *                        changes off may wait for it.
 *
 * Each field below says what guards it: "const" (set at open, then only
 * read), "atomic" (read without a lock, with __atomic loads), or a lock.
 */
#ifndef QCOW2J_IMAGE_INTERNAL_H
#define QCOW2J_IMAGE_INTERNAL_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>

#include <pthread.h>

#include "header.h"
#include "hostio.h"
#include "image.h"
#include "journal.h"
#include "metacache.h"
#include "rangemap.h"

/* Backing chains longer than this are refused (QEMU has no such limit, but
 * every layer costs file descriptors and memory, and a hostile chain must
 * not exhaust them). */
#define QCOW2_MAX_CHAIN_DEPTH 64

enum backing_kind { BACKING_NONE, BACKING_QCOW2, BACKING_RAW };

/* Where the image is in its life as a writable image (state.c has the
 * transitions).  Only the top image of a chain leaves SESSION_READ_ONLY.
 *
 *   READ_ONLY ──prepare──▶ READY ──first write──▶ JOURNALLED ──close──▶ CLOSED
 *       │                    │  │                     │
 *       │                    │  └───── failure ───────┴──▶ FAILED
 *       └──replay in memory──┴──▶ REPLAYED_IN_MEMORY
 *
 * FAILED and REPLAYED_IN_MEMORY are final: writes are refused until the
 * server restarts. */
enum session_state {
  SESSION_READ_ONLY,            /* writes refused (EROFS) */
  SESSION_READY,                /* checked and locked for writing; the
                                   journal is set up by the first write */
  SESSION_JOURNALLED,           /* writes go through the journal (for a
                                   version 2 image, one with no area:
                                   writeback.c) */
  SESSION_FAILED,               /* a change failed half way: writes and
                                   commits refused with failed_errno */
  SESSION_REPLAYED_IN_MEMORY,   /* the file reads through overlay.c */
  SESSION_CLOSED,               /* closed cleanly: plain qcow2 again */
};

/* What a host cluster of the image file holds, as far as the metadata
 * map knows (metamap.c). */
enum meta_kind {
  META_NONE,
  META_HEADER,
  META_L1,                      /* the active L1 table */
  META_L2,                      /* an L2 table the active L1 names */
  META_REFTABLE,
  META_REFBLOCK,
  META_SNAPSHOTS,               /* the snapshot table */
  META_SNAPSHOT_L1,
  META_SNAPSHOT_L2,             /* an L2 table only snapshots name */
  META_BITMAP_DIR,
  META_BITMAP_TABLE,
  META_BITMAP_DATA,
  META_JOURNAL,                 /* the live journal area */
  META_FREEING,                 /* a table freed, the free not yet
                                   checkpointed */
};

/* A persistent dirty bitmap this session keeps up to date
 * (bitmaps-live.c). */
struct qcow2_live_bitmap {
  uint64_t table_offset;
  uint32_t table_size;
  unsigned granularity_bits;
};

/* A snapshot table entry, as far as qcow2j needs it (snapshot.c). */
struct qcow2_snapshot {
  uint64_t l1_offset;
  uint32_t l1_size;
  uint64_t disk_size;           /* its virtual disk size */
  char *id, *name;              /* its id and name strings */
};

struct qcow2_image {
  struct hostio *file;          /* const: the qcow2 file (overlay.c
                                   swaps it before any reader runs) */
  struct hostio *data;          /* const: where data clusters live: file,
                                   or the external data file */
  /* The header.  Its geometry is const.  refcount_table_offset and
   * refcount_table_clusters change under meta_lock; incompatible_features
   * under dirty_lock; autoclear_features and the extension fields under
   * setup_lock (and at close, with no writer left). */
  struct qcow2_header hdr;
  uint64_t file_size;           /* atomic: host length of file, as far as
                                   entries may point; raised under
                                   meta_lock */
  /* Where entries may point: below open_end (the file's length at open,
   * before the journal's set-up extended it), or into what this session
   * allocated past it: [alloc_start, gap_end), the clusters it took from
   * the gap it left below the journal (first fit: gap_end is the end of
   * the highest), and past the journal, [journal_end, file_size), when
   * the journal lies past alloc_start.  Never into the live journal,
   * [journal_start, journal_end) (0, 0 before the set-up; an empty
   * range past every offset, UINT64_MAX twice, for an image with no
   * journal).  Set at open and by the set-up (under setup_lock, before JOURNALLED), or by
   * overlay.c before any reader runs; gap_end raised by alloc.c under
   * meta_lock; read atomically. */
  uint64_t open_end, alloc_start, gap_end;
  uint64_t journal_start, journal_end;
  uint64_t data_size;           /* atomic: the same for data */
  bool holes_read_zero;         /* const: block status asks the data
                                   file for holes under data clusters
                                   (backing.c, extents.c) */

  uint64_t *l1;                 /* atomic entries, changed under meta_lock:
                                   the active L1 table (or the served
                                   snapshot's), host byte order */
  struct qcow2_snapshot *snapshots; /* const: hdr.nb_snapshots of them */
  uint32_t snapshots_filled;    /* const: entries of it filled in (whose
                                   strings are to be freed) */
  const struct qcow2_snapshot *served_snapshot; /* const: the snapshot
                                   served read-only instead of the active
                                   layer, or NULL */
  uint64_t snapshot_table_bytes;    /* const: the table's length */
  struct qcow2_live_bitmap *live_bitmaps; /* const once journalled: set
                                             by the set-up */
  unsigned nr_live_bitmaps;               /* const once journalled */
  uint64_t bits_durable_at;     /* atomic, raised under meta_lock: the
                                   journal's durable generation at which
                                   every bit set so far is durable
                                   (bitmaps-live.c) */

  struct mcache *cache;         /* const: shared along the chain */
  bool owns_cache;              /* const: true in the top image only */
  unsigned slice_size;          /* const: bytes of L2 table per slice */

  /* Compressed cluster descriptor layout (const; entry.c decodes it). */
  unsigned csize_shift;
  uint64_t csize_mask;
  uint64_t coffset_mask;

  struct {                      /* const */
    enum backing_kind kind;
    struct qcow2_image *image;  /* BACKING_QCOW2 */
    struct hostio *raw;         /* BACKING_RAW */
    uint64_t size;              /* bytes the backing file provides */
    char *path;                 /* resolved path, for messages */
  } backing;

  char *dir;                    /* const: directory names are relative to */

  /* ---- The write session: the top image of a chain only ---- */
  int state;                    /* atomic: enum session_state; moved by
                                   state.c */
  int failed_errno;             /* atomic: why it is SESSION_FAILED */
  bool file_rw;                 /* const: file opened O_RDWR */
  bool data_rw;                 /* const: data file opened O_RDWR */
  bool lock_files;              /* const: take QEMU-compatible locks */
  pthread_mutex_t setup_lock;
  struct journal *journal;      /* set under setup_lock before the state
                                   becomes JOURNALLED, then const */

  pthread_mutex_t meta_lock;
  pthread_t meta_owner;         /* atomic: the thread holding meta_lock
                                   (0: none), for assertions */
  pthread_cond_t inflight_done; /* with meta_lock: an allocation ended */
  uint64_t *inflight;           /* meta_lock: guest clusters being
                                   allocated */
  size_t nr_inflight, cap_inflight;  /* meta_lock */
  uint64_t next_free;           /* meta_lock: where the file ends, as far
                                   as allocation goes: new clusters past
                                   the free space come from here */
  struct rangemap space;        /* meta_lock (setup_lock while learnt):
                                   free clusters, tagged enum space_kind
                                   (space.c) */
  uint64_t space_free;          /* atomic, changed under meta_lock:
                                   bytes in it */
  uint64_t space_low[2];        /* meta_lock: per kind (clean, stale), an
                                   offset below which it has no range */
  uint64_t space_reserved;      /* meta_lock: host space reserved up to */
  /* meta_lock: clusters allocated in this session, by where they came
   * from (observational only: counted for the tests, read by nothing in
   * the library).  Data: clean free space (fresh, E2), stale free space,
   * past the end of the file; tables: from free space. */
  uint64_t stat_data_clean, stat_data_stale, stat_data_new;
  uint64_t stat_table_reused;
  bool cannot_reserve;          /* meta_lock: the host cannot reserve */
  uint64_t ahead_start, ahead_end;  /* meta_lock: clean free space at the
                                   end of the file given host blocks ahead
                                   of data allocations (alloc.c) */
  bool ahead_full;              /* meta_lock: a reservation ahead found the
                                   host full: none more this session */
  uint64_t *reftable;           /* meta_lock: refcount table, host order */
  uint64_t reftable_entries;    /* meta_lock */
  uint64_t refblock_entries;    /* const: refcounts per refcount block */

  /* The metadata map (metamap.c): cluster-aligned ranges tagged with
   * their enum meta_kind.  Changed under meta_lock (or by the set-up)
   * with map_lock held for writing; read under map_lock alone. */
  pthread_rwlock_t map_lock;
  struct rangemap map;          /* map_lock */

  /* Lookups and host I/O in flight (grace.c). */
  unsigned io_epoch;            /* atomic */
  unsigned long io_active[2];   /* atomic: sections counted per epoch */

  pthread_mutex_t dirty_lock;
  bool dirty_written;           /* dirty_lock: QJ_INCOMPAT_DIRTY written */
  bool dirty_durable;           /* atomic, set under dirty_lock: ... and
                                   flushed */

  pthread_mutex_t checkpoint_lock;
  pthread_mutex_t thread_lock;
  pthread_cond_t thread_cond;   /* with thread_lock: wake the thread */
  bool thread_running, thread_stop;  /* thread_lock */
  pthread_t thread;             /* thread_lock */
  uint64_t last_change;         /* atomic: monotonic ns of the last write */

  /* Delayed copy-on-write (owed.c, docs/journal-format.md 8.6): new
   * clusters of the open transaction whose sectors still owe their old
   * content. */
  pthread_mutex_t owed_lock;
  pthread_cond_t owed_idle;     /* with owed_lock: a claim ended */
  struct owed_cluster *owed;    /* owed_lock: owed_max slots (NULL until
                                   first needed) */
  uint64_t *owed_bits;          /* owed_lock: owed_words per slot */
  unsigned nr_owed;             /* atomic, changed under owed_lock: slots
                                   in use */
  unsigned owed_reserved;       /* owed_lock: slots promised to changes
                                   under way */
  unsigned owed_max, owed_words;  /* const */
  uint64_t owed_age;            /* owed_lock: creation counter */
  /* owed_lock, observational only (for the tests): clusters whose copy
   * was delayed, and those a fill completed (at a seal, or early). */
  uint64_t stat_owed_delayed, stat_owed_filled;
  uint64_t ring_high_water;     /* const once JOURNALLED: ring bytes that
                                   call for a checkpoint */
};

/* meta_lock, with its owner recorded so that functions can assert that
 * their caller holds it. */
static inline void
qcow2_meta_lock (struct qcow2_image *img)
{
  pthread_mutex_lock (&img->meta_lock);
  __atomic_store_n (&img->meta_owner, pthread_self (), __ATOMIC_RELAXED);
}

static inline void
qcow2_meta_unlock (struct qcow2_image *img)
{
  __atomic_store_n (&img->meta_owner, (pthread_t) 0, __ATOMIC_RELAXED);
  pthread_mutex_unlock (&img->meta_lock);
}

static inline void
qcow2_meta_wait (struct qcow2_image *img, pthread_cond_t *cond)
{
  __atomic_store_n (&img->meta_owner, (pthread_t) 0, __ATOMIC_RELAXED);
  pthread_cond_wait (cond, &img->meta_lock);
  __atomic_store_n (&img->meta_owner, pthread_self (), __ATOMIC_RELAXED);
}

static inline bool
qcow2_meta_locked (struct qcow2_image *img)
{
  return pthread_equal (__atomic_load_n (&img->meta_owner, __ATOMIC_RELAXED),
                        pthread_self ());
}

#define ASSERT_META_LOCKED(img) assert (qcow2_meta_locked (img))
#define ASSERT_META_UNLOCKED(img) assert (!qcow2_meta_locked (img))

/* A version 2 image carries no journal (docs/journal-format.md 13): its
 * session's journal object has no area (journal_create_ordered), and its
 * tables are written home in order at each commit (writeback.c). */
static inline bool
qcow2_no_journal (const struct qcow2_image *img)
{
  return img->hdr.version < 3;
}

/* Journalled changes need the journal: set up (session.c), and kept until
 * the image is freed, even after a failure. */
#define ASSERT_JOURNAL_SET_UP(img) assert ((img)->journal != NULL)

#endif /* QCOW2J_IMAGE_INTERNAL_H */
