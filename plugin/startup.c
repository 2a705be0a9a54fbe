/* nbdkit-qcow2j-plugin: opening the image, and deciding once, at
 * startup, whether it is served writable.
 *
 * Like qemu-nbd, the server refuses to start when the image cannot be
 * served as asked: another process holds QEMU's locks on it, the file or
 * its file system is read-only, or the image is marked corrupt.
 * This runs in .get_ready, the last point where errors reach the user's
 * terminal (later, in the default forking mode, they go to syslog).  A
 * read-only fallback happens only with readonly=auto, and is said once.
 * Served read-only (readonly=true, nbdkit -r, or a filter that opens the
 * plugin read-only), the image takes no write lock and nothing refuses
 * it for being unwritable.
 *
 * QEMU's locks are OFD locks: they belong to the open file description,
 * which nbdkit's fork into the background shares with the child that
 * serves; the parent exits, and the child holds them.
 *
 * An internal snapshot (snapshot=) is always served read-only, as
 * qemu-nbd -l serves it; that is said once unless the user asked for
 * read-only.
 *
 * A dirty journal (a server killed) is replayed here too: in place when
 * the image is served writable, in memory otherwise (the file is then
 * unchanged), before a snapshot is looked up.  The journal itself is set up at the first write, so an
 * image served writable but only read is never modified.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "image.h"
#include "log.h"
#include "minmax.h"
#include "qcow2j.h"

/* Check that img can be written and take QEMU's writer locks; replay a
 * dirty journal in place.  Reports why not through the lib's error
 * handler. */
static int
make_writable (struct qcow2_image *img)
{
  const char *filename = qcow2j_params.filename;

  if (!qcow2_can_write (img)) {
    if (access (filename, W_OK) == 0)
      errno = EROFS;
    qerror ("%s: cannot open it for writing: %m", filename);
    return -1;
  }
  if (qcow2_prepare_writable (img) == -1)
    return -1;
  if (!qcow2_journal_dirty (img))
    return 0;
  if (qcow2_make_writable (img) == -1)
    return -1;
  qcow2j_notice ("%s: replayed the journal of a server that did not stop "
                 "cleanly: the image is consistent again", filename);
  return 0;
}

/* readonly=auto: the reasons not to write are notices, not errors. */
static int
try_writable (struct qcow2_image *img)
{
  int r;

  if (qcow2j_params.readonly != READONLY_AUTO)
    return make_writable (img);
  qlog_set_handlers (qcow2j_vnotice, nbdkit_vdebug);
  r = make_writable (img);
  qlog_set_handlers (nbdkit_verror, nbdkit_vdebug);
  if (r == -1)
    qcow2j_notice ("%s: readonly=auto: serving it read-only",
                   qcow2j_params.filename);
  return r;
}

/* create=true found an image: say so if it is not the size asked. */
static void
check_existing_size (struct qcow2_image *img)
{
  const struct qcow2j_params *p = &qcow2j_params;
  const int64_t want = p->create_opts.size;

  if (!p->create || p->created || want == -1 ||
      qcow2_size (img) == ROUND_UP ((uint64_t) want, 512))
    return;
  qcow2j_notice ("%s: warning: create=true: the image exists, of size %"
                 PRIu64 " and not size=%" PRIi64 ": serving it unchanged",
                 p->filename, qcow2_size (img), want);
}

struct qcow2_image *
qcow2j_open_image (bool *writable)
{
  const struct qcow2j_params *p = &qcow2j_params;
  const bool readonly =
    p->readonly == READONLY_TRUE || qcow2j_cmdline_readonly ();
  const bool snapshot = qcow2j_params_snapshot ();
  const bool want_write = !readonly && !snapshot;
  const struct qcow2_open_options opts = {
    .l2_cache_bytes = p->l2_cache_bytes,
    .lock = p->locking,
    .writable = want_write,
  };
  struct qcow2_image *img;

  *writable = false;
  img = qcow2_open (p->filename, &opts);
  if (img == NULL)
    return NULL;
  check_existing_size (img);

  if (want_write) {
    if (try_writable (img) == 0)
      *writable = true;
    else if (p->readonly != READONLY_AUTO) {
      nbdkit_error ("%s: not served: it cannot be written (-r or "
                    "readonly=true serve it read-only; readonly=auto "
                    "does when it cannot be written)", p->filename);
      goto fail;
    }
  }
  if (!*writable && qcow2_journal_dirty (img)) {
    if (qcow2_replay_in_memory (img) == -1)
      goto fail;
    qcow2j_notice ("%s: replayed the journal of a server that did not stop "
                   "cleanly in memory, read-only: the file is unchanged "
                   "(serve it writable once to repair it)", p->filename);
  }
  if (snapshot) {
    if (qcow2_load_snapshot (img, &p->snapshot) == -1)
      goto fail;
    if (!readonly)
      qcow2j_notice ("%s: serving an internal snapshot read-only, as "
                     "qemu-nbd -l does", p->filename);
  }
  return img;

 fail:
  qcow2_close (img);
  return NULL;
}
