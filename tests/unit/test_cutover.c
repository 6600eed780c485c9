/*
 * test_cutover.c — the write cut-over's pure parts: the configuration of
 * authority/request/response/reverse (with file:line errors), the reload
 * gate (cutover_gate over a fake queue and fake guards), and the files
 * beside the queue (cutstate: indeterminate writes, verify marks, reads at
 * 100).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "cutover.h"
#include "cutstate.h"

static const char HEAD[] = "listen = \"127.0.0.1:18080\";\n"
			   "upstreams = { legacy = { url = \"http://127.0.0.1:18000\"; };\n"
			   "              gear_ops = { url = \"http://127.0.0.1:18002\"; };\n"
			   "              other = { url = \"http://127.0.0.1:18003\"; }; };\n"
			   "default_upstream = \"legacy\";\n"
			   "queue = { path = \"/tmp/dw-unit-cutover-q\"; };\n";

/* A route at line 7 onwards; auth is the authority, more is spliced in. */
static char *conf_text(const char *auth, const char *more)
{
	char *s;

	if (asprintf(&s,
		     "%sroutes = (\n"						       /* 7 */
		     "  { name = \"create\"; match = \"POST /equipment\";\n"	       /* 8 */
		     "    authority = \"%s\";\n"					       /* 9 */
		     "    mirror = { upstream = \"gear_ops\"; key = \"$response.id\"; };\n" /* 10 */
		     "    request = { path = \"/gear-items\"; body = { n = \"$request.name\"; }; };\n"
		     "    response = { body = { id = \"$response.id\"; }; };\n"	       /* 12 */
		     "    reverse = { path = \"/equipment\"; key = \"$response.id\";\n"     /* 13 */
		     "                body = { id = \"$response.id\"; }; };\n"	       /* 14 */
		     "    %s\n"							       /* 15 */
		     "  }\n);\n",
		     HEAD, auth, more) < 0)
		abort();
	return s;
}

static struct dw_config *load(const char *auth, const char *more, struct dw_errlist *errs)
{
	char *t = conf_text(auth, more);
	struct dw_config *c = config_load_string(t, "x.conf", errs);

	free(t);
	return c;
}

static void assert_error(const char *auth, const char *more, const char *want)
{
	struct dw_errlist errs = {0};
	struct dw_config *c = load(auth, more, &errs);
	bool found = false;

	for (size_t i = 0; i < errs.n; i++)
		if (strstr(errs.msgs[i], want))
			found = true;
	if (c || !found) {
		for (size_t i = 0; i < errs.n; i++)
			print_error("%s\n", errs.msgs[i]);
		fail_msg("wanted an error containing: %s", want);
	}
	dw_errlist_free(&errs);
}

static void test_config_blocks(void **state)
{
	struct dw_errlist errs = {0};
	struct dw_config *c;
	const struct dw_route *r;

	(void)state;
	c = load("new", "", &errs);
	assert_non_null(c);
	r = &c->routes[0];
	assert_int_equal(r->authority, AUTHORITY_NEW);
	assert_non_null(r->request);
	assert_non_null(r->response);
	assert_non_null(r->reverse);
	/* reverse without an upstream goes back to the default (the legacy) */
	assert_int_equal(r->reverse->upstream, c->default_upstream);
	assert_ptr_equal(route_write_mirror(r), r->reverse);
	assert_int_equal(c->cutover.verified_within_h, 24);
	assert_int_equal(c->cutover.reads_at_100_h, 0);
	config_unref(c);

	c = load("legacy", "", &errs);
	assert_non_null(c);
	assert_ptr_equal(route_write_mirror(&c->routes[0]), c->routes[0].mirror);
	config_unref(c);
}

