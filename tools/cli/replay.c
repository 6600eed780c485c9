/*
 * replay.c — `dualwrite replay`: drain the replay queue into the mirror
 * targets.
 *
 * One consumer per queue (the REPLAY lock). Each pass asks the spool for the
 * records that may go now — per key only the oldest waiting one (G3), every
 * unkeyed one — and sends each with its original Idempotency-Key (G4), the
 * request the daemon sent live (lib/mirrorwire), as buffered exchanges on
 * the daemon's pools (lib/exchange.h) in an event loop of its own: up to
 * --concurrency sends per upstream at a time, as one key has at most one
 * record in a pass, its order holds. The
 * answer is classified with the route's mirror table: delivered -> DELIVERED;
 * permanent -> DEAD with the reason; retryable or a network error -> attempts
 * + 1 and an exponential, jittered back-off for that record (hence its key)
 * while other keys go on; after --max-attempts it is dead-lettered. Nothing
 * is lost on a crash: a record is only marked delivered after the 2xx, so the
 * worst case is one more send of the same write, which the key makes a no-op.
 *
 * With queue.postgres the queue is two places: this host's spool and the
 * table a fleet of sidecars shares (lib/pgq.h). Then, when PostgreSQL can be
 * reached, the local records go into the table first (unless a running
 * daemon owns the spool: its forwarder does that) and the table is drained
 * by claiming ready rows with FOR UPDATE SKIP LOCKED, so any number of
 * replays on any hosts share the work, each row delivered once and each key
 * in order; the back-off of a row lives in the row (next_attempt_at), seen by
 * every worker. When PostgreSQL cannot be reached the local spool is drained
 * directly, except keys the daemon queued behind rows in the table, which
 * are held until it is back. Done means: no local record waiting and no
 * 'queued' row of a configured upstream left in the table (rows still backing
 * off count as left; without --once the run waits for them).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "cli.h"
#include "exchange.h"
#include "metrics.h"
#include "mirrorwire.h"
#include "pool.h"
#include "resolver.h"
#include "pgq.h"
#include "spool.h"

#define BATCH 4096
#define BACKOFF_BASE_US 200000
#define BACKOFF_CAP_US 30000000
#define PG_BATCH 64
#define LOCAL_STALL_US 10000000 /* how long to wait for a daemon's forwarder */

struct backoff {
	uint64_t seq;
	int64_t not_before; /* monotonic us */
	unsigned fails;	    /* failures in this run */
};

struct replay {
	struct dw_config *cfg;
	struct spool *sp;
	unsigned max_attempts;
	int concurrency; /* sends in flight per upstream */
	double rate;
	bool dry_run, once, tty;
	int timeout_ms;

	struct backoff *bo;
	size_t nbo, capbo;
	uint64_t rng;

	uint64_t delivered, dead, sent, total, forwarded, held;
	int64_t start_us, last_send_us, last_progress_us;

	/* queue.postgres */
	struct pgq *pg;		  /* NULL: not configured or unreachable */
	bool pg_configured;
	bool local_direct;	  /* deliver local records over HTTP (no usable PostgreSQL) */
	bool local_forward;	  /* move local records into the table ourselves */
	bool local_daemon;	  /* a running daemon's forwarder moves them */
	const char **ups;	  /* configured upstream names */
	size_t nups;
	char sidecar[300];
	int64_t pg_left;	  /* queued rows of configured upstreams, last count */

	/* the sends: one event loop, its pools and exchanges (lib/exchange.h) */
	struct event_base *base;
	struct metrics *metrics; /* the pools' counters: not shown anywhere */
	struct resolver *res;
	struct pool_set *pools;
	struct xloop *xl;
	struct dw_upstream *sendto; /* cfg's upstreams, with --timeout-ms applied */
	struct batch *batch;	    /* the one being sent */
};

static void replay_usage(FILE *f)
{
	fprintf(f,
		"usage: dualwrite replay -c FILE [--once] [--max-attempts N] [--rate N] [--dry-run]\n"
		"                        [--timeout-ms N] [--concurrency N]\n"
		"\n"
		"Send the writes waiting in the replay queue to their mirror targets, oldest\n"
		"first and in order per key, with their original Idempotency-Key.\n"
		"\n"
		"With queue.postgres set, this host's spool is moved into the shared table\n"
		"first and the table is drained; any number of replays on any hosts may run at\n"
		"once (each row is delivered by one of them, each key in order). If PostgreSQL\n"
		"cannot be reached, only the local spool is drained (keys queued behind rows in\n"
		"PostgreSQL are held).\n"
		"\n"
		"  -c, --config FILE     the dualwrited configuration\n"
		"      --once            one pass over what can be sent now (no waiting on\n"
		"                        back-off); for timers\n"
		"      --max-attempts N  dead-letter a write after N failed attempts (default 10)\n"
		"      --rate N          at most N sends per second (default 0: unlimited)\n"
		"      --concurrency N   at most N sends in flight per upstream (default 16,\n"
		"                        at most the upstream's max_inflight); each key's\n"
		"                        writes still go one at a time, in order\n"
		"      --dry-run         list what would be sent; send and change nothing\n"
		"      --timeout-ms N    response timeout per send (default: the upstream's)\n"
		"  -h, --help            this text\n"
		"\n"
		"Exit status: 0 when nothing is left waiting (locally and, when configured, as\n"
		"'queued' rows of configured upstreams in PostgreSQL), 1 when records remain or\n"
		"on a runtime failure, 2 on a usage or configuration error.\n");
}

