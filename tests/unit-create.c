/* Unit tests of qcow2_create: images of many cluster sizes and virtual
 * sizes, checked by qcow2j itself and by QEMU (qemu-img check, info,
 * compare), byte-compared with what qemu-img create writes, and the
 * parameters and situations that must be refused. */
#include <config.h>

#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "create.h"
#include "format.h"
#include "image.h"
#include "byteorder.h"
#include "log.h"
#include "run-shell.h"
#include "unit.h"

#define KiB (1ULL << 10)
#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define TiB (1ULL << 40)

/* The largest size QEMU accepts: a 32 MiB L1 table. */
#define MAX_SIZE(cs, ext) ((QCOW2_MAX_L1_BYTES / 8) * (cs) * ((cs) / ((ext) ? 16 : 8)))

static char dir[256];
static char last_error[1024];

static void
capture (const char *fs, va_list args)
{
  vsnprintf (last_error, sizeof last_error, fs, args);
  fprintf (stderr, "qcow2j: %s\n", last_error);
}


static uint8_t *
slurp (const char *path, uint64_t *len)
{
  struct stat st;
  uint8_t *buf;
  int fd = open (path, O_RDONLY);

  REQUIRE (fd >= 0);
  REQUIRE (fstat (fd, &st) == 0);
  *len = st.st_size;
  buf = malloc (*len ? *len : 1);
  REQUIRE (buf != NULL);
  CHECK (pread (fd, buf, *len, 0) == (ssize_t) *len);
  close (fd);
  return buf;
}

static uint64_t
json_number (const char *json, const char *key)
{
  char pat[64];
  const char *p;

  snprintf (pat, sizeof pat, "\"%s\": ", key);
  p = strstr (json, pat);
  REQUIRE (p != NULL);
  return strtoull (p + strlen (pat), NULL, 10);
}

/* qemu-img info agrees on the virtual size, cluster size and L2 kind. */
static void
check_qemu_info (const char *path, uint64_t size, uint64_t cs, bool ext)
{
  char cmd[512], json[8192];
  size_t n;
  FILE *fp;

  snprintf (cmd, sizeof cmd, "qemu-img info --output=json '%s'", path);
  fp = popen (cmd, "r");
  REQUIRE (fp != NULL);
  n = fread (json, 1, sizeof json - 1, fp);
  json[n] = '\0';
  CHECK (pclose (fp) == 0);
  CHECK (strstr (json, "\"format\": \"qcow2\"") != NULL);
  CHECK (json_number (json, "virtual-size") == size);
  CHECK (json_number (json, "cluster-size") == cs);
  CHECK (strstr (json, ext ? "\"extended-l2\": true"
                 : "\"extended-l2\": false") != NULL);
  CHECK (strstr (json, "\"compression-type\": \"zlib\"") != NULL);
  CHECK (strstr (json, "\"refcount-bits\": 16") != NULL);
  CHECK (strstr (json, "\"lazy-refcounts\": false") != NULL);
  CHECK (strstr (json, "\"dirty-flag\": false") != NULL);
}

static int
check_extent (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  uint64_t *end = opaque;

  CHECK (offset == *end);
  CHECK (length > 0);
  CHECK (type == (QCOW2_EXTENT_HOLE | QCOW2_EXTENT_ZERO));
  *end = offset + length;
  return 0;
}

