/*
 * test_pgdsn — DSNs shown without their password (SPEC §6): the keyword and
 * URI forms, quoting, percent-encoding, a DSN libpq cannot parse, and libpq
 * messages that quote the secret.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "pgdsn.h"

static void check_display(const char *dsn, const char *want)
{
	char *s = pgdsn_display(dsn);

	assert_string_equal(s, want);
	free(s);
}

static void test_display_keyword_form(void **state)
{
	(void)state;
	check_display("host=db.internal port=5433 user=app password=s3cret dbname=gear",
		      "user=app password=*** dbname=gear host=db.internal port=5433");
	check_display("dbname=gear", "dbname=gear");
	check_display("host=db password='with space' application_name='a b'",
		      "password=*** host=db application_name='a b'");
}

static void test_display_uri_form(void **state)
{
	char *s;

	(void)state;
	check_display("postgresql://app:s3cret@db.internal:5433/gear",
		      "user=app password=*** dbname=gear host=db.internal port=5433");
	check_display("postgres://app@db/gear?password=s3cret&sslmode=disable",
		      "user=app password=*** dbname=gear host=db sslmode=disable");
	/* percent-encoded: neither the encoded nor the decoded secret shows */
	s = pgdsn_display("postgresql://app:p%40ss%3Aword@db/gear");
	assert_null(strstr(s, "p@ss:word"));
	assert_null(strstr(s, "p%40ss"));
	assert_non_null(strstr(s, "password=***"));
	free(s);
}

static void test_display_empty_and_unparsable(void **state)
{
	(void)state;
	check_display(NULL, "PG* environment");
	check_display("", "PG* environment");
	/* libpq's own error for these would quote them: never shown */
	check_display("host=db password='s3cret", "(unparsable DSN, not shown)");
	check_display("host=db bogus_option=s3cret", "(unparsable DSN, not shown)");
	check_display("postgresql://app:s3cret@db:notaport/gear?x=", "(unparsable DSN, not shown)");
}

static void test_scrub(void **state)
{
	char *s;

	(void)state;
	s = pgdsn_scrub("could not connect: FATAL: role \"s3cret\" and s3cret again",
			"host=db password=s3cret");
	assert_string_equal(s, "could not connect: FATAL: role \"***\" and *** again");
	free(s);
	s = pgdsn_scrub("nothing secret here", "postgresql://u:s3cret@db/x");
	assert_string_equal(s, "nothing secret here");
	free(s);
	s = pgdsn_scrub("a message about s3cret", "postgresql://u:s3cret@db/x");
	assert_string_equal(s, "a message about ***");
	free(s);
	/* too short to mask without garbling; unparsable: the message as it is */
	s = pgdsn_scrub("abc ab", "password=ab");
	assert_string_equal(s, "abc ab");
	free(s);
	s = pgdsn_scrub("x", "password='open");
	assert_string_equal(s, "x");
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_display_keyword_form),
	    cmocka_unit_test(test_display_uri_form),
	    cmocka_unit_test(test_display_empty_and_unparsable),
	    cmocka_unit_test(test_scrub),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
