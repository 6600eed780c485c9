/*
 * shadow.c — the other side of a shadowed read (shadow.h): one request on a
 * pooled upstream connection (pool.c: the same pools, connect, TLS, name
 * resolution and idle reuse as the proxy's), its answer parsed with
 * http_parse (the proxy's head scanner and chunked decoder), mapped with the
 * route's `response` (expr) and compared with jsoncmp.
 *
 * States of a shadow: its own exchange (sending -> reading -> settled: an
 * answer or an error) and the served side's outcome (unknown -> known); it
 * ends when both are settled, or at once when the served side's outcome
 * says there is nothing to compare (then the exchange is cut: its
 * connection is closed, not pooled).
 */
#include "shadow.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"
#include "route.h"
#include "shadowcmp.h"

#define SHADOW_MAX_HEAD 65536
#define SHADOW_PATHS 8 /* differing JSON paths in one log line */

struct shadow {
	TAILQ_ENTRY(shadow) link;
	struct worker *w;
	struct dw_config *cfg;
	const struct dw_route *route;
	int upi;
	bool to_new;
	enum http_method method;
	struct upconn *up;
	struct evbuffer *request; /* until sent */
	struct http_scanner scan;
	struct http_head head;
	bool head_done;
	enum http_body_kind kind;
	int64_t left;
	struct http_chunked chunk;
	struct evbuffer *body; /* the shadow side's decoded answer */
	int status;
	/* settled: its exchange is over; err says why it failed (NULL: answered) */
	bool settled;
	const char *err;
	enum shadow_result forced; /* SHADOW_NRESULTS: none */
	bool primary_in;
	int pstatus;
	char *pbody;
	size_t plen;
	size_t bytes; /* what it holds against the worker's bound */
	/* the client's request, for the mapping and the log line */
	size_t npath;
	const char *names[ROUTE_MAX_PARAMS];
	char *values[ROUTE_MAX_PARAMS];
	char *query;
	size_t query_len;
	char *tenant;
	char *path;
	char reqid[72];
};

struct shadow_set {
	TAILQ_HEAD(, shadow) list;
	int n;
	size_t bytes;
};

static struct shadow_set *set_of(struct worker *w)
{
	if (!w->shadows) {
		w->shadows = dw_calloc(1, sizeof(*w->shadows));
		TAILQ_INIT(&w->shadows->list);
	}
	return w->shadows;
}

static void count(const struct shadow *s, enum shadow_result r)
{
	if (s->route->read->state)
		readstate_shadow(s->route->read->state, r);
}

static char *dup_n(const char *p, size_t n)
{
	char *d = dw_malloc(n + 1);

	memcpy(d, p, n);
	d[n] = '\0';
	return d;
}

/* Hold n more bytes; false past the worker's bound. */
static bool hold_bytes(struct shadow *s, size_t n)
{
	struct shadow_set *ss = s->w->shadows;

	if (ss->bytes + n > SHADOW_MAX_BYTES)
		return false;
	ss->bytes += n;
	s->bytes += n;
	return true;
}

static void shadow_free(struct shadow *s)
{
	struct shadow_set *ss = s->w->shadows;

	TAILQ_REMOVE(&ss->list, s, link);
	ss->n--;
	ss->bytes -= s->bytes;
	if (s->up)
		upconn_release(s->up, false);
	if (s->request)
		evbuffer_free(s->request);
	if (s->body)
		evbuffer_free(s->body);
	http_head_clear(&s->head);
	for (size_t i = 0; i < s->npath; i++)
		free(s->values[i]);
	free(s->query);
	free(s->tenant);
	free(s->path);
	free(s->pbody);
	config_unref(s->cfg);
	free(s);
}

/* Both answers are in: compare them, count, log a mismatch. */
static void compare(struct shadow *s)
{
	const struct dw_read *rd = s->route->read;
	size_t blen = evbuffer_get_length(s->body);
	struct shadow_answer side = { s->status, blen ? (const char *)evbuffer_pullup(s->body, -1)
						      : NULL, blen };
	struct shadow_answer primary = { s->pstatus, s->pbody, s->plen };
	struct expr_ctx ctx;
	char paths[1024], why[600];
	enum shadow_result r;

	memset(&ctx, 0, sizeof(ctx));
	ctx.path_names = s->names;
	ctx.path_values = (const char *const *)s->values;
	ctx.npath = s->npath;
	ctx.query = s->query;
	ctx.query_len = s->query_len;
	ctx.tenant = s->tenant;
	json_arena_begin(&s->w->jarena); /* every value of the verdict is gone by its end */
	r = shadowcmp_judge(rd, s->to_new ? &primary : &side, s->to_new ? &side : &primary,
			    s->to_new, &ctx, SHADOW_PATHS, paths, sizeof(paths), why, sizeof(why));
	json_arena_end(&s->w->jarena);
	count(s, r);
	if (r == SHADOW_MISMATCH) {
		dw_log(DW_LOG_WARN, s->reqid, "shadow mismatch route=%s path=%s differ=%s",
		       s->route->name, s->path, paths);
		/* shadow_mismatches_per_hour -> pause (guards.c) */
		guards_note_shadow_mismatch(&s->cfg->upstreams[rd->upstream]);
	} else if (r == SHADOW_ERROR && dw_log_enabled(DW_LOG_DEBUG)) {
		dw_log(DW_LOG_DEBUG, s->reqid, "shadow error route=%s path=%s: %s", s->route->name,
		       s->path, why);
	}
}

