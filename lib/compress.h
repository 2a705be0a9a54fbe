/* qcow2j lib: decompression of compressed clusters (zlib and zstd). */
#ifndef QCOW2J_COMPRESS_H
#define QCOW2J_COMPRESS_H

#include <stddef.h>

/* Inflate in[0..in_len) into exactly out_len bytes of out, with the
 * image's compression_type (0 raw deflate as QEMU writes it, 1 zstd).
 * Input may carry trailing bytes (it is only known to 512-byte sector
 * precision).  Returns 0, or -1 if the data does not decompress to a full
 * cluster (errno EIO; not reported, the caller names the cluster). */
extern int qcow2_decompress (int compression_type, const void *in,
                             size_t in_len, void *out, size_t out_len);

#endif /* QCOW2J_COMPRESS_H */
