/*
 * backend.c — dw-demo-backend: the HTTP shell around the demo services of services.c.
 *
 * One libevent evhttp server, one synchronous libpq connection (a demo service answering one
 * request at a time is plenty and keeps every write trivially ordered), one log line per
 * request. Writes run inside a transaction; for services that honour Idempotency-Key the key
 * and the answer are stored in that same transaction, so a replayed request gets the stored
 * answer and is never applied twice.
 *
 * A fault switch lets tests play a sick new system: GET /_fault?mode=down503 answers 503 to
 * every later request without touching the database, mode=slow&delay_ms=N applies requests at
 * once but holds each answer back N ms (the nastiest case for a mirror: applied, yet timed
 * out), mode=ok restores normal service. Paths starting with "/_" are never affected.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "demo.h"
#include "dw.h"

enum fault_mode { FAULT_OK, FAULT_DOWN503, FAULT_SLOW };

/* A reply held back by the "slow" fault mode. */
struct pending {
	struct pending *next, *prev;
	struct svc *s;
	struct evhttp_request *req;
	struct event *timer;
	struct reply r;
	char *logline;
	char *reqid;
	int64_t t0;
};

struct svc {
	const struct demo_service *def;
	char *dsn;
	PGconn *db;
	struct event_base *base;
	struct evhttp *http;
	enum fault_mode fault;
	int delay_ms;
	struct pending pending; /* list head */
};

/* ---- replies ---------------------------------------------------------------------------- */

void reply_json(struct reply *r, int status, const char *json_text)
{
	free(r->body);
	r->status = status;
	r->body = json_text ? dw_strdup(json_text) : NULL;
}

void reply_error(struct reply *r, int status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	json_t *o;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	o = json_pack("{s:s}", "error", msg);
	free(r->body);
	r->status = status;
	r->body = o ? json_dumps(o, JSON_COMPACT) : dw_strdup("{\"error\":\"internal\"}");
	json_decref(o);
}

void reply_db_error(struct reply *r, struct svc *s, const PGresult *res, const char *what)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
	int status = 500;

	if (!msg)
		msg = PQerrorMessage(s->db);
	if (PQstatus(s->db) != CONNECTION_OK)
		status = 503;
	else if (state && strcmp(state, "23505") == 0)
		status = 409;
	else if (state && strcmp(state, "23503") == 0)
		status = 422;
	else if (state && (strncmp(state, "22", 2) == 0 || strcmp(state, "23502") == 0 ||
			   strcmp(state, "23514") == 0))
		status = 400;
	if (status >= 500)
		log_error("%s: %s: %s", s->def->name, what, msg);
	/* The detail names the offending key, e.g. "Key (id)=(2) already exists." */
	if (detail && (status == 409 || status == 422))
		reply_error(r, status, "%s: %s: %s", what, msg, detail);
	else
		reply_error(r, status, "%s: %s", what, msg);
}

/* ---- call helpers ----------------------------------------------------------------------- */

static const char *call_keep(struct call *c, char *s)
{
	if (c->nstrs == c->capstrs) {
		c->capstrs = c->capstrs ? 2 * c->capstrs : 16;
		c->strs = dw_realloc(c->strs, c->capstrs * sizeof(*c->strs));
	}
	c->strs[c->nstrs++] = s;
	return s;
}

int call_has(const struct call *c, const char *key)
{
	return c->json && json_object_get(c->json, key) != NULL;
}

const char *call_text(struct call *c, const char *key)
{
	json_t *v = c->json ? json_object_get(c->json, key) : NULL;
	char buf[64];

	if (!v || json_is_null(v))
		return NULL;
	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_integer(v)) {
		snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		return call_keep(c, dw_strdup(buf));
	}
	if (json_is_real(v)) {
		snprintf(buf, sizeof(buf), "%.17g", json_real_value(v));
		return call_keep(c, dw_strdup(buf));
	}
	if (json_is_boolean(v))
		return json_is_true(v) ? "true" : "false";
	return call_keep(c, json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY));
}

const char *call_json(struct call *c, const char *key)
{
	json_t *v = c->json ? json_object_get(c->json, key) : NULL;

	if (!v || json_is_null(v))
		return NULL;
	return call_keep(c, json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY));
}

const char *call_text2(struct call *c, const char *key, const char *alt)
{
	if (call_has(c, key) || !alt)
		return call_text(c, key);
	return call_text(c, alt);
}

