/*
 * test_addrset — the pure parts of upstream resolution: the numeric fast
 * path (IPv4, IPv6, names refused), address sets (duplicates, capacity,
 * order-insensitive equality, ports count), their text, and the retry
 * schedule of a failing lookup (doubling, capped by the interval and the
 * maximum, never below the first step).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "addrset.h"

static struct sockaddr_in v4(const char *a, int port)
{
	struct sockaddr_in s;

	memset(&s, 0, sizeof(s));
	s.sin_family = AF_INET;
	s.sin_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET, a, &s.sin_addr), 1);
	return s;
}

static struct sockaddr_in6 v6(const char *a, int port)
{
	struct sockaddr_in6 s;

	memset(&s, 0, sizeof(s));
	s.sin6_family = AF_INET6;
	s.sin6_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET6, a, &s.sin6_addr), 1);
	return s;
}

static void test_numeric(void **state)
{
	struct dw_addrset s;
	char buf[128];

	(void)state;
	assert_true(dw_addr_numeric("127.0.0.1", 8080, &s));
	assert_int_equal(s.n, 1);
	assert_int_equal(s.a[0].ss_family, AF_INET);
	assert_int_equal(ntohs(((struct sockaddr_in *)&s.a[0])->sin_port), 8080);
	assert_int_equal(s.len[0], sizeof(struct sockaddr_in));
	assert_string_equal(dw_addrset_text(&s, buf, sizeof(buf)), "127.0.0.1");

	assert_true(dw_addr_numeric("::1", 443, &s));
	assert_int_equal(s.a[0].ss_family, AF_INET6);
	assert_int_equal(ntohs(((struct sockaddr_in6 *)&s.a[0])->sin6_port), 443);
	assert_string_equal(dw_addrset_text(&s, buf, sizeof(buf)), "[::1]");

	/* names (even ones that look almost numeric) need a lookup */
	assert_false(dw_addr_numeric("localhost", 80, &s));
	assert_int_equal(s.n, 0);
	assert_false(dw_addr_numeric("nonexistent.invalid", 80, &s));
	assert_false(dw_addr_numeric("127.0.0.1.nip.io", 80, &s));
	assert_false(dw_addr_numeric("", 80, &s));
	assert_false(dw_addr_numeric("[::1]", 80, &s)); /* brackets are the URL's */
}

static void test_set_add_and_equal(void **state)
{
	struct dw_addrset a, b;
	struct sockaddr_in x = v4("10.0.0.1", 80), y = v4("10.0.0.2", 80), xp = v4("10.0.0.1", 81);
	struct sockaddr_in6 z = v6("2001:db8::1", 80);
	char buf[128];

	(void)state;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	assert_true(dw_addrset_equal(&a, &b)); /* empty sets */
	assert_true(dw_addrset_add(&a, (struct sockaddr *)&x, sizeof(x)));
	assert_false(dw_addrset_add(&a, (struct sockaddr *)&x, sizeof(x))); /* duplicate */
	assert_true(dw_addrset_add(&a, (struct sockaddr *)&y, sizeof(y)));
	assert_true(dw_addrset_add(&a, (struct sockaddr *)&z, sizeof(z)));
	assert_int_equal(a.n, 3);
	assert_false(dw_addrset_equal(&a, &b));

	/* the same addresses in another order: equal (rotating DNS answers) */
	assert_true(dw_addrset_add(&b, (struct sockaddr *)&z, sizeof(z)));
	assert_true(dw_addrset_add(&b, (struct sockaddr *)&y, sizeof(y)));
	assert_false(dw_addrset_equal(&a, &b)); /* a subset is not equal */
	assert_false(dw_addrset_equal(&b, &a));
	assert_true(dw_addrset_add(&b, (struct sockaddr *)&x, sizeof(x)));
	assert_true(dw_addrset_equal(&a, &b));
	assert_true(dw_addrset_equal(&b, &a));
	assert_string_equal(dw_addrset_text(&b, buf, sizeof(buf)), "[2001:db8::1], 10.0.0.2, 10.0.0.1");

	/* another port is another address */
	memset(&b, 0, sizeof(b));
	assert_true(dw_addrset_add(&b, (struct sockaddr *)&xp, sizeof(xp)));
	assert_true(dw_addrset_add(&b, (struct sockaddr *)&y, sizeof(y)));
	assert_true(dw_addrset_add(&b, (struct sockaddr *)&z, sizeof(z)));
	assert_false(dw_addrset_equal(&a, &b));

	/* one address changed among as many: not equal */
	memset(&b, 0, sizeof(b));
	assert_true(dw_addrset_add(&b, (struct sockaddr *)&x, sizeof(x)));
	assert_true(dw_addrset_add(&b, (struct sockaddr *)&y, sizeof(y)));
	assert_true(dw_addrset_add(&b, (struct sockaddr *)&xp, sizeof(xp)));
	assert_false(dw_addrset_equal(&a, &b));

	/* a short text is cut, never overrun */
	assert_string_equal(dw_addrset_text(&a, buf, 12), "10.0.0.1");
}

