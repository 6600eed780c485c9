/*
 * pool.c — keep-alive connections to upstreams, one pool set per event loop.
 *
 * A pool is keyed by scheme, host and port, so it survives reloads that keep
 * an upstream's address and is simply unused when the address changes. An
 * idle connection keeps reading, so a close by the upstream removes it from
 * the pool at once instead of failing the next request.
 *
 * Addresses: a numeric host is parsed once, when the pool is made, and
 * never looked at again. A host name is resolved by the resolver thread
 * (resolver.c), never here: a new connection first compares the name's
 * generation with the one the pool copied (one atomic load) and copies the
 * addresses again when it moved. While a name has no address yet, pool_get
 * fails at once (pool_failure says why); a failed re-resolve keeps the last
 * good addresses. A connect failure moves the pool to the name's next
 * address and asks the resolver for a fresh answer; when it was refused at
 * once (nothing listens on ::1, say, but on 127.0.0.1), the same connect
 * goes on with the next address, each address tried once. When the addresses
 * change, idle connections made to the old ones are retired (one per get,
 * as those of a replaced TLS context).
 *
 * A plain connection is read by an event of its own (rd_ev), pending from the
 * first read to the close, through requests and idle times alike (no
 * epoll_ctl per request), which reads into the bufferevent's input without
 * libevent's ioctl(FIONREAD) before every read. The bufferevent keeps the
 * buffers, the connect and the writes the socket did not take at once. A TLS
 * connection is read by its bufferevent.
 */
#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/buffer.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "addrset.h"
#include "pool.h"
#include "sockio.h"
#include "tls.h"

struct upconn {
	struct pool *pool;
	struct bufferevent *bev;
	bool reused;
	upconn_ready_fn ready;
	void *arg;
	TAILQ_ENTRY(upconn) link; /* in pool->idle while idle */
	/* upconn_read: plain sockets read through rd_ev */
	bufferevent_data_cb readcb;
	bufferevent_event_cb eventcb;
	void *cbarg;
	struct event rd_ev;
	struct timeval rd_tv; /* rd_ev's timeout; tv_sec < 0: none */
	bool rd_assigned, rd_on, rd_big;
	char *fail; /* why a TLS connect failed (upconn_failure) */
	unsigned epoch; /* pool->epoch when it was connected */
	const struct dw_upstream *up; /* while connecting (the caller's snapshot) */
	size_t tries;		      /* addresses tried for this connect */
};

struct pool {
	struct pool *next;
	struct pool_set *ps;
	char *host; /* with port, tls and sni, the pool's identity */
	char *sni;  /* NULL: host */
	int port;
	bool tls;
	struct dns_name *dns;	 /* NULL: a numeric host, addrs fixed */
	unsigned dns_gen;	 /* dns's generation when addrs and why were copied */
	struct dw_addrset addrs; /* with the port; none: connects fail at once */
	size_t next_addr;	 /* the address the next connect tries */
	unsigned epoch;		 /* bumped when addrs change */
	char why[200];		 /* why dns does not resolve, "" when it does */
	TAILQ_HEAD(, upconn) idle;
	int nidle;
	int max_idle;
	struct metric *m_connects, *m_reused, *m_idle;
};

struct pool_set {
	struct event_base *base;
	struct metrics *metrics;
	struct pool *pools;
	struct resolver *res;
	char fail[300]; /* pool_failure */
};

struct pool_set *pool_set_new(struct event_base *base, struct metrics *m, struct resolver *res)
{
	struct pool_set *ps = dw_calloc(1, sizeof(*ps));

	ps->base = base;
	ps->metrics = m;
	ps->res = res;
	return ps;
}

const char *pool_failure(const struct pool_set *ps)
{
	return ps->fail[0] ? ps->fail : NULL;
}

