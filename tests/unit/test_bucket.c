/*
 * test_bucket — the read bucket of §7.1: SipHash-2-4 against the reference
 * vectors, the documented message layout and reduction recomputed here by
 * hand, pinned vectors (a change of hash, key, layout or reduction fails),
 * the monotonic ramp 0 -> 10 -> 30 -> 50 -> 80 -> 100 % over 10k keys with
 * the served fraction within tolerance, the route/sticky separator, the
 * random draw for reads without a sticky value, and weight parsing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bucket.h"

static uint32_t b_str(const char *route, const char *sticky)
{
	return bucket_of(route, strlen(route), sticky, strlen(sticky));
}

/* The reference implementation's vectors: key 00..0f, message 00..n-1. */
static void test_siphash_reference_vectors(void **state)
{
	static const uint64_t want[18] = {
	    UINT64_C(0x726fdb47dd0e0e31), UINT64_C(0x74f839c593dc67fd), UINT64_C(0x0d6c8009d9a94f5a),
	    UINT64_C(0x85676696d7fb7e2d), UINT64_C(0xcf2794e0277187b7), UINT64_C(0x18765564cd99a68d),
	    UINT64_C(0xcbc9466e58fee3ce), UINT64_C(0xab0200f58b01d137), UINT64_C(0x93f5f5799a932462),
	    UINT64_C(0x9e0082df0ba9e4b0), UINT64_C(0x7a5dbbc594ddb9f3), UINT64_C(0xf4b32f46226bada7),
	    UINT64_C(0x751e8fbc860ee5fb), UINT64_C(0x14ea5627c0843d90), UINT64_C(0xf723ca908e7af2ee),
	    UINT64_C(0xa129ca6149be45e5), UINT64_C(0x3f2acc7f57c29bdb), UINT64_C(0x699ae9f52cbe4794),
	};
	unsigned char key[16], msg[18];

	(void)state;
	for (int i = 0; i < 16; i++)
		key[i] = (unsigned char)i;
	for (int i = 0; i < 18; i++)
		msg[i] = (unsigned char)i;
	for (size_t n = 0; n < 18; n++)
		assert_int_equal(bucket_siphash24(key, msg, n), want[n]);
}

/* bucket_of is exactly the header's recipe, computed here the long way. */
static void test_layout_as_documented(void **state)
{
	static const unsigned char key[16] = "dualwrite-bucket"; /* no NUL: exactly 16 */
	const char *routes[] = {"", "r", "equipment-list", "a-route-name-longer-than-eight"};
	const char *stickies[] = {"", "7", "48213", "user@example.com", "x\0y"};

	(void)state;
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		for (size_t j = 0; j < sizeof(stickies) / sizeof(stickies[0]); j++) {
			unsigned char msg[128];
			size_t rl = strlen(routes[i]), sl = j == 4 ? 3 : strlen(stickies[j]);
			uint64_t h;
			uint32_t want;

			msg[0] = (unsigned char)rl;
			msg[1] = msg[2] = msg[3] = 0;
			memcpy(msg + 4, routes[i], rl);
			memcpy(msg + 4 + rl, stickies[j], sl);
			h = bucket_siphash24(key, msg, 4 + rl + sl);
			want = (uint32_t)(((unsigned __int128)h * 10000u) >> 64);
			assert_int_equal(bucket_of(routes[i], rl, stickies[j], sl), want);
		}
}

/* Pinned: these must never change (users would move between systems). */
static void test_fixed_vectors(void **state)
{
	(void)state;
	assert_int_equal(b_str("equipment-list", "48213"), 3811);
	assert_int_equal(b_str("equipment-list", "1"), 1775);
	assert_int_equal(b_str("equipment-list", "2"), 6002);
	assert_int_equal(b_str("device-read", "tenant-7/dev-0042"), 3098);
	assert_int_equal(b_str("", ""), 9386);
	assert_int_equal(bucket_of("r", 1, "\0\xff", 2), 6494);
}

/* The separator: moving bytes between route and sticky changes the message. */
static void test_separator(void **state)
{
	int differ = 0;

	(void)state;
	/* one pair could collide by chance (1 in 10^4); 20 pairs all colliding cannot */
	for (int i = 0; i < 20; i++) {
		char r1[16], s1[16], r2[16], s2[16];

		snprintf(r1, sizeof(r1), "ab%d", i);
		snprintf(s1, sizeof(s1), "c");
		snprintf(r2, sizeof(r2), "ab");
		snprintf(s2, sizeof(s2), "%dc", i);
		differ += b_str(r1, s1) != b_str(r2, s2);
	}
	assert_true(differ >= 19);
	assert_int_not_equal(b_str("ab", "c"), b_str("a", "bc"));
}

