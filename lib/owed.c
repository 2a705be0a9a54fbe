/* qcow2j lib: the sectors of new clusters still owed their old content.
 *
 * Delayed copy-on-write (docs/journal-format.md 8.6): a write smaller
 * than a cluster into a cluster whose content comes from elsewhere (the
 * backing chain, a compressed cluster, a cluster shared with a snapshot:
 * the source) maps a new host cluster at once but writes only the
 * client's sectors into it.  This table remembers, per such cluster, the
 * source (the L2 entry the change replaced) and a bitmap of the 512-byte
 * sectors the new cluster does not hold yet.  Reads of those sectors go
 * to the source (read.c), writes fill them (owed-fill.c), and the commit
 * copies what is still owed before it seals (owed-fill.c).  This file is
 * only the table; it does no I/O.
 *
 * Invariants:
 *
 * 1. An entry is added inside the change that maps its new cluster,
 *    before the mapping is published (qcow2_l2_set).  Whoever finds that
 *    mapping (a read, a write in place) therefore finds the entry, until
 *    nothing of the cluster is owed any more.
 *
 * 2. A sector's bit is cleared only after the host write that gives it
 *    the content the mapping promises (the client's bytes, or the
 *    source's) has completed.  So a reader that takes a copy of the bits
 *    first (qcow2_owed_peek) and then reads the new cluster never reads a
 *    sector the host does not hold yet: a clear bit stays clear, and a
 *    set bit sends it to the source.
 *
 * 3. Every entry maps a cluster in the open transaction.  Entries are
 *    created only inside change brackets, and the committer empties the
 *    table after changes stopped and before it seals (owed-fill.c, the
 *    journal's pre_seal hook): no transaction is sealed while it maps an
 *    owed sector (D1).  A compressed or shared source is freed by the
 *    change that creates the entry, so it is freed in the open
 *    transaction too, and cannot be reused before that transaction is
 *    checkpointed (D4).
 *
 * 4. One claim at a time per entry, held over the host I/O of one write
 *    or one fill, with no lock held.  Only the claim holder writes the
 *    owed sectors of a new cluster, so a fill never writes the source's
 *    bytes over a client's write, nor a write between a fill's read and
 *    its write.  A claim holder takes no lock but owed_lock and those a
 *    read takes, and never waits for a change or a commit; so meta_lock holders (qcow2_owed_drop) and
 *    the committer (which holds off changes) may wait for claims.
 *
 * 5. A zero or trim of the whole cluster (D5) drops its entry: nothing is
 *    owed any more, and it is never filled.  But a read that found the
 *    old mapping before the change may still be about to look here:
 *    the entry stays, marked dropped, and keeps sending such reads to
 *    the source, until a checkpoint has waited for every read begun
 *    before the drop (grace.c; qcow2_owed_forget_begin, _end).  Writes
 *    and fills ignore dropped entries (their cluster is mapped no more).
 *
 * 6. At most owed_max entries, reserved slots included: past that, a new
 *    cluster is copied at once, and writers fill the oldest entries early
 *    (owed-fill.c).  Memory is one bitmap per slot, allocated once.
 *
 * Locking: owed_lock guards the table; it is a leaf (image-internal.h).
 */
#include <config.h>

#include <assert.h>
#include <string.h>

#include "cleanup.h"
#include "minmax.h"
#include "owed.h"

/* At most this many clusters owed, and this many bytes of them. */
#define OWED_MAX_CLUSTERS 64
#define OWED_MAX_BYTES (16ULL << 20)

struct owed_cluster {
  bool used;
  bool busy;                    /* claimed */
  bool filling;                 /* claimed by qcow2_owed_claim_next */
  bool dropped;                 /* D5: owes nothing (invariant 5) */
  bool forgettable;             /* dropped before a checkpoint's wait */
  uint64_t guest, host, source;
  uint64_t age;                 /* order of creation */
  uint64_t owed;                /* sectors owed */
};

