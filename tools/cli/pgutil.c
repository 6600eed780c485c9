/*
 * pgutil — libpq helpers and the checked table map shared by backfill and
 * verify. See pgutil.h for the contract; the notes here say why.
 */
#include "pgutil.h"

#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expr.h"
#include "jsonfast.h"
#include "pgdsn.h"

/* Type OIDs from pg_type.dat; stable across PostgreSQL versions. */
#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_JSON 114
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_NUMERIC 1700
#define OID_JSONB 3802

/* ---- buffers ---- */

static void buf_grow(struct pgu_buf *b, size_t n)
{
	if (b->len + n + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + n + 1)
		cap *= 2;
	b->p = dw_realloc(b->p, cap);
	b->cap = cap;
}

void pgu_buf_add(struct pgu_buf *b, const char *s, size_t n)
{
	buf_grow(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void pgu_buf_puts(struct pgu_buf *b, const char *s)
{
	pgu_buf_add(b, s, strlen(s));
}

void pgu_buf_printf(struct pgu_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	buf_grow(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void pgu_buf_reset(struct pgu_buf *b)
{
	b->len = 0;
	if (b->p)
		b->p[0] = '\0';
}

void pgu_buf_free(struct pgu_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

void pgu_buf_copy_field(struct pgu_buf *b, const char *s, size_t n)
{
	if (!s) {
		pgu_buf_add(b, "\\N", 2);
		return;
	}
	buf_grow(b, 2 * n);
	char *o = b->p + b->len;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		switch (c) {
		case '\\': *o++ = '\\'; *o++ = '\\'; break;
		case '\n': *o++ = '\\'; *o++ = 'n'; break;
		case '\r': *o++ = '\\'; *o++ = 'r'; break;
		case '\t': *o++ = '\\'; *o++ = 't'; break;
		default: *o++ = c;
		}
	}
	b->len = (size_t)(o - b->p);
	b->p[b->len] = '\0';
}

/* ---- connections and queries ---- */

/* Notices ("relation already exists, skipping") are not for the operator. */
static void quiet_notice(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

static void chomp_err(struct dw_err *err, const char *what, const char *pgmsg)
{
	/* "ERROR:  x" -> "x": the severity adds nothing to a one-line error. */
	static const char *const sev[] = {"ERROR:  ", "FATAL:  ", "PANIC:  "};
	for (size_t i = 0; i < DW_ARRAY_LEN(sev); i++)
		if (strncmp(pgmsg, sev[i], strlen(sev[i])) == 0)
			pgmsg += strlen(sev[i]);
	size_t n = strlen(pgmsg);
	while (n > 0 && (pgmsg[n - 1] == '\n' || pgmsg[n - 1] == ' '))
		n--;
	dw_err_set(err, "%s%.*s", what, (int)n, pgmsg);
}

PGconn *pgu_connect(const char *dsn, const char *side, struct dw_err *err)
{
	PGconn *c = PQconnectdb(dsn ? dsn : "");
	if (!c) {
		dw_err_set(err, "%s database: out of memory", side);
		return NULL;
	}
	if (PQstatus(c) != CONNECTION_OK) {
		/* Never the password: the DSN in its display form, and libpq's
		 * message with any secret it quotes masked (SPEC §6). */
		char *shown = pgdsn_display(dsn);
		char *m = pgdsn_scrub(PQerrorMessage(c), dsn);
		char what[300];
		snprintf(what, sizeof(what), "%s database (dsn \"%s\"): cannot connect: ", side,
			 shown);
		/* libpq's message may span lines; keep the first one. */
		const char *nl = strchr(m, '\n');
		char first[400];
		snprintf(first, sizeof(first), "%.*s", nl ? (int)(nl - m) : (int)strlen(m), m);
		chomp_err(err, what, first);
		free(shown);
		free(m);
		PQfinish(c);
		return NULL;
	}
	PQsetNoticeProcessor(c, quiet_notice, NULL);
	PGresult *r = PQexec(c, "SET DateStyle = ISO; SET TimeZone = 'UTC'; "
				"SET extra_float_digits = 1; SET client_min_messages = warning");
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		chomp_err(err, side, PQerrorMessage(c));
		PQclear(r);
		PQfinish(c);
		return NULL;
	}
	PQclear(r);
	return c;
}

char *pgu_ident(PGconn *c, const char *name)
{
	struct pgu_buf b = {0};
	const char *p = name;
	for (;;) {
		const char *dot = strchr(p, '.');
		size_t n = dot ? (size_t)(dot - p) : strlen(p);
		char *q = PQescapeIdentifier(c, p, n);
		if (!q) {
			pgu_buf_free(&b);
			return dw_strdup("\"\"");
		}
		pgu_buf_puts(&b, q);
		PQfreemem(q);
		if (!dot)
			break;
		pgu_buf_puts(&b, ".");
		p = dot + 1;
	}
	return b.p;
}

char *pgu_literal(PGconn *c, const char *s)
{
	char *q = PQescapeLiteral(c, s, strlen(s));
	char *out = dw_strdup(q ? q : "''");
	PQfreemem(q);
	return out;
}

PGresult *pgu_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
		   ExecStatusType want, struct dw_err *err)
{
	PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != want) {
		chomp_err(err, "", PQresultErrorMessage(r)[0] ? PQresultErrorMessage(r)
							       : PQerrorMessage(c));
		PQclear(r);
		return NULL;
	}
	return r;
}

int pgu_cmd(PGconn *c, const char *sql, struct dw_err *err)
{
	PGresult *r = pgu_exec(c, sql, 0, NULL, PGRES_COMMAND_OK, err);
	if (!r)
		return -1;
	PQclear(r);
	return 0;
}

/* ---- rows as JSON ---- */

json_t *pgu_value_json(const PGresult *r, int row, int col)
{
	if (PQgetisnull(r, row, col))
		return json_null();
	const char *v = PQgetvalue(r, row, col);
	char *end;
	switch (PQftype(r, col)) {
	case OID_INT2:
	case OID_INT4:
	case OID_INT8:
		errno = 0;
		long long ll = strtoll(v, &end, 10);
		if (errno == 0 && *end == '\0')
			return json_integer(ll);
		return json_string(v);
	case OID_NUMERIC:
		if (!strpbrk(v, ".eEN")) {
			errno = 0;
			long long n = strtoll(v, &end, 10);
			if (errno == 0 && *end == '\0')
				return json_integer(n);
		}
		/* fall through */
	case OID_FLOAT4:
	case OID_FLOAT8: {
		double d = strtod(v, &end);
		if (*end != '\0' || !isfinite(d))
			return json_string(v); /* NaN, Infinity: JSON has no such numbers */
		return json_real(d);
	}
	case OID_BOOL:
		return json_boolean(v[0] == 't');
	case OID_JSON:
	case OID_JSONB: {
		json_error_t je;
		json_t *j = json_loads(v, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
		return j ? j : json_string(v);
	}
	default:
		return json_stringn(v, (size_t)PQgetlength(r, row, col));
	}
}

json_t *pgu_row_json(const PGresult *r, int row)
{
	json_t *o = json_object();
	int n = PQnfields(r);
	for (int i = 0; i < n; i++)
		json_object_set_new(o, PQfname(r, i), pgu_value_json(r, row, i));
	return o;
}

/* ---- the table map ---- */

struct src_attr {
	char *name;
	bool json;   /* json or jsonb */
	bool native; /* numeric or boolean: to_jsonb keeps the JSON type */
};

struct tr {
	struct pgu_map *m;
	struct src_attr *attrs;
	size_t nattrs;
	char **refs; /* referenced source columns */
	size_t nrefs;
	bool now;
	bool missable; /* the last value translated may be missing ($row.a.b) */
};

static int find_attr(const struct tr *t, const char *name, size_t n)
{
	for (size_t i = 0; i < t->nattrs; i++)
		if (strlen(t->attrs[i].name) == n && memcmp(t->attrs[i].name, name, n) == 0)
			return (int)i;
	return -1;
}

static void add_ref(struct tr *t, const char *name)
{
	for (size_t i = 0; i < t->nrefs; i++)
		if (strcmp(t->refs[i], name) == 0)
			return;
	t->refs = dw_realloc(t->refs, (t->nrefs + 1) * sizeof(*t->refs));
	t->refs[t->nrefs++] = dw_strdup(name);
}

static void lit(struct tr *t, struct pgu_buf *out, const char *s, bool nested)
{
	char *q = pgu_literal(t->m->src, s);
	if (nested)
		pgu_buf_printf(out, "to_jsonb(%s::text)", q);
	else
		pgu_buf_puts(out, q);
	free(q);
}

static int tr_string(struct tr *t, const char *s, bool nested, bool json_target,
		     struct pgu_buf *out, struct dw_err *err);

/* Offsets of the top-level "??" in s (outside 'quotes'); returns how many. */
static size_t fallback_splits(const char *s, size_t *at, size_t max)
{
	size_t n = 0;
	bool q = false;
	for (size_t i = 0; s[i]; i++) {
		if (s[i] == '\'')
			q = !q; /* '' inside a quote toggles twice: still inside */
		else if (!q && s[i] == '?' && s[i + 1] == '?' && n < max) {
			at[n++] = i;
			i++;
		}
	}
	return n;
}

/* One operand of A ?? B: a reference, 'text', a number, true/false/null, {} or []. */
static int tr_operand(struct tr *t, const char *s, size_t len, bool jsonish, bool json_target,
		      struct pgu_buf *out, struct dw_err *err)
{
	while (len && (*s == ' ' || *s == '\t'))
		s++, len--;
	while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	char *op = dw_strndup(s, len);
	int rc = 0;
	if (op[0] == '$') {
		rc = tr_string(t, op, jsonish, json_target, out, err);
	} else if (op[0] == '\'' && len >= 2 && op[len - 1] == '\'') {
		struct pgu_buf v = {0};
		for (size_t i = 1; i + 1 < len; i++) {
			pgu_buf_add(&v, op + i, 1);
			if (op[i] == '\'' && op[i + 1] == '\'')
				i++;
		}
		lit(t, out, v.p ? v.p : "", jsonish);
		pgu_buf_free(&v);
	} else if (strcmp(op, "null") == 0) {
		pgu_buf_puts(out, jsonish ? "NULL::jsonb" : "NULL");
	} else if (strspn(op, "{}[]truefalsn0123456789.-+eE") == len && len) {
		char *q = pgu_literal(t->m->src, op);
		pgu_buf_printf(out, jsonish ? "%s::jsonb" : "%s", q);
		free(q);
	} else {
		rc = 1;
	}
	free(op);
	return rc;
}

/* Translate one string expression. 1: no SQL form; -1: error (unknown column). */
static int tr_string(struct tr *t, const char *s, bool nested, bool json_target,
		     struct pgu_buf *out, struct dw_err *err)
{
	size_t at[16];
	size_t nsplit = s[0] == '$' && s[1] != '$' ? fallback_splits(s, at, DW_ARRAY_LEN(at)) : 0;
	if (nsplit) {
		/* A ?? B ?? C: the first present and not null. In jsonb, a JSON null
		 * is a value to SQL: NULLIF makes it absent, as the engine sees it. */
		bool jsonish = nested || json_target;
		pgu_buf_puts(out, "coalesce(");
		for (size_t i = 0; i <= nsplit; i++) {
			size_t from = i ? at[i - 1] + 2 : 0, to = i < nsplit ? at[i] : strlen(s);
			struct pgu_buf o = {0};
			int rc = tr_operand(t, s + from, to - from, jsonish, json_target, &o, err);
			if (rc == 0)
				pgu_buf_printf(out, jsonish ? "%sNULLIF(%s, 'null'::jsonb)" : "%s%s",
					       i ? ", " : "", o.p);
			pgu_buf_free(&o);
			if (rc)
				return rc;
		}
		pgu_buf_puts(out, ")");
		return 0;
	}
	if (s[0] != '$') {
		lit(t, out, s, nested);
		return 0;
	}
	if (s[1] == '$') {
		lit(t, out, s + 1, nested);
		return 0;
	}
	if (strcmp(s, "$tenant") == 0) {
		lit(t, out, t->m->tenant, nested);
		return 0;
	}
	if (strcmp(s, "$now") == 0) {
		t->now = true;
		pgu_buf_printf(out, nested ? "to_jsonb(%s)" : "%s",
			       "to_char(now() AT TIME ZONE 'UTC', "
			       "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')");
		return 0;
	}
	if (strncmp(s, "$row.", 5) != 0 || !s[5])
		return 1;
	const char *col = s + 5;
	const char *dot = strchr(col, '.');
	size_t clen = dot ? (size_t)(dot - col) : strlen(col);
	int ai = find_attr(t, col, clen);
	if (ai < 0) {
		dw_err_set(err, "source column %s.%.*s (referenced as \"%s\") does not exist",
			   t->m->tm->source.table, (int)clen, col, s);
		return -1;
	}
	const struct src_attr *a = &t->attrs[ai];
	add_ref(t, a->name);
	char *qc = PQescapeIdentifier(t->m->src, a->name, strlen(a->name));
	if (!dot) {
		if (!nested)
			pgu_buf_printf(out, "s.%s", qc);
		else if (a->json || a->native)
			pgu_buf_printf(out, "to_jsonb(s.%s)", qc);
		else
			pgu_buf_printf(out, "to_jsonb(s.%s::text)", qc);
	} else if (!a->json) {
		/* A path into a scalar is missing in the engine: NULL here. */
		t->missable = true;
		pgu_buf_puts(out, nested ? "NULL::jsonb" : "NULL");
	} else {
		struct pgu_buf path = {0};
		t->missable = true;
		pgu_buf_puts(&path, "{");
		for (const char *p = dot + 1; *p; p++)
			pgu_buf_add(&path, p[0] == '.' ? "," : p, 1);
		pgu_buf_puts(&path, "}");
		char *qp = pgu_literal(t->m->src, path.p);
		pgu_buf_printf(out, "(s.%s::jsonb %s %s)", qc,
			       nested || json_target ? "#>" : "#>>", qp);
		free(qp);
		pgu_buf_free(&path);
	}
	PQfreemem(qc);
	return 0;
}

static int tr_setting(struct tr *t, const config_setting_t *s, bool nested, bool json_target,
		      struct pgu_buf *out, struct dw_err *err)
{
	char num[64];
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_STRING:
		return tr_string(t, config_setting_get_string(s), nested, json_target, out, err);
	case CONFIG_TYPE_INT:
		snprintf(num, sizeof(num), "%d", config_setting_get_int(s));
		break;
	case CONFIG_TYPE_INT64:
		snprintf(num, sizeof(num), "%lld", config_setting_get_int64(s));
		break;
	case CONFIG_TYPE_FLOAT: /* as the mirror's engine writes the literal */
		if (jsonfast_real(config_setting_get_float(s), nested, num) < 0)
			snprintf(num, sizeof(num), "%s", "null");
		break;
	case CONFIG_TYPE_BOOL:
		snprintf(num, sizeof(num), "%s", config_setting_get_bool(s) ? "true" : "false");
		break;
	case CONFIG_TYPE_GROUP: {
		/*
		 * A member whose value is missing is left out by the engine, so
		 * such members ($row.a.b) are added only when present; the rest
		 * go into one jsonb_build_object. jsonb orders keys itself.
		 */
		struct pgu_buf fixed = {0}, opt = {0}, v = {0};
		int n = config_setting_length(s), rc = 0;
		for (int i = 0; i < n && rc == 0; i++) {
			const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
			char *q = pgu_literal(t->m->src, config_setting_name(e));
			pgu_buf_reset(&v);
			t->missable = false;
			rc = tr_setting(t, e, true, true, &v, err);
			if (rc == 0 && t->missable)
				pgu_buf_printf(&opt, " || CASE WHEN %s IS NULL THEN '{}'::jsonb "
						     "ELSE jsonb_build_object(%s, %s) END",
					       v.p, q, v.p);
			else if (rc == 0)
				pgu_buf_printf(&fixed, "%s%s, %s", fixed.len ? ", " : "", q, v.p);
			free(q);
		}
		if (rc == 0)
			pgu_buf_printf(out, "(jsonb_build_object(%s)%s)", fixed.p ? fixed.p : "",
				       opt.p ? opt.p : "");
		t->missable = false;
		pgu_buf_free(&fixed);
		pgu_buf_free(&opt);
		pgu_buf_free(&v);
		return rc;
	}
	case CONFIG_TYPE_ARRAY:
	case CONFIG_TYPE_LIST: {
		pgu_buf_puts(out, "jsonb_build_array(");
		int n = config_setting_length(s);
		for (int i = 0; i < n; i++) {
			const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
			if (i)
				pgu_buf_puts(out, ", ");
			int rc = tr_setting(t, e, true, true, out, err);
			if (rc)
				return rc;
		}
		pgu_buf_puts(out, ")");
		t->missable = false;
		return 0;
	}
	default:
		return 1;
	}
	pgu_buf_printf(out, nested ? "'%s'::jsonb" : "'%s'", num);
	return 0;
}

/* The table's configuration group, re-read from the file (see pgutil.h). */
static const config_setting_t *raw_columns(config_t *lc, const struct dw_config *cfg,
					   const char *table)
{
	if (!cfg->path || config_read_path(lc, cfg->path) != CONFIG_TRUE)
		return NULL;
	const config_setting_t *tables = config_lookup(lc, "tables");
	if (!tables)
		return NULL;
	int n = config_setting_length(tables);
	for (int i = 0; i < n; i++) {
		const config_setting_t *t = config_setting_get_elem(tables, (unsigned)i);
		const char *name = NULL;
		if (config_setting_lookup_string(t, "name", &name) && strcmp(name, table) == 0)
			return config_setting_get_member(t, "columns");
	}
	return NULL;
}

static const char ATTR_SQL[] =
	"SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid::int4, "
	"t.typcategory FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
	"WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped "
	"ORDER BY a.attnum";

/* Columns of a table as a result (name, type, oid, category), or NULL with err
 * (PGU_CONFIG in *rc when the table does not exist). */
static PGresult *table_attrs(PGconn *c, const char *side, const char *table, const char *qtable,
			     int *rc, struct dw_err *err)
{
	const char *p[1] = {qtable};
	PGresult *r = pgu_exec(c, "SELECT to_regclass($1)::oid", 1, p, PGRES_TUPLES_OK, err);
	if (!r) {
		*rc = PGU_RUNTIME;
		dw_err_prefix(err, "%s database", side);
		return NULL;
	}
	bool missing = PQgetisnull(r, 0, 0);
	PQclear(r);
	if (missing) {
		*rc = PGU_CONFIG;
		dw_err_set(err, "%s table %s does not exist (database \"%s\")", side, table,
			   PQdb(c));
		return NULL;
	}
	r = pgu_exec(c, ATTR_SQL, 1, p, PGRES_TUPLES_OK, err);
	if (!r) {
		*rc = PGU_RUNTIME;
		dw_err_prefix(err, "%s database", side);
	}
	return r;
}

static int attr_index(const PGresult *r, const char *name)
{
	for (int i = 0; i < PQntuples(r); i++)
		if (strcmp(PQgetvalue(r, i, 0), name) == 0)
			return i;
	return -1;
}

int pgu_map_open(struct pgu_map *m, const struct dw_config *cfg, const char *table,
		 struct dw_err *err)
{
	return pgu_map_open_as(m, cfg, table, NULL, err);
}

/* The key columns of both sides: quoted names, types, and where each target
 * key column is among the mapped columns. Called once cols are known. */
static int map_keys(struct pgu_map *m, const PGresult *sa, const PGresult *ta,
		    struct dw_err *err)
{
	const struct dw_table_map *tm = m->tm;
	struct pgu_buf b = {0};
	m->nkey = tm->target.nkeys;
	m->src_keys = dw_calloc(m->nkey, sizeof(char *));
	m->tgt_keys = dw_calloc(m->nkey, sizeof(char *));
	m->src_key_types = dw_calloc(m->nkey, sizeof(char *));
	m->tgt_key_types = dw_calloc(m->nkey, sizeof(char *));
	m->key_cols = dw_calloc(m->nkey, sizeof(int));
	for (size_t k = 0; k < m->nkey; k++) {
		int si = attr_index(sa, tm->source.keys[k]), ti = attr_index(ta, tm->target.keys[k]);
		if (si < 0) {
			dw_err_set(err, "source key column %s.%s does not exist", tm->source.table,
				   tm->source.keys[k]);
			return -1;
		}
		if (ti < 0) {
			dw_err_set(err, "target key column %s.%s does not exist", tm->target.table,
				   tm->target.keys[k]);
			return -1;
		}
		m->src_keys[k] = pgu_ident(m->src, tm->source.keys[k]);
		m->tgt_keys[k] = pgu_ident(m->tgt, tm->target.keys[k]);
		m->src_key_types[k] = dw_strdup(PQgetvalue(sa, si, 1));
		m->tgt_key_types[k] = dw_strdup(PQgetvalue(ta, ti, 1));
		m->key_cols[k] = -1;
		for (size_t i = 0; i < m->ncols; i++)
			if (strcmp(m->cols[i].name, tm->target.keys[k]) == 0)
				m->key_cols[k] = (int)i;
		if (m->key_cols[k] < 0) {
			dw_err_set(err, "target key column %s.%s is not mapped in columns",
				   tm->target.table, tm->target.keys[k]);
			return -1;
		}
		pgu_buf_printf(&b, "%s%s", k ? ", " : "", m->tgt_keys[k]);
	}
	m->tgt_key_list = b.p;
	b = (struct pgu_buf){0};
	for (size_t w = 0; w < tm->target.nwhere; w++) {
		const char *col = tm->target.where_cols[w], *v = tm->target.where_vals[w];
		if (attr_index(ta, col) < 0) {
			dw_err_set(err, "target where column %s.%s does not exist", tm->target.table, col);
			pgu_buf_free(&b);
			return -1;
		}
		char *qc = pgu_ident(m->tgt, col);
		char *qv = pgu_literal(m->tgt, strcmp(v, "$tenant") == 0 ? m->tenant : v);
		pgu_buf_printf(&b, "%st.%s = %s", w ? " AND " : "", qc, qv);
		free(qc);
		free(qv);
	}
	m->tgt_where = b.p;
	return 0;
}

int pgu_map_open_as(struct pgu_map *m, const struct dw_config *cfg, const char *table,
		    const char *tenant, struct dw_err *err)
{
	int rc = PGU_RUNTIME;
	PGresult *sa = NULL, *ta = NULL;
	config_t lc;
	struct tr t = {.m = m};
	struct pgu_buf sql = {0};

	memset(m, 0, sizeof(*m));
	config_init(&lc);
	m->key_col = -1;
	m->tm = config_table(cfg, table);
	if (!m->tm) {
		dw_err_set(err, "no table \"%s\" in %s (tables: ", table, cfg->path);
		for (size_t i = 0; i < cfg->ntables; i++)
			snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg),
				 "%s%s", i ? ", " : "", cfg->tables[i].name);
		snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg), ")");
		rc = PGU_CONFIG;
		goto out;
	}
	const struct dw_table_map *tm = m->tm;
	m->name = tm->name;
	m->tenant = tenant ? tenant : cfg->tenant.def ? cfg->tenant.def : "default";

	if (!(m->src = pgu_connect(tm->source.dsn, "source", err)) ||
	    !(m->tgt = pgu_connect(tm->target.dsn, "target", err)))
		goto out;
	m->src_table = pgu_ident(m->src, tm->source.table);
	m->tgt_table = pgu_ident(m->tgt, tm->target.table);
	m->src_key = pgu_ident(m->src, tm->source.key);
	m->tgt_key = pgu_ident(m->tgt, tm->target.key);

	if (!(sa = table_attrs(m->src, "source", tm->source.table, m->src_table, &rc, err)) ||
	    !(ta = table_attrs(m->tgt, "target", tm->target.table, m->tgt_table, &rc, err)))
		goto out;
	rc = PGU_CONFIG;
	int ski = attr_index(sa, tm->source.key);
	if (ski < 0) {
		dw_err_set(err, "source key column %s.%s does not exist", tm->source.table,
			   tm->source.key);
		goto out;
	}
	m->src_key_type = dw_strdup(PQgetvalue(sa, ski, 1));
	int tki = attr_index(ta, tm->target.key);
	if (tki < 0) {
		dw_err_set(err, "target key column %s.%s does not exist", tm->target.table,
			   tm->target.key);
		goto out;
	}
	m->tgt_key_type = dw_strdup(PQgetvalue(ta, tki, 1));

	t.nattrs = (size_t)PQntuples(sa);
	t.attrs = dw_calloc(t.nattrs ? t.nattrs : 1, sizeof(*t.attrs));
	for (size_t i = 0; i < t.nattrs; i++) {
		int oid = atoi(PQgetvalue(sa, (int)i, 2));
		char cat = PQgetvalue(sa, (int)i, 3)[0];
		t.attrs[i].name = PQgetvalue(sa, (int)i, 0);
		t.attrs[i].json = oid == OID_JSON || oid == OID_JSONB;
		t.attrs[i].native = cat == 'N' || cat == 'B';
	}
	for (size_t k = 0; k < tm->source.nkeys; k++)
		add_ref(&t, tm->source.keys[k]); /* the key first: see pgu_keyset_tail */

	const config_setting_t *raw = raw_columns(&lc, cfg, table);
	m->ncols = tm->ncolumns;
	m->cols = dw_calloc(m->ncols ? m->ncols : 1, sizeof(*m->cols));
	bool fetch_all = false;
	for (size_t i = 0; i < m->ncols; i++) {
		struct pgu_col *c = &m->cols[i];
		c->name = dw_strdup(tm->column_names[i]);
		c->qname = pgu_ident(m->tgt, c->name);
		c->e = tm->columns[i];
		int ai = attr_index(ta, c->name);
		if (ai < 0) {
			dw_err_set(err, "target column %s.%s does not exist", tm->target.table,
				   c->name);
			goto out;
		}
		c->type = dw_strdup(PQgetvalue(ta, ai, 1));
		if (strcmp(c->name, tm->target.key) == 0)
			m->key_col = (int)i;
		const config_setting_t *cs = raw ? config_setting_get_member(raw, c->name) : NULL;
		if (!cs) {
			fetch_all = true; /* cannot tell what it reads: fetch every column */
			continue;
		}
		bool jt = strcmp(c->type, "jsonb") == 0 || strcmp(c->type, "json") == 0;
		pgu_buf_reset(&sql);
		t.now = false;
		int r = tr_setting(&t, cs, false, jt, &sql, err);
		if (r < 0) {
			dw_err_prefix(err, "column %s", c->name);
			goto out;
		}
		if (r == 0) {
			size_t n = strlen(sql.p) + strlen(c->type) + 8;
			c->src_sql = dw_malloc(n);
			snprintf(c->src_sql, n, "(%s)::%s", sql.p, c->type);
			c->comparable = !t.now && config_table_compares(tm, c->name);
		} else {
			fetch_all = true;
		}
	}
	if (map_keys(m, sa, ta, err) < 0)
		goto out;
	pgu_buf_reset(&sql);
	if (fetch_all) {
		for (size_t k = 0; k < m->nkey; k++)
			pgu_buf_printf(&sql, "s.%s, ", m->src_keys[k]);
		pgu_buf_puts(&sql, "s.*");
	} else {
		for (size_t i = 0; i < t.nrefs; i++) {
			char *q = PQescapeIdentifier(m->src, t.refs[i], strlen(t.refs[i]));
			pgu_buf_printf(&sql, "%ss.%s", i ? ", " : "", q);
			PQfreemem(q);
		}
	}
	m->src_cols = dw_strdup(sql.p);
	rc = PGU_OK;
