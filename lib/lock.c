/* qcow2j lib: QEMU-compatible image locking.
 *
 * QEMU's file driver announces what it does with an image through shared
 * OFD locks on single bytes: byte 100+P means "I use permission P", byte
 * 200+P "I do not let anyone else use permission P".  A conflict is found
 * by asking (F_OFD_GETLK) whether an exclusive lock on the other byte
 * would be refused.  Taking the same locks means qemu-img, qemu-io and
 * qemu-nbd refuse to write an image qcow2j serves, and qcow2j refuses one
 * they are writing.  OFD locks (unlike POSIX record locks) survive
 * nbdkit's fork into the background.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>

#include "lock.h"
#include "log.h"

#define PERM_BYTE(p) (100 + (p))
#define SHARED_BYTE(p) (200 + (p))

enum {
  PERM_CONSISTENT_READ = 0,
  PERM_WRITE = 1,
  PERM_WRITE_UNCHANGED = 2,
  PERM_RESIZE = 3,
};

static const char *const perm_names[] = {
  "consistent read", "write", "write unchanged", "resize",
};

static int
lock_byte (int fd, int byte)
{
  struct flock fl = {
    .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
  };

  return fcntl (fd, F_OFD_SETLK, &fl);
}

/* 1 if another open file description holds a lock on byte, 0 if not,
 * -1 on error. */
static int
byte_is_locked (int fd, int byte)
{
  struct flock fl = {
    .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
  };

  if (fcntl (fd, F_OFD_GETLK, &fl) == -1)
    return -1;
  return fl.l_type != F_UNLCK;
}

int
qcow2_lock_fd (int fd, const char *name, bool writable)
{
  /* A reader uses consistent read and lets nobody write or resize under
   * it; a writer also uses write and resize (what qemu-nbd takes). */
  const int used[] = { PERM_CONSISTENT_READ, PERM_WRITE, PERM_RESIZE };
  const int unshared[] = { PERM_WRITE, PERM_RESIZE };
  const size_t nr_used = writable ? 3 : 1;
  size_t i;
  int r;

  for (i = 0; i < nr_used; i++) {
    r = byte_is_locked (fd, SHARED_BYTE (used[i]));
    if (r == -1)
      goto unsupported;
    if (r == 1)
      goto conflict_used;
  }
  for (i = 0; i < 2; i++) {
    r = byte_is_locked (fd, PERM_BYTE (unshared[i]));
    if (r == -1)
      goto unsupported;
    if (r == 1)
      goto conflict_unshared;
  }

  for (i = 0; i < nr_used; i++)
    if (lock_byte (fd, PERM_BYTE (used[i])) == -1)
      goto unsupported;
  for (i = 0; i < 2; i++)
    if (lock_byte (fd, SHARED_BYTE (unshared[i])) == -1)
      goto unsupported;
  return 0;

 conflict_used:
  qerror ("%s: failed to get shared \"%s\" lock: is another process using "
          "the image?", name, perm_names[used[i]]);
  errno = EAGAIN;
  return -1;
 conflict_unshared:
  qerror ("%s: failed to get \"%s\" lock: is another process using the "
          "image?", name, perm_names[unshared[i]]);
  errno = EAGAIN;
  return -1;
 unsupported:
  if (errno == EAGAIN || errno == EACCES) {
    qerror ("%s: failed to lock the image: %m", name);
    errno = EAGAIN;
    return -1;
  }
  qdebug ("%s: filesystem has no OFD locks, serving unlocked: %s",
          name, strerror (errno));
  return 0;
}