static uint64_t rng_next(struct replay *r)
{
	r->rng ^= r->rng << 13;
	r->rng ^= r->rng >> 7;
	r->rng ^= r->rng << 17;
	return r->rng;
}

static struct backoff *bo_find(struct replay *r, uint64_t seq)
{
	for (size_t i = 0; i < r->nbo; i++)
		if (r->bo[i].seq == seq)
			return &r->bo[i];
	return NULL;
}

static void bo_forget(struct replay *r, uint64_t seq)
{
	struct backoff *b = bo_find(r, seq);

	if (b)
		*b = r->bo[--r->nbo];
}

/* Exponential back-off (200 ms * 2^n, capped at 30 s) with +-25 % jitter, so
 * many keys failing together do not retry in lockstep. */
static void bo_fail(struct replay *r, uint64_t seq)
{
	struct backoff *b = bo_find(r, seq);
	int64_t d;

	if (!b) {
		if (r->nbo == r->capbo) {
			r->capbo = r->capbo ? r->capbo * 2 : 64;
			r->bo = dw_realloc(r->bo, r->capbo * sizeof(*r->bo));
		}
		b = &r->bo[r->nbo++];
		memset(b, 0, sizeof(*b));
		b->seq = seq;
	}
	d = BACKOFF_BASE_US;
	for (unsigned i = 0; i < b->fails && d < BACKOFF_CAP_US; i++)
		d *= 2;
	if (d > BACKOFF_CAP_US)
		d = BACKOFF_CAP_US;
	d = d * 3 / 4 + (int64_t)(rng_next(r) % (uint64_t)(d / 2 + 1));
	b->fails++;
	b->not_before = dw_now_us() + d;
}