out:
	if (rc != PGU_OK && m->name)
		dw_err_prefix(err, "table %s", m->name);
	for (size_t i = 0; i < t.nrefs; i++)
		free(t.refs[i]);
	free(t.refs);
	free(t.attrs);
	pgu_buf_free(&sql);
	PQclear(sa);
	PQclear(ta);
	config_destroy(&lc);
	return rc;
}

void pgu_map_close(struct pgu_map *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->ncols; i++) {
		free(m->cols[i].name);
		free(m->cols[i].qname);
		free(m->cols[i].type);
		free(m->cols[i].src_sql);
	}
	free(m->cols);
	free(m->src_table);
	free(m->tgt_table);
	free(m->src_key);
	free(m->tgt_key);
	free(m->src_key_type);
	free(m->tgt_key_type);
	free(m->src_cols);
	for (size_t k = 0; k < m->nkey; k++) {
		free(m->src_keys[k]);
		free(m->tgt_keys[k]);
		free(m->src_key_types[k]);
		free(m->tgt_key_types[k]);
	}
	free(m->src_keys);
	free(m->tgt_keys);
	free(m->src_key_types);
	free(m->tgt_key_types);
	free(m->key_cols);
	free(m->tgt_key_list);
	free(m->tgt_where);
	if (m->src)
		PQfinish(m->src);
	if (m->tgt)
		PQfinish(m->tgt);
	memset(m, 0, sizeof(*m));
}

