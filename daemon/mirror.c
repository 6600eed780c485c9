/*
 * mirror.c — from a legacy-acknowledged write to its delivery on the new
 * system (or, on a route whose authority is "new", from the new system's
 * acknowledgement to the legacy: the job carries the route's block, mirror
 * or reverse, and everything below is the same either way).
 *
 * mirror_capture runs in the worker that served the write, before the client
 * gets its answer: it builds the mirror request with the mapping engine and
 * journals it in the spool (PENDING). A write whose mirror cannot be built is
 * journaled dead-lettered with the reason. The client is served either way.
 *
 * A write the journal refuses (disk full, queue full, I/O error; in
 * durability "fsync" also a failed fdatasync) is still sent live, marked
 * (job->nojournal): delivered, it counts as delivered; otherwise — a failed
 * send, a permanent answer, an open breaker, shutdown — it is "lost", the
 * one outcome that is neither journaled nor delivered, logged at error level
 * with both reasons. The journal's state (struct journal_health) is logged
 * once per change with its counts, not once per write.
 *
 * Order (G3) for a write that is not in the journal: it takes its place in
 * its key's in-memory chain like any other, so later writes of the key wait
 * behind it in memory (journaled or not) and none overtakes it. If it cannot
 * be delivered, it is lost and the writes behind it go to the queue as
 * usual: a write without a journal record can never be queued behind later
 * ones (its sequence number would be later than theirs), so it is never
 * journaled late. A key that already has writes in the queue takes no
 * unjournaled write: it could only overtake them, so it is lost at once.
 *
 * Each worker's event loop runs one mirror shard; a write goes to the shard
 * its ordering key hashes to (an unkeyed write stays in the worker that
 * captured it), so every key has one home and no hand-off is needed when
 * the home is the capturing worker. A shard sends journaled writes with
 * bounded concurrency per upstream, one at a time per ordering key, in
 * journal order (G3). Each
 * outcome is appended to the journal: delivered, queued for replay (retryable
 * failure — and everything behind it for that key), or dead (permanent). A
 * key that already has records waiting in the queue is not sent at all: the
 * write queues behind them until `dualwrite replay` drains them.
 *
 * Nothing here ever blocks the client's path: a send is non-blocking I/O in
 * the same loop, the hand-off to another worker's shard is a mutex-protected
 * list and an eventfd, and a backlog beyond MAX_IN_MEMORY spills to the
 * queue.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "exchange.h"
#include "guard.h"
#include "http_parse.h"
#include "jsonarena.h"
#include "jsonfast.h"
#include "mirrorwire.h"
#include "pgforward.h" /* pgforward wiring */
#include "server.h"
#include "spool_frame.h"

#define MAX_IN_MEMORY 4096 /* jobs held in memory before spilling to the queue */
#define RETAIN_MAX 65536   /* outcomes kept while the journal refuses them */
#define KEY_BUCKETS 4096

enum { WAKE_INBOX = 1 };

struct keyq;

struct mirror_job {
	TAILQ_ENTRY(mirror_job) link;  /* inbox, or an upstream's ready list */
	TAILQ_ENTRY(mirror_job) klink; /* its key's chain */
	uint64_t seq;
	struct dw_config *cfg; /* reference: keeps route and upstream valid */
	const struct dw_route *route;
	const struct dw_mirror *mm; /* the route's mirror or reverse: which way it goes */
	char *key, *idem, *method, *path, *body, *reqid;
	size_t body_len;
	uint32_t attempts;
	int64_t created_us; /* wall clock, when the legacy acknowledged */
	int64_t t_ack; /* monotonic, when the legacy acknowledged */
	struct keyq *kq;
	/* Why this write has no durable journal record (NULL: it has one). With
	 * seq 0 it is not in the journal at all (no state frames are written
	 * for it); with a seq its fdatasync failed. Lost unless delivered. */
	char *nojournal;
	/* Read-your-writes (pinset.h): the keys this write pins (its ordering
	 * key and its route's pins), added before the client's answer; given
	 * back when it is delivered or lost, parked when it waits in the queue.
	 * blind: a pin did not evaluate, the whole upstream is pinned. */
	char **pinkeys;
	size_t npinkeys;
	bool blind;
};
TAILQ_HEAD(job_list, mirror_job);

/* The chain of in-memory jobs of one (upstream, key): only the head is sent. */
struct keyq {
	struct keyq *next; /* hash chain */
	char *hkey;	   /* "upstream\nkey" */
	uint64_t hash;	   /* hash_key(upstream, key) */
	struct job_list jobs;
};

/* Per mirror upstream (by name): concurrency and the jobs whose turn it is. */
/*
 * Per mirror upstream (by name): concurrency, the jobs whose turn it is, and
 * a circuit breaker. After BREAKER_FAILURES retryable failures in a row the
 * breaker opens: writes whose turn comes go straight to the queue (no connect
 * attempt per write against a dead target) until the cooldown passes; then
 * one probe goes out, and its success closes the breaker while a failure
 * reopens it with the cooldown doubled (up to BREAKER_MAX_MS).
 */
#define BREAKER_FAILURES 5
#define BREAKER_MIN_MS 1000
#define BREAKER_MAX_MS 30000

struct target {
	struct target *next;
	char *name;
	int inflight;
	TAILQ_HEAD(, xconn) lanes; /* open connections carrying sends (exchange.h) */
	int nlanes;
	double latency_ms; /* moving average of answered sends: decides pipelining */
	int answered;	   /* answers seen, up to PIPE_WARMUP */
	struct job_list ready;
	int failures;	   /* retryable failures in a row */
	int64_t open_until; /* monotonic us; 0: closed */
	int cooldown_ms;
	bool probing;	   /* half-open: one send in flight decides */
	char last_error[200];
	bool counted_open; /* this shard's share of m_open */
	struct metric *m_open;
};

/*
 * A connection to a mirror target carrying sends in order (HTTP/1.1
 * pipelining, exchange.h). A send's request goes into the lane's output at
 * once and the output is written once per loop iteration (flush_cb), so the sends a
 * worker starts in one iteration share one write(2) and their answers tend
 * to share one read(2). Only a fast target gets more than one send per lane
 * (the upstream's pipeline_depth, while its average latency is under
 * PIPE_MAX_LATENCY_MS): a slow one gets a connection per send, as without
 * pipelining, so one slow answer never holds others back; so does a target
 * until PIPE_WARMUP answers have shown how fast it is (one that hangs from
 * the start then fails a send per connection, and opens the breaker within
 * one timeout). Only the head of a key's chain is ever on the wire, so
 * pipelining never reorders a key's writes (G3). When a lane breaks, its
 * head send fails as a send always did; the sends behind it, which the
 * target may or may not have seen, go out once more on another lane with the
 * same Idempotency-Key (G4), and fail for good only if that lane breaks too.
 * A lane that times out fails every send on it: each has waited nearly the
 * whole timeout already, and a target that stopped answering should open the
 * breaker now, not one timeout per send later.
 */
#define PIPE_MAX_LATENCY_MS 20.0
#define PIPE_WARMUP 8

/* One HTTP exchange with a mirror target. */
struct send {
	struct send *next_free; /* mi->sfree */
	struct mirror *mi;
	struct mirror_job *job;
	struct target *t;
	int64_t t_start;
	TAILQ_ENTRY(send) link;
	/* Last (its 3 KiB head last): what is above is zeroed by send_new. */
	struct xchg x;
};

/* Sends a shard keeps for reuse, so a mirrored write costs no malloc/free of
 * its 3 KiB send. */
