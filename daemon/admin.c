/*
 * admin.c — the admin listener on the main thread's loop: /health, /ready,
 * /metrics (Prometheus text) and /status (JSON). It is for operators and
 * `dualwrite status`, never for client traffic, so libevent's evhttp is good
 * enough here.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "guard.h"
#include "server.h"

static void reply_json(struct evhttp_request *req, int code, json_t *doc)
{
	struct evbuffer *out = evbuffer_new();
	char *text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);

	evbuffer_add_printf(out, "%s\n", text ? text : "{}");
	free(text);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	evhttp_send_reply(req, code, code == 200 ? "OK" : "Service Unavailable", out);
	evbuffer_free(out);
}



/* A read route's shadow counts and read-your-writes state (small /status
 * addition): pinned_keys counts the distinct keys of its upstream with a
 * write not yet delivered; blind_writes those that pin every key;
 * prefix_pins the pins that did not evaluate, each pinning every key that
 * begins with its literal text. */
static void status_read_more(struct server *srv, json_t *ro, const struct dw_read *rd,
			     const char *upstream)
{
	const struct read_state *rs = rd->state;
	struct pinset_stats ps = { 0 };
	json_t *sh = json_object();

	for (int k = 0; k < SHADOW_NRESULTS; k++)
		json_object_set_new(sh, shadow_result_name((enum shadow_result)k),
				    json_integer(rs ? (json_int_t)readstate_shadow_count(
							  rs, (enum shadow_result)k)
						    : 0));
	json_object_set_new(ro, "shadow_percent", json_real(rd->shadow / 100.0));
	json_object_set_new(ro, "shadow", sh);
	if (srv->pins)
		pinset_stats(srv->pins, upstream, &ps);
	json_object_set_new(ro, "pinned_keys", json_integer((json_int_t)ps.keys));
	json_object_set_new(ro, "blind_writes", json_integer((json_int_t)ps.blind));
	json_object_set_new(ro, "prefix_pins", json_integer((json_int_t)ps.prefixed));
}

/* One upstream's share of the queue (SPEC §7.4: per upstream the queue
 * depth and the oldest record's age); depth counts as the queue's does. */
static json_t *upstream_queue_json(const struct spool_upstream_stats *q)
{
	return json_pack("{s:I, s:I, s:I, s:I, s:I}", "depth",
			 (json_int_t)q->queued + (json_int_t)q->pending, "queued", (json_int_t)q->queued,
			 "pending", (json_int_t)q->pending, "dead", (json_int_t)q->dead,
			 "oldest_age_s",
			 (json_int_t)(q->oldest_waiting_us
					  ? (dw_wall_us() - q->oldest_waiting_us) / 1000000
					  : 0));
}

static const struct spool_upstream_stats *upstream_queue_find(
    const struct spool_upstream_stats *v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i].upstream, name) == 0)
			return &v[i];
	return NULL;
}

