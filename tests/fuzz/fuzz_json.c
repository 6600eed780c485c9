/*
 * fuzz_json — differential libFuzzer target: lib/jsonfast against jansson.
 *
 * Every input is parsed by json_loadb(JSON_DECODE_ANY) and jsonfast_loadb:
 * both must accept or both reject; when accepted the values must json_equal,
 * dump with json_dumps(JSON_COMPACT | JSON_ENCODE_ANY) and jsonfast_dumps
 * (each applied to each parser's value) to the same bytes or, where they
 * differ (reals: jsonfast writes the shortest text that reads back, jansson
 * "%.17g", see jsonfast.h), to texts that parse to the same values with
 * reals bit for bit; report the same success position, and the dump must
 * parse back to an equal value. The writer also gets values no parser can
 * produce, made from the raw input: a string and an object key with
 * arbitrary bytes (invalid UTF-8, NUL), a real and an integer from the first
 * 8 bytes; its output (or NULL) must match json_dumps that way, and the real
 * must be written exactly as the slow reference (snprintf at 15, 16, 17
 * digits until strtod reads it back) writes it. A failed parse must come
 * with an error text.
 * Seeds: tests/fuzz/corpus/json. Without libFuzzer, replay_main.c drives it.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonfast.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY)

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "fuzz_json: %s:%d: check failed: %s\n",        \
				__FILE__, __LINE__, #cond);                            \
			abort();                                                       \
		}                                                                      \
	} while (0)

/* a and b are the same value, reals bit for bit (json_equal has -0.0 == 0.0). */
static int same_value(const json_t *a, const json_t *b)
{
	const char *k;
	json_t *e;
	size_t i;

	if (json_typeof(a) != json_typeof(b))
		return 0;
	switch (json_typeof(a)) {
	case JSON_REAL: {
		double x = json_real_value(a), y = json_real_value(b);

		return memcmp(&x, &y, sizeof(x)) == 0;
	}
	case JSON_ARRAY:
		if (json_array_size(a) != json_array_size(b))
			return 0;
		json_array_foreach(a, i, e)
			if (!same_value(e, json_array_get(b, i)))
				return 0;
		return 1;
	case JSON_OBJECT:
		if (json_object_size(a) != json_object_size(b))
			return 0;
		json_object_foreach((json_t *)(uintptr_t)a, k, e) {
			const json_t *f = json_object_get(b, k);

			if (!f || !same_value(e, f))
				return 0;
		}
		return 1;
	default:
		return json_equal(a, b);
	}
}

/* The same text from jansson and jsonfast, or texts that parse to the same
 * value (reals written differently), or both NULL; else abort with both. */
static void same_dump(const char *what, const json_t *v)
{
	char *want = json_dumps(v, DUMP_FLAGS);
	size_t len = 12345;
	char *got = jsonfast_dumps(v, &len);
	int same = (want == NULL) == (got == NULL) && (!got || len == strlen(got));

	if (same && want && strcmp(want, got) != 0) {
		json_t *a = json_loads(want, JSON_DECODE_ANY, NULL);
		json_t *b = json_loads(got, JSON_DECODE_ANY, NULL);

		same = a && b && same_value(a, b);
		json_decref(a);
		json_decref(b);
	}
	if (!same) {
		fprintf(stderr, "fuzz_json: %s: dumps differ\n  jansson:  %s\n  jsonfast: %s (len %zu)\n",
			what, want ? want : "(NULL)", got ? got : "(NULL)", len);
		abort();
	}
	free(want);
	free(got);
}

/* jsonfast's text of the real d is the slow reference's (jsonfast.h). */
static void reference_real(double d)
{
	char want[64], got[JSONFAST_REAL_MAX], *x, *dump;

	for (int p = fabs(d) < DBL_MIN ? 1 : 15; p <= 17; p++) {
		snprintf(want, sizeof(want), "%.*g", p, d);
		if (strtod(want, NULL) == d)
			break;
	}
	CHECK(jsonfast_real(d, false, got) == (int)strlen(want) && strcmp(got, want) == 0);
	if (!strchr(want, '.') && !strchr(want, 'e'))
		strcat(want, ".0");
	x = strchr(want, 'e');
	if (x) {
		char *from = x + 2, *to = x[1] == '-' ? x + 2 : x + 1;

		while (*from == '0' && from[1])
			from++;
		memmove(to, from, strlen(from) + 1);
	}
	CHECK(jsonfast_real(d, true, got) == (int)strlen(want) && strcmp(got, want) == 0);
	{
		json_t *r = json_real(d);

		CHECK(r);
		dump = jsonfast_dumps(r, NULL);
		CHECK(dump && strcmp(dump, want) == 0);
		free(dump);
		json_decref(r);
	}
}

/* The writer on values the parsers never produce. */
static void fuzz_writer(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	json_t *str = json_stringn_nocheck(s, size), *obj = json_object(), *arr = json_array();

	CHECK(str && obj && arr);
	same_dump("raw string", str);
	/* jansson ignores a key's failure: the key comes out truncated */
	CHECK(json_object_setn_nocheck(obj, s, size, str) == 0);
	CHECK(json_object_setn_new_nocheck(obj, "k", 1, json_integer((json_int_t)size)) == 0);
	same_dump("raw key", obj);
	CHECK(json_array_append(arr, obj) == 0);
	CHECK(json_array_append(arr, str) == 0);
	same_dump("array of raw", arr);
	if (size >= 8) {
		double d;
		json_int_t i;

		memcpy(&d, data, sizeof(d));
		memcpy(&i, data, sizeof(i));
		if (isfinite(d)) {
			json_t *r = json_real(d);

			CHECK(r);
			same_dump("real bits", r);
			json_decref(r);
			reference_real(d);
		}
		json_t *n = json_integer(i);

		CHECK(n);
		same_dump("integer bits", n);
		json_decref(n);
	}
	json_decref(arr);
	json_decref(obj);
	json_decref(str);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	json_error_t je, fe;
	json_t *jv = json_loadb(buf, size, JSON_DECODE_ANY, &je);
	json_t *fv = jsonfast_loadb(buf, size, &fe);

	if ((jv == NULL) != (fv == NULL)) {
		fprintf(stderr, "fuzz_json: accept/reject differ: jansson %s (%s), jsonfast %s (%s)\n",
			jv ? "accepts" : "rejects", jv ? "" : je.text, fv ? "accepts" : "rejects",
			fv ? "" : fe.text);
		abort();
	}
	if (!jv) {
		CHECK(fe.text[0] != '\0' && strcmp(fe.source, "<buffer>") == 0);
		CHECK(fe.line >= 1 && fe.column >= 0 && fe.position >= 0 && (size_t)fe.position <= size);
		CHECK(json_error_code(&fe) != json_error_unknown);
	} else {
		char *text;
		size_t len = 0;
		json_t *back;

		CHECK(json_equal(jv, fv));
		CHECK(je.position == fe.position);
		same_dump("jansson's value", jv);
		same_dump("jsonfast's value", fv);
		/* the dump reads back as the same value, to the same bytes */
		text = jsonfast_dumps(fv, &len);
		CHECK(text);
		back = jsonfast_loadb(text, len, NULL);
		CHECK(back && json_equal(back, fv));
		same_dump("round trip", back);
		json_decref(back);
		free(text);
	}
	json_decref(jv);
	json_decref(fv);

	fuzz_writer(data, size);
	return 0;
}
