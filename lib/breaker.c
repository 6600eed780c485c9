/*
 * breaker.c — the mirror's circuit breaker (breaker.h).
 */
#include "breaker.h"

#include <string.h>

void breaker_init(struct breaker *b)
{
	memset(b, 0, sizeof(*b));
	b->cooldown_ms = BREAKER_MIN_MS;
}

enum breaker_change breaker_note(struct breaker *b, bool failed, const char *why,
				 int64_t now_us)
{
	size_t n;

	if (!failed) {
		bool was_open = b->open_until != 0;

		b->failures = 0;
		b->open_until = 0;
		b->probing = false;
		b->cooldown_ms = BREAKER_MIN_MS;
		return was_open ? BREAKER_CLOSED : BREAKER_SAME;
	}
	why = why ? why : "failed";
	n = strnlen(why, sizeof(b->last_error) - 1); /* kept short on purpose */
	memcpy(b->last_error, why, n);
	b->last_error[n] = '\0';
	if (b->probing) { /* the probe failed: reopen for longer */
		b->cooldown_ms = b->cooldown_ms * 2 > BREAKER_MAX_MS ? BREAKER_MAX_MS
								      : b->cooldown_ms * 2;
		b->probing = false;
		b->open_until = now_us + (int64_t)b->cooldown_ms * 1000;
		return BREAKER_SAME;
	}
	if (++b->failures == BREAKER_FAILURES) {
		b->open_until = now_us + (int64_t)b->cooldown_ms * 1000;
		return BREAKER_OPENED;
	}
	return BREAKER_SAME;
}
