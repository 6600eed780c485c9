/*
 * config.c — load and check a dualwrite configuration (SPEC §3).
 *
 * Pass 1 walks every known key once, checking type and range and filling in
 * defaults; unknown keys are errors (with a "did you mean" hint) because a
 * misspelt key silently ignored is a mirror silently not configured. Pass 2
 * resolves cross references: routes name existing upstreams, expressions
 * compile against the sources their place allows, $path names are captures
 * of the route, and no route is shadowed by an earlier one. Both passes keep
 * going after an error, so one run of `dualwrited -t` lists everything.
 *
 * The snapshot built here is never modified after config_load returns;
 * readers share it through config_ref/config_unref.
 */
#include "config.h"
#include "confsyntax.h"
#include "bucket.h"
#include "http_parse.h"
#include "tls.h"

#include <errno.h>
#include <stddef.h>
#include <libconfig.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define WHERE_MAX 320

struct loader {
	const char *file;
	unsigned flags; /* CONFIG_* */
	struct dw_errlist *errs;
	size_t nerrs;
	struct dw_config *c;
};

static void lerr(struct loader *L, int line, const char *where, const char *fmt, ...)
	DW_PRINTF(4, 5);

static void lerr(struct loader *L, int line, const char *where, const char *fmt, ...)
{
	char what[768];
	char head[WHERE_MAX + 64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (line > 0)
		snprintf(head, sizeof(head), "%s:%d", L->file, line);
	else
		snprintf(head, sizeof(head), "%s", L->file);
	if (where && *where)
		dw_errlist_add(L->errs, "%s: %s: %s", head, where, what);
	else
		dw_errlist_add(L->errs, "%s: %s", head, what);
	L->nerrs++;
}

static int sline(const config_setting_t *s)
{
	return s ? (int)config_setting_source_line(s) : 0;
}

/* Whether a listen host can only be reached from this machine: "localhost",
 * 127.0.0.0/8, ::1 (also v4-mapped). "" (every address) and any other name
 * are not. */
static bool host_is_loopback(const char *host)
{
	unsigned char a[16];

	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, a) == 1)
		return a[0] == 127;
	if (inet_pton(AF_INET6, host, a) == 1) {
		static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		static const unsigned char one[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
		return memcmp(a, one, 16) == 0 || (memcmp(a, v4mapped, 12) == 0 && a[12] == 127);
	}
	return false;
}

/* snprintf for where-strings: truncation of a very long name is acceptable. */
static void wfmt(char *buf, size_t n, const char *fmt, ...) DW_PRINTF(3, 4);

static void wfmt(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, n, fmt, ap);
	va_end(ap);
}

/* "limits" + "max_body_bytes" -> "limits.max_body_bytes";
 * "upstream \"x\"" + "url" -> "upstream \"x\": url". */
static void wjoin(char *buf, size_t n, const char *prefix, const char *key)
{
	size_t pl = strlen(prefix);

	if (pl == 0)
		wfmt(buf, n, "%s", key);
	else if (prefix[pl - 1] == '"')
		wfmt(buf, n, "%s: %s", prefix, key);
	else
		wfmt(buf, n, "%s.%s", prefix, key);
}

/* ---------------------------------------------------------------- helpers */

static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t row[64];

	if (la >= 63 || lb >= 63)
		return 99;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t prev = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t cur = row[j];
			size_t sub = prev + (a[i - 1] != b[j - 1]);
			size_t del = row[j] + 1, ins = row[j - 1] + 1;
			row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
			prev = cur;
		}
	}
	return row[lb];
}

/* Report every member of group whose name is not in keys. */
static void check_keys(struct loader *L, const config_setting_t *group, const char *prefix,
		       const char *const *keys)
{
	int n = config_setting_length(group);

	for (int i = 0; i < n; i++) {
		const config_setting_t *m = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(m), *best = NULL;
		size_t bestd = 3;
		bool known = false;
		char w[WHERE_MAX];

		for (const char *const *k = keys; *k; k++) {
			size_t d;
			if (strcmp(*k, name) == 0) {
				known = true;
				break;
			}
			d = edit_distance(*k, name);
			if (d < bestd) {
				bestd = d;
				best = *k;
			}
		}
		if (known)
			continue;
		wjoin(w, sizeof(w), prefix, name);
		if (best)
			lerr(L, sline(m), w, "unknown key '%s' (did you mean '%s'?)", name, best);
		else
			lerr(L, sline(m), w, "unknown key '%s'", name);
	}
}

/* Returns 1 and sets *out when key is present and valid, 0 when absent,
 * -1 after reporting an error. */
static int get_int(struct loader *L, const config_setting_t *grp, const char *key,
		   const char *prefix, long long lo, long long hi, long long *out)
{
	const config_setting_t *s = grp ? config_setting_get_member(grp, key) : NULL;
	char w[WHERE_MAX];
	long long v;

	if (!s)
		return 0;
	wjoin(w, sizeof(w), prefix, key);
	if (config_setting_type(s) != CONFIG_TYPE_INT && config_setting_type(s) != CONFIG_TYPE_INT64) {
		lerr(L, sline(s), w, "expected an integer");
		return -1;
	}
	v = config_setting_get_int64(s);
	if (v < lo || v > hi) {
		lerr(L, sline(s), w, "%lld is out of range (%lld..%lld)", v, lo, hi);
		return -1;
	}
	*out = v;
	return 1;
}

static void set_int(struct loader *L, const config_setting_t *grp, const char *key,
		    const char *prefix, long long lo, long long hi, int *out)
{
	long long v;
	if (get_int(L, grp, key, prefix, lo, hi, &v) == 1)
		*out = (int)v;
}

static int get_str(struct loader *L, const config_setting_t *grp, const char *key,
		   const char *prefix, const char **out)
{
	const config_setting_t *s = grp ? config_setting_get_member(grp, key) : NULL;
	char w[WHERE_MAX];

	if (!s)
		return 0;
	if (config_setting_type(s) != CONFIG_TYPE_STRING) {
		wjoin(w, sizeof(w), prefix, key);
		lerr(L, sline(s), w, "expected a string");
		return -1;
	}
	*out = config_setting_get_string(s);
	return 1;
}

/* A group member that must itself be a group, or NULL (reported if wrong type). */
static const config_setting_t *get_group(struct loader *L, const config_setting_t *grp,
					 const char *key, const char *prefix)
{
	const config_setting_t *s = config_setting_get_member(grp, key);
	char w[WHERE_MAX];

	if (s && !config_setting_is_group(s)) {
		wjoin(w, sizeof(w), prefix, key);
		lerr(L, sline(s), w, "expected a group { ... }");
		return NULL;
	}
	return s;
}


static bool is_ident(const char *s)
{
	if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
		return false;
	for (s++; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_'))
			return false;
	return true;
}

/* "table" or "schema.table" */
static bool is_qualified_ident(const char *s)
{
	const char *dot = strchr(s, '.');
	char buf[128];

	if (!dot)
		return is_ident(s);
	if ((size_t)(dot - s) >= sizeof(buf))
		return false;
	memcpy(buf, s, (size_t)(dot - s));
	buf[dot - s] = '\0';
	return is_ident(buf) && is_ident(dot + 1);
}

static int parse_port(const char *s, int *port)
{
	long v = 0;

	if (!*s || strlen(s) > 5)
		return -1;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		v = v * 10 + (*p - '0');
	}
	if (v < 1 || v > 65535)
		return -1;
	*port = (int)v;
	return 0;
}

int config_split_hostport(const char *s, char *host, size_t hostlen, int *port,
			  struct dw_err *err)
{
	const char *h, *colon;
	size_t hl;

	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (!rb || rb[1] != ':') {
			dw_err_set(err, "\"%s\": expected \"[v6-address]:port\"", s);
			return -1;
		}
		h = s + 1;
		hl = (size_t)(rb - h);
		colon = rb + 1;
		if (hl == 0 || strspn(h, "0123456789abcdefABCDEF:.%") < hl) {
			dw_err_set(err, "\"%s\": bad IPv6 address", s);
			return -1;
		}
	} else {
		colon = strrchr(s, ':');
		if (!colon) {
			dw_err_set(err, "\"%s\": expected \"host:port\"", s);
			return -1;
		}
		h = s;
		hl = (size_t)(colon - s);
		if (hl == 0 || memchr(h, ':', hl)) {
			dw_err_set(err, "\"%s\": expected \"host:port\" (IPv6 as \"[::1]:port\")", s);
			return -1;
		}
	}
	if (hl >= hostlen) {
		dw_err_set(err, "\"%s\": host too long", s);
		return -1;
	}
	if (parse_port(colon + 1, port) < 0) {
		dw_err_set(err, "\"%s\": bad port \"%s\" (1..65535)", s, colon + 1);
		return -1;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	return 0;
}

