/*
 * test_pinset.c — the read-your-writes set (pinset.h): counting, per
 * upstream, blind writes, parking and the sweep, many threads at once; and
 * the plan's use of it (plan.h): a pinned read goes to the legacy with
 * reason pinned and is not shadowed, the key defaults to sticky, a route's
 * `pins` parse with file:line errors.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pinset.h"
#include "plan.h"

static void test_count(void **state)
{
	(void)state;
	struct pinset *ps = pinset_new();
	struct pinset_stats st;

	assert_false(pinset_has(ps, "gear", "42"));
	assert_true(pinset_empty(ps));
	pinset_add(ps, "gear", "42");
	assert_false(pinset_empty(ps));
	pinset_add(ps, "gear", "42");
	assert_true(pinset_has(ps, "gear", "42"));
	assert_false(pinset_has(ps, "other", "42")); /* per upstream */
	assert_false(pinset_has(ps, "gear", "4"));
	assert_false(pinset_has(ps, "gear", NULL));
	pinset_stats(ps, "gear", &st);
	assert_int_equal(st.keys, 1);
	pinset_del(ps, "gear", "42");
	assert_true(pinset_has(ps, "gear", "42")); /* one write of two still pending */
	pinset_del(ps, "gear", "42");
	assert_false(pinset_has(ps, "gear", "42"));
	pinset_del(ps, "gear", "42"); /* underflow: counted, never negative */
	pinset_add(ps, "gear", "42");
	assert_true(pinset_has(ps, "gear", "42"));
	pinset_stats(ps, NULL, &st);
	assert_int_equal(st.underflows, 1);
	assert_int_equal(st.keys, 1);
	/* "ab"+"c" and "a"+"bc" are different pairs */
	pinset_add(ps, "ab", "c");
	assert_false(pinset_has(ps, "a", "bc"));
	/* a long key (beyond the stack buffer) */
	char big[1000];
	memset(big, 'k', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	pinset_add(ps, "gear", big);
	assert_true(pinset_has(ps, "gear", big));
	pinset_del(ps, "gear", big);
	assert_false(pinset_has(ps, "gear", big));
	pinset_free(ps);
	pinset_free(NULL);
}

static void test_blind(void **state)
{
	(void)state;
	struct pinset *ps = pinset_new();

	pinset_blind_add(ps, "gear", 1);
	assert_true(pinset_has(ps, "gear", "anything"));
	assert_true(pinset_has(ps, "gear", NULL));
	assert_false(pinset_has(ps, "other", "anything"));
	pinset_blind_add(ps, "gear", -1);
	assert_false(pinset_has(ps, "gear", "anything"));
	pinset_blind_add(ps, "gear", -1); /* underflow ignored */
	assert_false(pinset_blind(ps, "gear"));
	pinset_free(ps);
}

static const uint64_t *final_seqs;
static size_t final_n;
static size_t final_calls;

static void final_cb(void *arg, const uint64_t *seqs, size_t n, bool *out)
{
	(void)arg;
	final_calls++;
	for (size_t i = 0; i < n; i++) {
		if (i)
			assert_true(seqs[i - 1] < seqs[i]); /* ascending */
		for (size_t k = 0; k < final_n; k++)
			if (final_seqs[k] == seqs[i])
				out[i] = true;
	}
}

