/*
 * test_plan.c — the read plan (plan.h) and the runtime state it reads
 * (readstate.h): weights 0 and 100, the share at 30 %, stickiness, the ramp
 * by rebinding (a reload), the guard's hold, fallback, and the state and its
 * metrics surviving a rebind.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

static struct dw_config *load_weight(const char *weight, bool sticky)
{
	char text[1024];
	struct dw_errlist errs = { 0 };
	struct dw_config *c;

	snprintf(text, sizeof(text),
		 "listen = \"127.0.0.1:8080\";\n"
		 "upstreams = { legacy = { url = \"http://127.0.0.1:8000\"; };\n"
		 "              gear = { url = \"http://127.0.0.1:8002\"; }; };\n"
		 "default_upstream = \"legacy\";\n"
		 "routes = ( { name = \"eq\"; match = \"GET /user/{id}/equipment\";\n"
		 "             read = { upstream = \"gear\"; weight = %s; %s }; } );\n",
		 weight, sticky ? "sticky = \"$path.id\";" : "");
	c = config_load_string(text, "t.conf", &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.msgs[i]);
	assert_non_null(c);
	dw_errlist_free(&errs);
	return c;
}

/* Plan a read of /user/<key>/equipment. */
static struct read_plan plan_key(const struct dw_config *c, const char *key,
				 struct bucket_rng *rng)
{
	const char *names[] = { "id" };
	const char *values[] = { key };
	struct expr_ctx ctx = { .path_names = names, .path_values = values, .npath = key ? 1 : 0 };
	struct read_plan p;

	plan_read(c, &c->routes[0], &ctx, rng, &p);
	return p;
}

static void test_extremes(void **state)
{
	(void)state;
	struct bucket_rng rng;
	struct dw_config *c0 = load_weight("0", true), *c100 = load_weight("100", true);
	struct read_plan p;

	bucket_rng_seed(&rng, 1);
	for (int i = 0; i < 200; i++) {
		char k[32];
		snprintf(k, sizeof(k), "%d", i);
		p = plan_key(c0, k, &rng);
		assert_int_equal(p.side, READ_LEGACY);
		assert_int_equal(p.reason, READ_BUCKET);
		assert_int_equal(p.upstream, c0->default_upstream);
		p = plan_key(c100, k, &rng);
		assert_int_equal(p.side, READ_NEW);
		assert_int_equal(p.upstream, config_upstream_index(c100, "gear"));
	}
	config_unref(c0);
	config_unref(c100);
}

/* 30 %: near 30 % of 10k keys, each key always on the same side, and its
 * side is bucket_of's. */
static void test_share_and_sticky(void **state)
{
	(void)state;
	struct bucket_rng rng;
	struct dw_config *c = load_weight("30", true);
	int nnew = 0;

	bucket_rng_seed(&rng, 2);
	for (int i = 0; i < 10000; i++) {
		char k[32];
		snprintf(k, sizeof(k), "user-%d", i);
		struct read_plan a = plan_key(c, k, &rng), b = plan_key(c, k, &rng);
		assert_int_equal(a.side, b.side);
		assert_int_equal(a.bucket, bucket_of("eq", 2, k, strlen(k)));
		assert_int_equal(a.side == READ_NEW, a.bucket < 3000);
		nnew += a.side == READ_NEW;
	}
	assert_in_range(nnew, 2800, 3200);
	config_unref(c);
}

/* No sticky value: a draw per read, near the weight. */
static void test_draw(void **state)
{
	(void)state;
	struct bucket_rng rng;
	struct dw_config *c = load_weight("12.5", false);
	int nnew = 0;

	bucket_rng_seed(&rng, 3);
	for (int i = 0; i < 10000; i++)
		nnew += plan_key(c, "same", &rng).side == READ_NEW;
	assert_in_range(nnew, 1100, 1400);
	config_unref(c);
	/* a sticky expression whose field is missing draws too */
	c = load_weight("50", true);
	nnew = 0;
	for (int i = 0; i < 2000; i++)
		nnew += plan_key(c, NULL, &rng).side == READ_NEW;
	assert_in_range(nnew, 850, 1150);
	config_unref(c);
}

/* The ramp by reload: rebinding a new snapshot keeps the state, and a key
 * served by the new system at 10 % still is at 30, 50, 80; lowering moves
 * keys back. */
