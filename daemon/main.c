/*
 * main.c — process life of dualwrited: options, the first configuration,
 * the journal, the threads, signals (as loop events, never work in a
 * handler), reload, drain and exit. This file is the daemon's top level and
 * the only place that holds process-wide state (struct server).
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "pgforward.h" /* pgforward wiring */
#include "breaker.h"
#include "cutover.h"
#include "cutstate.h"
#include "expr.h"
#include "guard.h"
#include "pgq.h"
#include "jsonarena.h"
#include "server.h"
#include "tls.h"

struct dw_config *server_config(struct server *srv)
{
	struct dw_config *c;

	pthread_mutex_lock(&srv->cfg_lock);
	c = config_ref(srv->cfg);
	pthread_mutex_unlock(&srv->cfg_lock);
	return c;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: dualwrited -c FILE [-t] [-d]\n"
		   "\n"
		   "HTTP/1.1 sidecar that forwards every request to the legacy upstream and\n"
		   "mirrors acknowledged writes to the new one through a durable replay queue.\n"
		   "\n"
		   "  -c, --config FILE  configuration file (libconfig)\n"
		   "  -t, --test         check the configuration, print \"configuration ok\", exit\n"
		   "  -d, --debug        log at debug level (overrides log_level)\n"
		   "  -V, --version      print the version\n"
		   "  -h, --help         this text\n"
		   "\n"
		   "Signals: HUP reloads the configuration, TERM/INT drain and stop.\n");
}

static void print_errors(const char *what, struct dw_errlist *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		log_error("%s%s", what, errs->msgs[i]);
}

/* Mirror outcome series exist from the start, so dashboards see zeros, not
 * gaps; called for the first configuration and each reload. */
static void register_route_series(struct server *srv, const struct dw_config *cfg)
{
	static const char *const results[] = {"delivered", "queued", "dead", "lost"};
	char labels[256], esc[128];

	for (size_t i = 0; i < cfg->nroutes; i++) {
		if (!cfg->routes[i].mirror)
			continue;
		{ /* a mirrored write whose authority never answered (SPEC §7.5) */
			snprintf(labels, sizeof(labels), "route=\"%s\"",
				 metrics_label_escape(cfg->routes[i].name, esc, sizeof(esc)));
			metrics_counter(srv->metrics, "dualwrite_indeterminate_total",
					"Writes whose authoritative answer never came (outcome unknown).",
					labels);
		}
		for (size_t r = 0; r < DW_ARRAY_LEN(results); r++) {
			snprintf(labels, sizeof(labels), "route=\"%s\",result=\"%s\"",
				 metrics_label_escape(cfg->routes[i].name, esc, sizeof(esc)),
				 results[r]);
			metrics_counter(srv->metrics, "dualwrite_mirror_total",
					"Mirrored writes by route and outcome.", labels);
		}
	}
}

/*
 * Write-ahead intents left open by the last run (SPEC §5 G2): each is a write
 * that went to its authority and whose answer this daemon never saw (killed,
 * or stopped past the drain deadline). The authority may have committed it,
 * so it is a write of unknown outcome: recorded as indeterminate (cutstate,
 * for `dualwrite verify`) and counted first, then dead-lettered with the
 * reason and closed, in one write. A crash between the two records it twice
 * at the next start, never not at all.
 */
