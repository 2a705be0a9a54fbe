/* qcow2j lib: refusing guest I/O, frees and punches that would hit the
 * image's own metadata.
 *
 * An L2 entry that names the header, a table or the journal can come from
 * a crafted image, from a bug in another writer, or from a power cut that
 * left an entry past the end of the file where the journal then went.
 * Acting on it would destroy the image: a guest write would overwrite a
 * table, a trim would free one and the checkpoint punch it.  QEMU refuses
 * such writes ("Preventing invalid write on metadata"), marks the image
 * corrupt and leaves the repair to qemu-img check -r; so do we, asking
 * the metadata map (metamap.c) before every such action.  The request
 * fails with EIO and the session stops writing: what was committed before
 * stays in the journal, and the corrupt bit keeps QEMU and qcow2j from
 * writing the image until it is repaired.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>

#include "dirty.h"
#include "log.h"
#include "metamap.h"
#include "overlap.h"
#include "state.h"

int
qcow2_overlap_refuse (struct qcow2_image *img, const char *what,
                      uint64_t host, enum meta_kind kind, uint64_t where)
{
  /* A version 2 header has no corrupt bit (dirty.c): nothing marks it. */
  const char *marked = img->hdr.version >= 3 ? " (marked so)" : "";

  if (kind == META_NONE)
    qerror ("%s: preventing %s at host offset 0x%" PRIx64 ", which holds "
            "no table; the image is corrupt%s: repair it with "
            "qemu-img check -r all", img->file->name, what, host, marked);
  else
    qerror ("%s: preventing %s at host offset 0x%" PRIx64 ": it overlaps "
            "the %s at 0x%" PRIx64 "; the image is corrupt%s: "
            "repair it with qemu-img check -r all", img->file->name, what,
            host, qcow2_meta_kind_name (kind), where, marked);
  if (qcow2_dirty_mark_corrupt (img) == -1)
    qerror ("%s: mark the image corrupt: %m", img->file->name);
  errno = EIO;
  return qcow2_stop_writes (img, "metadata overlap");
}

int
qcow2_overlap_check (struct qcow2_image *img, uint64_t host, uint64_t len,
                     const char *what)
{
  enum meta_kind kind;
  uint64_t where;

  if (img->data != img->file)
    return 0;
  kind = qcow2_metamap_find (img, host, len, &where);
  if (kind == META_NONE)
    return 0;
  return qcow2_overlap_refuse (img, what, host, kind, where);
}

int
qcow2_write_guest_data (struct qcow2_image *img, const void *buf,
                        uint64_t count, uint64_t host, const char *what)
{
  if (qcow2_overlap_check (img, host, count, what) == -1)
    return -1;
  if (hostio_pwrite (img->data, buf, count, host) == -1) {
    qerror ("%s: write at 0x%" PRIx64 ": %m", img->data->name, host);
    return -1;
  }
  return 0;
}
