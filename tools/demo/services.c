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

static void uc_get(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	if (!int_id(c->arg)) {
		reply_error(r, 404, "equipment %s not found", c->arg);
		return;
	}
	reply_row(s, r,
		  demo_query(s,
			     "SELECT " EQUIPMENT_JSON "::text FROM old_equipment"
			     " WHERE id = $1::bigint",
			     1, p),
		  200, "equipment", c->arg);
}

static void uc_update(struct svc *s, struct call *c, struct reply *r)
{
	static const struct demo_col cols[] = {
		{"user_id", NULL, "user_id", "bigint", 1},
		{"name", NULL, "name", "text", 1},
		{"type", NULL, "type", "text", 0},
		{"brand", NULL, "brand", "text", 0},
	};
	struct sqlb b;

	if (!int_id(c->arg)) {
		reply_error(r, 404, "equipment %s not found", c->arg);
		return;
	}
	sqlb_init(&b);
	sqlb_add(&b, "UPDATE old_equipment SET id = id");
	if (sqlb_set_cols(&b, c, cols, DW_ARRAY_LEN(cols), r) < 0)
		return;
	sqlb_add(&b, " WHERE id = $%d::bigint RETURNING " EQUIPMENT_JSON "::text",
		 sqlb_param(&b, c->arg));
	reply_row(s, r, demo_query(s, b.sql, b.n, b.params), 200, "equipment", c->arg);
}

static void uc_delete(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	if (!int_id(c->arg)) {
		reply_error(r, 404, "equipment %s not found", c->arg);
		return;
	}
	reply_deleted(s, r,
		      demo_query(s, "DELETE FROM old_equipment WHERE id = $1::bigint RETURNING 1",
				 1, p),
		      "equipment", c->arg);
}

static const struct demo_route user_core_routes[] = {
	{"GET", "/user/{}/equipment", uc_list, 0},
	{"POST", "/equipment", uc_create, ROUTE_WRITE | ROUTE_BODY},
	{"GET", "/equipment/{}", uc_get, 0},
	{"PUT", "/equipment/{}", uc_update, ROUTE_WRITE | ROUTE_BODY},
	{"DELETE", "/equipment/{}", uc_delete, ROUTE_WRITE},
};

/* ---- gear-ops: the new Gear Operations service ----------------------------------------------- */

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

static void go_get(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	if (!int_id(c->arg)) {
		reply_error(r, 404, "gear item %s not found", c->arg);
		return;
	}
	reply_row(s, r,
		  demo_query(s, "SELECT " GEAR_JSON "::text FROM gear_items WHERE id = $1::bigint",
			     1, p),
		  200, "gear item", c->arg);
}

/* PUT replaces the item's given fields, and creates the item when it does not exist yet and the
 * body carries a whole row (user_id and name at least): PUT's own meaning (RFC 9110 §9.3.4).
 * That is what makes a mirrored update of a history row the backfill has not copied yet an
 * upsert instead of a 404 (README, Phase 2). A row inserted meanwhile by someone else (the
 * backfill) is waited for by ON CONFLICT and then updated: the PUT, newer, wins. */
