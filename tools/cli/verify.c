/*
 * verify — `dualwrite verify`: does the target hold what the table map says
 * it should, given the source? Reports differences by key.
 *
 * The work is pushed into the databases, as pt-table-checksum does: each
 * side computes, in one scan, per chunk a row count and the XOR of a 64-bit
 * hash of every row's canonical text. The source side computes the mapped
 * values in SQL (the table map's translation, see pgutil.h) cast to the
 * target column types, so equal values compare equal across types (bigint
 * vs int, timestamps in UTC, jsonb normalised). Rows are put in chunks by a
 * hash of the key rather than by key ranges: both sides agree on the chunk
 * of a key without agreeing on collation or key type order. Only chunks
 * whose checksums differ are drilled into (key and row hash per row, merged
 * client-side), and only changed rows are fetched column by column to name
 * the differing fields.
 *
 * The random sample is checked differently on purpose: those source rows are
 * mapped by the expression engine itself (as backfill writes them) and
 * compared field by field with the target, a check of the SQL translation.
 *
 * Keys with records still waiting in the replay queue are reported as
 * pending, not as differences: the queue will deliver them.
 *
 * Indeterminate writes (SPEC §7.5: an authoritative write whose answer never
 * came, recorded by the daemon beside the queue, cutstate.h): a key that
 * differs is reported with kind "indeterminate" (and what it was, "was"),
 * one of unknown key is reported while the table has any difference; a key
 * found equal (or every unknown one, on a table found equal) is cleared.
 * Each run's outcome is recorded beside the queue for `dualwrite cutover
 * check`.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cutstate.h"
#include "pgutil.h"
#include "spool.h"

enum diff_kind { D_MISSING, D_EXTRA, D_CHANGED };
static const char *const KIND[] = {"missing", "extra", "changed"};

struct diff {
	char *key;
	enum diff_kind kind;
	char *fields; /* ", "-joined differing columns (changed only) */
	bool indet;   /* the key of an indeterminate write: reported as such */
};

struct difflist {
	struct diff *v;
	size_t n, cap;
};

struct strset {
	char **v;
	size_t n, cap;
};

struct opts {
	const char *config, *table, *tenant;
	long sample, chunk;
	bool json, repair, delete_extra;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: dualwrite verify -c FILE --table NAME [--sample N] [--json] [--repair]\n"
		   "                        [--delete-extra] [--chunk N] [--tenant T]\n"
		   "  Compare the target with the mapped source; exit 0 equal, 1 different.\n"
		   "  --sample N      also compare N random rows field by field (default 100)\n"
		   "  --json          print one JSON object\n"
		   "  --repair        copy missing and changed rows again from the source\n"
		   "  --delete-extra  with --repair, delete rows that exist only in the target\n"
		   "  --chunk N       rows per checksum chunk (default 10000)\n"
		   "  --tenant T      $tenant is T (default: tenant.default); with target.where\n"
		   "                  only that tenant's target rows are compared\n");
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{"config", required_argument, NULL, 'c'}, {"table", required_argument, NULL, 't'},
		{"sample", required_argument, NULL, 's'}, {"json", no_argument, NULL, 'j'},
		{"repair", no_argument, NULL, 'r'},	  {"delete-extra", no_argument, NULL, 'd'},
		{"chunk", required_argument, NULL, 'k'},  {"help", no_argument, NULL, 'h'},
		{"tenant", required_argument, NULL, 'T'},
		{NULL, 0, NULL, 0},
	};
	char *end;
	int ch;
	o->sample = 100;
	o->chunk = 10000;
	optind = 0;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "c:t:h", lo, NULL)) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case 't': o->table = optarg; break;
		case 's':
			o->sample = strtol(optarg, &end, 10);
			if (*end || o->sample < 0 || o->sample > 1000000) {
				fprintf(stderr, "dualwrite verify: --sample: want 0..1000000, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case 'k':
			o->chunk = strtol(optarg, &end, 10);
			if (*end || o->chunk < 1 || o->chunk > 100000000) {
				fprintf(stderr, "dualwrite verify: --chunk: want a positive number, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case 'j': o->json = true; break;
		case 'T':
			if (!*optarg) {
				fprintf(stderr, "dualwrite verify: --tenant: want a tenant id\n");
				return 2;
			}
			o->tenant = optarg;
			break;
		case 'r': o->repair = true; break;
		case 'd': o->delete_extra = true; break;
		case 'h': usage(stdout); return 0;
		default:
			fprintf(stderr, "dualwrite verify: unknown or incomplete option \"%s\"\n", argv[optind - 1]);
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "dualwrite verify: unexpected argument \"%s\"\n", argv[optind]);
		return 2;
	}
	if (!o->config || !o->table) {
		fprintf(stderr, "dualwrite verify: -c FILE and --table NAME are required\n");
		usage(stderr);
		return 2;
	}
	if (o->delete_extra && !o->repair) {
		fprintf(stderr, "dualwrite verify: --delete-extra needs --repair\n");
		return 2;
	}
	return -1;
}

/* ---- small collections ---- */

static void diff_add(struct difflist *l, const char *key, enum diff_kind k, char *fields)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 64;
		l->v = dw_realloc(l->v, l->cap * sizeof(*l->v));
	}
	l->v[l->n++] = (struct diff){dw_strdup(key), k, fields, false};
}

static void diff_free(struct difflist *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].key);
		free(l->v[i].fields);
	}
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static void set_add(struct strset *s, const char *v)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 64;
		s->v = dw_realloc(s->v, s->cap * sizeof(*s->v));
	}
	s->v[s->n++] = dw_strdup(v);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void set_sort(struct strset *s)
{
	if (s->n)
		qsort(s->v, s->n, sizeof(*s->v), cmp_str);
}

static bool set_has(const struct strset *s, const char *v)
{
	return s->n && bsearch(&v, s->v, s->n, sizeof(*s->v), cmp_str) != NULL;
}

