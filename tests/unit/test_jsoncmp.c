/*
 * test_jsoncmp — the shadow comparison's rules, one test each: object keys
 * unordered, ignore at every depth, lists in order and as multisets
 * (duplicates, nested, big lists, the [*] paths), numbers by value (1 vs
 * 1.0, big integers vs reals), null vs missing, type differences, path
 * spelling (identifiers, odd keys, long paths), the output buffer's bounds
 * and the path limit, symmetry, and the canonical hash agreeing with
 * equality.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsoncmp.h"

static const char *const IGN[] = {"updated_at", "etag"};
static const struct jsoncmp_opts ORDERED = {NULL, 0, 0, 8};
static const struct jsoncmp_opts UNORDERED = {NULL, 0, 1, 8};
static const struct jsoncmp_opts IGNORE = {IGN, 2, 0, 8};
static const struct jsoncmp_opts IGNORE_UNORDERED = {IGN, 2, 1, 8};

static json_t *load(const char *text)
{
	json_error_t e;
	json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);

	if (!v)
		fail_msg("bad test JSON %s: %s", text, e.text);
	return v;
}

/* Compare both ways: the same count; paths of a vs b must be `paths`. */
static void check(const char *a, const char *b, const struct jsoncmp_opts *o, size_t want,
		  const char *paths)
{
	json_t *va = load(a), *vb = load(b);
	char buf[512], back[512];
	size_t n = jsoncmp(va, vb, o, buf, sizeof(buf)), m = jsoncmp(vb, va, o, back, sizeof(back));

	if (n != want || strcmp(buf, paths) != 0)
		fail_msg("%s vs %s: %zu differences at \"%s\", want %zu at \"%s\"", a, b, n, buf, want,
			 paths);
	if (m != n)
		fail_msg("%s vs %s: not symmetric: %zu vs %zu", a, b, n, m);
	assert_int_equal(jsoncmp(va, va, o, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "");
	/* equal values hash equal */
	if (n == 0)
		assert_true(jsoncmp_hash(va, o) == jsoncmp_hash(vb, o));
	json_decref(va);
	json_decref(vb);
}

static void test_objects_unordered(void **state)
{
	(void)state;
	check("{\"a\":1,\"b\":{\"c\":[1,2],\"d\":\"x\"}}", "{\"b\":{\"d\":\"x\",\"c\":[1,2]},\"a\":1}",
	      &ORDERED, 0, "");
	check("{\"a\":1,\"b\":2}", "{\"a\":1,\"b\":3}", &ORDERED, 1, "$.b");
	check("{\"a\":1}", "{\"a\":1,\"z\":true}", &ORDERED, 1, "$.z");
	check("{\"a\":{\"b\":{\"c\":\"x\"}}}", "{\"a\":{\"b\":{\"c\":\"y\"}}}", &ORDERED, 1, "$.a.b.c");
	check("{}", "{}", &ORDERED, 0, "");
}

static void test_null_vs_missing(void **state)
{
	(void)state;
	check("{\"a\":null}", "{}", &ORDERED, 1, "$.a");
	check("{\"a\":null}", "{\"a\":null}", &ORDERED, 0, "");
	check("{\"a\":null}", "{\"a\":false}", &ORDERED, 1, "$.a");
	check("null", "null", &ORDERED, 0, "");
}

static void test_numbers_by_value(void **state)
{
	(void)state;
	check("{\"n\":1}", "{\"n\":1.0}", &ORDERED, 0, "");
	check("[0]", "[-0.0]", &ORDERED, 0, "");
	check("[1e2]", "[100]", &ORDERED, 0, "");
	check("[1.5]", "[1.5]", &ORDERED, 0, "");
	check("[1]", "[1.5]", &ORDERED, 1, "$[0]");
	check("[1]", "[2]", &ORDERED, 1, "$[0]");
	/* beyond 2^53 the real is not that integer */
	check("[9007199254740993]", "[9007199254740992.0]", &ORDERED, 1, "$[0]");
	check("[9007199254740992]", "[9007199254740992.0]", &ORDERED, 0, "");
	/* out of int64's range */
	check("[9223372036854775807]", "[9.3e18]", &ORDERED, 1, "$[0]");
	check("[1]", "[\"1\"]", &ORDERED, 1, "$[0]");
	check("[1, 2.0, 3]", "[3.0, 1.0, 2]", &UNORDERED, 0, "");
}

static void test_types(void **state)
{
	(void)state;
	check("{\"a\":[]}", "{\"a\":{}}", &ORDERED, 1, "$.a");
	check("[true]", "[false]", &ORDERED, 1, "$[0]");
	check("\"x\"", "[\"x\"]", &ORDERED, 1, "$");
	check("\"a\\u0000b\"", "\"a\\u0000c\"", &ORDERED, 1, "$"); /* strings with NUL */
	check("\"a\\u0000b\"", "\"a\\u0000b\"", &ORDERED, 0, "");
	check("\"\\u00e9\"", "\"e\\u0301\"", &ORDERED, 1, "$"); /* no normalisation */
}

static void test_ignore_every_depth(void **state)
{
	(void)state;
	check("{\"id\":1,\"updated_at\":\"t1\"}", "{\"id\":1,\"updated_at\":\"t2\"}", &IGNORE, 0, "");
	check("{\"id\":1,\"updated_at\":\"t1\"}", "{\"id\":1}", &IGNORE, 0, "");
	check("{\"x\":{\"items\":[{\"etag\":1,\"v\":2}]}}", "{\"x\":{\"items\":[{\"etag\":9,\"v\":2}]}}",
	      &IGNORE, 0, "");
	check("{\"x\":[{\"etag\":1,\"v\":2}]}", "{\"x\":[{\"etag\":9,\"v\":3}]}", &IGNORE, 1, "$.x[0].v");
	/* without the list, the same documents differ */
	check("{\"id\":1,\"updated_at\":\"t1\"}", "{\"id\":1,\"updated_at\":\"t2\"}", &ORDERED, 1,
	      "$.updated_at");
	/* a name matches exactly, not as a prefix */
	check("{\"updated_at_2\":1}", "{\"updated_at_2\":2}", &IGNORE, 1, "$.updated_at_2");
	/* ignore works inside multiset matching too */
	check("[{\"id\":1,\"etag\":\"a\"},{\"id\":2,\"etag\":\"b\"}]",
	      "[{\"id\":2,\"etag\":\"c\"},{\"id\":1,\"etag\":\"d\"}]", &IGNORE_UNORDERED, 0, "");
}

static void test_lists_ordered(void **state)
{
	(void)state;
	check("[1,2,3]", "[1,2,3]", &ORDERED, 0, "");
	check("[1,2,3]", "[3,2,1]", &ORDERED, 2, "$[0] $[2]");
	check("{\"items\":[1,2]}", "{\"items\":[1,2,3,4]}", &ORDERED, 2, "$.items[2] $.items[3]");
	check("{\"items\":[{\"category\":\"a\"},{\"category\":\"b\"}]}",
	      "{\"items\":[{\"category\":\"a\"},{\"category\":\"c\"}]}", &ORDERED, 1,
	      "$.items[1].category");
}

static void test_lists_unordered(void **state)
{
	(void)state;
	check("[1,2,3]", "[3,1,2]", &UNORDERED, 0, "");
	/* multisets: duplicates count */
	check("[1,1,2]", "[1,2,2]", &UNORDERED, 1, "$[*]");
	check("[1,1,2]", "[1,2]", &UNORDERED, 1, "$[*]");
	check("[]", "[1]", &UNORDERED, 1, "$[*]");
	/* nested lists are sets too */
	check("[[1,2],[3,4]]", "[[4,3],[2,1]]", &UNORDERED, 0, "");
	check("[[1,2],[3,4]]", "[[4,3],[2,1]]", &ORDERED, 4, "$[0][0] $[0][1] $[1][0] $[1][1]");
	/* one element differs in one field: paired and named */
	check("{\"items\":[{\"id\":1,\"category\":\"boots\"},{\"id\":2,\"category\":\"tent\"}]}",
	      "{\"items\":[{\"id\":2,\"category\":\"tent\"},{\"id\":1,\"category\":\"shoes\"}]}",
	      &UNORDERED, 1, "$.items[*].category");
	/* two elements differ in the same field: one distinct path, two differences */
	check("[{\"id\":1,\"c\":\"a\"},{\"id\":2,\"c\":\"b\"},{\"id\":3,\"c\":\"x\"}]",
	      "[{\"id\":3,\"c\":\"x\"},{\"id\":1,\"c\":\"A\"},{\"id\":2,\"c\":\"B\"}]", &UNORDERED, 2,
	      "$[*].c");
	/* objects with the same key set in another order still match as elements */
	check("[{\"a\":1,\"b\":2},{\"b\":3,\"a\":4}]", "[{\"a\":4,\"b\":3},{\"b\":2,\"a\":1}]",
	      &UNORDERED, 0, "");
	/* equal prefix matched in place, the tail as a set */
	check("[1,2,3,4,5]", "[1,2,5,4,3]", &UNORDERED, 0, "");
	check("[1,2,3,4,5]", "[1,2,5,4,6]", &UNORDERED, 1, "$[*]");
}

/* Big lists: 20000 objects reversed are equal as a set (fast: this would
 * take minutes at O(n^2) deep comparisons) and one changed field is found. */
static void test_big_unordered(void **state)
{
	enum { N = 20000 };
	json_t *a = json_array(), *b = json_array();
	char buf[256];

	(void)state;
	for (int i = 0; i < N; i++)
		json_array_append_new(a, json_pack("{s:i, s:s, s:[i,i]}", "id", i, "c", "x", "t", i, -i));
	for (int i = N - 1; i >= 0; i--)
		json_array_append_new(b, json_pack("{s:i, s:s, s:[i,i]}", "id", i, "c", "x", "t", -i, i));
	assert_int_equal(jsoncmp(a, b, &UNORDERED, buf, sizeof(buf)), 0);
	json_object_set_new(json_array_get(b, 777), "c", json_string("y"));
	assert_int_equal(jsoncmp(a, b, &UNORDERED, buf, sizeof(buf)), 1);
	assert_string_equal(buf, "$[*].c");
	json_decref(a);
	json_decref(b);
}

static void test_path_spelling(void **state)
{
	char longkey[600], doc_a[800], doc_b[800], buf[1024];
	json_t *a, *b;

	(void)state;
	check("{\"odd key\":1}", "{\"odd key\":2}", &ORDERED, 1, "$[\"odd\\u0020key\"]");
	check("{\"q\\\"b\\\\\":1}", "{\"q\\\"b\\\\\":2}", &ORDERED, 1, "$[\"q\\\"b\\\\\"]");
	check("{\"tab\\t\":1}", "{\"tab\\t\":2}", &ORDERED, 1, "$[\"tab\\u0009\"]");
	check("{\"9lives\":1}", "{\"9lives\":2}", &ORDERED, 1, "$[\"9lives\"]");
	check("{\"\":1}", "{\"\":2}", &ORDERED, 1, "$[\"\"]");
	check("{\"_a9\":1}", "{\"_a9\":2}", &ORDERED, 1, "$._a9");
	check("{\"\\u00e9t\\u00e9\":1}", "{\"\\u00e9t\\u00e9\":2}", &ORDERED, 1, "$[\"\xc3\xa9t\xc3\xa9\"]");

	/* a path longer than the path buffer is cut and marked */
	memset(longkey, 'k', sizeof(longkey) - 1);
	longkey[sizeof(longkey) - 1] = '\0';
	snprintf(doc_a, sizeof(doc_a), "{\"%s\":{\"x\":1}}", longkey);
	snprintf(doc_b, sizeof(doc_b), "{\"%s\":{\"x\":2}}", longkey);
	a = load(doc_a);
	b = load(doc_b);
	assert_int_equal(jsoncmp(a, b, &ORDERED, buf, sizeof(buf)), 1);
	assert_true(strlen(buf) < 420);
	assert_string_equal(buf + strlen(buf) - 3, "...");
	json_decref(a);
	json_decref(b);
}

/* max_paths and the buffer's size bound the line; the count stays exact. */
static void test_output_bounds(void **state)
{
	json_t *a = load("{\"a\":1,\"b\":2,\"c\":3,\"d\":4}"), *b = load("{\"a\":0,\"b\":0,\"c\":0,\"d\":0}");
	struct jsoncmp_opts two = {NULL, 0, 0, 2}, none = {NULL, 0, 0, 0};
	char buf[64], *exact;
	size_t n;

	(void)state;
	assert_int_equal(jsoncmp(a, b, &ORDERED, buf, sizeof(buf)), 4);
	assert_int_equal(strlen(buf), strlen("$.a $.b $.c $.d"));
	assert_int_equal(jsoncmp(a, b, &two, buf, sizeof(buf)), 4);
	assert_true(strstr(buf, " ...") == buf + strlen(buf) - 4);
	assert_int_equal(strlen(buf), strlen("$.a $.b ..."));
	assert_int_equal(jsoncmp(a, b, &none, buf, sizeof(buf)), 4);
	assert_string_equal(buf, "...");
	/* every small buffer: NUL-terminated, never overrun (ASan watches the malloc'd size) */
	for (size_t cap = 1; cap < 24; cap++) {
		exact = malloc(cap);
		n = jsoncmp(a, b, &ORDERED, exact, cap);
		assert_int_equal(n, 4);
		assert_true(strlen(exact) < cap);
		if (cap >= 4)
			assert_true(exact[0] != '\0');
		free(exact);
	}
	assert_int_equal(jsoncmp(a, b, &ORDERED, NULL, 0), 4);
	assert_int_equal(jsoncmp(a, a, &ORDERED, NULL, 0), 0);
	json_decref(a);
	json_decref(b);
}

static void test_hash(void **state)
{
	json_t *x = load("{\"a\":[1,2,{\"b\":null}],\"updated_at\":1}");
	json_t *y = load("{\"updated_at\":2,\"a\":[{\"b\":null},2.0,1]}");

	(void)state;
	assert_true(jsoncmp_hash(x, &IGNORE_UNORDERED) == jsoncmp_hash(y, &IGNORE_UNORDERED));
	assert_true(jsoncmp_hash(x, &IGNORE) != jsoncmp_hash(y, &IGNORE));
	assert_true(jsoncmp_hash(x, &UNORDERED) != jsoncmp_hash(y, &UNORDERED));
	json_decref(x);
	json_decref(y);
	x = load("[\"1\", 1, true, null, false, [], {}, 1.5, \"\"]");
	for (size_t i = 0; i < json_array_size(x); i++)
		for (size_t j = i + 1; j < json_array_size(x); j++)
			assert_true(jsoncmp_hash(json_array_get(x, i), &UNORDERED) !=
				    jsoncmp_hash(json_array_get(x, j), &UNORDERED));
	json_decref(x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_objects_unordered),
	    cmocka_unit_test(test_null_vs_missing),
	    cmocka_unit_test(test_numbers_by_value),
	    cmocka_unit_test(test_types),
	    cmocka_unit_test(test_ignore_every_depth),
	    cmocka_unit_test(test_lists_ordered),
	    cmocka_unit_test(test_lists_unordered),
	    cmocka_unit_test(test_big_unordered),
	    cmocka_unit_test(test_path_spelling),
	    cmocka_unit_test(test_output_bounds),
	    cmocka_unit_test(test_hash),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
