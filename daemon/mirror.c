/*
 * mirror.c — a mirror shard's life (mirror.h): made in its worker's loop, woken
 * by hand-overs from other workers (inbox, eventfd), flushed once per loop
 * iteration (the lanes' requests, then the outcomes), and at the end every
 * write it still holds queued and recorded.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "mirror.h"

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
		free(t->name); /* its breaker stays in srv->breakers */
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
