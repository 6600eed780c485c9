/*
 * guards.c — the daemon's side of the rollback guards (SPEC §7.3): the
 * guard table (lib/guard.h) evaluated on the main thread's tick, a latch
 * turned into held read weights (readstate_hold), an error line and
 * dualwrite_guard_trips_total{upstream,reason}, the latch file kept beside
 * the queue, the reload's gate and clears, and /status's view.
 *
 * The latch file is the shared truth between this daemon and `dualwrite
 * guard reset` (which edits it under its lock): the daemon writes it at
 * every latch or clear of its own, and when it finds it changed by someone
 * else (the tick compares its identity: inode, size, mtime) it adopts what
 * the file says — an upstream missing from it is reset. With
 * queue.postgres every latch and reset also goes to the fleet's table
 * (guardfleet.c), and the tick follows what that table says. Everything here
 * runs on the main thread, but guards_note_shadow_mismatch (any thread).
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "guard.h"
#include "server.h"

/* The identity of the latch file as last written or read by us. */
static void file_sig(const char *dir, struct guards_file_sig *sig)
{
	char path[4096];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", dir, GUARD_FILE_NAME);
	memset(sig, 0, sizeof(*sig));
	if (stat(path, &st) < 0)
		return; /* absent: all zero */
	sig->exists = true;
	sig->ino = (uint64_t)st.st_ino;
	sig->size = (int64_t)st.st_size;
	sig->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
}

static bool sig_equal(const struct guards_file_sig *a, const struct guards_file_sig *b)
{
	return a->exists == b->exists && a->ino == b->ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns;
}

static void set_state_gauge(struct server *srv, struct guard_up *g)
{
	char labels[200], esc[128];

	metrics_label_escape(g->name, esc, sizeof(esc));
	snprintf(labels, sizeof(labels), "upstream=\"%s\"", esc);
	metric_set(metrics_gauge(srv->metrics, "dualwrite_guard_state",
				 "Guard state of a new-system upstream: 0 ok, 1 paused, 2 tripped.",
				 labels),
		   (int64_t)g->latch.state);
}

/* Hold (or release) every read route of the running snapshot by its
 * upstream's latch. */
static void apply_holds(struct server *srv)
{
	struct dw_config *cfg = server_config(srv);

	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct dw_route *r = &cfg->routes[i];
		bool held;

		if (!r->read || !r->read->state)
			continue;
		held = guard_up_state(cfg->upstreams[r->read->upstream].guard) == GUARD_TRIPPED;
		if (readstate_held(r->read->state) != held)
			readstate_hold(r->read->state, held);
	}
	config_unref(cfg);
}

/* The file could not be read: keep it for the operator, out of the way. */
static void set_aside(const char *dir)
{
	char path[4096], aside[4200];

	snprintf(path, sizeof(path), "%s/%s", dir, GUARD_FILE_NAME);
	snprintf(aside, sizeof(aside), "%s.unreadable", path);
	if (rename(path, aside) == 0)
		log_error("guard: the unreadable latch file is kept as %s", aside);
}

/* Write the table's latches into the file (under its lock), keeping the
 * entries of upstreams this daemon does not know. */
static void persist(struct server *srv)
{
	const char *dir = srv->cfg->queue.path; /* non-reloadable */
	struct dw_err err = {""};
	struct guard_file f = {0};
	int lk = guard_file_lock(dir, &err);

	if (lk < 0) {
		log_error("guard: cannot persist the latches: %s", err.msg);
		return;
	}
	if (guard_file_read(dir, &f, &err) < 0) {
		log_error("guard: %s; rewriting it from memory", err.msg);
		set_aside(dir);
		guard_file_free(&f);
	}
	/* every known upstream takes our state; unknown ones stay */
	for (struct guard_up *g = guard_table_first(srv->guards); g; g = g->next)
		guard_file_put(&f, g->name, &g->latch);
	if (guard_file_write(dir, &f, &err) < 0)
		log_error("guard: cannot persist the latches: %s", err.msg);
	file_sig(dir, &srv->guards_sig);
	guard_file_unlock(lk);
	guard_file_free(&f);
}

static void log_latched(const char *how, const struct guard_up *g)
{
	log_error("guard: upstream \"%s\"%s: %s%s", g->name, how, g->latch.detail,
		  g->latch.state == GUARD_TRIPPED
		      ? "; every read route of it now serves from the legacy (weight 0)"
		      : "; its read weights may not rise until `dualwrite guard reset`");
}

