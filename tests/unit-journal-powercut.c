/* The journal under power cuts.
 *
 * Each trial runs a random workload of transactions (SET64, WRITE and ZERO
 * records into two metadata regions, one of them past the initial end of
 * the file), commits, and checkpoints that write the committed state in
 * place, all on the power-cut simulator.  Then, for sampled moments of the
 * run and random subsets of the writes in flight at each, it builds the
 * file a power cut could leave, opens and replays the journal, and checks:
 *
 * - the regions hold exactly the state after k committed transactions,
 *   for some k between the number acknowledged before the cut and the
 *   number whose commit had started (so every acknowledged transaction is
 *   applied in full, and none is applied partly);
 * - the file is long enough for every transaction applied (rule R5), and
 *   nothing outside the regions and the journal changed;
 * - replaying again gives the same bytes;
 * - a power cut during the replay, then another replay, gives the same
 *   regions too.
 *
 * QCOW2J_SLOW=1 runs ten times as many trials.  QCOW2J_SEED=N repeats one.
 */
#include <config.h>

#include <inttypes.h>

#include "journal.h"
#include "journal-format.h"
#include "log.h"
#include "powercut.h"
#include "unit.h"


#define CS 4096ULL                      /* "cluster size" of the file */
#define R1 (64 * 1024ULL)               /* metadata region 1 */
#define R1_LEN (64 * 1024ULL)
#define AREA (128 * 1024ULL)            /* the journal area */
#define AREA_SIZE (1024 * 1024ULL)
#define R2 (AREA + AREA_SIZE)           /* region 2: past the initial EOF */
#define R2_LEN (64 * 1024ULL)
#define INITIAL_SIZE R2
#define MODEL_LEN (R1_LEN + R2_LEN)
#define DIRTY_WORD 72                   /* what the pre-commit hook writes */
#define MAX_TX 600

struct trial {
  uint64_t rng;
  struct powercut *pc;
  struct journal *j;
  uint64_t id;
  uint8_t model[MODEL_LEN];             /* with uncommitted records */
  uint64_t model_need;                  /* file size the open records need */
  uint8_t *snap[MAX_TX + 1];            /* state after k committed txs */
  uint64_t need[MAX_TX + 1];            /* file size they need */
  uint64_t ev_before[MAX_TX + 1], ev_after[MAX_TX + 1];
  uint64_t seq[MAX_TX + 1];             /* journal seq of each */
  unsigned ntx;
  unsigned checkpointed;                /* k of the last checkpoint */
  unsigned checkpoint_pct;              /* how often the workload does one */
  bool dirty_written;
};

static uint64_t states, replay_states, ring_full;

static uint64_t
model_index (uint64_t off)
{
  return off < AREA ? off - R1 : R1_LEN + (off - R2);
}

/* A random region offset with room for len bytes, aligned to align. */
static uint64_t
random_target (struct trial *t, uint64_t len, uint64_t align)
{
  uint64_t base = pc_rand (&t->rng) & 1 ? R1 : R2;
  uint64_t off = pc_rand (&t->rng) % (R1_LEN - len + 1);

  return base + off / align * align;
}

static void
note_need (struct trial *t, uint64_t end)
{
  end = (end + 511) / 512 * 512;
  if (end > t->model_need)
    t->model_need = end;
}