static int parse_url(const char *url, struct dw_upstream *u, struct dw_err *err)
{
	const char *p, *auth_end, *h, *portstr = NULL;
	size_t hl;
	int defport;
	char portbuf[16];

	if (strncasecmp(url, "http://", 7) == 0) {
		u->tls = false;
		p = url + 7;
		defport = 80;
	} else if (strncasecmp(url, "https://", 8) == 0) {
		u->tls = true;
		p = url + 8;
		defport = 443;
	} else {
		dw_err_set(err, "\"%s\": unsupported scheme (expected http:// or https://)", url);
		return -1;
	}
	if (strpbrk(p, "?#")) {
		dw_err_set(err, "\"%s\": a query or fragment is not allowed", url);
		return -1;
	}
	auth_end = p + strcspn(p, "/");
	if (memchr(p, '@', (size_t)(auth_end - p))) {
		dw_err_set(err, "\"%s\": user information is not allowed", url);
		return -1;
	}
	if (*p == '[') {
		const char *rb = memchr(p, ']', (size_t)(auth_end - p));
		if (!rb) {
			dw_err_set(err, "\"%s\": unclosed '[' in host", url);
			return -1;
		}
		h = p + 1;
		hl = (size_t)(rb - h);
		if (hl == 0 || strspn(h, "0123456789abcdefABCDEF:.") < hl) {
			dw_err_set(err, "\"%s\": bad IPv6 address", url);
			return -1;
		}
		if (rb + 1 < auth_end) {
			if (rb[1] != ':') {
				dw_err_set(err, "\"%s\": bad host", url);
				return -1;
			}
			portstr = rb + 2;
		}
	} else {
		const char *colon = memchr(p, ':', (size_t)(auth_end - p));
		h = p;
		hl = (size_t)((colon ? colon : auth_end) - p);
		if (colon)
			portstr = colon + 1;
		if (hl == 0) {
			dw_err_set(err, "\"%s\": missing host", url);
			return -1;
		}
		for (size_t i = 0; i < hl; i++) {
			char c = h[i];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			      (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~')) {
				dw_err_set(err, "\"%s\": bad character in host", url);
				return -1;
			}
		}
	}
	u->port = defport;
	if (portstr) {
		size_t pl = (size_t)(auth_end - portstr);
		if (pl == 0 || pl >= sizeof(portbuf)) {
			dw_err_set(err, "\"%s\": bad port", url);
			return -1;
		}
		memcpy(portbuf, portstr, pl);
		portbuf[pl] = '\0';
		if (parse_port(portbuf, &u->port) < 0) {
			dw_err_set(err, "\"%s\": bad port \"%s\" (1..65535)", url, portbuf);
			return -1;
		}
	}
	for (const char *q = auth_end; *q; q++) {
		if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f) {
			dw_err_set(err, "\"%s\": bad character in path", url);
			return -1;
		}
	}
	u->host = dw_strndup(h, hl);
	{
		size_t plen = strlen(auth_end);
		while (plen > 0 && auth_end[plen - 1] == '/')
			plen--;
		u->base_path = dw_strndup(auth_end, plen);
	}
	{
		bool v6 = strchr(u->host, ':') != NULL;
		char *hh;
		int rc;
		if (u->port == defport)
			rc = asprintf(&hh, v6 ? "[%s]" : "%s", u->host);
		else
			rc = asprintf(&hh, v6 ? "[%s]:%d" : "%s:%d", u->host, u->port);
		if (rc < 0)
			abort();
		u->host_header = hh;
	}
	return 0;
}

/* ---------------------------------------------------------------- freeing */

static void mirror_free(struct dw_mirror *m)
{
	if (!m)
		return;
	free(m->method);
	tmpl_free(m->path);
	expr_free(m->key);
	for (size_t i = 0; i < m->npins; i++) {
		expr_free(m->pins[i]);
		free(m->pin_prefix ? m->pin_prefix[i] : NULL);
	}
	free(m->pins);
	free(m->pin_prefix);
	expr_free(m->body);
	free(m);
}

static void table_side_free(struct dw_table_side *s);
static void read_free(struct dw_read *rd)
{
	if (!rd)
		return;
	tmpl_free(rd->path);
	expr_free(rd->sticky);
	expr_free(rd->key);
	expr_free(rd->response);
	for (size_t i = 0; i < rd->ncompare_ignore; i++)
		free(rd->compare_ignore[i]);
	free(rd->compare_ignore);
	free(rd);
}

static void config_free(struct dw_config *c)
{
	if (!c)
		return;
	free(c->path);
	for (size_t i = 0; i < c->nlisten; i++) {
		free(c->listen[i]);
		SSL_CTX_free(c->listen_tls[i]);
	}
	free(c->listen);
	free(c->listen_tls);
	free(c->admin_listen);
	dw_errlist_free(&c->warnings);
	for (size_t i = 0; i < c->nupstreams; i++) {
		struct dw_upstream *u = &c->upstreams[i];
		free(u->name);
		free(u->url);
		free(u->host);
		free(u->host_header);
		free(u->base_path);
		free(u->ca_file);
		free(u->sni);
		free(u->cert);
		free(u->key);
		SSL_CTX_free(u->tls_ctx);
	}
	free(c->upstreams);
	free(c->queue.path);
	free(c->queue.postgres);
	free(c->queue.table);
	free(c->tenant.header);
	free(c->tenant.def);
	for (size_t i = 0; i < c->nroutes; i++) {
		struct dw_route *r = &c->routes[i];
		free(r->name);
		free(r->match);
		route_pattern_free(r->pattern);
		mirror_free(r->mirror);
		read_free(r->read);
		mirror_free(r->request);
		mirror_free(r->reverse);
		expr_free(r->response);
		free(r->table);
	}
	free(c->routes);
	for (size_t i = 0; i < c->ntables; i++) {
		struct dw_table_map *t = &c->tables[i];
		free(t->name);
		table_side_free(&t->source);
		table_side_free(&t->target);
		for (size_t j = 0; j < t->ncolumns; j++) {
			free(t->column_names[j]);
			expr_free(t->columns[j]);
		}
		free(t->column_names);
		free(t->columns);
		for (size_t j = 0; j < t->nignore; j++)
			free(t->ignore[j]);
		free(t->ignore);
	}
	free(c->tables);
	free(c);
}

struct dw_config *config_ref(struct dw_config *c)
{
	if (c)
		__atomic_add_fetch(&c->refcnt, 1, __ATOMIC_RELAXED);
	return c;
}

void config_unref(struct dw_config *c)
{
	if (c && __atomic_sub_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL) == 0)
		config_free(c);
}

/* ---------------------------------------------------------------- pass 1: scalars */

/* A listen entry's tls = { cert; key; client_ca; }: its server context. */
static SSL_CTX *load_listen_tls(struct loader *L, const config_setting_t *t, const char *where)
{
	static const char *const keys[] = { "cert", "key", "client_ca", NULL };
	const char *cert = NULL, *key = NULL, *ca = NULL;
	char w[WHERE_MAX];
	struct dw_err err = { { 0 } };
	SSL_CTX *ctx;
	int bad = 0;

	wjoin(w, sizeof(w), where, "tls");
	if (!config_setting_is_group(t)) {
		lerr(L, sline(t), w, "expected a group { cert = \"...\"; key = \"...\"; }");
		return NULL;
	}
	check_keys(L, t, w, keys);
	bad |= get_str(L, t, "cert", w, &cert) < 0;
	bad |= get_str(L, t, "key", w, &key) < 0;
	bad |= get_str(L, t, "client_ca", w, &ca) < 0;
	if (bad)
		return NULL;
	if (!cert || !key) {
		lerr(L, sline(t), w, "missing %s (required: cert and key)", !cert ? "cert" : "key");
		return NULL;
	}
	if (L->flags & CONFIG_NO_LISTEN_TLS)
		return NULL;
	ctx = tls_server_ctx_new(cert, key, ca, &err);
	if (!ctx)
		lerr(L, sline(t), w, "%s", err.msg);
	return ctx;
}

static void load_listen(struct loader *L, const config_setting_t *root)
{
	static const char *const keys[] = { "addr", "tls", NULL };
	const config_setting_t *s = config_setting_get_member(root, "listen");
	struct dw_config *c = L->c;
	char host[256], w[96], wa[96];
	struct dw_err err = { { 0 } };
	int port, n;
	bool single = false;

	if (!s) {
		lerr(L, 0, "listen", "missing (required: an address or a list of addresses)");
		return;
	}
	if (config_setting_type(s) == CONFIG_TYPE_STRING || config_setting_is_group(s)) {
		n = 1;
		single = true;
	} else if (config_setting_is_list(s) || config_setting_is_array(s)) {
		n = config_setting_length(s);
		if (n == 0) {
			lerr(L, sline(s), "listen", "empty list");
			return;
		}
	} else {
		lerr(L, sline(s), "listen", "expected an address, a { addr; tls; } group or a list of them");
		return;
	}
	c->listen = dw_calloc((size_t)n, sizeof(*c->listen));
	/* an array of SSL_CTX pointers */
	c->listen_tls = dw_calloc((size_t)n, sizeof(*c->listen_tls)); // NOLINT(bugprone-sizeof-expression)
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = single ? s : config_setting_get_elem(s, (unsigned)i);
		const config_setting_t *a = e, *t = NULL;
		const char *addr;

		if (single)
			wfmt(w, sizeof(w), "listen");
		else
			wfmt(w, sizeof(w), "listen[%d]", i);
		if (config_setting_is_group(e)) {
			check_keys(L, e, w, keys);
			a = config_setting_get_member(e, "addr");
			t = config_setting_get_member(e, "tls");
			if (!a) {
				lerr(L, sline(e), w, "missing addr (required: \"host:port\")");
				continue;
			}
			wjoin(wa, sizeof(wa), w, "addr");
			wfmt(w, sizeof(w), "%s", wa);
		}
		if (config_setting_type(a) != CONFIG_TYPE_STRING) {
			lerr(L, sline(a), w, "expected a string \"host:port\"");
			continue;
		}
		addr = config_setting_get_string(a);
		if (config_split_hostport(addr, host, sizeof(host), &port, &err) < 0) {
			lerr(L, sline(a), w, "%s", err.msg);
			continue;
		}
		for (size_t j = 0; j < c->nlisten; j++)
			if (strcmp(c->listen[j], addr) == 0)
				lerr(L, sline(a), w, "\"%s\" is listed twice", addr);
		if (single)
			wfmt(w, sizeof(w), "listen");
		else
			wfmt(w, sizeof(w), "listen[%d]", i);
		c->listen_tls[c->nlisten] = t ? load_listen_tls(L, t, w) : NULL;
		c->listen[c->nlisten++] = dw_strdup(addr);
	}
}

SSL_CTX *config_listen_tls(const struct dw_config *c, const char *addr)
{
	for (size_t i = 0; i < c->nlisten; i++)
		if (strcmp(c->listen[i], addr) == 0)
			return c->listen_tls[i];
	return NULL;
}

