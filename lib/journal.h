/* qcow2j lib: the metadata journal.
 *
 * Metadata changes (L1, L2 and refcount entries, header words) are added
 * as records to the open in-memory transaction; journal_commit makes them
 * durable as one checksummed transaction in the ring, serving every caller
 * waiting at that moment with one write and one flush (group commit).  A
 * checkpoint (the caller's: it owns the metadata cache) later writes the
 * committed state in place and calls journal_checkpointed, which moves the
 * head and frees ring space.  At open, journal_replay re-applies what was
 * committed and not yet checkpointed.  docs/journal-format.md specifies
 * the format and the protocol; journal.c explains the invariants.
 *
 * All functions are thread-safe.
 */
#ifndef QCOW2J_JOURNAL_H
#define QCOW2J_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hostio.h"

struct journal;

/* What the image does at points of a commit.  All optional.
 *
 * pre_commit: called by the committing thread, with no lock held, just
 * before a transaction is written: the image marks itself dirty here.
 * Returns 1 if it wrote something that must be durable before the
 * transaction (the journal then flushes first), 0 if not, -1 with errno.
 *
 * pre_seal: called by the committing thread, with no lock held, once
 * no change is half made and while new changes wait (journal_begin),
 * just before it seals the open transaction: the image completes here
 * what the transaction's records promise (delayed copy-on-write).
 * 0, or -1 with errno: the transaction is not sealed, the journal fails.
 *
 * sealed: the open transaction has just been sealed, at a moment when no
 * change is half made (see journal_begin): the image snapshots what it
 * changed.  Called with the journal's lock held: it must not call back.
 *
 * durable: that transaction is durable (same locking).  In ordered mode:
 * it is what write_back is about to write.
 *
 * write_back: ordered mode only, called by the committing thread with no
 * lock held in place of writing transaction seq (and instead of
 * pre_commit): the image writes the state sealed so far to its home
 * locations, durably, and calls journal_checkpointed (seq).  0, or -1
 * with errno (the journal then fails for good, as after a failed
 * commit). */
struct journal_hooks {
  int (*pre_commit) (void *opaque);
  int (*pre_seal) (void *opaque);
  void (*sealed) (void *opaque);
  void (*durable) (void *opaque);
  int (*write_back) (void *opaque, uint64_t seq);
};

/* Format a new, empty journal in the area [area_offset, +area_size) of io
 * with the given id: both superblocks, then a flush.  area_size must be a
 * multiple of QJ_BLOCK between QJ_MIN_AREA and QJ_MAX_AREA; cluster_size
 * is the image's (records never touch cluster 0 but for header words). */
extern struct journal *journal_create (struct hostio *io, uint64_t area_offset,
                                       uint64_t area_size, uint64_t id,
                                       uint64_t cluster_size);

/* Open an existing journal area (after journal_replay has run on it, or to
 * run it).  Reads the superblocks; fails (EINVAL) if neither copy is valid
 * for this id and size. */
extern struct journal *journal_open (struct hostio *io, uint64_t area_offset,
                                     uint64_t area_size, uint64_t id,
                                     uint64_t cluster_size);

/* A journal with no area, for images that cannot carry one (version 2,
 * docs/journal-format.md 13): changes are bracketed, batched, sealed and
 * committed as with any journal, and deferred frees wait for
 * journal_checkpointed, but nothing is written: a commit calls the
 * write_back hook instead, and the ring never fills (journal_ring_used
 * is 0). */
extern struct journal *journal_create_ordered (struct hostio *io,
                                               uint64_t cluster_size);

extern void journal_free (struct journal *j);

extern void journal_set_hooks (struct journal *j,
                               const struct journal_hooks *hooks,
                               void *opaque);

/* Bracket the records of one consistent change (several records that
 * must reach the same transaction): a commit does not seal the open
 * transaction while any change is between journal_begin and journal_end.
 * They nest with nothing and must not be held across journal_commit. */
extern void journal_begin (struct journal *j);
extern void journal_end (struct journal *j);

/* Add records to the open transaction.  Values are absolute final values
 * (replay may apply them more than once).  Each raises the transaction's
 * min_file_size to cover its target.  ZERO ranges are 512-byte aligned.
 * -1 with ENOMEM, or EFBIG if the transaction would exceed the largest
 * one the ring can hold, or the replay work one journal may ask for
 * (QJ_MAX_LIVE_SECTORS, QJ_MAX_LIVE_RECORDS): commit, then add again. */
extern int journal_add_set64 (struct journal *j, uint64_t offset,
                              uint64_t value);
