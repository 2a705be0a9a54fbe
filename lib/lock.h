/* qcow2j lib: QEMU-compatible image locking. */
#ifndef QCOW2J_LOCK_H
#define QCOW2J_LOCK_H

#include <stdbool.h>

/* Take the OFD byte-range locks QEMU takes for a reader (writable false)
 * or a writer of the image open on fd, after checking that no other
 * process holds a conflicting one.  On conflict reports and returns -1
 * with errno EAGAIN.  Filesystems without OFD locks are served unlocked,
 * as QEMU does. */
extern int qcow2_lock_fd (int fd, const char *name, bool writable);

#endif /* QCOW2J_LOCK_H */
