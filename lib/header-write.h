/* qcow2j lib: cluster 0 changed in place, outside the journal. */
#ifndef QCOW2J_HEADER_WRITE_H
#define QCOW2J_HEADER_WRITE_H

#include <stdbool.h>
#include <stdint.h>

#include "image-internal.h"

/* Write the 8-byte header word at offset (a feature word), and flush if
 * asked.  0, or -1 with errno after reporting. */
extern int qcow2_header_write_word (struct qcow2_image *img, uint64_t offset,
                                    uint64_t value, bool flush);

/* Is there room in cluster 0 for at least the Q2JL extension? */
extern bool qcow2_header_has_room (const struct qcow2_header *h);

/* Make the Q2JL extension name the area [joffset, +jsize) and journal id
 * jid, adding it (and a feature name table naming our bits) if the header
 * lacks them; img->hdr follows.  Only while DIRTY is clear (3.3). */
extern int qcow2_header_write_journal_ext (struct qcow2_image *img,
                                           uint64_t joffset, uint64_t jsize,
                                           uint64_t jid);

/* With VALID clear and durable (12.2, C5): rewrite the Q2JL data bytes
 * as a reuse hint naming the area (hint), or as zeroes (the area is given
 * back), and flush. */
extern int qcow2_header_release_journal_ext (struct qcow2_image *img,
                                             bool hint);

#endif /* QCOW2J_HEADER_WRITE_H */
