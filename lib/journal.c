/* qcow2j lib: the journal's writer side: building transactions, group
 * commit, the ring, superblocks and the checkpoint hooks.
 *
 * Invariants (docs/journal-format.md states them normatively):
 *
 * 1. Transactions are written in sequence order, each at the ring position
 *    just after the previous one (or at the start of the ring after a
 *    SKIP filler), and a transaction never wraps.  So the valid chain that
 *    replay finds from the head is a prefix of what was written, and the
 *    first invalid transaction (torn write, stale lap, older journal) ends
 *    it.
 *
 * 2. A caller's journal_commit returns only after the transaction holding
 *    its records and every transaction before it is durable (written and
 *    flushed).  Transactions are written by one committing thread at a
 *    time, so durability is also in sequence order.
 *
 * 3. Ring space between the durable head and the tail is live: never
 *    written over.  The head moves only in journal_checkpointed, after the
 *    caller has flushed the in-place effects, and only once the superblock
 *    that records it has been flushed; space (and deferred frees, rule R3)
 *    is released after that flush, never before.  Otherwise a crash could
 *    leave an old head whose chain was overwritten by newer transactions.
 *
 * 4. Empty and full rings both have head == tail; they are told apart by
 *    sequence numbers (head_seq == next_seq means empty).
 *
 * 5. The live region never asks replay for more work than rule R6 allows
 *    (QJ_MAX_LIVE_TRANSACTIONS, _RECORDS, _SECTORS): one transaction never
 *    does (journal_add_* refuse with EFBIG), and a commit that would take
 *    the live region past it returns EAGAIN, like a full ring, so that
 *    the caller checkpoints first.  Without this, records a few bytes
 *    long (a ZERO of a 2 MiB table) could fill the ring with more work
 *    than any reader can afford, and a reader must refuse such a journal.
 *
 * Ordered mode (journal_create_ordered, for images that cannot carry a
 * journal) keeps everything above but the ring: a sealed transaction is
 * not written, the write_back hook writes the image's tables home
 * instead, and journal_checkpointed, called from that hook, only releases
 * the deferred frees.  Invariants 1, 3, 4 and 5 are about the ring and do
 * not apply; 2 holds with "written home" for "durable in the ring".
 *
 * Locking: 'lock' guards all in-memory state and is never held across I/O.
 * 'sb_lock' serializes superblock writes (generation and copy alternate),
 * and is held across that write and its flush: only the checkpoint and
 * replay take it.
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "crc32c.h"
#include "journal.h"
#include "journal-format.h"
#include "journal-internal.h"
#include "log.h"
#include "minmax.h"

uint64_t
journal_ring_next (const struct journal *j, uint64_t offset)
{
  return offset >= j->size ? QJ_RING_START : offset;
}

static int
grow (void **ptr, size_t *cap, size_t need, size_t elem)
{
  size_t n;
  void *p;

  if (need <= *cap)
    return 0;
  n = MAX (need, *cap * 2);
  n = MAX (n, (size_t) 16);
  p = realloc (*ptr, n * elem);
  if (p == NULL) {
    qerror ("journal: realloc: %m");
    errno = ENOMEM;
    return -1;
  }
  *ptr = p;
  *cap = n;
  return 0;
}

/* Superblocks ------------------------------------------------------------ */

void
journal_encode_superblock (const struct journal *j, uint8_t *sb,
                           uint64_t generation, uint64_t head,
                           uint64_t head_seq)
{
  memset (sb, 0, QJ_SB_USED);
  memcpy (sb + QJ_SB_OFF_MAGIC, QJ_SB_MAGIC, 8);
  put_be32 (sb + QJ_SB_OFF_VERSION, QJ_VERSION);
  put_be32 (sb + QJ_SB_OFF_BLOCK_SIZE, QJ_BLOCK);
  put_be64 (sb + QJ_SB_OFF_ID, j->id);
  put_be64 (sb + QJ_SB_OFF_GENERATION, generation);
  put_be64 (sb + QJ_SB_OFF_AREA_SIZE, j->size);
  put_be64 (sb + QJ_SB_OFF_HEAD, head);
  put_be64 (sb + QJ_SB_OFF_HEAD_SEQ, head_seq);
  put_be32 (sb + QJ_SB_OFF_FLAGS, 0);
  put_be32 (sb + QJ_SB_OFF_CRC, crc32c (0, sb, QJ_SB_OFF_CRC));
}

