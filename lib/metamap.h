/* qcow2j lib: the exact map of the image's own metadata (metamap.c). */
#ifndef QCOW2J_METAMAP_H
#define QCOW2J_METAMAP_H

#include <stdint.h>

#include "image-internal.h"

/* Build the map of the image file: the header cluster, the active L1
 * table and its L2 tables, the refcount table and blocks, the snapshot
 * table, each snapshot's L1 table and the L2 tables it names, the bitmap
 * directory, tables and data, and the live journal area.  At the
 * journal's set-up (session.c), after any replay, with the refcount table
 * loaded.  0, or -1 with errno (EIO naming the overlap if two kinds of
 * metadata share a cluster: the image is corrupt). */
extern int qcow2_metamap_build (struct qcow2_image *img);

/* Record that [start, start + len) now holds metadata of this kind
 * (META_NONE: no longer).  Under meta_lock (or during the set-up).
 * 0, or -1 with errno ENOMEM. */
extern int qcow2_metamap_set (struct qcow2_image *img, uint64_t start,
                              uint64_t len, enum meta_kind kind);

/* The kind of metadata the first cluster of [start, start + len) that
 * holds any does (META_NONE if none), and where that cluster starts. */
extern enum meta_kind qcow2_metamap_find (struct qcow2_image *img,
                                          uint64_t start, uint64_t len,
                                          uint64_t *where);

/* The first run of clusters of [start, end) that holds no metadata:
 * [*from, *to).  False if every cluster of it holds some. */
extern bool qcow2_metamap_next_gap (struct qcow2_image *img, uint64_t start,
                                    uint64_t end, uint64_t *from,
                                    uint64_t *to);

/* True if [start, start + len) lies inside metadata that the checkpoint
 * may write back: the header, an L1, L2 or refcount table or block, a
 * bitmap table or bitmap data, or a table whose free is not yet
 * checkpointed. */
extern bool qcow2_metamap_is_table (struct qcow2_image *img, uint64_t start,
                                    uint64_t len);

/* Give host blocks to every table the checkpoint writes in place, where
 * the file has none yet (a table qemu-img left partly a hole), so that no
 * checkpoint fails for want of host space on a full file system, as O5
 * does for the journal.  At the set-up, after qcow2_metamap_build.  0, or
 * -1 with errno (ENOSPC: the host is full). */
extern int qcow2_metamap_reserve_tables (struct qcow2_image *img);

/* What a kind is called in messages. */
extern const char *qcow2_meta_kind_name (enum meta_kind kind);

#endif /* QCOW2J_METAMAP_H */