static void test_park_and_sweep(void **state)
{
	(void)state;
	struct pinset *ps = pinset_new();
	const char *keys7[] = { "42", "user:7" };
	const char *keys9[] = { "43", "user:7" };
	uint64_t fin[] = { 9 };
	struct pinset_stats st;

	for (int i = 0; i < 2; i++) {
		pinset_add(ps, "gear", keys7[i]);
		pinset_add(ps, "gear", keys9[i]);
	}
	pinset_blind_add(ps, "gear", 1);
	pinset_park(ps, 9, "gear", keys9, 2, NULL, 0, true); /* parked out of order */
	pinset_park(ps, 7, "gear", keys7, 2, NULL, 0, false);
	pinset_stats(ps, "gear", &st);
	assert_int_equal(st.parked, 2);
	assert_int_equal(st.keys, 3);
	assert_int_equal(st.blind, 1);
	final_seqs = fin;
	final_n = 1;
	assert_int_equal(pinset_sweep(ps, final_cb, NULL), 1); /* 9 is delivered */
	assert_false(pinset_has(ps, "gear", "43"));
	assert_false(pinset_blind(ps, "gear"));
	assert_true(pinset_has(ps, "gear", "user:7")); /* 7 still holds it */
	assert_true(pinset_has(ps, "gear", "42"));
	final_n = 0;
	assert_int_equal(pinset_sweep(ps, final_cb, NULL), 0);
	fin[0] = 7;
	final_n = 1;
	assert_int_equal(pinset_sweep(ps, final_cb, NULL), 1);
	assert_false(pinset_has(ps, "gear", "user:7"));
	pinset_stats(ps, NULL, &st);
	assert_int_equal(st.keys + st.parked + st.blind + st.underflows, 0);
	final_calls = 0;
	assert_int_equal(pinset_sweep(ps, final_cb, NULL), 0);
	assert_int_equal(final_calls, 0); /* nothing parked: no call */
	pinset_free(ps);
}

/* Many parked writes: batches, and what stays parked stays. */
static void test_sweep_many(void **state)
{
	(void)state;
	struct pinset *ps = pinset_new();
	static uint64_t fin[1500];
	char k[32];

	for (uint64_t s = 1; s <= 3000; s++) {
		const char *kp = k;

		snprintf(k, sizeof(k), "k%llu", (unsigned long long)s);
		pinset_add(ps, "gear", k);
		pinset_park(ps, s, "gear", &kp, 1, NULL, 0, false);
	}
	for (size_t i = 0; i < 1500; i++)
		fin[i] = 2 * i + 2; /* the even ones were delivered */
	final_seqs = fin;
	final_n = 1500;
	assert_int_equal(pinset_sweep(ps, final_cb, NULL), 1500);
	assert_true(pinset_has(ps, "gear", "k1"));
	assert_false(pinset_has(ps, "gear", "k2"));
	assert_true(pinset_has(ps, "gear", "k2999"));
	struct pinset_stats st;
	pinset_stats(ps, "gear", &st);
	assert_int_equal(st.keys, 1500);
	assert_int_equal(st.parked, 1500);
	pinset_free(ps); /* frees what is still parked */
}

/* A pin that did not evaluate pins the keys that begin with its literal
 * text, and no other; parked, it is given back by the sweep; "" is blind. */
static void test_prefix(void **state)
{
	(void)state;
	struct pinset *ps = pinset_new();
	const char *pre[] = { "user:" };
	const char *blind[] = { "" };
	uint64_t fin[] = { 5 };
	struct pinset_stats st;
	char p[16];

	assert_false(pinset_has(ps, "gear", "user:7"));
	pinset_prefix_add(ps, "gear", "user:", 1);
	assert_true(pinset_has(ps, "gear", "user:7"));
	assert_true(pinset_has(ps, "gear", "user:"));
	assert_false(pinset_has(ps, "gear", "42"));	/* an item read goes on */
	assert_false(pinset_has(ps, "gear", "use"));
	assert_false(pinset_has(ps, "other", "user:7")); /* only its upstream */
	assert_true(pinset_has(ps, "gear", NULL));	/* a keyless read waits */
	assert_false(pinset_blind(ps, "gear"));
	pinset_prefix_add(ps, "gear", "user:", 1);
	pinset_prefix_add(ps, "gear", "user:", -1);
	assert_true(pinset_has(ps, "gear", "user:7"));
	pinset_prefix_add(ps, "gear", "user:", -1);
	assert_false(pinset_has(ps, "gear", "user:7"));
	assert_true(pinset_empty(ps));
	pinset_prefix_add(ps, "gear", "user:", -1); /* underflow: counted, no effect */
	pinset_stats(ps, NULL, &st);
	assert_int_equal(st.underflows, 1);
	assert_true(pinset_empty(ps));

	/* "" is blind; parked, the sweep gives both back */
	pinset_prefix_add(ps, "gear", "user:", 1);
	pinset_prefix_add(ps, "gear", "", 1);
	assert_true(pinset_has(ps, "gear", "42"));
	assert_true(pinset_blind(ps, "gear"));
	pinset_park(ps, 5, "gear", NULL, 0, pre, 1, false);
	pinset_park(ps, 6, "gear", NULL, 0, blind, 1, false);
	pinset_stats(ps, "gear", &st);
	assert_int_equal(st.prefixed, 1);
	assert_int_equal(st.blind, 1);
	final_seqs = fin;
	final_n = 1;
	assert_int_equal(pinset_sweep(ps, final_cb, NULL), 1);
	assert_true(pinset_has(ps, "gear", "42")); /* 6 still blind */
	fin[0] = 6;
	assert_int_equal(pinset_sweep(ps, final_cb, NULL), 1);
	assert_false(pinset_has(ps, "gear", "user:7"));
	assert_true(pinset_empty(ps));

	/* past PINSET_PREFIXES distinct prefixes a new one is blind, add and del alike */
	for (int i = 0; i < 16; i++) {
		snprintf(p, sizeof(p), "p%d:", i);
		pinset_prefix_add(ps, "gear", p, 1);
		pinset_prefix_add(ps, "gear", p, -1);
	}
	pinset_prefix_add(ps, "gear", "q:", 1);
	assert_true(pinset_blind(ps, "gear"));
	assert_true(pinset_has(ps, "gear", "42"));
	pinset_prefix_add(ps, "gear", "q:", -1);
	assert_false(pinset_blind(ps, "gear"));
	assert_true(pinset_empty(ps));
	pinset_stats(ps, NULL, &st);
	assert_int_equal(st.underflows, 1);
	pinset_free(ps);
}

