/*
 * proxy.c — the life of a client connection: read a request head and its
 * whole body (bounded), forward it to the default upstream (the legacy),
 * stream the answer back with back-pressure, hand a legacy-acknowledged write
 * to the mirror, and go round again for the next (possibly pipelined) request.
 *
 * A read route (SPEC §7.1) asks the plan (plan.h) who answers before the
 * request goes out: the legacy, or the route's new system, whose request
 * takes the route's path. Its non-2xx, a failure before the client saw a
 * byte, or (with `response`) an answer that does not map sends the same
 * request to the legacy when the route falls back (read_new_failed). A
 * mapped answer is read whole into the capture (collect) and sent as one
 * JSON body with its own Content-Length; an unmapped one streams as any.
 *
 * A write route with authority "new" (SPEC §7.5) goes the other way round:
 * to the new system first (its `request` block), whose 2xx answer, mapped by
 * `response`, is held until the reverse mirror to the legacy is journaled
 * (write_new_*); a mirrored write whose authority never answered is recorded
 * as indeterminate (write_indeterminate).
 *
 * One function changes state (conn_set_state) and asserts the transition is
 * legal. One function closes (conn_close); it releases everything but the
 * struct itself, which is freed after the current loop iteration, so a
 * callback chain that closed the connection only has to check for CS_CLOSED
 * before touching it again.
 *
 * States:
 *   IDLE      keep-alive, waiting for the first byte of a request
 *             (deadline: PARK_AFTER_MS, or idle_timeout_ms when shorter)
 *   PARKED    keep-alive and idle for PARK_AFTER_MS: the bufferevent is
 *             freed and one bare read event in struct conn watches the
 *             socket; the first byte (or EOF) brings a new bufferevent and
 *             HEAD, as on a new connection (deadline: the rest of
 *             idle_timeout_ms). A connection whose last answer is still
 *             being written when it parks keeps its bufferevent.
 *   HEAD      reading the request head (deadline: header_timeout_ms)
 *   BODY      reading the request body (deadline: body_timeout_ms)
 *   UPSTREAM  request sent or being sent, waiting for the response head
 *   RESPONSE  streaming the response body to the client
 *   SYNC      answer complete and held until the mirror journal is fsynced
 *   CLOSING   flushing a final answer, then close (deadline: 5 s, so a
 *             client that never reads does not keep us)
 *   CLOSED    released; freed after this loop iteration
 *
 * Deadlines cost no timer per connection: a connection in a state with a
 * deadline (or SYNC's wait) sits in that state's queue, w->stateq[state], in
 * the order it entered the state (c->since). Every connection of a queue has
 * the same timeout, so each queue is in deadline order and one timer per
 * worker, armed at the earliest queue head, serves them all (proxy_deadlines).
 * Timeouts are read from the worker's current configuration when checked, so
 * a reload applies to connections already waiting.
 */
#include <assert.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h> /* ev_read of a TLS connection (conn_tls_kick) */
#include <event2/event_struct.h> /* struct event, embedded in struct conn */
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "http_parse.h"
#include "jsonarena.h"
#include "jsonfast.h"
#include "guard.h"
#include "pgforward.h"
#include "cutstate.h"
#include "plan.h"
#include "shadow.h"
#include "tls.h"
#include "worker.h"

enum cstate {
	CS_IDLE,
	CS_PARKED,
	CS_HEAD,
	CS_BODY,
	CS_UPSTREAM,
	CS_RESPONSE,
	CS_SYNC,
	CS_CLOSING,
	CS_CLOSED
};
static const char *const cstate_names[] = {"idle",     "parked",   "head",    "body",  "upstream",
					   "response", "sync", "closing", "closed"};

/* How the response body is framed towards the client. */
enum out_mode {
	OUT_RAW,	  /* bytes as received (Content-Length or none) */
	OUT_CHUNKED_PASS, /* upstream chunked, forwarded raw to a 1.1 client */
	OUT_DECHUNK,	  /* upstream chunked, decoded for a 1.0 client; close after */
	OUT_ENCODE,	  /* upstream until-close, chunk-encoded for a 1.1 client */
};

#define OUT_HIGH_WATER ((size_t)256 * 1024) /* pause the upstream above this */
#define OUT_LOW_WATER ((size_t)64 * 1024)  /* resume it at or below this */
#define RESP_MAX_HEAD 65536
#define IN_HIGH_SLACK 65536 /* input beyond max_header_bytes before reading pauses */
#define CLOSING_TIMEOUT_MS 5000 /* flushing a final answer */
#define SEND_TIMEOUT_MS 60000 /* a client that takes none of its answer (as nginx send_timeout) */
/* Idle this long, a keep-alive connection gives up its bufferevent (~1 KB):
 * long enough that a busy client never pays for re-creating it. */
#define PARK_AFTER_MS 1000
#define DEADLINE_SLACK_US 1000	/* what passes within this is due now */
#define TLS_RECORD_MAX 16384	/* the most plaintext one TLS record carries */

/*
 * Everything that belongs to one request in progress. Allocated when its
 * first byte arrives and freed when it is answered, so an idle keep-alive
 * connection costs only struct conn and its bufferevent.
 */
struct exchange {
	struct exchange *next_free; /* worker->xfree */
	struct evbuffer *body;	    /* the whole (decoded) request body; kept when cached */
	/* From here to req, zeroed for every request. */
	struct dw_config *cfg; /* reference held for the request's life */
	int64_t t_start;
	struct evbuffer *held;	  /* the held answer */
	struct evbuffer *capture; /* decoded response body for $response */
	int64_t body_left;	  /* Content-Length bytes still to read */
	int64_t rleft;		  /* response Content-Length bytes still to come */
	struct http_chunked chunk;
	struct http_chunked rchunk;
	struct http_scanner scan; /* the request head */
	struct http_scanner rscan;
	const struct dw_route *route;
	struct route_params params;
	struct upconn *up;
	int upi;		  /* who answers: index into cfg->upstreams */
	struct read_plan plan;	  /* a read route's decision (planned) */
	char *new_target;	  /* the new system's path and query, rendered */
	struct shadow *shadow;	  /* the read's shadow, until it is told the outcome */
	char *new_method;	  /* authority "new": the request block's method; NULL: the client's */
	struct evbuffer *new_body; /* authority "new": the mapped body; NULL: the client's */
	enum http_body_kind rkind;
	enum out_mode mode;
	int status;
	char reqid[72];
	bool keep_alive;
	bool body_chunked;
	bool mirrored;	     /* the mirror was captured (journaled) */
	bool up_retried;
	bool up_paused;
	bool resp_head_done;
	bool close_after;
	bool hold;	     /* answer held until the mirror is journaled */
	bool capture_overflow;
	bool planned;	     /* a read route's plan is made (once per request) */
	bool on_new;	     /* the current attempt is the new system's */
	bool collect;	     /* the new system's 2xx is read whole, to be mapped */
	bool read_counted;   /* dualwrite_read_total has this read */
	bool guard_noted;    /* the guard's window has this read's outcome */
	int64_t t_new;	     /* monotonic us: the new system's attempt began */
	bool wnew;	     /* a write whose authority is the new system (SPEC §7.5): upi is it */
	bool wsent;	     /* a mirrored write's request went to its authority (legacy, or the
			      * new system): no answer now means an unknown outcome */
	uint64_t intent;     /* its write-ahead intent (mirror_intent), until the outcome */
	/* Last: 3 KiB each, reset by http_head_clear rather than memset. */
	struct http_head req;
	struct http_head resp;
};

/* Exchanges a worker keeps for reuse (7 KiB each): one request after
 * another on a busy worker then costs no malloc/free of them. */
#define XFREE_MAX 64

struct conn {
	TAILQ_ENTRY(conn) link;	 /* worker->conns */
	TAILQ_ENTRY(conn) qlink; /* worker->stateq[state] when state_queued(state) */
	struct worker *w;
	struct bufferevent *bev; /* owns the socket; NULL while PARKED */
	struct evbuffer *tls_out; /* TLS: what is written to the client (conn_out) */
	struct exchange *x;	 /* NULL between requests */
	int64_t since;		 /* entered its queued state (monotonic us) */
	evutil_socket_t fd;	 /* owned here while bev is NULL */
	enum cstate state;
	bool got_bytes;	  /* any byte of the current request received */
	bool client_gone; /* reset mid-exchange: finish for the mirror, then close */
	bool rd_paused;	  /* rd_ev off: the input is at its bound (conn_read_resume) */
	bool rd_done;	  /* rd_ev off for good: EOF, error, closing */
	bool rd_big;	  /* the last read filled its reservation: reserve more */
	bool tls;	  /* an OpenSSL bufferevent does the socket I/O (conn_attach_tls) */
	bool tls_ready;	  /* its handshake is done */
	/* The client's address, formatted only when needed (conn_peer). */
	unsigned char peer_af; /* AF_INET, AF_INET6 or 0: unknown */
	unsigned char peer_addr[16];
	struct event rd_ev; /* the read path, pending from accept to close (conn_readable_cb) */
	TAILQ_ENTRY(conn) flink; /* worker->flushq while flush_queued */
	unsigned char flush_queued; /* FLUSH_* to do at the end of the iteration */
};
/* Where the answer to the client is written: the bufferevent's output, or
 * for TLS a buffer of our own that conn_flush_tls empties (writing to the
 * OpenSSL bufferevent's output arms its write event at once). */
static inline struct evbuffer *conn_out(const struct conn *c)
{
	return c->tls ? c->tls_out : bufferevent_get_output(c->bev);
}

#define FLUSH_CLIENT 1 /* the answer */
#define FLUSH_UP 2     /* the request, to c->x->up */

static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_tls_read_cb(struct bufferevent *bev, void *arg);
static size_t conn_in_high(const struct conn *c);
static void conn_read_stop(struct conn *c);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void up_read_cb(struct bufferevent *bev, void *arg);
static void up_event_cb(struct bufferevent *bev, short what, void *arg);
static void on_input(struct conn *c);
static void dispatch(struct conn *c);
static void read_plan_request(struct conn *c);
static bool read_new_failed(struct conn *c, const char *why);
static void read_guard_note(struct conn *c, bool failed);
static bool write_new_plan(struct conn *c);
static bool write_new_head(struct conn *c);
static void write_new_finish(struct conn *c);
static void write_new_unmappable(struct conn *c, const char *why);
static void write_indeterminate(struct conn *c, const char *why);

/* ---------------------------------------------------------------- state */

_Static_assert(CS_CLOSED <= PROXY_QUEUES, "a queue per state");

/* The deadline of a state, from entering it; -1: none. */
static int64_t state_timeout_us(const struct worker *w, enum cstate s)
{
	const struct dw_limits *lim = &w->cfg->limits;

	switch (s) {
	case CS_IDLE: /* then PARKED, or closed */
		return (int64_t)(lim->idle_timeout_ms < PARK_AFTER_MS ? lim->idle_timeout_ms
								     : PARK_AFTER_MS) * 1000;
	case CS_PARKED: /* the rest of idle_timeout_ms */
		return (int64_t)(lim->idle_timeout_ms > PARK_AFTER_MS
				     ? lim->idle_timeout_ms - PARK_AFTER_MS
				     : 0) * 1000;
	case CS_HEAD:
		return (int64_t)lim->header_timeout_ms * 1000;
	case CS_BODY:
		return (int64_t)lim->body_timeout_ms * 1000;
	case CS_CLOSING:
		return (int64_t)CLOSING_TIMEOUT_MS * 1000;
	default:
		return -1;
	}
}

/* Does a connection in state s wait in w->stateq[s]? */
static bool state_queued(const struct worker *w, enum cstate s)
{
	return s == CS_SYNC || state_timeout_us(w, s) >= 0;
}

/* Make the worker's timer fire no later than at. */
static void deadline_arm(struct worker *w, int64_t at)
{
	int64_t d;
	struct timeval tv;

	if (w->deadline_at && w->deadline_at <= at)
		return;
	d = at - dw_now_us();
	if (d < 0)
		d = 0;
	tv.tv_sec = (time_t)(d / 1000000);
	tv.tv_usec = (suseconds_t)(d % 1000000);
	evtimer_add(w->deadline_ev, &tv);
	w->deadline_at = at;
}

/* Append c to the queue of the state it is in. */
static void conn_enqueue(struct conn *c)
{
	struct worker *w = c->w;
	int64_t t;

	if (!state_queued(w, c->state))
		return;
	c->since = dw_now_us();
	TAILQ_INSERT_TAIL(&w->stateq[c->state], c, qlink);
	t = state_timeout_us(w, c->state);
	/* Behind the head, c's deadline is no earlier than the armed one. */
	if (t >= 0 && TAILQ_FIRST(&w->stateq[c->state]) == c)
		deadline_arm(w, c->since + t);
}