/* Write the next superblock copy recording head, and flush.  The head in
 * memory is the caller's to update afterwards. */
int
journal_write_superblock (struct journal *j, uint64_t head, uint64_t head_seq)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->sb_lock);
  uint8_t sb[512];

  if (j->sb_generation == UINT64_MAX) {
    /* Only a hostile image gets here: generation 0 would be invalid. */
    qerror ("%s: journal: superblock generation is exhausted", j->io->name);
    errno = EINVAL;
    return -1;
  }
  memset (sb, 0, sizeof sb);
  journal_encode_superblock (j, sb, j->sb_generation + 1, head, head_seq);
  if (hostio_pwrite (j->io, sb, sizeof sb,
                     j->area + j->sb_next * QJ_BLOCK) == -1 ||
      hostio_flush (j->io) == -1) {
    qerror ("%s: journal: write superblock: %m", j->io->name);
    return -1;
  }
  j->sb_generation++;
  j->sb_next ^= 1;
  return 0;
}

/* 0 and the superblock's fields if copy (0 or 1) is valid for j. */
static int
read_superblock (struct journal *j, unsigned copy, uint64_t *generation,
                 uint64_t *head, uint64_t *head_seq)
{
  uint8_t sb[QJ_SB_USED];

  if (hostio_pread (j->io, sb, sizeof sb, j->area + copy * QJ_BLOCK) == -1)
    return -1;
  if (memcmp (sb + QJ_SB_OFF_MAGIC, QJ_SB_MAGIC, 8) != 0 ||
      get_be32 (sb + QJ_SB_OFF_CRC) != crc32c (0, sb, QJ_SB_OFF_CRC) ||
      get_be32 (sb + QJ_SB_OFF_VERSION) != QJ_VERSION ||
      get_be32 (sb + QJ_SB_OFF_BLOCK_SIZE) != QJ_BLOCK ||
      get_be64 (sb + QJ_SB_OFF_ID) != j->id ||
      get_be64 (sb + QJ_SB_OFF_AREA_SIZE) != j->size ||
      get_be32 (sb + QJ_SB_OFF_FLAGS) != 0)
    goto invalid;
  *generation = get_be64 (sb + QJ_SB_OFF_GENERATION);
  if (*generation == 0)
    goto invalid;
  *head = get_be64 (sb + QJ_SB_OFF_HEAD);
  *head_seq = get_be64 (sb + QJ_SB_OFF_HEAD_SEQ);
  if (*head < QJ_RING_START || *head >= j->size ||
      *head % QJ_BLOCK != 0 || *head_seq == 0 || *head_seq == UINT64_MAX)
    goto invalid;
  return 0;
 invalid:
  errno = EINVAL;
  return -1;
}

/* Life cycle --------------------------------------------------------------- */

static struct journal *
journal_alloc (struct hostio *io, uint64_t area, uint64_t size, uint64_t id,
               uint64_t cluster_size)
{
  struct journal *j = calloc (1, sizeof *j);

  if (j == NULL) {
    qerror ("journal: calloc: %m");
    return NULL;
  }
  j->io = io;
  j->area = area;
  j->size = size;
  j->id = id;
  j->cluster_size = cluster_size;
  pthread_mutex_init (&j->lock, NULL);
  pthread_mutex_init (&j->sb_lock, NULL);
  pthread_cond_init (&j->cond, NULL);
  return j;
}

static struct journal *
journal_new (struct hostio *io, uint64_t area, uint64_t size, uint64_t id,
             uint64_t cluster_size)
{
  if (size < QJ_MIN_AREA || size > QJ_MAX_AREA || size % QJ_BLOCK != 0 ||
      area % QJ_BLOCK != 0 || area < cluster_size ||
      area > QJ_MAX_TARGET - size) {
    qerror ("%s: journal area at 0x%" PRIx64 " of %" PRIu64 " bytes is "
            "invalid (a multiple of %d from %llu to %llu bytes, past the "
            "header cluster)", io->name, area, size, QJ_BLOCK, QJ_MIN_AREA,
            QJ_MAX_AREA);
    errno = EINVAL;
    return NULL;
  }
  return journal_alloc (io, area, size, id, cluster_size);
}

/* Point the writer at an empty ring whose head is (head, head_seq). */
void
journal_reset_ring (struct journal *j, uint64_t head, uint64_t head_seq)
{
  j->head = j->tail = head;
  j->head_seq = j->next_seq = head_seq;
  j->durable_seq = head_seq - 1;
  j->npending = 0;
  j->live_sectors = j->live_records = 0;
}