static void sleep_us(int64_t us)
{
	struct timespec ts;

	if (us <= 0)
		return;
	ts.tv_sec = us / 1000000;
	ts.tv_nsec = (us % 1000000) * 1000;
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static const struct dw_route *find_route(const struct dw_config *cfg, const char *name)
{
	for (size_t i = 0; name && i < cfg->nroutes; i++)
		if (!strcmp(cfg->routes[i].name, name))
			return &cfg->routes[i];
	return NULL;
}

static void clear_progress(struct replay *r)
{
	if (r->tty)
		fprintf(stderr, "\r\033[K");
}

static void progress(struct replay *r, bool force)
{
	int64_t now = dw_now_us();
	uint64_t done = r->delivered + r->dead;
	double secs = (now - r->start_us) / 1e6, rate = secs > 0 ? done / secs : 0;

	if (!r->tty || (!force && now - r->last_progress_us < 200000))
		return;
	r->last_progress_us = now;
	if (done > r->total)
		r->total = done;
	if (rate > 0) {
		uint64_t eta = (uint64_t)((double)(r->total - done) / rate);
		fprintf(stderr, "\r\033[K replay: %" PRIu64 "/%" PRIu64 "  rate %.1f r/s  ETA %02" PRIu64
				":%02" PRIu64,
			done, r->total, rate, eta / 60, eta % 60);
	} else {
		fprintf(stderr, "\r\033[K replay: %" PRIu64 "/%" PRIu64 "  rate - r/s  ETA --:--",
			done, r->total);
	}
}

static void outcome(struct replay *r, const char *where, const struct spool_record *rec,
		    const char *what, int status, const char *detail, int64_t latency_us)
{
	char st[16];

	if (status)
		snprintf(st, sizeof(st), "%d", status);
	else
		snprintf(st, sizeof(st), "-");
	clear_progress(r);
	fprintf(stderr,
		"replay: %s%" PRIu64 " route=%s key=%s idem=%s status=%s attempt=%u %s "
		"%.1fms%s%s\n",
		where, rec->seq, rec->route ? rec->route : "-", rec->key ? rec->key : "-",
		rec->idem_key ? rec->idem_key : "-", st, rec->attempts + 1, what,
		latency_us / 1000.0, detail ? ": " : "", detail ? detail : "");
}

/* What one delivery attempt came to. */
struct result {
	enum mirror_class k;
	int status;
	uint32_t attempts; /* including this one */
	bool give_up;	   /* retryable, but --max-attempts is reached: dead */
	char reason[700];  /* dead: why; retry: the last error */
	int64_t lat;
};

enum { DELIVER_SENT = 0, DELIVER_UNKNOWN_UPSTREAM = 1, DELIVER_DRY = 2, DELIVER_UNBUILT = 3 };

#define UNBUILT_REASON "nothing to send: the mirror was never built"

/*
 * One send of a record: the owner of a buffered exchange (lib/exchange.h)
 * on the replay's own event loop and pools. A batch of them (one per key at
 * most: spool_ready and the PostgreSQL claim give each key's oldest record
 * only, so sending them together keeps each key's order, G3) goes out with
 * at most `concurrency` sends per upstream at a time (and --rate between
 * starts); each outcome is recorded as it comes.
 */
struct attempt {
	struct replay *r;
	const char *where;
	struct spool_record *rec; /* the batch's */
	const struct dw_route *rt;
	int ui;
	struct evbuffer *wire;
	struct result res;
	int64_t t0;
	bool started;
	struct xchg x; /* last: its head is 3 KiB */
};

/* How a batch's outcomes are recorded (local spool or PostgreSQL): 0, or -1
 * with the error printed (the batch then starts nothing more). */
typedef int (*settle_fn)(struct replay *r, struct attempt *a);

struct batch {
	struct attempt **a;
	size_t n, next, started, ended; /* next: the first not started */
	int *inflight; /* per upstream index */
	settle_fn settle;
	bool failed;
	struct event *rate_ev;
};

/* Check rec and build its request into a (DELIVER_SENT), or say why it is
 * not sent: the same for a local record and a PostgreSQL row. */
static int prepare(struct replay *r, const char *where, struct spool_record *rec,
		   struct attempt *a)
{
	const struct dw_upstream *up;
	char *path = NULL;
	int ui;

	memset(a, 0, offsetof(struct attempt, x));
	xchg_init(&a->x);
	a->r = r;
	a->where = where;
	a->rec = rec;
	/* Never send what was never built (a bodiless default request would be
	 * counted delivered): dead, whatever state it arrived in. */
	if (!rec->method) {
		a->res.k = MIRROR_PERMANENT;
		snprintf(a->res.reason, sizeof(a->res.reason), UNBUILT_REASON " (was: %s)",
			 rec->last_error ? rec->last_error : "unknown");
		if (r->dry_run) {
			printf("would dead-letter %s%" PRIu64 ": %s\n", where, rec->seq,
			       a->res.reason);
			return DELIVER_DRY;
		}
		return DELIVER_UNBUILT;
	}
	ui = config_upstream_index(r->cfg, rec->upstream);
	if (ui < 0)
		return DELIVER_UNKNOWN_UPSTREAM;
	up = &r->cfg->upstreams[ui];
	if (r->dry_run) {
		if (asprintf(&path, "%s%s", up->base_path ? up->base_path : "",
			     rec->path ? rec->path : "/") < 0)
			abort();
		printf("would send %s%" PRIu64 " %s %s://%s%s key=%s idem=%s attempt=%u%s\n", where,
		       rec->seq, rec->method, up->tls ? "https" : "http", up->host_header, path,
		       rec->key ? rec->key : "-", rec->idem_key ? rec->idem_key : "-",
		       rec->attempts + 1, rec->body ? "" : " (no body)");
		free(path);
		return DELIVER_DRY;
	}
	a->ui = ui;
	a->rt = find_route(r->cfg, rec->route);
	/* The same request as the daemon's live send (mirrorwire), marked
	 * as a replay with its attempt number. */
	const struct mirrorwire_req mw = {
		.method = rec->method, .path = rec->path, .idem_key = rec->idem_key,
		.route = rec->route, .request_id = rec->request_id,
		.content_type = rec->content_type, .body = rec->body, .body_len = rec->body_len,
		.replay_attempt = rec->attempts + 1,
	};
	a->wire = evbuffer_new();
	mirrorwire_write(a->wire, up, &mw);
	return DELIVER_SENT;
}

/* The answer (status > 0) or the failure (why) of a's send, classified with
 * its route's table (the defaults when the route is gone). */
static void judge(struct attempt *a, int status, const char *excerpt, const char *why)
{
	struct replay *r = a->r;
	struct result *res = &a->res;

	res->lat = dw_now_us() - a->t0;
	res->attempts = a->rec->attempts + 1;
	res->status = status;
	res->k = status ? mirrorwire_classify(mirrorwire_block(a->rt, a->ui), status)
			: MIRROR_RETRY;
	if (res->k == MIRROR_PERMANENT) {
		snprintf(res->reason, sizeof(res->reason), "HTTP %d: %s", status,
			 excerpt ? excerpt : "");
		for (size_t l = strlen(res->reason); l && res->reason[l - 1] == ' ';)
			res->reason[--l] = '\0';
	} else if (res->k == MIRROR_RETRY) {
		char last[400];
		if (!status)
			snprintf(last, sizeof(last), "%s", why ? why : "failed");
		else
			snprintf(last, sizeof(last), "HTTP %d", status);
		if (res->attempts >= r->max_attempts) {
			res->give_up = true;
			snprintf(res->reason, sizeof(res->reason), "gave up after %u attempts: %s",
				 res->attempts, last);
		} else {
			snprintf(res->reason, sizeof(res->reason), "%s", last);
		}
	}
}

static void batch_more(struct replay *r);

/* Every send started has ended, and nothing more will start. */
static bool batch_over(const struct batch *b)
{
	return b->ended == b->started && (b->failed || b->started == b->n);
}

/* a's send is over: record its outcome (the caller starts more). */
static void batch_settle(struct replay *r, struct attempt *a)
{
	struct batch *b = r->batch;

	if (a->wire) {
		evbuffer_free(a->wire);
		a->wire = NULL;
	}
	b->inflight[a->ui]--;
	b->ended++;
	if (!b->failed && b->settle(r, a) < 0)
		b->failed = true;
	progress(r, false);
}

static void attempt_write(struct xchg *x, struct evbuffer *out)
{
	struct attempt *a = (struct attempt *)((char *)x - offsetof(struct attempt, x));
	size_t n = evbuffer_get_length(a->wire);

	evbuffer_add(out, evbuffer_pullup(a->wire, (ev_ssize_t)n), n);
}

static void attempt_done(struct xchg *x, enum xchg_end how, const char *why)
{
	struct attempt *a = (struct attempt *)((char *)x - offsetof(struct attempt, x));

	if (how == XCHG_ANSWERED)
		judge(a, x->status, x->excerpt, NULL);
	else
		judge(a, 0, NULL, why);
	batch_settle(a->r, a);
	batch_more(a->r);
}

static void rate_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	batch_more(arg);
}

