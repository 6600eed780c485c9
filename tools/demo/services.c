/*
 * services.c — the four demo services: their routes and handlers.
 *
 *   user-core  the legacy Gear Operations equipment API (table old_equipment, ids assigned here)
 *   gear-ops   the new Gear Operations service (gear_items; takes the legacy's id; honours
 *              Idempotency-Key)
 *   iot-v1     the single-tenant IoT platform (devices, users, device_data; ids "dev-N" and
 *              "usr-N" assigned here; telemetry one reading or a JSON array of them)
 *   iot-v2     the multi-tenant IoT platform (tenants, device_templates, devices, users,
 *              telemetry; takes the V1 ids; tenantId required; honours Idempotency-Key)
 *
 * A row the route's {} addresses is read, updated and deleted by one handler each (row_get,
 * row_update, row_delete) from its table's struct demo_resource (the route's res): what the
 * services do alike is written once; what only one does (gear-ops' upsert, V2's templates,
 * the creates) stays in its own handler.
 *
 * PostgreSQL builds every JSON answer (json_build_object), so a value is rendered the same way
 * whichever route returns it; timestamps are RFC 3339 UTC with microseconds, the full precision
 * of timestamptz, so that a timestamp copied from one service's answer into another's request
 * arrives unchanged and `dualwrite verify` sees equal rows.
 */
#include <stdio.h>
#include <string.h>

#include "demo.h"
#include "dw.h"

#define TS(c) "to_char(" c " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* A reading's JSON member (data, metrics) as PostgreSQL reads it from the request body BODY,
 * null when absent or null: its numbers are stored as they were sent (21.3 stays 21.3, as a
 * service that hands the body to jsonb keeps it), like a batch's (jsonb_to_recordset), not
 * as jansson would write them back (21.300000000000001). */
#define READING_DATA(body, member) "NULLIF((" body "::jsonb) -> '" member "', 'null'::jsonb)"

#define EQUIPMENT_JSON                                                                          \
	"json_build_object('id', id, 'user_id', user_id, 'name', name, 'type', type,"           \
	" 'brand', brand, 'created_at', " TS("created_at") ")"

#define GEAR_JSON                                                                               \
	"json_build_object('id', id, 'user_id', user_id, 'name', name, 'category', category,"   \
	" 'brand', brand, 'status', status, 'role', role, 'created_at', " TS("created_at")      \
	", 'updated_at', " TS("updated_at") ")"

#define V1_JSON                                                                                 \
	"json_build_object('id', id, 'name', name, 'type', type, 'config', config,"             \
	" 'status', status, 'created_at', " TS("created_at") ", 'updated_at', "                 \
	TS("updated_at") ")"

#define V2_JSON                                                                                 \
	"json_build_object('id', id, 'tenantId', tenant_id, 'name', name,"                      \
	" 'templateId', template_id, 'attributes', attributes, 'metadata', metadata,"           \
	" 'status', status, 'createdAt', " TS("created_at") ", 'updatedAt', "                   \
	TS("updated_at") ")"

#define V1_USER_JSON                                                                            \
	"json_build_object('id', id, 'email', email, 'name', name, 'role', role,"              \
	" 'created_at', " TS("created_at") ", 'updated_at', " TS("updated_at") ")"

#define V2_USER_JSON                                                                            \
	"json_build_object('id', id, 'tenantId', tenant_id, 'email', email, 'name', name,"     \
	" 'role', role, 'createdAt', " TS("created_at") ", 'updatedAt', " TS("updated_at") ")"

#define V1_READING_JSON                                                                         \
	"json_build_object('deviceId', device_id, 'timestamp', " TS("timestamp") ","           \
	" 'data', data, 'protocol', protocol, 'source', source)"

#define V2_READING_JSON                                                                         \
	"json_build_object('tenantId', tenant_id, 'deviceId', device_id, 'timestamp', "        \
	TS("timestamp") ", 'metrics', metrics, 'protocol', protocol, 'source', source,"         \
	" 'quality', quality)"

/* ---- shared helpers ------------------------------------------------------------------------ */

/* Integer ids of old_equipment and gear_items: 1-18 digits, else the resource cannot exist. */
static int int_id(const char *s)
{
	size_t n = strspn(s, "0123456789");

	return n > 0 && n <= 18 && s[n] == '\0';
}

/* Each key must be present, not null and not "". */
static int require(struct call *c, struct reply *r, const char *const *keys, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char *v = call_text(c, keys[i]);

		if (!v || !*v) {
			reply_error(r, 400, "%s is required", keys[i]);
			return -1;
		}
	}
	return 0;
}

