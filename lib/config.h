/*
 * config — load, check and hold one immutable configuration snapshot.
 *
 * config_load reads a libconfig file, checks types and ranges (pass 1) and
 * cross references — routes name existing upstreams, expressions compile,
 * routes do not shadow each other (pass 2) — and reports every problem found
 * as "file:line: where: what", not just the first. The result is immutable
 * and reference counted: the daemon swaps a pointer on reload and the old
 * snapshot is freed when its last request lets go. `dualwrited -t` and the
 * reload run exactly this function.
 *
 * Keys (SPEC §3): listen, workers, admin.listen, limits.*, upstreams.*,
 * default_upstream, queue.*, tenant.*, routes (with mirror and, SPEC §7.1,
 * read; SPEC §7.5 authority, request, response, reverse, table), guards
 * (SPEC §7.3), tables, cutover.*, log_level. TLS (SPEC
 * §8): a listen entry may be { addr; tls = { cert; key; client_ca; }; } and
 * an https:// upstream takes ca_file, verify, sni, cert and key; their
 * OpenSSL contexts are built here (tls.h), so a bad certificate or key is a
 * configuration error like any other, and the snapshot owns the contexts.
 */
#ifndef DW_CONFIG_H
#define DW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw.h"
#include "expr.h"
#include "route.h"

struct ssl_ctx_st; /* SSL_CTX of <openssl/ssl.h> */

struct dw_upstream {
	char *name;
	char *url;	  /* as configured */
	bool tls;	  /* https:// */
	char *host;	  /* host name or address (no brackets) */
	int port;
	char *host_header; /* "host" or "host:port" as sent in Host */
	char *base_path;  /* path prefix from the URL, "" when none ("/" is "") */
	int timeout_ms;	  /* response deadline, from request sent to head received; default 5000 */
	int connect_timeout_ms; /* default min(timeout_ms, 2000) */
	int pool_size;	  /* idle keep-alive connections kept per worker; default 64 */
	int max_inflight; /* mirror concurrency per worker towards it; default 64 */
	int pipeline_depth; /* mirror requests per connection to a fast target; 1: none; default 16 */
	int resolve_interval_s; /* a host name is looked up again this often; default 60 */
	/* Runtime: bound by the daemon before the snapshot is published
	 * (guard_table_bind); NULL in a snapshot no daemon runs. */
	struct guard_up *guard;
	/* https:// only (SPEC §8) */
	char *ca_file;	  /* NULL: the system trust store */
	bool verify;	  /* default true; false: any certificate (warned at every load) */
	char *sni;	  /* NULL: the URL's host; also the name the certificate must carry */
	char *cert, *key; /* client certificate, NULL: none */
	struct ssl_ctx_st *tls_ctx; /* built at load (tls.h); NULL for http:// */
	int line;
};

struct dw_limits {
	size_t max_header_bytes; /* 16384 */
	size_t max_body_bytes;	 /* 1048576 */
	int header_timeout_ms;	 /* 10000 */
	int body_timeout_ms;	 /* 30000 */
	int idle_timeout_ms;	 /* 60000 */
	int max_connections;	 /* 10000 */
	int drain_timeout_ms;	 /* 10000: SIGTERM bound for in-flight work */
};

/* How a mirror target's answer is classified. */
enum mirror_class {
	MIRROR_DELIVERED = 0,
	MIRROR_RETRY = 1,
	MIRROR_PERMANENT = 2,
};

struct dw_mirror {
	int upstream;	       /* index into dw_config.upstreams */
	char *method;	       /* NULL: the request's method */
	struct tmpl *path;     /* never NULL */
	struct expr *key;      /* ordering key; NULL: none (no ordering) */
	/* pins = [ ... ]: more read-your-writes keys this write pins until it
	 * is delivered (SPEC §7.2, e.g. "user:${$request.user_id}" for a list
	 * keyed by user while the write is keyed by item) */
	struct expr **pins;
	size_t npins;
	/* pin_prefix[i]: the literal text every key of pins[i] begins with
	 * (expr_literal_prefix): what that pin pins when it cannot be worked
	 * out for a write ("" for a pin with none: every key of the upstream) */
	char **pin_prefix;
	struct expr *body;     /* NULL: no body is sent */
	unsigned sources;      /* union of expr_sources of key, path and body: what the
				* mirror needs (a source it needs that is unusable, e.g. a
				* response that is not JSON, dead-letters the write) */
	unsigned pin_sources;  /* union of expr_sources of pins: read if usable; a pin
				* that cannot be worked out pins its pin_prefix (pinset.h) */
	uint8_t klass[600];    /* enum mirror_class by status code 100..599 */
};