static void test_config_errors(void **state)
{
	(void)state;
	assert_error("sideways", "", "x.conf:9: route \"create\": authority: \"sideways\": expected "
				     "\"legacy\" or \"new\"");
	assert_error("new", "request2 = 1;",
		     "x.conf:15: route \"create\": request2: unknown key 'request2' (did you mean "
		     "'request'?)");
	{ /* a table not in this file is a warning: routes are often checked alone */
		struct dw_errlist errs = {0};
		struct dw_config *c = load("new", "table = \"nope\";", &errs);

		assert_non_null(c);
		assert_int_equal(c->warnings.n, 1);
		assert_non_null(strstr(c->warnings.msgs[0], "x.conf:8: route \"create\": table: "
							   "\"nope\" is not in tables"));
		config_unref(c);
	}
	{
		/* the request is built before anything answered: no $response */
		struct dw_errlist errs = {0};
		const char *t = "listen = \"127.0.0.1:1\";\n"
				"upstreams = { legacy = { url = \"http://127.0.0.1:2\"; }; };\n"
				"default_upstream = \"legacy\";\n"
				"routes = ( { name = \"r\"; match = \"POST /x\";\n"
				"  authority = \"new\";\n"
				"  request = { path = \"/y/{response.id}\"; }; } );\n";
		struct dw_config *c = config_load_string(t, "y.conf", &errs);
		bool resp = false, nomirror = false;

		assert_null(c);
		for (size_t i = 0; i < errs.n; i++) {
			resp |= strstr(errs.msgs[i], "y.conf:6:") != NULL;
			nomirror |= strstr(errs.msgs[i], "\"new\" needs a mirror block") != NULL;
		}
		assert_true(resp);
		assert_true(nomirror);
		dw_errlist_free(&errs);
	}
	{
		struct dw_errlist errs = {0};
		const char *t = "listen = \"127.0.0.1:1\";\n"
				"upstreams = { legacy = { url = \"http://127.0.0.1:2\"; };\n"
				"  n = { url = \"http://127.0.0.1:3\"; }; };\n"
				"default_upstream = \"legacy\";\n"
				"routes = ( { name = \"r\"; match = \"POST /x\";\n"
				"  authority = \"new\";\n"
				"  mirror = { upstream = \"n\"; }; } );\n"
				"cutover = { verified_within_h = 0; };\n";
		struct dw_config *c = config_load_string(t, "z.conf", &errs);
		bool rev = false, range = false;

		assert_null(c);
		for (size_t i = 0; i < errs.n; i++) {
			rev |= strstr(errs.msgs[i], "z.conf:6: route \"r\": authority: \"new\" needs a "
						    "reverse block") != NULL;
			range |= strstr(errs.msgs[i], "z.conf:8: cutover.verified_within_h") != NULL;
		}
		assert_true(rev);
		assert_true(range);
		dw_errlist_free(&errs);
	}
}

/* ---- the gate over a fake queue and fake guards ---- */

struct fake {
	const char *queued_up, *dead_up, *tripped_up;
	bool fail;
	int asked;
};

static int fake_waiting(void *arg, const char *up, uint64_t *queued, uint64_t *dead,
			struct dw_err *err)
{
	struct fake *f = arg;

	f->asked++;
	if (f->fail) {
		dw_err_set(err, "disk on fire");
		return -1;
	}
	*queued = f->queued_up && strcmp(f->queued_up, up) == 0 ? 3 : 0;
	*dead = f->dead_up && strcmp(f->dead_up, up) == 0 ? 1 : 0;
	return 0;
}

static bool fake_tripped(void *arg, const char *up, char *why, size_t len)
{
	struct fake *f = arg;

	snprintf(why, len, "read_error_rate");
	return f->tripped_up && strcmp(f->tripped_up, up) == 0;
}

static int gate(struct dw_config *from, struct dw_config *to, struct fake *f, struct dw_err *err)
{
	struct cutover_probe p = {fake_waiting, fake_tripped, f};
	return cutover_gate(from, to, &p, err);
}