/* The name's answer moved: copy it (ports set), new epoch if it changed. */
static void pool_refresh(struct pool *p)
{
	struct dw_addrset got;

	p->dns_gen = dns_name_read(p->ps->res, p->dns, &got, p->why, sizeof(p->why));
	for (size_t i = 0; i < got.n; i++) {
		if (got.a[i].ss_family == AF_INET)
			((struct sockaddr_in *)&got.a[i])->sin_port = htons((uint16_t)p->port);
		else
			((struct sockaddr_in6 *)&got.a[i])->sin6_port = htons((uint16_t)p->port);
	}
	if (got.n && !dw_addrset_equal(&got, &p->addrs)) {
		p->addrs = got;
		p->next_addr = 0;
		p->epoch++;
	}
}

/* A connect failed: try the next address next time, and ask for a fresh
 * answer (rate-limited by the resolver). */
static void pool_connect_failed(struct pool *p)
{
	p->next_addr++;
	if (p->dns)
		resolver_kick(p->ps->res, p->dns);
}

static void rd_stop(struct upconn *uc)
{
	if (uc->rd_on)
		event_del(&uc->rd_ev);
	uc->rd_on = false;
}

static void upconn_free(struct upconn *uc)
{
	rd_stop(uc); /* before the socket closes */
	if (uc->bev)
		bufferevent_free(uc->bev);
	free(uc->fail);
	free(uc);
}

#define UP_READ_BIG 65536 /* after a read that filled READ_FIRST (server.h) */

/* rd_ev: bytes, end of stream, an error or the timeout on a plain connection. */
static void upconn_readable_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upconn *uc = arg;
	size_t want = uc->rd_big ? UP_READ_BIG : READ_FIRST;
	ssize_t n;

	if (!uc->readcb) { /* between a reuse and its upconn_read: look later */
		rd_stop(uc);
		return;
	}
	if (what & EV_TIMEOUT) {
		rd_stop(uc);
		uc->eventcb(uc->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, uc->cbarg);
		return;
	}
	n = evbuffer_read_unfrozen(bufferevent_get_input(uc->bev), fd, want);
	if (n > 0) {
		uc->rd_big = (size_t)n >= want;
		uc->readcb(uc->bev, uc->cbarg); /* may release or free uc */
		return;
	}
	if (n < 0 && errno_retriable(errno))
		return;
	rd_stop(uc);
	uc->eventcb(uc->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR),
		    uc->cbarg);
}

void upconn_read(struct upconn *uc, bufferevent_data_cb readcb, bufferevent_event_cb eventcb,
		 void *arg, int timeout_ms)
{
	struct timeval tv = {timeout_ms / 1000, (suseconds_t)(timeout_ms % 1000) * 1000};

	if (uc->pool->tls) {
		bufferevent_setcb(uc->bev, readcb, NULL, eventcb, arg);
		bufferevent_set_timeouts(uc->bev, timeout_ms > 0 ? &tv : NULL,
					 timeout_ms > 0 ? &tv : NULL);
		bufferevent_enable(uc->bev, EV_READ);
		return;
	}
	uc->readcb = readcb;
	uc->eventcb = eventcb;
	uc->cbarg = arg;
	/* write errors and a write that outlasts the timeout come from the bufferevent */
	bufferevent_setcb(uc->bev, NULL, NULL, eventcb, arg);
	bufferevent_set_timeouts(uc->bev, NULL, timeout_ms > 0 ? &tv : NULL);
	if (!uc->rd_assigned) {
		event_assign(&uc->rd_ev, uc->pool->ps->base, bufferevent_getfd(uc->bev),
			     EV_READ | EV_PERSIST, upconn_readable_cb, uc);
		uc->rd_assigned = true;
	}
	uc->rd_tv = tv;
	if (timeout_ms <= 0)
		uc->rd_tv.tv_sec = -1;
	/* on a pending event this only moves the timeout: epoll is not touched */
	event_add(&uc->rd_ev, timeout_ms > 0 ? &tv : NULL);
	uc->rd_on = true;
}

