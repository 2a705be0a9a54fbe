/* qcow2j lib: scope-based cleanup and locking, like nbdkit's common/ helpers
 * (which are not installed, so out-of-tree code needs its own).  Early
 * returns on error paths then cannot leak memory or leave a lock held.
 */
#ifndef QCOW2J_CLEANUP_H
#define QCOW2J_CLEANUP_H

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>

static inline void
cleanup_free (void *ptr)
{
  free (*(void **) ptr);
}
#define CLEANUP_FREE __attribute__ ((cleanup (cleanup_free)))

static inline void
cleanup_unlock (pthread_mutex_t **ptr)
{
  int r = pthread_mutex_unlock (*ptr);
  assert (r == 0);
}
#define CONCAT_(a, b) a##b
#define CONCAT(a, b) CONCAT_ (a, b)
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                           \
  __attribute__ ((cleanup (cleanup_unlock)))                            \
  pthread_mutex_t *CONCAT (_lock_, __LINE__) = (mutex);                 \
  do {                                                                  \
    int _r = pthread_mutex_lock (CONCAT (_lock_, __LINE__));            \
    assert (_r == 0);                                                   \
  } while (0)

#endif /* QCOW2J_CLEANUP_H */