/* qcow2j opens the image and reads zeroes everywhere. */
static void
check_qcow2j (const char *path, uint64_t size, uint64_t cs)
{
  struct qcow2_open_options opts = { .lock = true };
  struct qcow2_image *img = qcow2_open (path, &opts);
  const uint64_t len = size < 64 * KiB ? size : 64 * KiB;
  const uint64_t offsets[] = {
    0, (size / 2) & ~511ULL, size - len, size - 512,
  };
  static uint8_t buf[64 * KiB];
  uint64_t end = 0;

  REQUIRE (img != NULL);
  CHECK (qcow2_size (img) == size);
  CHECK (qcow2_cluster_size (img) == cs);
  CHECK (!qcow2_is_corrupt (img));
  for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
    uint64_t n = offsets[i] + len <= size ? len : size - offsets[i];

    memset (buf, 0xa5, sizeof buf);
    CHECK (qcow2_pread (img, buf, n, offsets[i]) == 0);
    for (uint64_t j = 0; j < n; j++)
      CHECK (buf[j] == 0);
  }
  CHECK (qcow2_extents (img, size, 0, true, check_extent, &end) == 0);
  CHECK (end > 0);
  if (size <= GiB) {
    end = 0;
    while (end < size)
      CHECK (qcow2_extents (img, size - end, end, false,
                            check_extent, &end) == 0);
  }
  qcow2_close (img);
}

/* The header cluster matches qemu-img's byte for byte, table offsets
 * aside; with the same layout (header, refcount table, refcount block, L1
 * in clusters 0 to 3) the whole file does, except that ours runs to the
 * end of the last L1 cluster. */
static void
compare_with_qemu (const char *path, uint64_t size, uint64_t cs, bool ext)
{
  char qpath[512];
  uint8_t *ours, *theirs;
  uint64_t our_len, their_len;
  bool same_layout;

  snprintf (qpath, sizeof qpath, "%s/qemu.qcow2", dir);
  CHECK (run_shell ("qemu-img create -q -f qcow2 -o cluster_size=%llu%s "
              "'%s' %llu", (unsigned long long) cs,
              ext ? ",extended_l2=on" : "", qpath,
              (unsigned long long) size) == 0);
  ours = slurp (path, &our_len);
  theirs = slurp (qpath, &their_len);
  CHECK (unlink (qpath) == 0);
  CHECK (our_len % cs == 0);

  same_layout = get_be64 (ours + 40) == 3 * cs &&
    get_be64 (ours + 48) == cs && get_be64 (theirs + 40) == 3 * cs &&
    get_be64 (theirs + 48) == cs;
  if (same_layout) {
    CHECK (our_len == (their_len + cs - 1) / cs * cs);
    CHECK (memcmp (ours, theirs, their_len) == 0);
    for (uint64_t i = their_len; i < our_len; i++)
      CHECK (ours[i] == 0);
  }
  else {
    /* l1_table_offset, refcount_table_offset, refcount_table_clusters */
    memset (ours + 40, 0, 20);
    memset (theirs + 40, 0, 20);
    CHECK (memcmp (ours, theirs, cs) == 0);
  }
  free (ours);
  free (theirs);
}

static void
test_create (uint64_t cs, uint64_t size, bool ext)
{
  char path[512], raw[512];

  fprintf (stderr, "create: cluster size %llu, size %llu, extended L2 %s\n",
           (unsigned long long) cs, (unsigned long long) size,
           ext ? "on" : "off");
  snprintf (path, sizeof path, "%s/test.qcow2", dir);
  CHECK (qcow2_create (path, size, cs, ext, true) == 0);

  check_qcow2j (path, size, cs);
  CHECK (run_shell ("qemu-img check -q '%s'", path) == 0);
  check_qemu_info (path, size, cs, ext);
  compare_with_qemu (path, size, cs, ext);
  if (size <= GiB) {
    snprintf (raw, sizeof raw, "%s/zero.raw", dir);
    CHECK (run_shell ("truncate -s %llu '%s'", (unsigned long long) size, raw)
           == 0);
    CHECK (run_shell ("qemu-img compare -q -f qcow2 -F raw '%s' '%s'",
                path, raw) == 0);
    CHECK (unlink (raw) == 0);
  }
  CHECK (unlink (path) == 0);
}

/* Parameters refused with EINVAL and a message containing want, without
 * creating the file. */
