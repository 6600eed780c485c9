/*
 * test_config.c — configuration loading: the SPEC §3 example, defaults, the
 * shipped example configurations, and one broken file per kind of mistake,
 * each asserting the exact "file:line: where" of the report. Run from the
 * repository root (fixtures under tests/unit/conf/).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "confsyntax.h"
#include "tls.h"

#define FIX "tests/unit/conf/"

static struct dw_config *load_ok(const char *path)
{
	struct dw_errlist errs = { 0 };
	struct dw_config *c = config_load(path, &errs);

	if (!c || errs.n) {
		for (size_t i = 0; i < errs.n; i++)
			print_error("%s\n", errs.msgs[i]);
		fail_msg("%s did not load", path);
	}
	dw_errlist_free(&errs);
	return c;
}

static const struct dw_route *route_named(const struct dw_config *c, const char *name)
{
	for (size_t i = 0; i < c->nroutes; i++)
		if (strcmp(c->routes[i].name, name) == 0)
			return &c->routes[i];
	fail_msg("no route %s", name);
	return NULL;
}

static json_t *parse(const char *s)
{
	json_error_t je;
	json_t *v = json_loads(s, 0, &je);
	if (!v)
		fail_msg("bad test JSON: %s", je.text);
	return v;
}

static void assert_json(json_t *got, const char *want)
{
	json_t *w = parse(want);
	if (!json_equal(got, w)) {
		char *g = json_dumps(got, JSON_SORT_KEYS);
		fail_msg("got %s want %s", g, want);
	}
	json_decref(w);
}

/* ---------------------------------------------------------------- the SPEC example */

static void test_spec_example(void **state)
{
	(void)state;
	struct dw_config *c = load_ok(FIX "valid.conf");
	const struct dw_upstream *u;
	const struct dw_route *r;

	assert_int_equal(c->refcnt, 1);
	assert_string_equal(c->path, FIX "valid.conf");
	assert_int_equal(c->nlisten, 1);
	assert_string_equal(c->listen[0], "127.0.0.1:8080");
	assert_int_equal(c->workers, 2);
	assert_string_equal(c->admin_listen, "127.0.0.1:9901");
	assert_int_equal(c->limits.max_header_bytes, 16384);
	assert_int_equal(c->limits.max_body_bytes, 1048576);
	assert_int_equal(c->limits.header_timeout_ms, 10000);
	assert_int_equal(c->limits.body_timeout_ms, 30000);
	assert_int_equal(c->limits.idle_timeout_ms, 60000);
	assert_int_equal(c->limits.max_connections, 10000);
	assert_int_equal(c->limits.drain_timeout_ms, 10000);
	assert_int_equal(c->log_level, DW_LOG_INFO);

	assert_int_equal(c->nupstreams, 3);
	assert_int_equal(c->default_upstream, config_upstream_index(c, "legacy"));
	u = &c->upstreams[config_upstream_index(c, "legacy")];
	assert_false(u->tls);
	assert_string_equal(u->host, "127.0.0.1");
	assert_int_equal(u->port, 8000);
	assert_string_equal(u->host_header, "127.0.0.1:8000");
	assert_string_equal(u->base_path, "");
	assert_int_equal(u->timeout_ms, 5000);
	assert_int_equal(u->connect_timeout_ms, 2000);
	assert_int_equal(u->pool_size, 64);
	assert_int_equal(u->max_inflight, 64);
	assert_int_equal(u->pipeline_depth, 16);
	assert_int_equal(u->resolve_interval_s, 60);
	assert_int_equal(u->line, 15);
	u = &c->upstreams[config_upstream_index(c, "gear_ops")];
	assert_int_equal(u->timeout_ms, 2000);
	assert_int_equal(u->port, 8002);
	u = &c->upstreams[config_upstream_index(c, "v2")];
	assert_true(u->tls);
	assert_string_equal(u->host, "::1");
	assert_int_equal(u->port, 8443);
	assert_string_equal(u->host_header, "[::1]:8443");
	assert_string_equal(u->base_path, "/api/v2");
	assert_int_equal(config_upstream_index(c, "nope"), -1);

	assert_string_equal(c->queue.path, "/var/lib/dualwrite/queue");
	assert_int_equal(c->queue.durability, QUEUE_DURABILITY_PROCESS);
	assert_true(c->queue.max_bytes == 1ULL << 30);
	assert_null(c->queue.postgres);
	assert_string_equal(c->queue.table, "dualwrite_queue");
	assert_string_equal(c->tenant.header, "X-Tenant-ID");
	assert_string_equal(c->tenant.def, "default_tenant_id");

	assert_int_equal(c->nroutes, 2);
	r = route_named(c, "equipment-create");
	assert_string_equal(r->match, "POST /equipment");
	assert_non_null(r->mirror);
	assert_int_equal(r->mirror->upstream, config_upstream_index(c, "gear_ops"));
	assert_string_equal(r->mirror->method, "POST");
	assert_non_null(r->mirror->key);
	assert_non_null(r->mirror->body);
	assert_int_equal(r->mirror->sources,
			 EXPR_SRC_REQUEST | EXPR_SRC_RESPONSE | EXPR_SRC_TENANT);
	/* default classification */
	assert_int_equal(r->mirror->klass[200], MIRROR_DELIVERED);
	assert_int_equal(r->mirror->klass[201], MIRROR_DELIVERED);
	assert_int_equal(r->mirror->klass[299], MIRROR_DELIVERED);
	assert_int_equal(r->mirror->klass[100], MIRROR_PERMANENT);
	assert_int_equal(r->mirror->klass[301], MIRROR_PERMANENT);
	assert_int_equal(r->mirror->klass[400], MIRROR_PERMANENT);
	assert_int_equal(r->mirror->klass[404], MIRROR_PERMANENT);
	assert_int_equal(r->mirror->klass[409], MIRROR_PERMANENT);
	assert_int_equal(r->mirror->klass[408], MIRROR_RETRY);
	assert_int_equal(r->mirror->klass[429], MIRROR_RETRY);
	assert_int_equal(r->mirror->klass[500], MIRROR_RETRY);
	assert_int_equal(r->mirror->klass[503], MIRROR_RETRY);
	assert_int_equal(r->mirror->klass[599], MIRROR_RETRY);

	/* the mirror body, end to end */
	json_t *req = parse("{\"user_id\": 7, \"name\": \"Tent\", \"type\": \"tent\"}");
	json_t *resp = parse("{\"id\": 42}");
	struct expr_ctx ctx = { .request = req, .response = resp, .tenant = "acme" };
	struct dw_err err = { { 0 } };
	json_t *out = NULL;
	char *s = NULL;
	assert_int_equal(expr_eval(r->mirror->body, &ctx, &out, &err), EXPR_OK);
	assert_json(out, "{\"id\":42,\"user_id\":7,\"name\":\"Tent\",\"category\":\"tent\","
			 "\"status\":\"active\",\"role\":\"personal\",\"tenant_id\":\"acme\"}");
	json_decref(out);
	assert_int_equal(expr_eval_string(r->mirror->key, &ctx, &s, &err), EXPR_OK);
	assert_string_equal(s, "42");
	free(s);
	assert_int_equal(tmpl_render(r->mirror->path, &ctx, &s, &err), EXPR_OK);
	assert_string_equal(s, "/gear-items");
	free(s);

	r = route_named(c, "device-update");
	assert_null(r->mirror->method);
	assert_int_equal(r->mirror->upstream, config_upstream_index(c, "v2"));
	assert_int_equal(r->mirror->sources, EXPR_SRC_PATH | EXPR_SRC_REQUEST | EXPR_SRC_TENANT);

	/* routing */
	struct route_params rp = { 0 };
	assert_ptr_equal(config_route_match(c, "POST", 4, "/equipment", 10, &rp), &c->routes[0]);
	assert_int_equal(rp.n, 0);
	assert_ptr_equal(config_route_match(c, "PATCH", 5, "/devices/7", 10, &rp), &c->routes[1]);
	assert_int_equal(rp.n, 1);
	assert_string_equal(rp.values[0], "7");
	assert_null(config_route_match(c, "GET", 3, "/equipment", 10, NULL));
	assert_null(config_route_match(c, "PATCH", 5, "/devices/7/x", 12, NULL));

	/* the update mirror for that match */
	const char *names[] = { rp.names[0] };
	const char *values[] = { rp.values[0] };
	json_t *patch = parse("{\"name\": \"n\", \"type\": \"thermo\"}");
	struct expr_ctx uctx = { .request = patch,
				 .path_names = names,
				 .path_values = values,
				 .npath = 1,
				 .tenant = "default_tenant_id" };
	assert_int_equal(expr_eval(r->mirror->body, &uctx, &out, &err), EXPR_OK);
	assert_json(out, "{\"name\":\"n\",\"tenantId\":\"default_tenant_id\","
			 "\"metadata\":{\"migratedFrom\":\"v1\",\"originalType\":\"thermo\"}}");
	json_decref(out);
	assert_int_equal(expr_eval_string(r->mirror->key, &uctx, &s, &err), EXPR_OK);
	assert_string_equal(s, "7");
	free(s);
	assert_int_equal(tmpl_render(r->mirror->path, &uctx, &s, &err), EXPR_OK);
	assert_string_equal(s, "/devices/7");
	free(s);
	route_params_clear(&rp);

	json_decref(req);
	json_decref(resp);
	json_decref(patch);
	assert_int_equal(c->ntables, 0);
	assert_null(config_table(c, "equipment"));
	config_unref(c);
}

