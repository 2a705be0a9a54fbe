/* Unit test of journal replay against hostile and corrupted journals.
 *
 * Replay must either refuse cleanly (journal_replay returns -1 with errno
 * EINVAL, or EFBIG past the replay work bound of rule R6, the file
 * byte-for-byte unchanged, docs/journal-format.md 6.6, 9 and 11.2 step 5)
 * or stop at the first invalid transaction and apply exactly
 * the valid prefix (11.2 step 4); never crash, hang or allocate without
 * bound.  The base journal holds three committed transactions; each case
 * corrupts a copy (recomputing the CRC where the point is to get past it)
 * and checks the outcome.  Then a fuzz loop flips bytes in the superblocks
 * and the ring (fixed seed, printed; QCOW2J_SEED=n and
 * QCOW2J_FUZZ_ITERS=n override) and checks that open + replay return 0 or -1 with errno set,
 * that a refusal writes nothing, and that a successful replay is
 * idempotent. */
#include <config.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "journal.h"
#include "journal-format.h"
#include "log.h"
#include "mem-io.h"
#include "unit.h"

#define CLUSTER    65536ULL
#define AREA       (1ULL << 20)
#define AREA_SIZE  (1ULL << 20)
#define META       ((2ULL << 20) + CLUSTER)
#define FILE0      (2ULL << 20)
#define ID         0x0123456789abcdefULL

#define ROUNDUP(x, n) (((x) + (n) - 1) / (n) * (n))

/* Where the three base transactions are (file offsets), and the offsets
 * of tx 2's records inside it. */
#define TX1        (AREA + QJ_RING_START)
#define TX2        (AREA + QJ_RING_START + QJ_BLOCK)
#define TX3        (AREA + QJ_RING_START + 2 * QJ_BLOCK)
#define R_SET      64               /* SET64, 2 entries, length 40 */
#define R_WRITE    104              /* WRITE of 13 bytes, length 40 */
#define R_ZERO     144              /* ZERO, 1 entry, length 24 */
#define TX2_PAYLOAD 168

/* Messages: captured, not printed (there are hundreds). ------------------ */

static char last_msg[512];
static unsigned nr_msgs;

static void __attribute__ ((format (printf, 1, 0)))
capture (const char *fs, va_list args)
{
  vsnprintf (last_msg, sizeof last_msg, fs, args);
  nr_msgs++;
}

/* A check naming the corruption being tried (cur), which also notes
 * that the outcome is worth printing. */
static const char *cur;
static bool case_failed;

