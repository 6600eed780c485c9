/*
 * test_jsonfast.c — lib/jsonfast against jansson 2.14: table-driven inputs
 * (accepted ones with the exact dump expected, rejected ones), each also
 * compared with json_loadb(JSON_DECODE_ANY) / json_dumps(JSON_COMPACT |
 * JSON_ENCODE_ANY): same accept/reject, json_equal values, identical dumps
 * but for reals, which jsonfast writes in the shortest form that reads back
 * bit for bit (jsonfast.h), checked against a slow reference.
 * Then the depth limit, the writer on values only the API can build (invalid
 * UTF-8, NUL, cycles, bad keys), reals and integers at their edges and from
 * random bits, error details, and random mutations of the benchmark body.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <stdbool.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonfast.h"

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY)

static const char BODY[] =
	"{\"order_id\":\"ord-7f3c9a12-5b7e-4c1d-9e8a-2f6b0c4d8e11\",\"customer\":{\"id\":48213,"
	"\"email\":\"jane.doe@example.com\",\"tier\":\"gold\"},\"items\":[{\"sku\":\"SKU-10023\","
	"\"qty\":2,\"price\":19.99},{\"sku\":\"SKU-20077\",\"qty\":1,\"price\":149.50}],"
	"\"currency\":\"EUR\",\"note\":\"leave at the door, ring twice\","
	"\"created_at\":\"2024-05-01T12:34:56Z\",\"idempotency_key\":\"b9e1f0aa77\"}";

/* ---------------------------------------------------------------- helpers */

static void show(char *out, size_t cap, const char *in, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; i < len && o + 5 < cap; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c >= 0x20 && c < 0x7f)
			out[o++] = (char)c;
		else
			o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
	}
	out[o] = '\0';
}

/* a and b are the same value, reals bit for bit (json_equal has -0.0 == 0.0). */
static bool same_value(const json_t *a, const json_t *b)
{
	const char *k;
	json_t *e;
	size_t i;

	if (json_typeof(a) != json_typeof(b))
		return false;
	switch (json_typeof(a)) {
	case JSON_REAL: {
		double x = json_real_value(a), y = json_real_value(b);

		return memcmp(&x, &y, sizeof(x)) == 0;
	}
	case JSON_ARRAY:
		if (json_array_size(a) != json_array_size(b))
			return false;
		json_array_foreach(a, i, e)
			if (!same_value(e, json_array_get(b, i)))
				return false;
		return true;
	case JSON_OBJECT:
		if (json_object_size(a) != json_object_size(b))
			return false;
		json_object_foreach((json_t *)(uintptr_t)a, k, e) {
			const json_t *f = json_object_get(b, k);

			if (!f || !same_value(e, f))
				return false;
		}
		return true;
	default:
		return json_equal(a, b);
	}
}

/*
 * Both writers on v: both NULL, or identical text but for reals, where
 * jsonfast writes the shortest text that reads back the same (jsonfast.h):
 * then the two texts must parse to the same values, reals bit for bit.
 * Returns jsonfast's text.
 */
static char *same_dump(const json_t *v)
{
	char *want = json_dumps(v, DUMP_FLAGS);
	size_t len = 999;
	char *got = jsonfast_dumps(v, &len);

	if ((want == NULL) != (got == NULL))
		fail_msg("dumps differ: jansson %s, jsonfast %s", want ? want : "(NULL)",
			 got ? got : "(NULL)");
	if (want && strcmp(want, got) != 0) {
		json_t *a = json_loads(want, JSON_DECODE_ANY, NULL);
		json_t *b = json_loads(got, JSON_DECODE_ANY, NULL);

		if (!a || !b || !same_value(a, b))
			fail_msg("dumps differ in value: jansson %s, jsonfast %s", want, got);
		json_decref(a);
		json_decref(b);
	}
	if (got)
		assert_int_equal(len, strlen(got));
	free(want);
	return got;
}

/* The definition jsonfast_real implements, the slow way: the first of
 * "%.15g", "%.16g", "%.17g" that strtod reads back (for a subnormal from
 * "%.1g"), then in JSON's form if json. */
static void real_reference(double d, bool json, char *b, size_t cap)
{
	char *x;

	for (int p = fabs(d) < DBL_MIN ? 1 : 15; p <= 17; p++) {
		snprintf(b, cap, "%.*g", p, d);
		if (strtod(b, NULL) == d)
			break;
	}
	if (!json)
		return;
	if (!strchr(b, '.') && !strchr(b, 'e'))
		strcat(b, ".0");
	x = strchr(b, 'e');
	if (x) {
		char *from = x + 2, *to = x[1] == '-' ? x + 2 : x + 1;

		while (*from == '0' && from[1])
			from++;
		memmove(to, from, strlen(from) + 1);
	}
}

