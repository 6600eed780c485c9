/*
 * guard — the rollback guards of SPEC §7.3 as runtime state: per new-system
 * upstream (by name) the sliding windows the proxy and the mirror feed, the
 * latch (ok | paused | tripped, with reason, measured value and since) that
 * the guard tick sets, and the latch file that carries it across restarts.
 * The decision itself is guard_check() (window.h); the daemon glue
 * (daemon/guards.c) turns a latch into held read weights, log lines and
 * metrics.
 *
 * Ownership: a guard_table is owned by the daemon's top level and outlives
 * every configuration snapshot. guard_table_bind points every upstream of a
 * snapshot at its entry (dw_upstream.guard) before the snapshot is
 * published; entries are freed with the table only, so a request or a
 * mirrored write on an old snapshot never sees a dangling one.
 *
 * Windows: one read window (with latency) and one mirror window per
 * (upstream, slot) — a slot per worker, so a worker records into windows no
 * other worker writes — and one shadow-mismatch window of one hour per
 * upstream. A reload that changes guards.window_s gives every upstream new
 * windows (the old ones are kept, unused, until the table is freed: a worker
 * may still be recording into them). Clearing a latch empties the windows:
 * what tripped the guard does not trip it again at the next tick.
 *
 * Latch: the tick latches the first time guard_check says paused or
 * tripped (a trip wins over a pause and replaces it; nothing but a clear
 * lowers a latch). Cleared by guard_clear: an operator's reset, or a reload
 * that changes the weight of a read route of a tripped upstream
 * (guard_reload_clears). While paused, a reload that raises a read weight of
 * that upstream is refused (guard_reload_check).
 *
 * The latch file, GUARD_FILE_NAME in the queue directory (one per daemon;
 * the CLI reads it, `dualwrite guard reset` edits it under the lock file
 * GUARD_LOCK_NAME, and the daemon notices the change within a tick). JSON:
 *   { "version": 1,
 *     "upstreams": { "gear_ops": { "state": "tripped",
 *                                  "reason": "read_error_rate",
 *                                  "measured": 2.4, "limit": 1.0,
 *                                  "sample": 312, "window_s": 60,
 *                                  "since_ms": 1764718000123,
 *                                  "detail": "tripped: read_error_rate ..." } } }
 * Only latched upstreams are listed; an absent file means none is. It is
 * written whole to a temporary file, fsync'ed, renamed over the old one and
 * the directory fsync'ed. A file that cannot be read or parsed is an error
 * (guard_file_read says where and why); the daemon then treats every
 * new-system upstream as tripped with reason "latch_unreadable" — the legacy
 * serves every read until an operator resets them — because a trip it can
 * no longer see must not turn into reads on a failing system.
 *
 * With the PostgreSQL fleet queue the latches are also rows there
 * (pgguard.h, daemon/guardfleet.c); fleet_seen marks a latch this sidecar
 * has seen in that table, whose later absence is a reset made elsewhere.
 *
 * Threads: guard_note_* and guard_up_state from any thread; everything else
 * on one thread (the daemon's main thread), or in a tool.
 */
#ifndef DW_GUARD_H
#define DW_GUARD_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "dw.h"
#include "window.h"

#define GUARD_FILE_NAME "guards.json"
#define GUARD_LOCK_NAME "guards.lock"
/* The reason of a latch restored from a file that could not be read. */
#define GUARD_REASON_UNREADABLE "latch_unreadable"

struct guard_latch {
	enum guard_state state;
	char reason[40];	/* guard_reason_name(), or GUARD_REASON_UNREADABLE, ... */
	double measured, limit; /* in the reason's unit: percent, ms, per hour */
	uint64_t sample;	/* events the measure was over */
	int64_t window_ms;
	int64_t since_ms;	/* wall clock, ms since the epoch */
	char detail[200];	/* guard_verdict_format()'s line, or why */
};

struct guard_wins; /* one shape of windows (guard.c) */

struct guard_up {
	struct guard_up *next;
	char *name;		  /* the upstream's name */
	unsigned state;		  /* atomic: enum guard_state of latch, for any thread */
	struct guard_latch latch; /* main thread */
	struct guard_wins *wins;  /* atomic pointer: the current windows */
	struct window *mismatches; /* one hour, whatever window_s says */
	bool bound;		  /* in the last bound snapshot */
	bool fleet_seen;	  /* daemon: this latch was seen in the fleet's table */
};

struct guard_table;

/* nslots: the number of recording slots (workers); at least 1. */
struct guard_table *guard_table_new(unsigned nslots);
void guard_table_free(struct guard_table *t);

/* Entries for every upstream of cfg (made on first sight), the limits and
 * window shape of cfg->guards, and cfg->upstreams[i].guard set. cfg must
 * not be published yet. */
