/* Unit test of the journal (lib/journal.c, lib/journal-replay.c) on an
 * in-memory file: commit and replay, checkpoints, the ring wrapping with
 * SKIP fillers, ring accounting, full-ring EAGAIN, EFBIG, group commit
 * from several threads, deferred frees (rule R3), the pre-commit hook and
 * the order of writes and flushes, and sticky I/O errors.
 *
 * Layout: 64 KiB clusters, journal area at 1 MiB of 1 MiB, records
 * targeting a "metadata" region at 4 MiB - 8 MiB (and header words in
 * cluster 0).
 *
 * "unit-journal NAME" runs one case (tests/unit.h). */
#include <config.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <inttypes.h>
#include <unistd.h>

#include "journal.h"
#include "journal-format.h"
#include "mem-io.h"
#include "unit.h"

#define CLUSTER    65536ULL
#define AREA       (1ULL << 20)
#define AREA_SIZE  (1ULL << 20)
#define RING       (AREA_SIZE - QJ_RING_START)
#define META       (4ULL << 20)
#define META_END   (8ULL << 20)
#define ID         0x0123456789abcdefULL

#define ROUNDUP(x, n) (((x) + (n) - 1) / (n) * (n))

/* A hostio over a mem_io that logs operations and injects faults. ---- */

struct wrap_io {
  struct hostio io;
  struct mem_io *mem;
  uint64_t area, area_size;     /* to classify writes */

  /* Op log (single-threaded tests only): 'W' pwrite inside the journal
   * area, 'w' pwrite elsewhere, 'F' flush, 'T' truncate, 'H' (written by
   * the pre-commit hook). */
  bool logging;
  char log[1024];
  size_t loglen;

  atomic_uint pwrites, flushes;
  int fail_pwrite, fail_flush;  /* errno for the next one, 0: none */
  unsigned flush_delay_us;

  /* Two I/O calls at once (the committer is meant to be alone). */
  atomic_int in_io, overlaps;

  /* Called before each pwrite / flush is passed down. */
  void (*on_op) (struct wrap_io *w, char op, uint64_t offset);
  void *opaque;

  /* Group commit bookkeeping: the seq of the transaction whose write
   * carried each marker SET64, and the highest seq written / flushed. */
  _Atomic uint64_t *marker_seq;
  uint64_t marker_base;
  size_t nmarkers;
  _Atomic uint64_t written_max_seq, flushed_max_seq;
};

static void
logc (struct wrap_io *w, char c)
{
  if (w->logging && w->loglen < sizeof w->log - 1) {
    w->log[w->loglen++] = c;
    w->log[w->loglen] = '\0';
  }
}

static void
log_clear (struct wrap_io *w)
{
  w->loglen = 0;
  w->log[0] = '\0';
}

static void
enter (struct wrap_io *w)
{
  if (atomic_fetch_add_explicit (&w->in_io, 1, memory_order_relaxed) != 0)
    atomic_fetch_add_explicit (&w->overlaps, 1, memory_order_relaxed);
}

static void
leave (struct wrap_io *w)
{
  atomic_fetch_sub_explicit (&w->in_io, 1, memory_order_relaxed);
}

static void
note_markers (struct wrap_io *w, const uint8_t *b, size_t count,
              uint64_t offset)
{
  uint64_t seq, prev;
  uint32_t payload, flags;

  if (offset < w->area + QJ_RING_START || offset >= w->area + w->area_size ||
      count < QJ_TX_HEADER || memcmp (b, QJ_TX_MAGIC, 4) != 0)
    return;
  seq = get_be64 (b + QJ_TX_OFF_SEQ);
  payload = get_be32 (b + QJ_TX_OFF_PAYLOAD);
  flags = get_be32 (b + QJ_TX_OFF_FLAGS);
  if (w->marker_seq && !(flags & QJ_TX_FLAG_SKIP) && payload <= count) {
    for (uint32_t p = QJ_TX_HEADER; p + QJ_REC_HEADER <= payload; ) {
      uint16_t type = get_be16 (b + p);
      uint32_t len = get_be32 (b + p + 4);

      if (len < QJ_REC_HEADER || p + len > payload)
        break;
      if (type == QJ_REC_SET64)
        for (uint32_t i = QJ_REC_HEADER; i + 16 <= len; i += 16) {
          uint64_t off = get_be64 (b + p + i);

          if (off >= w->marker_base &&
              off < w->marker_base + 8 * w->nmarkers) {
            size_t idx = (off - w->marker_base) / 8;
            /* Each marker is added once, so written once. */
            CHECK (atomic_load (&w->marker_seq[idx]) == 0);
            atomic_store (&w->marker_seq[idx], seq);
          }
        }
      p += len;
    }
  }
  prev = atomic_load (&w->written_max_seq);
  if (seq > prev)
    atomic_store (&w->written_max_seq, seq);
}

static int
wrap_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  struct wrap_io *w = (struct wrap_io *) io;
  return hostio_pread (&w->mem->io, buf, count, offset);
}

static int
wrap_pwrite (struct hostio *io, const void *buf, size_t count,
             uint64_t offset)
{
  struct wrap_io *w = (struct wrap_io *) io;
  int r;

  enter (w);
  if (w->on_op)
    w->on_op (w, 'W', offset);
  atomic_fetch_add (&w->pwrites, 1);
  logc (w, offset >= w->area && offset < w->area + w->area_size ? 'W' : 'w');
  if (w->fail_pwrite) {
    errno = w->fail_pwrite;
    w->fail_pwrite = 0;
    leave (w);
    return -1;
  }
  note_markers (w, buf, count, offset);
  r = hostio_pwrite (&w->mem->io, buf, count, offset);
  leave (w);
  return r;
}

static int
wrap_flush (struct hostio *io)
{
  struct wrap_io *w = (struct wrap_io *) io;

  enter (w);
  if (w->on_op)
    w->on_op (w, 'F', 0);
  atomic_fetch_add (&w->flushes, 1);
  logc (w, 'F');
  if (w->fail_flush) {
    errno = w->fail_flush;
    w->fail_flush = 0;
    leave (w);
    return -1;
  }
  if (w->flush_delay_us)
    usleep (w->flush_delay_us);
  atomic_store (&w->flushed_max_seq, atomic_load (&w->written_max_seq));
  leave (w);
  return 0;
}

static int
wrap_punch (struct hostio *io, uint64_t o, uint64_t c)
{
  errno = ENOTSUP;
  return -1;
}

static int
wrap_truncate (struct hostio *io, uint64_t size)
{
  struct wrap_io *w = (struct wrap_io *) io;
  logc (w, 'T');
  return w->mem->io.ops->truncate (&w->mem->io, size);
}

static int64_t
wrap_size (struct hostio *io)
{
  return hostio_size (&((struct wrap_io *) io)->mem->io);
}

static int
wrap_block_status (struct hostio *io, uint64_t o, uint64_t c, bool *is_data,
                   uint64_t *run)
{
  *is_data = true;
  *run = c;
  return 0;
}

static void
wrap_close (struct hostio *io)
{
  struct wrap_io *w = (struct wrap_io *) io;
  hostio_close (&w->mem->io);
  free (w->marker_seq);
  free (w->io.name);
  free (w);
}

static const struct hostio_ops wrap_ops = {
  .pread = wrap_pread, .pwrite = wrap_pwrite, .flush = wrap_flush,
  .punch = wrap_punch, .truncate = wrap_truncate, .size = wrap_size,
  .block_status = wrap_block_status, .close = wrap_close,
};

static struct wrap_io *
wrap_new (uint64_t size, uint64_t area, uint64_t area_size)
{
  struct wrap_io *w = calloc (1, sizeof *w);

  REQUIRE (w != NULL);
  w->io.ops = &wrap_ops;
  w->io.name = strdup ("wrap");
  w->mem = mem_io_new ("mem", size);
  w->area = area;
  w->area_size = area_size;
  return w;
}

/* Helpers ---------------------------------------------------------------- */

