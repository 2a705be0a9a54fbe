/* qcow2j tests: a power-cut simulator under lib/'s host I/O.
 *
 * A powercut hostio behaves like a file (reads see every write made so
 * far) and records every write, truncate, punch and flush it is given.
 * From that record it can build the file as it could be after a power cut
 * at any moment: everything before the last completed flush, plus any
 * subset of the writes issued after it, one of which may be torn (only
 * some of its 512-byte sectors landed).  That is the storage model of
 * docs/journal-format.md section 1.3.
 *
 * It can also inject a failure (EIO, ENOSPC, ...) at the Nth call of a
 * kind, for fault tests.
 *
 * The hostio and powercut_moment may be used by many threads at once;
 * the other functions only while no thread uses the file.
 */
#ifndef QCOW2J_POWERCUT_H
#define QCOW2J_POWERCUT_H

#include <stdbool.h>
#include <stdint.h>

#include "hostio.h"

struct powercut;

/* A simulated file starting with size bytes of data (copied). */
extern struct powercut *powercut_new (const char *name, const uint8_t *data,
                                      uint64_t size);
extern void powercut_free (struct powercut *pc);
extern struct hostio *powercut_io (struct powercut *pc);

/* Number of events (writes, truncates, punches, flushes) recorded so far:
 * a moment at which the power can be cut. */
extern uint64_t powercut_moment (struct powercut *pc);

/* True if event i (0-based) is a flush. */
extern bool powercut_is_flush (struct powercut *pc, uint64_t i);

/* Event i (0-based): its kind ('w' write, 't' truncate, 'p' punch, 'f'
 * flush), offset and length (a truncate's length is the new size). */
extern char powercut_event (struct powercut *pc, uint64_t i,
                            uint64_t *offset, uint64_t *len);

/* The current contents (what reads see). */
extern const uint8_t *powercut_data (struct powercut *pc, uint64_t *size);

/* A small deterministic random number generator for tests. */
static inline uint64_t
pc_rand (uint64_t *state)
{
  uint64_t x = *state += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* Build into *out (malloc'd, *out_size bytes) a file as it could be after
 * a power cut when the first 'moment' events had completed: the durable
 * state at the last flush among them, plus a random subset of the later
 * writes, truncates and punches, the last write possibly torn.  Calls with
 * non-decreasing moments are cheap (the durable state is kept). */
extern void powercut_crash_state (struct powercut *pc, uint64_t moment,
                                  uint64_t *rng, uint8_t **out,
                                  uint64_t *out_size);

/* The number of events between the last flush before moment and moment
 * (what a cut at moment may keep or lose). */
extern uint64_t powercut_pending (struct powercut *pc, uint64_t moment);

/* Like powercut_crash_state, with exactly the pending events whose bit is
 * set in subset (bit 0: the first after the flush; at most 64 pending
 * events), none torn: to enumerate every state of a short window. */
extern void powercut_crash_state_subset (struct powercut *pc,
                                         uint64_t moment, uint64_t subset,
                                         uint8_t **out, uint64_t *out_size);

/* Fail the nth (0-based, counted from now) call of the given kind with
 * err.  Kinds: 'w' pwrite, 'f' flush, 't' truncate, 'p' punch, 'r'
 * reserve. */
extern void powercut_fail_at (struct powercut *pc, char kind, uint64_t nth,
                              int err);

#endif /* QCOW2J_POWERCUT_H */
