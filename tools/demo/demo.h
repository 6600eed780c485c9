/*
 * demo.h — the pieces shared by the demo backend's HTTP shell (backend.c), its four services
 * (services.c) and their embedded schemas (schema.c).
 *
 * dw-demo-backend stands in for the systems of the two migration plans — the legacy Gear
 * Operations equipment API and the new gear_ops service, the IoT platform V1 and V2 — as small
 * but real HTTP services on PostgreSQL, so that the demo and the end-to-end tests exercise
 * dualwrite against databases they can verify. They are demo services, not the product: one
 * thread, one synchronous libpq connection, answers built by PostgreSQL's json functions.
 */
#ifndef DW_DEMO_H
#define DW_DEMO_H

#include <stddef.h>

#include <jansson.h>
#include <libpq-fe.h>

struct evkeyvalq;

/* What the generic row handlers (services.c: get, update, delete by the route's {}) need
 * to know of a table: defined in services.c. */
struct demo_resource;

/* One HTTP request as the handlers see it. */
struct call {
	const char *method;      /* "GET", "POST", ... */
	const char *path;        /* raw path without the query */
	const char *arg;         /* the decoded {} segment of the route, or NULL */
	struct evkeyvalq *query; /* decoded query parameters */
	const char *body;        /* NUL-terminated request body ("" when none) */
	size_t body_len;
	json_t *json;            /* the body as a JSON object when the route wants one */
	const char *idem_key;    /* Idempotency-Key, NULL when absent or unsupported */
	const struct demo_resource *res; /* the route's rows (demo_route.res), or NULL */
	char **strs;             /* strings owned by the call, freed with it */
	size_t nstrs, capstrs;
};

/* The answer a handler produces; sent now or, in the "slow" fault mode, later. */
struct reply {
	int status;
	char *body;   /* owned JSON text; NULL: no body */
	int replayed; /* answered from the idempotency store */
};

struct svc;
typedef void (*demo_handler)(struct svc *s, struct call *c, struct reply *r);

enum {
	ROUTE_WRITE = 1, /* runs in one transaction, with Idempotency-Key handling when supported */
	ROUTE_BODY = 2,  /* needs a JSON object body (400 otherwise) */
};

struct demo_route {
	const char *method;
	const char *pattern; /* "/gear-items/{}": {} matches one non-empty segment */
	demo_handler fn;
	unsigned flags;
	const struct demo_resource *res; /* the rows {} addresses, for fn; NULL: none */
};

struct demo_service {
	const char *name;        /* "user-core" */
	const char *default_dsn; /* "dbname=user_core" */
	const char *schema_sql;  /* idempotent DDL, also in tools/demo/schema/<name>.sql */
	int idempotent;          /* honours Idempotency-Key (table idempotency_keys) */
	const struct demo_route *routes;
	size_t nroutes;
};

/* services.c */
const struct demo_service *demo_service_find(const char *name);
void demo_service_names(char *buf, size_t len);

/* schema.c: the embedded DDL per service. */
extern const char demo_schema_user_core[];
extern const char demo_schema_gear_ops[];
extern const char demo_schema_iot_v1[];
extern const char demo_schema_iot_v2[];

/* backend.c: database access for handlers. Every query is parameterized. */
PGresult *demo_query(struct svc *s, const char *sql, int nparams, const char *const *params);
/* 1 when res is a successful command or tuples result. */
int demo_res_ok(const PGresult *res);

/* Replies. */
void reply_json(struct reply *r, int status, const char *json_text);
void reply_error(struct reply *r, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* An error from PostgreSQL mapped to a status by SQLSTATE (23505 -> 409, 23503 -> 422, data
 * exceptions and not-null violations -> 400, connection loss -> 503, else 500). */
void reply_db_error(struct reply *r, struct svc *s, const PGresult *res, const char *what);

/* Body fields. A field given as a JSON string is passed as is, numbers and booleans in their
 * JSON text, objects and arrays as compact JSON; absent and null both give NULL. */
int call_has(const struct call *c, const char *key);
const char *call_text(struct call *c, const char *key);
/* call_text of the first of key, alt that is present (alt may be NULL). */
const char *call_text2(struct call *c, const char *key, const char *alt);
/* The field as compact JSON text (for jsonb columns); absent and null give NULL. */
const char *call_json(struct call *c, const char *key);
/* A query parameter, or NULL. */
const char *call_query(const struct call *c, const char *key);

/* A small SQL builder for statements whose column list depends on the body. */
struct sqlb {
	char sql[4096];
	size_t len;
	const char *params[32];
	int n;
};
void sqlb_init(struct sqlb *b);
void sqlb_add(struct sqlb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Adds a parameter and returns its number ($N). */
int sqlb_param(struct sqlb *b, const char *value);

/* An updatable column: body key (and alternative spelling), column, SQL cast, and whether the
 * column refuses null. */
struct demo_col {
	const char *key;
	const char *alt;
	const char *col;
	const char *cast;
	int notnull;
};
/* Appends ", col = $N::cast" for each column present in the body (a jsonb column takes the
 * value as JSON text, see call_json). Returns the number of
 * columns added, or -1 with a 400 in r when a not-null column is given null. */
int sqlb_set_cols(struct sqlb *b, struct call *c, const struct demo_col *cols, size_t n,
		  struct reply *r);

#endif
