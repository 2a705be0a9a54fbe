/* qcow2j lib: guest offset to host location, through the L1 and L2 tables.
 *
 * Both reads and block status go through qcow2_map, which describes the
 * longest run of guest bytes that behave the same way: data contiguous on
 * the host (one pread serves it), zeroes, a fall-through to the backing
 * file, or one compressed cluster.  Runs never leave one L2 slice, which
 * bounds the work done per call.
 *
 * Entries are validated as they are used, the way QEMU does: an entry with
 * reserved bits, an unaligned offset, an offset past the end of the file
 * (as it was at open, or as this session extended it) or into the live
 * journal fails that read with EIO and a message naming the guest offset
 * and the entry, and leaves the rest of the disk readable.
 */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "entry.h"
#include "format.h"
#include "log.h"
#include "map.h"
#include "minmax.h"

static int __attribute__ ((format (printf, 3, 4)))
bad_entry (struct qcow2_image *img, uint64_t guest, const char *fs, ...)
{
  char msg[256];
  va_list args;

  va_start (args, fs);
  vsnprintf (msg, sizeof msg, fs, args);
  va_end (args);
  qerror ("%s: guest offset 0x%" PRIx64 ": %s", img->file->name, guest, msg);
  errno = EIO;
  return -1;
}

/* Append a piece to the run being built.  Returns true if it was taken,
 * false if the run must end before it. */
static bool
extend_run (struct qcow2_run *run, enum qcow2_run_type type, uint64_t host,
            uint64_t len, uint64_t entry)
{
  bool copied = type == RUN_DATA && (entry & QCOW_OFLAG_COPIED);

  if (run->length == 0) {
    run->type = type;
    run->host_offset = host;
    run->l2_entry = entry;
    run->length = len;
    run->copied = copied;
    return true;
  }
  if (run->type != type || type == RUN_COMPRESSED || run->copied != copied)
    return false;
  if (type == RUN_DATA && host != run->host_offset + run->length)
    return false;
  run->length += len;
  return true;
}

/* Check the standard (first) half of an L2 entry that is not compressed:
 * no reserved bits, and a host offset that is cluster aligned if the
 * entry has one. */
static int
check_data_entry (struct qcow2_image *img, uint64_t guest, uint64_t e,
                  enum qcow2_entry_type type)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t host = qcow2_entry_host (e);
  uint64_t reserved = L2E_STD_RESERVED_MASK;

  if (h->l2_entry_size == 16)
    reserved |= QCOW_OFLAG_ZERO;        /* zero flag unused with subclusters */
  if (e & reserved)
    return bad_entry (img, guest, "L2 entry 0x%016" PRIx64 " has reserved "
                      "bits set", e);
  if ((type == ENTRY_NORMAL || type == ENTRY_ZERO_ALLOC) &&
      !IS_ALIGNED (host, h->cluster_size))
    return bad_entry (img, guest, "L2 entry 0x%016" PRIx64 ": host offset "
                      "0x%" PRIx64 " is not cluster aligned", e, host);
  return 0;
}

/* What is wrong with host bytes [host, host + len) of the image file (or
 * of the data file, if in_data) named by an entry, or NULL: an entry may
 * name what the file held at open or what this session allocated, never
 * the live journal (image-internal.h).  The live length of the file is no
 * guide: space past the end at open, where a power cut may have left
 * entries, is where the journal and new clusters go. */
static const char *
host_problem (struct qcow2_image *img, bool in_data, uint64_t host,
              uint64_t len)
{
  if (in_data && img->data != img->file)
    return host < __atomic_load_n (&img->data_size, __ATOMIC_ACQUIRE) ?
      NULL : "is past the end of the data file";
  if (host < __atomic_load_n (&img->journal_end, __ATOMIC_ACQUIRE) &&
      __atomic_load_n (&img->journal_start, __ATOMIC_ACQUIRE) < host + len)
    return "is inside the qcow2j journal";
  if (host < __atomic_load_n (&img->open_end, __ATOMIC_ACQUIRE))
    return NULL;
  /* Past it: only what this session allocated, below the journal (up to
   * the highest cluster allocated there) or past it. */
  if (host >= __atomic_load_n (&img->alloc_start, __ATOMIC_ACQUIRE) &&
      host < __atomic_load_n (&img->gap_end, __ATOMIC_ACQUIRE))
    return NULL;
  if (host >= __atomic_load_n (&img->journal_end, __ATOMIC_ACQUIRE) &&
      __atomic_load_n (&img->journal_end, __ATOMIC_ACQUIRE) >=
      __atomic_load_n (&img->alloc_start, __ATOMIC_ACQUIRE) &&
      host < __atomic_load_n (&img->file_size, __ATOMIC_ACQUIRE))
    return NULL;
  return "is past the end of the file";
}

