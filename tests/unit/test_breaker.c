/*
 * test_breaker — the mirror's circuit breaker: it opens at the fifth
 * failure in a row (a success in between starts the count again), stays open
 * for the cooldown, lets one probe out, reopens for twice as long when the
 * probe fails (up to the maximum), closes and resets the cooldown when a
 * send succeeds; the last error is kept, cut short.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_opens_at_the_fifth_failure_in_a_row),
		cmocka_unit_test(test_probe),
		cmocka_unit_test(test_last_error_is_cut_short),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
