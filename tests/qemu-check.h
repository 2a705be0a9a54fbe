/* qcow2j tests: qemu-img check of images held in memory, two at a time in
 * the background, so that a test can check hundreds of crash states
 * without waiting for each. */
#ifndef QCOW2J_QEMU_CHECK_H
#define QCOW2J_QEMU_CHECK_H

#include <stdint.h>

/* Write data (size bytes, sparsely) to a file in dir and start
 * qemu-img check on it; 'what' names it in a failure report. */
extern void qemu_check_start (const char *dir, const uint8_t *data,
                              uint64_t size, const char *what);
/* Wait for every check started; each that fails is a failed check of the
 * test (tests/unit.h), reported with qemu-img's output (QCOW2J_KEEP=1
 * keeps the image). */
extern void qemu_check_wait_all (void);
/* Checks started so far. */
extern uint64_t qemu_check_started (void);
/* At exit: wait for running checks and remove their files. */
extern void qemu_check_cleanup (void);

#endif /* QCOW2J_QEMU_CHECK_H */
