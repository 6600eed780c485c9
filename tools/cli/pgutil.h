/*
 * pgutil — the libpq side shared by `dualwrite backfill` and `dualwrite verify`.
 *
 * It connects (with the session pinned to DateStyle ISO and TimeZone UTC so
 * both databases render values alike), quotes identifiers, turns result rows
 * into typed JSON for the mapping engine, and builds a "table map": one
 * configured table mapping checked against both live schemas. Checking
 * happens before anything is written: the source table, its key and every
 * `$row.column` referenced, the target table, its key and every mapped
 * target column must exist, or the error names the one that does not.
 *
 * A table map carries each target column in three forms: the compiled
 * expression (evaluated client-side by expr_eval over the source row as
 * JSON; that is what backfill and repair write), the target type (every
 * value is cast to it on the way in), and the same mapping translated to SQL
 * over the source row (what verify pushes down into the source database).
 * The expression header offers no introspection of an expression's form, so
 * the translation re-reads the column settings from the configuration file
 * with libconfig; the forms allowed in table maps ($row.col[.path], $tenant,
 * $now, literals, groups, lists) all translate.
 *
 * Writing goes through a session temp table (all text columns) filled by
 * COPY, then one INSERT ... SELECT with explicit casts ... ON CONFLICT on the
 * target key. It neither begins nor commits: the caller owns the
 * transaction, so a batch and its checkpoint commit together.
 */
#ifndef DW_CLI_PGUTIL_H
#define DW_CLI_PGUTIL_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "dw.h"

/* A growable byte buffer (always NUL-terminated). */
struct pgu_buf {
	char *p;
	size_t len, cap;
};
void pgu_buf_add(struct pgu_buf *b, const char *s, size_t n);
void pgu_buf_puts(struct pgu_buf *b, const char *s);
void pgu_buf_printf(struct pgu_buf *b, const char *fmt, ...) DW_PRINTF(2, 3);
void pgu_buf_reset(struct pgu_buf *b);
void pgu_buf_free(struct pgu_buf *b);
/* Append s in COPY text format (backslash escapes); NULL appends \N. */
void pgu_buf_copy_field(struct pgu_buf *b, const char *s, size_t n);

/* Connect to dsn ("" = the PG* environment); side names it in errors
 * ("source", "target"). Sets DateStyle=ISO, TimeZone=UTC, quiet notices. */
PGconn *pgu_connect(const char *dsn, const char *side, struct dw_err *err);
/* Quote a possibly schema-qualified name ("a.b" -> "a"."b"). malloc'd. */
char *pgu_ident(PGconn *c, const char *name);
/* Quote a literal. malloc'd. */
char *pgu_literal(PGconn *c, const char *s);
/* Run sql with text params; a result with status want, else NULL with err. */
PGresult *pgu_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
		   ExecStatusType want, struct dw_err *err);
/* Run a command that returns nothing interesting. */
int pgu_cmd(PGconn *c, const char *sql, struct dw_err *err) DW_MUSTCHECK;

/* One field / one row as JSON: int2/4/8 -> integer, numeric -> integer when
 * integral and in range else real, float -> real (NaN/Infinity as strings),
 * bool, json/jsonb -> parsed, NULL -> null, anything else the server's text. */
json_t *pgu_value_json(const PGresult *r, int row, int col);
json_t *pgu_row_json(const PGresult *r, int row);

struct pgu_col {
	char *name;	    /* target column */
	char *qname;	    /* quoted */
	char *type;	    /* target type as format_type renders it */
	const struct expr *e;
	char *src_sql;	    /* mapped value over source alias s, cast to type */
	bool comparable;    /* false for $now, which never compares equal */
};

