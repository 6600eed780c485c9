/*
 * pgforward.h — the daemon's forwarder into the shared PostgreSQL queue
 * (queue.postgres), daemon/ only.
 *
 * The local spool stays the write-ahead journal: a client's answer never
 * waits for PostgreSQL. This thread moves the records that became QUEUED in
 * the spool into the shared table, in journal order per key (one
 * transaction per batch, ON CONFLICT (idem_key) DO NOTHING), then marks them
 * FORWARDED locally. While PostgreSQL cannot be reached they simply stay
 * queued in the spool (G2 holds either way); the outage is logged once and
 * shown by dualwrite_queue_postgres_up, and the thread retries with a
 * back-off of at most 5 s.
 *
 * It also keeps the set of (upstream, key) that have 'queued' rows in the
 * table (refreshed every 500 ms, plus what it just forwarded; the last known
 * set is kept during an outage): the key's mirror shard queues a new write of
 * such a key behind them instead of sending it (G3).
 */
#ifndef DW_PGFORWARD_H
#define DW_PGFORWARD_H

#include <stdbool.h>

#include "dw.h"
#include "pgq.h"

struct server;
struct pgforward;

/* The last_error of a write queued locally because its key has rows in the
 * PostgreSQL queue: `dualwrite replay` never delivers such a record around
 * PostgreSQL (it holds the key while PostgreSQL is unreachable). */
#define PGFORWARD_BEHIND PGQ_BEHIND

/* Start the thread (srv->spool open, srv->cfg->queue.postgres set). The
 * first connection is made by the thread: an unreachable PostgreSQL is not
 * an error here. */
struct pgforward *pgforward_start(struct server *srv, struct dw_err *err);
/* Forward what is queued one last time (when connected), stop, free. NULL is
 * a no-op. Call after the mirror shards are drained. */
void pgforward_stop(struct pgforward *pf);
/* Whether (upstream, key) has queued rows in PostgreSQL. Thread-safe. */
bool pgforward_key_queued(struct pgforward *pf, const char *upstream, const char *key);

#endif
