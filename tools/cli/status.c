/*
 * status.c — `dualwrite status`: ask the running daemon's admin endpoint
 * (GET /status) and print its answer, as JSON or as a summary: the routes
 * and the upstreams as aligned tables (authority, weights, guards, shadow
 * counts, each upstream's share of the queue, what the guard windows
 * measure), and whatever else the daemon returns walked generically (one
 * line per group) so it never lags behind new fields.
 */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "httpc.h"

static void status_usage(FILE *f)
{
	fprintf(f,
		"usage: dualwrite status -c FILE [--json]\n"
		"\n"
		"Ask the running dualwrited (admin.listen) for its status.\n"
		"\n"
		"  -c, --config FILE  the dualwrited configuration\n"
		"      --json         print the daemon's JSON as is (pretty)\n"
		"  -h, --help         this text\n");
}

static void print_scalar(json_t *v)
{
	if (json_is_string(v))
		printf("%s", json_string_value(v));
	else if (json_is_integer(v))
		printf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else if (json_is_real(v))
		printf("%.3g", json_real_value(v));
	else if (json_is_true(v))
		printf("true");
	else if (json_is_false(v))
		printf("false");
	else if (json_is_null(v))
		printf("-");
	else {
		char *s = json_dumps(v, JSON_COMPACT);
		printf("%s", s ? s : "?");
		free(s);
	}
}

/* "k=v k=v ..." for the members of an object, nested ones compact. */
static void print_members(json_t *o)
{
	const char *k;
	json_t *v;
	bool first = true;

	json_object_foreach(o, k, v) {
		printf("%s%s=", first ? "" : " ", k);
		print_scalar(v);
		first = false;
	}
}

static const char *sget(json_t *o, const char *k, const char *def)
{
	json_t *v = json_object_get(o, k);

	return json_is_string(v) ? json_string_value(v) : def;
}

static void pct(json_t *v, char *buf, size_t cap)
{
	if (json_is_number(v))
		snprintf(buf, cap, "%.2f", json_number_value(v));
	else
		snprintf(buf, cap, "-");
}

static void count(json_t *v, char *buf, size_t cap)
{
	if (json_is_integer(v))
		snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else
		snprintf(buf, cap, "-");
}

/*
 * A table printed with each column as wide as its widest cell, so it stays
 * aligned whatever the names: cells are copied in row by row (the header
 * first); align says per column 'l' or 'r'; the last column is not padded.
 * A note is a line of its own under the row before it (a guard's reason).
 */
#define TABLE_MAXCOLS 16
struct table {
	size_t ncols, nrows;
	const char *align;
	char **cells; /* nrows * ncols; a note: its text in column 0, NULL after */
	bool *note;
};

static void table_add(struct table *t, bool note, const char *const *cells)
{
	t->cells = dw_realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(*t->cells));
	t->note = dw_realloc(t->note, (t->nrows + 1) * sizeof(*t->note));
	for (size_t c = 0; c < t->ncols; c++)
		t->cells[t->nrows * t->ncols + c] =
		    (note && c) ? NULL : dw_strdup(cells[c] ? cells[c] : "");
	t->note[t->nrows++] = note;
}

