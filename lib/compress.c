/* qcow2j lib: decompression of compressed clusters.
 *
 * QEMU writes zlib clusters as raw deflate with a 4 KiB window (no zlib
 * header or trailer) and zstd clusters as plain frames with no length
 * prefix.  The stored length is rounded up to whole sectors and the last
 * sector may be shared with the next cluster, so decompression stops as
 * soon as a full cluster has come out and ignores what follows.
 */
#include <config.h>

#include <errno.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>

#include "compress.h"
#include "format.h"

static int
inflate_raw (const void *in, size_t in_len, void *out, size_t out_len)
{
  z_stream strm;
  int r;

  memset (&strm, 0, sizeof strm);
  if (inflateInit2 (&strm, -12) != Z_OK)
    return -1;
  strm.next_in = (Bytef *) in;
  strm.avail_in = in_len;
  strm.next_out = out;
  strm.avail_out = out_len;
  r = inflate (&strm, Z_FINISH);
  inflateEnd (&strm);
  /* A full output buffer is success even if the stream did not end here
   * (Z_BUF_ERROR or Z_OK): the input length is only known roughly. */
  if ((r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) &&
      strm.avail_out == 0)
    return 0;
  return -1;
}

static int
decompress_zstd (const void *in, size_t in_len, void *out, size_t out_len)
{
  ZSTD_DCtx *dctx = ZSTD_createDCtx ();
  ZSTD_inBuffer input = { in, in_len, 0 };
  ZSTD_outBuffer output = { out, out_len, 0 };
  int ret = -1;

  if (dctx == NULL)
    return -1;
  while (output.pos < output.size) {
    size_t last_in = input.pos, last_out = output.pos;
    size_t r = ZSTD_decompressStream (dctx, &output, &input);

    if (ZSTD_isError (r))
      goto out;
    if (input.pos == last_in && output.pos == last_out)
      goto out;                 /* no progress: input exhausted */
  }
  ret = 0;
 out:
  ZSTD_freeDCtx (dctx);
  return ret;
}

int
qcow2_decompress (int compression_type, const void *in, size_t in_len,
                  void *out, size_t out_len)
{
  int r;

  switch (compression_type) {
  case QCOW2_COMPRESSION_ZLIB:
    r = inflate_raw (in, in_len, out, out_len);
    break;
  case QCOW2_COMPRESSION_ZSTD:
    r = decompress_zstd (in, in_len, out, out_len);
    break;
  default:
    r = -1;
  }
  if (r == -1)
    errno = EIO;
  return r;
}