char *pgu_keyset_tail(const struct pgu_map *m, bool after, long limit)
{
	struct pgu_buf b = {0};
	if (after) {
		/* A row comparison: (a, b) > (x, y) uses an index on (a, b). */
		pgu_buf_puts(&b, m->nkey > 1 ? "WHERE (" : "WHERE ");
		for (size_t k = 0; k < m->nkey; k++)
			pgu_buf_printf(&b, "%ss.%s", k ? ", " : "", m->src_keys[k]);
		pgu_buf_puts(&b, m->nkey > 1 ? ") > (" : " > ");
		for (size_t k = 0; k < m->nkey; k++)
			pgu_buf_printf(&b, "%s$%zu::%s", k ? ", " : "", k + 1, m->src_key_types[k]);
		pgu_buf_puts(&b, m->nkey > 1 ? ") " : " ");
	}
	pgu_buf_puts(&b, "ORDER BY ");
	for (size_t k = 0; k < m->nkey; k++)
		pgu_buf_printf(&b, "%ss.%s", k ? ", " : "", m->src_keys[k]);
	pgu_buf_printf(&b, " LIMIT %ld", limit);
	return b.p;
}

char *pgu_row_key(const struct pgu_map *m, const PGresult *r, int row)
{
	if (m->nkey == 1)
		return dw_strdup(PQgetvalue(r, row, 0));
	json_t *a = json_array();
	for (size_t k = 0; k < m->nkey; k++)
		json_array_append_new(a, json_stringn(PQgetvalue(r, row, (int)k),
						      (size_t)PQgetlength(r, row, (int)k)));
	char *s = json_dumps(a, JSON_COMPACT);
	json_decref(a);
	return s;
}

