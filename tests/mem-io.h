/* qcow2j unit tests: a hostio over a growable buffer in memory, so that a
 * test can build an image byte by byte and look at every byte written,
 * without touching the filesystem. */
#ifndef QCOW2J_MEM_IO_H
#define QCOW2J_MEM_IO_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hostio.h"

struct mem_io {
  struct hostio io;
  uint8_t *data;
  uint64_t size;
  unsigned reads;               /* pread calls, for cache tests */
};

static int
mem_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  struct mem_io *m = (struct mem_io *) io;
  size_t avail = offset < m->size ? m->size - offset : 0;

  if (avail > count)
    avail = count;
  __atomic_fetch_add (&m->reads, 1, __ATOMIC_RELAXED);
  memcpy (buf, m->data + offset, avail);
  memset ((uint8_t *) buf + avail, 0, count - avail);
  return 0;
}

static int
mem_pwrite (struct hostio *io, const void *buf, size_t count, uint64_t offset)
{
  struct mem_io *m = (struct mem_io *) io;

  if (offset + count > m->size) {
    m->data = realloc (m->data, offset + count);
    memset (m->data + m->size, 0, offset + count - m->size);
    m->size = offset + count;
  }
  memcpy (m->data + offset, buf, count);
  return 0;
}

static int mem_flush (struct hostio *io) { return 0; }
static int mem_punch (struct hostio *io, uint64_t o, uint64_t c)
{ errno = ENOTSUP; return -1; }
static int mem_truncate (struct hostio *io, uint64_t size)
{
  struct mem_io *m = (struct mem_io *) io;
  m->data = realloc (m->data, size ? size : 1);
  if (size > m->size)
    memset (m->data + m->size, 0, size - m->size);
  m->size = size;
  return 0;
}
static int64_t mem_size (struct hostio *io)
{ return ((struct mem_io *) io)->size; }
static int mem_block_status (struct hostio *io, uint64_t o, uint64_t c,
                             bool *is_data, uint64_t *run)
{ *is_data = true; *run = c; return 0; }
static void mem_close (struct hostio *io)
{
  struct mem_io *m = (struct mem_io *) io;
  free (m->data);
  free (m->io.name);
  free (m);
}

static const struct hostio_ops mem_ops = {
  .pread = mem_pread, .pwrite = mem_pwrite, .flush = mem_flush,
  .punch = mem_punch, .truncate = mem_truncate, .size = mem_size,
  .block_status = mem_block_status, .close = mem_close,
};

static inline struct mem_io *
mem_io_new (const char *name, uint64_t size)
{
  struct mem_io *m = calloc (1, sizeof *m);

  m->io.ops = &mem_ops;
  m->io.name = strdup (name);
  m->data = calloc (1, size ? size : 1);
  m->size = size;
  return m;
}

#endif /* QCOW2J_MEM_IO_H */
