/*
 * route — request routing: "METHOD /path/{param}/..." patterns compiled into
 * a table; first match wins. A pattern matches a request path segment by
 * segment; {name} captures exactly one non-empty segment (percent-decoded).
 * Query strings are not part of matching.
 *
 * It knows nothing of mirrors or upstreams: a match returns the index of the
 * route in the order given, and the captures.
 */
#ifndef DW_ROUTE_H
#define DW_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "dw.h"

#define ROUTE_MAX_PARAMS 16

struct route_pattern;

/* Compile "POST /equipment/{id}". The method is an HTTP token, the path
 * starts with '/', capture names are [A-Za-z_][A-Za-z0-9_]* and unique.
 * Returns NULL with err set on a malformed pattern. */
struct route_pattern *route_pattern_compile(const char *match, struct dw_err *err);
void route_pattern_free(struct route_pattern *p);
const char *route_pattern_method(const struct route_pattern *p);
size_t route_pattern_nparams(const struct route_pattern *p);
const char *route_pattern_param(const struct route_pattern *p, size_t i);
/* Two patterns conflict when some request would match both with the same
 * method and the same shape (same literal segments, captures in the same
 * places): the second could never match. */
bool route_pattern_conflicts(const struct route_pattern *a, const struct route_pattern *b);

/* Captures of one match. values are malloc'd; route_params_clear frees them. */
struct route_params {
	size_t n;
	const char *names[ROUTE_MAX_PARAMS]; /* point into the pattern */
	char *values[ROUTE_MAX_PARAMS];	     /* owned, percent-decoded */
};
void route_params_clear(struct route_params *rp);

/* Match one pattern against a method and a path (no query). On a match fills
 * rp (may be NULL) and returns true. A segment that does not percent-decode
 * cleanly does not match. */
bool route_pattern_match(const struct route_pattern *p, const char *method, size_t method_len,
			 const char *path, size_t path_len, struct route_params *rp);

#endif
