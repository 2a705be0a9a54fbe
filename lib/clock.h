/* qcow2j lib: the monotonic clock that times idleness and old changes. */
#ifndef QCOW2J_CLOCK_H
#define QCOW2J_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Nanoseconds of CLOCK_MONOTONIC. */
static inline uint64_t
qcow2_now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

#endif /* QCOW2J_CLOCK_H */
