/*
 * exchange.h — buffered HTTP/1.1 exchanges with upstreams, on an event loop:
 * the daemon's mirror and shadow, and `dualwrite replay`.
 *
 * An exchange (struct xchg) is one request written whole on a pooled
 * upstream connection (pool.c: connect, TLS, name resolution, idle reuse)
 * and its answer read whole: the head with the strict http_parse scanner
 * (interim 1xx answers skipped), the body by Content-Length, chunked or
 * until close, bounded. It is what the mirror's sends and the shadow's
 * reads and replay's sends do; the proxy's client path streams instead and
 * does not use it.
 *
 * A connection (struct xconn) carries exchanges in order (HTTP/1.1
 * pipelining): each request goes into its output when it is sent (or when
 * the connection is up), and the output is written once per loop iteration
 * (xloop_flush), so the exchanges started in one iteration share one
 * write(2). Answers are matched to requests in order.
 *
 * Deadline: the upstream's timeout_ms, as silence on the connection (the
 * timer restarts at every read; the connect has its own, in pool.c).
 *
 * How an exchange ends (its done callback, exactly once, unless cancelled):
 *   XCHG_ANSWERED        a whole answer: status, head, body (as asked)
 *   XCHG_CONNECT_FAILED  no connection (refused, TLS, no address): every
 *                        exchange on the connection ends so
 *   XCHG_FAILED          the connection broke, or the answer was invalid,
 *                        while this was the one being answered
 *   XCHG_TIMED_OUT       the connection stayed silent for timeout_ms: every
 *                        exchange on it ends so (the target stopped
 *                        answering; none should wait one timeout more)
 *   XCHG_TOO_LARGE       the answer's body outgrew body_max or admit
 *   XCHG_NOT_TAKEN       the upstream did not answer it and it may be sent
 *                        again: it was pipelined behind an answer that
 *                        closed the connection, or behind one that broke
 *                        (the upstream may have seen it: only an owner
 *                        whose requests are safe to resend pipelines).
 *
 * Retry once on another connection: a reused (pooled) connection that
 * turns out closed or reset before a single byte of answer (a keep-alive
 * connection the upstream closed while it was idle) ends its first exchange
 * XCHG_NOT_TAKEN instead of XCHG_FAILED when the exchange has resend_ok and
 * was not retried yet (x->retried is then set: a second time it fails).
 * resend_ok is for requests safe to send twice. The shadow sets it (a
 * read), and so does replay (each send on a connection of its own, with its
 * Idempotency-Key). The mirror does not: its writes carry an Idempotency-Key (SPEC §5
 * G4), so the ones pipelined behind a break go again, but the one being
 * answered when a connection breaks fails and is queued with its key (a
 * target that resets should open the breaker, not get each write twice).
 * The proxy streams and has its own rule for idempotent methods.
 *
 * Ownership: the owner embeds struct xchg (its head, 3 KiB, last) in its
 * own object and keeps it alive until done runs or it cancels it. Callbacks
 * run from the loop; done may send new exchanges, also on the same
 * connection, but must not free that connection (xconn_free). An xconn is
 * owned by the module once opened: it ends by itself (to the pool when it
 * is idle and the answers allowed keep-alive, else closed) and then calls
 * its gone callback, after which the owner forgets it.
 *
 * One event loop: an xloop per loop (its pools and the per-iteration flush).
 */
#ifndef DW_EXCHANGE_H
#define DW_EXCHANGE_H

#include <event2/buffer.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "http_parse.h"

struct dw_config;
struct dw_upstream;
struct pool_set;
struct event_base;
struct upconn;
struct xconn;
struct xchg;

enum xchg_end {
	XCHG_ANSWERED,
	XCHG_CONNECT_FAILED,
	XCHG_FAILED,
	XCHG_TIMED_OUT,
	XCHG_TOO_LARGE,
	XCHG_NOT_TAKEN,
};

/* What is kept of an answer's body. */
enum xchg_body {
	XBODY_EXCERPT, /* its first XCHG_EXCERPT bytes, line breaks as spaces (log lines) */
	XBODY_KEEP,    /* all of it, decoded, in x->body (the owner's evbuffer) */
};

#define XCHG_EXCERPT 200

/* why: for every end but XCHG_ANSWERED, a sentence naming the upstream
 * (valid during the call only). */