struct journal *
journal_create (struct hostio *io, uint64_t area, uint64_t size, uint64_t id,
                uint64_t cluster_size)
{
  struct journal *j = journal_new (io, area, size, id, cluster_size);
  uint8_t block[QJ_BLOCK];

  if (j == NULL)
    return NULL;
  /* Copy 0 (generation 1) and copy 1 (generation 2) are both valid; the
   * next superblock write goes to copy 0, the older. */
  memset (block, 0, sizeof block);
  journal_encode_superblock (j, block, 1, QJ_RING_START, 1);
  if (hostio_pwrite (io, block, sizeof block, area) == -1)
    goto fail;
  journal_encode_superblock (j, block, 2, QJ_RING_START, 1);
  if (hostio_pwrite (io, block, sizeof block, area + QJ_BLOCK) == -1)
    goto fail;
  /* The first ring block must not hold a transaction that looks valid. */
  memset (block, 0, sizeof block);
  if (hostio_pwrite (io, block, sizeof block, area + QJ_RING_START) == -1 ||
      hostio_flush (io) == -1)
    goto fail;
  j->sb_generation = 2;
  j->sb_next = 0;
  journal_reset_ring (j, QJ_RING_START, 1);
  return j;

 fail:
  qerror ("%s: journal: create: %m", io->name);
  journal_free (j);
  return NULL;
}

struct journal *
journal_open (struct hostio *io, uint64_t area, uint64_t size, uint64_t id,
              uint64_t cluster_size)
{
  struct journal *j = journal_new (io, area, size, id, cluster_size);
  uint64_t gen[2], head[2], seq[2];
  int ok[2];
  unsigned best;

  if (j == NULL)
    return NULL;
  for (unsigned c = 0; c < 2; c++)
    ok[c] = read_superblock (j, c, &gen[c], &head[c], &seq[c]) == 0;
  /* Two valid copies of one generation that disagree: no way to tell
   * which is newer. */
  if (ok[0] && ok[1] && gen[0] == gen[1] &&
      (head[0] != head[1] || seq[0] != seq[1]))
    ok[0] = ok[1] = 0;
  if (!ok[0] && !ok[1]) {
    qerror ("%s: journal at 0x%" PRIx64 ": no valid superblock for "
            "journal id 0x%016" PRIx64, io->name, area, id);
    journal_free (j);
    errno = EINVAL;
    return NULL;
  }
  best = !ok[0] || (ok[1] && gen[1] > gen[0]);
  j->sb_generation = gen[best];
  j->sb_next = best ^ 1;
  journal_reset_ring (j, head[best], seq[best]);
  return j;
}

/* The ring an ordered-mode journal pretends to have: it bounds a batch
 * (journal_open_is_large, journal_add_* refusing with EFBIG) as the
 * default journal would. */
#define QJ_ORDERED_BATCH_AREA (4ULL << 20)

struct journal *
journal_create_ordered (struct hostio *io, uint64_t cluster_size)
{
  struct journal *j = journal_alloc (io, 0, QJ_ORDERED_BATCH_AREA, 0,
                                     cluster_size);

  if (j == NULL)
    return NULL;
  j->ordered = true;
  journal_reset_ring (j, QJ_RING_START, 1);
  return j;
}

void
journal_free (struct journal *j)
{
  if (j == NULL)
    return;
  free (j->open.buf);
  free (j->open.frees);
  free (j->pending);
  free (j->deferred);
  free (j->released);
  pthread_mutex_destroy (&j->lock);
  pthread_mutex_destroy (&j->sb_lock);
  pthread_cond_destroy (&j->cond);
  free (j);
}

void
journal_set_hooks (struct journal *j, const struct journal_hooks *hooks,
                   void *opaque)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  j->hooks = *hooks;
  j->hooks_opaque = opaque;
}

void
journal_begin (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);

  /* A committer waiting to seal goes first (it waits for us otherwise). */
  while (j->sealing)
    pthread_cond_wait (&j->cond, &j->lock);
  j->active_changes++;
}

void
journal_end (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);

  assert (j->active_changes > 0);
  if (--j->active_changes == 0)
    pthread_cond_broadcast (&j->cond);
}

/* Building the open transaction ------------------------------------------- */