extern int journal_add_write (struct journal *j, uint64_t offset,
                              const void *buf, uint32_t count);
extern int journal_add_zero (struct journal *j, uint64_t offset,
                             uint64_t count);
/* The file must be at least this long once the open transaction is
 * replayed. */
extern void journal_need_file_size (struct journal *j, uint64_t size);
/* The open transaction's guest data must be durable before the
 * transaction is written (a flush before it, not only after: see the
 * commit protocol in docs/journal-format.md). */
extern void journal_need_ordering (struct journal *j);
/* Free value (a cluster offset) once the head has moved durably past the
 * transaction that is open now (rule R3); see journal_take_released. */
extern int journal_defer_free (struct journal *j, uint64_t value);

/* Make everything added so far (by any thread) durable.  Returns 0 once it
 * is; -1 with errno EAGAIN if the ring has no room for the open
 * transaction, or if the live region and it would together ask replay
 * for more work than rule R6 allows (QJ_MAX_LIVE_TRANSACTIONS, _RECORDS,
 * _SECTORS) (checkpoint, then commit again), or with the I/O error that
 * broke the journal (every later commit then fails too).  On return *seq,
 * if not NULL, is the sequence number covering the caller's records. */
extern int journal_commit (struct journal *j, uint64_t *seq);

/* Make every later commit fail with err: a change was left half made. */
extern void journal_fail (struct journal *j, int err);
/* Transactions sealed and made durable so far (by this journal object):
 * a commit sealed after a moment M is durable once durable > sealed(M). */
extern void journal_generations (struct journal *j, uint64_t *sealed,
                                 uint64_t *durable);
/* Bytes of records in the open transaction. */
extern size_t journal_open_bytes (struct journal *j);
/* True if the open transaction should be committed before more is added
 * to it: it holds an eighth of the ring, or of the replay work one
 * journal may ask for (so that no change finds it full). */
extern bool journal_open_is_large (struct journal *j);

/* Checkpoint hooks. */
extern uint64_t journal_durable_seq (struct journal *j);
extern uint64_t journal_head_seq (struct journal *j);
/* Bytes of ring in use by transactions not yet checkpointed. */
extern uint64_t journal_ring_used (struct journal *j);
extern uint64_t journal_ring_size (struct journal *j);
/* True if nothing has been added since the last commit. */
extern bool journal_is_idle (struct journal *j);
/* How many frees (journal_defer_free) a commit and a checkpoint would
 * release. */
extern size_t journal_frees_pending (struct journal *j);
/* The caller has written in place, and flushed, the effects of every
 * transaction up to and including seq (at most journal_durable_seq).
 * Writes a superblock moving the head past it and flushes; ring space and
 * deferred frees of those transactions are released after that flush.
 * In ordered mode (from the write_back hook, seq being the one it
 * writes) there is no superblock: the deferred frees are released. */
extern int journal_checkpointed (struct journal *j, uint64_t seq);
/* Deferred frees whose transaction the head has durably passed: copies up
 * to max of them to values and returns how many. */
extern size_t journal_take_released (struct journal *j, uint64_t *values,
                                     size_t max);

/* Replay (journal-replay.c). */
struct journal_replay_stats {
  uint64_t transactions;        /* valid transactions applied */
  uint64_t records;
  uint64_t sectors;             /* replay work of their target ranges */
  uint64_t first_seq, last_seq; /* range applied (if transactions > 0) */
  uint64_t min_file_size;       /* largest min_file_size seen */
};

/* Apply one record's effect: write count bytes of buf at offset (buf NULL
 * means zeroes). */
typedef int (*journal_apply_fn) (void *opaque, uint64_t offset,
                                 const void *buf, uint64_t count);

/* Walk the valid transactions from the head, in order, passing each one's
 * records to apply (every record of the chain is checked before any of
 * it is applied).  Stops at the first invalid transaction.  Fails with
 * EINVAL on a valid transaction that carries an unknown record type or a
 * malformed record, and with EFBIG if the chain asks for more replay work
 * than rule R6 allows (QJ_MAX_LIVE_TRANSACTIONS, _RECORDS, _SECTORS):
 * such a journal is refused, never half-applied. */
extern int journal_scan (struct journal *j, journal_apply_fn apply,
                         void *opaque, struct journal_replay_stats *stats);

/* journal_scan applying records to the journal's own io, then extending
 * the file to min_file_size, flush, and moving the head past the last
 * applied transaction (superblock, flush).  Running it again after a crash
 * at any point gives the same bytes. */
extern int journal_replay (struct journal *j,
                           struct journal_replay_stats *stats);

#endif /* QCOW2J_JOURNAL_H */
