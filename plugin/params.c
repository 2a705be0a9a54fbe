/* nbdkit-qcow2j-plugin: the plugin's parameters.
 *
 * Parsed in .config, checked together in .config_complete, where a new
 * image is created (create=true) so that a bad option stops the server
 * before it starts.  Every message names the parameter it is about.
 * The creation options are qemu-img's (-o backing_file=, refcount_bits=,
 * ...), spelt the nbdkit way, with dashes.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "qcow2j.h"

struct qcow2j_params qcow2j_params = {
  .locking = true,
  .create_opts = {
    .size = -1,
    .cluster_size = 65536,
    .refcount_bits = 16,
    .prealloc = QCOW2_PREALLOC_OFF,
  },
};

static const char *file_arg;            /* file=, as given */
static const char *create_key;          /* the first creation option given */

void
qcow2j_params_free (void)
{
  free (qcow2j_params.filename);
  qcow2j_params.filename = NULL;
}

bool
qcow2j_params_snapshot (void)
{
  const struct qcow2_snapshot_choice *s = &qcow2j_params.snapshot;

  return s->id_or_name || s->id || s->name;
}

static int
parse_bool (const char *key, const char *value, bool *b)
{
  int r = nbdkit_parse_bool (value);

  if (r == -1) {
    nbdkit_error ("%s=%s: expected true or false", key, value);
    return -1;
  }
  *b = r;
  return 0;
}

static int
parse_size (const char *key, const char *value, int64_t *size)
{
  *size = nbdkit_parse_size (value);
  if (*size == -1) {
    nbdkit_error ("%s=%s: expected a size such as 10G", key, value);
    return -1;
  }
  return 0;
}

static int
parse_readonly (const char *value)
{
  int r;

  if (strcmp (value, "auto") == 0) {
    qcow2j_params.readonly = READONLY_AUTO;
    return 0;
  }
  r = nbdkit_parse_bool (value);
  if (r == -1) {
    nbdkit_error ("readonly=%s: expected true, false or auto", value);
    return -1;
  }
  qcow2j_params.readonly = r ? READONLY_TRUE : READONLY_FALSE;
  return 0;
}

/* The options of a new image (create=true). */
static int
config_create (const char *key, const char *value)
{
  struct qcow2_create_options *o = &qcow2j_params.create_opts;
  int64_t n;

  if (create_key == NULL)
    create_key = key;
  if (strcmp (key, "size") == 0)
    return parse_size (key, value, &o->size);
  if (strcmp (key, "cluster-size") == 0) {
    if (parse_size (key, value, &n) == -1)
      return -1;
    o->cluster_size = n;
    return 0;
  }
  if (strcmp (key, "backing-file") == 0) {
    o->backing_file = value;
    return 0;
  }
  if (strcmp (key, "backing-format") == 0) {
    o->backing_format = value;
    return 0;
  }
  if (strcmp (key, "refcount-bits") == 0)
    return nbdkit_parse_unsigned (key, value, &o->refcount_bits);
  if (strcmp (key, "extended-l2") == 0)
    return parse_bool (key, value, &o->extended_l2);
  if (strcmp (key, "lazy-refcounts") == 0)
    return parse_bool (key, value, &o->lazy_refcounts);
  if (strcmp (key, "compression-type") == 0) {
    if (strcmp (value, "zlib") != 0 && strcmp (value, "zstd") != 0) {
      nbdkit_error ("compression-type=%s: expected zlib or zstd", value);
      return -1;
    }
    o->zstd = strcmp (value, "zstd") == 0;
    return 0;
  }
  /* preallocation */
  if (strcmp (value, "off") == 0)
    o->prealloc = QCOW2_PREALLOC_OFF;
  else if (strcmp (value, "metadata") == 0)
    o->prealloc = QCOW2_PREALLOC_METADATA;
  else if (strcmp (value, "falloc") == 0)
    o->prealloc = QCOW2_PREALLOC_FALLOC;
  else if (strcmp (value, "full") == 0)
    o->prealloc = QCOW2_PREALLOC_FULL;
  else {
    nbdkit_error ("preallocation=%s: expected off, metadata, falloc or full",
                  value);
    return -1;
  }
  return 0;
}

static bool
is_create_key (const char *key)
{
  static const char *const keys[] = {
    "size", "cluster-size", "backing-file", "backing-format",
    "refcount-bits", "extended-l2", "lazy-refcounts", "compression-type",
    "preallocation",
  };

  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (strcmp (key, keys[i]) == 0)
      return true;
  return false;
}

int
qcow2j_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0)
    file_arg = value;           /* resolved in .config_complete */
  else if (strcmp (key, "readonly") == 0)
    return parse_readonly (value);
  else if (strcmp (key, "l2-cache-size") == 0) {
    int64_t size;

    if (parse_size (key, value, &size) == -1)
      return -1;
    if (size < 65536) {
      nbdkit_error ("l2-cache-size=%s: must be at least 64K", value);
      return -1;
    }
    qcow2j_params.l2_cache_bytes = size;
  }
  else if (strcmp (key, "create") == 0)
    return parse_bool (key, value, &qcow2j_params.create);
  else if (strcmp (key, "locking") == 0)
    return parse_bool (key, value, &qcow2j_params.locking);
  else if (strcmp (key, "snapshot") == 0)
    qcow2j_params.snapshot.id_or_name = value;
  else if (strcmp (key, "snapshot-id") == 0)
    qcow2j_params.snapshot.id = value;
  else if (strcmp (key, "snapshot-name") == 0)
    qcow2j_params.snapshot.name = value;
  else if (is_create_key (key))
    return config_create (key, value);
  else {
    nbdkit_error ("unknown parameter '%s' (nbdkit qcow2j --help lists them)",
                  key);
    return -1;
  }
  return 0;
}

int
qcow2j_config_complete (void)
{
  struct qcow2j_params *p = &qcow2j_params;
  struct qcow2_create_options *o = &p->create_opts;

  if (file_arg == NULL) {
    nbdkit_error ("you must supply the file=<FILENAME> parameter");
    return -1;
  }
  if (p->snapshot.id_or_name && (p->snapshot.id || p->snapshot.name)) {
    nbdkit_error ("snapshot=%s: goes alone (snapshot-id= and snapshot-name= "
                  "name a snapshot together)", p->snapshot.id_or_name);
    return -1;
  }
  if (create_key && !p->create) {
    nbdkit_error ("%s= only goes with create=true", create_key);
    return -1;
  }
  /* Absolute now (nbdkit changes directory to / when it daemonizes), but
   * not through symlinks: QEMU looks backing files up relative to the
   * path the user gave, and so does lib/. */
  p->filename = nbdkit_absolute_path (file_arg);
  if (p->filename == NULL)
    return -1;
  if (access (p->filename, F_OK) == 0)
    return 0;
  if (errno != ENOENT || !p->create) {
    nbdkit_error ("%s: cannot open the image: %m%s", file_arg,
                  errno == ENOENT ?
                  " (to make a new one add create=true size=SIZE)" : "");
    return -1;
  }
  if (o->backing_file && o->backing_format == NULL) {
    nbdkit_error ("%s: backing-file= needs backing-format=qcow2 or raw "
                  "(as qemu-img create needs -F)", file_arg);
    return -1;
  }
  if (o->size == -1 && o->backing_file == NULL) {
    nbdkit_error ("%s: create=true needs size= (or backing-file=) for a "
                  "new image", file_arg);
    return -1;
  }
  if (qcow2_create_image (p->filename, o, true) == -1)
    return -1;
  p->created = true;
  return 0;
}