uint64_t
journal_max_transaction (const struct journal *j)
{
  return MIN ((uint64_t) QJ_MAX_TRANSACTION, j->size - QJ_RING_START);
}

/* Under lock: the file must reach at least end (rule R5). */
static void
raise_min_file_size (struct journal *j, uint64_t end)
{
  j->open.min_file_size = MAX (j->open.min_file_size, ROUND_UP (end, 512));
  j->open.touched = true;
}

/* Under lock: may the open transaction take records more records whose
 * target ranges touch sectors more sectors?  Rule R6 bounds what the
 * live region asks of a replay; one transaction alone must fit in it.
 * Checked before anything is added, so a refusal adds nothing. */
static int
open_charge (struct journal *j, uint64_t sectors, uint64_t records)
{
  const struct open_tx *t = &j->open;

  if (sectors > QJ_MAX_LIVE_SECTORS - t->sectors ||
      records > QJ_MAX_LIVE_RECORDS - t->nr_records) {
    qerror ("%s: journal: transaction would ask replay for %" PRIu64
            " sectors in %" PRIu64 " records, more than the bound of %llu "
            "sectors and %llu records", j->io->name, t->sectors + sectors,
            t->nr_records + records, QJ_MAX_LIVE_SECTORS,
            QJ_MAX_LIVE_RECORDS);
    errno = EFBIG;
    return -1;
  }
  return 0;
}

/* Reserve len bytes at the end of the open transaction's records. */
static uint8_t *
open_append (struct journal *j, size_t len)
{
  struct open_tx *t = &j->open;
  uint8_t *p;

  if (ROUND_UP (QJ_TX_HEADER + t->len + len, (size_t) QJ_BLOCK) >
      journal_max_transaction (j)) {
    qerror ("%s: journal: transaction larger than %" PRIu64 " bytes",
            j->io->name, journal_max_transaction (j));
    errno = EFBIG;
    return NULL;
  }
  if (grow ((void **) &t->buf, &t->cap, t->len + len, 1) == -1)
    return NULL;
  p = t->buf + t->len;
  t->len += len;
  return p;
}

int
journal_add_set64 (struct journal *j, uint64_t offset, uint64_t value)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  struct open_tx *t = &j->open;
  uint8_t *p;

  assert (offset % 8 == 0 && offset < QJ_MAX_TARGET);
  /* Extend the last record if it is a SET64: 16 bytes per entry. */
  if (t->has_last_set64 && t->last_set64 + get_be32 (t->buf + t->last_set64 + 4)
      == t->len) {
    if (open_charge (j, 1, 0) == -1)
      return -1;
    p = open_append (j, 16);
    if (p == NULL)
      return -1;
    put_be32 (t->buf + t->last_set64 + 4,
              get_be32 (t->buf + t->last_set64 + 4) + 16);
  }
  else {
    if (open_charge (j, 1, 1) == -1)
      return -1;
    p = open_append (j, QJ_REC_HEADER + 16);
    if (p == NULL)
      return -1;
    t->last_set64 = p - t->buf;
    t->has_last_set64 = true;
    put_be16 (p, QJ_REC_SET64);
    put_be16 (p + 2, 0);
    put_be32 (p + 4, QJ_REC_HEADER + 16);
    p += QJ_REC_HEADER;
    t->nr_records++;
  }
  put_be64 (p, offset);
  put_be64 (p + 8, value);
  t->sectors++;
  raise_min_file_size (j, offset + 8);
  return 0;
}

int
journal_add_write (struct journal *j, uint64_t offset, const void *buf,
                   uint32_t count)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  size_t len = QJ_REC_HEADER + 16 + ROUND_UP ((size_t) count, 8);
  uint8_t *p;

  assert (count >= 1 && offset < QJ_MAX_TARGET &&
          count <= QJ_MAX_TARGET - offset);
  if (open_charge (j, qj_target_sectors (offset, count), 1) == -1)
    return -1;
  p = open_append (j, len);
  if (p == NULL)
    return -1;
  memset (p, 0, len);
  put_be16 (p, QJ_REC_WRITE);
  put_be32 (p + 4, len);
  put_be64 (p + 8, offset);
  put_be32 (p + 16, count);
  memcpy (p + 24, buf, count);
  j->open.nr_records++;
  j->open.sectors += qj_target_sectors (offset, count);
  raise_min_file_size (j, offset + count);
  return 0;
}