/* Start what the limits allow: in batch order, at most `concurrency` per
 * upstream, --rate apart. Ends the loop once every attempt has ended. */
static void batch_more(struct replay *r)
{
	struct batch *b = r->batch;

	for (size_t i = b->next; i < b->n && !b->failed; i++) {
		struct attempt *a = b->a[i];
		const struct dw_upstream *up = &r->sendto[a->ui];

		if (a->started)
			continue;
		if (b->inflight[a->ui] >= r->concurrency ||
		    b->inflight[a->ui] >= (up->max_inflight > 0 ? up->max_inflight : 1))
			continue;
		if (r->rate > 0) {
			int64_t gap = (int64_t)(1e6 / r->rate), wait = r->last_send_us + gap - dw_now_us();
			if (wait > 0) {
				struct timeval tv = {wait / 1000000, wait % 1000000};
				evtimer_add(b->rate_ev, &tv);
				break;
			}
		}
		a->started = true;
		b->started++;
		b->inflight[a->ui]++;
		r->sent++;
		a->t0 = r->last_send_us = dw_now_us();
		a->x.method = http_method_from(a->rec->method, strlen(a->rec->method));
		a->x.keep = XBODY_EXCERPT;
		a->x.resend_ok = true; /* its Idempotency-Key makes a second copy harmless */
		a->x.write = attempt_write;
		a->x.done = attempt_done;
		if (xchg_start(r->xl, r->cfg, up, &a->x) < 0) {
			judge(a, 0, NULL, xloop_failure(r->xl));
			batch_settle(r, a);
		}
	}
	while (b->next < b->n && b->a[b->next]->started)
		b->next++;
	if (batch_over(b))
		event_base_loopbreak(r->base);
}

/* Send n prepared attempts and settle each; -1 when a settle failed (what
 * was on the wire then is seen through, nothing more starts). */
static int batch_run(struct replay *r, struct attempt **a, size_t n, settle_fn settle)
{
	struct batch b = {.a = a, .n = n, .settle = settle};

	if (n == 0)
		return 0;
	b.inflight = dw_calloc(r->cfg->nupstreams, sizeof(int));
	b.rate_ev = evtimer_new(r->base, rate_cb, r);
	r->batch = &b;
	batch_more(r);
	/* A send in flight or a rate timer keeps the loop going until then. */
	while (!batch_over(&b))
		event_base_dispatch(r->base);
	for (size_t i = 0; i < n; i++)
		if (a[i]->wire) {
			evbuffer_free(a[i]->wire);
			a[i]->wire = NULL;
		}
	event_free(b.rate_ev);
	free(b.inflight);
	r->batch = NULL;
	return b.failed ? -1 : 0;
}

/* ---------------------------------------------------------- local spool */

/* Record a sent local record's fate. */
static int local_settle(struct replay *r, struct attempt *a)
{
	struct spool_record *rec = a->rec;
	struct result *res = &a->res;
	struct dw_err err = {{0}};
	uint64_t seq = rec->seq;

	if (res->k == MIRROR_DELIVERED) {
		if (spool_set_state(r->sp, seq, SPOOL_DELIVERED, res->attempts, res->status, NULL,
				    &err) < 0)
			goto spool_fail;
		outcome(r, "seq=", rec, "delivered", res->status, NULL, res->lat);
		r->delivered++;
		bo_forget(r, seq);
	} else if (res->k == MIRROR_PERMANENT || res->give_up) {
		if (spool_set_state(r->sp, seq, SPOOL_DEAD, res->attempts, res->status, res->reason,
				    &err) < 0)
			goto spool_fail;
		outcome(r, "seq=", rec, "dead", res->status, res->reason, res->lat);
		r->dead++;
		bo_forget(r, seq);
	} else {
		if (spool_set_state(r->sp, seq, SPOOL_QUEUED, res->attempts, res->status,
				    res->reason, &err) < 0)
			goto spool_fail;
		bo_fail(r, seq);
		outcome(r, "seq=", rec, "retry later", res->status, res->reason, res->lat);
	}
	return 0;
spool_fail:
	clear_progress(r);
	fprintf(stderr, "replay: %s\n", err.msg);
	return -1;
}

