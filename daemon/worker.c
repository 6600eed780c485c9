/*
 * worker.c — a worker thread: its event loop, listeners (one SO_REUSEPORT
 * socket per address per worker, so the kernel spreads connections), its
 * upstream pools, and the messages the main thread sends it (reload, stop,
 * abort). Requests themselves live in proxy.c.
 */
#include <errno.h>
#include <event2/listener.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "worker.h"

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct worker *w = arg;
	struct listener *l = w->listeners;

	/* TLS or not, and with which certificate, is the current snapshot's
	 * word: a reload changes it for new connections only. */
	while (l && l->lev != lev)
		l = l->next;
	proxy_accept(w, fd, sa, salen, l ? config_listen_tls(w->cfg, l->addr) : NULL);
}

static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
	int e = EVUTIL_SOCKET_ERROR();

	(void)lev;
	(void)arg;
	/* EMFILE and friends: log and keep the listener; libevent retries. */
	log_error("accept: %s", strerror(e));
}

/* Resolve "host:port" for a listener. */
static int resolve_listen(const char *addr, struct sockaddr_storage *ss, socklen_t *len,
			  struct dw_err *err)
{
	char host[256], port[8];
	int p, rc;
	struct addrinfo hints, *res = NULL;

	if (config_split_hostport(addr, host, sizeof(host), &p, err) < 0)
		return -1;
	snprintf(port, sizeof(port), "%d", p);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
	if (rc != 0 || !res) {
		dw_err_set(err, "listen %s: %s", addr, gai_strerror(rc));
		return -1;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static struct evconnlistener *listen_on(struct event_base *base, const char *addr,
					evconnlistener_cb cb, void *arg, struct dw_err *err)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct evconnlistener *lev;

	if (resolve_listen(addr, &ss, &len, err) < 0)
		return NULL;
	lev = evconnlistener_new_bind(base, cb, arg,
				      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
					  LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT,
				      1024, (struct sockaddr *)&ss, (int)len);
	if (!lev)
		dw_err_set(err, "listen %s: %s", addr, strerror(errno));
	return lev;
}

int listen_probe(const struct dw_config *cfg, const struct dw_config *old, struct dw_err *err)
{
	for (size_t i = 0; i < cfg->nlisten; i++) {
		struct sockaddr_storage ss;
		socklen_t len;
		bool known = false;
		int fd, one = 1;

		for (size_t j = 0; old && j < old->nlisten; j++)
			known |= strcmp(old->listen[j], cfg->listen[i]) == 0;
		if (known)
			continue;
		if (resolve_listen(cfg->listen[i], &ss, &len, err) < 0)
			return -1;
		fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			dw_err_set(err, "listen %s: %s", cfg->listen[i], strerror(errno));
			return -1;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
			dw_err_set(err, "listen %s: %s", cfg->listen[i], strerror(errno));
			close(fd);
			return -1;
		}
		close(fd);
	}
	return 0;
}

/* Make the listener set match w->cfg->listen; keeps the ones that stay. */
static int listeners_sync(struct worker *w, struct dw_err *err)
{
	struct listener **pp = &w->listeners, *l;
	int rc = 0;

	while ((l = *pp)) {
		bool keep = false;
		for (size_t i = 0; i < w->cfg->nlisten; i++)
			keep |= strcmp(w->cfg->listen[i], l->addr) == 0;
		if (keep) {
			pp = &l->next;
			continue;
		}
		*pp = l->next;
		if (w->id == 0)
			log_info("listener %s closed", l->addr);
		evconnlistener_free(l->lev);
		free(l->addr);
		free(l);
	}
	for (size_t i = 0; i < w->cfg->nlisten; i++) {
		bool have = false;
		for (l = w->listeners; l; l = l->next)
			have |= strcmp(l->addr, w->cfg->listen[i]) == 0;
		if (have)
			continue;
		struct evconnlistener *lev = listen_on(w->base, w->cfg->listen[i], accept_cb, w, err);
		if (!lev) {
			rc = -1;
			continue;
		}
		evconnlistener_set_error_cb(lev, accept_error_cb);
		l = dw_calloc(1, sizeof(*l));
		l->addr = dw_strdup(w->cfg->listen[i]);
		l->lev = lev;
		l->next = w->listeners;
		w->listeners = l;
		if (w->id == 0)
			log_info("listening on %s", l->addr);
	}
	return rc;
}

static void listeners_free(struct worker *w)
{
	struct listener *l;

	while ((l = w->listeners)) {
		w->listeners = l->next;
		evconnlistener_free(l->lev);
		free(l->addr);
		free(l);
	}
}

enum { WAKE_RELOAD = 1, WAKE_STOP = 2, WAKE_ABORT = 4 };

static void do_reload(struct worker *w)
{
	struct dw_config *cfg = server_config(w->srv);
	struct dw_err err = {""};

	if (cfg == w->cfg) {
		config_unref(cfg);
		return;
	}
	config_unref(w->cfg);
	w->cfg = cfg;
	if (!w->draining && listeners_sync(w, &err) < 0)
		log_error("worker %d: %s", w->id, err.msg);
	proxy_deadlines(w); /* the timeouts may have changed */
}

/* Drained: no client connection left and every mirror settled (the main
 * thread's drain deadline aborts what takes longer). */
static void check_drained(struct worker *w)
{
	if (w->draining && w->nconns == 0 && !mirror_busy(w->mirror))
		event_base_loopexit(w->base, NULL);
}

