/*
 * test_guard.c — the guard table (guard.h): the state machine (ok ->
 * tripped / paused on each trigger, a trip replacing a pause, the latch
 * holding while the windows recover, clear forgetting the windows), the
 * reload's gate and clears, the binding that holds read routes of a tripped
 * upstream, a changed window reshaping the windows, and the latch file: its
 * round trip through text and disk, removal when empty, and every kind of
 * damage reported with the file's path.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "guard.h"
#include "readstate.h"

static struct dw_config *load(const char *weight, const char *guards)
{
	char text[2048];
	struct dw_errlist errs = { 0 };
	struct dw_config *c;

	snprintf(text, sizeof(text),
		 "listen = \"127.0.0.1:8080\";\n"
		 "upstreams = { legacy = { url = \"http://127.0.0.1:8000\"; };\n"
		 "              gear = { url = \"http://127.0.0.1:8002\"; };\n"
		 "              iot = { url = \"http://127.0.0.1:8003\"; }; };\n"
		 "default_upstream = \"legacy\";\n"
		 "%s\n"
		 "routes = ( { name = \"eq\"; match = \"GET /user/{id}/equipment\";\n"
		 "             read = { upstream = \"gear\"; weight = %s; }; },\n"
		 "           { name = \"dev\"; match = \"GET /devices/{id}\";\n"
		 "             read = { upstream = \"iot\"; weight = 20; }; } );\n",
		 guards ? guards : "", weight);
	c = config_load_string(text, "t.conf", &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.msgs[i]);
	assert_non_null(c);
	dw_errlist_free(&errs);
	return c;
}

#define SMALL "guards = { window_s = 10; min_requests = 10; read_p99_ms = 100; };"

static size_t nlatched;
static void on_latched(void *arg, struct guard_up *g, const struct guard_verdict *v)
{
	(void)arg;
	(void)g;
	(void)v;
	nlatched++;
}

static void test_config_defaults_and_errors(void **state)
{
	(void)state;
	struct dw_config *c = load("10", NULL);
	struct dw_errlist errs = { 0 };

	assert_int_equal(c->guards.window_s, 60);
	assert_int_equal(c->guards.min_requests, 50);
	assert_true(c->guards.read_error_rate == 1.0);
	assert_true(c->guards.read_p99_ms == 500);
	assert_true(c->guards.mirror_failure_rate == 5.0);
	assert_true(c->guards.shadow_mismatches_per_hour == 5);
	config_unref(c);
	c = load("10", "guards = { window_s = 5; read_p99_ms = -1; mirror_failure_rate = 2.5; };");
	assert_int_equal(c->guards.window_s, 5);
	assert_true(c->guards.read_p99_ms < 0); /* off */
	assert_true(c->guards.mirror_failure_rate == 2.5);
	config_unref(c);
	c = config_load_string("listen = \"127.0.0.1:1\";\n"
			       "upstreams = { legacy = { url = \"http://127.0.0.1:8000\"; }; };\n"
			       "default_upstream = \"legacy\";\n"
			       "guards = { window_s = 0; read_error_rate = 101; bogus = 1;\n"
			       "  min_requests = \"x\"; };\n",
			       "g.conf", &errs);
	assert_null(c);
	assert_int_equal(errs.n, 4);
	assert_non_null(strstr(errs.msgs[0], "g.conf:4: guards.bogus"));
	dw_errlist_free(&errs);
}