int pgu_key_split(const struct pgu_map *m, const char *key, char **vals, struct dw_err *err)
{
	if (m->nkey == 1) {
		vals[0] = dw_strdup(key);
		return 0;
	}
	json_error_t je;
	json_t *a = json_loads(key, 0, &je);
	bool ok = json_is_array(a) && json_array_size(a) == m->nkey;
	for (size_t k = 0; ok && k < m->nkey; k++)
		ok = json_is_string(json_array_get(a, k));
	if (!ok) {
		json_decref(a);
		dw_err_set(err, "key %s is not a key of %zu columns (was the table map's key changed? "
				"--restart starts over)", key, m->nkey);
		return -1;
	}
	for (size_t k = 0; k < m->nkey; k++)
		vals[k] = dw_strdup(json_string_value(json_array_get(a, k)));
	json_decref(a);
	return 0;
}

char *pgu_source_select(const struct pgu_map *m, const char *tail)
{
	struct pgu_buf b = {0};
	pgu_buf_printf(&b, "SELECT %s FROM %s s %s", m->src_cols, m->src_table, tail);
	return b.p;
}

/* ---- mapping rows ---- */

/* A real in the shortest form that reads back the same, as the mirror writes
 * it (jsonfast_real): 0.1 stays 0.1 (jansson's "%.17g" would write
 * 0.10000000000000001, a different jsonb number); in a document with ".0" on
 * an integral value as JSON text of a real has. */
