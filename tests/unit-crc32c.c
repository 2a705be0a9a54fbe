/* Unit test of crc32c: known vectors (RFC 3720 appendix B.4 and the
 * "123456789" check value), chaining, and agreement between the SSE4.2
 * and portable implementations at every length and alignment. */
#include <config.h>

#include <stdint.h>
#include <string.h>

#include "crc32c.h"
#include "unit.h"

UNIT_CASE (vectors)
{
  uint8_t buf[32];

  CHECK (crc32c (0, "123456789", 9) == 0xe3069283);
  CHECK (crc32c_portable (0, "123456789", 9) == 0xe3069283);
  memset (buf, 0, 32);
  CHECK (crc32c (0, buf, 32) == 0x8a9136aa);
  memset (buf, 0xff, 32);
  CHECK (crc32c (0, buf, 32) == 0x62a8ab43);
  for (int i = 0; i < 32; i++)
    buf[i] = i;
  CHECK (crc32c (0, buf, 32) == 0x46dd794e);
  for (int i = 0; i < 32; i++)
    buf[i] = 31 - i;
  CHECK (crc32c (0, buf, 32) == 0x113fdb5c);
  CHECK (crc32c (0, "", 0) == 0);
}

UNIT_CASE (chaining)
{
  CHECK (crc32c (crc32c (0, "1234", 4), "56789", 5) == 0xe3069283);
}

/* Both implementations, every alignment, many lengths. */
UNIT_CASE (implementations_agree)
{
  uint8_t buf[4096 + 8];

  srand (1);
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = rand ();
  for (size_t align = 0; align < 8; align++)
    for (size_t len = 0; len < 600; len += 1 + len / 16)
      CHECK (crc32c (7, buf + align, len) ==
             crc32c_portable (7, buf + align, len));
  CHECK (crc32c (0, buf, 4096) == crc32c_portable (0, buf, 4096));
}

static const struct unit_case cases[] = {
  UNIT_ENTRY (vectors),
  UNIT_ENTRY (chaining),
  UNIT_ENTRY (implementations_agree),
};

UNIT_MAIN (cases)
