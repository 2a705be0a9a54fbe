/* qcow2j lib: block status (NBD base:allocation).
 *
 * Extents describe what a read returns, looking through the backing chain:
 * a range the image leaves unallocated is data wherever the backing file
 * has data (nbdcopy skips what is reported as a hole, so calling backing
 * data a hole would lose it).  Zero clusters and ranges with nothing below
 * them are holes that read as zeroes.  Extents are clamped to the request
 * (nbdkit 1.32 aborts on one that runs past it, CVE-2025-47711).
 *
 * A data cluster whose host range is a hole in the file reads as zeroes:
 * preallocation=metadata makes whole images of them.  Such ranges are
 * reported as zero (not as holes: they are allocated), as QEMU does, so
 * copy tools neither read nor write them.  Like QEMU, only for a data
 * file that is mostly holes (backing.c decides at open): asking the file costs
 * two lseeks per run of data, and on an ordinary image the answer would
 * only split extents at the unwritten tails of clusters QEMU wrote in
 * part.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>

#include "image-internal.h"
#include "log.h"
#include "map.h"
#include "minmax.h"
#include "owed.h"

/* Bound the work of one call: nbdkit accepts fewer extents than asked. */
#define MAX_RUNS_PER_CALL 65536

struct extent_state {
  qcow2_extent_fn fn;
  void *opaque;
  bool one_only;
  unsigned runs;
  bool done;
};

static int
emit (struct extent_state *st, uint64_t offset, uint64_t length,
      unsigned type)
{
  if (st->fn (st->opaque, offset, length, type) == -1)
    return -1;
  if (st->one_only || ++st->runs >= MAX_RUNS_PER_CALL)
    st->done = true;
  return 0;
}

/* A run of data clusters: data where the host file has data, zero where
 * it has a hole. */
static int
data_extents (struct qcow2_image *img, uint64_t count, uint64_t offset,
              uint64_t host, struct extent_state *st)
{
  uint64_t done = 0;

  /* An owed sector may be a hole yet read as its source (owed.c). */
  if (!img->holes_read_zero || qcow2_owed_any (img))
    return emit (st, offset, count, 0);
  while (done < count && !st->done) {
    bool is_data;
    uint64_t run;

    if (hostio_block_status (img->data, host + done, count - done,
                             &is_data, &run) == -1) {
      qerror ("%s: block status: %m", img->data->name);
      return -1;
    }
    if (emit (st, offset + done, run, is_data ? 0 : QCOW2_EXTENT_ZERO) == -1)
      return -1;
    done += run;
  }
  return 0;
}

static int image_extents (struct qcow2_image *img, uint64_t count,
                          uint64_t offset, struct extent_state *st);

static int
backing_extents (struct qcow2_image *img, uint64_t count, uint64_t offset,
                 struct extent_state *st)
{
  const unsigned hole = QCOW2_EXTENT_HOLE | QCOW2_EXTENT_ZERO;
  uint64_t avail = 0;

  if (img->backing.kind != BACKING_NONE && offset < img->backing.size)
    avail = MIN (count, img->backing.size - offset);

  if (img->backing.kind == BACKING_QCOW2 && avail > 0) {
    if (image_extents (img->backing.image, avail, offset, st) == -1)
      return -1;
  }
  else if (img->backing.kind == BACKING_RAW && avail > 0) {
    struct hostio *raw = img->backing.raw;
    uint64_t pos = offset, end = offset + avail;

    while (pos < end && !st->done) {
      bool is_data;
      uint64_t run;

      if (hostio_block_status (raw, pos, end - pos, &is_data, &run) == -1) {
        qerror ("%s: block status: %m", img->backing.path);
        return -1;
      }
      if (emit (st, pos, run, is_data ? 0 : hole) == -1)
        return -1;
      pos += run;
    }
  }
  if (avail < count && !st->done)
    return emit (st, offset + avail, count - avail, hole);
  return 0;
}

static int
image_extents (struct qcow2_image *img, uint64_t count, uint64_t offset,
               struct extent_state *st)
{
  while (count > 0 && !st->done) {
    struct qcow2_run run;

    if (qcow2_map (img, offset, count, &run) == -1)
      return -1;
    switch (run.type) {
    case RUN_DATA:
      if (data_extents (img, run.length, offset, run.host_offset, st) == -1)
        return -1;
      break;
    case RUN_COMPRESSED:
      if (emit (st, offset, run.length, 0) == -1)
        return -1;
      break;
    case RUN_ZERO:
      if (emit (st, offset, run.length,
                QCOW2_EXTENT_HOLE | QCOW2_EXTENT_ZERO) == -1)
        return -1;
      break;
    case RUN_UNALLOCATED:
      if (backing_extents (img, run.length, offset, st) == -1)
        return -1;
      break;
    }
    offset += run.length;
    count -= run.length;
  }
  return 0;
}

int
qcow2_extents (struct qcow2_image *img, uint64_t count, uint64_t offset,
               bool one_only, qcow2_extent_fn fn, void *opaque)
{
  struct extent_state st = { .fn = fn, .opaque = opaque,
                             .one_only = one_only };

  if (image_extents (img, count, offset, &st) == -1) {
    /* Bad metadata further on: answer with the extents found before it
     * (the client asks again from there and gets the error then). */
    if (st.runs > 0 && errno == EIO)
      return 0;
    return -1;
  }
  return 0;
}