void
qcow2_owed_init (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  const uint64_t by_bytes = MAX (OWED_MAX_BYTES / cs, (uint64_t) 1);

  img->owed_max = MIN ((uint64_t) OWED_MAX_CLUSTERS, by_bytes);
  img->owed_words = (cs / OWED_SECTOR + 63) / 64;
}

void
qcow2_owed_destroy (struct qcow2_image *img)
{
  free (img->owed);
  free (img->owed_bits);
}

/* Under owed_lock: the slot of the guest cluster mapped at host (any
 * host, if host is UINT64_MAX) that owes, or NULL; or if dropped_too and
 * there is none, one dropped (invariant 5). */
static struct owed_cluster *
find (struct qcow2_image *img, uint64_t guest, uint64_t host,
      bool dropped_too)
{
  struct owed_cluster *dropped = NULL;

  for (unsigned i = 0; img->owed && i < img->owed_max; i++) {
    struct owed_cluster *c = &img->owed[i];

    if (!c->used || c->guest != guest ||
        (host != UINT64_MAX && c->host != host))
      continue;
    if (!c->dropped)
      return c;
    dropped = c;
  }
  return dropped_too ? dropped : NULL;
}

static uint64_t *
bits_of (struct qcow2_image *img, const struct owed_cluster *c)
{
  return img->owed_bits + (c - img->owed) * img->owed_words;
}

static void
view (struct qcow2_image *img, const struct owed_cluster *c,
      struct owed_view *v)
{
  v->guest = c->guest;
  v->host = c->host;
  v->source = c->source;
  memcpy (v->bits, bits_of (img, c), img->owed_words * sizeof v->bits[0]);
}

/* Under owed_lock: a slot stops being used. */
static void
release_slot (struct qcow2_image *img, struct owed_cluster *c)
{
  c->used = false;
  __atomic_sub_fetch (&img->nr_owed, 1, __ATOMIC_RELEASE);
}

bool
qcow2_owed_reserve (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);

  ASSERT_META_LOCKED (img);
  if (img->owed == NULL) {
    img->owed = calloc (img->owed_max, sizeof *img->owed);
    img->owed_bits = calloc (img->owed_max * img->owed_words,
                             sizeof *img->owed_bits);
    if (img->owed == NULL || img->owed_bits == NULL) {
      /* Only delayed copy-on-write is lost: copy at once. */
      free (img->owed);
      free (img->owed_bits);
      img->owed = NULL;
      img->owed_bits = NULL;
      return false;
    }
  }
  if (img->nr_owed + img->owed_reserved >= img->owed_max)
    return false;
  img->owed_reserved++;
  return true;
}

void
qcow2_owed_unreserve (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);

  assert (img->owed_reserved > 0);
  img->owed_reserved--;
}

void
qcow2_owed_add (struct qcow2_image *img, uint64_t guest, uint64_t host,
                uint64_t source, uint64_t from, uint64_t to)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);
  const uint64_t sectors = img->hdr.cluster_size / OWED_SECTOR;
  struct owed_cluster *c = NULL;
  uint64_t *bits;

  ASSERT_META_LOCKED (img);
  assert (img->owed_reserved > 0 &&
          find (img, guest, UINT64_MAX, false) == NULL);
  assert (from % OWED_SECTOR == 0 && to % OWED_SECTOR == 0 && from < to &&
          to <= img->hdr.cluster_size);
  img->owed_reserved--;
  for (unsigned i = 0; i < img->owed_max && c == NULL; i++)
    if (!img->owed[i].used)
      c = &img->owed[i];
  assert (c != NULL);           /* the reservation kept a slot */
  *c = (struct owed_cluster) {
    .used = true, .guest = guest, .host = host, .source = source,
    .age = img->owed_age++,
    .owed = sectors - (to - from) / OWED_SECTOR,
  };
  bits = bits_of (img, c);
  memset (bits, 0, img->owed_words * sizeof *bits);
  for (uint64_t s = 0; s < sectors; s++)
    if (s < from / OWED_SECTOR || s >= to / OWED_SECTOR)
      bits[s / 64] |= 1ULL << (s % 64);
  /* A write of the whole cluster owes nothing: the caller does not ask. */
  assert (c->owed > 0);
  img->stat_owed_delayed++;
  __atomic_add_fetch (&img->nr_owed, 1, __ATOMIC_RELEASE);
}

