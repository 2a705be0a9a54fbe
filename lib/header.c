/* qcow2j lib: reading and validating the qcow2 header (cluster 0).
 *
 * This is the first code that sees an untrusted file.  Every field is
 * checked here, before anything is allocated or read on its say-so: offsets
 * must be aligned and inside the file, sizes inside QEMU's limits, tables
 * must not overlap the header or each other.  A message always names the
 * field as qcow2.txt spells it and the value found, so that a user looking
 * at a refused image knows what is wrong with it.
 */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "cleanup.h"
#include "format.h"
#include "header.h"
#include "journal-ext.h"
#include "journal-format.h"
#include "log.h"
#include "minmax.h"

const struct qcow2_known_feature qcow2_qemu_features[] = {
  { 0, 0, "dirty bit" },
  { 0, 1, "corrupt bit" },
  { 0, 2, "external data file" },
  { 0, 3, "compression type" },
  { 0, 4, "extended L2 entries" },
  { 1, 0, "lazy refcounts" },
  { 2, 0, "bitmaps" },
  { 2, 1, "raw external data" },
};
const size_t qcow2_nr_qemu_features =
  sizeof qcow2_qemu_features / sizeof qcow2_qemu_features[0];

/* Report a malformed image: prefix the file name, set EINVAL, return -1. */
static int __attribute__ ((format (printf, 2, 3)))
invalid (struct hostio *io, const char *fs, ...)
{
  char msg[512];
  va_list args;

  va_start (args, fs);
  vsnprintf (msg, sizeof msg, fs, args);
  va_end (args);
  qerror ("%s: %s", io->name, msg);
  errno = EINVAL;
  return -1;
}

uint64_t
qcow2_size_to_l1 (const struct qcow2_header *h, uint64_t size)
{
  unsigned shift = h->cluster_bits + h->l2_bits;

  return (size >> shift) + ((size & ((1ULL << shift) - 1)) != 0);
}

const char *
qcow2_feature_name (const struct qcow2_header *h, unsigned type, unsigned bit)
{
  for (size_t i = 0; i < h->nr_feature_names; i++)
    if (h->feature_names[i].type == type && h->feature_names[i].bit == bit)
      return h->feature_names[i].name;
  return NULL;
}

/* A table of 'bytes' bytes at 'offset' must be cluster aligned, lie past
 * the header cluster, and end inside the file. */
static int
check_table (struct hostio *io, const struct qcow2_header *h,
             uint64_t file_size, const char *field, uint64_t offset,
             uint64_t bytes)
{
  if (!IS_ALIGNED (offset, h->cluster_size))
    return invalid (io, "%s 0x%" PRIx64 " is not aligned to the cluster "
                    "size (%" PRIu64 ")", field, offset, h->cluster_size);
  if (offset < h->cluster_size)
    return invalid (io, "%s 0x%" PRIx64 " overlaps the image header",
                    field, offset);
  if (offset > file_size || bytes > file_size - offset)
    return invalid (io, "%s 0x%" PRIx64 " (%" PRIu64 " bytes) is past the "
                    "end of the file (%" PRIu64 " bytes)",
                    field, offset, bytes, file_size);
  return 0;
}

static char *
copy_string (struct hostio *io, const uint8_t *p, size_t len,
             const char *what)
{
  char *s;

  if (memchr (p, 0, len) != NULL) {
    invalid (io, "%s contains a NUL byte", what);
    return NULL;
  }
  s = malloc (len + 1);
  if (s == NULL) {
    qerror ("malloc: %m");
    return NULL;
  }
  memcpy (s, p, len);
  s[len] = '\0';
  return s;
}