int
journal_add_zero (struct journal *j, uint64_t offset, uint64_t count)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);

  assert (offset % 512 == 0 && count % 512 == 0);
  assert (offset < QJ_MAX_TARGET && count <= QJ_MAX_TARGET - offset);
  /* One record per QJ_MAX_ZERO bytes, one sector per 512 bytes. */
  if (open_charge (j, count / QJ_SECTOR,
                   (count + QJ_MAX_ZERO - 1) / QJ_MAX_ZERO) == -1)
    return -1;
  while (count > 0) {
    uint64_t n = MIN (count, (uint64_t) QJ_MAX_ZERO);
    uint8_t *p = open_append (j, QJ_REC_HEADER + 16);

    if (p == NULL)
      return -1;
    put_be16 (p, QJ_REC_ZERO);
    put_be16 (p + 2, 0);
    put_be32 (p + 4, QJ_REC_HEADER + 16);
    put_be64 (p + 8, offset);
    put_be64 (p + 16, n);
    j->open.nr_records++;
    j->open.sectors += n / QJ_SECTOR;
    raise_min_file_size (j, offset + n);
    offset += n;
    count -= n;
  }
  return 0;
}

void
journal_need_file_size (struct journal *j, uint64_t size)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  raise_min_file_size (j, size);
}

void
journal_need_ordering (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  j->open.ordered = true;
}

int
journal_defer_free (struct journal *j, uint64_t value)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  struct open_tx *t = &j->open;

  if (grow ((void **) &t->frees, &t->cap_frees, t->nr_frees + 1,
            sizeof *t->frees) == -1)
    return -1;
  t->frees[t->nr_frees++] = value;
  return 0;
}

static bool
open_is_empty (const struct journal *j)
{
  return j->open.nr_records == 0 && j->open.nr_frees == 0 && !j->open.touched;
}

/* Committing --------------------------------------------------------------- */

/* Under lock: can a transaction of total bytes go at the tail?  Sets
 * *skip if it needs a SKIP filler from the tail to the end of the ring
 * first, or *move_head if the ring is empty but the transaction fits
 * neither before the end nor, after a filler, below the head: then the
 * head moves to the ring start first (a durable superblock write), and
 * the transaction goes there. */
static bool
ring_has_room (const struct journal *j, uint64_t total, bool *skip,
               bool *move_head)
{
  bool empty = j->head_seq == j->next_seq;
  bool wrapped = !empty && j->tail <= j->head;

  *skip = j->tail + total > j->size;
  *move_head = false;
  if (empty && *skip && QJ_RING_START + total > j->head) {
    *skip = false;
    *move_head = true;
    return true;
  }
  if (empty)
    return true;
  if (!*skip)
    return !wrapped || j->tail + total <= j->head;
  /* The filler takes [tail, size): free only if not wrapped; then the
   * transaction goes at the ring start, below the head. */
  return !wrapped && QJ_RING_START + total <= j->head;
}

/* What one commit writes, built under the lock, written without it. */
struct sealed {
  uint8_t *buf;                 /* SKIP filler header (if any) + tx */
  uint64_t skip_offset;         /* ring offset of the filler */
  bool has_skip;
  bool move_head;               /* head to the ring start first */
  uint64_t tx_offset;           /* ring offset of the transaction */
  size_t tx_write_len;          /* bytes to write from buf + QJ_TX_HEADER */
  uint64_t seq;
  bool ordered;
};

static void
encode_tx_header (const struct journal *j, uint8_t *h, uint64_t seq,
                  uint32_t payload, uint32_t total, uint32_t nr_records,
                  uint32_t flags, uint64_t min_file_size)
{
  memset (h, 0, QJ_TX_HEADER);
  memcpy (h + QJ_TX_OFF_MAGIC, QJ_TX_MAGIC, 4);
  put_be64 (h + QJ_TX_OFF_ID, j->id);
  put_be64 (h + QJ_TX_OFF_SEQ, seq);
  put_be32 (h + QJ_TX_OFF_PAYLOAD, payload);
  put_be32 (h + QJ_TX_OFF_TOTAL, total);
  put_be32 (h + QJ_TX_OFF_NR_RECORDS, nr_records);
  put_be32 (h + QJ_TX_OFF_FLAGS, flags);
  put_be64 (h + QJ_TX_OFF_MIN_FILE, min_file_size);
}

static void
seal_crc (uint8_t *h, uint32_t payload)
{
  put_be32 (h + QJ_TX_OFF_CRC, 0);
  put_be32 (h + QJ_TX_OFF_CRC, crc32c (0, h, payload));
}

