/*
 * spool_files — the replay queue's files, below the log: segment names and
 * listing, opening, reading a byte range, the directory itself, flock, and
 * the high-water mark file (DIR/MARK). No frames, no index, no state: each
 * call takes the directory path or a descriptor it does not keep. Formats:
 * lib/SPOOL-FORMAT.md.
 *
 * Errors: calls returning -1 or NULL leave errno (or err, where given) set;
 * nothing here logs.
 */
#ifndef DW_SPOOL_FILES_H
#define DW_SPOOL_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw.h"

/* DIR/seg-<16 hex>.log, malloc'd (the caller frees). */
char *sfile_seg_path(const char *dir, uint64_t id);

/* The ids of DIR's seg-*.log files, ascending, into *ids (realloc'd; the
 * caller frees) and *n. -1 with err when the directory cannot be read. */
int sfile_list_segs(const char *dir, uint64_t **ids, size_t *n, struct dw_err *err);

/* Open segment id of dir for reading (readonly) or reading and appending;
 * create: it must not exist yet. The descriptor, or -1 with errno. */
int sfile_open_seg(const char *dir, uint64_t id, bool readonly, bool create);

/* fsync the directory itself (after creating or removing a file in it). */
void sfile_fsync_dir(const char *dir);

/* mkdir -p; 0 or -1 with errno. */
int sfile_mkdir_p(const char *dir);

/* [off, off + n) of fd into a new buffer (the caller frees); NULL with err
 * on an error or a short file. */
unsigned char *sfile_read(int fd, uint64_t off, size_t n, struct dw_err *err);

/* flock, retried on EINTR. */
int sfile_flock(int fd, int op);

/* The high-water mark: where the log ended after the last write (32 bytes
 * with a CRC, rewritten in place). */
struct sfile_mark {
	uint64_t tail_id, tail_end, next_seq;
};
/* 0, or -1 with errno. */
int sfile_mark_store(int fd, const struct sfile_mark *m);
/* From fd, or from DIR/MARK when fd < 0. false when absent or not valid. */
bool sfile_mark_load(int fd, const char *dir, struct sfile_mark *m);

#endif