static void load_scalars(struct loader *L, const config_setting_t *root)
{
	static const char *const admin_keys[] = { "listen", NULL };
	static const char *const limit_keys[] = { "max_header_bytes", "max_body_bytes",
						  "header_timeout_ms", "body_timeout_ms",
						  "idle_timeout_ms",	"max_connections",
						  "drain_timeout_ms",	NULL };
	static const char *const queue_keys[] = { "path",     "durability", "max_bytes",
						  "postgres", "table",	    NULL };
	static const char *const tenant_keys[] = { "header", "default", NULL };
	struct dw_config *c = L->c;
	const config_setting_t *g;
	const char *s;
	long long v;

	load_listen(L, root);
	set_int(L, root, "workers", "", 1, 64, &c->workers);

	if (get_str(L, root, "log_level", "", &s) == 1) {
		static const char *const levels[] = { "debug", "info", "warn", "error" };
		size_t i;
		for (i = 0; i < DW_ARRAY_LEN(levels); i++)
			if (strcmp(s, levels[i]) == 0)
				break;
		if (i == DW_ARRAY_LEN(levels))
			lerr(L, sline(config_setting_get_member(root, "log_level")), "log_level",
			     "\"%s\": expected debug, info, warn or error", s);
		else
			c->log_level = (enum dw_log_level)i;
	}

	if ((g = get_group(L, root, "admin", ""))) {
		check_keys(L, g, "admin", admin_keys);
		if (get_str(L, g, "listen", "admin", &s) == 1) {
			char host[256];
			int port;
			struct dw_err err = { { 0 } };
			if (config_split_hostport(s, host, sizeof(host), &port, &err) < 0)
				lerr(L, sline(config_setting_get_member(g, "listen")),
				     "admin.listen", "%s", err.msg);
			else
				c->admin_listen = dw_strdup(s);
			if (c->admin_listen && !host_is_loopback(host))
				dw_errlist_add(&c->warnings,
					       "%s:%d: admin.listen: \"%s\" is not a loopback "
					       "address: /metrics and /status are open to the "
					       "network (use 127.0.0.1:PORT unless that is meant)",
					       L->file, sline(config_setting_get_member(g, "listen")),
					       s);
		}
	}

	if ((g = get_group(L, root, "limits", ""))) {
		check_keys(L, g, "limits", limit_keys);
		if (get_int(L, g, "max_header_bytes", "limits", 1024, 1048576, &v) == 1)
			c->limits.max_header_bytes = (size_t)v;
		if (get_int(L, g, "max_body_bytes", "limits", 0, 1LL << 34, &v) == 1)
			c->limits.max_body_bytes = (size_t)v;
		set_int(L, g, "header_timeout_ms", "limits", 1, 3600000, &c->limits.header_timeout_ms);
		set_int(L, g, "body_timeout_ms", "limits", 1, 3600000, &c->limits.body_timeout_ms);
		set_int(L, g, "idle_timeout_ms", "limits", 1, 86400000, &c->limits.idle_timeout_ms);
		set_int(L, g, "max_connections", "limits", 1, 1000000, &c->limits.max_connections);
		set_int(L, g, "drain_timeout_ms", "limits", 0, 3600000, &c->limits.drain_timeout_ms);
	}

	if ((g = get_group(L, root, "queue", ""))) {
		check_keys(L, g, "queue", queue_keys);
		if (get_str(L, g, "path", "queue", &s) == 1) {
			if (!*s) {
				lerr(L, sline(config_setting_get_member(g, "path")), "queue.path",
				     "must not be empty");
			} else {
				free(c->queue.path);
				c->queue.path = dw_strdup(s);
			}
		}
		if (get_str(L, g, "durability", "queue", &s) == 1) {
			if (strcmp(s, "process") == 0)
				c->queue.durability = QUEUE_DURABILITY_PROCESS;
			else if (strcmp(s, "fsync") == 0)
				c->queue.durability = QUEUE_DURABILITY_FSYNC;
			else
				lerr(L, sline(config_setting_get_member(g, "durability")),
				     "queue.durability", "\"%s\": expected \"process\" or \"fsync\"",
				     s);
		}
		if (get_int(L, g, "max_bytes", "queue", 1LL << 20, 1LL << 50, &v) == 1)
			c->queue.max_bytes = (uint64_t)v;
		if (get_str(L, g, "postgres", "queue", &s) == 1)
			c->queue.postgres = dw_strdup(s);
		if (get_str(L, g, "table", "queue", &s) == 1) {
			bool ok = strlen(s) <= 63 && ((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_');
			for (const char *p = s; ok && *p; p++)
				ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
			if (!ok) {
				lerr(L, sline(config_setting_get_member(g, "table")), "queue.table",
				     "\"%s\": expected an SQL identifier [a-z_][a-z0-9_]*", s);
			} else {
				free(c->queue.table);
				c->queue.table = dw_strdup(s);
			}
		}
	}

	if ((g = get_group(L, root, "tenant", ""))) {
		check_keys(L, g, "tenant", tenant_keys);
		if (get_str(L, g, "header", "tenant", &s) == 1) {
			if (!http_is_token(s, strlen(s))) {
				lerr(L, sline(config_setting_get_member(g, "header")),
				     "tenant.header", "\"%s\": not a valid header name", s);
			} else {
				free(c->tenant.header);
				c->tenant.header = dw_strdup(s);
			}
		}
		if (get_str(L, g, "default", "tenant", &s) == 1) {
			if (!expr_tenant_valid(s, strlen(s))) {
				lerr(L, sline(config_setting_get_member(g, "default")),
				     "tenant.default",
				     "\"%s\": a tenant is 1 to 64 of [A-Za-z0-9_.-]", s);
			} else {
				free(c->tenant.def);
				c->tenant.def = dw_strdup(s);
			}
		}
	}
}

/* ca_file, verify, sni, cert, key of an https:// upstream, and its context. */
static void load_upstream_tls(struct loader *L, const config_setting_t *us, const char *prefix,
			      struct dw_upstream *u)
{
	static const char *const tls_keys[] = { "ca_file", "sni", "cert", "key" };
	char **dst[] = { &u->ca_file, &u->sni, &u->cert, &u->key };
	const config_setting_t *v = config_setting_get_member(us, "verify");
	struct dw_err err = { { 0 } };
	char w[WHERE_MAX];
	bool bad = false, any = v != NULL;

	u->verify = true;
	for (size_t k = 0; k < DW_ARRAY_LEN(tls_keys); k++) {
		const char *s;
		switch (get_str(L, us, tls_keys[k], prefix, &s)) {
		case 1:
			*dst[k] = dw_strdup(s);
			any = true;
			break;
		case -1:
			bad = true;
			break;
		default:
			break;
		}
	}
	if (v) {
		if (config_setting_type(v) != CONFIG_TYPE_BOOL) {
			wjoin(w, sizeof(w), prefix, "verify");
			lerr(L, sline(v), w, "expected true or false");
			bad = true;
		} else {
			u->verify = config_setting_get_bool(v) != 0;
		}
	}
	if (!u->url || bad)
		return;
	if (!u->tls) {
		if (any)
			lerr(L, sline(us), prefix,
			     "ca_file, verify, sni, cert and key apply to https:// upstreams only");
		return;
	}
	if (!u->cert != !u->key) {
		wjoin(w, sizeof(w), prefix, u->cert ? "key" : "cert");
		lerr(L, sline(us), w, "missing (a client certificate needs both cert and key)");
		return;
	}
	u->tls_ctx = tls_client_ctx_new(u->ca_file, u->verify, u->cert, u->key, &err);
	if (!u->tls_ctx)
		lerr(L, sline(us), prefix, "%s", err.msg);
}

static void load_upstreams(struct loader *L, const config_setting_t *root)
{
	static const char *const keys[] = { "url",	      "timeout_ms",   "connect_timeout_ms",
					    "pool_size",      "max_inflight", "pipeline_depth",
					    "ca_file",	      "verify",	      "sni",
					    "cert",	      "key",	      "resolve_interval_s",
					    NULL };
	const config_setting_t *g = get_group(L, root, "upstreams", "");
	struct dw_config *c = L->c;
	const char *s;
	int n;

	if (!g) {
		if (!config_setting_get_member(root, "upstreams"))
			lerr(L, 0, "upstreams", "missing (at least the default upstream is required)");
		return;
	}
	n = config_setting_length(g);
	if (n == 0) {
		lerr(L, sline(g), "upstreams", "no upstream defined");
		return;
	}
	c->upstreams = dw_calloc((size_t)n, sizeof(*c->upstreams));
	for (int i = 0; i < n; i++) {
		const config_setting_t *us = config_setting_get_elem(g, (unsigned)i);
		struct dw_upstream *u = &c->upstreams[c->nupstreams];
		char prefix[WHERE_MAX], w[WHERE_MAX];
		struct dw_err err = { { 0 } };
		long long v;

		wfmt(prefix, sizeof(prefix), "upstream \"%s\"", config_setting_name(us));
		if (!config_setting_is_group(us)) {
			lerr(L, sline(us), prefix, "expected a group { url = \"...\"; }");
			continue;
		}
		check_keys(L, us, prefix, keys);
		u->name = dw_strdup(config_setting_name(us));
		u->line = sline(us);
		u->timeout_ms = 5000;
		u->pool_size = 64;
		u->max_inflight = 64;
		u->pipeline_depth = 16;
		u->resolve_interval_s = 60;
		c->nupstreams++;
		wjoin(w, sizeof(w), prefix, "url");
		switch (get_str(L, us, "url", prefix, &s)) {
		case 0:
			lerr(L, sline(us), w, "missing (required)");
			break;
		case 1:
			u->url = dw_strdup(s);
			if (parse_url(s, u, &err) < 0)
				lerr(L, sline(config_setting_get_member(us, "url")), w, "%s", err.msg);
			break;
		default:
			break;
		}
		set_int(L, us, "timeout_ms", prefix, 1, 3600000, &u->timeout_ms);
		u->connect_timeout_ms = u->timeout_ms < 2000 ? u->timeout_ms : 2000;
		set_int(L, us, "connect_timeout_ms", prefix, 1, 3600000, &u->connect_timeout_ms);
		set_int(L, us, "pool_size", prefix, 0, 10000, &u->pool_size);
		if (get_int(L, us, "max_inflight", prefix, 1, 100000, &v) == 1)
			u->max_inflight = (int)v;
		set_int(L, us, "pipeline_depth", prefix, 1, 256, &u->pipeline_depth);
		set_int(L, us, "resolve_interval_s", prefix, 1, 86400, &u->resolve_interval_s);
		load_upstream_tls(L, us, prefix, u);
	}

	c->default_upstream = -1;
	switch (get_str(L, root, "default_upstream", "", &s)) {
	case 0:
		lerr(L, 0, "default_upstream", "missing (required: the legacy upstream's name)");
		break;
	case 1:
		c->default_upstream = config_upstream_index(c, s);
		if (c->default_upstream < 0)
			lerr(L, sline(config_setting_get_member(root, "default_upstream")),
			     "default_upstream", "unknown upstream \"%s\"", s);
		break;
	default:
		break;
	}
}

/* ---------------------------------------------------------------- routes */

static void default_classes(uint8_t *klass)
{
	for (int st = 0; st < 600; st++) {
		if (st >= 200 && st < 300)
			klass[st] = MIRROR_DELIVERED;
		else if (st == 408 || st == 429 || st >= 500)
			klass[st] = MIRROR_RETRY;
		else
			klass[st] = MIRROR_PERMANENT;
	}
}

static void load_classes(struct loader *L, const config_setting_t *ms, const char *prefix,
			 struct dw_mirror *m)
{
	static const char *const names[] = { "delivered", "retry", "permanent" };
	static const enum mirror_class cls[] = { MIRROR_DELIVERED, MIRROR_RETRY, MIRROR_PERMANENT };
	int owner[600];
	int ownline[600];

	memset(owner, -1, sizeof(owner));
	default_classes(m->klass);
	for (size_t k = 0; k < DW_ARRAY_LEN(names); k++) {
		const config_setting_t *s = config_setting_get_member(ms, names[k]);
		char w[WHERE_MAX], base[WHERE_MAX];
		int n;

		if (!s)
			continue;
		wjoin(base, sizeof(base), prefix, names[k]);
		if (!config_setting_is_list(s) && !config_setting_is_array(s)) {
			lerr(L, sline(s), base, "expected a list of status codes, e.g. [ 409 ]");
			continue;
		}
		n = config_setting_length(s);
		for (int i = 0; i < n; i++) {
			const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
			int st;
			wfmt(w, sizeof(w), "%s[%d]", base, i);
			if (config_setting_type(e) != CONFIG_TYPE_INT) {
				lerr(L, sline(e), w, "expected a status code (an integer)");
				continue;
			}
			st = config_setting_get_int(e);
			if (st < 100 || st > 599) {
				lerr(L, sline(e), w, "status %d is out of range (100..599)", st);
				continue;
			}
			if (owner[st] >= 0 && owner[st] != (int)k) {
				lerr(L, sline(e), w, "status %d is also listed in %s (line %d)", st,
				     names[owner[st]], ownline[st]);
				continue;
			}
			owner[st] = (int)k;
			ownline[st] = sline(e);
			m->klass[st] = (uint8_t)cls[k];
		}
	}
}

/* The path of a match pattern as a template: "POST /devices/{id}" -> "/devices/{id}". */
static const char *match_path(const char *match)
{
	const char *sp = strchr(match, ' ');
	return sp ? sp + 1 : "/";
}

/* pins = [ "user:${$request.user_id}", ... ]: a list of single values, each
 * an expression as a key. */
static void load_pins(struct loader *L, const config_setting_t *ms, const char *prefix,
		      struct expr_opts *o, struct dw_mirror *m)
{
	const config_setting_t *ps = config_setting_get_member(ms, "pins");
	char w[WHERE_MAX];
	int n;

	if (!ps)
		return;
	wjoin(w, sizeof(w), prefix, "pins");
	if (!config_setting_is_list(ps) && !config_setting_is_array(ps)) {
		lerr(L, sline(ps), w, "expected a list of keys, e.g. [ \"user:${$request.user_id}\" ]");
		return;
	}
	n = config_setting_length(ps);
	m->pins = dw_calloc((size_t)n + 1, sizeof(struct expr *));
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(ps, (unsigned)i);
		struct dw_err err = { { 0 } };
		struct expr *x;

		if (config_setting_is_aggregate(e)) {
			lerr(L, sline(e) ? sline(e) : sline(ps), w,
			     "element %d: must be a single value, e.g. \"$path.id\"", i + 1);
			continue;
		}
		o->line = 0;
		if (!(x = expr_compile_opts(e, o, &err))) {
			lerr(L, o->line ? o->line : sline(ps), w, "element %d: %s", i + 1, err.msg);
			continue;
		}
		m->pins[m->npins++] = x;
	}
}

/*
 * The three blocks that describe a request to another upstream (SPEC §3,
 * §7.5): `mirror` (to the new system), `reverse` (back to the legacy when
 * authority is "new"; the default upstream unless it names one) and
 * `request` (the client's write as the new system takes it: no upstream -
 * the mirror's - no key, no classes, and no $response: nothing has answered
 * yet).
 */
enum mblock { MB_MIRROR, MB_REVERSE, MB_REQUEST };

static struct dw_mirror *load_mirror(struct loader *L, struct dw_route *r,
				     const config_setting_t *ms, const char *rprefix,
				     enum mblock kind)
{
	static const char *const keys[] = { "upstream", "method", "path",      "key",
					    "each",     "body",   "base",      "drop",
					    "delivered", "retry", "permanent", "pins", NULL };
	static const char *const request_keys[] = { "method", "path", "each", "body",
						    "base",   "drop", NULL };
	static const char *const block[] = { "mirror", "reverse", "request" };
	struct dw_config *c = L->c;
	struct dw_mirror *m;
	char prefix[WHERE_MAX], w[WHERE_MAX];
	const char *names[ROUTE_MAX_PARAMS];
	struct expr_opts o = { .allowed = EXPR_SRC_HTTP, .check_path = true, .path_names = names };
	struct dw_err err = { { 0 } };
	const config_setting_t *key;
	const char *s;

	wfmt(prefix, sizeof(prefix), "%s: %s", rprefix, block[kind]);
	if (!config_setting_is_group(ms)) {
		lerr(L, sline(ms), prefix, "expected a group { %s... }",
		     kind == MB_REQUEST ? "path = \"...\"; " : "upstream = \"...\"; ");
		return NULL;
	}
	check_keys(L, ms, prefix, kind == MB_REQUEST ? request_keys : keys);
	if (kind == MB_REQUEST)
		o.allowed &= ~(unsigned)EXPR_SRC_RESPONSE;
	if (r->pattern) {
		o.npath = route_pattern_nparams(r->pattern);
		for (size_t i = 0; i < o.npath; i++)
			names[i] = route_pattern_param(r->pattern, i);
	} else {
		o.check_path = false; /* the match is broken; do not pile on */
	}
	m = dw_calloc(1, sizeof(*m));
	m->upstream = kind == MB_REVERSE ? c->default_upstream : -1;

	wjoin(w, sizeof(w), prefix, "upstream");
	switch (kind == MB_REQUEST ? 0 : get_str(L, ms, "upstream", prefix, &s)) {
	case 0:
		if (kind == MB_MIRROR)
			lerr(L, sline(ms), w, "missing (required)");
		break;
	case 1:
		m->upstream = config_upstream_index(c, s);
		if (m->upstream < 0)
			lerr(L, sline(config_setting_get_member(ms, "upstream")), w,
			     "unknown upstream \"%s\"", s);
		else if (kind == MB_MIRROR && m->upstream == c->default_upstream)
			lerr(L, sline(config_setting_get_member(ms, "upstream")), w,
			     "\"%s\" is the default upstream: a route cannot mirror to the "
			     "authoritative backend",
			     s);
		else if (kind == MB_REVERSE && r->mirror && m->upstream == r->mirror->upstream)
			lerr(L, sline(config_setting_get_member(ms, "upstream")), w,
			     "\"%s\" is the mirror's upstream: the reverse mirror goes back to "
			     "the legacy",
			     s);
		break;
	default:
		break;
	}

	if (get_str(L, ms, "method", prefix, &s) == 1) {
		if (!http_is_token(s, strlen(s)))
			lerr(L, sline(config_setting_get_member(ms, "method")),
			     (wjoin(w, sizeof(w), prefix, "method"), w), "\"%s\": not an HTTP method", s);
		else
			m->method = dw_strdup(s);
	}

	wjoin(w, sizeof(w), prefix, "path");
	switch (get_str(L, ms, "path", prefix, &s)) {
	case 1:
		if (s[0] != '/') {
			lerr(L, sline(config_setting_get_member(ms, "path")), w,
			     "\"%s\": must start with '/'", s);
			break;
		}
		m->path = tmpl_compile_opts(s, &o, &err);
		if (!m->path)
			lerr(L, sline(config_setting_get_member(ms, "path")), w, "%s", err.msg);
		break;
	case 0:
		if (r->match && r->pattern) {
			m->path = tmpl_compile_opts(match_path(r->match), &o, &err);
			if (!m->path)
				lerr(L, sline(ms), w, "%s", err.msg);
		}
		break;
	default:
		break;
	}

	if (kind != MB_REQUEST && (key = config_setting_get_member(ms, "key"))) {
		if (config_setting_is_aggregate(key)) {
			lerr(L, sline(key), (wjoin(w, sizeof(w), prefix, "key"), w),
			     "must be a single value, e.g. \"$path.id\"");
		} else {
			m->key = expr_compile_opts(key, &o, &err);
			if (!m->key)
				lerr(L, o.line ? o.line : sline(key), rprefix, "%s.%s", block[kind],
				     err.msg);
		}
	}

	load_pins(L, ms, prefix, &o, m);

	/* each/base/drop/body: the mirrored document (none: no body) */
	o.line = 0;
	if (expr_compile_mapping(ms, &o, &m->body, &err) < 0)
		lerr(L, o.line ? o.line : sline(ms), rprefix, "%s.%s", block[kind], err.msg);

	if (kind == MB_REQUEST)
		default_classes(m->klass);
	else
		load_classes(L, ms, prefix, m);
	m->sources = expr_sources(m->key) | expr_sources(m->body) | tmpl_sources(m->path);
	if (m->npins)
		m->pin_prefix = dw_calloc(m->npins, sizeof(char *));
	for (size_t i = 0; i < m->npins; i++) {
		char pre[256];

		m->pin_sources |= expr_sources(m->pins[i]);
		expr_literal_prefix(m->pins[i], pre, sizeof(pre));
		m->pin_prefix[i] = dw_strdup(pre);
	}
	return m;
}

/*
 * authority / request / response / reverse / table (SPEC §7.5). The blocks
 * are checked whatever the authority; "new" needs a mirror (its upstream is
 * the new system) and a reverse. Whether a flip may happen now (the queue,
 * the guards) is not the file's business: the reload's gate decides that
 * (cutover.h).
 */
static void load_authority(struct loader *L, struct dw_route *r, const config_setting_t *g,
			   const char *rprefix)
{
	static const char *const rkeys[] = { "each", "base", "drop", "body", NULL };
	const config_setting_t *s;
	const char *v;
	char w[WHERE_MAX];

	wjoin(w, sizeof(w), rprefix, "authority");
	if (get_str(L, g, "authority", rprefix, &v) == 1) {
		if (strcmp(v, "new") == 0)
			r->authority = AUTHORITY_NEW;
		else if (strcmp(v, "legacy") != 0)
			lerr(L, sline(config_setting_get_member(g, "authority")), w,
			     "\"%s\": expected \"legacy\" or \"new\"", v);
	}
	if ((s = config_setting_get_member(g, "request")))
		r->request = load_mirror(L, r, s, rprefix, MB_REQUEST);
	if ((s = config_setting_get_member(g, "reverse")))
		r->reverse = load_mirror(L, r, s, rprefix, MB_REVERSE);
	if ((s = get_group(L, g, "response", rprefix))) {
		const char *names[ROUTE_MAX_PARAMS];
		struct expr_opts o = { .allowed = EXPR_SRC_HTTP, .check_path = true,
				       .path_names = names };
		struct dw_err err = { { 0 } };
		char rp[WHERE_MAX];

		wjoin(rp, sizeof(rp), rprefix, "response");
		check_keys(L, s, rp, rkeys);
		if (r->pattern) {
			o.npath = route_pattern_nparams(r->pattern);
			for (size_t i = 0; i < o.npath; i++)
				names[i] = route_pattern_param(r->pattern, i);
		} else {
			o.check_path = false;
		}
		if (expr_compile_mapping(s, &o, &r->response, &err) < 0)
			lerr(L, o.line ? o.line : sline(s), rprefix, "response.%s", err.msg);
		else if (!r->response)
			lerr(L, sline(s), rp,
			     "says nothing: give body (and each for a list), or leave response out");
	}
	if (get_str(L, g, "table", rprefix, &v) == 1)
		r->table = dw_strdup(v); /* checked against tables once they are loaded */
	if ((r->request || r->response || r->reverse) && !r->mirror)
		lerr(L, r->line, rprefix,
		     "request/response/reverse describe a write cut-over: the route needs a mirror "
		     "(its upstream is the new system)");
	if (r->authority == AUTHORITY_NEW && !r->reverse)
		lerr(L, sline(config_setting_get_member(g, "authority")), w,
		     "\"new\" needs a reverse block: the legacy must still get every write");
	if (r->authority == AUTHORITY_NEW && !r->mirror)
		lerr(L, sline(config_setting_get_member(g, "authority")), w,
		     "\"new\" needs a mirror block: its upstream is the new system");
}

/* An integer or real setting as a double; false for any other type. */
static bool setting_number(const config_setting_t *s, double *v)
{
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		*v = (double)config_setting_get_int64(s);
		return true;
	case CONFIG_TYPE_FLOAT:
		*v = config_setting_get_float(s);
		return true;
	default:
		return false;
	}
}