static void set_free(struct strset *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	memset(s, 0, sizeof(*s));
}

/* A PostgreSQL array literal of keys[lo, hi). malloc'd. */
static char *array_lit(char *const *keys, size_t lo, size_t hi)
{
	struct pgu_buf b = {0};
	pgu_buf_puts(&b, "{");
	for (size_t i = lo; i < hi; i++) {
		pgu_buf_puts(&b, i > lo ? ",\"" : "\"");
		for (const char *p = keys[i]; *p; p++) {
			if (*p == '"' || *p == '\\')
				pgu_buf_add(&b, "\\", 1);
			pgu_buf_add(&b, p, 1);
		}
		pgu_buf_puts(&b, "\"");
	}
	pgu_buf_puts(&b, "}");
	return b.p;
}

/* ---- SQL for both sides ---- */

/* The key, as target-key text, of a source (s) or target (t) row. A
 * composite key is the JSON array of its columns' text, so that a key is
 * still one string to sort, merge and report. */
static void key_expr(const struct pgu_map *m, bool source, struct pgu_buf *b)
{
	if (m->nkey > 1)
		pgu_buf_puts(b, "json_build_array(");
	for (size_t k = 0; k < m->nkey; k++) {
		if (k)
			pgu_buf_puts(b, ", ");
		if (source)
			pgu_buf_printf(b, "(%s)", m->cols[m->key_cols[k]].src_sql);
		else
			pgu_buf_printf(b, "t.%s", m->tgt_keys[k]);
		if (m->nkey > 1)
			pgu_buf_puts(b, "::text");
	}
	if (m->nkey > 1)
		pgu_buf_puts(b, ")");
}

/* "the row's key is one of $1[, $2...]": one array parameter per key column
 * (see key_arrays), as target key types. */
static void key_in(const struct pgu_map *m, bool source, struct pgu_buf *b)
{
	if (m->nkey == 1) {
		key_expr(m, source, b);
		pgu_buf_printf(b, " = ANY($1::%s[])", m->tgt_key_type);
		return;
	}
	pgu_buf_puts(b, "(");
	for (size_t k = 0; k < m->nkey; k++) {
		if (source)
			pgu_buf_printf(b, "%s(%s)", k ? ", " : "", m->cols[m->key_cols[k]].src_sql);
		else
			pgu_buf_printf(b, "%st.%s", k ? ", " : "", m->tgt_keys[k]);
	}
	pgu_buf_puts(b, ") IN (SELECT * FROM unnest(");
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(b, "%s$%zu::%s[]", k ? ", " : "", k + 1, m->tgt_key_types[k]);
	pgu_buf_puts(b, "))");
}

/* The parameters of key_in for keys[lo, hi): m->nkey array literals. */
static void key_arrays(const struct pgu_map *m, char *const *keys, size_t lo, size_t hi,
		       char **out)
{
	if (m->nkey == 1) {
		out[0] = array_lit(keys, lo, hi);
		return;
	}
	size_t n = hi - lo;
	char **col = dw_calloc(n ? n : 1, sizeof(*col));
	for (size_t k = 0; k < m->nkey; k++) {
		for (size_t i = 0; i < n; i++) {
			json_t *a = json_loads(keys[lo + i], 0, NULL);
			json_t *v = json_array_get(a, k);
			col[i] = dw_strdup(json_is_string(v) ? json_string_value(v) : "");
			json_decref(a);
		}
		out[k] = array_lit(col, 0, n);
		for (size_t i = 0; i < n; i++)
			free(col[i]);
	}
	free(col);
}

static void key_arrays_free(const struct pgu_map *m, char **p)
{
	for (size_t k = 0; k < m->nkey; k++)
		free(p[k]);
}

/*
 * The row hash over the comparable columns. typed: hash_record_extended,
 * which hashes each value with its type's own hash function — no text
 * rendering, about twice as fast; else the hash of the row's text form
 * (for types without an extended hash function, such as json).
 */
static void row_hash(const struct pgu_map *m, bool source, bool typed, struct pgu_buf *b)
{
	pgu_buf_puts(b, typed ? "hash_record_extended(ROW(" : "hashtextextended(ROW(");
	for (size_t i = 0; i < m->ncols; i++) {
		if (!m->cols[i].comparable)
			continue;
		if (source)
			pgu_buf_puts(b, m->cols[i].src_sql);
		else
			pgu_buf_printf(b, "t.%s", m->cols[i].qname);
		pgu_buf_puts(b, ", ");
	}
	pgu_buf_puts(b, typed ? "0), 0)" : "0)::text, 0)");
}

/* Whether every comparable target type has an extended hash function. */
static bool typed_hash_ok(const struct pgu_map *m)
{
	struct pgu_buf b = {0};
	struct dw_err err = {{0}};
	pgu_buf_puts(&b, "SELECT hash_record_extended(ROW(");
	for (size_t i = 0; i < m->ncols; i++)
		if (m->cols[i].comparable)
			pgu_buf_printf(&b, "NULL::%s, ", m->cols[i].type);
	pgu_buf_puts(&b, "0), 0)");
	bool ok = true;
	for (int side = 0; side < 2; side++) {
		PGresult *r = pgu_exec(side ? m->tgt : m->src, b.p, 0, NULL, PGRES_TUPLES_OK, &err);
		ok = ok && r;
		PQclear(r);
	}
	pgu_buf_free(&b);
	return ok;
}

