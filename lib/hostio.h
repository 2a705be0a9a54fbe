/* qcow2j lib: host I/O, as a table of operations.
 *
 * Everything the core does to the image file (and to backing and external
 * data files) goes through this table rather than through file descriptors,
 * so that tests can slide a power-cut simulator or a fault injector under
 * the real code.  hostio-file.c is the implementation used in production.
 *
 * Semantics every implementation keeps:
 * - pread reads exactly count bytes; bytes past the end of the file read as
 *   zeroes (as QEMU's file driver does), so a short file is not an error
 *   here: callers validate offsets against size() where it matters.
 * - pwrite writes exactly count bytes, extending the file if needed.
 * - flush makes every completed pwrite, punch and truncate durable.
 * - All return 0 on success, or -1 with errno set (they do not report:
 *   the caller knows what it was doing and says so).
 */
#ifndef QCOW2J_HOSTIO_H
#define QCOW2J_HOSTIO_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hostio;

struct hostio_ops {
  int (*pread) (struct hostio *io, void *buf, size_t count, uint64_t offset);
  int (*pwrite) (struct hostio *io, const void *buf, size_t count,
                 uint64_t offset);
  int (*flush) (struct hostio *io);
  /* Deallocate a range; later reads return zeroes.  May fail ENOTSUP. */
  int (*punch) (struct hostio *io, uint64_t offset, uint64_t count);
  int (*truncate) (struct hostio *io, uint64_t size);
  /* Give a range host space (reads and the file's length unchanged), so
   * that writing there later cannot fail for want of space.  NULL, or
   * failing ENOTSUP: not supported. */
  int (*reserve) (struct hostio *io, uint64_t offset, uint64_t count);
  /* Current length of the file in bytes, or -1. */
  int64_t (*size) (struct hostio *io);
  /* Allocation status: sets *is_data and *run to the length (> 0, at most
   * count) of the run at offset that is all data or all hole.
   * Implementations that cannot tell report data. */
  int (*block_status) (struct hostio *io, uint64_t offset, uint64_t count,
                       bool *is_data, uint64_t *run);
  /* Optional: bytes of host storage the file takes (its length less its
   * holes), or -1 with errno. */
  int64_t (*allocated) (struct hostio *io);
  void (*close) (struct hostio *io);
};

struct hostio {
  const struct hostio_ops *ops;
  char *name;                   /* for messages; owned by the hostio */
  bool fixed_size;              /* a block device: its size is all there
                                   is, truncate fails */
  bool sparse;                  /* a file whose holes cost nothing: a
                                   far offset may be written */
};

static inline int
hostio_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  return io->ops->pread (io, buf, count, offset);
}

static inline int
hostio_pwrite (struct hostio *io, const void *buf, size_t count,
               uint64_t offset)
{
  return io->ops->pwrite (io, buf, count, offset);
}

static inline int
hostio_flush (struct hostio *io)
{
  return io->ops->flush (io);
}

static inline int
hostio_punch (struct hostio *io, uint64_t offset, uint64_t count)
{
  return io->ops->punch (io, offset, count);
}

static inline int
hostio_truncate (struct hostio *io, uint64_t size)
{
  return io->ops->truncate (io, size);
}

static inline int
hostio_reserve (struct hostio *io, uint64_t offset, uint64_t count)
{
  if (io->ops->reserve == NULL) {
    errno = ENOTSUP;
    return -1;
  }
  return io->ops->reserve (io, offset, count);
}

static inline int64_t
hostio_size (struct hostio *io)
{
  return io->ops->size (io);
}

static inline int
hostio_block_status (struct hostio *io, uint64_t offset, uint64_t count,
                     bool *is_data, uint64_t *run)
{
  return io->ops->block_status (io, offset, count, is_data, run);
}

/* -1 with errno ENOTSUP where the hostio cannot tell. */
static inline int64_t
hostio_allocated (struct hostio *io)
{
  if (io->ops->allocated == NULL) {
    errno = ENOTSUP;
    return -1;
  }
  return io->ops->allocated (io);
}

static inline void
hostio_close (struct hostio *io)
{
  if (io)
    io->ops->close (io);
}

/* hostio-file.c: a regular file or block device.  On success the file is
 * open with O_CLOEXEC, read-only unless writable.  On failure reports and
 * returns NULL with errno set. */
extern struct hostio *hostio_file_open (const char *path, bool writable);

/* The file descriptor under a hostio made by hostio_file_open (for locking
 * and identity checks), or -1 for any other kind. */
extern int hostio_file_fd (struct hostio *io);

#endif /* QCOW2J_HOSTIO_H */