static void intents_recover(struct server *srv)
{
	const struct dw_config *cfg = srv->cfg;
	struct spool_intent *v;
	size_t n = spool_intents_open(srv->spool, &v);
	char **reasons, labels[256], esc[128];
	uint64_t *seqs;
	struct dw_err err = {""};

	if (n == 0)
		return;
	reasons = dw_calloc(n, sizeof(*reasons));
	seqs = dw_calloc(n, sizeof(*seqs));
	for (size_t i = 0; i < n; i++) {
		const struct dw_route *rt = NULL;
		struct indet_entry e = {0};
		char why[400];

		for (size_t r = 0; r < cfg->nroutes && !rt; r++)
			if (strcmp(cfg->routes[r].name, v[i].route) == 0)
				rt = &cfg->routes[r];
		const char *who = rt && rt->authority == AUTHORITY_NEW ? "new system" : "legacy";
		snprintf(why, sizeof(why), "dualwrited stopped before the %s answered: outcome unknown%s",
			 who,
			 v[i].key ? ""
				  : " (key unknown: the authority assigns it; `dualwrite verify` "
				    "reports the row as missing or extra)");
		reasons[i] = dw_strdup(why);
		e.at_us = v[i].t_us;
		e.route = v[i].route;
		e.table = rt ? rt->table : NULL;
		e.key = v[i].key;
		e.request_id = v[i].request_id;
		e.reason = reasons[i];
		if (indet_record(cfg->queue.path, &e, srv->fsync, &err) < 0)
			log_error("route %s: write %s %s (request %s, key %s) of unknown outcome NOT "
				  "recorded as indeterminate: %s; its dead letter says it",
				  v[i].route, v[i].method ? v[i].method : "?",
				  v[i].target ? v[i].target : "?",
				  v[i].request_id ? v[i].request_id : "-", v[i].key ? v[i].key : "unknown",
				  err.msg);
		snprintf(labels, sizeof(labels), "route=\"%s\"",
			 metrics_label_escape(v[i].route, esc, sizeof(esc)));
		metric_inc(metrics_counter(srv->metrics, "dualwrite_indeterminate_total",
					   "Writes whose authoritative answer never came (outcome "
					   "unknown).",
					   labels));
	}
	if (spool_intents_settle(srv->spool, v, (const char *const *)reasons, n, seqs, &err) < 0)
		log_error("queue: %zu writes of unknown outcome could not be dead-lettered: %s (they "
			  "stay open and are settled at the next start)",
			  n, err.msg);
	for (size_t i = 0; i < n; i++) {
		log_warn("route %s: write %s %s (request %s, key %s): %s; dead-lettered as record "
			 "%" PRIu64 ", recorded as indeterminate (`dualwrite verify` reports it)",
			 v[i].route, v[i].method ? v[i].method : "?", v[i].target ? v[i].target : "?",
			 v[i].request_id ? v[i].request_id : "-", v[i].key ? v[i].key : "unknown",
			 reasons[i], seqs[i]);
		free(reasons[i]);
		spool_intent_clear(&v[i]);
	}
	free(reasons);
	free(seqs);
	free(v);
}

/* verify = false is allowed, and said at every load (SPEC §8). */
static void warn_unverified(const struct dw_config *cfg)
{
	for (size_t i = 0; i < cfg->nupstreams; i++)
		if (cfg->upstreams[i].tls && !cfg->upstreams[i].verify)
			log_warn("upstream \"%s\" (%s): verify = false: its TLS certificate is not "
				 "checked; anyone on the path can impersonate it",
				 cfg->upstreams[i].name, cfg->upstreams[i].url);
}

/* When each TLS listener's certificate expires, for an alert well before
 * (set at every load: a reload with new certificates moves it). */
static void register_tls_series(struct server *srv, const struct dw_config *cfg)
{
	char labels[320], esc[280];

	for (size_t i = 0; i < cfg->nlisten; i++) {
		if (!cfg->listen_tls[i])
			continue;
		snprintf(labels, sizeof(labels), "listen=\"%s\"",
			 metrics_label_escape(cfg->listen[i], esc, sizeof(esc)));
		metric_set(metrics_gauge(srv->metrics, "dualwrite_tls_certificate_expiry_timestamp_seconds",
					 "When a TLS listener's certificate expires (Unix time).", labels),
			   tls_ctx_not_after(cfg->listen_tls[i]));
	}
}

/* How long start-up waits for the first answers of upstream host names. */
#define RESOLVE_START_WAIT_MS 2000

/* ------------------------------------------------------------ reload */

/* At every load: what is valid but probably not meant. */
static void log_config_warnings(const struct dw_config *cfg)
{
	for (size_t i = 0; i < cfg->warnings.n; i++)
		log_warn("%s", cfg->warnings.msgs[i]);
}

static void warn_nonreloadable(void *arg, const char *key)
{
	(void)arg;
	log_warn("reload: '%s' changed; it takes effect only after a restart", key);
}

/* ---- write cut-over gate (SPEC §7.5; lib/cutover.h) ---- */

static int gate_waiting(void *arg, const char *upstream, uint64_t *queued, uint64_t *dead,
			struct dw_err *err)
{
	struct server *srv = arg;
	struct dw_err rerr = {""};
	struct dw_config *cfg;
	struct pgq_stats ps = {0};
	struct pgq *q;
	int r;