static void go_update(struct svc *s, struct call *c, struct reply *r)
{
	static const struct demo_col cols[] = {
		{"user_id", NULL, "user_id", "bigint", 1},
		{"name", NULL, "name", "text", 1},
		{"category", NULL, "category", "text", 0},
		{"brand", NULL, "brand", "text", 0},
		{"status", NULL, "status", "text", 1},
		{"role", NULL, "role", "text", 1},
		{"created_at", NULL, "created_at", "timestamptz", 0},
		{"updated_at", NULL, "updated_at", "timestamptz", 0},
	};
	struct sqlb b;
	PGresult *res;

	if (!int_id(c->arg)) {
		reply_error(r, 404, "gear item %s not found", c->arg);
		return;
	}
	sqlb_init(&b);
	sqlb_add(&b, "UPDATE gear_items SET id = id");
	if (sqlb_set_cols(&b, c, cols, DW_ARRAY_LEN(cols), r) < 0)
		return;
	if (!call_has(c, "updated_at"))
		sqlb_add(&b, ", updated_at = now()");
	sqlb_add(&b, " WHERE id = $%d::bigint RETURNING " GEAR_JSON "::text",
		 sqlb_param(&b, c->arg));
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

static void go_delete(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	if (!int_id(c->arg)) {
		reply_error(r, 404, "gear item %s not found", c->arg);
		return;
	}
	reply_deleted(s, r,
		      demo_query(s, "DELETE FROM gear_items WHERE id = $1::bigint RETURNING 1", 1,
				 p),
		      "gear item", c->arg);
}

static const struct demo_route gear_ops_routes[] = {
	{"GET", "/gear-items", go_list, 0},
	{"POST", "/gear-items", go_create, ROUTE_WRITE | ROUTE_BODY},
	{"GET", "/gear-items/{}", go_get, 0},
	{"PUT", "/gear-items/{}", go_update, ROUTE_WRITE | ROUTE_BODY},
	{"DELETE", "/gear-items/{}", go_delete, ROUTE_WRITE},
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

static void v1_get(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	reply_row(s, r, demo_query(s, "SELECT " V1_JSON "::text FROM devices WHERE id = $1", 1, p),
		  200, "device", c->arg);
}

static void v1_update(struct svc *s, struct call *c, struct reply *r)
{
	static const struct demo_col cols[] = {
		{"name", NULL, "name", "text", 1},
		{"type", NULL, "type", "text", 1},
		{"config", NULL, "config", "jsonb", 0},
		{"status", NULL, "status", "text", 0},
	};
	struct sqlb b;

	sqlb_init(&b);
	sqlb_add(&b, "UPDATE devices SET updated_at = now()");
	if (sqlb_set_cols(&b, c, cols, DW_ARRAY_LEN(cols), r) < 0)
		return;
	sqlb_add(&b, " WHERE id = $%d RETURNING " V1_JSON "::text", sqlb_param(&b, c->arg));
	reply_row(s, r, demo_query(s, b.sql, b.n, b.params), 200, "device", c->arg);
}

static void v1_delete(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	reply_deleted(s, r, demo_query(s, "DELETE FROM devices WHERE id = $1 RETURNING 1", 1, p),
		      "device", c->arg);
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

static void v1_user_get(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	reply_row(s, r,
		  demo_query(s, "SELECT " V1_USER_JSON "::text FROM users WHERE id = $1", 1, p),
		  200, "user", c->arg);
}

static void v1_user_update(struct svc *s, struct call *c, struct reply *r)
{
	static const struct demo_col cols[] = {
		{"email", NULL, "email", "text", 1},
		{"name", NULL, "name", "text", 0},
		{"role", NULL, "role", "text", 1},
	};
	struct sqlb b;

	sqlb_init(&b);
	sqlb_add(&b, "UPDATE users SET updated_at = now()");
	if (sqlb_set_cols(&b, c, cols, DW_ARRAY_LEN(cols), r) < 0)
		return;
	sqlb_add(&b, " WHERE id = $%d RETURNING " V1_USER_JSON "::text", sqlb_param(&b, c->arg));
	reply_row(s, r, demo_query(s, b.sql, b.n, b.params), 200, "user", c->arg);
}

static void v1_user_delete(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	reply_deleted(s, r, demo_query(s, "DELETE FROM users WHERE id = $1 RETURNING 1", 1, p),
		      "user", c->arg);
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

static const struct demo_route iot_v1_routes[] = {
	{"GET", "/devices", v1_list, 0},
	{"POST", "/devices", v1_create, ROUTE_WRITE | ROUTE_BODY},
	{"GET", "/devices/{}", v1_get, 0},
	{"PATCH", "/devices/{}", v1_update, ROUTE_WRITE | ROUTE_BODY},
	{"DELETE", "/devices/{}", v1_delete, ROUTE_WRITE},
	{"POST", "/users", v1_user_create, ROUTE_WRITE | ROUTE_BODY},
	{"GET", "/users/{}", v1_user_get, 0},
	{"PATCH", "/users/{}", v1_user_update, ROUTE_WRITE | ROUTE_BODY},
	{"DELETE", "/users/{}", v1_user_delete, ROUTE_WRITE},
	{"POST", "/telemetry", v1_reading, ROUTE_WRITE | ROUTE_BODY},
	{"POST", "/telemetry/batch", v1_reading_batch, ROUTE_WRITE},
};

/* ---- iot-v2: the multi-tenant IoT platform --------------------------------------------------- */

/* 0 when the tenant exists; otherwise a 422 (or a database error) in r. */
static int v2_tenant_known(struct svc *s, struct reply *r, const char *tenant)
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

	p[1] = call_text2(c, "tenantId", "tenant_id");
	if (!p[1] || !*p[1]) {
		reply_error(r, 400, "tenantId is required");
		return;
	}
	if (require(c, r, req, DW_ARRAY_LEN(req)) < 0 || v2_tenant_known(s, r, p[1]) < 0)
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

/* Reads are tenant-scoped with ?tenantId=T (the guide's findUnique({ where: { id, tenantId } })):
 * another tenant's device is not found (404). Without it, any tenant's (operators, tests). */
static void v2_get(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[2] = {c->arg, call_query(c, "tenantId")};

	reply_row(s, r,
		  demo_query(s,
			     "SELECT " V2_JSON "::text FROM devices"
			     " WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
			     2, p),
		  200, "device", c->arg);
}

/* PATCH: the fields given change; tenantId, when given, must be the device's tenant (a
 * device never moves between tenants here) and must exist. */
static void v2_update(struct svc *s, struct call *c, struct reply *r)
{
	static const struct demo_col cols[] = {
		{"name", NULL, "name", "text", 1},
		{"templateId", "template_id", "template_id", "text", 0},
		{"attributes", NULL, "attributes", "jsonb", 0},
		{"metadata", NULL, "metadata", "jsonb", 0},
		{"status", NULL, "status", "text", 0},
		{"createdAt", "created_at", "created_at", "timestamptz", 0},
		{"updatedAt", "updated_at", "updated_at", "timestamptz", 0},
	};
	const char *tenant = call_text2(c, "tenantId", "tenant_id");
	const char *tmpl = call_text2(c, "templateId", "template_id");
	struct sqlb b;

	if (tenant && v2_tenant_known(s, r, tenant) < 0)
		return;
	if (tmpl && v2_template(s, r,
				"INSERT INTO device_templates (id, tenant_id, name)"
				" SELECT $1, d.tenant_id, $1 FROM devices d WHERE d.id = $2"
				" ON CONFLICT (id) DO NOTHING",
				tmpl, c->arg) < 0)
		return;
	sqlb_init(&b);
	sqlb_add(&b, "UPDATE devices SET id = id");
	if (sqlb_set_cols(&b, c, cols, DW_ARRAY_LEN(cols), r) < 0)
		return;
	if (!call_has(c, "updatedAt") && !call_has(c, "updated_at"))
		sqlb_add(&b, ", updated_at = now()");
	sqlb_add(&b, " WHERE id = $%d", sqlb_param(&b, c->arg));
	if (tenant)
		sqlb_add(&b, " AND tenant_id = $%d", sqlb_param(&b, tenant));
	sqlb_add(&b, " RETURNING " V2_JSON "::text");
	reply_row(s, r, demo_query(s, b.sql, b.n, b.params), 200, "device", c->arg);
}

static void v2_delete(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	reply_deleted(s, r, demo_query(s, "DELETE FROM devices WHERE id = $1 RETURNING 1", 1, p),
		      "device", c->arg);
}

/* Users: the V1 id, tenantId required; the timestamps may be given (backfilled history). */
static void v2_user_create(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"id", "email"};
	const char *p[7];

	p[1] = call_text2(c, "tenantId", "tenant_id");
	if (!p[1] || !*p[1]) {
		reply_error(r, 400, "tenantId is required");
		return;
	}
	if (require(c, r, req, DW_ARRAY_LEN(req)) < 0 || v2_tenant_known(s, r, p[1]) < 0)
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

/* Tenant-scoped with ?tenantId=T, as v2_get. */
static void v2_user_get(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[2] = {c->arg, call_query(c, "tenantId")};

	reply_row(s, r,
		  demo_query(s,
			     "SELECT " V2_USER_JSON "::text FROM users"
			     " WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
			     2, p),
		  200, "user", c->arg);
}

static void v2_user_update(struct svc *s, struct call *c, struct reply *r)
{
	static const struct demo_col cols[] = {
		{"email", NULL, "email", "text", 1},
		{"name", NULL, "name", "text", 0},
		{"role", NULL, "role", "text", 0},
		{"createdAt", "created_at", "created_at", "timestamptz", 0},
		{"updatedAt", "updated_at", "updated_at", "timestamptz", 0},
	};
	const char *tenant = call_text2(c, "tenantId", "tenant_id");
	struct sqlb b;

	if (tenant && v2_tenant_known(s, r, tenant) < 0)
		return;
	sqlb_init(&b);
	sqlb_add(&b, "UPDATE users SET id = id");
	if (sqlb_set_cols(&b, c, cols, DW_ARRAY_LEN(cols), r) < 0)
		return;
	if (!call_has(c, "updatedAt") && !call_has(c, "updated_at"))
		sqlb_add(&b, ", updated_at = now()");
	sqlb_add(&b, " WHERE id = $%d", sqlb_param(&b, c->arg));
	if (tenant)
		sqlb_add(&b, " AND tenant_id = $%d", sqlb_param(&b, tenant));
	sqlb_add(&b, " RETURNING " V2_USER_JSON "::text");
	reply_row(s, r, demo_query(s, b.sql, b.n, b.params), 200, "user", c->arg);
}

static void v2_user_delete(struct svc *s, struct call *c, struct reply *r)
{
	const char *p[1] = {c->arg};

	reply_deleted(s, r, demo_query(s, "DELETE FROM users WHERE id = $1 RETURNING 1", 1, p),
		      "user", c->arg);
}

/* One reading; the same reading stored twice is one row (201 either way). */
static void v2_reading(struct svc *s, struct call *c, struct reply *r)
{
	static const char *const req[] = {"deviceId", "timestamp"};
	const char *p[7];

	p[0] = call_text2(c, "tenantId", "tenant_id");
	if (!p[0] || !*p[0]) {
		reply_error(r, 400, "tenantId is required");
		return;
	}
	if (require(c, r, req, DW_ARRAY_LEN(req)) < 0 || v2_tenant_known(s, r, p[0]) < 0)
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

static const struct demo_route iot_v2_routes[] = {
	{"GET", "/devices", v2_list, 0},
	{"POST", "/devices", v2_create, ROUTE_WRITE | ROUTE_BODY},
	{"GET", "/devices/{}", v2_get, 0},
	{"PATCH", "/devices/{}", v2_update, ROUTE_WRITE | ROUTE_BODY},
	{"DELETE", "/devices/{}", v2_delete, ROUTE_WRITE},
	{"POST", "/users", v2_user_create, ROUTE_WRITE | ROUTE_BODY},
	{"GET", "/users/{}", v2_user_get, 0},
	{"PATCH", "/users/{}", v2_user_update, ROUTE_WRITE | ROUTE_BODY},
	{"DELETE", "/users/{}", v2_user_delete, ROUTE_WRITE},
	{"POST", "/telemetry", v2_reading, ROUTE_WRITE | ROUTE_BODY},
	{"POST", "/telemetry/batch", v2_reading_batch, ROUTE_WRITE},
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
