/*
 * replay.c — `dualwrite replay`: drain the replay queue into the mirror
 * targets.
 *
 * One consumer per queue (the REPLAY lock). Each pass asks the spool for the
 * records that may go now — per key only the oldest waiting one (G3), every
 * unkeyed one — and sends each with its original Idempotency-Key (G4). The
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

#include "cli.h"
#include "httpc.h"
#include "mirrorwire.h"
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
	struct httpc *http;
	unsigned max_attempts;
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
};

static void replay_usage(FILE *f)
{
	fprintf(f,
		"usage: dualwrite replay -c FILE [--once] [--max-attempts N] [--rate N] [--dry-run]\n"
		"                        [--timeout-ms N]\n"
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

/* Send rec once, with its Idempotency-Key, and classify the answer with the
 * route's table — the same for a local record and a PostgreSQL row. */
static int deliver(struct replay *r, const char *where, const struct spool_record *rec,
		   struct result *res)
{
	struct httpc_response resp = {0};
	struct httpc_request req = {0};
	struct evbuffer *wire;
	struct dw_err herr = {{0}};
	char *path = NULL;
	const struct dw_route *rt;
	const struct dw_upstream *up;
	int ui, rc;

	memset(res, 0, sizeof(*res));
	/* Never send what was never built (a bodiless default request would be
	 * counted delivered): dead, whatever state it arrived in. */
	if (!rec->method) {
		res->k = MIRROR_PERMANENT;
		snprintf(res->reason, sizeof(res->reason), UNBUILT_REASON " (was: %s)",
			 rec->last_error ? rec->last_error : "unknown");
		if (r->dry_run) {
			printf("would dead-letter %s%" PRIu64 ": %s\n", where, rec->seq,
			       res->reason);
			return DELIVER_DRY;
		}
		return DELIVER_UNBUILT;
	}
	ui = config_upstream_index(r->cfg, rec->upstream);
	if (ui < 0)
		return DELIVER_UNKNOWN_UPSTREAM;
	up = &r->cfg->upstreams[ui];
	rt = find_route(r->cfg, rec->route);
	if (asprintf(&path, "%s%s", up->base_path ? up->base_path : "",
		     rec->path ? rec->path : "/") < 0)
		abort();

	if (r->dry_run) {
		printf("would send %s%" PRIu64 " %s %s://%s%s key=%s idem=%s attempt=%u%s\n", where,
		       rec->seq, rec->method, up->tls ? "https" : "http", up->host_header, path,
		       rec->key ? rec->key : "-", rec->idem_key ? rec->idem_key : "-",
		       rec->attempts + 1, rec->body ? "" : " (no body)");
		free(path);
		return DELIVER_DRY;
	}

	/* The same request as the daemon's live send (mirrorwire), marked
	 * as a replay with its attempt number. */
	const struct mirrorwire_req mw = {
		.method = rec->method, .path = rec->path, .idem_key = rec->idem_key,
		.route = rec->route, .request_id = rec->request_id,
		.content_type = rec->content_type, .body = rec->body, .body_len = rec->body_len,
		.replay_attempt = rec->attempts + 1,
	};
	wire = evbuffer_new();
	mirrorwire_write(wire, up, &mw);
	req.host = up->host;
	req.port = up->port;
	req.tls = up->tls;
	req.tls_ctx = up->tls_ctx;
	req.sni = up->sni;
	req.host_header = up->host_header;
	req.method = rec->method;
	req.path = path;
	req.wire_len = evbuffer_get_length(wire);
	req.wire = (const char *)evbuffer_pullup(wire, -1);
	req.connect_timeout_ms = up->connect_timeout_ms;
	req.timeout_ms = r->timeout_ms > 0 ? r->timeout_ms : up->timeout_ms;

	if (r->rate > 0) {
		int64_t gap = (int64_t)(1e6 / r->rate);
		sleep_us(r->last_send_us + gap - dw_now_us());
	}
	int64_t t0 = dw_now_us();
	r->last_send_us = t0;
	rc = httpc_do(r->http, &req, &resp, &herr);
	res->lat = dw_now_us() - t0;
	r->sent++;
	res->attempts = rec->attempts + 1;
	res->k = rc < 0 ? MIRROR_RETRY : mirrorwire_classify(mirrorwire_block(rt, ui), resp.status);
	res->status = rc < 0 ? 0 : resp.status;