	if (spool_refresh(srv->spool, &rerr) < 0) /* what `dualwrite replay` just drained */
		log_warn("queue: %s", rerr.msg);
	if (spool_upstream_waiting(srv->spool, upstream, queued, dead, err) < 0)
		return -1;
	cfg = server_config(srv);
	if (!cfg->queue.postgres) {
		config_unref(cfg);
		return 0;
	}
	/* The fleet queue owns what was forwarded there. A reload is rare and
	 * runs on the main thread, so one blocking connection (3 s connect
	 * timeout) is acceptable; an unreachable PostgreSQL refuses the flip. */
	q = pgq_open(cfg->queue.postgres, cfg->queue.table, err);
	r = q && pgq_stats(q, &upstream, 1, &ps, err) == 0 ? 0 : -1;
	pgq_close(q);
	config_unref(cfg);
	*queued += (uint64_t)ps.queued;
	*dead += (uint64_t)ps.dead;
	return r;
}

/*
 * Guards seam: whether a guard of upstream is tripped, for the reload gate.
 * Today it reads the guards' latch file (guards.json beside the queue, which
 * the guards module writes on every trip and reset); when the guards module
 * is in this daemon, this is where the lead connects its in-memory state
 * (guard_tripped on the daemon's guard table), keeping the file as the
 * fallback. An unreadable latch file counts as tripped, as for the guards.
 */
static bool gate_guard_tripped(void *arg, const char *upstream, char *why, size_t whylen)
{
	struct server *srv = arg;
	const struct guard_up *g = srv->guards ? guard_find(srv->guards, upstream) : NULL;

	if (!g || g->latch.state != GUARD_TRIPPED)
		return false;
	snprintf(why, whylen, "%s", g->latch.reason);
	return true;
}

/* Since when each read route stands at 100 % (`dualwrite cutover check`):
 * its configured weight at every load, beside the queue. */
static void record_read_weights(const struct dw_config *cfg)
{
	int64_t now = dw_wall_us();

	for (size_t i = 0; i < cfg->nroutes; i++) {
		struct dw_err err = {""};

		if (cfg->routes[i].read &&
		    reads100_record(cfg->queue.path, cfg->routes[i].name, cfg->routes[i].read->weight,
				    now, &err) < 0)
			log_warn("cutover: %s (cutover check cannot tell how long reads stood at "
				 "100 %%)",
				 err.msg);
	}
}

static void do_reload(struct server *srv)
{
	struct dw_errlist errs = {0};
	struct dw_config *neu, *old;
	struct dw_err err = {""};

	sd_notifyf("RELOADING=1\nMONOTONIC_USEC=%" PRId64 "\nSTATUS=reloading", dw_now_us());
	log_info("reload: reading %s", srv->conf_path);
	neu = config_load(srv->conf_path, &errs);
	if (!neu) {
		print_errors("reload rejected, keeping the running configuration: ", &errs);
		snprintf(srv->last_reload_error, sizeof(srv->last_reload_error), "%s",
			 errs.n ? errs.msgs[0] : "the configuration cannot be loaded");
		dw_errlist_free(&errs);
		goto failed;
	}
	log_config_warnings(neu);
	old = server_config(srv);
	/* A paused upstream's weights may not rise (SPEC §7.3); a flip to
	 * authority "new" passes the cut-over gates (SPEC §7.5). */
	struct cutover_probe probe = {gate_waiting, gate_guard_tripped, srv};
	if (guards_reload_check(srv, old, neu, &err) < 0 || cutover_gate(old, neu, &probe, &err) < 0 ||
	    listen_bind(srv, neu, &err) < 0) {
		log_error("reload rejected, keeping the running configuration: %s", err.msg);
		snprintf(srv->last_reload_error, sizeof(srv->last_reload_error), "%s", err.msg);
		config_unref(old);
		config_unref(neu);
		goto failed;
	}
	/* the new snapshot keeps the start-up values of what needs a restart */
	config_keep_nonreloadable(neu, old, warn_nonreloadable, NULL);
	warn_unverified(neu);
	/* trips cleared by a changed weight, and neu's upstreams bound to
	 * their guards before the read table reads them */
	guards_reload_bind(srv, old, neu);
	config_unref(old);
	register_route_series(srv, neu);
	register_tls_series(srv, neu);
	if (!srv->log_debug)
		dw_log_set_level(neu->log_level); /* reloadable, like the routes */
	/* From here every read that starts uses the new weights, even on a
	 * worker that has not taken the new snapshot yet. */
	readstate_bind(srv->reads, neu);
	pthread_mutex_lock(&srv->cfg_lock);
	old = srv->cfg;
	srv->cfg = neu;
	pthread_mutex_unlock(&srv->cfg_lock);
	config_unref(old); /* freed when the last request on it finishes */
	resolver_configure(srv->resolver, neu); /* before a worker can use a new name */
	for (size_t i = 0; i < srv->nworkers; i++)
		worker_post_reload(srv->workers[i]);
	listen_prune(srv, neu);
	record_read_weights(neu);
	metric_inc(srv->m_reload_ok);
	srv->generation++;
	srv->last_reload_error[0] = '\0';
	log_info("reload: configuration applied (%zu routes)", neu->nroutes);
	sd_notifyf("READY=1\nSTATUS=serving, configuration reloaded");
	return;
failed:
	metric_inc(srv->m_reload_failed);
	sd_notifyf("READY=1\nSTATUS=serving; last reload failed, see the log");
}