/* What to do with one local record before any send: 2 = send it (a is
 * prepared), 1 = its state became final, 0 = it stays queued, -1 = a spool
 * error. */
static int local_pre(struct replay *r, struct spool_record *rec, struct attempt *a)
{
	struct dw_err err = {{0}};
	uint64_t seq = rec->seq;
	int d;

	/* Queued behind rows in PostgreSQL, which cannot be reached: sending it
	 * now would overtake them (G3). */
	if (r->pg_configured && rec->key && rec->last_error &&
	    !strcmp(rec->last_error, PGQ_BEHIND)) {
		clear_progress(r);
		fprintf(stderr,
			"replay: seq=%" PRIu64 " key=%s held: its key has earlier writes in the "
			"postgres queue\n",
			seq, rec->key);
		bo_fail(r, seq);
		bo_find(r, seq)->not_before = INT64_MAX;
		r->held++;
		return 0;
	}
	d = prepare(r, "seq=", rec, a);
	if (d == DELIVER_UNKNOWN_UPSTREAM) {
		clear_progress(r);
		fprintf(stderr,
			"replay: seq=%" PRIu64 ": upstream \"%s\" is not in the configuration; "
			"left queued\n",
			seq, rec->upstream);
		bo_fail(r, seq);
		bo_find(r, seq)->not_before = INT64_MAX; /* not again in this run */
		return 0;
	}
	if (d == DELIVER_DRY)
		return 0;
	if (d == DELIVER_UNBUILT) {
		if (spool_set_state(r->sp, seq, SPOOL_DEAD, rec->attempts, rec->last_status,
				    a->res.reason, &err) < 0) {
			clear_progress(r);
			fprintf(stderr, "replay: %s\n", err.msg);
			return -1;
		}
		outcome(r, "seq=", rec, "dead, not sent", 0, a->res.reason, 0);
		r->dead++;
		bo_forget(r, seq);
		return 1;
	}
	return 2;
}

/* Records still waiting for replay: QUEUED, plus PENDING when no daemon owns
 * them (a live daemon's PENDING are its own business). */
static uint64_t waiting(struct replay *r)
{
	struct spool_stats st;

	spool_stats(r->sp, &st);
	return st.queued + (spool_owner_alive(r->sp) ? 0 : st.pending);
}

/* One pass of direct local delivery. Returns -1 on a spool error, else
 * whether anything moved; lowers *earliest to the next back-off end. */
static int local_pass(struct replay *r, uint64_t *seqs, int64_t *earliest)
{
	size_t n = spool_ready(r->sp, seqs, BATCH), nrec = 0, nsend = 0;
	struct spool_record *recs;
	struct attempt *atts, **send;
	bool progressed = false;
	int rc = 0;

	if (n > BATCH)
		n = BATCH;
	recs = dw_calloc(n ? n : 1, sizeof(*recs));
	atts = dw_calloc(n ? n : 1, sizeof(*atts));
	send = dw_calloc(n ? n : 1, sizeof(struct attempt *));
	for (size_t i = 0; i < n; i++) {
		struct backoff *b = bo_find(r, seqs[i]);
		struct dw_err err = {{0}};
		int s;

		if (b && b->not_before > dw_now_us()) {
			if (b->not_before < *earliest)
				*earliest = b->not_before;
			continue;
		}
		if (spool_read(r->sp, seqs[i], &recs[nrec], &err) < 0) {
			fprintf(stderr, "replay: %s\n", err.msg);
			rc = -1;
			goto out;
		}
		s = local_pre(r, &recs[nrec], &atts[nrec]);
		nrec++;
		if (s < 0) {
			rc = -1;
			goto out;
		}
		if (s == 2)
			send[nsend++] = &atts[nrec - 1];
		else if (s == 1)
			progressed = true;
		progress(r, false);
	}
	if (batch_run(r, send, nsend, local_settle) < 0) {
		rc = -1;
		goto out;
	}
	for (size_t i = 0; i < nsend; i++) {
		struct backoff *b = bo_find(r, send[i]->rec->seq);
		if (!b)
			progressed = true; /* delivered or dead */
		else if (b->not_before < *earliest)
			*earliest = b->not_before;
	}
	rc = progressed;
out:
	for (size_t i = 0; i < nrec; i++)
		spool_record_clear(&recs[i]);
	free(recs);
	free(atts);
	free(send);
	return rc;
}