#define EXPECT(expr)                                                    \
  ((expr) ? (void) 0                                                    \
   : (FAIL ("[%s] check failed: %s", cur, #expr),                       \
      (void) (case_failed = true)))

/* The base journals. ------------------------------------------------------ */

struct op {
  char kind;                    /* 's' SET64, 'w' WRITE, 'z' ZERO */
  uint64_t off, v;              /* v: value, or ZERO count */
  const void *data;
  uint32_t count;
};

static uint8_t aa[1024];
static const struct op txops[3][4] = {
  { { 's', META, 0xa1a1a1a1a1a1a1a1ULL, NULL, 0 },
    { 'w', META + 0x1000, 0, "tx1-write-data", 14 },
    { 'w', META + 0x8000, 0, aa, sizeof aa } },
  { { 's', META + 8, 0xa2a2a2a2a2a2a2a2ULL, NULL, 0 },
    { 's', META + 16, 0xb2b2b2b2b2b2b2b2ULL, NULL, 0 },
    { 'w', META + 0x2000, 0, "tx2-write!!!!", 13 },
    { 'z', META + 0x8000, 512, NULL, 0 } },
  { { 's', META, 0xa3a3a3a3a3a3a3a3ULL, NULL, 0 },
    { 's', META + 0x30000, 0xb3b3b3b3b3b3b3b3ULL, NULL, 0 } },
};
static uint64_t mf[3];          /* min_file_size of each */

static uint8_t *base1, *base2;  /* base2: head checkpointed past tx 1 */
static size_t base1_n, base2_n;

static uint8_t *
build_base (bool checkpoint, size_t *n)
{
  struct mem_io *m = mem_io_new ("base", FILE0);
  struct journal *j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  uint8_t *out;
  uint64_t seq;

  REQUIRE (j != NULL);
  for (int t = 0; t < 3; t++) {
    uint64_t end = 0;
    for (int i = 0; i < 4 && txops[t][i].kind; i++) {
      const struct op *o = &txops[t][i];
      uint64_t e;
      switch (o->kind) {
      case 's':
        CHECK (journal_add_set64 (j, o->off, o->v) == 0);
        e = o->off + 8;
        break;
      case 'w':
        CHECK (journal_add_write (j, o->off, o->data, o->count) == 0);
        e = o->off + o->count;
        break;
      default:
        CHECK (journal_add_zero (j, o->off, o->v) == 0);
        e = o->off + o->v;
      }
      if (e > end)
        end = e;
    }
    mf[t] = ROUNDUP (end, 512);
    CHECK (journal_commit (j, &seq) == 0 && seq == (uint64_t) t + 1);
  }
  if (checkpoint)
    CHECK (journal_checkpointed (j, 1) == 0);
  journal_free (j);

  /* The layout the cases rely on. */
  CHECK (get_be64 (m->data + TX2 + QJ_TX_OFF_SEQ) == 2);
  CHECK (get_be32 (m->data + TX2 + QJ_TX_OFF_PAYLOAD) == TX2_PAYLOAD);
  CHECK (get_be32 (m->data + TX2 + QJ_TX_OFF_NR_RECORDS) == 3);
  CHECK (get_be16 (m->data + TX2 + R_SET) == QJ_REC_SET64);
  CHECK (get_be32 (m->data + TX2 + R_SET + 4) == 40);
  CHECK (get_be16 (m->data + TX2 + R_WRITE) == QJ_REC_WRITE);
  CHECK (get_be32 (m->data + TX2 + R_WRITE + 4) == 40);
  CHECK (get_be16 (m->data + TX2 + R_ZERO) == QJ_REC_ZERO);
  CHECK (get_be64 (m->data + TX2 + QJ_TX_OFF_MIN_FILE) == mf[1]);
  CHECK (get_be64 (m->data + TX3 + QJ_TX_OFF_SEQ) == 3);
  CHECK (m->size == AREA + QJ_RING_START + 3 * QJ_BLOCK ||
         m->size == FILE0);

  out = malloc (m->size);
  memcpy (out, m->data, m->size);
  *n = m->size;
  hostio_close (&m->io);
  return out;
}

/* The file after replaying the transactions in mask (bit t: tx t+1) onto
 * b, outside the journal area. */
static uint8_t *
expected (const uint8_t *b, size_t bn, unsigned mask, size_t *n)
{
  size_t size = bn;
  uint8_t *e;

  for (int t = 0; t < 3; t++)
    if ((mask & (1u << t)) && mf[t] > size)
      size = mf[t];
  e = calloc (1, size);
  memcpy (e, b, bn);
  for (int t = 0; t < 3; t++) {
    if (!(mask & (1u << t)))
      continue;
    for (int i = 0; i < 4 && txops[t][i].kind; i++) {
      const struct op *o = &txops[t][i];
      if (o->kind == 's')
        put_be64 (e + o->off, o->v);
      else if (o->kind == 'w')
        memcpy (e + o->off, o->data, o->count);
      else
        memset (e + o->off, 0, o->v);
    }
  }
  *n = size;
  return e;
}

/* Corrupting helpers. ---------------------------------------------------- */

static uint8_t *
dup_img (const uint8_t *b, size_t n)
{
  uint8_t *d = malloc (n);
  memcpy (d, b, n);
  return d;
}

/* Recompute the crc of the transaction at file offset off over len
 * bytes (the transaction's payload_length unless it is being lied about). */
static void
reseal_len (uint8_t *d, uint64_t off, uint32_t len)
{
  put_be32 (d + off + QJ_TX_OFF_CRC, 0);
  put_be32 (d + off + QJ_TX_OFF_CRC, crc32c (0, d + off, len));
}

static void
reseal (uint8_t *d, uint64_t off)
{
  reseal_len (d, off, get_be32 (d + off + QJ_TX_OFF_PAYLOAD));
}

static void
sb_reseal (uint8_t *d, unsigned copy)
{
  uint8_t *sb = d + AREA + copy * QJ_BLOCK;
  put_be32 (sb + QJ_SB_OFF_CRC, crc32c (0, sb, QJ_SB_OFF_CRC));
}

/* Running replay on an image. -------------------------------------------- */

struct outcome {
  bool opened;
  int r, err;
  struct journal_replay_stats st;
  uint64_t head_seq;            /* after replay */
  uint8_t *d;                   /* the file afterwards */
  size_t n;
  char msg[512];
  double secs;                  /* journal_open and journal_replay took */
};

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Open the journal of area_size bytes at AREA in a copy of img, and
 * replay it. */
static void
run_area (const uint8_t *img, size_t n, uint64_t area_size, struct outcome *o)
{
  struct mem_io *m = mem_io_new ("hostile", n);
  struct journal *j;

  memset (o, 0, sizeof *o);
  memcpy (m->data, img, n);
  last_msg[0] = '\0';
  errno = 0;
  o->secs = now ();
  j = journal_open (&m->io, AREA, area_size, ID, CLUSTER);
  o->opened = j != NULL;
  o->err = errno;
  if (j) {
    memset (&o->st, 0, sizeof o->st);
    errno = 0;
    o->r = journal_replay (j, &o->st);
    o->err = errno;
    o->head_seq = journal_head_seq (j);
    journal_free (j);
  }
  o->secs = now () - o->secs;
  snprintf (o->msg, sizeof o->msg, "%s", last_msg);
  o->n = m->size;
  o->d = malloc (m->size);
  memcpy (o->d, m->data, m->size);
  hostio_close (&m->io);
}

static void
run (const uint8_t *img, size_t n, struct outcome *o)
{
  run_area (img, n, AREA_SIZE, o);
}

static void
begin (const char *name)
{
  cur = name;
  case_failed = false;
}

/* Refused: -1 EINVAL, unchanged file, a message naming the transaction. */
static void
expect_refuse (const char *name, uint8_t *img, size_t n, uint64_t seq)
{
  struct outcome o;
  char needle[64];

  begin (name);
  run (img, n, &o);
  EXPECT (o.opened);
  EXPECT (o.r == -1);
  EXPECT (o.err == EINVAL);
  EXPECT (o.n == n && memcmp (o.d, img, n) == 0);
  snprintf (needle, sizeof needle, "transaction %" PRIu64, seq);
  EXPECT (strstr (o.msg, needle) != NULL);
  if (case_failed)
    fprintf (stderr, "  [%s] replay = %d, errno %d, %" PRIu64 " tx applied, "
             "message \"%s\"\n", name, o.r, o.err, o.st.transactions, o.msg);
  free (o.d);
  free (img);
}

/* Replayed exactly the transactions in mask (a valid prefix of the chain
 * from b's head), head moved past them, and a second replay is a no-op. */
static void
expect_prefix (const char *name, uint8_t *img, size_t n, const uint8_t *b,
               size_t bn, unsigned mask, uint64_t next_seq)
{
  struct outcome o, o2;
  unsigned ntx = __builtin_popcount (mask);
  size_t en;
  uint8_t *e = expected (b, bn, mask, &en);

  begin (name);
  run (img, n, &o);
  EXPECT (o.opened);
  EXPECT (o.r == 0);
  EXPECT (o.st.transactions == ntx);
  EXPECT (o.head_seq == next_seq);
  EXPECT (o.n == en);
  if (o.n == en) {
    EXPECT (memcmp (o.d, e, AREA) == 0);
    EXPECT (memcmp (o.d + AREA + AREA_SIZE, e + AREA + AREA_SIZE,
                    en - AREA - AREA_SIZE) == 0);
  }
  if (o.opened && o.r == 0) {
    run (o.d, o.n, &o2);
    EXPECT (o2.opened && o2.r == 0 && o2.st.transactions == 0);
    EXPECT (o2.n == o.n && memcmp (o2.d, o.d, o.n) == 0);
    free (o2.d);
  }
  if (case_failed)
    fprintf (stderr, "  [%s] replay = %d, errno %d, %" PRIu64 " tx applied "
             "(%" PRIu64 "-%" PRIu64 "), head_seq %" PRIu64 ", message "
             "\"%s\"\n", name, o.r, o.err, o.st.transactions,
             o.st.first_seq, o.st.last_seq, o.head_seq, o.msg);
  free (o.d);
  free (e);
  free (img);
}

/* Accepted, all three applied (over a patched tx 2), and the 8 bytes at
 * off hold v. */
static void
expect_accept (const char *name, uint8_t *img, size_t n, uint64_t off,
               uint64_t v)
{
  struct outcome o;

  begin (name);
  run (img, n, &o);
  EXPECT (o.opened && o.r == 0);
  EXPECT (o.st.transactions == 3);
  EXPECT (off + 8 <= o.n && get_be64 (o.d + off) == v);
  if (case_failed)
    fprintf (stderr, "  [%s] replay = %d, errno %d, message \"%s\"\n",
             name, o.r, o.err, o.msg);
  free (o.d);
  free (img);
}

static void
expect_open_fails (const char *name, uint8_t *img, size_t n)
{
  struct outcome o;

  begin (name);
  run (img, n, &o);
  EXPECT (!o.opened);
  EXPECT (o.err == EINVAL);
  EXPECT (o.n == n && memcmp (o.d, img, n) == 0);
  free (o.d);
  free (img);
}

/* The cases. ------------------------------------------------------------- */

/* A copy of base1 with tx 2 modified by a 32- or 64-bit store at byte at
 * (relative to tx 2), resealed. */
static uint8_t *
tx2_put32 (uint32_t at, uint32_t v)
{
  uint8_t *d = dup_img (base1, base1_n);
  put_be32 (d + TX2 + at, v);
  reseal (d, TX2);
  return d;
}

static uint8_t *
tx2_put64 (uint32_t at, uint64_t v)
{
  uint8_t *d = dup_img (base1, base1_n);
  put_be64 (d + TX2 + at, v);
  reseal (d, TX2);
  return d;
}

static uint8_t *
tx2_put16 (uint32_t at, uint16_t v)
{
  uint8_t *d = dup_img (base1, base1_n);
  put_be16 (d + TX2 + at, v);
  reseal (d, TX2);
  return d;
}

#define B1 base1, base1_n
#define B2 base2, base2_n
#define SET0_OFF (R_SET + 8)      /* tx 2's first SET64 offset */
#define SET0_VAL (R_SET + 16)

UNIT_CASE (chain)
{
  uint8_t *d;

  /* Controls: the untouched journals, and a reseal that changes nothing. */
  expect_prefix ("base", dup_img (B1), base1_n, B1, 7, 4);
  expect_prefix ("base, checkpointed", dup_img (B2), base2_n, B2, 6, 4);
  d = dup_img (B1);
  reseal (d, TX2);
  CHECK (memcmp (d, base1, base1_n) == 0);
  expect_prefix ("resealed unchanged", d, base1_n, B1, 7, 4);

  /* Transaction 2 invalid: the chain is tx 1. */
  d = dup_img (B1);
  d[TX2 + R_WRITE + 24] ^= 1;
  expect_prefix ("bad crc in tx 2", d, base1_n, B1, 1, 2);
  d = dup_img (B1);
  d[TX2 + QJ_TX_OFF_CRC + 3] ^= 0x80;
  expect_prefix ("crc field of tx 2", d, base1_n, B1, 1, 2);
  d = dup_img (B1);
  d[TX2 + TX2_PAYLOAD - 1] ^= 0x10;   /* last byte covered by the crc */
  expect_prefix ("last payload byte of tx 2", d, base1_n, B1, 1, 2);
  d = dup_img (B1);
  memcpy (d + TX2, "QJTx", 4);
  reseal (d, TX2);
  expect_prefix ("magic of tx 2", d, base1_n, B1, 1, 2);
  expect_prefix ("journal_id of tx 2", tx2_put64 (QJ_TX_OFF_ID, ID ^ 1),
                 base1_n, B1, 1, 2);
  expect_prefix ("seq gap (tx 2 says 3)", tx2_put64 (QJ_TX_OFF_SEQ, 3),
                 base1_n, B1, 1, 2);
  expect_prefix ("seq gap (tx 2 says 1)", tx2_put64 (QJ_TX_OFF_SEQ, 1),
                 base1_n, B1, 1, 2);
  expect_prefix ("seq of tx 2 far ahead",
                 tx2_put64 (QJ_TX_OFF_SEQ, 1ULL << 63), base1_n, B1, 1, 2);

  /* Lengths. */
  d = dup_img (B1);
  put_be32 (d + TX2 + QJ_TX_OFF_PAYLOAD, TX2_PAYLOAD + 4);
  reseal_len (d, TX2, TX2_PAYLOAD + 4);
  expect_prefix ("payload_length not a multiple of 8", d, base1_n, B1, 1, 2);
  d = dup_img (B1);
  put_be32 (d + TX2 + QJ_TX_OFF_PAYLOAD, 56);
  reseal_len (d, TX2, 56);
  expect_prefix ("payload_length < 64", d, base1_n, B1, 1, 2);
  d = dup_img (B1);
  put_be32 (d + TX2 + QJ_TX_OFF_PAYLOAD, QJ_BLOCK + 8);
  reseal_len (d, TX2, QJ_BLOCK + 8);
  expect_prefix ("payload_length > total_length", d, base1_n, B1, 1, 2);
  d = dup_img (B1);
  put_be32 (d + TX2 + QJ_TX_OFF_PAYLOAD, 0xfffffff8);
  expect_prefix ("payload_length 4 GiB", d, base1_n, B1, 1, 2);
  d = dup_img (B1);
  put_be32 (d + TX2 + QJ_TX_OFF_PAYLOAD, 0);
  reseal_len (d, TX2, 8);
  expect_prefix ("payload_length 0", d, base1_n, B1, 1, 2);
  expect_prefix ("total_length 0", tx2_put32 (QJ_TX_OFF_TOTAL, 0),
                 base1_n, B1, 1, 2);
  expect_prefix ("total_length 6000", tx2_put32 (QJ_TX_OFF_TOTAL, 6000),
                 base1_n, B1, 1, 2);
  expect_prefix ("total_length 2048", tx2_put32 (QJ_TX_OFF_TOTAL, 2048),
                 base1_n, B1, 1, 2);
  expect_prefix ("total_length past the area",
                 tx2_put32 (QJ_TX_OFF_TOTAL, AREA_SIZE - QJ_RING_START),
                 base1_n, B1, 1, 2);
  expect_prefix ("total_length = area size",
                 tx2_put32 (QJ_TX_OFF_TOTAL, AREA_SIZE), base1_n, B1, 1, 2);
  expect_prefix ("total_length 2 GiB",
                 tx2_put32 (QJ_TX_OFF_TOTAL, 0x80000000), base1_n, B1, 1, 2);
  /* A longer (valid) total_length: tx 2 is fine, tx 3 is not where the
   * chain continues. */
  expect_prefix ("total_length 8192 (tx 3 not found)",
                 tx2_put32 (QJ_TX_OFF_TOTAL, 2 * QJ_BLOCK),
                 base1_n, B1, 3, 3);
  /* Transaction 3 reaching exactly the end of the area is valid (the
   * chain then wraps to the ring start and finds tx 1: lower seq, end);
   * one block more is past the area. */
  d = dup_img (B1);
  put_be32 (d + TX3 + QJ_TX_OFF_TOTAL, AREA + AREA_SIZE - TX3);
  reseal (d, TX3);
  expect_prefix ("tx 3 reaching the end of the area", d, base1_n, B1, 7, 4);
  d = dup_img (B1);
  put_be32 (d + TX3 + QJ_TX_OFF_TOTAL, AREA + AREA_SIZE - TX3 + QJ_BLOCK);
  reseal (d, TX3);
  expect_prefix ("tx 3 past the end of the area", d, base1_n, B1, 3, 3);
  /* Tx 1 invalid: nothing. */
  d = dup_img (B1);
  d[TX1 + 70] ^= 0xff;
  expect_prefix ("bad crc in tx 1", d, base1_n, B1, 0, 1);
}

UNIT_CASE (refuse)
{
  uint8_t *d;

  /* Record types. */
  expect_refuse ("unknown record type 7", tx2_put16 (R_SET, 7), base1_n, 2);
  expect_refuse ("record type 4 (reserved)", tx2_put16 (R_ZERO, 4), base1_n, 2);
  expect_refuse ("record type 65535", tx2_put16 (R_WRITE, 0xffff), base1_n, 2);
  /* A refusal in tx 3 after two good ones: nothing of 1 or 2 applied. */
  d = dup_img (B1);
  put_be16 (d + TX3 + 64, 9);
  reseal (d, TX3);
  expect_refuse ("unknown record type in tx 3", d, base1_n, 3);

  /* Record lengths and counts. */
  expect_refuse ("record length overruns the payload",
                 tx2_put32 (R_WRITE + 4, 200), base1_n, 2);
  expect_refuse ("record length 0", tx2_put32 (R_ZERO + 4, 0), base1_n, 2);
  expect_refuse ("record length 4", tx2_put32 (R_ZERO + 4, 4), base1_n, 2);
  expect_refuse ("record length 12", tx2_put32 (R_SET + 4, 12), base1_n, 2);
  expect_refuse ("record length 0xfffffff8",
                 tx2_put32 (R_SET + 4, 0xfffffff8), base1_n, 2);
  expect_refuse ("SET64 length 8 (no entries)", tx2_put32 (R_SET + 4, 8),
                 base1_n, 2);
  expect_refuse ("SET64 length 32 (half an entry)",
                 tx2_put32 (R_SET + 4, 32), base1_n, 2);
  expect_refuse ("nr_records too high", tx2_put32 (QJ_TX_OFF_NR_RECORDS, 4),
                 base1_n, 2);
  expect_refuse ("nr_records too low", tx2_put32 (QJ_TX_OFF_NR_RECORDS, 2),
                 base1_n, 2);
  expect_refuse ("nr_records 0xffffffff",
                 tx2_put32 (QJ_TX_OFF_NR_RECORDS, 0xffffffff), base1_n, 2);
  d = dup_img (B1);
  /* The payload reaches into the zero bytes after the records (a PAD of
   * length 0). */
  put_be32 (d + TX2 + QJ_TX_OFF_PAYLOAD, TX2_PAYLOAD + 8);
  reseal (d, TX2);
  expect_refuse ("payload longer than the records", d, base1_n, 2);
  d = dup_img (B1);
  put_be32 (d + TX2 + QJ_TX_OFF_PAYLOAD, QJ_BLOCK);
  reseal (d, TX2);
  expect_refuse ("payload = total_length over zeroes", d, base1_n, 2);
  expect_refuse ("record flags", tx2_put16 (R_WRITE + 2, 1), base1_n, 2);
  expect_refuse ("record flags 0x8000", tx2_put16 (R_ZERO + 2, 0x8000), base1_n, 2);

  /* Transaction header. */
  expect_refuse ("tx flags bit 1", tx2_put32 (QJ_TX_OFF_FLAGS, 2), base1_n, 2);
  expect_refuse ("SKIP flag on a transaction with records",
                 tx2_put32 (QJ_TX_OFF_FLAGS, QJ_TX_FLAG_SKIP), base1_n, 2);
  {
    uint8_t *x = dup_img (B1);
    x[TX2 + 50] = 1;
    reseal (x, TX2);
    expect_refuse ("reserved header byte 50", x, base1_n, 2);
    x = dup_img (B1);
    x[TX2 + 63] = 0x80;
    reseal (x, TX2);
    expect_refuse ("reserved header byte 63", x, base1_n, 2);
  }
  expect_refuse ("min_file_size not a multiple of 512",
                 tx2_put64 (QJ_TX_OFF_MIN_FILE, mf[1] + 8), base1_n, 2);
  expect_refuse ("min_file_size below the targets",
                 tx2_put64 (QJ_TX_OFF_MIN_FILE, mf[1] - 512), base1_n, 2);
  expect_refuse ("min_file_size 0", tx2_put64 (QJ_TX_OFF_MIN_FILE, 0), base1_n, 2);
  expect_refuse ("min_file_size past 2^56",
                 tx2_put64 (QJ_TX_OFF_MIN_FILE, QJ_MAX_TARGET + 512), base1_n, 2);
  expect_refuse ("min_file_size 2^64 - 512",
                 tx2_put64 (QJ_TX_OFF_MIN_FILE, -512ULL), base1_n, 2);

  /* SET64 targets. */
  expect_refuse ("SET64 inside the journal ring",
                 tx2_put64 (SET0_OFF, AREA + QJ_RING_START), base1_n, 2);
  expect_refuse ("SET64 on superblock 0", tx2_put64 (SET0_OFF, AREA), base1_n, 2);
  expect_refuse ("SET64 on the last bytes of the area",
                 tx2_put64 (SET0_OFF, AREA + AREA_SIZE - 8), base1_n, 2);
  expect_refuse ("SET64 in cluster 0 at 16", tx2_put64 (SET0_OFF, 16), base1_n, 2);
  expect_refuse ("SET64 in cluster 0 at 0", tx2_put64 (SET0_OFF, 0), base1_n, 2);
  expect_refuse ("SET64 in cluster 0 at 72", tx2_put64 (SET0_OFF, 72), base1_n, 2);
  expect_refuse ("SET64 in cluster 0 at 4096",
                 tx2_put64 (SET0_OFF, 4096), base1_n, 2);
  expect_refuse ("SET64 in cluster 0, last word",
                 tx2_put64 (SET0_OFF, CLUSTER - 8), base1_n, 2);
  expect_refuse ("SET64 ending past min_file_size",
                 tx2_put64 (SET0_OFF, mf[1]), base1_n, 2);
  expect_refuse ("SET64 far past min_file_size",
                 tx2_put64 (SET0_OFF, 1ULL << 55), base1_n, 2);
  expect_refuse ("SET64 misaligned", tx2_put64 (SET0_OFF, META + 12), base1_n, 2);
  expect_refuse ("SET64 offset overflows",
                 tx2_put64 (SET0_OFF, 0xfffffffffffffff8ULL), base1_n, 2);
  expect_refuse ("SET64 second entry in the area",
                 tx2_put64 (SET0_OFF + 16, AREA + 0x40000), base1_n, 2);

  /* WRITE. */
  expect_refuse ("WRITE straddling the area start",
                 tx2_put64 (R_WRITE + 8, AREA - 4), base1_n, 2);
  expect_refuse ("WRITE straddling the area end",
                 tx2_put64 (R_WRITE + 8, AREA + AREA_SIZE - 4), base1_n, 2);
  expect_refuse ("WRITE in cluster 0 at 20 (before byte 24)",
                 tx2_put64 (R_WRITE + 8, 20), base1_n, 2);
  expect_refuse ("WRITE in cluster 0 at 60 (past byte 71)",
                 tx2_put64 (R_WRITE + 8, 60), base1_n, 2);
  expect_refuse ("WRITE ending past min_file_size",
                 tx2_put64 (R_WRITE + 8, mf[1] - 8), base1_n, 2);
  expect_refuse ("WRITE offset overflows",
                 tx2_put64 (R_WRITE + 8, 0xfffffffffffffff8ULL), base1_n, 2);
  d = dup_img (B1);
  d[TX2 + R_WRITE + 24 + 13] = 1;
  reseal (d, TX2);
  expect_refuse ("WRITE padding not zero", d, base1_n, 2);
  d = dup_img (B1);
  d[TX2 + R_WRITE + 24 + 15] = 0x80;
  reseal (d, TX2);
  expect_refuse ("WRITE last padding byte not zero", d, base1_n, 2);
  expect_refuse ("WRITE reserved field", tx2_put32 (R_WRITE + 20, 1), base1_n, 2);
  expect_refuse ("WRITE count 0", tx2_put32 (R_WRITE + 16, 0), base1_n, 2);
  expect_refuse ("WRITE count 20 (length says 9-16)",
                 tx2_put32 (R_WRITE + 16, 20), base1_n, 2);
  expect_refuse ("WRITE count 8 (length says 9-16)",
                 tx2_put32 (R_WRITE + 16, 8), base1_n, 2);
  expect_refuse ("WRITE count 0xffffffff",
                 tx2_put32 (R_WRITE + 16, 0xffffffff), base1_n, 2);
  expect_refuse ("WRITE length 16 (too short)",
                 tx2_put32 (R_WRITE + 4, 16), base1_n, 2);

  /* ZERO. */
  d = dup_img (B1);
  put_be64 (d + TX2 + R_ZERO + 16, 64 << 20);
  put_be64 (d + TX2 + QJ_TX_OFF_MIN_FILE, ROUNDUP (META + 0x8000 +
                                                  (64 << 20), 512));
  reseal (d, TX2);
  expect_refuse ("ZERO count 64 MiB", d, base1_n, 2);
  d = dup_img (B1);
  put_be64 (d + TX2 + R_ZERO + 16, QJ_MAX_ZERO + 512);
  put_be64 (d + TX2 + QJ_TX_OFF_MIN_FILE, ROUNDUP (META + 0x8000 +
                                                  (64 << 20), 512));
  reseal (d, TX2);
  expect_refuse ("ZERO count 32 MiB + 512", d, base1_n, 2);
  expect_refuse ("ZERO count 0", tx2_put64 (R_ZERO + 16, 0), base1_n, 2);
  expect_refuse ("ZERO count 1000", tx2_put64 (R_ZERO + 16, 1000), base1_n, 2);
  expect_refuse ("ZERO count 2^64 - 512",
                 tx2_put64 (R_ZERO + 16, -512ULL), base1_n, 2);
  expect_refuse ("ZERO misaligned offset",
                 tx2_put64 (R_ZERO + 8, META + 0x8000 + 8), base1_n, 2);
  expect_refuse ("ZERO over the journal area",
                 tx2_put64 (R_ZERO + 8, AREA + AREA_SIZE - 512), base1_n, 2);
  expect_refuse ("ZERO in cluster 0", tx2_put64 (R_ZERO + 8, 0), base1_n, 2);
  expect_refuse ("ZERO ending past min_file_size",
                 tx2_put64 (R_ZERO + 8, mf[1]), base1_n, 2);
  expect_refuse ("ZERO offset overflows",
                 tx2_put64 (R_ZERO + 8, 0xfffffffffffffe00ULL), base1_n, 2);
}

/* Patched records that are within the rules (controls for the patching:
 * the refusals above are not artefacts of it). */
UNIT_CASE (accept)
{
  const uint64_t v = 0xa2a2a2a2a2a2a2a2ULL;
  uint8_t *d;

  expect_accept ("SET64 on header word 24", tx2_put64 (SET0_OFF, 24), base1_n,
                 24, v);
  expect_accept ("SET64 on header word 64", tx2_put64 (SET0_OFF, 64), base1_n,
                 64, v);
  expect_accept ("SET64 just before the area",
                 tx2_put64 (SET0_OFF, AREA - 8), base1_n, AREA - 8, v);
  expect_accept ("SET64 just after the area",
                 tx2_put64 (SET0_OFF, AREA + AREA_SIZE), base1_n, AREA + AREA_SIZE,
                 v);
  expect_accept ("SET64 at the cluster 1 start",
                 tx2_put64 (SET0_OFF, CLUSTER), base1_n, CLUSTER, v);
  d = dup_img (B1);
  /* (tx 2's ZERO, which covers the end of min_file_size, moved away) */
  put_be64 (d + TX2 + SET0_OFF, mf[1] - 8);
  put_be64 (d + TX2 + R_ZERO + 8, META + 0x7000);
  reseal (d, TX2);
  expect_accept ("SET64 ending at min_file_size", d, base1_n, mf[1] - 8, v);
  d = dup_img (B1);
  put_be64 (d + TX2 + R_WRITE + 8, 36);
  reseal (d, TX2);
  expect_accept ("WRITE on header bytes 36-48", d, base1_n, 32,
                 get_be64 ((const uint8_t *) "\0\0\0\0tx2-"));
  d = dup_img (B1);
  /* A 32 MiB ZERO (the limit), with a min_file_size to match. */
  put_be64 (d + TX2 + R_ZERO + 16, QJ_MAX_ZERO);
  put_be64 (d + TX2 + QJ_TX_OFF_MIN_FILE, META + 0x8000 + QJ_MAX_ZERO);
  reseal (d, TX2);
  expect_accept ("ZERO of 32 MiB", d, base1_n, META + 8, v);
  /* A record turned into PAD is ignored (its body is not checked). */
  expect_accept ("SET64 turned into PAD", tx2_put16 (R_SET, QJ_REC_PAD), base1_n,
                 META + 8, 0);
}

UNIT_CASE (superblock)
{
  uint8_t *d;
  struct { const char *name; unsigned off, width; uint64_t v; } bad[] = {
    { "sb0 head_offset = area size", QJ_SB_OFF_HEAD, 8, AREA_SIZE },
    { "sb0 head_offset past the area", QJ_SB_OFF_HEAD, 8, AREA_SIZE + 8192 },
    { "sb0 head_offset 2^63", QJ_SB_OFF_HEAD, 8, 1ULL << 63 },
    { "sb0 head_offset in superblock 1", QJ_SB_OFF_HEAD, 8, QJ_BLOCK },
    { "sb0 head_offset 0", QJ_SB_OFF_HEAD, 8, 0 },
    { "sb0 head_offset unaligned", QJ_SB_OFF_HEAD, 8,
      QJ_RING_START + QJ_BLOCK + 512 },
    { "sb0 head_seq 0", QJ_SB_OFF_HEAD_SEQ, 8, 0 },
    { "sb0 generation 0", QJ_SB_OFF_GENERATION, 8, 0 },
    { "sb0 version 2", QJ_SB_OFF_VERSION, 4, 2 },
    { "sb0 block_size 512", QJ_SB_OFF_BLOCK_SIZE, 4, 512 },
    { "sb0 other journal_id", QJ_SB_OFF_ID, 8, ID + 1 },
    { "sb0 other area_size", QJ_SB_OFF_AREA_SIZE, 8, 2 * AREA_SIZE },
    { "sb0 reserved field", QJ_SB_OFF_FLAGS, 4, 1 },
  };

  /* base2: SB0 generation 3, head tx 2; SB1 generation 2, head tx 1. */
  CHECK (get_be64 (base2 + AREA + QJ_SB_OFF_GENERATION) == 3);
  CHECK (get_be64 (base2 + AREA + QJ_BLOCK + QJ_SB_OFF_GENERATION) == 2);

  d = dup_img (B2);
  d[AREA + 20] ^= 1;
  d[AREA + QJ_BLOCK + 33] ^= 1;
  expect_open_fails ("both superblocks corrupted", d, base2_n);
  d = dup_img (B2);
  memset (d + AREA, 0, 2 * QJ_BLOCK);
  expect_open_fails ("both superblocks zeroed", d, base2_n);
  d = dup_img (B2);
  d[AREA + 5] ^= 1;
  expect_prefix ("sb0 (newest) corrupted: sb1 used", d, base2_n, B2, 7, 4);
  d = dup_img (B2);
  d[AREA + QJ_BLOCK + QJ_SB_OFF_CRC] ^= 1;
  expect_prefix ("sb1 (older) corrupted: sb0 used", d, base2_n, B2, 6, 4);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    d = dup_img (B2);
    if (bad[i].width == 8)
      put_be64 (d + AREA + bad[i].off, bad[i].v);
    else
      put_be32 (d + AREA + bad[i].off, bad[i].v);
    sb_reseal (d, 0);
    expect_prefix (bad[i].name, d, base2_n, B2, 7, 4);
  }
  d = dup_img (B2);
  memcpy (d + AREA, "qcow2jsb", 8);
  sb_reseal (d, 0);
  expect_prefix ("sb0 magic", d, base2_n, B2, 7, 4);

  /* Controls: a valid resealed head is followed. */
  d = dup_img (B2);
  put_be64 (d + AREA + QJ_SB_OFF_HEAD, TX3 - AREA);
  put_be64 (d + AREA + QJ_SB_OFF_HEAD_SEQ, 3);
  sb_reseal (d, 0);
  expect_prefix ("sb0 head moved to tx 3", d, base2_n, B2, 4, 4);
  d = dup_img (B2);
  put_be64 (d + AREA + QJ_SB_OFF_HEAD_SEQ, 5);
  sb_reseal (d, 0);
  expect_prefix ("sb0 head_seq not found at the head", d, base2_n, B2, 0, 5);
  d = dup_img (B2);
  memset (d + AREA + QJ_SB_USED, 0x5a, QJ_BLOCK - QJ_SB_USED);
  expect_prefix ("sb0 padding ignored", d, base2_n, B2, 6, 4);

  /* The largest generation (valid, 4.3 and 14): the copy is used, but the
   * head can no longer move (generation 0 is invalid), so a replay that
   * has something to apply is refused before it changes a byte. */
  d = dup_img (B2);
  put_be64 (d + AREA + QJ_SB_OFF_GENERATION, UINT64_MAX);
  sb_reseal (d, 0);
  {
    struct outcome o;

    begin ("sb0 generation 2^64-1: refused, file unchanged");
    run (d, base2_n, &o);
    EXPECT (o.opened && o.r == -1 && o.err == EINVAL);
    EXPECT (o.n == base2_n && memcmp (o.d, d, base2_n) == 0);
    EXPECT (strstr (o.msg, "generation") != NULL);
    free (o.d);
    free (d);
  }

  /* Same generation, different contents: neither can be trusted. */
  d = dup_img (B2);
  put_be64 (d + AREA + QJ_BLOCK + QJ_SB_OFF_GENERATION, 3);
  sb_reseal (d, 1);
  expect_open_fails ("same generation, different heads", d, base2_n);
  d = dup_img (B2);
  memcpy (d + AREA + QJ_BLOCK, d + AREA, QJ_SB_USED);
  expect_prefix ("same generation, same contents", d, base2_n, B2, 6, 4);
  /* The newer generation wins wherever it is. */
  d = dup_img (B2);
  put_be64 (d + AREA + QJ_BLOCK + QJ_SB_OFF_GENERATION, 4);
  sb_reseal (d, 1);
  expect_prefix ("sb1 made newest", d, base2_n, B2, 7, 4);
}