/* Answers status with the one text column of res's first row; 404 when there is no row. */
static void reply_row(struct svc *s, struct reply *r, PGresult *res, int status,
		      const char *what, const char *id)
{
	if (!demo_res_ok(res))
		reply_db_error(r, s, res, what);
	else if (PQntuples(res) == 0)
		reply_error(r, 404, "%s %s not found", what, id);
	else
		reply_json(r, status, PQgetvalue(res, 0, 0));
	PQclear(res);
}

/* DELETE ... RETURNING 1: 204, or 404 when nothing was deleted. */
static void reply_deleted(struct svc *s, struct reply *r, PGresult *res, const char *what,
			  const char *id)
{
	if (!demo_res_ok(res))
		reply_db_error(r, s, res, what);
	else if (PQntuples(res) == 0)
		reply_error(r, 404, "%s %s not found", what, id);
	else
		reply_json(r, 204, NULL);
	PQclear(res);
}

/* Answers a one-row, one-column result holding a JSON array. */
static void reply_list(struct svc *s, struct reply *r, PGresult *res, const char *what)
{
	if (!demo_res_ok(res) || PQntuples(res) != 1)
		reply_db_error(r, s, res, what);
	else
		reply_json(r, 200, PQgetvalue(res, 0, 0));
	PQclear(res);
}

/* 0 when the tenant exists; otherwise a 422 (or a database error) in r. */
static int tenant_known(struct svc *s, struct reply *r, const char *tenant)
{
	const char *p[1] = {tenant};
	PGresult *res = demo_query(s, "SELECT 1 FROM tenants WHERE id = $1", 1, p);
	int rc = -1;

	if (!demo_res_ok(res))
		reply_db_error(r, s, res, "tenant lookup");
	else if (PQntuples(res) == 0)
		reply_error(r, 422, "unknown tenant %s", tenant);
	else
		rc = 0;
	PQclear(res);
	return rc;
}

/* ---- rows addressed by the route's {}: get, update, delete ----------------------------------- */

enum stamp {
	STAMP_NONE,	    /* no updated_at column (old_equipment) */
	STAMP_ALWAYS,	    /* updated_at = now() on every update (V1) */
	STAMP_UNLESS_GIVEN, /* updated_at = now() unless the body gives it (gear-ops, V2) */
};

/* One table's rows as the routes' {} address them (demo.h: demo_route.res). */
struct demo_resource {
	const char *what;  /* "gear item": in "gear item 7 not found" */
	const char *table;
	const char *json;  /* the row as JSON: one of the *_JSON above */
	int int_id;	   /* bigint ids: any other id is not found, without a query */
	int tenant_scoped; /* V2: GET by ?tenantId=, PATCH by the body's tenantId */
	enum stamp stamp;
	const struct demo_col *cols; /* what an update may change */
	size_t ncols;
};

/* 0 with a 404 in r when the id cannot be one of the resource's. */
static int id_ok(struct call *c, struct reply *r)
{
	if (c->res->int_id && !int_id(c->arg)) {
		reply_error(r, 404, "%s %s not found", c->res->what, c->arg);
		return 0;
	}
	return 1;
}

/* GET: the row (200), or 404; V2 scoped to ?tenantId=T when given (the guide's findUnique({
 * where: { id, tenantId } }): another tenant's row is not found; without it, any tenant's). */
static void row_get(struct svc *s, struct call *c, struct reply *r)
{
	const struct demo_resource *res = c->res;
	const char *p[2] = {c->arg, call_query(c, "tenantId")};
	struct sqlb b;

	if (!id_ok(c, r))
		return;
	sqlb_init(&b);
	sqlb_add(&b, "SELECT %s::text FROM %s WHERE id = $1%s", res->json, res->table,
		 res->int_id ? "::bigint" : "");
	if (res->tenant_scoped)
		sqlb_add(&b, " AND ($2::text IS NULL OR tenant_id = $2)");
	reply_row(s, r, demo_query(s, b.sql, res->tenant_scoped ? 2 : 1, p), 200, res->what,
		  c->arg);
}

/* The UPDATE of the row {} with the columns the body gives (and updated_at as res->stamp
 * says), limited to tenant when given, RETURNING the row; -1 with a 400 in r when the body
 * is bad. b keeps the statement: gear-ops runs it again. */
static int update_sql(struct call *c, struct reply *r, const char *tenant, struct sqlb *b)
{
	const struct demo_resource *res = c->res;
	int stamp_given = 0;

	sqlb_init(b);
	sqlb_add(b, "UPDATE %s SET %s", res->table,
		 res->stamp == STAMP_ALWAYS ? "updated_at = now()" : "id = id");
	if (sqlb_set_cols(b, c, res->cols, res->ncols, r) < 0)
		return -1;
	for (size_t i = 0; i < res->ncols; i++)
		if (strcmp(res->cols[i].col, "updated_at") == 0)
			stamp_given = call_has(c, res->cols[i].key) ||
				      (res->cols[i].alt && call_has(c, res->cols[i].alt));
	if (res->stamp == STAMP_UNLESS_GIVEN && !stamp_given)
		sqlb_add(b, ", updated_at = now()");
	sqlb_add(b, " WHERE id = $%d%s", sqlb_param(b, c->arg), res->int_id ? "::bigint" : "");
	if (tenant)
		sqlb_add(b, " AND tenant_id = $%d", sqlb_param(b, tenant));
	sqlb_add(b, " RETURNING %s::text", res->json);
	return 0;
}