/* jsonfast_real(d) in both forms is the reference, and so is the dump. */
static void check_real(double d)
{
	char want[64], got[JSONFAST_REAL_MAX];
	json_t *v = json_real(d);
	char *dump;

	for (int json = 0; json <= 1; json++) {
		real_reference(d, json, want, sizeof(want));
		assert_int_equal(jsonfast_real(d, json, got), (int)strlen(want));
		if (strcmp(got, want) != 0)
			fail_msg("jsonfast_real(%.17g, %d): %s, want %s", d, json, got, want);
	}
	dump = same_dump(v);
	assert_string_equal(dump, want);
	free(dump);
	json_decref(v);
}

/*
 * Parse with both; they must agree. Returns 1 if accepted (and checks the
 * dump against want_dump when given), 0 if rejected.
 */
static int differential(const char *in, size_t len, const char *want_dump)
{
	json_error_t je, fe;
	json_t *jv = json_loadb(in, len, JSON_DECODE_ANY, &je);
	json_t *fv = jsonfast_loadb(in, len, &fe);
	char shown[512];
	char *text;

	show(shown, sizeof(shown), in, len);
	if ((jv == NULL) != (fv == NULL))
		fail_msg("[%s]: jansson %s (%s), jsonfast %s (%s)", shown,
			 jv ? "accepts" : "rejects", jv ? "" : je.text,
			 fv ? "accepts" : "rejects", fv ? "" : fe.text);
	if (!jv) {
		if (fe.text[0] == '\0' || fe.line < 1 || fe.position < 0 || (size_t)fe.position > len)
			fail_msg("[%s]: poor error: '%s' line %d pos %d", shown, fe.text, fe.line,
				 fe.position);
		return 0;
	}
	if (!json_equal(jv, fv))
		fail_msg("[%s]: values differ", shown);
	assert_int_equal(je.position, fe.position);
	free(same_dump(jv));
	text = same_dump(fv);
	assert_non_null(text);
	if (want_dump && strcmp(text, want_dump) != 0)
		fail_msg("[%s]: dump %s, want %s", shown, text, want_dump);
	free(text);
	json_decref(jv);
	json_decref(fv);
	return 1;
}

struct ok_case {
	const char *in;
	size_t len; /* 0: strlen(in) */
	const char *dump;
};

#define OK(s, d) { s, sizeof(s) - 1, d }

static const struct ok_case accepted[] = {
	OK("0", "0"),
	OK("-0", "0"), /* strtoll: the integer 0 */
	OK("-0.0", "-0.0"),
	OK("-0e5", "-0.0"),
	OK("1E5", "100000.0"),
	OK("1e+5", "100000.0"),
	OK("1e-5", "1e-5"),
	OK("0.1", "0.1"),
	OK("149.50", "149.5"),
	OK("19.99", "19.99"),
	OK("1e-400", "0.0"),
	OK("1e22", "1e22"),
	OK("1e21", "1e21"),
	OK("1e16", "1e16"),
	OK("1e17", "1e17"),
	OK("123456789012345678", "123456789012345678"),
	OK("123456789012345678.0", "1.2345678901234568e17"),
	OK("0.30000000000000000000000000000000000001", "0.3"),
	OK("2.2250738585072014e-308", "2.2250738585072014e-308"),
	OK("4.9e-324", "5e-324"),
	OK("1.7976931348623157e308", "1.7976931348623157e308"),
	OK("9007199254740993", "9007199254740993"),
	OK("9007199254740993.0", "9007199254740992.0"),
	OK("9223372036854775807", "9223372036854775807"),
	OK("-9223372036854775808", "-9223372036854775808"),
	OK("0e99999999999999999999", "0.0"),
	OK("1e-99999999999999999999", "0.0"),
	OK("true", "true"),
	OK("false", "false"),
	OK("null", "null"),
	OK(" \t\r\n[ 1 , 2 ]\n", "[1,2]"),
	OK("[]", "[]"),
	OK("{}", "{}"),
	OK("\"\"", "\"\""),
	OK("{\"a\":1,\"b\":2,\"a\":3}", "{\"a\":3,\"b\":2}"),
	OK("{\"a\":{\"x\":1},\"a\":[2]}", "{\"a\":[2]}"),
	OK("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\\"\\\\/\\b\\f\\n\\r\\t\""),
	OK("\"\\u0041\\u00e9\\u20AC\"", "\"A\xc3\xa9\xe2\x82\xac\""),
	OK("\"\\ud83d\\ude00\"", "\"\xf0\x9f\x98\x80\""),
	OK("\"\\uDBFF\\uDFFF\"", "\"\xf4\x8f\xbf\xbf\""),
	OK("\"\\u0001\\u001f\\u007f\"", "\"\\u0001\\u001F\x7f\""),
	OK("\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbf\"", NULL),
	OK("{\"k\\u00e9y\":\"v\",\"k\\ny\":[{\"x\\ty\":1}]}", "{\"k\xc3\xa9y\":\"v\",\"k\\ny\":[{\"x\\ty\":1}]}"),
	/* jansson quirk: one NUL right after a number or a literal is dropped */
	OK("1\0", "1"),
	OK("[1\0,true\0,2.5\0]", "[1,true,2.5]"),
	OK("{\"a\":null\0}", "{\"a\":null}"),
	OK("{\"id\":\"123456\",\"status\":\"created\"}", "{\"id\":\"123456\",\"status\":\"created\"}"),
};

