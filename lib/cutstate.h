/*
 * cutstate — what a write cut-over (SPEC §7.5) remembers beside the queue:
 * three append-only files of JSON lines in the queue directory (queue.path),
 * which the daemon and the CLI share as they share the spool.
 *
 *   indeterminate.jsonl  writes whose authoritative answer never came
 *                        (timeout, reset after the request was sent): their
 *                        route, table and key, until a `dualwrite verify`
 *                        finds the row equal and appends a clear line.
 *   verify.jsonl         each `dualwrite verify` run: table, equal, when.
 *   reads100.jsonl       each read route's configured weight at every load
 *                        of the daemon (start, reload): since when a route
 *                        has stood at 100 %.
 *
 * Each line is written with one write(2) on an O_APPEND descriptor, so
 * concurrent writers never interleave within a line, and fdatasync'd (an
 * indeterminate write only when the queue's durability is "fsync": the
 * daemon records it on a worker's loop, and in durability "process" it
 * survives a crash of the process as the queue does). A torn last line (a crash
 * mid-write) is skipped when read. Nothing here knows about HTTP or the
 * configuration's structs beyond names: the callers pass strings.
 *
 * Not thread-safe per call site beyond what O_APPEND gives; no state is kept
 * between calls.
 */
#ifndef DW_CUTSTATE_H
#define DW_CUTSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw.h"

#define CUTSTATE_INDET "indeterminate.jsonl"
#define CUTSTATE_VERIFY "verify.jsonl"
#define CUTSTATE_READS100 "reads100.jsonl"

/* One indeterminate write still open. Strings owned by the entry. */
struct indet_entry {
	int64_t at_us;	  /* wall clock, when the answer did not come */
	char *route;
	char *table;	  /* NULL: the route names no table (every verify reports it) */
	char *key;	  /* NULL: not knowable from the request (e.g. $response.id) */
	char *request_id;
	char *reason;	  /* "timeout", "reset", ... */
};
void indet_entries_free(struct indet_entry *v, size_t n);

/* Record one (dir: the queue directory; sync: fdatasync it). -1 with err
 * when it could not be written (or synced). */
int indet_record(const char *dir, const struct indet_entry *e, bool sync,
		 struct dw_err *err) DW_MUSTCHECK;
/* A verify of table found key equal on both sides (key NULL: the whole
 * table equal, which settles the entries whose key was unknown): every open
 * entry of that table (or of no table) with that key, recorded before now,
 * is closed. */
int indet_clear(const char *dir, const char *table, const char *key,
		struct dw_err *err) DW_MUSTCHECK;
/* The open entries, oldest first; a missing file is none. table non-NULL:
 * only that table's and those of no table. */
int indet_load(const char *dir, const char *table, struct indet_entry **out, size_t *n,
	       struct dw_err *err) DW_MUSTCHECK;

/* The outcome of one `dualwrite verify`. */
struct verify_mark {
	int64_t at_us;
	bool equal;
	uint64_t differences;
};
int verify_mark_record(const char *dir, const char *table, const struct verify_mark *m,
		       struct dw_err *err) DW_MUSTCHECK;
/* The last mark of table: 1 found, 0 none, -1 error. */
int verify_mark_last(const char *dir, const char *table, struct verify_mark *out,
		     struct dw_err *err) DW_MUSTCHECK;

/* One read route's configured weight (hundredths of a percent) at a load. */
int reads100_record(const char *dir, const char *route, uint32_t weight, int64_t at_us,
		    struct dw_err *err) DW_MUSTCHECK;
/* Since when route has stood at 10000 without a break: 1 and *since_us,
 * 0 when it is not at 100 now (or never recorded), -1 error. */
int reads100_since(const char *dir, const char *route, int64_t *since_us,
		   struct dw_err *err) DW_MUSTCHECK;

#endif
