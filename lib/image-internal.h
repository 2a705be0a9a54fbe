/* qcow2j lib: the image object, shared by the files of lib/ that implement
 * the image API.  Nothing outside lib/ sees this. */
#ifndef QCOW2J_IMAGE_INTERNAL_H
#define QCOW2J_IMAGE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "header.h"
#include "hostio.h"
#include "image.h"
#include "metacache.h"

/* Backing chains longer than this are refused (QEMU has no such limit, but
 * every layer costs file descriptors and memory, and a hostile chain must
 * not exhaust them). */
#define QCOW2_MAX_CHAIN_DEPTH 64

enum backing_kind { BACKING_NONE, BACKING_QCOW2, BACKING_RAW };

struct qcow2_image {
  struct hostio *file;          /* the qcow2 file */
  struct hostio *data;          /* where data clusters live: file, or the
                                   external data file */
  struct qcow2_header hdr;
  uint64_t file_size;           /* host length of file */
  uint64_t data_size;           /* host length of data */

  uint64_t *l1;                 /* active L1 table, host byte order */

  struct mcache *cache;        /* shared along the chain */
  bool owns_cache;              /* true in the top image only */
  unsigned slice_size;          /* bytes of L2 table per cache slice */

  /* Compressed cluster descriptor layout. */
  unsigned csize_shift;
  uint64_t csize_mask;
  uint64_t coffset_mask;

  struct {
    enum backing_kind kind;
    struct qcow2_image *image;  /* BACKING_QCOW2 */
    struct hostio *raw;         /* BACKING_RAW */
    uint64_t size;              /* bytes the backing file provides */
    char *path;                 /* resolved path, for messages */
  } backing;

  char *dir;                    /* directory names are relative to */
};

/* backing.c: open the backing file (if any) and the external data file
 * (if any) named by img->hdr, relative to img->dir.  depth counts the
 * images above; ids holds the (dev, ino) pairs already in the chain. */
struct chain_ids {
  uint64_t dev[QCOW2_MAX_CHAIN_DEPTH + 1];
  uint64_t ino[QCOW2_MAX_CHAIN_DEPTH + 1];
  unsigned n;
};
extern int qcow2_open_backing (struct qcow2_image *img, unsigned depth,
                               struct chain_ids *ids,
                               const struct qcow2_open_options *opts);
extern int qcow2_open_data_file (struct qcow2_image *img,
                                 const struct qcow2_open_options *opts);
/* Record io's file identity in ids; fails with ELOOP if already there. */
extern int qcow2_chain_add (struct chain_ids *ids, struct hostio *io);
/* The directory part of path (malloc'd). */
extern char *qcow2_dirname (const char *path);

/* Open one image of a chain (image.c). */
extern struct qcow2_image *qcow2_open_layer (struct hostio *io,
                                             const char *dir,
                                             struct mcache *cache,
                                             unsigned depth,
                                             struct chain_ids *ids,
                                             const struct qcow2_open_options *opts);

/* snapshot.c: walk and validate the snapshot table. */
extern int qcow2_check_snapshots (struct qcow2_image *img);

/* read.c: reads through the backing chain for unallocated ranges. */
extern int qcow2_read_backing (struct qcow2_image *img, void *buf,
                               uint64_t count, uint64_t offset);

#endif /* QCOW2J_IMAGE_INTERNAL_H */