/* A percentage of 0-100 with at most two decimals, as hundredths. Returns 1
 * when present and valid, 0 when absent, -1 after reporting. */
static int get_percent(struct loader *L, const config_setting_t *grp, const char *key,
		       const char *prefix, uint32_t *out)
{
	const config_setting_t *s = config_setting_get_member(grp, key);
	char w[WHERE_MAX];
	double v;

	if (!s)
		return 0;
	wjoin(w, sizeof(w), prefix, key);
	if (!setting_number(s, &v)) {
		lerr(L, sline(s), w, "expected a percentage (a number 0-100, e.g. 30 or 12.5)");
		return -1;
	}
	if (bucket_weight_from_percent(v, out) < 0) {
		lerr(L, sline(s), w, "%g is not a percentage 0-100 with at most two decimals", v);
		return -1;
	}
	return 1;
}

static void get_bool(struct loader *L, const config_setting_t *grp, const char *key,
		     const char *prefix, bool *out)
{
	const config_setting_t *s = config_setting_get_member(grp, key);
	char w[WHERE_MAX];

	if (!s)
		return;
	if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
		wjoin(w, sizeof(w), prefix, key);
		lerr(L, sline(s), w, "expected true or false");
		return;
	}
	*out = config_setting_get_bool(s) != 0;
}

