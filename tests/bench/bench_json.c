/*
 * bench_json — jansson vs lib/jsonfast on the daemon's per-request JSON work.
 *
 * Two documents: the 337-byte mirrored request body of the Gear
 * "order-create" example and a small legacy reply. For each, four
 * operations are timed: json_loadb(JSON_DECODE_ANY) vs jsonfast_loadb, and
 * json_dumps(JSON_COMPACT | JSON_ENCODE_ANY) vs jsonfast_dumps of the parsed
 * value (freeing what they return is part of the operation, as in the
 * daemon). Each measurement is the best of R rounds of N operations (bounded:
 * defaults N = 100000, R = 5), which filters out a noisy neighbour on a
 * shared machine. Before timing, the two implementations are checked to
 * produce equal values, and texts that read back as equal values (jsonfast
 * writes reals in their shortest form, jansson with 17 digits).
 *
 * Output: a header line, then one tab-separated line per document and operation:
 *   doc  op  bytes  jansson_us  jsonfast_us  speedup
 *
 * usage: bench_json [-n OPS_PER_ROUND] [-r ROUNDS]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jsonfast.h"

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY)

static const char BODY[] =
	"{\"order_id\":\"ord-7f3c9a12-5b7e-4c1d-9e8a-2f6b0c4d8e11\",\"customer\":{\"id\":48213,"
	"\"email\":\"jane.doe@example.com\",\"tier\":\"gold\"},\"items\":[{\"sku\":\"SKU-10023\","
	"\"qty\":2,\"price\":19.99},{\"sku\":\"SKU-20077\",\"qty\":1,\"price\":149.50}],"
	"\"currency\":\"EUR\",\"note\":\"leave at the door, ring twice\","
	"\"created_at\":\"2024-05-01T12:34:56Z\",\"idempotency_key\":\"b9e1f0aa77\"}";
static const char REPLY[] = "{\"id\":\"123456\",\"status\":\"created\"}";

enum op { LOAD_JANSSON, LOAD_FAST, DUMP_JANSSON, DUMP_FAST };

/* Keeps the optimizer from dropping the work. */
static volatile size_t sink;

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* Best-of-rounds microseconds per operation. */
static double measure(enum op op, const char *doc, size_t len, const json_t *v, long n, int rounds)
{
	double best = 1e300;

	for (int r = 0; r < rounds; r++) {
		double t0 = now_us();

		for (long i = 0; i < n; i++) {
			json_t *p;
			char *s;

			switch (op) {
			case LOAD_JANSSON:
				p = json_loadb(doc, len, JSON_DECODE_ANY, NULL);
				sink += (size_t)json_object_size(p);
				json_decref(p);
				break;
			case LOAD_FAST:
				p = jsonfast_loadb(doc, len, NULL);
				sink += (size_t)json_object_size(p);
				json_decref(p);
				break;
			case DUMP_JANSSON:
				s = json_dumps(v, DUMP_FLAGS);
				sink += (size_t)s[0];
				free(s);
				break;
			case DUMP_FAST:
				s = jsonfast_dumps(v, NULL);
				sink += (size_t)s[0];
				free(s);
				break;
			}
		}
		double t = (now_us() - t0) / (double)n;

		if (t < best)
			best = t;
	}
	return best;
}

static int bench_doc(const char *name, const char *doc, long n, int rounds)
{
	size_t len = strlen(doc);
	json_error_t err;
	json_t *jv = json_loadb(doc, len, JSON_DECODE_ANY, &err);
	json_t *fv = jsonfast_loadb(doc, len, &err);
	char *a, *b;
	double tj, tf;
	int rc = 0;

	if (!jv || !fv || !json_equal(jv, fv)) {
		fprintf(stderr, "bench_json: %s: the parsers disagree\n", name);
		rc = 1;
		goto out;
	}
	a = json_dumps(jv, DUMP_FLAGS);
	b = jsonfast_dumps(jv, NULL);
	if (!a || !b) {
		rc = 1;
	} else if (strcmp(a, b) != 0) { /* reals are written shorter (jsonfast.h) */
		json_t *pa = json_loads(a, JSON_DECODE_ANY, NULL), *pb = json_loads(b, JSON_DECODE_ANY, NULL);

		rc = !pa || !pb || !json_equal(pa, pb);
		json_decref(pa);
		json_decref(pb);
	}
	if (rc)
		fprintf(stderr, "bench_json: %s: the writers disagree\n", name);
	free(a);
	free(b);
	if (rc)
		goto out;

	tj = measure(LOAD_JANSSON, doc, len, NULL, n, rounds);
	tf = measure(LOAD_FAST, doc, len, NULL, n, rounds);
	printf("%s\tload\t%zu\t%.3f\t%.3f\t%.2fx\n", name, len, tj, tf, tj / tf);
	tj = measure(DUMP_JANSSON, NULL, 0, jv, n, rounds);
	tf = measure(DUMP_FAST, NULL, 0, jv, n, rounds);
	printf("%s\tdump\t%zu\t%.3f\t%.3f\t%.2fx\n", name, len, tj, tf, tj / tf);
out:
	json_decref(jv);
	json_decref(fv);
	return rc;
}

int main(int argc, char **argv)
{
	long n = 100000;
	int rounds = 5, c, rc = 0;

	while ((c = getopt(argc, argv, "n:r:h")) != -1) {
		switch (c) {
		case 'n':
			n = strtol(optarg, NULL, 10);
			break;
		case 'r':
			rounds = atoi(optarg);
			break;
		default:
			fprintf(c == 'h' ? stdout : stderr,
				"usage: bench_json [-n OPS_PER_ROUND (100000)] [-r ROUNDS (5)]\n");
			return c == 'h' ? 0 : 2;
		}
	}
	if (n < 1 || n > 100000000 || rounds < 1 || rounds > 100) {
		fprintf(stderr, "bench_json: -n 1..100000000, -r 1..100\n");
		return 2;
	}
	printf("doc\top\tbytes\tjansson_us\tjsonfast_us\tspeedup\n");
	rc |= bench_doc("body", BODY, n, rounds);
	rc |= bench_doc("reply", REPLY, n, rounds);
	return rc;
}