/* The update of row_update, its tenant (NULL: none) checked already. */
static void update_row(struct svc *s, struct call *c, struct reply *r, const char *tenant)
{
	struct sqlb b;

	if (!id_ok(c, r) || update_sql(c, r, tenant, &b) < 0)
		return;
	reply_row(s, r, demo_query(s, b.sql, b.n, b.params), 200, c->res->what, c->arg);
}

/* PUT/PATCH: the fields given change (200), or 404; V2: tenantId, when given, must be the
 * row's tenant (a row never moves between tenants here) and must exist. */
static void row_update(struct svc *s, struct call *c, struct reply *r)
{
	const char *tenant = c->res->tenant_scoped ? call_text2(c, "tenantId", "tenant_id") : NULL;

	if (tenant && tenant_known(s, r, tenant) < 0)
		return;
	update_row(s, c, r, tenant);
}

/* DELETE: 204, or 404 when there was no such row. */
static void row_delete(struct svc *s, struct call *c, struct reply *r)
{
	const struct demo_resource *res = c->res;
	const char *p[1] = {c->arg};
	struct sqlb b;

	if (!id_ok(c, r))
		return;
	sqlb_init(&b);
	sqlb_add(&b, "DELETE FROM %s WHERE id = $1%s RETURNING 1", res->table,
		 res->int_id ? "::bigint" : "");
	reply_deleted(s, r, demo_query(s, b.sql, 1, p), res->what, c->arg);
}

/* ---- user-core: the legacy equipment API ----------------------------------------------------- */

static void uc_list(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	if (!int_id(c->arg)) {
		reply_error(r, 404, "user %s not found", c->arg);
		return;
	}
	reply_list(s, r,
		   demo_query(s,
			      "SELECT coalesce(json_agg(j ORDER BY id), '[]')::text FROM"
			      " (SELECT id, " EQUIPMENT_JSON " AS j FROM old_equipment"
			      " WHERE user_id = $1::bigint) t",
			      1, p),
		   "list equipment");
}

/* The id is assigned here, unless the body gives one: after the write cut-over the new system
 * assigns it and the reverse mirror brings it (409 when that row exists already). */
static void uc_create(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"user_id", "name"};
	const char *p[6];

	if (require(c, r, req, DW_ARRAY_LEN(req)) < 0)
		return;
	p[0] = call_text(c, "user_id");
	p[1] = call_text(c, "name");
	p[2] = call_text(c, "type");
	p[3] = call_text(c, "brand");
	p[4] = call_text(c, "id");
	p[5] = call_text(c, "created_at");
	reply_row(s, r,
		  demo_query(s,
			     "INSERT INTO old_equipment (id, user_id, name, type, brand, created_at)"
			     " VALUES (coalesce($5::bigint, nextval('old_equipment_id_seq')),"
			     " $1::bigint, $2, $3, $4, coalesce($6::timestamptz, now()))"
			     " RETURNING " EQUIPMENT_JSON "::text",
			     6, p),
		  201, "create equipment", "");
}

static const struct demo_col equipment_cols[] = {
	{"user_id", NULL, "user_id", "bigint", 1},
	{"name", NULL, "name", "text", 1},
	{"type", NULL, "type", "text", 0},
	{"brand", NULL, "brand", "text", 0},
};
static const struct demo_resource equipment = {
	"equipment", "old_equipment", EQUIPMENT_JSON, 1, 0, STAMP_NONE,
	equipment_cols, DW_ARRAY_LEN(equipment_cols),
};

static const struct demo_route user_core_routes[] = {
	{"GET", "/user/{}/equipment", uc_list, 0, NULL},
	{"POST", "/equipment", uc_create, ROUTE_WRITE | ROUTE_BODY, NULL},
	{"GET", "/equipment/{}", row_get, 0, &equipment},
	{"PUT", "/equipment/{}", row_update, ROUTE_WRITE | ROUTE_BODY, &equipment},
	{"DELETE", "/equipment/{}", row_delete, ROUTE_WRITE, &equipment},
};

/* ---- gear-ops: the new Gear Operations service ----------------------------------------------- */