/* SELECT k, b, h FROM the side: key text, chunk number, row hash. */
static char *hashed_rows(const struct pgu_map *m, bool source, bool typed, long nchunks)
{
	struct pgu_buf b = {0};
	pgu_buf_puts(&b, "SELECT ");
	key_expr(m, source, &b);
	pgu_buf_puts(&b, "::text AS k, (hashtextextended(");
	key_expr(m, source, &b);
	pgu_buf_printf(&b, "::text, 7) & 2147483647) %% %ld AS b, ", nchunks);
	row_hash(m, source, typed, &b);
	pgu_buf_printf(&b, " AS h FROM %s %s", source ? m->src_table : m->tgt_table,
		       source ? "s" : "t");
	if (!source && m->tgt_where)
		pgu_buf_printf(&b, " WHERE %s", m->tgt_where);
	return b.p;
}

/* Every comparable column as text, for the rows whose key is in $1. */
static char *columns_sql(const struct pgu_map *m, bool source)
{
	struct pgu_buf b = {0};
	pgu_buf_puts(&b, "SELECT ");
	key_expr(m, source, &b);
	pgu_buf_puts(&b, "::text");
	for (size_t i = 0; i < m->ncols; i++) {
		if (!m->cols[i].comparable)
			continue;
		if (source)
			pgu_buf_printf(&b, ", (%s)::text", m->cols[i].src_sql);
		else
			pgu_buf_printf(&b, ", t.%s::text", m->cols[i].qname);
	}
	pgu_buf_printf(&b, " FROM %s %s WHERE ", source ? m->src_table : m->tgt_table,
		       source ? "s" : "t");
	key_in(m, source, &b);
	if (!source && m->tgt_where)
		pgu_buf_printf(&b, " AND %s", m->tgt_where);
	pgu_buf_puts(&b, " ORDER BY ");
	key_expr(m, source, &b);
	pgu_buf_puts(&b, "::text COLLATE \"C\"");
	return b.p;
}

/* Run one query on each side at once (they are different servers, or at
 * least different backends); both results or NULL with err. */
static int run2(struct pgu_map *m, const char *ssql, const char *tsql, int np,
		const char *const *p, PGresult **sr, PGresult **tr, struct dw_err *err)
{
	*sr = *tr = NULL;
	PGconn *c[2] = {m->src, m->tgt};
	const char *sql[2] = {ssql, tsql};
	PGresult *out[2] = {NULL, NULL};
	bool sent[2] = {false, false};
	int rc = 0;
	for (int i = 0; i < 2; i++) {
		sent[i] = PQsendQueryParams(c[i], sql[i], np, NULL, p, NULL, NULL, 0);
		if (!sent[i]) {
			dw_err_set(err, "%s: %.*s", i ? "target" : "source",
				   (int)strcspn(PQerrorMessage(c[i]), "\n"), PQerrorMessage(c[i]));
			rc = -1;
		}
	}
	for (int i = 0; i < 2; i++) {
		PGresult *r;
		while (sent[i] && (r = PQgetResult(c[i]))) {
			if (PQresultStatus(r) != PGRES_TUPLES_OK && rc == 0) {
				const char *e = PQresultErrorMessage(r);
				dw_err_set(err, "%s: %.*s", i ? "target" : "source",
					   (int)strcspn(e, "\n"), e);
				rc = -1;
			}
			if (out[i])
				PQclear(out[i]);
			out[i] = r;
		}
	}
	if (rc < 0) {
		PQclear(out[0]);
		PQclear(out[1]);
		return -1;
	}
	*sr = out[0];
	*tr = out[1];
	return 0;
}

static long long reltuples(PGconn *c, const char *qtable)
{
	struct dw_err err = {{0}};
	const char *p[1] = {qtable};
	PGresult *r = pgu_exec(c, "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass($1)",
			       1, p, PGRES_TUPLES_OK, &err);
	long long n = r && PQntuples(r) ? atoll(PQgetvalue(r, 0, 0)) : 0;
	PQclear(r);
	return n;
}

/* ---- field-by-field comparison ---- */

/* Row index of key in r (first column), or -1: r is small, linear is fine. */
static int find_row(const PGresult *r, const char *key)
{
	for (int i = 0; i < PQntuples(r); i++)
		if (strcmp(PQgetvalue(r, i, 0), key) == 0)
			return i;
	return -1;
}

/* Differing column names of row si of s vs row ti of t; NULL when equal. */
static char *differing_fields(const struct pgu_map *m, const PGresult *s, int si,
			      const PGresult *t, int ti)
{
	struct pgu_buf b = {0};
	int f = 1;
	for (size_t i = 0; i < m->ncols; i++) {
		if (!m->cols[i].comparable)
			continue;
		bool sn = PQgetisnull(s, si, f), tn = PQgetisnull(t, ti, f);
		if (sn != tn || (!sn && strcmp(PQgetvalue(s, si, f), PQgetvalue(t, ti, f)) != 0))
			pgu_buf_printf(&b, "%s%s", b.len ? ", " : "", m->cols[i].name);
		f++;
	}
	return b.p;
}

/* Compare keys (sorted) column by column: appends a diff for every key
 * that is missing, extra or changed. source_sql/target_sql select by $1. */
static int compare_keys(struct pgu_map *m, char *const *keys, size_t n, const char *ssql,
			const char *tsql, struct difflist *out, struct dw_err *err)
{
	for (size_t lo = 0; lo < n; lo += 5000) {
		size_t hi = lo + 5000 < n ? lo + 5000 : n;
		char *p[DW_TABLE_KEY_MAX];
		key_arrays(m, keys, lo, hi, p);
		PGresult *sr, *tr;
		int rc = run2(m, ssql, tsql, (int)m->nkey, (const char *const *)p, &sr, &tr, err);
		key_arrays_free(m, p);
		if (rc < 0)
			return -1;
		/* Both results are in byte order of the key, as keys are. */
		int si = 0, ti = 0, ns = PQntuples(sr), nt = PQntuples(tr);
		for (size_t i = lo; i < hi; i++) {
			while (si < ns && strcmp(PQgetvalue(sr, si, 0), keys[i]) < 0)
				si++;
			while (ti < nt && strcmp(PQgetvalue(tr, ti, 0), keys[i]) < 0)
				ti++;
			bool isrc = si < ns && strcmp(PQgetvalue(sr, si, 0), keys[i]) == 0;
			bool itgt = ti < nt && strcmp(PQgetvalue(tr, ti, 0), keys[i]) == 0;
			if (!isrc && !itgt)
				continue;
			if (!itgt)
				diff_add(out, keys[i], D_MISSING, NULL);
			else if (!isrc)
				diff_add(out, keys[i], D_EXTRA, NULL);
			else {
				char *f = differing_fields(m, sr, si, tr, ti);
				if (f)
					diff_add(out, keys[i], D_CHANGED, f);
			}
		}
		PQclear(sr);
		PQclear(tr);
	}
	return 0;
}