/* ------------------------------------------------------------ stopping */


static void stop_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	if (__atomic_load_n(&srv->workers_done, __ATOMIC_ACQUIRE) == (int)srv->nworkers)
		event_base_loopexit(srv->base, NULL);
}

static void stop_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	log_warn("drain deadline passed: closing what is still open");
	for (size_t i = 0; i < srv->nworkers; i++)
		worker_post_abort(srv->workers[i]);
}

static void begin_stop(struct server *srv, const char *why)
{
	struct dw_config *cfg = server_config(srv);
	struct timeval tick = {0, 20000};
	struct timeval dl = {cfg->limits.drain_timeout_ms / 1000,
			     (suseconds_t)(cfg->limits.drain_timeout_ms % 1000) * 1000};

	config_unref(cfg);
	if (srv->stopping) {
		/* Everything journaled stays PENDING and is recovered as queued. */
		log_warn("%s again: exiting without draining", why);
		_exit(0);
	}
	__atomic_store_n(&srv->stopping, true, __ATOMIC_RELEASE);
	sd_notifyf("STOPPING=1\nSTATUS=draining");
	log_info("%s: no new connections; draining in-flight requests and mirrors", why);
	admin_stop(srv);
	listen_prune(srv, NULL); /* the sockets close as the workers let go */
	for (size_t i = 0; i < srv->nworkers; i++)
		worker_post_stop(srv->workers[i]);
	srv->stop_tick = event_new(srv->base, -1, EV_PERSIST, stop_tick_cb, srv);
	event_add(srv->stop_tick, &tick);
	srv->stop_deadline = evtimer_new(srv->base, stop_deadline_cb, srv);
	evtimer_add(srv->stop_deadline, &dl);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;

	(void)what;
	if (sig == SIGHUP) {
		if (!srv->stopping)
			do_reload(srv);
	} else {
		begin_stop(srv, sig == SIGTERM ? "SIGTERM" : "SIGINT");
	}
}

/* WATCHDOG=1 only while every worker's loop turns: the main loop alone
 * going on says nothing about a worker stuck in a callback, and systemd's
 * restart is the way out of that. Said once per change of state, in the
 * log and in systemd's STATUS. */
static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	int64_t now = dw_now_us(), worst = 0;
	size_t who = 0;

	(void)fd;
	(void)what;
	for (size_t i = 0; i < srv->nworkers; i++) {
		int64_t beat = worker_heartbeat(srv->workers[i]);
		if (beat != INT64_MAX && now - beat > worst) {
			worst = now - beat;
			who = i;
		}
	}
	if (worst > srv->wd_stale_us) {
		if (!srv->wd_withheld) {
			log_error("watchdog: worker %zu has not turned its event loop for %" PRId64
				  " ms: WATCHDOG=1 withheld, so systemd restarts the daemon "
				  "when WatchdogSec passes",
				  who, worst / 1000);
			sd_notifyf("STATUS=worker %zu stalled for %" PRId64 " ms; watchdog withheld",
				   who, worst / 1000);
		}
		srv->wd_withheld = true;
		return;
	}
	if (srv->wd_withheld) {
		log_warn("watchdog: every worker turns its loop again");
		sd_notifyf("STATUS=serving");
		srv->wd_withheld = false;
	}
	sd_notifyf("WATCHDOG=1");
}

#define LOG_FLUSH_MS 100

static void log_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	fflush(stderr);
}

static void pins_final(void *arg, const uint64_t *seqs, size_t n, bool *out)
{
	spool_final(arg, seqs, n, out);
}

/* Catch up with the journal (what `dualwrite replay` delivered, so drained
 * keys flow again) and set the queue gauges: the one place that does both,
 * for the 1 s tick and for the admin endpoint. */