/* The replay work bound (rule R6). ------------------------------------- */

/* A file of file_size bytes with a fresh journal of area_size bytes at
 * AREA (empty ring) and 0x5a bytes after it, where ZERO records aim. */
static uint8_t *
bound_image (uint64_t area_size, size_t file_size)
{
  struct mem_io *m = mem_io_new ("bound", file_size);
  struct journal *j = journal_create (&m->io, AREA, area_size, ID, CLUSTER);
  uint8_t *d;

  CHECK (j != NULL && m->size == file_size);
  journal_free (j);
  memset (m->data + AREA + area_size, 0x5a, file_size - AREA - area_size);
  d = dup_img (m->data, file_size);
  hostio_close (&m->io);
  return d;
}

/* Write transaction seq at area offset *off of d, holding the nr records
 * rec[0..len), and move *off past it. */
static void
put_tx (uint8_t *d, uint64_t *off, uint64_t seq, const uint8_t *rec,
        uint32_t len, uint32_t nr, uint64_t min_file)
{
  uint8_t *t = d + AREA + *off;
  uint32_t payload = QJ_TX_HEADER + len;

  memset (t, 0, QJ_TX_HEADER);
  memcpy (t + QJ_TX_OFF_MAGIC, QJ_TX_MAGIC, 4);
  put_be64 (t + QJ_TX_OFF_ID, ID);
  put_be64 (t + QJ_TX_OFF_SEQ, seq);
  put_be32 (t + QJ_TX_OFF_PAYLOAD, payload);
  put_be32 (t + QJ_TX_OFF_TOTAL, ROUNDUP (payload, QJ_BLOCK));
  put_be32 (t + QJ_TX_OFF_NR_RECORDS, nr);
  put_be64 (t + QJ_TX_OFF_MIN_FILE, min_file);
  if (len > 0)
    memcpy (t + QJ_TX_HEADER, rec, len);
  reseal_len (d, AREA + *off, payload);
  *off += ROUNDUP (payload, QJ_BLOCK);
}

