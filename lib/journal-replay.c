/* qcow2j lib: the journal's reader side: finding the valid chain of
 * transactions from the head, checking them, and applying them.
 *
 * Replay is redo-only.  Records carry absolute final values, so applying
 * a transaction twice, or applying it over state that already contains it
 * (the checkpoint got there first), gives the same bytes.  A crash during
 * replay leaves the head where it was, and the next replay applies the
 * same transactions again.
 *
 * The walk trusts nothing: a transaction counts only if its magic, journal
 * id, expected sequence number, lengths and crc32c all check, and the
 * first one that does not ends the chain (a torn last write, a stale
 * transaction from an earlier lap, another journal's leftovers).  A
 * transaction that does check but carries an unknown record type or a
 * malformed record refuses the whole replay: skipping a record would
 * break the transaction's atomicity, and applying a prefix of it would too.
 *
 * Each record is bounded on its own (QJ_MAX_ZERO, QJ_MAX_TRANSACTION),
 * but a ring of 1 GiB could still hold a few million of them: the whole
 * chain is bounded too (rule R6: transactions, records, and sectors its
 * target ranges touch), and a chain that asks for more is refused before
 * anything is applied.  Both a replay in place and one in memory
 * (overlay.c) go through walk, which enforces it.
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "crc32c.h"
#include "journal-format.h"
#include "journal-internal.h"
#include "log.h"
#include "minmax.h"

/* Is the header at ring offset off the valid transaction seq?  Fills
 * *payload, *total, *flags. */
static bool
header_valid (const struct journal *j, const uint8_t *h, uint64_t off,
              uint64_t seq, uint32_t *payload, uint32_t *total,
              uint32_t *flags)
{
  *payload = get_be32 (h + QJ_TX_OFF_PAYLOAD);
  *total = get_be32 (h + QJ_TX_OFF_TOTAL);
  *flags = get_be32 (h + QJ_TX_OFF_FLAGS);

  if (memcmp (h + QJ_TX_OFF_MAGIC, QJ_TX_MAGIC, 4) != 0 ||
      get_be64 (h + QJ_TX_OFF_ID) != j->id ||
      get_be64 (h + QJ_TX_OFF_SEQ) != seq)
    return false;
  if (*payload < QJ_TX_HEADER || *payload % 8 != 0 || *payload > *total ||
      *total < QJ_BLOCK || *total % QJ_BLOCK != 0 ||
      *total > journal_max_transaction (j) || *total > j->size - off)
    return false;
  return true;
}

static int __attribute__ ((format (printf, 3, 4)))
refuse (const struct journal *j, uint64_t seq, const char *fs, ...)
{
  char msg[256];
  va_list args;

  va_start (args, fs);
  vsnprintf (msg, sizeof msg, fs, args);
  va_end (args);
  qerror ("%s: journal transaction %" PRIu64 ": %s: refusing to replay "
          "the journal", j->io->name, seq, msg);
  errno = EINVAL;
  return -1;
}

/* Is the target range [off, off+count) allowed for a transaction whose
 * min_file_size is min_file?  (docs/journal-format.md 6.6 item 4) */
static bool
target_ok (const struct journal *j, uint64_t off, uint64_t count,
           uint64_t min_file)
{
  if (count == 0 || off > min_file || count > min_file - off)
    return false;
  if (off < j->area + j->size && j->area < off + count)
    return false;               /* overlaps the journal area */
  if (off < j->cluster_size)    /* cluster 0: the header words only */
    return off >= QJ_HEADER_WORDS_START && off + count <= QJ_HEADER_WORDS_END;
  return true;
}

/* Check a crc-valid transaction whose bytes are tx[0..payload).  Returns 0
 * if it is well formed, with the sectors its target ranges touch in
 * *sectors (rule R6), else refuses (-1, EINVAL). */