void server_queue_refresh(struct server *srv, struct spool_stats *st)
{
	struct dw_err err = {""};
	struct dw_errlist warns = {0};

	if (spool_refresh(srv->spool, &err) < 0)
		log_warn("queue: %s", err.msg);
	/* What the refresh found (damage among it) is logged at once, from
	 * whichever caller made it: the tick or an admin request. */
	spool_take_warnings(srv->spool, &warns);
	print_errors("queue: ", &warns);
	dw_errlist_free(&warns);
	spool_stats(srv->spool, st);
	metric_set(srv->m_queue_depth, (int64_t)(st->queued + st->pending));
	metric_set(srv->m_queue_dead, (int64_t)st->dead);
	metric_set(srv->m_queue_bytes, (int64_t)st->bytes);
	/* The spool's own count only grows (it lives as long as the daemon). */
	metric_set(srv->m_queue_damaged, (int64_t)st->damaged);
	metric_set(srv->m_queue_oldest,
		   st->oldest_waiting_us ? (dw_wall_us() - st->oldest_waiting_us) / 1000000 : 0);
	/* Writes delivered by `dualwrite replay` (or purged, forwarded) no
	 * longer pin their keys. */
	if (srv->pins)
		pinset_sweep(srv->pins, pins_final, srv->spool);
}

/*
 * Read-your-writes at start-up: every write waiting in the queue (queued,
 * dead, or pending from a run that died) pins its ordering key until it is
 * delivered or purged. The queue does not keep a write's pins (the extra
 * keys of its route's `pins`), so a waiting write of a route that declares
 * pins pins every key each pin could have named: the keys that begin with
 * the pin's literal text ("user:" for "user:${$request.user_id}"; a pin
 * with none pins every read of its upstream, pinset.h), the safe side,
 * until it is delivered. Reads each waiting record once.
 */
static void pins_rebuild(struct server *srv)
{
	size_t n = spool_list(srv->spool, 0, NULL, 0), got, nwide = 0, nkeys = 0;
	uint64_t *seqs;

	if (!n)
		return;
	seqs = dw_calloc(n, sizeof(*seqs));
	got = spool_list(srv->spool, 0, seqs, n);
	for (size_t i = 0; i < got && i < n; i++) {
		struct spool_record r;
		struct dw_err err = {""};
		const struct dw_route *rt = NULL;
		const struct dw_mirror *mm;

		if (spool_read(srv->spool, seqs[i], &r, &err) < 0)
			continue; /* gone meanwhile (damage is reported by the queue) */
		for (size_t k = 0; k < srv->cfg->nroutes; k++)
			if (srv->cfg->routes[k].name && r.route &&
			    strcmp(srv->cfg->routes[k].name, r.route) == 0)
				rt = &srv->cfg->routes[k];
		if (!r.upstream) {
			spool_record_clear(&r);
			continue;
		}
		mm = rt && rt->mirror && rt->mirror->npins ? rt->mirror : NULL;
		if (mm) {
			for (size_t k = 0; k < mm->npins; k++)
				pinset_prefix_add(srv->pins, r.upstream, mm->pin_prefix[k], 1);
			nwide++;
		}
		if (r.key) {
			pinset_add(srv->pins, r.upstream, r.key);
			nkeys++;
		}
		if (r.key || mm)
			pinset_park(srv->pins, r.seq, r.upstream, (const char *const *)&r.key,
				    r.key ? 1 : 0, mm ? (const char *const *)mm->pin_prefix : NULL,
				    mm ? mm->npins : 0, false);
		spool_record_clear(&r);
	}
	free(seqs);
	if (nkeys || nwide)
		log_info("read-your-writes: %zu waiting writes pin their keys until delivered; "
			 "%zu of routes with pins pin every key their pins could name",
			 nkeys, nwide);
}

static void guard_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	guards_tick(arg);
}

static void queue_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	struct spool_stats st;

	(void)fd;
	(void)what;
	server_queue_refresh(srv, &st);
	spool_reap(srv->spool);
}

/* ------------------------------------------------------------ start-up */