/* ---- the checksum pass ---- */

struct chunk {
	long long n;
	long long x;
};

static int checksum(struct pgu_map *m, long chunk, long long *src_rows, long long *tgt_rows,
		    struct strset *suspects, struct dw_err *err)
{
	long long est = reltuples(m->src, m->src_table);
	long long et = reltuples(m->tgt, m->tgt_table);
	if (et > est)
		est = et;
	long nchunks = est / chunk + 1;
	bool typed = typed_hash_ok(m);
	char *hs = hashed_rows(m, true, typed, nchunks), *ht = hashed_rows(m, false, typed, nchunks);
	struct pgu_buf qs = {0}, qt = {0};
	PGresult *sr = NULL, *tr = NULL;
	struct chunk *cs = dw_calloc((size_t)nchunks, sizeof(*cs));
	struct chunk *ct = dw_calloc((size_t)nchunks, sizeof(*ct));
	int rc = -1;

	pgu_buf_printf(&qs, "SELECT b, count(*), bit_xor(h) FROM (%s) x GROUP BY b", hs);
	pgu_buf_printf(&qt, "SELECT b, count(*), bit_xor(h) FROM (%s) x GROUP BY b", ht);
	if (run2(m, qs.p, qt.p, 0, NULL, &sr, &tr, err) < 0)
		goto out;
	*src_rows = *tgt_rows = 0;
	for (int side = 0; side < 2; side++) {
		PGresult *r = side ? tr : sr;
		struct chunk *c = side ? ct : cs;
		for (int i = 0; i < PQntuples(r); i++) {
			long b = atol(PQgetvalue(r, i, 0));
			if (b < 0 || b >= nchunks)
				continue;
			c[b].n = atoll(PQgetvalue(r, i, 1));
			c[b].x = atoll(PQgetvalue(r, i, 2));
			*(side ? tgt_rows : src_rows) += c[b].n;
		}
	}
	struct pgu_buf bad = {0};
	size_t nbad = 0;
	for (long b = 0; b < nchunks; b++)
		if (cs[b].n != ct[b].n || cs[b].x != ct[b].x) {
			pgu_buf_printf(&bad, "%s%ld", nbad ? "," : "{", b);
			nbad++;
		}
	if (nbad) {
		pgu_buf_puts(&bad, "}");
		PQclear(sr);
		PQclear(tr);
		sr = tr = NULL;
		/* Drill down: key and row hash of every row in a differing chunk. */
		pgu_buf_reset(&qs);
		pgu_buf_reset(&qt);
		pgu_buf_printf(&qs, "SELECT k, h FROM (%s) x WHERE b = ANY($1::bigint[]) ORDER BY k COLLATE \"C\"", hs);
		pgu_buf_printf(&qt, "SELECT k, h FROM (%s) x WHERE b = ANY($1::bigint[]) ORDER BY k COLLATE \"C\"", ht);
		const char *p[1] = {bad.p};
		int r2 = run2(m, qs.p, qt.p, 1, p, &sr, &tr, err);
		pgu_buf_free(&bad);
		if (r2 < 0)
			goto out;
		int i = 0, j = 0, ns = PQntuples(sr), nt = PQntuples(tr);
		while (i < ns || j < nt) {
			int c = i >= ns ? 1 : j >= nt ? -1 : strcmp(PQgetvalue(sr, i, 0), PQgetvalue(tr, j, 0));
			if (c < 0) {
				set_add(suspects, PQgetvalue(sr, i++, 0));
			} else if (c > 0) {
				set_add(suspects, PQgetvalue(tr, j++, 0));
			} else {
				if (strcmp(PQgetvalue(sr, i, 1), PQgetvalue(tr, j, 1)) != 0)
					set_add(suspects, PQgetvalue(sr, i, 0));
				i++;
				j++;
			}
		}
	}
	pgu_buf_free(&bad);
	rc = 0;
out:
	PQclear(sr);
	PQclear(tr);
	free(hs);
	free(ht);
	free(cs);
	free(ct);
	pgu_buf_free(&qs);
	pgu_buf_free(&qt);
	return rc;
}

/* ---- the replay queue ---- */

static void pending_keys(const struct dw_config *cfg, struct strset *out)
{
	struct stat st;
	if (!cfg->queue.path || stat(cfg->queue.path, &st) != 0 || !S_ISDIR(st.st_mode))
		return;
	struct spool_opts so = {.readonly = true};
	struct dw_err err = {{0}};
	struct spool *sp = spool_open(cfg->queue.path, &so, &err);
	if (!sp) {
		fprintf(stderr, "dualwrite verify: warning: queue %s: %s (pending keys not known)\n",
			cfg->queue.path, err.msg);
		return;
	}
	size_t n = spool_list(sp, 0, NULL, 0);
	uint64_t *seqs = dw_calloc(n ? n : 1, sizeof(*seqs));
	n = spool_list(sp, 0, seqs, n);
	for (size_t i = 0; i < n; i++) {
		struct spool_record rec = {0};
		if (spool_read(sp, seqs[i], &rec, &err) == 0 && rec.key &&
		    (rec.state == SPOOL_PENDING || rec.state == SPOOL_QUEUED))
			set_add(out, rec.key);
		spool_record_clear(&rec);
	}
	free(seqs);
	spool_close(sp);
	set_sort(out);
}

