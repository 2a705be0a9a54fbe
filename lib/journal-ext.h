/* qcow2j lib: the Q2JL header extension's data bytes
 * (docs/journal-format.md section 3). */
#ifndef QCOW2J_JOURNAL_EXT_H
#define QCOW2J_JOURNAL_EXT_H

#include <stdbool.h>
#include <stdint.h>

#include "header.h"
#include "journal-format.h"

/* Encode the 32 data bytes for the area [offset, offset+size) and journal
 * id (0: a reuse hint, 3.2), version 1, with their CRC. */
extern void qj_ext_encode (uint8_t *d, uint64_t offset, uint64_t size,
                           uint64_t id);

/* Decode the 32 data bytes d into e's offset, size, id and intact (the
 * CRC matches and the version is 1: checks 2 and 3 of 3.2).  The other
 * checks need the image (cluster size, file length) and are its users'. */
extern void qj_ext_decode (const uint8_t *d, struct qcow2_journal_ext *e);

/* May the journal that header h names be replayed (3.2: the extension is
 * trusted, its area valid and inside a file of file_size bytes)?  0, or
 * -1 with errno EINVAL after saying which check failed, with the value. */
extern int qj_ext_check_replayable (const char *name,
                                    const struct qcow2_header *h,
                                    uint64_t file_size);

#endif /* QCOW2J_JOURNAL_EXT_H */
