/*
 * breaker.c — the mirror's circuit breaker, and the table of them shared
 * by the daemon's mirror shards (breaker.h).
 */
#include "breaker.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw.h"

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

/* ---------------------------------------------------------------- shared */

struct breaker_cell {
	struct breaker_cell *next;
	pthread_mutex_t mu;
	struct breaker br; /* under mu */
	/* 1 while br has no failure in a row and is closed: what most notes and
	 * admits find, told without the lock. Written under mu. */
	int quiet;
	char name[];
};

struct breaker_table {
	pthread_mutex_t mu; /* the list, not the cells */
	struct breaker_cell *cells;
};

struct breaker_table *breaker_table_new(void)
{
	struct breaker_table *t = dw_calloc(1, sizeof(*t));

	pthread_mutex_init(&t->mu, NULL);
	return t;
}

void breaker_table_free(struct breaker_table *t)
{
	struct breaker_cell *c, *next;

	if (!t)
		return;
	for (c = t->cells; c; c = next) {
		next = c->next;
		pthread_mutex_destroy(&c->mu);
		free(c);
	}
	pthread_mutex_destroy(&t->mu);
	free(t);
}

struct breaker_cell *breaker_table_get(struct breaker_table *t, const char *name)
{
	struct breaker_cell *c;
	size_t n = strlen(name);

	pthread_mutex_lock(&t->mu);
	for (c = t->cells; c; c = c->next)
		if (strcmp(c->name, name) == 0)
			break;
	if (!c) {
		c = dw_calloc(1, sizeof(*c) + n + 1);
		memcpy(c->name, name, n + 1);
		pthread_mutex_init(&c->mu, NULL);
		breaker_init(&c->br);
		c->quiet = 1;
		c->next = t->cells;
		t->cells = c;
	}
	pthread_mutex_unlock(&t->mu);
	return c;
}

static bool cell_quiet(const struct breaker_cell *c)
{
	return __atomic_load_n(&c->quiet, __ATOMIC_ACQUIRE) != 0;
}

static void cell_settle(struct breaker_cell *c)
{
	__atomic_store_n(&c->quiet, c->br.failures == 0 && c->br.open_until == 0,
			 __ATOMIC_RELEASE);
}

enum breaker_change breaker_cell_note(struct breaker_cell *c, bool failed, const char *why,
				      int64_t now_us, struct breaker_view *out)
{
	enum breaker_change ch;

	if (!failed && cell_quiet(c))
		return BREAKER_SAME; /* a success on a healthy upstream changes nothing */
	pthread_mutex_lock(&c->mu);
	ch = breaker_note(&c->br, failed, why, now_us);
	if (out && ch != BREAKER_SAME) {
		out->failures = c->br.failures;
		out->cooldown_ms = c->br.cooldown_ms;
		memcpy(out->last_error, c->br.last_error, sizeof(out->last_error));
	}
	cell_settle(c);
	pthread_mutex_unlock(&c->mu);
	return ch;
}

bool breaker_cell_admit(struct breaker_cell *c, int64_t now_us)
{
	bool ok;

	if (cell_quiet(c))
		return true;
	pthread_mutex_lock(&c->mu);
	ok = !breaker_is_open(&c->br, now_us);
	if (ok)
		breaker_sending(&c->br); /* after a cooldown: the probe */
	pthread_mutex_unlock(&c->mu);
	return ok;
}

bool breaker_cell_is_open(struct breaker_cell *c, int64_t now_us)
{
	bool open;

	if (cell_quiet(c))
		return false;
	pthread_mutex_lock(&c->mu);
	open = breaker_is_open(&c->br, now_us);
	pthread_mutex_unlock(&c->mu);
	return open;
}

void breaker_cell_last_error(struct breaker_cell *c, char *buf, size_t len)
{
	if (!len)
		return;
	pthread_mutex_lock(&c->mu);
	snprintf(buf, len, "%s", c->br.last_error);
	pthread_mutex_unlock(&c->mu);
}
