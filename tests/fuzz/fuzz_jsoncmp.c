/*
 * fuzz_jsoncmp — libFuzzer target for lib/jsoncmp.
 *
 * Input: one byte of options, then document A, then optionally a NUL byte
 * and document B (NUL cannot appear in JSON text). Options byte: bit 0
 * unordered lists, bit 1 ignore the keys "id" and "a", bits 2-4 max_paths
 * (0-7), bits 5-7 pick the output buffer's size (1..200 bytes, malloc'd to
 * exactly that size so ASan sees an overrun).
 * Properties, on every input that parses:
 *   - compare(A, A) and compare(A, copy of A) are equal with an empty line;
 *   - compare(A, shuffled A) is equal when unordered (every list reversed
 *     and rotated, every object rebuilt with its keys in reverse order);
 *   - compare(A, B) and compare(B, A) give the same count, and when
 *     they are equal their canonical hashes are too;
 *   - json_equal(A, B) implies equal under any options;
 *   - the line is NUL-terminated within the buffer, empty iff equal (when
 *     the buffer has room for "...").
 * Seeds: tests/fuzz/corpus/jsoncmp. Without libFuzzer, replay_main.c drives it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsoncmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "fuzz_jsoncmp: %s:%d: check failed: %s\n",     \
				__FILE__, __LINE__, #cond);                            \
			abort();                                                       \
		}                                                                      \
	} while (0)

static const char *const IGN[] = {"id", "a"};
static const size_t CAPS[8] = {1, 3, 4, 5, 12, 40, 100, 200};

/* A deep copy with every list reversed then rotated by one and every
 * object's keys inserted in reverse order: equal to v when unordered. */
static json_t *shuffled(const json_t *v)
{
	json_t *out;

	if (json_is_array(v)) {
		size_t n = json_array_size(v);

		out = json_array();
		for (size_t i = 0; i < n; i++) {
			size_t j = (n - 1 - i + 1) % n; /* reverse, then rotate */

			json_array_append_new(out, shuffled(json_array_get(v, j)));
		}
		return out;
	}
	if (json_is_object(v)) {
		size_t n = json_object_size(v), i = 0;
		const char **keys = malloc((n + 1) * sizeof(*keys));
		size_t *lens = malloc((n + 1) * sizeof(*lens));
		const char *k;
		size_t klen;
		json_t *val;

		CHECK(keys && lens);
		json_object_keylen_foreach((json_t *)(uintptr_t)v, k, klen, val)
		{
			keys[i] = k;
			lens[i++] = klen;
		}
		out = json_object();
		while (i-- > 0)
			json_object_setn_new_nocheck(out, keys[i], lens[i],
						     shuffled(json_object_getn(v, keys[i], lens[i])));
		free(keys);
		free(lens);
		return out;
	}
	return json_deep_copy(v);
}

/* Compare with a buffer of exactly cap bytes; check the line's bounds. */
static size_t run(const json_t *a, const json_t *b, const struct jsoncmp_opts *o, size_t cap)
{
	char *buf = malloc(cap);
	size_t n;

	CHECK(buf);
	memset(buf, 'Z', cap);
	n = jsoncmp(a, b, o, buf, cap);
	CHECK(memchr(buf, '\0', cap) != NULL);
	if (n == 0)
		CHECK(buf[0] == '\0');
	else if (cap >= 4)
		CHECK(buf[0] != '\0');
	free(buf);
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct jsoncmp_opts o;
	const uint8_t *sep;
	size_t cap, alen;
	json_t *a, *b = NULL, *copy;

	if (size < 1)
		return 0;
	o.unordered = data[0] & 1;
	o.ignore = (data[0] & 2) ? IGN : NULL;
	o.nignore = (data[0] & 2) ? 2 : 0;
	o.max_paths = (data[0] >> 2) & 7;
	cap = CAPS[data[0] >> 5];
	data++;
	size--;
	sep = memchr(data, '\0', size);
	alen = sep ? (size_t)(sep - data) : size;
	a = json_loadb((const char *)data, alen, JSON_DECODE_ANY, NULL);
	if (!a)
		return 0;
	if (sep)
		b = json_loadb((const char *)sep + 1, size - alen - 1, JSON_DECODE_ANY, NULL);

	CHECK(run(a, a, &o, cap) == 0);
	copy = json_deep_copy(a);
	CHECK(run(a, copy, &o, cap) == 0);
	CHECK(jsoncmp_hash(a, &o) == jsoncmp_hash(copy, &o));
	json_decref(copy);
	copy = shuffled(a);
	if (o.unordered) {
		CHECK(run(a, copy, &o, cap) == 0);
		CHECK(jsoncmp_hash(a, &o) == jsoncmp_hash(copy, &o));
	} else {
		CHECK(run(a, copy, &o, cap) == run(copy, a, &o, cap));
	}
	json_decref(copy);
	if (b) {
		size_t ab = run(a, b, &o, cap), ba = run(b, a, &o, cap);

		CHECK(ab == ba);
		if (json_equal(a, b))
			CHECK(ab == 0);
		if (ab == 0)
			CHECK(jsoncmp_hash(a, &o) == jsoncmp_hash(b, &o));
		json_decref(b);
	}
	json_decref(a);
	return 0;
}
