/*
 * window.c — the ring of slots behind window.h, and guard_check().
 *
 * Invariant: the ring has nslots + 1 entries; entry i holds slot number k
 * (k = now_ms / slot_ms) with k % (nslots + 1) == i, or is empty (k = -1).
 * A sum at slot K counts entries with k >= K - nslots: the current partial
 * slot plus nslots whole ones, i.e. at least window_ms of history.
 */
#include "window.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw.h"

struct window {
	pthread_mutex_t mu;
	int64_t window_ms, slot_ms;
	unsigned nring;	   /* nslots + 1 */
	int64_t *k;	   /* [nring] slot number held, -1: empty */
	uint32_t *events;  /* [nring] */
	uint32_t *failures; /* [nring] */
	uint32_t *lat;	   /* [nring * WINDOW_LAT_BUCKETS], or NULL */
};

struct window *window_new(int64_t window_ms, unsigned nslots, int with_latency)
{
	struct window *w;

	if (nslots < 1 || nslots > WINDOW_MAX_SLOTS || window_ms < (int64_t)nslots)
		return NULL;
	w = dw_calloc(1, sizeof(*w));
	pthread_mutex_init(&w->mu, NULL);
	w->window_ms = window_ms;
	w->slot_ms = (window_ms + nslots - 1) / nslots;
	w->nring = nslots + 1;
	w->k = dw_malloc(w->nring * sizeof(*w->k));
	for (unsigned i = 0; i < w->nring; i++)
		w->k[i] = -1;
	w->events = dw_calloc(w->nring, sizeof(*w->events));
	w->failures = dw_calloc(w->nring, sizeof(*w->failures));
	if (with_latency)
		w->lat = dw_calloc((size_t)w->nring * WINDOW_LAT_BUCKETS, sizeof(*w->lat));
	return w;
}

void window_free(struct window *w)
{
	if (!w)
		return;
	pthread_mutex_destroy(&w->mu);
	free(w->k);
	free(w->events);
	free(w->failures);
	free(w->lat);
	free(w);
}

unsigned window_lat_bucket(int64_t us)
{
	unsigned e;

	if (us < 0)
		us = 0;
	if (us > WINDOW_LAT_MAX_US)
		us = WINDOW_LAT_MAX_US;
	if (us < WINDOW_LAT_SUB)
		return (unsigned)us;
	e = 63u - (unsigned)__builtin_clzll((unsigned long long)us); /* 4..26 */
	return WINDOW_LAT_SUB + (e - 4) * WINDOW_LAT_SUB +
	       (unsigned)((us >> (e - 4)) & (WINDOW_LAT_SUB - 1));
}

int64_t window_lat_upper(unsigned b)
{
	unsigned e, sub;

	if (b < WINDOW_LAT_SUB)
		return b;
	if (b >= WINDOW_LAT_BUCKETS)
		b = WINDOW_LAT_BUCKETS - 1;
	e = 4 + (b - WINDOW_LAT_SUB) / WINDOW_LAT_SUB;
	sub = (b - WINDOW_LAT_SUB) % WINDOW_LAT_SUB;
	return ((int64_t)(WINDOW_LAT_SUB + sub + 1) << (e - 4)) - 1;
}

/* The ring entry for now_ms, cleared if it held an older slot; -1 when it
 * holds a newer one (the event is too old to count). Called locked. */
static int slot_for(struct window *w, int64_t now_ms)
{
	int64_t k = (now_ms < 0 ? 0 : now_ms) / w->slot_ms;
	unsigned i = (unsigned)(k % w->nring);

	if (w->k[i] == k)
		return (int)i;
	if (w->k[i] > k)
		return -1;
	w->k[i] = k;
	w->events[i] = 0;
	w->failures[i] = 0;
	if (w->lat)
		memset(w->lat + (size_t)i * WINDOW_LAT_BUCKETS, 0, WINDOW_LAT_BUCKETS * sizeof(*w->lat));
	return (int)i;
}