/* A number (integer or real) in [lo, hi], or any negative one when
 * neg_off (a guard turned off). Returns 1 and sets *out when present and
 * valid, 0 when absent, -1 after reporting an error. */
static int get_number(struct loader *L, const config_setting_t *grp, const char *key,
		      const char *prefix, double lo, double hi, bool neg_off, double *out)
{
	const config_setting_t *s = config_setting_get_member(grp, key);
	char w[WHERE_MAX];
	double v;

	if (!s)
		return 0;
	wjoin(w, sizeof(w), prefix, key);
	if (!setting_number(s, &v)) {
		lerr(L, sline(s), w, "expected a number");
		return -1;
	}
	if (neg_off && v < 0)
		v = -1;
	else if (!(v >= lo && v <= hi)) {
		lerr(L, sline(s), w, "%g is out of range (%g..%g%s)", v, lo, hi,
		     neg_off ? ", or negative: off" : "");
		return -1;
	}
	*out = v;
	return 1;
}

/* guards = { window_s; min_requests; read_error_rate; read_p99_ms;
 * mirror_failure_rate; shadow_mismatches_per_hour; } (SPEC §7.3) */
static void load_guards(struct loader *L, const config_setting_t *root)
{
	static const char *const keys[] = { "window_s",		   "min_requests",
					    "read_error_rate",	   "read_p99_ms",
					    "mirror_failure_rate", "shadow_mismatches_per_hour",
					    NULL };
	struct dw_guards *g = &L->c->guards;
	const config_setting_t *gs = get_group(L, root, "guards", "");

	if (!gs)
		return;
	check_keys(L, gs, "guards", keys);
	set_int(L, gs, "window_s", "guards", 1, 3600, &g->window_s);
	set_int(L, gs, "min_requests", "guards", 1, 100000000, &g->min_requests);
	(void)get_number(L, gs, "read_error_rate", "guards", 0, 100, true, &g->read_error_rate);
	(void)get_number(L, gs, "read_p99_ms", "guards", 0, 3600000, true, &g->read_p99_ms);
	(void)get_number(L, gs, "mirror_failure_rate", "guards", 0, 100, true,
			 &g->mirror_failure_rate);
	(void)get_number(L, gs, "shadow_mismatches_per_hour", "guards", 0, 1e9, true,
			 &g->shadow_mismatches_per_hour);
}

/* sticky / key: one request-time value. */
static struct expr *load_read_value(struct loader *L, const config_setting_t *rs, const char *key,
				    const char *rprefix, struct expr_opts *o)
{
	const config_setting_t *s = config_setting_get_member(rs, key);
	struct dw_err err = { { 0 } };
	char w[WHERE_MAX];
	struct expr *e;

	if (!s)
		return NULL;
	if (config_setting_is_aggregate(s)) {
		wfmt(w, sizeof(w), "%s: read.%s", rprefix, key);
		lerr(L, sline(s), w, "must be a single value, e.g. \"$path.user_id\"");
		return NULL;
	}
	o->line = 0;
	e = expr_compile_opts(s, o, &err);
	if (!e)
		lerr(L, o->line ? o->line : sline(s), rprefix, "read.%s", err.msg);
	return e;
}

/* compare = { ignore = [ ... ]; unordered = true; } (parsed; acted on with shadow). */
static void load_compare(struct loader *L, const config_setting_t *rs, const char *prefix,
			 struct dw_read *rd)
{
	static const char *const keys[] = { "ignore", "unordered", NULL };
	const config_setting_t *cs = get_group(L, rs, "compare", prefix);
	const config_setting_t *ig;
	char cprefix[WHERE_MAX], w[WHERE_MAX];
	int n;

	if (!cs)
		return;
	wjoin(cprefix, sizeof(cprefix), prefix, "compare");
	check_keys(L, cs, cprefix, keys);
	get_bool(L, cs, "unordered", cprefix, &rd->compare_unordered);
	if (!(ig = config_setting_get_member(cs, "ignore")))
		return;
	wjoin(w, sizeof(w), cprefix, "ignore");
	if (!config_setting_is_list(ig) && !config_setting_is_array(ig)) {
		lerr(L, sline(ig), w, "expected a list of field names, e.g. [ \"updated_at\" ]");
		return;
	}
	n = config_setting_length(ig);
	rd->compare_ignore = dw_calloc((size_t)n + 1, sizeof(char *));
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(ig, (unsigned)i);
		const char *v = config_setting_get_string(e);

		if (!v || !*v) {
			char we[WHERE_MAX];
			wfmt(we, sizeof(we), "%s[%d]", w, i);
			lerr(L, sline(e), we, "expected a field name (a non-empty string)");
			continue;
		}
		rd->compare_ignore[rd->ncompare_ignore++] = dw_strdup(v);
	}
}

/*
 * read = { upstream; path; weight; sticky; key; fallback; response; shadow;
 * compare; } (SPEC §7.1). A read route serves GETs: the fallback repeats
 * the request on the legacy, which only a read may be.
 */