#define SFREE_MAX 64

struct mirror {
	struct server *srv;
	unsigned slot; /* the owning worker's id: its guard windows */
	struct event_base *base; /* the owning worker's loop (borrowed) */
	struct pool_set *pools;

	pthread_mutex_t lock; /* guards inbox and closed */
	struct job_list inbox;
	bool closed;
	struct wake wake; /* jobs from other workers */

	/* owning worker's thread only */
	struct pending {
		struct mirror_job *job;
		char *dead; /* reason the write cannot be mirrored; NULL: send it */
		struct target *open; /* mirror_commit: its breaker queues the write */
		uint64_t intent; /* closed after the record */
	} *pend;	    /* captured, to be journaled by mirror_commit */
	/* Write-ahead intents and closes since the last mirror_commit, as
	 * frames (spool_append_group writes them after the records). */
	struct sf_buf iframes, cframes;
	size_t npend, cappend;
	struct keyq *keys[KEY_BUCKETS];
	struct target *targets;
	TAILQ_HEAD(, send) sends;
	struct send *sfree; /* cache, SFREE_MAX at most */
	int nsfree;
	struct xloop *xl; /* the sends' connections (exchange.h) */
	size_t in_memory;

	/* Outcomes not yet in the journal: written together once per loop
	 * iteration (flush_ev), and always before a new job is looked at, so
	 * spool_key_queued sees every key queued so far. */
	struct spool_change *chg;
	size_t nchg, capchg;
	/* hash_key() of the keys of the QUEUED ones among them: a new job of such
	 * a key must see them in the journal (spool_key_queued) first */
	uint64_t *qhash;
	size_t nqhash, capqhash;
	/* Outcomes kept because the journal refused them (disk full): tried
	 * again with the next ones, so once it takes writes again no record is
	 * left PENDING (to be re-sent after a restart), and meanwhile their
	 * keys' QUEUED outcomes still hold later writes back (job_arrive). At
	 * most RETAIN_MAX; beyond, dropped with one warning. */
	size_t retained;
	struct event *flush_ev;

	struct outcome_series {
		char *route;
		const char *result;
		struct metric *m;
	} series[64];
	size_t nseries;

	struct histogram *h_duration;
	struct metric *m_inflight, *m_memory, *m_resent;
	struct json_arena jarena; /* the capture's jansson values */
};

static void job_free(struct mirror_job *j)
{
	if (!j)
		return;
	config_unref(j->cfg);
	free(j->key);
	free(j->idem);
	free(j->method);
	free(j->path);
	free(j->body);
	free(j->reqid);
	free(j->nojournal);
	for (size_t i = 0; i < j->npinkeys; i++)
		free(j->pinkeys[i]);
	free(j->pinkeys);
	free(j);
}

/*
 * Pin what this write pins until it is delivered (pinset.h): its ordering
 * key and every key of its route's pins. A pin that does not evaluate makes
 * the write blind (every read of the upstream waits for it) unless the
 * write is already dead: a mirror that can never be built pins the keys it
 * has (until purged), never the whole upstream.
 */
static void job_pin(struct server *srv, struct mirror_job *j, const struct expr_ctx *ctx,
		    bool dead)
{
	const struct dw_mirror *mm = j->route->mirror;
	const char *up = j->cfg->upstreams[mm->upstream].name;
	struct dw_err err = { "" };

	if (!srv->pins || (!j->key && !mm->npins))
		return;
	j->pinkeys = dw_calloc(1 + mm->npins, sizeof(char *));
	if (j->key)
		j->pinkeys[j->npinkeys++] = dw_strdup(j->key);
	for (size_t i = 0; i < mm->npins; i++) {
		char *v = NULL;

		if (expr_eval_string(mm->pins[i], ctx, &v, &err) == EXPR_OK)
			j->pinkeys[j->npinkeys++] = v;
		else if (!dead)
			j->blind = true;
	}
	for (size_t i = 0; i < j->npinkeys; i++)
		pinset_add(srv->pins, up, j->pinkeys[i]);
	if (j->blind)
		pinset_blind_add(srv->pins, up, 1);
}

/* The write is settled: give its pins back (delivered, lost), or park them
 * under its seq while it waits in the queue (queued, dead). */
static void job_unpin(struct server *srv, struct mirror_job *j, enum spool_state st, bool lost)
{
	const char *up;

	if (!srv->pins || (!j->npinkeys && !j->blind))
		return;
	up = j->cfg->upstreams[j->route->mirror->upstream].name;
	if (!lost && j->seq && (st == SPOOL_QUEUED || st == SPOOL_DEAD)) {
		pinset_park(srv->pins, j->seq, up, (const char *const *)j->pinkeys, j->npinkeys,
			    j->blind);
		return;
	}
	for (size_t i = 0; i < j->npinkeys; i++)
		pinset_del(srv->pins, up, j->pinkeys[i]);
	if (j->blind)
		pinset_blind_add(srv->pins, up, -1);
}

/* The mirror access log: one line per outcome. */
static void log_outcome(const char *reqid, const char *route, const char *key, const char *idem,
			uint64_t seq, const char *result, int status, uint32_t attempt,
			double latency_ms, const char *why)
{
	enum dw_log_level level = strcmp(result, "lost") == 0	 ? DW_LOG_ERROR
				  : strcmp(result, "dead") == 0 ? DW_LOG_WARN
								: DW_LOG_INFO;
	uint64_t tenths = latency_ms > 0 ? (uint64_t)(latency_ms * 10 + 0.5) : 0;
	char buf[1024];
	struct dw_text l;

	if (!dw_log_enabled(level))
		return;
	dw_text_init(&l, buf, sizeof(buf));
	dw_text_lit(&l, "mirror route=");
	dw_text_str(&l, route);
	dw_text_lit(&l, " key=");
	dw_text_str(&l, key ? key : "-");
	dw_text_lit(&l, " idem=");
	dw_text_str(&l, idem);
	dw_text_lit(&l, " seq=");
	dw_text_u64(&l, seq);
	dw_text_lit(&l, " result=");
	dw_text_str(&l, result);
	dw_text_lit(&l, " status=");
	if (status < 0) {
		dw_text_lit(&l, "-");
		dw_text_u64(&l, (uint64_t)(-(int64_t)status));
	} else {
		dw_text_u64(&l, (uint64_t)status);
	}
	dw_text_lit(&l, " attempt=");
	dw_text_u64(&l, attempt);
	dw_text_lit(&l, " latency_ms=");
	dw_text_u64(&l, tenths / 10);
	dw_text_lit(&l, ".");
	dw_text_u64(&l, tenths % 10);
	if (why) {
		dw_text_lit(&l, " reason=");
		dw_text_str(&l, why);
	}
	dw_log_text(level, reqid, buf, l.n);
}

/* FNV-1a of "upstream\nkey": picks the key's home shard and its chain's
 * bucket there. */
