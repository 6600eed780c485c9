/*
 * cutover — `dualwrite cutover -c FILE check [--json]`: the gates of a write
 * cut-over (SPEC §7.5) as a checklist a person reads at a glance.
 *
 * For every new system (an upstream some route mirrors to): its queue holds
 * no record (queued or dead; in the file spool, and in the PostgreSQL fleet
 * queue when queue.postgres is set), no guard of it is tripped (the guards'
 * latch file, cutover.h), and each of its read routes has stood at weight
 * 100 for cutover.reads_at_100_h (the daemon records every load's weights,
 * cutstate.h). Then: no dead letter at all (either direction), no
 * indeterminate write left open, and the last `dualwrite verify` of each
 * configured table found it equal within cutover.verified_within_h. Exit 0
 * only when every check holds, 1 when one does not, 2 on usage errors.
 *
 * It reads; it changes nothing. It does not ask the daemon: what it checks
 * is on disk beside the queue (and in PostgreSQL), as for `dualwrite queue`.
 */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cutover.h"
#include "cutstate.h"
#include "pgq.h"
#include "spool.h"

struct item {
	char *check;  /* "queue gear_ops", "verify equipment", ... */
	bool ok;
	char *detail;
};

struct list {
	struct item *v;
	size_t n, cap;
};

static void add(struct list *l, bool ok, const char *check, const char *fmt, ...)
	DW_PRINTF(4, 5);
static void add(struct list *l, bool ok, const char *check, const char *fmt, ...)
{
	va_list ap;
	char buf[512];

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 16;
		l->v = dw_realloc(l->v, l->cap * sizeof(*l->v));
	}
	l->v[l->n++] = (struct item){dw_strdup(check), ok, dw_strdup(buf)};
}

static void usage(FILE *f)
{
	fprintf(f, "usage: dualwrite cutover -c FILE check [--json]\n"
		   "\n"
		   "  The gates of a write cut-over (authority = \"new\") as a checklist: per new\n"
		   "  system an empty queue and clear guards, read routes at weight 100 for\n"
		   "  cutover.reads_at_100_h, no dead letters, no indeterminate writes, and the\n"
		   "  last `dualwrite verify` of each table equal within cutover.verified_within_h.\n"
		   "  Exit 0 when every check holds, 1 when one does not, 2 on usage errors.\n"
		   "\n"
		   "  -c, --config FILE  configuration file\n"
		   "      --json         one JSON object: {\"ok\": ..., \"checks\": [...]}\n"
		   "  -h, --help         this text\n");
}

static bool is_new_system(const struct dw_config *cfg, int ui)
{
	for (size_t i = 0; i < cfg->nroutes; i++)
		if ((cfg->routes[i].mirror && cfg->routes[i].mirror->upstream == ui) ||
		    (cfg->routes[i].read && cfg->routes[i].read->upstream == ui))
			return true;
	return false;
}

static void ago(char *buf, size_t n, int64_t us)
{
	int64_t s = us / 1000000;

	if (s < 120)
		snprintf(buf, n, "%" PRId64 " s ago", s);
	else if (s < 7200)
		snprintf(buf, n, "%" PRId64 " min ago", s / 60);
	else
		snprintf(buf, n, "%.1f h ago", (double)s / 3600);
}

static void check_upstream(const struct dw_config *cfg, struct spool *sp, struct pgq *pq,
			   int ui, struct list *l)
{
	const char *up = cfg->upstreams[ui].name;
	char name[300], why[256] = "";
	uint64_t queued = 0, dead = 0;
	struct dw_err err = {{0}};
	int t;

	snprintf(name, sizeof(name), "queue %s", up);
	if (sp && spool_upstream_waiting(sp, up, &queued, &dead, &err) < 0) {
		add(l, false, name, "cannot read the queue: %s", err.msg);
	} else {
		struct pgq_stats ps = {0};
		bool pg_ok = true;

		if (pq && pgq_stats(pq, &up, 1, &ps, &err) < 0) {
			add(l, false, name, "cannot read the PostgreSQL queue: %s", err.msg);
			pg_ok = false;
		}
		if (pg_ok) {
			queued += (uint64_t)ps.queued;
			dead += (uint64_t)ps.dead;
			add(l, queued == 0 && dead == 0, name, "%" PRIu64 " queued, %" PRIu64 " dead%s",
			    queued, dead, queued || dead ? " (dualwrite replay; requeue or purge dead letters)" : "");
		}
	}

	snprintf(name, sizeof(name), "guards %s", up);
	t = cutover_guards_latch_tripped(cfg->queue.path, up, why, sizeof(why));
	if (t < 0)
		add(l, false, name, "latch file unreadable: %s", why);
	else
		add(l, t == 0, name, t ? "tripped: %s (dualwrite guard reset %s)" : "clear%s%s",
		    t ? why : "", t ? up : "");

	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct dw_route *r = &cfg->routes[i];
		int64_t since = 0, need = (int64_t)cfg->cutover.reads_at_100_h * 3600 * 1000000;
		char when[64];

		if (!r->read || r->read->upstream != ui)
			continue;
		snprintf(name, sizeof(name), "reads %s", r->name);
		if (r->read->weight != 10000) {
			add(l, false, name, "configured weight %u.%02u, not 100", r->read->weight / 100,
			    r->read->weight % 100);
			continue;
		}
		t = reads100_since(cfg->queue.path, r->name, &since, &err);
		if (t < 0) {
			add(l, false, name, "%s", err.msg);
		} else if (t == 0) {
			add(l, need == 0, name,
			    "at 100 in this file, but no running daemon has loaded it at 100 yet");
		} else {
			ago(when, sizeof(when), dw_wall_us() - since);
			add(l, dw_wall_us() - since >= need, name, "at 100 since %s (needed: %d h)", when,
			    cfg->cutover.reads_at_100_h);
		}
	}
}