static const struct demo_col gear_item_cols[] = {
	{"user_id", NULL, "user_id", "bigint", 1},
	{"name", NULL, "name", "text", 1},
	{"category", NULL, "category", "text", 0},
	{"brand", NULL, "brand", "text", 0},
	{"status", NULL, "status", "text", 1},
	{"role", NULL, "role", "text", 1},
	{"created_at", NULL, "created_at", "timestamptz", 0},
	{"updated_at", NULL, "updated_at", "timestamptz", 0},
};
static const struct demo_resource gear_item = {
	"gear item", "gear_items", GEAR_JSON, 1, 0, STAMP_UNLESS_GIVEN,
	gear_item_cols, DW_ARRAY_LEN(gear_item_cols),
};

static void go_list(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {call_query(c, "user_id")};

	if (p[0] && !int_id(p[0])) {
		reply_error(r, 400, "user_id must be an integer");
		return;
	}
	reply_list(s, r,
		   demo_query(s,
			      "SELECT coalesce(json_agg(j ORDER BY id), '[]')::text FROM"
			      " (SELECT id, " GEAR_JSON " AS j FROM gear_items"
			      " WHERE $1::bigint IS NULL OR user_id = $1::bigint"
			      " ORDER BY id LIMIT 10000) t",
			      1, p),
		   "list gear items");
}

/* INSERT one gear item from the body (id from the body, or `id` when given); ON CONFLICT DO
 * NOTHING when `upsert`, so that a row that appeared meanwhile yields no row instead of 409. */
static PGresult *gear_insert(struct svc *s, struct call *c, const char *id, int upsert)
{
	const char *p[9];

	p[0] = id ? id : call_text(c, "id");
	p[1] = call_text(c, "user_id");
	p[2] = call_text(c, "name");
	p[3] = call_text(c, "category");
	p[4] = call_text(c, "brand");
	p[5] = call_text(c, "status");
	p[6] = call_text(c, "role");
	p[7] = call_text(c, "created_at");
	p[8] = call_text(c, "updated_at");
	return demo_query(s,
			  upsert ? "INSERT INTO gear_items (id, user_id, name, category, brand, status,"
				   " role, created_at, updated_at)"
				   " VALUES (coalesce($1::bigint, nextval('gear_items_id_seq')), $2::bigint, $3, $4, $5,"
				   " coalesce($6, 'active'),"
				   " coalesce($7, 'personal'),"
				   " coalesce($8::timestamptz, now()),"
				   " coalesce($9::timestamptz, $8::timestamptz, now()))"
				   " ON CONFLICT (id) DO NOTHING RETURNING " GEAR_JSON "::text"
				 : "INSERT INTO gear_items (id, user_id, name, category, brand, status,"
				   " role, created_at, updated_at)"
				   " VALUES (coalesce($1::bigint, nextval('gear_items_id_seq')), $2::bigint, $3, $4, $5,"
				   " coalesce($6, 'active'),"
				   " coalesce($7, 'personal'),"
				   " coalesce($8::timestamptz, now()),"
				   " coalesce($9::timestamptz, $8::timestamptz, now()))"
				   " RETURNING " GEAR_JSON "::text",
			  9, p);
}

static void go_create(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"user_id", "name"};

	if (require(c, r, req, DW_ARRAY_LEN(req)) < 0)
		return;
	/* no id: this service assigns it (authority "new", after the write cut-over) */
	reply_row(s, r, gear_insert(s, c, NULL, 0), 201, "create gear item", "");
}

/* PUT replaces the item's given fields, and creates the item when it does not exist yet and the
 * body carries a whole row (user_id and name at least): PUT's own meaning (RFC 9110 §9.3.4).
 * That is what makes a mirrored update of a history row the backfill has not copied yet an
 * upsert instead of a 404 (README, Phase 2). A row inserted meanwhile by someone else (the
 * backfill) is waited for by ON CONFLICT and then updated: the PUT, newer, wins. */
static void go_update(struct svc *s, struct call *c, struct reply *r)
{
	struct sqlb b;
	PGresult *res;

	if (!id_ok(c, r) || update_sql(c, r, NULL, &b) < 0)
		return;
	res = demo_query(s, b.sql, b.n, b.params);
	if (!demo_res_ok(res) || PQntuples(res) > 0 || !call_text(c, "user_id") ||
	    !call_text(c, "name")) {
		reply_row(s, r, res, 200, "gear item", c->arg);
		return;
	}
	PQclear(res);
	res = gear_insert(s, c, c->arg, 1);
	if (!demo_res_ok(res) || PQntuples(res) == 1) {
		reply_row(s, r, res, 201, "gear item", c->arg);
		return;
	}
	PQclear(res);
	/* Inserted by someone else between the UPDATE and the INSERT: update it now. */
	reply_row(s, r, demo_query(s, b.sql, b.n, b.params), 200, "gear item", c->arg);
}

