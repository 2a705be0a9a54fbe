/* qcow2j tests: the power-cut simulator (see powercut.h). */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "powercut.h"

#define SECTOR 512

enum event_kind { EV_WRITE, EV_TRUNCATE, EV_PUNCH, EV_FLUSH };

struct event {
  enum event_kind kind;
  uint64_t offset, len;         /* truncate: len is the new size */
  uint8_t *data;                /* EV_WRITE */
};

/* Every call takes the lock: the image's threads (writers, committers,
 * the checkpoint thread) call at once, and each event is then atomic, in
 * one total order.  A flush covers exactly the writes recorded before it:
 * what a flush guarantees for writes that completed before it was called. */
struct powercut {
  struct hostio io;
  pthread_mutex_t lock;
  uint8_t *cur;                 /* current contents */
  uint64_t cur_size, cur_cap;
  uint8_t *initial;
  uint64_t initial_size;
  struct event *ev;
  uint64_t nev, cap_ev;

  /* Crash-state cache: the durable file after the first durable_upto
   * events (which end just after a flush, or at 0). */
  uint8_t *durable;
  uint64_t durable_size, durable_cap, durable_upto;

  /* Fault injection. */
  char fail_kind;
  uint64_t fail_countdown;
  int fail_errno;
};

static void
reserve (uint8_t **buf, uint64_t *cap, uint64_t size)
{
  if (size <= *cap)
    return;
  *cap = size * 2 > size + (1 << 20) ? size * 2 : size + (1 << 20);
  *buf = realloc (*buf, *cap);
  assert (*buf != NULL);
}

/* Apply a write/truncate/punch to a buffer. */
static void
apply (uint8_t **buf, uint64_t *size, uint64_t *cap, enum event_kind kind,
       uint64_t offset, uint64_t len, const uint8_t *data)
{
  switch (kind) {
  case EV_WRITE:
    if (offset + len > *size) {
      reserve (buf, cap, offset + len);
      memset (*buf + *size, 0, offset + len - *size);
      *size = offset + len;
    }
    memcpy (*buf + offset, data, len);
    break;
  case EV_TRUNCATE:
    if (len > *size) {
      reserve (buf, cap, len);
      memset (*buf + *size, 0, len - *size);
    }
    *size = len;
    break;
  case EV_PUNCH:
    if (offset < *size)
      memset (*buf + offset, 0,
              (offset + len > *size ? *size : offset + len) - offset);
    break;
  case EV_FLUSH:
    break;
  }
}

static void
record (struct powercut *pc, enum event_kind kind, uint64_t offset,
        uint64_t len, const void *data)
{
  struct event *e;

  if (pc->nev == pc->cap_ev) {
    pc->cap_ev = pc->cap_ev ? pc->cap_ev * 2 : 1024;
    pc->ev = realloc (pc->ev, pc->cap_ev * sizeof *pc->ev);
    assert (pc->ev != NULL);
  }
  e = &pc->ev[pc->nev++];
  e->kind = kind;
  e->offset = offset;
  e->len = len;
  e->data = NULL;
  if (kind == EV_WRITE) {
    e->data = malloc (len ? len : 1);
    assert (e->data != NULL);
    memcpy (e->data, data, len);
  }
}

static int
injected (struct powercut *pc, char kind)
{
  if (pc->fail_kind != kind)
    return 0;
  if (pc->fail_countdown-- > 0)
    return 0;
  pc->fail_kind = 0;
  errno = pc->fail_errno;
  return 1;
}

static int
pc_pread (struct hostio *io, void *buf, size_t count, uint64_t offset)
{
  struct powercut *pc = (struct powercut *) io;
  uint64_t avail;

  pthread_mutex_lock (&pc->lock);
  avail = offset < pc->cur_size ? pc->cur_size - offset : 0;
  if (avail > count)
    avail = count;
  memcpy (buf, pc->cur + offset, avail);
  memset ((uint8_t *) buf + avail, 0, count - avail);
  pthread_mutex_unlock (&pc->lock);
  return 0;
}

static int
pc_pwrite (struct hostio *io, const void *buf, size_t count, uint64_t offset)
{
  struct powercut *pc = (struct powercut *) io;

  pthread_mutex_lock (&pc->lock);
  if (injected (pc, 'w')) {
    pthread_mutex_unlock (&pc->lock);
    return -1;
  }
  record (pc, EV_WRITE, offset, count, buf);
  apply (&pc->cur, &pc->cur_size, &pc->cur_cap, EV_WRITE, offset, count, buf);
  pthread_mutex_unlock (&pc->lock);
  return 0;
}

