/* qcow2j lib: the journal object, shared by journal.c (writer) and
 * journal-replay.c (reader).  Nothing else sees it. */
#ifndef QCOW2J_JOURNAL_INTERNAL_H
#define QCOW2J_JOURNAL_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "hostio.h"
#include "journal.h"

/* The transaction being built in memory. */
struct open_tx {
  uint8_t *buf;                 /* records, ready to follow the header */
  size_t len, cap;
  uint32_t nr_records;
  uint64_t sectors;             /* replay work of its target ranges (R6) */
  size_t last_set64;            /* offset in buf of the last SET64 record */
  bool has_last_set64;
  uint64_t min_file_size;
  bool ordered;                 /* needs a flush before it is written */
  bool touched;                 /* min_file_size was raised */
  uint64_t *frees;              /* deferred frees added with it */
  size_t nr_frees, cap_frees;
};

struct journal {
  struct hostio *io;
  uint64_t area;                /* host offset of the journal area */
  uint64_t size;                /* bytes in the area */
  uint64_t id;
  uint64_t cluster_size;        /* records stay out of cluster 0 */
  bool ordered;                 /* no area: journal_create_ordered */

  pthread_mutex_t lock;         /* everything below; never held over I/O */
  pthread_cond_t cond;          /* a commit finished */
  struct journal_hooks hooks;
  void *hooks_opaque;
  unsigned active_changes;      /* between journal_begin and journal_end */
  bool sealing;                 /* a committer waits to seal */

  uint64_t head, head_seq;      /* durable head (first not checkpointed) */
  uint64_t tail, next_seq;      /* where the next transaction goes */
  uint64_t durable_seq;         /* every transaction <= this is durable */
  uint64_t sealed_gen;          /* transactions sealed so far (this open) */
  uint64_t durable_gen;         /* of those, durable */
  bool committing;              /* a thread is writing a transaction */
  int error;                    /* sticky commit failure (errno) */

  struct open_tx open;

  /* Sealed transactions not yet checkpointed (the live region): where
   * each ends and the replay work it holds, and that work's totals. */
  struct { uint64_t seq, end, sectors, records; } *pending;
  size_t npending, cap_pending;
  uint64_t live_sectors, live_records;
  /* Deferred frees waiting for the head to pass their transaction. */
  struct { uint64_t seq, value; } *deferred;
  size_t ndeferred, cap_deferred;
  uint64_t *released;
  size_t nreleased, cap_released;

  pthread_mutex_t sb_lock;      /* superblock writes (held over I/O) */
  uint64_t sb_generation;       /* of the newest superblock */
  unsigned sb_next;             /* copy (0 A, 1 B) the next write goes to */
};

/* The ring offset where a transaction starting at offset really starts
 * (offsets at the end of the area wrap to the ring start). */
extern uint64_t journal_ring_next (const struct journal *j, uint64_t offset);
/* The largest total_length of one transaction. */
extern uint64_t journal_max_transaction (const struct journal *j);
extern void journal_encode_superblock (const struct journal *j, uint8_t *sb,
                                       uint64_t generation, uint64_t head,
                                       uint64_t head_seq);
extern int journal_write_superblock (struct journal *j, uint64_t head,
                                     uint64_t head_seq);
extern void journal_reset_ring (struct journal *j, uint64_t head,
                                uint64_t head_seq);

#endif /* QCOW2J_JOURNAL_INTERNAL_H */