static void
add_records (struct trial *t)
{
  unsigned n = 1 + pc_rand (&t->rng) % 12;

  for (unsigned i = 0; i < n; i++) {
    uint64_t kind = pc_rand (&t->rng) % 100, off, len;

    if (kind < 70) {
      uint64_t v = pc_rand (&t->rng);
      off = random_target (t, 8, 8);
      CHECK (journal_add_set64 (t->j, off, v) == 0);
      for (int b = 0; b < 8; b++)
        t->model[model_index (off) + b] = v >> (56 - 8 * b);
      note_need (t, off + 8);
    }
    else if (kind < 85) {
      /* Mostly small writes, sometimes large ones that make transactions
       * span several blocks and fill the ring sooner. */
      uint8_t buf[12000];
      len = 1 + pc_rand (&t->rng) % (kind < 82 ? 300 : sizeof buf);
      off = random_target (t, len, 1);
      for (uint64_t b = 0; b < len; b++)
        buf[b] = pc_rand (&t->rng);
      CHECK (journal_add_write (t->j, off, buf, len) == 0);
      memcpy (&t->model[model_index (off)], buf, len);
      note_need (t, off + len);
    }
    else {
      len = 512 * (1 + pc_rand (&t->rng) % 8);
      off = random_target (t, len, 512);
      CHECK (journal_add_zero (t->j, off, len) == 0);
      memset (&t->model[model_index (off)], 0, len);
      note_need (t, off + len);
    }
  }
  if (pc_rand (&t->rng) % 8 == 0)
    journal_need_ordering (t->j);
}

/* The image's pre-commit: mark "dirty" once, asking for a flush first. */
static int
pre_commit (void *opaque)
{
  struct trial *t = opaque;
  uint8_t word[8] = { 0x10, 0, 0, 0, 0, 0, 0, 0 };

  if (t->dirty_written)
    return 0;
  if (hostio_pwrite (powercut_io (t->pc), word, 8, DIRTY_WORD) == -1)
    return -1;
  t->dirty_written = true;
  return 1;
}

/* Write a committed state in place (in random 4 KiB pieces, as a
 * checkpoint writing cache slices would), flush, move the head.  Usually
 * the last committed state; sometimes an older one not yet checkpointed,
 * so that the head stops short of the tail.  When full, the last. */
static void
checkpoint (struct trial *t, bool full)
{
  struct hostio *io = powercut_io (t->pc);
  unsigned k = t->ntx;
  const uint8_t *s;
  unsigned order[(MODEL_LEN) / 4096];
  unsigned n = MODEL_LEN / 4096;

  if (!full && k > t->checkpointed && pc_rand (&t->rng) % 2)
    k = t->checkpointed + pc_rand (&t->rng) % (k - t->checkpointed + 1);
  s = t->snap[k];
  for (unsigned i = 0; i < n; i++)
    order[i] = i;
  for (unsigned i = n - 1; i > 0; i--) {
    unsigned r = pc_rand (&t->rng) % (i + 1), tmp = order[i];
    order[i] = order[r];
    order[r] = tmp;
  }
  for (unsigned i = 0; i < n; i++) {
    uint64_t m = order[i] * 4096ULL;
    uint64_t off = m < R1_LEN ? R1 + m : R2 + (m - R1_LEN);
    CHECK (hostio_pwrite (io, s + m, 4096, off) == 0);
  }
  CHECK (hostio_flush (io) == 0);
  if (k > 0)
    CHECK (journal_checkpointed (t->j, t->seq[k]) == 0);
  t->checkpointed = k;
}

static void
commit (struct trial *t)
{
  uint64_t before, seq;
  int r;

  if (t->ntx == MAX_TX)
    return;
  for (;;) {
    before = powercut_moment (t->pc);
    r = journal_commit (t->j, &seq);
    if (r == 0 || errno != EAGAIN)
      break;
    ring_full++;
    checkpoint (t, false);              /* ring full: free some of it */
  }
  CHECK (r == 0);
  if (memcmp (t->model, t->snap[t->ntx], MODEL_LEN) == 0 &&
      t->model_need <= t->need[t->ntx])
    return;                             /* nothing new was committed */
  t->ntx++;
  t->snap[t->ntx] = malloc (MODEL_LEN);
  memcpy (t->snap[t->ntx], t->model, MODEL_LEN);
  t->need[t->ntx] = t->model_need;
  t->ev_before[t->ntx] = before;
  t->ev_after[t->ntx] = powercut_moment (t->pc);
  t->seq[t->ntx] = seq;
}

