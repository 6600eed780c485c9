/*
 * breaker — the mirror's circuit breaker for one upstream, as pure logic
 * (no clock, no I/O: the caller passes the time and logs the changes).
 *
 * After BREAKER_FAILURES retryable failures in a row the breaker opens:
 * writes whose turn comes go straight to the queue (no connect attempt per
 * write against a dead target) until the cooldown passes; then one probe
 * goes out (breaker_sending), and its success closes the breaker while a
 * failure reopens it with the cooldown doubled (from BREAKER_MIN_MS up to
 * BREAKER_MAX_MS). Any success closes it and resets the cooldown.
 *
 * Runtime state, not configuration: the daemon keeps one per upstream name
 * in a breaker_table (below) that outlives every configuration snapshot, so
 * a reload that keeps the upstream's name keeps its breaker, open or not,
 * and every mirror shard (worker) counts into the same one.
 */
#ifndef DW_BREAKER_H
#define DW_BREAKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BREAKER_FAILURES 5
#define BREAKER_MIN_MS 1000
#define BREAKER_MAX_MS 30000
#define BREAKER_ERROR_MAX 200 /* bytes of the last failure kept, with its NUL */

struct breaker {
	int failures;	    /* retryable failures in a row */
	int64_t open_until; /* monotonic us; 0: closed */
	int cooldown_ms;
	bool probing;	    /* half-open: one send in flight decides */
	char last_error[BREAKER_ERROR_MAX]; /* the last failure, cut short */
};

enum breaker_change {
	BREAKER_SAME,	/* nothing to say (also a failed probe: still open) */
	BREAKER_OPENED, /* the failures in a row reached BREAKER_FAILURES */
	BREAKER_CLOSED, /* it was open (or half-open) and a send succeeded */
};

void breaker_init(struct breaker *b);
/* One send's result (why: the failure, NULL = "failed"). */
enum breaker_change breaker_note(struct breaker *b, bool failed, const char *why,
				 int64_t now_us);
/* Open, or half-open with the probe out: a write whose turn comes is queued. */
static inline bool breaker_is_open(const struct breaker *b, int64_t now_us)
{
	return b->open_until && (b->probing || now_us < b->open_until);
}
/* A send goes out while !breaker_is_open: after a cooldown it is the probe. */
static inline void breaker_sending(struct breaker *b)
{
	if (b->open_until)
		b->probing = true;
}

/*
 * The breakers of the daemon's mirror upstreams, one per name, shared by
 * the threads that send to them: five failures in a row open the breaker
 * whichever workers saw them, and after a cooldown one probe goes out in
 * all, not one per worker. A cell is the breaker above under a mutex; the
 * common case, a healthy upstream (no failure in a row, closed), is told
 * by one atomic load and takes no lock.
 *
 * Ownership: the table owns its cells; a cell lives as long as the table
 * (the daemon's top level), so a pointer to one never dangles.
 * Threads: every function but _new and _free from any thread.
 */
struct breaker_table;
struct breaker_cell;

struct breaker_table *breaker_table_new(void);
void breaker_table_free(struct breaker_table *t);
/* The cell of upstream name, made on first use (closed). */
struct breaker_cell *breaker_table_get(struct breaker_table *t, const char *name);

/* What a note left behind, for the log line of a change. */
struct breaker_view {
	int failures;
	int cooldown_ms;
	char last_error[BREAKER_ERROR_MAX];
};
/* breaker_note under the cell's lock; out (may be NULL) gets the state
 * after it when the answer is not BREAKER_SAME. */
enum breaker_change breaker_cell_note(struct breaker_cell *c, bool failed, const char *why,
				      int64_t now_us, struct breaker_view *out);
/* Whether a write whose turn comes may be sent: false while the breaker is
 * open or its probe is out; the first caller after a cooldown is let
 * through as the probe (breaker_sending), the others are refused until the
 * probe's answer is noted. */
bool breaker_cell_admit(struct breaker_cell *c, int64_t now_us);
/* breaker_is_open under the lock (nothing is changed). */
bool breaker_cell_is_open(struct breaker_cell *c, int64_t now_us);
/* The last failure, copied into buf (cut to len - 1 bytes). */
void breaker_cell_last_error(struct breaker_cell *c, char *buf, size_t len);

#endif