/* Move this host's waiting records into the table. Returns how many, or -1. */
static long forward_local(struct replay *r)
{
	struct dw_err err = {{0}};
	struct dw_errlist warns = {0};
	long n, total = 0;

	do {
		n = pgq_forward_spool(r->pg, r->sp, !spool_owner_alive(r->sp), 256, r->sidecar,
				      NULL, NULL, &warns, &err);
		for (size_t i = 0; i < warns.n; i++)
			fprintf(stderr, "replay: warning: %s\n", warns.msgs[i]);
		dw_errlist_free(&warns);
		if (n < 0) {
			clear_progress(r);
			fprintf(stderr, "replay: %s\n", err.msg);
			return -1;
		}
		total += n;
	} while (n == 256);
	if (total) {
		clear_progress(r);
		fprintf(stderr, "replay: moved %ld local record%s into the postgres queue\n", total,
			total == 1 ? "" : "s");
		r->forwarded += (uint64_t)total;
	}
	return total;
}

/* ---------------------------------------------------------- PostgreSQL */

/* The wait before attempt n + 1 after n failures: 200 ms * 2^(n-1), capped
 * at 30 s, +-25 % jitter (as for local records). */
static int64_t backoff_us(struct replay *r, uint32_t failures)
{
	int64_t d = BACKOFF_BASE_US;

	for (uint32_t i = 1; i < failures && d < BACKOFF_CAP_US; i++)
		d *= 2;
	if (d > BACKOFF_CAP_US)
		d = BACKOFF_CAP_US;
	return d * 3 / 4 + (int64_t)(rng_next(r) % (uint64_t)(d / 2 + 1));
}

/* Record a sent row's fate (in the claim's transaction). */
static int pg_settle(struct replay *r, struct attempt *a)
{
	struct spool_record *rec = a->rec;
	struct result *res = &a->res;
	struct dw_err err = {{0}};
	enum spool_state st;
	const char *what;

	if (res->k == MIRROR_DELIVERED) {
		st = SPOOL_DELIVERED;
		what = "delivered";
		r->delivered++;
	} else if (res->k == MIRROR_PERMANENT || res->give_up) {
		st = SPOOL_DEAD;
		what = "dead";
		r->dead++;
	} else {
		st = SPOOL_QUEUED;
		what = "retry later";
	}
	if (pgq_mark(r->pg, rec->seq, st, res->attempts, res->status,
		     st == SPOOL_DELIVERED ? NULL : res->reason,
		     st == SPOOL_QUEUED ? backoff_us(r, res->attempts) : 0, &err) < 0) {
		clear_progress(r);
		fprintf(stderr, "replay: %s\n", err.msg);
		return -1;
	}
	outcome(r, "pg id=", rec, what, res->status, st == SPOOL_DELIVERED ? NULL : res->reason,
		res->lat);
	return 0;
}

/* Claim a batch of ready rows, deliver them, record the outcomes, commit.
 * Returns the number of rows handled, or -1 on a PostgreSQL error. */
static long pg_pass(struct replay *r)
{
	struct spool_record *recs = NULL;
	struct attempt *atts = NULL, **send = NULL;
	struct dw_err err = {{0}};
	size_t n = 0, nsend = 0;
	long rc = -1;

	if (pgq_claim(r->pg, r->ups, r->nups, PG_BATCH, !r->dry_run, &recs, &n, &err) < 0)
		goto fail;
	atts = dw_calloc(n ? n : 1, sizeof(*atts));
	send = dw_calloc(n ? n : 1, sizeof(struct attempt *));
	for (size_t i = 0; i < n; i++) {
		struct spool_record *rec = &recs[i];
		int d = prepare(r, "pg id=", rec, &atts[i]);

		if (d == DELIVER_SENT) {
			send[nsend++] = &atts[i];
			continue;
		}
		if (d != DELIVER_UNBUILT)
			continue; /* dry run (the claim filters unknown upstreams) */
		r->dead++;
		if (pgq_mark(r->pg, rec->seq, SPOOL_DEAD, rec->attempts, 0, atts[i].res.reason, 0,
			     &err) < 0)
			goto fail;
		outcome(r, "pg id=", rec, "dead, not sent", 0, atts[i].res.reason, 0);
		progress(r, false);
	}
	if (batch_run(r, send, nsend, pg_settle) < 0) {
		pgq_rollback(r->pg);
		goto out;
	}
	if (r->dry_run)
		pgq_rollback(r->pg);
	else if (pgq_commit(r->pg, &err) < 0)
		goto fail;
	rc = (long)n;
	goto out;
fail:
	pgq_rollback(r->pg);
	clear_progress(r);
	fprintf(stderr, "replay: %s\n", err.msg);
out:
	for (size_t i = 0; i < n; i++)
		spool_record_clear(&recs[i]);
	free(recs);
	free(atts);
	free(send);
	return rc;
}

/* Queued rows of configured upstreams; the time until the first is due. */
static int pg_count(struct replay *r, int64_t *due_in_us)
{
	struct pgq_stats st;
	struct dw_err err = {{0}};

	if (pgq_stats(r->pg, r->ups, r->nups, &st, &err) < 0) {
		clear_progress(r);
		fprintf(stderr, "replay: %s\n", err.msg);
		return -1;
	}
	r->pg_left = st.queued;
	if (due_in_us)
		*due_in_us = st.next_due_in_us;
	return 0;
}