/* Settle when both sides are in (or the outcome is forced). */
static void maybe_end(struct shadow *s)
{
	if (s->forced != SHADOW_NRESULTS) {
		count(s, s->forced);
		shadow_free(s);
		return;
	}
	if (!s->settled || !s->primary_in)
		return;
	if (s->err) {
		count(s, SHADOW_ERROR);
		if (dw_log_enabled(DW_LOG_DEBUG))
			dw_log(DW_LOG_DEBUG, s->reqid, "shadow error route=%s path=%s: %s",
			       s->route->name, s->path, s->err);
	} else {
		compare(s);
	}
	shadow_free(s);
}

/* The shadow side's exchange is over: err NULL = answered; skipped: the
 * answer outgrew the bound. Ends the shadow when the served side is in. */
static void side_settled(struct shadow *s, const char *err, bool reusable, bool skipped)
{
	if (s->up) {
		upconn_release(s->up, reusable && !err && http_keep_alive(&s->head) &&
					      evbuffer_get_length(bufferevent_get_input(
						  upconn_bev(s->up))) == 0);
		s->up = NULL;
	}
	s->settled = true;
	s->err = err;
	if (skipped) {
		s->forced = SHADOW_SKIPPED;
		evbuffer_drain(s->body, evbuffer_get_length(s->body));
		if (!s->primary_in)
			return; /* the proxy still holds it: ends at its report */
	}
	maybe_end(s);
}

static void body_emit(void *arg, const char *p, size_t n)
{
	struct shadow *s = arg;

	evbuffer_add(s->body, p, n);
}

/* Take body bytes; true when the answer is whole. */
static int body_feed(struct shadow *s, struct evbuffer *in, const char **err)
{
	struct dw_err e = { "" };
	size_t n = evbuffer_get_length(in), used = 0, before = evbuffer_get_length(s->body);
	int rc;

	switch (s->kind) {
	case HTTP_BODY_NONE:
		return 1;
	case HTTP_BODY_LENGTH:
		if ((uint64_t)s->left < n)
			n = (size_t)s->left;
		evbuffer_remove_buffer(in, s->body, n);
		s->left -= (int64_t)n;
		rc = s->left == 0;
		break;
	case HTTP_BODY_CHUNKED:
		rc = http_chunked_decode(&s->chunk, (const char *)evbuffer_pullup(in, (ev_ssize_t)n),
					 n, &used, body_emit, s, &e);
		evbuffer_drain(in, used);
		if (rc == HTTP_ERROR) {
			*err = "bad chunked answer";
			return -1;
		}
		rc = rc == HTTP_OK;
		break;
	default: /* until close */
		evbuffer_add_buffer(s->body, in);
		rc = 0;
		break;
	}
	if (evbuffer_get_length(s->body) > s->cfg->limits.max_body_bytes ||
	    !hold_bytes(s, evbuffer_get_length(s->body) - before))
		return -2;
	return rc;
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct shadow *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct dw_err err = { "" };
	const char *why = NULL;
	int rc;

	while (!s->head_done) {
		size_t len = evbuffer_get_length(in), n, skip = 0, hl = 0;
		int status = 0;
		const char *p;

		if (len == 0)
			return;
		n = len < SHADOW_MAX_HEAD + 4096 ? len : SHADOW_MAX_HEAD + 4096;
		p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
		rc = http_scan_head(&s->scan, p, n, SHADOW_MAX_HEAD, &skip, &hl, &status, &err);
		if (rc == HTTP_INCOMPLETE)
			return;
		if (rc == HTTP_OK)
			rc = http_parse_response(&s->head, p + skip, hl, &status, &err);
		if (rc != HTTP_OK) {
			side_settled(s, "invalid answer", false, false);
			return;
		}
		evbuffer_drain(in, skip + hl);
		http_scanner_init(&s->scan);
		if (s->head.status >= 100 && s->head.status < 200) { /* interim */
			http_head_clear(&s->head);
			continue;
		}
		s->head_done = true;
		s->status = s->head.status;
		s->kind = http_response_body_kind(&s->head, s->method);
		s->left = s->head.content_length;
		if (s->kind == HTTP_BODY_CHUNKED) {
			http_chunked_init(&s->chunk, SHADOW_MAX_HEAD);
			http_chunked_limit(&s->chunk, s->cfg->limits.max_body_bytes);
		}
	}
	rc = body_feed(s, in, &why);
	if (rc == -2)
		side_settled(s, NULL, false, true);
	else if (rc < 0)
		side_settled(s, why, false, false);
	else if (rc == 1)
		side_settled(s, NULL, s->kind != HTTP_BODY_UNTIL_CLOSE, false);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct shadow *s = arg;

	(void)bev;
	if ((what & BEV_EVENT_EOF) && s->head_done && s->kind == HTTP_BODY_UNTIL_CLOSE) {
		side_settled(s, NULL, false, false);
		return;
	}
	side_settled(s,
		     (what & BEV_EVENT_TIMEOUT) ? "timed out"
		     : (what & BEV_EVENT_EOF)	 ? "connection closed before the answer was whole"
						 : "connection failed",
		     false, false);
}