static int
check_host_in_file (struct qcow2_image *img, uint64_t guest, uint64_t e,
                    uint64_t host)
{
  const char *problem = host_problem (img, true, host,
                                     img->hdr.cluster_size);

  if (problem)
    return bad_entry (img, guest, "L2 entry 0x%016" PRIx64 ": host offset "
                      "0x%" PRIx64 " %s", e, host, problem);
  return 0;
}

/* Add the pieces of one cluster that fall in [from, to) to the run.
 * Returns 1 if the run is complete, 0 to go on, -1 on error. */
static int
add_cluster (struct qcow2_image *img, uint64_t cluster_start, uint64_t from,
             uint64_t to, uint64_t e, uint64_t bitmap,
             struct qcow2_run *run)
{
  const struct qcow2_header *h = &img->hdr;
  const enum qcow2_entry_type type = qcow2_entry_type (img, e);
  const uint64_t host = qcow2_entry_host (e);

  if (type == ENTRY_COMPRESSED) {
    const char *problem;
    uint64_t coffset, clen;

    qcow2_compressed (img, e, &coffset, &clen);
    if (h->data_file)
      return bad_entry (img, from, "compressed cluster (L2 entry 0x%016"
                        PRIx64 ") in an image with an external data file", e);
    if (h->l2_entry_size == 16 && bitmap != 0)
      return bad_entry (img, from, "compressed cluster (L2 entry 0x%016"
                        PRIx64 ") has subcluster bitmap 0x%016" PRIx64, e,
                        bitmap);
    if ((problem = host_problem (img, false, coffset, clen)) != NULL)
      return bad_entry (img, from, "compressed cluster at host offset 0x%"
                        PRIx64 " %s", coffset, problem);
    extend_run (run, RUN_COMPRESSED, 0, to - from, e);
    return 1;                   /* compressed runs hold one cluster */
  }

  if (check_data_entry (img, from, e, type) == -1)
    return -1;

  if (h->l2_entry_size == 8) {
    enum qcow2_run_type rt = RUN_UNALLOCATED;

    switch (type) {
    case ENTRY_ZERO_PLAIN:
    case ENTRY_ZERO_ALLOC:
      if (h->version < 3)
        return bad_entry (img, from, "L2 entry 0x%016" PRIx64 " has the "
                          "zero flag in a version 2 image", e);
      rt = RUN_ZERO;
      break;
    case ENTRY_NORMAL:
      if (check_host_in_file (img, from, e, host) == -1)
        return -1;
      rt = RUN_DATA;
      break;
    case ENTRY_UNALLOCATED:
    case ENTRY_COMPRESSED:
      break;
    }
    return extend_run (run, rt, host + (from - cluster_start), to - from,
                       e) ? 0 : 1;
  }

  /* Extended L2: 32 subclusters, each allocated, zero or unallocated. */
  {
    uint32_t alloc = bitmap & 0xffffffff, zero = bitmap >> 32;

    if (alloc & zero)
      return bad_entry (img, from, "subcluster bitmap 0x%016" PRIx64 " marks "
                        "subclusters both allocated and zero", bitmap);
    if (alloc && type != ENTRY_NORMAL)
      return bad_entry (img, from, "subcluster bitmap 0x%016" PRIx64
                        " allocates subclusters of an unallocated cluster",
                        bitmap);
    if (alloc && check_host_in_file (img, from, e, host) == -1)
      return -1;

    while (from < to) {
      unsigned sc = (from - cluster_start) / h->subcluster_size;
      uint64_t sc_end = MIN (to, cluster_start + (sc + 1) * h->subcluster_size);
      enum qcow2_run_type rt =
        alloc & (1u << sc) ? RUN_DATA :
        zero & (1u << sc) ? RUN_ZERO : RUN_UNALLOCATED;

      if (!extend_run (run, rt, host + (from - cluster_start),
                       sc_end - from, e))
        return 1;
      from = sc_end;
    }
    return 0;
  }
}

