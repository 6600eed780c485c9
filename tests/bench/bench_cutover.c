/*
 * bench_cutover — the per-read cost of the cut-over's pure parts, so the
 * price of a read route, a shadow comparison and the guards is known:
 *   bucket      bucket_of("equipment-list", user id) (every read of a route)
 *   draw        bucket_draw (a read without a sticky value)
 *   window      window_record into one worker's window (every new-system read)
 *   tick        the guard tick: sum 8 workers' 60-slot windows with latency
 *               plus a mirror and a mismatch window, then guard_check (1/s)
 *   jsoncmp     the shadow comparison of two Gear equipment lists of 50
 *               items (7 fields each, "updated_at" ignored), already parsed:
 *                 same-order  equal, unordered (the common case)
 *                 reversed    equal, unordered, every item out of place
 *                 one-diff    one item's "type" differs, unordered (the
 *                             mismatch path, with the paths written)
 *                 ordered     equal, in order, unordered off
 *   parse       json_loadb of both lists (for scale: what a shadow read
 *               costs before the comparison)
 * Each figure is the best of R rounds of N calls (defaults N = 200000 for
 * the cheap ones, N/50 for list work; R = 5), in nanoseconds per call.
 *
 * Output: "op<TAB>ns_per_call" lines after a header.
 * usage: bench_cutover [-n CALLS_PER_ROUND] [-r ROUNDS]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bucket.h"
#include "jsoncmp.h"
#include "window.h"

static volatile uint64_t sink;

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* 50 items as the legacy answers them; `reverse` lists them backwards,
 * `changed` gives item 17 another type, and updated_at differs on each side. */
static char *list_text(int reverse, int changed, const char *updated)
{
	size_t cap = 16384, len = 0;
	char *s = malloc(cap);

	len += (size_t)snprintf(s + len, cap - len, "[");
	for (int k = 0; k < 50; k++) {
		int i = reverse ? 49 - k : k;

		len += (size_t)snprintf(s + len, cap - len,
					"%s{\"id\":%d,\"user_id\":48213,\"name\":\"Trail item %d\","
					"\"type\":\"%s\",\"brand\":\"brand%d\","
					"\"created_at\":\"2024-03-01T12:34:%02dZ\",\"updated_at\":\"%s\"}",
					k ? "," : "", 1000 + i, i,
					changed && i == 17 ? "shoes" : (i % 3 ? "tent" : "boots"), i % 7,
					i % 60, updated);
	}
	snprintf(s + len, cap - len, "]");
	return s;
}

static json_t *parse(const char *s)
{
	json_t *v = json_loads(s, 0, NULL);

	if (!v) {
		fprintf(stderr, "bench_cutover: bad document\n");
		exit(1);
	}
	return v;
}

typedef void (*op_fn)(long i, void *arg);

static double measure(op_fn f, void *arg, long n, int rounds)
{
	double best = 1e300;

	for (int r = 0; r < rounds; r++) {
		double t0 = now_ns();

		for (long i = 0; i < n; i++)
			f(i, arg);
		double t = (now_ns() - t0) / (double)n;

		if (t < best)
			best = t;
	}
	return best;
}

static char keys[4096][12]; /* user ids "10000".."14095" (room for any int) */

static void op_bucket(long i, void *arg)
{
	(void)arg;
	sink += bucket_of("equipment-list", 14, keys[i & 4095], 5);
}

static void op_draw(long i, void *arg)
{
	(void)i;
	sink += bucket_draw(arg);
}

static void op_window(long i, void *arg)
{
	window_record(arg, 5000 + i / 1000, (i & 127) == 0, 2000 + (i & 4095) * 50);
}

struct tick {
	struct window *reads[8], *mirrors, *mism;
	struct guard_limits l;
};

static void op_tick(long i, void *arg)
{
	static struct window_sum r, m, x;
	struct tick *t = arg;
	struct guard_verdict v;

	(void)i;
	window_sum_reset(&r);
	window_sum_reset(&m);
	window_sum_reset(&x);
	for (int w = 0; w < 8; w++)
		window_sum_add(&r, t->reads[w], 70000);
	window_sum_add(&m, t->mirrors, 70000);
	window_sum_add(&x, t->mism, 70000);
	v = guard_check(&t->l, &r, &m, &x);
	sink += (uint64_t)v.state;
}