static void table_print(struct table *t, const char *indent)
{
	size_t w[TABLE_MAXCOLS] = { 0 };

	for (size_t r = 0; r < t->nrows; r++)
		for (size_t c = 0; c < t->ncols && !t->note[r]; c++) {
			size_t n = strlen(t->cells[r * t->ncols + c]);
			if (n > w[c])
				w[c] = n;
		}
	for (size_t r = 0; r < t->nrows; r++) {
		char **row = &t->cells[r * t->ncols];

		if (t->note[r]) {
			printf("%s%*s%s\n", indent, (int)w[0] + 2, "", row[0]);
			continue;
		}
		printf("%s", indent);
		for (size_t c = 0; c < t->ncols; c++) {
			bool last = c + 1 == t->ncols;
			int pad = last && t->align[c] == 'l' ? 0 : (int)w[c];

			if (last && !row[c][0])
				break; /* no trailing blanks */
			printf("%s%*s", c ? "  " : "", t->align[c] == 'r' ? pad : -pad, row[c]);
		}
		printf("\n");
	}
	for (size_t i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	free(t->note);
}

/* The routes as a table: the write side (mirror upstream, and who answers
 * the writes: legacy or new, SPEC §7.5), then the read side: what serves
 * reads, configured vs effective weight, the guard of the route's
 * new-system upstream and the shadow comparison's counts (SPEC §7.3). */
static void print_routes(json_t *routes)
{
	static const char *const head[] = { "ROUTE",  "MIRROR",	  "AUTHORITY", "READ",
					    "WEIGHT", "EFFECTIVE", "GUARD",	"MATCH",
					    "MISMATCH", "ERROR", "SKIPPED",	"SINCE / REASON" };
	static const char *const shadow_results[] = { "match", "mismatch", "error", "skipped" };
	struct table t = { .ncols = 12, .align = "llllrrlrrrrl" };
	size_t i;
	json_t *r;

	printf("routes (%zu)\n", json_array_size(routes));
	table_add(&t, false, head);
	json_array_foreach(routes, i, r) {
		json_t *rd = json_object_get(r, "read"), *g = json_object_get(rd, "guard");
		json_t *sh = json_object_get(rd, "shadow");
		char w[16], e[16], why[200] = "", n[4][24];

		pct(json_object_get(rd, "weight"), w, sizeof(w));
		pct(json_object_get(rd, "effective_weight"), e, sizeof(e));
		for (size_t k = 0; k < 4; k++)
			count(json_object_get(sh, shadow_results[k]), n[k], sizeof(n[k]));
		if (g && strcmp(sget(g, "state", "ok"), "ok") != 0)
			snprintf(why, sizeof(why), "%s %s", sget(g, "since", ""),
				 sget(g, "detail", sget(g, "reason", "")));
		const char *row[] = { sget(r, "name", "?"),
				      sget(r, "mirror", "-"),
				      sget(r, "authority", "-"),
				      rd ? sget(rd, "upstream", "?") : "-",
				      rd ? w : "-",
				      rd ? e : "-",
				      rd ? sget(g, "state", "ok") : "-",
				      n[0], n[1], n[2], n[3],
				      why };
		table_add(&t, false, row);
	}
	table_print(&t, "  ");
}

/* The upstreams as a table: for new systems the guard and what its window
 * measures now; for each its share of the queue (records waiting for it,
 * dead letters, the oldest waiting one's age: SPEC §7.4); the address. */
static void print_upstreams(json_t *ups)
{
	static const char *const head[] = { "UPSTREAM", "GUARD", "READS",    "ERR%",
					    "P99 ms",	"MIRRORS", "FAIL%", "MISMATCH",
					    "QUEUE",	"DEAD",	   "OLDEST", "URL" };
	struct table t = { .ncols = 12, .align = "llrrrrrrrrrl" };
	const char *k;
	json_t *u;

	printf("upstreams (%zu)\n", json_object_size(ups));
	table_add(&t, false, head);
	json_object_foreach(ups, k, u) {
		json_t *g = json_object_get(u, "guard"), *w = json_object_get(g, "window");
		json_t *q = json_object_get(u, "queue");
		char e[16], p[16], f[16], depth[24], dead[24], age[32], reads[24], mirrors[24],
		    mism[24];

		count(json_object_get(q, "depth"), depth, sizeof(depth));
		count(json_object_get(q, "dead"), dead, sizeof(dead));
		if (json_integer_value(json_object_get(q, "depth")) > 0)
			snprintf(age, sizeof(age), "%" JSON_INTEGER_FORMAT "s",
				 json_integer_value(json_object_get(q, "oldest_age_s")));
		else
			snprintf(age, sizeof(age), "-");
		pct(json_object_get(w, "read_error_rate"), e, sizeof(e));
		pct(json_object_get(w, "read_p99_ms"), p, sizeof(p));
		pct(json_object_get(w, "mirror_failure_rate"), f, sizeof(f));
		count(json_object_get(w, "reads"), reads, sizeof(reads));
		count(json_object_get(w, "mirrors"), mirrors, sizeof(mirrors));
		count(json_object_get(w, "shadow_mismatches_last_hour"), mism, sizeof(mism));
		const char *row[] = { k,
				      g ? sget(g, "state", "?") : "-",
				      g ? reads : "",
				      g ? e : "",
				      g ? p : "",
				      g ? mirrors : "",
				      g ? f : "",
				      g ? mism : "",
				      depth,
				      dead,
				      age,
				      sget(u, "url", "") };
		table_add(&t, false, row);
		if (g && strcmp(sget(g, "state", "ok"), "ok") != 0) {
			char note[400];
			const char *nrow[1] = { note };

			snprintf(note, sizeof(note), "since %s: %s", sget(g, "since", "?"),
				 sget(g, "detail", sget(g, "reason", "")));
			table_add(&t, true, nrow);
		}
	}
	table_print(&t, "  ");
}

static void print_human(json_t *root)
{
	const char *k;
	json_t *v;

	json_object_foreach(root, k, v) {
		if (!strcmp(k, "routes") && json_is_array(v)) {
			print_routes(v);
			continue;
		}
		if (!strcmp(k, "upstreams") && json_is_object(v)) {
			print_upstreams(v);
			continue;
		}
		if (json_is_object(v)) {
			printf("%-12s ", k);
			print_members(v);
			printf("\n");
		} else if (json_is_array(v)) {
			size_t i;
			json_t *e;
			printf("%s (%zu)\n", k, json_array_size(v));
			json_array_foreach(v, i, e) {
				printf("  ");
				if (json_is_object(e)) {
					json_t *name = json_object_get(e, "name");
					if (json_is_string(name))
						printf("%-20s ", json_string_value(name));
					const char *ek;
					json_t *ev;
					bool first = true;
					json_object_foreach(e, ek, ev) {
						if (!strcmp(ek, "name"))
							continue;
						printf("%s%s=", first ? "" : " ", ek);
						print_scalar(ev);
						first = false;
					}
				} else {
					print_scalar(e);
				}
				printf("\n");
			}
		} else {
			printf("%-12s ", k);
			print_scalar(v);
			printf("\n");
		}
	}
}

int cmd_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *cfgpath = NULL;
	bool as_json = false;
	struct dw_config *cfg = NULL;
	json_t *root = NULL;
	int c, rc = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfgpath = optarg;
			break;
		case 'j':
			as_json = true;
			break;
		case 'h':
			status_usage(stdout);
			return 0;
		default:
			fprintf(stderr, "Run 'dualwrite status --help' for usage.\n");
			return 2;
		}
	}
	cfg = cli_args_config("status", argc, argv, optind, cfgpath);
	if (!cfg)
		return 2;
	root = cli_admin_status(cfg, "status");
	if (!root) {
		rc = cfg->admin_listen ? 1 : 2;
		goto out;
	}
	if (as_json) {
		char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("%s\n", s ? s : "{}");
		free(s);
	} else {
		print_human(root);
	}
	rc = 0;
out:
	json_decref(root);
	config_unref(cfg);
	return rc;
}