static void conn_set_state(struct conn *c, enum cstate to)
{
	static const unsigned legal[] = {
	    [CS_IDLE] = 1u << CS_PARKED | 1u << CS_HEAD | 1u << CS_CLOSING | 1u << CS_CLOSED,
	    [CS_PARKED] = 1u << CS_HEAD | 1u << CS_CLOSED,
	    [CS_HEAD] = 1u << CS_BODY | 1u << CS_UPSTREAM | 1u << CS_CLOSING | 1u << CS_CLOSED,
	    [CS_BODY] = 1u << CS_UPSTREAM | 1u << CS_CLOSING | 1u << CS_CLOSED,
	    [CS_UPSTREAM] = 1u << CS_RESPONSE | 1u << CS_UPSTREAM | 1u << CS_CLOSING |
			    1u << CS_CLOSED | 1u << CS_IDLE,
	    [CS_RESPONSE] = 1u << CS_IDLE | 1u << CS_SYNC | 1u << CS_CLOSING | 1u << CS_CLOSED,
	    [CS_SYNC] = 1u << CS_RESPONSE | 1u << CS_CLOSING | 1u << CS_CLOSED,
	    [CS_CLOSING] = 1u << CS_CLOSED,
	    [CS_CLOSED] = 0,
	};

	if (!(legal[c->state] & (1u << to))) {
		dw_log(DW_LOG_ERROR, c->x && c->x->reqid[0] ? c->x->reqid : NULL,
		       "illegal connection state change %s -> %s", cstate_names[c->state],
		       cstate_names[to]);
		assert(!"illegal connection state change");
	}
	if (state_queued(c->w, c->state))
		TAILQ_REMOVE(&c->w->stateq[c->state], c, qlink);
	c->state = to;
	conn_enqueue(c);
}

/* Start c's deadline over in the state it is in. */
static void conn_restart_clock(struct conn *c)
{
	if (!state_queued(c->w, c->state))
		return;
	TAILQ_REMOVE(&c->w->stateq[c->state], c, qlink);
	conn_enqueue(c);
}

static struct exchange *exchange_new(struct worker *w)
{
	struct exchange *x = w->xfree;

	if (x) { /* heads cleared and body emptied by exchange_end */
		w->xfree = x->next_free;
		w->nxfree--;
		memset(&x->cfg, 0, offsetof(struct exchange, req) - offsetof(struct exchange, cfg));
	} else {
		x = dw_calloc(1, sizeof(*x));
		x->body = evbuffer_new();
	}
	x->req.content_length = -1;
	http_scanner_init(&x->scan);
	http_scanner_init(&x->rscan);
	return x;
}

/* Free everything that belonged to the request, so the next starts clean. */
static void exchange_end(struct conn *c)
{
	struct exchange *x = c->x;

	c->got_bytes = false;
	if (!x)
		return;
	c->x = NULL;
	if (x->intent && !c->w->aborting) {
		/* The outcome is known (an answer, or an indeterminate write
		 * recorded as such): closed at the end of this iteration. When
		 * the stop aborts the exchange it stays open: the next start
		 * settles it as a write of unknown outcome. */
		mirror_intent_close(c->w->mirror, x->intent);
		if (TAILQ_EMPTY(&c->w->flushq))
			event_active(c->w->flush_ev, EV_TIMEOUT, 0);
	}
	x->intent = 0;
	if (x->shadow)
		shadow_abandon(x->shadow); /* no answer to compare */
	if (x->up)
		upconn_release(x->up, false);
	http_head_clear(&x->req);
	http_head_clear(&x->resp);
	route_params_clear(&x->params);
	if (x->held)
		evbuffer_free(x->held);
	if (x->capture)
		evbuffer_free(x->capture);
	free(x->new_target);
	free(x->new_method);
	if (x->new_body)
		evbuffer_free(x->new_body);
	if (x->cfg)
		config_unref(x->cfg);
	if (c->w->nxfree < XFREE_MAX) {
		evbuffer_drain(x->body, evbuffer_get_length(x->body));
		x->next_free = c->w->xfree;
		c->w->xfree = x;
		c->w->nxfree++;
		return;
	}
	evbuffer_free(x->body);
	free(x);
}

void proxy_worker_free(struct worker *w)
{
	struct exchange *x;

	shadow_worker_free(w);
	json_arena_free(&w->jarena);
	while ((x = w->xfree)) {
		w->xfree = x->next_free;
		evbuffer_free(x->body);
		free(x);
	}
	w->nxfree = 0;
}

/* The client's address as text, NUL-terminated, into buf (len >= 2). */
static const char *conn_peer(const struct conn *c, char *buf, size_t len)
{
	struct dw_text t;

	dw_text_init(&t, buf, len - 1);
	dw_text_addr(&t, c->peer_af, c->peer_addr);
	buf[t.n] = '\0';
	return buf;
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	free(arg);
}

/* The one close path. Logs one line for an abnormal close. */
static void conn_close(struct conn *c, const char *reason)
{
	struct worker *w = c->w;
	char peer[INET6_ADDRSTRLEN];

	if (c->state == CS_CLOSED)
		return;
	if (reason && dw_log_enabled(DW_LOG_DEBUG))
		dw_log(DW_LOG_DEBUG, c->x && c->x->reqid[0] ? c->x->reqid : NULL, "close %s: %s",
		       conn_peer(c, peer, sizeof(peer)), reason);
	conn_set_state(c, CS_CLOSED);
	if (c->flush_queued) {
		TAILQ_REMOVE(&w->flushq, c, flink);
		c->flush_queued = 0;
	}
	exchange_end(c);
	event_del(&c->rd_ev); /* before the socket can close */
	if (c->bev)
		bufferevent_free(c->bev); /* closes the socket once released */
	else
		evutil_closesocket(c->fd);
	if (c->tls_out)
		evbuffer_free(c->tls_out);
	c->tls_out = NULL;
	TAILQ_REMOVE(&w->conns, c, link);
	w->nconns--;
	__atomic_fetch_sub(&w->srv->active_conns, 1, __ATOMIC_RELAXED);
	metric_add(w->srv->m_conns_active, -1);
	/* Callers up the stack may still look at c->state: free it later. */
	event_base_once(w->base, -1, EV_TIMEOUT, reap_cb, c, NULL);
}

/* ------------------------------------------------------------- metrics */

static void count_status(struct conn *c, int status)
{
	struct worker *w = c->w;
	const char *route = c->x && c->x->route ? c->x->route->name : "default";
	char labels[256], esc[128];

	for (size_t i = 0; i < w->nseries; i++)
		if (w->series[i].status == status && strcmp(w->series[i].route, route) == 0) {
			metric_inc(w->series[i].counter);
			return;
		}
	snprintf(labels, sizeof(labels), "route=\"%s\",status=\"%d\"",
		 metrics_label_escape(route, esc, sizeof(esc)), status);
	struct metric *m = metrics_counter(w->srv->metrics, "dualwrite_requests_total",
					   "Requests answered, by route and status.", labels);
	if (w->nseries < DW_ARRAY_LEN(w->series)) {
		w->series[w->nseries].route = dw_strdup(route);
		w->series[w->nseries].status = status;
		w->series[w->nseries].counter = m;
		w->nseries++;
	}
	metric_inc(m);
}

enum up_err { UPERR_CONNECT, UPERR_TIMEOUT, UPERR_RESET, UPERR_PROTOCOL };

/* ------------------------------------------------------ answers we make */

static void json_escape_into(struct evbuffer *out, const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			evbuffer_add_printf(out, "\\%c", ch);
		else if (ch < 0x20)
			evbuffer_add_printf(out, "\\u%04x", ch);
		else
			evbuffer_add(out, s, 1);
	}
}

static void conn_next(struct conn *c);

/*
 * conn_flush for TLS. An answer that fits one record (the usual case) is
 * pulled up into one chain and written now with one SSL_write: one record,
 * one send(2), and no write event armed and disarmed (two epoll_ctl and a
 * loop iteration per answer), which is what handing it to the OpenSSL
 * bufferevent costs. What is not written so (a bigger answer, a full
 * socket, a handshake not yet done, an error) goes to the bufferevent's
 * output behind anything still there: it writes it (a retried SSL_write
 * sees the same bytes first, as OpenSSL requires) and reports errors
 * through conn_event_cb; conn_write_cb disarms it once empty.
 */
static void conn_flush_tls(struct conn *c, struct evbuffer *out)
{
	struct evbuffer *bout = bufferevent_get_output(c->bev);
	size_t len = evbuffer_get_length(out);

	if (len <= TLS_RECORD_MAX && c->tls_ready && evbuffer_get_length(bout) == 0) {
		unsigned char *p = evbuffer_pullup(out, -1);
		int n;

		ERR_clear_error();
		n = SSL_write(bufferevent_openssl_get_ssl(c->bev), p, (int)len);
		if (n > 0)
			evbuffer_drain(out, (size_t)n);
		else
			ERR_clear_error(); /* the bufferevent's own retry reports it */
		if (evbuffer_get_length(out) == 0)
			return;
	}
	evbuffer_add_buffer(bout, out);
	bufferevent_enable(c->bev, EV_WRITE);
}

/*
 * Write what is queued for the client now. The write event is armed only for
 * what the socket did not take, and disarmed again in conn_write_cb once the
 * output is empty: no epoll_ctl pair per answer.
 */
static void conn_flush(struct conn *c)
{
	struct evbuffer *out;

	if (c->state == CS_CLOSED)
		return;
	out = conn_out(c);
	if (evbuffer_get_length(out) == 0)
		return;
	/* An answer never leaves before what was captured and closed so far is
	 * journaled (G2; and an answered write must never look like one of
	 * unknown outcome). */
	if (mirror_waiting(c->w->mirror))
		mirror_commit(c->w->mirror);
	if (c->client_gone) {
		evbuffer_drain(out, evbuffer_get_length(out));
		return;
	}
	if (c->tls) {
		conn_flush_tls(c, out);
		return;
	}
	if (evbuffer_write_unfrozen(out, bufferevent_getfd(c->bev)) < 0 &&
	    !errno_retriable(EVUTIL_SOCKET_ERROR())) {
		/* The bufferevent reports the error through conn_event_cb. */
		bufferevent_enable(c->bev, EV_WRITE);
		return;
	}
	if (evbuffer_get_length(out) > 0)
		bufferevent_enable(c->bev, EV_WRITE);
}

/*
 * Write c's output (FLUSH_CLIENT) or its request to the upstream (FLUSH_UP)
 * at the end of this loop iteration, together with every other one queued
 * in it (proxy_flush_queued, from w->flush_ev). Written as each was ready,
 * answers and requests left the proxy spread over the iteration, and the
 * client and the upstream woke for each: under peers.sh, wrk called
 * epoll_wait 0.29 times per request behind dualwrited against 0.15 behind
 * nginx, the origin 0.15 against 0.08, and the shared load core spent 6%
 * more per request. Batched, they call it 0.08 and 0.04 times; throughput
 * went from 0.95x to 0.99x nginx's and p99 from 1.07x to 0.95x.
 */
static void conn_flush_later(struct conn *c, unsigned what)
{
	struct worker *w = c->w;

	if (c->state == CS_CLOSED)
		return;
	if (!c->flush_queued) {
		if (TAILQ_EMPTY(&w->flushq))
			event_active(w->flush_ev, EV_TIMEOUT, 0);
		TAILQ_INSERT_TAIL(&w->flushq, c, flink);
	}
	c->flush_queued |= (unsigned char)what;
}

void proxy_flush_queued(struct worker *w)
{
	struct conn *c;

	/* Write-ahead intents are in the journal before any request of theirs
	 * leaves, in one write with the records and closes of this iteration. */
	if (mirror_waiting(w->mirror))
		mirror_commit(w->mirror);

	while ((c = TAILQ_FIRST(&w->flushq))) {
		unsigned what = c->flush_queued;

		TAILQ_REMOVE(&w->flushq, c, flink);
		c->flush_queued = 0;
		if ((what & FLUSH_UP) && c->x && c->x->up)
			upconn_flush(c->x->up);
		if (what & FLUSH_CLIENT)
			conn_flush(c);
	}
}