/* Adopt what the file says for every upstream we know. */
static bool adopt(struct server *srv, const struct guard_file *f, const char *why)
{
	bool changed = false;

	for (struct guard_up *g = guard_table_first(srv->guards); g; g = g->next) {
		const struct guard_latch *l = guard_file_find(f, g->name);

		if (!l && g->latch.state != GUARD_OK) {
			guard_clear(g);
			log_warn("guard: upstream \"%s\" reset (%s): its configured read weights "
				 "apply again",
				 g->name, why);
			guard_fleet_put(srv->gfleet, g->name, NULL);
			changed = true;
		} else if (l && (l->state != g->latch.state || l->since_ms != g->latch.since_ms)) {
			guard_latch_set(g, l);
			log_latched(" (latch file)", g);
			if (strcmp(l->reason, GUARD_REASON_UNREADABLE) != 0) /* this host's own */
				guard_fleet_put(srv->gfleet, g->name, l);
			changed = true;
		}
		set_state_gauge(srv, g);
	}
	return changed;
}

int guards_start(struct server *srv, struct dw_err *err)
{
	const char *dir = srv->cfg->queue.path;
	struct guard_file f = {0};
	struct dw_err ferr = {""};
	int lk, rc;

	srv->guards = guard_table_new((unsigned)srv->cfg->workers);
	guard_table_bind(srv->guards, srv->cfg);
	/* With the PostgreSQL queue the fleet shares its guards; the latches
	 * restored below are written there too (the safe side: a trip made
	 * while PostgreSQL was down is not lost by a restart). */
	if (srv->cfg->queue.postgres && !(srv->gfleet = guard_fleet_start(srv, err)))
		return -1;
	if ((lk = guard_file_lock(dir, err)) < 0)
		return -1;
	rc = guard_file_read(dir, &f, &ferr);
	guard_file_unlock(lk);
	if (rc < 0) {
		/* A trip we can no longer see must not become reads on a failing
		 * system: every new-system upstream is tripped until reset. */
		struct guard_latch l;

		log_error("guard: %s: every new-system upstream is treated as tripped "
			  "(reason %s) until `dualwrite guard reset UPSTREAM`",
			  ferr.msg, GUARD_REASON_UNREADABLE);
		set_aside(dir);
		memset(&l, 0, sizeof(l));
		l.state = GUARD_TRIPPED;
		snprintf(l.reason, sizeof(l.reason), "%s", GUARD_REASON_UNREADABLE);
		l.since_ms = dw_wall_us() / 1000;
		snprintf(l.detail, sizeof(l.detail), "tripped: %s: %.150s",
			 GUARD_REASON_UNREADABLE, ferr.msg);
		for (size_t i = 0; i < srv->cfg->nupstreams; i++)
			if ((int)i != srv->cfg->default_upstream)
				guard_latch_set(srv->cfg->upstreams[i].guard, &l);
		persist(srv);
	} else {
		(void)adopt(srv, &f, "latch file");
		file_sig(dir, &srv->guards_sig);
	}
	for (struct guard_up *g = guard_table_first(srv->guards); g; g = g->next)
		set_state_gauge(srv, g);
	guard_file_free(&f);
	return 0;
}

void guards_free(struct server *srv)
{
	guard_fleet_stop(srv->gfleet); /* writes what it still holds, while it can */
	srv->gfleet = NULL;
	guard_table_free(srv->guards);
	srv->guards = NULL;
}

struct tick_ctx {
	struct server *srv;
	size_t n;
};

static void on_latched(void *arg, struct guard_up *g, const struct guard_verdict *v)
{
	struct tick_ctx *t = arg;
	char labels[300], esc[128];

	log_latched("", g);
	metrics_label_escape(g->name, esc, sizeof(esc));
	snprintf(labels, sizeof(labels), "upstream=\"%s\",reason=\"%s\"", esc,
		 guard_reason_name(v->reason));
	metric_inc(metrics_counter(t->srv->metrics, "dualwrite_guard_trips_total",
				   "Guard trips (rollbacks) and pauses, by upstream and reason.",
				   labels));
	set_state_gauge(t->srv, g);
	guard_fleet_put(t->srv->gfleet, g->name, &g->latch);
	t->n++;
}

/* Adopt the fleet's table: a row latches here; a latch whose row this
 * sidecar had seen and is now gone was reset elsewhere. */
static bool adopt_fleet(struct server *srv, const struct guard_file *f)
{
	bool changed = false;

	for (struct guard_up *g = guard_table_first(srv->guards); g; g = g->next) {
		const struct guard_latch *l = guard_file_find(f, g->name);

		if (l) {
			if (l->state > g->latch.state) {
				guard_latch_set(g, l);
				log_latched(" (fleet)", g);
				set_state_gauge(srv, g);
				changed = true;
			}
			g->fleet_seen = g->latch.state != GUARD_OK;
		} else if (g->fleet_seen && g->latch.state != GUARD_OK) {
			guard_clear(g);
			log_warn("guard: upstream \"%s\" reset in the fleet: its configured read "
				 "weights apply again",
				 g->name);
			set_state_gauge(srv, g);
			changed = true;
		}
	}
	return changed;
}