const char *call_query(const struct call *c, const char *key)
{
	return c->query ? evhttp_find_header(c->query, key) : NULL;
}

static void call_free(struct call *c)
{
	for (size_t i = 0; i < c->nstrs; i++)
		free(c->strs[i]);
	free(c->strs);
	json_decref(c->json);
}

/* ---- SQL builder ------------------------------------------------------------------------ */

void sqlb_init(struct sqlb *b)
{
	b->len = 0;
	b->sql[0] = '\0';
	b->n = 0;
}

void sqlb_add(struct sqlb *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(b->sql + b->len, sizeof(b->sql) - b->len, fmt, ap);
	va_end(ap);
	/* Statements are built from constants only; overflowing is a programming error. */
	if (n < 0 || (size_t)n >= sizeof(b->sql) - b->len)
		abort();
	b->len += (size_t)n;
}

int sqlb_param(struct sqlb *b, const char *value)
{
	if (b->n >= (int)DW_ARRAY_LEN(b->params))
		abort();
	b->params[b->n++] = value;
	return b->n;
}

int sqlb_set_cols(struct sqlb *b, struct call *c, const struct demo_col *cols, size_t n,
		  struct reply *r)
{
	int added = 0;

	for (size_t i = 0; i < n; i++) {
		const char *key = cols[i].key;
		const char *v;

		if (!call_has(c, key)) {
			if (!cols[i].alt || !call_has(c, cols[i].alt))
				continue;
			key = cols[i].alt;
		}
		v = strcmp(cols[i].cast, "jsonb") == 0 ? call_json(c, key) : call_text(c, key);
		if (!v && cols[i].notnull) {
			reply_error(r, 400, "%s must not be null", key);
			return -1;
		}
		sqlb_add(b, ", %s = $%d::%s", cols[i].col, sqlb_param(b, v), cols[i].cast);
		added++;
	}
	return added;
}

/* ---- database ----------------------------------------------------------------------------- */

PGresult *demo_query(struct svc *s, const char *sql, int nparams, const char *const *params)
{
	return PQexecParams(s->db, sql, nparams, NULL, params, NULL, NULL, 0);
}

