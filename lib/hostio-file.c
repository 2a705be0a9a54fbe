/* qcow2j lib: host I/O on a regular file (the production hostio). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hostio.h"
#include "log.h"

struct file_io {
  struct hostio io;
  int fd;
};

static const struct hostio_ops file_ops;

static int
file_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  struct file_io *f = (struct file_io *) io;
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (f->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {               /* end of file: the rest reads as zeroes */
      memset (p, 0, count);
      return 0;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

static int
file_pwrite (struct hostio *io, const void *buf, size_t count,
             uint64_t offset)
{
  struct file_io *f = (struct file_io *) io;
  const char *p = buf;

  while (count > 0) {
    ssize_t r = pwrite (f->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

static int
file_flush (struct hostio *io)
{
  struct file_io *f = (struct file_io *) io;

  return fdatasync (f->fd);
}

static int
file_punch (struct hostio *io, uint64_t offset, uint64_t count)
{
  struct file_io *f = (struct file_io *) io;

  return fallocate (f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    offset, count);
}

static int
file_reserve (struct hostio *io, uint64_t offset, uint64_t count)
{
  struct file_io *f = (struct file_io *) io;

  if (fallocate (f->fd, FALLOC_FL_KEEP_SIZE, offset, count) == -1) {
    if (errno == EOPNOTSUPP || errno == ENOSYS)
      errno = ENOTSUP;
    return -1;
  }
  return 0;
}

static int
file_truncate (struct hostio *io, uint64_t size)
{
  struct file_io *f = (struct file_io *) io;

  return ftruncate (f->fd, size);
}

static int64_t
file_size (struct hostio *io)
{
  struct file_io *f = (struct file_io *) io;
  struct stat st;

  if (fstat (f->fd, &st) == -1)
    return -1;
  if (S_ISBLK (st.st_mode)) {
    off_t end = lseek (f->fd, 0, SEEK_END);
    return end;
  }
  return st.st_size;
}

/* SEEK_DATA/SEEK_HOLE, as QEMU's file driver uses for raw backing files.
 * Where the filesystem cannot answer, everything is data. */
static int
file_block_status (struct hostio *io, uint64_t offset, uint64_t count,
                   bool *is_data, uint64_t *run)
{
  struct file_io *f = (struct file_io *) io;
  off_t data, hole;

  data = lseek (f->fd, offset, SEEK_DATA);
  if (data == -1) {
    if (errno == ENXIO) {       /* no data from offset to the end */
      *is_data = false;
      *run = count;
      return 0;
    }
    goto all_data;
  }
  if ((uint64_t) data > offset) {
    *is_data = false;
    *run = (uint64_t) data - offset < count ? (uint64_t) data - offset : count;
    return 0;
  }
  hole = lseek (f->fd, offset, SEEK_HOLE);
  if (hole == -1 || (uint64_t) hole <= offset)
    goto all_data;
  *is_data = true;
  *run = (uint64_t) hole - offset < count ? (uint64_t) hole - offset : count;
  return 0;

 all_data:
  *is_data = true;
  *run = count;
  return 0;
}

static int64_t
file_allocated (struct hostio *io)
{
  struct file_io *f = (struct file_io *) io;
  struct stat st;

  if (fstat (f->fd, &st) == -1)
    return -1;
  return (int64_t) st.st_blocks * 512;
}

static void
file_close (struct hostio *io)
{
  struct file_io *f = (struct file_io *) io;

  close (f->fd);
  free (f->io.name);
  free (f);
}

static const struct hostio_ops file_ops = {
  .pread = file_pread,
  .pwrite = file_pwrite,
  .flush = file_flush,
  .punch = file_punch,
  .truncate = file_truncate,
  .reserve = file_reserve,
  .size = file_size,
  .block_status = file_block_status,
  .allocated = file_allocated,
  .close = file_close,
};

struct hostio *
hostio_file_open (const char *path, bool writable)
{
  struct file_io *f;
  struct stat st;
  int fd;

  fd = open (path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd == -1) {
    qerror ("open: %s: %m", path);
    return NULL;
  }
  f = calloc (1, sizeof *f);
  if (f == NULL || (f->io.name = strdup (path)) == NULL) {
    qerror ("calloc: %m");
    free (f);
    close (fd);
    errno = ENOMEM;
    return NULL;
  }
  f->io.ops = &file_ops;
  f->fd = fd;
  if (fstat (fd, &st) == 0) {
    f->io.fixed_size = S_ISBLK (st.st_mode);
    f->io.sparse = S_ISREG (st.st_mode);
  }
  return &f->io;
}

int
hostio_file_fd (struct hostio *io)
{
  if (io->ops != &file_ops)
    return -1;
  return ((struct file_io *) io)->fd;
}