/* Walk the header extensions between header_length and end. */
static int
parse_extensions (struct hostio *io, struct qcow2_header *h,
                  const uint8_t *buf, uint64_t end, uint64_t file_size)
{
  uint64_t pos = h->header_length;

  h->extensions_end = end;
  h->has_end_marker = false;
  while (pos < end) {
    uint32_t type, len;
    const uint8_t *data;

    if (end - pos < 8)
      return invalid (io, "header extension at offset %" PRIu64 " is "
                      "truncated", pos);
    type = get_be32 (buf + pos);
    len = get_be32 (buf + pos + 4);
    if (type == QCOW2_EXT_END) {
      h->extensions_end = pos;
      h->has_end_marker = true;
      return 0;
    }
    if (len > end - pos - 8)
      return invalid (io, "header extension 0x%08" PRIx32 " at offset %"
                      PRIu64 ": length %" PRIu32 " runs past the end of "
                      "the header area (%" PRIu64 ")", type, pos, len, end);
    data = buf + pos + 8;

    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT:
      if (len > QCOW2_MAX_BACKING_FORMAT)
        return invalid (io, "backing format extension: length %" PRIu32
                        " is too long (maximum %d)", len,
                        QCOW2_MAX_BACKING_FORMAT);
      free (h->backing_format);
      h->backing_format = copy_string (io, data, len, "backing format");
      if (h->backing_format == NULL)
        return -1;
      break;

    case QCOW2_EXT_FEATURE_NAMES: {
      size_t n = len / 48;

      free (h->feature_names);
      h->feature_names = calloc (n ? n : 1, sizeof *h->feature_names);
      if (h->feature_names == NULL) {
        qerror ("calloc: %m");
        return -1;
      }
      h->nr_feature_names = n;
      for (size_t i = 0; i < n; i++) {
        struct qcow2_feature_name *f = &h->feature_names[i];
        f->type = data[i * 48];
        f->bit = data[i * 48 + 1];
        memcpy (f->name, data + i * 48 + 2, QCOW2_FEATURE_NAME_LEN);
        f->name[QCOW2_FEATURE_NAME_LEN] = '\0';
      }
      break;
    }

    case QCOW2_EXT_BITMAPS:
      if (len != 24)
        return invalid (io, "bitmaps extension: length %" PRIu32
                        " is not 24", len);
      h->has_bitmaps_ext = true;
      h->nb_bitmaps = get_be32 (data);
      h->bitmap_directory_size = get_be64 (data + 8);
      h->bitmap_directory_offset = get_be64 (data + 16);
      /* Only meaningful while autoclear bit 0 says it is consistent;
       * otherwise QEMU ignores it, and so do we. */
      if (h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) {
        if (h->nb_bitmaps > 65535)
          return invalid (io, "nb_bitmaps %" PRIu32 " is too large "
                          "(maximum 65535)", h->nb_bitmaps);
        if (h->bitmap_directory_size > (64u << 20))
          return invalid (io, "bitmap_directory_size %" PRIu64
                          " is too large", h->bitmap_directory_size);
        if (h->nb_bitmaps > 0 &&
            check_table (io, h, file_size, "bitmap_directory_offset",
                         h->bitmap_directory_offset,
                         h->bitmap_directory_size) == -1)
          return -1;
      }
      break;

    case QCOW2_EXT_DATA_FILE:
      free (h->data_file);
      h->data_file = copy_string (io, data, len, "external data file name");
      if (h->data_file == NULL)
        return -1;
      break;

    case QJ_EXT_MAGIC:
      /* Never ours in a version 2 image, which carries no journal
       * (docs/journal-format.md 13): ignored. */
      if (h->version < 3)
        break;
      h->journal.present = true;
      h->journal.intact = false;
      /* Its data bytes can be rewritten in place only if it has 32. */
      h->journal.pos = len == QJ_EXT_LENGTH ? pos + 8 : 0;
      if (len == QJ_EXT_LENGTH)
        qj_ext_decode (data, &h->journal);
      break;

    default:
      /* Others (the crypto header pointer, unknown ones) stay as they
       * are: qcow2j never rewrites the extension area. */
      break;
    }
    pos += 8 + ROUND_UP ((uint64_t) len, 8);
  }
  return 0;
}