/* A copy of m's bytes as a new mem_io. */
static struct mem_io *
mem_clone (const struct mem_io *m)
{
  struct mem_io *c = mem_io_new ("clone", m->size);
  memcpy (c->data, m->data, m->size);
  return c;
}

static uint64_t
get64_at (const struct mem_io *m, uint64_t off)
{
  REQUIRE (off + 8 <= m->size);
  return get_be64 (m->data + off);
}

static void
put64_at (struct mem_io *m, uint64_t off, uint64_t v)
{
  uint8_t b[8];
  put_be64 (b, v);
  CHECK (hostio_pwrite (&m->io, b, 8, off) == 0);
}

/* Superblock copy c's generation (0 if the copy does not look valid). */
static uint64_t
sb_generation (const struct mem_io *m, unsigned c)
{
  const uint8_t *sb = m->data + AREA + c * QJ_BLOCK;
  if (memcmp (sb, QJ_SB_MAGIC, 8) != 0)
    return 0;
  return get_be64 (sb + QJ_SB_OFF_GENERATION);
}

static void
fill_pattern (uint8_t *p, size_t n, uint32_t seed)
{
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1103515245 + 12345;
    p[i] = seed >> 16;
  }
}

static uint64_t rng_state;
static uint64_t
rnd (void)
{
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* Test: create, commit, reopen, replay ----------------------------------- */

struct scan_rec { uint64_t off, count; uint8_t data[64]; bool zero; };
struct scan_log { struct scan_rec r[32]; size_t n; };

static int
scan_apply (void *opaque, uint64_t offset, const void *buf, uint64_t count)
{
  struct scan_log *l = opaque;
  struct scan_rec *r;

  REQUIRE (l->n < 32);
  r = &l->r[l->n++];
  r->off = offset;
  r->count = count;
  r->zero = buf == NULL;
  if (buf)
    memcpy (r->data, buf, count < 64 ? count : 64);
  return 0;
}

UNIT_CASE (replay_basic)
{
  struct mem_io *m = mem_io_new ("basic", 3 << 20);
  struct journal *j;
  struct journal_replay_stats st;
  struct scan_log sl = { .n = 0 };
  uint64_t seq = 0, nrec = 0;
  uint8_t aa[128 * 1024], hdr[12], *before, *after;
  uint64_t before_size, after_size;
  static const char hello[] = "hello, world!";     /* 13 bytes */

  /* Bad parameters. */
  errno = 0;
  CHECK (journal_create (&m->io, AREA, AREA_SIZE + 512, ID, CLUSTER) == NULL);
  CHECK (errno == EINVAL);
  CHECK (journal_create (&m->io, AREA, 512 << 10, ID, CLUSTER) == NULL);
  CHECK (journal_create (&m->io, 32768, AREA_SIZE, ID, CLUSTER) == NULL);
  /* Nothing there yet. */
  errno = 0;
  CHECK (journal_open (&m->io, AREA, AREA_SIZE, ID, CLUSTER) == NULL);
  CHECK (errno == EINVAL);

  j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  REQUIRE (j != NULL);
  CHECK (sb_generation (m, 0) == 1 && sb_generation (m, 1) == 2);
  CHECK (journal_ring_size (j) == RING);
  CHECK (journal_ring_used (j) == 0);
  CHECK (journal_durable_seq (j) == 0);
  CHECK (journal_head_seq (j) == 1);
  CHECK (journal_is_idle (j));
  /* Nothing to commit. */
  CHECK (journal_commit (j, &seq) == 0 && seq == 0);

  /* Pre-fill a range that tx 1 zeroes (and its surroundings). */
  memset (aa, 0xaa, sizeof aa);
  CHECK (hostio_pwrite (&m->io, aa, sizeof aa, META + (2 << 20)) == 0);

  /* Transaction 1. */
  CHECK (journal_add_set64 (j, META, 0x1111111111111111ULL) == 0);
  CHECK (!journal_is_idle (j));
  CHECK (journal_add_set64 (j, META + 8, 0x2222222222222222ULL) == 0);
  CHECK (journal_add_set64 (j, META + (1 << 20), 0x3333333333333333ULL) == 0);
  CHECK (journal_add_write (j, META + 100003, hello, 13) == 0);
  CHECK (journal_add_zero (j, META + (2 << 20) + 32768, 65536) == 0);
  CHECK (journal_add_set64 (j, META_END - 8, 0x4444444444444444ULL) == 0);
  CHECK (journal_add_set64 (j, 24, 0x5555555555555555ULL) == 0);
  memcpy (hdr, "\x00\x00\x00\x10\x00\x00\x00\x00\x00\x05\x00\x00", 12);
  CHECK (journal_add_write (j, 36, hdr, 12) == 0);
  journal_need_file_size (j, (9 << 20) + 100);
  CHECK (journal_commit (j, &seq) == 0);
  CHECK (seq == 1);
  CHECK (journal_durable_seq (j) == 1);
  CHECK (journal_is_idle (j));
  CHECK (journal_ring_used (j) == QJ_BLOCK);

  /* Transaction 2 overwrites one value of transaction 1. */
  CHECK (journal_add_set64 (j, META, 0x6666666666666666ULL) == 0);
  CHECK (journal_commit (j, &seq) == 0);
  CHECK (seq == 2);
  CHECK (journal_ring_used (j) == 2 * QJ_BLOCK);

  /* The journal wrote nothing in place. */
  CHECK (m->size == META + (2 << 20) + sizeof aa);
  for (uint64_t o = META; o < META + (2 << 20); o++)
    CHECK (m->data[o] == 0);
  for (size_t i = 0; i < sizeof aa; i++)
    CHECK (m->data[META + (2 << 20) + i] == 0xaa);
  /* Transaction headers where the format says (5.2). */
  CHECK (memcmp (m->data + AREA + QJ_RING_START, QJ_TX_MAGIC, 4) == 0);
  CHECK (get_be64 (m->data + AREA + QJ_RING_START + QJ_TX_OFF_SEQ) == 1);
  CHECK (get_be64 (m->data + AREA + QJ_RING_START + QJ_TX_OFF_MIN_FILE) ==
         (9 << 20) + 512);
  CHECK (get_be64 (m->data + AREA + QJ_RING_START + QJ_BLOCK + QJ_TX_OFF_SEQ)
         == 2);
  nrec = get_be32 (m->data + AREA + QJ_RING_START + QJ_TX_OFF_NR_RECORDS) +
    get_be32 (m->data + AREA + QJ_RING_START + QJ_BLOCK +
              QJ_TX_OFF_NR_RECORDS);
  journal_free (j);

  /* Reopen: the head is still at the start. */
  j = journal_open (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  REQUIRE (j != NULL);
  CHECK (journal_head_seq (j) == 1);
  CHECK (journal_durable_seq (j) == 0);
  /* Another id or size: no valid superblock. */
  errno = 0;
  CHECK (journal_open (&m->io, AREA, AREA_SIZE, ID + 1, CLUSTER) == NULL);
  CHECK (errno == EINVAL);
  CHECK (journal_open (&m->io, AREA, AREA_SIZE * 2, ID, CLUSTER) == NULL);

  /* journal_scan reports the records in order and changes nothing. */
  before_size = m->size;
  before = malloc (before_size);
  memcpy (before, m->data, before_size);
  CHECK (journal_scan (j, scan_apply, &sl, &st) == 0);
  CHECK (m->size == before_size && memcmp (m->data, before, before_size) == 0);
  CHECK (st.transactions == 2 && st.first_seq == 1 && st.last_seq == 2);
  CHECK (sl.n == 9);
  CHECK (sl.r[0].off == META && sl.r[0].count == 8 &&
         get_be64 (sl.r[0].data) == 0x1111111111111111ULL);
  CHECK (sl.r[1].off == META + 8);
  CHECK (sl.r[2].off == META + (1 << 20));
  CHECK (sl.r[3].off == META + 100003 && sl.r[3].count == 13 &&
         memcmp (sl.r[3].data, hello, 13) == 0);
  CHECK (sl.r[4].off == META + (2 << 20) + 32768 && sl.r[4].count == 65536 &&
         sl.r[4].zero);
  CHECK (sl.r[5].off == META_END - 8);
  CHECK (sl.r[6].off == 24);
  CHECK (sl.r[7].off == 36 && sl.r[7].count == 12);
  CHECK (sl.r[8].off == META &&
         get_be64 (sl.r[8].data) == 0x6666666666666666ULL);

  /* Replay. */
  memset (&st, 0xff, sizeof st);
  CHECK (journal_replay (j, &st) == 0);
  CHECK (st.transactions == 2);
  CHECK (st.first_seq == 1 && st.last_seq == 2);
  CHECK (st.records == nrec);
  CHECK (st.min_file_size == (9 << 20) + 512);
  CHECK (m->size == (9 << 20) + 512);
  CHECK (journal_head_seq (j) == 3);
  CHECK (journal_ring_used (j) == 0);

  /* Exactly those bytes changed, outside the journal area. */
  memcpy (before + 24, "\x55\x55\x55\x55\x55\x55\x55\x55", 8);
  memcpy (before + 36, hdr, 12);
  before = realloc (before, m->size);
  memset (before + before_size, 0, m->size - before_size);
  put_be64 (before + META, 0x6666666666666666ULL);
  put_be64 (before + META + 8, 0x2222222222222222ULL);
  put_be64 (before + META + (1 << 20), 0x3333333333333333ULL);
  memcpy (before + META + 100003, hello, 13);
  memset (before + META + (2 << 20) + 32768, 0, 65536);
  put_be64 (before + META_END - 8, 0x4444444444444444ULL);
  CHECK (memcmp (m->data, before, AREA) == 0);
  CHECK (memcmp (m->data + AREA + QJ_RING_START, before + AREA + QJ_RING_START,
                 m->size - AREA - QJ_RING_START) == 0);
  /* The head moved in a new superblock (generation 3, copy 0). */
  CHECK (sb_generation (m, 0) == 3);
  CHECK (get_be64 (m->data + AREA + QJ_SB_OFF_HEAD) == QJ_RING_START +
         2 * QJ_BLOCK);
  CHECK (get_be64 (m->data + AREA + QJ_SB_OFF_HEAD_SEQ) == 3);
  journal_free (j);

  /* A second open + replay is a no-op: identical bytes. */
  after_size = m->size;
  after = malloc (after_size);
  memcpy (after, m->data, after_size);
  j = journal_open (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  REQUIRE (j != NULL);
  CHECK (journal_replay (j, &st) == 0);
  CHECK (st.transactions == 0 && st.records == 0);
  CHECK (m->size == after_size && memcmp (m->data, after, after_size) == 0);

  /* Replay over a file where the home locations were changed after the
   * first replay would redo nothing: the journal is empty.  Commit on the
   * replayed journal: transaction 3 goes right after the old chain. */
  CHECK (journal_add_set64 (j, META + 16, 0x7777777777777777ULL) == 0);
  CHECK (journal_commit (j, &seq) == 0 && seq == 3);
  CHECK (get_be64 (m->data + AREA + QJ_RING_START + 2 * QJ_BLOCK +
                   QJ_TX_OFF_SEQ) == 3);
  journal_free (j);
  put64_at (m, META, 0x9999999999999999ULL);   /* not replayed again */
  j = journal_open (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  REQUIRE (j != NULL);
  CHECK (journal_replay (j, &st) == 0);
  CHECK (st.transactions == 1 && st.first_seq == 3 && st.last_seq == 3);
  CHECK (get64_at (m, META + 16) == 0x7777777777777777ULL);
  CHECK (get64_at (m, META) == 0x9999999999999999ULL);
  journal_free (j);

  free (before);
  free (after);
  hostio_close (&m->io);
}

/* Test: checkpoints move the head; only later transactions replay ------- */

static uint64_t
val (uint64_t k)
{
  return 0xabcd000000000000ULL | k;
}

UNIT_CASE (checkpoint)
{
  struct wrap_io *w = wrap_new (3 << 20, AREA, AREA_SIZE);
  struct mem_io *m = w->mem;
  struct journal *j = journal_create (&w->io, AREA, AREA_SIZE, ID, CLUSTER);
  struct journal_replay_stats st;
  uint64_t seq;
  const uint64_t SENTINEL = 0xeeeeeeeeeeeeeeeeULL;

  REQUIRE (j != NULL);
  for (uint64_t k = 1; k <= 5; k++) {
    CHECK (journal_add_set64 (j, META + 8 * k, val (k)) == 0);
    CHECK (journal_add_set64 (j, META, val (k)) == 0);
    CHECK (journal_commit (j, &seq) == 0);
    CHECK (seq == k);
  }
  CHECK (journal_ring_used (j) == 5 * QJ_BLOCK);

  /* Home locations hold something else: whatever replay does not rewrite
   * keeps it. */
  for (uint64_t k = 0; k <= 5; k++)
    put64_at (m, META + 8 * k, SENTINEL);

  /* Checkpoint up to 3: one superblock write, then a flush (rule: the
   * head moves only once the superblock is durable). */
  w->logging = true;
  log_clear (w);
  CHECK (journal_checkpointed (j, 3) == 0);
  w->logging = false;
  fprintf (stderr, "checkpoint ops: \"%s\"\n", w->log);
  CHECK (strcmp (w->log, "WF") == 0);
  CHECK (journal_head_seq (j) == 4);
  CHECK (journal_durable_seq (j) == 5);
  CHECK (journal_ring_used (j) == 2 * QJ_BLOCK);
  /* Written to the older copy (4.4), generation 3. */
  CHECK (sb_generation (m, 0) == 3 && sb_generation (m, 1) == 2);
  CHECK (get_be64 (m->data + AREA + QJ_SB_OFF_HEAD) ==
         QJ_RING_START + 3 * QJ_BLOCK);
  CHECK (get_be64 (m->data + AREA + QJ_SB_OFF_HEAD_SEQ) == 4);
  /* Checkpointing an older seq again is a no-op. */
  log_clear (w);
  w->logging = true;
  CHECK (journal_checkpointed (j, 2) == 0);
  CHECK (journal_checkpointed (j, 3) == 0);
  w->logging = false;
  CHECK (w->loglen == 0);
  CHECK (journal_head_seq (j) == 4);

  /* Replay on a copy: only 4 and 5. */
  {
    struct mem_io *c = mem_clone (m);
    struct journal *j2 = journal_open (&c->io, AREA, AREA_SIZE, ID, CLUSTER);

    REQUIRE (j2 != NULL);
    CHECK (journal_head_seq (j2) == 4);
    CHECK (journal_replay (j2, &st) == 0);
    CHECK (st.transactions == 2 && st.first_seq == 4 && st.last_seq == 5);
    for (uint64_t k = 1; k <= 3; k++)
      CHECK (get64_at (c, META + 8 * k) == SENTINEL);
    for (uint64_t k = 4; k <= 5; k++)
      CHECK (get64_at (c, META + 8 * k) == val (k));
    CHECK (get64_at (c, META) == val (5));
    journal_free (j2);
    hostio_close (&c->io);
  }

  /* The second checkpoint goes to the other copy; checkpoint everything. */
  CHECK (journal_checkpointed (j, 5) == 0);
  CHECK (sb_generation (m, 0) == 3 && sb_generation (m, 1) == 4);
  CHECK (journal_ring_used (j) == 0);
  CHECK (journal_head_seq (j) == 6);
  journal_free (j);
  j = journal_open (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  REQUIRE (j != NULL);
  CHECK (journal_head_seq (j) == 6);
  CHECK (journal_replay (j, &st) == 0);
  CHECK (st.transactions == 0);
  for (uint64_t k = 0; k <= 5; k++)
    CHECK (get64_at (m, META + 8 * k) == SENTINEL);
  journal_free (j);
  hostio_close (&w->io);
}

/* Test: the ring wraps; a model of the ring checks every step ----------- */

struct mtx {                    /* a transaction the model knows */
  uint64_t seq, start, bytes;   /* ring offset and bytes it occupies */
  bool skip;
  uint64_t woff; uint32_t wcount, wseed;   /* its WRITE */
  uint64_t soff, sval;                     /* its SET64 */
};

struct model {
  uint64_t head, tail, head_seq, next_seq;
  struct mtx *p;                /* pending (not checkpointed), in order */
  size_t n;
  unsigned wraps, skips;
  uint8_t *expect;              /* META..META_END: everything committed */
};

static void
model_init (struct model *md)
{
  md->head = md->tail = QJ_RING_START;
  md->head_seq = md->next_seq = 1;
  md->p = calloc (4096, sizeof *md->p);
  md->n = 0;
  md->wraps = md->skips = 0;
  md->expect = calloc (1, META_END - META);
}

static void
model_free (struct model *md)
{
  free (md->p);
  free (md->expect);
}

static uint64_t
model_used (const struct model *md)
{
  uint64_t u = 0;
  for (size_t i = 0; i < md->n; i++)
    u += md->p[i].bytes;
  return u;
}

/* Would a transaction of total bytes fit without overwriting live ring
 * space (5.4)?  *skip: it needs a filler first. */
static bool
model_fits (const struct model *md, uint64_t total, bool *skip)
{
  bool empty = md->n == 0;
  bool wrapped = !empty && md->tail <= md->head;

  *skip = md->tail + total > AREA_SIZE;
  if (!*skip)
    return !wrapped || md->tail + total <= md->head;
  /* The filler occupies [tail, end): the transaction goes at the ring
   * start and must stay below the head (and below the filler). */
  return !wrapped && QJ_RING_START + total <= md->head;
}

static void
tx_apply (uint8_t *dst, uint64_t base, const struct mtx *t)
{
  if (t->skip)
    return;
  fill_pattern (dst + t->woff - base, t->wcount, t->wseed);
  put_be64 (dst + t->soff - base, t->sval);
}

/* Write in place the effects of pending transactions up to seq, then
 * journal_checkpointed (the caller's side of a checkpoint). */
static void
model_checkpoint (struct model *md, struct journal *j, struct mem_io *m,
                  uint64_t seq)
{
  size_t k = 0;
  uint8_t *buf = malloc (16384);

  while (k < md->n && md->p[k].seq <= seq) {
    const struct mtx *t = &md->p[k];
    if (!t->skip) {
      fill_pattern (buf, t->wcount, t->wseed);
      CHECK (hostio_pwrite (&m->io, buf, t->wcount, t->woff) == 0);
      put64_at (m, t->soff, t->sval);
    }
    k++;
  }
  free (buf);
  CHECK (k > 0 && md->p[k - 1].seq == seq);
  CHECK (journal_checkpointed (j, seq) == 0);
  md->head = k < md->n ? md->p[k].start : md->tail;
  memmove (md->p, md->p + k, (md->n - k) * sizeof *md->p);
  md->n -= k;
  md->head_seq = seq + 1;
  CHECK (journal_head_seq (j) == md->head_seq);
  CHECK (journal_ring_used (j) == model_used (md));
  /* The superblock records the head the model expects. */
  {
    unsigned c = sb_generation (m, 1) > sb_generation (m, 0);
    const uint8_t *sb = m->data + AREA + c * QJ_BLOCK;
    CHECK (get_be64 (sb + QJ_SB_OFF_HEAD) == md->head);
    CHECK (get_be64 (sb + QJ_SB_OFF_HEAD_SEQ) == md->head_seq);
  }
}

/* Open a copy of m, replay it, and compare with the model. */
static void
model_verify_replay (const struct model *md, const struct mem_io *m)
{
  struct mem_io *c = mem_clone (m);
  struct journal *j2 = journal_open (&c->io, AREA, AREA_SIZE, ID, CLUSTER);
  struct journal_replay_stats st;
  uint64_t ntx = 0, first = 0, last = 0;

  REQUIRE (j2 != NULL);
  CHECK (journal_head_seq (j2) == md->head_seq);
  CHECK (journal_replay (j2, &st) == 0);
  for (size_t i = 0; i < md->n; i++)
    if (!md->p[i].skip) {
      if (ntx++ == 0)
        first = md->p[i].seq;
      last = md->p[i].seq;
    }
  CHECK (st.transactions == ntx);
  if (ntx) {
    CHECK (st.first_seq == first);
    CHECK (st.last_seq == last);
  }
  CHECK (journal_head_seq (j2) == md->next_seq);
  CHECK (c->size >= META_END);
  CHECK (memcmp (c->data + META, md->expect, META_END - META) == 0);
  journal_free (j2);
  hostio_close (&c->io);
}

/* Add transaction k's records (a WRITE of wcount bytes and a SET64) to the
 * open transaction. */
static struct mtx
model_add (struct journal *j, uint32_t wcount, uint64_t k)
{
  struct mtx t = {
    .woff = META + (k % 224) * 16384,
    .wcount = wcount,
    .wseed = (uint32_t) (k * 2654435761U),
    .soff = META + (7ULL << 19) + 8 * (k % 4096),
    .sval = val (k),
  };
  uint8_t *buf = malloc (wcount);
  uint64_t payload = QJ_TX_HEADER + QJ_REC_HEADER + 16 + ROUNDUP (wcount, 8) +
    QJ_REC_HEADER + 16;

  CHECK (wcount <= 16000);
  t.bytes = ROUNDUP (payload, QJ_BLOCK);
  fill_pattern (buf, wcount, t.wseed);
  CHECK (journal_add_write (j, t.woff, buf, wcount) == 0);
  CHECK (journal_add_set64 (j, t.soff, t.sval) == 0);
  free (buf);
  return t;
}

/* Commit the open transaction t; check the outcome against the model:
 * EAGAIN exactly when it does not fit, else where it was written. */
static int
model_commit (struct model *md, struct journal *j, struct mem_io *m,
              struct mtx t)
{
  uint64_t payload = QJ_TX_HEADER + QJ_REC_HEADER + 16 +
    ROUNDUP (t.wcount, 8) + QJ_REC_HEADER + 16;
  uint64_t seq, old_tail = md->tail;
  bool skip, fits = model_fits (md, t.bytes, &skip);
  int r;

  errno = 0;
  r = journal_commit (j, &seq);
  if (!fits) {
    /* Writing it would overwrite live transactions.  (Past a difference
     * from the model, the model's checks mean nothing: stop.) */
    REQUIRE (r == -1 && errno == EAGAIN);
    CHECK (journal_durable_seq (j) == md->next_seq - 1);
    CHECK (journal_ring_used (j) == model_used (md));
    return -1;
  }
  REQUIRE (r == 0);
  if (skip) {
    const uint8_t *h = m->data + AREA + old_tail;
    CHECK (memcmp (h, QJ_TX_MAGIC, 4) == 0);
    CHECK (get_be64 (h + QJ_TX_OFF_SEQ) == md->next_seq);
    CHECK (get_be32 (h + QJ_TX_OFF_FLAGS) == QJ_TX_FLAG_SKIP);
    CHECK (get_be32 (h + QJ_TX_OFF_TOTAL) == AREA_SIZE - old_tail);
    md->p[md->n++] = (struct mtx) {
      .seq = md->next_seq++, .start = old_tail,
      .bytes = AREA_SIZE - old_tail, .skip = true };
    md->tail = QJ_RING_START;
    md->skips++;
    md->wraps++;
  }
  {
    const uint8_t *h = m->data + AREA + md->tail;
    CHECK (memcmp (h, QJ_TX_MAGIC, 4) == 0);
    CHECK (get_be64 (h + QJ_TX_OFF_SEQ) == md->next_seq);
    CHECK (get_be32 (h + QJ_TX_OFF_TOTAL) == t.bytes);
    CHECK (get_be32 (h + QJ_TX_OFF_PAYLOAD) == payload);
    CHECK (get_be32 (h + QJ_TX_OFF_FLAGS) == 0);
  }
  t.seq = md->next_seq++;
  t.start = md->tail;
  md->p[md->n++] = t;
  md->tail += t.bytes;
  if (md->tail >= AREA_SIZE) {
    md->tail = QJ_RING_START;
    md->wraps++;
  }
  CHECK (seq == t.seq);
  CHECK (md->n < 4096);
  tx_apply (md->expect, META, &t);
  CHECK (journal_durable_seq (j) == t.seq);
  CHECK (journal_ring_used (j) == model_used (md));
  CHECK (journal_ring_used (j) <= RING);
  return 0;
}

UNIT_CASE (ring_wrap)
{
  struct mem_io *m = mem_io_new ("wrap", META_END);
  struct journal *j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  struct model md;
  unsigned eagain = 0;

  REQUIRE (j != NULL);
  model_init (&md);
  rng_state = 0x9e3779b97f4a7c15ULL;
  for (uint64_t k = 1; k <= 1500; k++) {
    uint32_t wcount = 1 + rnd () % (k % 3 == 0 ? 16000 : 5000);
    struct mtx t = model_add (j, wcount, k);

    while (model_commit (&md, j, m, t) == -1) {
      /* No room: checkpoint some or all, then commit again (the records
       * stay in the open transaction). */
      uint64_t seq = rnd () % 3 == 0 ? md.p[md.n - 1].seq
        : md.p[rnd () % md.n].seq;
      eagain++;
      model_checkpoint (&md, j, m, seq);
    }
    /* Now and then a checkpoint without pressure. */
    if (rnd () % 128 == 0 && md.n > 0)
      model_checkpoint (&md, j, m, md.p[rnd () % md.n].seq);
    if (k % 50 == 0)
      model_verify_replay (&md, m);
  }
  model_verify_replay (&md, m);
  fprintf (stderr, "ring: %" PRIu64 " transactions, %u wraps, %u SKIP "
           "fillers, %u EAGAIN\n", md.next_seq - 1, md.wraps, md.skips,
           eagain);
  CHECK (md.wraps >= 3);
  CHECK (md.skips >= 2);
  CHECK (eagain > 0);
  journal_free (j);
  model_free (&md);
  hostio_close (&m->io);
}

/* Test: a full ring, EAGAIN, and transactions as large as the ring ------ */

UNIT_CASE (ring_full)
{
  struct mem_io *m = mem_io_new ("full", 3 << 20);
  struct journal *j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  struct journal_replay_stats st;
  uint64_t seq, n = 0;
  int r;

  REQUIRE (j != NULL);
  /* One-block transactions until the ring is full: exactly RING / 4096
   * of them fit (the tail may catch up with the head, 5.4). */
  for (;;) {
    CHECK (journal_add_set64 (j, META + 8 * (n + 1), val (n + 1)) == 0);
    errno = 0;
    r = journal_commit (j, &seq);
    if (r == -1)
      break;
    n++;
    CHECK (seq == n);
    CHECK (journal_ring_used (j) == n * QJ_BLOCK);
    CHECK (n <= RING / QJ_BLOCK);
  }
  CHECK (errno == EAGAIN);
  CHECK (n == RING / QJ_BLOCK);
  CHECK (journal_ring_used (j) == RING);
  CHECK (journal_durable_seq (j) == n);
  /* Not sticky. */
  CHECK (journal_commit (j, &seq) == -1 && errno == EAGAIN);
  CHECK (!journal_is_idle (j));

  /* A replay now sees the full ring, no more. */
  {
    struct mem_io *c = mem_clone (m);
    struct journal *j2 = journal_open (&c->io, AREA, AREA_SIZE, ID, CLUSTER);
    CHECK (j2 && journal_replay (j2, &st) == 0);
    CHECK (st.transactions == n && st.first_seq == 1 && st.last_seq == n);
    CHECK (get64_at (c, META + 8 * n) == val (n));
    CHECK (get64_at (c, META + 8 * (n + 1)) == 0);
    journal_free (j2);
    hostio_close (&c->io);
  }

  /* Checkpoint 10 (writing their values in place): the pending
   * transaction now fits at the ring start. */
  for (uint64_t k = 1; k <= 10; k++)
    put64_at (m, META + 8 * k, val (k));
  CHECK (journal_checkpointed (j, 10) == 0);
  CHECK (journal_ring_used (j) == (n - 10) * QJ_BLOCK);
  CHECK (journal_commit (j, &seq) == 0);
  CHECK (seq == n + 1);
  CHECK (get_be64 (m->data + AREA + QJ_RING_START + QJ_TX_OFF_SEQ) == n + 1);
  CHECK (journal_ring_used (j) == (n - 9) * QJ_BLOCK);

  /* A 10-block transaction does not fit in the 9 free blocks. */
  {
    uint8_t *buf = calloc (1, 9 * QJ_BLOCK);
    memset (buf, 0x5a, 9 * QJ_BLOCK);
    CHECK (journal_add_write (j, META + (1 << 20), buf, 9 * QJ_BLOCK) == 0);
    free (buf);
  }
  CHECK (journal_commit (j, &seq) == -1 && errno == EAGAIN);
  for (uint64_t k = 11; k <= 20; k++)
    put64_at (m, META + 8 * k, val (k));
  CHECK (journal_checkpointed (j, 20) == 0);
  CHECK (journal_commit (j, &seq) == 0 && seq == n + 2);
  {
    struct mem_io *c = mem_clone (m);
    struct journal *j2 = journal_open (&c->io, AREA, AREA_SIZE, ID, CLUSTER);
    CHECK (j2 && journal_replay (j2, &st) == 0);
    CHECK (st.first_seq == 21 && st.last_seq == n + 2);
    CHECK (st.transactions == n + 2 - 20);
    for (uint64_t k = 1; k <= n + 1; k++)
      CHECK (get64_at (c, META + 8 * k) == val (k));
    for (uint64_t k = 0; k < 9 * QJ_BLOCK; k++)
      CHECK (c->data[META + (1 << 20) + k] == 0x5a);
    journal_free (j2);
    hostio_close (&c->io);
  }
  journal_free (j);
  hostio_close (&m->io);
}

UNIT_CASE (efbig)
{
  struct mem_io *m = mem_io_new ("efbig", 3 << 20);
  struct journal *j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  struct journal_replay_stats st;
  /* A WRITE whose transaction is exactly the ring. */
  const uint32_t maxw = RING - QJ_TX_HEADER - QJ_REC_HEADER - 16;
  uint8_t *buf = malloc (RING + 8);
  uint64_t seq, ntx;

  REQUIRE (j != NULL);
  fill_pattern (buf, RING + 8, 42);

  /* Larger than the ring: EFBIG at add time, nothing added. */
  errno = 0;
  CHECK (journal_add_write (j, META, buf, maxw + 8) == -1);
  CHECK (errno == EFBIG);
  CHECK (journal_add_write (j, META, buf, RING + 8) == -1 && errno == EFBIG);
  CHECK (journal_is_idle (j));

  /* Exactly the ring: fits an empty ring whose head is at the start. */
  CHECK (journal_add_write (j, META, buf, maxw) == 0);
  /* ...and then nothing more fits in that transaction. */
  CHECK (journal_add_set64 (j, META_END - 8, 1) == -1 && errno == EFBIG);
  CHECK (journal_commit (j, &seq) == 0 && seq == 1);
  CHECK (journal_ring_used (j) == RING);
  CHECK (get_be32 (m->data + AREA + QJ_RING_START + QJ_TX_OFF_TOTAL) == RING);

  /* Full. */
  CHECK (journal_add_set64 (j, META_END - 8, 2) == 0);
  CHECK (journal_commit (j, &seq) == -1 && errno == EAGAIN);
  CHECK (hostio_pwrite (&m->io, buf, maxw, META) == 0);   /* checkpoint */
  CHECK (journal_checkpointed (j, 1) == 0);
  CHECK (journal_ring_used (j) == 0);
  CHECK (journal_head_seq (j) == 2);

  /* The head is back at the ring start.  Fill the open transaction (it
   * holds the SET64 above) up to the limit: EFBIG keeps the records added
   * before, and commit writes them all. */
  for (ntx = 0; ; ntx++) {
    int r = journal_add_write (j, META + (1 << 20) + ntx * 4096, buf + ntx,
                               4000);
    if (r == -1) {
      CHECK (errno == EFBIG);
      break;
    }
    CHECK (ntx < 300);
  }
  CHECK (ntx > 200);
  CHECK (journal_commit (j, &seq) == 0 && seq == 2);
  CHECK (journal_ring_used (j) > RING - QJ_BLOCK);
  {
    struct mem_io *c = mem_clone (m);
    struct journal *j2 = journal_open (&c->io, AREA, AREA_SIZE, ID, CLUSTER);
    CHECK (j2 && journal_replay (j2, &st) == 0);
    CHECK (st.transactions == 1 && st.first_seq == 2);
    CHECK (get64_at (c, META_END - 8) == 2);
    CHECK (memcmp (c->data + META, buf, maxw) == 0);
    for (uint64_t i = 0; i < ntx; i++)
      CHECK (memcmp (c->data + META + (1 << 20) + i * 4096, buf + i, 4000)
             == 0);
    journal_free (j2);
    hostio_close (&c->io);
  }
  free (buf);
  journal_free (j);
  hostio_close (&m->io);
}

/* A transaction of more than half the ring, committed when the ring is
 * empty (fully checkpointed) but the head is in the middle of it: it needs
 * a SKIP filler at the tail (= head) and then overlaps that filler if put
 * at the ring start.  Either the commit refuses (EAGAIN: the caller must
 * split it, section 14), or what it committed must replay. */
UNIT_CASE (big_tx_empty_ring)
{
  struct mem_io *m = mem_io_new ("bigtx", 3 << 20);
  struct journal *j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  struct journal_replay_stats st;
  const uint32_t count = 800000;
  uint8_t *buf = malloc (count);
  uint64_t seq;
  int r;

  REQUIRE (j != NULL);
  for (uint64_t k = 1; k <= 100; k++) {
    CHECK (journal_add_set64 (j, META + 8 * k, val (k)) == 0);
    CHECK (journal_commit (j, &seq) == 0 && seq == k);
    put64_at (m, META + 8 * k, val (k));
  }
  CHECK (journal_checkpointed (j, 100) == 0);
  CHECK (journal_ring_used (j) == 0);

  fill_pattern (buf, count, 7);
  CHECK (journal_add_write (j, META + (1 << 20), buf, count) == 0);
  errno = 0;
  r = journal_commit (j, &seq);
  fprintf (stderr, "big tx on an empty ring with the head at 0x%x: "
           "commit = %d (%s)\n", (unsigned) (QJ_RING_START + 100 * QJ_BLOCK),
           r, r ? strerror (errno) : "ok");
  if (r == -1)
    CHECK (errno == EAGAIN);
  else {
    struct mem_io *c = mem_clone (m);
    struct journal *j2 = journal_open (&c->io, AREA, AREA_SIZE, ID, CLUSTER);


    CHECK (j2 && journal_replay (j2, &st) == 0);
    fprintf (stderr, "replay: %" PRIu64 " transactions\n", st.transactions);
    /* A committed (acknowledged) transaction must replay. */
    CHECK (st.transactions == 1 && st.last_seq == seq);
    CHECK (memcmp (c->data + META + (1 << 20), buf, count) == 0);
    journal_free (j2);
    hostio_close (&c->io);
  }
  free (buf);
  journal_free (j);
  hostio_close (&m->io);
}

/* Test: group commit from several threads -------------------------------- */

#define G_AREA_SIZE (8ULL << 20)
#define G_META      (16ULL << 20)
#define G_WRITES    (17ULL << 20)

struct gctx {
  struct wrap_io *w;
  struct journal *j;
  unsigned nthreads, iters;
  atomic_uint eagains;
  atomic_bool done;
};

struct gthread {
  struct gctx *g;
  unsigned t;
  pthread_t tid;
};

static uint64_t
gval (unsigned t, unsigned i)
{
  return 0x6700000000000000ULL | ((uint64_t) t << 32) | i;
}

static void *
group_worker (void *arg)
{
  struct gthread *gt = arg;
  struct gctx *g = gt->g;
  uint64_t last = 0;

  for (unsigned i = 0; i < g->iters; i++) {
    size_t idx = (size_t) gt->t * g->iters + i;
    uint64_t seq, mseq;
    unsigned tries = 0;

    CHECK (journal_add_set64 (g->j, G_META + 8 * idx, gval (gt->t, i)) == 0);
    if (i % 3 == 0) {
      uint8_t b[40];
      fill_pattern (b, sizeof b, idx);
      CHECK (journal_add_write (g->j, G_WRITES + 64 * idx, b, sizeof b) == 0);
    }
    while (journal_commit (g->j, &seq) == -1) {
      /* Only with a concurrent checkpointer and a small ring. */
      if (errno != EAGAIN || ++tries >= 200000) {
        FAIL ("commit: %s after %u tries", strerror (errno), tries);
        return NULL;
      }
      atomic_fetch_add (&g->eagains, 1);
      usleep (20);
    }
    /* The caller's records are in a transaction <= seq that has been
     * written and flushed before commit returned. */
    mseq = atomic_load (&g->w->marker_seq[idx]);
    CHECK (mseq != 0 && mseq <= seq);
    CHECK (atomic_load (&g->w->flushed_max_seq) >= seq);
    CHECK (seq <= journal_durable_seq (g->j));
    CHECK (seq >= last);
    last = seq;
  }
  return NULL;
}

/* A checkpointer thread: writes in place every marker committed up to the
 * durable seq, then moves the head. */
static void *
checkpointer (void *arg)
{
  struct gctx *g = arg;
  size_t n = (size_t) g->nthreads * g->iters;
  unsigned cps = 0;

  while (!atomic_load (&g->done)) {
    uint64_t s = journal_durable_seq (g->j);

    if (s >= journal_head_seq (g->j)) {
      for (size_t idx = 0; idx < n; idx++) {
        uint64_t ms = atomic_load (&g->w->marker_seq[idx]);
        if (ms != 0 && ms <= s) {
          unsigned t = idx / g->iters, i = idx % g->iters;
          put64_at (g->w->mem, G_META + 8 * idx, gval (t, i));
          if (i % 3 == 0) {
            uint8_t b[40];
            fill_pattern (b, sizeof b, idx);
            CHECK (hostio_pwrite (&g->w->mem->io, b, sizeof b,
                                  G_WRITES + 64 * idx) == 0);
          }
        }
      }
      CHECK (journal_checkpointed (g->j, s) == 0);
      cps++;
    }
    usleep (60000);
  }
  fprintf (stderr, "checkpointer: %u checkpoints\n", cps);
  return NULL;
}

static void
run_group (unsigned nthreads, unsigned iters, uint64_t area_size,
           bool with_checkpointer)
{
  struct gctx g = { .nthreads = nthreads, .iters = iters };
  struct gthread *th = calloc (nthreads, sizeof *th);
  size_t n = (size_t) nthreads * iters;
  pthread_t cp;
  unsigned flushes0;
  uint64_t durable, commits = n;
  struct journal_replay_stats st;

  /* Sized up front: the checkpointer writes into the buffer while a
   * committer writes elsewhere in it, so it must never be reallocated. */
  g.w = wrap_new (G_WRITES + 64 * n + 4096, AREA, area_size);
  g.w->marker_seq = calloc (n, sizeof *g.w->marker_seq);
  g.w->marker_base = G_META;
  g.w->nmarkers = n;
  g.w->flush_delay_us = 100;
  g.j = journal_create (&g.w->io, AREA, area_size, ID, CLUSTER);
  REQUIRE (g.j != NULL);
  flushes0 = atomic_load (&g.w->flushes);

  if (with_checkpointer)
    REQUIRE (pthread_create (&cp, NULL, checkpointer, &g) == 0);
  for (unsigned t = 0; t < nthreads; t++) {
    th[t].g = &g;
    th[t].t = t;
    REQUIRE (pthread_create (&th[t].tid, NULL, group_worker, &th[t]) == 0);
  }
  for (unsigned t = 0; t < nthreads; t++)
    CHECK (pthread_join (th[t].tid, NULL) == 0);
  atomic_store (&g.done, true);
  if (with_checkpointer)
    CHECK (pthread_join (cp, NULL) == 0);

  durable = journal_durable_seq (g.j);
  fprintf (stderr, "group commit: %u threads, %" PRIu64 " commit calls, "
           "%" PRIu64 " transactions, %u flushes, %u EAGAIN\n", nthreads,
           commits, durable, atomic_load (&g.w->flushes) - flushes0,
           atomic_load (&g.eagains));
  CHECK (journal_is_idle (g.j));
  if (!with_checkpointer) {
    /* One flush per transaction (no hook, no ordering), one transaction
     * for several commit calls, and never two I/Os at once. */
    CHECK (atomic_load (&g.w->flushes) - flushes0 == durable);
    CHECK (durable < commits);
    CHECK (atomic_load (&g.w->overlaps) == 0);
  }
  for (size_t idx = 0; idx < n; idx++)
    CHECK (atomic_load (&g.w->marker_seq[idx]) != 0);

  /* Everything is in the file after a replay. */
  journal_free (g.j);
  g.j = journal_open (&g.w->io, AREA, area_size, ID, CLUSTER);
  REQUIRE (g.j != NULL);
  CHECK (journal_replay (g.j, &st) == 0);
  if (!with_checkpointer)
    CHECK (st.transactions == durable);
  for (size_t idx = 0; idx < n; idx++) {
    unsigned t = idx / iters, i = idx % iters;
    CHECK (get64_at (g.w->mem, G_META + 8 * idx) == gval (t, i));
    if (i % 3 == 0) {
      uint8_t b[40];
      fill_pattern (b, sizeof b, idx);
      CHECK (memcmp (g.w->mem->data + G_WRITES + 64 * idx, b, sizeof b) == 0);
    }
  }
  journal_free (g.j);
  hostio_close (&g.w->io);
  free (th);
}

UNIT_CASE (group_commit)
{
  run_group (8, 150, G_AREA_SIZE, false);
}

UNIT_CASE (group_commit_checkpoint)
{
  /* A 1 MiB journal: the ring fills and wraps under concurrent commits
   * and checkpoints. */
  run_group (4, 500, AREA_SIZE, true);
}

/* Test: deferred frees (rule R3) ----------------------------------------- */

struct dctx { struct journal *j; unsigned early; };

/* While the checkpoint's superblock is being written and flushed, nothing
 * may be released yet. */
static void
deferred_on_op (struct wrap_io *w, char op, uint64_t offset)
{
  struct dctx *d = w->opaque;
  uint64_t v[8];

  if (d->j && journal_take_released (d->j, v, 8) != 0)
    d->early++;
}

UNIT_CASE (deferred_free)
{
  struct wrap_io *w = wrap_new (3 << 20, AREA, AREA_SIZE);
  struct journal *j = journal_create (&w->io, AREA, AREA_SIZE, ID, CLUSTER);
  struct dctx d = { .j = NULL };
  uint64_t v[8], seq;

  REQUIRE (j != NULL);
  w->on_op = deferred_on_op;
  w->opaque = &d;

  CHECK (journal_add_set64 (j, META, 1) == 0);
  CHECK (journal_commit (j, &seq) == 0 && seq == 1);
  CHECK (journal_take_released (j, v, 8) == 0);

  /* A deferred in transaction 2, which has no records. */
  CHECK (journal_defer_free (j, 0xa0000) == 0);
  CHECK (!journal_is_idle (j));
  CHECK (journal_take_released (j, v, 8) == 0);
  CHECK (journal_commit (j, &seq) == 0 && seq == 2);
  CHECK (journal_take_released (j, v, 8) == 0);

  /* B deferred in (open) transaction 3. */
  CHECK (journal_defer_free (j, 0xb0000) == 0);
  d.j = j;
  CHECK (journal_checkpointed (j, 1) == 0);
  CHECK (journal_take_released (j, v, 8) == 0);
  CHECK (journal_checkpointed (j, 2) == 0);
  CHECK (d.early == 0);
  CHECK (journal_take_released (j, v, 8) == 1 && v[0] == 0xa0000);
  CHECK (journal_take_released (j, v, 8) == 0);

  /* Transaction 3 holds B; C and D go in 4 with a record. */
  CHECK (journal_commit (j, &seq) == 0 && seq == 3);
  CHECK (journal_defer_free (j, 0xc0000) == 0);
  CHECK (journal_defer_free (j, 0xd0000) == 0);
  CHECK (journal_add_set64 (j, META + 8, 2) == 0);
  CHECK (journal_commit (j, &seq) == 0 && seq == 4);
  /* E stays in the open transaction 5. */
  CHECK (journal_defer_free (j, 0xe0000) == 0);
  CHECK (journal_take_released (j, v, 8) == 0);
  CHECK (journal_checkpointed (j, 3) == 0);
  CHECK (journal_take_released (j, v, 8) == 1 && v[0] == 0xb0000);
  CHECK (journal_checkpointed (j, 4) == 0);
  CHECK (d.early == 0);
  CHECK (journal_take_released (j, v, 1) == 1 && v[0] == 0xc0000);
  CHECK (journal_take_released (j, v, 8) == 1 && v[0] == 0xd0000);
  CHECK (journal_take_released (j, v, 8) == 0);
  CHECK (journal_commit (j, &seq) == 0 && seq == 5);
  CHECK (journal_take_released (j, v, 8) == 0);
  CHECK (journal_checkpointed (j, 5) == 0);
  CHECK (journal_take_released (j, v, 8) == 1 && v[0] == 0xe0000);
  CHECK (d.early == 0);

  /* A failed checkpoint (its superblock write fails) releases nothing. */
  CHECK (journal_defer_free (j, 0xf0000) == 0);
  CHECK (journal_commit (j, &seq) == 0 && seq == 6);
  d.j = NULL;
  w->fail_pwrite = EIO;
  CHECK (journal_checkpointed (j, 6) == -1);
  CHECK (journal_take_released (j, v, 8) == 0);
  CHECK (journal_head_seq (j) == 6);
  w->fail_flush = EIO;
  CHECK (journal_checkpointed (j, 6) == -1);
  CHECK (journal_take_released (j, v, 8) == 0);
  CHECK (journal_head_seq (j) == 6);
  CHECK (journal_checkpointed (j, 6) == 0);
  CHECK (journal_take_released (j, v, 8) == 1 && v[0] == 0xf0000);
  journal_free (j);
  hostio_close (&w->io);
}

/* Test: pre-commit hook, ordering, sticky errors -------------------------- */

struct hook { struct wrap_io *w; int ret, err; unsigned calls; };

static int
hook_fn (void *opaque)
{
  struct hook *h = opaque;

  h->calls++;
  logc (h->w, 'H');
  if (h->ret == -1)
    errno = h->err;
  return h->ret;
}

static void
expect_ops (struct journal *j, struct wrap_io *w, const char *ops,
            int expect_r, int expect_errno)
{
  uint64_t seq;
  int r;

  log_clear (w);
  w->logging = true;
  errno = 0;
  r = journal_commit (j, &seq);
  w->logging = false;
  if (r != expect_r || (r == -1 && errno != expect_errno) ||
      strcmp (w->log, ops) != 0) {
    fprintf (stderr, "commit = %d (%s), ops \"%s\"; expected %d (%s), "
             "ops \"%s\"\n", r, strerror (errno), w->log, expect_r,
             strerror (expect_errno), ops);
    CHECK (false);
  }
}

UNIT_CASE (pre_commit)
{
  struct wrap_io *w = wrap_new (3 << 20, AREA, AREA_SIZE);
  struct journal *j = journal_create (&w->io, AREA, AREA_SIZE, ID, CLUSTER);
  struct hook h = { .w = w };
  struct journal_replay_stats st;
  uint64_t durable;

  REQUIRE (j != NULL);
  {
    const struct journal_hooks hooks = { .pre_commit = hook_fn };
    journal_set_hooks (j, &hooks, &h);
  }

  /* Without a hook result or ordering: write, flush. */
  CHECK (journal_add_set64 (j, META, 1) == 0);
  expect_ops (j, w, "HWF", 0, 0);
  CHECK (h.calls == 1);
  /* The hook wrote something that must be durable first. */
  h.ret = 1;
  CHECK (journal_add_set64 (j, META + 8, 2) == 0);
  expect_ops (j, w, "HFWF", 0, 0);
  /* Ordered guest data. */
  h.ret = 0;
  CHECK (journal_add_set64 (j, META + 16, 3) == 0);
  journal_need_ordering (j);
  expect_ops (j, w, "HFWF", 0, 0);
  /* Ordering does not stick to the next transaction. */
  CHECK (journal_add_set64 (j, META + 24, 4) == 0);
  expect_ops (j, w, "HWF", 0, 0);
  /* Nothing to commit: no hook, no I/O. */
  expect_ops (j, w, "", 0, 0);
  CHECK (h.calls == 4);
  durable = journal_durable_seq (j);
  CHECK (durable == 4);

  /* The hook fails: nothing is written, the commit fails with its errno,
   * and so does every later commit. */
  h.ret = -1;
  h.err = EROFS;
  CHECK (journal_add_set64 (j, META + 32, 5) == 0);
  expect_ops (j, w, "H", -1, EROFS);
  h.ret = 0;
  CHECK (journal_add_set64 (j, META + 40, 6) == 0);
  log_clear (w);
  w->logging = true;
  CHECK (journal_commit (j, NULL) == -1 && errno == EROFS);
  CHECK (journal_commit (j, NULL) == -1 && errno == EROFS);
  w->logging = false;
  CHECK (strchr (w->log, 'W') == NULL);
  CHECK (journal_durable_seq (j) == durable);
  journal_free (j);

  /* What was committed before the failure replays; nothing after. */
  {
    struct mem_io *c = mem_clone (w->mem);
    struct journal *j2 = journal_open (&c->io, AREA, AREA_SIZE, ID, CLUSTER);
    CHECK (j2 && journal_replay (j2, &st) == 0);
    CHECK (st.transactions == 4);
    CHECK (get64_at (c, META + 24) == 4);
    CHECK (get64_at (c, META + 32) == 0);
    journal_free (j2);
    hostio_close (&c->io);
  }
  hostio_close (&w->io);

  /* An injected pwrite failure breaks the journal for good. */
  w = wrap_new (3 << 20, AREA, AREA_SIZE);
  j = journal_create (&w->io, AREA, AREA_SIZE, ID, CLUSTER);
  REQUIRE (j != NULL);
  CHECK (journal_add_set64 (j, META, 1) == 0);
  CHECK (journal_commit (j, NULL) == 0);
  CHECK (journal_add_set64 (j, META + 8, 2) == 0);
  w->fail_pwrite = ENOSPC;
  expect_ops (j, w, "W", -1, ENOSPC);
  CHECK (journal_add_set64 (j, META + 16, 3) == 0);
  expect_ops (j, w, "", -1, ENOSPC);
  expect_ops (j, w, "", -1, ENOSPC);
  CHECK (journal_durable_seq (j) == 1);
  journal_free (j);
  hostio_close (&w->io);

  /* An injected flush failure, after the write. */
  w = wrap_new (3 << 20, AREA, AREA_SIZE);
  j = journal_create (&w->io, AREA, AREA_SIZE, ID, CLUSTER);
  REQUIRE (j != NULL);
  CHECK (journal_add_set64 (j, META, 1) == 0);
  w->fail_flush = EIO;
  expect_ops (j, w, "WF", -1, EIO);
  expect_ops (j, w, "", -1, EIO);
  CHECK (journal_add_set64 (j, META + 8, 2) == 0);
  expect_ops (j, w, "", -1, EIO);
  CHECK (journal_durable_seq (j) == 0);
  journal_free (j);
  hostio_close (&w->io);

  /* An injected failure of the flush before the transaction. */
  w = wrap_new (3 << 20, AREA, AREA_SIZE);
  j = journal_create (&w->io, AREA, AREA_SIZE, ID, CLUSTER);
  h = (struct hook) { .w = w, .ret = 1 };
  {
    const struct journal_hooks hooks = { .pre_commit = hook_fn };
    journal_set_hooks (j, &hooks, &h);
  }
  CHECK (journal_add_set64 (j, META, 1) == 0);
  w->fail_flush = EDQUOT;
  expect_ops (j, w, "HF", -1, EDQUOT);
  CHECK (journal_add_set64 (j, META + 8, 2) == 0);
  expect_ops (j, w, "", -1, EDQUOT);
  journal_free (j);
  hostio_close (&w->io);
}

/* SKIP filler and transaction may be written together; check the ops of a
 * wrapping commit: filler write, transaction write, one flush. */
UNIT_CASE (skip_ops)
{
  struct wrap_io *w = wrap_new (3 << 20, AREA, AREA_SIZE);
  struct journal *j = journal_create (&w->io, AREA, AREA_SIZE, ID, CLUSTER);
  uint8_t *buf = calloc (1, 3 * QJ_BLOCK);
  uint64_t seq, k;

  REQUIRE (j != NULL);
  /* 252 one-block transactions leave 2 blocks at the end of the ring. */
  for (k = 1; k <= RING / QJ_BLOCK - 2; k++) {
    CHECK (journal_add_set64 (j, META + 8 * k, val (k)) == 0);
    CHECK (journal_commit (j, &seq) == 0);
  }
  CHECK (journal_checkpointed (j, 10) == 0);
  CHECK (journal_add_write (j, META + (1 << 20), buf, 2 * QJ_BLOCK) == 0);
  log_clear (w);
  w->logging = true;
  CHECK (journal_commit (j, &seq) == 0);
  w->logging = false;
  CHECK (strcmp (w->log, "WWF") == 0);
  CHECK (seq == k + 1);
  CHECK (journal_ring_used (j) == (k - 11) * QJ_BLOCK + 2 * QJ_BLOCK +
         3 * QJ_BLOCK);
  CHECK (get_be32 (w->mem->data + AREA + AREA_SIZE - 2 * QJ_BLOCK +
                   QJ_TX_OFF_FLAGS) == QJ_TX_FLAG_SKIP);
  CHECK (get_be64 (w->mem->data + AREA + QJ_RING_START + QJ_TX_OFF_SEQ) ==
         k + 1);
  free (buf);
  journal_free (j);
  hostio_close (&w->io);
}

/* Cases ------------------------------------------------------------------- */

static const struct unit_case cases[] = {
  UNIT_ENTRY (replay_basic),
  UNIT_ENTRY (checkpoint),
  UNIT_ENTRY (ring_wrap),
  UNIT_ENTRY (ring_full),
  UNIT_ENTRY (efbig),
  UNIT_ENTRY (skip_ops),
  UNIT_ENTRY (deferred_free),
  UNIT_ENTRY (pre_commit),
  UNIT_ENTRY (group_commit),
  UNIT_ENTRY (group_commit_checkpoint),
  UNIT_ENTRY (big_tx_empty_ring),
};

int
main (int argc, char *argv[])
{
  UNIT_SELECT (argc, argv, cases);
  /* A deadlock in the group commit fails the test instead of hanging. */
  alarm (600);
  return UNIT_RUN (cases);
}