static void test_set_bounds(void **state)
{
	struct dw_addrset s;
	struct sockaddr_in x;
	struct sockaddr unix_like;
	char a[32];

	(void)state;
	memset(&s, 0, sizeof(s));
	for (int i = 0; i < DW_ADDRSET_MAX + 3; i++) {
		snprintf(a, sizeof(a), "10.1.0.%d", i + 1);
		x = v4(a, 80);
		assert_int_equal(dw_addrset_add(&s, (struct sockaddr *)&x, sizeof(x)),
				 i < DW_ADDRSET_MAX);
	}
	assert_int_equal(s.n, DW_ADDRSET_MAX);
	/* other families and short lengths are ignored */
	memset(&s, 0, sizeof(s));
	memset(&unix_like, 0, sizeof(unix_like));
	unix_like.sa_family = AF_UNIX;
	assert_false(dw_addrset_add(&s, &unix_like, sizeof(unix_like)));
	x = v4("10.0.0.1", 80);
	assert_false(dw_addrset_add(&s, (struct sockaddr *)&x, 4));
	assert_int_equal(s.n, 0);
}

static void test_backoff(void **state)
{
	(void)state;
	/* 0.5 s doubling up to the 30 s maximum, with a long interval */
	assert_int_equal(dw_resolve_backoff_ms(1, 60000), 500);
	assert_int_equal(dw_resolve_backoff_ms(2, 60000), 1000);
	assert_int_equal(dw_resolve_backoff_ms(3, 60000), 2000);
	assert_int_equal(dw_resolve_backoff_ms(6, 60000), 16000);
	assert_int_equal(dw_resolve_backoff_ms(7, 60000), 30000);
	assert_int_equal(dw_resolve_backoff_ms(1000, 60000), 30000); /* no overflow */
	/* never later than the name's own refresh interval */
	assert_int_equal(dw_resolve_backoff_ms(2, 1000), 1000);
	assert_int_equal(dw_resolve_backoff_ms(50, 1000), 1000);
	assert_int_equal(dw_resolve_backoff_ms(4, 5000), 4000);
	assert_int_equal(dw_resolve_backoff_ms(5, 5000), 5000);
	/* nor sooner than the first step, whatever the interval */
	assert_int_equal(dw_resolve_backoff_ms(1, 100), 500);
	assert_int_equal(dw_resolve_backoff_ms(9, 100), 500);
	/* 0 or negative failures: the first step */
	assert_int_equal(dw_resolve_backoff_ms(0, 60000), 500);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_numeric),
	    cmocka_unit_test(test_set_add_and_equal),
	    cmocka_unit_test(test_set_bounds),
	    cmocka_unit_test(test_backoff),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