void upconn_read_pause(struct upconn *uc)
{
	if (uc->pool->tls) {
		bufferevent_disable(uc->bev, EV_READ);
	} else {
		rd_stop(uc);
	}
}

void upconn_read_resume(struct upconn *uc)
{
	if (uc->pool->tls) {
		bufferevent_enable(uc->bev, EV_READ);
	} else if (!uc->rd_on && uc->rd_assigned) {
		event_add(&uc->rd_ev, uc->rd_tv.tv_sec >= 0 ? &uc->rd_tv : NULL);
		uc->rd_on = true;
	}
}

void pool_set_free(struct pool_set *ps)
{
	if (!ps)
		return;
	for (struct pool *p = ps->pools, *pn; p; p = pn) {
		struct upconn *uc;

		pn = p->next;
		while ((uc = TAILQ_FIRST(&p->idle))) {
			TAILQ_REMOVE(&p->idle, uc, link);
			upconn_free(uc);
		}
		free(p->host);
		free(p->sni);
		free(p);
	}
	free(ps);
}

static struct pool *pool_find(struct pool_set *ps, const struct dw_upstream *up)
{
	char labels[600];
	struct pool *p;

	/* runs for every request: compare fields, build nothing */
	for (p = ps->pools; p; p = p->next)
		if (p->port == up->port && p->tls == up->tls && strcmp(p->host, up->host) == 0 &&
		    (!p->tls || !p->sni == !up->sni) && (!p->sni || strcmp(p->sni, up->sni) == 0)) {
			p->max_idle = up->pool_size;
			return p;
		}
	p = dw_calloc(1, sizeof(*p));
	p->ps = ps;
	p->host = dw_strdup(up->host);
	p->sni = up->tls && up->sni ? dw_strdup(up->sni) : NULL;
	p->port = up->port;
	p->tls = up->tls;
	p->max_idle = up->pool_size;
	TAILQ_INIT(&p->idle);
	if (!dw_addr_numeric(up->host, up->port, &p->addrs)) {
		p->dns = resolver_name(ps->res, up->host);
		pool_refresh(p);
	}
	snprintf(labels, sizeof(labels), "upstream=\"%s\"", up->name);
	p->m_connects = metrics_counter(ps->metrics, "dualwrite_upstream_connects_total",
					"New connections opened to an upstream.", labels);
	p->m_reused = metrics_counter(ps->metrics, "dualwrite_upstream_reused_total",
				      "Requests sent on a pooled keep-alive connection.", labels);
	p->m_idle = metrics_gauge(ps->metrics, "dualwrite_upstream_idle_connections",
				  "Idle keep-alive connections held in the pools.", labels);
	p->next = ps->pools;
	ps->pools = p;
	return p;
}

static void idle_remove(struct upconn *uc)
{
	TAILQ_REMOVE(&uc->pool->idle, uc, link);
	uc->pool->nidle--;
	metric_add(uc->pool->m_idle, -1);
}

/* An idle connection spoke or closed: it cannot be reused. */
static void idle_read_cb(struct bufferevent *bev, void *arg)
{
	struct upconn *uc = arg;

	(void)bev;
	idle_remove(uc);
	upconn_free(uc);
}

static void idle_event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	idle_read_cb(bev, arg);
}

static void connect_event_cb(struct bufferevent *bev, short what, void *arg);

/* Open a socket to the pool's next address and start connecting uc on it
 * (uc->bev). Returns 0, or -1 with *err_out and no bufferevent left. */