static int run(struct replay *r)
{
	uint64_t *seqs = dw_calloc(BATCH, sizeof(*seqs));
	struct dw_err err = {{0}};
	uint64_t local_seen = UINT64_MAX;
	int64_t local_changed = dw_now_us();
	int rc = 0;

	for (;;) {
		bool progressed = false;
		int64_t earliest = INT64_MAX;

		if (spool_refresh(r->sp, &err) < 0) {
			clear_progress(r);
			fprintf(stderr, "replay: %s\n", err.msg);
			rc = 1;
			break;
		}
		if (r->local_forward && !r->dry_run) {
			long n = forward_local(r);
			if (n < 0) {
				rc = 1;
				break;
			}
			progressed |= n > 0;
		}
		if (r->pg) {
			long n = pg_pass(r);
			if (n < 0) {
				rc = 1;
				break;
			}
			progressed |= n > 0;
		}
		if (r->local_direct) {
			int s = local_pass(r, seqs, &earliest);
			if (s < 0) {
				rc = 1;
				break;
			}
			progressed |= s > 0;
		}
		if (r->dry_run)
			break;
		if (progressed)
			continue;
		/* Nothing moved in this pass: what is left is backing off, held
		 * by another worker, or waiting for a daemon's forwarder. */
		if (r->pg) {
			int64_t due_in;
			if (pg_count(r, &due_in) < 0) {
				rc = 1;
				break;
			}
			if (r->pg_left > 0) {
				if (due_in < 100000)
					due_in = 100000;
				if (due_in > 1000000)
					due_in = 1000000;
				if (dw_now_us() + due_in < earliest)
					earliest = dw_now_us() + due_in;
			}
		}
		if (r->local_daemon) {
			uint64_t w = waiting(r);
			if (w != local_seen) {
				local_seen = w;
				local_changed = dw_now_us();
			}
			if (w && dw_now_us() - local_changed < LOCAL_STALL_US &&
			    dw_now_us() + 250000 < earliest)
				earliest = dw_now_us() + 250000;
		}
		if (r->once || earliest == INT64_MAX)
			break;
		if (r->tty)
			progress(r, true);
		sleep_us(earliest - dw_now_us());
	}
	free(seqs);
	return rc;
}

/* The event loop, pools and resolver the sends use. */
static int replay_sender(struct replay *r, struct dw_err *err)
{
	r->base = event_base_new();
	if (!r->base) {
		dw_err_set(err, "cannot create an event loop");
		return -1;
	}
	r->res = resolver_new(err);
	if (!r->res)
		return -1;
	resolver_configure(r->res, r->cfg);
	(void)resolver_wait_ready(r->res, 2000); /* a name not resolved fails its sends */
	r->metrics = metrics_new();
	r->pools = pool_set_new(r->base, r->metrics, r->res);
	r->xl = xloop_new(r->base, r->pools, NULL, NULL);
	r->sendto = dw_calloc(r->cfg->nupstreams ? r->cfg->nupstreams : 1, sizeof(*r->sendto));
	for (size_t i = 0; i < r->cfg->nupstreams; i++) {
		r->sendto[i] = r->cfg->upstreams[i]; /* shares its strings: cfg outlives it */
		if (r->timeout_ms > 0)
			r->sendto[i].timeout_ms = r->timeout_ms;
	}
	return 0;
}

static void replay_sender_free(struct replay *r)
{
	xloop_free(r->xl);
	if (r->pools)
		pool_set_free(r->pools);
	metrics_free(r->metrics);
	resolver_free(r->res);
	if (r->base)
		event_base_free(r->base);
	free(r->sendto);
}