static void test_error_rate_trips_and_latches(void **state)
{
	(void)state;
	struct dw_config *c = load("30", SMALL);
	struct guard_table *t = guard_table_new(2);
	struct guard_up *g;

	guard_table_bind(t, c);
	g = c->upstreams[config_upstream_index(c, "gear")].guard;
	assert_non_null(g);
	assert_ptr_equal(g, guard_find(t, "gear"));
	/* 9 failures: below min_requests, no decision */
	for (int i = 0; i < 9; i++)
		guard_note_read(g, (unsigned)i, 1000, true, 1000);
	nlatched = 0;
	assert_int_equal(guard_table_tick(t, 1500, 111, on_latched, NULL), 0);
	assert_int_equal(guard_up_state(g), GUARD_OK);
	/* the tenth on another worker's slot: 10 of 10 failed */
	guard_note_read(g, 1, 1600, true, 1000);
	assert_int_equal(guard_table_tick(t, 2000, 222, on_latched, NULL), 1);
	assert_int_equal(nlatched, 1);
	assert_int_equal(guard_up_state(g), GUARD_TRIPPED);
	assert_string_equal(g->latch.reason, "read_error_rate");
	assert_true(g->latch.measured == 100.0 && g->latch.limit == 1.0);
	assert_int_equal(g->latch.since_ms, 222);
	assert_non_null(strstr(g->latch.detail, "read_error_rate 100.00 > 1.00"));
	assert_true(guard_tripped(t, "gear") && guard_latched(t, "gear"));
	assert_false(guard_tripped(t, "iot"));
	assert_false(guard_tripped(t, "nosuch"));
	/* the windows recover (60 s later, all expired) : the latch holds */
	for (int i = 0; i < 20; i++)
		guard_note_read(g, 0, 70000, false, 1000);
	assert_int_equal(guard_table_tick(t, 70000, 333, on_latched, NULL), 0);
	assert_int_equal(guard_up_state(g), GUARD_TRIPPED);
	assert_int_equal(g->latch.since_ms, 222);
	/* the other upstream was never touched */
	assert_int_equal(guard_up_state(guard_find(t, "iot")), GUARD_OK);
	guard_table_free(t);
	config_unref(c);
}

static void test_p99_and_mirrors_and_pause(void **state)
{
	(void)state;
	struct dw_config *c = load("30", SMALL);
	struct guard_table *t = guard_table_new(1);
	struct guard_up *g, *i;

	guard_table_bind(t, c);
	g = guard_find(t, "gear");
	i = guard_find(t, "iot");
	for (int k = 0; k < 10; k++)
		guard_note_read(g, 0, 1000, false, 200000); /* 200 ms > 100 */
	for (int k = 0; k < 10; k++)
		guard_note_mirror(i, 0, 1000, k < 1); /* 10 % > 5 % */
	assert_int_equal(guard_table_tick(t, 1200, 5, NULL, NULL), 2);
	assert_string_equal(g->latch.reason, "read_p99_ms");
	assert_true(g->latch.measured >= 200);
	assert_string_equal(i->latch.reason, "mirror_failure_rate");
	guard_table_free(t);
	config_unref(c);

	/* six shadow mismatches in the hour pause; a later trip replaces the pause */
	c = load("30", SMALL);
	t = guard_table_new(1);
	guard_table_bind(t, c);
	g = guard_find(t, "gear");
	for (int k = 0; k < 5; k++)
		guard_note_mismatch(g, 1000 + k);
	assert_int_equal(guard_table_tick(t, 2000, 7, NULL, NULL), 0); /* 5 is not > 5 */
	guard_note_mismatch(g, 1500);
	assert_int_equal(guard_table_tick(t, 2000, 8, NULL, NULL), 1);
	assert_int_equal(guard_up_state(g), GUARD_PAUSED);
	assert_string_equal(g->latch.reason, "shadow_mismatches_per_hour");
	assert_int_equal(guard_table_tick(t, 2500, 9, NULL, NULL), 0); /* already paused */
	for (int k = 0; k < 10; k++)
		guard_note_read(g, 0, 2600, true, 100);
	assert_int_equal(guard_table_tick(t, 3000, 10, NULL, NULL), 1);
	assert_int_equal(guard_up_state(g), GUARD_TRIPPED);
	assert_string_equal(g->latch.reason, "read_error_rate");
	guard_table_free(t);
	config_unref(c);
}

