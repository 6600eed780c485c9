/*
 * worker.c — a worker thread: its event loop, listeners (a dup per worker of
 * the one socket the main thread bound for each address: see listen_bind), its
 * upstream pools, and the messages the main thread sends it (reload, stop,
 * abort). Requests themselves live in proxy.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "worker.h"

/* What a worker holds or is about to take in: the measure of balance. */
static int worker_load(struct worker *w)
{
	return worker_connections(w) + __atomic_load_n(&w->incoming, __ATOMIC_RELAXED);
}

enum { WAKE_RELOAD = 1, WAKE_STOP = 2, WAKE_ABORT = 4, WAKE_ACCEPT = 8 };

/*
 * Every worker's loop waits on the same listening socket (listen_bind), and
 * whichever is running when connections arrive takes them: in a burst (wrk
 * opening 50 keep-alive connections) one worker got them all while the
 * other idled, since the kernel no longer spreads them as SO_REUSEPORT did.
 * So a worker accepts one connection per wake-up, and hands it to the least
 * loaded worker when that one holds at least two fewer.
 */
static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct worker *w = arg, *to = w;
	struct server *srv = w->srv;
	struct listener *ls;
	struct handoff h;
	int load;

	(void)what;
	h.len = sizeof(h.sa);
	h.fd = accept4(lfd, (struct sockaddr *)&h.sa, &h.len, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (h.fd < 0) {
		/* Another worker was faster, or the client left: nothing to do.
		 * EMFILE and friends: log and keep the listener. */
		if (!errno_retriable(errno) && errno != ECONNABORTED)
			log_error("accept: %s", strerror(errno));
		return;
	}
	/* TLS or not, and with which certificate, is this worker's current
	 * snapshot's word: a reload changes it for new connections only. */
	for (ls = w->listeners; ls && ls->fd != lfd; ls = ls->next)
		;
	h.tls = ls ? config_listen_tls(w->cfg, ls->addr) : NULL;
	load = worker_load(w) - 1;
	for (size_t i = 0; i < srv->nworkers; i++) {
		struct worker *o = srv->workers[i];
		int l = worker_load(o);
		if (o != w && l < load && !__atomic_load_n(&o->loop_done, __ATOMIC_ACQUIRE)) {
			to = o;
			load = l;
		}
	}
	if (to == w) {
		proxy_accept(w, h.fd, (struct sockaddr *)&h.sa, (int)h.len, h.tls);
		return;
	}
	/* the snapshot that owns the context may go before `to` takes it in */
	if (h.tls)
		SSL_CTX_up_ref(h.tls);
	__atomic_add_fetch(&to->incoming, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&to->in_lock);
	if (to->nin == to->capin) {
		to->capin = to->capin ? to->capin * 2 : 16;
		to->in = dw_realloc(to->in, to->capin * sizeof(*to->in));
	}
	to->in[to->nin++] = h;
	pthread_mutex_unlock(&to->in_lock);
	wake_post(&to->wake, WAKE_ACCEPT);
}

/* Take in the connections handed over (WAKE_ACCEPT); a draining worker
 * closes them, as a closed listener would have refused them. */
static void take_handoffs(struct worker *w)
{
	struct handoff *v;
	size_t n;

	pthread_mutex_lock(&w->in_lock);
	v = w->in;
	n = w->nin;
	w->in = NULL;
	w->nin = w->capin = 0;
	pthread_mutex_unlock(&w->in_lock);
	for (size_t i = 0; i < n; i++) {
		__atomic_sub_fetch(&w->incoming, 1, __ATOMIC_RELAXED);
		if (w->draining)
			close(v[i].fd);
		else
			proxy_accept(w, v[i].fd, (struct sockaddr *)&v[i].sa, (int)v[i].len,
				     v[i].tls);
		SSL_CTX_free(v[i].tls); /* proxy_accept's SSL holds its own; NULL is a no-op */
	}
	free(v);
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

/* Bind addr exclusively: SO_REUSEADDR (a restart binds through TIME_WAIT),
 * never SO_REUSEPORT, so no other socket can join it. */
static int bind_exclusive(const char *addr, struct dw_err *err)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1;

	if (resolve_listen(addr, &ss, &len, err) < 0)
		return -1;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		dw_err_set(err, "listen %s: %s", addr, strerror(errno));
		return -1;
	}
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 1024) < 0) {
		int e = errno;
		dw_err_set(err, "listen %s: %s%s", addr, strerror(e),
			   e == EADDRINUSE ? " (another process, perhaps another dualwrited, holds it)"
					   : "");
		close(fd);
		return -1;
	}
	return fd;
}

