/*
 * exchange.c — buffered HTTP/1.1 exchanges on pooled upstream connections
 * (exchange.h): write requests, read their answers whole and in order,
 * and end each exchange exactly once.
 *
 * A connection ends one of four ways (xconn_break): cleanly (an answer said
 * Connection: close with more exchanges behind it: those were not read and
 * may go again), broken (reset, EOF, an invalid answer: the one being
 * answered fails, unless a reused connection closed before any byte — then
 * it may go again once — and the ones behind it may go again), timed out or
 * never connected (all of them end so). Each break settles or hands back
 * every exchange it carried, so the owner's resends always end.
 */
#include "exchange.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "pool.h"

#define XCHG_MAX_HEAD 65536

struct xloop {
	struct event_base *base;
	struct pool_set *pools;
	void (*kick)(void *arg);
	void *kick_arg;
	struct event *flush_ev; /* kick == NULL */
	TAILQ_HEAD(, xconn) dirty;
	char fail[300];
};

TAILQ_HEAD(xchg_list, xchg);

enum xconn_end { XC_BROKEN, XC_TIMED_OUT, XC_CONNECT_FAILED, XC_CLOSED_CLEANLY };

static void xconn_break(struct xconn *c, const char *why, enum xconn_end how);

void xchg_init(struct xchg *x)
{
	memset(x, 0, offsetof(struct xchg, head)); /* head: emptied when it ended */
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	xloop_flush(arg);
}

struct xloop *xloop_new(struct event_base *base, struct pool_set *pools,
			void (*kick)(void *arg), void *arg)
{
	struct xloop *xl = dw_calloc(1, sizeof(*xl));

	xl->base = base;
	xl->pools = pools;
	xl->kick = kick;
	xl->kick_arg = arg;
	if (!kick)
		xl->flush_ev = event_new(base, -1, 0, flush_cb, xl);
	TAILQ_INIT(&xl->dirty);
	return xl;
}

void xloop_free(struct xloop *xl)
{
	if (!xl)
		return;
	if (xl->flush_ev)
		event_free(xl->flush_ev);
	free(xl);
}

const char *xloop_failure(const struct xloop *xl)
{
	return xl->fail;
}

void xloop_flush(struct xloop *xl)
{
	struct xconn *c;

	while ((c = TAILQ_FIRST(&xl->dirty))) {
		TAILQ_REMOVE(&xl->dirty, c, dlink);
		c->dirty = false;
		upconn_flush(c->uc);
	}
}

static void mark_dirty(struct xconn *c)
{
	struct xloop *xl = c->xl;

	if (c->dirty)
		return;
	c->dirty = true;
	TAILQ_INSERT_TAIL(&xl->dirty, c, dlink);
	if (xl->kick)
		xl->kick(xl->kick_arg);
	else
		event_active(xl->flush_ev, EV_TIMEOUT, 0);
}

static void write_one(struct xconn *c, struct xchg *x)
{
	http_scanner_init(&x->scan);
	x->write(x, bufferevent_get_output(upconn_bev(c->uc)));
	mark_dirty(c);
}

/* Forget c: back to the pool when keep, else closed. No callback. */
static void xconn_drop(struct xconn *c, bool keep)
{
	if (c->dirty)
		TAILQ_REMOVE(&c->xl->dirty, c, dlink);
	if (c->uc)
		upconn_release(c->uc, keep && c->started);
	config_unref(c->cfg);
	free(c);
}

/* c ends: tell its owner, then forget it. */
static void xconn_end(struct xconn *c, bool keep)
{
	if (c->gone)
		c->gone(c);
	xconn_drop(c, keep);
}

void xconn_free(struct xconn *c)
{
	struct xchg *x;

	if (!c)
		return;
	while ((x = TAILQ_FIRST(&c->fifo))) {
		TAILQ_REMOVE(&c->fifo, x, flink);
		x->c = NULL;
	}
	xconn_drop(c, false);
}

/* x is off its connection: empty its head, then tell its owner. */
static void xchg_end(struct xchg *x, enum xchg_end how, const char *why)
{
	x->c = NULL;
	if (how != XCHG_ANSWERED)
		x->status = 0;
	http_head_clear(&x->head);
	x->done(x, how, why);
}

