/* qcow2j lib: backing files and external data files, found and opened. */
#ifndef QCOW2J_BACKING_H
#define QCOW2J_BACKING_H

#include <stdbool.h>

#include "image-internal.h"

/* The (dev, ino) pairs of the files already in a chain. */
struct chain_ids {
  uint64_t dev[QCOW2_MAX_CHAIN_DEPTH + 1];
  uint64_t ino[QCOW2_MAX_CHAIN_DEPTH + 1];
  unsigned n;
};

/* Open the backing file that img->hdr names, relative to img->dir; depth
 * counts the images above img.  A raw backing file is set up in
 * img->backing; a qcow2 one is returned in *qcow2_io with the directory
 * its own names are relative to (*qcow2_dir, malloc'd), for the caller
 * to open as the next layer.  Both NULL: no qcow2 backing file. */
extern int qcow2_open_backing (struct qcow2_image *img, unsigned depth,
                               struct chain_ids *ids,
                               const struct qcow2_open_options *opts,
                               struct hostio **qcow2_io, char **qcow2_dir);

/* Open the external data file img->hdr names (if any; else img->data is
 * the image file).  Only the top image's may be opened for writing. */
extern int qcow2_open_data_file (struct qcow2_image *img, bool top,
                                 const struct qcow2_open_options *opts);

/* Record io's file identity in ids; fails with ELOOP if already there. */
extern int qcow2_chain_add (struct chain_ids *ids, struct hostio *io);

/* The directory part of path (malloc'd). */
extern char *qcow2_dirname (const char *path);

#endif /* QCOW2J_BACKING_H */
