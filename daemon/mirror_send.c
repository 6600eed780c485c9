/*
 * mirror_send.c — sending mirrored writes (mirror.h). A shard sends the writes
 * whose turn has come with bounded concurrency per upstream (max_inflight),
 * on lanes: buffered exchanges on pooled connections (exchange.h), pipelined
 * to a fast target (see struct target in mirror.h). The request is built by
 * lib/mirrorwire (the same bytes replay sends), the answer classified by
 * its block's table (delivered -> next of the key; permanent -> dead;
 * retryable or no answer -> queued with the rest of the key), and every
 * result feeds the upstream's circuit breaker (lib/breaker.h), whose open
 * state sends writes straight to the queue.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "mirrorwire.h"

#include "mirror.h"

static void send_start(struct mirror *mi, struct target *t, struct mirror_job *j);

struct target *target_find(struct mirror *mi, const char *name)
{
	struct target *t;

	for (t = mi->targets; t && strcmp(t->name, name) != 0; t = t->next)
		;
	return t;
}

struct target *target_get(struct mirror *mi, const char *name)
{
	struct target *t = target_find(mi, name);

	if (t)
		return t;
	t = dw_calloc(1, sizeof(*t));
	t->name = dw_strdup(name);
	TAILQ_INIT(&t->ready);
	t->br = breaker_table_get(mi->srv->breakers, name);
	TAILQ_INIT(&t->lanes);
	char labels[200], esc[128];
	snprintf(labels, sizeof(labels), "upstream=\"%s\"",
		 metrics_label_escape(name, esc, sizeof(esc)));
	t->m_open = metrics_gauge(mi->srv->metrics, "dualwrite_mirror_circuit_open",
				  "1 while writes to this mirror upstream go straight to the queue (circuit open).",
				  labels);
	t->next = mi->targets;
	mi->targets = t;
	return t;
}

/* Feed one send's result to its upstream's breaker (lib/breaker, shared
 * by every shard); the one shard whose note changes it says so. */
static void breaker_feed(struct target *t, bool failed, const char *why)
{
	struct breaker_view v;

	switch (breaker_cell_note(t->br, failed, why, dw_now_us(), &v)) {
	case BREAKER_CLOSED:
		log_info("mirror: upstream \"%s\" answers again; circuit closed", t->name);
		metric_set(t->m_open, 0);
		break;
	case BREAKER_OPENED:
		metric_set(t->m_open, 1);
		log_warn("mirror: upstream \"%s\" failed %d times in a row (%s); writes go to the "
			 "queue, next probe in %d ms",
			 t->name, v.failures, v.last_error, v.cooldown_ms);
		break;
	case BREAKER_SAME:
		break;
	}
}

void send_free(struct send *s)
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
	breaker_feed(t, k == MIRROR_RETRY, neterr ? neterr : excerpt);
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
bool breaker_open(const struct target *t)
{
	return breaker_cell_is_open(t->br, dw_now_us());
}

const char *breaker_reason(const struct target *t, char *buf, size_t len)
{
	char last[BREAKER_ERROR_MAX];

	breaker_cell_last_error(t->br, last, sizeof(last));
	snprintf(buf, len, "circuit open for upstream \"%s\": %s", t->name, last);
	return buf;
}

void start_sends(struct mirror *mi, struct target *t)
{
	struct mirror_job *j;
	char why[300];

	while ((j = TAILQ_FIRST(&t->ready)) && t->inflight < job_upstream(j)->max_inflight) {
		TAILQ_REMOVE(&t->ready, j, link);
		if (!breaker_cell_admit(t->br, dw_now_us())) { /* open, or another's probe is out */
			key_queue_all(mi, j, 0, breaker_reason(t, why, sizeof(why)));
			continue;
		}
		send_start(mi, t, j);
	}
}
