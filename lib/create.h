/* qcow2j lib: creating a new, empty qcow2 image. */
#ifndef QCOW2J_CREATE_H
#define QCOW2J_CREATE_H

#include <stdbool.h>
#include <stdint.h>

enum qcow2_prealloc {
  QCOW2_PREALLOC_OFF,
  QCOW2_PREALLOC_METADATA,      /* L2 tables and clusters, sparse */
  QCOW2_PREALLOC_FALLOC,        /* the same, and fallocate the data */
  QCOW2_PREALLOC_FULL,          /* the same, and write zeroes there */
};

/* What "qemu-img create -f qcow2 -o ..." takes. */
struct qcow2_create_options {
  int64_t size;                 /* rounded up to 512; -1: the backing
                                   file's size */
  uint64_t cluster_size;        /* 512 to 2 MiB, a power of two */
  unsigned refcount_bits;       /* 1 to 64, a power of two */
  bool extended_l2;             /* needs clusters of 16 KiB or more */
  bool zstd;                    /* compression type zstd, else zlib */
  bool lazy_refcounts;
  enum qcow2_prealloc prealloc; /* with a backing file: extended L2 only */
  const char *backing_file;     /* NULL: none; stored as given, relative
                                   to the image's directory */
  const char *backing_format;   /* "qcow2" or "raw", with backing_file */
};

/* Create at path an empty qcow2 version 3 image, as "qemu-img create -f
 * qcow2" would with the same options: QEMU's feature name table (for
 * clusters over 4 KiB, as QEMU), and a backing file that must exist.
 *
 * Sizes that QEMU's L1 table limit (32 MiB) cannot map, and options QEMU
 * refuses, are reported and refused with EINVAL before the file is
 * touched.
 *
 * With exclusive the file must not exist (EEXIST).  Otherwise an existing
 * regular file is truncated and overwritten, unless another process holds
 * QEMU's image locks on it (EAGAIN).  The image is durable (fsync'd, and
 * the directory entry too if the file was created) when this returns 0.
 * On error returns -1 with errno set after reporting, and removes the file
 * if it created it. */
extern int qcow2_create_image (const char *path,
                               const struct qcow2_create_options *opts,
                               bool exclusive);

/* The same with size, cluster_size and extended_l2, 16-bit refcounts,
 * zlib, no lazy refcounts, no preallocation and no backing file. */
extern int qcow2_create (const char *path, uint64_t size,
                         uint64_t cluster_size, bool extended_l2,
                         bool exclusive);

#endif /* QCOW2J_CREATE_H */