static int
check_transaction (const struct journal *j, uint64_t seq, const uint8_t *tx,
                   uint32_t payload, uint64_t *sectors)
{
  uint32_t flags = get_be32 (tx + QJ_TX_OFF_FLAGS);
  uint32_t nr_records = get_be32 (tx + QJ_TX_OFF_NR_RECORDS);
  uint64_t min_file = get_be64 (tx + QJ_TX_OFF_MIN_FILE);
  const uint8_t *p = tx + QJ_TX_HEADER;
  uint32_t len = payload - QJ_TX_HEADER, n = 0;

  *sectors = 0;
  if (flags & ~QJ_TX_FLAG_SKIP)
    return refuse (j, seq, "unknown flags 0x%" PRIx32, flags);
  for (int i = 48; i < QJ_TX_HEADER; i++)
    if (tx[i] != 0)
      return refuse (j, seq, "reserved header byte %d is not zero", i);
  if (flags & QJ_TX_FLAG_SKIP) {
    if (payload != QJ_TX_HEADER || nr_records != 0 || min_file != 0)
      return refuse (j, seq, "SKIP filler with payload %" PRIu32
                     ", nr_records %" PRIu32 ", min_file_size %" PRIu64
                     " (must be %d, 0, 0)", payload, nr_records, min_file,
                     QJ_TX_HEADER);
    return 0;
  }
  if (min_file % 512 != 0 || min_file > QJ_MAX_TARGET)
    return refuse (j, seq, "min_file_size %" PRIu64 " is invalid", min_file);

  while (len > 0) {
    uint16_t type, rflags;
    uint32_t rlen;

    if (len < QJ_REC_HEADER)
      return refuse (j, seq, "record %" PRIu32 ": header truncated (%"
                     PRIu32 " bytes left of the payload)", n, len);
    type = get_be16 (p);
    rflags = get_be16 (p + 2);
    rlen = get_be32 (p + 4);
    if (rlen < QJ_REC_HEADER || rlen % 8 != 0 || rlen > len)
      return refuse (j, seq, "record %" PRIu32 " has bad length %" PRIu32,
                     n, rlen);
    if (rflags != 0)
      return refuse (j, seq, "record %" PRIu32 " has unknown flags 0x%x",
                     n, rflags);
    switch (type) {
    case QJ_REC_PAD:
      break;
    case QJ_REC_SET64:
    case QJ_REC_ZERO:
      if ((rlen - QJ_REC_HEADER) % 16 != 0 || rlen == QJ_REC_HEADER)
        return refuse (j, seq, "record %" PRIu32 " (type %u) has bad "
                       "length %" PRIu32, n, type, rlen);
      for (uint32_t i = QJ_REC_HEADER; i < rlen; i += 16) {
        uint64_t off = get_be64 (p + i);
        uint64_t count = type == QJ_REC_SET64 ? 8 : get_be64 (p + i + 8);

        if (type == QJ_REC_SET64 ? off % 8 != 0 :
            off % 512 != 0 || count % 512 != 0 || count > QJ_MAX_ZERO)
          return refuse (j, seq, "record %" PRIu32 " (type %u): target "
                         "0x%" PRIx64 "+%" PRIu64 " is misaligned or too "
                         "large", n, type, off, count);
        if (!target_ok (j, off, count, min_file))
          return refuse (j, seq, "record %" PRIu32 " (type %u): target "
                         "0x%" PRIx64 "+%" PRIu64 " is out of bounds", n,
                         type, off, count);
        *sectors += qj_target_sectors (off, count);
      }
      break;
    case QJ_REC_WRITE: {
      uint64_t off, count;

      if (rlen < QJ_REC_HEADER + 16)
        return refuse (j, seq, "record %" PRIu32 " (write) has length %"
                       PRIu32 " (at least %d)", n, rlen, QJ_REC_HEADER + 16);
      off = get_be64 (p + 8);
      count = get_be32 (p + 16);
      if (count == 0 || get_be32 (p + 20) != 0 ||
          ROUND_UP (count, 8) != rlen - QJ_REC_HEADER - 16)
        return refuse (j, seq, "record %" PRIu32 " (write of %" PRIu64
                       " bytes) is malformed", n, count);
      for (uint32_t i = 24 + count; i < rlen; i++)
        if (p[i] != 0)
          return refuse (j, seq, "record %" PRIu32 " (write) has non-zero "
                         "padding byte 0x%02x at %" PRIu32, n, p[i], i);
      if (!target_ok (j, off, count, min_file))
        return refuse (j, seq, "record %" PRIu32 " (write): target 0x%"
                       PRIx64 "+%" PRIu64 " is out of bounds", n, off, count);
      *sectors += qj_target_sectors (off, count);
      break;
    }
    default:
      return refuse (j, seq, "record %" PRIu32 " has unknown type %u "
                     "(written by a newer qcow2j?)", n, type);
    }
    p += rlen;
    len -= rlen;
    n++;
  }
  if (n != nr_records)
    return refuse (j, seq, "holds %" PRIu32 " records, header says %" PRIu32,
                   n, nr_records);
  return 0;
}