int demo_res_ok(const PGresult *res)
{
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

	return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/* A simple statement without parameters (BEGIN, COMMIT, ROLLBACK); 0 on success. */
static int db_simple(struct svc *s, const char *sql)
{
	PGresult *res = demo_query(s, sql, 0, NULL);
	int ok = demo_res_ok(res);

	if (!ok)
		log_error("%s: %s: %s", s->def->name, sql, PQerrorMessage(s->db));
	PQclear(res);
	return ok ? 0 : -1;
}

/* Make sure the connection is usable: reconnect after a server restart, and never inherit a
 * transaction left open by an earlier failure. */
static int db_ensure(struct svc *s)
{
	if (PQstatus(s->db) != CONNECTION_OK) {
		PQreset(s->db);
		if (PQstatus(s->db) != CONNECTION_OK) {
			log_warn("%s: database unavailable: %s", s->def->name,
				 PQerrorMessage(s->db));
			return -1;
		}
		log_info("%s: reconnected to the database", s->def->name);
	}
	if (PQtransactionStatus(s->db) != PQTRANS_IDLE)
		(void)db_simple(s, "ROLLBACK");
	return 0;
}

static int db_init_schema(struct svc *s)
{
	PGresult *res;
	int ok;
	char *script;
	size_t len = strlen(s->def->schema_sql) + 256;

	/* The DDL is a constant of this program, so the simple-query protocol (which allows
	 * several statements) carries no injection risk; the advisory lock keeps two backends
	 * initialising the same database at once from racing on CREATE ... IF NOT EXISTS. */
	script = dw_malloc(len);
	snprintf(script, len, "BEGIN;\nSELECT pg_advisory_xact_lock(7216321);\n%s\nCOMMIT;\n",
		 s->def->schema_sql);
	res = PQexec(s->db, script);
	ok = demo_res_ok(res);
	if (!ok)
		log_error("%s: --init-schema failed: %s", s->def->name, PQerrorMessage(s->db));
	PQclear(res);
	free(script);
	if (!ok && PQtransactionStatus(s->db) != PQTRANS_IDLE)
		(void)db_simple(s, "ROLLBACK");
	return ok ? 0 : -1;
}

/* ---- routing and the write transaction ---------------------------------------------------- */

/* Does path match pattern? On a match, *cap receives the {} segment (malloc'd, decoded). */
static int route_match(const char *pat, const char *path, char **cap)
{
	*cap = NULL;
	while (*pat && *path) {
		if (strncmp(pat, "{}", 2) == 0) {
			size_t n = strcspn(path, "/");

			if (n == 0)
				break;
			free(*cap);
			*cap = dw_strndup(path, n);
			pat += 2;
			path += n;
			continue;
		}
		if (*pat != *path)
			break;
		pat++;
		path++;
	}
	if (*pat == '\0' && *path == '\0') {
		if (*cap) {
			char *dec = evhttp_uridecode(*cap, 0, NULL);

			free(*cap);
			*cap = dec;
		}
		return 1;
	}
	free(*cap);
	*cap = NULL;
	return 0;
}

/* Runs a write route in one transaction. With an Idempotency-Key on a service that honours it,
 * a key already seen answers its stored reply (422 if it was used for another request); a
 * fresh key is stored with the reply in the same transaction when the write succeeds (2xx).
 * Failed writes change nothing and are not stored, so retrying them re-evaluates. */
static void run_write(struct svc *s, const struct demo_route *rt, struct call *c,
		      struct reply *r)
{
	char fingerprint[1024];
	PGresult *res = NULL;

	snprintf(fingerprint, sizeof(fingerprint), "%s %s", c->method, c->path);
	if (db_simple(s, "BEGIN") < 0) {
		reply_error(r, 503, "database unavailable");
		return;
	}
	if (c->idem_key) {
		const char *p[1] = {c->idem_key};

		res = demo_query(s,
				 "SELECT status, body, request FROM idempotency_keys WHERE key = $1"
				 " FOR UPDATE",
				 1, p);
		if (!demo_res_ok(res)) {
			reply_db_error(r, s, res, "idempotency lookup");
			goto rollback;
		}
		if (PQntuples(res) == 1) {
			if (strcmp(PQgetvalue(res, 0, 2), fingerprint) != 0) {
				reply_error(r, 422, "Idempotency-Key %s was used for %s",
					    c->idem_key, PQgetvalue(res, 0, 2));
			} else {
				reply_json(r, atoi(PQgetvalue(res, 0, 0)),
					   PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1));
				r->replayed = 1;
			}
			goto rollback;
		}
		PQclear(res);
		res = NULL;
	}
	rt->fn(s, c, r);
	if (r->status < 200 || r->status > 299)
		goto rollback;
	if (c->idem_key) {
		char st[16];
		const char *p[4] = {c->idem_key, st, r->body, fingerprint};

		snprintf(st, sizeof(st), "%d", r->status);
		res = demo_query(s,
				 "INSERT INTO idempotency_keys (key, status, body, request)"
				 " VALUES ($1, $2::int, $3, $4)",
				 4, p);
		if (!demo_res_ok(res)) {
			reply_db_error(r, s, res, "storing the idempotency key");
			goto rollback;
		}
	}
	if (db_simple(s, "COMMIT") < 0)
		reply_error(r, 503, "commit failed");
	PQclear(res);
	return;
rollback:
	PQclear(res);
	(void)db_simple(s, "ROLLBACK");
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
	switch (cmd) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_TRACE: return "TRACE";
	case EVHTTP_REQ_CONNECT: return "CONNECT";
	case EVHTTP_REQ_PATCH: return "PATCH";
	}
	return "?";
}

static void handle_health(struct svc *s, struct reply *r)
{
	PGresult *res;
	char buf[128];

	if (db_ensure(s) < 0) {
		reply_error(r, 503, "database unavailable");
		return;
	}
	res = demo_query(s, "SELECT 1", 0, NULL);
	if (!demo_res_ok(res)) {
		reply_db_error(r, s, res, "health");
	} else {
		snprintf(buf, sizeof(buf), "{\"status\":\"ok\",\"service\":\"%s\"}", s->def->name);
		reply_json(r, 200, buf);
	}
	PQclear(res);
}

