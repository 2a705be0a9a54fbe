/* The specification's own numbers, checked against the code: every CRC
 * and byte string docs/journal-format.md prints (the CRC-32C vectors of
 * section 7, the magics of sections 3 - 5, the worked example of section
 * 15) is compared with what lib/ computes, encodes and decodes, so that
 * the spec and the code cannot drift apart unnoticed. */
#include <config.h>

#include <stdint.h>
#include <string.h>

#include "byteorder.h"
#include "crc32c.h"
#include "journal.h"
#include "journal-ext.h"
#include "journal-format.h"
#include "mem-io.h"
#include "unit.h"

/* Section 15: an area of 4 MiB at host offset 1 MiB, 64 KiB clusters. */
#define AREA       (1ULL << 20)
#define AREA_SIZE  (4ULL << 20)
#define CLUSTER    65536ULL
#define ID         0x0123456789ABCDEFULL

/* The dumps of section 15, word for word. */
static const uint32_t q2jl_words[] = {
  0x00000000, 0x00100000, 0x00000000, 0x00400000,
  0x01234567, 0x89abcdef, 0x00000001, 0xc8de0f3a,
};
static const uint32_t sb1_words[] = {
  0x71636f77, 0x326a5342, 0x00000001, 0x00001000,
  0x01234567, 0x89abcdef, 0x00000000, 0x00000002,
  0x00000000, 0x00400000, 0x00000000, 0x00002000,
  0x00000000, 0x00000001, 0x00000000, 0xb24bcfab,
};
static const uint32_t tx1_words[] = {
  0x514a5458, 0xa0d2b65e, 0x01234567, 0x89abcdef,
  0x00000000, 0x00000001, 0x00000068, 0x00001000,
  0x00000001, 0x00000000, 0x00000000, 0x00080000,
  0x00000000, 0x00000000, 0x00000000, 0x00000000,
  0x00010000, 0x00000028, 0x00000000, 0x00050000,
  0x80000000, 0x00070000, 0x00000000, 0x00020008,
  0x00010001, 0x00010001,
};

/* The first transaction's records and file size (section 15). */
#define L2_ENTRY_AT   0x50000ULL
#define L2_ENTRY      0x8000000000070000ULL
#define REFCOUNTS_AT  0x20008ULL
#define REFCOUNTS     0x0001000100010001ULL
#define MIN_FILE      0x80000ULL

static void
to_bytes (const uint32_t *words, size_t n, uint8_t *out)
{
  for (size_t i = 0; i < n; i++)
    put_be32 (out + 4 * i, words[i]);
}

/* n words at p equal the dump; on a difference, the first word that
 * differs is printed. */
static void
check_dump (const char *what, const uint8_t *p, const uint32_t *words,
            size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (get_be32 (p + 4 * i) != words[i]) {
      FAIL ("%s: byte 0x%02zx is %08x, the spec says %08x", what, 4 * i,
            get_be32 (p + 4 * i), words[i]);
      return;
    }
}

#define CHECK_DUMP(what, p, words) \
  check_dump ((what), (p), (words), sizeof (words) / sizeof (words)[0])

/* Section 7's table, with both implementations. */
UNIT_CASE (crc_vectors)
{
  uint32_t (*const fns[]) (uint32_t, const void *, size_t) = {
    crc32c, crc32c_portable,
  };
  uint8_t zeroes[32] = { 0 }, ones[32], count[32];

  memset (ones, 0xff, sizeof ones);
  for (int i = 0; i < 32; i++)
    count[i] = i;
  for (size_t f = 0; f < 2; f++) {
    CHECK (fns[f] (0, "123456789", 9) == 0xE3069283);
    CHECK (fns[f] (0, zeroes, 32) == 0x8A9136AA);
    CHECK (fns[f] (0, ones, 32) == 0x62A8AB43);
    CHECK (fns[f] (0, count, 32) == 0x46DD794E);
    CHECK (fns[f] (0, zeroes, 28) == 0xF7C9C769);
  }
}

/* The magics as sections 3.1, 4.2 and 5.1 print them. */
UNIT_CASE (magics)
{
  CHECK (QJ_EXT_MAGIC == 0x51324A4C);
  CHECK (memcmp (QJ_SB_MAGIC, "qcow2jSB", 8) == 0);
  CHECK (get_be64 ((const uint8_t *) QJ_SB_MAGIC) == 0x71636F77326A5342ULL);
  CHECK (get_be32 ((const uint8_t *) QJ_TX_MAGIC) == 0x514A5458);
}

/* Q2JL data bytes: encoded as printed, decoded to the example's area; a
 * zeroed extension is not intact (3.2). */
UNIT_CASE (q2jl)
{
  uint8_t spec[32], d[32];
  struct qcow2_journal_ext e = { 0 };

  to_bytes (q2jl_words, 8, spec);
  qj_ext_encode (d, AREA, AREA_SIZE, ID);
  CHECK_DUMP ("Q2JL encoded", d, q2jl_words);
  CHECK (crc32c (0, spec, 28) == 0xc8de0f3a);

  qj_ext_decode (spec, &e);
  CHECK (e.intact);
  CHECK (e.offset == AREA && e.size == AREA_SIZE && e.id == ID);

  memset (d, 0, sizeof d);
  qj_ext_decode (d, &e);
  CHECK (!e.intact);
}

