/*
 * pgq.c — the shared PostgreSQL replay queue behind pgq.h: connection, schema,
 * forwarding from the spool, claiming for replay workers, counts.
 *
 * Every statement goes through PQexecParams with text parameters, except the
 * body, which is sent and read as bytea (binary in, hex text out), so any
 * byte sequence survives. Timestamps travel as microseconds since the epoch
 * (timestamptz 'epoch' + n microseconds), exact both ways.
 */
#include "pgq.h"
#include "pgdsn.h"

#include <inttypes.h>
#include <stdarg.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pgq {
	PGconn *c;
	char *table; /* quoted identifier */
	bool in_tx;
	/* statements, built once for the table */
	char *sql_insert, *sql_claim, *sql_peek, *sql_mark, *sql_keys, *sql_stats;
};

static void quiet_notice(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

/* "postgres: <libpq's message, one line>" */
static void pg_err(struct dw_err *err, PGconn *c, const PGresult *r, const char *what)
{
	const char *m = r ? PQresultErrorMessage(r) : NULL;
	char line[400];
	size_t n;

	if (!m || !*m)
		m = c ? PQerrorMessage(c) : "out of memory";
	snprintf(line, sizeof(line), "%s", m && *m ? m : "unknown error");
	for (char *p = line; *p; p++)
		if (*p == '\n' || *p == '\r' || *p == '\t')
			*p = ' ';
	n = strlen(line);
	while (n && line[n - 1] == ' ')
		line[--n] = '\0';
	dw_err_set(err, "postgres: %s: %s", what, line);
}

static PGresult *exec(struct pgq *q, const char *sql, int np, const char *const *vals,
		      const int *lens, const int *fmts, ExecStatusType want, const char *what,
		      struct dw_err *err)
{
	PGresult *r = PQexecParams(q->c, sql, np, NULL, vals, lens, fmts, 0);

	if (!r || PQresultStatus(r) != want) {
		pg_err(err, q->c, r, what);
		PQclear(r);
		return NULL;
	}
	return r;
}

static int cmd(struct pgq *q, const char *sql, const char *what, struct dw_err *err)
{
	PGresult *r = exec(q, sql, 0, NULL, NULL, NULL, PGRES_COMMAND_OK, what, err);

	if (!r)
		return -1;
	PQclear(r);
	return 0;
}

void pgq_rollback(struct pgq *q)
{
	PGresult *r;

	if (!q || !q->in_tx)
		return;
	q->in_tx = false;
	if (PQstatus(q->c) != CONNECTION_OK)
		return;
	r = PQexec(q->c, "ROLLBACK");
	PQclear(r);
}

static int begin(struct pgq *q, struct dw_err *err)
{
	if (q->in_tx)
		pgq_rollback(q);
	if (cmd(q, "BEGIN", "begin", err) < 0)
		return -1;
	q->in_tx = true;
	return 0;
}

int pgq_commit(struct pgq *q, struct dw_err *err)
{
	if (!q->in_tx)
		return 0;
	q->in_tx = false;
	return cmd(q, "COMMIT", "commit", err);
}

static char *xasprintf(const char *fmt, ...) DW_PRINTF(1, 2);
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		abort();
	va_end(ap);
	return s;
}

