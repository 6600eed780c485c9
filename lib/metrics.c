/*
 * metrics.c — registry of series behind metrics.h.
 *
 * Families (one per metric name) keep their series in creation order, so the
 * rendered text is stable. Lookups walk short lists under the registry mutex;
 * the hot path keeps handles and only does atomic adds.
 */
#include "metrics.h"

#include <event2/buffer.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw.h"

enum family_type { FAM_COUNTER, FAM_GAUGE, FAM_HISTOGRAM };

struct metric {
	struct metric *next;
	char *labels;
	int64_t value; /* atomic */
};

struct histogram {
	struct histogram *next;
	char *labels;
	const double *bounds; /* the family's */
	size_t nbounds;
	uint64_t *counts; /* nbounds + 1, atomic; the last is +Inf */
	uint64_t sum_micro; /* atomic: sum of observations in millionths */
};

struct family {
	struct family *next;
	char *name, *help;
	enum family_type type;
	int centi; /* gauges set in hundredths, rendered with two decimals */
	double *bounds;
	size_t nbounds;
	struct metric *metrics, **mtail;
	struct histogram *hists, **htail;
};

struct metrics {
	pthread_mutex_t lock;
	struct family *families, **tail;
};

const double metrics_latency_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
					 0.1,	 0.25,	0.5,	1,     2.5,  5,	    10};
const size_t metrics_latency_nbounds = DW_ARRAY_LEN(metrics_latency_bounds);

struct metrics *metrics_new(void)
{
	struct metrics *m = dw_calloc(1, sizeof(*m));

	pthread_mutex_init(&m->lock, NULL);
	m->tail = &m->families;
	return m;
}

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	for (struct family *f = m->families, *fn; f; f = fn) {
		fn = f->next;
		for (struct metric *x = f->metrics, *xn; x; x = xn) {
			xn = x->next;
			free(x->labels);
			free(x);
		}
		for (struct histogram *h = f->hists, *hn; h; h = hn) {
			hn = h->next;
			free(h->labels);
			free(h->counts);
			free(h);
		}
		free(f->name);
		free(f->help);
		free(f->bounds);
		free(f);
	}
	pthread_mutex_destroy(&m->lock);
	free(m);
}

/* Caller holds the lock. */
static struct family *family_get(struct metrics *m, const char *name, const char *help,
				 enum family_type type)
{
	struct family *f;

	for (f = m->families; f; f = f->next)
		if (strcmp(f->name, name) == 0)
			return f;
	f = dw_calloc(1, sizeof(*f));
	f->name = dw_strdup(name);
	f->help = dw_strdup(help ? help : "");
	f->type = type;
	f->mtail = &f->metrics;
	f->htail = &f->hists;
	*m->tail = f;
	m->tail = &f->next;
	return f;
}

static struct metric *series_get(struct metrics *m, const char *name, const char *help,
				 const char *labels, enum family_type type)
{
	struct family *f;
	struct metric *x;

	if (!labels)
		labels = "";
	pthread_mutex_lock(&m->lock);
	f = family_get(m, name, help, type);
	for (x = f->metrics; x; x = x->next)
		if (strcmp(x->labels, labels) == 0)
			goto out;
	x = dw_calloc(1, sizeof(*x));
	x->labels = dw_strdup(labels);
	*f->mtail = x;
	f->mtail = &x->next;
out:
	pthread_mutex_unlock(&m->lock);
	return x;
}

struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
			       const char *labels)
{
	return series_get(m, name, help, labels, FAM_COUNTER);
}

struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help,
			     const char *labels)
{
	return series_get(m, name, help, labels, FAM_GAUGE);
}

struct metric *metrics_gauge_centi(struct metrics *m, const char *name, const char *help,
				   const char *labels)
{
	struct metric *x = series_get(m, name, help, labels, FAM_GAUGE);

	pthread_mutex_lock(&m->lock);
	family_get(m, name, help, FAM_GAUGE)->centi = 1;
	pthread_mutex_unlock(&m->lock);
	return x;
}