/* A mem_io as large as the example's image: the area ends at 5 MiB. */
static struct mem_io *
new_image (void)
{
  struct mem_io *m = mem_io_new ("spec", AREA + AREA_SIZE);

  REQUIRE (m != NULL && m->data != NULL);
  return m;
}

/* The printed CRCs are those of the printed bytes, as 4.2 and 5.1
 * define them: bytes 0 - 59 of a superblock; bytes 0 to payload_length - 1
 * of a transaction, its CRC field zeroed. */
UNIT_CASE (printed_crcs)
{
  uint8_t sb[64], tx[sizeof tx1_words];

  to_bytes (sb1_words, 16, sb);
  CHECK (crc32c (0, sb, QJ_SB_OFF_CRC) == 0xb24bcfab);
  to_bytes (tx1_words, sizeof tx1_words / 4, tx);
  CHECK (get_be32 (tx + QJ_TX_OFF_PAYLOAD) == sizeof tx);
  put_be32 (tx + QJ_TX_OFF_CRC, 0);
  CHECK (crc32c (0, tx, sizeof tx) == 0xa0d2b65e);
}

/* journal_create writes SB1 as printed (generation 2, head 8192,
 * head_seq 1); the printed SB1 alone opens as that journal. */
UNIT_CASE (superblock)
{
  struct mem_io *m = new_image ();
  struct journal *j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);

  REQUIRE (j != NULL);
  CHECK_DUMP ("SB1 written by journal_create", m->data + AREA + QJ_BLOCK,
              sb1_words);
  journal_free (j);
  hostio_close (&m->io);

  m = new_image ();
  to_bytes (sb1_words, 16, m->data + AREA + QJ_BLOCK);
  j = journal_open (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  REQUIRE (j != NULL);
  CHECK (journal_head_seq (j) == 1);
  CHECK (journal_ring_used (j) == 0);
  journal_free (j);
  hostio_close (&m->io);
}

/* The first transaction, encoded by the journal as printed; the next one
 * at area offset 12288 with seq 2. */
UNIT_CASE (transaction_encoded)
{
  struct mem_io *m = new_image ();
  struct journal *j = journal_create (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  const uint8_t *tx = m->data + AREA + QJ_RING_START;
  uint64_t seq;

  REQUIRE (j != NULL);
  CHECK (journal_add_set64 (j, L2_ENTRY_AT, L2_ENTRY) == 0);
  CHECK (journal_add_set64 (j, REFCOUNTS_AT, REFCOUNTS) == 0);
  journal_need_file_size (j, MIN_FILE);
  CHECK (journal_commit (j, &seq) == 0);
  CHECK (seq == 1);
  CHECK_DUMP ("first transaction", tx, tx1_words);

  CHECK (journal_add_set64 (j, L2_ENTRY_AT, L2_ENTRY) == 0);
  CHECK (journal_commit (j, &seq) == 0);
  CHECK (seq == 2);
  CHECK (memcmp (tx + QJ_BLOCK, QJ_TX_MAGIC, 4) == 0);
  CHECK (get_be64 (tx + QJ_BLOCK + QJ_TX_OFF_SEQ) == 2);
  CHECK (QJ_RING_START + QJ_BLOCK == 12288);
  journal_free (j);
  hostio_close (&m->io);
}

/* The printed SB1 and transaction, replayed: the two words stored, the
 * file at least min_file_size, the head at seq 2. */
UNIT_CASE (transaction_replayed)
{
  struct mem_io *m = new_image ();
  struct journal_replay_stats st;
  struct journal *j;

  to_bytes (sb1_words, 16, m->data + AREA + QJ_BLOCK);
  to_bytes (tx1_words, sizeof tx1_words / 4, m->data + AREA + QJ_RING_START);
  j = journal_open (&m->io, AREA, AREA_SIZE, ID, CLUSTER);
  REQUIRE (j != NULL);
  CHECK (journal_replay (j, &st) == 0);
  CHECK (st.transactions == 1 && st.records == 1);
  CHECK (st.first_seq == 1 && st.last_seq == 1);
  CHECK (st.min_file_size == MIN_FILE);
  CHECK (m->size >= MIN_FILE);
  CHECK (get_be64 (m->data + L2_ENTRY_AT) == L2_ENTRY);
  CHECK (get_be64 (m->data + REFCOUNTS_AT) == REFCOUNTS);
  CHECK (journal_head_seq (j) == 2);
  journal_free (j);
  hostio_close (&m->io);
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (crc_vectors),
  UNIT_ENTRY (magics),
  UNIT_ENTRY (q2jl),
  UNIT_ENTRY (printed_crcs),
  UNIT_ENTRY (superblock),
  UNIT_ENTRY (transaction_encoded),
  UNIT_ENTRY (transaction_replayed),
};

UNIT_MAIN (cases)
