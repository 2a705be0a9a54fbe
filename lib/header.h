/* qcow2j lib: the qcow2 header and its extensions, parsed and validated. */
#ifndef QCOW2J_HEADER_H
#define QCOW2J_HEADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hostio.h"

struct qcow2_feature_name {
  uint8_t type;                 /* 0 incompatible, 1 compatible, 2 autoclear */
  uint8_t bit;
  char name[47];                /* NUL-terminated copy */
};

/* The qcow2j journal extension (docs/journal-format.md section 3). */
struct qcow2_journal_ext {
  bool present;                 /* the extension exists */
  bool intact;                  /* its CRC matches and its version is 1
                                   (journal-ext.c) */
  uint64_t pos;                 /* file offset of its 32 data bytes (0:
                                   its length is not 32) */
  uint64_t offset, size, id;
};

struct qcow2_header {
  /* Fields as stored (host byte order). */
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t refcount_order;
  uint32_t header_length;
  uint8_t compression_type;

  /* From the header extensions and the backing file name. */
  char *backing_file;           /* NULL if none */
  char *backing_format;         /* NULL if the extension is absent */
  char *data_file;              /* NULL if none */
  struct qcow2_feature_name *feature_names;
  size_t nr_feature_names;
  struct qcow2_journal_ext journal;
  /* Where the extension area ends: the offset of its end marker, or
   * where it runs into the backing file name or the end of cluster 0. */
  uint64_t extensions_end;
  bool has_end_marker;
  bool has_bitmaps_ext;
  uint32_t nb_bitmaps;
  uint64_t bitmap_directory_size;
  uint64_t bitmap_directory_offset;

  /* Derived. */
  uint64_t cluster_size;
  uint32_t l2_entry_size;       /* 8, or 16 with extended L2 entries */
  uint32_t l2_bits;             /* log2 of entries per L2 table */
  uint64_t subcluster_size;     /* = cluster_size without extended L2 */
};

/* QEMU's feature name table, in QEMU's order and spelling, so that tools
 * name the bits; images qcow2_create makes carry it. */
struct qcow2_known_feature {
  uint8_t type;                 /* 0 incompatible, 1 compatible, 2 autoclear */
  uint8_t bit;
  const char *name;
};
extern const struct qcow2_known_feature qcow2_qemu_features[];
extern const size_t qcow2_nr_qemu_features;

/* Read cluster 0 of io (file_size bytes long) and validate every field
 * against the file size and QEMU's limits.  On error reports a message that
 * names the field and its value, and returns -1 with errno set (EINVAL for
 * a malformed image, ENOTSUP for a valid one using an unsupported feature).
 */
extern int qcow2_header_read (struct hostio *io, uint64_t file_size,
                              struct qcow2_header *h);
extern void qcow2_header_free (struct qcow2_header *h);

/* The name of a feature bit from the image's feature name table, or NULL. */
extern const char *qcow2_feature_name (const struct qcow2_header *h,
                                       unsigned type, unsigned bit);

/* Number of L1 entries needed to map size bytes. */
extern uint64_t qcow2_size_to_l1 (const struct qcow2_header *h, uint64_t size);

#endif /* QCOW2J_HEADER_H */