static const struct ok_case rejected[] = {
	OK("", NULL),
	OK("   \n", NULL),
	OK("1e400", NULL),
	OK("-1e400", NULL),
	OK("1e400e", NULL),
	OK("9223372036854775808", NULL),
	OK("-9223372036854775809", NULL),
	OK("99999999999999999999999", NULL),
	OK("01", NULL),
	OK("-01", NULL),
	OK("1.", NULL),
	OK(".5", NULL),
	OK("-", NULL),
	OK("+1", NULL),
	OK("1e", NULL),
	OK("1e+", NULL),
	OK("1.5.3", NULL),
	OK("0x10", NULL),
	OK("NaN", NULL),
	OK("-Infinity", NULL),
	OK("[1,]", NULL),
	OK("[1 2]", NULL),
	OK("{\"a\":1,}", NULL),
	OK("{\"a\" 1}", NULL),
	OK("{1:2}", NULL),
	OK("{\"a\":}", NULL),
	OK("[", NULL),
	OK("{", NULL),
	OK("{\"a\"", NULL),
	OK("{} x", NULL),
	OK("[] []", NULL),
	OK("truex", NULL),
	OK("nul", NULL),
	OK("True", NULL),
	OK("\"abc", NULL),
	OK("\"\\", NULL),
	OK("\"\\u12", NULL),
	OK("\"\\u12g4\"", NULL),
	OK("\"\\x\"", NULL),
	OK("\"\\u0000\"", NULL),
	OK("{\"\\u0000\":1}", NULL),
	OK("{\"a\\u0000b\":1}", NULL),
	OK("\"\\ud800\"", NULL),
	OK("\"\\udc00\"", NULL),
	OK("\"\\ud800x\"", NULL),
	OK("\"\\ud800\\n\"", NULL),
	OK("\"\\ud800\\u0041\"", NULL),
	OK("\"\\ud800\\ud800\"", NULL),
	OK("\"\\udc00\\ud800\"", NULL),
	OK("\"a\x01b\"", NULL),
	OK("\"a\nb\"", NULL),
	OK("\"a\tb\"", NULL),
	OK("\"a\0b\"", NULL),
	OK("\"\xc0\xaf\"", NULL),     /* overlong '/' */
	OK("\"\xc1\xbf\"", NULL),     /* overlong */
	OK("\"\xe0\x80\xaf\"", NULL), /* overlong, 3 bytes */
	OK("\"\xf0\x80\x80\xaf\"", NULL), /* overlong, 4 bytes */
	OK("\"\xed\xa0\x80\"", NULL), /* U+D800 encoded */
	OK("\"\xed\xbf\xbf\"", NULL), /* U+DFFF encoded */
	OK("\"\xf4\x90\x80\x80\"", NULL), /* U+110000 */
	OK("\"\xf5\x80\x80\x80\"", NULL),
	OK("\"\xff\"", NULL),
	OK("\"\x80\"", NULL),
	OK("\"\xe2\x82\"", NULL), /* truncated */
	OK("\"\xe2\x82", NULL),
	OK("\xe2\x82\xac", NULL),
	OK("\xef\xbb\xbf{}", NULL), /* BOM */
	OK("1\0\0", NULL),
	OK("1 \0", NULL),
	OK("\"a\"\0", NULL),
	OK("[1,\0 2]", NULL),
	OK("\0", NULL),
	OK("-\0", NULL),
	OK("1.\0", NULL),
};