static void test_clear_forgets_the_windows(void **state)
{
	(void)state;
	struct dw_config *c = load("30", SMALL);
	struct guard_table *t = guard_table_new(2);
	struct guard_up *g;

	guard_table_bind(t, c);
	g = guard_find(t, "gear");
	for (int k = 0; k < 20; k++)
		guard_note_read(g, (unsigned)k, 1000, true, 100);
	assert_int_equal(guard_table_tick(t, 1100, 1, NULL, NULL), 1);
	guard_clear(g);
	assert_int_equal(guard_up_state(g), GUARD_OK);
	assert_string_equal(g->latch.reason, "");
	/* what tripped it does not trip it again */
	assert_int_equal(guard_table_tick(t, 1200, 2, NULL, NULL), 0);
	assert_int_equal(guard_up_state(g), GUARD_OK);
	guard_table_free(t);
	config_unref(c);
}

static void test_bind_holds_and_reshapes(void **state)
{
	(void)state;
	struct dw_config *c = load("30", SMALL), *c2;
	struct guard_table *t = guard_table_new(1);
	struct read_table *rt = readstate_new(NULL);
	struct guard_up *g;

	guard_table_bind(t, c);
	readstate_bind(rt, c);
	assert_int_equal(readstate_effective(c->routes[0].read->state), 3000);
	g = guard_find(t, "gear");
	for (int k = 0; k < 10; k++)
		guard_note_read(g, 0, 1000, true, 100);
	assert_int_equal(guard_table_tick(t, 1100, 1, NULL, NULL), 1);
	/* a reload with another window: same entry, latch kept, new windows;
	 * the read table holds the tripped upstream's route at bind */
	c2 = load("30", "guards = { window_s = 30; min_requests = 10; };");
	guard_table_bind(t, c2);
	assert_ptr_equal(guard_find(t, "gear"), g);
	assert_ptr_equal(c2->upstreams[config_upstream_index(c2, "gear")].guard, g);
	assert_int_equal(guard_up_state(g), GUARD_TRIPPED);
	readstate_bind(rt, c2);
	assert_true(readstate_held(c2->routes[0].read->state));
	assert_int_equal(readstate_effective(c2->routes[0].read->state), 0);
	assert_int_equal(readstate_effective(c2->routes[1].read->state), 2000); /* iot: ok */
	/* cleared: the next bind releases it */
	guard_clear(g);
	guard_table_bind(t, c2);
	readstate_bind(rt, c2);
	assert_int_equal(readstate_effective(c2->routes[0].read->state), 3000);
	/* the new windows are in use: 10 failures trip again */
	for (int k = 0; k < 10; k++)
		guard_note_read(g, 0, 5000, true, 100);
	assert_int_equal(guard_table_tick(t, 5100, 2, NULL, NULL), 1);
	readstate_free(rt);
	guard_table_free(t);
	config_unref(c);
	config_unref(c2);
}

static void test_reload_gate_and_clears(void **state)
{
	(void)state;
	struct dw_config *c10 = load("10", SMALL), *c30 = load("30", SMALL), *c5 = load("5", SMALL);
	struct dw_config *c10b = load("10", SMALL);
	struct guard_table *t = guard_table_new(1);
	struct guard_latch l = { .state = GUARD_PAUSED, .since_ms = 1 };
	struct dw_err err = { "" };

	guard_table_bind(t, c10);
	/* ok: anything goes */
	assert_int_equal(guard_reload_check(t, c10, c30, &err), 0);
	/* paused: raising is refused with the route, weights and upstream */
	snprintf(l.reason, sizeof(l.reason), "shadow_mismatches_per_hour");
	snprintf(l.detail, sizeof(l.detail), "paused: shadow_mismatches_per_hour 6.00 > 5.00");
	guard_latch_set(guard_find(t, "gear"), &l);
	assert_int_equal(guard_reload_check(t, c10, c30, &err), -1);
	assert_non_null(strstr(err.msg, "route \"eq\": read weight 10.00 -> 30.00"));
	assert_non_null(strstr(err.msg, "\"gear\", which is paused"));
	assert_int_equal(guard_reload_check(t, c10, c5, &err), 0);  /* lowering */
	assert_int_equal(guard_reload_check(t, c10, c10b, &err), 0); /* same */
	guard_table_free(t);
	config_unref(c10);
	config_unref(c30);
	config_unref(c5);
	config_unref(c10b);
}

