/*
 * shadow.c — the other side of a shadowed read (shadow.h): one buffered
 * exchange (exchange.h: a pooled upstream connection of the worker's pools,
 * the answer read whole with http_parse, retried once on a new connection
 * when a pooled one was closed under it: a read is safe to send again),
 * mapped with the route's `response` (expr) and compared with jsoncmp.
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

#include "exchange.h"
#include "http_parse.h"
#include "route.h"
#include "shadowcmp.h"

#define SHADOW_PATHS 8 /* differing JSON paths in one log line */

struct shadow {
	TAILQ_ENTRY(shadow) link;
	struct worker *w;
	struct dw_config *cfg;
	const struct dw_route *route;
	int upi;
	bool to_new;
	struct evbuffer *request; /* kept: sent again on a retry */
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
	struct xchg x; /* last: its head is 3 KiB */
};

struct shadow_set {
	TAILQ_HEAD(, shadow) list;
	int n;
	size_t bytes;
	struct xloop *xl; /* the worker's pools, the shadows' exchanges */
};

static struct shadow_set *set_of(struct worker *w)
{
	if (!w->shadows) {
		w->shadows = dw_calloc(1, sizeof(*w->shadows));
		TAILQ_INIT(&w->shadows->list);
		w->shadows->xl = xloop_new(w->base, w->pools, NULL, NULL);
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
	if (!s->settled)
		xchg_cancel(&s->x); /* cut: its connection is closed, not pooled */
	evbuffer_free(s->request);
	evbuffer_free(s->body);
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
static void side_settled(struct shadow *s, const char *err, bool skipped)
{
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

static struct shadow *of_xchg(struct xchg *x)
{
	return (struct shadow *)((char *)x - offsetof(struct shadow, x));
}

static void side_write(struct xchg *x, struct evbuffer *out)
{
	struct shadow *s = of_xchg(x);
	size_t n = evbuffer_get_length(s->request);

	evbuffer_add(out, evbuffer_pullup(s->request, (ev_ssize_t)n), n);
}

static bool side_admit(struct xchg *x, size_t n)
{
	return hold_bytes(of_xchg(x), n);
}

static void side_done(struct xchg *x, enum xchg_end how, const char *why)
{
	struct shadow *s = of_xchg(x);

	switch (how) {
	case XCHG_ANSWERED:
		s->status = x->status;
		side_settled(s, NULL, false);
		break;
	case XCHG_TOO_LARGE:
		side_settled(s, NULL, true);
		break;
	case XCHG_TIMED_OUT:
		side_settled(s, "timed out", false);
		break;
	case XCHG_CONNECT_FAILED:
		side_settled(s, "connect failed", false);
		break;
	default:
		(void)why;
		side_settled(s, "connection failed or invalid answer", false);
		break;
	}
}

struct shadow *shadow_start(struct worker *w, const struct shadow_req *r)
{
	struct shadow_set *ss = set_of(w);
	struct shadow *s;

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
	s->request = r->request;
	s->body = evbuffer_new();
	xchg_init(&s->x);
	s->x.method = r->method;
	s->x.keep = XBODY_KEEP;
	s->x.body = s->body;
	s->x.body_max = s->cfg->limits.max_body_bytes;
	s->x.admit = side_admit;
	s->x.resend_ok = true; /* a read */
	s->x.write = side_write;
	s->x.done = side_done;
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
	if (xchg_start(ss->xl, s->cfg, &s->cfg->upstreams[s->upi], &s->x) < 0) {
		s->settled = true;
		s->err = "cannot connect";
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
	xloop_free(w->shadows->xl);
	free(w->shadows);
	w->shadows = NULL;
}
