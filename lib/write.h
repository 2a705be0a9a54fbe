/* qcow2j lib: writing guest data. */
#ifndef QCOW2J_WRITE_H
#define QCOW2J_WRITE_H

#include <stdint.h>

#include "image-internal.h"

/* Write count bytes at guest offset, allocating as needed; the session
 * is JOURNALLED (session.c's gate).  0, or -1 with errno. */
extern int qcow2_write_range (struct qcow2_image *img, const void *buf,
                              uint64_t count, uint64_t offset);

#endif /* QCOW2J_WRITE_H */