static void
expect_invalid (uint64_t size, uint64_t cs, bool ext, const char *want)
{
  char path[512];

  snprintf (path, sizeof path, "%s/invalid.qcow2", dir);
  last_error[0] = '\0';
  errno = 0;
  CHECK (qcow2_create (path, size, cs, ext, false) == -1);
  if (errno != EINVAL || strstr (last_error, want) == NULL) {
    fprintf (stderr, "size %llu, cluster size %llu: errno %d, message: %s\n",
             (unsigned long long) size, (unsigned long long) cs, errno,
             last_error);
    CHECK (!"wrong error");
  }
  CHECK (access (path, F_OK) == -1 && errno == ENOENT);
}

/* The size limit is QEMU's: its maximum is accepted by both, one sector
 * more refused by both. */
static void
test_limit (uint64_t cs, bool ext)
{
  const uint64_t max = MAX_SIZE (cs, ext);
  char qpath[512];

  snprintf (qpath, sizeof qpath, "%s/qemu.qcow2", dir);
  CHECK (run_shell ("qemu-img create -q -f qcow2 -o cluster_size=%llu%s "
              "'%s' %llu 2>/dev/null", (unsigned long long) cs,
              ext ? ",extended_l2=on" : "", qpath,
              (unsigned long long) max + 512) != 0);
  unlink (qpath);
  expect_invalid (max + 512, cs, ext, "too large");
  test_create (cs, max, ext);
}

UNIT_CASE (invalid)
{
  expect_invalid (GiB, 0, false, "cluster size 0 is not a power of two");
  expect_invalid (GiB, 256, false, "cluster size 256");
  expect_invalid (GiB, 1000, false, "cluster size 1000");
  expect_invalid (GiB, 3 * 512, false, "not a power of two");
  expect_invalid (GiB, 4 * MiB, false, "cluster size 4194304");
  expect_invalid (GiB, 1ULL << 63, false, "not a power of two");
  expect_invalid (GiB, 8 * KiB, true, "extended L2 entries need");
  expect_invalid (GiB, 512, true, "extended L2 entries need");
  expect_invalid (TiB, 512, false, "too large for cluster size 512");
  expect_invalid (UINT64_MAX & ~511ULL, 2 * MiB, false, "too large");
  expect_invalid (INT64_MAX & ~511ULL, 2 * MiB, true, "too large");
  expect_invalid (MAX_SIZE (64 * KiB, true) + 512, 64 * KiB, true,
                  "with extended L2 entries");
}

UNIT_CASE (exclusive)
{
  char path[512];
  uint8_t *before, *after;
  uint64_t before_len, after_len;

  snprintf (path, sizeof path, "%s/excl.qcow2", dir);
  CHECK (qcow2_create (path, GiB, 64 * KiB, false, true) == 0);
  before = slurp (path, &before_len);
  errno = 0;
  CHECK (qcow2_create (path, 2 * GiB, 4 * KiB, false, true) == -1);
  CHECK (errno == EEXIST);
  after = slurp (path, &after_len);
  CHECK (before_len == after_len && memcmp (before, after, after_len) == 0);
  free (before);
  free (after);
  CHECK (unlink (path) == 0);
}

/* Without exclusive an existing file is overwritten, shorter. */
UNIT_CASE (overwrite)
{
  char path[512];

  snprintf (path, sizeof path, "%s/old.qcow2", dir);
  CHECK (run_shell ("head -c %llu /dev/urandom > '%s'",
              (unsigned long long) (3 * MiB), path) == 0);
  CHECK (qcow2_create (path, GiB, 64 * KiB, false, false) == 0);
  CHECK (run_shell ("qemu-img check -q '%s'", path) == 0);
  check_qemu_info (path, GiB, 64 * KiB, false);
  check_qcow2j (path, GiB, 64 * KiB);
  CHECK (run_shell ("test $(stat -c %%s '%s') = %llu", path,
              (unsigned long long) (4 * 64 * KiB)) == 0);
  CHECK (unlink (path) == 0);
}

/* An image in use (here: open in qcow2j with QEMU's locks) is not
 * overwritten. */