struct read_state; /* runtime state of a read route, outliving reloads (readstate.h) */
struct guard_up;   /* runtime guard state of an upstream, outliving reloads (guard.h) */

/* The rollback guards (SPEC §7.3); defaults are the seeds' thresholds. A
 * negative limit turns that guard off. Reloadable. */
struct dw_guards {
	int window_s;			   /* 60: sliding window */
	int min_requests;		   /* 50: no read/mirror decision on fewer */
	double read_error_rate;		   /* 1.0 percent -> rollback */
	double read_p99_ms;		   /* 500 -> rollback */
	double mirror_failure_rate;	   /* 5.0 percent -> rollback */
	double shadow_mismatches_per_hour; /* 5 -> pause */
};

/*
 * A read route (SPEC §7.1): which share of a route's reads the new system
 * serves, and how its answer is mapped back to the legacy's shape.
 */
struct dw_read {
	int upstream;		/* index into dw_config.upstreams; never the default */
	struct tmpl *path;	/* NULL: the client's path and query unchanged */
	uint32_t weight;	/* configured share, hundredths of a percent (0..10000) */
	struct expr *sticky;	/* bucket key; NULL: every read draws anew */
	struct expr *key;	/* read-your-writes key; NULL: sticky (not acted on yet) */
	bool fallback;		/* default true: the legacy answers when the new system fails */
	struct expr *response;	/* mapping of the new system's 2xx JSON; NULL: unchanged */
	/* Parsed and checked; not acted on yet (shadow comparison, SPEC §7.3). */
	uint32_t shadow;	/* hundredths of a percent */
	char **compare_ignore;
	size_t ncompare_ignore;
	bool compare_unordered;
	/* Runtime: bound by the daemon before the snapshot is published
	 * (readstate_bind); NULL in a snapshot no daemon runs (-t, tools). */
	struct read_state *state;
	int line;
};

/* Which side a route's writes go to first (SPEC §7.5). */
enum dw_authority {
	AUTHORITY_LEGACY = 0, /* the legacy answers; `mirror` copies to the new system */
	AUTHORITY_NEW = 1,    /* the new system answers; `reverse` copies to the legacy */
};

struct dw_route {
	char *name;
	char *match;			/* as configured */
	struct route_pattern *pattern;
	struct dw_mirror *mirror;	/* NULL: pass-through only */
	struct dw_read *read;		/* NULL: every read goes to the legacy */
	/*
	 * Write cut-over (SPEC §7.5). With authority "new" the client's write
	 * goes to mirror->upstream as `request` builds it (upstream is that
	 * one, key unused; NULL: the client's request unchanged), its 2xx
	 * answer is mapped by `response` (NULL: unchanged), and `reverse` (a
	 * mirror like any other, towards the legacy) copies it back with every
	 * guarantee of §5. All three are parsed and checked whatever the
	 * authority, so a flip is only a change of that one word.
	 */
	enum dw_authority authority;
	struct dw_mirror *request;
	struct expr *response;
	struct dw_mirror *reverse;
	char *table;		/* the `tables` entry whose rows it writes; NULL: unknown */
	int line;
};

/* The mirror a route's acknowledged write takes: towards the new system
 * (authority "legacy") or back to the legacy (authority "new"). NULL: none. */
static inline const struct dw_mirror *route_write_mirror(const struct dw_route *r)
{
	return r->authority == AUTHORITY_NEW ? r->reverse : r->mirror;
}

/* A source side has no where. The key is one column (key = "id") or a
 * composite key (key = ["device_id", "timestamp"]); both sides name the same
 * number of columns, in order. `key` is keys[0], not a separate allocation. */
#define DW_TABLE_KEY_MAX 8
struct dw_table_side {
	char *dsn;   /* "" means libpq's PG* environment */
	char *table; /* may be schema-qualified */
	char *key;   /* the first key column (== keys[0]) */
	char **keys; /* every key column, in order */
	size_t nkeys;
	/* where = { tenant_id = "$tenant"; }: verify reads only the rows whose
	 * columns equal these values ("$tenant" is the tenant, else a literal). */
	char **where_cols, **where_vals;
	size_t nwhere;
};

struct dw_table_map {
	char *name;
	struct dw_table_side source, target;
	size_t ncolumns;
	char **column_names;	  /* target columns, in configured order */
	struct expr **columns;	  /* one expression per target column */
	char **ignore;		  /* columns verify does not compare (new system owns them) */
	size_t nignore;
	int line;
};

enum queue_durability { QUEUE_DURABILITY_PROCESS = 0, QUEUE_DURABILITY_FSYNC = 1 };

struct dw_config {
	int refcnt; /* atomic; see config_ref/config_unref */
	char *path; /* the file it was loaded from */
	enum dw_log_level log_level;

