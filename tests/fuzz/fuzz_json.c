/*
 * fuzz_json — differential libFuzzer target: lib/jsonfast against jansson.
 *
 * Every input is parsed by json_loadb(JSON_DECODE_ANY) and jsonfast_loadb:
 * both must accept or both reject; when accepted the values must json_equal,
 * dump to the same bytes with json_dumps(JSON_COMPACT | JSON_ENCODE_ANY) and
 * jsonfast_dumps (each applied to each parser's value), report the same
 * success position, and the dump must parse back to an equal value. The
 * writer also gets values no parser can produce, made from the raw input: a
 * string and an object key with arbitrary bytes (invalid UTF-8, NUL), a real
 * and an integer from the first 8 bytes; its output (or NULL) must match
 * json_dumps byte for byte. A failed parse must come with an error text.
 * Seeds: tests/fuzz/corpus/json. Without libFuzzer, replay_main.c drives it.
 */
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

/* The same text (or both NULL) from jansson and jsonfast, else abort with both. */
static void same_dump(const char *what, const json_t *v)
{
	char *want = json_dumps(v, DUMP_FLAGS);
	size_t len = 12345;
	char *got = jsonfast_dumps(v, &len);

	if ((want == NULL) != (got == NULL) || (want && (strcmp(want, got) != 0 || len != strlen(want)))) {
		fprintf(stderr, "fuzz_json: %s: dumps differ\n  jansson:  %s\n  jsonfast: %s (len %zu)\n",
			what, want ? want : "(NULL)", got ? got : "(NULL)", len);
		abort();
	}
	free(want);
	free(got);
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