static int
check_features (struct hostio *io, struct qcow2_header *h)
{
  uint64_t unknown = h->incompatible_features &
    ~(QCOW2_INCOMPAT_KNOWN | (h->version >= 3 ? QJ_INCOMPAT_DIRTY : 0));
  char msg[1024] = "";
  size_t used = 0;

  if (unknown == 0)
    return 0;
  for (unsigned bit = 0; bit < 64; bit++) {
    const char *name;

    if (!(unknown & (1ULL << bit)))
      continue;
    name = qcow2_feature_name (h, 0, bit);
    if (used < sizeof msg)
      used += snprintf (msg + used, sizeof msg - used, "%s%s%s(bit %u)",
                        used ? ", " : "", name ? name : "",
                        name ? " " : "", bit);
  }
  qerror ("%s: unsupported incompatible feature(s) in "
          "incompatible_features 0x%" PRIx64 ": %s",
          io->name, h->incompatible_features, msg);
  errno = ENOTSUP;
  return -1;
}

int
qcow2_header_read (struct hostio *io, uint64_t file_size,
                   struct qcow2_header *h)
{
  uint8_t fixed[QCOW2_V3_HEADER_LENGTH + 8];
  CLEANUP_FREE uint8_t *cluster0 = NULL;
  uint64_t area_end, nr_l1;

  memset (h, 0, sizeof *h);

  if (file_size < QCOW2_V2_HEADER_LENGTH)
    return invalid (io, "file is too short to be a qcow2 image "
                    "(%" PRIu64 " bytes)", file_size);
  if (hostio_pread (io, fixed, sizeof fixed, 0) == -1) {
    qerror ("%s: read header: %m", io->name);
    return -1;
  }
  if (get_be32 (fixed) != QCOW2_MAGIC)
    return invalid (io, "not a qcow2 image: magic 0x%08" PRIx32
                    " is not 0x%08x (a raw disk image? serve it with "
                    "nbdkit's file plugin: nbdkit file %s)",
                    get_be32 (fixed), QCOW2_MAGIC, io->name);
  h->version = get_be32 (fixed + 4);
  h->backing_file_offset = get_be64 (fixed + 8);
  h->backing_file_size = get_be32 (fixed + 16);
  h->cluster_bits = get_be32 (fixed + 20);
  h->size = get_be64 (fixed + 24);
  h->crypt_method = get_be32 (fixed + 32);
  h->l1_size = get_be32 (fixed + 36);
  h->l1_table_offset = get_be64 (fixed + 40);
  h->refcount_table_offset = get_be64 (fixed + 48);
  h->refcount_table_clusters = get_be32 (fixed + 56);
  h->nb_snapshots = get_be32 (fixed + 60);
  h->snapshots_offset = get_be64 (fixed + 64);