	char **listen; /* "host:port" strings; IPv6 as "[::1]:8080" */
	struct ssl_ctx_st **listen_tls; /* per listen entry: its server context, NULL: plain HTTP */
	size_t nlisten;
	int workers;	  /* default 1 */
	char *admin_listen; /* NULL: no admin listener */
	struct dw_limits limits;

	struct dw_upstream *upstreams;
	size_t nupstreams;
	int default_upstream; /* index */

	struct {
		char *path; /* spool directory; default "/var/lib/dualwrite/queue" */
		enum queue_durability durability;
		uint64_t max_bytes; /* default 1 GiB */
		char *postgres;	    /* DSN of the shared queue, NULL when not configured */
		char *table;	    /* default "dualwrite_queue" */
	} queue;

	struct {
		char *header;	  /* default "X-Tenant-ID" */
		char *def;	  /* default tenant; default "default" */
	} tenant;

	struct dw_guards guards;

	struct dw_route *routes;
	size_t nroutes;

	struct dw_table_map *tables;
	size_t ntables;

	/* cutover = { reads_at_100_h; verified_within_h; } (SPEC §7.5): what
	 * `dualwrite cutover check` asks of a write cut-over. */
	struct {
		int reads_at_100_h;    /* default 0 */
		int verified_within_h; /* default 24 */
	} cutover;

	/* What is valid but probably not meant ("file:line: where: what"), for
	 * the loader's caller to show: dualwrited logs them at every load, -t
	 * prints them to stderr. */
	struct dw_errlist warnings;
};

/*
 * Load and check path. Returns a snapshot with refcnt 1, or NULL with every
 * problem appended to errs (each "file:line: where: what"; line 0 omitted
 * for file-level errors such as "cannot open").
 */
struct dw_config *config_load(const char *path, struct dw_errlist *errs);
/* The same checks on libconfig text held in memory (NUL-terminated); name
 * stands for the file in errors and in ->path. @include is refused (there is
 * no directory to include from). For tests and the fuzzer. */
struct dw_config *config_load_string(const char *text, const char *name,
				     struct dw_errlist *errs);
/* Read path into an initialised libconfig handle as config_load does, with
 * @include relative to the including file (not the cwd): for a caller that
 * needs the raw settings again. Returns libconfig's CONFIG_TRUE/FALSE. */
struct config_t;
int config_read_path(struct config_t *lc, const char *path);
/* The same, with CONFIG_NO_LISTEN_TLS: listeners' TLS settings are checked
 * but their certificates and keys are not read (listen_tls stays NULL), for
 * the CLI, which never listens and whose user may not read the daemon's
 * private key. */
#define CONFIG_NO_LISTEN_TLS 1u
struct dw_config *config_load_flags(const char *path, unsigned flags, struct dw_errlist *errs);
/* Take and release a reference (thread-safe). The last unref frees. */
struct dw_config *config_ref(struct dw_config *c);
void config_unref(struct dw_config *c);

/* Lookups; NULL / -1 when absent. */
int config_upstream_index(const struct dw_config *c, const char *name);
/* The server context of the listen entry addr: NULL for plain HTTP (or an
 * address not in c). */
struct ssl_ctx_st *config_listen_tls(const struct dw_config *c, const char *addr);
const struct dw_table_map *config_table(const struct dw_config *c, const char *name);
/* Whether verify compares this target column of a table map. */
bool config_table_compares(const struct dw_table_map *t, const char *column);
/* The first route matching method+path, or NULL; fills rp (may be NULL). */
const struct dw_route *config_route_match(const struct dw_config *c, const char *method,
					  size_t method_len, const char *path, size_t path_len,
					  struct route_params *rp);

/* Keys whose change a reload cannot apply (workers, admin.listen, queue.*;
 * one table in config.c says which; every other key, log_level included, is
 * reloadable): describes each differing one via
 * warn(arg, "key"). */
void config_diff_nonreloadable(const struct dw_config *old, const struct dw_config *new_,
			       void (*warn)(void *arg, const char *key), void *arg);
/* The reload's step: the same diff (warn may be NULL), and then neu takes the
 * running snapshot's value of every such key, so that the snapshot the daemon
 * publishes only ever holds the values it started with for them — a reader of
 * any snapshot cannot act on a change that needs a restart. neu must not be
 * shared yet (refcnt 1, not published). */
void config_keep_nonreloadable(struct dw_config *neu, const struct dw_config *running,
			       void (*warn)(void *arg, const char *key), void *arg);

/* Split "host:port" / "[v6]:port" into parts. Returns 0 or -1 with err. */
int config_split_hostport(const char *s, char *host, size_t hostlen, int *port,
			  struct dw_err *err) DW_MUSTCHECK;

#endif