static void handle_fault(struct svc *s, struct call *c, struct reply *r)
{
	const char *mode = call_query(c, "mode");
	const char *delay = call_query(c, "delay_ms");
	char buf[128];
	long d = 1000;

	if (delay) {
		char *end;

		errno = 0;
		d = strtol(delay, &end, 10);
		if (errno || *end || end == delay || d < 0 || d > 600000) {
			reply_error(r, 400, "delay_ms must be 0..600000");
			return;
		}
	}
	if (!mode || strcmp(mode, "ok") == 0) {
		s->fault = FAULT_OK;
	} else if (strcmp(mode, "down503") == 0) {
		s->fault = FAULT_DOWN503;
	} else if (strcmp(mode, "slow") == 0) {
		s->fault = FAULT_SLOW;
		s->delay_ms = (int)d;
	} else {
		reply_error(r, 400, "mode must be ok, down503 or slow");
		return;
	}
	mode = s->fault == FAULT_OK ? "ok" : s->fault == FAULT_DOWN503 ? "down503" : "slow";
	snprintf(buf, sizeof(buf), "{\"mode\":\"%s\",\"delay_ms\":%d}", mode,
		 s->fault == FAULT_SLOW ? s->delay_ms : 0);
	log_info("%s: fault mode set to %s", s->def->name, mode);
	reply_json(r, 200, buf);
}

static void dispatch(struct svc *s, struct call *c, struct reply *r)
{
	const struct demo_route *rt = NULL;
	int path_known = 0;

	if (strcmp(c->path, "/health") == 0 &&
	    (strcmp(c->method, "GET") == 0 || strcmp(c->method, "HEAD") == 0)) {
		handle_health(s, r);
		return;
	}
	for (size_t i = 0; i < s->def->nroutes; i++) {
		char *cap;

		if (!route_match(s->def->routes[i].pattern, c->path, &cap))
			continue;
		path_known = 1;
		const char *m = s->def->routes[i].method;

		/* HEAD is GET without the body; evhttp leaves the body out. */
		if (strcmp(m, c->method) == 0 ||
		    (strcmp(c->method, "HEAD") == 0 && strcmp(m, "GET") == 0)) {
			rt = &s->def->routes[i];
			c->arg = call_keep(c, cap);
			c->res = rt->res;
			break;
		}
		free(cap);
	}
	if (!rt) {
		reply_error(r, path_known ? 405 : 404, "%s %s", path_known ? "method not allowed" :
			    "not found", c->path);
		return;
	}
	if (rt->flags & ROUTE_BODY) {
		json_error_t jerr;

		c->json = json_loadb(c->body, c->body_len, 0, &jerr);
		if (!c->json) {
			reply_error(r, 400, "invalid JSON: %s", jerr.text);
			return;
		}
		if (!json_is_object(c->json)) {
			reply_error(r, 400, "the body must be a JSON object");
			return;
		}
	}
	if (db_ensure(s) < 0) {
		reply_error(r, 503, "database unavailable");
		return;
	}
	if (rt->flags & ROUTE_WRITE)
		run_write(s, rt, c, r);
	else
		rt->fn(s, c, r);
}

/* ---- HTTP ------------------------------------------------------------------------------- */

static void send_reply(struct evhttp_request *req, const struct reply *r, const char *logline,
		       const char *reqid, int64_t t0)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct evbuffer *buf = NULL;

	if (r->body) {
		buf = evbuffer_new();
		if (!buf)
			abort();
		evbuffer_add(buf, r->body, strlen(r->body));
		evhttp_add_header(out, "Content-Type", "application/json");
	}
	if (r->replayed)
		evhttp_add_header(out, "Idempotent-Replayed", "true");
	evhttp_send_reply(req, r->status, NULL, buf);
	if (buf)
		evbuffer_free(buf);
	dw_log(DW_LOG_INFO, reqid, "%s -> %d%s %.1fms", logline, r->status,
	       r->replayed ? " (idempotent replay)" : "", (double)(dw_now_us() - t0) / 1000.0);
}

static void pending_free(struct pending *p)
{
	p->prev->next = p->next;
	p->next->prev = p->prev;
	event_free(p->timer);
	free(p->r.body);
	free(p->logline);
	free(p->reqid);
	free(p);
}