struct histogram *metrics_histogram(struct metrics *m, const char *name, const char *help,
				    const char *labels, const double *bounds, size_t nbounds)
{
	struct family *f;
	struct histogram *h;

	if (!labels)
		labels = "";
	pthread_mutex_lock(&m->lock);
	f = family_get(m, name, help, FAM_HISTOGRAM);
	if (!f->bounds) {
		f->bounds = dw_malloc(nbounds * sizeof(double));
		memcpy(f->bounds, bounds, nbounds * sizeof(double));
		f->nbounds = nbounds;
	}
	for (h = f->hists; h; h = h->next)
		if (strcmp(h->labels, labels) == 0)
			goto out;
	h = dw_calloc(1, sizeof(*h));
	h->labels = dw_strdup(labels);
	h->bounds = f->bounds;
	h->nbounds = f->nbounds;
	h->counts = dw_calloc(f->nbounds + 1, sizeof(uint64_t));
	*f->htail = h;
	f->htail = &h->next;
out:
	pthread_mutex_unlock(&m->lock);
	return h;
}

void metric_add(struct metric *c, int64_t v)
{
	__atomic_fetch_add(&c->value, v, __ATOMIC_RELAXED);
}

void metric_inc(struct metric *c)
{
	__atomic_fetch_add(&c->value, 1, __ATOMIC_RELAXED);
}

void metric_set(struct metric *g, int64_t v)
{
	__atomic_store_n(&g->value, v, __ATOMIC_RELAXED);
}

int64_t metric_value(const struct metric *c)
{
	return __atomic_load_n(&c->value, __ATOMIC_RELAXED);
}

void histogram_observe(struct histogram *h, double v)
{
	size_t i = 0;

	while (i < h->nbounds && v > h->bounds[i])
		i++;
	__atomic_fetch_add(&h->counts[i], 1, __ATOMIC_RELAXED);
	if (v > 0 && isfinite(v))
		__atomic_fetch_add(&h->sum_micro, (uint64_t)(v * 1e6), __ATOMIC_RELAXED);
}

static void render_labels(struct evbuffer *out, const char *labels, const char *extra)
{
	int has = labels && *labels, hasx = extra && *extra;

	if (!has && !hasx)
		return;
	evbuffer_add_printf(out, "{%s%s%s}", has ? labels : "", has && hasx ? "," : "",
			    hasx ? extra : "");
}

void metrics_render(struct metrics *m, struct evbuffer *out)
{
	static const char *const type_names[] = {"counter", "gauge", "histogram"};

	pthread_mutex_lock(&m->lock);
	for (struct family *f = m->families; f; f = f->next) {
		evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
				    type_names[f->type]);
		for (struct metric *x = f->metrics; x; x = x->next) {
			evbuffer_add_printf(out, "%s", f->name);
			render_labels(out, x->labels, NULL);
			if (f->centi) {
				long long v = (long long)metric_value(x);
				evbuffer_add_printf(out, " %s%lld.%02lld\n", v < 0 ? "-" : "",
						    llabs(v) / 100, llabs(v) % 100);
			} else {
				evbuffer_add_printf(out, " %lld\n", (long long)metric_value(x));
			}
		}
		for (struct histogram *h = f->hists; h; h = h->next) {
			uint64_t cum = 0;
			char le[64];

			for (size_t i = 0; i <= h->nbounds; i++) {
				cum += __atomic_load_n(&h->counts[i], __ATOMIC_RELAXED);
				if (i < h->nbounds)
					snprintf(le, sizeof(le), "le=\"%g\"", h->bounds[i]);
				else
					snprintf(le, sizeof(le), "le=\"+Inf\"");
				evbuffer_add_printf(out, "%s_bucket", f->name);
				render_labels(out, h->labels, le);
				evbuffer_add_printf(out, " %llu\n", (unsigned long long)cum);
			}
			evbuffer_add_printf(out, "%s_sum", f->name);
			render_labels(out, h->labels, NULL);
			evbuffer_add_printf(
			    out, " %.6f\n",
			    (double)__atomic_load_n(&h->sum_micro, __ATOMIC_RELAXED) / 1e6);
			evbuffer_add_printf(out, "%s_count", f->name);
			render_labels(out, h->labels, NULL);
			evbuffer_add_printf(out, " %llu\n", (unsigned long long)cum);
		}
	}
	pthread_mutex_unlock(&m->lock);
}

const char *metrics_label_escape(const char *v, char *buf, size_t len)
{
	size_t o = 0;

	if (len == 0)
		return buf;
	for (; v && *v && o + 2 < len; v++) {
		if (*v == '\\' || *v == '"') {
			buf[o++] = '\\';
			buf[o++] = *v;
		} else if (*v == '\n') {
			buf[o++] = '\\';
			buf[o++] = 'n';
		} else {
			buf[o++] = *v;
		}
	}
	buf[o] = '\0';
	return buf;
}