UNIT_CASE (locked)
{
  struct qcow2_open_options opts = { .lock = true };
  struct qcow2_image *img;
  char path[512];

  snprintf (path, sizeof path, "%s/locked.qcow2", dir);
  CHECK (qcow2_create (path, GiB, 64 * KiB, false, true) == 0);
  img = qcow2_open (path, &opts);
  REQUIRE (img != NULL);
  errno = 0;
  CHECK (qcow2_create (path, 2 * GiB, 64 * KiB, false, false) == -1);
  CHECK (errno == EAGAIN);
  qcow2_close (img);
  check_qemu_info (path, GiB, 64 * KiB, false);
  CHECK (qcow2_create (path, 2 * GiB, 64 * KiB, false, false) == 0);
  check_qemu_info (path, 2 * GiB, 64 * KiB, false);
  CHECK (unlink (path) == 0);
}

UNIT_CASE (bad_paths)
{
  char path[512];

  /* Not a regular file: refused, and certainly not removed. */
  errno = 0;
  CHECK (qcow2_create ("/dev/null", GiB, 64 * KiB, false, false) == -1);
  CHECK (errno == EINVAL);
  CHECK (access ("/dev/null", F_OK) == 0);

  snprintf (path, sizeof path, "%s/no/such/dir.qcow2", dir);
  errno = 0;
  CHECK (qcow2_create (path, GiB, 64 * KiB, false, true) == -1);
  CHECK (errno == ENOENT);
}

/* Images of every cluster size, small and large. */
static const struct {
  uint64_t cs, size;
  bool ext;
} configs[] = {
  { 512, MiB, false },
  { 512, GiB, false },                /* several refcount blocks */
  { 4 * KiB, MiB, false },
  { 4 * KiB, GiB, false },
  { 4 * KiB, TiB, false },
  { 16 * KiB, GiB, true },
  { 64 * KiB, MiB, false },
  { 64 * KiB, MiB, true },
  { 64 * KiB, MiB + 512, false },     /* partial cluster at the end */
  { 64 * KiB, GiB, false },
  { 64 * KiB, GiB, true },
  { 64 * KiB, TiB, false },
  { 64 * KiB, TiB, true },
  { 64 * KiB, 16 * TiB, false },
  { 64 * KiB, 16 * TiB, true },
  { 2 * MiB, MiB, false },
  { 2 * MiB, MiB, true },
  { 2 * MiB, GiB, false },
  { 2 * MiB, 16 * TiB, false },
  { 2 * MiB, 16 * TiB, true },
};

UNIT_CASE (create)
{
  for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
    test_create (configs[i].cs, configs[i].size, configs[i].ext);
}

/* Each a 32 MiB L1 table; with 512-byte clusters, 65536 clusters of it
 * and a refcount table of several clusters. */
UNIT_CASE (limit)
{
  test_limit (512, false);
  test_limit (64 * KiB, true);
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (create),
  UNIT_ENTRY (limit),
  UNIT_ENTRY (invalid),
  UNIT_ENTRY (exclusive),
  UNIT_ENTRY (overwrite),
  UNIT_ENTRY (locked),
  UNIT_ENTRY (bad_paths),
};

int
main (int argc, char *argv[])
{
  const char *tmp = getenv ("TMPDIR");

  UNIT_SELECT (argc, argv, cases);
  if (system ("qemu-img --version >/dev/null 2>&1") != 0) {
    fprintf (stderr, "unit-create: qemu-img not found, skipping\n");
    return 77;
  }
  qlog_set_handlers (capture, NULL);
  snprintf (dir, sizeof dir, "%s/unit-create.XXXXXX", tmp ? tmp : "/tmp");
  REQUIRE (mkdtemp (dir) != NULL);
  UNIT_RUN (cases);
  /* Every case removed what it made, and no refused create left a file. */
  CHECK (rmdir (dir) == 0);
  return unit_status ();
}