int
qcow2_l2_table (struct qcow2_image *img, uint64_t guest, uint64_t *l2_offset)
{
  const struct qcow2_header *h = &img->hdr;
  const uint64_t l1_index = guest >> (h->cluster_bits + h->l2_bits);
  const uint64_t l1e = l1_index < h->l1_size ?
    __atomic_load_n (&img->l1[l1_index], __ATOMIC_ACQUIRE) : 0;
  const char *problem;

  *l2_offset = l1e & L1E_OFFSET_MASK;
  if (l1e & L1E_RESERVED_MASK)
    return bad_entry (img, guest, "L1 entry %" PRIu64 " (0x%016" PRIx64
                      ") has reserved bits set", l1_index, l1e);
  if (*l2_offset == 0)
    return 0;
  if (!IS_ALIGNED (*l2_offset, h->cluster_size))
    return bad_entry (img, guest, "L1 entry %" PRIu64 ": L2 table offset "
                      "0x%" PRIx64 " is not cluster aligned", l1_index,
                      *l2_offset);
  if ((problem = host_problem (img, false, *l2_offset, h->cluster_size)) != NULL)
    return bad_entry (img, guest, "L1 entry %" PRIu64 ": L2 table offset "
                      "0x%" PRIx64 " %s", l1_index, *l2_offset, problem);
  return 0;
}

int
qcow2_check_entry (struct qcow2_image *img, uint64_t guest, uint64_t entry,
                   uint64_t bitmap)
{
  const uint64_t cs = img->hdr.cluster_size;
  const uint64_t cluster = ROUND_DOWN (guest, cs);
  struct qcow2_run run = { .length = 0 };

  /* Mapping the whole cluster checks every part of the entry. */
  return add_cluster (img, cluster, cluster, cluster + cs, entry, bitmap,
                      &run) == -1 ? -1 : 0;
}

int
qcow2_map (struct qcow2_image *img, uint64_t offset, uint64_t max_len,
           struct qcow2_run *run)
{
  const struct qcow2_header *h = &img->hdr;
  const unsigned cb = h->cluster_bits;
  const uint64_t cs = h->cluster_size;
  const unsigned span_bits = cb + h->l2_bits;
  const unsigned words = h->l2_entry_size / 8;
  const unsigned per_slice = img->slice_size / h->l2_entry_size;
  uint64_t l2_offset, l2_index, slice_offset, end;
  uint64_t entries[MCACHE_MAX_SLICE / 8];
  unsigned first, n;

  run->length = 0;
  /* Never cross an L1 entry's span. */
  max_len = MIN (max_len, (1ULL << span_bits) - (offset & ((1ULL << span_bits) - 1)));
  end = offset + max_len;

  if (qcow2_l2_table (img, offset, &l2_offset) == -1)
    return -1;
  if (l2_offset == 0) {
    extend_run (run, RUN_UNALLOCATED, 0, max_len, 0);
    return 0;
  }

  /* The entries of this L2 slice that cover [offset, end). */
  l2_index = (offset >> cb) & ((1ULL << h->l2_bits) - 1);
  first = l2_index % per_slice;
  slice_offset = l2_offset + (l2_index - first) * h->l2_entry_size;
  n = MIN ((uint64_t) per_slice - first,
           ((offset & (cs - 1)) + max_len + cs - 1) >> cb);
  if (mcache_read (img->cache, img->file, img, slice_offset,
                    img->slice_size, first * h->l2_entry_size, n * h->l2_entry_size,
                    entries) == -1) {
    qerror ("%s: read L2 table at 0x%" PRIx64 ": %m",
            img->file->name, slice_offset);
    return -1;
  }

  for (unsigned i = 0; i < n; i++) {
    uint64_t cluster_start = ((offset >> cb) + i) << cb;
    uint64_t from = MAX (offset, cluster_start);
    uint64_t to = MIN (end, cluster_start + cs);
    uint64_t e = be64toh (entries[i * words]);
    uint64_t bitmap = words == 2 ? be64toh (entries[i * words + 1]) : 0;
    int r;

    r = add_cluster (img, cluster_start, from, to, e, bitmap, run);
    if (r == -1)
      return -1;
    if (r == 1)
      break;
  }
  if (qlog_debug_map)
    qdebug ("map: 0x%" PRIx64 "+%" PRIu64 " -> type %d host 0x%" PRIx64,
            offset, run->length, run->type, run->host_offset);
  return 0;
}
