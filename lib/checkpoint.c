/* qcow2j lib: the checkpoint, and the background thread that runs it.
 *
 * A checkpoint writes the committed state of every changed metadata slice
 * in place (never live state: rule R1), flushes, and then lets the journal
 * move its head past the transactions that state includes, which frees
 * ring space; clusters freed by those transactions are then discarded on
 * the host.  The header slice is special: only its words 24-71 are ever
 * journalled, and only those are written back, so that the feature words
 * and extensions written directly are never overwritten with old bytes.
 *
 * The thread runs a checkpoint when the ring is half full, when changes
 * have waited a few seconds, and when the image is idle; after a while of
 * idleness it also clears "journal dirty", so that a server killed while
 * idle leaves an image QEMU opens.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "format.h"
#include "image-internal.h"
#include "journal-format.h"
#include "log.h"
#include "minmax.h"

#define CHECKPOINT_AFTER_NS (2 * 1000000000ULL)   /* changes this old */
#define CLEAN_AFTER_NS      (5 * 1000000000ULL)   /* idle this long */
#define TICK_NS             (500 * 1000000ULL)

static int
compare_offsets (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

  return x < y ? -1 : x > y;
}

/* Give the host back the clusters whose free the head has passed, in as
 * few calls as runs of adjacent clusters allow. */
static void
discard_released (struct qcow2_image *img)
{
  const uint64_t cs = img->hdr.cluster_size;
  uint64_t v[1024];
  size_t n;

  while ((n = journal_take_released (img->journal, v, 1024)) > 0) {
    qsort (v, n, sizeof v[0], compare_offsets);
    for (size_t i = 0, j; i < n; i = j) {
      for (j = i + 1; j < n && v[j] == v[j - 1] + cs; j++)
        ;
      if (img->file->ops->punch (img->file, v[i], (j - i) * cs) == -1)
        qdebug ("%s: discard 0x%" PRIx64 ": %m", img->file->name, v[i]);
    }
  }
}

/* A failed checkpoint leaves the journal holding everything (in-place
 * state is a mix of committed states, which replay repairs), but writes
 * stop: the ring could only fill up, and the host is failing. */
static int
checkpoint_failed (struct qcow2_image *img)
{
  return qcow2_stop_writes (img, "checkpoint failed (the journal keeps "
                            "every committed change)");
}

int
qcow2_checkpoint (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->checkpoint_lock);
  CLEANUP_FREE struct mcache_dirty *d = NULL;
  uint64_t seq = journal_durable_seq (img->journal);
  ssize_t n;

  n = mcache_collect (img->cache, img, &d);
  if (n == -1) {
    qerror ("%s: checkpoint: %m", img->file->name);
    return checkpoint_failed (img);
  }
  for (ssize_t i = 0; i < n; i++) {
    int r;

    if (d[i].offset == 0)       /* the header: words 24-71 only */
      r = hostio_pwrite (img->file, d[i].data + 24, 48, 24);
    else
      r = hostio_pwrite (img->file, d[i].data, d[i].size, d[i].offset);
    if (r == -1) {
      qerror ("%s: checkpoint: write at 0x%" PRIx64 ": %m",
              img->file->name, d[i].offset);
      return checkpoint_failed (img);
    }
  }
  if (n > 0 && hostio_flush (img->file) == -1) {
    qerror ("%s: checkpoint: flush: %m", img->file->name);
    return checkpoint_failed (img);
  }
  if (seq >= journal_head_seq (img->journal) &&
      journal_checkpointed (img->journal, seq) == -1)
    return checkpoint_failed (img);
  for (ssize_t i = 0; i < n; i++)
    mcache_cleaned (img->cache, &d[i]);
  discard_released (img);
  return 0;
}

/* When idle with everything checkpointed: clear "journal dirty", so that
 * QEMU can open the image even if the server is killed now. */
static int
clear_dirty_if_idle (struct qcow2_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->dirty_lock);
  uint8_t b[8];
  uint64_t v = htobe64 (img->hdr.incompatible_features);

  if (!img->dirty_written || !journal_is_idle (img->journal) ||
      journal_durable_seq (img->journal) >= journal_head_seq (img->journal))
    return 0;
  memcpy (b, &v, 8);
  if (hostio_pwrite (img->file, b, 8, QCOW2_OFF_INCOMPATIBLE) == -1 ||
      hostio_flush (img->file) == -1) {
    qerror ("%s: clear the journal dirty bit: %m", img->file->name);
    return -1;
  }
  __atomic_store_n (&img->dirty_durable, false, __ATOMIC_RELEASE);
  img->dirty_written = false;
  qdebug ("%s: idle: journal dirty bit cleared", img->file->name);
  return 0;
}

static void
tick (struct qcow2_image *img)
{
  uint64_t idle = qcow2_now () - __atomic_load_n (&img->last_change,
                                                  __ATOMIC_RELAXED);
  bool pending = journal_durable_seq (img->journal) >=
    journal_head_seq (img->journal);
  bool open_records = journal_open_bytes (img->journal) > 0;

  if (img->failed)
    return;
  /* Changes nobody flushed, left for a while: commit them. */
  if (open_records && idle > CHECKPOINT_AFTER_NS) {
    if (journal_commit (img->journal, NULL) == -1 && errno != EAGAIN)
      return;
    pending = true;
  }
  if (pending &&
      (journal_ring_used (img->journal) > img->ring_high_water ||
       idle > CHECKPOINT_AFTER_NS) &&
      qcow2_checkpoint (img) == -1)
    return;
  if (idle > CLEAN_AFTER_NS)
    clear_dirty_if_idle (img);
}

static void *
checkpoint_thread (void *arg)
{
  struct qcow2_image *img = arg;

  pthread_mutex_lock (&img->thread_lock);
  while (!img->thread_stop) {
    struct timespec ts;

    clock_gettime (CLOCK_REALTIME, &ts);
    ts.tv_nsec += TICK_NS;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait (&img->thread_cond, &img->thread_lock, &ts);
    if (img->thread_stop)
      break;
    pthread_mutex_unlock (&img->thread_lock);
    if (__atomic_load_n (&img->writable, __ATOMIC_ACQUIRE))
      tick (img);
    pthread_mutex_lock (&img->thread_lock);
  }
  pthread_mutex_unlock (&img->thread_lock);
  return NULL;
}

int
qcow2_start_checkpointer (struct qcow2_image *img)
{
  int err;

  pthread_mutex_lock (&img->thread_lock);
  img->thread_stop = false;
  err = pthread_create (&img->thread, NULL, checkpoint_thread, img);
  img->thread_running = err == 0;
  pthread_mutex_unlock (&img->thread_lock);
  if (err) {
    errno = err;
    qerror ("pthread_create: %m");
    return -1;
  }
  return 0;
}

void
qcow2_stop_checkpointer (struct qcow2_image *img)
{
  pthread_mutex_lock (&img->thread_lock);
  if (!img->thread_running) {
    pthread_mutex_unlock (&img->thread_lock);
    return;
  }
  img->thread_stop = true;
  pthread_cond_signal (&img->thread_cond);
  pthread_mutex_unlock (&img->thread_lock);
  pthread_join (img->thread, NULL);
  img->thread_running = false;
}

void
qcow2_checkpoint_wake (struct qcow2_image *img)
{
  pthread_mutex_lock (&img->thread_lock);
  pthread_cond_signal (&img->thread_cond);
  pthread_mutex_unlock (&img->thread_lock);
}