static void *hammer(void *arg)
{
	struct pinset *ps = arg;
	char k[32];

	for (int r = 0; r < 3; r++) {
		for (int i = 0; i < 2000; i++) {
			snprintf(k, sizeof(k), "%d", i);
			pinset_add(ps, "gear", k);
		}
		for (int i = 0; i < 2000; i++) {
			snprintf(k, sizeof(k), "%d", i);
			assert_true(pinset_has(ps, "gear", k));
			pinset_del(ps, "gear", k);
		}
	}
	return NULL;
}

static void test_threads(void **state)
{
	(void)state;
	struct pinset *ps = pinset_new();
	pthread_t t[4];
	struct pinset_stats st;

	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, hammer, ps), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	pinset_stats(ps, NULL, &st);
	assert_int_equal(st.keys, 0);
	assert_int_equal(st.underflows, 0);
	assert_false(pinset_has(ps, "gear", "7"));
	pinset_free(ps);
}

/* ---- the plan */

static struct dw_config *load(const char *read_extra)
{
	char text[2048];
	struct dw_errlist errs = { 0 };
	struct dw_config *c;

	snprintf(text, sizeof(text),
		 "listen = \"127.0.0.1:8080\";\n"
		 "upstreams = { legacy = { url = \"http://127.0.0.1:8000\"; };\n"
		 "              gear = { url = \"http://127.0.0.1:8002\"; }; };\n"
		 "default_upstream = \"legacy\";\n"
		 "routes = ( { name = \"eq\"; match = \"GET /user/{id}/equipment\";\n"
		 "             read = { upstream = \"gear\"; weight = 100; sticky = \"$path.id\"; %s }; },\n"
		 "           { name = \"w\"; match = \"POST /equipment\";\n"
		 "             mirror = { upstream = \"gear\"; key = \"$response.id\";\n"
		 "                        pins = [ \"user:${$request.user_id}\" ]; }; } );\n",
		 read_extra);
	c = config_load_string(text, "t.conf", &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.msgs[i]);
	assert_non_null(c);
	dw_errlist_free(&errs);
	return c;
}

static bool pinned_cb(void *arg, const char *upstream, const char *key)
{
	return pinset_has(arg, upstream, key);
}

static struct read_plan plan_user(const struct dw_config *c, const char *id, struct pinset *ps,
				  struct bucket_rng *rng)
{
	const char *names[] = { "id" };
	const char *values[] = { id };
	struct expr_ctx ctx = { .path_names = names, .path_values = values, .npath = 1 };
	struct plan_pins pins = { pinned_cb, ps };
	struct read_plan p;

