/*
 * test_route.c — route patterns: compiling, matching with captures, and the
 * shadowing check the configuration loader relies on.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "route.h"

static struct route_pattern *compile_ok(const char *s)
{
	struct dw_err err = { { 0 } };
	struct route_pattern *p = route_pattern_compile(s, &err);

	if (!p)
		fail_msg("compile \"%s\": %s", s, err.msg);
	return p;
}

static bool matches(const struct route_pattern *p, const char *method, const char *path,
		    struct route_params *rp)
{
	return route_pattern_match(p, method, strlen(method), path, strlen(path), rp);
}

static void test_compile(void **state)
{
	(void)state;
	struct route_pattern *p = compile_ok("PUT /user/{uid}/equipment/{id}");

	assert_string_equal(route_pattern_method(p), "PUT");
	assert_int_equal(route_pattern_nparams(p), 2);
	assert_string_equal(route_pattern_param(p, 0), "uid");
	assert_string_equal(route_pattern_param(p, 1), "id");
	assert_null(route_pattern_param(p, 2));
	route_pattern_free(p);
	route_pattern_free(NULL);

	p = compile_ok("GET /");
	assert_int_equal(route_pattern_nparams(p), 0);
	route_pattern_free(p);
}

static void test_compile_errors(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"",
		"POST",
		"POST equipment",
		"/equipment",
		"POST  /equipment",
		"PO(ST /equipment",
		"GET /a/{",
		"GET /a/{}",
		"GET /a/{1x}",
		"GET /a/{i-d}",
		"GET /a/x{id}",
		"GET /a/{id}x",
		"GET /a/{id}/{id}",
		"GET /a//b",
		"GET /a b",
		"GET /a%zz",
		"GET /a%4",
		"GET /a?x=1",
		"GET /{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}/{j}/{k}/{l}/{m}/{n}/{o}/{p}/{q}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct dw_err err = { { 0 } };
		struct route_pattern *p = route_pattern_compile(bad[i], &err);
		if (p)
			fail_msg("\"%s\" compiled but should not", bad[i]);
		assert_true(err.msg[0] != '\0');
	}
}

static void test_match(void **state)
{
	(void)state;
	struct route_pattern *p = compile_ok("PUT /equipment/{id}");
	struct route_params rp = { 0 };

	assert_true(matches(p, "PUT", "/equipment/42", &rp));
	assert_int_equal(rp.n, 1);
	assert_string_equal(rp.names[0], "id");
	assert_string_equal(rp.values[0], "42");

	/* re-use of rp frees the old values */
	assert_true(matches(p, "PUT", "/equipment/a%20b%2Fc", &rp));
	assert_int_equal(rp.n, 1);
	assert_string_equal(rp.values[0], "a b/c");
	route_params_clear(&rp);
	assert_int_equal(rp.n, 0);

	assert_false(matches(p, "POST", "/equipment/42", NULL));
	assert_false(matches(p, "put", "/equipment/42", NULL));
	assert_false(matches(p, "PUT", "/equipment/42/", NULL));
	assert_false(matches(p, "PUT", "/equipment/", NULL));
	assert_false(matches(p, "PUT", "/equipment", NULL));
	assert_false(matches(p, "PUT", "/equipment/42/x", NULL));
	assert_false(matches(p, "PUT", "/Equipment/42", NULL));
	assert_false(matches(p, "PUT", "equipment/42", NULL));
	assert_false(matches(p, "PUT", "", NULL));
	/* captures must decode cleanly and never carry a NUL */
	assert_false(matches(p, "PUT", "/equipment/a%zz", NULL));
	assert_false(matches(p, "PUT", "/equipment/a%2", NULL));
	assert_false(matches(p, "PUT", "/equipment/a%00b", NULL));
	assert_true(matches(p, "PUT", "/equipment/42", NULL));
	route_pattern_free(p);

	/* literals compare raw: an encoded slash is not a separator */
	p = compile_ok("GET /a/b");
	assert_true(matches(p, "GET", "/a/b", NULL));
	assert_false(matches(p, "GET", "/a%2Fb", NULL));
	assert_false(matches(p, "GET", "/a/b/", NULL));
	assert_false(matches(p, "GET", "/a", NULL));
	route_pattern_free(p);

	p = compile_ok("GET /");
	assert_true(matches(p, "GET", "/", NULL));
	assert_false(matches(p, "GET", "/x", NULL));
	route_pattern_free(p);

	p = compile_ok("GET /a/");
	assert_true(matches(p, "GET", "/a/", NULL));
	assert_false(matches(p, "GET", "/a", NULL));
	route_pattern_free(p);

	p = compile_ok("GET /user/{uid}/equipment");
	assert_true(matches(p, "GET", "/user/7/equipment", &rp));
	assert_int_equal(rp.n, 1);
	assert_string_equal(rp.names[0], "uid");
	assert_string_equal(rp.values[0], "7");
	route_params_clear(&rp);
	assert_false(matches(p, "GET", "/user//equipment", NULL));
	route_pattern_free(p);
}

static void test_conflicts(void **state)
{
	(void)state;
	struct route_pattern *cap = compile_ok("GET /items/{id}");
	struct route_pattern *cap2 = compile_ok("GET /items/{other}");
	struct route_pattern *lit = compile_ok("GET /items/list");
	struct route_pattern *post = compile_ok("POST /items/{id}");
	struct route_pattern *longer = compile_ok("GET /items/{id}/x");
	struct route_pattern *slash = compile_ok("GET /items/");
	struct route_pattern *mixed = compile_ok("GET /{a}/list");

	assert_true(route_pattern_conflicts(cap, lit));	   /* list listed after {id} */
	assert_false(route_pattern_conflicts(lit, cap));   /* {id} still reachable */
	assert_true(route_pattern_conflicts(cap, cap2));   /* same shape */
	assert_true(route_pattern_conflicts(cap, cap));	   /* identical */
	assert_true(route_pattern_conflicts(lit, lit));
	assert_false(route_pattern_conflicts(cap, post));  /* other method */
	assert_false(route_pattern_conflicts(cap, longer)); /* other length */
	assert_false(route_pattern_conflicts(cap, slash)); /* {id} never matches "" */
	assert_true(route_pattern_conflicts(mixed, lit));
	assert_false(route_pattern_conflicts(mixed, cap)); /* overlap is not shadowing */
	assert_false(route_pattern_conflicts(cap, mixed));

	route_pattern_free(cap);
	route_pattern_free(cap2);
	route_pattern_free(lit);
	route_pattern_free(post);
	route_pattern_free(longer);
	route_pattern_free(slash);
	route_pattern_free(mixed);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_compile),
		cmocka_unit_test(test_compile_errors),
		cmocka_unit_test(test_match),
		cmocka_unit_test(test_conflicts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
