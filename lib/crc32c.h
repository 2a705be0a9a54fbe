/* qcow2j lib: CRC-32C (Castagnoli), the journal's checksum. */
#ifndef QCOW2J_CRC32C_H
#define QCOW2J_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* crc32c of buf, continuing from crc (0 to start): the standard CRC-32C
 * (reflected polynomial 0x82F63B78, initial value and final xor
 * 0xFFFFFFFF), so crc32c (0, "123456789", 9) == 0xE3069283 and
 * crc32c (crc32c (0, a, n), b, m) is the checksum of a followed by b. */
extern uint32_t crc32c (uint32_t crc, const void *buf, size_t len);

/* The same, never using the SSE4.2 instruction (for tests). */
extern uint32_t crc32c_portable (uint32_t crc, const void *buf, size_t len);

#endif /* QCOW2J_CRC32C_H */