/* Replay d (area_size at AREA): accepted with ntx transactions and
 * sectors sectors of work, or (ntx 0) refused with EFBIG, the file
 * unchanged and a message naming the total (needle). */
static void
expect_bound (const char *name, uint8_t *d, size_t n, uint64_t area_size,
              uint64_t ntx, uint64_t sectors, const char *needle)
{
  struct outcome o;

  begin (name);
  run_area (d, n, area_size, &o);
  EXPECT (o.opened);
  if (ntx > 0) {
    EXPECT (o.r == 0);
    EXPECT (o.st.transactions == ntx && o.st.sectors == sectors);
  }
  else {
    EXPECT (o.r == -1 && o.err == EFBIG);
    EXPECT (o.n == n && memcmp (o.d, d, n) == 0);
    EXPECT (strstr (o.msg, needle) != NULL);
    EXPECT (strstr (o.msg, "rule R6") != NULL);
  }
  printf ("%s: %s in %.3f s%s%s\n", name, o.r == 0 ? "replayed" : "refused",
          o.secs, o.r == 0 ? "" : ": ", o.r == 0 ? "" : o.msg);
  if (case_failed)
    fprintf (stderr, "  [%s] replay = %d, errno %d, %" PRIu64 " tx, %" PRIu64
             " sectors, message \"%s\"\n", name, o.r, o.err,
             o.st.transactions, o.st.sectors, o.msg);
  free (o.d);
  free (d);
}

