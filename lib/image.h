/* qcow2j lib: the image API that the plugin (and the tests) call.
 *
 * One struct qcow2_image serves every connection: all functions here are
 * safe to call from many threads at once.
 */
#ifndef QCOW2J_IMAGE_H
#define QCOW2J_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hostio.h"

struct qcow2_image;

struct qcow2_open_options {
  uint64_t l2_cache_bytes;      /* 0: the default (32 MiB) */
  bool lock;                    /* take QEMU-compatible OFD locks */
  bool writable;                /* open the file read-write if permitted
                                   (nothing is written until
                                   qcow2_make_writable) */
};

#define QCOW2_DEFAULT_L2_CACHE_BYTES (32ULL << 20)

/* Open and validate the image at path (and its backing chain and external
 * data file), read-only.  Reports and returns NULL with errno set on
 * error: EINVAL for a malformed image, ENOTSUP for an unsupported feature,
 * EAGAIN when another program holds a conflicting lock. */
extern struct qcow2_image *qcow2_open (const char *path,
                                       const struct qcow2_open_options *opts);

/* The same on an already open hostio (which the image takes over; it
 * may be written if opts->writable).  Any backing file is looked up
 * relative to dir (NULL: the image may have no backing file nor external
 * data file). */
extern struct qcow2_image *qcow2_open_hostio (struct hostio *io,
                                              const char *dir,
                                              const struct qcow2_open_options *opts);

/* Which internal snapshot to serve (qemu-nbd -l): by id, by name, by
 * both (one entry must match both), or by id_or_name alone (an id, else
 * a name, as QEMU looks it up).  The first matching entry is taken. */
struct qcow2_snapshot_choice {
  const char *id;
  const char *name;
  const char *id_or_name;
};

/* Serve that snapshot instead of the active layer: reads, extents and
 * the size become the snapshot's (its L1 table, its disk size); the
 * backing chain and the data file are the image's.  The image must have
 * been opened read-only and any dirty journal replayed in memory
 * (qcow2_replay_in_memory); call it once, before the first read.
 * Reports and returns -1 with errno set: ENOENT when no snapshot matches
 * (the message lists those the image has), EINVAL for a bad snapshot. */
extern int qcow2_load_snapshot (struct qcow2_image *img,
                                const struct qcow2_snapshot_choice *which);

/* Close, after a clean checkpoint if the image was written: the file is
 * then plain qcow2.  Returns -1 if that failed (the image then keeps its
 * journal, replayed at the next writable open). */
extern int qcow2_close (struct qcow2_image *img);

/* Virtual disk size in bytes. */
extern uint64_t qcow2_size (const struct qcow2_image *img);

/* Read count bytes at offset (the range must be inside the disk).  Returns
 * 0, or -1 with errno set (EIO for bad metadata) after reporting. */
extern int qcow2_pread (struct qcow2_image *img, void *buf, uint64_t count,
                        uint64_t offset);

/* Allocation status, looking through the backing chain. */
#define QCOW2_EXTENT_HOLE 1     /* same values as NBDKIT_EXTENT_* */
#define QCOW2_EXTENT_ZERO 2
typedef int (*qcow2_extent_fn) (void *opaque, uint64_t offset,
                                uint64_t length, unsigned type);

/* Call fn for consecutive extents starting at offset and covering at most
 * count bytes (clamped to the request); at least one extent is produced
 * on success.  With one_only, stop after the first. */
extern int qcow2_extents (struct qcow2_image *img, uint64_t count,
                          uint64_t offset, bool one_only,
                          qcow2_extent_fn fn, void *opaque);

/* A one-line description for users: format, version, cluster size,
 * backing chain.  Writes at most len bytes including the NUL. */
extern void qcow2_describe (const struct qcow2_image *img, char *buf,
                            size_t len);

extern uint64_t qcow2_cluster_size (const struct qcow2_image *img);

/* True if the image carries the corrupt bit (it may only be read). */
extern bool qcow2_is_corrupt (const struct qcow2_image *img);

/* Writing (write.c, discard.c, writable.c).
 *
 * qcow2_prepare_writable checks that the image may be written (not v2,
 * not corrupt, ...) and takes QEMU's writer locks, changing nothing in
 * the file; writes, zeroes and trims fail with EROFS until it succeeded.
 * The first of them then sets up the journal (so an image served
 * writable but only read is never modified).  qcow2_make_writable does
 * that set-up at once, replaying a dirty journal first: an image with a
 * dirty journal cannot be read before.  Errors: ENOSPC when the host is
 * full, EIO when the image cannot be trusted any more. */
extern int qcow2_prepare_writable (struct qcow2_image *img);
extern int qcow2_make_writable (struct qcow2_image *img);
extern int qcow2_pwrite (struct qcow2_image *img, const void *buf,
                         uint64_t count, uint64_t offset);
/* may_trim: the range need not stay allocated; fast: fail with ENOTSUP
 * at once, changing nothing, if it cannot be done without writing data. */
extern int qcow2_zero (struct qcow2_image *img, uint64_t count,
                       uint64_t offset, bool may_trim, bool fast);
extern int qcow2_trim (struct qcow2_image *img, uint64_t count,
                       uint64_t offset);
/* Make every write completed before the call durable. */
extern int qcow2_flush (struct qcow2_image *img);
/* True if the image holds a journal that must be replayed before it can
 * be read (replay needs a writable open). */
extern bool qcow2_journal_dirty (const struct qcow2_image *img);
/* Replay a dirty journal into memory, changing nothing in the file
 * (overlay.c): the image can then be read, and never written.  Call it
 * before any read; 0 at once if the journal is not dirty. */
extern int qcow2_replay_in_memory (struct qcow2_image *img);
/* True if the file could be opened for writing. */
extern bool qcow2_can_write (const struct qcow2_image *img);

/* The background checkpoint thread (checkpoint.c). */
extern int qcow2_start_checkpointer (struct qcow2_image *img);
extern void qcow2_stop_checkpointer (struct qcow2_image *img);

/* Log cache statistics through the debug handler. */
extern void qcow2_debug_stats (struct qcow2_image *img);

#endif /* QCOW2J_IMAGE_H */
