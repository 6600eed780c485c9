/*
 * pool — keep-alive connections to upstreams, one pool set per event loop
 * (pool.c says how): connect, TLS, name resolution (resolver.h) and idle
 * reuse. Used by the daemon's proxy and, through exchange.h, by the mirror,
 * the shadow and `dualwrite replay`.
 */
#ifndef DW_POOL_H
#define DW_POOL_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdbool.h>

#include "config.h"
#include "metrics.h"
#include "resolver.h"

struct pool_set;

struct upconn;
typedef void (*upconn_ready_fn)(struct upconn *uc, int error, void *arg);
/* res: where host names are looked up (numeric addresses never are). */
struct pool_set *pool_set_new(struct event_base *base, struct metrics *m, struct resolver *res);
void pool_set_free(struct pool_set *ps);
/*
 * Get a connection to an upstream. An idle pooled one is returned with
 * *connected = true and is usable at once; otherwise a new connection is
 * started, *connected = false, and ready(uc, 0, arg) runs from the loop once
 * it is up, or ready(uc, err, arg) with err = ETIMEDOUT / ECONNREFUSED / ...
 * on failure (the caller then releases it with keep=false). Returns NULL
 * with *err_out set when no connection can even be started; when that is
 * because the host has no known address, *err_out = EHOSTUNREACH and
 * pool_failure(ps) says "cannot resolve HOST: why" (else it is NULL).
 */
struct upconn *pool_get(struct pool_set *ps, const struct dw_upstream *up, upconn_ready_fn ready,
			void *arg, bool *connected, int *err_out);
/* As pool_get, but always a new connection (ready is always called): a
 * retry after a pooled one turned out closed. */
struct upconn *pool_connect(struct pool_set *ps, const struct dw_upstream *up,
			    upconn_ready_fn ready, void *arg, int *err_out);
const char *pool_failure(const struct pool_set *ps);
struct bufferevent *upconn_bev(struct upconn *uc);
/* After ready(uc, EPROTO, ...): why the TLS handshake failed ("TLS
 * certificate verify failed: expired (...)"), NULL when not known. Valid
 * until the release. */
const char *upconn_failure(const struct upconn *uc);
bool upconn_reused(const struct upconn *uc);
/* Before writing a request into the connection's output: upconn_begin; after:
 * upconn_flush, which writes at once on plain sockets and arms the write
 * event only for what the socket did not take (and always for TLS). */
void upconn_begin(struct upconn *uc);
void upconn_flush(struct upconn *uc);
/* Read the connection: readcb(bev, arg) when bytes arrived in the
 * bufferevent's input; eventcb(bev, BEV_EVENT_READING | EOF / ERROR /
 * TIMEOUT, arg) when it ended, failed, or stayed silent for timeout_ms
 * (reset by every read; <= 0: none); write failures also go to eventcb.
 * Replaces earlier callbacks. Pause/resume: back-pressure. */
void upconn_read(struct upconn *uc, bufferevent_data_cb readcb, bufferevent_event_cb eventcb,
		 void *arg, int timeout_ms);
void upconn_read_pause(struct upconn *uc);
void upconn_read_resume(struct upconn *uc);
/* Hand the connection back: keep=true returns it to the idle pool (when the
 * pool has room), false closes it. The caller's callbacks are cleared. */
void upconn_release(struct upconn *uc, bool keep);

#endif