static void test_defaults(void **state)
{
	(void)state;
	struct dw_config *c = load_ok(FIX "minimal.conf");
	const struct dw_route *r;
	struct dw_err err = { { 0 } };
	char *s = NULL;

	assert_int_equal(c->nlisten, 2);
	assert_string_equal(c->listen[1], "[::1]:8080");
	assert_int_equal(c->workers, 1);
	assert_null(c->admin_listen);
	assert_int_equal(c->limits.max_body_bytes, 1048576);
	assert_int_equal(c->limits.drain_timeout_ms, 10000);
	assert_string_equal(c->tenant.def, "default");
	assert_string_equal(c->tenant.header, "X-Tenant-ID");
	assert_int_equal(c->log_level, DW_LOG_INFO);

	const struct dw_upstream *u = &c->upstreams[0];
	assert_int_equal(u->port, 80);
	assert_string_equal(u->host_header, "localhost");
	u = &c->upstreams[1];
	assert_true(u->tls);
	assert_int_equal(u->port, 443);
	assert_string_equal(u->host_header, "new.example");
	assert_string_equal(u->base_path, "/base");
	assert_int_equal(u->timeout_ms, 1000);
	assert_int_equal(u->connect_timeout_ms, 1000);
	assert_int_equal(u->pool_size, 0);
	assert_int_equal(u->pipeline_depth, 1);
	assert_int_equal(u->resolve_interval_s, 5);

	r = route_named(c, "thing-update");
	assert_int_equal(r->mirror->klass[409], MIRROR_RETRY);
	assert_int_equal(r->mirror->klass[404], MIRROR_DELIVERED);
	assert_int_equal(r->mirror->klass[503], MIRROR_PERMANENT);
	assert_int_equal(r->mirror->klass[500], MIRROR_RETRY);
	assert_int_equal(r->mirror->klass[400], MIRROR_PERMANENT);
	assert_null(r->mirror->method);
	/* no path: the request's own path, from the match */
	const char *names[] = { "id" };
	const char *values[] = { "a/b" };
	json_t *req = json_pack("{s:i}", "x", 1);
	struct expr_ctx ctx = { .request = req, .path_names = names, .path_values = values,
				.npath = 1 };
	assert_int_equal(tmpl_render(r->mirror->path, &ctx, &s, &err), EXPR_OK);
	assert_string_equal(s, "/things/a%2Fb");
	free(s);
	json_t *out = NULL;
	assert_int_equal(expr_eval(r->mirror->body, &ctx, &out, &err), EXPR_OK);
	assert_true(json_equal(out, req));
	json_decref(out);
	json_decref(req);

	r = route_named(c, "passthrough");
	assert_null(r->mirror);

	/* references */
	assert_ptr_equal(config_ref(c), c);
	assert_int_equal(c->refcnt, 2);
	config_unref(c);
	assert_int_equal(c->refcnt, 1);
	config_unref(c);
	config_unref(NULL);
}

/* ---------------------------------------------------------------- shipped examples */

