/*
 * pgguard — the fleet's guard latches in PostgreSQL (queue.postgres), libpq
 * side only (SPEC §7.3, issue 11 item 11).
 *
 * Where the fleet shares a PostgreSQL queue, it also shares its guards: one
 * row per latched new-system upstream in the table "<queue.table>_guards":
 *
 *   upstream text PRIMARY KEY, state text ('paused' | 'tripped'), reason,
 *   measured, lim, sample, window_s, since_ms, detail, sidecar (who wrote
 *   it, "host:pid"), updated_at
 *
 * A sidecar that latches writes its row (a trip replaces a pause, never the
 * reverse: pgguard_put); every sidecar reads all rows every second and
 * latches what it finds; a reset deletes the row, and a sidecar whose latch
 * it had seen in the table clears it when the row is gone (daemon/guards.c).
 *
 * Not thread-safe: one struct pgguard per thread. Errors come back through
 * struct dw_err ("postgres: ..."), never a password; nothing here logs.
 */
#ifndef DW_PGGUARD_H
#define DW_PGGUARD_H

#include "dw.h"
#include "guard.h"

struct pgguard;

/* Connect (dsn "" = libpq's PG* environment; connect timeout 3 s, statement
 * timeout 10 s) and create the table when missing. queue_table: the queue's
 * table name (queue.table); the guards' table is its name + "_guards". */
struct pgguard *pgguard_open(const char *dsn, const char *queue_table, struct dw_err *err);
void pgguard_close(struct pgguard *g); /* NULL is a no-op */
bool pgguard_broken(const struct pgguard *g);
/* Write name's latch (state paused or tripped). A row already there stays
 * as it is, unless it is a pause and this a trip. */
int pgguard_put(struct pgguard *g, const char *name, const struct guard_latch *l,
		const char *sidecar, struct dw_err *err) DW_MUSTCHECK;
/* Remove name's row (a reset); no row is not an error. */
int pgguard_delete(struct pgguard *g, const char *name, struct dw_err *err) DW_MUSTCHECK;
/* Every row, as a latch file's entries. */
int pgguard_read(struct pgguard *g, struct guard_file *out, struct dw_err *err) DW_MUSTCHECK;

#endif