/* ------------------------------------------------------------------ tests */

static void test_accepted(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
		const struct ok_case *c = &accepted[i];

		if (!differential(c->in, c->len, c->dump))
			fail_msg("case %zu (%s) rejected", i, c->in);
	}
}

static void test_rejected(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(rejected) / sizeof(rejected[0]); i++) {
		const struct ok_case *c = &rejected[i];

		if (differential(c->in, c->len, NULL))
			fail_msg("case %zu (%s) accepted", i, c->in);
	}
	/* NULL buffer, like jansson */
	assert_null(jsonfast_loadb(NULL, 0, NULL));
}

static void test_body(void **state)
{
	json_error_t e;
	json_t *v;

	(void)state;
	assert_int_equal(differential(BODY, sizeof(BODY) - 1, NULL), 1);
	v = jsonfast_loadb(BODY, sizeof(BODY) - 1, &e);
	assert_non_null(v);
	assert_true(json_is_integer(json_object_get(json_object_get(v, "customer"), "id")));
	assert_true(json_is_real(json_object_get(json_array_get(json_object_get(v, "items"), 1), "price")));
	assert_int_equal(json_object_size(v), 7);
	json_decref(v);
}

/* Every byte 0x01..0x7f in strings: raw where JSON allows it, escaped else. */
static void test_all_ascii(void **state)
{
	char in[1024], *p = in;

	(void)state;
	*p++ = '"';
	for (int c = 1; c < 0x80; c++) {
		if (c < 0x20)
			p += sprintf(p, "\\u%04x", c);
		else if (c == '"' || c == '\\')
			p += sprintf(p, "\\%c", c);
		else
			*p++ = (char)c;
	}
	*p++ = '"';
	assert_int_equal(differential(in, (size_t)(p - in), NULL), 1);
	/* the same as a key */
	memmove(in + 1, in, (size_t)(p - in));
	in[0] = '{';
	p++;
	p += sprintf(p, ":1}");
	assert_int_equal(differential(in, (size_t)(p - in), NULL), 1);
	/* raw control characters: each rejected on its own */
	for (int c = 1; c < 0x20; c++) {
		char s[4] = { '"', (char)c, '"', 0 };

		assert_int_equal(differential(s, 3, NULL), 0);
	}
}

static char *nested(int depth, const char *inner)
{
	size_t n = strlen(inner);
	char *s = malloc((size_t)depth * 2 + n + 1);

	assert_non_null(s);
	memset(s, '[', (size_t)depth);
	memcpy(s + depth, inner, n);
	memset(s + depth + n, ']', (size_t)depth);
	s[(size_t)depth * 2 + n] = '\0';
	return s;
}

static void test_depth(void **state)
{
	static const struct {
		const char *inner;
		int arrays;
		int ok;
	} cases[] = {
		{ "", 2047, 1 }, { "", 2048, 1 }, { "", 2049, 0 }, { "1", 2047, 1 },
		{ "1", 2048, 0 }, { "{}", 2047, 1 }, { "{\"a\":1}", 2047, 0 }, { "", 5000, 0 },
	};

	(void)state;
	assert_int_equal(JSON_PARSER_MAX_DEPTH, 2048);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *s = nested(cases[i].arrays, cases[i].inner);

		if (differential(s, strlen(s), NULL) != cases[i].ok)
			fail_msg("depth %d + '%s': want %s", cases[i].arrays, cases[i].inner,
				 cases[i].ok ? "accepted" : "rejected");
		free(s);
	}
}