static void test_gate(void **state)
{
	struct dw_errlist errs = {0};
	struct dw_config *legacy = load("legacy", "", &errs), *neu = load("new", "", &errs);
	struct dw_err err = {""};
	struct fake f = {0};

	(void)state;
	assert_non_null(legacy);
	assert_non_null(neu);
	assert_true(cutover_flips(legacy, neu, 0));
	assert_false(cutover_flips(neu, neu, 0));
	assert_false(cutover_flips(neu, legacy, 0));
	assert_true(cutover_flips(NULL, neu, 0)); /* a route that comes in as "new" */

	/* empty queue, clear guards: accepted */
	assert_int_equal(gate(legacy, neu, &f, &err), 0);
	assert_int_equal(f.asked, 1);

	/* queued records of the new system refuse the flip */
	f.queued_up = "gear_ops";
	assert_int_equal(gate(legacy, neu, &f, &err), -1);
	assert_non_null(strstr(err.msg, "route \"create\": authority \"new\" refused: the queue "
					"holds 3 queued and 0 dead record(s) for \"gear_ops\""));
	/* ... records of another upstream (the legacy's reverse queue) do not */
	f.queued_up = "legacy";
	assert_int_equal(gate(legacy, neu, &f, &err), 0);
	/* dead letters refuse it */
	f.dead_up = "gear_ops";
	assert_int_equal(gate(legacy, neu, &f, &err), -1);
	assert_non_null(strstr(err.msg, "1 dead record(s)"));
	f.dead_up = NULL;
	/* a tripped guard refuses it */
	f.tripped_up = "gear_ops";
	assert_int_equal(gate(legacy, neu, &f, &err), -1);
	assert_non_null(strstr(err.msg, "a guard of \"gear_ops\" is tripped: read_error_rate"));
	/* a queue that cannot say is not an empty queue */
	f.tripped_up = NULL;
	f.fail = true;
	assert_int_equal(gate(legacy, neu, &f, &err), -1);
	assert_non_null(strstr(err.msg, "disk on fire"));

	/* flipping back, or staying new, is never refused and asks nothing */
	f = (struct fake){.queued_up = "gear_ops", .dead_up = "gear_ops", .tripped_up = "gear_ops"};
	assert_int_equal(gate(neu, legacy, &f, &err), 0);
	assert_int_equal(gate(neu, neu, &f, &err), 0);
	assert_int_equal(f.asked, 0);

	config_unref(legacy);
	config_unref(neu);
}

/* ---- the files beside the queue ---- */

static char dir[64];

static int mkdir_setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/dw-cutstate-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int rm_teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_indeterminate_file(void **state)
{
	struct dw_err err = {""};
	struct indet_entry *v;
	size_t n;
	char path[128];
	FILE *f;

	(void)state;
	assert_int_equal(indet_load(dir, "equipment", &v, &n, &err), 0); /* no file: none */
	assert_int_equal(n, 0);
	indet_entries_free(v, n);
	struct indet_entry a = {1, "update", "equipment", "42", "r1", "timeout"};
	struct indet_entry b = {2, "create", "equipment", NULL, "r2", "reset"};
	struct indet_entry c = {3, "devices", "devices", "dev-1", "r3", "timeout"};
	struct indet_entry d = {4, "untabled", NULL, "42", "r4", "timeout"};
	assert_int_equal(indet_record(dir, &a, true, &err), 0);
	assert_int_equal(indet_record(dir, &b, false, &err), 0);
	assert_int_equal(indet_record(dir, &c, true, &err), 0);
	assert_int_equal(indet_record(dir, &d, false, &err), 0);
	/* a torn last line (a crash mid-write) is skipped */
	snprintf(path, sizeof(path), "%s/" CUTSTATE_INDET, dir);
	assert_non_null(f = fopen(path, "a"));
	fputs("{\"at\":5,\"route\":\"x\",\"key\":\"9", f);
	fclose(f);

	assert_int_equal(indet_load(dir, "equipment", &v, &n, &err), 0);
	assert_int_equal(n, 3); /* a, b and the one of no table */
	assert_string_equal(v[0].key, "42");
	assert_null(v[1].key);
	assert_null(v[2].table);
	indet_entries_free(v, n);
	assert_int_equal(indet_load(dir, NULL, &v, &n, &err), 0);
	assert_int_equal(n, 4);
	indet_entries_free(v, n);

	/* found equal: key 42 of equipment closes a and d (no table), not c */
	assert_int_equal(truncate(path, 0) == 0 ? 0 : -1, 0);
	assert_int_equal(indet_record(dir, &a, true, &err), 0);
	assert_int_equal(indet_record(dir, &b, false, &err), 0);
	assert_int_equal(indet_record(dir, &c, true, &err), 0);
	assert_int_equal(indet_record(dir, &d, false, &err), 0);
	assert_int_equal(indet_clear(dir, "equipment", "42", &err), 0);
	assert_int_equal(indet_load(dir, NULL, &v, &n, &err), 0);
	assert_int_equal(n, 2);
	assert_null(v[0].key);
	assert_string_equal(v[1].key, "dev-1");
	indet_entries_free(v, n);
	/* the whole table equal settles the unknown key */
	assert_int_equal(indet_clear(dir, "equipment", NULL, &err), 0);
	assert_int_equal(indet_load(dir, "equipment", &v, &n, &err), 0);
	assert_int_equal(n, 0);
	indet_entries_free(v, n);
	/* a later write of the same key is open again */
	assert_int_equal(indet_record(dir, &a, true, &err), 0);
	assert_int_equal(indet_load(dir, "equipment", &v, &n, &err), 0);
	assert_int_equal(n, 1);
	indet_entries_free(v, n);
}