static void real_text(double d, bool in_doc, struct pgu_buf *b)
{
	char tmp[JSONFAST_REAL_MAX];
	if (jsonfast_real(d, in_doc, tmp) < 0)
		snprintf(tmp, sizeof(tmp), "%s", "null"); /* json_real() refuses inf and nan */
	pgu_buf_puts(b, tmp);
}

static void json_text(const json_t *v, struct pgu_buf *b);

static void string_text(const char *s, size_t n, struct pgu_buf *b)
{
	pgu_buf_add(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			pgu_buf_add(b, e, 2);
		} else if (c < 0x20) {
			pgu_buf_printf(b, "\\u%04x", c);
		} else {
			pgu_buf_add(b, s + i, 1);
		}
	}
	pgu_buf_add(b, "\"", 1);
}

/* Compact JSON text of v, reals as real_text writes them. */
static void json_text(const json_t *v, struct pgu_buf *b)
{
	const char *k;
	json_t *e;
	size_t i;
	bool first = true;
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		pgu_buf_add(b, "{", 1);
		json_object_foreach((json_t *)(uintptr_t)v, k, e) {
			if (!first)
				pgu_buf_add(b, ",", 1);
			first = false;
			string_text(k, strlen(k), b);
			pgu_buf_add(b, ":", 1);
			json_text(e, b);
		}
		pgu_buf_add(b, "}", 1);
		break;
	case JSON_ARRAY:
		pgu_buf_add(b, "[", 1);
		json_array_foreach(v, i, e) {
			if (i)
				pgu_buf_add(b, ",", 1);
			json_text(e, b);
		}
		pgu_buf_add(b, "]", 1);
		break;
	case JSON_STRING:
		string_text(json_string_value(v), json_string_length(v), b);
		break;
	case JSON_INTEGER:
		pgu_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL:
		real_text(json_real_value(v), true, b);
		break;
	case JSON_TRUE:
		pgu_buf_puts(b, "true");
		break;
	case JSON_FALSE:
		pgu_buf_puts(b, "false");
		break;
	default:
		pgu_buf_puts(b, "null");
	}
}