static int upconn_start(struct upconn *uc, int *err_out)
{
	struct pool *p = uc->pool;
	const struct dw_upstream *up = uc->up;
	size_t ai = p->next_addr % p->addrs.n;
	struct timeval tv;
	evutil_socket_t fd;
	int one = 1;

	uc->tries++;
	fd = socket(p->addrs.a[ai].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err_out = errno;
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (p->tls) {
		struct dw_err terr = {""};
		SSL *ssl = up->tls_ctx ? tls_client_new(up->tls_ctx, p->host, p->sni, &terr) : NULL;
		if (!ssl) {
			log_error("upstream \"%s\": %s", up->name,
				  terr.msg[0] ? terr.msg : "no TLS context");
			evutil_closesocket(fd);
			*err_out = EPROTO;
			return -1;
		}
		uc->bev = bufferevent_openssl_socket_new(p->ps->base, fd, ssl,
							 BUFFEREVENT_SSL_CONNECTING,
							 BEV_OPT_CLOSE_ON_FREE);
	} else {
		uc->bev = bufferevent_socket_new(p->ps->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	if (!uc->bev) {
		evutil_closesocket(fd);
		*err_out = ENOMEM;
		return -1;
	}
	tv.tv_sec = up->connect_timeout_ms / 1000;
	tv.tv_usec = (suseconds_t)(up->connect_timeout_ms % 1000) * 1000;
	bufferevent_set_timeouts(uc->bev, NULL, &tv);
	bufferevent_setcb(uc->bev, NULL, NULL, connect_event_cb, uc);
	metric_inc(p->m_connects);
	if (bufferevent_socket_connect(uc->bev, (struct sockaddr *)&p->addrs.a[ai],
				       (int)p->addrs.len[ai]) < 0) {
		*err_out = EVUTIL_SOCKET_ERROR() ? EVUTIL_SOCKET_ERROR() : ECONNREFUSED;
		bufferevent_free(uc->bev);
		uc->bev = NULL;
		pool_connect_failed(p);
		return -1;
	}
	return 0;
}

/* A connect that failed at once (nothing listens there, no route): worth
 * trying the name's next address for the same request. A timeout is not:
 * it spent the connect budget already. */
static bool quick_refusal(int err)
{
	return err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH ||
	       err == EADDRNOTAVAIL || err == EAFNOSUPPORT;
}

static void connect_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct upconn *uc = arg;
	int err = 0;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		err = 0;
	} else if (what & BEV_EVENT_TIMEOUT) {
		err = ETIMEDOUT;
	} else {
		err = EVUTIL_SOCKET_ERROR();
		if (err == 0)
			err = ECONNRESET;
		if (uc->pool->tls) {
			/* Say what failed (expired, hostname mismatch, unknown CA,
			 * ...), not "Protocol error". */
			unsigned long e = bufferevent_get_openssl_error(uc->bev);
			SSL *ssl = bufferevent_openssl_get_ssl(uc->bev);
			char why[300];

			if (e || (ssl && SSL_get_verify_result(ssl) != X509_V_OK)) {
				err = EPROTO;
				free(uc->fail);
				uc->fail = dw_strdup(tls_failure(ssl, e, why, sizeof(why)));
			}
		}
	}
	if (err && err != EPROTO) { /* EPROTO: a certificate, not the address */
		struct pool *p = uc->pool;

		pool_connect_failed(p);
		if (quick_refusal(err) && uc->tries < p->addrs.n) {
			/* the name has more addresses: the next one, same request */
			bufferevent_free(uc->bev);
			uc->bev = NULL;
			free(uc->fail);
			uc->fail = NULL;
			if (upconn_start(uc, &err) == 0)
				return; /* this callback runs again for it */
		}
	}
	if (uc->bev)
		bufferevent_setcb(uc->bev, NULL, NULL, NULL, NULL);
	uc->ready(uc, err, uc->arg);
}

static struct upconn *pool_take(struct pool_set *ps, const struct dw_upstream *up,
				 upconn_ready_fn ready, void *arg, bool idle_ok, bool *connected,
				 int *err_out)
{
	struct pool *p = pool_find(ps, up);
	struct upconn *uc;

	*connected = false;
	*err_out = 0;
	ps->fail[0] = '\0';
	if (p->dns && dns_name_gen(p->dns) != p->dns_gen)
		pool_refresh(p);
	uc = idle_ok ? TAILQ_FIRST(&p->idle) : NULL;
	if (uc && (uc->epoch != p->epoch ||
		   (p->tls &&
		    SSL_get_SSL_CTX(bufferevent_openssl_get_ssl(uc->bev)) != up->tls_ctx))) {
		/* Made with a context a reload replaced, or to an address the
		 * name no longer has: retired (one per get), so new connections
		 * use the new certificates and addresses. */
		idle_remove(uc);
		upconn_free(uc);
		uc = NULL;
	}
	if (uc) {
		idle_remove(uc);
		uc->reused = true;
		uc->ready = ready;
		uc->arg = arg;
		bufferevent_setcb(uc->bev, NULL, NULL, NULL, NULL);
		uc->readcb = NULL; /* rd_ev stays pending until upconn_read */
		uc->eventcb = NULL;
		metric_inc(p->m_reused);
		*connected = true;
		return uc;
	}
	if (p->addrs.n == 0) {
		snprintf(ps->fail, sizeof(ps->fail), "cannot resolve %s: %s", p->host,
			 p->why[0] ? p->why : "no address");
		*err_out = EHOSTUNREACH;
		return NULL;
	}
	uc = dw_calloc(1, sizeof(*uc));
	uc->pool = p;
	uc->epoch = p->epoch;
	uc->ready = ready;
	uc->arg = arg;
	uc->up = up;
	if (upconn_start(uc, err_out) < 0) {
		free(uc);
		return NULL;
	}
	return uc;
}

struct upconn *pool_get(struct pool_set *ps, const struct dw_upstream *up, upconn_ready_fn ready,
			void *arg, bool *connected, int *err_out)
{
	return pool_take(ps, up, ready, arg, true, connected, err_out);
}

struct upconn *pool_connect(struct pool_set *ps, const struct dw_upstream *up,
			    upconn_ready_fn ready, void *arg, int *err_out)
{
	bool connected;

	return pool_take(ps, up, ready, arg, false, &connected, err_out);
}

const char *upconn_failure(const struct upconn *uc)
{
	return uc->fail;
}

struct bufferevent *upconn_bev(struct upconn *uc)
{
	return uc->bev;
}

bool upconn_reused(const struct upconn *uc)
{
	return uc->reused;
}

void upconn_begin(struct upconn *uc)
{
	/* With EV_WRITE disabled, adding to the output does not arm the write
	 * event (an epoll_ctl pair per request); upconn_flush writes at once. */
	if (!uc->pool->tls)
		bufferevent_disable(uc->bev, EV_WRITE);
}

void upconn_flush(struct upconn *uc)
{
	struct evbuffer *out = bufferevent_get_output(uc->bev);

	if (!uc->pool->tls && evbuffer_get_length(out) > 0 &&
	    evbuffer_write_unfrozen(out, bufferevent_getfd(uc->bev)) < 0 &&
	    !errno_retriable(EVUTIL_SOCKET_ERROR())) {
		/* Let the bufferevent hit the error and report it as an event. */
		bufferevent_enable(uc->bev, EV_WRITE);
		return;
	}
	if (uc->pool->tls || evbuffer_get_length(out) > 0)
		bufferevent_enable(uc->bev, EV_WRITE);
}

void upconn_release(struct upconn *uc, bool keep)
{
	struct pool *p = uc->pool;

	if (!keep || p->nidle >= p->max_idle ||
	    evbuffer_get_length(bufferevent_get_input(uc->bev)) != 0) {
		upconn_free(uc);
		return;
	}
	uc->ready = NULL;
	uc->arg = NULL;
	upconn_read(uc, idle_read_cb, idle_event_cb, uc, 60000); /* a close is seen at once */
	TAILQ_INSERT_HEAD(&p->idle, uc, link);
	p->nidle++;
	metric_inc(p->m_idle);
}