static void conn_finish_close(struct conn *c)
{
	if (c->state == CS_CLOSED)
		return;
	conn_set_state(c, CS_CLOSING);
	conn_read_stop(c);
	conn_flush(c);
	if (c->state != CS_CLOSED && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_close(c, NULL);
}

/*
 * Answer with an error of our own: {"error": "..."}. With close (always for
 * protocol errors and limits), the connection closes once flushed; otherwise
 * it goes on to the next request.
 */
/* Answer with the proxy's own error: the client's body says what (public),
 * the log line says it with the detail (msg: names and addresses upstream,
 * never shown to the client). public NULL: msg is fit for both. */
static void respond_error2(struct conn *c, int status, const char *public, const char *msg,
			   bool close)
{
	struct exchange *x = c->x;
	const char *rid = x && x->reqid[0] ? x->reqid : NULL;
	struct evbuffer *out, *body;
	char peer[INET6_ADDRSTRLEN];

	if (c->state == CS_CLOSED)
		return;
	out = conn_out(c);
	body = evbuffer_new();
	evbuffer_add_printf(body, "{\"error\": \"");
	json_escape_into(body, public ? public : msg);
	evbuffer_add_printf(body, "\"}\n");
	if (!x || !x->keep_alive || c->w->draining)
		close = true;
	evbuffer_add_printf(out,
			    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
			    "Content-Length: %zu\r\n",
			    status, http_reason(status), evbuffer_get_length(body));
	if (rid)
		evbuffer_add_printf(out, "X-Request-Id: %s\r\n", rid);
	evbuffer_add_printf(out, "%s\r\n", close ? "Connection: close\r\n" : "");
	evbuffer_add_buffer(out, body);
	evbuffer_free(body);
	conn_flush(c);
	if (c->state == CS_CLOSED)
		return;
	count_status(c, status);
	dw_log(status >= 500 ? DW_LOG_WARN : DW_LOG_INFO, rid, "%d %s (%s)", status, msg,
	       conn_peer(c, peer, sizeof(peer)));
	if (x && x->up) {
		upconn_release(x->up, false);
		x->up = NULL;
	}
	if (close)
		conn_finish_close(c);
	else
		conn_next(c);
}

static void respond_error(struct conn *c, int status, const char *msg, bool close)
{
	respond_error2(c, status, NULL, msg, close);
}

/* What a client is told when the legacy fails: the kind only. The upstream's
 * name, host and port are for the log (topology is not the client's
 * business). */
static const char *upstream_public(enum up_err kind)
{
	switch (kind) {
	case UPERR_CONNECT:
		return "upstream unreachable";
	case UPERR_TIMEOUT:
		return "upstream timed out";
	case UPERR_RESET:
		return "upstream closed the connection";
	default:
		return "invalid response from upstream";
	}
}

static void upstream_failed(struct conn *c, enum up_err kind, int status, const char *msg)
{
	metric_inc(c->w->m_upstream_err[kind]);
	read_guard_note(c, true);
	if (c->x->wsent && kind != UPERR_CONNECT &&
	    (!c->x->resp_head_done || (c->x->status >= 200 && c->x->status < 300)))
		write_indeterminate(c, msg);
	if (c->x->intent) { /* its outcome is known: none, or recorded as indeterminate */
		mirror_intent_close(c->w->mirror, c->x->intent);
		c->x->intent = 0;
	}
	if (c->x->on_new && read_new_failed(c, msg))
		return; /* the legacy answers instead */
	if (c->x->resp_head_done && !c->x->hold && !c->x->collect) {
		/* The client already has part of an answer: all we can do is cut it. */
		dw_log(DW_LOG_WARN, c->x->reqid, "upstream failed mid-response: %s", msg);
		conn_close(c, msg);
		return;
	}
	respond_error2(c, status, upstream_public(kind), msg, false);
}

/* ---------------------------------------------------------- accepting */

/* Give c a bufferevent on its socket; it owns the socket from now on. The
 * socket is closed only when libevent has released the bufferevent's events,
 * so its number cannot be reused meanwhile. */
static int conn_attach_bev(struct conn *c)
{
	static const struct timeval send_timeout = {SEND_TIMEOUT_MS / 1000, 0};

	c->bev = bufferevent_socket_new(c->w->base, c->fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev)
		return -1;
	/* The bufferevent holds the buffers and writes what conn_flush could
	 * not; it never reads (rd_ev does). */
	bufferevent_setcb(c->bev, NULL, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW_WATER, 0);
	bufferevent_set_timeouts(c->bev, NULL, &send_timeout);
	bufferevent_disable(c->bev, EV_READ | EV_WRITE); /* EV_WRITE is on by default */
	return 0;
}

/* Input a client may have buffered before reading pauses: bounds what a
 * pipelining client can queue while a request is upstream. */
static size_t conn_in_high(const struct conn *c)
{
	return c->w->cfg->limits.max_header_bytes + IN_HIGH_SLACK;
}

static void conn_read_stop(struct conn *c)
{
	if (c->tls && c->bev)
		bufferevent_disable(c->bev, EV_READ);
	else if (!c->rd_done && !c->rd_paused)
		event_del(&c->rd_ev);
	c->rd_done = true;
}

/* Reading paused at the input bound goes on once the input is below it. */
static void conn_tls_kick(struct conn *c);

static void conn_read_resume(struct conn *c)
{
	if (c->tls) {
		conn_tls_kick(c);
		return;
	}
	if (c->rd_paused && !c->rd_done && c->state != CS_CLOSED && c->bev &&
	    evbuffer_get_length(bufferevent_get_input(c->bev)) < conn_in_high(c)) {
		c->rd_paused = false;
		event_add(&c->rd_ev, NULL);
	}
}

/* Bytes a read asks for after one that filled READ_FIRST (server.h). */
#define READ_BIG 16384

/*
 * rd_ev, a client connection's one read path from accept to close: never an
 * epoll_ctl pair per request, none when parking. Not the bufferevent's own
 * reading: libevent asks the kernel for FIONREAD before every read (an ioctl
 * per read, 5% of a pass-through request's CPU); this reads what fits a
 * reservation of the input buffer, as nginx reads into its buffer, and a
 * socket with more to read is readable again on the next loop iteration.
 */
static void conn_readable_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in;
	size_t len, want, high = conn_in_high(c);
	ssize_t n;

	(void)what;
	if (!c->bev && conn_attach_bev(c) < 0) { /* parked: the client sent bytes or closed */
		conn_close(c, "cannot allocate a bufferevent");
		return;
	}
	in = bufferevent_get_input(c->bev);
	len = evbuffer_get_length(in);
	if (len >= high) {
		event_del(&c->rd_ev);
		c->rd_paused = true;
		return;
	}
	want = c->rd_big ? READ_BIG : READ_FIRST;
	if (want > high - len)
		want = high - len;
	n = evbuffer_read_unfrozen(in, fd, want);
	if (n <= 0) {
		if (n < 0 && errno_retriable(errno))
			return;
		conn_read_stop(c);
		conn_event_cb(c->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR),
			      c);
		return;
	}
	c->rd_big = (size_t)n >= want;
	on_input(c);
}

/*
 * Reading a TLS connection paused at the input bound reads at most up to
 * it: the rest of a record stays decrypted inside OpenSSL, and the socket,
 * already emptied, will not say "readable" again. Once the input is below
 * the bound (the bufferevent has taken up reading again), a read is made
 * to happen; else pipelined requests sent in one go would wait forever.
 */
static void conn_tls_kick(struct conn *c)
{
	if (c->state == CS_CLOSED || c->rd_done || !c->bev ||
	    evbuffer_get_length(bufferevent_get_input(c->bev)) >= conn_in_high(c))
		return;
	if (SSL_has_pending(bufferevent_openssl_get_ssl(c->bev)))
		event_active(&c->bev->ev_read, EV_READ, 1);
}

/* A TLS connection's bufferevent decrypted bytes into its input. */
static void conn_tls_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	(void)bev;
	if (c->state != CS_CLOSED && !c->rd_done) {
		on_input(c);
		conn_tls_kick(c);
	}
}

/*
 * IDLE -> PARKED: the bufferevent and its buffers go; rd_ev keeps watching
 * the socket and gives the connection a new bufferevent when the client
 * sends bytes or closes (conn_readable_cb). IDLE's input is always empty (a
 * byte read in IDLE starts HEAD); an answer still being written keeps the
 * bufferevent (and PARKED then works like IDLE). setfd -1 keeps
 * bufferevent_free from closing the socket; the bufferevent has no event on
 * it then (it never reads, and writes only when conn_flush could not), so
 * parking changes nothing in epoll.
 */
static void conn_park(struct conn *c)
{
	conn_set_state(c, CS_PARKED);
	/* A TLS connection's session lives in its bufferevent: it stays. */
	if (c->tls || evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
		return;
	bufferevent_setfd(c->bev, -1);
	bufferevent_free(c->bev);
	c->bev = NULL;
}

/*
 * A TLS client connection: libevent's OpenSSL bufferevent does its socket
 * I/O (handshake, reads into the input, writes of the output), so rd_ev is
 * never added and the connection never parks; everything above the buffers
 * is the same as for plain HTTP. Its own reads and writes (sockio.c) save a
 * plain connection the ioctl and epoll_ctl calls they were written for; with
 * TLS the crypto dominates, and reusing the bufferevent keeps one TLS code
 * path shared with the upstream side (pool.c). Reading stops at the same
 * input bound as rd_ev (a read high-water mark) and resumes once the input
 * is consumed. Answers are gathered in tls_out and written by
 * conn_flush_tls at the end of the loop iteration, as plain ones are.
 */
static int conn_attach_tls(struct conn *c, SSL_CTX *ctx)
{
	static const struct timeval send_timeout = {SEND_TIMEOUT_MS / 1000, 0};
	SSL *ssl = SSL_new(ctx);

	if (!ssl)
		return -1;
	/* A write conn_flush_tls began and the socket did not take is retried
	 * by the bufferevent from its own output (same bytes, moved chain). */
	SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	c->bev = bufferevent_openssl_socket_new(c->w->base, c->fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
						BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) /* only out of memory; who freed the SSL and the socket is unclear */
		dw_oom(sizeof(struct conn));
	c->tls = true;
	c->tls_out = evbuffer_new();
	if (!c->tls_out)
		dw_oom(0);
	/* A client closing without close_notify is an EOF, as on plain TCP. */
	bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	bufferevent_setcb(c->bev, conn_tls_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, conn_in_high(c));
	bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW_WATER, 0);
	bufferevent_set_timeouts(c->bev, NULL, &send_timeout);
	bufferevent_disable(c->bev, EV_WRITE);
	bufferevent_enable(c->bev, EV_READ);
	return 0;
}