/* Values the parser cannot produce, written by both writers. */
static void test_writer_edges(void **state)
{
	json_t *v, *a, *b;
	char *s;

	(void)state;
	/* invalid UTF-8 string value: jansson fails the dump */
	v = json_stringn_nocheck("ab\xff", 3);
	assert_null(jsonfast_dumps(v, NULL));
	free(same_dump(v));
	json_decref(v);
	v = json_stringn_nocheck("\xed\xa0\x80", 3);
	assert_null(jsonfast_dumps(v, NULL));
	json_decref(v);

	/* NUL inside a string */
	v = json_stringn_nocheck("a\0b", 3);
	s = same_dump(v);
	assert_string_equal(s, "\"a\\u0000b\"");
	free(s);
	json_decref(v);

	/* jansson quirk: an invalid key is written cut, the dump goes on */
	v = json_object();
	json_object_setn_new_nocheck(v, "a\nb\xff", 4, json_integer(1));
	json_object_setn_new_nocheck(v, "x\0y", 3, json_integer(2));
	json_object_setn_new_nocheck(v, "\xc3", 1, json_true());
	s = same_dump(v);
	assert_string_equal(s, "{\"a\\n:1,\"x\\u0000y\":2,\":true}");
	free(s);
	json_decref(v);

	/* a cycle fails the dump */
	a = json_array();
	b = json_object();
	json_array_append(a, b);
	json_object_set(b, "a", a);
	assert_null(jsonfast_dumps(a, NULL));
	free(same_dump(a));
	json_object_del(b, "a");
	json_decref(b);
	json_decref(a);

	/* the same object twice is not a cycle */
	a = json_array();
	b = json_object();
	json_object_set_new(b, "k", json_string("v"));
	json_array_append(a, b);
	json_array_append(a, b);
	s = same_dump(a);
	assert_string_equal(s, "[{\"k\":\"v\"},{\"k\":\"v\"}]");
	free(s);
	json_decref(b);
	json_decref(a);

	/* long values: the buffer grows */
	{
		char big[5000];

		for (size_t i = 0; i < sizeof(big); i++)
			big[i] = (char)(i % 7 == 0 ? '\n' : 'a' + i % 26);
		v = json_stringn(big, sizeof(big));
		free(same_dump(v));
		json_decref(v);
	}
	assert_null(jsonfast_dumps(NULL, NULL));
}

static uint64_t rng(uint64_t *s)
{
	/* splitmix64: deterministic, so a failure reproduces */
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static void test_numbers_write(void **state)
{
	static const double reals[] = {
		0.0, -0.0, 1.0, -1.0, 0.5, 0.1, 1e22, 1e21, 1e16, 1e17, 1e-5, 1e-4, 123456789.125,
		DBL_MAX, -DBL_MAX, DBL_MIN, DBL_TRUE_MIN, 5e-324, 9007199254740992.0, 1e300, 1e-300,
		19.99, 149.5, 3.141592653589793,
	};
	static const json_int_t ints[] = { 0, 1, -1, 9, 10, -10, LLONG_MAX, LLONG_MIN, LLONG_MIN + 1 };
	uint64_t seed = 42;

	static const struct {
		double d;
		const char *json, *plain;
	} named[] = {
		{ 21.3, "21.3", "21.3" },
		{ -21.3, "-21.3", "-21.3" },
		{ 0.1, "0.1", "0.1" },
		{ 0.1 + 0.2, "0.30000000000000004", "0.30000000000000004" },
		{ 1e300, "1e300", "1e+300" },
		{ -0.0, "-0.0", "-0" },
		{ 0.0, "0.0", "0" },
		{ 5e-324, "5e-324", "5e-324" },
		{ 1.0, "1.0", "1" }, /* conf/MAPPING.md: $json keeps "1.0", $string "1" */
		{ 100.0, "100.0", "100" },
		{ 1e-7, "1e-7", "1e-07" },
		{ 1e15, "1e15", "1e+15" },
		{ 123456789012345.0, "123456789012345.0", "123456789012345" },
		{ 9007199254740993.0, "9007199254740992.0", "9007199254740992" },
		{ 19.99, "19.99", "19.99" },
		{ DBL_MAX, "1.7976931348623157e308", "1.7976931348623157e+308" },
	};
	char buf[JSONFAST_REAL_MAX];

	(void)state;
	for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
		assert_int_equal(jsonfast_real(named[i].d, true, buf), (int)strlen(named[i].json));
		assert_string_equal(buf, named[i].json);
		assert_int_equal(jsonfast_real(named[i].d, false, buf), (int)strlen(named[i].plain));
		assert_string_equal(buf, named[i].plain);
		check_real(named[i].d);
	}
	assert_int_equal(jsonfast_real(INFINITY, true, buf), -1);
	assert_int_equal(jsonfast_real(NAN, false, buf), -1);
	for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++)
		check_real(reals[i]);
	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
		json_t *v = json_integer(ints[i]);

		free(same_dump(v));
		json_decref(v);
	}
	/* random bit patterns and random "short" decimals */
	for (int i = 0; i < 20000; i++) {
		uint64_t bits = rng(&seed);
		double d;
		json_t *v;

		memcpy(&d, &bits, sizeof(d));
		if (!isfinite(d))
			continue;
		check_real(d);
		v = json_integer((json_int_t)bits);
		free(same_dump(v));
		json_decref(v);
	}
	/* the writer's exact fast path (about 1e-6..1e38): any mantissa, and
	 * values with few fraction bits, whose 18th digit can be a tie */
	for (int i = 0; i < 20000; i++) {
		double d[3] = {
			ldexp((double)(rng(&seed) >> 11), (int)(rng(&seed) % 200) - 100),
			ldexp((double)(rng(&seed) >> 11), -(int)(rng(&seed) % 4)),
			nextafter(pow(10, (int)(rng(&seed) % 50) - 10), (rng(&seed) & 1) ? 0 : 1e300),
		};

		for (int j = 0; j < 3; j++)
			check_real(d[j]);
	}
	for (int i = 0; i < 20000; i++) {
		char text[64];

		snprintf(text, sizeof(text), "%lld.%llde%d", (long long)(rng(&seed) % 100000000),
			 (long long)(rng(&seed) % 1000), (int)(rng(&seed) % 61) - 30);
		assert_int_equal(differential(text, strlen(text), NULL), 1);
		snprintf(text, sizeof(text), "-%llu.%llu", (unsigned long long)(rng(&seed) % 10000000000000000000ULL),
			 (unsigned long long)(rng(&seed) % 1000000));
		assert_int_equal(differential(text, strlen(text), NULL), 1);
	}
}

