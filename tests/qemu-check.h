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
/* Outcomes of the checks started with qemu_check_start_leaks. */
struct qemu_check_tally {
  uint64_t clean;               /* exit 0 */
  uint64_t leaks;               /* exit 3: leaked clusters only */
  uint64_t corrupt;             /* exit 2: corruption */
  uint64_t other;               /* any other status */
};

/* Like qemu_check_start, for images a power cut may leave with leaked
 * clusters: exit 3 passes too.  The outcome is counted in *tally (which
 * must live until the check is waited for). */
extern void qemu_check_start_leaks (const char *dir, const uint8_t *data,
                                    uint64_t size, const char *what,
                                    struct qemu_check_tally *tally);
/* Wait for every check started; each that fails is a failed check of the
 * test (tests/unit.h), reported with qemu-img's output (QCOW2J_KEEP=1
 * keeps the image). */
extern void qemu_check_wait_all (void);
/* Checks started so far. */
extern uint64_t qemu_check_started (void);
/* At exit: wait for running checks and remove their files. */
extern void qemu_check_cleanup (void);

#endif /* QCOW2J_QEMU_CHECK_H */
