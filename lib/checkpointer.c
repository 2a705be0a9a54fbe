/* qcow2j lib: the background thread that runs checkpoints.
 *
 * Started after nbdkit forks (a thread started before is lost) and
 * stopped before the image closes.  Every tick it looks at the journal:
 * it commits changes nobody flushed once they are a few seconds old, runs
 * a checkpoint when the ring is past its high water mark or changes have
 * waited a few seconds (10.3), and after a few seconds of idleness clears
 * "journal dirty" (10.4), so that a server killed while idle leaves an
 * image QEMU opens.  It does nothing unless the session is JOURNALLED.
 */
#include <config.h>

#include <errno.h>
#include <time.h>

#include "checkpoint.h"
#include "clock.h"
#include "dirty.h"
#include "log.h"
#include "state.h"

#define CHECKPOINT_AFTER_NS (2 * 1000000000ULL)   /* changes this old */
#define CLEAN_AFTER_NS      (5 * 1000000000ULL)   /* idle this long */
#define TICK_NS             (500 * 1000000ULL)

static void
tick (struct qcow2_image *img)
{
  uint64_t idle;
  bool pending, open_records;

  /* The journal exists from JOURNALLED on (the state is published after
   * it, with release order). */
  if (qcow2_state (img) != SESSION_JOURNALLED)
    return;
  idle = qcow2_now () - __atomic_load_n (&img->last_change, __ATOMIC_RELAXED);
  pending = journal_durable_seq (img->journal) >=
    journal_head_seq (img->journal);
  open_records = journal_open_bytes (img->journal) > 0;
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
    qcow2_dirty_clear_if_idle (img);
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
  pthread_mutex_lock (&img->thread_lock);
  img->thread_running = false;
  pthread_mutex_unlock (&img->thread_lock);
}