static void test_errors(void **state)
{
	json_error_t e;
	const char *in = "{\n  \"a\": [1, 2,\n  x]\n}";

	(void)state;
	assert_null(jsonfast_loadb(in, strlen(in), &e));
	assert_int_equal(e.line, 3);
	assert_int_equal(e.column, 3);
	assert_int_equal(e.position, 18);
	assert_string_equal(e.source, "<buffer>");
	assert_int_equal(json_error_code(&e), json_error_invalid_syntax);
	assert_non_null(strstr(e.text, "invalid token"));

	assert_null(jsonfast_loadb("99999999999999999999", 20, &e));
	assert_int_equal(json_error_code(&e), json_error_numeric_overflow);
	assert_null(jsonfast_loadb("[1", 2, &e));
	assert_non_null(strstr(e.text, "end of input"));
	assert_null(jsonfast_loadb("\"\xff\"", 3, &e));
	assert_int_equal(json_error_code(&e), json_error_invalid_utf8);
	assert_null(jsonfast_loadb("\"\\u0000\"", 8, &e));
	assert_int_equal(json_error_code(&e), json_error_null_character);
	/* err is optional */
	assert_null(jsonfast_loadb("[", 1, NULL));
	json_decref(jsonfast_loadb("[1]", 3, NULL));
	/* success: position like jansson's, code unknown */
	json_t *v = jsonfast_loadb(" [1] ", 5, &e);

	assert_non_null(v);
	assert_int_equal(e.position, 5);
	json_decref(v);
}

/* Random edits of the benchmark body: both parsers must always agree. */
static void test_mutations(void **state)
{
	static const char alphabet[] = "{}[]\",:\\u0-.eE+19aftnl \n\x01\x7f\x80\xc3\xa9\xed\xf4";
	uint64_t seed = 7;
	char buf[sizeof(BODY) + 16];
	int accepted_n = 0;

	(void)state;
	for (int i = 0; i < 20000; i++) {
		size_t len = sizeof(BODY) - 1;

		memcpy(buf, BODY, len);
		for (int k = (int)(rng(&seed) % 3) + 1; k > 0; k--) {
			size_t at = (size_t)(rng(&seed) % len);
			char c = alphabet[rng(&seed) % (sizeof(alphabet) - 1)];

			switch (rng(&seed) % 3) {
			case 0:
				buf[at] = c;
				break;
			case 1:
				memmove(buf + at + 1, buf + at, len - at);
				buf[at] = c;
				len++;
				break;
			default:
				memmove(buf + at, buf + at + 1, len - at - 1);
				len--;
				break;
			}
		}
		accepted_n += differential(buf, len, NULL);
	}
	/* the test is worth something only if both outcomes happen */
	assert_true(accepted_n > 1000 && accepted_n < 19000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accepted),
		cmocka_unit_test(test_rejected),
		cmocka_unit_test(test_body),
		cmocka_unit_test(test_all_ascii),
		cmocka_unit_test(test_depth),
		cmocka_unit_test(test_writer_edges),
		cmocka_unit_test(test_numbers_write),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_mutations),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
