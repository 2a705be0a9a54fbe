/* qcow2j lib: delayed copy-on-write, the writes.
 *
 * owed.c keeps which sectors of new clusters are still owed their old
 * content (docs/journal-format.md 8.6).  Here they are paid: by a
 * client's write into them (for free: the client's bytes replace them;
 * the rest of a sector it writes in part comes from the source, so that
 * the table stays per sector), or by a fill, which copies what is still
 * owed from the source into the new cluster:
 *
 * - before every seal (D1).  The journal calls pre_seal (commit.c) once
 *   no change is half made and while new ones wait, so no change can
 *   add owed sectors between the fill and the seal, and every path that
 *   seals (a client flush, the checkpointer's commit, a large open
 *   transaction, a full ring, close) fills first.  The seal that follows
 *   finds the table empty.  The fill's writes are data writes of the
 *   batch: the change that mapped the cluster asked for the two-flush
 *   commit (D2, write.c), so F1 makes them durable before any byte of
 *   the transaction is written.
 * - early, when the table is full, before a write allocates (write.c):
 *   the oldest owed clusters are filled, so that the commit's fill stays
 *   bounded.
 *
 * Each of these holds the cluster's claim (owed.c, invariant 4) over
 * its read of the source and its write of the new cluster: a fill never
 * writes the source's bytes over a client's write.  A fill that fails
 * stops writes (state.c): the mapping it was to complete must never be
 * sealed.  A client's write that fails leaves its sectors owed, as they
 * were: a later fill rewrites them.
 */
#include <config.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "log.h"
#include "minmax.h"
#include "overlap.h"
#include "owed.h"
#include "owed-fill.h"
#include "read.h"
#include "state.h"

int
qcow2_owed_write (struct qcow2_image *img, const void *buf, uint64_t count,
                  uint64_t offset, uint64_t host)
{
  const uint64_t cs = img->hdr.cluster_size;
  const uint64_t cluster = ROUND_DOWN (offset, cs);
  const uint64_t a = offset - cluster, b = a + count;
  CLEANUP_FREE uint8_t *merged = NULL;
  struct owed_view v;
  uint64_t from, to, paid_from;

  if (!qcow2_owed_any (img) ||
      !qcow2_owed_claim (img, cluster, host - a, &v))
    return 0;
  /* Sectors written in part: whole, the rest from the source, where
   * they are owed. */
  from = a % OWED_SECTOR && qcow2_owed_sector (&v, a / OWED_SECTOR)
    ? ROUND_DOWN (a, OWED_SECTOR) : a;
  to = b % OWED_SECTOR && qcow2_owed_sector (&v, b / OWED_SECTOR)
    ? ROUND_UP (b, OWED_SECTOR) : b;
  if (from < a || to > b) {
    merged = malloc (to - from);
    if (merged == NULL) {
      qerror ("malloc: %m");
      goto fail;
    }
    if ((from < a &&
         qcow2_read_source (img, v.source, merged, OWED_SECTOR,
                            cluster + from) == -1) ||
        (to > b &&
         qcow2_read_source (img, v.source, merged + (to - from - OWED_SECTOR),
                            OWED_SECTOR, cluster + to - OWED_SECTOR) == -1))
      goto fail;
    memcpy (merged + (a - from), buf, count);
    buf = merged;
  }
  if (qcow2_write_guest_data (img, buf, to - from, v.host + from,
                              "a copy-on-write") == -1)
    goto fail;
  /* Only sectors written whole are paid. */
  paid_from = ROUND_UP (from, OWED_SECTOR);
  qcow2_owed_done (img, &v, paid_from,
                   MAX (ROUND_DOWN (to, OWED_SECTOR), paid_from));
  return 1;

 fail:
  qcow2_owed_done (img, &v, 0, 0);
  return -1;
}

/* Copy what the claimed cluster still owes from its source, and end the
 * claim.  A failure stops writes. */
static int
fill (struct qcow2_image *img, const struct owed_view *v)
{
  const uint64_t cs = img->hdr.cluster_size;
  const uint64_t sectors = cs / OWED_SECTOR;
  CLEANUP_FREE uint8_t *buf = malloc (cs);

  if (buf == NULL) {
    qerror ("malloc: %m");
    goto fail;
  }
  /* The source whole (a compressed one is inflated whole anyway). */
  if (qcow2_read_source (img, v->source, buf, cs, v->guest) == -1)
    goto fail;
  for (uint64_t s = 0, e; s < sectors; s = e) {
    for (e = s; e < sectors && qcow2_owed_sector (v, e); e++)
      ;
    if (e > s &&
        qcow2_write_guest_data (img, buf + s * OWED_SECTOR,
                                (e - s) * OWED_SECTOR,
                                v->host + s * OWED_SECTOR,
                                "a copy-on-write") == -1)
      goto fail;
    e += e == s;
  }
  qcow2_owed_done (img, v, 0, cs);
  return 0;

 fail:
  qcow2_owed_done (img, v, 0, 0);
  return qcow2_stop_writes (img, "a delayed copy-on-write failed (committed "
                            "data is safe)");
}

int
qcow2_owed_fill_all (struct qcow2_image *img)
{
  struct owed_view v;

  while (qcow2_owed_claim_next (img, true, &v))
    if (fill (img, &v) == -1)
      return -1;
  return 0;
}

int
qcow2_owed_fill_early (struct qcow2_image *img)
{
  struct owed_view v;

  ASSERT_META_UNLOCKED (img);
  while (qcow2_owed_claim_next (img, false, &v))
    if (fill (img, &v) == -1)
      return -1;
  return 0;
}
