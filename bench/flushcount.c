/* flushcount.so: an LD_PRELOAD shim for bench/run.sh.
 *
 * Counts the host flushes a server makes: fsync(2), fdatasync(2), and the
 * fsyncs it queues on an io_uring through liburing (qemu-nbd --aio=io_uring
 * flushes that way, never calling fdatasync).  sync_file_range(2) is counted
 * apart: it starts or waits for writeback but makes nothing durable.
 *
 * BENCH_FLUSH_DELAY_US=N makes every flush cost N µs more, to emulate a
 * device with slow flushes.  A thread that calls fsync or fdatasync sleeps
 * after the call; an io_uring submission that holds fsyncs sleeps once
 * before it is submitted, which stalls the submitting thread (qemu-nbd's
 * event loop) as well, so it is exact only when nothing else is in flight
 * during the flush, as in bench's flush rows at queue depth 1.
 *
 * At exit the process (not a child it forked) writes to BENCH_COUNT_FILE:
 *   flushes N / sync_file_range N / write_bytes N / wchar N / vmhwm_kib N /
 *   cpu_ms N
 * write_bytes and wchar come from /proc/self/io, vmhwm_kib from
 * /proc/self/status, read at exit so that what a server does while it
 * stops (a final commit, cache write-back) is included.
 *
 * Build: cc -O2 -shared -fPIC -o flushcount.so flushcount.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static atomic_ulong flushes, ranges;
static unsigned long delay_us;
static pid_t owner;

#define REAL(name) \
  static typeof (name) *real_##name; \
  if (!real_##name) real_##name = dlsym (RTLD_NEXT, #name)

static void
slow_flush (void)
{
  if (delay_us == 0)
    return;
  struct timespec ts = { delay_us / 1000000, (delay_us % 1000000) * 1000 };
  while (nanosleep (&ts, &ts) == -1)
    ;
}

int
fsync (int fd)
{
  REAL (fsync);
  int r = real_fsync (fd);
  atomic_fetch_add (&flushes, 1);
  slow_flush ();
  return r;
}

int
fdatasync (int fd)
{
  REAL (fdatasync);
  int r = real_fdatasync (fd);
  atomic_fetch_add (&flushes, 1);
  slow_flush ();
  return r;
}

int
sync_file_range (int fd, off64_t off, off64_t len, unsigned flags)
{
  REAL (sync_file_range);
  atomic_fetch_add (&ranges, 1);
  return real_sync_file_range (fd, off, len, flags);
}

/* The SQEs queued since the last submission lie between sqe_head and
 * sqe_tail of liburing's own ring state. */
static void
count_ring_fsyncs (struct io_uring *ring)
{
  struct io_uring_sq *sq = &ring->sq;
  unsigned n = 0;

  for (unsigned i = sq->sqe_head; i != sq->sqe_tail; i++)
    if (sq->sqes[i & *sq->kring_mask].opcode == IORING_OP_FSYNC)
      n++;
  if (n) {
    atomic_fetch_add (&flushes, n);
    slow_flush ();
  }
}

int
io_uring_submit (struct io_uring *ring)
{
  REAL (io_uring_submit);
  count_ring_fsyncs (ring);
  return real_io_uring_submit (ring);
}

int
io_uring_submit_and_wait (struct io_uring *ring, unsigned wait_nr)
{
  REAL (io_uring_submit_and_wait);
  count_ring_fsyncs (ring);
  return real_io_uring_submit_and_wait (ring, wait_nr);
}

/* The number after "key" in /proc/self/FILE, or -1. */
static long long
proc_field (const char *file, const char *key)
{
  char path[64], line[256];
  long long v = -1;
  size_t klen = strlen (key);
  FILE *f;

  snprintf (path, sizeof path, "/proc/self/%s", file);
  f = fopen (path, "re");
  if (!f)
    return -1;
  while (fgets (line, sizeof line, f))
    if (strncmp (line, key, klen) == 0 && line[klen] == ':') {
      v = strtoll (line + klen + 1, NULL, 10);
      break;
    }
  fclose (f);
  return v;
}

__attribute__((constructor)) static void
start (void)
{
  const char *d = getenv ("BENCH_FLUSH_DELAY_US");

  owner = getpid ();
  delay_us = d ? strtoul (d, NULL, 10) : 0;
}

__attribute__((destructor)) static void
report (void)
{
  const char *out = getenv ("BENCH_COUNT_FILE");
  struct rusage ru;
  FILE *f;

  if (!out || getpid () != owner)
    return;
  getrusage (RUSAGE_SELF, &ru);
  f = fopen (out, "we");
  if (!f)
    return;
  fprintf (f, "flushes %lu\nsync_file_range %lu\n",
           atomic_load (&flushes), atomic_load (&ranges));
  fprintf (f, "write_bytes %lld\nwchar %lld\nvmhwm_kib %lld\n",
           proc_field ("io", "write_bytes"), proc_field ("io", "wchar"),
           proc_field ("status", "VmHWM"));
  fprintf (f, "cpu_ms %ld\n",
           (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000L
           + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000);
  fclose (f);
}