static bool cfg_lists(const struct dw_config *cfg, const char *addr)
{
	for (size_t i = 0; i < cfg->nlisten; i++)
		if (strcmp(cfg->listen[i], addr) == 0)
			return true;
	return false;
}

int listen_bind(struct server *srv, const struct dw_config *cfg, struct dw_err *err)
{
	size_t n0;
	int rc = 0;

	pthread_mutex_lock(&srv->listen_lock);
	n0 = srv->nlsocks;
	srv->lsocks = dw_realloc(srv->lsocks, (n0 + cfg->nlisten + 1) * sizeof(*srv->lsocks));
	for (size_t i = 0; i < cfg->nlisten; i++) {
		bool have = false;
		int fd;

		for (size_t j = 0; j < srv->nlsocks; j++)
			have |= strcmp(srv->lsocks[j].addr, cfg->listen[i]) == 0;
		if (have)
			continue;
		fd = bind_exclusive(cfg->listen[i], err);
		if (fd < 0) {
			rc = -1;
			break;
		}
		srv->lsocks[srv->nlsocks++] = (struct listen_sock){dw_strdup(cfg->listen[i]), fd};
	}
	if (rc < 0) {
		while (srv->nlsocks > n0) {
			struct listen_sock *l = &srv->lsocks[--srv->nlsocks];
			close(l->fd);
			free(l->addr);
		}
	}
	pthread_mutex_unlock(&srv->listen_lock);
	return rc;
}

void listen_prune(struct server *srv, const struct dw_config *cfg)
{
	size_t k = 0;

	pthread_mutex_lock(&srv->listen_lock);
	for (size_t i = 0; i < srv->nlsocks; i++) {
		if (cfg && cfg_lists(cfg, srv->lsocks[i].addr)) {
			srv->lsocks[k++] = srv->lsocks[i];
			continue;
		}
		close(srv->lsocks[i].fd);
		free(srv->lsocks[i].addr);
	}
	srv->nlsocks = k;
	pthread_mutex_unlock(&srv->listen_lock);
}

int listen_dup(struct server *srv, const char *addr, struct dw_err *err)
{
	int fd = -1;

	pthread_mutex_lock(&srv->listen_lock);
	for (size_t i = 0; i < srv->nlsocks; i++) {
		if (strcmp(srv->lsocks[i].addr, addr) != 0)
			continue;
		fd = fcntl(srv->lsocks[i].fd, F_DUPFD_CLOEXEC, 0);
		if (fd < 0)
			dw_err_set(err, "listen %s: dup: %s", addr, strerror(errno));
		break;
	}
	pthread_mutex_unlock(&srv->listen_lock);
	if (fd < 0 && !err->msg[0])
		dw_err_set(err, "listen %s: not bound", addr);
	return fd;
}

/* A worker's listener on its own dup of the shared socket (its fd closed
 * by listener_free). */
static struct listener *listen_on(struct worker *w, const char *addr, struct dw_err *err)
{
	struct listener *l;
	int fd = listen_dup(w->srv, addr, err);

	if (fd < 0)
		return NULL;
	l = dw_calloc(1, sizeof(*l));
	l->fd = fd;
	l->ev = event_new(w->base, fd, EV_READ | EV_PERSIST, accept_cb, w);
	if (!l->ev || event_add(l->ev, NULL) < 0) {
		dw_err_set(err, "listen %s: cannot watch the socket", addr);
		if (l->ev)
			event_free(l->ev);
		close(fd);
		free(l);
		return NULL;
	}
	l->addr = dw_strdup(addr);
	return l;
}

static void listener_free(struct listener *l)
{
	event_free(l->ev);
	close(l->fd);
	free(l->addr);
	free(l);
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
		listener_free(l);
	}
	for (size_t i = 0; i < w->cfg->nlisten; i++) {
		bool have = false;
		for (l = w->listeners; l; l = l->next)
			have |= strcmp(l->addr, w->cfg->listen[i]) == 0;
		if (have)
			continue;
		l = listen_on(w, w->cfg->listen[i], err);
		if (!l) {
			rc = -1;
			continue;
		}
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
		listener_free(l);
	}
}

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

	if (bits & WAKE_ACCEPT)
		take_handoffs(w);
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