static const struct demo_route gear_ops_routes[] = {
	{"GET", "/gear-items", go_list, 0, NULL},
	{"POST", "/gear-items", go_create, ROUTE_WRITE | ROUTE_BODY, NULL},
	{"GET", "/gear-items/{}", row_get, 0, &gear_item},
	{"PUT", "/gear-items/{}", go_update, ROUTE_WRITE | ROUTE_BODY, &gear_item},
	{"DELETE", "/gear-items/{}", row_delete, ROUTE_WRITE, &gear_item},
};

/* ---- iot-v1: the single-tenant IoT platform -------------------------------------------------- */

static void v1_list(struct svc *s, struct call *c, struct reply *r)
{
	(void)c;
	reply_list(s, r,
		   demo_query(s,
			      "SELECT coalesce(json_agg(j ORDER BY created_at, id), '[]')::text"
			      " FROM"
			      " (SELECT id, created_at, " V1_JSON " AS j FROM devices"
			      " ORDER BY created_at, id LIMIT 10000) t",
			      0, NULL),
		   "list devices");
}

static void v1_create(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"name", "type"};
	const char *p[4];

	if (require(c, r, req, DW_ARRAY_LEN(req)) < 0)
		return;
	p[0] = call_text(c, "name");
	p[1] = call_text(c, "type");
	p[2] = call_json(c, "config");
	p[3] = call_text(c, "status");
	reply_row(s, r,
		  demo_query(s,
			     "INSERT INTO devices (id, name, type, config, status, created_at,"
			     " updated_at) VALUES ('dev-' || nextval('devices_id_seq'), $1, $2,"
			     " $3::jsonb, coalesce($4, 'ACTIVE'), now(), now())"
			     " RETURNING " V1_JSON "::text",
			     4, p),
		  201, "create device", "");
}

/* Users (the guide's migrateUsers): ids "usr-N" assigned here. */
static void v1_user_create(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"email"};
	const char *p[3];

	if (require(c, r, req, DW_ARRAY_LEN(req)) < 0)
		return;
	p[0] = call_text(c, "email");
	p[1] = call_text(c, "name");
	p[2] = call_text(c, "role");
	reply_row(s, r,
		  demo_query(s,
			     "INSERT INTO users (id, email, name, role, created_at, updated_at)"
			     " VALUES ('usr-' || nextval('users_id_seq'), $1, $2,"
			     " coalesce($3, 'USER'), now(), now()) RETURNING " V1_USER_JSON "::text",
			     3, p),
		  201, "create user", "");
}

/* One reading; the timestamp defaults to now() and is in the answer. */
static void v1_reading(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"deviceId"};
	const char *p[5];

	if (require(c, r, req, DW_ARRAY_LEN(req)) < 0)
		return;
	p[0] = call_text(c, "deviceId");
	p[1] = call_text(c, "timestamp");
	p[2] = c->body; /* data: READING_DATA */
	p[3] = call_text(c, "protocol");
	p[4] = call_text(c, "source");
	reply_row(s, r,
		  demo_query(s,
			     "INSERT INTO device_data (device_id, timestamp, data, protocol, source)"
			     " VALUES ($1, coalesce($2::timestamptz, now()), " READING_DATA("$3", "data")
			     ", $4, $5)"
			     " RETURNING " V1_READING_JSON "::text",
			     5, p),
		  201, "store reading", "");
}

/*
 * A batch of readings (the guide's createMany): a JSON array of objects, each with deviceId
 * and timestamp, stored by one multi-row INSERT ... SELECT from jsonb_to_recordset. Readings
 * are matched by name; another field of an element is ignored. Returns the number in "count".
 * vtwo selects the V2 columns (tenantId, metrics, quality) and ON CONFLICT DO NOTHING.
 */