static void test_example_gear(void **state)
{
	(void)state;
	struct dw_config *c = load_ok("conf/gear-ops.conf");
	const struct dw_table_map *t;
	const struct dw_route *r;

	assert_string_equal(c->listen[0], "127.0.0.1:8080");
	assert_string_equal(c->admin_listen, "127.0.0.1:9901");
	assert_string_equal(c->queue.path, "/var/lib/dualwrite/gear-ops");
	assert_string_equal(c->upstreams[c->default_upstream].name, "user_core");
	assert_int_equal(c->upstreams[c->default_upstream].port, 8000);
	assert_int_equal(c->upstreams[config_upstream_index(c, "gear_ops")].port, 8002);
	route_named(c, "equipment-create");
	route_named(c, "equipment-update");
	r = route_named(c, "equipment-delete");
	assert_null(r->mirror->body);
	r = route_named(c, "equipment-list");
	assert_null(r->mirror);
	assert_non_null(r->read);
	assert_int_equal(r->read->weight, 0); /* Phase 3 starts at 0 */
	assert_int_equal(r->read->upstream, config_upstream_index(c, "gear_ops"));
	assert_true(r->read->fallback);
	{
		/* gear_ops's list (a JSON array) back in user_core's shape */
		const char *names[] = { "id" }, *values[] = { "7" };
		struct expr_ctx ctx = { .path_names = names, .path_values = values, .npath = 1 };
		struct dw_err err = { { 0 } };
		json_t *resp = parse("[{\"id\":3,\"user_id\":7,\"name\":\"n\",\"category\":\"bike\","
				     "\"brand\":\"b\",\"status\":\"active\",\"role\":\"personal\","
				     "\"created_at\":\"t\",\"updated_at\":\"u\"}]");
		json_t *out = NULL;
		char *path = NULL;

		ctx.response = resp;
		assert_int_equal(expr_eval(r->read->response, &ctx, &out, &err), EXPR_OK);
		assert_json(out, "[{\"id\":3,\"user_id\":7,\"name\":\"n\",\"type\":\"bike\","
				 "\"brand\":\"b\",\"created_at\":\"t\"}]");
		json_decref(out);
		json_decref(resp);
		assert_int_equal(tmpl_render(r->read->path, &ctx, &path, &err), EXPR_OK);
		assert_string_equal(path, "/gear-items?user_id=7");
		free(path);
	}
	assert_non_null(route_named(c, "equipment-get")->read);

	t = config_table(c, "equipment");
	assert_non_null(t);
	assert_string_equal(t->source.table, "old_equipment");
	assert_string_equal(t->target.table, "gear_items");
	assert_string_equal(t->source.key, "id");
	assert_string_equal(t->source.dsn, "dbname=user_core");
	assert_string_equal(t->target.dsn, "dbname=gear_ops");
	assert_int_equal(t->ncolumns, 9);
	assert_string_equal(t->column_names[3], "category");
	assert_false(config_table_compares(t, "updated_at")); /* owned by gear_ops */
	assert_true(config_table_compares(t, "category"));

	/* the seed's §2.2 migrate_equipment_batch, row by row */
	json_t *row = parse("{\"id\": 5, \"user_id\": 7, \"name\": \"Stove\", \"type\": \"cooking\","
			    " \"brand\": \"MSR\", \"created_at\": \"2024-01-01T00:00:00Z\"}");
	struct expr_ctx ctx = { .row = row, .tenant = "default" };
	json_t *obj = json_object();
	for (size_t i = 0; i < t->ncolumns; i++) {
		json_t *v = NULL;
		struct dw_err err = { { 0 } };
		assert_int_equal(expr_eval(t->columns[i], &ctx, &v, &err), EXPR_OK);
		json_object_set_new(obj, t->column_names[i], v);
	}
	assert_json(obj, "{\"id\":5,\"user_id\":7,\"name\":\"Stove\",\"category\":\"cooking\","
			 "\"brand\":\"MSR\",\"status\":\"active\",\"role\":\"personal\","
			 "\"created_at\":\"2024-01-01T00:00:00Z\","
			 "\"updated_at\":\"2024-01-01T00:00:00Z\"}");
	json_decref(obj);
	json_decref(row);
	config_unref(c);
}

