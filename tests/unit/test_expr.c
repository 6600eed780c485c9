/*
 * test_expr.c — the value-expression engine: every form, the two seeds'
 * mappings field by field, missing fields, documents (base/drop/body),
 * string evaluation of keys, path templates and compile-time rejections.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "expr.h"

/* ---------------------------------------------------------------- helpers */

/* Parse "v = <text>;" and keep the config alive in a static slot. */
static config_t cfgs[128];
static int ncfg;

static const config_setting_t *setting(const char *text)
{
	char buf[2048];
	config_t *c;

	assert_true(ncfg < (int)(sizeof(cfgs) / sizeof(cfgs[0])));
	c = &cfgs[ncfg++];
	config_init(c);
	snprintf(buf, sizeof(buf), "v = %s;\n", text);
	if (config_read_string(c, buf) != CONFIG_TRUE)
		fail_msg("config \"%s\": line %d: %s", buf, config_error_line(c), config_error_text(c));
	return config_lookup(c, "v");
}

static int teardown_cfgs(void **state)
{
	(void)state;
	for (int i = 0; i < ncfg; i++)
		config_destroy(&cfgs[i]);
	ncfg = 0;
	return 0;
}

static struct expr *compile(const char *text, unsigned allowed)
{
	struct dw_err err = { { 0 } };
	struct expr *e = expr_compile(setting(text), allowed, &err);

	if (!e)
		fail_msg("compile %s: %s", text, err.msg);
	return e;
}

static json_t *parse(const char *s)
{
	json_error_t je;
	json_t *v = json_loads(s, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);

	if (!v)
		fail_msg("bad test JSON %s: %s", s, je.text);
	return v;
}

/* Evaluate and compare with the expected JSON text (NULL: missing). */
static void check_eval(const struct expr *e, const struct expr_ctx *ctx, const char *want)
{
	struct dw_err err = { { 0 } };
	json_t *out = (json_t *)0x1, *w;
	int rc = expr_eval(e, ctx, &out, &err);

	if (!want) {
		assert_int_equal(rc, EXPR_MISSING);
		assert_null(out);
		return;
	}
	if (rc != EXPR_OK)
		fail_msg("eval: rc %d (%s), want %s", rc, err.msg, want);
	w = parse(want);
	if (!json_equal(out, w)) {
		char *got = json_dumps(out, JSON_ENCODE_ANY | JSON_SORT_KEYS);
		fail_msg("got %s, want %s", got, want);
	}
	json_decref(w);
	json_decref(out);
}

static void check_str(const char *text, const char *want)
{
	struct expr *e = compile(text, EXPR_SRC_HTTP);
	check_eval(e, NULL, want);
	expr_free(e);
}

static const char *test_header(void *arg, const char *name, size_t *len)
{
	const char *const *h = arg;
	for (; h[0]; h += 2) {
		if (strcasecmp(h[0], name) == 0) {
			*len = strlen(h[1]);
			return h[1];
		}
	}
	return NULL;
}

/* ---------------------------------------------------------------- literals */

static void test_literals(void **state)
{
	(void)state;
	check_str("\"active\"", "\"active\"");
	check_str("42", "42");
	check_str("-7", "-7");
	check_str("10000000000L", "10000000000");
	check_str("1.5", "1.5");
	check_str("true", "true");
	check_str("false", "false");
	check_str("\"$$x\"", "\"$x\"");
	check_str("\"$$\"", "\"$\"");
	check_str("\"$$request.id\"", "\"$request.id\"");
	check_str("\"a $request\"", "\"a $request\"");
	check_str("\"\"", "\"\"");
	check_str("{ a = 1; b = { c = \"x\"; }; d = (1, \"two\", true); }",
		  "{\"a\":1,\"b\":{\"c\":\"x\"},\"d\":[1,\"two\",true]}");
	check_str("[1, 2, 3]", "[1,2,3]");
	check_str("{ }", "{}");
	check_str("( )", "[]");

	struct expr *e = compile("{ a = 1; }", EXPR_SRC_HTTP);
	assert_int_equal(expr_sources(e), 0);
	expr_free(e);
	expr_free(NULL);
}

/* ---------------------------------------------------------------- references */

