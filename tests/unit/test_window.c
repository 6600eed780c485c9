/*
 * test_window — sliding windows and the guard decision of §7.3: the latency
 * histogram's buckets and its stated p99 error bound, slots expiring exactly
 * at the window's edge, late events dropped, a writer's clock a little ahead,
 * the per-hour rate, summing per-worker windows (also from threads while
 * they record), and guard_check for every trigger, its minimum, strictness,
 * precedence and off switch, with the line it logs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>

#include "window.h"

static struct window_sum sum; /* big: not on the stack */

static struct window_sum *sum_of(struct window *w, int64_t now_ms)
{
	window_sum_reset(&sum);
	window_sum_add(&sum, w, now_ms);
	return &sum;
}

static void test_latency_buckets(void **state)
{
	(void)state;
	for (int64_t v = 0; v < 16; v++) {
		assert_int_equal(window_lat_bucket(v), v);
		assert_int_equal(window_lat_upper((unsigned)v), v);
	}
	/* contiguous, and each upper edge within 1/16 of every value it holds */
	for (unsigned b = 0; b + 1 < WINDOW_LAT_BUCKETS; b++) {
		int64_t up = window_lat_upper(b);

		assert_int_equal(window_lat_bucket(up), b);
		assert_int_equal(window_lat_bucket(up + 1), b + 1);
	}
	for (int64_t v = 16; v <= WINDOW_LAT_MAX_US; v = v * 17 / 16 + 3) {
		int64_t up = window_lat_upper(window_lat_bucket(v));

		assert_true(up >= v);
		assert_true((double)up < (double)v * 1.0625);
	}
	assert_int_equal(window_lat_bucket(WINDOW_LAT_MAX_US), WINDOW_LAT_BUCKETS - 1);
	assert_int_equal(window_lat_bucket(INT64_C(1) << 40), WINDOW_LAT_BUCKETS - 1);
	assert_int_equal(window_lat_upper(WINDOW_LAT_BUCKETS - 1), WINDOW_LAT_MAX_US);
	assert_int_equal(window_lat_bucket(-5), 0);
}

/* 60 s in 1 s slots: an event at t=0 counts until t=60999 and not at 61000. */
static void test_expiry_at_the_edge(void **state)
{
	struct window *w = window_new(60000, 60, 1);

	(void)state;
	window_record(w, 0, 1, 1000);
	assert_int_equal(sum_of(w, 0)->events, 1);
	window_record(w, 30500, 0, 2000);
	assert_int_equal(sum_of(w, 60999)->events, 2);
	assert_int_equal(sum.failures, 1);
	assert_int_equal(sum.nlat, 2);
	assert_int_equal(sum.window_ms, 60000);
	assert_int_equal(sum_of(w, 61000)->events, 1);
	assert_int_equal(sum.failures, 0);
	assert_int_equal(sum_of(w, 90999)->events, 1);
	assert_int_equal(sum_of(w, 91000)->events, 0);
	assert_int_equal(window_sum_quantile_us(&sum, 0.99), -1);
	/* a slot reused after a lap starts from zero */
	window_record(w, 61000, 0, 5);
	assert_int_equal(sum_of(w, 61000)->events, 2);
	assert_int_equal(sum.failures, 0);
	window_free(w);
	window_free(NULL);
}

static void test_late_and_early_events(void **state)
{
	struct window *w = window_new(60000, 60, 0);

	(void)state;
	window_record(w, 100000, 0, -1); /* slot 100, ring entry 100 % 61 = 39 */
	window_record(w, 39000, 1, -1);	 /* slot 39, same entry, older: dropped */
	window_record(w, 45000, 1, -1);	 /* slot 45: another entry, counts while in the window */
	assert_int_equal(sum_of(w, 100000)->events, 2);
	assert_int_equal(sum.failures, 1); /* the one at 45 s; the one at 39 s was dropped */
	assert_int_equal(sum_of(w, 45000)->events, 2); /* the reader's clock behind: 100 is "ahead" */
	/* a writer ahead of the reader by a few ms counts as current */
	window_record(w, 101001, 0, -1);
	assert_int_equal(sum_of(w, 100999)->events, 3);
	window_free(w);
}