/* Under lock, with room reserved: remember where transaction seq ends,
 * and the replay work it adds to the live region. */
static void
add_pending (struct journal *j, uint64_t seq, uint64_t end, uint64_t sectors,
             uint64_t records)
{
  assert (j->npending < j->cap_pending);
  j->pending[j->npending].seq = seq;
  j->pending[j->npending].end = end;
  j->pending[j->npending].sectors = sectors;
  j->pending[j->npending].records = records;
  j->npending++;
  j->live_sectors += sectors;
  j->live_records += records;
  assert (j->npending <= QJ_MAX_LIVE_TRANSACTIONS &&
          j->live_sectors <= QJ_MAX_LIVE_SECTORS &&
          j->live_records <= QJ_MAX_LIVE_RECORDS);
}

/* Under lock: the open transaction is done with; its deferred frees
 * belong to seq from now on (reserved by the caller). */
static void
close_open (struct journal *j, uint64_t seq)
{
  struct open_tx *t = &j->open;

  for (size_t i = 0; i < t->nr_frees; i++) {
    j->deferred[j->ndeferred].seq = seq;
    j->deferred[j->ndeferred].value = t->frees[i];
    j->ndeferred++;
  }
  t->len = 0;
  t->nr_records = 0;
  t->sectors = 0;
  t->nr_frees = 0;
  t->has_last_set64 = false;
  t->min_file_size = 0;
  t->ordered = false;
  t->touched = false;
  j->sealed_gen++;
}

/* Under lock, in ordered mode: nothing is written, so there is no ring
 * to claim; the records have served their purpose (the changes are in
 * the metadata cache, which the write-back writes home). */
static int
seal_ordered (struct journal *j, struct sealed *s)
{
  if (grow ((void **) &j->deferred, &j->cap_deferred,
            j->ndeferred + j->open.nr_frees, sizeof *j->deferred) == -1)
    return -1;
  s->seq = j->next_seq++;
  close_open (j, s->seq);
  return 0;
}

/* Under lock: turn the open transaction into bytes to write and claim its
 * ring space and sequence number(s). */
static int
seal (struct journal *j, struct sealed *s)
{
  struct open_tx *t = &j->open;
  uint32_t payload = QJ_TX_HEADER + t->len;
  uint64_t total = ROUND_UP ((uint64_t) payload, QJ_BLOCK);
  size_t write_len = ROUND_UP ((size_t) payload, 512);
  uint8_t *h;

  memset (s, 0, sizeof *s);
  if (j->ordered)
    return seal_ordered (j, s);
  if (total > j->size - QJ_RING_START) {
    qerror ("%s: journal: a %" PRIu64 "-byte transaction cannot fit in "
            "the ring", j->io->name, total);
    errno = EFBIG;
    return -1;
  }
  if (!ring_has_room (j, total, &s->has_skip, &s->move_head)) {
    errno = EAGAIN;
    return -1;
  }
  /* Rule R6, like a full ring: a checkpoint must empty the live region
   * first.  An empty one always has room (open_charge). */
  if (j->npending + 1 + s->has_skip > QJ_MAX_LIVE_TRANSACTIONS ||
      t->sectors > QJ_MAX_LIVE_SECTORS - j->live_sectors ||
      t->nr_records > QJ_MAX_LIVE_RECORDS - j->live_records) {
    assert (j->npending > 0);
    errno = EAGAIN;
    return -1;
  }
  /* Reserve everything that can fail before changing any state. */
  if (grow ((void **) &j->pending, &j->cap_pending, j->npending + 2,
            sizeof *j->pending) == -1 ||
      grow ((void **) &j->deferred, &j->cap_deferred,
            j->ndeferred + t->nr_frees, sizeof *j->deferred) == -1)
    return -1;
  s->buf = calloc (1, QJ_TX_HEADER + write_len);
  if (s->buf == NULL) {
    qerror ("journal: calloc: %m");
    return -1;
  }

  if (s->has_skip) {
    uint32_t skip_total = j->size - j->tail;

    s->skip_offset = j->tail;
    encode_tx_header (j, s->buf, j->next_seq, QJ_TX_HEADER, skip_total, 0,
                      QJ_TX_FLAG_SKIP, 0);
    seal_crc (s->buf, QJ_TX_HEADER);
    add_pending (j, j->next_seq, j->size, 0, 0);
    j->next_seq++;
    j->tail = QJ_RING_START;
  }

  if (s->move_head)
    j->tail = QJ_RING_START;
  h = s->buf + QJ_TX_HEADER;
  s->tx_offset = j->tail;
  s->tx_write_len = write_len;
  s->seq = j->next_seq;
  s->ordered = t->ordered;
  encode_tx_header (j, h, s->seq, payload, total, t->nr_records, 0,
                    t->min_file_size);
  if (t->len > 0)
    memcpy (h + QJ_TX_HEADER, t->buf, t->len);
  seal_crc (h, payload);
  add_pending (j, s->seq, j->tail + total, t->sectors, t->nr_records);
  j->next_seq++;
  j->tail = journal_ring_next (j, j->tail + total);
  close_open (j, s->seq);
  return 0;
}

