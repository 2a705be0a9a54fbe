/* qcow2j lib: creating a new, empty qcow2 image.
 *
 * An image made here must be one that QEMU would have made itself, so that
 * qemu-img check finds nothing to say about it and every other qcow2 tool
 * accepts it: version 3, a 112-byte header, QEMU's feature name table,
 * and every metadata cluster counted exactly once.  The options are
 * qemu-img's: backing file and format, refcount width, extended L2
 * entries, compression type, lazy refcounts, and preallocation (off,
 * metadata, falloc, full).  Like QEMU (since 5.0), the feature name table
 * is left out with clusters of 4 KiB and less: its 392 bytes would leave
 * next to no room in cluster 0 for a backing file name added later.  The
 * parameters are refused where QEMU refuses them, with the same limits,
 * before the file is touched.
 *
 * QEMU builds an image by creating a tiny one and growing its L1 table,
 * which moves tables around as they grow.  Here the final layout is
 * computed up front instead, which is simpler and just as valid:
 *
 *   cluster 0            header and header extensions
 *   reftable_clusters    refcount table
 *   refblocks            refcount blocks, covering every cluster below
 *   l1_clusters          L1 table, all entries zero (nothing allocated)
 *   l2_tables            with preallocation: L2 tables, then
 *   data_clusters        the data clusters they map, in guest order
 *
 * For ordinary sizes that is header, refcount table, refcount block, L1
 * at clusters 0, 1, 2, 3, exactly as QEMU lays them out.  A huge L1 table
 * with small clusters (128 GiB with 512-byte clusters needs a 32 MiB L1,
 * 65536 clusters) needs several refcount blocks, and those may need a
 * refcount table of several clusters: the sizes are iterated to a fixed
 * point.  The file ends at the end of the last L1 (or data) cluster.
 *
 * The header is written last, after the tables are durable, so a crash
 * part way leaves a file that no tool takes for a qcow2 image rather than
 * a header pointing at tables that were never written.
 */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backing.h"
#include "byteorder.h"
#include "cleanup.h"
#include "create.h"
#include "format.h"
#include "header.h"
#include "image.h"
#include "lock.h"
#include "log.h"
#include "minmax.h"

/* What QEMU writes: the version 3 header plus the compression_type byte,
 * padded to a multiple of 8. */
#define CREATE_HEADER_LENGTH 112
#define FEATURE_ENTRY_LEN 48            /* type, bit, 46-byte name */

/* QEMU writes the table only into clusters larger than this. */
#define FEATURE_TABLE_MIN_CLUSTER 4096
/* The table (8 entries) fits in a cluster above that size:
 * 112 + 8 + 8 * 48 + 8 = 512. */

/* Tables are written from a buffer of this size, reused. */
#define CHUNK (1u << 20)

struct layout {
  uint32_t cluster_bits;
  uint64_t cluster_size;
  uint32_t refcount_order;
  uint64_t l1_entries;
  uint64_t reftable_clusters;
  uint64_t refblocks;
  uint64_t l1_clusters;
  uint64_t l2_tables;           /* preallocated L2 tables */
  uint64_t data_clusters;       /* preallocated data clusters */
  uint64_t nr_clusters;         /* total: the file is this many clusters */
  uint64_t reftable_offset;
  uint64_t refblock_offset;
  uint64_t l1_offset;
  uint64_t l2_offset;
  uint64_t data_offset;
};

/* Report refused parameters: prefix the file name, set EINVAL, return -1. */
static int __attribute__ ((format (printf, 2, 3)))
refuse (const char *path, const char *fs, ...)
{
  char msg[512];
  va_list args;

  va_start (args, fs);
  vsnprintf (msg, sizeof msg, fs, args);
  va_end (args);
  qerror ("%s: cannot create qcow2 image: %s", path, msg);
  errno = EINVAL;
  return -1;
}

static uint64_t
div_round_up (uint64_t n, uint64_t d)
{
  return n / d + (n % d != 0);
}

/* Header, extensions and the backing file name, in cluster 0: where the
 * name goes (0 without one), or -1 if it does not fit. */