static void status_cb(struct evhttp_request *req, struct server *srv)
{
	struct dw_config *cfg = server_config(srv);
	json_t *doc = json_object(), *routes = json_array(), *ups = json_object();
	json_t *queue = json_object(), *mirror = json_object();
	struct spool_stats st;
	struct spool_upstream_stats *upq = NULL;
	size_t nupq;

	server_queue_refresh(srv, &st);
	nupq = spool_upstream_stats(srv->spool, &upq);
	json_object_set_new(doc, "version", json_string(DW_VERSION));
	json_object_set_new(doc, "pid", json_integer(getpid()));
	json_object_set_new(doc, "uptime_s",
			    json_integer((dw_wall_us() - srv->started_wall_us) / 1000000));
	json_object_set_new(doc, "config", json_string(cfg->path));
	/* `dualwrite reload` waits for this to move (or reloads.failed to) */
	json_object_set_new(doc, "generation", json_integer((json_int_t)srv->generation));
	json_object_set_new(doc, "workers", json_integer((json_int_t)srv->nworkers));
	json_object_set_new(doc, "connections",
			    json_integer(__atomic_load_n(&srv->active_conns, __ATOMIC_RELAXED)));
	json_object_set_new(doc, "ready", json_boolean(srv->ready && !srv->stopping));
	json_object_set_new(doc, "default_upstream",
			    json_string(cfg->upstreams[cfg->default_upstream].name));
	for (size_t i = 0; i < cfg->nupstreams; i++) {
		const struct dw_upstream *u = &cfg->upstreams[i];
		json_t *o = json_pack("{s:s, s:i}", "url", u->url, "timeout_ms", u->timeout_ms);
		char addrs[400], why[200];

		/* a host name: what it resolves to now, and why not if it does not */
		if (resolver_describe(srv->resolver, u->host, addrs, sizeof(addrs), why,
				      sizeof(why))) {
			json_object_set_new(o, "addresses", json_string(addrs));
			if (why[0])
				json_object_set_new(o, "resolve_error", json_string(why));
		}
		const struct spool_upstream_stats none = { 0 },
						  *q = upstream_queue_find(upq, nupq, u->name);

		json_object_set_new(o, "queue", upstream_queue_json(q ? q : &none));
		if ((int)i != cfg->default_upstream && u->guard) {
			json_t *guard = json_object();

			guards_upstream_json(srv, u->guard, guard);
			json_object_set_new(o, "guard", guard);
		}
		json_object_set_new(ups, u->name, o);
	}
	json_object_set_new(doc, "upstreams", ups);
	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct dw_route *r = &cfg->routes[i];
		json_t *o = json_pack("{s:s, s:s}", "name", r->name, "match", r->match);
		uint32_t conf = 0, eff = 0;

		if (r->read) {
			const struct read_state *rs = r->read->state;
			conf = rs ? readstate_configured(rs) : r->read->weight;
			eff = rs ? readstate_effective(rs) : r->read->weight;
			json_t *rd = json_pack("{s:s, s:f, s:f, s:b}", "upstream",
					       cfg->upstreams[r->read->upstream].name, "weight",
					       conf / 100.0, "effective_weight", eff / 100.0,
					       "fallback", r->read->fallback);
			json_t *guard = json_object();
			const struct guard_up *g = cfg->upstreams[r->read->upstream].guard;

			if (g)
				guards_latch_json(g, guard); /* its upstream's */
			else
				json_object_set_new(guard, "state", json_string("ok"));
			json_object_set_new(rd, "guard", guard);
			json_object_set_new(o, "read", rd);
			status_read_more(srv, rd, r->read, cfg->upstreams[r->read->upstream].name);
		}
		/* percent of reads the new system serves: effective, and as configured */
		json_object_set_new(o, "read_weight", json_real(eff / 100.0));
		json_object_set_new(o, "read_weight_configured", json_real(conf / 100.0));
		if (r->mirror)
			json_object_set_new(o, "mirror",
					    json_string(cfg->upstreams[r->mirror->upstream].name));
		if (r->mirror) /* who answers the route's writes (SPEC §7.5) */
			json_object_set_new(o, "authority", json_string(r->authority == AUTHORITY_NEW
										? "new"
										: "legacy"));
		json_array_append_new(routes, o);
	}
	json_object_set_new(doc, "routes", routes);
	json_object_set_new(queue, "path", json_string(cfg->queue.path));
	json_object_set_new(queue, "depth", json_integer((json_int_t)st.queued + (json_int_t)st.pending));
	json_object_set_new(queue, "queued", json_integer((json_int_t)st.queued));
	json_object_set_new(queue, "pending", json_integer((json_int_t)st.pending));
	json_object_set_new(queue, "dead", json_integer((json_int_t)st.dead));
	json_object_set_new(queue, "bytes", json_integer((json_int_t)st.bytes));
	json_object_set_new(queue, "waiting_bytes", json_integer((json_int_t)st.waiting_bytes));
	json_object_set_new(queue, "damaged", json_integer((json_int_t)st.damaged));
	json_object_set_new(queue, "oldest_age_s",
			    json_integer(st.oldest_waiting_us
					     ? (dw_wall_us() - st.oldest_waiting_us) / 1000000
					     : 0));
	json_t *journal = json_object();
	journal_health_json(srv, journal); /* writable, and why not */
	json_object_set_new(queue, "journal", journal);
	/* records waiting for an upstream the configuration no longer names
	 * (each configured one shows its share under upstreams) */
	json_t *others = json_object();
	for (size_t i = 0; i < nupq; i++) {
		const struct spool_upstream_stats *q = &upq[i];
		bool named = false;

		for (size_t j = 0; j < cfg->nupstreams && !named; j++)
			named = strcmp(cfg->upstreams[j].name, q->upstream) == 0;
		if (!named && (q->pending || q->queued || q->dead))
			json_object_set_new(others, q->upstream, upstream_queue_json(q));
	}
	if (json_object_size(others))
		json_object_set_new(queue, "unconfigured_upstreams", others);
	else
		json_decref(others);
	spool_upstream_stats_free(upq, nupq);
	json_object_set_new(doc, "queue", queue);
	if (srv->nmirrors)
		mirror_status_json(srv->mirrors[0], mirror); /* gauges shared by the shards */
	json_object_set_new(doc, "mirror", mirror);
	json_t *reloads =
	    json_pack("{s:I, s:I}", "ok", (json_int_t)metric_value(srv->m_reload_ok), "failed",
		      (json_int_t)metric_value(srv->m_reload_failed));
	if (srv->last_reload_error[0])
		json_object_set_new(reloads, "last_error", json_string(srv->last_reload_error));
	json_object_set_new(doc, "reloads", reloads);
	reply_json(req, 200, doc);
	json_decref(doc);
	config_unref(cfg);
}