/* Chains of n transactions that each zero the same 1 MiB (2048 sectors,
 * counted every time): 128 reach the bound, 129 pass it. */
static uint8_t *
zero_chain (unsigned n, size_t *size)
{
  const uint64_t tgt = AREA + AREA_SIZE;
  uint8_t rec[QJ_REC_HEADER + 16], *d;
  uint64_t off = QJ_RING_START;

  *size = tgt + (1 << 20);
  d = bound_image (AREA_SIZE, *size);
  memset (rec, 0, sizeof rec);
  put_be16 (rec, QJ_REC_ZERO);
  put_be32 (rec + 4, sizeof rec);
  put_be64 (rec + 8, tgt);
  put_be64 (rec + 16, 1 << 20);
  for (unsigned k = 1; k <= n; k++)
    put_tx (d, &off, k, rec, sizeof rec, 1, tgt + (1 << 20));
  return d;
}

UNIT_CASE (bound)
{
  const uint64_t big_area = 129ULL << 20;
  struct outcome o;
  uint8_t *d, *pad;
  uint64_t off;
  size_t n;

  /* How sectors are counted: base1 touches 10 (the 1024-byte WRITE two);
   * a 13-byte WRITE across a sector boundary touches two. */
  begin ("sectors of the base journal");
  run (base1, base1_n, &o);
  EXPECT (o.r == 0 && o.st.sectors == 10);
  free (o.d);
  begin ("a WRITE across a sector boundary");
  run (d = tx2_put64 (R_WRITE + 8, META + 0x2000 + 505), base1_n, &o);
  EXPECT (o.r == 0 && o.st.sectors == 11);
  free (o.d);
  free (d);

  /* Sectors: many small ZERO transactions. */
  d = zero_chain (128, &n);
  expect_bound ("128 transactions zeroing 1 MiB each (at the bound)", d, n,
                AREA_SIZE, 128, QJ_MAX_LIVE_SECTORS, NULL);
  d = zero_chain (128, &n);
  run (d, n, &o);
  for (size_t i = AREA + AREA_SIZE; i < n && o.r == 0; i++)
    CHECK (o.d[i] == 0);
  free (o.d);
  free (d);
  d = zero_chain (129, &n);
  expect_bound ("129 transactions zeroing 1 MiB each", d, n, AREA_SIZE, 0, 0,
                "sectors written: 264192, more than the bound of 262144");
  d = zero_chain (200, &n);
  expect_bound ("200 transactions zeroing 1 MiB each", d, n, AREA_SIZE, 0, 0,
                "transactions 1 to 129 ask replay");

  /* One 328-byte transaction zeroing 512 MiB (issue #11). */
  {
    uint8_t rec[QJ_REC_HEADER + 16 * 16];
    const uint64_t tgt = AREA + AREA_SIZE;

    n = tgt + 4096;
    d = bound_image (AREA_SIZE, n);
    memset (rec, 0, sizeof rec);
    put_be16 (rec, QJ_REC_ZERO);
    put_be32 (rec + 4, sizeof rec);
    for (int i = 0; i < 16; i++) {
      put_be64 (rec + 8 + 16 * i, tgt + (uint64_t) i * QJ_MAX_ZERO);
      put_be64 (rec + 16 + 16 * i, QJ_MAX_ZERO);
    }
    off = QJ_RING_START;
    put_tx (d, &off, 1, rec, sizeof rec, 1, tgt + 16ULL * QJ_MAX_ZERO);
    CHECK (get_be32 (d + AREA + QJ_RING_START + QJ_TX_OFF_PAYLOAD) == 328);
    expect_bound ("one 328-byte transaction zeroing 512 MiB", d, n, AREA_SIZE,
                  0, 0, "sectors written: 1048576");
  }

  /* Transactions: empty ones, in a ring large enough for 32769. */
  n = AREA + big_area;
  d = bound_image (big_area, n);
  off = QJ_RING_START;
  for (uint64_t k = 1; k <= QJ_MAX_LIVE_TRANSACTIONS; k++)
    put_tx (d, &off, k, NULL, 0, 0, 0);
  expect_bound ("32768 empty transactions", dup_img (d, n), n, big_area,
                QJ_MAX_LIVE_TRANSACTIONS, 0, NULL);
  put_tx (d, &off, QJ_MAX_LIVE_TRANSACTIONS + 1, NULL, 0, 0, 0);
  expect_bound ("32769 empty transactions", d, n, big_area, 0, 0,
                "transactions: 32769, more than the bound of 32768");

  /* Records: one transaction of PAD records. */
  n = AREA + (16ULL << 20);
  pad = calloc (QJ_MAX_LIVE_RECORDS + 1, 8);
  CHECK (pad != NULL);
  for (uint64_t i = 0; i <= QJ_MAX_LIVE_RECORDS; i++)
    put_be32 (pad + 8 * i + 4, 8);
  d = bound_image (16ULL << 20, n);
  off = QJ_RING_START;
  put_tx (d, &off, 1, pad, 8 * QJ_MAX_LIVE_RECORDS, QJ_MAX_LIVE_RECORDS, 0);
  expect_bound ("2^20 PAD records", d, n, 16ULL << 20, 1, 0, NULL);
  d = bound_image (16ULL << 20, n);
  off = QJ_RING_START;
  put_tx (d, &off, 1, pad, 8 * (QJ_MAX_LIVE_RECORDS + 1),
          QJ_MAX_LIVE_RECORDS + 1, 0);
  expect_bound ("2^20 + 1 PAD records", d, n, 16ULL << 20, 0, 0,
                "records: 1048577, more than the bound of 1048576");
  free (pad);
}

