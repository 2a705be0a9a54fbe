/* qcow2j lib: creating a new, empty qcow2 image.
 *
 * An image made here must be one that QEMU would have made itself, so that
 * qemu-img check finds nothing to say about it and every other qcow2 tool
 * accepts it: version 3, a 112-byte header (with compression_type zlib),
 * 16-bit refcounts, QEMU's feature name table, and every metadata cluster
 * counted exactly once.  Like QEMU (since 5.0), the feature name table is
 * left out with clusters of 4 KiB and less: its 392 bytes would leave next
 * to no room in cluster 0 for a backing file name added later.  The parameters are refused where QEMU refuses
 * them, with the same limits, before the file is touched.
 *
 * QEMU builds an image by creating a tiny one and growing its L1 table,
 * which moves tables around as they grow.  Here the final layout is
 * computed up front instead, which is simpler and just as valid:
 *
 *   cluster 0            header and header extensions
 *   reftable_clusters    refcount table
 *   refblocks            refcount blocks, covering every cluster below
 *   l1_clusters          L1 table, all entries zero (nothing allocated)
 *
 * For ordinary sizes that is header, refcount table, refcount block, L1
 * at clusters 0, 1, 2, 3, exactly as QEMU lays them out.  A huge L1 table
 * with small clusters (128 GiB with 512-byte clusters needs a 32 MiB L1,
 * 65536 clusters) needs several refcount blocks, and those may need a
 * refcount table of several clusters: the sizes are iterated to a fixed
 * point.  The file ends at the end of the last L1 cluster.
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

#include "byteorder.h"
#include "cleanup.h"
#include "create.h"
#include "format.h"
#include "header.h"
#include "lock.h"
#include "log.h"
#include "minmax.h"

/* What QEMU writes: the version 3 header plus the compression_type byte,
 * padded to a multiple of 8. */
#define CREATE_HEADER_LENGTH 112
#define CREATE_REFCOUNT_ORDER 4         /* 16-bit refcounts */
#define FEATURE_ENTRY_LEN 48            /* type, bit, 46-byte name */

/* QEMU writes the table only into clusters larger than this. */
#define FEATURE_TABLE_MIN_CLUSTER 4096
/* The table (8 entries) fits in a cluster above that size:
 * 112 + 8 + 8 * 48 + 8 = 512. */

struct layout {
  uint32_t cluster_bits;
  uint64_t cluster_size;
  uint64_t l1_entries;
  uint64_t reftable_clusters;
  uint64_t refblocks;
  uint64_t l1_clusters;
  uint64_t nr_clusters;         /* total: the file is this many clusters */
  uint64_t reftable_offset;
  uint64_t refblock_offset;
  uint64_t l1_offset;
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

/* Check the parameters against QEMU's limits and compute the layout. */
static int
plan_layout (const char *path, uint64_t size, uint64_t cluster_size,
             bool extended_l2, struct layout *l)
{
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
  l->cluster_size = cluster_size;
  l->cluster_bits = __builtin_ctzll (cluster_size);

  /* QEMU refuses sizes that are not whole sectors (qemu-img silently
   * rounds them up; better to say so than to change the size asked for). */
  if (size == 0)
    return refuse (path, "size must not be zero");
  if (!IS_ALIGNED (size, QCOW2_COMPRESSED_SECTOR))
    return refuse (path, "size %" PRIu64 " is not a multiple of %d bytes",
                   size, QCOW2_COMPRESSED_SECTOR);

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

  /* Refcount blocks must cover every cluster of the file, including
   * themselves and the refcount table, which must in turn point at every
   * refcount block.  Both only grow, so this terminates (in two or three
   * rounds). */
  refblock_entries = cluster_size * 8 >> CREATE_REFCOUNT_ORDER;
  reftable_entries = cluster_size / 8;
  l->reftable_clusters = 1;
  l->refblocks = 1;
  for (;;) {
    uint64_t total = 1 + l->reftable_clusters + l->refblocks + l->l1_clusters;
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
    /* Cannot happen within the L1 limit; kept as a guard. */
    return refuse (path, "the refcount table would be too large");

  l->reftable_offset = cluster_size;
  l->refblock_offset = l->reftable_offset + l->reftable_clusters * cluster_size;
  l->l1_offset = l->refblock_offset + l->refblocks * cluster_size;
  return 0;
}

/* Cluster 0: the header and the feature name table extension. */
static void
fill_header (uint8_t *h, const struct layout *l, uint64_t size,
             bool extended_l2)
{
  uint8_t *ext = h + CREATE_HEADER_LENGTH;

  put_be32 (h, QCOW2_MAGIC);
  put_be32 (h + 4, 3);                          /* version */
  /* 8: backing_file_offset, 16: backing_file_size: none */
  put_be32 (h + 20, l->cluster_bits);
  put_be64 (h + 24, size);
  /* 32: crypt_method: none */
  put_be32 (h + 36, l->l1_entries);             /* l1_size */
  put_be64 (h + 40, l->l1_offset);
  put_be64 (h + 48, l->reftable_offset);
  put_be32 (h + 56, l->reftable_clusters);
  /* 60: nb_snapshots, 64: snapshots_offset: none */
  put_be64 (h + QCOW2_OFF_INCOMPATIBLE,
            extended_l2 ? QCOW2_INCOMPAT_EXTL2 : 0);
  /* 80: compatible_features, 88: autoclear_features: none */
  put_be32 (h + 96, CREATE_REFCOUNT_ORDER);
  put_be32 (h + 100, CREATE_HEADER_LENGTH);
  h[QCOW2_OFF_COMPRESSION_TYPE] = QCOW2_COMPRESSION_ZLIB;

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
  /* Then the end-of-extensions marker: 8 zero bytes, already zero. */
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
    put_be16 (blocks + c * 2, 1);
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

/* Write the whole image to fd, which is empty. */
static int
write_image (int fd, const char *path, const struct layout *l,
             uint64_t size, bool extended_l2)
{
  const uint64_t cs = l->cluster_size;
  const size_t tables_len = (l->reftable_clusters + l->refblocks) * cs;
  const uint64_t l1_len = l->l1_clusters * cs;
  const size_t zero_len = MIN (l1_len, (uint64_t) 1 << 20);
  CLEANUP_FREE uint8_t *header = calloc (1, cs);
  CLEANUP_FREE uint8_t *tables = calloc (1, tables_len);
  CLEANUP_FREE uint8_t *zero = calloc (1, zero_len);

  if (header == NULL || tables == NULL || zero == NULL) {
    qerror ("calloc: %m");
    return -1;
  }
  fill_header (header, l, size, extended_l2);
  fill_refcounts (tables, l);

  if (write_all (fd, path, "refcount table", tables, tables_len,
                 l->reftable_offset) == -1)
    return -1;
  for (uint64_t done = 0; done < l1_len; done += zero_len)
    if (write_all (fd, path, "L1 table", zero, MIN (zero_len, l1_len - done),
                   l->l1_offset + done) == -1)
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
qcow2_create (const char *path, uint64_t size, uint64_t cluster_size,
              bool extended_l2, bool exclusive)
{
  struct layout l;
  bool created;
  int fd, saved_errno;

  if (plan_layout (path, size, cluster_size, extended_l2, &l) == -1)
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
  if (write_image (fd, path, &l, size, extended_l2) == -1)
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
          PRIu64 "%s, %" PRIu64 " L1 entries, %" PRIu64 " refcount "
          "block(s), %" PRIu64 " bytes", path, size, cluster_size,
          extended_l2 ? " (extended L2)" : "", l.l1_entries, l.refblocks,
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