static int
apply_records (const uint8_t *p, uint32_t len, journal_apply_fn apply,
               void *opaque, uint64_t *nr)
{
  while (len > 0) {
    uint16_t type = get_be16 (p);
    uint32_t rlen = get_be32 (p + 4);

    switch (type) {
    case QJ_REC_SET64:
      for (uint32_t i = QJ_REC_HEADER; i < rlen; i += 16)
        if (apply (opaque, get_be64 (p + i), p + i + 8, 8) == -1)
          return -1;
      break;
    case QJ_REC_ZERO:
      for (uint32_t i = QJ_REC_HEADER; i < rlen; i += 16)
        if (apply (opaque, get_be64 (p + i), NULL, get_be64 (p + i + 8)) == -1)
          return -1;
      break;
    case QJ_REC_WRITE:
      if (apply (opaque, get_be64 (p + 8), p + 24, get_be32 (p + 16)) == -1)
        return -1;
      break;
    }
    if (type != QJ_REC_PAD)
      (*nr)++;
    p += rlen;
    len -= rlen;
  }
  return 0;
}

/* The chain from the head.  With apply NULL: find its end and check every
 * transaction in it (stats counts them).  With apply: walk the first
 * stats->transactions + skips already found and apply their records. */
struct chain {
  uint64_t length;              /* transactions, SKIP fillers included */
  uint64_t end, end_seq;        /* where it stops */
};

/* The replay work of the chain so far (rule R6). */
struct work {
  uint64_t first_seq;           /* where the chain starts */
  uint64_t transactions, records, sectors;
};

/* Add transaction seq's work to *w; refuse (-1, EFBIG) once the chain
 * asks for more than a writer may leave in the live region. */
static int
add_work (const struct journal *j, struct work *w, uint64_t seq,
          uint32_t records, uint64_t sectors)
{
  const char *what;
  uint64_t total, bound;

  w->transactions++;
  w->records += records;
  w->sectors += sectors;
  if (w->transactions > QJ_MAX_LIVE_TRANSACTIONS) {
    what = "transactions";
    total = w->transactions;
    bound = QJ_MAX_LIVE_TRANSACTIONS;
  }
  else if (w->records > QJ_MAX_LIVE_RECORDS) {
    what = "records";
    total = w->records;
    bound = QJ_MAX_LIVE_RECORDS;
  }
  else if (w->sectors > QJ_MAX_LIVE_SECTORS) {
    what = "sectors written";
    total = w->sectors;
    bound = QJ_MAX_LIVE_SECTORS;
  }
  else
    return 0;
  qerror ("%s: journal transactions %" PRIu64 " to %" PRIu64 " ask replay "
          "for too much work: %s: %" PRIu64 ", more than the bound of %"
          PRIu64 " (docs/journal-format.md rule R6; %" PRIu64 " MiB to "
          "write, at most %" PRIu64 " MiB): refusing to replay the journal",
          j->io->name, w->first_seq, seq, what, total, bound,
          w->sectors * QJ_SECTOR >> 20,
          (uint64_t) QJ_MAX_LIVE_SECTORS * QJ_SECTOR >> 20);
  errno = EFBIG;
  return -1;
}

static int
walk (struct journal *j, struct chain *chain, journal_apply_fn apply,
      void *opaque, struct journal_replay_stats *stats)
{
  uint64_t off = j->head, seq = j->head_seq, walked = 0;
  const uint64_t ring = j->size - QJ_RING_START;
  struct work work = { .first_seq = seq };
  CLEANUP_FREE uint8_t *buf = NULL;
  uint64_t n;

  if (apply == NULL)
    memset (stats, 0, sizeof *stats);
  for (n = 0; apply == NULL || n < chain->length; n++) {
    uint8_t h[QJ_TX_HEADER];
    uint32_t payload, total, flags, crc;
    uint64_t sectors;

    if (apply == NULL && walked >= ring)
      break;
    if (hostio_pread (j->io, h, sizeof h, j->area + off) == -1)
      goto io_error;
    if (!header_valid (j, h, off, seq, &payload, &total, &flags))
      break;
    free (buf);
    buf = malloc (payload);
    if (buf == NULL) {
      qerror ("journal: malloc: %m");
      return -1;
    }
    if (hostio_pread (j->io, buf, payload, j->area + off) == -1)
      goto io_error;
    crc = get_be32 (buf + QJ_TX_OFF_CRC);
    put_be32 (buf + QJ_TX_OFF_CRC, 0);
    if (crc32c (0, buf, payload) != crc)
      break;

    /* Certainly written by a qcow2j journal: anything in it that we do
     * not understand refuses the replay rather than ending the chain.
     * Checked again when applying, so that what is applied (overlay.c
     * relies on the bound) is what was checked. */
    if (check_transaction (j, seq, buf, payload, &sectors) == -1 ||
        add_work (j, &work, seq, get_be32 (buf + QJ_TX_OFF_NR_RECORDS),
                  sectors) == -1)
      return -1;
    if (apply == NULL) {
      if (!(flags & QJ_TX_FLAG_SKIP)) {
        if (stats->transactions == 0)
          stats->first_seq = seq;
        stats->transactions++;
        stats->last_seq = seq;
        stats->min_file_size = MAX (stats->min_file_size,
                                    get_be64 (buf + QJ_TX_OFF_MIN_FILE));
      }
    }
    else if (!(flags & QJ_TX_FLAG_SKIP) &&
             apply_records (buf + QJ_TX_HEADER, payload - QJ_TX_HEADER,
                            apply, opaque, &stats->records) == -1)
      return -1;
    walked += total;
    off = journal_ring_next (j, off + total);
    seq++;
  }
  if (apply == NULL) {
    chain->length = n;
    chain->end = off;
    chain->end_seq = seq;
    stats->sectors = work.sectors;
  }
  else if (n != chain->length) {
    qerror ("%s: journal changed while it was replayed", j->io->name);
    errno = EIO;
    return -1;
  }
  return 0;

 io_error:
  qerror ("%s: journal: read: %m", j->io->name);
  return -1;
}

