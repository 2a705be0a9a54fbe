/* qcow2j lib: the journal's on-disk layout (docs/journal-format.md is the
 * specification; this header must agree with it byte for byte).
 *
 * The journal area is 2 superblock blocks followed by a ring of
 * transactions.  Every field is big-endian, like every qcow2 field.
 *
 *   area + 0      superblock copy A (one block; 64 bytes used)
 *   area + 4096   superblock copy B
 *   area + 8192   ring: transactions, each starting on a block boundary
 *
 * A transaction is a 64-byte header followed by records.  It is valid
 * when its magic, journal id, sequence number, lengths and crc32c all
 * check; replay stops at the first transaction that is not.
 */
#ifndef QCOW2J_JOURNAL_FORMAT_H
#define QCOW2J_JOURNAL_FORMAT_H

#include <stdint.h>

#include "byteorder.h"

/* Feature bits in the qcow2 header, and the header extension. */
#define QJ_INCOMPAT_DIRTY   (1ULL << 60)     /* "qcow2j journal dirty" */
#define QJ_AUTOCLEAR_VALID  (1ULL << 60)     /* "qcow2j journal valid" */
#define QJ_EXT_MAGIC        0x51324a4cU      /* "Q2JL" */
#define QJ_EXT_LENGTH       32

#define QJ_VERSION          1
#define QJ_BLOCK            4096
#define QJ_RING_START       (2 * QJ_BLOCK)
#define QJ_MIN_AREA         (1ULL << 20)
#define QJ_MAX_AREA         (1ULL << 30)

/* Superblock. */
#define QJ_SB_MAGIC         "qcow2jSB"
#define QJ_SB_USED          64
#define QJ_SB_OFF_MAGIC       0
#define QJ_SB_OFF_VERSION     8
#define QJ_SB_OFF_BLOCK_SIZE 12
#define QJ_SB_OFF_ID         16
#define QJ_SB_OFF_GENERATION 24
#define QJ_SB_OFF_AREA_SIZE  32
#define QJ_SB_OFF_HEAD       40
#define QJ_SB_OFF_HEAD_SEQ   48
#define QJ_SB_OFF_FLAGS      56
#define QJ_SB_OFF_CRC        60

/* Transaction header. */
#define QJ_TX_MAGIC         "QJTX"
#define QJ_TX_HEADER        64
#define QJ_TX_OFF_MAGIC       0
#define QJ_TX_OFF_CRC         4
#define QJ_TX_OFF_ID          8
#define QJ_TX_OFF_SEQ        16
#define QJ_TX_OFF_PAYLOAD    24
#define QJ_TX_OFF_TOTAL      28
#define QJ_TX_OFF_NR_RECORDS 32
#define QJ_TX_OFF_FLAGS      36
#define QJ_TX_OFF_MIN_FILE   40
#define QJ_TX_FLAG_SKIP     1U       /* filler up to the end of the ring */
#define QJ_MAX_TRANSACTION  (16U << 20)  /* bounds replay's memory */
#define QJ_MAX_ZERO         (32U << 20)  /* largest ZERO range */

/* Records: type u16, flags u16 (0), length u32 (header included), body.
 * Every record carries absolute final values, so replay is idempotent. */
#define QJ_REC_HEADER       8
#define QJ_REC_PAD          0        /* ignored */
#define QJ_REC_SET64        1        /* n x { offset u64 (8-aligned), value u64 } */
#define QJ_REC_WRITE        2        /* offset u64, count u32, pad u32, bytes */
#define QJ_REC_ZERO         3        /* n x { offset u64, count u64 } */

/* Replay work (docs/journal-format.md rule R6): the live region (the
 * transactions from the durable head to the tail) may hold at most
 * QJ_MAX_LIVE_TRANSACTIONS transactions (SKIP fillers included) and
 * QJ_MAX_LIVE_RECORDS records, and their target ranges may touch at most
 * QJ_MAX_LIVE_SECTORS 512-byte sectors, counted once per target range (a
 * SET64 entry, a WRITE record, a ZERO entry).  A writer checkpoints
 * before it would exceed any of them; a reader refuses, before it changes
 * anything, a journal that does.  Without them a few hundred bytes of
 * ZERO records could ask a replay for gigabytes of writes, and a full
 * ring for petabytes. */
#define QJ_SECTOR                512
#define QJ_MAX_LIVE_SECTORS      (1ULL << 18)    /* 128 MiB of sectors */
#define QJ_MAX_LIVE_RECORDS      (1ULL << 20)
#define QJ_MAX_LIVE_TRANSACTIONS (1ULL << 15)

/* The sectors that the target range [offset, offset + count) touches
 * (count >= 1, and the range ends at or below QJ_MAX_TARGET). */
static inline uint64_t
qj_target_sectors (uint64_t offset, uint64_t count)
{
  return (offset + count - 1) / QJ_SECTOR - offset / QJ_SECTOR + 1;
}

/* The only header bytes records may change: the words from size to
 * snapshots_offset (24-71 of cluster 0).  The feature words and the
 * extensions are written in place, never journalled. */
#define QJ_HEADER_WORDS_START 24
#define QJ_HEADER_WORDS_END   72

/* Nothing a record touches may lie at or past this host offset (QEMU's
 * limit on host offsets). */
#define QJ_MAX_TARGET       (1ULL << 56)

#endif /* QCOW2J_JOURNAL_FORMAT_H */
