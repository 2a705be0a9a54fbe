/* qcow2j lib: CRC-32C, with the SSE4.2 crc32 instruction where the CPU has
 * it and a slicing-by-8 table fallback elsewhere.  Both give the same
 * results (unit-crc32c checks them against known vectors and each other).
 */
#include <config.h>

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "crc32c.h"

#define POLY 0x82f63b78U

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void
make_table (void)
{
  for (unsigned i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
    table[0][i] = c;
  }
  for (unsigned i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++)
      table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

uint32_t
crc32c_portable (uint32_t crc, const void *buf, size_t len)
{
  const unsigned char *p = buf;

  pthread_once (&table_once, make_table);
  crc = ~crc;
  while (len > 0 && ((uintptr_t) p & 7) != 0) {
    crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    len--;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy (&w, p, 8);          /* little-endian host (configure checks) */
    w ^= crc;
    crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^
      table[5][(w >> 16) & 0xff] ^ table[4][(w >> 24) & 0xff] ^
      table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
      table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
    p += 8;
    len -= 8;
  }
  while (len-- > 0)
    crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

#if defined(__x86_64__)
__attribute__ ((target ("sse4.2")))
static uint32_t
crc32c_sse42 (uint32_t crc, const void *buf, size_t len)
{
  const unsigned char *p = buf;
  uint64_t c = ~crc;

  while (len > 0 && ((uintptr_t) p & 7) != 0) {
    c = __builtin_ia32_crc32qi (c, *p++);
    len--;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy (&w, p, 8);
    c = __builtin_ia32_crc32di (c, w);
    p += 8;
    len -= 8;
  }
  while (len-- > 0)
    c = __builtin_ia32_crc32qi (c, *p++);
  return ~(uint32_t) c;
}

uint32_t
crc32c (uint32_t crc, const void *buf, size_t len)
{
  static int have_sse42 = -1;

  if (__builtin_expect (have_sse42 == -1, 0))
    __atomic_store_n (&have_sse42, __builtin_cpu_supports ("sse4.2"),
                      __ATOMIC_RELAXED);
  if (have_sse42)
    return crc32c_sse42 (crc, buf, len);
  return crc32c_portable (crc, buf, len);
}
#else
uint32_t
crc32c (uint32_t crc, const void *buf, size_t len)
{
  return crc32c_portable (crc, buf, len);
}
#endif