static void pending_fire(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;

	(void)fd;
	(void)what;
	/* If the client went away meanwhile, evhttp detached the request and sending frees it. */
	send_reply(p->req, &p->r, p->logline, p->reqid, p->t0);
	pending_free(p);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct svc *s = arg;
	struct call c = {0};
	struct reply r = {0};
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct evbuffer *body = evhttp_request_get_input_buffer(req);
	struct evkeyvalq query = {0};
	const char *reqid = evhttp_find_header(in, "X-Request-Id");
	const char *q, *route;
	char logline[512];
	char *bodytext;
	int64_t t0 = dw_now_us();
	size_t blen = evbuffer_get_length(body);

	c.method = method_name(evhttp_request_get_command(req));
	c.path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (!c.path || !*c.path)
		c.path = "/";
	q = uri ? evhttp_uri_get_query(uri) : NULL;
	if (q && evhttp_parse_query_str(q, &query) == 0)
		c.query = &query;
	bodytext = dw_malloc(blen + 1);
	evbuffer_copyout(body, bodytext, blen);
	bodytext[blen] = '\0';
	c.body = bodytext;
	c.body_len = blen;
	if (s->def->idempotent)
		c.idem_key = evhttp_find_header(in, "Idempotency-Key");
	route = evhttp_find_header(in, "X-Dualwrite-Route");
	snprintf(logline, sizeof(logline), "%s %s %s%s%s%s%s", s->def->name, c.method,
		 evhttp_request_get_uri(req), c.idem_key ? " idem=" : "",
		 c.idem_key ? c.idem_key : "", route ? " route=" : "", route ? route : "");

	if (strncmp(c.path, "/_", 2) == 0) {
		if (strcmp(c.path, "/_fault") == 0 && strcmp(c.method, "GET") == 0)
			handle_fault(s, &c, &r);
		else
			reply_error(&r, 404, "not found %s", c.path);
	} else if (s->fault == FAULT_DOWN503) {
		reply_error(&r, 503, "service unavailable (fault injection)");
	} else {
		dispatch(s, &c, &r);
	}

	if (s->fault == FAULT_SLOW && strncmp(c.path, "/_", 2) != 0 && s->delay_ms > 0) {
		struct pending *p = dw_calloc(1, sizeof(*p));
		struct timeval tv = {s->delay_ms / 1000, (suseconds_t)(s->delay_ms % 1000) * 1000};

		p->s = s;
		p->req = req;
		p->r = r;
		p->logline = dw_strdup(logline);
		p->reqid = dw_strdup(reqid);
		p->t0 = t0;
		p->timer = evtimer_new(s->base, pending_fire, p);
		if (!p->timer)
			abort();
		p->next = s->pending.next;
		p->prev = &s->pending;
		p->next->prev = p;
		s->pending.next = p;
		evtimer_add(p->timer, &tv);
	} else {
		send_reply(req, &r, logline, reqid, t0);
		free(r.body);
	}
	evhttp_clear_headers(&query);
	free(bodytext);
	call_free(&c);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct svc *s = arg;

	struct timeval flush = {0, 200000};

	(void)what;
	log_info("%s: signal %d, exiting", s->def->name, (int)sig);
	/* Answer what the slow mode still holds rather than drop it, and give the loop a moment
	 * to write those answers out. */
	/* pending_fire unlinks before freeing; the analyzer loses that. */
	while (s->pending.next != &s->pending)
		pending_fire(-1, 0, s->pending.next); /* NOLINT(clang-analyzer-unix.Malloc) */
	event_base_loopexit(s->base, &flush);
}