int
journal_scan (struct journal *j, journal_apply_fn apply, void *opaque,
              struct journal_replay_stats *stats)
{
  struct chain chain;

  if (walk (j, &chain, NULL, NULL, stats) == -1)
    return -1;
  return walk (j, &chain, apply, opaque, stats);
}

/* Where replay applies records: the journal's own file, except that
 * the header words (bytes 24-71) are gathered and written at the end in
 * one 48-byte write.  A sector is written whole or not at all
 * (docs/journal-format.md M3), so the header a crash leaves during replay
 * is the old one or the replayed one, never a mix that the next open
 * could not even validate before replaying again. */
struct replay_target {
  struct journal *j;
  uint8_t header[QJ_HEADER_WORDS_END - QJ_HEADER_WORDS_START];
  bool header_changed;
};

static int
apply_to_file (void *opaque, uint64_t offset, const void *buf,
               uint64_t count)
{
  struct replay_target *rt = opaque;
  static const uint8_t zeroes[65536];

  if (offset < rt->j->cluster_size) {
    /* target_ok allowed only the header words here. */
    assert (offset >= QJ_HEADER_WORDS_START &&
            offset + count <= QJ_HEADER_WORDS_END);
    if (buf != NULL)
      memcpy (rt->header + (offset - QJ_HEADER_WORDS_START), buf, count);
    else
      memset (rt->header + (offset - QJ_HEADER_WORDS_START), 0, count);
    rt->header_changed = true;
    return 0;
  }
  if (buf != NULL)
    return hostio_pwrite (rt->j->io, buf, count, offset);
  while (count > 0) {
    size_t n = MIN (count, sizeof zeroes);
    if (hostio_pwrite (rt->j->io, zeroes, n, offset) == -1)
      return -1;
    offset += n;
    count -= n;
  }
  return 0;
}

int
journal_replay (struct journal *j, struct journal_replay_stats *stats)
{
  struct chain chain;
  int64_t size;

  /* Check the whole chain before changing a byte. */
  if (walk (j, &chain, NULL, NULL, stats) == -1)
    return -1;
  if (chain.end_seq != j->head_seq && j->sb_generation == UINT64_MAX) {
    qerror ("%s: journal: superblock generation is exhausted: refusing to "
            "replay", j->io->name);
    errno = EINVAL;
    return -1;
  }
  if (stats->transactions > 0) {
    struct replay_target rt = { .j = j };

    size = hostio_size (j->io);
    if (size == -1 ||
        hostio_pread (j->io, rt.header, sizeof rt.header,
                      QJ_HEADER_WORDS_START) == -1 ||
        ((uint64_t) size < stats->min_file_size &&
         hostio_truncate (j->io, stats->min_file_size) == -1) ||
        walk (j, &chain, apply_to_file, &rt, stats) == -1 ||
        (rt.header_changed &&
         hostio_pwrite (j->io, rt.header, sizeof rt.header,
                       QJ_HEADER_WORDS_START) == -1) ||
        hostio_flush (j->io) == -1) {
      qerror ("%s: journal: replay: %m", j->io->name);
      return -1;
    }
  }
  /* Everything applied is durable in place: move the head past it. */
  if (chain.end_seq != j->head_seq &&
      journal_write_superblock (j, chain.end, chain.end_seq) == -1)
    return -1;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  journal_reset_ring (j, chain.end, chain.end_seq);
  return 0;
}