static void test_rates_and_p99(void **state)
{
	struct window *w = window_new(60000, 60, 1);
	int64_t p99;

	(void)state;
	/* latencies 1..1000 ms over 50 s, every 100th a failure */
	for (int i = 1; i <= 1000; i++)
		window_record(w, 10000 + i * 50, i % 100 == 0, (int64_t)i * 1000);
	sum_of(w, 60000);
	assert_int_equal(sum.events, 1000);
	assert_true(window_sum_fail_pct(&sum) == 1.0);
	p99 = window_sum_quantile_us(&sum, 0.99); /* true: 990 ms */
	assert_true(p99 >= 990000 && (double)p99 < 990000 * 1.0625);
	assert_true(window_sum_quantile_us(&sum, 1.0) >= 1000000);
	assert_true(window_sum_quantile_us(&sum, 0.5) >= 500000 && window_sum_quantile_us(&sum, 0.5) < 531250);
	assert_true(window_sum_per_hour(&sum) == 60000.0);
	window_free(w);

	/* 1 hour in 60 one-minute slots: mismatches per hour */
	w = window_new(3600000, 60, 0);
	for (int i = 0; i < 6; i++)
		window_add(w, (int64_t)i * 600000, 1, 0);
	assert_true(window_sum_per_hour(sum_of(w, 3000000)) == 6.0);
	assert_true(window_sum_per_hour(sum_of(w, 3660000)) == 5.0); /* the t=0 one has left */
	window_add(w, 3660000, 3, 1);
	assert_int_equal(sum_of(w, 3660000)->events, 8);
	assert_int_equal(sum.failures, 1);
	window_free(w);

	assert_null(window_new(0, 60, 0));
	assert_null(window_new(59, 60, 0));
	assert_null(window_new(60000, 0, 0));
	assert_null(window_new(60000000, WINDOW_MAX_SLOTS + 1, 0));
}

/* Four workers' windows summed equal one window that saw everything. */
static void test_sum_of_workers(void **state)
{
	struct window *all = window_new(60000, 60, 1), *wk[4];
	static struct window_sum merged;

	(void)state;
	for (int i = 0; i < 4; i++)
		wk[i] = window_new(60000, 60, 1);
	for (int i = 0; i < 4000; i++) {
		int64_t t = 1000 + i * 20;

		window_record(wk[i % 4], t, i % 7 == 0, (i * 37) % 900000);
		window_record(all, t, i % 7 == 0, (i * 37) % 900000);
	}
	window_sum_reset(&merged);
	for (int i = 0; i < 4; i++)
		window_sum_add(&merged, wk[i], 80000);
	sum_of(all, 80000);
	assert_int_equal(merged.events, sum.events);
	assert_int_equal(merged.failures, sum.failures);
	assert_int_equal(merged.nlat, sum.nlat);
	assert_memory_equal(merged.lat, sum.lat, sizeof(sum.lat));
	assert_int_equal(window_sum_quantile_us(&merged, 0.99), window_sum_quantile_us(&sum, 0.99));
	for (int i = 0; i < 4; i++)
		window_free(wk[i]);
	window_free(all);
}

struct worker {
	struct window *own, *shared;
};

static void *worker_main(void *arg)
{
	struct worker *wk = arg;

	for (int i = 0; i < 50000; i++) {
		window_record(wk->own, 5000, i % 10 == 0, i);
		window_record(wk->shared, 5000, 0, i);
	}
	return NULL;
}

