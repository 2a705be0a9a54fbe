/* qcow2j lib: host I/O in flight against reuse of its clusters.
 *
 * A read, or a write in place, looks its host offset up and then does
 * the I/O without any lock, so a cluster may be freed between the two: a
 * trim of the same range, committed and checkpointed meanwhile.  If the
 * cluster were then punched and allocated to another guest range, the
 * late read would return that range's data, and a late write would land
 * in it (or in a clean cluster that the one-flush commit trusts to read
 * as zeroes).  So the checkpoint, before it punches and gives back what
 * it released, waits until every such section that began before the
 * free ended.  Sections begun after it cannot find the old mapping: the
 * change that freed the cluster replaced the entry first.
 *
 * Two counters and an epoch, as in userspace RCU's flip-and-wait: a
 * section counts itself in the counter of the epoch it saw, and checks
 * that the epoch did not move meanwhile (else it counts itself again in
 * the new one).  The waiter moves the epoch, so that new sections count
 * in the other counter, and waits for the old counter to drain.  Sections
 * are short (one host I/O) and waits rare (one per checkpoint that
 * released clusters), so the waiter polls.
 */
#include <config.h>

#include <time.h>

#include "grace.h"

unsigned
qcow2_io_begin (struct qcow2_image *img)
{
  for (;;) {
    unsigned e = __atomic_load_n (&img->io_epoch, __ATOMIC_SEQ_CST);

    __atomic_add_fetch (&img->io_active[e & 1], 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n (&img->io_epoch, __ATOMIC_SEQ_CST) == e)
      return e;
    __atomic_sub_fetch (&img->io_active[e & 1], 1, __ATOMIC_SEQ_CST);
  }
}

void
qcow2_io_end (struct qcow2_image *img, unsigned token)
{
  __atomic_sub_fetch (&img->io_active[token & 1], 1, __ATOMIC_SEQ_CST);
}

void
qcow2_io_wait_older (struct qcow2_image *img)
{
  unsigned old = __atomic_fetch_add (&img->io_epoch, 1, __ATOMIC_SEQ_CST);
  struct timespec ts = { 0, 20000 };

  while (__atomic_load_n (&img->io_active[old & 1], __ATOMIC_SEQ_CST) != 0) {
    nanosleep (&ts, NULL);
    if (ts.tv_nsec < 1000000)
      ts.tv_nsec *= 2;
  }
}