	if (res->k == MIRROR_PERMANENT) {
		size_t blen = resp.body_len > 200 ? 200 : resp.body_len;
		snprintf(res->reason, sizeof(res->reason), "HTTP %d: %.*s", res->status, (int)blen,
			 resp.body ? resp.body : "");
		for (char *p = res->reason; *p; p++)
			if (*p == '\n' || *p == '\r')
				*p = ' ';
		for (size_t l = strlen(res->reason); l && res->reason[l - 1] == ' ';)
			res->reason[--l] = '\0';
	} else if (res->k == MIRROR_RETRY) {
		char last[sizeof(herr.msg)];
		if (rc < 0)
			snprintf(last, sizeof(last), "%s", herr.msg);
		else
			snprintf(last, sizeof(last), "HTTP %d", res->status);
		if (res->attempts >= r->max_attempts) {
			res->give_up = true;
			snprintf(res->reason, sizeof(res->reason), "gave up after %u attempts: %s",
				 res->attempts, last);
		} else {
			snprintf(res->reason, sizeof(res->reason), "%s", last);
		}
	}
	httpc_response_clear(&resp);
	evbuffer_free(wire);
	free(path);
	return DELIVER_SENT;
}

/* ---------------------------------------------------------- local spool */

/* Send one local record and record its fate. Returns 1 when its state
 * changed to terminal/dead, 0 when it stays queued, -1 on a spool error. */
