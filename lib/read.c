/* qcow2j lib: reading guest data.
 *
 * A read is cut into the runs qcow2_map describes: data runs are one pread
 * each from the data file, with no lock held (the lookup and the read in
 * one I/O section, so that the clusters are not reused under it:
 * grace.c); zero runs are memset;
 * unallocated runs are read from the backing file (zeroes past its end or
 * without one); compressed clusters are read whole and inflated.
 *
 * Delayed copy-on-write (owed.c): sectors of a new cluster still owed
 * their old content are read from where the old entry named it, the
 * source.  The owed bits are copied before the new cluster is read: a
 * bit is cleared only once the host holds the sector (owed.c, invariant
 * 2), so every sector comes either from the host, written, or from the
 * source, which nothing frees before the read's I/O section ends
 * (grace.c; owed.c, invariant 3).
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "compress.h"
#include "entry.h"
#include "format.h"
#include "grace.h"
#include "image-internal.h"
#include "log.h"
#include "map.h"
#include "minmax.h"
#include "owed.h"
#include "read.h"

/* Read a range the image leaves unallocated: from the backing file, and
 * zeroes past its end. */
static int
read_backing (struct qcow2_image *img, void *buf, uint64_t count,
              uint64_t offset)
{
  uint64_t avail = 0;

  if (img->backing.kind != BACKING_NONE && offset < img->backing.size)
    avail = MIN (count, img->backing.size - offset);

  if (avail > 0) {
    switch (img->backing.kind) {
    case BACKING_QCOW2:
      if (qcow2_pread (img->backing.image, buf, avail, offset) == -1)
        return -1;
      break;
    case BACKING_RAW:
      if (hostio_pread (img->backing.raw, buf, avail, offset) == -1) {
        qerror ("%s: read backing file at 0x%" PRIx64 ": %m",
                img->backing.path, offset);
        return -1;
      }
      break;
    case BACKING_NONE:
      abort ();
    }
  }
  memset ((char *) buf + avail, 0, count - avail);
  return 0;
}

/* Read the part [offset, offset+count) of the compressed cluster whose L2
 * entry is e. */
static int
read_compressed (struct qcow2_image *img, uint64_t e, void *buf,
                 uint64_t count, uint64_t offset)
{
  const struct qcow2_header *h = &img->hdr;
  uint64_t coffset, csize;
  uint64_t in_cluster = offset & (h->cluster_size - 1);
  CLEANUP_FREE uint8_t *in = NULL;
  CLEANUP_FREE uint8_t *out = NULL;

  qcow2_compressed (img, e, &coffset, &csize);
  /* csize is at most 2^(cluster_bits-8) sectors, so at most 2 clusters:
   * the allocation is bounded by cluster_bits. */
  in = malloc (csize);
  out = malloc (h->cluster_size);
  if (in == NULL || out == NULL) {
    qerror ("malloc: %m");
    errno = ENOMEM;
    return -1;
  }
  if (hostio_pread (img->file, in, csize, coffset) == -1) {
    qerror ("%s: read compressed cluster at 0x%" PRIx64 ": %m",
            img->file->name, coffset);
    return -1;
  }
  if (qcow2_decompress (h->compression_type, in, csize, out,
                        h->cluster_size) == -1) {
    qerror ("%s: guest offset 0x%" PRIx64 ": compressed cluster at host "
            "offset 0x%" PRIx64 " (%" PRIu64 " bytes) does not decompress "
            "to a full cluster", img->file->name, offset, coffset, csize);
    return -1;
  }
  memcpy (buf, out + in_cluster, count);
  return 0;
}

int
qcow2_read_source (struct qcow2_image *img, uint64_t source, void *buf,
                   uint64_t count, uint64_t offset)
{
  const uint64_t in_cluster = offset & (img->hdr.cluster_size - 1);

  assert (in_cluster + count <= img->hdr.cluster_size);
  switch (qcow2_entry_type (img, source)) {
  case ENTRY_UNALLOCATED:
    return read_backing (img, buf, count, offset);
  case ENTRY_COMPRESSED:
    return read_compressed (img, source, buf, count, offset);
  case ENTRY_NORMAL:
    if (hostio_pread (img->data, buf, count,
                      qcow2_entry_host (source) + in_cluster) == -1) {
      qerror ("%s: read at 0x%" PRIx64 ": %m", img->data->name,
              qcow2_entry_host (source) + in_cluster);
      return -1;
    }
    return 0;
  default:
    abort ();                   /* owed.c never holds zero sources */
  }
}

static int
read_host (struct qcow2_image *img, void *buf, uint64_t count, uint64_t host)
{
  if (hostio_pread (img->data, buf, count, host) == -1) {
    qerror ("%s: read at 0x%" PRIx64 ": %m", img->data->name, host);
    return -1;
  }
  return 0;
}

/* A data run: count bytes at host for guest offset.  A run the image
 * owns alone (copied) may cover owed sectors: those come from the
 * source, a cluster at a time. */
static int
read_data (struct qcow2_image *img, char *buf, uint64_t count,
           uint64_t offset, uint64_t host, bool copied)
{
  const uint64_t cs = img->hdr.cluster_size;

  if (!copied || !qcow2_owed_any (img))
    return read_host (img, buf, count, host);
  while (count > 0) {
    const uint64_t cluster = ROUND_DOWN (offset, cs);
    const uint64_t n = MIN (count, cluster + cs - offset);
    struct owed_view v;
    /* The bits first, then the host (invariant 2 of owed.c). */
    bool owed = qcow2_owed_peek (img, cluster, host - (offset - cluster), &v);

    if (read_host (img, buf, n, host) == -1)
      return -1;
    /* Each run of owed sectors in [offset, offset+n) from the source. */
    for (uint64_t a = offset, end = offset + n; owed && a < end; ) {
      uint64_t b = a;

      while (b < end && qcow2_owed_sector (&v, (b - cluster) / OWED_SECTOR))
        b = MIN (ROUND_DOWN (b, OWED_SECTOR) + OWED_SECTOR, end);
      if (b > a &&
          qcow2_read_source (img, v.source, buf + (a - offset), b - a,
                             a) == -1)
        return -1;
      a = b == a ? MIN (ROUND_DOWN (a, OWED_SECTOR) + OWED_SECTOR, end) : b;
    }
    buf += n;
    offset += n;
    host += n;
    count -= n;
  }
  return 0;
}

int
qcow2_pread (struct qcow2_image *img, void *buf, uint64_t count,
             uint64_t offset)
{
  char *p = buf;

  while (count > 0) {
    struct qcow2_run run;
    unsigned io = qcow2_io_begin (img);  /* the run's clusters stay ours */
    int r = qcow2_map (img, offset, count, &run);

    if (r == 0) {
      switch (run.type) {
      case RUN_DATA:
        r = read_data (img, p, run.length, offset, run.host_offset,
                       run.copied);
        break;
      case RUN_ZERO:
        memset (p, 0, run.length);
        break;
      case RUN_UNALLOCATED:
        r = read_backing (img, p, run.length, offset);
        break;
      case RUN_COMPRESSED:
        r = read_compressed (img, run.l2_entry, p, run.length, offset);
        break;
      }
    }
    qcow2_io_end (img, io);
    if (r == -1)
      return -1;
    p += run.length;
    offset += run.length;
    count -= run.length;
  }
  return 0;
}