/* ---- main --------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	char names[128];

	demo_service_names(names, sizeof(names));
	fprintf(f,
		"usage: dw-demo-backend --service NAME --listen HOST:PORT [--dsn DSN]\n"
		"                       [--init-schema] [-v]\n"
		"       dw-demo-backend --print-schema NAME\n"
		"\n"
		"Demo backends for the dualwrite migration plans, on PostgreSQL.\n"
		"  --service NAME     one of: %s\n"
		"  --listen ADDR      e.g. 127.0.0.1:8000\n"
		"  --dsn DSN          libpq connection string (default: dbname=<service db>;\n"
		"                     PGHOST, PGPORT, PGUSER from the environment apply)\n"
		"  --init-schema      create the service's tables if they do not exist\n"
		"  --print-schema N   print the embedded DDL of service N and exit\n"
		"  -v, --verbose      debug logging\n"
		"  -h, --help         this text\n"
		"Fault switch: GET /_fault?mode=ok|down503|slow[&delay_ms=N]\n"
		"SIGTERM/SIGINT exit 0.\n",
		names);
}

static int parse_listen(const char *addr, char *host, size_t hostlen, unsigned short *port)
{
	const char *colon = strrchr(addr, ':');
	char *end;
	long p;
	size_t n;

	if (!colon)
		return -1;
	n = (size_t)(colon - addr);
	if (n >= 2 && addr[0] == '[' && addr[n - 1] == ']') {
		addr++;
		n -= 2;
	}
	if (n == 0 || n >= hostlen)
		return -1;
	memcpy(host, addr, n);
	host[n] = '\0';
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || p < 1 || p > 65535)
		return -1;
	*port = (unsigned short)p;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"service", required_argument, NULL, 's'},
		{"listen", required_argument, NULL, 'l'},
		{"dsn", required_argument, NULL, 'd'},
		{"init-schema", no_argument, NULL, 'i'},
		{"print-schema", required_argument, NULL, 'p'},
		{"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct svc s = {0};
	const char *service = NULL, *listen = NULL, *dsn = NULL;
	struct event *sigterm = NULL, *sigint = NULL;
	char host[256];
	unsigned short port = 0;
	int init = 0, opt, rc = 1;

	while ((opt = getopt_long(argc, argv, "s:l:d:ivh", opts, NULL)) != -1) {
		switch (opt) {
		case 's': service = optarg; break;
		case 'l': listen = optarg; break;
		case 'd': dsn = optarg; break;
		case 'i': init = 1; break;
		case 'v': dw_log_set_level(DW_LOG_DEBUG); break;
		case 'h': usage(stdout); return 0;
		case 'p': {
			const struct demo_service *d = demo_service_find(optarg);

			if (!d) {
				fprintf(stderr, "dw-demo-backend: unknown service \"%s\"\n",
					optarg);
				return 2;
			}
			fputs(d->schema_sql, stdout);
			return 0;
		}
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc || !service || !listen) {
		usage(stderr);
		return 2;
	}
	s.def = demo_service_find(service);
	if (!s.def) {
		fprintf(stderr, "dw-demo-backend: --service: unknown service \"%s\"\n", service);
		return 2;
	}
	if (parse_listen(listen, host, sizeof(host), &port) < 0) {
		fprintf(stderr, "dw-demo-backend: --listen: expected HOST:PORT, got \"%s\"\n",
			listen);
		return 2;
	}
	s.pending.next = s.pending.prev = &s.pending;
	signal(SIGPIPE, SIG_IGN);

	s.dsn = dw_strdup(dsn ? dsn : s.def->default_dsn);
	s.db = PQconnectdb(s.dsn);
	if (PQstatus(s.db) != CONNECTION_OK) {
		fprintf(stderr, "dw-demo-backend: %s: cannot connect to \"%s\": %s", s.def->name,
			s.dsn, PQerrorMessage(s.db));
		goto out;
	}
	if (init && db_init_schema(&s) < 0)
		goto out;

	s.base = event_base_new();
	s.http = s.base ? evhttp_new(s.base) : NULL;
	if (!s.http) {
		fprintf(stderr, "dw-demo-backend: cannot create the event loop\n");
		goto out;
	}
	evhttp_set_allowed_methods(s.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
						   EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE |
						   EVHTTP_REQ_HEAD);
	evhttp_set_max_body_size(s.http, 1 << 20);
	evhttp_set_timeout(s.http, 120);
	evhttp_set_gencb(s.http, on_request, &s);
	if (!evhttp_bind_socket_with_handle(s.http, host, port)) {
		fprintf(stderr, "dw-demo-backend: %s: cannot listen on %s: %s\n", s.def->name,
			listen, strerror(errno));
		goto out;
	}
	sigterm = evsignal_new(s.base, SIGTERM, on_signal, &s);
	sigint = evsignal_new(s.base, SIGINT, on_signal, &s);
	if (!sigterm || !sigint || evsignal_add(sigterm, NULL) < 0 ||
	    evsignal_add(sigint, NULL) < 0) {
		fprintf(stderr, "dw-demo-backend: cannot install signal handlers\n");
		goto out;
	}
	log_info("%s: listening on %s (database: %s%s)", s.def->name, listen, PQdb(s.db),
		 init ? ", schema initialised" : "");
	if (event_base_dispatch(s.base) < 0)
		goto out;
	while (s.pending.next != &s.pending)
		pending_fire(-1, 0, s.pending.next); /* NOLINT(clang-analyzer-unix.Malloc) */
	rc = 0;
out:
	if (sigterm)
		event_free(sigterm);
	if (sigint)
		event_free(sigint);
	if (s.http)
		evhttp_free(s.http);
	if (s.base)
		event_base_free(s.base);
	PQfinish(s.db);
	free(s.dsn);
	return rc;
}