	plan_read_pinned(c, &c->routes[0], &ctx, rng, ps ? &pins : NULL, &p);
	return p;
}

static void test_plan_pinned(void **state)
{
	(void)state;
	struct dw_config *c = load(""), *ck = load("key = \"user:${$path.id}\"; shadow = 100;");
	struct pinset *ps = pinset_new();
	struct bucket_rng rng;
	struct read_plan p;

	bucket_rng_seed(&rng, 1);
	assert_non_null(c->routes[1].mirror);
	assert_int_equal(c->routes[1].mirror->npins, 1);
	/* key defaults to sticky: $path.id */
	pinset_add(ps, "gear", "7");
	p = plan_user(c, "7", ps, &rng);
	assert_int_equal(p.side, READ_LEGACY);
	assert_int_equal(p.reason, READ_PINNED);
	assert_int_equal(p.upstream, c->default_upstream);
	p = plan_user(c, "8", ps, &rng);
	assert_int_equal(p.side, READ_NEW);
	assert_false(p.shadow); /* shadow 0 */
	pinset_del(ps, "gear", "7");
	p = plan_user(c, "7", ps, &rng);
	assert_int_equal(p.side, READ_NEW);
	/* an explicit key, as the relation with the writes' pins */
	pinset_add(ps, "gear", "user:7");
	p = plan_user(ck, "7", ps, &rng);
	assert_int_equal(p.reason, READ_PINNED);
	assert_false(p.shadow);
	assert_true(p.shadow_pinned);
	p = plan_user(ck, "8", ps, &rng);
	assert_int_equal(p.side, READ_NEW);
	assert_true(p.shadow);
	assert_false(p.shadow_pinned);
	/* a blind write pins every read of the upstream */
	pinset_blind_add(ps, "gear", 1);
	p = plan_user(ck, "8", ps, &rng);
	assert_int_equal(p.reason, READ_PINNED);
	pinset_free(ps);
	config_unref(c);
	config_unref(ck);
}

static void test_shadow_share(void **state)
{
	(void)state;
	struct dw_config *c = load("shadow = 5;");
	struct bucket_rng rng;
	int n = 0;

	bucket_rng_seed(&rng, 3);
	for (int i = 0; i < 20000; i++)
		n += plan_user(c, "9", NULL, &rng).shadow;
	assert_in_range(n, 800, 1200); /* 5 % of 20000 = 1000 */
	config_unref(c);
}

static void test_pins_config_errors(void **state)
{
	(void)state;
	struct dw_errlist errs = { 0 };
	const char *text =
	    "listen = \"127.0.0.1:8080\";\n"
	    "upstreams = { legacy = { url = \"http://127.0.0.1:8000\"; };\n"
	    "              gear = { url = \"http://127.0.0.1:8002\"; }; };\n"
	    "default_upstream = \"legacy\";\n"
	    "routes = ( { name = \"w\"; match = \"POST /equipment\";\n"
	    "             mirror = { upstream = \"gear\";\n"
	    "                        pins = [ \"$nope.user_id\" ]; }; },\n"
	    "           { name = \"x\"; match = \"POST /x\";\n"
	    "             mirror = { upstream = \"gear\"; pins = \"user\"; }; } );\n";

	assert_null(config_load_string(text, "t.conf", &errs));
	assert_int_equal(errs.n, 2);
	assert_non_null(strstr(errs.msgs[0], "t.conf:7: route \"w\": mirror.pins: element 1:"));
	assert_non_null(strstr(errs.msgs[1], "t.conf:9: route \"x\": mirror.pins: expected a list"));
	dw_errlist_free(&errs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_count),	      cmocka_unit_test(test_blind),
		cmocka_unit_test(test_park_and_sweep), cmocka_unit_test(test_sweep_many),
		cmocka_unit_test(test_prefix),
		cmocka_unit_test(test_threads),	      cmocka_unit_test(test_plan_pinned),
		cmocka_unit_test(test_shadow_share),  cmocka_unit_test(test_pins_config_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