  if (h->version != 2 && h->version != 3)
    return invalid (io, "unsupported qcow2 version %" PRIu32
                    " (only 2 and 3 exist)", h->version);
  if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
    return invalid (io, "cluster_bits %" PRIu32 " is out of range "
                    "(%d to %d)", h->cluster_bits,
                    QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
  h->cluster_size = 1ULL << h->cluster_bits;

  if (h->version == 2) {
    h->refcount_order = 4;
    h->header_length = QCOW2_V2_HEADER_LENGTH;
  }
  else {
    h->incompatible_features = get_be64 (fixed + 72);
    h->compatible_features = get_be64 (fixed + 80);
    h->autoclear_features = get_be64 (fixed + 88);
    h->refcount_order = get_be32 (fixed + 96);
    h->header_length = get_be32 (fixed + 100);
    if (file_size < QCOW2_V3_HEADER_LENGTH)
      return invalid (io, "file is too short for a version 3 qcow2 header "
                      "(%" PRIu64 " bytes)", file_size);
    if (h->header_length < QCOW2_V3_HEADER_LENGTH ||
        h->header_length % 8 != 0)
      return invalid (io, "header_length %" PRIu32 " is invalid (a "
                      "multiple of 8, at least %d)", h->header_length,
                      QCOW2_V3_HEADER_LENGTH);
    if (h->header_length > file_size)
      return invalid (io, "file is too short (%" PRIu64 " bytes) for "
                      "header_length %" PRIu32, file_size, h->header_length);
    if (h->header_length > h->cluster_size)
      return invalid (io, "header_length %" PRIu32 " is larger than the "
                      "cluster size (%" PRIu64 ")", h->header_length,
                      h->cluster_size);
    if (h->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
      return invalid (io, "refcount_order %" PRIu32 " is out of range "
                      "(0 to %d)", h->refcount_order,
                      QCOW2_MAX_REFCOUNT_ORDER);
    if (h->header_length > QCOW2_OFF_COMPRESSION_TYPE)
      h->compression_type = fixed[QCOW2_OFF_COMPRESSION_TYPE];
  }

  if (h->crypt_method != 0) {
    qerror ("%s: encrypted images are not supported (crypt_method %" PRIu32
            ": %s)", io->name, h->crypt_method,
            h->crypt_method == 1 ? "AES" : h->crypt_method == 2 ? "LUKS"
            : "unknown");
    errno = ENOTSUP;
    return -1;
  }

  /* Cluster 0 holds the header, the extensions and the backing file name;
   * read all of it (at most 2 MiB, already bounded by cluster_bits). */
  cluster0 = malloc (h->cluster_size);
  if (cluster0 == NULL) {
    qerror ("malloc: %m");
    return -1;
  }
  if (hostio_pread (io, cluster0, h->cluster_size, 0) == -1) {
    qerror ("%s: read header cluster: %m", io->name);
    return -1;
  }

  /* The backing file name lies in cluster 0 after the extensions. */
  if (h->backing_file_offset != 0) {
    if (h->backing_file_size == 0 ||
        h->backing_file_size > QCOW2_MAX_BACKING_NAME)
      return invalid (io, "backing_file_size %" PRIu32 " is out of range "
                      "(1 to %d)", h->backing_file_size,
                      QCOW2_MAX_BACKING_NAME);
    if (h->backing_file_offset < h->header_length ||
        h->backing_file_offset > h->cluster_size - h->backing_file_size)
      return invalid (io, "backing_file_offset %" PRIu64 " with "
                      "backing_file_size %" PRIu32 " is outside the header "
                      "cluster", h->backing_file_offset,
                      h->backing_file_size);
    h->backing_file = copy_string (io, cluster0 + h->backing_file_offset,
                                   h->backing_file_size, "backing file name");
    if (h->backing_file == NULL)
      goto fail;
    area_end = h->backing_file_offset;
  }
  else
    area_end = h->cluster_size;

  if (h->version == 3 &&
      parse_extensions (io, h, cluster0, area_end, file_size) == -1)
    goto fail;

  /* Feature bits, now that names are known. */
  if (check_features (io, h) == -1)
    goto fail;
  if (h->version == 3) {
    bool zstd_bit = h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION;

    if (h->compression_type > QCOW2_COMPRESSION_ZSTD) {
      invalid (io, "compression_type %u is not supported (0 zlib, 1 zstd)",
               h->compression_type);
      errno = ENOTSUP;
      goto fail;
    }
    if (zstd_bit != (h->compression_type != QCOW2_COMPRESSION_ZLIB)) {
      invalid (io, "compression_type %u does not match incompatible "
               "feature bit 3 (%s)", h->compression_type,
               zstd_bit ? "set" : "clear");
      goto fail;
    }
  }
  if (h->incompatible_features & QCOW2_INCOMPAT_EXTL2) {
    if (h->cluster_bits < QCOW2_MIN_EXTL2_CLUSTER_BITS) {
      invalid (io, "cluster_bits %" PRIu32 " is too small for extended "
               "L2 entries (minimum %d)", h->cluster_bits,
               QCOW2_MIN_EXTL2_CLUSTER_BITS);
      goto fail;
    }
    h->l2_entry_size = 16;
    h->subcluster_size = h->cluster_size / QCOW2_SUBCLUSTERS;
  }
  else {
    h->l2_entry_size = 8;
    h->subcluster_size = h->cluster_size;
  }
  h->l2_bits = h->cluster_bits - (h->l2_entry_size == 16 ? 4 : 3);

  if (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
    if (h->data_file == NULL) {
      invalid (io, "the image needs an external data file "
               "(incompatible feature bit 2) but names none");
      goto fail;
    }
  }
  else if (h->data_file != NULL) {
    invalid (io, "the image names an external data file \"%s\" but "
             "incompatible feature bit 2 is clear", h->data_file);
    goto fail;
  }

  /* Virtual size and the L1 table. */
  if (h->size > INT64_MAX) {
    invalid (io, "size %" PRIu64 " is too large", h->size);
    goto fail;
  }
  nr_l1 = qcow2_size_to_l1 (h, h->size);
  if ((uint64_t) h->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
    invalid (io, "l1_size %" PRIu32 " is too large (maximum %u entries)",
             h->l1_size, QCOW2_MAX_L1_BYTES / 8);
    goto fail;
  }
  if (nr_l1 > h->l1_size) {
    invalid (io, "l1_size %" PRIu32 " is too small for size %" PRIu64
             " (needs %" PRIu64 " entries)", h->l1_size, h->size, nr_l1);
    goto fail;
  }
  if (h->l1_size > 0 &&
      check_table (io, h, file_size, "l1_table_offset", h->l1_table_offset,
                   (uint64_t) h->l1_size * 8) == -1)
    goto fail;

  /* The refcount table: never read for serving reads, but a table that is
   * out of bounds means the image is not what it claims to be. */
  if (h->refcount_table_clusters == 0 ||
      (uint64_t) h->refcount_table_clusters * h->cluster_size >
      QCOW2_MAX_REFTABLE_BYTES) {
    invalid (io, "refcount_table_clusters %" PRIu32 " is out of range "
             "(1 to %" PRIu64 ")", h->refcount_table_clusters,
             QCOW2_MAX_REFTABLE_BYTES / h->cluster_size);
    goto fail;
  }
  if (check_table (io, h, file_size, "refcount_table_offset",
                   h->refcount_table_offset,
                   (uint64_t) h->refcount_table_clusters * h->cluster_size)
      == -1)
    goto fail;
  if (h->l1_size > 0) {
    uint64_t l1_end = h->l1_table_offset + (uint64_t) h->l1_size * 8;
    uint64_t rt_end = h->refcount_table_offset +
      (uint64_t) h->refcount_table_clusters * h->cluster_size;

    if (h->l1_table_offset < rt_end && h->refcount_table_offset < l1_end) {
      invalid (io, "l1_table_offset 0x%" PRIx64 " overlaps "
               "refcount_table_offset 0x%" PRIx64,
               h->l1_table_offset, h->refcount_table_offset);
      goto fail;
    }
  }

  /* Snapshots: the table itself is walked in snapshot.c. */
  if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
    invalid (io, "nb_snapshots %" PRIu32 " is too large (maximum %d)",
             h->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
    goto fail;
  }
  if (h->nb_snapshots > 0 &&
      check_table (io, h, file_size, "snapshots_offset",
                   h->snapshots_offset, 40) == -1)
    goto fail;

  return 0;

 fail:
  qcow2_header_free (h);
  return -1;
}

void
qcow2_header_free (struct qcow2_header *h)
{
  int saved_errno = errno;

  free (h->backing_file);
  free (h->backing_format);
  free (h->data_file);
  free (h->feature_names);
  h->backing_file = h->backing_format = h->data_file = NULL;
  h->feature_names = NULL;
  h->nr_feature_names = 0;
  errno = saved_errno;
}
