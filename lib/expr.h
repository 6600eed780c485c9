/*
 * expr — the value-expression mapping engine (SPEC §3).
 *
 * One engine for every place a value is derived from a write: mirror bodies,
 * ordering keys, path templates and the backfill column maps. Expressions are
 * compiled once, at configuration load, from libconfig settings; evaluating
 * one builds a jansson value and never fails on well-formed input except for
 * the reasons listed below.
 *
 * Forms: "$request.a.b", "$response.a.b", "$path.name", "$query.name",
 * "$header.Name", "$tenant", "$now", "$row.column", "$request"/"$response"
 * (the whole document), "$item.a" (the element, only in an `each` body);
 * any other string, number or boolean is a literal; "$$..." is a literal
 * starting with "$"; a group is a JSON object whose members are
 * expressions; a list is a JSON array. Any other "$word" is a compile error.
 * A missing source field leaves an object member out.
 *
 * Operators (conf/MAPPING.md is the reference), inside a string that starts
 * with "$":  A ?? B ?? 'text'  (the first operand present and not null),
 * $string(A), $number(A), $json(A) (conversions); operands are references,
 * operator calls, 'quoted text' ('' is a quote), numbers, true, false, null,
 * {} and [].
 * In any other string, "${A}" interpolates an expression ("tpl-${$request.type}")
 * and "$${" is a literal "${". Mappings (expr_compile_mapping) add
 * element-wise mapping of lists: each/base/drop/body.
 *
 * It does not parse JSON from bytes or know about HTTP: the caller hands it
 * decoded documents and accessors.
 */
#ifndef DW_EXPR_H
#define DW_EXPR_H

#include <jansson.h>
#include <libconfig.h>
#include <stdbool.h>

#include "dw.h"

/* Sources an expression may refer to; used to restrict where a form is legal
 * (e.g. $row only in table maps, $response not in request-time keys). */
enum expr_source {
	EXPR_SRC_REQUEST = 1 << 0,
	EXPR_SRC_RESPONSE = 1 << 1,
	EXPR_SRC_PATH = 1 << 2,
	EXPR_SRC_QUERY = 1 << 3,
	EXPR_SRC_HEADER = 1 << 4,
	EXPR_SRC_TENANT = 1 << 5,
	EXPR_SRC_NOW = 1 << 6,
	EXPR_SRC_ROW = 1 << 7,
	EXPR_SRC_ITEM = 1 << 8, /* $item: set by expr_compile_mapping for an each body */
};
#define EXPR_SRC_HTTP                                                                    \
	(EXPR_SRC_REQUEST | EXPR_SRC_RESPONSE | EXPR_SRC_PATH | EXPR_SRC_QUERY |         \
	 EXPR_SRC_HEADER | EXPR_SRC_TENANT | EXPR_SRC_NOW)
#define EXPR_SRC_TABLE (EXPR_SRC_ROW | EXPR_SRC_TENANT | EXPR_SRC_NOW)

/* Everything an evaluation may read. Any pointer may be NULL: a reference to
 * an absent source evaluates as missing. Nothing here is retained. */
struct expr_ctx {
	const json_t *request;	/* the request body as JSON */
	const json_t *response; /* the legacy's reply body as JSON */
	const json_t *row;	/* a table row as a JSON object (backfill) */
	/* $path.name: parallel arrays of capture names and values */
	const char *const *path_names;
	const char *const *path_values;
	size_t npath;
	const char *query; /* raw query string without '?'; values are %-decoded */
	size_t query_len;
	/* $header.Name: returns the value and its length, or NULL */
	const char *(*header)(void *arg, const char *name, size_t *len);
	void *header_arg;
	/* $tenant: the resolved tenant; NULL means the tenant is invalid and any
	 * expression using $tenant fails with EXPR_ERROR ("bad tenant"). */
	const char *tenant;
	const char *now; /* RFC 3339 UTC; NULL: evaluated from the clock */
	const json_t *item; /* $item: set by the engine while mapping an each list */
};

enum expr_rc { EXPR_OK = 0, EXPR_MISSING = 1, EXPR_ERROR = -1 };

struct expr;

/*
 * Compile a libconfig setting (string, number, boolean, group, list) into an
 * expression. allowed is a mask of enum expr_source; a reference outside it
 * is an error. Errors name the setting's path and line via err.
 * Returns a new expression owned by the caller (expr_free), or NULL.
 */
struct expr *expr_compile(const config_setting_t *s, unsigned allowed, struct dw_err *err);
/* Compile from a string as it would appear in a config ("$request.id"). */
struct expr *expr_compile_str(const char *s, unsigned allowed, struct dw_err *err);
/*
 * A mirror document: start from base (may be NULL; must be $request or
 * $response, or a group), remove the top-level names in drop (a list of
 * strings, may be NULL), then set every member of body (a group, may be NULL)
 * over it, recursively merging groups into objects. NULL,NULL,NULL is an error.
 */
struct expr *expr_compile_document(const config_setting_t *base, const config_setting_t *drop,
				   const config_setting_t *body, unsigned allowed,
				   struct dw_err *err);