struct cmp {
	json_t *a, *b;
	struct jsoncmp_opts o;
	size_t want;
};

static void op_cmp(long i, void *arg)
{
	struct cmp *c = arg;
	char line[256];

	(void)i;
	if (jsoncmp(c->a, c->b, &c->o, line, sizeof(line)) != c->want) {
		fprintf(stderr, "bench_cutover: unexpected comparison result\n");
		exit(1);
	}
}

struct texts {
	const char *a, *b;
};

static void op_parse(long i, void *arg)
{
	struct texts *t = arg;
	json_t *a = json_loads(t->a, 0, NULL), *b = json_loads(t->b, 0, NULL);

	(void)i;
	sink += json_array_size(a) + json_array_size(b);
	json_decref(a);
	json_decref(b);
}

int main(int argc, char **argv)
{
	static const char *const ignore[] = {"updated_at"};
	long n = 200000;
	int rounds = 5, c;
	struct bucket_rng rng;
	struct window *w;
	struct tick tk;
	char *legacy, *same, *rev, *diff;
	struct cmp cm;
	struct texts tx;

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
				"usage: bench_cutover [-n CALLS_PER_ROUND (200000)] [-r ROUNDS (5)]\n");
			return c == 'h' ? 0 : 2;
		}
	}
	if (n < 50 || n > 100000000 || rounds < 1 || rounds > 100) {
		fprintf(stderr, "bench_cutover: -n 50..100000000, -r 1..100\n");
		return 2;
	}
	printf("op\tns_per_call\n");
	for (int i = 0; i < 4096; i++)
		snprintf(keys[i], sizeof(keys[i]), "%d", 10000 + i);
	printf("bucket\t%.1f\n", measure(op_bucket, NULL, n, rounds));
	bucket_rng_seed(&rng, 1);
	printf("draw\t%.1f\n", measure(op_draw, &rng, n, rounds));
	w = window_new(60000, 60, 1);
	printf("window_record\t%.1f\n", measure(op_window, w, n, rounds));
	window_free(w);

	guard_limits_default(&tk.l);
	for (int i = 0; i < 8; i++) {
		tk.reads[i] = window_new(60000, 60, 1);
		for (int t = 0; t < 60000; t += 7)
			window_record(tk.reads[i], 10000 + t, t % 1000 == 0, 1000 + t * 3);
	}
	tk.mirrors = window_new(60000, 60, 0);
	tk.mism = window_new(3600000, 60, 0);
	printf("guard_tick_8_workers\t%.1f\n", measure(op_tick, &tk, n / 200, rounds));
	for (int i = 0; i < 8; i++)
		window_free(tk.reads[i]);
	window_free(tk.mirrors);
	window_free(tk.mism);

	legacy = list_text(0, 0, "2024-05-01T00:00:00Z");
	same = list_text(0, 0, "2024-05-02T00:00:00Z");
	rev = list_text(1, 0, "2024-05-02T00:00:00Z");
	diff = list_text(1, 1, "2024-05-02T00:00:00Z");
	cm.a = parse(legacy);
	cm.o = (struct jsoncmp_opts){ignore, 1, 1, 8};
	cm.b = parse(same);
	cm.want = 0;
	printf("jsoncmp_50_same_order\t%.1f\n", measure(op_cmp, &cm, n / 50, rounds));
	json_decref(cm.b);
	cm.b = parse(rev);
	printf("jsoncmp_50_reversed\t%.1f\n", measure(op_cmp, &cm, n / 50, rounds));
	json_decref(cm.b);
	cm.b = parse(diff);
	cm.want = 1;
	printf("jsoncmp_50_one_diff\t%.1f\n", measure(op_cmp, &cm, n / 50, rounds));
	json_decref(cm.b);
	cm.b = parse(same);
	cm.want = 0;
	cm.o.unordered = 0;
	printf("jsoncmp_50_ordered\t%.1f\n", measure(op_cmp, &cm, n / 50, rounds));
	json_decref(cm.b);
	json_decref(cm.a);
	tx.a = legacy;
	tx.b = same;
	printf("parse_both_50 (%zu+%zu bytes)\t%.1f\n", strlen(legacy), strlen(same),
	       measure(op_parse, &tx, n / 50, rounds));
	free(legacy);
	free(same);
	free(rev);
	free(diff);
	return 0;
}