static int64_t
backing_name_offset (const struct qcow2_create_options *o,
                     uint64_t cluster_size)
{
  uint64_t end = CREATE_HEADER_LENGTH;

  if (o->backing_file == NULL)
    return 0;
  end += 8 + ROUND_UP (strlen (o->backing_format), 8);
  if (cluster_size > FEATURE_TABLE_MIN_CLUSTER)
    end += 8 + qcow2_nr_qemu_features * FEATURE_ENTRY_LEN;
  end += 8;                                     /* end marker */
  if (end + strlen (o->backing_file) > cluster_size)
    return -1;
  return end;
}

/* Check the parameters against QEMU's limits and compute the layout. */
static int
plan_layout (const char *path, const struct qcow2_create_options *o,
             uint64_t size, struct layout *l)
{
  const uint64_t cluster_size = o->cluster_size;
  const bool extended_l2 = o->extended_l2;
  uint64_t l2_entries, bytes_per_l1, max_size;
  uint64_t refblock_entries, reftable_entries;

  memset (l, 0, sizeof *l);

  if (cluster_size < (1u << QCOW2_MIN_CLUSTER_BITS) ||
      cluster_size > (1u << QCOW2_MAX_CLUSTER_BITS) ||
      (cluster_size & (cluster_size - 1)) != 0)
    return refuse (path, "cluster size %" PRIu64 " is not a power of two "
                   "between %u and %u", cluster_size,
                   1u << QCOW2_MIN_CLUSTER_BITS,
                   1u << QCOW2_MAX_CLUSTER_BITS);
  if (extended_l2 && cluster_size < (1u << QCOW2_MIN_EXTL2_CLUSTER_BITS))
    return refuse (path, "extended L2 entries need a cluster size of at "
                   "least %u bytes (cluster size %" PRIu64 ")",
                   1u << QCOW2_MIN_EXTL2_CLUSTER_BITS, cluster_size);
  if (o->refcount_bits == 0 || o->refcount_bits > 64 ||
      (o->refcount_bits & (o->refcount_bits - 1)) != 0)
    return refuse (path, "refcount width %u is not a power of two from 1 "
                   "to 64 bits", o->refcount_bits);
  if (o->backing_file != NULL) {
    if (o->backing_format == NULL)
      return refuse (path, "a backing file needs its format (qcow2 or raw)");
    if (strcmp (o->backing_format, "qcow2") != 0 &&
        strcmp (o->backing_format, "raw") != 0)
      return refuse (path, "backing file format \"%s\": only qcow2 and raw "
                     "are supported", o->backing_format);
    if (o->backing_file[0] == '\0' ||
        strlen (o->backing_file) > QCOW2_MAX_BACKING_NAME)
      return refuse (path, "the backing file name must be 1 to %d bytes",
                     QCOW2_MAX_BACKING_NAME);
    if (backing_name_offset (o, cluster_size) == -1)
      return refuse (path, "the backing file name does not fit in the "
                     "header cluster: try a larger cluster size");
    if (o->prealloc != QCOW2_PREALLOC_OFF && !extended_l2)
      return refuse (path, "backing file and preallocation can only be "
                     "used at the same time if extended L2 entries are on");
  }
  else if (o->backing_format != NULL)
    return refuse (path, "a backing format without a backing file");
  l->cluster_size = cluster_size;
  l->cluster_bits = __builtin_ctzll (cluster_size);
  l->refcount_order = __builtin_ctz (o->refcount_bits);

  /* The L1 table may be at most QCOW2_MAX_L1_BYTES.  This is at most
   * 2^61 bytes (2 MiB clusters), so QEMU's other limit, about 2^63, never
   * matters; nor can anything here overflow. */
  l2_entries = cluster_size / (extended_l2 ? 16 : 8);
  bytes_per_l1 = cluster_size * l2_entries;
  max_size = (uint64_t) (QCOW2_MAX_L1_BYTES / 8) * bytes_per_l1;
  if (size > max_size)
    return refuse (path, "size %" PRIu64 " is too large for cluster size %"
                   PRIu64 "%s (maximum %" PRIu64 "): try a larger cluster "
                   "size", size, cluster_size,
                   extended_l2 ? " with extended L2 entries" : "", max_size);
  l->l1_entries = div_round_up (size, bytes_per_l1);
  l->l1_clusters = div_round_up (l->l1_entries * 8, cluster_size);
  if (o->prealloc != QCOW2_PREALLOC_OFF) {
    l->l2_tables = l->l1_entries;
    l->data_clusters = div_round_up (size, cluster_size);
  }

  /* Refcount blocks must cover every cluster of the file, including
   * themselves and the refcount table, which must in turn point at every
   * refcount block.  Both only grow, so this terminates (in two or three
   * rounds). */
  refblock_entries = cluster_size * 8 >> l->refcount_order;
  reftable_entries = cluster_size / 8;
  l->reftable_clusters = 1;
  l->refblocks = 1;
  for (;;) {
    uint64_t total = 1 + l->reftable_clusters + l->refblocks +
      l->l1_clusters + l->l2_tables + l->data_clusters;
    uint64_t need_blocks = div_round_up (total, refblock_entries);
    uint64_t need_table = div_round_up (need_blocks, reftable_entries);

    if (need_blocks <= l->refblocks && need_table <= l->reftable_clusters) {
      l->nr_clusters = total;
      break;
    }
    l->refblocks = MAX (l->refblocks, need_blocks);
    l->reftable_clusters = MAX (l->reftable_clusters, need_table);
  }
  if (l->reftable_clusters * cluster_size > QCOW2_MAX_REFTABLE_BYTES)
    return refuse (path, "the refcount table would be too large: try a "
                   "larger cluster size or a wider refcount");

  l->reftable_offset = cluster_size;
  l->refblock_offset = l->reftable_offset + l->reftable_clusters * cluster_size;
  /* No L1 table (size 0): QEMU writes offset 0. */
  l->l1_offset = l->l1_entries ?
    l->refblock_offset + l->refblocks * cluster_size : 0;
  l->l2_offset = l->refblock_offset +
    (l->refblocks + l->l1_clusters) * cluster_size;
  l->data_offset = l->l2_offset + l->l2_tables * cluster_size;
  return 0;
}