void window_record(struct window *w, int64_t now_ms, int failed, int64_t latency_us)
{
	int i;

	pthread_mutex_lock(&w->mu);
	i = slot_for(w, now_ms);
	if (i >= 0) {
		w->events[i]++;
		w->failures[i] += failed ? 1u : 0u;
		if (w->lat && latency_us >= 0)
			w->lat[(size_t)i * WINDOW_LAT_BUCKETS + window_lat_bucket(latency_us)]++;
	}
	pthread_mutex_unlock(&w->mu);
}

void window_add(struct window *w, int64_t now_ms, uint32_t n, uint32_t failures)
{
	int i;

	pthread_mutex_lock(&w->mu);
	i = slot_for(w, now_ms);
	if (i >= 0) {
		w->events[i] += n;
		w->failures[i] += failures;
	}
	pthread_mutex_unlock(&w->mu);
}

void window_clear(struct window *w)
{
	pthread_mutex_lock(&w->mu);
	for (unsigned i = 0; i < w->nring; i++) {
		w->k[i] = -1;
		w->events[i] = 0;
		w->failures[i] = 0;
	}
	if (w->lat)
		memset(w->lat, 0, (size_t)w->nring * WINDOW_LAT_BUCKETS * sizeof(*w->lat));
	pthread_mutex_unlock(&w->mu);
}

void window_sum_reset(struct window_sum *s)
{
	memset(s, 0, sizeof(*s));
}

void window_sum_add(struct window_sum *s, struct window *w, int64_t now_ms)
{
	int64_t oldest = (now_ms < 0 ? 0 : now_ms) / w->slot_ms - (int64_t)(w->nring - 1);

	pthread_mutex_lock(&w->mu);
	if (w->window_ms > s->window_ms)
		s->window_ms = w->window_ms;
	for (unsigned i = 0; i < w->nring; i++) {
		if (w->k[i] < oldest || w->events[i] == 0) /* empty (k = -1) or expired */
			continue;
		s->events += w->events[i];
		s->failures += w->failures[i];
		if (w->lat) {
			const uint32_t *h = w->lat + (size_t)i * WINDOW_LAT_BUCKETS;

			for (unsigned b = 0; b < WINDOW_LAT_BUCKETS; b++) {
				s->lat[b] += h[b];
				s->nlat += h[b];
			}
		}
	}
	pthread_mutex_unlock(&w->mu);
}

double window_sum_fail_pct(const struct window_sum *s)
{
	return s->events ? 100.0 * (double)s->failures / (double)s->events : 0.0;
}

double window_sum_per_hour(const struct window_sum *s)
{
	return s->window_ms > 0 ? (double)s->events * 3600000.0 / (double)s->window_ms : 0.0;
}

int64_t window_sum_quantile_us(const struct window_sum *s, double q)
{
	uint64_t rank, seen = 0;

	if (s->nlat == 0)
		return -1;
	if (q > 1)
		q = 1;
	/* rank ceil(q * n), at least 1; the small epsilon keeps 0.99 * 100 at 99 */
	rank = (uint64_t)(q * (double)s->nlat - 1e-9) + 1;
	if (rank < 1)
		rank = 1;
	if (rank > s->nlat)
		rank = s->nlat;
	for (unsigned b = 0; b < WINDOW_LAT_BUCKETS; b++) {
		seen += s->lat[b];
		if (seen >= rank)
			return window_lat_upper(b);
	}
	return WINDOW_LAT_MAX_US;
}

void guard_limits_default(struct guard_limits *l)
{
	l->min_requests = 50;
	l->read_error_rate = 1.0;
	l->read_p99_ms = 500;
	l->mirror_failure_rate = 5.0;
	l->shadow_mismatches_per_hour = 5;
}

static int over(double measured, double limit)
{
	return limit >= 0 && measured > limit;
}