/* One mapped value as text for COPY; NULL for null/missing. malloc'd. */
static char *value_text(const json_t *v)
{
	char tmp[64];
	switch (json_typeof(v)) {
	case JSON_STRING:
		return dw_strndup(json_string_value(v), json_string_length(v));
	case JSON_INTEGER:
		snprintf(tmp, sizeof(tmp), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		return dw_strdup(tmp);
	case JSON_TRUE:
		return dw_strdup("true");
	case JSON_FALSE:
		return dw_strdup("false");
	case JSON_NULL:
		return NULL;
	default: {
		/* a real for a numeric column (no ".0": it may be an integer one),
		 * or a document for a json one */
		struct pgu_buf b = {0};
		if (json_is_real(v))
			real_text(json_real_value(v), false, &b);
		else
			json_text(v, &b);
		return b.p;
	}
	}
}

static int eval_col(const struct pgu_map *m, size_t i, const json_t *row, json_t **out,
		    struct dw_err *err)
{
	struct expr_ctx ctx = {.row = row, .tenant = m->tenant};
	int rc = expr_eval(m->cols[i].e, &ctx, out, err);
	if (rc == EXPR_ERROR) {
		dw_err_prefix(err, "table %s: column %s", m->name, m->cols[i].name);
		return -1;
	}
	if (rc == EXPR_MISSING)
		*out = NULL; /* a missing source field: the column gets NULL */
	return 0;
}

int pgu_map_row(const struct pgu_map *m, const PGresult *r, int row, struct pgu_buf *out,
		struct dw_err *err)
{
	json_t *jrow = pgu_row_json(r, row);
	int rc = -1;
	for (size_t i = 0; i < m->ncols; i++) {
		json_t *v = NULL;
		if (eval_col(m, i, jrow, &v, err) < 0)
			goto out;
		char *s = v ? value_text(v) : NULL;
		if (i)
			pgu_buf_add(out, "\t", 1);
		pgu_buf_copy_field(out, s, s ? strlen(s) : 0);
		free(s);
		json_decref(v);
	}
	pgu_buf_add(out, "\n", 1);
	rc = 0;
out:
	json_decref(jrow);
	return rc;
}

json_t *pgu_map_row_json(const struct pgu_map *m, const PGresult *r, int row,
			 struct dw_err *err)
{
	json_t *jrow = pgu_row_json(r, row);
	json_t *o = json_object();
	for (size_t i = 0; i < m->ncols; i++) {
		json_t *v = NULL;
		if (eval_col(m, i, jrow, &v, err) < 0) {
			json_decref(o);
			o = NULL;
			break;
		}
		json_object_set_new(o, m->cols[i].name, v ? v : json_null());
	}
	json_decref(jrow);
	return o;
}

/* ---- writing ---- */

char *pgu_insert_sql(const struct pgu_map *m, bool update)
{
	struct pgu_buf b = {0};
	pgu_buf_printf(&b, "INSERT INTO %s (", m->tgt_table);
	for (size_t i = 0; i < m->ncols; i++)
		pgu_buf_printf(&b, "%s%s", i ? ", " : "", m->cols[i].qname);
	pgu_buf_puts(&b, ") SELECT ");
	for (size_t i = 0; i < m->ncols; i++)
		pgu_buf_printf(&b, "%sc%zu::%s", i ? ", " : "", i, m->cols[i].type);
	pgu_buf_printf(&b, " FROM pg_temp.dw_stage ON CONFLICT (%s) DO ", m->tgt_key_list);
	bool any = false;
	if (update) {
		for (size_t i = 0; i < m->ncols; i++) {
			bool key = false;
			for (size_t k = 0; k < m->nkey; k++)
				key |= (int)i == m->key_cols[k];
			if (key)
				continue;
			pgu_buf_printf(&b, "%s%s = EXCLUDED.%s", any ? ", " : "UPDATE SET ",
				       m->cols[i].qname, m->cols[i].qname);
			any = true;
		}
	}
	if (!any)
		pgu_buf_puts(&b, "NOTHING");
	return b.p;
}

int pgu_stage(struct pgu_map *m, struct dw_err *err)
{
	struct pgu_buf b = {0};
	int rc = -1;
	if (m->staged)
		return 0;
	pgu_buf_puts(&b, "CREATE TEMP TABLE IF NOT EXISTS dw_stage (");
	for (size_t i = 0; i < m->ncols; i++)
		pgu_buf_printf(&b, "%sc%zu text", i ? ", " : "", i);
	pgu_buf_puts(&b, ") ON COMMIT DELETE ROWS");
	if (pgu_cmd(m->tgt, b.p, err) < 0)
		goto out;
	for (int u = 0; u < 2; u++) {
		char *sql = pgu_insert_sql(m, u);
		PGresult *r = PQprepare(m->tgt, u ? "dw_ins_update" : "dw_ins_nothing", sql, 0,
					NULL);
		free(sql);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			chomp_err(err, "target: ", PQresultErrorMessage(r));
			PQclear(r);
			goto out;
		}
		PQclear(r);
	}
	m->staged = true;
	rc = 0;
out:
	pgu_buf_free(&b);
	return rc;
}