/* Cluster 0: the header, the backing format and feature name table
 * extensions, and the backing file name. */
static void
fill_header (uint8_t *h, const struct layout *l,
             const struct qcow2_create_options *o, uint64_t size)
{
  uint8_t *ext = h + CREATE_HEADER_LENGTH;
  uint64_t incompatible = 0;

  if (o->extended_l2)
    incompatible |= QCOW2_INCOMPAT_EXTL2;
  if (o->zstd)
    incompatible |= QCOW2_INCOMPAT_COMPRESSION;

  put_be32 (h, QCOW2_MAGIC);
  put_be32 (h + 4, 3);                          /* version */
  /* 8: backing_file_offset, 16: backing_file_size: below */
  put_be32 (h + 20, l->cluster_bits);
  put_be64 (h + 24, size);
  /* 32: crypt_method: none */
  put_be32 (h + 36, l->l1_entries);             /* l1_size */
  put_be64 (h + 40, l->l1_offset);
  put_be64 (h + 48, l->reftable_offset);
  put_be32 (h + 56, l->reftable_clusters);
  /* 60: nb_snapshots, 64: snapshots_offset: none */
  put_be64 (h + QCOW2_OFF_INCOMPATIBLE, incompatible);
  put_be64 (h + 80, o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
  /* 88: autoclear_features: none */
  put_be32 (h + 96, l->refcount_order);
  put_be32 (h + 100, CREATE_HEADER_LENGTH);
  h[QCOW2_OFF_COMPRESSION_TYPE] = o->zstd ? QCOW2_COMPRESSION_ZSTD
    : QCOW2_COMPRESSION_ZLIB;

  if (o->backing_file != NULL) {
    size_t len = strlen (o->backing_format);

    put_be32 (ext, QCOW2_EXT_BACKING_FORMAT);
    put_be32 (ext + 4, len);
    memcpy (ext + 8, o->backing_format, len);
    ext += 8 + ROUND_UP (len, 8);
  }
  if (l->cluster_size > FEATURE_TABLE_MIN_CLUSTER) {
    put_be32 (ext, QCOW2_EXT_FEATURE_NAMES);
    put_be32 (ext + 4, qcow2_nr_qemu_features * FEATURE_ENTRY_LEN);
    for (size_t i = 0; i < qcow2_nr_qemu_features; i++) {
      uint8_t *e = ext + 8 + i * FEATURE_ENTRY_LEN;

      e[0] = qcow2_qemu_features[i].type;
      e[1] = qcow2_qemu_features[i].bit;
      memcpy (e + 2, qcow2_qemu_features[i].name, strlen (qcow2_qemu_features[i].name));
    }
  }
  /* Then the end-of-extensions marker: 8 zero bytes, already zero; and
   * the backing file name after it, as QEMU puts it. */
  if (o->backing_file != NULL) {
    uint64_t name_offset = backing_name_offset (o, l->cluster_size);
    size_t len = strlen (o->backing_file);

    put_be64 (h + QCOW2_OFF_BACKING_FILE_OFFSET, name_offset);
    put_be32 (h + 16, len);
    memcpy (h + name_offset, o->backing_file, len);
  }
}

/* Set refcount entry c of a refcount block array to 1.  Entries narrower
 * than a byte fill each byte from its least significant bit, as QEMU
 * reads them. */
static void
set_refcount_one (uint8_t *blocks, uint32_t order, uint64_t c)
{
  switch (order) {
  case 0: case 1: case 2:
    blocks[(c << order) / 8] |= 1 << ((c << order) % 8);
    break;
  case 3:
    blocks[c] = 1;
    break;
  case 4:
    put_be16 (blocks + c * 2, 1);
    break;
  case 5:
    put_be32 (blocks + c * 4, 1);
    break;
  default:
    put_be64 (blocks + c * 8, 1);
    break;
  }
}

/* The refcount table and the refcount blocks, which are contiguous: the
 * blocks together are one array of refcounts indexed by cluster. */
static void
fill_refcounts (uint8_t *buf, const struct layout *l)
{
  uint8_t *blocks = buf + l->reftable_clusters * l->cluster_size;

  for (uint64_t i = 0; i < l->refblocks; i++)
    put_be64 (buf + i * 8, l->refblock_offset + i * l->cluster_size);
  for (uint64_t c = 0; c < l->nr_clusters; c++)
    set_refcount_one (blocks, l->refcount_order, c);
}

static int
write_all (int fd, const char *path, const char *what,
           const void *buf, size_t count, uint64_t offset)
{
  const uint8_t *p = buf;

  while (count > 0) {
    ssize_t r = pwrite (fd, p, count, offset);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == 0)
      errno = ENOSPC;
    if (r <= 0) {
      qerror ("%s: write %s: %m", path, what);
      return -1;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* Entry i of a preallocated table (an L1 table pointing at the L2
 * tables, or the L2 tables pointing at the data clusters), or 0 past
 * the last one.  With extended L2 entries the subcluster bitmap stays
 * zero: allocated, but reading as unallocated (as QEMU makes it). */
static uint64_t
table_entry (uint64_t base, uint64_t nr, uint64_t cs, uint64_t i)
{
  return i < nr ? (base + i * cs) | QCOW_OFLAG_COPIED : 0;
}

/* Write len bytes of a table at offset: zeroes, or when nr > 0 entries
 * of stride bytes pointing at nr consecutive clusters from base. */
static int
write_table (int fd, const char *path, const char *what, uint8_t *chunk,
             uint64_t offset, uint64_t len, unsigned stride,
             uint64_t base, uint64_t nr, uint64_t cs)
{
  for (uint64_t done = 0; done < len; done += CHUNK) {
    const uint64_t n = MIN ((uint64_t) CHUNK, len - done);

    memset (chunk, 0, n);
    for (uint64_t b = 0; nr > 0 && b < n; b += stride)
      put_be64 (chunk + b, table_entry (base, nr, cs, (done + b) / stride));
    if (write_all (fd, path, what, chunk, n, offset + done) == -1)
      return -1;
  }
  return 0;
}

/* The data clusters of preallocation=falloc or full. */
static int
preallocate_data (int fd, const char *path, const struct layout *l,
                  enum qcow2_prealloc prealloc, uint8_t *chunk)
{
  const uint64_t len = l->data_clusters * l->cluster_size;

  if (prealloc == QCOW2_PREALLOC_FALLOC) {
    if (len > 0 && fallocate (fd, 0, l->data_offset, len) == -1) {
      qerror ("%s: preallocate: fallocate: %m", path);
      return -1;
    }
    return 0;
  }
  memset (chunk, 0, CHUNK);
  for (uint64_t done = 0; done < len; done += CHUNK)
    if (write_all (fd, path, "preallocated data", chunk,
                   MIN ((uint64_t) CHUNK, len - done),
                   l->data_offset + done) == -1)
      return -1;
  return 0;
}

/* Write the whole image to fd, which is empty. */
static int
write_image (int fd, const char *path, const struct layout *l,
             const struct qcow2_create_options *o, uint64_t size)
{
  const uint64_t cs = l->cluster_size;
  const size_t tables_len = (l->reftable_clusters + l->refblocks) * cs;
  const unsigned l2_stride = o->extended_l2 ? 16 : 8;
  CLEANUP_FREE uint8_t *header = calloc (1, cs);
  CLEANUP_FREE uint8_t *tables = calloc (1, tables_len);
  CLEANUP_FREE uint8_t *chunk = malloc (CHUNK);

  if (header == NULL || tables == NULL || chunk == NULL) {
    qerror ("calloc: %m");
    return -1;
  }
  fill_header (header, l, o, size);
  fill_refcounts (tables, l);

  if (write_all (fd, path, "refcount table", tables, tables_len,
                 l->reftable_offset) == -1 ||
      write_table (fd, path, "L1 table", chunk, l->l1_offset,
                   l->l1_clusters * cs, 8, l->l2_offset, l->l2_tables,
                   cs) == -1 ||
      write_table (fd, path, "L2 table", chunk, l->l2_offset,
                   l->l2_tables * cs, l2_stride, l->data_offset,
                   l->data_clusters, cs) == -1)
    return -1;
  if (o->prealloc == QCOW2_PREALLOC_METADATA) {
    if (ftruncate (fd, l->nr_clusters * cs) == -1) {
      qerror ("%s: truncate: %m", path);
      return -1;
    }
  }
  else if (o->prealloc != QCOW2_PREALLOC_OFF &&
           preallocate_data (fd, path, l, o->prealloc, chunk) == -1)
    return -1;
  if (fdatasync (fd) == -1) {
    qerror ("%s: fdatasync: %m", path);
    return -1;
  }
  if (write_all (fd, path, "header", header, cs, 0) == -1)
    return -1;
  if (fsync (fd) == -1) {
    qerror ("%s: fsync: %m", path);
    return -1;
  }
  return 0;
}

/* The virtual size of the backing file, which must exist: its name is
 * relative to the new image's directory, as QEMU looks it up. */
static int
backing_size (const char *path, const struct qcow2_create_options *o,
              uint64_t *size)
{
  CLEANUP_FREE char *dir = qcow2_dirname (path);
  CLEANUP_FREE char *bpath = NULL;
  const struct qcow2_open_options opts = { .lock = false };
  struct qcow2_image *img;
  struct stat st;

  if (dir == NULL)
    return -1;
  if (o->backing_file[0] == '/' ? (bpath = strdup (o->backing_file)) == NULL
      : asprintf (&bpath, "%s/%s", dir, o->backing_file) == -1) {
    bpath = NULL;
    qerror ("malloc: %m");
    return -1;
  }
  if (stat (bpath, &st) == -1) {
    qerror ("%s: cannot create qcow2 image: backing file %s: %m (a "
            "relative name is relative to the new image's directory)",
            path, bpath);
    return -1;
  }
  if (strcmp (o->backing_format, "raw") == 0) {
    *size = st.st_size;
    return 0;
  }
  img = qcow2_open (bpath, &opts);
  if (img == NULL) {
    qerror ("%s: cannot create qcow2 image: backing file %s is not a "
            "qcow2 image qcow2j can open", path, bpath);
    return -1;
  }
  *size = qcow2_size (img);
  qcow2_close (img);
  return 0;
}

/* Make a new directory entry durable. */
static int
sync_parent_dir (const char *path)
{
  CLEANUP_FREE char *copy = strdup (path);
  const char *dir;
  int dfd, r;

  if (copy == NULL) {
    qerror ("strdup: %m");
    return -1;
  }
  dir = dirname (copy);
  dfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd == -1) {
    qerror ("%s: open directory: %m", dir);
    return -1;
  }
  r = fsync (dfd);
  if (r == -1)
    qerror ("%s: fsync directory: %m", dir);
  close (dfd);
  return r;
}

/* Open path for writing, creating it if it does not exist (and failing
 * with EEXIST if it does, when exclusive).  Sets *created. */
static int
open_target (const char *path, bool exclusive, bool *created)
{
  struct stat st;
  int fd;

  *created = false;
  fd = open (path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd >= 0) {
    *created = true;
    return fd;
  }
  if (errno != EEXIST || exclusive) {
    qerror ("%s: create: %m", path);
    return -1;
  }

  /* Overwrite the existing file, but only a regular file, and only once
   * no one else (QEMU, or qcow2j serving it) is using it. */
  fd = open (path, O_RDWR | O_CLOEXEC);
  if (fd == -1) {
    qerror ("%s: open: %m", path);
    return -1;
  }
  if (fstat (fd, &st) == -1) {
    qerror ("%s: fstat: %m", path);
    goto fail;
  }
  if (!S_ISREG (st.st_mode)) {
    qerror ("%s: cannot create qcow2 image: not a regular file", path);
    errno = EINVAL;
    goto fail;
  }
  return fd;

 fail:
  {
    int saved_errno = errno;
    close (fd);
    errno = saved_errno;
  }
  return -1;
}

int
qcow2_create_image (const char *path, const struct qcow2_create_options *o,
                    bool exclusive)
{
  struct layout l;
  uint64_t size = o->size, bsize = 0;
  bool created;
  int fd, saved_errno;

  /* Like qemu-img: a backing file must exist, and gives the size when
   * none is asked; sizes are rounded up to whole sectors. */
  if (o->backing_file != NULL && o->backing_format != NULL &&
      backing_size (path, o, &bsize) == -1)
    return -1;
  if (o->size == -1) {
    if (o->backing_file == NULL)
      return refuse (path, "no size, and no backing file to take it from");
    size = bsize;
  }
  size = ROUND_UP (size, QCOW2_COMPRESSED_SECTOR);
  if (plan_layout (path, o, size, &l) == -1)
    return -1;

  fd = open_target (path, exclusive, &created);
  if (fd == -1)
    return -1;
  if (qcow2_lock_fd (fd, path, true) == -1)
    goto fail;
  if (!created && ftruncate (fd, 0) == -1) {
    qerror ("%s: truncate: %m", path);
    goto fail;
  }
  if (write_image (fd, path, &l, o, size) == -1)
    goto fail;
  if (close (fd) == -1) {
    fd = -1;
    qerror ("%s: close: %m", path);
    goto fail;
  }
  fd = -1;
  if (created && sync_parent_dir (path) == -1)
    goto fail;

  qdebug ("%s: created qcow2 image: size %" PRIu64 ", cluster size %"
          PRIu64 "%s, %u-bit refcounts, %" PRIu64 " L1 entries, %" PRIu64
          " refcount block(s), %" PRIu64 " bytes", path, size,
          o->cluster_size, o->extended_l2 ? " (extended L2)" : "",
          o->refcount_bits, l.l1_entries, l.refblocks,
          l.nr_clusters * l.cluster_size);
  return 0;

 fail:
  saved_errno = errno;
  if (fd >= 0)
    close (fd);
  if (created)
    unlink (path);
  errno = saved_errno;
  return -1;
}

int
qcow2_create (const char *path, uint64_t size, uint64_t cluster_size,
              bool extended_l2, bool exclusive)
{
  const struct qcow2_create_options o = {
    .size = size, .cluster_size = cluster_size, .refcount_bits = 16,
    .extended_l2 = extended_l2,
  };

  return qcow2_create_image (path, &o, exclusive);
}