static int send_one(struct replay *r, uint64_t seq)
{
	struct spool_record rec;
	struct dw_err err = {{0}};
	struct result res;
	int rc = -1, d;

	if (spool_read(r->sp, seq, &rec, &err) < 0) {
		fprintf(stderr, "replay: %s\n", err.msg);
		return -1;
	}
	/* Queued behind rows in PostgreSQL, which cannot be reached: sending it
	 * now would overtake them (G3). */
	if (r->pg_configured && rec.key && rec.last_error && !strcmp(rec.last_error, PGQ_BEHIND)) {
		clear_progress(r);
		fprintf(stderr,
			"replay: seq=%" PRIu64 " key=%s held: its key has earlier writes in the "
			"postgres queue\n",
			seq, rec.key);
		bo_fail(r, seq);
		bo_find(r, seq)->not_before = INT64_MAX;
		r->held++;
		rc = 0;
		goto out;
	}
	d = deliver(r, "seq=", &rec, &res);
	if (d == DELIVER_UNKNOWN_UPSTREAM) {
		clear_progress(r);
		fprintf(stderr,
			"replay: seq=%" PRIu64 ": upstream \"%s\" is not in the configuration; "
			"left queued\n",
			seq, rec.upstream);
		bo_fail(r, seq);
		bo_find(r, seq)->not_before = INT64_MAX; /* not again in this run */
		rc = 0;
		goto out;
	}
	if (d == DELIVER_DRY) {
		rc = 0;
		goto out;
	}
	if (d == DELIVER_UNBUILT) {
		if (spool_set_state(r->sp, seq, SPOOL_DEAD, rec.attempts, rec.last_status, res.reason,
				    &err) < 0)
			goto spool_fail;
		outcome(r, "seq=", &rec, "dead, not sent", 0, res.reason, 0);
		r->dead++;
		bo_forget(r, seq);
		rc = 1;
		goto out;
	}
	if (res.k == MIRROR_DELIVERED) {
		if (spool_set_state(r->sp, seq, SPOOL_DELIVERED, res.attempts, res.status, NULL,
				    &err) < 0)
			goto spool_fail;
		outcome(r, "seq=", &rec, "delivered", res.status, NULL, res.lat);
		r->delivered++;
		bo_forget(r, seq);
		rc = 1;
	} else if (res.k == MIRROR_PERMANENT || res.give_up) {
		if (spool_set_state(r->sp, seq, SPOOL_DEAD, res.attempts, res.status, res.reason,
				    &err) < 0)
			goto spool_fail;
		outcome(r, "seq=", &rec, "dead", res.status, res.reason, res.lat);
		r->dead++;
		bo_forget(r, seq);
		rc = 1;
	} else {
		if (spool_set_state(r->sp, seq, SPOOL_QUEUED, res.attempts, res.status, res.reason,
				    &err) < 0)
			goto spool_fail;
		bo_fail(r, seq);
		outcome(r, "seq=", &rec, "retry later", res.status, res.reason, res.lat);
		rc = 0;
	}
	goto out;
spool_fail:
	clear_progress(r);
	fprintf(stderr, "replay: %s\n", err.msg);
	rc = -1;
out:
	spool_record_clear(&rec);
	return rc;
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
	size_t n = spool_ready(r->sp, seqs, BATCH);
	bool progressed = false;

	for (size_t i = 0; i < n; i++) {
		struct backoff *b = bo_find(r, seqs[i]);
		if (b && b->not_before > dw_now_us()) {
			if (b->not_before < *earliest)
				*earliest = b->not_before;
			continue;
		}
		int s = send_one(r, seqs[i]);
		if (s < 0)
			return -1;
		if (s > 0)
			progressed = true;
		b = bo_find(r, seqs[i]);
		if (s == 0 && b && b->not_before < *earliest)
			*earliest = b->not_before;
		progress(r, false);
	}
	return progressed;
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

/* Claim a batch of ready rows, deliver each, record the outcomes, commit.
 * Returns the number of rows handled, or -1 on a PostgreSQL error. */
static long pg_pass(struct replay *r)
{
	struct spool_record *recs = NULL;
	struct dw_err err = {{0}};
	struct result res;
	size_t n = 0;
	long rc = -1;

	if (pgq_claim(r->pg, r->ups, r->nups, PG_BATCH, !r->dry_run, &recs, &n, &err) < 0)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		struct spool_record *rec = &recs[i];
		enum spool_state st;
		const char *what;
		int d = deliver(r, "pg id=", rec, &res);
		if (d != DELIVER_SENT && d != DELIVER_UNBUILT)
			continue; /* dry run (the claim filters unknown upstreams) */
		if (d == DELIVER_UNBUILT) {
			st = SPOOL_DEAD;
			what = "dead, not sent";
			res.attempts = rec->attempts;
			r->dead++;
		} else if (res.k == MIRROR_DELIVERED) {
			st = SPOOL_DELIVERED;
			what = "delivered";
			r->delivered++;
		} else if (res.k == MIRROR_PERMANENT || res.give_up) {
			st = SPOOL_DEAD;
			what = "dead";
			r->dead++;
		} else {
			st = SPOOL_QUEUED;
			what = "retry later";
		}
		if (pgq_mark(r->pg, rec->seq, st, res.attempts, res.status,
			     st == SPOOL_DELIVERED ? NULL : res.reason,
			     st == SPOOL_QUEUED ? backoff_us(r, res.attempts) : 0, &err) < 0)
			goto fail;
		outcome(r, "pg id=", rec, what, res.status,
			st == SPOOL_DELIVERED ? NULL : res.reason, res.lat);
		progress(r, false);
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

int cmd_replay(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"once", no_argument, NULL, 'o'},
		{"max-attempts", required_argument, NULL, 'm'},
		{"rate", required_argument, NULL, 'r'},
		{"dry-run", no_argument, NULL, 'n'},
		{"timeout-ms", required_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct replay r = {.max_attempts = 10};
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
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || v < 0 || v > 100000000 ||
			    (c == 'm' && v < 1)) {
				fprintf(stderr, "dualwrite replay: --%s: invalid value '%s'\n",
					c == 'm' ? "max-attempts" : c == 'r' ? "rate" : "timeout-ms",
					optarg);
				return 2;
			}
			if (c == 'm')
				r.max_attempts = (unsigned)v;
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
	r.http = httpc_new();
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
	httpc_free(r.http);
	spool_close(r.sp);
	free(r.bo);
	free(r.ups);
	config_unref(r.cfg);
	return rc;
}
