/* qcow2j lib: backing files and external data files.
 *
 * Names stored in an image are relative to the image's own directory, not
 * to the server's working directory (which nbdkit changes to / when it
 * daemonizes), so they are resolved here, at open time, and the files are
 * kept open.  The directory is that of the path as given, not of a
 * symlink's target: QEMU looks backing files up the same way.  A chain
 * is bounded in depth and checked for loops by file identity (device and
 * inode), so that a hostile chain cannot recurse forever or exhaust file
 * descriptors.  A qcow2 backing file is opened here and handed back:
 * image.c opens it as the next layer of the chain.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "backing.h"
#include "lock.h"
#include "log.h"
#include "minmax.h"

/* name resolved against dir; the caller frees it. */
static char *
resolve (const char *dir, const char *name)
{
  char *path;

  if (name[0] == '/' || dir == NULL)
    path = strdup (name);
  else if (asprintf (&path, "%s/%s", dir, name) == -1)
    path = NULL;
  if (path == NULL)
    qerror ("malloc: %m");
  return path;
}

/* The directory part of path; the caller frees it. */
char *
qcow2_dirname (const char *path)
{
  const char *slash = strrchr (path, '/');
  char *dir;

  if (slash == NULL)
    dir = strdup (".");
  else if (slash == path)
    dir = strdup ("/");
  else
    dir = strndup (path, slash - path);
  if (dir == NULL)
    qerror ("malloc: %m");
  return dir;
}

int
qcow2_chain_add (struct chain_ids *ids, struct hostio *io)
{
  int fd = hostio_file_fd (io);
  struct stat st;

  if (fd == -1)
    return 0;                   /* not a file: nothing to loop through */
  if (fstat (fd, &st) == -1) {
    qerror ("fstat: %s: %m", io->name);
    return -1;
  }
  for (unsigned i = 0; i < ids->n; i++)
    if (ids->dev[i] == (uint64_t) st.st_dev &&
        ids->ino[i] == (uint64_t) st.st_ino) {
      qerror ("%s: backing chain loop: this file is already in the chain",
              io->name);
      errno = ELOOP;
      return -1;
    }
  ids->dev[ids->n] = st.st_dev;
  ids->ino[ids->n] = st.st_ino;
  ids->n++;
  return 0;
}

/* Guess the format of a backing file whose image does not name one, as
 * QEMU does: qcow2 if it starts with the qcow2 magic, else raw. */
static const char *
probe_format (struct hostio *io)
{
  unsigned char magic[4];

  if (hostio_pread (io, magic, 4, 0) == 0 &&
      memcmp (magic, "QFI\xfb", 4) == 0)
    return "qcow2";
  return "raw";
}

int
qcow2_open_backing (struct qcow2_image *img, unsigned depth,
                    struct chain_ids *ids,
                    const struct qcow2_open_options *opts,
                    struct hostio **qcow2_io, char **qcow2_dir)
{
  const char *name = img->hdr.backing_file;
  const char *format = img->hdr.backing_format;
  struct hostio *io;

  *qcow2_io = NULL;
  *qcow2_dir = NULL;
  if (name == NULL)
    return 0;
  if (strncmp (name, "json:", 5) == 0) {
    qerror ("%s: backing file \"%s\": json: pseudo-protocol names are not "
            "supported", img->file->name, name);
    errno = ENOTSUP;
    return -1;
  }
  if (depth + 1 >= QCOW2_MAX_CHAIN_DEPTH) {
    qerror ("%s: backing chain is longer than %d images",
            img->file->name, QCOW2_MAX_CHAIN_DEPTH);
    errno = ELOOP;
    return -1;
  }
  if (format != NULL && strcmp (format, "qcow2") != 0 &&
      strcmp (format, "raw") != 0) {
    qerror ("%s: backing file \"%s\" has format \"%s\": only qcow2 and raw "
            "backing files are supported", img->file->name, name, format);
    errno = ENOTSUP;
    return -1;
  }

  img->backing.path = resolve (img->dir, name);
  if (img->backing.path == NULL)
    return -1;
  io = hostio_file_open (img->backing.path, false);
  if (io == NULL) {
    qerror ("%s: cannot open its backing file \"%s\" (%s): if it has "
            "moved, point the image at it with: qemu-img rebase -u -b "
            "NEW-NAME -F %s %s", img->file->name, name, img->backing.path,
            format ? format : "qcow2", img->file->name);
    return -1;
  }
  if (format == NULL)
    format = probe_format (io);

  if (strcmp (format, "qcow2") == 0) {
    *qcow2_dir = qcow2_dirname (img->backing.path);
    if (*qcow2_dir == NULL) {
      hostio_close (io);
      return -1;
    }
    *qcow2_io = io;
    return 0;
  }

  /* raw */
  img->backing.raw = io;
  img->backing.kind = BACKING_RAW;
  if (qcow2_chain_add (ids, io) == -1)
    return -1;
  if (opts->lock && qcow2_lock_fd (hostio_file_fd (io), io->name, false) == -1)
    return -1;
  {
    int64_t size = hostio_size (io);
    if (size == -1) {
      qerror ("%s: size: %m", io->name);
      return -1;
    }
    img->backing.size = size;
  }
  return 0;
}

/* Should block status ask the data file for holes under data clusters?
 * Only if the file is mostly holes, as preallocation=metadata leaves it
 * (extents.c says why).  QEMU's test is "more clusters have a refcount
 * than the file has allocated, by a ninth"; this one, "the file's length
 * is", needs no refcount walk, and differs only on a file whose holes no
 * cluster uses, where reporting them is as right.  Decided at open,
 * before a write session adds the journal's sparse gap. */
static void
decide_holes (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  int64_t allocated = hostio_allocated (img->data);
  uint64_t file_clusters = DIV_ROUND_UP (img->data_size, cs), real;

  if (!img->data->sparse || allocated < 0)
    return;
  real = (uint64_t) allocated / cs;
  img->holes_read_zero = file_clusters > MAX (real * 10 / 9, real + 2);
  qdebug ("%s: %" PRIu64 " of %" PRIu64 " clusters allocated: block status "
          "%s the file for holes under data", img->data->name, real,
          file_clusters, img->holes_read_zero ? "asks" : "does not ask");
}

int
qcow2_open_data_file (struct qcow2_image *img, bool top,
                      const struct qcow2_open_options *opts)
{
  bool rw;
  char *path;
  int64_t size;

  if (img->hdr.data_file == NULL) {
    img->data = img->file;
    img->data_size = img->file_size;
    decide_holes (img);
    return 0;
  }
  path = resolve (img->dir, img->hdr.data_file);
  if (path == NULL)
    return -1;
  /* Only the top image is ever written. */
  rw = top && opts->writable && access (path, W_OK) == 0;
  img->data = hostio_file_open (path, rw);
  img->data_rw = rw;
  free (path);
  if (img->data == NULL) {
    qerror ("%s: cannot open its external data file \"%s\"",
            img->file->name, img->hdr.data_file);
    return -1;
  }
  if (opts->lock &&
      qcow2_lock_fd (hostio_file_fd (img->data), img->data->name,
                     false) == -1)
    return -1;
  size = hostio_size (img->data);
  if (size == -1) {
    qerror ("%s: size: %m", img->data->name);
    return -1;
  }
  img->data_size = size;
  decide_holes (img);
  return 0;
}
