/*
 * shadow.h — shadow comparison of reads (SPEC §7.3), daemon/ only.
 *
 * A shadowed read goes to both sides: the side its plan chose answers the
 * client as usual (proxy.c); a shadow sends the same request to the other
 * side, off the client's path, in the same worker's loop, over the
 * worker's upstream connection pool (pool.c). Once both answers are whole,
 * the new system's is mapped by the route's `response` and compared with
 * the legacy's by jsoncmp (compare.ignore, compare.unordered); the outcome
 * is counted in dualwrite_shadow_total{route,result}, and a mismatch is
 * logged as one line with the route, the request path and the JSON paths
 * that differ, and reported to the guards (guards_note_shadow_mismatch:
 * too many per hour pause the upstream's ramp).
 *
 * Comparison: a 5xx on either side -> error; both answers 2xx -> as JSON (a
 * body that is not JSON, or an answer that does not map, is an error); the
 * same other status on both sides -> match; different statuses (200 vs 404:
 * a row one side lacks) -> mismatch (path "$status(legacy L, new N)"). A
 * failure to reach the shadow side (connect, timeout, broken answer) is an
 * error; so is a served side that failed (the new system fell back).
 *
 * Bounded: at most SHADOW_MAX_INFLIGHT shadows per worker, holding at most
 * SHADOW_MAX_BYTES of answers between them (and no answer beyond the
 * configured max_body_bytes); past either bound a shadow is not started, or
 * is dropped, and counted skipped. Never queued.
 *
 * Lifetime: a shadow is owned by the worker (its list) from shadow_start to
 * its end; the proxy hands it the served side's outcome exactly once
 * (shadow_primary, shadow_primary_failed or shadow_abandon), after which the
 * proxy forgets the pointer. The shadow ends when it has both answers, or
 * at once when the outcome is known (a failure, an abandon).
 *
 * The mapping of a shadowed new-system answer sees $path, $query and
 * $tenant of the client's request (copied); $header reads nothing (the
 * client's request may be gone by then): a `response` that uses $header is
 * compared as an error.
 */
#ifndef DW_SHADOW_H
#define DW_SHADOW_H

#include <stdbool.h>
#include <stddef.h>

#include "http_parse.h"
#include "worker.h"

#define SHADOW_MAX_INFLIGHT 64
#define SHADOW_MAX_BYTES ((size_t)16 * 1024 * 1024)

struct shadow;

struct shadow_req {
	struct dw_config *cfg;	     /* borrowed; the shadow takes its own reference */
	const struct dw_route *route; /* a read route of cfg */
	int upi;		     /* the side that does not serve: index into cfg->upstreams */
	bool to_new;		     /* that side is the new system (its answer is mapped) */
	enum http_method method;     /* the client's (a HEAD's answer has no body) */
	struct evbuffer *request;    /* the whole request for it; the shadow takes it */
	const char *const *path_names; /* $path, $query, $tenant for the mapping (copied) */
	const char *const *path_values;
	size_t npath;
	const char *query;
	size_t query_len;
	const char *tenant; /* NULL: malformed */
	const char *path;   /* the client's request target, for the log line */
	size_t path_len;
	const char *reqid;
};

/* Start the shadow exchange. Returns NULL (and counts it skipped) past the
 * bound. */
struct shadow *shadow_start(struct worker *w, const struct shadow_req *r);
/* The served side's answer is whole: status and body (body_too_large: it
 * outgrew max_body_bytes, not compared: skipped). body is copied. */
void shadow_primary(struct shadow *s, int status, const char *body, size_t len,
		    bool body_too_large);
/* The served side failed (the new system fell back, an upstream error). */
void shadow_primary_failed(struct shadow *s, const char *why);
/* The client's request ended without an answer to compare (client gone). */
void shadow_abandon(struct shadow *s);
/* End every shadow of the worker (its loop is done). */
void shadow_worker_free(struct worker *w);

#endif