static void reading_batch(struct svc *s, struct call *c, struct reply *r, int vtwo)
{
	json_error_t jerr;
	json_t *a = json_loadb(c->body, c->body_len, 0, &jerr);
	char n[32];
	size_t i;
	json_t *e;

	if (!a) {
		reply_error(r, 400, "invalid JSON: %s", jerr.text);
		return;
	}
	if (!json_is_array(a)) {
		json_decref(a);
		reply_error(r, 400, "the body must be a JSON array of readings");
		return;
	}
	json_array_foreach(a, i, e) {
		const char *bad = !json_is_object(e) ? "is not an object"
				  : !json_is_string(json_object_get(e, "deviceId")) ? "has no deviceId"
				  : !json_is_string(json_object_get(e, "timestamp")) ? "has no timestamp"
				  : vtwo && !json_is_string(json_object_get(e, "tenantId")) ? "has no tenantId"
				  : NULL;
		if (bad) {
			json_decref(a);
			reply_error(r, 400, "reading [%zu] %s", i, bad);
			return;
		}
	}
	json_decref(a);
	const char *p[1] = {c->body};
	PGresult *res;
	if (vtwo) {
		res = demo_query(s,
				 "SELECT x.t FROM (SELECT DISTINCT e->>'tenantId' AS t"
				 " FROM jsonb_array_elements($1::jsonb) e) x"
				 " WHERE NOT EXISTS (SELECT 1 FROM tenants WHERE id = x.t) LIMIT 1",
				 1, p);
		if (!demo_res_ok(res)) {
			reply_db_error(r, s, res, "tenant lookup");
			PQclear(res);
			return;
		}
		if (PQntuples(res)) {
			reply_error(r, 422, "unknown tenant %s", PQgetvalue(res, 0, 0));
			PQclear(res);
			return;
		}
		PQclear(res);
		res = demo_query(s,
				 "INSERT INTO telemetry (tenant_id, device_id, timestamp, metrics,"
				 " protocol, source, quality) SELECT \"tenantId\", \"deviceId\","
				 " timestamp, metrics, protocol, source, quality"
				 " FROM jsonb_to_recordset($1::jsonb) AS x(\"tenantId\" text,"
				 " \"deviceId\" text, timestamp timestamptz, metrics jsonb,"
				 " protocol text, source text, quality text)"
				 " ON CONFLICT (device_id, timestamp) DO NOTHING",
				 1, p);
	} else {
		res = demo_query(s,
				 "INSERT INTO device_data (device_id, timestamp, data, protocol, source)"
				 " SELECT \"deviceId\", timestamp, data, protocol, source"
				 " FROM jsonb_to_recordset($1::jsonb) AS x(\"deviceId\" text,"
				 " timestamp timestamptz, data jsonb, protocol text, source text)",
				 1, p);
	}
	if (!demo_res_ok(res)) {
		reply_db_error(r, s, res, "store readings");
	} else {
		char body[64];
		snprintf(n, sizeof(n), "%s", PQcmdTuples(res));
		snprintf(body, sizeof(body), "{\"count\": %s}", n[0] ? n : "0");
		reply_json(r, 201, body);
	}
	PQclear(res);
}

static void v1_reading_batch(struct svc *s, struct call *c, struct reply *r)
{
	reading_batch(s, c, r, 0);
}

static const struct demo_col v1_device_cols[] = {
	{"name", NULL, "name", "text", 1},
	{"type", NULL, "type", "text", 1},
	{"config", NULL, "config", "jsonb", 0},
	{"status", NULL, "status", "text", 0},
};
static const struct demo_resource v1_device = {
	"device", "devices", V1_JSON, 0, 0, STAMP_ALWAYS,
	v1_device_cols, DW_ARRAY_LEN(v1_device_cols),
};
static const struct demo_col v1_user_cols[] = {
	{"email", NULL, "email", "text", 1},
	{"name", NULL, "name", "text", 0},
	{"role", NULL, "role", "text", 1},
};
static const struct demo_resource v1_user = {
	"user", "users", V1_USER_JSON, 0, 0, STAMP_ALWAYS,
	v1_user_cols, DW_ARRAY_LEN(v1_user_cols),
};

static const struct demo_route iot_v1_routes[] = {
	{"GET", "/devices", v1_list, 0, NULL},
	{"POST", "/devices", v1_create, ROUTE_WRITE | ROUTE_BODY, NULL},
	{"GET", "/devices/{}", row_get, 0, &v1_device},
	{"PATCH", "/devices/{}", row_update, ROUTE_WRITE | ROUTE_BODY, &v1_device},
	{"DELETE", "/devices/{}", row_delete, ROUTE_WRITE, &v1_device},
	{"POST", "/users", v1_user_create, ROUTE_WRITE | ROUTE_BODY, NULL},
	{"GET", "/users/{}", row_get, 0, &v1_user},
	{"PATCH", "/users/{}", row_update, ROUTE_WRITE | ROUTE_BODY, &v1_user},
	{"DELETE", "/users/{}", row_delete, ROUTE_WRITE, &v1_user},
	{"POST", "/telemetry", v1_reading, ROUTE_WRITE | ROUTE_BODY, NULL},
	{"POST", "/telemetry/batch", v1_reading_batch, ROUTE_WRITE, NULL},
};

/* ---- iot-v2: the multi-tenant IoT platform --------------------------------------------------- */

/* A V2 write names its tenant (tenantId, or tenant_id), which must exist, and the keys req:
 * the tenant, or NULL with the answer (400, 422) in r. */