static void load_read(struct loader *L, struct dw_route *r, const config_setting_t *rs,
		      const char *rprefix)
{
	static const char *const keys[] = { "upstream", "path",	    "weight", "sticky",
					    "key",	"fallback", "response", "shadow",
					    "compare",	NULL };
	static const char *const rkeys[] = { "each", "base", "drop", "body", NULL };
	struct dw_config *c = L->c;
	struct dw_read *rd;
	char prefix[WHERE_MAX], w[WHERE_MAX];
	const char *names[ROUTE_MAX_PARAMS];
	/* Request-time values: what the client's request holds. */
	struct expr_opts o = { .allowed = EXPR_SRC_PATH | EXPR_SRC_QUERY | EXPR_SRC_HEADER |
					  EXPR_SRC_TENANT,
			       .check_path = true,
			       .path_names = names };
	struct expr_opts mo;
	struct dw_err err = { { 0 } };
	const config_setting_t *ps;
	const char *s;

	wfmt(prefix, sizeof(prefix), "%s: read", rprefix);
	if (!config_setting_is_group(rs)) {
		lerr(L, sline(rs), prefix, "expected a group { upstream = \"...\"; weight = 0; ... }");
		return;
	}
	check_keys(L, rs, prefix, keys);
	if (r->pattern) {
		o.npath = route_pattern_nparams(r->pattern);
		for (size_t i = 0; i < o.npath; i++)
			names[i] = route_pattern_param(r->pattern, i);
		if (strcmp(route_pattern_method(r->pattern), "GET") != 0)
			lerr(L, sline(rs), prefix,
			     "a read route must match GET (\"%s\"): a failed read is repeated on "
			     "the legacy, which only a read may be",
			     r->match);
	} else {
		o.check_path = false; /* the match is broken; do not pile on */
	}
	if (r->mirror)
		lerr(L, sline(rs), prefix,
		     "a route either mirrors writes or shifts reads, not both");
	rd = dw_calloc(1, sizeof(*rd));
	rd->upstream = -1;
	rd->fallback = true;
	rd->line = sline(rs);
	r->read = rd;

	wjoin(w, sizeof(w), prefix, "upstream");
	switch (get_str(L, rs, "upstream", prefix, &s)) {
	case 0:
		lerr(L, sline(rs), w, "missing (required: the new system's upstream)");
		break;
	case 1:
		rd->upstream = config_upstream_index(c, s);
		if (rd->upstream < 0)
			lerr(L, sline(config_setting_get_member(rs, "upstream")), w,
			     "unknown upstream \"%s\"", s);
		else if (rd->upstream == c->default_upstream)
			lerr(L, sline(config_setting_get_member(rs, "upstream")), w,
			     "\"%s\" is the default upstream: reads already go there", s);
		break;
	default:
		break;
	}

	wjoin(w, sizeof(w), prefix, "path");
	if (get_str(L, rs, "path", prefix, &s) == 1) {
		ps = config_setting_get_member(rs, "path");
		if (s[0] != '/') {
			lerr(L, sline(ps), w, "\"%s\": must start with '/'", s);
		} else {
			rd->path = tmpl_compile_opts(s, &o, &err);
			if (!rd->path)
				lerr(L, sline(ps), w, "%s", err.msg);
		}
	}

	get_percent(L, rs, "weight", prefix, &rd->weight);
	get_percent(L, rs, "shadow", prefix, &rd->shadow);
	get_bool(L, rs, "fallback", prefix, &rd->fallback);
	rd->sticky = load_read_value(L, rs, "sticky", rprefix, &o);
	rd->key = load_read_value(L, rs, "key", rprefix, &o);

	/* response = { each; base; drop; body; }: $response is the new system's answer */
	if ((ps = get_group(L, rs, "response", prefix))) {
		char rp[WHERE_MAX];

		wjoin(rp, sizeof(rp), prefix, "response");
		check_keys(L, ps, rp, rkeys);
		mo = o;
		mo.allowed |= EXPR_SRC_RESPONSE | EXPR_SRC_NOW;
		mo.line = 0;
		if (expr_compile_mapping(ps, &mo, &rd->response, &err) < 0)
			lerr(L, mo.line ? mo.line : sline(ps), rprefix, "read.response.%s", err.msg);
		else if (!rd->response)
			lerr(L, sline(ps), rp,
			     "says nothing: give body (and each for a list), or leave response out");
	}
	load_compare(L, rs, prefix, rd);
}

/*
 * The name of item n of a list (a route, a table): required, non-empty and
 * unique among items 0..n-1, whose names and lines name_at gives. Returns a
 * copy (NULL after reporting what is wrong) and, once there is a name, turns
 * prefix into `kind "name"` for the item's later errors.
 */
static char *load_item_name(struct loader *L, const config_setting_t *g, const char *kind,
			    char *prefix, size_t plen, size_t n,
			    const char *(*name_at)(const struct dw_config *, size_t, int *))
{
	const char *s;

	switch (get_str(L, g, "name", prefix, &s)) {
	case 0:
		lerr(L, sline(g), prefix, "name: missing (required)");
		return NULL;
	case 1:
		break;
	default:
		return NULL;
	}
	if (!*s) {
		lerr(L, sline(g), prefix, "name: must not be empty");
		return NULL;
	}
	wfmt(prefix, plen, "%s \"%s\"", kind, s);
	for (size_t j = 0; j < n; j++) {
		int line = 0;
		const char *other = name_at(L->c, j, &line);

		if (other && strcmp(other, s) == 0) {
			lerr(L, sline(config_setting_get_member(g, "name")), prefix,
			     "name: duplicate %s name (first defined at line %d)", kind, line);
			break;
		}
	}
	return dw_strdup(s);
}

static const char *route_name_at(const struct dw_config *c, size_t j, int *line)
{
	*line = c->routes[j].line;
	return c->routes[j].name;
}

static const char *table_name_at(const struct dw_config *c, size_t j, int *line)
{
	*line = c->tables[j].line;
	return c->tables[j].name;
}

static void load_routes(struct loader *L, const config_setting_t *root)
{
	static const char *const keys[] = { "name",	"match",   "mirror", "read",
					    "authority", "request", "response", "reverse",
					    "table",	NULL };
	const config_setting_t *rs = config_setting_get_member(root, "routes");
	struct dw_config *c = L->c;
	int n;

	if (!rs)
		return;
	if (!config_setting_is_list(rs)) {
		lerr(L, sline(rs), "routes", "expected a list ( { ... }, { ... } )");
		return;
	}
	n = config_setting_length(rs);
	c->routes = dw_calloc((size_t)n + 1, sizeof(*c->routes));
	for (int i = 0; i < n; i++) {
		const config_setting_t *g = config_setting_get_elem(rs, (unsigned)i);
		struct dw_route *r = &c->routes[c->nroutes];
		char prefix[WHERE_MAX], w[WHERE_MAX];
		struct dw_err err = { { 0 } };
		const config_setting_t *ms;
		const char *s;

		wfmt(prefix, sizeof(prefix), "route #%d", i + 1);
		if (!config_setting_is_group(g)) {
			lerr(L, sline(g), prefix, "expected a group { name = ...; match = ...; }");
			continue;
		}
		r->line = sline(g);
		c->nroutes++;
		r->name = load_item_name(L, g, "route", prefix, sizeof(prefix), c->nroutes - 1,
					 route_name_at);
		check_keys(L, g, prefix, keys);

		wjoin(w, sizeof(w), prefix, "match");
		switch (get_str(L, g, "match", prefix, &s)) {
		case 0:
			lerr(L, sline(g), w, "missing (required, e.g. \"POST /equipment\")");
			break;
		case 1:
			r->match = dw_strdup(s);
			r->pattern = route_pattern_compile(s, &err);
			if (!r->pattern) {
				lerr(L, sline(config_setting_get_member(g, "match")), w, "%s", err.msg);
				break;
			}
			for (size_t j = 0; j + 1 < c->nroutes; j++) {
				const struct dw_route *o = &c->routes[j];
				if (o->pattern && route_pattern_conflicts(o->pattern, r->pattern)) {
					if (o->name)
						lerr(L, sline(config_setting_get_member(g, "match")), w,
						     "\"%s\" can never match: shadowed by route \"%s\" "
						     "(line %d)",
						     s, o->name, o->line);
					else
						lerr(L, sline(config_setting_get_member(g, "match")), w,
						     "\"%s\" can never match: shadowed by route #%zu "
						     "(line %d)",
						     s, j + 1, o->line);
					break;
				}
			}
			break;
		default:
			break;
		}

		if ((ms = config_setting_get_member(g, "mirror")))
			r->mirror = load_mirror(L, r, ms, prefix, MB_MIRROR);
		if ((ms = config_setting_get_member(g, "read")))
			load_read(L, r, ms, prefix);
		load_authority(L, r, g, prefix);
	}
}

/* ---------------------------------------------------------------- tables */

/* key = "id" or key = ["device_id", "timestamp"]: one or more distinct
 * column names (a composite key pages and matches on all of them). */
static void load_keys(struct loader *L, const config_setting_t *s, const char *prefix,
		      struct dw_table_side *out)
{
	const config_setting_t *k = config_setting_get_member(s, "key");
	char w[WHERE_MAX];
	int n;

	wjoin(w, sizeof(w), prefix, "key");
	if (!k) {
		lerr(L, sline(s), w, "missing (required: the key column, or a list of them)");
		return;
	}
	if (config_setting_type(k) == CONFIG_TYPE_STRING) {
		const char *v = config_setting_get_string(k);
		if (!is_ident(v)) {
			lerr(L, sline(k), w, "\"%s\": expected a column name", v);
			return;
		}
		out->keys = dw_calloc(1, sizeof(*out->keys));
		out->keys[out->nkeys++] = dw_strdup(v);
		out->key = out->keys[0];
		return;
	}
	if (!config_setting_is_array(k) && !config_setting_is_list(k)) {
		lerr(L, sline(k), w, "expected a column name or a list of them [ \"a\", \"b\" ]");
		return;
	}
	n = config_setting_length(k);
	if (n == 0 || n > DW_TABLE_KEY_MAX) {
		lerr(L, sline(k), w, "%d columns: a key has 1 to %d", n, DW_TABLE_KEY_MAX);
		return;
	}
	out->keys = dw_calloc((size_t)n, sizeof(*out->keys));
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(k, (unsigned)i);
		const char *v = config_setting_get_string(e);
		char ew[WHERE_MAX];

		wfmt(ew, sizeof(ew), "%s[%d]", w, i);
		if (!v) {
			lerr(L, sline(e), ew, "expected a column name (string)");
			continue;
		}
		if (!is_ident(v)) {
			lerr(L, sline(e), ew, "\"%s\": expected a column name", v);
			continue;
		}
		bool dup = false;
		for (size_t j = 0; j < out->nkeys; j++)
			dup |= strcmp(out->keys[j], v) == 0;
		if (dup) {
			lerr(L, sline(e), ew, "\"%s\" is listed twice", v);
			continue;
		}
		out->keys[out->nkeys++] = dw_strdup(v);
	}
	if (out->nkeys != (size_t)n) {
		for (size_t j = 0; j < out->nkeys; j++)
			free(out->keys[j]);
		free(out->keys);
		out->keys = NULL;
		out->nkeys = 0;
		return;
	}
	out->key = out->keys[0];
}