static void excerpt_emit(void *arg, const char *p, size_t n)
{
	struct xchg *x = arg;
	size_t room = XCHG_EXCERPT - x->excerpt_len;

	if (n > room)
		n = room;
	for (size_t i = 0; i < n; i++) /* keep a log line one line */
		x->excerpt[x->excerpt_len++] = (p[i] == '\n' || p[i] == '\r') ? ' ' : p[i];
	x->excerpt[x->excerpt_len] = '\0';
}

static void keep_emit(void *arg, const char *p, size_t n)
{
	struct xchg *x = arg;

	evbuffer_add(x->body, p, n);
}

/* Take n body bytes from in (plain framing). */
static void body_take(struct xchg *x, struct evbuffer *in, size_t n)
{
	if (x->keep == XBODY_KEEP) {
		evbuffer_remove_buffer(in, x->body, n);
		return;
	}
	if (x->excerpt_len < XCHG_EXCERPT) {
		char tmp[XCHG_EXCERPT];
		size_t want = XCHG_EXCERPT - x->excerpt_len;
		ev_ssize_t got = evbuffer_copyout(in, tmp, n < want ? n : want);

		if (got > 0)
			excerpt_emit(x, tmp, (size_t)got);
	}
	evbuffer_drain(in, n);
}

/* Whether the kept body is still within its bounds (before: its length
 * before the last bytes). */
static bool body_within(struct xchg *x, size_t before)
{
	size_t now;

	if (x->keep != XBODY_KEEP)
		return true;
	now = evbuffer_get_length(x->body);
	if (x->body_max && now > x->body_max)
		return false;
	return !x->admit || now == before || x->admit(x, now - before);
}

/* The head exchange's answer is whole: end it, and keep the connection
 * going (or let it go when nothing is left on it). Returns false when c is
 * gone. */
static bool xconn_answered(struct xconn *c, struct xchg *x)
{
	bool keep = http_keep_alive(&x->head) && x->kind != HTTP_BODY_UNTIL_CLOSE;

	TAILQ_REMOVE(&c->fifo, x, flink);
	c->depth--;
	if (!keep)
		c->closing = true;
	xchg_end(x, XCHG_ANSWERED, NULL); /* may send more, on c too */
	if (c->closing && !TAILQ_EMPTY(&c->fifo)) {
		/* The upstream closes after this answer: the rest were not read. */
		xconn_break(c, "upstream closed the connection", XC_CLOSED_CLEANLY);
		return false;
	}
	if (TAILQ_EMPTY(&c->fifo)) {
		xconn_end(c, !c->closing);
		return false;
	}
	return true;
}

/* x's answer outgrew its bound: the rest of it is not read, so c cannot
 * carry another answer; those behind x may go again. */
static void xconn_too_large(struct xconn *c, struct xchg *x)
{
	char msg[300];

	snprintf(msg, sizeof(msg), "upstream \"%s\": answer too large", c->up->name);
	TAILQ_REMOVE(&c->fifo, x, flink);
	c->depth--;
	xconn_break(c, msg, XC_CLOSED_CLEANLY);
	xchg_end(x, XCHG_TOO_LARGE, msg);
}

/* Parse answers for c's exchanges, in order. Returns when c is gone or more
 * bytes are needed. */