/* Workers record while the main thread sums: nothing is lost or torn. */
static void test_threads(void **state)
{
	enum { NW = 4 };
	struct worker wk[NW];
	pthread_t th[NW];
	struct window *shared = window_new(60000, 60, 1);
	static struct window_sum s;

	(void)state;
	for (int i = 0; i < NW; i++) {
		wk[i].own = window_new(60000, 60, 1);
		wk[i].shared = shared;
		assert_int_equal(pthread_create(&th[i], NULL, worker_main, &wk[i]), 0);
	}
	for (int r = 0; r < 200; r++) { /* the guard tick, racing the workers */
		window_sum_reset(&s);
		for (int i = 0; i < NW; i++)
			window_sum_add(&s, wk[i].own, 5000);
		assert_true(s.events <= (uint64_t)NW * 50000 && s.nlat == s.events);
	}
	for (int i = 0; i < NW; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	window_sum_reset(&s);
	for (int i = 0; i < NW; i++)
		window_sum_add(&s, wk[i].own, 5000);
	assert_int_equal(s.events, NW * 50000);
	assert_int_equal(s.failures, NW * 5000);
	assert_int_equal(sum_of(shared, 5000)->events, NW * 50000);
	for (int i = 0; i < NW; i++)
		window_free(wk[i].own);
	window_free(shared);
}

/* A sum of n events with f failures and every latency lat_us. */
static void fill(struct window_sum *s, uint64_t n, uint64_t f, int64_t lat_us)
{
	window_sum_reset(s);
	s->events = n;
	s->failures = f;
	s->window_ms = 60000;
	if (lat_us >= 0) {
		s->nlat = n;
		s->lat[window_lat_bucket(lat_us)] = n;
	}
}

static void test_guard_check(void **state)
{
	static struct window_sum reads, mirrors, mism;
	struct guard_limits l;
	struct guard_verdict v;
	char line[160];

	(void)state;
	guard_limits_default(&l);
	assert_int_equal(l.min_requests, 50);
	fill(&reads, 49, 49, 10000); /* all failing, but fewer than 50 */
	v = guard_check(&l, &reads, NULL, NULL);
	assert_int_equal(v.state, GUARD_OK);
	guard_verdict_format(&v, line, sizeof(line));
	assert_string_equal(line, "ok");

	fill(&reads, 100, 1, 10000); /* exactly 1 %: not over */
	assert_int_equal(guard_check(&l, &reads, NULL, NULL).state, GUARD_OK);
	fill(&reads, 50, 1, 10000); /* 2 % */
	v = guard_check(&l, &reads, NULL, NULL);
	assert_int_equal(v.state, GUARD_TRIPPED);
	assert_int_equal(v.reason, GUARD_READ_ERROR_RATE);
	assert_true(v.measured == 2.0 && v.limit == 1.0 && v.sample == 50);
	guard_verdict_format(&v, line, sizeof(line));
	assert_string_equal(line, "tripped: read_error_rate 2.00 > 1.00 (percent of 50 reads in 60 s)");

	/* p99: 98 fast, 2 slow -> rank 99 is slow */
	fill(&reads, 100, 0, 10000);
	reads.lat[window_lat_bucket(10000)] = 98;
	reads.lat[window_lat_bucket(700000)] = 2;
	v = guard_check(&l, &reads, NULL, NULL);
	assert_int_equal(v.reason, GUARD_READ_P99);
	assert_true(v.measured >= 700.0 && v.measured < 700.0 * 1.0625);
	assert_string_equal(guard_reason_name(v.reason), "read_p99_ms");
	reads.lat[window_lat_bucket(10000)] = 99; /* 1 slow: p99 is fast */
	reads.lat[window_lat_bucket(700000)] = 1;
	assert_int_equal(guard_check(&l, &reads, NULL, NULL).state, GUARD_OK);
	fill(&reads, 100, 0, 499000); /* 499 ms lands in a bucket whose edge is 507.903 */
	assert_int_equal(guard_check(&l, &reads, NULL, NULL).reason, GUARD_READ_P99);
	fill(&reads, 100, 0, 450000);
	assert_int_equal(guard_check(&l, &reads, NULL, NULL).state, GUARD_OK);

	/* mirror first-attempt failures: 5 % is not over, 6 % is */
	fill(&mirrors, 100, 5, -1);
	assert_int_equal(guard_check(&l, &reads, &mirrors, NULL).state, GUARD_OK);
	fill(&mirrors, 100, 6, -1);
	v = guard_check(&l, &reads, &mirrors, NULL);
	assert_int_equal(v.reason, GUARD_MIRROR_FAILURE_RATE);
	assert_true(v.measured == 6.0);
	fill(&mirrors, 40, 40, -1); /* below the minimum */
	assert_int_equal(guard_check(&l, NULL, &mirrors, NULL).state, GUARD_OK);

	/* shadow mismatches per hour pause, with no minimum */
	fill(&mism, 5, 0, -1);
	mism.window_ms = 3600000;
	assert_int_equal(guard_check(&l, NULL, NULL, &mism).state, GUARD_OK);
	mism.events = 6;
	v = guard_check(&l, &reads, NULL, &mism);
	assert_int_equal(v.state, GUARD_PAUSED);
	assert_int_equal(v.reason, GUARD_SHADOW_MISMATCHES);
	guard_verdict_format(&v, line, sizeof(line));
	assert_string_equal(line, "paused: shadow_mismatches_per_hour 6.00 > 5.00 (6 mismatches in 3600 s)");

	/* a trip wins over a pause; read error rate over p99 */
	fill(&reads, 100, 50, 900000);
	v = guard_check(&l, &reads, &mirrors, &mism);
	assert_int_equal(v.state, GUARD_TRIPPED);
	assert_int_equal(v.reason, GUARD_READ_ERROR_RATE);

	/* off switches */
	l.read_error_rate = -1;
	assert_int_equal(guard_check(&l, &reads, NULL, &mism).reason, GUARD_READ_P99);
	l.read_p99_ms = -1;
	l.shadow_mismatches_per_hour = -1;
	assert_int_equal(guard_check(&l, &reads, NULL, &mism).state, GUARD_OK);
	assert_int_equal(guard_check(&l, NULL, NULL, NULL).state, GUARD_OK);

	/* a truncated line is still a string */
	guard_verdict_format(&(struct guard_verdict){GUARD_TRIPPED, GUARD_READ_P99, 1, 2, 3, 60000}, line, 8);
	assert_string_equal(line, "tripped");
	assert_string_equal(guard_state_name(GUARD_PAUSED), "paused");
	assert_string_equal(guard_reason_name(GUARD_MIRROR_FAILURE_RATE), "mirror_failure_rate");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_latency_buckets),
	    cmocka_unit_test(test_expiry_at_the_edge),
	    cmocka_unit_test(test_late_and_early_events),
	    cmocka_unit_test(test_rates_and_p99),
	    cmocka_unit_test(test_sum_of_workers),
	    cmocka_unit_test(test_threads),
	    cmocka_unit_test(test_guard_check),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