static int
pc_flush (struct hostio *io)
{
  struct powercut *pc = (struct powercut *) io;

  pthread_mutex_lock (&pc->lock);
  if (injected (pc, 'f')) {
    pthread_mutex_unlock (&pc->lock);
    return -1;
  }
  record (pc, EV_FLUSH, 0, 0, NULL);
  pthread_mutex_unlock (&pc->lock);
  return 0;
}

static int
pc_punch (struct hostio *io, uint64_t offset, uint64_t count)
{
  struct powercut *pc = (struct powercut *) io;

  pthread_mutex_lock (&pc->lock);
  if (injected (pc, 'p')) {
    pthread_mutex_unlock (&pc->lock);
    return -1;
  }
  record (pc, EV_PUNCH, offset, count, NULL);
  apply (&pc->cur, &pc->cur_size, &pc->cur_cap, EV_PUNCH, offset, count, NULL);
  pthread_mutex_unlock (&pc->lock);
  return 0;
}

static int
pc_truncate (struct hostio *io, uint64_t size)
{
  struct powercut *pc = (struct powercut *) io;

  pthread_mutex_lock (&pc->lock);
  if (injected (pc, 't')) {
    pthread_mutex_unlock (&pc->lock);
    return -1;
  }
  record (pc, EV_TRUNCATE, 0, size, NULL);
  apply (&pc->cur, &pc->cur_size, &pc->cur_cap, EV_TRUNCATE, 0, size, NULL);
  pthread_mutex_unlock (&pc->lock);
  return 0;
}

/* Space is never short here: only a failure can be injected. */
static int
pc_reserve (struct hostio *io, uint64_t offset, uint64_t count)
{
  struct powercut *pc = (struct powercut *) io;
  int r;

  pthread_mutex_lock (&pc->lock);
  r = injected (pc, 'r') ? -1 : 0;
  pthread_mutex_unlock (&pc->lock);
  return r;
}

static int64_t
pc_size (struct hostio *io)
{
  struct powercut *pc = (struct powercut *) io;
  int64_t size;

  pthread_mutex_lock (&pc->lock);
  size = pc->cur_size;
  pthread_mutex_unlock (&pc->lock);
  return size;
}

static int
pc_block_status (struct hostio *io, uint64_t offset, uint64_t count,
                 bool *is_data, uint64_t *run)
{
  *is_data = true;
  *run = count;
  return 0;
}

static void
pc_close (struct hostio *io)
{
  /* Owned by the test: powercut_free releases it. */
}

static const struct hostio_ops powercut_ops = {
  .pread = pc_pread, .pwrite = pc_pwrite, .flush = pc_flush,
  .punch = pc_punch, .truncate = pc_truncate, .reserve = pc_reserve,
  .size = pc_size,
  .block_status = pc_block_status, .close = pc_close,
};

struct powercut *
powercut_new (const char *name, const uint8_t *data, uint64_t size)
{
  struct powercut *pc = calloc (1, sizeof *pc);

  assert (pc != NULL);
  pc->io.ops = &powercut_ops;
  pthread_mutex_init (&pc->lock, NULL);
  pc->io.name = strdup (name);
  reserve (&pc->cur, &pc->cur_cap, size);
  memcpy (pc->cur, data, size);
  pc->cur_size = size;
  pc->initial = malloc (size ? size : 1);
  memcpy (pc->initial, data, size);
  pc->initial_size = size;
  return pc;
}

void
powercut_free (struct powercut *pc)
{
  for (uint64_t i = 0; i < pc->nev; i++)
    free (pc->ev[i].data);
  free (pc->ev);
  free (pc->cur);
  free (pc->initial);
  free (pc->durable);
  free (pc->io.name);
  pthread_mutex_destroy (&pc->lock);
  free (pc);
}

struct hostio *
powercut_io (struct powercut *pc)
{
  return &pc->io;
}

uint64_t
powercut_moment (struct powercut *pc)
{
  uint64_t n;

  pthread_mutex_lock (&pc->lock);
  n = pc->nev;
  pthread_mutex_unlock (&pc->lock);
  return n;
}

bool
powercut_is_flush (struct powercut *pc, uint64_t i)
{
  return i < pc->nev && pc->ev[i].kind == EV_FLUSH;
}

char
powercut_event (struct powercut *pc, uint64_t i, uint64_t *offset,
                uint64_t *len)
{
  static const char kinds[] = { [EV_WRITE] = 'w', [EV_TRUNCATE] = 't',
                                [EV_PUNCH] = 'p', [EV_FLUSH] = 'f' };

  assert (i < pc->nev);
  *offset = pc->ev[i].offset;
  *len = pc->ev[i].len;
  return kinds[pc->ev[i].kind];
}