/* The writer never leaves a live region past the bound: one transaction
 * may not exceed it (EFBIG), and a commit that would take the live region
 * past it asks for a checkpoint first (EAGAIN), as a full ring does. */
UNIT_CASE (writer_bound)
{
  const uint64_t half = QJ_MAX_LIVE_SECTORS / 2 * QJ_SECTOR;
  const uint64_t tgt = AREA + AREA_SIZE, big_area = 129ULL << 20;
  struct mem_io *m = mem_io_new ("writer", FILE0);
  struct journal *j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  struct outcome o;
  uint64_t seq;

  begin ("writer: sectors");
  CHECK (j != NULL);
  errno = 0;
  EXPECT (journal_add_zero (j, tgt, QJ_MAX_LIVE_SECTORS * QJ_SECTOR + 512)
          == -1 && errno == EFBIG);
  EXPECT (journal_open_bytes (j) == 0 && journal_is_idle (j));
  EXPECT (journal_add_zero (j, tgt, half) == 0);
  EXPECT (journal_open_is_large (j));
  EXPECT (journal_commit (j, &seq) == 0 && seq == 1);
  EXPECT (journal_add_zero (j, tgt, half) == 0);
  EXPECT (journal_commit (j, &seq) == 0 && seq == 2);
  /* The live region is at the bound, and a reader accepts it. */
  run (m->data, m->size, &o);
  EXPECT (o.r == 0 && o.st.transactions == 2 &&
          o.st.sectors == QJ_MAX_LIVE_SECTORS);
  free (o.d);
  EXPECT (journal_add_set64 (j, META, 1) == 0);
  errno = 0;
  EXPECT (journal_commit (j, &seq) == -1 && errno == EAGAIN);
  EXPECT (journal_checkpointed (j, 2) == 0);
  EXPECT (journal_commit (j, &seq) == 0 && seq == 3);
  journal_free (j);
  hostio_close (&m->io);

  begin ("writer: transactions");
  m = mem_io_new ("writer", AREA + big_area);
  j = journal_create (&m->io, AREA, big_area, ID, CLUSTER);
  CHECK (j != NULL);
  for (uint64_t k = 1; k <= QJ_MAX_LIVE_TRANSACTIONS; k++) {
    journal_need_file_size (j, FILE0);
    CHECK (journal_commit (j, &seq) == 0 && seq == k);
  }
  journal_need_file_size (j, FILE0);
  errno = 0;
  EXPECT (journal_commit (j, &seq) == -1 && errno == EAGAIN);
  EXPECT (journal_ring_used (j) + QJ_BLOCK <= journal_ring_size (j));
  EXPECT (journal_checkpointed (j, QJ_MAX_LIVE_TRANSACTIONS) == 0);
  EXPECT (journal_commit (j, &seq) == 0 &&
          seq == QJ_MAX_LIVE_TRANSACTIONS + 1);
  journal_free (j);
  hostio_close (&m->io);
}

