/* Unit tests of header validation, L1/L2 mapping and compressed clusters,
 * on images built byte by byte in memory. */
#include <config.h>

#include <stdarg.h>
#include <zlib.h>

#include "byteorder.h"
#include "format.h"
#include "image.h"
#include "log.h"
#include "mem-io.h"
#include "unit.h"

#define CS 65536ULL                     /* cluster size of the test image */
#define SIZE (1ULL << 30)               /* virtual size: 2 L1 entries */
#define REFTABLE (1 * CS)
#define REFBLOCK (2 * CS)
#define L1 (3 * CS)
#define L2 (4 * CS)
#define DATA (5 * CS)
#define COMPRESSED (6 * CS)
#define FILE_SIZE (8 * CS)

static char last_error[1024];

static void
capture (const char *fs, va_list args)
{
  vsnprintf (last_error, sizeof last_error, fs, args);
}

/* A valid v3 image: guest cluster 0 -> DATA (0xaa bytes), guest cluster 1
 * a zero cluster, guest cluster 2 compressed (0x5b bytes), the rest
 * unallocated. */
static struct mem_io *
make_image (void)
{
  struct mem_io *m = mem_io_new ("test.qcow2", FILE_SIZE);
  uint8_t *h = m->data;
  uint8_t plain[CS], packed[CS];
  z_stream z = { 0 };
  uint64_t nsect, csize_shift = 62 - (16 - 8);

  put_be32 (h, QCOW2_MAGIC);
  put_be32 (h + 4, 3);
  put_be32 (h + 20, 16);                /* cluster_bits */
  put_be64 (h + 24, SIZE);
  put_be32 (h + 36, 2);                 /* l1_size */
  put_be64 (h + 40, L1);
  put_be64 (h + 48, REFTABLE);
  put_be32 (h + 56, 1);
  put_be32 (h + 96, 4);                 /* refcount_order */
  put_be32 (h + 100, 104);              /* header_length */
  put_be64 (m->data + REFTABLE, REFBLOCK);
  put_be64 (m->data + L1, L2 | QCOW_OFLAG_COPIED);
  put_be64 (m->data + L2, DATA | QCOW_OFLAG_COPIED);
  put_be64 (m->data + L2 + 8, QCOW_OFLAG_ZERO);
  memset (m->data + DATA, 0xaa, CS);

  memset (plain, 0x5b, CS);
  REQUIRE (deflateInit2 (&z, 9, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY)
           == Z_OK);
  z.next_in = plain;
  z.avail_in = CS;
  z.next_out = packed;
  z.avail_out = CS;
  CHECK (deflate (&z, Z_FINISH) == Z_STREAM_END);
  memcpy (m->data + COMPRESSED, packed, z.total_out);
  nsect = (z.total_out + 511) / 512;
  deflateEnd (&z);
  put_be64 (m->data + L2 + 16, QCOW_OFLAG_COMPRESSED |
            ((nsect - 1) << csize_shift) | COMPRESSED);
  return m;
}

static struct qcow2_image *
open_mem (struct mem_io *m)
{
  struct qcow2_open_options opts = { .l2_cache_bytes = 1 << 20 };

  last_error[0] = '\0';
  return qcow2_open_hostio (&m->io, NULL, &opts);
}

/* Patch a big-endian field of a fresh image; the open must fail with
 * errno err and a message containing want. */
static void
expect_refused (unsigned off, unsigned width, uint64_t value, int err,
                const char *want)
{
  struct mem_io *m = make_image ();
  struct qcow2_image *img;

  if (width == 4)
    put_be32 (m->data + off, value);
  else
    put_be64 (m->data + off, value);
  errno = 0;
  img = open_mem (m);
  if (img != NULL) {
    fprintf (stderr, "field at %u = 0x%llx: accepted\n", off,
             (unsigned long long) value);
    CHECK (img == NULL);
  }
  if (errno != err || strstr (last_error, want) == NULL) {
    fprintf (stderr, "field at %u = 0x%llx: errno %d, message: %s\n",
             off, (unsigned long long) value, errno, last_error);
    CHECK (!"wrong error");
  }
}

static int
count_extent (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  uint64_t *types = opaque;

  /* Record the type of each of the first 4 clusters. */
  for (uint64_t c = offset / CS; c < 4 && c * CS < offset + length; c++)
    types[c] = type;
  return 0;
}

UNIT_CASE (valid)
{
  struct qcow2_image *img = open_mem (make_image ());
  uint8_t buf[3 * CS];
  uint64_t types[4] = { 99, 99, 99, 99 };

  REQUIRE (img != NULL);
  CHECK (qcow2_size (img) == SIZE);
  CHECK (qcow2_pread (img, buf, sizeof buf, 0) == 0);
  for (uint64_t i = 0; i < CS; i++)
    CHECK (buf[i] == 0xaa && buf[CS + i] == 0 && buf[2 * CS + i] == 0x5b);
  /* Unaligned read across data and zero clusters. */
  CHECK (qcow2_pread (img, buf, 100, CS - 50) == 0);
  CHECK (buf[0] == 0xaa && buf[49] == 0xaa && buf[50] == 0 && buf[99] == 0);
  /* Past the first L1 entry's span: unallocated, zeroes. */
  CHECK (qcow2_pread (img, buf, 4096, SIZE - 4096) == 0);
  CHECK (buf[0] == 0 && buf[4095] == 0);

  CHECK (qcow2_extents (img, 4 * CS, 0, false, count_extent, types) == 0);
  CHECK (types[0] == 0);
  CHECK (types[1] == (QCOW2_EXTENT_HOLE | QCOW2_EXTENT_ZERO));
  CHECK (types[2] == 0);
  CHECK (types[3] == (QCOW2_EXTENT_HOLE | QCOW2_EXTENT_ZERO));
  qcow2_close (img);
}