static void test_example_iot(void **state)
{
	(void)state;
	struct dw_config *c = load_ok("conf/iot-v2.conf");
	const struct dw_table_map *t;
	const struct dw_route *r;
	struct dw_err err = { { 0 } };
	json_t *out = NULL;

	assert_string_equal(c->listen[0], "127.0.0.1:8081");
	assert_string_equal(c->admin_listen, "127.0.0.1:9902");
	assert_string_equal(c->queue.path, "/var/lib/dualwrite/iot-v2");
	assert_string_equal(c->tenant.def, "default_tenant_id");
	assert_int_equal(c->upstreams[c->default_upstream].port, 8010);
	assert_int_equal(c->upstreams[config_upstream_index(c, "v2")].port, 8012);

	/* the guide's DualWriteMiddleware.writeDevice: V1 body + tenantId ... */
	r = route_named(c, "device-create");
	json_t *req = parse("{\"name\": \"S1\", \"type\": \"thermo\", \"config\": {\"i\": 30}}");
	json_t *resp = parse("{\"id\": \"dev-1\", \"status\": \"ACTIVE\", \"created_at\": \"t0\","
			     " \"updated_at\": \"t1\"}");
	struct expr_ctx ctx = { .request = req, .response = resp, .tenant = "default_tenant_id" };
	assert_int_equal(expr_eval(r->mirror->body, &ctx, &out, &err), EXPR_OK);
	/* ... and V1's status and timestamps, so that the row reads the same on V2 */
	assert_json(out, "{\"id\":\"dev-1\",\"name\":\"S1\",\"tenantId\":\"default_tenant_id\","
			 "\"templateId\":\"thermo\",\"attributes\":{\"i\":30},"
			 "\"metadata\":{\"migratedFrom\":\"v1\",\"originalType\":\"thermo\"},"
			 "\"status\":\"ACTIVE\",\"createdAt\":\"t0\",\"updatedAt\":\"t1\"}");
	json_decref(out);
	json_decref(req);
	json_decref(resp);

	/* the guide's migrateTelemetry row mapping, on every row of a batch */
	r = route_named(c, "telemetry-batch");
	assert_null(r->mirror->key);
	req = parse("[{\"deviceId\": \"d1\", \"timestamp\": \"2024-01-01T00:00:00Z\","
		    " \"data\": {\"t\": 21.5}, \"protocol\": \"mqtt\", \"source\": \"gw\"},"
		    " {\"deviceId\": \"d2\", \"timestamp\": \"2024-01-01T00:00:01Z\","
		    " \"data\": {\"t\": 1}, \"protocol\": \"http\", \"source\": null}]");
	struct expr_ctx bctx = { .request = req, .tenant = "acme" };
	assert_int_equal(expr_eval(r->mirror->body, &bctx, &out, &err), EXPR_OK);
	assert_json(out, "[{\"tenantId\":\"acme\",\"deviceId\":\"d1\","
			 "\"timestamp\":\"2024-01-01T00:00:00Z\",\"metrics\":{\"t\":21.5},"
			 "\"protocol\":\"mqtt\",\"source\":\"gw\",\"quality\":\"GOOD\"},"
			 "{\"tenantId\":\"acme\",\"deviceId\":\"d2\","
			 "\"timestamp\":\"2024-01-01T00:00:01Z\",\"metrics\":{\"t\":1},"
			 "\"protocol\":\"http\",\"source\":\"migrated\",\"quality\":\"GOOD\"}]");
	json_decref(out);
	json_decref(req);
	r = route_named(c, "telemetry-ingest");
	/* V1 stamps a reading sent without a timestamp: the mirror takes V1's */
	req = parse("{\"deviceId\": \"d1\", \"data\": {}, \"protocol\": \"mqtt\"}");
	resp = parse("{\"deviceId\": \"d1\", \"timestamp\": \"t0\"}");
	bctx.request = req;
	bctx.response = resp;
	assert_int_equal(expr_eval(r->mirror->body, &bctx, &out, &err), EXPR_OK);
	json_decref(resp);
	assert_json(out, "{\"tenantId\":\"acme\",\"deviceId\":\"d1\",\"timestamp\":\"t0\","
			 "\"metrics\":{},\"protocol\":\"mqtt\",\"source\":\"migrated\","
			 "\"quality\":\"GOOD\"}");
	json_decref(out);
	json_decref(req);

	r = route_named(c, "device-update");
	assert_int_equal(r->mirror->sources,
			 EXPR_SRC_PATH | EXPR_SRC_REQUEST | EXPR_SRC_RESPONSE | EXPR_SRC_TENANT);
	assert_null(route_named(c, "device-delete")->mirror->body);

	assert_non_null(route_named(c, "user-create")->mirror);
	assert_non_null(route_named(c, "user-update")->mirror);
	assert_non_null(route_named(c, "user-delete")->mirror);
	t = config_table(c, "users");
	assert_non_null(t);
	assert_int_equal(t->target.nwhere, 1);
	assert_string_equal(t->target.where_cols[0], "tenant_id");
	assert_string_equal(t->target.where_vals[0], "$tenant");
	/* telemetry: a composite key, the same on both sides */
	t = config_table(c, "telemetry");
	assert_non_null(t);
	assert_int_equal(t->source.nkeys, 2);
	assert_int_equal(t->target.nkeys, 2);
	assert_string_equal(t->source.keys[0], "device_id");
	assert_string_equal(t->source.keys[1], "timestamp");
	assert_string_equal(t->target.key, "device_id");
	assert_ptr_equal(t->target.key, t->target.keys[0]);

	t = config_table(c, "devices");
	assert_non_null(t);
	json_t *row = parse("{\"id\": \"d1\", \"name\": \"S1\", \"type\": \"thermo\","
			    " \"config\": {\"i\": 30}, \"status\": \"OFF\", \"created_at\": \"t0\","
			    " \"updated_at\": null}");
	struct expr_ctx rctx = { .row = row, .tenant = "default_tenant_id" };
	json_t *obj = json_object();
	for (size_t i = 0; i < t->ncolumns; i++) {
		json_t *v = NULL;
		assert_int_equal(expr_eval(t->columns[i], &rctx, &v, &err), EXPR_OK);
		json_object_set_new(obj, t->column_names[i], v);
	}
	assert_json(obj, "{\"id\":\"d1\",\"name\":\"S1\",\"tenant_id\":\"default_tenant_id\","
			 "\"template_id\":\"thermo\",\"attributes\":{\"i\":30},"
			 "\"metadata\":{\"migratedFrom\":\"v1\",\"originalType\":\"thermo\"},"
			 "\"status\":\"OFF\",\"created_at\":\"t0\",\"updated_at\":null}");
	json_decref(obj);
	json_decref(row);

	/* Reads: V2 answers for the caller's tenant, mapped back to V1's shape; shipped at 0. */
	const struct dw_read *rd = route_named(c, "device-get")->read;
	const char *names[] = { "id" }, *values[] = { "dev-7" };
	struct expr_ctx gctx = { .path_names = names, .path_values = values, .npath = 1,
				 .tenant = "acme" };
	char *path = NULL;
	assert_non_null(rd);
	assert_int_equal(rd->upstream, config_upstream_index(c, "v2"));
	assert_int_equal(rd->weight, 0);
	assert_true(rd->fallback);
	assert_int_equal(tmpl_render(rd->path, &gctx, &path, &err), EXPR_OK);
	assert_string_equal(path, "/devices/dev-7?tenantId=acme");
	free(path);
	resp = parse("{\"id\":\"dev-7\",\"tenantId\":\"acme\",\"name\":\"S\","
		     "\"templateId\":\"cam\",\"attributes\":{},\"metadata\":{\"migratedFrom\":\"v1\"},"
		     "\"status\":\"ACTIVE\",\"createdAt\":\"t0\",\"updatedAt\":null}");
	gctx.response = resp;
	assert_int_equal(expr_eval(rd->response, &gctx, &out, &err), EXPR_OK);
	assert_json(out, "{\"id\":\"dev-7\",\"name\":\"S\",\"type\":\"cam\",\"config\":{},"
			 "\"status\":\"ACTIVE\",\"created_at\":\"t0\",\"updated_at\":null}");
	json_decref(out);
	/* the list: V2's array, element by element */
	rd = route_named(c, "device-list")->read;
	json_t *list = json_pack("[O]", resp);
	gctx.response = list;
	assert_int_equal(expr_eval(rd->response, &gctx, &out, &err), EXPR_OK);
	assert_json(out, "[{\"id\":\"dev-7\",\"name\":\"S\",\"type\":\"cam\",\"config\":{},"
			 "\"status\":\"ACTIVE\",\"created_at\":\"t0\",\"updated_at\":null}]");
	json_decref(out);
	json_decref(list);
	json_decref(resp);
	assert_null(rd->sticky); /* each list read draws, as the guide's shouldUseV2() */
	assert_int_equal(tmpl_render(rd->path, &gctx, &path, &err), EXPR_OK);
	assert_string_equal(path, "/devices?tenantId=acme");
	free(path);
	assert_int_equal(route_named(c, "user-get")->read->weight, 0);
	config_unref(c);
}