static void test_verify_marks_and_reads100(void **state)
{
	struct dw_err err = {""};
	struct verify_mark m;
	int64_t since;

	(void)state;
	assert_int_equal(verify_mark_last(dir, "equipment", &m, &err), 0);
	assert_int_equal(verify_mark_record(dir, "equipment", &(struct verify_mark){10, false, 3}, &err), 0);
	assert_int_equal(verify_mark_record(dir, "devices", &(struct verify_mark){11, true, 0}, &err), 0);
	assert_int_equal(verify_mark_record(dir, "equipment", &(struct verify_mark){12, true, 0}, &err), 0);
	assert_int_equal(verify_mark_last(dir, "equipment", &m, &err), 1);
	assert_true(m.equal);
	assert_int_equal(m.at_us, 12);

	assert_int_equal(reads100_since(dir, "list", &since, &err), 0);
	assert_int_equal(reads100_record(dir, "list", 5000, 100, &err), 0);
	assert_int_equal(reads100_record(dir, "list", 10000, 200, &err), 0);
	assert_int_equal(reads100_record(dir, "other", 0, 250, &err), 0);
	assert_int_equal(reads100_record(dir, "list", 10000, 300, &err), 0); /* a reload: still 100 */
	assert_int_equal(reads100_since(dir, "list", &since, &err), 1);
	assert_int_equal(since, 200);
	assert_int_equal(reads100_record(dir, "list", 8000, 400, &err), 0); /* lowered: starts over */
	assert_int_equal(reads100_record(dir, "list", 10000, 500, &err), 0);
	assert_int_equal(reads100_since(dir, "list", &since, &err), 1);
	assert_int_equal(since, 500);
}

static void test_guards_latch_file(void **state)
{
	char path[128], why[128];
	FILE *f;

	(void)state;
	assert_int_equal(cutover_guards_latch_tripped(dir, "gear_ops", why, sizeof(why)), 0);
	snprintf(path, sizeof(path), "%s/guards.json", dir);
	assert_non_null(f = fopen(path, "w"));
	fputs("{\"version\":1,\"upstreams\":{\"gear_ops\":{\"state\":\"tripped\",\"reason\":"
	      "\"read_p99_ms\"},\"v2\":{\"state\":\"paused\"}}}\n", f);
	fclose(f);
	assert_int_equal(cutover_guards_latch_tripped(dir, "gear_ops", why, sizeof(why)), 1);
	assert_string_equal(why, "read_p99_ms");
	assert_int_equal(cutover_guards_latch_tripped(dir, "v2", why, sizeof(why)), 0);
	assert_non_null(f = fopen(path, "w"));
	fputs("{not json", f);
	fclose(f);
	assert_int_equal(cutover_guards_latch_tripped(dir, "gear_ops", why, sizeof(why)), -1);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_blocks),
		cmocka_unit_test(test_config_errors),
		cmocka_unit_test(test_gate),
		cmocka_unit_test_setup_teardown(test_indeterminate_file, mkdir_setup, rm_teardown),
		cmocka_unit_test_setup_teardown(test_verify_marks_and_reads100, mkdir_setup,
						rm_teardown),
		cmocka_unit_test_setup_teardown(test_guards_latch_file, mkdir_setup, rm_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