UNIT_CASE (bad_header)
{
  expect_refused (0, 4, 0x12345678, EINVAL, "magic");
  expect_refused (4, 4, 4, EINVAL, "version 4");
  expect_refused (4, 4, 1, EINVAL, "version 1");
  expect_refused (20, 4, 8, EINVAL, "cluster_bits 8");
  expect_refused (20, 4, 22, EINVAL, "cluster_bits 22");
  expect_refused (20, 4, 0xffffffff, EINVAL, "cluster_bits");
  expect_refused (100, 4, 100, EINVAL, "header_length 100");
  expect_refused (100, 4, 108 + 3, EINVAL, "header_length");
  expect_refused (100, 4, 2 * CS, EINVAL, "header_length");
  expect_refused (96, 4, 7, EINVAL, "refcount_order 7");
  expect_refused (24, 8, 1ULL << 63, EINVAL, "size");
  expect_refused (36, 4, 1, EINVAL, "l1_size 1 is too small");
  expect_refused (36, 4, 0x7fffffff, EINVAL, "l1_size");
  expect_refused (40, 8, L1 + 8, EINVAL, "l1_table_offset");
  expect_refused (40, 8, 0, EINVAL, "l1_table_offset");
  expect_refused (40, 8, FILE_SIZE, EINVAL, "l1_table_offset");
  expect_refused (48, 8, 0, EINVAL, "refcount_table_offset");
  expect_refused (48, 8, REFTABLE + 512, EINVAL, "refcount_table_offset");
  expect_refused (48, 8, L1, EINVAL, "overlaps");
  expect_refused (56, 4, 1000, EINVAL, "refcount_table_clusters");
  expect_refused (56, 4, 0, EINVAL, "refcount_table_clusters");
  expect_refused (60, 4, 1000000, EINVAL, "nb_snapshots");
  expect_refused (32, 4, 2, ENOTSUP, "encrypted");
  expect_refused (72, 8, 1ULL << 20, ENOTSUP, "bit 20");
  expect_refused (72, 8, QCOW2_INCOMPAT_COMPRESSION, EINVAL,
                  "compression_type");
  expect_refused (72, 8, QCOW2_INCOMPAT_DATA_FILE, EINVAL, "data file");
  expect_refused (8, 8, 4000, EINVAL, "backing_file");
  /* backing_file_size only counts when backing_file_offset is set. */
  {
    struct mem_io *m = make_image ();
    put_be64 (m->data + 8, 512);
    put_be32 (m->data + 16, 5000);
    CHECK (open_mem (m) == NULL);
    CHECK (strstr (last_error, "backing_file_size 5000") != NULL);
  }
}

UNIT_CASE (feature_name)
{
  struct mem_io *m = make_image ();
  uint8_t *ext = m->data + 104;

  put_be64 (m->data + 72, 1ULL << 59);
  put_be32 (ext, QCOW2_EXT_FEATURE_NAMES);
  put_be32 (ext + 4, 48);
  ext[8] = 0;
  ext[9] = 59;
  strcpy ((char *) ext + 10, "some future feature");
  CHECK (open_mem (m) == NULL);
  CHECK (errno == ENOTSUP);
  CHECK (strstr (last_error, "some future feature (bit 59)") != NULL);

  /* An extension that runs past the header cluster. */
  m = make_image ();
  put_be32 (m->data + 104, 0x12345678);
  put_be32 (m->data + 108, CS);
  CHECK (open_mem (m) == NULL);
  CHECK (strstr (last_error, "runs past") != NULL);
}

/* Metadata that is only met while reading fails that read with EIO. */
static void
expect_read_eio (uint64_t where, uint64_t value, uint64_t guest,
                 const char *want)
{
  struct mem_io *m = make_image ();
  struct qcow2_image *img;
  uint8_t buf[512];

  put_be64 (m->data + where, value);
  img = open_mem (m);
  REQUIRE (img != NULL);
  errno = 0;
  CHECK (qcow2_pread (img, buf, sizeof buf, guest) == -1);
  if (errno != EIO || strstr (last_error, want) == NULL) {
    fprintf (stderr, "entry at 0x%llx: errno %d, message: %s\n",
             (unsigned long long) where, errno, last_error);
    CHECK (!"wrong error");
  }
  /* The rest of the disk still reads. */
  CHECK (qcow2_pread (img, buf, sizeof buf, SIZE - 512) == 0);
  qcow2_close (img);
}

UNIT_CASE (bad_entries)
{
  expect_read_eio (L1, L2 | 1, 0, "reserved");
  expect_read_eio (L1, L2 + 512, 0, "not cluster aligned");
  expect_read_eio (L1, 100 * CS, 0, "past the end");
  expect_read_eio (L2, DATA | (1ULL << 60), 0, "reserved");
  expect_read_eio (L2, DATA + 512, 0, "not cluster aligned");
  expect_read_eio (L2, 1000 * CS, 0, "past the end");
  expect_read_eio (L2 + 16, QCOW_OFLAG_COMPRESSED | (1ULL << 40), 2 * CS,
                   "past the end");
  /* Garbage where compressed data should be. */
  expect_read_eio (L2 + 16, QCOW_OFLAG_COMPRESSED | DATA, 2 * CS,
                   "decompress");
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (valid),
  UNIT_ENTRY (bad_header),
  UNIT_ENTRY (feature_name),
  UNIT_ENTRY (bad_entries),
};

int
main (int argc, char *argv[])
{
  UNIT_SELECT (argc, argv, cases);
  qlog_set_handlers (capture, NULL);
  return UNIT_RUN (cases);
}