static size_t ncleared;
static void count_cleared(void *arg, struct guard_up *g, const char *route)
{
	(void)arg;
	assert_string_equal(g->name, "gear");
	assert_string_equal(route, "eq");
	ncleared++;
}

static void test_reload_clears_a_changed_tripped_route(void **state)
{
	(void)state;
	struct dw_config *c10 = load("10", SMALL), *c30 = load("30", SMALL);
	struct dw_config *c10b = load("10", SMALL);
	struct guard_table *t = guard_table_new(1);
	struct guard_latch l = { .state = GUARD_TRIPPED, .since_ms = 1 };

	guard_table_bind(t, c10);
	guard_latch_set(guard_find(t, "gear"), &l);
	ncleared = 0;
	guard_reload_clears(t, c10, c10b, count_cleared, NULL);
	assert_int_equal(ncleared, 0);
	guard_reload_clears(t, c10, c30, count_cleared, NULL);
	assert_int_equal(ncleared, 1);
	/* a pause is not cleared by a reload */
	l.state = GUARD_PAUSED;
	guard_latch_set(guard_find(t, "gear"), &l);
	ncleared = 0;
	guard_reload_clears(t, c10, c30, count_cleared, NULL);
	assert_int_equal(ncleared, 0);
	guard_table_free(t);
	config_unref(c10);
	config_unref(c30);
	config_unref(c10b);
}

static void test_file_round_trip(void **state)
{
	(void)state;
	struct guard_file f = { 0 }, g = { 0 };
	struct guard_latch l = { .state = GUARD_TRIPPED,
				 .measured = 2.4,
				 .limit = 1,
				 .sample = 312,
				 .window_ms = 60000,
				 .since_ms = 1764718000123 };
	struct guard_latch ok = { .state = GUARD_OK };
	struct dw_err err = { "" };
	char *text;
	const struct guard_latch *r;

	snprintf(l.reason, sizeof(l.reason), "read_error_rate");
	snprintf(l.detail, sizeof(l.detail), "tripped: read_error_rate 2.40 > 1.00");
	guard_file_put(&f, "gear_ops", &l);
	l.state = GUARD_PAUSED;
	snprintf(l.reason, sizeof(l.reason), "shadow_mismatches_per_hour");
	guard_file_put(&f, "iot-v2", &l);
	text = guard_file_format(&f);
	assert_int_equal(guard_file_parse(text, strlen(text), &g, &err), 0);
	free(text);
	assert_int_equal(g.n, 2);
	r = guard_file_find(&g, "gear_ops");
	assert_non_null(r);
	assert_int_equal(r->state, GUARD_TRIPPED);
	assert_string_equal(r->reason, "read_error_rate");
	assert_true(r->measured == 2.4 && r->limit == 1 && r->sample == 312);
	assert_int_equal(r->window_ms, 60000);
	assert_int_equal(r->since_ms, 1764718000123);
	assert_string_equal(r->detail, "tripped: read_error_rate 2.40 > 1.00");
	assert_int_equal(guard_file_find(&g, "iot-v2")->state, GUARD_PAUSED);
	/* put ok removes */
	guard_file_put(&g, "gear_ops", &ok);
	assert_null(guard_file_find(&g, "gear_ops"));
	assert_int_equal(g.n, 1);
	guard_file_free(&g);
	guard_file_free(&f);
}

