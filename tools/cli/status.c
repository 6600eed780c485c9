/*
 * status.c — `dualwrite status`: ask the running daemon's admin endpoint
 * (GET /status) and print its answer, as JSON or as a summary: the routes
 * and the upstreams as tables (weights, guards, what the guard windows
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

/* The routes as a table: what serves reads, configured vs effective weight,
 * and the guard of the route's new-system upstream. */
static void print_routes(json_t *routes)
{
	size_t i;
	json_t *r;

	printf("routes (%zu)\n", json_array_size(routes));
	printf("  %-22s %-10s %-12s %8s %9s  %-8s %s\n", "ROUTE", "MIRROR", "READ", "WEIGHT",
	       "EFFECTIVE", "GUARD", "SINCE / REASON");
	json_array_foreach(routes, i, r) {
		json_t *rd = json_object_get(r, "read"), *g = json_object_get(rd, "guard");
		char w[16], e[16], why[200] = "";

		pct(json_object_get(rd, "weight"), w, sizeof(w));
		pct(json_object_get(rd, "effective_weight"), e, sizeof(e));
		if (g && strcmp(sget(g, "state", "ok"), "ok") != 0)
			snprintf(why, sizeof(why), "%s %s", sget(g, "since", ""),
				 sget(g, "detail", sget(g, "reason", "")));
		printf("  %-22s %-10s %-12s %8s %9s  %-8s %s\n", sget(r, "name", "?"),
		       sget(r, "mirror", "-"), rd ? sget(rd, "upstream", "?") : "-", rd ? w : "-",
		       rd ? e : "-", rd ? sget(g, "state", "ok") : "-", why);
	}
}

/* The upstreams as a table: address, and for new systems the guard and
 * what its window measures now. */
static void print_upstreams(json_t *ups)
{
	const char *k;
	json_t *u;

	printf("upstreams (%zu)\n", json_object_size(ups));
	printf("  %-14s %-8s %7s %7s %9s %8s %8s %9s  %s\n", "UPSTREAM", "GUARD", "READS", "ERR%",
	       "P99 ms", "MIRRORS", "FAIL%", "MISMATCH", "URL");
	json_object_foreach(ups, k, u) {
		json_t *g = json_object_get(u, "guard"), *w = json_object_get(g, "window");
		char e[16], p[16], f[16];

		pct(json_object_get(w, "read_error_rate"), e, sizeof(e));
		pct(json_object_get(w, "read_p99_ms"), p, sizeof(p));
		pct(json_object_get(w, "mirror_failure_rate"), f, sizeof(f));
		if (!g) {
			printf("  %-14s %-8s %7s %7s %9s %8s %8s %9s  %s\n", k, "-", "", "", "", "",
			       "", "", sget(u, "url", ""));
			continue;
		}
		printf("  %-14s %-8s %7lld %7s %9s %8lld %8s %9lld  %s\n", k, sget(g, "state", "?"),
		       (long long)json_integer_value(json_object_get(w, "reads")), e, p,
		       (long long)json_integer_value(json_object_get(w, "mirrors")), f,
		       (long long)json_integer_value(
			   json_object_get(w, "shadow_mismatches_last_hour")),
		       sget(u, "url", ""));
		if (strcmp(sget(g, "state", "ok"), "ok") != 0)
			printf("  %-14s since %s: %s\n", "", sget(g, "since", "?"),
			       sget(g, "detail", sget(g, "reason", "")));
	}
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