/* Every srv->heartbeat_us: this loop turns (the main thread's watchdog
 * check reads the stamp). */
static void beat_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	(void)fd;
	(void)what;
	__atomic_store_n(&w->heartbeat, dw_now_us(), __ATOMIC_RELAXED);
}

/* Test seam (DW_TEST_WEDGE_WORKER_AFTER_MS, see main.c): block this loop, as
 * a callback that never returns would, until the daemon is told to stop. */
static void wedge_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	(void)fd;
	(void)what;
	log_warn("worker %d: wedged on purpose (test seam DW_TEST_WEDGE_WORKER_AFTER_MS) "
		 "until the daemon is stopped",
		 w->id);
	while (!__atomic_load_n(&w->srv->stopping, __ATOMIC_ACQUIRE))
		usleep(10000);
}

int64_t worker_heartbeat(struct worker *w)
{
	if (__atomic_load_n(&w->loop_done, __ATOMIC_ACQUIRE))
		return INT64_MAX;
	return __atomic_load_n(&w->heartbeat, __ATOMIC_RELAXED);
}

struct worker *worker_new(struct server *srv, int id, struct dw_err *err)
{
	struct worker *w = dw_calloc(1, sizeof(*w));
	char labels[64];
	static const char *const kinds[] = {"connect", "timeout", "reset", "protocol"};

	w->srv = srv;
	w->id = id;
	pthread_mutex_init(&w->in_lock, NULL);
	w->base = event_base_new();
	if (!w->base) {
		dw_err_set(err, "worker %d: cannot create an event loop", id);
		free(w);
		return NULL;
	}
	w->cfg = server_config(srv);
	w->pools = pool_set_new(w->base, srv->metrics, srv->resolver);
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
	w->mirror = mirror_new(srv, id, w->base, err);
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
	w->m_tls_failed = metrics_counter(srv->metrics, "dualwrite_tls_handshake_failures_total",
					  "TLS handshakes with clients that failed (no or untrusted "
					  "client certificate, protocol mismatch, ...).",
					  NULL);
	if (srv->heartbeat_us > 0) {
		struct timeval tv = {(time_t)(srv->heartbeat_us / 1000000),
				     (suseconds_t)(srv->heartbeat_us % 1000000)};
		w->beat_ev = event_new(w->base, -1, EV_PERSIST, beat_cb, w);
		event_add(w->beat_ev, &tv);
	}
	/* The last worker: the others and the main loop go on, as when one
	 * request's callback spins. */
	if (srv->wedge_after_ms > 0 && id == srv->cfg->workers - 1) {
		struct timeval tv = {(time_t)(srv->wedge_after_ms / 1000),
				     (suseconds_t)(srv->wedge_after_ms % 1000) * 1000};
		w->wedge_ev = evtimer_new(w->base, wedge_cb, w);
		evtimer_add(w->wedge_ev, &tv);
	}
	/* The main thread bound the sockets (listen_bind); these are dups. */
	if (listeners_sync(w, err) < 0) {
		worker_free(w);
		return NULL;
	}
	return w;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	__atomic_store_n(&w->heartbeat, dw_now_us(), __ATOMIC_RELAXED);
	event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	__atomic_store_n(&w->loop_done, true, __ATOMIC_RELEASE);
	__atomic_fetch_add(&w->srv->workers_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

int worker_start(struct worker *w, struct dw_err *err)
{
	int rc;

	__atomic_store_n(&w->heartbeat, dw_now_us(), __ATOMIC_RELAXED);
	rc = pthread_create(&w->thread, NULL, worker_main, w);
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
	for (size_t i = 0; i < w->nin; i++)
		close(w->in[i].fd); /* handed over after its loop ended */
	free(w->in);
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
	if (w->beat_ev)
		event_free(w->beat_ev);
	if (w->wedge_ev)
		event_free(w->wedge_ev);
	pool_set_free(w->pools);
	for (size_t i = 0; i < w->nseries; i++)
		free(w->series[i].route);
	config_unref(w->cfg);
	event_base_free(w->base);
	pthread_mutex_destroy(&w->in_lock);
	free(w);
}
