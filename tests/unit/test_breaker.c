/*
 * test_breaker — the mirror's circuit breaker: it opens at the fifth
 * failure in a row (a success in between starts the count again), stays open
 * for the cooldown, lets one probe out, reopens for twice as long when the
 * probe fails (up to the maximum), closes and resets the cooldown when a
 * send succeeds; the last error is kept, cut short. The shared cells
 * (breaker_table): one count across threads, one probe in all, a healthy
 * upstream told without a change, the same cell for the same name.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>

#include "breaker.h"

#define S 1000000 /* us */

static void fail_n(struct breaker *b, int n, int64_t now)
{
	for (int i = 0; i < n; i++)
		assert_int_equal(breaker_note(b, true, "HTTP 503", now), BREAKER_SAME);
}

static void test_opens_at_the_fifth_failure_in_a_row(void **state)
{
	struct breaker b;

	(void)state;
	breaker_init(&b);
	fail_n(&b, BREAKER_FAILURES - 1, 0);
	assert_int_equal(breaker_note(&b, false, NULL, 0), BREAKER_SAME); /* count restarts */
	fail_n(&b, BREAKER_FAILURES - 1, 0);
	assert_false(breaker_is_open(&b, 0));
	assert_int_equal(breaker_note(&b, true, "reset", 10 * S), BREAKER_OPENED);
	assert_true(breaker_is_open(&b, 10 * S));
	assert_true(breaker_is_open(&b, 10 * S + BREAKER_MIN_MS * 1000 - 1));
	assert_false(breaker_is_open(&b, 10 * S + BREAKER_MIN_MS * 1000));
	assert_string_equal(b.last_error, "reset");
}

static void test_probe(void **state)
{
	struct breaker b;
	int64_t t = 0;
	int cool = BREAKER_MIN_MS;

	(void)state;
	breaker_init(&b);
	fail_n(&b, BREAKER_FAILURES - 1, t);
	assert_int_equal(breaker_note(&b, true, NULL, t), BREAKER_OPENED);
	assert_string_equal(b.last_error, "failed");
	/* each failed probe doubles the cooldown, up to the maximum */
	for (int i = 0; i < 8; i++) {
		t += (int64_t)cool * 1000;
		assert_false(breaker_is_open(&b, t));
		breaker_sending(&b); /* the probe */
		assert_true(breaker_is_open(&b, t)); /* nothing else while it is out */
		assert_int_equal(breaker_note(&b, true, "timed out", t), BREAKER_SAME);
		cool = cool * 2 > BREAKER_MAX_MS ? BREAKER_MAX_MS : cool * 2;
		assert_int_equal(b.cooldown_ms, cool);
		assert_true(breaker_is_open(&b, t + (int64_t)cool * 1000 - 1));
	}
	assert_int_equal(b.cooldown_ms, BREAKER_MAX_MS);
	/* a successful probe closes it and resets the cooldown */
	t += (int64_t)cool * 1000;
	breaker_sending(&b);
	assert_int_equal(breaker_note(&b, false, NULL, t), BREAKER_CLOSED);
	assert_false(breaker_is_open(&b, t));
	assert_int_equal(b.cooldown_ms, BREAKER_MIN_MS);
	assert_int_equal(b.failures, 0);
	/* a send while closed is no probe */
	breaker_sending(&b);
	assert_false(b.probing);
}

static void test_last_error_is_cut_short(void **state)
{
	struct breaker b;
	char long_why[1000];

	(void)state;
	memset(long_why, 'x', sizeof(long_why) - 1);
	long_why[sizeof(long_why) - 1] = '\0';
	breaker_init(&b);
	(void)breaker_note(&b, true, long_why, 0);
	assert_int_equal(strlen(b.last_error), sizeof(b.last_error) - 1);
}

static void test_table_gives_one_cell_per_name(void **state)
{
	struct breaker_table *t = breaker_table_new();
	struct breaker_cell *a = breaker_table_get(t, "gear_ops");

	(void)state;
	assert_ptr_equal(breaker_table_get(t, "gear_ops"), a);
	assert_ptr_not_equal(breaker_table_get(t, "v2"), a);
	assert_true(breaker_cell_admit(a, 0)); /* a new cell is closed */
	assert_false(breaker_cell_is_open(a, 0));
	assert_int_equal(breaker_cell_note(a, false, NULL, 0, NULL), BREAKER_SAME);
	breaker_table_free(t);
}