static void server_metrics(struct server *srv)
{
	struct metrics *m = srv->metrics;

	srv->m_conns_active = metrics_gauge(m, "dualwrite_connections_active",
					    "Client connections open now.", NULL);
	srv->m_conns_total = metrics_counter(m, "dualwrite_connections_total",
					     "Client connections accepted.", NULL);
	srv->m_conns_rejected = metrics_counter(
	    m, "dualwrite_connections_rejected_total",
	    "Client connections refused because max_connections was reached.", NULL);
	srv->m_reload_ok = metrics_counter(m, "dualwrite_config_reloads_total",
					   "Configuration reloads by result.", "result=\"ok\"");
	srv->m_reload_failed = metrics_counter(m, "dualwrite_config_reloads_total",
					       "Configuration reloads by result.",
					       "result=\"failed\"");
	srv->m_queue_depth = metrics_gauge(m, "dualwrite_queue_depth",
					   "Mirrored writes waiting in the replay queue.", NULL);
	srv->m_queue_dead = metrics_gauge(m, "dualwrite_queue_dead",
					  "Dead-lettered writes in the queue.", NULL);
	srv->m_queue_bytes = metrics_gauge(m, "dualwrite_queue_bytes",
					   "Bytes of queue segments on disk.", NULL);
	srv->m_queue_oldest =
	    metrics_gauge(m, "dualwrite_queue_oldest_age_seconds",
			  "Age of the oldest write waiting in the queue.", NULL);
	srv->m_queue_syncs = metrics_counter(
	    m, "dualwrite_queue_syncs_total",
	    "Queue fdatasyncs made before releasing answers (durability \"fsync\").", NULL);
	srv->m_queue_damaged = metrics_counter(
	    m, "dualwrite_queue_damaged_total",
	    "Queue records (or damaged regions, where the records are unknown) found lost to "
	    "damage: corrupt frames, cut or removed segments, a removed queue directory.",
	    NULL);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'}, {"test", no_argument, NULL, 't'},
	    {"debug", no_argument, NULL, 'd'},	      {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},	      {NULL, 0, NULL, 0},
	};
	struct server srv;
	struct dw_errlist errs = {0};
	struct dw_err err = {""};
	struct spool_opts so;
	struct spool_stats st;
	struct event *sigs[3], *wd = NULL, *qtick, *gtick, *lflush;
	const char *path = NULL;
	bool test = false, debug = false;
	int opt, rc = 1;
	unsigned char rnd[8];

	json_arena_install(); /* before any jansson value exists */
	while ((opt = getopt_long(argc, argv, "c:tdVh", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 't':
			test = true;
			break;
		case 'd':
			debug = true;
			break;
		case 'V':
			printf("dualwrited %s\n", DW_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!path || optind != argc) {
		fprintf(stderr, "dualwrited: %s\n", path ? "unexpected argument" : "-c FILE is required");
		usage(stderr);
		return 2;
	}

	memset(&srv, 0, sizeof(srv));
	/* Request-scoped info lines (the mirror access log, one per mirrored
	 * write) are buffered and flushed every LOG_FLUSH_MS; operational lines,
	 * warnings and errors are written at once (see dw_vlog). */
	setvbuf(stderr, NULL, _IOFBF, 1 << 16);
	srv.cfg = config_load(path, &errs);
	if (!srv.cfg) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.msgs[i]);
		dw_errlist_free(&errs);
		return 2;
	}
	if (test) {
		for (size_t i = 0; i < srv.cfg->warnings.n; i++)
			fprintf(stderr, "warning: %s\n", srv.cfg->warnings.msgs[i]);
		for (size_t i = 0; i < srv.cfg->nupstreams; i++)
			if (srv.cfg->upstreams[i].tls && !srv.cfg->upstreams[i].verify)
				fprintf(stderr, "%s:%d: upstream \"%s\": warning: verify = false\n",
					path, srv.cfg->upstreams[i].line, srv.cfg->upstreams[i].name);
		printf("configuration ok\n");
		config_unref(srv.cfg);
		return 0;
	}
	srv.log_debug = debug;
	dw_log_set_level(debug ? DW_LOG_DEBUG : srv.cfg->log_level);
	log_config_warnings(srv.cfg);
	warn_unverified(srv.cfg);
	signal(SIGPIPE, SIG_IGN);
	/* No evthread_use_pthreads(): each loop is touched by its own thread
	 * only (cross-thread requests go through wake.c), so event_add takes no
	 * lock. */
	pthread_mutex_init(&srv.cfg_lock, NULL);
	pthread_mutex_init(&srv.listen_lock, NULL);
	srv.conf_path = dw_strdup(path);
	srv.metrics = metrics_new();
	srv.generation = 1;
	srv.pins = pinset_new();
	srv.breakers = breaker_table_new();
	srv.started_wall_us = dw_wall_us();
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
		memcpy(rnd, &srv.started_wall_us, sizeof(rnd));
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(srv.instance + 2 * i, 3, "%02x", rnd[i]);
	server_metrics(&srv);
	journal_health_init(&srv);
	register_route_series(&srv, srv.cfg);
	register_tls_series(&srv, srv.cfg);

	memset(&so, 0, sizeof(so));
	so.max_bytes = srv.cfg->queue.max_bytes;
	so.fsync = srv.cfg->queue.durability == QUEUE_DURABILITY_FSYNC;
	so.owner = true;
	srv.fsync = so.fsync;
	so.reap_later = true; /* queue_tick_cb frees spent segments, not a worker */
	srv.spool = spool_open(srv.cfg->queue.path, &so, &err);
	if (!srv.spool) {
		log_error("queue %s: %s", srv.cfg->queue.path, err.msg);
		goto out;
	}
	intents_recover(&srv);
	spool_take_warnings(srv.spool, &errs);
	print_errors("queue: ", &errs);
	dw_errlist_free(&errs);
	spool_stats(srv.spool, &st);
	metric_set(srv.m_queue_damaged, (int64_t)st.damaged); /* what opening found */
	/* The guards' latches (kept beside the queue) before the first read
	 * route is bound: a trip survives the restart. */
	if (guards_start(&srv, &err) < 0) {
		log_error("guard: %s", err.msg);
		goto out;
	}
	srv.reads = readstate_new(srv.metrics);
	readstate_bind(srv.reads, srv.cfg);
	pins_rebuild(&srv);
	if (st.queued)
		log_warn("queue %s holds %" PRIu64 " writes for replay (from earlier runs or "
			 "failures): run `dualwrite replay`",
			 srv.cfg->queue.path, st.queued);
	/* Starting with authority "new" is not a flip (nothing ran before), but
	 * say so when a reload would have refused it. */
	{
		struct cutover_probe probe = {gate_waiting, gate_guard_tripped, &srv};
		struct dw_err gerr = {""};

		if (cutover_gate(NULL, srv.cfg, &probe, &gerr) < 0)
			log_warn("start-up: %s; starting anyway (a reload would refuse this flip)",
				 gerr.msg);
	}
	/* pgforward wiring: failed mirrors move on to the shared PostgreSQL queue */
	if (srv.cfg->queue.postgres && !(srv.pgfwd = pgforward_start(&srv, &err))) {
		log_error("%s", err.msg);
		goto out;
	}

	srv.base = event_base_new();
	if (!srv.base) {
		log_error("cannot create the main event loop");
		goto out;
	}
	if (listen_bind(&srv, srv.cfg, &err) < 0) {
		log_error("%s", err.msg);
		goto out;
	}
	/* systemd's watchdog: main checks (and notifies) every WATCHDOG_USEC/2,
	 * workers stamp every WATCHDOG_USEC/4, and a stamp older than
	 * WATCHDOG_USEC/2 is a stalled worker. */
	const char *wdu = getenv("WATCHDOG_USEC");
	if (wdu && atoll(wdu) > 0) {
		srv.wd_stale_us = atoll(wdu) / 2;
		srv.heartbeat_us = srv.wd_stale_us / 2 > 1000 ? srv.wd_stale_us / 2 : 1000;
	}
	/* Test seam, documented in the README: wedge the last worker's loop this
	 * many ms after start (until the daemon is stopped), to show the
	 * watchdog noticing. Unset in production; read once, here. */
	const char *wedge = getenv("DW_TEST_WEDGE_WORKER_AFTER_MS");
	if (wedge && atoll(wedge) > 0) {
		srv.wedge_after_ms = atoll(wedge);
		log_warn("test seam DW_TEST_WEDGE_WORKER_AFTER_MS=%" PRId64
			 ": worker %d will be wedged on purpose",
			 srv.wedge_after_ms, srv.cfg->workers - 1);
	}
	/* Upstream host names: looked up by their own thread, never on a loop.
	 * Start-up waits a little for the first answers (names in /etc/hosts
	 * take microseconds), so the first requests do not fail for a lookup
	 * still in flight; a slow or failing DNS only delays the start by this
	 * bound: those names are retried in the background. */
	srv.resolver = resolver_new(&err);
	if (!srv.resolver) {
		log_error("%s", err.msg);
		goto out;
	}
	resolver_configure(srv.resolver, srv.cfg);
	(void)resolver_wait_ready(srv.resolver, RESOLVE_START_WAIT_MS);
	srv.workers = dw_calloc((size_t)srv.cfg->workers, sizeof(struct worker *));
	srv.mirrors = dw_calloc((size_t)srv.cfg->workers, sizeof(struct mirror *));
	for (int i = 0; i < srv.cfg->workers; i++) {
		srv.workers[i] = worker_new(&srv, i, &err);
		if (!srv.workers[i]) {
			log_error("%s", err.msg);
			goto out;
		}
		srv.nworkers++;
	}
	srv.nmirrors = srv.nworkers; /* fixed from here on: a key's home never moves */
	if (admin_start(&srv, &err) < 0) {
		log_error("%s", err.msg);
		goto out;
	}
	for (size_t i = 0; i < srv.nworkers; i++)
		if (worker_start(srv.workers[i], &err) < 0) {
			log_error("%s", err.msg);
			begin_stop(&srv, "start-up failure");
			break;
		}

	int signos[3] = {SIGHUP, SIGTERM, SIGINT};
	for (int i = 0; i < 3; i++) {
		sigs[i] = evsignal_new(srv.base, signos[i], signal_cb, &srv);
		event_add(sigs[i], NULL);
	}
	if (srv.heartbeat_us > 0) {
		int64_t half = srv.wd_stale_us;
		struct timeval tv = {(time_t)(half / 1000000), (suseconds_t)(half % 1000000)};
		wd = event_new(srv.base, -1, EV_PERSIST, watchdog_cb, &srv);
		event_add(wd, &tv);
	}
	struct timeval one = {1, 0};
	qtick = event_new(srv.base, -1, EV_PERSIST, queue_tick_cb, &srv);
	event_add(qtick, &one);
	struct timeval gevery = {0, (suseconds_t)GUARD_TICK_MS * 1000};
	gtick = event_new(srv.base, -1, EV_PERSIST, guard_tick_cb, &srv);
	event_add(gtick, &gevery);
	struct timeval flush_every = {0, (suseconds_t)LOG_FLUSH_MS * 1000};
	lflush = event_new(srv.base, -1, EV_PERSIST, log_flush_cb, NULL);
	event_add(lflush, &flush_every);

	record_read_weights(srv.cfg);
	srv.ready = true;
	log_info("dualwrited %s ready: %zu worker(s), %zu route(s), default upstream \"%s\"",
		 DW_VERSION, srv.nworkers, srv.cfg->nroutes,
		 srv.cfg->upstreams[srv.cfg->default_upstream].name);
	sd_notifyf("READY=1\nSTATUS=serving\nMAINPID=%d", (int)getpid());
	event_base_dispatch(srv.base);

	for (size_t i = 0; i < srv.nworkers; i++)
		worker_join(srv.workers[i]);
	for (size_t i = 0; i < srv.nworkers; i++)
		worker_free(srv.workers[i]); /* queues what the mirrors did not finish */
	srv.nworkers = 0;
	srv.nmirrors = 0;
	pgforward_stop(srv.pgfwd); /* pgforward wiring: after the drain queued the rest */
	srv.pgfwd = NULL;
	for (int i = 0; i < 3; i++)
		event_free(sigs[i]);
	if (wd)
		event_free(wd);
	event_free(qtick);
	event_free(gtick);
	event_free(lflush);
	if (srv.stop_tick)
		event_free(srv.stop_tick);
	if (srv.stop_deadline)
		event_free(srv.stop_deadline);
	log_info("stopped");
	fflush(stderr);
	rc = 0;
out:
	for (size_t i = 0; i < srv.nworkers; i++)
		worker_join(srv.workers[i]);
	for (size_t i = 0; i < srv.nworkers; i++)
		worker_free(srv.workers[i]);
	free(srv.workers);
	free(srv.mirrors);
	pgforward_stop(srv.pgfwd); /* pgforward wiring */
	resolver_free(srv.resolver); /* the pools that read it are gone */
	admin_stop(&srv);
	listen_prune(&srv, NULL);
	free(srv.lsocks);
	spool_close(srv.spool);
	if (srv.base)
		event_base_free(srv.base);
	config_unref(srv.cfg);
	journal_health_free(&srv);
	readstate_free(srv.reads);
	guards_free(&srv);
	pinset_free(srv.pins);
	breaker_table_free(srv.breakers);
	metrics_free(srv.metrics);
	free(srv.conf_path);
	pthread_mutex_destroy(&srv.cfg_lock);
	pthread_mutex_destroy(&srv.listen_lock);
	return rc;
}