/* ---------------------------------------------------------------- read routes */

static void test_read_routes(void **state)
{
	(void)state;
	struct dw_config *c = load_ok(FIX "read_ok.conf");
	const struct dw_route *r = route_named(c, "equipment-list");
	const struct dw_read *rd = r->read;
	const char *names[] = { "user_id" }, *values[] = { "u 7" };
	struct expr_ctx ctx = { .path_names = names, .path_values = values, .npath = 1 };
	struct dw_err err = { { 0 } };
	json_t *resp, *out = NULL;
	char *path = NULL;

	assert_non_null(rd);
	assert_null(r->mirror);
	assert_int_equal(rd->upstream, config_upstream_index(c, "gear_ops"));
	assert_int_equal(rd->weight, 1250);
	assert_int_equal(rd->shadow, 500);
	assert_false(rd->fallback);
	assert_non_null(rd->sticky);
	assert_non_null(rd->key);
	assert_int_equal(rd->ncompare_ignore, 2);
	assert_string_equal(rd->compare_ignore[1], "etag");
	assert_true(rd->compare_unordered);
	assert_null(rd->state);
	assert_int_equal(tmpl_render(rd->path, &ctx, &path, &err), EXPR_OK);
	assert_string_equal(path, "/gear-items?user_id=u%207");
	free(path);

	/* the list case: each element mapped, category -> type */
	resp = parse("{\"items\":[{\"id\":1,\"user_id\":\"7\",\"name\":\"a\",\"category\":\"bike\","
		     "\"brand\":\"b\",\"created_at\":\"t\",\"status\":\"active\"}]}");
	ctx.response = resp;
	assert_int_equal(expr_eval(rd->response, &ctx, &out, &err), EXPR_OK);
	assert_json(out, "[{\"id\":1,\"user_id\":\"7\",\"name\":\"a\",\"type\":\"bike\","
			 "\"brand\":\"b\",\"created_at\":\"t\"}]");
	json_decref(out);
	json_decref(resp);
	/* a list that is not there: an error, never a partial answer */
	resp = parse("{\"error\":\"x\"}");
	ctx.response = resp;
	assert_int_equal(expr_eval(rd->response, &ctx, &out, &err), EXPR_ERROR);
	json_decref(resp);

	/* defaults: fallback on, weight 0, the client's path, no sticky */
	rd = route_named(c, "equipment-other")->read;
	assert_true(rd->fallback);
	assert_int_equal(rd->weight, 0);
	assert_null(rd->path);
	assert_null(rd->sticky);
	assert_null(rd->response);
	assert_int_equal(route_named(c, "equipment-one")->read->weight, 10000);
	config_unref(c);
}

/* ---------------------------------------------------------------- broken files */

struct broken {
	const char *file;   /* under FIX */
	const char *prefix; /* the first error starts with FIX file + this */
	size_t nerrs;	    /* exactly this many errors */
};

