/*
 * readstate.c — the per-route runtime table behind readstate.h: a short
 * list searched by name at bind time only (a reload), never per request.
 */
#include "readstate.h"

#include "guard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct read_table {
	struct metrics *metrics;
	struct read_state *head, **tail;
};

static const char *const side_names[] = { "legacy", "new" };
static const char *const reason_names[] = { "bucket", "fallback", "pinned", "guard" };

static const char *const shadow_names[] = { "match", "mismatch", "error", "skipped" };

const char *shadow_result_name(enum shadow_result r)
{
	return shadow_names[r];
}

const char *read_side_name(enum read_side s)
{
	return side_names[s];
}

const char *read_reason_name(enum read_reason r)
{
	return reason_names[r];
}

struct read_table *readstate_new(struct metrics *m)
{
	struct read_table *t = dw_calloc(1, sizeof(*t));

	t->metrics = m;
	t->tail = &t->head;
	return t;
}

void readstate_free(struct read_table *t)
{
	if (!t)
		return;
	for (struct read_state *s = t->head, *n; s; s = n) {
		n = s->next;
		free(s->name);
		free(s);
	}
	free(t);
}

struct read_state *readstate_find(const struct read_table *t, const char *name)
{
	for (struct read_state *s = t->head; s; s = s->next)
		if (strcmp(s->name, name) == 0)
			return s;
	return NULL;
}

/* The series of a new entry: the side/reason pairs that can happen. */
static void register_series(struct read_table *t, struct read_state *s)
{
	char labels[256], esc[128];

	if (!t->metrics)
		return;
	metrics_label_escape(s->name, esc, sizeof(esc));
	for (int side = READ_LEGACY; side <= READ_NEW; side++)
		for (int r = 0; r < READ_NREASONS; r++) {
			if (side == READ_NEW && r != READ_BUCKET)
				continue; /* the new system serves a read only by its bucket */
			snprintf(labels, sizeof(labels), "route=\"%s\",side=\"%s\",reason=\"%s\"",
				 esc, side_names[side], reason_names[r]);
			s->m_total[side][r] = metrics_counter(
			    t->metrics, "dualwrite_read_total",
			    "Reads of read routes, by the side that served them and why.", labels);
		}
	for (int r = 0; r < SHADOW_NRESULTS; r++) {
		snprintf(labels, sizeof(labels), "route=\"%s\",result=\"%s\"", esc, shadow_names[r]);
		s->m_shadow[r] = metrics_counter(t->metrics, "dualwrite_shadow_total",
						 "Shadowed reads of read routes, by the outcome of "
						 "comparing both sides' answers.",
						 labels);
	}
	snprintf(labels, sizeof(labels), "route=\"%s\"", esc);
	s->m_weight = metrics_gauge_centi(t->metrics, "dualwrite_read_weight",
					  "Effective read weight of a route, percent served by the "
					  "new system.",
					  labels);
	s->m_configured = metrics_gauge_centi(
	    t->metrics, "dualwrite_read_weight_configured",
	    "Configured read weight of a route (the effective one is 0 while a guard holds it).",
	    labels);
}

static void publish(struct read_state *s)
{
	uint32_t conf = readstate_configured(s);
	uint32_t eff = readstate_held(s) ? 0 : conf;

	__atomic_store_n(&s->effective, eff, __ATOMIC_RELAXED);
	if (s->m_weight)
		metric_set(s->m_weight, eff);
	if (s->m_configured)
		metric_set(s->m_configured, conf);
}

void readstate_bind(struct read_table *t, struct dw_config *cfg)
{
	for (struct read_state *s = t->head; s; s = s->next)
		s->bound = false;
	for (size_t i = 0; i < cfg->nroutes; i++) {
		struct dw_route *r = &cfg->routes[i];
		struct read_state *s;

		if (!r->read || !r->name)
			continue;
		if (!(s = readstate_find(t, r->name))) {
			s = dw_calloc(1, sizeof(*s));
			s->name = dw_strdup(r->name);
			*t->tail = s;
			t->tail = &s->next;
			register_series(t, s);
		}
		s->bound = true;
		__atomic_store_n(&s->configured, r->read->weight, __ATOMIC_RELAXED);
		/* held while its upstream (in this snapshot) is tripped */
		__atomic_store_n(&s->held,
				 guard_up_state(cfg->upstreams[r->read->upstream].guard) ==
				     GUARD_TRIPPED,
				 __ATOMIC_RELAXED);
		publish(s);
		r->read->state = s;
	}
	/* A route that is gone serves nothing from the new system. */
	for (struct read_state *s = t->head; s; s = s->next)
		if (!s->bound) {
			__atomic_store_n(&s->configured, 0, __ATOMIC_RELAXED);
			publish(s);
		}
}

void readstate_each(const struct read_table *t, void (*cb)(void *arg, struct read_state *s),
		    void *arg)
{
	for (struct read_state *s = t->head; s; s = s->next)
		if (s->bound)
			cb(arg, s);
}

void readstate_hold(struct read_state *s, bool on)
{
	__atomic_store_n(&s->held, on, __ATOMIC_RELAXED);
	publish(s);
}

void readstate_count(struct read_state *s, enum read_side side, enum read_reason why)
{
	struct metric *m = s->m_total[side][why];

	if (m)
		metric_inc(m);
}

void readstate_shadow(struct read_state *s, enum shadow_result r)
{
	__atomic_add_fetch(&s->shadow[r], 1, __ATOMIC_RELAXED);
	if (s->m_shadow[r])
		metric_inc(s->m_shadow[r]);
}