/* Fuzz ------------------------------------------------------------------- */

/* A file that fails (EFBIG) to grow past a cap, and records whether it
 * was modified and where (to restore it cheaply). */
#define CAP (64ULL << 20)

struct cap_io {
  struct hostio io;
  uint8_t *data;
  uint64_t size, alloc;
  unsigned mods;                /* pwrite / truncate calls */
  struct { uint64_t lo, hi; } dirty[16];
  unsigned ndirty;
  bool all_dirty;
};

static void
cap_dirty (struct cap_io *c, uint64_t lo, uint64_t hi)
{
  for (unsigned i = 0; i < c->ndirty; i++)
    if (lo <= c->dirty[i].hi && c->dirty[i].lo <= hi) {
      if (lo < c->dirty[i].lo) c->dirty[i].lo = lo;
      if (hi > c->dirty[i].hi) c->dirty[i].hi = hi;
      return;
    }
  if (c->ndirty == 16) {
    c->all_dirty = true;
    return;
  }
  c->dirty[c->ndirty].lo = lo;
  c->dirty[c->ndirty].hi = hi;
  c->ndirty++;
}

static int
cap_grow (struct cap_io *c, uint64_t size)
{
  if (size > CAP) {
    errno = EFBIG;
    return -1;
  }
  if (size > c->alloc) {
    c->data = realloc (c->data, size);
    REQUIRE (c->data != NULL);
    c->alloc = size;
  }
  if (size > c->size)
    memset (c->data + c->size, 0, size - c->size);
  return 0;
}

static int
cap_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  struct cap_io *c = (struct cap_io *) io;
  uint64_t avail = offset < c->size ? c->size - offset : 0;

  if (avail > count)
    avail = count;
  memcpy (buf, c->data + offset, avail);
  memset ((uint8_t *) buf + avail, 0, count - avail);
  return 0;
}

static int
cap_pwrite (struct hostio *io, const void *buf, size_t count, uint64_t offset)
{
  struct cap_io *c = (struct cap_io *) io;

  c->mods++;
  if (offset > CAP || count > CAP - offset) {
    errno = EFBIG;
    return -1;
  }
  if (offset + count > c->size) {
    if (cap_grow (c, offset + count) == -1)
      return -1;
    c->size = offset + count;
  }
  memcpy (c->data + offset, buf, count);
  cap_dirty (c, offset, offset + count);
  return 0;
}

static int cap_flush (struct hostio *io) { return 0; }
static int cap_punch (struct hostio *io, uint64_t o, uint64_t n)
{ errno = ENOTSUP; return -1; }

static int
cap_truncate (struct hostio *io, uint64_t size)
{
  struct cap_io *c = (struct cap_io *) io;

  c->mods++;
  if (size > c->size && cap_grow (c, size) == -1)
    return -1;
  cap_dirty (c, size < c->size ? size : c->size, size > c->size ? size
             : c->size);
  c->size = size;
  return 0;
}

static int64_t cap_size (struct hostio *io)
{ return ((struct cap_io *) io)->size; }
static int cap_block_status (struct hostio *io, uint64_t o, uint64_t n,
                             bool *is_data, uint64_t *run)
{ *is_data = true; *run = n; return 0; }
static void cap_close (struct hostio *io) { }

static const struct hostio_ops cap_ops = {
  .pread = cap_pread, .pwrite = cap_pwrite, .flush = cap_flush,
  .punch = cap_punch, .truncate = cap_truncate, .size = cap_size,
  .block_status = cap_block_status, .close = cap_close,
};

/* Back to the bytes of b. */
static void
cap_restore (struct cap_io *c, const uint8_t *b, size_t bn)
{
  if (c->all_dirty || c->size < bn) {
    CHECK (cap_grow (c, bn) == 0);
    memcpy (c->data, b, bn);
  }
  else
    for (unsigned i = 0; i < c->ndirty; i++)
      if (c->dirty[i].lo < bn)
        memcpy (c->data + c->dirty[i].lo, b + c->dirty[i].lo,
                (c->dirty[i].hi < bn ? c->dirty[i].hi : bn) -
                c->dirty[i].lo);
  c->size = bn;
  c->ndirty = 0;
  c->all_dirty = false;
  c->mods = 0;
}

static uint64_t fz;
static uint64_t
frand (void)
{
  fz ^= fz << 13;
  fz ^= fz >> 7;
  fz ^= fz << 17;
  return fz;
}

/* A third base whose chain wraps: SKIP filler at the end of the ring, a
 * transaction at its start. */
static uint8_t *base3;
static size_t base3_n;

static uint8_t *
build_wrapped_base (size_t *n)
{
  struct mem_io *m = mem_io_new ("base3", FILE0);
  struct journal *j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  uint8_t buf[3 * QJ_BLOCK];
  uint64_t seq, ring_blocks = (AREA_SIZE - QJ_RING_START) / QJ_BLOCK;
  uint8_t *out;

  REQUIRE (j != NULL);
  memset (buf, 0x77, sizeof buf);
  for (uint64_t k = 1; k <= ring_blocks - 4; k++) {
    CHECK (journal_add_set64 (j, META + 8 * k, k) == 0);
    CHECK (journal_commit (j, &seq) == 0);
  }
  CHECK (journal_checkpointed (j, ring_blocks - 9) == 0);
  /* Three blocks, then a two-block one that needs the filler. */
  CHECK (journal_add_write (j, META + 0x10000, buf, 2 * QJ_BLOCK + 100) == 0);
  CHECK (journal_commit (j, &seq) == 0);
  CHECK (journal_add_write (j, META + 0x20000, buf, QJ_BLOCK + 100) == 0);
  CHECK (journal_add_zero (j, META + 0x30000, 4096) == 0);
  CHECK (journal_commit (j, &seq) == 0);
  CHECK (get_be32 (m->data + AREA + AREA_SIZE - QJ_BLOCK + QJ_TX_OFF_FLAGS)
         == QJ_TX_FLAG_SKIP);
  journal_free (j);
  out = malloc (m->size);
  memcpy (out, m->data, m->size);
  *n = m->size;
  hostio_close (&m->io);
  return out;
}

/* The chain from the head of b, following total_length (b is trusted):
 * the offsets (in the file) of its transactions. */