static const struct broken broken[] = {
	{ "syntax.conf", ":7: syntax error near ';': expected a value after 'workers ='", 1 },
	/* libconfig says only "syntax error"; these say what was expected where */
	{ "syntax_unit.conf", ":7: syntax error near 'GiB': expected ';' after the value of 'max_bytes' (a number takes no unit", 1 },
	{ "syntax_dotted.conf", ":5: syntax error near 'admin.listen': a setting name cannot contain '.'; write nested groups: admin = { listen = ...; };", 1 },
	{ "syntax_unclosed.conf", ":3: syntax error: the group '{' of 'upstreams' is never closed (a '}' is missing)", 1 },
	{ "syntax_string.conf", ":2: syntax error: the string that starts here runs on to a later line (a '\"' missing?); then at line 3: ", 1 },
	{ "syntax_list_comma.conf", ":9: syntax error near '{': expected ',' or ')' after an element of the list 'routes'", 1 },
	{ "syntax_bare_word.conf", ":4: syntax error near 'debug': expected a value after 'log_level =' (a string is written in double quotes: \"debug\")", 1 },
	/* libconfig's other parse errors keep their text, with the line shown */
	{ "syntax_dup.conf", ":4: duplicate setting name: listen = \"127.0.0.1:8081\";", 1 },
	{ "no_listen.conf", ": listen: missing", 1 },
	{ "bad_scheme.conf", ":4: upstream \"gear_ops\": url: \"ftp://127.0.0.1:8002\": unsupported scheme", 1 },
	{ "bad_url_port.conf", ":3: upstream \"legacy\": url: \"http://127.0.0.1:70000\": bad port", 1 },
	{ "bad_listen_port.conf", ":1: listen: \"127.0.0.1:0\": bad port", 1 },
	{ "url_userinfo.conf", ":4: upstream \"gear_ops\": url: ", 1 },
	{ "url_query.conf", ":4: upstream \"gear_ops\": url: ", 1 },
	{ "unknown_upstream.conf", ":12: route \"equipment-create\": mirror.upstream: unknown upstream \"nope\"", 1 },
	{ "mirror_default.conf", ":12: route \"equipment-create\": mirror.upstream: \"legacy\" is the default upstream", 1 },
	{ "bad_expr.conf", ":15: route \"equipment-create\": mirror.body.category: bad expression \"$foo\"", 1 },
	{ "bad_expr_trailing_dot.conf", ":13: route \"equipment-create\": mirror.key: bad expression \"$request.\"", 1 },
	{ "path_not_captured.conf", ":13: route \"equipment-update\": mirror.key: bad expression \"$path.x\": \"x\" is not a capture", 1 },
	{ "tmpl_not_captured.conf", ":13: route \"equipment-update\": mirror.path: template \"/gear-items/{gid}\"", 1 },
	{ "dup_route.conf", ":13: route \"equipment\": name: duplicate route name (first defined at line 8)", 1 },
	{ "shadowed.conf", ":14: route \"item-list\": match: \"GET /items/list\" can never match: shadowed by route \"item\" (line 8)", 1 },
	{ "unknown_key.conf", ":1: lisen: unknown key 'lisen' (did you mean 'listen'?)", 2 },
	{ "unknown_mirror_key.conf", ":13: route \"equipment-create\": mirror.bdy: unknown key 'bdy' (did you mean 'body'?)", 1 },
	{ "bad_durability.conf", ":7: queue.durability: \"fast\"", 1 },
	{ "bad_tenant.conf", ":7: tenant.default: \"bad tenant!\"", 1 },
	{ "drop_without_base.conf", ":13: route \"device-update\": mirror.drop: ", 1 },
	{ "bad_status.conf", ":13: route \"equipment-create\": mirror.retry[1]: status 600 is out of range", 1 },
	{ "status_twice.conf", ":14: route \"equipment-create\": mirror.permanent[0]: status 409 is also listed in retry (line 13)", 1 },
	{ "bad_workers.conf", ":7: workers: 0 is out of range (1..64)", 1 },
	{ "bad_pipeline_depth.conf", ":4: upstream \"gear_ops\": pipeline_depth: 0 is out of range (1..256)", 1 },
	{ "bad_resolve_interval.conf", ":4: upstream \"gear_ops\": resolve_interval_s: 0 is out of range (1..86400)", 1 },
	{ "bad_default_upstream.conf", ":6: default_upstream: unknown upstream \"legacyy\"", 1 },
	{ "bad_match.conf", ":10: route \"equipment-create\": match: \"POST equipment\"", 1 },
	{ "row_in_mirror.conf", ":13: route \"equipment-create\": mirror.body.id: bad expression \"$row.id\": $row is not available here", 1 },
	{ "bad_base.conf", ":13: route \"device-update\": mirror.base: \"$tenant\" is not a document", 1 },
	{ "bad_queue_table.conf", ":7: queue.table: \"Queue-Table\"", 1 },
	{ "bad_log_level.conf", ":7: log_level: \"verbose\"", 1 },
	{ "table_bad_expr.conf", ":14: table \"equipment\": columns.name: bad expression \"$request.name\": $request is not available here", 1 },
	{ "table_dup.conf", ":15: table \"t\": name: duplicate table name (first defined at line 8)", 1 },
	{ "table_ignore_bad.conf", ":13: table \"t\": ignore: \"colour\" is not a column in columns", 2 },
	{ "table_key_mismatch.conf", ":10: table \"telemetry\": target.key: 1 columns, but the source key has 2", 1 },
	{ "table_key_bad_elem.conf", ":10: table \"telemetry\": source.key[1]: \"device_id\" is listed twice", 2 },
	{ "table_key_empty.conf", ":9: table \"telemetry\": source.key: 0 columns: a key has 1 to 8", 2 },
	{ "table_where_bad.conf", ":10: table \"telemetry\": source.where: only the target side takes a where", 3 },
	{ "item_outside_each.conf", ":14: route \"telemetry-batch\": mirror.body.deviceId: bad expression \"$item.deviceId\": $item is only available in the body of an \"each\" mapping", 1 },
	{ "bad_operator.conf", ":16: route \"telemetry-batch\": mirror.body.value: bad expression \"$float($item.value)\": unknown operator \"$float(...)\"", 1 },
	{ "bad_interpolation.conf", ":15: route \"telemetry-batch\": mirror.body.templateId: bad expression \"tpl-${$item.type\": unclosed \"${\"", 1 },
	{ "bad_conversion.conf", ":15: route \"telemetry-batch\": mirror.body.value: bad expression \"$number('high')\": $number: \"high\" is not a number", 1 },
	{ "each_not_list.conf", ":13: route \"telemetry-batch\": mirror.each: \"rows\" cannot be a list", 1 },
	{ "read_default_upstream.conf", ":12: route \"eq\": read.upstream: \"legacy\" is the default upstream", 1 },
	{ "read_unknown_upstream.conf", ":12: route \"eq\": read.upstream: unknown upstream \"gear\"", 1 },
	{ "read_weight_decimals.conf", ":13: route \"eq\": read.weight: 33.333 is not a percentage 0-100 with at most two decimals", 1 },
	{ "read_weight_range.conf", ":13: route \"eq\": read.weight: 150 is not a percentage", 1 },
	{ "read_item_outside_each.conf", ":14: route \"eq\": read.response.body.type: bad expression \"$item.category\": $item is only available in the body of an \"each\" mapping", 1 },
	{ "read_not_get.conf", ":11: route \"eq\": read: a read route must match GET", 1 },
	{ "read_sticky_response.conf", ":13: route \"eq\": read.sticky: bad expression \"$response.user_id\": $response is not available here", 1 },
	{ "read_unknown_key.conf", ":13: route \"eq\": read.wieght: unknown key 'wieght' (did you mean 'weight'?)", 1 },
	{ "read_path_not_captured.conf", ":13: route \"eq\": read.path: template \"/gear-items?user_id={uid}\"", 1 },
	{ "read_compare_bad.conf", ":14: route \"eq\": read.compare.ignore: expected a list", 1 },
	{ "does-not-exist.conf", ": cannot open: No such file or directory", 1 },
	{ "tls_listen_no_addr.conf", ":2: listen[1]: missing addr", 1 },
	{ "tls_listen_no_key.conf", ":3: listen[1].tls: missing key", 1 },
	{ "tls_listen_mismatch.conf", ":2: listen.tls: key \"tests/unit/conf/tls/other-key.pem\" does not match cert \"tests/unit/conf/tls/cert.pem\"", 1 },
	{ "tls_listen_missing_file.conf", ":2: listen[0].tls: cert \"tests/unit/conf/tls/missing.pem\": cannot open: No such file or directory", 1 },
	{ "tls_listen_unknown_key.conf", ":3: listen[0].tls.client_cert: unknown key 'client_cert'", 1 },
	{ "tls_listen_twice.conf", ":2: listen[1].addr: \"127.0.0.1:8443\" is listed twice", 1 },
	{ "tls_upstream_on_http.conf", ":3: upstream \"legacy\": ca_file, verify, sni, cert and key apply to https:// upstreams only", 1 },
	{ "tls_upstream_verify_type.conf", ":4: upstream \"legacy\": verify: expected true or false", 1 },
	{ "tls_upstream_cert_no_key.conf", ":3: upstream \"legacy\": key: missing", 1 },
	{ "tls_upstream_missing_ca.conf", ":3: upstream \"legacy\": ca_file \"tests/unit/conf/tls/nope.pem\": cannot open: No such file or directory", 1 },
};