struct guard_verdict guard_check(const struct guard_limits *l, const struct window_sum *reads,
				 const struct window_sum *mirrors,
				 const struct window_sum *mismatches)
{
	struct guard_verdict v = {GUARD_OK, GUARD_REASON_NONE, 0, 0, 0, 0};

	if (reads && reads->events >= l->min_requests && reads->events > 0) {
		double pct = window_sum_fail_pct(reads);

		v.sample = reads->events;
		v.window_ms = reads->window_ms;
		if (over(pct, l->read_error_rate)) {
			v.state = GUARD_TRIPPED;
			v.reason = GUARD_READ_ERROR_RATE;
			v.measured = pct;
			v.limit = l->read_error_rate;
			return v;
		}
		if (reads->nlat > 0) {
			double p99 = (double)window_sum_quantile_us(reads, 0.99) / 1000.0;

			if (over(p99, l->read_p99_ms)) {
				v.state = GUARD_TRIPPED;
				v.reason = GUARD_READ_P99;
				v.measured = p99;
				v.limit = l->read_p99_ms;
				v.sample = reads->nlat;
				return v;
			}
		}
	}
	if (mirrors && mirrors->events >= l->min_requests && mirrors->events > 0) {
		double pct = window_sum_fail_pct(mirrors);

		if (over(pct, l->mirror_failure_rate)) {
			v.state = GUARD_TRIPPED;
			v.reason = GUARD_MIRROR_FAILURE_RATE;
			v.measured = pct;
			v.limit = l->mirror_failure_rate;
			v.sample = mirrors->events;
			v.window_ms = mirrors->window_ms;
			return v;
		}
	}
	if (mismatches) {
		double ph = window_sum_per_hour(mismatches);

		if (over(ph, l->shadow_mismatches_per_hour)) {
			v.state = GUARD_PAUSED;
			v.reason = GUARD_SHADOW_MISMATCHES;
			v.measured = ph;
			v.limit = l->shadow_mismatches_per_hour;
			v.sample = mismatches->events;
			v.window_ms = mismatches->window_ms;
			return v;
		}
	}
	v.sample = 0;
	v.window_ms = 0;
	return v;
}

const char *guard_state_name(enum guard_state s)
{
	switch (s) {
	case GUARD_OK:
		return "ok";
	case GUARD_PAUSED:
		return "paused";
	case GUARD_TRIPPED:
		return "tripped";
	}
	return "?";
}

const char *guard_reason_name(enum guard_reason r)
{
	switch (r) {
	case GUARD_REASON_NONE:
		return "";
	case GUARD_READ_ERROR_RATE:
		return "read_error_rate";
	case GUARD_READ_P99:
		return "read_p99_ms";
	case GUARD_MIRROR_FAILURE_RATE:
		return "mirror_failure_rate";
	case GUARD_SHADOW_MISMATCHES:
		return "shadow_mismatches_per_hour";
	}
	return "?";
}

int guard_verdict_format(const struct guard_verdict *v, char *buf, size_t cap)
{
	unsigned long long n = v->sample;
	char tail[96];

	switch (v->reason) {
	case GUARD_REASON_NONE:
		return snprintf(buf, cap, "ok");
	case GUARD_READ_ERROR_RATE:
		snprintf(tail, sizeof(tail), "percent of %llu reads", n);
		break;
	case GUARD_READ_P99:
		snprintf(tail, sizeof(tail), "ms, over %llu reads", n);
		break;
	case GUARD_MIRROR_FAILURE_RATE:
		snprintf(tail, sizeof(tail), "percent of %llu mirrored writes", n);
		break;
	case GUARD_SHADOW_MISMATCHES:
		snprintf(tail, sizeof(tail), "%llu mismatches", n);
		break;
	default:
		snprintf(tail, sizeof(tail), "?");
	}
	return snprintf(buf, cap, "%s: %s %.2f > %.2f (%s in %lld s)", guard_state_name(v->state),
			guard_reason_name(v->reason), v->measured, v->limit, tail,
			(long long)(v->window_ms / 1000));
}