static void test_references(void **state)
{
	(void)state;
	json_t *req = parse("{\"user_id\": 7, \"name\": \"Tent\", \"a\": {\"b\": {\"c\": null}},"
			    " \"items\": [{\"id\": 1}, {\"id\": 2}], \"s\": \"str\"}");
	json_t *resp = parse("{\"id\": 42, \"created_at\": \"2025-11-13T00:00:00Z\"}");
	json_t *row = parse("{\"id\": 9, \"type\": \"tent\", \"0\": \"zero\"}");
	const char *names[] = { "id", "uid" };
	const char *values[] = { "a b", "7" };
	const char *headers[] = { "X-Tenant-ID", "acme", "X-Empty", "", NULL };
	const char *query = "a=1&name=J%C3%BCrgen+x&name=second&flag&bad=%zz";
	struct expr_ctx ctx = {
		.request = req,
		.response = resp,
		.row = row,
		.path_names = names,
		.path_values = values,
		.npath = 2,
		.query = query,
		.query_len = strlen(query),
		.header = test_header,
		.header_arg = headers,
		.tenant = "acme",
		.now = "2026-01-02T03:04:05.678Z",
	};
	static const struct {
		const char *expr, *want;
	} cases[] = {
		{ "\"$request\"", NULL /* whole document, checked below */ },
		{ "\"$request.user_id\"", "7" },
		{ "\"$request.name\"", "\"Tent\"" },
		{ "\"$request.a.b\"", "{\"c\":null}" },
		{ "\"$request.a.b.c\"", "null" },
		{ "\"$request.a.b.c.d\"", NULL },
		{ "\"$request.items.0.id\"", "1" },
		{ "\"$request.items.1\"", "{\"id\":2}" },
		{ "\"$request.items.2\"", NULL },
		{ "\"$request.items.x\"", NULL },
		{ "\"$request.s.0\"", NULL },
		{ "\"$request.nope\"", NULL },
		{ "\"$response.id\"", "42" },
		{ "\"$response.created_at\"", "\"2025-11-13T00:00:00Z\"" },
		{ "\"$path.id\"", "\"a b\"" },
		{ "\"$path.uid\"", "\"7\"" },
		{ "\"$path.nope\"", NULL },
		{ "\"$query.a\"", "\"1\"" },
		{ "\"$query.name\"", "\"J\\u00fcrgen x\"" }, /* first occurrence, decoded */
		{ "\"$query.flag\"", "\"\"" },
		{ "\"$query.zzz\"", NULL },
		{ "\"$header.X-Tenant-ID\"", "\"acme\"" },
		{ "\"$header.x-tenant-id\"", "\"acme\"" },
		{ "\"$header.X-Empty\"", "\"\"" },
		{ "\"$header.X-Nope\"", NULL },
		{ "\"$tenant\"", "\"acme\"" },
		{ "\"$now\"", "\"2026-01-02T03:04:05.678Z\"" },
		{ "\"$row.id\"", "9" },
		{ "\"$row.type\"", "\"tent\"" },
		{ "\"$row.0\"", "\"zero\"" }, /* a numeric name on an object is a key */
		{ "\"$row\"", "{\"id\": 9, \"type\": \"tent\", \"0\": \"zero\"}" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct expr *e = compile(cases[i].expr, EXPR_SRC_HTTP | EXPR_SRC_ROW);
		if (i == 0) {
			json_t *out = NULL;
			struct dw_err err = { { 0 } };
			assert_int_equal(expr_eval(e, &ctx, &out, &err), EXPR_OK);
			assert_true(json_equal(out, req));
			json_decref(out);
		} else {
			check_eval(e, &ctx, cases[i].want);
		}
		expr_free(e);
	}

	/* a badly encoded query value is an error, not a guess */
	struct expr *e = compile("\"$query.bad\"", EXPR_SRC_HTTP);
	json_t *out = NULL;
	struct dw_err err = { { 0 } };
	assert_int_equal(expr_eval(e, &ctx, &out, &err), EXPR_ERROR);
	assert_null(out);
	expr_free(e);

	/* absent sources are missing, not errors */
	struct expr_ctx empty = { .tenant = "t" };
	static const char *const refs[] = { "\"$request\"",	"\"$request.a\"", "\"$response.id\"",
					    "\"$path.id\"",	"\"$query.a\"",	  "\"$header.X-A\"",
					    "\"$row.id\"" };
	for (size_t i = 0; i < sizeof(refs) / sizeof(refs[0]); i++) {
		e = compile(refs[i], EXPR_SRC_HTTP | EXPR_SRC_ROW);
		check_eval(e, &empty, NULL);
		expr_free(e);
	}
	json_decref(req);
	json_decref(resp);
	json_decref(row);
}

static void test_now_from_clock(void **state)
{
	(void)state;
	struct expr *e = compile("\"$now\"", EXPR_SRC_NOW);
	struct expr_ctx ctx = { 0 };
	json_t *out = NULL;
	struct dw_err err = { { 0 } };
	const char *s;

	assert_int_equal(expr_eval(e, &ctx, &out, &err), EXPR_OK);
	assert_true(json_is_string(out));
	s = json_string_value(out);
	/* 2026-11-22T04:33:13.123Z */
	assert_int_equal(strlen(s), 24);
	assert_int_equal(s[4], '-');
	assert_int_equal(s[10], 'T');
	assert_int_equal(s[23], 'Z');
	assert_true(strncmp(s, "20", 2) == 0);
	json_decref(out);
	assert_int_equal(expr_sources(e), EXPR_SRC_NOW);
	expr_free(e);
}

static void test_tenant(void **state)
{
	(void)state;
	struct expr *e = compile("{ tenantId = \"$tenant\"; name = \"$request.name\"; }",
				 EXPR_SRC_HTTP);
	json_t *req = parse("{\"name\": \"d\"}");
	struct expr_ctx ctx = { .request = req, .tenant = NULL };
	json_t *out = (json_t *)0x1;
	struct dw_err err = { { 0 } };

	/* an invalid tenant fails the whole document, even nested */
	assert_int_equal(expr_eval(e, &ctx, &out, &err), EXPR_ERROR);
	assert_null(out);
	assert_non_null(strstr(err.msg, "bad tenant"));
	ctx.tenant = "default_tenant_id";
	check_eval(e, &ctx, "{\"tenantId\":\"default_tenant_id\",\"name\":\"d\"}");
	assert_int_equal(expr_sources(e), EXPR_SRC_TENANT | EXPR_SRC_REQUEST);
	expr_free(e);
	json_decref(req);

	assert_true(expr_tenant_valid("default_tenant_id", 17));
	assert_true(expr_tenant_valid("a.b-c_D9", 8));
	assert_true(expr_tenant_valid("x", 1));
	char long65[66];
	memset(long65, 'a', 65);
	long65[65] = '\0';
	assert_true(expr_tenant_valid(long65, 64));
	assert_false(expr_tenant_valid(long65, 65));
	assert_false(expr_tenant_valid("", 0));
	assert_false(expr_tenant_valid("a b", 3));
	assert_false(expr_tenant_valid("a/b", 3));
	assert_false(expr_tenant_valid("ü", strlen("ü")));
	assert_false(expr_tenant_valid("a\0b", 3));
}

/* ---------------------------------------------------------------- missing */

static void test_missing(void **state)
{
	(void)state;
	json_t *req = parse("{\"name\": \"x\", \"n\": null}");
	struct expr_ctx ctx = { .request = req, .tenant = "t" };
	struct expr *e;

	/* members whose source is absent are left out, null is kept */
	e = compile("{ name = \"$request.name\"; brand = \"$request.brand\"; n = \"$request.n\";"
		    " sub = { a = \"$request.a\"; }; lit = 1; }",
		    EXPR_SRC_HTTP);
	check_eval(e, &ctx, "{\"name\":\"x\",\"n\":null,\"sub\":{},\"lit\":1}");
	expr_free(e);

	/* array elements too */
	e = compile("( \"$request.name\", \"$request.none\", 3 )", EXPR_SRC_HTTP);
	check_eval(e, &ctx, "[\"x\",3]");
	expr_free(e);

	/* at the top: EXPR_MISSING */
	e = compile("\"$request.none\"", EXPR_SRC_HTTP);
	check_eval(e, &ctx, NULL);
	expr_free(e);
	json_decref(req);
}

/* ---------------------------------------------------------------- compile errors */

static void test_compile_errors(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		unsigned allowed;
		const char *needle;
	} bad[] = {
		{ "\"$foo\"", EXPR_SRC_HTTP, "\"$foo\"" },
		{ "\"$\"", EXPR_SRC_HTTP, "\"$\"" },
		{ "\"$request.\"", EXPR_SRC_HTTP, "\"$request.\"" },
		{ "\"$request..a\"", EXPR_SRC_HTTP, "empty field" },
		{ "\"$requests\"", EXPR_SRC_HTTP, "unknown source" },
		{ "\"$path\"", EXPR_SRC_HTTP, "needs a name" },
		{ "\"$path.\"", EXPR_SRC_HTTP, "needs a name" },
		{ "\"$path.1x\"", EXPR_SRC_HTTP, "capture name" },
		{ "\"$query\"", EXPR_SRC_HTTP, "needs a name" },
		{ "\"$header\"", EXPR_SRC_HTTP, "needs a name" },
		{ "\"$header.Bad Name\"", EXPR_SRC_HTTP, "unexpected text" },
		{ "\"$header.Bad@Name\"", EXPR_SRC_HTTP, "header name" },
		{ "\"$tenant.x\"", EXPR_SRC_HTTP, "takes no field" },
		{ "\"$now.x\"", EXPR_SRC_HTTP, "takes no field" },
		{ "\"$row.id\"", EXPR_SRC_HTTP, "not available" },
		{ "\"$request.id\"", EXPR_SRC_TABLE, "not available" },
		{ "\"$response\"", EXPR_SRC_REQUEST, "not available" },
		{ "{ a = { b = \"$oops\"; }; }", EXPR_SRC_HTTP, "v.a.b: bad expression \"$oops\"" },
		{ "( 1, \"$oops\" )", EXPR_SRC_HTTP, "v[1]: bad expression" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct dw_err err = { { 0 } };
		struct expr *e = expr_compile(setting(bad[i].text), bad[i].allowed, &err);
		if (e)
			fail_msg("%s compiled but should not", bad[i].text);
		if (!strstr(err.msg, bad[i].needle))
			fail_msg("%s: error \"%s\" lacks \"%s\"", bad[i].text, err.msg, bad[i].needle);
		/* expr_compile names the line */
		assert_non_null(strstr(err.msg, "line 1"));
	}

	struct dw_err err = { { 0 } };
	assert_null(expr_compile_str("$nope", EXPR_SRC_HTTP, &err));
	assert_non_null(strstr(err.msg, "$nope"));
	struct expr *e = expr_compile_str("$$5", EXPR_SRC_HTTP, &err);
	assert_non_null(e);
	check_eval(e, NULL, "\"$5\"");
	expr_free(e);
	e = expr_compile_str("$response.id", EXPR_SRC_HTTP, &err);
	assert_non_null(e);
	assert_int_equal(expr_sources(e), EXPR_SRC_RESPONSE);
	expr_free(e);
}

static void test_compile_opts(void **state)
{
	(void)state;
	config_t *c = &cfgs[ncfg++];
	const char *names[] = { "id" };
	struct expr_opts o = { .allowed = EXPR_SRC_HTTP, .check_path = true, .path_names = names,
			       .npath = 1 };
	struct dw_err err = { { 0 } };
	struct expr *e;

	config_init(c);
	assert_int_equal(config_read_string(c, "body = {\n"
					       "  id = \"$path.id\";\n"
					       "  category = \"$foo\";\n"
					       "};\n"
					       "key = \"$path.gid\";\n"),
			 CONFIG_TRUE);
	e = expr_compile_opts(config_lookup(c, "body"), &o, &err);
	assert_null(e);
	assert_int_equal(o.line, 3);
	assert_true(strncmp(err.msg, "body.category: bad expression \"$foo\"", 36) == 0);

	e = expr_compile_opts(config_lookup(c, "key"), &o, &err);
	assert_null(e);
	assert_int_equal(o.line, 5);
	assert_true(strncmp(err.msg, "key: bad expression \"$path.gid\"", 30) == 0);
	assert_non_null(strstr(err.msg, "not a capture"));

	/* without the capture check $path.gid is fine */
	o.check_path = false;
	e = expr_compile_opts(config_lookup(c, "key"), &o, &err);
	assert_non_null(e);
	expr_free(e);

	struct tmpl *t = tmpl_compile_opts("/gear-items/{gid}",
					   &(struct expr_opts){ .allowed = EXPR_SRC_HTTP,
								.check_path = true,
								.path_names = names,
								.npath = 1 },
					   &err);
	assert_null(t);
	assert_non_null(strstr(err.msg, "gid"));
}

/* ---------------------------------------------------------------- strings */

static void check_string(const char *text, const struct expr_ctx *ctx, int rc_want,
			 const char *want)
{
	struct expr *e = compile(text, EXPR_SRC_HTTP);
	struct dw_err err = { { 0 } };
	char *out = (char *)0x1;
	int rc = expr_eval_string(e, ctx, &out, &err);

	if (rc != rc_want)
		fail_msg("%s: rc %d want %d (%s)", text, rc, rc_want, err.msg);
	if (want)
		assert_string_equal(out, want);
	else
		assert_null(out);
	free(out);
	expr_free(e);
}

static void test_eval_string(void **state)
{
	(void)state;
	json_t *resp = parse("{\"id\": 42, \"neg\": -5, \"r\": 0.1, \"big\": 1e300, \"half\": 2.5,"
			     " \"t\": true, \"f\": false, \"n\": null, \"o\": {}, \"a\": [],"
			     " \"s\": \"42\", \"nul\": \"a\\u0000b\", \"third\": 0.3333333333333333}");
	struct expr_ctx ctx = { .response = resp };

	check_string("\"$response.id\"", &ctx, EXPR_OK, "42");
	check_string("\"$response.s\"", &ctx, EXPR_OK, "42"); /* 42 and "42": same key */
	check_string("\"$response.neg\"", &ctx, EXPR_OK, "-5");
	check_string("\"$response.r\"", &ctx, EXPR_OK, "0.1");
	check_string("\"$response.big\"", &ctx, EXPR_OK, "1e+300");
	check_string("\"$response.half\"", &ctx, EXPR_OK, "2.5");
	check_string("\"$response.third\"", &ctx, EXPR_OK, "0.3333333333333333");
	check_string("\"$response.t\"", &ctx, EXPR_OK, "true");
	check_string("\"$response.f\"", &ctx, EXPR_OK, "false");
	check_string("\"$response.n\"", &ctx, EXPR_ERROR, NULL);
	check_string("\"$response.o\"", &ctx, EXPR_ERROR, NULL);
	check_string("\"$response.a\"", &ctx, EXPR_ERROR, NULL);
	check_string("\"$response.nul\"", &ctx, EXPR_ERROR, NULL);
	check_string("\"$response.none\"", &ctx, EXPR_MISSING, NULL);
	check_string("\"literal\"", &ctx, EXPR_OK, "literal");
	check_string("17", &ctx, EXPR_OK, "17");
	json_decref(resp);
}

/* ---------------------------------------------------------------- seeds */

/* Gear Operations, plan §2.1 / SPEC §3 "equipment-create", field by field. */
static void test_seed_gear(void **state)
{
	(void)state;
	struct expr *e = compile("{\n"
				 "  id       = \"$response.id\";\n"
				 "  user_id  = \"$request.user_id\";\n"
				 "  name     = \"$request.name\";\n"
				 "  category = \"$request.type\";\n"
				 "  brand    = \"$request.brand\";\n"
				 "  status   = \"active\";\n"
				 "  role     = \"personal\";\n"
				 "  tenant_id = \"$tenant\";\n"
				 "}",
				 EXPR_SRC_HTTP);
	json_t *req = parse("{\"user_id\": 7, \"name\": \"Tent 2P\", \"type\": \"tent\","
			    " \"brand\": \"MSR\"}");
	json_t *resp = parse("{\"id\": 42, \"user_id\": 7}");
	struct expr_ctx ctx = { .request = req, .response = resp, .tenant = "default" };
	json_t *out = NULL;
	struct dw_err err = { { 0 } };

	assert_int_equal(expr_eval(e, &ctx, &out, &err), EXPR_OK);
	assert_int_equal(json_object_size(out), 8);
	assert_int_equal(json_integer_value(json_object_get(out, "id")), 42);
	assert_int_equal(json_integer_value(json_object_get(out, "user_id")), 7);
	assert_string_equal(json_string_value(json_object_get(out, "name")), "Tent 2P");
	assert_string_equal(json_string_value(json_object_get(out, "category")), "tent");
	assert_null(json_object_get(out, "type"));
	assert_string_equal(json_string_value(json_object_get(out, "brand")), "MSR");
	assert_string_equal(json_string_value(json_object_get(out, "status")), "active");
	assert_string_equal(json_string_value(json_object_get(out, "role")), "personal");
	assert_string_equal(json_string_value(json_object_get(out, "tenant_id")), "default");
	/* members keep the configured order */
	const char *order[] = { "id",	  "user_id", "name", "category",
				"brand", "status",  "role", "tenant_id" };
	size_t i = 0;
	const char *k;
	json_t *v;
	json_object_foreach(out, k, v)
	{
		(void)v;
		assert_string_equal(k, order[i++]);
	}
	json_decref(out);

	/* no brand sent: the field is left out, not null */
	json_object_del(req, "brand");
	check_eval(e, &ctx,
		   "{\"id\":42,\"user_id\":7,\"name\":\"Tent 2P\",\"category\":\"tent\","
		   "\"status\":\"active\",\"role\":\"personal\",\"tenant_id\":\"default\"}");
	assert_int_equal(expr_sources(e),
			 EXPR_SRC_REQUEST | EXPR_SRC_RESPONSE | EXPR_SRC_TENANT);
	expr_free(e);
	json_decref(req);
	json_decref(resp);
}

static struct expr *compile_doc(const char *base, const char *drop, const char *body,
				struct dw_err *err)
{
	return expr_compile_document(base ? setting(base) : NULL, drop ? setting(drop) : NULL,
				     body ? setting(body) : NULL, EXPR_SRC_HTTP, err);
}

/* IoT V1 -> V2, SPEC §3 "device-update": base $request, drop [type], plus. */
static void test_seed_iot(void **state)
{
	(void)state;
	struct dw_err err = { { 0 } };
	struct expr *e = compile_doc(
		"\"$request\"", "[ \"type\" ]",
		"{ tenantId = \"$tenant\"; templateId = \"$request.type\";"
		" attributes = \"$request.config\";"
		" metadata = { migratedFrom = \"v1\"; originalType = \"$request.type\"; }; }",
		&err);
	assert_non_null(e);
	json_t *req = parse("{\"name\": \"Sensor A\", \"type\": \"thermo\","
			    " \"config\": {\"interval\": 30}}");
	char *before = json_dumps(req, JSON_SORT_KEYS);
	struct expr_ctx ctx = { .request = req, .tenant = "default_tenant_id" };

	check_eval(e, &ctx,
		   "{\"name\":\"Sensor A\",\"config\":{\"interval\":30},"
		   "\"tenantId\":\"default_tenant_id\",\"templateId\":\"thermo\","
		   "\"attributes\":{\"interval\":30},"
		   "\"metadata\":{\"migratedFrom\":\"v1\",\"originalType\":\"thermo\"}}");
	/* the request document is not modified by building the mirror */
	char *after = json_dumps(req, JSON_SORT_KEYS);
	assert_string_equal(before, after);
	free(before);
	free(after);

	/* a PATCH with only a name: no type, no config -> those are left out */
	json_t *small = parse("{\"name\": \"B\"}");
	ctx.request = small;
	check_eval(e, &ctx,
		   "{\"name\":\"B\",\"tenantId\":\"default_tenant_id\","
		   "\"metadata\":{\"migratedFrom\":\"v1\"}}");

	/* an invalid tenant: the mirror cannot be built */
	ctx.tenant = NULL;
	json_t *out = NULL;
	assert_int_equal(expr_eval(e, &ctx, &out, &err), EXPR_ERROR);
	assert_null(out);

	/* no request body at all: missing */
	ctx.tenant = "t";
	ctx.request = NULL;
	check_eval(e, &ctx, NULL);

	/* a body that is JSON but not an object */
	json_t *arr = parse("[1,2]");
	ctx.request = arr;
	assert_int_equal(expr_eval(e, &ctx, &out, &err), EXPR_ERROR);
	assert_non_null(strstr(err.msg, "base is not a JSON object"));
	assert_int_equal(expr_sources(e), EXPR_SRC_REQUEST | EXPR_SRC_TENANT);

	expr_free(e);
	json_decref(req);
	json_decref(small);
	json_decref(arr);
}

static void test_document(void **state)
{
	(void)state;
	struct dw_err err = { { 0 } };
	json_t *req = parse("{\"a\": 1, \"b\": 2, \"metadata\": {\"x\": 1, \"migratedFrom\": \"?\"},"
			    " \"scalar\": 5}");
	struct expr_ctx ctx = { .request = req };
	struct expr *e;

	/* groups merge into existing objects; other values replace */
	e = compile_doc("\"$request\"", "[ \"b\", \"nothere\" ]",
			"{ metadata = { migratedFrom = \"v1\"; }; scalar = { y = 2; }; a = \"$request.none\"; }",
			&err);
	assert_non_null(e);
	check_eval(e, &ctx,
		   "{\"a\":1,\"metadata\":{\"x\":1,\"migratedFrom\":\"v1\"},\"scalar\":{\"y\":2}}");
	expr_free(e);
	/* Merging never changes the source document (the base is copied on
	 * write along the merged paths only), even two levels down. */
	json_t *nested = parse("{\"m\": {\"n\": {\"k\": 1}, \"o\": 2}, \"p\": [1]}");
	json_t *before = json_deep_copy(nested);
	struct expr_ctx nctx = { .request = nested };
	e = compile_doc("\"$request\"", NULL, "{ m = { n = { k = 9; j = 8; }; }; }", &err);
	assert_non_null(e);
	check_eval(e, &nctx, "{\"m\":{\"n\":{\"k\":9,\"j\":8},\"o\":2},\"p\":[1]}");
	check_eval(e, &nctx, "{\"m\":{\"n\":{\"k\":9,\"j\":8},\"o\":2},\"p\":[1]}");
	assert_true(json_equal(nested, before));
	expr_free(e);
	json_decref(nested);
	json_decref(before);

	/* body only: a fresh object */
	e = compile_doc(NULL, NULL, "{ a = \"$request.a\"; }", &err);
	assert_non_null(e);
	check_eval(e, &ctx, "{\"a\":1}");
	expr_free(e);

	/* base only, $response */
	json_t *resp = parse("{\"id\": 3}");
	ctx.response = resp;
	e = compile_doc("\"$response\"", NULL, NULL, &err);
	assert_non_null(e);
	check_eval(e, &ctx, "{\"id\":3}");
	expr_free(e);
	json_decref(resp);

	/* compile-time errors */
	assert_null(compile_doc(NULL, NULL, NULL, &err));
	assert_null(compile_doc(NULL, "[ \"type\" ]", "{ a = 1; }", &err));
	assert_non_null(strstr(err.msg, "drop"));
	assert_null(compile_doc("\"$tenant\"", NULL, NULL, &err));
	assert_non_null(strstr(err.msg, "base"));
	assert_null(compile_doc("\"plain\"", NULL, NULL, &err));
	assert_null(compile_doc("\"$oops\"", NULL, NULL, &err));
	assert_null(compile_doc("\"$request\"", "[ 1 ]", NULL, &err));
	assert_null(compile_doc("\"$request\"", "\"type\"", NULL, &err));
	assert_null(compile_doc("\"$request\"", NULL, "\"$request\"", &err));
	assert_null(compile_doc("\"$request\"", NULL, "{ a = \"$bad\"; }", &err));
	assert_non_null(strstr(err.msg, "body.a"));
	json_decref(req);
}

/* ---------------------------------------------------------------- operators */

static void check_ctx(const char *text, const struct expr_ctx *ctx, const char *want)
{
	struct expr *e = compile(text, EXPR_SRC_HTTP);
	check_eval(e, ctx, want);
	expr_free(e);
}

/* Evaluation fails with EXPR_ERROR and a reason containing needle. */
static void check_eval_error(const char *text, const struct expr_ctx *ctx, const char *needle)
{
	struct dw_err err = { { 0 } };
	struct expr *e = compile(text, EXPR_SRC_HTTP);
	json_t *out = (json_t *)0x1;

	assert_int_equal(expr_eval(e, ctx, &out, &err), EXPR_ERROR);
	assert_null(out);
	if (!strstr(err.msg, needle))
		fail_msg("%s: error \"%s\" lacks \"%s\"", text, err.msg, needle);
	expr_free(e);
}

static void test_fallback(void **state)
{
	(void)state;
	json_t *req = parse("{\"source\": \"sensor\", \"n\": null, \"zero\": 0, \"empty\": \"\","
			    " \"f\": false, \"o\": {\"a\": 1}}");
	struct expr_ctx ctx = { .request = req, .tenant = "t1" };

	/* present: the value; missing or null: the next operand */
	check_ctx("\"$request.source ?? 'migrated'\"", &ctx, "\"sensor\"");
	check_ctx("\"$request.none ?? 'migrated'\"", &ctx, "\"migrated\"");
	check_ctx("\"$request.n ?? 'migrated'\"", &ctx, "\"migrated\"");
	/* 0, "", false and objects are values, not absences */
	check_ctx("\"$request.zero ?? 1\"", &ctx, "0");
	check_ctx("\"$request.empty ?? 'x'\"", &ctx, "\"\"");
	check_ctx("\"$request.f ?? true\"", &ctx, "false");
	check_ctx("\"$request.o ?? 1\"", &ctx, "{\"a\":1}");
	/* chains, spacing, literal types */
	check_ctx("\"$request.none??$request.n??$request.source\"", &ctx, "\"sensor\"");
	check_ctx("\"$request.none ?? $tenant\"", &ctx, "\"t1\"");
	check_ctx("\"$request.none ?? 42\"", &ctx, "42");
	check_ctx("\"$request.none ?? -1.5e2\"", &ctx, "-150.0");
	check_ctx("\"$request.none ?? null\"", &ctx, "null");
	check_ctx("\"$request.none ?? {}\"", &ctx, "{}");
	check_ctx("\"$request.n ?? []\"", &ctx, "[]");
	check_ctx("\"$request.none ?? 'it''s'\"", &ctx, "\"it's\"");
	check_ctx("\"$request.none ?? ''\"", &ctx, "\"\"");
	check_ctx("\"$request.none ?? '$$ {} ?? ,'\"", &ctx, "\"$$ {} ?? ,\"");
	/* all absent: the last operand's outcome (missing leaves the member out) */
	check_ctx("\"$request.none ?? $request.other\"", &ctx, NULL);
	check_ctx("\"$request.none ?? $request.n\"", &ctx, "null");
	check_ctx("{ s = \"$request.none ?? $request.other\"; k = 1; }", &ctx, "{\"k\":1}");
	/* an error is not an absence: a bad tenant still fails the write */
	ctx.tenant = NULL;
	check_eval_error("\"$tenant ?? 'default'\"", &ctx, "bad tenant");
	json_decref(req);
}

static void test_interpolation(void **state)
{
	(void)state;
	json_t *req = parse("{\"type\": \"sensor\", \"n\": 7, \"r\": 1.0, \"h\": 0.1, \"b\": true,"
			    " \"nul\": null, \"o\": {\"a\": 1}, \"l\": [1], \"u\": \"\\u00e9\\u0000x\"}");
	struct expr_ctx ctx = { .request = req, .tenant = "t1" };

	check_ctx("\"tpl-${$request.type}\"", &ctx, "\"tpl-sensor\"");
	check_ctx("\"${$request.type}\"", &ctx, "\"sensor\"");
	check_ctx("\"${ $tenant }/${$request.type}-v${$request.n}\"", &ctx, "\"t1/sensor-v7\"");
	/* numbers in their shortest form; booleans as words */
	check_ctx("\"r=${$request.r} h=${$request.h} b=${$request.b}\"", &ctx, "\"r=1 h=0.1 b=true\"");
	/* a default inside the placeholder */
	check_ctx("\"tpl-${$request.none ?? 'generic'}\"", &ctx, "\"tpl-generic\"");
	check_ctx("\"tpl-${$request.nul ?? 'generic'}\"", &ctx, "\"tpl-generic\"");
	/* missing or null: the whole string is missing */
	check_ctx("\"tpl-${$request.none}\"", &ctx, NULL);
	check_ctx("\"tpl-${$request.nul}\"", &ctx, NULL);
	check_ctx("{ t = \"tpl-${$request.none}\"; }", &ctx, "{}");
	/* NUL and non-ASCII survive */
	check_ctx("\"<${$request.u}>\"", &ctx, "\"<\\u00e9\\u0000x>\"");
	/* escaping: "$${" is a literal "${"; other dollars are text */
	check_ctx("\"cost $${x} and $5 ${$request.n}$\"", &ctx, "\"cost ${x} and $5 7$\"");
	check_ctx("\"$${$request.type}\"", &ctx, "\"${$request.type}\"");
	check_ctx("\"$$${$request.n}\"", &ctx, "\"$7\"");
	check_ctx("\"a $${b\"", &ctx, "\"a ${b\"");
	check_ctx("\"{not a placeholder} $request\"", &ctx, "\"{not a placeholder} $request\"");
	check_ctx("\"${'}'}\"", &ctx, "\"}\"");
	/* objects and lists need $json */
	check_eval_error("\"x${$request.o}\"", &ctx, "an object (use $json");
	check_eval_error("\"x${$request.l}\"", &ctx, "a list");
	check_ctx("\"x${$json($request.o)}\"", &ctx, "\"x{\\\"a\\\":1}\"");
	json_decref(req);
}

static void test_conversions(void **state)
{
	(void)state;
	json_t *req = parse("{\"id\": 42, \"big\": 9007199254740993, \"r\": 1.0, \"r2\": 2.5,"
			    " \"tiny\": 1e-7, \"s\": \"17\", \"sr\": \"-0.5e1\", \"bad\": \"12a\","
			    " \"ws\": \" 1\", \"b\": false, \"nul\": null, \"o\": {\"k\": [1, \"x\"]},"
			    " \"huge\": \"1e999\", \"hex\": \"0x10\", \"empty\": \"\","
			    " \"t\": 21.3, \"hundred\": 100.0, \"sub\": 5e-324}");
	struct expr_ctx ctx = { .request = req };

	/* $string */
	check_ctx("\"$string($request.id)\"", &ctx, "\"42\"");
	check_ctx("\"$string($request.big)\"", &ctx, "\"9007199254740993\"");
	check_ctx("\"$string($request.r)\"", &ctx, "\"1\"");
	check_ctx("\"$string($request.r2)\"", &ctx, "\"2.5\"");
	check_ctx("\"$string($request.tiny)\"", &ctx, "\"1e-07\"");
	check_ctx("\"$string($request.t)\"", &ctx, "\"21.3\"");
	check_ctx("\"$string($request.hundred)\"", &ctx, "\"100\""); /* not "1e+02" */
	check_ctx("\"$string($request.sub)\"", &ctx, "\"5e-324\"");
	check_ctx("\"$string($request.s)\"", &ctx, "\"17\"");
	check_ctx("\"$string($request.b)\"", &ctx, "\"false\"");
	check_ctx("\"$string($request.nul)\"", &ctx, "null");
	check_ctx("\"$string($request.none)\"", &ctx, NULL);
	check_eval_error("\"$string($request.o)\"", &ctx, "$string: the value is an object");
	/* $number */
	check_ctx("\"$number($request.s)\"", &ctx, "17");
	check_ctx("\"$number($request.sr)\"", &ctx, "-5.0");
	check_ctx("\"$number($request.id)\"", &ctx, "42");
	check_ctx("\"$number($request.r)\"", &ctx, "1.0");
	check_ctx("\"$number($request.nul)\"", &ctx, "null");
	check_ctx("\"$number($request.none)\"", &ctx, NULL);
	check_eval_error("\"$number($request.bad)\"", &ctx, "\"12a\" is not a number");
	check_eval_error("\"$number($request.ws)\"", &ctx, "not a number");
	check_eval_error("\"$number($request.hex)\"", &ctx, "not a number");
	check_eval_error("\"$number($request.empty)\"", &ctx, "not a number");
	check_eval_error("\"$number($request.huge)\"", &ctx, "not a number");
	check_eval_error("\"$number($request.b)\"", &ctx, "a boolean");
	check_eval_error("\"$number($request.o)\"", &ctx, "an object");
	/* $json: any value as JSON text */
	check_ctx("\"$json($request.o)\"", &ctx, "\"{\\\"k\\\":[1,\\\"x\\\"]}\"");
	check_ctx("\"$json($request.s)\"", &ctx, "\"\\\"17\\\"\"");
	check_ctx("\"$json($request.nul)\"", &ctx, "\"null\"");
	check_ctx("\"$json($request.r)\"", &ctx, "\"1.0\"");
	/* the mirror body's writer: shortest, not jansson's 21.300000000000001 */
	check_ctx("\"$json($request.t)\"", &ctx, "\"21.3\"");
	check_ctx("\"$json($request.none)\"", &ctx, NULL);
	/* composed with ?? and with each other */
	check_ctx("\"$number($request.none ?? '3')\"", &ctx, "3");
	check_ctx("\"$string($number($request.s))\"", &ctx, "\"17\"");
	check_ctx("\"$number($request.none) ?? 0\"", &ctx, "0");
	/* a bad value is an error, not an absence: ?? does not hide it */
	check_eval_error("\"$number($request.bad) ?? 0\"", &ctx, "not a number");
	/* literal operands are converted once, at compile time */
	check_ctx("\"$number('12')\"", NULL, "12");
	check_ctx("\"$string(1.50)\"", NULL, "\"1.5\"");
	check_ctx("\"$json('x') ?? 1\"", NULL, "\"\\\"x\\\"\"");
	check_ctx("\"$string($number('12'))\"", NULL, "\"12\"");
	check_ctx("\"$json($string($number('1.0')) ?? 2)\"", NULL, "\"\\\"1\\\"\"");
	check_ctx("\"${$string($number('7' ?? 1))}\"", NULL, "\"7\"");
	json_decref(req);
}

static void test_operator_errors(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		const char *needle;
	} bad[] = {
		{ "\"$int($request.id)\"", "unknown operator \"$int(...)\"" },
		{ "\"$strings($request.id)\"", "unknown operator" },
		{ "\"$request(x)\"", "unknown operator" },
		{ "\"$string($request.id\"", "expected ')'" },
		{ "\"$string($request.a, $request.b)\"", "takes one value" },
		{ "\"$string()\"", "expected a $reference" },
		{ "\"$number('abc')\"", "\"abc\" is not a number" },
		{ "\"$string($number('abc'))\"", "\"abc\" is not a number" },
		{ "\"$string({})\"", "$string: the value is an object" },
		{ "\"$request.a ?? [ ]\"", "expected a $reference" },
		{ "\"$request.a ?? {x}\"", "expected a $reference" },
		{ "\"$request.a ??\"", "expected a $reference" },
		{ "\"$request.a ?? 'x\"", "unterminated" },
		{ "\"$request.a 'x'\"", "unexpected text" },
		{ "\"$request.a ? 'x'\"", "expected \"??\"" },
		{ "\"$request.a ?? nope\"", "expected a $reference" },
		{ "\"$request.a ?? 1.\"", "expected a $reference" },
		{ "\"$request.a ?? 01\"", "expected a $reference" },
		{ "\"$request.a ?? $foo\"", "unknown source" },
		{ "\"$item.id\"", "$item is only available in the body of an \"each\"" },
		{ "\"$request.a ?? $item\"", "$item is only available" },
		{ "\"tpl-${$item.type}\"", "$item is only available" },
		{ "\"tpl-${request.type}\"", "expected a $reference" },
		{ "\"tpl-${}\"", "empty \"${}\"" },
		{ "\"tpl-${ }\"", "empty \"${}\"" },
		{ "\"tpl-${$request.type\"", "unclosed \"${\"" },
		{ "\"tpl-${$request.type $tenant}\"", "expected '}'" },
		{ "\"tpl-${$bogus}\"", "unknown source" },
		{ "\"tpl-${$number('z')}\"", "is not a number" },
		{ "\"$string($string($string($string($string($string($string($string($string("
		  "$string($string($string($string($string($string($string($string($string("
		  "$string($string($string($string($string($string($string($string($string("
		  "$string($string($string($string($string($string($string(1))))))))))))))))"
		  ")))))))))))))))))\"",
		  "nested too deeply" },
		{ "{ a = ( 1, { b = \"x${$request.y\"; } ); }", "v.a[1].b: bad expression" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct dw_err err = { { 0 } };
		struct expr *e = expr_compile(setting(bad[i].text), EXPR_SRC_HTTP, &err);
		if (e)
			fail_msg("%s compiled but should not", bad[i].text);
		if (!strstr(err.msg, bad[i].needle))
			fail_msg("%s: error \"%s\" lacks \"%s\"", bad[i].text, err.msg, bad[i].needle);
		assert_non_null(strstr(err.msg, "line 1"));
	}
	/* $item outside a mapping is rejected even where everything else goes */
	struct dw_err err = { { 0 } };
	assert_null(expr_compile_str("$item", ~0u & ~(unsigned)EXPR_SRC_ITEM, &err));
	assert_non_null(strstr(err.msg, "only available"));
	/* path templates cannot use $item either */
	assert_null(tmpl_compile("/x/{item.id}", EXPR_SRC_HTTP, &err));
}

/* Compile the mapping in group text ("{ each = ...; body = ...; }"). */
static struct expr *mapping(const char *text, struct dw_err *err, int *line)
{
	struct expr_opts o = { .allowed = EXPR_SRC_HTTP };
	struct expr *e = (struct expr *)0x1;
	int rc = expr_compile_mapping(setting(text), &o, &e, err);

	if (line)
		*line = o.line;
	if (rc < 0) {
		assert_null(e);
		return NULL;
	}
	return e;
}

static void check_mapping(const char *text, const struct expr_ctx *ctx, const char *want)
{
	struct dw_err err = { { 0 } };
	struct expr *e = mapping(text, &err, NULL);

	if (!e)
		fail_msg("mapping %s: %s", text, err.msg);
	check_eval(e, ctx, want);
	expr_free(e);
}

static void check_mapping_error(const char *text, const struct expr_ctx *ctx, const char *needle)
{
	struct dw_err err = { { 0 } };
	struct expr *e = mapping(text, &err, NULL);
	json_t *out = (json_t *)0x1;

	if (!e)
		fail_msg("mapping %s: %s", text, err.msg);
	assert_int_equal(expr_eval(e, ctx, &out, &err), EXPR_ERROR);
	assert_null(out);
	if (!strstr(err.msg, needle))
		fail_msg("%s: error \"%s\" lacks \"%s\"", text, err.msg, needle);
	expr_free(e);
}

static void test_each(void **state)
{
	(void)state;
	json_t *batch = parse("[{\"deviceId\": \"d1\", \"value\": 1.5, \"source\": \"s\"},"
			      " {\"deviceId\": \"d2\", \"value\": 2, \"source\": null},"
			      " {\"deviceId\": 3, \"value\": 3}]");
	json_t *wrapped = parse("{\"items\": [{\"id\": 1}, {\"id\": 2}], \"obj\": {\"a\": 1},"
				" \"empty\": [], \"nul\": null, \"s\": \"x\"}");
	struct expr_ctx ctx = { .request = batch, .tenant = "t1" };
	struct expr_ctx wctx = { .request = wrapped, .tenant = "t1" };

	/* the request body is the list; a body group per element */
	check_mapping("{ each = \"$request\"; body = { deviceId = \"$string($item.deviceId)\";"
		      " value = \"$item.value\"; tenantId = \"$tenant\";"
		      " source = \"$item.source ?? 'migrated'\"; quality = \"GOOD\"; }; }",
		      &ctx,
		      "[{\"deviceId\":\"d1\",\"value\":1.5,\"tenantId\":\"t1\",\"source\":\"s\","
		      "\"quality\":\"GOOD\"},"
		      "{\"deviceId\":\"d2\",\"value\":2,\"tenantId\":\"t1\",\"source\":\"migrated\","
		      "\"quality\":\"GOOD\"},"
		      "{\"deviceId\":\"3\",\"value\":3,\"tenantId\":\"t1\",\"source\":\"migrated\","
		      "\"quality\":\"GOOD\"}]");
	/* base/drop per element: the element itself, minus a field, plus the tenant */
	check_mapping("{ each = \"$request\"; base = \"$item\"; drop = [ \"source\" ];"
		      " body = { tenantId = \"$tenant\"; }; }",
		      &ctx,
		      "[{\"deviceId\":\"d1\",\"value\":1.5,\"tenantId\":\"t1\"},"
		      "{\"deviceId\":\"d2\",\"value\":2,\"tenantId\":\"t1\"},"
		      "{\"deviceId\":3,\"value\":3,\"tenantId\":\"t1\"}]");
	/* a non-group body: a list of values */
	check_mapping("{ each = \"$request\"; body = \"$item.deviceId\"; }", &ctx,
		      "[\"d1\",\"d2\",3]");
	/* a field of the request; other sources stay usable in the body */
	check_mapping("{ each = \"$request.items\"; body = { id = \"$item.id\"; s = \"$request.s\";"
		      " whole = \"$item\"; }; }",
		      &wctx, "[{\"id\":1,\"s\":\"x\",\"whole\":{\"id\":1}},"
			     "{\"id\":2,\"s\":\"x\",\"whole\":{\"id\":2}}]");
	check_mapping("{ each = \"$request.empty\"; body = { id = \"$item.id\"; }; }", &wctx, "[]");
	check_mapping("{ each = \"$request.none ?? $request.items\"; body = \"$item.id\"; }", &wctx,
		      "[1,2]");
	/* the source list is not changed by the mapping */
	json_t *before = json_deep_copy(batch);
	check_mapping("{ each = \"$request\"; base = \"$item\"; body = { x = 1; }; }", &ctx,
		      "[{\"deviceId\":\"d1\",\"value\":1.5,\"source\":\"s\",\"x\":1},"
		      "{\"deviceId\":\"d2\",\"value\":2,\"source\":null,\"x\":1},"
		      "{\"deviceId\":3,\"value\":3,\"x\":1}]");
	assert_true(json_equal(before, batch));
	json_decref(before);

	/* a source that is not a list, or elements that cannot be mapped, fail
	 * the whole batch with the reason (never a partial batch) */
	check_mapping_error("{ each = \"$request.obj\"; body = { a = \"$item.a\"; }; }", &wctx,
			    "each: \"$request.obj\" is an object, not a list");
	check_mapping_error("{ each = \"$request.nul\"; body = { a = 1; }; }", &wctx, "is null");
	check_mapping_error("{ each = \"$request.none\"; body = { a = 1; }; }", &wctx,
			    "is missing, not a list");
	check_mapping_error("{ each = \"$request.s\"; body = { a = 1; }; }", &wctx, "a string");
	check_mapping_error("{ each = \"$request\"; body = { a = 1; }; }", &wctx, "an object");
	check_mapping_error("{ each = \"$request\"; body = \"$item.source\"; }", &ctx,
			    "each: element 2 maps to nothing");
	json_t *mixed = parse("[{\"id\": 1}, 5]");
	struct expr_ctx mctx = { .request = mixed };
	/* a document per element needs object elements; a value per element does not */
	check_mapping_error("{ each = \"$request\"; body = { id = \"$item.id\"; }; }", &mctx,
			    "each: element 1 is a number, not an object");
	check_mapping_error("{ each = \"$request\"; base = \"$item\"; }", &mctx,
			    "each: element 1 is a number, not an object");
	check_mapping("{ each = \"$request\"; body = \"$item\"; }", &mctx, "[{\"id\":1},5]");
	json_decref(mixed);
	check_mapping_error("{ each = \"$request\"; body = { v = \"$number($item.deviceId)\"; }; }",
			    &ctx, "each: element 0: $number: \"d1\" is not a number");
	struct expr_ctx bad_tenant = { .request = batch };
	check_mapping_error("{ each = \"$request\"; body = { t = \"$tenant\"; }; }", &bad_tenant,
			    "bad tenant");

	/* without each: the classic forms, and nothing at all */
	check_mapping("{ body = { a = \"$request.s\"; }; }", &wctx, "{\"a\":\"x\"}");
	check_mapping("{ body = \"$request.items\"; }", &wctx, "[{\"id\":1},{\"id\":2}]");
	check_mapping("{ base = \"$request\"; drop = [ \"items\", \"obj\", \"empty\", \"nul\" ]; }",
		      &wctx, "{\"s\":\"x\"}");
	struct dw_err err = { { 0 } };
	assert_null(mapping("{ upstream = \"x\"; }", &err, NULL));
	assert_string_equal(err.msg, "");

	/* sources: $item is internal, the each source and the body count */
	struct expr *e = mapping("{ each = \"$request\"; body = { t = \"$tenant\"; i = \"$item\"; }; }",
				 &err, NULL);
	assert_non_null(e);
	assert_int_equal(expr_sources(e), EXPR_SRC_REQUEST | EXPR_SRC_TENANT);
	expr_free(e);
	json_decref(batch);
	json_decref(wrapped);
}

static void test_each_errors(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		const char *needle;
		int line;
	} bad[] = {
		{ "{ each = 1; body = { a = 1; }; }", "each: must be an expression giving a list", 1 },
		{ "{ each = \"items\"; body = { a = 1; }; }", "each: \"items\" cannot be a list", 1 },
		{ "{ each = \"x${$request.a}\"; body = { a = 1; }; }", "cannot be a list", 1 },
		{ "{ each = \"$request\"; }", "each: needs a body", 1 },
		{ "{ each = \"$item\"; body = { a = 1; }; }", "each: bad expression \"$item\": $item is only", 1 },
		{ "{ each = \"$requst\"; body = { a = 1; }; }", "each: bad expression \"$requst\"", 1 },
		{ "{ each = \"$request\";\n body = {\n a = \"$item.x ?? $oops\"; }; }", "body.a: bad expression", 3 },
		{ "{ each = \"$request\";\n base = \"$tenant\"; }", "base: \"$tenant\" is not a document", 2 },
		{ "{ each = \"$request\";\n drop = [ \"x\" ]; }", "drop: \"drop\" needs a \"base\"", 2 },
		{ "{ each = \"$request\"; base = \"$item\";\n body = 1; }", "body: must be a group", 2 },
		{ "{ body = {\n x = \"$item.id\"; }; }", "body.x: bad expression \"$item.id\": $item is only available", 2 },
		{ "{ base = \"$item\"; }", "$item is only available", 1 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct dw_err err = { { 0 } };
		int line = -1;
		if (mapping(bad[i].text, &err, &line))
			fail_msg("%s compiled but should not", bad[i].text);
		if (!strstr(err.msg, bad[i].needle))
			fail_msg("%s: error \"%s\" lacks \"%s\"", bad[i].text, err.msg, bad[i].needle);
		if (line != bad[i].line)
			fail_msg("%s: line %d, want %d", bad[i].text, line, bad[i].line);
	}
}

/* ---------------------------------------------------------------- path refs */

static void collect(void *arg, const char *name)
{
	char *buf = arg;
	strcat(buf, name);
	strcat(buf, ",");
}

static void test_path_refs(void **state)
{
	(void)state;
	char buf[128] = "";
	struct dw_err err = { { 0 } };
	struct expr *e = compile("{ a = \"$path.id\"; b = [ \"$path.uid\" ]; c = \"$request.x\"; }",
				 EXPR_SRC_HTTP);
	expr_path_refs(e, collect, buf);
	assert_string_equal(buf, "id,uid,");
	expr_free(e);

	buf[0] = '\0';
	struct tmpl *t = tmpl_compile("/u/{uid}/x/{path.id}/{response.id}", EXPR_SRC_HTTP, &err);
	assert_non_null(t);
	tmpl_path_refs(t, collect, buf);
	assert_string_equal(buf, "uid,id,");
	tmpl_free(t);
}

/* ---------------------------------------------------------------- templates */

static void check_render(const char *tpl, const struct expr_ctx *ctx, const char *want)
{
	struct dw_err err = { { 0 } };
	struct tmpl *t = tmpl_compile(tpl, EXPR_SRC_HTTP, &err);
	char *out = NULL;
	int rc;

	if (!t)
		fail_msg("tmpl %s: %s", tpl, err.msg);
	rc = tmpl_render(t, ctx, &out, &err);
	if (want) {
		if (rc != EXPR_OK)
			fail_msg("render %s: %s", tpl, err.msg);
		assert_string_equal(out, want);
	} else {
		assert_int_equal(rc, EXPR_ERROR);
		assert_null(out);
		assert_true(err.msg[0] != '\0');
	}
	free(out);
	tmpl_free(t);
}

static void test_templates(void **state)
{
	(void)state;
	json_t *resp = parse("{\"id\": 42, \"slug\": \"a/b c\", \"empty\": \"\", \"o\": {}}");
	const char *names[] = { "id", "dots", "one" };
	const char *values[] = { "x y/z?#%", "..", "." };
	const char *q = "page=2";
	struct expr_ctx ctx = { .response = resp,
				.path_names = names,
				.path_values = values,
				.npath = 3,
				.query = q,
				.query_len = strlen(q),
				.tenant = "acme" };

	check_render("/gear-items", &ctx, "/gear-items");
	check_render("/gear-items/{response.id}", &ctx, "/gear-items/42");
	check_render("/devices/{id}", &ctx, "/devices/x%20y%2Fz%3F%23%25");
	check_render("/devices/{path.id}/x", &ctx, "/devices/x%20y%2Fz%3F%23%25/x");
	check_render("/t/{tenant}/{response.slug}", &ctx, "/t/acme/a%2Fb%20c");
	check_render("/p/{query.page}", &ctx, "/p/2");
	check_render("/a/{dots}/{one}", &ctx, "/a/%2E%2E/%2E");
	check_render("/a/{id2}", &ctx, NULL);		   /* missing capture */
	check_render("/a/{response.nope}", &ctx, NULL);	   /* missing field */
	check_render("/a/{response.empty}", &ctx, NULL);   /* empty segment */
	check_render("/a/{response.o}", &ctx, NULL);	   /* not a scalar */
	ctx.tenant = NULL;
	check_render("/t/{tenant}", &ctx, NULL);	   /* bad tenant */

	static const char *const bad[] = { "/x/{", "/x/}", "/x/{}", "/x/{a{b}}", "/x/{$path.id}",
					   "/x/{foo.bar}", "/x/{path.1}", "/x/{row.id}",
					   "/x y", "/x\r\n", "/\xc3\xbc" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct dw_err err = { { 0 } };
		struct tmpl *t = tmpl_compile(bad[i], EXPR_SRC_HTTP, &err);
		if (t)
			fail_msg("template %s compiled but should not", bad[i]);
		assert_true(err.msg[0] != '\0');
	}

	struct dw_err err = { { 0 } };
	struct tmpl *t = tmpl_compile("/a/{id}/{response.id}", EXPR_SRC_HTTP, &err);
	assert_int_equal(tmpl_sources(t), EXPR_SRC_PATH | EXPR_SRC_RESPONSE);
	tmpl_free(t);
	tmpl_free(NULL);
	json_decref(resp);
}

static void test_query_decode(void **state)
{
	(void)state;
	size_t len;
	char *s = expr_query_decode("a+b%20c%2B", 10, &len);

	assert_non_null(s);
	assert_string_equal(s, "a b c+");
	assert_int_equal(len, 6);
	free(s);
	assert_null(expr_query_decode("%2", 2, &len));
	assert_null(expr_query_decode("%g0", 3, &len));
	s = expr_query_decode("", 0, &len);
	assert_string_equal(s, "");
	free(s);
}

/* The literal beginning of an expression's string values (read-your-writes
 * pins that do not evaluate pin every key that begins so). */
static void test_literal_prefix(void **state)
{
	(void)state;
	static const struct {
		const char *text, *prefix;
	} cases[] = {
		{ "\"user:${$response.user_id}\"", "user:" },
		{ "\"t-${$tenant}:u-${$request.id}\"", "t-" },
		{ "\"$request.id\"", "" },
		{ "\"${$request.id}:x\"", "" },
		{ "\"plain\"", "plain" },
		{ "\"$${x}${$request.id}\"", "${x}" }, /* "$${" is literal text */
		{ "\"$$${$request.id}\"", "$" },
		{ "7", "" },
	};
	char buf[8];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct expr *e = compile(cases[i].text, EXPR_SRC_HTTP);
		char big[64];

		assert_int_equal(expr_literal_prefix(e, big, sizeof(big)), strlen(cases[i].prefix));
		assert_string_equal(big, cases[i].prefix);
		expr_free(e);
	}
	/* cut to fit: still a prefix */
	struct expr *e = compile("\"a-long-prefix:${$request.id}\"", EXPR_SRC_HTTP);
	assert_int_equal(expr_literal_prefix(e, buf, sizeof(buf)), 7);
	assert_string_equal(buf, "a-long-");
	assert_int_equal(expr_literal_prefix(NULL, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "");
	expr_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_literals, teardown_cfgs),
		cmocka_unit_test_teardown(test_references, teardown_cfgs),
		cmocka_unit_test_teardown(test_now_from_clock, teardown_cfgs),
		cmocka_unit_test_teardown(test_tenant, teardown_cfgs),
		cmocka_unit_test_teardown(test_missing, teardown_cfgs),
		cmocka_unit_test_teardown(test_compile_errors, teardown_cfgs),
		cmocka_unit_test_teardown(test_compile_opts, teardown_cfgs),
		cmocka_unit_test_teardown(test_eval_string, teardown_cfgs),
		cmocka_unit_test_teardown(test_seed_gear, teardown_cfgs),
		cmocka_unit_test_teardown(test_seed_iot, teardown_cfgs),
		cmocka_unit_test_teardown(test_document, teardown_cfgs),
		cmocka_unit_test_teardown(test_path_refs, teardown_cfgs),
		cmocka_unit_test_teardown(test_templates, teardown_cfgs),
		cmocka_unit_test_teardown(test_query_decode, teardown_cfgs),
		cmocka_unit_test_teardown(test_fallback, teardown_cfgs),
		cmocka_unit_test_teardown(test_interpolation, teardown_cfgs),
		cmocka_unit_test_teardown(test_conversions, teardown_cfgs),
		cmocka_unit_test_teardown(test_operator_errors, teardown_cfgs),
		cmocka_unit_test_teardown(test_each, teardown_cfgs),
		cmocka_unit_test_teardown(test_each_errors, teardown_cfgs),
		cmocka_unit_test_teardown(test_literal_prefix, teardown_cfgs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
