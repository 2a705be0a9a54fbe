/* qcow2j lib: qcow2 on-disk constants (QEMU docs/interop/qcow2.txt).
 *
 * Every multi-byte field on disk is big-endian.  The limits are QEMU's: an
 * image QEMU would refuse is refused here too, and every size read from the
 * file is checked against them before any memory is allocated for it.
 */
#ifndef QCOW2J_FORMAT_H
#define QCOW2J_FORMAT_H

#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbU          /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LENGTH 72
#define QCOW2_V3_HEADER_LENGTH 104       /* minimum for version 3 */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MIN_EXTL2_CLUSTER_BITS 14
#define QCOW2_MAX_REFCOUNT_ORDER 6
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_MAX_BACKING_FORMAT 15
#define QCOW2_MAX_L1_BYTES (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
#define QCOW2_MAX_SNAPSHOTS_BYTES (64u << 20)
#define QCOW2_MAX_HOST_OFFSET (1ULL << 56)

/* Header field offsets (bytes into cluster 0). */
#define QCOW2_OFF_BACKING_FILE_OFFSET 8
#define QCOW2_OFF_REFCOUNT_TABLE_OFFSET 48
#define QCOW2_OFF_REFCOUNT_TABLE_CLUSTERS 56  /* one word with nb_snapshots */
#define QCOW2_OFF_INCOMPATIBLE 72
#define QCOW2_OFF_AUTOCLEAR 88
#define QCOW2_OFF_COMPRESSION_TYPE 104

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1fULL
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
#define QCOW2_AUTOCLEAR_BITMAPS     (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ULL << 1)

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Header extension types. */
#define QCOW2_EXT_END            0x00000000U
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acaU
#define QCOW2_EXT_FEATURE_NAMES  0x6803f857U
#define QCOW2_EXT_BITMAPS        0x23852875U
#define QCOW2_EXT_DATA_FILE      0x44415441U
#define QCOW2_FEATURE_NAME_LEN   46

/* L1 and L2 entries. */
#define L1E_OFFSET_MASK       0x00fffffffffffe00ULL
#define L1E_RESERVED_MASK     0x7f000000000001ffULL
#define L2E_OFFSET_MASK       0x00fffffffffffe00ULL
#define L2E_STD_RESERVED_MASK 0x3f000000000001feULL
#define QCOW_OFLAG_COPIED     (1ULL << 63)
#define QCOW_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW_OFLAG_ZERO       (1ULL << 0)
#define QCOW2_SUBCLUSTERS     32    /* per cluster with extended L2 */

/* Refcount table entries. */
#define REFT_OFFSET_MASK   0xfffffffffffffe00ULL
#define REFT_RESERVED_MASK 0x1ffULL

/* Compressed cluster data is addressed in 512-byte sectors. */
#define QCOW2_COMPRESSED_SECTOR 512

#endif /* QCOW2J_FORMAT_H */
