/* qcow2j lib: a sorted array of disjoint, tagged ranges (rangemap.c). */
#ifndef QCOW2J_RANGEMAP_H
#define QCOW2J_RANGEMAP_H

#include <stddef.h>
#include <stdint.h>

/* [start, end) tagged with kind (never 0: 0 means "not in the map"). */
struct range {
  uint64_t start, end;
  unsigned kind;
};

/* Ranges sorted by start, disjoint, adjacent ranges of one kind merged.
 * Zero-initialised is empty.  The caller serializes access. */
struct rangemap {
  struct range *v;
  size_t len, cap;
};

/* Tag [start, end) with kind, replacing whatever was there (kind 0:
 * remove it from the map).  0, or -1 with errno ENOMEM (the map is then
 * unchanged). */
extern int rangemap_set (struct rangemap *m, uint64_t start, uint64_t end,
                         unsigned kind);

/* Index of the first range that ends after offset (m->len if none). */
extern size_t rangemap_first_after (const struct rangemap *m,
                                    uint64_t offset);

/* The kind at offset (0 if none). */
extern unsigned rangemap_kind_at (const struct rangemap *m, uint64_t offset);

extern void rangemap_clear (struct rangemap *m);

#endif /* QCOW2J_RANGEMAP_H */