struct pgu_map {
	const struct dw_table_map *tm;
	const char *name;   /* table map name */
	const char *tenant; /* $tenant for backfill rows */
	PGconn *src, *tgt;
	char *src_table, *tgt_table; /* quoted */
	char *src_key, *tgt_key;     /* quoted column names */
	char *src_key_type, *tgt_key_type;
	char *src_cols;		     /* quoted source columns to fetch, key first: "s.a, s.b" */
	struct pgu_col *cols;
	size_t ncols;
	int key_col;		     /* index of the target key in cols */
	/* The whole key: src_key/tgt_key/key_col above are its first column.
	 * A composite key (nkey > 1) pages, checkpoints and matches on all. */
	size_t nkey;
	char **src_keys, **tgt_keys;	       /* quoted */
	char **src_key_types, **tgt_key_types;
	int *key_cols;			       /* index in cols of each target key column */
	char *tgt_key_list;		       /* quoted, comma-joined: the ON CONFLICT target */
	char *tgt_where;		       /* "t.col = 'v' AND ..." from target.where, or NULL */
	bool staged;		     /* temp table and insert statements prepared */
	int copy_backoff;	     /* batches to go straight to the stage after a conflict */
};

enum { PGU_OK = 0, PGU_RUNTIME = 1, PGU_CONFIG = 2 };

/* Connect both sides and check the mapping named table against both schemas.
 * Returns PGU_OK, or PGU_RUNTIME (cannot connect, query failed) / PGU_CONFIG
 * (unknown table or column) with err. pgu_map_close is safe either way. */
int pgu_map_open(struct pgu_map *m, const struct dw_config *cfg, const char *table,
		 struct dw_err *err) DW_MUSTCHECK;
void pgu_map_close(struct pgu_map *m);

/* As pgu_map_open, with $tenant set to tenant (NULL: the configured default). */
int pgu_map_open_as(struct pgu_map *m, const struct dw_config *cfg, const char *table,
		    const char *tenant, struct dw_err *err) DW_MUSTCHECK;

/* Keyset pagination on the source key, single or composite: "[WHERE (s.a,
 * s.b) > ($1::ta, $2::tb)] ORDER BY s.a, s.b LIMIT limit". The source select
 * puts the key columns first, so a result row's key is its first nkey fields.
 * malloc'd. */
char *pgu_keyset_tail(const struct pgu_map *m, bool after, long limit);
/* The key of row `row` as checkpoint text: the value itself for a one-column
 * key, a JSON array of the values' text for a composite one. malloc'd. */
char *pgu_row_key(const struct pgu_map *m, const PGresult *r, int row);
/* Split checkpoint text back into m->nkey malloc'd values (the parameters of
 * pgu_keyset_tail's WHERE). -1 with err when it is not a key of this map. */
int pgu_key_split(const struct pgu_map *m, const char *key, char **vals,
		  struct dw_err *err) DW_MUSTCHECK;

/* SQL selecting the source rows to map, with a WHERE clause tail supplied by
 * the caller (e.g. "WHERE s.id > $1 ORDER BY s.id LIMIT 1000"). malloc'd. */
char *pgu_source_select(const struct pgu_map *m, const char *tail);

/* Map source row `row` of r (selected by pgu_source_select) with the
 * expression engine and append it as one COPY text line to out. */
int pgu_map_row(const struct pgu_map *m, const PGresult *r, int row, struct pgu_buf *out,
		struct dw_err *err) DW_MUSTCHECK;
/* The same row as a JSON object of target columns (for --dry-run). */
json_t *pgu_map_row_json(const struct pgu_map *m, const PGresult *r, int row,
			 struct dw_err *err);

/* Create the session's stage (a temp table) and prepare the insert
 * statements; call once, outside any transaction. */
int pgu_stage(struct pgu_map *m, struct dw_err *err) DW_MUSTCHECK;

/* Inside the caller's open transaction on m->tgt: write the rows in copy
 * (COPY text lines). Without update it first tries a plain COPY into the
 * target under a savepoint — the fast path when none of the keys exists —
 * and on a unique violation (a row dual-written already) falls back to the
 * stage: COPY into it, then insert into the target. update: ON CONFLICT DO
 * UPDATE every mapped column, else DO NOTHING. *inserted gets the number of
 * rows written. A cast failure is reported naming the target column and
 * type; the transaction is then aborted (the caller rolls back). */
int pgu_write_rows(struct pgu_map *m, const struct pgu_buf *copy, bool update, long *inserted,
		   struct dw_err *err) DW_MUSTCHECK;

/* The SQL the writer uses (for --dry-run). malloc'd. */
char *pgu_insert_sql(const struct pgu_map *m, bool update);

#endif
