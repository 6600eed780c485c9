/*
 * window.h — sliding-window counts and latency for the cut-over guards
 * (SPEC §7.3), and the guard decision itself.
 *
 * A window counts events (requests, mirrored writes, shadow mismatches), the
 * failures among them and, optionally, their latencies, over the last
 * window_ms milliseconds: a ring of slots of window_ms / nslots each. The
 * window covers the last window_ms rounded up to whole slots: at least
 * window_ms, at most window_ms + one slot (the current slot is partial).
 * Time is passed in by the caller as monotonic milliseconds (dw_now_us() /
 * 1000 in the daemon, made-up times in tests); nothing here reads a clock.
 * Restarts start empty: windows are not persisted (guard latches are).
 *
 * Latency: a log-linear histogram of microseconds, 16 sub-buckets per power
 * of two (exact below 16 us), up to WINDOW_LAT_MAX_US (~134 s; longer counts
 * as that). window_sum_quantile_us() returns the upper edge of the bucket
 * holding the rank-ceil(q*n) latency, so for p99: true p99 <= reported <
 * true p99 * 1.0625 — it never under-reports, and over-reports by < 6.25 %.
 * Memory: 1.5 KiB per slot with latency, 16 bytes without (60 slots: ~93 KiB),
 * plus one slot: the ring holds nslots + 1.
 *
 * Threads: every window carries its own mutex; window_record/window_add and
 * window_sum_add take it, so any thread may call them. The intended use in a
 * daemon with 2-8 workers: one window per (upstream, worker) recorded by that
 * worker only (the lock is then uncontended but for one read a second), and
 * one guard tick on the main thread every second that sums the workers'
 * windows into a window_sum (window_sum_add per worker) and calls
 * guard_check(). A crossing recorded at time t is therefore decided by
 * t + 1 s. A window whose writer's clock runs a little ahead of the reader's
 * counts as current.
 *
 * Design note (issue 11) — runtime state that outlives reloads. The config
 * snapshot is immutable and replaced whole on reload; what must survive it
 * lives beside it in a runtime table keyed by name, owned by the main
 * thread, looked up when a new snapshot is installed:
 *   per upstream: the per-worker windows (reads, first-attempt mirror
 *     deliveries, shadow mismatches with window_ms = 1 h), and the guard
 *     latch (ok | paused | tripped, reason, measured value, limit, since);
 *   per route: the effective read weight, an atomic uint32 in hundredths
 *     that workers load on every read (bucket.h): the configured weight, or
 *     0 while its upstream is tripped.
 * A reload keeps the windows and latches of names that still exist (a
 * changed window_s or min_requests starts new windows), creates them for new
 * names, and frees the rest when the old snapshot is released. A reload that
 * changes a tripped route's weight clears the trip; one that raises a weight
 * of a paused upstream is refused whole. The guard tick latches a trip or a
 * pause the first time guard_check() reports it, sets the effective weights
 * (atomic store), logs at error level with guard_verdict_format(), counts
 * dualwrite_guard_trips_total{upstream,reason}, and persists the latch beside
 * the queue. Built as: guard.h (table, latch, latch file), daemon/guards.c
 * (tick, reload, status) and, with the PostgreSQL fleet queue, pgguard.h
 * and daemon/guardfleet.c (one row per latched upstream, shared by every
 * sidecar).
 */
#ifndef DW_WINDOW_H
#define DW_WINDOW_H

#include <stddef.h>
#include <stdint.h>

#define WINDOW_LAT_SUB 16 /* sub-buckets per power of two */
#define WINDOW_LAT_OCTAVES 23 /* 2^4 .. 2^27 us */
#define WINDOW_LAT_BUCKETS (WINDOW_LAT_SUB + WINDOW_LAT_SUB * WINDOW_LAT_OCTAVES)
#define WINDOW_LAT_MAX_US ((INT64_C(1) << 27) - 1)
#define WINDOW_MAX_SLOTS 3600u

struct window;

/* A window of window_ms (>= nslots) in nslots slots (1..WINDOW_MAX_SLOTS),
 * with a latency histogram when with_latency. NULL on a bad argument (a
 * configuration error the caller has ruled out). Aborts on out-of-memory. */