static uint64_t hash_key(const char *upstream, const char *key)
{
	uint64_t h = 1469598103934665603ULL;

	for (const char *p = upstream; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	h = (h ^ '\n') * 1099511628211ULL;
	for (; *key; key++)
		h = (h ^ (unsigned char)*key) * 1099511628211ULL;
	return h;
}

/* ------------------------------------------------- capture (worker side) */

static const char *dead_reason(char *buf, size_t len, const char *fmt, ...) DW_PRINTF(3, 4);
static const char *dead_reason(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return buf;
}

void mirror_capture(struct server *srv, struct mirror *self, const struct mirror_input *in)
{
	const struct dw_mirror *mm = in->mm ? in->mm : in->route->mirror;
	const struct dw_config *cfg = in->cfg;
	struct expr_ctx ctx;
	json_t *req = NULL, *resp = NULL, *body = NULL;
	json_error_t jerr;
	struct dw_err err = {""};
	char idem[64], tenant[65], now[40], why[700];
	const char *dead = NULL, *tv;
	char *path = NULL, *key = NULL, *text = NULL;
	size_t tlen = 0;
	int rc;

	memset(&ctx, 0, sizeof(ctx));
	json_arena_begin(&self->jarena); /* every value below is dropped before the end */
	snprintf(idem, sizeof(idem), "%s-%" PRIx64, srv->instance,
		 __atomic_add_fetch(&srv->idem_counter, 1, __ATOMIC_RELAXED));

	/* A source only the pins use is read when it can be: a pin that cannot
	 * be worked out makes the write blind (job_pin), never dead. */
	if ((mm->sources | mm->pin_sources) & EXPR_SRC_REQUEST) {
		req = jsonfast_loadb(in->req_body ? in->req_body : "", in->req_body_len, &jerr);
		if (!req && (mm->sources & EXPR_SRC_REQUEST))
			dead = dead_reason(why, sizeof(why), "request body is not JSON: %s",
					   in->req_body_len ? jerr.text : "empty body");
	}
	if (!dead && ((mm->sources | mm->pin_sources) & EXPR_SRC_RESPONSE)) {
		bool need = (mm->sources & EXPR_SRC_RESPONSE) != 0;

		if (in->resp_too_large) {
			if (need)
				dead = "response larger than max_body_bytes: $response unavailable";
		} else if (!(resp = jsonfast_loadb(in->resp_body ? in->resp_body : "",
						   in->resp_body_len, &jerr)) &&
			   need) {
			dead = dead_reason(why, sizeof(why), "%s response is not JSON: %s",
					   mm == in->route->mirror ? "legacy" : "new system's",
					   in->resp_body_len ? jerr.text : "empty body");
		}
	}
	/* $tenant: the header when well-formed, the default when absent, and a
	 * malformed value is never guessed. */
	tv = in->header(in->header_arg, cfg->tenant.header, &tlen);
	if (!tv) {
		ctx.tenant = cfg->tenant.def;
	} else if (expr_tenant_valid(tv, tlen)) {
		memcpy(tenant, tv, tlen);
		tenant[tlen] = '\0';
		ctx.tenant = tenant;
	} else if (!dead && (mm->sources & EXPR_SRC_TENANT)) {
		dead = dead_reason(why, sizeof(why), "malformed tenant in %s header",
				   cfg->tenant.header);
	}
	if (mm->sources & EXPR_SRC_NOW)
		dw_rfc3339(dw_wall_us(), now, sizeof(now));
	else
		now[0] = '\0';
	ctx.request = req;
	ctx.response = resp;
	ctx.path_names = in->path_names;
	ctx.path_values = in->path_values;
	ctx.npath = in->npath;
	ctx.query = in->query;
	ctx.query_len = in->query_len;
	ctx.header = in->header;
	ctx.header_arg = in->header_arg;
	ctx.now = now[0] ? now : NULL;

	/* Path and key are worked out even for a write already known to be
	 * dead, so its dead letter says which write it was. */
	if (tmpl_render(mm->path, &ctx, &path, &err) < 0 && !dead)
		dead = dead_reason(why, sizeof(why), "mirror path: %s", err.msg);
	if (mm->key) {
		rc = expr_eval_string(mm->key, &ctx, &key, &err);
		if (rc == EXPR_MISSING && !dead)
			dead = "ordering key is missing from the write";
		else if (rc == EXPR_ERROR && !dead)
			dead = dead_reason(why, sizeof(why), "ordering key: %s", err.msg);
	}
	if (!dead && mm->body) {
		rc = expr_eval(mm->body, &ctx, &body, &err);
		if (rc == EXPR_MISSING)
			dead = "mirror body: its source is missing from the write";
		else if (rc != EXPR_OK)
			dead = dead_reason(why, sizeof(why), "mirror body: %s", err.msg);
		else
			text = jsonfast_dumps(body, NULL);
	}

	struct mirror_job *j = dw_calloc(1, sizeof(*j));
	j->cfg = config_ref(in->cfg);
	j->route = in->route;
	j->mm = mm;
	j->key = key;
	key = NULL;
	j->idem = dw_strdup(idem);
	j->method = dw_strdup(mm->method ? mm->method : in->method);
	j->path = path ? path : dw_strdup("");
	path = NULL;
	j->body = text;
	j->body_len = text ? strlen(text) : 0;
	text = NULL;
	j->reqid = dw_strdup(in->request_id);
	job_pin(srv, j, &ctx, dead != NULL);
	j->created_us = dw_wall_us();
	j->t_ack = dw_now_us();
	if (self->npend == self->cappend) {
		self->cappend = self->cappend ? self->cappend * 2 : 32;
		self->pend = dw_realloc(self->pend, self->cappend * sizeof(*self->pend));
	}
	self->pend[self->npend++] = (struct pending){j, dead ? dw_strdup(dead) : NULL, NULL,
						     in->intent};
	json_decref(req);
	json_decref(resp);
	json_decref(body);
	json_arena_end(&self->jarena);
}

/* ------------------------------------------- the shard (owning worker's loop) */


static const struct dw_upstream *job_upstream(const struct mirror_job *j)
{
	return &j->cfg->upstreams[j->mm->upstream];
}

static struct keyq *keyq_get(struct mirror *mi, const char *upstream, const char *key,
			     bool create)
{
	uint64_t h = hash_key(upstream, key);
	size_t ul = strlen(upstream), b = h % KEY_BUCKETS;
	struct keyq *q;

	for (q = mi->keys[b]; q; q = q->next)
		if (strncmp(q->hkey, upstream, ul) == 0 && q->hkey[ul] == '\n' &&
		    strcmp(q->hkey + ul + 1, key) == 0)
			return q;
	if (!create)
		return NULL;
	q = dw_calloc(1, sizeof(*q));
	if (asprintf(&q->hkey, "%s\n%s", upstream, key) < 0)
		abort();
	q->hash = h;
	TAILQ_INIT(&q->jobs);
	q->next = mi->keys[b];
	mi->keys[b] = q;
	return q;
}

static void keyq_drop(struct mirror *mi, struct keyq *q)
{
	size_t b = q->hash % KEY_BUCKETS;
	struct keyq **pp = &mi->keys[b];

	while (*pp != q)
		pp = &(*pp)->next;
	*pp = q->next;
	free(q->hkey);
	free(q);
}

static struct target *target_find(struct mirror *mi, const char *name)
{
	struct target *t;

	for (t = mi->targets; t && strcmp(t->name, name) != 0; t = t->next)
		;
	return t;
}

static struct target *target_get(struct mirror *mi, const char *name)
{
	struct target *t = target_find(mi, name);

	if (t)
		return t;
	t = dw_calloc(1, sizeof(*t));
	t->name = dw_strdup(name);
	TAILQ_INIT(&t->ready);
	t->cooldown_ms = BREAKER_MIN_MS;
	TAILQ_INIT(&t->lanes);
	char labels[200], esc[128];
	snprintf(labels, sizeof(labels), "upstream=\"%s\"",
		 metrics_label_escape(name, esc, sizeof(esc)));
	t->m_open = metrics_gauge(mi->srv->metrics, "dualwrite_mirror_circuit_open",
				  "Workers whose writes to this mirror upstream go straight to the queue (circuit open).",
				  labels);
	t->next = mi->targets;
	mi->targets = t;
	return t;
}

/* dualwrite_mirror_total for this shard, with handles cached. */
static void mirror_count(struct mirror *mi, const char *route, const char *result)
{
	for (size_t i = 0; i < mi->nseries; i++)
		if (strcmp(mi->series[i].result, result) == 0 &&
		    strcmp(mi->series[i].route, route) == 0) {
			metric_inc(mi->series[i].m);
			return;
		}
	char labels[256], esc[128];
	snprintf(labels, sizeof(labels), "route=\"%s\",result=\"%s\"",
		 metrics_label_escape(route, esc, sizeof(esc)), result);
	struct metric *m = metrics_counter(mi->srv->metrics, "dualwrite_mirror_total",
					   "Mirrored writes by route and outcome.", labels);
	if (mi->nseries < DW_ARRAY_LEN(mi->series)) {
		mi->series[mi->nseries].route = dw_strdup(route);
		mi->series[mi->nseries].result = result;
		mi->series[mi->nseries].m = m;
		mi->nseries++;
	}
	metric_inc(m);
}

/* ------------------------------------------------------ the journal's health */

void journal_health_init(struct server *srv)
{
	struct journal_health *h = &srv->journal;

	pthread_mutex_init(&h->lock, NULL);
	pthread_mutex_init(&h->sync_lock, NULL);
	h->writable = true;
	h->m_writable = metrics_gauge(srv->metrics, "dualwrite_queue_writable",
				      "1 while the journal (replay queue) takes writes; 0 while "
				      "mirrors are sent live without it (see /status).",
				      NULL);
	metric_set(h->m_writable, 1);
}

void journal_health_free(struct server *srv)
{
	pthread_mutex_destroy(&srv->journal.lock);
	pthread_mutex_destroy(&srv->journal.sync_lock);
}

/* n writes were not journaled, or not durably, because of why: the journal
 * is not writable. Logged when that is news. */
static void journal_failed(struct server *srv, const char *why, size_t n)
{
	struct journal_health *h = &srv->journal;

	pthread_mutex_lock(&h->lock);
	snprintf(h->reason, sizeof(h->reason), "%s", why);
	h->unjournaled_total += n;
	if (h->writable) {
		__atomic_store_n(&h->writable, false, __ATOMIC_RELEASE);
		h->since_us = dw_wall_us();
		h->unjournaled = n;
		h->lost = 0;
		h->episodes++;
		metric_set(h->m_writable, 0);
		log_error("queue: journal not writable: %s; %zu writes sent live without journal, "
			  "and so are the next ones until it is writable again",
			  why, n);
	} else {
		h->unjournaled += n;
	}
	pthread_mutex_unlock(&h->lock);
}

/* A write went in (and, in fsync mode, is on disk): the journal is
 * writable. Costs one atomic load when it already was. */
static void journal_ok(struct server *srv)
{
	struct journal_health *h = &srv->journal;

	if (__atomic_load_n(&h->writable, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&h->lock);
	if (!h->writable) {
		__atomic_store_n(&h->writable, true, __ATOMIC_RELEASE);
		metric_set(h->m_writable, 1);
		log_warn("queue: journal writable again after %.1f s and %" PRIu64
			 " writes sent live without journal, %" PRIu64 " lost so far (last error: %s)",
			 (double)(dw_wall_us() - h->since_us) / 1e6, h->unjournaled, h->lost,
			 h->reason);
	}
	pthread_mutex_unlock(&h->lock);
}

static void journal_lost(struct server *srv)
{
	struct journal_health *h = &srv->journal;

	pthread_mutex_lock(&h->lock);
	h->lost++;
	h->lost_total++;
	pthread_mutex_unlock(&h->lock);
}

/*
 * fdatasync what this worker just appended. Every worker shares the
 * segment's file description, so the kernel reports a writeback error to
 * the first fdatasync after it only: another worker's sync failing after
 * our frames were written may have lost them too, and ours then returns 0.
 * sync_failures, read before the append (f0) and compared after the sync
 * under sync_lock, catches that. Returns 0 when everything appended since
 * f0 is known to be durable.
 */
uint64_t journal_sync_mark(struct server *srv)
{
	return __atomic_load_n(&srv->journal.sync_failures, __ATOMIC_ACQUIRE);
}

int journal_sync(struct server *srv, uint64_t f0, struct dw_err *err)
{
	struct journal_health *h = &srv->journal;
	int r = 0;

	pthread_mutex_lock(&h->sync_lock);
	if (spool_sync(srv->spool, err) < 0) {
		__atomic_add_fetch(&h->sync_failures, 1, __ATOMIC_RELEASE);
		r = -1;
	} else if (srv->fsync) {
		metric_inc(srv->m_queue_syncs);
	}
	if (r == 0 && __atomic_load_n(&h->sync_failures, __ATOMIC_ACQUIRE) != f0) {
		dw_err_set(err, "queue: an fdatasync of the journal failed after these writes "
				"were written to it");
		r = -1;
	}
	pthread_mutex_unlock(&h->sync_lock);
	return r;
}

void journal_health_json(struct server *srv, void *obj)
{
	struct journal_health *h = &srv->journal;
	json_t *o = obj;
	char since[40];

	pthread_mutex_lock(&h->lock);
	json_object_set_new(o, "writable", json_boolean(h->writable));
	if (!h->writable) {
		dw_rfc3339(h->since_us, since, sizeof(since));
		json_object_set_new(o, "error", json_string(h->reason));
		json_object_set_new(o, "since", json_string(since));
		json_object_set_new(o, "for_s",
				    json_integer((dw_wall_us() - h->since_us) / 1000000));
		json_object_set_new(o, "writes_without_journal",
				    json_integer((json_int_t)h->unjournaled));
		json_object_set_new(o, "lost", json_integer((json_int_t)h->lost));
	}
	json_object_set_new(o, "writes_without_journal_total",
			    json_integer((json_int_t)h->unjournaled_total));
	json_object_set_new(o, "lost_total", json_integer((json_int_t)h->lost_total));
	json_object_set_new(o, "unwritable_times", json_integer((json_int_t)h->episodes));
	pthread_mutex_unlock(&h->lock);
}

/* Forget the outcomes once they are in the journal (or failed to be). */
static void chg_clear(struct mirror *mi)
{
	for (size_t i = 0; i < mi->nchg; i++)
		free((char *)(uintptr_t)mi->chg[i].error);
	mi->nchg = 0;
	mi->nqhash = 0;
	mi->retained = 0;
}

/* Write the outcomes so far. When none could be written (the journal
 * refuses writes), keep them for the next try, up to RETAIN_MAX. */
static void flush_states(struct mirror *mi)
{
	struct dw_err err = {""};
	bool writable = __atomic_load_n(&mi->srv->journal.writable, __ATOMIC_ACQUIRE);
	int rc;

	if (mi->nchg == 0)
		return;
	/* The batch's access-log lines go out before its journal frames, so a
	 * state anyone can see in the queue always has its log line. */
	fflush(stderr);
	rc = spool_set_states(mi->srv->spool, mi->chg, mi->nchg, &err);
	/* While the journal is known not to be writable, that is logged once
	 * (journal_failed), not once per loop iteration here. */
	if ((rc < 0 || err.msg[0]) && writable)
		log_error("mirror: recording %zu outcomes: %s%s", mi->nchg, err.msg,
			  rc < 0 ? " (kept to be tried again)" : "");
	if (rc < 0 && mi->nchg <= RETAIN_MAX) {
		mi->retained = mi->nchg;
		return;
	}
	if (rc < 0)
		log_warn("mirror: %zu outcomes could not be recorded: %s (their records stay "
			 "pending and are recovered as queued on the next start)",
			 mi->nchg, err.msg);
	chg_clear(mi);
}

/* Whether an outcome kept unwritten queued a write of this key hash. */
static bool retained_queued(const struct mirror *mi, uint64_t h)
{
	if (!mi->retained)
		return false;
	for (size_t i = 0; i < mi->nqhash; i++)
		if (mi->qhash[i] == h)
			return true;
	return false;
}

/* End of a loop iteration's work: requests out, then outcomes journaled. */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mirror *mi = arg;

	(void)fd;
	(void)what;
	xloop_flush(mi->xl);
	flush_states(mi);
}

/* A lane has requests to write (exchange.h): at the end of the iteration. */
static void flush_kick(void *arg)
{
	struct mirror *mi = arg;

	event_active(mi->flush_ev, EV_TIMEOUT, 0);
}

/* Record a job's outcome in the journal, count and log it, free it. A job
 * with no durable journal record that is not delivered is lost. */
static void job_finish(struct mirror *mi, struct mirror_job *j, enum spool_state st, int status,
		       const char *why)
{
	bool lost = j->nojournal && st != SPOOL_DELIVERED;
	const char *result = lost			? "lost"
			     : st == SPOOL_DELIVERED ? "delivered"
			     : st == SPOOL_DEAD	     ? "dead"
						     : "queued";
	double ms = (double)(dw_now_us() - j->t_ack) / 1e3;
	char lwhy[800];

	/* Queued without an attempt (an open breaker, behind a failed write of
	 * its key): not delivered at its first chance, for the guard. */
	if (j->attempts == 0 && st == SPOOL_QUEUED)
		guard_note_mirror(job_upstream(j)->guard, mi->slot, dw_now_us() / 1000, true);

	if (lost) {
		snprintf(lwhy, sizeof(lwhy), "%s; not %s: %s", why ? why : "not delivered",
			 j->seq ? "durably journaled" : "journaled", j->nojournal);
		why = lwhy;
		journal_lost(mi->srv);
	}
	if (j->seq == 0) /* not in the journal: nothing to record there */
		goto counted;
	if (mi->nchg == mi->capchg) {
		mi->capchg = mi->capchg ? mi->capchg * 2 : 64;
		mi->chg = dw_realloc(mi->chg, mi->capchg * sizeof(*mi->chg));
	}
	mi->chg[mi->nchg++] = (struct spool_change){.seq = j->seq, .st = st,
						    .attempts = j->attempts, .status = status,
						    .error = dw_strdup(why)};
	if (st == SPOOL_QUEUED && j->key) {
		if (mi->nqhash == mi->capqhash) {
			mi->capqhash = mi->capqhash ? mi->capqhash * 2 : 64;
			mi->qhash = dw_realloc(mi->qhash, mi->capqhash * sizeof(*mi->qhash));
		}
		mi->qhash[mi->nqhash++] = hash_key(job_upstream(j)->name, j->key);
	}
	if ((mi->nchg == 1 || mi->retained) && mi->flush_ev)
		event_active(mi->flush_ev, EV_TIMEOUT, 0); /* once per iteration */
	else if (mi->nchg - mi->retained >= 512)
		flush_states(mi);
counted:
	job_unpin(mi->srv, j, st, lost);
	mirror_count(mi, j->route->name, result);
	if (st == SPOOL_DELIVERED)
		histogram_observe(mi->h_duration, ms / 1e3);
	log_outcome(j->reqid, j->route->name, j->key, j->idem, j->seq, result, status, j->attempts,
		    ms, why);
	mi->in_memory--;
	metric_add(mi->m_memory, -1);
	job_free(j);
}

static void start_sends(struct mirror *mi, struct target *t);

/* A job whose turn has come: send now or wait for a slot. */
static void job_ready(struct mirror *mi, struct mirror_job *j)
{
	struct target *t = target_get(mi, job_upstream(j)->name);

	TAILQ_INSERT_TAIL(&t->ready, j, link);
	start_sends(mi, t);
}

/* After the head of a key's chain is settled (delivered or dead). */
static void key_advance(struct mirror *mi, struct mirror_job *j)
{
	struct keyq *q = j->kq;
	struct mirror_job *next;

	if (!q)
		return;
	TAILQ_REMOVE(&q->jobs, j, klink);
	j->kq = NULL;
	if ((next = TAILQ_FIRST(&q->jobs)))
		job_ready(mi, next);
	else
		keyq_drop(mi, q);
}

/* A retryable failure: this job and every later one of its key go to the
 * queue, in order, so replay delivers them in order. */
static void key_queue_all(struct mirror *mi, struct mirror_job *j, int status, const char *why)
{
	struct keyq *q = j->kq;
	struct mirror_job *x;
	char behind[96];

	if (!q) {
		job_finish(mi, j, SPOOL_QUEUED, status, why);
		return;
	}
	if (j->seq)
		snprintf(behind, sizeof(behind), "behind queued seq %" PRIu64, j->seq);
	else
		snprintf(behind, sizeof(behind), "behind a write of this key that was not journaled");
	TAILQ_REMOVE(&q->jobs, j, klink);
	job_finish(mi, j, SPOOL_QUEUED, status, why);
	while ((x = TAILQ_FIRST(&q->jobs))) {
		TAILQ_REMOVE(&q->jobs, x, klink);
		job_finish(mi, x, SPOOL_QUEUED, 0, behind);
	}
	keyq_drop(mi, q);
}

/* Shutdown: take a job out of its key chain and queue it. */
static void queue_left(struct mirror *mi, struct mirror_job *j, const char *why)
{
	if (j->kq)
		TAILQ_REMOVE(&j->kq->jobs, j, klink);
	j->kq = NULL;
	job_finish(mi, j, SPOOL_QUEUED, 0, why);
}

/* Feed one send's result to its target's breaker. */
static void breaker_note(struct target *t, bool failed, const char *why)
{
	if (!failed) {
		if (t->open_until)
			log_info("mirror: upstream \"%s\" answers again; circuit closed", t->name);
		t->failures = 0;
		t->open_until = 0;
		t->probing = false;
		t->cooldown_ms = BREAKER_MIN_MS;
		if (t->counted_open)
			metric_add(t->m_open, -1);
		t->counted_open = false;
		return;
	}
	why = why ? why : "failed";
	size_t n = strnlen(why, sizeof(t->last_error) - 1); /* kept short on purpose */
	memcpy(t->last_error, why, n);
	t->last_error[n] = '\0';
	if (t->probing) { /* the probe failed: reopen for longer */
		t->cooldown_ms = t->cooldown_ms * 2 > BREAKER_MAX_MS ? BREAKER_MAX_MS
								      : t->cooldown_ms * 2;
		t->probing = false;
		t->open_until = dw_now_us() + (int64_t)t->cooldown_ms * 1000;
		return;
	}
	if (++t->failures == BREAKER_FAILURES) {
		t->open_until = dw_now_us() + (int64_t)t->cooldown_ms * 1000;
		if (!t->counted_open)
			metric_add(t->m_open, 1);
		t->counted_open = true;
		log_warn("mirror: upstream \"%s\" failed %d times in a row (%s); writes go to the "
			 "queue, next probe in %d ms",
			 t->name, t->failures, t->last_error, t->cooldown_ms);
	}
}

static void send_free(struct send *s)
{
	xchg_cancel(&s->x); /* on a lane only at shutdown; else already off it */
	TAILQ_REMOVE(&s->mi->sends, s, link);
	s->t->inflight--;
	metric_add(s->mi->m_inflight, -1);
	if (s->mi->nsfree < SFREE_MAX) {
		s->next_free = s->mi->sfree;
		s->mi->sfree = s;
		s->mi->nsfree++;
		return;
	}
	free(s);
}

static struct send *send_new(struct mirror *mi)
{
	struct send *s = mi->sfree;

	if (!s)
		return dw_calloc(1, sizeof(*s));
	mi->sfree = s->next_free;
	mi->nsfree--;
	memset(s, 0, offsetof(struct send, x));
	xchg_init(&s->x);
	return s;
}

static void send_start(struct mirror *mi, struct target *t, struct mirror_job *j);

static void send_done(struct send *s, int status, const char *neterr)
{
	struct mirror *mi = s->mi;
	struct mirror_job *j = s->job;
	struct target *t = s->t;
	char why[400], excerpt[XCHG_EXCERPT + 1];
	enum mirror_class k;

	memcpy(excerpt, s->x.excerpt, sizeof(excerpt)); /* s is freed below */
	send_free(s);
	k = neterr ? MIRROR_RETRY : mirrorwire_classify(j->mm, status);
	if (j->attempts == 1) /* the guard counts first attempts (SPEC §7.3) */
		guard_note_mirror(job_upstream(j)->guard, mi->slot, dw_now_us() / 1000,
				  k != MIRROR_DELIVERED);
	breaker_note(t, k == MIRROR_RETRY, neterr ? neterr : excerpt);
	if (neterr) {
		key_queue_all(mi, j, 0, neterr);
	} else {
		if (k == MIRROR_DELIVERED) {
			key_advance(mi, j);
			job_finish(mi, j, SPOOL_DELIVERED, status, NULL);
		} else if (k == MIRROR_PERMANENT) {
			snprintf(why, sizeof(why), "HTTP %d: %s", status, excerpt);
			key_advance(mi, j);
			job_finish(mi, j, SPOOL_DEAD, status, why);
		} else {
			snprintf(why, sizeof(why), "HTTP %d: %s", status, excerpt);
			key_queue_all(mi, j, status, why);
		}
	}
	start_sends(mi, t);
}

/* The exchange of a send ended (exchange.h). */
static void send_ended(struct xchg *x, enum xchg_end how, const char *why)
{
	struct send *s = (struct send *)((char *)x - offsetof(struct send, x));
	struct mirror *mi = s->mi;
	struct target *t = s->t;
	struct mirror_job *j;

	switch (how) {
	case XCHG_ANSWERED:
		t->latency_ms = t->latency_ms * 0.8 + (double)(dw_now_us() - s->t_start) / 1e3 * 0.2;
		if (t->answered < PIPE_WARMUP)
			t->answered++;
		send_done(s, x->status, NULL);
		return;
	case XCHG_NOT_TAKEN:
		/* Not answered, may go again: at once, with the same
		 * Idempotency-Key (G4), before newer jobs. */
		j = s->job;
		metric_inc(mi->m_resent);
		send_free(s);
		send_start(mi, t, j);
		return;
	case XCHG_TIMED_OUT:
		t->latency_ms = t->latency_ms * 0.8 + job_upstream(s->job)->timeout_ms * 0.2;
		break;
	default:
		break;
	}
	send_done(s, 0, why);
}

/* A lane (an xconn carrying sends to t) ended. */
static void lane_gone(struct xconn *c)
{
	struct target *t = c->owner;

	TAILQ_REMOVE(&t->lanes, c, olink);
	t->nlanes--;
}

/* The request of a send (exchange.h's write): mirrorwire, as replay sends it. */
static void send_write(struct xchg *x, struct evbuffer *out)
{
	const struct mirror_job *j = ((struct send *)((char *)x - offsetof(struct send, x)))->job;
	const struct mirrorwire_req r = {.method = j->method, .path = j->path, .idem_key = j->idem,
					 .route = j->route->name, .request_id = j->reqid,
					 .body = j->body, .body_len = j->body_len};

	mirrorwire_write(out, job_upstream(j), &r);
}

/* The lane for a new send to target t: fill the current lane while the
 * target is fast, else a connection of its own. NULL when no connection
 * can even be started (xloop_failure says why). */
static struct xconn *lane_pick(struct mirror *mi, struct target *t, struct mirror_job *j)
{
	const struct dw_upstream *up = job_upstream(j);
	int depth = t->answered >= PIPE_WARMUP && t->latency_ms < PIPE_MAX_LATENCY_MS
			? up->pipeline_depth
			: 1;
	struct xconn *l, *best = NULL;

	TAILQ_FOREACH(l, &t->lanes, olink)
		if (xconn_open_for_more(l) && l->depth < depth &&
		    (!best || l->depth > best->depth) && strcmp(l->up->url, up->url) == 0)
			best = l;
	if (best)
		return best;
	l = xconn_open(mi->xl, j->cfg, up, lane_gone, t);
	if (!l)
		return NULL;
	TAILQ_INSERT_TAIL(&t->lanes, l, olink);
	t->nlanes++;
	return l;
}

static void send_start(struct mirror *mi, struct target *t, struct mirror_job *j)
{
	struct send *s = send_new(mi);
	struct xconn *l;

	s->mi = mi;
	s->job = j;
	s->t = t;
	s->t_start = dw_now_us();
	s->x.method = http_method_from(j->method, strlen(j->method));
	s->x.keep = XBODY_EXCERPT;
	/* Pipelined behind one that broke, it goes again (its Idempotency-Key
	 * makes a second copy harmless, G4). The one being answered when a
	 * connection breaks fails, reused or not: it is queued with the same
	 * key, and a target that resets should open the breaker, not get each
	 * write twice. */
	s->x.resend_ok = false;
	s->x.write = send_write;
	s->x.done = send_ended;
	j->attempts++;
	t->inflight++;
	metric_inc(mi->m_inflight);
	TAILQ_INSERT_TAIL(&mi->sends, s, link);
	l = lane_pick(mi, t, j);
	if (!l) {
		send_done(s, 0, xloop_failure(mi->xl));
		return;
	}
	xconn_send(l, &s->x);
}
/* Open, or half-open with the probe out: a write whose turn comes is queued. */
static bool breaker_open(const struct target *t)
{
	return t->open_until && (t->probing || dw_now_us() < t->open_until);
}

static const char *breaker_reason(const struct target *t, char *buf, size_t len)
{
	snprintf(buf, len, "circuit open for upstream \"%s\": %s", t->name, t->last_error);
	return buf;
}

static void start_sends(struct mirror *mi, struct target *t)
{
	struct mirror_job *j;
	char why[300];

	while ((j = TAILQ_FIRST(&t->ready)) && t->inflight < job_upstream(j)->max_inflight) {
		TAILQ_REMOVE(&t->ready, j, link);
		if (breaker_open(t)) {
			key_queue_all(mi, j, 0, breaker_reason(t, why, sizeof(why)));
			continue;
		}
		if (t->open_until)
			t->probing = true; /* cooldown over: this send is the probe */
		send_start(mi, t, j);
	}
}

/* A journaled job arrives in its home shard. */
static void job_arrive(struct mirror *mi, struct mirror_job *j)
{
	const struct dw_upstream *up = job_upstream(j);

	mi->in_memory++;
	metric_inc(mi->m_memory);
	if (j->key) {
		struct keyq *q = keyq_get(mi, up->name, j->key, false);
		if (q) { /* an earlier write of this key is in flight or waiting */
			j->kq = q;
			TAILQ_INSERT_TAIL(&q->jobs, j, klink);
			return;
		}
		if (spool_key_queued(mi->srv->spool, up->name, j->key) ||
		    retained_queued(mi, hash_key(up->name, j->key))) {
			job_finish(mi, j, SPOOL_QUEUED, 0, "key has earlier writes in the queue");
			return;
		}
		/* pgforward wiring: or queued rows in the shared PostgreSQL queue */
		if (mi->srv->pgfwd && pgforward_key_queued(mi->srv->pgfwd, up->name, j->key)) {
			job_finish(mi, j, SPOOL_QUEUED, 0, PGFORWARD_BEHIND);
			return;
		}
	}
	if (mi->in_memory > MAX_IN_MEMORY) {
		job_finish(mi, j, SPOOL_QUEUED, 0, "mirror backlog full");
		return;
	}
	if (j->key) {
		j->kq = keyq_get(mi, up->name, j->key, true);
		TAILQ_INSERT_TAIL(&j->kq->jobs, j, klink);
	}
	job_ready(mi, j);
}

static void inbox_cb(struct mirror *mi)
{
	struct job_list batch;
	struct mirror_job *j;

	flush_states(mi); /* so spool_key_queued sees every key queued so far */
	TAILQ_INIT(&batch);
	pthread_mutex_lock(&mi->lock);
	TAILQ_CONCAT(&batch, &mi->inbox, link);
	pthread_mutex_unlock(&mi->lock);
	while ((j = TAILQ_FIRST(&batch))) {
		TAILQ_REMOVE(&batch, j, link);
		job_arrive(mi, j);
	}
}

void mirror_submit(struct mirror *mi, struct mirror *from, struct mirror_job *job)
{
	bool wake;

	if (mi == from) { /* the key's home is this worker: no hand-off */
		if (mi->closed) { /* only set once this loop has ended (mirror_free) */
			mi->in_memory++;
			metric_inc(mi->m_memory);
			queue_left(mi, job, "daemon stopped before the mirror was sent");
			return;
		}
		if (job->key && mi->nqhash) { /* see inbox_cb; only when it matters */
			uint64_t h = hash_key(job_upstream(job)->name, job->key);
			for (size_t i = 0; i < mi->nqhash; i++)
				if (mi->qhash[i] == h) {
					flush_states(mi);
					break;
				}
		}
		job_arrive(mi, job);
		return;
	}
	pthread_mutex_lock(&mi->lock);
	if (mi->closed) {
		pthread_mutex_unlock(&mi->lock);
		if (from && job->nojournal) { /* and it is in no journal: lost */
			from->in_memory++;
			metric_inc(from->m_memory);
			job_finish(from, job, SPOOL_QUEUED, 0, "daemon stopped before the mirror was sent");
			return;
		}
		/* Too late to send: it stays PENDING in the journal and is
		 * recovered as queued on the next start. */
		log_warn("mirror seq=%" PRIu64 " left pending at shutdown", job->seq);
		job_free(job);
		return;
	}
	wake = TAILQ_EMPTY(&mi->inbox);
	TAILQ_INSERT_TAIL(&mi->inbox, job, link);
	pthread_mutex_unlock(&mi->lock);
	if (wake)
		wake_post(&mi->wake, WAKE_INBOX);
}

/* The shard that sends job j: its key's home, or the capturing one. */
static struct mirror *job_home(struct mirror *self, const struct mirror_job *j)
{
	struct server *srv = self->srv;

	return j->key ? srv->mirrors[hash_key(job_upstream(j)->name, j->key) % srv->nmirrors]
		      : self;
}

/*
 * The target whose open breaker queues job j as soon as it is journaled, or
 * NULL: when this shard is j's home, the breaker is open here (any send would
 * be queued the moment its turn came), and no earlier write of its key waits
 * in this shard (those go first: G3). A target that is down or hanging then
 * costs a write no trip through the shard.
 */
static struct target *queue_at_once(struct mirror *self, const struct mirror_job *j)
{
	const struct dw_upstream *up = job_upstream(j);
	struct target *t;

	if (self->srv->pgfwd || job_home(self, j) != self)
		return NULL;
	t = target_find(self, up->name);
	if (!t || !breaker_open(t))
		return NULL;
	if (j->key && keyq_get(self, up->name, j->key, false))
		return NULL;
	return t;
}

/* Journal what this worker captured since the last call, with one write,
 * then hand each write to its key's home shard. Called before any of the
 * answers of those writes is released (G2). */

uint64_t mirror_intent(struct mirror *self, const char *route, const char *upstream,
		       const char *method, const char *target, size_t target_len,
		       const char *request_id, const char *key)
{
	struct sf_intent in = {
		.id = spool_intent_id(self->srv->spool), .t_us = dw_wall_us(), .route = route,
		.upstream = upstream, .method = method, .target = target,
		.request_id = request_id, .key = key, .target_len = target_len,
	};

	sf_put_intent(&self->iframes, &in);
	return in.id;
}

void mirror_intent_close(struct mirror *self, uint64_t id)
{
	if (id)
		sf_put_close(&self->cframes, id);
}

bool mirror_waiting(const struct mirror *self)
{
	return self->npend || self->iframes.len || self->cframes.len;
}

/* Journal the intents and closes alone (no record this time). Not
 * fdatasync'd: see daemon/DESIGN.md, "Write-ahead intents". A failure is
 * the journal's (logged once per episode); the writes go out all the same. */
static void intents_flush(struct mirror *self)
{
	struct spool_group g = {.intents = self->iframes.p, .intents_len = self->iframes.len,
				.closes = self->cframes.p, .closes_len = self->cframes.len};
	struct dw_err err = {""};
	bool in = false;

	(void)spool_append_group(self->srv->spool, &g, &in, &err);
	if (!in)
		journal_failed(self->srv, err.msg, 0);
	self->iframes.len = self->cframes.len = 0;
}

void mirror_commit(struct mirror *self)
{
	struct server *srv = self->srv;
	struct spool_record *recs;
	struct dw_err err = {""}, serr = {""};
	size_t n = self->npend, k, nchg;
	char why[300];
	const char *unsynced = NULL;
	uint64_t f0;
	bool iin = false;

	if (n == 0) {
		if (self->iframes.len || self->cframes.len)
			intents_flush(self);
		return;
	}
	self->npend = 0;
	recs = dw_calloc(n, sizeof(*recs));
	for (size_t i = 0; i < n; i++) {
		struct mirror_job *j = self->pend[i].job;
		struct spool_record *r = &recs[i];

		r->state = SPOOL_PENDING;
		self->pend[i].open = self->pend[i].dead ? NULL : queue_at_once(self, j);
		r->route = j->route->name;
		r->upstream = job_upstream(j)->name;
		r->key = j->key;
		r->idem_key = j->idem;
		/* Never built: no method, so no replay can send it (spool.h). */
		r->method = self->pend[i].dead ? NULL : j->method;
		r->path = j->path;
		r->content_type = j->body ? (char *)"application/json" : NULL;
		r->body = j->body;
		r->body_len = j->body_len;
		r->request_id = j->reqid;
		r->created_us = j->created_us;
		r->updated_us = j->created_us;
		mirror_intent_close(self, self->pend[i].intent);
	}
	/* The outcomes settled so far in this iteration share the write; their
	 * access-log lines go out first (see flush_states). */
	if (self->nchg)
		fflush(stderr);
	if (self->retained)
		flush_states(self); /* the kept outcomes first, on their own */
	nchg = self->retained ? 0 : self->nchg; /* still refused: not again */
	f0 = journal_sync_mark(srv);
	struct spool_group g = {.recs = recs, .n = n, .chg = self->chg, .nchg = nchg,
				.intents = self->iframes.p, .intents_len = self->iframes.len,
				.closes = self->cframes.p, .closes_len = self->cframes.len};
	k = spool_append_group(srv->spool, &g, &iin, &err);
	self->iframes.len = self->cframes.len = 0;
	if (k < n)
		journal_failed(srv, err.msg, n - k);
	else if (err.msg[0])
		log_error("mirror: journal: %s", err.msg);
	/* With no record in, the outcomes may be in (a full queue refuses only
	 * records) or not (I/O error): writing them again settles it, as final
	 * ones are skipped, and keeps them if they are still refused. */
	if (nchg && k == 0)
		flush_states(self);
	else if (nchg)
		chg_clear(self);
	/* G2 in fsync mode: a failed fdatasync is no acknowledgement. */
	if (k && srv->fsync && journal_sync(srv, f0, &serr) < 0) {
		unsynced = serr.msg;
		journal_failed(srv, serr.msg, k);
	}
	if (k == n && !unsynced)
		journal_ok(srv);
	for (size_t i = 0; i < n; i++) {
		struct mirror_job *j = self->pend[i].job;
		char *dead = self->pend[i].dead;
		struct target *open = self->pend[i].open;

		j->seq = i < k ? recs[i].seq : 0;
		if (i >= k)
			j->nojournal = dw_strdup(err.msg); /* sent live all the same */
		else if (unsynced)
			j->nojournal = dw_strdup(unsynced);
		if (dead || open) {
			self->in_memory++; /* job_finish counts it out */
			metric_inc(self->m_memory);
			if (dead)
				job_finish(self, j, SPOOL_DEAD, 0, dead);
			else
				job_finish(self, j, SPOOL_QUEUED, 0,
					   breaker_reason(open, why, sizeof(why)));
		} else {
			mirror_submit(job_home(self, j), self, j);
		}
		free(dead);
	}
	free(recs);
}

static void wake_cb(void *arg, unsigned bits)
{
	if (bits & WAKE_INBOX)
		inbox_cb(arg);
}

struct mirror *mirror_new(struct server *srv, int id, struct event_base *base,
			  struct dw_err *err)
{
	struct mirror *mi = dw_calloc(1, sizeof(*mi));

	mi->srv = srv;
	mi->slot = (unsigned)id;
	mi->base = base;
	mi->pools = pool_set_new(mi->base, srv->metrics, srv->resolver);
	pthread_mutex_init(&mi->lock, NULL);
	TAILQ_INIT(&mi->inbox);
	TAILQ_INIT(&mi->sends);
	if (wake_init(&mi->wake, mi->base, wake_cb, mi, err) < 0) {
		pool_set_free(mi->pools);
		pthread_mutex_destroy(&mi->lock);
		free(mi);
		return NULL;
	}
	mi->flush_ev = event_new(mi->base, -1, 0, flush_cb, mi);
	mi->xl = xloop_new(mi->base, mi->pools, flush_kick, mi);
	mi->h_duration = metrics_histogram(srv->metrics, "dualwrite_mirror_duration_seconds",
					   "From legacy acknowledgement to delivery on the new system.",
					   NULL, metrics_latency_bounds, metrics_latency_nbounds);
	mi->m_inflight = metrics_gauge(srv->metrics, "dualwrite_mirror_inflight",
				       "Mirror requests on the wire.", NULL);
	mi->m_memory = metrics_gauge(srv->metrics, "dualwrite_mirror_backlog",
				     "Mirrored writes held in memory (in flight or waiting).", NULL);
	mi->m_resent = metrics_counter(
	    srv->metrics, "dualwrite_mirror_resent_total",
	    "Mirror requests sent again because the connection they were pipelined on broke.",
	    NULL);
	return mi;
}

bool mirror_busy(struct mirror *mi)
{
	bool inbox;

	pthread_mutex_lock(&mi->lock);
	inbox = !TAILQ_EMPTY(&mi->inbox);
	pthread_mutex_unlock(&mi->lock);
	return inbox || mi->in_memory > 0;
}

void mirror_close(struct mirror *mi)
{
	pthread_mutex_lock(&mi->lock);
	mi->closed = true;
	pthread_mutex_unlock(&mi->lock);
}

void mirror_free(struct mirror *mi)
{
	struct mirror_job *j;
	struct send *s;

	if (!mi)
		return;
	mirror_close(mi);
	/* Whatever did not finish in time goes to the queue. The order of these
	 * state changes does not matter: replay sends each key's records in
	 * journal order. */
	while ((s = TAILQ_FIRST(&mi->sends))) {
		/* The analyzer loses TAILQ_REMOVE's relinking inside send_free. */
		j = s->job; /* NOLINT(clang-analyzer-unix.Malloc) */
		send_free(s);
		queue_left(mi, j, "daemon stopped before the mirror finished");
	}
	for (struct target *t = mi->targets, *tn; t; t = tn) {
		struct xconn *l;
		tn = t->next;
		while ((l = TAILQ_FIRST(&t->lanes))) { /* sends are gone: see above */
			TAILQ_REMOVE(&t->lanes, l, olink);
			xconn_free(l);
		}
		while ((j = TAILQ_FIRST(&t->ready))) {
			TAILQ_REMOVE(&t->ready, j, link);
			queue_left(mi, j, "daemon stopped before the mirror was sent");
		}
		if (t->counted_open)
			metric_add(t->m_open, -1);
		free(t->name);
		free(t);
	}
	for (size_t b = 0; b < KEY_BUCKETS; b++) {
		struct keyq *q;
		while ((q = mi->keys[b])) {
			while ((j = TAILQ_FIRST(&q->jobs))) /* see above */
				queue_left(mi, j, /* NOLINT(clang-analyzer-unix.Malloc) */
					   "daemon stopped before the mirror was sent");
			keyq_drop(mi, q);
		}
	}
	/* Handed over by other workers after this one's loop ended. */
	while ((j = TAILQ_FIRST(&mi->inbox))) {
		TAILQ_REMOVE(&mi->inbox, j, link);
		mi->in_memory++;
		metric_inc(mi->m_memory);
		queue_left(mi, j, "daemon stopped before the mirror was sent");
	}
	mirror_commit(mi); /* captured in the loop's last moments, with the outcomes */
	flush_states(mi);  /* the outcomes, when nothing was captured */
	if (mi->retained)
		log_warn("mirror: %zu outcomes could not be recorded before the stop (their "
			 "records stay pending and are recovered as queued on the next start)",
			 mi->retained);
	chg_clear(mi);
	while ((s = mi->sfree)) {
		mi->sfree = s->next_free;
		free(s);
	}
	json_arena_free(&mi->jarena);
	free(mi->iframes.p);
	free(mi->cframes.p);
	free(mi->pend);
	free(mi->qhash);
	free(mi->chg);
	for (size_t i = 0; i < mi->nseries; i++)
		free(mi->series[i].route);
	event_free(mi->flush_ev);
	xloop_free(mi->xl);
	wake_free(&mi->wake);
	pool_set_free(mi->pools);
	pthread_mutex_destroy(&mi->lock);
	free(mi);
}

void mirror_status_json(struct mirror *mi, void *obj)
{
	json_t *o = obj;

	json_object_set_new(o, "backlog", json_integer((json_int_t)metric_value(mi->m_memory)));
	json_object_set_new(o, "inflight", json_integer((json_int_t)metric_value(mi->m_inflight)));
}
