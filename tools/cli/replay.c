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
#include "spool.h"

#define BATCH 4096
#define BACKOFF_BASE_US 200000
#define BACKOFF_CAP_US 30000000

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

	uint64_t delivered, dead, sent, total;
	int64_t start_us, last_send_us, last_progress_us;
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
		"  -c, --config FILE     the dualwrited configuration\n"
		"      --once            one pass over what can be sent now (no waiting on\n"
		"                        back-off); for timers\n"
		"      --max-attempts N  dead-letter a write after N failed attempts (default 10)\n"
		"      --rate N          at most N sends per second (default 0: unlimited)\n"
		"      --dry-run         list what would be sent; send and change nothing\n"
		"      --timeout-ms N    response timeout per send (default: the upstream's)\n"
		"  -h, --help            this text\n"
		"\n"
		"Exit status: 0 when nothing is left waiting, 1 when records remain or on a\n"
		"runtime failure, 2 on a usage or configuration error.\n");
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

/* The route's table, or the defaults when the route is gone: 2xx delivered;
 * 408, 429 and 5xx retry; anything else is permanent. */
static enum mirror_class classify(const struct dw_route *rt, int status)
{
	if (rt && rt->mirror && status >= 100 && status < 600)
		return (enum mirror_class)rt->mirror->klass[status];
	if (status >= 200 && status < 300)
		return MIRROR_DELIVERED;
	if (status == 408 || status == 429 || status >= 500)
		return MIRROR_RETRY;
	return MIRROR_PERMANENT;
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

static void outcome(struct replay *r, const struct spool_record *rec, const char *what,
		    int status, const char *detail, int64_t latency_us)
{
	char st[16];

	if (status)
		snprintf(st, sizeof(st), "%d", status);
	else
		snprintf(st, sizeof(st), "-");
	clear_progress(r);
	fprintf(stderr,
		"replay: seq=%" PRIu64 " route=%s key=%s idem=%s status=%s attempt=%u %s "
		"%.1fms%s%s\n",
		rec->seq, rec->route ? rec->route : "-", rec->key ? rec->key : "-",
		rec->idem_key ? rec->idem_key : "-", st, rec->attempts + 1, what,
		latency_us / 1000.0, detail ? ": " : "", detail ? detail : "");
}

/* Send one record and record its fate. Returns 1 when its state changed to
 * terminal/dead, 0 when it stays queued, -1 on a spool error. */
static int send_one(struct replay *r, uint64_t seq)
{
	struct spool_record rec;
	struct httpc_response resp = {0};
	struct httpc_request req = {0};
	struct httpc_header hdrs[6];
	struct dw_err err = {{0}}, herr = {{0}};
	char attempt[16], *path = NULL, reason[700];
	const struct dw_route *rt;
	const struct dw_upstream *up;
	int ui, rc = -1;
	size_t nh = 0;

	if (spool_read(r->sp, seq, &rec, &err) < 0) {
		fprintf(stderr, "replay: %s\n", err.msg);
		return -1;
	}
	ui = config_upstream_index(r->cfg, rec.upstream);
	if (ui < 0) {
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
	up = &r->cfg->upstreams[ui];
	rt = find_route(r->cfg, rec.route);
	if (asprintf(&path, "%s%s", up->base_path ? up->base_path : "", rec.path ? rec.path : "/") < 0)
		abort();

	if (r->dry_run) {
		printf("would send seq=%" PRIu64 " %s %s://%s%s key=%s idem=%s attempt=%u%s\n", seq,
		       rec.method, up->tls ? "https" : "http", up->host_header, path,
		       rec.key ? rec.key : "-", rec.idem_key ? rec.idem_key : "-", rec.attempts + 1,
		       rec.body ? "" : " (no body)");
		rc = 0;
		goto out;
	}

	if (rec.body && rec.content_type)
		hdrs[nh++] = (struct httpc_header){"Content-Type", rec.content_type};
	if (rec.idem_key)
		hdrs[nh++] = (struct httpc_header){"Idempotency-Key", rec.idem_key};
	if (rec.route)
		hdrs[nh++] = (struct httpc_header){"X-Dualwrite-Route", rec.route};
	snprintf(attempt, sizeof(attempt), "%u", rec.attempts + 1);
	hdrs[nh++] = (struct httpc_header){"X-Dualwrite-Replay", attempt};
	if (rec.request_id)
		hdrs[nh++] = (struct httpc_header){"X-Request-Id", rec.request_id};
	req.host = up->host;
	req.port = up->port;
	req.tls = up->tls;
	req.host_header = up->host_header;
	req.method = rec.method ? rec.method : "POST";
	req.path = path;
	req.headers = hdrs;
	req.nheaders = nh;
	req.body = rec.body;
	req.body_len = rec.body_len;
	req.connect_timeout_ms = up->connect_timeout_ms;
	req.timeout_ms = r->timeout_ms > 0 ? r->timeout_ms : up->timeout_ms;

	if (r->rate > 0) {
		int64_t gap = (int64_t)(1e6 / r->rate);
		sleep_us(r->last_send_us + gap - dw_now_us());
	}
	int64_t t0 = dw_now_us();
	r->last_send_us = t0;
	int hrc = httpc_do(r->http, &req, &resp, &herr);
	int64_t lat = dw_now_us() - t0;
	r->sent++;
	uint32_t attempts = rec.attempts + 1;
	enum mirror_class k = hrc < 0 ? MIRROR_RETRY : classify(rt, resp.status);
	int status = hrc < 0 ? 0 : resp.status;

	if (k == MIRROR_DELIVERED) {
		if (spool_set_state(r->sp, seq, SPOOL_DELIVERED, attempts, status, NULL, &err) < 0)
			goto spool_fail;
		outcome(r, &rec, "delivered", status, NULL, lat);
		r->delivered++;
		bo_forget(r, seq);
		rc = 1;
	} else if (k == MIRROR_PERMANENT) {
		size_t blen = resp.body_len > 200 ? 200 : resp.body_len;
		snprintf(reason, sizeof(reason), "HTTP %d: %.*s", status, (int)blen,
			 resp.body ? resp.body : "");
		for (char *p = reason; *p; p++)
			if (*p == '\n' || *p == '\r')
				*p = ' ';
		for (size_t l = strlen(reason); l && reason[l - 1] == ' ';)
			reason[--l] = '\0';
		if (spool_set_state(r->sp, seq, SPOOL_DEAD, attempts, status, reason, &err) < 0)
			goto spool_fail;
		outcome(r, &rec, "dead", status, reason, lat);
		r->dead++;
		bo_forget(r, seq);
		rc = 1;
	} else {
		char last[sizeof(herr.msg)];
		if (hrc < 0)
			snprintf(last, sizeof(last), "%s", herr.msg);
		else
			snprintf(last, sizeof(last), "HTTP %d", status);
		if (attempts >= r->max_attempts) {
			snprintf(reason, sizeof(reason), "gave up after %u attempts: %s", attempts, last);
			if (spool_set_state(r->sp, seq, SPOOL_DEAD, attempts, status, reason, &err) < 0)
				goto spool_fail;
			outcome(r, &rec, "dead", status, reason, lat);
			r->dead++;
			bo_forget(r, seq);
			rc = 1;
		} else {
			if (spool_set_state(r->sp, seq, SPOOL_QUEUED, attempts, status, last, &err) < 0)
				goto spool_fail;
			bo_fail(r, seq);
			outcome(r, &rec, "retry later", status, last, lat);
			rc = 0;
		}
	}
	goto out;
spool_fail:
	clear_progress(r);
	fprintf(stderr, "replay: %s\n", err.msg);
	rc = -1;
out:
	httpc_response_clear(&resp);
	spool_record_clear(&rec);
	free(path);
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

static int run(struct replay *r)
{
	uint64_t *seqs = dw_calloc(BATCH, sizeof(*seqs));
	struct dw_err err = {{0}};
	int rc = 0;

	for (;;) {
		size_t n;
		bool progressed = false, spool_err = false;
		int64_t earliest = INT64_MAX;

		if (spool_refresh(r->sp, &err) < 0) {
			clear_progress(r);
			fprintf(stderr, "replay: %s\n", err.msg);
			rc = 1;
			break;
		}
		n = spool_ready(r->sp, seqs, BATCH);
		if (n == 0)
			break;
		for (size_t i = 0; i < n; i++) {
			struct backoff *b = bo_find(r, seqs[i]);
			if (b && b->not_before > dw_now_us()) {
				if (b->not_before < earliest)
					earliest = b->not_before;
				continue;
			}
			int s = send_one(r, seqs[i]);
			if (s < 0) {
				spool_err = true;
				break;
			}
			if (s > 0)
				progressed = true;
			b = bo_find(r, seqs[i]);
			if (s == 0 && b && b->not_before < earliest)
				earliest = b->not_before;
			progress(r, false);
		}
		if (spool_err) {
			rc = 1;
			break;
		}
		if (r->dry_run)
			break;
		if (progressed)
			continue;
		/* Nothing moved in this pass: everything ready is backing off. */
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
	char *end;
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
	if (optind < argc) {
		fprintf(stderr, "dualwrite replay: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!cfgpath) {
		fprintf(stderr, "dualwrite replay: -c FILE is required\n");
		return 2;
	}
	r.cfg = cli_load_config(cfgpath);
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
	if (!r.dry_run && spool_lock_consumer(r.sp, false, &err) < 0) {
		fprintf(stderr, "dualwrite replay: %s\n", err.msg);
		rc = 1;
		goto out;
	}
	r.http = httpc_new();
	r.tty = cli_is_tty() && !r.dry_run;
	r.rng = (uint64_t)dw_now_us() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
	r.start_us = dw_now_us();
	r.total = waiting(&r);

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

	uint64_t left = waiting(&r);
	if (r.dry_run) {
		fprintf(stderr, "replay: dry run, %" PRIu64 " record%s waiting, nothing sent\n", left,
			left == 1 ? "" : "s");
	} else {
		fprintf(stderr,
			"replay: delivered %" PRIu64 ", dead %" PRIu64 ", remaining %" PRIu64
			" in %.1f s\n",
			r.delivered, r.dead, left, (dw_now_us() - r.start_us) / 1e6);
		if (rc == 0 && left)
			rc = 1;
	}
out:
	httpc_free(r.http);
	spool_close(r.sp);
	free(r.bo);
	config_unref(r.cfg);
	return rc;
}
