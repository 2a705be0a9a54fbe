/* qcow2j lib: the image object, shared by the files of lib/ that implement
 * the image API.  Nothing outside lib/ sees this. */
#ifndef QCOW2J_IMAGE_INTERNAL_H
#define QCOW2J_IMAGE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <pthread.h>

#include "header.h"
#include "hostio.h"
#include "image.h"
#include "journal.h"
#include "metacache.h"

/* Backing chains longer than this are refused (QEMU has no such limit, but
 * every layer costs file descriptors and memory, and a hostile chain must
 * not exhaust them). */
#define QCOW2_MAX_CHAIN_DEPTH 64

enum backing_kind { BACKING_NONE, BACKING_QCOW2, BACKING_RAW };

struct qcow2_image {
  struct hostio *file;          /* the qcow2 file */
  struct hostio *data;          /* where data clusters live: file, or the
                                   external data file */
  struct qcow2_header hdr;
  uint64_t file_size;           /* host length of file */
  uint64_t data_size;           /* host length of data */

  uint64_t *l1;                 /* active L1 table, host byte order */

  struct mcache *cache;        /* shared along the chain */
  bool owns_cache;              /* true in the top image only */
  unsigned slice_size;          /* bytes of L2 table per cache slice */

  /* Compressed cluster descriptor layout. */
  unsigned csize_shift;
  uint64_t csize_mask;
  uint64_t coffset_mask;

  struct {
    enum backing_kind kind;
    struct qcow2_image *image;  /* BACKING_QCOW2 */
    struct hostio *raw;         /* BACKING_RAW */
    uint64_t size;              /* bytes the backing file provides */
    char *path;                 /* resolved path, for messages */
  } backing;

  char *dir;                    /* directory names are relative to */
  char *path;                   /* of the top image, for reopening */

  /* ---- Write path (write.c, metadata.c, refcount.c, writable.c) ----
   * Set up by qcow2_make_writable; only the top image of a chain. */
  bool writable;                /* journal set up: writes go through */
  bool write_ready;             /* writes allowed (checked, locked) */
  pthread_mutex_t setup_lock;   /* the set-up in qcow2_make_writable */
  bool file_rw;                 /* file opened O_RDWR */
  bool data_rw;                 /* external data file opened O_RDWR */
  bool lock_files;              /* take QEMU-compatible locks */
  pthread_mutex_t meta_lock;    /* serializes metadata changes; held over
                                   host I/O only when loading metadata,
                                   growing tables, copying an L2 table or
                                   reserving space */
  pthread_cond_t inflight_done; /* an allocating write finished */
  uint64_t *inflight;           /* guest clusters being allocated */
  size_t nr_inflight, cap_inflight;
  struct journal *journal;
  uint64_t next_free;           /* host offset of the next new cluster */
  uint64_t space_reserved;      /* host space reserved up to here */
  bool cannot_reserve;          /* the host file cannot reserve space */
  bool replayed_in_memory;      /* file reads through overlay.c; never
                                   writable */
  uint64_t *reftable;           /* refcount table, host byte order */
  uint64_t reftable_entries;
  uint64_t refblock_entries;    /* refcounts per refcount block */
  int failed;                   /* sticky errno: writes refused after a
                                   metadata change failed half way */
  pthread_mutex_t dirty_lock;   /* setting and clearing "journal dirty" */
  bool dirty_written;           /* QJ_INCOMPAT_DIRTY has been written */
  bool dirty_durable;           /* ... and flushed */

  pthread_mutex_t checkpoint_lock; /* one checkpoint at a time */
  pthread_mutex_t thread_lock;  /* the checkpoint thread's state */
  pthread_cond_t thread_cond;
  bool thread_running, thread_stop;
  pthread_t thread;
  uint64_t last_change;         /* monotonic ns of the last write */
  uint64_t ring_high_water;     /* ring bytes that trigger a checkpoint */
};

/* backing.c: open the backing file (if any) and the external data file
 * (if any) named by img->hdr, relative to img->dir.  depth counts the
 * images above; ids holds the (dev, ino) pairs already in the chain. */
struct chain_ids {
  uint64_t dev[QCOW2_MAX_CHAIN_DEPTH + 1];
  uint64_t ino[QCOW2_MAX_CHAIN_DEPTH + 1];
  unsigned n;
};
extern int qcow2_open_backing (struct qcow2_image *img, unsigned depth,
                               struct chain_ids *ids,
                               const struct qcow2_open_options *opts);
extern int qcow2_open_data_file (struct qcow2_image *img, bool top,
                                 const struct qcow2_open_options *opts);
/* Record io's file identity in ids; fails with ELOOP if already there. */
extern int qcow2_chain_add (struct chain_ids *ids, struct hostio *io);
/* The directory part of path (malloc'd). */
extern char *qcow2_dirname (const char *path);

/* Open one image of a chain (image.c). */
extern struct qcow2_image *qcow2_open_layer (struct hostio *io,
                                             const char *dir,
                                             struct mcache *cache,
                                             unsigned depth,
                                             struct chain_ids *ids,
                                             const struct qcow2_open_options *opts);