void guards_tick(struct server *srv)
{
	const char *dir = srv->cfg->queue.path;
	struct guards_file_sig sig;
	struct tick_ctx t = {srv, 0};

	/* an operator's reset (or any edit) of the file first */
	file_sig(dir, &sig);
	/* A file gone with its directory is damage (the queue's to report),
	 * not an operator's reset of every guard. */
	if (!sig.exists && access(dir, F_OK) < 0)
		sig = srv->guards_sig;
	if (!sig_equal(&sig, &srv->guards_sig)) {
		struct guard_file f = {0};
		struct dw_err err = {""};
		int lk = guard_file_lock(dir, &err), rc = -1;

		if (lk >= 0) {
			rc = guard_file_read(dir, &f, &err);
			file_sig(dir, &srv->guards_sig);
			guard_file_unlock(lk);
		}
		if (rc < 0) {
			/* keep what we hold; the next latch rewrites the file */
			log_error("guard: %s; the latches held in memory stay", err.msg);
			srv->guards_sig = sig;
		} else if (adopt(srv, &f, "latch file changed")) {
			apply_holds(srv);
		}
		guard_file_free(&f);
	}
	/* then what the fleet latched or reset */
	if (srv->gfleet) {
		struct guard_file f = {0};

		if (guard_fleet_take(srv->gfleet, &srv->gfleet_gen, &f) && adopt_fleet(srv, &f)) {
			apply_holds(srv);
			persist(srv);
		}
		guard_file_free(&f);
	}
	guard_table_tick(srv->guards, dw_now_us() / 1000, dw_wall_us() / 1000, on_latched, &t);
	if (t.n) {
		apply_holds(srv); /* the effective weights drop now */
		persist(srv);
	}
}

int guards_reload_check(struct server *srv, const struct dw_config *running,
			const struct dw_config *neu, struct dw_err *err)
{
	return guard_reload_check(srv->guards, running, neu, err);
}

struct clear_ctx {
	struct server *srv;
	size_t n;
};

static void on_cleared(void *arg, struct guard_up *g, const char *route)
{
	struct clear_ctx *c = arg;

	if (g->latch.state == GUARD_OK)
		return; /* cleared by an earlier route of the same upstream */
	guard_clear(g);
	set_state_gauge(c->srv, g);
	guard_fleet_put(c->srv->gfleet, g->name, NULL);
	log_warn("guard: upstream \"%s\" cleared: the reload changed the read weight of route "
		 "\"%s\"",
		 g->name, route);
	c->n++;
}

void guards_reload_bind(struct server *srv, const struct dw_config *running,
			struct dw_config *neu)
{
	struct clear_ctx c = {srv, 0};

	guard_reload_clears(srv->guards, running, neu, on_cleared, &c);
	guard_table_bind(srv->guards, neu);
	for (struct guard_up *g = guard_table_first(srv->guards); g; g = g->next)
		set_state_gauge(srv, g);
	if (c.n)
		persist(srv);
}

void guards_note_shadow_mismatch(const struct dw_upstream *up)
{
	guard_note_mismatch(up->guard, dw_now_us() / 1000);
}

static void since_text(int64_t ms, char *buf, size_t cap)
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;

	if (!ms || !gmtime_r(&s, &tm)) {
		snprintf(buf, cap, "-");
		return;
	}
	strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void guards_latch_json(const struct guard_up *g, void *json_obj)
{
	json_t *o = json_obj;
	char since[40];

	json_object_set_new(o, "state", json_string(guard_state_name(g->latch.state)));
	if (g->latch.state == GUARD_OK)
		return;
	since_text(g->latch.since_ms, since, sizeof(since));
	json_object_set_new(o, "reason", json_string(g->latch.reason));
	json_object_set_new(o, "measured", json_real(g->latch.measured));
	json_object_set_new(o, "limit", json_real(g->latch.limit));
	json_object_set_new(o, "since", json_string(since));
	json_object_set_new(o, "since_ms", json_integer(g->latch.since_ms));
	json_object_set_new(o, "detail", json_string(g->latch.detail));
}

void guards_upstream_json(struct server *srv, struct guard_up *g, void *json_obj)
{
	json_t *o = json_obj, *w = json_object();
	struct {
		struct window_sum r, m, x;
	} *s = dw_malloc(sizeof(*s));
	int64_t p99;

	(void)srv;
	guards_latch_json(g, o);
	guard_sums(g, dw_now_us() / 1000, &s->r, &s->m, &s->x);
	p99 = window_sum_quantile_us(&s->r, 0.99);
	json_object_set_new(w, "reads", json_integer((json_int_t)s->r.events));
	json_object_set_new(w, "read_error_rate", json_real(window_sum_fail_pct(&s->r)));
	json_object_set_new(w, "read_p99_ms", p99 < 0 ? json_null() : json_real(p99 / 1000.0));
	json_object_set_new(w, "mirrors", json_integer((json_int_t)s->m.events));
	json_object_set_new(w, "mirror_failure_rate", json_real(window_sum_fail_pct(&s->m)));
	json_object_set_new(w, "shadow_mismatches_last_hour", json_integer((json_int_t)s->x.events));
	json_object_set_new(o, "window", w);
	free(s);
}
