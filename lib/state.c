/* qcow2j lib: the write session's state word and its failure latch.
 *
 * One word says where the image is in its life (image-internal.h draws
 * the transitions), so that every request can decide with one atomic load
 * whether it may write.  session.c and overlay.c make the ordinary
 * transitions; any layer may trip the latch, which is why it lives here,
 * below all of them: once a change failed half way, or a host flush or a
 * checkpoint failed, nothing may be committed any more in this session
 * (docs/journal-format.md 8.7), and the journal keeps what was committed
 * for the next open to replay.
 */
#include <config.h>

#include <errno.h>

#include "log.h"
#include "state.h"

bool
qcow2_state_move (struct qcow2_image *img, enum session_state from,
                  enum session_state to)
{
  int expected = from;

  assert (to != SESSION_FAILED);
  return __atomic_compare_exchange_n (&img->state, &expected, to, false,
                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

int
qcow2_stop_writes (struct qcow2_image *img, const char *why)
{
  int err = errno ? errno : EIO;
  int s = __atomic_load_n (&img->state, __ATOMIC_ACQUIRE);

  /* Only a session that was writing can fail; the errno is published
   * before the state that makes readers look at it. */
  assert (s == SESSION_READY || s == SESSION_JOURNALLED ||
          s == SESSION_FAILED);
  while (s != SESSION_FAILED) {
    int expected = 0;

    __atomic_compare_exchange_n (&img->failed_errno, &expected, err, false,
                                 __ATOMIC_RELEASE, __ATOMIC_ACQUIRE);
    if (__atomic_compare_exchange_n (&img->state, &s, SESSION_FAILED, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      qerror ("%s: %s: refusing further writes", img->file->name, why);
      break;
    }
  }
  if (img->journal)
    journal_fail (img->journal, err);
  errno = err;
  return -1;
}

int
qcow2_check_writing (struct qcow2_image *img)
{
  switch (qcow2_state (img)) {
  case SESSION_READY:
  case SESSION_JOURNALLED:
    return 0;
  case SESSION_FAILED:
    errno = __atomic_load_n (&img->failed_errno, __ATOMIC_RELAXED);
    return -1;
  default:
    errno = EROFS;
    return -1;
  }
}