static const char *v2_tenant(struct svc *s, struct call *c, struct reply *r,
			     const char *const *req, size_t nreq)
{
	const char *tenant = call_text2(c, "tenantId", "tenant_id");

	if (!tenant || !*tenant) {
		reply_error(r, 400, "tenantId is required");
		return NULL;
	}
	if (require(c, r, req, nreq) < 0 || tenant_known(s, r, tenant) < 0)
		return NULL;
	return tenant;
}

/* Device templates are created on demand, one per V1 device type (id = the type name). */
static int v2_template(struct svc *s, struct reply *r, const char *sql, const char *a,
		       const char *b)
{
	const char *p[2] = {a, b};
	PGresult *res = demo_query(s, sql, 2, p);
	int rc = 0;

	if (!demo_res_ok(res)) {
		reply_db_error(r, s, res, "device template");
		rc = -1;
	}
	PQclear(res);
	return rc;
}

static void v2_list(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {call_query(c, "tenantId")};

	reply_list(s, r,
		   demo_query(s,
			      "SELECT coalesce(json_agg(j ORDER BY created_at, id), '[]')::text"
			      " FROM"
			      " (SELECT id, created_at, " V2_JSON " AS j FROM devices"
			      " WHERE $1::text IS NULL OR tenant_id = $1"
			      " ORDER BY created_at, id LIMIT 10000) t",
			      1, p),
		   "list devices");
}

static void v2_create(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"id", "name"};
	const char *p[9];

	if (!(p[1] = v2_tenant(s, c, r, req, DW_ARRAY_LEN(req))))
		return;
	p[0] = call_text(c, "id");
	p[2] = call_text(c, "name");
	p[3] = call_text2(c, "templateId", "template_id");
	p[4] = call_json(c, "attributes");
	p[5] = call_json(c, "metadata");
	p[6] = call_text(c, "status");
	p[7] = call_text2(c, "createdAt", "created_at");
	p[8] = call_text2(c, "updatedAt", "updated_at");
	if (p[3] && v2_template(s, r,
				"INSERT INTO device_templates (id, tenant_id, name)"
				" VALUES ($1, $2, $1) ON CONFLICT (id) DO NOTHING",
				p[3], p[1]) < 0)
		return;
	reply_row(s, r,
		  demo_query(s,
			     "INSERT INTO devices (id, tenant_id, name, template_id, attributes,"
			     " metadata, status, created_at, updated_at) VALUES ($1, $2, $3, $4,"
			     " $5::jsonb, $6::jsonb, coalesce($7, 'ACTIVE'),"
			     " coalesce($8::timestamptz, now()),"
			     " coalesce($9::timestamptz, $8::timestamptz, now()))"
			     " RETURNING " V2_JSON "::text",
			     9, p),
		  201, "create device", "");
}

/* PATCH as row_update, and a new templateId's template is made first. */
static void v2_update(struct svc *s, struct call *c, struct reply *r)
{
	const char *tenant = call_text2(c, "tenantId", "tenant_id");
	const char *tmpl = call_text2(c, "templateId", "template_id");

	if (tenant && tenant_known(s, r, tenant) < 0)
		return;
	if (tmpl && v2_template(s, r,
				"INSERT INTO device_templates (id, tenant_id, name)"
				" SELECT $1, d.tenant_id, $1 FROM devices d WHERE d.id = $2"
				" ON CONFLICT (id) DO NOTHING",
				tmpl, c->arg) < 0)
		return;
	update_row(s, c, r, tenant);
}

/* Users: the V1 id, tenantId required; the timestamps may be given (backfilled history). */
static void v2_user_create(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"id", "email"};
	const char *p[7];

	if (!(p[1] = v2_tenant(s, c, r, req, DW_ARRAY_LEN(req))))
		return;
	p[0] = call_text(c, "id");
	p[2] = call_text(c, "email");
	p[3] = call_text(c, "name");
	p[4] = call_text(c, "role");
	p[5] = call_text2(c, "createdAt", "created_at");
	p[6] = call_text2(c, "updatedAt", "updated_at");
	reply_row(s, r,
		  demo_query(s,
			     "INSERT INTO users (id, tenant_id, email, name, role, created_at,"
			     " updated_at) VALUES ($1, $2, $3, $4, $5,"
			     " coalesce($6::timestamptz, now()),"
			     " coalesce($7::timestamptz, $6::timestamptz, now()))"
			     " RETURNING " V2_USER_JSON "::text",
			     7, p),
		  201, "create user", "");
}