static void read_cb(struct bufferevent *bev, void *arg)
{
	struct xconn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct dw_err err = {""};
	char msg[600];

	c->got_bytes = true;
	for (;;) {
		struct xchg *x = TAILQ_FIRST(&c->fifo);
		size_t len = evbuffer_get_length(in), before;

		if (len == 0)
			return;
		if (!x) {
			xconn_break(c, "upstream sent bytes with no request outstanding", XC_BROKEN);
			return;
		}
		if (!x->head_done) {
			size_t n = len < XCHG_MAX_HEAD + 4096 ? len : XCHG_MAX_HEAD + 4096;
			size_t skip = 0, hl = 0;
			int status = 0, rc;
			const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);

			rc = http_scan_head(&x->scan, p, n, XCHG_MAX_HEAD, &skip, &hl, &status, &err);
			if (rc == HTTP_INCOMPLETE)
				return;
			if (rc == HTTP_OK)
				rc = http_parse_response(&x->head, p + skip, hl, &status, &err);
			if (rc != HTTP_OK) {
				snprintf(msg, sizeof(msg), "upstream \"%s\": invalid response: %s",
					 c->up->name, err.msg);
				xconn_break(c, msg, XC_BROKEN);
				return;
			}
			evbuffer_drain(in, skip + hl);
			http_scanner_init(&x->scan);
			if (x->head.status < 200) { /* interim */
				http_head_clear(&x->head);
				continue;
			}
			x->head_done = true;
			x->status = x->head.status;
			x->kind = http_response_body_kind(&x->head, x->method);
			x->left = x->head.content_length;
			if (x->kind == HTTP_BODY_CHUNKED) {
				http_chunked_init(&x->chunk, XCHG_MAX_HEAD);
				if (x->keep == XBODY_KEEP && x->body_max)
					http_chunked_limit(&x->chunk, x->body_max);
			}
			len = evbuffer_get_length(in);
		}
		before = x->keep == XBODY_KEEP ? evbuffer_get_length(x->body) : 0;
		switch (x->kind) {
		case HTTP_BODY_NONE:
			break;
		case HTTP_BODY_LENGTH:
			if ((uint64_t)x->left < len)
				len = (size_t)x->left;
			body_take(x, in, len);
			x->left -= (int64_t)len;
			if (!body_within(x, before))
				goto too_large;
			if (x->left > 0)
				return;
			break;
		case HTTP_BODY_CHUNKED: {
			size_t used = 0;
			int rc;

			if (len == 0)
				return;
			rc = http_chunked_decode(&x->chunk,
						 (const char *)evbuffer_pullup(in, (ev_ssize_t)len),
						 len, &used,
						 x->keep == XBODY_KEEP ? keep_emit : excerpt_emit, x,
						 &err);
			evbuffer_drain(in, used);
			if (!body_within(x, before))
				goto too_large;
			if (rc == HTTP_ERROR) {
				snprintf(msg, sizeof(msg),
					 "upstream \"%s\": invalid chunked response: %s",
					 c->up->name, err.msg);
				xconn_break(c, msg, XC_BROKEN);
				return;
			}
			if (rc != HTTP_OK)
				return;
			break;
		}
		case HTTP_BODY_UNTIL_CLOSE:
			body_take(x, in, len);
			if (!body_within(x, before))
				goto too_large;
			return; /* whole at EOF */
		}
		/* The head's answer is whole; the next one's may follow. */
		if (!xconn_answered(c, x))
			return;
	}
too_large:
	xconn_too_large(c, TAILQ_FIRST(&c->fifo));
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct xconn *c = arg;
	struct xchg *x = TAILQ_FIRST(&c->fifo);
	char msg[300];
	int e;

	(void)bev;
	if ((what & BEV_EVENT_EOF) && x && x->head_done && x->kind == HTTP_BODY_UNTIL_CLOSE) {
		c->closing = true;
		(void)xconn_answered(c, x);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		snprintf(msg, sizeof(msg), "upstream \"%s\" timed out after %d ms", c->up->name,
			 c->up->timeout_ms);
		xconn_break(c, msg, XC_TIMED_OUT);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		snprintf(msg, sizeof(msg), "upstream \"%s\" closed the connection%s", c->up->name,
			 x && x->head_done ? " mid-answer" : "");
	} else {
		e = EVUTIL_SOCKET_ERROR();
		snprintf(msg, sizeof(msg), "upstream \"%s\": %s", c->up->name,
			 strerror(e ? e : ECONNRESET));
	}
	xconn_break(c, msg, XC_BROKEN);
}

static void xconn_start(struct xconn *c)
{
	struct xchg *x;

	c->started = true;
	upconn_begin(c->uc);
	upconn_read(c->uc, read_cb, event_cb, c, c->up->timeout_ms);
	TAILQ_FOREACH(x, &c->fifo, flink)
		write_one(c, x);
}

static void ready_cb(struct upconn *uc, int error, void *arg)
{
	struct xconn *c = arg;
	char msg[512];

	if (error) {
		const char *tls = upconn_failure(uc);

		snprintf(msg, sizeof(msg), "upstream \"%s\" (%s:%d): %s%s", c->up->name,
			 c->up->host, c->up->port, tls ? "" : "connect: ",
			 tls ? tls : error == ETIMEDOUT ? "timed out" : strerror(error));
		xconn_break(c, msg, XC_CONNECT_FAILED);
		return;
	}
	c->connected = true;
	if (!TAILQ_EMPTY(&c->fifo))
		xconn_start(c);
}