static void test_ramp_by_rebind(void **state)
{
	(void)state;
	static const char *const steps[] = { "10", "30", "50", "80", "100", "20" };
	struct read_table *t = readstate_new(NULL);
	struct bucket_rng rng;
	bool was_new[2000] = { false };
	struct read_state *s = NULL;

	bucket_rng_seed(&rng, 4);
	for (size_t st = 0; st < DW_ARRAY_LEN(steps); st++) {
		struct dw_config *c = load_weight(steps[st], true);
		bool lowering = st > 0 && atoi(steps[st]) < atoi(steps[st - 1]);

		readstate_bind(t, c);
		assert_non_null(c->routes[0].read->state);
		if (s)
			assert_ptr_equal(c->routes[0].read->state, s); /* survives the reload */
		s = c->routes[0].read->state;
		assert_int_equal(readstate_effective(s), (uint32_t)atoi(steps[st]) * 100);
		for (int i = 0; i < 2000; i++) {
			char k[32];
			snprintf(k, sizeof(k), "%d", i);
			bool now_new = plan_key(c, k, &rng).side == READ_NEW;
			if (!lowering && was_new[i])
				assert_true(now_new);
			if (lowering && !was_new[i])
				assert_false(now_new);
			was_new[i] = now_new;
		}
		config_unref(c);
	}
	readstate_free(t);
}

/* The guard's lever: held, every read goes to the legacy with reason
 * guard, whatever the bucket; released, the configured weight is back. */
static void test_hold_and_fallback(void **state)
{
	(void)state;
	struct read_table *t = readstate_new(NULL);
	struct dw_config *c = load_weight("100", true);
	struct bucket_rng rng;
	struct read_plan p;
	struct read_state *s;

	bucket_rng_seed(&rng, 5);
	readstate_bind(t, c);
	s = readstate_find(t, "eq");
	assert_ptr_equal(s, c->routes[0].read->state);
	readstate_hold(s, true);
	assert_int_equal(readstate_effective(s), 0);
	assert_int_equal(readstate_configured(s), 10000);
	p = plan_key(c, "k", &rng);
	assert_int_equal(p.side, READ_LEGACY);
	assert_int_equal(p.reason, READ_GUARD);
	readstate_hold(s, false);
	p = plan_key(c, "k", &rng);
	assert_int_equal(p.side, READ_NEW);
	assert_int_equal(p.reason, READ_BUCKET);
	plan_fallback(c, &p);
	assert_int_equal(p.side, READ_LEGACY);
	assert_int_equal(p.reason, READ_FALLBACK);
	assert_int_equal(p.upstream, c->default_upstream);
	config_unref(c);
	readstate_free(t);
}

/* Series: the counters by side and reason and the effective weight as a
 * percent; a route gone from the configuration drops to weight 0. */
static void test_metrics(void **state)
{
	(void)state;
	struct metrics *m = metrics_new();
	struct read_table *t = readstate_new(m);
	struct dw_config *c = load_weight("12.5", true), *none;
	struct dw_errlist errs = { 0 };
	struct evbuffer *out = evbuffer_new();
	struct read_state *s;
	char *text;

	readstate_bind(t, c);
	s = readstate_find(t, "eq");
	readstate_count(s, READ_LEGACY, READ_FALLBACK);
	readstate_count(s, READ_NEW, READ_BUCKET);
	readstate_count(s, READ_NEW, READ_BUCKET);
	metrics_render(m, out);
	evbuffer_add(out, "", 1);
	text = (char *)evbuffer_pullup(out, -1);
	assert_non_null(strstr(text, "dualwrite_read_weight{route=\"eq\"} 12.50\n"));
	assert_non_null(strstr(text, "dualwrite_read_total{route=\"eq\",side=\"new\",reason=\"bucket\"} 2\n"));
	assert_non_null(strstr(text, "dualwrite_read_total{route=\"eq\",side=\"legacy\",reason=\"fallback\"} 1\n"));
	assert_non_null(strstr(text, "dualwrite_read_total{route=\"eq\",side=\"legacy\",reason=\"guard\"} 0\n"));
	assert_null(strstr(text, "side=\"new\",reason=\"fallback\""));

	none = config_load_string("listen = \"127.0.0.1:8080\";\n"
				  "upstreams = { legacy = { url = \"http://127.0.0.1:8000\"; }; };\n"
				  "default_upstream = \"legacy\";\n",
				  "n.conf", &errs);
	assert_non_null(none);
	readstate_bind(t, none);
	assert_int_equal(readstate_effective(s), 0);
	evbuffer_drain(out, evbuffer_get_length(out));
	metrics_render(m, out);
	evbuffer_add(out, "", 1);
	assert_non_null(strstr((char *)evbuffer_pullup(out, -1), "dualwrite_read_weight{route=\"eq\"} 0.00\n"));
	evbuffer_free(out);
	config_unref(none);
	config_unref(c);
	readstate_free(t);
	metrics_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_extremes),      cmocka_unit_test(test_share_and_sticky),
		cmocka_unit_test(test_draw),	      cmocka_unit_test(test_ramp_by_rebind),
		cmocka_unit_test(test_hold_and_fallback), cmocka_unit_test(test_metrics),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