struct window *window_new(int64_t window_ms, unsigned nslots, int with_latency);
void window_free(struct window *w); /* NULL is a no-op */

/* One event at now_ms: failed (0/1), and its latency in microseconds when
 * latency_us >= 0 and the window keeps latencies (a timeout counts the time
 * spent). An event older than what its slot now holds is dropped. */
void window_record(struct window *w, int64_t now_ms, int failed, int64_t latency_us);
/* n events, failures of them failed, at now_ms (no latency). */
void window_add(struct window *w, int64_t now_ms, uint32_t n, uint32_t failures);
/* Forget everything counted so far (a guard reset starts afresh). */
void window_clear(struct window *w);

/* The sum of one or more windows of the same shape at one instant. */
struct window_sum {
	uint64_t events, failures;
	uint64_t nlat;			     /* events with a latency */
	int64_t window_ms;		     /* of the windows summed; 0 while empty */
	uint64_t lat[WINDOW_LAT_BUCKETS];    /* counts per latency bucket */
};
void window_sum_reset(struct window_sum *s);
/* Adds what w counted in the window that ends at now_ms. */
void window_sum_add(struct window_sum *s, struct window *w, int64_t now_ms);
/* Failures as a percentage of events; 0 without events. */
double window_sum_fail_pct(const struct window_sum *s);
/* Events per hour: events scaled from the window's length to one hour. */
double window_sum_per_hour(const struct window_sum *s);
/* The q-quantile (0 < q <= 1) of latency in microseconds as described
 * above; -1 without latencies. */
int64_t window_sum_quantile_us(const struct window_sum *s, double q);

/* Latency bucket of a value, and the largest value in a bucket (for tests). */
unsigned window_lat_bucket(int64_t us);
int64_t window_lat_upper(unsigned bucket);

/* ---- The guard decision (§7.3). A limit < 0 turns that guard off. ---- */
struct guard_limits {
	uint64_t min_requests;		   /* no read/mirror decision below this many */
	double read_error_rate;		   /* percent of new-system reads failed */
	double read_p99_ms;		   /* p99 of new-system read latency */
	double mirror_failure_rate;	   /* percent of mirrored writes failed at first attempt */
	double shadow_mismatches_per_hour; /* -> pause */
};
/* The seeds' thresholds: 50, 1 %, 500 ms, 5 %, 5 per hour. */
void guard_limits_default(struct guard_limits *l);

enum guard_state { GUARD_OK, GUARD_PAUSED, GUARD_TRIPPED };
enum guard_reason {
	GUARD_REASON_NONE,
	GUARD_READ_ERROR_RATE,
	GUARD_READ_P99,
	GUARD_MIRROR_FAILURE_RATE,
	GUARD_SHADOW_MISMATCHES,
};
struct guard_verdict {
	enum guard_state state;
	enum guard_reason reason;
	double measured, limit; /* in the reason's unit: percent, ms, per hour */
	uint64_t sample;	/* events the measure is over */
	int64_t window_ms;
};

/* Decide from the sums of one upstream (any of them may be NULL: not
 * tracked). Every comparison is strictly "measured > limit" (the seeds'
 * "error rate > 1 %"). Read error rate, read p99 and mirror failure rate
 * trip (rollback), in that order of precedence, each only with at least
 * min_requests events of its own kind in the window; shadow mismatches per
 * hour pause, with no minimum. A trip wins over a pause. The verdict is
 * about this instant only: latching is the caller's (see the note above). */
struct guard_verdict guard_check(const struct guard_limits *l, const struct window_sum *reads,
				 const struct window_sum *mirrors,
				 const struct window_sum *mismatches);

/* "ok" | "paused" | "tripped"; "" | "read_error_rate" | "read_p99_ms" |
 * "mirror_failure_rate" | "shadow_mismatches_per_hour" (the config keys,
 * also the metric's reason label). */
const char *guard_state_name(enum guard_state s);
const char *guard_reason_name(enum guard_reason r);
/* One line for the log and the status, e.g.
 * "tripped: read_error_rate 2.40 > 1.00 (percent of 312 reads in 60 s)".
 * Always NUL-terminates within cap (cap >= 1); returns what snprintf does. */
int guard_verdict_format(const struct guard_verdict *v, char *buf, size_t cap);

#endif
