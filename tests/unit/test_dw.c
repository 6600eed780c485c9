/*
 * test_dw — the small shared helpers of lib/dw: the RFC 3339 formatter
 * (arithmetic, no gmtime_r) against gmtime_r + strftime over leap years,
 * century rules, epoch edges and a spread of instants up to year 9999;
 * the printf-free text builder against snprintf and inet_ntop.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dw.h"

static void reference(int64_t us, char *buf, size_t len)
{
	time_t t = (time_t)(us / 1000000);
	struct tm tm;

	gmtime_r(&t, &tm);
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)((us / 1000) % 1000));
}

static void check(int64_t us)
{
	char got[40], want[96];

	dw_rfc3339(us, got, sizeof(got));
	reference(us, want, sizeof(want));
	if (strcmp(got, want) != 0)
		fail_msg("dw_rfc3339(%lld) = %s, want %s", (long long)us, got, want);
}

static void test_rfc3339_edges(void **state)
{
	static const char *const days[] = {"1970-01-01", "1972-02-29", "1999-12-31", "2000-02-28",
					   "2000-02-29", "2000-03-01", "2038-01-19", "2100-02-28",
					   "2100-03-01", "2400-02-29", "2026-11-22", "9999-12-31"};
	(void)state;
	for (size_t i = 0; i < sizeof(days) / sizeof(days[0]); i++) {
		struct tm tm = {0};
		int y, m, d;

		assert_int_equal(sscanf(days[i], "%d-%d-%d", &y, &m, &d), 3);
		tm.tm_year = y - 1900;
		tm.tm_mon = m - 1;
		tm.tm_mday = d;
		int64_t base = (int64_t)timegm(&tm) * 1000000;
		for (int64_t off = 0; off < 86400LL * 1000000; off += 3599999999LL)
			check(base + off);
		check(base + 86400LL * 1000000 - 1); /* 23:59:59.999 */
	}
	check(0);
	check(999);
	char buf[40];
	dw_rfc3339(1763785993123456LL, buf, sizeof(buf));
	assert_string_equal(buf, "2025-11-22T04:33:13.123Z");
}

static void test_rfc3339_spread(void **state)
{
	(void)state;
	/* ~200k instants from 1970 to 9999, stepping by an odd number of
	 * microseconds so every field moves. */
	for (int64_t us = 0; us < 253402300799LL * 1000000; us += 1234567890123LL + 7)
		check(us);
}

static void test_text_numbers(void **state)
{
	static const uint64_t vals[] = {0, 1, 9, 10, 99, 100, 4294967295ULL, 4294967296ULL,
					18446744073709551615ULL, 1234567890123ULL};
	(void)state;
	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		char buf[64], want[64];
		struct dw_text t;

		dw_text_init(&t, buf, sizeof(buf));
		dw_text_u64(&t, vals[i]);
		dw_text_put(&t, "|", 1);
		dw_text_hex(&t, vals[i], 8);
		dw_text_put(&t, "|", 1);
		dw_text_hex(&t, vals[i], 16);
		snprintf(want, sizeof(want), "%" PRIu64 "|%08" PRIx64 "|%016" PRIx64, vals[i],
			 (uint64_t)(vals[i] & 0xffffffffULL), vals[i]);
		assert_false(t.cut);
		assert_int_equal(t.n, strlen(want));
		assert_memory_equal(buf, want, t.n);
	}
}

static void test_text_cut(void **state)
{
	char buf[8];
	struct dw_text t;

	(void)state;
	dw_text_init(&t, buf, sizeof(buf));
	dw_text_str(&t, "abcde");
	assert_false(t.cut);
	dw_text_u64(&t, 123456);
	assert_true(t.cut);
	assert_int_equal(t.n, 8);
	assert_memory_equal(buf, "abcde123", 8);
	dw_text_str(&t, "x"); /* full: nothing written past cap */
	assert_int_equal(t.n, 8);
}

static void test_text_addr(void **state)
{
	static const struct {
		int af;
		const char *text;
	} addrs[] = {
	    {AF_INET, "0.0.0.0"},	   {AF_INET, "127.0.0.1"},
	    {AF_INET, "255.255.255.255"}, {AF_INET, "10.20.3.4"},
	    {AF_INET6, "::1"},		   {AF_INET6, "2001:db8::8a2e:370:7334"},
	    {AF_INET6, "::ffff:1.2.3.4"},
	};
	char buf[64];
	struct dw_text t;
	unsigned char a[16];

	(void)state;
	for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
		assert_int_equal(inet_pton(addrs[i].af, addrs[i].text, a), 1);
		dw_text_init(&t, buf, sizeof(buf));
		dw_text_addr(&t, addrs[i].af, a);
		assert_int_equal(t.n, strlen(addrs[i].text));
		assert_memory_equal(buf, addrs[i].text, t.n);
	}
	dw_text_init(&t, buf, sizeof(buf));
	dw_text_addr(&t, 0, a);
	assert_int_equal(t.n, 1);
	assert_int_equal(buf[0], '?');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rfc3339_edges),
	    cmocka_unit_test(test_rfc3339_spread),
	    cmocka_unit_test(test_text_numbers),
	    cmocka_unit_test(test_text_cut),
	    cmocka_unit_test(test_text_addr),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