/* where = { column = "value"; ... } on the target side only. */
static void load_where(struct loader *L, const config_setting_t *s, const char *prefix,
		       const char *side, struct dw_table_side *out)
{
	const config_setting_t *g = config_setting_get_member(s, "where");
	char w[WHERE_MAX];

	if (!g)
		return;
	wjoin(w, sizeof(w), prefix, "where");
	if (strcmp(side, "target") != 0) {
		lerr(L, sline(g), w, "only the target side takes a where (the source is read whole)");
		return;
	}
	if (!config_setting_is_group(g) || config_setting_length(g) == 0) {
		lerr(L, sline(g), w, "expected a group { column = \"value\"; }");
		return;
	}
	int n = config_setting_length(g);
	out->where_cols = dw_calloc((size_t)n, sizeof(*out->where_cols));
	out->where_vals = dw_calloc((size_t)n, sizeof(*out->where_vals));
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(g, (unsigned)i);
		const char *cn = config_setting_name(e), *v = config_setting_get_string(e);
		char ew[WHERE_MAX];

		wjoin(ew, sizeof(ew), w, cn);
		if (!is_ident(cn)) {
			lerr(L, sline(e), ew, "\"%s\": not a valid column name", cn);
			continue;
		}
		if (!v) {
			lerr(L, sline(e), ew, "expected a string: \"$tenant\" or a literal value");
			continue;
		}
		if (v[0] == '$' && strcmp(v, "$tenant") != 0 && v[1] != '$') {
			lerr(L, sline(e), ew, "\"%s\": only \"$tenant\" is known here ($$ for a literal $)", v);
			continue;
		}
		out->where_cols[out->nwhere] = dw_strdup(cn);
		out->where_vals[out->nwhere++] = dw_strdup(v[0] == '$' && v[1] == '$' ? v + 1 : v);
	}
}

static void table_side_free(struct dw_table_side *s)
{
	free(s->dsn);
	free(s->table);
	for (size_t j = 0; j < s->nkeys; j++)
		free(s->keys[j]);
	free(s->keys);
	for (size_t j = 0; j < s->nwhere; j++) {
		free(s->where_cols[j]);
		free(s->where_vals[j]);
	}
	free(s->where_cols);
	free(s->where_vals);
}

static void load_side(struct loader *L, const config_setting_t *g, const char *side,
		      const char *tprefix, struct dw_table_side *out)
{
	static const char *const keys[] = { "dsn", "table", "key", "where", NULL };
	const config_setting_t *s = get_group(L, g, side, tprefix);
	char prefix[WHERE_MAX], w[WHERE_MAX];
	const char *v;

	out->dsn = dw_strdup("");
	wjoin(prefix, sizeof(prefix), tprefix, side);
	if (!s) {
		if (!config_setting_get_member(g, side))
			lerr(L, sline(g), prefix, "missing (required: { dsn; table; key; })");
		return;
	}
	check_keys(L, s, prefix, keys);
	if (get_str(L, s, "dsn", prefix, &v) == 1) {
		free(out->dsn);
		out->dsn = dw_strdup(v);
	}
	wjoin(w, sizeof(w), prefix, "table");
	switch (get_str(L, s, "table", prefix, &v)) {
	case 0:
		lerr(L, sline(s), w, "missing (required)");
		break;
	case 1:
		if (!is_qualified_ident(v))
			lerr(L, sline(config_setting_get_member(s, "table")), w,
			     "\"%s\": expected a table name (optionally schema.table)", v);
		else
			out->table = dw_strdup(v);
		break;
	default:
		break;
	}
	load_keys(L, s, prefix, out);
	load_where(L, s, prefix, side, out);
}

/*
 * ignore = [ "updated_at" ]: columns backfill writes but verify does not
 * compare, because after the first mirrored update the new system owns them.
 * Each must be a mapped column other than the key.
 */
static void load_ignore(struct loader *L, const config_setting_t *g, const char *prefix,
			struct dw_table_map *t)
{
	const config_setting_t *ig = config_setting_get_member(g, "ignore");
	char w[WHERE_MAX];
	int n;

	if (!ig)
		return;
	wjoin(w, sizeof(w), prefix, "ignore");
	if (!config_setting_is_array(ig) && !config_setting_is_list(ig)) {
		lerr(L, sline(ig), w, "expected a list of column names [ \"a\", \"b\" ]");
		return;
	}
	n = config_setting_length(ig);
	t->ignore = dw_calloc((size_t)n + 1, sizeof(*t->ignore));
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(ig, (unsigned)i);
		const char *cn = config_setting_get_string(e);
		bool mapped = false;

		if (!cn) {
			lerr(L, sline(e), w, "expected a column name (string)");
			continue;
		}
		for (size_t j = 0; j < t->ncolumns; j++)
			mapped |= strcmp(t->column_names[j], cn) == 0;
		if (!mapped) {
			lerr(L, sline(e), w, "\"%s\" is not a column in columns", cn);
			continue;
		}
		bool is_key = false;
		for (size_t j = 0; j < t->target.nkeys; j++)
			is_key |= strcmp(t->target.keys[j], cn) == 0;
		if (is_key) {
			lerr(L, sline(e), w, "\"%s\" is the key; the key is always compared", cn);
			continue;
		}
		t->ignore[t->nignore++] = dw_strdup(cn);
	}
}

static void load_tables(struct loader *L, const config_setting_t *root)
{
	static const char *const keys[] = { "name", "source", "target", "columns", "ignore", NULL };
	const config_setting_t *ts = config_setting_get_member(root, "tables");
	struct dw_config *c = L->c;
	int n;

	if (!ts)
		return;
	if (!config_setting_is_list(ts)) {
		lerr(L, sline(ts), "tables", "expected a list ( { ... }, { ... } )");
		return;
	}
	n = config_setting_length(ts);
	c->tables = dw_calloc((size_t)n + 1, sizeof(*c->tables));
	for (int i = 0; i < n; i++) {
		const config_setting_t *g = config_setting_get_elem(ts, (unsigned)i);
		struct dw_table_map *t = &c->tables[c->ntables];
		char prefix[WHERE_MAX], w[WHERE_MAX];
		const config_setting_t *cols;

		wfmt(prefix, sizeof(prefix), "table #%d", i + 1);
		if (!config_setting_is_group(g)) {
			lerr(L, sline(g), prefix, "expected a group { name = ...; ... }");
			continue;
		}
		t->line = sline(g);
		c->ntables++;
		t->name = load_item_name(L, g, "table", prefix, sizeof(prefix), c->ntables - 1,
					 table_name_at);
		check_keys(L, g, prefix, keys);
		load_side(L, g, "source", prefix, &t->source);
		load_side(L, g, "target", prefix, &t->target);
		if (t->source.nkeys && t->target.nkeys && t->source.nkeys != t->target.nkeys) {
			wjoin(w, sizeof(w), prefix, "target.key");
			lerr(L, sline(config_setting_get_member(config_setting_get_member(g, "target"), "key")),
			     w, "%zu columns, but the source key has %zu (both name the same key, in order)",
			     t->target.nkeys, t->source.nkeys);
		}

		wjoin(w, sizeof(w), prefix, "columns");
		cols = get_group(L, g, "columns", prefix);
		if (!cols) {
			if (!config_setting_get_member(g, "columns"))
				lerr(L, sline(g), w, "missing (required: { column = \"$row.x\"; })");
			continue;
		}
		int nc = config_setting_length(cols);
		if (nc == 0) {
			lerr(L, sline(cols), w, "no columns");
			continue;
		}
		t->column_names = dw_calloc((size_t)nc, sizeof(*t->column_names));
		t->columns = dw_calloc((size_t)nc, sizeof(struct expr *));
		for (int j = 0; j < nc; j++) {
			const config_setting_t *m = config_setting_get_elem(cols, (unsigned)j);
			const char *cn = config_setting_name(m);
			struct expr_opts o = { .allowed = EXPR_SRC_TABLE };
			struct dw_err err = { { 0 } };
			struct expr *e;
			char cw[WHERE_MAX];

			wjoin(cw, sizeof(cw), w, cn);
			if (!is_ident(cn)) {
				lerr(L, sline(m), cw, "\"%s\": not a valid column name", cn);
				continue;
			}
			e = expr_compile_opts(m, &o, &err);
			if (!e) {
				lerr(L, o.line ? o.line : sline(m), prefix, "columns.%s", err.msg);
				continue;
			}
			t->column_names[t->ncolumns] = dw_strdup(cn);
			t->columns[t->ncolumns++] = e;
		}
		load_ignore(L, g, prefix, t);
	}
}

bool config_table_compares(const struct dw_table_map *t, const char *column)
{
	for (size_t i = 0; i < t->nignore; i++)
		if (strcmp(t->ignore[i], column) == 0)
			return false;
	return true;
}

/* ---------------------------------------------------------------- entry points */

#define PARSE_READ_MAX (16u << 20) /* larger files get libconfig's bare verdict */

/* The text of file (NULL when unreadable or too large); *len its size. */
static char *slurp(const char *file, size_t *len)
{
	FILE *f = fopen(file, "r");
	char *buf;

	if (!f)
		return NULL;
	buf = dw_malloc(PARSE_READ_MAX);
	*len = fread(buf, 1, PARSE_READ_MAX, f);
	if (ferror(f) || *len == PARSE_READ_MAX) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

/* Line n (1-based) of text, trimmed, into out; "" when there is none. */
static void line_text(const char *text, size_t len, int n, char *out, size_t outlen)
{
	const char *p = text, *end = text + len, *e;

	for (int i = 1; i < n && p < end; i++) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		p = nl ? nl + 1 : end;
	}
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	e = memchr(p, '\n', (size_t)(end - p));
	e = e ? e : end;
	while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		e--;
	snprintf(out, outlen, "%.*s", (int)(e - p > 80 ? 80 : e - p), p);
}

/*
 * libconfig says "syntax error" and a line; say what is wrong there. The
 * second reader (confsyntax) names the token and what was expected; when it
 * sees nothing wrong, show libconfig's verdict with the line's text.
 */
static void report_parse_error(const config_t *cfg, const char *file, const char *src,
			       struct dw_errlist *errs)
{
	const char *text = config_error_text(cfg);
	int line = config_error_line(cfg);
	struct confsyntax_diag d;
	size_t len = src ? strlen(src) : 0;
	char *buf = src ? dw_strdup(src) : slurp(file, &len), shown[96];

	if (buf && strcmp(text, "syntax error") == 0 && confsyntax_explain(buf, len, &d)) {
		dw_errlist_add(errs, "%s:%d: %s", file, d.line, d.what);
	} else if (buf && (line_text(buf, len, line, shown, sizeof(shown)), *shown)) {
		dw_errlist_add(errs, "%s:%d: %s: %s", file, line, text, shown);
	} else {
		dw_errlist_add(errs, "%s:%d: %s", file, line, text);
	}
	free(buf);
}