static void test_file_damage(void **state)
{
	(void)state;
	static const struct {
		const char *text, *why;
	} bad[] = {
		{ "{not json", "not JSON" },
		{ "[]", "expected a JSON object" },
		{ "{\"version\": 2, \"upstreams\": {}}", "version: expected 1" },
		{ "{\"version\": 1}", "upstreams: expected an object" },
		{ "{\"version\": 1, \"upstreams\": {\"g\": 3}}", "upstreams.g: expected an object" },
		{ "{\"version\": 1, \"upstreams\": {\"g\": {\"state\": \"ok\", \"reason\": \"\", "
		  "\"since_ms\": 1}}}",
		  "upstreams.g.state" },
		{ "{\"version\": 1, \"upstreams\": {\"g\": {\"state\": \"tripped\", \"since_ms\": 1}}}",
		  "upstreams.g.reason" },
		{ "{\"version\": 1, \"upstreams\": {\"g\": {\"state\": \"tripped\", \"reason\": \"r\"}}}",
		  "upstreams.g.since_ms" },
		{ "{\"version\": 1, \"upstreams\": {\"a/b\": {}}}", "not an upstream name" },
		{ "{\"version\": 1, \"version\": 1, \"upstreams\": {}}", "not JSON" },
	};
	struct guard_file f = { 0 };
	struct dw_err err = { "" };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err.msg[0] = '\0';
		assert_int_equal(guard_file_parse(bad[i].text, strlen(bad[i].text), &f, &err), -1);
		if (!strstr(err.msg, bad[i].why))
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.msg, bad[i].why);
		assert_int_equal(f.n, 0);
	}
}

static void test_file_on_disk(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_guard.XXXXXX", path[256];
	struct guard_file f = { 0 }, g = { 0 };
	struct guard_latch l = { .state = GUARD_TRIPPED, .since_ms = 5 };
	struct dw_err err = { "" };
	struct stat st;
	FILE *fp;
	int lk;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/%s", dir, GUARD_FILE_NAME);
	/* none: nothing latched */
	assert_int_equal(guard_file_read(dir, &g, &err), 0);
	assert_int_equal(g.n, 0);
	snprintf(l.reason, sizeof(l.reason), "read_p99_ms");
	guard_file_put(&f, "gear", &l);
	lk = guard_file_lock(dir, &err);
	assert_true(lk >= 0);
	assert_int_equal(guard_file_write(dir, &f, &err), 0);
	guard_file_unlock(lk);
	assert_int_equal(guard_file_read(dir, &g, &err), 1);
	assert_int_equal(g.n, 1);
	assert_string_equal(guard_file_find(&g, "gear")->reason, "read_p99_ms");
	guard_file_free(&g);
	/* empty removes the file */
	guard_file_free(&f);
	assert_int_equal(guard_file_write(dir, &f, &err), 0);
	assert_int_equal(stat(path, &st), -1);
	/* damage is an error naming the file */
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("{\"version\": 1, \"upstreams\": ", fp);
	fclose(fp);
	assert_int_equal(guard_file_read(dir, &g, &err), -1);
	assert_non_null(strstr(err.msg, path));
	assert_non_null(strstr(err.msg, "not JSON"));
	unlink(path);
	snprintf(path, sizeof(path), "%s/%s", dir, GUARD_LOCK_NAME);
	unlink(path);
	assert_int_equal(rmdir(dir), 0);
}

static void test_export(void **state)
{
	(void)state;
	struct dw_config *c = load("30", SMALL);
	struct guard_table *t = guard_table_new(1);
	struct guard_latch l = { .state = GUARD_PAUSED, .since_ms = 9 };
	struct guard_file f;

	guard_table_bind(t, c);
	guard_table_export(t, &f);
	assert_int_equal(f.n, 0);
	snprintf(l.reason, sizeof(l.reason), "shadow_mismatches_per_hour");
	guard_latch_set(guard_find(t, "iot"), &l);
	guard_table_export(t, &f);
	assert_int_equal(f.n, 1);
	assert_string_equal(f.v[0].name, "iot");
	guard_file_free(&f);
	guard_table_free(t);
	config_unref(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_defaults_and_errors),
		cmocka_unit_test(test_error_rate_trips_and_latches),
		cmocka_unit_test(test_p99_and_mirrors_and_pause),
		cmocka_unit_test(test_clear_forgets_the_windows),
		cmocka_unit_test(test_bind_holds_and_reshapes),
		cmocka_unit_test(test_reload_gate_and_clears),
		cmocka_unit_test(test_reload_clears_a_changed_tripped_route),
		cmocka_unit_test(test_file_round_trip),
		cmocka_unit_test(test_file_damage),
		cmocka_unit_test(test_file_on_disk),
		cmocka_unit_test(test_export),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