static size_t
chain_of (const uint8_t *b, uint64_t *offs, size_t max)
{
  unsigned best = get_be64 (b + AREA + QJ_BLOCK + QJ_SB_OFF_GENERATION) >
    get_be64 (b + AREA + QJ_SB_OFF_GENERATION);
  uint64_t off = get_be64 (b + AREA + best * QJ_BLOCK + QJ_SB_OFF_HEAD);
  uint64_t seq = get_be64 (b + AREA + best * QJ_BLOCK + QJ_SB_OFF_HEAD_SEQ);
  size_t n = 0;

  while (n < max && memcmp (b + AREA + off, QJ_TX_MAGIC, 4) == 0 &&
         get_be64 (b + AREA + off + QJ_TX_OFF_SEQ) == seq) {
    offs[n++] = AREA + off;
    off += get_be32 (b + AREA + off + QJ_TX_OFF_TOTAL);
    if (off >= AREA_SIZE)
      off = QJ_RING_START;
    seq++;
  }
  return n;
}

static const uint64_t interesting[] = {
  0, 1, 7, 8, 16, 24, 64, 72, 512, 4096, 8192, 0x7fffffff, 0x80000000,
  0xffffffff, AREA, AREA_SIZE, AREA + AREA_SIZE, CLUSTER, QJ_MAX_ZERO,
  QJ_MAX_TARGET, 0xffffffffffffffffULL, 0x8000000000000000ULL,
};

static void
fuzz (unsigned iters, uint64_t seed)
{
  const uint8_t *bases[3] = { base1, base2, base3 };
  size_t bns[3] = { base1_n, base2_n, base3_n };
  uint64_t chains[3][16];
  size_t nchain[3];
  struct cap_io cs[3];
  unsigned opened = 0, refused = 0, replayed = 0, other_err = 0;
  uint64_t applied = 0;

  for (int b = 0; b < 3; b++) {
    nchain[b] = chain_of (bases[b], chains[b], 16);
    CHECK (nchain[b] >= 2);
  }
  fz = seed ? seed : 1;
  memset (cs, 0, sizeof cs);
  for (int b = 0; b < 3; b++) {
    cs[b].io.ops = &cap_ops;
    cs[b].io.name = (char *) "fuzz";
    cs[b].all_dirty = true;
  }

  for (unsigned it = 0; it < iters; it++) {
    int b = frand () % 3;
    struct cap_io *cp = &cs[b];
    unsigned nmut = 1 + frand () % 4;
    bool resealed = frand () % 4 != 0;
    struct journal *j;
    struct journal_replay_stats st;
    int r, err;

    cap_restore (cp, bases[b], bns[b]);
    for (unsigned k = 0; k < nmut; k++) {
      uint64_t where;
      uint64_t pick = frand () % 10;

      if (pick < 2)             /* a superblock's used bytes */
        where = AREA + (frand () % 2) * QJ_BLOCK + frand () % QJ_SB_USED;
      else {                    /* a chain transaction's first 1.5 KiB */
        uint64_t t = chains[b][frand () % nchain[b]];
        where = t + (frand () % 3 == 0 ? frand () % 64 : frand () % 1536);
      }
      if (frand () % 3 == 0) {  /* an interesting value, aligned */
        uint64_t v = interesting[frand () % (sizeof interesting /
                                             sizeof interesting[0])];
        where &= ~7ULL;
        if (frand () % 2)
          put_be32 (cp->data + where + 4 * (frand () % 2), v);
        else
          put_be64 (cp->data + where, v);
      }
      else
        cp->data[where] ^= 1 << (frand () % 8);
    }
    if (resealed) {
      /* Get past the checksums, to reach the checks behind them. */
      for (size_t i = 0; i < nchain[b]; i++) {
        uint64_t t = chains[b][i];
        uint32_t payload = get_be32 (cp->data + t + QJ_TX_OFF_PAYLOAD);
        if (payload >= 8 && payload <= AREA + AREA_SIZE - t)
          reseal_len (cp->data, t, payload);
      }
      sb_reseal (cp->data, 0);
      sb_reseal (cp->data, 1);
    }
    cap_dirty (cp, AREA, AREA + AREA_SIZE);     /* restore the mutations */
    cp->mods = 0;

    errno = 0;
    j = journal_open (&cp->io, AREA, AREA_SIZE, ID, CLUSTER);
    if (j == NULL) {
      CHECK (errno != 0);
      CHECK (cp->mods == 0);
      continue;
    }
    opened++;
    errno = 0;
    r = journal_replay (j, &st);
    err = errno;
    journal_free (j);
    if (r == -1) {
      if (err == 0)
        fprintf (stderr, "fuzz seed %" PRIu64 " iteration %u: replay "
                 "failed without errno\n", seed, it);
      CHECK (err != 0);
      if (err == EINVAL || (err == EFBIG && strstr (last_msg, "rule R6"))) {
        /* A refusal writes nothing. */
        if (cp->mods != 0)
          fprintf (stderr, "fuzz seed %" PRIu64 " iteration %u: refused "
                   "after %u writes: %s\n", seed, it, cp->mods, last_msg);
        CHECK (cp->mods == 0);
        refused++;
      }
      else {
        if (other_err++ < 3)
          fprintf (stderr, "fuzz: replay failed with %s: %s\n",
                   strerror (err), last_msg);
      }
      continue;
    }
    CHECK (r == 0);
    replayed++;
    applied += st.transactions;
    /* Idempotent: replaying again finds nothing and writes nothing. */
    cp->mods = 0;
    j = journal_open (&cp->io, AREA, AREA_SIZE, ID, CLUSTER);
    REQUIRE (j != NULL);
    CHECK (journal_replay (j, &st) == 0);
    if (st.transactions != 0) {
      fprintf (stderr, "fuzz seed %" PRIu64 " iteration %u (base %d): a "
               "second replay applied %" PRIu64 " more transactions "
               "(%" PRIu64 "-%" PRIu64 "); superblocks now:\n", seed, it,
               b + 1, st.transactions, st.first_seq, st.last_seq);
      for (unsigned k = 0; k < 2; k++) {
        const uint8_t *sb = cp->data + AREA + k * QJ_BLOCK;
        fprintf (stderr, "  sb%u: generation %" PRIu64 " head 0x%" PRIx64
                 " head_seq %" PRIu64 "\n", k,
                 get_be64 (sb + QJ_SB_OFF_GENERATION),
                 get_be64 (sb + QJ_SB_OFF_HEAD),
                 get_be64 (sb + QJ_SB_OFF_HEAD_SEQ));
      }
    }
    CHECK (st.transactions == 0);
    CHECK (cp->mods == 0);
    journal_free (j);
  }
  for (int b = 0; b < 3; b++)
    free (cs[b].data);
  printf ("fuzz: %u iterations, seed %" PRIu64 ": %u opened, %u replayed "
          "(%" PRIu64 " transactions applied), %u refused, %u other "
          "errors\n", iters, seed, opened, replayed, applied, refused,
          other_err);
  CHECK (replayed > 0 && refused > 0);
}

/* Flip bytes in the superblocks and the ring. */
UNIT_CASE (fuzz)
{
  const char *s;
  uint64_t seed;
  unsigned iters = 3000;

  s = getenv ("QCOW2J_SEED");
  seed = s ? strtoull (s, NULL, 0) : 0x5eed;
  s = getenv ("QCOW2J_FUZZ_ITERS");
  if (s)
    iters = atoi (s);
  printf ("fuzz seed %" PRIu64 " (QCOW2J_SEED=%" PRIu64 " repeats it)\n",
          seed, seed);
  fuzz (iters, seed);
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (chain),
  UNIT_ENTRY (refuse),
  UNIT_ENTRY (accept),
  UNIT_ENTRY (superblock),
  UNIT_ENTRY (bound),
  UNIT_ENTRY (writer_bound),
  UNIT_ENTRY (fuzz),
};

int
main (int argc, char *argv[])
{
  UNIT_SELECT (argc, argv, cases);
  alarm (120);
  memset (aa, 0xaa, sizeof aa);
  base1 = build_base (false, &base1_n);
  base2 = build_base (true, &base2_n);
  base3 = build_wrapped_base (&base3_n);
  qlog_set_handlers (capture, NULL);
  UNIT_RUN (cases);
  free (base1);
  free (base2);
  free (base3);
  printf ("unit-journal-hostile: %u messages captured\n", nr_msgs);
  return unit_status ();
}