static void send_it(struct shadow *s)
{
	const struct dw_upstream *up = &s->cfg->upstreams[s->upi];

	upconn_begin(s->up);
	evbuffer_add_buffer(bufferevent_get_output(upconn_bev(s->up)), s->request);
	evbuffer_free(s->request);
	s->request = NULL;
	http_scanner_init(&s->scan);
	upconn_read(s->up, read_cb, event_cb, s, up->timeout_ms);
	upconn_flush(s->up);
}

static void ready_cb(struct upconn *uc, int error, void *arg)
{
	struct shadow *s = arg;

	if (error) {
		upconn_release(uc, false);
		s->up = NULL;
		side_settled(s, error == ETIMEDOUT ? "connect timed out" : "connect failed", false,
			     false);
		return;
	}
	send_it(s);
}

struct shadow *shadow_start(struct worker *w, const struct shadow_req *r)
{
	struct shadow_set *ss = set_of(w);
	struct shadow *s;
	bool connected = false;
	int e = 0;

	if (ss->n >= SHADOW_MAX_INFLIGHT || ss->bytes >= SHADOW_MAX_BYTES || !r->route->read) {
		if (r->route->read && r->route->read->state)
			readstate_shadow(r->route->read->state, SHADOW_SKIPPED);
		evbuffer_free(r->request);
		return NULL;
	}
	s = dw_calloc(1, sizeof(*s));
	s->w = w;
	s->cfg = config_ref(r->cfg);
	s->route = r->route;
	s->upi = r->upi;
	s->to_new = r->to_new;
	s->method = r->method;
	s->request = r->request;
	s->body = evbuffer_new();
	s->forced = SHADOW_NRESULTS;
	s->npath = r->npath < ROUTE_MAX_PARAMS ? r->npath : ROUTE_MAX_PARAMS;
	for (size_t i = 0; i < s->npath; i++) {
		s->names[i] = r->path_names[i]; /* point into the route (cfg is held) */
		s->values[i] = dw_strdup(r->path_values[i]);
	}
	if (r->query) {
		s->query = dup_n(r->query, r->query_len);
		s->query_len = r->query_len;
	}
	s->tenant = r->tenant ? dw_strdup(r->tenant) : NULL;
	s->path = dup_n(r->path, r->path_len);
	snprintf(s->reqid, sizeof(s->reqid), "%s", r->reqid);
	TAILQ_INSERT_TAIL(&ss->list, s, link);
	ss->n++;
	s->up = pool_get(w->pools, &s->cfg->upstreams[s->upi], ready_cb, s, &connected, &e);
	if (!s->up) {
		s->settled = true;
		s->err = "cannot connect";
	} else if (connected) {
		send_it(s);
	}
	return s;
}

void shadow_primary(struct shadow *s, int status, const char *body, size_t len,
		    bool body_too_large)
{
	s->primary_in = true;
	s->pstatus = status;
	if (body_too_large || !hold_bytes(s, len)) {
		s->forced = SHADOW_SKIPPED;
	} else {
		s->pbody = dw_malloc(len + 1);
		if (len)
			memcpy(s->pbody, body, len);
		s->pbody[len] = '\0';
		s->plen = len;
	}
	maybe_end(s); /* forced: nothing to compare, the other side's exchange is cut */
}

void shadow_primary_failed(struct shadow *s, const char *why)
{
	(void)why;
	s->primary_in = true;
	s->forced = SHADOW_ERROR;
	maybe_end(s);
}

void shadow_abandon(struct shadow *s)
{
	s->primary_in = true;
	s->forced = SHADOW_SKIPPED;
	maybe_end(s);
}

void shadow_worker_free(struct worker *w)
{
	struct shadow *s, *next;

	if (!w->shadows)
		return;
	for (s = TAILQ_FIRST(&w->shadows->list); s; s = next) {
		next = TAILQ_NEXT(s, link);
		shadow_free(s); /* uncounted: the daemon is going away */
	}
	free(w->shadows);
	w->shadows = NULL;
}
