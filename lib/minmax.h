/* qcow2j lib: MIN/MAX that evaluate each argument once, and rounding. */
#ifndef QCOW2J_MINMAX_H
#define QCOW2J_MINMAX_H

#undef MIN
#define MIN(a, b) ({ __auto_type _a = (a); __auto_type _b = (b); \
                     _a < _b ? _a : _b; })
#undef MAX
#define MAX(a, b) ({ __auto_type _a = (a); __auto_type _b = (b); \
                     _a > _b ? _a : _b; })

/* Round x down/up to a multiple of the power of two n. */
#define ROUND_DOWN(x, n) ((x) & ~((__typeof__ (x)) (n) - 1))
#define ROUND_UP(x, n) (((x) + (n) - 1) & ~((__typeof__ (x)) (n) - 1))
#define IS_ALIGNED(x, n) (((x) & ((n) - 1)) == 0)
#define DIV_ROUND_UP(x, n) (((x) + (n) - 1) / (n))

#endif /* QCOW2J_MINMAX_H */
