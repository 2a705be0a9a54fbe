/* qcow2j lib: refusing guest I/O, frees and punches that would hit the
 * image's own metadata (overlap.c). */
#ifndef QCOW2J_OVERLAP_H
#define QCOW2J_OVERLAP_H

#include <stdint.h>

#include "image-internal.h"

/* Before guest data is written at [host, host + len) of the data file, or
 * a data cluster there is freed ('what' says which, for the message):
 * 0 if it holds no metadata; else the image is corrupt: log what and
 * where, mark the image corrupt, stop writes, and return -1 with errno
 * EIO.  Always 0 with an external data file (it holds no metadata). */
extern int qcow2_overlap_check (struct qcow2_image *img, uint64_t host,
                                uint64_t len, const char *what);

/* The same refusal, for a target the caller found to overlap metadata of
 * this kind at 'where'. */
extern int qcow2_overlap_refuse (struct qcow2_image *img, const char *what,
                                 uint64_t host, enum meta_kind kind,
                                 uint64_t where);

/* Guest bytes to host offset 'host' of the data file, never onto the
 * image's metadata (qcow2_overlap_check, naming 'what').  0, or -1 after
 * reporting. */
extern int qcow2_write_guest_data (struct qcow2_image *img, const void *buf,
                                   uint64_t count, uint64_t host,
                                   const char *what);

#endif /* QCOW2J_OVERLAP_H */
