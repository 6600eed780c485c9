/*
 * test_shadowcmp.c — the verdict on a shadowed read (shadowcmp.h): statuses
 * first, then the bodies as JSON with the new system's mapped by the
 * route's response, compare.ignore and compare.unordered honoured.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "shadowcmp.h"

static struct dw_config *load(const char *compare)
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
		 "  read = { upstream = \"gear\"; weight = 0; shadow = 100; %s\n"
		 "    response = { each = \"$response.items\";\n"
		 "      body = { id = \"$item.id\"; user = \"$path.id\"; type = \"$item.category\";\n"
		 "               at = \"$item.updated_at\"; }; }; }; } );\n",
		 compare);
	c = config_load_string(text, "t.conf", &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.msgs[i]);
	assert_non_null(c);
	dw_errlist_free(&errs);
	return c;
}

struct verdict {
	enum shadow_result r;
	char paths[512];
	char why[512];
};

static struct verdict judge(const struct dw_config *c, int ls, const char *lb, int ns,
			    const char *nb, bool map_new)
{
	const char *names[] = { "id" };
	const char *values[] = { "7" };
	struct expr_ctx ctx = { .path_names = names, .path_values = values, .npath = 1 };
	struct shadow_answer l = { ls, lb, lb ? strlen(lb) : 0 };
	struct shadow_answer n = { ns, nb, nb ? strlen(nb) : 0 };
	struct verdict v;

	v.r = shadowcmp_judge(c->routes[0].read, &l, &n, map_new, &ctx, 8, v.paths,
			      sizeof(v.paths), v.why, sizeof(v.why));
	return v;
}

#define LEGACY "[{\"id\": 1, \"user\": \"7\", \"type\": \"bike\", \"at\": \"t1\"}, " \
	       "{\"id\": 2, \"user\": \"7\", \"type\": \"tent\", \"at\": \"t1\"}]"
#define NEW "{\"items\": [{\"id\": 1, \"category\": \"bike\", \"updated_at\": \"t1\"}, " \
	    "{\"id\": 2, \"category\": \"tent\", \"updated_at\": \"t1\"}]}"
#define NEW_SWAPPED "{\"items\": [{\"id\": 2, \"category\": \"tent\", \"updated_at\": \"t2\"}, " \
		    "{\"id\": 1, \"category\": \"bike\", \"updated_at\": \"t2\"}]}"

static void test_bodies(void **state)
{
	(void)state;
	struct dw_config *c = load(""), *cu = load("compare = { ignore = [ \"at\" ]; unordered = true; };");
	struct verdict v;

	v = judge(c, 200, LEGACY, 200, NEW, true); /* mapped, then equal ($path.id too) */
	assert_int_equal(v.r, SHADOW_MATCH);
	assert_string_equal(v.paths, "");
	v = judge(c, 200, LEGACY, 200, NEW_SWAPPED, true); /* order and "at" differ */
	assert_int_equal(v.r, SHADOW_MISMATCH);
	assert_non_null(strstr(v.paths, "$[0].id"));
	assert_non_null(strstr(v.paths, "$[0].at"));
	v = judge(cu, 200, LEGACY, 200, NEW_SWAPPED, true); /* ignored, unordered */
	assert_int_equal(v.r, SHADOW_MATCH);
	/* the new system served: its answer is already in the legacy's shape */
	v = judge(c, 200, LEGACY, 200, LEGACY, false);
	assert_int_equal(v.r, SHADOW_MATCH);
	v = judge(c, 200, "{\"a\": 1}", 200, "{\"a\": 2}", false);
	assert_int_equal(v.r, SHADOW_MISMATCH);
	assert_string_equal(v.paths, "$.a");
	config_unref(c);
	config_unref(cu);
}

static void test_statuses(void **state)
{
	(void)state;
	struct dw_config *c = load("");
	struct verdict v;

	v = judge(c, 200, LEGACY, 500, "oops", true);
	assert_int_equal(v.r, SHADOW_ERROR);
	assert_string_equal(v.why, "status legacy 200, new 500");
	v = judge(c, 503, "", 200, NEW, true);
	assert_int_equal(v.r, SHADOW_ERROR);
	v = judge(c, 200, LEGACY, 404, "{}", true); /* a row the new system lacks */
	assert_int_equal(v.r, SHADOW_MISMATCH);
	assert_string_equal(v.paths, "$status(legacy 200, new 404)");
	v = judge(c, 404, "nope", 404, "{\"error\": 1}", true); /* both say: no such thing */
	assert_int_equal(v.r, SHADOW_MATCH);
	config_unref(c);
}

static void test_errors(void **state)
{
	(void)state;
	struct dw_config *c = load("");
	struct verdict v;

	v = judge(c, 200, "<html>", 200, NEW, true);
	assert_int_equal(v.r, SHADOW_ERROR);
	assert_non_null(strstr(v.why, "legacy's answer is not JSON"));
	v = judge(c, 200, LEGACY, 200, NULL, true); /* empty */
	assert_int_equal(v.r, SHADOW_ERROR);
	assert_non_null(strstr(v.why, "new system's answer is not JSON"));
	v = judge(c, 200, LEGACY, 200, "{\"no_items\": []}", true);
	assert_int_equal(v.r, SHADOW_ERROR);
	assert_non_null(strstr(v.why, "does not map"));
	config_unref(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bodies),
		cmocka_unit_test(test_statuses),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