/* Without lock: write what seal produced and make it durable.
 *
 * The commit sequences of docs/journal-format.md: an ordered batch (one
 * that maps host space which is not fresh, 8.4 E1 to E4 failing; write.c
 * decides) takes the two-flush commit of 8.3, F1 then F2; any other takes
 * the one-flush commit of 8.4, whose single flush F is the F2 below. */
static int
write_sealed (struct journal *j, const struct sealed *s,
              int (*pre_commit) (void *), void *opaque)
{
  int r = pre_commit ? pre_commit (opaque) : 0;

  if (r == -1)
    return -1;
  /* F1 (8.3 step 3): the batch's data, and the pre-commit write (DIRTY,
   * 8.3 step 1) are durable before any byte of the transaction is
   * written. */
  if ((s->ordered || r == 1) && hostio_flush (j->io) == -1)
    return -1;
  /* The ring is empty: nothing is lost by moving the head, and it must be
   * durable before the transaction is written over the old head. */
  if (s->move_head && journal_write_superblock (j, QJ_RING_START, s->seq) == -1)
    return -1;
  if (s->has_skip &&
      hostio_pwrite (j->io, s->buf, 512, j->area + s->skip_offset) == -1)
    return -1;
  if (hostio_pwrite (j->io, s->buf + QJ_TX_HEADER, s->tx_write_len,
                     j->area + s->tx_offset) == -1)
    return -1;
  /* F2 (8.3 step 5), or F (8.4 step 3): committed. */
  return hostio_flush (j->io);
}

int
journal_commit (struct journal *j, uint64_t *seq_out)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  /* The transaction generation holding this caller's records: the open
   * one if it has any, else the last sealed one. */
  uint64_t target = j->sealed_gen + !open_is_empty (j);

  while (j->durable_gen < target) {
    struct sealed s;
    int (*pre_commit) (void *) = j->hooks.pre_commit;
    void *opaque = j->hooks_opaque;
    int r, err;

    if (j->error) {
      errno = j->error;
      return -1;
    }
    if (j->committing) {
      pthread_cond_wait (&j->cond, &j->lock);
      continue;
    }
    /* Become the committer for everything open now, once no change is
     * half made. */
    assert (target == j->sealed_gen + 1);
    j->committing = true;
    j->sealing = true;
    while (j->active_changes > 0)
      pthread_cond_wait (&j->cond, &j->lock);
    /* What the records promise, done while changes still wait: none can
     * add to the transaction between this and the seal. */
    if (!j->error && j->hooks.pre_seal) {
      pthread_mutex_unlock (&j->lock);
      r = j->hooks.pre_seal (opaque);
      err = errno;
      pthread_mutex_lock (&j->lock);
      if (r == -1 && !j->error)
        j->error = err ? err : EIO;
    }
    /* A change that failed half way poisons the journal (journal_fail)
     * before it ends: its records must never be sealed. */
    if (j->error) {
      errno = j->error;
      r = -1;
    }
    else
      r = seal (j, &s);
    j->sealing = false;
    if (r == -1) {
      j->committing = false;
      pthread_cond_broadcast (&j->cond);
      return -1;
    }
    pthread_cond_broadcast (&j->cond);
    if (j->hooks.sealed)
      j->hooks.sealed (opaque);
    /* Ordered mode: what was sealed is what the write-back writes. */
    if (j->ordered && j->hooks.durable)
      j->hooks.durable (opaque);

    pthread_mutex_unlock (&j->lock);
    if (j->ordered)
      r = j->hooks.write_back (opaque, s.seq);
    else
      r = write_sealed (j, &s, pre_commit, opaque);
    err = errno;
    free (s.buf);
    pthread_mutex_lock (&j->lock);

    j->committing = false;
    if (r == -1) {
      /* The ring's state on disk is unknown: stop here for good. */
      j->error = err ? err : EIO;
      qerror ("%s: journal: commit of transaction %" PRIu64 " failed, "
              "refusing further metadata changes: %s", j->io->name, s.seq,
              strerror (j->error));
    }
    else {
      if (s.move_head) {
        j->head = QJ_RING_START;
        j->head_seq = s.seq;
      }
      j->durable_gen = j->sealed_gen;
      j->durable_seq = s.seq;
      if (j->hooks.durable && !j->ordered)
        j->hooks.durable (opaque);
    }
    pthread_cond_broadcast (&j->cond);
  }
  if (seq_out)
    *seq_out = j->durable_seq;
  return 0;
}