bool
qcow2_owed_peek (struct qcow2_image *img, uint64_t guest, uint64_t host,
                 struct owed_view *v)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);
  struct owed_cluster *c = find (img, guest, host, true);

  if (c == NULL)
    return false;
  view (img, c, v);
  return true;
}

bool
qcow2_owed_claim (struct qcow2_image *img, uint64_t guest, uint64_t host,
                  struct owed_view *v)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);
  struct owed_cluster *c;

  /* The slot may be filled and reused meanwhile: look again each time. */
  while ((c = find (img, guest, host, false)) != NULL && c->busy)
    pthread_cond_wait (&img->owed_idle, &img->owed_lock);
  if (c == NULL)
    return false;
  c->busy = true;
  view (img, c, v);
  return true;
}

bool
qcow2_owed_claim_next (struct qcow2_image *img, bool all,
                       struct owed_view *v)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);

  for (;;) {
    struct owed_cluster *pick = NULL;
    bool any = false;

    if (!all && img->nr_owed + img->owed_reserved < img->owed_max)
      return false;
    for (unsigned i = 0; img->owed && i < img->owed_max; i++) {
      struct owed_cluster *c = &img->owed[i];

      if (!c->used || c->dropped)
        continue;
      any = true;
      if (!c->busy && (pick == NULL || c->age < pick->age))
        pick = c;
    }
    if (pick != NULL) {
      pick->busy = pick->filling = true;
      view (img, pick, v);
      return true;
    }
    /* Full of reservations only: the changes holding them make room. */
    if (!any)
      return false;
    pthread_cond_wait (&img->owed_idle, &img->owed_lock);
  }
}

void
qcow2_owed_done (struct qcow2_image *img, const struct owed_view *v,
                 uint64_t from, uint64_t to)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);
  struct owed_cluster *c = find (img, v->guest, v->host, false);
  uint64_t *bits;

  assert (c != NULL && c->busy);
  assert (from % OWED_SECTOR == 0 && to % OWED_SECTOR == 0 &&
          from <= to && to <= img->hdr.cluster_size);
  bits = bits_of (img, c);
  for (uint64_t s = from / OWED_SECTOR; s < to / OWED_SECTOR; s++)
    if (bits[s / 64] >> (s % 64) & 1) {
      bits[s / 64] &= ~(1ULL << (s % 64));
      c->owed--;
    }
  if (c->filling && from < to)
    img->stat_owed_filled++;
  c->busy = c->filling = false;
  if (c->owed == 0)
    release_slot (img, c);
  pthread_cond_broadcast (&img->owed_idle);
}

void
qcow2_owed_drop (struct qcow2_image *img, uint64_t guest)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);
  struct owed_cluster *c;

  ASSERT_META_LOCKED (img);
  while ((c = find (img, guest, UINT64_MAX, false)) != NULL && c->busy)
    pthread_cond_wait (&img->owed_idle, &img->owed_lock);
  if (c != NULL)
    c->dropped = true;
}

bool
qcow2_owed_forget_begin (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);
  bool any = false;

  for (unsigned i = 0; img->owed && i < img->owed_max; i++) {
    struct owed_cluster *c = &img->owed[i];

    if (c->used && c->dropped) {
      c->forgettable = true;
      any = true;
    }
  }
  return any;
}

void
qcow2_owed_forget_end (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->owed_lock);

  for (unsigned i = 0; img->owed && i < img->owed_max; i++) {
    struct owed_cluster *c = &img->owed[i];

    if (c->used && c->forgettable)
      release_slot (img, c);
  }
}