static void test_table_composite_key(void **state)
{
	(void)state;
	struct dw_config *c = load_ok(FIX "table_composite_ok.conf");
	const struct dw_table_map *t = config_table(c, "telemetry");

	assert_non_null(t);
	assert_int_equal(t->source.nkeys, 2);
	assert_string_equal(t->target.keys[1], "timestamp");
	assert_int_equal(t->source.nwhere, 0);
	assert_int_equal(t->target.nwhere, 2);
	assert_string_equal(t->target.where_cols[1], "region");
	assert_string_equal(t->target.where_vals[1], "eu");
	config_unref(c);
}

static void test_broken(void **state)
{
	const struct broken *b = *state;
	struct dw_errlist errs = { 0 };
	char path[256], want[512];
	struct dw_config *c;

	snprintf(path, sizeof(path), FIX "%s", b->file);
	snprintf(want, sizeof(want), "%s%s", path, b->prefix);
	c = config_load(path, &errs);
	assert_null(c);
	if (errs.n != b->nerrs) {
		for (size_t i = 0; i < errs.n; i++)
			print_error("%s\n", errs.msgs[i]);
		fail_msg("%s: %zu errors, want %zu", b->file, errs.n, b->nerrs);
	}
	if (strncmp(errs.msgs[0], want, strlen(want)) != 0)
		fail_msg("got  \"%s\"\nwant \"%s...\"", errs.msgs[0], want);
	dw_errlist_free(&errs);
}

/* SPEC §8: TLS listen entries and https upstreams carry their contexts. */
static void test_tls(void **state)
{
	struct dw_config *c = load_ok(FIX "tls_ok.conf");
	const struct dw_upstream *legacy = &c->upstreams[config_upstream_index(c, "legacy")];
	const struct dw_upstream *gear = &c->upstreams[config_upstream_index(c, "gear_ops")];

	(void)state;
	assert_int_equal(c->nlisten, 2);
	assert_string_equal(c->listen[0], "127.0.0.1:8080");
	assert_string_equal(c->listen[1], "127.0.0.1:8443");
	assert_null(c->listen_tls[0]);
	assert_non_null(c->listen_tls[1]);
	assert_ptr_equal(config_listen_tls(c, "127.0.0.1:8443"), c->listen_tls[1]);
	assert_null(config_listen_tls(c, "127.0.0.1:8080"));
	assert_null(config_listen_tls(c, "127.0.0.1:9999"));
	/* the fixture certificate is valid for 100 years from when it was made (2026) */
	assert_true(tls_ctx_not_after(c->listen_tls[1]) > 4000000000LL);
	/* defaults: system store, verified, SNI from the URL */
	assert_true(legacy->tls && legacy->verify);
	assert_non_null(legacy->tls_ctx);
	assert_null(legacy->ca_file);
	assert_null(legacy->sni);
	assert_null(legacy->cert);
	assert_int_equal(legacy->port, 443);
	assert_false(gear->verify);
	assert_non_null(gear->tls_ctx);
	assert_string_equal(gear->sni, "gear-ops.internal");
	assert_string_equal(gear->ca_file, "tests/unit/conf/tls/cert.pem");
	assert_string_equal(gear->key, "tests/unit/conf/tls/key.pem");
	config_unref(c);
	/* the CLI's load checks the keys but reads no listener certificate */
	{
		struct dw_errlist errs = { 0 };
		c = config_load_flags(FIX "tls_listen_mismatch.conf", CONFIG_NO_LISTEN_TLS, &errs);
		assert_non_null(c);
		assert_int_equal(errs.n, 0);
		assert_null(c->listen_tls[0]);
		config_unref(c);
		assert_null(config_load_flags(FIX "tls_listen_no_key.conf", CONFIG_NO_LISTEN_TLS, &errs));
		assert_int_equal(errs.n, 1);
		dw_errlist_free(&errs);
	}
}

static void test_multiple_errors(void **state)
{
	(void)state;
	static const char *const want[] = {
		FIX "multi.conf:1: lisen: unknown key 'lisen' (did you mean 'listen'?)",
		FIX "multi.conf: listen: missing",
		FIX "multi.conf:2: workers: 100 is out of range",
		FIX "multi.conf:8: queue.durability: \"sometimes\"",
		FIX "multi.conf:5: upstream \"gear_ops\": url: \"gopher://127.0.0.1:8002\"",
		FIX "multi.conf:15: route \"equipment-create\": mirror.body.category: bad expression "
		    "\"$typo\"",
	};
	struct dw_errlist errs = { 0 };

	assert_null(config_load(FIX "multi.conf", &errs));
	assert_int_equal(errs.n, sizeof(want) / sizeof(want[0]));
	for (size_t i = 0; i < errs.n; i++)
		if (strncmp(errs.msgs[i], want[i], strlen(want[i])) != 0)
			fail_msg("error %zu: got \"%s\" want \"%s...\"", i, errs.msgs[i], want[i]);
	dw_errlist_free(&errs);
}

/* ---------------------------------------------------------------- reload diff */

static void note_key(void *arg, const char *key)
{
	char *buf = arg;
	strcat(buf, key);
	strcat(buf, ",");
}

static void test_diff_nonreloadable(void **state)
{
	(void)state;
	struct dw_config *a = load_ok(FIX "valid.conf");
	struct dw_config *b = load_ok(FIX "valid.conf");
	char buf[256] = "";

	config_diff_nonreloadable(a, b, note_key, buf);
	assert_string_equal(buf, "");

	/* snapshots are immutable in use; editing one here stands in for a new file */
	b->workers = 4;
	free(b->admin_listen);
	b->admin_listen = NULL;
	free(b->queue.path);
	b->queue.path = strdup("/elsewhere");
	b->queue.durability = QUEUE_DURABILITY_FSYNC;
	b->queue.postgres = strdup("dbname=q");
	b->queue.max_bytes = 4096;
	b->limits.max_body_bytes = 5; /* reloadable: not reported */
	config_diff_nonreloadable(a, b, note_key, buf);
	assert_string_equal(buf, "workers,admin.listen,queue.path,queue.durability,queue.max_bytes,"
				 "queue.postgres,");

	/* a reload keeps the running values of exactly those keys */
	buf[0] = '\0';
	config_keep_nonreloadable(b, a, note_key, buf);
	assert_string_equal(buf, "workers,admin.listen,queue.path,queue.durability,queue.max_bytes,"
				 "queue.postgres,");
	assert_int_equal(b->workers, a->workers);
	assert_string_equal(b->admin_listen, a->admin_listen);
	assert_string_equal(b->queue.path, a->queue.path);
	assert_int_equal(b->queue.durability, a->queue.durability);
	assert_true(b->queue.max_bytes == a->queue.max_bytes);
	assert_null(b->queue.postgres);
	assert_int_equal(b->limits.max_body_bytes, 5);
	buf[0] = '\0';
	config_diff_nonreloadable(a, b, note_key, buf);
	assert_string_equal(buf, "");
	config_unref(a);
	config_unref(b);
}