void
journal_fail (struct journal *j, int err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  if (j->error == 0)
    j->error = err ? err : EIO;
  pthread_cond_broadcast (&j->cond);
}

void
journal_generations (struct journal *j, uint64_t *sealed, uint64_t *durable)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  *sealed = j->sealed_gen;
  *durable = j->durable_gen;
}

size_t
journal_open_bytes (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  return j->open.len;
}

bool
journal_open_is_large (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  return j->open.len > (j->size - QJ_RING_START) / 8 ||
    j->open.sectors > QJ_MAX_LIVE_SECTORS / 8 ||
    j->open.nr_records > QJ_MAX_LIVE_RECORDS / 8;
}

/* Checkpoint hooks ---------------------------------------------------------- */

uint64_t
journal_durable_seq (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  return j->durable_seq;
}

uint64_t
journal_head_seq (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  return j->head_seq;
}

uint64_t
journal_ring_size (struct journal *j)
{
  return j->size - QJ_RING_START;
}

uint64_t
journal_ring_used (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);

  if (j->ordered || j->head_seq == j->next_seq)
    return 0;
  if (j->tail > j->head)
    return j->tail - j->head;
  return (j->size - j->head) + (j->tail - QJ_RING_START);
}

bool
journal_is_idle (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  return open_is_empty (j) && !j->committing;
}

size_t
journal_frees_pending (struct journal *j)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  return j->open.nr_frees + j->ndeferred + j->nreleased;
}

int
journal_checkpointed (struct journal *j, uint64_t seq)
{
  uint64_t new_head, new_head_seq;
  size_t k, n;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);

    if (seq < j->head_seq)
      return 0;                 /* nothing new */
    new_head_seq = seq + 1;
    if (j->ordered)             /* written home by the caller: no ring */
      new_head = j->head;
    else {
      assert (seq <= j->durable_seq);
      for (k = 0; k < j->npending && j->pending[k].seq != seq; k++)
        ;
      assert (k < j->npending);
      new_head = journal_ring_next (j, j->pending[k].end);
    }
  }

  if (!j->ordered &&
      journal_write_superblock (j, new_head, new_head_seq) == -1)
    return -1;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  j->head = new_head;
  j->head_seq = new_head_seq;
  for (k = 0; k < j->npending && j->pending[k].seq < new_head_seq; k++) {
    j->live_sectors -= j->pending[k].sectors;
    j->live_records -= j->pending[k].records;
  }
  if (k > 0) {                  /* (none in ordered mode) */
    memmove (j->pending, j->pending + k,
             (j->npending - k) * sizeof *j->pending);
    j->npending -= k;
  }

  /* Rule R3: deferred frees of transactions now behind the head. */
  for (k = n = 0; k < j->ndeferred; k++) {
    if (j->deferred[k].seq < new_head_seq) {
      if (grow ((void **) &j->released, &j->cap_released, j->nreleased + 1,
                sizeof *j->released) == 0)
        j->released[j->nreleased++] = j->deferred[k].value;
      /* On ENOMEM the cluster leaks until the next repair; never reused
       * early. */
    }
    else
      j->deferred[n++] = j->deferred[k];
  }
  j->ndeferred = n;
  return 0;
}

size_t
journal_take_released (struct journal *j, uint64_t *values, size_t max)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&j->lock);
  size_t n = MIN (max, j->nreleased);

  if (n == 0)
    return 0;
  memcpy (values, j->released, n * sizeof *values);
  memmove (j->released, j->released + n,
           (j->nreleased - n) * sizeof *j->released);
  j->nreleased -= n;
  return n;
}