static void check_tables(const struct dw_config *cfg, struct list *l)
{
	int64_t within = (int64_t)cfg->cutover.verified_within_h * 3600 * 1000000;

	for (size_t i = 0; i < cfg->ntables; i++) {
		const char *t = cfg->tables[i].name;
		struct verify_mark mk = {0};
		struct dw_err err = {{0}};
		char name[300], when[64];
		int r = verify_mark_last(cfg->queue.path, t, &mk, &err);

		snprintf(name, sizeof(name), "verify %s", t);
		if (r < 0) {
			add(l, false, name, "%s", err.msg);
			continue;
		}
		if (r == 0) {
			add(l, false, name, "never verified here (dualwrite verify --table %s)", t);
			continue;
		}
		ago(when, sizeof(when), dw_wall_us() - mk.at_us);
		if (!mk.equal)
			add(l, false, name, "last verify %s found %" PRIu64 " differences", when,
			    mk.differences);
		else
			add(l, dw_wall_us() - mk.at_us <= within, name,
			    "equal, %s (needed: within %d h)", when, cfg->cutover.verified_within_h);
	}
}

static int run_check(const struct dw_config *cfg, bool json)
{
	struct spool *sp = NULL;
	struct pgq *pq = NULL;
	struct dw_err err = {{0}};
	struct list l = {0};
	struct stat st;
	struct indet_entry *ind = NULL;
	size_t nind = 0, fails = 0;
	int rc;

	if (stat(cfg->queue.path, &st) == 0 && S_ISDIR(st.st_mode)) {
		struct spool_opts so = {.readonly = true};
		if (!(sp = spool_open(cfg->queue.path, &so, &err)))
			add(&l, false, "queue", "%s: %s", cfg->queue.path, err.msg);
	}
	if (cfg->queue.postgres && !(pq = pgq_open(cfg->queue.postgres, cfg->queue.table, &err)))
		add(&l, false, "queue postgresql", "%s", err.msg);

	for (size_t i = 0; i < cfg->nupstreams; i++)
		if ((int)i != cfg->default_upstream && is_new_system(cfg, (int)i))
			check_upstream(cfg, sp, pq, (int)i, &l);

	if (sp) {
		struct spool_stats ss;
		spool_stats(sp, &ss);
		add(&l, ss.dead == 0, "dead letters", "%" PRIu64 " in the queue (every direction)%s",
		    ss.dead, ss.dead ? " (dualwrite queue list --dead)" : "");
	}
	if (indet_load(cfg->queue.path, NULL, &ind, &nind, &err) < 0)
		add(&l, false, "indeterminate writes", "%s", err.msg);
	else
		add(&l, nind == 0, "indeterminate writes",
		    "%zu open%s", nind, nind ? " (dualwrite verify reports their keys)" : "");
	indet_entries_free(ind, nind);
	check_tables(cfg, &l);

	for (size_t i = 0; i < l.n; i++)
		fails += !l.v[i].ok;
	if (json) {
		json_t *o = json_object(), *a = json_array();
		for (size_t i = 0; i < l.n; i++)
			json_array_append_new(a, json_pack("{s:s, s:b, s:s}", "check", l.v[i].check, "ok",
							   l.v[i].ok, "detail", l.v[i].detail));
		json_object_set_new(o, "ok", json_boolean(fails == 0));
		json_object_set_new(o, "checks", a);
		char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		printf("%s\n", s);
		free(s);
		json_decref(o);
	} else {
		printf("cutover check (%s)\n", cfg->path);
		for (size_t i = 0; i < l.n; i++)
			printf("  %-4s  %-28s %s\n", l.v[i].ok ? "ok" : "FAIL", l.v[i].check,
			       l.v[i].detail);
		if (fails)
			printf("result: not ready (%zu of %zu checks fail)\n", fails, l.n);
		else
			printf("result: ready (%zu checks hold)\n", l.n);
	}
	rc = fails ? 1 : 0;
	for (size_t i = 0; i < l.n; i++) {
		free(l.v[i].check);
		free(l.v[i].detail);
	}
	free(l.v);
	spool_close(sp);
	pgq_close(pq);
	return rc;
}

int cmd_cutover(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *cfgpath = NULL, *action;
	bool json = false;
	struct dw_config *cfg;
	int opt, rc;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			cfgpath = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "dualwrite cutover: an action is required (check)\n");
		usage(stderr);
		return 2;
	}
	action = argv[optind];
	if (strcmp(action, "check") != 0) {
		fprintf(stderr, "dualwrite cutover: unknown action '%s' (check)\n", action);
		return 2;
	}
	cfg = cli_args_config("cutover", argc, argv, optind + 1, cfgpath);
	if (!cfg)
		return 2;
	rc = run_check(cfg, json);
	config_unref(cfg);
	return rc;
}