static void test_load_string(void **state)
{
	(void)state;
	struct dw_config *a = load_ok(FIX "valid.conf");
	struct dw_errlist errs = {0};
	char *text = NULL;
	size_t len = 0;
	FILE *f = fopen(FIX "valid.conf", "r");
	struct dw_config *b;
	char buf[256] = "";

	assert_non_null(f);
	assert_int_equal(getdelim(&text, &len, '\0', f) > 0, 1);
	fclose(f);
	b = config_load_string(text, "mem.conf", &errs);
	assert_non_null(b);
	assert_int_equal(errs.n, 0);
	assert_string_equal(b->path, "mem.conf");
	assert_int_equal(b->nroutes, a->nroutes);
	assert_int_equal(b->nupstreams, a->nupstreams);
	config_diff_nonreloadable(a, b, note_key, buf);
	assert_string_equal(buf, "");
	config_unref(b);
	config_unref(a);
	free(text);

	/* errors name the given name and line */
	b = config_load_string("listen = \"127.0.0.1:8080\";\nworkers = 0;\n", "mem.conf", &errs);
	assert_null(b);
	assert_true(errs.n >= 1);
	assert_non_null(strstr(errs.msgs[0], "mem.conf:2"));
	dw_errlist_free(&errs);
	b = config_load_string("listen = ", "mem.conf", &errs);
	assert_null(b);
	assert_non_null(strstr(errs.msgs[0], "syntax error"));
	dw_errlist_free(&errs);
	/* no files are read on behalf of a string */
	b = config_load_string("@include \"/etc/passwd\"\n", "mem.conf", &errs);
	assert_null(b);
	assert_non_null(strstr(errs.msgs[0], "@include"));
	dw_errlist_free(&errs);
}

/* ---------------------------------------------------------------- host:port */

static void test_split_hostport(void **state)
{
	(void)state;
	char host[64];
	int port = 0;
	struct dw_err err = { { 0 } };

	assert_int_equal(config_split_hostport("127.0.0.1:8080", host, sizeof(host), &port, &err), 0);
	assert_string_equal(host, "127.0.0.1");
	assert_int_equal(port, 8080);
	assert_int_equal(config_split_hostport("[::1]:9901", host, sizeof(host), &port, &err), 0);
	assert_string_equal(host, "::1");
	assert_int_equal(port, 9901);
	assert_int_equal(config_split_hostport("localhost:80", host, sizeof(host), &port, &err), 0);
	assert_string_equal(host, "localhost");
	assert_int_equal(port, 80);
	assert_int_equal(config_split_hostport("0.0.0.0:65535", host, sizeof(host), &port, &err), 0);
	assert_int_equal(port, 65535);

	static const char *const bad[] = { "127.0.0.1",	 "127.0.0.1:",	  "127.0.0.1:0",
					   "127.0.0.1:65536", "127.0.0.1:80x", ":8080",
					   "::1:8080",	      "[::1]8080",     "[::1]",
					   "[]:80",	      "h:-1",	       "h:123456" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err.msg[0] = '\0';
		if (config_split_hostport(bad[i], host, sizeof(host), &port, &err) == 0)
			fail_msg("\"%s\" accepted", bad[i]);
		assert_true(err.msg[0] != '\0');
	}
	/* the host must fit */
	assert_int_equal(config_split_hostport("averyveryverylonghostname:80", host, 8, &port, &err),
			 -1);
}

/* The second reader never cries wolf: every file libconfig accepts (the
 * shipped examples and the valid fixtures) reads clean, and it agrees on
 * what libconfig rejects. */
static void test_confsyntax_agrees(void **state)
{
	static const char *const ok[] = { "conf/gear-ops.conf",	  "conf/iot-v2.conf",
					  "conf/dualwrited.conf", FIX "valid.conf",
					  FIX "minimal.conf",	  FIX "multi.conf" };
	static const char *const tricky =
		"a = \"x\" \"y\"; /* c */ b : -1.5e3, c = 0x1FL\n// d\n# e\n"
		"f = ( { g = [ 1, 2 ]; }, ( ), [ ] ) h = { i = true; j = FALSE }\n"
		"k = \"multi\nline\"; l-m = .5;";
	struct confsyntax_diag d;

	(void)state;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		FILE *f = fopen(ok[i], "r");
		char buf[65536];
		size_t n;

		assert_non_null(f);
		n = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		if (confsyntax_explain(buf, n, &d))
			fail_msg("%s:%d: %s", ok[i], d.line, d.what);
	}
	if (confsyntax_explain(tricky, strlen(tricky), &d))
		fail_msg("tricky:%d: %s", d.line, d.what);
	assert_true(confsyntax_explain("a = 1;;", 7, &d));
	assert_int_equal(d.line, 1);
	assert_true(confsyntax_explain("a = [ 1, ];", 11, &d));
	assert_true(confsyntax_explain("a = { b = 1; };\n}", 17, &d));
	assert_int_equal(d.line, 2);
}

int main(void)
{
	struct CMUnitTest tests[96];
	size_t n = 0;

	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_spec_example);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_defaults);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_example_gear);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_example_iot);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_table_composite_key);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_multiple_errors);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_tls);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_diff_nonreloadable);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_load_string);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_split_hostport);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_confsyntax_agrees);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_read_routes);
	for (size_t i = 0; i < sizeof(broken) / sizeof(broken[0]); i++) {
		tests[n] = (struct CMUnitTest)cmocka_unit_test_prestate(test_broken, (void *)(uintptr_t)&broken[i]);
		tests[n].name = broken[i].file;
		n++;
	}
	return _cmocka_run_group_tests("test_config", tests, n, NULL, NULL);
}