static struct xconn *open_conn(struct xloop *xl, struct dw_config *cfg,
			       const struct dw_upstream *up, bool fresh, xconn_gone_fn gone,
			       void *owner)
{
	struct xconn *c = dw_calloc(1, sizeof(*c));
	bool connected = false;
	int e = 0;

	c->xl = xl;
	c->up = up;
	c->gone = gone;
	c->owner = owner;
	TAILQ_INIT(&c->fifo);
	c->uc = fresh ? pool_connect(xl->pools, up, ready_cb, c, &e)
		      : pool_get(xl->pools, up, ready_cb, c, &connected, &e);
	if (!c->uc) {
		const char *why = pool_failure(xl->pools);

		if (why)
			snprintf(xl->fail, sizeof(xl->fail), "upstream \"%s\": %s", up->name, why);
		else
			snprintf(xl->fail, sizeof(xl->fail), "upstream \"%s\": connect: %s",
				 up->name, strerror(e));
		free(c);
		return NULL;
	}
	c->cfg = config_ref(cfg);
	c->connected = connected; /* else ready_cb starts it */
	return c;
}

struct xconn *xconn_open(struct xloop *xl, struct dw_config *cfg, const struct dw_upstream *up,
			 xconn_gone_fn gone, void *owner)
{
	return open_conn(xl, cfg, up, false, gone, owner);
}

void xconn_send(struct xconn *c, struct xchg *x)
{
	x->c = c;
	TAILQ_INSERT_TAIL(&c->fifo, x, flink);
	c->depth++;
	if (c->started)
		write_one(c, x);
	else if (c->connected)
		xconn_start(c); /* a pooled connection: set it up (writes x too) */
}

static int solo_start(struct xloop *xl, struct dw_config *cfg, const struct dw_upstream *up,
		      struct xchg *x, bool fresh)
{
	struct xconn *c = open_conn(xl, cfg, up, fresh, NULL, NULL);

	if (!c)
		return -1;
	c->solo = true;
	xconn_send(c, x);
	return 0;
}

int xchg_start(struct xloop *xl, struct dw_config *cfg, const struct dw_upstream *up,
	       struct xchg *x)
{
	return solo_start(xl, cfg, up, x, false);
}

void xchg_cancel(struct xchg *x)
{
	struct xconn *c = x->c;

	if (!c)
		return;
	if (c->solo) {
		xconn_free(c);
		return;
	}
	TAILQ_REMOVE(&c->fifo, x, flink);
	c->depth--;
	x->c = NULL;
	http_head_clear(&x->head);
}

/*
 * c ends with exchanges on it (see the top of the file). The connection is
 * let go first, so what the callbacks send goes elsewhere; the exchanges
 * are then ended in their order, the one being answered last when it failed
 * (the ones behind it go again before its failure moves anything).
 */
static void xconn_break(struct xconn *c, const char *why, enum xconn_end how)
{
	struct xchg_list cut;
	struct xchg *x, *head = NULL;
	enum xchg_end head_how = XCHG_FAILED, rest_how;
	bool quiet = c->uc && c->started && upconn_reused(c->uc) && !c->got_bytes;
	bool solo = c->solo;
	struct xloop *xl = c->xl;
	struct dw_config *cfg = config_ref(c->cfg);
	const struct dw_upstream *up = c->up;

	TAILQ_INIT(&cut);
	TAILQ_CONCAT(&cut, &c->fifo, flink);
	c->depth = 0;
	c->closing = true;
	xconn_end(c, false);

	rest_how = how == XC_CONNECT_FAILED ? XCHG_CONNECT_FAILED
		   : how == XC_TIMED_OUT    ? XCHG_TIMED_OUT
					    : XCHG_NOT_TAKEN;
	if (how == XC_BROKEN && (head = TAILQ_FIRST(&cut))) {
		TAILQ_REMOVE(&cut, head, flink);
		if (quiet && head->resend_ok && !head->retried) {
			head->retried = true; /* closed while it was idle: once more */
			head_how = XCHG_NOT_TAKEN;
		}
	}
	while ((x = TAILQ_FIRST(&cut))) {
		TAILQ_REMOVE(&cut, x, flink);
		xchg_end(x, rest_how, why);
	}
	if (head && head_how == XCHG_NOT_TAKEN && solo) {
		/* Its own connection: send it again on a new one here. */
		head->c = NULL;
		http_head_clear(&head->head);
		head->head_done = false;
		if (solo_start(xl, cfg, up, head, true) < 0)
			xchg_end(head, XCHG_CONNECT_FAILED, xl->fail);
	} else if (head) {
		xchg_end(head, head_how, why);
	}
	config_unref(cfg);
}
