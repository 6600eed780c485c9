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
 * Runtime state, not configuration: the daemon keeps one per mirror shard
 * and upstream name (daemon/mirror_send.c), so a reload that keeps the
 * upstream's name keeps its breaker, open or not.
 */
#ifndef DW_BREAKER_H
#define DW_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#define BREAKER_FAILURES 5
#define BREAKER_MIN_MS 1000
#define BREAKER_MAX_MS 30000

struct breaker {
	int failures;	    /* retryable failures in a row */
	int64_t open_until; /* monotonic us; 0: closed */
	int cooldown_ms;
	bool probing;	    /* half-open: one send in flight decides */
	char last_error[200]; /* the last failure, cut short */
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

#endif