static void drain_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	check_drained(arg);
}

static void do_stop(struct worker *w)
{
	struct timeval tick = {0, 50000};
	struct event *ev;

	if (w->draining)
		return;
	w->draining = true;
	listeners_free(w);
	proxy_drain_idle(w);
	ev = event_new(w->base, -1, EV_PERSIST, drain_tick_cb, w);
	event_add(ev, &tick);
	w->drain_tick = ev;
	check_drained(w);
}

static void do_abort(struct worker *w)
{
	proxy_abort_all(w);
	event_base_loopexit(w->base, NULL);
}

static void wake_cb(void *arg, unsigned bits)
{
	struct worker *w = arg;

	if (bits & WAKE_RELOAD)
		do_reload(w);
	if (bits & WAKE_STOP)
		do_stop(w);
	if (bits & WAKE_ABORT)
		do_abort(w);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	proxy_flush_queued(arg);
}

static void sync_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	proxy_sync_done(arg);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	proxy_deadlines(arg);
}

struct worker *worker_new(struct server *srv, int id, struct dw_err *err)
{
	struct worker *w = dw_calloc(1, sizeof(*w));
	char labels[64];
	static const char *const kinds[] = {"connect", "timeout", "reset", "protocol"};

	w->srv = srv;
	w->id = id;
	w->base = event_base_new();
	if (!w->base) {
		dw_err_set(err, "worker %d: cannot create an event loop", id);
		free(w);
		return NULL;
	}
	w->cfg = server_config(srv);
	w->pools = pool_set_new(w->base, srv->metrics);
	TAILQ_INIT(&w->conns);
	for (size_t i = 0; i < DW_ARRAY_LEN(w->stateq); i++)
		TAILQ_INIT(&w->stateq[i]);
	if (wake_init(&w->wake, w->base, wake_cb, w, err) < 0) {
		pool_set_free(w->pools);
		config_unref(w->cfg);
		event_base_free(w->base);
		free(w);
		return NULL;
	}
	w->sync_ev = event_new(w->base, -1, 0, sync_cb, w);
	w->flush_ev = event_new(w->base, -1, 0, flush_cb, w);
	TAILQ_INIT(&w->flushq);
	w->deadline_ev = event_new(w->base, -1, 0, deadline_cb, w);
	w->mirror = mirror_new(srv, w->base, err);
	if (!w->mirror) {
		worker_free(w);
		return NULL;
	}
	srv->mirrors[id] = w->mirror;
	if (getrandom(&w->reqid_seed, sizeof(w->reqid_seed), 0) != sizeof(w->reqid_seed))
		w->reqid_seed = (uint32_t)dw_wall_us() ^ (uint32_t)getpid();
	bucket_rng_seed(&w->rng, ((uint64_t)w->reqid_seed << 32) ^ (uint64_t)dw_wall_us() ^
				     (uint64_t)id);
	w->h_duration = metrics_histogram(srv->metrics, "dualwrite_request_duration_seconds",
					  "Time from request head to the end of the answer.", NULL,
					  metrics_latency_bounds, metrics_latency_nbounds);
	for (int i = 0; i < 4; i++) {
		snprintf(labels, sizeof(labels), "kind=\"%s\"", kinds[i]);
		w->m_upstream_err[i] =
		    metrics_counter(srv->metrics, "dualwrite_upstream_errors_total",
				    "Failed upstream exchanges of proxied requests, by kind.", labels);
	}
	/* Bind in the caller's thread so a bad address fails start-up loudly. */
	if (listeners_sync(w, err) < 0) {
		worker_free(w);
		return NULL;
	}
	return w;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	__atomic_fetch_add(&w->srv->workers_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

int worker_start(struct worker *w, struct dw_err *err)
{
	int rc = pthread_create(&w->thread, NULL, worker_main, w);

	if (rc != 0) {
		dw_err_set(err, "worker %d: pthread_create: %s", w->id, strerror(rc));
		return -1;
	}
	w->started = true;
	return 0;
}

void worker_post_reload(struct worker *w)
{
	wake_post(&w->wake, WAKE_RELOAD);
}

void worker_post_stop(struct worker *w)
{
	wake_post(&w->wake, WAKE_STOP);
}

void worker_post_abort(struct worker *w)
{
	wake_post(&w->wake, WAKE_ABORT);
}

int worker_connections(struct worker *w)
{
	return __atomic_load_n(&w->nconns, __ATOMIC_RELAXED);
}

void worker_join(struct worker *w)
{
	if (w && w->started) {
		pthread_join(w->thread, NULL);
		w->started = false;
	}
	if (w && w->mirror)
		mirror_close(w->mirror);
}

void worker_free(struct worker *w)
{
	if (!w)
		return;
	worker_join(w);
	proxy_abort_all(w);
	/* Let reaps scheduled by the aborts run. */
	event_base_loop(w->base, EVLOOP_NONBLOCK);
	proxy_worker_free(w);
	listeners_free(w);
	if (w->drain_tick)
		event_free(w->drain_tick);
	wake_free(&w->wake);
	event_free(w->sync_ev);
	event_free(w->flush_ev);
	mirror_free(w->mirror);
	event_free(w->deadline_ev);
	pool_set_free(w->pools);
	for (size_t i = 0; i < w->nseries; i++)
		free(w->series[i].route);
	config_unref(w->cfg);
	event_base_free(w->base);
	free(w);
}