int cmd_replay(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"once", no_argument, NULL, 'o'},
		{"max-attempts", required_argument, NULL, 'm'},
		{"rate", required_argument, NULL, 'r'},
		{"dry-run", no_argument, NULL, 'n'},
		{"timeout-ms", required_argument, NULL, 't'},
		{"concurrency", required_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct replay r = {.max_attempts = 10, .concurrency = 16};
	const char *cfgpath = NULL;
	struct dw_err err = {{0}};
	struct dw_errlist w = {0};
	char *end, host[256] = "";
	int c, rc = 2;
	long v;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfgpath = optarg;
			break;
		case 'o':
			r.once = true;
			break;
		case 'n':
			r.dry_run = true;
			break;
		case 'm':
		case 'r':
		case 't':
		case 'k':
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || v < 0 || v > 100000000 ||
			    ((c == 'm' || c == 'k') && v < 1) || (c == 'k' && v > 4096)) {
				fprintf(stderr, "dualwrite replay: --%s: invalid value '%s'\n",
					c == 'm'   ? "max-attempts"
					: c == 'r' ? "rate"
					: c == 'k' ? "concurrency"
						   : "timeout-ms",
					optarg);
				return 2;
			}
			if (c == 'm')
				r.max_attempts = (unsigned)v;
			else if (c == 'k')
				r.concurrency = (int)v;
			else if (c == 'r')
				r.rate = (double)v;
			else
				r.timeout_ms = (int)v;
			break;
		case 'h':
			replay_usage(stdout);
			return 0;
		default:
			fprintf(stderr, "Run 'dualwrite replay --help' for usage.\n");
			return 2;
		}
	}
	r.cfg = cli_args_config("replay", argc, argv, optind, cfgpath);
	if (!r.cfg)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	struct spool_opts so = {
		.max_bytes = r.cfg->queue.max_bytes,
		.fsync = r.cfg->queue.durability == QUEUE_DURABILITY_FSYNC,
		.readonly = r.dry_run,
	};
	r.sp = spool_open(r.cfg->queue.path, &so, &err);
	if (!r.sp) {
		fprintf(stderr, "dualwrite replay: %s\n", err.msg);
		rc = 1;
		goto out;
	}
	r.ups = dw_calloc(r.cfg->nupstreams ? r.cfg->nupstreams : 1, sizeof(*r.ups));
	for (size_t i = 0; i < r.cfg->nupstreams; i++)
		r.ups[r.nups++] = r.cfg->upstreams[i].name;
	if (gethostname(host, sizeof(host) - 1) < 0)
		snprintf(host, sizeof(host), "unknown");
	snprintf(r.sidecar, sizeof(r.sidecar), "%s:%d (replay)", host, (int)getpid());

	r.pg_configured = r.cfg->queue.postgres != NULL;
	if (r.pg_configured) {
		r.pg = pgq_open(r.cfg->queue.postgres, r.cfg->queue.table, &err);
		if (!r.pg)
			fprintf(stderr, "replay: postgres unreachable, draining the local spool only: "
					"%s\n",
				err.msg);
	}
	if (r.pg) {
		if (r.dry_run) {
			/* list the table's ready rows; local ones only counted */
		} else if (spool_owner_alive(r.sp)) {
			r.local_daemon = true;
		} else if (spool_lock_consumer(r.sp, false, &err) == 0) {
			r.local_forward = true;
		} else {
			fprintf(stderr, "replay: %s; draining the postgres queue only\n", err.msg);
		}
	} else {
		if (!r.dry_run && spool_lock_consumer(r.sp, false, &err) < 0) {
			fprintf(stderr, "dualwrite replay: %s\n", err.msg);
			rc = 1;
			goto out;
		}
		r.local_direct = true;
	}
	if (!r.dry_run && replay_sender(&r, &err) < 0) {
		fprintf(stderr, "dualwrite replay: %s\n", err.msg);
		rc = 1;
		goto out;
	}
	r.tty = cli_is_tty() && !r.dry_run;
	r.rng = (uint64_t)dw_now_us() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
	r.start_us = dw_now_us();
	r.total = waiting(&r);
	if (r.pg && pg_count(&r, NULL) == 0)
		r.total += (uint64_t)r.pg_left;

	rc = run(&r);
	if (!r.dry_run && spool_sync(r.sp, &err) < 0) {
		fprintf(stderr, "dualwrite replay: %s\n", err.msg);
		rc = 1;
	}
	spool_take_warnings(r.sp, &w);
	clear_progress(&r);
	for (size_t i = 0; i < w.n; i++)
		fprintf(stderr, "replay: warning: %s\n", w.msgs[i]);
	dw_errlist_free(&w);

	if (spool_refresh(r.sp, &err) < 0)
		fprintf(stderr, "replay: %s\n", err.msg);
	uint64_t left = waiting(&r);
	if (r.pg && pg_count(&r, NULL) < 0)
		rc = 1;
	if (r.dry_run) {
		fprintf(stderr, "replay: dry run, %" PRIu64 " local record%s waiting", left,
			left == 1 ? "" : "s");
		if (r.pg)
			fprintf(stderr, ", %" PRId64 " in the postgres queue", r.pg_left);
		fprintf(stderr, ", nothing sent\n");
	} else {
		fprintf(stderr,
			"replay: delivered %" PRIu64 ", dead %" PRIu64 ", remaining %" PRIu64
			" local",
			r.delivered, r.dead, left);
		if (r.held)
			fprintf(stderr, " (%" PRIu64 " held behind the postgres queue)", r.held);
		if (r.pg)
			fprintf(stderr, " and %" PRId64 " in postgres (%" PRIu64 " moved there)",
				r.pg_left, r.forwarded);
		else if (r.pg_configured)
			fprintf(stderr, " (postgres unreachable)");
		fprintf(stderr, " in %.1f s\n", (dw_now_us() - r.start_us) / 1e6);
		if (rc == 0 && (left || (r.pg && r.pg_left)))
			rc = 1;
	}
out:
	pgq_close(r.pg);
	replay_sender_free(&r);
	spool_close(r.sp);
	free(r.bo);
	free(r.ups);
	config_unref(r.cfg);
	return rc;
}