/* snapshot.c: walk and validate the snapshot table. */
extern int qcow2_check_snapshots (struct qcow2_image *img);

/* metadata.c: journalled metadata changes (callers hold meta_lock and are
 * between journal_begin and journal_end). */
extern int qcow2_meta_set64 (struct qcow2_image *img, uint64_t offset,
                             uint64_t value, bool fresh);
extern int qcow2_meta_read64 (struct qcow2_image *img, uint64_t offset,
                              uint64_t *value);
/* The L2 entry (and subcluster bitmap) of guest offset; *entry_offset is
 * its host offset, 0 if there is no L2 table. */
extern int qcow2_l2_lookup (struct qcow2_image *img, uint64_t guest,
                            uint64_t *entry_offset, uint64_t *entry,
                            uint64_t *bitmap);
/* Make sure guest offset's L2 table exists and is not shared (allocating
 * or copying it), and return the host offset of its entry. */
extern int qcow2_l2_prepare (struct qcow2_image *img, uint64_t guest,
                             uint64_t *entry_offset);
extern int qcow2_l2_set (struct qcow2_image *img, uint64_t entry_offset,
                         uint64_t entry, uint64_t bitmap);

/* refcount.c */
extern int qcow2_refcounts_load (struct qcow2_image *img);
extern int qcow2_refcount_get (struct qcow2_image *img, uint64_t offset,
                               uint64_t *value);
extern int qcow2_refcount_set (struct qcow2_image *img, uint64_t offset,
                               uint64_t value);
/* Reserve n contiguous new clusters past everything in use (not yet
 * referenced or counted: see qcow2_alloc_commit). */
extern int qcow2_alloc_reserve (struct qcow2_image *img, uint64_t n,
                                uint64_t *offset);
/* Before a change that may allocate clusters: make sure host space is
 * reserved for the next few, so that a full host disk fails the request
 * now (ENOSPC), before anything is changed, rather than half way through
 * the change (which stops all writes) or at the checkpoint.  Needs
 * meta_lock. */
extern int qcow2_reserve_space (struct qcow2_image *img);
/* Drop one reference to the cluster at offset; frees it (deferred
 * discard) when none is left. */
extern int qcow2_cluster_unref (struct qcow2_image *img, uint64_t offset);
/* The same for every host cluster a compressed cluster's data touches. */
extern int qcow2_compressed_unref (struct qcow2_image *img, uint64_t entry);
/* Drop what an L2 entry holds: its data cluster (refcounted unless it is
 * in an external data file), or its compressed data. */
extern int qcow2_release_host (struct qcow2_image *img, uint64_t entry);

/* write.c */
extern void qcow2_cluster_lock (struct qcow2_image *img, uint64_t cluster);
extern void qcow2_cluster_unlock (struct qcow2_image *img, uint64_t cluster);
/* After a failure that leaves the image unsafe to change further: refuse
 * writes and commits from now on (errno kept, returns -1). */
extern int qcow2_stop_writes (struct qcow2_image *img, const char *why);
extern int qcow2_change_failed (struct qcow2_image *img);
/* Under meta_lock, the guest cluster locked: its L2 entry, checked as a
 * read would check it, before a change acts on what it names (fails with
 * the image's error once it has failed). */
extern int qcow2_entry_to_change (struct qcow2_image *img, uint64_t guest,
                                  uint64_t *entry_offset, uint64_t *entry,
                                  uint64_t *bitmap);
extern uint64_t qcow2_now (void);
extern int qcow2_pwrite_range (struct qcow2_image *img, const void *buf,
                               uint64_t count, uint64_t offset);

/* writable.c */
/* Called by every write: sets up the journal at the first one.  0, or -1
 * with errno (EROFS if the image may not be written). */
extern int qcow2_begin_write (struct qcow2_image *img);
extern int qcow2_commit_if_large (struct qcow2_image *img);
extern int qcow2_close_writable (struct qcow2_image *img);

/* rebuild.c: recount every cluster below file_end and fix what differs
 * (through the journal), with the active tables' COPIED flags. */
extern int qcow2_rebuild_refcounts (struct qcow2_image *img,
                                    uint64_t file_end);

/* bitmaps.c: mark every persistent bitmap in use (before a first write). */
extern int qcow2_bitmaps_mark_in_use (struct qcow2_image *img);

/* checkpoint.c */
extern int qcow2_checkpoint (struct qcow2_image *img);
extern void qcow2_checkpoint_wake (struct qcow2_image *img);

/* image.c */
extern int qcow2_read_l1 (struct qcow2_image *img);
/* Read the header and L1 table again (and the refcount table, if it was
 * loaded) after a replay changed them. */
extern int qcow2_reload_metadata (struct qcow2_image *img);

/* read.c: reads through the backing chain for unallocated ranges. */
extern int qcow2_read_backing (struct qcow2_image *img, void *buf,
                               uint64_t count, uint64_t offset);

#endif /* QCOW2J_IMAGE_INTERNAL_H */