void expr_free(struct expr *e);

/* Which sources an expression refers to (mask of enum expr_source). */
unsigned expr_sources(const struct expr *e);

/* The literal text every string value of e begins with, whatever its sources
 * hold: "user:" for "user:${$response.user_id}", "" for "$request.id", the
 * whole text for a string literal. Written to buf (NUL-terminated, cut to
 * cap - 1 bytes: a shorter prefix is still a prefix); returns its length. */
size_t expr_literal_prefix(const struct expr *e, char *buf, size_t cap);

/*
 * Evaluate. On EXPR_OK *out is a new reference owned by the caller; on
 * EXPR_MISSING (a referenced field is absent at the top level of this
 * expression) *out is NULL; on EXPR_ERROR *out is NULL and err says why
 * (bad tenant, ...).
 */
int expr_eval(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
	      struct dw_err *err) DW_MUSTCHECK;
/*
 * Evaluate to a string: a JSON string as is, an integer in decimal, a real
 * in shortest round-trip form, true/false; objects, arrays and null are an
 * error. *out is malloc'd and owned by the caller.
 */
int expr_eval_string(const struct expr *e, const struct expr_ctx *ctx, char **out,
		     struct dw_err *err) DW_MUSTCHECK;

/*
 * Path templates: "/gear-items/{response.id}", "/devices/{id}" — literal text
 * with {placeholders}. {name} is $path.name; {a.b} is $a.b for request,
 * response, query, header, row; {tenant}, {now}. Each substituted value is
 * percent-encoded as one path segment. A missing value is an error at render
 * time (a request to a half-built path is never sent).
 */
struct tmpl;
struct tmpl *tmpl_compile(const char *s, unsigned allowed, struct dw_err *err);
/* *out is malloc'd, owned by the caller. */
int tmpl_render(const struct tmpl *t, const struct expr_ctx *ctx, char **out,
		struct dw_err *err) DW_MUSTCHECK;
unsigned tmpl_sources(const struct tmpl *t);
void tmpl_free(struct tmpl *t);

/* The tenant rule of SPEC §3: [A-Za-z0-9_.-]{1,64}. */
bool expr_tenant_valid(const char *s, size_t len);

/*
 * Extended compilation, for the configuration loader: besides the source
 * mask, it can restrict $path.NAME (and template {NAME}) to the captures of a
 * route, and on error reports the source line of the offending setting in
 * line, and its path relative to the compiled setting ("body.category") at
 * the start of err ("body.category: ..."). Set check_path with path_names
 * (npath entries, may be 0) to enable the capture check.
 */
struct expr_opts {
	unsigned allowed;
	bool check_path;
	const char *const *path_names;
	size_t npath;
	int line; /* out: line of the offending setting, 0 when unknown */
};
struct expr *expr_compile_opts(const config_setting_t *s, struct expr_opts *o,
			       struct dw_err *err);
struct expr *expr_compile_document_opts(const config_setting_t *base,
					const config_setting_t *drop,
					const config_setting_t *body, struct expr_opts *o,
					struct dw_err *err);
struct tmpl *tmpl_compile_opts(const char *s, struct expr_opts *o, struct dw_err *err);

/*
 * A mapping: the document a mirror sends, or (SPEC §7.1) the answer a read
 * route gives back, from the members of group g that say how to build it
 * (other members are the caller's):
 *
 *   each = "$request.items";  optional: an expression giving a list; the
 *                             result is a list, one element per element of
 *                             it, built by base/drop/body with $item = the
 *                             element (only here is $item legal)
 *   base = "$request";        optional: start from this document ($request,
 *                             $response, $row, $item or a group)
 *   drop = [ "type" ];        optional, needs base: top-level names removed
 *   body = { ... };           members set over it (or, without base, any
 *                             expression: the value itself)
 *
 * On success returns 0 and *out is the compiled mapping (NULL when g has
 * none of each/base/body: no document, e.g. a DELETE's mirror) to evaluate
 * with expr_eval. On error returns -1, err is "member...: why" and o->line
 * the line. Evaluating a mapping whose each-source is missing or not a list,
 * or one of whose elements maps to nothing (or to an error) is EXPR_ERROR
 * with the reason: a batch is never sent with elements silently left out.
 * When the element mapping is a document (a group body or a base), every
 * element must be a JSON object.
 */
int expr_compile_mapping(const config_setting_t *g, struct expr_opts *o, struct expr **out,
			 struct dw_err *err);

/* Call cb once per $path.NAME reference (templates: per {NAME}), in order. */
void expr_path_refs(const struct expr *e, void (*cb)(void *arg, const char *name), void *arg);
void tmpl_path_refs(const struct tmpl *t, void (*cb)(void *arg, const char *name), void *arg);

/* Percent-decode a query component ('+' is a space). Returns a malloc'd
 * string and its length, or NULL on bad escapes. */
char *expr_query_decode(const char *s, size_t len, size_t *outlen);

#endif