int config_read_path(struct config_t *lc, const char *path)
{
	/* @include "x.conf" is relative to the including file, not the cwd */
	char *dir = dw_strdup(path), *slash = strrchr(dir, '/');
	int rc;

	if (slash) {
		*slash = '\0';
		config_set_include_dir(lc, *dir ? dir : "/");
	}
	rc = config_read_file(lc, path);
	free(dir);
	return rc;
}

/* cutover = { reads_at_100_h; verified_within_h; }, and each route's
 * table naming a configured table (tables load after routes). */
static void load_cutover(struct loader *L, const config_setting_t *root)
{
	static const char *const keys[] = { "reads_at_100_h", "verified_within_h", NULL };
	const config_setting_t *g = get_group(L, root, "cutover", "");
	struct dw_config *c = L->c;

	if (g) {
		check_keys(L, g, "cutover", keys);
		set_int(L, g, "reads_at_100_h", "cutover", 0, 24LL * 365, &c->cutover.reads_at_100_h);
		set_int(L, g, "verified_within_h", "cutover", 1, 24LL * 365,
			&c->cutover.verified_within_h);
	}
	for (size_t i = 0; i < c->nroutes; i++) {
		const struct dw_route *r = &c->routes[i];

		/* A warning, not an error: the routes are often checked in a file
		 * without its table maps; verify then has no table to name. */
		if (r->table && !config_table(c, r->table))
			dw_errlist_add(&c->warnings,
				       "%s:%d: route \"%s\": table: \"%s\" is not in tables: `dualwrite "
				       "verify` cannot report this route's indeterminate writes by table",
				       L->file, r->line, r->name ? r->name : "?", r->table);
	}
}

/* Checks a parsed libconfig tree and builds the snapshot; path names it in
 * errors. Destroys cfg either way. */
static struct dw_config *config_from_tree(config_t *cfg, const char *path, unsigned flags,
					  struct dw_errlist *errs)
{
	static const char *const top_keys[] = { "listen",   "workers",		"admin",
						"limits",   "upstreams",	"default_upstream",
						"queue",    "tenant",		"routes",
						"tables",   "log_level",	"guards",   "cutover",
						NULL };
	struct loader L = { .file = path, .flags = flags, .errs = errs };
	struct dw_config *c = NULL;
	const config_setting_t *root;

	root = config_root_setting(cfg);

	c = dw_calloc(1, sizeof(*c));
	L.c = c;
	c->refcnt = 1;
	c->path = dw_strdup(path);
	c->log_level = DW_LOG_INFO;
	c->workers = 1;
	c->limits = (struct dw_limits){ .max_header_bytes = 16384,
					.max_body_bytes = 1048576,
					.header_timeout_ms = 10000,
					.body_timeout_ms = 30000,
					.idle_timeout_ms = 60000,
					.max_connections = 10000,
					.drain_timeout_ms = 10000 };
	c->default_upstream = -1;
	c->queue.path = dw_strdup("/var/lib/dualwrite/queue");
	c->queue.durability = QUEUE_DURABILITY_PROCESS;
	c->queue.max_bytes = 1ULL << 30;
	c->queue.table = dw_strdup("dualwrite_queue");
	c->tenant.header = dw_strdup("X-Tenant-ID");
	c->tenant.def = dw_strdup("default");
	c->guards = (struct dw_guards){ .window_s = 60,
					.min_requests = 50,
					.read_error_rate = 1.0,
					.read_p99_ms = 500,
					.mirror_failure_rate = 5.0,
					.shadow_mismatches_per_hour = 5 };
	c->cutover.verified_within_h = 24;

	check_keys(&L, root, "", top_keys);
	load_scalars(&L, root);
	load_guards(&L, root);
	load_upstreams(&L, root);
	load_routes(&L, root);
	load_tables(&L, root);
	load_cutover(&L, root);

	config_destroy(cfg);
	if (L.nerrs > 0) {
		config_free(c);
		return NULL;
	}
	return c;
}

/* Reports why libconfig could not read; destroys cfg. */
/* src: the text parsed when it came from memory (NULL: read the file). */
static void read_failed(config_t *cfg, const char *path, const char *src,
			struct dw_errlist *errs)
{
	const char *ef = config_error_file(cfg);

	if (config_error_type(cfg) == CONFIG_ERR_FILE_IO)
		dw_errlist_add(errs, "%s: cannot read: %s", ef ? ef : path, config_error_text(cfg));
	else /* an error in an included file names that file, and src is not it */
		report_parse_error(cfg, ef ? ef : path, ef ? NULL : src, errs);
	config_destroy(cfg);
}

struct dw_config *config_load(const char *path, struct dw_errlist *errs)
{
	return config_load_flags(path, 0, errs);
}

struct dw_config *config_load_flags(const char *path, unsigned flags, struct dw_errlist *errs)
{
	config_t cfg;
	FILE *f;
	int rc;

	/* libconfig reports an unreadable file without errno; open it first
	 * to say why. */
	f = fopen(path, "r");
	if (!f) {
		dw_errlist_add(errs, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	fclose(f);

	config_init(&cfg);
	rc = config_read_path(&cfg, path);
	if (rc != CONFIG_TRUE) {
		read_failed(&cfg, path, NULL, errs);
		return NULL;
	}
	return config_from_tree(&cfg, path, flags, errs);
}

struct dw_config *config_load_string(const char *text, const char *name,
				     struct dw_errlist *errs)
{
	config_t cfg;

	/* text has no directory to include from, and reading files is not
	 * what loading a string should do */
	if (strstr(text, "@include")) {
		dw_errlist_add(errs, "%s: @include is not supported here", name);
		return NULL;
	}
	config_init(&cfg);
	if (config_read_string(&cfg, text) != CONFIG_TRUE) {
		read_failed(&cfg, name, text, errs);
		return NULL;
	}
	return config_from_tree(&cfg, name, 0, errs);
}

int config_upstream_index(const struct dw_config *c, const char *name)
{
	for (size_t i = 0; i < c->nupstreams; i++)
		if (c->upstreams[i].name && strcmp(c->upstreams[i].name, name) == 0)
			return (int)i;
	return -1;
}

const struct dw_table_map *config_table(const struct dw_config *c, const char *name)
{
	for (size_t i = 0; i < c->ntables; i++)
		if (c->tables[i].name && strcmp(c->tables[i].name, name) == 0)
			return &c->tables[i];
	return NULL;
}

const struct dw_route *config_route_match(const struct dw_config *c, const char *method,
					  size_t method_len, const char *path, size_t path_len,
					  struct route_params *rp)
{
	for (size_t i = 0; i < c->nroutes; i++)
		if (route_pattern_match(c->routes[i].pattern, method, method_len, path, path_len,
					rp))
			return &c->routes[i];
	return NULL;
}

static bool str_differs(const char *a, const char *b)
{
	if (!a || !b)
		return a != b;
	return strcmp(a, b) != 0;
}

/*
 * The keys a reload cannot apply, declaratively: the spool, its durability and
 * the PostgreSQL queue are opened once, the workers and the admin listener
 * started once. A reload keeps the running values of these (config_keep_
 * nonreloadable) so that no reader anywhere can see a value the process does
 * not actually run with. Every other key is reloadable.
 */
enum nr_type { NR_INT, NR_U64, NR_STR };
static const struct {
	const char *key;
	enum nr_type type;
	size_t off;
} nonreloadable[] = {
	{"workers", NR_INT, offsetof(struct dw_config, workers)},
	{"admin.listen", NR_STR, offsetof(struct dw_config, admin_listen)},
	{"queue.path", NR_STR, offsetof(struct dw_config, queue.path)},
	{"queue.durability", NR_INT, offsetof(struct dw_config, queue.durability)},
	{"queue.max_bytes", NR_U64, offsetof(struct dw_config, queue.max_bytes)},
	{"queue.postgres", NR_STR, offsetof(struct dw_config, queue.postgres)},
	{"queue.table", NR_STR, offsetof(struct dw_config, queue.table)},
};
_Static_assert(sizeof(enum queue_durability) == sizeof(int), "queue.durability is read as an int");

#define NR_FIELD(cfg, i, T) ((T *)(void *)((char *)(cfg) + nonreloadable[i].off))
#define NR_CFIELD(cfg, i, T) ((const T *)(const void *)((const char *)(cfg) + nonreloadable[i].off))
#define NR_CSTR(cfg, i) (*(const char *const *)(const void *)((const char *)(cfg) + nonreloadable[i].off))

static bool nr_differs(const struct dw_config *a, const struct dw_config *b, size_t i)
{
	switch (nonreloadable[i].type) {
	case NR_INT:
		return *NR_CFIELD(a, i, int) != *NR_CFIELD(b, i, int);
	case NR_U64:
		return *NR_CFIELD(a, i, uint64_t) != *NR_CFIELD(b, i, uint64_t);
	case NR_STR:
		return str_differs(NR_CSTR(a, i), NR_CSTR(b, i));
	}
	return false;
}

void config_diff_nonreloadable(const struct dw_config *old, const struct dw_config *new_,
			       void (*warn)(void *arg, const char *key), void *arg)
{
	for (size_t i = 0; i < DW_ARRAY_LEN(nonreloadable); i++)
		if (nr_differs(old, new_, i))
			warn(arg, nonreloadable[i].key);
}

void config_keep_nonreloadable(struct dw_config *neu, const struct dw_config *running,
			       void (*warn)(void *arg, const char *key), void *arg)
{
	for (size_t i = 0; i < DW_ARRAY_LEN(nonreloadable); i++) {
		if (!nr_differs(running, neu, i))
			continue;
		if (warn)
			warn(arg, nonreloadable[i].key);
		switch (nonreloadable[i].type) {
		case NR_INT:
			*NR_FIELD(neu, i, int) = *NR_CFIELD(running, i, int);
			break;
		case NR_U64:
			*NR_FIELD(neu, i, uint64_t) = *NR_CFIELD(running, i, uint64_t);
			break;
		case NR_STR: {
			char **dst = NR_FIELD(neu, i, char *);
			const char *src = NR_CSTR(running, i);

			free(*dst);
			*dst = src ? dw_strdup(src) : NULL;
			break;
		}
		}
	}
}
