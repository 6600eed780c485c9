/*
 * pgguard.c — the fleet's guard latches in PostgreSQL (pgguard.h).
 */
#include "pgguard.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgdsn.h"

struct pgguard {
	PGconn *c;
	char *table; /* quoted */
};

static void quiet_notice(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

/* "postgres: <what>: <libpq's message, one line>" */
static void pg_err(struct dw_err *err, PGconn *c, const PGresult *r, const char *what)
{
	const char *m = r ? PQresultErrorMessage(r) : NULL;
	char line[400];

	if (!m || !*m)
		m = c ? PQerrorMessage(c) : "out of memory";
	snprintf(line, sizeof(line), "%s", m && *m ? m : "unknown error");
	for (char *p = line; *p; p++)
		if (*p == '\n' || *p == '\r' || *p == '\t')
			*p = ' ';
	for (size_t n = strlen(line); n && line[n - 1] == ' ';)
		line[--n] = '\0';
	dw_err_set(err, "postgres: %s: %s", what, line);
}

static PGresult *exec(struct pgguard *g, const char *sql, int n, const char *const *p,
		      ExecStatusType want, const char *what, struct dw_err *err)
{
	PGresult *r = PQexecParams(g->c, sql, n, NULL, p, NULL, NULL, 0);

	if (!r || PQresultStatus(r) != want) {
		pg_err(err, g->c, r, what);
		PQclear(r);
		return NULL;
	}
	return r;
}

static int cmd(struct pgguard *g, const char *sql, const char *what, struct dw_err *err)
{
	PGresult *r = exec(g, sql, 0, NULL, PGRES_COMMAND_OK, what, err);

	if (!r)
		return -1;
	PQclear(r);
	return 0;
}

static int ensure_schema(struct pgguard *g, const char *name, struct dw_err *err)
{
	char sql[1024], lockkey[160];
	const char *p[1] = { lockkey };
	PGresult *r;

	if (cmd(g, "BEGIN", "begin", err) < 0)
		return -1;
	/* concurrent CREATE TABLE IF NOT EXISTS can still collide: serialise */
	snprintf(lockkey, sizeof(lockkey), "dualwrite guards %s", name);
	r = exec(g, "SELECT pg_advisory_xact_lock(hashtext($1))", 1, p, PGRES_TUPLES_OK,
		 "lock schema", err);
	if (!r)
		goto fail;
	PQclear(r);
	snprintf(sql, sizeof(sql),
		 "CREATE TABLE IF NOT EXISTS %s ("
		 " upstream text PRIMARY KEY,"
		 " state text NOT NULL CHECK (state IN ('paused', 'tripped')),"
		 " reason text NOT NULL, measured float8, lim float8, sample bigint,"
		 " window_s float8, since_ms bigint NOT NULL, detail text,"
		 " sidecar text, updated_at timestamptz NOT NULL DEFAULT now())",
		 g->table);
	if (cmd(g, sql, "create table", err) < 0)
		goto fail;
	return cmd(g, "COMMIT", "commit", err);
fail:
	(void)cmd(g, "ROLLBACK", "rollback", err);
	return -1;
}

struct pgguard *pgguard_open(const char *dsn, const char *queue_table, struct dw_err *err)
{
	const char *keys[] = { "connect_timeout", "application_name", "dbname", NULL };
	const char *vals[] = { "3", "dualwrite", dsn ? dsn : "", NULL };
	struct pgguard *g = dw_calloc(1, sizeof(*g));
	char name[128];
	char *qt;

	if (strlen(queue_table) > 63 - 7) {
		dw_err_set(err, "postgres: queue.table \"%s\" too long for \"%s_guards\"",
			   queue_table, queue_table);
		goto fail;
	}
	snprintf(name, sizeof(name), "%s_guards", queue_table);
	g->c = PQconnectdbParams(keys, vals, 1);
	if (!g->c || PQstatus(g->c) != CONNECTION_OK) {
		char *m;

		pg_err(err, g->c, NULL, "connect");
		m = pgdsn_scrub(err->msg, dsn); /* never a secret libpq quoted */
		dw_err_set(err, "%s", m);
		free(m);
		goto fail;
	}
	PQsetNoticeProcessor(g->c, quiet_notice, NULL);
	if (cmd(g, "SET statement_timeout = 10000", "set statement_timeout", err) < 0)
		goto fail;
	qt = PQescapeIdentifier(g->c, name, strlen(name));
	if (!qt) {
		pg_err(err, g->c, NULL, "quote table name");
		goto fail;
	}
	g->table = dw_strdup(qt);
	PQfreemem(qt);
	if (ensure_schema(g, name, err) < 0)
		goto fail;
	return g;
fail:
	pgguard_close(g);
	return NULL;
}

void pgguard_close(struct pgguard *g)
{
	if (!g)
		return;
	PQfinish(g->c);
	free(g->table);
	free(g);
}

bool pgguard_broken(const struct pgguard *g)
{
	return !g || !g->c || PQstatus(g->c) != CONNECTION_OK;
}

int pgguard_put(struct pgguard *g, const char *name, const struct guard_latch *l,
		const char *sidecar, struct dw_err *err)
{
	char sql[1024], measured[40], lim[40], sample[24], window[40], since[24];
	const char *p[10] = { name,   guard_state_name(l->state), l->reason, measured, lim,
			      sample, window,			  since,     l->detail, sidecar };
	PGresult *r;

	snprintf(measured, sizeof(measured), "%.17g", l->measured);
	snprintf(lim, sizeof(lim), "%.17g", l->limit);
	snprintf(sample, sizeof(sample), "%" PRIu64, l->sample);
	snprintf(window, sizeof(window), "%.3f", (double)l->window_ms / 1000.0);
	snprintf(since, sizeof(since), "%" PRId64, l->since_ms);
	snprintf(sql, sizeof(sql),
		 "INSERT INTO %s AS t (upstream, state, reason, measured, lim, sample, window_s,"
		 " since_ms, detail, sidecar) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
		 " ON CONFLICT (upstream) DO UPDATE SET state = excluded.state,"
		 " reason = excluded.reason, measured = excluded.measured, lim = excluded.lim,"
		 " sample = excluded.sample, window_s = excluded.window_s,"
		 " since_ms = excluded.since_ms, detail = excluded.detail,"
		 " sidecar = excluded.sidecar, updated_at = now()"
		 " WHERE t.state <> 'tripped' AND excluded.state = 'tripped'",
		 g->table);
	r = exec(g, sql, 10, p, PGRES_COMMAND_OK, "write guard", err);
	if (!r)
		return -1;
	PQclear(r);
	return 0;
}

int pgguard_delete(struct pgguard *g, const char *name, struct dw_err *err)
{
	char sql[256];
	const char *p[1] = { name };
	PGresult *r;

	snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE upstream = $1", g->table);
	r = exec(g, sql, 1, p, PGRES_COMMAND_OK, "reset guard", err);
	if (!r)
		return -1;
	PQclear(r);
	return 0;
}

int pgguard_read(struct pgguard *g, struct guard_file *out, struct dw_err *err)
{
	char sql[256];
	PGresult *r;

	out->v = NULL;
	out->n = 0;
	snprintf(sql, sizeof(sql),
		 "SELECT upstream, state, reason, coalesce(measured, 0), coalesce(lim, 0),"
		 " coalesce(sample, 0), coalesce(window_s, 0), since_ms, coalesce(detail, '')"
		 " FROM %s ORDER BY upstream",
		 g->table);
	r = exec(g, sql, 0, NULL, PGRES_TUPLES_OK, "read guards", err);
	if (!r)
		return -1;
	for (int i = 0; i < PQntuples(r); i++) {
		struct guard_latch l;

		memset(&l, 0, sizeof(l));
		l.state = strcmp(PQgetvalue(r, i, 1), "tripped") == 0 ? GUARD_TRIPPED : GUARD_PAUSED;
		snprintf(l.reason, sizeof(l.reason), "%s", PQgetvalue(r, i, 2));
		l.measured = strtod(PQgetvalue(r, i, 3), NULL);
		l.limit = strtod(PQgetvalue(r, i, 4), NULL);
		l.sample = strtoull(PQgetvalue(r, i, 5), NULL, 10);
		l.window_ms = (int64_t)(strtod(PQgetvalue(r, i, 6), NULL) * 1000);
		l.since_ms = strtoll(PQgetvalue(r, i, 7), NULL, 10);
		snprintf(l.detail, sizeof(l.detail), "%s", PQgetvalue(r, i, 8));
		guard_file_put(out, PQgetvalue(r, i, 0), &l);
	}
	PQclear(r);
	return 0;
}
