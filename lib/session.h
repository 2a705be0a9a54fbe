/* qcow2j lib: the write session (image.h has its public half). */
#ifndef QCOW2J_SESSION_H
#define QCOW2J_SESSION_H

#include "image-internal.h"

/* Close the session cleanly if it is JOURNALLED (12.2): the file is then
 * plain qcow2.  0 if there was nothing to do or it worked; -1 with errno
 * if writes had failed or the close failed (the journal is then kept and
 * replayed at the next writable open).  No request may be in flight and
 * the checkpointer must be stopped. */
extern int qcow2_session_close (struct qcow2_image *img);

#endif /* QCOW2J_SESSION_H */
