/*
 * backfill — `dualwrite backfill`: copy the history of one legacy table into
 * the new one through the configured column map, resumably.
 *
 * The source is read by keyset pagination on its key (WHERE key > last ORDER
 * BY key LIMIT batch; never OFFSET, which rescans and skips or repeats rows
 * under concurrent writes), so memory stays one batch whatever the table
 * size. Each batch is mapped by the expression engine, COPYed into a stage
 * and inserted with ON CONFLICT (key) DO NOTHING — a row the dual-write
 * already delivered is newer than the history and must never be overwritten
 * — and the checkpoint row (dualwrite_backfill_checkpoint, in the target) is
 * advanced in that same transaction. A kill at any instant therefore resumes
 * exactly where the last commit left off: no gap, no duplicate. The next
 * batch is fetched from the source while the current one is written.
 *
 * The Phase 1/2 race (README, Phase 2): a row the backfill read can be
 * deleted on the legacy side before the batch commits; the mirrored DELETE
 * then finds nothing on the new side (404, counted delivered) and the batch
 * would resurrect the row. So, after each batch commits, its keys are read
 * again from the source and the rows the source no longer has are deleted
 * from the target (ids are never reused, so a key gone from the source is
 * gone for good). After the commit, not before: a DELETE running while the
 * batch is uncommitted does not see its rows. A kill between the commit and
 * that re-check is covered by the checkpoint's recheck_after/recheck_pending:
 * the next run re-checks that batch's key range first. Updates need no such
 * step: ON CONFLICT DO NOTHING keeps whatever the mirror delivered, and an
 * update mirrored before the row was copied is an upsert on the new side.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "jsonfast.h"
#include "pgutil.h"

static const char CKPT_DDL[] =
	"CREATE TABLE IF NOT EXISTS dualwrite_backfill_checkpoint ("
	"table_name text PRIMARY KEY, last_key text, rows_copied bigint NOT NULL DEFAULT 0, "
	"started_at timestamptz NOT NULL DEFAULT now(), "
	"updated_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz)";

static const char CKPT_UPSERT[] =
	"INSERT INTO dualwrite_backfill_checkpoint AS c "
	"(table_name, last_key, rows_copied, started_at, updated_at, finished_at) "
	"VALUES ($1, $2, $3::bigint, now(), now(), CASE WHEN $4::bool THEN now() END) "
	"ON CONFLICT (table_name) DO UPDATE SET last_key = COALESCE(EXCLUDED.last_key, c.last_key), "
	"rows_copied = c.rows_copied + EXCLUDED.rows_copied, updated_at = now(), "
	"finished_at = EXCLUDED.finished_at";

struct opts {
	const char *config, *table;
	long batch;
	double rate;
	bool dry_run, update, restart;
};

struct ckpt {
	bool exists, finished;
	char *last_key; /* NULL: from the start */
	long long rows;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: dualwrite backfill -c FILE --table NAME [--batch N] [--rate ROWS/S]\n"
		   "                          [--dry-run] [--on-conflict nothing|update] [--restart]\n"
		   "  Copy the source table's rows into the target through the table map,\n"
		   "  resumably (the checkpoint lives in the target database).\n"
		   "  --batch N        rows per batch and transaction (default 1000)\n"
		   "  --rate ROWS/S    throttle to this many rows per second\n"
		   "  --dry-run        print the plan and the first 5 mapped rows; write nothing\n"
		   "  --on-conflict    nothing (default: rows already in the target win) or update\n"
		   "  --restart        forget a finished or partial run and start from the beginning\n");
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{"config", required_argument, NULL, 'c'}, {"table", required_argument, NULL, 't'},
		{"batch", required_argument, NULL, 'b'},  {"rate", required_argument, NULL, 'r'},
		{"dry-run", no_argument, NULL, 'n'},	  {"on-conflict", required_argument, NULL, 'o'},
		{"restart", no_argument, NULL, 'R'},	  {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	char *end;
	int ch;
	o->batch = 1000;
	optind = 0;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "c:t:h", lo, NULL)) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case 't': o->table = optarg; break;
		case 'b':
			o->batch = strtol(optarg, &end, 10);
			if (*end || o->batch < 1 || o->batch > 1000000) {
				fprintf(stderr, "dualwrite backfill: --batch: want 1..1000000, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case 'r':
			o->rate = strtod(optarg, &end);
			if (*end || !(o->rate > 0) || !isfinite(o->rate)) {
				fprintf(stderr, "dualwrite backfill: --rate: want a positive number, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case 'n': o->dry_run = true; break;
		case 'o':
			if (strcmp(optarg, "nothing") == 0)
				o->update = false;
			else if (strcmp(optarg, "update") == 0)
				o->update = true;
			else {
				fprintf(stderr, "dualwrite backfill: --on-conflict: want nothing or update, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case 'R': o->restart = true; break;
		case 'h': usage(stdout); return 0;
		default:
			fprintf(stderr, "dualwrite backfill: unknown or incomplete option \"%s\"\n", argv[optind - 1]);
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "dualwrite backfill: unexpected argument \"%s\"\n", argv[optind]);
		return 2;
	}
	if (!o->config || !o->table) {
		fprintf(stderr, "dualwrite backfill: -c FILE and --table NAME are required\n");
		usage(stderr);
		return 2;
	}
	return -1;
}

static int read_ckpt(struct pgu_map *m, struct ckpt *ck, struct dw_err *err)
{
	memset(ck, 0, sizeof(*ck));
	PGresult *r = pgu_exec(m->tgt, "SELECT to_regclass('dualwrite_backfill_checkpoint') IS NOT NULL",
			       0, NULL, PGRES_TUPLES_OK, err);
	if (!r)
		return -1;
	bool have = PQgetvalue(r, 0, 0)[0] == 't';
	PQclear(r);
	if (!have)
		return 0;
	const char *p[1] = {m->name};
	r = pgu_exec(m->tgt, "SELECT last_key, rows_copied, finished_at IS NOT NULL "
			     "FROM dualwrite_backfill_checkpoint WHERE table_name = $1",
		     1, p, PGRES_TUPLES_OK, err);
	if (!r)
		return -1;
	if (PQntuples(r) == 1) {
		ck->exists = true;
		ck->last_key = PQgetisnull(r, 0, 0) ? NULL : dw_strdup(PQgetvalue(r, 0, 0));
		ck->rows = atoll(PQgetvalue(r, 0, 1));
		ck->finished = PQgetvalue(r, 0, 2)[0] == 't';
	}
	PQclear(r);
	return 0;
}

/* Rows in the source: the planner's estimate when it has one (cheap), else count(*). */
static long long estimate_rows(struct pgu_map *m)
{
	struct dw_err err = {{0}};
	const char *p[1] = {m->src_table};
	PGresult *r = pgu_exec(m->src, "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass($1)",
			       1, p, PGRES_TUPLES_OK, &err);
	long long n = r && PQntuples(r) ? atoll(PQgetvalue(r, 0, 0)) : -1;
	PQclear(r);
	if (n > 0)
		return n;
	char sql[512];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", m->src_table);
	r = pgu_exec(m->src, sql, 0, NULL, PGRES_TUPLES_OK, &err);
	n = r ? atoll(PQgetvalue(r, 0, 0)) : 0;
	PQclear(r);
	return n;
}

/* Keyset pagination, on a one-column or a composite key (see pgutil.h). */
static char *select_sql(const struct pgu_map *m, bool after, long limit)
{
	char *tail = pgu_keyset_tail(m, after, limit);
	char *sql = pgu_source_select(m, tail);
	free(tail);
	return sql;
}

static int dry_run(struct pgu_map *m, const struct opts *o, const struct ckpt *ck,
		   struct dw_err *err)
{
	char *first = select_sql(m, false, o->batch), *next = select_sql(m, true, o->batch);
	char *ins = pgu_insert_sql(m, o->update);
	int rc = -1;
	PGresult *r = NULL;

	printf("backfill %s (dry run: nothing is written)\n", m->name);
	for (int side = 0; side < 2; side++) {
		const struct dw_table_side *ts = side ? &m->tm->target : &m->tm->source;
		printf("  %s: %s (key", side ? "target" : "source", ts->table);
		for (size_t k = 0; k < m->nkey; k++)
			printf("%s %s %s", k ? "," : "", ts->keys[k],
			       side ? m->tgt_key_types[k] : m->src_key_types[k]);
		printf(") in database \"%s\"\n", PQdb(side ? m->tgt : m->src));
	}
	printf("  batch: %ld rows; on conflict: %s; rate: ", o->batch,
	       o->update ? "update" : "nothing (existing target rows are kept)");
	if (o->rate > 0)
		printf("%.0f rows/s\n", o->rate);
	else
		printf("unlimited\n");
	if (ck->finished && !o->restart)
		printf("  checkpoint: complete (%lld rows); --restart to run again\n", ck->rows);
	else if (ck->exists && !o->restart)
		printf("  checkpoint: resumes after key %s (%lld rows done)\n",
		       ck->last_key ? ck->last_key : "(none)", ck->rows);
	else
		printf("  checkpoint: none; starts from the first key\n");
	printf("  columns (target <- source, as verify computes it):\n");
	for (size_t i = 0; i < m->ncols; i++)
		printf("    %-20s %-26s <- %s\n", m->cols[i].name, m->cols[i].type,
		       m->cols[i].src_sql ? m->cols[i].src_sql : "(expression)");
	printf("  source SQL: %s\n", first);
	printf("  source SQL (next batches): %s\n", next);
	printf("  target SQL: COPY pg_temp.dw_stage FROM STDIN; %s\n", ins);
	printf("  after each commit: the batch's keys are read again from the source, and the rows\n"
	       "    it no longer has (deleted while the batch was in flight) are deleted from the target\n");
	printf("  first 5 mapped rows:\n");
	char *sql = select_sql(m, false, 5);
	r = pgu_exec(m->src, sql, 0, NULL, PGRES_TUPLES_OK, err);
	free(sql);
	if (!r)
		goto out;
	for (int i = 0; i < PQntuples(r); i++) {
		json_t *j = pgu_map_row_json(m, r, i, err);
		if (!j)
			goto out;
		/* reals as the backfill writes them (21.3, not jansson's 21.300000000000001) */
		char *s = jsonfast_dumps(j, NULL);
		printf("  %s\n", s ? s : "(not writable as JSON)");
		free(s);
		json_decref(j);
	}
	rc = 0;
out:
	PQclear(r);
	free(first);
	free(next);
	free(ins);
	return rc;
}

/* Collect the one result of an async query. */
static PGresult *take_result(PGconn *c, struct dw_err *err)
{
	PGresult *r, *keep = NULL;
	while ((r = PQgetResult(c))) {
		if (keep)
			PQclear(keep);
		keep = r;
	}
	if (!keep || PQresultStatus(keep) != PGRES_TUPLES_OK) {
		const char *m = keep ? PQresultErrorMessage(keep) : PQerrorMessage(c);
		dw_err_set(err, "source: %.*s", (int)strcspn(m, "\n"), m);
		PQclear(keep);
		return NULL;
	}
	return keep;
}

static int send_fetch(struct pgu_map *m, const char *last, struct dw_err *err)
{
	char *p[DW_TABLE_KEY_MAX] = {NULL};
	if (last && pgu_key_split(m, last, p, err) < 0)
		return -1;
	int ok = last ? PQsendQueryPrepared(m->src, "dw_next", (int)m->nkey,
					    (const char *const *)p, NULL, NULL, 0)
		      : PQsendQueryPrepared(m->src, "dw_first", 0, NULL, NULL, NULL, 0);
	for (size_t k = 0; k < m->nkey; k++)
		free(p[k]);
	if (!ok) {
		dw_err_set(err, "source: %.*s", (int)strcspn(PQerrorMessage(m->src), "\n"),
			   PQerrorMessage(m->src));
		return -1;
	}
	return 0;
}

static int prepare_source(struct pgu_map *m, long batch, struct dw_err *err)
{
	for (int after = 0; after < 2; after++) {
		char *sql = select_sql(m, after, batch);
		PGresult *r = PQprepare(m->src, after ? "dw_next" : "dw_first", sql,
					after ? (int)m->nkey : 0, NULL);
		free(sql);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			const char *e = PQresultErrorMessage(r);
			dw_err_set(err, "source: %.*s", (int)strcspn(e, "\n"), e);
			PQclear(r);
			return -1;
		}
		PQclear(r);
	}
	return 0;
}

static void progress(const char *name, long long done, long long total, double secs)
{
	double rate = secs > 0 ? (double)done / secs : 0;
	if (total < done)
		total = done;
	double eta = rate > 0 ? (double)(total - done) / rate : 0;
	fprintf(stderr, "\r  %s: %lld/~%lld rows (%3.0f%%)  %.0f rows/s  ETA %.0f s   ", name, done,
		total, total ? 100.0 * (double)done / (double)total : 100.0, rate, eta);
	fflush(stderr);
}

static void sleep_us(int64_t us)
{
	if (us <= 0)
		return;
	struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
	while (nanosleep(&ts, &ts) != 0)
		;
}

/* ---- the Phase 1/2 race: rows deleted from the source while their batch was in flight ---- */

static const char RECHECK_DDL[] =
	"ALTER TABLE dualwrite_backfill_checkpoint ADD COLUMN IF NOT EXISTS recheck_after text, "
	"ADD COLUMN IF NOT EXISTS recheck_pending boolean NOT NULL DEFAULT false";

/* The batch just written covers keys (after, last]: re-check it after the commit. Inside the
 * batch's transaction, so a kill before the re-check leaves it pending for the next run. */
static int recheck_mark(struct pgu_map *m, const char *after, struct dw_err *err)
{
	const char *p[2] = {m->name, after};
	PGresult *r = pgu_exec(m->tgt,
			       "UPDATE dualwrite_backfill_checkpoint SET recheck_after = $2, "
			       "recheck_pending = true WHERE table_name = $1",
			       2, p, PGRES_COMMAND_OK, err);
	PQclear(r);
	return r ? 0 : -1;
}

/* A PostgreSQL array literal of column col of rows [0, n) of r. malloc'd. */
static char *recheck_array(const PGresult *r, int col, int n)
{
	struct pgu_buf b = {0};
	pgu_buf_puts(&b, "{");
	for (int i = 0; i < n; i++) {
		pgu_buf_puts(&b, i ? ",\"" : "\"");
		for (const char *q = PQgetvalue(r, i, col); *q; q++) {
			if (*q == '"' || *q == '\\')
				pgu_buf_add(&b, "\\", 1);
			pgu_buf_add(&b, q, 1);
		}
		pgu_buf_puts(&b, "\"");
	}
	pgu_buf_puts(&b, "}");
	return b.p;
}

/* "u.k1, u.k2" / "unnest($1::t1[], $2::t2[]) AS u(k1, k2)" / "x.a = u.k1 AND x.b = u.k2":
 * the pieces of a statement on a set of keys, one array parameter per key column (a
 * composite key is matched on all its columns). */
static void keys_unnest(const struct pgu_map *m, char *const *types, struct pgu_buf *b)
{
	pgu_buf_puts(b, "unnest(");
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(b, "%s$%zu::%s[]", k ? ", " : "", k + 1, types[k]);
	pgu_buf_puts(b, ") AS u(");
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(b, "%sk%zu", k ? ", " : "", k + 1);
	pgu_buf_puts(b, ")");
}

static void keys_match(const struct pgu_map *m, const char *alias, char *const *cols,
		       struct pgu_buf *b)
{
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(b, "%s%s.%s = u.k%zu", k ? " AND " : "", alias, cols[k], k + 1);
}

/* The re-check's source statement on its own session src: of the keys $1..$nkey (source key
 * values, which the target key holds, as the checkpoint and verify assume), those the source
 * no longer has. */
static int recheck_prepare(struct pgu_map *m, PGconn *src, struct dw_err *err)
{
	struct pgu_buf q = {0};
	pgu_buf_puts(&q, "SELECT ");
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(&q, "%su.k%zu", k ? ", " : "", k + 1);
	pgu_buf_puts(&q, " FROM ");
	keys_unnest(m, m->src_key_types, &q);
	pgu_buf_printf(&q, " WHERE NOT EXISTS (SELECT 1 FROM %s s WHERE ", m->src_table);
	keys_match(m, "s", m->src_keys, &q);
	pgu_buf_puts(&q, ")");
	PGresult *r = PQprepare(src, "dw_recheck", q.p, (int)m->nkey, NULL);
	pgu_buf_free(&q);
	int rc = 0;
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		const char *e = PQresultErrorMessage(r);
		dw_err_set(err, "source: re-check: %.*s", (int)strcspn(e, "\n"), e);
		rc = -1;
	}
	PQclear(r);
	return rc;
}

/* One array literal per key column: columns [0, nkey) of the first n rows of keys. */
static char **recheck_arrays(const struct pgu_map *m, const PGresult *keys, int n)
{
	char **arr = dw_malloc(m->nkey * sizeof(*arr));
	for (size_t k = 0; k < m->nkey; k++)
		arr[k] = recheck_array(keys, (int)k, n);
	return arr;
}

static void recheck_arrays_free(const struct pgu_map *m, char **arr)
{
	for (size_t k = 0; k < m->nkey; k++)
		free(arr[k]);
	free(arr);
}

/* Send the re-check of the key (columns [0, nkey)) of the first n rows of keys without
 * waiting: it runs on the source while the next batch is mapped. 1 when sent, 0 when there
 * is nothing to check. */
static int recheck_send(struct pgu_map *m, PGconn *src, const PGresult *keys, int n,
			struct dw_err *err)
{
	if (n == 0)
		return 0;
	char **arr = recheck_arrays(m, keys, n);
	int ok = PQsendQueryPrepared(src, "dw_recheck", (int)m->nkey, (const char *const *)arr,
				     NULL, NULL, 0);
	recheck_arrays_free(m, arr);
	if (!ok) {
		dw_err_set(err, "source: re-check: %.*s", (int)strcspn(PQerrorMessage(src), "\n"),
			   PQerrorMessage(src));
		return -1;
	}
	return 1;
}

/* Collect a sent re-check and delete from the target the rows the source no longer has.
 * Autocommit: a deletion is right whenever it happens, as a deleted id never comes back. It
 * must happen before the next batch commits, which moves the pending re-check past it. */
static int recheck_collect(struct pgu_map *m, PGconn *src, long long *removed,
			   struct dw_err *err)
{
	PGresult *gone = take_result(src, err);
	if (!gone) {
		dw_err_prefix(err, "re-reading the batch's keys");
		return -1;
	}
	int ng = PQntuples(gone);
	if (ng == 0) {
		PQclear(gone);
		return 0;
	}
	char **arr = recheck_arrays(m, gone, ng);
	PQclear(gone);
	struct pgu_buf q = {0};
	pgu_buf_printf(&q, "DELETE FROM %s t USING ", m->tgt_table);
	keys_unnest(m, m->tgt_key_types, &q);
	pgu_buf_puts(&q, " WHERE ");
	keys_match(m, "t", m->tgt_keys, &q);
	PGresult *r = pgu_exec(m->tgt, q.p, (int)m->nkey, (const char *const *)arr,
			       PGRES_COMMAND_OK, err);
	recheck_arrays_free(m, arr);
	pgu_buf_free(&q);
	if (!r) {
		dw_err_prefix(err, "deleting rows the source no longer has");
		return -1;
	}
	*removed += atoll(PQcmdTuples(r));
	PQclear(r);
	return 0;
}

/* Send and collect. */
static int recheck_keys(struct pgu_map *m, PGconn *src, const PGresult *keys, int n,
			long long *removed, struct dw_err *err)
{
	int sent = recheck_send(m, src, keys, n, err);
	return sent <= 0 ? sent : recheck_collect(m, src, removed, err);
}

/* Nothing is pending: the last committed batch has been re-checked. */
static int recheck_pending_clear(struct pgu_map *m, struct dw_err *err)
{
	const char *p[1] = {m->name};
	PGresult *r = pgu_exec(m->tgt,
			       "UPDATE dualwrite_backfill_checkpoint SET recheck_pending = false "
			       "WHERE table_name = $1",
			       1, p, PGRES_COMMAND_OK, err);
	PQclear(r);
	return r ? 0 : -1;
}

/* The pending re-check a killed run left (its last batch committed, not re-checked): the
 * target's keys in (recheck_after, last_key] are re-checked against the source, all columns of
 * a composite key (row comparison, the order the keyset pagination reads). The range is
 * read on the target, in the target's key order (the same order as the source's for the
 * integer keys of the seeds; text keys under differing collations may be re-checked only in
 * part, which verify would report). Then the flag is cleared. No-op when nothing is pending. */
static int recheck_pending(struct pgu_map *m, PGconn *src, long long *removed,
			   struct dw_err *err)
{
	const char *p[2] = {m->name, NULL};
	PGresult *r = pgu_exec(m->tgt,
			       "SELECT to_jsonb(c)->>'recheck_after', c.last_key, "
			       "coalesce((to_jsonb(c)->>'recheck_pending')::boolean, false) "
			       "FROM dualwrite_backfill_checkpoint c WHERE c.table_name = $1",
			       1, p, PGRES_TUPLES_OK, err);
	if (!r)
		return -1;
	if (PQntuples(r) != 1 || PQgetvalue(r, 0, 2)[0] != 't' || PQgetisnull(r, 0, 1)) {
		PQclear(r);
		return 0;
	}
	char *after = PQgetisnull(r, 0, 0) ? NULL : dw_strdup(PQgetvalue(r, 0, 0));
	char *last = dw_strdup(PQgetvalue(r, 0, 1));
	PQclear(r);
	r = NULL;
	/* The checkpoints' values, split per key column (a composite key's are a JSON array):
	 * params [0, nkey) for last_key, [nkey, 2 nkey) for recheck_after. */
	char **kp = dw_calloc(2 * m->nkey, sizeof(*kp));
	int rc = -1;
	if (pgu_key_split(m, last, kp, err) < 0 ||
	    (after && pgu_key_split(m, after, kp + m->nkey, err) < 0)) {
		dw_err_prefix(err, "the pending re-check's range");
		goto out;
	}
	/* Row comparisons: (t.a, t.b) <= (x, y) orders as the keyset pagination does. */
	struct pgu_buf cols = {0}, q = {0};
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(&cols, "%st.%s", k ? ", " : "", m->tgt_keys[k]);
	pgu_buf_puts(&q, "SELECT ");
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(&q, "%st.%s::text", k ? ", " : "", m->tgt_keys[k]);
	pgu_buf_printf(&q, " FROM %s t WHERE (%s) <= (", m->tgt_table, cols.p);
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(&q, "%s$%zu::%s", k ? ", " : "", k + 1, m->tgt_key_types[k]);
	pgu_buf_puts(&q, ")");
	if (after) {
		pgu_buf_printf(&q, " AND (%s) > (", cols.p);
		for (size_t k = 0; k < m->nkey; k++)
			pgu_buf_printf(&q, "%s$%zu::%s", k ? ", " : "", m->nkey + k + 1,
				       m->tgt_key_types[k]);
		pgu_buf_puts(&q, ")");
	}
	r = pgu_exec(m->tgt, q.p, (int)(after ? 2 * m->nkey : m->nkey), (const char *const *)kp,
		     PGRES_TUPLES_OK, err);
	pgu_buf_free(&cols);
	pgu_buf_free(&q);
	rc = r && recheck_keys(m, src, r, PQntuples(r), removed, err) == 0 ?
		     recheck_pending_clear(m, err) : -1;
out:
	PQclear(r);
	for (size_t k = 0; k < 2 * m->nkey; k++)
		free(kp[k]);
	free(kp);
	free(after);
	free(last);
	return rc;
}

/* One batch: stage, insert, advance the checkpoint, commit — or nothing. */
static int write_batch(struct pgu_map *m, const struct opts *o, const struct pgu_buf *copy,
		       const char *batch_after, const char *last_key, long n, bool final, bool first,
		       long *inserted, struct dw_err *err)
{
	char nbuf[32];
	snprintf(nbuf, sizeof(nbuf), "%ld", n);
	const char *p[4] = {m->name, last_key, nbuf, final ? "true" : "false"};
	PGresult *r;

	if (pgu_cmd(m->tgt, "BEGIN", err) < 0)
		return -1;
	if (first) {
		if (pgu_cmd(m->tgt, CKPT_DDL, err) < 0 || pgu_cmd(m->tgt, RECHECK_DDL, err) < 0)
			goto fail;
		if (o->restart) {
			const char *q[1] = {m->name};
			r = pgu_exec(m->tgt, "DELETE FROM dualwrite_backfill_checkpoint WHERE table_name = $1",
				     1, q, PGRES_COMMAND_OK, err);
			if (!r)
				goto fail;
			PQclear(r);
		}
	}
	if (pgu_write_rows(m, copy, o->update, inserted, err) < 0)
		goto fail;
	r = pgu_exec(m->tgt, CKPT_UPSERT, 4, p, PGRES_COMMAND_OK, err);
	if (!r)
		goto fail;
	PQclear(r);
	if (n > 0 && recheck_mark(m, batch_after, err) < 0)
		goto fail;
	if (pgu_cmd(m->tgt, "COMMIT", err) < 0)
		goto fail;
	return 0;
fail:
	r = PQexec(m->tgt, "ROLLBACK");
	PQclear(r);
	return -1;
}

static int run(struct pgu_map *m, const struct opts *o, struct ckpt *ck, struct dw_err *err)
{
	long batch = o->batch;
	/* Throttled runs take about ten batches a second so the rate is smooth. */
	if (o->rate > 0 && (double)batch > o->rate / 10)
		batch = o->rate / 10 >= 1 ? (long)(o->rate / 10) : 1;
	char *last = o->restart ? NULL : (ck->last_key ? dw_strdup(ck->last_key) : NULL);
	long long base = o->restart ? 0 : ck->rows, done = 0, skipped = 0, removed = 0;
	long long total = estimate_rows(m);
	bool tty = cli_is_tty(), first = true;
	struct pgu_buf copy = {0};
	PGresult *r = NULL;
	/* The re-checks' own source session: the main one is busy fetching the next batch. */
	PGconn *rsrc = NULL;
	int rc = -1, rechecking = 0;
	int64_t t0 = dw_now_us();

	/* Each batch commits with its checkpoint, so a commit lost to a server
	 * crash rewinds both together: the resumed run redoes that batch. No
	 * need to wait for the WAL flush of every batch. */
	if (pgu_cmd(m->tgt, "SET synchronous_commit = off", err) < 0 ||
	    !(rsrc = pgu_connect(m->tm->source.dsn, "source", err)) ||
	    recheck_prepare(m, rsrc, err) < 0 ||
	    (ck->exists && recheck_pending(m, rsrc, &removed, err) < 0) || pgu_stage(m, err) < 0 ||
	    prepare_source(m, batch, err) < 0 ||
	    send_fetch(m, last, err) < 0 || !(r = take_result(m->src, err)))
		goto out;
	for (;;) {
		long n = PQntuples(r);
		bool final = n < batch;
		char *next_last = n ? pgu_row_key(m, r, (int)n - 1) : NULL;
		/* Overlap: the source reads the next batch while the target writes this one. */
		if (!final && send_fetch(m, next_last, err) < 0) {
			free(next_last);
			goto out;
		}
		pgu_buf_reset(&copy);
		for (int i = 0; i < n; i++)
			if (pgu_map_row(m, r, i, &copy, err) < 0) {
				free(next_last);
				goto out;
			}
		long ins = 0;
		/* The previous batch's re-check, then this batch, then its re-check is sent. */
		if ((rechecking && recheck_collect(m, rsrc, &removed, err) < 0) ||
		    write_batch(m, o, &copy, last, next_last ? next_last : last, n, final, first,
				&ins, err) < 0 ||
		    (rechecking = recheck_send(m, rsrc, r, (int)n, err)) < 0) {
			free(next_last);
			goto out;
		}
		first = false;
		done += n;
		skipped += n - ins;
		if (next_last) {
			free(last);
			last = next_last;
		}
		PQclear(r);
		r = NULL;
		double secs = (double)(dw_now_us() - t0) / 1e6;
		if (tty)
			progress(m->name, base + done, total, secs);
		if (final)
			break;
		if (o->rate > 0)
			sleep_us((int64_t)((double)done / o->rate * 1e6) - (dw_now_us() - t0));
		if (!(r = take_result(m->src, err)))
			goto out;
	}
	/* The last batch is re-checked: nothing is pending any more. */
	if ((rechecking && recheck_collect(m, rsrc, &removed, err) < 0) ||
	    recheck_pending_clear(m, err) < 0)
		goto out;
	double secs = (double)(dw_now_us() - t0) / 1e6;
	if (tty)
		fputc('\n', stderr);
	printf("backfill %s: %lld rows in %.1f s (%.0f rows/s), %lld skipped (already present)",
	       m->name, done, secs, secs > 0 ? (double)done / secs : 0.0, skipped);
	if (removed)
		printf(", %lld deleted on the source meanwhile (removed again)", removed);
	if (base)
		printf("; %lld rows in all with the earlier run", base + done);
	printf("\n");
	rc = 0;
out:
	if (rc != 0 && tty)
		fputc('\n', stderr);
	PQclear(r);
	PQfinish(rsrc);
	free(last);
	pgu_buf_free(&copy);
	return rc;
}

int cmd_backfill(int argc, char **argv)
{
	struct opts o = {0};
	int rc = parse(argc, argv, &o);
	if (rc >= 0)
		return rc;
	struct dw_config *cfg = cli_load_config(o.config);
	if (!cfg)
		return 2;
	struct pgu_map m;
	struct ckpt ck = {0};
	struct dw_err err = {{0}};
	rc = pgu_map_open(&m, cfg, o.table, &err);
	if (rc != PGU_OK)
		goto out;
	rc = 1;
	if (read_ckpt(&m, &ck, &err) < 0) {
		dw_err_prefix(&err, "table %s: checkpoint", m.name);
		goto out;
	}
	if (o.dry_run) {
		if (dry_run(&m, &o, &ck, &err) < 0) {
			dw_err_prefix(&err, "table %s", m.name);
			goto out;
		}
		rc = 0;
		goto out;
	}
	if (ck.finished && !o.restart) {
		/* A run killed after its last commit has not re-checked that batch yet. */
		long long removed = 0;
		if (recheck_prepare(&m, m.src, &err) < 0 ||
		    recheck_pending(&m, m.src, &removed, &err) < 0) {
			dw_err_prefix(&err, "table %s", m.name);
			goto out;
		}
		printf("backfill %s: already complete (%lld rows); --restart to run again\n", m.name,
		       ck.rows);
		if (removed)
			printf("backfill %s: %lld rows deleted on the source meanwhile (removed again)\n",
			       m.name, removed);
		rc = 0;
		goto out;
	}
	if (run(&m, &o, &ck, &err) < 0) {
		if (strncmp(err.msg, "table ", 6) != 0)
			dw_err_prefix(&err, "table %s", m.name);
		goto out;
	}
	rc = 0;
out:
	if (rc != 0)
		fprintf(stderr, "dualwrite backfill: %s\n", err.msg);
	free(ck.last_key);
	pgu_map_close(&m);
	config_unref(cfg);
	return rc;
}