void proxy_accept(struct worker *w, evutil_socket_t fd, const struct sockaddr *sa, int salen,
		  SSL_CTX *tls)
{
	struct server *srv = w->srv;
	struct conn *c;
	int one = 1;

	(void)salen;
	if (__atomic_add_fetch(&srv->active_conns, 1, __ATOMIC_RELAXED) >
	    w->cfg->limits.max_connections) {
		static const char busy[] =
		    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
		    "Content-Length: 36\r\nConnection: close\r\n\r\n"
		    "{\"error\": \"too many connections\"}\r\n";
		__atomic_fetch_sub(&srv->active_conns, 1, __ATOMIC_RELAXED);
		metric_inc(srv->m_conns_rejected);
		if (!tls && send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
			log_debug("reject: %s", strerror(errno));
		evutil_closesocket(fd);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c = dw_calloc(1, sizeof(*c));
	c->w = w;
	c->fd = fd;
	if (tls ? conn_attach_tls(c, tls) < 0 : conn_attach_bev(c) < 0) {
		log_error("cannot allocate a bufferevent for a new connection");
		__atomic_fetch_sub(&srv->active_conns, 1, __ATOMIC_RELAXED);
		evutil_closesocket(fd);
		free(c);
		return;
	}
	/* Assigned either way, so conn_close's event_del is safe. */
	event_assign(&c->rd_ev, w->base, fd, EV_READ | EV_PERSIST, conn_readable_cb, c);
	if (!tls)
		event_add(&c->rd_ev, NULL);
	if (sa->sa_family == AF_INET) {
		c->peer_af = AF_INET;
		memcpy(c->peer_addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		c->peer_af = AF_INET6;
		memcpy(c->peer_addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
	}
	TAILQ_INSERT_TAIL(&w->conns, c, link);
	w->nconns++;
	metric_inc(srv->m_conns_active);
	metric_inc(srv->m_conns_total);
	/* A new connection gets the head deadline from its first moment. */
	c->state = CS_HEAD;
	conn_enqueue(c);
}

/* --------------------------------------------------- reading a request */

/* c's deadline in its state passed. */
/* Is an answer still being written (more than the kernel took)? */
static bool conn_writing(const struct conn *c)
{
	return c->bev && (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0 ||
			  (c->tls && evbuffer_get_length(c->tls_out) > 0));
}

/* Close c between requests, but only once what it was answered is written:
 * a client that half-closes while its answer waits for the end of the loop
 * iteration (conn_flush_later) or is still reading a long one gets it all,
 * then the close (or the closing timeout). */
static void conn_close_written(struct conn *c, const char *reason)
{
	if (c->bev && ((c->flush_queued & FLUSH_CLIENT) || conn_writing(c)))
		conn_finish_close(c);
	else
		conn_close(c, reason);
}

static void conn_expired(struct conn *c)
{
	/* Idle time counts from the last answer's last byte handed to the kernel:
	 * a client reading a long answer slowly is not idle (its writes are
	 * bounded by SEND_TIMEOUT_MS instead). */
	if ((c->state == CS_IDLE || c->state == CS_PARKED) && conn_writing(c)) {
		conn_restart_clock(c);
		return;
	}
	switch (c->state) {
	case CS_IDLE:
		if (c->w->cfg->limits.idle_timeout_ms > PARK_AFTER_MS)
			conn_park(c);
		else
			conn_close(c, "idle timeout");
		break;
	case CS_PARKED:
		conn_close(c, "idle timeout");
		break;
	case CS_HEAD:
		if (!c->got_bytes) {
			conn_close(c, "no request before the header deadline");
			break;
		}
		respond_error(c, 408, "request head not received in time", true);
		break;
	case CS_BODY:
		respond_error(c, 408, "request body not received in time", true);
		break;
	case CS_CLOSING:
		conn_close(c, "client does not read its answer");
		break;
	default:
		break;
	}
}

void proxy_deadlines(struct worker *w)
{
	int64_t now = dw_now_us() + DEADLINE_SLACK_US, next = 0;

	w->deadline_at = 0; /* fired, or about to be re-armed */
	for (enum cstate s = CS_IDLE; s < CS_CLOSED; s++) {
		int64_t t = state_timeout_us(w, s);
		struct conn *c;

		if (t < 0)
			continue;
		while ((c = TAILQ_FIRST(&w->stateq[s])) && c->since + t <= now) {
			int64_t since = c->since;

			conn_expired(c);
			/* every expiry leaves the state or restarts its clock; never spin */
			if (c->state == s && c->since == since)
				conn_close(c, "deadline passed");
		}
		if (c && (!next || c->since + t < next))
			next = c->since + t;
	}
	if (next)
		deadline_arm(w, next);
}

static const char *req_header(void *arg, const char *name, size_t *len)
{
	const struct http_header *h = http_head_get(arg, name);

	if (!h)
		return NULL;
	*len = h->value_len;
	return h->value;
}

static void make_reqid(struct conn *c)
{
	const struct http_header *h = http_head_get(&c->x->req, "X-Request-Id");
	bool ok = h && h->value_len > 0 && h->value_len < sizeof(c->x->reqid);

	for (size_t i = 0; ok && i < h->value_len; i++) {
		unsigned char ch = (unsigned char)h->value[i];
		ok = ch > 0x20 && ch < 0x7f;
	}
	if (ok) {
		memcpy(c->x->reqid, h->value, h->value_len);
		c->x->reqid[h->value_len] = '\0';
	} else {
		struct worker *w = c->w;
		struct dw_text t;

		dw_text_init(&t, c->x->reqid, sizeof(c->x->reqid) - 1);
		dw_text_hex(&t, w->reqid_seed, 8);
		dw_text_hex(&t, (uint64_t)w->id, 2);
		dw_text_hex(&t, ++w->reqid_counter, 6);
		c->x->reqid[t.n] = '\0';
	}
}

static void emit_body(void *arg, const char *p, size_t n)
{
	evbuffer_add(arg, p, n);
}

/*
 * Run a chunked decoder over everything buffered in src (without copying it
 * into one block), emitting payload to emit/arg. Returns the decoder's status
 * and sets *consumed; the caller drains.
 */
static int chunked_run(struct http_chunked *ch, struct evbuffer *src, size_t *consumed,
		       http_emit_fn emit, void *arg, struct dw_err *err)
{
	struct evbuffer_iovec vec[16];
	size_t total = 0;
	int n, rc = HTTP_INCOMPLETE;

	*consumed = 0;
	n = evbuffer_peek(src, -1, NULL, vec, 16);
	if (n > 16)
		n = 16;
	for (int i = 0; i < n && rc == HTTP_INCOMPLETE; i++) {
		size_t used = 0;
		rc = http_chunked_decode(ch, vec[i].iov_base, vec[i].iov_len, &used, emit, arg, err);
		total += used;
	}
	*consumed = total;
	return rc;
}

static void on_head(struct conn *c)
{
	struct worker *w = c->w;
	struct evbuffer *in = bufferevent_get_input(c->bev);
	const struct dw_limits *lim = &w->cfg->limits;
	size_t len = evbuffer_get_length(in), n, skip = 0, head_len = 0;
	struct dw_err err = {""};
	int status = 0, rc;
	const char *p;

	if (len == 0)
		return;
	if (c->state == CS_IDLE || c->state == CS_PARKED)
		conn_set_state(c, CS_HEAD);
	c->got_bytes = true;
	if (!c->x)
		c->x = exchange_new(c->w);
	n = len < lim->max_header_bytes + 4096 ? len : lim->max_header_bytes + 4096;
	p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
	rc = http_scan_head(&c->x->scan, p, n, lim->max_header_bytes, &skip, &head_len, &status, &err);
	if (rc == HTTP_INCOMPLETE)
		return;
	c->x->keep_alive = false;
	if (rc == HTTP_ERROR) {
		respond_error(c, status, err.msg, true);
		return;
	}
	/* This request runs on the configuration current when its head arrived. */
	c->x->cfg = config_ref(w->cfg);
	c->x->upi = c->x->cfg->default_upstream;
	c->x->t_start = dw_now_us();
	rc = http_parse_request(&c->x->req, p + skip, head_len, &status, &err);
	evbuffer_drain(in, skip + head_len);
	http_scanner_init(&c->x->scan);
	if (rc != HTTP_OK) {
		respond_error(c, status, err.msg, true);
		return;
	}
	make_reqid(c);
	c->x->keep_alive = http_keep_alive(&c->x->req) && !c->x->req.upgrade && !w->draining;
	c->x->route = config_route_match(c->x->cfg, c->x->req.method_str, c->x->req.method_len, c->x->req.path,
				      c->x->req.path_len, &c->x->params);

	if (c->x->req.chunked) {
		c->x->body_chunked = true;
		http_chunked_init(&c->x->chunk, lim->max_header_bytes);
		http_chunked_limit(&c->x->chunk, lim->max_body_bytes);
	} else if (c->x->req.content_length > 0) {
		if ((uint64_t)c->x->req.content_length > lim->max_body_bytes) {
			respond_error(c, 413, "request body larger than max_body_bytes", true);
			return;
		}
		c->x->body_left = c->x->req.content_length;
	} else {
		conn_set_state(c, CS_UPSTREAM);
		dispatch(c);
		return;
	}
	conn_set_state(c, CS_BODY);
	/* Expect: 100-continue is ours to answer; it is never forwarded. */
	if (c->x->req.expect_continue && c->x->req.version_minor == 1 &&
	    evbuffer_get_length(in) == 0) {
		evbuffer_add(conn_out(c), "HTTP/1.1 100 Continue\r\n\r\n", 25);
		conn_flush(c);
		if (c->state == CS_CLOSED)
			return;
	}
	on_input(c);
}

static void on_body(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	size_t max = c->x->cfg->limits.max_body_bytes;

	if (c->x->body_chunked) {
		struct dw_err err = {""};
		size_t used;
		int rc = chunked_run(&c->x->chunk, in, &used, emit_body, c->x->body, &err);

		evbuffer_drain(in, used);
		if (evbuffer_get_length(c->x->body) > max ||
		    (rc == HTTP_ERROR && c->x->chunk.too_large)) {
			c->x->keep_alive = false;
			respond_error(c, 413, "request body larger than max_body_bytes", true);
			return;
		}
		if (rc == HTTP_ERROR) {
			c->x->keep_alive = false;
			respond_error(c, 400, err.msg, true);
			return;
		}
		if (rc == HTTP_INCOMPLETE)
			return;
	} else {
		size_t avail = evbuffer_get_length(in);
		size_t take = (uint64_t)c->x->body_left < avail ? (size_t)c->x->body_left : avail;

		evbuffer_remove_buffer(in, c->x->body, take);
		c->x->body_left -= (int64_t)take;
		if (c->x->body_left > 0)
			return;
	}
	conn_set_state(c, CS_UPSTREAM);
	dispatch(c);
}

static void on_input(struct conn *c)
{
	switch (c->state) {
	case CS_IDLE:
	case CS_PARKED: /* parked with its bufferevent (conn_park) */
	case CS_HEAD:
		on_head(c);
		break;
	case CS_BODY:
		on_body(c);
		break;
	default:
		break;
	}
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		bufferevent_disable(bev, EV_WRITE); /* back to writing directly */
	if (c->state == CS_CLOSING) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			conn_close(c, NULL);
		return;
	}
	if (c->state == CS_RESPONSE && c->x->up_paused && c->x->up) {
		c->x->up_paused = false;
		upconn_read_resume(c->x->up);
	}
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	bool exchange = c->state == CS_UPSTREAM || c->state == CS_RESPONSE || c->state == CS_SYNC;

	if (what & BEV_EVENT_CONNECTED) { /* a TLS handshake is done */
		c->tls_ready = true;
		return;
	}
	if (c->tls && !c->tls_ready) {
		char peer[INET6_ADDRSTRLEN], why[300];

		metric_inc(c->w->m_tls_failed);
		log_info("client %s: %s", conn_peer(c, peer, sizeof(peer)),
			 tls_failure(bufferevent_openssl_get_ssl(bev),
				     bufferevent_get_openssl_error(bev), why, sizeof(why)));
		conn_close(c, "TLS handshake failed");
		return;
	}

	if ((what & BEV_EVENT_EOF) && exchange) {
		/* A half-close after the request: answer it, then close. */
		c->x->keep_alive = false;
		c->x->close_after = true;
		return;
	}
	if (exchange && !(what & BEV_EVENT_EOF) &&
	    ((c->state == CS_UPSTREAM && c->x->route && c->x->route->mirror) ||
	     (c->state == CS_RESPONSE && c->x->hold))) {
		/* The legacy may be acknowledging a mirrored write right now: see
		 * the exchange through so the write is journaled (G2), then close. */
		bufferevent_disable(bev, EV_WRITE);
		conn_read_stop(c);
		c->client_gone = true;
		c->x->keep_alive = false;
		c->x->close_after = true;
		return;
	}
	if ((what & BEV_EVENT_EOF) &&
	    (c->state == CS_IDLE || c->state == CS_PARKED || (c->state == CS_HEAD && !c->got_bytes)))
		conn_close_written(c, NULL); /* a keep-alive client going away between requests */
	else
		conn_close(c, (what & BEV_EVENT_EOF) ? "client closed" : "client connection error");
}

/* ------------------------------------------------------- the upstream */

static void send_request(struct conn *c);
static bool body_pump(struct conn *c);
static void response_complete(struct conn *c);

static bool method_idempotent(enum http_method m)
{
	return m == HTTP_M_GET || m == HTTP_M_HEAD || m == HTTP_M_PUT || m == HTTP_M_DELETE ||
	       m == HTTP_M_OPTIONS;
}

static void up_ready(struct upconn *uc, int error, void *arg)
{
	struct conn *c = arg;
	const struct dw_upstream *up = &c->x->cfg->upstreams[c->x->upi];
	char msg[512];

	if (error) {
		const char *tls = upconn_failure(uc);
		snprintf(msg, sizeof(msg), "upstream \"%s\" (%s:%d): %s%s", up->name, up->host,
			 up->port, tls ? "" : "connect: ",
			 tls ? tls : error == ETIMEDOUT ? "timed out" : strerror(error));
		upconn_release(uc, false);
		c->x->up = NULL;
		if (error == ETIMEDOUT)
			upstream_failed(c, UPERR_TIMEOUT, 504, msg);
		else
			upstream_failed(c, UPERR_CONNECT, 502, msg);
		return;
	}
	send_request(c);
}

static void dispatch(struct conn *c)
{
	const struct dw_upstream *up;
	bool connected = false;
	int e = 0;
	char msg[256];

	if (c->x->route && c->x->route->read && !c->x->planned)
		read_plan_request(c);
	if (c->x->route && c->x->route->authority == AUTHORITY_NEW && !c->x->wnew &&
	    !write_new_plan(c))
		return; /* answered: the request could not be built */
	up = &c->x->cfg->upstreams[c->x->upi];
	c->x->up = pool_get(c->w->pools, up, up_ready, c, &connected, &e);
	if (!c->x->up) {
		const char *why = pool_failure(c->w->pools);

		if (why)
			snprintf(msg, sizeof(msg), "upstream \"%s\": %s", up->name, why);
		else
			snprintf(msg, sizeof(msg), "upstream \"%s\" (%s:%d): connect: %s", up->name,
				 up->host, up->port, strerror(e));
		upstream_failed(c, UPERR_CONNECT, 502, msg);
		return;
	}
	if (connected)
		send_request(c);
}

/* One header line as parsed: "Name: value\r\n" (values are OWS-trimmed,
 * so a line takes at most one byte more than it did in the raw head). */
static void text_header(struct dw_text *t, const struct http_header *h)
{
	dw_text_put(t, h->name, h->name_len);
	dw_text_lit(t, ": ");
	dw_text_put(t, h->value, h->value_len);
	dw_text_lit(t, "\r\n");
}

/* Room for what a proxied head adds to the raw head it copies (which bounds
 * its request or status line and, with one byte per line, its header lines):
 * X-Forwarded-For's ", <peer>", X-Forwarded-Proto, X-Request-Id,
 * Content-Length, Transfer-Encoding, Connection, a default reason phrase. */
#define HEAD_EXTRA 512

/* Start building a head of at most need bytes in place at the end of out:
 * one contiguous region, one append, no printf. */
static void head_begin(struct evbuffer *out, size_t need, struct evbuffer_iovec *v,
		       struct dw_text *t)
{
	if (evbuffer_reserve_space(out, (ev_ssize_t)need, v, 1) != 1 || v->iov_len < need)
		dw_oom(need); /* the policy of dw_malloc: no serving through this */
	dw_text_init(t, v->iov_base, need);
}

/* Append what was built. The estimate bounds every line by construction, so
 * a cut head is a bug: stop rather than send a truncated message. */
static void head_commit(struct evbuffer *out, struct evbuffer_iovec *v, const struct dw_text *t)
{
	if (t->cut) {
		dw_log(DW_LOG_ERROR, NULL, "bug: a %zu-byte head outgrew its estimate", t->cap);
		abort();
	}
	v->iov_len = t->n;
	evbuffer_commit_space(out, v, 1);
}

static bool name_is(const struct http_header *h, const char *name)
{
	return h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

/* The client's request as it goes to up, appended to out: head and body;
 * target is the new system's path and query (a read route's), NULL for the
 * client's own. Used for the request and for a read's shadow. */
static void build_request(const struct conn *c, struct evbuffer *out,
			  const struct dw_upstream *up, const char *target)
{
	const struct http_head *r = &c->x->req;
	const struct http_header *xff = NULL;
	/* authority "new": the request block's body and method (SPEC §7.5) */
	struct evbuffer *sbody = c->x->new_body ? c->x->new_body : c->x->body;
	size_t blen = evbuffer_get_length(sbody);
	size_t base_len = strlen(up->base_path);
	size_t new_len = target ? strlen(target) : 0;
	size_t meth_len = c->x->new_method ? strlen(c->x->new_method) : 0;
	struct evbuffer_iovec v;
	struct dw_text t;

	/* the body goes into the same region: a copy, not a move (it is needed
	 * for a retry and for the mirror) */
	head_begin(out, r->raw_len + r->nheaders + base_len + new_len + meth_len + HEAD_EXTRA + 64 + blen,
		   &v, &t);
	if (c->x->new_method)
		dw_text_put(&t, c->x->new_method, meth_len);
	else
		dw_text_put(&t, r->method_str, r->method_len);
	dw_text_lit(&t, " ");
	dw_text_put(&t, up->base_path, base_len);
	if (target) { /* a read served by the new system: the route's path */
		dw_text_put(&t, target, new_len);
	} else {
		dw_text_put(&t, r->path, r->path_len);
		if (r->query) {
			dw_text_lit(&t, "?");
			dw_text_put(&t, r->query, r->query_len);
		}
	}
	dw_text_lit(&t, " HTTP/1.1\r\n");
	for (size_t i = 0; i < r->nheaders; i++) {
		const struct http_header *h = &r->headers[i];

		if (http_is_hop_by_hop(r, h->name, h->name_len) || name_is(h, "Expect") ||
		    name_is(h, "Content-Length") || name_is(h, "X-Forwarded-Proto") ||
		    name_is(h, "X-Request-Id") || (c->x->new_body && name_is(h, "Content-Type")))
			continue;
		if (name_is(h, "X-Forwarded-For")) {
			xff = h;
			continue;
		}
		text_header(&t, h);
	}
	dw_text_lit(&t, "X-Forwarded-For: ");
	if (xff) {
		dw_text_put(&t, xff->value, xff->value_len);
		dw_text_lit(&t, ", ");
	}
	dw_text_addr(&t, c->peer_af, c->peer_addr);
	if (c->tls)
		dw_text_lit(&t, "\r\nX-Forwarded-Proto: https\r\nX-Request-Id: ");
	else
		dw_text_lit(&t, "\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ");
	dw_text_str(&t, c->x->reqid);
	dw_text_lit(&t, "\r\n");
	if (c->x->new_body)
		dw_text_lit(&t, "Content-Type: application/json\r\n");
	if (blen > 0 || r->content_length >= 0 || r->chunked || c->x->new_body) {
		dw_text_lit(&t, "Content-Length: ");
		dw_text_u64(&t, blen);
		dw_text_lit(&t, "\r\n");
	}
	dw_text_lit(&t, "\r\n");
	if (blen && t.n + blen <= t.cap) {
		evbuffer_copyout(sbody, t.p + t.n, blen);
		t.n += blen;
	} else if (blen) {
		t.cut = 1;
	}
	head_commit(out, &v, &t);
}

static void read_ctx(struct exchange *x, struct expr_ctx *ctx, char *tenant, size_t tlen);

/* The ordering key of a write as its request gives it before anyone
 * answers: path, query, headers, tenant; not the body (that would cost a
 * parse per write) and not $response. NULL: unknown. */
static char *intent_key(struct exchange *x, const struct dw_mirror *wm)
{
	struct expr_ctx ctx;
	struct dw_err err = {""};
	char tenant[72];
	char *key = NULL;

	if (!wm->key ||
	    (expr_sources(wm->key) & (EXPR_SRC_REQUEST | EXPR_SRC_RESPONSE | EXPR_SRC_NOW)))
		return NULL;
	read_ctx(x, &ctx, tenant, sizeof(tenant));
	if (expr_eval_string(wm->key, &ctx, &key, &err) != EXPR_OK) {
		free(key);
		return NULL;
	}
	return key;
}

/* Journal (at the end of this iteration, before the request leaves) that
 * this write of a mirrored route goes to its authority (SPEC §5, G2). */
static void write_intent(struct conn *c)
{
	struct exchange *x = c->x;
	const struct dw_mirror *wm = route_write_mirror(x->route);
	const char *method = http_method_name(x->req.method);
	char mbuf[32];
	char *key = intent_key(x, wm);

	if (!method) {
		snprintf(mbuf, sizeof(mbuf), "%.*s", (int)x->req.method_len, x->req.method_str);
		method = mbuf;
	}
	x->intent = mirror_intent(c->w->mirror, x->route->name, x->cfg->upstreams[wm->upstream].name,
				  method, x->req.target, x->req.target_len, x->reqid, key);
	free(key);
}

static void send_request(struct conn *c)
{
	const struct dw_upstream *up = &c->x->cfg->upstreams[c->x->upi];

	upconn_begin(c->x->up);
	/* from here a mirrored write's outcome is unknown until its answer */
	c->x->wsent = c->x->route && c->x->route->mirror && !c->x->on_new;
	if (c->x->wsent && !c->x->intent) /* once, whatever the retries */
		write_intent(c);
	build_request(c, bufferevent_get_output(upconn_bev(c->x->up)), up, c->x->new_target);
	http_scanner_init(&c->x->rscan);
	upconn_read(c->x->up, up_read_cb, up_event_cb, c, up->timeout_ms);
	conn_flush_later(c, FLUSH_UP);
}

static void noop_emit(void *arg, const char *p, size_t n)
{
	(void)arg;
	(void)p;
	(void)n;
}

static void capture_emit(void *arg, const char *p, size_t n)
{
	struct conn *c = arg;

	if (!c->x->capture || c->x->capture_overflow)
		return;
	if (evbuffer_get_length(c->x->capture) + n > c->x->cfg->limits.max_body_bytes) {
		c->x->capture_overflow = true;
		return;
	}
	evbuffer_add(c->x->capture, p, n);
}

/* Decoded response payload for a 1.0 client: to the client and the capture. */
static void dechunk_emit(void *arg, const char *p, size_t n)
{
	struct conn *c = arg;

	evbuffer_add(c->x->hold ? c->x->held : conn_out(c), p, n);
	capture_emit(c, p, n);
}

static void capture_copy(struct conn *c, struct evbuffer *src, size_t n)
{
	if (c->x->capture && n)
		capture_emit(c, (const char *)evbuffer_pullup(src, (ev_ssize_t)n), n);
}

/* Build the mirror of this acknowledged write and journal it. */
static void do_mirror(struct conn *c)
{
	struct mirror_input in;
	const char *resp = NULL;
	size_t resp_len = 0;

	if (c->x->mirrored)
		return;
	c->x->mirrored = true;
	if (c->x->capture) {
		resp_len = evbuffer_get_length(c->x->capture);
		resp = (const char *)evbuffer_pullup(c->x->capture, -1);
	}
	memset(&in, 0, sizeof(in));
	in.cfg = c->x->cfg;
	in.route = c->x->route;
	/* the reverse when authority is "new" */
	in.mm = c->x->route ? route_write_mirror(c->x->route) : NULL;
	in.method = http_method_name(c->x->req.method);
	in.path_names = c->x->params.names;
	in.path_values = (const char *const *)c->x->params.values;
	in.npath = c->x->params.n;
	in.query = c->x->req.query;
	in.query_len = c->x->req.query_len;
	in.header = req_header;
	in.header_arg = &c->x->req;
	in.req_body = (const char *)evbuffer_pullup(c->x->body, -1);
	in.req_body_len = evbuffer_get_length(c->x->body);
	in.resp_body = c->x->capture_overflow ? NULL : resp;
	in.resp_body_len = c->x->capture_overflow ? 0 : resp_len;
	in.resp_too_large = c->x->capture_overflow;
	in.request_id = c->x->reqid;
	in.intent = c->x->intent; /* closed by the record */
	c->x->intent = 0;
	char method[32];
	if (!in.method) {
		snprintf(method, sizeof(method), "%.*s", (int)c->x->req.method_len, c->x->req.method_str);
		in.method = method;
	}
	mirror_capture(c->w->srv, c->w->mirror, &in);
}

/* ------------------------------------------------------------ read routes */

/* $tenant of SPEC §3 for a read's expressions: the header when well-formed,
 * the default when absent, NULL (an error for $tenant) when malformed. */
static const char *read_tenant(const struct exchange *x, char *buf, size_t len)
{
	const struct http_header *h = http_head_get(&x->req, x->cfg->tenant.header);

	if (!h)
		return x->cfg->tenant.def;
	if (h->value_len >= len || !expr_tenant_valid(h->value, h->value_len))
		return NULL;
	memcpy(buf, h->value, h->value_len);
	buf[h->value_len] = '\0';
	return buf;
}

static void read_ctx(struct exchange *x, struct expr_ctx *ctx, char *tenant, size_t tlen)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->path_names = x->params.names;
	ctx->path_values = (const char *const *)x->params.values;
	ctx->npath = x->params.n;
	ctx->query = x->req.query;
	ctx->query_len = x->req.query ? x->req.query_len : 0;
	ctx->header = req_header;
	ctx->header_arg = &x->req;
	ctx->tenant = read_tenant(x, tenant, tlen);
}

/* Count the read once, for the side that served it. */
static void read_count(struct exchange *x, enum read_side side, enum read_reason why)
{
	struct read_state *st = x->route->read->state;

	if (x->read_counted || !st)
		return;
	x->read_counted = true;
	readstate_count(st, side, why);
}

/* Read-your-writes (SPEC §7.2): a write of (upstream, key) not yet
 * delivered — in this daemon (in flight, waiting, in the local queue:
 * pinset.h) or in the shared PostgreSQL queue (pgforward's key set,
 * refreshed every 500 ms) — keeps the read on the legacy. */
static bool read_pinned_cb(void *arg, const char *upstream, const char *key)
{
	struct server *srv = arg;

	return (srv->pins && pinset_has(srv->pins, upstream, key)) ||
	       (key && srv->pgfwd && pgforward_key_queued(srv->pgfwd, upstream, key));
}

/* Send the read to the side that does not serve it too (SPEC §7.3): the
 * legacy with the client's path, or the new system with the route's. */
static void read_shadow_start(struct conn *c, const struct expr_ctx *ctx)
{
	struct exchange *x = c->x;
	const struct dw_read *rd = x->route->read;
	struct shadow_req sr;
	struct dw_err err = {""};
	char *target = NULL;

	memset(&sr, 0, sizeof(sr));
	sr.to_new = !x->on_new;
	sr.upi = sr.to_new ? rd->upstream : x->cfg->default_upstream;
	if (sr.to_new && rd->path && tmpl_render(rd->path, ctx, &target, &err) != EXPR_OK) {
		if (rd->state)
			readstate_shadow(rd->state, SHADOW_ERROR);
		return;
	}
	sr.cfg = x->cfg;
	sr.route = x->route;
	sr.method = x->req.method;
	sr.request = evbuffer_new();
	build_request(c, sr.request, &x->cfg->upstreams[sr.upi], target);
	free(target);
	sr.path_names = x->params.names;
	sr.path_values = (const char *const *)x->params.values;
	sr.npath = x->params.n;
	sr.query = x->req.query;
	sr.query_len = x->req.query ? x->req.query_len : 0;
	sr.tenant = ctx->tenant;
	sr.path = x->req.target;
	sr.path_len = x->req.target_len;
	sr.reqid = x->reqid;
	x->shadow = shadow_start(c->w, &sr);
}

/* Ask the plan who answers this read (once; dispatch's retry on a new
 * connection keeps the decision). */
static void read_plan_request(struct conn *c)
{
	struct exchange *x = c->x;
	const struct dw_read *rd = x->route->read;
	struct dw_err err = {""};
	struct expr_ctx ctx;
	char tenant[72];

	x->planned = true;
	read_ctx(x, &ctx, tenant, sizeof(tenant));
	struct plan_pins pins = { read_pinned_cb, c->w->srv };
	const struct server *srv = c->w->srv;
	/* nothing pending anywhere: the read's key need not be worked out */
	bool maybe = srv->pgfwd || (srv->pins && !pinset_empty(srv->pins));

	plan_read_pinned(x->cfg, x->route, &ctx, &c->w->rng, maybe ? &pins : NULL, &x->plan);
	if (x->plan.side == READ_NEW && rd->path &&
	    tmpl_render(rd->path, &ctx, &x->new_target, &err) != EXPR_OK) {
		/* no request to a half-built path: the legacy serves it */
		dw_log(DW_LOG_DEBUG, x->reqid, "read %s: new system's path: %s; the legacy answers",
		       x->route->name, err.msg);
		plan_fallback(x->cfg, &x->plan);
	}
	x->upi = x->plan.upstream;
	x->on_new = x->plan.side == READ_NEW;
	if (!x->on_new)
		read_count(x, READ_LEGACY, x->plan.reason);
	else
		x->t_new = dw_now_us();
	if (x->plan.shadow_pinned && rd->state)
		readstate_shadow(rd->state, SHADOW_SKIPPED);
	if (x->plan.shadow)
		read_shadow_start(c, &ctx);
}

/* The guard's view of a new-system read (SPEC §7.3), once, at its outcome:
 * failed = 5xx, timeout, connect or other upstream failure, or an answer
 * that does not map; latency from the attempt's start. Called while upi
 * is still the new system's. */
static void read_guard_note(struct conn *c, bool failed)
{
	struct exchange *x = c->x;
	int64_t now;

	if (!x->on_new || x->guard_noted)
		return;
	x->guard_noted = true;
	now = dw_now_us();
	guard_note_read(x->cfg->upstreams[x->upi].guard, (unsigned)c->w->id, now / 1000, failed,
			now - x->t_new);
}

/*
 * The new system's attempt failed before the client saw any of it (why):
 * with fallback, start over on the legacy within the same client request
 * and return true; without, return false and let the caller answer as for
 * any upstream (502/504, or the new system's own answer).
 */
static bool read_new_failed(struct conn *c, const char *why)
{
	struct exchange *x = c->x;

	if (!x->route || !x->route->read) /* on_new implies both */
		return false;
	if (x->shadow) { /* the answer the client gets is not the new system's */
		shadow_primary_failed(x->shadow, why);
		x->shadow = NULL;
	}
	if (!x->route->read->fallback || (x->resp_head_done && !x->collect)) {
		read_count(x, READ_NEW, READ_BUCKET);
		return false;
	}
	/* Debug: a failing new system would log every read; the counter
	 * (reason="fallback") and, later, the guards say it once. */
	if (dw_log_enabled(DW_LOG_DEBUG))
		dw_log(DW_LOG_DEBUG, x->reqid, "read %s: new system failed (%s); the legacy answers",
		       x->route->name, why);
	plan_fallback(x->cfg, &x->plan);
	read_count(x, READ_LEGACY, READ_FALLBACK);
	if (x->up) {
		upconn_release(x->up, false);
		x->up = NULL;
	}
	x->upi = x->plan.upstream;
	x->on_new = false;
	x->collect = false;
	free(x->new_target);
	x->new_target = NULL;
	http_head_clear(&x->resp);
	http_scanner_init(&x->rscan);
	x->resp_head_done = false;
	x->up_retried = false;
	x->up_paused = false;
	x->status = 0;
	x->rleft = 0;
	if (x->capture) {
		evbuffer_free(x->capture);
		x->capture = NULL;
	}
	x->capture_overflow = false;
	if (x->held) {
		evbuffer_free(x->held);
		x->held = NULL;
	}
	dispatch(c);
	return true;
}

/* The new system's 2xx could not become the client's answer. */
static void read_unmappable(struct conn *c, const char *why)
{
	char msg[400];

	if (c->x->wnew) { /* a write: the new system has done it */
		write_new_unmappable(c, why);
		return;
	}
	snprintf(msg, sizeof(msg), "upstream \"%s\": answer not mappable: %s",
		 c->x->cfg->upstreams[c->x->upi].name, why);
	read_guard_note(c, true);
	if (read_new_failed(c, msg))
		return;
	respond_error(c, 502, msg, false);
}

/* The mapped answer: the new system's status and headers, but the body,
 * Content-Type and Content-Length of the mapped JSON. */
static void read_answer_mapped(struct conn *c, struct evbuffer *out, const char *body,
			       size_t blen)
{
	struct exchange *x = c->x;
	bool client11 = x->req.version_minor == 1;
	struct evbuffer_iovec v;
	struct dw_text t;

	head_begin(out, x->resp.raw_len + x->resp.nheaders + HEAD_EXTRA + 64, &v, &t);
	dw_text_lit(&t, "HTTP/1.1 ");
	dw_text_u64(&t, (uint64_t)x->status);
	dw_text_lit(&t, " ");
	if (x->resp.reason_len)
		dw_text_put(&t, x->resp.reason, x->resp.reason_len);
	else
		dw_text_str(&t, http_reason(x->status));
	dw_text_lit(&t, "\r\n");
	for (size_t i = 0; i < x->resp.nheaders; i++) {
		const struct http_header *h = &x->resp.headers[i];

		if (!http_is_hop_by_hop(&x->resp, h->name, h->name_len) &&
		    !name_is(h, "Content-Length") && !name_is(h, "Content-Type") &&
		    !name_is(h, "Transfer-Encoding"))
			text_header(&t, h);
	}
	dw_text_lit(&t, "Content-Type: application/json\r\nContent-Length: ");
	dw_text_u64(&t, blen);
	dw_text_lit(&t, "\r\n");
	if (x->close_after)
		dw_text_lit(&t, "Connection: close\r\n");
	else if (!client11)
		dw_text_lit(&t, "Connection: keep-alive\r\n");
	dw_text_lit(&t, "\r\n");
	head_commit(out, &v, &t);
	evbuffer_add(out, body, blen);
}

/* The new system's 2xx is read whole: map it by the route's response. */
static void read_finish_mapped(struct conn *c)
{
	struct exchange *x = c->x;
	size_t n = evbuffer_get_length(x->capture);
	struct dw_err err = {""};
	struct expr_ctx ctx;
	json_error_t je;
	json_t *doc, *mapped = NULL;
	char tenant[72], why[300];
	char *body;
	int rc;

	if (x->wnew) {
		write_new_finish(c);
		return;
	}
	if (!x->route || !x->route->read) { /* collect implies both */
		read_unmappable(c, "no read route");
		return;
	}
	/* Every jansson value of the mapping lives in the worker's arena and is
	 * gone before its end; only the malloc'd text outlives it. */
	json_arena_begin(&c->w->jarena);
	doc = jsonfast_loadb((const char *)evbuffer_pullup(x->capture, -1), n, &je);
	if (!doc) {
		json_arena_end(&c->w->jarena);
		snprintf(why, sizeof(why), "not JSON: %s", je.text);
		read_unmappable(c, why);
		return;
	}
	read_ctx(x, &ctx, tenant, sizeof(tenant));
	ctx.response = doc;
	rc = expr_eval(x->route->read->response, &ctx, &mapped, &err);
	json_decref(doc);
	body = rc == EXPR_OK ? jsonfast_dumps(mapped, NULL) : NULL;
	json_decref(mapped);
	json_arena_end(&c->w->jarena);
	if (rc != EXPR_OK) {
		read_unmappable(c, rc == EXPR_MISSING ? "the mapping found nothing" : err.msg);
		return;
	}
	if (!body) {
		read_unmappable(c, "cannot encode the mapped answer");
		return;
	}
	x->collect = false;
	read_guard_note(c, false);
	read_count(x, READ_NEW, READ_BUCKET);
	if (x->shadow) {
		shadow_primary(x->shadow, x->status, body, strlen(body), false);
		x->shadow = NULL;
	}
	read_answer_mapped(c, conn_out(c), body, strlen(body));
	free(body);
	x->resp_head_done = true;
	count_status(c, x->status);
	conn_set_state(c, CS_RESPONSE);
	response_complete(c);
}

/*
 * The new system's answer head arrived (start_response): decide what
 * becomes of it. Returns false when the attempt was abandoned (the legacy
 * now answers), true to go on: streamed unchanged, or (collect) read whole
 * for the mapping.
 */
static bool read_new_head(struct conn *c)
{
	struct exchange *x = c->x;
	char msg[128];

	if (x->status < 200 || x->status > 299) {
		snprintf(msg, sizeof(msg), "upstream \"%s\" answered %d",
			 x->cfg->upstreams[x->upi].name, x->status);
		read_guard_note(c, x->status >= 500); /* a 4xx is an answer, not a failure */
		if (read_new_failed(c, msg))
			return false;
		return true; /* fallback = false: its own answer */
	}
	if (!x->route->read->response) {
		read_guard_note(c, false);
		read_count(x, READ_NEW, READ_BUCKET);
		return true;
	}
	/* Read whole (to max_body_bytes) into capture; the raw bytes go to a
	 * sink, never to the client. */
	x->collect = true;
	x->capture = evbuffer_new();
	x->held = evbuffer_new();
	if (x->mode == OUT_DECHUNK)
		x->mode = OUT_CHUNKED_PASS; /* decoded into capture all the same */
	x->resp_head_done = true;
	return true;
}

/* ------------------------------------------- write cut-over (authority new) */

/*
 * SPEC §7.5: a route with authority "new" sends the client's write to its
 * mirror's upstream first, built by the route's `request` block; the new
 * system's 2xx answer, mapped by `response`, is the client's answer, and the
 * write is mirrored back to the legacy by `reverse` through the same journal
 * and shards as any mirror (mirror_capture.c takes the block from route_write_mirror),
 * so every guarantee of §5 holds that way round too. A non-2xx answer passes
 * unchanged and nothing is mirrored. A mirrored write that went out to its
 * authority, either one, and got no answer (timeout, reset) has an unknown
 * outcome: its key is recorded beside the queue (cutstate.h) for `dualwrite
 * verify`, and the client gets its 504/502 as always.
 */

/* The expression context of the client's write; req: its body as JSON
 * (NULL: not needed or not JSON). tenant NULL when malformed. */
static void write_new_ctx(struct exchange *x, struct expr_ctx *ctx, const json_t *req,
			  char *tenant, size_t tlen, char *now, size_t nowlen)
{
	read_ctx(x, ctx, tenant, tlen);
	ctx->request = req;
	dw_rfc3339(dw_wall_us(), now, nowlen);
	ctx->now = now;
}

/* Parse the client's body when sources ask for $request: NULL and why when
 * it is not JSON. Every value lives in the worker's arena (begun by the
 * caller). */
static json_t *write_new_request_json(struct exchange *x, unsigned sources, char *why,
				      size_t whylen)
{
	json_error_t je;
	json_t *doc;

	if (!(sources & EXPR_SRC_REQUEST))
		return NULL;
	doc = jsonfast_loadb((const char *)evbuffer_pullup(x->body, -1), evbuffer_get_length(x->body),
			     &je);
	if (!doc)
		snprintf(why, whylen, "request body is not JSON: %s",
			 evbuffer_get_length(x->body) ? je.text : "empty body");
	return doc;
}

/* Point the exchange at the new system with the request block's method,
 * path and body. Returns false when the client was answered (400: the
 * write cannot be built for the new system, which now decides). */
static bool write_new_plan(struct conn *c)
{
	struct exchange *x = c->x;
	const struct dw_route *rt = x->route;
	const struct dw_mirror *rq = rt->request;
	struct dw_err err = {""};
	struct expr_ctx ctx;
	json_t *req = NULL, *body = NULL;
	char tenant[72], now[40], why[640] = "", msg[900];
	char *text = NULL;
	int rc;

	x->wnew = true;
	x->upi = rt->mirror->upstream;
	if (!rq)
		return true; /* the client's request unchanged, to the new system */
	json_arena_begin(&c->w->jarena);
	req = write_new_request_json(x, rq->sources, why, sizeof(why));
	if (!why[0]) {
		write_new_ctx(x, &ctx, req, tenant, sizeof(tenant), now, sizeof(now));
		if ((rq->sources & EXPR_SRC_TENANT) && !ctx.tenant)
			snprintf(why, sizeof(why), "malformed tenant in %s header",
				 x->cfg->tenant.header);
		else if (tmpl_render(rq->path, &ctx, &x->new_target, &err) != EXPR_OK)
			snprintf(why, sizeof(why), "request path: %s", err.msg);
		else if (rq->body && (rc = expr_eval(rq->body, &ctx, &body, &err)) != EXPR_OK)
			snprintf(why, sizeof(why), "request body: %s",
				 rc == EXPR_MISSING ? "its source is missing from the write" : err.msg);
		else if (rq->body && !(text = jsonfast_dumps(body, NULL)))
			snprintf(why, sizeof(why), "request body: cannot encode");
	}
	json_decref(req);
	json_decref(body);
	json_arena_end(&c->w->jarena);
	if (why[0]) {
		free(text);
		snprintf(msg, sizeof(msg), "route %s: the write cannot be built for the new system: %s",
			 rt->name, why);
		respond_error(c, 400, msg, false);
		return false;
	}
	if (rq->method)
		x->new_method = dw_strdup(rq->method);
	if (text) {
		x->new_body = evbuffer_new();
		evbuffer_add(x->new_body, text, strlen(text));
		free(text);
	} /* no body block: the client's body as it came */
	return true;
}

/* The new system's answer head: a 2xx with a `response` is read whole to be
 * mapped (true: nothing goes to the client yet); anything else goes on as
 * any answer (false), mirrored back only if 2xx. */
static bool write_new_head(struct conn *c)
{
	struct exchange *x = c->x;

	if (x->status < 200 || x->status > 299 || !x->route->response)
		return false;
	x->collect = true;
	x->capture = evbuffer_new();
	x->held = evbuffer_new();
	if (x->mode == OUT_DECHUNK)
		x->mode = OUT_CHUNKED_PASS; /* decoded into capture all the same */
	x->resp_head_done = true;
	return true;
}

/* The write is done on the new system: journal its reverse mirror, then
 * answer with the mapped body (held until the journal has it). */
static void write_new_finish(struct conn *c)
{
	struct exchange *x = c->x;
	const struct dw_route *rt = x->route;
	size_t n = evbuffer_get_length(x->capture);
	struct dw_err err = {""};
	struct expr_ctx ctx;
	json_error_t je;
	json_t *doc, *req = NULL, *mapped = NULL;
	char tenant[72], now[40], why[640] = "";
	char *body = NULL;
	int rc;

	if (!rt || !rt->response) { /* wnew with collect implies both */
		write_new_unmappable(c, "no response mapping");
		return;
	}
	json_arena_begin(&c->w->jarena);
	doc = jsonfast_loadb((const char *)evbuffer_pullup(x->capture, -1), n, &je);
	if (!doc)
		snprintf(why, sizeof(why), "not JSON: %s", je.text);
	else
		req = write_new_request_json(x, expr_sources(rt->response), why, sizeof(why));
	if (!why[0]) {
		write_new_ctx(x, &ctx, req, tenant, sizeof(tenant), now, sizeof(now));
		ctx.response = doc;
		rc = expr_eval(rt->response, &ctx, &mapped, &err);
		if (rc != EXPR_OK)
			snprintf(why, sizeof(why), "%s",
				 rc == EXPR_MISSING ? "the mapping found nothing" : err.msg);
		else if (!(body = jsonfast_dumps(mapped, NULL)))
			snprintf(why, sizeof(why), "cannot encode the mapped answer");
	}
	json_decref(doc);
	json_decref(req);
	json_decref(mapped);
	json_arena_end(&c->w->jarena);
	if (why[0] || !body) {
		free(body);
		write_new_unmappable(c, why[0] ? why : "cannot encode the mapped answer");
		return;
	}
	x->collect = false;
	evbuffer_drain(x->held, evbuffer_get_length(x->held)); /* the raw bytes' sink */
	read_answer_mapped(c, x->held, body, strlen(body));
	free(body);
	x->hold = true;
	count_status(c, x->status);
	conn_set_state(c, CS_RESPONSE);
	/* Journaled with the loop iteration's other writes; answered after. */
	do_mirror(c);
	conn_set_state(c, CS_SYNC);
	event_active(c->w->sync_ev, EV_TIMEOUT, 0);
}

/* A 2xx whose answer cannot become the client's (too large, not JSON, not
 * mappable): the new system has the write, so the legacy gets it all the
 * same (reverse mirror; dead-lettered if it needed the unusable answer);
 * the client gets 502. */
static void write_new_unmappable(struct conn *c, const char *why)
{
	char msg[1000];

	snprintf(msg, sizeof(msg), "upstream \"%s\": answer not mappable: %s",
		 c->x->cfg->upstreams[c->x->upi].name, why);
	c->x->collect = false;
	do_mirror(c);
	mirror_commit(c->w->mirror); /* journaled before the client hears */
	respond_error2(c, 502, "answer of the new system not mappable", msg, false);
}

/* No answer came from the authority (the legacy, or with authority "new"
 * the new system) for a mirrored write that went out: it may or may not
 * have been applied, and nothing was mirrored. Record its key durably
 * beside the queue and count it. The key is the route's ordering key when
 * the request alone gives it (e.g. $path.id), else unknown (a create whose
 * id the authority assigns). */
static void write_indeterminate(struct conn *c, const char *why)
{
	struct exchange *x = c->x;
	const struct dw_route *rt = x->route;
	const struct dw_mirror *keyed[2] = {route_write_mirror(rt), rt->mirror};
	struct indet_entry e = {0};
	struct dw_err err = {""};
	struct expr_ctx ctx;
	json_t *req;
	char tenant[72], now[40], labels[200], esc[128], jwhy[400] = "";
	char *key = NULL;

	json_arena_begin(&c->w->jarena);
	req = write_new_request_json(x, EXPR_SRC_REQUEST, jwhy, sizeof(jwhy));
	write_new_ctx(x, &ctx, req, tenant, sizeof(tenant), now, sizeof(now));
	for (size_t i = 0; i < 2 && !key; i++)
		if (keyed[i] && keyed[i]->key &&
		    expr_eval_string(keyed[i]->key, &ctx, &key, &err) != EXPR_OK) {
			free(key);
			key = NULL;
		}
	json_decref(req);
	json_arena_end(&c->w->jarena);

	e.at_us = dw_wall_us();
	e.route = rt->name;
	e.table = rt->table;
	e.key = key;
	e.request_id = x->reqid;
	e.reason = dw_strdup(why);
	if (indet_record(x->cfg->queue.path, &e,
			 x->cfg->queue.durability == QUEUE_DURABILITY_FSYNC, &err) < 0)
		dw_log(DW_LOG_ERROR, x->reqid,
		       "route %s: indeterminate write (key %s) NOT recorded: %s; check it by hand",
		       rt->name, key ? key : "unknown", err.msg);
	else
		dw_log(DW_LOG_WARN, x->reqid,
		       "route %s: indeterminate write: key %s: %s (recorded; `dualwrite verify` "
		       "reports it until the row is equal)",
		       rt->name, key ? key : "unknown", why);
	free(e.reason);
	snprintf(labels, sizeof(labels), "route=\"%s\"",
		 metrics_label_escape(rt->name, esc, sizeof(esc)));
	metric_inc(metrics_counter(c->w->srv->metrics, "dualwrite_indeterminate_total",
				   "Writes whose authoritative answer never came (outcome unknown).",
				   labels));
	free(key);
}

/* Returns false when the caller must stop: the connection closed, or a read
 * moved to the legacy. */
static bool start_response(struct conn *c)
{
	struct worker *w = c->w;
	const struct dw_route *rt = c->x->route;
	bool client11 = c->x->req.version_minor == 1;
	struct evbuffer *out;
	struct evbuffer_iovec v;
	struct dw_text t;

	c->x->status = c->x->resp.status;
	c->x->rkind = http_response_body_kind(&c->x->resp, c->x->req.method);
	c->x->rleft = c->x->resp.content_length;
	c->x->close_after = !c->x->keep_alive || w->draining;
	c->x->mode = OUT_RAW;
	if (c->x->rkind == HTTP_BODY_CHUNKED) {
		c->x->mode = client11 ? OUT_CHUNKED_PASS : OUT_DECHUNK;
		c->x->close_after |= !client11;
		http_chunked_init(&c->x->rchunk, RESP_MAX_HEAD);
	} else if (c->x->rkind == HTTP_BODY_UNTIL_CLOSE) {
		c->x->mode = client11 ? OUT_ENCODE : OUT_RAW;
		c->x->close_after |= !client11;
	}
	if (c->x->on_new) {
		if (!read_new_head(c))
			return false;
		if (c->x->collect)
			return true; /* no head to the client before the mapping */
	}
	if (c->x->wnew && write_new_head(c))
		return true; /* read whole, mapped, answered after the journal */

	if (c->x->shadow && !c->x->capture) /* the served answer, to compare */
		c->x->capture = evbuffer_new();

	/* G1: only an authoritative 2xx is mirrored (the legacy's, or with
	 * authority "new" the new system's, mirrored back by `reverse`). The
	 * write is journaled before the client can see the answer: at once when
	 * the mirror does not need the reply, else after the reply is read
	 * whole (held meanwhile). */
	const struct dw_mirror *wm = rt ? route_write_mirror(rt) : NULL;
	if (wm && c->x->status >= 200 && c->x->status < 300) {
		bool need_resp = ((wm->sources | wm->pin_sources) & EXPR_SRC_RESPONSE) != 0;
		bool fsync = c->x->cfg->queue.durability == QUEUE_DURABILITY_FSYNC;

		if (need_resp || fsync) {
			c->x->hold = true;
			c->x->held = evbuffer_new();
			if (need_resp)
				c->x->capture = evbuffer_new();
		} else {
			/* journaled with this iteration's other records, intents
			 * and closes in one write, before the answer leaves
			 * (conn_flush) */
			do_mirror(c);
			if (TAILQ_EMPTY(&w->flushq))
				event_active(w->flush_ev, EV_TIMEOUT, 0);
		}
	} else if (c->x->intent) {
		/* nothing to mirror: the outcome is known (conn_flush writes the
		 * close before any of the answer leaves) */
		mirror_intent_close(w->mirror, c->x->intent);
		c->x->intent = 0;
	}

	out = c->x->hold ? c->x->held : conn_out(c);
	head_begin(out, c->x->resp.raw_len + c->x->resp.nheaders + HEAD_EXTRA, &v, &t);
	dw_text_lit(&t, "HTTP/1.1 ");
	dw_text_u64(&t, (uint64_t)c->x->status);
	dw_text_lit(&t, " ");
	if (c->x->resp.reason_len)
		dw_text_put(&t, c->x->resp.reason, c->x->resp.reason_len);
	else
		dw_text_str(&t, http_reason(c->x->status));
	dw_text_lit(&t, "\r\n");
	for (size_t i = 0; i < c->x->resp.nheaders; i++) {
		const struct http_header *h = &c->x->resp.headers[i];

		if (!http_is_hop_by_hop(&c->x->resp, h->name, h->name_len))
			text_header(&t, h);
	}
	if (c->x->mode == OUT_CHUNKED_PASS || c->x->mode == OUT_ENCODE)
		dw_text_lit(&t, "Transfer-Encoding: chunked\r\n");
	if (c->x->close_after)
		dw_text_lit(&t, "Connection: close\r\n");
	else if (!client11)
		dw_text_lit(&t, "Connection: keep-alive\r\n");
	dw_text_lit(&t, "\r\n");
	head_commit(out, &v, &t);
	c->x->resp_head_done = true;
	count_status(c, c->x->status);
	conn_set_state(c, CS_RESPONSE);
	if (c->client_gone && !c->x->hold) /* the mirror, if any, is journaled */
		conn_close(c, "client gone");
	return c->state != CS_CLOSED;
}

static void response_complete(struct conn *c)
{
	if (c->client_gone) {
		conn_close(c, "client gone; exchange finished");
		return;
	}
	if (c->x->close_after) {
		conn_finish_close(c); /* writes now, closes once written */
		return;
	}
	conn_flush_later(c, FLUSH_CLIENT);
	conn_next(c);
}

static void response_done(struct conn *c, bool reusable)
{
	struct worker *w = c->w;

	if (c->x->up) {
		reusable = reusable && http_keep_alive(&c->x->resp) &&
			   evbuffer_get_length(bufferevent_get_input(upconn_bev(c->x->up))) == 0;
		upconn_release(c->x->up, reusable);
		c->x->up = NULL;
	}
	histogram_observe(w->h_duration, (double)(dw_now_us() - c->x->t_start) / 1e6);
	if (dw_log_enabled(DW_LOG_DEBUG))
		dw_log(DW_LOG_DEBUG, c->x->reqid, "%.*s %.*s -> %d in %.3f ms route=%s",
		       (int)c->x->req.method_len, c->x->req.method_str, (int)c->x->req.target_len,
		       c->x->req.target, c->x->status, (double)(dw_now_us() - c->x->t_start) / 1e3,
		       c->x->route ? c->x->route->name : "default");
	if (c->x->collect) {
		read_finish_mapped(c);
		return;
	}
	if (c->x->shadow) {
		struct evbuffer *cap = c->x->capture;

		shadow_primary(c->x->shadow, c->x->status,
			       cap ? (const char *)evbuffer_pullup(cap, -1) : NULL,
			       cap ? evbuffer_get_length(cap) : 0, c->x->capture_overflow);
		c->x->shadow = NULL;
	}
	if (c->x->hold) {
		/* Journaled with the other writes of this loop iteration, in one
		 * write (and one fdatasync in fsync mode); answered after that. */
		do_mirror(c);
		conn_set_state(c, CS_SYNC); /* joins w->stateq[CS_SYNC] */
		event_active(w->sync_ev, EV_TIMEOUT, 0);
		return;
	}
	response_complete(c);
}

/* A held answer that outgrew the body limit is released unmapped. */
static void release_hold(struct conn *c)
{
	c->x->capture_overflow = true;
	do_mirror(c); /* dead-letters: the reply is not available to map */
	mirror_commit(c->w->mirror);
	evbuffer_add_buffer(conn_out(c), c->x->held);
	c->x->hold = false;
}

/*
 * Move n body bytes from src to dst. A small body goes behind the head in
 * the head's own chain when that has room, so the answer is one extent and
 * leaves in one send(2) rather than a writev of two (sockio.c); a bigger one
 * moves chain by chain, uncopied.
 */
#define BODY_COPY_MAX 1024
static void body_move(struct evbuffer *src, struct evbuffer *dst, size_t n)
{
	struct evbuffer_iovec v[2];

	if (n && n <= BODY_COPY_MAX && evbuffer_reserve_space(dst, (ev_ssize_t)n, v, 2) == 1) {
		evbuffer_copyout(src, v[0].iov_base, n);
		v[0].iov_len = n;
		evbuffer_commit_space(dst, v, 1);
		evbuffer_drain(src, n);
		return;
	}
	evbuffer_remove_buffer(src, dst, n);
}

/* Where the response body goes: the client, the held answer, or (a read
 * being mapped) the sink beside the capture. */
static struct evbuffer *resp_dst(struct conn *c)
{
	return c->x->hold || c->x->collect ? c->x->held : conn_out(c);
}

/* Returns false when the exchange ended or moved on (the caller stops). */
static bool body_pump(struct conn *c)
{
	struct bufferevent *ub = upconn_bev(c->x->up);
	struct evbuffer *src = bufferevent_get_input(ub);
	struct evbuffer *dst = resp_dst(c);
	struct dw_err err = {""};
	bool done = false;
	size_t used, n;
	int rc;

	switch (c->x->rkind) {
	case HTTP_BODY_NONE:
		done = true;
		break;
	case HTTP_BODY_LENGTH:
		n = evbuffer_get_length(src);
		if ((uint64_t)c->x->rleft < n)
			n = (size_t)c->x->rleft;
		capture_copy(c, src, n);
		body_move(src, dst, n);
		c->x->rleft -= (int64_t)n;
		done = c->x->rleft == 0;
		break;
	case HTTP_BODY_CHUNKED:
		if (c->x->mode == OUT_CHUNKED_PASS) {
			rc = chunked_run(&c->x->rchunk, src, &used, c->x->capture ? capture_emit : noop_emit,
					 c, &err);
			evbuffer_remove_buffer(src, dst, used);
		} else {
			rc = chunked_run(&c->x->rchunk, src, &used, dechunk_emit, c, &err);
			evbuffer_drain(src, used);
		}
		if (rc == HTTP_ERROR) {
			upstream_failed(c, UPERR_PROTOCOL, 502, err.msg);
			return false;
		}
		done = rc == HTTP_OK;
		break;
	case HTTP_BODY_UNTIL_CLOSE:
		n = evbuffer_get_length(src);
		if (n == 0)
			break;
		capture_copy(c, src, n);
		if (c->x->mode == OUT_ENCODE)
			evbuffer_add_printf(dst, "%zx\r\n", n);
		evbuffer_remove_buffer(src, dst, n);
		if (c->x->mode == OUT_ENCODE)
			evbuffer_add(dst, "\r\n", 2);
		break;
	}
	if (c->x->collect) {
		evbuffer_drain(c->x->held, evbuffer_get_length(c->x->held));
		if (c->x->capture_overflow) {
			read_unmappable(c, "larger than max_body_bytes");
			return false;
		}
	}
	if (done) {
		response_done(c, c->x->rkind != HTTP_BODY_UNTIL_CLOSE);
		return false;
	}
	if (c->x->hold && evbuffer_get_length(c->x->held) > c->x->cfg->limits.max_body_bytes + 65536)
		release_hold(c);
	if (!c->x->hold && !c->x->collect) {
		conn_flush(c);
		if (c->state == CS_CLOSED)
			return false;
		if (evbuffer_get_length(bufferevent_get_output(c->bev)) > OUT_HIGH_WATER) {
			upconn_read_pause(c->x->up);
			c->x->up_paused = true;
		}
	}
	return true;
}

static void up_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct dw_err err = {""};

	while (!c->x->resp_head_done) {
		size_t len = evbuffer_get_length(in), n, skip = 0, head_len = 0;
		int status = 0, rc;
		const char *p;
		char msg[600];

		if (len == 0)
			return;
		n = len < RESP_MAX_HEAD + 4096 ? len : RESP_MAX_HEAD + 4096;
		p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
		rc = http_scan_head(&c->x->rscan, p, n, RESP_MAX_HEAD, &skip, &head_len, &status, &err);
		if (rc == HTTP_INCOMPLETE)
			return;
		if (rc == HTTP_OK)
			rc = http_parse_response(&c->x->resp, p + skip, head_len, &status, &err);
		if (rc != HTTP_OK) {
			snprintf(msg, sizeof(msg), "invalid response from upstream: %s", err.msg);
			upstream_failed(c, UPERR_PROTOCOL, 502, msg);
			return;
		}
		evbuffer_drain(in, skip + head_len);
		http_scanner_init(&c->x->rscan);
		if (c->x->resp.status == 101) {
			upstream_failed(c, UPERR_PROTOCOL, 502, "upstream switched protocols");
			return;
		}
		if (c->x->resp.status < 200) { /* interim answers are not forwarded */
			http_head_clear(&c->x->resp);
			continue;
		}
		if (!start_response(c))
			return;
	}
	body_pump(c);
}

static void up_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	const struct dw_upstream *up = &c->x->cfg->upstreams[c->x->upi];
	char msg[300];

	if ((what & BEV_EVENT_EOF) && c->x->resp_head_done && c->x->rkind == HTTP_BODY_UNTIL_CLOSE) {
		if (!body_pump(c))
			return;
		if (c->x->mode == OUT_ENCODE)
			evbuffer_add(resp_dst(c), "0\r\n\r\n", 5);
		response_done(c, false);
		return;
	}
	if (!c->x->resp_head_done && !(what & BEV_EVENT_TIMEOUT) && upconn_reused(c->x->up) &&
	    !c->x->up_retried && evbuffer_get_length(bufferevent_get_input(bev)) == 0 &&
	    method_idempotent(c->x->req.method)) {
		/* The pooled connection was closed under us: once, on a new one. */
		upconn_release(c->x->up, false);
		c->x->up = NULL;
		c->x->up_retried = true;
		dispatch(c);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		snprintf(msg, sizeof(msg), "upstream \"%s\" timed out after %d ms", up->name,
			 up->timeout_ms);
		upstream_failed(c, UPERR_TIMEOUT, 504, msg);
	} else if (what & BEV_EVENT_EOF) {
		snprintf(msg, sizeof(msg), "upstream \"%s\" closed the connection %s", up->name,
			 c->x->resp_head_done ? "mid-response" : "before answering");
		upstream_failed(c, UPERR_RESET, 502, msg);
	} else {
		int e = EVUTIL_SOCKET_ERROR();
		snprintf(msg, sizeof(msg), "upstream \"%s\": %s", up->name,
			 e ? strerror(e) : "connection error");
		upstream_failed(c, UPERR_RESET, 502, msg);
	}
}

/* ------------------------------------------------------ between requests */

static void conn_next(struct conn *c)
{
	struct worker *w = c->w;

	if (c->state == CS_CLOSED)
		return;
	exchange_end(c);
	if (w->draining) {
		conn_finish_close(c);
		return;
	}
	conn_set_state(c, CS_IDLE);
	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
		on_input(c);
	conn_read_resume(c); /* pipelined input was consumed */
}

void proxy_drain_idle(struct worker *w)
{
	struct conn *c, *next;

	for (c = TAILQ_FIRST(&w->conns); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (c->state == CS_IDLE || c->state == CS_PARKED ||
		    (c->state == CS_HEAD && !c->got_bytes))
			conn_close_written(c, "shutting down");
	}
}

void proxy_abort_all(struct worker *w)
{
	struct conn *c;

	w->aborting = true;
	while ((c = TAILQ_FIRST(&w->conns)))
		conn_close(c, "drain deadline passed");
}

void proxy_sync_done(struct worker *w)
{
	struct conn *c;

	/* One write and, in fsync mode, one fdatasync for every answer held in
	 * this loop iteration. A failed one still releases them (G1: the client
	 * is served); mirror_commit counts those writes lost unless delivered. */
	mirror_commit(w->mirror); /* even when every waiter is gone */
	while ((c = TAILQ_FIRST(&w->stateq[CS_SYNC]))) {
		conn_set_state(c, CS_RESPONSE); /* leaves the queue */
		evbuffer_add_buffer(conn_out(c), c->x->held);
		response_complete(c);
	}
}
