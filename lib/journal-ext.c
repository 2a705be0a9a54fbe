/* qcow2j lib: the Q2JL header extension's 32 data bytes, encoded and
 * decoded in one place (docs/journal-format.md 3.1 and 3.2): header.c
 * decodes what it finds, header-write.c and session.c encode what they
 * write; whether a dirty journal may be replayed is checked here too, for
 * both replays (session.c in place, overlay.c in memory).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "byteorder.h"
#include "crc32c.h"
#include "journal-ext.h"
#include "log.h"

#define QJ_EXT_OFF_OFFSET   0
#define QJ_EXT_OFF_SIZE     8
#define QJ_EXT_OFF_ID      16
#define QJ_EXT_OFF_VERSION 24
#define QJ_EXT_OFF_CRC     28

void
qj_ext_encode (uint8_t *d, uint64_t offset, uint64_t size, uint64_t id)
{
  memset (d, 0, QJ_EXT_LENGTH);
  put_be64 (d + QJ_EXT_OFF_OFFSET, offset);
  put_be64 (d + QJ_EXT_OFF_SIZE, size);
  put_be64 (d + QJ_EXT_OFF_ID, id);
  put_be32 (d + QJ_EXT_OFF_VERSION, QJ_VERSION);
  put_be32 (d + QJ_EXT_OFF_CRC, crc32c (0, d, QJ_EXT_OFF_CRC));
}

int
qj_ext_check_replayable (const char *name, const struct qcow2_header *h,
                         uint64_t file_size)
{
  const struct qcow2_journal_ext *e = &h->journal;
  const uint64_t cs = h->cluster_size;
  char why[160];

  if (!(h->autoclear_features & QJ_AUTOCLEAR_VALID))
    snprintf (why, sizeof why, "autoclear bit 60 (journal valid) is clear");
  else if (!e->present)
    snprintf (why, sizeof why, "the image has no Q2JL header extension");
  else if (!e->intact)
    snprintf (why, sizeof why, "the Q2JL header extension's CRC or version "
              "does not match");
  else if (e->id == 0)
    snprintf (why, sizeof why, "journal_id is 0");
  else if (e->offset < cs || e->offset % cs != 0)
    snprintf (why, sizeof why, "journal_offset 0x%" PRIx64 " is not a "
              "multiple of the cluster size past the header", e->offset);
  else if (e->size < QJ_MIN_AREA || e->size > QJ_MAX_AREA ||
           e->size % QJ_BLOCK != 0)
    snprintf (why, sizeof why, "journal_size %" PRIu64 " is out of range",
              e->size);
  else if (e->offset > QJ_MAX_TARGET - e->size ||
           e->offset + e->size > file_size)
    snprintf (why, sizeof why, "the journal area 0x%" PRIx64 "+%" PRIu64
              " runs past the end of the file (%" PRIu64 " bytes)",
              e->offset, e->size, file_size);
  else
    return 0;
  qerror ("%s: its qcow2j journal is marked dirty but is not valid: %s "
          "(was the image changed by another program?): it needs a manual "
          "repair", name, why);
  errno = EINVAL;
  return -1;
}

void
qj_ext_decode (const uint8_t *d, struct qcow2_journal_ext *e)
{
  e->intact = get_be32 (d + QJ_EXT_OFF_CRC) == crc32c (0, d, QJ_EXT_OFF_CRC) &&
    get_be32 (d + QJ_EXT_OFF_VERSION) == QJ_VERSION;
  e->offset = e->size = e->id = 0;
  if (e->intact) {
    e->offset = get_be64 (d + QJ_EXT_OFF_OFFSET);
    e->size = get_be64 (d + QJ_EXT_OFF_SIZE);
    e->id = get_be64 (d + QJ_EXT_OFF_ID);
  }
}