/* ---- the sample, mapped by the engine ---- */

static int sample_check(struct pgu_map *m, long n, long *rows, long *differ, struct dw_err *err)
{
	struct pgu_buf b = {0}, copy = {0};
	PGresult *keys = NULL, *src = NULL, *stg = NULL, *tgt = NULL;
	char **kv = NULL;
	char *karr[DW_TABLE_KEY_MAX] = {NULL};
	int rc = -1;

	*rows = *differ = 0;
	if (n == 0)
		return 0;
	pgu_buf_puts(&b, "SELECT ");
	key_expr(m, true, &b);
	pgu_buf_printf(&b, "::text FROM %s s ORDER BY random() LIMIT %ld", m->src_table, n);
	if (!(keys = pgu_exec(m->src, b.p, 0, NULL, PGRES_TUPLES_OK, err)))
		goto out;
	int nk = PQntuples(keys);
	if (nk == 0) {
		rc = 0;
		goto out;
	}
	kv = dw_calloc((size_t)nk, sizeof(*kv));
	for (int i = 0; i < nk; i++)
		kv[i] = PQgetvalue(keys, i, 0);
	key_arrays(m, kv, 0, (size_t)nk, karr);
	const char *const *p = (const char *const *)karr;

	/* Source rows, mapped by the engine, staged as text in the target. */
	pgu_buf_reset(&b);
	pgu_buf_puts(&b, "WHERE ");
	key_in(m, true, &b);
	char *sql = pgu_source_select(m, b.p);
	src = pgu_exec(m->src, sql, (int)m->nkey, p, PGRES_TUPLES_OK, err);
	free(sql);
	if (!src)
		goto out;
	for (int i = 0; i < PQntuples(src); i++)
		if (pgu_map_row(m, src, i, &copy, err) < 0)
			goto out;
	if (pgu_stage(m, err) < 0 || pgu_cmd(m->tgt, "BEGIN", err) < 0)
		goto out;
	PGresult *cr = PQexec(m->tgt, "COPY pg_temp.dw_stage FROM STDIN");
	bool ok = PQresultStatus(cr) == PGRES_COPY_IN;
	PQclear(cr);
	if (ok)
		ok = PQputCopyData(m->tgt, copy.p ? copy.p : "", (int)copy.len) == 1 &&
		     PQputCopyEnd(m->tgt, NULL) == 1;
	while ((cr = PQgetResult(m->tgt))) {
		ok = ok && PQresultStatus(cr) == PGRES_COMMAND_OK;
		PQclear(cr);
	}
	if (!ok) {
		dw_err_set(err, "target: staging the sample: %.*s",
			   (int)strcspn(PQerrorMessage(m->tgt), "\n"), PQerrorMessage(m->tgt));
		goto rollback;
	}
	pgu_buf_reset(&b);
	pgu_buf_puts(&b, m->nkey > 1 ? "SELECT json_build_array(" : "SELECT ");
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(&b, "%s(c%d::%s)::text", k ? ", " : "", m->key_cols[k],
			       m->tgt_key_types[k]);
	if (m->nkey > 1)
		pgu_buf_puts(&b, ")::text");
	for (size_t i = 0; i < m->ncols; i++)
		if (m->cols[i].comparable)
			pgu_buf_printf(&b, ", (c%zu::%s)::text", i, m->cols[i].type);
	pgu_buf_puts(&b, " FROM pg_temp.dw_stage");
	stg = pgu_exec(m->tgt, b.p, 0, NULL, PGRES_TUPLES_OK, err);
	if (!stg)
		goto rollback;
	sql = columns_sql(m, false);
	tgt = pgu_exec(m->tgt, sql, (int)m->nkey, p, PGRES_TUPLES_OK, err);
	free(sql);
	if (!tgt)
		goto rollback;
	*rows = nk;
	for (int i = 0; i < nk; i++) {
		int si = find_row(stg, kv[i]), ti = find_row(tgt, kv[i]);
		if (si < 0)
			continue; /* deleted from the source meanwhile */
		if (ti < 0) {
			(*differ)++;
			continue;
		}
		char *f = differing_fields(m, stg, si, tgt, ti);
		if (f)
			(*differ)++;
		free(f);
	}
	rc = 0;
rollback:
	cr = PQexec(m->tgt, "ROLLBACK");
	PQclear(cr);
out:
	if (rc < 0)
		dw_err_prefix(err, "sample");
	if (kv)
		key_arrays_free(m, karr);
	free(kv);
	PQclear(keys);
	PQclear(src);
	PQclear(stg);
	PQclear(tgt);
	pgu_buf_free(&b);
	pgu_buf_free(&copy);
	return rc;
}

/* ---- repair ---- */

static int cmp_diff(const void *pa, const void *pb);

struct repair {
	size_t copied, deleted;
	struct difflist remaining;
};

static int repair(struct pgu_map *m, const struct difflist *d, bool delete_extra,
		  struct repair *rep, struct dw_err *err)
{
	struct strset cp = {0}, del = {0}, all = {0};
	struct pgu_buf copy = {0}, b = {0};
	char *ssql = columns_sql(m, true), *tsql = columns_sql(m, false);
	int rc = -1;