static void build_sql(struct pgq *q)
{
	const char *t = q->table;

	q->sql_insert = xasprintf(
	    "INSERT INTO %s (idem_key, upstream, key, route, method, path, content_type, body, "
	    "request_id, created_at, sidecar, attempts, last_status, last_error, updated_at) "
	    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
	    "timestamptz 'epoch' + $10::bigint * interval '1 microsecond', $11, $12::int, "
	    "$13::int, $14, now()) ON CONFLICT (idem_key) DO NOTHING",
	    t);
	/* The ready rows: per (upstream, key) only the oldest queued one. */
	static const char cols[] =
	    "q.id, q.idem_key, q.upstream, q.key, q.route, q.method, q.path, q.content_type, "
	    "q.body, q.request_id, (extract(epoch FROM q.created_at) * 1000000)::bigint, "
	    "q.attempts, q.last_status, q.last_error, "
	    "(extract(epoch FROM q.updated_at) * 1000000)::bigint";
	static const char where[] =
	    "q.state = 'queued' AND q.next_attempt_at <= now() "
	    "AND ($1::text[] IS NULL OR q.upstream = ANY ($1::text[])) "
	    "AND NOT EXISTS (SELECT 1 FROM %s o WHERE o.state = 'queued' "
	    "AND o.upstream = q.upstream AND o.key = q.key AND o.id < q.id)";
	char *w = xasprintf(where, t);
	q->sql_claim = xasprintf("SELECT %s FROM %s q WHERE %s ORDER BY q.id LIMIT $2 "
				 "FOR UPDATE OF q SKIP LOCKED",
				 cols, t, w);
	q->sql_peek = xasprintf("SELECT %s FROM %s q WHERE %s ORDER BY q.id LIMIT $2", cols, t, w);
	free(w);
	q->sql_mark = xasprintf(
	    "UPDATE %s SET state = $2, attempts = $3::int, last_status = $4::int, "
	    "last_error = $5, updated_at = now(), "
	    "next_attempt_at = now() + $6::bigint * interval '1 microsecond' WHERE id = $1::bigint",
	    t);
	q->sql_keys = xasprintf(
	    "SELECT DISTINCT upstream, key FROM %s WHERE state = 'queued' AND key IS NOT NULL", t);
	q->sql_stats = xasprintf(
	    "SELECT count(*) FILTER (WHERE state = 'queued'), "
	    "count(*) FILTER (WHERE state = 'queued' AND next_attempt_at <= now()), "
	    "count(*) FILTER (WHERE state = 'delivered'), "
	    "count(*) FILTER (WHERE state = 'dead'), "
	    "coalesce((extract(epoch FROM min(created_at) FILTER (WHERE state = 'queued')) "
	    "* 1000000)::bigint, 0), "
	    "coalesce((extract(epoch FROM min(next_attempt_at) FILTER (WHERE state = 'queued') "
	    "- now()) * 1000000)::bigint, -1) "
	    "FROM %s WHERE ($1::text[] IS NULL OR upstream = ANY ($1::text[]))",
	    t);
}

/* Create the table and index when missing. Serialised across the fleet with
 * an advisory lock: concurrent CREATE TABLE IF NOT EXISTS can otherwise fail
 * on the catalog's unique index. */
static int ensure_schema(struct pgq *q, const char *table, struct dw_err *err)
{
	char *sql = NULL, *idx = NULL, lockkey[128];
	const char *p[1];
	PGresult *r;
	int rc = -1;

	if (begin(q, err) < 0)
		return -1;
	snprintf(lockkey, sizeof(lockkey), "dualwrite queue %s", table);
	p[0] = lockkey;
	r = exec(q, "SELECT pg_advisory_xact_lock(hashtext($1))", 1, p, NULL, NULL, PGRES_TUPLES_OK,
		 "lock schema", err);
	if (!r)
		goto out;
	PQclear(r);
	sql = xasprintf(
	    "CREATE TABLE IF NOT EXISTS %s ("
	    "id bigserial PRIMARY KEY, "
	    "idem_key text NOT NULL UNIQUE, "
	    "upstream text NOT NULL, "
	    "key text, "
	    "route text, "
	    "method text NOT NULL, "
	    "path text NOT NULL, "
	    "content_type text, "
	    "body bytea, "
	    "request_id text, "
	    "created_at timestamptz, "
	    "enqueued_at timestamptz NOT NULL DEFAULT now(), "
	    "sidecar text, "
	    "attempts int NOT NULL DEFAULT 0, "
	    "last_status int, "
	    "last_error text, "
	    "state text NOT NULL DEFAULT 'queued' "
	    "CHECK (state IN ('queued', 'delivered', 'dead')), "
	    "next_attempt_at timestamptz NOT NULL DEFAULT now(), "
	    "updated_at timestamptz NOT NULL DEFAULT now())",
	    q->table);
	if (cmd(q, sql, "create table", err) < 0)
		goto out;
	/* table is [a-z_][a-z0-9_]{0,62} (config checks it); PostgreSQL
	 * truncates a long index name by itself. */
	idx = xasprintf("CREATE INDEX IF NOT EXISTS \"%.50s_queued\" ON %s (upstream, key, id) "
			"WHERE state = 'queued'",
			table, q->table);
	if (cmd(q, idx, "create index", err) < 0)
		goto out;
	rc = pgq_commit(q, err);
out:
	if (rc < 0)
		pgq_rollback(q);
	free(sql);
	free(idx);
	return rc;
}