static void
run_workload (struct trial *t, unsigned ops)
{
  uint8_t *zero = calloc (1, INITIAL_SIZE);
  struct powercut *setup = powercut_new ("setup", zero, INITIAL_SIZE);
  struct journal *j;
  uint64_t size;
  const uint8_t *data;

  t->id = pc_rand (&t->rng) | 1;
  /* The journal is created before the recording starts: a power cut
   * before it is durable is the open sequence's business, not replay's. */
  j = journal_create (powercut_io (setup), AREA, AREA_SIZE, t->id, CS);
  REQUIRE (j != NULL);
  journal_free (j);
  data = powercut_data (setup, &size);
  t->pc = powercut_new ("image", data, size);
  powercut_free (setup);
  free (zero);

  t->j = journal_open (powercut_io (t->pc), AREA, AREA_SIZE, t->id, CS);
  REQUIRE (t->j != NULL);
  {
    const struct journal_hooks hooks = { .pre_commit = pre_commit };
    journal_set_hooks (t->j, &hooks, t);
  }
  t->snap[0] = calloc (1, MODEL_LEN);
  t->need[0] = 0;

  for (unsigned i = 0; i < ops && t->ntx < MAX_TX; i++) {
    uint64_t r = pc_rand (&t->rng) % 100;

    if (r < 60) {
      add_records (t);
      commit (t);
    }
    else if (r < 75)
      add_records (t);                  /* grouped with the next commit */
    else if (r < 75 + t->checkpoint_pct)
      checkpoint (t, false);
    else
      commit (t);
  }
  add_records (t);                      /* never committed */
}

/* Check a replayed file against the model; returns the k matched or -1. */
static int
check_replayed (struct trial *t, struct hostio *io, unsigned lo, unsigned hi,
                uint8_t *region)
{
  int64_t size = hostio_size (io);
  uint8_t *buf = malloc (R2 + R2_LEN);
  int found = -1;

  CHECK (hostio_pread (io, buf, R2 + R2_LEN, 0) == 0);
  memcpy (region, buf + R1, R1_LEN);
  memcpy (region + R1_LEN, buf + R2, R2_LEN);
  for (unsigned k = hi + 1; k-- > lo; )
    if (memcmp (region, t->snap[k], MODEL_LEN) == 0 &&
        (uint64_t) size >= t->need[k]) {
      found = k;
      break;
    }
  /* Nothing else changed: below R1 only the dirty word, between R1 and
   * the journal nothing. */
  for (uint64_t i = 0; i < R1; i++)
    if (buf[i] != 0 && !(i >= DIRTY_WORD && i < DIRTY_WORD + 8))
      found = -2;
  for (uint64_t i = R1 + R1_LEN; i < AREA; i++)
    if (buf[i] != 0)
      found = -3;
  free (buf);
  return found;
}