	for (size_t i = 0; i < d->n; i++) {
		if (d->v[i].kind == D_EXTRA) {
			if (!delete_extra)
				continue;
			set_add(&del, d->v[i].key);
		} else {
			set_add(&cp, d->v[i].key);
		}
		set_add(&all, d->v[i].key);
	}
	if (pgu_stage(m, err) < 0 || pgu_cmd(m->tgt, "BEGIN", err) < 0)
		goto out;
	pgu_buf_puts(&b, "WHERE ");
	key_in(m, true, &b);
	char *sel = pgu_source_select(m, b.p);
	for (size_t lo = 0; lo < cp.n; lo += 5000) {
		size_t hi = lo + 5000 < cp.n ? lo + 5000 : cp.n;
		char *p[DW_TABLE_KEY_MAX];
		key_arrays(m, cp.v, lo, hi, p);
		PGresult *r = pgu_exec(m->src, sel, (int)m->nkey, (const char *const *)p,
				       PGRES_TUPLES_OK, err);
		key_arrays_free(m, p);
		if (!r)
			goto rollback_sel;
		pgu_buf_reset(&copy);
		bool ok = true;
		for (int i = 0; ok && i < PQntuples(r); i++)
			ok = pgu_map_row(m, r, i, &copy, err) == 0;
		PQclear(r);
		long ins = 0;
		if (!ok || pgu_write_rows(m, &copy, true, &ins, err) < 0)
			goto rollback_sel;
		rep->copied += (size_t)ins;
	}
	if (del.n) {
		char *p[DW_TABLE_KEY_MAX];
		key_arrays(m, del.v, 0, del.n, p);
		pgu_buf_reset(&b);
		pgu_buf_printf(&b, "DELETE FROM %s t WHERE ", m->tgt_table);
		key_in(m, false, &b);
		if (m->tgt_where)
			pgu_buf_printf(&b, " AND %s", m->tgt_where);
		PGresult *r = pgu_exec(m->tgt, b.p, (int)m->nkey, (const char *const *)p,
				       PGRES_COMMAND_OK, err);
		key_arrays_free(m, p);
		if (!r)
			goto rollback_sel;
		rep->deleted = (size_t)atol(PQcmdTuples(r));
		PQclear(r);
	}
	free(sel);
	sel = NULL;
	if (pgu_cmd(m->tgt, "COMMIT", err) < 0)
		goto rollback;
	/* Re-verify what was touched, and what was left alone (extra rows). */
	set_sort(&all);
	if (compare_keys(m, all.v, all.n, ssql, tsql, &rep->remaining, err) < 0)
		goto out;
	for (size_t i = 0; i < d->n; i++)
		if (d->v[i].kind == D_EXTRA && !delete_extra)
			diff_add(&rep->remaining, d->v[i].key, D_EXTRA, NULL);
	if (rep->remaining.n)
		qsort(rep->remaining.v, rep->remaining.n, sizeof(*rep->remaining.v), cmp_diff);
	rc = 0;
	goto out;
rollback_sel:
	free(sel);
rollback:;
	PGresult *r = PQexec(m->tgt, "ROLLBACK");
	PQclear(r);
out:
	if (rc < 0)
		dw_err_prefix(err, "repair");
	set_free(&cp);
	set_free(&del);
	set_free(&all);
	pgu_buf_free(&copy);
	pgu_buf_free(&b);
	free(ssql);
	free(tsql);
	return rc;
}

/* ---- reporting ---- */

/* The target's rows counted by the first where column (the seed's
 * count({ where: { tenantId } }), for every tenant at once): rows of
 * (value, count), or NULL with err. */
static PGresult *target_counts(struct pgu_map *m, struct dw_err *err)
{
	struct pgu_buf b = {0};
	char *qc = pgu_ident(m->tgt, m->tm->target.where_cols[0]);
	pgu_buf_printf(&b, "SELECT coalesce(%s::text, '(null)'), count(*) FROM %s GROUP BY 1 ORDER BY 1",
		       qc, m->tgt_table);
	PGresult *r = pgu_exec(m->tgt, b.p, 0, NULL, PGRES_TUPLES_OK, err);
	if (!r)
		dw_err_prefix(err, "target counts");
	free(qc);
	pgu_buf_free(&b);
	return r;
}