/* COPY the lines into a table; sqlstate (6 bytes) gets the error's code. */
static int copy_into(PGconn *c, const char *copy_sql, const struct pgu_buf *copy,
		     char *sqlstate, struct dw_err *err)
{
	PGresult *r = PQexec(c, copy_sql);
	if (PQresultStatus(r) != PGRES_COPY_IN) {
		chomp_err(err, "target: ", PQresultErrorMessage(r));
		PQclear(r);
		return -1;
	}
	PQclear(r);
	if (PQputCopyData(c, copy->p ? copy->p : "", (int)copy->len) != 1 ||
	    PQputCopyEnd(c, NULL) != 1) {
		chomp_err(err, "target: COPY: ", PQerrorMessage(c));
		return -1;
	}
	int rc = 0;
	while ((r = PQgetResult(c))) {
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			chomp_err(err, "target: COPY: ", PQresultErrorMessage(r));
			const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
			if (sqlstate && st)
				snprintf(sqlstate, 6, "%s", st);
			rc = -1;
		}
		PQclear(r);
	}
	return rc;
}

static int copy_in(PGconn *c, const struct pgu_buf *copy, struct dw_err *err)
{
	return copy_into(c, "COPY pg_temp.dw_stage FROM STDIN", copy, NULL, err);
}