struct pgq *pgq_open(const char *dsn, const char *table, struct dw_err *err)
{
	/* Defaults first: a setting in the DSN overrides them. */
	const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
	const char *vals[] = {"3", "dualwrite", dsn ? dsn : "", NULL};
	struct pgq *q = dw_calloc(1, sizeof(*q));
	char *qt;

	q->c = PQconnectdbParams(keys, vals, 1);
	if (!q->c || PQstatus(q->c) != CONNECTION_OK) {
		char *m;
		pg_err(err, q->c, NULL, "connect");
		/* the daemon logs this: never a secret libpq quoted (SPEC §6) */
		m = pgdsn_scrub(err->msg, dsn);
		dw_err_set(err, "%s", m);
		free(m);
		goto fail;
	}
	PQsetNoticeProcessor(q->c, quiet_notice, NULL);
	if (cmd(q, "SET statement_timeout = 30000", "set statement_timeout", err) < 0 ||
	    cmd(q, "SET TimeZone = 'UTC'", "set TimeZone", err) < 0)
		goto fail;
	qt = PQescapeIdentifier(q->c, table, strlen(table));
	if (!qt) {
		pg_err(err, q->c, NULL, "quote table name");
		goto fail;
	}
	q->table = dw_strdup(qt);
	PQfreemem(qt);
	build_sql(q);
	if (ensure_schema(q, table, err) < 0)
		goto fail;
	return q;
fail:
	pgq_close(q);
	return NULL;
}

void pgq_close(struct pgq *q)
{
	if (!q)
		return;
	pgq_rollback(q);
	PQfinish(q->c);
	free(q->table);
	free(q->sql_insert);
	free(q->sql_claim);
	free(q->sql_peek);
	free(q->sql_mark);
	free(q->sql_keys);
	free(q->sql_stats);
	free(q);
}

bool pgq_broken(const struct pgq *q)
{
	return !q || !q->c || PQstatus(q->c) != CONNECTION_OK;
}

int pgq_forward(struct pgq *q, const struct spool_record *recs, size_t n, const char *sidecar,
		struct dw_err *err)
{
	char created[24], attempts[16], status[16];

	if (n == 0)
		return 0;
	if (begin(q, err) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		const struct spool_record *r = &recs[i];
		const char *v[14] = {r->idem_key,  r->upstream, r->key,	      r->route,
				     r->method,	   r->path,	r->content_type, r->body,
				     r->request_id, created,	sidecar,      attempts,
				     status,	   r->last_error};
		int lens[14] = {0}, fmts[14] = {0};
		PGresult *res;

		snprintf(created, sizeof(created), "%" PRId64, r->created_us);
		snprintf(attempts, sizeof(attempts), "%u", r->attempts);
		snprintf(status, sizeof(status), "%d", r->last_status);
		if (!r->body && r->content_type)
			v[6] = NULL;
		lens[7] = (int)r->body_len;
		fmts[7] = 1; /* bytea, binary */
		if (!r->last_status)
			v[12] = NULL;
		res = exec(q, q->sql_insert, 14, v, lens, fmts, PGRES_COMMAND_OK, "forward", err);
		if (!res) {
			pgq_rollback(q);
			return -1;
		}
		PQclear(res);
	}
	if (pgq_commit(q, err) < 0) {
		pgq_rollback(q);
		return -1;
	}
	return 0;
}