static bool is_int(const char *s)
{
	if (*s == '-')
		s++;
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

/* Report order: integer keys numerically (42 before 100), others bytewise. */
static int cmp_diff(const void *pa, const void *pb)
{
	const char *a = ((const struct diff *)pa)->key, *b = ((const struct diff *)pb)->key;
	if (is_int(a) && is_int(b)) {
		bool na = a[0] == '-', nb = b[0] == '-';
		if (na != nb)
			return na ? -1 : 1;
		size_t la = strlen(a), lb = strlen(b);
		int c = la != lb ? (la < lb ? -1 : 1) : strcmp(a, b);
		return na ? -c : c;
	}
	return strcmp(a, b);
}

static json_t *diffs_json(const struct difflist *d)
{
	json_t *a = json_array();
	for (size_t i = 0; i < d->n; i++) {
		json_t *o = json_pack("{s:s, s:s}", "key", d->v[i].key, "kind",
				      d->v[i].indet ? "indeterminate" : KIND[d->v[i].kind]);
		if (d->v[i].indet)
			json_object_set_new(o, "was", json_string(KIND[d->v[i].kind]));
		json_t *f = json_array();
		if (d->v[i].fields) {
			char *dup = dw_strdup(d->v[i].fields), *save = NULL;
			for (char *t = strtok_r(dup, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
				json_array_append_new(f, json_string(t));
			free(dup);
		}
		json_object_set_new(o, "fields", f);
		json_array_append_new(a, o);
	}
	return a;
}

static void print_diffs(const struct difflist *d, const char *indent)
{
	size_t shown = d->n < 200 ? d->n : 200;
	for (size_t i = 0; i < shown; i++) {
		printf("%s%-8s %s", indent, d->v[i].indet ? "indeterminate" : KIND[d->v[i].kind],
		       d->v[i].key);
		if (d->v[i].indet)
			printf(" (%s%s%s; the write's answer never came)", KIND[d->v[i].kind],
			       d->v[i].fields ? ": " : "", d->v[i].fields ? d->v[i].fields : "");
		else if (d->v[i].fields)
			printf(" (%s)", d->v[i].fields);
		printf("\n");
	}
	if (d->n > shown)
		printf("%s... and %zu more (--json lists them all)\n", indent, d->n - shown);
}

static bool queue_dir_exists(const struct dw_config *cfg)
{
	struct stat st;
	return cfg->queue.path && stat(cfg->queue.path, &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * The indeterminate writes of table (cutstate.h): mark the reported
 * differences (shown) of their keys; clear those whose key is not among
 * the differences left (final) and not pending, and every one of unknown key
 * when nothing differs. Returns how many of unknown key stay open, the
 * first entries of *unknown (indet_entries_free(*unknown, that count)).
 */
static size_t indeterminate(const struct dw_config *cfg, const char *table,
			    const struct strset *pending, const struct difflist *final,
			    struct difflist *shown, struct indet_entry **unknown)
{
	struct indet_entry *v = NULL;
	struct dw_err err = {{0}};
	size_t n = 0, nu = 0;
	bool cleared_unknown = false;

	*unknown = NULL;
	if (!queue_dir_exists(cfg))
		return 0;
	if (indet_load(cfg->queue.path, table, &v, &n, &err) < 0) {
		fprintf(stderr, "dualwrite verify: warning: %s (indeterminate writes not known)\n",
			err.msg);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		struct indet_entry *e = &v[i];
		bool open = false;

		if (!e->key) {
			if (final->n == 0 && !cleared_unknown) {
				if (indet_clear(cfg->queue.path, table, NULL, &err) < 0)
					fprintf(stderr, "dualwrite verify: warning: %s\n", err.msg);
				cleared_unknown = true;
			}
			if (final->n != 0) {
				/* kept, in order: move it to the front part of v */
				struct indet_entry t = v[nu];
				v[nu] = *e;
				*e = t;
				nu++;
			}
			continue;
		}
		if (set_has(pending, e->key))
			continue; /* the queue will deliver it; verify again after */
		for (size_t k = 0; k < final->n; k++)
			if (strcmp(final->v[k].key, e->key) == 0)
				open = true;
		for (size_t k = 0; open && k < shown->n; k++)
			if (strcmp(shown->v[k].key, e->key) == 0)
				shown->v[k].indet = true;
		if (!open && indet_clear(cfg->queue.path, table, e->key, &err) < 0)
			fprintf(stderr, "dualwrite verify: warning: %s\n", err.msg);
	}
	/* v[0..nu) are the open ones of unknown key; free the rest's strings */
	for (size_t i = nu; i < n; i++) {
		free(v[i].route);
		free(v[i].table);
		free(v[i].key);
		free(v[i].request_id);
		free(v[i].reason);
	}
	*unknown = v;
	return nu;
}

/* For `dualwrite cutover check`: when this table was last verified, and
 * whether it was equal (beside the queue; nothing when there is no queue
 * directory here). */
static void record_outcome(const struct dw_config *cfg, const char *table, bool equal,
			   size_t differences)
{
	struct verify_mark mk = {dw_wall_us(), equal, differences};
	struct dw_err err = {{0}};

	if (!queue_dir_exists(cfg)) {
		fprintf(stderr, "dualwrite verify: warning: no queue directory %s: this run is not "
				"recorded for `dualwrite cutover check`\n",
			cfg->queue.path ? cfg->queue.path : "-");
		return;
	}
	if (verify_mark_record(cfg->queue.path, table, &mk, &err) < 0)
		fprintf(stderr, "dualwrite verify: warning: %s (not recorded for `dualwrite cutover "
				"check`)\n",
			err.msg);
}

int cmd_verify(int argc, char **argv)
{
	struct opts o = {0};
	int rc = parse(argc, argv, &o);
	if (rc >= 0)
		return rc;
	struct dw_config *cfg = cli_load_config(o.config);
	if (!cfg)
		return 2;
	struct pgu_map m;
	struct dw_err err = {{0}};
	struct strset suspects = {0}, pending = {0}, pend_hit = {0};
	struct difflist all = {0}, diffs = {0};
	struct repair rep = {0};
	struct indet_entry *unknown = NULL;
	size_t nunknown = 0;
	long long src_rows = 0, tgt_rows = 0;
	long srows = 0, sdiff = 0;
	char *ssql = NULL, *tsql = NULL;
	PGresult *by_tenant = NULL;
	bool repaired = false;
	int64_t t0 = dw_now_us();

	rc = pgu_map_open_as(&m, cfg, o.table, o.tenant, &err);
	if (rc != PGU_OK)
		goto out;
	rc = 2;
	for (size_t k = 0; k < m.nkey; k++)
		if (!m.cols[m.key_cols[k]].src_sql) {
			dw_err_set(&err, "table %s: the key column %s has no SQL form for verify",
				   m.name, m.tm->target.keys[k]);
			goto out;
		}
	if (checksum(&m, o.chunk, &src_rows, &tgt_rows, &suspects, &err) < 0)
		goto fail;
	ssql = columns_sql(&m, true);
	tsql = columns_sql(&m, false);
	set_sort(&suspects);
	if (compare_keys(&m, suspects.v, suspects.n, ssql, tsql, &all, &err) < 0)
		goto fail;
	pending_keys(cfg, &pending);
	for (size_t i = 0; i < all.n; i++) {
		if (set_has(&pending, all.v[i].key)) {
			set_add(&pend_hit, all.v[i].key);
		} else {
			diff_add(&diffs, all.v[i].key, all.v[i].kind, all.v[i].fields);
			all.v[i].fields = NULL;
		}
	}
	if (diffs.n)
		qsort(diffs.v, diffs.n, sizeof(*diffs.v), cmp_diff);
	if (sample_check(&m, o.sample, &srows, &sdiff, &err) < 0)
		goto fail;
	if (m.tgt_where && !(by_tenant = target_counts(&m, &err)))
		goto fail;

	if (o.repair && diffs.n) {
		size_t nm = 0, nc = 0, ne = 0;
		for (size_t i = 0; i < diffs.n; i++)
			*(diffs.v[i].kind == D_MISSING ? &nm : diffs.v[i].kind == D_CHANGED ? &nc : &ne) += 1;
		FILE *f = o.json ? stderr : stdout;
		fprintf(f, "repair %s: copying %zu rows again from the source (%zu missing, %zu changed)",
			m.name, nm + nc, nm, nc);
		if (ne)
			fprintf(f, o.delete_extra ? "; deleting %zu extra rows" : "; keeping %zu extra rows (--delete-extra deletes them)", ne);
		fprintf(f, "\n");
		if (repair(&m, &diffs, o.delete_extra, &rep, &err) < 0)
			goto fail;
		repaired = true;
	}
	double secs = (double)(dw_now_us() - t0) / 1e6;
	const struct difflist *final = repaired ? &rep.remaining : &diffs;
	nunknown = indeterminate(cfg, m.name, &pending, repaired ? &rep.remaining : &diffs,
					&diffs, &unknown);
	bool equal = final->n == 0 && nunknown == 0;
	record_outcome(cfg, m.name, equal, final->n);
	if (o.json) {
		json_t *j = json_object();
		json_object_set_new(j, "table", json_string(m.name));
		json_object_set_new(j, "equal", json_boolean(equal));
		json_object_set_new(j, "source_rows", json_integer(src_rows));
		json_object_set_new(j, "target_rows", json_integer(tgt_rows));
		if (m.tgt_where) {
			json_object_set_new(j, "target_where", json_string(m.tgt_where));
			json_t *bt = json_object();
			for (int i = 0; i < PQntuples(by_tenant); i++)
				json_object_set_new(bt, PQgetvalue(by_tenant, i, 0),
						    json_integer(atoll(PQgetvalue(by_tenant, i, 1))));
			json_object_set_new(j, "target_rows_by", bt);
		}
		json_object_set_new(j, "differences", diffs_json(&diffs));
		json_t *ua = json_array();
		for (size_t i = 0; i < nunknown; i++)
			json_array_append_new(ua, json_pack("{s:n, s:s, s:s?, s:s?}", "key", "kind",
							    "indeterminate", "route", unknown[i].route,
							    "request_id", unknown[i].request_id));
		json_array_extend(json_object_get(j, "differences"), ua);
		json_decref(ua);
		json_t *pa = json_array();
		for (size_t i = 0; i < pend_hit.n; i++)
			json_array_append_new(pa, json_string(pend_hit.v[i]));
		json_object_set_new(j, "pending", pa);
		json_object_set_new(j, "sample", json_pack("{s:I, s:I}", "rows", (json_int_t)srows,
							   "differ", (json_int_t)sdiff));
		if (repaired)
			json_object_set_new(j, "repair",
					    json_pack("{s:I, s:I, s:o}", "copied", (json_int_t)rep.copied,
						      "deleted", (json_int_t)rep.deleted,
						      "remaining", diffs_json(&rep.remaining)));
		char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
		printf("%s\n", s);
		free(s);
		json_decref(j);
	} else {
		printf("verify %s: %s -> %s\n", m.name, m.tm->source.table, m.tm->target.table);
		printf("  source rows: %lld\n  target rows: %lld", src_rows, tgt_rows);
		if (m.tgt_where) {
			printf(" (where %s)\n  target rows by %s:", m.tgt_where,
			       m.tm->target.where_cols[0]);
			for (int i = 0; i < PQntuples(by_tenant); i++)
				printf("%s %s %s", i ? "," : "", PQgetvalue(by_tenant, i, 0),
				       PQgetvalue(by_tenant, i, 1));
			if (PQntuples(by_tenant) == 0)
				printf(" (none)");
		}
		printf("\n");
		print_diffs(&diffs, "  ");
		for (size_t i = 0; i < nunknown; i++)
			printf("  indeterminate ? (route %s, request %s: the write's answer never came "
			       "and its key is unknown)\n",
			       unknown[i].route ? unknown[i].route : "-",
			       unknown[i].request_id ? unknown[i].request_id : "-");
		for (size_t i = 0; i < pend_hit.n; i++)
			printf("  pending  %s (waiting in the replay queue)\n", pend_hit.v[i]);
		printf("  sample: %ld rows, %ld differ\n", srows, sdiff);
		if (repaired) {
			printf("  repair: copied %zu rows, deleted %zu rows; re-verified: %zu differ\n",
			       rep.copied, rep.deleted, rep.remaining.n);
			print_diffs(&rep.remaining, "    ");
		}
		if (diffs.n == 0 && nunknown == 0)
			printf("  result: equal (%.1f s)\n", secs);
		else if (diffs.n == 0)
			printf("  result: %zu indeterminate writes of unknown key (%.1f s)\n", nunknown,
			       secs);
		else if (repaired)
			printf("  result: %zu differences found, %s (%.1f s)\n", diffs.n,
			       equal ? "all repaired" : "some remain", secs);
		else
			printf("  result: %zu differences (%.1f s)\n", diffs.n, secs);
	}
	rc = equal ? 0 : 1;
	goto out;
fail:
	rc = 1;
	if (strncmp(err.msg, "table ", 6) != 0)
		dw_err_prefix(&err, "table %s", m.name);
out:
	if (rc >= 2 || (rc == 1 && err.msg[0]))
		fprintf(stderr, "dualwrite verify: %s\n", err.msg);
	free(ssql);
	free(tsql);
	PQclear(by_tenant);
	set_free(&suspects);
	set_free(&pending);
	set_free(&pend_hit);
	diff_free(&all);
	diff_free(&diffs);
	diff_free(&rep.remaining);
	indet_entries_free(unknown, nunknown);
	pgu_map_close(&m);
	config_unref(cfg);
	return rc;
}