/* Failures seen by different threads count as one run: THREADS threads
 * noting FAILS each open the breaker exactly once. */
#define THREADS 4
#define FAILS 50

struct racer {
	struct breaker_cell *c;
	int opened;
};

static void *fail_many(void *arg)
{
	struct racer *r = arg;

	for (int i = 0; i < FAILS; i++)
		if (breaker_cell_note(r->c, true, "connect refused", 0, NULL) == BREAKER_OPENED)
			r->opened++;
	return NULL;
}

static void test_cell_counts_failures_of_every_thread(void **state)
{
	struct breaker_table *t = breaker_table_new();
	struct breaker_cell *c = breaker_table_get(t, "gear_ops");
	struct racer r[THREADS];
	pthread_t th[THREADS];
	struct breaker_view v;
	int opened = 0;
	char last[64];

	(void)state;
	/* four failures here, the fifth from another thread: open */
	for (int i = 0; i < BREAKER_FAILURES - 1; i++)
		assert_int_equal(breaker_cell_note(c, true, "HTTP 503", 0, &v), BREAKER_SAME);
	assert_true(breaker_cell_admit(c, 0));
	r[0].c = c;
	r[0].opened = 0;
	assert_int_equal(pthread_create(&th[0], NULL, fail_many, &r[0]), 0);
	assert_int_equal(pthread_join(th[0], NULL), 0);
	assert_int_equal(r[0].opened, 1);
	assert_true(breaker_cell_is_open(c, 0));
	assert_false(breaker_cell_admit(c, 0));
	breaker_cell_last_error(c, last, sizeof(last));
	assert_string_equal(last, "connect refused");
	/* closed by a success, then THREADS threads fail at once: one opening */
	assert_int_equal(breaker_cell_note(c, false, NULL, 0, &v), BREAKER_CLOSED);
	assert_false(breaker_cell_is_open(c, 0));
	for (int i = 0; i < THREADS; i++) {
		r[i].c = c;
		r[i].opened = 0;
		assert_int_equal(pthread_create(&th[i], NULL, fail_many, &r[i]), 0);
	}
	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		opened += r[i].opened;
	}
	assert_int_equal(opened, 1);
	breaker_table_free(t);
}

static void test_cell_lets_one_probe_out_in_all(void **state)
{
	struct breaker_table *t = breaker_table_new();
	struct breaker_cell *c = breaker_table_get(t, "gear_ops");
	int64_t after = (int64_t)BREAKER_MIN_MS * 1000;
	struct breaker_view v;

	(void)state;
	for (int i = 0; i < BREAKER_FAILURES - 1; i++)
		(void)breaker_cell_note(c, true, "HTTP 503", 0, NULL);
	assert_int_equal(breaker_cell_note(c, true, "HTTP 503", 0, &v), BREAKER_OPENED);
	assert_int_equal(v.failures, BREAKER_FAILURES);
	assert_int_equal(v.cooldown_ms, BREAKER_MIN_MS);
	assert_string_equal(v.last_error, "HTTP 503");
	assert_false(breaker_cell_admit(c, after - 1));
	assert_true(breaker_cell_admit(c, after)); /* the probe */
	assert_false(breaker_cell_admit(c, after)); /* any shard's next write waits */
	assert_false(breaker_cell_admit(c, after + 60 * S));
	/* the probe fails: open for twice as long, then one probe again */
	assert_int_equal(breaker_cell_note(c, true, "timed out", after, NULL), BREAKER_SAME);
	assert_false(breaker_cell_admit(c, after + 2 * after - 1));
	assert_true(breaker_cell_admit(c, after + 2 * after));
	assert_int_equal(breaker_cell_note(c, false, NULL, after + 2 * after, &v), BREAKER_CLOSED);
	assert_true(breaker_cell_admit(c, after + 2 * after));
	assert_true(breaker_cell_admit(c, after + 2 * after));
	breaker_table_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_opens_at_the_fifth_failure_in_a_row),
		cmocka_unit_test(test_probe),
		cmocka_unit_test(test_last_error_is_cut_short),
		cmocka_unit_test(test_table_gives_one_cell_per_name),
		cmocka_unit_test(test_cell_counts_failures_of_every_thread),
		cmocka_unit_test(test_cell_lets_one_probe_out_in_all),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