/* ---- forwarding from the spool ---- */

/* A small set of "upstream\nkey" strings (open addressing). */
struct sset {
	char **slot;
	size_t cap, n;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static char **sset_slot(const struct sset *s, const char *k)
{
	size_t i = hash_str(k) & (s->cap - 1);

	while (s->slot[i] && strcmp(s->slot[i], k) != 0)
		i = (i + 1) & (s->cap - 1);
	return &s->slot[i];
}

static bool sset_has(const struct sset *s, const char *k)
{
	return s->cap && *sset_slot(s, k);
}

static void sset_add(struct sset *s, const char *k)
{
	char **p;

	if ((s->n + 1) * 2 > s->cap) {
		struct sset g = {dw_calloc(s->cap ? s->cap * 2 : 64, sizeof(char *)),
				 s->cap ? s->cap * 2 : 64, s->n};
		for (size_t i = 0; i < s->cap; i++)
			if (s->slot[i])
				*sset_slot(&g, s->slot[i]) = s->slot[i];
		free(s->slot);
		*s = g;
	}
	p = sset_slot(s, k);
	if (!*p) {
		*p = dw_strdup(k);
		s->n++;
	}
}

static void sset_free(struct sset *s)
{
	for (size_t i = 0; i < s->cap; i++)
		free(s->slot[i]);
	free(s->slot);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t *list_state(struct spool *sp, enum spool_state st, uint64_t *v, size_t *n)
{
	size_t want = spool_list(sp, st, NULL, 0), got;

	v = dw_realloc(v, (*n + want + 1) * sizeof(*v));
	got = spool_list(sp, st, v + *n, want);
	*n += got < want ? got : want;
	return v;
}

long pgq_forward_spool(struct pgq *q, struct spool *sp, bool orphans, size_t max,
		       const char *sidecar, void (*moved)(void *arg, const struct spool_record *r),
		       void *arg, struct dw_errlist *warns, struct dw_err *err)
{
	size_t nw = 0, nlive, nr, n = 0;
	uint64_t *waiting = NULL, *ready = NULL;
	struct spool_record *batch = NULL;
	struct sset allowed = {0}, blocked = {0};
	long rc = -1;

	waiting = list_state(sp, SPOOL_QUEUED, waiting, &nw);
	if (orphans)
		waiting = list_state(sp, SPOOL_PENDING, waiting, &nw);
	if (nw == 0) {
		free(waiting);
		return 0;
	}
	qsort(waiting, nw, sizeof(*waiting), cmp_u64);
	/* After the lists: a key's oldest waiting record, when it is in them,
	 * is the one spool_ready names; when spool_ready names another (older,
	 * or a PENDING it will not let go), the key is blocked for now. */
	nlive = spool_list(sp, 0, NULL, 0);
	ready = dw_calloc(nlive ? nlive : 1, sizeof(*ready));
	nr = spool_ready(sp, ready, nlive);
	qsort(ready, nr, sizeof(*ready), cmp_u64);
	batch = dw_calloc(max ? max : 1, sizeof(*batch));

	for (size_t i = 0; i < nw && n < max; i++) {
		struct spool_record *r = &batch[n];
		struct dw_err rerr = {""};
		if (spool_read(sp, waiting[i], r, &rerr) < 0) {
			dw_errlist_add(warns, "%s", rerr.msg);
			continue;
		}
		if ((r->state != SPOOL_QUEUED && !(orphans && r->state == SPOOL_PENDING)) ||
		    !r->upstream || !r->idem_key || !r->method || !r->path) {
			/* Waiting but never built (spool_record_unbuilt): nothing to
			 * send anywhere, and left waiting it would hold its key. */
			if ((r->state == SPOOL_QUEUED || (orphans && r->state == SPOOL_PENDING)) &&
			    !r->method &&
			    spool_set_state(sp, r->seq, SPOOL_DEAD, r->attempts, r->last_status,
					    "nothing to send: the mirror was never built",
					    &rerr) < 0)
				dw_errlist_add(warns, "%s", rerr.msg);
			spool_record_clear(r);
			continue;
		}
		if (r->key) {
			char *k;
			bool ok;
			if (asprintf(&k, "%s\n%s", r->upstream, r->key) < 0)
				abort();
			if (sset_has(&blocked, k)) {
				ok = false;
			} else if (sset_has(&allowed, k)) {
				ok = true;
			} else {
				ok = bsearch(&waiting[i], ready, nr, sizeof(*ready), cmp_u64) != NULL;
				sset_add(ok ? &allowed : &blocked, k);
			}
			free(k);
			if (!ok) {
				spool_record_clear(r);
				continue;
			}
		}
		n++;
	}
	if (n == 0) {
		rc = 0;
		goto out;
	}
	if (pgq_forward(q, batch, n, sidecar, err) < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		struct dw_err serr = {""};
		if (moved)
			moved(arg, &batch[i]);
		if (spool_set_state(sp, batch[i].seq, SPOOL_FORWARDED, batch[i].attempts,
				    batch[i].last_status, "moved to the postgres queue", &serr) < 0)
			dw_errlist_add(warns, "seq=%" PRIu64 " forwarded but not marked: %s",
				       batch[i].seq, serr.msg);
	}
	rc = (long)n;
out:
	for (size_t i = 0; i < n; i++)
		spool_record_clear(&batch[i]);
	free(batch);
	free(waiting);
	free(ready);
	sset_free(&allowed);
	sset_free(&blocked);
	return rc;
}

int pgq_queued_keys(struct pgq *q, void (*fn)(void *arg, const char *upstream, const char *key),
		    void *arg, struct dw_err *err)
{
	PGresult *r = exec(q, q->sql_keys, 0, NULL, NULL, NULL, PGRES_TUPLES_OK, "queued keys", err);

	if (!r)
		return -1;
	for (int i = 0; i < PQntuples(r); i++)
		fn(arg, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
	PQclear(r);
	return 0;
}

/* {"a","b"}: a text[] literal of the upstream names; NULL when none. */
static char *array_literal(const char *const *v, size_t n)
{
	size_t len = 3;
	char *s, *p;

	if (n == 0)
		return NULL;
	for (size_t i = 0; i < n; i++)
		len += 2 * strlen(v[i]) + 3;
	s = p = dw_malloc(len);
	*p++ = '{';
	for (size_t i = 0; i < n; i++) {
		if (i)
			*p++ = ',';
		*p++ = '"';
		for (const char *c = v[i]; *c; c++) {
			if (*c == '"' || *c == '\\')
				*p++ = '\\';
			*p++ = *c;
		}
		*p++ = '"';
	}
	*p++ = '}';
	*p = '\0';
	return s;
}

static char *getstr(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : dw_strdup(PQgetvalue(r, row, col));
}

static int64_t getint(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

int pgq_claim(struct pgq *q, const char *const *upstreams, size_t nup, size_t limit, bool lock,
	      struct spool_record **out, size_t *n, struct dw_err *err)
{
	char *arr = array_literal(upstreams, nup), lim[24];
	const char *v[2] = {arr, lim};
	struct spool_record *recs = NULL;
	PGresult *r;
	int rows;

	*out = NULL;
	*n = 0;
	snprintf(lim, sizeof(lim), "%zu", limit ? limit : 1);
	if (begin(q, err) < 0) {
		free(arr);
		return -1;
	}
	r = exec(q, lock ? q->sql_claim : q->sql_peek, 2, v, NULL, NULL, PGRES_TUPLES_OK, "claim",
		 err);
	free(arr);
	if (!r) {
		pgq_rollback(q);
		return -1;
	}
	rows = PQntuples(r);
	recs = dw_calloc(rows ? (size_t)rows : 1, sizeof(*recs));
	for (int i = 0; i < rows; i++) {
		struct spool_record *x = &recs[i];
		size_t blen = 0;

		x->seq = (uint64_t)getint(r, i, 0);
		x->state = SPOOL_QUEUED;
		x->idem_key = getstr(r, i, 1);
		x->upstream = getstr(r, i, 2);
		x->key = getstr(r, i, 3);
		x->route = getstr(r, i, 4);
		x->method = getstr(r, i, 5);
		x->path = getstr(r, i, 6);
		x->content_type = getstr(r, i, 7);
		if (!PQgetisnull(r, i, 8)) {
			unsigned char *b = PQunescapeBytea(
			    (const unsigned char *)PQgetvalue(r, i, 8), &blen);
			if (!b) {
				dw_err_set(err, "postgres: claim: cannot decode a body");
				PQclear(r);
				for (int j = 0; j <= i; j++)
					spool_record_clear(&recs[j]);
				free(recs);
				pgq_rollback(q);
				return -1;
			}
			x->body = dw_malloc(blen + 1);
			memcpy(x->body, b, blen);
			x->body[blen] = '\0';
			x->body_len = blen;
			PQfreemem(b);
		}
		x->request_id = getstr(r, i, 9);
		x->created_us = getint(r, i, 10);
		x->attempts = (uint32_t)getint(r, i, 11);
		x->last_status = (int)getint(r, i, 12);
		x->last_error = getstr(r, i, 13);
		x->updated_us = getint(r, i, 14);
	}
	PQclear(r);
	*out = recs;
	*n = (size_t)rows;
	return 0;
}

int pgq_mark(struct pgq *q, uint64_t id, enum spool_state st, uint32_t attempts, int status,
	     const char *error, int64_t retry_us, struct dw_err *err)
{
	char ids[24], att[16], sts[16], retry[24];
	const char *state = st == SPOOL_DELIVERED ? "delivered" : st == SPOOL_DEAD ? "dead" : "queued";
	const char *v[6] = {ids, state, att, status ? sts : NULL, error, retry};
	PGresult *r;

	snprintf(ids, sizeof(ids), "%" PRIu64, id);
	snprintf(att, sizeof(att), "%u", attempts);
	snprintf(sts, sizeof(sts), "%d", status);
	snprintf(retry, sizeof(retry), "%" PRId64, retry_us > 0 ? retry_us : 0);
	r = exec(q, q->sql_mark, 6, v, NULL, NULL, PGRES_COMMAND_OK, "mark", err);
	if (!r)
		return -1;
	PQclear(r);
	return 0;
}

int pgq_stats(struct pgq *q, const char *const *upstreams, size_t nup, struct pgq_stats *out,
	      struct dw_err *err)
{
	char *arr = array_literal(upstreams, nup);
	const char *v[1] = {arr};
	PGresult *r;

	memset(out, 0, sizeof(*out));
	r = exec(q, q->sql_stats, 1, v, NULL, NULL, PGRES_TUPLES_OK, "stats", err);
	free(arr);
	if (!r)
		return -1;
	if (PQntuples(r) == 1) {
		out->queued = getint(r, 0, 0);
		out->due = getint(r, 0, 1);
		out->delivered = getint(r, 0, 2);
		out->dead = getint(r, 0, 3);
		out->oldest_queued_us = getint(r, 0, 4);
		out->next_due_in_us = getint(r, 0, 5);
	}
	PQclear(r);
	return 0;
}
