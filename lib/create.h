/* qcow2j lib: creating a new, empty qcow2 image. */
#ifndef QCOW2J_CREATE_H
#define QCOW2J_CREATE_H

#include <stdbool.h>
#include <stdint.h>

/* Create at path an empty qcow2 version 3 image of size virtual bytes, as
 * "qemu-img create -f qcow2 -o cluster_size=N[,extended_l2=on]" would:
 * zlib compression type, 16-bit refcounts, no lazy refcounts, QEMU's
 * feature name table (for clusters over 4 KiB, as QEMU), no backing file.
 *
 * cluster_size must be a power of two from 512 to 2 MiB (at least 16 KiB
 * with extended_l2); size must be a non-zero multiple of 512 that QEMU's
 * L1 table limit (32 MiB) can map.  Invalid parameters are reported and
 * refused with EINVAL before the file is touched.
 *
 * With exclusive the file must not exist (EEXIST).  Otherwise an existing
 * regular file is truncated and overwritten, unless another process holds
 * QEMU's image locks on it (EAGAIN).  The image is durable (fsync'd, and
 * the directory entry too if the file was created) when this returns 0.
 * On error returns -1 with errno set after reporting, and removes the file
 * if it created it. */
extern int qcow2_create (const char *path, uint64_t size,
                         uint64_t cluster_size, bool extended_l2,
                         bool exclusive);

#endif /* QCOW2J_CREATE_H */
