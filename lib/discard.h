/* qcow2j lib: zeroing and trimming. */
#ifndef QCOW2J_DISCARD_H
#define QCOW2J_DISCARD_H

#include <stdbool.h>
#include <stdint.h>

#include "image-internal.h"

/* qcow2_zero and qcow2_trim (image.h) once the session's gate let them
 * through. */
extern int qcow2_zero_range (struct qcow2_image *img, uint64_t count,
                             uint64_t offset, bool may_trim, bool fast);
extern int qcow2_trim_range (struct qcow2_image *img, uint64_t count,
                             uint64_t offset);

#endif /* QCOW2J_DISCARD_H */