static void
check_moment (struct trial *t, uint64_t moment)
{
  unsigned acked = 0, issued = 0;
  uint8_t *crash, *first, region[MODEL_LEN], region2[MODEL_LEN];
  uint64_t crash_size, first_size, size2;
  struct powercut *pc;
  struct journal *j;
  struct journal_replay_stats stats;
  int k, k2;

  for (unsigned i = 1; i <= t->ntx; i++) {
    if (t->ev_after[i] <= moment)
      acked = i;
    if (t->ev_before[i] < moment)
      issued = i;
  }

  powercut_crash_state (t->pc, moment, &t->rng, &crash, &crash_size);
  pc = powercut_new ("crash", crash, crash_size);
  free (crash);
  j = journal_open (powercut_io (pc), AREA, AREA_SIZE, t->id, CS);
  REQUIRE (j != NULL);
  CHECK (journal_replay (j, &stats) == 0);
  journal_free (j);
  states++;

  k = check_replayed (t, powercut_io (pc), acked, issued, region);
  if (k < 0) {
    FAIL ("moment %" PRIu64 ": replay gave no state in [%u, %u] (code %d)",
          moment, acked, issued, k);
    powercut_free (pc);
    return;
  }

  /* Replaying again changes nothing. */
  {
    const uint8_t *d = powercut_data (pc, &first_size);
    first = malloc (first_size);
    memcpy (first, d, first_size);
  }
  j = journal_open (powercut_io (pc), AREA, AREA_SIZE, t->id, CS);
  REQUIRE (j != NULL);
  CHECK (journal_replay (j, &stats) == 0);
  journal_free (j);
  {
    const uint8_t *d = powercut_data (pc, &size2);
    if (size2 != first_size || memcmp (d, first, size2) != 0)
      FAIL ("moment %" PRIu64 ": second replay changed the file", moment);
  }
  free (first);

  /* A power cut during the first replay, then a replay: same state. */
  if (pc_rand (&t->rng) % 2 == 0) {
    uint64_t m2 = pc_rand (&t->rng) % (powercut_moment (pc) + 1);
    uint8_t *crash2;
    uint64_t crash2_size;
    struct powercut *pc2;

    powercut_crash_state (pc, m2, &t->rng, &crash2, &crash2_size);
    pc2 = powercut_new ("crash2", crash2, crash2_size);
    free (crash2);
    j = journal_open (powercut_io (pc2), AREA, AREA_SIZE, t->id, CS);
    REQUIRE (j != NULL);
    CHECK (journal_replay (j, &stats) == 0);
    journal_free (j);
    replay_states++;
    k2 = check_replayed (t, powercut_io (pc2), k, k, region2);
    if (k2 != k)
      FAIL ("moment %" PRIu64 ", replay cut at %" PRIu64 ": replaying "
            "again gave state %d, not %d", moment, m2, k2, k);
    powercut_free (pc2);
  }
  powercut_free (pc);
}

static void
run_trial (uint64_t seed, unsigned ops, unsigned samples)
{
  struct trial *t = calloc (1, sizeof *t);
  uint64_t moments;
  unsigned before = unit_failed ();

  t->rng = seed;
  /* Rare checkpoints fill the ring: commits then wait for space. */
  t->checkpoint_pct = seed % 3 == 0 ? 0 : 15;
  run_workload (t, t->checkpoint_pct == 0 ? 3 * ops : ops);
  moments = powercut_moment (t->pc);
  /* Moments in increasing order (cheap for the simulator): evenly spaced
   * ones, and every moment just before a flush completes, when the most
   * writes are in flight. */
  for (uint64_t m = 0, next = 0; m <= moments; m++)
    if (m == next || powercut_is_flush (t->pc, m)) {
      check_moment (t, m);
      if (m == next)
        next += 1 + moments / samples;
    }
  check_moment (t, moments);
  if (unit_failed () > before)
    fprintf (stderr, "trial with seed %" PRIu64 " failed (QCOW2J_SEED=%"
             PRIu64 " repeats it)\n", seed, seed);

  journal_free (t->j);
  powercut_free (t->pc);
  for (unsigned i = 0; i <= t->ntx; i++)
    free (t->snap[i]);
  free (t);
}

UNIT_CASE (trials)
{
  const char *slow = getenv ("QCOW2J_SLOW");
  const char *seed_env = getenv ("QCOW2J_SEED");
  unsigned trials = slow && *slow == '1' ? 200 : unit_quick () ? 8 : 20;

  if (seed_env) {
    run_trial (strtoull (seed_env, NULL, 0), 300, 600);
    trials = 1;
  }
  else
    for (unsigned i = 0; i < trials; i++)
      run_trial (1000 + i, 60 + i * 15, 200);
  printf ("unit-journal-powercut: %u trials, %" PRIu64 " crash states, %"
          PRIu64 " crashes during replay, %" PRIu64 " full rings, %u "
          "failures\n", trials, states, replay_states, ring_full,
          unit_failed ());
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (trials),
};

UNIT_MAIN (cases)
