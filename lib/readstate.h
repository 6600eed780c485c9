/*
 * readstate — the runtime state of read routes that outlives reloads.
 *
 * A configuration snapshot is immutable; what must survive a reload (the
 * effective read weight, later the guard's latch and windows) lives here,
 * one entry per route *name*, in a table owned by the daemon's top level.
 * Before a new snapshot is published, readstate_bind points every read
 * route of it at its entry (dw_read.state), creating entries for new names
 * and storing the configured weight; a request holds the snapshot it
 * started on, and its route's entry is the same one every later snapshot
 * with that route name uses. Entries are freed with the table only, so a
 * request on an old snapshot never sees a dangling one.
 *
 * The effective weight is what a read loads (one relaxed atomic load): the
 * configured weight, or 0 while the route is held: while its upstream's
 * guard is tripped (guard.h). A bind holds the routes whose upstream in
 * that snapshot is tripped (dw_upstream.guard, bound first by
 * guard_table_bind) and releases the others; the guard tick holds them the
 * moment a trip latches (readstate_hold). A bind stores the new
 * weight at once, so every read that starts after the reload sees it, even
 * on a worker that has not swapped its snapshot yet.
 *
 * Threads: readstate_new/bind/free and readstate_hold on one thread (the
 * daemon's main thread); readstate_effective and the counters from any.
 */
#ifndef DW_READSTATE_H
#define DW_READSTATE_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"

enum read_side { READ_LEGACY = 0, READ_NEW = 1 };
/* Why a side serves a read (the reason label of dualwrite_read_total). */
enum read_reason {
	READ_BUCKET = 0,   /* the bucket against the effective weight */
	READ_FALLBACK = 1, /* the new system failed; the legacy answered */
	READ_PINNED = 2,   /* read-your-writes (not acted on yet) */
	READ_GUARD = 3,	   /* the effective weight is held at 0 */
	READ_NREASONS = 4
};
/* The outcome of a shadowed read (dualwrite_shadow_total's result label). */
enum shadow_result {
	SHADOW_MATCH = 0,
	SHADOW_MISMATCH = 1,
	SHADOW_ERROR = 2,   /* a side failed, or an answer is not JSON / not mappable */
	SHADOW_SKIPPED = 3, /* past the bound, the key is pinned, or the client left */
	SHADOW_NRESULTS = 4
};
const char *shadow_result_name(enum shadow_result r);
const char *read_side_name(enum read_side s);
const char *read_reason_name(enum read_reason r);

struct read_state {
	struct read_state *next;
	char *name;		/* the route's name */
	uint32_t configured;	/* atomic: the last bound snapshot's weight (hundredths) */
	uint32_t effective;	/* atomic: what reads use (hundredths) */
	bool held;		/* atomic: effective forced to 0 (guard) */
	bool bound;		/* in the last bound snapshot */
	/* counters by side and reason; NULL when the table has no registry */
	struct metric *m_total[2][READ_NREASONS];
	struct metric *m_weight; /* dualwrite_read_weight{route}: effective */
	struct metric *m_configured; /* dualwrite_read_weight_configured{route} */
	/* shadow outcomes: atomics (for /status) and their counters */
	uint64_t shadow[SHADOW_NRESULTS];
	struct metric *m_shadow[SHADOW_NRESULTS];
};

struct read_table;

/* m may be NULL (no metrics: tests, tools). */
struct read_table *readstate_new(struct metrics *m);
void readstate_free(struct read_table *t);

/* Point every read route of cfg at its entry and store its configured
 * weight; held when its upstream's guard (cfg->upstreams[].guard, when
 * bound) is tripped, else the effective weight follows. cfg must not be
 * published yet. */
void readstate_bind(struct read_table *t, struct dw_config *cfg);
/* The entry of a route name, NULL when none was ever bound. */
struct read_state *readstate_find(const struct read_table *t, const char *name);
/* Call cb for every entry in the last bound snapshot, in binding order. */
void readstate_each(const struct read_table *t, void (*cb)(void *arg, struct read_state *s),
		    void *arg);

/* Hold a route's effective weight at 0 (on) or give it back its configured
 * weight (off): the guards' lever. */
void readstate_hold(struct read_state *s, bool on);

static inline uint32_t readstate_effective(const struct read_state *s)
{
	return __atomic_load_n(&s->effective, __ATOMIC_RELAXED);
}
static inline uint32_t readstate_configured(const struct read_state *s)
{
	return __atomic_load_n(&s->configured, __ATOMIC_RELAXED);
}
static inline bool readstate_held(const struct read_state *s)
{
	return __atomic_load_n(&s->held, __ATOMIC_RELAXED);
}
/* Count one read served by side for reason (any thread). */
void readstate_count(struct read_state *s, enum read_side side, enum read_reason why);
/* Count one shadowed read's outcome (any thread). */
void readstate_shadow(struct read_state *s, enum shadow_result r);
static inline uint64_t readstate_shadow_count(const struct read_state *s, enum shadow_result r)
{
	return __atomic_load_n(&s->shadow[r], __ATOMIC_RELAXED);
}

#endif