const uint8_t *
powercut_data (struct powercut *pc, uint64_t *size)
{
  *size = pc->cur_size;
  return pc->cur;
}

void
powercut_fail_at (struct powercut *pc, char kind, uint64_t nth, int err)
{
  pc->fail_kind = kind;
  pc->fail_countdown = nth;
  pc->fail_errno = err;
}

/* The durable file at the last flush before moment, in pc->durable;
 * returns the number of that flush's successor event. */
static uint64_t
advance_durable (struct powercut *pc, uint64_t moment)
{
  uint64_t last_flush = 0;

  assert (moment <= pc->nev);
  /* The durable prefix ends just after the last flush before moment. */
  for (uint64_t i = moment; i > 0; i--)
    if (pc->ev[i - 1].kind == EV_FLUSH) {
      last_flush = i;
      break;
    }
  if (pc->durable == NULL || pc->durable_upto > last_flush) {
    pc->durable_size = 0;
    reserve (&pc->durable, &pc->durable_cap, pc->initial_size);
    memcpy (pc->durable, pc->initial, pc->initial_size);
    pc->durable_size = pc->initial_size;
    pc->durable_upto = 0;
  }
  for (; pc->durable_upto < last_flush; pc->durable_upto++) {
    struct event *e = &pc->ev[pc->durable_upto];
    apply (&pc->durable, &pc->durable_size, &pc->durable_cap, e->kind,
           e->offset, e->len, e->data);
  }
  return last_flush;
}

/* The durable file plus the chosen events after last_flush, the one
 * numbered torn (if any) only in part. */
static void
build_state (struct powercut *pc, uint64_t last_flush, uint64_t n,
             const bool *chosen, uint64_t torn, uint64_t *rng,
             uint8_t **out, uint64_t *out_size)
{
  uint64_t size = pc->durable_size, cap = 0;
  uint8_t *buf = NULL;

  reserve (&buf, &cap, size);
  memcpy (buf, pc->durable, size);
  for (uint64_t i = 0; i < n; i++) {
    struct event *e = &pc->ev[last_flush + i];

    if (!chosen[i])
      continue;
    if (last_flush + i != torn)
      apply (&buf, &size, &cap, e->kind, e->offset, e->len, e->data);
    else {
      /* Torn: a random subset of its 512-byte sectors lands. */
      uint64_t pos = e->offset;
      while (pos < e->offset + e->len) {
        uint64_t end = (pos / SECTOR + 1) * SECTOR;
        if (end > e->offset + e->len)
          end = e->offset + e->len;
        if (pc_rand (rng) & 1)
          apply (&buf, &size, &cap, EV_WRITE, pos, end - pos,
                 e->data + (pos - e->offset));
        pos = end;
      }
    }
  }
  *out = buf;
  *out_size = size;
}

void
powercut_crash_state (struct powercut *pc, uint64_t moment, uint64_t *rng,
                      uint8_t **out, uint64_t *out_size)
{
  uint64_t last_flush = advance_durable (pc, moment);
  uint64_t n = moment - last_flush, torn = UINT64_MAX;
  bool *chosen = calloc (n ? n : 1, sizeof *chosen);
  /* Bias towards "everything landed" and "nothing landed" sometimes. */
  uint64_t mode = pc_rand (rng) % 4;

  assert (chosen != NULL);
  /* Choose the subset first, so that the torn write is the last chosen. */
  for (uint64_t i = 0; i < n; i++)
    chosen[i] = mode == 0 ? true : mode == 1 ? false : pc_rand (rng) & 1;
  if (pc_rand (rng) & 1)
    for (uint64_t i = n; i > 0; i--)
      if (chosen[i - 1] && pc->ev[last_flush + i - 1].kind == EV_WRITE) {
        torn = last_flush + i - 1;
        break;
      }
  build_state (pc, last_flush, n, chosen, torn, rng, out, out_size);
  free (chosen);
}

uint64_t
powercut_pending (struct powercut *pc, uint64_t moment)
{
  return moment - advance_durable (pc, moment);
}

void
powercut_crash_state_subset (struct powercut *pc, uint64_t moment,
                             uint64_t subset, uint8_t **out,
                             uint64_t *out_size)
{
  uint64_t last_flush = advance_durable (pc, moment);
  uint64_t n = moment - last_flush;
  bool chosen[64];

  assert (n <= 64);
  for (uint64_t i = 0; i < n; i++)
    chosen[i] = subset >> i & 1;
  build_state (pc, last_flush, n, chosen, UINT64_MAX, NULL, out, out_size);
}
