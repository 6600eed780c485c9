/*
 * pgq — the shared replay queue in PostgreSQL (queue.postgres), libpq side
 * only: no HTTP here.
 *
 * A fleet of sidecars shares one table (queue.table). Each daemon still
 * journals every mirror in its local spool first; what fails is moved into
 * the table in journal order by pgq_forward (one transaction per batch,
 * INSERT ... ON CONFLICT (idem_key) DO NOTHING, so a crash between the
 * commit and the local state change can never duplicate a write). Any number
 * of `dualwrite replay` workers on any host then claim rows with pgq_claim:
 *
 *   state = 'queued' AND next_attempt_at <= now()
 *   AND NOT EXISTS (an older 'queued' row of the same (upstream, key))
 *   ORDER BY id LIMIT n FOR UPDATE OF q SKIP LOCKED
 *
 * Per key only the oldest queued row is ever claimable (G3), and while one
 * worker holds it locked, it is still 'queued' for everybody else, so the
 * next row of the key stays invisible to them too; SKIP LOCKED keeps workers
 * from taking each other's rows, and the state is rechecked on the locked
 * row itself, so a row is delivered by one worker once. Unkeyed rows (key
 * NULL) are unordered. Dead rows do not block their key, as in the spool.
 *
 * Delivered and dead rows stay in the table (that is what makes the
 * idempotency-key conflict check above safe); pruning old delivered rows is
 * an operator's SQL.
 *
 * Not thread-safe: one struct pgq per thread. Errors come back through
 * struct dw_err; nothing here logs.
 */
#ifndef DW_PGQ_H
#define DW_PGQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw.h"
#include "spool.h"

struct pgq;

/* The last_error of a write the daemon queued locally because its key had
 * rows in the PostgreSQL queue: such a record is never delivered around
 * PostgreSQL (replay holds its key while PostgreSQL is unreachable). */
#define PGQ_BEHIND "key has earlier writes in the postgres queue"

/* Connect (dsn "" = libpq's PG* environment; connect timeout 3 s, statement
 * timeout 30 s) and create the table and its index when missing. Returns NULL
 * with err ("postgres: ..."). */
struct pgq *pgq_open(const char *dsn, const char *table, struct dw_err *err);
void pgq_close(struct pgq *q); /* NULL is a no-op */
/* Whether the connection is gone (close and reopen then). */
bool pgq_broken(const struct pgq *q);

/* Insert recs (each with upstream, idem_key, method, path set) in array
 * order, in one transaction; rows whose idem_key already exists are left
 * alone. sidecar names the writer ("host:pid"). */
int pgq_forward(struct pgq *q, const struct spool_record *recs, size_t n, const char *sidecar,
		struct dw_err *err) DW_MUSTCHECK;

/*
 * Move one batch (at most max records) from the spool into the table:
 * QUEUED records (with orphans=true also PENDING ones, for a spool no daemon
 * owns), unkeyed ones all, keyed ones in seq order from the key's oldest
 * waiting record on — a key whose oldest waiting record cannot move (a live
 * daemon's PENDING) is left alone, so a key's rows enter the table in journal
 * order. After the commit, moved(arg, rec) runs for each record (the daemon
 * remembers the key there), then each is marked SPOOL_FORWARDED; a mark that
 * fails is reported in warns and the record is simply offered again next time
 * (the insert is then a no-op). Returns the number moved (< max: nothing more
 * to move now), or -1 with err when PostgreSQL failed (nothing marked).
 */
long pgq_forward_spool(struct pgq *q, struct spool *sp, bool orphans, size_t max,
		       const char *sidecar, void (*moved)(void *arg, const struct spool_record *r),
		       void *arg, struct dw_errlist *warns, struct dw_err *err);

/* Every distinct (upstream, key) with a 'queued' row, one call each. */
int pgq_queued_keys(struct pgq *q, void (*fn)(void *arg, const char *upstream, const char *key),
		    void *arg, struct dw_err *err) DW_MUSTCHECK;

/*
 * Begin a transaction and claim up to limit ready rows (see above), only of
 * the given upstreams (nup 0: any). lock=false only reads them (dry run).
 * *out gets a malloc'd array of *n records (seq = the row id, state QUEUED);
 * free each with spool_record_clear and the array with free. The rows stay
 * locked until pgq_commit / pgq_rollback. On error the transaction is
 * rolled back.
 */
int pgq_claim(struct pgq *q, const char *const *upstreams, size_t nup, size_t limit, bool lock,
	      struct spool_record **out, size_t *n, struct dw_err *err) DW_MUSTCHECK;
/* Inside the claim's transaction: record the outcome of one attempt. st is
 * SPOOL_DELIVERED, SPOOL_DEAD or SPOOL_QUEUED (retry after retry_us). */
int pgq_mark(struct pgq *q, uint64_t id, enum spool_state st, uint32_t attempts, int status,
	     const char *error, int64_t retry_us, struct dw_err *err) DW_MUSTCHECK;
int pgq_commit(struct pgq *q, struct dw_err *err) DW_MUSTCHECK;
void pgq_rollback(struct pgq *q);

struct pgq_stats {
	int64_t queued;		  /* rows waiting */
	int64_t due;		  /* of those, next_attempt_at <= now() */
	int64_t delivered, dead;
	int64_t oldest_queued_us; /* created_at (wall clock) of the oldest queued; 0: none */
	int64_t next_due_in_us;	  /* until the earliest queued row is due (<= 0: now); -1: none */
};
/* Counts, over the given upstreams (nup 0: all). */
int pgq_stats(struct pgq *q, const char *const *upstreams, size_t nup, struct pgq_stats *out,
	      struct dw_err *err) DW_MUSTCHECK;

#endif