void guard_table_bind(struct guard_table *t, struct dw_config *cfg);
struct guard_up *guard_find(const struct guard_table *t, const char *name);
/* The first entry (then ->next), in creation order; bound or not. */
struct guard_up *guard_table_first(const struct guard_table *t);
/* Call cb for every entry (bound or not), in creation order. */
void guard_table_each(const struct guard_table *t, void (*cb)(void *arg, struct guard_up *g),
		      void *arg);

static inline enum guard_state guard_up_state(const struct guard_up *g)
{
	return g ? (enum guard_state)__atomic_load_n(&g->state, __ATOMIC_RELAXED) : GUARD_OK;
}

/* ---- feeding the windows (any thread; g may be NULL: not tracked) ---- */
/* A read served (or attempted) by the new system: failed = 5xx, timeout,
 * connect failure or an answer that does not map; latency in us (< 0:
 * unknown). slot: the caller's worker (taken modulo the slots). */
void guard_note_read(struct guard_up *g, unsigned slot, int64_t now_ms, bool failed,
		     int64_t latency_us);
/* A mirrored write's first attempt: failed = not delivered by it. */
void guard_note_mirror(struct guard_up *g, unsigned slot, int64_t now_ms, bool failed);
/* One shadow comparison that found a mismatch. */
void guard_note_mismatch(struct guard_up *g, int64_t now_ms);

/* ---- main thread ---- */
/* Evaluate every bound entry at now_ms; an entry whose verdict is above its
 * latch is latched (since = wall_ms) and latched(arg, g, &verdict) is
 * called. Returns how many were latched. */
size_t guard_table_tick(struct guard_table *t, int64_t now_ms, int64_t wall_ms,
			void (*latched)(void *arg, struct guard_up *g,
					const struct guard_verdict *v),
			void *arg);
/* The current sums of an entry (for status): reads, mirrors, mismatches. */
void guard_sums(struct guard_up *g, int64_t now_ms, struct window_sum *reads,
		struct window_sum *mirrors, struct window_sum *mismatches);
/* Set a latch (restored from the file, or from the fleet). */
void guard_latch_set(struct guard_up *g, const struct guard_latch *l);
/* Back to ok, the windows emptied. */
void guard_clear(struct guard_up *g);

/* Whether upstream is latched (paused or tripped) / tripped. Unknown names
 * are ok. */
bool guard_latched(const struct guard_table *t, const char *upstream);
bool guard_tripped(const struct guard_table *t, const char *upstream);

/*
 * A reload from running to neu. guard_reload_check refuses it (-1, err
 * naming the route, its upstream and the weights) when neu raises the read
 * weight of a route whose upstream (in neu) is paused — compared with the
 * running route of the same name, a new route with any weight above 0
 * counting as a raise. guard_reload_clears calls cleared(arg, g, route) for
 * every tripped upstream that has, in running, a read route whose weight
 * neu changes (same route name, any upstream in neu); the caller clears.
 */
int guard_reload_check(const struct guard_table *t, const struct dw_config *running,
		       const struct dw_config *neu, struct dw_err *err) DW_MUSTCHECK;
void guard_reload_clears(const struct guard_table *t, const struct dw_config *running,
			 const struct dw_config *neu,
			 void (*cleared)(void *arg, struct guard_up *g, const char *route),
			 void *arg);

/* ---- the latch file ---- */
struct guard_file_entry {
	char *name;
	struct guard_latch latch;
};
struct guard_file {
	struct guard_file_entry *v;
	size_t n;
};
void guard_file_free(struct guard_file *f);
/* The entry of name, NULL when not latched. */
const struct guard_latch *guard_file_find(const struct guard_file *f, const char *name);
/* Add or replace name's latch (state ok: remove it). */
void guard_file_put(struct guard_file *f, const char *name, const struct guard_latch *l);
/* Parse the file's text; -1 with err (what is wrong) when it is not a
 * latch file. f is empty on error. */
int guard_file_parse(const char *text, size_t len, struct guard_file *f,
		     struct dw_err *err) DW_MUSTCHECK;
/* The file's text (malloc'd, ends with a newline). */
char *guard_file_format(const struct guard_file *f);
/* Read dir/GUARD_FILE_NAME: 1 when read, 0 when there is none (nothing is
 * latched), -1 with err ("PATH: why") when it cannot be read or parsed. */
int guard_file_read(const char *dir, struct guard_file *f, struct dw_err *err) DW_MUSTCHECK;
/* Write it atomically (tmp + fsync + rename + directory fsync); an empty f
 * removes the file. -1 with err. */
int guard_file_write(const char *dir, const struct guard_file *f, struct dw_err *err) DW_MUSTCHECK;
/* Take (blocking) the lock that serialises read-modify-write of the file
 * between the daemon and the CLI: an fd to give to guard_file_unlock, or
 * -1 with err. */
int guard_file_lock(const char *dir, struct dw_err *err);
void guard_file_unlock(int fd);
/* The table's latched entries as a file. */
void guard_table_export(const struct guard_table *t, struct guard_file *f);

#endif
