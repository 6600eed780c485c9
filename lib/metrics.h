/*
 * metrics — a thread-safe registry of counters, gauges and histograms,
 * rendered in the Prometheus text exposition format (version 0.0.4).
 *
 * A series is identified by its metric name and a label string such as
 * `route="x",status="200"`. Looking one up takes a mutex (do it once and keep
 * the handle when the labels are fixed); updating a handle is one atomic
 * operation. Handles stay valid for the registry's lifetime. Series are never
 * removed, so counters stay monotonic across configuration reloads.
 */
#ifndef DW_METRICS_H
#define DW_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct metrics;
struct metric;	  /* a counter or gauge series */
struct histogram; /* a histogram series */

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* Get or create a series. help is used the first time a name is seen.
 * labels may be NULL or "" for none. Returns a stable handle. */
struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
			       const char *labels);
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help,
			     const char *labels);
/* A gauge whose value is set in hundredths and rendered as a decimal with two
 * places (a read weight of 1250 renders as 12.50). The first call for a name
 * fixes it. */
struct metric *metrics_gauge_centi(struct metrics *m, const char *name, const char *help,
				   const char *labels);
/* bounds: ascending upper bounds (seconds, bytes...), +Inf implied. The first
 * call for a name fixes its bounds. */
struct histogram *metrics_histogram(struct metrics *m, const char *name, const char *help,
				    const char *labels, const double *bounds, size_t nbounds);

void metric_add(struct metric *c, int64_t v); /* counters: v >= 0 */
void metric_inc(struct metric *c);
void metric_set(struct metric *g, int64_t v); /* gauges */
int64_t metric_value(const struct metric *c);
void histogram_observe(struct histogram *h, double v);

/* Default latency buckets in seconds (0.0005 .. 10). */
extern const double metrics_latency_bounds[];
extern const size_t metrics_latency_nbounds;

/* Append the whole registry in Prometheus text format. */
void metrics_render(struct metrics *m, struct evbuffer *out);

/* Escape a label value ("\\", "\"", "\n") into buf; returns buf. */
const char *metrics_label_escape(const char *v, char *buf, size_t len);

#endif