/* 10k keys ramped 0 -> 10 -> 30 -> 50 -> 80 -> 100 %: a key once served by
 * the new system stays there, and the share is the weight within 1.5 points
 * (binomial sd at 50 % over 10k keys is 0.5 points). Then ramped down. */
static void test_monotonic_ramp(void **state)
{
	static const uint32_t steps[] = {0, 1000, 3000, 5000, 8000, 10000};
	enum { N = 10000 };
	static unsigned char served[N];

	(void)state;
	memset(served, 0, sizeof(served));
	for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
		unsigned count = 0;

		for (int k = 0; k < N; k++) {
			char key[16];
			int now;

			snprintf(key, sizeof(key), "%d", k);
			now = bucket_serves_new(b_str("equipment-list", key), steps[s]);
			if (served[k])
				assert_true(now); /* raising never takes a key back */
			served[k] = (unsigned char)now;
			count += (unsigned)now;
		}
		if (steps[s] == 0)
			assert_int_equal(count, 0);
		else if (steps[s] == 10000)
			assert_int_equal(count, N);
		else
			assert_true(count >= steps[s] - 150 && count <= steps[s] + 150);
	}
	for (int s = (int)(sizeof(steps) / sizeof(steps[0])) - 1; s >= 0; s--)
		for (int k = 0; k < N; k++) {
			char key[16];
			int now;

			snprintf(key, sizeof(key), "%d", k);
			now = bucket_serves_new(b_str("equipment-list", key), steps[s]);
			if (!served[k])
				assert_false(now); /* lowering never adds a key */
			served[k] = (unsigned char)now;
		}
}

/* Draws: in range, uniform enough, reproducible from the seed, and two
 * generators do not share state. */
static void test_draw(void **state)
{
	struct bucket_rng a, b, c;
	unsigned below_3000 = 0;
	uint32_t first[8];

	(void)state;
	bucket_rng_seed(&a, 42);
	bucket_rng_seed(&b, 42);
	bucket_rng_seed(&c, 43);
	for (int i = 0; i < 8; i++)
		first[i] = bucket_draw(&c);
	for (int i = 0; i < 100000; i++) {
		uint32_t x = bucket_draw(&a);

		assert_true(x < BUCKET_COUNT);
		assert_int_equal(x, bucket_draw(&b));
		below_3000 += bucket_serves_new(x, 3000);
	}
	assert_true(below_3000 > 29500 && below_3000 < 30500); /* sd ~145 */
	bucket_rng_seed(&c, 43);
	for (int i = 0; i < 8; i++)
		assert_int_equal(bucket_draw(&c), first[i]);
	/* pinned: splitmix64 of seed 0 */
	bucket_rng_seed(&a, 0);
	assert_int_equal(bucket_rng_next(&a), UINT64_C(0xe220a8397b1dcdaf));
}

static void test_weight_from_percent(void **state)
{
	uint32_t w = 77;

	(void)state;
	assert_int_equal(bucket_weight_from_percent(0, &w), 0);
	assert_int_equal(w, 0);
	assert_int_equal(bucket_weight_from_percent(100, &w), 0);
	assert_int_equal(w, 10000);
	assert_int_equal(bucket_weight_from_percent(12.5, &w), 0);
	assert_int_equal(w, 1250);
	assert_int_equal(bucket_weight_from_percent(33.33, &w), 0);
	assert_int_equal(w, 3333);
	assert_int_equal(bucket_weight_from_percent(0.01, &w), 0);
	assert_int_equal(w, 1);
	w = 77;
	assert_int_equal(bucket_weight_from_percent(33.333, &w), -1);
	assert_int_equal(bucket_weight_from_percent(-0.01, &w), -1);
	assert_int_equal(bucket_weight_from_percent(100.01, &w), -1);
	assert_int_equal(bucket_weight_from_percent(NAN, &w), -1);
	assert_int_equal(w, 77);
	/* at weight 10000 every bucket is served, at 1 only bucket 0 */
	assert_true(bucket_serves_new(9999, 10000));
	assert_true(bucket_serves_new(0, 1));
	assert_false(bucket_serves_new(1, 1));
	assert_false(bucket_serves_new(0, 0));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_siphash_reference_vectors),
	    cmocka_unit_test(test_layout_as_documented),
	    cmocka_unit_test(test_fixed_vectors),
	    cmocka_unit_test(test_separator),
	    cmocka_unit_test(test_monotonic_ramp),
	    cmocka_unit_test(test_draw),
	    cmocka_unit_test(test_weight_from_percent),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