typedef void (*xchg_done_fn)(struct xchg *x, enum xchg_end how, const char *why);
/* Put the whole request into out (called when it goes on a connection,
 * again when it is sent again). */
typedef void (*xchg_write_fn)(struct xchg *x, struct evbuffer *out);
/* XBODY_KEEP: n more body bytes arrived; false ends it XCHG_TOO_LARGE. */
typedef bool (*xchg_admit_fn)(struct xchg *x, size_t n);

struct xchg {
	/* set by the owner (after xchg_init) */
	enum http_method method; /* the request's: an answer to HEAD has no body */
	enum xchg_body keep;
	struct evbuffer *body; /* XBODY_KEEP: where the body goes (owner's) */
	size_t body_max;       /* XBODY_KEEP: 0 = no bound but admit */
	bool resend_ok;	       /* see "Retry once" above */
	xchg_write_fn write;
	xchg_done_fn done;
	xchg_admit_fn admit; /* optional */

	/* results */
	int status;
	bool retried; /* sent again after a reused connection closed under it */
	char excerpt[XCHG_EXCERPT + 1];
	size_t excerpt_len;

	/* the module's */
	struct xconn *c;
	TAILQ_ENTRY(xchg) flink; /* c->fifo */
	struct http_scanner scan;
	bool head_done;
	enum http_body_kind kind;
	int64_t left;
	struct http_chunked chunk;
	/* Last: 3 KiB, emptied by the module when the exchange ends; what is
	 * above it is what xchg_init clears. */
	struct http_head head;
};

/* Ready a zeroed or ended exchange for a new use. */
void xchg_init(struct xchg *x);

/* A connection carrying exchanges. The owner may link it into its own list
 * through olink and find itself again through owner. */
typedef void (*xconn_gone_fn)(struct xconn *c);
struct xconn {
	void *owner;
	TAILQ_ENTRY(xconn) olink;
	/* the module's */
	struct xloop *xl;
	struct dw_config *cfg;	      /* reference: keeps up valid */
	const struct dw_upstream *up; /* the first exchange's; same URL for all */
	struct upconn *uc;
	xconn_gone_fn gone;
	bool connected, started, closing, dirty, solo, got_bytes;
	int depth;
	TAILQ_HEAD(, xchg) fifo; /* head: the one being answered */
	TAILQ_ENTRY(xconn) dlink; /* xl->dirty */
};

/* kick: called when an xconn has output for this iteration's flush (the
 * owner then calls xloop_flush once, late in the iteration, e.g. from an
 * event it activates); NULL: the xloop has its own event for it. */
struct xloop *xloop_new(struct event_base *base, struct pool_set *pools,
			void (*kick)(void *arg), void *arg);
/* Write what this iteration's exchanges put in their connections' output. */
void xloop_flush(struct xloop *xl);
/* After every xconn of it is gone or freed. */
void xloop_free(struct xloop *xl);
/* Why the last failed xconn_open/xchg_start failed (valid until the next). */
const char *xloop_failure(const struct xloop *xl);

/* A connection to up for pipelined exchanges (cfg: a reference is taken).
 * NULL when none can even be started (xloop_failure says why). */
struct xconn *xconn_open(struct xloop *xl, struct dw_config *cfg, const struct dw_upstream *up,
			 xconn_gone_fn gone, void *owner);
/* Send x on c (after the ones already on it). */
void xconn_send(struct xconn *c, struct xchg *x);
/* Whether c takes more exchanges (an answer said Connection: close: no). */
static inline bool xconn_open_for_more(const struct xconn *c)
{
	return !c->closing;
}
/* Close c at once: its exchanges are detached without a callback (the owner
 * settles them), gone is not called. */
void xconn_free(struct xconn *c);

/* One exchange on a connection of its own, retried once on a new one when
 * a reused connection was closed under it (resend_ok). -1 when no
 * connection can even be started (xloop_failure says why; done is not
 * called). */
int xchg_start(struct xloop *xl, struct dw_config *cfg, const struct dw_upstream *up,
	       struct xchg *x) DW_MUSTCHECK;
/* Forget x before it ended: no callback. Its own connection (xchg_start) is
 * closed; on a shared one it is only taken out of the line (for shutdown:
 * the connection should be freed too). */
void xchg_cancel(struct xchg *x);

#endif