static void admin_cb(struct evhttp_request *req, void *arg)
{
	struct server *srv = arg;
	const char *uri = evhttp_request_get_uri(req);
	struct evbuffer *out;

	if (strcmp(uri, "/health") == 0) {
		json_t *o = json_pack("{s:s}", "status", "ok");
		reply_json(req, 200, o);
		json_decref(o);
	} else if (strcmp(uri, "/ready") == 0) {
		bool ready = srv->ready && !srv->stopping;
		json_t *o = json_pack("{s:s}", "status", ready ? "ready" : "not ready");
		reply_json(req, ready ? 200 : 503, o);
		json_decref(o);
	} else if (strcmp(uri, "/metrics") == 0) {
		struct spool_stats st;

		server_queue_refresh(srv, &st);
		out = evbuffer_new();
		metrics_render(srv->metrics, out);
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
				  "text/plain; version=0.0.4");
		evhttp_send_reply(req, 200, "OK", out);
		evbuffer_free(out);
	} else if (strcmp(uri, "/status") == 0) {
		status_cb(req, srv);
	} else {
		out = evbuffer_new();
		evbuffer_add_printf(out, "{\"error\": \"not found\"}\n");
		evhttp_send_reply(req, 404, "Not Found", out);
		evbuffer_free(out);
	}
}

int admin_start(struct server *srv, struct dw_err *err)
{
	const char *addr = srv->cfg->admin_listen;
	char host[256];
	int port;

	if (!addr)
		return 0;
	if (config_split_hostport(addr, host, sizeof(host), &port, err) < 0)
		return -1;
	srv->admin = evhttp_new(srv->base);
	evhttp_set_allowed_methods(srv->admin, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_gencb(srv->admin, admin_cb, srv);
	evhttp_set_timeout(srv->admin, 10);
	/* libevent binds with SO_REUSEADDR only: a second daemon cannot share
	 * the address. */
	errno = 0;
	if (!evhttp_bind_socket_with_handle(srv->admin, host, (ev_uint16_t)port)) {
		int e = errno;
		dw_err_set(err, "admin listen %s: cannot bind: %s%s", addr,
			   e ? strerror(e) : "unknown error",
			   e == EADDRINUSE ? " (another process, perhaps another dualwrited, holds it)"
					   : "");
		evhttp_free(srv->admin);
		srv->admin = NULL;
		return -1;
	}
	log_info("admin endpoint on %s", addr);
	return 0;
}

void admin_stop(struct server *srv)
{
	if (srv->admin)
		evhttp_free(srv->admin);
	srv->admin = NULL;
}