/*
 * The insert failed. PostgreSQL's cast errors do not say which column, so
 * find it: in a fresh transaction, stage the rows again and cast one column
 * at a time. The caller's transaction is already rolled back by then.
 */
static void diagnose(struct pgu_map *m, const struct pgu_buf *copy, struct dw_err *err)
{
	struct dw_err e2 = {{0}};
	PGresult *r = PQexec(m->tgt, "ROLLBACK");
	PQclear(r);
	if (pgu_cmd(m->tgt, "BEGIN", &e2) < 0 || copy_in(m->tgt, copy, &e2) < 0)
		goto out;
	for (size_t i = 0; i < m->ncols; i++) {
		char sql[256];
		snprintf(sql, sizeof(sql), "SELECT count(c%zu::%s) FROM pg_temp.dw_stage", i,
			 m->cols[i].type);
		if (pgu_cmd(m->tgt, "SAVEPOINT dw_diag", &e2) < 0)
			goto out;
		r = PQexec(m->tgt, sql);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			char what[300];
			snprintf(what, sizeof(what), "target column %s.%s (%s): ",
				 m->tm->target.table, m->cols[i].name, m->cols[i].type);
			chomp_err(err, what, PQresultErrorMessage(r));
			PQclear(r);
			goto out;
		}
		PQclear(r);
		if (pgu_cmd(m->tgt, "ROLLBACK TO SAVEPOINT dw_diag", &e2) < 0)
			goto out;
	}
out:
	r = PQexec(m->tgt, "ROLLBACK");
	PQclear(r);
}

static size_t count_lines(const struct pgu_buf *b)
{
	size_t n = 0;
	for (const char *p = b->p; (p = memchr(p, '\n', (size_t)(b->p + b->len - p))); p++)
		n++;
	return n;
}

int pgu_write_rows(struct pgu_map *m, const struct pgu_buf *copy, bool update, long *inserted,
		   struct dw_err *err)
{
	*inserted = 0;
	if (!m->staged) {
		dw_err_set(err, "internal: pgu_stage not called");
		return -1;
	}
	if (copy->len == 0)
		return 0;
	if (!update && m->copy_backoff > 0)
		m->copy_backoff--;
	else if (!update) {
		/* Fast path: most batches of a first backfill conflict with nothing. */
		struct pgu_buf sql = {0};
		char state[6] = "";
		pgu_buf_printf(&sql, "COPY %s (", m->tgt_table);
		for (size_t i = 0; i < m->ncols; i++)
			pgu_buf_printf(&sql, "%s%s", i ? ", " : "", m->cols[i].qname);
		pgu_buf_puts(&sql, ") FROM STDIN");
		int rc = pgu_cmd(m->tgt, "SAVEPOINT dw_copy", err);
		if (rc == 0)
			rc = copy_into(m->tgt, sql.p, copy, state, err);
		pgu_buf_free(&sql);
		if (rc == 0) {
			*inserted = (long)count_lines(copy);
			return pgu_cmd(m->tgt, "RELEASE SAVEPOINT dw_copy", err);
		}
		if (pgu_cmd(m->tgt, "ROLLBACK TO SAVEPOINT dw_copy", err) < 0)
			return -1;
		/* A conflict: the next batches probably conflict too. Anything
		 * else (a bad value) is diagnosed by the stage path below. */
		if (strcmp(state, "23505") == 0)
			m->copy_backoff = 16;
	}
	if (copy_in(m->tgt, copy, err) < 0)
		return -1;
	PGresult *r = PQexecPrepared(m->tgt, update ? "dw_ins_update" : "dw_ins_nothing", 0,
				     NULL, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		chomp_err(err, "target: ", PQresultErrorMessage(r));
		PQclear(r);
		diagnose(m, copy, err);
		return -1;
	}
	*inserted = atol(PQcmdTuples(r));
	PQclear(r);
	return 0;
}