/* One reading; the same reading stored twice is one row (201 either way). */
static void v2_reading(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"deviceId", "timestamp"};
	const char *p[7];

	if (!(p[0] = v2_tenant(s, c, r, req, DW_ARRAY_LEN(req))))
		return;
	p[1] = call_text(c, "deviceId");
	p[2] = call_text(c, "timestamp");
	p[3] = c->body; /* metrics: READING_DATA */
	p[4] = call_text(c, "protocol");
	p[5] = call_text(c, "source");
	p[6] = call_text(c, "quality");
	PGresult *res = demo_query(s,
				   "INSERT INTO telemetry (tenant_id, device_id, timestamp, metrics,"
				   " protocol, source, quality) VALUES ($1, $2, $3::timestamptz, "
				   READING_DATA("$4", "metrics") ", $5, $6, $7)"
				   " ON CONFLICT (device_id, timestamp) DO NOTHING",
				   7, p);
	if (!demo_res_ok(res)) {
		reply_db_error(r, s, res, "store reading");
		PQclear(res);
		return;
	}
	PQclear(res);
	const char *q[2] = {p[1], p[2]};
	reply_row(s, r,
		  demo_query(s, "SELECT " V2_READING_JSON "::text FROM telemetry"
				" WHERE device_id = $1 AND timestamp = $2::timestamptz", 2, q),
		  201, "reading", p[1]);
}

static void v2_reading_batch(struct svc *s, struct call *c, struct reply *r)
{
	reading_batch(s, c, r, 1);
}

static const struct demo_col v2_device_cols[] = {
	{"name", NULL, "name", "text", 1},
	{"templateId", "template_id", "template_id", "text", 0},
	{"attributes", NULL, "attributes", "jsonb", 0},
	{"metadata", NULL, "metadata", "jsonb", 0},
	{"status", NULL, "status", "text", 0},
	{"createdAt", "created_at", "created_at", "timestamptz", 0},
	{"updatedAt", "updated_at", "updated_at", "timestamptz", 0},
};
static const struct demo_resource v2_device = {
	"device", "devices", V2_JSON, 0, 1, STAMP_UNLESS_GIVEN,
	v2_device_cols, DW_ARRAY_LEN(v2_device_cols),
};
static const struct demo_col v2_user_cols[] = {
	{"email", NULL, "email", "text", 1},
	{"name", NULL, "name", "text", 0},
	{"role", NULL, "role", "text", 0},
	{"createdAt", "created_at", "created_at", "timestamptz", 0},
	{"updatedAt", "updated_at", "updated_at", "timestamptz", 0},
};
static const struct demo_resource v2_user = {
	"user", "users", V2_USER_JSON, 0, 1, STAMP_UNLESS_GIVEN,
	v2_user_cols, DW_ARRAY_LEN(v2_user_cols),
};

static const struct demo_route iot_v2_routes[] = {
	{"GET", "/devices", v2_list, 0, NULL},
	{"POST", "/devices", v2_create, ROUTE_WRITE | ROUTE_BODY, NULL},
	{"GET", "/devices/{}", row_get, 0, &v2_device},
	{"PATCH", "/devices/{}", v2_update, ROUTE_WRITE | ROUTE_BODY, &v2_device},
	{"DELETE", "/devices/{}", row_delete, ROUTE_WRITE, &v2_device},
	{"POST", "/users", v2_user_create, ROUTE_WRITE | ROUTE_BODY, NULL},
	{"GET", "/users/{}", row_get, 0, &v2_user},
	{"PATCH", "/users/{}", row_update, ROUTE_WRITE | ROUTE_BODY, &v2_user},
	{"DELETE", "/users/{}", row_delete, ROUTE_WRITE, &v2_user},
	{"POST", "/telemetry", v2_reading, ROUTE_WRITE | ROUTE_BODY, NULL},
	{"POST", "/telemetry/batch", v2_reading_batch, ROUTE_WRITE, NULL},
};

/* ---- the registry ---------------------------------------------------------------------------- */

static const struct demo_service services[] = {
	{"user-core", "dbname=user_core", demo_schema_user_core, 0, user_core_routes,
	 DW_ARRAY_LEN(user_core_routes)},
	{"gear-ops", "dbname=gear_ops", demo_schema_gear_ops, 1, gear_ops_routes,
	 DW_ARRAY_LEN(gear_ops_routes)},
	{"iot-v1", "dbname=iot_v1", demo_schema_iot_v1, 0, iot_v1_routes,
	 DW_ARRAY_LEN(iot_v1_routes)},
	{"iot-v2", "dbname=iot_v2", demo_schema_iot_v2, 1, iot_v2_routes,
	 DW_ARRAY_LEN(iot_v2_routes)},
};

const struct demo_service *demo_service_find(const char *name)
{
	for (size_t i = 0; i < DW_ARRAY_LEN(services); i++)
		if (strcmp(services[i].name, name) == 0)
			return &services[i];
	return NULL;
}

void demo_service_names(char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < DW_ARRAY_LEN(services) && used < len; i++) {
		int n = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", services[i].name);

		if (n < 0)
			break;
		used += (size_t)n;
	}
}
