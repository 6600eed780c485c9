/*
 * fuzz_config — libFuzzer target for the configuration loader: every input is
 * libconfig text handed to config_load_string (libconfig's parser, then our
 * pass 1 types and ranges and pass 2 cross references: routes, mirrors,
 * expressions, templates, table maps). Beyond "no crash, no leak, no
 * sanitizer report" it checks what the daemon relies on:
 *   - a refusal carries at least one error and every error names the file
 *     ("fuzz.conf..." — the "file:line: where: what" contract);
 *   - an accepted snapshot is whole: indexes in range, every route with a
 *     pattern, every mirror with a path and a status classification, limits
 *     and workers positive, listen addresses that split;
 *   - loading is deterministic (a second load gives the same answer and the
 *     same errors), and a reload to the same text changes no key that needs
 *     a restart;
 *   - route lookups on the snapshot do not crash.
 * Seeds: tests/fuzz/corpus/config (the files of conf/ and tests/unit/conf/).
 * Without libFuzzer, replay_main.c drives it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NAME "fuzz.conf"

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "fuzz_config: %s:%d: check failed: %s\n",     \
				__FILE__, __LINE__, #cond);                            \
			abort();                                                       \
		}                                                                      \
	} while (0)

static void no_warning(void *arg, const char *key)
{
	(void)arg;
	fprintf(stderr, "fuzz_config: reload to the same text changed %s\n", key);
	abort();
}

static void check_snapshot(const struct dw_config *c)
{
	static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE"};
	static const char *const paths[] = {"/", "/equipment", "/equipment/42", "/a/b/c", ""};
	char host[256];
	int port;
	struct dw_err err = {""};

	CHECK(c->refcnt == 1);
	CHECK(c->path && strcmp(c->path, NAME) == 0);
	CHECK(c->nlisten >= 1 && c->listen);
	for (size_t i = 0; i < c->nlisten; i++) {
		CHECK(c->listen[i]);
		CHECK(config_split_hostport(c->listen[i], host, sizeof(host), &port, &err) == 0);
		CHECK(port >= 0 && port <= 65535);
	}
	CHECK(c->workers >= 1);
	CHECK(c->limits.max_header_bytes > 0);
	CHECK(c->limits.header_timeout_ms > 0 && c->limits.body_timeout_ms > 0);
	CHECK(c->queue.path && c->queue.table);
	CHECK(c->queue.durability == QUEUE_DURABILITY_PROCESS ||
	      c->queue.durability == QUEUE_DURABILITY_FSYNC);
	CHECK(c->tenant.header && c->tenant.def);
	CHECK(c->nupstreams >= 1);
	CHECK(c->default_upstream >= 0 && (size_t)c->default_upstream < c->nupstreams);
	for (size_t i = 0; i < c->nupstreams; i++) {
		const struct dw_upstream *u = &c->upstreams[i];

		CHECK(u->name && u->url && u->host && u->host_header && u->base_path);
		CHECK(u->port > 0 && u->port <= 65535);
		CHECK(u->timeout_ms > 0 && u->connect_timeout_ms > 0);
		CHECK(config_upstream_index(c, u->name) == (int)i);
	}
	for (size_t i = 0; i < c->nroutes; i++) {
		const struct dw_route *r = &c->routes[i];

		CHECK(r->name && r->match && r->pattern);
		if (r->mirror) {
			CHECK(r->mirror->upstream >= 0 &&
			      (size_t)r->mirror->upstream < c->nupstreams);
			CHECK(r->mirror->path);
			for (int s = 100; s < 600; s++)
				CHECK(r->mirror->klass[s] <= MIRROR_PERMANENT);
		}
	}
	for (size_t i = 0; i < c->ntables; i++) {
		const struct dw_table_map *t = &c->tables[i];

		CHECK(t->name && config_table(c, t->name) == t);
		CHECK(t->source.table && t->target.table && t->source.key && t->target.key);
		for (size_t k = 0; k < t->ncolumns; k++)
			CHECK(t->column_names[k] && t->columns[k]);
		for (size_t k = 0; k < t->ncolumns; k++)
			(void)config_table_compares(t, t->column_names[k]);
	}
	for (size_t m = 0; m < sizeof(methods) / sizeof(methods[0]); m++)
		for (size_t p = 0; p < sizeof(paths) / sizeof(paths[0]); p++) {
			struct route_params rp;
			const struct dw_route *r;

			memset(&rp, 0, sizeof(rp));
			r = config_route_match(c, methods[m], strlen(methods[m]), paths[p],
					       strlen(paths[p]), &rp);
			CHECK(!r || (r >= c->routes && r < c->routes + c->nroutes));
			route_params_clear(&rp);
		}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dw_errlist e1 = {0}, e2 = {0};
	struct dw_config *c1, *c2;
	char *text;

	if (size > 65536)
		return 0; /* configs are small; keep each run fast */
	text = malloc(size + 1);
	if (!text)
		abort();
	memcpy(text, data, size);
	text[size] = '\0'; /* libconfig reads up to the first NUL */

	c1 = config_load_string(text, NAME, &e1);
	c2 = config_load_string(text, NAME, &e2);
	CHECK((c1 == NULL) == (c2 == NULL));
	CHECK(e1.n == e2.n);
	for (size_t i = 0; i < e1.n; i++) {
		CHECK(e1.msgs[i] && strcmp(e1.msgs[i], e2.msgs[i]) == 0);
		CHECK(strncmp(e1.msgs[i], NAME, strlen(NAME)) == 0);
	}
	if (!c1) {
		CHECK(e1.n >= 1);
	} else {
		CHECK(e1.n == 0);
		check_snapshot(c1);
		config_keep_nonreloadable(c2, c1, no_warning, NULL);
		config_diff_nonreloadable(c1, c2, no_warning, NULL);
		CHECK(config_ref(c1) == c1);
		config_unref(c1);
		config_unref(c1);
		config_unref(c2);
	}
	dw_errlist_free(&e1);
	dw_errlist_free(&e2);
	free(text);
	return 0;
}
