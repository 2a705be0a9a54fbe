/* qcow2j lib: the Q2JL header extension's 32 data bytes, encoded and
 * decoded in one place (docs/journal-format.md 3.1 and 3.2): header.c
 * decodes what it finds, header-write.c and session.c encode what they
 * write.
 */
#include <config.h>

#include <string.h>

#include "byteorder.h"
#include "crc32c.h"
#include "journal-ext.h"

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
